// A real Orthanc (Debian's /usr/sbin/Orthanc) for tests: started on a free loopback port with
// a generated JSON configuration in its own temporary directory (storage and index there,
// remote access off, authentication on with one registered user, the DICOM server off),
// waited for until GET /system answers, and stopped (SIGTERM, then wait) by stop() or the
// destructor. Optionally serves HTTPS with a certificate the caller provides.
//
// A test that needs it starts with ORTHANC_OR_SKIP(server): where Orthanc is not installed or
// does not start, the test is skipped with the reason (and the end of Orthanc's log).
#pragma once
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>

#include "common/errors.h"
#include "common/transport/http_client.h"
#include "tests/free_port.h"

extern char** environ;

namespace fedtl::test_support {

struct OrthancServerOptions {
  std::string user = "fedtl";
  std::string password = "s3cret-Pa55word";
  // HTTPS: a PEM file holding the server's certificate followed by its private key, and the
  // CA file the test's own requests verify it with. Empty: plain HTTP.
  std::string ssl_certificate;
  std::string ca_file;
};

class OrthancServer {
 public:
  static constexpr const char* kBinary = "/usr/sbin/Orthanc";

  explicit OrthancServer(OrthancServerOptions opt = {}) : opt_(std::move(opt)) {
    namespace fs = std::filesystem;
    if (::access(kBinary, X_OK) != 0) {
      why_not_ = std::string(kBinary) + " is not installed (Debian package orthanc; scripts/setup installs it)";
      return;
    }
    char tmpl[] = "/tmp/fedtl-orthanc-XXXXXX";
    if (!::mkdtemp(tmpl)) {
      why_not_ = "cannot create a temporary directory for Orthanc";
      return;
    }
    dir_ = tmpl;
    // A port taken between free_port() and Orthanc's bind makes Orthanc exit: try a few.
    for (int attempt = 0; attempt < 3 && !running(); ++attempt) start();
  }
  ~OrthancServer() {
    stop();
    std::error_code ignored;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ignored);
  }
  OrthancServer(const OrthancServer&) = delete;
  OrthancServer& operator=(const OrthancServer&) = delete;

  bool running() const { return pid_ > 0; }
  const std::string& why_not() const { return why_not_; }
  std::string url() const {
    return std::string(opt_.ssl_certificate.empty() ? "http" : "https") + "://127.0.0.1:" + std::to_string(port_);
  }
  uint16_t port() const { return port_; }
  const OrthancServerOptions& options() const { return opt_; }
  const std::string& dir() const { return dir_; }

  // SIGTERM and wait (SIGKILL after 10 s). Idempotent.
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 1000; ++i) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  // REST calls as the registered user (through the project's HTTP client).
  common::HttpResponse call(const std::string& method, const std::string& target, const std::string& body = "",
                            const std::string& content_type = "") {
    if (!admin_) {
      common::HttpOptions o;
      o.username = opt_.user;
      o.password = opt_.password;
      o.ca_file = opt_.ca_file;
      o.connect_timeout = std::chrono::seconds(5);
      o.io_timeout = std::chrono::seconds(20);
      o.server_label = "test Orthanc";
      admin_ = std::make_unique<common::HttpClient>(url(), o);
    }
    return admin_->request(method, target, body, content_type);
  }
  // Stores a DICOM file; returns its Orthanc id. Throws on failure.
  std::string upload(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    const auto r = call("POST", "/instances", ss.str(), "application/dicom");
    if (r.status != 200) throw Error("test Orthanc refused " + path + ": HTTP " + std::to_string(r.status) + " " + r.body);
    return nlohmann::json::parse(r.body).at("ID").get<std::string>();
  }
  void remove(const std::string& orthanc_id) {
    const auto r = call("DELETE", "/instances/" + orthanc_id);
    if (r.status != 200) throw Error("test Orthanc cannot delete " + orthanc_id + ": HTTP " + std::to_string(r.status));
  }

 private:
  void start() {
    port_ = free_port();
    const std::string storage = dir_ + "/db";
    nlohmann::json cfg = {
        {"Name", "fedtl-test"},
        {"HttpPort", port_},
        {"DicomServerEnabled", false},
        {"DicomPort", free_port()},
        {"StorageDirectory", storage},
        {"IndexDirectory", storage},
        {"RemoteAccessAllowed", false},
        {"AuthenticationEnabled", true},
        {"RegisteredUsers", {{opt_.user, opt_.password}}},
        {"HttpThreadsCount", 4},
        {"HttpCompressionEnabled", false},
        {"KeepAlive", true},
        {"ConcurrentJobs", 1},
        {"SaveJobs", false},
        {"Plugins", nlohmann::json::array()},
        {"LimitFindInstances", 0},
        {"LimitFindResults", 0},
    };
    if (!opt_.ssl_certificate.empty()) {
      cfg["SslEnabled"] = true;
      cfg["SslCertificate"] = opt_.ssl_certificate;
    }
    const std::string cfg_path = dir_ + "/orthanc.json";
    std::ofstream(cfg_path) << cfg.dump(2);
    log_ = dir_ + "/orthanc.log";

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::string bin = kBinary;
    char* argv[] = {bin.data(), const_cast<char*>(cfg_path.c_str()), nullptr};
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, kBinary, &fa, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      why_not_ = std::string("cannot start ") + kBinary + ": " + std::strerror(rc);
      return;
    }
    pid_ = pid;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        why_not_ = "Orthanc exited at start-up: " + log_tail();
        return;
      }
      try {
        admin_.reset();
        if (call("GET", "/system").status == 200) return;
      } catch (const Error&) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
    }
    stop();
    why_not_ = "Orthanc did not answer GET /system within 15 s: " + log_tail();
  }

  std::string log_tail() const {
    std::ifstream in(log_);
    std::string line, last;
    while (std::getline(in, line))
      if (!line.empty()) last = line;
    return last.empty() ? "(empty log)" : last;
  }

  OrthancServerOptions opt_;
  std::string dir_, log_, why_not_;
  uint16_t port_ = 0;
  pid_t pid_ = -1;
  std::unique_ptr<common::HttpClient> admin_;
};

}  // namespace fedtl::test_support

#define ORTHANC_OR_SKIP(server) \
  if (!(server).running()) GTEST_SKIP() << "no Orthanc for this test: " << (server).why_not()

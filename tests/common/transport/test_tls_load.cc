// The load test at a small size (the 200-connection run against a real coordinator is
// `scripts/bench load`, bench/load_test.py): 30 hostile clients at once against a
// TlsListener — silent ones, half a ClientHello, plaintext garbage, TLS without a certificate
// or from another CA, and authenticated clients that hang up in the middle of a frame —
// while honest sites connect and are served. Afterwards every hostile connection has been
// dropped and the process holds exactly the file descriptors it held before the wave.
#include <arpa/inet.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/free_port.h"
#include "common/errors.h"
#include "common/transport/pki.h"
#include "common/transport/tls.h"

namespace fedtl::common {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using common::MessageType;

size_t open_fds() {
  size_t n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d)) ++n;
    ::closedir(d);
  }
  return n;  // includes ".", ".." and the directory's own descriptor: constant
}

// A stalled client gives up after 5 s: the server must drop it before.
int connect_tcp(uint16_t port) { return test_support::connect_loopback(port, 5); }

void reset_close(int fd) {
  linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::close(fd);
}

// True when the server ended the connection (EOF or reset) before the client's 5 s timeout.
bool dropped_by_server(int fd) {
  char buf[256];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;
  }
}

std::string frame_header(uint16_t type, uint32_t length) {
  std::string h = "FDTL";
  const uint16_t v = common::kProtocolVersion;
  h.append(reinterpret_cast<const char*>(&v), 2);
  h.append(reinterpret_cast<const char*>(&type), 2);
  h.append(reinterpret_cast<const char*>(&length), 4);
  h.append(4, '\0');
  return h;
}

std::string client_hello_prefix() {
  std::string s = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
  s.append(32, 'r');
  return s;
}

// A TLS 1.3 client made with OpenSSL directly: with or without a certificate.
struct RawTls {
  RawTls(uint16_t port, const std::string& ca, const std::string& cert, const std::string& key) {
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    if (!cert.empty()) {
      SSL_CTX_use_certificate_chain_file(ctx, cert.c_str());
      SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM);
    }
    fd = connect_tcp(port);
    ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    handshake_ok = fd >= 0 && SSL_connect(ssl) == 1;
  }
  ~RawTls() {
    SSL_free(ssl);
    if (fd >= 0) ::close(fd);
    SSL_CTX_free(ctx);
  }
  bool write(const std::string& s) { return SSL_write(ssl, s.data(), static_cast<int>(s.size())) > 0; }
  // True when the server ended the session (alert, close or reset) instead of sending data.
  bool refused() {
    char buf[64];
    return SSL_read(ssl, buf, sizeof buf) <= 0;
  }
  void reset() {
    reset_close(fd);
    fd = -1;
  }
  SSL_CTX* ctx = nullptr;
  SSL* ssl = nullptr;
  int fd = -1;
  bool handshake_ok = false;
};

Frame frame_of(MessageType t, std::string payload) {
  Frame f;
  f.type = t;
  f.payload = std::move(payload);
  return f;
}

class TlsLoadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/fedtl_tlsload_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = new std::string(tmpl);
    pki_init(pki(), "loadfed");
    pki_issue(pki(), "coordinator", "coordinator", "127.0.0.1:8443");
    for (const char* s : {"site-a", "site-b", "intruder"}) pki_issue(pki(), s, "worker", "127.0.0.1:8443");
    pki_init(*root_ + "/other", "otherfed");
    pki_issue(*root_ + "/other", "site-a", "worker", "127.0.0.1:8443");
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*root_, ec);
    delete root_;
  }
  void SetUp() override {
    previous_level_ = spdlog::get_level();
    spdlog::set_level(spdlog::level::err);  // 30 refusals would flood the test log
  }
  void TearDown() override { spdlog::set_level(previous_level_); }

  static std::string pki() { return *root_ + "/pki"; }
  static std::string kit(const std::string& name, const std::string& file, const std::string& dir = "") {
    return (dir.empty() ? pki() : dir) + "/kits/" + name + "/" + file;
  }
  static TlsConfig client(const std::string& name) {
    TlsConfig c;
    c.ca_cert = pki() + "/ca.crt";
    c.cert = kit(name, name + ".crt");
    c.key = kit(name, name + ".key");
    c.expected_server_name = "coordinator";
    return c;
  }

  static std::string* root_;
  spdlog::level::level_enum previous_level_ = spdlog::level::info;
};

std::string* TlsLoadTest::root_ = nullptr;

TEST_F(TlsLoadTest, HostileWaveIsDroppedHonestSitesAreServedAndNoDescriptorLeaks) {
  TlsConfig s;
  s.ca_cert = kit("coordinator", "ca.crt");
  s.cert = kit("coordinator", "coordinator.crt");
  s.key = kit("coordinator", "coordinator.key");
  s.allowed_names = {"site-a", "site-b"};
  s.handshake_timeout = 500ms;
  auto listener = tls_listen("127.0.0.1", 0, s);
  const uint16_t port = listener->port();
  const size_t baseline = open_fds();

  enum Kind { kStall, kPartialHello, kGarbage, kNoCert, kWrongCa, kNotListed, kMidFrame };
  std::vector<Kind> kinds;
  for (auto [k, n] : {std::pair{kStall, 8}, {kPartialHello, 4}, {kGarbage, 6}, {kNoCert, 3}, {kWrongCa, 3},
                      {kNotListed, 2}, {kMidFrame, 4}})
    kinds.insert(kinds.end(), static_cast<size_t>(n), k);
  ASSERT_EQ(kinds.size(), 30u);
  const int mid_frame = 4, honest = 3;

  std::atomic<bool> go{false};
  std::vector<std::future<bool>> hostile;  // true: the server dropped it as it should
  for (size_t i = 0; i < kinds.size(); ++i) {
    hostile.push_back(std::async(std::launch::async, [&, kind = kinds[i], i] {
      while (!go) std::this_thread::yield();
      switch (kind) {
        case kStall:
        case kPartialHello:
        case kGarbage: {
          const int fd = connect_tcp(port);
          if (fd < 0) return false;
          if (kind == kPartialHello) {
            const std::string h = client_hello_prefix();
            (void)!::send(fd, h.data(), h.size(), MSG_NOSIGNAL);
          } else if (kind == kGarbage) {
            std::mt19937 rng(static_cast<uint32_t>(i));
            std::string junk(4096, '\0');
            for (auto& c : junk) c = static_cast<char>(rng());
            (void)!::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL);
          }
          const bool dropped = dropped_by_server(fd);
          ::close(fd);
          return dropped;
        }
        case kNoCert:
        case kWrongCa:
        case kNotListed: {
          const std::string other = *root_ + "/other";
          RawTls c(port, pki() + "/ca.crt",
                   kind == kNoCert ? "" : kind == kWrongCa ? kit("site-a", "site-a.crt", other) : kit("intruder", "intruder.crt"),
                   kind == kNoCert ? "" : kind == kWrongCa ? kit("site-a", "site-a.key", other) : kit("intruder", "intruder.key"));
          if (c.handshake_ok) c.write(frame_header(1, 5) + "hello");
          return c.refused();
        }
        case kMidFrame: {  // authenticated, then half a frame and a reset
          RawTls c(port, pki() + "/ca.crt", kit("site-b", "site-b.crt"), kit("site-b", "site-b.key"));
          if (!c.handshake_ok) return false;
          c.write(frame_header(static_cast<uint16_t>(MessageType::kUpdate), 1u << 20) + std::string(1000, 'u'));
          std::this_thread::sleep_for(50ms);
          c.reset();
          return true;
        }
      }
      return false;
    }));
  }
  std::vector<std::future<void>> sites;
  for (int i = 0; i < honest; ++i) {
    sites.push_back(std::async(std::launch::async, [&, i] {
      while (!go) std::this_thread::yield();
      auto c = tls_connect("127.0.0.1", port, client("site-a"), 10s);
      c->send(frame_of(MessageType::kHello, "honest " + std::to_string(i)));
      EXPECT_EQ(c->recv(10s).payload, "welcome honest " + std::to_string(i));
    }));
  }
  go = true;

  // The server side: honest sites get their answer; authenticated clients that hang up in
  // the middle of a frame are a transport error (truncation), never a frame.
  int served = 0, truncated = 0;
  while (served + truncated < honest + mid_frame) {
    std::unique_ptr<Connection> conn;
    ASSERT_NO_THROW(conn = listener->accept(10s)) << served << " served, " << truncated << " truncated";
    if (conn->peer_name() == "site-a") {
      const Frame hello = conn->recv(10s);
      conn->send(frame_of(MessageType::kJobSpec, "welcome " + hello.payload));
      ++served;
      // Keep it open until the client has read the answer: the client closes first.
      EXPECT_THROW(conn->recv(10s), TransportError);
    } else {
      ASSERT_EQ(conn->peer_name(), "site-b");
      try {
        conn->recv(10s);
        ADD_FAILURE() << "a frame arrived from a client that hung up in the middle of it";
      } catch (const ProtocolError& e) {
        ADD_FAILURE() << "truncation reported as a protocol error: " << e.what();
      } catch (const TimeoutError& e) {
        ADD_FAILURE() << "truncation not noticed: " << e.what();
      } catch (const TransportError&) {
        ++truncated;
      }
    }
  }
  for (auto& f : sites) f.get();
  for (size_t i = 0; i < hostile.size(); ++i) EXPECT_TRUE(hostile[i].get()) << "hostile client " << i << " (kind " << kinds[i] << ") was not dropped";
  EXPECT_EQ(served, honest);
  EXPECT_EQ(truncated, mid_frame);

  // Every descriptor of the wave is gone again (the listener closes dropped sockets on its
  // I/O thread; give it a moment).
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (open_fds() != baseline && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(20ms);
  EXPECT_EQ(open_fds(), baseline);

  // And the listener still serves.
  auto c = std::async(std::launch::async, [&] { return tls_connect("127.0.0.1", port, client("site-b"), 5s); });
  auto conn = listener->accept(5s);
  auto cc = c.get();
  cc->send(frame_of(MessageType::kHello, "after"));
  EXPECT_EQ(conn->recv(5s).payload, "after");
}

}  // namespace
}  // namespace fedtl::common

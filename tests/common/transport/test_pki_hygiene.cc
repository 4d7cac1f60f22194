// PKI hygiene (issue 11, item 7): a private key readable by group or others, a certificate
// used in a role it was not issued for, and certificates outside their validity are refused,
// each with a message that says what to do or which certificate and when. Certificates with
// odd dates or usages are made here with OpenSSL's X509 API, signed by the federation CA that
// pki_init made; peers the library would never produce are raw OpenSSL clients and servers.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>

#include "common/errors.h"
#include "common/transport/framing.h"
#include "common/transport/pki.h"
#include "common/transport/tls.h"

namespace fedtl::common {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

X509* read_x509(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (!f) return nullptr;
  X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  return x;
}

EVP_PKEY* read_key(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (!f) return nullptr;
  EVP_PKEY* k = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  return k;
}

std::string asn1_str(const ASN1_TIME* t) {
  std::tm tm{};
  EXPECT_EQ(ASN1_TIME_to_tm(t, &tm), 1);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

void add_ext(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  ASSERT_NE(ext, nullptr) << value;
  ASSERT_EQ(X509_add_ext(cert, ext, -1), 1);
  X509_EXTENSION_free(ext);
}

// A leaf certificate for `cn`, signed by the CA in `pki`, valid from now+from_s to now+to_s,
// with extendedKeyUsage `eku`; key (mode 0600) and certificate written to dir/cn.{key,crt}.
// Returns the formatted notBefore and notAfter, as the refusals should print them.
struct Issued {
  std::string cert, key, not_before, not_after;
};
Issued issue_cert(const std::string& pki, const std::string& dir, const std::string& cn, const char* eku,
                  long from_s, long to_s) {
  Issued out;
  X509* ca = read_x509(pki + "/ca.crt");
  EVP_PKEY* ca_key = read_key(pki + "/ca.key");
  EXPECT_TRUE(ca && ca_key);
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), static_cast<long>(std::time(nullptr)) ^ from_s);
  X509_gmtime_adj(X509_getm_notBefore(x), from_s);
  X509_gmtime_adj(X509_getm_notAfter(x), to_s);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("testfed"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, X509_get_subject_name(ca));
  X509_set_pubkey(x, key);
  add_ext(x, ca, NID_basic_constraints, "critical,CA:FALSE");
  add_ext(x, ca, NID_key_usage, "critical,digitalSignature");
  add_ext(x, ca, NID_ext_key_usage, eku);
  add_ext(x, ca, NID_subject_alt_name, ("DNS:" + cn + ",DNS:localhost,IP:127.0.0.1").c_str());
  add_ext(x, ca, NID_authority_key_identifier, "keyid:always");
  EXPECT_GT(X509_sign(x, ca_key, EVP_sha256()), 0);
  out.cert = dir + "/" + cn + ".crt";
  out.key = dir + "/" + cn + ".key";
  FILE* f = std::fopen(out.cert.c_str(), "w");
  PEM_write_X509(f, x);
  std::fclose(f);
  f = std::fopen(out.key.c_str(), "w");
  PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(f);
  ::chmod(out.key.c_str(), 0600);
  out.not_before = asn1_str(X509_get0_notBefore(x));
  out.not_after = asn1_str(X509_get0_notAfter(x));
  X509_free(x);
  EVP_PKEY_free(key);
  X509_free(ca);
  EVP_PKEY_free(ca_key);
  return out;
}

int tcp_connect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// A TLS 1.3 client made directly with OpenSSL, presenting any certificate (the library's own
// client would refuse to present the ones these tests need).
class RawTlsClient {
 public:
  RawTlsClient(uint16_t port, const std::string& ca, const std::string& cert, const std::string& key) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx_, TLS1_3_VERSION);
    SSL_CTX_load_verify_locations(ctx_, ca.c_str(), nullptr);
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    EXPECT_EQ(SSL_CTX_use_certificate_chain_file(ctx_, cert.c_str()), 1);
    EXPECT_EQ(SSL_CTX_use_PrivateKey_file(ctx_, key.c_str(), SSL_FILETYPE_PEM), 1);
    fd_ = tcp_connect(port);
    ssl_ = SSL_new(ctx_);
    SSL_set_fd(ssl_, fd_);
    handshake_ok_ = SSL_connect(ssl_) == 1;
  }
  ~RawTlsClient() {
    SSL_free(ssl_);
    ::close(fd_);
    SSL_CTX_free(ctx_);
  }
  bool handshake_ok() const { return handshake_ok_; }
  void write(const std::string& bytes) {
    ASSERT_EQ(SSL_write(ssl_, bytes.data(), static_cast<int>(bytes.size())), static_cast<int>(bytes.size()));
  }
  bool read_fails() {
    char buf[64];
    return SSL_read(ssl_, buf, sizeof(buf)) <= 0;
  }

 private:
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  int fd_ = -1;
  bool handshake_ok_ = false;
};

// A one-connection TLS 1.3 server made directly with OpenSSL, presenting any certificate.
class RawTlsServer {
 public:
  RawTlsServer(const std::string& ca, const std::string& cert, const std::string& key) {
    ctx_ = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_min_proto_version(ctx_, TLS1_3_VERSION);
    SSL_CTX_load_verify_locations(ctx_, ca.c_str(), nullptr);
    EXPECT_EQ(SSL_CTX_use_certificate_chain_file(ctx_, cert.c_str()), 1);
    EXPECT_EQ(SSL_CTX_use_PrivateKey_file(ctx_, key.c_str(), SSL_FILETYPE_PEM), 1);
    lfd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(lfd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(lfd_, 4), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(lfd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] {
      const int fd = ::accept(lfd_, nullptr, nullptr);
      if (fd < 0) return;
      timeval tv{5, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      SSL* ssl = SSL_new(ctx_);
      SSL_set_fd(ssl, fd);
      SSL_accept(ssl);  // the client aborts it
      SSL_free(ssl);
      ::close(fd);
    });
  }
  ~RawTlsServer() {
    ::shutdown(lfd_, SHUT_RDWR);
    thread_.join();
    ::close(lfd_);
    SSL_CTX_free(ctx_);
  }
  uint16_t port() const { return port_; }

 private:
  SSL_CTX* ctx_ = nullptr;
  int lfd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
};

std::string raw_header(uint16_t version, uint16_t type, uint32_t length) {
  std::string h = "FDTL";
  h.push_back(static_cast<char>(version & 0xFF));
  h.push_back(static_cast<char>(version >> 8));
  h.push_back(static_cast<char>(type & 0xFF));
  h.push_back(static_cast<char>(type >> 8));
  for (int i = 0; i < 4; ++i) h.push_back(static_cast<char>((length >> (8 * i)) & 0xFF));
  h.append(4, '\0');
  return h;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

class PkiHygiene : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/fedtl_pki_hygiene_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = new std::string(tmpl);
    pki_init(pki(), "testfed");
    pki_issue(pki(), "coordinator", "coordinator", "127.0.0.1:8443");
    pki_issue(pki(), "site-a", "worker", "127.0.0.1:8443");
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*root_, ec);
    delete root_;
  }
  void SetUp() override {
    ring_ = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(256);
    previous_ = spdlog::default_logger();
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("pki_hygiene", ring_));
  }
  void TearDown() override { spdlog::set_default_logger(previous_); }

  static std::string pki() { return *root_ + "/pki"; }
  static std::string kit(const std::string& name) { return pki() + "/kits/" + name; }
  static TlsConfig config_of(const std::string& name) {
    TlsConfig c;
    c.ca_cert = pki() + "/ca.crt";
    c.cert = kit(name) + "/" + name + ".crt";
    c.key = kit(name) + "/" + name + ".key";
    c.handshake_timeout = 2s;
    return c;
  }
  // A fresh directory for certificates made by one test.
  static std::string scratch(const std::string& name) {
    const std::string d = *root_ + "/" + name;
    fs::create_directories(d);
    return d;
  }
  bool logged(std::initializer_list<std::string> parts) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
      for (const auto& line : ring_->last_formatted()) {
        bool all = true;
        for (const auto& p : parts) all = all && contains(line, p);
        if (all) return true;
      }
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }
  // An honest site still gets in and exchanges a frame.
  void expect_serves_honest_site(TlsListener& listener) {
    auto client = std::async(std::launch::async,
                             [&] { return tls_connect("127.0.0.1", listener.port(), config_of("site-a"), 5s); });
    auto server = listener.accept(5s);
    auto c = client.get();
    EXPECT_EQ(server->peer_name(), "site-a");
    Frame f;
    f.type = MessageType::kHello;
    f.payload = "hello";
    c->send(f);
    EXPECT_EQ(server->recv(5s).payload, "hello");
  }
  static std::string* root_;
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> ring_;
  std::shared_ptr<spdlog::logger> previous_;
};
std::string* PkiHygiene::root_ = nullptr;

// --- private key permissions -----------------------------------------------------------------

TEST_F(PkiHygiene, KeyReadableByGroupOrOthersIsRefusedWithTheChmodToRun) {
  const std::string dir = scratch("loose");
  for (const char* name : {"site-a", "coordinator"}) {
    const std::string key = dir + "/" + name + ".key";
    fs::copy_file(kit(name) + "/" + name + ".key", key, fs::copy_options::overwrite_existing);
    for (mode_t mode : {0640, 0604, 0644}) {
      ASSERT_EQ(::chmod(key.c_str(), mode), 0);
      TlsConfig c = config_of(name);
      c.key = key;
      try {
        if (std::string(name) == "coordinator")
          tls_listen("127.0.0.1", 0, c);
        else
          tls_connect("127.0.0.1", 1, c, 1s);
        FAIL() << name << ": started with a key of mode " << std::oct << mode;
      } catch (const ConfigError& e) {
        const std::string m = e.what();
        EXPECT_TRUE(contains(m, "private key '" + key + "' is accessible by group or others")) << m;
        EXPECT_TRUE(contains(m, "run `chmod 600 " + key + "`")) << m;
        EXPECT_EQ(m.find('\n'), std::string::npos) << m;
      }
    }
  }
  // Owner-only again: accepted.
  const std::string key = dir + "/coordinator.key";
  ASSERT_EQ(::chmod(key.c_str(), 0600), 0);
  TlsConfig c = config_of("coordinator");
  c.key = key;
  EXPECT_NO_THROW(tls_listen("127.0.0.1", 0, c));
}

// --- roles -------------------------------------------------------------------------------------

TEST_F(PkiHygiene, CoordinatorKitCannotConnectAsASite) {
  try {
    tls_connect("127.0.0.1", 1, config_of("coordinator"), 1s);
    FAIL() << "a coordinator kit connected as a site";
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_TRUE(contains(m, "(CN=coordinator) was issued for the coordinator role")) << m;
    EXPECT_TRUE(contains(m, "cannot serve in the worker role")) << m;
  }
}

TEST_F(PkiHygiene, SiteKitCannotServeAsCoordinator) {
  try {
    tls_listen("127.0.0.1", 0, config_of("site-a"));
    FAIL() << "a site kit served as the coordinator";
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_TRUE(contains(m, "(CN=site-a) was issued for the worker role")) << m;
    EXPECT_TRUE(contains(m, "cannot serve in the coordinator role")) << m;
  }
}

TEST_F(PkiHygiene, ListenerRefusesACoordinatorCertificatePresentedAsASite) {
  auto listener = tls_listen("127.0.0.1", 0, config_of("coordinator"));
  {
    RawTlsClient raw(listener->port(), pki() + "/ca.crt", kit("coordinator") + "/coordinator.crt",
                     kit("coordinator") + "/coordinator.key");
    EXPECT_TRUE(!raw.handshake_ok() || raw.read_fails());
  }
  EXPECT_TRUE(logged({"refused connection from 127.0.0.1", "certificate 'coordinator' was issued for the coordinator role",
                      "a worker certificate is required"}));
  EXPECT_THROW(listener->accept(200ms), TimeoutError);
  expect_serves_honest_site(*listener);
}

TEST_F(PkiHygiene, ClientRefusesAServerPresentingASiteCertificate) {
  // A raw server (tls_listen itself would refuse this certificate at start).
  RawTlsServer server(pki() + "/ca.crt", kit("site-a") + "/site-a.crt", kit("site-a") + "/site-a.key");
  try {
    tls_connect("127.0.0.1", server.port(), config_of("site-a"), 5s);
    FAIL() << "a site certificate was accepted as the coordinator";
  } catch (const TransportError& e) {
    EXPECT_TRUE(contains(e.what(), "server certificate 'site-a' rejected: unsuitable certificate purpose")) << e.what();
  }
}

TEST_F(PkiHygiene, CertificateWithoutExtendedKeyUsageIsRefused) {
  // "anyExtendedKeyUsage" says nothing about the role.
  const Issued x = issue_cert(pki(), scratch("anyeku"), "site-any", "anyExtendedKeyUsage", -60, 86400);
  TlsConfig c = config_of("site-a");
  c.cert = x.cert;
  c.key = x.key;
  try {
    tls_connect("127.0.0.1", 1, c, 1s);
    FAIL() << "a certificate without a role was used";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(contains(e.what(), "carries no extendedKeyUsage saying its role")) << e.what();
  }
}

// --- validity ----------------------------------------------------------------------------------

TEST_F(PkiHygiene, ExpiredOrNotYetValidOwnCertificateIsRefusedWithItsDates) {
  const std::string dir = scratch("dates");
  const Issued expired = issue_cert(pki(), dir, "site-old", "clientAuth", -2 * 86400, -86400);
  const Issued future = issue_cert(pki(), dir, "site-new", "clientAuth", 86400, 2 * 86400);
  const Issued coord_expired = issue_cert(pki(), dir, "coord-old", "serverAuth,clientAuth", -2 * 86400, -86400);
  TlsConfig c = config_of("site-a");
  c.cert = expired.cert;
  c.key = expired.key;
  try {
    tls_connect("127.0.0.1", 1, c, 1s);
    FAIL() << "an expired certificate was used";
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_TRUE(contains(m, "certificate '" + expired.cert + "' (CN=site-old) has expired: notAfter " +
                                expired.not_after))
        << m;
    EXPECT_TRUE(contains(m, "valid from " + expired.not_before + " to " + expired.not_after)) << m;
  }
  c.cert = future.cert;
  c.key = future.key;
  try {
    tls_connect("127.0.0.1", 1, c, 1s);
    FAIL() << "a not-yet-valid certificate was used";
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_TRUE(contains(m, "(CN=site-new) is not valid yet: notBefore " + future.not_before)) << m;
  }
  TlsConfig s = config_of("coordinator");
  s.cert = coord_expired.cert;
  s.key = coord_expired.key;
  try {
    tls_listen("127.0.0.1", 0, s);
    FAIL() << "the coordinator served with an expired certificate";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(contains(e.what(), "(CN=coord-old) has expired: notAfter " + coord_expired.not_after)) << e.what();
  }
}

TEST_F(PkiHygiene, ListenerRefusesAnExpiredSiteCertificateNamingItsDates) {
  const Issued expired = issue_cert(pki(), scratch("peer-dates"), "site-late", "clientAuth", -2 * 86400, -86400);
  auto listener = tls_listen("127.0.0.1", 0, config_of("coordinator"));
  {
    RawTlsClient raw(listener->port(), pki() + "/ca.crt", expired.cert, expired.key);
    EXPECT_TRUE(!raw.handshake_ok() || raw.read_fails());
  }
  EXPECT_TRUE(logged({"refused connection from 127.0.0.1", "certificate 'site-late' rejected: certificate has expired",
                      "notAfter " + expired.not_after, "valid from " + expired.not_before}));
  EXPECT_THROW(listener->accept(200ms), TimeoutError);
  expect_serves_honest_site(*listener);
}

// --- a frame header announcing more than the maximum (issue 11, item 6) ------------------------

TEST_F(PkiHygiene, HugeFrameHeaderFromAnAuthenticatedPeerIsRefusedBeforeThePayload) {
  TlsConfig s = config_of("coordinator");
  s.max_frame_bytes = 1u << 20;
  auto listener = tls_listen("127.0.0.1", 0, s);
  auto raw = std::async(std::launch::async, [&] {
    return std::make_unique<RawTlsClient>(listener->port(), pki() + "/ca.crt", kit("site-a") + "/site-a.crt",
                                          kit("site-a") + "/site-a.key");
  });
  auto server = listener->accept(5s);
  auto client = raw.get();
  ASSERT_TRUE(client->handshake_ok());
  // Only the header: 4 GiB announced, not one payload byte sent. The refusal must not wait
  // for (or allocate) the payload.
  client->write(raw_header(kProtocolVersion, static_cast<uint16_t>(MessageType::kUpdate), 0xFFFFFFFFu));
  const auto t0 = std::chrono::steady_clock::now();
  try {
    server->recv(5s);
    FAIL() << "a 4 GiB frame header was accepted";
  } catch (const ProtocolError& e) {
    EXPECT_TRUE(contains(e.what(), "4294967295")) << e.what();
    EXPECT_TRUE(contains(e.what(), "exceeds the maximum of 1048576")) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  EXPECT_TRUE(client->read_fails());  // the server closed that connection
  expect_serves_honest_site(*listener);
}

}  // namespace
}  // namespace fedtl::common

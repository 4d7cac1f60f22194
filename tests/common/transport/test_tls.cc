// TLS transport and provisioning tests: a fresh federation PKI per test suite (made with
// common/transport/pki.h), mutual TLS 1.3 over loopback, and hostile peers that must be refused while
// the listener keeps serving honest ones. Raw OpenSSL and POSIX clients play the peers that
// the library itself would never produce (no certificate, plaintext, bad frame headers).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <random>
#include <string>
#include <thread>

#include "common/errors.h"
#include "common/transport/pki.h"
#include "common/transport/tls.h"

namespace fedtl::common {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using common::MessageType;

Frame frame_of(MessageType t, std::string payload) {
  Frame f;
  f.type = t;
  f.payload = std::move(payload);
  return f;
}

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xFF);
  return s;
}

// A 16-byte frame header as framing.h documents it, with any version/type/length.
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

mode_t file_mode(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 0777;
}

// A plain TCP connection to 127.0.0.1:port with a receive timeout.
int tcp_connect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// A TLS 1.3 client made directly with OpenSSL: optional certificate, arbitrary bytes.
class RawTlsClient {
 public:
  RawTlsClient(uint16_t port, const std::string& ca, const std::string& cert = "",
               const std::string& key = "") {
    ctx_ = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx_, TLS1_3_VERSION);
    SSL_CTX_load_verify_locations(ctx_, ca.c_str(), nullptr);
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    if (!cert.empty()) {
      EXPECT_EQ(SSL_CTX_use_certificate_chain_file(ctx_, cert.c_str()), 1);
      EXPECT_EQ(SSL_CTX_use_PrivateKey_file(ctx_, key.c_str(), SSL_FILETYPE_PEM), 1);
    }
    fd_ = tcp_connect(port);
    ssl_ = SSL_new(ctx_);
    SSL_set_fd(ssl_, fd_);
    handshake_ok_ = SSL_connect(ssl_) == 1;
  }
  ~RawTlsClient() {
    SSL_free(ssl_);
    if (fd_ >= 0) ::close(fd_);
    SSL_CTX_free(ctx_);
  }
  bool handshake_ok() const { return handshake_ok_; }
  void write(const std::string& bytes) {
    ASSERT_EQ(SSL_write(ssl_, bytes.data(), static_cast<int>(bytes.size())),
              static_cast<int>(bytes.size()));
  }
  // True when the server ended the session (alert or close) instead of sending data.
  bool read_fails() {
    char buf[64];
    return SSL_read(ssl_, buf, sizeof(buf)) <= 0;
  }
  void close() {
    SSL_shutdown(ssl_);
    ::close(fd_);
    fd_ = -1;
  }

 private:
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  int fd_ = -1;
  bool handshake_ok_ = false;
};

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/fedtl_tls_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = new std::string(tmpl);
    pki_ = new std::string(*root_ + "/pki");
    other_ = new std::string(*root_ + "/other");
    pki_init(*pki_, "testfed");
    pki_issue(*pki_, "coordinator", "coordinator", "127.0.0.1:8443");
    for (const char* site : {"site-a", "site-b"}) pki_issue(*pki_, site, "worker", "127.0.0.1:8443");
    // Another federation with a site of the same name: right name, wrong CA.
    pki_init(*other_, "otherfed");
    pki_issue(*other_, "site-a", "worker", "127.0.0.1:8443");
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*root_, ec);
    delete root_;
    delete pki_;
    delete other_;
  }

  void SetUp() override {
    ring_ = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(512);
    auto err = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    previous_ = spdlog::default_logger();
    spdlog::set_default_logger(
        std::make_shared<spdlog::logger>("test_tls", spdlog::sinks_init_list{ring_, err}));
  }
  void TearDown() override { spdlog::set_default_logger(previous_); }

  static std::string kit(const std::string& name, const std::string& pki = "") {
    return (pki.empty() ? *pki_ : pki) + "/kits/" + name;
  }

  static TlsConfig server_config(std::vector<std::string> allowed = {"site-a"}) {
    const Kit k = load_kit(kit("coordinator"));
    TlsConfig c;
    c.ca_cert = k.ca_cert;
    c.cert = k.cert;
    c.key = k.key;
    c.allowed_names = std::move(allowed);
    c.handshake_timeout = 2s;
    return c;
  }

  static TlsConfig client_config(const std::string& name, const std::string& pki = "") {
    const Kit k = load_kit(kit(name, pki));
    TlsConfig c;
    c.ca_cert = *pki_ + "/ca.crt";  // the client trusts the real federation's CA
    c.cert = k.cert;
    c.key = k.key;
    c.expected_server_name = k.coordinator_name;
    return c;
  }

  // Waits up to 5 s for a log line containing all of `parts`.
  bool logged(std::initializer_list<std::string> parts) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
      for (const auto& line : ring_->last_formatted()) {
        bool all = true;
        for (const auto& p : parts) all = all && line.find(p) != std::string::npos;
        if (all) return true;
      }
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

  // An honest site connects, is accepted as itself and exchanges a frame both ways.
  void expect_serves_honest_client(TlsListener& listener) {
    auto client = std::async(std::launch::async, [&] {
      return tls_connect("127.0.0.1", listener.port(), client_config("site-a"), 5s);
    });
    auto server = listener.accept(5s);
    auto c = client.get();
    ASSERT_EQ(server->peer_name(), "site-a");
    c->send(frame_of(MessageType::kHello, "hello"));
    EXPECT_EQ(server->recv(5s).payload, "hello");
    server->send(frame_of(MessageType::kJobSpec, "job"));
    EXPECT_EQ(c->recv(5s).payload, "job");
  }

  // A connected, accepted pair: (client side, server side).
  std::pair<std::unique_ptr<Connection>, std::unique_ptr<Connection>> connect_pair(
      TlsListener& listener, const TlsConfig& client_cfg) {
    auto client = std::async(std::launch::async, [&] {
      return tls_connect("127.0.0.1", listener.port(), client_cfg, 5s);
    });
    auto server = listener.accept(5s);
    return {client.get(), std::move(server)};
  }

  static std::string* root_;
  static std::string* pki_;
  static std::string* other_;
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> ring_;
  std::shared_ptr<spdlog::logger> previous_;
};

std::string* TlsTest::root_ = nullptr;
std::string* TlsTest::pki_ = nullptr;
std::string* TlsTest::other_ = nullptr;

// --- provisioning ------------------------------------------------------------------------

TEST_F(TlsTest, KitsHaveOwnerOnlyKeysAndDescribeThemselves) {
  EXPECT_EQ(file_mode(*pki_ + "/ca.key"), 0600u);
  EXPECT_EQ(file_mode(kit("site-a") + "/site-a.key"), 0600u);
  EXPECT_EQ(file_mode(kit("coordinator") + "/coordinator.key"), 0600u);
  EXPECT_EQ(file_mode(*pki_), 0700u);
  EXPECT_EQ(file_mode(kit("site-a")), 0700u);

  const Kit w = load_kit(kit("site-a"));
  EXPECT_EQ(w.name, "site-a");
  EXPECT_EQ(w.role, "worker");
  EXPECT_EQ(w.federation, "testfed");
  EXPECT_EQ(w.coordinator_address, "127.0.0.1:8443");
  EXPECT_EQ(w.coordinator_name, "coordinator");  // found among the kits already issued
  EXPECT_EQ(w.key, kit("site-a") + "/site-a.key");
  EXPECT_TRUE(fs::exists(w.ca_cert));
  const Kit c = load_kit(kit("coordinator") + "/kit.toml");
  EXPECT_EQ(c.role, "coordinator");
  EXPECT_EQ(c.coordinator_name, "");
}

X509* read_cert(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  EXPECT_NE(f, nullptr) << path;
  X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  return x;
}

TEST_F(TlsTest, CertificatesCarryNameUsageAndChainToTheCa) {
  X509* ca = read_cert(*pki_ + "/ca.crt");
  X509* worker = read_cert(kit("site-a") + "/site-a.crt");
  X509* coord = read_cert(kit("coordinator") + "/coordinator.crt");
  ASSERT_TRUE(ca && worker && coord);
  EXPECT_EQ(X509_check_ca(ca), 1);
  EXPECT_EQ(X509_check_ca(worker), 0);
  // Usages: workers are TLS clients only, the coordinator both.
  EXPECT_EQ(X509_check_purpose(worker, X509_PURPOSE_SSL_CLIENT, 0), 1);
  EXPECT_EQ(X509_check_purpose(worker, X509_PURPOSE_SSL_SERVER, 0), 0);
  EXPECT_EQ(X509_check_purpose(coord, X509_PURPOSE_SSL_SERVER, 0), 1);
  EXPECT_EQ(X509_check_purpose(coord, X509_PURPOSE_SSL_CLIENT, 0), 1);
  EXPECT_EQ(X509_check_host(worker, "site-a", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_host(coord, "localhost", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ip_asc(coord, "127.0.0.1", 0), 1);
  // Signed by the CA.
  EVP_PKEY* ca_key = X509_get0_pubkey(ca);
  EXPECT_EQ(X509_verify(worker, ca_key), 1);
  EXPECT_EQ(X509_verify(coord, ca_key), 1);
  char cn[128];
  X509_NAME_get_text_by_NID(X509_get_subject_name(worker), NID_commonName, cn, sizeof(cn));
  EXPECT_STREQ(cn, "site-a");
  X509_free(ca);
  X509_free(worker);
  X509_free(coord);
}

TEST_F(TlsTest, ProvisioningRefusesOverwritesAndBadInput) {
  EXPECT_THROW(pki_init(*pki_, "testfed"), ConfigError);
  EXPECT_THROW(pki_issue(*pki_, "site-a", "worker", "127.0.0.1:8443"), ConfigError);
  const std::vector<std::string> bad_names = {"",   "../evil", "a b", "ca", ".hidden",
                                              "-x", std::string(65, 'a'), "caf\xc3\xa9"};
  for (const std::string& bad : bad_names) {
    EXPECT_THROW(pki_issue(*pki_, bad, "worker", "127.0.0.1:8443"), ConfigError) << bad;
  }
  EXPECT_THROW(pki_issue(*pki_, "site-z", "admin", "127.0.0.1:8443"), ConfigError);
  EXPECT_THROW(pki_issue(*pki_, "site-z", "worker", ""), ConfigError);
  EXPECT_THROW(pki_issue(*pki_, "site-z", "worker", "no-port"), ConfigError);
  EXPECT_THROW(pki_issue(*pki_, "site-z", "worker", "host:99999"), ConfigError);
  EXPECT_FALSE(fs::exists(kit("site-z")));
  try {
    pki_issue(*root_ + "/nowhere", "site-a", "worker", "127.0.0.1:8443");
    FAIL() << "issued without a CA";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("ca.crt"), std::string::npos) << e.what();
  }
}

TEST_F(TlsTest, UnusableKeyFilesAreConfigErrorsNamingTheFile) {
  TlsConfig c = server_config();
  c.cert = *root_ + "/missing.crt";
  try {
    tls_listen("127.0.0.1", 0, c);
    FAIL() << "listened without a certificate";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("missing.crt"), std::string::npos) << e.what();
  }
  c = server_config();
  c.key = kit("site-a") + "/site-a.key";  // someone else's key
  try {
    tls_listen("127.0.0.1", 0, c);
    FAIL() << "listened with a mismatched key";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("does not match"), std::string::npos) << e.what();
  }
}

// --- honest peers ------------------------------------------------------------------------

TEST_F(TlsTest, PingPongOverMutualTls) {
  auto listener = tls_listen("127.0.0.1", 0, server_config());
  ASSERT_NE(listener->port(), 0);
  auto [client, server] = connect_pair(*listener, client_config("site-a"));
  EXPECT_EQ(server->peer_name(), "site-a");
  EXPECT_EQ(client->peer_name(), "coordinator");

  constexpr int kRounds = 200;
  std::thread peer([&server = server] {
    for (int i = 0; i < kRounds; ++i) {
      Frame f = server->recv(5s);
      f.payload += "!";
      server->send(f);
    }
  });
  for (int i = 0; i < kRounds; ++i) {
    client->send(frame_of(MessageType::kHeartbeat, std::to_string(i)));
    const Frame reply = client->recv(5s);
    ASSERT_EQ(reply.type, MessageType::kHeartbeat);
    ASSERT_EQ(reply.payload, std::to_string(i) + "!");
  }
  peer.join();
  EXPECT_EQ(client->bytes_sent(), server->bytes_received());
  EXPECT_EQ(server->bytes_sent(), client->bytes_received());
  EXPECT_EQ(client->bytes_sent() + kRounds, server->bytes_sent());
  EXPECT_GT(client->bytes_sent(), static_cast<uint64_t>(kRounds * 16));  // headers counted
}

TEST_F(TlsTest, TwentyMegabyteFrame) {
  auto listener = tls_listen("127.0.0.1", 0, server_config());
  auto [client, server] = connect_pair(*listener, client_config("site-a"));
  const std::string big = random_bytes(20u << 20, 7);
  std::thread sender([&c = client, &big] { c->send(frame_of(MessageType::kBackboneChunk, big)); });
  const Frame got = server->recv(30s);
  sender.join();
  EXPECT_EQ(got.type, MessageType::kBackboneChunk);
  EXPECT_TRUE(got.payload == big);
  EXPECT_EQ(server->bytes_received(), big.size() + 16);
  server->send(got);  // and back
  EXPECT_TRUE(client->recv(30s).payload == big);
}

TEST_F(TlsTest, RecvTimeoutKeepsTheConnectionUsable) {
  auto listener = tls_listen("127.0.0.1", 0, server_config());
  auto [client, server] = connect_pair(*listener, client_config("site-a"));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(server->recv(100ms), TimeoutError);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 90ms);
  client->send(frame_of(MessageType::kReady, "late"));
  EXPECT_EQ(server->recv(5s).payload, "late");
  EXPECT_THROW(client->recv(50ms), TimeoutError);
  server->send(frame_of(MessageType::kRoundStart, "r1"));
  EXPECT_EQ(client->recv(5s).payload, "r1");
}

TEST_F(TlsTest, CloseWakesBothSides) {
  auto listener = tls_listen("127.0.0.1", 0, server_config());
  auto [client, server] = connect_pair(*listener, client_config("site-a"));
  client->send(frame_of(MessageType::kUpdate, "last words"));
  auto blocked = std::async(std::launch::async, [&c = client] { return c->recv(10s); });
  std::this_thread::sleep_for(50ms);
  client->close();
  EXPECT_THROW(blocked.get(), TransportError);
  EXPECT_THROW(client->send(frame_of(MessageType::kUpdate, "x")), TransportError);
  client->close();  // idempotent
  EXPECT_EQ(server->recv(5s).payload, "last words");  // queued before the close
  try {
    server->recv(5s);
    FAIL() << "recv after the peer closed";
  } catch (const TimeoutError&) {
    FAIL() << "a closed peer is not a timeout";
  } catch (const TransportError& e) {
    EXPECT_NE(std::string(e.what()).find("site-a"), std::string::npos) << e.what();
  }
}

TEST_F(TlsTest, ListenerCloseWakesAccept) {
  auto listener = tls_listen("127.0.0.1", 0, server_config());
  EXPECT_THROW(listener->accept(50ms), TimeoutError);
  auto blocked = std::async(std::launch::async, [&] { return listener->accept(10s); });
  std::this_thread::sleep_for(50ms);
  listener->close();
  EXPECT_THROW(blocked.get(), TransportError);
}

TEST_F(TlsTest, ConnectionOutlivesItsListener) {
  auto listener = tls_listen("127.0.0.1", 0, server_config());
  auto [client, server] = connect_pair(*listener, client_config("site-a"));
  listener.reset();
  client->send(frame_of(MessageType::kHello, "still here"));
  EXPECT_EQ(server->recv(5s).payload, "still here");
}

TEST_F(TlsTest, AnyCaSignedNameWhenNoListIsGiven) {
  auto listener = tls_listen("127.0.0.1", 0, server_config({}));
  auto [client, server] = connect_pair(*listener, client_config("site-b"));
  EXPECT_EQ(server->peer_name(), "site-b");
}

// --- the client checks the server ----------------------------------------------------------

TEST_F(TlsTest, ClientRejectsAServerWithAnotherName) {
  auto listener = tls_listen("127.0.0.1", 0, server_config());
  TlsConfig c = client_config("site-a");
  c.expected_server_name = "the-real-coordinator";
  try {
    tls_connect("127.0.0.1", listener->port(), c, 5s);
    FAIL() << "accepted the wrong server";
  } catch (const TransportError& e) {
    EXPECT_NE(std::string(e.what()).find("'coordinator' is not admitted"), std::string::npos)
        << e.what();
  }
  expect_serves_honest_client(*listener);
}

TEST_F(TlsTest, ClientRejectsAWorkerCertificateAsServer) {
  // A site's certificate lacks the serverAuth usage: it cannot impersonate the coordinator.
  // tls_listen refuses it at start (test_pki_hygiene.cc shows a client refusing a raw server
  // that presents one anyway).
  TlsConfig s = server_config();
  s.cert = kit("site-b") + "/site-b.crt";
  s.key = kit("site-b") + "/site-b.key";
  try {
    tls_listen("127.0.0.1", 0, s);
    FAIL() << "served with a worker certificate";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("issued for the worker role"), std::string::npos) << e.what();
  }
}

TEST_F(TlsTest, ConnectTimesOutAgainstASilentServer) {
  // A TCP listener that never speaks TLS.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  TlsConfig c = client_config("site-a");
  c.handshake_timeout = 200ms;
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(tls_connect("127.0.0.1", ntohs(addr.sin_port), c, 5s), TimeoutError);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  ::close(fd);
}

// --- hostile clients: refused, logged, and the server keeps serving -----------------------

TEST_F(TlsTest, RefusesAClientWithoutCertificate) {
  auto listener = tls_listen("127.0.0.1", 0, server_config());
  {
    RawTlsClient raw(listener->port(), *pki_ + "/ca.crt");
    // TLS 1.3: the client's half of the handshake may complete; the server then refuses.
    EXPECT_TRUE(!raw.handshake_ok() || raw.read_fails());
  }
  EXPECT_TRUE(logged({"refused connection from 127.0.0.1", "certificate"}));
  EXPECT_THROW(listener->accept(200ms), TimeoutError);
  expect_serves_honest_client(*listener);
}

TEST_F(TlsTest, RefusesACertificateFromAnotherCa) {
  auto listener = tls_listen("127.0.0.1", 0, server_config());
  try {
    auto c = tls_connect("127.0.0.1", listener->port(), client_config("site-a", *other_), 5s);
    EXPECT_THROW(c->recv(5s), TransportError);
  } catch (const TransportError&) {
    // refused during the handshake: just as good
  }
  EXPECT_TRUE(logged({"refused connection from 127.0.0.1", "certificate 'site-a' rejected",
                      "unable to get local issuer certificate"}));
  EXPECT_THROW(listener->accept(200ms), TimeoutError);
  expect_serves_honest_client(*listener);
}

TEST_F(TlsTest, RefusesANameThatIsNotOnTheList) {
  auto listener = tls_listen("127.0.0.1", 0, server_config({"site-a"}));
  try {
    auto c = tls_connect("127.0.0.1", listener->port(), client_config("site-b"), 5s);
    try {
      c->recv(5s);
      FAIL() << "a refused client received a frame";
    } catch (const TimeoutError&) {
      FAIL() << "the refused client was not told";
    } catch (const TransportError& e) {
      EXPECT_NE(std::string(e.what()).find("TLS"), std::string::npos) << e.what();
    }
  } catch (const TransportError&) {
  }
  EXPECT_TRUE(logged({"refused connection from 127.0.0.1", "'site-b' is not admitted"}));
  EXPECT_THROW(listener->accept(200ms), TimeoutError);
  expect_serves_honest_client(*listener);
}

TEST_F(TlsTest, RefusesAPlaintextClientSendingRandomBytes) {
  auto listener = tls_listen("127.0.0.1", 0, server_config());
  int fd = tcp_connect(listener->port());
  const std::string junk = random_bytes(4096, 3);
  ASSERT_EQ(::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL), static_cast<ssize_t>(junk.size()));
  EXPECT_TRUE(logged({"refused connection from 127.0.0.1", "TLS error"}));
  char buf[256];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) {
  }  // an alert perhaps, then the close
  EXPECT_EQ(n, 0) << "server did not close the plaintext connection";
  ::close(fd);
  EXPECT_THROW(listener->accept(200ms), TimeoutError);
  expect_serves_honest_client(*listener);
}

TEST_F(TlsTest, RefusesAPlaintextFedtlFrame) {
  auto listener = tls_listen("127.0.0.1", 0, server_config());
  int fd = tcp_connect(listener->port());
  const std::string hello = common::encode_frame(frame_of(MessageType::kHello, "hi"));
  ASSERT_EQ(::send(fd, hello.data(), hello.size(), MSG_NOSIGNAL), static_cast<ssize_t>(hello.size()));
  EXPECT_TRUE(logged({"refused connection from 127.0.0.1", "not speaking TLS"}));
  ::close(fd);
  expect_serves_honest_client(*listener);
}

TEST_F(TlsTest, DropsASilentClientAfterTheHandshakeTimeout) {
  TlsConfig s = server_config();
  s.handshake_timeout = 300ms;
  auto listener = tls_listen("127.0.0.1", 0, s);
  int fd = tcp_connect(listener->port());
  // While it sits there, honest sites are served (handshakes run concurrently).
  expect_serves_honest_client(*listener);
  const auto t0 = std::chrono::steady_clock::now();
  char buf[16];
  EXPECT_EQ(::recv(fd, buf, sizeof(buf), 0), 0) << "server did not drop the silent client";
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  EXPECT_TRUE(logged({"refused connection from 127.0.0.1", "no TLS handshake within 300 ms"}));
  ::close(fd);
  expect_serves_honest_client(*listener);
}

// --- hostile frames from an authenticated peer --------------------------------------------

TEST_F(TlsTest, OversizedFrameIsAProtocolErrorAndClosesThatConnection) {
  TlsConfig s = server_config();
  s.max_frame_bytes = 1u << 20;
  auto listener = tls_listen("127.0.0.1", 0, s);
  auto [client, server] = connect_pair(*listener, client_config("site-a"));
  client->send(frame_of(MessageType::kUpdate, "fine"));
  std::thread sender([&c = client] {
    try {
      c->send(frame_of(MessageType::kUpdate, std::string(2u << 20, 'x')));
    } catch (const TransportError&) {
      // the server may close before all of it was written
    }
  });
  EXPECT_EQ(server->recv(5s).payload, "fine");  // frames before the bad one still arrive
  try {
    server->recv(5s);
    FAIL() << "oversized frame accepted";
  } catch (const ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds the maximum of 1048576"), std::string::npos)
        << e.what();
  }
  sender.join();
  EXPECT_THROW(server->recv(100ms), TransportError);  // closed now
  EXPECT_THROW(client->recv(5s), TransportError);     // and the peer sees it
  expect_serves_honest_client(*listener);
}

TEST_F(TlsTest, WrongProtocolVersionIsAProtocolErrorNamingIt) {
  auto listener = tls_listen("127.0.0.1", 0, server_config());
  const Kit k = load_kit(kit("site-a"));
  auto raw = std::async(std::launch::async, [&] {
    return std::make_unique<RawTlsClient>(listener->port(), k.ca_cert, k.cert, k.key);
  });
  auto server = listener->accept(5s);
  auto client = raw.get();
  ASSERT_TRUE(client->handshake_ok());
  client->write(raw_header(7, 1, 4) + "abcd");
  try {
    server->recv(5s);
    FAIL() << "wrong version accepted";
  } catch (const ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("version 7"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(client->read_fails());  // the server closed the connection
  expect_serves_honest_client(*listener);
}

TEST_F(TlsTest, TruncatedFrameThenCloseIsATransportError) {
  auto listener = tls_listen("127.0.0.1", 0, server_config());
  const Kit k = load_kit(kit("site-a"));
  auto raw = std::async(std::launch::async, [&] {
    return std::make_unique<RawTlsClient>(listener->port(), k.ca_cert, k.cert, k.key);
  });
  auto server = listener->accept(5s);
  auto client = raw.get();
  ASSERT_TRUE(client->handshake_ok());
  client->write(raw_header(common::kProtocolVersion, 6, 100) + std::string(10, 'u'));
  client->close();
  try {
    server->recv(5s);
    FAIL() << "truncated frame accepted";
  } catch (const ProtocolError& e) {
    FAIL() << "truncation is a transport failure, not a protocol error: " << e.what();
  } catch (const TimeoutError& e) {
    FAIL() << "truncation not noticed: " << e.what();
  } catch (const TransportError& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
  expect_serves_honest_client(*listener);
}

TEST_F(TlsTest, ManySitesAtOnce) {
  std::vector<std::string> names;
  for (int i = 0; i < 6; ++i) {
    names.push_back("many-" + std::to_string(i));
    if (!fs::exists(kit(names.back()))) pki_issue(*pki_, names.back(), "worker", "127.0.0.1:1");
  }
  auto listener = tls_listen("127.0.0.1", 0, server_config(names));
  std::vector<std::future<void>> sites;
  for (const auto& n : names) {
    sites.push_back(std::async(std::launch::async, [&, n] {
      auto c = tls_connect("127.0.0.1", listener->port(), client_config(n), 10s);
      c->send(frame_of(MessageType::kHello, n));
      EXPECT_EQ(c->recv(10s).payload, "welcome " + n);
    }));
  }
  std::vector<std::unique_ptr<Connection>> conns;
  for (size_t i = 0; i < names.size(); ++i) conns.push_back(listener->accept(10s));
  for (auto& c : conns) {
    const Frame hello = c->recv(10s);
    EXPECT_EQ(hello.payload, c->peer_name());
    c->send(frame_of(MessageType::kJobSpec, "welcome " + hello.payload));
  }
  for (auto& s : sites) s.get();
}

}  // namespace
}  // namespace fedtl::common

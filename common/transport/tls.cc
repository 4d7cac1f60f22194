// TLS transport. Each I/O thread (IoRunner) runs one io_context; every operation on a
// connection's ssl::stream runs on that thread, so a stream never sees two threads. User
// threads post work to it and wait on futures or on the connection's frame queue.
//
// Reading: a connection keeps one read outstanding while its frame queue is empty; bytes go
// through common::FrameDecoder, whole frames into the queue. Reading pauses while frames
// wait to be taken (back-pressure: at most one max-size frame plus one read buffer is held).
//
// Lifetime: asynchronous handlers hold shared_ptrs to the connection/listener state, never
// to the IoRunner; only the user-facing objects hold the IoRunner, so it is always destroyed
// (stopped and joined) on a user thread.
#include "common/transport/tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <future>
#include <mutex>
#include <set>
#include <spdlog/spdlog.h>
#include <thread>

#include "common/errors.h"
#include "common/transport/cert_check.h"
#include "common/transport/pki.h"

namespace fedtl::common {
// Named (not anonymous) so that TlsListener::State, declared in the header, may hold them.
namespace tls_detail {

namespace asio = boost::asio;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using SslStream = ssl::stream<tcp::socket>;

constexpr size_t kMaxPendingHandshakes = 128;
constexpr size_t kReadChunk = 256 * 1024;
// "Forever" timeouts (Millis::max()) are clamped so that deadlines cannot overflow.
constexpr Millis kMaxWait = std::chrono::hours(24 * 365 * 10);

Millis clamp_wait(Millis t) { return std::clamp<Millis>(t, Millis(0), kMaxWait); }

// One io_context and the thread that runs it.
class IoRunner {
 public:
  IoRunner() : guard_(asio::make_work_guard(io_)), thread_([this] { run(); }) {}
  ~IoRunner() {
    guard_.reset();
    io_.stop();
    thread_.join();
  }
  IoRunner(const IoRunner&) = delete;
  IoRunner& operator=(const IoRunner&) = delete;
  asio::io_context& io() { return io_; }

  // Runs f on the I/O thread and waits for it; rethrows what f threw.
  template <class F>
  void run_sync(F f) {
    std::promise<void> done;
    auto fut = done.get_future();
    asio::post(io_, [&] {
      try {
        f();
        done.set_value();
      } catch (...) {
        done.set_exception(std::current_exception());
      }
    });
    fut.get();
  }

 private:
  void run() {
    for (;;) {
      try {
        io_.run();
        return;
      } catch (const std::exception& e) {
        // A handler threw: a bug, not a network condition. Keep serving the others.
        spdlog::error("tls: unexpected exception on the I/O thread: {}", e.what());
      }
    }
  }

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::thread thread_;
};

std::string ms_str(Millis t) { return std::to_string(t.count()) + " ms"; }

std::string endpoint_str(const tcp::endpoint& ep) {
  const auto addr = ep.address();
  return (addr.is_v6() ? "[" + addr.to_string() + "]" : addr.to_string()) + ":" +
         std::to_string(ep.port());
}

// The single common name of a certificate subject, or "" if it has none, several, or one
// that is not plain UTF-8 text.
std::string common_name(X509* cert) {
  if (!cert) return "";
  X509_NAME* subject = X509_get_subject_name(cert);
  const int idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (idx < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, idx) >= 0) return "";
  ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx));
  unsigned char* utf8 = nullptr;
  const int n = ASN1_STRING_to_UTF8(&utf8, data);
  if (n < 0) return "";
  std::string out(reinterpret_cast<char*>(utf8), static_cast<size_t>(n));
  OPENSSL_free(utf8);
  if (out.find('\0') != std::string::npos) return "";
  return out;
}

std::string quoted_names(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "'" : ", '") + n + "'";
  return out;
}

// A readable reason for a failed TLS/TCP operation.
std::string describe(const error_code& ec) {
  if (ec == asio::error::eof || ec == ssl::error::stream_truncated)
    return "the peer closed the connection";
  std::string msg = ec.message();
  if (ec.category() == asio::error::get_ssl_category()) {
    // Plaintext or garbage instead of a ClientHello shows up as a record-layer error.
    const int reason = ERR_GET_REASON(static_cast<unsigned long>(ec.value()));
    if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
      return "the peer presented no certificate (one signed by the federation CA is required)";
    }
    if (reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) {
      return "the peer aborted the TLS handshake with alert: " + msg;
    }
    if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_HTTP_REQUEST ||
        reason == SSL_R_PACKET_LENGTH_TOO_LONG || reason == SSL_R_UNEXPECTED_RECORD ||
        reason == SSL_R_RECORD_LENGTH_MISMATCH) {
      msg += " (the peer is not speaking TLS)";
    }
    msg = "TLS error: " + msg;
  }
  return msg;
}

// --- SSL context ------------------------------------------------------------------------

void require_file(const std::string& path, const char* what) {
  if (path.empty()) throw ConfigError(std::string("TLS configuration: no ") + what + " file given");
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    throw ConfigError(std::string("TLS ") + what + " file '" + path + "' does not exist or is not a file");
  }
}

std::shared_ptr<ssl::context> make_context(const TlsConfig& cfg, bool server) {
  require_file(cfg.ca_cert, "CA certificate");
  require_file(cfg.cert, "certificate");
  require_file(cfg.key, "private key");
  // Owner-only key, certificates valid now, a certificate issued for this end's role.
  check_own_credentials(cfg.ca_cert, cfg.cert, cfg.key, server ? CertRole::kCoordinator : CertRole::kWorker);
  auto ctx = std::make_shared<ssl::context>(server ? ssl::context::tls_server
                                                   : ssl::context::tls_client);
  SSL_CTX* h = ctx->native_handle();
  if (SSL_CTX_set_min_proto_version(h, TLS1_3_VERSION) != 1) {
    throw ConfigError("TLS: this OpenSSL cannot enforce TLS 1.3 as the minimum version");
  }
  SSL_CTX_set_options(h, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  if (server) SSL_CTX_set_num_tickets(h, 0);  // no session resumption: every peer shows its cert
  error_code ec;
  ctx->load_verify_file(cfg.ca_cert, ec);
  if (ec) throw ConfigError("cannot load CA certificate '" + cfg.ca_cert + "': " + ec.message());
  ctx->use_certificate_chain_file(cfg.cert, ec);
  if (ec) throw ConfigError("cannot load certificate '" + cfg.cert + "': " + ec.message());
  ctx->use_private_key_file(cfg.key, ssl::context::pem, ec);
  if (ec && ec.category() == asio::error::get_ssl_category() &&
      ERR_GET_REASON(static_cast<unsigned long>(ec.value())) == X509_R_KEY_VALUES_MISMATCH) {
    throw ConfigError("private key '" + cfg.key + "' does not match certificate '" + cfg.cert + "'");
  }
  if (ec) throw ConfigError("cannot load private key '" + cfg.key + "': " + ec.message());
  if (SSL_CTX_check_private_key(h) != 1) {
    ERR_clear_error();
    throw ConfigError("private key '" + cfg.key + "' does not match certificate '" + cfg.cert + "'");
  }
  ctx->set_verify_mode(server ? (ssl::verify_peer | ssl::verify_fail_if_no_peer_cert)
                              : ssl::verify_peer,
                       ec);
  if (ec) throw ConfigError("TLS: cannot set the verify mode: " + ec.message());
  return ctx;
}

// --- connection state -------------------------------------------------------------------

enum class End { kNone, kPeerClosed, kTruncated, kBroken, kProtocol };

struct ConnState {
  ConnState(asio::io_context& io, std::shared_ptr<ssl::context> c, uint32_t max_frame_bytes)
      : ctx(std::move(c)), stream(io, *ctx), decoder(max_frame_bytes), buf(kReadChunk) {}

  std::shared_ptr<ssl::context> ctx;  // outlives stream
  SslStream stream;
  std::string peer;     // CN of the peer certificate; set before the connection is handed out
  std::string address;  // "ip:port" of the peer

  // I/O thread only.
  common::FrameDecoder decoder;
  std::vector<char> buf;
  bool reading = false;
  bool socket_closed = false;
  std::string verify_reason;  // why certificate verification failed, if it did
  // Checks the peer certificate's CN during the handshake: allowed (server side) or
  // expected (client side). Empty = any CN.
  std::vector<std::string> admitted;
  // The role the peer's certificate must have been issued for (pki.h: CertRole): a site's
  // on the server side, the coordinator's on the client side.
  CertRole peer_role = CertRole::kWorker;

  // Guarded by mu.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Frame> frames;
  End end = End::kNone;
  std::string end_reason;
  bool closed_here = false;
  std::shared_ptr<common::ArrivalBell> bell;  // Connection::watch
  uint64_t bell_tag = 0;

  std::atomic<uint64_t> sent{0};
  std::atomic<uint64_t> received{0};
};

// I/O thread. Best effort: errors are logged, the socket ends up closed either way.
void close_socket(ConnState& s) {
  if (s.socket_closed) return;
  s.socket_closed = true;
  auto& sock = s.stream.lowest_layer();
  error_code ec;
  sock.shutdown(tcp::socket::shutdown_both, ec);
  if (ec && ec != asio::error::not_connected && ec != asio::error::bad_descriptor) {
    spdlog::debug("tls: shutdown of the connection to {} ({}): {}", s.peer, s.address, ec.message());
  }
  sock.close(ec);
  if (ec) spdlog::debug("tls: close of the connection to {} ({}): {}", s.peer, s.address, ec.message());
}

// Installs the certificate check for the handshake (I/O thread, before the handshake).
void install_verify(const std::shared_ptr<ConnState>& s) {
  ConnState* raw = s.get();  // the callback lives inside s->stream, so s outlives it
  error_code ec;
  s->stream.set_verify_callback(
      [raw](bool preverified, ssl::verify_context& vctx) {
        X509_STORE_CTX* sctx = vctx.native_handle();
        X509* cert = X509_STORE_CTX_get_current_cert(sctx);
        if (!preverified) {
          if (raw->verify_reason.empty()) {
            const int err = X509_STORE_CTX_get_error(sctx);
            const std::string cn = common_name(cert);
            const std::string what = std::string(X509_STORE_CTX_get_error_depth(sctx) == 0 ? "certificate" : "CA certificate") +
                                     (cn.empty() ? "" : " '" + cn + "'");
            raw->verify_reason = what + " rejected: " + X509_verify_cert_error_string(err);
            if (cert && (err == X509_V_ERR_CERT_HAS_EXPIRED || err == X509_V_ERR_CERT_NOT_YET_VALID)) {
              raw->verify_reason += std::string(" (") + (err == X509_V_ERR_CERT_HAS_EXPIRED ? "notAfter " : "notBefore ") +
                                    cert_detail::time_str(err == X509_V_ERR_CERT_HAS_EXPIRED ? X509_get0_notAfter(cert)
                                                                                             : X509_get0_notBefore(cert)) +
                                    "; valid from " + cert_detail::time_str(X509_get0_notBefore(cert)) + " to " +
                                    cert_detail::time_str(X509_get0_notAfter(cert)) + ")";
            }
          }
          return false;
        }
        if (X509_STORE_CTX_get_error_depth(sctx) != 0) return true;
        const std::string cn = common_name(cert);
        if (cn.empty()) {
          raw->verify_reason = "certificate has no single common name (CN)";
          X509_STORE_CTX_set_error(sctx, X509_V_ERR_APPLICATION_VERIFICATION);
          return false;
        }
        // The role the certificate was issued for: a coordinator's certificate cannot join as
        // a site, a site's cannot serve as the coordinator.
        const auto role = cert_detail::certificate_role(cert);
        if (role != raw->peer_role) {
          raw->verify_reason = "certificate '" + cn + "' was " +
                               (role ? std::string("issued for the ") + role_name(*role) + " role"
                                     : std::string("issued without an extendedKeyUsage saying its role")) +
                               "; a " + role_name(raw->peer_role) + " certificate is required here";
          X509_STORE_CTX_set_error(sctx, X509_V_ERR_APPLICATION_VERIFICATION);
          return false;
        }
        if (!raw->admitted.empty() &&
            std::find(raw->admitted.begin(), raw->admitted.end(), cn) == raw->admitted.end()) {
          raw->verify_reason = "certificate name '" + cn + "' is not admitted (expected " +
                               quoted_names(raw->admitted) + ")";
          // Makes the peer get a "certificate unknown" alert rather than "internal error".
          X509_STORE_CTX_set_error(sctx, X509_V_ERR_APPLICATION_VERIFICATION);
          return false;
        }
        return true;
      },
      ec);
  if (ec) throw TransportError("TLS: cannot install the certificate check: " + ec.message());
}

std::string peer_cn(SslStream& stream) {
  X509* cert = SSL_get1_peer_certificate(stream.native_handle());
  std::string cn = common_name(cert);
  X509_free(cert);
  return cn;
}

void start_read(const std::shared_ptr<ConnState>& s);

// Tells a watcher (Connection::watch) that a frame or the end is there to take.
void ring_bell(ConnState& s) {
  std::shared_ptr<common::ArrivalBell> bell;
  uint64_t tag = 0;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    bell = s.bell;
    tag = s.bell_tag;
  }
  if (bell) bell->ring(tag);
}

void on_read(const std::shared_ptr<ConnState>& s, const error_code& ec, size_t n) {
  s->reading = false;
  if (s->socket_closed) return;  // we closed it; close() already woke the readers
  bool more = false;
  bool bad_frame = false;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    if (ec) {
      if (ec == asio::error::eof || ec == ssl::error::stream_truncated) {
        const size_t pending = s->decoder.pending_bytes();
        if (pending > 0) {
          s->end = End::kTruncated;
          s->end_reason = s->peer + " (" + s->address +
                          ") closed the connection in the middle of a frame (truncated frame: " +
                          std::to_string(pending) + " bytes of an incomplete frame)";
        } else {
          s->end = End::kPeerClosed;
          s->end_reason = s->peer + " (" + s->address + ") closed the connection";
        }
      } else {
        s->end = End::kBroken;
        s->end_reason = "connection to " + s->peer + " (" + s->address + ") failed: " + describe(ec);
      }
    } else {
      s->received += n;
      try {
        s->decoder.feed(s->buf.data(), n);
        while (auto f = s->decoder.next()) s->frames.push_back(std::move(*f));
        more = s->frames.empty();
      } catch (const ProtocolError& e) {
        s->end = End::kProtocol;
        s->end_reason = std::string(e.what()) + " (from " + s->peer + " at " + s->address +
                        "; connection closed)";
        bad_frame = true;
      }
    }
  }
  if (more) {
    start_read(s);
    return;
  }
  if (bad_frame) close_socket(*s);
  s->cv.notify_all();
  ring_bell(*s);
}

// I/O thread: keeps one read outstanding while nothing waits in the queue.
void start_read(const std::shared_ptr<ConnState>& s) {
  if (s->reading || s->socket_closed) return;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    if (!s->frames.empty() || s->end != End::kNone) return;
  }
  s->reading = true;
  s->stream.async_read_some(asio::buffer(s->buf),
                            [s](const error_code& ec, size_t n) { on_read(s, ec, n); });
}

class TlsConnection final : public Connection {
 public:
  TlsConnection(std::shared_ptr<IoRunner> runner, std::shared_ptr<ConnState> state, Millis send_timeout)
      : runner_(std::move(runner)), s_(std::move(state)), send_timeout_(send_timeout) {
    asio::post(runner_->io(), [s = s_] { start_read(s); });
  }

  ~TlsConnection() override { close(); }

  void send(const Frame& frame) override {
    write(std::make_shared<const std::string>(common::encode_frame(frame)));
  }
  // One buffer for every site of a broadcast: no copy per connection.
  void send(const SharedFrame& frame) override { write(frame.bytes()); }

 private:
  void write(std::shared_ptr<const std::string> bytes) {
    std::lock_guard<std::mutex> send_lock(send_mu_);
    {
      std::lock_guard<std::mutex> lock(s_->mu);
      if (s_->closed_here) throw TransportError("TLS connection to " + s_->peer + " is closed");
      // Once the peer has closed (cleanly or not) nothing sent would be read: fail the send
      // rather than lose the frame (the Connection contract: delivered, or an error).
      if (s_->end != End::kNone) {
        throw TransportError("cannot send to " + s_->peer + ": " +
                             (s_->end_reason.empty() ? std::string("it closed the connection") : s_->end_reason));
      }
    }
    auto done = std::make_shared<std::promise<error_code>>();
    auto fut = done->get_future();
    asio::post(runner_->io(), [s = s_, bytes, done] {
      if (s->socket_closed) {
        done->set_value(asio::error::not_connected);
        return;
      }
      asio::async_write(s->stream, asio::buffer(*bytes),
                        [bytes, done](const error_code& ec, size_t) { done->set_value(ec); });
    });
    const Millis wait = clamp_wait(send_timeout_);
    if (fut.wait_for(wait) != std::future_status::ready) {
      close();
      throw TransportError("sending " + std::to_string(bytes->size()) + " bytes to " + s_->peer +
                           " did not complete within " + ms_str(wait) +
                           " (peer not reading?); connection closed");
    }
    const error_code ec = fut.get();
    if (ec) {
      std::string reason = describe(ec);
      {
        std::lock_guard<std::mutex> lock(s_->mu);
        if (s_->closed_here) throw TransportError("TLS connection to " + s_->peer + " is closed");
        if (s_->end == End::kNone || s_->end == End::kPeerClosed) {
          s_->end = End::kBroken;
          s_->end_reason = "connection to " + s_->peer + " (" + s_->address + ") failed: " + reason;
        }
      }
      s_->cv.notify_all();
      ring_bell(*s_);
      runner_->run_sync([s = s_] { close_socket(*s); });
      throw TransportError("sending to " + s_->peer + " (" + s_->address + ") failed: " + reason);
    }
    s_->sent += bytes->size();
  }

 public:

  Frame recv(Millis timeout) override {
    std::unique_lock<std::mutex> lock(s_->mu);
    const auto deadline = std::chrono::steady_clock::now() + clamp_wait(timeout);
    s_->cv.wait_until(lock, deadline, [&] {
      return s_->closed_here || !s_->frames.empty() || s_->end != End::kNone;
    });
    if (s_->closed_here) throw TransportError("TLS connection to " + s_->peer + " is closed");
    if (!s_->frames.empty()) {
      Frame f = std::move(s_->frames.front());
      s_->frames.pop_front();
      const bool resume = s_->frames.empty() && s_->end == End::kNone;
      lock.unlock();
      if (resume) asio::post(runner_->io(), [s = s_] { start_read(s); });
      return f;
    }
    switch (s_->end) {
      case End::kNone:
        throw TimeoutError("no message from " + s_->peer + " within " + ms_str(timeout));
      case End::kProtocol: {
        // Reported once; afterwards the connection is simply closed.
        std::string reason = s_->end_reason;
        s_->closed_here = true;
        throw ProtocolError(reason);
      }
      default:
        throw TransportError(s_->end_reason);
    }
  }

  bool watch(std::shared_ptr<common::ArrivalBell> bell, uint64_t tag) override {
    bool now = false;
    {
      std::lock_guard<std::mutex> lock(s_->mu);
      s_->bell = bell;
      s_->bell_tag = tag;
      now = !s_->frames.empty() || s_->end != End::kNone || s_->closed_here;
    }
    if (bell && now) bell->ring(tag);
    return true;
  }

  void close() override {
    {
      std::lock_guard<std::mutex> lock(s_->mu);
      if (close_done_) return;
      s_->closed_here = true;
      close_done_ = true;
    }
    s_->cv.notify_all();
    runner_->run_sync([s = s_] { close_socket(*s); });
  }

  std::string peer_name() const override { return s_->peer; }
  std::string peer_address() const override { return s_->address; }
  uint64_t bytes_sent() const override { return s_->sent.load(); }
  uint64_t bytes_received() const override { return s_->received.load(); }

 private:
  std::shared_ptr<IoRunner> runner_;  // declared first: destroyed last
  std::shared_ptr<ConnState> s_;
  Millis send_timeout_;
  std::mutex send_mu_;
  bool close_done_ = false;  // guarded by s_->mu
};

// --- listener ----------------------------------------------------------------------------

// What the listener's I/O thread works on. Handlers hold it; it does not hold the IoRunner.
struct ListenerCore : std::enable_shared_from_this<ListenerCore> {
  ListenerCore(asio::io_context& i, TlsConfig c, std::shared_ptr<ssl::context> x)
      : io(i), cfg(std::move(c)), ctx(std::move(x)), acceptor(io), retry_timer(io) {}

  struct Pending {
    Pending(std::shared_ptr<ConnState> c, asio::io_context& io) : conn(std::move(c)), timer(io) {}
    std::shared_ptr<ConnState> conn;
    asio::steady_timer timer;
    bool timed_out = false;
  };

  asio::io_context& io;
  const TlsConfig cfg;
  std::shared_ptr<ssl::context> ctx;
  tcp::acceptor acceptor;
  asio::steady_timer retry_timer;
  uint16_t port = 0;  // set before the listener is handed out

  // I/O thread only.
  bool closing = false;
  std::set<std::shared_ptr<Pending>> pending;

  // Guarded by mu.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::shared_ptr<ConnState>> ready;
  bool closed = false;

  void do_accept();
  void start_handshake(const std::shared_ptr<ConnState>& conn);
  void finish_handshake(const std::shared_ptr<Pending>& hs, const error_code& ec);
  void shut_down();
};

void ListenerCore::do_accept() {
  if (closing) return;
  auto conn = std::make_shared<ConnState>(io, ctx, cfg.max_frame_bytes);
  acceptor.async_accept(conn->stream.lowest_layer(),
                        [self = shared_from_this(), conn](const error_code& ec) {
    if (self->closing) {
      close_socket(*conn);
      return;
    }
    if (ec) {
      if (ec == asio::error::operation_aborted) return;
      // Out of descriptors and the like: back off instead of spinning.
      spdlog::warn("tls: accept on port {} failed: {}; retrying", self->port, ec.message());
      self->retry_timer.expires_after(std::chrono::milliseconds(100));
      self->retry_timer.async_wait([self](const error_code& tec) {
        if (tec != asio::error::operation_aborted) self->do_accept();
      });
      return;
    }
    self->start_handshake(conn);
    self->do_accept();
  });
}

void ListenerCore::start_handshake(const std::shared_ptr<ConnState>& conn) {
  error_code ec;
  const tcp::endpoint ep = conn->stream.lowest_layer().remote_endpoint(ec);
  conn->address = ec ? "unknown address (" + ec.message() + ")" : endpoint_str(ep);
  conn->peer = conn->address;  // until the certificate says who it is
  if (pending.size() >= kMaxPendingHandshakes) {
    spdlog::warn("tls: refused connection from {}: {} TLS handshakes already in progress",
                 conn->address, pending.size());
    close_socket(*conn);
    return;
  }
  conn->stream.lowest_layer().set_option(tcp::no_delay(true), ec);
  if (ec) spdlog::debug("tls: TCP_NODELAY for {}: {}", conn->address, ec.message());
  conn->admitted = cfg.allowed_names;
  conn->peer_role = CertRole::kWorker;
  install_verify(conn);
  auto hs = std::make_shared<Pending>(conn, io);
  pending.insert(hs);
  hs->timer.expires_after(clamp_wait(cfg.handshake_timeout));
  hs->timer.async_wait([hs](const error_code& tec) {
    if (tec == asio::error::operation_aborted) return;
    if (tec) spdlog::debug("tls: handshake timer for {}: {}", hs->conn->address, tec.message());
    hs->timed_out = true;
    close_socket(*hs->conn);  // fails the handshake
  });
  conn->stream.async_handshake(ssl::stream_base::server,
                               [self = shared_from_this(), hs](const error_code& hec) {
                                 self->finish_handshake(hs, hec);
                               });
}

void ListenerCore::finish_handshake(const std::shared_ptr<Pending>& hs, const error_code& ec) {
  hs->timer.cancel();
  pending.erase(hs);
  ConnState& c = *hs->conn;
  if (closing) {
    close_socket(c);
    return;
  }
  std::string reason;
  if (hs->timed_out) {
    reason = "no TLS handshake within " + ms_str(cfg.handshake_timeout);
  } else if (ec) {
    if (!c.verify_reason.empty()) {
      reason = c.verify_reason;
    } else if (ec == asio::error::eof || ec == ssl::error::stream_truncated) {
      reason = "the client closed the connection during the TLS handshake";
    } else {
      reason = describe(ec);
    }
  } else {
    const std::string cn = peer_cn(c.stream);
    if (cn.empty()) reason = "certificate has no single common name (CN)";
    c.peer = cn;
  }
  if (!reason.empty()) {
    spdlog::warn("tls: refused connection from {}: {}", c.address, reason);
    close_socket(c);
    return;
  }
  spdlog::debug("tls: {} connected from {}", c.peer, c.address);
  {
    std::lock_guard<std::mutex> lock(mu);
    ready.push_back(hs->conn);
  }
  cv.notify_all();
}

void ListenerCore::shut_down() {
  closing = true;
  error_code ec;
  acceptor.close(ec);
  if (ec) spdlog::debug("tls: closing the listener on port {}: {}", port, ec.message());
  retry_timer.cancel();
  for (const auto& hs : pending) {
    hs->timer.cancel();
    close_socket(*hs->conn);
  }
  pending.clear();
  std::deque<std::shared_ptr<ConnState>> unclaimed;
  {
    std::lock_guard<std::mutex> lock(mu);
    unclaimed.swap(ready);
  }
  for (const auto& c : unclaimed) close_socket(*c);
}

}  // namespace tls_detail

struct TlsListener::State {
  std::shared_ptr<tls_detail::IoRunner> runner;  // declared first: destroyed last
  std::shared_ptr<tls_detail::ListenerCore> core;
};

TlsListener::TlsListener(std::shared_ptr<State> state) : state_(std::move(state)) {}

TlsListener::~TlsListener() { close(); }

std::unique_ptr<Connection> TlsListener::accept(Millis timeout) {
  auto& core = *state_->core;
  std::shared_ptr<tls_detail::ConnState> conn;
  {
    std::unique_lock<std::mutex> lock(core.mu);
    const auto deadline = std::chrono::steady_clock::now() + tls_detail::clamp_wait(timeout);
    core.cv.wait_until(lock, deadline, [&] { return core.closed || !core.ready.empty(); });
    if (core.closed) {
      throw TransportError("TLS listener on port " + std::to_string(core.port) + " is closed");
    }
    if (core.ready.empty()) {
      throw TimeoutError("no TLS connection on port " + std::to_string(core.port) + " within " +
                         tls_detail::ms_str(timeout));
    }
    conn = std::move(core.ready.front());
    core.ready.pop_front();
  }
  return std::make_unique<tls_detail::TlsConnection>(state_->runner, std::move(conn),
                                                     core.cfg.send_timeout);
}

void TlsListener::close() {
  auto& core = *state_->core;
  {
    std::lock_guard<std::mutex> lock(core.mu);
    if (core.closed) return;
    core.closed = true;
  }
  core.cv.notify_all();
  state_->runner->run_sync([c = state_->core] { c->shut_down(); });
}

uint16_t TlsListener::port() const { return state_->core->port; }

std::unique_ptr<TlsListener> tls_listen(const std::string& host, uint16_t port,
                                        const TlsConfig& config) {
  using namespace tls_detail;
  auto ctx = make_context(config, /*server=*/true);
  auto state = std::make_shared<TlsListener::State>();
  state->runner = std::make_shared<IoRunner>();
  state->core = std::make_shared<ListenerCore>(state->runner->io(), config, ctx);
  ListenerCore& core = *state->core;
  const std::string where = (host.empty() ? "*" : host) + ":" + std::to_string(port);
  state->runner->run_sync([&] {
    error_code ec;
    tcp::endpoint ep;
    if (host.empty()) {
      ep = tcp::endpoint(tcp::v4(), port);
    } else {
      const auto addr = asio::ip::make_address(host, ec);
      if (!ec) {
        ep = tcp::endpoint(addr, port);
      } else {
        tcp::resolver resolver(core.io);
        auto results = resolver.resolve(host, std::to_string(port), ec);
        if (ec || results.empty()) {
          throw TransportError("cannot listen on " + where + ": cannot resolve '" + host +
                               "': " + (ec ? ec.message() : "no address"));
        }
        ep = results.begin()->endpoint();
      }
    }
    auto fail = [&](const char* step) {
      throw TransportError("cannot listen on " + where + ": " + step + ": " + ec.message());
    };
    core.acceptor.open(ep.protocol(), ec);
    if (ec) fail("open");
    core.acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
    if (ec) fail("SO_REUSEADDR");
    core.acceptor.bind(ep, ec);
    if (ec) fail("bind");
    core.acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) fail("listen");
    const auto local = core.acceptor.local_endpoint(ec);
    if (ec) fail("local address");
    core.port = local.port();
    core.do_accept();
  });
  spdlog::debug("tls: listening on {} (port {})", where, core.port);
  return std::unique_ptr<TlsListener>(new TlsListener(std::move(state)));
}

// --- client ------------------------------------------------------------------------------

std::unique_ptr<Connection> tls_connect(const std::string& host, uint16_t port,
                                        const TlsConfig& config, Millis timeout) {
  using namespace tls_detail;
  auto ctx = make_context(config, /*server=*/false);
  auto runner = std::make_shared<IoRunner>();
  auto conn = std::make_shared<ConnState>(runner->io(), ctx, config.max_frame_bytes);
  const std::string where = host + ":" + std::to_string(port);
  conn->address = where;
  conn->peer = config.expected_server_name.empty() ? where : config.expected_server_name;

  struct Attempt {
    explicit Attempt(asio::io_context& io) : resolver(io), timer(io), hs_timer(io) {}
    tcp::resolver resolver;
    asio::steady_timer timer;     // the whole connect
    asio::steady_timer hs_timer;  // the handshake part
    std::promise<void> done;
    bool finished = false;
    bool timed_out = false;
    bool identity_refused = false;  // the server's certificate was refused (name, role, CA)
    std::string stage = "resolving";
    std::string error;
  };
  auto at = std::make_shared<Attempt>(runner->io());
  auto fut = at->done.get_future();
  const Millis total = clamp_wait(timeout);
  const Millis hs_limit = clamp_wait(config.handshake_timeout);

  asio::post(runner->io(), [at, conn, host, port, total, hs_limit, &config] {
    // I/O thread from here on.
    auto finish = [at, conn](std::string error) {
      if (at->finished) return;
      at->finished = true;
      at->timer.cancel();
      at->hs_timer.cancel();
      at->error = std::move(error);
      if (!at->error.empty()) close_socket(*conn);
      at->done.set_value();
    };
    // The handler for both timers: whichever fires first fails the step in progress.
    auto expire = [at, conn](const error_code& ec) {
      if (ec == asio::error::operation_aborted || at->finished) return;
      at->timed_out = true;
      at->resolver.cancel();
      close_socket(*conn);
    };
    at->timer.expires_after(total);
    at->timer.async_wait(expire);
    try {
      conn->admitted.clear();
      if (!config.expected_server_name.empty()) conn->admitted.push_back(config.expected_server_name);
      conn->peer_role = CertRole::kCoordinator;
      install_verify(conn);
      // SNI (informational; the server has a single certificate) unless host is an address.
      error_code aec;
      asio::ip::make_address(host, aec);
      if (aec) SSL_set_tlsext_host_name(conn->stream.native_handle(), host.c_str());
    } catch (const std::exception& e) {
      finish(e.what());
      return;
    }
    at->resolver.async_resolve(
        host, std::to_string(port),
        [at, conn, finish, expire, hs_limit](const error_code& ec, tcp::resolver::results_type results) {
          if (ec) return finish(at->timed_out ? "" : "cannot resolve the host name: " + ec.message());
          at->stage = "connecting";
          asio::async_connect(
              conn->stream.lowest_layer(), results,
              [at, conn, finish, expire, hs_limit](const error_code& cec, const tcp::endpoint& ep) {
                if (cec) return finish(at->timed_out ? "" : describe(cec));
                conn->address = endpoint_str(ep);
                error_code oec;
                conn->stream.lowest_layer().set_option(tcp::no_delay(true), oec);
                if (oec) spdlog::debug("tls: TCP_NODELAY to {}: {}", conn->address, oec.message());
                at->stage = "TLS handshake";
                at->hs_timer.expires_after(hs_limit);
                at->hs_timer.async_wait(expire);
                conn->stream.async_handshake(
                    ssl::stream_base::client, [at, conn, finish](const error_code& hec) {
                      if (hec) {
                        if (at->timed_out) return finish("");
                        at->identity_refused = !conn->verify_reason.empty();
                        return finish(conn->verify_reason.empty()
                                          ? describe(hec)
                                          : "server " + conn->verify_reason);
                      }
                      const std::string cn = peer_cn(conn->stream);
                      if (cn.empty()) return finish("server certificate has no single common name (CN)");
                      conn->peer = cn;
                      finish("");
                    });
              });
        });
  });
  fut.wait();
  if (at->timed_out) {
    throw TimeoutError("cannot connect to " + where + ": timed out during " + at->stage +
                       " (limits: " + ms_str(total) + " in all, " + ms_str(hs_limit) +
                       " for the handshake)");
  }
  if (!at->error.empty()) {
    if (at->identity_refused) throw PeerIdentityError("cannot connect to " + where + ": " + at->error);
    throw TransportError("cannot connect to " + where + ": " + at->error);
  }
  spdlog::debug("tls: connected to {} at {}", conn->peer, conn->address);
  return std::make_unique<TlsConnection>(std::move(runner), std::move(conn), config.send_timeout);
}

}  // namespace fedtl::common

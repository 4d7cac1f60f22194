// TLS backend of the transport interface: mutual TLS 1.3 over TCP (Boost.Asio + OpenSSL 3).
// Both sides present a certificate signed by the federation CA (see common/transport/pki.h) and verify
// the other's; a party's identity is its certificate's common name (CN), which is what
// Connection::peer_name() reports. Frames travel with the wire framing of
// common/transport/framing.h. Asio and OpenSSL stay inside common/transport/tls.cc: this header is safe to
// include from protocol code.
//
// Threading: a listener owns one I/O thread that accepts, runs every TLS handshake
// concurrently (a silent or slow client never delays an honest one) and then serves the
// connections it accepted; a client connection owns its own I/O thread. The calling threads
// only block on queues, so Connection's contract holds: one thread may send while another
// receives, and recv(timeout) / accept(timeout) honour their timeouts.
//
// Counters: bytes_sent()/bytes_received() count framed application bytes (16-byte header +
// payload); TLS record overhead (about 22 bytes per 16 KiB record) is not included.
//
// Close: close() shuts the TCP connection down without a TLS close_notify. The peer sees
// the end of the stream; an end in the middle of a frame is reported as a truncated frame,
// so truncation can never be mistaken for a complete message. Protocols that must tell a
// clean end from a cut one send an explicit message (kShutdown) before closing.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/transport/connection.h"

namespace fedtl::common {

struct TlsConfig {
  std::string ca_cert;  // PEM file: the federation CA certificate; peers must chain to it
  std::string cert;     // PEM file: this party's certificate (may be followed by its chain)
  std::string key;      // PEM file: this party's private key (unencrypted)
  // Largest payload accepted from the peer; a bigger length field is a ProtocolError.
  uint32_t max_frame_bytes = common::kDefaultMaxFrameBytes;
  // Server: how long an accepted TCP client has to complete the TLS handshake before it is
  // dropped. Client: upper bound of the handshake part of tls_connect.
  Millis handshake_timeout{std::chrono::seconds(10)};
  // How long send() waits for a frame to be handed to the kernel (a peer that stops reading
  // fills the socket buffers). On expiry the connection is closed and send() throws.
  Millis send_timeout{std::chrono::minutes(5)};
  // Server: the certificate names (CNs) admitted; empty = any certificate signed by the CA.
  std::vector<std::string> allowed_names;
  // Client: the CN the server's certificate must have; empty = any server certificate
  // signed by the CA (only coordinator kits carry the serverAuth usage that TLS requires).
  std::string expected_server_name;
};

// A TLS listener (coordinator side). accept() hands out connections whose handshake and
// certificate checks succeeded. A client that fails them (plaintext, no certificate, another
// CA, a name not in allowed_names, no handshake within handshake_timeout, ...) never reaches
// accept(): it is logged with spdlog::warn (address and reason) and dropped, and the listener
// keeps serving. At most 128 handshakes run at once; connections beyond that are dropped
// (and logged) until some finish.
// Thread safety: accept() and close() may be called from different threads; the connections
// it returns follow Connection's contract and may outlive the listener.
class TlsListener final : public Listener {
 public:
  struct State;
  ~TlsListener() override;  // closes
  // Waits up to `timeout` for an authenticated connection. Throws TimeoutError when none
  // came, TransportError once the listener is closed.
  std::unique_ptr<Connection> accept(Millis timeout) override;
  // Stops listening, drops handshakes in progress and connections not yet accepted; wakes a
  // blocked accept() with TransportError. Idempotent. Accepted connections stay open.
  void close() override;
  // The bound TCP port (the real one when tls_listen was given port 0).
  uint16_t port() const;

 private:
  friend std::unique_ptr<TlsListener> tls_listen(const std::string&, uint16_t, const TlsConfig&);
  explicit TlsListener(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

// Binds and listens on host:port ("" or "0.0.0.0" = all IPv4 interfaces, "::" = all IPv6,
// otherwise a name or address; port 0 = any free port, see TlsListener::port()).
// Throws ConfigError when the certificate, key or CA file cannot be loaded (naming the
// file), or fails check_own_credentials (pki.h): a key readable by group or others, a
// certificate or CA certificate expired or not yet valid, a certificate not issued for the
// coordinator role (no serverAuth). TransportError when the address cannot be bound.
// Clients must present a worker certificate (clientAuth without serverAuth): a coordinator's
// certificate presented as a site is refused (logged, like any other refused client). An
// expired or not-yet-valid client certificate is refused with its dates in the log line.
std::unique_ptr<TlsListener> tls_listen(const std::string& host, uint16_t port,
                                        const TlsConfig& config);

// Connects to host:port, performs the handshake and checks the server's certificate
// (signed by the CA, serverAuth usage, CN == expected_server_name when set). Blocks up to
// `timeout` for the whole of it (the handshake part also bounded by handshake_timeout).
// Throws ConfigError for unusable certificate/key/CA files (including check_own_credentials,
// pki.h, for the worker role: a coordinator kit cannot connect as a site), TimeoutError when time ran out,
// TransportError for anything else (refused, unreachable, server certificate rejected; the
// message says which). Note that in TLS 1.3 the server checks the *client's* certificate
// after the client's side of the handshake has completed: a client the server refuses gets
// its connection here and learns of the refusal from its first recv() (TransportError
// naming the TLS alert).
std::unique_ptr<Connection> tls_connect(const std::string& host, uint16_t port,
                                        const TlsConfig& config, Millis timeout);

}  // namespace fedtl::common

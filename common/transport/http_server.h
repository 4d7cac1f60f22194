// A small read-only HTTP/1.1 server (Boost.Beast) for watching a running job: the
// coordinator's status page, its JSON status and its Prometheus metrics.
//
// It answers GET and HEAD only (anything else: 405), one request per connection (the response
// says `Connection: close`), from one I/O thread of its own. Everything a client controls is
// bounded, so a hostile or broken client costs the job nothing but a socket:
//   - the request head (line + headers) at most `max_header_bytes`, no request body at all;
//   - the whole request must arrive within `request_timeout` (a slow or silent client is cut);
//   - the response must be taken within `request_timeout` too;
//   - at most `max_connections` at once; one more is closed at accept.
// The handler runs on the I/O thread: it must be quick and must not throw (an exception is
// answered with 500 and logged). Asio and Beast stay in http_server.cc.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/transport/http_client.h"

namespace fedtl::common {

// A handler's answer (HttpResponse of http_client.h: status, content_type and body are used).
HttpResponse http_reply(int status, std::string content_type, std::string body);

struct HttpServerLimits {
  size_t max_header_bytes = 8 * 1024;
  std::chrono::milliseconds request_timeout{std::chrono::seconds(5)};
  size_t max_connections = 32;
};

class HttpServer {
 public:
  // `path` is the request target without its query string ("/metrics").
  using Handler = std::function<HttpResponse(const std::string& path)>;

  // Binds address:port (port 0 = any free port, see port()) and starts serving. Throws
  // ConfigError when the address cannot be bound (naming it and why).
  HttpServer(const std::string& address, uint16_t port, Handler handler, HttpServerLimits limits = {});
  ~HttpServer();  // stops: closes the listener and every open connection, joins the thread
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  uint16_t port() const;
  // Requests answered so far (any status), and connections refused or cut (over the
  // connection limit, too slow, oversized or malformed).
  uint64_t requests_served() const;
  uint64_t connections_rejected() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace fedtl::common

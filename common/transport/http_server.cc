#include "common/transport/http_server.h"

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <algorithm>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "common/errors.h"

namespace fedtl::common {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

struct HttpSession;

struct HttpServer::State : std::enable_shared_from_this<HttpServer::State> {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  Handler handler;
  HttpServerLimits limits;
  std::atomic<uint64_t> served{0}, rejected{0};
  size_t open = 0;  // connections being served (I/O thread only)
  std::vector<std::weak_ptr<HttpSession>> sessions;  // to close them on stop (I/O thread only)
  std::thread thread;

  void accept();
};

// One connection: read one request (bounded), answer it, close.
struct HttpSession : std::enable_shared_from_this<HttpSession> {
  HttpSession(tcp::socket s, std::shared_ptr<HttpServer::State> st) : stream(std::move(s)), state(std::move(st)) {}
  beast::tcp_stream stream;
  std::shared_ptr<HttpServer::State> state;
  beast::flat_buffer buffer{8 * 1024};
  std::unique_ptr<http::request_parser<http::empty_body>> parser;
  http::response<http::string_body> res;

  void start() {
    parser = std::make_unique<http::request_parser<http::empty_body>>();
    parser->header_limit(static_cast<uint32_t>(state->limits.max_header_bytes));
    parser->body_limit(0);
    buffer = beast::flat_buffer(state->limits.max_header_bytes + 1024);
    stream.expires_after(state->limits.request_timeout);  // the whole request, however it trickles
    http::async_read(stream, buffer, *parser, [self = shared_from_this()](beast::error_code ec, size_t) {
      self->on_read(ec);
    });
  }

  void on_read(beast::error_code ec) {
    if (ec) {  // timeout, oversized head, body, garbage, or the client went away
      if (ec != http::error::end_of_stream) ++state->rejected;
      if (ec == http::error::header_limit || ec == http::error::body_limit) {
        reply(431, "text/plain; charset=utf-8", "request too large\n", false);
        return;
      }
      finish();
      return;
    }
    const auto& req = parser->get();
    std::string target(req.target());
    if (auto q = target.find('?'); q != std::string::npos) target.resize(q);
    if (req.method() != http::verb::get && req.method() != http::verb::head) {
      reply(405, "text/plain; charset=utf-8", "only GET and HEAD\n", false);
      return;
    }
    HttpResponse r;
    try {
      r = state->handler(target);
    } catch (const std::exception& e) {
      spdlog::warn("status server: {} failed: {}", target, e.what());
      r = http_reply(500, "text/plain; charset=utf-8", "internal error\n");
    }
    reply(r.status, r.content_type, std::move(r.body), req.method() == http::verb::head);
  }

  void reply(int status, const std::string& type, std::string body, bool head_only) {
    res = {};
    res.result(static_cast<http::status>(status));
    res.version(11);
    res.set(http::field::server, "fedtl");
    res.set(http::field::content_type, type);
    res.set(http::field::cache_control, "no-store");
    res.set(http::field::connection, "close");
    res.keep_alive(false);
    const size_t n = body.size();
    if (!head_only) res.body() = std::move(body);
    res.content_length(n);
    ++state->served;
    stream.expires_after(state->limits.request_timeout);  // a client that does not read is cut too
    http::async_write(stream, res, [self = shared_from_this()](beast::error_code, size_t) { self->finish(); });
  }

  void finish() {
    if (!state) return;
    close();
    if (state->open > 0) --state->open;
    state.reset();
  }
  void close() {
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream.socket().close(ignored);
  }
};

void HttpServer::State::accept() {
  acceptor.async_accept([self = shared_from_this()](beast::error_code ec, tcp::socket s) {
    if (ec == asio::error::operation_aborted || !self->acceptor.is_open()) return;
    if (!ec) {
      if (self->open >= self->limits.max_connections) {
        ++self->rejected;
        beast::error_code ignored;
        s.close(ignored);
      } else {
        ++self->open;
        auto session = std::make_shared<HttpSession>(std::move(s), self);
        // Forget finished sessions now and then so the list stays as short as the open set.
        if (self->sessions.size() > 2 * self->limits.max_connections)
          self->sessions.erase(std::remove_if(self->sessions.begin(), self->sessions.end(),
                                              [](const auto& w) { return w.expired(); }),
                               self->sessions.end());
        self->sessions.push_back(session);
        session->start();
      }
    }
    self->accept();
  });
}

HttpServer::HttpServer(const std::string& address, uint16_t port, Handler handler, HttpServerLimits limits)
    : state_(std::make_shared<State>()) {
  state_->handler = std::move(handler);
  state_->limits = limits;
  beast::error_code ec;
  const auto addr = asio::ip::make_address(address.empty() ? "127.0.0.1" : address, ec);
  if (ec) throw ConfigError("status server: '" + address + "' is not an IP address");
  const tcp::endpoint ep(addr, port);
  state_->acceptor.open(ep.protocol(), ec);
  if (!ec) state_->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) state_->acceptor.bind(ep, ec);
  if (!ec) state_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw ConfigError("status server: cannot listen on " + address + ":" + std::to_string(port) + ": " +
                      ec.message());
  state_->accept();
  state_->thread = std::thread([s = state_] {
    try {
      s->io.run();
    } catch (const std::exception& e) {
      spdlog::error("status server stopped: {}", e.what());
    }
  });
}

HttpServer::~HttpServer() {
  // Close the listener and every open connection on the I/O thread; their handlers then
  // complete (aborted), nothing is left to do and run() returns.
  asio::post(state_->io, [s = state_.get()] {
    beast::error_code ignored;
    s->acceptor.close(ignored);
    for (auto& w : s->sessions)
      if (auto session = w.lock()) session->close();
    s->sessions.clear();
  });
  if (state_->thread.joinable()) state_->thread.join();
}

uint16_t HttpServer::port() const { return state_->acceptor.local_endpoint().port(); }
uint64_t HttpServer::requests_served() const { return state_->served.load(); }
uint64_t HttpServer::connections_rejected() const { return state_->rejected.load(); }

HttpResponse http_reply(int status, std::string content_type, std::string body) {
  HttpResponse r;
  r.status = status;
  r.content_type = std::move(content_type);
  r.body = std::move(body);
  return r;
}

}  // namespace fedtl::common

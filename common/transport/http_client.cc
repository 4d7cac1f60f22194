// Blocking HTTP(S) over Beast's asynchronous operations: each operation is started on the
// client's own io_context and the calling thread runs that context until the operation's
// handler ran, so Beast's per-stream expiry gives every step its timeout.
#include "common/transport/http_client.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cctype>
#include <filesystem>
#include <limits>
#include <optional>

#include "common/errors.h"

namespace fedtl::common {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using boost::system::error_code;

constexpr int64_t kErrorBodyLimit = 64 * 1024;
constexpr uint32_t kHeaderLimit = 64 * 1024;

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string base64(const std::string& in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string ms_str(HttpMillis t) { return std::to_string(t.count()) + " ms"; }

bool is_ip_address(const std::string& host) {
  error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

// A failure on a kept-alive connection that the server may simply have closed while idle.
bool stale_connection(const error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
         ec == asio::error::broken_pipe || ec == ssl::error::stream_truncated;
}

}  // namespace

std::string HttpUrl::str() const {
  const bool v6 = host.find(':') != std::string::npos;
  return std::string(https ? "https" : "http") + "://" + (v6 ? "[" + host + "]" : host) + ":" +
         std::to_string(port) + base_path;
}

HttpUrl parse_http_url(const std::string& url, const std::string& what) {
  HttpUrl u;
  const auto sep = url.find("://");
  if (sep == std::string::npos) throw ConfigError(what + " must start with http:// or https://");
  const std::string scheme = lower(url.substr(0, sep));
  if (scheme != "http" && scheme != "https")
    throw ConfigError(what + " must start with http:// or https:// (got '" + scheme + "://')");
  u.https = scheme == "https";
  const std::string rest = url.substr(sep + 3);
  const auto path_at = rest.find('/');
  const std::string authority = rest.substr(0, path_at);
  if (authority.find('@') != std::string::npos)
    throw ConfigError(what + " must not carry credentials (user:password@): give the user name and a password "
                             "file or environment variable instead");
  if (url.find_first_of("?#") != std::string::npos)
    throw ConfigError(what + " '" + url + "' must not have a query (?) or fragment (#)");
  if (url.find_first_of(" \t\r\n") != std::string::npos)
    throw ConfigError(what + " must not contain white space");
  std::string port;
  if (!authority.empty() && authority[0] == '[') {
    const auto close = authority.find(']');
    if (close == std::string::npos) throw ConfigError(what + " '" + url + "': unterminated [IPv6 address]");
    u.host = authority.substr(1, close - 1);
    const std::string after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') throw ConfigError(what + " '" + url + "': unexpected text after the IPv6 address");
      port = after.substr(1);
    }
  } else {
    const auto colon = authority.find(':');
    u.host = authority.substr(0, colon);
    if (colon != std::string::npos) port = authority.substr(colon + 1);
    if (port.find(':') != std::string::npos)
      throw ConfigError(what + " '" + url + "': write an IPv6 address in brackets ([::1]:8042)");
  }
  if (u.host.empty()) throw ConfigError(what + " '" + url + "' names no host");
  if (port.empty()) {
    u.port = u.https ? 443 : 80;
  } else {
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos || std::stoi(port) < 1 ||
        std::stoi(port) > 65535)
      throw ConfigError(what + " '" + url + "': bad port '" + port + "'");
    u.port = static_cast<uint16_t>(std::stoi(port));
  }
  if (path_at != std::string::npos) u.base_path = rest.substr(path_at);
  while (!u.base_path.empty() && u.base_path.back() == '/') u.base_path.pop_back();
  return u;
}

struct HttpClient::Impl {
  HttpUrl url;
  HttpOptions opt;
  HttpCounters counters;
  std::string authorization;  // "Basic ..." or ""
  std::string host_header;
  asio::io_context ioc;
  std::unique_ptr<ssl::context> tls_ctx;
  std::unique_ptr<beast::tcp_stream> plain;
  std::unique_ptr<beast::ssl_stream<beast::tcp_stream>> tls;
  beast::flat_buffer buffer;

  std::string where() const { return opt.server_label + " at " + url.str(); }
  bool is_open() const { return plain || tls; }
  beast::tcp_stream& tcp() { return tls ? beast::get_lowest_layer(*tls) : *plain; }

  // Starts one asynchronous operation and runs the context until its handler ran.
  template <class Start>
  error_code run(Start start) {
    error_code result = asio::error::would_block;
    start([&result](error_code ec, auto&&...) { result = ec; });
    ioc.restart();
    ioc.run();
    return result;
  }

  void close() {
    if (!is_open()) return;
    error_code ignored;  // closing a socket that failed: nothing left to report
    tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
    tcp().socket().close(ignored);
    tls.reset();
    plain.reset();
    buffer.clear();
  }

  [[noreturn]] void fail_io(const error_code& ec, const std::string& during) {
    close();
    if (ec == beast::error::timeout)
      throw TimeoutError(where() + " did not answer within " + ms_str(opt.io_timeout) + " (" + during + ")");
    if (ec == http::error::body_limit)
      throw DataError(where() + ": the answer is larger than the limit (" + during + ")");
    if (ec.category() == http::make_error_code(http::error::end_of_stream).category() && ec != http::error::end_of_stream &&
        ec != http::error::partial_message)
      throw DataError(where() + " sent a malformed HTTP answer (" + during + "): " + ec.message());
    if (ec == http::error::end_of_stream || ec == http::error::partial_message || ec == asio::error::eof ||
        ec == ssl::error::stream_truncated)
      throw TransportError(where() + " closed the connection before answering in full (" + during + ")");
    throw TransportError(where() + ": " + during + " failed: " + ec.message());
  }

  void connect() {
    const auto deadline = std::chrono::steady_clock::now() + opt.connect_timeout;
    tcp::resolver resolver(ioc);
    tcp::resolver::results_type endpoints;
    error_code ec = asio::error::would_block;
    bool done = false;
    resolver.async_resolve(url.host, std::to_string(url.port), [&](error_code e, tcp::resolver::results_type r) {
      ec = e;
      endpoints = std::move(r);
      done = true;
    });
    ioc.restart();
    ioc.run_for(opt.connect_timeout);
    if (!done) {
      resolver.cancel();
      ioc.restart();
      ioc.run();
      throw TimeoutError(where() + ": resolving '" + url.host + "' took longer than " + ms_str(opt.connect_timeout));
    }
    if (ec) throw TransportError("cannot resolve the host of " + where() + ": " + ec.message());

    if (url.https) {
      tls = std::make_unique<beast::ssl_stream<beast::tcp_stream>>(ioc, *tls_ctx);
      SSL* s = tls->native_handle();
      if (is_ip_address(url.host)) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), url.host.c_str());
      } else {
        SSL_set_tlsext_host_name(s, url.host.c_str());
        SSL_set1_host(s, url.host.c_str());
      }
    } else {
      plain = std::make_unique<beast::tcp_stream>(ioc);
    }
    auto left = [&] {
      return std::max(HttpMillis(1), std::chrono::duration_cast<HttpMillis>(deadline - std::chrono::steady_clock::now()));
    };
    tcp().expires_after(left());
    ec = run([&](auto h) { tcp().async_connect(endpoints, std::move(h)); });
    if (ec) {
      close();
      if (ec == beast::error::timeout)
        throw TimeoutError(where() + " did not accept a connection within " + ms_str(opt.connect_timeout));
      std::string hint = ec == asio::error::connection_refused ? " (is it running? is the URL right?)" : "";
      throw TransportError("cannot connect to " + where() + ": " + ec.message() + hint);
    }
    ++counters.connections;
    tcp().socket().set_option(tcp::no_delay(true), ec);  // latency only; failure is harmless
    if (tls) {
      tcp().expires_after(left());
      ec = run([&](auto h) { tls->async_handshake(ssl::stream_base::client, std::move(h)); });
      if (ec) {
        const long verify = SSL_get_verify_result(tls->native_handle());
        close();
        if (ec == beast::error::timeout)
          throw TimeoutError(where() + ": the TLS handshake did not finish within " + ms_str(opt.connect_timeout));
        if (verify != X509_V_OK)
          throw PeerIdentityError(where() + ": its TLS certificate was refused: " +
                                  X509_verify_cert_error_string(verify) +
                                  (opt.ca_file.empty() ? " (no CA file given: the system's trust store was used)"
                                                       : " (checked against CA file '" + opt.ca_file + "')"));
        throw TransportError(where() + ": the TLS handshake failed: " + ec.message());
      }
    }
  }

  template <class Stream, class Req>
  error_code write(Stream& s, Req& req) {
    tcp().expires_after(opt.io_timeout);
    return run([&](auto h) { http::async_write(s, req, std::move(h)); });
  }
  template <class Stream, class Parser>
  error_code read_header(Stream& s, Parser& p) {
    tcp().expires_after(opt.io_timeout);
    return run([&](auto h) { http::async_read_header(s, buffer, p, std::move(h)); });
  }
  // Reads the body chunk by chunk, renewing the inactivity timeout before each chunk.
  template <class Stream, class Parser>
  error_code read_body(Stream& s, Parser& p) {
    while (!p.is_done()) {
      tcp().expires_after(opt.io_timeout);
      error_code ec = run([&](auto h) { http::async_read_some(s, buffer, p, std::move(h)); });
      if (ec) return ec;
    }
    return {};
  }

  // One request/answer. `file` == nullptr: the body goes into memory; otherwise a 2xx body
  // is streamed into *file.
  HttpResponse exchange(http::request<http::string_body>& req, const std::string* file) {
    for (int attempt = 0;; ++attempt) {
      const bool reused = is_open();
      if (!reused) connect();
      ++counters.requests;
      error_code ec = tls ? write(*tls, req) : write(*plain, req);
      const std::string during = std::string(req.method_string()) + " " + std::string(req.target());
      if (ec) {
        if (reused && attempt == 0 && stale_connection(ec)) { close(); continue; }
        fail_io(ec, during);
      }
      http::response_parser<http::empty_body> head;
      head.header_limit(kHeaderLimit);
      // Checked below against the limit for this answer (not boost::none: Beast 1.74 compares
      // a length with an empty optional as "larger").
      head.body_limit(std::numeric_limits<uint64_t>::max());
      ec = tls ? read_header(*tls, head) : read_header(*plain, head);
      if (ec) {
        if (reused && attempt == 0 && stale_connection(ec) && buffer.size() == 0) { close(); continue; }
        fail_io(ec, during);
      }
      HttpResponse out;
      out.status = head.get().result_int();
      out.reason = std::string(head.get().reason());
      out.content_type = std::string(head.get()[http::field::content_type]);
      const bool ok = out.status >= 200 && out.status < 300;
      const bool to_file = file && ok;
      const int64_t limit = to_file ? opt.max_download_bytes : (file ? kErrorBodyLimit : opt.max_body_bytes);
      if (head.content_length() && *head.content_length() > static_cast<uint64_t>(limit)) {
        close();
        throw DataError(where() + ": the answer to " + during + " is " + std::to_string(*head.content_length()) +
                        " bytes, more than the limit of " + std::to_string(limit));
      }
      bool keep_alive = head.keep_alive();
      if (to_file) {
        http::response_parser<http::file_body> p(std::move(head));
        p.body_limit(static_cast<uint64_t>(limit));
        p.get().body().open(file->c_str(), beast::file_mode::write, ec);
        if (ec) {
          close();
          throw IoError("cannot write '" + *file + "': " + ec.message());
        }
        ec = tls ? read_body(*tls, p) : read_body(*plain, p);
        if (ec) fail_io(ec, during);
        p.get().body().file().close(ec);
        if (ec) {
          close();
          throw IoError("cannot write '" + *file + "': " + ec.message());
        }
        out.body_bytes = static_cast<int64_t>(std::filesystem::file_size(*file));
        ++counters.downloads;
      } else {
        http::response_parser<http::string_body> p(std::move(head));
        p.body_limit(static_cast<uint64_t>(limit));
        ec = tls ? read_body(*tls, p) : read_body(*plain, p);
        if (ec) fail_io(ec, during);
        out.body = std::move(p.get().body());
        out.body_bytes = static_cast<int64_t>(out.body.size());
      }
      counters.bytes_received += out.body_bytes;
      if (!keep_alive) close();
      return out;
    }
  }

  http::request<http::string_body> make_request(const std::string& method, const std::string& target) {
    const http::verb verb = http::string_to_verb(method);
    if (verb == http::verb::unknown) throw ConfigError("unknown HTTP method '" + method + "'");
    if (target.empty() || target[0] != '/') throw ConfigError("HTTP request target '" + target + "' must start with '/'");
    http::request<http::string_body> req{verb, url.base_path + target, 11};
    req.set(http::field::host, host_header);
    req.set(http::field::user_agent, "fedtl");
    if (!authorization.empty()) req.set(http::field::authorization, authorization);
    req.keep_alive(true);
    return req;
  }
};

HttpClient::HttpClient(const std::string& url, HttpOptions options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.url = parse_http_url(url);
  m.opt = std::move(options);
  if (m.opt.connect_timeout <= HttpMillis(0) || m.opt.io_timeout <= HttpMillis(0))
    throw ConfigError("HTTP timeouts must be > 0");
  const bool v6 = m.url.host.find(':') != std::string::npos;
  m.host_header = (v6 ? "[" + m.url.host + "]" : m.url.host) + ":" + std::to_string(m.url.port);
  if (!m.opt.username.empty()) {
    if (m.opt.username.find(':') != std::string::npos)
      throw ConfigError("an HTTP Basic user name cannot contain ':'");
    m.authorization = "Basic " + base64(m.opt.username + ":" + m.opt.password);
  }
  if (m.url.https) {
    m.tls_ctx = std::make_unique<ssl::context>(ssl::context::tls_client);
    SSL_CTX* h = m.tls_ctx->native_handle();
    SSL_CTX_set_min_proto_version(h, TLS1_2_VERSION);
    SSL_CTX_set_options(h, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    error_code ec;
    if (!m.opt.ca_file.empty()) {
      std::error_code fec;
      if (!std::filesystem::is_regular_file(m.opt.ca_file, fec))
        throw ConfigError("CA file '" + m.opt.ca_file + "' does not exist or is not a file");
      m.tls_ctx->load_verify_file(m.opt.ca_file, ec);
      if (ec) throw ConfigError("cannot load CA file '" + m.opt.ca_file + "': " + ec.message());
    } else {
      m.tls_ctx->set_default_verify_paths(ec);
      if (ec) throw ConfigError("cannot load the system's trusted CA certificates: " + ec.message());
    }
    m.tls_ctx->set_verify_mode(ssl::verify_peer, ec);
    if (ec) throw ConfigError("TLS: cannot set the verify mode: " + ec.message());
  }
}

HttpClient::~HttpClient() { impl_->close(); }

HttpResponse HttpClient::request(const std::string& method, const std::string& target, const std::string& body,
                                 const std::string& content_type) {
  auto req = impl_->make_request(method, target);
  if (!content_type.empty()) req.set(http::field::content_type, content_type);
  req.body() = body;
  req.prepare_payload();
  return impl_->exchange(req, nullptr);
}

HttpResponse HttpClient::download(const std::string& target, const std::string& file_path) {
  auto req = impl_->make_request("GET", target);
  req.prepare_payload();
  return impl_->exchange(req, &file_path);
}

const HttpUrl& HttpClient::url() const { return impl_->url; }

std::string http_get(const std::string& url, HttpMillis timeout) {
  // The client's URL is scheme://host[:port][/base] without a query: split the target off.
  const auto scheme_end = url.find("://");
  const auto slash = scheme_end == std::string::npos ? std::string::npos : url.find('/', scheme_end + 3);
  const std::string base = slash == std::string::npos ? url : url.substr(0, slash);
  const std::string target = slash == std::string::npos ? "/" : url.substr(slash);
  HttpOptions o;
  o.connect_timeout = timeout;
  o.io_timeout = timeout;
  HttpClient client(base, o);
  const HttpResponse r = client.request("GET", target);
  if (r.status != 200)
    throw TransportError(client.url().str() + target.substr(0, 200) + ": HTTP " + std::to_string(r.status) + " " +
                         r.reason);
  return r.body;
}
const HttpCounters& HttpClient::counters() const { return impl_->counters; }

}  // namespace fedtl::common

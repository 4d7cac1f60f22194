// A small blocking HTTP/1.1 client (Boost.Beast) for REST sources such as Orthanc: plain HTTP,
// or HTTPS through OpenSSL when the URL says `https://`, with the server's certificate verified
// against a CA file (or the system's trust store) and its name checked against the URL's host.
// Asio, Beast and OpenSSL stay inside http_client.cc: this header is safe to include anywhere.
//
// Connections are kept alive between requests; a kept-alive connection the server closed is
// reopened once, transparently, when the failure came before any byte of the answer.
//
// Errors (all one line; none ever carries the Authorization header or the password):
//   TransportError     the server cannot be reached (refused, reset, closed mid-answer), a TLS
//                      handshake failed for a reason other than the certificate
//   TimeoutError       connect, send or read took longer than its timeout
//   PeerIdentityError  the server's certificate was refused (unknown CA, expired, wrong name)
//   DataError          the answer is not HTTP, or its body exceeds the limit
//   ConfigError        the URL or the CA file is unusable
// A status other than 2xx is not an error here: the caller reads HttpResponse::status.
//
// Thread safety: none; one thread uses a client at a time. Blocking: every call blocks the
// calling thread until the answer or an error (bounded by the timeouts).
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace fedtl::common {

using HttpMillis = std::chrono::milliseconds;

// http(s)://host[:port][/base/path] split up; `base_path` has no trailing slash ("" for none).
struct HttpUrl {
  bool https = false;
  std::string host;       // a name, an IPv4 address, or an IPv6 address (without brackets)
  uint16_t port = 0;      // 80 / 443 when the URL names none
  std::string base_path;  // prefix prepended to every request target
  // The URL as "scheme://host:port/base" (what messages name; never holds credentials).
  std::string str() const;
};

// Parses `url`. Throws ConfigError (naming `what`, e.g. "data.url") for another scheme, a
// missing host, a bad port, user:password@ in the URL (credentials go elsewhere), a query or
// a fragment. The message never repeats the part of the URL before '@'.
HttpUrl parse_http_url(const std::string& url, const std::string& what = "url");

struct HttpOptions {
  // HTTPS only: PEM file of the CA certificate(s) the server's certificate must chain to;
  // "" = the system's default trust store.
  std::string ca_file;
  HttpMillis connect_timeout{std::chrono::seconds(10)};  // name resolution + TCP + TLS handshake
  // The longest wait for the server to accept the next bytes of a request or send the next
  // bytes of an answer (an inactivity timeout: a large, steadily arriving download never
  // expires).
  HttpMillis io_timeout{std::chrono::seconds(60)};
  // The largest answer body kept in memory (request()); a bigger one is a DataError.
  int64_t max_body_bytes = int64_t{64} << 20;
  // The largest body download() writes to a file.
  int64_t max_download_bytes = int64_t{2} << 30;
  // Basic authentication, sent with every request when `username` is not empty.
  std::string username;
  std::string password;
  // How messages call the server ("Orthanc" gives "Orthanc at http://...: ...").
  std::string server_label = "server";
};

struct HttpResponse {
  int status = 0;             // e.g. 200, 401, 404
  std::string reason;         // the status line's text
  std::string content_type;
  // request(): the body. download(): the body only when status is not 2xx (Orthanc's
  // error description, at most 64 KiB), empty otherwise.
  std::string body;
  int64_t body_bytes = 0;     // bytes of body received (written to the file for download())
};

// Counters of what went over the wire, for logs and for tests that check a cache.
struct HttpCounters {
  int64_t requests = 0;        // requests sent (a transparent retry counts twice)
  int64_t downloads = 0;       // download() calls answered 2xx
  int64_t connections = 0;     // TCP connections opened
  int64_t bytes_received = 0;  // answer body bytes
};

class HttpClient {
 public:
  // Parses `url` (see parse_http_url) and, for https, loads the CA file; connects lazily on
  // the first request. Throws ConfigError.
  HttpClient(const std::string& url, HttpOptions options);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Sends `method` ("GET", "POST", "DELETE", ...) for base_path + `target` (which starts with
  // '/') with `body` (sent with `content_type` when not empty) and returns the answer, its
  // body in memory (at most max_body_bytes). Throws as listed at the top of this file.
  HttpResponse request(const std::string& method, const std::string& target,
                       const std::string& body = "", const std::string& content_type = "");
  // GET `target`; a 2xx body is streamed to `file_path` (created or truncated; the caller
  // owns it and removes it on failure: on an exception the file may hold part of the body).
  // At most max_download_bytes are written; more is a DataError.
  HttpResponse download(const std::string& target, const std::string& file_path);

  const HttpUrl& url() const;
  const HttpCounters& counters() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// GET `url` (http(s)://host[:port]/path[?query]) with every timeout set to `timeout`; returns
// the body of a 200 answer. Another status is a TransportError naming the URL and the status;
// otherwise throws as HttpClient does. For one-off reads (`fedtl status`, tests).
std::string http_get(const std::string& url, HttpMillis timeout = std::chrono::seconds(10));

}  // namespace fedtl::common

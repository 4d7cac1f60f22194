// The status server's HTTP layer: it answers what it should, and a hostile or broken client
// (oversized head, a body, garbage, a client that never finishes, a flood of idle
// connections) costs it nothing but that client's socket.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/errors.h"
#include "common/transport/http_server.h"
#include "tests/free_port.h"

namespace fedtl::common {
namespace {

using namespace std::chrono_literals;

HttpResponse route(const std::string& path) {
  if (path == "/hello") return http_reply(200, "text/plain", "hello\n");
  return http_reply(404, "text/plain", "no\n");
}

// Sends `request` and reads until the server closes (or 5 s pass).
std::string exchange(uint16_t port, const std::string& request) {
  int fd = test_support::connect_loopback(port);
  if (fd < 0) return "";
  size_t off = 0;
  while (off < request.size()) {
    ssize_t n = ::send(fd, request.data() + off, request.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

std::string url(const HttpServer& s, const std::string& path) {
  return "http://127.0.0.1:" + std::to_string(s.port()) + path;
}

TEST(HttpServer, AnswersGetHeadAndRefusesOtherMethods) {
  HttpServer server("127.0.0.1", 0, route);
  EXPECT_EQ(http_get(url(server, "/hello")), "hello\n");
  EXPECT_EQ(http_get(url(server, "/hello?x=1")), "hello\n");  // the query string is not the path
  try {
    http_get(url(server, "/missing"));
    ADD_FAILURE() << "a 404 must throw";
  } catch (const TransportError& e) {
    EXPECT_NE(std::string(e.what()).find("HTTP 404"), std::string::npos) << e.what();
  }
  const std::string head = exchange(server.port(), "HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(head.rfind("HTTP/1.1 200", 0), 0u) << head;
  EXPECT_NE(head.find("Content-Length: 6"), std::string::npos) << head;
  EXPECT_EQ(head.find("hello"), std::string::npos) << "HEAD carries no body";
  const std::string post = exchange(server.port(), "POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(post.rfind("HTTP/1.1 405", 0), 0u) << post;
}

TEST(HttpServer, OversizedHeadBodyAndGarbageAreRefusedAndTheServerGoesOn) {
  HttpServerLimits lim;
  lim.max_header_bytes = 1024;
  HttpServer server("127.0.0.1", 0, route, lim);
  const std::string big = exchange(server.port(), "GET /hello HTTP/1.1\r\nHost: x\r\nX-Pad: " +
                                                      std::string(64 * 1024, 'a') + "\r\n\r\n");
  // 431, or a reset before the client reads it (the server closes with the rest unread).
  EXPECT_TRUE(big.empty() || big.rfind("HTTP/1.1 431", 0) == 0) << big.substr(0, 80);
  EXPECT_EQ(big.find("hello"), std::string::npos);
  const std::string body = exchange(server.port(), "GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" +
                                                       std::string(1000, 'b'));
  EXPECT_EQ(body.find("hello"), std::string::npos) << "a request with a body is not answered";
  static const char junk[] = "\x16\x03\x01\x02\x00garbage\r\n\r\n";  // a TLS hello's start, then junk
  exchange(server.port(), std::string(junk, sizeof junk - 1));
  EXPECT_EQ(http_get(url(server, "/hello")), "hello\n");
  EXPECT_GE(server.connections_rejected(), 3u);
}

TEST(HttpServer, ASilentClientIsCutAndDoesNotDelayOthers) {
  HttpServerLimits lim;
  lim.request_timeout = 500ms;
  HttpServer server("127.0.0.1", 0, route, lim);
  int slow = test_support::connect_loopback(server.port());
  ASSERT_GE(slow, 0);
  ASSERT_EQ(::send(slow, "GET /hel", 8, MSG_NOSIGNAL), 8);  // and never the rest
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(http_get(url(server, "/hello"), 2s), "hello\n");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 400ms) << "the silent client held up another";
  char c;
  const ssize_t n = ::recv(slow, &c, 1, 0);  // the server closes it after request_timeout
  EXPECT_LE(n, 0);
  ::close(slow);
}

TEST(HttpServer, AFloodOfIdleConnectionsIsBoundedAndClearsItself) {
  HttpServerLimits lim;
  lim.max_connections = 4;
  lim.request_timeout = 400ms;
  HttpServer server("127.0.0.1", 0, route, lim);
  std::vector<int> idle;
  for (int i = 0; i < 20; ++i) idle.push_back(test_support::connect_loopback(server.port()));
  std::this_thread::sleep_for(100ms);
  EXPECT_GE(server.connections_rejected(), 16u) << "connections beyond the limit are closed at accept";
  std::this_thread::sleep_for(600ms);  // the four it kept time out
  EXPECT_EQ(http_get(url(server, "/hello")), "hello\n");
  for (int fd : idle)
    if (fd >= 0) ::close(fd);
}

TEST(HttpServer, ClientErrorsAreOneLine) {
  uint16_t port;
  { port = HttpServer("127.0.0.1", 0, route).port(); }  // nothing listens there any more
  EXPECT_THROW(http_get("http://127.0.0.1:" + std::to_string(port) + "/"), TransportError);
  EXPECT_THROW(http_get("ftp://127.0.0.1/"), ConfigError);
  EXPECT_THROW(HttpServer("not-an-address", 0, route), ConfigError);
}

}  // namespace
}  // namespace fedtl::common

// TLS transport benchmarks (scripts/bench backbone_distribution, wire_overhead), plus a helper
// for bench/load_test.py. Everything runs on loopback with a federation PKI made in a temp
// dir by common/transport/pki.h, through the real TlsListener / tls_connect API.
//
//   bench_tls backbone_distribution [--reps N] [--mb M] [--workers W]
//     A backbone of M MB (random bytes; default 40) streamed to W workers (default 8) the way
//     the coordinator does it: one sender thread serving the sites one after the other
//     (Coordinator::admit), BackboneChunk frames of 1 MiB, each worker reassembling and
//     checking SHA-256. The same frames then go over plain loopback TCP (POSIX sockets, same
//     sender/receiver code around the socket), alternated with TLS over N reps (default 7).
//     Metrics: mb_per_s (TLS, aggregate over the W workers: W*M MB / time from the first
//     chunk to the last verified digest) and vs_raw_tcp (TLS mb_per_s / TCP mb_per_s).
//
//   bench_tls wire_overhead [--rounds R] [--params P] [--sites N]
//     Bytes on the wire (TCP payload, so TLS records included) per site per round divided by
//     the raw float32 bytes of its update (P floats; default 402,181 = the demo job's
//     trainable parameters). Counted by a relay between client and listener that counts
//     every byte it forwards. Without secure aggregation: RoundStart down, Update up. With
//     it (N sites, default 8, the real protocols/secagg sessions): RoundStart down, then the
//     four steps (keys, shares, masked input, unmask shares) up and their lists down.
//
//   bench_tls write-cnn PATH [SEED]
//     Writes the built-in CNN backbone, randomly initialised from SEED (the load test's job).
//
//   bench_tls blas-core
//     Prints the OPENBLAS_CORETYPE this process runs with (empty: OpenBLAS's own choice), for
//     scripts/bench to hand the Python peers the kernels fedtl uses (common/blas_kernels.h).
//
// One JSON object on stdout; progress and absolute times on stderr.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/errors.h"
#include "common/files.h"
#include "common/model/transfer_model.h"
#include "common/transport/pki.h"
#include "common/sha256.h"
#include "common/transport/tls.h"
#include "protocols/messages.h"
#include "protocols/secagg/session.h"
#include "protocols/secagg/wire.h"

namespace fs = std::filesystem;
using namespace fedtl;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {


// CPU seconds (user + system, all threads) this process has used so far.
double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return s(u.ru_utime) + s(u.ru_stime);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::string random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t x = rng();
    std::memcpy(&s[i], &x, 8);
  }
  for (; i < n; ++i) s[i] = static_cast<char>(rng());
  return s;
}

// --- a federation PKI in a temp dir ---------------------------------------------------------

struct Pki {
  explicit Pki(int workers) {
    char tmpl[] = "/tmp/fedtl_tlsbench_XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    root = tmpl;
    const std::string dir = root + "/pki";
    common::pki_init(dir, "bench");
    common::pki_issue(dir, "coordinator", "coordinator", "127.0.0.1:1");
    for (int i = 0; i < workers; ++i) common::pki_issue(dir, name(i), "worker", "127.0.0.1:1", "coordinator");
  }
  ~Pki() {
    std::error_code ec;
    fs::remove_all(root, ec);
  }
  static std::string name(int i) { return "site-" + std::to_string(i); }
  common::TlsConfig config(const std::string& party) const {
    const auto k = common::load_kit(root + "/pki/kits/" + party);
    common::TlsConfig c;
    c.ca_cert = k.ca_cert;
    c.cert = k.cert;
    c.key = k.key;
    if (party != "coordinator") c.expected_server_name = "coordinator";
    return c;
  }
  std::string root;
};

// --- plain POSIX TCP --------------------------------------------------------------------------

int tcp_listen(uint16_t& port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 512) != 0)
    throw std::runtime_error(std::string("tcp listen: ") + std::strerror(errno));
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

int tcp_connect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    throw std::runtime_error(std::string("tcp connect: ") + std::strerror(errno));
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // as the TLS transport does
  return fd;
}

void write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(std::string("send: ") + std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// --- backbone distribution --------------------------------------------------------------------

constexpr size_t kChunk = 1u << 20;

// The coordinator's chunking (Coordinator::admit): substr, BackboneChunk, frame.
template <class Send>
void stream_backbone(const std::string& backbone, Send&& send) {
  for (size_t off = 0;; off += kChunk) {
    v1::BackboneChunk c;
    c.set_offset(off);
    c.set_data(backbone.substr(std::min(off, backbone.size()), kChunk));
    c.set_last(off + kChunk >= backbone.size());
    send(protocols::to_frame(c));
    if (c.last()) break;
  }
}

// The worker's side: append chunks in order, then check the digest.
struct Assembler {
  explicit Assembler(size_t expected) { bytes.reserve(expected); }
  // Returns true at the last chunk.
  bool add(const common::Frame& f) {
    auto c = protocols::from_frame<v1::BackboneChunk>(f);
    if (c.offset() != bytes.size()) throw std::runtime_error("chunk out of order");
    bytes += c.data();
    return c.last();
  }
  std::string bytes;
};

struct DistResult {
  double seconds = 0;
  bool digests_ok = true;
};

DistResult distribute_tls(const Pki& pki, const std::string& backbone, const std::string& sha, int workers) {
  auto scfg = pki.config("coordinator");
  auto listener = common::tls_listen("127.0.0.1", 0, scfg);
  std::vector<std::thread> clients;
  std::vector<Clock::time_point> done(static_cast<size_t>(workers));
  std::vector<int> ok(static_cast<size_t>(workers), 0);
  std::mutex mu;
  std::condition_variable cv;
  int connected = 0;
  Clock::time_point t0;
  for (int i = 0; i < workers; ++i) {
    clients.emplace_back([&, i] {
      auto conn = common::tls_connect("127.0.0.1", listener->port(), pki.config(Pki::name(i)), 30s);
      {
        std::lock_guard<std::mutex> l(mu);
        ++connected;
      }
      cv.notify_all();
      Assembler a(backbone.size());
      while (!a.add(conn->recv(120s))) {
      }
      ok[static_cast<size_t>(i)] = common::sha256_hex(a.bytes) == sha;
      done[static_cast<size_t>(i)] = Clock::now();
    });
  }
  std::vector<std::unique_ptr<common::Connection>> conns;
  for (int i = 0; i < workers; ++i) conns.push_back(listener->accept(30s));
  {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return connected == workers; });
  }
  t0 = Clock::now();
  for (auto& c : conns) stream_backbone(backbone, [&](const common::Frame& f) { c->send(f); });
  for (auto& t : clients) t.join();
  DistResult r;
  for (int i = 0; i < workers; ++i) {
    r.seconds = std::max(r.seconds, std::chrono::duration<double>(done[static_cast<size_t>(i)] - t0).count());
    r.digests_ok = r.digests_ok && ok[static_cast<size_t>(i)];
  }
  return r;
}

DistResult distribute_tcp(const std::string& backbone, const std::string& sha, int workers) {
  uint16_t port = 0;
  const int lfd = tcp_listen(port);
  std::vector<std::thread> clients;
  std::vector<Clock::time_point> done(static_cast<size_t>(workers));
  std::vector<int> ok(static_cast<size_t>(workers), 0);
  for (int i = 0; i < workers; ++i) {
    clients.emplace_back([&, i] {
      const int fd = tcp_connect(port);
      common::FrameDecoder dec;
      std::vector<char> buf(256 * 1024);  // the TLS transport's read size
      Assembler a(backbone.size());
      bool last = false;
      while (!last) {
        const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
        if (n <= 0) throw std::runtime_error("tcp receiver: connection ended early");
        dec.feed(buf.data(), static_cast<size_t>(n));
        while (auto f = dec.next()) last = a.add(*f) || last;
      }
      ok[static_cast<size_t>(i)] = common::sha256_hex(a.bytes) == sha;
      done[static_cast<size_t>(i)] = Clock::now();
      ::close(fd);
    });
  }
  std::vector<int> fds;
  for (int i = 0; i < workers; ++i) {
    const int fd = ::accept(lfd, nullptr, nullptr);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fds.push_back(fd);
  }
  const auto t0 = Clock::now();
  for (int fd : fds)
    stream_backbone(backbone, [&](const common::Frame& f) {
      const std::string bytes = common::encode_frame(f);  // as TlsConnection::send does
      write_all(fd, bytes.data(), bytes.size());
    });
  for (auto& t : clients) t.join();
  for (int fd : fds) ::close(fd);
  ::close(lfd);
  DistResult r;
  for (int i = 0; i < workers; ++i) {
    r.seconds = std::max(r.seconds, std::chrono::duration<double>(done[static_cast<size_t>(i)] - t0).count());
    r.digests_ok = r.digests_ok && ok[static_cast<size_t>(i)];
  }
  return r;
}

nlohmann::json backbone_distribution(int reps, double mb, int workers) {
  Pki pki(workers);
  const size_t size = static_cast<size_t>(mb * 1e6);
  const std::string backbone = random_bytes(size, 42);
  const std::string sha = common::sha256_hex(backbone);
  const double total_mb = static_cast<double>(size) * workers / 1e6;
  // One warm-up of each, then alternate so that changing machine load hits both alike.
  distribute_tls(pki, backbone, sha, workers);
  distribute_tcp(backbone, sha, workers);
  std::vector<double> tls_s, tcp_s, tls_cpu, tcp_cpu;
  bool ok = true;
  for (int r = 0; r < reps; ++r) {
    const double c0 = cpu_seconds();
    auto a = distribute_tls(pki, backbone, sha, workers);
    const double c1 = cpu_seconds();
    auto b = distribute_tcp(backbone, sha, workers);
    const double c2 = cpu_seconds();
    ok = ok && a.digests_ok && b.digests_ok;
    tls_s.push_back(a.seconds);
    tcp_s.push_back(b.seconds);
    tls_cpu.push_back(c1 - c0);
    tcp_cpu.push_back(c2 - c1);
    std::fprintf(stderr,
                 "backbone_distribution rep %d: TLS %.3f s (%.0f MB/s, %.2f CPU s), TCP %.3f s (%.0f MB/s, %.2f CPU s)\n",
                 r + 1, a.seconds, total_mb / a.seconds, c1 - c0, b.seconds, total_mb / b.seconds, c2 - c1);
  }
  if (!ok) throw std::runtime_error("a worker's SHA-256 did not match the backbone");
  const double tls = median(tls_s), tcp = median(tcp_s);
  std::fprintf(stderr, "backbone_distribution: %d x %.1f MB: TLS %.3f s (%.0f MB/s) vs TCP %.3f s (%.0f MB/s), medians of %d\n",
               workers, mb, tls, total_mb / tls, tcp, total_mb / tcp, reps);
  return {{"mb_per_s", total_mb / tls},
          {"vs_raw_tcp", tcp / tls},
          {"tcp_mb_per_s", total_mb / tcp},
          {"tls_seconds", tls},
          {"tcp_seconds", tcp},
          {"tls_cpu_seconds", median(tls_cpu)},  // whole call, connection setup included
          {"tcp_cpu_seconds", median(tcp_cpu)},
          {"tls_seconds_all", tls_s},
          {"tcp_seconds_all", tcp_s},
          {"backbone_mb", mb},
          {"workers", workers},
          {"chunk_bytes", kChunk},
          {"digests_ok", ok ? 1 : 0},
          {"reps", reps}};
}

// --- wire overhead ---------------------------------------------------------------------------

// A TCP relay that counts the bytes it forwards in each direction, per connection (in the
// order the connections were accepted).
class CountingRelay {
 public:
  struct Link {
    int client = -1, server = -1;
    std::atomic<uint64_t> up{0}, down{0};  // client->server, server->client
    std::thread a, b;
  };
  explicit CountingRelay(uint16_t target) : target_(target) {
    lfd_ = tcp_listen(port_);
    acceptor_ = std::thread([this] { run(); });
  }
  ~CountingRelay() {
    ::shutdown(lfd_, SHUT_RDWR);
    acceptor_.join();
    ::close(lfd_);
    std::lock_guard<std::mutex> l(mu_);
    for (auto& k : links_) {
      ::shutdown(k->client, SHUT_RDWR);
      ::shutdown(k->server, SHUT_RDWR);
      k->a.join();
      k->b.join();
      ::close(k->client);
      ::close(k->server);
    }
  }
  uint16_t port() const { return port_; }
  Link& link(size_t i) {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return links_.size() > i; });
    return *links_[i];
  }

 private:
  void run() {
    for (;;) {
      const int c = ::accept(lfd_, nullptr, nullptr);
      if (c < 0) return;
      auto k = std::make_unique<Link>();
      k->client = c;
      k->server = tcp_connect(target_);
      Link* raw = k.get();
      k->a = std::thread([raw] { pump(raw->client, raw->server, raw->up); });
      k->b = std::thread([raw] { pump(raw->server, raw->client, raw->down); });
      {
        std::lock_guard<std::mutex> l(mu_);
        links_.push_back(std::move(k));
      }
      cv_.notify_all();
    }
  }
  static void pump(int from, int to, std::atomic<uint64_t>& count) {
    std::vector<char> buf(64 * 1024);
    for (;;) {
      const ssize_t n = ::recv(from, buf.data(), buf.size(), 0);
      if (n <= 0) break;
      count += static_cast<uint64_t>(n);  // before forwarding: a receiver never sees uncounted bytes
      try {
        write_all(to, buf.data(), static_cast<size_t>(n));
      } catch (const std::exception&) {
        break;
      }
    }
    ::shutdown(to, SHUT_WR);
  }

  uint16_t target_, port_ = 0;
  int lfd_ = -1;
  std::thread acceptor_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Link>> links_;
};

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 0.01f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

struct Endpoint {
  std::unique_ptr<common::Connection> site, coord;  // the site's end and the coordinator's
  CountingRelay::Link* link = nullptr;
};

// Connects site i through the relay as its link-th connection (one at a time, so the
// relay's link `link` is this site's).
Endpoint connect_site(const Pki& pki, common::TlsListener& listener, CountingRelay& relay, int i, size_t link) {
  Endpoint e;
  e.site = common::tls_connect("127.0.0.1", relay.port(), pki.config(Pki::name(i)), 30s);
  e.coord = listener.accept(30s);
  e.link = &relay.link(link);
  return e;
}

template <class M>
M pass(common::Connection& from, common::Connection& to, const M& msg) {
  from.send(protocols::to_frame(msg));
  return protocols::from_frame<M>(to.recv(60s));
}

nlohmann::json wire_overhead(int rounds, size_t params, int sites) {
  Pki pki(sites);
  auto scfg = pki.config("coordinator");
  auto listener = common::tls_listen("127.0.0.1", 0, scfg);
  CountingRelay relay(listener->port());
  const double raw = static_cast<double>(params) * sizeof(float);

  // Plain: RoundStart down, Update up.
  std::vector<double> up_b, down_b, frame_up_b;
  uint64_t hs_up = 0, hs_down = 0;
  {
    Endpoint e = connect_site(pki, *listener, relay, 0, 0);
    hs_up = e.link->up;
    hs_down = e.link->down;
    for (int r = 1; r <= rounds; ++r) {
      const uint64_t u0 = e.link->up, d0 = e.link->down, f0 = e.site->bytes_sent();
      v1::RoundStart rs;
      rs.set_round(static_cast<uint32_t>(r));
      rs.set_deadline_seconds(600);
      protocols::pack_tensor(random_floats(params, 100 + r), rs.mutable_params());
      pass(*e.coord, *e.site, rs);
      v1::Update up;
      up.set_round(static_cast<uint32_t>(r));
      up.set_num_samples(150);
      protocols::pack_tensor(random_floats(params, 200 + r), up.mutable_delta());
      up.set_train_loss(0.42);
      up.set_train_accuracy(0.81);
      up.set_train_seconds(1.7);
      pass(*e.site, *e.coord, up);
      up_b.push_back(static_cast<double>(e.link->up - u0));
      down_b.push_back(static_cast<double>(e.link->down - d0));
      frame_up_b.push_back(static_cast<double>(e.site->bytes_sent() - f0));
    }
  }

  // Secure aggregation: every site through the relay, the real secagg sessions.
  std::vector<double> sa_up, sa_down;
  {
    std::vector<Endpoint> es;
    for (int i = 0; i < sites; ++i) es.push_back(connect_site(pki, *listener, relay, i, static_cast<size_t>(i) + 1));
    const auto n = static_cast<uint32_t>(sites);
    namespace sa = protocols::secagg;
    for (int r = 1; r <= rounds; ++r) {
      std::vector<uint64_t> u0, d0;
      for (auto& e : es) {
        u0.push_back(e.link->up);
        d0.push_back(e.link->down);
      }
      sa::RoundConfig cfg;
      cfg.round = static_cast<uint32_t>(r);
      cfg.num_sites = n;
      cfg.threshold = n / 2 + 1;
      cfg.vector_length = params + 1;  // [w, w*delta]
      cfg.round_seed = sa::derive_round_seed(7, cfg.round);
      sa::ServerSession server(cfg);
      std::vector<std::unique_ptr<sa::ClientSession>> cl;
      for (uint32_t i = 0; i < n; ++i) cl.push_back(std::make_unique<sa::ClientSession>(cfg, i));
      v1::RoundStart rs;
      rs.set_round(cfg.round);
      rs.set_deadline_seconds(600);
      protocols::pack_tensor(random_floats(params, 300 + r), rs.mutable_params());
      for (auto& e : es) pass(*e.coord, *e.site, rs);
      for (uint32_t i = 0; i < n; ++i) server.add_keys(pass(*es[i].site, *es[i].coord, cl[i]->advertise_keys()));
      const auto keys = server.close_keys();
      std::vector<v1::SecAggKeyList> kl;
      for (auto& e : es) kl.push_back(pass(*e.coord, *e.site, keys));
      for (uint32_t i = 0; i < n; ++i) server.add_shares(pass(*es[i].site, *es[i].coord, cl[i]->share_keys(kl[i])));
      server.close_shares();
      std::vector<v1::SecAggShareList> sl;
      for (uint32_t i = 0; i < n; ++i) sl.push_back(pass(*es[i].coord, *es[i].site, server.shares_for(i)));
      std::mt19937 rng(400u + static_cast<uint32_t>(r));
      std::vector<uint32_t> x(params + 1);
      for (uint32_t i = 0; i < n; ++i) {
        for (auto& v : x) v = rng();
        server.add_masked(pass(*es[i].site, *es[i].coord, cl[i]->mask_input(sl[i], x)));
      }
      const auto req = server.close_masked();
      std::vector<v1::SecAggUnmaskRequest> rq;
      for (auto& e : es) rq.push_back(pass(*e.coord, *e.site, req));
      for (uint32_t i = 0; i < n; ++i) server.add_unmask_shares(pass(*es[i].site, *es[i].coord, cl[i]->unmask(rq[i])));
      server.finish();
      for (uint32_t i = 0; i < n; ++i) {
        sa_up.push_back(static_cast<double>(es[i].link->up - u0[i]));
        sa_down.push_back(static_cast<double>(es[i].link->down - d0[i]));
      }
    }
  }

  const double up = median(up_b), down = median(down_b), fup = median(frame_up_b);
  const double sup = median(sa_up), sdown = median(sa_down);
  std::fprintf(stderr,
               "wire_overhead: update %zu floats = %.0f raw bytes; plain: %.0f bytes up (framed %.0f, TLS records "
               "+%.0f), %.0f down; secagg (%d sites): %.0f up, %.0f down per site per round\n",
               params, raw, up, fup, up - fup, down, sites, sup, sdown);
  return {{"ratio", up / raw},
          {"ratio_secagg", sup / raw},
          {"down_ratio", down / raw},
          {"down_ratio_secagg", sdown / raw},
          {"update_floats", params},
          {"raw_update_bytes", raw},
          {"wire_bytes_up", up},
          {"wire_bytes_down", down},
          {"framed_bytes_up", fup},
          {"tls_bytes_up", up - fup},
          {"secagg_wire_bytes_up", sup},
          {"secagg_wire_bytes_down", sdown},
          {"secagg_sites", sites},
          {"handshake_bytes_up", hs_up},
          {"handshake_bytes_down", hs_down},
          {"rounds", rounds}};
}

int arg_int(int argc, char** argv, const std::string& name, int def) {
  for (int i = 2; i + 1 < argc; ++i)
    if (argv[i] == name) return std::atoi(argv[i + 1]);
  return def;
}
double arg_double(int argc, char** argv, const std::string& name, double def) {
  for (int i = 2; i + 1 < argc; ++i)
    if (argv[i] == name) return std::atof(argv[i + 1]);
  return def;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  const std::string mode = argc > 1 ? argv[1] : "";
  try {
    if (mode == "backbone_distribution") {
      const int reps = std::max(1, arg_int(argc, argv, "--reps", 7));
      nlohmann::json j = {{"backbone_distribution",
                           backbone_distribution(reps, arg_double(argc, argv, "--mb", 40),
                                                 arg_int(argc, argv, "--workers", 8))}};
      std::cout << j.dump(2) << "\n";
    } else if (mode == "wire_overhead") {
      const int rounds = std::max(1, arg_int(argc, argv, "--rounds", arg_int(argc, argv, "--reps", 5)));
      nlohmann::json j = {{"wire_overhead",
                           wire_overhead(rounds, static_cast<size_t>(arg_int(argc, argv, "--params", 402181)),
                                         arg_int(argc, argv, "--sites", 8))}};
      std::cout << j.dump(2) << "\n";
    } else if (mode == "write-cnn" && argc >= 3) {
      const uint64_t seed = argc >= 4 ? std::strtoull(argv[3], nullptr, 10) : 1;
      common::write_file_atomic(argv[2], common::model::builtin_cnn(common::model::InputSpec{}, seed));
    } else if (mode == "blas-core") {
      const char* core = std::getenv("OPENBLAS_CORETYPE");
      std::cout << (core ? core : "") << "\n";
    } else {
      std::cerr << "usage: bench_tls backbone_distribution [--reps N] [--mb M] [--workers W]\n"
                   "       bench_tls wire_overhead [--rounds R] [--params P] [--sites N]\n"
                   "       bench_tls write-cnn PATH [SEED]\n"
                   "       bench_tls blas-core\n";
      return 2;
    }
  } catch (const std::exception& e) {
    std::cerr << "bench_tls: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

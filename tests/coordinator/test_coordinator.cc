// Coordinator unit tests without LibTorch: the coordinator talks over in-process connections to
// scripted fake sites, threads that speak the protocol by hand (protocols/messages.h): Hello,
// JobSpec + BackboneChunks, Ready, then an Update of their choosing (or none) per RoundStart.
// The job is a 10-float parameter vector; the strategy is FedAvg with server_lr 1, so after an
// applied round params += the sample-weighted mean of the reported deltas.
#include "coordinator/coordinator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <spdlog/spdlog.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <limits>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "common/errors.h"
#include "common/sha256.h"
#include "common/transport/inproc.h"
#include "common/transport/pki.h"
#include "common/transport/tls.h"
#include "protocols/messages.h"
#include "tests/captured_log.h"
#include "tests/unit_job.h"
#include "worker/worker.h"

namespace fedtl::coordinator {
namespace {

using namespace std::chrono_literals;
using common::Connection;
using common::Frame;
using common::MessageType;
using protocols::from_frame;
using protocols::to_frame;

constexpr size_t kParams = 10;
const std::string kBackbone = "fake backbone bytes: 0123456789abcdef";

v1::JobSpec make_job(uint32_t rounds) { return test_support::unit_job(kBackbone, kParams, rounds); }

// "Accuracy" = mean of the params, loss = 1 - that: a pure function of the parameters.
class FormulaEvaluator : public Evaluator {
 public:
  RoundEval evaluate(const std::vector<float>& params) override {
    double sum = 0;
    for (float p : params) sum += p;
    ++calls;
    return {sum / static_cast<double>(params.size()), 1.0 - sum / static_cast<double>(params.size())};
  }
  int calls = 0;
};

CoordinatorOptions base_options(uint32_t rounds, std::vector<std::string> sites, size_t min_sites = 1) {
  CoordinatorOptions o;
  o.job = make_job(rounds);
  o.backbone = kBackbone;
  o.chunk_bytes = 8;  // several chunks
  o.handshake_timeout = 3s;
  o.round_timeout = 2s;
  o.liveness_timeout = 5s;
  o.join_timeout = 3s;
  o.min_sites = min_sites;
  o.site_names = std::move(sites);
  return o;
}

// Site side of the handshake. Returns the JobSpec (the backbone is checked against it).
v1::JobSpec site_handshake(Connection& c, const std::string& name, uint64_t samples) {
  v1::Hello hello;
  hello.set_protocol_version(common::kProtocolVersion);
  hello.set_site_name(name);
  c.send(to_frame(hello));
  auto job = from_frame<v1::JobSpec>(c.recv(5s));
  std::string bytes;
  for (;;) {
    auto chunk = from_frame<v1::BackboneChunk>(c.recv(5s));
    EXPECT_EQ(chunk.offset(), bytes.size());
    bytes += chunk.data();
    if (chunk.last()) break;
  }
  EXPECT_EQ(common::sha256_hex(bytes), job.backbone_sha256());
  v1::Ready ready;
  ready.set_num_samples(samples);
  ready.set_backbone_sha256(job.backbone_sha256());
  c.send(to_frame(ready));
  return job;
}

Frame update_frame(uint32_t round, uint64_t samples, const std::vector<float>& delta) {
  v1::Update up;
  up.set_round(round);
  up.set_num_samples(samples);
  protocols::pack_tensor(delta, up.mutable_delta());
  up.set_train_loss(0.5);
  return to_frame(up);
}

// What the site saw at the end of the job.
struct SiteLog {
  int rounds_seen = 0;
  bool got_shutdown = false;
  bool shutdown_success = false;
  bool connection_closed = false;  // the coordinator closed it (dropped the site)
};

// Answers every RoundStart with `answer(start)` (nullopt: stay silent) until Shutdown or close.
void answer_rounds(Connection& c, SiteLog& log, const std::function<std::optional<Frame>(const v1::RoundStart&)>& answer) {
  for (;;) {
    Frame f;
    try {
      f = c.recv(10s);
    } catch (const TimeoutError&) {
      ADD_FAILURE() << "site waited 10 s for the coordinator";
      return;
    } catch (const TransportError&) {
      log.connection_closed = true;
      return;
    }
    if (f.type == MessageType::kHeartbeat) continue;  // the coordinator's, while it waits for others
    if (f.type == MessageType::kShutdown) {
      log.got_shutdown = true;
      log.shutdown_success = from_frame<v1::Shutdown>(f).success();
      return;
    }
    auto start = from_frame<v1::RoundStart>(f);
    ++log.rounds_seen;
    EXPECT_EQ(protocols::unpack_tensor(start.params()).size(), kParams);
    if (auto reply = answer(start)) c.send(*reply);
  }
}

// A fake site on its own thread, connected to the coordinator through an inproc pair whose
// coordinator end reports `name` as the peer.
struct FakeSite {
  std::unique_ptr<Connection> coord_end, site_end;
  SiteLog log;
  std::thread thread;
  FakeSite(const std::string& name) {
    auto [c, s] = common::make_inproc_pair("coordinator", name);  // c->peer_name() == name
    coord_end = std::move(c);
    site_end = std::move(s);
  }
  void start(std::function<void(Connection&, SiteLog&)> script) {
    thread = std::thread([this, script] {
      try {
        script(*site_end, log);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "fake site failed: " << e.what();
      }
    });
  }
  ~FakeSite() {
    if (thread.joinable()) thread.join();
  }
};

// The usual honest site: handshake, then `delta` every round.
std::function<void(Connection&, SiteLog&)> honest(const std::string& name, uint64_t samples, float delta) {
  return [=](Connection& c, SiteLog& log) {
    site_handshake(c, name, samples);
    answer_rounds(c, log, [&](const v1::RoundStart& s) {
      return std::optional<Frame>(update_frame(s.round(), samples, std::vector<float>(kParams, delta)));
    });
  };
}

void expect_params(const std::vector<float>& params, float value) {
  ASSERT_EQ(params.size(), kParams);
  for (float p : params) EXPECT_FLOAT_EQ(p, value);
}

const SiteInfo& site(const Coordinator::Result& r, const std::string& name) {
  for (const auto& s : r.sites)
    if (s.name == name) return s;
  throw std::runtime_error("no site " + name);
}

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override { spdlog::set_level(spdlog::level::err); }
  void TearDown() override { spdlog::set_level(spdlog::level::info); }
  FormulaEvaluator eval;
  std::unique_ptr<protocols::Strategy> fedavg() { return protocols::make_strategy(protocols::StrategySpec{}); }
};

// Contract: two honest sites; aggregation is the sample-weighted mean, applied every round,
// evaluated with the Evaluator, and every site gets a successful Shutdown.
TEST_F(CoordinatorTest, HonestSitesAggregateWeightedBySamples) {
  FakeSite a("site-0"), b("site-1");
  a.start(honest("site-0", 10, 1.0f));
  b.start(honest("site-1", 30, 3.0f));
  Coordinator coord(base_options(2, {"site-0", "site-1"}, 2), fedavg(), eval, std::vector<float>(kParams, 0.f));
  coord.add_site(std::move(a.coord_end));
  coord.add_site(std::move(b.coord_end));
  int callbacks = 0;
  auto res = coord.run([&](const RoundRecord&) { ++callbacks; });
  a.thread.join();
  b.thread.join();
  EXPECT_EQ(callbacks, 2);
  ASSERT_EQ(res.rounds.size(), 2u);
  for (const auto& r : res.rounds) {
    EXPECT_TRUE(r.applied);
    EXPECT_EQ(r.sites_reported, 2u);
    EXPECT_EQ(r.sites_active, 2u);
    EXPECT_GT(r.bytes_up, 0u);
    EXPECT_GT(r.bytes_down, 0u);
  }
  expect_params(res.params, 2 * 2.5f);  // (10*1 + 30*3) / 40 = 2.5 per round
  EXPECT_DOUBLE_EQ(res.rounds[1].accuracy, 5.0);
  EXPECT_EQ(res.stop_reason, "");
  EXPECT_TRUE(a.log.got_shutdown && a.log.shutdown_success);
  EXPECT_TRUE(b.log.got_shutdown && b.log.shutdown_success);
  EXPECT_EQ(site(res, "site-1").num_samples, 30u);
  EXPECT_GT(res.handshake_bytes_down, 2 * kBackbone.size());
}

// Contract: fewer than min_sites reports abandon the round: applied == false and the global
// model is unchanged (still evaluated); the silent site is only left out, not dropped.
TEST_F(CoordinatorTest, QuorumMissedAbandonsTheRoundAndKeepsTheModel) {
  FakeSite a("site-0"), b("site-1");
  a.start(honest("site-0", 10, 1.0f));
  b.start([](Connection& c, SiteLog& log) {
    site_handshake(c, "site-1", 10);
    answer_rounds(c, log, [](const v1::RoundStart&) { return std::optional<Frame>(); });  // never reports
  });
  auto opt = base_options(1, {"site-0", "site-1"}, 2);
  opt.round_timeout = 300ms;
  Coordinator coord(std::move(opt), fedavg(), eval, std::vector<float>(kParams, 0.25f));
  coord.add_site(std::move(a.coord_end));
  coord.add_site(std::move(b.coord_end));
  auto res = coord.run(nullptr);
  a.thread.join();
  b.thread.join();
  ASSERT_EQ(res.rounds.size(), 1u);
  EXPECT_FALSE(res.rounds[0].applied);
  EXPECT_EQ(res.rounds[0].sites_reported, 1u);
  EXPECT_EQ(res.rounds[0].sites_active, 2u);
  expect_params(res.params, 0.25f);
  EXPECT_DOUBLE_EQ(res.rounds[0].accuracy, 0.25);
  EXPECT_TRUE(site(res, "site-1").active);
  EXPECT_TRUE(b.log.got_shutdown);
}

// Contract: a site that misses the deadline is left out of that round only: its late Update
// (a huge delta here) is ignored, and it takes part in the next round.
TEST_F(CoordinatorTest, LateUpdateIsIgnoredAndTheSiteTakesPartInTheNextRound) {
  FakeSite a("site-0"), b("site-1");
  a.start(honest("site-0", 10, 1.0f));
  b.start([](Connection& c, SiteLog& log) {
    site_handshake(c, "site-1", 10);
    answer_rounds(c, log, [](const v1::RoundStart& s) {
      if (s.round() == 1) {
        std::this_thread::sleep_for(900ms);  // past round 1's 600 ms deadline, inside round 2
        return std::optional<Frame>(update_frame(1, 10, std::vector<float>(kParams, 1000.f)));
      }
      return std::optional<Frame>(update_frame(s.round(), 10, std::vector<float>(kParams, 3.f)));
    });
  });
  auto opt = base_options(2, {"site-0", "site-1"}, 1);
  opt.round_timeout = 600ms;
  Coordinator coord(std::move(opt), fedavg(), eval, std::vector<float>(kParams, 0.f));
  coord.add_site(std::move(a.coord_end));
  coord.add_site(std::move(b.coord_end));
  auto res = coord.run(nullptr);
  a.thread.join();
  b.thread.join();
  ASSERT_EQ(res.rounds.size(), 2u);
  EXPECT_TRUE(res.rounds[0].applied);
  EXPECT_EQ(res.rounds[0].sites_reported, 1u);
  EXPECT_EQ(res.rounds[1].sites_reported, 2u);
  expect_params(res.params, 1.f + 2.f);  // round 1: +1; round 2: +(1+3)/2
  EXPECT_TRUE(site(res, "site-1").active);
  EXPECT_EQ(b.log.rounds_seen, 2);
  EXPECT_TRUE(b.log.got_shutdown);
}

// Contract: a malformed or invalid update (wrong parameter count, a NaN, zero samples) drops
// that site (its connection is closed) and the job goes on with the honest site, which
// finishes every round; the bad deltas never reach the model.
TEST_F(CoordinatorTest, InvalidUpdatesDropTheirSitesAndTheJobGoesOn) {
  FakeSite good("site-0"), wrong_size("site-1"), nan("site-2"), zero("site-3");
  good.start(honest("site-0", 10, 1.0f));
  auto bad = [](const std::string& name, std::function<Frame(uint32_t)> make) {
    return [=](Connection& c, SiteLog& log) {
      site_handshake(c, name, 10);
      answer_rounds(c, log, [&](const v1::RoundStart& s) { return std::optional<Frame>(make(s.round())); });
    };
  };
  wrong_size.start(bad("site-1", [](uint32_t r) { return update_frame(r, 10, std::vector<float>(kParams - 5, 9.f)); }));
  nan.start(bad("site-2", [](uint32_t r) {
    std::vector<float> d(kParams, 9.f);
    d[3] = std::numeric_limits<float>::quiet_NaN();
    return update_frame(r, 10, d);
  }));
  zero.start(bad("site-3", [](uint32_t r) { return update_frame(r, 0, std::vector<float>(kParams, 9.f)); }));
  Coordinator coord(base_options(2, {"site-0", "site-1", "site-2", "site-3"}, 1), fedavg(), eval,
                    std::vector<float>(kParams, 0.f));
  for (FakeSite* s : {&good, &wrong_size, &nan, &zero}) coord.add_site(std::move(s->coord_end));
  auto res = coord.run(nullptr);
  for (FakeSite* s : {&good, &wrong_size, &nan, &zero}) s->thread.join();
  ASSERT_EQ(res.rounds.size(), 2u);
  EXPECT_EQ(res.rounds[0].sites_active, 4u);
  EXPECT_EQ(res.rounds[0].sites_reported, 1u);
  EXPECT_EQ(res.rounds[1].sites_active, 1u);
  EXPECT_TRUE(res.rounds[1].applied);
  expect_params(res.params, 2.f);
  EXPECT_EQ(res.stop_reason, "");
  EXPECT_TRUE(site(res, "site-0").active);
  EXPECT_TRUE(good.log.got_shutdown && good.log.shutdown_success);
  for (const char* n : {"site-1", "site-2", "site-3"}) {
    EXPECT_FALSE(site(res, n).active) << n;
    EXPECT_FALSE(site(res, n).dropped_reason.empty()) << n;
  }
  for (FakeSite* s : {&wrong_size, &nan, &zero}) {
    EXPECT_TRUE(s->log.connection_closed);
    EXPECT_FALSE(s->log.got_shutdown);
    EXPECT_EQ(s->log.rounds_seen, 1);
  }
}

// Contract: a site that sends a frame type a site must never send (a JobSpec, a RoundStart)
// in place of its Update is dropped; the others go on.
TEST_F(CoordinatorTest, SiteSendingACoordinatorOnlyFrameIsDropped) {
  FakeSite good("site-0"), jobspec("site-1"), roundstart("site-2");
  good.start(honest("site-0", 10, 1.0f));
  jobspec.start([](Connection& c, SiteLog& log) {
    auto job = site_handshake(c, "site-1", 10);
    answer_rounds(c, log, [&](const v1::RoundStart&) { return std::optional<Frame>(to_frame(job)); });
  });
  roundstart.start([](Connection& c, SiteLog& log) {
    site_handshake(c, "site-2", 10);
    answer_rounds(c, log, [&](const v1::RoundStart& s) { return std::optional<Frame>(to_frame(s)); });
  });
  Coordinator coord(base_options(2, {"site-0", "site-1", "site-2"}, 1), fedavg(), eval,
                    std::vector<float>(kParams, 0.f));
  for (FakeSite* s : {&good, &jobspec, &roundstart}) coord.add_site(std::move(s->coord_end));
  auto res = coord.run(nullptr);
  for (FakeSite* s : {&good, &jobspec, &roundstart}) s->thread.join();
  expect_params(res.params, 2.f);
  EXPECT_EQ(res.rounds[0].sites_reported, 1u);
  for (const char* n : {"site-1", "site-2"}) {
    EXPECT_FALSE(site(res, n).active) << n;
    EXPECT_FALSE(site(res, n).dropped_reason.empty()) << n;
  }
  EXPECT_TRUE(jobspec.log.connection_closed);
  EXPECT_TRUE(roundstart.log.connection_closed);
  EXPECT_TRUE(good.log.got_shutdown);
}

// Contract: a site answering the JobSpec with an ErrorMessage(kPolicyRefused) is recorded as
// refused (dropped, reason says "refused" and carries its message); the others go on.
TEST_F(CoordinatorTest, PolicyRefusalIsRecordedAndOthersGoOn) {
  FakeSite good("site-0"), refuser("site-1");
  good.start(honest("site-0", 10, 1.0f));
  refuser.start([](Connection& c, SiteLog& log) {
    v1::Hello hello;
    hello.set_protocol_version(common::kProtocolVersion);
    hello.set_site_name("site-1");
    c.send(to_frame(hello));
    from_frame<v1::JobSpec>(c.recv(5s));
    c.send(protocols::error_frame(protocols::ErrorCode::kPolicyRefused, "refused by site policy: too many rounds"));
    c.close();
  });
  Coordinator coord(base_options(1, {"site-0", "site-1"}, 1), fedavg(), eval, std::vector<float>(kParams, 0.f));
  coord.add_site(std::move(good.coord_end));
  coord.add_site(std::move(refuser.coord_end));
  auto res = coord.run(nullptr);
  good.thread.join();
  refuser.thread.join();
  const SiteInfo& r = site(res, "site-1");
  EXPECT_FALSE(r.active);
  EXPECT_NE(r.dropped_reason.find("refused"), std::string::npos) << r.dropped_reason;
  EXPECT_NE(r.dropped_reason.find("too many rounds"), std::string::npos) << r.dropped_reason;
  ASSERT_EQ(res.rounds.size(), 1u);
  EXPECT_TRUE(res.rounds[0].applied);
  EXPECT_EQ(res.rounds[0].sites_active, 1u);
  expect_params(res.params, 1.f);
  EXPECT_TRUE(good.log.got_shutdown);
}

// A Listener over a queue of in-process connections (what tls_listen is to TLS).
class QueueListener : public common::Listener {
 public:
  void push(std::unique_ptr<Connection> c) {
    std::lock_guard<std::mutex> lock(mu_);
    q_.push_back(std::move(c));
    cv_.notify_all();
  }
  std::unique_ptr<Connection> accept(common::Millis timeout) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return closed_ || !q_.empty(); }))
      throw TimeoutError("no connection");
    if (closed_) throw TransportError("listener closed");
    auto c = std::move(q_.front());
    q_.pop_front();
    return c;
  }
  void close() override {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Connection>> q_;
  bool closed_ = false;
};

// Contract: with a Listener, sites join through it and a site whose connection was lost
// rejoins before a later round (new connection, same slot, full handshake) and takes part.
TEST_F(CoordinatorTest, SiteRejoinsThroughTheListenerAfterALostConnection) {
  QueueListener listener;
  FakeSite good("site-0"), flaky("site-1");
  listener.push(std::move(good.coord_end));
  listener.push(std::move(flaky.coord_end));
  good.start(honest("site-0", 10, 1.0f));
  SiteLog second_log;
  flaky.start([&](Connection& c, SiteLog& log) {
    site_handshake(c, "site-1", 10);
    answer_rounds(c, log, [&](const v1::RoundStart& s) {
      if (s.round() == 1) return std::optional<Frame>(update_frame(1, 10, std::vector<float>(kParams, 3.f)));
      // Round 2: reconnect (queued before the old connection goes, so it is there when the
      // coordinator looks for rejoiners after this round), then lose the old connection.
      auto [coord_end, site_end] = common::make_inproc_pair("coordinator", "site-1");
      listener.push(std::move(coord_end));
      c.close();
      site_handshake(*site_end, "site-1", 10);
      answer_rounds(*site_end, second_log, [](const v1::RoundStart& s2) {
        return std::optional<Frame>(update_frame(s2.round(), 10, std::vector<float>(kParams, 5.f)));
      });
      return std::optional<Frame>();
    });
  });
  Coordinator coord(base_options(3, {"site-0", "site-1"}, 1), fedavg(), eval, std::vector<float>(kParams, 0.f));
  coord.set_listener(&listener);
  auto res = coord.run(nullptr);
  good.thread.join();
  flaky.thread.join();
  ASSERT_EQ(res.rounds.size(), 3u);
  EXPECT_EQ(res.rounds[0].sites_reported, 2u);
  EXPECT_EQ(res.rounds[1].sites_reported, 1u);
  EXPECT_EQ(res.rounds[2].sites_reported, 2u);
  expect_params(res.params, 2.f + 1.f + 3.f);  // (1+3)/2, 1, (1+5)/2
  EXPECT_TRUE(site(res, "site-1").active);
  EXPECT_EQ(second_log.rounds_seen, 1);
  EXPECT_TRUE(second_log.got_shutdown);
  // Its old connection was gone when the new one was attached: a rejoin, not a replacement.
  EXPECT_EQ(site(res, "site-1").replacements, 0u);
}

// Issue "hostile input": a second connection presenting a site's certificate while the first
// is in use (an impostor with a stolen kit) still replaces it — a restarted site must get back
// in — but the replacement is logged with both addresses and counted.
TEST_F(CoordinatorTest, ImpostorReplacingAnActiveSiteIsLoggedAndCounted) {
  spdlog::set_level(spdlog::level::warn);  // the fixture keeps only errors
  test_support::CapturedLog log(256);
  QueueListener listener;
  FakeSite good("site-0"), real("site-1");
  listener.push(std::move(good.coord_end));
  listener.push(std::move(real.coord_end));
  good.start(honest("site-0", 10, 1.0f));
  SiteLog impostor_log;
  std::thread impostor;
  real.start([&](Connection& c, SiteLog& log) {
    site_handshake(c, "site-1", 10);
    answer_rounds(c, log, [&](const v1::RoundStart& s) {
      if (s.round() == 1) {
        // The impostor connects while this connection stays up and keeps answering.
        auto [coord_end, site_end] = common::make_inproc_pair("coordinator", "site-1");
        listener.push(std::move(coord_end));
        impostor = std::thread([&impostor_log, conn = std::shared_ptr<Connection>(std::move(site_end))] {
          site_handshake(*conn, "site-1", 10);
          answer_rounds(*conn, impostor_log, [](const v1::RoundStart& s2) {
            return std::optional<Frame>(update_frame(s2.round(), 10, std::vector<float>(kParams, 9.f)));
          });
        });
      }
      return std::optional<Frame>(update_frame(s.round(), 10, std::vector<float>(kParams, 3.f)));
    });
  });
  Coordinator coord(base_options(3, {"site-0", "site-1"}, 1), fedavg(), eval, std::vector<float>(kParams, 0.f));
  coord.set_listener(&listener);
  auto res = coord.run(nullptr);
  good.thread.join();
  real.thread.join();
  impostor.join();
  EXPECT_EQ(site(res, "site-1").replacements, 1u);
  EXPECT_EQ(site(res, "site-0").replacements, 0u);
  ASSERT_FALSE(res.rounds.empty());
  EXPECT_EQ(res.rounds.back().connection_replacements, 1u) << "counted in the round metrics";
  EXPECT_TRUE(real.log.connection_closed) << "the replaced connection is closed";
  EXPECT_GE(impostor_log.rounds_seen, 1);
  EXPECT_TRUE(log.warned("site 'site-1': a new connection from in-process presents its certificate while its "
                         "connection from in-process is active"))
      << "the replacement must be logged with both addresses";
}


// Issue "running a federation for real": losing the quorum must not burn the job. Without a
// listener nobody can rejoin, so the job stops at once and says so truthfully.
TEST_F(CoordinatorTest, QuorumLostWithoutAListenerStopsInsteadOfBurningRounds) {
  FakeSite a("site-0"), b("site-1");
  a.start(honest("site-0", 10, 1.0f));
  b.start([](Connection& c, SiteLog& log) {
    site_handshake(c, "site-1", 10);
    answer_rounds(c, log, [&c](const v1::RoundStart& s) {
      if (s.round() == 2) c.close();  // the site goes away during round 2
      return s.round() == 1 ? std::optional<Frame>(update_frame(1, 10, std::vector<float>(kParams, 1.f)))
                            : std::optional<Frame>();
    });
  });
  Coordinator coord(base_options(10, {"site-0", "site-1"}, 2), fedavg(), eval, std::vector<float>(kParams, 0.f));
  coord.add_site(std::move(a.coord_end));
  coord.add_site(std::move(b.coord_end));
  auto res = coord.run(nullptr);
  a.thread.join();
  b.thread.join();
  ASSERT_EQ(res.rounds.size(), 2u) << "rounds 3-10 must not be run and abandoned";
  EXPECT_TRUE(res.rounds[0].applied);
  EXPECT_FALSE(res.rounds[1].applied);
  EXPECT_TRUE(res.quorum_lost);
  EXPECT_TRUE(res.interrupted) << "resumable";
  EXPECT_NE(res.stop_reason.find("stopped before round 3"), std::string::npos) << res.stop_reason;
  EXPECT_NE(res.stop_reason.find("missing: site-1"), std::string::npos) << res.stop_reason;
}

// With a listener the coordinator waits (job.quorum_wait_s) for the site to come back, then
// goes on: no round is abandoned for want of a quorum while it waits.
TEST_F(CoordinatorTest, QuorumWaitLetsASiteRejoinAndTheJobGoesOn) {
  QueueListener listener;
  FakeSite a("site-0"), b("site-1");
  listener.push(std::move(a.coord_end));
  listener.push(std::move(b.coord_end));
  a.start(honest("site-0", 10, 1.0f));
  SiteLog second;
  std::thread comeback;
  b.start([&](Connection& c, SiteLog& log) {
    site_handshake(c, "site-1", 10);
    answer_rounds(c, log, [&](const v1::RoundStart& s) {
      if (s.round() == 1) return std::optional<Frame>(update_frame(1, 10, std::vector<float>(kParams, 1.f)));
      c.close();  // gone in round 2; back 400 ms later, after the round was abandoned
      comeback = std::thread([&] {
        std::this_thread::sleep_for(400ms);
        auto [coord_end, site_end] = common::make_inproc_pair("coordinator", "site-1");
        listener.push(std::move(coord_end));
        site_handshake(*site_end, "site-1", 10);
        answer_rounds(*site_end, second, [](const v1::RoundStart& s2) {
          return std::optional<Frame>(update_frame(s2.round(), 10, std::vector<float>(kParams, 1.f)));
        });
      });
      return std::optional<Frame>();
    });
  });
  auto opt = base_options(4, {"site-0", "site-1"}, 2);
  opt.quorum_wait = 20s;
  Coordinator coord(std::move(opt), fedavg(), eval, std::vector<float>(kParams, 0.f));
  coord.set_listener(&listener);
  auto res = coord.run(nullptr);
  a.thread.join();
  b.thread.join();
  comeback.join();
  ASSERT_EQ(res.rounds.size(), 4u);
  EXPECT_TRUE(res.rounds[0].applied);
  EXPECT_FALSE(res.rounds[1].applied) << "the round the site vanished in";
  EXPECT_TRUE(res.rounds[2].applied) << "round 3 waited for the quorum";
  EXPECT_TRUE(res.rounds[3].applied);
  EXPECT_FALSE(res.quorum_lost);
  EXPECT_EQ(second.rounds_seen, 2);
  EXPECT_TRUE(second.got_shutdown);
}

// DP site sampling is not death: a site left out of a round is not expected in it (no wait,
// no "missed the deadline"), and stays a member.
TEST_F(CoordinatorTest, SitesNotSampledAreNotExpectedAndStayMembers) {
  FakeSite a("site-0"), b("site-1"), c("site-2");
  a.start(honest("site-0", 10, 1.0f));
  b.start(honest("site-1", 10, 1.0f));
  c.start(honest("site-2", 10, 1.0f));
  auto opt = base_options(8, {"site-0", "site-1", "site-2"}, 1);
  opt.round_timeout = 20s;  // a wait for an unsampled site would show as a missed deadline
  opt.liveness_timeout = 20s;
  auto* pv = opt.job.mutable_privacy();
  pv->set_mode(v1::PRIVACY_CENTRAL);
  pv->set_noise_multiplier(0.5);
  pv->set_clip_norm(1.0);
  pv->set_sampling_rate(0.5);
  pv->set_expected_sites(2);
  Coordinator coord(std::move(opt), fedavg(), eval, std::vector<float>(kParams, 0.f));
  coord.add_site(std::move(a.coord_end));
  coord.add_site(std::move(b.coord_end));
  coord.add_site(std::move(c.coord_end));
  const auto t0 = std::chrono::steady_clock::now();
  auto res = coord.run(nullptr);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  a.thread.join();
  b.thread.join();
  c.thread.join();
  ASSERT_EQ(res.rounds.size(), 8u);
  size_t sampled = 0;
  for (const auto& r : res.rounds) {
    EXPECT_EQ(r.sites_reported, r.sites_active) << "round " << r.round << ": every sampled site reported";
    sampled += r.sites_active;
  }
  EXPECT_LT(sampled, 3u * 8u) << "with q = 0.5 some sites sit rounds out";
  for (const auto& s : res.sites) EXPECT_TRUE(s.active) << s.name << " was taken for dead";
  EXPECT_LT(seconds, 20.0) << "no round waited for a site it did not sample";
}

// A site with a valid kit that lies: it declares `declared` samples at join and claims
// `claimed` in every Update, sending `delta` each round.
std::function<void(Connection&, SiteLog&)> liar(const std::string& name, uint64_t declared, uint64_t claimed,
                                                float delta) {
  return [=](Connection& c, SiteLog& log) {
    site_handshake(c, name, declared);
    answer_rounds(c, log, [&](const v1::RoundStart& s) {
      return std::optional<Frame>(update_frame(s.round(), claimed, std::vector<float>(kParams, delta)));
    });
  };
}


// Issue "a site buys the model": a claim of 10^12 samples is clipped to the job's bound
// (max_samples_per_site) and the honest sites' updates keep their weight.
TEST_F(CoordinatorTest, InflatedSampleCountsAreClippedToTheBound) {
  FakeSite a("site-0"), b("site-1"), evil("site-2");
  a.start(honest("site-0", 100, 1.0f));
  b.start(honest("site-1", 100, 1.0f));
  evil.start(liar("site-2", 1'000'000'000'000ULL, 1'000'000'000'000ULL, -100.0f));
  auto opt = base_options(1, {"site-0", "site-1", "site-2"}, 2);
  opt.max_samples_per_site = 100;
  Coordinator coord(opt, fedavg(), eval, std::vector<float>(kParams, 0.f));
  coord.add_site(std::move(a.coord_end));
  coord.add_site(std::move(b.coord_end));
  coord.add_site(std::move(evil.coord_end));
  auto res = coord.run([](const RoundRecord&) {});
  a.thread.join();
  b.thread.join();
  evil.thread.join();
  ASSERT_EQ(res.rounds.size(), 1u);
  EXPECT_TRUE(res.rounds[0].applied);
  expect_params(res.params, (100 * 1.0f + 100 * 1.0f + 100 * -100.0f) / 300);  // one third each
  EXPECT_EQ(site(res, "site-2").num_samples, 100u);  // the claim at join was clipped too
}

// With the default bound (the largest count declared at join, at most the job's cap) and
// equal weighting, a lie in the Update alone gains nothing.
TEST_F(CoordinatorTest, UpdateClaimsAboveTheDeclaredCountsAndEqualWeighting) {
  for (bool equal : {false, true}) {
    SCOPED_TRACE(equal ? "equal" : "samples");
    FakeSite a("site-0"), evil("site-1");
    a.start(honest("site-0", 300, 1.0f));
    evil.start(liar("site-1", 100, 1'000'000'000'000ULL, 4.0f));
    auto opt = base_options(1, {"site-0", "site-1"}, 2);
    opt.equal_weighting = equal;
    Coordinator coord(opt, fedavg(), eval, std::vector<float>(kParams, 0.f));
    coord.add_site(std::move(a.coord_end));
    coord.add_site(std::move(evil.coord_end));
    auto res = coord.run([](const RoundRecord&) {});
    a.thread.join();
    evil.thread.join();
    // samples: the liar's claim is clipped to 300 (the largest declared), so 1:1; equal: 1:1.
    expect_params(res.params, (1.0f + 4.0f) / 2);
  }
}

// Issue "absurd updates": a finite update of norm far beyond server.max_update_norm is dropped
// like a non-finite one; the honest sites' mean is applied.
TEST_F(CoordinatorTest, AbsurdlyLargeUpdateIsDropped) {
  FakeSite a("site-0"), b("site-1"), evil("site-2");
  a.start(honest("site-0", 10, 1.0f));
  b.start(honest("site-1", 10, 3.0f));
  evil.start(liar("site-2", 10, 10, 1e30f));
  Coordinator coord(base_options(1, {"site-0", "site-1", "site-2"}, 2), fedavg(), eval,
                    std::vector<float>(kParams, 0.f));
  coord.add_site(std::move(a.coord_end));
  coord.add_site(std::move(b.coord_end));
  coord.add_site(std::move(evil.coord_end));
  auto res = coord.run([](const RoundRecord&) {});
  a.thread.join();
  b.thread.join();
  evil.thread.join();
  expect_params(res.params, 2.0f);
  EXPECT_FALSE(site(res, "site-2").active);
  EXPECT_NE(site(res, "site-2").dropped_reason.find("max_update_norm"), std::string::npos)
      << site(res, "site-2").dropped_reason;
  EXPECT_TRUE(evil.log.connection_closed);
}

// A site runtime that trains instantly: a fixed delta.
class InstantRuntime : public worker::SiteRuntime {
 public:
  uint64_t prepare(const v1::JobSpec&, const std::string&) override { return 10; }
  worker::LocalUpdate train_round(uint32_t, const std::vector<float>& global) override {
    worker::LocalUpdate up;
    up.delta.assign(global.size(), 1.f);
    up.num_samples = 10;
    return up;
  }
  worker::ValidationFigures validate(uint32_t, const std::vector<float>&) override { return {}; }
};

// Issue 11, item 6: the coordinator is never silent for long. A real Worker whose silence
// bound (400 ms) is far shorter than the time it waits for the next round (a slow site takes
// 1.2 s per round) is kept alive by the coordinator's heartbeats and finishes the job; with
// heartbeats off the same worker gives up with CoordinatorSilent, and the job goes on.
TEST_F(CoordinatorTest, HeartbeatsKeepWaitingSitesAliveAcrossSlowRounds) {
  for (bool beats : {true, false}) {
    SCOPED_TRACE(beats ? "heartbeats every 100 ms" : "no heartbeats");
    FakeSite fast("site-0"), slow("site-1");
    InstantRuntime runtime;
    worker::WorkerOptions wopt;
    wopt.site_name = "site-0";
    wopt.idle_timeout = 400ms;
    worker::Worker w(*fast.site_end, runtime, wopt);
    std::promise<std::string> outcome;
    fast.thread = std::thread([&] {
      try {
        const auto r = w.run();
        outcome.set_value(r.success ? "finished after " + std::to_string(r.rounds_trained) + " rounds" : "failed");
      } catch (const worker::CoordinatorSilent& e) {
        outcome.set_value(std::string("silent: ") + e.what());
      } catch (const std::exception& e) {
        outcome.set_value(std::string("error: ") + e.what());
      }
    });
    slow.start([](Connection& c, SiteLog& log) {
      site_handshake(c, "site-1", 10);
      answer_rounds(c, log, [&](const v1::RoundStart& s) {
        std::this_thread::sleep_for(1200ms);
        return std::optional<Frame>(update_frame(s.round(), 10, std::vector<float>(kParams, 1.f)));
      });
    });
    CoordinatorOptions o = base_options(2, {"site-0", "site-1"}, 1);
    o.round_timeout = 5s;
    o.heartbeat_interval = beats ? 100ms : 0ms;
    Coordinator coord(o, fedavg(), eval, std::vector<float>(kParams, 0.f));
    coord.add_site(std::move(fast.coord_end));
    coord.add_site(std::move(slow.coord_end));
    auto res = coord.run(nullptr);
    const std::string got = outcome.get_future().get();
    fast.thread.join();
    slow.thread.join();
    ASSERT_EQ(res.rounds.size(), 2u);
    EXPECT_TRUE(slow.log.got_shutdown);
    if (beats) {
      EXPECT_EQ(got, "finished after 2 rounds");
      for (const auto& r : res.rounds) EXPECT_EQ(r.sites_reported, 2u);
    } else {
      EXPECT_NE(got.find("silent: "), std::string::npos) << got;
      EXPECT_NE(got.find("sent nothing (not even a heartbeat) for 400 ms"), std::string::npos) << got;
      EXPECT_EQ(res.rounds[1].sites_reported, 1u);  // the slow site carried on alone
    }
  }
}

// Forwards to a connection shared with the test (so a test can hand one end to a listener).
class SharedConn : public Connection {
 public:
  explicit SharedConn(std::shared_ptr<Connection> c) : c_(std::move(c)) {}
  void send(const Frame& f) override { c_->send(f); }
  Frame recv(common::Millis t) override { return c_->recv(t); }
  void close() override { c_->close(); }
  std::string peer_name() const override { return c_->peer_name(); }
  uint64_t bytes_sent() const override { return c_->bytes_sent(); }
  uint64_t bytes_received() const override { return c_->bytes_received(); }

 private:
  std::shared_ptr<Connection> c_;
};

// Issue 11, item 5: a site that only inspects the job (Error kLeaving after the backbone,
// before Ready) is not counted as a refusal: its slot stays open, it joins later through the
// listener, and the job runs with it.
TEST_F(CoordinatorTest, SiteThatInspectsAndLeavesCanJoinLater) {
  QueueListener listener;
  FakeSite good("site-0"), inspector("site-1");
  auto [c2, s2] = common::make_inproc_pair("coordinator", "site-1");
  std::shared_ptr<Connection> second_coord_end(std::move(c2)), second_site_end(std::move(s2));
  listener.push(std::move(good.coord_end));
  listener.push(std::move(inspector.coord_end));
  good.start(honest("site-0", 10, 1.0f));
  SiteLog second_log;
  inspector.start([&](Connection& c, SiteLog&) {
    v1::Hello hello;
    hello.set_protocol_version(common::kProtocolVersion);
    hello.set_site_name("site-1");
    c.send(to_frame(hello));
    from_frame<v1::JobSpec>(c.recv(5s));
    for (;;)
      if (from_frame<v1::BackboneChunk>(c.recv(5s)).last()) break;
    c.send(protocols::error_frame(protocols::ErrorCode::kLeaving, "site 'site-1' only inspected the job"));
    c.close();
    std::this_thread::sleep_for(300ms);
    listener.push(std::unique_ptr<Connection>(new SharedConn(second_coord_end)));
    honest("site-1", 30, 3.0f)(*second_site_end, second_log);
  });
  CoordinatorOptions o = base_options(1, {"site-0", "site-1"}, 2);
  Coordinator coord(o, fedavg(), eval, std::vector<float>(kParams, 0.f));
  coord.set_listener(&listener);
  auto res = coord.run(nullptr);
  good.thread.join();
  inspector.thread.join();
  ASSERT_EQ(res.rounds.size(), 1u);
  EXPECT_TRUE(res.rounds[0].applied);
  EXPECT_EQ(res.rounds[0].sites_reported, 2u);
  EXPECT_TRUE(site(res, "site-1").active);
  EXPECT_TRUE(second_log.got_shutdown);
  expect_params(res.params, 2.5f);
}

// Issue "scale": admission is concurrent. A listed site that connects first and then says
// nothing (no Hello) must not hold up the others' job and backbone: before, admission waited
// out its handshake timeout (here 20 s) before looking at anyone else. A stalled rejoiner
// costs a later round at most a short grace, not the handshake timeout.
TEST_F(CoordinatorTest, AStalledSiteDoesNotDelayTheOthersAdmission) {
  QueueListener listener;
  FakeSite stalled("site-0"), a("site-1"), b("site-2");
  listener.push(std::move(stalled.coord_end));  // first in line, and silent
  listener.push(std::move(a.coord_end));
  listener.push(std::move(b.coord_end));
  const auto t0 = std::chrono::steady_clock::now();
  std::atomic<int64_t> job_ms_a{-1}, job_ms_b{-1};
  auto timed = [&](const std::string& name, std::atomic<int64_t>& ms) {
    return [&, name](Connection& c, SiteLog& log) {
      site_handshake(c, name, 10);
      ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
      answer_rounds(c, log, [&](const v1::RoundStart& s) {
        return std::optional<Frame>(update_frame(s.round(), 10, std::vector<float>(kParams, 1.f)));
      });
    };
  };
  a.start(timed("site-1", job_ms_a));
  b.start(timed("site-2", job_ms_b));
  auto opt = base_options(2, {"site-0", "site-1", "site-2"}, 2);
  opt.handshake_timeout = 20s;
  opt.join_timeout = 2s;
  Coordinator coord(std::move(opt), fedavg(), eval, std::vector<float>(kParams, 0.f));
  coord.set_listener(&listener);
  auto res = coord.run(nullptr);
  const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  a.thread.join();
  b.thread.join();
  EXPECT_GE(job_ms_a.load(), 0);
  EXPECT_LT(job_ms_a.load(), 1500) << "site-1 waited behind the stalled site";
  EXPECT_LT(job_ms_b.load(), 1500) << "site-2 waited behind the stalled site";
  ASSERT_EQ(res.rounds.size(), 2u);
  EXPECT_EQ(res.rounds[0].sites_reported, 2u);
  EXPECT_FALSE(site(res, "site-0").active);
  EXPECT_NE(site(res, "site-0").dropped_reason.find("join deadline"), std::string::npos)
      << site(res, "site-0").dropped_reason;
  EXPECT_LT(total_s, 10) << "the job waited out the stalled site's handshake timeout";
}

// --- issue "scale": updates fold as they arrive, and arrival order never shows -------------

// Sites that send their round's update in a given order: turn k goes to the site at
// order[k], which sends, gives the coordinator a moment to take it, and passes the turn on.
class Turns {
 public:
  explicit Turns(std::vector<size_t> order) : order_(std::move(order)) {}
  void wait_and_send(size_t site, uint32_t round, Connection& c, const Frame& f) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, 30s, [&] { return round_ > round || (round_ == round && order_[next_] == site); })) {
      ADD_FAILURE() << "site " << site << " never got its turn in round " << round;
      return;
    }
    if (round_ > round) return;
    c.send(f);
    lock.unlock();
    std::this_thread::sleep_for(20ms);
    lock.lock();
    if (++next_ == order_.size()) {
      next_ = 0;
      ++round_;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<size_t> order_;
  size_t next_ = 0;
  uint32_t round_ = 1;
};

// Values whose double sum depends on the order they are added in (magnitudes 2^40 apart).
std::vector<float> order_sensitive_delta(size_t site) {
  const float big[] = {1e9f, -1e9f, 3.5e-4f, 7.25e8f, -2.5f};
  const float small[] = {3.1e-5f, 0.1f, -1e6f, 2.2e-7f, 1e-3f};
  std::vector<float> d(kParams);
  for (size_t j = 0; j < kParams; ++j) {
    const size_t k = (site + j) % 5;
    d[j] = (j % 2 ? big[k] : small[k]) * static_cast<float>(j + 1);
  }
  return d;
}

// Runs a 2-round job of five sites over the given connection pairs (coordinator end, site
// end), the sites sending in `order`, and returns the final parameters.
std::vector<float> run_in_arrival_order(std::vector<std::pair<std::unique_ptr<Connection>, std::unique_ptr<Connection>>> pairs,
                                        const std::vector<size_t>& order, FormulaEvaluator& eval) {
  const uint64_t samples[] = {30, 7, 1000, 1, 12};
  std::vector<std::string> names;
  for (size_t i = 0; i < pairs.size(); ++i) names.push_back("site-" + std::to_string(i));
  auto opt = base_options(2, names, pairs.size());
  opt.max_update_norm = 1e13;
  opt.round_timeout = 20s;
  Coordinator coord(std::move(opt), protocols::make_strategy(protocols::StrategySpec{}), eval,
                    std::vector<float>(kParams, 0.f));
  Turns turns(order);
  std::vector<std::thread> sites;
  for (size_t i = 0; i < pairs.size(); ++i) {
    coord.add_site(std::move(pairs[i].first));
    sites.emplace_back([&, i, c = pairs[i].second.get()] {
      site_handshake(*c, names[i], samples[i]);
      SiteLog log;
      answer_rounds(*c, log, [&](const v1::RoundStart& s) {
        turns.wait_and_send(i, s.round(), *c, update_frame(s.round(), samples[i], order_sensitive_delta(i)));
        return std::optional<Frame>();
      });
    });
  }
  auto res = coord.run(nullptr);
  for (auto& t : sites) t.join();
  EXPECT_EQ(res.rounds.size(), 2u);
  for (const auto& r : res.rounds) EXPECT_EQ(r.sites_reported, pairs.size());
  return res.params;
}

std::vector<std::pair<std::unique_ptr<Connection>, std::unique_ptr<Connection>>> inproc_pairs(size_t n) {
  std::vector<std::pair<std::unique_ptr<Connection>, std::unique_ptr<Connection>>> out;
  for (size_t i = 0; i < n; ++i) out.push_back(common::make_inproc_pair("coordinator", "site-" + std::to_string(i)));
  return out;
}

// A fresh federation PKI in `dir`: the coordinator's TLS config (admitting `names`) and each
// site's.
struct TestPki {
  common::TlsConfig server;
  std::vector<common::TlsConfig> clients;
};
TestPki make_pki(const std::string& dir, const std::vector<std::string>& names) {
  common::pki_init(dir, "orderfed");
  common::pki_issue(dir, "coordinator", "coordinator", "127.0.0.1:1");
  for (const auto& name : names) common::pki_issue(dir, name, "worker", "127.0.0.1:1");
  TestPki pki;
  const auto ck = common::load_kit(dir + "/kits/coordinator");
  pki.server.ca_cert = ck.ca_cert;
  pki.server.cert = ck.cert;
  pki.server.key = ck.key;
  pki.server.allowed_names = names;
  for (const auto& name : names) {
    const auto k = common::load_kit(dir + "/kits/" + name);
    common::TlsConfig client;
    client.ca_cert = k.ca_cert;
    client.cert = k.cert;
    client.key = k.key;
    client.expected_server_name = k.coordinator_name;
    pki.clients.push_back(client);
  }
  return pki;
}

std::vector<std::string> site_names(size_t n) {
  std::vector<std::string> names;
  for (size_t i = 0; i < n; ++i) names.push_back("site-" + std::to_string(i));
  return names;
}

// Mutual-TLS pairs on loopback with a fresh federation PKI in a temp dir.
std::vector<std::pair<std::unique_ptr<Connection>, std::unique_ptr<Connection>>> tls_pairs(const std::string& dir,
                                                                                           size_t n) {
  const TestPki pki = make_pki(dir, site_names(n));
  auto listener = common::tls_listen("127.0.0.1", 0, pki.server);
  std::vector<std::pair<std::unique_ptr<Connection>, std::unique_ptr<Connection>>> out;
  for (size_t i = 0; i < n; ++i) {
    auto site_end = std::async(std::launch::async,
                               [&] { return common::tls_connect("127.0.0.1", listener->port(), pki.clients[i], 5s); });
    auto coord_end = listener->accept(5s);
    out.emplace_back(std::move(coord_end), site_end.get());
  }
  return out;
}

// Contract: the same updates arriving in another order give the same model, bit for bit, in
// process and over TLS (where the double sum of these values would not: see
// WeightedMean.EveryArrivalOrderGivesTheSameBits), and all three runs agree.
TEST_F(CoordinatorTest, PermutedArrivalGivesTheSameModelInProcessAndOverTls) {
  const std::vector<size_t> forward = {0, 1, 2, 3, 4}, shuffled = {4, 2, 0, 3, 1};
  const auto a = run_in_arrival_order(inproc_pairs(5), forward, eval);
  const auto b = run_in_arrival_order(inproc_pairs(5), shuffled, eval);
  char tmpl[] = "/tmp/fedtl_order_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  std::vector<float> c;
  try {
    c = run_in_arrival_order(tls_pairs(std::string(tmpl) + "/pki", 5), {3, 1, 4, 0, 2}, eval);
  } catch (...) {
    std::filesystem::remove_all(tmpl);
    throw;
  }
  std::filesystem::remove_all(tmpl);
  ASSERT_EQ(a.size(), kParams);
  EXPECT_EQ(a, b) << "arrival order changed the model (in process)";
  EXPECT_EQ(a, c) << "arrival order or TLS changed the model";
  // And it is the weighted mean (twice: two rounds of the same deltas).
  const double w[] = {30, 7, 1000, 1, 12};
  for (size_t j = 0; j < kParams; ++j) {
    long double sum = 0;
    for (size_t i = 0; i < 5; ++i) sum += static_cast<long double>(w[i]) * order_sensitive_delta(i)[j];
    const double expect = static_cast<double>(2 * sum / 1050);
    EXPECT_NEAR(a[j], expect, 1e-6 * std::fabs(expect) + 1e-6) << j;
  }
}

// Contract: a site's update is taken when it arrives, not after the sites before it in index
// order: site-1's malformed update gets it dropped at once, though site-0 (index 0) has sent
// nothing yet, and site-0 answers only once it sees that (its update then counts). Reading
// in site order would have waited for site-0 until the deadline.
TEST_F(CoordinatorTest, AnUpdateIsTakenOnArrivalNotBehindSilentSites) {
  FakeSite a("site-0"), b("site-1");
  std::promise<void> b_dropped;
  auto dropped = b_dropped.get_future().share();
  a.start([&](Connection& c, SiteLog& log) {
    site_handshake(c, "site-0", 10);
    answer_rounds(c, log, [&](const v1::RoundStart& s) {
      if (s.round() == 1 && dropped.wait_for(5s) != std::future_status::ready) ADD_FAILURE() << "site-1 was not dropped";
      return std::optional<Frame>(update_frame(s.round(), 10, std::vector<float>(kParams, 1.f)));
    });
  });
  b.start([&](Connection& c, SiteLog& log) {
    site_handshake(c, "site-1", 10);
    answer_rounds(c, log, [&](const v1::RoundStart& s) {
      return std::optional<Frame>(update_frame(s.round(), 10, std::vector<float>(3, 1.f)));  // wrong size
    });
    b_dropped.set_value();
  });
  auto opt = base_options(2, {"site-0", "site-1"}, 1);
  opt.round_timeout = 10s;
  Coordinator coord(std::move(opt), fedavg(), eval, std::vector<float>(kParams, 0.f));
  coord.add_site(std::move(a.coord_end));
  coord.add_site(std::move(b.coord_end));
  const auto t0 = std::chrono::steady_clock::now();
  auto res = coord.run(nullptr);
  a.thread.join();
  b.thread.join();
  EXPECT_TRUE(b.log.connection_closed);
  ASSERT_EQ(res.rounds.size(), 2u);
  EXPECT_EQ(res.rounds[0].sites_reported, 1u) << "site-0's update missed round 1";
  EXPECT_TRUE(res.rounds[0].applied);
  expect_params(res.params, 2.f);
  EXPECT_FALSE(site(res, "site-1").active);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 8);
}

// Contract (job.sites_per_round): each training round sends RoundStart to exactly k of the
// active sites, the draw differs between rounds, and it is a function of seed and round alone:
// a job resumed from round 1's checkpoint draws rounds 2-3 as the uninterrupted job did and
// ends at the same model.
TEST_F(CoordinatorTest, SitesPerRoundDrawsKSitesSeededAndResumable) {
  constexpr size_t kSites = 6, kPerRound = 2;
  const std::vector<std::string> names = {"site-0", "site-1", "site-2", "site-3", "site-4", "site-5"};
  struct Run {
    std::vector<std::vector<uint32_t>> rounds_seen{kSites};  // per site, the rounds it trained in
    Coordinator::Result res;
    std::vector<common::Checkpoint> checkpoints;
  };
  auto run = [&](std::optional<common::Checkpoint> resume) {
    Run out;
    std::mutex mu;
    std::vector<std::unique_ptr<FakeSite>> sites;
    auto opt = base_options(3, names, kPerRound);
    opt.sites_per_round = kPerRound;
    opt.checkpoint = [&](const common::Checkpoint& c) { out.checkpoints.push_back(c); };
    std::vector<float> init(kParams, 0.f);
    if (resume) init = resume->params;
    opt.resume = resume;
    Coordinator coord(std::move(opt), fedavg(), eval, init);
    for (size_t i = 0; i < kSites; ++i) {
      sites.push_back(std::make_unique<FakeSite>(names[i]));
      sites.back()->start([&, i](Connection& c, SiteLog& log) {
        site_handshake(c, names[i], 10);
        answer_rounds(c, log, [&, i](const v1::RoundStart& s) {
          std::lock_guard<std::mutex> lock(mu);
          out.rounds_seen[i].push_back(s.round());
          return std::optional<Frame>(
              update_frame(s.round(), 10, std::vector<float>(kParams, static_cast<float>(i + 1) * s.round())));
        });
      });
      coord.add_site(std::move(sites.back()->coord_end));
    }
    out.res = coord.run(nullptr);
    for (auto& s : sites) s->thread.join();
    return out;
  };
  const Run full = run(std::nullopt);
  ASSERT_EQ(full.res.rounds.size(), 3u);
  std::vector<std::set<size_t>> drawn(4);
  for (size_t i = 0; i < kSites; ++i)
    for (uint32_t r : full.rounds_seen[i]) drawn[r].insert(i);
  for (uint32_t r = 1; r <= 3; ++r) {
    EXPECT_EQ(drawn[r].size(), kPerRound) << "round " << r;
    EXPECT_EQ(full.res.rounds[r - 1].sites_active, kPerRound);
    EXPECT_EQ(full.res.rounds[r - 1].sites_reported, kPerRound);
  }
  EXPECT_FALSE(drawn[1] == drawn[2] && drawn[2] == drawn[3]) << "every round drew the same sites";
  for (const auto& s : full.res.sites) EXPECT_TRUE(s.active) << s.name << ": not drawn is not dropped";
  ASSERT_GE(full.checkpoints.size(), 1u);

  const Run resumed = run(full.checkpoints[0]);
  ASSERT_EQ(resumed.res.rounds.size(), 2u);
  for (size_t i = 0; i < kSites; ++i) {
    std::vector<uint32_t> later;
    for (uint32_t r : full.rounds_seen[i])
      if (r > 1) later.push_back(r);
    EXPECT_EQ(resumed.rounds_seen[i], later) << names[i] << " was drawn differently after the resume";
  }
  EXPECT_EQ(resumed.res.params, full.res.params);
}

// Issue "scale", over TLS: a listed site that completes the TLS handshake and then says
// nothing does not delay the others' admission (each handshake runs on its own thread).
TEST_F(CoordinatorTest, ASiteStallingAfterTheTlsHandshakeDoesNotDelayTheOthers) {
  char tmpl[] = "/tmp/fedtl_stall_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const auto names = site_names(3);
  const TestPki pki = make_pki(std::string(tmpl) + "/pki", names);
  auto listener = common::tls_listen("127.0.0.1", 0, pki.server);
  const auto t0 = std::chrono::steady_clock::now();
  // site-0 connects first and stalls: mutual TLS completes, no Hello follows.
  auto stalled = common::tls_connect("127.0.0.1", listener->port(), pki.clients[0], 5s);
  std::atomic<int64_t> job_ms[3] = {{-1}, {-1}, {-1}};
  std::vector<std::thread> honest;
  for (size_t i = 1; i < 3; ++i) {
    honest.emplace_back([&, i] {
      try {
        auto c = common::tls_connect("127.0.0.1", listener->port(), pki.clients[i], 5s);
        site_handshake(*c, names[i], 10);
        job_ms[i] = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
        SiteLog log;
        answer_rounds(*c, log, [&](const v1::RoundStart& s) {
          return std::optional<Frame>(update_frame(s.round(), 10, std::vector<float>(kParams, 1.f)));
        });
      } catch (const std::exception& e) {
        ADD_FAILURE() << names[i] << ": " << e.what();
      }
    });
  }
  auto opt = base_options(1, names, 2);
  opt.handshake_timeout = 20s;
  opt.join_timeout = 3s;
  Coordinator coord(std::move(opt), fedavg(), eval, std::vector<float>(kParams, 0.f));
  coord.set_listener(listener.get());
  auto res = coord.run(nullptr);
  for (auto& t : honest) t.join();
  for (size_t i = 1; i < 3; ++i) {
    EXPECT_GE(job_ms[i].load(), 0) << names[i];
    EXPECT_LT(job_ms[i].load(), 2000) << names[i] << " waited behind the stalled site";
  }
  ASSERT_EQ(res.rounds.size(), 1u);
  EXPECT_EQ(res.rounds[0].sites_reported, 2u);
  EXPECT_FALSE(site(res, "site-0").active);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 15)
      << "the job waited out the stalled site's handshake timeout";
  std::filesystem::remove_all(tmpl);
}

}  // namespace
}  // namespace fedtl::coordinator

// Issue 12: early stopping on a scripted validation curve, and the best model kept. Losses
// per round: 1.0, 0.8 (best), 0.9, NaN (nobody reported: neither better nor counted), 0.85,
// 0.95 -> with patience 3 the third validation without improvement (round 6) stops.
TEST(ValidationTracker, StopsAtTheRightRoundAndKeepsTheBest) {
  const double nan = std::nan("");
  const std::vector<double> curve = {1.0, 0.8, 0.9, nan, 0.85, 0.95, 0.5};
  fedtl::coordinator::ValidationTracker patient(3), never(0);
  uint32_t stopped = 0;
  for (uint32_t r = 1; r <= curve.size(); ++r) {
    const std::vector<float> model(3, static_cast<float>(r));
    if (!stopped && patient.observe(r, curve[r - 1], model)) stopped = r;
    EXPECT_FALSE(never.observe(r, curve[r - 1], model));
  }
  EXPECT_EQ(stopped, 6u);
  EXPECT_EQ(never.best_round(), 7u);  // without patience the later improvement counts
  EXPECT_EQ(never.best_params(), std::vector<float>(3, 7.f));
  // What the patient tracker held when it stopped, through a checkpoint.
  fedtl::coordinator::ValidationTracker at_stop(3);
  for (uint32_t r = 1; r <= 5; ++r) at_stop.observe(r, curve[r - 1], std::vector<float>(3, static_cast<float>(r)));
  EXPECT_EQ(at_stop.best_round(), 2u);
  EXPECT_DOUBLE_EQ(at_stop.best_loss(), 0.8);
  EXPECT_EQ(at_stop.rounds_since_best(), 2u);
  fedtl::common::Checkpoint c;
  at_stop.save(c);
  fedtl::coordinator::ValidationTracker resumed(3);
  resumed.restore(c);
  EXPECT_EQ(resumed.best_params(), std::vector<float>(3, 2.f));
  EXPECT_TRUE(resumed.observe(6, 0.95, {}));  // the count survived the checkpoint
}

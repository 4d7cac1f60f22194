// Worker unit tests without LibTorch: the worker runs on its own thread against a scripted
// fake coordinator (the test thread, speaking protocols/messages.h by hand over an inproc
// pair) and a fake SiteRuntime that returns a fixed delta.
#include "worker/worker.h"

#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <spdlog/spdlog.h>

#include <chrono>
#include <future>
#include <thread>

#include "common/errors.h"
#include "common/sha256.h"
#include "common/transport/inproc.h"
#include "protocols/messages.h"
#include "worker/site_policy.h"
#include "tests/unit_job.h"

namespace fedtl::worker {
namespace {

using namespace std::chrono_literals;
using common::Connection;
using common::Frame;
using common::MessageType;
using protocols::from_frame;
using protocols::to_frame;

constexpr size_t kParams = 10;
const std::string kBackbone = "fake backbone bytes for the worker test";

class FakeRuntime : public SiteRuntime {
 public:
  uint64_t prepare(const v1::JobSpec& job, const std::string& backbone_bytes) override {
    ++prepared;
    backbone = backbone_bytes;
    return 42;
  }
  LocalUpdate train_round(uint32_t round, const std::vector<float>& global) override {
    rounds.push_back(round);
    last_global_size = global.size();
    if (global.size() != kParams) throw ModelError("expected 10 parameters, got " + std::to_string(global.size()));
    LocalUpdate up;
    up.delta.assign(global.size(), 0.5f);
    up.num_samples = 42;
    up.train_loss = 0.25;
    return up;
  }
  ValidationFigures validate(uint32_t, const std::vector<float>&) override { return {}; }
  int prepared = 0;
  std::string backbone;
  std::vector<uint32_t> rounds;
  size_t last_global_size = 0;
};

v1::JobSpec make_job(const std::string& backbone_digest = "") {
  return test_support::unit_job(kBackbone, kParams, 2, backbone_digest);
}

Frame round_start(uint32_t round, size_t n) {
  v1::RoundStart s;
  s.set_round(round);
  protocols::pack_tensor(std::vector<float>(n, 1.f), s.mutable_params());
  s.set_deadline_seconds(10);
  return to_frame(s);
}

// Next non-heartbeat frame from the worker.
Frame next(Connection& c) {
  for (;;) {
    Frame f = c.recv(5s);
    if (f.type != MessageType::kHeartbeat) return f;
  }
}

void send_backbone(Connection& c, const std::string& bytes, size_t chunk = 10) {
  for (size_t off = 0;; off += chunk) {
    v1::BackboneChunk ch;
    ch.set_offset(off);
    ch.set_data(bytes.substr(std::min(off, bytes.size()), chunk));
    ch.set_last(off + chunk >= bytes.size());
    c.send(to_frame(ch));
    if (ch.last()) break;
  }
}

class WorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    spdlog::set_level(spdlog::level::off);
    auto [c, w] = common::make_inproc_pair("site-a", "coordinator");
    coord = std::move(c);
    wconn = std::move(w);
    opt.site_name = "site-a";
    opt.idle_timeout = 5s;
    opt.heartbeat_interval = 1h;
  }
  void TearDown() override { spdlog::set_level(spdlog::level::info); }
  std::future<WorkerResult> start() {
    worker = std::make_unique<Worker>(*wconn, runtime, opt);
    return std::async(std::launch::async, [this] { return worker->run(); });
  }
  // The worker's Hello, checked.
  v1::Hello hello() {
    auto h = from_frame<v1::Hello>(next(*coord));
    EXPECT_EQ(h.protocol_version(), common::kProtocolVersion);
    EXPECT_EQ(h.site_name(), "site-a");
    return h;
  }
  std::unique_ptr<Connection> coord, wconn;
  FakeRuntime runtime;
  WorkerOptions opt;
  std::unique_ptr<Worker> worker;
};

// Contract (worker.h): Hello -> JobSpec + chunks -> Ready(num_samples, verified digest); each
// RoundStart answered with an Update carrying the runtime's delta, samples and metrics;
// Shutdown ends run() with the coordinator's reason and success flag.
TEST_F(WorkerTest, FullJobHelloReadyUpdatesShutdown) {
  std::string stored;
  opt.on_backbone = [&](const std::string& sha, const std::string& bytes) { stored = sha + ":" + bytes; };
  auto run = start();
  EXPECT_EQ(hello().backbone_sha256_size(), 0);
  coord->send(to_frame(make_job()));
  send_backbone(*coord, kBackbone);
  auto ready = from_frame<v1::Ready>(next(*coord));
  EXPECT_EQ(ready.num_samples(), 42u);
  EXPECT_EQ(ready.backbone_sha256(), common::sha256_hex(kBackbone));
  for (uint32_t r = 1; r <= 2; ++r) {
    coord->send(round_start(r, kParams));
    auto up = from_frame<v1::Update>(next(*coord));
    EXPECT_EQ(up.round(), r);
    EXPECT_EQ(up.num_samples(), 42u);
    EXPECT_DOUBLE_EQ(up.train_loss(), 0.25);
    EXPECT_EQ(protocols::unpack_tensor(up.delta(), kParams), std::vector<float>(kParams, 0.5f));
  }
  v1::Shutdown sd;
  sd.set_reason("done");
  sd.set_success(true);
  coord->send(to_frame(sd));
  const WorkerResult res = run.get();
  EXPECT_EQ(res.rounds_trained, 2u);
  EXPECT_TRUE(res.success);
  EXPECT_EQ(res.shutdown_reason, "done");
  EXPECT_FALSE(res.resume_expected);
  EXPECT_EQ(runtime.backbone, kBackbone);
  EXPECT_EQ(runtime.rounds, (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(stored, common::sha256_hex(kBackbone) + ":" + kBackbone);
}

// Contract: a site holding the backbone lists its digest in Hello and expects no download.
TEST_F(WorkerTest, CachedBackboneSkipsTheDownload) {
  opt.backbone_cache[common::sha256_hex(kBackbone)] = std::make_shared<const std::string>(kBackbone);
  auto run = start();
  const auto h = hello();
  ASSERT_EQ(h.backbone_sha256_size(), 1);
  EXPECT_EQ(h.backbone_sha256(0), common::sha256_hex(kBackbone));
  coord->send(to_frame(make_job()));
  EXPECT_EQ(from_frame<v1::Ready>(next(*coord)).num_samples(), 42u);
  coord->send(to_frame(v1::Shutdown()));
  EXPECT_EQ(run.get().rounds_trained, 0u);
  EXPECT_EQ(runtime.backbone, kBackbone);
}

// Contract: a job that check_job rejects is refused with an Error frame carrying
// ErrorCode::kPolicyRefused and the reason, then run() throws PolicyError; nothing is prepared.
TEST_F(WorkerTest, PolicyRefusalSendsErrorPolicyRefused) {
  opt.check_job = [](const v1::JobSpec& job) { return job.rounds() > 1 ? std::string("too many rounds") : ""; };
  auto run = start();
  hello();
  coord->send(to_frame(make_job()));
  send_backbone(*coord, kBackbone);  // the coordinator streams it before it sees the refusal
  auto err = from_frame<v1::ErrorMessage>(next(*coord));
  EXPECT_EQ(err.code(), static_cast<uint32_t>(protocols::ErrorCode::kPolicyRefused));
  EXPECT_NE(err.message().find("too many rounds"), std::string::npos) << err.message();
  EXPECT_THROW(run.get(), PolicyError);
  EXPECT_EQ(runtime.prepared, 0);
}

// Contract: the downloaded backbone is verified against the JobSpec's SHA-256: a mismatch is
// refused with Error(kBackboneDigest) and run() throws ProtocolError; nothing is prepared.
// A JobSpec with an enum value this build does not know, or asking for impossible work, (a newer or hostile coordinator) is
// refused by name with kBadConfig before any work; nothing defaults to SGD or "all_but_last".
TEST_F(WorkerTest, UnknownEnumValuesAreRefusedByName) {
  struct Case {
    const char* field;
    std::function<void(v1::JobSpec&)> spoil;
  };
  const Case cases[] = {
      {"training.optimizer", [](v1::JobSpec& j) { j.mutable_training()->set_optimizer(static_cast<v1::Optimizer>(7)); }},
      {"training.optimizer", [](v1::JobSpec& j) { j.mutable_training()->set_optimizer(v1::OPTIMIZER_UNSPECIFIED); }},
      {"model.head", [](v1::JobSpec& j) { j.mutable_model()->set_head(static_cast<v1::HeadType>(9)); }},
      {"model.freeze", [](v1::JobSpec& j) { j.mutable_model()->set_freeze(v1::FREEZE_UNSPECIFIED); }},
      {"privacy.mode", [](v1::JobSpec& j) { j.mutable_privacy()->set_mode(static_cast<v1::PrivacyMode>(42)); }},
      // Work a site cannot do is refused the same way (a batch of 0 would never finish).
      {"training.batch_size", [](v1::JobSpec& j) { j.mutable_training()->set_batch_size(0); }},
      {"training.epochs", [](v1::JobSpec& j) { j.mutable_training()->set_epochs(0); }},
      {"training.lr", [](v1::JobSpec& j) { j.mutable_training()->set_lr(std::numeric_limits<double>::infinity()); }},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.field);
    worker.reset();
    TearDown();
    SetUp();
    auto run = start();
    hello();
    v1::JobSpec job = make_job();
    c.spoil(job);
    coord->send(to_frame(job));
    auto err = from_frame<v1::ErrorMessage>(next(*coord));
    EXPECT_EQ(err.code(), static_cast<uint32_t>(protocols::ErrorCode::kBadConfig));
    EXPECT_NE(err.message().find(c.field), std::string::npos) << err.message();
    EXPECT_THROW(run.get(), ConfigError);
    EXPECT_EQ(runtime.prepared, 0);
  }
}

TEST_F(WorkerTest, WrongBackboneDigestIsRefusedWithBackboneDigest) {
  auto run = start();
  hello();
  coord->send(to_frame(make_job(common::sha256_hex("some other backbone"))));
  send_backbone(*coord, kBackbone);
  auto err = from_frame<v1::ErrorMessage>(next(*coord));
  EXPECT_EQ(err.code(), static_cast<uint32_t>(protocols::ErrorCode::kBackboneDigest));
  EXPECT_THROW(run.get(), ProtocolError);
  EXPECT_EQ(runtime.prepared, 0);
}

// Contract (messages.h unpack_tensor): a RoundStart whose tensor count disagrees with its bytes
// is malformed: run() throws ProtocolError and no training runs.
TEST_F(WorkerTest, MalformedRoundStartTensorIsAProtocolError) {
  auto run = start();
  hello();
  coord->send(to_frame(make_job()));
  send_backbone(*coord, kBackbone);
  from_frame<v1::Ready>(next(*coord));
  v1::RoundStart s;
  s.set_round(1);
  protocols::pack_tensor(std::vector<float>(kParams, 1.f), s.mutable_params());
  s.mutable_params()->set_count(kParams + 3);  // lies about its size
  coord->send(to_frame(s));
  EXPECT_THROW(run.get(), ProtocolError);
  EXPECT_TRUE(runtime.rounds.empty());
}

// Contract (worker.h): a RoundStart whose parameters do not match the job's layout, or are not
// finite, is refused before the runtime sees it; no Update is sent.
TEST_F(WorkerTest, RoundStartWithWrongParameterCountFailsTheRun) {
  auto run = start();
  hello();
  coord->send(to_frame(make_job()));
  send_backbone(*coord, kBackbone);
  from_frame<v1::Ready>(next(*coord));
  coord->send(round_start(1, kParams - 3));
  // Refused before any training: the site says why (kBadMessage) and ends the job.
  auto err = from_frame<v1::ErrorMessage>(next(*coord));
  EXPECT_EQ(err.code(), static_cast<uint32_t>(protocols::ErrorCode::kBadMessage));
  EXPECT_NE(err.message().find("expected " + std::to_string(kParams)), std::string::npos) << err.message();
  EXPECT_THROW(run.get(), ProtocolError);
  EXPECT_EQ(runtime.last_global_size, 0u);  // the runtime never saw the wrong-sized model
  EXPECT_THROW(coord->recv(50ms), TimeoutError);  // no Update came
}

TEST_F(WorkerTest, RoundStartWithNonFiniteParametersIsRefused) {
  auto run = start();
  hello();
  coord->send(to_frame(make_job()));
  send_backbone(*coord, kBackbone);
  from_frame<v1::Ready>(next(*coord));
  v1::RoundStart rs;
  rs.set_round(1);
  std::vector<float> params(kParams, 0.5f);
  params[3] = std::numeric_limits<float>::infinity();
  protocols::pack_tensor(params, rs.mutable_params());
  coord->send(to_frame(rs));
  auto err = from_frame<v1::ErrorMessage>(next(*coord));
  EXPECT_EQ(err.code(), static_cast<uint32_t>(protocols::ErrorCode::kBadMessage));
  EXPECT_NE(err.message().find("non-finite"), std::string::npos) << err.message();
  EXPECT_THROW(run.get(), ProtocolError);
  EXPECT_EQ(runtime.last_global_size, 0u);
}

// Contract: heartbeats from the coordinator are ignored and Shutdown (with resume_expected)
// stops the worker before any round.
TEST_F(WorkerTest, ShutdownStopsTheWorkerAndCarriesResumeExpected) {
  auto run = start();
  hello();
  coord->send(to_frame(make_job()));
  send_backbone(*coord, kBackbone);
  from_frame<v1::Ready>(next(*coord));
  coord->send(to_frame(v1::Heartbeat()));
  v1::Shutdown sd;
  sd.set_reason("stopped by a signal");
  sd.set_resume_expected(true);
  coord->send(to_frame(sd));
  const WorkerResult res = run.get();
  EXPECT_EQ(res.rounds_trained, 0u);
  EXPECT_FALSE(res.success);
  EXPECT_TRUE(res.resume_expected);
  EXPECT_EQ(res.shutdown_reason, "stopped by a signal");
}

// Issue 11, item 6: a JobSpec announcing a backbone larger than the site's bound
// (policy.max_backbone_bytes, default 2 GiB) is refused with kPolicyRefused before anything is
// allocated for it; 2^62 bytes once ended the worker in std::length_error ("internal error").
TEST_F(WorkerTest, HugeAnnouncedBackboneIsRefusedBeforeAnyAllocation) {
  for (bool with_policy : {false, true}) {
    SCOPED_TRACE(with_policy ? "site policy" : "worker bound");
    auto [c, w] = common::make_inproc_pair("site-a", "coordinator");
    coord = std::move(c);
    wconn = std::move(w);
    runtime.prepared = 0;
    const SitePolicy policy;  // defaults: max_backbone_bytes = 2 GiB
    opt.check_job = nullptr;
    if (with_policy) opt.check_job = [policy](const v1::JobSpec& job) { return policy_violation(policy, job); };
    auto run = start();
    hello();
    v1::JobSpec job = make_job();
    job.set_min_sites(1);
    job.set_backbone_bytes(uint64_t{1} << 62);
    coord->send(to_frame(job));
    auto err = from_frame<v1::ErrorMessage>(next(*coord));
    EXPECT_EQ(err.code(), static_cast<uint32_t>(protocols::ErrorCode::kPolicyRefused));
    EXPECT_NE(err.message().find("backbone is 4611686018427387904 bytes; this site accepts at most 2147483648 "
                                 "(policy.max_backbone_bytes)"),
              std::string::npos)
        << err.message();
    try {
      run.get();
      FAIL() << "the worker accepted a 2^62-byte backbone";
    } catch (const PolicyError& e) {
      EXPECT_NE(std::string(e.what()).find("policy.max_backbone_bytes"), std::string::npos) << e.what();
    }
    EXPECT_EQ(runtime.prepared, 0);
  }
}

// Issue 11, item 6: a coordinator that falls silent is noticed within the bound
// (WorkerOptions::idle_timeout = site policy coordinator_silence_s): after the handshake, and
// before the JobSpec; run() ends with CoordinatorSilent saying for how long.
TEST_F(WorkerTest, SilentCoordinatorIsNoticedWithinTheBound) {
  opt.idle_timeout = 300ms;
  for (bool after_ready : {true, false}) {
    SCOPED_TRACE(after_ready ? "silent after Ready" : "silent before the JobSpec");
    auto [c, w] = common::make_inproc_pair("site-a", "coordinator");
    coord = std::move(c);
    wconn = std::move(w);
    auto run = start();
    hello();
    if (after_ready) {
      coord->send(to_frame(make_job()));
      send_backbone(*coord, kBackbone);
      from_frame<v1::Ready>(next(*coord));
    }
    const auto t0 = std::chrono::steady_clock::now();  // and now: nothing
    try {
      run.get();
      FAIL() << "the worker waited on a silent coordinator";
    } catch (const CoordinatorSilent& e) {
      EXPECT_TRUE(after_ready) << "before the job, silence is transient (the coordinator may be starting)";
      const std::string m = e.what();
      EXPECT_NE(m.find("the coordinator '" + wconn->peer_name() + "' sent nothing (not even a heartbeat) for 300 ms "
                       "(policy.coordinator_silence_s)"),
                std::string::npos)
          << m;
    } catch (const TimeoutError& e) {
      EXPECT_FALSE(after_ready) << e.what();
      EXPECT_NE(std::string(e.what()).find("sent no job within"), std::string::npos) << e.what();
    }
    const auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_GE(waited, 250ms);
    EXPECT_LT(waited, 2s);
  }
}

// The coordinator's heartbeats keep a waiting site alive well past the silence bound.
TEST_F(WorkerTest, CoordinatorHeartbeatsKeepAWaitingSiteAlive) {
  opt.idle_timeout = 300ms;
  auto run = start();
  hello();
  coord->send(to_frame(make_job()));
  send_backbone(*coord, kBackbone);
  from_frame<v1::Ready>(next(*coord));
  for (int i = 0; i < 12; ++i) {  // 1.2 s of waiting, four times the bound
    std::this_thread::sleep_for(100ms);
    coord->send(to_frame(v1::Heartbeat()));
  }
  coord->send(round_start(1, kParams));
  EXPECT_EQ(from_frame<v1::Update>(next(*coord)).round(), 1u);
  coord->send(to_frame(v1::Shutdown()));
  EXPECT_EQ(run.get().rounds_trained, 1u);
}

// Issue 11, item 5: inspect only. The worker receives the job and the backbone, verifies the
// digest, shows them with the site's verdict (a policy refusal is shown, not sent), tells the
// coordinator it leaves (Error kLeaving) and returns without preparing anything.
TEST_F(WorkerTest, InspectOnlyShowsTheJobAndLeavesBeforeReady) {
  for (bool refused : {false, true}) {
    SCOPED_TRACE(refused ? "job outside the policy" : "job within the policy");
    auto [c, w] = common::make_inproc_pair("site-a", "coordinator");
    coord = std::move(c);
    wconn = std::move(w);
    runtime.prepared = 0;
    opt.inspect_only = true;
    opt.check_job = [refused](const v1::JobSpec&) { return refused ? std::string("too many rounds") : ""; };
    std::string shown_backbone, shown_verdict, shown_job;
    opt.on_job = [&](const v1::JobSpec& job, const std::string& backbone, const std::string& verdict) {
      shown_job = job.job_name();
      shown_backbone = backbone;
      shown_verdict = verdict;
    };
    auto run = start();
    hello();
    coord->send(to_frame(make_job()));
    send_backbone(*coord, kBackbone);
    auto err = from_frame<v1::ErrorMessage>(next(*coord));
    EXPECT_EQ(err.code(), static_cast<uint32_t>(protocols::ErrorCode::kLeaving));
    EXPECT_NE(err.message().find("only inspected the job and leaves before Ready"), std::string::npos) << err.message();
    const WorkerResult r = run.get();
    EXPECT_TRUE(r.inspected);
    EXPECT_TRUE(r.success);
    EXPECT_EQ(shown_job, "unit");
    EXPECT_EQ(shown_backbone, kBackbone);
    EXPECT_EQ(shown_verdict, refused ? "too many rounds" : "");
    EXPECT_EQ(runtime.prepared, 0);
  }
}


// Issue 11, item 6: work outside the site policy's bounds is refused before any work, naming the
// key; and a RoundStart whose deadline is absurd is refused before training.
TEST(SitePolicyBounds, AbsurdWorkIsRefusedNamingThePolicyKey) {
  const SitePolicy p;
  v1::JobSpec job = test_support::unit_job(kBackbone, kParams, 2, "");
  job.set_min_sites(1);
  EXPECT_EQ(policy_violation(p, job), "");
  auto with = [&](auto edit) {
    v1::JobSpec j = job;
    edit(j);
    return policy_violation(p, j);
  };
  EXPECT_NE(with([](v1::JobSpec& j) { j.mutable_training()->set_batch_size(1u << 30); }).find("policy.max_batch_size"),
            std::string::npos);
  EXPECT_NE(with([](v1::JobSpec& j) { j.mutable_training()->set_lr(1e6); }).find("policy.max_learning_rate"),
            std::string::npos);
  EXPECT_NE(with([](v1::JobSpec& j) { j.mutable_model()->set_hidden(1u << 30); }).find("policy.max_hidden"),
            std::string::npos);
  EXPECT_NE(with([](v1::JobSpec& j) { j.set_rounds(1u << 30); }).find("rounds"), std::string::npos);
  // Issue 12: the backbone's learning rate and how many backbone children a job trains.
  EXPECT_NE(with([](v1::JobSpec& j) { j.mutable_training()->set_backbone_lr(20); }).find("policy.max_backbone_lr"),
            std::string::npos);
  SitePolicy strict;
  strict.max_unfrozen_children = 1;
  strict.max_backbone_lr = 0.001;
  v1::JobSpec deep = job;
  for (const char* name : {"backbone.layer3.weight", "backbone.layer4.0.weight", "backbone.layer4.1.bias"}) {
    auto* e = deep.mutable_layout()->add_entries();
    e->set_name(name);
    e->add_shape(2);
  }
  deep.mutable_training()->set_backbone_lr(0.0005);
  EXPECT_NE(policy_violation(strict, deep).find("trains 2 backbone children"), std::string::npos)
      << policy_violation(strict, deep);
  deep.mutable_training()->set_backbone_lr(0);  // = lr / 10, above 0.001
  EXPECT_NE(policy_violation(strict, deep).find("policy.max_backbone_lr"), std::string::npos);
}

TEST_F(WorkerTest, RoundStartWithAnAbsurdDeadlineIsRefused) {
  auto run = start();
  hello();
  coord->send(to_frame(make_job()));
  send_backbone(*coord, kBackbone);
  from_frame<v1::Ready>(next(*coord));
  v1::RoundStart rs;
  rs.set_round(1);
  protocols::pack_tensor(std::vector<float>(kParams, 0.5f), rs.mutable_params());
  rs.set_deadline_seconds(1e300);
  coord->send(to_frame(rs));
  auto err = from_frame<v1::ErrorMessage>(next(*coord));
  EXPECT_EQ(err.code(), static_cast<uint32_t>(protocols::ErrorCode::kBadMessage));
  EXPECT_NE(err.message().find("policy.max_round_seconds"), std::string::npos) << err.message();
  EXPECT_THROW(run.get(), ProtocolError);
  EXPECT_EQ(runtime.last_global_size, 0u);
}

}  // namespace
}  // namespace fedtl::worker

// Reliability: checkpoints, SIGKILL + --resume, SIGTERM, slow sites and heartbeats.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "app/run.h"
#include "app/site_data.h"
#include "app/coordinator_job.h"
#include "app/site_trainer.h"
#include "common/checkpoint.h"
#include "app/config.h"
#include "common/data/datasets.h"
#include "common/errors.h"
#include "common/files.h"
#include "common/transport/inproc.h"
#include "common/model/transfer_model.h"
#include "worker/worker.h"

namespace fs = std::filesystem;
using namespace fedtl;
using namespace std::chrono_literals;

TEST(Checkpoint, RoundTripsAndDetectsTornOrCorruptFiles) {
  const fs::path dir = fs::temp_directory_path() / ("fedtl_ckpt_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "checkpoint.bin").string();
  common::Checkpoint a;
  a.job_fingerprint = "abc";
  a.round = 3;
  a.params = {1.5f, -2.f, 3.25f};
  a.strategy_state = {{0.1f, 0.2f, 0.3f}, {1.f, 2.f, 3.f}};
  a.accountant_state = "fedtl-rdp v1";
  a.clip_norm = 0.75;
  a.metrics_lines = {R"({"round":1})", R"({"round":2})", R"({"round":3})"};
  common::write_checkpoint(path, a);
  auto b = common::read_checkpoint(path);
  EXPECT_EQ(b.round, 3u);
  EXPECT_EQ(b.params, a.params);
  EXPECT_EQ(b.strategy_state, a.strategy_state);
  EXPECT_EQ(b.metrics_lines, a.metrics_lines);
  EXPECT_EQ(b.clip_norm, 0.75);

  a.round = 4;
  common::write_checkpoint(path, a);  // round 3 becomes checkpoint.bin.prev
  std::string bytes = common::read_file(path);
  std::string corrupt = bytes;
  corrupt[corrupt.size() / 2] ^= 1;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << corrupt;
  EXPECT_THROW(common::read_checkpoint(path), DataError);
  EXPECT_EQ(common::read_latest_checkpoint(path).round, 3u);  // the previous good one
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() - 7);
  try {
    common::read_checkpoint(path);
    FAIL() << "truncated checkpoint accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
  std::ofstream(path, std::ios::binary | std::ios::trunc) << "not a checkpoint at all, just text";
  EXPECT_THROW(common::read_checkpoint(path), DataError);
  fs::remove_all(dir);
}

namespace {

class Reliability : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(std::string(common::kFashionMnistDir) + "/t10k-images-idx3-ubyte.gz"))
      GTEST_SKIP() << "dataset-fashion-mnist is not installed (scripts/setup installs it)";
    dir_ = fs::temp_directory_path() / ("fedtl_rel_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    common::write_file_atomic((dir_ / "backbone.pt").string(),
                              common::model::builtin_cnn(common::model::InputSpec{}, 5));
    std::ofstream(dir_ / "job.toml") << "[job]\nseed = 8\nsites = 3\nrounds = 8\n"
                                     << "[partition]\nsamples_per_site = 60\n"
                                     << "[train]\nepochs = 1\n[server]\nstrategy = \"fedadam\"\nlr = 0.01\n"
                                     << "[backbone]\npath = \"" << (dir_ / "backbone.pt").string()
                                     << "\"\npretrain_if_missing = false\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Starts `fedtl simulate` as a child process writing to dir_/out.
  pid_t spawn(const std::string& out) const {
    const std::string bin = std::string(FEDTL_BINARY_DIR) + "/fedtl";
    const std::string cfg = (dir_ / "job.toml").string();
    const std::string o = (dir_ / out).string();
    pid_t pid = fork();
    if (pid == 0) {
      freopen("/dev/null", "w", stderr);
      freopen("/dev/null", "w", stdout);
      execl(bin.c_str(), bin.c_str(), "simulate", "--config", cfg.c_str(), "--out", o.c_str(), nullptr);
      _exit(127);
    }
    return pid;
  }
  size_t lines(const std::string& out) const {
    std::ifstream in(dir_ / out / "metrics.jsonl");
    size_t n = 0;
    for (std::string l; std::getline(in, l);) ++n;
    return n;
  }
  void wait_for_rounds(const std::string& out, size_t n) const {
    const auto until = std::chrono::steady_clock::now() + 60s;
    while (lines(out) < n && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(20ms);
    ASSERT_GE(lines(out), n);
  }
  app::JobConfig config(const std::string& out) const {
    auto cfg = app::load_job_config((dir_ / "job.toml").string());
    cfg.out = (dir_ / out).string();
    return cfg;
  }
  fs::path dir_;
};

}  // namespace

TEST_F(Reliability, SigkillMidJobThenResumeReachesTheUninterruptedDigest) {
  const std::string uninterrupted = app::run_simulate(config("full")).model_sha256;
  const pid_t pid = spawn("killed");
  wait_for_rounds("killed", 3);
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status));
  ASSERT_LT(lines("killed"), 8u);
  auto cfg = config("killed");
  cfg.resume = true;
  EXPECT_EQ(app::run_simulate(cfg).model_sha256, uninterrupted);
  EXPECT_EQ(lines("killed"), 8u);  // one metrics line per round, none twice
}

// Issue 12: resuming in the middle of a fine-tuning schedule, after a phase change and after
// early stopping has started counting, reaches the uninterrupted run's model (and best model).
// The run stopped at round k (the job file's rounds = k) and is resumed for the full job: its
// checkpoint carries the best model, its loss and the patience count.
TEST_F(Reliability, ResumeAcrossAPhaseChangeWithEarlyStoppingCountingReachesTheSameDigest) {
  auto schedule = [&](const std::string& out, int64_t rounds) {
    auto cfg = config(out);
    cfg.rounds = rounds;
    cfg.backbone.unfrozen = 2;  // block2 and fc
    cfg.backbone.warmup_rounds = 2;
    cfg.backbone.unfreeze_every = 2;
    cfg.train.lr = 0.3;  // a noisy validation curve: some rounds do not improve it
    cfg.early_stopping_patience = 50;
    return cfg;
  };
  const auto full = app::run_simulate(schedule("full", 10));
  std::vector<nlohmann::json> lines_full;
  {
    std::ifstream in(dir_ / "full" / "metrics.jsonl");
    for (std::string l; std::getline(in, l);) lines_full.push_back(nlohmann::json::parse(l));
  }
  ASSERT_EQ(lines_full.size(), 10u);
  EXPECT_EQ(lines_full[0]["phase"], "head");
  EXPECT_EQ(lines_full[2]["phase"], "unfreezing");
  EXPECT_EQ(lines_full[4]["phase"], "full");
  EXPECT_LT(lines_full[0]["trainable_params"].get<int64_t>(), lines_full[2]["trainable_params"].get<int64_t>());
  // A round sends and receives only what it trains: the head-only rounds move a few KB.
  EXPECT_LT(lines_full[0]["bytes_down"].get<double>() * 20, lines_full[4]["bytes_down"].get<double>());
  EXPECT_LT(lines_full[0]["bytes_up"].get<double>() * 20, lines_full[4]["bytes_up"].get<double>());
  // The first round after the phase change whose validation did not improve on the best so far.
  uint32_t k = 0;
  double best = 1e300;
  for (size_t i = 0; i < lines_full.size(); ++i) {
    const double v = lines_full[i]["validation_loss"].get<double>();
    if (i + 1 >= 4 && i + 1 < 9 && v >= best) {
      k = static_cast<uint32_t>(i + 1);
      break;
    }
    best = std::min(best, v);
  }
  ASSERT_GT(k, 0u) << "the validation curve improved every round; the test needs one that does not";
  app::run_simulate(schedule("split", k));
  const auto ckpt = common::read_latest_checkpoint((dir_ / "split" / "checkpoint.bin").string());
  EXPECT_EQ(ckpt.round, k);
  EXPECT_GT(ckpt.rounds_since_best, 0u);  // early stopping was counting
  EXPECT_FALSE(ckpt.best_params.empty());
  auto cfg = schedule("split", 10);
  cfg.resume = true;
  const auto resumed = app::run_simulate(cfg);
  EXPECT_EQ(resumed.model_sha256, full.model_sha256);
  EXPECT_EQ(lines("split"), 10u);
  const auto a = nlohmann::json::parse(common::read_file((dir_ / "full" / "summary.json").string()));
  const auto b = nlohmann::json::parse(common::read_file((dir_ / "split" / "summary.json").string()));
  EXPECT_EQ(a["best_round"], b["best_round"]);
  EXPECT_EQ(a["model_last_sha256"], b["model_last_sha256"]);
  // model.pt is the best round's model: the round with the lowest validation loss.
  uint32_t argmin = 0;
  double lowest = 1e300;
  for (size_t i = 0; i < lines_full.size(); ++i)
    if (lines_full[i]["validation_loss"].get<double>() < lowest) {
      lowest = lines_full[i]["validation_loss"].get<double>();
      argmin = static_cast<uint32_t>(i + 1);
    }
  EXPECT_EQ(a["best_round"].get<uint32_t>(), argmin);
  EXPECT_EQ(a["model_sha256"] == a["model_last_sha256"], argmin == 10u);
}

// Early stopping ends the job `patience` validations after the best one; model.pt is the best
// round's model, model_last.pt the last; keep_best = false keeps the last.
TEST_F(Reliability, EarlyStoppingEndsTheJobAndKeepsTheBestModel) {
  auto cfg = config("early");
  cfg.rounds = 12;
  cfg.train.lr = 0.3;
  cfg.early_stopping_patience = 1;
  const auto r = app::run_simulate(cfg);
  const auto s = nlohmann::json::parse(common::read_file((dir_ / "early" / "summary.json").string()));
  ASSERT_TRUE(s["stopped_early"].get<bool>()) << "the validation curve improved every round";
  const auto run = s["rounds_run"].get<uint32_t>();
  EXPECT_LT(run, 12u);
  EXPECT_EQ(lines("early"), run);
  EXPECT_EQ(run - s["best_round"].get<uint32_t>(), 1u);
  EXPECT_EQ(s["model_sha256"], r.model_sha256);
  EXPECT_NE(s["model_sha256"], s["model_last_sha256"]);
  EXPECT_TRUE(fs::exists(dir_ / "early" / "model_last.pt"));
  cfg.keep_best = false;
  cfg.out = (dir_ / "early_last").string();
  const auto last = app::run_simulate(cfg);
  EXPECT_EQ(last.model_sha256, s["model_last_sha256"].get<std::string>());
}

TEST_F(Reliability, SigtermStopsCleanlyWithACheckpointAndExitZero) {
  const pid_t pid = spawn("term");
  wait_for_rounds("term", 2);
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const auto s = nlohmann::json::parse(common::read_file((dir_ / "term" / "summary.json").string()));
  EXPECT_TRUE(s["interrupted"].get<bool>());
  EXPECT_LT(s["rounds_completed"].get<int>(), 8);
  EXPECT_EQ(common::read_latest_checkpoint((dir_ / "term" / "checkpoint.bin").string()).round,
            s["rounds_completed"].get<uint32_t>());
  auto cfg = config("term");
  cfg.resume = true;
  EXPECT_EQ(app::run_simulate(cfg).model_sha256, app::run_simulate(config("term_full")).model_sha256);
}

TEST_F(Reliability, ResumeRefusesAnotherJobsCheckpoint) {
  auto cfg = config("other");
  cfg.rounds = 1;
  app::run_simulate(cfg);
  cfg.resume = true;
  cfg.train.lr = 0.5;  // a different job
  EXPECT_THROW(app::run_simulate(cfg), ConfigError);
}

namespace {
// The real trainer, made slow in one round: a site on a busy machine.
class SlowTrainer : public worker::SiteRuntime {
 public:
  SlowTrainer(common::ImageSet data, std::chrono::milliseconds delay, uint32_t slow_round)
      : inner_(std::move(data)), delay_(delay), slow_round_(slow_round) {}
  uint64_t prepare(const v1::JobSpec& job, const std::string& backbone) override {
    return inner_.prepare(job, backbone);
  }
  worker::LocalUpdate train_round(uint32_t round, const std::vector<float>& global) override {
    if (round == slow_round_) std::this_thread::sleep_for(delay_);
    return inner_.train_round(round, global);
  }
  worker::ValidationFigures validate(uint32_t round, const std::vector<float>& params) override {
    return inner_.validate(round, params);
  }

 private:
  app::SiteTrainer inner_;
  std::chrono::milliseconds delay_;
  uint32_t slow_round_;
};

coordinator::Coordinator::Result run_with_slow_site(app::CoordinatorJob& job, std::chrono::milliseconds delay,
                                                    std::chrono::milliseconds heartbeat) {
  const auto parts = app::site_partition(job.config(), job.data());
  std::vector<std::string> names = {"site-0", "site-1", "site-2"};
  auto coord = job.make_coordinator(names);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < names.size(); ++i) {
    auto [c_end, w_end] = common::make_inproc_pair("coordinator", names[i]);
    coord->add_site(std::move(c_end));
    threads.emplace_back([&, i, conn = std::shared_ptr<common::Connection>(std::move(w_end))] {
      SlowTrainer trainer(job.data().target_train.subset(parts[i]), i == 2 ? delay : 0ms, 1);
      worker::WorkerOptions wopt;
      wopt.site_name = names[i];
      wopt.heartbeat_interval = heartbeat;
      try {
        worker::Worker(*conn, trainer, wopt).run();
      } catch (const fedtl::Error&) {
      }
    });
  }
  auto result = coord->run({});
  for (auto& t : threads) t.join();
  return result;
}
}  // namespace

TEST_F(Reliability, SlowSiteWithHeartbeatsIsWaitedForNotDeclaredDead) {
  auto cfg = config("slow");
  cfg.rounds = 2;
  cfg.liveness_timeout_s = 0.5;  // far shorter than the slow site's training
  cfg.round_timeout_s = 30;
  app::CoordinatorJob job(cfg);
  const auto r = run_with_slow_site(job, 2000ms, 100ms);
  EXPECT_EQ(r.rounds[0].sites_reported, 3u);
  EXPECT_EQ(r.rounds[1].sites_reported, 3u);
  EXPECT_TRUE(r.sites[2].active);
}

TEST_F(Reliability, SiteBeyondTheDeadlineMissesThatRoundOnly) {
  auto cfg = config("late");
  cfg.rounds = 3;
  cfg.round_timeout_s = 3.0;  // generous for the fast sites, even under sanitizers
  app::CoordinatorJob job(cfg);
  const auto r = run_with_slow_site(job, 5000ms, 100ms);
  EXPECT_EQ(r.rounds[0].sites_reported, 2u);  // late in round 1
  EXPECT_EQ(r.rounds[2].sites_reported, 3u);  // back by round 3
  EXPECT_TRUE(r.sites[2].active);
}

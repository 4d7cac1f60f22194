// End to end: `fedtl simulate` over the in-process transport on real Fashion-MNIST.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <sys/wait.h>
#include <nlohmann/json.hpp>

#include "app/run.h"
#include "app/config.h"
#include "common/data/datasets.h"
#include "common/errors.h"
#include "common/files.h"
#include "common/model/transfer_model.h"

namespace fs = std::filesystem;
using namespace fedtl;

namespace {

class Simulate : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("fedtl_e2e_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    // A randomly initialised built-in CNN stands in for a pre-trained one: the test is
    // about the protocol and outputs, and pre-training would take a minute.
    common::write_file_atomic((dir_ / "backbone.pt").string(),
                              common::model::builtin_cnn(common::model::InputSpec{}, 1));
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  void SetUp() override {
    if (!fs::exists(std::string(common::kFashionMnistDir) + "/t10k-images-idx3-ubyte.gz"))
      GTEST_SKIP() << "dataset-fashion-mnist is not installed (scripts/setup installs it)";
  }

  static app::JobConfig small_job(const std::string& name) {
    std::string toml = R"(
[job]
name = "e2e"
seed = 5
sites = 3
rounds = 2
[partition]
scheme = "dirichlet"
alpha = 1.0
samples_per_site = 100
[backbone]
path = ")" + (dir_ / "backbone.pt").string() + R"("
pretrain_if_missing = false
[train]
epochs = 2
# A random backbone's FC block must learn at the head's rate (the default lr / 10 is for
# pre-trained blocks).
backbone_lr = 0.05
[server]
strategy = "fedavg"
[baselines]
epochs = 3
)";
    auto cfg = app::parse_job_config(toml, "e2e.toml");
    cfg.out = (dir_ / name).string();
    return cfg;
  }

  static fs::path dir_;
};
fs::path Simulate::dir_;

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(common::read_file(p.string())); }

}  // namespace

TEST_F(Simulate, ThreeSitesTwoRoundsBeatChanceAndWriteEveryOutput) {
  auto cfg = small_job("run1");
  cfg.baselines.enabled = true;
  const auto r = app::run_simulate(cfg);
  EXPECT_GT(r.federated_accuracy, 0.3);  // 5 classes: chance is 0.2; a random backbone, 2 rounds
  const fs::path out = cfg.out;
  for (const char* f : {"metrics.jsonl", "summary.json", "model.pt", "accuracy.svg"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  std::ifstream in(out / "metrics.jsonl");
  std::string line;
  int rounds = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["round"], ++rounds);
    for (const char* k : {"accuracy", "loss", "bytes_up", "bytes_down", "seconds"}) EXPECT_TRUE(j.contains(k)) << k;
    EXPECT_GT(j["bytes_up"].get<double>(), 0);
  }
  EXPECT_EQ(rounds, 2);
  auto s = read_json(out / "summary.json");
  EXPECT_EQ(s["model_sha256"], r.model_sha256);
  EXPECT_EQ(s["sites"], 3);
  EXPECT_EQ(s["rounds"], 2);
  for (const char* k : {"federated_accuracy", "centralized_accuracy", "local_only_mean_accuracy", "scratch_accuracy",
                        "seconds"}) {
    ASSERT_TRUE(s[k].is_number()) << k;
    EXPECT_GT(s[k].get<double>(), 0.0) << k;
  }
  EXPECT_EQ(s["per_site"].size(), 3u);
  // The federated-from-scratch baseline and the transfer gain it gives.
  ASSERT_TRUE(s["federated_scratch_accuracy"].is_number());
  EXPECT_GT(s["federated_scratch_accuracy"].get<double>(), 0.0);
  EXPECT_NEAR(s["transfer_gain_points"].get<double>(),
              100 * (s["federated_accuracy"].get<double>() - s["federated_scratch_accuracy"].get<double>()), 1e-9);
  EXPECT_TRUE(s["warnings"].is_array());
  // Fashion-MNIST into the 1-channel 28x28 backbone it was made for: no domain gap, and each
  // site's input figures in its entry.
  for (const auto& w : s["warnings"]) EXPECT_NE(w["code"], "domain_gap") << w.dump();
  double fed_mean = 0, pers_mean = 0;
  for (const auto& site : s["per_site"]) {
    const auto& st = site["input_stats"];
    ASSERT_TRUE(st.is_object()) << site.dump();
    EXPECT_GT(st["images"].get<int64_t>(), 0);
    EXPECT_EQ(st["channels_as_stored"]["grey"], st["images"]);
    EXPECT_EQ(st["channels_as_stored"]["colour"], 0);
    EXPECT_EQ(st["height_as_stored"], nlohmann::json({28, 28}));
    EXPECT_EQ(st["backbone_input"], nlohmann::json({1, 28, 28}));
    EXPECT_LT(std::fabs(st["mean"][0].get<double>()), 0.5);
    // Its own validation split: the final model, then after personalising the head there.
    const auto& v = site["validation_metrics"];
    ASSERT_TRUE(v.is_object()) << site.dump();
    EXPECT_GT(v["images"].get<int64_t>(), 0);
    EXPECT_EQ(v["per_class"].size(), 5u);
    EXPECT_GE(v["accuracy"].get<double>(), 0.0);
    EXPECT_LE(v["accuracy"].get<double>(), 1.0);
    int64_t support = 0;
    for (const auto& [name, c] : v["per_class"].items()) support += c["support"].get<int64_t>();
    EXPECT_EQ(support, v["images"].get<int64_t>());
    EXPECT_EQ(site["personalize_epochs"], 5);
    EXPECT_EQ(site["personalized_validation_metrics"]["images"], v["images"]);
    fed_mean += v["accuracy"].get<double>() / 3;
    pers_mean += site["personalized_validation_metrics"]["accuracy"].get<double>() / 3;
  }
  EXPECT_NEAR(s["federated_site_mean_accuracy"].get<double>(), fed_mean, 1e-12);
  EXPECT_NEAR(s["personalized_mean_accuracy"].get<double>(), pers_mean, 1e-12);
  EXPECT_TRUE(fs::exists(out / "federated_scratch" / "summary.json"));
  // The exported model reproduces the reported accuracy's predictions shape.
  auto test = common::read_fashion_mnist("t10k").subset({0, 1, 2});
  EXPECT_EQ(common::model::run_exported_model((out / "model.pt").string(), test).size(), 3u * 5u);
}

// A frozen backbone that computes nothing useful (every weight zero): the same federated job
// from a random initialisation does far better, and the summary says so.
TEST_F(Simulate, NegativeTransferIsWarnedAbout) {
  const std::string dead = (dir_ / "dead_backbone.pt").string();
  const std::string cmd = std::string("/usr/bin/python3 -c \"import torch; m = torch.jit.load('") +
                          (dir_ / "backbone.pt").string() +
                          "'); [p.data.zero_() for p in m.parameters()]; m.save('" + dead + "')\"";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto cfg = small_job("negative");
  cfg.backbone.path = dead;
  cfg.backbone.freeze = common::model::Freeze::kAll;
  cfg.baselines.enabled = true;
  app::run_simulate(cfg);
  auto s = read_json(fs::path(cfg.out) / "summary.json");
  EXPECT_LT(s["transfer_gain_points"].get<double>(), -1.0) << s.dump();
  bool warned = false;
  for (const auto& w : s["warnings"]) warned |= w["code"] == "negative_transfer";
  EXPECT_TRUE(warned) << s["warnings"].dump();
}

TEST_F(Simulate, SameSeedSameDigestOtherSeedOtherDigest) {
  auto a = app::run_simulate(small_job("det_a"));
  auto b = app::run_simulate(small_job("det_b"));
  EXPECT_EQ(a.model_sha256, b.model_sha256);
  auto cfg = small_job("det_c");
  cfg.seed = 6;
  EXPECT_NE(app::run_simulate(cfg).model_sha256, a.model_sha256);
}

TEST_F(Simulate, FedProxAndFedYogiRun) {
  for (const char* strategy : {"fedprox", "fedyogi"}) {
    auto cfg = small_job(std::string("s_") + strategy);
    cfg.server.name = strategy;
    cfg.server.prox_mu = 0.1;
    if (std::string(strategy) == "fedyogi") cfg.server.server_lr = 0.01;
    EXPECT_GT(app::run_simulate(cfg).federated_accuracy, 0.3) << strategy;
  }
}

TEST_F(Simulate, ImpossibleRequestsFailWithClearErrors) {
  auto cfg = small_job("bad1");
  cfg.partition.samples_per_site = 100000;
  EXPECT_THROW(app::run_simulate(cfg), ConfigError);
  cfg = small_job("bad2");
  cfg.data.dir = (dir_ / "nowhere").string();
  try {
    app::run_simulate(cfg);
    FAIL() << "missing dataset accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("dataset-fashion-mnist"), std::string::npos) << e.what();
  }
  cfg = small_job("bad3");
  cfg.backbone.channels = 3;
  cfg.backbone.mean = cfg.backbone.std = {0.5, 0.5, 0.5};
  EXPECT_THROW(app::run_simulate(cfg), ModelError);
  EXPECT_FALSE(fs::exists(fs::path(cfg.out) / "summary.json"));  // nothing passed off as a result
}

TEST_F(Simulate, CommandLineReportsErrorsInOneLineAndExitsNonZero) {
  const fs::path bad = dir_ / "bad.toml";
  std::ofstream(bad) << "[job]\nrounds = 3\nfrobnicate = 1\n";
  const std::string cmd = std::string(FEDTL_BINARY_DIR) + "/fedtl simulate --config " + bad.string() + " 2>" +
                          (dir_ / "err.txt").string();
  const int rc = std::system(cmd.c_str());
  EXPECT_NE(rc, 0);
  const std::string err = common::read_file((dir_ / "err.txt").string());
  EXPECT_NE(err.find("unknown key 'job.frobnicate'"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
}

// `fedtl` is a launcher (cli/commands.h): --help and --version answer without loading LibTorch
// (seconds on a cold disk cache), with the engine's own words; a real subcommand still runs
// (the test above and every test that starts build/fedtl).
TEST_F(Simulate, HelpAndVersionAnswerWithoutLoadingLibTorch) {
  const std::string bin = std::string(FEDTL_BINARY_DIR) + "/fedtl";
  const std::string engine = std::string(FEDTL_BINARY_DIR) + "/fedtl-engine";
  auto run = [&](const std::string& program, const std::string& args, const std::string& tag) {
    const std::string cmd = "LD_DEBUG=libs " + program + " " + args + " >" + (dir_ / (tag + ".out")).string() + " 2>" +
                            (dir_ / (tag + ".libs")).string();
    const int rc = std::system(cmd.c_str());
    EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << cmd;
    return std::make_pair(common::read_file((dir_ / (tag + ".out")).string()),
                          common::read_file((dir_ / (tag + ".libs")).string()));
  };
  for (const std::string args : {"--help", "--version", "simulate --help", "worker --help"}) {
    const auto [out, libs] = run(bin, args, "launcher");
    EXPECT_NE(libs.find("libc.so"), std::string::npos) << "LD_DEBUG listed no library: " << libs.substr(0, 400);
    EXPECT_EQ(libs.find("libtorch"), std::string::npos) << "fedtl " << args << " loaded LibTorch";
    const auto [engine_out, engine_libs] = run(engine, args, "engine");
    EXPECT_NE(engine_libs.find("libtorch"), std::string::npos);  // what the launcher spares
    EXPECT_EQ(out, engine_out) << args;
    EXPECT_FALSE(out.empty()) << args;
  }
}

// Issue 18: a job that applied no round exits non-zero with one error line and no result on
// stdout. Cheap and deterministic: a privacy budget too small for even one round stops the job
// before round 1 (the data and backbone are loaded, nothing is trained); its outputs are still
// written and say rounds_applied 0.
TEST_F(Simulate, CommandLineExitsNonZeroWhenTheJobAppliedNoRound) {
  const fs::path job = dir_ / "no_round.toml";
  const fs::path out = dir_ / "no_round";
  std::ofstream(job) << "[job]\nseed = 5\nsites = 2\nrounds = 3\nout = \"" << out.string()
                     << "\"\n[partition]\nscheme = \"iid\"\nsamples_per_site = 50\n[backbone]\npath = \""
                     << (dir_ / "backbone.pt").string()
                     << "\"\npretrain_if_missing = false\n[privacy]\nmode = \"central\"\nnoise_multiplier = 1.0\n"
                        "target_epsilon = 0.001\n";
  const std::string cmd = std::string(FEDTL_BINARY_DIR) + "/fedtl --log-level warn simulate --config " +
                          job.string() + " >" + (dir_ / "no_round.out").string() + " 2>" +
                          (dir_ / "no_round.err").string();
  const int rc = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(rc)) << rc;
  EXPECT_EQ(WEXITSTATUS(rc), 1);
  const std::string err = common::read_file((dir_ / "no_round.err").string());
  EXPECT_NE(err.find("fedtl: error: the job applied no round"), std::string::npos) << err;
  EXPECT_NE(err.find("epsilon"), std::string::npos) << err;  // says why
  EXPECT_EQ(common::read_file((dir_ / "no_round.out").string()), "");
  EXPECT_EQ(read_json(out / "summary.json")["rounds_applied"], 0);

  // A job that applies its rounds exits 0.
  auto cfg = small_job("applied");
  const auto r = app::run_simulate(cfg);
  EXPECT_EQ(r.rounds_applied, 2u);
  std::ostringstream o, e;
  EXPECT_EQ(app::finish_job(r, cfg.rounds, o, e), 0);
  EXPECT_EQ(read_json(fs::path(cfg.out) / "summary.json")["rounds_applied"], 2);
}

// Differential privacy in the round protocol: epsilon reporting, the target-epsilon stop, and
// the modes that need secure aggregation.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "app/run.h"
#include "app/config.h"
#include "common/data/datasets.h"
#include "common/errors.h"
#include "common/files.h"
#include "common/model/transfer_model.h"
#include "protocols/dp/accountant.h"

namespace fs = std::filesystem;
using namespace fedtl;

namespace {

class Privacy : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(std::string(common::kFashionMnistDir) + "/t10k-images-idx3-ubyte.gz"))
      GTEST_SKIP() << "dataset-fashion-mnist is not installed (scripts/setup installs it)";
    dir_ = fs::temp_directory_path() / ("fedtl_privacy_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    common::write_file_atomic((dir_ / "backbone.pt").string(),
                              common::model::builtin_cnn(common::model::InputSpec{}, 4));
  }
  void TearDown() override { fs::remove_all(dir_); }

  app::JobConfig job(const std::string& out, const std::string& mode) const {
    auto cfg = app::parse_job_config(R"(
[job]
seed = 3
sites = 3
rounds = 3
[partition]
samples_per_site = 60
[train]
epochs = 1
[privacy]
noise_multiplier = 1.5
clip_norm = 0.5
delta = 1e-5
)");
    cfg.privacy.mode = mode == "none" ? std::nullopt
                                      : std::optional<protocols::dp::NoiseMode>(protocols::dp::parse_noise_mode(mode));
    cfg.backbone.path = (dir_ / "backbone.pt").string();
    cfg.backbone.pretrain_if_missing = false;
    cfg.out = (dir_ / out).string();
    return cfg;
  }
  std::vector<nlohmann::json> metrics(const std::string& out) const {
    std::vector<nlohmann::json> lines;
    std::ifstream in(dir_ / out / "metrics.jsonl");
    for (std::string l; std::getline(in, l);) lines.push_back(nlohmann::json::parse(l));
    return lines;
  }
  fs::path dir_;
};

}  // namespace

TEST_F(Privacy, CentralModeReportsTheAccountantsEpsilonEveryRound) {
  app::run_simulate(job("central", "central"));
  const auto lines = metrics("central");
  ASSERT_EQ(lines.size(), 3u);
  double last = 0;
  for (size_t r = 0; r < lines.size(); ++r) {
    const double eps = lines[r]["epsilon"].get<double>();
    EXPECT_GT(eps, last);  // grows with every round
    EXPECT_NEAR(eps, protocols::dp::epsilon(1.5, 1.0, static_cast<int64_t>(r + 1), 1e-5), 1e-9);
    last = eps;
  }
  const auto s = nlohmann::json::parse(common::read_file((dir_ / "central" / "summary.json").string()));
  EXPECT_DOUBLE_EQ(s["epsilon"].get<double>(), last);
  EXPECT_DOUBLE_EQ(s["delta"].get<double>(), 1e-5);
}

TEST_F(Privacy, TargetEpsilonStopsCleanlyWithTheModelSaved) {
  auto cfg = job("target", "central");
  cfg.rounds = 10;
  cfg.privacy.target_epsilon = protocols::dp::epsilon(1.5, 1.0, 2, 1e-5) + 1e-6;  // room for 2 rounds
  app::run_simulate(cfg);
  EXPECT_EQ(metrics("target").size(), 2u);
  const auto s = nlohmann::json::parse(common::read_file((dir_ / "target" / "summary.json").string()));
  EXPECT_EQ(s["rounds_completed"], 2);
  EXPECT_LE(s["epsilon"].get<double>(), cfg.privacy.target_epsilon);
  EXPECT_NE(s["stop_reason"].get<std::string>().find("target"), std::string::npos);
  EXPECT_TRUE(fs::exists(dir_ / "target" / "model.pt"));
}

TEST_F(Privacy, NoiseCostsAccuracyAndModesDiffer) {
  auto none = job("none", "none");
  const double clean = app::run_simulate(none).federated_accuracy;
  auto loud = job("loud", "central");
  loud.privacy.noise_multiplier = 50;  // noise far above the clipped updates
  EXPECT_LT(app::run_simulate(loud).federated_accuracy, clean);
  const auto local = app::run_simulate(job("local", "local"));
  const auto central = app::run_simulate(job("central2", "central"));
  EXPECT_NE(local.model_sha256, central.model_sha256);
}

TEST_F(Privacy, DistributedNoiseNeedsSecureAggregation) {
  EXPECT_THROW(app::run_simulate(job("dist_plain", "distributed")), ConfigError);
  auto cfg = job("dist", "distributed");
  cfg.secagg.enabled = true;
  cfg.secagg.threshold = 2;
  const auto r = app::run_simulate(cfg);
  EXPECT_EQ(metrics("dist").size(), 3u);
  EXPECT_GT(metrics("dist").back()["epsilon"].get<double>(), 0);
  EXPECT_FALSE(r.model_sha256.empty());
}

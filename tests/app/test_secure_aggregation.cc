// Secure aggregation in the round protocol: simulate runs, and a site that vanishes in the
// middle of a round.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "app/run.h"
#include "app/site_data.h"
#include "app/coordinator_job.h"
#include "app/site_trainer.h"
#include "app/config.h"
#include "common/data/datasets.h"
#include "common/errors.h"
#include "common/files.h"
#include "common/transport/inproc.h"
#include "common/model/transfer_model.h"
#include "protocols/messages.h"
#include "protocols/secagg/wire.h"
#include "protocols/secure_round.h"
#include "worker/worker.h"

namespace fs = std::filesystem;
using namespace fedtl;
using namespace std::chrono_literals;
using protocols::from_frame;
using protocols::to_frame;

namespace {

class SecureRounds : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(std::string(common::kFashionMnistDir) + "/t10k-images-idx3-ubyte.gz"))
      GTEST_SKIP() << "dataset-fashion-mnist is not installed (scripts/setup installs it)";
    dir_ = fs::temp_directory_path() / ("fedtl_secure_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    common::write_file_atomic((dir_ / "backbone.pt").string(),
                              common::model::builtin_cnn(common::model::InputSpec{}, 3));
  }
  void TearDown() override { fs::remove_all(dir_); }

  app::JobConfig job(const std::string& out, int sites, bool secure) const {
    auto cfg = app::parse_job_config(R"(
[job]
seed = 21
rounds = 2
min_sites = 2
[partition]
samples_per_site = 60
[train]
epochs = 1
backbone_lr = 0.05  # a random backbone: its FC block learns at the head's rate
[server]
strategy = "fedavg"
[secure_aggregation]
threshold = 2
)");
    cfg.partition.sites = sites;
    cfg.backbone.path = (dir_ / "backbone.pt").string();
    cfg.backbone.pretrain_if_missing = false;
    cfg.secagg.enabled = secure;
    cfg.out = (dir_ / out).string();
    return cfg;
  }

  fs::path dir_;
};

// Speaks the site side of the protocol honestly up to the key sharing of round 1, then
// disappears without sending its masked input: its pairwise masks must be removed with the
// survivors' shares of its key, and its update must not be in the sum.
void vanishing_site(std::unique_ptr<common::Connection> c) {
  v1::Hello h;
  h.set_protocol_version(common::kProtocolVersion);
  h.set_site_name("site-3");
  c->send(to_frame(h));
  const auto job = from_frame<v1::JobSpec>(c->recv(30s));
  for (;;)
    if (from_frame<v1::BackboneChunk>(c->recv(30s)).last()) break;
  v1::Ready ready;
  ready.set_num_samples(60);
  ready.set_backbone_sha256(job.backbone_sha256());
  c->send(to_frame(ready));
  const auto start = from_frame<v1::RoundStart>(c->recv(60s));
  const uint64_t m = start.params().count() + 1;
  protocols::secagg::ClientSession client(protocols::secagg_round_config(job, start.round(), m), job.site_index());
  c->send(to_frame(client.advertise_keys()));
  c->send(to_frame(client.share_keys(from_frame<v1::SecAggKeyList>(c->recv(60s)))));
  (void)from_frame<v1::SecAggShareList>(c->recv(60s));
  c->close();
}

std::vector<float> one_round(app::CoordinatorJob& cj, const std::vector<std::vector<int64_t>>& parts, int honest,
                             bool with_vanisher) {
  std::vector<std::string> names;
  for (int i = 0; i < honest + (with_vanisher ? 1 : 0); ++i) names.push_back("site-" + std::to_string(i));
  auto coord = cj.make_coordinator(names);
  std::vector<std::thread> threads;
  for (int i = 0; i < static_cast<int>(names.size()); ++i) {
    auto [c_end, w_end] = common::make_inproc_pair("coordinator", names[static_cast<size_t>(i)]);
    coord->add_site(std::move(c_end));
    if (i == honest) {
      threads.emplace_back(vanishing_site, std::move(w_end));
      continue;
    }
    threads.emplace_back([&, i, conn = std::shared_ptr<common::Connection>(std::move(w_end))] {
      app::SiteTrainer trainer(cj.data().target_train.subset(parts[static_cast<size_t>(i)]));
      worker::Worker(*conn, trainer, {names[static_cast<size_t>(i)]}).run();
    });
  }
  auto result = coord->run({});
  for (auto& t : threads) t.join();
  EXPECT_TRUE(result.rounds[0].applied);
  EXPECT_EQ(result.rounds[0].sites_reported, static_cast<size_t>(honest));
  return result.params;
}

}  // namespace

TEST_F(SecureRounds, SimulateIsDeterministicLearnsAndSaysItWasSecure) {
  auto learning = [&](const std::string& out, bool secure) {
    auto cfg = job(out, 3, secure);
    cfg.rounds = 3;
    cfg.train.epochs = 3;
    return cfg;
  };
  auto a = app::run_simulate(learning("a", true));
  auto b = app::run_simulate(learning("b", true));
  EXPECT_EQ(a.model_sha256, b.model_sha256);
  EXPECT_GT(a.federated_accuracy, 0.3);
  auto plain = app::run_simulate(learning("plain", false));
  EXPECT_NE(plain.model_sha256, a.model_sha256);  // quantisation makes the sums differ slightly
  EXPECT_NEAR(plain.federated_accuracy, a.federated_accuracy, 0.05);
  auto s = nlohmann::json::parse(common::read_file((dir_ / "a" / "summary.json").string()));
  EXPECT_TRUE(s["secure_aggregation"].get<bool>());
  // The clinical metrics travel in every mode's summary (common/metrics.h has the hand-worked
  // cases; here: they are there, consistent, and per class by name).
  const auto& tm = s["test_metrics"];
  EXPECT_DOUBLE_EQ(tm["accuracy"].get<double>(), s["federated_accuracy"].get<double>());
  EXPECT_GT(tm["macro_auc"].get<double>(), 0.5);
  EXPECT_LE(tm["macro_auc"].get<double>(), 1.0);
  ASSERT_EQ(tm["per_class"].size(), 5u);
  double recall_sum = 0;
  for (const auto& [name, c] : tm["per_class"].items()) {
    EXPECT_FALSE(name.empty());
    EXPECT_GT(c["support"].get<int64_t>(), 0) << name;
    recall_sum += c["recall"].get<double>();
  }
  EXPECT_NEAR(tm["balanced_accuracy"].get<double>(), recall_sum / 5, 1e-9);
  std::ifstream metrics((dir_ / "a" / "metrics.jsonl").string());
  std::string line;
  ASSERT_TRUE(std::getline(metrics, line));
  const auto first = nlohmann::json::parse(line);
  EXPECT_TRUE(first.contains("macro_auc") && first.contains("balanced_accuracy")) << line;
  // Issue 12: the sites' training and validation figures travelled inside the masked vectors:
  // the coordinator has the federation's totals (no longer NaN), equal to what the plain run
  // computes from each site's figures in the clear, up to the fixed-point quantum.
  std::ifstream plain_metrics((dir_ / "plain" / "metrics.jsonl").string());
  std::string plain_line;
  ASSERT_TRUE(std::getline(plain_metrics, plain_line));
  const auto p1 = nlohmann::json::parse(plain_line);
  for (const char* k : {"train_loss", "train_accuracy", "validation_loss", "validation_accuracy"}) {
    ASSERT_TRUE(first[k].is_number()) << k << ": " << line;
    EXPECT_NEAR(first[k].get<double>(), p1[k].get<double>(), 2e-3) << k;
  }
  EXPECT_NEAR(first["validation_samples"].get<double>(), p1["validation_samples"].get<double>(), 0.01);
}

TEST_F(SecureRounds, SiteVanishingMidRoundLeavesExactlyTheSurvivorsSum) {
  auto secure_cfg = job("secure", 4, true);
  secure_cfg.rounds = 1;
  secure_cfg.round_timeout_s = 30;
  app::CoordinatorJob secure_job(secure_cfg);
  const auto parts = app::site_partition(secure_cfg, secure_job.data());
  const auto secure = one_round(secure_job, parts, 3, /*with_vanisher=*/true);

  // The same three honest sites, aggregated in the clear.
  auto plain_cfg = secure_cfg;
  plain_cfg.secagg.enabled = false;
  plain_cfg.out += "_plain";
  app::CoordinatorJob plain_job(plain_cfg);
  const auto plain = one_round(plain_job, parts, 3, false);
  ASSERT_EQ(plain.size(), secure.size());
  double max_diff = 0;
  for (size_t i = 0; i < plain.size(); ++i) max_diff = std::max(max_diff, std::abs(double(plain[i]) - secure[i]));
  EXPECT_LT(max_diff, 1e-5);  // quantisation: n/S with S ~ 2^28 here
  EXPECT_GT(max_diff, 0.0);   // it really went through the fixed-point ring
}

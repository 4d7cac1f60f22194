// `fedtl simulate`: the coordinator on this thread, one worker thread per site, connected by
// the in-process transport and speaking the real wire protocol.
#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <thread>

#include "cli/commands.h"
#include "cli/job_setup.h"
#include "cli/site_trainer.h"
#include "common/errors.h"
#include "common/files.h"
#include "common/inproc_transport.h"
#include "common/partition.h"
#include "common/report.h"
#include "common/sha256.h"
#include "coordinator/coordinator.h"
#include "worker/worker.h"

namespace fedtl::cli {
namespace {

using common::model::FeatureSet;
using common::model::TransferModel;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

class TestSetEvaluator : public coordinator::Evaluator {
 public:
  TestSetEvaluator(TransferModel& model, const FeatureSet& test) : model_(model), test_(test) {}
  coordinator::RoundEval evaluate(const std::vector<float>& params) override {
    model_.set_params(params);
    last_ = model_.evaluate(test_);
    return {last_.accuracy, last_.loss};
  }
  const common::model::EvalResult& last() const { return last_; }

 private:
  TransferModel& model_;
  const FeatureSet& test_;
  common::model::EvalResult last_;
};

// Accuracy a site would see: per-class recall weighted by the site's class mix.
double mix_accuracy(const std::vector<std::vector<int64_t>>& confusion, const std::vector<int64_t>& counts) {
  double acc = 0, total = 0;
  for (size_t c = 0; c < confusion.size(); ++c) {
    const double row = static_cast<double>(std::accumulate(confusion[c].begin(), confusion[c].end(), int64_t{0}));
    if (row > 0) acc += static_cast<double>(counts[c]) * static_cast<double>(confusion[c][c]) / row;
    total += static_cast<double>(counts[c]);
  }
  return total > 0 ? acc / total : 0;
}

common::model::TrainOptions baseline_options(const common::JobConfig& cfg, uint64_t seed) {
  common::model::TrainOptions o;
  o.optimizer = cfg.train.optimizer;
  o.lr = cfg.train.lr;
  o.momentum = cfg.train.momentum;
  o.weight_decay = cfg.train.weight_decay;
  o.epochs = cfg.baselines.epochs;
  o.batch_size = cfg.train.batch_size;
  o.seed = seed;
  return o;
}

}  // namespace

common::JobConfig apply_overrides(common::JobConfig cfg, const SimulateOverrides& o) {
  if (o.sites) cfg.partition.sites = *o.sites;
  if (o.rounds) cfg.rounds = *o.rounds;
  if (o.seed) cfg.seed = *o.seed;
  if (o.out) cfg.out = *o.out;
  if (o.baselines) cfg.baselines.enabled = true;
  cfg.min_sites = std::min<int64_t>(cfg.min_sites, cfg.partition.sites);
  common::validate(cfg);
  return cfg;
}

void run_pretrain(const common::JobConfig& cfg, const std::string& out_path) {
  common::model::set_torch_threads(static_cast<int>(cfg.threads));
  TaskData data = load_task_data(cfg);
  std::string bytes = pretrain_backbone(cfg, data);
  common::write_file_atomic(out_path, bytes);
  spdlog::info("wrote backbone {} ({} bytes, sha256 {})", out_path, bytes.size(), common::sha256_hex(bytes));
}

SimulateResult run_simulate(const common::JobConfig& cfg) {
  const auto t_start = Clock::now();
  common::model::set_torch_threads(static_cast<int>(cfg.threads));
  auto strategy = protocols::make_strategy(cfg.server);  // validates [server] before any work
  std::filesystem::create_directories(cfg.out);

  TaskData data = load_task_data(cfg);
  spdlog::info("target task: {} classes, {} training and {} test images", cfg.data.target_classes.size(),
               data.target_train.size(), data.target_test.size());
  const std::string backbone = ensure_backbone(cfg, data);
  const std::string backbone_sha = common::sha256_hex(backbone);

  // Sites and their data.
  common::PartitionSpec pspec = cfg.partition;
  pspec.seed = derive_seed(cfg.seed, 0x5a17e5);
  const int64_t k = static_cast<int64_t>(cfg.data.target_classes.size());
  auto parts = common::partition(data.target_train.labels, k, pspec);
  auto counts = common::class_counts(data.target_train.labels, k, parts);
  static const char* scheme_names[] = {"iid", "dirichlet", "quantity"};
  spdlog::info("partition: {} sites, scheme {}, alpha {}, {} labels per site (0 = split all)\n{}",
               cfg.partition.sites, scheme_names[static_cast<int>(cfg.partition.scheme)], cfg.partition.alpha,
               cfg.partition.samples_per_site,
               common::format_class_table(counts, data.target_names));

  // The coordinator's own model: initial parameters and evaluation on the global test set.
  const auto mspec = model_spec(cfg);
  auto global_model = TransferModel::create(backbone, mspec, cfg.seed);
  auto test_features = global_model->features(data.target_test);
  spdlog::info("model: {} trainable parameters ({} feature dims into a {} head); test features cached ({:.1f} MB)",
               global_model->num_params(), global_model->feature_dim(), cfg.head.type,
               test_features->bytes() / 1e6);
  TestSetEvaluator evaluator(*global_model, *test_features);

  coordinator::CoordinatorOptions copt;
  copt.job = make_job_spec(cfg, backbone_sha, backbone.size(), global_model->layout());
  copt.backbone = backbone;
  copt.min_sites = static_cast<size_t>(cfg.min_sites);
  copt.round_timeout = std::chrono::milliseconds(static_cast<int64_t>(cfg.round_timeout_s * 1000));
  coordinator::Coordinator coord(copt, std::move(strategy), evaluator, global_model->params());

  // One worker thread per site, each with its half of an in-process connection.
  const int n = static_cast<int>(cfg.partition.sites);
  std::vector<std::unique_ptr<common::Connection>> worker_ends;
  for (int i = 0; i < n; ++i) {
    auto [coord_end, worker_end] = common::make_inproc_pair("coordinator", "site-" + std::to_string(i));
    coord.add_site(std::move(coord_end));
    worker_ends.push_back(std::move(worker_end));
  }
  std::vector<std::string> worker_errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  const auto t_sites = Clock::now();
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      try {
        SiteTrainer trainer(data.target_train.subset(parts[static_cast<size_t>(i)]));
        worker::WorkerOptions wopt;
        wopt.site_name = "site-" + std::to_string(i);
        worker::Worker w(*worker_ends[static_cast<size_t>(i)], trainer, wopt);
        w.run();
      } catch (const std::exception& e) {
        worker_errors[static_cast<size_t>(i)] = e.what();
        spdlog::error("site-{} failed: {}", i, e.what());
        worker_ends[static_cast<size_t>(i)]->close();
      }
    });
  }

  common::JsonlWriter metrics(cfg.out + "/metrics.jsonl");
  std::vector<std::pair<double, double>> curve;
  coordinator::Coordinator::Result result;
  try {
    result = coord.run([&](const coordinator::RoundRecord& r) {
      if (r.round == 1)
        spdlog::info("sites started and ready in {:.2f} s", std::chrono::duration<double>(Clock::now() - t_sites).count() - r.seconds);
      spdlog::info("round {:>3}/{}: accuracy {:.2f}%  loss {:.4f}  train loss {:.4f}  sites {}/{}  up {:.2f} MB  down {:.2f} MB  {:.2f} s",
                   r.round, cfg.rounds, 100 * r.accuracy, r.loss, r.train_loss, r.sites_reported, r.sites_active,
                   r.bytes_up / 1e6, r.bytes_down / 1e6, r.seconds);
      metrics.write({{"round", r.round}, {"accuracy", r.accuracy}, {"loss", r.loss}, {"train_loss", r.train_loss},
                     {"sites_reported", r.sites_reported}, {"applied", r.applied}, {"bytes_up", r.bytes_up},
                     {"bytes_down", r.bytes_down}, {"seconds", r.seconds}});
      curve.emplace_back(r.round, r.accuracy);
    });
  } catch (...) {
    for (auto& e : worker_ends) e->close();
    for (auto& t : threads) t.join();
    throw;
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < n; ++i)
    if (!worker_errors[static_cast<size_t>(i)].empty() && result.sites[static_cast<size_t>(i)].active)
      throw Error("site-" + std::to_string(i) + " failed: " + worker_errors[static_cast<size_t>(i)]);

  // Final model: evaluate, export, digest.
  global_model->set_params(result.params);
  const auto final_eval = global_model->evaluate(*test_features);
  const std::string digest = global_model->digest();
  global_model->export_torchscript(cfg.out + "/model.pt");
  spdlog::info("federated model: accuracy {:.2f}% on {} test images; sha256 {}", 100 * final_eval.accuracy,
               final_eval.samples, digest);
  spdlog::info("confusion matrix:\n{}", common::format_confusion(final_eval.confusion, data.target_names));

  json summary;
  summary["job"] = cfg.name;
  summary["sites"] = n;
  summary["rounds"] = cfg.rounds;
  summary["seed"] = cfg.seed;
  summary["strategy"] = cfg.server.name;
  summary["transport"] = "inproc";
  summary["secure_aggregation"] = false;
  summary["federated_accuracy"] = final_eval.accuracy;
  summary["federated_loss"] = final_eval.loss;
  summary["model_sha256"] = digest;
  summary["backbone_sha256"] = backbone_sha;
  summary["trainable_parameters"] = global_model->num_params();
  summary["confusion_matrix"] = final_eval.confusion;
  summary["class_names"] = data.target_names;
  summary["handshake_bytes_down"] = result.handshake_bytes_down;
  json sites = json::array();
  for (int i = 0; i < n; ++i) {
    const auto& si = result.sites[static_cast<size_t>(i)];
    sites.push_back({{"site", si.name}, {"samples", parts[static_cast<size_t>(i)].size()},
                     {"class_counts", counts[static_cast<size_t>(i)]},
                     {"federated_accuracy_on_site_mix", mix_accuracy(final_eval.confusion, counts[static_cast<size_t>(i)])},
                     {"completed", si.active}});
  }

  std::vector<common::PlotLine> lines;
  json baselines = nullptr;
  summary["centralized_accuracy"] = nullptr;
  summary["local_only_mean_accuracy"] = nullptr;
  summary["scratch_accuracy"] = nullptr;
  if (cfg.baselines.enabled) {
    const auto tb = Clock::now();
    // Local-only: each site trains alone from the same starting point.
    double local_sum = 0;
    for (int i = 0; i < n; ++i) {
      auto m = TransferModel::create(backbone, mspec, cfg.seed);
      auto fs = m->features(data.target_train.subset(parts[static_cast<size_t>(i)]));
      m->train(*fs, baseline_options(cfg, derive_seed(cfg.seed, 0x10ca1, static_cast<uint64_t>(i))));
      const auto ev = m->evaluate(*test_features);
      local_sum += ev.accuracy;
      sites[static_cast<size_t>(i)]["local_only_accuracy"] = ev.accuracy;
      sites[static_cast<size_t>(i)]["local_only_accuracy_on_site_mix"] =
          mix_accuracy(ev.confusion, counts[static_cast<size_t>(i)]);
    }
    const double local_mean = local_sum / n;
    // Centralised: all sites' labels pooled in one place.
    std::vector<int64_t> pooled;
    for (const auto& p : parts) pooled.insert(pooled.end(), p.begin(), p.end());
    std::sort(pooled.begin(), pooled.end());
    const common::ImageSet pooled_set = data.target_train.subset(pooled);
    auto central = TransferModel::create(backbone, mspec, cfg.seed);
    auto central_fs = central->features(pooled_set);
    central->train(*central_fs, baseline_options(cfg, derive_seed(cfg.seed, 0xce17)));
    const double central_acc = central->evaluate(*test_features).accuracy;
    // From scratch: the built-in CNN, randomly initialised, every layer trained on the pool.
    common::model::ModelSpec sspec = mspec;
    sspec.freeze = "none";
    auto scratch = TransferModel::create(common::model::builtin_cnn(mspec.input, derive_seed(cfg.seed, 0x5c7a)),
                                         sspec, cfg.seed);
    auto scratch_fs = scratch->features(pooled_set);
    auto scratch_test = scratch->features(data.target_test);
    scratch->train(*scratch_fs, baseline_options(cfg, derive_seed(cfg.seed, 0x5c7b)));
    const double scratch_acc = scratch->evaluate(*scratch_test).accuracy;
    summary["centralized_accuracy"] = central_acc;
    summary["local_only_mean_accuracy"] = local_mean;
    summary["scratch_accuracy"] = scratch_acc;
    summary["baseline_epochs"] = cfg.baselines.epochs;
    spdlog::info("baselines ({} epochs, {:.1f} s): centralised {:.2f}%, local-only mean {:.2f}%, from scratch {:.2f}%",
                 cfg.baselines.epochs, std::chrono::duration<double>(Clock::now() - tb).count(), 100 * central_acc,
                 100 * local_mean, 100 * scratch_acc);
    spdlog::info("federated vs centralised: {:+.2f} points; vs local-only mean: {:+.2f} points; transfer (centralised) vs scratch: {:+.2f} points",
                 100 * (final_eval.accuracy - central_acc), 100 * (final_eval.accuracy - local_mean),
                 100 * (central_acc - scratch_acc));
    lines = {{"centralised", central_acc}, {"local-only mean", local_mean}, {"from scratch", scratch_acc}};
  }
  summary["per_site"] = sites;
  const double seconds = std::chrono::duration<double>(Clock::now() - t_start).count();
  summary["seconds"] = seconds;
  common::write_accuracy_plot(cfg.out + "/accuracy.svg",
                              cfg.name + ": global test accuracy per round (" + std::to_string(n) + " sites, " +
                                  cfg.server.name + ")",
                              {{"federated (" + cfg.server.name + ")", curve}}, lines);
  common::write_file_atomic(cfg.out + "/summary.json", summary.dump(2) + "\n");
  spdlog::info("done in {:.1f} s; outputs in {}/ (metrics.jsonl, summary.json, model.pt, accuracy.svg)", seconds,
               cfg.out);
  return {final_eval.accuracy, digest, cfg.out};
}

}  // namespace fedtl::cli

#include "app/coordinator_job.h"

#include <spdlog/spdlog.h>

#include <filesystem>

#include "common/data/classes.h"
#include "common/errors.h"
#include "common/files.h"
#include "common/metrics.h"
#include "common/sha256.h"

namespace fedtl::app {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

class CoordinatorJob::Evaluator : public coordinator::Evaluator {
 public:
  Evaluator(common::model::TransferModel& model, const common::model::FeatureSet& test) : model_(model), test_(test) {}
  coordinator::RoundEval evaluate(const std::vector<float>& params) override {
    model_.set_params(params);
    const auto r = model_.evaluate(test_);
    const auto m = common::classification_metrics(r.labels, r.scores, static_cast<int64_t>(r.confusion.size()));
    coordinator::RoundEval ev;
    ev.accuracy = r.accuracy;
    ev.loss = r.loss;
    ev.balanced_accuracy = m.balanced_accuracy;
    if (m.macro_auc) ev.macro_auc = *m.macro_auc;
    return ev;
  }

 private:
  common::model::TransferModel& model_;
  const common::model::FeatureSet& test_;
};

CoordinatorJob::CoordinatorJob(const app::JobConfig& cfg, bool with_training) : cfg_(cfg), start_(Clock::now()) {
  common::model::set_torch_threads(static_cast<int>(cfg_.threads));
  (void)protocols::make_strategy(cfg_.server);  // validates [server] before any work
  const bool pretrains_here = cfg_.backbone.pretrain_if_missing && !std::filesystem::exists(cfg_.backbone.path);
  data_ = load_task_data(cfg_, with_training || pretrains_here);
  // Other sources than Fashion-MNIST: the classes come from the data (data.classes or the
  // names found), and the model, the JobSpec and the outputs follow them.
  cfg_ = with_resolved_classes(cfg_, data_);
  spdlog::info("classes: {}", common::join_names(data_.target_names));
  if (data_.target_train.size() > 0)
    spdlog::info("target task: {} classes, {} training and {} test images", cfg_.data.target_classes.size(),
                 data_.target_train.size(), data_.target_test.size());
  else
    spdlog::info("target task: {} classes, {} test images (the sites hold the training images)",
                 cfg_.data.target_classes.size(), data_.target_test.size());
  backbone_ = ensure_backbone(cfg_, data_);
  backbone_sha_ = common::sha256_hex(backbone_);
  model_ = common::model::TransferModel::create(backbone_, model_spec(cfg_), cfg_.seed);
  test_features_ = model_->features(data_.target_test);
  spdlog::info("model: {} trainable parameters ({} feature dims into a {} head); test features cached ({:.1f} MB)",
               model_->num_params(), model_->feature_dim(), common::model::to_string(cfg_.head.type), test_features_->bytes() / 1e6);
  evaluator_ = std::make_unique<Evaluator>(*model_, *test_features_);
}

CoordinatorJob::~CoordinatorJob() = default;

std::unique_ptr<coordinator::Coordinator> CoordinatorJob::make_coordinator(const std::vector<std::string>& names) {
  coordinator::CoordinatorOptions copt;
  copt.job = make_job_spec(cfg_, backbone_sha_, backbone_.size(), model_->layout(),
                           static_cast<uint32_t>(names.empty() ? cfg_.partition.sites : static_cast<int64_t>(names.size())));
  copt.backbone = backbone_;
  copt.min_sites = static_cast<size_t>(cfg_.min_sites);
  copt.round_timeout = seconds_to_ms(cfg_.round_timeout_s);
  copt.site_names = names;
  copt.liveness_timeout = seconds_to_ms(cfg_.liveness_timeout_s);
  copt.privacy.delta = cfg_.privacy.delta;
  copt.privacy.target_epsilon = cfg_.privacy.target_epsilon;
  copt.privacy.adaptive_clip = cfg_.privacy.adaptive_clip;
  copt.privacy.target_quantile = cfg_.privacy.target_quantile;
  copt.privacy.clip_learning_rate = cfg_.privacy.clip_learning_rate;
  copt.privacy.noise_secret = noise_secret_;
  copt.max_samples_per_site = static_cast<uint64_t>(cfg_.max_samples_per_site);
  copt.sample_count_cap = static_cast<uint64_t>(cfg_.secagg.weight_bound);
  copt.equal_weighting = cfg_.equal_weighting;
  copt.max_update_norm = cfg_.max_update_norm;
  copt.join_timeout = seconds_to_ms(cfg_.federation.join_timeout_s);
  copt.quorum_wait = seconds_to_ms(cfg_.quorum_wait_s);
  copt.handshake_timeout = seconds_to_ms(cfg_.federation.handshake_timeout_s);
  if (site_verifier_ && copt.job.secure_aggregation()) {
    copt.job.mutable_secagg()->set_signed_keys(true);
    copt.site_verifier = site_verifier_;
  }
  noise_multiplier_ = copt.job.privacy().noise_multiplier();
  // The job's identity for resuming: everything but the round count (a run may be extended).
  v1::JobSpec id = copt.job;
  id.set_rounds(0);
  fingerprint_ = common::sha256_hex(id.SerializeAsString());
  const std::string ckpt_path = cfg_.out + "/checkpoint.bin";
  std::vector<float> initial = model_->params();
  if (cfg_.resume) {
    namespace fs = std::filesystem;
    if (!fs::exists(ckpt_path) && !fs::exists(ckpt_path + ".prev")) {
      spdlog::warn("--resume: no checkpoint in {}/; starting from round 1", cfg_.out);
    } else {
      resume_ = common::read_latest_checkpoint(ckpt_path);
      if (resume_->job_fingerprint != fingerprint_)
        throw ConfigError("the checkpoint in " + cfg_.out + "/ belongs to another job (its settings differ); "
                          "use another --out or the original job file");
      initial = resume_->params;
      copt.resume = resume_;
    }
  }
  copt.checkpoint = [this, ckpt_path](const common::Checkpoint& c) {
    common::Checkpoint full = c;
    full.job_fingerprint = fingerprint_;
    full.metrics_lines = metrics_lines_;
    common::write_checkpoint(ckpt_path, full);
  };
  copt.stop_requested = stop_;
  return std::make_unique<coordinator::Coordinator>(copt, protocols::make_strategy(cfg_.server), *evaluator_,
                                                    initial);
}

JobOutcome CoordinatorJob::run(coordinator::Coordinator& coord, const std::string& transport) {
  std::filesystem::create_directories(cfg_.out);
  common::JsonlWriter metrics(cfg_.out + "/metrics.jsonl");
  JobOutcome o;
  metrics_lines_.clear();
  if (resume_) {  // the rounds already done, as the checkpoint recorded them
    for (const auto& l : resume_->metrics_lines) {
      const auto j = json::parse(l);
      metrics.write(j);
      metrics_lines_.push_back(l);
      o.curve.emplace_back(j["round"].get<double>(), j["accuracy"].get<double>());
      if (j.value("applied", true)) ++o.rounds_applied;
    }
  }
  const auto t_sites = Clock::now();
  o.result = coord.run([&](const coordinator::RoundRecord& r) {
    if (r.round == 1)
      spdlog::info("sites connected and ready in {:.2f} s",
                   std::chrono::duration<double>(Clock::now() - t_sites).count() - r.seconds);
    spdlog::info("round {:>3}/{}: accuracy {:.2f}%  loss {:.4f}  train loss {:.4f}  sites {}/{}  up {:.2f} MB  down {:.2f} MB  {:.2f} s",
                 r.round, cfg_.rounds, 100 * r.accuracy, r.loss, r.train_loss, r.sites_reported, r.sites_active,
                 r.bytes_up / 1e6, r.bytes_down / 1e6, r.seconds);
    json line = {{"round", r.round}, {"accuracy", r.accuracy}, {"loss", r.loss}, {"train_loss", r.train_loss},
                 {"sites_reported", r.sites_reported}, {"applied", r.applied}, {"bytes_up", r.bytes_up},
                 {"bytes_down", r.bytes_down}, {"seconds", r.seconds}, {"transport", transport},
                 {"secure_aggregation", cfg_.secagg.enabled.value_or(false)},
                 {"balanced_accuracy", r.balanced_accuracy}, {"macro_auc", r.macro_auc},
                 {"connection_replacements", r.connection_replacements}};
    if (cfg_.privacy.mode) {
      line["epsilon"] = r.epsilon;
      line["delta"] = cfg_.privacy.delta;
      line["clip_norm"] = r.clip_norm;
      spdlog::info("round {:>3}: privacy spent epsilon {:.3f} at delta {:g}", r.round, r.epsilon, cfg_.privacy.delta);
    }
    metrics.write(line);
    metrics_lines_.push_back(line.dump());
    if (r.applied) ++o.rounds_applied;
    o.curve.emplace_back(r.round, r.accuracy);
  });
  model_->set_params(o.result.params);
  o.final_eval = model_->evaluate(*test_features_);
  o.model_sha256 = model_->digest();
  model_->export_torchscript(cfg_.out + "/model.pt", data_.target_names);
  spdlog::info("federated model: accuracy {:.2f}% on {} test images; sha256 {}", 100 * o.final_eval.accuracy,
               o.final_eval.samples, o.model_sha256);
  spdlog::info("confusion matrix:\n{}", common::format_confusion(o.final_eval.confusion, data_.target_names));
  return o;
}

void CoordinatorJob::write_summary(const JobOutcome& o, const std::string& transport, const json& extra,
                                   const std::vector<common::PlotLine>& baselines) {
  json s;
  s["job"] = cfg_.name;
  s["sites"] = o.result.sites.size();
  s["rounds"] = cfg_.rounds;
  s["seed"] = cfg_.seed;
  s["strategy"] = cfg_.server.name;
  s["transport"] = transport;
  s["secure_aggregation"] = cfg_.secagg.enabled.value_or(false);
  s["federated_accuracy"] = o.final_eval.accuracy;
  s["federated_loss"] = o.final_eval.loss;
  s["centralized_accuracy"] = nullptr;
  s["local_only_mean_accuracy"] = nullptr;
  s["scratch_accuracy"] = nullptr;
  s["model_sha256"] = o.model_sha256;
  s["backbone_sha256"] = backbone_sha_;
  s["trainable_parameters"] = model_->num_params();
  s["confusion_matrix"] = o.final_eval.confusion;
  {
    // What a clinician reads: per class sensitivity, specificity, precision, F1 and ROC AUC.
    const auto m = common::classification_metrics(o.final_eval.labels, o.final_eval.scores,
                                                  static_cast<int64_t>(o.final_eval.confusion.size()));
    auto opt = [](const std::optional<double>& v) { return v ? json(*v) : json(nullptr); };
    json per_class = json::object();
    for (size_t c = 0; c < m.per_class.size(); ++c) {
      const auto& pc = m.per_class[c];
      const std::string name = c < data_.target_names.size() ? data_.target_names[c] : std::to_string(c);
      per_class[name] = {{"precision", pc.precision}, {"recall", pc.recall},       {"specificity", pc.specificity},
                         {"f1", pc.f1},               {"auc", opt(pc.auc)},       {"support", pc.support}};
    }
    s["test_metrics"] = {{"accuracy", m.accuracy},     {"balanced_accuracy", m.balanced_accuracy},
                         {"macro_f1", m.macro_f1},     {"macro_auc", opt(m.macro_auc)},
                         {"per_class", per_class}};
  }
  s["class_names"] = data_.target_names;
  s["handshake_bytes_down"] = o.result.handshake_bytes_down;
  uint64_t up = 0, down = 0;
  for (const auto& r : o.result.rounds) {
    up += r.bytes_up;
    down += r.bytes_down;
  }
  s["round_bytes_up"] = up;
  s["round_bytes_down"] = down;
  s["privacy"] = privacy_mode_name(cfg_.privacy.mode);
  if (cfg_.privacy.mode) {
    s["epsilon"] = o.result.epsilon;
    s["delta"] = cfg_.privacy.delta;
    s["noise_multiplier"] = noise_multiplier_;
    s["clip_norm"] = cfg_.privacy.clip_norm;
    s["sampling_rate"] = cfg_.privacy.sampling_rate;
    s["accountant"] = o.result.accountant_state;
  } else {
    s["epsilon"] = nullptr;  // no formal guarantee
    s["delta"] = nullptr;
  }
  s["rounds_completed"] = o.curve.size();
  s["rounds_applied"] = o.rounds_applied;  // resumed rounds included
  size_t abandoned = 0;
  for (const auto& r : o.result.rounds) abandoned += r.applied ? 0 : 1;
  s["rounds_abandoned"] = abandoned;  // in this run
  s["quorum_lost"] = o.result.quorum_lost;
  s["interrupted"] = o.result.interrupted;
  if (!o.result.stop_reason.empty()) s["stop_reason"] = o.result.stop_reason;
  for (const auto& [k, v] : extra.items()) s[k] = v;
  s["seconds"] = std::chrono::duration<double>(Clock::now() - start_).count();
  common::write_accuracy_plot(cfg_.out + "/accuracy.svg",
                              cfg_.name + ": global test accuracy per round (" + std::to_string(o.result.sites.size()) +
                                  " sites, " + cfg_.server.name + ", " + transport + ")",
                              {{"federated (" + cfg_.server.name + ")", o.curve}}, baselines);
  common::write_file_atomic(cfg_.out + "/summary.json", s.dump(2) + "\n");
  spdlog::info("done in {:.1f} s; outputs in {}/ (metrics.jsonl, summary.json, model.pt, accuracy.svg)",
               s["seconds"].get<double>(), cfg_.out);
}

}  // namespace fedtl::app

#include "app/coordinator_job.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>

#include "common/data/classes.h"
#include "common/data/input_stats.h"
#include "common/errors.h"
#include "common/files.h"
#include "common/metrics.h"
#include "common/sha256.h"
#include "protocols/messages.h"

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

namespace {
// A previous run's outputs in `out` are kept unless the job resumes them or --force says so.
void check_out_dir(const app::JobConfig& cfg) {
  if (cfg.resume || cfg.force) return;
  for (const char* f : {"summary.json", "metrics.jsonl", "checkpoint.bin", "model.pt"})
    if (std::filesystem::exists(std::filesystem::path(cfg.out) / f))
      throw ConfigError("'" + cfg.out + "' holds a previous run (" + f +
                        "); use --resume to continue it, --force to overwrite it, or another --out");
}
}  // namespace

CoordinatorJob::CoordinatorJob(const app::JobConfig& cfg, bool with_training) : cfg_(cfg), start_(Clock::now()) {
  check_out_dir(cfg_);
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
  {
    std::string children;
    int64_t in_children = 0;
    for (const auto& c : model_->trainable_children()) {
      children += (children.empty() ? "" : ", ") + c.name + " (" + std::to_string(c.params) + " parameters)";
      in_children += c.params;
    }
    spdlog::info("backbone children that train: {}; head {} parameters; train.backbone_lr {:g}, warm-up {} rounds, "
                 "unfreeze every {} rounds",
                 children.empty() ? std::string("none") : children,
                 model_->num_params() - in_children, cfg_.train.backbone_lr.value_or(cfg_.train.lr / 10),
                 cfg_.backbone.warmup_rounds, cfg_.backbone.unfreeze_every);
  }
  test_features_ = model_->features(data_.target_test);
  spdlog::info("model: {} trainable parameters ({} feature dims into a {} head); test features cached ({:.1f} MB)",
               model_->num_params(), model_->feature_dim(), common::model::to_string(cfg_.head.type), test_features_->bytes() / 1e6);
  evaluator_ = std::make_unique<Evaluator>(*model_, *test_features_);
}

CoordinatorJob::~CoordinatorJob() = default;

uint16_t CoordinatorJob::serve_status(const std::string& transport) {
  if (cfg_.status_port <= 0) return 0;
  StatusJobInfo info;
  info.name = cfg_.name;
  info.transport = transport;
  info.strategy = cfg_.server.name;
  info.rounds_planned = static_cast<uint32_t>(cfg_.rounds);
  info.secure_aggregation = cfg_.secagg.enabled.value_or(false);
  info.differential_privacy = cfg_.privacy.mode.has_value();
  status_ = std::make_unique<StatusBoard>(info);
  status_->set_phase("waiting for sites");
  status_server_ = app::serve_status(*status_, cfg_.status_address, static_cast<uint16_t>(cfg_.status_port));
  spdlog::info("status page on http://{}:{}/ (JSON at /status, Prometheus metrics at /metrics)",
               cfg_.status_address, status_server_->port());
  return status_server_->port();
}

std::unique_ptr<coordinator::Coordinator> CoordinatorJob::make_coordinator(const std::vector<std::string>& names) {
  coordinator::CoordinatorOptions copt;
  copt.job = make_job_spec(cfg_, backbone_sha_, backbone_.size(), model_->layout(),
                           static_cast<uint32_t>(names.empty() ? cfg_.partition.sites : static_cast<int64_t>(names.size())));
  copt.backbone = backbone_;
  copt.min_sites = static_cast<size_t>(cfg_.min_sites);
  {
    const auto n = static_cast<uint32_t>(names.empty() ? cfg_.partition.sites : static_cast<int64_t>(names.size()));
    copt.sites_per_round = sites_per_round_count(cfg_, n);
    if (copt.sites_per_round > 0 && copt.sites_per_round < copt.min_sites)
      throw ConfigError("job.sites_per_round samples " + std::to_string(copt.sites_per_round) +
                        " sites a round, fewer than job.min_sites = " + std::to_string(copt.min_sites) +
                        ": every round would be abandoned");
    if (copt.sites_per_round > 0)
      spdlog::info("each round samples {} of the {} sites (job.sites_per_round)", copt.sites_per_round, n);
  }
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
  if (status_) copt.on_sites = [b = status_.get()](const std::vector<coordinator::SiteInfo>& s) { b->update_sites(s); };
  copt.early_stopping_patience = static_cast<uint32_t>(cfg_.early_stopping_patience);
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
      if (j.contains("validation_accuracy") && j["validation_accuracy"].is_number())
        o.validation_curve.emplace_back(j["round"].get<double>(), j["validation_accuracy"].get<double>());
      if (j.contains("phase") && (o.phase_changes.empty() || o.phase_changes.back().second != j["phase"]))
        o.phase_changes.emplace_back(j["round"].get<double>(), j["phase"].get<std::string>());
    }
  }
  const auto t_sites = Clock::now();
  if (status_) status_->set_phase("training");
  o.result = coord.run([&](const coordinator::RoundRecord& r) {
    if (status_) status_->add_round(r);
    if (r.round == 1)
      spdlog::info("sites connected and ready in {:.2f} s",
                   std::chrono::duration<double>(Clock::now() - t_sites).count() - r.seconds);
    spdlog::info("round {:>3}/{}: accuracy {:.2f}%  loss {:.4f}  train loss {:.4f}  validation loss {:.4f}  {} ({} "
                 "trained)  sites {}/{}  up {:.2f} MB  down {:.2f} MB  {:.2f} s",
                 r.round, cfg_.rounds, 100 * r.accuracy, r.loss, r.train_loss, r.validation_loss, r.phase,
                 r.trainable_params, r.sites_reported, r.sites_active, r.bytes_up / 1e6, r.bytes_down / 1e6, r.seconds);
    json line = {{"round", r.round}, {"accuracy", r.accuracy}, {"loss", r.loss}, {"train_loss", r.train_loss},
                 {"sites_reported", r.sites_reported}, {"applied", r.applied}, {"bytes_up", r.bytes_up},
                 {"bytes_down", r.bytes_down}, {"seconds", r.seconds}, {"transport", transport},
                 {"secure_aggregation", cfg_.secagg.enabled.value_or(false)},
                 {"balanced_accuracy", r.balanced_accuracy}, {"macro_auc", r.macro_auc},
                 {"connection_replacements", r.connection_replacements},
                 {"train_accuracy", r.train_accuracy},
                 {"validation_loss", r.validation_loss}, {"validation_accuracy", r.validation_accuracy},
                 {"validation_samples", r.validation_samples},
                 {"trainable_params", r.trainable_params}, {"phase", r.phase}};
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
    if (std::isfinite(r.validation_accuracy)) o.validation_curve.emplace_back(r.round, r.validation_accuracy);
    if (o.phase_changes.empty() || o.phase_changes.back().second != r.phase) o.phase_changes.emplace_back(r.round, r.phase);
  });
  if (status_) status_->set_phase(o.result.stop_reason.empty() ? "finished" : "stopped: " + o.result.stop_reason);
  o.best_round = o.result.best_round;
  o.stopped_early = o.result.stopped_early;
  model_->set_params(o.result.params);
  o.model_last_sha256 = model_->digest();
  const bool best_differs = cfg_.keep_best && !o.result.best_params.empty() && o.result.best_params != o.result.params;
  if (best_differs) {
    model_->export_torchscript(cfg_.out + "/model_last.pt");
    model_->set_params(o.result.best_params);
    spdlog::info("keeping the model of round {} (validation loss {:.4f}) as model.pt; the last round's is model_last.pt",
                 o.best_round, o.result.best_validation_loss);
  } else if (cfg_.keep_best && o.best_round > 0) {
    model_->export_torchscript(cfg_.out + "/model_last.pt");  // the best is the last
  }
  o.final_eval = model_->evaluate(*test_features_);
  o.model_sha256 = model_->digest();
  model_->export_torchscript(cfg_.out + "/model.pt", data_.target_names);
  spdlog::info("federated model: accuracy {:.2f}% on {} test images; sha256 {}", 100 * o.final_eval.accuracy,
               o.final_eval.samples, o.model_sha256);
  spdlog::info("confusion matrix:\n{}", common::format_confusion(o.final_eval.confusion, data_.target_names));
  return o;
}

namespace {

// The test curve, and the validation curve when the job validates.
std::vector<common::PlotSeries> plot_series(const JobOutcome& o) {
  std::vector<common::PlotSeries> series{{"federated (test)", o.curve}};
  if (!o.validation_curve.empty()) series.push_back({"federated validation", o.validation_curve});
  return series;
}

// The best round and the schedule's phase changes.
std::vector<common::PlotMark> plot_marks(const JobOutcome& o) {
  std::vector<common::PlotMark> marks;
  for (size_t i = 1; i < o.phase_changes.size(); ++i)
    marks.push_back({"phase: " + o.phase_changes[i].second, o.phase_changes[i].first});
  if (o.best_round > 0) marks.push_back({"best round " + std::to_string(o.best_round), static_cast<double>(o.best_round)});
  return marks;
}

}  // namespace

namespace {
// The summary's per_site entry of the site named `name`, or nullptr.
json* per_site_entry(json& s, const std::string& name) {
  if (!s.contains("per_site") || !s["per_site"].is_array()) return nullptr;
  for (auto& entry : s["per_site"])
    if (entry.is_object() && entry.value("site", std::string()) == name) return &entry;
  return nullptr;
}

// summary.json's form of classification metrics (test_metrics, a site's validation_metrics).
json metrics_json(const common::ClassificationMetrics& m, const std::vector<std::string>& names) {
  auto opt = [](const std::optional<double>& v) { return v ? json(*v) : json(nullptr); };
  json per_class = json::object();
  for (size_t c = 0; c < m.per_class.size(); ++c) {
    const auto& pc = m.per_class[c];
    const std::string name = c < names.size() ? names[c] : std::to_string(c);
    per_class[name] = {{"precision", pc.precision}, {"recall", pc.recall}, {"specificity", pc.specificity},
                       {"f1", pc.f1},               {"auc", opt(pc.auc)},  {"support", pc.support}};
  }
  return {{"accuracy", m.accuracy},
          {"balanced_accuracy", m.balanced_accuracy},
          {"macro_f1", m.macro_f1},
          {"macro_auc", opt(m.macro_auc)},
          {"per_class", per_class}};
}
}  // namespace

void CoordinatorJob::add_site_evaluations(const JobOutcome& o, json& s) const {
  // Each site's own figures of the final model (SiteEvaluation; checked: a site's claim) go
  // into its per_site entry; their means beside each other; a line per site in the log.
  const auto k = static_cast<int64_t>(o.final_eval.confusion.size());
  double fed_sum = 0, pers_sum = 0;
  size_t fed_n = 0, pers_n = 0;
  std::string table;
  for (const auto& site : o.result.sites) {
    if (!site.evaluated) continue;
    const auto g = protocols::site_metrics_from_wire(site.evaluation.global(), k);
    if (!g) {
      spdlog::warn("site '{}' sent impossible validation metrics; left out", site.name);
      continue;
    }
    json add = {{"validation_metrics", metrics_json(g->metrics, data_.target_names)}};
    add["validation_metrics"]["images"] = g->images;
    fed_sum += g->metrics.accuracy;
    ++fed_n;
    std::string personalised = "-";
    if (site.evaluation.personalize_epochs() > 0) {
      if (const auto p = protocols::site_metrics_from_wire(site.evaluation.personalized(), k)) {
        add["personalized_validation_metrics"] = metrics_json(p->metrics, data_.target_names);
        add["personalized_validation_metrics"]["images"] = p->images;
        add["personalize_epochs"] = site.evaluation.personalize_epochs();
        pers_sum += p->metrics.accuracy;
        ++pers_n;
        personalised = fmt::format("{:.2f}%", 100 * p->metrics.accuracy);
      }
    }
    if (json* entry = per_site_entry(s, site.name)) entry->update(add);
    table += fmt::format("{:<12}  {:>6}  {:>12.2f}%  {:>13}  {:>9}\n", site.name, g->images, 100 * g->metrics.accuracy,
                         personalised,
                         g->metrics.macro_auc ? fmt::format("{:.3f}", *g->metrics.macro_auc) : std::string("-"));
  }
  s["federated_site_mean_accuracy"] = fed_n ? json(fed_sum / static_cast<double>(fed_n)) : json(nullptr);
  s["personalized_mean_accuracy"] = pers_n ? json(pers_sum / static_cast<double>(pers_n)) : json(nullptr);
  if (fed_n == 0) return;
  spdlog::info("each site's own validation split (the images it held out): accuracy of the final global model{}, "
               "and its macro ROC AUC:\nsite          images     federated   personalised  macro AUC\n{}mean of {} "
               "sites: federated {:.2f}%{}",
               pers_n ? fmt::format(", then after {} epochs of head fine-tuning at the site (personalised)",
                                    cfg_.evaluation.personalize_epochs)
                      : std::string(),
               table, fed_n, 100 * fed_sum / static_cast<double>(fed_n),
               pers_n ? fmt::format(", personalised {:.2f}%", 100 * pers_sum / static_cast<double>(pers_n)) : "");
}

void CoordinatorJob::add_domain_gap(const JobOutcome& o, json& s) const {
  // Each site's figures from its Ready (checked: a site's claim) go into its per_site entry;
  // a site whose figures show a domain gap gets one warning, logged here once.
  json warnings = s.contains("warnings") ? s["warnings"] : json::array();
  const auto& bb = cfg_.backbone;
  for (const auto& site : o.result.sites) {
    const auto st = protocols::input_stats_from_wire(site.input_stats, bb.channels);
    if (!st) continue;
    const json js = {{"images", st->images},
                     {"channels_as_stored", {{"grey", st->grey}, {"colour", st->colour}}},
                     {"height_as_stored", {st->min_height, st->max_height}},
                     {"width_as_stored", {st->min_width, st->max_width}},
                     {"backbone_input", {bb.channels, bb.height, bb.width}},
                     {"mean", st->mean},
                     {"std", st->std}};
    if (json* entry = per_site_entry(s, site.name)) (*entry)["input_stats"] = js;
    const auto findings = common::domain_gap_findings(*st, bb.channels, bb.height, bb.width);
    if (findings.empty()) continue;
    std::string msg = "domain gap at site '" + site.name + "': ";
    for (size_t i = 0; i < findings.size(); ++i) msg += (i ? "; " : "") + findings[i];
    msg += ". The backbone may transfer poorly: compare with the federated-from-scratch baseline (--baselines), "
           "unfreeze more blocks, or choose a backbone trained on images like these";
    if (cfg_.baseline_run)
      spdlog::debug("{}", msg);
    else
      spdlog::warn("{}", msg);
    warnings.push_back({{"code", "domain_gap"}, {"site", site.name}, {"message", msg}});
  }
  s["warnings"] = warnings;
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
  s["model_last_sha256"] = o.model_last_sha256;
  s["best_round"] = o.best_round > 0 ? json(o.best_round) : json(nullptr);
  s["stopped_early"] = o.stopped_early;
  s["rounds_run"] = o.curve.size();
  s["validation_fraction"] = cfg_.data.validation_fraction;
  s["keep_best"] = cfg_.keep_best;
  s["backbone_sha256"] = backbone_sha_;
  s["trainable_parameters"] = model_->num_params();
  s["confusion_matrix"] = o.final_eval.confusion;
  // What a clinician reads: per class sensitivity, specificity, precision, F1 and ROC AUC.
  s["test_metrics"] = metrics_json(common::classification_metrics(o.final_eval.labels, o.final_eval.scores,
                                                                  static_cast<int64_t>(o.final_eval.confusion.size())),
                                   data_.target_names);
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
  add_domain_gap(o, s);
  add_site_evaluations(o, s);
  s["seconds"] = std::chrono::duration<double>(Clock::now() - start_).count();
  common::write_accuracy_plot(cfg_.out + "/accuracy.svg",
                              cfg_.name + ": global test accuracy per round (" + std::to_string(o.result.sites.size()) +
                                  " sites, " + cfg_.server.name + ", " + transport + ")",
                              plot_series(o), baselines, plot_marks(o));
  common::write_file_atomic(cfg_.out + "/summary.json", s.dump(2) + "\n");
  spdlog::info("done in {:.1f} s; outputs in {}/ (metrics.jsonl, summary.json, model.pt, accuracy.svg)",
               s["seconds"].get<double>(), cfg_.out);
}

}  // namespace fedtl::app

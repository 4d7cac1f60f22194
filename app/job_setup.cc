#include "app/job_setup.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <set>

#include "common/data/classes.h"
#include "common/data/datasets.h"
#include "common/data/input_stats.h"
#include "common/data/partition.h"
#include "common/data/validation_split.h"
#include "common/errors.h"
#include "common/seeds.h"
#include "common/files.h"
#include "common/metrics.h"
#include "common/sha256.h"
#include "protocols/dp/accountant.h"
#include "protocols/job_check.h"
#include "protocols/messages.h"
#include "protocols/schedule.h"
#include "protocols/secure_round.h"

namespace fedtl::app {
namespace fs = std::filesystem;

namespace {

const std::vector<std::string>& fashion_mnist_names() {
  static const std::vector<std::string> names = {"T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",  "Shirt",   "Sneaker",  "Bag",   "Boot"};
  return names;
}

// The union of the classes present in the sets, sorted by name.
std::vector<std::string> found_classes(const std::vector<const common::ImageSet*>& sets) {
  std::set<std::string> names;
  for (const auto* s : sets)
    for (const auto& n : common::classes_present(*s)) names.insert(n);
  return {names.begin(), names.end()};
}

}  // namespace

common::SourceSpec source_spec(const JobConfig& cfg, const std::string& dir, bool with_manifest) {
  common::SourceSpec s;
  s.kind = cfg.data.source == DataSource::kDicom ? common::SourceKind::kDicom : common::SourceKind::kFolder;
  s.dir = dir;
  const auto& im = cfg.data.images;
  if (with_manifest) s.labels = im.labels;
  s.label_tag = im.label_tag;
  s.read.channels = cfg.backbone.channels;
  s.read.height = cfg.backbone.height;
  s.read.width = cfg.backbone.width;
  s.read.max_image_pixels = im.max_image_pixels;
  s.read.on_bad_file = im.on_bad_file;
  if (im.window.size() == 2) s.window = std::array<double, 2>{im.window[0], im.window[1]};
  s.frame = im.frame;
  return s;
}

TaskData load_task_data(const app::JobConfig& cfg, bool with_training) {
  TaskData d;
  common::ImageSet train, test;
  if (cfg.data.source == DataSource::kFashionMnist) {
    const std::string dir = cfg.data.dir.empty() ? common::kFashionMnistDir : cfg.data.dir;
    if (with_training) train = common::read_fashion_mnist("train", dir);
    test = common::read_fashion_mnist("t10k", dir);
    d.class_list = fashion_mnist_names();
    d.source_classes = cfg.data.source_classes;
    d.target_classes = cfg.data.target_classes;
  } else {
    const char* src = cfg.data.source == DataSource::kDicom ? "dicom" : "folder";
    const bool split_in_manifest = !cfg.data.dir.empty() && source_has_split(source_spec(cfg, cfg.data.dir, true));
    if (!cfg.data.test_dir.empty()) {
      common::SourceSpec test_spec = source_spec(cfg, cfg.data.test_dir, false);
      test_spec.labels = cfg.data.test_labels;
      test = common::read_source(test_spec, common::Split::kNone);
      if (with_training) {
        if (cfg.data.dir.empty()) throw ConfigError(std::string("data.dir is required when data.source = \"") + src + "\"");
        train = common::read_source(source_spec(cfg, cfg.data.dir, true), common::Split::kTrain);
      }
    } else if (split_in_manifest) {
      test = common::read_source(source_spec(cfg, cfg.data.dir, true), common::Split::kTest);
      if (with_training) train = common::read_source(source_spec(cfg, cfg.data.dir, true), common::Split::kTrain);
    } else if (cfg.data.test_fraction > 0) {
      if (cfg.data.dir.empty()) throw ConfigError(std::string("data.dir is required when data.source = \"") + src + "\"");
      const common::ImageSet all = common::read_source(source_spec(cfg, cfg.data.dir, true));
      // Patient-level when patient ids are known: no patient on both sides.
      const auto split = common::split_by_group(all.labels, all.groups, cfg.data.test_fraction,
                                                common::derive_seed(cfg.seed, common::seed_stream::kPartition, 1));
      if (split.held_out.empty()) throw DataError(cfg.data.dir + ": data.test_fraction leaves no test image");
      test = all.subset(split.held_out);
      if (with_training) train = all.subset(split.kept);
    } else {
      throw ConfigError(std::string("data.test_dir is required when data.source = \"") + src +
                        "\" (or a split column in data.labels, or data.test_fraction > 0)");
    }
    d.class_list = cfg.data.classes.empty() ? found_classes({&train, &test}) : cfg.data.classes;
    const std::string train_where = cfg.data.dir.empty() ? "data.dir" : cfg.data.dir;
    const std::string test_where = cfg.data.test_dir.empty() ? train_where + " (test split)" : cfg.data.test_dir;
    if (with_training) common::bind_classes(train, d.class_list, cfg.data.images.missing_classes, train_where);
    common::bind_classes(test, d.class_list, cfg.data.images.missing_classes, test_where);
    d.source_classes = cfg.data.source_classes;
    d.target_classes = cfg.data.target_classes;
    if (d.target_classes.empty()) {
      const std::set<int64_t> src_set(d.source_classes.begin(), d.source_classes.end());
      for (int64_t k = 0; k < static_cast<int64_t>(d.class_list.size()); ++k)
        if (!src_set.count(k)) d.target_classes.push_back(k);
    }
  }
  const auto num_classes = static_cast<int64_t>(d.class_list.size());
  for (int64_t k : d.target_classes)
    if (k < 0 || k >= num_classes)
      throw ConfigError("data.target_classes: class " + std::to_string(k) + " does not exist (the data has " +
                        std::to_string(num_classes) + ": " + common::join_names(d.class_list) + ")");
  for (int64_t k : d.source_classes)
    if (k < 0 || k >= num_classes)
      throw ConfigError("data.source_classes: class " + std::to_string(k) + " does not exist (the data has " +
                        std::to_string(num_classes) + ": " + common::join_names(d.class_list) + ")");
  if (d.target_classes.size() < 2)
    throw ConfigError("the job needs at least 2 target classes; the data has " + common::join_names(d.class_list));
  train.class_names = d.class_list;
  test.class_names = d.class_list;
  if (with_training) d.target_train = train.select_classes(d.target_classes);
  d.target_test = test.select_classes(d.target_classes);
  if (with_training && !d.source_classes.empty()) {
    d.source_train = train.select_classes(d.source_classes);
    d.source_test = test.select_classes(d.source_classes);
  }
  for (int64_t k : d.target_classes) d.target_names.push_back(d.class_list[static_cast<size_t>(k)]);
  if ((with_training && d.target_train.size() == 0) || d.target_test.size() == 0)
    throw DataError("no training or test images of the target classes");
  return d;
}

JobConfig with_resolved_classes(JobConfig cfg, const TaskData& data) {
  if (cfg.data.source == DataSource::kFashionMnist) return cfg;
  cfg.data.classes = data.class_list;
  cfg.data.source_classes = data.source_classes;
  cfg.data.target_classes = data.target_classes;
  return cfg;
}

std::vector<std::string> target_class_names(const JobConfig& cfg) {
  const auto& list = cfg.data.source == DataSource::kFashionMnist ? fashion_mnist_names() : cfg.data.classes;
  std::vector<std::string> out;
  for (int64_t k : cfg.data.target_classes)
    out.push_back(k >= 0 && static_cast<size_t>(k) < list.size() ? list[static_cast<size_t>(k)] : std::to_string(k));
  return out;
}

common::model::InputSpec input_spec(const app::JobConfig& cfg) {
  common::model::InputSpec in;
  in.channels = cfg.backbone.channels;
  in.height = cfg.backbone.height;
  in.width = cfg.backbone.width;
  in.mean = cfg.backbone.mean;
  in.std = cfg.backbone.std;
  return in;
}

namespace {

namespace model = common::model;

// A job value narrowed to the wire's uint32, checked in that type: validate() bounds every key
// far below 2^32, and a config changed after validation is refused here, never wrapped.
uint32_t u32(const char* key, int64_t v) {
  if (v < 0 || v > static_cast<int64_t>(std::numeric_limits<uint32_t>::max()))
    throw ConfigError(std::string(key) + " = " + std::to_string(v) + " does not fit the protocol's 32 bits");
  return static_cast<uint32_t>(v);
}

// The one translation of each vocabulary between the model layer and the wire.
v1::Freeze to_wire(model::Freeze f) {
  switch (f) {
    case model::Freeze::kAll: return v1::FREEZE_ALL;
    case model::Freeze::kAllButLast: return v1::FREEZE_ALL_BUT_LAST;
    case model::Freeze::kNone: return v1::FREEZE_NONE;
  }
  return v1::FREEZE_UNSPECIFIED;
}
v1::HeadType to_wire(model::HeadType h) { return h == model::HeadType::kMlp ? v1::HEAD_MLP : v1::HEAD_LINEAR; }
v1::Optimizer to_wire(model::Optimizer o) { return o == model::Optimizer::kAdam ? v1::OPTIMIZER_ADAM : v1::OPTIMIZER_SGD; }

model::Freeze from_wire(v1::Freeze f) {
  switch (f) {
    case v1::FREEZE_ALL: return model::Freeze::kAll;
    case v1::FREEZE_ALL_BUT_LAST: return model::Freeze::kAllButLast;
    case v1::FREEZE_NONE: return model::Freeze::kNone;
    default: throw ProtocolError("model.freeze " + std::to_string(f) + " is not one this build knows");
  }
}
model::HeadType from_wire(v1::HeadType h) {
  switch (h) {
    case v1::HEAD_LINEAR: return model::HeadType::kLinear;
    case v1::HEAD_MLP: return model::HeadType::kMlp;
    default: throw ProtocolError("model.head " + std::to_string(h) + " is not one this build knows");
  }
}
model::Optimizer from_wire(v1::Optimizer o) {
  switch (o) {
    case v1::OPTIMIZER_SGD: return model::Optimizer::kSgd;
    case v1::OPTIMIZER_ADAM: return model::Optimizer::kAdam;
    default: throw ProtocolError("training.optimizer " + std::to_string(o) + " is not one this build knows");
  }
}

}  // namespace

v1::ModelSpec wire_model_spec(const app::JobConfig& cfg) {
  v1::ModelSpec m;
  m.set_head(to_wire(cfg.head.type));
  m.set_hidden(u32("head.hidden", cfg.head.hidden));
  m.set_num_classes(u32("data.target_classes", static_cast<int64_t>(cfg.data.target_classes.size())));
  m.set_freeze(to_wire(cfg.backbone.freeze));
  m.set_unfrozen(u32("backbone.unfrozen", cfg.backbone.unfrozen));
  m.set_warmup_rounds(u32("backbone.warmup_rounds", cfg.backbone.warmup_rounds));
  m.set_unfreeze_every(u32("backbone.unfreeze_every", cfg.backbone.unfreeze_every));
  m.set_in_channels(u32("backbone.channels", cfg.backbone.channels));
  m.set_in_height(u32("backbone.height", cfg.backbone.height));
  m.set_in_width(u32("backbone.width", cfg.backbone.width));
  for (double v : cfg.backbone.mean) m.add_mean(v);
  for (double v : cfg.backbone.std) m.add_std(v);
  return m;
}

v1::TrainingSpec wire_training_spec(const app::JobConfig& cfg) {
  v1::TrainingSpec t;
  t.set_optimizer(to_wire(cfg.train.optimizer));
  t.set_lr(cfg.train.lr);
  t.set_momentum(cfg.train.momentum);
  t.set_weight_decay(cfg.train.weight_decay);
  t.set_epochs(u32("train.epochs", cfg.train.epochs));
  t.set_batch_size(u32("train.batch_size", cfg.train.batch_size));
  t.set_prox_mu(cfg.server.name == "fedprox" ? cfg.server.prox_mu : 0.0);
  t.set_backbone_lr(cfg.train.backbone_lr.value_or(cfg.train.lr / 10));
  t.set_validation_fraction(cfg.data.validation_fraction);
  t.set_personalize_epochs(static_cast<uint32_t>(cfg.evaluation.personalize_epochs));
  return t;
}

common::model::ModelSpec model_spec(const app::JobConfig& cfg) {
  common::model::ModelSpec m = model_spec(wire_model_spec(cfg));
  m.max_backbone_bytes = static_cast<uint64_t>(cfg.backbone.max_bytes);
  return m;
}

common::model::ModelSpec model_spec(const v1::ModelSpec& w) {
  common::model::ModelSpec m;
  m.input.channels = w.in_channels();
  m.input.height = w.in_height();
  m.input.width = w.in_width();
  m.input.mean.assign(w.mean().begin(), w.mean().end());
  m.input.std.assign(w.std().begin(), w.std().end());
  m.freeze = from_wire(w.freeze());
  m.unfrozen = w.unfrozen();
  m.head = from_wire(w.head());
  m.hidden = w.hidden();
  m.num_classes = w.num_classes();
  return m;
}

std::string pretrain_backbone(const app::JobConfig& cfg, const TaskData& data) {
  if (data.source_train.size() == 0) throw ConfigError("pre-training needs data.source_classes with images");
  common::model::PretrainOptions opt;
  opt.epochs = cfg.pretrain.epochs;
  opt.batch_size = cfg.pretrain.batch_size;
  opt.lr = cfg.pretrain.lr;
  opt.seed = common::derive_seed(cfg.seed, common::seed_stream::kPretrain);
  opt.on_epoch = [&](int64_t e, double loss, double acc) {
    spdlog::info("pretrain epoch {}/{}: loss {:.4f}, source-test accuracy {:.2f}%", e, opt.epochs, loss, 100 * acc);
  };
  spdlog::info("pre-training the built-in CNN on {} source images ({} classes), {} epochs", data.source_train.size(),
               cfg.data.source_classes.size(), opt.epochs);
  return common::model::pretrain_builtin_cnn(data.source_train, data.source_test, input_spec(cfg), opt);
}

std::string ensure_backbone(const app::JobConfig& cfg, const TaskData& data) {
  auto pinned = [&](const std::string& bytes) {
    const std::string sha = common::sha256_hex(bytes);
    if (!cfg.backbone.sha256.empty() && sha != cfg.backbone.sha256)
      throw ConfigError("backbone file '" + cfg.backbone.path + "' has sha256 " + sha + ", but backbone.sha256 pins " +
                        cfg.backbone.sha256 + ": refusing a backbone that changed");
    return sha;
  };
  if (fs::exists(cfg.backbone.path)) {
    const auto size = fs::file_size(cfg.backbone.path);
    if (size > static_cast<uint64_t>(cfg.backbone.max_bytes))
      throw ConfigError("backbone file '" + cfg.backbone.path + "' is " + std::to_string(size) +
                        " bytes, above backbone.max_bytes (" + std::to_string(cfg.backbone.max_bytes) + ")");
    std::string bytes = common::read_file(cfg.backbone.path);
    const std::string sha = pinned(bytes);
    spdlog::info("backbone {} ({} bytes, sha256 {}{})", cfg.backbone.path, bytes.size(), sha,
                 cfg.backbone.sha256.empty() ? "" : ", as pinned by backbone.sha256");
    return bytes;
  }
  if (!cfg.backbone.pretrain_if_missing)
    throw ConfigError("backbone file '" + cfg.backbone.path + "' not found (run `fedtl pretrain` or set backbone.pretrain_if_missing)");
  std::string bytes = pretrain_backbone(cfg, data);
  const std::string sha = pinned(bytes);
  common::write_file_atomic(cfg.backbone.path, bytes);
  spdlog::info("saved backbone to {} (pin it with backbone.sha256 = \"{}\")", cfg.backbone.path, sha);
  return bytes;
}

v1::JobSpec make_job_spec(const app::JobConfig& cfg, const std::string& sha, uint64_t nbytes,
                          const std::vector<common::model::ParamInfo>& layout, uint32_t num_sites) {
  v1::JobSpec j;
  j.set_job_name(cfg.name);
  j.set_seed(cfg.seed);
  j.set_rounds(u32("job.rounds", cfg.rounds));
  j.set_backbone_sha256(sha);
  j.set_backbone_bytes(nbytes);
  *j.mutable_model() = wire_model_spec(cfg);
  *j.mutable_training() = wire_training_spec(cfg);
  for (const auto& p : layout) {
    auto* e = j.mutable_layout()->add_entries();
    e->set_name(p.name);
    for (int64_t s : p.shape) e->add_shape(s);
  }
  for (int64_t k : cfg.data.target_classes) j.add_target_classes(k);
  // The classes by name, in model output order: a site binds its labels to these.
  for (const auto& n : target_class_names(cfg)) j.add_class_names(n);
  j.set_min_sites(u32("job.min_sites", cfg.min_sites));
  if (cfg.privacy.mode) {
    auto* pv = j.mutable_privacy();
    pv->set_mode(protocols::to_wire(cfg.privacy.mode));
    // Site sampling: privacy.sampling_rate (each site by a coin), or job.sites_per_round (k of
    // the N sites, q = k / N: the accountant's Poisson analysis is the usual stand-in for
    // sampling a fixed number without replacement).
    const uint32_t per_round = sites_per_round_count(cfg, num_sites);
    const double q = per_round > 0 ? static_cast<double>(per_round) / num_sites : cfg.privacy.sampling_rate;
    double sigma = cfg.privacy.noise_multiplier;
    if (sigma <= 0)  // calibrate: the smallest sigma that keeps epsilon within target over the job
      sigma = protocols::dp::noise_multiplier(cfg.privacy.target_epsilon, q, cfg.rounds, cfg.privacy.delta);
    pv->set_noise_multiplier(sigma);
    pv->set_clip_norm(cfg.privacy.clip_norm);
    pv->set_sampling_rate(q);
    pv->set_expected_sites(per_round > 0 ? per_round
                                         : std::max<uint32_t>(1, static_cast<uint32_t>(std::lround(q * num_sites))));
    if (cfg.privacy.mode == protocols::dp::NoiseMode::kDistributed && !cfg.secagg.enabled.value_or(false))
      throw ConfigError("privacy.mode = \"distributed\" needs secure aggregation (the coordinator must never see an "
                        "un-noised sum of fewer than all shares); set [secure_aggregation] enabled = true");
    if (cfg.privacy.adaptive_clip && cfg.secagg.enabled.value_or(false))
      throw ConfigError("privacy.adaptive_clip is not available with secure aggregation yet (the clip indicator "
                        "would travel in the clear)");
  }
  const bool secure = cfg.secagg.enabled.value_or(false);
  j.set_secure_aggregation(secure);
  if (secure) {
    auto* sa = j.mutable_secagg();
    sa->set_num_sites(num_sites);
    // Checked against the federation's size as int64, before it narrows: a threshold the user
    // never asked for (2^32 + 2 wrapping to 2) would be a privacy bug.
    if (cfg.secagg.threshold < 0 || cfg.secagg.threshold > static_cast<int64_t>(num_sites))
      throw ConfigError("secure_aggregation.threshold must be between 0 (= floor(n/2)+1) and the number of sites, " +
                        std::to_string(num_sites) + " (got " + std::to_string(cfg.secagg.threshold) + ")");
    sa->set_threshold(cfg.secagg.threshold > 0 ? static_cast<uint32_t>(cfg.secagg.threshold) : num_sites / 2 + 1);
    sa->set_clip(cfg.secagg.clip);
    sa->set_weight_bound(cfg.secagg.weight_bound);
    sa->set_deterministic_rounding(cfg.secagg.deterministic_rounding);
    sa->set_complete_graph_max(u32("secure_aggregation.complete_graph_max", cfg.secagg.complete_graph_max));
    sa->set_sparse_degree(u32("secure_aggregation.sparse_degree", cfg.secagg.sparse_degree));
    protocols::validate_secagg(j);
  }
  return j;
}

std::unique_ptr<common::model::TransferModel> site_model(const v1::JobSpec& job, const std::string& backbone) {
  auto model = common::model::TransferModel::create(backbone, model_spec(job.model()), job.seed());
  if (model->layout().size() != static_cast<size_t>(job.layout().entries_size()))
    throw ModelError("the job's parameter layout does not match the model built here");
  for (size_t i = 0; i < model->layout().size(); ++i) {
    const auto& mine = model->layout()[i];
    const auto& theirs = job.layout().entries(static_cast<int>(i));
    if (mine.name != theirs.name() || mine.shape != std::vector<int64_t>(theirs.shape().begin(), theirs.shape().end()))
      throw ModelError("parameter '" + theirs.name() + "' in the job does not match '" + mine.name + "' here");
  }
  return model;
}

SiteSplit split_site_data(const v1::JobSpec& job, const common::ImageSet& data) {
  const auto split = common::stratified_holdout(
      data.labels, job.training().validation_fraction(),
      common::derive_seed(job.seed(), common::seed_stream::kValidation, job.site_index()));
  SiteSplit out{data.subset(split.train), data.subset(split.validation)};
  if (out.train.size() == 0) throw DataError("this site has no training images left after the validation hold-out");
  return out;
}

void load_round(common::model::TransferModel& model, const v1::JobSpec& job, uint32_t round,
                const std::vector<float>& params) {
  const auto sched = protocols::round_schedule(job, round);
  model.set_trained_children(sched.children);
  model.set_params(params, static_cast<int64_t>(sched.offset));
}

worker::ValidationFigures validation_figures(const common::model::EvalResult& r) {
  worker::ValidationFigures v;
  v.samples = static_cast<uint64_t>(r.samples);
  v.loss_sum = r.loss * static_cast<double>(r.samples);
  v.correct = static_cast<uint64_t>(std::llround(r.accuracy * static_cast<double>(r.samples)));
  return v;
}

common::model::TrainOptions train_options(const v1::TrainingSpec& t) {
  common::model::TrainOptions opt;
  opt.optimizer = from_wire(t.optimizer());
  opt.lr = t.lr();
  opt.momentum = t.momentum();
  opt.weight_decay = t.weight_decay();
  opt.epochs = t.epochs();
  opt.batch_size = t.batch_size();
  opt.prox_mu = t.prox_mu();
  opt.backbone_lr = t.backbone_lr() > 0 ? t.backbone_lr() : t.lr() / 10;
  return opt;
}

common::model::TrainOptions train_options(const v1::JobSpec& job, uint32_t round) {
  common::model::TrainOptions opt = train_options(job.training());
  // Keyed by site and round only, so every transport and every rank of a site shuffle alike.
  opt.seed = common::derive_seed(common::derive_seed(job.seed(), common::seed_stream::kShuffle, job.site_index()), round);
  return opt;
}

v1::InputStats site_input_stats(const v1::JobSpec& job, const common::ImageSet& train) {
  const auto& in = job.model();
  try {
    return protocols::input_stats_to_wire(common::input_stats(train, in.in_channels(), {in.mean().begin(), in.mean().end()},
                                                              {in.std().begin(), in.std().end()}));
  } catch (const fedtl::Error&) {
    return {};  // an input spec the figures do not cover: none (site_model checks the spec itself)
  }
}

v1::SiteEvaluation evaluate_at_site(common::model::TransferModel& model, const v1::JobSpec& job, uint32_t round,
                                    const std::vector<float>& params, uint32_t personalize_epochs,
                                    const common::model::FeatureSet& validation, const common::model::FeatureSet& train) {
  load_round(model, job, round, params);
  const auto k = static_cast<int64_t>(job.model().num_classes());
  auto figures = [&] {
    const auto e = model.evaluate(validation);
    return protocols::site_metrics_to_wire(common::classification_metrics(e.labels, e.scores, k), e.samples);
  };
  v1::SiteEvaluation ev;
  *ev.mutable_global() = figures();
  if (personalize_epochs > 0 && train.size() > 0) {
    const int64_t trained = model.trained_children();
    model.set_trained_children(0);  // the head alone
    auto opt = train_options(job, round);
    opt.epochs = personalize_epochs;
    opt.prox_mu = 0;
    model.train(train, opt);
    *ev.mutable_personalized() = figures();
    ev.set_personalize_epochs(personalize_epochs);
    model.set_trained_children(trained);
  }
  return ev;
}

}  // namespace fedtl::app

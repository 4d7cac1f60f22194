#include "app/config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <limits>
#include <set>
#include <sstream>
#include <toml++/toml.h>

#include "app/orthanc_config.h"
#include "common/errors.h"

namespace fedtl::app {
namespace {

// An int64 from the file fits T (signed or unsigned, any width).
template <typename T>
bool in_range(int64_t v) {
  if constexpr (std::is_unsigned_v<T>) {
    return v >= 0 && static_cast<uint64_t>(v) <= std::numeric_limits<T>::max();
  } else {
    return v >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
           v <= static_cast<int64_t>(std::numeric_limits<T>::max());
  }
}

std::string fmt_real(double v) {
  std::ostringstream os;
  os << std::setprecision(12) << v;
  return os.str();
}

// Reads typed values out of one TOML table and remembers which keys were consumed, so the
// leftovers can be reported as unknown.
class Section {
 public:
  Section(const toml::table* t, std::string name) : t_(t), name_(std::move(name)) {}

  template <typename T>
  void get(const char* key, T& out) {
    if (!t_) return;
    seen_.insert(key);
    const toml::node* n = t_->get(key);
    if (!n) return;
    if constexpr (std::is_same_v<T, bool>) {
      if (!n->is_boolean()) fail(key, "a boolean");
      out = *n->value<bool>();
    } else if constexpr (std::is_integral_v<T>) {
      if (!n->is_integer()) fail(key, "an integer");
      // Checked in the type the value is stored in: a value it cannot hold is refused, never
      // wrapped (sites = 2^32 + 3 must not become 3).
      const int64_t v = *n->value<int64_t>();
      if constexpr (std::is_unsigned_v<T>) {
        if (v < 0) throw ConfigError(qualified(key) + " must be >= 0 (got " + std::to_string(v) + ")");
      }
      if (!in_range<T>(v))
        throw ConfigError(qualified(key) + " = " + std::to_string(v) + " is out of range (at most " +
                          std::to_string(std::numeric_limits<T>::max()) + ")");
      out = static_cast<T>(v);
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!n->is_number()) fail(key, "a number");
      out = *n->value<double>();
      if (!std::isfinite(out)) throw ConfigError(qualified(key) + " must be a finite number (got " + fmt_real(out) + ")");
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (!n->is_string()) fail(key, "a string");
      out = *n->value<std::string>();
    } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
      const toml::array* a = n->as_array();
      if (!a) fail(key, "an array of strings");
      out.clear();
      for (const auto& e : *a) {
        if (!e.is_string()) fail(key, "an array of strings");
        out.push_back(*e.value<std::string>());
      }
    } else if constexpr (std::is_same_v<T, std::vector<int64_t>> || std::is_same_v<T, std::vector<double>>) {
      using E = typename T::value_type;
      const toml::array* a = n->as_array();
      if (!a) fail(key, "an array");
      out.clear();
      for (const auto& e : *a) {
        if constexpr (std::is_same_v<E, int64_t>) {
          if (!e.is_integer()) fail(key, "an array of integers");
          out.push_back(*e.value<int64_t>());
        } else {
          if (!e.is_number()) fail(key, "an array of numbers");
          const double d = *e.value<double>();
          if (!std::isfinite(d)) throw ConfigError(qualified(key) + " values must be finite numbers (got " + fmt_real(d) + ")");
          out.push_back(d);
        }
      }
    }
  }

  // An optional key: set only when the table has it.
  template <typename T>
  void get(const char* key, std::optional<T>& out) {
    T v{};
    get(key, v);
    if (t_ && t_->get(key)) out = v;
  }

  // A string key with a fixed vocabulary: `parse` maps a name to its value (nullopt: not a
  // name it knows); an unknown name is refused naming the key and the choices.
  template <typename T, typename Parse>
  void get_choice(const char* key, T& out, Parse parse, const char* choices) {
    std::string name;
    get(key, name);
    if (!t_ || !t_->get(key)) return;
    auto v = parse(name);
    if (!v) throw ConfigError(qualified(key) + " must be " + choices + " (got \"" + name + "\")");
    out = *v;
  }

  // Marks `key` as read by another parser (so reject_unknown leaves it alone).
  void allow(const std::string& key) { seen_.insert(key); }

  void reject_unknown() const {
    if (!t_) return;
    for (const auto& [k, v] : *t_) {
      if (!seen_.count(std::string(k.str())))
        throw ConfigError("unknown key '" + qualified(std::string(k.str())) +
                          "' (docs/configuration.md lists every key of the job and site files)");
    }
  }

 private:
  [[noreturn]] void fail(const char* key, const char* what) const {
    throw ConfigError("config key '" + qualified(key) + "' must be " + what);
  }
  std::string qualified(const std::string& key) const { return name_.empty() ? key : name_ + "." + key; }

  const toml::table* t_;
  std::string name_;
  std::set<std::string> seen_;
};

namespace model = common::model;

std::optional<DataSource> parse_data_source(const std::string& n) {
  if (n == "fashion-mnist") return DataSource::kFashionMnist;
  if (n == "folder") return DataSource::kFolder;
  if (n == "dicom") return DataSource::kDicom;
  return std::nullopt;
}

std::optional<SiteDataSource> parse_site_data_source(const std::string& n) {
  if (n == "folder") return SiteDataSource::kFolder;
  if (n == "job-partition") return SiteDataSource::kJobPartition;
  if (n == "dicom") return SiteDataSource::kDicom;
  if (n == "orthanc") return SiteDataSource::kOrthanc;
  return std::nullopt;
}

std::optional<common::BadFile> parse_bad_file(const std::string& n) {
  if (n == "error") return common::BadFile::kError;
  if (n == "skip") return common::BadFile::kSkip;
  return std::nullopt;
}

// The [data] keys a job file and a site file share (ImageDataConfig).
void get_image_keys(Section& data, ImageDataConfig& c) {
  data.get("labels", c.labels);
  data.get("label_tag", c.label_tag);
  data.get_choice("missing_classes", c.missing_classes, common::parse_missing_classes, "\"error\" or \"warn\"");
  data.get_choice("on_bad_file", c.on_bad_file, parse_bad_file, "\"error\" or \"skip\"");
  data.get("max_image_pixels", c.max_image_pixels);
  data.get("window", c.window);
  data.get_choice("frame", c.frame, common::parse_dicom_frame, "\"first\" or \"middle\"");
}

void require_image_keys(const ImageDataConfig& c, bool dicom) {
  if (c.max_image_pixels < 1 || c.max_image_pixels > (int64_t{1} << 40))
    throw ConfigError("data.max_image_pixels must be between 1 and 2^40 (got " + std::to_string(c.max_image_pixels) + ")");
  if (!c.window.empty() && (c.window.size() != 2 || !(c.window[1] >= 1)))
    throw ConfigError("data.window must be [center, width] with width >= 1");
  if (!c.label_tag.empty()) {
    if (!dicom) throw ConfigError("data.label_tag needs data.source = \"dicom\"");
    common::check_dicom_tag("data.label_tag", c.label_tag);
  }
}

// "none" is a valid choice (privacy off), hence the nested optional; the DP library owns the
// names of its modes (get_choice reports an unknown one naming the key).
std::optional<std::optional<protocols::dp::NoiseMode>> parse_privacy_mode(const std::string& n) {
  using protocols::dp::NoiseMode;
  if (n == "none") return std::optional<NoiseMode>{};
  try {
    return std::optional<NoiseMode>(protocols::dp::parse_noise_mode(n));
  } catch (const ConfigError&) {
    return std::nullopt;
  }
}

const toml::table* subtable(const toml::table& root, const char* name) {
  const toml::node* n = root.get(name);
  if (!n) return nullptr;
  if (!n->is_table()) throw ConfigError(std::string("config key '") + name + "' must be a table ([" + name + "])");
  return n->as_table();
}

JobConfig from_table(const toml::table& root) {
  JobConfig c;
  static const std::set<std::string> kSections = {"job",  "data",  "partition", "backbone",  "pretrain",
                                                  "head", "train", "server",    "baselines", "evaluation", "federation", "secure_aggregation", "privacy"};
  for (const auto& [k, v] : root) {
    if (!kSections.count(std::string(k.str())))
      throw ConfigError("unknown section or key '" + std::string(k.str()) + "' in job config");
  }
  Section job(subtable(root, "job"), "job");
  job.get("name", c.name);
  job.get("seed", c.seed);
  job.get("rounds", c.rounds);
  job.get("sites", c.partition.sites);
  job.get("out", c.out);
  job.get("threads", c.threads);
  job.get("round_timeout_s", c.round_timeout_s);
  job.get("liveness_timeout_s", c.liveness_timeout_s);
  job.get("quorum_wait_s", c.quorum_wait_s);
  job.get("status_port", c.status_port);
  job.get("status_address", c.status_address);
  job.get("min_sites", c.min_sites);
  job.get("max_samples_per_site", c.max_samples_per_site);
  job.get("early_stopping_patience", c.early_stopping_patience);
  job.get("keep_best", c.keep_best);
  job.get("concurrency", c.concurrency);
  {
    // A count (an integer) or a fraction of the federation (a float).
    double spr = 0;
    job.get("sites_per_round", spr);
    const toml::table* jt = subtable(root, "job");
    if (const toml::node* n = jt ? jt->get("sites_per_round") : nullptr) {
      if (n->is_integer()) {
        c.sites_per_round = *n->value<int64_t>();
        if (c.sites_per_round < 1)
          throw ConfigError("job.sites_per_round must be a count >= 1 or a fraction in (0, 1] (got " +
                            std::to_string(c.sites_per_round) + ")");
      } else {
        if (!(spr > 0 && spr <= 1))
          throw ConfigError("job.sites_per_round must be a count >= 1 or a fraction in (0, 1] (got " + fmt_real(spr) +
                            ")");
        c.sites_per_round_fraction = spr;
      }
    }
  }
  job.reject_unknown();

  Section data(subtable(root, "data"), "data");
  data.get_choice("source", c.data.source, parse_data_source, "\"fashion-mnist\", \"folder\" or \"dicom\"");
  data.get("dir", c.data.dir);
  data.get("test_dir", c.data.test_dir);
  data.get("test_labels", c.data.test_labels);
  data.get("classes", c.data.classes);
  if (c.data.source != DataSource::kFashionMnist) {
    // Fashion-MNIST's class ids mean nothing to other data: by default every class found in
    // the data is a target class and none is for pre-training.
    c.data.source_classes.clear();
    c.data.target_classes.clear();
  }
  data.get("source_classes", c.data.source_classes);
  data.get("target_classes", c.data.target_classes);
  data.get("test_fraction", c.data.test_fraction);
  get_image_keys(data, c.data.images);
  data.get("validation_fraction", c.data.validation_fraction);
  data.reject_unknown();

  Section part(subtable(root, "partition"), "partition");
  std::string scheme = "dirichlet";
  part.get("scheme", scheme);
  c.partition.scheme = common::parse_partition_scheme(scheme);
  part.get("alpha", c.partition.alpha);
  part.get("samples_per_site", c.partition.samples_per_site);
  part.get("max_per_class", c.partition.max_per_class);
  part.get("quantity_sigma", c.partition.quantity_sigma);
  part.reject_unknown();

  Section bb(subtable(root, "backbone"), "backbone");
  bb.get("path", c.backbone.path);
  bb.get("pretrain_if_missing", c.backbone.pretrain_if_missing);
  bb.get("channels", c.backbone.channels);
  bb.get("height", c.backbone.height);
  bb.get("width", c.backbone.width);
  bb.get("mean", c.backbone.mean);
  bb.get("std", c.backbone.std);
  bb.get_choice("freeze", c.backbone.freeze, model::parse_freeze, "\"all\", \"all_but_last\" or \"none\"");
  bb.get("unfrozen", c.backbone.unfrozen);
  bb.get("warmup_rounds", c.backbone.warmup_rounds);
  bb.get("unfreeze_every", c.backbone.unfreeze_every);
  bb.get("sha256", c.backbone.sha256);
  bb.get("max_bytes", c.backbone.max_bytes);
  bb.reject_unknown();

  Section pre(subtable(root, "pretrain"), "pretrain");
  pre.get("epochs", c.pretrain.epochs);
  pre.get("batch_size", c.pretrain.batch_size);
  pre.get("lr", c.pretrain.lr);
  pre.reject_unknown();

  Section head(subtable(root, "head"), "head");
  head.get_choice("type", c.head.type, model::parse_head_type, "\"linear\" or \"mlp\"");
  head.get("hidden", c.head.hidden);
  head.reject_unknown();

  Section tr(subtable(root, "train"), "train");
  tr.get_choice("optimizer", c.train.optimizer, model::parse_optimizer, "\"sgd\" or \"adam\"");
  tr.get("lr", c.train.lr);
  tr.get("backbone_lr", c.train.backbone_lr);
  tr.get("momentum", c.train.momentum);
  tr.get("weight_decay", c.train.weight_decay);
  tr.get("epochs", c.train.epochs);
  tr.get("batch_size", c.train.batch_size);
  tr.reject_unknown();

  Section sv(subtable(root, "server"), "server");
  sv.get("strategy", c.server.name);
  sv.get_choice("weighting", c.equal_weighting,
                [](const std::string& n) -> std::optional<bool> {
                  if (n == "samples") return false;
                  if (n == "equal") return true;
                  return std::nullopt;
                },
                "\"samples\" or \"equal\"");
  sv.get("max_update_norm", c.max_update_norm);
  sv.get("lr", c.server.server_lr);
  sv.get("beta1", c.server.beta1);
  sv.get("beta2", c.server.beta2);
  sv.get("tau", c.server.tau);
  sv.get("mu", c.server.prox_mu);
  sv.reject_unknown();

  Section bl(subtable(root, "baselines"), "baselines");
  bl.get("enabled", c.baselines.enabled);
  bl.get("epochs", c.baselines.epochs);
  bl.reject_unknown();

  Section ev(subtable(root, "evaluation"), "evaluation");
  ev.get("personalize_epochs", c.evaluation.personalize_epochs);
  ev.reject_unknown();

  Section fed(subtable(root, "federation"), "federation");
  fed.get("listen", c.federation.listen);
  fed.get("sites", c.federation.sites);
  fed.get("ca_cert", c.federation.ca_cert);
  fed.get("cert", c.federation.cert);
  fed.get("key", c.federation.key);
  fed.get("join_timeout_s", c.federation.join_timeout_s);
  fed.get("handshake_timeout_s", c.federation.handshake_timeout_s);
  fed.get("max_frame_mb", c.federation.max_frame_mb);
  fed.reject_unknown();

  Section sa(subtable(root, "secure_aggregation"), "secure_aggregation");
  if (const toml::table* t = subtable(root, "secure_aggregation"); t && t->get("enabled")) {
    bool on = false;
    sa.get("enabled", on);
    c.secagg.enabled = on;
  } else {
    bool ignored = false;
    sa.get("enabled", ignored);
  }
  sa.get("threshold", c.secagg.threshold);
  sa.get("clip", c.secagg.clip);
  sa.get("weight_bound", c.secagg.weight_bound);
  sa.get("deterministic_rounding", c.secagg.deterministic_rounding);
  sa.get("complete_graph_max", c.secagg.complete_graph_max);
  sa.get("sparse_degree", c.secagg.sparse_degree);
  sa.reject_unknown();

  Section pv(subtable(root, "privacy"), "privacy");
  pv.get_choice("mode", c.privacy.mode, parse_privacy_mode, "\"none\", \"central\", \"distributed\" or \"local\"");
  pv.get("noise_multiplier", c.privacy.noise_multiplier);
  pv.get("clip_norm", c.privacy.clip_norm);
  pv.get("delta", c.privacy.delta);
  pv.get("target_epsilon", c.privacy.target_epsilon);
  pv.get("sampling_rate", c.privacy.sampling_rate);
  pv.get("adaptive_clip", c.privacy.adaptive_clip);
  pv.get("target_quantile", c.privacy.target_quantile);
  pv.get("clip_learning_rate", c.privacy.clip_learning_rate);
  pv.reject_unknown();
  return c;
}

void require(bool ok, const std::string& msg) {
  if (!ok) throw ConfigError(msg);
}

}  // namespace

JobConfig parse_job_config(const std::string& text, const std::string& origin) {
  toml::table root;
  try {
    root = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << origin << ":" << e.source().begin.line << ":" << e.source().begin.column << ": " << e.description();
    throw ConfigError(os.str());
  }
  JobConfig c = from_table(root);
  validate(c);
  return c;
}

namespace {
// Paths written in a job or site file are relative to that file's folder (docs/configuration.md);
// defaults and command-line paths are relative to the working directory.
std::string resolve(const std::string& base_dir, const std::string& p) {
  if (p.empty() || p.front() == '/') return p;
  return (std::filesystem::path(base_dir) / p).lexically_normal().string();
}
}  // namespace

JobConfig load_job_config(const std::string& path) {
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    if (e.source().begin.line == 0 || !e.source().path)
      os << "cannot read job config '" << path << "': " << e.description();
    else
      os << path << ":" << e.source().begin.line << ":" << e.source().begin.column << ": " << e.description();
    throw ConfigError(os.str());
  }
  JobConfig c = from_table(root);
  const std::string base = std::filesystem::path(path).parent_path().string();
  const std::pair<const char*, std::string*> paths[] = {
      {"job.out", &c.out},
      {"data.dir", &c.data.dir},
      {"data.test_dir", &c.data.test_dir},
      {"data.labels", &c.data.images.labels},
      {"data.test_labels", &c.data.test_labels},
      {"backbone.path", &c.backbone.path},
      {"federation.ca_cert", &c.federation.ca_cert},
      {"federation.cert", &c.federation.cert},
      {"federation.key", &c.federation.key}};
  for (const auto& [key, value] : paths)
    if (root.at_path(key)) *value = resolve(base, *value);  // only what the file itself says
  validate(c);
  return c;
}

namespace {

// Range checks, each naming its key and the value it got. Integers are checked as int64 (the
// type they are parsed into) before anything narrows them; reals must be finite.
void int_range(const std::string& key, int64_t v, int64_t lo, int64_t hi, const std::string& note = "") {
  if (v < lo || v > hi)
    throw ConfigError(key + " must be between " + std::to_string(lo) + " and " + std::to_string(hi) + note + " (got " +
                      std::to_string(v) + ")");
}

enum class Low { kClosed, kOpen };  // lo itself allowed, or not
void real_range(const std::string& key, double v, double lo, double hi, Low low = Low::kClosed,
                const std::string& note = "") {
  if (!std::isfinite(v)) throw ConfigError(key + " must be a finite number (got " + fmt_real(v) + ")");
  const bool ok = (low == Low::kOpen ? v > lo : v >= lo) && v <= hi;
  if (!ok)
    throw ConfigError(key + " must be in " + (low == Low::kOpen ? "(" : "[") + fmt_real(lo) + ", " + fmt_real(hi) +
                      "]" + note + " (got " + fmt_real(v) + ")");
}

// A duration in seconds: finite, at least a millisecond, at most kMaxSeconds.
void seconds_range(const std::string& key, double v) {
  real_range(key, v, kMinSeconds, kMaxSeconds, Low::kClosed, " seconds");
}

}  // namespace

std::chrono::milliseconds seconds_to_ms(double seconds) {
  // Saturating: NaN and negatives are 0, anything above kMaxMillisSeconds is that bound, so
  // the multiplication and the cast can never overflow (and Clock::now() + it neither).
  if (!(seconds > 0)) return std::chrono::milliseconds(0);
  if (seconds >= kMaxMillisSeconds) seconds = kMaxMillisSeconds;
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
}

uint32_t sites_per_round_count(const JobConfig& c, uint32_t num_sites) {
  if (num_sites == 0) return 0;
  if (c.sites_per_round > 0) return static_cast<uint32_t>(std::min<int64_t>(c.sites_per_round, num_sites));
  if (c.sites_per_round_fraction > 0 && c.sites_per_round_fraction < 1)
    return static_cast<uint32_t>(std::clamp<long>(std::lround(c.sites_per_round_fraction * num_sites), 1, num_sites));
  return 0;
}

void validate(const JobConfig& c) {
  // [job]
  int_range("job.sites", c.partition.sites, 1, kMaxSites);
  int_range("job.rounds", c.rounds, 1, kMaxRounds);
  int_range("job.threads", c.threads, 1, kMaxThreads);
  int_range("job.concurrency", c.concurrency, 0, kMaxThreads, " (0 = one per core)");
  int_range("job.sites_per_round", c.sites_per_round, 0, kMaxSites);
  require(c.sites_per_round == 0 || c.privacy.sampling_rate >= 1,
          "job.sites_per_round and privacy.sampling_rate both sample sites: set one (with job.sites_per_round the "
          "accountant's sampling rate is sites_per_round / sites)");
  seconds_range("job.round_timeout_s", c.round_timeout_s);
  seconds_range("job.liveness_timeout_s", c.liveness_timeout_s);
  int_range("job.status_port", c.status_port, 0, 65535);
  require(!c.status_address.empty(), "job.status_address must be an IP address (e.g. \"127.0.0.1\")");
  require(std::isfinite(c.quorum_wait_s) && c.quorum_wait_s >= 0 && c.quorum_wait_s <= 30 * 86400,
          "job.quorum_wait_s must be between 0 and 2592000 (30 days)");
  int_range("job.min_sites", c.min_sites, 1, c.partition.sites, " (job.sites)");
  require(!c.out.empty(), "job.out must not be empty");
  int_range("job.max_samples_per_site", c.max_samples_per_site, 0, kMaxSamples,
            " (0 = the largest count declared at join)");
  int_range("job.early_stopping_patience", c.early_stopping_patience, 0, kMaxRounds, " (0 = off)");
  require(c.early_stopping_patience == 0 || c.data.validation_fraction > 0,
          "job.early_stopping_patience needs a validation split (data.validation_fraction > 0)");
  // [data] (data.dir is needed only where training data is read: load_task_data says so)
  const bool fmnist = c.data.source == DataSource::kFashionMnist;
  if (fmnist) {
    require(c.data.classes.empty(), "data.classes is for other sources: Fashion-MNIST's classes are chosen by "
                                    "data.target_classes (0..9)");
    require(c.data.images.labels.empty(), "data.labels needs data.source = \"folder\" or \"dicom\"");
    require(c.data.test_labels.empty(), "data.test_labels needs data.source = \"folder\" or \"dicom\"");
  }
  require(c.data.test_labels.empty() || !c.data.test_dir.empty(), "data.test_labels needs data.test_dir");
  if (!fmnist && c.data.classes.empty() && !c.data.target_classes.empty())
    require(false, "data.target_classes picks from data.classes: list the classes by name in data.classes");
  {
    std::set<std::string> names;
    for (const auto& n : c.data.classes) {
      require(!n.empty(), "data.classes has an empty name");
      require(names.insert(n).second, "data.classes lists '" + n + "' twice");
    }
    require(c.data.classes.empty() || c.data.classes.size() >= 2, "data.classes needs at least 2 classes");
  }
  real_range("data.test_fraction", c.data.test_fraction, 0, 1);
  require(c.data.test_fraction < 1, "data.test_fraction must be in [0, 1) (got 1)");
  require_image_keys(c.data.images, c.data.source == DataSource::kDicom);
  if (fmnist || !c.data.target_classes.empty())
    require(c.data.target_classes.size() >= 2, "data.target_classes needs at least 2 classes");
  for (int64_t k : c.data.target_classes)
    if (!c.data.classes.empty())
      int_range("data.target_classes", k, 0, static_cast<int64_t>(c.data.classes.size()) - 1, " (an index into data.classes)");
  for (int64_t k : c.data.source_classes)
    if (!c.data.classes.empty())
      int_range("data.source_classes", k, 0, static_cast<int64_t>(c.data.classes.size()) - 1, " (an index into data.classes)");
  require(c.data.target_classes.size() <= static_cast<size_t>(kMaxClassId) + 1, "data.target_classes has too many classes");
  for (int64_t k : c.data.target_classes) int_range("data.target_classes", k, 0, kMaxClassId);
  for (int64_t k : c.data.source_classes) int_range("data.source_classes", k, 0, kMaxClassId);
  std::set<int64_t> tgt(c.data.target_classes.begin(), c.data.target_classes.end());
  require(tgt.size() == c.data.target_classes.size(), "data.target_classes has duplicates");
  for (int64_t k : c.data.source_classes)
    require(!tgt.count(k), "class " + std::to_string(k) + " is in both data.source_classes and data.target_classes");
  real_range("data.validation_fraction", c.data.validation_fraction, 0, kMaxValidationFraction, Low::kClosed,
             " (0 = no validation)");
  // [partition]
  real_range("partition.alpha", c.partition.alpha, 0, 1e6, Low::kOpen);
  int_range("partition.samples_per_site", c.partition.samples_per_site, 0, kMaxSamplesPerSite, " (0 = split the whole set)");
  int_range("partition.max_per_class", c.partition.max_per_class, 0, kMaxSamplesPerSite, " (0 = no cap)");
  real_range("partition.quantity_sigma", c.partition.quantity_sigma, 0, 10, Low::kOpen);
  // [backbone]
  require(c.backbone.channels == 1 || c.backbone.channels == 3,
          "backbone.channels must be 1 or 3 (got " + std::to_string(c.backbone.channels) + ")");
  int_range("backbone.height", c.backbone.height, 1, kMaxImageSide);
  int_range("backbone.width", c.backbone.width, 1, kMaxImageSide);
  require(c.backbone.sha256.empty() ||
              (c.backbone.sha256.size() == 64 &&
               c.backbone.sha256.find_first_not_of("0123456789abcdef") == std::string::npos),
          "backbone.sha256 must be 64 lower-case hex digits (as `fedtl pretrain` prints it)");
  require(c.backbone.max_bytes >= 1, "backbone.max_bytes must be >= 1");
  require(c.backbone.mean.size() == static_cast<size_t>(c.backbone.channels) &&
              c.backbone.std.size() == static_cast<size_t>(c.backbone.channels),
          "backbone.mean and backbone.std need one value per backbone channel");
  for (double m : c.backbone.mean) real_range("backbone.mean", m, -1e6, 1e6);
  for (double s : c.backbone.std) real_range("backbone.std", s, 0, 1e6, Low::kOpen);
  if (c.backbone.freeze == common::model::Freeze::kAllButLast)
    int_range("backbone.unfrozen", c.backbone.unfrozen, 1, kMaxUnfrozen);
  else
    int_range("backbone.unfrozen", c.backbone.unfrozen, 0, kMaxUnfrozen);
  int_range("backbone.warmup_rounds", c.backbone.warmup_rounds, 0, kMaxRounds);
  int_range("backbone.unfreeze_every", c.backbone.unfreeze_every, 0, kMaxRounds, " (0 = all at once)");
  const bool trains_backbone = c.backbone.freeze != common::model::Freeze::kAll &&
                               (c.backbone.freeze == common::model::Freeze::kNone || c.backbone.unfrozen > 0);
  require(trains_backbone || (c.backbone.warmup_rounds == 0 && c.backbone.unfreeze_every == 0),
          "backbone.warmup_rounds and backbone.unfreeze_every need backbone children to unfreeze "
          "(backbone.freeze = \"all_but_last\" or \"none\")");
  // [pretrain]
  int_range("pretrain.epochs", c.pretrain.epochs, 1, kMaxEpochs);
  int_range("pretrain.batch_size", c.pretrain.batch_size, 1, kMaxBatchSize);
  real_range("pretrain.lr", c.pretrain.lr, 0, kMaxLearningRate, Low::kOpen);
  // [head]
  int_range("head.hidden", c.head.hidden, 1, kMaxHidden);
  // [train]
  real_range("train.lr", c.train.lr, 0, kMaxLearningRate, Low::kOpen);
  if (c.train.backbone_lr) real_range("train.backbone_lr", *c.train.backbone_lr, 0, kMaxLearningRate, Low::kOpen);
  real_range("train.momentum", c.train.momentum, 0, 1);
  require(c.train.momentum < 1, "train.momentum must be in [0, 1) (got 1)");
  real_range("train.weight_decay", c.train.weight_decay, 0, 1e3);
  int_range("train.epochs", c.train.epochs, 1, kMaxEpochs);
  int_range("train.batch_size", c.train.batch_size, 1, kMaxBatchSize);
  // [server] (make_strategy checks them again, and the strategy's name)
  real_range("server.lr", c.server.server_lr, 0, kMaxLearningRate, Low::kOpen);
  real_range("server.beta1", c.server.beta1, 0, 1);
  require(c.server.beta1 < 1, "server.beta1 must be in [0, 1) (got 1)");
  real_range("server.beta2", c.server.beta2, 0, 1);
  require(c.server.beta2 < 1, "server.beta2 must be in [0, 1) (got 1)");
  real_range("server.tau", c.server.tau, 0, 1e3, Low::kOpen);
  real_range("server.mu", c.server.prox_mu, 0, 1e6);
  real_range("server.max_update_norm", c.max_update_norm, 0, 1e30, Low::kClosed, " (0 = 1e4 * sqrt(parameters))");
  // [baselines]
  int_range("baselines.epochs", c.baselines.epochs, 1, kMaxEpochs);
  int_range("evaluation.personalize_epochs", c.evaluation.personalize_epochs, 0, kMaxEpochs);
  // [federation]
  seconds_range("federation.join_timeout_s", c.federation.join_timeout_s);
  seconds_range("federation.handshake_timeout_s", c.federation.handshake_timeout_s);
  int_range("federation.max_frame_mb", c.federation.max_frame_mb, 1, 4095);
  require(c.federation.sites.size() <= static_cast<size_t>(kMaxSites),
          "federation.sites lists more than " + std::to_string(kMaxSites) + " sites");
  std::set<std::string> names(c.federation.sites.begin(), c.federation.sites.end());
  require(names.size() == c.federation.sites.size(), "federation.sites has duplicate names");
  // [secure_aggregation]
  int_range("secure_aggregation.threshold", c.secagg.threshold, 0, kMaxSites, " (0 = floor(n/2)+1)");
  real_range("secure_aggregation.clip", c.secagg.clip, 0, 1e6, Low::kOpen);
  real_range("secure_aggregation.weight_bound", c.secagg.weight_bound, 1, static_cast<double>(kMaxSamples));
  int_range("secure_aggregation.complete_graph_max", c.secagg.complete_graph_max, 2, kMaxSites);
  int_range("secure_aggregation.sparse_degree", c.secagg.sparse_degree, 0, kMaxSites, " (0 = 2*ceil(log2 n))");
  // [privacy]: every value is range-checked, used or not; the rules between them only with a mode.
  const auto& pv = c.privacy;
  real_range("privacy.noise_multiplier", pv.noise_multiplier, 0, 1e6);
  real_range("privacy.clip_norm", pv.clip_norm, 0, 1e6, Low::kOpen);
  real_range("privacy.delta", pv.delta, 0, 1, Low::kOpen);
  require(pv.delta < 1, "privacy.delta must be in (0, 1) (got 1)");
  real_range("privacy.target_epsilon", pv.target_epsilon, 0, 1e6, Low::kClosed, " (0 = no target)");
  real_range("privacy.sampling_rate", pv.sampling_rate, 0, 1, Low::kOpen);
  real_range("privacy.target_quantile", pv.target_quantile, 0, 1);
  real_range("privacy.clip_learning_rate", pv.clip_learning_rate, 0, 1e3, Low::kOpen);
  if (pv.mode) {
    require(pv.noise_multiplier > 0 || pv.target_epsilon > 0,
            "privacy.noise_multiplier must be > 0 (or 0 with privacy.target_epsilon > 0 to calibrate it)");
  }
}

SiteConfig load_site_config(const std::string& path) {
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << path << ":" << e.source().begin.line << ":" << e.source().begin.column << ": " << e.description();
    throw ConfigError(os.str());
  }
  for (const auto& [k, v] : root) {
    const std::string key(k.str());
    if (key != "site" && key != "data" && key != "policy")
      throw ConfigError("unknown section or key '" + key + "' in site config " + path);
  }
  SiteConfig c;
  Section site(subtable(root, "site"), "site");
  site.get("name", c.name);
  site.get("coordinator", c.coordinator);
  site.get("coordinator_name", c.coordinator_name);
  site.get("ca_cert", c.ca_cert);
  site.get("cert", c.cert);
  site.get("key", c.key);
  site.get("cache_dir", c.cache_dir);
  site.get("connect_timeout_s", c.connect_timeout_s);
  site.get("max_backoff_s", c.max_backoff_s);
  site.get("give_up_after_s", c.give_up_after_s);
  site.reject_unknown();
  Section data(subtable(root, "data"), "data");
  data.get_choice("source", c.data_source, parse_site_data_source,
                  "\"folder\", \"dicom\", \"orthanc\" or \"job-partition\"");
  const toml::table* data_table = subtable(root, "data");
  if (c.data_source == SiteDataSource::kOrthanc)  // its keys are read below (app/orthanc_config.h)
    for (const auto& [k, v] : *data_table)
      if (is_orthanc_data_key(std::string(k.str()))) data.allow(std::string(k.str()));
  data.get("dir", c.data_dir);
  data.get("job", c.data_job);
  data.get("partition_index", c.partition_index);
  get_image_keys(data, c.data_images);
  data.reject_unknown();
  require_image_keys(c.data_images,
                     c.data_source == SiteDataSource::kDicom || c.data_source == SiteDataSource::kOrthanc);
  Section pol(subtable(root, "policy"), "policy");
  pol.get("backbone_sha256", c.policy.backbone_sha256);
  for (const auto& d : c.policy.backbone_sha256)
    require(d.size() == 64 && d.find_first_not_of("0123456789abcdef") == std::string::npos,
            "policy.backbone_sha256: '" + d + "' is not a SHA-256 digest (64 lower-case hex digits, as the "
            "coordinator's log and `fedtl pretrain` print it)");
  pol.get("min_sites", c.policy.min_sites);
  pol.get("require_secure_aggregation", c.policy.require_secure_aggregation);
  pol.get("max_rounds", c.policy.max_rounds);
  pol.get("max_local_epochs", c.policy.max_local_epochs);
  pol.get("share_training_metrics", c.policy.share_training_metrics);
  pol.get("share_input_stats", c.policy.share_input_stats);
  pol.get("max_backbone_bytes", c.policy.max_backbone_bytes);
  pol.get("coordinator_silence_s", c.policy.coordinator_silence_s);
  pol.get("max_batch_size", c.policy.max_batch_size);
  pol.get("max_learning_rate", c.policy.max_learning_rate);
  pol.get("max_backbone_lr", c.policy.max_backbone_lr);
  pol.get("max_unfrozen_children", c.policy.max_unfrozen_children);
  pol.get("max_hidden", c.policy.max_hidden);
  pol.get("max_round_seconds", c.policy.max_round_seconds);
  pol.reject_unknown();

  const std::string base = std::filesystem::path(path).parent_path().string();
  for (std::string* p : {&c.ca_cert, &c.cert, &c.key, &c.cache_dir, &c.data_dir, &c.data_job, &c.data_images.labels})
    *p = resolve(base, *p);
  require(c.policy.max_backbone_bytes >= 1, "policy.max_backbone_bytes must be >= 1");
  require(c.policy.max_batch_size >= 1, "policy.max_batch_size must be >= 1");
  require(std::isfinite(c.policy.max_backbone_lr) && c.policy.max_backbone_lr > 0,
          "policy.max_backbone_lr must be finite and > 0");
  require(c.policy.max_unfrozen_children >= 0, "policy.max_unfrozen_children must be >= 0");
  require(std::isfinite(c.policy.max_learning_rate) && c.policy.max_learning_rate > 0,
          "policy.max_learning_rate must be finite and > 0");
  require(c.policy.max_hidden >= 1, "policy.max_hidden must be >= 1");
  require(std::isfinite(c.policy.max_round_seconds) && c.policy.max_round_seconds > 0,
          "policy.max_round_seconds must be finite and > 0");
  require(std::isfinite(c.policy.coordinator_silence_s) && c.policy.coordinator_silence_s >= 1 &&
              c.policy.coordinator_silence_s <= 7 * 86400,
          "policy.coordinator_silence_s must be between 1 and 604800 seconds");
  require(!c.name.empty(), "site.name is required (the name on the site's certificate)");
  require(c.coordinator.find(':') != std::string::npos, "site.coordinator must be host:port");
  require(!c.ca_cert.empty() && !c.cert.empty() && !c.key.empty(), "site.ca_cert, site.cert and site.key are required");
  if (c.data_source == SiteDataSource::kFolder || c.data_source == SiteDataSource::kDicom)
    require(!c.data_dir.empty(), "data.dir is required for data.source = \"folder\" or \"dicom\"");
  if (c.data_source == SiteDataSource::kJobPartition)
    require(!c.data_job.empty() && c.partition_index >= 0, "data.job and data.partition_index are required for \"job-partition\"");
  seconds_range("site.connect_timeout_s", c.connect_timeout_s);
  seconds_range("site.max_backoff_s", c.max_backoff_s);
  seconds_range("site.give_up_after_s", c.give_up_after_s);
  int_range("data.partition_index", c.partition_index, -1, kMaxSites - 1);
  if (c.cache_dir.empty()) c.cache_dir = "runs/site-" + c.name;
  if (c.data_source == SiteDataSource::kOrthanc) {
    c.orthanc = parse_orthanc_source(*data_table, base, (std::filesystem::path(c.cache_dir) / "orthanc").string());
    c.orthanc.skip_bad = c.data_images.on_bad_file == common::BadFile::kSkip;
  }
  return c;
}

std::string privacy_mode_name(const std::optional<protocols::dp::NoiseMode>& mode) {
  return mode ? protocols::dp::to_string(*mode) : "none";
}

}  // namespace fedtl::app

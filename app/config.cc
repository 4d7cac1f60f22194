#include "app/config.h"

#include <cmath>
#include <filesystem>
#include <set>
#include <sstream>
#include <toml++/toml.h>

#include "common/errors.h"

namespace fedtl::app {
namespace {

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
      out = static_cast<T>(*n->value<int64_t>());
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!n->is_number()) fail(key, "a number");
      out = *n->value<double>();
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
          out.push_back(*e.value<double>());
        }
      }
    }
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

  void reject_unknown() const {
    if (!t_) return;
    for (const auto& [k, v] : *t_) {
      if (!seen_.count(std::string(k.str())))
        throw ConfigError("unknown key '" + qualified(std::string(k.str())) + "' in job config");
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
  return std::nullopt;
}

std::optional<SiteDataSource> parse_site_data_source(const std::string& n) {
  if (n == "folder") return SiteDataSource::kFolder;
  if (n == "job-partition") return SiteDataSource::kJobPartition;
  return std::nullopt;
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
                                                  "head", "train", "server",    "baselines", "federation", "secure_aggregation", "privacy"};
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
  job.get("min_sites", c.min_sites);
  job.get("max_samples_per_site", c.max_samples_per_site);
  job.reject_unknown();

  Section data(subtable(root, "data"), "data");
  data.get_choice("source", c.data.source, parse_data_source, "\"fashion-mnist\" or \"folder\"");
  data.get("dir", c.data.dir);
  data.get("test_dir", c.data.test_dir);
  data.get("source_classes", c.data.source_classes);
  data.get("target_classes", c.data.target_classes);
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
  validate(c);
  return c;
}

void validate(const JobConfig& c) {
  require(c.rounds >= 1, "job.rounds must be >= 1 (got " + std::to_string(c.rounds) + ")");
  require(c.partition.sites >= 1, "job.sites must be >= 1 (got " + std::to_string(c.partition.sites) + ")");
  require(c.threads >= 1, "job.threads must be >= 1");
  require(c.round_timeout_s > 0, "job.round_timeout_s must be > 0");
  require(c.liveness_timeout_s > 0, "job.liveness_timeout_s must be > 0");
  require(std::isfinite(c.quorum_wait_s) && c.quorum_wait_s >= 0 && c.quorum_wait_s <= 30 * 86400,
          "job.quorum_wait_s must be between 0 and 2592000 (30 days)");
  require(c.min_sites >= 1 && c.min_sites <= c.partition.sites,
          "job.min_sites must be between 1 and job.sites (got " + std::to_string(c.min_sites) + ")");
  require(!c.out.empty(), "job.out must not be empty");
  require(c.max_samples_per_site >= 0, "job.max_samples_per_site must be >= 0 (0 = the largest count declared at join)");
  require(std::isfinite(c.max_update_norm) && c.max_update_norm >= 0,
          "server.max_update_norm must be finite and >= 0 (0 = 1e4 * sqrt(parameters))");
  if (c.data.source == DataSource::kFolder) require(!c.data.dir.empty(), "data.dir is required when data.source = \"folder\"");
  require(c.data.target_classes.size() >= 2, "data.target_classes needs at least 2 classes");
  std::set<int64_t> tgt(c.data.target_classes.begin(), c.data.target_classes.end());
  require(tgt.size() == c.data.target_classes.size(), "data.target_classes has duplicates");
  for (int64_t k : c.data.source_classes)
    require(!tgt.count(k), "class " + std::to_string(k) + " is in both data.source_classes and data.target_classes");
  require(c.partition.alpha > 0, "partition.alpha must be > 0");
  require(c.partition.samples_per_site >= 0, "partition.samples_per_site must be >= 0");
  require(c.partition.max_per_class >= 0, "partition.max_per_class must be >= 0");
  require(c.partition.quantity_sigma > 0, "partition.quantity_sigma must be > 0");
  require(c.backbone.channels == 1 || c.backbone.channels == 3, "backbone.channels must be 1 or 3");
  require(c.backbone.sha256.empty() ||
              (c.backbone.sha256.size() == 64 &&
               c.backbone.sha256.find_first_not_of("0123456789abcdef") == std::string::npos),
          "backbone.sha256 must be 64 lower-case hex digits (as `fedtl pretrain` prints it)");
  require(c.backbone.max_bytes >= 1, "backbone.max_bytes must be >= 1");
  require(c.backbone.height >= 1 && c.backbone.width >= 1, "backbone.height and backbone.width must be >= 1");
  require(c.backbone.mean.size() == static_cast<size_t>(c.backbone.channels) &&
              c.backbone.std.size() == static_cast<size_t>(c.backbone.channels),
          "backbone.mean and backbone.std need one value per backbone channel");
  for (double s : c.backbone.std) require(s > 0, "backbone.std values must be > 0");
  require(c.backbone.unfrozen >= 1 || c.backbone.freeze != common::model::Freeze::kAllButLast,
          "backbone.unfrozen must be >= 1");
  require(c.pretrain.epochs >= 1 && c.pretrain.batch_size >= 1 && c.pretrain.lr > 0,
          "pretrain.epochs, pretrain.batch_size and pretrain.lr must be positive");
  require(c.head.hidden >= 1, "head.hidden must be >= 1");
  require(c.train.lr > 0, "train.lr must be > 0 (got " + std::to_string(c.train.lr) + ")");
  require(c.train.momentum >= 0 && c.train.momentum < 1, "train.momentum must be in [0, 1)");
  require(c.train.weight_decay >= 0, "train.weight_decay must be >= 0");
  require(c.train.epochs >= 1, "train.epochs must be >= 1");
  require(c.train.batch_size >= 1, "train.batch_size must be >= 1");
  require(c.baselines.epochs >= 1, "baselines.epochs must be >= 1");
  require(c.federation.join_timeout_s > 0 && c.federation.handshake_timeout_s > 0,
          "federation.join_timeout_s and federation.handshake_timeout_s must be > 0");
  require(c.federation.max_frame_mb >= 1 && c.federation.max_frame_mb <= 4095,
          "federation.max_frame_mb must be between 1 and 4095");
  require(c.secagg.threshold >= 0, "secure_aggregation.threshold must be >= 0 (0 = floor(n/2)+1)");
  require(c.secagg.clip > 0 && c.secagg.weight_bound >= 1, "secure_aggregation.clip must be > 0 and weight_bound >= 1");
  require(c.secagg.complete_graph_max >= 2 && c.secagg.sparse_degree >= 0,
          "secure_aggregation.complete_graph_max must be >= 2 and sparse_degree >= 0");
  const auto& pv = c.privacy;
  if (pv.mode) {
    require(pv.noise_multiplier > 0 || pv.target_epsilon > 0,
            "privacy.noise_multiplier must be > 0 (or 0 with privacy.target_epsilon > 0 to calibrate it)");
    require(pv.noise_multiplier >= 0, "privacy.noise_multiplier must be > 0");
    require(pv.clip_norm > 0, "privacy.clip_norm must be > 0");
    require(pv.delta > 0 && pv.delta < 1, "privacy.delta must be in (0, 1)");
    require(pv.target_epsilon >= 0, "privacy.target_epsilon must be >= 0 (0 = no target)");
    require(pv.sampling_rate > 0 && pv.sampling_rate <= 1, "privacy.sampling_rate must be in (0, 1]");
    require(pv.target_quantile >= 0 && pv.target_quantile <= 1 && pv.clip_learning_rate > 0,
            "privacy.target_quantile must be in [0, 1] and privacy.clip_learning_rate > 0");
  }
  std::set<std::string> names(c.federation.sites.begin(), c.federation.sites.end());
  require(names.size() == c.federation.sites.size(), "federation.sites has duplicate names");
  // The [server] section is validated by protocols::make_strategy when the coordinator
  // builds its strategy (common/ does not link protocols/).
}

namespace {
std::string resolve(const std::string& base_dir, const std::string& p) {
  if (p.empty() || p.front() == '/') return p;
  return (std::filesystem::path(base_dir) / p).lexically_normal().string();
}
}  // namespace

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
  data.get_choice("source", c.data_source, parse_site_data_source, "\"folder\" or \"job-partition\"");
  data.get("dir", c.data_dir);
  data.get("job", c.data_job);
  data.get("partition_index", c.partition_index);
  data.reject_unknown();
  Section pol(subtable(root, "policy"), "policy");
  pol.get("backbone_sha256", c.policy.backbone_sha256);
  pol.get("min_sites", c.policy.min_sites);
  pol.get("require_secure_aggregation", c.policy.require_secure_aggregation);
  pol.get("max_rounds", c.policy.max_rounds);
  pol.get("max_local_epochs", c.policy.max_local_epochs);
  pol.get("share_training_metrics", c.policy.share_training_metrics);
  pol.get("max_backbone_bytes", c.policy.max_backbone_bytes);
  pol.get("coordinator_silence_s", c.policy.coordinator_silence_s);
  pol.get("max_batch_size", c.policy.max_batch_size);
  pol.get("max_learning_rate", c.policy.max_learning_rate);
  pol.get("max_hidden", c.policy.max_hidden);
  pol.get("max_round_seconds", c.policy.max_round_seconds);
  pol.reject_unknown();

  const std::string base = std::filesystem::path(path).parent_path().string();
  for (std::string* p : {&c.ca_cert, &c.cert, &c.key, &c.cache_dir, &c.data_dir, &c.data_job}) *p = resolve(base, *p);
  require(c.policy.max_backbone_bytes >= 1, "policy.max_backbone_bytes must be >= 1");
  require(c.policy.max_batch_size >= 1, "policy.max_batch_size must be >= 1");
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
  if (c.data_source == SiteDataSource::kFolder) require(!c.data_dir.empty(), "data.dir is required for data.source = \"folder\"");
  if (c.data_source == SiteDataSource::kJobPartition)
    require(!c.data_job.empty() && c.partition_index >= 0, "data.job and data.partition_index are required for \"job-partition\"");
  require(c.connect_timeout_s > 0 && c.max_backoff_s > 0 && c.give_up_after_s > 0, "site timeouts must be > 0");
  if (c.cache_dir.empty()) c.cache_dir = "runs/site-" + c.name;
  return c;
}

std::string privacy_mode_name(const std::optional<protocols::dp::NoiseMode>& mode) {
  return mode ? protocols::dp::to_string(*mode) : "none";
}

}  // namespace fedtl::app

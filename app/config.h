// Job configuration: the TOML job file (examples/hospitals/job.toml is the reference), its
// defaults, and validation. Parsing rejects unknown keys by name, wrong types and impossible
// values with a one-line fedtl::ConfigError.
#pragma once
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/data/classes.h"
#include "common/data/dicom.h"
#include "common/data/orthanc.h"
#include "common/data/partition.h"
#include "common/model/transfer_model.h"
#include "protocols/dp/mechanism.h"
#include "protocols/strategy.h"
#include "worker/site_policy.h"

namespace fedtl::app {

// The ranges validate() enforces (docs/configuration.md lists them per key). Each fits the
// narrowest type its value travels in (uint32 in the wire protocol, int in LibTorch calls).
inline constexpr int64_t kMaxSites = 10000;            // job.sites, secure_aggregation.*
inline constexpr int64_t kMaxRounds = 1000000;         // job.rounds
inline constexpr int64_t kMaxThreads = 1024;           // job.threads
inline constexpr int64_t kMaxEpochs = 100000;          // train/pretrain/baselines.epochs
inline constexpr int64_t kMaxBatchSize = 1 << 20;      // train/pretrain.batch_size
inline constexpr int64_t kMaxHidden = 1 << 20;         // head.hidden
inline constexpr int64_t kMaxImageSide = 8192;         // backbone.height, backbone.width
inline constexpr int64_t kMaxUnfrozen = 65535;         // backbone.unfrozen
inline constexpr int64_t kMaxClassId = 65535;          // data.*_classes
inline constexpr int64_t kMaxSamplesPerSite = int64_t{1} << 31;  // partition.samples_per_site, max_per_class
inline constexpr int64_t kMaxSamples = int64_t{1} << 53;         // sample counts and their bound (exact doubles)
inline constexpr double kMaxLearningRate = 1000;       // train.lr, train.backbone_lr, pretrain.lr, server.lr
inline constexpr double kMaxValidationFraction = 0.9;  // data.validation_fraction
// Every *_s key: at least a millisecond, at most 30 days.
inline constexpr double kMinSeconds = 0.001;
inline constexpr double kMaxSeconds = 30.0 * 86400;
// seconds_to_ms saturates here (about 10 years): sums of bounded keys stay exact below it, and
// steady_clock::now() plus it cannot overflow.
inline constexpr double kMaxMillisSeconds = 3650.0 * 86400;

// Seconds (a validated *_s value, or a sum of them) to milliseconds, saturating: NaN and
// values <= 0 give 0, values above kMaxMillisSeconds give that bound. Never overflows.
std::chrono::milliseconds seconds_to_ms(double seconds);

// Where a job's images come from (data.source).
enum class DataSource { kFashionMnist, kFolder, kDicom };  // "fashion-mnist" | "folder" | "dicom"
// Where a TLS site's images come from (site.toml data.source).
enum class SiteDataSource { kFolder, kJobPartition, kDicom, kOrthanc };  // "folder" | "job-partition" | "dicom" | "orthanc"

// How image files are read and labelled: the keys a job's [data] and a site's [data] share.
struct ImageDataConfig {
  std::string labels;         // data.labels: label manifest (CSV; common/data/manifest.h); "" = none
  std::string label_tag;      // data.label_tag: DICOM keyword or "gggg,eeee" giving the class
  common::MissingClasses missing_classes = common::MissingClasses::kError;  // "error" | "warn"
  common::BadFile on_bad_file = common::BadFile::kError;                    // "error" | "skip"
  int64_t max_image_pixels = common::kDefaultMaxImagePixels;
  std::vector<double> window;  // data.window: [] or [center, width]
  common::DicomFrame frame = common::DicomFrame::kFirst;                   // "first" | "middle"
};

struct DataConfig {
  DataSource source = DataSource::kFashionMnist;
  std::string dir;                       // fashion-mnist: IDX dir (default: Debian package dir);
                                         // folder / dicom: training data (class sub-folders or
                                         // data.labels)
  std::string test_dir;                  // folder / dicom: test data
  std::string test_labels;               // data.test_labels: test_dir's label manifest ("" = none:
                                         // class sub-folders or data.label_tag)
  // The job's classes by name, in the model's output order. Fashion-MNIST: empty (its ten
  // names are fixed). Other sources: empty = the classes found in the data, sorted by name
  // (CoordinatorJob fills it in once the data is read).
  std::vector<std::string> classes;
  // Indices into the class list (Fashion-MNIST's 0..9, or `classes`). Fashion-MNIST defaults
  // to {0,2,5,7,8} / {1,3,4,6,9}; other sources default to none / every class not in
  // source_classes (resolved with the data).
  std::vector<int64_t> source_classes{0, 2, 5, 7, 8};  // pre-training classes
  std::vector<int64_t> target_classes{1, 3, 4, 6, 9};  // the federated task
  // data.test_fraction: with no test_dir and no split column in data.labels, this share of
  // data.dir becomes the test set, split by patient when patient ids are known.
  double test_fraction = 0;
  ImageDataConfig images;
  // Each site holds out this stratified share of its labels for federated validation
  // (common/data/validation_split.h); 0 = no validation.
  double validation_fraction = 0.2;
};

struct BackboneConfig {
  std::string path = "runs/backbones/fmnist_cnn.pt";  // TorchScript file
  bool pretrain_if_missing = true;  // make it with the built-in CNN when the file is absent
  int64_t channels = 1, height = 28, width = 28;      // what the backbone takes
  std::vector<double> mean{0.2860}, std{0.3530};     // per-channel normalisation
  common::model::Freeze freeze = common::model::Freeze::kAllButLast;  // "all" | "all_but_last" | "none"
  int64_t unfrozen = 1;  // N top-level children (with parameters) trained for "all_but_last"
  // Gradual unfreezing (protocols/schedule.h): the first warmup_rounds rounds train the head
  // only; then 0 unfreezes every scheduled child at once, R > 0 one more child every R rounds.
  int64_t warmup_rounds = 0;
  int64_t unfreeze_every = 0;
  // Pins the coordinator's own backbone file: its SHA-256 (64 hex digits, as `fedtl pretrain`
  // prints it); a file that does not match is refused. "" = not pinned.
  std::string sha256;
  // The largest backbone the coordinator reads: file size and the archive's unpacked size.
  int64_t max_bytes = int64_t{2} << 30;
};

struct PretrainConfig {
  int64_t epochs = 3;
  int64_t batch_size = 128;
  double lr = 1e-3;  // Adam
};

struct HeadConfig {
  common::model::HeadType type = common::model::HeadType::kLinear;  // "linear" | "mlp"
  int64_t hidden = 128;         // mlp hidden width
};

struct TrainConfig {
  common::model::Optimizer optimizer = common::model::Optimizer::kSgd;  // "sgd" | "adam"
  double lr = 0.05;
  std::optional<double> backbone_lr;  // the trained backbone children's lr; unset = lr / 10
  double momentum = 0.0;
  double weight_decay = 0.0;
  int64_t epochs = 2;       // local epochs per round
  int64_t batch_size = 32;
};

struct BaselineConfig {
  bool enabled = false;      // --baselines
  int64_t epochs = 40;       // epochs for local-only / centralised / scratch training
};

// [evaluation]: what each site reports of the final model on its own validation split.
struct EvaluationConfig {
  // Epochs of head-only fine-tuning on the site's training split, from the global model,
  // before the personalised figures; 0 = no personalisation.
  int64_t personalize_epochs = 5;
};

// [federation]: the coordinator's side of a cross-institution job (fedtl coordinator).
struct FederationConfig {
  std::string listen = "0.0.0.0:7443";  // host:port to listen on
  std::vector<std::string> sites;        // certificate names admitted, in site-index order
  std::string ca_cert, cert, key;        // the coordinator's kit (PEM files)
  double join_timeout_s = 600;           // wait this long for every listed site at start
  double handshake_timeout_s = 30;       // TLS handshake + Hello
  int64_t max_frame_mb = 256;            // largest frame accepted
};

// [secure_aggregation]: masked updates; the coordinator learns only the weighted sum.
struct SecureAggregationConfig {
  std::optional<bool> enabled;     // unset: off for simulate, on for coordinator/worker jobs
  int64_t threshold = 0;           // t; 0 = floor(n/2) + 1 (at most the number of sites)
  double clip = 1.0;               // per-coordinate delta clip before fixed-point encoding
  double weight_bound = 100000;    // public bound on a site's sample count (w = samples / bound)
  // Round to nearest by default: with the ring's scale (~2^28 for 8 sites) the bias is below
  // 1e-8 per coordinate and it skips a keystream per update; stochastic rounding is unbiased.
  bool deterministic_rounding = true;
  int64_t complete_graph_max = 64; // complete neighbour graph up to this many sites
  int64_t sparse_degree = 0;       // neighbours above that (0 = 2*ceil(log2 n))
};

// [privacy]: client-level differential privacy (DP-FedAvg, McMahan et al. 2018).
struct PrivacyConfig {
  // "none" (nullopt) | "central" | "distributed" | "local"
  std::optional<protocols::dp::NoiseMode> mode;
  double noise_multiplier = 1.0; // sigma (set 0 with target_epsilon > 0 to calibrate it)
  double clip_norm = 1.0;        // C
  double delta = 1e-5;
  double target_epsilon = 0;     // > 0: stop (model saved) before exceeding it
  double sampling_rate = 1.0;    // q: each site takes part in a round with this probability
  bool adaptive_clip = false;    // clip norm tracks a quantile of update norms (Andrew et al.)
  double target_quantile = 0.5;
  double clip_learning_rate = 0.2;
};

struct JobConfig {
  std::string name = "job";
  uint64_t seed = 1;
  int64_t rounds = 30;
  std::string out = "runs/job";
  int64_t threads = 1;             // LibTorch intra-op threads per process (1 = reproducible)
  // fedtl simulate: sites that compute at once (0: one per core); the others hold only their
  // labels and feature caches (app/site_trainer.h ModelPool).
  int64_t concurrency = 0;
  // job.sites_per_round: the sites each training round samples, seeded by the job seed and
  // the round: a count (sites_per_round > 0) or a fraction of the federation
  // (sites_per_round_fraction in (0, 1]); both 0: every site. See sites_per_round_count().
  int64_t sites_per_round = 0;
  double sites_per_round_fraction = 0;
  double round_timeout_s = 600;    // per-round deadline for site updates
  double liveness_timeout_s = 60;  // silence (no update, no heartbeat) that marks a site dead
  double quorum_wait_s = 3600;     // below min_sites: wait this long for sites to (re)join
  // The status page (/, /status, /metrics; app/status_board.h): 0 = off. Loopback unless
  // the job names another address.
  int64_t status_port = 0;
  std::string status_address = "127.0.0.1";
  bool force = false;              // --force: overwrite a previous run's outputs in `out`
  int64_t min_sites = 1;           // quorum: fewer reports abandon the round
  // Robust aggregation against a site that lies (docs/security.md):
  int64_t max_samples_per_site = 0;  // job.: weight claims clipped here (0: largest at join,
                                     // at most secure_aggregation.weight_bound)
  bool equal_weighting = false;      // server.weighting = "equal" (default "samples")
  double max_update_norm = 0;        // server.: plain updates above this L2 norm are dropped
                                     // (0: 1e4 * sqrt(parameters))
  // Stop when the federation's validation loss has not improved for this many validations
  // (0 = never); needs data.validation_fraction > 0.
  int64_t early_stopping_patience = 0;
  // model.pt is the model with the best validation loss, model_last.pt the last one (with
  // validation; without it model.pt is the last model).
  bool keep_best = true;
  DataConfig data;
  common::PartitionSpec partition;         // partition.sites is the number of sites
  BackboneConfig backbone;
  PretrainConfig pretrain;
  HeadConfig head;
  TrainConfig train;
  protocols::StrategySpec server;
  BaselineConfig baselines;
  EvaluationConfig evaluation;
  FederationConfig federation;
  SecureAggregationConfig secagg;
  PrivacyConfig privacy;
  // Not from the file: set by --resume (continue from <out>/checkpoint.bin).
  bool resume = false;
  // Not a job-file key: this run is a baseline inside another job (simulate's federated
  // scratch run), whose warnings the outer job has already logged; its own go to debug.
  bool baseline_run = false;
};

// site.toml: one site's kit, data and policy (fedtl worker).
struct SiteConfig {
  std::string name;                 // must equal the certificate's CN
  std::string coordinator;          // host:port
  std::string coordinator_name;     // CN the coordinator's certificate must have ("" = any from the CA)
  std::string ca_cert, cert, key;   // the site's kit (PEM files)
  std::string cache_dir;            // backbones kept by digest (default runs/site-<name>)
  // [data] source = "folder": dir is a folder of class sub-folders; "job-partition": the
  // site's slice (partition_index) of the partition `job` (a job.toml) defines — what
  // `fedtl simulate` gives that site, for demos and equivalence checks.
  // "dicom": dir is a folder of DICOM files (class sub-folders, data.labels or data.label_tag).
  SiteDataSource data_source = SiteDataSource::kFolder;
  std::string data_dir, data_job;
  int64_t partition_index = -1;
  ImageDataConfig data_images;  // labels, label_tag, missing_classes, on_bad_file, ...
  // "orthanc": the instances an Orthanc query selects (app/orthanc_config.h: url, credentials,
  // query, cache_dir — default <cache_dir>/orthanc —, ca_file); labels from data.label_tag or
  // data.labels keyed by sop_instance_uid. Site files only: a job cannot name an Orthanc.
  common::OrthancSource orthanc;
  double connect_timeout_s = 30, max_backoff_s = 30, give_up_after_s = 3600;
  worker::SitePolicy policy;
};

// The job file's spelling of a privacy mode: "none" for nullopt.
std::string privacy_mode_name(const std::optional<protocols::dp::NoiseMode>& mode);

// Parses site.toml; relative paths are resolved against the file's directory. Throws
// ConfigError naming unknown keys and bad values.
SiteConfig load_site_config(const std::string& path);

// Parses a TOML file. Relative paths inside stay as written (resolved against the current
// directory by the caller). Throws ConfigError.
JobConfig load_job_config(const std::string& path);
// Parses TOML text (for tests and for job specs received over the wire).
JobConfig parse_job_config(const std::string& toml_text, const std::string& origin = "<string>");
// Checks ranges and consistency; throws ConfigError naming the offending key.
void validate(const JobConfig& cfg);

// job.sites_per_round resolved for a federation of num_sites sites: 0 (every site) or a count
// in [1, num_sites] (a fraction rounds to the nearest count, at least 1).
uint32_t sites_per_round_count(const JobConfig& cfg, uint32_t num_sites);

}  // namespace fedtl::app

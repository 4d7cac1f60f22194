// Job configuration: the TOML job file (examples/hospitals/job.toml is the reference), its
// defaults, and validation. Parsing rejects unknown keys by name, wrong types and impossible
// values with a one-line fedtl::ConfigError.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "common/partition.h"
#include "protocols/strategy.h"

namespace fedtl::common {

struct DataConfig {
  std::string source = "fashion-mnist";  // "fashion-mnist" | "folder"
  std::string dir;                       // fashion-mnist: IDX dir (default: Debian package dir);
                                         // folder: training image folder (class sub-folders)
  std::string test_dir;                  // folder: test image folder
  std::vector<int64_t> source_classes{0, 2, 5, 7, 8};  // pre-training classes
  std::vector<int64_t> target_classes{1, 3, 4, 6, 9};  // the federated task
};

struct BackboneConfig {
  std::string path = "runs/backbones/fmnist_cnn.pt";  // TorchScript file
  bool pretrain_if_missing = true;  // make it with the built-in CNN when the file is absent
  int64_t channels = 1, height = 28, width = 28;      // what the backbone takes
  std::vector<double> mean{0.2860}, std{0.3530};     // per-channel normalisation
  std::string freeze = "all_but_last";  // "all" | "all_but_last" | "none"
  int64_t unfrozen = 1;                 // N top-level children trained for "all_but_last"
};

struct PretrainConfig {
  int64_t epochs = 3;
  int64_t batch_size = 128;
  double lr = 1e-3;  // Adam
};

struct HeadConfig {
  std::string type = "linear";  // "linear" | "mlp"
  int64_t hidden = 128;         // mlp hidden width
};

struct TrainConfig {
  std::string optimizer = "sgd";  // "sgd" | "adam"
  double lr = 0.05;
  double momentum = 0.0;
  double weight_decay = 0.0;
  int64_t epochs = 2;       // local epochs per round
  int64_t batch_size = 32;
};

struct BaselineConfig {
  bool enabled = false;      // --baselines
  int64_t epochs = 40;       // epochs for local-only / centralised / scratch training
};

struct JobConfig {
  std::string name = "job";
  uint64_t seed = 1;
  int64_t rounds = 30;
  std::string out = "runs/job";
  int64_t threads = 1;             // LibTorch intra-op threads per process (1 = reproducible)
  double round_timeout_s = 600;    // per-round deadline for site updates
  int64_t min_sites = 1;           // quorum: fewer reports abandon the round
  DataConfig data;
  PartitionSpec partition;         // partition.sites is the number of sites
  BackboneConfig backbone;
  PretrainConfig pretrain;
  HeadConfig head;
  TrainConfig train;
  protocols::StrategySpec server;
  BaselineConfig baselines;
};

// Parses a TOML file. Relative paths inside stay as written (resolved against the current
// directory by the caller). Throws ConfigError.
JobConfig load_job_config(const std::string& path);
// Parses TOML text (for tests and for job specs received over the wire).
JobConfig parse_job_config(const std::string& toml_text, const std::string& origin = "<string>");
// Checks ranges and consistency; throws ConfigError naming the offending key.
void validate(const JobConfig& cfg);

}  // namespace fedtl::common

// The fedtl subcommands, callable from main() and from tests.
#pragma once
#include <optional>
#include <string>

#include "common/config.h"

namespace fedtl::cli {

struct SimulateOverrides {
  std::optional<int64_t> sites, rounds;
  std::optional<uint64_t> seed;
  std::optional<std::string> out;
  bool baselines = false;
};

struct SimulateResult {
  double federated_accuracy = 0;
  std::string model_sha256;
  std::string out_dir;
};

// Applies command-line overrides to a loaded job and validates the result.
common::JobConfig apply_overrides(common::JobConfig cfg, const SimulateOverrides& o);

// `fedtl simulate`: N sites as threads over the in-process transport. Writes metrics.jsonl,
// summary.json, model.pt and accuracy.svg to cfg.out. Throws fedtl::Error.
SimulateResult run_simulate(const common::JobConfig& cfg);

// `fedtl pretrain`: trains the built-in CNN on the source classes and writes the backbone
// (TorchScript) to `out_path` (default cfg.backbone.path).
void run_pretrain(const common::JobConfig& cfg, const std::string& out_path);

}  // namespace fedtl::cli

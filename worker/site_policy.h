// A hospital decides what runs on its data: the job a coordinator sends is checked against
// the site's policy (site.toml [policy]) before any data is touched.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "protocols/fedtl.pb.h"

namespace fedtl::worker {

// What a hospital accepts to run on its data (site.toml [policy]).
struct SitePolicy {
  std::vector<std::string> backbone_sha256;  // allowed backbone digests; empty = any
  int64_t min_sites = 1;                     // refuse jobs whose quorum is smaller
  bool require_secure_aggregation = false;
  int64_t max_rounds = 100000;
  int64_t max_local_epochs = 1000;
  // Bounds on the work a job may ask for (refused before any work, the reason sent back).
  int64_t max_batch_size = 65536;
  double max_learning_rate = 10;             // training.lr, and the backbone's learning rate
  double max_backbone_lr = 10;               // training.backbone_lr (the unfrozen children's)
  int64_t max_unfrozen_children = 65535;     // backbone children a job may train (0: head only)
  int64_t max_hidden = 65536;                // an MLP head's hidden width
  double max_round_seconds = 86400;          // a RoundStart's deadline
  bool share_training_metrics = true;        // false: only updates leave the site
  bool share_input_stats = true;             // false: Ready carries no input statistics
  // The largest backbone (bytes) the site downloads; a JobSpec announcing more is refused
  // before anything is allocated for it.
  int64_t max_backbone_bytes = int64_t{2} << 30;
  // The longest the coordinator may stay silent (it sends heartbeats while sites wait) before
  // the worker gives up and exits non-zero.
  double coordinator_silence_s = 300;
};


// Returns "" when `job` is within `policy`, else a one-line reason naming the rule.
std::string policy_violation(const SitePolicy& policy, const v1::JobSpec& job);

}  // namespace fedtl::worker

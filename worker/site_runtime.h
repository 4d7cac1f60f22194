// What a worker needs from the site's machine-learning side. The worker protocol loop
// (worker.h) is plain code over this interface and the transport; the LibTorch
// implementation lives with the application (app/site_trainer.h), so the protocol code
// compiles without LibTorch.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "protocols/fedtl.pb.h"

namespace fedtl::worker {

struct LocalUpdate {
  std::vector<float> delta;  // local params - global params
  uint64_t num_samples = 0;
  double train_loss = 0, train_accuracy = 0, train_seconds = 0;
};

class SiteRuntime {
 public:
  virtual ~SiteRuntime() = default;
  // Builds the model from the verified backbone per the job and caches the frozen-prefix
  // features of the site's data. Returns the number of local training samples. Throws
  // fedtl::Error (ModelError, ConfigError) when the job cannot run here; the message is
  // sent back to the coordinator.
  virtual uint64_t prepare(const v1::JobSpec& job, const std::string& backbone_bytes) = 0;
  // Trains from `global` for the job's local epochs and returns the delta. `round` is
  // 1-based and seeds the local shuffling together with the job seed and site index.
  virtual LocalUpdate train_round(uint32_t round, const std::vector<float>& global) = 0;
};

}  // namespace fedtl::worker

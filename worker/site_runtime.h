// What a worker needs from the site's machine-learning side. The worker protocol loop
// (worker.h) is plain code over this interface and the transport; the LibTorch
// implementation lives with the application (app/site_trainer.h), so the protocol code
// compiles without LibTorch.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "protocols/fedtl.pb.h"

namespace fedtl::worker {

// A site's figures about one model on its validation split (none: samples = 0).
struct ValidationFigures {
  double loss_sum = 0;   // summed cross-entropy
  uint64_t samples = 0;
  uint64_t correct = 0;
};

struct LocalUpdate {
  std::vector<float> delta;  // local params - global params (the round's trained values only)
  uint64_t num_samples = 0;
  double train_loss = 0, train_accuracy = 0, train_seconds = 0;
  // The global model this round started from, on the site's validation split.
  ValidationFigures validation;
};

class SiteRuntime {
 public:
  virtual ~SiteRuntime() = default;
  // Builds the model from the verified backbone per the job and caches the frozen-prefix
  // features of the site's data. Returns the number of local training samples. Throws
  // fedtl::Error (ModelError, ConfigError) when the job cannot run here; the message is
  // sent back to the coordinator.
  virtual uint64_t prepare(const v1::JobSpec& job, const std::string& backbone_bytes) = 0;
  // Evaluates `global` on the site's validation split, then trains from it for the job's local
  // epochs and returns the delta. `round` is 1-based and seeds the local shuffling together
  // with the job seed and site index; it also selects the round's trained set
  // (protocols/schedule.h): `global` and the delta hold that round's trained values only.
  virtual LocalUpdate train_round(uint32_t round, const std::vector<float>& global) = 0;
  // The model `params` (round `round`'s trained values) on the validation split, no training
  // (RoundStart.validate_only, after the last round).
  virtual ValidationFigures validate(uint32_t round, const std::vector<float>& params) = 0;
  // After prepare(): summary figures of the training images as the backbone sees them
  // (protocols::input_stats_to_wire of common::input_stats), sent in Ready for the
  // coordinator's domain-gap check. Empty (images 0) = none to report.
  virtual v1::InputStats input_stats() const { return {}; }
  // After the last round (RoundStart.site_evaluation): `params` (round `round`'s trained
  // values) on the validation split as the metrics a clinician reads, and, when
  // personalize_epochs > 0, the same after fine-tuning the head alone for that many epochs on
  // the training split from `params` (nothing of it leaves the site but the figures). nullopt:
  // nothing to report (no validation split, or a runtime that does not evaluate).
  virtual std::optional<v1::SiteEvaluation> evaluate_site(uint32_t round, const std::vector<float>& params,
                                                          uint32_t personalize_epochs) {
    return std::nullopt;
  }
};

}  // namespace fedtl::worker

// The coordinator's checkpoint: everything needed to continue a job after a crash from the
// last completed round and reach the same final model as an uninterrupted run.
//
// File format (little-endian): "FDTLCKPT" | u32 version (2) | u64 payload length | payload |
// SHA-256(payload) (32 raw bytes). A torn or corrupt file fails the length or checksum test.
// Files are replaced atomically (write, fsync, rename); the previous checkpoint is kept as
// "<path>.prev" and used when the newest one is unreadable.
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace fedtl::common {

struct Checkpoint {
  std::string job_fingerprint;                     // SHA-256 of the job; resume refuses another job
  uint32_t round = 0;                              // last completed round
  std::vector<float> params;                       // global trainable parameters after `round`
  std::vector<std::vector<float>> strategy_state;  // server optimiser moments (FedAdam/FedYogi)
  std::string accountant_state;                    // DP accountant (empty without DP)
  double clip_norm = 0;                            // DP clip norm for the next round
  std::vector<std::string> metrics_lines;          // metrics.jsonl lines of rounds 1..round
  // Federated validation (job.keep_best, job.early_stopping_patience): the model with the best
  // validation loss so far (empty: none validated yet), its loss (NaN: none) and round, and
  // the validations since it without improvement.
  std::vector<float> best_params;
  double best_validation_loss = std::numeric_limits<double>::quiet_NaN();
  uint32_t best_round = 0;
  uint32_t rounds_since_best = 0;
};

// Serialises and writes atomically, keeping the previous file as path + ".prev". Throws IoError.
void write_checkpoint(const std::string& path, const Checkpoint& ckpt);
// Reads and verifies one file. Throws DataError naming the file and the problem (missing,
// truncated, bad magic/version, checksum mismatch, malformed payload).
Checkpoint read_checkpoint(const std::string& path);
// The newest good checkpoint: `path`, or `path.prev` when `path` is corrupt (with a warning).
// Throws DataError when neither is usable.
Checkpoint read_latest_checkpoint(const std::string& path);

}  // namespace fedtl::common

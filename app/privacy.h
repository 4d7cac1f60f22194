// `fedtl privacy`: the RDP accountant from the command line (no job, no data).
//
//   fedtl privacy epsilon --noise-multiplier σ --sampling-rate q --steps T --delta δ
//       prints "epsilon E", "delta δ", "order α" (the optimal RDP order), "conversion C"
//   fedtl privacy noise --target-epsilon ε --sampling-rate q --steps T --delta δ
//       prints "noise_multiplier σ" (the smallest σ with ε(σ) ≤ target), then "epsilon",
//       "delta", "order" reached with it
// Both take --orders default|tf-privacy|opacus and --conversion improved|classic (see
// protocols/dp/accountant.h) to reproduce other accountants' published numbers.
// The argument parsing lives in cli/add_privacy.cc.
#pragma once
#include <cstdint>
#include <ostream>
#include <string>

namespace fedtl::app {

struct PrivacyArgs {
  double noise_multiplier = 0;  // epsilon: σ
  double target_epsilon = 0;    // noise: ε
  double sampling_rate = 0;     // q
  int64_t steps = 0;            // T
  double delta = 0;             // δ
  std::string orders = "default";       // default | tf-privacy | opacus
  std::string conversion = "improved";  // improved | classic
};

// The two actions, writing "key value" lines to `out`. Throw fedtl::ConfigError (one line) for
// bad values or an unreachable target.
void run_privacy_epsilon(const PrivacyArgs& args, std::ostream& out);
void run_privacy_noise(const PrivacyArgs& args, std::ostream& out);

}  // namespace fedtl::app

// Differential privacy on the coordinator's side: the clip norm of a round and DP-FedAvg
// post-processing of the aggregate.
#include <random>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "common/errors.h"
#include "common/seeds.h"
#include "coordinator/internal.h"
#include "protocols/messages.h"

namespace fedtl::coordinator {

using protocols::from_frame;
using common::MessageType;
using protocols::to_frame;

double Coordinator::current_clip_norm() const {
  return dp_ ? (dp_->clipper ? dp_->clipper->clip_norm() : dp_->params.clip_norm) : 0.0;
}

// DP-FedAvg on the coordinator: the mean of equally weighted (clipped) deltas becomes
// (Σ Δ_i + N(0, σ²C²) in central mode) / (expected sites q·N); the accountant records the
// round with the noise multiplier the sum really carries.
void Coordinator::privatize(uint32_t round, Aggregate& agg) {
  namespace dp = protocols::dp;
  dp::DpParams params = dp_->params;
  params.clip_norm = current_clip_norm();
  // The secret (0 in simulations) keys the stream so sites cannot predict and remove the noise.
  dp::GaussianNoise noise(common::derive_seed(common::derive_seed(opt_.job.seed(), common::seed_stream::kCentralNoise, round),
                                              opt_.privacy.noise_secret));
  std::vector<double> sum(agg.mean.size());
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = agg.mean[i] * static_cast<double>(agg.reported);
  if (params.mode == dp::NoiseMode::kCentral) noise.add(sum, dp::aggregate_noise_stddev(params));
  for (size_t i = 0; i < sum.size(); ++i) agg.mean[i] = sum[i] / static_cast<double>(dp_->expected_sites);
  const double sigma = params.mode == dp::NoiseMode::kDistributed
                           ? dp::effective_noise_multiplier(params, agg.reported, dp_->expected_sites)
                           : params.noise_multiplier;
  dp_->accountant.step(sigma, dp_->sampling_rate);
  if (dp_->clipper) dp_->clipper->update(agg.below_clip, agg.reported, static_cast<double>(dp_->expected_sites), noise);
}

}  // namespace fedtl::coordinator

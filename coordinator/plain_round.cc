// A plain round: each site's Update in the clear, folded in site-index order.
#include <string>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "common/errors.h"
#include "coordinator/internal.h"
#include "protocols/messages.h"

namespace fedtl::coordinator {

using protocols::from_frame;
using common::MessageType;
using protocols::to_frame;

std::optional<Coordinator::Aggregate> Coordinator::plain_aggregate(uint32_t round, Clock::time_point deadline) {
  protocols::WeightedMean mean(params_.size());
  const uint64_t bound = sample_bound();
  const double max_norm =
      opt_.max_update_norm > 0 ? opt_.max_update_norm : 1e4 * std::sqrt(static_cast<double>(params_.size()));
  double loss_sum = 0;
  size_t below_clip = 0;
  for (auto& s : sites_) {  // site-index order: the sum does not depend on arrival order
    if (!s->info.active || !s->in_round) continue;  // not sampled this round: not expected
    try {
      for (;;) {
        common::Frame f = recv_live(*s->conn, deadline, opt_.liveness_timeout);
        auto up = from_frame<v1::Update>(f);
        if (up.round() < round) continue;  // late update from a round that already closed
        if (up.round() != round)
          throw ProtocolError("update for round " + std::to_string(up.round()) + " during round " +
                              std::to_string(round));
        if (up.num_samples() == 0) throw ProtocolError("update with 0 samples");
        auto delta = protocols::unpack_tensor(up.delta(), params_.size());
        double sq = 0;
        for (float v : delta) sq += static_cast<double>(v) * v;
        if (!(std::sqrt(sq) <= max_norm))  // NaN and inf fail this too
          throw ProtocolError("update of L2 norm " + std::to_string(std::sqrt(sq)) + " exceeds the bound " +
                              std::to_string(max_norm) + " (server.max_update_norm)");
        uint64_t samples = up.num_samples();
        if (samples > bound) {
          spdlog::warn("round {}: site '{}' claims {} samples; weighted as {} (job.max_samples_per_site)", round,
                       s->info.name, samples, bound);
          samples = bound;
        }
        double weight = opt_.equal_weighting ? 1.0 : static_cast<double>(samples);
        if (dp_) {  // every site counts the same; in central mode the coordinator clips
          weight = 1.0;
          if (dp_->params.mode == protocols::dp::NoiseMode::kCentral)
            below_clip += protocols::dp::clip_l2(delta, current_clip_norm()) <= current_clip_norm() ? 1 : 0;
        }
        mean.add(delta, weight);
        loss_sum += up.train_loss() * weight;
        break;
      }
    } catch (const TimeoutError&) {
      spdlog::warn("round {}: site '{}' missed the deadline; left out of this round", round, s->info.name);
    } catch (const fedtl::Error& e) {
      drop(*s, e.what());
    }
  }
  if (mean.count() == 0) return std::nullopt;
  return Aggregate{mean.mean(), mean.count(), loss_sum / mean.total_weight(), below_clip};
}

uint64_t Coordinator::sample_bound() const {
  if (opt_.max_samples_per_site > 0) return opt_.max_samples_per_site;
  uint64_t largest = 1;
  for (const auto& s : sites_) largest = std::max(largest, s->info.num_samples);
  return std::min(largest, opt_.sample_count_cap);
}

}  // namespace fedtl::coordinator

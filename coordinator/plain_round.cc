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
  double loss_sum = 0;
  size_t below_clip = 0;
  for (auto& s : sites_) {  // site-index order: the sum does not depend on arrival order
    if (!s->info.active) continue;
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
        double weight = static_cast<double>(up.num_samples());
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

}  // namespace fedtl::coordinator

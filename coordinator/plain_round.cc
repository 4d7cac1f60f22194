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

std::optional<Coordinator::Aggregate> Coordinator::plain_aggregate(uint32_t round, Clock::time_point deadline,
                                                                   size_t length, bool validate_only) {
  protocols::WeightedMean mean(length);
  const uint64_t bound = sample_bound();
  const double max_norm =
      opt_.max_update_norm > 0 ? opt_.max_update_norm : 1e4 * std::sqrt(static_cast<double>(params_.size()));
  double loss_sum = 0, acc_sum = 0, metric_weight = 0;
  double val_loss = 0, val_samples = 0, val_correct = 0;
  size_t below_clip = 0, validated = 0;
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
        if (validate_only && up.delta().count() != 0) continue;  // a late training update of this round
        // A site's validation figures, bounded like its sample count: a claim it cannot have
        // made honestly is left out (logged); they count once the update is accepted.
        double site_loss = 0, site_correct = 0, site_samples = 0;
        if (up.validation_samples() > 0) {
          const double n = static_cast<double>(std::min<uint64_t>(up.validation_samples(), bound));
          const double ls = up.validation_loss_sum(), c = static_cast<double>(up.validation_correct());
          if (std::isfinite(ls) && ls >= 0 && c <= static_cast<double>(up.validation_samples())) {
            const double scale = n / static_cast<double>(up.validation_samples());
            site_loss = ls * scale;
            site_correct = c * scale;
            site_samples = n;
          } else {
            spdlog::warn("round {}: site '{}' sent impossible validation figures; left out of the validation", round,
                         s->info.name);
          }
        }
        auto count_validation = [&] {
          if (site_samples == 0) return;
          val_loss += site_loss;
          val_correct += site_correct;
          val_samples += site_samples;
          ++validated;
        };
        if (validate_only) {
          count_validation();
          break;
        }
        if (up.num_samples() == 0) throw ProtocolError("update with 0 samples");
        auto delta = protocols::unpack_tensor(up.delta(), length);
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
        acc_sum += up.train_accuracy() * weight;
        metric_weight += weight;
        count_validation();
        break;
      }
    } catch (const TimeoutError&) {
      spdlog::warn("round {}: site '{}' missed the deadline; left out of this round", round, s->info.name);
    } catch (const fedtl::Error& e) {
      drop(*s, e.what());
    }
  }
  Validation v;
  if (val_samples > 0) v = Validation{val_loss / val_samples, val_correct / val_samples, val_samples};
  if (validate_only) {
    Aggregate a;
    a.reported = validated;
    a.validation = v;
    return a;
  }
  if (mean.count() == 0) {
    if (val_samples == 0) return std::nullopt;
    Aggregate a;  // nothing to apply, but the figures of the model the round started from
    a.validation = v;
    return a;
  }
  Aggregate a{mean.mean(), mean.count(), loss_sum / mean.total_weight(), below_clip};
  a.train_accuracy = acc_sum / metric_weight;
  a.validation = v;
  return a;
}

uint64_t Coordinator::sample_bound() const {
  if (opt_.max_samples_per_site > 0) return opt_.max_samples_per_site;
  uint64_t largest = 1;
  for (const auto& s : sites_) largest = std::max(largest, s->info.num_samples);
  return std::min(largest, opt_.sample_count_cap);
}

}  // namespace fedtl::coordinator

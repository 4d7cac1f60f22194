// A plain round: each site's Update in the clear, folded into an exact sum as it arrives.
#include <functional>
#include <memory>
#include <string>
#include <vector>

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
  // Updates fold into the exact sum as they arrive (protocols::WeightedMean: order-independent
  // bits), so none is buffered behind a slower site. The per-site scalars (losses, validation
  // figures) are kept per slot and summed in site order at the end: they are reported, and a
  // double sum's last bits would depend on arrival order.
  protocols::WeightedMean mean(length);
  const uint64_t bound = sample_bound();
  const double max_norm =
      opt_.max_update_norm > 0 ? opt_.max_update_norm : 1e4 * std::sqrt(static_cast<double>(params_.size()));
  struct Figures {
    double weight = 0, train_loss = 0, train_accuracy = 0;  // weight 0: no update counted
    double val_loss = 0, val_correct = 0, val_samples = 0;  // val_samples 0: none counted
  };
  std::vector<Figures> figures(sites_.size());
  size_t below_clip = 0;
  std::vector<Site*> expected;
  for (auto& s : sites_)
    if (s->info.active && s->in_round) expected.push_back(s.get());  // not sampled: not expected
  auto take = [&](Site& s, common::Frame f) -> bool {
    auto up = from_frame<v1::Update>(f);
    f = {};  // the frame's bytes are not needed once parsed
    if (up.round() < round) return false;  // late update from a round that already closed
    if (up.round() != round)
      throw ProtocolError("update for round " + std::to_string(up.round()) + " during round " + std::to_string(round));
    if (validate_only && up.delta().count() != 0) return false;  // a late training update of this round
    Figures& fig = figures[s.info.index];
    // A site's validation figures, bounded like its sample count: a claim it cannot have
    // made honestly is left out (logged); they count once the update is accepted.
    Figures val;
    if (up.validation_samples() > 0) {
      const double n = static_cast<double>(std::min<uint64_t>(up.validation_samples(), bound));
      const double ls = up.validation_loss_sum(), c = static_cast<double>(up.validation_correct());
      if (std::isfinite(ls) && ls >= 0 && c <= static_cast<double>(up.validation_samples())) {
        const double scale = n / static_cast<double>(up.validation_samples());
        val.val_loss = ls * scale;
        val.val_correct = c * scale;
        val.val_samples = n;
      } else {
        spdlog::warn("round {}: site '{}' sent impossible validation figures; left out of the validation", round,
                     s.info.name);
      }
    }
    auto count_validation = [&] {
      fig.val_loss = val.val_loss;
      fig.val_correct = val.val_correct;
      fig.val_samples = val.val_samples;
    };
    if (validate_only) {
      count_validation();
      return true;
    }
    if (up.num_samples() == 0) throw ProtocolError("update with 0 samples");
    auto delta = protocols::unpack_tensor(up.delta(), length);
    up.clear_delta();
    uint64_t samples = up.num_samples();
    if (samples > bound) {
      spdlog::warn("round {}: site '{}' claims {} samples; weighted as {} (job.max_samples_per_site)", round,
                   s.info.name, samples, bound);
      samples = bound;
    }
    uint64_t weight = opt_.equal_weighting ? 1 : samples;
    auto squared_norm = [&] {
      double sq = 0;
      for (float v : delta) sq += static_cast<double>(v) * v;
      return sq;
    };
    auto norm_error = [&](double sq) {
      return ProtocolError("update of L2 norm " + std::to_string(std::sqrt(sq)) + " exceeds the bound " +
                           std::to_string(max_norm) + " (server.max_update_norm)");
    };
    if (dp_) {  // every site counts the same; in central mode the coordinator clips
      weight = 1;
      const double sq = squared_norm();
      if (!(std::sqrt(sq) <= max_norm)) throw norm_error(sq);  // NaN and inf fail this too
      if (dp_->params.mode == protocols::dp::NoiseMode::kCentral)
        below_clip += protocols::dp::clip_l2(delta, current_clip_norm()) <= current_clip_norm() ? 1 : 0;
      mean.add(delta, weight);
    } else {
      // The norm comes from the pass that folds the update in; one beyond the bound is taken
      // back out (exactly: the sum is in integers).
      double sq = 0;
      try {
        sq = mean.add(delta, weight);
      } catch (const ProtocolError&) {  // a value beyond the sum's range (or not finite):
        sq = squared_norm();
        if (!(std::sqrt(sq) <= max_norm)) throw norm_error(sq);  // say so as the bound it broke
        throw;
      }
      if (!(std::sqrt(sq) <= max_norm)) {
        mean.subtract(delta, weight);
        throw norm_error(sq);
      }
    }
    fig.weight = static_cast<double>(weight);
    fig.train_loss = up.train_loss();
    fig.train_accuracy = up.train_accuracy();
    count_validation();
    return true;
  };
  receive_each(
      expected, deadline, take,
      [&](Site& s) { spdlog::warn("round {}: site '{}' missed the deadline; left out of this round", round, s.info.name); },
      [&](Site& s, const std::string& why) { drop(s, why); });

  double loss_sum = 0, acc_sum = 0, metric_weight = 0;
  double val_loss = 0, val_samples = 0, val_correct = 0;
  size_t validated = 0;
  for (const Figures& f : figures) {  // site order
    loss_sum += f.train_loss * f.weight;
    acc_sum += f.train_accuracy * f.weight;
    metric_weight += f.weight;
    if (f.val_samples == 0) continue;
    val_loss += f.val_loss;
    val_correct += f.val_correct;
    val_samples += f.val_samples;
    ++validated;
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

void Coordinator::receive_each(const std::vector<Site*>& sites, Clock::time_point deadline,
                               const std::function<bool(Site&, common::Frame)>& take,
                               const std::function<void(Site&)>& late,
                               const std::function<void(Site&, const std::string&)>& failed) {
  const milliseconds liveness = opt_.liveness_timeout;
  auto bell = std::make_shared<common::ArrivalBell>();
  bool watched = true;
  for (size_t i = 0; i < sites.size() && watched; ++i) watched = sites[i]->conn->watch(bell, i);
  if (!watched) {  // a backend without arrival notices (MPI): one site after the other
    for (Site* s : sites) s->conn->watch(nullptr, 0);
    for (Site* s : sites) {
      try {
        while (!take(*s, recv_live(*s->conn, deadline, liveness))) {
        }
      } catch (const TimeoutError&) {
        late(*s);
      } catch (const fedtl::Error& e) {
        failed(*s, e.what());
      }
    }
    return;
  }
  std::vector<Clock::time_point> heard(sites.size(), Clock::now());
  std::vector<char> open(sites.size(), 1);
  size_t left = sites.size();
  auto close_out = [&](size_t i) {
    open[i] = 0;
    --left;
    sites[i]->conn->watch(nullptr, 0);
  };
  while (left > 0) {
    Clock::time_point wake = deadline;
    for (size_t i = 0; i < sites.size(); ++i)
      if (open[i]) wake = std::min(wake, heard[i] + liveness);
    const auto tag = bell->wait_until(wake);
    if (!tag) {
      const auto now = Clock::now();
      if (now >= deadline) break;
      for (size_t i = 0; i < sites.size(); ++i) {
        if (!open[i] || now < heard[i] + liveness) continue;
        close_out(i);
        failed(*sites[i], "no message or heartbeat for " + std::to_string(liveness.count() / 1000) +
                              " s: the site is gone");
      }
      continue;
    }
    const size_t i = static_cast<size_t>(*tag);
    if (i >= sites.size() || !open[i]) continue;  // a ring after the site was done
    Site& s = *sites[i];
    try {
      for (;;) {
        common::Frame f;
        try {
          f = s.conn->recv(milliseconds(0));  // queued already: the bell rang for it
        } catch (const TimeoutError&) {
          break;  // taken by an earlier ring
        }
        heard[i] = Clock::now();
        if (f.type == common::MessageType::kHeartbeat) continue;
        if (take(s, std::move(f))) {
          close_out(i);
          break;
        }
      }
    } catch (const fedtl::Error& e) {
      close_out(i);
      failed(s, e.what());
    }
  }
  for (size_t i = 0; i < sites.size(); ++i) {
    if (!open[i]) continue;
    close_out(i);
    late(*sites[i]);
  }
}

uint64_t Coordinator::sample_bound() const {
  if (opt_.max_samples_per_site > 0) return opt_.max_samples_per_site;
  uint64_t largest = 1;
  for (const auto& s : sites_) largest = std::max(largest, s->info.num_samples);
  return std::min(largest, opt_.sample_count_cap);
}

}  // namespace fedtl::coordinator

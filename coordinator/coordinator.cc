// The run loop: rounds, their deadline and quorum, the server strategy, evaluation.
// Joining lives in join.cc, aggregation in plain_round.cc and secure_relay.cc, differential
// privacy in privacy.cc.
#include "coordinator/coordinator.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "common/errors.h"
#include "common/seeds.h"
#include "coordinator/heartbeat.h"
#include "coordinator/internal.h"
#include "protocols/messages.h"
#include "protocols/job_check.h"
#include "protocols/secure_round.h"
#include "protocols/schedule.h"

namespace fedtl::coordinator {

using protocols::from_frame;
using common::MessageType;
using protocols::to_frame;

milliseconds until(Clock::time_point deadline) {
  return std::max(std::chrono::duration_cast<milliseconds>(deadline - Clock::now()), milliseconds(1));
}

// Receives the next frame from a site during a round: heartbeats are consumed here; silence
// longer than `liveness` before the deadline means the site is gone.
common::Frame recv_live(common::Connection& conn, Clock::time_point deadline, milliseconds liveness) {
  for (;;) {
    const auto left = until(deadline);
    try {
      common::Frame f = conn.recv(std::min(left, liveness));
      if (f.type == MessageType::kHeartbeat) continue;
      return f;
    } catch (const TimeoutError&) {
      if (left <= liveness) throw;  // the round deadline passed
      throw TransportError("no message or heartbeat for " + std::to_string(liveness.count() / 1000) +
                           " s: the site is gone");
    }
  }
}

Coordinator::Coordinator(CoordinatorOptions options, std::unique_ptr<protocols::Strategy> strategy,
                         Evaluator& evaluator, std::vector<float> initial_params)
    : opt_(std::move(options)), strategy_(std::move(strategy)), evaluator_(evaluator),
      params_(std::move(initial_params)), tracker_(opt_.early_stopping_patience),
      beats_(std::make_unique<HeartbeatSender>(opt_.heartbeat_interval)) {
  if (const auto& pv = opt_.job.privacy(); pv.mode() != v1::PRIVACY_OFF) {
    dp_ = std::make_unique<Dp>();
    dp_->params = {*protocols::noise_mode(pv), pv.noise_multiplier(), pv.clip_norm()};
    protocols::dp::validate(dp_->params);
    dp_->sampling_rate = pv.sampling_rate() > 0 ? pv.sampling_rate() : 1.0;
    dp_->expected_sites = std::max<size_t>(1, pv.expected_sites());
    if (opt_.privacy.adaptive_clip) {
      if (dp_->params.mode != protocols::dp::NoiseMode::kCentral || opt_.job.secure_aggregation())
        throw ConfigError("adaptive clipping needs privacy.mode = \"central\" without secure aggregation");
      protocols::dp::AdaptiveClipSpec spec;
      spec.target_quantile = opt_.privacy.target_quantile;
      spec.learning_rate = opt_.privacy.clip_learning_rate;
      spec.count_noise_stddev = static_cast<double>(dp_->expected_sites) / 20.0;  // Andrew et al.'s choice
      dp_->clipper = std::make_unique<protocols::dp::AdaptiveClipper>(spec, pv.clip_norm());
    }
  }
  if (opt_.resume) {
    if (opt_.resume->params.size() != params_.size())
      throw DataError("checkpoint has " + std::to_string(opt_.resume->params.size()) + " parameters; the model has " +
                      std::to_string(params_.size()));
    strategy_->set_state(opt_.resume->strategy_state);
    tracker_.restore(*opt_.resume);
    if (dp_) {
      if (!opt_.resume->accountant_state.empty())
        dp_->accountant = protocols::dp::Accountant::from_string(opt_.resume->accountant_state);
      if (dp_->clipper && opt_.resume->clip_norm > 0) dp_->clipper->set_clip_norm(opt_.resume->clip_norm);
    }
  }
  // Signed secure rounds check each key's certificate against the listed name of its index:
  // the job every site receives (and the coordinator's own round config) carries the list.
  if (!opt_.site_names.empty()) {
    opt_.job.clear_site_names();
    for (const auto& n : opt_.site_names) opt_.job.add_site_names(n);
  }
  for (size_t i = 0; i < opt_.site_names.size(); ++i) {
    auto s = std::make_unique<Site>();
    s->info.index = static_cast<uint32_t>(i);
    s->info.name = opt_.site_names[i];
    s->info.dropped_reason = "never connected";
    sites_.push_back(std::move(s));
  }
}

Coordinator::~Coordinator() {
  for (auto& s : sites_)  // an admission still in flight uses its connection: end it first
    if (s->admitting.valid()) {
      s->conn->close();
      s->admitting.wait();
    }
}

bool ValidationTracker::observe(uint32_t round, double loss, const std::vector<float>& params) {
  if (std::isnan(loss)) return false;
  if (best_round_ == 0 || loss < best_loss_) {
    best_loss_ = loss;
    best_round_ = round;
    best_params_ = params;
    since_ = 0;
    return false;
  }
  ++since_;
  return patience_ > 0 && since_ >= patience_;
}

void ValidationTracker::restore(const common::Checkpoint& c) {
  best_params_ = c.best_params;
  best_loss_ = c.best_validation_loss;
  best_round_ = c.best_params.empty() ? 0 : c.best_round;
  since_ = c.rounds_since_best;
}

void ValidationTracker::save(common::Checkpoint& c) const {
  c.best_params = best_params_;
  c.best_validation_loss = best_loss_;
  c.best_round = best_round_;
  c.rounds_since_best = since_;
}

void Coordinator::collect_site_evaluations(uint32_t round) {
  const auto deadline = Clock::now() + opt_.round_timeout;
  size_t got = 0, expected = 0;
  for (auto& s : sites_) {
    if (!s->info.active || !s->in_round) continue;
    ++expected;
    try {
      for (;;) {
        common::Frame f = recv_live(*s->conn, deadline, opt_.liveness_timeout);
        if (f.type != MessageType::kSiteEvaluation) {
          if (protocols::round_of(f)) continue;  // a late message of a round
          throw ProtocolError(std::string("expected SiteEvaluation, got ") + common::message_type_name(f.type));
        }
        auto ev = from_frame<v1::SiteEvaluation>(f);
        if (ev.round() != round) continue;
        s->info.evaluated = !ev.declined();
        s->info.evaluation = std::move(ev);
        got += s->info.evaluated ? 1 : 0;
        break;
      }
    } catch (const fedtl::Error& e) {
      spdlog::warn("site '{}' sent no evaluation of the final model: {}", s->info.name, e.what());
    }
  }
  spdlog::info("{} of {} sites evaluated the final model on their own validation split", got, expected);
}

RoundRecord Coordinator::run_round(uint32_t round, bool validate_only, Validation& validation,
                                   const std::function<bool(const Validation&)>& before_apply) {
  const auto t0 = Clock::now();
  RoundRecord rec;
  rec.round = round;
  uint64_t up0 = 0, down0 = 0;
  for (auto& s : sites_) {
    up0 += s->received();
    down0 += s->sent();
  }
  publish_sites(/*force=*/true);
  // Only the values trained this round travel (protocols/schedule.h): the layout's suffix.
  const auto sched = protocols::round_schedule(opt_.job, round);
  rec.trainable_params = sched.trained;
  rec.phase = sched.phase;
  v1::RoundStart start;
  start.set_round(round);
  protocols::pack_tensor(std::vector<float>(params_.begin() + static_cast<long>(sched.offset), params_.end()),
                         start.mutable_params());
  start.set_deadline_seconds(std::chrono::duration<double>(opt_.round_timeout).count());
  start.set_validate_only(validate_only);
  start.set_site_evaluation(validate_only && opt_.site_evaluation);
  if (dp_) start.set_clip_norm(current_clip_norm());
  rec.clip_norm = current_clip_norm();
  const common::SharedFrame start_frame(to_frame(start));  // encoded once for every site
  // Site sampling (seeded by job seed and round: reproducible, and resumable): k of the
  // active sites (sites_per_round), or DP's coin per site with probability q.
  std::mt19937_64 sampler(common::derive_seed(opt_.job.seed(), common::seed_stream::kSiteSampling, round));
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  std::vector<char> drawn(sites_.size(), 1);
  const bool fixed_size = !validate_only && opt_.sites_per_round > 0;
  if (fixed_size) {
    std::vector<size_t> active;
    for (size_t i = 0; i < sites_.size(); ++i)
      if (sites_[i]->info.active) active.push_back(i);
    const size_t k = std::min(opt_.sites_per_round, active.size());
    for (size_t j = 0; j < k; ++j) {  // partial Fisher-Yates: the first k of a seeded shuffle
      std::uniform_int_distribution<size_t> pick(j, active.size() - 1);
      std::swap(active[j], active[pick(sampler)]);
    }
    std::fill(drawn.begin(), drawn.end(), 0);
    for (size_t j = 0; j < k; ++j) drawn[active[j]] = 1;
  }
  for (size_t i = 0; i < sites_.size(); ++i) {
    auto& s = sites_[i];
    s->in_round = false;
    if (!s->info.active) continue;
    if (!drawn[i]) continue;
    if (!fixed_size && !validate_only && dp_ && dp_->sampling_rate < 1.0 && coin(sampler) >= dp_->sampling_rate)
      continue;
    try {
      s->conn->send(start_frame);
      s->in_round = true;
      ++rec.sites_active;
    } catch (const fedtl::Error& e) {
      drop(*s, std::string("send failed: ") + e.what());
    }
  }

  const auto deadline = t0 + opt_.round_timeout;
  const size_t length = static_cast<size_t>(sched.trained);
  std::optional<Aggregate> agg = opt_.job.secure_aggregation() ? secure_aggregate(round, deadline, length, validate_only)
                                                               : plain_aggregate(round, deadline, length, validate_only);
  validation = agg ? agg->validation : Validation{};
  rec.sites_reported = agg ? agg->reported : 0;
  const bool apply = !validate_only && (!before_apply || before_apply(validation));
  if (apply && agg && rec.sites_reported >= opt_.min_sites && rec.sites_reported > 0) {
    if (dp_) privatize(round, *agg);
    // The values not trained this round keep theirs: a zero delta there (no strategy moves a
    // value whose deltas were always zero: FedAdam/FedYogi moments stay 0 too).
    std::vector<double> full(params_.size(), 0.0);
    std::copy(agg->mean.begin(), agg->mean.end(), full.begin() + static_cast<long>(sched.offset));
    strategy_->apply(params_, full);
    rec.applied = true;
    rec.train_loss = agg->train_loss;
    rec.train_accuracy = agg->train_accuracy;
  } else if (apply) {
    spdlog::warn("round {}: {} of {} sites reported, quorum is {}; round abandoned", round, rec.sites_reported,
                 rec.sites_active, opt_.min_sites);
  }
  if (!validate_only) {
    const RoundEval ev = evaluator_.evaluate(params_);
    rec.accuracy = ev.accuracy;
    rec.loss = ev.loss;
    rec.balanced_accuracy = ev.balanced_accuracy;
    rec.macro_auc = ev.macro_auc;
  }
  for (auto& s : sites_) {
    rec.bytes_up += s->received();
    rec.bytes_down += s->sent();
  }
  rec.bytes_up -= up0;
  rec.bytes_down -= down0;
  for (auto& s : sites_) rec.connection_replacements += s->info.replacements;
  rec.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return rec;
}

Coordinator::Result Coordinator::run(const std::function<void(const RoundRecord&)>& on_round) {
  Result res;
  beats_->start();
  join_phase();
  size_t ready = 0;
  for (auto& s : sites_) {
    ready += s->info.active ? 1 : 0;
    res.handshake_bytes_down += s->sent();
    res.handshake_bytes_up += s->received();
  }
  if (ready < opt_.min_sites)
    throw Error("only " + std::to_string(ready) + " sites completed the handshake; the job needs " +
                std::to_string(opt_.min_sites));
  const uint32_t first = opt_.resume ? opt_.resume->round + 1 : 1;
  if (opt_.resume) spdlog::info("resuming after round {} from the checkpoint", opt_.resume->round);
  const bool validating = opt_.job.training().validation_fraction() > 0;
  // A round's record and checkpoint wait for its validation, which the next round's reports
  // (or the validate-only exchange after the last round) bring.
  struct Pending {
    RoundRecord rec;
    common::Checkpoint ckpt;
  };
  std::optional<Pending> pending;
  bool stop = false;
  auto finish = [&](Pending& p, const Validation& v) {
    p.rec.validation_loss = v.loss;
    p.rec.validation_accuracy = v.accuracy;
    p.rec.validation_samples = v.samples;
    if (validating && tracker_.observe(p.rec.round, v.loss, p.ckpt.params)) stop = true;
    if (on_round) on_round(p.rec);
    res.rounds.push_back(p.rec);
    if (opt_.checkpoint) {
      tracker_.save(p.ckpt);
      opt_.checkpoint(p.ckpt);
    }
  };
  uint32_t last = first - 1;
  for (uint32_t r = first; r <= opt_.job.rounds(); ++r) {
    if (opt_.stop_requested && opt_.stop_requested()) {
      res.interrupted = true;
      res.stop_reason = "stopped by a signal before round " + std::to_string(r) + "; resume with --resume";
      spdlog::warn("{}", res.stop_reason);
      break;
    }
    if (dp_ && opt_.privacy.target_epsilon > 0) {
      const double next = dp_->accountant.epsilon_after(dp_->params.noise_multiplier, dp_->sampling_rate, 1,
                                                        opt_.privacy.delta);
      if (next > opt_.privacy.target_epsilon) {
        res.stop_reason = "stopped before round " + std::to_string(r) + ": it would spend epsilon " +
                          std::to_string(next) + " > target " + std::to_string(opt_.privacy.target_epsilon);
        spdlog::warn("{}", res.stop_reason);
        break;
      }
    }
    if (r > first) accept_rejoiners();
    if (!await_quorum(r, res)) break;
    Validation v;
    // The reports of round r validate the model round r-1 left: that round is complete now,
    // and early stopping decides before round r's aggregate is applied.
    RoundRecord rec = run_round(r, false, v, [&](const Validation& started_from) {
      if (!pending) return true;  // round 1, or the first round after a resume: already counted
      finish(*pending, started_from);
      pending.reset();
      return !stop;
    });
    if (stop) {
      res.stopped_early = true;
      res.stop_reason = "stopped early: the validation loss has not improved for " +
                        std::to_string(opt_.early_stopping_patience) + " rounds (best: round " +
                        std::to_string(tracker_.best_round()) + ")";
      spdlog::info("{}; round {} not applied", res.stop_reason, r);
      break;
    }
    last = r;
    if (dp_) rec.epsilon = dp_->accountant.steps() ? dp_->accountant.epsilon(opt_.privacy.delta) : 0.0;
    Pending p;
    p.rec = rec;
    p.ckpt.round = r;
    p.ckpt.params = params_;
    p.ckpt.strategy_state = strategy_->state();
    if (dp_) {
      p.ckpt.accountant_state = dp_->accountant.to_string();
      p.ckpt.clip_norm = current_clip_norm();
    }
    if (validating)
      pending = std::move(p);
    else
      finish(p, Validation{});
  }
  if (pending) {  // the last round's model: one validate-only exchange
    Validation v;
    if (!res.quorum_lost) {
      try {
        (void)run_round(last + 1, true, v, nullptr);
        if (opt_.site_evaluation) collect_site_evaluations(last + 1);
      } catch (const fedtl::Error& e) {
        spdlog::warn("validation of round {} failed: {}", pending->rec.round, e.what());
      }
    }
    finish(*pending, v);
    pending.reset();
  }
  beats_->stop();  // nothing follows the Shutdown
  v1::Shutdown sd;
  sd.set_reason(res.stop_reason.empty() ? "job finished after " + std::to_string(opt_.job.rounds()) + " rounds"
                                        : res.stop_reason);
  sd.set_success(!res.interrupted);
  sd.set_resume_expected(res.interrupted);
  for (auto& s : sites_) {
    if (!s->info.active) continue;
    try {
      s->conn->send(to_frame(sd));
    } catch (const fedtl::Error& e) {
      spdlog::warn("site '{}': shutdown not delivered: {}", s->info.name, e.what());
    }
  }
  res.params = params_;
  publish_sites(/*force=*/true);  // the final states
  for (auto& s : sites_) res.sites.push_back(s->info);
  if (dp_) {
    res.epsilon = dp_->accountant.steps() ? dp_->accountant.epsilon(opt_.privacy.delta) : 0.0;
    res.accountant_state = dp_->accountant.to_string();
  }
  res.best_params = tracker_.best_params();
  res.best_round = tracker_.best_round();
  res.best_validation_loss = tracker_.best_loss();
  return res;
}

}  // namespace fedtl::coordinator

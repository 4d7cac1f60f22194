#include "coordinator/coordinator.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <type_traits>

#include "common/errors.h"
#include "protocols/dp/accountant.h"
#include "protocols/dp/mechanism.h"
#include "protocols/messages.h"
#include "protocols/secagg/wire.h"
#include "protocols/secure_round.h"

namespace fedtl::coordinator {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using protocols::from_frame;
using common::MessageType;
using protocols::to_frame;

namespace {
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
}  // namespace

struct Coordinator::Site {
  std::unique_ptr<common::Connection> conn;  // null until the site connects
  SiteInfo info;
  bool admitted = false;  // job (and backbone) sent; Ready pending
  bool refused = false;   // the site refused the job (policy): it will not come back for it
  uint64_t bytes_sent_before = 0, bytes_received_before = 0;  // of replaced connections
  uint64_t sent() const { return bytes_sent_before + (conn ? conn->bytes_sent() : 0); }
  uint64_t received() const { return bytes_received_before + (conn ? conn->bytes_received() : 0); }
};

struct Coordinator::Dp {
  protocols::dp::DpParams params;
  double sampling_rate = 1;
  size_t expected_sites = 1;
  protocols::dp::Accountant accountant;
  std::unique_ptr<protocols::dp::AdaptiveClipper> clipper;
};

Coordinator::Coordinator(CoordinatorOptions options, std::unique_ptr<protocols::Strategy> strategy,
                         Evaluator& evaluator, std::vector<float> initial_params)
    : opt_(std::move(options)), strategy_(std::move(strategy)), evaluator_(evaluator),
      params_(std::move(initial_params)) {
  if (const auto& pv = opt_.job.privacy(); !pv.mode().empty()) {
    dp_ = std::make_unique<Dp>();
    dp_->params = {protocols::dp::parse_noise_mode(pv.mode()), pv.noise_multiplier(), pv.clip_norm()};
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
    if (dp_) {
      if (!opt_.resume->accountant_state.empty())
        dp_->accountant = protocols::dp::Accountant::from_string(opt_.resume->accountant_state);
      if (dp_->clipper && opt_.resume->clip_norm > 0) dp_->clipper->set_clip_norm(opt_.resume->clip_norm);
    }
  }
  for (size_t i = 0; i < opt_.site_names.size(); ++i) {
    auto s = std::make_unique<Site>();
    s->info.index = static_cast<uint32_t>(i);
    s->info.name = opt_.site_names[i];
    s->info.dropped_reason = "never connected";
    sites_.push_back(std::move(s));
  }
}

Coordinator::~Coordinator() = default;

Coordinator::Site* Coordinator::attach(std::unique_ptr<common::Connection> conn) {
  const std::string name = conn->peer_name();
  Site* slot = nullptr;
  if (opt_.site_names.empty()) {
    sites_.push_back(std::make_unique<Site>());
    slot = sites_.back().get();
    slot->info.index = static_cast<uint32_t>(sites_.size() - 1);
    slot->info.name = name;
  } else {
    for (auto& s : sites_)
      if (s->info.name == name) slot = s.get();
    if (!slot) {
      spdlog::warn("refused '{}': not on the job's list of sites", name);
      try {
        conn->send(protocols::error_frame(protocols::ErrorCode::kUnauthorized,
                                          "site '" + name + "' is not on this job's list of sites"));
      } catch (const fedtl::Error&) {
      }
      conn->close();
      return nullptr;
    }
  }
  if (slot->conn) {  // a reconnect replaces a connection the site has given up on
    slot->conn->close();
    slot->bytes_sent_before += slot->conn->bytes_sent();
    slot->bytes_received_before += slot->conn->bytes_received();
  }
  slot->conn = std::move(conn);
  slot->info.active = false;
  slot->admitted = false;
  slot->info.dropped_reason.clear();
  return slot;
}

void Coordinator::add_site(std::unique_ptr<common::Connection> conn) { attach(std::move(conn)); }

void Coordinator::drop(Site& s, const std::string& reason) {
  if (!s.conn || (!s.info.active && !s.admitted && !s.info.dropped_reason.empty())) return;
  s.info.active = false;
  s.admitted = false;
  s.info.dropped_reason = reason;
  s.refused = reason.find("refused") != std::string::npos;
  spdlog::warn("site '{}' dropped: {}", s.info.name, reason);
  s.conn->close();
}

bool Coordinator::admit(Site& s) {
  try {
    auto hello = from_frame<v1::Hello>(s.conn->recv(opt_.handshake_timeout));
    if (hello.protocol_version() != common::kProtocolVersion) {
      const std::string why = "site speaks protocol version " + std::to_string(hello.protocol_version()) +
                              ", coordinator speaks " + std::to_string(common::kProtocolVersion);
      s.conn->send(protocols::error_frame(protocols::ErrorCode::kVersionMismatch, why));
      s.admitted = true;
      drop(s, why);
      return false;
    }
    v1::JobSpec job = opt_.job;
    job.set_site_index(s.info.index);
    s.conn->send(to_frame(job));
    const auto& held = hello.backbone_sha256();
    if (std::find(held.begin(), held.end(), job.backbone_sha256()) == held.end()) {
      for (size_t off = 0;; off += opt_.chunk_bytes) {
        v1::BackboneChunk c;
        c.set_offset(off);
        c.set_data(opt_.backbone.substr(std::min(off, opt_.backbone.size()), opt_.chunk_bytes));
        c.set_last(off + opt_.chunk_bytes >= opt_.backbone.size());
        s.conn->send(to_frame(c));
        if (c.last()) break;
      }
    } else {
      spdlog::info("site '{}' already holds backbone {}: download skipped", s.info.name,
                   job.backbone_sha256().substr(0, 12));
    }
    s.admitted = true;
    return true;
  } catch (const fedtl::Error& e) {
    // A site that refuses the job closes while the backbone is still streaming: its Error
    // frame, if it arrived, says why better than the broken pipe does.
    std::string why = std::string("handshake failed: ") + e.what();
    try {
      for (;;) {
        common::Frame f = s.conn->recv(milliseconds(200));
        if (f.type == MessageType::kError) {
          why = "refused: " + from_frame<v1::ErrorMessage>(f).message();
          break;
        }
      }
    } catch (const fedtl::Error&) {
    }
    s.admitted = true;
    drop(s, why);
    return false;
  }
}

bool Coordinator::await_ready(Site& s, Clock::time_point deadline) {
  try {
    auto ready = from_frame<v1::Ready>(s.conn->recv(until(deadline)));
    if (ready.num_samples() == 0) throw ProtocolError("site reports 0 training samples");
    s.info.num_samples = ready.num_samples();
    s.info.active = true;
    s.admitted = false;
    spdlog::info("site '{}' (index {}) ready: {} samples", s.info.name, s.info.index, s.info.num_samples);
    return true;
  } catch (const fedtl::Error& e) {
    drop(s, std::string("not ready: ") + e.what());
    return false;
  }
}

void Coordinator::join_phase() {
  // Job and backbone go to each site as it connects, so sites cache features in parallel.
  if (listener_) {
    const auto deadline = Clock::now() + opt_.join_timeout;
    auto count = [&](bool ready) {
      size_t n = 0;
      for (auto& s : sites_) n += (ready ? s->info.active : (s->conn && s->admitted)) ? 1 : 0;
      return n;
    };
    spdlog::info("waiting for {} sites to connect (quorum {}, up to {} s)", sites_.size(), opt_.min_sites,
                 std::chrono::duration_cast<std::chrono::seconds>(opt_.join_timeout).count());
    auto refused = [&] {
      size_t n = 0;
      for (auto& s : sites_) n += s->refused ? 1 : 0;
      return n;
    };
    while (count(true) + refused() < sites_.size() && Clock::now() < deadline) {
      try {
        auto conn = listener_->accept(std::min(until(deadline), milliseconds(200)));
        spdlog::info("'{}' connected", conn->peer_name());
        if (Site* s = attach(std::move(conn))) admit(*s);
      } catch (const TimeoutError&) {
      }
      // Collect Ready (or a refusal) from admitted sites without blocking on any one.
      for (auto& s : sites_) {
        if (!s->conn || !s->admitted) continue;
        try {
          common::Frame f = s->conn->recv(milliseconds(1));
          auto ready = from_frame<v1::Ready>(f);
          if (ready.num_samples() == 0) throw ProtocolError("site reports 0 training samples");
          s->info.num_samples = ready.num_samples();
          s->info.active = true;
          s->admitted = false;
          spdlog::info("site '{}' (index {}) ready: {} samples", s->info.name, s->info.index, s->info.num_samples);
        } catch (const TimeoutError&) {
        } catch (const fedtl::Error& e) {
          drop(*s, std::string("not ready: ") + e.what());
        }
      }
    }
    for (auto& s : sites_)
      if (s->conn && s->admitted) drop(*s, "not ready before the join deadline");
    return;
  }
  for (auto& s : sites_)
    if (s->conn) admit(*s);
  const auto deadline = Clock::now() + opt_.handshake_timeout;
  for (auto& s : sites_)
    if (s->conn && s->admitted) await_ready(*s, deadline);
}

void Coordinator::accept_rejoiners() {
  if (!listener_) return;
  for (;;) {
    std::unique_ptr<common::Connection> conn;
    try {
      conn = listener_->accept(milliseconds(0));
    } catch (const TimeoutError&) {
      return;
    } catch (const TransportError&) {
      return;
    }
    spdlog::info("'{}' (re)connected", conn->peer_name());
    if (Site* s = attach(std::move(conn)))
      if (admit(*s)) await_ready(*s, Clock::now() + opt_.handshake_timeout);
  }
}

double Coordinator::current_clip_norm() const {
  return dp_ ? (dp_->clipper ? dp_->clipper->clip_norm() : dp_->params.clip_norm) : 0.0;
}

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

// Secure aggregation (Bonawitz et al. 2017; protocols/secagg): the coordinator relays keys and
// encrypted shares, sums masked inputs and unmasks only the sum. Sites that stall at any step
// are left out of the rest of this round (they count as dropped); below the threshold the
// round is abandoned and the sites are told to discard its secrets.
std::optional<Coordinator::Aggregate> Coordinator::secure_aggregate(uint32_t round, TimePoint deadline) {
  namespace sa = protocols::secagg;
  const uint64_t m = params_.size() + 1;  // [w, w·Δ]
  std::vector<Site*> part;
  for (auto& s : sites_)
    if (s->info.active) part.push_back(s.get());
  // Receives one message of type M from every site still in `part`, in site order; sites
  // that time out leave `part` for this round, sites that misbehave are dropped.
  auto collect = [&](auto tag, const char* step, auto&& handle) {
    using M = typename decltype(tag)::type;
    std::vector<Site*> kept;
    for (Site* s : part) {
      try {
        for (;;) {
          common::Frame f = recv_live(*s->conn, deadline, opt_.liveness_timeout);
          if (f.type != protocols::type_of<M>()) {
            const auto r = protocols::round_of(f);
            if (r && *r < round) continue;  // a late message from an abandoned round
          }
          M msg = from_frame<M>(f);
          if (msg.round() != round)
            throw ProtocolError(std::string(step) + " for round " + std::to_string(msg.round()) + " during round " +
                                std::to_string(round));
          handle(*s, msg);
          kept.push_back(s);
          break;
        }
      } catch (const TimeoutError&) {
        spdlog::warn("round {}: site '{}' missed the secure aggregation deadline at {}; left out of this round", round,
                     s->info.name, step);
      } catch (const sa::RoundAborted&) {
        throw;
      } catch (const fedtl::Error& e) {
        drop(*s, std::string(step) + ": " + e.what());
      }
    }
    part = kept;
  };
  auto send_each = [&](auto&& make) {
    std::vector<Site*> kept;
    for (Site* s : part) {
      try {
        s->conn->send(to_frame(make(*s)));
        kept.push_back(s);
      } catch (const fedtl::Error& e) {
        drop(*s, std::string("send failed: ") + e.what());
      }
    }
    part = kept;
  };
  try {
    sa::ServerSession server(protocols::secagg_round_config(opt_.job, round, m));
    auto own = [](Site& s, uint32_t site) {
      if (site != s.info.index)
        throw ProtocolError("message names site " + std::to_string(site) + " but comes from site " +
                            std::to_string(s.info.index));
    };
    collect(std::common_type<v1::SecAggKeys>{}, "keys", [&](Site& s, const v1::SecAggKeys& k) {
      own(s, k.site());
      server.add_keys(k);
    });
    const auto keys = server.close_keys();
    send_each([&](Site&) { return keys; });
    collect(std::common_type<v1::SecAggShares>{}, "shares", [&](Site& s, const v1::SecAggShares& sh) {
      own(s, sh.site());
      server.add_shares(sh);
    });
    server.close_shares();
    send_each([&](Site& s) { return server.shares_for(s.info.index); });
    collect(std::common_type<v1::SecAggMasked>{}, "masked input", [&](Site& s, const v1::SecAggMasked& y) {
      own(s, y.site());
      server.add_masked(y);
    });
    const auto request = server.close_masked();
    send_each([&](Site&) { return request; });
    collect(std::common_type<v1::SecAggUnmaskShares>{}, "unmask shares",
            [&](Site& s, const v1::SecAggUnmaskShares& u) {
              own(s, u.site());
              server.add_unmask_shares(u);
            });
    const std::vector<uint32_t> sum = server.finish();
    const auto decoded = sa::decode_weighted_mean(sum, protocols::secagg_quant_spec(opt_.job));
    spdlog::debug("round {}: secure sum of {} sites unmasked", round, server.survivors().size());
    return Aggregate{decoded.mean, server.survivors().size(), std::nan(""), 0};
  } catch (const sa::RoundAborted& e) {
    spdlog::warn("round {}: secure aggregation abandoned: {}", round, e.what());
    v1::SecAggAbort abort;
    abort.set_round(round);
    abort.set_reason(e.what());
    send_each([&](Site&) { return abort; });
    return std::nullopt;
  }
}

// DP-FedAvg on the coordinator: the mean of equally weighted (clipped) deltas becomes
// (Σ Δ_i + N(0, σ²C²) in central mode) / (expected sites q·N); the accountant records the
// round with the noise multiplier the sum really carries.
void Coordinator::privatize(uint32_t round, Aggregate& agg) {
  namespace dp = protocols::dp;
  dp::DpParams params = dp_->params;
  params.clip_norm = current_clip_norm();
  dp::GaussianNoise noise(opt_.job.seed() ^ (0xd9e5000000000000ULL + round) ^ opt_.privacy.noise_secret);
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

RoundRecord Coordinator::run_round(uint32_t round) {
  const auto t0 = Clock::now();
  RoundRecord rec;
  rec.round = round;
  uint64_t up0 = 0, down0 = 0;
  for (auto& s : sites_) {
    up0 += s->received();
    down0 += s->sent();
  }
  v1::RoundStart start;
  start.set_round(round);
  protocols::pack_tensor(params_, start.mutable_params());
  start.set_deadline_seconds(std::chrono::duration<double>(opt_.round_timeout).count());
  if (dp_) start.set_clip_norm(current_clip_norm());
  rec.clip_norm = current_clip_norm();
  const common::Frame start_frame = to_frame(start);
  // DP site sampling: each site takes part with probability q (seeded: reproducible).
  std::mt19937_64 sampler(opt_.job.seed() ^ (0x5a3b1e0000000000ULL + round));
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  for (auto& s : sites_) {
    if (!s->info.active) continue;
    if (dp_ && dp_->sampling_rate < 1.0 && coin(sampler) >= dp_->sampling_rate) continue;
    try {
      s->conn->send(start_frame);
      ++rec.sites_active;
    } catch (const fedtl::Error& e) {
      drop(*s, std::string("send failed: ") + e.what());
    }
  }

  const auto deadline = t0 + opt_.round_timeout;
  std::optional<Aggregate> agg =
      opt_.job.secure_aggregation() ? secure_aggregate(round, deadline) : plain_aggregate(round, deadline);
  rec.sites_reported = agg ? agg->reported : 0;
  if (agg && rec.sites_reported >= opt_.min_sites && rec.sites_reported > 0) {
    if (dp_) privatize(round, *agg);
    strategy_->apply(params_, agg->mean);
    rec.applied = true;
    rec.train_loss = agg->train_loss;
  } else {
    spdlog::warn("round {}: {} of {} sites reported, quorum is {}; round abandoned", round, rec.sites_reported,
                 rec.sites_active, opt_.min_sites);
  }
  const RoundEval ev = evaluator_.evaluate(params_);
  rec.accuracy = ev.accuracy;
  rec.loss = ev.loss;
  for (auto& s : sites_) {
    rec.bytes_up += s->received();
    rec.bytes_down += s->sent();
  }
  rec.bytes_up -= up0;
  rec.bytes_down -= down0;
  rec.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return rec;
}

Coordinator::Result Coordinator::run(const std::function<void(const RoundRecord&)>& on_round) {
  Result res;
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
    RoundRecord rec = run_round(r);
    if (dp_) rec.epsilon = dp_->accountant.steps() ? dp_->accountant.epsilon(opt_.privacy.delta) : 0.0;
    if (on_round) on_round(rec);
    res.rounds.push_back(rec);
    if (opt_.checkpoint) {
      common::Checkpoint c;
      c.round = r;
      c.params = params_;
      c.strategy_state = strategy_->state();
      if (dp_) {
        c.accountant_state = dp_->accountant.to_string();
        c.clip_norm = current_clip_norm();
      }
      opt_.checkpoint(c);
    }
  }
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
  for (auto& s : sites_) res.sites.push_back(s->info);
  if (dp_) {
    res.epsilon = dp_->accountant.steps() ? dp_->accountant.epsilon(opt_.privacy.delta) : 0.0;
    res.accountant_state = dp_->accountant.to_string();
  }
  return res;
}

}  // namespace fedtl::coordinator

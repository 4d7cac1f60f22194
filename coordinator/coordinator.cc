#include "coordinator/coordinator.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "common/errors.h"
#include "protocols/messages.h"

namespace fedtl::coordinator {

using Clock = std::chrono::steady_clock;
using protocols::from_frame;
using protocols::MessageType;
using protocols::to_frame;

struct Coordinator::Site {
  std::unique_ptr<common::Connection> conn;
  SiteInfo info;
};

Coordinator::Coordinator(CoordinatorOptions options, std::unique_ptr<protocols::Strategy> strategy,
                         Evaluator& evaluator, std::vector<float> initial_params)
    : opt_(std::move(options)), strategy_(std::move(strategy)), evaluator_(evaluator),
      params_(std::move(initial_params)) {}

Coordinator::~Coordinator() = default;

void Coordinator::add_site(std::unique_ptr<common::Connection> conn) {
  auto s = std::make_unique<Site>();
  s->info.index = static_cast<uint32_t>(sites_.size());
  s->info.name = conn->peer_name();
  s->conn = std::move(conn);
  sites_.push_back(std::move(s));
}

void Coordinator::drop(Site& s, const std::string& reason) {
  if (!s.info.active && !s.info.dropped_reason.empty()) return;
  s.info.active = false;
  s.info.dropped_reason = reason;
  spdlog::warn("site '{}' dropped: {}", s.info.name, reason);
  s.conn->close();
}

void Coordinator::handshake() {
  // Phase 1: hello, job and backbone to everyone, so sites cache features in parallel.
  for (auto& sp : sites_) {
    Site& s = *sp;
    try {
      auto hello = from_frame<v1::Hello>(s.conn->recv(opt_.handshake_timeout));
      if (hello.protocol_version() != protocols::kProtocolVersion) {
        const std::string why = "site speaks protocol version " + std::to_string(hello.protocol_version()) +
                                ", coordinator speaks " + std::to_string(protocols::kProtocolVersion);
        s.conn->send(protocols::error_frame(protocols::ErrorCode::kVersionMismatch, why));
        s.info.active = true;
        drop(s, why);
        continue;
      }
      if (!hello.site_name().empty() && s.info.name.empty()) s.info.name = hello.site_name();
      v1::JobSpec job = opt_.job;
      job.set_site_index(s.info.index);
      s.conn->send(to_frame(job));
      const auto& held = hello.backbone_sha256();
      if (std::find(held.begin(), held.end(), job.backbone_sha256()) == held.end()) {
        for (size_t off = 0; off < opt_.backbone.size() || off == 0; off += opt_.chunk_bytes) {
          v1::BackboneChunk c;
          c.set_offset(off);
          c.set_data(opt_.backbone.substr(off, opt_.chunk_bytes));
          c.set_last(off + opt_.chunk_bytes >= opt_.backbone.size());
          s.conn->send(to_frame(c));
          if (c.last()) break;
        }
      }
      s.info.active = true;
    } catch (const fedtl::Error& e) {
      s.info.active = true;
      drop(s, std::string("handshake failed: ") + e.what());
    }
  }
  // Phase 2: wait for each site to be ready.
  const auto deadline = Clock::now() + opt_.handshake_timeout;
  for (auto& sp : sites_) {
    Site& s = *sp;
    if (!s.info.active) continue;
    try {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      auto ready = from_frame<v1::Ready>(s.conn->recv(std::max(left, std::chrono::milliseconds(1))));
      if (ready.num_samples() == 0) throw ProtocolError("site reports 0 training samples");
      s.info.num_samples = ready.num_samples();
      spdlog::info("site '{}' ready: {} samples", s.info.name, s.info.num_samples);
    } catch (const fedtl::Error& e) {
      drop(s, std::string("not ready: ") + e.what());
    }
  }
}

RoundRecord Coordinator::run_round(uint32_t round) {
  const auto t0 = Clock::now();
  RoundRecord rec;
  rec.round = round;
  uint64_t up0 = 0, down0 = 0;
  for (auto& s : sites_) {
    up0 += s->conn->bytes_received();
    down0 += s->conn->bytes_sent();
  }
  v1::RoundStart start;
  start.set_round(round);
  protocols::pack_tensor(params_, start.mutable_params());
  start.set_deadline_seconds(std::chrono::duration<double>(opt_.round_timeout).count());
  const common::Frame start_frame = to_frame(start);
  for (auto& s : sites_) {
    if (!s->info.active) continue;
    try {
      s->conn->send(start_frame);
      ++rec.sites_active;
    } catch (const fedtl::Error& e) {
      drop(*s, std::string("send failed: ") + e.what());
    }
  }

  const auto deadline = t0 + opt_.round_timeout;
  protocols::WeightedMean mean(params_.size());
  double loss_sum = 0;
  for (auto& s : sites_) {
    if (!s->info.active) continue;
    try {
      for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        common::Frame f = s->conn->recv(std::max(left, std::chrono::milliseconds(1)));
        if (f.type == MessageType::kHeartbeat) continue;
        auto up = from_frame<v1::Update>(f);
        if (up.round() < round) continue;  // late update from a round that already closed
        if (up.round() != round) throw ProtocolError("update for round " + std::to_string(up.round()) +
                                                     " during round " + std::to_string(round));
        if (up.num_samples() == 0) throw ProtocolError("update with 0 samples");
        mean.add(protocols::unpack_tensor(up.delta(), params_.size()), static_cast<double>(up.num_samples()));
        loss_sum += up.train_loss() * static_cast<double>(up.num_samples());
        break;
      }
    } catch (const TimeoutError&) {
      spdlog::warn("round {}: site '{}' missed the deadline; left out of this round", round, s->info.name);
    } catch (const fedtl::Error& e) {
      drop(*s, e.what());
    }
  }
  rec.sites_reported = mean.count();
  if (rec.sites_reported >= opt_.min_sites && rec.sites_reported > 0) {
    strategy_->apply(params_, mean.mean());
    rec.applied = true;
    rec.train_loss = loss_sum / mean.total_weight();
  } else {
    spdlog::warn("round {}: {} of {} sites reported, quorum is {}; round abandoned", round, rec.sites_reported,
                 rec.sites_active, opt_.min_sites);
  }
  const RoundEval ev = evaluator_.evaluate(params_);
  rec.accuracy = ev.accuracy;
  rec.loss = ev.loss;
  for (auto& s : sites_) {
    rec.bytes_up += s->conn->bytes_received();
    rec.bytes_down += s->conn->bytes_sent();
  }
  rec.bytes_up -= up0;
  rec.bytes_down -= down0;
  rec.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return rec;
}

Coordinator::Result Coordinator::run(const std::function<void(const RoundRecord&)>& on_round) {
  Result res;
  handshake();
  size_t ready = 0;
  for (auto& s : sites_) {
    ready += s->info.active ? 1 : 0;
    res.handshake_bytes_down += s->conn->bytes_sent();
    res.handshake_bytes_up += s->conn->bytes_received();
  }
  if (ready < opt_.min_sites)
    throw Error("only " + std::to_string(ready) + " sites completed the handshake; the job needs " +
                std::to_string(opt_.min_sites));
  for (uint32_t r = 1; r <= opt_.job.rounds(); ++r) {
    RoundRecord rec = run_round(r);
    if (on_round) on_round(rec);
    res.rounds.push_back(rec);
  }
  v1::Shutdown sd;
  sd.set_reason("job finished after " + std::to_string(opt_.job.rounds()) + " rounds");
  sd.set_success(true);
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
  return res;
}

}  // namespace fedtl::coordinator

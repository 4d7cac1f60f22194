// Joining: slots, the handshake (Hello -> JobSpec -> backbone -> Ready), refusals, drops
// and rejoins.
#include <string>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "common/errors.h"
#include "coordinator/heartbeat.h"
#include "coordinator/internal.h"
#include "protocols/messages.h"

namespace fedtl::coordinator {

using protocols::from_frame;
using common::MessageType;
using protocols::to_frame;

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
    // ... or an impostor with a stolen kit replaces the real site: keep the reconnect
    // behaviour (a site whose link died must get back in) but say so, with both addresses.
    if (slot->info.active || slot->admitted) {
      ++slot->info.replacements;
      spdlog::warn("site '{}': a new connection from {} presents its certificate while its connection from {} is "
                   "active; the new one replaces it (replacement {} of this site: a restarted site, or a stolen kit)",
                   name, conn->peer_address(), slot->conn->peer_address(), slot->info.replacements);
    }
    slot->conn->close();
    if (slot->admitting.valid()) {  // its admission thread uses the old connection: let it end
      slot->admitting.wait();
      slot->admitting = {};
    }
    slot->bytes_sent_before += slot->conn->bytes_sent();
    slot->bytes_received_before += slot->conn->bytes_received();
  }
  slot->conn = beats_->wrap(std::move(conn));
  slot->info.active = false;
  slot->admitted = false;
  slot->info.dropped_reason.clear();
  slot->refused = false;  // a refusal belonged to the connection it came on
  publish_sites();
  return slot;
}

void Coordinator::publish_sites(bool force) {
  // Every join, drop and Ready calls this: with thousands of sites an O(sites) refresh each
  // time is O(sites^2) (10,000 simulated sites spent a minute here). At most 5 a second then,
  // and always when asked (before a round, at the end).
  const auto now = Clock::now();
  if (!force && now - last_publish_ < milliseconds(200)) return;
  last_publish_ = now;
  std::vector<SiteInfo> infos;
  infos.reserve(sites_.size());
  for (auto& s : sites_) {
    auto& i = s->info;
    if (!s->conn) i.state = "waiting";
    else if (i.active) i.state = "ready";
    else if (!i.dropped_reason.empty()) i.state = s->refused ? "refused" : "dropped";
    else i.state = "joining";
    if (opt_.on_sites) infos.push_back(i);
  }
  if (opt_.on_sites) opt_.on_sites(infos);
}

void Coordinator::add_site(std::unique_ptr<common::Connection> conn) { attach(std::move(conn)); }

void Coordinator::drop(Site& s, const std::string& reason, bool refused) {
  if (!s.conn || (!s.info.active && !s.admitted && !s.info.dropped_reason.empty())) return;
  s.info.active = false;
  s.admitted = false;
  s.info.dropped_reason = reason;
  s.refused = refused;
  spdlog::warn("site '{}' dropped: {}", s.info.name, reason);
  s.conn->close();
  publish_sites(/*force=*/true);  // rare, and a status page should show it at once
}

namespace {

// The handshake's I/O for one site (Hello -> JobSpec -> backbone), on a thread of its own so
// that a site that stalls (or reads the backbone slowly) holds up nobody else. Touches only
// `conn` and the read-only job and backbone; the coordinator thread applies the outcome.
AdmitOutcome admit_io(common::Connection& conn, const v1::JobSpec& job, const std::string& backbone,
                      size_t chunk_bytes, milliseconds hello_timeout, const std::string& name) {
  AdmitOutcome out;
  try {
    auto hello = from_frame<v1::Hello>(conn.recv(hello_timeout));
    if (hello.protocol_version() != common::kProtocolVersion) {
      out.why = "site speaks protocol version " + std::to_string(hello.protocol_version()) +
                ", coordinator speaks " + std::to_string(common::kProtocolVersion);
      conn.send(protocols::error_frame(protocols::ErrorCode::kVersionMismatch, out.why));
      return out;
    }
    conn.send(to_frame(job));
    const auto& held = hello.backbone_sha256();
    if (std::find(held.begin(), held.end(), job.backbone_sha256()) == held.end()) {
      for (size_t off = 0;; off += chunk_bytes) {
        v1::BackboneChunk c;
        c.set_offset(off);
        c.set_data(backbone.substr(std::min(off, backbone.size()), chunk_bytes));
        c.set_last(off + chunk_bytes >= backbone.size());
        conn.send(to_frame(c));
        if (c.last()) break;
      }
    } else {
      spdlog::debug("site '{}' already holds backbone {}: download skipped", name, job.backbone_sha256());
    }
    out.ok = true;
  } catch (const protocols::PeerRefused& e) {
    out.why = e.what();
    out.refused = true;
  } catch (const fedtl::Error& e) {
    // A site that refuses the job closes while the backbone is still streaming: its Error
    // frame, if it arrived, says why better than the broken pipe does.
    out.why = std::string("handshake failed: ") + e.what();
    try {
      for (;;) {
        common::Frame f = conn.recv(milliseconds(200));
        if (f.type == MessageType::kError) {
          const auto em = from_frame<v1::ErrorMessage>(f);
          out.refused = em.code() != static_cast<uint32_t>(protocols::ErrorCode::kLeaving);
          out.why = (out.refused ? "refused: " : "left before Ready: ") + em.message();
          break;
        }
      }
    } catch (const fedtl::Error&) {
    }
  }
  return out;
}

}  // namespace

void Coordinator::start_admission(Site& s) {
  v1::JobSpec job = opt_.job;
  job.set_site_index(s.info.index);
  common::Connection* conn = s.conn.get();
  s.admitting = std::async(std::launch::async, [this, conn, job = std::move(job), name = s.info.name] {
    return admit_io(*conn, job, opt_.backbone, opt_.chunk_bytes, opt_.handshake_timeout, name);
  });
}

std::optional<bool> Coordinator::finish_admission(Site& s, std::optional<milliseconds> wait) {
  if (!s.admitting.valid()) return std::nullopt;
  if (wait && s.admitting.wait_for(*wait) != std::future_status::ready) return std::nullopt;
  const AdmitOutcome o = s.admitting.get();
  s.admitted = true;
  s.admitted_at = Clock::now();
  if (!o.ok) {
    drop(s, o.why, o.refused);
    return false;
  }
  HeartbeatSender::enable(*s.conn);  // job and backbone are through: heartbeats may follow
  return true;
}

void Coordinator::abort_admission(Site& s, const std::string& reason) {
  if (!s.admitting.valid()) return;
  s.conn->close();  // wakes the admission thread's recv or send
  s.admitting.wait();
  s.admitting.get();
  s.admitted = true;
  drop(s, reason);
}

bool Coordinator::admit(Site& s) {
  start_admission(s);
  return *finish_admission(s, std::nullopt);
}

bool Coordinator::await_ready(Site& s, milliseconds timeout, bool drop_on_timeout) {
  try {
    // A site may beat while it prepares (a simulated site waiting for a compute slot does).
    const auto until_tp = Clock::now() + std::min<milliseconds>(timeout, std::chrono::hours(24 * 365));
    common::Frame f;
    do f = s.conn->recv(until(until_tp));
    while (f.type == MessageType::kHeartbeat);
    auto ready = from_frame<v1::Ready>(f);
    if (ready.num_samples() == 0) throw ProtocolError("site reports 0 training samples");
    s.info.num_samples = ready.num_samples();
    s.info.input_stats = ready.input_stats();
    const uint64_t cap = opt_.max_samples_per_site > 0 ? opt_.max_samples_per_site : opt_.sample_count_cap;
    if (s.info.num_samples > cap) {
      spdlog::warn("site '{}' claims {} training samples; counted as {} (the job's bound)", s.info.name,
                   s.info.num_samples, cap);
      s.info.num_samples = cap;
    }
    s.info.active = true;
    s.admitted = false;
    spdlog::info("site '{}' (index {}) ready: {} samples", s.info.name, s.info.index, s.info.num_samples);
    publish_sites();
    return true;
  } catch (const TimeoutError& e) {
    if (drop_on_timeout) drop(s, std::string("not ready: ") + e.what());
    return false;
  } catch (const protocols::PeerRefused& e) {
    // kLeaving: the site only inspected the job (fedtl worker --inspect-job); its slot stays
    // open for it to join later.
    const bool leaving = e.code() == protocols::ErrorCode::kLeaving;
    if (leaving) spdlog::info("site '{}' inspected the job and left before Ready", s.info.name);
    drop(s, std::string(leaving ? "left before Ready: " : "not ready: ") + e.what(), /*refused=*/!leaving);
    return false;
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
        if (Site* s = attach(std::move(conn))) start_admission(*s);
      } catch (const TimeoutError&) {
      }
      // Collect finished admissions, then Ready (or a refusal), without blocking on any site.
      for (auto& s : sites_) finish_admission(*s, milliseconds(0));
      for (auto& s : sites_)
        if (s->conn && s->admitted) await_ready(*s, milliseconds(1), /*drop_on_timeout=*/false);
    }
    for (auto& s : sites_) abort_admission(*s, "no Hello before the join deadline");
    for (auto& s : sites_)
      if (s->conn && s->admitted) drop(*s, "not ready before the join deadline");
    return;
  }
  for (auto& s : sites_)  // every admission at once; then each outcome
    if (s->conn) start_admission(*s);
  for (auto& s : sites_) finish_admission(*s, std::nullopt);
  // Sites cache their features before Ready (a large backbone: minutes), so Ready gets the
  // join timeout, not the handshake's.
  const auto deadline = Clock::now() + std::max(opt_.handshake_timeout, opt_.join_timeout);
  for (auto& s : sites_)
    if (s->conn && s->admitted) await_ready(*s, until(deadline), /*drop_on_timeout=*/true);
}

void Coordinator::accept_rejoiners() {
  if (!listener_) return;
  for (;;) {
    std::unique_ptr<common::Connection> conn;
    try {
      conn = listener_->accept(milliseconds(0));
    } catch (const TimeoutError&) {
      break;
    } catch (const TransportError&) {
      break;
    }
    spdlog::info("'{}' (re)connected", conn->peer_name());
    if (Site* s = attach(std::move(conn))) start_admission(*s);
  }
  collect_rejoiners();
}

void Coordinator::poll_ready(Site& s, Clock::time_point until_tp) {
  if (!s.conn || !s.admitted || s.info.active) return;
  if (Clock::now() - s.admitted_at > std::max(opt_.handshake_timeout, opt_.join_timeout)) {
    drop(s, "not ready within the join timeout after its job was sent");
    return;
  }
  await_ready(s, until(until_tp), /*drop_on_timeout=*/false);
}

void Coordinator::collect_rejoiners() {
  // Admissions run concurrently; each gets a short grace to finish before this round, and one
  // that is still going (a site that connected and stalled) is collected before a later round
  // instead of holding this one up.
  // A rejoiner that is still caching its features sends Ready later: it stays "joining", is
  // polled before every round and takes part from the round after its Ready; one that never
  // sends it is dropped after the join timeout.
  const auto grace = Clock::now() + std::min<milliseconds>(opt_.handshake_timeout, milliseconds(2000));
  for (auto& s : sites_) {
    if (s->admitting.valid()) finish_admission(*s, until(grace));
    poll_ready(*s, grace);
  }
}

}  // namespace fedtl::coordinator

namespace fedtl::coordinator {

bool Coordinator::await_quorum(uint32_t round, Result& res) {
  auto active = [&] {
    size_t n = 0;
    for (auto& s : sites_) n += s->info.active ? 1 : 0;
    return n;
  };
  if (active() >= opt_.min_sites) return true;
  auto missing = [&] {
    std::string names;
    for (auto& s : sites_)
      if (!s->info.active) names += (names.empty() ? "" : ", ") + s->info.name;
    return names;
  };
  auto stop = [&](const std::string& why) {
    res.interrupted = true;
    res.quorum_lost = true;
    res.stop_reason = why;
    spdlog::error("{}", why);
    return false;
  };
  if (!listener_)
    return stop("stopped before round " + std::to_string(round) + ": " + std::to_string(active()) + " of " +
                std::to_string(sites_.size()) + " sites are left, the quorum is " + std::to_string(opt_.min_sites) +
                ", and these sites cannot rejoin (missing: " + missing() + ")");
  const auto t0 = Clock::now();
  const auto deadline = t0 + opt_.quorum_wait;
  auto next_log = t0;
  while (active() < opt_.min_sites) {
    for (auto& s : sites_) {  // admissions that finished meanwhile, then their Ready
      finish_admission(*s, milliseconds(0));
      poll_ready(*s, Clock::now());
    }
    if (active() >= opt_.min_sites) break;
    const auto now = Clock::now();
    if (opt_.stop_requested && opt_.stop_requested())
      return stop("stopped by a signal while round " + std::to_string(round) + " waited for the quorum; resume with --resume");
    if (now >= deadline)
      return stop("stopped before round " + std::to_string(round) + ": the quorum of " + std::to_string(opt_.min_sites) +
                  " sites did not come back within job.quorum_wait_s (missing: " + missing() + "); resume with --resume");
    if (now >= next_log) {
      spdlog::warn("round {} waits for the quorum: {} of {} sites connected, {} needed; missing: {} (waiting up to {} s more)",
                   round, active(), sites_.size(), opt_.min_sites, missing(),
                   std::chrono::duration_cast<std::chrono::seconds>(deadline - now).count());
      next_log = now + std::chrono::minutes(1);
    }
    try {
      auto conn = listener_->accept(std::min(until(deadline), milliseconds(500)));
      spdlog::info("'{}' (re)connected", conn->peer_name());
      if (Site* s = attach(std::move(conn))) start_admission(*s);
    } catch (const TimeoutError&) {
    } catch (const TransportError&) {
      return stop("stopped before round " + std::to_string(round) + ": the listener closed while waiting for the quorum");
    }
  }
  spdlog::info("round {}: quorum back ({} of {} sites) after {:.0f} s", round, active(), sites_.size(),
               std::chrono::duration<double>(Clock::now() - t0).count());
  return true;
}

}  // namespace fedtl::coordinator

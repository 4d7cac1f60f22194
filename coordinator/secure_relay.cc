// A secure round: the coordinator relays keys and shares and unmasks only the sum.
#include <string>
#include <type_traits>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "common/errors.h"
#include "coordinator/internal.h"
#include "protocols/messages.h"
#include "protocols/secagg/wire.h"
#include "protocols/secure_round.h"

namespace fedtl::coordinator {

using protocols::from_frame;
using common::MessageType;
using protocols::to_frame;

// Secure aggregation (Bonawitz et al. 2017; protocols/secagg): the coordinator relays keys and
// encrypted shares, sums masked inputs and unmasks only the sum. Sites that stall at any step
// are left out of the rest of this round (they count as dropped); below the threshold the
// round is abandoned and the sites are told to discard its secrets.
std::optional<Coordinator::Aggregate> Coordinator::secure_aggregate(uint32_t round, TimePoint deadline, size_t length,
                                                                    bool validate_only) {
  namespace sa = protocols::secagg;
  // [w, w·Δ, the sites' figures] (protocols/secure_round.h); no Δ in a validate-only round.
  const size_t delta_len = validate_only ? 0 : length;
  const uint64_t m = delta_len + 1 + protocols::kSecureMetrics;
  std::vector<Site*> part;
  for (auto& s : sites_)
    if (s->info.active && s->in_round) part.push_back(s.get());  // the sampled sites
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
  auto abandon = [&](uint32_t r, const std::string& why) -> std::optional<Aggregate> {
    spdlog::warn("round {}: secure aggregation abandoned: {}", r, why);
    v1::SecAggAbort abort;
    abort.set_round(r);
    abort.set_reason(why);
    send_each([&](Site&) { return abort; });
    return std::nullopt;
  };
  sa::ServerSession server(protocols::secagg_round_config(opt_.job, round, m), opt_.site_verifier.get());
  // Sites the session proved to cheat (a forged share revealed, ciphertexts rejected by
  // several recipients, inconsistent shares dealt) leave the federation, whatever became of
  // the round; the honest sites go on.
  auto drop_cheaters = [&] {
    for (uint32_t idx : server.cheaters()) {
      for (auto& s : sites_) {
        if (s->info.index == idx && s->info.active)
          drop(*s, "round " + std::to_string(round) + ": identified as a cheater by secure aggregation");
      }
    }
  };
  try {
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
    if (opt_.job.secagg().signed_keys()) {
      // The consistency step: every survivor signs the request it got; the signatures go to
      // all, so a coordinator cannot have told two sites different survivor sets.
      collect(std::common_type<v1::SecAggConsistency>{}, "survivor-set signature",
              [&](Site& s, const v1::SecAggConsistency& c) {
                own(s, c.site());
                server.add_consistency(c);
              });
      const auto signatures = server.close_consistency();
      send_each([&](Site&) { return signatures; });
    }
    collect(std::common_type<v1::SecAggUnmaskShares>{}, "unmask shares",
            [&](Site& s, const v1::SecAggUnmaskShares& u) {
              own(s, u.site());
              server.add_unmask_shares(u);
            });
    std::vector<uint32_t> sum = server.finish();
    const auto quant = protocols::secagg_quant_spec(opt_.job);
    // The figures' sums only: no single site's figure is ever seen.
    const std::vector<uint32_t> metric_sum(sum.end() - static_cast<long>(protocols::kSecureMetrics), sum.end());
    sum.resize(sum.size() - protocols::kSecureMetrics);
    const auto figures = protocols::decode_metrics(sa::dequantise_sum(metric_sum, quant), opt_.job.secagg().weight_bound());
    const auto decoded = sa::decode_weighted_mean(sum, quant);
    // Each honest site's weight is its sample count over the public bound, at most 1: a sum
    // above the survivor count means someone forged its weight coordinate.
    const double survivors = static_cast<double>(server.survivors().size());
    if (!(decoded.total_weight <= survivors * (1 + 1e-6)))
      throw ProtocolError("the unmasked weight sum " + std::to_string(decoded.total_weight) + " exceeds the " +
                          std::to_string(server.survivors().size()) + " survivors' bound (a forged weight)");
    spdlog::debug("round {}: secure sum of {} sites unmasked", round, server.survivors().size());
    drop_cheaters();
    Aggregate a{decoded.mean, server.survivors().size(), figures.train_loss, 0};
    a.train_accuracy = figures.train_accuracy;
    if (figures.validation_samples > 0)
      a.validation = Validation{figures.validation_loss, figures.validation_accuracy, figures.validation_samples};
    return a;
  } catch (const sa::RoundAborted& e) {
    drop_cheaters();
    return abandon(round, e.what());
  } catch (const ProtocolError& e) {
    // Inconsistent shares, a weight out of range: THIS round cannot be trusted; the job goes
    // on with the next one (the model is unchanged).
    drop_cheaters();
    return abandon(round, std::string("unmasking failed: ") + e.what());
  }
}

}  // namespace fedtl::coordinator

#include "protocols/secure_round.h"

#include <algorithm>
#include <cmath>

#include "common/errors.h"
#include "protocols/messages.h"
#include "protocols/secagg/wire.h"

namespace fedtl::protocols {

secagg::RoundConfig secagg_round_config(const v1::JobSpec& job, uint32_t round, uint64_t length) {
  const auto& s = job.secagg();
  secagg::RoundConfig rc;
  rc.round = round;
  rc.num_sites = s.num_sites();
  rc.threshold = s.threshold();
  rc.vector_length = length;
  rc.round_seed = secagg::derive_round_seed(job.seed(), round);
  if (s.complete_graph_max() > 0) rc.complete_graph_max = s.complete_graph_max();
  rc.sparse_degree = s.sparse_degree();
  rc.signed_keys = s.signed_keys();
  rc.site_names.assign(job.site_names().begin(), job.site_names().end());
  return rc;
}

std::vector<float> encode_metrics(const SiteFigures& f, double weight_bound) {
  auto unit = [](double v) { return std::isfinite(v) ? std::min(1.0, std::max(0.0, v)) : 0.0; };
  const double tw = unit(f.weight);
  const double vw = unit(f.validation_samples / weight_bound);
  const double vloss = f.validation_samples > 0 ? f.validation_loss_sum / f.validation_samples : 0.0;
  const double vacc = f.validation_samples > 0 ? f.validation_correct / f.validation_samples : 0.0;
  return {static_cast<float>(tw), static_cast<float>(tw * unit(f.train_loss / kSecureLossBound)),
          static_cast<float>(tw * unit(f.train_accuracy)), static_cast<float>(vw),
          static_cast<float>(vw * unit(vloss / kSecureLossBound)), static_cast<float>(vw * unit(vacc))};
}

FederationFigures decode_metrics(const std::vector<double>& sums, double weight_bound) {
  if (sums.size() != kSecureMetrics) throw ProtocolError("secure aggregation: wrong number of metric sums");
  const double nan = std::nan("");
  FederationFigures out;
  const double tw = sums[0], vw = sums[3];
  // Below half a quantum of weight nothing was shared (the sums are exact multiples of 1/S).
  out.train_loss = tw > 1e-9 ? sums[1] * kSecureLossBound / tw : nan;
  out.train_accuracy = tw > 1e-9 ? sums[2] / tw : nan;
  out.validation_loss = vw > 1e-9 ? sums[4] * kSecureLossBound / vw : nan;
  out.validation_accuracy = vw > 1e-9 ? sums[5] / vw : nan;
  out.validation_samples = vw * weight_bound;
  return out;
}

secagg::QuantSpec secagg_quant_spec(const v1::JobSpec& job) {
  const auto& s = job.secagg();
  return secagg::make_quant_spec(s.num_sites(), s.clip(),
                                 s.deterministic_rounding() ? secagg::Rounding::kDeterministic
                                                            : secagg::Rounding::kStochastic,
                                 /*weighted=*/true);
}

void validate_secagg(const v1::JobSpec& job) {
  if (!job.secure_aggregation()) return;
  const auto& s = job.secagg();
  if (s.num_sites() < 2) throw ConfigError("secure aggregation needs at least 2 sites");
  if (s.threshold() < 2 || s.threshold() > s.num_sites())
    throw ConfigError("secure_aggregation.threshold must be between 2 and the number of sites (" +
                      std::to_string(s.num_sites()) + "); got " + std::to_string(s.threshold()));
  if (!(s.weight_bound() >= 1)) throw ConfigError("secure_aggregation.weight_bound must be >= 1");
  secagg::validate(secagg_round_config(job, 1, 2));
  (void)secagg_quant_spec(job);  // throws when the ring would overflow
}

std::optional<uint32_t> round_of(const common::Frame& f) {
  auto get = [&](auto msg) -> std::optional<uint32_t> {
    if (!msg.ParseFromString(f.payload)) return std::nullopt;
    return msg.round();
  };
  switch (f.type) {
    case MessageType::kUpdate: return get(v1::Update{});
    case MessageType::kRoundStart: return get(v1::RoundStart{});
    case MessageType::kSiteEvaluation: return get(v1::SiteEvaluation{});
    case MessageType::kSecAggKeys: return get(v1::SecAggKeys{});
    case MessageType::kSecAggKeyList: return get(v1::SecAggKeyList{});
    case MessageType::kSecAggShares: return get(v1::SecAggShares{});
    case MessageType::kSecAggShareList: return get(v1::SecAggShareList{});
    case MessageType::kSecAggMasked: return get(v1::SecAggMasked{});
    case MessageType::kSecAggUnmaskRequest: return get(v1::SecAggUnmaskRequest{});
    case MessageType::kSecAggUnmaskShares: return get(v1::SecAggUnmaskShares{});
    case MessageType::kSecAggAbort: return get(v1::SecAggAbort{});
    case MessageType::kSecAggConsistency: return get(v1::SecAggConsistency{});
    case MessageType::kSecAggConsistencyList: return get(v1::SecAggConsistencyList{});
    default: return std::nullopt;
  }
}

}  // namespace fedtl::protocols

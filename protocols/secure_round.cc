#include "protocols/secure_round.h"

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

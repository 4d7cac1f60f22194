// Glue between a job (v1::JobSpec) and the secure aggregation library: both the coordinator
// and the sites derive a round's secagg parameters from the job, so they always agree.
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

#include "common/transport/connection.h"
#include "protocols/fedtl.pb.h"
#include "protocols/secagg/quantize.h"
#include "protocols/secagg/session.h"

namespace fedtl::protocols {

// The figures a site reports travel inside its masked vector, after [w, w·Δ], so the
// coordinator learns only their sums over the survivors (docs/security.md):
//   [tw, tw·min(L, Lmax)/Lmax, tw·A, vw, vw·min(V, Lmax)/Lmax, vw·VA]
// tw = the site's weight w when it shares training metrics (policy.share_training_metrics), else
// 0; L, A its mean training loss and accuracy; vw = validation images / weight_bound; V, VA the
// model's mean loss and accuracy on them. Every coordinate lies in [0, 1], inside the ring's
// range like w. A mean loss above Lmax counts as Lmax.
inline constexpr size_t kSecureMetrics = 6;
inline constexpr double kSecureLossBound = 20.0;  // Lmax
struct SiteFigures {
  double weight = 0;  // tw (0: not shared)
  double train_loss = 0, train_accuracy = 0;
  double validation_samples = 0, validation_loss_sum = 0, validation_correct = 0;
};
std::vector<float> encode_metrics(const SiteFigures& f, double weight_bound);
// The survivors' totals from the decoded sums of those coordinates (kSecureMetrics values, each
// Σ over sites). NaN for a figure nobody shared.
struct FederationFigures {
  double train_loss = 0, train_accuracy = 0;  // weighted means
  double validation_loss = 0, validation_accuracy = 0;  // sample-weighted means
  double validation_samples = 0;
};
FederationFigures decode_metrics(const std::vector<double>& sums, double weight_bound);

// Round r's secagg configuration for vectors of `length` coordinates ([w, w·Δ]: m + 1).
secagg::RoundConfig secagg_round_config(const v1::JobSpec& job, uint32_t round, uint64_t length);
// The fixed-point encoding of the job's weighted updates (bounds for num_sites sites).
secagg::QuantSpec secagg_quant_spec(const v1::JobSpec& job);
// Throws ConfigError when the job's secagg settings cannot work (n < 2, t outside [2, n],
// a clip/weight bound that overflows the ring).
void validate_secagg(const v1::JobSpec& job);

// The round a protocol message belongs to, for the message types that carry one (Update,
// RoundStart and the secure aggregation messages); nullopt for the others or if unparsable.
std::optional<uint32_t> round_of(const common::Frame& f);

}  // namespace fedtl::protocols

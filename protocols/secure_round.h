// Glue between a job (v1::JobSpec) and the secure aggregation library: both the coordinator
// and the sites derive a round's secagg parameters from the job, so they always agree.
#pragma once
#include <cstdint>
#include <optional>

#include "common/transport/connection.h"
#include "protocols/fedtl.pb.h"
#include "protocols/secagg/quantize.h"
#include "protocols/secagg/session.h"

namespace fedtl::protocols {

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

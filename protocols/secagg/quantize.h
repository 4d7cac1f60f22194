// Fixed-point quantisation of float updates into the ring Z_2^32 for secure aggregation.
//
//   q_i = R(clip(x_i, -B, B) · S)  stored as uint32 (two's complement), where
//   R = stochastic rounding floor(v + u), u uniform in [0,1) from an AES-128-CTR stream
//       seeded by the caller (reproducible; unbiased: E[q] = v), or
//   R = deterministic rounding to nearest (ties away from zero).
//
// Overflow bound. |q_i| <= B·S + 1, so the sum of n inputs satisfies
// |Σ q| <= n (B·S + 1) <= 2^31 - 1 whenever S <= (2^31 - 1 - n) / (n·B); the sum mod 2^32
// then decodes exactly as a signed int32. choose_scale() returns the largest power of two
// S meeting this bound (a power of two makes x·S exact in double, so deterministic
// rounding gives bit-identical results everywhere) and refuses parameters for which S < 1.
//
// Error bound. Per coordinate, per site: |R(v) - v| < 1 (stochastic, unbiased) or <= 1/2
// (deterministic); after dividing by S the sum of n sites is off by < n/S (resp. n/(2S)),
// plus whatever clipping removed (values beyond ±B).
//
// Weighted FedAvg. Sites send [w, w·clip(Δ, -c, c)] with a weight w in [0, 1] (e.g. samples /
// a public bound on samples per site); the server divides the sums. Both coordinates lie in
// [-B, B] with B = max(c, 1) (make_quant_spec(..., weighted = true) sets that).
// Thread-safe (no shared state).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "protocols/secagg/crypto.h"

namespace fedtl::protocols::secagg {

enum class Rounding { kStochastic, kDeterministic };

struct QuantSpec {
  double bound = 1.0;   // B: every coordinate is clipped to [-B, B]
  double scale = 0.0;   // S: from choose_scale()
  Rounding rounding = Rounding::kStochastic;
};

// Largest power-of-two S with n·(B·S + 1) <= 2^31 - 1. Throws ConfigError if n == 0,
// B is not finite and > 0, or no S >= 1 fits (n·B too large).
double choose_scale(uint32_t n, double bound);

// Spec for n sites with delta clip c (weighted: B = max(c, 1)).
QuantSpec make_quant_spec(uint32_t n, double clip, Rounding rounding, bool weighted);

// Worst-case absolute error of a decoded sum of n sites (clipping aside).
double sum_error_bound(const QuantSpec& spec, uint32_t n);

// Quantises x[0..m) into out[0..m). `rounding_seed` seeds stochastic rounding (ignored when
// deterministic). Throws ProtocolError if a value is not finite; ConfigError if scale <= 0.
void quantise(const float* x, size_t m, const QuantSpec& spec, const Secret32& rounding_seed, uint32_t* out);
std::vector<uint32_t> quantise(const std::vector<float>& x, const QuantSpec& spec, const Secret32& rounding_seed);

// Decodes a sum (mod 2^32) of quantised inputs: signed int32 / S.
std::vector<double> dequantise_sum(const std::vector<uint32_t>& sum, const QuantSpec& spec);

// [w, w·clip(Δ, -c, c)] quantised; `clip` is c. Throws ConfigError unless 0 <= w <= 1.
std::vector<uint32_t> encode_weighted(const std::vector<float>& delta, double weight, double clip,
                                      const QuantSpec& spec, const Secret32& rounding_seed);

struct WeightedResult {
  std::vector<double> mean;   // Σ w·Δ / Σ w
  double total_weight = 0;    // Σ w
};
// Decodes the unmasked sum of encode_weighted() vectors. Throws ProtocolError if Σ w <= 0.
WeightedResult decode_weighted_mean(const std::vector<uint32_t>& sum, const QuantSpec& spec);

// A 32-byte seed derived from public numbers (job seed, round, site) with HKDF: for
// reproducible stochastic rounding. Not a secret.
Secret32 derive_rounding_seed(uint64_t job_seed, uint32_t round, uint32_t site);

}  // namespace fedtl::protocols::secagg

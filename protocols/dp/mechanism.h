// Client-level DP-FedAvg mechanics over flat float32 update vectors (McMahan, Ramage, Talwar,
// Zhang 2018, "Learning Differentially Private Recurrent Language Models"): clip each site's
// delta to L2 norm C, sum the clipped deltas, add Gaussian noise of standard deviation σ·C to
// the SUM, divide by a denominator. Transport-independent; no LibTorch.
//
// Where the noise goes (σ = noise multiplier, C = clip norm, n = reporting sites):
//   central:     sites clip; the coordinator re-clips every delta it receives (it must not trust
//                the sites to have done it), sums them in site order, adds N(0, σ²C²) ONCE to
//                each coordinate of the sum, then divides by the denominator.
//                Mean noise variance per coordinate: σ²C² / denom².
//   distributed: each site clips and adds N(0, σ²C²/n) to its own delta, so the SUM of the n
//                shares carries exactly N(0, σ²C²) and the coordinator — which, under secure
//                aggregation, only ever sees that sum — never holds an un-noised aggregate. n is
//                the number of sites expected to report; if only m < n report, the sum carries
//                σ²C²·m/n (less noise than configured: the accountant's σ is then σ·sqrt(m/n),
//                see effective_noise_multiplier()). Secure aggregation works on fixed-point
//                integers: each site adds its noise in float BEFORE quantising, and the
//                quantisation step s must be ≪ the share's std σC/√n (e.g. s ≤ σC/(100√n));
//                rounding then adds at most s/2 per coordinate per site — deterministic error
//                that does not weaken the DP guarantee (post-processing of the noised value) but
//                must not be relied on as noise either. Modular wrap-around is avoided by
//                sizing the field for n·(C + 10σC/√n) / s.
//                Mean noise variance per coordinate: σ²C² / denom² (when all n report).
//   local:       each site clips and adds the full N(0, σ²C²) to its own delta: every single
//                update is (ε, δ)-DP on its own, against the coordinator too. The sum carries
//                n·σ²C². Mean noise variance per coordinate: n·σ²C² / denom².
// The coordinator never re-clips in distributed or local mode (the noised deltas are larger
// than C by design). Sites are weighted EQUALLY: the sum's L2 sensitivity to one site is C.
// (Weighting by sample counts would change the sensitivity and leak the counts.) The
// denominator is the number of sites expected per round (q·N, fixed — McMahan et al.'s
// fixed-denominator estimator, the one the accountant covers); with q = 1 and no drop-outs it
// is the number of reporting sites.
//
// Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially Private Learning
// with Adaptive Clipping"): each site also reports b_i = [‖Δ_i‖ ≤ C] (norm before clipping).
// The bits are centred, b_i − ½, so that one site changes their sum by at most ½; the
// coordinator forms b̄ = (Σ (b_i − ½) + N(0, σ_b²)) / denom + ½ (as TF Privacy's
// QuantileEstimatorQuery) and sets C ← C·exp(−η_C (b̄ − γ)), geometric steps that drive C to the
// γ-quantile of the update norms. Releasing the noised count costs privacy too; the paper keeps
// the total at noise multiplier z by using
// z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) for the updates (adaptive_update_noise_multiplier()), and
// suggests σ_b = denom / 20.
//
// Determinism: all noise comes from a GaussianNoise generator seeded explicitly
// (std::mt19937_64 + Box–Muller written here, so the stream does not depend on the standard
// library's normal_distribution; it is bit-identical wherever log/sqrt/sin/cos round alike). The caller derives one seed per (job seed, round, site) — never a shared global.
// Thread safety: free functions are thread-safe; GaussianNoise, DpSum and AdaptiveClipper are
// not (one per thread/site/coordinator). Bad configuration throws ConfigError; a wrong-sized or
// non-finite update throws ProtocolError (it came from the network).
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace fedtl::protocols::dp {

enum class NoiseMode { kCentral, kDistributed, kLocal };

// "central" | "distributed" | "local"; anything else throws ConfigError.
NoiseMode parse_noise_mode(const std::string& name);
std::string to_string(NoiseMode mode);

struct DpParams {
  NoiseMode mode = NoiseMode::kCentral;
  double noise_multiplier = 1.0;  // σ
  double clip_norm = 1.0;         // C
};
// ConfigError unless σ > 0 and C > 0 (both finite).
void validate(const DpParams& params);

// Scales v in place so that ‖v‖₂ ≤ clip_norm (v ← v·min(1, C/‖v‖)). Returns ‖v‖₂ before
// clipping (accumulated in double). clip_norm must be > 0 (ConfigError); a non-finite value in v
// throws ProtocolError.
double clip_l2(std::vector<float>& v, double clip_norm);
double l2_norm(const std::vector<float>& v);

// Standard normal deviates from a seeded std::mt19937_64 via Box–Muller (polar-free form:
// u1 ∈ (0,1] and u2 ∈ [0,1) from 53-bit draws; both outputs of each pair are used).
class GaussianNoise {
 public:
  explicit GaussianNoise(uint64_t seed) : rng_(seed) {}
  double standard_normal();
  // Adds an independent N(0, stddev²) draw to every element (stddev ≥ 0; 0 adds nothing).
  void add(std::vector<float>& v, double stddev);
  void add(std::vector<double>& v, double stddev);

 private:
  std::mt19937_64 rng_;
  bool has_spare_ = false;
  double spare_ = 0;
};

// Standard deviation of the noise ONE site adds to its clipped delta:
//   central 0, distributed σC/√n_expected, local σC.
double site_noise_stddev(const DpParams& params, size_t expected_sites);
// Standard deviation of the noise the coordinator adds to the SUM: central σC, otherwise 0.
double aggregate_noise_stddev(const DpParams& params);
// Noise multiplier the accountant should record for a round: σ, except in distributed mode
// when only `reporting` of the `expected` sites reported: σ·sqrt(reporting/expected).
double effective_noise_multiplier(const DpParams& params, size_t reporting, size_t expected);

// Site side: clips `delta` to C and adds this site's noise share. Returns ‖delta‖ before
// clipping (for the adaptive-clipping indicator).
double privatize_site_update(std::vector<float>& delta, const DpParams& params, size_t expected_sites,
                             GaussianNoise& noise);

// Coordinator side: sums site deltas in site order (add() must be called in site order for
// bit-reproducible results), re-clipping them in central mode, then adds the central noise and
// divides by the denominator.
class DpSum {
 public:
  DpSum(size_t size, DpParams params);
  // Adds one site's delta (ProtocolError: wrong size or non-finite values). In central mode the
  // delta is clipped to C first; returns its norm before that clipping (0 in other modes: the
  // noised norm says nothing about the site's own).
  double add(const std::vector<float>& delta);
  size_t count() const { return count_; }
  const std::vector<double>& sum() const { return sum_; }
  // (sum + N(0, aggregate_noise_stddev²)) / denominator. denominator > 0 (ConfigError); throws
  // ProtocolError if nothing was added. May be called once.
  std::vector<double> finish(double denominator, GaussianNoise& noise);

 private:
  DpParams params_;
  std::vector<double> sum_;
  size_t count_ = 0;
  bool finished_ = false;
};

struct AdaptiveClipSpec {
  double target_quantile = 0.5;      // γ ∈ [0, 1]
  double learning_rate = 0.2;        // η_C > 0 (the paper's default)
  double count_noise_stddev = 0.0;   // σ_b ≥ 0 on the count Σ b_i (0: not private)
};
void validate(const AdaptiveClipSpec& spec);

// Tracks the clip norm across rounds. State for checkpoints is clip_norm().
class AdaptiveClipper {
 public:
  AdaptiveClipper(AdaptiveClipSpec spec, double initial_clip_norm);
  double clip_norm() const { return clip_; }
  void set_clip_norm(double c);
  // b_i for one site: its delta's norm before clipping was at most the current C.
  static bool indicator(double pre_clip_norm, double clip_norm) { return pre_clip_norm <= clip_norm; }
  // One round: `at_or_below` = Σ b_i over the `reports` sites, `denominator` as DpSum's (> 0).
  // Noises the centred count with σ_b (drawn from `noise`; nothing is drawn when σ_b = 0),
  // forms b̄ and applies the geometric update. Returns the new C. ConfigError when
  // at_or_below > reports or denominator ≤ 0.
  double update(size_t at_or_below, size_t reports, double denominator, GaussianNoise& noise);
  // b̄ of the last update() (for metrics).
  double last_fraction() const { return last_fraction_; }

 private:
  AdaptiveClipSpec spec_;
  double clip_;
  double last_fraction_ = 0;
};

// z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2): the update noise multiplier that keeps the total privacy cost
// of (updates + noised count) at noise multiplier z (Andrew et al. 2021, Thm 1). σ_b = 0 returns
// z. Throws ConfigError when σ_b ≤ 1/(2z) (the count alone would spend the whole budget).
double adaptive_update_noise_multiplier(double z, double count_noise_stddev);

}  // namespace fedtl::protocols::dp

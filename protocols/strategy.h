// Server-side aggregation strategies over flat float32 parameter vectors (no LibTorch).
//
// The coordinator gathers each reporting site's delta Δ_i = x_i - x (local minus global)
// and sample count n_i, forms the weighted mean Δ = Σ n_i Δ_i / Σ n_i (summed exactly in
// fixed point as the updates arrive, so the result does not depend on arrival order; see
// WeightedMean), and asks the strategy to move the global model x by Δ:
//   FedAvg  : x += server_lr * Δ                     (server_lr = 1 is McMahan et al.)
//   FedProx : client-side proximal term μ (TrainingSpec.prox_mu); server as FedAvg
//   FedAdam : m = β1 m + (1-β1) Δ;  v = β2 v + (1-β2) Δ²;          x += lr m / (√v + τ)
//   FedYogi : m as Adam;  v = v - (1-β2) Δ² sign(v - Δ²);           x += lr m / (√v + τ)
// (Reddi et al. 2021, "Adaptive Federated Optimization", without bias correction.)
// m and v both start at zero (also for Yogi); state() is {m, v}, empty before the first apply.
// Not thread-safe; owned by the coordinator.
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace fedtl::protocols {

struct StrategySpec {
  std::string name = "fedavg";  // fedavg | fedprox | fedadam | fedyogi
  double server_lr = 1.0;       // FedAvg/FedProx step; FedAdam/FedYogi η
  double beta1 = 0.9;
  double beta2 = 0.99;
  double tau = 1e-3;            // adaptivity ε
  double prox_mu = 0.0;         // FedProx μ (sent to sites in TrainingSpec)
};

class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string name() const = 0;
  // Applies the mean delta to `global` in place. Sizes must match (else ConfigError).
  virtual void apply(std::vector<float>& global, const std::vector<double>& mean_delta) = 0;
  // Optimiser state for checkpoints (empty for stateless strategies).
  virtual std::vector<std::vector<float>> state() const { return {}; }
  virtual void set_state(const std::vector<std::vector<float>>& /*state*/) {}
};

// Throws ConfigError for an unknown name or out-of-range values (lr <= 0, β outside [0,1),
// τ <= 0, μ < 0).
std::unique_ptr<Strategy> make_strategy(const StrategySpec& spec);

// Sums weighted deltas exactly, so any order of add() calls gives the same bits: each
// w * Δ[j] is computed in double and rounded (to nearest, ties to even) to a multiple of
// 2^-kFractionBits; those integers are summed in 128 bits, where addition is associative.
// The mean is divided out once, at the end. Each update's contribution is a function of that
// update alone, so streaming (folding an update on arrival and freeing it) is bit-identical
// to any buffered order. Range: |w * Δ[j]| < 2^kMaxMagnitudeBits per value, at most
// kMaxUpdates updates: the sum cannot overflow. Memory: 16 bytes per value.
class WeightedMean {
 public:
  static constexpr int kFractionBits = 40;
  static constexpr int kMaxMagnitudeBits = 60;          // 2^100 in fixed point
  static constexpr uint64_t kMaxWeight = uint64_t{1} << 32;
  static constexpr size_t kMaxUpdates = size_t{1} << 26;  // 2^26 * 2^100 < 2^127

  explicit WeightedMean(size_t size) : sum_(size, 0) {}
  // Adds weight * delta and returns Σ delta[j]² (the update's squared L2 norm, from the same
  // pass: a caller bounding the norm subtracts an update it then rejects). Throws
  // ProtocolError if delta has the wrong size, weight is 0 or above kMaxWeight, any value is
  // not finite or out of range, or kMaxUpdates were added; a rejected update leaves no trace.
  double add(const std::vector<float>& delta, uint64_t weight);
  // Takes back an update added with the same delta and weight: exactly, as if it never was.
  void subtract(const std::vector<float>& delta, uint64_t weight);
  double total_weight() const { return static_cast<double>(weight_); }
  size_t count() const { return count_; }
  // Σ w_i Δ_i / Σ w_i. Throws ProtocolError if nothing was added.
  std::vector<double> mean() const;

 private:
  void subtract_first(const std::vector<float>& delta, uint64_t weight, size_t n);
  std::vector<__int128> sum_;
  uint64_t weight_ = 0;
  size_t count_ = 0;
};

}  // namespace fedtl::protocols

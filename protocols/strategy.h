// Server-side aggregation strategies over flat float32 parameter vectors (no LibTorch).
//
// The coordinator gathers each reporting site's delta Δ_i = x_i - x (local minus global)
// and sample count n_i, forms the weighted mean Δ = Σ n_i Δ_i / Σ n_i (accumulated in
// double, in site order, so the result does not depend on arrival order), and asks the
// strategy to move the global model x by Δ:
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

// Sums weighted deltas in a fixed order. add() must be called in site order for
// bit-reproducible results.
class WeightedMean {
 public:
  explicit WeightedMean(size_t size) : sum_(size, 0.0) {}
  // Adds weight * delta. Throws ProtocolError if delta has the wrong size, weight <= 0, or
  // any value is not finite.
  void add(const std::vector<float>& delta, double weight);
  double total_weight() const { return weight_; }
  size_t count() const { return count_; }
  // Σ w_i Δ_i / Σ w_i. Throws ProtocolError if nothing was added.
  std::vector<double> mean() const;

 private:
  std::vector<double> sum_;
  double weight_ = 0.0;
  size_t count_ = 0;
};

}  // namespace fedtl::protocols

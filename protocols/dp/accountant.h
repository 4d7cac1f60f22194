// Rényi-DP accountant for the sampled Gaussian mechanism (client-level DP-FedAvg).
//
// One federated round samples every site independently with probability q and releases the
// sum of clipped updates plus N(0, σ²C²) — the sampled Gaussian mechanism (SGM) with noise
// multiplier σ. Its Rényi divergence of order α is bounded as in Mironov, Talwar and Zhang
// (2019), "Rényi Differential Privacy of the Sampled Gaussian Mechanism", the computation
// used by TensorFlow Privacy's compute_rdp, Opacus's analysis/rdp.py and dp_accounting:
//   integer α:    A_α = Σ_{i=0..α} C(α,i) (1−q)^{α−i} q^i exp((i²−i)/(2σ²))   (log-sum-exp)
//   fractional α: the two-series expansion with erfc terms, summed until both
//                 terms fall below e^−30;
//   RDP(α) = log A_α / (α−1);  q = 1 gives the plain Gaussian mechanism α/(2σ²).
// RDP composes additively over rounds (and over different (σ, q) phases).
//
// Conversion to (ε, δ): the improved bound used by dp_accounting's RdpAccountant (and so by
// current TF Privacy) and by Opacus's get_privacy_spent (Balle et al. 2020, "Hypothesis testing
// interpretations and Rényi DP", Thm 21; Canonne, Kamath, Steinke 2020):
//   ε(α) = rdp(α) + log((α−1)/α) − (log δ + log α)/(α−1),   minimised over the orders,
// with ε(α) = 0 where δ² ≥ 1 − e^{−rdp(α)} and orders ≤ 1.01 skipped (as dp_accounting).
// The classic conversion ε = rdp − log δ/(α−1) (Mironov 2017; older TF Privacy tutorials, e.g.
// the MNIST README's ε = 3.01) is available as Conversion::kClassic; it is always ≥ the
// improved one.
//
// Adjacency is add/remove one site (all of one site's data). Every function here is pure and
// thread-safe; Accountant is a value type, not thread-safe. Bad arguments throw
// fedtl::ConfigError with a one-line message.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fedtl::protocols::dp {

// The orders α tried by default: 1.1, 1.2, ..., 10.9 (Opacus's fine grid),
// 1.25, 1.75 (TF Privacy's compute_dp_sgd_privacy), 11..64, 128, 256, 512, 1024. Sorted.
const std::vector<double>& default_orders();
// TF Privacy's compute_dp_sgd_privacy list:
// 1.25, 1.5, 1.75, 2, 2.25, 2.5, 3, 3.5, 4, 4.5, 5..63, 128, 256, 512.
const std::vector<double>& tf_privacy_orders();
// Opacus RDPAccountant.DEFAULT_ALPHAS: 1.1, 1.2, ..., 10.9, 12..63.
const std::vector<double>& opacus_orders();

enum class Conversion {
  kImproved,  // default, see above
  kClassic,   // ε = rdp − log δ / (α−1)
};

// RDP of ONE step of the SGM at order α > 1 (α may be fractional). q ∈ (0, 1], σ > 0.
double sgm_rdp(double q, double sigma, double order);
// RDP of `steps` steps at each order (steps * sgm_rdp).
std::vector<double> sgm_rdp(double q, double sigma, int64_t steps, const std::vector<double>& orders);

struct PrivacySpent {
  double epsilon = 0;  // +inf when no order gives a finite bound
  double order = 0;    // the optimal order α
};

// Converts composed RDP values (one per order) to ε at δ ∈ (0, 1).
PrivacySpent rdp_to_epsilon(const std::vector<double>& orders, const std::vector<double>& rdp, double delta,
                            Conversion conversion = Conversion::kImproved);

// ε (and the optimal order) after `steps` rounds of the SGM with noise multiplier σ and
// sampling rate q, at δ. Throws ConfigError for σ ≤ 0, q ∉ (0,1], δ ∉ (0,1), steps < 1.
PrivacySpent privacy_spent(double sigma, double q, int64_t steps, double delta,
                           const std::vector<double>& orders = default_orders(),
                           Conversion conversion = Conversion::kImproved);
double epsilon(double sigma, double q, int64_t steps, double delta);

// The smallest noise multiplier σ (to relative precision 1e-6, rounded up so that
// epsilon(σ, ...) ≤ target) that keeps ε ≤ target_epsilon after `steps` rounds. Bisection in
// log σ over [kMinNoiseMultiplier, kMaxNoiseMultiplier]; throws ConfigError when the target is
// ≤ 0, not reachable with σ ≤ kMaxNoiseMultiplier, or already met by kMinNoiseMultiplier
// (a target that loose says nothing), and for the same bad inputs as privacy_spent.
constexpr double kMinNoiseMultiplier = 1e-3;
constexpr double kMaxNoiseMultiplier = 1e6;
double noise_multiplier(double target_epsilon, double q, int64_t steps, double delta,
                        const std::vector<double>& orders = default_orders(),
                        Conversion conversion = Conversion::kImproved);

// Throw ConfigError with a one-line message naming the value (shared with the CLI).
void check_noise_multiplier(double sigma);
void check_sampling_rate(double q);
void check_delta(double delta);
void check_steps(int64_t steps);

// Incremental accountant: one step() per round that released a noised aggregate. Keeps the
// history as runs of equal (σ, q) — the whole state, small enough for a checkpoint — and the
// per-step RDP of each run, so the SGM's RDP is computed only when (σ, q) changes and
// epsilon() costs O(#runs × #orders). Copyable value type; not thread-safe.
class Accountant {
 public:
  struct Phase {
    double noise_multiplier = 0;
    double sampling_rate = 0;
    int64_t steps = 0;
    bool operator==(const Phase& o) const {
      return noise_multiplier == o.noise_multiplier && sampling_rate == o.sampling_rate && steps == o.steps;
    }
  };

  explicit Accountant(std::vector<double> orders = default_orders(), Conversion conversion = Conversion::kImproved);

  // Records `count` rounds with noise multiplier σ and sampling rate q (ConfigError on bad values).
  void step(double sigma, double q, int64_t count = 1);
  int64_t steps() const;
  const std::vector<Phase>& history() const { return history_; }
  const std::vector<double>& orders() const { return orders_; }

  // ε spent so far at δ (0 before the first step).
  PrivacySpent spent(double delta) const;
  double epsilon(double delta) const { return spent(delta).epsilon; }
  // ε that `count` more rounds at (σ, q) would bring, without recording them — for stopping a
  // job before it exceeds a target ε.
  double epsilon_after(double sigma, double q, int64_t count, double delta) const;

  // Checkpoint state: one line, "fedtl-rdp v1 <conversion> <orders,...> <σ:q:steps;...>",
  // doubles written exactly (%.17g). from_string throws fedtl::DataError on a malformed string.
  std::string to_string() const;
  static Accountant from_string(const std::string& state);

 private:
  // Composed RDP per order, with `extra_last` more steps in the last phase. Summed per phase as
  // steps × per-step RDP, so the result does not depend on how the steps were recorded (one
  // at a time or restored from a checkpoint).
  std::vector<double> composed(int64_t extra_last) const;

  std::vector<double> orders_;
  Conversion conversion_;
  std::vector<Phase> history_;
  std::vector<std::vector<double>> phase_rdp_;  // per-step RDP of each phase, per order
};

}  // namespace fedtl::protocols::dp

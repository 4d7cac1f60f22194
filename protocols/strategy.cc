#include "protocols/strategy.h"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include <cmath>
#include <sstream>

#include "common/errors.h"

namespace fedtl::protocols {
namespace {

void check_sizes(const char* strategy, size_t global, size_t delta) {
  if (global != delta) {
    throw ConfigError(std::string(strategy) + ": mean delta has " + std::to_string(delta) +
                      " values but the global model has " + std::to_string(global));
  }
}

class FedAvg : public Strategy {
 public:
  FedAvg(std::string name, double lr) : name_(std::move(name)), lr_(lr) {}
  std::string name() const override { return name_; }
  void apply(std::vector<float>& global, const std::vector<double>& mean_delta) override {
    check_sizes(name_.c_str(), global.size(), mean_delta.size());
    for (size_t i = 0; i < global.size(); ++i) {
      global[i] = static_cast<float>(static_cast<double>(global[i]) + lr_ * mean_delta[i]);
    }
  }

 private:
  std::string name_;
  double lr_;
};

// FedProx differs from FedAvg only on the sites (the proximal term μ travels in
// TrainingSpec.prox_mu); the server step is FedAvg's.
class FedProx : public FedAvg {
 public:
  FedProx(double lr, double mu) : FedAvg("fedprox", lr), mu_(mu) {}
  double mu() const { return mu_; }

 private:
  double mu_;
};

// FedAdam and FedYogi share the first moment and the update; they differ in how v moves.
// m and v start at zero (no bias correction, as in Reddi et al.) and are kept as float so
// that state() -> set_state() round-trips exactly through a checkpoint.
class AdaptiveStrategy : public Strategy {
 public:
  AdaptiveStrategy(std::string name, bool yogi, const StrategySpec& s)
      : name_(std::move(name)), yogi_(yogi), lr_(s.server_lr), beta1_(s.beta1),
        beta2_(s.beta2), tau_(s.tau) {}

  std::string name() const override { return name_; }

  void apply(std::vector<float>& global, const std::vector<double>& mean_delta) override {
    check_sizes(name_.c_str(), global.size(), mean_delta.size());
    if (m_.empty() && v_.empty()) {
      m_.assign(global.size(), 0.0f);
      v_.assign(global.size(), 0.0f);
    }
    check_sizes(name_.c_str(), m_.size(), mean_delta.size());
    for (size_t i = 0; i < global.size(); ++i) {
      const double d = mean_delta[i];
      const double d2 = d * d;
      const double m = beta1_ * m_[i] + (1.0 - beta1_) * d;
      double v = v_[i];
      if (yogi_) {
        const double diff = v - d2;
        const double sign = diff > 0 ? 1.0 : (diff < 0 ? -1.0 : 0.0);
        v = v - (1.0 - beta2_) * d2 * sign;
      } else {
        v = beta2_ * v + (1.0 - beta2_) * d2;
      }
      m_[i] = static_cast<float>(m);
      v_[i] = static_cast<float>(v);
      global[i] = static_cast<float>(global[i] + lr_ * m / (std::sqrt(v) + tau_));
    }
  }

  std::vector<std::vector<float>> state() const override {
    if (m_.empty()) return {};
    return {m_, v_};
  }

  void set_state(const std::vector<std::vector<float>>& state) override {
    if (state.empty()) {  // reset to the initial (zero) state
      m_.clear();
      v_.clear();
      return;
    }
    if (state.size() != 2 || state[0].size() != state[1].size()) {
      throw ConfigError(name_ + ": optimiser state must be two equal-length vectors {m, v}");
    }
    for (float x : state[1]) {
      if (!(x >= 0.0f) || !std::isfinite(x)) {
        throw ConfigError(name_ + ": optimiser state v must be finite and non-negative");
      }
    }
    m_ = state[0];
    v_ = state[1];
  }

 private:
  std::string name_;
  bool yogi_;
  double lr_, beta1_, beta2_, tau_;
  std::vector<float> m_, v_;
};

std::string format_value(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

}  // namespace

std::unique_ptr<Strategy> make_strategy(const StrategySpec& spec) {
  auto bad = [&](const std::string& field, double value, const char* rule) {
    throw ConfigError("strategy " + spec.name + ": " + field + " = " + format_value(value) +
                      " is out of range (" + rule + ")");
  };
  if (!std::isfinite(spec.server_lr) || spec.server_lr <= 0) bad("server_lr", spec.server_lr, "must be > 0");
  if (!(spec.beta1 >= 0 && spec.beta1 < 1)) bad("beta1", spec.beta1, "must be in [0, 1)");
  if (!(spec.beta2 >= 0 && spec.beta2 < 1)) bad("beta2", spec.beta2, "must be in [0, 1)");
  if (!std::isfinite(spec.tau) || spec.tau <= 0) bad("tau", spec.tau, "must be > 0");
  if (!std::isfinite(spec.prox_mu) || spec.prox_mu < 0) bad("prox_mu", spec.prox_mu, "must be >= 0");

  if (spec.name == "fedavg") return std::make_unique<FedAvg>("fedavg", spec.server_lr);
  if (spec.name == "fedprox") return std::make_unique<FedProx>(spec.server_lr, spec.prox_mu);
  if (spec.name == "fedadam") return std::make_unique<AdaptiveStrategy>("fedadam", false, spec);
  if (spec.name == "fedyogi") return std::make_unique<AdaptiveStrategy>("fedyogi", true, spec);
  throw ConfigError("unknown strategy \"" + spec.name +
                    "\" (expected fedavg, fedprox, fedadam or fedyogi)");
}

namespace {
// A scaled value (|x| < 2^100) as the integer it rounds to (to nearest, ties to even). Below
// 2^62 one cvtsd2si does it (written as the intrinsic: std::llrint stays a libm call, since it
// may set errno, and was 1 in 9 of a 1,000-site simulation's cycles with its caller); above,
// x is integral already and converts exactly.
__int128 to_fixed(double x) {
#if defined(__SSE2__)
  if (std::fabs(x) < 0x1p62) return static_cast<long long>(_mm_cvtsd_si64(_mm_set_sd(x)));
#else
  if (std::fabs(x) < 0x1p62) return static_cast<long long>(std::llrint(x));
#endif
  return static_cast<__int128>(std::nearbyint(x));
}
}  // namespace

double WeightedMean::add(const std::vector<float>& delta, uint64_t weight) {
  if (delta.size() != sum_.size()) {
    throw ProtocolError("update has " + std::to_string(delta.size()) + " values, expected " +
                        std::to_string(sum_.size()));
  }
  if (weight == 0 || weight > kMaxWeight) {
    throw ProtocolError("update weight " + std::to_string(weight) + " must be in [1, 2^32]");
  }
  if (count_ >= kMaxUpdates) throw ProtocolError("more than 2^26 updates in one mean");
  // One pass: each value is range-checked, scaled, rounded and added, and its square summed.
  // A bad value stops the pass and what was added is subtracted again, exactly (integers).
  const double scale = std::ldexp(static_cast<double>(weight), kFractionBits);  // exact: w <= 2^32
  const double limit = std::ldexp(1.0, kMaxMagnitudeBits + kFractionBits);
  double sq[4] = {0, 0, 0, 0};  // independent chains (a single sum is latency-bound)
  const size_t n = delta.size();
  size_t i = 0;
  for (; i < n; ++i) {
    const double v = static_cast<double>(delta[i]);
    const double x = scale * v;
    if (!(std::fabs(x) < limit)) break;  // NaN and inf fail this too
    sum_[i] += to_fixed(x);
    sq[i & 3] += v * v;
  }
  if (i < n) {
    subtract_first(delta, weight, i);
    if (!std::isfinite(delta[i]))
      throw ProtocolError("update value at index " + std::to_string(i) + " is not finite");
    throw ProtocolError("update value at index " + std::to_string(i) + " times its weight is beyond 2^60");
  }
  weight_ += weight;
  ++count_;
  return (sq[0] + sq[1]) + (sq[2] + sq[3]);
}

void WeightedMean::subtract_first(const std::vector<float>& delta, uint64_t weight, size_t n) {
  const double scale = std::ldexp(static_cast<double>(weight), kFractionBits);
  for (size_t i = 0; i < n; ++i) sum_[i] -= to_fixed(scale * static_cast<double>(delta[i]));
}

void WeightedMean::subtract(const std::vector<float>& delta, uint64_t weight) {
  if (delta.size() != sum_.size() || count_ == 0 || weight > weight_)
    throw ProtocolError("subtracting an update that was not added");
  subtract_first(delta, weight, delta.size());
  weight_ -= weight;
  --count_;
}

std::vector<double> WeightedMean::mean() const {
  if (count_ == 0) throw ProtocolError("no updates to average");
  std::vector<double> out(sum_.size());
  const double w = static_cast<double>(weight_);
  for (size_t i = 0; i < sum_.size(); ++i)
    out[i] = std::ldexp(static_cast<double>(sum_[i]), -kFractionBits) / w;
  return out;
}

}  // namespace fedtl::protocols

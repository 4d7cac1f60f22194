#include "protocols/dp/accountant.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <sstream>

#include "common/errors.h"

namespace fedtl::protocols::dp {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kMaxOrder = 1e5;

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

double log_add(double a, double b) {
  if (a < b) std::swap(a, b);
  if (b == -kInf) return a;
  return a + std::log1p(std::exp(b - a));
}

// log(e^a - e^b), a >= b.
double log_sub(double a, double b, double order) {
  if (b == -kInf) return a;
  if (a < b)
    throw ConfigError("RDP series lost precision at order " + fmt(order) +
                      " (noise multiplier or sampling rate outside the numerically stable range)");
  if (a == b) return -kInf;
  // expm1 overflows for a - b > ~709; the log1p form is the accurate one away from a ≈ b.
  return a - b > 1 ? a + std::log1p(-std::exp(b - a)) : b + std::log(std::expm1(a - b));
}

// log(erfc(x)) without underflow for large x.
double log_erfc(double x) {
  double r = std::erfc(x);
  if (r > 1e-300) return std::log(r);
  // Asymptotic expansion of erfc for large x (as TF Privacy's fallback).
  return -std::log(M_PI) / 2 - std::log(x) - x * x - .5 * std::pow(x, -2) + .625 * std::pow(x, -4) -
         37. / 24. * std::pow(x, -6) + 353. / 64. * std::pow(x, -8);
}

// log A_α for integer α: log-sum-exp of the binomial expansion.
double log_a_int(double q, double sigma, int64_t alpha) {
  const double lq = std::log(q), l1q = std::log1p(-q), a = static_cast<double>(alpha);
  const double lga = std::lgamma(a + 1);
  double log_a = -kInf;
  for (int64_t i = 0; i <= alpha; ++i) {
    const double di = static_cast<double>(i);
    const double log_coef = lga - std::lgamma(di + 1) - std::lgamma(a - di + 1);
    log_a = log_add(log_a, log_coef + di * lq + (a - di) * l1q + (di * di - di) / (2 * sigma * sigma));
  }
  return log_a;
}

// log A_α for fractional α: Mironov-Talwar-Zhang's two series, until both terms < e^-30.
double log_a_frac(double q, double sigma, double alpha) {
  double log_a0 = -kInf, log_a1 = -kInf;
  const double z0 = sigma * sigma * std::log(1 / q - 1) + .5;
  const double lq = std::log(q), l1q = std::log1p(-q), s2 = 2 * sigma * sigma, rt2s = std::sqrt(2.0) * sigma;
  double log_coef = 0;  // log |C(α, i)|, built by C(α, i+1) = C(α, i) (α - i) / (i + 1)
  bool positive = true;
  for (int64_t k = 0;; ++k) {
    const double i = static_cast<double>(k), j = alpha - i;
    const double log_t0 = log_coef + i * lq + j * l1q;
    const double log_t1 = log_coef + j * lq + i * l1q;
    const double log_e0 = std::log(.5) + log_erfc((i - z0) / rt2s);
    const double log_e1 = std::log(.5) + log_erfc((z0 - j) / rt2s);
    const double log_s0 = log_t0 + (i * i - i) / s2 + log_e0;
    const double log_s1 = log_t1 + (j * j - j) / s2 + log_e1;
    if (positive) {
      log_a0 = log_add(log_a0, log_s0);
      log_a1 = log_add(log_a1, log_s1);
    } else {
      log_a0 = log_sub(log_a0, log_s0, alpha);
      log_a1 = log_sub(log_a1, log_s1, alpha);
    }
    if (std::max(log_s0, log_s1) < -30) break;
    if (k > 1000000)
      throw ConfigError("RDP series did not converge at order " + fmt(alpha) + " (noise multiplier " + fmt(sigma) +
                        ")");
    const double ratio = alpha - i;
    log_coef += std::log(std::fabs(ratio)) - std::log(i + 1);
    if (ratio < 0) positive = !positive;
  }
  return log_add(log_a0, log_a1);
}

void check_order(double order) {
  if (!(order > 1) || !(order <= kMaxOrder))
    throw ConfigError("RDP order " + fmt(order) + " must be in (1, " + fmt(kMaxOrder) + "]");
}

std::vector<double> make_default_orders() {
  std::vector<double> o;
  for (int x = 1; x < 100; ++x) o.push_back(1 + x / 10.0);
  o.push_back(1.25);
  o.push_back(1.75);
  for (int a = 11; a <= 64; ++a) o.push_back(a);
  for (double a : {128., 256., 512., 1024.}) o.push_back(a);
  std::sort(o.begin(), o.end());
  o.erase(std::unique(o.begin(), o.end()), o.end());
  return o;
}

const char* conversion_name(Conversion c) { return c == Conversion::kClassic ? "classic" : "improved"; }

}  // namespace

const std::vector<double>& default_orders() {
  static const std::vector<double> orders = make_default_orders();
  return orders;
}

const std::vector<double>& tf_privacy_orders() {
  static const std::vector<double> orders = [] {
    std::vector<double> o = {1.25, 1.5, 1.75, 2., 2.25, 2.5, 3., 3.5, 4., 4.5};
    for (int a = 5; a < 64; ++a) o.push_back(a);
    for (double a : {128., 256., 512.}) o.push_back(a);
    return o;
  }();
  return orders;
}

const std::vector<double>& opacus_orders() {
  static const std::vector<double> orders = [] {
    std::vector<double> o;
    for (int x = 1; x < 100; ++x) o.push_back(1 + x / 10.0);
    for (int a = 12; a < 64; ++a) o.push_back(a);
    return o;
  }();
  return orders;
}

void check_noise_multiplier(double sigma) {
  if (!(sigma > 0) || !std::isfinite(sigma))
    throw ConfigError("noise multiplier " + fmt(sigma) + " must be a finite number > 0");
}

void check_sampling_rate(double q) {
  if (!(q > 0 && q <= 1)) throw ConfigError("sampling rate " + fmt(q) + " must be in (0, 1]");
}

void check_delta(double delta) {
  if (!(delta > 0 && delta < 1)) throw ConfigError("delta " + fmt(delta) + " must be in (0, 1)");
}

void check_steps(int64_t steps) {
  if (steps < 1) throw ConfigError("steps " + std::to_string(steps) + " must be at least 1");
}

double sgm_rdp(double q, double sigma, double order) {
  check_sampling_rate(q);
  check_noise_multiplier(sigma);
  check_order(order);
  if (q == 1.0) return order / (2 * sigma * sigma);
  double log_a = std::floor(order) == order ? log_a_int(q, sigma, static_cast<int64_t>(order))
                                             : log_a_frac(q, sigma, order);
  // A_α >= 1 mathematically; rounding can give a hair below.
  return std::max(0.0, log_a / (order - 1));
}

std::vector<double> sgm_rdp(double q, double sigma, int64_t steps, const std::vector<double>& orders) {
  check_steps(steps);
  std::vector<double> r;
  r.reserve(orders.size());
  for (double a : orders) r.push_back(static_cast<double>(steps) * sgm_rdp(q, sigma, a));
  return r;
}

PrivacySpent rdp_to_epsilon(const std::vector<double>& orders, const std::vector<double>& rdp, double delta,
                            Conversion conversion) {
  check_delta(delta);
  if (orders.empty() || orders.size() != rdp.size())
    throw ConfigError("rdp_to_epsilon: " + std::to_string(orders.size()) + " orders but " +
                      std::to_string(rdp.size()) + " RDP values");
  PrivacySpent best{kInf, orders.front()};
  const double log_delta = std::log(delta);
  for (size_t k = 0; k < orders.size(); ++k) {
    const double a = orders[k], r = rdp[k];
    if (!(a >= 1)) throw ConfigError("RDP order " + fmt(a) + " must be at least 1");
    if (!(r >= 0)) throw ConfigError("RDP value " + fmt(r) + " at order " + fmt(a) + " must be >= 0");
    double eps;
    if (conversion == Conversion::kClassic) {
      eps = a > 1 ? r - log_delta / (a - 1) : kInf;
    } else if (delta * delta + std::expm1(-r) >= 0) {
      eps = 0;  // δ ≥ sqrt(1 - e^{-KL}): (0, δ)-DP outright
    } else if (a > 1.01) {
      eps = r + std::log1p(-1 / a) - (log_delta + std::log(a)) / (a - 1);
    } else {
      eps = kInf;  // unstable as α → 1 and never the optimum
    }
    if (eps < best.epsilon) best = {eps, a};
  }
  best.epsilon = std::max(0.0, best.epsilon);
  return best;
}

PrivacySpent privacy_spent(double sigma, double q, int64_t steps, double delta, const std::vector<double>& orders,
                           Conversion conversion) {
  check_noise_multiplier(sigma);
  check_sampling_rate(q);
  check_steps(steps);
  check_delta(delta);
  return rdp_to_epsilon(orders, sgm_rdp(q, sigma, steps, orders), delta, conversion);
}

double epsilon(double sigma, double q, int64_t steps, double delta) {
  return privacy_spent(sigma, q, steps, delta).epsilon;
}

double noise_multiplier(double target_epsilon, double q, int64_t steps, double delta,
                        const std::vector<double>& orders, Conversion conversion) {
  check_sampling_rate(q);
  check_steps(steps);
  check_delta(delta);
  if (!(target_epsilon > 0) || !std::isfinite(target_epsilon))
    throw ConfigError("target epsilon " + fmt(target_epsilon) + " must be a finite number > 0");
  auto meets = [&](double s) {
    return privacy_spent(s, q, steps, delta, orders, conversion).epsilon <= target_epsilon;
  };
  // Bracket [lo, hi] with meets(hi) and !meets(lo), starting from σ = 1.
  double lo = 1, hi = 1;
  if (meets(1)) {
    while (meets(lo)) {
      hi = lo;
      if (lo <= kMinNoiseMultiplier)
        throw ConfigError("target epsilon " + fmt(target_epsilon) + " is met even with noise multiplier " +
                          fmt(kMinNoiseMultiplier) + " (q=" + fmt(q) + ", steps=" + std::to_string(steps) +
                          ", delta=" + fmt(delta) + "): choose a smaller target");
      lo = std::max(lo / 2, kMinNoiseMultiplier);
    }
  } else {
    while (!meets(hi)) {
      lo = hi;
      if (hi >= kMaxNoiseMultiplier)
        throw ConfigError("target epsilon " + fmt(target_epsilon) + " cannot be reached with noise multiplier <= " +
                          fmt(kMaxNoiseMultiplier) + " (q=" + fmt(q) + ", steps=" + std::to_string(steps) +
                          ", delta=" + fmt(delta) + "): raise epsilon or delta, or lower the sampling rate or steps");
      hi = std::min(hi * 2, kMaxNoiseMultiplier);
    }
  }
  while (hi / lo > 1 + 1e-7) {
    const double mid = std::sqrt(lo * hi);
    (meets(mid) ? hi : lo) = mid;
  }
  return hi;
}

// ---------------------------------------------------------------------------------------------

Accountant::Accountant(std::vector<double> orders, Conversion conversion)
    : orders_(std::move(orders)), conversion_(conversion) {
  if (orders_.empty()) throw ConfigError("privacy accountant needs at least one RDP order");
  for (double a : orders_) check_order(a);
}

void Accountant::step(double sigma, double q, int64_t count) {
  check_noise_multiplier(sigma);
  check_sampling_rate(q);
  check_steps(count);
  if (!history_.empty() && history_.back().noise_multiplier == sigma && history_.back().sampling_rate == q) {
    history_.back().steps += count;
  } else {
    phase_rdp_.push_back(sgm_rdp(q, sigma, 1, orders_));
    history_.push_back({sigma, q, count});
  }
}

int64_t Accountant::steps() const {
  int64_t n = 0;
  for (const auto& p : history_) n += p.steps;
  return n;
}

std::vector<double> Accountant::composed(int64_t extra_last) const {
  std::vector<double> total(orders_.size(), 0.0);
  for (size_t p = 0; p < history_.size(); ++p) {
    const double n = static_cast<double>(history_[p].steps + (p + 1 == history_.size() ? extra_last : 0));
    for (size_t k = 0; k < orders_.size(); ++k) total[k] += n * phase_rdp_[p][k];
  }
  return total;
}

PrivacySpent Accountant::spent(double delta) const {
  check_delta(delta);
  if (history_.empty()) return {0.0, orders_.front()};
  return rdp_to_epsilon(orders_, composed(0), delta, conversion_);
}

double Accountant::epsilon_after(double sigma, double q, int64_t count, double delta) const {
  check_noise_multiplier(sigma);
  check_sampling_rate(q);
  check_steps(count);
  check_delta(delta);
  if (!history_.empty() && history_.back().noise_multiplier == sigma && history_.back().sampling_rate == q)
    return rdp_to_epsilon(orders_, composed(count), delta, conversion_).epsilon;
  std::vector<double> total = composed(0);
  const std::vector<double> r = sgm_rdp(q, sigma, 1, orders_);
  for (size_t k = 0; k < orders_.size(); ++k) total[k] += static_cast<double>(count) * r[k];
  return rdp_to_epsilon(orders_, total, delta, conversion_).epsilon;
}

std::string Accountant::to_string() const {
  std::string s = "fedtl-rdp v1 ";
  s += conversion_name(conversion_);
  s += ' ';
  char buf[96];
  for (size_t k = 0; k < orders_.size(); ++k) {
    std::snprintf(buf, sizeof buf, "%s%.17g", k ? "," : "", orders_[k]);
    s += buf;
  }
  s += ' ';
  if (history_.empty()) s += '-';
  for (size_t k = 0; k < history_.size(); ++k) {
    std::snprintf(buf, sizeof buf, "%s%.17g:%.17g:%" PRId64, k ? ";" : "", history_[k].noise_multiplier,
                  history_[k].sampling_rate, history_[k].steps);
    s += buf;
  }
  return s;
}

Accountant Accountant::from_string(const std::string& state) {
  auto bad = [&](const std::string& why) {
    return DataError("privacy accountant state is malformed (" + why + "): '" + state.substr(0, 80) + "'");
  };
  std::istringstream in(state);
  std::string magic, version, conv, orders_s, hist_s, extra;
  if (!(in >> magic >> version >> conv >> orders_s >> hist_s) || (in >> extra)) throw bad("expected 5 fields");
  if (magic != "fedtl-rdp" || version != "v1") throw bad("unknown header");
  Conversion conversion;
  if (conv == "improved")
    conversion = Conversion::kImproved;
  else if (conv == "classic")
    conversion = Conversion::kClassic;
  else
    throw bad("unknown conversion");
  auto parse_double = [&](const std::string& t) {
    char* end = nullptr;
    double v = std::strtod(t.c_str(), &end);
    if (t.empty() || *end != '\0') throw bad("not a number: " + t);
    return v;
  };
  auto split = [](const std::string& s, char sep) {
    std::vector<std::string> parts;
    size_t start = 0;
    for (;;) {
      size_t p = s.find(sep, start);
      parts.push_back(s.substr(start, p - start));
      if (p == std::string::npos) break;
      start = p + 1;
    }
    return parts;
  };
  std::vector<double> orders;
  for (const auto& t : split(orders_s, ',')) orders.push_back(parse_double(t));
  try {
    Accountant acc(std::move(orders), conversion);
    if (hist_s != "-") {
      for (const auto& phase : split(hist_s, ';')) {
        auto f = split(phase, ':');
        if (f.size() != 3) throw bad("phase is not sigma:q:steps");
        char* end = nullptr;
        long long n = std::strtoll(f[2].c_str(), &end, 10);
        if (f[2].empty() || *end != '\0') throw bad("steps is not an integer: " + f[2]);
        acc.step(parse_double(f[0]), parse_double(f[1]), n);
      }
    }
    return acc;
  } catch (const ConfigError& e) {
    throw bad(e.what());
  }
}

}  // namespace fedtl::protocols::dp

#include "app/privacy.h"

#include <cmath>
#include <cstdio>

#include "common/errors.h"
#include "protocols/dp/accountant.h"

namespace fedtl::app {
namespace {

namespace dp = protocols::dp;

const std::vector<double>& orders_by_name(const std::string& name) {
  if (name == "default") return dp::default_orders();
  if (name == "tf-privacy") return dp::tf_privacy_orders();
  if (name == "opacus") return dp::opacus_orders();
  throw ConfigError("--orders '" + name + "' is not one of default, tf-privacy, opacus");
}

dp::Conversion conversion_by_name(const std::string& name) {
  if (name == "improved") return dp::Conversion::kImproved;
  if (name == "classic") return dp::Conversion::kClassic;
  throw ConfigError("--conversion '" + name + "' is not one of improved, classic");
}

std::string num(double v, const char* f = "%.6g") {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string eps_str(double e) { return std::isfinite(e) && e >= 0.01 ? num(e, "%.4f") : num(e); }

void print_spent(const dp::PrivacySpent& s, const PrivacyArgs& a, std::ostream& out) {
  out << "epsilon " << eps_str(s.epsilon) << "\ndelta " << num(a.delta) << "\norder " << num(s.order)
      << "\nconversion " << a.conversion << "\n";
}

}  // namespace

void run_privacy_epsilon(const PrivacyArgs& a, std::ostream& out) {
  const auto& orders = orders_by_name(a.orders);
  const auto conv = conversion_by_name(a.conversion);
  print_spent(dp::privacy_spent(a.noise_multiplier, a.sampling_rate, a.steps, a.delta, orders, conv), a, out);
}

void run_privacy_noise(const PrivacyArgs& a, std::ostream& out) {
  const auto& orders = orders_by_name(a.orders);
  const auto conv = conversion_by_name(a.conversion);
  const double sigma = dp::noise_multiplier(a.target_epsilon, a.sampling_rate, a.steps, a.delta, orders, conv);
  out << "noise_multiplier " << num(sigma) << "\n";
  print_spent(dp::privacy_spent(sigma, a.sampling_rate, a.steps, a.delta, orders, conv), a, out);
}

}  // namespace fedtl::app

#include "cli/privacy.h"

#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>

#include "common/errors.h"
#include "protocols/dp/accountant.h"

namespace fedtl::cli {
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

// Runs `action`, translating a fedtl::Error into main's one-line report and exit status 1.
void guarded(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& e) {
    std::cerr << "fedtl: error: " << e.what() << "\n";
    throw CLI::RuntimeError(1);
  }
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

void add_privacy_command(CLI::App& app) {
  auto args = std::make_shared<PrivacyArgs>();
  auto* priv = app.add_subcommand("privacy", "differential privacy budget: RDP accountant for DP-FedAvg");
  priv->require_subcommand(1);

  auto common_options = [args](CLI::App* sub) {
    sub->add_option("--sampling-rate,-q", args->sampling_rate, "probability q in (0, 1] that a site takes part in a round")
        ->required();
    sub->add_option("--steps,-T", args->steps, "number of rounds (noised aggregates released), >= 1")->required();
    sub->add_option("--delta", args->delta, "delta in (0, 1), e.g. 1e-5")->required();
    sub->add_option("--orders", args->orders, "RDP orders: default | tf-privacy | opacus")->capture_default_str();
    sub->add_option("--conversion", args->conversion, "RDP -> (eps, delta): improved | classic")
        ->capture_default_str();
  };

  auto* eps = priv->add_subcommand("epsilon", "print the epsilon spent by T rounds at noise multiplier sigma");
  eps->add_option("--noise-multiplier,-z", args->noise_multiplier, "noise std / clip norm (sigma > 0)")->required();
  common_options(eps);
  eps->callback([args] { guarded([&] { run_privacy_epsilon(*args, std::cout); }); });

  auto* noise = priv->add_subcommand("noise", "print the noise multiplier that keeps T rounds within a target epsilon");
  noise->add_option("--target-epsilon,-e", args->target_epsilon, "epsilon budget (> 0)")->required();
  common_options(noise);
  noise->callback([args] { guarded([&] { run_privacy_noise(*args, std::cout); }); });
}

}  // namespace fedtl::cli

#include <iostream>
#include <memory>

#include "app/privacy.h"
#include "cli/commands.h"

namespace fedtl::cli {

Command add_privacy(CLI::App& app) {
  auto args = std::make_shared<app::PrivacyArgs>();
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

  auto* noise = priv->add_subcommand("noise", "print the noise multiplier that keeps T rounds within a target epsilon");
  noise->add_option("--target-epsilon,-e", args->target_epsilon, "epsilon budget (> 0)")->required();
  common_options(noise);
  return {priv, FEDTL_CLI_ACTION([args, eps](common::StopSignal&) {
            if (*eps)
              app::run_privacy_epsilon(*args, std::cout);
            else
              app::run_privacy_noise(*args, std::cout);
            return 0;
          }),
          args};
}

}  // namespace fedtl::cli

#include <iostream>
#include <memory>

#include "app/run.h"
#include "cli/commands.h"

namespace fedtl::cli {

Command add_worker(CLI::App& app) {
  auto config = std::make_shared<std::string>();
  auto* wk = app.add_subcommand("worker", "run one site: connect to the coordinator, train on local data");
  auto inspect = std::make_shared<bool>(false);
  wk->add_option("--config,-c", *config, "site file (TOML): kit, coordinator address, data, policy")->required();
  wk->add_flag("--inspect-job", *inspect,
               "connect, receive and verify the job and its backbone, print what this site would run "
               "(backbone digest and operators, trainable parts, rounds, epochs, learning rates, DP, secure "
               "aggregation, policy verdict), leave before Ready and exit");
  return {wk, [config, inspect](common::StopSignal& stop) {
            return app::run_worker(app::load_site_config(*config), &stop, *inspect ? &std::cout : nullptr);
          }};
}

}  // namespace fedtl::cli

#include <iostream>
#include <memory>

#include "app/run.h"
#include "cli/commands.h"

namespace fedtl::cli {

Command add_worker(CLI::App& app) {
  struct Args {
    std::string config;
    bool inspect = false;
  };
  auto a = std::make_shared<Args>();
  auto* wk = app.add_subcommand("worker", "run one site: connect to the coordinator, train on local data");
  wk->add_option("--config,-c", a->config, "site file (TOML): kit, coordinator address, data, policy")->required();
  wk->add_flag("--inspect-job", a->inspect,
               "connect, receive and verify the job and its backbone, print what this site would run "
               "(backbone digest and operators, trainable parts, rounds, epochs, learning rates, DP, secure "
               "aggregation, policy verdict), leave before Ready and exit");
  return {wk, FEDTL_CLI_ACTION([a](common::StopSignal& stop) {
            return app::run_worker(app::load_site_config(a->config), &stop, a->inspect ? &std::cout : nullptr);
          }),
          a};
}

}  // namespace fedtl::cli

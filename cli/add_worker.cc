#include <memory>

#include "app/run.h"
#include "cli/commands.h"

namespace fedtl::cli {

Command add_worker(CLI::App& app) {
  auto config = std::make_shared<std::string>();
  auto* wk = app.add_subcommand("worker", "run one site: connect to the coordinator, train on local data");
  wk->add_option("--config,-c", *config, "site file (TOML): kit, coordinator address, data, policy")->required();
  return {wk, [config](common::StopSignal& stop) { return app::run_worker(app::load_site_config(*config), &stop); }};
}

}  // namespace fedtl::cli

#include <iostream>
#include <memory>

#include "app/run.h"
#include "cli/commands.h"

namespace fedtl::cli {

Command add_coordinator(CLI::App& app) {
  struct Args {
    std::string config;
    app::SimulateOverrides ov;
  };
  auto a = std::make_shared<Args>();
  auto* co = app.add_subcommand("coordinator", "serve a job over mutual TLS to the sites listed in its [federation]");
  add_job_options(co, a->config, a->ov, "job file (TOML) with a [federation] section");
  co->add_flag("--resume", a->ov.resume, "continue from the last good checkpoint in --out; sites reconnect by themselves");
  return {co, FEDTL_CLI_ACTION([a](common::StopSignal& stop) {
            auto cfg = app::apply_overrides(app::load_job_config(a->config), a->ov);
            // A job that applied no round exits 1 with one error line (app::finish_job).
            return app::finish_job(app::run_coordinator(cfg, &stop), cfg.rounds, std::cout, std::cerr);
          }),
          a};
}

}  // namespace fedtl::cli

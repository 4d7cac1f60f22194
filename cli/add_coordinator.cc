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
  co->add_option("--config,-c", a->config, "job file (TOML) with a [federation] section")->required();
  co->add_option("--rounds", a->ov.rounds, "federated rounds (overrides job.rounds)");
  co->add_option("--seed", a->ov.seed, "seed (overrides job.seed)");
  co->add_option("--out", a->ov.out, "output directory (overrides job.out)");
  co->add_flag("--resume", a->ov.resume, "continue from the last good checkpoint in --out; sites reconnect by themselves");
  return {co, [a](common::StopSignal& stop) {
            auto cfg = app::apply_overrides(app::load_job_config(a->config), a->ov);
            app::print_result(app::run_coordinator(cfg, &stop), std::cout);
            return 0;
          }};
}

}  // namespace fedtl::cli

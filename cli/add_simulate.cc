#include <iostream>
#include <memory>

#include "app/run.h"
#include "cli/commands.h"

namespace fedtl::cli {

void add_job_options(CLI::App* sub, std::string& config, app::SimulateOverrides& ov, const char* config_help) {
  sub->add_option("--config,-c", config, config_help)->required();
  sub->add_option("--rounds", ov.rounds, "federated rounds (overrides job.rounds)");
  sub->add_option("--seed", ov.seed, "seed (overrides job.seed)");
  sub->add_option("--out", ov.out, "output directory (overrides job.out); a previous run there is kept unless --resume or --force");
  sub->add_flag("--force", ov.force, "overwrite the outputs of a previous run in --out");
  sub->add_option("--status-port", ov.status_port,
                  "serve a live status page, /status (JSON) and /metrics (Prometheus) on this port "
                  "(job.status_address: loopback unless the job names another address)");
}

Command add_simulate(CLI::App& app) {
  struct Args {
    std::string config;
    app::SimulateOverrides ov;
  };
  auto a = std::make_shared<Args>();
  auto* sim = app.add_subcommand("simulate", "run a job with N simulated sites in this process (in-process transport)");
  add_job_options(sim, a->config, a->ov, "job file (TOML), e.g. examples/hospitals/job.toml");
  sim->add_option("--sites", a->ov.sites, "number of sites (overrides job.sites)");
  sim->add_flag("--baselines", a->ov.baselines, "also run local-only, centralised and from-scratch baselines");
  sim->add_flag("--resume", a->ov.resume, "continue from the last good checkpoint in --out");
  return {sim, FEDTL_CLI_ACTION([a](common::StopSignal& stop) {
            auto cfg = app::apply_overrides(app::load_job_config(a->config), a->ov);
            // A job that applied no round exits 1 with one error line (app::finish_job).
            return app::finish_job(app::run_simulate(cfg, &stop), cfg.rounds, std::cout, std::cerr);
          }),
          a};
}

}  // namespace fedtl::cli

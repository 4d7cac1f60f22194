#include <memory>

#include "app/mpi_job.h"
#include "app/run.h"
#include "cli/commands.h"

namespace fedtl::cli {

Command add_mpi(CLI::App& app) {
  struct Args {
    std::string config;
    app::SimulateOverrides ov;
    app::MpiRunOptions opt;
  };
  auto a = std::make_shared<Args>();
  auto* mp = app.add_subcommand("mpi", "run a job under mpirun: rank 0 coordinates, the other ranks are the sites");
  add_job_options(mp, a->config, a->ov, "job file (TOML)");
  mp->add_option("--ranks-per-site", a->opt.ranks_per_site,
                 "MPI ranks per site (default: $FEDTL_RANKS_PER_SITE or 1); run mpirun -np 1 + sites x this");
  mp->add_option("--mpi-timeout", a->opt.timeout_s,
                 "seconds a rank waits for its peers beyond the job's deadlines (default: $FEDTL_MPI_TIMEOUT_S or 300)");
  return {mp, FEDTL_CLI_ACTION([a](common::StopSignal& stop) {
            auto cfg = app::apply_overrides(app::load_job_config(a->config), a->ov);
            a->opt.stop = &stop;  // under mpirun, SIGTERM prints why and exits 143 at once
            return app::run_mpi(cfg, a->opt);
          }),
          a};
}

}  // namespace fedtl::cli

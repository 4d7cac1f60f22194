// The fedtl command line. Every failure from input (a bad config, a corrupt file, a refused
// peer) ends here as one line on stderr and a non-zero exit status.
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <iostream>

#include "cli/commands.h"
#include "cli/mpi_command.h"
#include "cli/privacy.h"
#include "common/errors.h"

int main(int argc, char** argv) {
  // Logs and progress go to stderr; stdout stays free for results.
  auto logger = spdlog::stderr_color_mt("fedtl");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%H:%M:%S.%e] %^%l%$ %v");

  CLI::App app{"fedtl: federated transfer learning across sites that cannot share their data"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error")->capture_default_str();

  // fedtl simulate
  auto* sim = app.add_subcommand("simulate", "run a job with N simulated sites in this process (in-process transport)");
  std::string sim_config;
  fedtl::cli::SimulateOverrides ov;
  sim->add_option("--config,-c", sim_config, "job file (TOML), e.g. examples/hospitals/job.toml")->required();
  sim->add_option("--sites", ov.sites, "number of sites (overrides job.sites)");
  sim->add_option("--rounds", ov.rounds, "federated rounds (overrides job.rounds)");
  sim->add_option("--seed", ov.seed, "seed (overrides job.seed)");
  sim->add_option("--out", ov.out, "output directory (overrides job.out)");
  sim->add_flag("--baselines", ov.baselines, "also run local-only, centralised and from-scratch baselines");
  sim->add_flag("--resume", ov.resume, "continue from the last good checkpoint in --out");

  // fedtl pretrain
  auto* pre = app.add_subcommand("pretrain", "pre-train the built-in CNN on the job's source classes; save TorchScript");
  std::string pre_config, pre_out;
  pre->add_option("--config,-c", pre_config, "job file (TOML)")->required();
  pre->add_option("--out,-o", pre_out, "backbone file to write (default: the job's backbone.path)");

  // fedtl coordinator
  auto* co = app.add_subcommand("coordinator", "serve a job over mutual TLS to the sites listed in its [federation]");
  std::string co_config;
  fedtl::cli::SimulateOverrides co_ov;
  co->add_option("--config,-c", co_config, "job file (TOML) with a [federation] section")->required();
  co->add_option("--rounds", co_ov.rounds, "federated rounds (overrides job.rounds)");
  co->add_option("--seed", co_ov.seed, "seed (overrides job.seed)");
  co->add_option("--out", co_ov.out, "output directory (overrides job.out)");
  co->add_flag("--resume", co_ov.resume, "continue from the last good checkpoint in --out; sites reconnect by themselves");

  // fedtl worker
  auto* wk = app.add_subcommand("worker", "run one site: connect to the coordinator, train on local data");
  std::string wk_config;
  wk->add_option("--config,-c", wk_config, "site file (TOML): kit, coordinator address, data, policy")->required();

  // fedtl mpi
  auto* mp = app.add_subcommand("mpi", "run a job under mpirun: rank 0 coordinates, the other ranks are the sites");
  std::string mp_config;
  fedtl::cli::SimulateOverrides mp_ov;
  fedtl::cli::MpiRunOptions mp_opt;
  mp->add_option("--config,-c", mp_config, "job file (TOML)")->required();
  mp->add_option("--rounds", mp_ov.rounds, "federated rounds (overrides job.rounds)");
  mp->add_option("--seed", mp_ov.seed, "seed (overrides job.seed)");
  mp->add_option("--out", mp_ov.out, "output directory (overrides job.out)");
  mp->add_option("--ranks-per-site", mp_opt.ranks_per_site,
                 "MPI ranks per site (default: $FEDTL_RANKS_PER_SITE or 1); run mpirun -np 1 + sites x this");
  mp->add_option("--mpi-timeout", mp_opt.timeout_s,
                 "seconds a rank waits for its peers beyond the job's deadlines (default: $FEDTL_MPI_TIMEOUT_S or 300)");

  // fedtl ca init | issue
  auto* ca = app.add_subcommand("ca", "federation certificate authority and startup kits");
  ca->require_subcommand(1);
  auto* ca_init = ca->add_subcommand("init", "create the federation CA in --dir");
  auto* ca_issue = ca->add_subcommand("issue", "issue a kit (key, certificate, CA certificate, kit.toml) for a party");
  std::string ca_dir, ca_fed = "fedtl", ca_name, ca_role = "worker", ca_coord, ca_coord_name;
  ca_init->add_option("--dir", ca_dir, "PKI directory")->required();
  ca_init->add_option("--federation", ca_fed, "federation name (the CA's common name)")->capture_default_str();
  ca_issue->add_option("--dir", ca_dir, "PKI directory made by `fedtl ca init`")->required();
  ca_issue->add_option("--name", ca_name, "party name: the certificate's CN (what federation.sites lists)")->required();
  ca_issue->add_option("--role", ca_role, "worker | coordinator")->capture_default_str();
  ca_issue->add_option("--coordinator", ca_coord, "worker kits: the coordinator's host:port");
  ca_issue->add_option("--coordinator-name", ca_coord_name, "worker kits: the coordinator's certificate name");

  fedtl::cli::add_privacy_command(app);  // fedtl privacy epsilon | noise

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  spdlog::set_level(spdlog::level::from_str(log_level));
  fedtl::common::StopSignal stop;  // SIGINT/SIGTERM: stop cleanly (see common/stop_signal.h)

  try {
    if (*sim) {
      auto cfg = fedtl::cli::apply_overrides(fedtl::common::load_job_config(sim_config), ov);
      auto r = fedtl::cli::run_simulate(cfg, &stop);
      std::cout << "federated_accuracy " << r.federated_accuracy << "\nmodel_sha256 " << r.model_sha256 << "\nout "
                << r.out_dir << "\n";
    } else if (*co) {
      auto cfg = fedtl::cli::apply_overrides(fedtl::common::load_job_config(co_config), co_ov);
      auto r = fedtl::cli::run_coordinator(cfg, &stop);
      std::cout << "federated_accuracy " << r.federated_accuracy << "\nmodel_sha256 " << r.model_sha256 << "\nout "
                << r.out_dir << "\n";
    } else if (*mp) {
      auto cfg = fedtl::cli::apply_overrides(fedtl::common::load_job_config(mp_config), mp_ov);
      mp_opt.stop = &stop;  // under mpirun, SIGTERM prints why and exits 143 at once
      return fedtl::cli::run_mpi(cfg, mp_opt);
    } else if (*wk) {
      return fedtl::cli::run_worker(fedtl::common::load_site_config(wk_config), &stop);
    } else if (*ca_init) {
      fedtl::cli::run_ca_init(ca_dir, ca_fed);
    } else if (*ca_issue) {
      fedtl::cli::run_ca_issue(ca_dir, ca_name, ca_role, ca_coord, ca_coord_name);
    } else if (*pre) {
      auto cfg = fedtl::common::load_job_config(pre_config);
      fedtl::cli::run_pretrain(cfg, pre_out.empty() ? cfg.backbone.path : pre_out);
    }
  } catch (const fedtl::Error& e) {
    std::cerr << "fedtl: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "fedtl: internal error: " << e.what() << "\n";
    return 3;
  }
  return 0;
}

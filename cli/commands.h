// The fedtl command line: argument parsing only. Each subcommand registers itself from its own
// file (cli/add_<command>.cc) and hands main an action; the work is done by the app/ layer.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>

#include "app/run.h"
#include "common/stop_signal.h"

namespace fedtl::cli {

// A registered subcommand: its CLI11 node and what to run when the user chose it. The action
// runs after parsing, returns the process exit status and may throw fedtl::Error (main prints
// it as one line and exits 1).
struct Command {
  CLI::App* sub = nullptr;
  std::function<int(common::StopSignal& stop)> run;
};

// The options every job-running subcommand takes: --config (required; `config_help` says which
// file), --rounds, --seed and --out, the last three as overrides of the job file.
void add_job_options(CLI::App* sub, std::string& config, app::SimulateOverrides& ov, const char* config_help);

Command add_simulate(CLI::App& app);     // fedtl simulate
Command add_pretrain(CLI::App& app);     // fedtl pretrain
Command add_coordinator(CLI::App& app);  // fedtl coordinator
Command add_worker(CLI::App& app);       // fedtl worker
Command add_mpi(CLI::App& app);          // fedtl mpi
Command add_ca(CLI::App& app);           // fedtl ca init | issue
Command add_privacy(CLI::App& app);      // fedtl privacy epsilon | noise
Command add_status(CLI::App& app);       // fedtl status

}  // namespace fedtl::cli

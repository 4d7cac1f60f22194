// The fedtl command line: argument parsing only. Each subcommand registers itself from its own
// file (cli/add_<command>.cc) and hands main an action; the work is done by the app/ layer.
//
// These files build two programs. `fedtl-engine` is the whole of fedtl, linked with LibTorch,
// whose loading alone takes seconds on a cold disk cache. `fedtl`, the launcher, is built with
// FEDTL_CLI_LAUNCHER: it parses the same command line (so --help, --version and argument
// errors answer at once, without LibTorch) and then replaces itself (execv) with the
// fedtl-engine beside it, same arguments, same process id, which parses them again and runs
// the action. In the launcher FEDTL_CLI_ACTION drops an action's code, so it links nothing of
// app/ and nothing of LibTorch.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <memory>

#include "app/run.h"
#include "common/stop_signal.h"

namespace fedtl::cli {

// A registered subcommand: its CLI11 node and what to run when the user chose it. The action
// runs after parsing, returns the process exit status and may throw fedtl::Error (main prints
// it as one line and exits 1).
struct Command {
  CLI::App* sub = nullptr;
  std::function<int(common::StopSignal& stop)> run;  // empty in the launcher
  // What the options write into (they hold references to it): kept alive here, since in the
  // launcher no action captures it.
  std::shared_ptr<void> state;
};

#ifdef FEDTL_CLI_LAUNCHER
#define FEDTL_CLI_ACTION(...) nullptr
#else
#define FEDTL_CLI_ACTION(...) __VA_ARGS__
#endif

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

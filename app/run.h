// The application: what each fedtl subcommand does, callable from cli/ and from tests.
#pragma once
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "app/config.h"
#include "common/stop_signal.h"
#include "protocols/fedtl.pb.h"

namespace fedtl::app {

struct SimulateOverrides {
  std::optional<int64_t> sites, rounds;
  std::optional<uint64_t> seed;
  std::optional<std::string> out;
  bool baselines = false;
  bool resume = false;  // continue from <out>/checkpoint.bin
  bool force = false;   // overwrite a previous run's outputs in --out
  std::optional<int64_t> status_port;  // overrides job.status_port
};

struct SimulateResult {
  double federated_accuracy = 0;
  std::string model_sha256;
  std::string out_dir;
  size_t rounds_applied = 0;  // rounds whose aggregate changed the model (resumed ones included)
  bool interrupted = false;   // stopped by a signal (resumable)
  std::string stop_reason;    // why it ended before its last round ("" = it did not)
};

// Prints a finished job's result on stdout's format: "federated_accuracy", "model_sha256" and
// "out" lines (scripts and tests read them).
void print_result(const SimulateResult& r, std::ostream& out);

// "" when the job applied at least one round (or was stopped by a signal, to be resumed);
// else the one-line reason it produced no model: every round was abandoned.
std::string no_round_applied(const SimulateResult& r, int64_t rounds);

// What `fedtl simulate` and `fedtl coordinator` do with a finished job: when it applied at
// least one round (or a signal stopped it), prints the result on `out` and returns 0; when it
// applied none, prints "fedtl: error: <why>" on `err` and returns 1 (the outputs stay written,
// summary.json says rounds_applied 0, but nothing on stdout passes for a result).
int finish_job(const SimulateResult& r, int64_t rounds, std::ostream& out, std::ostream& err);

// Applies command-line overrides to a loaded job and validates the result.
app::JobConfig apply_overrides(app::JobConfig cfg, const SimulateOverrides& o);

// `fedtl simulate`: N sites as threads over the in-process transport. Writes metrics.jsonl,
// summary.json, model.pt and accuracy.svg to cfg.out. Throws fedtl::Error.
// `stop` (optional): SIGINT/SIGTERM end the job cleanly after the current round.
SimulateResult run_simulate(const app::JobConfig& cfg, const common::StopSignal* stop = nullptr);

// `fedtl pretrain`: trains the built-in CNN on the source classes and writes the backbone
// (TorchScript) to `out_path` (default cfg.backbone.path).
void run_pretrain(const app::JobConfig& cfg, const std::string& out_path);

// `fedtl coordinator`: serves the job over mutual TLS to the sites listed in [federation];
// writes the same outputs as simulate. `overrides` as for simulate (sites is ignored).
SimulateResult run_coordinator(const app::JobConfig& cfg, const common::StopSignal* stop = nullptr);

// `fedtl worker`: one site. Connects (and reconnects with backoff) to the coordinator,
// verifies it, checks the job against the site policy, trains. Returns the process exit
// status (0 when the job finished).
// A coordinator that stops early for a restart (Shutdown.resume_expected) is waited for.
// `stop` (optional): SIGINT/SIGTERM close the connection and end the worker with status 0.
// `inspect_out` (fedtl worker --inspect-job): connect, receive the JobSpec and the backbone,
// verify its digest, print describe_job()'s lines there, tell the coordinator the site leaves
// (Error kLeaving), disconnect and return 0; nothing is prepared or trained. A normal run logs
// the same lines when it accepts a job.
int run_worker(const app::SiteConfig& site, common::StopSignal* stop = nullptr, std::ostream* inspect_out = nullptr);

// What a site is about to run, one fact per line: the job and its rounds, the backbone's digest,
// size and operators (checked against the allowlist; `backbone` empty: not downloaded), the
// model and its trainable parameters, epochs, batch size, learning rates, DP and secure
// aggregation settings, and the site policy's verdict ("" = accepted).
std::vector<std::string> describe_job(const v1::JobSpec& job, const std::string& backbone, const std::string& verdict);

// `fedtl ca init|issue`: the federation's certificate authority and its kits.
void run_ca_init(const std::string& dir, const std::string& federation);
void run_ca_issue(const std::string& dir, const std::string& name, const std::string& role,
                  const std::string& coordinator_address, const std::string& coordinator_name);


}  // namespace fedtl::app

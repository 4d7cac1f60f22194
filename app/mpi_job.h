// `fedtl mpi`: a whole job under mpirun. Rank 0 is the coordinator (CoordinatorJob +
// Coordinator, writing the same outputs as simulate with transport "mpi"); every other rank
// belongs to a site: ranks_per_site = k consecutive ranks per site, in site order, the
// first of which (the leader) runs the Worker protocol over an MPI connection to rank 0
// while the others follow it (same global parameters, same steps) and train data-parallel,
// gradients averaged every step (MPI_Allreduce on CPU, NCCL on CUDA). With k = 1 a site runs
// exactly what `fedtl simulate` runs for it, so the same job and seed give the same
// model_sha256.
//
// Failure: a rank that fails ends the whole job (MPI_Abort) with one line naming the rank and
// the reason; a rank that dies is reported by mpirun, which stops the others (they say so on
// stderr); a rank that hangs is caught by the round deadline (the coordinator leaves its
// site out) and by `timeout_s`: every wait between ranks has a deadline. No rank waits
// forever.
#pragma once
#include <cstdint>
#include <functional>

#include "app/config.h"

namespace fedtl::common {
class StopSignal;
namespace mpi {
class MpiContext;
}
}  // namespace fedtl::common

namespace fedtl::app {

struct MpiRunOptions {
  // Ranks per site; 0: the environment variable FEDTL_RANKS_PER_SITE, else 1.
  int ranks_per_site = 0;
  // Slack on every wait between ranks beyond the job's own deadlines (a worker waits for the
  // next round up to round_timeout_s + timeout_s; a collective inside training up to
  // timeout_s; the end of the job up to timeout_s). <= 0: the environment variable
  // FEDTL_MPI_TIMEOUT_S, else 300.
  double timeout_s = 0;
  // main()'s SIGINT/SIGTERM handler, when it has one. Under mpirun, SIGTERM means that
  // mpirun is stopping the job (another rank died, or the job was cancelled): no clean
  // stop is possible across ranks, so the rank says so on stderr and exits with status 143
  // at once. Without it, run_mpi installs a SIGTERM handler that does the same.
  common::StopSignal* stop = nullptr;
  // Tests only: called on every site rank before each local training round (world rank,
  // round) — to make a rank fail or hang on purpose.
  std::function<void(int, uint32_t)> before_train;
};

// Initialises MPI, runs this rank's part of the job and finalises MPI. Returns the process
// exit status: 0 on every rank when the job finished; 1 on rank 0 when it applied no round
// (one error line on stderr instead of the result on stdout). A configuration error that every
// rank sees (wrong world size, bad ranks_per_site) is thrown as ConfigError on rank 0 (the
// other ranks return 1 quietly); any other failure ends the whole job through MPI_Abort.
// Rank 0 prints federated_accuracy / model_sha256 / out on stdout, like simulate.
// Throws ConfigError when fedtl was built without MPI.
int run_mpi(const app::JobConfig& cfg, const MpiRunOptions& opt = {});

// The same inside an existing MPI context (for tests, which initialise MPI once per
// process). Does not finalise MPI.
int run_mpi(common::mpi::MpiContext& ctx, const app::JobConfig& cfg, const MpiRunOptions& opt);

}  // namespace fedtl::app

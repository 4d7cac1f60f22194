// Multi-rank sites: how the MPI world is cut into the coordinator and the sites, the site's
// own communicator, instructions from the site's rank 0 to its other ranks, and the
// gradient averaging that data-parallel training calls every step (TrainOptions::
// average_gradients in common/model/transfer_model.h).
//
// World layout (ranks_per_site = k, N sites): rank 0 is the coordinator, alone; site s is
// world ranks 1+s*k .. (s+1)*k, and its first rank (the leader) speaks for it in the round
// protocol. Every wait here has a deadline (see mpi_context.h): a rank whose peers stop
// answering fails with a message instead of hanging.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "common/mpi/mpi_context.h"

namespace fedtl::common::mpi {

struct SiteLayout {
  int sites = 0, ranks_per_site = 1;
  // Checks world_size == 1 + sites * ranks_per_site; throws ConfigError saying what to run.
  static SiteLayout make(int world_size, int sites, int ranks_per_site);
  int world_size() const { return 1 + sites * ranks_per_site; }
  int site_of(int world_rank) const { return world_rank == 0 ? -1 : (world_rank - 1) / ranks_per_site; }
  int rank_in_site(int world_rank) const { return world_rank == 0 ? 0 : (world_rank - 1) % ranks_per_site; }
  int leader_of(int site) const { return 1 + site * ranks_per_site; }
};

// The site's communicator: MPI_Comm_split of ctx.world() by site (MPI_ERRORS_RETURN).
// Collective over the world; the coordinator (rank 0) gets none (valid() == false).
class SiteComm {
 public:
  SiteComm(MpiContext& ctx, const SiteLayout& layout);
  ~SiteComm();
  SiteComm(const SiteComm&) = delete;
  SiteComm& operator=(const SiteComm&) = delete;
  bool valid() const { return comm_ != MPI_COMM_NULL; }
  MPI_Comm comm() const { return comm_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  int site() const { return site_; }
  MpiContext& context() const { return ctx_; }

 private:
  MpiContext& ctx_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1, site_ = -1;
};

// An instruction from the site's leader to its other ranks.
struct SiteCommand {
  enum Kind : int32_t { kPrepare = 1, kTrain = 2, kStop = 3 };
  Kind kind = kStop;
  uint32_t round = 0;
  std::string payload;
};
// Collective over the site: the leader (site rank 0) sends `cmd`, the others receive it into
// `cmd`. Waits up to `timeout` for the whole exchange (polled, sleeping: a rank that waits
// for its next instruction leaves the cores to those that compute). Throws TimeoutError;
// after a timeout the site's communicator is unusable (the collective stays posted): the job
// must end.
void exchange_command(SiteComm& site, SiteCommand& cmd, Millis timeout);

// Sums `count` doubles in place over the site (small, blocking, with `timeout`).
void site_sum(SiteComm& site, double* values, int count, Millis timeout);

// Replaces a buffer with its mean over the ranks of a site. Blocking and collective: every
// rank of the site calls average() with the same count, in the same order. Throws
// TransportError / TimeoutError; after a failure the averager is unusable. One thread at a
// time.
class GradientAverager {
 public:
  virtual ~GradientAverager() = default;
  // `data` is host memory for the MPI averager, device memory (of the averager's device)
  // for the NCCL one. Afterwards it holds the mean over the site's ranks, given that every
  // rank passed its values already divided by the site's size when expects_prescaled().
  virtual void average(float* data, size_t count) = 0;
  // true: average() only sums (a bare MPI_Allreduce), the 1/size being fused into the caller's
  // packing copy (TrainOptions::prescale_host_gradients); false: it averages by itself (NCCL's
  // ncclAvg).
  virtual bool expects_prescaled() const = 0;
  virtual std::string name() const = 0;
};

// MPI_Allreduce(SUM) in place on host memory, nothing else: the values come divided by the
// site's size (expects_prescaled() is true), so the sum is the mean. A collective that does
// not complete within `timeout` ends this process with a message (Watchdog): mpirun then
// stops the job.
std::unique_ptr<GradientAverager> make_mpi_averager(SiteComm& site, Millis timeout);

// CUDA devices visible to this process (0 when none, with `why` saying why: no driver, no
// device, built without CUDA).
int cuda_device_count(std::string* why = nullptr);
// Makes device local_rank % count current for this process (one GPU per rank on a node).
// Returns the device, or -1 when there is none.
int select_cuda_device(int local_rank);

#ifdef FEDTL_WITH_NCCL
// NCCL all-reduce (ncclAvg) in place on device memory of `device`. The rendezvous: the
// site's rank 0 creates the NCCL unique id and broadcasts it over the site's MPI
// communicator; every rank then joins with ncclCommInitRank. Collective over the site (all
// ranks construct it together). Waits on the stream are polled with `timeout`; on expiry the
// NCCL communicator is aborted and TimeoutError thrown. Throws TransportError when CUDA or
// NCCL fail (e.g. no device).
std::unique_ptr<GradientAverager> make_nccl_averager(SiteComm& site, int device, Millis timeout);
#endif

}  // namespace fedtl::common::mpi

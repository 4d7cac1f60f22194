#include "common/mpi/site_sync.h"

#include <array>
#include <limits>
#include <vector>

#include "common/errors.h"

#ifdef FEDTL_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>
#if NCCL_VERSION_CODE < NCCL_VERSION(2, 10, 0)
#error "fedtl needs NCCL >= 2.10 (ncclAvg)"
#endif
#endif

namespace fedtl::common::mpi {
namespace {

using Clock = std::chrono::steady_clock;

// Posts a non-blocking collective under the context mutex and polls it to completion.
template <typename Post>
bool run_polled(MpiContext& ctx, Clock::time_point deadline, const char* what, Post post) {
  MPI_Request req = MPI_REQUEST_NULL;
  {
    std::lock_guard<std::mutex> lock(ctx.mutex());
    check(post(&req), what);
  }
  int rc = MPI_SUCCESS;
  const bool done = poll_until(ctx, deadline, [&] {
    int flag = 0;
    rc = MPI_Test(&req, &flag, MPI_STATUS_IGNORE);
    return rc != MPI_SUCCESS || flag != 0;
  });
  check(rc, what);
  return done;
}

class MpiAverager final : public GradientAverager {
 public:
  MpiAverager(SiteComm& site, Millis timeout)
      : site_(site), timeout_(timeout), watchdog_(site.context().rank()),
        what_("gradient MPI_Allreduce in site " + std::to_string(site.site())) {}

  void average(float* data, size_t count) override {
    if (count > static_cast<size_t>(std::numeric_limits<int>::max()))
      throw TransportError("gradient buffer too large for one MPI_Allreduce");
    {
      Watchdog::Guard guard(watchdog_, timeout_, what_);
      std::lock_guard<std::mutex> lock(site_.context().mutex());
      check(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(count), MPI_FLOAT, MPI_SUM, site_.comm()),
            "gradient MPI_Allreduce");
    }
  }
  bool expects_prescaled() const override { return true; }
  std::string name() const override { return "mpi"; }

 private:
  SiteComm& site_;
  Millis timeout_;
  Watchdog watchdog_;
  std::string what_;
};

}  // namespace

SiteLayout SiteLayout::make(int world_size, int sites, int ranks_per_site) {
  if (sites < 1) throw ConfigError("the job needs at least one site");
  if (ranks_per_site < 1) throw ConfigError("ranks_per_site must be at least 1 (got " + std::to_string(ranks_per_site) + ")");
  SiteLayout l;
  l.sites = sites;
  l.ranks_per_site = ranks_per_site;
  if (world_size != l.world_size())
    throw ConfigError("the MPI world has " + std::to_string(world_size) + " ranks, but this job needs 1 + sites x " +
                      "ranks_per_site = 1 + " + std::to_string(sites) + " x " + std::to_string(ranks_per_site) + " = " +
                      std::to_string(l.world_size()) + " (rank 0 coordinates; run mpirun -np " +
                      std::to_string(l.world_size()) + ")");
  return l;
}

SiteComm::SiteComm(MpiContext& ctx, const SiteLayout& layout) : ctx_(ctx) {
  site_ = layout.site_of(ctx.rank());
  std::lock_guard<std::mutex> lock(ctx.mutex());
  check(MPI_Comm_split(ctx.world(), site_ < 0 ? MPI_UNDEFINED : site_, ctx.rank(), &comm_), "MPI_Comm_split (sites)");
  if (comm_ != MPI_COMM_NULL) {
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
}

SiteComm::~SiteComm() {
  std::lock_guard<std::mutex> lock(ctx_.mutex());
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void exchange_command(SiteComm& site, SiteCommand& cmd, Millis timeout) {
  MpiContext& ctx = site.context();
  const auto deadline = Clock::now() + timeout;
  // Buffers on the heap: a timed-out collective stays posted, so on a timeout they are left
  // to MPI (leaked) rather than freed under it.
  auto head = std::make_unique<std::array<int64_t, 3>>();
  *head = {cmd.kind, cmd.round, static_cast<int64_t>(cmd.payload.size())};
  auto fail = [&](const char* stage) {
    return TimeoutError(std::string(stage) + " within site " + std::to_string(site.site()) + " did not complete within " +
                        std::to_string(timeout.count() / 1000.0) + " s (" +
                        (site.rank() == 0 ? "a rank of this site stopped following"
                                          : "the site's rank 0 sent no instruction") +
                        ")");
  };
  if (!run_polled(ctx, deadline, "site instruction (MPI_Ibcast)",
                  [&](MPI_Request* r) { return MPI_Ibcast(head->data(), 3, MPI_INT64_T, 0, site.comm(), r); })) {
    (void)head.release();
    throw fail("waiting for the next instruction");
  }
  auto payload = std::make_unique<std::string>();
  if (site.rank() != 0) {
    const auto& h = *head;
    if (h[0] < SiteCommand::kPrepare || h[0] > SiteCommand::kStop || h[2] < 0)
      throw ProtocolError("malformed site instruction");
    cmd.kind = static_cast<SiteCommand::Kind>(h[0]);
    cmd.round = static_cast<uint32_t>(h[1]);
    payload->assign(static_cast<size_t>(h[2]), '\0');
  } else {
    *payload = std::move(cmd.payload);
  }
  // Payloads beyond 1 GiB go in pieces (MPI counts are int).
  const size_t piece = size_t{1} << 30;
  for (size_t off = 0; off < payload->size(); off += piece) {
    const int n = static_cast<int>(std::min(piece, payload->size() - off));
    if (!run_polled(ctx, deadline, "site instruction payload (MPI_Ibcast)", [&](MPI_Request* r) {
          return MPI_Ibcast(payload->data() + off, n, MPI_BYTE, 0, site.comm(), r);
        })) {
      (void)payload.release();
      throw fail("sending the instruction's data");
    }
  }
  cmd.payload = std::move(*payload);
}

void site_sum(SiteComm& site, double* values, int count, Millis timeout) {
  auto buf = std::make_unique<std::vector<double>>(values, values + count);  // leaked on a timeout
  if (!run_polled(site.context(), Clock::now() + timeout, "MPI_Iallreduce (site statistics)", [&](MPI_Request* r) {
        return MPI_Iallreduce(MPI_IN_PLACE, buf->data(), count, MPI_DOUBLE, MPI_SUM, site.comm(), r);
      })) {
    (void)buf.release();
    throw TimeoutError("site " + std::to_string(site.site()) + ": a rank did not join the statistics reduction within " +
                       std::to_string(timeout.count() / 1000.0) + " s");
  }
  std::copy(buf->begin(), buf->end(), values);
}

std::unique_ptr<GradientAverager> make_mpi_averager(SiteComm& site, Millis timeout) {
  if (!site.valid()) throw TransportError("the coordinator rank has no site to average gradients with");
  return std::make_unique<MpiAverager>(site, timeout);
}

#ifdef FEDTL_WITH_NCCL

int cuda_device_count(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = std::string("CUDA: ") + cudaGetErrorString(e);
    cudaGetLastError();  // clear the sticky-free error state
    return 0;
  }
  if (n == 0 && why) *why = "CUDA reports no devices";
  return n;
}

int select_cuda_device(int local_rank) {
  const int n = cuda_device_count();
  if (n <= 0) return -1;
  const int dev = local_rank % n;
  return cudaSetDevice(dev) == cudaSuccess ? dev : -1;
}

namespace {

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw TransportError(std::string(what) + ": " + cudaGetErrorString(e));
}
void nccl_check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) throw TransportError(std::string(what) + ": " + ncclGetErrorString(r));
}

class NcclAverager final : public GradientAverager {
 public:
  NcclAverager(SiteComm& site, int device, Millis timeout) : site_(site), device_(device), timeout_(timeout) {
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    // Rendezvous: the site's rank 0 publishes the unique id over MPI.
    ncclUniqueId id;
    if (site.rank() == 0) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    if (!run_polled(site.context(), Clock::now() + timeout_, "NCCL rendezvous (MPI_Ibcast)", [&](MPI_Request* r) {
          return MPI_Ibcast(&id, sizeof id, MPI_BYTE, 0, site.comm(), r);
        }))
      throw TimeoutError("NCCL rendezvous: the site's ranks did not all arrive within " +
                         std::to_string(timeout_.count() / 1000.0) + " s");
    // Non-blocking init so that a missing rank cannot hang us: poll the async state.
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    nccl_check(ncclCommInitRankConfig(&comm_, site.size(), id, site.rank(), &config), "ncclCommInitRank");
    wait_comm("ncclCommInitRank");
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }

  ~NcclAverager() override {
    if (comm_) {
      if (failed_) ncclCommAbort(comm_);
      else {
        ncclCommFinalize(comm_);
        wait_comm_quietly();
        ncclCommDestroy(comm_);
      }
    }
    if (stream_) cudaStreamDestroy(stream_);
  }

  void average(float* data, size_t count) override {
    if (failed_) throw TransportError("the NCCL communicator failed earlier");
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    const ncclResult_t r = ncclAllReduce(data, data, count, ncclFloat, ncclAvg, comm_, stream_);
    if (r != ncclSuccess && r != ncclInProgress) fail(std::string("ncclAllReduce: ") + ncclGetErrorString(r));
    wait_comm("ncclAllReduce");
    const auto deadline = Clock::now() + timeout_;
    for (auto nap = std::chrono::microseconds(1);;) {
      const cudaError_t e = cudaStreamQuery(stream_);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) fail(std::string("NCCL all-reduce on the stream: ") + cudaGetErrorString(e));
      check_async("ncclAllReduce");
      if (Clock::now() > deadline)
        fail("NCCL all-reduce in site " + std::to_string(site_.site()) + " did not complete within " +
             std::to_string(timeout_.count() / 1000.0) + " s (a rank of the site hung or died)", true);
      std::this_thread::sleep_for(nap);
      nap = std::min(nap * 2, std::chrono::microseconds(200));
    }
  }
  bool expects_prescaled() const override { return false; }  // ncclAvg
  std::string name() const override { return "nccl"; }

 private:
  [[noreturn]] void fail(const std::string& why, bool timeout = false) {
    failed_ = true;
    if (timeout) throw TimeoutError(why);
    throw TransportError(why);
  }
  void check_async(const char* what) {
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    if (async != ncclSuccess && async != ncclInProgress) fail(std::string(what) + ": " + ncclGetErrorString(async));
  }
  // Polls a non-blocking communicator until its last call completed.
  void wait_comm(const char* what) {
    const auto deadline = Clock::now() + timeout_;
    for (;;) {
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async == ncclSuccess) return;
      if (async != ncclInProgress) fail(std::string(what) + ": " + ncclGetErrorString(async));
      if (Clock::now() > deadline)
        fail(std::string(what) + " did not complete within " + std::to_string(timeout_.count() / 1000.0) + " s", true);
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
  void wait_comm_quietly() {
    try {
      wait_comm("ncclCommFinalize");
    } catch (const std::exception&) {
    }
  }

  SiteComm& site_;
  int device_;
  Millis timeout_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool failed_ = false;
};

}  // namespace

std::unique_ptr<GradientAverager> make_nccl_averager(SiteComm& site, int device, Millis timeout) {
  if (!site.valid()) throw TransportError("the coordinator rank has no site to average gradients with");
  return std::make_unique<NcclAverager>(site, device, timeout);
}

#else  // !FEDTL_WITH_NCCL

int cuda_device_count(std::string* why) {
  if (why) *why = "this fedtl was built without CUDA/NCCL (FEDTL_WITH_NCCL is off)";
  return 0;
}
int select_cuda_device(int) { return -1; }

#endif

}  // namespace fedtl::common::mpi

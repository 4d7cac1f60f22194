// MPI for fedtl's cluster mode: the process's MPI environment (MpiContext), the rules every
// MPI call in fedtl follows, and the helpers that keep an MPI job from hanging.
//
// Only cluster-mode code (common/mpi/, app/mpi_job.cc, tests) includes this header; the
// protocol code sees MPI through common::Connection (mpi_transport.h) alone.
//
// Threading: MPI is initialised with MPI_THREAD_SERIALIZED. Every MPI call fedtl makes holds
// MpiContext::mutex(), so threads may share a context (one thread sending while another
// receives on a Connection, as its contract allows). Waits never hold the mutex for long:
// they post a non-blocking operation and poll it, releasing the mutex between polls.
//
// Failures: the communicators fedtl uses carry MPI_ERRORS_RETURN, and a failed MPI call is
// re-thrown as TransportError with MPI's own error string. A peer that stops answering is
// caught by deadlines (every wait has one); an error that leaves the job unable to go on
// ends it with abort_job(), which prints one line and takes every rank down (MPI_Abort), so
// no rank waits forever for a peer that is gone. A rank that dies is reported by mpirun,
// which stops the others (install_termination_message() makes them say why).
#pragma once
#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace fedtl::common::mpi {

using Millis = std::chrono::milliseconds;

// Throws TransportError("<what>: <MPI error string>") when rc != MPI_SUCCESS.
void check(int rc, const char* what);

// The MPI environment of one process. Create exactly one, early in main (MPI can be
// initialised once per process), and pass it to whatever needs MPI; the destructor calls
// MPI_Finalize. Not copyable.
class MpiContext {
 public:
  // MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED); argc/argv may be null. Throws
  // TransportError when MPI is already initialised or cannot give SERIALIZED.
  MpiContext(int* argc = nullptr, char*** argv = nullptr);
  ~MpiContext();  // MPI_Finalize (MPI_Finalize is collective: every rank must get there)
  MpiContext(const MpiContext&) = delete;
  MpiContext& operator=(const MpiContext&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // Rank within this node (MPI_COMM_TYPE_SHARED): picks the CUDA device.
  int local_rank() const { return local_rank_; }
  const std::string& host() const { return host_; }
  // A duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN, for fedtl's own collectives.
  MPI_Comm world() const { return world_; }
  // Serialises every MPI call of this process (see the header comment).
  std::mutex& mutex() const { return mu_; }

  // Waits for every rank up to `timeout` (non-blocking barrier, polled). Returns false when
  // some rank did not arrive in time (the job should then be aborted).
  bool barrier(Millis timeout, const std::string& what = "barrier");

  // Prints "fedtl: error: rank R: <message>" on stderr and ends the whole job with
  // MPI_Abort(world, code). Never returns.
  [[noreturn]] void abort_job(const std::string& message, int code = 1);

  // Arranges that SIGTERM (how mpirun stops the surviving ranks when one rank died)
  // prints "fedtl: error: rank R: stopped by mpirun (SIGTERM): ..." and exits with status 143.
  void install_termination_message();

 private:
  mutable std::mutex mu_;
  int rank_ = 0, size_ = 1, local_rank_ = 0;
  std::string host_;
  MPI_Comm world_ = MPI_COMM_NULL;
};

// Polls `done` (called with the context's mutex held) until it returns true; sleeps between
// polls with a short busy phase first (spinning `spin` before backing off to sleeps of up to
// 1 ms), so that idle ranks leave the cores to ranks that compute. Returns false when
// `deadline` passed first.
bool poll_until(const MpiContext& ctx, std::chrono::steady_clock::time_point deadline,
                const std::function<bool()>& done, std::chrono::microseconds spin = std::chrono::microseconds(50));

// A deadline for a blocking MPI call that cannot be polled (a collective inside training):
// when the guard is still armed after `timeout`, a watchdog thread prints
// "fedtl: error: rank R: <what> did not complete within N s; ..." and ends the process
// with _exit(1) — mpirun then stops the other ranks. Arming and disarming are two atomic
// stores (no lock, no system call: guards sit around every gradient all-reduce); the
// watchdog thread checks every `tick`, so it fires at most one tick late. One guard at a
// time per Watchdog; `what` must outlive the guard.
class Watchdog {
 public:
  explicit Watchdog(int rank, Millis tick = Millis(200));
  ~Watchdog();
  class Guard {
   public:
    Guard(Watchdog& w, Millis timeout, const std::string& what);
    ~Guard();
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;

   private:
    Watchdog& w_;
  };

 private:
  void loop();
  int rank_;
  Millis tick_;
  std::mutex mu_;  // for the thread's sleep and stop only
  std::condition_variable cv_;
  bool stop_ = false;
  std::atomic<int64_t> deadline_ns_{0};  // steady_clock; 0 = disarmed
  std::atomic<int64_t> timeout_ms_{0};
  std::atomic<const std::string*> what_{nullptr};
  std::thread thread_;
};

}  // namespace fedtl::common::mpi

#include "common/mpi/mpi_context.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "common/errors.h"

namespace fedtl::common::mpi {
namespace {

using Clock = std::chrono::steady_clock;

// The SIGTERM message, formatted before any signal can arrive (a handler may only write).
char g_term_message[256];
size_t g_term_length = 0;

extern "C" void on_sigterm(int) {
  if (g_term_length > 0) {
    ssize_t ignored = ::write(STDERR_FILENO, g_term_message, g_term_length);
    (void)ignored;
  }
  ::_exit(143);
}

}  // namespace

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = std::snprintf(text, sizeof text, "MPI error %d", rc);
  throw TransportError(std::string(what) + ": " + std::string(text, static_cast<size_t>(len)));
}

MpiContext::MpiContext(int* argc, char*** argv) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized || finalized)
    throw TransportError("MPI is already initialised in this process (create one MpiContext per process)");
  int provided = 0;
  if (MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
    throw TransportError("MPI_Init_thread failed (run fedtl mpi under mpirun)");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  if (provided < MPI_THREAD_SERIALIZED) {
    MPI_Finalize();
    throw TransportError("this MPI library does not support MPI_THREAD_SERIALIZED");
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  check(MPI_Comm_dup(MPI_COMM_WORLD, &world_), "MPI_Comm_dup");
  MPI_Comm_set_errhandler(world_, MPI_ERRORS_RETURN);
  MPI_Comm node = MPI_COMM_NULL;
  check(MPI_Comm_split_type(world_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
  MPI_Comm_rank(node, &local_rank_);
  MPI_Comm_free(&node);
  char name[MPI_MAX_PROCESSOR_NAME];
  int len = 0;
  MPI_Get_processor_name(name, &len);
  host_.assign(name, static_cast<size_t>(len));
}

MpiContext::~MpiContext() {
  std::lock_guard<std::mutex> lock(mu_);
  if (world_ != MPI_COMM_NULL) MPI_Comm_free(&world_);
  MPI_Finalize();
}

bool MpiContext::barrier(Millis timeout, const std::string& what) {
  MPI_Request req = MPI_REQUEST_NULL;
  {
    std::lock_guard<std::mutex> lock(mu_);
    check(MPI_Ibarrier(world_, &req), "MPI_Ibarrier");
  }
  int rc = MPI_SUCCESS;
  const bool done = poll_until(*this, Clock::now() + timeout, [&] {
    int flag = 0;
    rc = MPI_Test(&req, &flag, MPI_STATUS_IGNORE);
    return rc != MPI_SUCCESS || flag != 0;
  });
  check(rc, what.c_str());
  return done;  // an incomplete request is left behind: the caller aborts the job
}

void MpiContext::abort_job(const std::string& message, int code) {
  std::fprintf(stderr, "fedtl: error: rank %d: %s\n", rank_, message.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, code);
  ::_exit(code);  // MPI_Abort does not return; this is for a broken MPI library
}

void MpiContext::install_termination_message() {
  const int n = std::snprintf(g_term_message, sizeof g_term_message,
                              "fedtl: error: rank %d: stopped by mpirun (SIGTERM): another rank failed or the job "
                              "was cancelled; see the first error above\n",
                              rank_);
  g_term_length = n > 0 ? std::min(static_cast<size_t>(n), sizeof g_term_message - 1) : 0;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigterm;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
}

bool poll_until(const MpiContext& ctx, Clock::time_point deadline, const std::function<bool()>& done,
                std::chrono::microseconds spin) {
  const auto start = Clock::now();
  auto nap = std::chrono::microseconds(20);
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(ctx.mutex());
      if (done()) return true;
    }
    const auto now = Clock::now();
    if (now >= deadline) return false;
    if (now - start < spin) {
      std::this_thread::yield();
      continue;
    }
    std::this_thread::sleep_for(std::min<Clock::duration>(nap, deadline - now));
    nap = std::min(nap * 2, std::chrono::microseconds(1000));
  }
}

Watchdog::Watchdog(int rank, Millis tick) : rank_(rank), tick_(tick), thread_([this] { loop(); }) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Watchdog::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, tick_);
    const int64_t deadline = deadline_ns_.load(std::memory_order_acquire);
    if (stop_ || deadline == 0 || Clock::now().time_since_epoch().count() < deadline) continue;
    const std::string* what = what_.load();
    std::fprintf(stderr,
                 "fedtl: error: rank %d: %s did not complete within %.1f s (a peer rank hung or died); "
                 "ending this rank so that mpirun stops the job\n",
                 rank_, what ? what->c_str() : "an MPI operation",
                 static_cast<double>(timeout_ms_.load()) / 1000.0);
    std::fflush(stderr);
    ::_exit(1);
  }
}

Watchdog::Guard::Guard(Watchdog& w, Millis timeout, const std::string& what) : w_(w) {
  w_.what_.store(&what);
  w_.timeout_ms_.store(timeout.count());
  const auto deadline = Clock::now() + timeout;
  w_.deadline_ns_.store(std::chrono::duration_cast<Clock::duration>(deadline.time_since_epoch()).count(),
                        std::memory_order_release);
}

Watchdog::Guard::~Guard() { w_.deadline_ns_.store(0, std::memory_order_release); }

}  // namespace fedtl::common::mpi

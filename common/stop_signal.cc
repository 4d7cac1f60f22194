#include "common/stop_signal.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <csignal>

#include "common/errors.h"

namespace fedtl::common {
namespace {
// The handler may run on any thread (libraries start threads before main, with signals
// unblocked), so it only does what is async-signal-safe: write the signal number to a pipe
// that the waiter thread reads. The write end is the one piece of process-wide state.
int g_signal_pipe = -1;

extern "C" void on_signal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  if (g_signal_pipe >= 0) (void)!::write(g_signal_pipe, &b, 1);
  errno = saved;
}
}  // namespace

StopSignal::StopSignal() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw Error("cannot create the signal pipe");
  read_fd_ = fds[0];
  write_fd_ = fds[1];
  g_signal_pipe = write_fd_;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  waiter_ = std::thread([this] { wait_loop(); });
}

StopSignal::~StopSignal() {
  struct sigaction sa {};
  sa.sa_handler = SIG_DFL;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  g_signal_pipe = -1;
  const unsigned char quit = 0;
  (void)!::write(write_fd_, &quit, 1);
  waiter_.join();
  ::close(read_fd_);
  ::close(write_fd_);
}

void StopSignal::on_stop(std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  callback_ = std::move(fn);
}

void StopSignal::wait_loop() {
  for (;;) {
    unsigned char sig = 0;
    const ssize_t n = ::read(read_fd_, &sig, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || sig == 0) return;
    spdlog::warn("received {}: finishing the current step, then stopping cleanly", sig == SIGINT ? "SIGINT" : "SIGTERM");
    request();
  }
}

void StopSignal::request() {
  std::lock_guard<std::mutex> lock(mu_);
  requested_ = true;
  cv_.notify_all();
  if (callback_) callback_();
}

bool StopSignal::wait_for(std::chrono::milliseconds d) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, d, [this] { return requested_.load(); });
  return requested_.load();
}

}  // namespace fedtl::common

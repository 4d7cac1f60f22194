#include "common/stop_signal.h"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <csignal>

namespace fedtl::common {
namespace {
sigset_t stop_set() {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGINT);
  sigaddset(&s, SIGTERM);
  sigaddset(&s, SIGUSR2);  // internal: wakes the waiter at destruction
  return s;
}
}  // namespace

StopSignal::StopSignal() {
  sigset_t s = stop_set();
  pthread_sigmask(SIG_BLOCK, &s, nullptr);  // inherited by every thread started after this
  waiter_ = std::thread([this] { wait_loop(); });
}

StopSignal::~StopSignal() {
  exiting_ = true;
  pthread_kill(waiter_.native_handle(), SIGUSR2);
  waiter_.join();
}

void StopSignal::on_stop(std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  callback_ = std::move(fn);
}

void StopSignal::wait_loop() {
  const sigset_t s = stop_set();
  for (;;) {
    int sig = 0;
    if (sigwait(&s, &sig) != 0) continue;
    if (exiting_) return;
    if (sig == SIGUSR2) continue;
    spdlog::warn("received {}: finishing the current step, then stopping cleanly", sig == SIGINT ? "SIGINT" : "SIGTERM");
    requested_ = true;
    std::lock_guard<std::mutex> lock(mu_);
    if (callback_) callback_();
  }
}

}  // namespace fedtl::common

// Clean shutdown on SIGINT/SIGTERM. main() creates one StopSignal and passes it to whatever
// must react. Its handler only writes to a pipe; a waiter thread turns that into the flag and
// the callback, so no real work runs inside a signal handler. Whatever must react:
// the coordinator polls requested() between rounds; a worker registers on_stop() to close its
// connection, which wakes its blocking receive.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

namespace fedtl::common {

class StopSignal {
 public:
  StopSignal();
  ~StopSignal();
  StopSignal(const StopSignal&) = delete;
  StopSignal& operator=(const StopSignal&) = delete;

  bool requested() const { return requested_.load(); }
  // Called (on the signal thread) when SIGINT or SIGTERM arrives; replaces any previous one.
  void on_stop(std::function<void()> fn);
  // Sleeps up to `d`, waking at once when a signal arrives. Returns requested().
  bool wait_for(std::chrono::milliseconds d);
  // For tests: behaves as if SIGTERM had arrived.
  void request();

 private:
  void wait_loop();
  std::atomic<bool> requested_{false};
  int read_fd_ = -1, write_fd_ = -1;
  std::mutex mu_;
  std::function<void()> callback_;
  std::condition_variable cv_;
  std::thread waiter_;
};

}  // namespace fedtl::common

// Clean shutdown on SIGINT/SIGTERM. One StopSignal is created by main() before any other
// thread starts (it blocks the two signals in the process's threads and waits for them on its
// own thread, so no work runs inside a signal handler) and is passed to whatever must react:
// the coordinator polls requested() between rounds; a worker registers on_stop() to close its
// connection, which wakes its blocking receive.
#pragma once
#include <atomic>
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

 private:
  void wait_loop();
  std::atomic<bool> requested_{false}, exiting_{false};
  std::mutex mu_;
  std::function<void()> callback_;
  std::thread waiter_;
};

}  // namespace fedtl::common

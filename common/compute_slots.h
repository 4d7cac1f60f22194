// A counting semaphore bounding how many heavy computations (feature caching, local
// training) run at once in one process. A simulation runs a thread per site; with more
// sites than cores, unbounded concurrency only multiplies working sets (100 sites caching
// features at once peaked at 4.5 GB and spent seconds in page faults) without going faster.
#pragma once
#include <condition_variable>
#include <mutex>

namespace fedtl::common {

class ComputeSlots {
 public:
  explicit ComputeSlots(int slots) : free_(slots < 1 ? 1 : slots) {}

  // Holds one slot for its lifetime. Blocks in the constructor until one is free.
  class Guard {
   public:
    explicit Guard(ComputeSlots* s) : s_(s) {
      if (!s_) return;
      std::unique_lock<std::mutex> lock(s_->mu_);
      s_->cv_.wait(lock, [&] { return s_->free_ > 0; });
      --s_->free_;
    }
    // Waits at most `wait` for a slot; held() says whether one was taken.
    template <class Duration>
    Guard(ComputeSlots* s, Duration wait) : s_(s) {
      if (!s_) return;
      std::unique_lock<std::mutex> lock(s_->mu_);
      if (!s_->cv_.wait_for(lock, wait, [&] { return s_->free_ > 0; })) {
        s_ = nullptr;
        held_ = false;
        return;
      }
      --s_->free_;
    }
    bool held() const { return held_; }
    ~Guard() {
      if (!s_) return;
      {
        std::lock_guard<std::mutex> lock(s_->mu_);
        ++s_->free_;
      }
      s_->cv_.notify_one();
    }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;

   private:
    ComputeSlots* s_;
    bool held_ = true;
  };

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int free_;
};

}  // namespace fedtl::common

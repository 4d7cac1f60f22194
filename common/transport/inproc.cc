// In-process connection pair. Close semantics (like TCP's FIN): close() on either side
// marks the pair closed and wakes both sides. Afterwards send() throws TransportError on
// both sides; the side that called close() gets TransportError from recv() at once, while
// the other side still receives the frames that were queued before the close and then gets
// TransportError. A ProtocolError from decoding closes the pair.
#include "common/transport/inproc.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>

#include "common/errors.h"

namespace fedtl::common {
namespace {

struct SharedPipe {
  std::mutex mu;
  std::condition_variable cv[2];  // cv[i]: frames for side i, or closed
  // queue[i]: encoded frames waiting for side i (shared: a broadcast queues one buffer for all)
  std::deque<std::shared_ptr<const std::string>> queue[2];
  bool closed = false;
  // Arrival notices for side i (Connection::watch).
  std::shared_ptr<ArrivalBell> bell[2];
  uint64_t tag[2] = {0, 0};
};

class InprocConnection final : public Connection {
 public:
  InprocConnection(std::shared_ptr<SharedPipe> pipe, int side, std::string peer,
                   uint32_t max_frame_bytes)
      : pipe_(std::move(pipe)), side_(side), peer_(std::move(peer)), max_(max_frame_bytes) {}

  ~InprocConnection() override { close(); }

  void send(const Frame& frame) override {
    push(std::make_shared<const std::string>(common::encode_frame(frame)));  // encoded outside the lock
  }
  void send(const SharedFrame& frame) override { push(frame.bytes()); }

 private:
  void push(std::shared_ptr<const std::string> bytes) {
    const size_t n = bytes->size();
    const int other = 1 - side_;
    std::shared_ptr<ArrivalBell> bell;
    uint64_t tag = 0;
    {
      std::lock_guard<std::mutex> lock(pipe_->mu);
      if (pipe_->closed) throw TransportError("in-process connection to " + peer_ + " is closed");
      pipe_->queue[other].push_back(std::move(bytes));
      bell = pipe_->bell[other];
      tag = pipe_->tag[other];
    }
    pipe_->cv[other].notify_one();
    if (bell) bell->ring(tag);
    sent_ += n;
  }

 public:

  Frame recv(Millis timeout) override {
    std::shared_ptr<const std::string> bytes;
    {
      std::unique_lock<std::mutex> lock(pipe_->mu);
      auto& q = pipe_->queue[side_];
      // Clamp so that a "forever" timeout (Millis::max()) cannot overflow the clock.
      const auto wait = std::min<Millis>(timeout, std::chrono::hours(24 * 365 * 10));
      const auto deadline = std::chrono::steady_clock::now() + wait;
      const bool ready = pipe_->cv[side_].wait_until(
          lock, deadline, [&] { return closed_here_ || !q.empty() || pipe_->closed; });
      if (closed_here_) throw TransportError("in-process connection to " + peer_ + " is closed");
      if (!ready) {
        throw TimeoutError("no message from " + peer_ + " within " +
                           std::to_string(timeout.count()) + " ms");
      }
      if (q.empty()) throw TransportError(peer_ + " closed the in-process connection");
      bytes = std::move(q.front());
      q.pop_front();
    }
    received_ += bytes->size();
    try {
      return common::decode_frame(*bytes, max_);
    } catch (const ProtocolError&) {
      close();
      throw;
    }
  }

  bool watch(std::shared_ptr<ArrivalBell> bell, uint64_t tag) override {
    bool now = false;
    {
      std::lock_guard<std::mutex> lock(pipe_->mu);
      pipe_->bell[side_] = bell;
      pipe_->tag[side_] = tag;
      now = !pipe_->queue[side_].empty() || pipe_->closed;
    }
    if (bell && now) bell->ring(tag);
    return true;
  }

  void close() override {
    std::shared_ptr<ArrivalBell> bells[2];
    uint64_t tags[2];
    {
      std::lock_guard<std::mutex> lock(pipe_->mu);
      if (closed_here_) return;
      closed_here_ = true;
      pipe_->closed = true;
      for (int i = 0; i < 2; ++i) {
        bells[i] = pipe_->bell[i];
        tags[i] = pipe_->tag[i];
      }
    }
    pipe_->cv[0].notify_all();
    pipe_->cv[1].notify_all();
    for (int i = 0; i < 2; ++i)
      if (bells[i]) bells[i]->ring(tags[i]);
  }

  std::string peer_name() const override { return peer_; }
  std::string peer_address() const override { return "in-process"; }
  uint64_t bytes_sent() const override { return sent_.load(); }
  uint64_t bytes_received() const override { return received_.load(); }

 private:
  std::shared_ptr<SharedPipe> pipe_;
  int side_;
  std::string peer_;
  uint32_t max_;
  bool closed_here_ = false;  // guarded by pipe_->mu
  std::atomic<uint64_t> sent_{0};
  std::atomic<uint64_t> received_{0};
};

}  // namespace

std::pair<std::unique_ptr<Connection>, std::unique_ptr<Connection>> make_inproc_pair(
    const std::string& a_name, const std::string& b_name, uint32_t max_frame_bytes) {
  auto pipe = std::make_shared<SharedPipe>();
  std::unique_ptr<Connection> a =
      std::make_unique<InprocConnection>(pipe, 0, b_name, max_frame_bytes);
  std::unique_ptr<Connection> b =
      std::make_unique<InprocConnection>(pipe, 1, a_name, max_frame_bytes);
  return {std::move(a), std::move(b)};
}

}  // namespace fedtl::common

#include "coordinator/heartbeat.h"

#include <spdlog/spdlog.h>

#include <atomic>

#include "common/errors.h"
#include "protocols/messages.h"

namespace fedtl::coordinator {

using Clock = std::chrono::steady_clock;

struct HeartbeatSender::Target {
  explicit Target(std::unique_ptr<common::Connection> c) : conn(std::move(c)), last_send(Clock::now()) {}
  std::unique_ptr<common::Connection> conn;
  std::mutex send_mu;  // serialises sends: the coordinator thread's and the heartbeats
  Clock::time_point last_send;  // guarded by send_mu
  std::atomic<bool> enabled{false};
  std::atomic<bool> closed{false};
};

namespace {

class BeatingConnection final : public common::Connection {
 public:
  explicit BeatingConnection(std::shared_ptr<HeartbeatSender::Target> t) : t_(std::move(t)) {}
  ~BeatingConnection() override { t_->closed = true; }
  void send(const common::Frame& frame) override {
    std::lock_guard<std::mutex> lock(t_->send_mu);
    t_->conn->send(frame);
    t_->last_send = Clock::now();
  }
  void send(const common::SharedFrame& frame) override {
    std::lock_guard<std::mutex> lock(t_->send_mu);
    t_->conn->send(frame);
    t_->last_send = Clock::now();
  }
  common::Frame recv(common::Millis timeout) override { return t_->conn->recv(timeout); }
  bool watch(std::shared_ptr<common::ArrivalBell> bell, uint64_t tag) override {
    return t_->conn->watch(std::move(bell), tag);
  }
  void close() override {
    t_->closed = true;
    t_->conn->close();
  }
  std::string peer_name() const override { return t_->conn->peer_name(); }
  std::string peer_address() const override { return t_->conn->peer_address(); }
  uint64_t bytes_sent() const override { return t_->conn->bytes_sent(); }
  uint64_t bytes_received() const override { return t_->conn->bytes_received(); }
  HeartbeatSender::Target& target() { return *t_; }

 private:
  std::shared_ptr<HeartbeatSender::Target> t_;
};

}  // namespace

HeartbeatSender::HeartbeatSender(std::chrono::milliseconds interval) : interval_(interval) {}

HeartbeatSender::~HeartbeatSender() { stop(); }

std::unique_ptr<common::Connection> HeartbeatSender::wrap(std::unique_ptr<common::Connection> conn) {
  auto t = std::make_shared<Target>(std::move(conn));
  {
    std::lock_guard<std::mutex> lock(mu_);
    targets_.push_back(t);
  }
  return std::make_unique<BeatingConnection>(std::move(t));
}

void HeartbeatSender::enable(common::Connection& conn) {
  if (auto* b = dynamic_cast<BeatingConnection*>(&conn)) b->target().enabled = true;
}

void HeartbeatSender::start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (interval_.count() <= 0 || thread_.joinable() || stopping_) return;
  thread_ = std::thread([this] { loop(); });
}

void HeartbeatSender::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void HeartbeatSender::loop() {
  const auto tick = std::max(interval_ / 4, std::chrono::milliseconds(1));
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, tick, [&] { return stopping_; })) {
    std::vector<std::shared_ptr<Target>> live;
    std::vector<std::weak_ptr<Target>> kept;
    for (auto& w : targets_)
      if (auto t = w.lock(); t && !t->closed) {
        live.push_back(t);
        kept.push_back(w);
      }
    targets_.swap(kept);
    lock.unlock();
    const common::Frame beat = protocols::to_frame(v1::Heartbeat{});
    for (auto& t : live) {
      if (!t->enabled || t->closed) continue;
      std::unique_lock<std::mutex> send_lock(t->send_mu, std::try_to_lock);
      if (!send_lock.owns_lock()) continue;  // the coordinator thread is sending to it right now
      if (Clock::now() - t->last_send < interval_) continue;
      try {
        t->conn->send(beat);
        t->last_send = Clock::now();
      } catch (const fedtl::Error& e) {
        // The coordinator thread sees the broken connection when it next uses it.
        spdlog::debug("heartbeat to '{}' not sent: {}", t->conn->peer_name(), e.what());
        t->closed = true;
      }
    }
    live.clear();  // a connection dropped meanwhile may be destroyed here, not under mu_
    lock.lock();
  }
}

}  // namespace fedtl::coordinator

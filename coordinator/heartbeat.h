// Internal to coordinator/: the coordinator's heartbeats to its sites. A site that has its job
// and backbone waits for the coordinator's next message (the first RoundStart, the next round,
// a secure aggregation step) while the coordinator waits for the other sites, evaluates and
// checkpoints; without a word from the coordinator a site cannot tell that wait from a
// coordinator that fell silent. HeartbeatSender's thread sends a Heartbeat to every site that
// has heard nothing from the coordinator for `interval`, so a worker can bound the silence it
// tolerates (site policy coordinator_silence_s) without ever taking a busy coordinator for a
// dead one.
//
// Threading: wrap() gives a Connection whose sends are serialised with the heartbeat thread's
// (Connection's contract allows one sender at a time); the wrapper may be used from the
// coordinator thread like the connection it wraps. The heartbeat thread never blocks on a
// send the coordinator thread is making: a site being sent to is skipped.
#pragma once
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common/transport/connection.h"

namespace fedtl::coordinator {

class HeartbeatSender {
 public:
  struct Target;
  // interval 0: no heartbeats (wrap() still works).
  explicit HeartbeatSender(std::chrono::milliseconds interval);
  ~HeartbeatSender();  // stop()
  HeartbeatSender(const HeartbeatSender&) = delete;
  HeartbeatSender& operator=(const HeartbeatSender&) = delete;

  // A connection that goes through this sender. Heartbeats flow on it once enable() is called.
  std::unique_ptr<common::Connection> wrap(std::unique_ptr<common::Connection> conn);
  // Heartbeats may go to this site from now on (it has its JobSpec and the whole backbone, so
  // a heartbeat can no longer land in the middle of the handshake). `conn` must come from
  // wrap(); other connections are ignored.
  static void enable(common::Connection& conn);

  void start();  // idempotent
  void stop();   // idempotent; no heartbeat is sent after it returns

 private:
  void loop();
  const std::chrono::milliseconds interval_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::vector<std::weak_ptr<Target>> targets_;  // guarded by mu_
  std::thread thread_;
};

}  // namespace fedtl::coordinator

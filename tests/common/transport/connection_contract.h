// The Connection contract (common/transport/connection.h) as one value-parameterised
// GoogleTest suite, run against every transport backend.
//
// Each case is written as two roles, the "client" end and the "server" end of one connected
// pair, that meet at rendezvous points (Ends::sync()). A backend's PairFactory decides where
// the roles run:
//  - in-process backends (inproc, TLS over loopback) make both ends here; the server role runs
//    on a thread of its own, the client role on the test's thread, and sync() is a two-thread
//    barrier;
//  - a two-process backend (MPI: a pair in one process is impossible, because a connection is
//    "this rank <-> peer rank" and two connections of one rank to itself would read each
//    other's messages) makes only the end living in this process; each rank runs its own role
//    and sync() is a barrier between the ranks.
// Include this header from exactly one .cc of a test executable and instantiate the suite
// there with INSTANTIATE_TEST_SUITE_P(Prefix, ConnectionContract, ::testing::Values(factory*)).
#pragma once
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/errors.h"
#include "common/transport/connection.h"

namespace fedtl::common::contract {

using namespace std::chrono_literals;

// A connected pair as far as this process holds it. `client`/`server` are null for an end
// that lives in another process. `keep` owns whatever the connections need (listeners, MPI
// communicators); it is destroyed after them.
struct Pair {
  std::unique_ptr<Connection> client, server;
  std::shared_ptr<void> keep;
};

class PairFactory {
 public:
  virtual ~PairFactory() = default;
  // The name of the instantiation (gtest parameter name).
  virtual std::string name() const = 0;
  // "" when the backend can run here; otherwise why the cases are skipped.
  virtual std::string unavailable() const { return ""; }
  // A connected pair whose receivers refuse payloads over `max_frame_bytes`.
  virtual Pair make(uint32_t max_frame_bytes) = 0;
  // Cross-process rendezvous (two-process backends only; both ends call it equally often).
  // Returns false when the peer did not arrive within `timeout`.
  virtual bool cross_sync(Millis timeout) { return true; }
  // Called once a case is over, before the pair is destroyed (MPI: wait for the peer rank).
  virtual void finish() {}
};

// A two-party barrier for the in-process case.
class ThreadBarrier {
 public:
  bool wait(Millis timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t gen = generation_;
    if (++arrived_ == 2) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return true;
    }
    if (cv_.wait_for(lock, timeout, [&] { return generation_ != gen; })) return true;
    --arrived_;
    return false;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
};

inline Frame frame_of(MessageType t, std::string payload) {
  Frame f;
  f.type = t;
  f.payload = std::move(payload);
  return f;
}

// What a blocked recv ended with.
inline std::string recv_outcome(Connection& c, Millis timeout) {
  try {
    c.recv(timeout);
  } catch (const TimeoutError&) {
    return "timeout";
  } catch (const ProtocolError&) {
    return "protocol error";
  } catch (const TransportError&) {
    return "closed";
  }
  return "frame";
}

// The traffic of the ordering case: varied sizes (empty, small, a few 100 KiB) and types.
inline std::vector<Frame> varied_frames(int n, char salt) {
  static const MessageType kTypes[] = {MessageType::kHello,      MessageType::kJobSpec,
                                       MessageType::kBackboneChunk, MessageType::kReady,
                                       MessageType::kRoundStart, MessageType::kUpdate,
                                       MessageType::kShutdown,   MessageType::kError,
                                       MessageType::kHeartbeat,  MessageType::kSecAggKeys,
                                       MessageType::kSecAggAbort};
  std::vector<Frame> out;
  for (int i = 0; i < n; ++i) {
    size_t size = (static_cast<size_t>(i) * 7919u) % 3000u;
    if (i % 50 == 17) size = 100000u + static_cast<size_t>(i);
    if (i % 23 == 0) size = 0;
    std::string payload(size, '\0');
    for (size_t k = 0; k < size; ++k) payload[k] = static_cast<char>((k * 31u + static_cast<size_t>(i)) ^ salt);
    if (size >= 4) payload.replace(0, 4, std::to_string(1000 + i).substr(0, 4));
    out.push_back(frame_of(kTypes[static_cast<size_t>(i) % (sizeof(kTypes) / sizeof(kTypes[0]))], payload));
  }
  return out;
}

inline uint64_t framed_bytes(const std::vector<Frame>& frames) {
  uint64_t n = 0;
  for (const auto& f : frames) n += f.payload.size() + kFrameHeaderSize;
  return n;
}

class ConnectionContract : public ::testing::TestWithParam<PairFactory*> {
 protected:
  using Role = std::function<void(Connection&)>;

  void SetUp() override {
    const std::string why = GetParam()->unavailable();
    if (!why.empty()) GTEST_SKIP() << why;
  }

  // Makes a pair and runs the two roles on it (see the header comment); returns when both
  // roles held here are done.
  void run(uint32_t max_frame_bytes, const Role& client, const Role& server) {
    Pair p = GetParam()->make(max_frame_bytes);
    ASSERT_TRUE(p.client || p.server) << "factory made no end";
    local_pair_ = p.client && p.server;
    if (local_pair_) {
      client_ = p.client.get();
      server_ = p.server.get();
      std::thread t([&] { server(*p.server); });
      client(*p.client);
      t.join();
    } else if (p.client) {
      client(*p.client);
    } else {
      server(*p.server);
    }
    GetParam()->finish();
    client_ = server_ = nullptr;
    p.client.reset();
    p.server.reset();
    p.keep.reset();
  }

  // A rendezvous of the two roles.
  void sync() {
    const bool ok = local_pair_ ? barrier_.wait(10s) : GetParam()->cross_sync(10s);
    EXPECT_TRUE(ok) << "the other end never reached the rendezvous";
  }

  // Both ends, when both live in this process (for cross-end checks); else null.
  Connection* client_ = nullptr;
  Connection* server_ = nullptr;
  bool local_pair_ = false;
  ThreadBarrier barrier_;
};

// Contract: recv(timeout) throws TimeoutError when nothing arrived in time, no sooner than the
// timeout, and the connection stays usable: frames sent afterwards, both ways, still arrive.
TEST_P(ConnectionContract, RecvTimeoutThrowsTimeoutErrorAndConnectionStaysUsable) {
  run(
      kDefaultMaxFrameBytes,
      [&](Connection& c) {
        sync();  // the server has timed out
        c.send(frame_of(MessageType::kReady, "after the timeout"));
        const Frame back = c.recv(10s);
        EXPECT_EQ(back.type, MessageType::kHeartbeat);
        EXPECT_EQ(back.payload, "pong");
      },
      [&](Connection& c) {
        const auto t0 = std::chrono::steady_clock::now();
        EXPECT_THROW(c.recv(100ms), TimeoutError);
        const auto waited = std::chrono::steady_clock::now() - t0;
        EXPECT_GE(waited, 100ms);
        EXPECT_LT(waited, 3s);
        EXPECT_THROW(c.recv(1ms), TimeoutError);  // a second timeout: still usable
        sync();
        const Frame f = c.recv(10s);
        EXPECT_EQ(f.type, MessageType::kReady);
        EXPECT_EQ(f.payload, "after the timeout");
        c.send(frame_of(MessageType::kHeartbeat, "pong"));
      });
}

// Contract: close() closes both directions and a recv blocked on EITHER side wakes with
// TransportError (not a timeout, long before its timeout); afterwards send() on either side
// throws TransportError, and close() is idempotent.
TEST_P(ConnectionContract, CloseWakesBlockedRecvOnBothSidesWithTransportError) {
  // Each end has a thread blocked in recv(2 s); the server's main thread closes ~100 ms in.
  auto role = [&](bool closer) {
    return [this, closer](Connection& c) {
      std::string outcome;
      std::chrono::steady_clock::duration waited{};
      std::thread blocked([&] {
        const auto t0 = std::chrono::steady_clock::now();
        outcome = recv_outcome(c, 2s);
        waited = std::chrono::steady_clock::now() - t0;
      });
      std::this_thread::sleep_for(50ms);  // let the recv block
      sync();                             // both ends are blocked now
      if (closer) {
        std::this_thread::sleep_for(50ms);
        c.close();
      }
      blocked.join();
      EXPECT_EQ(outcome, "closed") << (closer ? "closing end" : "peer end");
      EXPECT_LT(waited, 1500ms) << "recv not woken by the close";
      EXPECT_THROW(c.recv(100ms), TransportError);
      EXPECT_THROW(c.send(frame_of(MessageType::kHeartbeat, "")), TransportError);
      c.close();  // idempotent
      c.close();
    };
  };
  run(kDefaultMaxFrameBytes, role(false), role(true));
}

// Contract: a frame over the receiver's max frame size makes its recv throw ProtocolError and
// the connection is then closed: the receiver's next recv/send throw TransportError and the
// sender learns of the close (its recv throws TransportError). Frames before the bad one are
// still delivered. The sender's send of the oversized frame either hands it over or throws
// TransportError (the backend may notice the close first); nothing else.
TEST_P(ConnectionContract, OversizedFrameIsProtocolErrorAndClosesTheConnection) {
  constexpr uint32_t kMax = 1024;
  run(
      kMax,
      [&](Connection& c) {
        c.send(frame_of(MessageType::kUpdate, std::string(kMax, 'a')));  // exactly the limit: fine
        try {
          c.send(frame_of(MessageType::kUpdate, std::string(4 * kMax, 'x')));
        } catch (const TransportError&) {
        }
        EXPECT_EQ(recv_outcome(c, 10s), "closed");  // the receiver closed the connection
        EXPECT_THROW(c.send(frame_of(MessageType::kUpdate, "")), TransportError);
      },
      [&](Connection& c) {
        const Frame ok = c.recv(10s);
        EXPECT_EQ(ok.payload, std::string(kMax, 'a'));
        EXPECT_THROW(c.recv(10s), ProtocolError);
        EXPECT_THROW(c.recv(100ms), TransportError);  // closed now
        EXPECT_THROW(c.send(frame_of(MessageType::kUpdate, "")), TransportError);
      });
}

// Contract: frames arrive whole, in order, with their types, in both directions at once
// (one thread sends while another receives on the same connection).
TEST_P(ConnectionContract, FramesArriveWholeAndInOrderBothWays) {
  constexpr int kFrames = 200;
  const std::vector<Frame> up = varied_frames(kFrames, 'c'), down = varied_frames(kFrames, 's');
  auto role = [&](const std::vector<Frame>& mine_ref, const std::vector<Frame>& theirs_ref) {
    return [this, &mine = mine_ref, &theirs = theirs_ref](Connection& c) {
      std::thread sender([&] {
        for (const auto& f : mine) c.send(f);
      });
      for (int i = 0; i < kFrames; ++i) {
        const Frame f = c.recv(10s);
        ASSERT_EQ(f.type, theirs[i].type) << "frame " << i;
        ASSERT_EQ(f.payload.size(), theirs[i].payload.size()) << "frame " << i;
        ASSERT_TRUE(f.payload == theirs[i].payload) << "frame " << i;
      }
      sender.join();
    };
  };
  run(kDefaultMaxFrameBytes, role(up, down), role(down, up));
}

// Contract: bytes_sent()/bytes_received() count framing: after the traffic each end has sent
// exactly Σ (16-byte header + payload) of its frames and received exactly what the other end
// sent, so one end's bytes_sent equals the other's bytes_received (empty frames count 16).
TEST_P(ConnectionContract, ByteCountersCountFramingHeaders) {
  const std::vector<Frame> up = {frame_of(MessageType::kUpdate, std::string(100, 'u')),
                                 frame_of(MessageType::kHeartbeat, ""),
                                 frame_of(MessageType::kHello, std::string(5000, 'h'))};
  const std::vector<Frame> down = {frame_of(MessageType::kJobSpec, std::string(7, 'j')),
                                   frame_of(MessageType::kShutdown, "")};
  ASSERT_EQ(framed_bytes(up), 5100u + 3 * kFrameHeaderSize);
  auto role = [&](const std::vector<Frame>& mine_ref, const std::vector<Frame>& theirs_ref) {
    return [this, &mine = mine_ref, &theirs = theirs_ref](Connection& c) {
      EXPECT_EQ(c.bytes_sent(), 0u);
      EXPECT_EQ(c.bytes_received(), 0u);
      sync();  // neither end has sent anything before both checked their fresh counters
      for (const auto& f : mine) c.send(f);
      for (size_t i = 0; i < theirs.size(); ++i) EXPECT_EQ(c.recv(10s).payload, theirs[i].payload);
      EXPECT_EQ(c.bytes_sent(), framed_bytes(mine));
      EXPECT_EQ(c.bytes_received(), framed_bytes(theirs));
      sync();  // both ends done: compare across ends where both live here
      if (client_ && server_) {
        EXPECT_EQ(client_->bytes_sent(), server_->bytes_received());
        EXPECT_EQ(server_->bytes_sent(), client_->bytes_received());
      }
      sync();
    };
  };
  run(kDefaultMaxFrameBytes, role(up, down), role(down, up));
}

// Contract (Connection::watch, for backends that support it; MPI returns false and is
// skipped by this case's checks, its roles still meeting): the bell rings with the tag when a
// frame is queued, recv(0) then takes it without waiting, a frame queued before watch() rings
// at once, a null bell stops the rings, and the peer's close rings too.
TEST_P(ConnectionContract, WatchRingsForEachFrameAndForTheEnd) {
  run(
      kDefaultMaxFrameBytes,
      [&](Connection& c) {
        c.send(frame_of(MessageType::kUpdate, "before the watch"));
        sync();  // the server watches now
        sync();  // ... and took the first frame
        c.send(frame_of(MessageType::kUpdate, "watched"));
        sync();  // the server stopped watching
        c.send(frame_of(MessageType::kUpdate, "unwatched"));
        sync();  // the server watches again
        c.close();
      },
      [&](Connection& c) {
        auto bell = std::make_shared<ArrivalBell>();
        const auto soon = [] { return std::chrono::steady_clock::now() + 10s; };
        const auto brief = [] { return std::chrono::steady_clock::now() + 200ms; };
        sync();
        std::this_thread::sleep_for(100ms);  // the first frame is queued (or its TLS read lands soon)
        const bool supported = c.watch(bell, 7);
        if (!supported) {  // MPI: keep meeting the client
          sync();
          sync();
          sync();
          return;
        }
        EXPECT_EQ(bell->wait_until(soon()), std::optional<uint64_t>(7)) << "a frame queued before watch()";
        EXPECT_EQ(c.recv(0ms).payload, "before the watch");
        EXPECT_THROW(c.recv(0ms), TimeoutError);  // nothing else queued: recv(0) does not wait
        sync();
        EXPECT_EQ(bell->wait_until(soon()), std::optional<uint64_t>(7));
        EXPECT_EQ(c.recv(0ms).payload, "watched");
        c.watch(nullptr, 0);
        sync();
        EXPECT_EQ(c.recv(10s).payload, "unwatched");
        EXPECT_EQ(bell->wait_until(brief()), std::nullopt) << "rang after watch(nullptr)";
        c.watch(bell, 9);
        sync();
        EXPECT_EQ(bell->wait_until(soon()), std::optional<uint64_t>(9)) << "the peer's close";
        EXPECT_THROW(c.recv(0ms), TransportError);
      });
}

}  // namespace fedtl::common::contract

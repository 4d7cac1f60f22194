// In-process transport tests. They live with the protocol tests because they exercise the
// real wire framing end to end. The Connection contract itself (ordering, timeouts, close,
// oversized frames, byte counters) is checked for every backend by connection_contract.h
// (test_connection_contract.cc); what is here is specific to the in-process backend.
#include "common/transport/inproc.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "common/errors.h"
#include "protocols/messages.h"

namespace fedtl::common {
namespace {

using namespace std::chrono_literals;
using common::MessageType;

Frame frame_of(MessageType t, std::string payload) {
  Frame f;
  f.type = t;
  f.payload = std::move(payload);
  return f;
}

TEST(Inproc, PeerNames) {
  auto [a, b] = make_inproc_pair("coordinator", "site-1");
  EXPECT_EQ(a->peer_name(), "site-1");
  EXPECT_EQ(b->peer_name(), "coordinator");
}

TEST(Inproc, PingPongAcrossThreads) {
  auto [a, b] = make_inproc_pair("coordinator", "site");
  constexpr int kRounds = 200;
  std::thread peer([&b = b] {
    for (int i = 0; i < kRounds; ++i) {
      auto hb = protocols::from_frame<v1::Heartbeat>(b->recv(5000ms));
      hb.set_progress(hb.round() * 0.5);
      b->send(protocols::to_frame(hb));
    }
  });
  for (int i = 0; i < kRounds; ++i) {
    v1::Heartbeat hb;
    hb.set_round(i);
    a->send(protocols::to_frame(hb));
    auto reply = protocols::from_frame<v1::Heartbeat>(a->recv(5000ms));
    ASSERT_EQ(reply.round(), static_cast<uint32_t>(i));
    ASSERT_DOUBLE_EQ(reply.progress(), i * 0.5);
  }
  peer.join();
}

TEST(Inproc, TimeoutLeavesConnectionUsable) {
  auto [a, b] = make_inproc_pair("a", "b");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(b->recv(50ms), TimeoutError);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 50ms);
  EXPECT_THROW(b->recv(0ms), TimeoutError);
  a->send(frame_of(MessageType::kReady, "x"));
  EXPECT_EQ(b->recv(0ms).payload, "x");
}

TEST(Inproc, FramesQueuedBeforeCloseAreDelivered) {
  auto [a, b] = make_inproc_pair("a", "b");
  a->send(frame_of(MessageType::kShutdown, "bye"));
  a->close();
  // The closer itself receives nothing more.
  EXPECT_THROW(a->recv(0ms), TransportError);
  // The other side drains what was in flight, then sees the close.
  EXPECT_EQ(b->recv(100ms).payload, "bye");
  EXPECT_THROW(b->recv(100ms), TransportError);
}

TEST(Inproc, DestroyingOneEndClosesThePair) {
  auto [a, b] = make_inproc_pair("a", "b");
  a.reset();
  EXPECT_THROW(b->recv(1000ms), TransportError);
}

TEST(Inproc, ByteCountersIncludeHeaders) {
  auto [a, b] = make_inproc_pair("a", "b");
  a->send(frame_of(MessageType::kUpdate, std::string(100, 'u')));
  a->send(frame_of(MessageType::kHeartbeat, ""));
  EXPECT_EQ(a->bytes_sent(), 100u + 2 * common::kFrameHeaderSize);
  EXPECT_EQ(b->bytes_received(), 0u);  // nothing read yet
  b->recv(100ms);
  EXPECT_EQ(b->bytes_received(), 100u + common::kFrameHeaderSize);
  b->recv(100ms);
  EXPECT_EQ(b->bytes_received(), a->bytes_sent());
  EXPECT_EQ(a->bytes_received(), 0u);
  EXPECT_EQ(b->bytes_sent(), 0u);
}

TEST(Inproc, LargeFrame) {
  auto [a, b] = make_inproc_pair("a", "b");
  std::string payload(10u << 20, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 2654435761u >> 24);
  std::thread sender([&a = a, &payload] { a->send(frame_of(MessageType::kRoundStart, payload)); });
  Frame got = b->recv(10000ms);
  sender.join();
  EXPECT_EQ(got.type, MessageType::kRoundStart);
  ASSERT_EQ(got.payload.size(), payload.size());
  EXPECT_TRUE(got.payload == payload);
  EXPECT_EQ(b->bytes_received(), payload.size() + common::kFrameHeaderSize);
}

}  // namespace
}  // namespace fedtl::common

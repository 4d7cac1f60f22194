// Frames for the secure aggregation messages (protocols/secagg.proto). Frame types 16..31 are
// reserved for secure aggregation in common/transport/framing.h; this header fixes the numbers:
//
//   16 SecAggKeys          site -> coordinator   step 1
//   17 SecAggKeyList       coordinator -> sites  step 1 -> 2
//   18 SecAggShares        site -> coordinator   step 2
//   19 SecAggShareList     coordinator -> site   step 2 -> 3
//   20 SecAggMasked        site -> coordinator   step 3
//   21 SecAggUnmaskRequest coordinator -> sites  step 3 -> 4
//   22 SecAggUnmaskShares  site -> coordinator   step 4
//   23 SecAggAbort         coordinator -> sites  round abandoned
//   24 SecAggConsistency   site -> coordinator   signed rounds: step 3 -> 4
//   25 SecAggConsistencyList coordinator -> sites signed rounds: step 3 -> 4
//
// It specialises protocols::type_of<> so that protocols::to_frame / from_frame (messages.h)
// work for these messages too; encode()/decode() below are the same with secagg's names.
#pragma once
#include <cstdint>
#include <string>

#include "common/errors.h"
#include "protocols/messages.h"
#include "protocols/secagg.pb.h"

namespace fedtl::protocols {

namespace secagg {
inline constexpr uint16_t kFrameKeys = 16;
inline constexpr uint16_t kFrameKeyList = 17;
inline constexpr uint16_t kFrameShares = 18;
inline constexpr uint16_t kFrameShareList = 19;
inline constexpr uint16_t kFrameMasked = 20;
inline constexpr uint16_t kFrameUnmaskRequest = 21;
inline constexpr uint16_t kFrameUnmaskShares = 22;
inline constexpr uint16_t kFrameAbort = 23;
inline constexpr uint16_t kFrameConsistency = 24;
inline constexpr uint16_t kFrameConsistencyList = 25;
constexpr MessageType frame_type(uint16_t t) { return static_cast<MessageType>(t); }
}  // namespace secagg

template <> inline MessageType type_of<v1::SecAggKeys>() { return secagg::frame_type(secagg::kFrameKeys); }
template <> inline MessageType type_of<v1::SecAggKeyList>() { return secagg::frame_type(secagg::kFrameKeyList); }
template <> inline MessageType type_of<v1::SecAggShares>() { return secagg::frame_type(secagg::kFrameShares); }
template <> inline MessageType type_of<v1::SecAggShareList>() { return secagg::frame_type(secagg::kFrameShareList); }
template <> inline MessageType type_of<v1::SecAggMasked>() { return secagg::frame_type(secagg::kFrameMasked); }
template <> inline MessageType type_of<v1::SecAggUnmaskRequest>() {
  return secagg::frame_type(secagg::kFrameUnmaskRequest);
}
template <> inline MessageType type_of<v1::SecAggUnmaskShares>() {
  return secagg::frame_type(secagg::kFrameUnmaskShares);
}
template <> inline MessageType type_of<v1::SecAggAbort>() { return secagg::frame_type(secagg::kFrameAbort); }
template <> inline MessageType type_of<v1::SecAggConsistency>() {
  return secagg::frame_type(secagg::kFrameConsistency);
}
template <> inline MessageType type_of<v1::SecAggConsistencyList>() {
  return secagg::frame_type(secagg::kFrameConsistencyList);
}

namespace secagg {

// The secure aggregation message name of a frame type, or nullptr outside 16..25.
const char* frame_name(uint16_t type);

// Serialises `msg` into a frame of its type. Throws ProtocolError if serialisation fails.
template <typename M>
Frame encode(const M& msg) {
  return protocols::to_frame(msg);
}

// Parses a frame as M. Throws ProtocolError naming the expected and received message when
// the type differs (an Error frame carries the peer's reason) or the payload does not parse.
template <typename M>
M decode(const Frame& f) {
  const uint16_t want = static_cast<uint16_t>(type_of<M>());
  const uint16_t got = static_cast<uint16_t>(f.type);
  if (got != want && f.type != MessageType::kError) {
    const char* g = frame_name(got);
    throw ProtocolError(std::string("expected a ") + frame_name(want) + " message, received " +
                        (g ? g : message_type_name(f.type)));
  }
  check_frame_type(f, type_of<M>());
  M msg;
  if (!msg.ParseFromString(f.payload)) {
    throw ProtocolError(std::string("malformed ") + frame_name(want) + " message: payload does not parse");
  }
  return msg;
}

}  // namespace secagg
}  // namespace fedtl::protocols

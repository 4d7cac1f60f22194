// Wire framing shared by every transport. A frame is a fixed 16-byte header followed by
// the payload (a serialized protobuf message):
//
//   offset size field
//   0      4    magic "FDTL" (0x46 0x44 0x54 0x4C)
//   4      2    protocol version, little-endian (kProtocolVersion)
//   6      2    message type, little-endian (MessageType)
//   8      4    payload length in bytes, little-endian (<= the receiver's max frame size)
//   12     4    reserved flags, zero
//
// See docs/protocol.md. No dependencies beyond the standard library so that every
// transport backend can use it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace fedtl::common {

inline constexpr uint16_t kProtocolVersion = 2;
inline constexpr size_t kFrameHeaderSize = 16;
inline constexpr uint32_t kDefaultMaxFrameBytes = 256u << 20;  // 256 MiB

// Message types on the wire. Values are stable: never renumber, only append.
enum class MessageType : uint16_t {
  kHello = 1,          // worker -> coordinator: identity, version, backbone digests held
  kJobSpec = 2,        // coordinator -> worker: the job, backbone digest and size
  kBackboneChunk = 3,  // coordinator -> worker: a slice of the backbone file
  kReady = 4,          // worker -> coordinator: backbone verified, features cached, sample count
  kRoundStart = 5,     // coordinator -> worker: round number + global trainable parameters
  kUpdate = 6,         // worker -> coordinator: weight delta, sample count, training metrics
  kShutdown = 7,       // coordinator -> worker: job finished (or aborted) with a reason
  kError = 8,          // either way: a refusal or failure with a reason, then close
  kHeartbeat = 9,      // either way: liveness while a long step runs
  kSiteEvaluation = 10,  // worker -> coordinator: its own validation metrics of the final model
  // Secure aggregation (protocols/secagg.proto; protocols/secagg/wire.h), 16..31:
  kSecAggKeys = 16,           // site -> coordinator: public keys (step 1)
  kSecAggKeyList = 17,        // coordinator -> sites: everyone's public keys
  kSecAggShares = 18,         // site -> coordinator: encrypted shares for its neighbours (step 2)
  kSecAggShareList = 19,      // coordinator -> site: the shares addressed to it
  kSecAggMasked = 20,         // site -> coordinator: masked input (step 3)
  kSecAggUnmaskRequest = 21,  // coordinator -> sites: survivors and dropouts (step 4)
  kSecAggUnmaskShares = 22,   // site -> coordinator: revealed shares
  kSecAggAbort = 23,          // coordinator -> sites: round abandoned (below threshold)
  kSecAggConsistency = 24,    // site -> coordinator: its signature of the unmask request (signed rounds)
  kSecAggConsistencyList = 25,  // coordinator -> survivors: everyone's signatures of it
  // 32.. reserved for cluster/MPI control.
};

const char* message_type_name(MessageType t);
bool is_known_message_type(uint16_t t);

struct FrameHeader {
  uint16_t version = kProtocolVersion;
  MessageType type = MessageType::kHello;
  uint32_t length = 0;
};

// A decoded message: its type and payload bytes.
struct Frame {
  MessageType type = MessageType::kHello;
  std::string payload;
};

// Appends header + payload to `out`. Throws ProtocolError if payload exceeds 4 GiB - 1.
void encode_frame(const Frame& frame, std::string& out);
std::string encode_frame(const Frame& frame);

// Parses a 16-byte header. Throws ProtocolError on bad magic, a version other than
// kProtocolVersion (message says both versions), an unknown type, non-zero reserved
// bytes, or length > max_frame_bytes.
FrameHeader decode_header(const uint8_t* header16, uint32_t max_frame_bytes);

// Incremental decoder for byte streams (TLS, TCP): feed bytes as they arrive, take
// frames as they complete. Not thread-safe; one per connection.
class FrameDecoder {
 public:
  explicit FrameDecoder(uint32_t max_frame_bytes = kDefaultMaxFrameBytes) : max_(max_frame_bytes) {}
  // Appends bytes; throws ProtocolError as soon as a complete header is invalid.
  void feed(const void* data, size_t n);
  // Returns the next complete frame, if any.
  std::optional<Frame> next();
  // Bytes buffered that do not yet form a complete frame (a non-zero value at EOF = truncated).
  size_t pending_bytes() const { return buf_.size() - pos_; }

 private:
  uint32_t max_;
  std::string buf_;
  size_t pos_ = 0;
  std::optional<FrameHeader> header_;
};

// Decodes exactly one whole frame from `bytes` (datagram-style transports: in-process,
// MPI). Throws ProtocolError if truncated, oversized, or with trailing bytes.
Frame decode_frame(const std::string& bytes, uint32_t max_frame_bytes = kDefaultMaxFrameBytes);

}  // namespace fedtl::common

// Typed encode/decode between protobuf messages and frames. The protobuf types come from
// protocols/fedtl.proto (namespace fedtl::v1). Decoding checks the frame type and throws
// ProtocolError with the message type name when the payload does not parse.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/data/input_stats.h"
#include "common/metrics.h"
#include "common/errors.h"
#include "common/transport/framing.h"
#include "protocols/fedtl.pb.h"

namespace fedtl::protocols {

// The frame and its type tags belong to the transport (common/transport/framing.h); the
// protocol names them as its own.
using common::Frame;
using common::MessageType;
using common::message_type_name;

enum class ErrorCode : uint32_t {
  kInternal = 1,
  kVersionMismatch = 2,
  kUnauthorized = 3,
  kPolicyRefused = 4,
  kBadMessage = 5,
  kBackboneDigest = 6,
  kBadConfig = 7,
  // Not a refusal: the site leaves before Ready (it only inspected the job, `fedtl worker
  // --inspect-job`) and may join later; the coordinator frees its slot and keeps serving.
  kLeaving = 8,
};

// The peer answered with an Error frame: a typed refusal. Callers decide on code(), never on
// the text (e.g. a worker refused with kUnauthorized or kPolicyRefused does not retry).
class PeerRefused : public ProtocolError {
 public:
  PeerRefused(ErrorCode code, const std::string& message) : ProtocolError(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

// Throws PeerRefused (with the peer's code; kInternal when unreadable) for an Error frame and
// ProtocolError for any other type than `expected`.
void check_frame_type(const Frame& f, MessageType expected);
[[noreturn]] void throw_encode_failure(MessageType t);
[[noreturn]] void throw_decode_failure(MessageType t);

// The frame type that carries each message.
template <typename M> MessageType type_of();
template <> inline MessageType type_of<v1::Hello>() { return MessageType::kHello; }
template <> inline MessageType type_of<v1::JobSpec>() { return MessageType::kJobSpec; }
template <> inline MessageType type_of<v1::BackboneChunk>() { return MessageType::kBackboneChunk; }
template <> inline MessageType type_of<v1::Ready>() { return MessageType::kReady; }
template <> inline MessageType type_of<v1::RoundStart>() { return MessageType::kRoundStart; }
template <> inline MessageType type_of<v1::Update>() { return MessageType::kUpdate; }
template <> inline MessageType type_of<v1::Shutdown>() { return MessageType::kShutdown; }
template <> inline MessageType type_of<v1::ErrorMessage>() { return MessageType::kError; }
template <> inline MessageType type_of<v1::Heartbeat>() { return MessageType::kHeartbeat; }
template <> inline MessageType type_of<v1::SiteEvaluation>() { return MessageType::kSiteEvaluation; }

// Serialises `msg` into a frame of its type.
template <typename M>
Frame to_frame(const M& msg) {
  Frame f;
  f.type = type_of<M>();
  if (!msg.SerializeToString(&f.payload)) throw_encode_failure(f.type);
  return f;
}

// Parses a frame as M. If the frame is an ErrorMessage and M is not, throws ProtocolError
// carrying the peer's reason; any other type mismatch or parse failure -> ProtocolError.
template <typename M>
M from_frame(const Frame& f) {
  check_frame_type(f, type_of<M>());
  M msg;
  if (!msg.ParseFromString(f.payload)) throw_decode_failure(f.type);
  return msg;
}

Frame error_frame(ErrorCode code, const std::string& message);

// float32 <-> Tensor (little-endian; the build asserts a little-endian host).
void pack_tensor(const std::vector<float>& values, v1::Tensor* out);
void pack_tensor(const float* values, size_t n, v1::Tensor* out);
// Throws ProtocolError if the byte length disagrees with count or with `expected_count`
// (when non-zero).
std::vector<float> unpack_tensor(const v1::Tensor& t, uint64_t expected_count = 0);
// True when none of the n values is infinite or NaN. Branch-free over the bits (an exponent of
// all ones), so it vectorises: a site checks every global model it is sent with it.
bool all_finite(const float* values, size_t n);

// A site's input statistics (common/data/input_stats.h) to and from Ready.input_stats. From
// the wire they are a peer's claim: nullopt unless they hold together (grey + colour = images,
// min <= max sizes, one finite mean and one finite non-negative std per backbone channel, where
// the backbone takes `channels`).
v1::InputStats input_stats_to_wire(const common::InputStats& s);
// A site's validation metrics (common/metrics.h) over `images` images, to and from the wire.
// From the wire: nullopt unless they hold together (one entry per class of `classes`, every
// figure finite and in [0, 1] (an AUC may be NaN: undefined), supports adding up to images).
v1::SiteMetrics site_metrics_to_wire(const common::ClassificationMetrics& m, int64_t images);
struct SiteMetricsClaim {
  common::ClassificationMetrics metrics;  // confusion left empty: it does not travel
  int64_t images = 0;
};
std::optional<SiteMetricsClaim> site_metrics_from_wire(const v1::SiteMetrics& w, int64_t classes);
std::optional<common::InputStats> input_stats_from_wire(const v1::InputStats& w, int64_t channels);

}  // namespace fedtl::protocols

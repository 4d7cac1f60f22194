#include "common/transport/framing.h"

#include <limits>

#include "common/errors.h"

namespace fedtl::common {
namespace {

constexpr uint8_t kMagic[4] = {0x46, 0x44, 0x54, 0x4C};  // "FDTL"

void put_u16(std::string& out, uint16_t v) {
  out.push_back(static_cast<char>(v & 0xFF));
  out.push_back(static_cast<char>((v >> 8) & 0xFF));
}

void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

uint16_t get_u16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (static_cast<uint16_t>(p[1]) << 8));
}

uint32_t get_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

}  // namespace

const char* message_type_name(MessageType t) {
  switch (t) {
    case MessageType::kHello: return "Hello";
    case MessageType::kJobSpec: return "JobSpec";
    case MessageType::kBackboneChunk: return "BackboneChunk";
    case MessageType::kReady: return "Ready";
    case MessageType::kRoundStart: return "RoundStart";
    case MessageType::kUpdate: return "Update";
    case MessageType::kShutdown: return "Shutdown";
    case MessageType::kError: return "Error";
    case MessageType::kHeartbeat: return "Heartbeat";
    case MessageType::kSiteEvaluation: return "SiteEvaluation";
    case MessageType::kSecAggKeys: return "SecAggKeys";
    case MessageType::kSecAggKeyList: return "SecAggKeyList";
    case MessageType::kSecAggShares: return "SecAggShares";
    case MessageType::kSecAggShareList: return "SecAggShareList";
    case MessageType::kSecAggMasked: return "SecAggMasked";
    case MessageType::kSecAggUnmaskRequest: return "SecAggUnmaskRequest";
    case MessageType::kSecAggUnmaskShares: return "SecAggUnmaskShares";
    case MessageType::kSecAggAbort: return "SecAggAbort";
    case MessageType::kSecAggConsistency: return "SecAggConsistency";
    case MessageType::kSecAggConsistencyList: return "SecAggConsistencyList";
  }
  return "Unknown";
}

bool is_known_message_type(uint16_t t) {
  return (t >= static_cast<uint16_t>(MessageType::kHello) && t <= static_cast<uint16_t>(MessageType::kSiteEvaluation)) ||
         (t >= static_cast<uint16_t>(MessageType::kSecAggKeys) && t <= static_cast<uint16_t>(MessageType::kSecAggConsistencyList));
}

void encode_frame(const Frame& frame, std::string& out) {
  if (frame.payload.size() > std::numeric_limits<uint32_t>::max()) {
    throw ProtocolError(std::string("cannot send ") + message_type_name(frame.type) +
                        " frame: payload of " + std::to_string(frame.payload.size()) +
                        " bytes exceeds the 4 GiB - 1 frame limit");
  }
  out.reserve(out.size() + kFrameHeaderSize + frame.payload.size());
  out.append(reinterpret_cast<const char*>(kMagic), sizeof(kMagic));
  put_u16(out, kProtocolVersion);
  put_u16(out, static_cast<uint16_t>(frame.type));
  put_u32(out, static_cast<uint32_t>(frame.payload.size()));
  put_u32(out, 0);  // reserved flags
  out.append(frame.payload);
}

std::string encode_frame(const Frame& frame) {
  std::string out;
  encode_frame(frame, out);
  return out;
}

FrameHeader decode_header(const uint8_t* h, uint32_t max_frame_bytes) {
  if (h[0] != kMagic[0] || h[1] != kMagic[1] || h[2] != kMagic[2] || h[3] != kMagic[3]) {
    throw ProtocolError("bad frame magic: peer is not speaking the fedtl protocol");
  }
  FrameHeader header;
  header.version = get_u16(h + 4);
  if (header.version != kProtocolVersion) {
    throw ProtocolError("peer speaks fedtl protocol version " + std::to_string(header.version) +
                        ", this build speaks " + std::to_string(kProtocolVersion));
  }
  const uint16_t type = get_u16(h + 6);
  if (!is_known_message_type(type)) {
    throw ProtocolError("unknown fedtl message type " + std::to_string(type));
  }
  header.type = static_cast<MessageType>(type);
  header.length = get_u32(h + 8);
  const uint32_t reserved = get_u32(h + 12);
  if (reserved != 0) {
    throw ProtocolError("frame header reserved flags are non-zero (" + std::to_string(reserved) +
                        ")");
  }
  if (header.length > max_frame_bytes) {
    throw ProtocolError(std::string(message_type_name(header.type)) + " frame of " +
                        std::to_string(header.length) + " bytes exceeds the maximum of " +
                        std::to_string(max_frame_bytes) + " bytes");
  }
  return header;
}

void FrameDecoder::feed(const void* data, size_t n) {
  // Compact before growing: drop bytes of frames already handed out.
  if (pos_ > 0 && (pos_ == buf_.size() || pos_ >= buf_.size() / 2)) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  buf_.append(static_cast<const char*>(data), n);
  // Validate the header as soon as it is complete, before the payload is buffered.
  if (!header_ && pending_bytes() >= kFrameHeaderSize) {
    header_ = decode_header(reinterpret_cast<const uint8_t*>(buf_.data() + pos_), max_);
  }
}

std::optional<Frame> FrameDecoder::next() {
  if (!header_) {
    if (pending_bytes() < kFrameHeaderSize) return std::nullopt;
    header_ = decode_header(reinterpret_cast<const uint8_t*>(buf_.data() + pos_), max_);
  }
  if (pending_bytes() < kFrameHeaderSize + header_->length) return std::nullopt;
  Frame frame;
  frame.type = header_->type;
  frame.payload.assign(buf_, pos_ + kFrameHeaderSize, header_->length);
  pos_ += kFrameHeaderSize + header_->length;
  header_.reset();
  if (pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  } else if (pending_bytes() >= kFrameHeaderSize) {
    // The following frame's header is already here: reject it now if it is bad.
    header_ = decode_header(reinterpret_cast<const uint8_t*>(buf_.data() + pos_), max_);
  }
  return frame;
}

Frame decode_frame(const std::string& bytes, uint32_t max_frame_bytes) {
  if (bytes.size() < kFrameHeaderSize) {
    throw ProtocolError("truncated frame: " + std::to_string(bytes.size()) +
                        " bytes, shorter than the 16-byte header");
  }
  const FrameHeader header =
      decode_header(reinterpret_cast<const uint8_t*>(bytes.data()), max_frame_bytes);
  const size_t expected = kFrameHeaderSize + static_cast<size_t>(header.length);
  if (bytes.size() < expected) {
    throw ProtocolError(std::string("truncated ") + message_type_name(header.type) + " frame: " +
                        std::to_string(bytes.size()) + " of " + std::to_string(expected) +
                        " bytes");
  }
  if (bytes.size() > expected) {
    throw ProtocolError(std::string(message_type_name(header.type)) + " frame has " +
                        std::to_string(bytes.size() - expected) + " trailing bytes");
  }
  Frame frame;
  frame.type = header.type;
  frame.payload.assign(bytes, kFrameHeaderSize, header.length);
  return frame;
}

}  // namespace fedtl::common

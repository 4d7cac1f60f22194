#include "protocols/messages.h"

#include <cstring>

#include "common/errors.h"

namespace fedtl::protocols {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "fedtl packs float32 tensors by copying host bytes; a little-endian host is required");
static_assert(sizeof(float) == 4, "fedtl requires 32-bit IEEE-754 float");

void check_frame_type(const Frame& f, MessageType expected) {
  if (f.type == expected) return;
  if (f.type == MessageType::kError) {
    v1::ErrorMessage err;
    if (!err.ParseFromString(f.payload)) {
      throw PeerRefused(ErrorCode::kInternal, std::string("peer refused (unreadable Error message) while expecting ") +
                                                  message_type_name(expected));
    }
    throw PeerRefused(static_cast<ErrorCode>(err.code()), "peer refused: " + err.message());
  }
  throw ProtocolError(std::string("expected a ") + message_type_name(expected) +
                      " message, received " + message_type_name(f.type));
}

void throw_encode_failure(MessageType t) {
  throw ProtocolError(std::string("failed to serialize ") + message_type_name(t) + " message");
}

void throw_decode_failure(MessageType t) {
  throw ProtocolError(std::string("malformed ") + message_type_name(t) +
                      " message: payload does not parse");
}

Frame error_frame(ErrorCode code, const std::string& message) {
  v1::ErrorMessage err;
  err.set_code(static_cast<uint32_t>(code));
  err.set_message(message);
  return to_frame(err);
}

void pack_tensor(const std::vector<float>& values, v1::Tensor* out) {
  pack_tensor(values.data(), values.size(), out);
}

void pack_tensor(const float* values, size_t n, v1::Tensor* out) {
  // Host is little-endian (asserted above), so host bytes are the wire bytes.
  std::string* bytes = out->mutable_f32_le();
  bytes->resize(n * sizeof(float));
  if (n > 0) std::memcpy(bytes->data(), values, n * sizeof(float));
  out->set_count(n);
}

std::vector<float> unpack_tensor(const v1::Tensor& t, uint64_t expected_count) {
  const std::string& bytes = t.f32_le();
  if (bytes.size() % sizeof(float) != 0 || bytes.size() / sizeof(float) != t.count()) {
    throw ProtocolError("malformed tensor: " + std::to_string(bytes.size()) +
                        " bytes do not hold the declared " + std::to_string(t.count()) +
                        " float32 values");
  }
  if (expected_count != 0 && t.count() != expected_count) {
    throw ProtocolError("tensor has " + std::to_string(t.count()) + " values, expected " +
                        std::to_string(expected_count));
  }
  std::vector<float> values(t.count());
  if (!values.empty()) std::memcpy(values.data(), bytes.data(), bytes.size());
  return values;
}

}  // namespace fedtl::protocols

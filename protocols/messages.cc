#include "protocols/messages.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

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

bool all_finite(const float* values, size_t n) {
  // |x| as bits: infinite or NaN exactly when it is at least the bits of +infinity. A max over
  // integers, unlike an early-exit std::isfinite loop, is a reduction the compiler vectorises.
  uint32_t largest = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, values + i, sizeof bits);
    largest = std::max(largest, bits & 0x7fffffffu);
  }
  return largest < 0x7f800000u;
}

v1::InputStats input_stats_to_wire(const common::InputStats& s) {
  v1::InputStats w;
  w.set_images(static_cast<uint64_t>(s.images));
  w.set_grey(static_cast<uint64_t>(s.grey));
  w.set_colour(static_cast<uint64_t>(s.colour));
  w.set_min_height(static_cast<uint32_t>(s.min_height));
  w.set_max_height(static_cast<uint32_t>(s.max_height));
  w.set_min_width(static_cast<uint32_t>(s.min_width));
  w.set_max_width(static_cast<uint32_t>(s.max_width));
  for (double m : s.mean) w.add_mean(m);
  for (double d : s.std) w.add_std(d);
  return w;
}

std::optional<common::InputStats> input_stats_from_wire(const v1::InputStats& w, int64_t channels) {
  const uint64_t cap = uint64_t{1} << 40;  // counts beyond any site's data
  if (w.images() == 0 || w.images() > cap || w.grey() > w.images() || w.colour() > w.images() ||
      w.grey() + w.colour() != w.images())
    return std::nullopt;
  if (w.min_height() == 0 || w.min_width() == 0 || w.min_height() > w.max_height() || w.min_width() > w.max_width())
    return std::nullopt;
  if (w.mean_size() != channels || w.std_size() != channels) return std::nullopt;
  common::InputStats s;
  for (int i = 0; i < w.mean_size(); ++i) {
    if (!std::isfinite(w.mean(i)) || !std::isfinite(w.std(i)) || w.std(i) < 0) return std::nullopt;
    s.mean.push_back(w.mean(i));
    s.std.push_back(w.std(i));
  }
  s.images = static_cast<int64_t>(w.images());
  s.grey = static_cast<int64_t>(w.grey());
  s.colour = static_cast<int64_t>(w.colour());
  s.min_height = w.min_height();
  s.max_height = w.max_height();
  s.min_width = w.min_width();
  s.max_width = w.max_width();
  return s;
}

v1::SiteMetrics site_metrics_to_wire(const common::ClassificationMetrics& m, int64_t images) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  v1::SiteMetrics w;
  w.set_images(static_cast<uint64_t>(images));
  w.set_accuracy(m.accuracy);
  w.set_balanced_accuracy(m.balanced_accuracy);
  w.set_macro_f1(m.macro_f1);
  w.set_macro_auc(m.macro_auc.value_or(nan));
  for (const auto& c : m.per_class) {
    auto* f = w.add_per_class();
    f->set_precision(c.precision);
    f->set_recall(c.recall);
    f->set_specificity(c.specificity);
    f->set_f1(c.f1);
    f->set_auc(c.auc.value_or(nan));
    f->set_support(static_cast<uint64_t>(c.support));
  }
  return w;
}

std::optional<SiteMetricsClaim> site_metrics_from_wire(const v1::SiteMetrics& w, int64_t classes) {
  auto unit = [](double v) { return std::isfinite(v) && v >= 0 && v <= 1; };
  auto auc = [&](double v) -> std::optional<std::optional<double>> {
    if (std::isnan(v)) return std::optional<double>{};
    if (!unit(v)) return std::nullopt;
    return std::optional<double>(v);
  };
  if (w.images() == 0 || w.images() > (uint64_t{1} << 40) || w.per_class_size() != classes) return std::nullopt;
  if (!unit(w.accuracy()) || !unit(w.balanced_accuracy()) || !unit(w.macro_f1())) return std::nullopt;
  const auto macro = auc(w.macro_auc());
  if (!macro) return std::nullopt;
  SiteMetricsClaim c;
  c.images = static_cast<int64_t>(w.images());
  c.metrics.accuracy = w.accuracy();
  c.metrics.balanced_accuracy = w.balanced_accuracy();
  c.metrics.macro_f1 = w.macro_f1();
  c.metrics.macro_auc = *macro;
  uint64_t support = 0;
  for (const auto& f : w.per_class()) {
    const auto a = auc(f.auc());
    if (!a || !unit(f.precision()) || !unit(f.recall()) || !unit(f.specificity()) || !unit(f.f1()) ||
        f.support() > w.images())
      return std::nullopt;
    support += f.support();
    common::ClassMetrics m;
    m.precision = f.precision();
    m.recall = f.recall();
    m.specificity = f.specificity();
    m.f1 = f.f1();
    m.auc = *a;
    m.support = static_cast<int64_t>(f.support());
    c.metrics.per_class.push_back(m);
  }
  if (support != w.images()) return std::nullopt;
  return c;
}

}  // namespace fedtl::protocols

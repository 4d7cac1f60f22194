#include "common/checkpoint.h"

#include <spdlog/spdlog.h>

#include <cstring>
#include <filesystem>

#include "common/errors.h"
#include "common/files.h"
#include "common/sha256.h"

namespace fedtl::common {
namespace {

constexpr char kMagic[8] = {'F', 'D', 'T', 'L', 'C', 'K', 'P', 'T'};
constexpr uint32_t kVersion = 2;  // 2: the best model and early-stopping state
constexpr size_t kHeader = 8 + 4 + 8, kDigest = 32;

void put(std::string& out, const void* p, size_t n) { out.append(static_cast<const char*>(p), n); }
template <typename T>
void put_pod(std::string& out, T v) {
  put(out, &v, sizeof v);  // the build targets little-endian hosts only (see messages.cc)
}
void put_str(std::string& out, const std::string& s) {
  put_pod<uint64_t>(out, s.size());
  out += s;
}
void put_floats(std::string& out, const std::vector<float>& v) {
  put_pod<uint64_t>(out, v.size());
  put(out, v.data(), v.size() * sizeof(float));
}

// Bounds-checked reader over the payload.
class Reader {
 public:
  Reader(const std::string& data, const std::string& path) : d_(data), path_(path) {}
  template <typename T>
  T pod() {
    T v;
    need(sizeof v);
    std::memcpy(&v, d_.data() + pos_, sizeof v);
    pos_ += sizeof v;
    return v;
  }
  std::string str() {
    const uint64_t n = pod<uint64_t>();
    need(n);
    std::string s = d_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::vector<float> floats() {
    const uint64_t n = pod<uint64_t>();
    if (n > (d_.size() - pos_) / sizeof(float)) fail("float array longer than the file");
    std::vector<float> v(n);
    if (n) std::memcpy(v.data(), d_.data() + pos_, n * sizeof(float));  // (an empty vector's data() may be null)
    pos_ += n * sizeof(float);
    return v;
  }
  uint64_t count(uint64_t max) {
    const uint64_t n = pod<uint64_t>();
    if (n > max) fail("implausible element count " + std::to_string(n));
    return n;
  }
  bool done() const { return pos_ == d_.size(); }
  [[noreturn]] void fail(const std::string& why) const {
    throw DataError("checkpoint '" + path_ + "' is malformed: " + why);
  }

 private:
  void need(uint64_t n) const {
    if (n > d_.size() - pos_) fail("truncated field");
  }
  const std::string& d_;
  std::string path_;
  size_t pos_ = 0;
};

}  // namespace

void write_checkpoint(const std::string& path, const Checkpoint& c) {
  std::string payload;
  put_str(payload, c.job_fingerprint);
  put_pod<uint32_t>(payload, c.round);
  put_floats(payload, c.params);
  put_pod<uint64_t>(payload, c.strategy_state.size());
  for (const auto& s : c.strategy_state) put_floats(payload, s);
  put_str(payload, c.accountant_state);
  put_pod<double>(payload, c.clip_norm);
  put_pod<uint64_t>(payload, c.metrics_lines.size());
  for (const auto& l : c.metrics_lines) put_str(payload, l);
  put_floats(payload, c.best_params);
  put_pod<double>(payload, c.best_validation_loss);
  put_pod<uint32_t>(payload, c.best_round);
  put_pod<uint32_t>(payload, c.rounds_since_best);

  std::string file(kMagic, 8);
  put_pod<uint32_t>(file, kVersion);
  put_pod<uint64_t>(file, payload.size());
  file += payload;
  Sha256 h;
  h.update(payload.data(), payload.size());
  const std::string hex = h.hex_digest();
  for (size_t i = 0; i < kDigest; ++i) file.push_back(static_cast<char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16)));

  std::error_code ec;
  if (std::filesystem::exists(path, ec)) std::filesystem::rename(path, path + ".prev", ec);
  if (ec) throw IoError("cannot keep the previous checkpoint '" + path + "': " + ec.message());
  write_file_atomic(path, file);
}

Checkpoint read_checkpoint(const std::string& path) {
  if (!std::filesystem::exists(path)) throw DataError("checkpoint '" + path + "' does not exist");
  const std::string file = read_file(path);
  if (file.size() < kHeader + kDigest) throw DataError("checkpoint '" + path + "' is truncated");
  if (std::memcmp(file.data(), kMagic, 8) != 0) throw DataError("'" + path + "' is not a fedtl checkpoint");
  uint32_t version;
  uint64_t len;
  std::memcpy(&version, file.data() + 8, 4);
  std::memcpy(&len, file.data() + 12, 8);
  if (version != kVersion)
    throw DataError("checkpoint '" + path + "' has format version " + std::to_string(version) + "; this build reads " +
                    std::to_string(kVersion));
  if (len != file.size() - kHeader - kDigest)
    throw DataError("checkpoint '" + path + "' is truncated or padded (payload " + std::to_string(len) + " bytes, file " +
                    std::to_string(file.size()) + ")");
  const std::string payload = file.substr(kHeader, len);
  Sha256 h;
  h.update(payload.data(), payload.size());
  const std::string hex = h.hex_digest();
  std::string stored;
  static const char* digits = "0123456789abcdef";
  for (size_t i = 0; i < kDigest; ++i) {
    const auto b = static_cast<unsigned char>(file[kHeader + len + i]);
    stored.push_back(digits[b >> 4]);
    stored.push_back(digits[b & 15]);
  }
  if (stored != hex) throw DataError("checkpoint '" + path + "' fails its checksum (torn or corrupted write)");

  Reader r(payload, path);
  Checkpoint c;
  c.job_fingerprint = r.str();
  c.round = r.pod<uint32_t>();
  c.params = r.floats();
  const uint64_t ns = r.count(16);
  for (uint64_t i = 0; i < ns; ++i) c.strategy_state.push_back(r.floats());
  c.accountant_state = r.str();
  c.clip_norm = r.pod<double>();
  const uint64_t nl = r.count(10'000'000);
  for (uint64_t i = 0; i < nl; ++i) c.metrics_lines.push_back(r.str());
  c.best_params = r.floats();
  c.best_validation_loss = r.pod<double>();
  c.best_round = r.pod<uint32_t>();
  c.rounds_since_best = r.pod<uint32_t>();
  if (!r.done()) r.fail("trailing bytes");
  return c;
}

Checkpoint read_latest_checkpoint(const std::string& path) {
  try {
    return read_checkpoint(path);
  } catch (const DataError& newest) {
    const std::string prev = path + ".prev";
    if (!std::filesystem::exists(prev)) throw;
    spdlog::warn("{}; using the previous checkpoint {}", newest.what(), prev);
    return read_checkpoint(prev);
  }
}

}  // namespace fedtl::common

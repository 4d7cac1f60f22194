// Checkpoint reader (common/checkpoint.h): read_checkpoint and read_latest_checkpoint on files
// written from the input.
//
// Input: [1 byte: mode][bytes]. The file format ends in a SHA-256 of the payload, which random
// mutation never gets right, so:
//   mode bit 0 = 1: the bytes are a payload; the harness wraps them in a valid envelope
//                   (magic, version, length, checksum) so the payload parser is reached;
//   mode bit 0 = 0: the bytes are the whole file (envelope checks: truncation, magic,
//                   version, length, checksum).
//   mode bit 1 = 1: the file is also corrupted (last byte flipped) and a valid ".prev" holds
//                   the wrapped bytes, exercising read_latest_checkpoint's fallback.
// A checkpoint that reads back must survive write_checkpoint -> read_checkpoint unchanged.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>

#include "common/checkpoint.h"
#include "common/sha256.h"
#include "fuzz_util.h"

using namespace fedtl;

namespace {

std::string wrap(const std::string& payload) {
  std::string file("FDTLCKPT", 8);
  const uint32_t version = 1;
  const uint64_t len = payload.size();
  file.append(reinterpret_cast<const char*>(&version), 4);
  file.append(reinterpret_cast<const char*>(&len), 8);
  file += payload;
  common::Sha256 h;
  h.update(payload.data(), payload.size());
  const std::string hex = h.hex_digest();
  for (size_t i = 0; i < 32; ++i) file.push_back(static_cast<char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16)));
  return file;
}

bool same(const common::Checkpoint& a, const common::Checkpoint& b) {
  auto bits = [](const std::vector<float>& v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4); };
  if (a.job_fingerprint != b.job_fingerprint || a.round != b.round || bits(a.params) != bits(b.params) ||
      a.accountant_state != b.accountant_state || std::memcmp(&a.clip_norm, &b.clip_norm, 8) != 0 ||
      a.metrics_lines != b.metrics_lines || a.strategy_state.size() != b.strategy_state.size())
    return false;
  for (size_t i = 0; i < a.strategy_state.size(); ++i)
    if (bits(a.strategy_state[i]) != bits(b.strategy_state[i])) return false;
  return true;
}

void put(const std::filesystem::path& p, const std::string& s) {
  fuzz::write_bytes(p, reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::quiet_logs();
  fuzz::Input in(data, size);
  const uint8_t mode = in.byte();
  const std::string bytes = in.rest();
  const auto dir = fuzz::scratch_dir();
  const std::string path = (dir / "checkpoint.bin").string();
  std::error_code ec;
  std::filesystem::remove(path + ".prev", ec);

  std::string file = (mode & 1) ? wrap(bytes) : bytes;
  if (mode & 2) {
    put(path + ".prev", wrap(bytes));
    if (!file.empty()) file.back() = static_cast<char>(file.back() ^ 1);
  }
  put(path, file);

  fuzz::expect_errors_only([&] {
    const common::Checkpoint c = (mode & 2) ? common::read_latest_checkpoint(path) : common::read_checkpoint(path);
    const std::string again = (dir / "again.bin").string();
    std::filesystem::remove(again, ec);
    std::filesystem::remove(again + ".prev", ec);
    common::write_checkpoint(again, c);
    if (!same(c, common::read_checkpoint(again))) std::abort();
  });
  return 0;
}

// Shared helpers for the libFuzzer targets in tests/fuzz/ (see docs/fuzzing.md).
//
// Contract of every target: input from the network or a file may end a connection or a command
// with a fedtl::Error (ProtocolError, DataError, ConfigError, ...); that is the expected outcome
// of hostile input and is caught here. Anything else -- another exception type, a crash, an
// ASan/UBSan report, a leak, a hang -- escapes and is a finding.
#pragma once
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/errors.h"

namespace fedtl::fuzz {

// Runs `body`; fedtl::Error is the expected way to refuse bad input.
template <typename F>
void expect_errors_only(F&& body) {
  try {
    body();
  } catch (const fedtl::Error&) {
  }
}

// spdlog warnings on every refusal would dominate the run time; keep them off.
inline void quiet_logs() {
  static const bool once = [] {
    spdlog::set_level(spdlog::level::off);
    return true;
  }();
  (void)once;
}

// A per-process scratch directory (removed at exit) for the readers that take a path.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    const char* base = std::getenv("TMPDIR");
    std::filesystem::path d = std::filesystem::path(base && *base ? base : "/tmp") /
                              ("fedtl_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return d;
  }();
  return dir;
}

inline void write_bytes(const std::filesystem::path& p, const uint8_t* data, size_t n) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n));
}

// Reads the input front to back: small integers first, the rest as a byte string.
class Input {
 public:
  Input(const uint8_t* data, size_t n) : p_(data), n_(n) {}
  uint8_t byte() {
    if (n_ == 0) return 0;
    --n_;
    return *p_++;
  }
  uint16_t u16() { return static_cast<uint16_t>(byte() | (byte() << 8)); }
  uint32_t u32() { return static_cast<uint32_t>(u16()) | (static_cast<uint32_t>(u16()) << 16); }
  // Up to `max` bytes.
  std::string bytes(size_t max) {
    const size_t k = max < n_ ? max : n_;
    std::string s(reinterpret_cast<const char*>(p_), k);
    p_ += k;
    n_ -= k;
    return s;
  }
  std::string rest() { return bytes(n_); }
  size_t remaining() const { return n_; }

 private:
  const uint8_t* p_;
  size_t n_;
};

}  // namespace fedtl::fuzz

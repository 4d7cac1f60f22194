#include "common/torchscript_archive.h"

#include <zlib.h>

#include <cstring>

#include "common/errors.h"

namespace fedtl::common {
namespace {

[[noreturn]] void refuse(const std::string& why) { throw ModelError("backbone refused: " + why); }

uint64_t le(const std::string& s, size_t off, int n) {
  if (off + static_cast<size_t>(n) > s.size()) refuse("the archive is truncated (a zip record runs past its end)");
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(s[off + i])) << (8 * i);
  return v;
}

// Inflates a raw deflate stream, refusing more than `cap` bytes of output.
std::string inflate_capped(const char* data, size_t n, uint64_t cap, const std::string& name) {
  z_stream z{};
  if (inflateInit2(&z, -MAX_WBITS) != Z_OK) throw Error("zlib: inflateInit2 failed");
  std::string out;
  char buf[16384];
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data));
  z.avail_in = static_cast<uInt>(n);
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    z.next_out = reinterpret_cast<Bytef*>(buf);
    z.avail_out = sizeof buf;
    rc = inflate(&z, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      inflateEnd(&z);
      refuse("member '" + name + "' does not inflate (corrupt deflate data)");
    }
    out.append(buf, sizeof buf - z.avail_out);
    if (out.size() > cap) {
      inflateEnd(&z);
      refuse("member '" + name + "' inflates past its declared size");
    }
    if (rc == Z_OK && z.avail_in == 0 && z.avail_out != 0) {
      inflateEnd(&z);
      refuse("member '" + name + "' is truncated");
    }
  }
  inflateEnd(&z);
  return out;
}

}  // namespace

uint64_t check_torchscript_archive(const std::string& a, const ArchiveLimits& limits) {
  // End of central directory: the last 22+ bytes (a comment of up to 64 KiB may follow).
  constexpr uint32_t kEocd = 0x06054b50, kZip64Locator = 0x07064b50, kZip64Eocd = 0x06064b50;
  constexpr uint32_t kCentral = 0x02014b50, kLocal = 0x04034b50;
  if (a.size() < 22) refuse("not a TorchScript archive (too short for a zip file)");
  size_t eocd = std::string::npos;
  const size_t lowest = a.size() > 22 + 65535 ? a.size() - 22 - 65535 : 0;
  for (size_t p = a.size() - 22 + 1; p-- > lowest;) {
    if (le(a, p, 4) == kEocd) {
      eocd = p;
      break;
    }
  }
  if (eocd == std::string::npos) refuse("not a TorchScript archive (no zip directory)");
  uint64_t entries = le(a, eocd + 10, 2), cd_size = le(a, eocd + 12, 4), cd_off = le(a, eocd + 16, 4);
  if (eocd >= 20 && le(a, eocd - 20, 4) == kZip64Locator) {
    const uint64_t z64 = le(a, eocd - 20 + 8, 8);
    if (z64 + 56 > a.size() || le(a, z64, 4) != kZip64Eocd) refuse("the archive's zip64 directory is corrupt");
    entries = le(a, z64 + 32, 8);
    cd_size = le(a, z64 + 40, 8);
    cd_off = le(a, z64 + 48, 8);
  }
  if (entries > limits.max_members)
    refuse("the archive has " + std::to_string(entries) + " members, more than the " +
           std::to_string(limits.max_members) + " allowed");
  if (cd_off > a.size() || cd_size > a.size() - cd_off) refuse("the archive's zip directory points outside the file");

  uint64_t total = 0;
  size_t p = static_cast<size_t>(cd_off);
  for (uint64_t i = 0; i < entries; ++i) {
    if (le(a, p, 4) != kCentral) refuse("the archive's zip directory is corrupt");
    const uint64_t method = le(a, p + 10, 2);
    uint64_t csize = le(a, p + 20, 4), usize = le(a, p + 24, 4);
    const size_t name_len = le(a, p + 28, 2), extra_len = le(a, p + 30, 2), comment_len = le(a, p + 32, 2);
    uint64_t local = le(a, p + 42, 4);
    if (p + 46 + name_len > a.size()) refuse("the archive's zip directory is truncated");
    const std::string name = a.substr(p + 46, name_len);
    // zip64 sizes and offset live in the extra field when the 32-bit ones are saturated.
    for (size_t e = p + 46 + name_len, end = e + extra_len; e + 4 <= end;) {
      const uint64_t id = le(a, e, 2), len = le(a, e + 2, 2);
      if (id == 0x0001) {
        size_t q = e + 4;
        if (usize == 0xFFFFFFFF) usize = le(a, q, 8), q += 8;
        if (csize == 0xFFFFFFFF) csize = le(a, q, 8), q += 8;
        if (local == 0xFFFFFFFF) local = le(a, q, 8);
      }
      e += 4 + len;
    }
    p += 46 + name_len + extra_len + comment_len;
    if (method != 0 && method != 8)
      refuse("member '" + name + "' uses zip compression method " + std::to_string(method) + " (only stored and deflate)");
    if (method == 0 && csize != usize) refuse("stored member '" + name + "' declares two different sizes");
    if (usize > limits.max_total_bytes || total + usize > limits.max_total_bytes)
      refuse("its members unpack to more than " + std::to_string(limits.max_total_bytes) +
             " bytes (backbone.max_bytes): a zip bomb or an oversized model");
    total += usize;
    // Where the member's data starts: after its local header (whose extra field may differ).
    if (local + 30 > a.size() || le(a, local, 4) != kLocal) refuse("member '" + name + "' has no local header");
    const uint64_t data = local + 30 + le(a, local + 26, 2) + le(a, local + 28, 2);
    if (data > a.size() || csize > a.size() - data) refuse("member '" + name + "' points outside the file");
    // Module code: TorchScript runs a module's __setstate__ while loading, before any check.
    const bool code = name.find("/code/") != std::string::npos && name.size() > 3 &&
                      name.compare(name.size() - 3, 3, ".py") == 0;
    if (!code) continue;
    if (usize > limits.max_code_bytes) refuse("code member '" + name + "' is larger than any backbone needs");
    const std::string src = method == 0 ? a.substr(data, csize)
                                        : inflate_capped(a.data() + data, static_cast<size_t>(csize), usize, name);
    if (src.find("def __setstate__") != std::string::npos)
      refuse("'" + name + "' defines __setstate__, code that LibTorch would run while loading the file, before "
             "fedtl could check its operators");
  }
  return total;
}

}  // namespace fedtl::common

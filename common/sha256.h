// SHA-256 (OpenSSL EVP) for backbone verification and model digests.
#pragma once
#include <cstddef>
#include <string>

namespace fedtl::common {

// Lower-case hex SHA-256 of `data`.
std::string sha256_hex(const void* data, size_t n);
inline std::string sha256_hex(const std::string& data) { return sha256_hex(data.data(), data.size()); }

// Incremental hashing, for digests over many buffers.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t n);
  std::string hex_digest();  // finalises; call once

 private:
  void* ctx_;  // EVP_MD_CTX*
};

}  // namespace fedtl::common

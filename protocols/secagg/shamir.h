// Shamir t-of-n secret sharing over the prime field GF(p), p = 2^61 - 1 (a Mersenne prime;
// products in unsigned __int128). A byte secret is cut into 7-byte chunks (56 bits < p), each
// shared with its own random polynomial of degree t-1 (coefficients from RAND_bytes, uniform
// in [0, p) by rejection); a 32-byte secret gives 5 field elements per share.
// Holder i gets the evaluation at x = i + 1 (x = 0 is the secret). Any t shares recover the
// secret; t-1 shares are independent of it (information-theoretic).
// Thread-safe (no shared state).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace fedtl::protocols::secagg {

inline constexpr uint64_t kFieldPrime = (uint64_t{1} << 61) - 1;
inline constexpr size_t kChunkBytes = 7;

struct Share {
  uint32_t x = 0;               // evaluation point (holder index + 1), never 0
  std::vector<uint64_t> y;      // one field element per 7-byte chunk of the secret
};

// Number of field elements for a secret of `secret_bytes` bytes.
constexpr size_t share_elements(size_t secret_bytes) { return (secret_bytes + kChunkBytes - 1) / kChunkBytes; }

// Splits `secret` into one share per x in `xs` (distinct, non-zero), any `t` of which
// recover it. Throws ConfigError if t == 0, t > xs.size(), or xs has zeros/duplicates.
std::vector<Share> shamir_split(const uint8_t* secret, size_t len, uint32_t t, const std::vector<uint32_t>& xs);

// Recovers a `len`-byte secret from the first `t` of `shares` (Lagrange interpolation at 0).
// Throws ProtocolError if fewer than t shares, duplicate or zero x, a share of the wrong size,
// or an element out of range (which includes most inconsistent share sets).
std::string shamir_combine(const std::vector<Share>& shares, uint32_t t, size_t len);

// True when every share lies on the polynomial of degree t-1 through the first t of them
// (chunk by chunk). With more than t shares this tells whether a dealer's shares are
// consistent; with exactly t it is always true. Throws like shamir_combine for malformed input.
bool shamir_consistent(const std::vector<Share>& shares, uint32_t t);

// Wire form of a share's y values: little-endian uint64 each (x travels as the holder id).
std::string encode_share(const Share& s);
// Throws ProtocolError if the size is not `elements` * 8 or an element is >= p.
Share decode_share(const std::string& bytes, uint32_t x, size_t elements);

}  // namespace fedtl::protocols::secagg

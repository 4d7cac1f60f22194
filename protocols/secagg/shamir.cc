#include "protocols/secagg/shamir.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "common/errors.h"
#include "protocols/secagg/crypto.h"

namespace fedtl::protocols::secagg {
namespace {

using u128 = unsigned __int128;

uint64_t add_mod(uint64_t a, uint64_t b) {
  uint64_t s = a + b;  // < 2^62, no overflow
  return s >= kFieldPrime ? s - kFieldPrime : s;
}
uint64_t sub_mod(uint64_t a, uint64_t b) { return a >= b ? a - b : a + kFieldPrime - b; }
uint64_t mul_mod(uint64_t a, uint64_t b) {
  const u128 p = static_cast<u128>(a) * b;
  uint64_t lo = static_cast<uint64_t>(p) & kFieldPrime;
  uint64_t hi = static_cast<uint64_t>(p >> 61);
  uint64_t s = lo + hi;
  return s >= kFieldPrime ? s - kFieldPrime : s;
}
uint64_t pow_mod(uint64_t a, uint64_t e) {
  uint64_t r = 1;
  while (e) {
    if (e & 1) r = mul_mod(r, a);
    a = mul_mod(a, a);
    e >>= 1;
  }
  return r;
}
uint64_t inv_mod(uint64_t a) { return pow_mod(a, kFieldPrime - 2); }

uint64_t random_element() {
  for (;;) {
    uint64_t v;
    random_bytes(&v, sizeof(v));
    v &= kFieldPrime;  // 61 bits; reject the single value p itself
    if (v < kFieldPrime) return v;
  }
}

}  // namespace

std::vector<Share> shamir_split(const uint8_t* secret, size_t len, uint32_t t, const std::vector<uint32_t>& xs) {
  if (t == 0 || t > xs.size()) {
    throw ConfigError("secure aggregation: Shamir threshold " + std::to_string(t) + " must be between 1 and the " +
                      std::to_string(xs.size()) + " share holders");
  }
  std::set<uint32_t> seen;
  for (uint32_t x : xs) {
    if (x == 0 || !seen.insert(x).second) throw ConfigError("secure aggregation: Shamir points must be distinct and non-zero");
  }
  const size_t k = share_elements(len);
  std::vector<Share> out(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    out[i].x = xs[i];
    out[i].y.assign(k, 0);
  }
  std::vector<uint64_t> coeff(t);
  for (size_t c = 0; c < k; ++c) {
    uint64_t chunk = 0;
    const size_t n = std::min(kChunkBytes, len - c * kChunkBytes);
    for (size_t b = 0; b < n; ++b) chunk |= static_cast<uint64_t>(secret[c * kChunkBytes + b]) << (8 * b);
    coeff[0] = chunk;
    for (uint32_t j = 1; j < t; ++j) coeff[j] = random_element();
    for (size_t i = 0; i < xs.size(); ++i) {
      uint64_t acc = 0;  // Horner
      for (uint32_t j = t; j-- > 0;) acc = add_mod(mul_mod(acc, xs[i]), coeff[j]);
      out[i].y[c] = acc;
    }
  }
  OPENSSL_cleanse(coeff.data(), coeff.size() * sizeof(uint64_t));
  return out;
}

std::string shamir_combine(const std::vector<Share>& shares, uint32_t t, size_t len) {
  if (t == 0 || shares.size() < t) {
    throw ProtocolError("secure aggregation: " + std::to_string(shares.size()) + " shares cannot recover a secret "
                        "that needs " + std::to_string(t));
  }
  const size_t k = share_elements(len);
  std::set<uint32_t> seen;
  for (uint32_t i = 0; i < t; ++i) {
    if (shares[i].x == 0 || !seen.insert(shares[i].x).second) {
      throw ProtocolError("secure aggregation: duplicate or zero Shamir share point");
    }
    if (shares[i].y.size() != k) throw ProtocolError("secure aggregation: Shamir share of the wrong size");
  }
  // Lagrange basis at 0: l_i = Π_{j≠i} x_j / (x_j - x_i).
  std::vector<uint64_t> basis(t);
  for (uint32_t i = 0; i < t; ++i) {
    uint64_t num = 1, den = 1;
    for (uint32_t j = 0; j < t; ++j) {
      if (j == i) continue;
      num = mul_mod(num, shares[j].x);
      den = mul_mod(den, sub_mod(shares[j].x, shares[i].x));
    }
    basis[i] = mul_mod(num, inv_mod(den));
  }
  std::string out(len, '\0');
  for (size_t c = 0; c < k; ++c) {
    uint64_t acc = 0;
    for (uint32_t i = 0; i < t; ++i) acc = add_mod(acc, mul_mod(basis[i], shares[i].y[c]));
    const size_t n = std::min(kChunkBytes, len - c * kChunkBytes);
    if (acc >> (8 * n)) {
      throw ProtocolError("secure aggregation: Shamir shares are inconsistent (recovered chunk out of range)");
    }
    for (size_t b = 0; b < n; ++b) out[c * kChunkBytes + b] = static_cast<char>((acc >> (8 * b)) & 0xFF);
  }
  return out;
}

bool shamir_consistent(const std::vector<Share>& shares, uint32_t t) {
  if (t == 0 || shares.size() < t) {
    throw ProtocolError("secure aggregation: " + std::to_string(shares.size()) + " shares cannot define a polynomial "
                        "of degree " + std::to_string(t) + " - 1");
  }
  const size_t k = shares[0].y.size();
  std::set<uint32_t> seen;
  for (const auto& s : shares) {
    if (s.x == 0 || !seen.insert(s.x).second) throw ProtocolError("secure aggregation: duplicate or zero Shamir share point");
    if (s.y.size() != k) throw ProtocolError("secure aggregation: Shamir shares of different sizes");
  }
  // Evaluate the interpolant of the first t shares at each further x (Lagrange form).
  for (size_t e = t; e < shares.size(); ++e) {
    const uint64_t x = shares[e].x;
    std::vector<uint64_t> basis(t);
    for (uint32_t i = 0; i < t; ++i) {
      uint64_t num = 1, den = 1;
      for (uint32_t j = 0; j < t; ++j) {
        if (j == i) continue;
        num = mul_mod(num, sub_mod(x, shares[j].x));
        den = mul_mod(den, sub_mod(shares[i].x, shares[j].x));
      }
      basis[i] = mul_mod(num, inv_mod(den));
    }
    for (size_t c = 0; c < k; ++c) {
      uint64_t acc = 0;
      for (uint32_t i = 0; i < t; ++i) acc = add_mod(acc, mul_mod(basis[i], shares[i].y[c]));
      if (acc != shares[e].y[c]) return false;
    }
  }
  return true;
}

std::string encode_share(const Share& s) {
  std::string out(s.y.size() * 8, '\0');
  for (size_t i = 0; i < s.y.size(); ++i) {
    for (int b = 0; b < 8; ++b) out[i * 8 + b] = static_cast<char>((s.y[i] >> (8 * b)) & 0xFF);
  }
  return out;
}

Share decode_share(const std::string& bytes, uint32_t x, size_t elements) {
  if (bytes.size() != elements * 8) {
    throw ProtocolError("secure aggregation: a Shamir share has " + std::to_string(bytes.size()) + " bytes, expected " +
                        std::to_string(elements * 8));
  }
  Share s;
  s.x = x;
  s.y.resize(elements);
  for (size_t i = 0; i < elements; ++i) {
    uint64_t v = 0;
    for (int b = 0; b < 8; ++b) v |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i * 8 + b])) << (8 * b);
    if (v >= kFieldPrime) throw ProtocolError("secure aggregation: a Shamir share element is out of the field");
    s.y[i] = v;
  }
  return s;
}

}  // namespace fedtl::protocols::secagg

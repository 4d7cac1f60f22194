// Secure aggregation primitives: crypto wrappers, Shamir sharing, quantisation, neighbour graph.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include "common/errors.h"
#include "protocols/secagg/crypto.h"
#include "protocols/secagg/graph.h"
#include "protocols/secagg/quantize.h"
#include "protocols/secagg/shamir.h"

namespace fedtl::protocols::secagg {
namespace {

Bytes32 fixed_bytes(uint8_t v) {
  Bytes32 b{};
  b.fill(v);
  return b;
}

TEST(SecAggCrypto, X25519AgreementIsSymmetric) {
  const auto a = X25519KeyPair::generate();
  const auto b = X25519KeyPair::generate();
  EXPECT_NE(a.public_key, b.public_key);
  EXPECT_EQ(x25519_agree(a.private_key, b.public_key).bytes(), x25519_agree(b.private_key, a.public_key).bytes());
  EXPECT_EQ(x25519_public_key(a.private_key), a.public_key);
}

TEST(SecAggCrypto, LowOrderPeerKeyIsRefused) {
  const auto a = X25519KeyPair::generate();
  EXPECT_THROW(x25519_agree(a.private_key, Bytes32{}), ProtocolError);
}

TEST(SecAggCrypto, HkdfMatchesRfc5869Case1) {
  // RFC 5869 test case 1.
  std::vector<uint8_t> ikm(22, 0x0b);
  std::string salt, info;
  for (int i = 0; i <= 0x0c; ++i) salt.push_back(static_cast<char>(i));
  for (int i = 0xf0; i <= 0xf9; ++i) info.push_back(static_cast<char>(i));
  uint8_t okm[42];
  hkdf_sha256(ikm.data(), ikm.size(), salt, info, okm, sizeof(okm));
  const uint8_t expect[8] = {0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a};
  EXPECT_TRUE(std::equal(expect, expect + 8, okm));
  EXPECT_EQ(okm[41], 0x65);
}

TEST(SecAggCrypto, AeadRoundTripAndTamperDetection) {
  const Secret32 key = Secret32::random();
  const std::string pt = "shares of a secret";
  Sealed s = aead_seal(key, "aad", pt);
  EXPECT_EQ(s.nonce.size(), kNonceBytes);
  EXPECT_EQ(s.ciphertext.size(), pt.size() + kTagBytes);
  EXPECT_EQ(aead_open(key, "aad", s.nonce, s.ciphertext).value(), pt);
  EXPECT_FALSE(aead_open(key, "aaD", s.nonce, s.ciphertext).has_value());  // other associated data
  std::string bad = s.ciphertext;
  bad[3] ^= 1;
  EXPECT_FALSE(aead_open(key, "aad", s.nonce, bad).has_value());
  bad = s.ciphertext;
  bad.back() ^= 0x80;  // tag
  EXPECT_FALSE(aead_open(key, "aad", s.nonce, bad).has_value());
  EXPECT_FALSE(aead_open(Secret32::random(), "aad", s.nonce, s.ciphertext).has_value());
  EXPECT_FALSE(aead_open(key, "aad", s.nonce, "short").has_value());
}

TEST(SecAggCrypto, MaskStreamIsDeterministicPerSeedAndChunkInvariant) {
  const Secret32 seed(fixed_bytes(7));
  std::vector<uint32_t> a(10000), b(10000);
  MaskStream(seed).next(a.data(), a.size());
  MaskStream s2(seed);
  s2.next(b.data(), 3);  // other chunking, same stream
  s2.next(b.data() + 3, 5000);
  s2.next(b.data() + 5003, 4997);
  EXPECT_EQ(a, b);
  std::vector<uint32_t> c(10000);
  MaskStream(Secret32(fixed_bytes(8))).next(c.data(), c.size());
  EXPECT_NE(a, c);
}

TEST(SecAggCrypto, ApplyMasksAddsAndSubtractsModulo2to32) {
  const size_t m = 3 * kMaskChunkWords + 17;
  std::vector<uint32_t> v(m);
  std::iota(v.begin(), v.end(), 0u);
  const auto orig = v;
  const Secret32 s1 = Secret32::random(), s2 = Secret32::random();
  apply_masks(v.data(), m, {{s1, +1}, {s2, -1}});
  EXPECT_NE(v, orig);
  std::vector<uint32_t> k1(m), k2(m);
  MaskStream(s1).next(k1.data(), m);
  MaskStream(s2).next(k2.data(), m);
  for (size_t i = 0; i < m; ++i) ASSERT_EQ(v[i], orig[i] + k1[i] - k2[i]);
  apply_masks(v.data(), m, {{s2, +1}, {s1, -1}});
  EXPECT_EQ(v, orig);
}

TEST(SecAggShamir, AnyTSharesRecoverTheSecret) {
  Bytes32 secret;
  random_bytes(secret.data(), secret.size());
  std::vector<uint32_t> xs;
  for (uint32_t i = 1; i <= 10; ++i) xs.push_back(i * 3);
  const auto shares = shamir_split(secret.data(), secret.size(), 4, xs);
  std::mt19937 rng(1);
  for (int trial = 0; trial < 20; ++trial) {
    auto sub = shares;
    std::shuffle(sub.begin(), sub.end(), rng);
    sub.resize(4 + trial % 3);
    const std::string got = shamir_combine(sub, 4, secret.size());
    ASSERT_EQ(got, std::string(reinterpret_cast<const char*>(secret.data()), secret.size()));
  }
  // Wire form round trip.
  const Share back = decode_share(encode_share(shares[2]), shares[2].x, share_elements(32));
  EXPECT_EQ(back.y, shares[2].y);
}

TEST(SecAggShamir, FewerThanTSharesDoNotRecover) {
  Bytes32 secret;
  random_bytes(secret.data(), secret.size());
  const auto shares = shamir_split(secret.data(), secret.size(), 5, {1, 2, 3, 4, 5, 6});
  std::vector<Share> four(shares.begin(), shares.begin() + 4);
  EXPECT_THROW(shamir_combine(four, 5, 32), ProtocolError);
  // Interpolating 4 shares as if t were 4 gives something else (with overwhelming probability
  // an out-of-range chunk, caught as inconsistent).
  std::string wrong;
  try {
    wrong = shamir_combine(four, 4, 32);
  } catch (const ProtocolError&) {
  }
  EXPECT_NE(wrong, std::string(reinterpret_cast<const char*>(secret.data()), 32));
}

TEST(SecAggShamir, ConsistencyCheckFindsAShareOffThePolynomial) {
  std::vector<uint8_t> secret(32);
  for (size_t i = 0; i < secret.size(); ++i) secret[i] = static_cast<uint8_t>(i * 7 + 3);
  auto shares = shamir_split(secret.data(), secret.size(), 3, {1, 2, 3, 4, 5});
  EXPECT_TRUE(shamir_consistent(shares, 3));
  EXPECT_TRUE(shamir_consistent({shares[0], shares[2], shares[4]}, 3));
  shares[3].y[2] = (shares[3].y[2] + 1) % kFieldPrime;
  EXPECT_FALSE(shamir_consistent(shares, 3));
  // Exactly t shares always define a polynomial: nothing to detect.
  EXPECT_TRUE(shamir_consistent({shares[1], shares[3], shares[4]}, 3));
}

TEST(SecAggCrypto, KeyUsabilityRefusesLowOrderAndNonCanonicalKeys) {
  const auto kp = X25519KeyPair::generate();
  EXPECT_TRUE(x25519_key_usable(kp.public_key));
  Bytes32 zero{};
  EXPECT_FALSE(x25519_key_usable(zero));
  Bytes32 one{};
  one[0] = 1;
  EXPECT_FALSE(x25519_key_usable(one));
  Bytes32 high = kp.public_key;
  high[31] |= 0x80;
  EXPECT_FALSE(x25519_key_usable(high));
}

TEST(SecAggShamir, RefusesBadParameters) {
  uint8_t s[32] = {0};
  EXPECT_THROW(shamir_split(s, 32, 0, {1, 2}), ConfigError);
  EXPECT_THROW(shamir_split(s, 32, 3, {1, 2}), ConfigError);
  EXPECT_THROW(shamir_split(s, 32, 2, {1, 1}), ConfigError);
  EXPECT_THROW(shamir_split(s, 32, 2, {0, 1}), ConfigError);
  EXPECT_THROW(decode_share(std::string(39, '\0'), 1, 5), ProtocolError);
  EXPECT_THROW(decode_share(std::string(40, '\xff'), 1, 5), ProtocolError);
}

TEST(SecAggQuantise, ScaleRespectsTheOverflowBound) {
  for (uint32_t n : {1u, 2u, 10u, 100u, 1000u, 100000u}) {
    for (double b : {0.01, 1.0, 3.5, 100.0}) {
      const double s = choose_scale(n, b);
      EXPECT_LE(n * (b * s + 1), 2147483647.0) << n << " " << b;
      EXPECT_GT(n * (b * 2 * s + 1), 2147483647.0) << "not the largest power of two";
      EXPECT_EQ(std::exp2(std::round(std::log2(s))), s);
    }
  }
  EXPECT_THROW(choose_scale(0, 1.0), ConfigError);
  EXPECT_THROW(choose_scale(10, 0.0), ConfigError);
  EXPECT_THROW(choose_scale(10, NAN), ConfigError);
  EXPECT_THROW(choose_scale(1000000, 1e4), ConfigError);  // n·B > 2^31: cannot fit
}

TEST(SecAggQuantise, WorstCaseSumDoesNotOverflow) {
  const uint32_t n = 50;
  for (Rounding r : {Rounding::kStochastic, Rounding::kDeterministic}) {
    QuantSpec q = make_quant_spec(n, 2.0, r, false);
    std::vector<float> hi(8, 1e9f), lo(8, -1e9f);  // clipped to ±B
    std::vector<uint32_t> sh(8, 0), sl(8, 0);
    for (uint32_t i = 0; i < n; ++i) {
      auto a = quantise(hi, q, derive_rounding_seed(1, 1, i));
      auto b = quantise(lo, q, derive_rounding_seed(2, 1, i));
      for (size_t j = 0; j < 8; ++j) {
        sh[j] += a[j];
        sl[j] += b[j];
      }
    }
    const auto dh = dequantise_sum(sh, q), dl = dequantise_sum(sl, q);
    for (size_t j = 0; j < 8; ++j) {
      EXPECT_NEAR(dh[j], 2.0 * n, sum_error_bound(q, n));
      EXPECT_NEAR(dl[j], -2.0 * n, sum_error_bound(q, n));
    }
  }
}

TEST(SecAggQuantise, SumWithinStatedBoundAndStochasticIsUnbiased) {
  const uint32_t n = 20;
  const size_t m = 5000;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  for (Rounding r : {Rounding::kStochastic, Rounding::kDeterministic}) {
    const QuantSpec q = make_quant_spec(n, 1.0, r, false);
    std::vector<double> exact(m, 0.0);
    std::vector<uint32_t> sum(m, 0);
    for (uint32_t i = 0; i < n; ++i) {
      std::vector<float> x(m);
      for (auto& v : x) v = U(rng);
      for (size_t j = 0; j < m; ++j) exact[j] += x[j];
      const auto qx = quantise(x, q, derive_rounding_seed(9, 1, i));
      for (size_t j = 0; j < m; ++j) sum[j] += qx[j];
    }
    const auto d = dequantise_sum(sum, q);
    for (size_t j = 0; j < m; ++j) ASSERT_LE(std::fabs(d[j] - exact[j]), sum_error_bound(q, n));
  }
  // Stochastic rounding of a value between two grid points is unbiased.
  QuantSpec coarse{1.0, 4.0, Rounding::kStochastic};
  std::vector<float> x(200000, 0.3f);  // 0.3·4 = 1.2 -> 1 or 2
  const auto qx = quantise(x, coarse, derive_rounding_seed(5, 1, 0));
  double mean = 0;
  for (uint32_t v : qx) mean += static_cast<int32_t>(v);
  mean /= qx.size();
  EXPECT_NEAR(mean, 1.2, 0.01);
  // Deterministic rounding is reproducible and seed-free.
  QuantSpec det{1.0, 4.0, Rounding::kDeterministic};
  EXPECT_EQ(quantise(x, det, derive_rounding_seed(1, 1, 1)), quantise(x, det, derive_rounding_seed(2, 2, 2)));
  EXPECT_EQ(static_cast<int32_t>(quantise(x, det, Secret32())[0]), 1);
}

TEST(SecAggQuantise, RefusesNonFiniteValues) {
  const QuantSpec q = make_quant_spec(4, 1.0, Rounding::kDeterministic, false);
  EXPECT_THROW(quantise(std::vector<float>{0.f, NAN}, q, Secret32()), ProtocolError);
  EXPECT_THROW(quantise(std::vector<float>{INFINITY}, q, Secret32()), ProtocolError);
}

TEST(SecAggGraph, CompleteUpToTheConfiguredSize) {
  const Bytes32 seed = fixed_bytes(1);
  NeighbourGraph g(64, seed);
  EXPECT_TRUE(g.complete());
  EXPECT_EQ(g.degree(), 63u);
  EXPECT_EQ(neighbourhood_threshold(40, 64, g), 40u);
  NeighbourGraph s(65, seed);
  EXPECT_FALSE(s.complete());
  EXPECT_EQ(s.degree(), 14u);  // 2·ceil(log2 65)
}

TEST(SecAggGraph, SparseGraphIsSymmetricRegularConnectedAndSeedDetermined) {
  const uint32_t n = 500;
  NeighbourGraph g(n, fixed_bytes(2), 64);
  ASSERT_FALSE(g.complete());
  EXPECT_EQ(g.degree(), 18u);  // 2·ceil(log2 500) = 2·9
  for (uint32_t u = 0; u < n; ++u) {
    const auto& a = g.neighbours(u);
    ASSERT_EQ(a.size(), g.degree());
    ASSERT_TRUE(std::is_sorted(a.begin(), a.end()));
    ASSERT_EQ(std::set<uint32_t>(a.begin(), a.end()).size(), a.size());
    for (uint32_t v : a) {
      ASSERT_NE(u, v);
      ASSERT_TRUE(g.adjacent(v, u));
    }
  }
  std::vector<uint32_t> all(n);
  std::iota(all.begin(), all.end(), 0u);
  EXPECT_TRUE(g.induced_connected(all));
  NeighbourGraph same(n, fixed_bytes(2), 64), other(n, fixed_bytes(3), 64);
  EXPECT_EQ(same.neighbours(17), g.neighbours(17));
  bool differs = false;
  for (uint32_t u = 0; u < n && !differs; ++u) differs = other.neighbours(u) != g.neighbours(u);
  EXPECT_TRUE(differs);
  // Per-neighbourhood threshold: same fraction of a neighbourhood as t of n.
  EXPECT_EQ(neighbourhood_threshold(250, n, g), 10u);  // ceil(250·19/500)
  // A site cut off from the others makes the induced graph disconnected.
  std::vector<uint32_t> cut;
  for (uint32_t u = 0; u < n; ++u)
    if (u == 0 || !g.adjacent(0, u)) cut.push_back(u);
  EXPECT_FALSE(g.induced_connected(cut));
}

}  // namespace
}  // namespace fedtl::protocols::secagg

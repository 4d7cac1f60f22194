// Secure aggregation rounds: ClientSession x n + ServerSession, with dropouts at every step,
// refusals (tampering, replay, reveal-both) and the wire frames.
#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <unistd.h>
#include <functional>
#include <cmath>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <set>

#include "common/errors.h"
#include "common/transport/pki.h"
#include "common/transport/signing.h"
#include "protocols/secagg/quantize.h"
#include "protocols/secagg/session.h"
#include "protocols/secagg/wire.h"
#include "tests/captured_log.h"

namespace fedtl::protocols::secagg {
namespace {

RoundConfig make_cfg(uint32_t n, uint32_t t, uint64_t m, uint32_t round = 1, uint32_t complete_max = 64) {
  RoundConfig c;
  c.round = round;
  c.num_sites = n;
  c.threshold = t;
  c.vector_length = m;
  c.round_seed = derive_round_seed(42, round);
  c.complete_graph_max = complete_max;
  return c;
}

std::vector<std::vector<uint32_t>> random_inputs(uint32_t n, uint64_t m, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<uint32_t>> x(n, std::vector<uint32_t>(m));
  for (auto& v : x)
    for (auto& e : v) e = rng();
  return x;
}

std::vector<uint32_t> plain_sum(const std::vector<std::vector<uint32_t>>& x, const std::vector<uint32_t>& sites) {
  std::vector<uint32_t> s(x.at(0).size(), 0);
  for (uint32_t u : sites)
    for (size_t i = 0; i < s.size(); ++i) s[i] += x[u][i];
  return s;
}

// Sites that vanish before each step (1: keys, 2: shares, 3: masked input, 4: unmask shares).
struct Drops {
  std::set<uint32_t> before[5];
  bool drops(uint32_t u, int step) const {
    for (int s = 1; s <= step; ++s)
      if (before[s].count(u)) return true;
    return false;
  }
};

// One round over an in-memory "transport". Returns the server's output, or nullopt when the
// round was aborted (RoundAborted from any party).
struct RoundRun {
  std::optional<std::vector<uint32_t>> sum;
  std::vector<uint32_t> survivors;
  std::string abort_reason;
};

RoundRun run_round(const RoundConfig& cfg, const std::vector<std::vector<uint32_t>>& x, const Drops& d) {
  const uint32_t n = cfg.num_sites;
  std::vector<std::unique_ptr<ClientSession>> c;
  for (uint32_t u = 0; u < n; ++u) c.push_back(std::make_unique<ClientSession>(cfg, u));
  ServerSession server(cfg);
  RoundRun out;
  try {
    for (uint32_t u = 0; u < n; ++u)
      if (!d.drops(u, 1)) server.add_keys(c[u]->advertise_keys());
    const auto list = server.close_keys();
    for (uint32_t u = 0; u < n; ++u)
      if (!d.drops(u, 2)) server.add_shares(c[u]->share_keys(list));
    server.close_shares();
    for (uint32_t u = 0; u < n; ++u)
      if (!d.drops(u, 3)) server.add_masked(c[u]->mask_input(server.shares_for(u), x[u]));
    const auto req = server.close_masked();
    out.survivors.assign(req.survivors().begin(), req.survivors().end());
    for (uint32_t u : out.survivors)
      if (!d.drops(u, 4)) server.add_unmask_shares(c[u]->unmask(req));
    out.sum = server.finish();
  } catch (const RoundAborted& e) {
    out.abort_reason = e.what();
  }
  return out;
}

std::vector<uint32_t> all_but(uint32_t n, const std::set<uint32_t>& gone) {
  std::vector<uint32_t> v;
  for (uint32_t u = 0; u < n; ++u)
    if (!gone.count(u)) v.push_back(u);
  return v;
}

TEST(SecAggRound, UnmaskedSumEqualsPlaintextSum) {
  const auto cfg = make_cfg(10, 6, 10000);
  const auto x = random_inputs(10, cfg.vector_length, 1);
  const auto r = run_round(cfg, x, {});
  ASSERT_TRUE(r.sum) << r.abort_reason;
  EXPECT_EQ(*r.sum, plain_sum(x, all_but(10, {})));
}

TEST(SecAggRound, FloatSumWithinQuantisationBound) {
  const uint32_t n = 8;
  const size_t m = 3000;
  const auto cfg = make_cfg(n, 5, m);
  const QuantSpec q = make_quant_spec(n, 0.5, Rounding::kStochastic, false);
  std::mt19937 rng(11);
  std::normal_distribution<float> N(0.f, 0.1f);
  std::vector<std::vector<float>> xf(n, std::vector<float>(m));
  std::vector<std::vector<uint32_t>> xq(n);
  std::vector<double> exact(m, 0.0);
  for (uint32_t u = 0; u < n; ++u) {
    for (auto& v : xf[u]) v = std::max(-0.5f, std::min(0.5f, N(rng)));
    for (size_t i = 0; i < m; ++i) exact[i] += xf[u][i];
    xq[u] = quantise(xf[u], q, derive_rounding_seed(7, 1, u));
  }
  const auto r = run_round(cfg, xq, {});
  ASSERT_TRUE(r.sum);
  const auto d = dequantise_sum(*r.sum, q);
  for (size_t i = 0; i < m; ++i) ASSERT_LE(std::fabs(d[i] - exact[i]), sum_error_bound(q, n));
}

TEST(SecAggRound, DropoutsAfterMaskingUpToNMinusT) {
  const uint32_t n = 10, t = 6;
  const auto cfg = make_cfg(n, t, 5000);
  const auto x = random_inputs(n, cfg.vector_length, 2);
  for (uint32_t k = 1; k <= n - t; ++k) {
    Drops d;
    for (uint32_t i = 0; i < k; ++i) d.before[3].insert((3 * i + k) % n);  // vanish after step 2
    const auto r = run_round(cfg, x, d);
    ASSERT_TRUE(r.sum) << k << " dropped: " << r.abort_reason;
    EXPECT_EQ(*r.sum, plain_sum(x, all_but(n, d.before[3]))) << k << " dropped";
    EXPECT_EQ(r.survivors, all_but(n, d.before[3]));
  }
  // Sites that sent their masked input and then vanish before unmasking stay in the sum:
  // their self-mask seeds are rebuilt from the survivors' shares.
  for (uint32_t k = 1; k <= n - t; ++k) {
    Drops d;
    for (uint32_t i = 0; i < k; ++i) d.before[4].insert((7 * i + k) % n);
    const auto r = run_round(cfg, x, d);
    ASSERT_TRUE(r.sum) << k << " dropped before unmasking: " << r.abort_reason;
    EXPECT_EQ(*r.sum, plain_sum(x, all_but(n, {})));
  }
}

TEST(SecAggRound, DropoutsBetweenEveryStep) {
  const uint32_t n = 12, t = 6;
  const auto cfg = make_cfg(n, t, 4097);
  const auto x = random_inputs(n, cfg.vector_length, 3);
  Drops d;
  d.before[1] = {0};      // never advertised keys
  d.before[2] = {5};      // advertised, no shares
  d.before[3] = {7, 11};  // shared, never sent a masked input
  d.before[4] = {2, 9};   // sent a masked input, then vanished before unmasking
  const auto r = run_round(cfg, x, d);
  ASSERT_TRUE(r.sum) << r.abort_reason;
  // The inputs of 2 and 9 are in the sum (their masks are removed by the others' shares).
  EXPECT_EQ(*r.sum, plain_sum(x, all_but(n, {0, 5, 7, 11})));
}

TEST(SecAggRound, BelowThresholdAbortsWithoutOutput) {
  const uint32_t n = 10, t = 6;
  const auto cfg = make_cfg(n, t, 100);
  const auto x = random_inputs(n, cfg.vector_length, 4);
  {
    Drops d;
    d.before[3] = {0, 1, 2, 3, 4};  // 5 survivors < t
    const auto r = run_round(cfg, x, d);
    EXPECT_FALSE(r.sum);
    EXPECT_NE(r.abort_reason.find("abandoned"), std::string::npos) << r.abort_reason;
    EXPECT_NE(r.abort_reason.find("t = 6"), std::string::npos) << r.abort_reason;
  }
  {
    Drops d;
    d.before[4] = {0, 1, 2, 3, 4};  // masked inputs in, but only 5 answer the unmask step
    const auto r = run_round(cfg, x, d);
    EXPECT_FALSE(r.sum);
    EXPECT_NE(r.abort_reason.find("answered the unmask step"), std::string::npos) << r.abort_reason;
  }
  {
    Drops d;
    d.before[1] = {0, 1, 2, 3, 4, 5};
    EXPECT_FALSE(run_round(cfg, x, d).sum);
  }
}

TEST(SecAggRound, AbortedRoundReleasesNoSumAndNextRoundGoesOn) {
  const uint32_t n = 6, t = 4;
  auto x = random_inputs(n, 64, 5);
  Drops d;
  d.before[3] = {0, 1, 2};
  EXPECT_FALSE(run_round(make_cfg(n, t, 64, 1), x, d).sum);
  const auto r = run_round(make_cfg(n, t, 64, 2), x, {});
  ASSERT_TRUE(r.sum);
  EXPECT_EQ(*r.sum, plain_sum(x, all_but(n, {})));
}

// Pearson chi-square statistic of observed bucket counts against a uniform expectation.
double chi_square(const std::vector<uint64_t>& counts) {
  const double total = std::accumulate(counts.begin(), counts.end(), 0.0);
  const double e = total / counts.size();
  double chi = 0;
  for (uint64_t c : counts) chi += (c - e) * (c - e) / e;
  return chi;
}

TEST(SecAggRound, MaskedUpdateLooksUniformAndDiffersFromPlaintext) {
  const uint32_t n = 5;
  const uint64_t m = 1 << 16;
  const auto cfg = make_cfg(n, 3, m);
  // A very non-uniform plaintext: small quantised values (mostly 0x0000xxxx / 0xFFFFxxxx).
  const QuantSpec q = make_quant_spec(n, 1.0, Rounding::kDeterministic, false);
  std::vector<float> f(m);
  for (size_t i = 0; i < m; ++i) f[i] = 1e-4f * static_cast<float>(i % 7) - 3e-4f;
  std::vector<std::vector<uint32_t>> x(n, quantise(f, q, Secret32()));
  std::vector<std::unique_ptr<ClientSession>> c;
  ServerSession server(cfg);
  for (uint32_t u = 0; u < n; ++u) {
    c.push_back(std::make_unique<ClientSession>(cfg, u));
    server.add_keys(c[u]->advertise_keys());
  }
  const auto list = server.close_keys();
  for (uint32_t u = 0; u < n; ++u) server.add_shares(c[u]->share_keys(list));
  server.close_shares();
  const v1::SecAggMasked y = c[0]->mask_input(server.shares_for(0), x[0]);
  ASSERT_EQ(y.u32_le().size(), m * 4);
  std::vector<uint32_t> yw(m);
  std::memcpy(yw.data(), y.u32_le().data(), m * 4);
  // Differs from the plaintext nearly everywhere.
  size_t equal = 0;
  for (size_t i = 0; i < m; ++i) equal += yw[i] == x[0][i];
  EXPECT_LE(equal, 2u);
  // Byte frequencies (256 buckets, 262144 bytes) and top-8-bit buckets of each word:
  // chi-square with 255 degrees of freedom; 400 is far beyond the 1e-6 quantile (~375).
  std::vector<uint64_t> bytes(256, 0), top(256, 0), plain_top(256, 0);
  for (size_t i = 0; i < m; ++i) {
    for (int b = 0; b < 4; ++b) ++bytes[(yw[i] >> (8 * b)) & 0xFF];
    ++top[yw[i] >> 24];
    ++plain_top[x[0][i] >> 24];
  }
  EXPECT_LT(chi_square(bytes), 400.0);
  EXPECT_LT(chi_square(top), 400.0);
  EXPECT_GT(chi_square(plain_top), 1e5);  // the plaintext is nowhere near uniform
}

TEST(SecAggRound, WeightedMeanThroughWeightCoordinate) {
  const uint32_t n = 6;
  const size_t m = 1000;
  const double clip = 0.5;
  const QuantSpec q = make_quant_spec(n, clip, Rounding::kStochastic, true);
  std::mt19937 rng(21);
  std::uniform_real_distribution<float> U(-0.4f, 0.4f);
  const std::vector<uint64_t> samples = {120, 40, 300, 75, 10, 255};
  const double max_samples = 1000;  // public bound on samples per site
  std::vector<std::vector<float>> delta(n, std::vector<float>(m));
  std::vector<std::vector<uint32_t>> x(n);
  for (uint32_t u = 0; u < n; ++u) {
    for (auto& v : delta[u]) v = U(rng);
    x[u] = encode_weighted(delta[u], samples[u] / max_samples, clip, q, derive_rounding_seed(3, 1, u));
  }
  const auto cfg = make_cfg(n, 4, m + 1);
  Drops d;
  d.before[3] = {4};  // a site drops after sharing: the mean is over the others
  const auto r = run_round(cfg, x, d);
  ASSERT_TRUE(r.sum) << r.abort_reason;
  const auto res = decode_weighted_mean(*r.sum, q);
  double wsum = 0;
  for (uint32_t u : r.survivors) wsum += samples[u];
  EXPECT_NEAR(res.total_weight, wsum / max_samples, n / q.scale);
  for (size_t i = 0; i < m; ++i) {
    double e = 0;
    for (uint32_t u : r.survivors) e += samples[u] * static_cast<double>(delta[u][i]);
    e /= wsum;
    ASSERT_NEAR(res.mean[i], e, 1e-5) << i;
  }
  EXPECT_THROW(encode_weighted(delta[0], 1.5, clip, q, Secret32()), ConfigError);
}

TEST(SecAggRound, LargeFederationUsesSparseGraphAndUnmasks) {
  const uint32_t n = 150, t = 75;
  const auto cfg = make_cfg(n, t, 2000);
  ServerSession probe(cfg);
  ASSERT_FALSE(probe.graph().complete());
  EXPECT_EQ(probe.graph().degree(), 16u);  // 2·ceil(log2 150)
  EXPECT_EQ(probe.neighbourhood_threshold(), 9u);  // ceil(75·17/150)
  const auto x = random_inputs(n, cfg.vector_length, 6);
  Drops d;
  for (uint32_t u = 0; u < n; u += 10) d.before[3].insert(u);      // 10% after sharing
  for (uint32_t u = 5; u < n; u += 50) d.before[4].insert(u);      // a few before unmasking
  const auto r = run_round(cfg, x, d);
  ASSERT_TRUE(r.sum) << r.abort_reason;
  EXPECT_EQ(*r.sum, plain_sum(x, all_but(n, d.before[3])));
}

TEST(SecAggRound, SparseGraphAbortsWhenANeighbourhoodIsWipedOut) {
  const uint32_t n = 100, t = 50;
  const auto cfg = make_cfg(n, t, 16);
  ServerSession probe(cfg);
  const auto x = random_inputs(n, cfg.vector_length, 8);
  Drops d;
  // Every neighbour of site 0 drops after sharing: site 0 would be alone (its input alone
  // would be unmasked), and its self-mask seed lacks holders. The round must be abandoned.
  for (uint32_t v : probe.graph().neighbours(0)) d.before[3].insert(v);
  const auto r = run_round(cfg, x, d);
  EXPECT_FALSE(r.sum);
  EXPECT_NE(r.abort_reason.find("abandoned"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Refusals

struct Federation {
  RoundConfig cfg;
  std::vector<std::unique_ptr<ClientSession>> c;
  std::unique_ptr<ServerSession> server;
  v1::SecAggKeyList keys;
  explicit Federation(RoundConfig cfg_) : cfg(cfg_), server(std::make_unique<ServerSession>(cfg_)) {
    for (uint32_t u = 0; u < cfg.num_sites; ++u) {
      c.push_back(std::make_unique<ClientSession>(cfg, u));
      server->add_keys(c[u]->advertise_keys());
    }
    keys = server->close_keys();
  }
  void share_all() {
    for (uint32_t u = 0; u < cfg.num_sites; ++u) server->add_shares(c[u]->share_keys(keys));
    server->close_shares();
  }
};

// Completes a Federation's round from step 3 with inputs x[u] = u + 1 everywhere, letting the
// caller alter the share lists before masking and the answers before unmasking. Returns the
// sum, or nullopt when the round was abandoned.
std::optional<std::vector<uint32_t>> finish_round(
    Federation& s, const std::function<void(uint32_t, v1::SecAggShareList&)>& alter_list = {},
    const std::function<void(uint32_t, v1::SecAggUnmaskShares&)>& alter_answer = {},
    const std::set<uint32_t>& drop_before_masking = {}) {
  const uint32_t n = s.cfg.num_sites;
  try {
    for (uint32_t u = 0; u < n; ++u) {
      if (drop_before_masking.count(u)) continue;
      auto list = s.server->shares_for(u);
      if (alter_list) alter_list(u, list);
      s.server->add_masked(s.c[u]->mask_input(list, std::vector<uint32_t>(s.cfg.vector_length, u + 1)));
    }
    const auto req = s.server->close_masked();
    for (uint32_t u : req.survivors()) {
      auto ans = s.c[u]->unmask(req);
      if (alter_answer) alter_answer(u, ans);
      try {
        s.server->add_unmask_shares(ans);
      } catch (const ProtocolError&) {
        // the coordinator drops that site; the round goes on with the others
      }
    }
    return s.server->finish();
  } catch (const RoundAborted&) {
    return std::nullopt;
  }
}

std::vector<uint32_t> sum_of_ids(uint32_t n, uint64_t m, const std::set<uint32_t>& without = {}) {
  uint32_t total = 0;
  for (uint32_t u = 0; u < n; ++u)
    if (!without.count(u)) total += u + 1;
  return std::vector<uint32_t>(m, total);
}

TEST(SecAggRefusal, TamperedShareIsRejectedAndBlamesItsSenderNotItsRecipient) {
  test_support::CapturedLog log(64);
  Federation s(make_cfg(5, 3, 8));
  s.share_all();
  uint32_t sender = 0;
  const auto sum = finish_round(s, [&](uint32_t u, v1::SecAggShareList& list) {
    if (u != 2) return;
    ASSERT_GT(list.shares_size(), 1);
    sender = list.shares(1).from();
    list.mutable_shares(1)->mutable_ciphertext()->at(5) ^= 0x01;
  });
  // The recipient stayed, the sender counts as a dropped holder for it, and the sum is whole.
  EXPECT_EQ(s.c[2]->rejected(), std::set<uint32_t>{sender});
  EXPECT_TRUE(log.warned("failed authentication"));
  ASSERT_TRUE(sum);
  EXPECT_EQ(*sum, sum_of_ids(5, 8));
  ASSERT_EQ(s.server->blamed().count(sender), 1u);
  EXPECT_EQ(s.server->blamed().at(sender), std::set<uint32_t>{2});
  EXPECT_TRUE(s.server->cheaters().empty()) << "one recipient's word is not enough to drop a site";
}

TEST(SecAggRefusal, ShareFailingItsCommitmentIsRejected) {
  Federation s(make_cfg(5, 3, 8));
  s.share_all();
  const auto sum = finish_round(s, [&](uint32_t u, v1::SecAggShareList& list) {
    if (u == 3) list.mutable_shares(0)->mutable_self_seed_commitment()->at(0) ^= 0x01;
  });
  EXPECT_EQ(s.c[3]->rejected().size(), 1u);
  ASSERT_TRUE(sum);
  EXPECT_EQ(*sum, sum_of_ids(5, 8));
}

TEST(SecAggRefusal, SenderRejectedBySeveralRecipientsIsACheater) {
  test_support::CapturedLog log(64);
  {
    // A survivor: its masked input is in the sum, so the round is abandoned and it is named.
    Federation s(make_cfg(5, 3, 8));
    s.share_all();
    const auto sum = finish_round(s, [&](uint32_t u, v1::SecAggShareList& list) {
      if (u != 2 && u != 3) return;
      for (auto& e : *list.mutable_shares())
        if (e.from() == 0) e.mutable_ciphertext()->at(0) ^= 0x55;
    });
    EXPECT_FALSE(sum);
    EXPECT_EQ(s.server->cheaters(), std::set<uint32_t>{0});
    EXPECT_TRUE(log.warned("sites 2, 3 rejected"));
  }
  {
    // A dropout: it stays out, its mask key comes from the holders that accepted its shares
    // (sites 1, 4 and 5: three, the threshold).
    Federation s(make_cfg(6, 3, 8));
    s.share_all();
    const auto sum = finish_round(
        s,
        [&](uint32_t u, v1::SecAggShareList& list) {
          if (u != 2 && u != 3) return;
          for (auto& e : *list.mutable_shares())
            if (e.from() == 0) e.mutable_ciphertext()->at(0) ^= 0x55;
        },
        {}, /*drop_before_masking=*/{0});
    ASSERT_TRUE(sum);
    EXPECT_EQ(*sum, sum_of_ids(6, 8, {0}));
    EXPECT_EQ(s.server->cheaters(), std::set<uint32_t>{0});
  }
}

TEST(SecAggRefusal, ForgedRevealedShareNamesTheRevealerAndTheRoundGoesOn) {
  test_support::CapturedLog log(64);
  Federation s(make_cfg(5, 3, 8));
  s.share_all();
  // Site 1 reveals structurally valid random field elements instead of its share of b_4.
  const auto sum = finish_round(s, {}, [&](uint32_t u, v1::SecAggUnmaskShares& ans) {
    if (u != 1) return;
    for (auto& r : *ans.mutable_shares()) {
      if (r.owner() != 4) continue;
      std::string forged(40, '\0');
      for (size_t i = 0; i < forged.size(); i += 8) forged[i] = static_cast<char>(17 + i);
      r.set_share(forged);
    }
  });
  EXPECT_EQ(s.server->cheaters(), std::set<uint32_t>{1});
  EXPECT_TRUE(log.warned("site 1 is the cheater"));
  // The four honest answers still hold three shares of every secret: the sum is exact.
  ASSERT_TRUE(sum);
  EXPECT_EQ(*sum, sum_of_ids(5, 8));
}

TEST(SecAggRefusal, MalformedKeysGetTheirSenderRefusedAtStepOne) {
  test_support::CapturedLog log(64);
  const RoundConfig cfg = make_cfg(5, 3, 8);
  std::vector<std::unique_ptr<ClientSession>> c;
  for (uint32_t u = 0; u < 5; ++u) c.push_back(std::make_unique<ClientSession>(cfg, u));
  ServerSession server(cfg);
  std::vector<v1::SecAggKeys> k;
  for (uint32_t u = 0; u < 5; ++u) k.push_back(c[u]->advertise_keys());
  server.add_keys(k[0]);
  server.add_keys(k[1]);
  auto hex_key = [](const char* hex) {
    std::string b;
    for (size_t i = 0; i < 64; i += 2) b.push_back(static_cast<char>(std::stoi(std::string(hex + i, 2), nullptr, 16)));
    return b;
  };
  const std::vector<std::string> bad = {
      std::string(32, '\0'),                                                         // all zero
      hex_key("0100000000000000000000000000000000000000000000000000000000000000"),  // u = 1 (order 4)
      hex_key("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  // order 8
      hex_key("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),  // order 8
      hex_key("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  // p - 1
      hex_key("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  // p + 1: non-canonical
  };
  for (const auto& key : bad) {
    auto m = k[2];
    m.set_mask_pk(key);
    EXPECT_THROW(server.add_keys(m), ProtocolError);
  }
  EXPECT_TRUE(log.warned("malformed or low-order"));
  auto copy = k[2];
  copy.set_mask_pk(k[0].mask_pk());  // another site's key
  EXPECT_THROW(server.add_keys(copy), ProtocolError);
  EXPECT_TRUE(log.warned("advertised a key of site 0"));
  auto same = k[2];
  same.set_cipher_pk(same.mask_pk());
  EXPECT_THROW(server.add_keys(same), ProtocolError);
  // Site 2 is left out; the honest sites 0, 1, 3, 4 complete the round.
  server.add_keys(k[3]);
  server.add_keys(k[4]);
  const auto list = server.close_keys();
  const std::vector<uint32_t> in = {0, 1, 3, 4};
  for (uint32_t u : in) server.add_shares(c[u]->share_keys(list));
  server.close_shares();
  for (uint32_t u : in) server.add_masked(c[u]->mask_input(server.shares_for(u), std::vector<uint32_t>(8, u + 1)));
  const auto req = server.close_masked();
  for (uint32_t u : in) server.add_unmask_shares(c[u]->unmask(req));
  EXPECT_EQ(server.finish(), std::vector<uint32_t>(8, 1 + 2 + 4 + 5));
  // A key list that still carries a low-order key (a deviating coordinator) is refused by sites.
  ClientSession extra(cfg, 0);
  extra.advertise_keys();
  auto poisoned = list;
  poisoned.mutable_keys(1)->set_cipher_pk(std::string(32, '\0'));
  EXPECT_THROW(extra.share_keys(poisoned), ProtocolError);
}

TEST(SecAggRefusal, ShareRedirectedToAnotherSiteIsRejected) {
  Federation s(make_cfg(5, 3, 8));
  s.share_all();
  // The server (or anyone) relabels a share addressed to site 1 as addressed to site 2.
  auto to1 = s.server->shares_for(1);
  auto list = s.server->shares_for(2);
  for (auto& e : *list.mutable_shares()) {
    for (const auto& f : to1.shares())
      if (f.from() == e.from()) {
        e.set_nonce(f.nonce());
        e.set_ciphertext(f.ciphertext());
      }
  }
  s.c[2]->mask_input(list, std::vector<uint32_t>(8, 0));
  // Every relabelled share (all but the one site 1 itself sent) is rejected.
  EXPECT_EQ(s.c[2]->rejected().size(), static_cast<size_t>(list.shares_size() - 1));
}

TEST(SecAggRefusal, MessagesReplayedFromAnEarlierRoundAreRefused) {
  test_support::CapturedLog log(64);
  const uint32_t n = 4;
  Federation r1(make_cfg(n, 3, 8, /*round=*/1));
  r1.share_all();
  const auto old_list = r1.server->shares_for(3);

  Federation r2(make_cfg(n, 3, 8, /*round=*/2));
  // An old SecAggKeys / key list replayed into round 2.
  v1::SecAggKeys old_keys = r1.keys.keys(0);
  EXPECT_THROW(r2.server->add_keys(old_keys), ProtocolError);
  EXPECT_TRUE(log.warned("replayed from earlier round 1"));
  EXPECT_THROW(r2.c[0]->share_keys(r1.keys), ProtocolError);
  r2.share_all();
  // An old share list with its round number rewritten: AES-GCM binds the round -> every share
  // in it is rejected (its senders count as dropped holders for site 3).
  auto forged = old_list;
  forged.set_round(2);
  r2.c[3]->mask_input(forged, std::vector<uint32_t>(8, 0));
  EXPECT_EQ(r2.c[3]->rejected().size(), static_cast<size_t>(forged.shares_size()));
  EXPECT_TRUE(log.warned("failed authentication"));
  // A masked input from round 1 into round 2.
  auto y1 = r1.c[0]->mask_input(r1.server->shares_for(0), std::vector<uint32_t>(8, 0));
  EXPECT_THROW(r2.server->add_masked(y1), ProtocolError);
}

TEST(SecAggRefusal, DuplicateAndOutOfStepMessagesAreRefused) {
  Federation s(make_cfg(4, 3, 8));
  v1::SecAggKeys k = s.keys.keys(1);
  EXPECT_THROW(s.server->add_keys(k), ProtocolError);  // step 1 closed
  auto sh = s.c[0]->share_keys(s.keys);
  s.server->add_shares(sh);
  EXPECT_THROW(s.server->add_shares(sh), ProtocolError);  // second from the same site
  EXPECT_THROW(s.c[0]->share_keys(s.keys), ProtocolError);  // client: step already done
}

TEST(SecAggRefusal, RevealingBothSecretsOfOneSiteIsRefused) {
  test_support::CapturedLog log(64);
  Federation s(make_cfg(5, 3, 8));
  s.share_all();
  for (uint32_t u = 0; u < 5; ++u) s.server->add_masked(s.c[u]->mask_input(s.server->shares_for(u), std::vector<uint32_t>(8, u)));
  v1::SecAggUnmaskRequest bad;
  bad.set_round(1);
  for (uint32_t u = 0; u < 5; ++u) bad.add_survivors(u);
  bad.add_dropped(3);  // 3 both survived and dropped: b_3 and s_3 would both be revealed
  try {
    s.c[1]->unmask(bad);
    FAIL() << "reveal-both request accepted";
  } catch (const ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("both"), std::string::npos);
  }
  EXPECT_TRUE(log.warned("reveal both"));
  // A second request (e.g. with the lists swapped) is refused too: one answer per round.
  const auto good = s.server->close_masked();
  s.c[2]->unmask(good);
  auto swapped = good;
  swapped.clear_survivors();
  swapped.clear_dropped();
  for (uint32_t u : {0u, 1u, 2u}) swapped.add_survivors(u);
  for (uint32_t u : {3u, 4u}) swapped.add_dropped(u);
  EXPECT_THROW(s.c[2]->unmask(swapped), ProtocolError);
}

TEST(SecAggRefusal, ServerRefusesSharesNotAskedFor) {
  Federation s(make_cfg(5, 3, 8));
  s.share_all();
  for (uint32_t u = 0; u < 4; ++u) s.server->add_masked(s.c[u]->mask_input(s.server->shares_for(u), std::vector<uint32_t>(8, u)));
  const auto req = s.server->close_masked();  // 4 dropped
  auto ans = s.c[0]->unmask(req);
  auto* extra = ans.add_shares();  // a mask-key share of survivor 1: not asked for
  extra->set_owner(1);
  extra->set_kind(v1::SECAGG_SHARE_MASK_KEY);
  extra->set_share(std::string(40, '\0'));
  EXPECT_THROW(s.server->add_unmask_shares(ans), ProtocolError);
}

// ---------------------------------------------------------------------------------------------
// Signed rounds (active security): keys and survivor sets signed with the sites' kit keys.

// A federation PKI in a temp dir: sites site-0..site-(n-1) and a coordinator.
struct Kits {
  std::filesystem::path dir;
  std::vector<std::unique_ptr<common::IdentitySigner>> sites;
  std::unique_ptr<common::IdentitySigner> coordinator;
  std::unique_ptr<common::SiteVerifier> verifier;
  std::vector<std::string> names;
  explicit Kits(uint32_t n) {
    dir = std::filesystem::temp_directory_path() / ("fedtl_secagg_kits_" + std::to_string(::getpid()) + "_" +
                                                    std::to_string(n));
    std::filesystem::remove_all(dir);
    common::pki_init(dir.string(), "test-federation");
    auto kit = [&](const std::string& name, const std::string& role) {
      const auto k = common::load_kit(common::pki_issue(dir.string(), name, role, "127.0.0.1:1"));
      return std::make_unique<common::IdentitySigner>(k.cert, k.key);
    };
    coordinator = kit("coord", "coordinator");
    for (uint32_t u = 0; u < n; ++u) {
      names.push_back("site-" + std::to_string(u));
      sites.push_back(kit(names.back(), "worker"));
    }
    verifier = std::make_unique<common::SiteVerifier>((dir / "ca.crt").string());
  }
  ~Kits() { std::filesystem::remove_all(dir); }
};

RoundConfig signed_cfg(const Kits& k, uint32_t n, uint32_t t) {
  RoundConfig c = make_cfg(n, t, 8);
  c.signed_keys = true;
  c.site_names = k.names;
  return c;
}

TEST(SecAggSigned, SignedRoundWithConsistencyStepUnmasksTheSum) {
  Kits k(4);
  const RoundConfig cfg = signed_cfg(k, 4, 3);
  std::vector<std::unique_ptr<ClientSession>> c;
  for (uint32_t u = 0; u < 4; ++u)
    c.push_back(std::make_unique<ClientSession>(cfg, u, k.sites[u].get(), k.verifier.get()));
  ServerSession server(cfg, k.verifier.get());
  for (auto& cs : c) server.add_keys(cs->advertise_keys());
  const auto keys = server.close_keys();
  for (auto& cs : c) server.add_shares(cs->share_keys(keys));
  server.close_shares();
  for (uint32_t u = 0; u < 4; ++u) server.add_masked(c[u]->mask_input(server.shares_for(u), std::vector<uint32_t>(8, u + 1)));
  const auto req = server.close_masked();
  EXPECT_THROW(c[0]->unmask(req), ProtocolError) << "a signed round must not skip the consistency step";
  for (uint32_t u = 1; u < 4; ++u) server.add_consistency(c[u]->consistency(req));
  const auto sigs = server.close_consistency();
  for (uint32_t u = 1; u < 4; ++u) server.add_unmask_shares(c[u]->unmask(sigs));
  EXPECT_EQ(server.finish(), std::vector<uint32_t>(8, 1 + 2 + 3 + 4));
  // A site needs its certificate key and the CA to take part.
  EXPECT_THROW(ClientSession(cfg, 0), ConfigError);
}

TEST(SecAggSigned, SubstitutedKeysAreRefusedBySitesAndTheServer) {
  Kits k(3);
  const RoundConfig cfg = signed_cfg(k, 3, 2);
  std::vector<std::unique_ptr<ClientSession>> c;
  for (uint32_t u = 0; u < 3; ++u)
    c.push_back(std::make_unique<ClientSession>(cfg, u, k.sites[u].get(), k.verifier.get()));
  ServerSession server(cfg, k.verifier.get());
  std::vector<v1::SecAggKeys> adv;
  for (auto& cs : c) adv.push_back(cs->advertise_keys());
  // The server refuses unsigned keys and keys signed by someone else.
  auto unsigned_keys = adv[1];
  unsigned_keys.clear_signature();
  EXPECT_THROW(server.add_keys(unsigned_keys), ProtocolError);
  for (auto& a : adv) server.add_keys(a);
  const auto honest = server.close_keys();

  // A deviating coordinator swaps site 1's mask key for its own: the signature no longer holds.
  const auto mallory = X25519KeyPair::generate();
  auto swapped = honest;
  swapped.mutable_keys(1)->set_mask_pk(std::string(reinterpret_cast<const char*>(mallory.public_key.data()), 32));
  try {
    c[0]->share_keys(swapped);
    FAIL() << "substituted key accepted";
  } catch (const ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("not signed by it"), std::string::npos) << e.what();
  }
  // ... and re-signing with its own (coordinator) certificate does not help, nor does another
  // site's certificate in slot 1.
  auto resign = [&](const common::IdentitySigner& who) {
    auto list = swapped;
    auto* key = list.mutable_keys(1);
    key->set_certificate(who.certificate_pem());
    key->set_signature(who.sign(key->cipher_pk()));  // any signature: the role/name check comes first
    return list;
  };
  for (const common::IdentitySigner* who : {k.coordinator.get(), k.sites[2].get()}) {
    ClientSession fresh(cfg, 0, k.sites[0].get(), k.verifier.get());
    auto keys = resign(*who);
    // keep site 0's own entry genuine for the fresh session
    *keys.mutable_keys(0) = fresh.advertise_keys();
    try {
      fresh.share_keys(keys);
      FAIL() << "key signed by " << who->name() << " accepted";
    } catch (const ProtocolError& e) {
      const std::string what = e.what();
      EXPECT_TRUE(what.find("not a site certificate") != std::string::npos ||
                  what.find("made with the certificate of 'site-2'") != std::string::npos)
          << what;
    }
  }
}

TEST(SecAggSigned, CoordinatorTellingSitesDifferentSurvivorSetsIsCaughtBeforeAnyReveal) {
  Kits k(4);
  const RoundConfig cfg = signed_cfg(k, 4, 2);
  std::vector<std::unique_ptr<ClientSession>> c;
  for (uint32_t u = 0; u < 4; ++u)
    c.push_back(std::make_unique<ClientSession>(cfg, u, k.sites[u].get(), k.verifier.get()));
  ServerSession server(cfg);  // the deviating coordinator checks nothing
  for (auto& cs : c) server.add_keys(cs->advertise_keys());
  const auto keys = server.close_keys();
  for (auto& cs : c) server.add_shares(cs->share_keys(keys));
  server.close_shares();
  for (uint32_t u = 0; u < 4; ++u) server.add_masked(c[u]->mask_input(server.shares_for(u), std::vector<uint32_t>(8, u)));
  const auto truth = server.close_masked();
  // Sites 0 and 1 are told that site 3 dropped (so they would reveal its mask key), sites 2
  // and 3 that everyone survived (so they reveal b_3): together, site 3's input in the clear.
  v1::SecAggUnmaskRequest lie;
  lie.set_round(1);
  for (uint32_t u : {0u, 1u, 2u}) lie.add_survivors(u);
  lie.add_dropped(3);
  v1::SecAggConsistencyList sigs;
  sigs.set_round(1);
  *sigs.add_signatures() = c[0]->consistency(lie);
  *sigs.add_signatures() = c[1]->consistency(lie);
  *sigs.add_signatures() = c[2]->consistency(truth);
  *sigs.add_signatures() = c[3]->consistency(truth);
  test_support::CapturedLog log(64);
  for (uint32_t u = 0; u < 4; ++u) {
    try {
      c[u]->unmask(sigs);
      FAIL() << "site " << u << " revealed shares although the signed survivor sets differ";
    } catch (const RoundAborted& e) {
      EXPECT_NE(std::string(e.what()).find("different survivor sets"), std::string::npos) << e.what();
    }
  }
  EXPECT_TRUE(log.warned("before revealing any share"));
}

TEST(SecAggConfig, InvalidRoundParametersAreRefused) {
  EXPECT_THROW(ClientSession(make_cfg(1, 1, 8), 0), ConfigError);
  EXPECT_THROW(ClientSession(make_cfg(5, 1, 8), 0), ConfigError);
  EXPECT_THROW(ClientSession(make_cfg(5, 6, 8), 0), ConfigError);
  EXPECT_THROW(ClientSession(make_cfg(5, 3, 0), 0), ConfigError);
  EXPECT_THROW(ClientSession(make_cfg(5, 3, 8), 5), ConfigError);
  EXPECT_THROW(ServerSession(make_cfg(5, 3, 8, 0)), ConfigError);
}

// ---------------------------------------------------------------------------------------------
// Wire

TEST(SecAggWire, FramesRoundTripWithReservedTypes) {
  Federation s(make_cfg(3, 2, 4));
  const Frame f = encode(s.keys);
  EXPECT_EQ(static_cast<uint16_t>(f.type), kFrameKeyList);
  const auto back = decode<v1::SecAggKeyList>(f);
  EXPECT_EQ(back.SerializeAsString(), s.keys.SerializeAsString());
  // Wrong type, with both names in the message.
  try {
    decode<v1::SecAggMasked>(f);
    FAIL();
  } catch (const ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("SecAggMasked"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("SecAggKeyList"), std::string::npos);
  }
  Frame junk{frame_type(kFrameMasked), "\xff\xff\xff"};
  EXPECT_THROW(decode<v1::SecAggMasked>(junk), ProtocolError);
  EXPECT_THROW(decode<v1::SecAggMasked>(error_frame(ErrorCode::kPolicyRefused, "no")), ProtocolError);
  for (uint16_t t = kFrameKeys; t <= kFrameConsistencyList; ++t) EXPECT_NE(frame_name(t), nullptr);
  EXPECT_EQ(frame_name(26), nullptr);
}

TEST(SecAggWire, MaskedMessageExpansionIsSmall) {
  const uint64_t m = 100000;
  Federation s(make_cfg(4, 3, m));
  s.share_all();
  const auto y = s.c[0]->mask_input(s.server->shares_for(0), std::vector<uint32_t>(m, 0));
  const double ratio = static_cast<double>(encode(y).payload.size()) / (4.0 * m);
  EXPECT_LT(ratio, 1.001);
}

}  // namespace
}  // namespace fedtl::protocols::secagg

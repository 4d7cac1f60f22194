// DP-FedAvg mechanics: clipping, the Gaussian generator, the noise each mode puts into the
// aggregate, fixed-point survival of distributed noise shares, adaptive clipping.
#include "protocols/dp/mechanism.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "common/errors.h"

namespace fedtl::protocols::dp {
namespace {

double norm_of(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double{x} * x;
  return std::sqrt(s);
}

TEST(Clip, BoundsEveryUpdateAndKeepsItsDirection) {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> scale(1e-3, 1e3);
  for (int trial = 0; trial < 500; ++trial) {
    const size_t n = 1 + trial % 97 * 37;
    const double c = trial % 3 == 0 ? 1.0 : scale(rng);
    const double s = scale(rng);
    std::vector<float> v(n);
    for (auto& x : v) x = static_cast<float>(s * normal(rng));
    const std::vector<float> orig = v;
    const double before = clip_l2(v, c);
    EXPECT_NEAR(before, norm_of(orig), 1e-9 * before);
    EXPECT_LE(norm_of(v), c) << "trial " << trial;
    if (before <= c) {
      EXPECT_EQ(v, orig);
    } else {
      EXPECT_NEAR(norm_of(v), c, 1e-5 * c);
      double dot = 0;
      for (size_t k = 0; k < n; ++k) dot += double{v[k]} * orig[k];
      EXPECT_NEAR(dot / (norm_of(v) * before), 1.0, 1e-6);
    }
  }
}

TEST(Clip, RejectsBadInput) {
  std::vector<float> v = {1, 2};
  EXPECT_THROW(clip_l2(v, 0), ConfigError);
  EXPECT_THROW(clip_l2(v, -1), ConfigError);
  std::vector<float> bad = {1, NAN};
  EXPECT_THROW(clip_l2(bad, 1), ProtocolError);
  bad = {INFINITY};
  EXPECT_THROW(clip_l2(bad, 1), ProtocolError);
  std::vector<float> empty;
  EXPECT_EQ(clip_l2(empty, 1), 0.0);
}

TEST(Noise, StandardNormalHasZeroMeanUnitVarianceAndGaussianShape) {
  GaussianNoise g(20240601);
  const int n = 1000000;
  double sum = 0, sum2 = 0, sum4 = 0;
  int within1 = 0, within2 = 0;
  for (int k = 0; k < n; ++k) {
    const double z = g.standard_normal();
    sum += z, sum2 += z * z, sum4 += z * z * z * z;
    within1 += std::fabs(z) <= 1;
    within2 += std::fabs(z) <= 2;
  }
  const double mean = sum / n, var = sum2 / n - mean * mean;
  EXPECT_NEAR(mean, 0, 5 / std::sqrt(n));                  // 5 standard errors
  EXPECT_NEAR(var, 1, 5 * std::sqrt(2.0 / n));             // Var(s²) = 2σ⁴/n
  EXPECT_NEAR(sum4 / n, 3, 5 * std::sqrt(96.0 / n));       // E z⁴ = 3, Var z⁴ = 96
  EXPECT_NEAR(within1 / double(n), 0.682689, 0.003);
  EXPECT_NEAR(within2 / double(n), 0.954500, 0.002);
}

TEST(Noise, AddHasTheConfiguredStddevAndIsDeterministicGivenTheSeed) {
  for (double stddev : {0.01, 0.37, 2.5}) {
    std::vector<float> v(400000, 1.5f);
    GaussianNoise g(99);
    g.add(v, stddev);
    double sum = 0, sum2 = 0;
    for (float x : v) sum += x - 1.5, sum2 += (x - 1.5) * (x - 1.5);
    const double n = v.size(), mean = sum / n, sd = std::sqrt(sum2 / n - mean * mean);
    EXPECT_NEAR(mean, 0, 5 * stddev / std::sqrt(n));
    EXPECT_NEAR(sd / stddev, 1, 5 * std::sqrt(0.5 / n)) << stddev;
  }
  std::vector<double> a(1000, 0), b(1000, 0), c(1000, 0);
  GaussianNoise ga(5), gb(5), gc(6);
  ga.add(a, 1), gb.add(b, 1), gc.add(c, 1);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::vector<double> z(10, 0);
  ga.add(z, 0);
  EXPECT_EQ(z, std::vector<double>(10, 0));
  EXPECT_THROW(ga.add(z, -1), ConfigError);
}

// Runs one round: n sites with known deltas (norm ≤ C, so clipping is a no-op), each privatised
// with its own seed, summed and finished with denominator n. Returns the per-coordinate noise
// in the mean (mean − true mean).
std::vector<double> round_noise(const DpParams& p, size_t n, size_t dim, uint64_t seed) {
  DpSum sum(dim, p);
  std::vector<double> truth(dim, 0.0);
  for (size_t i = 0; i < n; ++i) {
    std::vector<float> delta(dim);
    for (size_t k = 0; k < dim; ++k) delta[k] = static_cast<float>((static_cast<int>((k + i) % 5) - 2) * 1e-3);
    EXPECT_LE(norm_of(delta), p.clip_norm);
    for (size_t k = 0; k < dim; ++k) truth[k] += delta[k];
    GaussianNoise site_noise(seed * 1000 + i);
    privatize_site_update(delta, p, n, site_noise);
    sum.add(delta);
  }
  GaussianNoise coord_noise(seed * 1000 + 999);
  auto mean = sum.finish(static_cast<double>(n), coord_noise);
  for (size_t k = 0; k < dim; ++k) mean[k] -= truth[k] / n;
  return mean;
}

double variance(const std::vector<double>& v) {
  double m = std::accumulate(v.begin(), v.end(), 0.0) / v.size(), s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return s / v.size();
}

TEST(Modes, AggregateNoiseVarianceMatchesTheFormula) {
  const double sigma = 1.3, c = 0.5;
  const size_t n = 8, dim = 40000;
  struct Case {
    NoiseMode mode;
    double want;  // variance of the mean's noise per coordinate
  };
  for (const Case& k : {Case{NoiseMode::kCentral, sigma * sigma * c * c / (n * n)},
                        Case{NoiseMode::kDistributed, sigma * sigma * c * c / (n * n)},
                        Case{NoiseMode::kLocal, sigma * sigma * c * c / n}}) {
    const DpParams p{k.mode, sigma, c};
    std::vector<double> noise;
    noise = round_noise(p, n, dim, 3);
    // Sample variance of dim iid normals: relative sd sqrt(2/dim) = 0.7%; allow 5 sd.
    EXPECT_NEAR(variance(noise) / k.want, 1.0, 5 * std::sqrt(2.0 / dim)) << to_string(k.mode);
  }
  EXPECT_EQ(site_noise_stddev({NoiseMode::kCentral, sigma, c}, n), 0.0);
  EXPECT_DOUBLE_EQ(site_noise_stddev({NoiseMode::kDistributed, sigma, c}, n), sigma * c / std::sqrt(8.0));
  EXPECT_DOUBLE_EQ(site_noise_stddev({NoiseMode::kLocal, sigma, c}, n), sigma * c);
  EXPECT_DOUBLE_EQ(aggregate_noise_stddev({NoiseMode::kCentral, sigma, c}), sigma * c);
  EXPECT_EQ(aggregate_noise_stddev({NoiseMode::kDistributed, sigma, c}), 0.0);
  EXPECT_EQ(aggregate_noise_stddev({NoiseMode::kLocal, sigma, c}), 0.0);
}

TEST(Modes, CentralModeReclipsAtTheCoordinatorOthersDoNot) {
  std::vector<float> big(100, 1.0f);  // norm 10
  DpSum central(100, {NoiseMode::kCentral, 1.0, 2.0});
  EXPECT_NEAR(central.add(big), 10.0, 1e-9);
  std::vector<float> s(central.sum().begin(), central.sum().end());
  EXPECT_LE(norm_of(s), 2.0 + 1e-9);
  DpSum local(100, {NoiseMode::kLocal, 1.0, 2.0});
  local.add(big);
  EXPECT_EQ(local.sum()[0], 1.0);  // already-noised deltas are summed as they are
}

TEST(Modes, DpSumRejectsMalformedUpdates) {
  DpSum sum(3, {NoiseMode::kCentral, 1.0, 1.0});
  GaussianNoise g(1);
  EXPECT_THROW(sum.finish(1, g), ProtocolError);  // nothing added
  EXPECT_THROW(sum.add({1, 2}), ProtocolError);
  EXPECT_THROW(sum.add({1, NAN, 2}), ProtocolError);
  sum.add({0.1f, 0.2f, 0.3f});
  EXPECT_THROW(sum.finish(0, g), ConfigError);
  sum.finish(1, g);
  EXPECT_THROW(sum.finish(1, g), ProtocolError);
  EXPECT_THROW(DpSum(3, {NoiseMode::kCentral, 0.0, 1.0}), ConfigError);
  EXPECT_THROW(DpSum(3, {NoiseMode::kCentral, 1.0, -1.0}), ConfigError);
}

// Distributed noise under secure aggregation: each site adds its share in float, then quantises
// to a fixed-point grid of step s ≪ σC/√n; the integer sum still carries noise variance σ²C²,
// and differs from the unquantised sum by at most n·s/2 per coordinate.
TEST(Modes, DistributedNoiseSurvivesFixedPointQuantisation) {
  const double sigma = 1.0, c = 1.0;
  const size_t n = 10, dim = 40000;
  const DpParams p{NoiseMode::kDistributed, sigma, c};
  const double step = site_noise_stddev(p, n) / 100;  // s = σC/(100√n)
  std::vector<int64_t> qsum(dim, 0);
  std::vector<double> fsum(dim, 0.0);
  for (size_t i = 0; i < n; ++i) {
    std::vector<float> delta(dim, 0.0f);
    GaussianNoise g(777 + i);
    privatize_site_update(delta, p, n, g);
    for (size_t k = 0; k < dim; ++k) {
      fsum[k] += delta[k];
      qsum[k] += std::llround(delta[k] / step);  // what the site would submit to secure aggregation
    }
  }
  std::vector<double> deq(dim);
  for (size_t k = 0; k < dim; ++k) {
    deq[k] = qsum[k] * step;
    ASSERT_LE(std::fabs(deq[k] - fsum[k]), n * step / 2 + 1e-12);
  }
  EXPECT_NEAR(variance(deq) / (sigma * sigma * c * c), 1.0, 5 * std::sqrt(2.0 / dim));
}

TEST(Modes, EffectiveNoiseMultiplierWhenSitesDropOut) {
  const DpParams dist{NoiseMode::kDistributed, 2.0, 1.0};
  EXPECT_DOUBLE_EQ(effective_noise_multiplier(dist, 4, 4), 2.0);
  EXPECT_DOUBLE_EQ(effective_noise_multiplier(dist, 3, 4), 2.0 * std::sqrt(0.75));
  EXPECT_DOUBLE_EQ(effective_noise_multiplier({NoiseMode::kCentral, 2.0, 1.0}, 3, 4), 2.0);
  EXPECT_THROW(effective_noise_multiplier(dist, 0, 4), ConfigError);
}

TEST(Modes, ParseNames) {
  EXPECT_EQ(parse_noise_mode("central"), NoiseMode::kCentral);
  EXPECT_EQ(parse_noise_mode("distributed"), NoiseMode::kDistributed);
  EXPECT_EQ(parse_noise_mode("local"), NoiseMode::kLocal);
  EXPECT_EQ(to_string(NoiseMode::kDistributed), "distributed");
  EXPECT_THROW(parse_noise_mode("Central"), ConfigError);
  EXPECT_THROW(parse_noise_mode(""), ConfigError);
}

TEST(AdaptiveClip, GeometricUpdateFollowsTheFormula) {
  AdaptiveClipper clip({0.5, 0.2, 0.0}, 1.0);
  GaussianNoise g(1);
  // 8 of 10 at or below C: b̄ = 0.8, C ← C·exp(−0.2·(0.8 − 0.5)).
  EXPECT_DOUBLE_EQ(clip.update(8, 10, 10, g), std::exp(-0.2 * 0.3));
  EXPECT_DOUBLE_EQ(clip.last_fraction(), 0.8);
  // 2 of 10: C grows.
  const double c1 = clip.clip_norm();
  EXPECT_DOUBLE_EQ(clip.update(2, 10, 10, g), c1 * std::exp(-0.2 * (0.2 - 0.5)));
  // Fixed denominator larger than the reports (q·N = 20, 10 reported, all below).
  AdaptiveClipper c2({0.5, 0.2, 0.0}, 1.0);
  c2.update(10, 10, 20, g);
  EXPECT_DOUBLE_EQ(c2.last_fraction(), 0.75);
  EXPECT_TRUE(AdaptiveClipper::indicator(1.0, 1.0));
  EXPECT_FALSE(AdaptiveClipper::indicator(1.0001, 1.0));
  EXPECT_THROW(clip.update(11, 10, 10, g), ConfigError);
  EXPECT_THROW(clip.update(1, 10, 0, g), ConfigError);
  EXPECT_THROW(AdaptiveClipper({1.5, 0.2, 0.0}, 1.0), ConfigError);
  EXPECT_THROW(AdaptiveClipper({0.5, 0.0, 0.0}, 1.0), ConfigError);
  EXPECT_THROW(AdaptiveClipper({0.5, 0.2, -1.0}, 1.0), ConfigError);
  EXPECT_THROW(AdaptiveClipper({0.5, 0.2, 0.0}, 0.0), ConfigError);
}

// Update norms ~ |N(0, 2²)|·... : the clip norm should settle near the target quantile of the
// norm distribution, with and without noise on the count.
TEST(AdaptiveClip, TracksTheTargetQuantile) {
  for (double count_noise : {0.0, 5.0}) {
    for (double gamma : {0.5, 0.9}) {
      AdaptiveClipper clip({gamma, 0.2, count_noise}, 0.01);
      std::mt19937_64 rng(11);
      std::lognormal_distribution<double> norms(0.0, 0.5);  // quantile γ: exp(0.5·Φ⁻¹(γ))
      GaussianNoise g(12);
      const size_t sites = 100;
      double avg = 0;
      const int rounds = 600, tail = 200;
      for (int r = 0; r < rounds; ++r) {
        size_t below = 0;
        for (size_t i = 0; i < sites; ++i) below += AdaptiveClipper::indicator(norms(rng), clip.clip_norm());
        clip.update(below, sites, sites, g);
        if (r >= rounds - tail) avg += std::log(clip.clip_norm()) / tail;
      }
      const double want = std::exp(0.5 * (gamma == 0.5 ? 0.0 : 1.2815515655446004));
      EXPECT_NEAR(std::exp(avg) / want, 1.0, 0.05) << "gamma " << gamma << " count noise " << count_noise;
    }
  }
}

TEST(AdaptiveClip, UpdateNoiseMultiplierKeepsTheTotal) {
  EXPECT_EQ(adaptive_update_noise_multiplier(1.0, 0.0), 1.0);
  const double z = 1.0, sb = 5.0;
  const double zd = adaptive_update_noise_multiplier(z, sb);
  // (z_Δ⁻² + (2σ_b)⁻²)^(−1/2) == z
  EXPECT_NEAR(1 / std::sqrt(1 / (zd * zd) + 1 / (4 * sb * sb)), z, 1e-12);
  EXPECT_GT(zd, z);
  EXPECT_THROW(adaptive_update_noise_multiplier(1.0, 0.5), ConfigError);  // σ_b = 1/(2z)
  EXPECT_THROW(adaptive_update_noise_multiplier(0.0, 1.0), ConfigError);
}

}  // namespace
}  // namespace fedtl::protocols::dp

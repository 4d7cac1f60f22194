// RDP accountant: checked against (1) the RDP of the sampled Gaussian mechanism computed here
// independently — a direct long-double binomial sum for integer orders and numerical
// integration of the defining integral for fractional orders — and (2) values published by
// TensorFlow Privacy, Opacus and Google's dp_accounting (sources next to each number).
#include "protocols/dp/accountant.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common/errors.h"

namespace fedtl::protocols::dp {
namespace {

// ---- independent references ---------------------------------------------------------------

// A_α − 1 for integer α, straight from the definition
//   A_α = Σ_i C(α,i) (1−q)^{α−i} q^i exp((i²−i)/(2σ²)),
// written as Σ_i C(α,i)(1−q)^{α−i} q^i (exp(·) − 1) (the binomial weights sum to 1) so that
// small values keep their precision. Plain long double, no logs.
long double a_minus_1_int(long double q, long double sigma, int alpha) {
  long double total = 0, binom = 1;  // C(α, 0)
  for (int i = 0; i <= alpha; ++i) {
    const long double w = binom * std::pow(1 - q, (long double)(alpha - i)) * std::pow(q, (long double)i);
    total += w * std::expm1((long double)(i * i - i) / (2 * sigma * sigma));
    binom = binom * (alpha - i) / (i + 1);
  }
  return total;
}

// A_α − 1 for any α > 1 by composite Simpson integration of
//   A_α = ∫ N(z; 0, σ²) · ((1−q) + q·exp((2z−1)/(2σ²)))^α dz
// (Mironov, Talwar, Zhang 2019, eq. for the SGM), as ∫ N(z) · expm1(α log1p(q·expm1(·))) dz.
long double a_minus_1_integral(long double q, long double sigma, long double alpha) {
  const long double lo = -40 * sigma - 2, hi = alpha + 40 * sigma + 2;
  const int n = 40000;  // even
  const long double h = (hi - lo) / n;
  const long double norm = 1 / (sigma * std::sqrt(2 * (long double)M_PI));
  auto f = [&](long double z) {
    const long double ratio = std::expm1((2 * z - 1) / (2 * sigma * sigma));
    return norm * std::exp(-z * z / (2 * sigma * sigma)) * std::expm1(alpha * std::log1p(q * ratio));
  };
  long double s = f(lo) + f(hi);
  for (int k = 1; k < n; ++k) s += (k % 2 ? 4 : 2) * f(lo + k * h);
  return s * h / 3;
}

TEST(Accountant, IntegerOrdersMatchIndependentBinomialSum) {
  for (double q : {1e-3, 0.01, 0.1, 0.5, 0.9})
    for (double sigma : {0.8, 1.1, 2.0, 5.0})
      for (int alpha : {2, 3, 5, 8, 16, 32, 64}) {
        const double want = static_cast<double>(std::log1p(a_minus_1_int(q, sigma, alpha)) / (alpha - 1));
        const double got = sgm_rdp(q, sigma, alpha);
        EXPECT_NEAR(got, want, 1e-9 * want + 1e-300) << "q=" << q << " sigma=" << sigma << " alpha=" << alpha;
      }
}

TEST(Accountant, FractionalOrdersMatchNumericalIntegration) {
  for (double q : {0.01, 0.1, 0.5})
    for (double sigma : {1.0, 2.0, 5.0})
      for (double alpha : {1.5, 2.5, 3.25, 7.7, 20.5}) {
        const double want = static_cast<double>(std::log1p(a_minus_1_integral(q, sigma, alpha)) / (alpha - 1));
        const double got = sgm_rdp(q, sigma, alpha);
        EXPECT_NEAR(got, want, 1e-6 * want) << "q=" << q << " sigma=" << sigma << " alpha=" << alpha;
      }
  // The integral also pins the integer closed form (a third route to the same number).
  const double want = static_cast<double>(std::log1p(a_minus_1_integral(0.05, 1.3, 12)) / 11);
  EXPECT_NEAR(sgm_rdp(0.05, 1.3, 12), want, 1e-6 * want);
}

TEST(Accountant, FullParticipationIsThePlainGaussianMechanism) {
  for (double sigma : {0.5, 1.0, 3.7})
    for (double alpha : {1.5, 2.0, 10.0, 33.3, 256.0}) EXPECT_DOUBLE_EQ(sgm_rdp(1.0, sigma, alpha), alpha / (2 * sigma * sigma));
  // TF Privacy rdp_accountant_test.test_compute_rdp_no_sampling: q=1, σ=10, α=20 → 0.1.
  EXPECT_DOUBLE_EQ(sgm_rdp(1.0, 10, 20), 0.1);
  // ... and the sampled formula tends to it as q → 1.
  EXPECT_NEAR(sgm_rdp(1 - 1e-9, 2.0, 8), 8 / 8.0, 1e-6);
}

// ---- published values -------------------------------------------------------------------------

// tensorflow/privacy, tensorflow_privacy/privacy/analysis/rdp_accountant_test.py.
TEST(AccountantReference, TfPrivacyComputeRdp) {
  // test_compute_rdp_scalar: compute_rdp(q=0.1, σ=2, steps=10, α=5) ≈ 0.07737 (places=5).
  EXPECT_NEAR(sgm_rdp(0.1, 2, 10, {5})[0], 0.07737, 5e-6);
  // test_compute_rdp_sequence: q=0.01, σ=2.5, 50 steps (delta=1e-5 in assertSequenceAlmostEqual).
  const std::vector<double> orders = {1.5, 2.5, 5, 50, 100};
  const std::vector<double> want = {0.00065, 0.001085, 0.00218075, 0.023846, 167.416307};
  const auto got = sgm_rdp(0.01, 2.5, 50, orders);
  for (size_t k = 0; k < orders.size(); ++k) EXPECT_NEAR(got[k], want[k], 1e-5) << "order " << orders[k];
  // google/differential-privacy, python/dp_accounting/rdp/rdp_privacy_accountant_test.py,
  // test_compute_rdp_poisson_sampled_gaussian: the same event, rtol 1e-4.
  const std::vector<double> dpa = {6.5007e-04, 1.0854e-03, 2.1808e-03, 2.3846e-02, 1.6742e+02};
  for (size_t k = 0; k < orders.size(); ++k) EXPECT_NEAR(got[k], dpa[k], 1e-4 * dpa[k]) << "order " << orders[k];
}

// The parameter sets dp_accounting and TF Privacy check against multi-precision integration
// (test_compute_log_a_equals_mp): all must compute; the moderate ones are compared here with
// this file's own references.
TEST(AccountantReference, ExtremeParametersFromDpAccountingTests) {
  struct Case {
    double q, sigma, order;
  };
  for (const Case& c : {Case{1e-7, .1, 1.01}, Case{1e-6, .1, 256}, Case{1e-5, .1, 256.1}, Case{1e-6, 1, 27},
                        Case{1e-4, 1., 1.5}, Case{1e-3, 1., 2}, Case{.01, 10, 20}, Case{.1, 100, 20.5},
                        Case{.99, .1, 256}, Case{.999, 100, 256.1}}) {
    const double r = sgm_rdp(c.q, c.sigma, c.order);
    EXPECT_TRUE(std::isfinite(r) && r >= 0) << c.q << " " << c.sigma << " " << c.order << " -> " << r;
  }
  // σ = 0.1 at α ≈ 256: A_α is the i = α term of the expansion to far better than 1e-4,
  // log A_α ≈ α log q + α(α−1)/(2σ²) (the log_sub overflow path of the fractional series).
  for (const Case& c : {Case{1e-6, .1, 256}, Case{1e-5, .1, 256.1}, Case{.99, .1, 256}}) {
    const double want = c.order * std::log(c.q) + c.order * (c.order - 1) / (2 * c.sigma * c.sigma);
    EXPECT_NEAR(sgm_rdp(c.q, c.sigma, c.order) * (c.order - 1), want, 1e-4 * want) << c.q << " " << c.order;
  }
  for (const Case& c : {Case{1e-6, 1, 27}, Case{1e-3, 1., 2}, Case{.01, 10, 20}}) {
    const double want = static_cast<double>(std::log1p(a_minus_1_int(c.q, c.sigma, (int)c.order)) / (c.order - 1));
    EXPECT_NEAR(sgm_rdp(c.q, c.sigma, c.order), want, 1e-9 * want);
  }
  for (const Case& c : {Case{1e-4, 1., 1.5}, Case{.1, 100, 20.5}}) {
    const double want = static_cast<double>(std::log1p(a_minus_1_integral(c.q, c.sigma, c.order)) / (c.order - 1));
    EXPECT_NEAR(sgm_rdp(c.q, c.sigma, c.order), want, 1e-6 * want);
  }
}

TEST(AccountantReference, TfPrivacyGetPrivacySpent) {
  // test_get_privacy_spent_check_target_delta: constant RDP 1.1 over orders 2..32, δ=1e-5 →
  // ε = 1.32783806176 at order 32 (the improved conversion).
  std::vector<double> orders, rdp;
  for (int a = 2; a <= 32; ++a) orders.push_back(a), rdp.push_back(1.1);
  auto s = rdp_to_epsilon(orders, rdp, 1e-5);
  EXPECT_NEAR(s.epsilon, 1.32783806176, 1e-9);
  EXPECT_EQ(s.order, 32);
  // Same test, second half: q=1, σ=4.530877117 is exactly (1, 1e-6)-DP over orders 1.000..99.999.
  std::vector<double> fine, fine_rdp;
  for (int i = 1001; i < 100000; ++i) fine.push_back(0.001 * i);
  for (double a : fine) fine_rdp.push_back(sgm_rdp(1.0, 4.530877117, a));
  EXPECT_NEAR(rdp_to_epsilon(fine, fine_rdp, 1e-6).epsilon, 1.0, 1e-6);
}

// tensorflow/privacy, compute_dp_sgd_privacy_test.py (compute_dp_sgd_privacy via dp_accounting's
// RdpAccountant: TF Privacy's orders, steps = ceil(epochs·n/batch), improved conversion).
TEST(AccountantReference, TfPrivacyComputeDpSgdPrivacy) {
  struct Case {
    double n, batch, sigma, epochs, delta, eps, order;
  };
  for (const Case& c : {Case{60000, 150, 1.3, 15, 1e-5, 0.7242234026109595, 19.0},
                        Case{100000, 100, 1.0, 30, 1e-7, 1.4154988495444842, 13.0},
                        Case{1e8, 1024, 0.1, 10, 1e-7, 5907982.3113978775, 1.25}}) {
    const auto steps = static_cast<int64_t>(std::ceil(c.epochs * c.n / c.batch));
    const auto s = privacy_spent(c.sigma, c.batch / c.n, steps, c.delta, tf_privacy_orders());
    EXPECT_NEAR(s.epsilon, c.eps, 1e-7 * c.eps);
    EXPECT_EQ(s.order, c.order);
    // The default (denser) orders can only tighten ε, and agree to two decimals.
    if (c.eps < 100) {
      const double d = epsilon(c.sigma, c.batch / c.n, steps, c.delta);
      EXPECT_LE(d, s.epsilon + 1e-12);
      EXPECT_NEAR(d, c.eps, 0.005);
    }
  }
}

// pytorch/opacus, opacus/tests/accountants_test.py (RDPAccountant, DEFAULT_ALPHAS, improved
// conversion; get_noise_multiplier bisects to ε within 0.01 of the target, so σ to ~3 digits).
TEST(AccountantReference, Opacus) {
  // test_rdp_accountant: σ=1.5, q=0.04, 2250 steps, δ=1e-5 → 7.32911117143.
  Accountant acc(opacus_orders());
  for (int k = 0; k < 2250; ++k) acc.step(1.5, 0.04);
  EXPECT_NEAR(acc.epsilon(1e-5), 7.32911117143, 1e-8);
  EXPECT_NEAR(epsilon(1.5, 0.04, 2250, 1e-5), 7.33, 0.005);
  // test_get_noise_multiplier_rdp_epochs / _steps: ε=8, q=0.04, δ=1e-5.
  EXPECT_NEAR(noise_multiplier(8, 0.04, 2250, 1e-5, opacus_orders()), 1.416, 0.005);
  EXPECT_NEAR(noise_multiplier(8, 0.04, 2000, 1e-5, opacus_orders()), 1.3562, 0.005);
}

// tensorflow/privacy tutorials/README.md, MNIST (N=60000, batch 256, δ=1e-5): ε = 3.01 for
// σ=1.1 × 60 epochs, 1.19 for σ=1.3 × 15, 7.10 for σ=0.7 × 45. These were computed by
// mnist_dpsgd_tutorial.py with the CLASSIC conversion ε = rdp − log δ/(α−1), orders
// 1.1..10.9 ∪ 12..63 (= Opacus's list) and steps = epochs·60000 // 256. The improved
// conversion gives 2.60, 0.95, 6.32 for the same runs.
TEST(AccountantReference, TfPrivacyMnistTutorialClassicConversion) {
  struct Case {
    double sigma;
    int epochs;
    double eps, improved;
  };
  const double q = 256.0 / 60000;
  for (const Case& c : {Case{1.1, 60, 3.01, 2.60}, Case{1.3, 15, 1.19, 0.95}, Case{0.7, 45, 7.10, 6.32}}) {
    const int64_t steps = int64_t{c.epochs} * 60000 / 256;
    const auto classic = privacy_spent(c.sigma, q, steps, 1e-5, opacus_orders(), Conversion::kClassic);
    EXPECT_NEAR(classic.epsilon, c.eps, 0.005) << "sigma " << c.sigma;
    EXPECT_NEAR(epsilon(c.sigma, q, steps, 1e-5), c.improved, 0.005) << "sigma " << c.sigma;
  }
  // The README's command line (compute_dp_sgd_privacy.py, TF Privacy orders, ceil steps) also
  // printed 3.01 at the time (classic conversion).
  EXPECT_NEAR(privacy_spent(1.1, q, 14063, 1e-5, tf_privacy_orders(), Conversion::kClassic).epsilon, 3.01, 0.005);
}

// ---- properties -------------------------------------------------------------------------------

TEST(Accountant, EpsilonGrowsWithStepsAndSamplingRateAndFallsWithSigma) {
  double prev = 0;
  for (int64_t t : {1, 2, 5, 10, 50, 100, 1000, 10000}) {
    const double e = epsilon(1.0, 0.01, t, 1e-5);
    EXPECT_GT(e, prev) << "steps " << t;
    prev = e;
  }
  prev = INFINITY;
  for (double s : {0.5, 0.7, 1.0, 1.5, 2.0, 4.0, 10.0}) {
    const double e = epsilon(s, 0.01, 1000, 1e-5);
    EXPECT_LT(e, prev) << "sigma " << s;
    prev = e;
  }
  prev = 0;
  for (double q : {1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0}) {
    const double e = epsilon(1.0, q, 100, 1e-5);
    EXPECT_GT(e, prev) << "q " << q;
    prev = e;
  }
}

TEST(Accountant, ImprovedConversionNeverExceedsClassic) {
  for (double s : {0.6, 1.0, 3.0})
    for (int64_t t : {1, 100, 10000})
      EXPECT_LE(privacy_spent(s, 0.01, t, 1e-5).epsilon,
                privacy_spent(s, 0.01, t, 1e-5, default_orders(), Conversion::kClassic).epsilon);
}

TEST(Accountant, NoiseMultiplierInvertsEpsilon) {
  for (double target : {0.5, 1.0, 3.0, 8.0})
    for (double q : {0.01, 0.2, 1.0})
      for (int64_t steps : {10, 1000}) {
        const double sigma = noise_multiplier(target, q, steps, 1e-5);
        const double e = epsilon(sigma, q, steps, 1e-5);
        EXPECT_LE(e, target) << target << " " << q << " " << steps;
        EXPECT_NEAR(e, target, 1e-4 * target) << target << " " << q << " " << steps;
        EXPECT_GT(epsilon(sigma * (1 - 1e-5), q, steps, 1e-5), target - 1e-3 * target);
      }
}

TEST(Accountant, BadInputIsAConfigErrorWithOneLineMessage) {
  auto expect_config_error = [](auto fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "no error for " << needle;
    } catch (const ConfigError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  };
  expect_config_error([] { epsilon(0, 0.1, 10, 1e-5); }, "noise multiplier 0");
  expect_config_error([] { epsilon(-1, 0.1, 10, 1e-5); }, "noise multiplier -1");
  expect_config_error([] { epsilon(NAN, 0.1, 10, 1e-5); }, "noise multiplier");
  expect_config_error([] { epsilon(1, 0, 10, 1e-5); }, "sampling rate 0");
  expect_config_error([] { epsilon(1, 1.5, 10, 1e-5); }, "sampling rate 1.5");
  expect_config_error([] { epsilon(1, -0.1, 10, 1e-5); }, "sampling rate");
  expect_config_error([] { epsilon(1, 0.1, 10, 0); }, "delta 0");
  expect_config_error([] { epsilon(1, 0.1, 10, 1); }, "delta 1");
  expect_config_error([] { epsilon(1, 0.1, 0, 1e-5); }, "steps 0");
  expect_config_error([] { epsilon(1, 0.1, -3, 1e-5); }, "steps -3");
  expect_config_error([] { noise_multiplier(0, 0.1, 10, 1e-5); }, "target epsilon 0");
  expect_config_error([] { noise_multiplier(0.001, 1, 100000, 1e-10); }, "cannot be reached");
  expect_config_error([] { noise_multiplier(1e9, 0.01, 1, 1e-5); }, "is met even with");
  expect_config_error([] { noise_multiplier(1, 2, 10, 1e-5); }, "sampling rate 2");
  expect_config_error([] { Accountant().step(0, 0.1); }, "noise multiplier 0");
  expect_config_error([] { Accountant().epsilon(2); }, "delta 2");
  expect_config_error([] { sgm_rdp(0.1, 1, 1.0); }, "RDP order 1");
}

// ---- incremental accountant ------------------------------------------------------------------

TEST(Accountant, IncrementalMatchesClosedFormAfterEveryRound) {
  Accountant acc;
  EXPECT_EQ(acc.epsilon(1e-5), 0.0);
  double prev = 0;
  for (int64_t t = 1; t <= 40; ++t) {
    const double before = acc.epsilon_after(1.2, 0.1, 1, 1e-5);
    acc.step(1.2, 0.1);
    const double e = acc.epsilon(1e-5);
    EXPECT_EQ(before, e);
    EXPECT_NEAR(e, epsilon(1.2, 0.1, t, 1e-5), 1e-12 * e);
    EXPECT_GT(e, prev);
    prev = e;
  }
  EXPECT_EQ(acc.steps(), 40);
  ASSERT_EQ(acc.history().size(), 1u);
}

TEST(Accountant, PhasesComposeAdditively) {
  Accountant acc;
  acc.step(1.0, 0.1, 30);
  acc.step(2.0, 0.05, 70);
  acc.step(2.0, 0.05);
  ASSERT_EQ(acc.history().size(), 2u);
  EXPECT_EQ(acc.history()[1].steps, 71);
  const auto& o = default_orders();
  auto a = sgm_rdp(0.1, 1.0, 30, o), b = sgm_rdp(0.05, 2.0, 71, o);
  for (size_t k = 0; k < o.size(); ++k) a[k] += b[k];
  EXPECT_NEAR(acc.epsilon(1e-6), rdp_to_epsilon(o, a, 1e-6).epsilon, 1e-12);
  // epsilon_after for a new phase.
  Accountant more = acc;
  more.step(0.9, 0.2, 5);
  EXPECT_DOUBLE_EQ(acc.epsilon_after(0.9, 0.2, 5, 1e-6), more.epsilon(1e-6));
}

TEST(Accountant, CheckpointRoundTripIsExact) {
  Accountant acc;
  acc.step(1.1, 256.0 / 60000, 1000);
  acc.step(0.7300000000000001, 0.1, 3);
  const std::string state = acc.to_string();
  EXPECT_EQ(state.find('\n'), std::string::npos);
  const Accountant back = Accountant::from_string(state);
  EXPECT_EQ(back.history(), acc.history());
  EXPECT_EQ(back.orders(), acc.orders());
  EXPECT_EQ(back.epsilon(1e-5), acc.epsilon(1e-5));
  EXPECT_EQ(back.to_string(), state);
  // Empty accountant and classic conversion survive too.
  const Accountant empty(opacus_orders(), Conversion::kClassic);
  const Accountant empty_back = Accountant::from_string(empty.to_string());
  EXPECT_EQ(empty_back.steps(), 0);
  Accountant c1 = empty, c2 = empty_back;
  c1.step(1.1, 256.0 / 60000, 14062);
  c2.step(1.1, 256.0 / 60000, 14062);
  EXPECT_EQ(c1.epsilon(1e-5), c2.epsilon(1e-5));
  EXPECT_NEAR(c2.epsilon(1e-5), 3.01, 0.005);  // classic conversion kept
}

TEST(Accountant, MalformedCheckpointIsADataError) {
  for (const char* s : {"", "fedtl-rdp v2 improved 2,3 -", "fedtl-rdp v1 fancy 2,3 -", "fedtl-rdp v1 improved 2,x -",
                        "fedtl-rdp v1 improved 2,3 1:0.1", "fedtl-rdp v1 improved 2,3 1:0.1:z",
                        "fedtl-rdp v1 improved 2,3 0:0.1:5", "fedtl-rdp v1 improved 0.5 -",
                        "fedtl-rdp v1 improved 2,3 - extra"})
    EXPECT_THROW(Accountant::from_string(s), DataError) << s;
}

TEST(Accountant, DefaultOrdersAreSortedAndCoverTheUsualGrids) {
  const auto& o = default_orders();
  EXPECT_TRUE(std::is_sorted(o.begin(), o.end()));
  for (double a : {1.25, 1.5, 1.75, 2.0, 2.5, 10.9, 11.0, 12.0, 63.0, 64.0, 128.0, 256.0})
    EXPECT_NE(std::find(o.begin(), o.end(), a), o.end()) << a;
}

}  // namespace
}  // namespace fedtl::protocols::dp

#include "protocols/strategy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include <cmath>
#include <limits>

#include "common/errors.h"

namespace fedtl::protocols {
namespace {

constexpr double kTol = 1e-6;

StrategySpec spec_for(const std::string& name, double lr) {
  StrategySpec s;
  s.name = name;
  s.server_lr = lr;
  s.beta1 = 0.9;
  s.beta2 = 0.99;
  s.tau = 1e-3;
  return s;
}

// Two rounds used for the adaptive strategies, from x = {0, 1}.
const std::vector<double> kDelta1 = {0.1, -0.2};
const std::vector<double> kDelta2 = {0.2, 0.001};

TEST(Strategy, FedAvgTwoRounds) {
  auto s = make_strategy(spec_for("fedavg", 0.5));
  EXPECT_EQ(s->name(), "fedavg");
  std::vector<float> x = {1.0f, 2.0f};
  s->apply(x, {0.2, -0.4});  // x = {1 + 0.1, 2 - 0.2}
  EXPECT_NEAR(x[0], 1.1, kTol);
  EXPECT_NEAR(x[1], 1.8, kTol);
  s->apply(x, {1.0, 0.2});  // x = {1.1 + 0.5, 1.8 + 0.1}
  EXPECT_NEAR(x[0], 1.6, kTol);
  EXPECT_NEAR(x[1], 1.9, kTol);
  EXPECT_TRUE(s->state().empty());
}

TEST(Strategy, FedProxServerStepIsFedAvg) {
  StrategySpec spec = spec_for("fedprox", 1.0);
  spec.prox_mu = 0.01;
  auto s = make_strategy(spec);
  EXPECT_EQ(s->name(), "fedprox");
  std::vector<float> x = {1.0f, 2.0f};
  s->apply(x, {0.25, -0.5});
  EXPECT_NEAR(x[0], 1.25, kTol);
  EXPECT_NEAR(x[1], 1.5, kTol);
  s->apply(x, {-1.0, 0.125});
  EXPECT_NEAR(x[0], 0.25, kTol);
  EXPECT_NEAR(x[1], 1.625, kTol);
  EXPECT_TRUE(s->state().empty());
}

// lr = 0.1, β1 = 0.9, β2 = 0.99, τ = 1e-3, m = v = 0 at the start.
// Round 1, Δ = {0.1, -0.2}:
//   m = 0.1Δ = {0.01, -0.02};  v = 0.01Δ² = {1e-4, 4e-4};  √v = {0.01, 0.02}
//   x = {0 + 0.1·0.01/0.011, 1 - 0.1·0.02/0.021} = {0.0909091, 0.9047619}
// Round 2, Δ = {0.2, 0.001}:
//   m = 0.9m + 0.1Δ = {0.029, -0.0179}
//   v = 0.99v + 0.01Δ² = {0.000099 + 0.0004, 0.000396 + 0.00000001} = {0.000499, 0.00039601}
//   x += 0.1 m / (√v + τ) = {+0.1·0.029/0.0233383, -0.1·0.0179/0.0209}
//     = {0.2151683, 0.8191160}
TEST(Strategy, FedAdamTwoRounds) {
  auto s = make_strategy(spec_for("fedadam", 0.1));
  EXPECT_EQ(s->name(), "fedadam");
  EXPECT_TRUE(s->state().empty());
  std::vector<float> x = {0.0f, 1.0f};
  s->apply(x, kDelta1);
  EXPECT_NEAR(x[0], 0.0909091, kTol);
  EXPECT_NEAR(x[1], 0.9047619, kTol);
  s->apply(x, kDelta2);
  EXPECT_NEAR(x[0], 0.2151683, kTol);
  EXPECT_NEAR(x[1], 0.8191160, kTol);

  const auto st = s->state();
  ASSERT_EQ(st.size(), 2u);
  EXPECT_NEAR(st[0][0], 0.029, 1e-8);
  EXPECT_NEAR(st[0][1], -0.0179, 1e-8);
  EXPECT_NEAR(st[1][0], 0.000499, 1e-10);
  EXPECT_NEAR(st[1][1], 0.00039601, 1e-10);
}

// Same settings as Adam; v moves by the sign rule, v = v - 0.01Δ² sign(v - Δ²).
// Round 1: v = 0 < Δ², so v = 0.01Δ² = {1e-4, 4e-4} and x equals Adam's round 1.
// Round 2, Δ = {0.2, 0.001}:
//   component 0: v = 1e-4 < 0.04   -> v = 1e-4 + 0.01·0.04 = 0.0005
//   component 1: v = 4e-4 > 1e-6   -> v = 4e-4 - 0.01·1e-6 = 0.00039999
//   x += 0.1 m / (√v + τ) = {0.0909091 + 0.1·0.029/0.0233607, 0.9047619 - 0.1·0.0179/0.0209999}
//     = {0.2150493, 0.8195228}
TEST(Strategy, FedYogiTwoRounds) {
  auto s = make_strategy(spec_for("fedyogi", 0.1));
  EXPECT_EQ(s->name(), "fedyogi");
  std::vector<float> x = {0.0f, 1.0f};
  s->apply(x, kDelta1);
  EXPECT_NEAR(x[0], 0.0909091, kTol);
  EXPECT_NEAR(x[1], 0.9047619, kTol);
  s->apply(x, kDelta2);
  EXPECT_NEAR(x[0], 0.2150493, kTol);
  EXPECT_NEAR(x[1], 0.8195228, kTol);

  const auto st = s->state();
  ASSERT_EQ(st.size(), 2u);
  EXPECT_NEAR(st[1][0], 0.0005, 1e-10);
  EXPECT_NEAR(st[1][1], 0.00039999, 1e-10);
}

TEST(Strategy, AdaptiveStateRestoresExactly) {
  for (const char* name : {"fedadam", "fedyogi"}) {
    auto a = make_strategy(spec_for(name, 0.1));
    std::vector<float> xa = {0.0f, 1.0f};
    a->apply(xa, kDelta1);

    // Checkpoint after round 1, resume in a fresh strategy, run round 2 on both.
    auto b = make_strategy(spec_for(name, 0.1));
    b->set_state(a->state());
    std::vector<float> xb = xa;
    a->apply(xa, kDelta2);
    b->apply(xb, kDelta2);
    EXPECT_EQ(xa, xb) << name;
    EXPECT_EQ(a->state(), b->state()) << name;

    // An empty state resets to zero moments: the next step is a round-1 step again.
    b->set_state({});
    EXPECT_TRUE(b->state().empty());
    std::vector<float> x = {0.0f, 1.0f};
    b->apply(x, kDelta1);
    EXPECT_NEAR(x[0], 0.0909091, kTol) << name;
  }
}

TEST(Strategy, RejectsBadStateAndSizes) {
  auto s = make_strategy(spec_for("fedadam", 0.1));
  EXPECT_THROW(s->set_state({{1.0f}}), ConfigError);
  EXPECT_THROW(s->set_state({{1.0f, 2.0f}, {1.0f}}), ConfigError);
  EXPECT_THROW(s->set_state({{1.0f}, {-1.0f}}), ConfigError);
  s->set_state({{0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f}});
  std::vector<float> x = {0.0f, 1.0f};
  EXPECT_THROW(s->apply(x, {0.1, 0.2}), ConfigError);  // state is for 3 parameters

  auto avg = make_strategy(spec_for("fedavg", 1.0));
  EXPECT_THROW(avg->apply(x, {0.1}), ConfigError);
  EXPECT_EQ(x, (std::vector<float>{0.0f, 1.0f}));
}

TEST(Strategy, MakeStrategyRejectsBadSpecs) {
  auto message_for = [](const StrategySpec& s) -> std::string {
    try {
      make_strategy(s);
    } catch (const ConfigError& e) {
      return e.what();
    }
    ADD_FAILURE() << "expected ConfigError for " << s.name;
    return {};
  };
  StrategySpec s;
  s.name = "fedsgd";
  EXPECT_NE(message_for(s).find("fedsgd"), std::string::npos);

  s = StrategySpec{};
  s.server_lr = 0;
  EXPECT_NE(message_for(s).find("server_lr = 0"), std::string::npos) << message_for(s);
  s.server_lr = -0.5;
  EXPECT_NE(message_for(s).find("-0.5"), std::string::npos);
  s.server_lr = std::numeric_limits<double>::quiet_NaN();
  message_for(s);

  s = StrategySpec{};
  s.name = "fedadam";
  s.beta1 = 1.0;
  EXPECT_NE(message_for(s).find("beta1 = 1"), std::string::npos);
  s.beta1 = 0.9;
  s.beta2 = -0.1;
  EXPECT_NE(message_for(s).find("beta2 = -0.1"), std::string::npos);
  s.beta2 = 0.99;
  s.tau = 0;
  EXPECT_NE(message_for(s).find("tau = 0"), std::string::npos);

  s = StrategySpec{};
  s.name = "fedprox";
  s.prox_mu = -1;
  EXPECT_NE(message_for(s).find("prox_mu = -1"), std::string::npos);

  // Edge values inside the ranges are accepted.
  s = StrategySpec{};
  s.name = "fedyogi";
  s.beta1 = 0.0;
  s.beta2 = 0.0;
  EXPECT_NO_THROW(make_strategy(s));
}

TEST(WeightedMean, WeightsBySampleCount) {
  WeightedMean wm(2);
  wm.add({1.0f, 2.0f}, 1);
  wm.add({3.0f, -2.0f}, 3);
  EXPECT_EQ(wm.count(), 2u);
  EXPECT_DOUBLE_EQ(wm.total_weight(), 4.0);
  const auto mean = wm.mean();  // {(1 + 9) / 4, (2 - 6) / 4}
  ASSERT_EQ(mean.size(), 2u);
  EXPECT_DOUBLE_EQ(mean[0], 2.5);
  EXPECT_DOUBLE_EQ(mean[1], -1.0);
}

TEST(WeightedMean, FeedsStrategy) {
  WeightedMean wm(1);
  wm.add({0.5f}, 100);
  wm.add({-0.5f}, 300);  // mean = (50 - 150) / 400 = -0.25
  auto s = make_strategy(spec_for("fedavg", 2.0));
  std::vector<float> x = {1.0f};
  s->apply(x, wm.mean());
  EXPECT_NEAR(x[0], 0.5, kTol);
}

TEST(WeightedMean, RejectsBadInput) {
  WeightedMean wm(2);
  EXPECT_THROW(wm.mean(), ProtocolError);
  EXPECT_THROW(wm.add({1.0f}, 1), ProtocolError);
  EXPECT_THROW(wm.add({1.0f, 2.0f}, 0), ProtocolError);
  EXPECT_THROW(wm.add({1.0f, 2.0f}, WeightedMean::kMaxWeight + 1), ProtocolError);
  EXPECT_THROW(wm.add({1.0f, std::nanf("")}, 1), ProtocolError);
  EXPECT_THROW(wm.add({std::numeric_limits<float>::infinity(), 0.0f}, 1), ProtocolError);
  // Beyond the accumulator's range (|w * value| >= 2^60): refused, not wrapped around.
  EXPECT_THROW(wm.add({1.0f, 3e38f}, 1), ProtocolError);
  EXPECT_THROW(wm.add({1.0f, 1e18f}, 4096), ProtocolError);
  // Rejected updates leave no trace.
  EXPECT_EQ(wm.count(), 0u);
  EXPECT_EQ(wm.total_weight(), 0.0);
  wm.add({4.0f, 8.0f}, 2);
  EXPECT_EQ(wm.mean(), (std::vector<double>{4.0, 8.0}));
}

// Contract: add() returns the update's squared norm from the same pass, and subtract() takes
// an update back exactly (the coordinator does so for one whose norm is beyond its bound); a
// value out of range mid-update is rolled back, leaving no trace.
TEST(WeightedMean, AddReturnsTheSquaredNormAndSubtractTakesAnUpdateBackExactly) {
  WeightedMean alone(3), both(3);
  const std::vector<float> a = {0.25f, -1e-7f, 3e6f}, b = {1e9f, 2.5f, -7.0f};
  alone.add(a, 7);
  EXPECT_DOUBLE_EQ(both.add(a, 7), 0.0625 + 1e-14 + 9e12);
  EXPECT_NEAR(both.add(b, 1000), 1e18 + 6.25 + 49, 1e3);
  both.subtract(b, 1000);
  EXPECT_EQ(both.count(), 1u);
  EXPECT_EQ(both.total_weight(), 7.0);
  EXPECT_EQ(both.mean(), alone.mean());
  EXPECT_THROW(both.add({1.0f, 2.0f, std::nanf("")}, 3), ProtocolError);  // two values in, then rolled back
  EXPECT_EQ(both.mean(), alone.mean());
  EXPECT_THROW(both.subtract(b, 1u << 20), ProtocolError);  // more weight than was added
}

// Issue "scale": the sum is exact, so every order of the same updates gives the same bits,
// where a double accumulation does not (the data is chosen so: values 2^40 apart cancel).
// Large values (beyond the int64 fast path) and tiny ones are in range.
TEST(WeightedMean, EveryArrivalOrderGivesTheSameBits) {
  const std::vector<std::vector<float>> deltas = {
      {1e9f, 3.0e-4f, -2.5f}, {-1e9f, 1.7e-3f, 1e12f}, {3.1e-5f, -9.0e-4f, -1e12f}, {0.1f, 2.2e-7f, 7.0f},
      {-0.3f, 5.5e-3f, 1e-6f}};
  const std::vector<uint64_t> weights = {30, 7, 1000, 1, 12};
  std::vector<size_t> order = {0, 1, 2, 3, 4};
  std::vector<double> first;
  std::set<std::vector<double>> naive;
  do {
    WeightedMean wm(3);
    std::vector<double> plain(3, 0.0);
    double total = 0;
    for (size_t k : order) {
      wm.add(deltas[k], weights[k]);
      for (size_t j = 0; j < 3; ++j) plain[j] += static_cast<double>(weights[k]) * deltas[k][j];
      total += static_cast<double>(weights[k]);
    }
    for (double& v : plain) v /= total;
    naive.insert(plain);
    const auto m = wm.mean();
    if (first.empty()) first = m;
    ASSERT_EQ(m, first) << "an arrival order changed the exact mean";
  } while (std::next_permutation(order.begin(), order.end()));
  EXPECT_GT(naive.size(), 1u) << "the data does not tell orders apart in double: the check is vacuous";
  // And it is the mean, to the accumulator's resolution (2^-40 per weighted value).
  const double total = 30 + 7 + 1000 + 1 + 12;
  for (size_t j = 0; j < 3; ++j) {
    long double exact = 0;
    for (size_t k = 0; k < deltas.size(); ++k)
      exact += static_cast<long double>(weights[k]) * static_cast<long double>(deltas[k][j]);
    EXPECT_NEAR(first[j], static_cast<double>(exact / total), 1e-9 + 1e-12 * std::fabs(static_cast<double>(exact)))
        << j;
  }
}

}  // namespace
}  // namespace fedtl::protocols

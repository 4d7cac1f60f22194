// Gradual unfreezing: which children and values a round trains (protocols/schedule.h), and the
// figures that travel inside the secure-aggregation vector (protocols/secure_round.h).
#include <gtest/gtest.h>

#include <cmath>

#include "protocols/schedule.h"
#include "protocols/secagg/quantize.h"
#include "protocols/secure_round.h"

using namespace fedtl;

namespace {

v1::JobSpec job_with(uint32_t warmup, uint32_t every, uint32_t rounds = 10) {
  v1::JobSpec j;
  j.set_rounds(rounds);
  j.mutable_model()->set_warmup_rounds(warmup);
  j.mutable_model()->set_unfreeze_every(every);
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    auto* e = j.mutable_layout()->add_entries();
    e->set_name(name);
    for (auto d : shape) e->add_shape(d);
  };
  add("backbone.block2.weight", {4, 3});  // 12
  add("backbone.block2.bias", {4});       // 4
  add("backbone.fc.weight", {2, 5});      // 10
  add("backbone.fc.bias", {2});           // 2
  add("head.fc.weight", {3, 2});          // 6
  add("head.fc.bias", {3});               // 3
  return j;
}

}  // namespace

TEST(Schedule, TrainedSetChangesAtTheRightRounds) {
  const auto j = job_with(2, 3);
  const auto children = protocols::layout_children(j.layout());
  ASSERT_EQ(children.size(), 2u);
  EXPECT_EQ(children[0].name, "block2");
  EXPECT_EQ(children[0].numel, 16u);
  EXPECT_EQ(children[1].numel, 12u);
  struct Want {
    uint32_t round, children;
    uint64_t offset;
    const char* phase;
  } wants[] = {{1, 0, 28, "head"},       {2, 0, 28, "head"},       {3, 1, 16, "unfreezing"},
               {5, 1, 16, "unfreezing"}, {6, 2, 0, "full"},         {10, 2, 0, "full"},
               {11, 2, 0, "full"}};  // past the last round: scheduled as the last
  for (const auto& w : wants) {
    const auto s = protocols::round_schedule(j, w.round);
    EXPECT_EQ(s.children, w.children) << "round " << w.round;
    EXPECT_EQ(s.offset, w.offset) << "round " << w.round;
    EXPECT_EQ(s.trained, 37u - w.offset) << "round " << w.round;
    EXPECT_STREQ(s.phase, w.phase) << "round " << w.round;
  }
  // unfreeze_every = 0: everything at once after the warm-up; no warm-up: from round 1.
  EXPECT_EQ(protocols::round_schedule(job_with(2, 0), 2).children, 0u);
  EXPECT_EQ(protocols::round_schedule(job_with(2, 0), 3).children, 2u);
  EXPECT_EQ(protocols::round_schedule(job_with(0, 0), 1).children, 2u);
  EXPECT_STREQ(protocols::round_schedule(job_with(0, 0), 1).phase, "full");
}

// Three sites' figures, quantised and summed in the ring as the coordinator unmasks them:
// the decoded totals are the weighted means, and a site that does not share adds nothing.
TEST(Schedule, SecureFiguresDecodeToTheFederationsWeightedMeans) {
  namespace sa = protocols::secagg;
  const double bound = 100000;
  const auto spec = sa::make_quant_spec(3, 1.0, sa::Rounding::kDeterministic, true);
  protocols::SiteFigures a{20 / bound, 1.5, 0.5, 5, 5 * 1.2, 3};
  protocols::SiteFigures b{60 / bound, 0.5, 0.75, 15, 15 * 0.4, 12};
  protocols::SiteFigures silent;  // policy.share_training_metrics = false
  std::vector<uint32_t> sum(protocols::kSecureMetrics, 0);
  for (const auto& f : {a, b, silent}) {
    const auto q = sa::quantise(protocols::encode_metrics(f, bound), spec, sa::Secret32{});
    for (size_t i = 0; i < q.size(); ++i) sum[i] += q[i];
  }
  const auto t = protocols::decode_metrics(sa::dequantise_sum(sum, spec), bound);
  EXPECT_NEAR(t.train_loss, (20 * 1.5 + 60 * 0.5) / 80, 1e-3);
  EXPECT_NEAR(t.train_accuracy, (20 * 0.5 + 60 * 0.75) / 80, 1e-3);
  EXPECT_NEAR(t.validation_loss, (5 * 1.2 + 15 * 0.4) / 20, 1e-3);
  EXPECT_NEAR(t.validation_accuracy, 15.0 / 20, 1e-3);
  EXPECT_NEAR(t.validation_samples, 20, 1e-2);
  // Nobody shared: NaN, never a made-up 0.
  std::vector<uint32_t> none(protocols::kSecureMetrics, 0);
  EXPECT_TRUE(std::isnan(protocols::decode_metrics(sa::dequantise_sum(none, spec), bound).validation_loss));
}

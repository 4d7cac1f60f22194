// Clinical metrics against values worked out by hand (common/metrics.h).
#include <gtest/gtest.h>

#include "common/errors.h"
#include "common/metrics.h"

namespace fedtl::common {
namespace {

// 3 classes, 6 images. Predictions (first maximum of each row): 0 1 1 2 2 0, so the
// confusion matrix is [[1,1,0],[0,1,1],[1,0,1]]: every class has TP = FP = FN = 1, TN = 3.
// One-vs-rest AUC by counting pairs (a tie counts 1/2):
//   class 0: positives 0.7, 0.4 vs negatives 0.2 0.3 0.1 0.5: 4 + 3 = 7 of 8       -> 0.875
//   class 1: positives 0.6, 0.3 vs negatives 0.2 0.5 0.2 0.3: 4 + 2.5 = 6.5 of 8   -> 0.8125
//   class 2: positives 0.7, 0.2 vs negatives 0.1 0.1 0.2 0.4: 4 + 2.5 = 6.5 of 8   -> 0.8125
TEST(Metrics, HandWorkedThreeClassCaseWithTies) {
  const std::vector<int64_t> labels = {0, 0, 1, 1, 2, 2};
  const std::vector<float> scores = {0.7f, 0.2f, 0.1f, 0.4f, 0.5f, 0.1f, 0.2f, 0.6f, 0.2f,
                                     0.3f, 0.3f, 0.4f, 0.1f, 0.2f, 0.7f, 0.5f, 0.3f, 0.2f};
  const auto m = classification_metrics(labels, scores, 3);
  EXPECT_DOUBLE_EQ(m.accuracy, 0.5);
  EXPECT_DOUBLE_EQ(m.balanced_accuracy, 0.5);
  EXPECT_DOUBLE_EQ(m.macro_f1, 0.5);
  EXPECT_EQ(m.confusion, (std::vector<std::vector<int64_t>>{{1, 1, 0}, {0, 1, 1}, {1, 0, 1}}));
  ASSERT_EQ(m.per_class.size(), 3u);
  for (const auto& c : m.per_class) {
    EXPECT_DOUBLE_EQ(c.precision, 0.5);
    EXPECT_DOUBLE_EQ(c.recall, 0.5);
    EXPECT_DOUBLE_EQ(c.specificity, 0.75);
    EXPECT_DOUBLE_EQ(c.f1, 0.5);
    EXPECT_EQ(c.support, 2);
  }
  EXPECT_DOUBLE_EQ(*m.per_class[0].auc, 0.875);
  EXPECT_DOUBLE_EQ(*m.per_class[1].auc, 0.8125);
  EXPECT_DOUBLE_EQ(*m.per_class[2].auc, 0.8125);
  EXPECT_NEAR(*m.macro_auc, 2.5 / 3, 1e-12);
}

// Class 2 is never predicted: precision, recall and F1 are 0; its AUC still comes from its
// scores: positive 0.1 vs negatives 0.1 0.1 0.05 -> 0.5 + 0.5 + 1 = 2 of 3.
TEST(Metrics, ClassAbsentFromThePredictions) {
  const std::vector<int64_t> labels = {0, 1, 2, 0};
  const std::vector<float> scores = {0.6f, 0.3f, 0.1f, 0.2f, 0.7f, 0.1f, 0.5f, 0.4f, 0.1f, 0.9f, 0.05f, 0.05f};
  const auto m = classification_metrics(labels, scores, 3);
  EXPECT_DOUBLE_EQ(m.accuracy, 0.75);
  const auto& c2 = m.per_class[2];
  EXPECT_DOUBLE_EQ(c2.precision, 0.0);
  EXPECT_DOUBLE_EQ(c2.recall, 0.0);
  EXPECT_DOUBLE_EQ(c2.f1, 0.0);
  EXPECT_DOUBLE_EQ(c2.specificity, 1.0);
  EXPECT_EQ(c2.support, 1);
  EXPECT_NEAR(*c2.auc, 2.0 / 3, 1e-12);
  // Recalls 1, 1, 0 over three present classes.
  EXPECT_NEAR(m.balanced_accuracy, 2.0 / 3, 1e-12);
}

// A class with no true instances has no AUC and does not count in the macro averages.
TEST(Metrics, ClassWithoutSupportIsLeftOutOfTheAverages) {
  const std::vector<int64_t> labels = {0, 0, 1, 1};
  const std::vector<float> scores = {0.8f, 0.1f, 0.1f, 0.6f, 0.3f, 0.1f, 0.2f, 0.7f, 0.1f, 0.1f, 0.2f, 0.7f};
  const auto m = classification_metrics(labels, scores, 3);
  EXPECT_FALSE(m.per_class[2].auc.has_value());
  EXPECT_EQ(m.per_class[2].support, 0);
  EXPECT_DOUBLE_EQ(m.per_class[1].recall, 0.5);
  EXPECT_DOUBLE_EQ(m.balanced_accuracy, 0.75);  // (1 + 0.5) / 2, class 2 not counted
  EXPECT_DOUBLE_EQ(*m.per_class[0].auc, 1.0);  // 0.8, 0.6 above 0.2, 0.1
  // Class 1: positives 0.7, 0.2 vs negatives 0.1, 0.3: 2 + 1 = 3 of 4.
  EXPECT_DOUBLE_EQ(*m.per_class[1].auc, 0.75);
  EXPECT_DOUBLE_EQ(*m.macro_auc, 0.875);        // (1 + 0.75) / 2; class 2 has no AUC
}

TEST(Metrics, AucOfAllTiesIsOneHalfAndBadInputIsRefused) {
  EXPECT_DOUBLE_EQ(*roc_auc({0.5f, 0.5f, 0.5f, 0.5f}, {true, false, true, false}), 0.5);
  EXPECT_FALSE(roc_auc({0.1f, 0.2f}, {true, true}).has_value());
  EXPECT_THROW(classification_metrics({0, 1}, {0.5f, 0.5f}, 2), DataError);
  EXPECT_THROW(classification_metrics({0, 5}, {0.5f, 0.5f, 0.5f, 0.5f}, 2), DataError);
}

}  // namespace
}  // namespace fedtl::common

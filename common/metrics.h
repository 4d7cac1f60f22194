// Classification metrics a clinician reads: per class precision, recall (= sensitivity),
// specificity, F1 and one-vs-rest ROC AUC, and their macro averages. Computed from the softmax
// scores, so AUC uses every score, not only the argmax; tied scores count one half (the exact
// Mann-Whitney statistic with average ranks).
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

namespace fedtl::common {

struct ClassMetrics {
  double precision = 0;   // TP / (TP + FP); 0 when the class is never predicted
  double recall = 0;      // TP / (TP + FN) = sensitivity; 0 when the class is absent
  double specificity = 0; // TN / (TN + FP)
  double f1 = 0;          // 2PR / (P + R); 0 when P + R = 0
  std::optional<double> auc;  // one-vs-rest; none when the class has no positives or no negatives
  int64_t support = 0;    // true instances
};

struct ClassificationMetrics {
  double accuracy = 0;
  double balanced_accuracy = 0;  // mean recall over the classes present (support > 0)
  double macro_f1 = 0;           // mean F1 over the classes present
  std::optional<double> macro_auc;  // mean AUC over the classes where it is defined
  std::vector<ClassMetrics> per_class;
  std::vector<std::vector<int64_t>> confusion;  // [true][predicted]
};

// `scores`: n x k, row-major (one row of class scores per sample; the prediction is the first
// maximum of a row). `labels`: n values in [0, k). Throws DataError on mismatched sizes or a
// label out of range.
ClassificationMetrics classification_metrics(const std::vector<int64_t>& labels, const std::vector<float>& scores,
                                             int64_t k);

// ROC AUC of `scores` for the positives marked in `positive` (ties count 1/2). None when
// there are no positives or no negatives.
std::optional<double> roc_auc(const std::vector<float>& scores, const std::vector<bool>& positive);

}  // namespace fedtl::common

#include "common/metrics.h"

#include <algorithm>
#include <numeric>
#include <string>

#include "common/errors.h"

namespace fedtl::common {

std::optional<double> roc_auc(const std::vector<float>& scores, const std::vector<bool>& positive) {
  const size_t n = scores.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  // Average ranks (1-based) over runs of equal scores; the positives' rank sum gives the
  // Mann-Whitney U, in which a tied positive/negative pair counts 1/2.
  double pos_rank_sum = 0;
  uint64_t pos = 0;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && scores[order[j]] == scores[order[i]]) ++j;
    const double avg_rank = (static_cast<double>(i + 1) + static_cast<double>(j)) / 2.0;
    for (size_t t = i; t < j; ++t)
      if (positive[order[t]]) {
        pos_rank_sum += avg_rank;
        ++pos;
      }
    i = j;
  }
  const uint64_t neg = n - pos;
  if (pos == 0 || neg == 0) return std::nullopt;
  const double p = static_cast<double>(pos), q = static_cast<double>(neg);
  return (pos_rank_sum - p * (p + 1) / 2.0) / (p * q);
}

ClassificationMetrics classification_metrics(const std::vector<int64_t>& labels, const std::vector<float>& scores,
                                             int64_t k) {
  if (k < 1) throw DataError("metrics: at least one class is needed");
  const size_t n = labels.size(), kk = static_cast<size_t>(k);
  if (scores.size() != n * kk)
    throw DataError("metrics: " + std::to_string(scores.size()) + " scores for " + std::to_string(n) + " samples of " +
                    std::to_string(k) + " classes");
  ClassificationMetrics m;
  m.confusion.assign(kk, std::vector<int64_t>(kk, 0));
  int64_t correct = 0;
  for (size_t i = 0; i < n; ++i) {
    if (labels[i] < 0 || labels[i] >= k) throw DataError("metrics: label " + std::to_string(labels[i]) + " out of range");
    const float* row = scores.data() + i * kk;
    const size_t pred = static_cast<size_t>(std::max_element(row, row + kk) - row);  // first maximum
    ++m.confusion[static_cast<size_t>(labels[i])][pred];
    correct += static_cast<size_t>(labels[i]) == pred ? 1 : 0;
  }
  m.accuracy = n ? static_cast<double>(correct) / static_cast<double>(n) : 0.0;
  double recall_sum = 0, f1_sum = 0, auc_sum = 0;
  size_t present = 0, with_auc = 0;
  std::vector<float> col(n);
  std::vector<bool> is_c(n);
  for (size_t c = 0; c < kk; ++c) {
    ClassMetrics cm;
    int64_t tp = m.confusion[c][c], fn = 0, fp = 0;
    for (size_t o = 0; o < kk; ++o) {
      if (o == c) continue;
      fn += m.confusion[c][o];
      fp += m.confusion[o][c];
    }
    const int64_t tn = static_cast<int64_t>(n) - tp - fn - fp;
    cm.support = tp + fn;
    cm.precision = tp + fp ? static_cast<double>(tp) / static_cast<double>(tp + fp) : 0.0;
    cm.recall = tp + fn ? static_cast<double>(tp) / static_cast<double>(tp + fn) : 0.0;
    cm.specificity = tn + fp ? static_cast<double>(tn) / static_cast<double>(tn + fp) : 0.0;
    cm.f1 = cm.precision + cm.recall > 0 ? 2 * cm.precision * cm.recall / (cm.precision + cm.recall) : 0.0;
    for (size_t i = 0; i < n; ++i) {
      col[i] = scores[i * kk + c];
      is_c[i] = static_cast<size_t>(labels[i]) == c;
    }
    cm.auc = roc_auc(col, is_c);
    if (cm.support > 0) {
      ++present;
      recall_sum += cm.recall;
      f1_sum += cm.f1;
    }
    if (cm.auc) {
      ++with_auc;
      auc_sum += *cm.auc;
    }
    m.per_class.push_back(cm);
  }
  m.balanced_accuracy = present ? recall_sum / static_cast<double>(present) : 0.0;
  m.macro_f1 = present ? f1_sum / static_cast<double>(present) : 0.0;
  if (with_auc) m.macro_auc = auc_sum / static_cast<double>(with_auc);
  return m;
}

}  // namespace fedtl::common

#include "common/data/validation_split.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <string>

#include "common/errors.h"

namespace fedtl::common {

HoldoutSplit stratified_holdout(const std::vector<int64_t>& labels, double fraction, uint64_t seed) {
  if (!(fraction >= 0 && fraction < 1))
    throw DataError("validation fraction must be in [0, 1) (got " + std::to_string(fraction) + ")");
  HoldoutSplit out;
  if (fraction == 0) {
    out.train.resize(labels.size());
    std::iota(out.train.begin(), out.train.end(), int64_t{0});
    return out;
  }
  std::map<int64_t, std::vector<int64_t>> by_class;  // ordered: the draw does not depend on hashing
  for (size_t i = 0; i < labels.size(); ++i) by_class[labels[i]].push_back(static_cast<int64_t>(i));
  std::mt19937_64 rng(seed);
  std::vector<char> held(labels.size(), 0);
  for (auto& [label, idx] : by_class) {
    const size_t n = idx.size();
    if (n < 2) continue;
    size_t k = static_cast<size_t>(std::llround(fraction * static_cast<double>(n)));
    k = std::min(std::max<size_t>(k, 1), n - 1);
    std::shuffle(idx.begin(), idx.end(), rng);
    for (size_t j = 0; j < k; ++j) held[static_cast<size_t>(idx[j])] = 1;
  }
  for (size_t i = 0; i < labels.size(); ++i) (held[i] ? out.validation : out.train).push_back(static_cast<int64_t>(i));
  return out;
}

}  // namespace fedtl::common

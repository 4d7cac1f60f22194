// A site's validation hold-out (data.validation_fraction): which of its labelled images it
// trains on and which it only evaluates the global model on.
//
// Stratified by class: of a class's n images, max(1, round(fraction * n)) are held out, but
// never all of them (a class with one image keeps it for training), so every class a site has
// with two or more images is both trained on and validated. Which images are held out is drawn
// from `seed` alone: the same labels, fraction and seed give the same split on every machine.
// The seam for grouped splits (several images of one patient must fall on the same side): a
// splitter that takes groups returns the same HoldoutSplit.
#pragma once
#include <cstdint>
#include <vector>

namespace fedtl::common {

struct HoldoutSplit {
  std::vector<int64_t> train, validation;  // indices into the labels, each ascending
};

// fraction in [0, 1): 0 holds nothing out. Throws DataError for a fraction outside it.
HoldoutSplit stratified_holdout(const std::vector<int64_t>& labels, double fraction, uint64_t seed);

}  // namespace fedtl::common

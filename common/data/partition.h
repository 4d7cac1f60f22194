// Seeded partitioning of a labelled set over N sites. Deterministic: the same inputs and
// seed give the same partition on every run and platform build of fedtl.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fedtl::common {

enum class PartitionScheme { kIid, kDirichlet, kQuantitySkew };

struct PartitionSpec {
  PartitionScheme scheme = PartitionScheme::kDirichlet;
  int sites = 8;
  double alpha = 0.5;            // Dirichlet concentration (label skew); smaller = more skew
  int64_t samples_per_site = 0;  // >0: each site gets this many labels (its class mix drawn per
                                 // site for kDirichlet); 0: the whole set is split
  int64_t max_per_class = 0;     // >0: cap of labels per class per site
  double quantity_sigma = 1.0;   // kQuantitySkew: site sizes ~ LogNormal(0, sigma), normalised
  uint64_t seed = 0;
};

PartitionScheme parse_partition_scheme(const std::string& name);  // "iid"|"dirichlet"|"quantity"

// Returns, per site, indices into `labels` (disjoint across sites, each sorted ascending).
// `num_classes` is the number of distinct labels (labels are 0..num_classes-1).
// Throws ConfigError when the request cannot be met (e.g. more sites than samples,
// samples_per_site * sites > labels.size()).
std::vector<std::vector<int64_t>> partition(const std::vector<int64_t>& labels, int64_t num_classes,
                                            const PartitionSpec& spec);

// A held-out split that never separates a group (a patient): kept and held_out are disjoint,
// cover 0..labels.size()-1, each sorted ascending, and every group id lies wholly in one of
// them.
struct GroupSplit {
  std::vector<int64_t> kept, held_out;
};

// Splits the indices of `labels` into kept and held_out (about `fraction` of the images) by
// group. `groups` has one id per label (e.g. PatientID); an empty id, or an empty `groups`
// vector, makes that image a group of its own (an image-level split). Stratified by each
// group's majority label (ties: the smaller label): within each such stratum, groups are
// shuffled (seeded) and moved to held_out while the stratum's held-out image count stays at
// most round(fraction * stratum images), always at least one group when fraction > 0 and
// the stratum has two or more groups. fraction must be in [0, 1): 0 holds out nothing.
// Deterministic in its inputs and seed (the same on every platform build of fedtl).
// Throws ConfigError for a fraction outside [0, 1) or groups.size() not 0 or labels.size().
GroupSplit split_by_group(const std::vector<int64_t>& labels, const std::vector<std::string>& groups,
                          double fraction, uint64_t seed);

// counts[site][class]
std::vector<std::vector<int64_t>> class_counts(const std::vector<int64_t>& labels, int64_t num_classes,
                                               const std::vector<std::vector<int64_t>>& parts);
// Human-readable table of per-site class counts (one row per site, a total column and row).
std::string format_class_table(const std::vector<std::vector<int64_t>>& counts,
                               const std::vector<std::string>& class_names);

}  // namespace fedtl::common

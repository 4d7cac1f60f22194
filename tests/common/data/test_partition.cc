// Seeded partitioning over sites.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>

#include "common/errors.h"
#include "common/data/partition.h"

namespace fedtl::common {
namespace {

// n labels, class i % classes: a balanced set.
std::vector<int64_t> balanced(int64_t n, int64_t classes) {
  std::vector<int64_t> labels(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) labels[static_cast<size_t>(i)] = i % classes;
  return labels;
}

PartitionSpec spec(PartitionScheme scheme, int sites, int64_t per_site = 0, uint64_t seed = 1) {
  PartitionSpec s;
  s.scheme = scheme;
  s.sites = sites;
  s.samples_per_site = per_site;
  s.seed = seed;
  return s;
}

// Disjoint, sorted, in range, non-empty; returns the total count.
int64_t check_valid(const std::vector<std::vector<int64_t>>& parts, int64_t n, int sites) {
  EXPECT_EQ(parts.size(), static_cast<size_t>(sites));
  std::set<int64_t> seen;
  int64_t total = 0;
  for (const auto& p : parts) {
    EXPECT_FALSE(p.empty());
    EXPECT_TRUE(std::is_sorted(p.begin(), p.end()));
    for (int64_t i : p) {
      EXPECT_GE(i, 0);
      EXPECT_LT(i, n);
      EXPECT_TRUE(seen.insert(i).second) << "index " << i << " given to two sites";
    }
    total += static_cast<int64_t>(p.size());
  }
  return total;
}

// Mean over sites of the largest class's share of that site.
double mean_max_share(const std::vector<int64_t>& labels, int64_t classes, const std::vector<std::vector<int64_t>>& parts) {
  double sum = 0;
  for (const auto& row : class_counts(labels, classes, parts)) {
    const int64_t total = std::accumulate(row.begin(), row.end(), int64_t{0});
    sum += static_cast<double>(*std::max_element(row.begin(), row.end())) / static_cast<double>(total);
  }
  return sum / static_cast<double>(parts.size());
}

TEST(Partition, ParseScheme) {
  EXPECT_EQ(parse_partition_scheme("iid"), PartitionScheme::kIid);
  EXPECT_EQ(parse_partition_scheme("dirichlet"), PartitionScheme::kDirichlet);
  EXPECT_EQ(parse_partition_scheme("quantity"), PartitionScheme::kQuantitySkew);
  EXPECT_THROW(parse_partition_scheme("Dirichlet-ish"), ConfigError);
}

TEST(Partition, IidEvenSplitCoversEverything) {
  const auto labels = balanced(1003, 10);
  const auto parts = partition(labels, 10, spec(PartitionScheme::kIid, 8));
  EXPECT_EQ(check_valid(parts, 1003, 8), 1003);
  for (const auto& p : parts) {
    EXPECT_GE(p.size(), 125u);
    EXPECT_LE(p.size(), 126u);
  }
}

TEST(Partition, FixedSamplesPerSiteInEveryScheme) {
  const auto labels = balanced(2000, 10);
  for (auto scheme : {PartitionScheme::kIid, PartitionScheme::kDirichlet, PartitionScheme::kQuantitySkew}) {
    const auto parts = partition(labels, 10, spec(scheme, 6, 150));
    EXPECT_EQ(check_valid(parts, 2000, 6), 900) << static_cast<int>(scheme);
    if (scheme != PartitionScheme::kQuantitySkew) {
      for (const auto& p : parts) EXPECT_EQ(p.size(), 150u);
    }
  }
}

TEST(Partition, DirichletClassicSplitCoversEverything) {
  const auto labels = balanced(3000, 10);
  const auto parts = partition(labels, 10, spec(PartitionScheme::kDirichlet, 5));
  EXPECT_EQ(check_valid(parts, 3000, 5), 3000);
}

TEST(Partition, DeterministicForEqualSeedsDifferentOtherwise) {
  const auto labels = balanced(1000, 10);
  for (auto scheme : {PartitionScheme::kIid, PartitionScheme::kDirichlet, PartitionScheme::kQuantitySkew}) {
    for (int64_t per_site : {int64_t{0}, int64_t{100}}) {
      const auto a = partition(labels, 10, spec(scheme, 4, per_site, 42));
      const auto b = partition(labels, 10, spec(scheme, 4, per_site, 42));
      const auto c = partition(labels, 10, spec(scheme, 4, per_site, 43));
      EXPECT_EQ(a, b) << static_cast<int>(scheme) << " per_site=" << per_site;
      EXPECT_NE(a, c) << static_cast<int>(scheme) << " per_site=" << per_site;
    }
  }
}

TEST(Partition, MaxPerClassCapRespected) {
  const auto labels = balanced(5000, 10);
  for (auto scheme : {PartitionScheme::kIid, PartitionScheme::kDirichlet, PartitionScheme::kQuantitySkew}) {
    for (int64_t per_site : {int64_t{0}, int64_t{200}}) {
      auto s = spec(scheme, 5, per_site, 7);
      s.max_per_class = 30;
      s.alpha = 0.3;
      const auto parts = partition(labels, 10, s);
      check_valid(parts, 5000, 5);
      for (const auto& row : class_counts(labels, 10, parts)) {
        for (int64_t count : row) EXPECT_LE(count, 30) << static_cast<int>(scheme) << " per_site=" << per_site;
      }
      if (per_site > 0 && scheme != PartitionScheme::kQuantitySkew) {
        for (const auto& p : parts) EXPECT_EQ(p.size(), 200u);  // quota still met under the cap
      }
    }
  }
}

TEST(Partition, SmallAlphaSkewsLabels) {
  const auto labels = balanced(10000, 10);
  auto iid = spec(PartitionScheme::kIid, 20, 200, 3);
  auto dir = spec(PartitionScheme::kDirichlet, 20, 200, 3);
  dir.alpha = 0.1;
  const double iid_share = mean_max_share(labels, 10, partition(labels, 10, iid));
  const double dir_share = mean_max_share(labels, 10, partition(labels, 10, dir));
  EXPECT_LT(iid_share, 0.25);  // ~0.1 plus sampling noise
  EXPECT_GT(dir_share, 0.5);
  // The classic split skews too, and a large alpha is close to IID.
  auto classic = spec(PartitionScheme::kDirichlet, 10, 0, 3);
  classic.alpha = 0.1;
  EXPECT_GT(mean_max_share(labels, 10, partition(labels, 10, classic)), 0.4);
  auto flat = spec(PartitionScheme::kDirichlet, 10, 200, 3);
  flat.alpha = 1000;
  EXPECT_LT(mean_max_share(labels, 10, partition(labels, 10, flat)), 0.25);
}

TEST(Partition, QuantitySkewVariesSizes) {
  const auto labels = balanced(10000, 10);
  auto s = spec(PartitionScheme::kQuantitySkew, 10, 0, 5);
  s.quantity_sigma = 1.5;
  const auto parts = partition(labels, 10, s);
  EXPECT_EQ(check_valid(parts, 10000, 10), 10000);
  size_t lo = SIZE_MAX, hi = 0;
  for (const auto& p : parts) {
    lo = std::min(lo, p.size());
    hi = std::max(hi, p.size());
  }
  EXPECT_GT(hi, 3 * lo);
  s.quantity_sigma = 0;  // no skew: even sizes
  for (const auto& p : partition(labels, 10, s)) EXPECT_EQ(p.size(), 1000u);
}

TEST(Partition, ImpossibleRequestsAreConfigErrors) {
  const auto labels = balanced(100, 10);
  EXPECT_THROW(partition(labels, 10, spec(PartitionScheme::kIid, 101)), ConfigError);
  EXPECT_THROW(partition(labels, 10, spec(PartitionScheme::kIid, 4, 26)), ConfigError);
  EXPECT_THROW(partition(labels, 10, spec(PartitionScheme::kIid, 0)), ConfigError);
  auto capped = spec(PartitionScheme::kDirichlet, 2, 30);
  capped.max_per_class = 2;  // at most 20 per site
  EXPECT_THROW(partition(labels, 10, capped), ConfigError);
  auto bad_alpha = spec(PartitionScheme::kDirichlet, 2);
  bad_alpha.alpha = 0;
  EXPECT_THROW(partition(labels, 10, bad_alpha), ConfigError);
  EXPECT_THROW(partition({0, 1, 12}, 10, spec(PartitionScheme::kIid, 1)), ConfigError);
  // Passes the up-front checks but the cap cannot be met: 40 of class 0, 5 of class 1, and
  // each site may take only 10 of class 0, so every site would need 5 of class 1.
  std::vector<int64_t> lopsided(40, 0);
  lopsided.insert(lopsided.end(), 5, 1);
  for (auto scheme : {PartitionScheme::kIid, PartitionScheme::kDirichlet}) {
    auto greedy = spec(scheme, 3, 15);
    greedy.max_per_class = 10;
    try {
      partition(lopsided, 2, greedy);
      ADD_FAILURE() << "expected ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("max_per_class=10"), std::string::npos) << e.what();
    }
  }
  // Many sites, tiny alpha, little data: some site stays empty.
  auto starved = spec(PartitionScheme::kDirichlet, 10, 0, 1);
  starved.alpha = 0.001;
  try {
    partition(balanced(12, 2), 2, starved);
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("no samples"), std::string::npos) << e.what();
  }
}

TEST(Partition, ClassCountsAndTable) {
  const std::vector<int64_t> labels{0, 1, 1, 2, 2, 2};
  const std::vector<std::vector<int64_t>> parts{{0, 1}, {2, 3, 4, 5}};
  const auto counts = class_counts(labels, 3, parts);
  EXPECT_EQ(counts, (std::vector<std::vector<int64_t>>{{1, 1, 0}, {0, 1, 3}}));
  EXPECT_THROW(class_counts(labels, 3, {{6}}), ConfigError);

  const std::string named = format_class_table(counts, {"cat", "dog", "bird"});
  EXPECT_EQ(named,
            "site   cat  dog  bird  total\n"
            "0        1    1     0      2\n"
            "1        0    1     3      4\n"
            "total    1    2     3      6\n");
  const std::string ids = format_class_table(counts, {});
  EXPECT_EQ(ids.substr(0, ids.find('\n')), "site   0  1  2  total");
}

}  // namespace
}  // namespace fedtl::common

#include "common/data/partition.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <map>
#include <numeric>
#include <random>
#include <sstream>

#include "common/errors.h"

namespace fedtl::common {
namespace {

using Parts = std::vector<std::vector<int64_t>>;

// All randomness of one partition() call. mt19937_64's stream is fixed by the standard, and
// shuffling/uniform draws are done here from its raw output so they do not depend on the
// standard library; gamma and normal draws use libstdc++'s distributions (fedtl's toolchain).
class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}

  // Uniform in [0, n), unbiased (rejection of the short last bucket).
  uint64_t index(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = gen_(); while (x >= limit);
    return x % n;
  }
  double uniform01() { return static_cast<double>(gen_() >> 11) * 0x1.0p-53; }  // [0, 1)

  template <typename T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[index(i)]);
  }

  // p ~ Dir(alpha, ..., alpha) over k outcomes.
  std::vector<double> dirichlet(size_t k, double alpha) {
    std::gamma_distribution<double> gamma(alpha, 1.0);
    std::vector<double> p(k);
    double sum = 0;
    for (auto& x : p) sum += (x = gamma(gen_));
    if (!(sum > 0)) {
      // Tiny alpha can underflow every draw to 0; the limit is all mass on one outcome.
      std::fill(p.begin(), p.end(), 0.0);
      p[index(k)] = 1.0;
      return p;
    }
    for (auto& x : p) x /= sum;
    return p;
  }

  // log of a LogNormal(0, sigma) draw.
  double log_of_lognormal(double sigma) { return sigma * normal_(gen_); }

 private:
  std::mt19937_64 gen_;
  std::normal_distribution<double> normal_{0.0, 1.0};
};

// Draws an index with probability proportional to w (sum must be > 0).
size_t draw_weighted(Rng& rng, const std::vector<double>& w) {
  const double total = std::accumulate(w.begin(), w.end(), 0.0);
  double u = rng.uniform01() * total;
  size_t last = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    if (w[i] <= 0) continue;
    last = i;
    if (u < w[i]) return i;
    u -= w[i];
  }
  return last;  // rounding left u just above the sum
}

// Splits `total` into parts proportional to `weights` (largest remainder), each >= `floor`.
std::vector<int64_t> proportional_sizes(int64_t total, const std::vector<double>& weights, int64_t floor) {
  const size_t n = weights.size();
  std::vector<int64_t> sizes(n, floor);
  const int64_t rest = total - floor * static_cast<int64_t>(n);
  const double wsum = std::accumulate(weights.begin(), weights.end(), 0.0);
  std::vector<std::pair<double, size_t>> remainders;
  int64_t given = 0;
  for (size_t i = 0; i < n; ++i) {
    const double exact = static_cast<double>(rest) * weights[i] / wsum;
    const auto whole = static_cast<int64_t>(std::floor(exact));
    sizes[i] += whole;
    given += whole;
    remainders.emplace_back(exact - static_cast<double>(whole), i);
  }
  // Ties broken by index so the result is fully determined.
  std::sort(remainders.begin(), remainders.end(),
            [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
  for (size_t k = 0; given < rest; ++k, ++given) sizes[remainders[k % n].second] += 1;
  return sizes;
}

// Hands out the shuffled `pool` to sites, site s getting sizes[s] samples.
// fill_quota == false (the whole set is split): plain consecutive slices; samples over the cap
// are dropped. fill_quota == true (fixed quota per site): a site skips samples of classes it
// has filled and leaves them for later sites, so that it can still reach its quota.
Parts deal(const std::vector<int64_t>& pool, const std::vector<int64_t>& sizes, const std::vector<int64_t>& labels,
           int64_t num_classes, int64_t cap, bool fill_quota) {
  Parts parts(sizes.size());
  std::vector<char> taken(pool.size(), 0);
  size_t begin = 0;  // no sample before this one is still free
  for (size_t s = 0; s < sizes.size(); ++s) {
    std::vector<int64_t> per_class(static_cast<size_t>(num_classes), 0);
    auto admit = [&](int64_t idx) {
      auto& count = per_class[static_cast<size_t>(labels[static_cast<size_t>(idx)])];
      if (cap > 0 && count >= cap) return false;
      ++count;
      parts[s].push_back(idx);
      return true;
    };
    if (!fill_quota) {
      const size_t end = std::min(pool.size(), begin + static_cast<size_t>(sizes[s]));
      for (size_t i = begin; i < end; ++i) admit(pool[i]);
      begin = end;
      continue;
    }
    for (size_t i = begin; i < pool.size() && static_cast<int64_t>(parts[s].size()) < sizes[s]; ++i) {
      if (!taken[i] && admit(pool[i])) taken[i] = 1;
    }
    while (begin < pool.size() && taken[begin]) ++begin;
  }
  return parts;
}

std::string cap_reason(int64_t cap) {
  return cap > 0 ? " (max_per_class=" + std::to_string(cap) + " and class sizes leave too few)" : "";
}

// Throws unless every site s got quota[s] samples.
void check_quota(const Parts& parts, const std::vector<int64_t>& quota, int64_t cap) {
  for (size_t s = 0; s < parts.size(); ++s) {
    if (static_cast<int64_t>(parts[s].size()) < quota[s]) {
      throw ConfigError("partition: site " + std::to_string(s) + " could only get " +
                        std::to_string(parts[s].size()) + " of the " + std::to_string(quota[s]) +
                        " samples it needs" + cap_reason(cap));
    }
  }
}

Parts partition_iid(const std::vector<int64_t>& labels, int64_t num_classes, const PartitionSpec& spec, Rng& rng) {
  std::vector<int64_t> pool(labels.size());
  std::iota(pool.begin(), pool.end(), 0);
  rng.shuffle(pool);
  const auto n = static_cast<int64_t>(labels.size());
  std::vector<int64_t> sizes(static_cast<size_t>(spec.sites));
  for (int s = 0; s < spec.sites; ++s) {
    sizes[static_cast<size_t>(s)] =
        spec.samples_per_site > 0 ? spec.samples_per_site : n / spec.sites + (s < n % spec.sites ? 1 : 0);
  }
  auto parts = deal(pool, sizes, labels, num_classes, spec.max_per_class, spec.samples_per_site > 0);
  if (spec.samples_per_site > 0) check_quota(parts, sizes, spec.max_per_class);
  return parts;
}

Parts partition_quantity(const std::vector<int64_t>& labels, int64_t num_classes, const PartitionSpec& spec,
                         Rng& rng) {
  // LogNormal(0, sigma) draws, scaled by exp(-max log) so a large sigma cannot overflow.
  std::vector<double> weights(static_cast<size_t>(spec.sites));
  for (auto& w : weights) w = rng.log_of_lognormal(spec.quantity_sigma);
  const double top = *std::max_element(weights.begin(), weights.end());
  for (auto& w : weights) w = std::exp(w - top);
  const int64_t total =
      spec.samples_per_site > 0 ? spec.samples_per_site * spec.sites : static_cast<int64_t>(labels.size());
  const auto sizes = proportional_sizes(total, weights, 1);
  std::vector<int64_t> pool(labels.size());
  std::iota(pool.begin(), pool.end(), 0);
  rng.shuffle(pool);
  // Sizes are random targets, so a cap that trims a large site is not an error; the site
  // first tries to make up the difference from other classes.
  return deal(pool, sizes, labels, num_classes, spec.max_per_class, true);
}

std::vector<std::vector<int64_t>> class_pools(const std::vector<int64_t>& labels, int64_t num_classes, Rng& rng) {
  std::vector<std::vector<int64_t>> pools(static_cast<size_t>(num_classes));
  for (size_t i = 0; i < labels.size(); ++i) pools[static_cast<size_t>(labels[i])].push_back(static_cast<int64_t>(i));
  for (auto& pool : pools) rng.shuffle(pool);
  return pools;
}

// Each site draws its own class mix and takes samples_per_site samples from shared pools.
Parts partition_dirichlet_quota(const std::vector<int64_t>& labels, int64_t num_classes, const PartitionSpec& spec,
                                Rng& rng) {
  auto pools = class_pools(labels, num_classes, rng);
  std::vector<size_t> next(pools.size(), 0);  // first unused sample of each pool
  const auto k = static_cast<size_t>(num_classes);
  Parts parts(static_cast<size_t>(spec.sites));
  for (auto& part : parts) {
    const std::vector<double> mix = rng.dirichlet(k, spec.alpha);
    std::vector<int64_t> per_class(k, 0);
    std::vector<double> w(k);
    auto open = [&](size_t c) {
      return next[c] < pools[c].size() && (spec.max_per_class <= 0 || per_class[c] < spec.max_per_class);
    };
    while (static_cast<int64_t>(part.size()) < spec.samples_per_site) {
      // Classes still open to this site, weighted by its mix renormalised over them; when the
      // mix puts no weight on any open class, fall back to the remaining pool sizes (IID).
      double open_mass = 0, open_pool = 0;
      for (size_t c = 0; c < k; ++c) {
        w[c] = open(c) ? mix[c] : 0.0;
        open_mass += w[c];
        open_pool += open(c) ? static_cast<double>(pools[c].size() - next[c]) : 0.0;
      }
      if (open_pool == 0) break;  // reported by check_quota below
      if (!(open_mass > 0)) {
        for (size_t c = 0; c < k; ++c) w[c] = open(c) ? static_cast<double>(pools[c].size() - next[c]) : 0.0;
      }
      const size_t c = draw_weighted(rng, w);
      part.push_back(pools[c][next[c]++]);
      ++per_class[c];
    }
  }
  check_quota(parts, std::vector<int64_t>(parts.size(), spec.samples_per_site), spec.max_per_class);
  return parts;
}

// Classic label-skew split: each class's samples are divided among sites by Dir(alpha).
Parts partition_dirichlet_split(const std::vector<int64_t>& labels, int64_t num_classes, const PartitionSpec& spec,
                                Rng& rng) {
  const auto sites = static_cast<size_t>(spec.sites);
  Parts parts(sites);
  for (const auto& pool : class_pools(labels, num_classes, rng)) {
    const std::vector<double> share = rng.dirichlet(sites, spec.alpha);
    const auto n = static_cast<int64_t>(pool.size());
    double cum = 0;
    int64_t begin = 0;
    for (size_t s = 0; s < sites; ++s) {
      cum += share[s];
      // Cut points from the cumulative share; the last site takes the rounding rest.
      const int64_t end = s + 1 == sites ? n
                                         : std::clamp<int64_t>(std::llround(cum * static_cast<double>(n)), begin, n);
      const int64_t kept = spec.max_per_class > 0 ? std::min(end, begin + spec.max_per_class) : end;  // rest dropped
      parts[s].insert(parts[s].end(), pool.begin() + begin, pool.begin() + kept);
      begin = end;
    }
  }
  return parts;
}

}  // namespace

PartitionScheme parse_partition_scheme(const std::string& name) {
  if (name == "iid") return PartitionScheme::kIid;
  if (name == "dirichlet") return PartitionScheme::kDirichlet;
  if (name == "quantity") return PartitionScheme::kQuantitySkew;
  throw ConfigError("unknown partition scheme '" + name + "'; use iid, dirichlet or quantity");
}

std::vector<std::vector<int64_t>> partition(const std::vector<int64_t>& labels, int64_t num_classes,
                                            const PartitionSpec& spec) {
  const auto n = static_cast<int64_t>(labels.size());
  if (spec.sites < 1) throw ConfigError("partition: sites must be >= 1, got " + std::to_string(spec.sites));
  if (num_classes < 1) throw ConfigError("partition: num_classes must be >= 1, got " + std::to_string(num_classes));
  if (spec.samples_per_site < 0 || spec.max_per_class < 0) {
    throw ConfigError("partition: samples_per_site and max_per_class must be >= 0");
  }
  if (spec.scheme == PartitionScheme::kDirichlet && !(spec.alpha > 0)) {
    throw ConfigError("partition: Dirichlet alpha must be > 0, got " + std::to_string(spec.alpha));
  }
  if (spec.scheme == PartitionScheme::kQuantitySkew && !(spec.quantity_sigma >= 0)) {
    throw ConfigError("partition: quantity_sigma must be >= 0, got " + std::to_string(spec.quantity_sigma));
  }
  for (int64_t label : labels) {
    if (label < 0 || label >= num_classes) {
      throw ConfigError("partition: label " + std::to_string(label) + " outside 0.." + std::to_string(num_classes - 1));
    }
  }
  if (spec.sites > n) {
    throw ConfigError("partition: " + std::to_string(spec.sites) + " sites but only " + std::to_string(n) + " samples");
  }
  if (spec.samples_per_site > 0 && spec.samples_per_site > n / spec.sites) {
    throw ConfigError("partition: samples_per_site=" + std::to_string(spec.samples_per_site) + " x " +
                      std::to_string(spec.sites) + " sites exceeds the " + std::to_string(n) + " samples available");
  }
  if (spec.samples_per_site > 0 && spec.max_per_class > 0 && spec.samples_per_site > spec.max_per_class * num_classes) {
    throw ConfigError("partition: samples_per_site=" + std::to_string(spec.samples_per_site) +
                      " cannot be met with max_per_class=" + std::to_string(spec.max_per_class) + " over " +
                      std::to_string(num_classes) + " classes");
  }

  Rng rng(spec.seed);
  Parts parts;
  switch (spec.scheme) {
    case PartitionScheme::kIid:
      parts = partition_iid(labels, num_classes, spec, rng);
      break;
    case PartitionScheme::kQuantitySkew:
      parts = partition_quantity(labels, num_classes, spec, rng);
      break;
    case PartitionScheme::kDirichlet:
      if (spec.samples_per_site > 0) {
        parts = partition_dirichlet_quota(labels, num_classes, spec, rng);
      } else {
        // Small alpha can leave a site empty; redraw (deterministically, the stream goes on)
        // a bounded number of times before giving up.
        for (int attempt = 0; attempt < 100; ++attempt) {
          parts = partition_dirichlet_split(labels, num_classes, spec, rng);
          if (std::none_of(parts.begin(), parts.end(), [](const auto& p) { return p.empty(); })) break;
        }
      }
      break;
  }
  for (size_t s = 0; s < parts.size(); ++s) {
    if (parts[s].empty()) {
      throw ConfigError("partition: site " + std::to_string(s) + " received no samples" + cap_reason(spec.max_per_class) +
                        "; use fewer sites, a larger alpha or a larger data set");
    }
    std::sort(parts[s].begin(), parts[s].end());
  }
  return parts;
}

std::vector<std::vector<int64_t>> class_counts(const std::vector<int64_t>& labels, int64_t num_classes,
                                               const std::vector<std::vector<int64_t>>& parts) {
  std::vector<std::vector<int64_t>> counts(parts.size(), std::vector<int64_t>(static_cast<size_t>(std::max<int64_t>(num_classes, 0)), 0));
  for (size_t s = 0; s < parts.size(); ++s) {
    for (int64_t idx : parts[s]) {
      if (idx < 0 || idx >= static_cast<int64_t>(labels.size())) {
        throw ConfigError("class_counts: index " + std::to_string(idx) + " out of range for " +
                          std::to_string(labels.size()) + " labels");
      }
      const int64_t label = labels[static_cast<size_t>(idx)];
      if (label < 0 || label >= num_classes) {
        throw ConfigError("class_counts: label " + std::to_string(label) + " outside 0.." + std::to_string(num_classes - 1));
      }
      ++counts[s][static_cast<size_t>(label)];
    }
  }
  return counts;
}

std::string format_class_table(const std::vector<std::vector<int64_t>>& counts,
                               const std::vector<std::string>& class_names) {
  size_t classes = 0;
  for (const auto& row : counts) classes = std::max(classes, row.size());

  // Cells as text: header, one row per site, the total row; then pad each column.
  std::vector<std::vector<std::string>> cells;
  std::vector<std::string> header{"site"};
  for (size_t c = 0; c < classes; ++c) header.push_back(c < class_names.size() ? class_names[c] : std::to_string(c));
  header.push_back("total");
  cells.push_back(header);
  std::vector<int64_t> column_totals(classes, 0);
  int64_t grand_total = 0;
  for (size_t s = 0; s < counts.size(); ++s) {
    std::vector<std::string> row{std::to_string(s)};
    int64_t total = 0;
    for (size_t c = 0; c < classes; ++c) {
      const int64_t v = c < counts[s].size() ? counts[s][c] : 0;
      row.push_back(std::to_string(v));
      total += v;
      column_totals[c] += v;
    }
    row.push_back(std::to_string(total));
    grand_total += total;
    cells.push_back(row);
  }
  std::vector<std::string> last{"total"};
  for (int64_t v : column_totals) last.push_back(std::to_string(v));
  last.push_back(std::to_string(grand_total));
  cells.push_back(last);

  std::vector<size_t> width(classes + 2, 0);
  for (const auto& row : cells) {
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::ostringstream out;
  for (const auto& row : cells) {
    out << std::left << std::setw(static_cast<int>(width[0])) << row[0];
    for (size_t c = 1; c < row.size(); ++c) out << "  " << std::right << std::setw(static_cast<int>(width[c])) << row[c];
    out << '\n';
  }
  return out.str();
}

GroupSplit split_by_group(const std::vector<int64_t>& labels, const std::vector<std::string>& groups,
                          double fraction, uint64_t seed) {
  if (!(fraction >= 0 && fraction < 1))
    throw ConfigError("split_by_group: fraction must be in [0, 1) (got " + std::to_string(fraction) + ")");
  if (!groups.empty() && groups.size() != labels.size())
    throw ConfigError("split_by_group: " + std::to_string(groups.size()) + " group ids for " +
                      std::to_string(labels.size()) + " labels");
  // Groups in order of first appearance; an empty id is a group of one image.
  std::vector<std::vector<int64_t>> members;
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < labels.size(); ++i) {
    const std::string* id = groups.empty() ? nullptr : &groups[i];
    if (id == nullptr || id->empty()) {
      members.push_back({static_cast<int64_t>(i)});
      continue;
    }
    auto [it, fresh] = index.emplace(*id, members.size());
    if (fresh) members.emplace_back();
    members[it->second].push_back(static_cast<int64_t>(i));
  }
  // Stratum of a group: its majority label (ties: the smaller label).
  std::map<int64_t, std::vector<size_t>> strata;
  for (size_t g = 0; g < members.size(); ++g) {
    std::map<int64_t, int64_t> votes;
    for (int64_t i : members[g]) ++votes[labels[static_cast<size_t>(i)]];
    int64_t best = votes.begin()->first, best_n = 0;
    for (const auto& [label, n] : votes)
      if (n > best_n) best = label, best_n = n;
    strata[best].push_back(g);
  }
  Rng rng(seed);
  std::vector<bool> held(members.size(), false);
  for (auto& [label, gs] : strata) {
    (void)label;
    int64_t images = 0;
    for (size_t g : gs) images += static_cast<int64_t>(members[g].size());
    const auto target = static_cast<int64_t>(std::llround(fraction * static_cast<double>(images)));
    rng.shuffle(gs);
    int64_t taken = 0;
    bool any = false;
    for (size_t g : gs) {
      const auto n = static_cast<int64_t>(members[g].size());
      if (taken + n <= target || (!any && fraction > 0 && gs.size() >= 2 && g != gs.back())) {
        held[g] = true;
        taken += n;
        any = true;
      }
    }
  }
  GroupSplit out;
  for (size_t g = 0; g < members.size(); ++g)
    for (int64_t i : members[g]) (held[g] ? out.held_out : out.kept).push_back(i);
  std::sort(out.kept.begin(), out.kept.end());
  std::sort(out.held_out.begin(), out.held_out.end());
  return out;
}

}  // namespace fedtl::common

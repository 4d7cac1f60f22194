#include "protocols/secagg/graph.h"

#include <algorithm>
#include <numeric>

#include "common/errors.h"

namespace fedtl::protocols::secagg {
namespace {

uint32_t ceil_log2(uint32_t n) {
  uint32_t h = 0;
  while ((uint64_t{1} << h) < n) ++h;
  return h;
}

// Uniform integer in [0, bound) from the stream, by rejection (no modulo bias).
uint32_t uniform_below(MaskStream& s, uint32_t bound) {
  const uint32_t limit = static_cast<uint32_t>((uint64_t{1} << 32) - ((uint64_t{1} << 32) % bound));
  for (;;) {
    uint32_t v;
    s.next(&v, 1);
    if (limit == 0 || v < limit) return v % bound;
  }
}

}  // namespace

NeighbourGraph::NeighbourGraph(uint32_t n, const Bytes32& round_seed, uint32_t complete_max, uint32_t sparse_degree)
    : n_(n), degree_(0), complete_(true), adj_(n) {
  if (n < 2) throw ConfigError("secure aggregation needs at least 2 sites, got " + std::to_string(n));
  const uint32_t h = sparse_degree ? (sparse_degree + 1) / 2 : ceil_log2(n);
  complete_ = n <= complete_max || 2 * h >= n - 1;
  if (complete_) {
    degree_ = n - 1;
    for (uint32_t u = 0; u < n; ++u) {
      adj_[u].reserve(n - 1);
      for (uint32_t v = 0; v < n; ++v)
        if (v != u) adj_[u].push_back(v);
    }
    return;
  }
  degree_ = 2 * h;
  // Permutation from the public round seed (domain-separated from everything else).
  Secret32 seed = hkdf_sha256_32(Secret32(round_seed), "fedtl-secagg-v1", "neighbour graph");
  MaskStream stream(seed);
  std::vector<uint32_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0u);
  for (uint32_t i = n - 1; i > 0; --i) std::swap(perm[i], perm[uniform_below(stream, i + 1)]);
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t u = perm[i];
    for (uint32_t d = 1; d <= h; ++d) {
      adj_[u].push_back(perm[(i + d) % n]);
      adj_[u].push_back(perm[(i + n - d) % n]);
    }
  }
  for (auto& a : adj_) std::sort(a.begin(), a.end());
}

bool NeighbourGraph::adjacent(uint32_t u, uint32_t v) const {
  if (u >= n_ || v >= n_ || u == v) return false;
  if (complete_) return true;
  return std::binary_search(adj_[u].begin(), adj_[u].end(), v);
}

bool NeighbourGraph::induced_connected(const std::vector<uint32_t>& sites) const {
  if (sites.size() <= 1) return true;
  std::vector<char> in(n_, 0), seen(n_, 0);
  for (uint32_t s : sites) {
    if (s >= n_) return false;
    in[s] = 1;
  }
  if (complete_) return true;
  std::vector<uint32_t> stack{sites[0]};
  seen[sites[0]] = 1;
  size_t reached = 1;
  while (!stack.empty()) {
    const uint32_t u = stack.back();
    stack.pop_back();
    for (uint32_t v : adj_[u]) {
      if (in[v] && !seen[v]) {
        seen[v] = 1;
        ++reached;
        stack.push_back(v);
      }
    }
  }
  size_t distinct = 0;
  for (char c : in) distinct += c ? 1 : 0;
  return reached == distinct;
}

uint32_t neighbourhood_threshold(uint32_t t, uint32_t n, const NeighbourGraph& g) {
  if (g.complete()) return t;
  const uint32_t hood = g.degree() + 1;
  uint64_t tn = (static_cast<uint64_t>(t) * hood + n - 1) / n;
  tn = std::max<uint64_t>(tn, 2);
  tn = std::min<uint64_t>(tn, hood);
  return static_cast<uint32_t>(tn);
}

}  // namespace fedtl::protocols::secagg

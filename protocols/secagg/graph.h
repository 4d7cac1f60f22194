// The SecAgg+ neighbour graph (Bell et al. 2020): which pairs of sites share a pairwise mask
// and which sites hold shares of each other's secrets.
//   n <= complete_max : the complete graph (classic SecAgg, Bonawitz et al. 2017).
//   n >  complete_max : a Harary graph H(n, 2h) over a random permutation of the sites,
//                       h = ceil(log2 n) (or sparse_degree / 2 rounded up when set): site at position i of the permutation is adjacent to
//                       positions i±1 … i±h (mod n). Symmetric, 2h-regular, connected; the
//                       permutation comes deterministically from the public round seed
//                       (AES-128-CTR stream, unbiased Fisher–Yates), so every party computes
//                       the same graph without talking.
// A site's neighbourhood is itself plus its neighbours; its secrets are Shamir-shared across
// the neighbourhood with the per-neighbourhood threshold (see neighbourhood_threshold()).
// Immutable after construction; thread-safe to read.
#pragma once
#include <cstdint>
#include <vector>

#include "protocols/secagg/crypto.h"

namespace fedtl::protocols::secagg {

inline constexpr uint32_t kDefaultCompleteGraphMax = 64;

class NeighbourGraph {
 public:
  // sparse_degree: 0 = 2·ceil(log2 n); otherwise rounded up to even. Raise it when many
  // dropouts are expected (a neighbourhood must keep its threshold of survivors).
  NeighbourGraph(uint32_t n, const Bytes32& round_seed, uint32_t complete_max = kDefaultCompleteGraphMax,
                 uint32_t sparse_degree = 0);
  uint32_t size() const { return n_; }
  bool complete() const { return complete_; }
  // Number of neighbours of every site (n - 1 when complete).
  uint32_t degree() const { return degree_; }
  // Sorted ascending, excludes u.
  const std::vector<uint32_t>& neighbours(uint32_t u) const { return adj_.at(u); }
  bool adjacent(uint32_t u, uint32_t v) const;
  // True when the subgraph induced on `sites` is connected (vacuously for 0 or 1 site).
  // The server learns no finer sum than one per connected component of the survivors, so
  // secure aggregation requires this before unmasking.
  bool induced_connected(const std::vector<uint32_t>& sites) const;

 private:
  uint32_t n_, degree_;
  bool complete_;
  std::vector<std::vector<uint32_t>> adj_;
};

// Shares needed to recover a secret of one site, given the round threshold t over n sites:
// t itself for the complete graph; for the sparse graph the same fraction of a neighbourhood
// (degree + 1 sites), ceil(t·(degree+1)/n), at least 2 and at most degree + 1.
uint32_t neighbourhood_threshold(uint32_t t, uint32_t n, const NeighbourGraph& g);

}  // namespace fedtl::protocols::secagg

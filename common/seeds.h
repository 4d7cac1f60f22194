// Every random stream of a job is seeded from the job seed through derive_seed, each with its
// own stream tag, so no two streams share a seed and adding a stream never shifts another.
// docs/architecture.md ("Seeds") lists the streams and what mixes into each.
#pragma once
#include <cstdint>

namespace fedtl::common {

// Stream tags: the first index mixed into the job seed. Values are part of the digest of
// every job: never renumber one.
namespace seed_stream {
inline constexpr uint64_t kPartition = 0x5a17e5;      // the sites' partition of the labels
inline constexpr uint64_t kPretrain = 0xbacb0e;       // pre-training the built-in CNN
inline constexpr uint64_t kHeadInit = 0x4eadu;        // the new head's initial weights
inline constexpr uint64_t kShuffle = 0x5f1e;          // local training: (site, round) follow
inline constexpr uint64_t kSiteSampling = 0x5a3b1e;   // DP: which sites take part in a round
inline constexpr uint64_t kCentralNoise = 0xd9e5;     // DP: the coordinator's noise per round
inline constexpr uint64_t kSiteNoise = 0x5e7e;        // DP: a site's own noise per round
inline constexpr uint64_t kBaselineLocal = 0x10ca1;   // baselines: local-only, per site
inline constexpr uint64_t kBaselineCentral = 0xce17;  // baselines: centralised
inline constexpr uint64_t kScratchInit = 0x5c7a;      // baselines: the from-scratch CNN's weights
inline constexpr uint64_t kScratchTrain = 0x5c7b;     // baselines: its training
inline constexpr uint64_t kValidation = 0x7a11d;      // a site's validation hold-out, per site
}  // namespace seed_stream

// SplitMix64 finaliser applied to seed, then a, then b (each mixed in by xor before the next
// round): mix(mix(mix(seed) ^ a) ^ b). Pure; any inputs.
uint64_t derive_seed(uint64_t seed, uint64_t a, uint64_t b = 0);

}  // namespace fedtl::common

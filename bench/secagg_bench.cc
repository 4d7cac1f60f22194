// Secure aggregation benchmark (issue 4): client masking time, server unmasking time and
// bytes expansion over n in {10, 50, 100} sites x m in {100K, 1M} parameters x dropout in
// {0, 10, 30}%, plus unmask_vs_keystream_limit: the server's unmasking time at n = 100,
// m = 1M, 10% dropout divided by the time the same core takes to generate just the AES-128-CTR
// keystream that unmasking needs (same streams, same chunk size, same run).
//
// A plain executable: it prints {"secure_aggregation": {metric: value, ...}} on stdout for
// scripts/bench; progress goes to stderr. Times are medians of repeated runs (ms); one thread.
// Each site sends [w, w·Δ] (m + 1 uint32); dropped sites vanish after the share step (they
// never send a masked input), the case that costs the server most: their mask keys are rebuilt
// and every pairwise mask with a survivor is regenerated and removed.
// The server adds each masked input into its running sum on receipt (server_accumulate_ms, a
// memory-bound pass per input that overlaps with the network in a real round); unmasking
// (server_unmask_ms) is close_masked + add_unmask_shares + finish.
//   usage: bench_secagg [--reps N] [--quick]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "protocols/secagg/session.h"
#include "protocols/secagg/wire.h"

using namespace fedtl::protocols;
using namespace fedtl::protocols::secagg;
namespace v1 = fedtl::v1;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t k = v.size();
  return k % 2 ? v[k / 2] : 0.5 * (v[k / 2 - 1] + v[k / 2]);
}

struct Sample {
  double client_mask_ms = 0, server_unmask_ms = 0, server_accumulate_ms = 0, keystream_ms = 0;
  double expansion = 0, expansion_total = 0;
  size_t streams = 0;
};

Sample run_once(uint32_t n, uint64_t m, double dropout, uint32_t round, bool measure_keystream) {
  RoundConfig cfg;
  cfg.round = round;
  cfg.num_sites = n;
  cfg.threshold = std::max<uint32_t>(2, (2 * n + 4) / 5);  // 40%: rounds survive 30% dropout
  cfg.vector_length = m + 1;
  cfg.round_seed = derive_round_seed(2024, round);
  const uint32_t drops = static_cast<uint32_t>(dropout * n + 0.5);
  std::vector<char> dropped(n, 0);
  for (uint32_t i = 0; i < drops; ++i) dropped[(i * n) / drops + 1] = 1;  // spread out; site 0 (timed) stays

  std::mt19937 rng(round);
  std::vector<uint32_t> x(m + 1);
  for (auto& v : x) v = rng();

  Sample s;
  ServerSession server(cfg);
  std::vector<std::unique_ptr<ClientSession>> c;
  uint64_t up0 = 0;  // bytes site 0 sends, framing included
  auto framed = [](const Frame& f) { return f.payload.size() + fedtl::common::kFrameHeaderSize; };
  for (uint32_t u = 0; u < n; ++u) {
    c.push_back(std::make_unique<ClientSession>(cfg, u));
    auto k = c[u]->advertise_keys();
    if (u == 0) up0 += framed(encode(k));
    server.add_keys(k);
  }
  const auto list = server.close_keys();
  for (uint32_t u = 0; u < n; ++u) {
    auto sh = c[u]->share_keys(list);
    if (u == 0) up0 += framed(encode(sh));
    server.add_shares(sh);
  }
  server.close_shares();
  for (uint32_t u = 0; u < n; ++u) {
    if (dropped[u]) continue;
    const auto inbox = server.shares_for(u);
    const auto t0 = Clock::now();
    v1::SecAggMasked y = c[u]->mask_input(inbox, x);
    if (u == 0) {
      s.client_mask_ms = ms_since(t0);
      const uint64_t b = framed(encode(y));
      up0 += b;
      s.expansion = static_cast<double>(b) / (4.0 * m);
    }
    const auto t1 = Clock::now();
    server.add_masked(y);
    s.server_accumulate_ms += ms_since(t1);
  }
  auto t2 = Clock::now();
  const auto req = server.close_masked();
  double unmask = ms_since(t2);
  std::vector<v1::SecAggUnmaskShares> answers;
  for (uint32_t u : req.survivors()) {
    answers.push_back(c[u]->unmask(req));
    if (u == 0) up0 += framed(encode(answers.back()));
  }
  t2 = Clock::now();
  for (const auto& a : answers) server.add_unmask_shares(a);
  const auto sum = server.finish();
  unmask += ms_since(t2);
  s.server_unmask_ms = unmask;
  s.expansion_total = static_cast<double>(up0) / (4.0 * m);
  if (sum.size() != m + 1) std::abort();

  // Keystream the unmasking needed: one self-mask stream per survivor, one pairwise stream
  // per (dropped site, surviving neighbour).
  std::vector<char> alive(n, 0);
  for (uint32_t u : req.survivors()) alive[u] = 1;
  s.streams = req.survivors_size();
  for (uint32_t v : req.dropped())
    for (uint32_t w : server.graph().neighbours(v)) s.streams += alive[w];
  if (measure_keystream) {
    std::vector<Secret32> seeds;
    for (size_t i = 0; i < s.streams; ++i) seeds.push_back(Secret32::random());
    const auto t3 = Clock::now();
    volatile uint32_t sink = keystream_only(seeds, m + 1);
    (void)sink;
    s.keystream_ms = ms_since(t3);
  }
  return s;
}

std::string mlabel(uint64_t m) { return m >= 1000000 ? std::to_string(m / 1000000) + "M" : std::to_string(m / 1000) + "K"; }

}  // namespace

int main(int argc, char** argv) {
  int reps = 3;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    if (!std::strcmp(argv[i], "--quick")) quick = true;
  }
  spdlog::set_default_logger(spdlog::stderr_color_mt("secagg_bench"));  // stdout is for JSON
  std::map<std::string, double> out;
  uint32_t round = 1;
  const std::vector<uint32_t> ns = quick ? std::vector<uint32_t>{10, 100} : std::vector<uint32_t>{10, 50, 100};
  for (uint32_t n : ns) {
    for (uint64_t m : {100000ull, 1000000ull}) {
      for (int drop : {0, 10, 30}) {
        const bool headline = n == 100 && m == 1000000 && drop == 10;
        const int r = headline ? std::max(reps, 5) : reps;
        const std::string key = "n" + std::to_string(n) + "_m" + mlabel(m) + "_drop" + std::to_string(drop);
        if (out.count(key + "_aborted_rounds") == 0) out[key + "_aborted_rounds"] = 0;
        std::vector<double> cm, su, sa, ks, ratio;
        Sample last;
        for (int i = 0; i < r; ++i) {
          try {
            last = run_once(n, m, drop / 100.0, round++, headline);
          } catch (const RoundAborted& e) {  // SecAgg+: a neighbourhood lost too many sites
            out[key + "_aborted_rounds"] += 1;
            if (out[key + "_aborted_rounds"] < 20) --i;  // try another round
            continue;
          }
          cm.push_back(last.client_mask_ms);
          su.push_back(last.server_unmask_ms);
          sa.push_back(last.server_accumulate_ms);
          if (headline) {
            ks.push_back(last.keystream_ms);
            ratio.push_back(last.server_unmask_ms / last.keystream_ms);
          }
        }
        out[key + "_client_mask_ms"] = median(cm);
        out[key + "_server_unmask_ms"] = median(su);
        out[key + "_server_accumulate_ms"] = median(sa);
        out[key + "_expansion"] = last.expansion;
        out[key + "_expansion_total"] = last.expansion_total;
        std::fprintf(stderr, "%-22s client mask %8.2f ms  server unmask %8.2f ms  accumulate %8.2f ms  expansion %.5f (all messages %.5f)\n",
                     key.c_str(), median(cm), median(su), median(sa), last.expansion, last.expansion_total);
        if (headline) {
          out["keystream_limit_ms"] = median(ks);
          out["unmask_keystream_streams"] = static_cast<double>(last.streams);
          out["server_unmask_ms"] = median(su);
          out["client_mask_ms"] = median(cm);
          out["unmask_vs_keystream_limit"] = median(ratio);
          std::fprintf(stderr, "  keystream limit %.2f ms for %zu streams x %llu words: ratio %.3f\n", median(ks),
                       last.streams, static_cast<unsigned long long>(m + 1), median(ratio));
        }
        if (m == 1000000 && n == 100 && drop == 10) out["expansion"] = last.expansion;
      }
    }
  }
  if (!out.count("expansion")) out["expansion"] = out.rbegin()->second;
  std::printf("{\"secure_aggregation\": {");
  bool first = true;
  for (const auto& [k, v] : out) {
    std::printf("%s\n  \"%s\": %.6g", first ? "" : ",", k.c_str(), v);
    first = false;
  }
  std::printf("\n}}\n");
  return 0;
}

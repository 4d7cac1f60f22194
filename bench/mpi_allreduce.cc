// site_allreduce_vs_raw: throughput of a multi-rank site's gradient averaging
// (common::mpi::GradientAverager, what TrainOptions::average_gradients calls every step)
// against a raw MPI_Allreduce(SUM) of the same bytes on the same communicator.
//
//   mpirun -np 1+K bench_mpi_allreduce [--reps N] [--floats N,N,...]
//
// World rank 0 stands for the coordinator and only waits; ranks 1..K form one site. Each
// repetition times a block of iterations of each side, alternating, and the figure is the
// median over repetitions of (averager throughput / raw throughput). Site rank 0 prints one
// JSON object on stdout.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/mpi/site_sync.h"

using Clock = std::chrono::steady_clock;
using namespace fedtl::common::mpi;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 15;
  std::vector<size_t> sizes = {402181, size_t{4} << 20};  // the demo head's parameters; 16 MiB
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0) reps = std::max(1, std::atoi(argv[++i]));
    else if (std::strcmp(argv[i], "--floats") == 0) {
      sizes.clear();
      for (char* t = std::strtok(argv[++i], ","); t; t = std::strtok(nullptr, ",")) sizes.push_back(std::stoull(t));
    }
  }
  MpiContext ctx(&argc, &argv);
  if (ctx.size() < 3) {
    if (ctx.rank() == 0) std::fprintf(stderr, "bench_mpi_allreduce: run with mpirun -np 3 or more\n");
    return 2;
  }
  const auto layout = SiteLayout::make(ctx.size(), 1, ctx.size() - 1);
  SiteComm site(ctx, layout);
  nlohmann::json out;
  if (site.valid()) {
    auto averager = make_mpi_averager(site, std::chrono::minutes(5));
    nlohmann::json cases = nlohmann::json::array();
    std::vector<double> all_ratios;
    for (size_t n : sizes) {
      std::vector<float> buf(n, 1.0f);
      const size_t bytes = n * sizeof(float);
      const int iters = static_cast<int>(std::clamp<size_t>((size_t{64} << 20) / std::max<size_t>(bytes, 1), 5, 200));
      auto raw_block = [&] {
        MPI_Barrier(site.comm());
        const auto t0 = Clock::now();
        for (int i = 0; i < iters; ++i) MPI_Allreduce(MPI_IN_PLACE, buf.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, site.comm());
        return std::chrono::duration<double>(Clock::now() - t0).count();
      };
      auto avg_block = [&] {
        MPI_Barrier(site.comm());
        const auto t0 = Clock::now();
        for (int i = 0; i < iters; ++i) averager->average(buf.data(), n);
        return std::chrono::duration<double>(Clock::now() - t0).count();
      };
      raw_block();  // warm-up
      avg_block();
      std::vector<double> raw_s, avg_s, ratios;
      for (int r = 0; r < reps; ++r) {
        const double a = r % 2 ? raw_block() : avg_block();
        const double b = r % 2 ? avg_block() : raw_block();
        const double raw = r % 2 ? a : b, avg = r % 2 ? b : a;
        // Every rank must agree on the block times: take the slowest rank's.
        double t[2] = {raw, avg};
        MPI_Allreduce(MPI_IN_PLACE, t, 2, MPI_DOUBLE, MPI_MAX, site.comm());
        raw_s.push_back(t[0]);
        avg_s.push_back(t[1]);
        ratios.push_back(t[0] / t[1]);  // throughput(averager) / throughput(raw)
      }
      const double ratio = median(ratios);
      all_ratios.push_back(ratio);
      cases.push_back({{"floats", n},
                       {"bytes", bytes},
                       {"iterations", iters},
                       {"raw_gbps", bytes * iters / median(raw_s) / 1e9},
                       {"averager_gbps", bytes * iters / median(avg_s) / 1e9},
                       {"raw_ms_per_call", 1e3 * median(raw_s) / iters},
                       {"averager_ms_per_call", 1e3 * median(avg_s) / iters},
                       {"ratio", ratio}});
    }
    out["site_allreduce_vs_raw"] = *std::min_element(all_ratios.begin(), all_ratios.end());
    out["ranks_per_site"] = site.size();
    out["averager"] = averager->name();
    out["reps"] = reps;
    out["cases"] = cases;
  }
  ctx.barrier(std::chrono::minutes(10));
  if (site.valid() && site.rank() == 0) std::printf("%s\n", out.dump().c_str());
  return 0;
}

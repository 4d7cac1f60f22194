// `fedtl simulate`: the coordinator on this thread, one worker thread per site, connected by
// the in-process transport and speaking the real wire protocol.
#include <spdlog/spdlog.h>

#include <chrono>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <thread>

#include "app/run.h"
#include "app/coordinator_job.h"
#include "app/site_data.h"
#include "app/site_trainer.h"
#include "common/errors.h"
#include "common/seeds.h"
#include "common/files.h"
#include "common/transport/inproc.h"
#include "protocols/messages.h"
#include "common/data/partition.h"
#include "common/sha256.h"
#include "worker/worker.h"

namespace fedtl::app {
namespace {

using common::model::TransferModel;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

// A simulated site's end of its in-process connection. It takes a frame off the queue only
// once it holds one of the process's compute slots, and keeps the slot until it next waits for
// a frame (by then the frame is handled and its reply sent). However many sites a simulation
// runs, at most job.concurrency frames (each a round's parameters) are decoded and worked on at
// once; the others wait, undecoded, in their queues. While it waits for a slot the site sends a
// Heartbeat every `beat`, as a site that is training does, so the coordinator does not take it
// for dead.
class SlotGatedConnection final : public common::Connection {
 public:
  SlotGatedConnection(common::Connection& inner, common::ComputeSlots& slots, common::Millis beat)
      : inner_(inner), slots_(slots), beat_(beat), bell_(std::make_shared<common::ArrivalBell>()) {
    inner_.watch(bell_, 0);
  }
  ~SlotGatedConnection() override { inner_.watch(nullptr, 0); }

  void send(const common::Frame& frame) override {
    std::lock_guard<std::mutex> lock(send_mu_);
    inner_.send(frame);
  }
  common::Frame recv(common::Millis timeout) override {
    held_.reset();  // the previous frame is handled
    const auto deadline = Clock::now() + std::min<common::Millis>(timeout, std::chrono::hours(24 * 365));
    for (;;) {
      if (!bell_->wait_until(deadline))
        throw TimeoutError("no message from " + inner_.peer_name() + " within " + std::to_string(timeout.count()) +
                           " ms");
      for (;;) {
        held_.emplace(&slots_, beat_);
        if (held_->held()) break;
        held_.reset();
        v1::Heartbeat hb;
        send(protocols::to_frame(hb));  // waiting for a slot, not gone
      }
      try {
        return inner_.recv(common::Millis(0));
      } catch (const TimeoutError&) {
        held_.reset();  // a ring for a frame an earlier ring already took
      }
    }
  }
  void close() override { inner_.close(); }
  std::string peer_name() const override { return inner_.peer_name(); }
  std::string peer_address() const override { return inner_.peer_address(); }
  uint64_t bytes_sent() const override { return inner_.bytes_sent(); }
  uint64_t bytes_received() const override { return inner_.bytes_received(); }

 private:
  common::Connection& inner_;
  common::ComputeSlots& slots_;
  common::Millis beat_;
  std::shared_ptr<common::ArrivalBell> bell_;
  std::optional<common::ComputeSlots::Guard> held_;
  std::mutex send_mu_;  // the worker's heartbeat thread and this one both send
};

// Accuracy a site would see: per-class recall weighted by the site's class mix.
double mix_accuracy(const std::vector<std::vector<int64_t>>& confusion, const std::vector<int64_t>& counts) {
  double acc = 0, total = 0;
  for (size_t c = 0; c < confusion.size(); ++c) {
    const double row = static_cast<double>(std::accumulate(confusion[c].begin(), confusion[c].end(), int64_t{0}));
    if (row > 0) acc += static_cast<double>(counts[c]) * static_cast<double>(confusion[c][c]) / row;
    total += static_cast<double>(counts[c]);
  }
  return total > 0 ? acc / total : 0;
}

common::model::TrainOptions baseline_options(const app::JobConfig& cfg, uint64_t seed) {
  common::model::TrainOptions o = train_options(wire_training_spec(cfg));
  o.prox_mu = 0;  // the baselines train alone: no proximal term
  o.epochs = cfg.baselines.epochs;
  o.seed = seed;
  return o;
}

struct Baselines {
  double central = 0, local_mean = 0, scratch = 0;
  std::vector<common::model::EvalResult> local;  // per site
};

// Local-only (each site alone), centralised (all sites' labels pooled) and from scratch (the
// built-in CNN from random initialisation, every layer trained on the pool), all with the
// job's local optimiser for baselines.epochs epochs, evaluated on the global test set.
Baselines run_baselines(CoordinatorJob& job, const std::vector<std::vector<int64_t>>& parts) {
  const auto& cfg = job.config();
  const auto& data = job.data();
  const auto mspec = model_spec(cfg);
  Baselines b;
  for (size_t i = 0; i < parts.size(); ++i) {
    auto m = TransferModel::create(job.backbone(), mspec, cfg.seed);
    auto fs = m->features(data.target_train.subset(parts[i]));
    m->train(*fs, baseline_options(cfg, common::derive_seed(cfg.seed, common::seed_stream::kBaselineLocal, i)));
    b.local.push_back(m->evaluate(job.test_features()));
    b.local_mean += b.local.back().accuracy / static_cast<double>(parts.size());
  }
  std::vector<int64_t> pooled;
  for (const auto& p : parts) pooled.insert(pooled.end(), p.begin(), p.end());
  std::sort(pooled.begin(), pooled.end());
  const common::ImageSet pooled_set = data.target_train.subset(pooled);
  auto central = TransferModel::create(job.backbone(), mspec, cfg.seed);
  central->train(*central->features(pooled_set), baseline_options(cfg, common::derive_seed(cfg.seed, common::seed_stream::kBaselineCentral)));
  b.central = central->evaluate(job.test_features()).accuracy;
  common::model::ModelSpec sspec = mspec;
  sspec.freeze = common::model::Freeze::kNone;
  auto scratch =
      TransferModel::create(common::model::builtin_cnn(mspec.input, common::derive_seed(cfg.seed, common::seed_stream::kScratchInit)), sspec, cfg.seed);
  scratch->train(*scratch->features(pooled_set), baseline_options(cfg, common::derive_seed(cfg.seed, common::seed_stream::kScratchTrain)));
  b.scratch = scratch->evaluate(*scratch->features(data.target_test)).accuracy;
  return b;
}

}  // namespace

app::JobConfig apply_overrides(app::JobConfig cfg, const SimulateOverrides& o) {
  if (o.sites) {  // checked as int64 before it narrows into PartitionSpec::sites (an int)
    if (*o.sites < 1 || *o.sites > kMaxSites)
      throw ConfigError("--sites must be between 1 and " + std::to_string(kMaxSites) + " (got " +
                        std::to_string(*o.sites) + ")");
    cfg.partition.sites = static_cast<int>(*o.sites);
  }
  if (o.rounds) {
    if (*o.rounds < 1 || *o.rounds > kMaxRounds)
      throw ConfigError("--rounds must be between 1 and " + std::to_string(kMaxRounds) + " (got " +
                        std::to_string(*o.rounds) + ")");
    cfg.rounds = *o.rounds;
  }
  if (o.seed) cfg.seed = *o.seed;
  if (o.out) cfg.out = *o.out;
  if (o.baselines) cfg.baselines.enabled = true;
  if (o.resume) cfg.resume = true;
  if (o.force) cfg.force = true;
  if (o.status_port) cfg.status_port = *o.status_port;
  cfg.min_sites = std::min<int64_t>(cfg.min_sites, cfg.partition.sites);
  app::validate(cfg);
  return cfg;
}

void run_pretrain(const app::JobConfig& cfg, const std::string& out_path) {
  common::model::set_torch_threads(static_cast<int>(cfg.threads));
  TaskData data = load_task_data(cfg);
  std::string bytes = pretrain_backbone(cfg, data);
  common::write_file_atomic(out_path, bytes);
  const std::string sha = common::sha256_hex(bytes);
  spdlog::info("wrote backbone {} ({} bytes, sha256 {})", out_path, bytes.size(), sha);
  // What a job file adds to pin this very file (the coordinator then refuses any other).
  std::cout << "[backbone]\npath = \"" << out_path << "\"\nsha256 = \"" << sha << "\"\n";
}

SimulateResult run_simulate(const app::JobConfig& cfg, const common::StopSignal* stop) {
  CoordinatorJob job(cfg);
  if (stop) job.set_stop([stop] { return stop->requested(); });
  const auto& data = job.data();
  const int n = static_cast<int>(cfg.partition.sites);
  const auto parts = site_partition(cfg, data);
  const auto counts =
      common::class_counts(data.target_train.labels, static_cast<int64_t>(data.target_names.size()), parts);
  static const char* scheme_names[] = {"iid", "dirichlet", "quantity"};
  spdlog::info("partition: {} sites, scheme {}, alpha {}, {} labels per site (0 = split all)\n{}", n,
               scheme_names[static_cast<int>(cfg.partition.scheme)], cfg.partition.alpha,
               cfg.partition.samples_per_site, common::format_class_table(counts, data.target_names));

  std::vector<std::string> names;
  for (int i = 0; i < n; ++i) names.push_back("site-" + std::to_string(i));
  job.serve_status("inproc");
  auto coord = job.make_coordinator(names);
  // One worker thread per site, each with its end of an in-process connection.
  std::vector<std::unique_ptr<common::Connection>> worker_ends;
  for (int i = 0; i < n; ++i) {
    auto [coord_end, worker_end] = common::make_inproc_pair("coordinator", names[static_cast<size_t>(i)]);
    coord->add_site(std::move(coord_end));
    worker_ends.push_back(std::move(worker_end));
  }
  // job.concurrency sites compute at once (default: one per core); the rest wait their turn,
  // holding no model (the pool's are shared) and no decoded frame (SlotGatedConnection).
  const int concurrency = cfg.concurrency > 0 ? static_cast<int>(cfg.concurrency)
                                              : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  common::ComputeSlots slots(concurrency);
#ifdef __GLIBC__
  // glibc gives threads up to 8 malloc arenas per core, and each keeps the round-sized buffers
  // (1.6 MB frames for the demo) its threads freed: with a thread per site that retention grew
  // the peak by a third at 1,000 sites (1.23-1.48 GB against 1.0 GB with 4 arenas, measured).
  // A few arenas serve the few threads that allocate much (the pool's, the coordinator's).
  mallopt(M_ARENA_MAX, std::max(4, 2 * concurrency));
  // Every round allocates and frees a few frame-sized buffers per site. glibc's defaults give
  // such blocks back to the kernel (mmap and munmap, top-of-heap trimming), and each next one is
  // faulted in and zeroed again: page clearing was 9% of a 1,000-site run's cycles (perf), and
  // is gone with the blocks kept in the heap for reuse. Round 2 at 1,000 sites, three runs
  // each, alternated on a noisy machine: median 6.1 s against 7.3 s; peak RSS 1.01-1.14 GB
  // against 1.03-1.11 GB.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
  ModelPool models(concurrency);
  // Every site holds the backbone already (the coordinator's own bytes, shared read-only): the
  // handshake sends no chunks (the site's Hello lists the digest, as a site with a cache does).
  std::map<std::string, std::shared_ptr<const std::string>> backbones;
  backbones.emplace(job.backbone_sha256(), std::make_shared<const std::string>(job.backbone()));
  std::vector<std::string> worker_errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      const auto idx = static_cast<size_t>(i);
      try {
        SiteTrainer trainer(data.target_train.subset(parts[idx]), &models, nullptr);
        worker::WorkerOptions wopt;
        wopt.site_name = names[idx];
        wopt.backbone_cache = backbones;  // the process's one copy: nothing to download
        SlotGatedConnection gated(*worker_ends[idx], slots, wopt.heartbeat_interval);
        worker::Worker(gated, trainer, wopt).run();
      } catch (const std::exception& e) {
        worker_errors[idx] = e.what();
        spdlog::error("{} failed: {}", names[idx], e.what());
        worker_ends[idx]->close();
      }
    });
  }
  JobOutcome outcome;
  try {
    outcome = job.run(*coord, "inproc");
  } catch (...) {
    for (auto& e : worker_ends) e->close();
    for (auto& t : threads) t.join();
    throw;
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < worker_errors.size(); ++i)
    if (!worker_errors[i].empty() && outcome.result.sites[i].active)
      throw Error(names[i] + " failed: " + worker_errors[i]);

  json sites = json::array();
  for (size_t i = 0; i < static_cast<size_t>(n); ++i) {
    const auto& si = outcome.result.sites[i];
    sites.push_back({{"site", si.name}, {"samples", parts[i].size()}, {"class_counts", counts[i]},
                     {"federated_accuracy_on_site_mix", mix_accuracy(outcome.final_eval.confusion, counts[i])},
                     {"completed", si.active}});
  }
  json extra;
  json warnings = json::array();
  std::vector<common::PlotLine> lines;
  if (cfg.baselines.enabled) {
    const auto tb = Clock::now();
    const Baselines b = run_baselines(job, parts);
    for (size_t i = 0; i < b.local.size(); ++i) {
      sites[i]["local_only_accuracy"] = b.local[i].accuracy;
      sites[i]["local_only_accuracy_on_site_mix"] = mix_accuracy(b.local[i].confusion, counts[i]);
    }
    extra["centralized_accuracy"] = b.central;
    extra["local_only_mean_accuracy"] = b.local_mean;
    extra["scratch_accuracy"] = b.scratch;
    extra["baseline_epochs"] = cfg.baselines.epochs;
    const double fed = outcome.final_eval.accuracy;
    spdlog::info("baselines ({} epochs, {:.1f} s): centralised {:.2f}%, local-only mean {:.2f}%, from scratch {:.2f}%",
                 cfg.baselines.epochs, std::chrono::duration<double>(Clock::now() - tb).count(), 100 * b.central,
                 100 * b.local_mean, 100 * b.scratch);
    spdlog::info("federated vs centralised: {:+.2f} points; vs local-only mean: {:+.2f} points; "
                 "transfer (centralised) vs scratch: {:+.2f} points",
                 100 * (fed - b.central), 100 * (fed - b.local_mean), 100 * (b.central - b.scratch));
    lines = {{"centralised", b.central}, {"local-only mean", b.local_mean}, {"from scratch", b.scratch}};

    // Federated from scratch: the same federated job from a randomly re-initialised copy of the
    // backbone, everything trainable. What the pre-trained backbone is worth is the difference.
    const auto ts = Clock::now();
    app::JobConfig sc = cfg;
    sc.out = cfg.out + "/federated_scratch";
    sc.baselines.enabled = false;
    sc.resume = false;
    sc.baseline_run = true;
    sc.backbone.freeze = common::model::Freeze::kNone;
    sc.backbone.sha256.clear();
    sc.backbone.pretrain_if_missing = false;
    std::filesystem::create_directories(sc.out);
    sc.backbone.path = sc.out + "/backbone_random_init.pt";
    common::write_file_atomic(sc.backbone.path,
                              common::model::reinitialized_backbone(
                                  job.backbone(), common::derive_seed(cfg.seed, common::seed_stream::kScratchInit)));
    spdlog::info("baseline: the federated job from a randomly initialised backbone, everything trainable ({}/)", sc.out);
    const SimulateResult fsr = run_simulate(sc, stop);
    const double fs_seconds = std::chrono::duration<double>(Clock::now() - ts).count();
    const double gain = 100 * (fed - fsr.federated_accuracy);
    extra["federated_scratch_accuracy"] = fsr.federated_accuracy;
    extra["federated_scratch_seconds"] = fs_seconds;
    extra["transfer_gain_points"] = gain;
    spdlog::info("federated from scratch: {:.2f}% in {:.1f} s; transfer gain {:+.2f} points", 100 * fsr.federated_accuracy,
                 fs_seconds, gain);
    lines.push_back({"federated from scratch", fsr.federated_accuracy});
    if (gain < -1) {
      const std::string msg = fmt::format(
          "negative transfer: the pre-trained backbone does {:.2f} points worse than the same federated job from "
          "scratch; unfreeze more blocks (backbone.freeze, backbone.unfrozen), lower the backbone's learning rate, "
          "or check the domain gap between the backbone's training images and these",
          -gain);
      spdlog::warn("{}", msg);
      warnings.push_back({{"code", "negative_transfer"}, {"message", msg}});
    }
  }
  extra["warnings"] = warnings;
  // Like with like: each model on the same test images. "site mix" weighs the global test set's
  // per-class accuracy by the site's own class mix (what that site would see).
  std::string table =
      "each model on the site's class mix, then on the whole test set\n"
      "site        samples  federated(site mix)  local-only(site mix)  federated(global)  local-only(global)\n";
  auto pct = [](const json& s, const char* key) {
    return s.contains(key) ? fmt::format("{:.2f}%", 100 * s[key].get<double>()) : std::string("-");
  };
  for (const auto& s : sites) {
    table += fmt::format("{:<10}  {:>7}  {:>19}  {:>20}  {:>17}  {:>18}\n", s["site"].get<std::string>(),
                         s["samples"].get<size_t>(), pct(s, "federated_accuracy_on_site_mix"),
                         pct(s, "local_only_accuracy_on_site_mix"), fmt::format("{:.2f}%", 100 * outcome.final_eval.accuracy),
                         pct(s, "local_only_accuracy"));
  }
  spdlog::info("per-site accuracy:\n{}", table);
  extra["per_site"] = sites;
  job.write_summary(outcome, "inproc", extra, lines);
  return job_result(outcome, cfg.out);
}

SimulateResult job_result(const JobOutcome& o, const std::string& out_dir) {
  SimulateResult r;
  r.federated_accuracy = o.final_eval.accuracy;
  r.model_sha256 = o.model_sha256;
  r.out_dir = out_dir;
  r.rounds_applied = o.rounds_applied;
  r.interrupted = o.result.interrupted;
  r.stop_reason = o.result.stop_reason;
  return r;
}

void print_result(const SimulateResult& r, std::ostream& out) {
  out << "federated_accuracy " << r.federated_accuracy << "\nmodel_sha256 " << r.model_sha256 << "\nout " << r.out_dir
      << "\n";
}

std::string no_round_applied(const SimulateResult& r, int64_t rounds) {
  if (r.rounds_applied > 0 || r.interrupted) return "";
  std::string why = r.stop_reason.empty()
                        ? "every one of its " + std::to_string(rounds) +
                              " rounds was abandoned (fewer than job.min_sites sites reported within "
                              "job.round_timeout_s, or every update was dropped)"
                        : r.stop_reason;
  return "the job applied no round, so it produced no model: " + why + "; see the log and " + r.out_dir +
         "/metrics.jsonl";
}

int finish_job(const SimulateResult& r, int64_t rounds, std::ostream& out, std::ostream& err) {
  const std::string why = no_round_applied(r, rounds);
  if (!why.empty()) {
    err << "fedtl: error: " << why << "\n";
    return 1;
  }
  print_result(r, out);
  return 0;
}

}  // namespace fedtl::app

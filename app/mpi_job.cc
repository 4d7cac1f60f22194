// `fedtl mpi`: the coordinator on rank 0, sites on the other ranks (see mpi_command.h).
#include "app/mpi_job.h"

#include "common/errors.h"

#ifndef FEDTL_WITH_MPI

namespace fedtl::app {

int run_mpi(const app::JobConfig&, const MpiRunOptions&) {
  throw ConfigError("this fedtl was built without MPI (configure with -DFEDTL_WITH_MPI=ON and an MPI library)");
}
int run_mpi(common::mpi::MpiContext&, const app::JobConfig&, const MpiRunOptions&) {
  throw ConfigError("this fedtl was built without MPI");
}

}  // namespace fedtl::app

#else

#include <spdlog/spdlog.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#include "app/run.h"
#include "app/coordinator_job.h"
#include "app/job_setup.h"
#include "app/site_data.h"
#include "app/site_trainer.h"
#include "common/mpi/mpi_context.h"
#include "common/transport/mpi.h"
#include "common/mpi/site_sync.h"
#include "common/stop_signal.h"
#include "worker/worker.h"

namespace fedtl::app {
namespace {

using common::mpi::Millis;
using common::mpi::MpiContext;
using common::mpi::SiteComm;
using common::mpi::SiteCommand;
using common::mpi::SiteLayout;

Millis ms(double seconds) { return seconds_to_ms(seconds); }  // saturating, never overflows

std::string site_name(int s) { return "site-" + std::to_string(s); }

// What every rank needs to know about the run.
struct Plan {
  SiteLayout layout;
  Millis slack{0};       // MpiRunOptions::timeout_s
  Millis idle{0};        // the longest a site waits for the coordinator's next message
  Millis startup{0};     // how long sites wait for the coordinator to load data and backbone
};

// A SiteRuntime decorator for MpiRunOptions::before_train.
class HookedRuntime : public worker::SiteRuntime {
 public:
  HookedRuntime(worker::SiteRuntime& inner, std::function<void(int, uint32_t)> hook, int rank)
      : inner_(inner), hook_(std::move(hook)), rank_(rank) {}
  uint64_t prepare(const v1::JobSpec& job, const std::string& backbone) override {
    return inner_.prepare(job, backbone);
  }
  worker::LocalUpdate train_round(uint32_t round, const std::vector<float>& global) override {
    if (hook_) hook_(rank_, round);
    return inner_.train_round(round, global);
  }
  worker::ValidationFigures validate(uint32_t round, const std::vector<float>& params) override {
    return inner_.validate(round, params);
  }
  v1::InputStats input_stats() const override { return inner_.input_stats(); }
  std::optional<v1::SiteEvaluation> evaluate_site(uint32_t round, const std::vector<float>& params,
                                                  uint32_t personalize_epochs) override {
    return inner_.evaluate_site(round, params, personalize_epochs);
  }

 private:
  worker::SiteRuntime& inner_;
  std::function<void(int, uint32_t)> hook_;
  int rank_;
};

// One rank of a multi-rank site: the site's model and data, trained data-parallel. Every rank
// of the site holds the site's images and shuffles with the same seed; each trains on its
// slice of every batch (TrainOptions::rank_in_site) and the gradients are averaged every step,
// so the site takes the same steps as one rank with the whole batch would.
class SiteShard {
 public:
  SiteShard(common::ImageSet data, SiteComm& site, Millis timeout)
      : data_(std::move(data)), site_(site), timeout_(timeout) {
    cpu_ = common::mpi::make_mpi_averager(site_, timeout_);
  }

  uint64_t prepare(const v1::JobSpec& job, const std::string& backbone) {
    job_ = job;
    if (data_.size() == 0) throw DataError("this site has no training images");
    auto split = split_site_data(job, data_);  // as SiteTrainer: the same hold-out
    train_ = std::move(split.train);
    validation_ = std::move(split.validation);
    model_ = site_model(job, backbone);
    if (job.training().batch_size() % site_.size() != 0)
      spdlog::warn("site {}: batch size {} is not a multiple of its {} ranks; the ranks' slices differ in size and "
                   "their gradients are averaged unweighted",
                   site_.site(), job.training().batch_size(), site_.size());
    features_.reset();
    validation_features_.reset();
    input_stats_ = site_input_stats(job, train_);
    return static_cast<uint64_t>(train_.size());
  }

  const v1::InputStats& input_stats() const { return input_stats_; }

  // The leader's own evaluation of the final model (every rank holds the site's images): on
  // one rank, no collective, so the other ranks wait for the next instruction meanwhile.
  std::optional<v1::SiteEvaluation> evaluate_site(uint32_t round, const std::vector<float>& params,
                                                  uint32_t personalize_epochs) {
    if (!model_ || validation_.size() == 0) return std::nullopt;
    if (!validation_features_) validation_features_ = model_->features(validation_);
    if (!features_) features_ = model_->features(train_);
    return evaluate_at_site(*model_, job_, round, params, personalize_epochs, *validation_features_, *features_);
  }

  // The site's validation figures (the leader rank reports them; every rank holds the data).
  worker::ValidationFigures validate(uint32_t round, const std::vector<float>& params) {
    if (!model_) throw ModelError("validating before the job was prepared");
    load_round(*model_, job_, round, params);
    return evaluate_validation();
  }

  worker::LocalUpdate train_round(uint32_t round, const std::vector<float>& global) {
    if (!model_) throw ModelError("training before the job was prepared");
    if (!features_) features_ = model_->features(train_);
    load_round(*model_, job_, round, global);
    worker::ValidationFigures validation;
    if (site_.rank() == 0) validation = evaluate_validation();
    common::model::TrainOptions opt = train_options(job_, round);  // as SiteTrainer: same shuffles
    opt.rank_in_site = site_.rank();
    opt.ranks_in_site = site_.size();
    opt.average_gradients = [this](float* data, size_t count, bool on_cuda) { average(data, count, on_cuda); };
    opt.prescale_host_gradients = cpu_->expects_prescaled();  // the 1/k rides on the packing copy
    const auto st = model_->train(*features_, opt);
    // Each rank's loss and accuracy cover its slices, divided by the site's sample count:
    // their sum over the ranks is the site's.
    double stats[2] = {st.loss, st.accuracy};
    common::mpi::site_sum(site_, stats, 2, timeout_);
    worker::LocalUpdate up;
    up.validation = validation;
    up.delta = model_->params(model_->trained_offset());
    for (size_t i = 0; i < up.delta.size(); ++i) up.delta[i] -= global[i];
    up.num_samples = static_cast<uint64_t>(train_.size());
    up.train_loss = stats[0];
    up.train_accuracy = stats[1];
    up.train_seconds = st.seconds;
    return up;
  }

 private:
  void average(float* data, size_t count, bool on_cuda) {
    if (!on_cuda) return cpu_->average(data, count);
#ifdef FEDTL_WITH_NCCL
    if (!gpu_) {  // collective: every rank of the site reaches its first CUDA step together
      int dev = -1;
      std::string why;
      if (common::mpi::cuda_device_count(&why) > 0) dev = common::mpi::select_cuda_device(site_.context().local_rank());
      if (dev < 0) throw TransportError("gradients on a CUDA device but no device is usable: " + why);
      gpu_ = common::mpi::make_nccl_averager(site_, dev, timeout_);
      spdlog::info("site {} rank {}: NCCL gradient averaging on CUDA device {}", site_.site(), site_.rank(), dev);
    }
    gpu_->average(data, count);
#else
    throw TransportError("gradients on a CUDA device, but this fedtl was built without NCCL");
#endif
  }

  worker::ValidationFigures evaluate_validation() {
    worker::ValidationFigures v;
    if (validation_.size() == 0) return v;
    if (!validation_features_) validation_features_ = model_->features(validation_);
    v = validation_figures(model_->evaluate(*validation_features_));
    return v;
  }

  common::ImageSet data_, train_, validation_;
  SiteComm& site_;
  Millis timeout_;
  v1::JobSpec job_;
  std::unique_ptr<common::model::TransferModel> model_;
  std::unique_ptr<common::model::FeatureSet> features_, validation_features_;
  std::unique_ptr<common::mpi::GradientAverager> cpu_, gpu_;
  v1::InputStats input_stats_;
};

// The site leader's runtime: tells the site's other ranks what to do, then does it too.
class LeaderRuntime : public worker::SiteRuntime {
 public:
  LeaderRuntime(SiteShard& shard, SiteComm& site, Millis timeout) : shard_(shard), site_(site), timeout_(timeout) {}

  uint64_t prepare(const v1::JobSpec& job, const std::string& backbone) override {
    SiteCommand cmd;
    cmd.kind = SiteCommand::kPrepare;
    const std::string spec = job.SerializeAsString();
    cmd.payload = std::to_string(spec.size()) + "\n" + spec + backbone;
    common::mpi::exchange_command(site_, cmd, timeout_);
    return shard_.prepare(job, backbone);
  }

  worker::LocalUpdate train_round(uint32_t round, const std::vector<float>& global) override {
    SiteCommand cmd;
    cmd.kind = SiteCommand::kTrain;
    cmd.round = round;
    cmd.payload.assign(reinterpret_cast<const char*>(global.data()), global.size() * sizeof(float));
    common::mpi::exchange_command(site_, cmd, timeout_);
    return shard_.train_round(round, global);
  }

  // Only the leader evaluates: nothing changes on the other ranks.
  worker::ValidationFigures validate(uint32_t round, const std::vector<float>& params) override {
    return shard_.validate(round, params);
  }
  v1::InputStats input_stats() const override { return shard_.input_stats(); }
  std::optional<v1::SiteEvaluation> evaluate_site(uint32_t round, const std::vector<float>& params,
                                                  uint32_t personalize_epochs) override {
    return shard_.evaluate_site(round, params, personalize_epochs);
  }

  void stop() {
    SiteCommand cmd;
    cmd.kind = SiteCommand::kStop;
    common::mpi::exchange_command(site_, cmd, timeout_);
  }

 private:
  SiteShard& shard_;
  SiteComm& site_;
  Millis timeout_;
};

// Returns the process exit status rank 0 reports: 1 when the job applied no round.
int run_coordinator_rank(MpiContext& ctx, common::mpi::TransportComm& tcomm, const app::JobConfig& cfg,
                         const Plan& plan) {
  const int n = plan.layout.sites;
  CoordinatorJob job(cfg);
  std::vector<std::string> names;
  for (int s = 0; s < n; ++s) names.push_back(site_name(s));
  job.serve_status("mpi");
  auto coord = job.make_coordinator(names);
  common::mpi::MpiConnectionOptions copt;
  copt.send_timeout = plan.idle;
  copt.linger = std::min<Millis>(plan.slack, std::chrono::seconds(2));
  for (int s = 0; s < n; ++s)
    coord->add_site(common::mpi::make_mpi_connection(tcomm, plan.layout.leader_of(s), names[static_cast<size_t>(s)], copt));
  spdlog::info("coordinator on {}: {} sites x {} ranks over MPI ({} ranks)", ctx.host(), n, plan.layout.ranks_per_site,
               ctx.size());
  if (!ctx.barrier(plan.startup, "start barrier"))
    throw TimeoutError("not every site rank was ready within " + std::to_string(plan.startup.count() / 1000) + " s");
  JobOutcome o = job.run(*coord, "mpi");
  nlohmann::json sites = nlohmann::json::array();
  for (const auto& s : o.result.sites)
    sites.push_back({{"site", s.name}, {"samples", s.num_samples}, {"completed", s.active},
                     {"dropped_reason", s.dropped_reason}, {"ranks", plan.layout.ranks_per_site}});
  job.write_summary(o, "mpi",
                    {{"per_site", sites}, {"ranks_per_site", plan.layout.ranks_per_site}, {"world_size", ctx.size()}},
                    {});
  // The connections go with the coordinator; the caller's final barrier waits for the sites.
  const int status = finish_job(job_result(o, cfg.out), cfg.rounds, std::cout, std::cerr);
  std::cout.flush();
  std::cerr.flush();
  return status;
}

void run_leader_rank(MpiContext& ctx, common::mpi::TransportComm& tcomm, SiteComm& site, const app::JobConfig& cfg,
                     const Plan& plan, const MpiRunOptions& opt) {
  const int s = site.site();
  common::ImageSet images = site_slice(cfg, s);
  spdlog::debug("{}: {} labelled images", site_name(s), images.size());
  if (!ctx.barrier(plan.startup, "start barrier"))
    throw TimeoutError("the coordinator (rank 0) was not ready within " + std::to_string(plan.startup.count() / 1000) +
                       " s");
  common::mpi::MpiConnectionOptions copt;
  copt.send_timeout = plan.idle;
  copt.linger = std::min<Millis>(plan.slack, std::chrono::seconds(2));
  auto conn = common::mpi::make_mpi_connection(tcomm, 0, "coordinator", copt);
  worker::WorkerOptions wopt;
  wopt.site_name = site_name(s);
  wopt.idle_timeout = plan.idle;
  worker::WorkerResult r;
  if (plan.layout.ranks_per_site == 1) {
    SiteTrainer trainer(std::move(images));  // exactly simulate's site
    HookedRuntime rt(trainer, opt.before_train, ctx.rank());
    r = worker::Worker(*conn, rt, wopt).run();
  } else {
    SiteShard shard(std::move(images), site, plan.slack);
    LeaderRuntime leader(shard, site, plan.idle);
    HookedRuntime rt(leader, opt.before_train, ctx.rank());
    r = worker::Worker(*conn, rt, wopt).run();
    leader.stop();
  }
  if (!r.success) throw Error("the coordinator ended the job: " + r.shutdown_reason);
  spdlog::info("{}: {} ({} rounds trained)", site_name(s), r.shutdown_reason, r.rounds_trained);
}

void run_follower_rank(MpiContext& ctx, SiteComm& site, const app::JobConfig& cfg, const Plan& plan,
                       const MpiRunOptions& opt) {
  SiteShard shard(site_slice(cfg, site.site()), site, plan.slack);
  if (!ctx.barrier(plan.startup, "start barrier"))
    throw TimeoutError("the coordinator (rank 0) was not ready within " + std::to_string(plan.startup.count() / 1000) +
                       " s");
  for (;;) {
    SiteCommand cmd;
    common::mpi::exchange_command(site, cmd, plan.idle + plan.slack);  // the leader waits up to idle
    switch (cmd.kind) {
      case SiteCommand::kPrepare: {
        const auto nl = cmd.payload.find('\n');
        if (nl == std::string::npos) throw ProtocolError("malformed prepare instruction");
        const size_t len = std::stoull(cmd.payload.substr(0, nl));
        if (nl + 1 + len > cmd.payload.size()) throw ProtocolError("malformed prepare instruction");
        v1::JobSpec job;
        if (!job.ParseFromString(cmd.payload.substr(nl + 1, len)))
          throw ProtocolError("malformed job in the prepare instruction");
        shard.prepare(job, cmd.payload.substr(nl + 1 + len));
        break;
      }
      case SiteCommand::kTrain: {
        if (cmd.payload.size() % sizeof(float) != 0) throw ProtocolError("malformed train instruction");
        std::vector<float> global(cmd.payload.size() / sizeof(float));
        std::memcpy(global.data(), cmd.payload.data(), cmd.payload.size());
        if (opt.before_train) opt.before_train(ctx.rank(), cmd.round);
        shard.train_round(cmd.round, global);
        break;
      }
      case SiteCommand::kStop:
        return;
    }
  }
}

double env_double(const char* name, double fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  try {
    return std::stod(v);
  } catch (const std::exception&) {
    throw ConfigError(std::string(name) + "='" + v + "' is not a number");
  }
}

}  // namespace

int run_mpi(MpiContext& ctx, const app::JobConfig& cfg, const MpiRunOptions& opt) {
  Plan plan;
  const std::string role = ctx.rank() == 0 ? "coordinator" : "site rank";
  try {
    int k = opt.ranks_per_site;
    if (k <= 0) {
      const double e = env_double("FEDTL_RANKS_PER_SITE", 1);
      if (!(e >= 1 && e <= 65536) || e != std::floor(e))  // range first: the cast of 1e300 is undefined
        throw ConfigError("FEDTL_RANKS_PER_SITE must be a positive integer (got " + std::to_string(e) + ")");
      k = static_cast<int>(e);
    }
    const double timeout_s = opt.timeout_s > 0 ? opt.timeout_s : env_double("FEDTL_MPI_TIMEOUT_S", 300);
    if (!std::isfinite(timeout_s) || timeout_s < kMinSeconds || timeout_s > kMaxSeconds)
      throw ConfigError("the MPI timeout (--mpi-timeout or FEDTL_MPI_TIMEOUT_S) must be between 0.001 and " +
                        std::to_string(static_cast<int64_t>(kMaxSeconds)) + " seconds");
    plan.layout = SiteLayout::make(ctx.size(), static_cast<int>(cfg.partition.sites), k);
    plan.slack = ms(timeout_s);
    plan.idle = ms(cfg.round_timeout_s + timeout_s);
    plan.startup = ms(cfg.federation.join_timeout_s + timeout_s);
  } catch (const ConfigError&) {
    if (ctx.rank() == 0) throw;  // every rank saw the same; rank 0 says it
    return 1;
  }

  // Log lines say which rank wrote them.
  const int site = plan.layout.site_of(ctx.rank());
  spdlog::set_pattern(ctx.rank() == 0 ? "[%H:%M:%S.%e] [rank 0 coordinator] %^%l%$ %v"
                                      : fmt::format("[%H:%M:%S.%e] [rank {} site-{}/{}] %^%l%$ %v", ctx.rank(), site,
                                                    plan.layout.rank_in_site(ctx.rank())));
  ctx.install_termination_message();
  if (opt.stop) {
    const int rank = ctx.rank();
    opt.stop->on_stop([rank] {
      std::fprintf(stderr,
                   "fedtl: error: rank %d: stopped by mpirun (SIGTERM/SIGINT): another rank failed or the job was "
                   "cancelled; see the first error above\n",
                   rank);
      std::fflush(stderr);
      ::_exit(143);
    });
  }
  common::model::set_torch_threads(static_cast<int>(cfg.threads));

  std::string where = ctx.rank() == 0 ? "coordinator" : site_name(site);
  int status = 0;  // rank 0: 1 when the job applied no round
  try {
    common::mpi::TransportComm tcomm(ctx);
    SiteComm site_comm(ctx, plan.layout);
    if (ctx.rank() == 0)
      status = run_coordinator_rank(ctx, tcomm, cfg, plan);
    else if (site_comm.rank() == 0)
      run_leader_rank(ctx, tcomm, site_comm, cfg, plan, opt);
    else
      run_follower_rank(ctx, site_comm, cfg, plan, opt);
    // Every rank finishes together; one that does not arrive hung or failed.
    if (!ctx.barrier(plan.slack, "end barrier"))
      ctx.abort_job(where + ": not every rank reached the end of the job within " +
                    std::to_string(plan.slack.count() / 1000) + " s (a rank hung or failed); ending the job");
  } catch (const std::exception& e) {
    ctx.abort_job(where + ": " + e.what() + "; ending the job");
  }
  return status;
}

int run_mpi(const app::JobConfig& cfg, const MpiRunOptions& opt) {
  MpiContext ctx;
  return run_mpi(ctx, cfg, opt);
}

}  // namespace fedtl::app

#endif  // FEDTL_WITH_MPI

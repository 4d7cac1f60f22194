// The coordinator's side of a job, shared by every way of running it (simulate, the TLS
// coordinator, mpi): data and backbone set-up, the global model and its evaluation, the
// Coordinator, and the outputs (metrics.jsonl, summary.json, model.pt, accuracy.svg).
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "app/job_setup.h"
#include "common/checkpoint.h"
#include "app/config.h"
#include "app/status_board.h"
#include "common/model/transfer_model.h"
#include "common/report.h"
#include "coordinator/coordinator.h"

namespace fedtl::app {

struct JobOutcome {
  coordinator::Coordinator::Result result;
  common::model::EvalResult final_eval;
  std::string model_sha256;       // model.pt: the best-validation round's model with job.keep_best
  std::string model_last_sha256;  // the last round's model (model_last.pt when they differ)
  std::vector<std::pair<double, double>> curve;  // (round, accuracy)
  std::vector<std::pair<double, double>> validation_curve;  // (round, validation accuracy)
  std::vector<std::pair<double, std::string>> phase_changes;  // (first round, phase)
  uint32_t best_round = 0;        // 0: no round validated
  bool stopped_early = false;
  double seconds = 0;
  // Rounds whose aggregate was applied to the global model, resumed ones included (0: the
  // model is still the initial one; the command exits non-zero, see run.h).
  size_t rounds_applied = 0;
};

struct SimulateResult;
// The result a command reports for a finished job (run.h).
SimulateResult job_result(const JobOutcome& o, const std::string& out_dir);

class CoordinatorJob {
 public:
  // Loads the data (test set for evaluation; training sets for simulations), the backbone
  // (pre-training it when configured and absent) and builds the global model. Throws
  // fedtl::Error on bad configuration or data.
  // with_training = false (a TLS coordinator): only the test set is loaded, plus the source
  // classes when the backbone must be pre-trained here.
  explicit CoordinatorJob(const app::JobConfig& cfg, bool with_training = true);
  ~CoordinatorJob();

  const app::JobConfig& config() const { return cfg_; }
  const TaskData& data() const { return data_; }
  const std::string& backbone() const { return backbone_; }
  const std::string& backbone_sha256() const { return backbone_sha_; }
  common::model::TransferModel& model() { return *model_; }
  const common::model::FeatureSet& test_features() const { return *test_features_; }

  // Mixed into the coordinator's DP noise seed: 0 keeps simulations reproducible; the TLS
  // coordinator draws a random one so that sites cannot predict (and remove) the noise.
  void set_noise_secret(uint64_t secret) { noise_secret_ = secret; }
  // Sites hold certificates (TLS): secure rounds are signed (SecAggSpec.signed_keys) and the
  // coordinator checks the signatures with this verifier of the federation CA.
  void set_site_verifier(std::shared_ptr<const common::SiteVerifier> v) { site_verifier_ = std::move(v); }
  // Polled between rounds; true stops the job cleanly (checkpoint kept, outputs written).
  void set_stop(std::function<bool()> stop) { stop_ = std::move(stop); }
  // Starts the status page (app/status_board.h) when job.status_port is set, before
  // make_coordinator; it serves until this object is destroyed. Returns the port (0: off).
  // Throws ConfigError when the address cannot be bound.
  uint16_t serve_status(const std::string& transport);
  const StatusBoard* status_board() const { return status_.get(); }
  // A coordinator for this job; site_names: the federation in index order (may be empty).
  std::unique_ptr<coordinator::Coordinator> make_coordinator(const std::vector<std::string>& site_names);
  // Runs the rounds, logging progress and appending metrics.jsonl and writing
  // <out>/checkpoint.bin after every round; then evaluates, exports model.pt and computes the
  // digest. With cfg.resume, continues from the checkpoint (same job required).
  JobOutcome run(coordinator::Coordinator& coord, const std::string& transport);
  // Writes summary.json (the standard keys + `extra`) and accuracy.svg with `baselines`.
  void write_summary(const JobOutcome& o, const std::string& transport, const nlohmann::json& extra,
                     const std::vector<common::PlotLine>& baselines);

 private:
  class Evaluator;
  // Adds the sites' input statistics and domain-gap warnings to a summary (write_summary).
  void add_domain_gap(const JobOutcome& o, nlohmann::json& s) const;
  // Adds each site's own validation metrics of the final model (and personalised ones).
  void add_site_evaluations(const JobOutcome& o, nlohmann::json& s) const;
  app::JobConfig cfg_;
  TaskData data_;
  std::string backbone_, backbone_sha_;
  std::unique_ptr<common::model::TransferModel> model_;
  std::unique_ptr<common::model::FeatureSet> test_features_;
  std::unique_ptr<Evaluator> evaluator_;
  std::chrono::steady_clock::time_point start_;
  std::function<bool()> stop_;
  std::optional<common::Checkpoint> resume_;  // loaded by make_coordinator when cfg.resume
  std::string fingerprint_;
  std::vector<std::string> metrics_lines_;  // metrics.jsonl so far, for the checkpoint
  double noise_multiplier_ = 0;   // as sent in the job (calibrated from target_epsilon when asked)
  uint64_t noise_secret_ = 0;     // see set_noise_secret
  std::shared_ptr<const common::SiteVerifier> site_verifier_;
  // Declared last: the server (which reads the board) stops before anything it reads goes.
  std::unique_ptr<StatusBoard> status_;
  std::unique_ptr<common::HttpServer> status_server_;
};

}  // namespace fedtl::app

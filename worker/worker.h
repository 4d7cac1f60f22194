// The site side of the round protocol, over one Connection:
//
//   -> Hello(version, site name, backbone digests held)
//   <- JobSpec                     (or Error: refused)
//   <- BackboneChunk*              (skipped when the site already holds the digest)
//   -> Ready(num_samples)          after verifying SHA-256 and caching features
//   repeat: <- RoundStart(params)  -> Update(delta)
//   <- Shutdown
//
// Blocking; run it on its own thread. Only updates and aggregate metrics leave the site.
#pragma once
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "common/errors.h"
#include "common/transport/connection.h"
#include "common/transport/signing.h"
#include "worker/site_runtime.h"

namespace fedtl::worker {

struct WorkerOptions {
  std::string site_name;
  // Backbones this site already holds, by SHA-256 hex digest (the download is skipped).
  // Shared, read-only: the simulated sites of one process hold one copy between them.
  std::map<std::string, std::shared_ptr<const std::string>> backbone_cache;
  // The longest the coordinator may stay silent (no message, not even a Heartbeat: it sends
  // one at least every CoordinatorOptions::heartbeat_interval) before the worker gives up with
  // CoordinatorSilent. Site policy coordinator_silence_s sets it for `fedtl worker`.
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(5)};
  // The largest backbone this site downloads (site policy max_backbone_bytes): a JobSpec
  // announcing more is refused (Error kPolicyRefused, PolicyError) before anything is allocated.
  uint64_t max_backbone_bytes = uint64_t{2} << 30;
  // Called once the job is known and its backbone verified (bytes empty when it was not
  // downloaded: too large for the site), before any data is touched, with the site's verdict
  // ("" = accepted, else why it is refused). `fedtl worker` logs what the site is about to run.
  std::function<void(const v1::JobSpec& job, const std::string& backbone, const std::string& verdict)> on_job;
  // Inspect only: receive the JobSpec and the backbone, verify the digest, call on_job (a
  // policy refusal is reported there rather than sent), then tell the coordinator the site is
  // leaving (Error kLeaving) and return (WorkerResult::inspected) without preparing anything.
  bool inspect_only = false;
  // Called with the verified backbone after a download (e.g. to store it on disk).
  std::function<void(const std::string& sha256, const std::string& bytes)> on_backbone;
  // Site policy: returns why the job is refused, or "" to accept it (see site_policy.h).
  std::function<std::string(const v1::JobSpec&)> check_job;
  // false: Update carries only the delta and sample count (no local loss/accuracy).
  bool share_training_metrics = true;
  bool share_input_stats = true;  // Ready.input_stats (policy.share_input_stats)
  // true: one info line per round trained here (images, seconds, local loss and accuracy),
  // so a site's own log says what it did; simulations leave it off (the coordinator's round
  // lines say it for all sites).
  bool log_rounds = false;
  // While local training runs, a Heartbeat goes to the coordinator this often, so a slow site
  // is never taken for a dead one (heartbeats come from their own thread).
  std::chrono::milliseconds heartbeat_interval{std::chrono::seconds(5)};
  // Differential privacy noise of this site (distributed/local modes) is seeded from the job
  // seed, round and site mixed with this secret. 0 (simulations) makes runs reproducible —
  // and the noise predictable to whoever knows the job seed; real sites draw a random one.
  uint64_t noise_secret = 0;
  // A site with a certificate (TLS) signs its secure-aggregation keys and survivor sets with
  // it and checks everyone else's against the federation CA; it refuses a secure job whose
  // keys are not signed (a coordinator could substitute them). Both or neither.
  // A RoundStart whose deadline is not finite or longer than this is refused (kBadMessage).
  double max_round_seconds = 86400;
  std::shared_ptr<const common::IdentitySigner> signer;
  std::shared_ptr<const common::SiteVerifier> verifier;
};

// The coordinator sent nothing for WorkerOptions::idle_timeout: it fell silent (hung,
// partitioned, or holding the site hostage). The message says for how long.
class CoordinatorSilent : public fedtl::TimeoutError {
 public:
  using fedtl::TimeoutError::TimeoutError;
};

struct WorkerResult {
  uint32_t rounds_trained = 0;
  std::string shutdown_reason;
  bool success = false;
  bool resume_expected = false;  // the coordinator stopped early and will resume
  bool inspected = false;        // inspect_only: the job was shown, the site left before Ready
};

class Worker {
 public:
  // Does not own the connection or the runtime; both must outlive run().
  Worker(common::Connection& conn, SiteRuntime& runtime, WorkerOptions options);
  // Runs until Shutdown. Throws ProtocolError/TransportError/fedtl::Error on failure; a
  // refusal or a failure to prepare is first reported to the coordinator as an Error frame.
  // A job outside the site's policy: PolicyError (after telling the coordinator why). A job
  // with an enum value this build does not know or impossible work (protocols/job_check.h):
  // ConfigError after an Error kBadConfig. A RoundStart whose parameters do not match the
  // job's layout or are not finite: ProtocolError after an Error kBadMessage, before training.
  // A coordinator silent for longer than idle_timeout once it sent the job: CoordinatorSilent
  // (permanent); before the job: a plain TimeoutError (it may still be starting; retry).
  WorkerResult run();

 private:
  // The job's backbone: the cached copy itself (shared, not copied) or the verified download.
  std::shared_ptr<const std::string> receive_backbone(const v1::JobSpec& job);
  // The next frame from the coordinator within idle_timeout; CoordinatorSilent otherwise.
  common::Frame recv_from_coordinator();
  // The next frame: one set aside by await_round() or a new one from the connection.
  common::Frame next_frame();
  // Sends are serialised: the heartbeat thread and the protocol thread share the connection.
  void send(const common::Frame& f);
  // Local training with heartbeats around it.
  LocalUpdate train_with_heartbeats(const v1::RoundStart& start, const std::vector<float>& global, bool* below_clip);
  // Plain round: train, send Update. Secure round: the four secure aggregation steps
  // around local training (worker/secure_update.cc). Returns false if the round was
  // abandoned (SecAggAbort, or the coordinator moved on).
  bool plain_round(const v1::RoundStart& start, const std::vector<float>& global);
  // RoundStart.validate_only without secure aggregation: the validation figures in an Update
  // with an empty delta.
  void validation_round(const v1::RoundStart& start, const std::vector<float>& params);
  // RoundStart.site_evaluation (after the validate-only answer): the SiteEvaluation frame,
  // declined when the policy shares no metrics or the runtime has nothing to report.
  void site_evaluation(const v1::JobSpec& job, const v1::RoundStart& start, const std::vector<float>& params);
  // Local training, then the job's DP treatment of the delta (clip, this site's noise).
  LocalUpdate train_private(const v1::RoundStart& start, const std::vector<float>& global, bool* below_clip);
  bool secure_round(const v1::JobSpec& job, const v1::RoundStart& start, const std::vector<float>& global);
  bool secure_steps(const v1::JobSpec& job, const v1::RoundStart& start, const std::vector<float>& global);
  // Waits for a message of type M for `round`. Returns nullopt when the coordinator
  // abandoned the round or moved on (the frame that says so is kept for next_frame()).
  template <typename M>
  std::optional<M> await_round(uint32_t round);

  std::optional<common::Frame> pending_;
  std::mutex send_mu_;
  v1::JobSpec job_;
  uint64_t num_samples_ = 0;  // what prepare() returned (a validate-only secure round's weight)
  common::Connection& conn_;
  SiteRuntime& runtime_;
  WorkerOptions opt_;
};

}  // namespace fedtl::worker

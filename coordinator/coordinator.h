// The coordinator's round state machine: plain code over the transport interface (it never
// sees Asio, TLS or MPI). One Coordinator runs one job:
//
//   handshake: <- Hello   -> JobSpec (+ BackboneChunk* unless the site holds the digest)
//              <- Ready(num_samples)
//   round r:   -> RoundStart(global params) to every active site
//              <- Update(delta) from each until the round deadline, folded as it arrives
//              into an exact weighted sum (fixed point => the same bits in any arrival
//              order), apply the server strategy, evaluate, report a RoundRecord
//   end:       -> Shutdown
//
// Sites are slots named by the job (CoordinatorOptions::site_names; a connection's
// peer_name() — the certificate's CN over TLS — picks its slot, whose position is the site
// index). With a Listener, sites join while the coordinator waits for them and rejoin
// before any later round after a lost connection. A site that fails (closed connection,
// malformed or invalid update, refusal) is dropped and the job goes on; a site that misses
// the deadline is left out of that round only. Fewer than min_sites reports abandon the
// round (the global model is unchanged). Aggregation is exact (protocols::WeightedMean), so
// arrival order never changes the result.
// Not thread-safe: run() blocks the calling thread until the job ends.
#pragma once
#include <chrono>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/checkpoint.h"
#include "common/transport/connection.h"
#include "common/transport/signing.h"
#include "protocols/fedtl.pb.h"
#include "protocols/strategy.h"

namespace fedtl::coordinator {

class HeartbeatSender;

struct RoundEval {
  double accuracy = 0, loss = 0;
  double balanced_accuracy = 0;
  double macro_auc = std::numeric_limits<double>::quiet_NaN();  // NaN: undefined (one class only)
};

// Evaluates global parameters on the coordinator's held-out data.
class Evaluator {
 public:
  virtual ~Evaluator() = default;
  virtual RoundEval evaluate(const std::vector<float>& params) = 0;
};

// Coordinator-side settings of differential privacy (the job's PrivacySpec says the mode,
// sigma and clip norm; see protocols/dp/).
struct PrivacyOptions {
  double delta = 1e-5;
  double target_epsilon = 0;        // > 0: stop before a round would exceed it
  bool adaptive_clip = false;       // central mode, plain aggregation only
  double target_quantile = 0.5, clip_learning_rate = 0.2;
  uint64_t noise_secret = 0;        // mixed into the central noise seed; 0 = reproducible
};

struct SiteInfo;
// Best-model selection and early stopping on the federation's validation loss. observe() takes
// each round's validation loss in round order (NaN: no site reported one; it neither improves
// nor counts against patience). A loss below the best so far (strictly) becomes the best and
// resets the count; otherwise the count grows, and with patience > 0 observe() returns true
// once it reaches patience: stop. Not thread-safe; plain state, checkpointed by the caller.
class ValidationTracker {
 public:
  explicit ValidationTracker(uint32_t patience = 0) : patience_(patience) {}
  bool observe(uint32_t round, double loss, const std::vector<float>& params);
  void restore(const common::Checkpoint& c);  // best_* and rounds_since_best
  void save(common::Checkpoint& c) const;
  bool has_best() const { return best_round_ > 0; }
  uint32_t best_round() const { return best_round_; }
  double best_loss() const { return best_loss_; }
  uint32_t rounds_since_best() const { return since_; }
  const std::vector<float>& best_params() const { return best_params_; }

 private:
  uint32_t patience_;
  uint32_t best_round_ = 0, since_ = 0;
  double best_loss_ = std::numeric_limits<double>::quiet_NaN();
  std::vector<float> best_params_;
};

struct CoordinatorOptions {
  v1::JobSpec job;            // sent to every site (site_index filled per site)
  std::string backbone;       // the backbone file's bytes; digest/size must match job
  size_t chunk_bytes = 1u << 20;
  std::chrono::milliseconds handshake_timeout{std::chrono::minutes(10)};
  std::chrono::milliseconds round_timeout{std::chrono::minutes(10)};
  // A site that sends nothing at all (no update, no heartbeat) for this long during a round
  // is taken for dead and dropped; one that keeps sending heartbeats is waited for until the
  // round deadline and then left out of that round only.
  std::chrono::milliseconds liveness_timeout{std::chrono::seconds(60)};
  // The coordinator is never silent for long either: a site that has its job and has heard
  // nothing from the coordinator for this long gets a Heartbeat (from a thread of its own, so
  // waiting for other sites, evaluating or checkpointing never starves it). Sites bound the
  // silence they tolerate (site policy coordinator_silence_s), so keep this well below it.
  // 0: no heartbeats.
  std::chrono::milliseconds heartbeat_interval{std::chrono::seconds(10)};
  size_t min_sites = 1;
  // Each training round sends RoundStart to this many of the active sites (0: all), drawn
  // without replacement from a generator seeded by the job seed and the round (so a resumed
  // job draws as the uninterrupted one would); the others are not expected that round. Takes
  // the place of DP's per-site coin (the job's sampling rate is then this / the sites).
  size_t sites_per_round = 0;
  // The federation's sites in index order. Empty: add_site() appends whoever connects.
  std::vector<std::string> site_names;
  // With a listener: how long to wait for every listed site before starting with at least
  // min_sites of them.
  std::chrono::milliseconds join_timeout{std::chrono::minutes(10)};
  // Below min_sites connected before a round, wait this long for sites to (re)join (with a
  // listener; logged once a minute with who is missing) instead of abandoning rounds; then
  // stop, resumable. Without a listener nobody can rejoin: the job stops at once.
  std::chrono::milliseconds quorum_wait{std::chrono::hours(1)};
  PrivacyOptions privacy;
  // A site cannot buy the model: its weight in a plain round's mean is its claimed sample
  // count clipped to the bound (max_samples_per_site; 0: the largest count any site declared in
  // Ready, itself clipped to sample_count_cap), or 1 for every site with equal_weighting.
  // Clipped claims are logged. (Secure rounds: sites encode count / weight_bound <= 1 and the
  // unmasked weight sum is range-checked; DP rounds weigh every site equally.)
  uint64_t max_samples_per_site = 0;
  uint64_t sample_count_cap = 100000;
  bool equal_weighting = false;
  // Signed secure rounds (job.secagg().signed_keys): checks the sites' signatures against the
  // federation CA, so a site that signs badly is dropped at its step rather than making the
  // honest sites abandon the round. Null: only the sites check them.
  std::shared_ptr<const common::SiteVerifier> site_verifier;
  // Plain rounds: an update whose L2 norm exceeds this is dropped like a non-finite one.
  // 0: 1e4 * sqrt(number of parameters). Under secure aggregation no single update is seen.
  double max_update_norm = 0;
  // Called after every completed round with the state to checkpoint (job_fingerprint and
  // metrics_lines left for the caller). An exception stops the job.
  std::function<void(const common::Checkpoint&)> checkpoint;
  // Continue a job from this checkpoint (its round is complete). The initial parameters given
  // to the constructor must be the checkpoint's.
  std::optional<common::Checkpoint> resume;
  // Polled between rounds: true ends the job cleanly after the current round (SIGTERM).
  std::function<bool()> stop_requested;
  // Called (on the run() thread) whenever a site's state changes and before every round, with
  // every slot in index order: what a status page shows. Must be quick and must not throw.
  std::function<void(const std::vector<SiteInfo>&)> on_sites;
  // Federated validation (JobSpec.training.validation_fraction > 0): sites report, with each
  // round's update, the figures of the model that round started from, so round r's record and
  // checkpoint are completed by round r+1's reports (after the last round, by a validate-only
  // RoundStart). Stop when the validation loss has not improved for this many rounds (0 =
  // never); the round in flight when that is decided is not applied.
  uint32_t early_stopping_patience = 0;
  // After the last round's validate-only exchange, ask every site for its own validation
  // metrics of that model (RoundStart.site_evaluation -> SiteEvaluation, in the clear), and
  // keep them in SiteInfo::evaluation. Needs validation (TrainingSpec.validation_fraction > 0).
  bool site_evaluation = true;
};

struct RoundRecord {
  uint32_t round = 0;
  double accuracy = 0, loss = 0;   // global model after this round, on the evaluation set
  double balanced_accuracy = 0, macro_auc = std::numeric_limits<double>::quiet_NaN();
  uint32_t connection_replacements = 0;  // so far, all sites (see SiteInfo::replacements)
  double train_loss = 0;           // sample-weighted mean of the sites' local losses
  size_t sites_reported = 0, sites_active = 0;
  bool applied = false;            // false: quorum missed, round abandoned
  uint64_t bytes_up = 0, bytes_down = 0;  // this round, all sites, framing included
  double seconds = 0;
  double epsilon = 0;              // DP: privacy spent so far at PrivacyOptions::delta (0: no DP)
  double clip_norm = 0;            // DP: the clip norm used this round
  double train_accuracy = std::numeric_limits<double>::quiet_NaN();
  // The global model after this round on the sites' validation splits: sample-weighted mean
  // loss and accuracy (NaN: no validation reported), and the images they cover.
  double validation_loss = std::numeric_limits<double>::quiet_NaN();
  double validation_accuracy = std::numeric_limits<double>::quiet_NaN();
  double validation_samples = 0;
  uint64_t trainable_params = 0;   // values trained (and sent each way) this round
  std::string phase = "head";      // protocols::RoundSchedule::phase
};

struct SiteInfo {
  std::string name;
  uint32_t index = 0;
  uint64_t num_samples = 0;
  bool active = false;
  std::string dropped_reason;
  // Times a new connection with this site's certificate replaced one still in use (a
  // restarted site, or an impostor with a stolen kit: each is logged with both addresses).
  uint32_t replacements = 0;
  // "waiting" (not connected yet), "joining" (connected; job sent or Ready pending), "ready"
  // (takes part in rounds), "dropped" (connection lost or failed; may rejoin), "refused" (the
  // site refused this job).
  std::string state = "waiting";
  // What the site's Ready said of its training images (a claim: protocols::input_stats_from_wire
  // checks it before use); empty until Ready.
  v1::InputStats input_stats;
  // The site's SiteEvaluation of the final model (also a claim: protocols::site_metrics_from_wire
  // checks it); `evaluated`: one arrived and was not declined.
  v1::SiteEvaluation evaluation;
  bool evaluated = false;
};

class Coordinator {
 public:
  Coordinator(CoordinatorOptions options, std::unique_ptr<protocols::Strategy> strategy, Evaluator& evaluator,
              std::vector<float> initial_params);
  ~Coordinator();
  // Attaches a connected site before run(): to the slot named by conn->peer_name(), or
  // (no site_names) a new slot. A name not on the list is refused and closed.
  void add_site(std::unique_ptr<common::Connection> conn);
  // Sites connect (and reconnect) through `listener` (not owned; must outlive run()).
  void set_listener(common::Listener* listener) { listener_ = listener; }

  struct Result {
    std::vector<float> params;
    std::vector<RoundRecord> rounds;
    std::vector<SiteInfo> sites;
    uint64_t handshake_bytes_down = 0, handshake_bytes_up = 0;
    std::string stop_reason;        // why the job ended before its last round ("" = it did not)
    bool interrupted = false;       // stopped early (a signal, the quorum lost); resumable
    bool quorum_lost = false;       // stopped because fewer than min_sites stayed
    double epsilon = 0;             // DP: final privacy spent (0: no DP)
    std::string accountant_state;   // DP: the RDP accountant, serialised (for checkpoints)
    // Federated validation: the model of the best round (empty: none validated), that round
    // (0: none), and whether early stopping ended the job.
    std::vector<float> best_params;
    uint32_t best_round = 0;
    double best_validation_loss = std::numeric_limits<double>::quiet_NaN();
    bool stopped_early = false;
  };
  // Runs the whole job; `on_round` is called after every round. Throws fedtl::Error when
  // fewer than min_sites complete the handshake.
  Result run(const std::function<void(const RoundRecord&)>& on_round);

 private:
  struct Site;
  Site* attach(std::unique_ptr<common::Connection> conn);
  // The handshake (Hello -> JobSpec -> backbone) runs on a thread per site
  // (start_admission), so one that stalls delays nobody; finish_admission applies its outcome
  // on this thread when it is done (within `wait`; nullopt: wait as long as it takes) and
  // returns whether the site was admitted (nullopt: none in flight, or not done yet).
  // abort_admission closes a site's connection to end one in flight and drops the site.
  void start_admission(Site& s);
  std::optional<bool> finish_admission(Site& s, std::optional<std::chrono::milliseconds> wait);
  void abort_admission(Site& s, const std::string& reason);
  bool admit(Site& s);                        // start_admission + finish_admission, blocking
  // Ready (or a refusal) within `timeout`; true when the site is ready. A timeout drops the
  // site only with drop_on_timeout (the join loop polls every admitted site in turn).
  bool await_ready(Site& s, std::chrono::milliseconds timeout, bool drop_on_timeout);
  void join_phase();
  void accept_rejoiners();   // admissions for every site that connected since; collect_rejoiners
  void collect_rejoiners();  // finished admissions (a short grace each) and their Ready
  // An admitted site's Ready, waiting until `until_tp` at most (at least 1 ms); a site admitted
  // longer than the join timeout ago without Ready is dropped.
  void poll_ready(Site& s, std::chrono::steady_clock::time_point until_tp);
  // Before round `round`: true when at least min_sites are active (after waiting for
  // rejoiners up to quorum_wait); false (res.stop_reason set) when the job must stop.
  bool await_quorum(uint32_t round, Result& res);
  // After the validate-only round `round`: each site that took part sends its SiteEvaluation;
  // read in site order within one round deadline. A site that sends none is logged, not dropped.
  void collect_site_evaluations(uint32_t round);
  // refused: the site refused the job (a typed Error frame): it will not come back for it.
  void drop(Site& s, const std::string& reason, bool refused = false);
  // Refreshes every SiteInfo::state and reports them to opt_.on_sites: at once with `force`,
  // else at most every 200 ms (a change in between shows with the next).
  void publish_sites(bool force = false);
  std::chrono::steady_clock::time_point last_publish_{};
  RoundRecord run_round(uint32_t round);
  // The federation's validation figures of one model.
  struct Validation {
    double loss = std::numeric_limits<double>::quiet_NaN(), accuracy = std::numeric_limits<double>::quiet_NaN();
    double samples = 0;
  };
  // Sends the round's RoundStart (validate_only: the validation exchange), collects, and
  // (training rounds) applies the aggregate and evaluates. `validation` receives the figures
  // the sites reported (of the model the round started from).
  RoundRecord run_round(uint32_t round, bool validate_only, Validation& validation,
                        const std::function<bool(const Validation&)>& before_apply);
  struct Aggregate {
    std::vector<double> mean;  // Σ w_i Δ_i / Σ w_i (the round's trained values only)
    size_t reported = 0;
    double train_loss = 0;     // weighted mean of the sites' local losses (NaN: not shared)
    size_t below_clip = 0;     // DP adaptive clipping: reports at or below the clip norm
    double train_accuracy = std::numeric_limits<double>::quiet_NaN();
    Validation validation;     // of the model the round started from
  };
  using TimePoint = std::chrono::steady_clock::time_point;
  // Plain: each site's Update in the clear (plain_round.cc). Secure: the secagg steps (
  // secure_relay.cc); the coordinator learns only the sum. nullopt: nothing to apply.
  // `length`: values per delta (the round's trained values; 0 for a validate-only exchange).
  std::optional<Aggregate> plain_aggregate(uint32_t round, TimePoint deadline, size_t length, bool validate_only);
  // Receives from each of `sites` until take(site, frame) returns true for it (false: that
  // frame is skipped, wait for the next), in arrival order (Connection::watch; a backend
  // without it is read one site after the other), until `deadline`. Heartbeats are consumed
  // here. A site whose take() throws, that breaks, or that is silent (no frame, no heartbeat)
  // for the liveness timeout goes to failed(site, why); one still pending at the deadline to
  // late(site).
  void receive_each(const std::vector<Site*>& sites, TimePoint deadline,
                    const std::function<bool(Site&, common::Frame)>& take, const std::function<void(Site&)>& late,
                    const std::function<void(Site&, const std::string&)>& failed);
  std::optional<Aggregate> secure_aggregate(uint32_t round, TimePoint deadline, size_t length, bool validate_only);
  void privatize(uint32_t round, Aggregate& agg);
  double current_clip_norm() const;
  // The largest sample count a site's weight may claim now (see max_samples_per_site).
  uint64_t sample_bound() const;

  CoordinatorOptions opt_;
  std::unique_ptr<protocols::Strategy> strategy_;
  Evaluator& evaluator_;
  std::vector<float> params_;
  ValidationTracker tracker_;
  std::vector<std::unique_ptr<Site>> sites_;
  common::Listener* listener_ = nullptr;
  // Differential privacy state (unused when the job has no PrivacySpec).
  struct Dp;
  std::unique_ptr<Dp> dp_;
  // Heartbeats to the sites (coordinator/heartbeat.h). Declared last: its thread stops before
  // the site connections it sends on are destroyed.
  std::unique_ptr<HeartbeatSender> beats_;
};

}  // namespace fedtl::coordinator

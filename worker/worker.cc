#include "worker/worker.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include <condition_variable>
#include <thread>

#include "common/errors.h"
#include "common/seeds.h"
#include "common/sha256.h"
#include "protocols/messages.h"
#include "protocols/schedule.h"
#include "protocols/dp/mechanism.h"
#include "protocols/job_check.h"
#include "protocols/secure_round.h"

namespace fedtl::worker {

using protocols::from_frame;
using common::MessageType;
using protocols::to_frame;

Worker::Worker(common::Connection& conn, SiteRuntime& runtime, WorkerOptions options)
    : conn_(conn), runtime_(runtime), opt_(std::move(options)) {}

common::Frame Worker::recv_from_coordinator() {
  try {
    return conn_.recv(opt_.idle_timeout);
  } catch (const TimeoutError&) {
    const auto ms = opt_.idle_timeout.count();
    const std::string bound = ms % 1000 == 0 ? std::to_string(ms / 1000) + " s" : std::to_string(ms) + " ms";
    throw CoordinatorSilent("the coordinator '" + conn_.peer_name() + "' sent nothing (not even a heartbeat) for " +
                            bound + " (policy.coordinator_silence_s): it fell silent; giving up");
  }
}

std::shared_ptr<const std::string> Worker::receive_backbone(const v1::JobSpec& job) {
  auto it = opt_.backbone_cache.find(job.backbone_sha256());
  if (it != opt_.backbone_cache.end()) return it->second;
  std::string bytes;
  // Announced sizes were checked against max_backbone_bytes; reserve no more than the bound
  // anyway (chunks beyond the announced size are refused below).
  bytes.reserve(static_cast<size_t>(std::min<uint64_t>(job.backbone_bytes(), opt_.max_backbone_bytes)));
  for (;;) {
    auto chunk = from_frame<v1::BackboneChunk>(recv_from_coordinator());
    if (chunk.offset() != bytes.size())
      throw ProtocolError("backbone chunk at offset " + std::to_string(chunk.offset()) + ", expected " +
                          std::to_string(bytes.size()));
    if (bytes.size() + chunk.data().size() > job.backbone_bytes())
      throw ProtocolError("backbone larger than announced (" + std::to_string(job.backbone_bytes()) + " bytes)");
    bytes += chunk.data();
    if (chunk.last()) break;
  }
  const std::string got = common::sha256_hex(bytes);
  if (got != job.backbone_sha256() || bytes.size() != job.backbone_bytes()) {
    send(protocols::error_frame(protocols::ErrorCode::kBackboneDigest,
                                      "backbone digest mismatch: got " + got + ", job says " + job.backbone_sha256()));
    throw ProtocolError("backbone digest mismatch: received " + got + ", job announced " + job.backbone_sha256());
  }
  if (opt_.on_backbone) opt_.on_backbone(got, bytes);
  return std::make_shared<const std::string>(std::move(bytes));
}

WorkerResult Worker::run() {
  v1::Hello hello;
  hello.set_protocol_version(common::kProtocolVersion);
  hello.set_site_name(opt_.site_name);
  hello.set_fedtl_version(FEDTL_VERSION);
  for (const auto& kv : opt_.backbone_cache) hello.add_backbone_sha256(kv.first);
  send(to_frame(hello));

  // Before the job, silence is not yet a fault: a coordinator listens before it has loaded its
  // data and backbone (minutes for a large test set). A plain TimeoutError: the caller retries.
  common::Frame first;
  try {
    first = conn_.recv(opt_.idle_timeout);
  } catch (const TimeoutError&) {
    throw TimeoutError("the coordinator '" + conn_.peer_name() + "' accepted the connection but sent no job within " +
                       std::to_string(opt_.idle_timeout.count() / 1000.0) + " s (it may still be starting)");
  }
  job_ = from_frame<v1::JobSpec>(first);
  const auto& job = job_;
  spdlog::debug("[{}] job '{}': {} rounds, backbone {}", opt_.site_name, job.job_name(), job.rounds(),
                job.backbone_sha256());
  // The site's verdict on the job, before anything is allocated or downloaded for it.
  std::string verdict;
  protocols::ErrorCode verdict_code = protocols::ErrorCode::kPolicyRefused;
  if (std::string why = protocols::job_spec_problem(job); !why.empty()) {
    verdict = std::move(why);
    verdict_code = protocols::ErrorCode::kBadConfig;
  } else if (opt_.check_job) {
    verdict = opt_.check_job(job);
  }
  if (verdict.empty() && job.backbone_bytes() > opt_.max_backbone_bytes)
    verdict = "the job's backbone is " + std::to_string(job.backbone_bytes()) + " bytes; this site accepts at most " +
              std::to_string(opt_.max_backbone_bytes) + " (policy.max_backbone_bytes)";
  if (opt_.inspect_only) {
    // Show the job whatever the verdict; download the backbone unless it is beyond the bound.
    const auto backbone = job.backbone_bytes() > opt_.max_backbone_bytes ? std::make_shared<const std::string>()
                                                                          : receive_backbone(job);
    if (opt_.on_job) opt_.on_job(job, *backbone, verdict);
    send(protocols::error_frame(protocols::ErrorCode::kLeaving,
                                "site '" + opt_.site_name + "' only inspected the job and leaves before Ready"));
    WorkerResult inspected;
    inspected.inspected = true;
    inspected.success = true;
    inspected.shutdown_reason = "job inspected; left before Ready";
    return inspected;
  }
  if (!verdict.empty()) {
    if (verdict_code == protocols::ErrorCode::kBadConfig) {
      spdlog::error("[{}] job '{}' refused: {}", opt_.site_name, job.job_name(), verdict);
      send(protocols::error_frame(protocols::ErrorCode::kBadConfig, verdict));
      throw ConfigError("job '" + job.job_name() + "' refused: " + verdict);
    }
    spdlog::error("[{}] job '{}' refused by site policy: {}", opt_.site_name, job.job_name(), verdict);
    send(protocols::error_frame(protocols::ErrorCode::kPolicyRefused, "refused by site policy: " + verdict));
    throw PolicyError("job '" + job.job_name() + "' refused by site policy: " + verdict);
  }
  if (job.secure_aggregation()) {
    std::string why;
    if (opt_.signer && !job.secagg().signed_keys())
      why = "this site holds a certificate and takes part in secure aggregation only with signed keys "
            "(unsigned keys could be substituted by the coordinator)";
    if (!opt_.signer && job.secagg().signed_keys())
      why = "the job signs secure aggregation keys and this site has no certificate to sign with";
    if (!why.empty()) {
      spdlog::error("[{}] job '{}' refused: {}", opt_.site_name, job.job_name(), why);
      send(protocols::error_frame(protocols::ErrorCode::kPolicyRefused, "refused by site policy: " + why));
      throw PolicyError("job '" + job.job_name() + "' refused: " + why);
    }
  }
  auto backbone = receive_backbone(job);
  if (opt_.on_job) opt_.on_job(job, *backbone, "");

  v1::Ready ready;
  try {
    num_samples_ = runtime_.prepare(job, *backbone);
    backbone.reset();  // the runtime keeps what it needs; not held for the whole job
    ready.set_num_samples(num_samples_);
    if (opt_.share_input_stats) *ready.mutable_input_stats() = runtime_.input_stats();
  } catch (const fedtl::Error& e) {
    // This site cannot do this job (its data lacks a class, the backbone does not fit its
    // images, ...): say why, and fail permanently rather than reconnect to the same refusal.
    send(protocols::error_frame(protocols::ErrorCode::kBadConfig, e.what()));
    throw ConfigError("this site cannot take part in job '" + job.job_name() + "': " + e.what());
  }
  ready.set_backbone_sha256(job.backbone_sha256());
  send(to_frame(ready));

  WorkerResult result;
  for (;;) {
    common::Frame f = next_frame();
    if (f.type == MessageType::kShutdown) {
      auto sd = from_frame<v1::Shutdown>(f);
      result.shutdown_reason = sd.reason();
      result.success = sd.success();
      result.resume_expected = sd.resume_expected();
      return result;
    }
    if (f.type == MessageType::kHeartbeat || f.type == MessageType::kSecAggAbort) continue;
    if (f.type != MessageType::kRoundStart) {
      const auto r = protocols::round_of(f);
      if (r) continue;  // a message of a round this site already left
    }
    auto start = from_frame<v1::RoundStart>(f);
    std::vector<float> global;
    try {  // the global model must match the job's layout and be finite before it is trained on
      // The round's trained values only (protocols/schedule.h).
      global = protocols::unpack_tensor(start.params(), protocols::round_schedule(job, start.round()).trained);
      if (!protocols::all_finite(global.data(), global.size()))
        throw ProtocolError("the global parameters hold a non-finite value");
      if (!std::isfinite(start.deadline_seconds()) || start.deadline_seconds() < 0 ||
          start.deadline_seconds() > opt_.max_round_seconds)
        throw ProtocolError("its deadline of " + std::to_string(start.deadline_seconds()) +
                            " s is outside this site's bound of " + std::to_string(opt_.max_round_seconds) +
                            " s (policy.max_round_seconds)");
    } catch (const ProtocolError& e) {
      const std::string why = "RoundStart of round " + std::to_string(start.round()) + " refused: " + e.what();
      spdlog::error("[{}] {}", opt_.site_name, why);
      send(protocols::error_frame(protocols::ErrorCode::kBadMessage, why));
      throw ProtocolError(why);
    }
    if (start.validate_only()) {
      if (job.secure_aggregation())
        secure_round(job, start, global);
      else
        validation_round(start, global);
      if (start.site_evaluation()) site_evaluation(job, start, global);
      continue;
    }
    const bool done = job.secure_aggregation() ? secure_round(job, start, global) : plain_round(start, global);
    if (done) ++result.rounds_trained;
  }
}

void Worker::send(const common::Frame& f) {
  std::lock_guard<std::mutex> lock(send_mu_);
  conn_.send(f);
}

LocalUpdate Worker::train_with_heartbeats(const v1::RoundStart& start, const std::vector<float>& global,
                                          bool* below_clip) {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread beat([&] {
    std::unique_lock<std::mutex> lock(mu);
    while (!cv.wait_for(lock, opt_.heartbeat_interval, [&] { return done; })) {
      v1::Heartbeat hb;
      hb.set_round(start.round());
      try {
        send(to_frame(hb));
      } catch (const fedtl::Error&) {
        return;  // the protocol thread will see the broken connection
      }
    }
  });
  auto finish = [&] {
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
    }
    cv.notify_all();
    beat.join();
  };
  try {
    LocalUpdate up = train_private(start, global, below_clip);
    finish();
    return up;
  } catch (...) {
    finish();
    throw;
  }
}

common::Frame Worker::next_frame() {
  if (pending_) {
    common::Frame f = std::move(*pending_);
    pending_.reset();
    return f;
  }
  return recv_from_coordinator();
}

LocalUpdate Worker::train_private(const v1::RoundStart& start, const std::vector<float>& global, bool* below_clip) {
  LocalUpdate up = runtime_.train_round(start.round(), global);
  if (opt_.log_rounds)
    spdlog::info("[{}] round {}/{}: trained on {} images in {:.2f} s, local loss {:.4f}, local accuracy {:.2f}%",
                 opt_.site_name, start.round(), job_.rounds(), up.num_samples, up.train_seconds, up.train_loss,
                 100.0 * up.train_accuracy);
  const auto& pv = job_.privacy();
  const auto mode = protocols::noise_mode(pv);
  if (!mode) return up;
  namespace dp = protocols::dp;
  dp::DpParams params{*mode, pv.noise_multiplier(),
                      start.clip_norm() > 0 ? start.clip_norm() : pv.clip_norm()};
  const uint64_t seed = common::derive_seed(
      common::derive_seed(job_.seed(), common::seed_stream::kSiteNoise, job_.site_index()),
      start.round(), opt_.noise_secret);
  dp::GaussianNoise noise(seed);
  const double norm = dp::privatize_site_update(up.delta, params, pv.expected_sites(), noise);
  if (below_clip) *below_clip = dp::AdaptiveClipper::indicator(norm, params.clip_norm);
  return up;
}

bool Worker::plain_round(const v1::RoundStart& start, const std::vector<float>& global) {
  bool below_clip = false;
  LocalUpdate up = train_with_heartbeats(start, global, &below_clip);
  v1::Update msg;
  msg.set_round(start.round());
  msg.set_num_samples(up.num_samples);
  msg.set_at_or_below_clip(below_clip);
  protocols::pack_tensor(up.delta, msg.mutable_delta());
  if (opt_.share_training_metrics) {
    msg.set_train_loss(up.train_loss);
    msg.set_train_accuracy(up.train_accuracy);
    msg.set_train_seconds(up.train_seconds);
    msg.set_validation_loss_sum(up.validation.loss_sum);
    msg.set_validation_samples(up.validation.samples);
    msg.set_validation_correct(up.validation.correct);
  }
  send(to_frame(msg));
  return true;
}

void Worker::validation_round(const v1::RoundStart& start, const std::vector<float>& params) {
  const ValidationFigures v = runtime_.validate(start.round(), params);
  v1::Update msg;
  msg.set_round(start.round());
  msg.set_num_samples(0);
  protocols::pack_tensor({}, msg.mutable_delta());
  if (opt_.share_training_metrics) {
    msg.set_validation_loss_sum(v.loss_sum);
    msg.set_validation_samples(v.samples);
    msg.set_validation_correct(v.correct);
  }
  send(to_frame(msg));
}

void Worker::site_evaluation(const v1::JobSpec& job, const v1::RoundStart& start, const std::vector<float>& params) {
  v1::SiteEvaluation ev;
  if (opt_.share_training_metrics) {
    try {
      if (auto got = runtime_.evaluate_site(start.round(), params, job.training().personalize_epochs())) ev = *got;
      else ev.set_declined(true);
    } catch (const fedtl::Error& e) {
      spdlog::warn("[{}] the site's own evaluation failed: {}", opt_.site_name, e.what());
      ev.Clear();
      ev.set_declined(true);
    }
  } else {
    ev.set_declined(true);
  }
  ev.set_round(start.round());
  if (!ev.declined() && opt_.log_rounds) {
    std::string line = fmt::format("[{}] the final model on this site's validation split: accuracy {:.2f}%",
                                   opt_.site_name, 100 * ev.global().accuracy());
    if (ev.personalize_epochs() > 0)
      line += fmt::format("; after {} epochs of head fine-tuning here: {:.2f}%", ev.personalize_epochs(),
                          100 * ev.personalized().accuracy());
    spdlog::info("{}", line);
  }
  send(to_frame(ev));
}

}  // namespace fedtl::worker

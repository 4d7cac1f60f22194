#include "worker/worker.h"

#include <spdlog/spdlog.h>

#include "common/errors.h"
#include "common/sha256.h"
#include "protocols/messages.h"
#include "protocols/secure_round.h"

namespace fedtl::worker {

using protocols::from_frame;
using protocols::MessageType;
using protocols::to_frame;

Worker::Worker(common::Connection& conn, SiteRuntime& runtime, WorkerOptions options)
    : conn_(conn), runtime_(runtime), opt_(std::move(options)) {}

std::string Worker::receive_backbone(const v1::JobSpec& job) {
  auto it = opt_.backbone_cache.find(job.backbone_sha256());
  if (it != opt_.backbone_cache.end()) return it->second;
  std::string bytes;
  bytes.reserve(job.backbone_bytes());
  for (;;) {
    auto chunk = from_frame<v1::BackboneChunk>(conn_.recv(opt_.idle_timeout));
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
    conn_.send(protocols::error_frame(protocols::ErrorCode::kBackboneDigest,
                                      "backbone digest mismatch: got " + got + ", job says " + job.backbone_sha256()));
    throw ProtocolError("backbone digest mismatch: received " + got + ", job announced " + job.backbone_sha256());
  }
  if (opt_.on_backbone) opt_.on_backbone(got, bytes);
  return bytes;
}

WorkerResult Worker::run() {
  v1::Hello hello;
  hello.set_protocol_version(protocols::kProtocolVersion);
  hello.set_site_name(opt_.site_name);
  hello.set_fedtl_version("0.1.0");
  for (const auto& kv : opt_.backbone_cache) hello.add_backbone_sha256(kv.first);
  conn_.send(to_frame(hello));

  const auto job = from_frame<v1::JobSpec>(conn_.recv(opt_.idle_timeout));
  spdlog::debug("[{}] job '{}': {} rounds, backbone {}", opt_.site_name, job.job_name(), job.rounds(),
                job.backbone_sha256().substr(0, 12));
  if (opt_.check_job) {
    const std::string why = opt_.check_job(job);
    if (!why.empty()) {
      spdlog::error("[{}] job '{}' refused by site policy: {}", opt_.site_name, job.job_name(), why);
      conn_.send(protocols::error_frame(protocols::ErrorCode::kPolicyRefused, "refused by site policy: " + why));
      throw PolicyError("job '" + job.job_name() + "' refused by site policy: " + why);
    }
  }
  const std::string backbone = receive_backbone(job);

  v1::Ready ready;
  try {
    ready.set_num_samples(runtime_.prepare(job, backbone));
  } catch (const fedtl::Error& e) {
    conn_.send(protocols::error_frame(protocols::ErrorCode::kBadConfig, e.what()));
    throw;
  }
  ready.set_backbone_sha256(job.backbone_sha256());
  conn_.send(to_frame(ready));

  WorkerResult result;
  for (;;) {
    common::Frame f = next_frame();
    if (f.type == MessageType::kShutdown) {
      auto sd = from_frame<v1::Shutdown>(f);
      result.shutdown_reason = sd.reason();
      result.success = sd.success();
      return result;
    }
    if (f.type == MessageType::kHeartbeat || f.type == MessageType::kSecAggAbort) continue;
    if (f.type != MessageType::kRoundStart) {
      const auto r = protocols::round_of(f);
      if (r) continue;  // a message of a round this site already left
    }
    auto start = from_frame<v1::RoundStart>(f);
    const auto global = protocols::unpack_tensor(start.params());
    const bool done = job.secure_aggregation() ? secure_round(job, start, global) : plain_round(start, global);
    if (done) ++result.rounds_trained;
  }
}

common::Frame Worker::next_frame() {
  if (pending_) {
    common::Frame f = std::move(*pending_);
    pending_.reset();
    return f;
  }
  return conn_.recv(opt_.idle_timeout);
}

bool Worker::plain_round(const v1::RoundStart& start, const std::vector<float>& global) {
  LocalUpdate up = runtime_.train_round(start.round(), global);
  v1::Update msg;
  msg.set_round(start.round());
  msg.set_num_samples(up.num_samples);
  protocols::pack_tensor(up.delta, msg.mutable_delta());
  if (opt_.share_training_metrics) {
    msg.set_train_loss(up.train_loss);
    msg.set_train_accuracy(up.train_accuracy);
    msg.set_train_seconds(up.train_seconds);
  }
  conn_.send(to_frame(msg));
  return true;
}

}  // namespace fedtl::worker

// The site's side of secure aggregation: keys and encrypted shares are exchanged while local
// training runs (the exchange waits on every site, training on none), then the quantised
// [w, w·Δ] goes out masked, and the site reveals the shares the coordinator may legitimately
// ask for.
#include <spdlog/spdlog.h>

#include <future>

#include "common/errors.h"
#include "protocols/messages.h"
#include "protocols/secagg/wire.h"
#include "protocols/secure_round.h"
#include "worker/worker.h"

namespace fedtl::worker {

namespace sa = protocols::secagg;
using protocols::from_frame;
using common::MessageType;
using protocols::to_frame;

template <typename M>
std::optional<M> Worker::await_round(uint32_t round) {
  for (;;) {
    common::Frame f = next_frame();
    if (f.type == MessageType::kHeartbeat) continue;
    if (f.type == protocols::type_of<M>()) {
      M msg = from_frame<M>(f);
      if (msg.round() == round) return msg;
      if (msg.round() < round) continue;  // stale
      throw ProtocolError("secure aggregation message for round " + std::to_string(msg.round()) + " during round " +
                          std::to_string(round));
    }
    if (f.type == MessageType::kSecAggAbort) {
      auto a = from_frame<v1::SecAggAbort>(f);
      if (a.round() < round) continue;
      spdlog::warn("[{}] round {} abandoned by the coordinator: {}", opt_.site_name, round, a.reason());
      return std::nullopt;
    }
    if (f.type == MessageType::kRoundStart || f.type == MessageType::kShutdown) {
      // The coordinator closed this round without us (we were too slow): move on.
      spdlog::warn("[{}] round {} closed without this site", opt_.site_name, round);
      pending_ = std::move(f);
      return std::nullopt;
    }
    const auto r = protocols::round_of(f);
    if (r && *r < round) continue;
    throw ProtocolError(std::string("unexpected ") + common::message_type_name(f.type) +
                        " during secure aggregation of round " + std::to_string(round));
  }
}

bool Worker::secure_round(const v1::JobSpec& job, const v1::RoundStart& start, const std::vector<float>& global) {
  try {
    return secure_steps(job, start, global);
  } catch (const sa::RoundAborted& e) {
    // Nothing of this round was revealed; the coordinator's next message moves us on.
    spdlog::warn("[{}] {}", opt_.site_name, e.what());
    return false;
  }
}

bool Worker::secure_steps(const v1::JobSpec& job, const v1::RoundStart& start, const std::vector<float>& global) {
  const uint32_t round = start.round();
  const uint32_t site = job.site_index();
  // [w, w·Δ] then the site's figures (protocols/secure_round.h): the coordinator learns only
  // their sums. A validate-only round has no Δ.
  const bool validate_only = start.validate_only();
  sa::ClientSession client(
      protocols::secagg_round_config(job, round, (validate_only ? 0 : global.size()) + 1 + protocols::kSecureMetrics),
      site, opt_.signer.get(), opt_.verifier.get());
  // Training needs nothing of the key exchange, whose two message rounds wait on every site
  // (on the demo, 8 sites on 2 cores, the shares were all in 15-17 ms after RoundStart, time no
  // site trained). Training runs on its own thread (heartbeats included) while this one relays
  // keys and shares. Every way out of this function waits for it (std::async's future joins in
  // its destructor, so nothing it uses goes out of scope early): a round abandoned during the
  // exchange still finishes its training, and discards it.
  std::future<LocalUpdate> training = std::async(std::launch::async, [&] {
    if (!validate_only) return train_with_heartbeats(start, global, nullptr);
    LocalUpdate v;
    v.validation = runtime_.validate(round, global);
    v.num_samples = num_samples_;
    return v;
  });
  send(to_frame(client.advertise_keys()));
  auto keys = await_round<v1::SecAggKeyList>(round);
  if (!keys) return false;
  send(to_frame(client.share_keys(*keys)));
  auto shares = await_round<v1::SecAggShareList>(round);
  if (!shares) return false;

  LocalUpdate up = training.get();
  // Under differential privacy every site counts the same (weight 1): the sensitivity bound
  // is per site, not per sample.
  const double weight =
      job.privacy().mode() == v1::PRIVACY_OFF ? static_cast<double>(up.num_samples) / job.secagg().weight_bound() : 1.0;
  if (weight > 1.0)
    throw PolicyError("this site has " + std::to_string(up.num_samples) + " samples, above the job's weight bound " +
                      std::to_string(job.secagg().weight_bound()));
  const auto quant = protocols::secagg_quant_spec(job);
  auto x = sa::encode_weighted(up.delta, weight, job.secagg().clip(), quant,
                               sa::derive_rounding_seed(job.seed(), round, site));
  protocols::SiteFigures figures;
  if (opt_.share_training_metrics) {
    figures.weight = validate_only ? 0.0 : weight;
    figures.train_loss = up.train_loss;
    figures.train_accuracy = up.train_accuracy;
    figures.validation_samples = static_cast<double>(up.validation.samples);
    figures.validation_loss_sum = up.validation.loss_sum;
    figures.validation_correct = static_cast<double>(up.validation.correct);
  }
  const auto m = sa::quantise(protocols::encode_metrics(figures, job.secagg().weight_bound()), quant,
                              sa::derive_rounding_seed(job.seed(), round, site | 0x80000000u));
  x.insert(x.end(), m.begin(), m.end());
  send(to_frame(client.mask_input(*shares, x)));
  auto request = await_round<v1::SecAggUnmaskRequest>(round);
  if (!request) return false;
  if (job.secagg().signed_keys()) {
    send(to_frame(client.consistency(*request)));
    auto signatures = await_round<v1::SecAggConsistencyList>(round);
    if (!signatures) return false;
    send(to_frame(client.unmask(*signatures)));
  } else {
    send(to_frame(client.unmask(*request)));
  }
  return true;
}

}  // namespace fedtl::worker

// Cross-institution runs: `fedtl coordinator`, `fedtl worker` over mutual TLS, and `fedtl ca`.
#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <iostream>
#include <sstream>
#include <thread>

#include "app/run.h"
#include "app/coordinator_job.h"
#include "app/site_data.h"
#include "app/site_trainer.h"
#include "common/data/datasets.h"
#include "common/errors.h"
#include "common/files.h"
#include "common/model/transfer_model.h"
#include "common/transport/pki.h"
#include "common/sha256.h"
#include "common/transport/signing.h"
#include "common/transport/tls.h"
#include "protocols/job_check.h"
#include "protocols/messages.h"
#include "worker/site_policy.h"
#include "worker/worker.h"

namespace fedtl::app {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

std::pair<std::string, uint16_t> split_address(const std::string& addr, const std::string& what) {
  const auto colon = addr.rfind(':');
  if (colon == std::string::npos) throw ConfigError(what + " '" + addr + "' must be host:port");
  std::string host = addr.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = 0;
  try {
    port = std::stoi(addr.substr(colon + 1));
  } catch (const std::exception&) {
    port = -1;
  }
  if (port < 0 || port > 65535) throw ConfigError(what + " '" + addr + "' has no valid port");
  return {host, static_cast<uint16_t>(port)};
}

milliseconds ms(double seconds) { return seconds_to_ms(seconds); }  // saturating, never overflows

// Backbones the site already holds, by digest (files named <sha256>.pt, re-verified).
std::map<std::string, std::shared_ptr<const std::string>> load_backbone_cache(const std::string& dir) {
  std::map<std::string, std::shared_ptr<const std::string>> cache;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return cache;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".pt") continue;
    std::string bytes = common::read_file(e.path().string());
    const std::string sha = common::sha256_hex(bytes);
    if (sha != e.path().stem().string()) {
      spdlog::warn("ignoring cached backbone {}: its content does not match its name", e.path().string());
      continue;
    }
    cache.emplace(sha, std::make_shared<const std::string>(std::move(bytes)));
  }
  return cache;
}

}  // namespace

std::vector<std::string> describe_job(const v1::JobSpec& job, const std::string& backbone,
                                      const std::string& verdict) {
  std::vector<std::string> out;
  auto line = [&](const std::string& s) { out.push_back(s); };
  auto num = [](double v) {
    std::ostringstream os;
    os << v;
    return os.str();
  };
  const auto& m = job.model();
  const auto& t = job.training();
  line("job: '" + job.job_name() + "', " + std::to_string(job.rounds()) + " rounds, quorum " +
       std::to_string(job.min_sites()) + " sites, this site's index " + std::to_string(job.site_index()));
  line("backbone: sha256 " + job.backbone_sha256() + ", " + std::to_string(job.backbone_bytes()) + " bytes" +
       (backbone.empty() ? " (not downloaded)" : " (digest verified)"));
  if (!backbone.empty()) {
    try {
      const auto ops = common::model::backbone_operators(backbone);
      std::string list, refused;
      for (const auto& u : ops) {
        list += (list.empty() ? "" : ", ") + u.op;
        if (!common::model::operator_allowed(u.op)) refused += (refused.empty() ? "" : ", ") + u.op + " in " + u.where;
      }
      line("backbone operators (" + std::to_string(ops.size()) + "): " + list);
      line(refused.empty() ? "backbone operators: all on the allowlist of pure tensor operators"
                           : "backbone operators NOT on the allowlist: " + refused + " (the site refuses this backbone)");
    } catch (const fedtl::Error& e) {
      line(std::string("backbone operators: cannot be read: ") + e.what());
    }
  }
  std::string trainable;
  for (const auto& e : job.layout().entries()) {
    std::string shape;
    for (auto d : e.shape()) shape += (shape.empty() ? "" : "x") + std::to_string(d);
    trainable += (trainable.empty() ? "" : ", ") + e.name() + " [" + shape + "]";
  }
  line("model: head " + v1::HeadType_Name(m.head()) + (m.head() == v1::HEAD_MLP ? " hidden " + std::to_string(m.hidden()) : "") +
       ", " + std::to_string(m.num_classes()) + " classes, freeze " + v1::Freeze_Name(m.freeze()) +
       (m.freeze() == v1::FREEZE_ALL_BUT_LAST ? " (unfrozen " + std::to_string(m.unfrozen()) + ")" : "") + ", input " +
       std::to_string(m.in_channels()) + "x" + std::to_string(m.in_height()) + "x" + std::to_string(m.in_width()));
  line("trainable parameters: " + std::to_string(protocols::layout_numel(job.layout())) + " in " + trainable);
  line("training: " + std::to_string(t.epochs()) + " local epochs per round, batch size " +
       std::to_string(t.batch_size()) + ", optimizer " + v1::Optimizer_Name(t.optimizer()) + ", learning rate " +
       num(t.lr()) + ", momentum " + num(t.momentum()) + ", weight decay " + num(t.weight_decay()) +
       (t.prox_mu() > 0 ? ", FedProx mu " + num(t.prox_mu()) : ""));
  const auto& pv = job.privacy();
  line(pv.mode() == v1::PRIVACY_OFF
           ? std::string("differential privacy: off")
           : "differential privacy: " + v1::PrivacyMode_Name(pv.mode()) + ", noise multiplier " +
                 num(pv.noise_multiplier()) + ", clip norm " + num(pv.clip_norm()) + ", sampling rate " +
                 num(pv.sampling_rate()) + ", expected sites " + std::to_string(pv.expected_sites()));
  const auto& sa = job.secagg();
  line(!job.secure_aggregation()
           ? std::string("secure aggregation: off (the coordinator sees this site's update)")
           : "secure aggregation: on, " + std::to_string(sa.num_sites()) + " sites, threshold " +
                 std::to_string(sa.threshold()) + ", clip " + num(sa.clip()) + ", weight bound " + num(sa.weight_bound()));
  line("policy verdict: " + (verdict.empty() ? std::string("accepted") : "refused: " + verdict));
  return out;
}

SimulateResult run_coordinator(const app::JobConfig& job_cfg, const common::StopSignal* stop) {
  app::JobConfig cfg = job_cfg;
  // Across institutions, updates are masked unless the job explicitly says otherwise.
  if (!cfg.secagg.enabled) cfg.secagg.enabled = true;
  const auto& fed = cfg.federation;
  if (fed.sites.empty()) throw ConfigError("federation.sites must list the sites' certificate names");
  if (fed.ca_cert.empty() || fed.cert.empty() || fed.key.empty())
    throw ConfigError("federation.ca_cert, federation.cert and federation.key are required (see `fedtl ca issue`)");
  if (static_cast<int64_t>(fed.sites.size()) < cfg.min_sites)
    throw ConfigError("job.min_sites is larger than the number of federation.sites");
  common::TlsConfig tls;
  tls.ca_cert = fed.ca_cert;
  tls.cert = fed.cert;
  tls.key = fed.key;
  tls.max_frame_bytes = static_cast<uint32_t>(fed.max_frame_mb) << 20;
  tls.handshake_timeout = ms(fed.handshake_timeout_s);
  // Any certificate of the federation completes the handshake; a name not on federation.sites
  // then gets a typed refusal (kUnauthorized, from attach()) it can act on, instead of a bare
  // TLS alert it would retry forever.
  const auto [host, port] = split_address(fed.listen, "federation.listen");
  auto listener = common::tls_listen(host, port, tls);
  spdlog::info("coordinator listening on {}:{} (mutual TLS 1.3), sites: {}", host, listener->port(),
               fmt::join(fed.sites, ", "));
  // Listening first: a port in use or an unusable kit is reported before minutes of loading.
  // Sites that connect meanwhile complete their handshakes and wait to be admitted.
  CoordinatorJob job(cfg, /*with_training=*/false);
  uint64_t secret = 0;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&secret), sizeof secret) != 1)
    throw Error("OpenSSL RAND_bytes failed: no randomness for the DP noise seed");
  job.set_noise_secret(secret);
  if (stop) job.set_stop([stop] { return stop->requested(); });
  job.set_site_verifier(std::make_shared<common::SiteVerifier>(fed.ca_cert));
  job.serve_status("tls");
  auto coord = job.make_coordinator(fed.sites);
  coord->set_listener(listener.get());
  JobOutcome o = job.run(*coord, "tls");
  listener->close();
  nlohmann::json sites = nlohmann::json::array();
  for (const auto& s : o.result.sites)
    sites.push_back({{"site", s.name}, {"samples", s.num_samples}, {"completed", s.active},
                     {"dropped_reason", s.dropped_reason}, {"connection_replacements", s.replacements}});
  job.write_summary(o, "tls", {{"per_site", sites}}, {});
  return job_result(o, cfg.out);
}

int run_worker(const app::SiteConfig& site, common::StopSignal* stop, std::ostream* inspect_out) {
  common::model::set_torch_threads(1);
  const auto [host, port] = split_address(site.coordinator, "site.coordinator");
  common::TlsConfig tls;
  tls.ca_cert = site.ca_cert;
  tls.cert = site.cert;
  tls.key = site.key;
  tls.handshake_timeout = ms(site.connect_timeout_s);
  tls.expected_server_name = site.coordinator_name;
  const std::string backbone_dir = site.cache_dir + "/backbones";
  SiteTrainer trainer([&](const v1::JobSpec& job) {
    auto images = load_site_data(site, job);
    spdlog::info("[{}] {} labelled images loaded for job '{}'", site.name, images.size(), job.job_name());
    return images;
  });
  trainer.set_max_backbone_bytes(static_cast<uint64_t>(site.policy.max_backbone_bytes));
  worker::WorkerOptions wopt;
  wopt.site_name = site.name;
  wopt.share_training_metrics = site.policy.share_training_metrics;
  wopt.share_input_stats = site.policy.share_input_stats;
  wopt.log_rounds = true;  // a site's own log says what it trained each round
  wopt.max_backbone_bytes = static_cast<uint64_t>(site.policy.max_backbone_bytes);
  wopt.idle_timeout = ms(site.policy.coordinator_silence_s);
  wopt.max_round_seconds = site.policy.max_round_seconds;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&wopt.noise_secret), sizeof wopt.noise_secret) != 1)
    throw Error("OpenSSL RAND_bytes failed: no randomness for the DP noise seed");
  wopt.check_job = [&](const v1::JobSpec& job) { return worker::policy_violation(site.policy, job); };
  // The kit's files are checked (key permissions, role, validity) before the signer reads the key.
  common::check_own_credentials(site.ca_cert, site.cert, site.key, common::CertRole::kWorker);
  auto signer = std::make_shared<const common::IdentitySigner>(site.cert, site.key);
  if (signer->name() != site.name)
    throw ConfigError("site.name is '" + site.name + "' but the certificate " + site.cert + " is issued to '" +
                      signer->name() + "': use the kit's name");
  wopt.signer = std::move(signer);
  wopt.verifier = std::make_shared<common::SiteVerifier>(site.ca_cert);
  wopt.inspect_only = inspect_out != nullptr;
  wopt.on_job = [&](const v1::JobSpec& job, const std::string& backbone, const std::string& verdict) {
    const auto lines = describe_job(job, backbone, verdict);
    if (inspect_out) {
      for (const auto& l : lines) *inspect_out << l << "\n";
      inspect_out->flush();
    } else {
      for (const auto& l : lines) spdlog::info("[{}] {}", site.name, l);
    }
  };
  wopt.on_backbone = [&](const std::string& sha, const std::string& bytes) {
    common::write_file_atomic(backbone_dir + "/" + sha + ".pt", bytes);
    spdlog::info("[{}] backbone {} verified and cached", site.name, sha);
  };

  const auto give_up = Clock::now() + ms(site.give_up_after_s);
  milliseconds backoff(500);
  for (int attempt = 1;; ++attempt) {
    wopt.backbone_cache = load_backbone_cache(backbone_dir);
    std::shared_ptr<common::Connection> conn;
    if (stop && stop->requested()) {
      spdlog::info("[{}] stopped by a signal", site.name);
      return 0;
    }
    try {
      conn = common::tls_connect(host, port, tls, ms(site.connect_timeout_s));
      if (stop) stop->on_stop([conn] { conn->close(); });  // wakes the blocking receive
      spdlog::info("[{}] connected to coordinator '{}' at {}", site.name, conn->peer_name(), site.coordinator);
      backoff = milliseconds(500);
      const auto r = worker::Worker(*conn, trainer, wopt).run();
      if (stop) stop->on_stop(nullptr);
      if (r.inspected) {
        conn->close();
        spdlog::info("[{}] job inspected; told the coordinator this site leaves before Ready", site.name);
        return 0;
      }
      spdlog::info("[{}] {} ({} rounds trained here)", site.name, r.shutdown_reason, r.rounds_trained);
      if (!r.resume_expected) return r.success ? 0 : 1;
      spdlog::info("[{}] the coordinator will resume: reconnecting", site.name);
    } catch (const worker::CoordinatorSilent& e) {
      if (stop) stop->on_stop(nullptr);
      spdlog::error("[{}] {}", site.name, e.what());
      return 1;
    } catch (const PolicyError&) {
      return 2;  // the worker logged the refusal and told the coordinator why
    } catch (const ConfigError& e) {
      // This site cannot do this job (its data, its model): it told the coordinator; retrying
      // would fail the same way.
      if (stop) stop->on_stop(nullptr);
      spdlog::error("[{}] {}; not retrying", site.name, e.what());
      return 2;
    } catch (const protocols::PeerRefused& e) {  // the coordinator said no: retrying will not help
      spdlog::error("[{}] coordinator refused this site: {}", site.name, e.what());
      return 2;
    } catch (const PeerIdentityError& e) {  // not the coordinator site.coordinator_name names
      if (stop) stop->on_stop(nullptr);
      spdlog::error("[{}] {} (check site.coordinator_name and the kit's CA); not retrying", site.name, e.what());
      return 2;
    } catch (const ProtocolError& e) {
      spdlog::warn("[{}] protocol error: {}; reconnecting", site.name, e.what());
    } catch (const fedtl::Error& e) {
      if (stop) stop->on_stop(nullptr);
      if (stop && stop->requested()) {
        spdlog::info("[{}] stopped by a signal", site.name);
        return 0;
      }
      spdlog::warn("[{}] {} (attempt {}); retrying in {:.1f} s", site.name, e.what(), attempt, backoff.count() / 1e3);
    }
    if (Clock::now() + backoff > give_up) {
      spdlog::error("[{}] giving up after {:.0f} s without a finished job", site.name, site.give_up_after_s);
      return 1;
    }
    if (stop ? stop->wait_for(backoff) : (std::this_thread::sleep_for(backoff), false)) {
      spdlog::info("[{}] stopped by a signal", site.name);
      return 0;
    }
    backoff = std::min(backoff * 2, ms(site.max_backoff_s));
  }
}

void run_ca_init(const std::string& dir, const std::string& federation) {
  common::pki_init(dir, federation);
  spdlog::info("federation CA '{}' created in {}/ (keep ca.key offline and owner-only)", federation, dir);
}

void run_ca_issue(const std::string& dir, const std::string& name, const std::string& role,
                  const std::string& coordinator_address, const std::string& coordinator_name) {
  const std::string kit = common::pki_issue(dir, name, role, coordinator_address, coordinator_name);
  spdlog::info("kit for {} '{}' written to {}/", role, name, kit);
  std::cout << kit << "\n";
}

}  // namespace fedtl::app

// A site that holds a VALID kit and attacks the federation (bench/load_test.py's malicious
// cases, `load.malicious_cases_survived`): the real `fedtl worker` code over the real TLS
// transport, with its outgoing frames rewritten (tests/hostile_peer.h).
//
//   bench_malicious --site SITE.toml --attack ATTACK
//
// ATTACK:
//   inflate_count     claims 10^12 samples in Ready and every Update (plain rounds)
//   huge_update       sends 1e30 in every coordinate of its update (plain rounds)
//   forge_shares      reveals structurally valid random field elements as its unmask shares
//   forge_ciphertext  corrupts every share ciphertext it sends (its recipients reject it)
//   forge_weight      adds 2^31 to the weight coordinate of its masked input in round 1
//   low_order_key     advertises the all-zero X25519 key
// Exits 0 when the attack ran (whatever the coordinator did to it), 2 on bad arguments.
#include <spdlog/spdlog.h>

#include <cstring>
#include <iostream>
#include <thread>

#include "app/config.h"
#include "app/site_data.h"
#include "app/site_trainer.h"
#include "common/errors.h"
#include "common/transport/signing.h"
#include "common/transport/tls.h"
#include "protocols/secagg/wire.h"
#include "tests/hostile_peer.h"
#include "worker/worker.h"

using namespace fedtl;
using test_support::rewrite;

namespace {

std::function<void(common::Frame&)> attack(const std::string& name) {
  if (name == "inflate_count")
    return [](common::Frame& f) {
      rewrite<v1::Ready>([](v1::Ready& r) { r.set_num_samples(1000000000000ULL); })(f);
      rewrite<v1::Update>([](v1::Update& u) { u.set_num_samples(1000000000000ULL); })(f);
    };
  if (name == "huge_update")
    return rewrite<v1::Update>([](v1::Update& u) {
      std::vector<float> big(u.delta().count(), 1e30f);
      protocols::pack_tensor(big, u.mutable_delta());
    });
  if (name == "forge_shares")
    return rewrite<v1::SecAggUnmaskShares>([](v1::SecAggUnmaskShares& m) {
      for (auto& r : *m.mutable_shares()) {
        std::string forged(r.share().size(), '\0');
        for (size_t i = 0; i < forged.size(); i += 8) forged[i] = static_cast<char>(1 + i);
        r.set_share(forged);
      }
    });
  if (name == "forge_ciphertext")
    return rewrite<v1::SecAggShares>([](v1::SecAggShares& m) {
      for (auto& e : *m.mutable_shares()) e.mutable_ciphertext()->at(3) ^= 0x20;
    });
  if (name == "forge_weight")
    return rewrite<v1::SecAggMasked>([](v1::SecAggMasked& m) {
      if (m.round() != 1) return;
      uint32_t w;
      std::memcpy(&w, m.u32_le().data(), 4);
      w += 1u << 31;
      std::memcpy(m.mutable_u32_le()->data(), &w, 4);
    });
  if (name == "low_order_key")
    return rewrite<v1::SecAggKeys>([](v1::SecAggKeys& k) { k.set_mask_pk(std::string(32, '\0')); });
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  std::string site_file, attack_name;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--site") site_file = argv[i + 1];
    if (std::string(argv[i]) == "--attack") attack_name = argv[i + 1];
  }
  auto tamper = attack(attack_name);
  if (site_file.empty() || !tamper) {
    std::cerr << "usage: bench_malicious --site SITE.toml --attack "
                 "inflate_count|huge_update|forge_shares|forge_ciphertext|forge_weight|low_order_key\n";
    return 2;
  }
  try {
    const app::SiteConfig s = app::load_site_config(site_file);
    const auto colon = s.coordinator.rfind(':');
    common::TlsConfig tls{s.ca_cert, s.cert, s.key};
    tls.expected_server_name = s.coordinator_name;
    std::unique_ptr<common::Connection> raw;
    for (int attempt = 0; !raw; ++attempt) {
      try {
        raw = common::tls_connect(s.coordinator.substr(0, colon),
                                  static_cast<uint16_t>(std::stoi(s.coordinator.substr(colon + 1))), tls,
                                  std::chrono::seconds(10));
      } catch (const TransportError&) {
        if (attempt > 120) throw;
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
      }
    }
    test_support::TamperingConnection conn(std::move(raw), tamper);
    app::SiteTrainer trainer([&](const v1::JobSpec& j) { return app::load_site_data(s, j); });
    worker::WorkerOptions o;
    o.site_name = s.name;
    o.signer = std::make_shared<common::IdentitySigner>(s.cert, s.key);
    o.verifier = std::make_shared<common::SiteVerifier>(s.ca_cert);
    const auto r = worker::Worker(conn, trainer, o).run();
    spdlog::info("malicious site '{}' ({}): job ended: {}", s.name, attack_name, r.shutdown_reason);
  } catch (const std::exception& e) {
    spdlog::info("malicious site ({}): stopped: {}", attack_name, e.what());
  }
  return 0;
}

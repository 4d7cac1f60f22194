// What a person watching a running federation sees: the job, its sites and their states, and
// every round so far — kept up to date by the coordinator job's callbacks and served by a
// read-only HTTP server (common/transport/http_server.h) as
//   /metrics  Prometheus text format (prometheus-cpp): fedtl_rounds_applied_total, ...
//   /status   JSON (the same figures, for scripts and `fedtl status`)
//   /         a small HTML page with the sites, the last round and the accuracy curve; it
//             reloads itself every few seconds.
// Nothing a site holds appears here: names, states, sample counts the sites declared, and the
// federation-wide figures the coordinator computes anyway (accuracy on its own test set,
// bytes, seconds, privacy spent).
// Thread safety: every method may be called from any thread (one mutex).
#pragma once
#include <chrono>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/transport/http_server.h"
#include "coordinator/coordinator.h"

namespace prometheus {
class Registry;
}

namespace fedtl::app {

struct StatusJobInfo {
  std::string name, transport, strategy;
  uint32_t rounds_planned = 0;
  bool secure_aggregation = false;
  bool differential_privacy = false;
};

class StatusBoard {
 public:
  explicit StatusBoard(StatusJobInfo job);
  ~StatusBoard();

  void set_phase(const std::string& phase);  // "waiting for sites", "training", "finished", ...
  void update_sites(const std::vector<coordinator::SiteInfo>& sites);
  void add_round(const coordinator::RoundRecord& r);

  std::string metrics_text() const;   // Prometheus exposition format 0.0.4
  nlohmann::json status_json() const;
  std::string html() const;
  // Routes /metrics, /status and / (and /index.html); anything else is 404.
  common::HttpResponse handle(const std::string& path) const;

 private:
  struct Metrics;
  mutable std::mutex mu_;
  StatusJobInfo job_;
  std::string phase_ = "starting";
  std::chrono::system_clock::time_point started_;
  std::vector<coordinator::SiteInfo> sites_;
  std::vector<coordinator::RoundRecord> rounds_;
  std::unique_ptr<Metrics> metrics_;
};

// `fedtl status`: the /status JSON of a running job as a person reads it (job line, last
// round, one row per site).
std::string format_status(const nlohmann::json& status);

// Serves `board` on address:port (address "" = 127.0.0.1) until destroyed.
std::unique_ptr<common::HttpServer> serve_status(const StatusBoard& board, const std::string& address,
                                                 uint16_t port);

}  // namespace fedtl::app

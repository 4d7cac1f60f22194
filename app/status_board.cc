#include "app/status_board.h"

#include <cmath>
#include <ctime>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "common/report.h"

namespace fedtl::app {

using json = nlohmann::json;

namespace {
const char* const kStates[] = {"waiting", "joining", "ready", "dropped", "refused"};

// JSON has no NaN: an undefined figure (a one-class test set's AUC) is null.
json number(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

std::string iso_time(std::chrono::system_clock::time_point t) {
  const std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}
}  // namespace

struct StatusBoard::Metrics {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Counter* applied;
  prometheus::Counter* abandoned;
  prometheus::Counter* bytes_up;
  prometheus::Counter* bytes_down;
  prometheus::Gauge* round;
  prometheus::Gauge* planned;
  prometheus::Gauge* round_seconds;
  prometheus::Gauge* accuracy;
  prometheus::Gauge* loss;
  prometheus::Gauge* balanced_accuracy;
  prometheus::Gauge* epsilon;
  prometheus::Gauge* replacements;
  std::map<std::string, prometheus::Gauge*> sites;

  Metrics() {
    using prometheus::BuildCounter;
    using prometheus::BuildGauge;
    auto& r = *registry;
    auto& rounds = BuildCounter().Name("fedtl_rounds_total").Help("Rounds finished, by outcome").Register(r);
    applied = &rounds.Add({{"outcome", "applied"}});
    abandoned = &rounds.Add({{"outcome", "abandoned"}});
    auto& bytes = BuildCounter()
                      .Name("fedtl_bytes_total")
                      .Help("Bytes exchanged with the sites in rounds (framing included), by direction")
                      .Register(r);
    bytes_up = &bytes.Add({{"direction", "up"}});
    bytes_down = &bytes.Add({{"direction", "down"}});
    round = &BuildGauge().Name("fedtl_round").Help("Last round finished").Register(r).Add({});
    planned = &BuildGauge().Name("fedtl_rounds_planned").Help("Rounds the job runs").Register(r).Add({});
    round_seconds =
        &BuildGauge().Name("fedtl_round_seconds").Help("Wall time of the last round").Register(r).Add({});
    accuracy = &BuildGauge()
                    .Name("fedtl_accuracy")
                    .Help("Accuracy of the global model on the coordinator's test set after the last round")
                    .Register(r)
                    .Add({});
    loss = &BuildGauge().Name("fedtl_loss").Help("Test loss after the last round").Register(r).Add({});
    balanced_accuracy = &BuildGauge()
                             .Name("fedtl_balanced_accuracy")
                             .Help("Balanced accuracy on the test set after the last round")
                             .Register(r)
                             .Add({});
    epsilon = &BuildGauge()
                   .Name("fedtl_privacy_epsilon")
                   .Help("Differential privacy spent so far (0: no DP)")
                   .Register(r)
                   .Add({});
    replacements = &BuildGauge()
                        .Name("fedtl_connection_replacements")
                        .Help("Connections that replaced one still in use, all sites")
                        .Register(r)
                        .Add({});
    auto& st = BuildGauge().Name("fedtl_sites").Help("Sites by state").Register(r);
    for (const char* s : kStates) sites[s] = &st.Add({{"state", s}});
  }
};

StatusBoard::StatusBoard(StatusJobInfo job)
    : job_(std::move(job)), started_(std::chrono::system_clock::now()), metrics_(std::make_unique<Metrics>()) {
  metrics_->planned->Set(job_.rounds_planned);
}

StatusBoard::~StatusBoard() = default;

void StatusBoard::set_phase(const std::string& phase) {
  std::lock_guard<std::mutex> lock(mu_);
  phase_ = phase;
}

void StatusBoard::update_sites(const std::vector<coordinator::SiteInfo>& sites) {
  std::lock_guard<std::mutex> lock(mu_);
  sites_ = sites;
  std::map<std::string, int> n;
  for (const auto& s : sites) ++n[s.state];
  for (auto& [state, g] : metrics_->sites) g->Set(n[state]);
}

void StatusBoard::add_round(const coordinator::RoundRecord& r) {
  std::lock_guard<std::mutex> lock(mu_);
  rounds_.push_back(r);
  auto& m = *metrics_;
  (r.applied ? m.applied : m.abandoned)->Increment();
  m.bytes_up->Increment(static_cast<double>(r.bytes_up));
  m.bytes_down->Increment(static_cast<double>(r.bytes_down));
  m.round->Set(r.round);
  m.round_seconds->Set(r.seconds);
  m.accuracy->Set(r.accuracy);
  m.loss->Set(r.loss);
  m.balanced_accuracy->Set(r.balanced_accuracy);
  m.epsilon->Set(r.epsilon);
  m.replacements->Set(r.connection_replacements);
}

std::string StatusBoard::metrics_text() const {
  std::lock_guard<std::mutex> lock(mu_);
  return prometheus::TextSerializer().Serialize(metrics_->registry->Collect());
}

json StatusBoard::status_json() const {
  std::lock_guard<std::mutex> lock(mu_);
  json j;
  j["job"] = {{"name", job_.name},
              {"transport", job_.transport},
              {"strategy", job_.strategy},
              {"rounds_planned", job_.rounds_planned},
              {"secure_aggregation", job_.secure_aggregation},
              {"differential_privacy", job_.differential_privacy},
              {"started", iso_time(started_)}};
  j["phase"] = phase_;
  size_t applied = 0;
  for (const auto& r : rounds_) applied += r.applied ? 1 : 0;
  j["rounds_finished"] = rounds_.size() ? rounds_.back().round : 0;
  j["rounds_applied"] = applied;
  j["rounds_abandoned"] = rounds_.size() - applied;
  json sites = json::array();
  for (const auto& s : sites_)
    sites.push_back({{"name", s.name},
                     {"index", s.index},
                     {"state", s.state},
                     {"samples", s.num_samples},
                     {"reason", s.dropped_reason},
                     {"replacements", s.replacements}});
  j["sites"] = sites;
  json rounds = json::array();
  for (const auto& r : rounds_) {
    json l = {{"round", r.round},
              {"applied", r.applied},
              {"accuracy", number(r.accuracy)},
              {"loss", number(r.loss)},
              {"balanced_accuracy", number(r.balanced_accuracy)},
              {"macro_auc", number(r.macro_auc)},
              {"train_loss", number(r.train_loss)},
              {"sites_reported", r.sites_reported},
              {"sites_active", r.sites_active},
              {"bytes_up", r.bytes_up},
              {"bytes_down", r.bytes_down},
              {"seconds", r.seconds}};
    if (job_.differential_privacy) l["epsilon"] = r.epsilon;
    rounds.push_back(l);
  }
  j["rounds"] = rounds;
  j["last_round"] = rounds.empty() ? json(nullptr) : rounds.back();
  return j;
}

std::string StatusBoard::html() const {
  const json j = status_json();
  std::vector<common::PlotSeries> series(1);
  series[0].label = "federated (test set)";
  for (const auto& r : j["rounds"])
    if (r["applied"].get<bool>() && r["accuracy"].is_number())
      series[0].points.emplace_back(r["round"].get<double>(), r["accuracy"].get<double>());
  const auto& e = common::html_escape;
  std::ostringstream o;
  o << "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">"
    << "<title>fedtl: " << e(job_.name) << "</title><style>"
    << "body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:12px 0}"
    << "td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}th{background:#f2f2f2}"
    << ".ready{color:#2ca02c}.dropped,.refused{color:#d62728}.joining{color:#ff7f0e}.waiting{color:#777}"
    << "</style></head><body>\n";
  o << "<h1>" << e(job_.name) << "</h1>\n<p>" << e(j["phase"].get<std::string>()) << " &middot; round "
    << j["rounds_finished"].get<uint32_t>() << " of " << job_.rounds_planned << " &middot; "
    << j["rounds_applied"].get<size_t>() << " applied, " << j["rounds_abandoned"].get<size_t>()
    << " abandoned &middot; " << e(job_.transport) << ", " << e(job_.strategy)
    << (job_.secure_aggregation ? ", secure aggregation" : "")
    << (job_.differential_privacy ? ", differential privacy" : "") << " &middot; started "
    << e(j["job"]["started"].get<std::string>()) << "</p>\n";
  if (!j["last_round"].is_null()) {
    const auto& l = j["last_round"];
    auto pct = [](const json& v) { return v.is_number() ? fmt::format("{:.2f}%", 100 * v.get<double>()) : "-"; };
    o << "<table><tr><th>last round</th><th>accuracy</th><th>balanced accuracy</th><th>loss</th>"
      << "<th>sites reported</th><th>seconds</th><th>up MB</th><th>down MB</th>"
      << (job_.differential_privacy ? "<th>&epsilon;</th>" : "") << "</tr><tr><td>" << l["round"].get<uint32_t>()
      << (l["applied"].get<bool>() ? "" : " (abandoned)") << "</td><td>" << pct(l["accuracy"]) << "</td><td>"
      << pct(l["balanced_accuracy"]) << "</td><td>"
      << (l["loss"].is_number() ? fmt::format("{:.4f}", l["loss"].get<double>()) : "-") << "</td><td>"
      << l["sites_reported"].get<size_t>() << " of " << l["sites_active"].get<size_t>() << "</td><td>"
      << fmt::format("{:.2f}", l["seconds"].get<double>()) << "</td><td>"
      << fmt::format("{:.2f}", l["bytes_up"].get<double>() / 1e6) << "</td><td>"
      << fmt::format("{:.2f}", l["bytes_down"].get<double>() / 1e6) << "</td>"
      << (job_.differential_privacy ? fmt::format("<td>{:.3f}</td>", l["epsilon"].get<double>()) : "")
      << "</tr></table>\n";
  } else {
    o << "<p>No round has finished yet.</p>\n";
  }
  o << "<table><tr><th>#</th><th>site</th><th>state</th><th>samples</th><th>note</th></tr>\n";
  for (const auto& s : j["sites"]) {
    const std::string st = s["state"].get<std::string>();
    o << "<tr><td>" << s["index"].get<uint32_t>() << "</td><td>" << e(s["name"].get<std::string>())
      << "</td><td class=\"" << e(st) << "\">" << e(st) << "</td><td>" << s["samples"].get<uint64_t>()
      << "</td><td>" << e(s["reason"].get<std::string>()) << "</td></tr>\n";
  }
  o << "</table>\n";
  if (!series[0].points.empty()) o << common::accuracy_plot_svg("accuracy per round", series, {});
  o << "\n</body></html>\n";
  return o.str();
}

common::HttpResponse StatusBoard::handle(const std::string& path) const {
  if (path == "/metrics") return common::http_reply(200, "text/plain; version=0.0.4; charset=utf-8", metrics_text());
  if (path == "/status") return common::http_reply(200, "application/json", status_json().dump(2) + "\n");
  if (path == "/" || path == "/index.html") return common::http_reply(200, "text/html; charset=utf-8", html());
  return common::http_reply(404, "text/plain; charset=utf-8", "not found: try /, /status or /metrics\n");
}

std::string format_status(const json& j) {
  std::ostringstream o;
  auto str = [](const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); };
  auto pct = [](const json& v) { return v.is_number() ? fmt::format("{:.2f}%", 100 * v.get<double>()) : "-"; };
  const auto& job = j.at("job");
  o << fmt::format("job {} ({}, {}{}{}): {}, round {} of {}, {} applied, {} abandoned\n", str(job.at("name")),
                   str(job.at("transport")), str(job.at("strategy")),
                   job.value("secure_aggregation", false) ? ", secure aggregation" : "",
                   job.value("differential_privacy", false) ? ", differential privacy" : "", str(j.at("phase")),
                   j.at("rounds_finished").get<int64_t>(), job.at("rounds_planned").get<int64_t>(),
                   j.at("rounds_applied").get<int64_t>(), j.at("rounds_abandoned").get<int64_t>());
  const auto& l = j.at("last_round");
  if (l.is_null()) {
    o << "no round has finished yet\n";
  } else {
    o << fmt::format("last round {}{}: accuracy {}, balanced accuracy {}, loss {}, {} of {} sites, {:.2f} s", str(l.at("round")),
                     l.at("applied").get<bool>() ? "" : " (abandoned)", pct(l.at("accuracy")),
                     pct(l.at("balanced_accuracy")),
                     l.at("loss").is_number() ? fmt::format("{:.4f}", l.at("loss").get<double>()) : "-",
                     str(l.at("sites_reported")), str(l.at("sites_active")), l.at("seconds").get<double>());
    if (l.contains("epsilon")) o << fmt::format(", epsilon {:.3f}", l.at("epsilon").get<double>());
    o << "\n";
  }
  size_t w = 4;
  for (const auto& s : j.at("sites")) w = std::max(w, str(s.at("name")).size());
  o << fmt::format("{:>3}  {:<{}}  {:<8}  {:>8}  {}\n", "#", "site", w, "state", "samples", "note");
  for (const auto& s : j.at("sites"))
    o << fmt::format("{:>3}  {:<{}}  {:<8}  {:>8}  {}\n", str(s.at("index")), str(s.at("name")), w,
                     str(s.at("state")), str(s.at("samples")), str(s.at("reason")));
  return o.str();
}

std::unique_ptr<common::HttpServer> serve_status(const StatusBoard& board, const std::string& address,
                                                 uint16_t port) {
  return std::make_unique<common::HttpServer>(address.empty() ? "127.0.0.1" : address, port,
                                              [&board](const std::string& path) { return board.handle(path); });
}

}  // namespace fedtl::app

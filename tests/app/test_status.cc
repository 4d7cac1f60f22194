// Watching a federation: the status board's figures, and a LIVE job's status server read by
// the real tools people watch with — a Prometheus server (Debian's `prometheus`) scraping
// /metrics, headless Chromium rendering the page — and by `fedtl status`'s client.
#include <gtest/gtest.h>
#include <png.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "app/config.h"
#include "app/run.h"
#include "app/status_board.h"
#include "common/data/datasets.h"
#include "common/errors.h"
#include "common/files.h"
#include "common/model/transfer_model.h"
#include "common/stop_signal.h"
#include "common/transport/http_server.h"
#include "tests/free_port.h"

namespace fs = std::filesystem;
using namespace fedtl;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

coordinator::SiteInfo site(const std::string& name, uint32_t idx, const std::string& state) {
  coordinator::SiteInfo s;
  s.name = name;
  s.index = idx;
  s.state = state;
  s.num_samples = 100 + idx;
  return s;
}

coordinator::RoundRecord round_record(uint32_t r, bool applied, double acc) {
  coordinator::RoundRecord rec;
  rec.round = r;
  rec.applied = applied;
  rec.accuracy = acc;
  rec.loss = 1.0 / r;
  rec.bytes_up = 1000;
  rec.bytes_down = 2000;
  rec.seconds = 0.5;
  rec.sites_reported = applied ? 2 : 0;
  rec.sites_active = 2;
  return rec;
}

}  // namespace

TEST(StatusBoard, CountsRoundsSitesAndBytesInEveryView) {
  app::StatusBoard b({"ward <b>", "tls", "fedavg", 10, true, false});
  b.update_sites({site("st-<mary>", 0, "ready"), site("guy", 1, "dropped"), site("kings", 2, "ready")});
  b.add_round(round_record(1, true, 0.5));
  b.add_round(round_record(2, false, 0.5));
  b.add_round(round_record(3, true, 0.75));
  const std::string m = b.metrics_text();
  EXPECT_NE(m.find("fedtl_rounds_total{outcome=\"applied\"} 2"), std::string::npos) << m;
  EXPECT_NE(m.find("fedtl_rounds_total{outcome=\"abandoned\"} 1"), std::string::npos) << m;
  EXPECT_NE(m.find("fedtl_sites{state=\"ready\"} 2"), std::string::npos) << m;
  EXPECT_NE(m.find("fedtl_sites{state=\"dropped\"} 1"), std::string::npos) << m;
  EXPECT_NE(m.find("fedtl_bytes_total{direction=\"up\"} 3000"), std::string::npos) << m;
  EXPECT_NE(m.find("fedtl_accuracy 0.75"), std::string::npos) << m;
  EXPECT_NE(m.find("fedtl_round 3"), std::string::npos) << m;
  EXPECT_NE(m.find("# TYPE fedtl_rounds_total counter"), std::string::npos) << m;

  const json s = b.status_json();
  EXPECT_EQ(s["rounds_finished"], 3);
  EXPECT_EQ(s["rounds_applied"], 2);
  EXPECT_EQ(s["rounds_abandoned"], 1);
  EXPECT_EQ(s["sites"][1]["state"], "dropped");
  EXPECT_EQ(s["last_round"]["accuracy"], 0.75);
  EXPECT_TRUE(s["rounds"][0]["macro_auc"].is_null()) << "NaN (undefined) is null in JSON";

  const std::string h = b.html();
  EXPECT_NE(h.find("st-&lt;mary&gt;"), std::string::npos) << "names are escaped";
  EXPECT_EQ(h.find("<mary>"), std::string::npos);
  EXPECT_NE(h.find("<polyline"), std::string::npos) << "the accuracy curve";
  EXPECT_NE(h.find("http-equiv=\"refresh\""), std::string::npos);
  EXPECT_EQ(b.handle("/secret").status, 404);
  // `fedtl status`'s table of the same JSON.
  const std::string t = app::format_status(s);
  EXPECT_NE(t.find("job ward <b> (tls, fedavg, secure aggregation): starting, round 3 of 10, 2 applied, 1 abandoned"),
            std::string::npos) << t;
  EXPECT_NE(t.find("last round 3: accuracy 75.00%"), std::string::npos) << t;
  EXPECT_NE(t.find("guy"), std::string::npos) << t;
  EXPECT_NE(t.find("dropped"), std::string::npos) << t;
  EXPECT_EQ(b.handle("/metrics").content_type.rfind("text/plain; version=0.0.4", 0), 0u);
}

namespace {

// A child process (Prometheus, Chromium) that is killed and reaped when it goes out of scope.
class Child {
 public:
  explicit Child(std::vector<std::string> argv, const fs::path& log) {
    pid_ = ::fork();
    if (pid_ == 0) {
      std::FILE* f = std::fopen(log.c_str(), "w");
      if (f) {
        ::dup2(::fileno(f), 1);
        ::dup2(::fileno(f), 2);
      }
      std::vector<char*> a;
      for (auto& s : argv) a.push_back(s.data());
      a.push_back(nullptr);
      ::execv(a[0], a.data());
      ::_exit(127);
    }
  }
  ~Child() { stop(); }
  // Waits up to `d` for the process to exit by itself; true with its status when it did.
  bool wait_exit(std::chrono::milliseconds d, int* status) {
    for (auto end = std::chrono::steady_clock::now() + d; std::chrono::steady_clock::now() < end;) {
      if (::waitpid(pid_, status, WNOHANG) == pid_) {
        pid_ = -1;
        return true;
      }
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int st;
    if (!wait_exit(5s, &st)) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &st, 0);
    }
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

// A simulated job with a status port, running in the background for a whole suite (many
// short rounds; stopped like Ctrl-C when the suite ends).
class LiveJob : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(std::string(common::kFashionMnistDir) + "/t10k-images-idx3-ubyte.gz")) return;
    dir_ = fs::temp_directory_path() / ("fedtl_status_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    common::write_file_atomic((dir_ / "backbone.pt").string(),
                              common::model::builtin_cnn(common::model::InputSpec{}, 1));
    port_ = test_support::free_port();
    const std::string toml = R"(
[job]
name = "watched"
seed = 3
sites = 2
rounds = 100000
status_port = )" + std::to_string(port_) + R"(
[partition]
samples_per_site = 40
[backbone]
path = ")" + (dir_ / "backbone.pt").string() + R"("
pretrain_if_missing = false
[train]
epochs = 1
)";
    auto cfg = app::parse_job_config(toml, "watched.toml");
    cfg.out = (dir_ / "out").string();
    stop_ = new common::StopSignal();
    job_ = std::thread([cfg] {
      try {
        result_ = app::run_simulate(cfg, stop_);
      } catch (const std::exception& e) {
        error_ = e.what();
      }
    });
    // Up and through its first round (loading the data takes a few seconds).
    for (auto end = std::chrono::steady_clock::now() + 120s; std::chrono::steady_clock::now() < end;) {
      try {
        if (json::parse(common::http_get(base() + "/status", 1s))["rounds_finished"].get<int>() >= 1) break;
      } catch (const std::exception&) {
      }
      std::this_thread::sleep_for(100ms);
    }
  }
  static void TearDownTestSuite() {
    if (!job_.joinable()) return;
    stop_->request();
    job_.join();
    delete stop_;
    fs::remove_all(dir_);
  }
  void SetUp() override {
    if (!fs::exists(std::string(common::kFashionMnistDir) + "/t10k-images-idx3-ubyte.gz"))
      GTEST_SKIP() << "dataset-fashion-mnist is not installed (scripts/setup installs it)";
    ASSERT_TRUE(error_.empty()) << error_;
  }
  static std::string base() { return "http://127.0.0.1:" + std::to_string(port_); }

  static fs::path dir_;
  static uint16_t port_;
  static common::StopSignal* stop_;
  static std::thread job_;
  static app::SimulateResult result_;
  static std::string error_;
};
fs::path LiveJob::dir_;
uint16_t LiveJob::port_ = 0;
common::StopSignal* LiveJob::stop_ = nullptr;
std::thread LiveJob::job_;
app::SimulateResult LiveJob::result_;
std::string LiveJob::error_;

// Prometheus's HTTP API: the value of an instant query (NaN when it has no sample yet).
double prometheus_value(uint16_t port, const std::string& query) {
  std::string q;
  for (char c : query) {
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '_') q += c;
    else q += fmt::format("%{:02X}", static_cast<unsigned char>(c));
  }
  const auto j = json::parse(
      common::http_get("http://127.0.0.1:" + std::to_string(port) + "/api/v1/query?query=" + q, 2s));
  const auto& res = j["data"]["result"];
  if (res.empty()) return std::nan("");
  return std::stod(res[0]["value"][1].get<std::string>());
}

}  // namespace

TEST_F(LiveJob, StatusJsonFollowsTheRunningJob) {
  const json a = json::parse(common::http_get(base() + "/status"));
  EXPECT_EQ(a["job"]["name"], "watched");
  EXPECT_EQ(a["phase"], "training");
  ASSERT_EQ(a["sites"].size(), 2u);
  for (const auto& s : a["sites"]) EXPECT_EQ(s["state"], "ready") << s.dump();
  json b;
  for (auto end = std::chrono::steady_clock::now() + 60s; std::chrono::steady_clock::now() < end;) {
    std::this_thread::sleep_for(200ms);  // a round takes a fraction of a second (more on a busy machine)
    b = json::parse(common::http_get(base() + "/status"));
    if (b["rounds_finished"].get<int>() > a["rounds_finished"].get<int>()) break;
  }
  EXPECT_GT(b["rounds_finished"].get<int>(), a["rounds_finished"].get<int>()) << "rounds go on";
  EXPECT_TRUE(b["last_round"]["accuracy"].is_number());
}

TEST_F(LiveJob, ARealPrometheusScrapesTheRoundCounter) {
  const fs::path prom = "/usr/bin/prometheus";
  if (!fs::exists(prom)) GTEST_SKIP() << "prometheus is not installed (scripts/setup installs it)";
  const uint16_t pport = test_support::free_port();
  const fs::path pdir = dir_ / "prometheus";
  fs::create_directories(pdir / "data");
  std::ofstream(pdir / "prometheus.yml") << "global:\n  scrape_interval: 250ms\n  scrape_timeout: 200ms\n"
                                         << "scrape_configs:\n  - job_name: fedtl\n    static_configs:\n"
                                         << "      - targets: ['127.0.0.1:" << port_ << "']\n";
  Child p({prom.string(), "--config.file=" + (pdir / "prometheus.yml").string(),
           "--storage.tsdb.path=" + (pdir / "data").string(), "--web.listen-address=127.0.0.1:" + std::to_string(pport)},
          pdir / "log.txt");
  double rounds = std::nan(""), ready = std::nan("");
  for (auto end = std::chrono::steady_clock::now() + 60s; std::chrono::steady_clock::now() < end;) {
    try {
      rounds = prometheus_value(pport, "fedtl_rounds_total{outcome=\"applied\"}");
      ready = prometheus_value(pport, "fedtl_sites{state=\"ready\"}");
      if (rounds >= 1 && ready == 2) break;
    } catch (const std::exception&) {  // not up yet
    }
    std::this_thread::sleep_for(250ms);
  }
  EXPECT_GE(rounds, 1) << "Prometheus never saw an applied round; its log: " << common::read_file((pdir / "log.txt").string());
  EXPECT_EQ(ready, 2);
  // It scraped a live job: the counter it reports grows as rounds go on.
  double later = rounds;
  for (auto end = std::chrono::steady_clock::now() + 60s; std::chrono::steady_clock::now() < end && !(later > rounds);) {
    std::this_thread::sleep_for(250ms);
    later = prometheus_value(pport, "fedtl_rounds_total{outcome=\"applied\"}");
  }
  EXPECT_GT(later, rounds);
  EXPECT_EQ(prometheus_value(pport, "up{job=\"fedtl\"}"), 1);
}

TEST_F(LiveJob, HeadlessChromiumShowsTheAccuracyCurve) {
  const fs::path chromium = "/usr/bin/chromium";
  if (!fs::exists(chromium)) GTEST_SKIP() << "chromium is not installed (scripts/setup installs it)";
  // A curve needs a few rounds: wait for them (a round's record arrives with the next round's
  // reports when sites validate).
  for (auto end = std::chrono::steady_clock::now() + 120s; std::chrono::steady_clock::now() < end;) {
    if (json::parse(common::http_get(base() + "/status"))["rounds_finished"].get<int>() >= 6) break;
    std::this_thread::sleep_for(200ms);
  }
  const fs::path shot = dir_ / "status.png";
  Child c({chromium.string(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", "--user-data-dir=" + (dir_ / "chromium").string(), "--window-size=1000,1200",
           "--screenshot=" + shot.string(), base() + "/"},
          dir_ / "chromium.log");
  int status = 0;
  ASSERT_TRUE(c.wait_exit(90s, &status)) << "chromium did not finish";
  ASSERT_TRUE(fs::exists(shot)) << common::read_file((dir_ / "chromium.log").string());
  png_image img{};
  img.version = PNG_IMAGE_VERSION;
  ASSERT_TRUE(png_image_begin_read_from_file(&img, shot.c_str())) << img.message;
  img.format = PNG_FORMAT_RGB;
  std::vector<uint8_t> px(PNG_IMAGE_SIZE(img));
  ASSERT_TRUE(png_image_finish_read(&img, nullptr, px.data(), 0, nullptr)) << img.message;
  // The curve is drawn in #1f77b4 (report.cc's first series colour); nothing else on the
  // page uses it. A 2-px polyline across a few hundred pixels leaves hundreds of them.
  size_t curve = 0;
  for (size_t i = 0; i + 2 < px.size(); i += 3)
    if (std::abs(px[i] - 0x1f) < 24 && std::abs(px[i + 1] - 0x77) < 24 && std::abs(px[i + 2] - 0xb4) < 24) ++curve;
  EXPECT_GT(curve, 150u) << "no accuracy curve in the screenshot (" << img.width << "x" << img.height << ")";
}

TEST_F(LiveJob, HostileClientsDoNotStopTheJob) {
  const int before = json::parse(common::http_get(base() + "/status"))["rounds_finished"].get<int>();
  // Forty idle connections and an oversized request, then the job must still be making rounds.
  std::vector<int> idle;
  for (int i = 0; i < 40; ++i) {
    const int fd = test_support::connect_loopback(port_);
    if (fd >= 0) idle.push_back(fd);
  }
  EXPECT_THROW(common::http_get(base() + "/" + std::string(100000, 'x'), 3s), fedtl::Error);
  std::this_thread::sleep_for(1s);
  for (int fd : idle) ::close(fd);
  int after = before;
  for (auto end = std::chrono::steady_clock::now() + 60s; std::chrono::steady_clock::now() < end && after <= before;) {
    std::this_thread::sleep_for(200ms);
    after = json::parse(common::http_get(base() + "/status"))["rounds_finished"].get<int>();
  }
  EXPECT_GT(after, before) << "the job stalled under hostile HTTP clients";
}

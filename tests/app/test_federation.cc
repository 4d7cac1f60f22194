// Cross-institution runs: `fedtl coordinator` and `fedtl worker` over mutual TLS on loopback,
// with hostile clients, site policy and a tampered backbone.
#include <arpa/inet.h>
#include <signal.h>
#include <sys/wait.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "app/run.h"
#include "app/job_setup.h"
#include "app/site_trainer.h"
#include "app/config.h"
#include "common/data/datasets.h"
#include "common/errors.h"
#include "common/files.h"
#include "common/transport/inproc.h"
#include "common/model/transfer_model.h"
#include "common/transport/pki.h"
#include "common/sha256.h"
#include "common/transport/tls.h"
#include "coordinator/coordinator.h"
#include "protocols/messages.h"
#include "tests/captured_log.h"
#include "tests/free_port.h"
#include "worker/worker.h"

namespace fs = std::filesystem;
using namespace fedtl;
using namespace std::chrono_literals;

namespace {

using test_support::free_port;


// A plaintext client that sends garbage and hangs up.
void garbage_client(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    std::mt19937 rng(1);
    std::string junk(4096, '\0');
    for (auto& c : junk) c = static_cast<char>(rng());
    (void)!::write(fd, junk.data(), junk.size());
    std::this_thread::sleep_for(100ms);
  }
  ::close(fd);
}

class Federation : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(std::string(common::kFashionMnistDir) + "/t10k-images-idx3-ubyte.gz"))
      GTEST_SKIP() << "dataset-fashion-mnist is not installed (scripts/setup installs it)";
    dir_ = fs::temp_directory_path() / ("fedtl_fed_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    common::write_file_atomic((dir_ / "backbone.pt").string(),
                              common::model::builtin_cnn(common::model::InputSpec{}, 1));
    pki_ = (dir_ / "pki").string();
    common::pki_init(pki_, "test-federation");
    common::pki_issue(pki_, "coordinator", "coordinator");
    port_ = free_port();
    const std::string addr = "127.0.0.1:" + std::to_string(port_);
    for (const char* s : {"hospital-a", "hospital-b", "hospital-c", "intruder"})
      common::pki_issue(pki_, s, "worker", addr, "coordinator");
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string kit(const std::string& name, const std::string& file) const {
    return pki_ + "/kits/" + name + "/" + file;
  }

  app::JobConfig job(const std::string& out) const {
    // A 2-round job on a random backbone: it beats chance for most seeds, not all (seed 4
    // stays at 20% before and after the seed streams moved to common/seeds.h, and seed 9 fell
    // from above 30% to 27% with them). The digest checks are the point; the accuracy bound
    // only shows that training happened.
    const std::string toml = R"(
[job]
name = "fed"
seed = 1
sites = 3
rounds = 2
min_sites = 2
[partition]
samples_per_site = 80
[backbone]
path = ")" + (dir_ / "backbone.pt").string() + R"("
pretrain_if_missing = false
[server]
strategy = "fedavg"
[federation]
listen = "127.0.0.1:)" + std::to_string(port_) + R"("
sites = ["hospital-a", "hospital-b", "hospital-c"]
join_timeout_s = 60
handshake_timeout_s = 2
)";
    std::ofstream((dir_ / "job.toml").string()) << toml;
    auto cfg = app::load_job_config((dir_ / "job.toml").string());
    cfg.federation.ca_cert = kit("coordinator", "ca.crt");
    cfg.federation.cert = kit("coordinator", "coordinator.crt");
    cfg.federation.key = kit("coordinator", "coordinator.key");
    cfg.out = (dir_ / out).string();
    return cfg;
  }

  app::SiteConfig site(const std::string& name, int index) const {
    app::SiteConfig s;
    s.name = name;
    s.coordinator = "127.0.0.1:" + std::to_string(port_);
    s.coordinator_name = "coordinator";
    s.ca_cert = kit(name, "ca.crt");
    s.cert = kit(name, name + ".crt");
    s.key = kit(name, name + ".key");
    s.cache_dir = (dir_ / ("site-" + name)).string();
    s.data_source = app::SiteDataSource::kJobPartition;
    s.data_job = (dir_ / "job.toml").string();
    s.partition_index = index;
    s.give_up_after_s = 60;
    return s;
  }

  // Writes site.toml for `name` and starts `fedtl worker` on it as a child process.
  pid_t spawn_worker(const std::string& name, int index) const {
    const auto s = site(name, index);
    const std::string path = (dir_ / (name + ".toml")).string();
    std::ofstream(path) << "[site]\nname = \"" << s.name << "\"\ncoordinator = \"" << s.coordinator
                        << "\"\ncoordinator_name = \"coordinator\"\nca_cert = \"" << s.ca_cert << "\"\ncert = \""
                        << s.cert << "\"\nkey = \"" << s.key << "\"\ncache_dir = \"" << s.cache_dir
                        << "\"\nmax_backoff_s = 1\ngive_up_after_s = 60\n[data]\nsource = \"job-partition\"\njob = \"" << s.data_job
                        << "\"\npartition_index = " << index << "\n";
    const std::string bin = std::string(FEDTL_BINARY_DIR) + "/fedtl";
    const std::string log = (dir_ / (name + ".log")).string();
    pid_t pid = fork();
    if (pid == 0) {
      freopen(log.c_str(), "a", stderr);
      freopen("/dev/null", "w", stdout);
      for (int fd = 3; fd < 1024; ++fd) ::close(fd);  // not the coordinator's sockets (this process's)
      execl(bin.c_str(), bin.c_str(), "worker", "--config", path.c_str(), nullptr);
      _exit(127);
    }
    return pid;
  }

  fs::path dir_;
  std::string pki_;
  uint16_t port_ = 0;
};

}  // namespace

TEST_F(Federation, TlsRunMatchesSimulateWhileHostileClientsAreRefused) {
  auto cfg = job("tls");
  cfg.secagg.enabled = true;  // the coordinator's default, made explicit for the simulate twin
  cfg.secagg.threshold = 2;
  auto coord = std::async(std::launch::async, [&] { return app::run_coordinator(cfg); });
  std::this_thread::sleep_for(1500ms);  // the coordinator loads data and starts listening

  // Hostile: garbage bytes, a valid certificate whose name is not on the list, and a
  // client certificate from another federation's CA.
  garbage_client(port_);
  common::TlsConfig intruder{kit("intruder", "ca.crt"), kit("intruder", "intruder.crt"), kit("intruder", "intruder.key")};
  {
    // A valid certificate not on the list: told so with a typed refusal, never a job.
    std::unique_ptr<common::Connection> c;
    for (int attempt = 0; !c; ++attempt) {  // the coordinator may still be loading its data
      try {
        c = common::tls_connect("127.0.0.1", port_, intruder, 5s);
      } catch (const fedtl::TransportError&) {
        if (attempt > 100) throw;
        std::this_thread::sleep_for(200ms);
      }
    }
    const common::Frame f = c->recv(10s);
    ASSERT_EQ(f.type, common::MessageType::kError);
    v1::ErrorMessage err;
    ASSERT_TRUE(err.ParseFromString(f.payload));
    EXPECT_EQ(err.code(), static_cast<uint32_t>(protocols::ErrorCode::kUnauthorized));
    EXPECT_NE(err.message().find("not on this job's list"), std::string::npos) << err.message();
  }
  const std::string other = (dir_ / "other-pki").string();
  common::pki_init(other, "other");
  common::pki_issue(other, "hospital-a", "worker", "127.0.0.1:1");
  common::TlsConfig foreign{other + "/kits/hospital-a/ca.crt", other + "/kits/hospital-a/hospital-a.crt",
                            other + "/kits/hospital-a/hospital-a.key"};
  EXPECT_THROW(
      {
        auto c = common::tls_connect("127.0.0.1", port_, foreign, 5s);
        c->recv(5s);
      },
      fedtl::TransportError);

  std::vector<std::future<int>> workers;
  int i = 0;
  test_support::CapturedLog log;
  for (const char* name : {"hospital-a", "hospital-b", "hospital-c"}) {
    auto s = site(name, i++);
    workers.push_back(std::async(std::launch::async, [s] { return app::run_worker(s); }));
  }
  for (auto& w : workers) EXPECT_EQ(w.get(), 0);
  const auto tls = coord.get();
  EXPECT_GT(tls.federated_accuracy, 0.3);
  // Each site's own log says what it trained, round by round.
  EXPECT_TRUE(log.contains("[hospital-b] round 1/" + std::to_string(cfg.rounds) + ": trained on "));
  EXPECT_TRUE(log.contains("[hospital-c] round " + std::to_string(cfg.rounds) + "/"));

  auto sim_cfg = cfg;
  sim_cfg.out = (dir_ / "sim").string();
  EXPECT_EQ(app::run_simulate(sim_cfg).model_sha256, tls.model_sha256);
  EXPECT_TRUE(fs::exists(dir_ / "tls" / "summary.json"));
  // Each site's input figures crossed in its Ready: the same as in simulate (same images).
  const auto tls_summary = nlohmann::json::parse(common::read_file((dir_ / "tls" / "summary.json").string()));
  const auto sim_summary = nlohmann::json::parse(common::read_file((dir_ / "sim" / "summary.json").string()));
  ASSERT_EQ(tls_summary["per_site"].size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_GT(tls_summary["per_site"][i]["input_stats"]["images"].get<int64_t>(), 0) << tls_summary["per_site"][i];
    EXPECT_EQ(tls_summary["per_site"][i]["input_stats"], sim_summary["per_site"][i]["input_stats"]);
    // The sites' own evaluations of the final model crossed too: the same model and data.
    ASSERT_TRUE(tls_summary["per_site"][i]["validation_metrics"].is_object()) << tls_summary["per_site"][i];
    EXPECT_EQ(tls_summary["per_site"][i]["validation_metrics"], sim_summary["per_site"][i]["validation_metrics"]);
    EXPECT_EQ(tls_summary["per_site"][i]["personalized_validation_metrics"],
              sim_summary["per_site"][i]["personalized_validation_metrics"]);
  }
  EXPECT_EQ(tls_summary["personalized_mean_accuracy"], sim_summary["personalized_mean_accuracy"]);
  EXPECT_TRUE(fs::exists(fs::path(site("hospital-a", 0).cache_dir) / "backbones"));
}

TEST_F(Federation, SitePolicyRefusalIsExplainedAndTheJobGoesOn) {
  auto cfg = job("policy");
  auto coord = std::async(std::launch::async, [&] { return app::run_coordinator(cfg); });
  std::this_thread::sleep_for(1500ms);
  auto strict = site("hospital-c", 2);
  strict.policy.max_rounds = 1;  // the job runs 2
  auto refused = std::async(std::launch::async, [strict] { return app::run_worker(strict); });
  auto a = std::async(std::launch::async, [s = site("hospital-a", 0)] { return app::run_worker(s); });
  auto b = std::async(std::launch::async, [s = site("hospital-b", 1)] { return app::run_worker(s); });
  EXPECT_EQ(refused.get(), 2);
  EXPECT_EQ(a.get(), 0);
  EXPECT_EQ(b.get(), 0);
  coord.get();
  const auto summary = nlohmann::json::parse(common::read_file((dir_ / "policy" / "summary.json").string()));
  bool found = false;
  for (const auto& s : summary["per_site"])
    if (s["site"] == "hospital-c") {
      found = true;
      EXPECT_FALSE(s["completed"].get<bool>());
      EXPECT_NE(s["dropped_reason"].get<std::string>().find("allows at most 1"), std::string::npos)
          << s["dropped_reason"];
    }
  EXPECT_TRUE(found);
}

TEST_F(Federation, TamperedBackboneIsRefusedByEverySite) {
  auto cfg = job("tamper");
  const std::string backbone = common::read_file(cfg.backbone.path);
  auto model = common::model::TransferModel::create(backbone, app::model_spec(cfg), cfg.seed);
  coordinator::CoordinatorOptions opt;
  opt.job = app::make_job_spec(cfg, common::sha256_hex(backbone), backbone.size(), model->layout(), 1);
  opt.backbone = backbone;
  opt.backbone[opt.backbone.size() / 2] ^= 0x5a;  // corrupted in transit (or by a bad coordinator)
  opt.handshake_timeout = 20s;
  struct NoEval : coordinator::Evaluator {
    coordinator::RoundEval evaluate(const std::vector<float>&) override { return {}; }
  } eval;
  coordinator::Coordinator coord(opt, protocols::make_strategy(cfg.server), eval, model->params());
  auto [c_end, w_end] = common::make_inproc_pair("coordinator", "site-0");
  coord.add_site(std::move(c_end));
  std::string worker_error;
  std::thread t([&, conn = std::move(w_end)] {
    app::SiteTrainer trainer(common::read_fashion_mnist("t10k").select_classes(cfg.data.target_classes).subset({0, 1, 2}));
    try {
      worker::Worker(*conn, trainer, {"site-0"}).run();
    } catch (const fedtl::ProtocolError& e) {
      worker_error = e.what();
    }
  });
  EXPECT_THROW(coord.run({}), fedtl::Error);  // no site completed the handshake
  t.join();
  EXPECT_NE(worker_error.find("digest mismatch"), std::string::npos) << worker_error;
}

TEST_F(Federation, WorkerKilledMidJobRejoinsAfterRestarting) {
  auto cfg = job("rejoin");
  cfg.rounds = 60;  // long enough for a restarted process to come back before the end
  cfg.round_timeout_s = 20;
  cfg.liveness_timeout_s = 5;
  auto coord = std::async(std::launch::async, [&] { return app::run_coordinator(cfg); });
  std::this_thread::sleep_for(1500ms);
  pid_t a = spawn_worker("hospital-a", 0), b = spawn_worker("hospital-b", 1), c = spawn_worker("hospital-c", 2);
  const fs::path metrics = dir_ / "rejoin" / "metrics.jsonl";
  auto rounds_done = [&] {
    std::ifstream in(metrics);
    int n = 0;
    for (std::string l; std::getline(in, l);) ++n;
    return n;
  };
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (rounds_done() < 1 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(20ms);
  ASSERT_GE(rounds_done(), 1);
  ::kill(c, SIGKILL);  // hospital-c dies in the middle of the job
  int status = 0;
  ::waitpid(c, &status, 0);
  while (rounds_done() < 3 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(20ms);
  c = spawn_worker("hospital-c", 2);  // ... and comes back
  const auto result = coord.get();
  for (pid_t p : {a, b, c}) {
    ::waitpid(p, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  std::vector<int> reported;
  std::ifstream in(metrics);
  for (std::string l; std::getline(in, l);) reported.push_back(nlohmann::json::parse(l)["sites_reported"].get<int>());
  ASSERT_EQ(reported.size(), 60u);
  EXPECT_EQ(*std::min_element(reported.begin(), reported.end()), 2);  // rounds without hospital-c
  EXPECT_EQ(reported.back(), 3);                                      // it rejoined
  EXPECT_GT(result.federated_accuracy, 0.3);
}

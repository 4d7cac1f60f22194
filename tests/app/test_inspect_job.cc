// `fedtl worker --inspect-job` (issue 11, item 5) against a scripted coordinator over the real
// TLS transport: the site receives the JobSpec and a real TorchScript backbone, verifies it,
// prints what it would run and leaves with Error kLeaving before Ready; nothing is trained.
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <sstream>
#include <string>

#include "app/run.h"
#include "common/errors.h"
#include "common/model/transfer_model.h"
#include "common/sha256.h"
#include "common/transport/pki.h"
#include "common/transport/tls.h"
#include "protocols/messages.h"
#include "tests/unit_job.h"

namespace fedtl::app {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using protocols::from_frame;
using protocols::to_frame;

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

class InspectJob : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/fedtl_inspect_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    pki_ = dir_ + "/pki";
    common::pki_init(pki_, "testfed");
    common::pki_issue(pki_, "coordinator", "coordinator", "127.0.0.1:8443");
    common::pki_issue(pki_, "hospital-a", "worker", "127.0.0.1:8443");
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string kit(const std::string& name, const std::string& file) const { return pki_ + "/kits/" + name + "/" + file; }
  SiteConfig site(uint16_t port) const {
    SiteConfig s;
    s.name = "hospital-a";
    s.coordinator = "127.0.0.1:" + std::to_string(port);
    s.coordinator_name = "coordinator";
    s.ca_cert = kit("hospital-a", "ca.crt");
    s.cert = kit("hospital-a", "hospital-a.crt");
    s.key = kit("hospital-a", "hospital-a.key");
    s.cache_dir = dir_ + "/cache";
    s.data_dir = dir_ + "/no-data";  // never read: inspection touches no data
    s.connect_timeout_s = 5;
    s.give_up_after_s = 5;
    return s;
  }
  std::string dir_, pki_;
};

TEST_F(InspectJob, PrintsWhatTheSiteWouldRunAndLeavesBeforeReady) {
  common::TlsConfig tls;
  tls.ca_cert = kit("coordinator", "ca.crt");
  tls.cert = kit("coordinator", "coordinator.crt");
  tls.key = kit("coordinator", "coordinator.key");
  auto listener = common::tls_listen("127.0.0.1", 0, tls);

  const std::string backbone = common::model::builtin_cnn(common::model::InputSpec{}, 3);
  v1::JobSpec job = test_support::unit_job(backbone, 645, 12);
  job.set_job_name("chest-xray");
  job.set_min_sites(3);
  job.mutable_training()->set_epochs(2);
  job.mutable_training()->set_batch_size(32);
  job.mutable_training()->set_lr(0.05);
  job.mutable_model()->set_num_classes(5);
  job.mutable_model()->set_in_channels(1);
  job.mutable_model()->set_in_height(28);
  job.mutable_model()->set_in_width(28);
  job.mutable_privacy()->set_mode(v1::PRIVACY_CENTRAL);
  job.mutable_privacy()->set_noise_multiplier(1.1);
  job.mutable_privacy()->set_clip_norm(1.0);
  job.set_secure_aggregation(true);
  job.mutable_secagg()->set_num_sites(3);
  job.mutable_secagg()->set_threshold(2);

  // The scripted coordinator: Hello -> JobSpec + backbone, then it expects the site to leave.
  auto coordinator = std::async(std::launch::async, [&] {
    auto c = listener->accept(10s);
    const auto hello = from_frame<v1::Hello>(c->recv(10s));
    EXPECT_EQ(hello.site_name(), "hospital-a");
    c->send(to_frame(job));
    const size_t chunk = 64 * 1024;
    for (size_t off = 0;; off += chunk) {
      v1::BackboneChunk ch;
      ch.set_offset(off);
      ch.set_data(backbone.substr(std::min(off, backbone.size()), chunk));
      ch.set_last(off + chunk >= backbone.size());
      c->send(to_frame(ch));
      if (ch.last()) break;
    }
    const common::Frame f = c->recv(10s);
    EXPECT_EQ(f.type, common::MessageType::kError);
    const auto err = from_frame<v1::ErrorMessage>(f);
    EXPECT_EQ(err.code(), static_cast<uint32_t>(protocols::ErrorCode::kLeaving));
    EXPECT_THROW(c->recv(10s), TransportError);  // and then it disconnects
    return err.message();
  });

  std::ostringstream out;
  SiteConfig s = site(listener->port());
  s.policy.min_sites = 2;
  EXPECT_EQ(run_worker(s, nullptr, &out), 0);
  const std::string left = coordinator.get();
  EXPECT_TRUE(has(left, "only inspected the job")) << left;

  const std::string text = out.str();
  SCOPED_TRACE(text);
  EXPECT_TRUE(has(text, "job: 'chest-xray', 12 rounds, quorum 3 sites"));
  EXPECT_TRUE(has(text, "backbone: sha256 " + common::sha256_hex(backbone) + ", " + std::to_string(backbone.size()) +
                            " bytes (digest verified)"));
  EXPECT_TRUE(has(text, "backbone operators ("));
  EXPECT_TRUE(has(text, "aten::conv2d"));
  EXPECT_TRUE(has(text, "backbone operators: all on the allowlist of pure tensor operators"));
  EXPECT_TRUE(has(text, "model: head HEAD_LINEAR, 5 classes, freeze FREEZE_ALL, input 1x28x28"));
  EXPECT_TRUE(has(text, "trainable parameters: 645 in head.weight [645]"));
  EXPECT_TRUE(has(text, "training: 2 local epochs per round, batch size 32, optimizer OPTIMIZER_SGD, learning rate 0.05"));
  EXPECT_TRUE(has(text, "differential privacy: PRIVACY_CENTRAL, noise multiplier 1.1, clip norm 1"));
  EXPECT_TRUE(has(text, "secure aggregation: on, 3 sites, threshold 2"));
  EXPECT_TRUE(has(text, "policy verdict: accepted"));
  EXPECT_FALSE(fs::exists(dir_ + "/no-data"));
}

TEST_F(InspectJob, ShowsAPolicyRefusalWithoutDownloadingATooLargeBackbone) {
  common::TlsConfig tls;
  tls.ca_cert = kit("coordinator", "ca.crt");
  tls.cert = kit("coordinator", "coordinator.crt");
  tls.key = kit("coordinator", "coordinator.key");
  auto listener = common::tls_listen("127.0.0.1", 0, tls);
  v1::JobSpec job = test_support::unit_job("x", 10, 3);
  job.set_min_sites(1);
  job.set_backbone_bytes(uint64_t{1} << 62);
  auto coordinator = std::async(std::launch::async, [&] {
    auto c = listener->accept(10s);
    from_frame<v1::Hello>(c->recv(10s));
    c->send(to_frame(job));
    const auto err = from_frame<v1::ErrorMessage>(c->recv(10s));  // no backbone sent: none asked for
    return err.code();
  });
  std::ostringstream out;
  EXPECT_EQ(run_worker(site(listener->port()), nullptr, &out), 0);
  EXPECT_EQ(coordinator.get(), static_cast<uint32_t>(protocols::ErrorCode::kLeaving));
  const std::string text = out.str();
  EXPECT_TRUE(has(text, "bytes (not downloaded)")) << text;
  EXPECT_TRUE(has(text, "policy verdict: refused: the job's backbone is 4611686018427387904 bytes; this site accepts "
                        "at most 2147483648 (policy.max_backbone_bytes)"))
      << text;
}

}  // namespace
}  // namespace fedtl::app

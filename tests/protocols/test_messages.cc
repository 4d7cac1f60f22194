#include "protocols/job_check.h"
#include "protocols/messages.h"
#include "protocols/secure_round.h"

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "common/errors.h"

namespace fedtl::protocols {
namespace {

using google::protobuf::util::MessageDifferencer;

// Encodes through the real wire framing and back.
template <typename M>
M round_trip(const M& msg) {
  const Frame f = to_frame(msg);
  EXPECT_EQ(f.type, type_of<M>());
  return from_frame<M>(common::decode_frame(common::encode_frame(f)));
}

v1::Tensor tensor_of(const std::vector<float>& v) {
  v1::Tensor t;
  pack_tensor(v, &t);
  return t;
}

TEST(Messages, Hello) {
  v1::Hello m;
  m.set_protocol_version(1);
  m.set_site_name("hospital-a");
  m.add_backbone_sha256("aa11");
  m.add_backbone_sha256("bb22");
  m.set_fedtl_version("0.1.0");
  const v1::Hello back = round_trip(m);
  EXPECT_TRUE(MessageDifferencer::Equals(m, back));
  EXPECT_EQ(back.site_name(), "hospital-a");
  ASSERT_EQ(back.backbone_sha256_size(), 2);
  EXPECT_EQ(back.backbone_sha256(1), "bb22");
}

TEST(Messages, JobSpecWithNestedMessages) {
  v1::JobSpec m;
  m.set_job_name("fmnist");
  m.set_seed(0xDEADBEEFCAFEull);
  m.set_rounds(20);
  m.set_backbone_sha256("ff00");
  m.set_backbone_bytes(123456789);
  auto* model = m.mutable_model();
  model->set_head(v1::HEAD_MLP);
  model->set_hidden(128);
  model->set_num_classes(10);
  model->set_freeze(v1::FREEZE_ALL_BUT_LAST);
  model->set_unfrozen(2);
  model->set_in_channels(1);
  model->set_in_height(28);
  model->set_in_width(28);
  model->add_mean(0.2860);
  model->add_std(0.3530);
  auto* tr = m.mutable_training();
  tr->set_optimizer(v1::OPTIMIZER_ADAM);
  tr->set_lr(0.001);
  tr->set_momentum(0.9);
  tr->set_weight_decay(1e-4);
  tr->set_epochs(2);
  tr->set_batch_size(64);
  tr->set_prox_mu(0.01);
  auto* e = m.mutable_layout()->add_entries();
  e->set_name("head.weight");
  e->add_shape(10);
  e->add_shape(128);
  m.add_target_classes(3);
  m.add_target_classes(-1);
  m.set_site_index(4);
  m.set_min_sites(3);
  m.set_secure_aggregation(true);
  const v1::JobSpec back = round_trip(m);
  EXPECT_TRUE(MessageDifferencer::Equals(m, back));
  EXPECT_EQ(back.model().freeze(), v1::FREEZE_ALL_BUT_LAST);
  EXPECT_DOUBLE_EQ(back.training().prox_mu(), 0.01);
  EXPECT_EQ(back.layout().entries(0).shape(1), 128);
  EXPECT_EQ(back.target_classes(1), -1);
  EXPECT_TRUE(back.secure_aggregation());
}

TEST(Messages, BackboneChunk) {
  v1::BackboneChunk m;
  m.set_offset(1u << 30);
  m.set_data(std::string("\0\x01\xff binary", 10));
  m.set_last(true);
  const auto back = round_trip(m);
  EXPECT_TRUE(MessageDifferencer::Equals(m, back));
  EXPECT_EQ(back.data().size(), 10u);
}

TEST(Messages, Ready) {
  v1::Ready m;
  m.set_num_samples(6000);
  m.set_backbone_sha256("abcd");
  m.set_feature_seconds(1.25);
  const auto back = round_trip(m);
  EXPECT_TRUE(MessageDifferencer::Equals(m, back));
  EXPECT_EQ(back.num_samples(), 6000u);
}

// A SiteEvaluation's metrics are a site's claim too: they round-trip (an undefined AUC as
// NaN) and are refused when they do not hold together.
TEST(Messages, SiteEvaluationMetricsAreCheckedBeforeUse) {
  common::ClassificationMetrics m;
  m.accuracy = 0.75;
  m.balanced_accuracy = 0.5;
  m.macro_f1 = 0.4;
  m.macro_auc = 0.9;
  m.per_class = {common::ClassMetrics{1.0, 0.5, 1.0, 2.0 / 3, 0.9, 2}, common::ClassMetrics{0.5, 1.0, 0.5, 2.0 / 3, {}, 2}};
  v1::SiteEvaluation ev;
  ev.set_round(4);
  *ev.mutable_global() = site_metrics_to_wire(m, 4);
  const auto back = round_trip(ev);
  EXPECT_EQ(back.round(), 4u);
  const auto got = site_metrics_from_wire(back.global(), 2);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->images, 4);
  EXPECT_EQ(got->metrics.accuracy, 0.75);
  EXPECT_EQ(got->metrics.macro_auc, 0.9);
  EXPECT_EQ(got->metrics.per_class[0].auc, 0.9);
  EXPECT_FALSE(got->metrics.per_class[1].auc.has_value());
  EXPECT_EQ(got->metrics.per_class[1].support, 2);
  EXPECT_EQ(round_of(to_frame(ev)), 4u);

  EXPECT_FALSE(site_metrics_from_wire(back.global(), 3).has_value());  // 2 classes sent, 3 in the job
  auto bad = [&](auto&& spoil) {
    v1::SiteMetrics w = site_metrics_to_wire(m, 4);
    spoil(w);
    return !site_metrics_from_wire(w, 2).has_value();
  };
  EXPECT_TRUE(bad([](v1::SiteMetrics& w) { w.set_accuracy(1.5); }));
  EXPECT_TRUE(bad([](v1::SiteMetrics& w) { w.set_macro_f1(std::numeric_limits<double>::quiet_NaN()); }));
  EXPECT_TRUE(bad([](v1::SiteMetrics& w) { w.set_macro_auc(-0.1); }));
  EXPECT_TRUE(bad([](v1::SiteMetrics& w) { w.mutable_per_class(0)->set_recall(2); }));
  EXPECT_TRUE(bad([](v1::SiteMetrics& w) { w.mutable_per_class(0)->set_support(3); }));  // 3 + 2 != 4
  EXPECT_TRUE(bad([](v1::SiteMetrics& w) { w.set_images(0); }));
}

// Ready.input_stats is a site's claim: it round-trips, and figures that do not hold together
// are not used.
TEST(Messages, ReadyInputStatsAreCheckedBeforeUse) {
  common::InputStats s;
  s.images = 5;
  s.grey = 3;
  s.colour = 2;
  s.min_height = 20;
  s.max_height = 500;
  s.min_width = 30;
  s.max_width = 400;
  s.mean = {0.1, -0.2, 0.3};
  s.std = {1.0, 0.9, 1.2};
  v1::Ready m;
  *m.mutable_input_stats() = input_stats_to_wire(s);
  const auto back = round_trip(m);
  const auto got = input_stats_from_wire(back.input_stats(), 3);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->grey, 3);
  EXPECT_EQ(got->max_height, 500);
  EXPECT_EQ(got->min_width, 30);
  EXPECT_EQ(got->mean, s.mean);
  EXPECT_EQ(got->std, s.std);

  EXPECT_FALSE(input_stats_from_wire(back.input_stats(), 1).has_value());  // 3 channels claimed, 1 taken
  EXPECT_FALSE(input_stats_from_wire(v1::InputStats{}, 3).has_value());    // a site that sent none
  auto bad = [&](auto&& spoil) {
    v1::InputStats w = input_stats_to_wire(s);
    spoil(w);
    return !input_stats_from_wire(w, 3).has_value();
  };
  EXPECT_TRUE(bad([](v1::InputStats& w) { w.set_grey(4); }));  // 4 + 2 != 5
  EXPECT_TRUE(bad([](v1::InputStats& w) { w.set_min_height(501); }));
  EXPECT_TRUE(bad([](v1::InputStats& w) { w.set_min_width(0); }));
  EXPECT_TRUE(bad([](v1::InputStats& w) { w.set_mean(1, std::numeric_limits<double>::quiet_NaN()); }));
  EXPECT_TRUE(bad([](v1::InputStats& w) { w.set_std(0, -1); }));
  EXPECT_TRUE(bad([](v1::InputStats& w) { w.set_std(2, std::numeric_limits<double>::infinity()); }));
  EXPECT_TRUE(bad([](v1::InputStats& w) { w.add_mean(0); }));
}

TEST(Messages, RoundStart) {
  v1::RoundStart m;
  m.set_round(3);
  *m.mutable_params() = tensor_of({1.0f, -2.5f, 3.25f});
  m.set_deadline_seconds(60.0);
  const auto back = round_trip(m);
  EXPECT_TRUE(MessageDifferencer::Equals(m, back));
  EXPECT_EQ(unpack_tensor(back.params(), 3), (std::vector<float>{1.0f, -2.5f, 3.25f}));
}

TEST(Messages, Update) {
  v1::Update m;
  m.set_round(7);
  m.set_num_samples(512);
  *m.mutable_delta() = tensor_of({0.5f, -0.125f});
  m.set_train_loss(0.42);
  m.set_train_accuracy(0.87);
  m.set_train_seconds(3.5);
  const auto back = round_trip(m);
  EXPECT_TRUE(MessageDifferencer::Equals(m, back));
  EXPECT_EQ(unpack_tensor(back.delta()), (std::vector<float>{0.5f, -0.125f}));
}

TEST(Messages, Shutdown) {
  v1::Shutdown m;
  m.set_reason("job finished");
  m.set_success(true);
  const auto back = round_trip(m);
  EXPECT_TRUE(MessageDifferencer::Equals(m, back));
}

TEST(Messages, ErrorMessage) {
  const Frame f = error_frame(ErrorCode::kBackboneDigest, "digest mismatch");
  EXPECT_EQ(f.type, MessageType::kError);
  const auto back = from_frame<v1::ErrorMessage>(common::decode_frame(common::encode_frame(f)));
  EXPECT_EQ(back.code(), static_cast<uint32_t>(ErrorCode::kBackboneDigest));
  EXPECT_EQ(back.message(), "digest mismatch");
}

TEST(Messages, Heartbeat) {
  v1::Heartbeat m;
  m.set_round(2);
  m.set_progress(0.75);
  const auto back = round_trip(m);
  EXPECT_TRUE(MessageDifferencer::Equals(m, back));
}

TEST(Messages, TypeMismatchNamesBothTypes) {
  v1::Ready r;
  r.set_num_samples(1);
  const Frame f = to_frame(r);
  try {
    from_frame<v1::Update>(f);
    FAIL() << "expected ProtocolError";
  } catch (const ProtocolError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("Update"), std::string::npos) << msg;
    EXPECT_NE(msg.find("Ready"), std::string::npos) << msg;
  }
}

TEST(Messages, ErrorFrameBecomesPeerRefused) {
  const Frame f = error_frame(ErrorCode::kUnauthorized, "site not in allow-list");
  try {
    from_frame<v1::JobSpec>(f);
    FAIL() << "expected ProtocolError";
  } catch (const ProtocolError& e) {
    EXPECT_STREQ(e.what(), "peer refused: site not in allow-list");
  }
  // The code survives into the exception the caller catches (no one parses the text).
  try {
    from_frame<v1::Ready>(f);
    FAIL() << "expected PeerRefused";
  } catch (const PeerRefused& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnauthorized);
  }
  EXPECT_NO_THROW(check_frame_type(f, MessageType::kError));
}

TEST(JobCheck, KnownValuesPassAndUnknownOnesAreNamed) {
  v1::JobSpec job;
  job.mutable_training()->set_optimizer(v1::OPTIMIZER_ADAM);
  job.mutable_model()->set_head(v1::HEAD_MLP);
  job.mutable_model()->set_freeze(v1::FREEZE_NONE);
  job.mutable_model()->set_num_classes(3);
  job.mutable_model()->set_hidden(16);
  job.mutable_training()->set_epochs(1);
  job.mutable_training()->set_batch_size(4);
  job.mutable_training()->set_lr(0.01);
  job.set_rounds(1);
  job.mutable_layout()->add_entries()->set_name("head.fc1.weight");
  EXPECT_EQ(job_spec_problem(job), "");  // privacy off (0) is a valid choice
  EXPECT_FALSE(noise_mode(job.privacy()).has_value());
  job.mutable_privacy()->set_mode(v1::PRIVACY_DISTRIBUTED);
  EXPECT_EQ(noise_mode(job.privacy()), dp::NoiseMode::kDistributed);
  EXPECT_EQ(to_wire(std::optional<dp::NoiseMode>(dp::NoiseMode::kLocal)), v1::PRIVACY_LOCAL);
  job.mutable_model()->set_freeze(static_cast<v1::Freeze>(17));
  EXPECT_NE(job_spec_problem(job).find("model.freeze 17"), std::string::npos) << job_spec_problem(job);
  job.mutable_model()->set_freeze(v1::FREEZE_ALL);
  job.mutable_privacy()->set_mode(static_cast<v1::PrivacyMode>(5));
  EXPECT_NE(job_spec_problem(job).find("privacy.mode 5"), std::string::npos);
  EXPECT_THROW(noise_mode(job.privacy()), ProtocolError);
  job.mutable_privacy()->set_mode(v1::PRIVACY_OFF);
  job.mutable_training()->set_batch_size(0);
  EXPECT_NE(job_spec_problem(job).find("training.batch_size must be >= 1"), std::string::npos);
}

TEST(Messages, CorruptPayloadThrows) {
  Frame f;
  f.type = MessageType::kHello;
  f.payload = std::string("\x0a\xff\xff\xff\xff\x0f", 6);  // field 1 length-delimited, huge length
  try {
    from_frame<v1::Hello>(f);
    FAIL() << "expected ProtocolError";
  } catch (const ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("Hello"), std::string::npos) << e.what();
  }
  // A truncated serialization of a real message also fails.
  v1::Shutdown s;
  s.set_reason("a long enough reason");
  Frame g = to_frame(s);
  g.payload.resize(g.payload.size() - 3);
  EXPECT_THROW(from_frame<v1::Shutdown>(g), ProtocolError);
}

TEST(Tensor, PackIsLittleEndianFloat32) {
  v1::Tensor t = tensor_of({1.0f, -2.0f});
  ASSERT_EQ(t.count(), 2u);
  ASSERT_EQ(t.f32_le().size(), 8u);
  const auto* b = reinterpret_cast<const uint8_t*>(t.f32_le().data());
  // 1.0f = 0x3F800000, -2.0f = 0xC0000000
  EXPECT_EQ(b[0], 0x00); EXPECT_EQ(b[1], 0x00); EXPECT_EQ(b[2], 0x80); EXPECT_EQ(b[3], 0x3F);
  EXPECT_EQ(b[4], 0x00); EXPECT_EQ(b[5], 0x00); EXPECT_EQ(b[6], 0x00); EXPECT_EQ(b[7], 0xC0);
}

TEST(Tensor, RoundTripKeepsSpecialValues) {
  const std::vector<float> v = {0.0f, -0.0f, std::numeric_limits<float>::infinity(),
                                std::numeric_limits<float>::denorm_min(), 3.14159f};
  v1::Tensor t;
  pack_tensor(v.data(), v.size(), &t);
  const auto back = unpack_tensor(t, v.size());
  ASSERT_EQ(back.size(), v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    EXPECT_EQ(std::signbit(back[i]), std::signbit(v[i]));
    EXPECT_EQ(back[i], v[i]);
  }
  EXPECT_TRUE(unpack_tensor(tensor_of({})).empty());
}

TEST(Tensor, UnpackValidatesSizes) {
  v1::Tensor t = tensor_of({1.0f, 2.0f, 3.0f});
  EXPECT_THROW(unpack_tensor(t, 4), ProtocolError);  // wrong expected count
  v1::Tensor bad_count = t;
  bad_count.set_count(2);
  EXPECT_THROW(unpack_tensor(bad_count), ProtocolError);
  v1::Tensor ragged = t;
  ragged.mutable_f32_le()->push_back('\0');  // 13 bytes
  ragged.set_count(3);
  EXPECT_THROW(unpack_tensor(ragged), ProtocolError);
}

TEST(Tensor, AllFiniteFindsEveryNonFiniteValueAtEveryPosition) {
  using L = std::numeric_limits<float>;
  const std::vector<float> finite = {0.0f, -0.0f, L::denorm_min(), -L::denorm_min(), L::min(), L::max(),
                                     L::lowest(), 1.0f, -3.5e30f};
  const std::vector<float> bad = {L::infinity(), -L::infinity(), L::quiet_NaN(), -L::quiet_NaN(),
                                  L::signaling_NaN()};
  EXPECT_TRUE(all_finite(nullptr, 0));
  // 37 values: past any vector width, with a tail the vector loop does not cover.
  std::vector<float> v(37);
  for (size_t i = 0; i < v.size(); ++i) v[i] = finite[i % finite.size()];
  EXPECT_TRUE(all_finite(v.data(), v.size()));
  for (float b : bad) {
    for (size_t pos = 0; pos < v.size(); ++pos) {
      std::vector<float> w = v;
      w[pos] = b;
      EXPECT_FALSE(all_finite(w.data(), w.size())) << "value " << b << " at " << pos;
      EXPECT_TRUE(all_finite(w.data(), pos)) << "the values before " << pos;
    }
  }
}

}  // namespace
}  // namespace fedtl::protocols

// A site's input statistics and the domain-gap findings, on sets small enough to check by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

#include "common/data/input_stats.h"
#include "common/errors.h"

namespace fedtl::common {
namespace {

// Two grey 2x2 images: {0, 255, 0, 255} and {51, 51, 51, 51}.
ImageSet two_grey() {
  ImageSet s;
  s.channels = 1;
  s.height = s.width = 2;
  s.pixels = {0, 255, 0, 255, 51, 51, 51, 51};
  s.labels = {0, 1};
  return s;
}

TEST(InputStats, MomentsAfterNormalisationByHand) {
  // With mean 0.5, std 0.5 the values are -1, 1, -1, 1 and four times -0.6: mean -2.4/8 = -0.3,
  // E[x^2] = (4 + 4 * 0.36) / 8 = 0.68, variance 0.68 - 0.09 = 0.59.
  const auto st = input_stats(two_grey(), 1, {0.5}, {0.5});
  EXPECT_EQ(st.images, 2);
  EXPECT_EQ(st.grey, 2);
  EXPECT_EQ(st.colour, 0);
  ASSERT_EQ(st.mean.size(), 1u);
  EXPECT_NEAR(st.mean[0], -0.3, 1e-12);
  EXPECT_NEAR(st.std[0], std::sqrt(0.59), 1e-12);
  EXPECT_EQ(st.min_height, 2);
  EXPECT_EQ(st.max_width, 2);

  // Grey into a 3-channel backbone: every channel is the grey plane, under its own mean/std.
  const auto rgb = input_stats(two_grey(), 3, {0.5, 0.0, 0.5}, {0.5, 1.0, 0.25});
  ASSERT_EQ(rgb.mean.size(), 3u);
  EXPECT_NEAR(rgb.mean[0], -0.3, 1e-12);
  EXPECT_NEAR(rgb.mean[1], (2 + 4 * 0.2) / 8, 1e-12);  // values 0, 1, 0, 1, 0.2 x 4
  EXPECT_NEAR(rgb.std[2], 2 * std::sqrt(0.59), 1e-12);  // half the std: twice the spread
  EXPECT_EQ(rgb.grey, 2);
}

TEST(InputStats, ColourIntoOneChannelIsTheLumaAndStoredShapesCount) {
  ImageSet s;
  s.channels = 3;
  s.height = s.width = 1;
  s.pixels = {255, 0, 0, 0, 0, 255};  // a red pixel, a blue pixel (planar per image)
  s.labels = {0, 0};
  s.stored = {{3, 512, 300}, {1, 20, 40}};
  const auto st = input_stats(s, 1, {0.0}, {1.0});
  EXPECT_NEAR(st.mean[0], (0.299 + 0.114) / 2, 1e-12);
  EXPECT_EQ(st.grey, 1);
  EXPECT_EQ(st.colour, 1);
  EXPECT_EQ(st.min_height, 20);
  EXPECT_EQ(st.max_height, 512);
  EXPECT_EQ(st.min_width, 40);
  EXPECT_EQ(st.max_width, 300);
  // subset() keeps each image's stored shape.
  const auto one = s.subset({1});
  ASSERT_EQ(one.stored.size(), 1u);
  EXPECT_EQ(one.stored[0].height, 20u);

  EXPECT_THROW(input_stats(s, 2, {0, 0}, {1, 1}), ConfigError);
  EXPECT_THROW(input_stats(s, 1, {0, 0}, {1}), ConfigError);
}

TEST(InputStats, DomainGapFindings) {
  InputStats s;
  s.images = 10;
  s.grey = 10;
  s.min_height = s.max_height = s.min_width = s.max_width = 28;
  s.mean = {0.1};
  s.std = {1.1};
  EXPECT_TRUE(domain_gap_findings(s, 1, 28, 28).empty());  // the demo's shape: nothing to say
  // Grey into an RGB backbone.
  auto three = s;
  three.mean = {0.1, 0.1, 0.1};
  three.std = {1, 1, 1};
  const auto grey = domain_gap_findings(three, 3, 28, 28);
  ASSERT_EQ(grey.size(), 1u);
  EXPECT_NE(grey[0].find("10 of 10 images are grey"), std::string::npos) << grey[0];
  // Resized by more than 2x (either way); exactly 2x is not flagged.
  auto big = s;
  big.max_height = 57;
  EXPECT_EQ(domain_gap_findings(big, 1, 28, 28).size(), 1u);
  big.max_height = 56;
  EXPECT_TRUE(domain_gap_findings(big, 1, 28, 28).empty());
  auto small = s;
  small.min_width = 13;
  EXPECT_EQ(domain_gap_findings(small, 1, 28, 28).size(), 1u);
  // Moments far from 0 / 1, each limit.
  for (auto [m, sd, flagged] : {std::tuple{0.51, 1.0, true}, std::tuple{-0.51, 1.0, true}, std::tuple{0.5, 1.0, false},
                                std::tuple{0.0, 0.49, true}, std::tuple{0.0, 2.01, true}, std::tuple{0.0, 2.0, false}}) {
    auto t = s;
    t.mean = {m};
    t.std = {sd};
    EXPECT_EQ(domain_gap_findings(t, 1, 28, 28).size(), flagged ? 1u : 0u) << m << " " << sd;
  }
}

}  // namespace
}  // namespace fedtl::common

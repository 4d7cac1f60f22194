// Progress lines: the figures they print, and that a long step off a terminal logs periodically
// while a short one stays quiet.
#include <gtest/gtest.h>

#include <thread>

#include "common/progress.h"
#include "tests/captured_log.h"

namespace fedtl::common {
namespace {

using namespace std::chrono_literals;

TEST(Progress, FormatGivesCountShareRateAndEta) {
  EXPECT_EQ(Progress::format(250, 1000, "images", 2.0), "250/1000 images (25%), 125 images/s, ETA 6.0 s");
  EXPECT_EQ(Progress::format(1000, 1000, "images", 4.0), "1000/1000 images (100%), 250 images/s");
  EXPECT_EQ(Progress::format(30, 0, "batches", 3.0), "30 batches, 10 batches/s");
  EXPECT_EQ(Progress::format(1, 10000, "images", 1.0), "1/10000 images (0%), 1 images/s, ETA 2.8 h");
  EXPECT_EQ(Progress::format(0, 10, "images", 0.0), "0/10 images (0%), 0 images/s");
}

TEST(Progress, LongStepsLogPeriodicallyAndShortOnesStayQuiet) {
  test_support::CapturedLog log;
  {
    Progress quick("quick step", 10, "items", 1s, 1s);
    quick.advance(10);
  }
  EXPECT_FALSE(log.contains("quick step"));
  {
    Progress slow("slow step", 6, "items", 20ms, 50ms);
    for (int i = 0; i < 6; ++i) {
      std::this_thread::sleep_for(30ms);
      slow.advance();
    }
  }
  // stderr is not a terminal under ctest: periodic log lines, then a closing one.
  EXPECT_TRUE(log.contains("slow step: ")) << "no periodic line";
  EXPECT_TRUE(log.contains("slow step: 6/6 items (100%)")) << "no closing line";
}

}  // namespace
}  // namespace fedtl::common

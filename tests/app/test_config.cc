#include <gtest/gtest.h>

#include "app/config.h"
#include "common/errors.h"

using namespace fedtl;
using app::parse_job_config;

namespace {
std::string error_of(const std::string& toml) {
  try {
    parse_job_config(toml, "t.toml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Config, DefaultsAndValues) {
  auto c = parse_job_config("[job]\nsites = 4\nrounds = 7\n[train]\nlr = 0.1\n[partition]\nscheme = \"iid\"\n");
  EXPECT_EQ(c.partition.sites, 4);
  EXPECT_EQ(c.rounds, 7);
  EXPECT_DOUBLE_EQ(c.train.lr, 0.1);
  EXPECT_EQ(c.partition.scheme, common::PartitionScheme::kIid);
  EXPECT_EQ(c.data.target_classes.size(), 5u);
}

TEST(Config, UnknownKeysAreNamed) {
  EXPECT_NE(error_of("[train]\nlearning_rate = 0.1\n").find("unknown key 'train.learning_rate'"), std::string::npos);
  EXPECT_NE(error_of("[trian]\nlr = 0.1\n").find("'trian'"), std::string::npos);
}

TEST(Config, ImpossibleValuesAreRefused) {
  EXPECT_NE(error_of("[train]\nlr = -0.1\n").find("train.lr"), std::string::npos);
  EXPECT_NE(error_of("[job]\nrounds = 0\n").find("job.rounds"), std::string::npos);
  EXPECT_NE(error_of("[train]\nlr = \"fast\"\n").find("must be a number"), std::string::npos);
  EXPECT_NE(error_of("[backbone]\nfreeze = \"some\"\n").find("backbone.freeze"), std::string::npos);
  EXPECT_NE(error_of("[data]\nsource_classes = [1]\ntarget_classes = [1, 2]\n").find("both"), std::string::npos);
  EXPECT_NE(error_of("[job\n").find("t.toml:1"), std::string::npos);
}

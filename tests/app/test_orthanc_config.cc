// The site file's [data] keys for an Orthanc source, and the job file's refusal of one.
#include <gtest/gtest.h>

#include <toml++/toml.h>

#include "app/config.h"
#include "app/orthanc_config.h"
#include "common/errors.h"

using namespace fedtl;

namespace {

common::OrthancSource parse(const std::string& text) {
  const toml::table root = toml::parse(text);
  return app::parse_orthanc_source(*root["data"].as_table(), "/sites/a", "/sites/a/cache/orthanc");
}

std::string error_of(const std::string& text) {
  try {
    parse(text);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(OrthancSiteConfig, ReadsEveryKey) {
  const auto s = parse(R"([data]
source = "orthanc"
url = "https://pacs.example.org:8042/orthanc"
username = "fedtl"
password_file = "secrets/orthanc.pw"
query = { Modality = "CR", StudyDescription = "CHEST*" }
query_case_sensitive = false
label_tag = "BodyPartExamined"
cache_dir = "dl"
ca_file = "/etc/pacs/ca.crt"
connect_timeout_s = 3
read_timeout_s = 30.5
max_instance_bytes = 1000000
)");
  EXPECT_EQ(s.url, "https://pacs.example.org:8042/orthanc");
  EXPECT_EQ(s.username, "fedtl");
  EXPECT_EQ(s.password_file, "/sites/a/secrets/orthanc.pw");
  EXPECT_TRUE(s.password_env.empty());
  EXPECT_EQ(s.query.size(), 2u);
  EXPECT_EQ(s.query.at("Modality"), "CR");
  EXPECT_EQ(s.query.at("StudyDescription"), "CHEST*");
  EXPECT_FALSE(s.case_sensitive);
  EXPECT_EQ(s.label_tag, "BodyPartExamined");
  EXPECT_EQ(s.cache_dir, "/sites/a/dl");
  EXPECT_EQ(s.ca_file, "/etc/pacs/ca.crt");
  EXPECT_DOUBLE_EQ(s.connect_timeout_s, 3);
  EXPECT_DOUBLE_EQ(s.read_timeout_s, 30.5);
  EXPECT_EQ(s.max_instance_bytes, 1000000);
  EXPECT_FALSE(s.skip_bad);  // the caller's, from data.on_bad_file

  const auto d = parse("[data]\nurl = \"http://127.0.0.1:8042\"\n");
  EXPECT_EQ(d.cache_dir, "/sites/a/cache/orthanc");
  EXPECT_TRUE(d.query.empty());
  EXPECT_TRUE(app::is_orthanc_data_key("password_env"));
  EXPECT_FALSE(app::is_orthanc_data_key("source"));
  EXPECT_FALSE(app::is_orthanc_data_key("password"));
}

TEST(OrthancSiteConfig, RefusesBadValuesNamingTheKey) {
  EXPECT_NE(error_of("[data]\nsource = \"orthanc\"\n").find("data.url is required"), std::string::npos);
  EXPECT_NE(error_of("[data]\nurl = \"ftp://h\"\n").find("data.url"), std::string::npos);
  EXPECT_NE(error_of("[data]\nurl = \"http://h\"\nquery = { Modality = 3 }\n").find("data.query.Modality"),
            std::string::npos);
  EXPECT_NE(error_of("[data]\nurl = \"http://h\"\nquery = \"CR\"\n").find("data.query"), std::string::npos);
  EXPECT_NE(error_of("[data]\nurl = \"http://h\"\nusername = \"u\"\n").find("exactly one of"), std::string::npos);
  EXPECT_NE(error_of("[data]\nurl = \"http://h\"\nusername = \"u\"\npassword_file = \"a\"\npassword_env = \"B\"\n")
                .find("exactly one of"),
            std::string::npos);
  EXPECT_NE(error_of("[data]\nurl = \"http://h\"\nlabel_tag = \"Nope Nope\"\n").find("data.label_tag"),
            std::string::npos);
  EXPECT_NE(error_of("[data]\nurl = \"http://h\"\nread_timeout_s = -1\n").find("data.read_timeout_s"),
            std::string::npos);
  // A password in the URL is refused without being repeated.
  const std::string e = error_of("[data]\nurl = \"http://u:hunter2@h\"\n");
  EXPECT_NE(e.find("must not carry credentials"), std::string::npos) << e;
  EXPECT_EQ(e.find("hunter2"), std::string::npos) << e;
}

TEST(OrthancSiteConfig, AJobFileCannotNameAnOrthanc) {
  // The coordinator's job never carries a PACS address or credentials: only a site's file can.
  EXPECT_THROW(app::parse_job_config("[data]\nsource = \"orthanc\"\n", "job.toml"), ConfigError);
  EXPECT_THROW(app::parse_job_config("[data]\nurl = \"http://127.0.0.1:8042\"\n", "job.toml"), ConfigError);
}

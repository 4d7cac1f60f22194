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

// --- a site's data from Orthanc, end to end through the site file ---------------------------

#include <filesystem>
#include <fstream>

#include "app/site_data.h"
#include "common/data/image_set.h"
#include "common/sha256.h"
#include "protocols/fedtl.pb.h"
#include "tests/dicom_fixtures.h"
#include "tests/orthanc_server.h"

namespace {

namespace fs = std::filesystem;

std::string write_site(const fs::path& dir, const std::string& name, const std::string& data) {
  const fs::path p = dir / (name + ".toml");
  std::ofstream(p) << "[site]\nname = \"" << name << "\"\ncoordinator = \"127.0.0.1:1\"\n"
                   << "ca_cert = \"ca.crt\"\ncert = \"s.crt\"\nkey = \"s.key\"\n"
                   << "cache_dir = \"" << (dir / ("cache-" + name)).string() << "\"\n[data]\n"
                   << data;
  return p.string();
}

}  // namespace

// The trainer's input (load_site_data) is the same whether a site reads DICOM files or an
// Orthanc holding those files: same pixels, labels, classes and patients in the same order,
// so the same job trains the same model from either (training is deterministic in its input).
TEST(OrthancSiteData, SameTrainingSetAsTheSameDicomFiles) {
  test_support::OrthancServer server;
  ORTHANC_OR_SKIP(server);
  char tmpl[] = "/tmp/fedtl-orthanc-site-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const fs::path dir = tmpl;
  fs::create_directories(dir / "files");
  const std::string root = "1.2.826.0.1.3680043.10.98.";
  const std::vector<test_support::Fixture> fx = {
      {root + "1", "P1", "CR", "CHEST PA", "CHEST", 10}, {root + "2", "P1", "CR", "CHEST PA", "LUNG", 20},
      {root + "3", "P2", "CR", "CHEST AP", "CHEST", 30}, {root + "4", "P3", "CR", "CHEST PA", "LUNG", 40},
      {root + "5", "P3", "MR", "CHEST", "CHEST", 50},  // not selected by the query
  };
  for (const auto& f : fx) {
    const std::string path = (dir / "files" / (f.sop + ".dcm")).string();
    test_support::write_dicom(path, f);
    server.upload(path);
  }
  fs::remove(dir / "files" / (root + "5.dcm"));  // the files hold what the query selects
  std::ofstream(dir / "pw") << server.options().password << "\n";
  fs::permissions(dir / "pw", fs::perms::owner_read | fs::perms::owner_write);

  const auto from_files = app::load_site_config(
      write_site(dir, "files", "source = \"dicom\"\ndir = \"files\"\nlabel_tag = \"BodyPartExamined\"\n"));
  const auto from_orthanc = app::load_site_config(write_site(
      dir, "pacs",
      "source = \"orthanc\"\nurl = \"" + server.url() + "\"\nusername = \"" + server.options().user +
          "\"\npassword_file = \"pw\"\nquery = { Modality = \"CR\", StudyDescription = \"CHEST*\" }\n"
          "label_tag = \"BodyPartExamined\"\non_bad_file = \"skip\"\n"));
  EXPECT_EQ(from_orthanc.data_source, app::SiteDataSource::kOrthanc);
  EXPECT_EQ(from_orthanc.orthanc.password_file, (dir / "pw").string());
  EXPECT_EQ(from_orthanc.orthanc.cache_dir, (dir / "cache-pacs" / "orthanc").string());
  EXPECT_TRUE(from_orthanc.orthanc.skip_bad);

  v1::JobSpec job;
  job.mutable_model()->set_in_channels(1);
  job.mutable_model()->set_in_height(28);
  job.mutable_model()->set_in_width(28);
  job.mutable_model()->set_num_classes(2);
  job.add_class_names("CHEST");
  job.add_class_names("LUNG");
  const common::ImageSet a = app::load_site_data(from_files, job);
  const common::ImageSet b = app::load_site_data(from_orthanc, job);
  ASSERT_EQ(a.size(), 4);
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_EQ(a.class_names, b.class_names);
  EXPECT_EQ(a.groups, b.groups);
  EXPECT_EQ(common::sha256_hex(a.pixels.data(), a.pixels.size()), common::sha256_hex(b.pixels.data(), b.pixels.size()));
  // A second start of the site downloads nothing (its cache holds every selected instance).
  EXPECT_EQ(fs::exists(dir / "cache-pacs" / "orthanc" / (root + "4") / "orthanc.json"), true);
  std::error_code ec;
  fs::remove_all(dir, ec);
}

TEST(OrthancSiteData, OrthancKeysBelongToAnOrthancSource) {
  char tmpl[] = "/tmp/fedtl-orthanc-site-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const fs::path dir = tmpl;
  // A folder source with an Orthanc key: unknown key, as before.
  EXPECT_THROW(app::load_site_config(write_site(dir, "a", "source = \"folder\"\ndir = \"x\"\nurl = \"http://h\"\n")),
               ConfigError);
  // An Orthanc source without a URL.
  EXPECT_THROW(app::load_site_config(write_site(dir, "b", "source = \"orthanc\"\n")), ConfigError);
  // No data.dir needed for Orthanc.
  EXPECT_NO_THROW(app::load_site_config(
      write_site(dir, "c", "source = \"orthanc\"\nurl = \"http://127.0.0.1:8042\"\nlabel_tag = \"BodyPartExamined\"\n")));
  std::error_code ec;
  fs::remove_all(dir, ec);
}

// The data a job and a site read, bound to class names: the README's "your own images" recipe
// (a folder of five named classes), a coordinator that holds only its test set, a site whose
// folder names differ from the job's, and the class names in summary.json and model.pt.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>  // fixtures only; fedtl reads with libpng
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "app/config.h"
#include "app/job_setup.h"
#include "app/run.h"
#include "app/site_data.h"
#include "common/errors.h"
#include "common/files.h"
#include "common/model/transfer_model.h"
#include "tests/common/data/dicom_fixtures.h"

namespace fedtl {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kClasses = {"bag", "coat", "dress", "sandal", "shirt"};

class DataSources : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = fs::temp_directory_path() / ("fedtl_test_sources_app_" + std::to_string(rd()) + std::to_string(rd()));
    // Class k: 28x28 grey images with a bright bar at row 4k (learnable), noise elsewhere.
    std::mt19937 rng(3);
    for (const char* split : {"train", "test"})
      for (size_t k = 0; k < kClasses.size(); ++k) {
        const fs::path cls = dir_ / split / kClasses[k];
        fs::create_directories(cls);
        for (int i = 0; i < (std::string(split) == "train" ? 12 : 4); ++i) {
          std::vector<uint8_t> px(28 * 28);
          for (auto& p : px) p = static_cast<uint8_t>(rng() % 40);
          for (int r = 0; r < 4; ++r)
            for (int c = 0; c < 28; ++c) px[static_cast<size_t>((4 * k + r + 2) * 28 + c)] = 230;
          const std::string f = (cls / (std::to_string(i) + ".png")).string();
          ASSERT_TRUE(stbi_write_png(f.c_str(), 28, 28, 1, px.data(), 28));
        }
      }
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string recipe(const std::string& extra_data = "") const {
    return "[job]\nname = \"own\"\nsites = 2\nrounds = 2\nout = \"" + (dir_ / "out").string() +
           "\"\n[data]\nsource = \"folder\"\ndir = \"" + (dir_ / "train").string() + "\"\ntest_dir = \"" +
           (dir_ / "test").string() + "\"\n" + extra_data + "[partition]\nscheme = \"iid\"\n[backbone]\npath = \"" +
           (dir_ / "bb.pt").string() + "\"\n[pretrain]\nepochs = 1\n";
  }
  fs::path dir_;
};

// Grey images into a backbone that takes RGB: every site's summary entry says so, and the
// job warns of the domain gap once per site.
TEST_F(DataSources, GreyImagesIntoAnRgbBackboneWarnOfTheDomainGap) {
  common::model::InputSpec rgb;
  rgb.channels = 3;
  rgb.mean = {0.2, 0.2, 0.2};
  rgb.std = {0.3, 0.3, 0.3};
  common::write_file_atomic((dir_ / "bb.pt").string(), common::model::builtin_cnn(rgb, 1));
  std::string toml = recipe();
  const std::string tail = "\"\n[pretrain]";
  toml.replace(toml.find(tail), tail.size(),
               "\"\nchannels = 3\nmean = [0.2, 0.2, 0.2]\nstd = [0.3, 0.3, 0.3]\n[pretrain]");
  const app::JobConfig cfg = app::parse_job_config(toml, "rgb.toml");
  app::run_simulate(cfg);
  const auto s = nlohmann::json::parse(common::read_file((dir_ / "out/summary.json").string()));
  std::set<std::string> warned;
  for (const auto& w : s["warnings"])
    if (w["code"] == "domain_gap") {
      warned.insert(w["site"].get<std::string>());
      EXPECT_NE(w["message"].get<std::string>().find("images are grey"), std::string::npos) << w;
    }
  EXPECT_EQ(warned.size(), 2u) << s["warnings"].dump();
  for (const auto& site : s["per_site"]) {
    const auto& st = site["input_stats"];
    EXPECT_EQ(st["channels_as_stored"]["grey"], st["images"]) << site;
    EXPECT_EQ(st["backbone_input"], nlohmann::json({3, 28, 28}));
    EXPECT_EQ(st["mean"].size(), 3u);
  }
}

TEST_F(DataSources, ReadmeRecipeWithFiveNamedClassesRunsAsWritten) {
  // The backbone is pre-trained only if asked; here it exists already (the built-in CNN).
  common::write_file_atomic((dir_ / "bb.pt").string(), common::model::builtin_cnn(common::model::InputSpec{}, 1));
  const app::JobConfig cfg = app::parse_job_config(recipe(), "own.toml");
  const app::TaskData d = app::load_task_data(cfg);
  EXPECT_EQ(d.target_names, kClasses);
  EXPECT_EQ(d.target_train.size(), 60);
  EXPECT_EQ(d.target_test.size(), 20);
  EXPECT_EQ(d.source_train.size(), 0);

  const app::SimulateResult r = app::run_simulate(cfg);
  EXPECT_EQ(r.model_sha256.size(), 64u);
  const auto summary = nlohmann::json::parse(common::read_file((dir_ / "out/summary.json").string()));
  EXPECT_EQ(summary["class_names"].get<std::vector<std::string>>(), kClasses);
  // model.pt carries the class names as its `classes` attribute (read back from Python).
  const std::string cmd = "/usr/bin/python3 -c \"import torch,sys; m = torch.jit.load(sys.argv[1]); "
                          "sys.exit(0 if list(m.classes) == sys.argv[2].split(',') else 1)\" " +
                          (dir_ / "out/model.pt").string() + " bag,coat,dress,sandal,shirt";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

TEST_F(DataSources, ClassesAreBoundByNameAndMismatchesNamed) {
  // data.classes fixes the order; the test folder lacking a class is refused naming it.
  app::JobConfig cfg = app::parse_job_config(
      recipe("classes = [\"shirt\", \"sandal\", \"dress\", \"coat\", \"bag\"]\n"), "own.toml");
  EXPECT_EQ(app::load_task_data(cfg).target_names, (std::vector<std::string>{"shirt", "sandal", "dress", "coat", "bag"}));
  fs::remove_all(dir_ / "test/dress");
  try {
    app::load_task_data(cfg);
    ADD_FAILURE() << "a test set without 'dress' was accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("'dress'"), std::string::npos) << e.what();
  }
  cfg.data.images.missing_classes = common::MissingClasses::kWarn;
  EXPECT_EQ(app::load_task_data(cfg).target_test.size(), 16);
  // An extra, unknown folder in the training data: refused by name.
  fs::create_directories(dir_ / "train/aaa");
  fs::copy(dir_ / "train/bag/0.png", dir_ / "train/aaa/0.png");
  try {
    app::load_task_data(cfg);
    ADD_FAILURE() << "class 'aaa' was accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("'aaa'"), std::string::npos) << e.what();
  }
  // The coordinator needs only its test set: no data.dir at all.
  app::JobConfig coord = app::parse_job_config(recipe(), "own.toml");
  coord.data.dir.clear();
  coord.data.images.missing_classes = common::MissingClasses::kWarn;
  const app::TaskData t = app::load_task_data(coord, /*with_training=*/false);
  EXPECT_EQ(t.target_train.size(), 0);
  EXPECT_EQ(t.target_names, (std::vector<std::string>{"bag", "coat", "sandal", "shirt"}));
  // Fashion-MNIST keys mean nothing to other sources.
  EXPECT_THROW(app::parse_job_config(recipe("target_classes = [1, 3]\n"), "own.toml"), ConfigError);
  EXPECT_THROW(app::parse_job_config(recipe("max_image_pixels = 0\n"), "own.toml"), ConfigError);
  EXPECT_THROW(app::parse_job_config(recipe("window = [40]\n"), "own.toml"), ConfigError);
  EXPECT_THROW(app::parse_job_config(recipe("label_tag = \"BodyPartExamined\"\n"), "own.toml"), ConfigError);
}

TEST_F(DataSources, TestDirWithItsOwnManifest) {
  // The test images in one flat folder, labelled by data.test_labels (never by data.labels).
  fs::create_directories(dir_ / "flat");
  std::ofstream csv(dir_ / "flat/labels.csv");
  csv << "path,label\n";
  int n = 0;
  for (const auto& cls : kClasses)
    for (const auto& e : fs::directory_iterator(dir_ / "test" / cls)) {
      const std::string name = std::to_string(n++) + ".png";
      fs::copy(e.path(), dir_ / "flat" / name);
      csv << name << "," << cls << "\n";
    }
  csv.close();
  std::string toml = recipe("test_labels = \"" + (dir_ / "flat/labels.csv").string() + "\"\n");
  toml.replace(toml.find((dir_ / "test").string()), (dir_ / "test").string().size(), (dir_ / "flat").string());
  const app::TaskData d = app::load_task_data(app::parse_job_config(toml, "own.toml"));
  EXPECT_EQ(d.target_names, kClasses);
  EXPECT_EQ(d.target_test.size(), 20);
  // Image k of the flat folder has the label its manifest row gives: 4 per class, in order.
  for (int64_t i = 0; i < d.target_test.size(); ++i) EXPECT_EQ(d.target_test.labels[static_cast<size_t>(i)], i / 4);
  EXPECT_THROW(app::parse_job_config("[data]\ntest_labels = \"x.csv\"\n", "bad.toml"), ConfigError);
}

TEST_F(DataSources, SiteFolderIsBoundToTheJobsClassNames) {
  const app::JobConfig cfg = app::parse_job_config(recipe(), "own.toml");
  v1::JobSpec job = app::make_job_spec(app::with_resolved_classes(cfg, app::load_task_data(cfg)), std::string(64, '0'),
                                       1, {}, 2);
  ASSERT_EQ(job.class_names_size(), 5);
  EXPECT_EQ(job.class_names(1), "coat");
  job.mutable_model()->set_num_classes(5);
  app::SiteConfig site;
  site.data_source = app::SiteDataSource::kFolder;
  site.data_dir = (dir_ / "train").string();
  EXPECT_EQ(app::load_site_data(site, job).size(), 60);
  fs::rename(dir_ / "train/coat", dir_ / "train/overcoat");  // a site that named its folder differently
  try {
    app::load_site_data(site, job);
    ADD_FAILURE() << "'overcoat' accepted as a class of the job";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("'overcoat'"), std::string::npos) << e.what();
  }
}

TEST_F(DataSources, DicomJobSplitsTestSetByPatient) {
  // 3 classes x 8 patients x 1-3 images each, DICOM class folders, no test_dir: the test set is
  // data.test_fraction of the patients, never a patient on both sides.
  std::mt19937 rng(11);
  int uid = 0;
  for (const char* cls : {"cr", "ct", "mr"})
    for (int p = 0; p < 8; ++p)
      for (int i = 0, n = 1 + static_cast<int>(rng() % 3); i < n; ++i) {
        test_support::DicomSpec s;
        s.rows = s.cols = 8;
        s.bits_allocated = s.bits_stored = 8;
        s.values.assign(64, static_cast<int32_t>(rng() % 256));
        s.sop_uid = "1.2.3." + std::to_string(++uid);
        s.patient_id = std::string(cls) + "-" + std::to_string(p);
        const fs::path f = dir_ / "dicom" / cls / ("p" + std::to_string(p)) / ("i" + std::to_string(i));
        fs::create_directories(f.parent_path());
        test_support::write_dicom(f.string(), s);
      }
  const std::string toml = "[job]\nsites = 2\n[data]\nsource = \"dicom\"\ndir = \"" + (dir_ / "dicom").string() +
                           "\"\ntest_fraction = 0.25\n[backbone]\npath = \"" + (dir_ / "bb.pt").string() + "\"\n";
  const app::TaskData d = app::load_task_data(app::parse_job_config(toml, "dicom.toml"));
  EXPECT_EQ(d.target_names, (std::vector<std::string>{"cr", "ct", "mr"}));
  EXPECT_EQ(d.target_train.size() + d.target_test.size(), uid);
  ASSERT_EQ(d.target_train.groups.size(), static_cast<size_t>(d.target_train.size()));
  ASSERT_EQ(d.target_test.groups.size(), static_cast<size_t>(d.target_test.size()));
  std::set<std::string> train(d.target_train.groups.begin(), d.target_train.groups.end());
  for (const auto& g : d.target_test.groups) EXPECT_FALSE(train.count(g)) << "patient " << g << " on both sides";
  EXPECT_GT(d.target_test.size(), 0);
  // A site file with the DICOM keys: relative paths resolve against the site file.
  const fs::path site_toml = dir_ / "site.toml";
  std::ofstream(site_toml) << "[site]\nname = \"a\"\ncoordinator = \"h:1\"\nca_cert = \"ca\"\ncert = \"c\"\nkey = \"k\"\n"
                              "[data]\nsource = \"dicom\"\ndir = \"dicom\"\nlabels = \"labels.csv\"\nwindow = [40, 400]\n"
                              "frame = \"middle\"\non_bad_file = \"skip\"\nlabel_tag = \"0018,0015\"\n";
  const app::SiteConfig sc = app::load_site_config(site_toml.string());
  EXPECT_EQ(sc.data_source, app::SiteDataSource::kDicom);
  EXPECT_EQ(sc.data_images.labels, (dir_ / "labels.csv").string());
  EXPECT_EQ(sc.data_images.frame, common::DicomFrame::kMiddle);
  EXPECT_EQ(sc.data_images.window, (std::vector<double>{40, 400}));
  std::ofstream(site_toml, std::ios::app) << "missing_classes = \"sometimes\"\n";
  try {
    app::load_site_config(site_toml.string());
    ADD_FAILURE() << "bad data.missing_classes accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("data.missing_classes"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace fedtl

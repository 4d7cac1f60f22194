// DICOM decoding through DCMTK. Fixtures are written with DCMTK in the test (dicom_fixtures.h)
// and decoded values are checked against values computed here from the DICOM formulas
// (modality rescale, then the linear VOI window of PS3.3 C.11.2.1.2).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "common/data/dicom.h"
#include "common/data/sources.h"
#include "common/errors.h"
#include "tests/common/data/dicom_fixtures.h"

namespace fedtl::common {
namespace {

namespace fs = std::filesystem;
using test_support::DicomSpec;
using test_support::write_dicom;

class DicomTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = fs::temp_directory_path() / ("fedtl_test_dicom_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const {
    fs::create_directories((dir_ / name).parent_path());
    return (dir_ / name).string();
  }
  // Reads one file at its native 2x2 (or given) size, grey.
  DicomSet read_one(const std::string& p, DicomOptions o = {}) {
    if (o.height == 28) o.height = o.width = 2;
    return read_dicom_files({p}, o);
  }
  fs::path dir_;
};

// PS3.3 C.11.2.1.2.1, linear VOI function to 8 bits.
int voi(double x, double c, double w) {
  if (x <= c - 0.5 - (w - 1) / 2) return 0;
  if (x > c - 0.5 + (w - 1) / 2) return 255;
  return static_cast<int>(((x - (c - 0.5)) / (w - 1) + 0.5) * 255);
}

void expect_pixels(const ImageSet& s, const std::vector<int>& want, int tol = 1) {
  ASSERT_EQ(s.pixels.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(int{s.pixels[i]}, want[i], tol) << "pixel " << i;
}

DicomSpec ct16() {
  DicomSpec s;
  s.bits_stored = 12;
  s.values = {0, 1000, 2000, 3000};
  s.slope = "2";
  s.intercept = "-1000";  // modality values -1000, 1000, 3000, 5000
  s.window_center = "2000";
  s.window_width = "4000";
  return s;
}

std::vector<int> ct16_expected() {
  std::vector<int> out;
  for (double v : {0.0, 1000.0, 2000.0, 3000.0}) out.push_back(voi(2 * v - 1000, 2000, 4000));
  return out;
}

TEST_F(DicomTest, Monochrome2SixteenBitWithRescaleAndFileWindow) {
  const auto p = path("ct.dcm");
  write_dicom(p, ct16());
  const DicomSet d = read_one(p);
  ASSERT_EQ(d.images.size(), 1);
  EXPECT_EQ(d.sop_instance_uids[0], "1.2.826.0.1.3680043.2.1125.1.1");
  EXPECT_EQ(d.patient_ids[0], "P1");
  EXPECT_EQ(d.images.groups, std::vector<std::string>{"P1"});
  // -1000 -> 0, 1000 -> 63.7, 3000 -> 191.3, 5000 -> 255
  expect_pixels(d.images, ct16_expected());
  EXPECT_EQ(d.images.pixels[0], 0);
  EXPECT_EQ(d.images.pixels[3], 255);
}

TEST_F(DicomTest, ConfiguredWindowOverridesTheFile) {
  const auto p = path("ct.dcm");
  write_dicom(p, ct16());
  DicomOptions o;
  o.window = std::array<double, 2>{1000, 2001};  // modality 1000 -> centre
  const DicomSet d = read_one(p, o);
  std::vector<int> want;
  for (double v : {0.0, 1000.0, 2000.0, 3000.0}) want.push_back(voi(2 * v - 1000, 1000, 2001));
  expect_pixels(d.images, want);
  EXPECT_NEAR(int{d.images.pixels[1]}, 127, 1);
}

TEST_F(DicomTest, Monochrome1IsInverted) {
  DicomSpec s;
  s.bits_allocated = s.bits_stored = 8;
  s.photometric = "MONOCHROME1";
  s.values = {0, 100, 200, 255};
  const auto p = path("m1.dcm");
  write_dicom(p, s);
  DicomOptions o;
  o.window = std::array<double, 2>{128, 256};  // identity on 0..255
  const DicomSet d = read_one(p, o);
  expect_pixels(d.images, {255, 155, 55, 0});
  s.photometric = "MONOCHROME2";
  write_dicom(p, s);
  expect_pixels(read_one(p, o).images, {0, 100, 200, 255});
}

TEST_F(DicomTest, SignedPixels) {
  DicomSpec s;
  s.is_signed = true;
  s.values = {-2000, -1000, 0, 1000};
  const auto p = path("signed.dcm");
  write_dicom(p, s);
  DicomOptions o;
  o.window = std::array<double, 2>{0, 2001};
  std::vector<int> want;
  for (double v : {-2000.0, -1000.0, 0.0, 1000.0}) want.push_back(voi(v, 0, 2001));
  expect_pixels(read_one(p, o).images, want);
  // Without any window: the frame's min/max span 0..255.
  const DicomSet mm = read_one(p);
  EXPECT_EQ(mm.images.pixels[0], 0);
  EXPECT_EQ(mm.images.pixels[3], 255);
  EXPECT_NEAR(int{mm.images.pixels[2]}, 170, 1);  // (0 - -2000) / 3000 * 255
}

TEST_F(DicomTest, RgbToRgbAndGrey) {
  DicomSpec s;
  s.bits_allocated = s.bits_stored = 8;
  s.photometric = "RGB";
  s.samples = 3;
  s.values = {200, 100, 50, 0, 0, 0, 255, 255, 255, 10, 20, 30};
  const auto p = path("rgb.dcm");
  write_dicom(p, s);
  DicomOptions o;
  o.channels = 3;
  const DicomSet d = read_one(p, o);
  // planar: R plane, G plane, B plane
  expect_pixels(d.images, {200, 0, 255, 10, 100, 0, 255, 20, 50, 0, 255, 30}, 0);
  const DicomSet g = read_one(p);
  expect_pixels(g.images, {124, 0, 255, 18}, 1);  // 0.299 R + 0.587 G + 0.114 B
}

TEST_F(DicomTest, MultiFrameFirstOrMiddle) {
  DicomSpec s;
  s.bits_allocated = s.bits_stored = 8;
  s.frames = 3;
  s.values = {10, 10, 10, 10, 20, 20, 20, 20, 30, 30, 30, 30};
  const auto p = path("cine.dcm");
  write_dicom(p, s);
  DicomOptions o;
  o.window = std::array<double, 2>{128, 256};
  expect_pixels(read_one(p, o).images, {10, 10, 10, 10}, 0);
  o.frame = DicomFrame::kMiddle;
  expect_pixels(read_one(p, o).images, {20, 20, 20, 20}, 0);
}

TEST_F(DicomTest, CompressedTransferSyntaxesDecodeToTheSameValues) {
  // 16x16 (DCMTK 3.6.7's JPEG-LS encoder writes past its buffer for a 2x2 frame: valgrind).
  DicomSpec s = ct16();
  s.rows = s.cols = 16;
  s.values.clear();
  std::vector<int> want;
  for (int i = 0; i < 256; ++i) {
    const int v = (i * 37) % 4096;
    s.values.push_back(v);
    want.push_back(voi(2.0 * v - 1000, 2000, 4000));
  }
  DicomOptions o;
  o.height = o.width = 16;
  for (auto xfer : {EXS_LittleEndianExplicit, EXS_JPEGProcess14SV1, EXS_RLELossless, EXS_JPEGLSLossless}) {
    s.xfer = xfer;
    const auto p = path("c" + std::to_string(static_cast<int>(xfer)) + ".dcm");
    write_dicom(p, s);
    DcmFileFormat check;
    ASSERT_TRUE(check.loadFile(p.c_str()).good());
    ASSERT_EQ(check.getDataset()->getOriginalXfer(), xfer) << "fixture not compressed";
    expect_pixels(read_dicom_files({p}, o).images, want);
  }
}

TEST_F(DicomTest, HeaderAboveMaxPixelsIsRefusedBeforeDecoding) {
  DicomSpec s;
  s.rows = 60000;
  s.cols = 60000;  // 3.6 Gpixel claimed; the pixel data holds 4 values
  s.values = {1, 2, 3, 4};
  const auto p = path("bomb.dcm");
  write_dicom(p, s);
  try {
    read_one(p);
    ADD_FAILURE() << "not refused";
  } catch (const DataError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("bomb.dcm"), std::string::npos) << msg;
    EXPECT_NE(msg.find("max_image_pixels"), std::string::npos) << msg;
  }
}

TEST_F(DicomTest, CorruptFilesNamedOrSkippedAndNoPixelDataCounted) {
  const auto good = path("a/good.dcm");
  write_dicom(good, ct16());
  const auto bad = path("a/bad.dcm");
  {
    std::ofstream out(bad, std::ios::binary);
    out << std::string(128, '\0') << "DICM" << "garbage that is not a data set";
  }
  const auto truncated = path("a/trunc");
  {
    std::ifstream in(good, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream out(truncated, std::ios::binary);
    out << bytes.substr(0, bytes.size() - 5);  // pixel data cut short
  }
  test_support::write_dicom_without_pixels(path("a/report.dcm"), "1.2.3.4");
  try {
    read_dicom_files({good, bad}, DicomOptions{});
    ADD_FAILURE() << "corrupt file accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.dcm"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_dicom_files({truncated}, DicomOptions{}), DataError);
  DicomOptions skip;
  skip.on_bad_file = BadFile::kSkip;
  const DicomSet d = read_dicom_dir((dir_ / "a").string(), skip);
  EXPECT_EQ(d.images.size(), 1);
  EXPECT_EQ(d.without_pixel_data, 1);
  EXPECT_EQ(d.unused.count, 3);  // bad, report, truncated
  EXPECT_NE(d.unused.describe().find("bad.dcm"), std::string::npos) << d.unused.describe();
}

TEST_F(DicomTest, DirectoryIsSearchedRecursivelyWithTagsAndLabels) {
  DicomSpec s = ct16();
  s.body_part = "CHEST";
  s.sop_uid = "1.2.3.1";
  s.patient_id = "PA";
  write_dicom(path("chest/p1/img1"), s);  // no extension, found by the DICM magic
  s.sop_uid = "1.2.3.2";
  s.patient_id = "PB";
  s.body_part = "HAND";
  write_dicom(path("hand/img2.dcm"), s);
  { std::ofstream(path("chest/notes.txt")) << "not DICOM"; }
  DicomOptions o;
  o.tags = {"BodyPartExamined", "0008,0060"};
  const DicomSet d = read_dicom_dir(dir_.string(), o);
  ASSERT_EQ(d.images.size(), 2);
  EXPECT_EQ(d.sop_instance_uids, (std::vector<std::string>{"1.2.3.1", "1.2.3.2"}));
  EXPECT_EQ(d.tag_values[0], (std::vector<std::string>{"CHEST", "OT"}));
  EXPECT_EQ(d.tag_values[1][0], "HAND");
  EXPECT_EQ(d.unused.count, 1);
  o.tags = {"NoSuchKeyword"};
  EXPECT_THROW(read_dicom_dir(dir_.string(), o), ConfigError);

  // As a labelled source: class folders, a tag, or a manifest keyed by SOPInstanceUID.
  SourceSpec spec;
  spec.kind = SourceKind::kDicom;
  spec.dir = dir_.string();
  spec.read.height = spec.read.width = 2;
  ImageSet by_folder = read_source(spec);
  EXPECT_EQ(by_folder.class_names, (std::vector<std::string>{"chest", "hand"}));
  EXPECT_EQ(by_folder.labels, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(by_folder.groups, (std::vector<std::string>{"PA", "PB"}));
  spec.label_tag = "BodyPartExamined";
  EXPECT_EQ(read_source(spec).class_names, (std::vector<std::string>{"CHEST", "HAND"}));
  // Labelled by a tag, the images come in SOPInstanceUID order (an Orthanc source's order),
  // not path order: a file whose path sorts first but whose UID sorts last comes last.
  s.sop_uid = "1.2.3.3";
  s.patient_id = "PC";
  s.body_part = "KNEE";
  write_dicom(path("a_first_by_path.dcm"), s);
  ImageSet by_tag = read_source(spec);
  EXPECT_EQ(by_tag.class_names, (std::vector<std::string>{"CHEST", "HAND", "KNEE"}));
  EXPECT_EQ(by_tag.labels, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(by_tag.groups, (std::vector<std::string>{"PA", "PB", "PC"}));
  fs::remove(path("a_first_by_path.dcm"));
  spec.label_tag.clear();
  spec.labels = path("labels.csv");
  { std::ofstream(spec.labels) << "sop_instance_uid,label,split\n1.2.3.2,normal,train\n1.2.3.1,pneumonia,test\n"; }
  ImageSet train = read_source(spec, Split::kTrain);
  EXPECT_EQ(train.class_names, std::vector<std::string>{"normal"});
  EXPECT_EQ(train.groups, std::vector<std::string>{"PB"});
  EXPECT_EQ(read_source(spec, Split::kTest).class_names, std::vector<std::string>{"pneumonia"});
  { std::ofstream(spec.labels) << "sop_instance_uid,label\n1.2.3.2,normal\n9.9.9,pneumonia\n"; }
  try {
    read_source(spec);
    ADD_FAILURE() << "unknown SOPInstanceUID accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("labels.csv:3"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace fedtl::common

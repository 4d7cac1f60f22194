// PNG/JPEG decoding limits, unusable files, class binding by name, label manifests and
// patient-level splits.
#include <gtest/gtest.h>
#include <zlib.h>

#include <stb/stb_image_write.h>  // implementation in test_data.cc

#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "common/data/classes.h"
#include "common/data/datasets.h"
#include "common/data/manifest.h"
#include "common/data/partition.h"
#include "common/data/sources.h"
#include "common/errors.h"
#include "tests/captured_log.h"

namespace fedtl::common {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

class Dir {
 public:
  Dir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("fedtl_test_sources_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~Dir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const {
    fs::create_directories((path_ / name).parent_path());
    return (path_ / name).string();
  }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

void write(const std::string& path, const Bytes& b) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}
void write_text(const std::string& path, const std::string& s) { std::ofstream(path, std::ios::binary) << s; }

void png(const std::string& path, int w, int h, uint8_t v) {
  Bytes px(static_cast<size_t>(w * h), v);
  ASSERT_TRUE(stbi_write_png(path.c_str(), w, h, 1, px.data(), w));
}

template <typename T, typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const T& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    return msg;
  }
  ADD_FAILURE() << "no exception";
  return "";
}

void put_be32(Bytes& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
}
void chunk(Bytes& out, const char* type, const Bytes& data) {
  put_be32(out, static_cast<uint32_t>(data.size()));
  Bytes body(type, type + 4);
  body.insert(body.end(), data.begin(), data.end());
  out.insert(out.end(), body.begin(), body.end());
  put_be32(out, static_cast<uint32_t>(crc32(0, body.data(), static_cast<uInt>(body.size()))));
}

// A ~70-byte PNG whose header claims 100000 x 100000 RGBA pixels (40 GB decoded).
Bytes png_bomb() {
  Bytes b = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  Bytes ihdr;
  put_be32(ihdr, 100000);
  put_be32(ihdr, 100000);
  ihdr.insert(ihdr.end(), {8, 6, 0, 0, 0});
  chunk(b, "IHDR", ihdr);
  Bytes z(64);
  uLongf zn = z.size();
  const Bytes row(16, 0);
  compress(z.data(), &zn, row.data(), row.size());
  z.resize(zn);
  chunk(b, "IDAT", z);
  chunk(b, "IEND", {});
  return b;
}

TEST(ImageFile, PngBombRefusedBeforeDecoding) {
  Dir d;
  const Bytes bomb = png_bomb();
  EXPECT_LT(bomb.size(), 100u);
  write(d / "cls/bomb.png", bomb);
  const std::string msg = error_of<DataError>([&] { load_image_file(d / "cls/bomb.png", 1, 4, 4); });
  EXPECT_NE(msg.find("bomb.png"), std::string::npos) << msg;
  EXPECT_NE(msg.find("100000x100000"), std::string::npos) << msg;
  EXPECT_NE(msg.find("data.max_image_pixels"), std::string::npos) << msg;
  // The same refusal through the folder reader.
  EXPECT_NE(error_of<DataError>([&] { read_image_folder(d.str(), 1, 4, 4); }).find("max_image_pixels"),
            std::string::npos);
}

TEST(ImageFile, JpegHeaderAboveTheLimitIsRefused) {
  Dir d;
  const std::string p = d / "a.jpg";
  Bytes px(64 * 64 * 3, 90);
  ASSERT_TRUE(stbi_write_jpg(p.c_str(), 64, 64, 3, px.data(), 90));
  // Below the limit it decodes; with the limit under 64x64 it is refused.
  EXPECT_EQ(load_image_file(p, 1, 8, 8).size(), 64u);
  EXPECT_NE(error_of<DataError>([&] { load_image_file(p, 1, 8, 8, 4095); }).find("64x64"), std::string::npos);
  // Patch the SOF0 frame size to 60000 x 60000: refused from the header.
  std::ifstream in(p, std::ios::binary);
  Bytes b((std::istreambuf_iterator<char>(in)), {});
  bool patched = false;
  for (size_t i = 2; i + 8 < b.size(); ++i)
    if (b[i] == 0xff && b[i + 1] == 0xc0) {
      b[i + 5] = 0xea, b[i + 6] = 0x60, b[i + 7] = 0xea, b[i + 8] = 0x60;
      patched = true;
      break;
    }
  ASSERT_TRUE(patched);
  write(d / "big.jpg", b);
  EXPECT_NE(error_of<DataError>([&] { load_image_file(d / "big.jpg", 1, 8, 8); }).find("60000x60000"),
            std::string::npos);
}

TEST(ImageFolderClasses, UnusableFilesAreCountedAndListedAndEmptyClassIsNamed) {
  Dir d;
  png(d / "coat/1.png", 4, 4, 10);
  png(d / "dress/1.png", 4, 4, 20);
  write(d / "coat/scan.tif", {'I', 'I', 42, 0, 8, 0, 0, 0});
  write_text(d / "dress/notes.txt", "hello");
  write_text(d / "README", "top-level file");
  test_support::CapturedLog log;
  const ImageSet s = read_image_folder(d.str(), 1, 4, 4);
  EXPECT_EQ(s.size(), 2);
  EXPECT_TRUE(log.warned("3 files not used")) << "unusable files not reported";
  EXPECT_TRUE(log.warned("scan.tif (not a PNG or JPEG file)"));
  fs::create_directories(d / "aaa/x");
  fs::remove(d / "aaa/x");
  const std::string msg = error_of<DataError>([&] { read_image_folder(d.str(), 1, 4, 4); });
  EXPECT_NE(msg.find("'aaa'"), std::string::npos) << msg;
  // A corrupt image with on_bad_file = skip is listed and left out.
  fs::remove_all(d / "aaa");
  write(d / "dress/broken.png", {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0});
  EXPECT_THROW(read_image_folder(d.str(), 1, 4, 4), DataError);
  ReadOptions o;
  o.height = o.width = 4;
  o.on_bad_file = BadFile::kSkip;
  EXPECT_EQ(read_image_folder(d.str(), o).size(), 2);
  EXPECT_TRUE(log.warned("broken.png"));
}

TEST(BindClasses, LabelsFollowNamesNotFolderOrder) {
  ImageSet s;
  s.channels = s.height = s.width = 1;
  s.class_names = {"coat", "dress", "shirt"};
  s.labels = {0, 1, 2, 2};
  s.pixels = {0, 1, 2, 2};
  ImageSet a = s;
  bind_classes(a, {"shirt", "coat", "dress"}, MissingClasses::kError, "site");
  EXPECT_EQ(a.labels, (std::vector<int64_t>{1, 2, 0, 0}));
  EXPECT_EQ(a.class_names, (std::vector<std::string>{"shirt", "coat", "dress"}));
  // A renamed folder is refused by name.
  ImageSet b = s;
  b.class_names[0] = "overcoat";
  const std::string msg = error_of<DataError>([&] { bind_classes(b, {"coat", "dress", "shirt"}, MissingClasses::kError, "site A"); });
  EXPECT_NE(msg.find("'overcoat'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("site A"), std::string::npos) << msg;
  // A missing class: an error, or a warning when allowed.
  ImageSet c = s;
  EXPECT_NE(error_of<DataError>([&] { bind_classes(c, {"coat", "dress", "shirt", "bag"}, MissingClasses::kError, "x"); })
                .find("'bag'"),
            std::string::npos);
  test_support::CapturedLog log;
  bind_classes(c, {"coat", "dress", "shirt", "bag"}, MissingClasses::kWarn, "x");
  EXPECT_TRUE(log.warned("'bag'"));
  EXPECT_EQ(c.labels, (std::vector<int64_t>{0, 1, 2, 2}));
}

TEST(Manifest, RowsPatientsAndSplits) {
  Dir d;
  png(d / "img/a.png", 4, 4, 10);
  png(d / "img/b.png", 4, 4, 20);
  png(d / "img/c.png", 4, 4, 30);
  write_text(d / "labels.csv",
             "path,label,patient_id,split,comment\nimg/a.png,normal,P1,train,x\n\"img/b.png\",\"pneu, left\",P2,test,\n"
             "img/c.png,normal,P1,train,\n");
  const Manifest m = read_manifest(d / "labels.csv", d.str());
  ASSERT_EQ(m.rows.size(), 3u);
  EXPECT_TRUE(m.has_split);
  EXPECT_EQ(m.rows[1].label, "pneu, left");
  EXPECT_EQ(m.rows[1].line, 3);
  EXPECT_EQ(m.labels(), (std::vector<std::string>{"normal", "pneu, left"}));

  SourceSpec spec;
  spec.dir = d.str();
  spec.labels = d / "labels.csv";
  spec.read.height = spec.read.width = 4;
  const ImageSet train = read_source(spec, Split::kTrain);
  EXPECT_EQ(train.size(), 2);
  EXPECT_EQ(train.groups, (std::vector<std::string>{"P1", "P1"}));
  EXPECT_EQ(train.pixels[16], 30);
  EXPECT_EQ(read_source(spec, Split::kTest).class_names, std::vector<std::string>{"pneu, left"});

  auto bad = [&](const std::string& body, const std::string& want) {
    write_text(d / "bad.csv", body);
    const std::string msg = error_of<DataError>([&] { read_manifest(d / "bad.csv", d.str()); });
    EXPECT_NE(msg.find(want), std::string::npos) << msg;
    EXPECT_NE(msg.find("bad.csv"), std::string::npos) << msg;
  };
  bad("path,label\nimg/a.png,x\nimg/missing.png,y\n", "bad.csv:3: file 'img/missing.png' not found");
  bad("path,label,split\nimg/a.png,x,training\n", "bad.csv:2: unknown split 'training'");
  bad("path,label\nimg/a.png,\n", "bad.csv:2: empty label");
  bad("path,label\nimg/a.png,x\nimg/a.png,y\n", "bad.csv:3: 'img/a.png' is listed twice");
  bad("path,label\n../etc/passwd,x\n", "leaves data.dir");
  bad("file,label\na,b\n", "path");
  bad("path,label,patient_id,split\nimg/a.png,x,P1,train\nimg/b.png,x,P1,test\n",
      "bad.csv:3: patient 'P1' is in split 'test' here and in 'train' on line 2");
}

TEST(SplitByGroup, NoPatientOnBothSides) {
  std::vector<int64_t> labels;
  std::vector<std::string> groups;
  std::mt19937 rng(5);
  for (int p = 0; p < 60; ++p) {
    const int n = 1 + static_cast<int>(rng() % 5);
    for (int i = 0; i < n; ++i) {
      labels.push_back(p % 3);
      groups.push_back("P" + std::to_string(p));
    }
  }
  const GroupSplit s = split_by_group(labels, groups, 0.25, 7);
  std::set<std::string> kept, held;
  for (int64_t i : s.kept) kept.insert(groups[static_cast<size_t>(i)]);
  for (int64_t i : s.held_out) held.insert(groups[static_cast<size_t>(i)]);
  for (const auto& g : held) EXPECT_FALSE(kept.count(g)) << g << " on both sides";
  EXPECT_EQ(s.kept.size() + s.held_out.size(), labels.size());
  const double frac = static_cast<double>(s.held_out.size()) / static_cast<double>(labels.size());
  EXPECT_GT(frac, 0.15);
  EXPECT_LE(frac, 0.26);
  std::set<int64_t> held_labels;
  for (int64_t i : s.held_out) held_labels.insert(labels[static_cast<size_t>(i)]);
  EXPECT_EQ(held_labels.size(), 3u);  // stratified: every class held out
  // Deterministic in the seed; another seed gives another split.
  EXPECT_EQ(split_by_group(labels, groups, 0.25, 7).held_out, s.held_out);
  EXPECT_NE(split_by_group(labels, groups, 0.25, 8).held_out, s.held_out);
  // Without groups: an image-level split; 0 holds out nothing; bad inputs refused.
  EXPECT_NEAR(static_cast<double>(split_by_group(labels, {}, 0.5, 1).held_out.size()), labels.size() / 2.0, 2.0);
  EXPECT_TRUE(split_by_group(labels, groups, 0, 1).held_out.empty());
  EXPECT_THROW(split_by_group(labels, groups, 1.0, 1), ConfigError);
  EXPECT_THROW(split_by_group(labels, {"a"}, 0.5, 1), ConfigError);
}

}  // namespace
}  // namespace fedtl::common

// Dataset readers and ImageSet helpers. Fixtures are generated into a temporary directory.
#include <gtest/gtest.h>
#include <zlib.h>

// libstb ships the reader only; the writer implementation lives in this test alone.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "common/data/datasets.h"
#include "common/errors.h"
#include "common/data/image_set.h"

namespace fedtl::common {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("fedtl_test_data_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void put_be32(Bytes& b, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) b.push_back(static_cast<uint8_t>(v >> shift));
}

Bytes idx_images(uint32_t n, uint32_t h, uint32_t w, uint8_t base = 0) {
  Bytes b;
  put_be32(b, 0x00000803);
  put_be32(b, n);
  put_be32(b, h);
  put_be32(b, w);
  for (uint32_t i = 0; i < n * h * w; ++i) b.push_back(static_cast<uint8_t>(base + i));
  return b;
}

Bytes idx_labels(const std::vector<uint8_t>& labels) {
  Bytes b;
  put_be32(b, 0x00000801);
  put_be32(b, static_cast<uint32_t>(labels.size()));
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

void write_raw(const std::string& path, const Bytes& b) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  ASSERT_TRUE(out.good()) << path;
}

void write_gz(const std::string& path, const Bytes& b) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  ASSERT_EQ(gzwrite(f, b.data(), static_cast<unsigned>(b.size())), static_cast<int>(b.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

Bytes read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

// Runs f, expects a T whose message contains every one of `parts`.
template <typename T, typename F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no exception thrown";
  } catch (const T& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message should be one line: " << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

// ---- IDX -----------------------------------------------------------------------------------

TEST(ReadIdx, RawFilesGiveShapePixelsAndLabels) {
  TempDir dir;
  write_raw(dir / "img", idx_images(3, 2, 4));
  write_raw(dir / "lbl", idx_labels({7, 0, 9}));
  const ImageSet set = read_idx(dir / "img", dir / "lbl");
  EXPECT_EQ(set.size(), 3);
  EXPECT_EQ(set.channels, 1);
  EXPECT_EQ(set.height, 2);
  EXPECT_EQ(set.width, 4);
  ASSERT_EQ(set.pixels.size(), 24u);
  for (size_t i = 0; i < 24; ++i) EXPECT_EQ(set.pixels[i], i);
  EXPECT_EQ(set.labels, (std::vector<int64_t>{7, 0, 9}));
}

TEST(ReadIdx, GzipDetectedByContentNotName) {
  TempDir dir;
  const Bytes img = idx_images(5, 3, 3, 40), lbl = idx_labels({1, 2, 3, 4, 5});
  write_raw(dir / "raw_img", img);
  write_raw(dir / "raw_lbl", lbl);
  // gzip content under a plain name, and plain content under a .gz name.
  write_gz(dir / "gz_img", img);
  write_raw(dir / "plain.gz", lbl);
  ASSERT_EQ(read_all(dir / "gz_img")[0], 0x1f);
  const ImageSet a = read_idx(dir / "raw_img", dir / "raw_lbl");
  const ImageSet b = read_idx(dir / "gz_img", dir / "plain.gz");
  EXPECT_EQ(a.pixels, b.pixels);
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_EQ(b.height, 3);
}

TEST(ReadIdx, TruncatedRawSaysExpectedAndActualBytes) {
  TempDir dir;
  Bytes img = idx_images(4, 5, 5);  // 100 payload bytes
  img.resize(img.size() - 30);
  write_raw(dir / "img", img);
  write_raw(dir / "lbl", idx_labels({0, 1, 2, 3}));
  expect_error<DataError>([&] { read_idx(dir / "img", dir / "lbl"); },
                          {dir / "img", "truncated", "expected 100 bytes", "got 70"});
}

TEST(ReadIdx, TruncatedGzipIsReportedNotCrashed) {
  TempDir dir;
  const Bytes img = idx_images(4, 5, 5);
  // A truncated payload inside a valid gzip stream...
  write_gz(dir / "short_payload.gz", Bytes(img.begin(), img.end() - 10));
  write_raw(dir / "lbl", idx_labels({0, 1, 2, 3}));
  expect_error<DataError>([&] { read_idx(dir / "short_payload.gz", dir / "lbl"); },
                          {"short_payload.gz", "expected 100 bytes", "got 90"});
  // ...and a gzip file cut in the middle of its stream.
  write_gz(dir / "full.gz", img);
  Bytes gz = read_all(dir / "full.gz");
  gz.resize(gz.size() / 2);
  write_raw(dir / "cut.gz", gz);
  expect_error<DataError>([&] { read_idx(dir / "cut.gz", dir / "lbl"); }, {"cut.gz"});
}

TEST(ReadIdx, TruncatedLabelsAndHeader) {
  TempDir dir;
  write_raw(dir / "img", idx_images(4, 2, 2));
  Bytes lbl = idx_labels({0, 1, 2, 3});
  lbl.pop_back();
  write_raw(dir / "lbl", lbl);
  expect_error<DataError>([&] { read_idx(dir / "img", dir / "lbl"); }, {dir / "lbl", "expected 4 bytes", "got 3"});
  write_raw(dir / "hdr", Bytes{0, 0, 8, 3, 0, 0});
  expect_error<DataError>([&] { read_idx(dir / "hdr", dir / "lbl"); }, {dir / "hdr", "header"});
  write_raw(dir / "empty", {});
  expect_error<DataError>([&] { read_idx(dir / "empty", dir / "lbl"); }, {dir / "empty"});
}

TEST(ReadIdx, BadMagicIsRejected) {
  TempDir dir;
  write_raw(dir / "lbl", idx_labels({0}));
  write_raw(dir / "img", idx_images(1, 2, 2));
  // Labels passed as images and vice versa.
  expect_error<DataError>([&] { read_idx(dir / "lbl", dir / "img"); }, {dir / "lbl", "magic", "0x00000801"});
  // A non-uint8 element type (0x0D = float).
  Bytes f = idx_images(1, 2, 2);
  f[2] = 0x0D;
  write_raw(dir / "float", f);
  expect_error<DataError>([&] { read_idx(dir / "float", dir / "lbl"); }, {dir / "float", "magic"});
  write_raw(dir / "text", Bytes{'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd', '!', '!', '!', '!', '!'});
  expect_error<DataError>([&] { read_idx(dir / "text", dir / "lbl"); }, {dir / "text", "magic"});
}

TEST(ReadIdx, AbsurdDimensionsRejectedBeforeAllocating) {
  TempDir dir;
  Bytes img;
  put_be32(img, 0x00000803);
  for (int i = 0; i < 3; ++i) put_be32(img, 0xFFFFFFFFu);  // product overflows 64 bits
  write_raw(dir / "huge", img);
  write_raw(dir / "lbl", idx_labels({0}));
  expect_error<DataError>([&] { read_idx(dir / "huge", dir / "lbl"); }, {dir / "huge", "too large"});
  Bytes big;  // 2e9 bytes: no overflow but over the limit
  put_be32(big, 0x00000803);
  put_be32(big, 2000000);
  put_be32(big, 1000);
  put_be32(big, 1);
  write_raw(dir / "big", big);
  expect_error<DataError>([&] { read_idx(dir / "big", dir / "lbl"); }, {dir / "big", "too large"});
  Bytes zero = idx_images(1, 0, 3);
  write_raw(dir / "zero", zero);
  expect_error<DataError>([&] { read_idx(dir / "zero", dir / "lbl"); }, {dir / "zero", "empty"});
}

TEST(ReadIdx, CountMismatchTrailingBytesAndMissingFile) {
  TempDir dir;
  write_raw(dir / "img", idx_images(3, 2, 2));
  write_raw(dir / "lbl", idx_labels({0, 1}));
  expect_error<DataError>([&] { read_idx(dir / "img", dir / "lbl"); }, {"2 labels", "3 images"});
  Bytes extra = idx_images(2, 2, 2);
  extra.push_back(0);
  write_raw(dir / "extra", extra);
  expect_error<DataError>([&] { read_idx(dir / "extra", dir / "lbl"); }, {dir / "extra", "trailing"});
  expect_error<DataError>([&] { read_idx(dir / "nope", dir / "lbl"); }, {dir / "nope"});
}

// ---- Fashion-MNIST ---------------------------------------------------------------------------

TEST(FashionMnist, MissingDirectoryNamesTheDebianPackage) {
  TempDir dir;
  expect_error<DataError>([&] { read_fashion_mnist("t10k", dir / "absent"); },
                          {"t10k-images-idx3-ubyte", "not found", "dataset-fashion-mnist", "scripts/setup"});
}

TEST(FashionMnist, UnknownSplitIsAConfigError) {
  expect_error<ConfigError>([] { read_fashion_mnist("validation"); }, {"validation", "t10k"});
}

TEST(FashionMnist, ReadsUnpackedFilesToo) {
  TempDir dir;
  write_raw(dir / "train-images-idx3-ubyte", idx_images(2, 28, 28));
  write_raw(dir / "train-labels-idx1-ubyte", idx_labels({3, 9}));
  const ImageSet set = read_fashion_mnist("train", dir.path().string());
  EXPECT_EQ(set.size(), 2);
  EXPECT_EQ(set.class_names.size(), 10u);
  EXPECT_EQ(set.class_names[9], "Ankle boot");
}

TEST(FashionMnist, RealTestSplit) {
  if (!fs::exists(fs::path(kFashionMnistDir) / "t10k-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << kFashionMnistDir << " absent; install the Debian package dataset-fashion-mnist";
  }
  const ImageSet set = read_fashion_mnist("t10k");
  ASSERT_EQ(set.size(), 10000);
  EXPECT_EQ(set.channels, 1);
  EXPECT_EQ(set.height, 28);
  EXPECT_EQ(set.width, 28);
  EXPECT_EQ(set.pixels.size(), 10000u * 28 * 28);
  std::vector<int64_t> per_class(10, 0);
  for (int64_t l : set.labels) {
    ASSERT_GE(l, 0);
    ASSERT_LE(l, 9);
    ++per_class[static_cast<size_t>(l)];
  }
  for (int64_t c : per_class) EXPECT_EQ(c, 1000);  // the test split is balanced
  // Real images: not blank, and both dark background and bright pixels occur.
  const auto [lo, hi] = std::minmax_element(set.pixels.begin(), set.pixels.end());
  EXPECT_EQ(*lo, 0);
  EXPECT_EQ(*hi, 255);
  EXPECT_EQ(set.labels[0], 9);  // the first t10k image is an ankle boot
}

// ---- image folders -------------------------------------------------------------------------

void write_png(const std::string& path, int w, int h, int comp, const Bytes& hwc) {
  ASSERT_TRUE(stbi_write_png(path.c_str(), w, h, comp, hwc.data(), w * comp)) << path;
}

Bytes solid(int w, int h, const Bytes& px) {
  Bytes out;
  for (int i = 0; i < w * h; ++i) out.insert(out.end(), px.begin(), px.end());
  return out;
}

class ImageFolder : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_.path() / "b_shoe");
    fs::create_directories(dir_.path() / "a_bag");
    fs::create_directories(dir_.path() / ".hidden");
    // a_bag: one grey 4x4 (value 80) and one RGB 4x4 solid (200, 100, 50).
    write_png(dir_ / "a_bag/1.png", 4, 4, 1, solid(4, 4, {80}));
    write_png(dir_ / "a_bag/2.PNG", 4, 4, 3, solid(4, 4, {200, 100, 50}));
    write_raw(dir_ / "a_bag/README.txt", Bytes{'x'});  // not an image: listed in a warning, not read
    // b_shoe: RGBA 2x1 horizontal gradient 0 -> 100 (alpha dropped), and a JPEG.
    write_png(dir_ / "b_shoe/grad.png", 2, 1, 4, Bytes{0, 0, 0, 255, 100, 100, 100, 128});
    ASSERT_TRUE(stbi_write_jpg((dir_ / "b_shoe/photo.jpg").c_str(), 8, 8, 3, solid(8, 8, {30, 160, 220}).data(), 95));
  }
  TempDir dir_;
};

TEST_F(ImageFolder, GreyAtNativeSize) {
  // Only the first class has 4x4 images, so read a folder with just that class.
  TempDir one;
  fs::create_directories(one.path() / "only");
  fs::copy(dir_ / "a_bag/1.png", one / "only/1.png");
  fs::copy(dir_ / "a_bag/2.PNG", one / "only/2.PNG");
  const ImageSet set = read_image_folder(one.path().string(), 1, 4, 4);
  ASSERT_EQ(set.size(), 2);
  EXPECT_EQ(set.class_names, std::vector<std::string>{"only"});
  EXPECT_EQ(set.pixels[0], 80);
  // RGB -> grey with 0.299/0.587/0.114: 59.8 + 58.7 + 5.7 = 124.2
  for (int i = 16; i < 32; ++i) EXPECT_EQ(set.pixels[static_cast<size_t>(i)], 124);
}

TEST_F(ImageFolder, LabelsFollowSortedClassNamesAndImagesAreResized) {
  const ImageSet set = read_image_folder(dir_.path().string(), 3, 1, 4);
  EXPECT_EQ(set.class_names, (std::vector<std::string>{"a_bag", "b_shoe"}));
  EXPECT_EQ(set.labels, (std::vector<int64_t>{0, 0, 1, 1}));
  EXPECT_EQ(set.channels, 3);
  EXPECT_EQ(set.image_bytes(), 12);
  ASSERT_EQ(set.pixels.size(), 48u);
  auto px = [&](int image, int c, int x) { return int{set.pixels[static_cast<size_t>(image * 12 + c * 4 + x)]}; };
  // Grey -> RGB replicates the value into every channel; a solid image stays solid.
  for (int c = 0; c < 3; ++c)
    for (int x = 0; x < 4; ++x) EXPECT_EQ(px(0, c, x), 80);
  for (int x = 0; x < 4; ++x) {
    EXPECT_EQ(px(1, 0, x), 200);
    EXPECT_EQ(px(1, 1, x), 100);
    EXPECT_EQ(px(1, 2, x), 50);
  }
  // Sorted file names: grad.png before photo.jpg. Bilinear 2 -> 4 with half-pixel centres:
  // source x = -0.25, 0.25, 0.75, 1.25 -> clamped 0, 0.25, 0.75, 1 -> 0, 25, 75, 100.
  const int expected[4] = {0, 25, 75, 100};
  for (int c = 0; c < 3; ++c)
    for (int x = 0; x < 4; ++x) EXPECT_EQ(px(2, c, x), expected[x]) << "c=" << c << " x=" << x;
  // JPEG is lossy: a solid colour comes back close to it.
  for (int x = 0; x < 4; ++x) {
    EXPECT_NEAR(px(3, 0, x), 30, 4);
    EXPECT_NEAR(px(3, 1, x), 160, 4);
    EXPECT_NEAR(px(3, 2, x), 220, 4);
  }
}

TEST_F(ImageFolder, CorruptImageNamesTheFile) {
  write_raw(dir_ / "b_shoe/broken.png", Bytes{0x89, 'P', 'N', 'G', 1, 2, 3});
  expect_error<DataError>([&] { read_image_folder(dir_.path().string(), 1, 4, 4); }, {"broken.png"});
}

TEST_F(ImageFolder, BadRequestsAndMissingFolders) {
  expect_error<ConfigError>([&] { read_image_folder(dir_.path().string(), 2, 4, 4); }, {"channels"});
  expect_error<ConfigError>([&] { read_image_folder(dir_.path().string(), 1, 0, 4); }, {"size"});
  expect_error<DataError>([&] { read_image_folder(dir_ / "missing", 1, 4, 4); }, {"missing", "not found"});
  TempDir empty;
  expect_error<DataError>([&] { read_image_folder(empty.path().string(), 1, 4, 4); }, {"no class sub-folders"});
  fs::create_directories(empty.path() / "cls");
  expect_error<DataError>([&] { read_image_folder(empty.path().string(), 1, 4, 4); }, {"cls", "no usable PNG/JPEG"});
}

// ---- ImageSet ------------------------------------------------------------------------------

ImageSet tiny_set() {
  ImageSet s;
  s.channels = 1;
  s.height = 1;
  s.width = 2;
  s.labels = {0, 1, 2, 3, 1};
  s.pixels = {0, 1, 10, 11, 20, 21, 30, 31, 40, 41};
  s.class_names = {"zero", "one", "two", "three"};
  return s;
}

TEST(ImageSet, SubsetCopiesInGivenOrder) {
  const ImageSet s = tiny_set().subset({4, 0, 4});
  EXPECT_EQ(s.size(), 3);
  EXPECT_EQ(s.labels, (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(s.pixels, (Bytes{40, 41, 0, 1, 40, 41}));
  EXPECT_EQ(s.width, 2);
  EXPECT_EQ(s.class_names.size(), 4u);
  EXPECT_THROW(tiny_set().subset({5}), ConfigError);
  EXPECT_THROW(tiny_set().subset({-1}), ConfigError);
}

TEST(ImageSet, SelectClassesRelabelsToPosition) {
  const ImageSet s = tiny_set().select_classes({3, 1});
  EXPECT_EQ(s.labels, (std::vector<int64_t>{1, 0, 1}));  // old 1, 3, 1 -> positions 1, 0, 1
  EXPECT_EQ(s.pixels, (Bytes{10, 11, 30, 31, 40, 41}));
  EXPECT_EQ(s.class_names, (std::vector<std::string>{"three", "one"}));
  EXPECT_EQ(tiny_set().select_classes({7}).size(), 0);
  EXPECT_THROW(tiny_set().select_classes({1, 1}), ConfigError);
}

}  // namespace
}  // namespace fedtl::common

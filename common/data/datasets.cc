#include "common/data/datasets.h"

#include <stb/stb_image.h>  // implementation comes from Debian's libstb
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include "common/errors.h"

namespace fedtl::common {
namespace {

namespace fs = std::filesystem;

// Nothing fedtl reads legitimately comes close; bigger headers are corrupt or hostile.
constexpr uint64_t kMaxPayloadBytes = 1'000'000'000;
constexpr int64_t kMaxImageSide = 1 << 14;

// Sequential reader over a raw or gzip-compressed file (chosen by the 0x1f 0x8b magic).
class ByteReader {
 public:
  explicit ByteReader(const std::string& path) : path_(path) {
    std::ifstream probe(path, std::ios::binary);
    if (!probe) throw DataError(path + ": cannot open (missing or unreadable)");
    std::array<unsigned char, 2> magic{};
    probe.read(reinterpret_cast<char*>(magic.data()), 2);
    gzip_ = probe.gcount() == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
    if (gzip_) {
      gz_ = gzopen(path.c_str(), "rb");
      if (gz_ == nullptr) throw DataError(path + ": cannot open gzip stream");
    } else {
      raw_.open(path, std::ios::binary);
      if (!raw_) throw DataError(path + ": cannot open (missing or unreadable)");
    }
  }
  ~ByteReader() {
    if (gz_ != nullptr) gzclose(gz_);
  }
  ByteReader(const ByteReader&) = delete;
  ByteReader& operator=(const ByteReader&) = delete;

  bool gzip() const { return gzip_; }

  // Reads up to n bytes; returns how many were read (fewer only at end of data).
  // A corrupt gzip stream throws; a truncated one just ends early.
  uint64_t read(void* dst, uint64_t n) {
    auto* out = static_cast<char*>(dst);
    uint64_t got = 0;
    if (!gzip_) {
      raw_.read(out, static_cast<std::streamsize>(n));
      return static_cast<uint64_t>(raw_.gcount());
    }
    while (got < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<uint64_t>(n - got, 1u << 30));
      const int r = gzread(gz_, out + got, chunk);
      if (r > 0) {
        got += static_cast<uint64_t>(r);
        continue;
      }
      if (r < 0) {
        int errnum = 0;
        const char* msg = gzerror(gz_, &errnum);
        if (errnum == Z_BUF_ERROR) break;  // "unexpected end of file": truncated archive
        throw DataError(path_ + ": corrupt gzip data (" + std::string(msg ? msg : "unknown") + ")");
      }
      break;  // r == 0: end of data
    }
    return got;
  }

  void read_exact(void* dst, uint64_t n, const char* what) {
    const uint64_t got = read(dst, n);
    if (got != n) {
      throw DataError(path_ + ": truncated " + what + ": expected " + std::to_string(n) +
                      " bytes, got " + std::to_string(got) + (gzip_ ? " (after gunzip)" : ""));
    }
  }

  // Reads exactly n bytes into `out` (resized to n), growing it as data arrives, so a header
  // that declares more than the file holds cannot make us allocate up to kMaxPayloadBytes.
  void read_exact_into(std::vector<uint8_t>& out, uint64_t n, const char* what) {
    constexpr uint64_t kChunk = uint64_t{1} << 20;
    out.clear();
    uint64_t got = 0;
    while (got < n) {
      const uint64_t want = std::min(kChunk, n - got);
      out.resize(static_cast<size_t>(got + want));
      const uint64_t r = read(out.data() + got, want);
      got += r;
      if (r < want) break;
    }
    out.resize(static_cast<size_t>(got));
    if (got != n) {
      throw DataError(path_ + ": truncated " + what + ": expected " + std::to_string(n) +
                      " bytes, got " + std::to_string(got) + (gzip_ ? " (after gunzip)" : ""));
    }
  }

  bool at_end() {
    char c;
    return read(&c, 1) == 0;
  }

 private:
  std::string path_;
  bool gzip_ = false;
  gzFile gz_ = nullptr;
  std::ifstream raw_;
};

uint32_t be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// Reads an IDX header, checks magic (uint8 data, `ndims` dimensions) and returns the dims.
std::vector<uint64_t> read_idx_header(ByteReader& in, const std::string& path, int ndims) {
  unsigned char magic[4];
  in.read_exact(magic, 4, "IDX header");
  const uint32_t want = 0x00000800u | static_cast<uint32_t>(ndims);
  if (be32(magic) != want) {
    char buf[96];
    std::snprintf(buf, sizeof buf, ": bad IDX magic 0x%08x (expected 0x%08x: uint8, %d dims)",
                  be32(magic), want, ndims);
    throw DataError(path + buf);
  }
  std::vector<uint64_t> dims(static_cast<size_t>(ndims));
  uint64_t total = 1;
  for (auto& d : dims) {
    unsigned char b[4];
    in.read_exact(b, 4, "IDX header");
    d = be32(b);
    total *= std::max<uint64_t>(d, 1);  // each factor < 2^32, and we stop before overflow
    if (total > kMaxPayloadBytes) {
      throw DataError(path + ": IDX dimensions too large (more than " + std::to_string(kMaxPayloadBytes) +
                      " bytes); file is corrupt");
    }
  }
  return dims;
}

bool has_image_extension(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

// Converts interleaved HWC pixels with `in_c` components (1 grey, 2 grey+alpha, 3 RGB,
// 4 RGBA) to planar CHW with `out_c` (1 or 3) channels. Alpha is dropped.
std::vector<uint8_t> to_planar(const uint8_t* src, int64_t h, int64_t w, int in_c, int64_t out_c) {
  const int64_t hw = h * w;
  std::vector<uint8_t> out(static_cast<size_t>(out_c * hw));
  const bool colour = in_c >= 3;
  for (int64_t i = 0; i < hw; ++i) {
    const uint8_t* px = src + i * in_c;
    if (out_c == 1) {
      out[static_cast<size_t>(i)] =
          colour ? static_cast<uint8_t>(std::lround(0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2])) : px[0];
    } else {
      for (int64_t c = 0; c < 3; ++c) out[static_cast<size_t>(c * hw + i)] = colour ? px[c] : px[0];
    }
  }
  return out;
}

// Bilinear resize of one planar channel, half-pixel centres (as OpenCV/PIL), edges clamped.
void resize_channel(const uint8_t* src, int64_t sh, int64_t sw, uint8_t* dst, int64_t dh, int64_t dw) {
  auto axis = [](int64_t d, int64_t s_size, int64_t d_size, int64_t& lo, int64_t& hi, double& frac) {
    double s = (static_cast<double>(d) + 0.5) * static_cast<double>(s_size) / static_cast<double>(d_size) - 0.5;
    s = std::clamp(s, 0.0, static_cast<double>(s_size - 1));
    lo = static_cast<int64_t>(std::floor(s));
    hi = std::min(lo + 1, s_size - 1);
    frac = s - static_cast<double>(lo);
  };
  for (int64_t y = 0; y < dh; ++y) {
    int64_t y0, y1;
    double fy;
    axis(y, sh, dh, y0, y1, fy);
    for (int64_t x = 0; x < dw; ++x) {
      int64_t x0, x1;
      double fx;
      axis(x, sw, dw, x0, x1, fx);
      const double top = src[y0 * sw + x0] * (1 - fx) + src[y0 * sw + x1] * fx;
      const double bot = src[y1 * sw + x0] * (1 - fx) + src[y1 * sw + x1] * fx;
      dst[y * dw + x] = static_cast<uint8_t>(std::clamp(std::lround(top * (1 - fy) + bot * fy), 0L, 255L));
    }
  }
}

struct StbFree {
  void operator()(unsigned char* p) const { stbi_image_free(p); }
};

// Loads one PNG/JPEG and returns it as planar `channels` x height x width.
std::vector<uint8_t> load_image(const fs::path& file, int64_t channels, int64_t height, int64_t width) {
  const std::string path = file.string();
  int w = 0, h = 0, n = 0;
  // Check the header first so a hostile file cannot make us allocate a huge buffer.
  if (!stbi_info(path.c_str(), &w, &h, &n)) {
    throw DataError(path + ": not a readable PNG/JPEG (" + std::string(stbi_failure_reason()) + ")");
  }
  if (w <= 0 || h <= 0 || w > kMaxImageSide || h > kMaxImageSide) {
    throw DataError(path + ": image size " + std::to_string(w) + "x" + std::to_string(h) +
                    " out of range (1.." + std::to_string(kMaxImageSide) + " per side)");
  }
  std::unique_ptr<unsigned char, StbFree> data(stbi_load(path.c_str(), &w, &h, &n, 0));
  if (!data) {
    throw DataError(path + ": cannot decode image (" + std::string(stbi_failure_reason()) + ")");
  }
  if (n < 1 || n > 4) throw DataError(path + ": unsupported channel count " + std::to_string(n));
  std::vector<uint8_t> planar = to_planar(data.get(), h, w, n, channels);
  if (h == height && w == width) return planar;
  std::vector<uint8_t> out(static_cast<size_t>(channels * height * width));
  for (int64_t c = 0; c < channels; ++c) {
    resize_channel(planar.data() + c * int64_t{h} * w, h, w, out.data() + c * height * width, height, width);
  }
  return out;
}

}  // namespace

ImageSet read_idx(const std::string& images_path, const std::string& labels_path) {
  ImageSet set;
  ByteReader images(images_path);
  const auto idims = read_idx_header(images, images_path, 3);
  if (idims[1] == 0 || idims[2] == 0) {
    throw DataError(images_path + ": IDX image size " + std::to_string(idims[1]) + "x" +
                    std::to_string(idims[2]) + " is empty");
  }
  ByteReader labels(labels_path);
  const auto ldims = read_idx_header(labels, labels_path, 1);
  if (ldims[0] != idims[0]) {
    throw DataError(labels_path + ": " + std::to_string(ldims[0]) + " labels but " + images_path + " has " +
                    std::to_string(idims[0]) + " images");
  }

  set.channels = 1;
  set.height = static_cast<int64_t>(idims[1]);
  set.width = static_cast<int64_t>(idims[2]);
  const uint64_t n = idims[0];
  images.read_exact_into(set.pixels, n * idims[1] * idims[2], "IDX image data");
  if (!images.at_end()) throw DataError(images_path + ": unexpected trailing bytes after IDX image data");

  std::vector<uint8_t> raw_labels;
  labels.read_exact_into(raw_labels, n, "IDX label data");
  if (!labels.at_end()) throw DataError(labels_path + ": unexpected trailing bytes after IDX label data");
  set.labels.assign(raw_labels.begin(), raw_labels.end());
  return set;
}

ImageSet read_fashion_mnist(const std::string& split, const std::string& dir) {
  if (split != "train" && split != "t10k") {
    throw ConfigError("Fashion-MNIST split '" + split + "' unknown; use \"train\" or \"t10k\"");
  }
  // The Debian package ships gzip files; accept unpacked ones too.
  auto locate = [&](const std::string& stem) {
    for (const char* suffix : {".gz", ""}) {
      const fs::path p = fs::path(dir) / (stem + suffix);
      std::error_code ec;
      if (fs::is_regular_file(p, ec)) return p.string();
    }
    throw DataError((fs::path(dir) / (stem + ".gz")).string() +
                    " not found; install the Debian package dataset-fashion-mnist (scripts/setup does)");
  };
  const std::string images = locate(split + "-images-idx3-ubyte");
  const std::string labels = locate(split + "-labels-idx1-ubyte");
  ImageSet set = read_idx(images, labels);
  set.class_names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  for (int64_t label : set.labels) {
    if (label < 0 || label > 9) {
      throw DataError(labels + ": label " + std::to_string(label) + " outside Fashion-MNIST's 0..9");
    }
  }
  return set;
}

ImageSet read_image_folder(const std::string& dir, int64_t channels, int64_t height, int64_t width) {
  if (channels != 1 && channels != 3) {
    throw ConfigError("read_image_folder: channels must be 1 or 3, got " + std::to_string(channels));
  }
  if (height <= 0 || width <= 0 || height > kMaxImageSide || width > kMaxImageSide) {
    throw ConfigError("read_image_folder: image size " + std::to_string(height) + "x" + std::to_string(width) +
                      " out of range (1.." + std::to_string(kMaxImageSide) + " per side)");
  }
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw DataError(dir + ": image folder not found or not a directory");

  // Sorted listings make labels and sample order independent of the file system.
  auto sorted_entries = [](const fs::path& p, bool want_dirs) {
    std::vector<fs::path> out;
    std::error_code ec;
    for (fs::directory_iterator it(p, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (name.empty() || name[0] == '.') continue;
      std::error_code ec2;
      const bool match = want_dirs ? it->is_directory(ec2) : (it->is_regular_file(ec2) && has_image_extension(it->path()));
      if (match) out.push_back(it->path());
    }
    if (ec) throw DataError(p.string() + ": cannot list directory (" + ec.message() + ")");
    std::sort(out.begin(), out.end());
    return out;
  };

  const auto class_dirs = sorted_entries(dir, true);
  if (class_dirs.empty()) throw DataError(dir + ": no class sub-folders found (expected one per class)");

  ImageSet set;
  set.channels = channels;
  set.height = height;
  set.width = width;
  const auto bytes = static_cast<size_t>(set.image_bytes());
  for (size_t label = 0; label < class_dirs.size(); ++label) {
    set.class_names.push_back(class_dirs[label].filename().string());
    for (const auto& file : sorted_entries(class_dirs[label], false)) {
      const auto img = load_image(file, channels, height, width);
      if (set.pixels.size() + bytes > kMaxPayloadBytes) {
        throw DataError(dir + ": image folder larger than " + std::to_string(kMaxPayloadBytes) + " bytes decoded");
      }
      set.pixels.insert(set.pixels.end(), img.begin(), img.begin() + static_cast<std::ptrdiff_t>(bytes));
      set.labels.push_back(static_cast<int64_t>(label));
    }
  }
  if (set.labels.empty()) throw DataError(dir + ": no PNG/JPEG images found in its class sub-folders");
  return set;
}

}  // namespace fedtl::common

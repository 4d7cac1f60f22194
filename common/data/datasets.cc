#include "common/data/datasets.h"

#include <spdlog/spdlog.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include "common/data/image_file.h"
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

void UnusedFiles::add(const std::string& path, const std::string& why) {
  ++count;
  // An error's message names the file already: list it once.
  const std::string prefix = path + ": ";
  const std::string reason = why.rfind(prefix, 0) == 0 ? why.substr(prefix.size()) : why;
  if (first.size() < kListed) first.push_back(path + " (" + reason + ")");
}

std::string UnusedFiles::describe() const {
  std::string out = std::to_string(count) + (count == 1 ? " file" : " files") + " not used";
  for (size_t i = 0; i < first.size(); ++i) out += (i == 0 ? ": " : ", ") + first[i];
  if (count > static_cast<int64_t>(first.size())) out += ", ...";
  return out;
}

void UnusedFiles::log(const std::string& where) const {
  if (count > 0) spdlog::warn("{}: {}", where, describe());
}

namespace {

void check_read_options(const ReadOptions& o) {
  if (o.channels != 1 && o.channels != 3)
    throw ConfigError("read_image_folder: channels must be 1 or 3, got " + std::to_string(o.channels));
  if (o.height <= 0 || o.width <= 0 || o.height > kMaxImageSide || o.width > kMaxImageSide)
    throw ConfigError("read_image_folder: image size " + std::to_string(o.height) + "x" + std::to_string(o.width) +
                      " out of range (1.." + std::to_string(kMaxImageSide) + " per side)");
  if (o.max_image_pixels < 1) throw ConfigError("data.max_image_pixels must be >= 1");
}

// Sorted listings make labels and sample order independent of the file system. Hidden
// entries (".name") are left out; they are the file system's, not the data's.
std::vector<fs::path> sorted_entries(const fs::path& p) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (fs::directory_iterator it(p, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.empty() || name[0] == '.') continue;
    out.push_back(it->path());
  }
  if (ec) throw DataError(p.string() + ": cannot list directory (" + ec.message() + ")");
  std::sort(out.begin(), out.end());
  return out;
}

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

// Decodes `file` into `set` (label `label`, group `group`), or, for a corrupt file with
// on_bad_file = skip, lists it in `unused`. Returns whether it was added.
bool add_image(ImageSet& set, const std::string& file, int64_t label, const std::string& group, const ReadOptions& o,
               UnusedFiles& unused) {
  std::vector<uint8_t> img;
  StoredShape shape;
  try {
    img = load_image_file(file, o.channels, o.height, o.width, o.max_image_pixels, &shape);
  } catch (const DataError& e) {
    if (o.on_bad_file == BadFile::kError) throw;
    unused.add(file, e.what());
    return false;
  }
  const auto bytes = static_cast<size_t>(set.image_bytes());
  if (set.pixels.size() + bytes > kMaxPayloadBytes)
    throw DataError(file + ": the data set grows past " + std::to_string(kMaxPayloadBytes) + " bytes decoded");
  set.pixels.insert(set.pixels.end(), img.begin(), img.begin() + static_cast<std::ptrdiff_t>(bytes));
  set.labels.push_back(label);
  set.groups.push_back(group);
  set.stored.push_back(shape);
  return true;
}

}  // namespace

ImageSet read_image_folder(const std::string& dir, int64_t channels, int64_t height, int64_t width) {
  ReadOptions o;
  o.channels = channels;
  o.height = height;
  o.width = width;
  return read_image_folder(dir, o);
}

ImageSet read_image_folder(const std::string& dir, const ReadOptions& o) {
  check_read_options(o);
  if (!is_dir(dir)) throw DataError(dir + ": image folder not found or not a directory");
  UnusedFiles unused;
  std::vector<fs::path> class_dirs;
  for (const auto& e : sorted_entries(dir)) {
    if (is_dir(e))
      class_dirs.push_back(e);
    else
      unused.add(e.string(), "not in a class sub-folder");
  }
  if (class_dirs.empty()) throw DataError(dir + ": no class sub-folders found (expected one per class)");

  ImageSet set;
  set.channels = o.channels;
  set.height = o.height;
  set.width = o.width;
  for (size_t label = 0; label < class_dirs.size(); ++label) {
    const std::string name = class_dirs[label].filename().string();
    set.class_names.push_back(name);
    int64_t added = 0;
    for (const auto& file : sorted_entries(class_dirs[label])) {
      const std::string path = file.string();
      if (is_dir(file)) {
        unused.add(path, "a folder inside a class folder");
        continue;
      }
      if (sniff_image(path) == ImageKind::kOther && !has_image_extension(file)) {
        unused.add(path, "not a PNG or JPEG file");
        continue;
      }
      added += add_image(set, path, static_cast<int64_t>(label), "", o, unused) ? 1 : 0;
    }
    if (added == 0)
      throw DataError(class_dirs[label].string() + ": class folder '" + name +
                      "' holds no usable PNG/JPEG image (remove it, or add its images)");
  }
  set.groups.clear();  // no patient ids in a folder layout
  unused.log(dir);
  return set;
}

ImageSet read_image_files(const std::vector<std::string>& paths, const std::vector<int64_t>& labels,
                          const std::vector<std::string>& groups, const std::vector<std::string>& class_names,
                          const ReadOptions& o, UnusedFiles* unused_out) {
  check_read_options(o);
  if (labels.size() != paths.size() || (!groups.empty() && groups.size() != paths.size()))
    throw ConfigError("read_image_files: paths, labels and groups differ in length");
  ImageSet set;
  set.channels = o.channels;
  set.height = o.height;
  set.width = o.width;
  set.class_names = class_names;
  UnusedFiles unused;
  for (size_t i = 0; i < paths.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= static_cast<int64_t>(class_names.size()))
      throw ConfigError("read_image_files: label " + std::to_string(labels[i]) + " has no class name");
    add_image(set, paths[i], labels[i], groups.empty() ? "" : groups[i], o, unused);
  }
  if (groups.empty()) set.groups.clear();
  if (unused_out) *unused_out = unused;
  return set;
}

}  // namespace fedtl::common

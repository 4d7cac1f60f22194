// Readers for the image formats fedtl accepts. All throw fedtl::DataError with a one-line
// message naming the file and what is wrong (missing, truncated, bad magic, bad shape).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "common/data/image_file.h"
#include "common/data/image_set.h"

namespace fedtl::common {

// Where the Debian package dataset-fashion-mnist installs its IDX files.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// Reads an IDX image file (magic 0x00000803, uint8, N x H x W) and its IDX label file
// (magic 0x00000801, N uint8 labels). Files may be gzip-compressed (detected by content,
// not by name). Images come back with channels == 1.
ImageSet read_idx(const std::string& images_path, const std::string& labels_path);

// Reads Fashion-MNIST's "train" or "t10k" split from `dir` (default kFashionMnistDir).
// A missing directory/file names the Debian package to install.
ImageSet read_fashion_mnist(const std::string& split, const std::string& dir = kFashionMnistDir);

// data.on_bad_file: a corrupt or undecodable file ends the read with its DataError, or is
// listed (UnusedFiles) and left out.
enum class BadFile { kError, kSkip };

// What an image reader produces and how strict it is.
struct ReadOptions {
  int64_t channels = 1, height = 28, width = 28;  // every image is converted/resized to this
  int64_t max_image_pixels = kDefaultMaxImagePixels;  // larger headers are refused undecoded
  BadFile on_bad_file = BadFile::kError;
};

// Files a reader saw but could not use (a TIFF, a text file, a corrupt image skipped with
// BadFile::kSkip): counted, the first kListed named with the reason. Never silent: readers
// log it (one warning line) and callers may report it.
struct UnusedFiles {
  static constexpr size_t kListed = 5;
  int64_t count = 0;
  std::vector<std::string> first;
  void add(const std::string& path, const std::string& why);
  std::string describe() const;             // "2 files not used: a.tif (not a PNG or JPEG file), ..."
  void log(const std::string& where) const;  // spdlog::warn when count > 0
};

// Reads an image folder: one sub-folder per class (sorted by name -> label 0..K-1), PNG or
// JPEG files inside (recognised by content), grey or RGB, converted and resized to
// options.channels x height x width. class_names is filled (labels bind to these names; see
// common/data/classes.h to bind them to a job's classes). A class folder without a usable
// image is a DataError naming it; anything that is not an image (a TIFF, a text file, a file
// beside the class folders) is counted and listed in one warning; hidden files are ignored.
ImageSet read_image_folder(const std::string& dir, const ReadOptions& options);
// The same with default limits (64 Mpixel, corrupt files are errors).
ImageSet read_image_folder(const std::string& dir, int64_t channels, int64_t height, int64_t width);

// Reads the listed PNG/JPEG files in order with the given labels (indices into class_names)
// and groups (patient ids; empty = unknown), e.g. from a label manifest. With
// BadFile::kSkip, files that fail are left out and listed in *unused (when given).
ImageSet read_image_files(const std::vector<std::string>& paths, const std::vector<int64_t>& labels,
                          const std::vector<std::string>& groups, const std::vector<std::string>& class_names,
                          const ReadOptions& options, UnusedFiles* unused = nullptr);

}  // namespace fedtl::common

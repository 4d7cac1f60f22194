// Readers for the image formats fedtl accepts. All throw fedtl::DataError with a one-line
// message naming the file and what is wrong (missing, truncated, bad magic, bad shape).
#pragma once
#include <string>

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

// Reads an image folder: one sub-folder per class (sorted by name -> label 0..K-1), PNG or
// JPEG files inside, grey or RGB. All images are converted to `channels` (1 or 3) and
// resized (bilinear) to height x width when they differ. class_names is filled.
ImageSet read_image_folder(const std::string& dir, int64_t channels, int64_t height, int64_t width);

}  // namespace fedtl::common

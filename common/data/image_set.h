// In-memory labelled image collections, independent of LibTorch.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fedtl::common {

// How one image was stored before a reader converted and resized it (common/data/input_stats.h).
struct StoredShape {
  uint8_t channels = 0;  // components in the file: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA
  uint32_t height = 0, width = 0;
};

// N images of identical shape C x H x W, 8-bit pixels, row-major NCHW.
// Labels are class ids as stored in the source (e.g. 0..9 for Fashion-MNIST).
struct ImageSet {
  int64_t channels = 0, height = 0, width = 0;
  std::vector<uint8_t> pixels;  // size() == size() * channels * height * width
  std::vector<int64_t> labels;  // one per image
  std::vector<std::string> class_names;  // optional; index = label
  // Optional: one group id per image (the patient id, from a manifest or DICOM PatientID),
  // or empty when unknown. Patient-level splits keep a group on one side (partition.h).
  std::vector<std::string> groups;
  // Optional: how each image was stored (readers that convert or resize fill it); empty = as
  // channels x height x width.
  std::vector<StoredShape> stored;

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  int64_t image_bytes() const { return channels * height * width; }
  // Copies the images at `indices` (in that order) into a new set with the same shape.
  ImageSet subset(const std::vector<int64_t>& indices) const;
  // Keeps images whose label is in `classes` and relabels them to their position in
  // `classes` (so target classes {1,3,4,6,9} become 0..4).
  ImageSet select_classes(const std::vector<int64_t>& classes) const;
};

}  // namespace fedtl::common

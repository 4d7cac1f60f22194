// dicom_decode: images per second decoding DICOM files into fedtl's 8-bit input (parse,
// modality rescale, VOI window, 8-bit output), on files this program writes with DCMTK.
// bench/dicom_decode.py decodes the same files with pydicom + numpy; scripts/bench runs both
// in one run and reports the ratio of the medians.
//
//   bench_dicom_decode --write DIR [--files N] [--size S]   writes the files, prints nothing
//   bench_dicom_decode --dir DIR [--reps R]                 prints one JSON object
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>

#include "common/data/dicom.h"
#include "tests/common/data/dicom_fixtures.h"

namespace fs = std::filesystem;
using namespace fedtl;

int main(int argc, char** argv) {
  std::string write_dir, dir;
  int files = 200, size = 512, reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--write") write_dir = argv[i + 1];
    else if (a == "--dir") dir = argv[i + 1];
    else if (a == "--files") files = std::stoi(argv[i + 1]);
    else if (a == "--size") size = std::stoi(argv[i + 1]);
    else if (a == "--reps") reps = std::stoi(argv[i + 1]);
    else {
      std::cerr << "bench_dicom_decode: unknown argument " << a << "\n";
      return 2;
    }
  }
  if (!write_dir.empty()) {
    // 12-bit CT-like images (stored 0..4095, slope 1, intercept -1024, window 40/400), each
    // with its own content so that nothing is cached between files.
    fs::create_directories(write_dir);
    for (int f = 0; f < files; ++f) {
      test_support::DicomSpec s;
      s.rows = s.cols = static_cast<uint16_t>(size);
      s.bits_stored = 12;
      s.slope = "1";
      s.intercept = "-1024";
      s.window_center = "40";
      s.window_width = "400";
      s.sop_uid = "1.2.826.0.1.3680043.2.1125.9." + std::to_string(f + 1);
      s.patient_id = "P" + std::to_string(f % 20);
      s.values.resize(static_cast<size_t>(size) * size);
      for (int y = 0; y < size; ++y)
        for (int x = 0; x < size; ++x) s.values[static_cast<size_t>(y * size + x)] = (x * 7 + y * 13 + f * 31) % 4096;
      char name[32];
      std::snprintf(name, sizeof name, "img%05d.dcm", f);
      test_support::write_dicom((fs::path(write_dir) / name).string(), s);
    }
    return 0;
  }
  if (dir.empty()) {
    std::cerr << "usage: bench_dicom_decode --write DIR [--files N] [--size S] | --dir DIR [--reps R]\n";
    return 2;
  }
  std::vector<std::string> paths;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".dcm") paths.push_back(e.path().string());
  std::sort(paths.begin(), paths.end());
  common::DicomOptions o;
  // Native size, one channel: the same work pydicom + numpy does (no resize).
  DcmFileFormat probe;
  probe.loadFile(paths.at(0).c_str());
  Uint16 rows = 0, cols = 0;
  probe.getDataset()->findAndGetUint16(DCM_Rows, rows);
  probe.getDataset()->findAndGetUint16(DCM_Columns, cols);
  o.height = rows;
  o.width = cols;
  std::vector<double> secs;
  uint64_t checksum = 0;
  for (int r = 0; r < reps + 1; ++r) {  // the first pass warms the page cache and is dropped
    const auto t0 = std::chrono::steady_clock::now();
    const auto set = common::read_dicom_files(paths, o);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Same sampling as dicom_decode.py: every 4099th pixel of each image.
    checksum = 0;
    const auto bytes = static_cast<size_t>(set.images.image_bytes());
    for (size_t img = 0; img < paths.size(); ++img)
      for (size_t i = 0; i < bytes; i += 4099) checksum += set.images.pixels[img * bytes + i];
    if (r > 0) secs.push_back(s);
  }
  std::vector<double> sorted = secs;
  std::sort(sorted.begin(), sorted.end());
  const double med = sorted[sorted.size() / 2];
  nlohmann::json j = {{"images", paths.size()},       {"rows", rows},
                      {"cols", cols},                 {"seconds_all", secs},
                      {"seconds_median", med},        {"images_per_s", static_cast<double>(paths.size()) / med},
                      {"checksum", checksum}};
  std::cout << j.dump() << "\n";
  return 0;
}

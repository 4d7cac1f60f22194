// fedtl_example_dicom: writes a job's data as a hospital would hold it, for
// examples/dicom/run.sh. Each site's share of the job (the same partition `fedtl simulate`
// uses) becomes DICOM files with a label manifest keyed by SOPInstanceUID, and the job's test
// set becomes DICOM class folders. The encodings vary as a PACS's do: a third of the images are
// 16-bit MONOCHROME2 with a modality rescale, a third 8-bit MONOCHROME1 (stored inverted), a
// third 16-bit JPEG-lossless compressed; every file carries a VOI window that maps the rescaled
// values back onto 0..255, so fedtl decodes each pixel to the value the job's image had.
//
// usage: fedtl_example_dicom --job JOB.toml --out DIR
//   DIR/site-K/NNNNN.dcm + DIR/site-K/labels.csv   (sop_instance_uid,label,patient_id)
//   DIR/test/<class>/NNNNN.dcm
//   DIR/classes.txt                                 (the class names, one per line, in order)
//
// Files are named by position, not by UID, so the manifest (not the path order) fixes the
// order a site reads its images in: the order an Orthanc holding the same files gives too.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include "app/config.h"
#include "app/job_setup.h"
#include "app/site_data.h"
#include "common/sha256.h"
#include "tests/common/data/dicom_fixtures.h"

namespace {

namespace fs = std::filesystem;
using fedtl::test_support::DicomSpec;

// A deterministic UID under the 2.25 arc (UUID-derived UIDs): the same job gives the same
// UIDs on every run, so an Orthanc or a site cache keyed by SOPInstanceUID recognises them.
std::string uid_for(const std::string& key) {
  const std::string h = fedtl::common::sha256_hex(key);
  unsigned long long v = std::stoull(h.substr(0, 15), nullptr, 16);  // 60 bits
  return "2.25." + std::to_string(v);
}

// Image `i` (8-bit, `n` pixels at `px`) as one of the three encodings.
DicomSpec encode(const uint8_t* px, int64_t h, int64_t w, int64_t i) {
  DicomSpec s;
  s.rows = static_cast<uint16_t>(h);
  s.cols = static_cast<uint16_t>(w);
  s.window_center = "128";  // (x - 127.5) / 255 + 0.5: rescaled 0..255 -> displayed 0..255
  s.window_width = "256";
  const int64_t n = h * w;
  switch (i % 3) {
    case 0:  // 16-bit, stored = 16 v + 64, rescale slope 1/16, intercept -4 -> v
    case 2:  // the same, JPEG lossless (process 14, selection value 1)
      s.bits_allocated = s.bits_stored = 16;
      s.slope = "0.0625";
      s.intercept = "-4";
      for (int64_t k = 0; k < n; ++k) s.values.push_back(16 * px[k] + 64);
      if (i % 3 == 2) s.xfer = EXS_JPEGProcess14SV1;
      break;
    default:  // 8-bit MONOCHROME1: stored inverted; the reader inverts it back
      s.bits_allocated = s.bits_stored = 8;
      s.photometric = "MONOCHROME1";
      for (int64_t k = 0; k < n; ++k) s.values.push_back(255 - px[k]);
      break;
  }
  return s;
}

// "ankle boot" -> "ankle_boot": a class folder name without spaces (bind_classes matches the
// folder name to data.classes, which run.sh writes the same way).
std::string folder_name(std::string c) {
  for (char& ch : c)
    if (ch == ' ' || ch == '/') ch = '_';
  return c;
}

void write_set(const fedtl::common::ImageSet& set, const std::vector<std::string>& names, const fs::path& dir,
               const std::string& tag, bool manifest) {
  fs::create_directories(dir);
  std::ofstream csv;
  if (manifest) {
    csv.open(dir / "labels.csv");
    csv << "sop_instance_uid,label,patient_id\n";
  }
  const int64_t bytes = set.image_bytes();
  for (int64_t i = 0; i < set.size(); ++i) {
    const std::string label = folder_name(names.at(static_cast<size_t>(set.labels[static_cast<size_t>(i)])));
    DicomSpec s = encode(set.pixels.data() + i * bytes, set.height, set.width, i);
    s.sop_uid = uid_for(tag + "/" + std::to_string(i));
    // Three images per patient: enough for the patient-level splits to matter.
    s.patient_id = tag + "-P" + std::to_string(i / 3);
    s.study_uid = uid_for(s.patient_id + "/study");  // one study and series per patient
    s.series_uid = uid_for(s.patient_id + "/series");
    char file[32];
    std::snprintf(file, sizeof file, "%05lld.dcm", static_cast<long long>(i));
    const fs::path out = manifest ? dir / file : dir / label / file;
    fs::create_directories(out.parent_path());
    fedtl::test_support::write_dicom(out.string(), s);
    if (manifest) csv << s.sop_uid << ',' << label << ',' << s.patient_id << '\n';
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string job, out;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--job") == 0) job = argv[i + 1];
    else if (std::strcmp(argv[i], "--out") == 0) out = argv[i + 1];
  }
  if (job.empty() || out.empty()) {
    std::cerr << "usage: fedtl_example_dicom --job JOB.toml --out DIR\n"
                 "  writes each site's share of JOB's data as DICOM with a label manifest, and its test set\n"
                 "  as DICOM class folders (see examples/dicom/run.sh)\n";
    return 2;
  }
  try {
    const fedtl::app::JobConfig cfg = fedtl::app::load_job_config(job);
    if (cfg.backbone.channels != 1) throw std::runtime_error("the example writes grey images: backbone.channels must be 1");
    const fedtl::app::TaskData data = fedtl::app::load_task_data(cfg);
    const auto parts = fedtl::app::site_partition(cfg, data);
    for (size_t k = 0; k < parts.size(); ++k) {
      write_set(data.target_train.subset(parts[k]), data.target_names, fs::path(out) / ("site-" + std::to_string(k)),
                "site" + std::to_string(k), true);
      std::cerr << "site-" << k << ": " << parts[k].size() << " DICOM files and labels.csv\n";
    }
    write_set(data.target_test, data.target_names, fs::path(out) / "test", "test", false);
    std::ofstream names(fs::path(out) / "classes.txt");
    for (const auto& n : data.target_names) names << folder_name(n) << "\n";
    std::cerr << "test: " << data.target_test.size() << " DICOM files in " << data.target_names.size()
              << " class folders\n";
  } catch (const std::exception& e) {
    std::cerr << "fedtl_example_dicom: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

// DICOM images through DCMTK (Debian's libdcmtk-dev): MONOCHROME1 (inverted for display, as
// DICOM says) and MONOCHROME2, RGB/YBR/palette colour, 8/12/16-bit stored, signed pixels,
// the modality rescale (slope/intercept), the VOI window (data.window, else the file's first
// window, else the frame's min/max), compressed transfer syntaxes DCMTK decodes (JPEG
// baseline/extended/lossless, JPEG-LS, RLE) and multi-frame images (one frame is decoded).
// Each image becomes 8-bit planar `channels` x height x width, as the other readers give.
//
// Thread safety: the functions may be called from several threads; DCMTK's decoders are
// registered once per process (std::call_once) on first use.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/data/datasets.h"
#include "common/data/image_set.h"

namespace fedtl::common {

// data.frame: which frame of a multi-frame image is used.
enum class DicomFrame { kFirst, kMiddle };  // "first" | "middle" (frame floor(n/2), 0-based)
std::optional<DicomFrame> parse_dicom_frame(const std::string& name);

struct DicomOptions {
  int64_t channels = 1, height = 28, width = 28;       // output of every image
  int64_t max_image_pixels = kDefaultMaxImagePixels;   // Rows x Columns refused above it, undecoded
  std::optional<std::array<double, 2>> window;         // [center, width] (width >= 1); else the file's
  DicomFrame frame = DicomFrame::kFirst;
  BadFile on_bad_file = BadFile::kError;               // corrupt / undecodable: error, or listed and left out
  // Extra attributes to return per image, by DICOM keyword ("BodyPartExamined") or as
  // "gggg,eeee" ("0018,0015"); a value absent in a file comes back "".
  std::vector<std::string> tags;
};

// What a DICOM read gives: the images (labels all 0 and class_names empty until labelled,
// groups = PatientID) and, per image in the same order, its file, SOPInstanceUID, PatientID
// and the requested tag values. Files without pixel data (structured reports, presentation
// states, DICOMDIR) are counted in without_pixel_data and listed in unused, as are bad files
// skipped with BadFile::kSkip and (read_dicom_dir only) files that are not DICOM.
struct DicomSet {
  ImageSet images;
  std::vector<std::string> files, sop_instance_uids, patient_ids;
  std::vector<std::vector<std::string>> tag_values;  // [image][options.tags index]
  int64_t without_pixel_data = 0;
  UnusedFiles unused;
};

// Reads the given files in order (each must be a DICOM file, with or without the 128-byte
// preamble). Throws DataError naming the file for a corrupt or undecodable one (unless
// BadFile::kSkip), for a header above max_image_pixels (refused before decoding), and
// ConfigError for bad options or an unknown tag name.
DicomSet read_dicom_files(const std::vector<std::string>& paths, const DicomOptions& options);

// Every regular file under `dir` (recursively, sorted by path, hidden entries left out) that
// is DICOM by content ("DICM" at offset 128) or by a .dcm extension; other files are listed
// in unused. Then as read_dicom_files. Logs one line for the unused files.
DicomSet read_dicom_dir(const std::string& dir, const DicomOptions& options);

// Throws ConfigError naming `key` when `tag` is neither a DICOM keyword DCMTK's dictionary
// knows nor "gggg,eeee".
void check_dicom_tag(const std::string& key, const std::string& tag);

}  // namespace fedtl::common

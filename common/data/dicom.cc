#include "common/data/dicom.h"

// DCMTK's configuration header must come first.
#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcrledrg.h>
#include <dcmtk/dcmdata/dctk.h>
#include <dcmtk/dcmimage/diregist.h>  // colour images (RGB, YBR, palette) for DicomImage
#include <dcmtk/dcmimgle/dcmimage.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpls/djdecode.h>
#include <dcmtk/oflog/oflog.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <cmath>
#include <mutex>

#include <spdlog/spdlog.h>

#include "common/errors.h"

namespace fedtl::common {
namespace {

namespace fs = std::filesystem;

// Elements longer than this stay on disk until accessed: reading a header never loads the
// pixel data, so its size can be checked first.
constexpr Uint32 kMaxReadLength = 4096;

void register_codecs() {
  static std::once_flag once;
  std::call_once(once, [] {
    // DCMTK logs through oflog to stderr; fedtl reports every problem itself, once.
    OFLog::configure(OFLogger::FATAL_LOG_LEVEL);
    DJDecoderRegistration::registerCodecs();        // JPEG baseline, extended, lossless
    DJLSDecoderRegistration::registerCodecs();      // JPEG-LS
    DcmRLEDecoderRegistration::registerCodecs();    // RLE
  });
}

DcmTagKey tag_key(const std::string& name) {
  DcmTag tag;
  if (DcmTag::findTagFromName(name.c_str(), tag).bad())
    throw ConfigError("DICOM tag '" + name + "' unknown (use a keyword such as BodyPartExamined, or gggg,eeee)");
  return tag.getXTag();
}

std::string string_value(DcmItem& ds, const DcmTagKey& key) {
  OFString v;
  if (ds.findAndGetOFStringArray(key, v).bad()) return "";
  std::string s(v.c_str());
  const auto b = s.find_first_not_of(' ');
  const auto e = s.find_last_not_of(' ');
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

bool has_dicm_magic(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  char b[132] = {};
  in.read(b, 132);
  return in.gcount() == 132 && std::string(b + 128, 4) == "DICM";
}

struct Decoded {
  std::vector<uint8_t> planar;  // options.channels x height x width
  StoredShape stored;           // the frame's own samples per pixel and size
  std::string uid, patient;
  std::vector<std::string> tags;
};

enum class Outcome { kImage, kNoPixels };

// Loads, checks and decodes one file. Throws DataError naming it.
Outcome decode_one(const std::string& path, const DicomOptions& o, const std::vector<DcmTagKey>& tags, Decoded& out) {
  DcmFileFormat ff;
  const OFCondition st = ff.loadFile(path.c_str(), EXS_Unknown, EGL_noChange, kMaxReadLength, ERM_autoDetect);
  if (st.bad()) throw DataError(path + ": not a readable DICOM file (" + std::string(st.text()) + ")");
  DcmDataset* ds = ff.getDataset();
  if (!ds->tagExistsWithValue(DCM_PixelData) && !ds->tagExistsWithValue(DCM_FloatPixelData) &&
      !ds->tagExistsWithValue(DCM_DoubleFloatPixelData))
    return Outcome::kNoPixels;
  Uint16 rows = 0, cols = 0;
  ds->findAndGetUint16(DCM_Rows, rows);
  ds->findAndGetUint16(DCM_Columns, cols);
  check_image_pixels(path, cols, rows, o.max_image_pixels);
  Sint32 frames = 1;
  if (ds->findAndGetSint32(DCM_NumberOfFrames, frames).bad() || frames < 1) frames = 1;
  const unsigned long frame = o.frame == DicomFrame::kMiddle ? static_cast<unsigned long>(frames / 2) : 0;
  out.uid = string_value(*ds, DCM_SOPInstanceUID);
  out.patient = string_value(*ds, DCM_PatientID);
  out.tags.clear();
  for (const auto& k : tags) out.tags.push_back(string_value(*ds, k));

  // One frame only: a multi-frame file is never decoded whole.
  DicomImage img(&ff, ds->getOriginalXfer(), CIF_UsePartialAccessToPixelData, frame, 1);
  if (img.getStatus() != EIS_Normal)
    throw DataError(path + ": cannot decode DICOM pixel data (" + std::string(DicomImage::getString(img.getStatus())) +
                    ")");
  const int64_t w = static_cast<int64_t>(img.getWidth()), h = static_cast<int64_t>(img.getHeight());
  check_image_pixels(path, static_cast<uint64_t>(w), static_cast<uint64_t>(h), o.max_image_pixels);
  int comp = 3;
  if (img.isMonochrome()) {
    comp = 1;
    bool ok;
    if (o.window)
      ok = img.setWindow((*o.window)[0], (*o.window)[1]) != 0;
    else if (img.getWindowCount() > 0)
      ok = img.setWindow(0) != 0;
    else
      ok = img.setMinMaxWindow() != 0;
    if (!ok) throw DataError(path + ": cannot apply the VOI window");
  }
  const void* px = img.getOutputData(8, 0, 0);
  if (px == nullptr || img.getOutputDataSize(8) < static_cast<unsigned long>(w * h * comp))
    throw DataError(path + ": cannot decode DICOM pixel data (" + std::string(DicomImage::getString(img.getStatus())) +
                    ")");
  out.stored = {static_cast<uint8_t>(comp), static_cast<uint32_t>(h), static_cast<uint32_t>(w)};
  out.planar = resize_planar(to_planar(static_cast<const uint8_t*>(px), h, w, comp, o.channels), o.channels, h, w,
                             o.height, o.width);
  return Outcome::kImage;
}

void check_options(const DicomOptions& o) {
  if (o.channels != 1 && o.channels != 3)
    throw ConfigError("DICOM reader: channels must be 1 or 3, got " + std::to_string(o.channels));
  if (o.height <= 0 || o.width <= 0 || o.height > 16384 || o.width > 16384)
    throw ConfigError("DICOM reader: image size " + std::to_string(o.height) + "x" + std::to_string(o.width) +
                      " out of range");
  if (o.max_image_pixels < 1) throw ConfigError("data.max_image_pixels must be >= 1");
  if (o.window && (!((*o.window)[1] >= 1) || !std::isfinite((*o.window)[0])))
    throw ConfigError("data.window must be [center, width] with width >= 1");
}

}  // namespace

std::optional<DicomFrame> parse_dicom_frame(const std::string& name) {
  if (name == "first") return DicomFrame::kFirst;
  if (name == "middle") return DicomFrame::kMiddle;
  return std::nullopt;
}

void check_dicom_tag(const std::string& key, const std::string& tag) {
  DcmTag t;
  if (DcmTag::findTagFromName(tag.c_str(), t).bad())
    throw ConfigError(key + ": DICOM tag '" + tag + "' unknown (use a keyword such as BodyPartExamined, or gggg,eeee)");
}

DicomSet read_dicom_files(const std::vector<std::string>& paths, const DicomOptions& o) {
  check_options(o);
  register_codecs();
  std::vector<DcmTagKey> tags;
  for (const auto& t : o.tags) tags.push_back(tag_key(t));
  DicomSet set;
  set.images.channels = o.channels;
  set.images.height = o.height;
  set.images.width = o.width;
  const auto bytes = static_cast<size_t>(set.images.image_bytes());
  Decoded d;
  for (const auto& path : paths) {
    Outcome outcome;
    try {
      outcome = decode_one(path, o, tags, d);
    } catch (const DataError& e) {
      if (o.on_bad_file == BadFile::kError) throw;
      set.unused.add(path, e.what());
      continue;
    }
    if (outcome == Outcome::kNoPixels) {
      ++set.without_pixel_data;
      set.unused.add(path, "DICOM without pixel data");
      continue;
    }
    set.images.pixels.insert(set.images.pixels.end(), d.planar.begin(), d.planar.begin() + static_cast<std::ptrdiff_t>(bytes));
    set.images.labels.push_back(0);
    set.images.groups.push_back(d.patient);
    set.images.stored.push_back(d.stored);
    set.files.push_back(path);
    set.sop_instance_uids.push_back(d.uid);
    set.patient_ids.push_back(d.patient);
    set.tag_values.push_back(d.tags);
  }
  return set;
}

DicomSet read_dicom_dir(const std::string& dir, const DicomOptions& o) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw DataError(dir + ": DICOM folder not found or not a directory");
  std::vector<fs::path> files;
  UnusedFiles not_dicom;
  for (fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec), end;
       !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.empty() && name[0] == '.') {
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    std::error_code ec2;
    if (it->is_regular_file(ec2)) files.push_back(it->path());
  }
  if (ec) throw DataError(dir + ": cannot list directory (" + ec.message() + ")");
  std::sort(files.begin(), files.end());
  std::vector<std::string> dicom;
  for (const auto& f : files) {
    std::string ext = f.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    if (ext == ".dcm" || has_dicm_magic(f))
      dicom.push_back(f.string());
    else
      not_dicom.add(f.string(), "not a DICOM file");
  }
  DicomSet set = read_dicom_files(dicom, o);
  // Non-DICOM files first in the listing (they come first in the count too).
  UnusedFiles all = not_dicom;
  all.count += set.unused.count;
  for (const auto& e : set.unused.first)
    if (all.first.size() < UnusedFiles::kListed) all.first.push_back(e);
  set.unused = all;
  if (set.without_pixel_data > 0)
    spdlog::info("{}: {} DICOM files without pixel data skipped", dir, set.without_pixel_data);
  set.unused.log(dir);
  if (set.images.size() == 0) throw DataError(dir + ": no DICOM image found (" + set.unused.describe() + ")");
  return set;
}

}  // namespace fedtl::common

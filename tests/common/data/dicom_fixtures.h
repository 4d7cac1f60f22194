// DICOM fixtures for the tests, written with DCMTK itself (header-only helpers for the data
// tests and the dicom_decode benchmark).
#pragma once
#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcrleerg.h>
#include <dcmtk/dcmdata/dctk.h>
#include <dcmtk/dcmjpeg/djencode.h>
#include <dcmtk/dcmjpeg/djrplol.h>
#include <dcmtk/dcmjpls/djencode.h>

#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace fedtl::test_support {

struct DicomSpec {
  uint16_t rows = 2, cols = 2;
  uint16_t bits_allocated = 16, bits_stored = 16;
  bool is_signed = false;
  std::string photometric = "MONOCHROME2";  // or MONOCHROME1, RGB
  uint16_t samples = 1;
  int frames = 1;
  std::vector<int32_t> values;  // rows*cols*samples*frames stored values (interleaved RGB)
  std::string slope, intercept;  // "" = absent
  std::string window_center, window_width;
  std::string sop_uid = "1.2.826.0.1.3680043.2.1125.1.1";
  std::string patient_id = "P1";
  std::string body_part;  // BodyPartExamined
  std::string study_uid, series_uid;  // "" = absent (Orthanc needs both to store a file)
  E_TransferSyntax xfer = EXS_LittleEndianExplicit;  // or EXS_JPEGProcess14SV1, EXS_RLELossless, ...
};

inline void register_dicom_encoders() {
  static std::once_flag once;
  std::call_once(once, [] {
    DJEncoderRegistration::registerCodecs();
    DJLSEncoderRegistration::registerCodecs();
    DcmRLEEncoderRegistration::registerCodecs();
  });
}

inline void check(const OFCondition& c, const std::string& what) {
  if (c.bad()) throw std::runtime_error(what + ": " + c.text());
}

// Writes `s` to `path` (with preamble and meta header). Throws std::runtime_error.
inline void write_dicom(const std::string& path, const DicomSpec& s) {
  register_dicom_encoders();
  DcmFileFormat ff;
  DcmDataset* ds = ff.getDataset();
  check(ds->putAndInsertString(DCM_SOPClassUID, UID_SecondaryCaptureImageStorage), "SOPClassUID");
  check(ds->putAndInsertString(DCM_SOPInstanceUID, s.sop_uid.c_str()), "SOPInstanceUID");
  check(ds->putAndInsertString(DCM_PatientID, s.patient_id.c_str()), "PatientID");
  check(ds->putAndInsertString(DCM_Modality, "OT"), "Modality");
  if (!s.study_uid.empty()) check(ds->putAndInsertString(DCM_StudyInstanceUID, s.study_uid.c_str()), "StudyUID");
  if (!s.series_uid.empty()) check(ds->putAndInsertString(DCM_SeriesInstanceUID, s.series_uid.c_str()), "SeriesUID");
  if (!s.body_part.empty()) check(ds->putAndInsertString(DCM_BodyPartExamined, s.body_part.c_str()), "BodyPart");
  check(ds->putAndInsertUint16(DCM_Rows, s.rows), "Rows");
  check(ds->putAndInsertUint16(DCM_Columns, s.cols), "Columns");
  check(ds->putAndInsertUint16(DCM_SamplesPerPixel, s.samples), "Samples");
  check(ds->putAndInsertString(DCM_PhotometricInterpretation, s.photometric.c_str()), "Photometric");
  if (s.samples > 1) check(ds->putAndInsertUint16(DCM_PlanarConfiguration, 0), "Planar");
  check(ds->putAndInsertUint16(DCM_BitsAllocated, s.bits_allocated), "BitsAllocated");
  check(ds->putAndInsertUint16(DCM_BitsStored, s.bits_stored), "BitsStored");
  check(ds->putAndInsertUint16(DCM_HighBit, static_cast<Uint16>(s.bits_stored - 1)), "HighBit");
  check(ds->putAndInsertUint16(DCM_PixelRepresentation, s.is_signed ? 1 : 0), "PixelRepresentation");
  if (s.frames > 1) check(ds->putAndInsertString(DCM_NumberOfFrames, std::to_string(s.frames).c_str()), "Frames");
  if (!s.slope.empty()) check(ds->putAndInsertString(DCM_RescaleSlope, s.slope.c_str()), "Slope");
  if (!s.intercept.empty()) check(ds->putAndInsertString(DCM_RescaleIntercept, s.intercept.c_str()), "Intercept");
  if (!s.window_center.empty()) check(ds->putAndInsertString(DCM_WindowCenter, s.window_center.c_str()), "WC");
  if (!s.window_width.empty()) check(ds->putAndInsertString(DCM_WindowWidth, s.window_width.c_str()), "WW");
  if (s.bits_allocated == 8) {
    std::vector<Uint8> px;
    for (int32_t v : s.values) px.push_back(static_cast<Uint8>(v));
    if (px.size() % 2) px.push_back(0);
    check(ds->putAndInsertUint8Array(DCM_PixelData, px.data(), static_cast<unsigned long>(px.size())), "PixelData");
  } else {
    std::vector<Uint16> px;
    for (int32_t v : s.values) px.push_back(static_cast<Uint16>(static_cast<int16_t>(v)));
    check(ds->putAndInsertUint16Array(DCM_PixelData, px.data(), static_cast<unsigned long>(px.size())), "PixelData");
  }
  if (s.xfer != EXS_LittleEndianExplicit) {
    DJ_RPLossless lossless;  // JPEG lossless: predictor 1, no point transform
    const DcmRepresentationParameter* rp = s.xfer == EXS_JPEGProcess14SV1 ? &lossless : nullptr;
    check(ds->chooseRepresentation(s.xfer, rp), "chooseRepresentation");
    if (!ds->canWriteXfer(s.xfer)) throw std::runtime_error("cannot write transfer syntax for " + path);
  }
  check(ff.saveFile(path.c_str(), s.xfer), "saveFile " + path);
}

// A DICOM object without pixel data (like a structured report).
inline void write_dicom_without_pixels(const std::string& path, const std::string& uid) {
  DcmFileFormat ff;
  DcmDataset* ds = ff.getDataset();
  check(ds->putAndInsertString(DCM_SOPClassUID, UID_BasicTextSRStorage), "SOPClassUID");
  check(ds->putAndInsertString(DCM_SOPInstanceUID, uid.c_str()), "SOPInstanceUID");
  check(ds->putAndInsertString(DCM_Modality, "SR"), "Modality");
  check(ff.saveFile(path.c_str(), EXS_LittleEndianExplicit), "saveFile " + path);
}

}  // namespace fedtl::test_support

// Small DICOM files for tests, written with DCMTK: an 8x8 8-bit MONOCHROME2 CR image with
// the tags the Orthanc tests query and label by.
#pragma once
#include <gtest/gtest.h>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <string>
#include <vector>

namespace fedtl::test_support {

struct Fixture {
  std::string sop, patient, modality, study_description, body_part;
  uint8_t fill = 0;  // pixel values start here (changes the bytes, not the tags)
};

// A small 8-bit MONOCHROME2 CR image with the tags the tests query and label by.
inline void write_dicom(const std::string& path, const Fixture& f) {
  DcmFileFormat ff;
  DcmDataset* ds = ff.getDataset();
  ASSERT_TRUE(ds->putAndInsertString(DCM_SOPClassUID, UID_ComputedRadiographyImageStorage).good());
  ASSERT_TRUE(ds->putAndInsertString(DCM_SOPInstanceUID, f.sop.c_str()).good());
  ds->putAndInsertString(DCM_StudyInstanceUID, ("1.2.826.0.1.3680043.10.1." + f.patient.substr(1)).c_str());
  ds->putAndInsertString(DCM_SeriesInstanceUID, (f.sop + ".1").c_str());
  ds->putAndInsertString(DCM_PatientID, f.patient.c_str());
  ds->putAndInsertString(DCM_PatientName, ("Test^" + f.patient).c_str());
  ds->putAndInsertString(DCM_Modality, f.modality.c_str());
  ds->putAndInsertString(DCM_StudyDescription, f.study_description.c_str());
  if (!f.body_part.empty()) ds->putAndInsertString(DCM_BodyPartExamined, f.body_part.c_str());
  ds->putAndInsertUint16(DCM_SamplesPerPixel, 1);
  ds->putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2");
  ds->putAndInsertUint16(DCM_Rows, 8);
  ds->putAndInsertUint16(DCM_Columns, 8);
  ds->putAndInsertUint16(DCM_BitsAllocated, 8);
  ds->putAndInsertUint16(DCM_BitsStored, 8);
  ds->putAndInsertUint16(DCM_HighBit, 7);
  ds->putAndInsertUint16(DCM_PixelRepresentation, 0);
  std::vector<Uint8> pixels(64);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<Uint8>(f.fill + i * 3);
  ASSERT_TRUE(ds->putAndInsertUint8Array(DCM_PixelData, pixels.data(), pixels.size()).good());
  const OFCondition c = ff.saveFile(path.c_str(), EXS_LittleEndianExplicit);
  ASSERT_TRUE(c.good()) << c.text();
}

}  // namespace fedtl::test_support

// One labelled data source, whatever its kind: an image folder, image files listed in a label
// manifest, or DICOM files (class sub-folders, a manifest keyed by path or SOPInstanceUID, or
// a label read from a DICOM tag). Every image comes back labelled by class NAME
// (ImageSet::class_names, sorted) and, where known, with its patient id (ImageSet::groups);
// bind_classes() (classes.h) then maps the names onto a job's classes.
#pragma once
#include <array>
#include <optional>
#include <string>

#include "common/data/datasets.h"
#include "common/data/dicom.h"
#include "common/data/manifest.h"

namespace fedtl::common {

enum class SourceKind { kFolder, kDicom };

struct SourceSpec {
  SourceKind kind = SourceKind::kFolder;
  std::string dir;        // the data's root (data.dir, data.test_dir, a site's data.dir)
  std::string labels;     // data.labels: manifest (CSV) path; "" = none
  std::string label_tag;  // DICOM only: the class is this tag's value (when no manifest)
  ReadOptions read;       // output shape, data.max_image_pixels, data.on_bad_file
  std::optional<std::array<double, 2>> window;  // DICOM: data.window
  DicomFrame frame = DicomFrame::kFirst;        // DICOM: data.frame
};

// Reads `spec`. Labels come from, in this order: the manifest (rows restricted by `which`
// when it has a split column: kTrain = train, validation and unsplit rows; kTest = test rows;
// kNone = every row), the DICOM tag, or the first folder level under dir (class sub-folders,
// for images and DICOM alike). Order: the manifest's rows; with a label tag, SOPInstanceUID
// order (the order an Orthanc source gives, so files and Orthanc train the same model);
// otherwise path order. Throws DataError naming the file (and the manifest line) for
// a missing file, a manifest SOPInstanceUID no DICOM file has, an image without a label, or
// a class folder without usable images; ConfigError for an inconsistent spec.
ImageSet read_source(const SourceSpec& spec, Split which = Split::kNone);

// The DICOM reader's options for `spec` (its shape, limits, window, frame; the label tag,
// when set, among the tags read).
DicomOptions dicom_options(const SourceSpec& spec);

// Labels `set` by name: class_names = the sorted distinct `names`, labels[i] = the index of
// names[i] among them.
void assign_labels(ImageSet& set, const std::vector<std::string>& names);

// Whether the manifest of `spec` (if any) has a split column.
bool source_has_split(const SourceSpec& spec);

}  // namespace fedtl::common

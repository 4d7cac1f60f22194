// An Orthanc source as a labelled image set: the instances fetch_orthanc_instances selects
// and caches (common/data/orthanc.h), decoded by the DICOM reader (common/data/dicom.h).
//
// Labels, as for a DICOM folder: a manifest keyed by sop_instance_uid (spec.labels; its
// rows' order is the set's order, as read_source gives for a DICOM folder with that
// manifest), else the label tag (source.label_tag, read from each file), in SOPInstanceUID
// order. Groups are the patient ids (the manifest's patient_id, else the file's PatientID).
// Class names are the sorted distinct labels.
//
// Same images, same order, same labels => the same model: a DICOM folder read with the same
// manifest or the same label tag comes out in this order too (read_source, sources.h).
#pragma once
#include "common/data/image_set.h"
#include "common/data/manifest.h"
#include "common/data/orthanc.h"
#include "common/data/sources.h"

namespace fedtl::common {

// `spec` gives the output shape, max_image_pixels, on_bad_file (also used as skip_bad for the
// fetch, overriding source.skip_bad), window, frame and labels (a manifest; spec.dir and
// spec.kind are not used, spec.label_tag must be empty or equal source.label_tag). `which`
// restricts a manifest with a split column as read_source does. Throws what
// fetch_orthanc_instances and read_dicom_files throw; DataError for a manifest row whose
// SOPInstanceUID the query did not select (unless on_bad_file = skip); ConfigError for a
// path-keyed manifest or neither a manifest nor a label tag. `fetched` (optional) receives
// the fetch's result (counts, skipped instances).
ImageSet read_orthanc_source(const OrthancSource& source, const SourceSpec& spec, Split which = Split::kNone,
                             OrthancFetch* fetched = nullptr);

}  // namespace fedtl::common

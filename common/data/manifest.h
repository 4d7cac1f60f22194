// Label manifests (data.labels = "labels.csv"): a CSV file with a header row naming its
// columns. Columns: `path` (relative to the data directory) or `sop_instance_uid` (DICOM
// and Orthanc sources), `label` (the class name), optional `patient_id`, optional `split`
// (train | validation | test). Other columns are ignored. Fields may be double-quoted (RFC
// 4180: "" inside quotes is a quote). Every error names the manifest file and the line.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fedtl::common {

enum class Split { kNone, kTrain, kValidation, kTest };  // kNone: no split column / empty cell
const char* to_string(Split s);

struct ManifestRow {
  int64_t line = 0;             // 1-based line in the file (the header is line 1)
  std::string path;             // as written (relative to base_dir), or empty
  std::string sop_instance_uid; // or empty
  std::string label;            // never empty
  std::string patient_id;       // empty when unknown
  Split split = Split::kNone;
};

// Whether a row belongs to the images read for `which`: every row for kNone; the test rows for
// kTest; every other row for kTrain and kValidation (the validation hold-out is drawn later).
bool row_wanted(const ManifestRow& r, Split which);

struct Manifest {
  std::string file;
  bool keyed_by_uid = false;    // rows are keyed by sop_instance_uid, not path
  bool has_split = false;       // the file has a split column
  std::vector<ManifestRow> rows;
  // Sorted distinct labels of the rows.
  std::vector<std::string> labels() const;
};

// Reads and checks a manifest. With check_files (path-keyed manifests), every path must name
// an existing regular file under base_dir. Throws DataError "<file>:<line>: ..." for a bad
// row (missing file, empty label, unknown split, a key given twice, wrong field count, a
// patient on both sides of the split column), and for a missing key or label column.
Manifest read_manifest(const std::string& csv_path, const std::string& base_dir, bool check_files = true);

}  // namespace fedtl::common

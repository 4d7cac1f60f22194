#include "common/data/orthanc_source.h"

#include <spdlog/spdlog.h>

#include <map>

#include "common/data/dicom.h"
#include "common/errors.h"

namespace fedtl::common {
ImageSet read_orthanc_source(const OrthancSource& source, const SourceSpec& spec, Split which, OrthancFetch* fetched) {
  if (!spec.label_tag.empty() && spec.label_tag != source.label_tag)
    throw ConfigError("data.label_tag must be given once (it is the Orthanc source's label tag)");
  if (spec.labels.empty() && source.label_tag.empty())
    throw ConfigError("an Orthanc source needs data.labels (a manifest keyed by sop_instance_uid) or data.label_tag");
  std::optional<Manifest> manifest;
  if (!spec.labels.empty()) {
    manifest = read_manifest(spec.labels, "", /*check_files=*/false);
    if (!manifest->keyed_by_uid)
      throw ConfigError(manifest->file + ": an Orthanc source's manifest must be keyed by sop_instance_uid, not path");
  }
  OrthancSource src = source;
  src.skip_bad = spec.read.on_bad_file == BadFile::kSkip;
  OrthancFetch fetch = fetch_orthanc_instances(src);

  const DicomOptions o = dicom_options(spec);
  std::vector<std::string> paths;
  std::map<std::string, const FetchedInstance*> by_path;
  for (const auto& f : fetch.instances) {
    paths.push_back(f.path);
    by_path[f.path] = &f;
  }
  DicomSet d = read_dicom_files(paths, o);
  d.unused.log(src.cache_dir);

  std::vector<int64_t> idx;
  std::vector<std::string> names, groups;
  if (manifest) {
    std::map<std::string, size_t> by_uid;
    for (size_t i = 0; i < d.files.size(); ++i) by_uid.emplace(by_path.at(d.files[i])->sop_instance_uid, i);
    int64_t matched = 0;
    for (const auto& r : manifest->rows) {
      const auto it = by_uid.find(r.sop_instance_uid);
      if (it == by_uid.end()) {
        const std::string why = manifest->file + ":" + std::to_string(r.line) + ": SOPInstanceUID " +
                                r.sop_instance_uid + " is not among the instances the Orthanc query selected";
        if (spec.read.on_bad_file == BadFile::kSkip) {
          spdlog::warn("{}; row left out", why);
          continue;
        }
        throw DataError(why);
      }
      ++matched;
      if (!row_wanted(r, which)) continue;
      idx.push_back(static_cast<int64_t>(it->second));
      names.push_back(r.label);
      groups.push_back(r.patient_id.empty() ? by_path.at(d.files[it->second])->patient_id : r.patient_id);
    }
    const int64_t unlisted = static_cast<int64_t>(d.files.size()) - matched;
    if (unlisted > 0) spdlog::warn("orthanc: {} instances not in the manifest {} left out", unlisted, manifest->file);
  } else {
    for (size_t i = 0; i < d.files.size(); ++i) {
      const FetchedInstance& f = *by_path.at(d.files[i]);
      idx.push_back(static_cast<int64_t>(i));
      names.push_back(f.label);  // never empty: fetch refuses or skips an instance without it
      groups.push_back(f.patient_id);
    }
  }
  ImageSet set = d.images.subset(idx);
  assign_labels(set, names);
  set.groups = groups;
  if (fetched) *fetched = std::move(fetch);
  return set;
}

}  // namespace fedtl::common

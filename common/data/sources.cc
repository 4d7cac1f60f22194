#include "common/data/sources.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "common/errors.h"

namespace fedtl::common {
namespace {

namespace fs = std::filesystem;


// The first path component of `file` below `root`: its class folder ("" when directly in root).
std::string class_folder(const std::string& root, const std::string& file) {
  const fs::path rel = fs::path(file).lexically_relative(root);
  auto it = rel.begin();
  if (it == rel.end()) return "";
  const fs::path first = *it;
  return ++it == rel.end() ? "" : first.string();
}

ImageSet keep(const ImageSet& set, const std::vector<int64_t>& idx) { return set.subset(idx); }

ImageSet read_dicom_source(const SourceSpec& spec, const Manifest* m, Split which) {
  const DicomOptions o = dicom_options(spec);
  std::vector<std::string> names;
  if (m != nullptr && !m->keyed_by_uid) {
    std::vector<std::string> paths;
    std::vector<const ManifestRow*> rows;
    for (const auto& r : m->rows)
      if (row_wanted(r, which)) {
        paths.push_back((fs::path(spec.dir) / r.path).string());
        rows.push_back(&r);
      }
    DicomSet d = read_dicom_files(paths, o);
    d.unused.log(m->file);
    std::map<std::string, const ManifestRow*> by_path;
    for (size_t i = 0; i < paths.size(); ++i) by_path[paths[i]] = rows[i];
    std::vector<std::string> groups;
    for (size_t i = 0; i < d.files.size(); ++i) {
      const ManifestRow& r = *by_path.at(d.files[i]);
      names.push_back(r.label);
      groups.push_back(r.patient_id.empty() ? d.patient_ids[i] : r.patient_id);
    }
    ImageSet set = std::move(d.images);
    assign_labels(set, names);
    set.groups = groups;
    return set;
  }
  DicomSet d = read_dicom_dir(spec.dir, o);
  if (m != nullptr) {  // keyed by SOPInstanceUID
    std::map<std::string, size_t> by_uid;
    for (size_t i = 0; i < d.sop_instance_uids.size(); ++i) by_uid.emplace(d.sop_instance_uids[i], i);
    std::vector<int64_t> idx;
    std::vector<std::string> groups;
    int64_t matched = 0;
    for (const auto& r : m->rows) {
      auto it = by_uid.find(r.sop_instance_uid);
      if (it == by_uid.end()) {
        if (spec.read.on_bad_file == BadFile::kSkip) {
          spdlog::warn("{}:{}: no DICOM image under {} has SOPInstanceUID {}; row left out", m->file, r.line, spec.dir,
                       r.sop_instance_uid);
          continue;
        }
        throw DataError(m->file + ":" + std::to_string(r.line) + ": no DICOM image under " + spec.dir +
                        " has SOPInstanceUID " + r.sop_instance_uid);
      }
      ++matched;
      if (!row_wanted(r, which)) continue;
      idx.push_back(static_cast<int64_t>(it->second));
      names.push_back(r.label);
      groups.push_back(r.patient_id.empty() ? d.patient_ids[it->second] : r.patient_id);
    }
    const int64_t unlisted = d.images.size() - matched;
    if (unlisted > 0) spdlog::warn("{}: {} DICOM images not in the manifest {} left out", spec.dir, unlisted, m->file);
    ImageSet set = keep(d.images, idx);
    assign_labels(set, names);
    set.groups = groups;
    return set;
  }
  // Labels from a tag come in SOPInstanceUID order (as an Orthanc source gives them, so the
  // same files train the same model from either); class folders keep the path order.
  std::vector<size_t> order(d.files.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  if (!spec.label_tag.empty())
    std::stable_sort(order.begin(), order.end(),
                     [&d](size_t a, size_t b) { return d.sop_instance_uids[a] < d.sop_instance_uids[b]; });
  std::vector<int64_t> idx;
  for (size_t i : order) {
    std::string label = spec.label_tag.empty() ? class_folder(spec.dir, d.files[i]) : d.tag_values[i][0];
    if (label.empty()) {
      const std::string why = spec.label_tag.empty()
                                  ? "is not in a class sub-folder (or set data.labels / data.label_tag)"
                                  : "has no value for data.label_tag " + spec.label_tag;
      if (spec.read.on_bad_file == BadFile::kSkip) {
        spdlog::warn("{}: {}; left out", d.files[i], why);
        continue;
      }
      throw DataError(d.files[i] + ": " + why);
    }
    idx.push_back(static_cast<int64_t>(i));
    names.push_back(label);
  }
  ImageSet set = keep(d.images, idx);
  assign_labels(set, names);
  return set;
}

ImageSet read_folder_source(const SourceSpec& spec, const Manifest* m, Split which) {
  if (m == nullptr) return read_image_folder(spec.dir, spec.read);
  if (m->keyed_by_uid) throw ConfigError(m->file + ": sop_instance_uid keys need data.source = \"dicom\" (or orthanc)");
  std::vector<std::string> paths, labels, groups;
  for (const auto& r : m->rows)
    if (row_wanted(r, which)) {
      paths.push_back((fs::path(spec.dir) / r.path).string());
      labels.push_back(r.label);
      groups.push_back(r.patient_id);
    }
  ImageSet names_only;
  assign_labels(names_only, labels);
  UnusedFiles unused;
  ImageSet set = read_image_files(paths, names_only.labels, groups, names_only.class_names, spec.read, &unused);
  unused.log(m->file);
  return set;
}

}  // namespace

DicomOptions dicom_options(const SourceSpec& s) {
  DicomOptions o;
  o.channels = s.read.channels;
  o.height = s.read.height;
  o.width = s.read.width;
  o.max_image_pixels = s.read.max_image_pixels;
  o.on_bad_file = s.read.on_bad_file;
  o.window = s.window;
  o.frame = s.frame;
  if (!s.label_tag.empty()) o.tags.push_back(s.label_tag);
  return o;
}

void assign_labels(ImageSet& set, const std::vector<std::string>& names) {
  std::set<std::string> distinct(names.begin(), names.end());
  set.class_names.assign(distinct.begin(), distinct.end());
  std::map<std::string, int64_t> index;
  for (size_t i = 0; i < set.class_names.size(); ++i) index[set.class_names[i]] = static_cast<int64_t>(i);
  set.labels.clear();
  for (const auto& n : names) set.labels.push_back(index.at(n));
}

bool source_has_split(const SourceSpec& spec) {
  return !spec.labels.empty() && read_manifest(spec.labels, spec.dir).has_split;
}

ImageSet read_source(const SourceSpec& spec, Split which) {
  if (spec.dir.empty()) throw ConfigError("data.dir is required for this data source");
  std::optional<Manifest> m;
  if (!spec.labels.empty()) m = read_manifest(spec.labels, spec.dir, /*check_files=*/true);
  ImageSet set = spec.kind == SourceKind::kDicom ? read_dicom_source(spec, m ? &*m : nullptr, which)
                                                 : read_folder_source(spec, m ? &*m : nullptr, which);
  if (set.size() == 0) throw DataError(spec.dir + ": no labelled images" + (which == Split::kTest ? " in the test split" : ""));
  bool any_group = false;
  for (const auto& g : set.groups) any_group = any_group || !g.empty();
  if (!any_group) set.groups.clear();
  return set;
}

}  // namespace fedtl::common

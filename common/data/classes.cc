#include "common/data/classes.h"

#include <spdlog/spdlog.h>

#include <set>
#include <unordered_map>

#include "common/errors.h"

namespace fedtl::common {

std::optional<MissingClasses> parse_missing_classes(const std::string& name) {
  if (name == "error") return MissingClasses::kError;
  if (name == "warn") return MissingClasses::kWarn;
  return std::nullopt;
}

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + names[i];
  return out;
}

std::vector<std::string> classes_present(const ImageSet& set) {
  std::vector<bool> seen(set.class_names.size(), false);
  for (int64_t l : set.labels)
    if (l >= 0 && l < static_cast<int64_t>(seen.size())) seen[static_cast<size_t>(l)] = true;
  std::vector<std::string> out;
  for (size_t i = 0; i < seen.size(); ++i)
    if (seen[i]) out.push_back(set.class_names[i]);
  return out;
}

void bind_classes(ImageSet& set, const std::vector<std::string>& job_classes, MissingClasses missing,
                  const std::string& where) {
  if (job_classes.empty()) throw DataError(where + ": the job declares no classes");
  std::unordered_map<std::string, int64_t> job_index;
  for (size_t i = 0; i < job_classes.size(); ++i)
    if (!job_index.emplace(job_classes[i], static_cast<int64_t>(i)).second)
      throw DataError(where + ": the job lists class '" + job_classes[i] + "' twice");
  std::vector<int64_t> remap(set.class_names.size(), -1);
  std::vector<int64_t> count(job_classes.size(), 0);
  for (size_t c = 0; c < set.class_names.size(); ++c) {
    auto it = job_index.find(set.class_names[c]);
    if (it != job_index.end()) remap[c] = it->second;
  }
  for (auto& l : set.labels) {
    if (l < 0 || l >= static_cast<int64_t>(remap.size()))
      throw DataError(where + ": label " + std::to_string(l) + " has no class name");
    if (remap[static_cast<size_t>(l)] < 0)
      throw DataError(where + ": class '" + set.class_names[static_cast<size_t>(l)] +
                      "' is not one of the job's classes (" + join_names(job_classes) + ")");
    l = remap[static_cast<size_t>(l)];
    ++count[static_cast<size_t>(l)];
  }
  std::vector<std::string> absent;
  for (size_t i = 0; i < job_classes.size(); ++i)
    if (count[i] == 0) absent.push_back(job_classes[i]);
  if (!absent.empty()) {
    const std::string msg = where + ": no images of the job's class" + (absent.size() > 1 ? "es " : " ") + "'" +
                            join_names(absent) + "'";
    if (missing == MissingClasses::kError)
      throw DataError(msg + " (set data.missing_classes = \"warn\" to take part without them)");
    spdlog::warn("{} (data.missing_classes = \"warn\": taking part without them)", msg);
  }
  set.class_names = job_classes;
}

}  // namespace fedtl::common

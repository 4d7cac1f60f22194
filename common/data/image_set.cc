#include "common/data/image_set.h"

#include <algorithm>
#include <cstring>
#include <unordered_map>

#include "common/errors.h"

namespace fedtl::common {

ImageSet ImageSet::subset(const std::vector<int64_t>& indices) const {
  ImageSet out;
  out.channels = channels;
  out.height = height;
  out.width = width;
  out.class_names = class_names;
  const int64_t bytes = image_bytes();
  out.pixels.resize(indices.size() * static_cast<size_t>(bytes));
  out.labels.reserve(indices.size());
  const bool grouped = groups.size() == labels.size() && !groups.empty();
  const bool shaped = stored.size() == labels.size() && !stored.empty();
  for (size_t i = 0; i < indices.size(); ++i) {
    const int64_t idx = indices[i];
    if (idx < 0 || idx >= size()) {
      throw ConfigError("ImageSet::subset: index " + std::to_string(idx) + " out of range [0, " +
                        std::to_string(size()) + ")");
    }
    std::memcpy(out.pixels.data() + i * bytes, pixels.data() + idx * bytes, static_cast<size_t>(bytes));
    out.labels.push_back(labels[static_cast<size_t>(idx)]);
    if (grouped) out.groups.push_back(groups[static_cast<size_t>(idx)]);
    if (shaped) out.stored.push_back(stored[static_cast<size_t>(idx)]);
  }
  return out;
}

ImageSet ImageSet::select_classes(const std::vector<int64_t>& classes) const {
  std::unordered_map<int64_t, int64_t> new_label;  // old label -> position in `classes`
  for (size_t i = 0; i < classes.size(); ++i) {
    if (!new_label.emplace(classes[i], static_cast<int64_t>(i)).second) {
      throw ConfigError("ImageSet::select_classes: class " + std::to_string(classes[i]) +
                        " listed twice");
    }
  }
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < size(); ++i) {
    if (new_label.count(labels[static_cast<size_t>(i)])) keep.push_back(i);
  }
  ImageSet out = subset(keep);
  for (auto& label : out.labels) label = new_label.at(label);

  // Carry the names over when every selected class has one; otherwise leave them empty
  // rather than mixing real names with made-up ones.
  out.class_names.clear();
  const bool named = !class_names.empty() && std::all_of(classes.begin(), classes.end(), [&](int64_t c) {
    return c >= 0 && c < static_cast<int64_t>(class_names.size());
  });
  if (named) {
    for (int64_t c : classes) out.class_names.push_back(class_names[static_cast<size_t>(c)]);
  }
  return out;
}

}  // namespace fedtl::common

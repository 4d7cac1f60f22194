// Binding labels to class NAMES. Every reader labels its images by the class names it found
// (folder names, manifest labels, a DICOM tag); a job declares its classes by name, in the
// order of its model's outputs. bind_classes() maps one onto the other and refuses, naming
// the class, any mismatch that would silently shift labels.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "common/data/image_set.h"

namespace fedtl::common {

// data.missing_classes: a class of the job without images in this data is an error, or a
// warning (a site that has no images of some class can still take part).
enum class MissingClasses { kError, kWarn };
std::optional<MissingClasses> parse_missing_classes(const std::string& name);  // "error" | "warn"

// Relabels `set` (labels index set.class_names) so that its labels index `job_classes`, and
// sets set.class_names = job_classes. `where` names the data in messages (a folder, a file).
// Throws DataError when the data holds a class the job does not know (naming it and the
// job's classes), when a job class has no image in the data (unless kWarn: then one warning
// naming the missing classes), or when job_classes lists a name twice or is empty.
void bind_classes(ImageSet& set, const std::vector<std::string>& job_classes, MissingClasses missing,
                  const std::string& where);

// The classes present in `set` (those with at least one image), in set.class_names order.
std::vector<std::string> classes_present(const ImageSet& set);

// "a, b, c" (for messages).
std::string join_names(const std::vector<std::string>& names);

}  // namespace fedtl::common

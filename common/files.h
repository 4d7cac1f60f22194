// Small file helpers. Outputs and checkpoints are written atomically: a temporary file in
// the same directory, fsync, rename over the target, fsync of the directory — so a reader
// sees the old file or the new one, never half of one.
#pragma once
#include <string>

namespace fedtl::common {

// Reads a whole file. Throws IoError naming the path when it cannot.
std::string read_file(const std::string& path);
// Atomically replaces `path` with `data`, creating parent directories. Throws IoError.
void write_file_atomic(const std::string& path, const std::string& data);
// The temporary name write_file_atomic uses for `path` (for writers that produce the file
// through another API, e.g. TorchScript's save, then call commit_atomic).
std::string temp_path_for(const std::string& path);
// fsyncs `tmp`, renames it to `path`, fsyncs the directory. Throws IoError.
void commit_atomic(const std::string& tmp, const std::string& path);

}  // namespace fedtl::common

#include "common/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/errors.h"

namespace fedtl::common {
namespace fs = std::filesystem;

namespace {
[[noreturn]] void io_fail(const std::string& what, const std::string& path) {
  throw IoError(what + " '" + path + "': " + std::strerror(errno));
}

void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) io_fail("cannot open for fsync", path);
  if (::fsync(fd) != 0) {
    ::close(fd);
    io_fail("fsync failed for", path);
  }
  ::close(fd);
}
}  // namespace

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) io_fail("cannot read", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) io_fail("error reading", path);
  return ss.str();
}

std::string temp_path_for(const std::string& path) {
  return path + ".tmp." + std::to_string(::getpid());
}

void commit_atomic(const std::string& tmp, const std::string& path) {
  fsync_path(tmp, false);
  if (::rename(tmp.c_str(), path.c_str()) != 0) io_fail("cannot rename '" + tmp + "' to", path);
  fs::path dir = fs::path(path).parent_path();
  fsync_path(dir.empty() ? "." : dir.string(), true);
}

void write_file_atomic(const std::string& path, const std::string& data) {
  fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec) throw IoError("cannot create directory '" + parent.string() + "': " + ec.message());
  const std::string tmp = temp_path_for(path);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) io_fail("cannot write", tmp);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
    out.flush();
    if (!out) io_fail("error writing", tmp);
  }
  commit_atomic(tmp, path);
}

}  // namespace fedtl::common

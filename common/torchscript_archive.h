// Checks a TorchScript archive (a zip file) BEFORE LibTorch opens it, because loading is not
// inert: LibTorch allocates every member at the size the archive declares (a 2 MB file can
// declare gigabytes: a zip bomb) and runs a module's TorchScript `__setstate__` while it
// unpickles, before any operator check could see it (common/model/transfer_model.h,
// load_module). Reads only the zip structures and the `code/` members; no LibTorch.
#pragma once
#include <cstdint>
#include <string>

namespace fedtl::common {

struct ArchiveLimits {
  uint64_t max_total_bytes = uint64_t{2} << 30;  // sum of the members' uncompressed sizes
  uint64_t max_members = 100000;
  uint64_t max_code_bytes = 64u << 20;            // one code/ member, inflated
};

// Throws ModelError naming the problem when `archive` is not a well-formed zip file, a member
// is compressed with anything but stored/deflate, a stored member's sizes disagree or point
// outside the file, the members exceed `limits`, or a module's code defines __setstate__
// (code the loader would run). Returns the total uncompressed size.
uint64_t check_torchscript_archive(const std::string& archive, const ArchiveLimits& limits = {});

}  // namespace fedtl::common

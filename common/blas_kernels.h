// Which OpenBLAS kernels LibTorch's matrix products run on.
//
// Debian's OpenBLAS (0.3.21, a DYNAMIC_ARCH build) picks its kernels from the CPU's family and
// model number, and a CPU newer than its table gets the generic SSE3 "Prescott" kernels, whatever
// it supports. Measured on an Emerald Rapids machine (family 6, model 207, AVX-512): a demo round
// took 0.42 s on Prescott's sgemm against 0.16 s on SkylakeX's, and sgemm was 40% of the CPU.
//
// OpenBLAS reads OPENBLAS_CORETYPE once, when it is loaded, so the choice has to be made before
// the process that uses it starts:
//   - the fedtl launcher (cli/main.cc) sets it before it execs fedtl-engine;
//   - any other process that loads LibTorch (fedtl-engine run by hand, the tests, the benchmark
//     programs) re-executes itself once with it set (common/model/transfer_model.cc).
// Only OpenBLAS's own fallback is overridden: when it chose Prescott on a CPU with AVX2 and FMA.
// A value the user sets is never changed, and nothing happens where OpenBLAS is not the BLAS.
#pragma once

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace fedtl::common {

// The kernels the OpenBLAS found through `handle` runs on (OpenBLAS's core name), or nullptr
// where it has no OpenBLAS. RTLD_DEFAULT: the one this process has loaded already.
inline const char* openblas_core_name(void* handle = RTLD_DEFAULT) {
  using CoreName = char* (*)();
  auto core_name = reinterpret_cast<CoreName>(::dlsym(handle, "openblas_get_corename"));
  return core_name != nullptr ? core_name() : nullptr;
}

// The core to name in OPENBLAS_CORETYPE, or nullptr to leave OpenBLAS's choice alone.
// `loaded_only`: ask the OpenBLAS this process already has loaded (a LibTorch process), else
// load it to ask (the launcher; its detection is the same code the engine will run).
inline const char* blas_core_override(bool loaded_only) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return nullptr;
  const char* core = openblas_core_name();
  if (core == nullptr && !loaded_only) {
    // The library stays loaded: unloading OpenBLAS with its thread pool running is not safe,
    // and the process is about to exec anyway.
    if (void* handle = ::dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL)) core = openblas_core_name(handle);
  }
  if (core == nullptr || std::strcmp(core, "Prescott") != 0) return nullptr;  // not the fallback
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#else
  (void)loaded_only;
#endif
  return nullptr;
}

// For a process that has LibTorch loaded: when OpenBLAS fell back, set OPENBLAS_CORETYPE and
// re-execute this program with the same arguments (returns only when nothing needs doing, or
// when the exec fails: the process then goes on with the slow kernels).
inline void reexec_with_blas_core(char** argv) {
  const char* core = blas_core_override(/*loaded_only=*/true);
  if (core == nullptr || argv == nullptr || argv[0] == nullptr) return;
  ::setenv("OPENBLAS_CORETYPE", core, 0);
  ::execv("/proc/self/exe", argv);
}

}  // namespace fedtl::common

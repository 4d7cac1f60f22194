# Build options. MPI and NCCL switch on by themselves when found (see FedtlDependencies).
option(FEDTL_BUILD_TESTS "Build the GoogleTest suites" ON)
option(FEDTL_BUILD_BENCH "Build the benchmarks in bench/" ON)
set(FEDTL_WITH_MPI AUTO CACHE STRING "Build the MPI transport and cluster mode (auto: on when MPI is found)")
set(FEDTL_WITH_CUDA AUTO CACHE STRING "Train on CUDA devices when LibTorch has CUDA (auto)")
set(FEDTL_WITH_NCCL AUTO CACHE STRING "Intra-site gradient sync with NCCL (auto: on when CUDA + NCCL are found)")
option(FEDTL_SANITIZE "Build with ASan + UBSan" OFF)

find_program(FEDTL_CCACHE ccache)
if(FEDTL_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${FEDTL_CCACHE})
endif()

# Every dependency comes from a Debian package (scripts/setup installs them).
set(THREADS_PREFER_PTHREAD_FLAG ON)
find_package(Threads REQUIRED)
find_package(Protobuf REQUIRED)
find_package(OpenSSL 3 REQUIRED)
find_package(ZLIB REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(tomlplusplus REQUIRED)
find_package(CLI11 REQUIRED)

# Image files: libpng (libpng-dev) and libjpeg-turbo (libjpeg62-turbo-dev); their headers are
# read before any pixel buffer is allocated (common/data/image_file.cc).
find_package(PNG REQUIRED)
find_package(JPEG REQUIRED)
# DICOM: DCMTK (libdcmtk-dev): dcmdata, dcmimgle, dcmimage and the JPEG / JPEG-LS / RLE codecs.
find_package(DCMTK REQUIRED CONFIG)
set(FEDTL_DCMTK_LIBS DCMTK::dcmdata DCMTK::dcmimgle DCMTK::dcmimage DCMTK::dcmjpeg DCMTK::dcmjpls DCMTK::oflog
  DCMTK::ofstd)

# LibTorch: Debian's libtorch-dev (1.13, CPU) or a PyTorch installation's LibTorch 2.x
# (pass -DCMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')).
find_package(Torch REQUIRED)
# TORCH_CXX_FLAGS carries -D_GLIBCXX_USE_CXX11_ABI=...; keep it on the torch TUs only.
separate_arguments(FEDTL_TORCH_CXX_FLAGS UNIX_COMMAND "${TORCH_CXX_FLAGS}")

if(FEDTL_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(FEDTL_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()

# --- cluster mode: MPI (transport + CPU gradient averaging) and NCCL (GPU averaging) --------
# FEDTL_WITH_MPI / FEDTL_WITH_NCCL are AUTO|ON|OFF (FedtlOptions.cmake). AUTO switches on when
# found; ON fails the configure when not found. The results are FEDTL_MPI_ENABLED and
# FEDTL_NCCL_ENABLED (booleans) and the compile definitions FEDTL_WITH_MPI=1 / FEDTL_WITH_NCCL=1
# on the targets that link fedtl_mpi.
function(fedtl_resolve_switch var found what)
  string(TOUPPER "${${var}}" mode)
  if(mode STREQUAL "ON" AND NOT ${found})
    message(FATAL_ERROR "${var}=ON but ${what} was not found")
  endif()
  if((mode STREQUAL "ON" OR mode STREQUAL "AUTO") AND ${found})
    set(${var}_ENABLED ON PARENT_SCOPE)
  else()
    set(${var}_ENABLED OFF PARENT_SCOPE)
  endif()
endfunction()

set(FEDTL_MPI_ENABLED OFF)
set(FEDTL_NCCL_ENABLED OFF)
string(TOUPPER "${FEDTL_WITH_MPI}" _fedtl_mpi_mode)
if(NOT _fedtl_mpi_mode STREQUAL "OFF")
  find_package(MPI COMPONENTS CXX)
  fedtl_resolve_switch(FEDTL_WITH_MPI MPI_CXX_FOUND "MPI (C++ bindings; install libopenmpi-dev)")
  set(FEDTL_MPI_ENABLED ${FEDTL_WITH_MPI_ENABLED})
endif()
string(TOUPPER "${FEDTL_WITH_NCCL}" _fedtl_nccl_mode)
if(FEDTL_MPI_ENABLED AND NOT _fedtl_nccl_mode STREQUAL "OFF")
  # NCCL needs the CUDA runtime to compile and link; a GPU is only needed to run it.
  find_package(CUDAToolkit)
  if(CUDAToolkit_FOUND)
    find_package(NCCL)
  endif()
  set(_fedtl_nccl_found OFF)
  if(CUDAToolkit_FOUND AND NCCL_FOUND)
    set(_fedtl_nccl_found ON)
  endif()
  fedtl_resolve_switch(FEDTL_WITH_NCCL _fedtl_nccl_found "the CUDA toolkit with NCCL (nccl.h, libnccl)")
  set(FEDTL_NCCL_ENABLED ${FEDTL_WITH_NCCL_ENABLED})
elseif(_fedtl_nccl_mode STREQUAL "ON")
  message(FATAL_ERROR "FEDTL_WITH_NCCL=ON needs FEDTL_WITH_MPI (the NCCL rendezvous runs over MPI)")
endif()
message(STATUS "fedtl: MPI ${FEDTL_MPI_ENABLED}, NCCL ${FEDTL_NCCL_ENABLED}")
if(FEDTL_MPI_ENABLED)
  # Launch line for the MPI tests: mpirun as root refuses to run without --allow-run-as-root.
  execute_process(COMMAND id -u OUTPUT_VARIABLE _fedtl_uid OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  set(FEDTL_MPIEXEC_FLAGS --oversubscribe)
  if(_fedtl_uid STREQUAL "0")
    list(APPEND FEDTL_MPIEXEC_FLAGS --allow-run-as-root)
  endif()
endif()

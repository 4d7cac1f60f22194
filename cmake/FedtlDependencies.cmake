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

# stb_image (libstb-dev ships the header and a compiled libstb).
find_path(STB_INCLUDE_DIR stb/stb_image.h REQUIRED)
find_library(STB_LIBRARY stb REQUIRED)

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

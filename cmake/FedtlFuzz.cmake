# libFuzzer builds (docs/fuzzing.md). Used by the standalone project tests/fuzz/CMakeLists.txt,
# which scripts/fuzz configures in build-fuzz/ with clang. The fuzz build compiles the
# torch-free sources it needs (common/*.cc, protocols/**/*.cc, the generated protobuf code)
# itself, every one of them with the fuzzer's instrumentation, so it needs neither LibTorch
# nor the main build.
#
# Sets FEDTL_FUZZ_ROOT (the repository) and defines:
#   fedtl_fuzz_libraries()        fedtl_fuzz_proto, fedtl_fuzz_core (instrumented libraries)
#   fedtl_fuzzer(NAME SOURCES...) a libFuzzer executable fuzz_NAME linked against them
if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "the fuzz build needs clang (libFuzzer): configure with "
    "-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ (scripts/fuzz does)")
endif()
get_filename_component(FEDTL_FUZZ_ROOT ${CMAKE_CURRENT_LIST_DIR}/.. ABSOLUTE)

# Instrumentation for everything compiled here: coverage for libFuzzer, ASan, and UBSan made
# fatal (a report aborts the run like a crash does).
# tests/fuzz/ubsan_ignorelist.txt: known, reported UB in third-party headers (each commented).
set(FEDTL_FUZZ_FLAGS -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all
  -fsanitize-ignorelist=${FEDTL_FUZZ_ROOT}/tests/fuzz/ubsan_ignorelist.txt
  -fno-omit-frame-pointer -gline-tables-only)
set(FEDTL_FUZZ_LINK -fsanitize=address,undefined)

function(fedtl_fuzz_libraries)
  set(THREADS_PREFER_PTHREAD_FLAG ON)
  find_package(Threads REQUIRED)
  find_package(Protobuf REQUIRED)
  find_package(OpenSSL 3 REQUIRED)
  find_package(ZLIB REQUIRED)
  find_package(fmt REQUIRED)
  find_package(spdlog REQUIRED)
  find_package(nlohmann_json 3 REQUIRED)
  find_package(tomlplusplus REQUIRED)  # only to fail early when it is missing; see below
  find_package(PNG REQUIRED)
  find_package(JPEG REQUIRED)
  find_package(DCMTK REQUIRED CONFIG)

  # Wire schemas, as in the top-level CMakeLists.txt.
  file(GLOB protos CONFIGURE_DEPENDS ${FEDTL_FUZZ_ROOT}/protocols/*.proto)
  set(gen ${CMAKE_BINARY_DIR}/gen)
  set(proto_srcs)
  foreach(proto ${protos})
    get_filename_component(stem ${proto} NAME_WE)
    add_custom_command(
      OUTPUT ${gen}/protocols/${stem}.pb.cc ${gen}/protocols/${stem}.pb.h
      COMMAND ${CMAKE_COMMAND} -E make_directory ${gen}/protocols
      COMMAND protobuf::protoc --cpp_out=${gen} -I ${FEDTL_FUZZ_ROOT} ${proto}
      DEPENDS ${proto}
      COMMENT "protoc protocols/${stem}.proto")
    list(APPEND proto_srcs ${gen}/protocols/${stem}.pb.cc)
  endforeach()
  add_library(fedtl_fuzz_proto STATIC ${proto_srcs})
  target_include_directories(fedtl_fuzz_proto PUBLIC ${gen})
  target_link_libraries(fedtl_fuzz_proto PUBLIC protobuf::libprotobuf)
  target_compile_options(fedtl_fuzz_proto PRIVATE ${FEDTL_FUZZ_FLAGS})

  # common/ without the TLS and MPI backends (Asio, MPI; nothing here fuzzes sockets) and
  # without common/model (LibTorch) and common/mpi; protocols/.
  file(GLOB_RECURSE common_srcs CONFIGURE_DEPENDS ${FEDTL_FUZZ_ROOT}/common/*.cc)
  list(FILTER common_srcs EXCLUDE REGEX "/common/(model|mpi)/|/common/transport/(tls|mpi)\\.cc$")
  # The job file parser and the model layer's torch-free vocabulary (names of its enums).
  list(APPEND common_srcs ${FEDTL_FUZZ_ROOT}/app/config.cc ${FEDTL_FUZZ_ROOT}/common/model/model_spec.cc)
  file(GLOB_RECURSE protocols_srcs CONFIGURE_DEPENDS ${FEDTL_FUZZ_ROOT}/protocols/*.cc)
  add_library(fedtl_fuzz_core STATIC ${common_srcs} ${protocols_srcs})
  target_include_directories(fedtl_fuzz_core PUBLIC ${FEDTL_FUZZ_ROOT})
  target_compile_options(fedtl_fuzz_core PRIVATE ${FEDTL_FUZZ_FLAGS} -Wall -Wno-unused-parameter)
  # libpng, libjpeg-turbo and DCMTK are Debian's prebuilt libraries (not instrumented): the
  # image_folder target covers fedtl's own code around them (header checks, conversions).
  target_link_libraries(fedtl_fuzz_core PUBLIC fedtl_fuzz_proto spdlog::spdlog fmt::fmt
    nlohmann_json::nlohmann_json OpenSSL::SSL OpenSSL::Crypto ZLIB::ZLIB PNG::PNG JPEG::JPEG
    DCMTK::dcmdata DCMTK::dcmimgle DCMTK::dcmimage DCMTK::dcmjpeg DCMTK::dcmjpls DCMTK::oflog DCMTK::ofstd
    Threads::Threads)
  # toml++ header-only instead of Debian's shared library, so the TOML parser that
  # app/config.cc calls is instrumented too (coverage guidance and ASan inside it).
  target_compile_definitions(fedtl_fuzz_core PUBLIC TOML_HEADER_ONLY=1)
endfunction()

function(fedtl_fuzzer name)
  add_executable(fuzz_${name} ${ARGN})
  target_compile_options(fuzz_${name} PRIVATE ${FEDTL_FUZZ_FLAGS} -Wall)
  target_link_libraries(fuzz_${name} PRIVATE fedtl_fuzz_core)
  target_link_options(fuzz_${name} PRIVATE -fsanitize=fuzzer ${FEDTL_FUZZ_LINK})
endfunction()

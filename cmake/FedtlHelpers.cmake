# Warnings and sanitizer flags shared by every fedtl target. Include roots: a library of the
# source tree gets its own layer's with fedtl_layer_includes; tests and benchmarks, which sit
# above every layer, get the whole source root (fedtl_root_includes).
function(fedtl_target_defaults target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
  if(FEDTL_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined -fno-omit-frame-pointer)
    target_link_options(${target} PUBLIC -fsanitize=address,undefined)
  endif()
endfunction()

# fedtl_gtest(NAME dir LIBS ...): one gtest executable per test folder; each test case is a
# ctest entry (discovered when ctest runs, so building does not execute test binaries).
# DISCOVERY_TIMEOUT: listing the tests starts the binary, and one linked with LibTorch loads it
# (twice where common/blas_kernels.h re-executes it); under ThreadSanitizer on a slow machine
# that took longer than CMake's default 5 s, and a timed-out listing fails the whole ctest run.
function(fedtl_gtest name dir)
  cmake_parse_arguments(ARG "" "" "LIBS" ${ARGN})
  file(GLOB srcs CONFIGURE_DEPENDS ${dir}/*.cc)
  if(NOT srcs)
    return()
  endif()
  add_executable(${name} ${srcs})
  fedtl_target_defaults(${name})
  fedtl_root_includes(${name})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE FEDTL_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
    FEDTL_BINARY_DIR="${CMAKE_BINARY_DIR}")
  include(GoogleTest)
  gtest_discover_tests(${name} DISCOVERY_MODE PRE_TEST DISCOVERY_TIMEOUT 120
    WORKING_DIRECTORY ${CMAKE_BINARY_DIR} PROPERTIES TIMEOUT 600)
endfunction()

# fedtl_layer_includes(TARGET FOLDER): TARGET sees "FOLDER/..." (and, through the libraries it
# links, the layers below) and nothing else of the source tree. Includes are written from the
# root ("common/errors.h"), so the include root is a directory in the build tree holding one
# symbolic link, FOLDER -> the source folder.
function(fedtl_layer_includes target folder)
  set(root ${CMAKE_BINARY_DIR}/layers/${folder})
  if(NOT EXISTS ${root}/${folder})
    file(MAKE_DIRECTORY ${root})
    file(CREATE_LINK ${CMAKE_SOURCE_DIR}/${folder} ${root}/${folder} SYMBOLIC)
  endif()
  target_include_directories(${target} PUBLIC ${root})
endfunction()

# Tests, benchmarks and tools: the whole source root and the generated protobuf headers.
function(fedtl_root_includes target)
  target_include_directories(${target} PRIVATE ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR}/gen)
endfunction()

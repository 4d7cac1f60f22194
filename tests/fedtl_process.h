// Runs the built `fedtl` binary as a child process, for tests that need what only a separate
// process shows: its exit status, its peak resident set (wait4), its stderr.
#pragma once
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace fedtl::test_support {

struct FedtlRun {
  int status = 0;     // as wait4 reports it (WIFEXITED, WEXITSTATUS)
  rusage usage{};     // ru_maxrss: peak RSS in KB
  std::string log;    // what it wrote to stderr
};

// Runs FEDTL_BINARY_DIR/fedtl with `args` to the end, stderr into the file `log` (truncated
// first), stdout discarded.
inline FedtlRun run_fedtl(const std::vector<std::string>& args, const std::string& log) {
  const std::string bin = std::string(FEDTL_BINARY_DIR) + "/fedtl";
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(bin.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    if (!freopen(log.c_str(), "w", stderr) || !freopen("/dev/null", "w", stdout)) _exit(126);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  FedtlRun r;
  EXPECT_EQ(wait4(pid, &r.status, 0, &r.usage), pid);
  std::stringstream err;
  err << std::ifstream(log).rdbuf();
  r.log = err.str();
  return r;
}

}  // namespace fedtl::test_support

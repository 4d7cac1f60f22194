// The fedtl command line. Every failure from input (a bad config, a corrupt file, a refused
// peer) ends here as one line on stderr and a non-zero exit status.
#include <CLI/CLI.hpp>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <iostream>
#include <vector>
#ifdef FEDTL_CLI_LAUNCHER
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#endif

#include "cli/commands.h"
#ifdef FEDTL_CLI_LAUNCHER
#include "common/blas_kernels.h"
#endif
#include "common/errors.h"
#include "common/transport/framing.h"

#ifndef FEDTL_VERSION
#define FEDTL_VERSION "dev"
#endif

#ifdef FEDTL_CLI_LAUNCHER
namespace {
// The launcher's last step (cli/commands.h): become the fedtl-engine that is built and
// installed beside it, with the same arguments. Returns only when that fails.
int exec_engine(char** argv) {
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) {
    std::cerr << "fedtl: error: cannot find this program's own path (/proc/self/exe): " << ec.message() << "\n";
    return 1;
  }
  const std::string engine = (self.parent_path() / "fedtl-engine").string();
  // The engine's OpenBLAS kernels (common/blas_kernels.h): named here so it starts only once.
  if (const char* core = fedtl::common::blas_core_override(/*loaded_only=*/false))
    ::setenv("OPENBLAS_CORETYPE", core, 0);
  ::execv(engine.c_str(), argv);
  std::cerr << "fedtl: error: cannot start " << engine << ": " << std::strerror(errno)
            << " (fedtl-engine is built and installed beside fedtl)\n";
  return 1;
}
}  // namespace
#endif

int main(int argc, char** argv) {
  // Logs and progress go to stderr; stdout stays free for results.
  auto logger = spdlog::stderr_color_mt("fedtl");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%H:%M:%S.%e] %^%l%$ %v");

  // Named, not taken from argv[0]: the launcher and fedtl-engine print the same usage lines.
  CLI::App app{"fedtl: federated transfer learning across sites that cannot share their data", "fedtl"};
  app.require_subcommand(1);
  // --version answers before any subcommand is required.
  app.set_version_flag("--version", std::string("fedtl ") + FEDTL_VERSION + " (wire protocol " +
                                        std::to_string(fedtl::common::kProtocolVersion) + ")");
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error")->capture_default_str();
  std::string log_file;
  app.add_option("--log-file", log_file, "also append the log to this file (dated lines, flushed at each warning)");

  namespace cli = fedtl::cli;
  const std::vector<cli::Command> commands = {cli::add_simulate(app),    cli::add_pretrain(app),
                                              cli::add_coordinator(app), cli::add_worker(app),
                                              cli::add_mpi(app),         cli::add_ca(app),
                                              cli::add_privacy(app),     cli::add_status(app)};
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);  // --help, --version and argument errors end here, in either program
  }
#ifdef FEDTL_CLI_LAUNCHER
  (void)commands;
  return exec_engine(argv);
#else
  spdlog::set_level(spdlog::level::from_str(log_level));
  if (!log_file.empty()) {
    try {
      auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_file, /*truncate=*/false);
      sink->set_pattern("[%Y-%m-%d %H:%M:%S.%e] %l %v");
      logger->sinks().push_back(sink);
      logger->flush_on(spdlog::level::warn);
      spdlog::flush_every(std::chrono::seconds(2));
    } catch (const spdlog::spdlog_ex& e) {
      std::cerr << "fedtl: error: --log-file " << log_file << ": " << e.what() << "\n";
      return 1;
    }
  }
  fedtl::common::StopSignal stop;  // SIGINT/SIGTERM: stop cleanly (see common/stop_signal.h)

  try {
    for (const auto& c : commands)
      if (*c.sub) return c.run(stop);
  } catch (const fedtl::Error& e) {
    std::cerr << "fedtl: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "fedtl: internal error: " << e.what() << "\n";
    return 3;
  }
  return 0;
#endif
}

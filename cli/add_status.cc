#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "app/status_board.h"
#include "cli/commands.h"
#include "common/errors.h"
#include "common/transport/http_server.h"

namespace fedtl::cli {

Command add_status(CLI::App& app) {
  struct Args {
    std::string url = "http://127.0.0.1:8080";
    double timeout_s = 10;
  };
  auto a = std::make_shared<Args>();
  auto* st = app.add_subcommand("status", "print a running job's status (its coordinator started with --status-port)");
  st->add_option("--url", a->url, "the status server, e.g. http://127.0.0.1:8080")->capture_default_str();
  st->add_option("--timeout", a->timeout_s, "seconds to wait for an answer")->capture_default_str();
  return {st, FEDTL_CLI_ACTION([a](common::StopSignal&) {
            std::string base = a->url;
            while (!base.empty() && base.back() == '/') base.pop_back();
            const auto body = common::http_get(
                base + "/status", std::chrono::milliseconds(static_cast<int64_t>(a->timeout_s * 1000)));
            nlohmann::json j;
            try {
              j = nlohmann::json::parse(body);
              std::cout << app::format_status(j);
            } catch (const nlohmann::json::exception& e) {
              throw ProtocolError(base + "/status did not answer a fedtl status (" + e.what() + ")");
            }
            return 0;
          }),
          a};
}

}  // namespace fedtl::cli

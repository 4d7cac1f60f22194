#include <memory>

#include "app/run.h"
#include "cli/commands.h"

namespace fedtl::cli {

Command add_ca(CLI::App& app) {
  struct Args {
    std::string dir, federation = "fedtl", name, role = "worker", coordinator, coordinator_name;
  };
  auto a = std::make_shared<Args>();
  auto* ca = app.add_subcommand("ca", "federation certificate authority and startup kits");
  ca->require_subcommand(1);
  auto* init = ca->add_subcommand("init", "create the federation CA in --dir");
  auto* issue = ca->add_subcommand("issue", "issue a kit (key, certificate, CA certificate, kit.toml) for a party");
  init->add_option("--dir", a->dir, "PKI directory")->required();
  init->add_option("--federation", a->federation, "federation name (the CA's common name)")->capture_default_str();
  issue->add_option("--dir", a->dir, "PKI directory made by `fedtl ca init`")->required();
  issue->add_option("--name", a->name, "party name: the certificate's CN (what federation.sites lists)")->required();
  issue->add_option("--role", a->role, "worker | coordinator")->capture_default_str();
  issue->add_option("--coordinator", a->coordinator, "worker kits: the coordinator's host:port");
  issue->add_option("--coordinator-name", a->coordinator_name, "worker kits: the coordinator's certificate name");
  return {ca, FEDTL_CLI_ACTION([a, init](common::StopSignal&) {
            if (*init)
              app::run_ca_init(a->dir, a->federation);
            else
              app::run_ca_issue(a->dir, a->name, a->role, a->coordinator, a->coordinator_name);
            return 0;
          }),
          a};
}

}  // namespace fedtl::cli

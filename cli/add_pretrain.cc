#include <memory>

#include "app/run.h"
#include "cli/commands.h"

namespace fedtl::cli {

Command add_pretrain(CLI::App& app) {
  struct Args {
    std::string config, out;
  };
  auto a = std::make_shared<Args>();
  auto* pre = app.add_subcommand("pretrain", "pre-train the built-in CNN on the job's source classes; save TorchScript");
  pre->add_option("--config,-c", a->config, "job file (TOML)")->required();
  pre->add_option("--out,-o", a->out, "backbone file to write (default: the job's backbone.path)");
  return {pre, FEDTL_CLI_ACTION([a](common::StopSignal&) {
            auto cfg = app::load_job_config(a->config);
            app::run_pretrain(cfg, a->out.empty() ? cfg.backbone.path : a->out);
            return 0;
          }),
          a};
}

}  // namespace fedtl::cli

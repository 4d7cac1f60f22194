// Config parsers: app::parse_job_config (+ validate) on the input as TOML text, and
// app::load_site_config on the input written to a site.toml file.
//
// Input: [1 byte: bit 0 selects site config (1) or job config (0)][TOML text].
#include <cstdint>
#include <string>

#include "app/config.h"
#include "fuzz_util.h"

using namespace fedtl;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const uint8_t which = in.byte();
  const std::string text = in.rest();
  if (which & 1) {
    const auto path = fuzz::scratch_dir() / "site.toml";
    fuzz::write_bytes(path, reinterpret_cast<const uint8_t*>(text.data()), text.size());
    fuzz::expect_errors_only([&] { (void)app::load_site_config(path.string()); });
  } else {
    fuzz::expect_errors_only([&] {
      const app::JobConfig cfg = app::parse_job_config(text, "fuzz.toml");
      app::validate(cfg);
    });
  }
  return 0;
}

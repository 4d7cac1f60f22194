// Image-folder reader (common::read_image_folder): the input becomes one file in a class
// sub-folder, decoded by libpng / libjpeg-turbo after fedtl's header checks,
// converted to 1 or 3 channels and resized.
//
// Input: [1 byte: channels (bit 0: 1 or 3) and extension (bits 1-2: .png .jpg .jpeg .PNG)]
//        [1 byte: target height - 1 (mod 64)][1 byte: target width - 1 (mod 64)][file bytes].
#include <cstdint>
#include <filesystem>
#include <string>

#include "common/data/datasets.h"
#include "fuzz_util.h"

using namespace fedtl;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const uint8_t sel = in.byte();
  const int64_t channels = (sel & 1) ? 3 : 1;
  static const char* kExt[] = {".png", ".jpg", ".jpeg", ".PNG"};
  const int64_t height = 1 + in.byte() % 64, width = 1 + in.byte() % 64;
  const std::string file = in.rest();

  const auto root = fuzz::scratch_dir() / "images";
  const auto cls = root / "class_a";
  std::error_code ec;
  std::filesystem::remove_all(root, ec);
  std::filesystem::create_directories(cls);
  fuzz::write_bytes(cls / (std::string("img") + kExt[(sel >> 1) & 3]),
                    reinterpret_cast<const uint8_t*>(file.data()), file.size());
  fuzz::expect_errors_only([&] {
    const common::ImageSet set = common::read_image_folder(root.string(), channels, height, width);
    if (set.labels.size() != 1 || set.pixels.size() != static_cast<size_t>(channels * height * width))
      std::abort();
  });
  return 0;
}

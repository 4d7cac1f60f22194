// IDX reader (common::read_idx) on files written from the input, raw and gzip-compressed.
//
// Input: [1 byte: flags][2 bytes LE: images-file length][images bytes][labels bytes].
// flags bit 0: gzip the images file, bit 1: gzip the labels file (the reader detects gzip by
// content, so inputs that are gzip streams themselves reach the corrupt-gzip paths too).
#include <zlib.h>

#include <cstdint>
#include <string>

#include "common/data/datasets.h"
#include "fuzz_util.h"

using namespace fedtl;

namespace {

std::string gzip(const std::string& raw) {
  z_stream z{};
  if (deflateInit2(&z, Z_BEST_SPEED, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) std::abort();
  std::string out(deflateBound(&z, raw.size()) + 32, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  z.avail_in = static_cast<uInt>(raw.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) std::abort();
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const uint8_t flags = in.byte();
  std::string images = in.bytes(in.u16());
  std::string labels = in.rest();
  if (flags & 1) images = gzip(images);
  if (flags & 2) labels = gzip(labels);
  const auto dir = fuzz::scratch_dir();
  const auto ip = dir / "images-idx3-ubyte", lp = dir / "labels-idx1-ubyte";
  fuzz::write_bytes(ip, reinterpret_cast<const uint8_t*>(images.data()), images.size());
  fuzz::write_bytes(lp, reinterpret_cast<const uint8_t*>(labels.data()), labels.size());
  fuzz::expect_errors_only([&] {
    const common::ImageSet set = common::read_idx(ip.string(), lp.string());
    // What the reader returns must be self-consistent.
    if (set.labels.size() * static_cast<size_t>(set.height * set.width) != set.pixels.size()) std::abort();
  });
  return 0;
}

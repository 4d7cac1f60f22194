// Frame decoder: common::FrameDecoder fed the same byte stream in arbitrary splits, and
// common::decode_frame on the whole input.
//
// Input: [1 byte: split seed][1 byte: max-frame selector][stream bytes...]. The stream is fed
// in chunks whose sizes come from a small generator seeded by the first byte, so every split of
// a frame (header cut anywhere, payload cut anywhere, several frames in one chunk) is reached.
// Checks beyond "no crash": frames taken out re-encode to exactly the bytes consumed, and the
// decoder never reports more pending bytes than it was fed.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz_util.h"
#include "common/transport/framing.h"

using namespace fedtl;
using namespace fedtl::common;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  uint32_t split = in.byte() | 1u;
  const uint8_t max_sel = in.byte();
  // Small limits make the oversize checks reachable; the default exercises the normal path.
  const uint32_t max_frame = max_sel < 128 ? static_cast<uint32_t>(max_sel) * 8u : kDefaultMaxFrameBytes;
  const std::string stream = in.rest();

  // Incremental decoder over arbitrary splits.
  fuzz::expect_errors_only([&] {
    FrameDecoder dec(max_frame);
    std::string reencoded;
    size_t fed = 0;
    while (fed < stream.size()) {
      split = split * 1103515245u + 12345u;  // LCG: chunk sizes 1..64, sometimes the rest
      size_t chunk = ((split >> 16) % 8 == 0) ? stream.size() - fed : 1 + (split >> 16) % 64;
      if (chunk > stream.size() - fed) chunk = stream.size() - fed;
      dec.feed(stream.data() + fed, chunk);
      fed += chunk;
      while (auto f = dec.next()) {
        if (f->payload.size() > max_frame) std::abort();
        encode_frame(*f, reencoded);
      }
      if (dec.pending_bytes() > fed - reencoded.size()) std::abort();
    }
    // Everything handed out, re-encoded, is a prefix of the stream.
    if (stream.compare(0, reencoded.size(), reencoded) != 0) std::abort();
    if (reencoded.size() + dec.pending_bytes() != stream.size()) std::abort();
  });

  // Whole-frame decoder; a success must round-trip.
  fuzz::expect_errors_only([&] {
    const Frame f = decode_frame(stream, max_frame);
    if (encode_frame(f) != stream) std::abort();
  });
  return 0;
}

// The fine-tuning schedule of a job (gradual unfreezing), derived from the JobSpec alone so the
// coordinator and every site agree on it without another message.
//
// The job's ParamLayout lists the parameters of every backbone child the job ever trains (the
// deepest cut), in order, then the head's. Round r trains the head and the LAST k(r) of those
// children:
//   k(r) = 0                                  for r <= model.warmup_rounds
//        = U                                  after the warm-up when model.unfreeze_every = 0
//        = min(U, 1 + (r - warmup - 1) / E)   otherwise (one more child every E rounds)
// where U is the number of backbone children in the layout. Because children unfreeze from the
// top and stay unfrozen, the parameters trained in a round are a suffix of the layout: a round's
// RoundStart.params and Update.delta hold exactly that suffix ([offset, numel)), and every value
// before it is still the backbone's own (it never trained).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "protocols/fedtl.pb.h"

namespace fedtl::protocols {

struct RoundSchedule {
  uint32_t children = 0;        // backbone children trained this round (k)
  uint32_t total_children = 0;  // U
  uint64_t offset = 0;          // first trained value in the layout's flat order
  uint64_t trained = 0;         // values trained this round (numel - offset)
  // "head" (k = 0), "unfreezing" (0 < k < U) or "full" (k = U > 0).
  const char* phase = "head";
};

// The backbone children of a layout (entries named "backbone.<child>.<...>"), in order, with the
// number of values each holds. Throws ProtocolError for an impossible shape.
struct LayoutChild {
  std::string name;
  uint64_t numel = 0;
};
std::vector<LayoutChild> layout_children(const v1::ParamLayout& layout);

// Round `round` (1-based; a round past job.rounds() is scheduled as the last one). Throws
// ProtocolError for an impossible layout.
RoundSchedule round_schedule(const v1::JobSpec& job, uint32_t round);

}  // namespace fedtl::protocols

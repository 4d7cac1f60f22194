#include "protocols/schedule.h"

#include <algorithm>

#include "common/errors.h"
#include "protocols/job_check.h"

namespace fedtl::protocols {

std::vector<LayoutChild> layout_children(const v1::ParamLayout& layout) {
  std::vector<LayoutChild> out;
  for (const auto& e : layout.entries()) {
    const std::string& n = e.name();
    if (n.rfind("backbone.", 0) != 0) continue;
    const auto dot = n.find('.', 9);
    const std::string child = n.substr(9, dot == std::string::npos ? std::string::npos : dot - 9);
    v1::ParamLayout one;
    *one.add_entries() = e;
    const uint64_t numel = layout_numel(one);
    if (out.empty() || out.back().name != child) out.push_back({child, 0});
    out.back().numel += numel;
  }
  return out;
}

RoundSchedule round_schedule(const v1::JobSpec& job, uint32_t round) {
  const auto children = layout_children(job.layout());
  const uint64_t total = layout_numel(job.layout());
  RoundSchedule s;
  s.total_children = static_cast<uint32_t>(children.size());
  const uint32_t r = std::min(round, std::max<uint32_t>(job.rounds(), 1));
  const uint32_t warm = job.model().warmup_rounds(), every = job.model().unfreeze_every();
  if (r <= warm) {
    s.children = 0;
  } else if (every == 0) {
    s.children = s.total_children;
  } else {
    s.children = std::min<uint32_t>(s.total_children, 1 + (r - warm - 1) / every);
  }
  uint64_t frozen = 0;
  for (size_t i = 0; i + s.children < children.size(); ++i) frozen += children[i].numel;
  s.offset = frozen;
  s.trained = total - frozen;
  s.phase = s.children == 0 ? "head" : s.children < s.total_children ? "unfreezing" : "full";
  return s;
}

}  // namespace fedtl::protocols

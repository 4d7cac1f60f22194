// A hospital decides what runs on its data: the job a coordinator sends is checked against
// the site's policy (site.toml [policy]) before any data is touched.
#pragma once
#include <string>

#include "common/config.h"
#include "protocols/fedtl.pb.h"

namespace fedtl::worker {

// Returns "" when `job` is within `policy`, else a one-line reason naming the rule.
std::string policy_violation(const common::SitePolicy& policy, const v1::JobSpec& job);

}  // namespace fedtl::worker

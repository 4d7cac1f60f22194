// A small JobSpec that passes a site's checks (protocols/job_check.h), for the coordinator and
// worker unit tests that speak the protocol with scripted peers and no LibTorch.
#pragma once
#include <cstdint>
#include <string>

#include "common/sha256.h"
#include "protocols/fedtl.pb.h"

namespace fedtl::test_support {

// `rounds` rounds over a one-entry layout of `params` floats ("head.weight"); the backbone is
// `backbone` (its digest and size; `digest` overrides the digest, e.g. to make it wrong).
inline v1::JobSpec unit_job(const std::string& backbone, size_t params, uint32_t rounds,
                            const std::string& digest = "") {
  v1::JobSpec job;
  job.set_job_name("unit");
  job.set_seed(7);
  job.set_rounds(rounds);
  job.set_backbone_sha256(digest.empty() ? common::sha256_hex(backbone) : digest);
  job.set_backbone_bytes(backbone.size());
  job.mutable_training()->set_optimizer(v1::OPTIMIZER_SGD);  // sites refuse unspecified enums
  job.mutable_model()->set_head(v1::HEAD_LINEAR);
  job.mutable_model()->set_freeze(v1::FREEZE_ALL);
  job.mutable_model()->set_num_classes(2);
  job.mutable_training()->set_epochs(1);  // and refuse work they cannot do
  job.mutable_training()->set_batch_size(8);
  job.mutable_training()->set_lr(0.1);
  auto* e = job.mutable_layout()->add_entries();
  e->set_name("head.weight");
  e->add_shape(static_cast<int64_t>(params));
  job.set_secure_aggregation(false);
  return job;
}

}  // namespace fedtl::test_support

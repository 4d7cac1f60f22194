#include "worker/site_policy.h"

#include <algorithm>

namespace fedtl::worker {

std::string policy_violation(const worker::SitePolicy& p, const v1::JobSpec& job) {
  if (!p.backbone_sha256.empty() &&
      std::find(p.backbone_sha256.begin(), p.backbone_sha256.end(), job.backbone_sha256()) == p.backbone_sha256.end())
    return "backbone " + job.backbone_sha256() + " is not among the digests this site accepts";
  if (static_cast<int64_t>(job.min_sites()) < p.min_sites)
    return "the job aggregates as few as " + std::to_string(job.min_sites()) + " sites; this site requires at least " +
           std::to_string(p.min_sites);
  if (p.require_secure_aggregation && !job.secure_aggregation())
    return "this site requires secure aggregation and the job does not use it";
  if (static_cast<int64_t>(job.rounds()) > p.max_rounds)
    return "the job runs " + std::to_string(job.rounds()) + " rounds; this site allows at most " +
           std::to_string(p.max_rounds);
  if (static_cast<int64_t>(job.training().epochs()) > p.max_local_epochs)
    return "the job asks for " + std::to_string(job.training().epochs()) + " local epochs; this site allows at most " +
           std::to_string(p.max_local_epochs);
  if (static_cast<int64_t>(job.training().personalize_epochs()) > p.max_local_epochs)
    return "the job asks for " + std::to_string(job.training().personalize_epochs()) +
           " personalisation epochs; this site allows at most " + std::to_string(p.max_local_epochs) +
           " (policy.max_local_epochs)";
  if (p.max_backbone_bytes >= 0 && job.backbone_bytes() > static_cast<uint64_t>(p.max_backbone_bytes))
    return "the job's backbone is " + std::to_string(job.backbone_bytes()) + " bytes; this site accepts at most " +
           std::to_string(p.max_backbone_bytes) + " (policy.max_backbone_bytes)";
  const auto& t = job.training();
  if (static_cast<int64_t>(t.batch_size()) > p.max_batch_size)
    return "the job asks for batches of " + std::to_string(t.batch_size()) + "; this site allows at most " +
           std::to_string(p.max_batch_size) + " (policy.max_batch_size)";
  if (!(t.lr() <= p.max_learning_rate))
    return "the job's learning rate " + std::to_string(t.lr()) + " is above this site's policy.max_learning_rate " +
           std::to_string(p.max_learning_rate);
  const double backbone_lr = t.backbone_lr() > 0 ? t.backbone_lr() : t.lr() / 10;
  if (!(backbone_lr <= p.max_backbone_lr) || !(backbone_lr <= p.max_learning_rate))
    return "the job's backbone learning rate " + std::to_string(backbone_lr) +
           " is above this site's policy.max_backbone_lr " + std::to_string(p.max_backbone_lr) +
           " (or policy.max_learning_rate)";
  {
    uint64_t children = 0;
    std::string last;
    for (const auto& e : job.layout().entries()) {
      if (e.name().rfind("backbone.", 0) != 0) continue;
      const auto dot = e.name().find('.', 9);
      const std::string child = e.name().substr(9, dot == std::string::npos ? std::string::npos : dot - 9);
      if (child != last) ++children;
      last = child;
    }
    if (static_cast<int64_t>(children) > p.max_unfrozen_children)
      return "the job trains " + std::to_string(children) + " backbone children; this site allows at most " +
             std::to_string(p.max_unfrozen_children) + " (policy.max_unfrozen_children)";
  }
  if (static_cast<int64_t>(job.model().hidden()) > p.max_hidden)
    return "the job's head is " + std::to_string(job.model().hidden()) + " wide; this site allows at most " +
           std::to_string(p.max_hidden) + " (policy.max_hidden)";
  return "";
}

}  // namespace fedtl::worker

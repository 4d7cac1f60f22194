#include "protocols/job_check.h"

#include <cmath>

#include "common/errors.h"

namespace fedtl::protocols {
namespace {

// 0 (unspecified) is refused with the unknown values: a coordinator must choose.
template <typename IsValid>
std::string enum_problem(const char* field, int value, IsValid is_valid, bool zero_ok = false) {
  if ((value == 0 && !zero_ok) || (value != 0 && !is_valid(value)))
    return std::string(field) + " " + std::to_string(value) + " is not one this site knows (fedtl " +
           "protocol version 1); refusing the job";
  return "";
}

}  // namespace

std::string job_spec_problem(const v1::JobSpec& job) {
  for (const std::string& why :
       {enum_problem("training.optimizer", job.training().optimizer(), v1::Optimizer_IsValid),
        enum_problem("model.head", job.model().head(), v1::HeadType_IsValid),
        enum_problem("model.freeze", job.model().freeze(), v1::Freeze_IsValid),
        enum_problem("privacy.mode", job.privacy().mode(), v1::PrivacyMode_IsValid, /*zero_ok=*/true)})
    if (!why.empty()) return why;
  // Work a site cannot do, or values that would wrap or never end: refused before any work
  // (a batch of 0 would train forever while heartbeats keep the site alive).
  const auto& t = job.training();
  if (t.epochs() < 1) return "training.epochs must be >= 1 (got " + std::to_string(t.epochs()) + ")";
  if (t.batch_size() < 1) return "training.batch_size must be >= 1 (got " + std::to_string(t.batch_size()) + ")";
  if (!std::isfinite(t.lr()) || t.lr() <= 0) return "training.lr must be finite and > 0";
  if (!std::isfinite(t.momentum()) || t.momentum() < 0 || t.momentum() >= 1) return "training.momentum must be in [0, 1)";
  if (!std::isfinite(t.weight_decay()) || t.weight_decay() < 0) return "training.weight_decay must be finite and >= 0";
  if (!std::isfinite(t.prox_mu()) || t.prox_mu() < 0) return "training.prox_mu must be finite and >= 0";
  if (!std::isfinite(t.backbone_lr()) || t.backbone_lr() < 0) return "training.backbone_lr must be finite and >= 0";
  if (!std::isfinite(t.validation_fraction()) || t.validation_fraction() < 0 || t.validation_fraction() >= 1)
    return "training.validation_fraction must be in [0, 1)";
  if (job.rounds() < 1) return "rounds must be >= 1";
  if (job.model().num_classes() < 2) return "model.num_classes must be >= 2";
  if (job.model().head() == v1::HEAD_MLP && job.model().hidden() < 1) return "model.hidden must be >= 1";
  if (job.layout().entries_size() == 0) return "the job's parameter layout is empty";
  try {
    if (layout_numel(job.layout()) == 0) return "the job's parameter layout holds no values";
  } catch (const ProtocolError& e) {
    return e.what();
  }
  return "";
}

uint64_t layout_numel(const v1::ParamLayout& layout) {
  uint64_t total = 0;
  for (const auto& e : layout.entries()) {
    uint64_t n = 1;
    for (int64_t d : e.shape()) {
      if (d < 0 || (d > 0 && n > (uint64_t{1} << 40) / static_cast<uint64_t>(d)))
        throw ProtocolError("parameter '" + e.name() + "' has an impossible shape");
      n *= static_cast<uint64_t>(d);
    }
    total += n;
    if (total > (uint64_t{1} << 40)) throw ProtocolError("the job's parameter layout is impossibly large");
  }
  return total;
}

std::optional<dp::NoiseMode> noise_mode(const v1::PrivacySpec& privacy) {
  switch (privacy.mode()) {
    case v1::PRIVACY_OFF: return std::nullopt;
    case v1::PRIVACY_CENTRAL: return dp::NoiseMode::kCentral;
    case v1::PRIVACY_DISTRIBUTED: return dp::NoiseMode::kDistributed;
    case v1::PRIVACY_LOCAL: return dp::NoiseMode::kLocal;
    default: throw ProtocolError("privacy.mode " + std::to_string(privacy.mode()) + " is not one this build knows");
  }
}

v1::PrivacyMode to_wire(const std::optional<dp::NoiseMode>& mode) {
  if (!mode) return v1::PRIVACY_OFF;
  switch (*mode) {
    case dp::NoiseMode::kCentral: return v1::PRIVACY_CENTRAL;
    case dp::NoiseMode::kDistributed: return v1::PRIVACY_DISTRIBUTED;
    case dp::NoiseMode::kLocal: return v1::PRIVACY_LOCAL;
  }
  return v1::PRIVACY_OFF;
}

}  // namespace fedtl::protocols

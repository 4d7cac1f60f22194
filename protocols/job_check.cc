#include "protocols/job_check.h"

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
  return "";
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

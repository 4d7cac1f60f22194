// What a site checks in a JobSpec before it does anything with it, and the wire's privacy
// mode in the DP library's terms. The wire carries fixed vocabularies as enums
// (protocols/fedtl.proto); a value this build does not know (a newer coordinator, a corrupt
// or hostile one) is refused by name, never mapped to a default.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "protocols/dp/mechanism.h"
#include "protocols/fedtl.pb.h"

namespace fedtl::protocols {

// "" when every enum of `job` is one this build knows and its training settings describe work a
// site can do (epochs and batch size >= 1, finite positive learning rate, ...), else a one-line
// reason naming the field and the value ("training.optimizer 7 is not one this site knows").
std::string job_spec_problem(const v1::JobSpec& job);

// The number of float32 values the layout describes (the length of every RoundStart's params
// and every Update's delta). Throws ProtocolError for a negative dimension or an overflow.
uint64_t layout_numel(const v1::ParamLayout& layout);

// PRIVACY_OFF -> nullopt. Throws ProtocolError for a value job_spec_problem refuses.
std::optional<dp::NoiseMode> noise_mode(const v1::PrivacySpec& privacy);
v1::PrivacyMode to_wire(const std::optional<dp::NoiseMode>& mode);

}  // namespace fedtl::protocols

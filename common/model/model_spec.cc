// The names of the model layer's enums, as job files spell them (no LibTorch here).
#include <utility>

#include "common/model/transfer_model.h"

namespace fedtl::common::model {
namespace {

template <typename E, size_t N>
std::optional<E> lookup(const std::pair<const char*, E> (&table)[N], const std::string& name) {
  for (const auto& [n, v] : table)
    if (name == n) return v;
  return std::nullopt;
}

template <typename E, size_t N>
const char* name_of(const std::pair<const char*, E> (&table)[N], E value) {
  for (const auto& [n, v] : table)
    if (v == value) return n;
  return "?";
}

const std::pair<const char*, Freeze> kFreeze[] = {
    {"all", Freeze::kAll}, {"all_but_last", Freeze::kAllButLast}, {"none", Freeze::kNone}};
const std::pair<const char*, HeadType> kHead[] = {{"linear", HeadType::kLinear}, {"mlp", HeadType::kMlp}};
const std::pair<const char*, Optimizer> kOptimizer[] = {{"sgd", Optimizer::kSgd}, {"adam", Optimizer::kAdam}};

}  // namespace

const char* to_string(Freeze f) { return name_of(kFreeze, f); }
const char* to_string(HeadType h) { return name_of(kHead, h); }
const char* to_string(Optimizer o) { return name_of(kOptimizer, o); }
std::optional<Freeze> parse_freeze(const std::string& name) { return lookup(kFreeze, name); }
std::optional<HeadType> parse_head_type(const std::string& name) { return lookup(kHead, name); }
std::optional<Optimizer> parse_optimizer(const std::string& name) { return lookup(kOptimizer, name); }

}  // namespace fedtl::common::model

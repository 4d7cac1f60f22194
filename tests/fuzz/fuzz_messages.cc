// Message handlers: protocols::from_frame<M> for every framed message of protocols/fedtl.proto
// and protocols/secagg.proto (and secagg::decode<M>), protocols::round_of, protocols::unpack_tensor
// on every tensor a message carries, and the JobSpec checks a site runs on a received job
// (validate_secagg, secagg_round_config, secagg_quant_spec).
//
// Input: [1 byte: frame type selector][1 byte: which decoder to try][payload...]. The selector
// picks one of the known types (or an unknown value); the second byte picks the expected message,
// so type mismatches and Error frames carrying a peer's reason are reached as well.
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "protocols/messages.h"
#include "protocols/secagg/wire.h"
#include "protocols/secure_round.h"

using namespace fedtl;
using namespace fedtl::protocols;

namespace {

constexpr uint16_t kTypes[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25};
constexpr size_t kNumTypes = sizeof(kTypes) / sizeof(kTypes[0]);

void tensor(const v1::Tensor& t, uint64_t expected) {
  fuzz::expect_errors_only([&] { (void)unpack_tensor(t, 0); });
  fuzz::expect_errors_only([&] { (void)unpack_tensor(t, expected); });
}

void job_checks(const v1::JobSpec& job) {
  fuzz::expect_errors_only([&] { validate_secagg(job); });
  // Only after validation succeeds does a site derive round parameters from the job.
  fuzz::expect_errors_only([&] {
    validate_secagg(job);
    if (!job.secure_aggregation()) return;
    const auto cfg = secagg_round_config(job, 1 + job.rounds() % 4, 1 + job.seed() % 1000);
    secagg::validate(cfg);
    (void)secagg_quant_spec(job);
  });
}

template <typename M>
void decode(const Frame& f) {
  fuzz::expect_errors_only([&] {
    M m = from_frame<M>(f);
    // A parsed message must serialise again (the coordinator echoes parts of them).
    std::string again;
    if (!m.SerializeToString(&again)) std::abort();
    if constexpr (std::is_same_v<M, v1::RoundStart>) tensor(m.params(), m.params().count());
    if constexpr (std::is_same_v<M, v1::Update>) tensor(m.delta(), 7);
    if constexpr (std::is_same_v<M, v1::JobSpec>) job_checks(m);
    // A site's claims, checked before the coordinator uses them.
    if constexpr (std::is_same_v<M, v1::SiteEvaluation>) (void)site_metrics_from_wire(m.global(), 5);
    if constexpr (std::is_same_v<M, v1::Ready>) (void)input_stats_from_wire(m.input_stats(), 3);
  });
}

template <typename M>
void decode_secagg(const Frame& f) {
  decode<M>(f);
  fuzz::expect_errors_only([&] { (void)secagg::decode<M>(f); });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::quiet_logs();
  fuzz::Input in(data, size);
  const uint8_t sel = in.byte();
  const uint8_t want = in.byte();
  Frame f;
  // Frames only ever carry known types (decode_header refuses others), but check_frame_type
  // must cope with any value a future caller hands it.
  f.type = static_cast<MessageType>(sel < 4 * kNumTypes ? kTypes[sel % kNumTypes] : sel);
  f.payload = in.rest();

  (void)round_of(f);
  (void)message_type_name(f.type);
  (void)secagg::frame_name(static_cast<uint16_t>(f.type));

  // Usually decode as the frame's own type; sometimes as another (mismatch paths).
  const uint16_t as = (want & 0x80) ? kTypes[want % kNumTypes] : static_cast<uint16_t>(f.type);
  switch (as) {
    case 1: decode<v1::Hello>(f); break;
    case 2: decode<v1::JobSpec>(f); break;
    case 3: decode<v1::BackboneChunk>(f); break;
    case 4: decode<v1::Ready>(f); break;
    case 5: decode<v1::RoundStart>(f); break;
    case 6: decode<v1::Update>(f); break;
    case 7: decode<v1::Shutdown>(f); break;
    case 8: decode<v1::ErrorMessage>(f); break;
    case 9: decode<v1::Heartbeat>(f); break;
    case 10: decode<v1::SiteEvaluation>(f); break;
    case 16: decode_secagg<v1::SecAggKeys>(f); break;
    case 17: decode_secagg<v1::SecAggKeyList>(f); break;
    case 18: decode_secagg<v1::SecAggShares>(f); break;
    case 19: decode_secagg<v1::SecAggShareList>(f); break;
    case 20: decode_secagg<v1::SecAggMasked>(f); break;
    case 21: decode_secagg<v1::SecAggUnmaskRequest>(f); break;
    case 22: decode_secagg<v1::SecAggUnmaskShares>(f); break;
    case 23: decode_secagg<v1::SecAggAbort>(f); break;
    case 24: decode_secagg<v1::SecAggConsistency>(f); break;
    case 25: decode_secagg<v1::SecAggConsistencyList>(f); break;
    default: break;
  }
  // The nested tensor type on its own, as a strategy or a checkpoint might read it.
  v1::Tensor t;
  if (t.ParseFromString(f.payload)) tensor(t, t.count());
  return 0;
}

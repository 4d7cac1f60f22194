// Secure aggregation sessions fed decoded messages: one honest round of protocols/secagg with
// n = 3 sites (t = 2, m = 4) runs through ServerSession and three ClientSessions, and the input
// tampers with the messages in flight, as a hostile peer or network could. Every message crosses
// the wire as bytes (SerializeToString -> frame -> secagg::decode<M>), so the tampering hits the
// decoders and then the state machines (wrong rounds, sites and steps; replays; forged
// ciphertexts and shares; dropouts at every step).
//
// Input: records [1 byte: delivery point][1 byte: action][2 bytes LE: length][length bytes].
// Delivery points (site u = 0..2):  0+u keys->server    3+u key list->u   6+u shares->server
//   9+u share list->u   12+u masked->server   15+u unmask request->u   18+u unmask shares->server
// Actions (low 2 bits): 0 replace the payload, 1 XOR the bytes in at an offset (the first
// record byte), 2 drop (the site vanishes there), 3 deliver twice (replay).
// With no records the round must produce the plain sum of the inputs (checked).
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "protocols/secagg/session.h"
#include "protocols/secagg/wire.h"

using namespace fedtl;
using namespace fedtl::protocols;
using namespace fedtl::protocols::secagg;

namespace {

constexpr uint32_t kSites = 3;
constexpr int kPoints = 21;

struct Tamper {
  bool set = false;
  uint8_t action = 0;
  std::string bytes;
};

class Wire {
 public:
  explicit Wire(fuzz::Input& in) {
    while (in.remaining() >= 4) {
      const uint8_t point = in.byte() % kPoints;
      const uint8_t action = in.byte() & 3;
      const uint16_t len = in.u16();
      Tamper& t = at_[point];
      t.set = true;
      t.action = action;
      t.bytes = in.bytes(len);
    }
  }
  bool dropped(int point) const { return at_[point].set && at_[point].action == 2; }
  bool replayed(int point) const { return at_[point].set && at_[point].action == 3; }
  bool untouched() const {
    for (const auto& t : at_)
      if (t.set) return false;
    return true;
  }

  // The message as the receiver decodes it after the wire (and the tampering) carried it.
  template <typename M>
  M carry(int point, const M& msg) const {
    Frame f = encode(msg);
    const Tamper& t = at_[point];
    if (t.set && t.action == 0) f.payload = t.bytes;
    if (t.set && t.action == 1 && !t.bytes.empty() && !f.payload.empty()) {
      const size_t off = static_cast<uint8_t>(t.bytes[0]) % f.payload.size();
      for (size_t i = 1; i < t.bytes.size() && off + i - 1 < f.payload.size(); ++i)
        f.payload[off + i - 1] = static_cast<char>(f.payload[off + i - 1] ^ t.bytes[i]);
    }
    return decode<M>(f);
  }

 private:
  std::array<Tamper, kPoints> at_;
};

RoundConfig config() {
  RoundConfig c;
  c.round = 1;
  c.num_sites = kSites;
  c.threshold = 2;
  c.vector_length = 4;
  c.round_seed = derive_round_seed(42, 1);
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::quiet_logs();
  fuzz::Input in(data, size);
  const Wire wire(in);
  const RoundConfig cfg = config();
  std::vector<std::vector<uint32_t>> x(kSites, std::vector<uint32_t>(cfg.vector_length));
  for (uint32_t u = 0; u < kSites; ++u)
    for (size_t i = 0; i < x[u].size(); ++i) x[u][i] = 1000u * (u + 1) + static_cast<uint32_t>(i);

  std::vector<std::unique_ptr<ClientSession>> client;
  for (uint32_t u = 0; u < kSites; ++u) client.push_back(std::make_unique<ClientSession>(cfg, u));
  std::array<bool, kSites> alive{};
  alive.fill(true);
  ServerSession server(cfg);

  // Client u's step: a refusal (fedtl::Error) takes the site out of the round.
  auto client_step = [&](uint32_t u, int point, auto&& fn) {
    if (!alive[u]) return;
    if (wire.dropped(point)) {
      alive[u] = false;
      return;
    }
    try {
      fn();
    } catch (const fedtl::Error&) {
      alive[u] = false;
    }
  };
  // Delivery to the server: a refusal drops that message only.
  auto to_server = [&](int point, auto&& fn) {
    if (wire.dropped(point)) return;
    const int times = wire.replayed(point) ? 2 : 1;
    for (int i = 0; i < times; ++i) fuzz::expect_errors_only(fn);
  };

  std::optional<std::vector<uint32_t>> sum;
  fuzz::expect_errors_only([&] {
    for (uint32_t u = 0; u < kSites; ++u)
      client_step(u, 0 + u, [&] {
        const auto keys = client[u]->advertise_keys();
        to_server(0 + u, [&] { server.add_keys(wire.carry(0 + u, keys)); });
      });
    const auto key_list = server.close_keys();  // RoundAborted ends the round
    std::array<std::optional<v1::SecAggShares>, kSites> shares;
    for (uint32_t u = 0; u < kSites; ++u)
      client_step(u, 3 + u, [&] { shares[u] = client[u]->share_keys(wire.carry(3 + u, key_list)); });
    for (uint32_t u = 0; u < kSites; ++u)
      if (shares[u]) to_server(6 + u, [&] { server.add_shares(wire.carry(6 + u, *shares[u])); });
    server.close_shares();
    std::array<std::optional<v1::SecAggMasked>, kSites> masked;
    for (uint32_t u = 0; u < kSites; ++u)
      client_step(u, 9 + u, [&] {
        const auto list = server.shares_for(u);  // ProtocolError for a site not in U2
        masked[u] = client[u]->mask_input(wire.carry(9 + u, list), x[u]);
      });
    for (uint32_t u = 0; u < kSites; ++u)
      if (masked[u]) to_server(12 + u, [&] { server.add_masked(wire.carry(12 + u, *masked[u])); });
    const auto request = server.close_masked();
    std::array<std::optional<v1::SecAggUnmaskShares>, kSites> reveal;
    for (uint32_t u = 0; u < kSites; ++u)
      client_step(u, 15 + u, [&] { reveal[u] = client[u]->unmask(wire.carry(15 + u, request)); });
    for (uint32_t u = 0; u < kSites; ++u)
      if (reveal[u]) to_server(18 + u, [&] { server.add_unmask_shares(wire.carry(18 + u, *reveal[u])); });
    sum = server.finish();
  });

  if (wire.untouched()) {
    // An honest round: the sum must be exact.
    if (!sum) std::abort();
    for (size_t i = 0; i < cfg.vector_length; ++i) {
      uint32_t want = 0;
      for (uint32_t u = 0; u < kSites; ++u) want += x[u][i];
      if ((*sum)[i] != want) std::abort();
    }
  }
  return 0;
}

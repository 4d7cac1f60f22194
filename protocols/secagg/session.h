// Secure aggregation state machines (Bonawitz et al. 2017, with the SecAgg+ neighbour graph
// of Bell et al. 2020), independent of the transport: they consume and produce the protobuf
// messages of protocols/secagg.proto; the caller moves them over whatever transport it has
// (protocols/secagg/wire.h turns them into frames).
//
// One round, n sites with ids 0..n-1, threshold t, vectors of m uint32 (quantise first, see
// quantize.h). Call order (server = coordinator, client = one site):
//
//   client.advertise_keys()            -> SecAggKeys           -> server.add_keys()
//                                           server.close_keys() -> SecAggKeyList (to all in U1)
//   client.share_keys(list)            -> SecAggShares         -> server.add_shares()
//                                           server.close_shares(); server.shares_for(u)
//                                                               -> SecAggShareList (to each u in U2)
//   client.mask_input(list, x)         -> SecAggMasked         -> server.add_masked()
//                                           server.close_masked() -> SecAggUnmaskRequest (to U3)
//   client.unmask(request)             -> SecAggUnmaskShares   -> server.add_unmask_shares()
//                                           server.finish()     -> Σ_{u in U3} x_u  (mod 2^32)
//
// Signed rounds (RoundConfig.signed_keys; the active-security variant of Bonawitz et al.):
// each site signs its keys (SecAggKeys.signature, .certificate) and every party verifies each
// key against the federation CA and the site's listed name before using it; and between steps
// 3 and 4 a consistency step runs instead of the plain client.unmask(request):
//   client.consistency(request)        -> SecAggConsistency    -> server.add_consistency()
//                                           server.close_consistency() -> SecAggConsistencyList
//   client.unmask(list)                -> SecAggUnmaskShares   (after checking >= t signatures
//                                           of the same request; otherwise RoundAborted)
//
// U1 ⊇ U2 ⊇ U3 ⊇ U4 are the sites whose message of step 1..4 the server accepted before it
// closed that step; a site may drop between any two steps (the server simply closes the step
// without it). Each step's close throws RoundAborted when fewer than t sites remain, when a
// site's secret could no longer be recovered from its neighbourhood, or (sparse graph) when
// the survivors' subgraph is disconnected; nothing about a single update is revealed then.
//
// Refusals (each logged with spdlog::warn and thrown as fedtl::ProtocolError; the caller
// should drop the offending connection, or for a client, leave the round): a message from
// another round (a replay from an earlier round or one from a later round), a second message
// of the same step from a site, a message from a site that missed an earlier step, a share
// ciphertext addressed to another site, an unmask request that asks
// to reveal both b_v and s_v of the same site v or a second unmask request, revealed shares
// that were not asked for.
//
// Cheaters are identified, not just refused (active adversaries, docs/security.md): every
// share carries a SHA-256 commitment, so a revealed share that does not open it names its
// revealer; a share ciphertext that fails authentication or its commitment at the recipient
// is rejected there and blames its SENDER (the recipient stays); a sender blamed by two or
// more recipients, or an owner whose committed shares are inconsistent, is a cheater. See
// ServerSession::cheaters(). Keys that are malformed, low-order or copies of another site's
// are refused at step 1 for the site that sent them.
//
// Not thread-safe: one object per site per round (client) or per round (server).
// Secrets are wiped when the object is destroyed.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/errors.h"
#include "common/transport/signing.h"
#include "protocols/secagg.pb.h"
#include "protocols/secagg/crypto.h"
#include "protocols/secagg/graph.h"
#include "protocols/secagg/shamir.h"

namespace fedtl::protocols::secagg {

// The round was abandoned (too few sites left, or unmasking would reveal more than the sum).
// Not a ProtocolError: no single peer is at fault; the next round can go on.
class RoundAborted : public fedtl::Error {
  using fedtl::Error::Error;
};

// Public parameters of one round; every party must hold the same values.
struct RoundConfig {
  uint32_t round = 1;             // >= 1; bound into every key derivation and ciphertext
  uint32_t num_sites = 0;         // n >= 2
  uint32_t threshold = 0;         // t: 2 <= t <= n (survivors needed; see neighbourhood_threshold)
  uint64_t vector_length = 0;     // m >= 1 uint32 coordinates per input
  Bytes32 round_seed{};           // public randomness (derive_round_seed): graph, KDF salt
  uint32_t complete_graph_max = kDefaultCompleteGraphMax;
  uint32_t sparse_degree = 0;     // neighbours per site above complete_graph_max (0: 2·ceil(log2 n))
  // Signed rounds (active security): keys and the survivor set are signed with the sites'
  // certificate keys and checked by every party; adds the consistency step (see below).
  bool signed_keys = false;
  // Certificate CN expected for each site index (signed rounds); empty = any distinct names.
  std::vector<std::string> site_names;
};

// Throws ConfigError with the reason if the values are out of range.
void validate(const RoundConfig& cfg);

// The public per-round seed, derived from the job seed with HKDF-SHA256.
Bytes32 derive_round_seed(uint64_t job_seed, uint32_t round);

class ClientSession {
 public:
  // Throws ConfigError (validate) or when site >= n, or for a signed round without a signer
  // and a verifier. Both must outlive the session.
  ClientSession(const RoundConfig& cfg, uint32_t site, const common::IdentitySigner* signer = nullptr,
                const common::SiteVerifier* verifier = nullptr);
  ~ClientSession();
  ClientSession(const ClientSession&) = delete;
  ClientSession& operator=(const ClientSession&) = delete;

  // Step 1: two fresh X25519 key pairs (c_u for share encryption, s_u for pairwise masks).
  v1::SecAggKeys advertise_keys();
  // Step 2: checks the key list (this round, this site's own keys present, no duplicates,
  // at least t sites), draws the self-mask seed b_u, Shamir-splits s_u^SK and b_u over the
  // neighbourhood and encrypts one share pair per neighbour.
  v1::SecAggShares share_keys(const v1::SecAggKeyList& keys);
  // Step 3: decrypts the neighbours' shares and keeps those that authenticate and open the
  // sender's commitments; the others are rejected (rejected(), reported in the message: the
  // sender counts as a dropped holder for this site, which stays in the round). Returns y_u = x + PRG(b_u) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv)
  // mod 2^32 over the neighbours v whose shares arrived. x has m = vector_length values.
  v1::SecAggMasked mask_input(const v1::SecAggShareList& shares, const uint32_t* x, size_t m);
  v1::SecAggMasked mask_input(const v1::SecAggShareList& shares, const std::vector<uint32_t>& x) {
    return mask_input(shares, x.data(), x.size());
  }
  // Step 4: reveals shares of b_v for listed survivors and of s_v^SK for listed dropped
  // sites among the neighbours it holds shares of; never both for one v, only once.
  // Unsigned rounds only (a signed round refuses it: use consistency() then unmask(list)).
  v1::SecAggUnmaskShares unmask(const v1::SecAggUnmaskRequest& request);
  // Signed rounds: checks the request as unmask(request) does and signs it.
  v1::SecAggConsistency consistency(const v1::SecAggUnmaskRequest& request);
  // Signed rounds: reveals the shares once at least t survivors' signatures of the same
  // request verify. A signature that does not verify, or one of another request, means the
  // coordinator told sites different things: RoundAborted, nothing revealed.
  v1::SecAggUnmaskShares unmask(const v1::SecAggConsistencyList& signatures);

  uint32_t site() const { return site_; }
  const NeighbourGraph& graph() const { return graph_; }
  // Neighbours this site masked with (those whose shares arrived in step 3).
  const std::set<uint32_t>& partners() const { return partners_; }
  // Neighbours whose shares this site refused in step 3 (reported in SecAggMasked.rejected).
  const std::set<uint32_t>& rejected() const { return rejected_; }

 private:
  enum class Phase { kStart, kAdvertised, kShared, kMasked, kSigned, kDone };
  void check_round(uint32_t round, const char* what) const;
  void check_phase(Phase expected, const char* what) const;
  // The checks of an unmask request; keeps its survivor and dropped sets.
  void accept_request(const v1::SecAggUnmaskRequest& request);
  v1::SecAggUnmaskShares reveal();

  RoundConfig cfg_;
  uint32_t site_;
  const common::IdentitySigner* signer_;
  const common::SiteVerifier* verifier_;
  std::set<uint32_t> survivors_, dropped_;  // of the accepted unmask request
  NeighbourGraph graph_;
  uint32_t hood_threshold_;
  Phase phase_ = Phase::kStart;
  X25519KeyPair cipher_, mask_;
  Secret32 self_seed_;
  struct PeerKeys {
    Bytes32 cipher_pk{}, mask_pk{};
    std::string certificate;  // signed rounds
  };
  std::map<uint32_t, PeerKeys> keys_;  // U1
  struct Held {
    Share mask_key, self_seed;
    std::string mask_key_opening, self_seed_opening;  // openings of the owner's commitments
  };
  std::map<uint32_t, Held> held_;      // shares this site holds, by owner (itself included)
  std::set<uint32_t> partners_;
  std::set<uint32_t> rejected_;        // senders whose shares failed authentication/commitment
};

class ServerSession {
 public:
  // `verifier` (signed rounds; may be null): the server also checks every signature, so a
  // site that signs badly is refused at its step instead of making the honest sites abort.
  explicit ServerSession(const RoundConfig& cfg, const common::SiteVerifier* verifier = nullptr);
  ~ServerSession();
  ServerSession(const ServerSession&) = delete;
  ServerSession& operator=(const ServerSession&) = delete;

  void add_keys(const v1::SecAggKeys& msg);
  v1::SecAggKeyList close_keys();
  void add_shares(const v1::SecAggShares& msg);
  void close_shares();
  // The ciphertexts addressed to `site` (in U2). Throws ProtocolError for a site not in U2.
  v1::SecAggShareList shares_for(uint32_t site) const;
  // Adds y_u into the running sum as it arrives (the sum is accumulated on receipt, so
  // finish() only removes masks).
  void add_masked(const v1::SecAggMasked& msg);
  v1::SecAggUnmaskRequest close_masked();
  // Signed rounds: a survivor's signature of the unmask request; then the list of them
  // (RoundAborted below t).
  void add_consistency(const v1::SecAggConsistency& msg);
  v1::SecAggConsistencyList close_consistency();
  void add_unmask_shares(const v1::SecAggUnmaskShares& msg);
  // Reconstructs b_v (v in U3) and s_v^SK (v in U2 \ U3), removes the masks and returns
  // Σ_{u in U3} x_u mod 2^32. Throws RoundAborted if fewer than t sites answered step 4 or a
  // secret lacks shares; no output then.
  std::vector<uint32_t> finish();

  const NeighbourGraph& graph() const { return graph_; }
  uint32_t neighbourhood_threshold() const { return hood_threshold_; }
  // U1..U3 as accepted so far (sorted).
  std::vector<uint32_t> advertised() const;
  std::vector<uint32_t> shared() const;
  std::vector<uint32_t> survivors() const;  // whose inputs are in the sum (U3)
  // Sites proven to cheat this round, for the caller to drop from the federation: a revealer
  // whose share does not open its owner's commitment, a sender whose ciphertexts several
  // recipients rejected, an owner whose committed shares are inconsistent.
  const std::set<uint32_t>& cheaters() const { return cheaters_; }
  // Senders rejected in step 3, with the recipients that rejected them.
  const std::map<uint32_t, std::set<uint32_t>>& blamed() const { return blamed_; }

 private:
  enum class Phase { kKeys, kShares, kMasked, kConsistency, kUnmask, kDone };
  void check_round(uint32_t round, const char* what) const;
  void check_phase(Phase expected, const char* what) const;
  [[noreturn]] void abort_round(const std::string& why);

  RoundConfig cfg_;
  const common::SiteVerifier* verifier_;
  v1::SecAggUnmaskRequest request_;                           // as sent (signed rounds)
  v1::SecAggConsistencyList signatures_;
  std::set<uint32_t> signed_;                                 // signers of request_
  NeighbourGraph graph_;
  uint32_t hood_threshold_;
  Phase phase_ = Phase::kKeys;
  std::map<uint32_t, v1::SecAggKeys> keys_;                   // U1
  std::map<uint32_t, v1::SecAggShares> shares_;               // U2
  std::map<uint32_t, v1::SecAggShareList> inbox_;             // per recipient
  std::set<uint32_t> masked_;                                 // U3
  std::set<uint32_t> dropped_;                                // U2 \ U3
  std::vector<uint32_t> sum_;
  std::set<uint32_t> answered_;                               // U4
  std::map<uint32_t, std::vector<Share>> self_seed_shares_, mask_key_shares_;
  // (owner, holder) -> commitments to the holder's shares of (mask key, self-mask seed).
  std::map<std::pair<uint32_t, uint32_t>, std::pair<std::string, std::string>> commitments_;
  std::set<std::pair<uint32_t, uint32_t>> rejected_;          // (sender, recipient) refused
  std::map<uint32_t, std::set<uint32_t>> blamed_;             // sender -> recipients refusing it
  std::set<uint32_t> cheaters_;
};

}  // namespace fedtl::protocols::secagg

#include "protocols/secagg/session.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

namespace fedtl::protocols::secagg {
namespace {

constexpr const char* kDomain = "fedtl-secagg-v1";
constexpr uint8_t kKindShares = 1;  // AAD message kind of a share ciphertext
constexpr size_t kShareElems = share_elements(kKeyBytes);
constexpr size_t kShareBytes = kShareElems * 8;
constexpr size_t kOpeningBytes = 32;
// Share plaintext: mask-key share, self-seed share, one opening for each.
constexpr size_t kSharePlaintextBytes = 2 * kShareBytes + 2 * kOpeningBytes;
// A sender whose ciphertexts this many distinct recipients reject is taken for a cheater.
constexpr size_t kBlameLimit = 2;

[[noreturn]] void refuse(const std::string& why) {
  spdlog::warn("secure aggregation refused: {}", why);
  throw ProtocolError("secure aggregation refused: " + why);
}

void put_u32(std::string& s, uint32_t v) {
  for (int b = 0; b < 4; ++b) s.push_back(static_cast<char>((v >> (8 * b)) & 0xFF));
}

std::string salt_of(const RoundConfig& c) { return std::string(reinterpret_cast<const char*>(c.round_seed.data()), 32); }

// Associated data of a share ciphertext: domain, round seed, round, kind, sender, receiver.
std::string share_aad(const RoundConfig& c, uint32_t from, uint32_t to) {
  std::string a = kDomain;
  a += salt_of(c);
  put_u32(a, c.round);
  a.push_back(static_cast<char>(kKindShares));
  put_u32(a, from);
  put_u32(a, to);
  return a;
}

std::string pair_info(const char* label, uint32_t round, uint32_t u, uint32_t v) {
  std::string info = std::string(kDomain) + " " + label;
  put_u32(info, round);
  put_u32(info, std::min(u, v));
  put_u32(info, std::max(u, v));
  return info;
}

Secret32 share_key(const RoundConfig& c, const X25519Private& sk, const Bytes32& peer_pk, uint32_t u, uint32_t v) {
  return hkdf_sha256_32(sk.agree(peer_pk), salt_of(c), pair_info("share key", c.round, u, v));
}

Secret32 pair_seed(const RoundConfig& c, const X25519Private& sk, const Bytes32& peer_pk, uint32_t u, uint32_t v) {
  return hkdf_sha256_32(sk.agree(peer_pk), salt_of(c), pair_info("pair mask", c.round, u, v));
}

Bytes32 key_bytes(const std::string& s, uint32_t site, const char* which) {
  if (s.size() != kKeyBytes) {
    refuse("site " + std::to_string(site) + " sent a " + which + " of " + std::to_string(s.size()) + " bytes, expected 32");
  }
  Bytes32 b{};
  std::memcpy(b.data(), s.data(), kKeyBytes);
  return b;
}

std::string bytes_str(const Bytes32& b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

// Commitment to one share: SHA-256 over domain, round seed, round, owner, holder, kind, the
// encoded share and its 32-byte random opening (hiding: the opening never leaves the
// ciphertext until the share itself is revealed; binding: SHA-256 collision resistance).
std::string commitment(const RoundConfig& c, uint32_t owner, uint32_t holder, v1::SecAggShareKind kind,
                       const std::string& share, const std::string& opening) {
  std::string in = std::string(kDomain) + " share commitment";
  in += salt_of(c);
  put_u32(in, c.round);
  put_u32(in, owner);
  put_u32(in, holder);
  in.push_back(static_cast<char>(kind));
  in += share;
  in += opening;
  return bytes_str(sha256_raw(in));
}

std::string random_opening() {
  std::string o(kOpeningBytes, '\0');
  random_bytes(o.data(), o.size());
  return o;
}

std::string site_list(const std::set<uint32_t>& s) {
  std::string out;
  for (uint32_t v : s) out += (out.empty() ? "" : ", ") + std::to_string(v);
  return out;
}

void check_round_common(const RoundConfig& cfg, uint32_t round, const char* what) {
  if (round == cfg.round) return;
  if (round < cfg.round) {
    refuse(std::string(what) + " replayed from earlier round " + std::to_string(round) + " (this is round " +
           std::to_string(cfg.round) + ")");
  }
  refuse(std::string(what) + " is for round " + std::to_string(round) + ", this is round " + std::to_string(cfg.round));
}

// What a site signs in a signed round: its keys, bound to the round and its index.
std::string keys_message(const RoundConfig& c, uint32_t site, const std::string& cipher_pk, const std::string& mask_pk) {
  std::string m = std::string(kDomain) + " keys";
  m += salt_of(c);
  put_u32(m, c.round);
  put_u32(m, site);
  m += cipher_pk;
  m += mask_pk;
  return m;
}

// ... and the survivor set it was told (sorted, so every honest party builds the same bytes).
std::string survivors_message(const RoundConfig& c, const std::set<uint32_t>& survivors,
                              const std::set<uint32_t>& dropped) {
  std::string m = std::string(kDomain) + " survivors";
  m += salt_of(c);
  put_u32(m, c.round);
  put_u32(m, static_cast<uint32_t>(survivors.size()));
  for (uint32_t v : survivors) put_u32(m, v);
  put_u32(m, static_cast<uint32_t>(dropped.size()));
  for (uint32_t v : dropped) put_u32(m, v);
  return m;
}

std::string expected_name(const RoundConfig& c, uint32_t site) {
  return site < c.site_names.size() ? c.site_names[site] : std::string();
}

}  // namespace

void validate(const RoundConfig& c) {
  if (c.round == 0) throw ConfigError("secure aggregation: rounds are numbered from 1");
  if (c.num_sites < 2) throw ConfigError("secure aggregation needs at least 2 sites, got " + std::to_string(c.num_sites));
  if (c.threshold < 2 || c.threshold > c.num_sites) {
    throw ConfigError("secure aggregation threshold t = " + std::to_string(c.threshold) + " must be between 2 and n = " +
                      std::to_string(c.num_sites));
  }
  if (c.vector_length == 0) throw ConfigError("secure aggregation: empty input vector");
}

Bytes32 derive_round_seed(uint64_t job_seed, uint32_t round) {
  std::string info = std::string(kDomain) + " round seed";
  for (int b = 0; b < 8; ++b) info.push_back(static_cast<char>((job_seed >> (8 * b)) & 0xFF));
  put_u32(info, round);
  Secret32 zero;
  return hkdf_sha256_32(zero, kDomain, info).bytes();
}

// ------------------------------------------------------------------------------------------
// ClientSession

ClientSession::ClientSession(const RoundConfig& cfg, uint32_t site, const common::IdentitySigner* signer,
                             const common::SiteVerifier* verifier)
    : cfg_((validate(cfg), cfg)),
      site_(site),
      signer_(signer),
      verifier_(verifier),
      graph_(cfg.num_sites, cfg.round_seed, cfg.complete_graph_max, cfg.sparse_degree),
      hood_threshold_(neighbourhood_threshold(cfg.threshold, cfg.num_sites, graph_)) {
  if (site >= cfg.num_sites) {
    throw ConfigError("secure aggregation: site id " + std::to_string(site) + " is not below n = " +
                      std::to_string(cfg.num_sites));
  }
  if (cfg.signed_keys && (!signer_ || !verifier_))
    throw ConfigError("secure aggregation: a signed round needs this site's certificate key and the federation CA");
}

ClientSession::~ClientSession() = default;

void ClientSession::check_round(uint32_t round, const char* what) const { check_round_common(cfg_, round, what); }

void ClientSession::check_phase(Phase expected, const char* what) const {
  if (phase_ != expected) refuse(std::string(what) + " arrived out of order (step already done or not yet reached)");
}

v1::SecAggKeys ClientSession::advertise_keys() {
  check_phase(Phase::kStart, "advertise_keys");
  cipher_ = X25519KeyPair::generate();
  mask_ = X25519KeyPair::generate();
  v1::SecAggKeys m;
  m.set_round(cfg_.round);
  m.set_site(site_);
  m.set_cipher_pk(bytes_str(cipher_.public_key));
  m.set_mask_pk(bytes_str(mask_.public_key));
  if (cfg_.signed_keys) {
    m.set_certificate(signer_->certificate_pem());
    m.set_signature(signer_->sign(keys_message(cfg_, site_, m.cipher_pk(), m.mask_pk())));
  }
  phase_ = Phase::kAdvertised;
  return m;
}

v1::SecAggShares ClientSession::share_keys(const v1::SecAggKeyList& list) {
  check_round(list.round(), "SecAggKeyList");
  check_phase(Phase::kAdvertised, "SecAggKeyList");
  std::set<std::string> distinct;
  std::map<std::string, uint32_t> signers;  // certificate CN -> site (signed rounds)
  for (const auto& k : list.keys()) {
    if (k.site() >= cfg_.num_sites) refuse("key list names unknown site " + std::to_string(k.site()));
    if (k.round() != cfg_.round) check_round(k.round(), "SecAggKeys in the key list");
    PeerKeys pk{key_bytes(k.cipher_pk(), k.site(), "cipher key"), key_bytes(k.mask_pk(), k.site(), "mask key"), {}};
    if (!x25519_key_usable(pk.cipher_pk) || !x25519_key_usable(pk.mask_pk))
      refuse("key list carries a malformed or low-order X25519 key for site " + std::to_string(k.site()));
    if (cfg_.signed_keys && k.site() != site_) {
      // A key the coordinator could have substituted is never used: it must carry the listed
      // site's signature under a site certificate of this federation.
      std::string cn;
      try {
        cn = verifier_->verify(k.certificate(), expected_name(cfg_, k.site()),
                               keys_message(cfg_, k.site(), k.cipher_pk(), k.mask_pk()), k.signature());
      } catch (const ProtocolError& e) {
        refuse("the keys of site " + std::to_string(k.site()) + " are not signed by it: " + e.what());
      }
      if (cn == signer_->name() || !signers.emplace(cn, k.site()).second)
        refuse("two sites' keys are signed with the certificate of '" + cn + "'");
      pk.certificate = k.certificate();
    }
    if (!keys_.emplace(k.site(), pk).second) refuse("key list names site " + std::to_string(k.site()) + " twice");
    if (!distinct.insert(k.cipher_pk()).second || !distinct.insert(k.mask_pk()).second) {
      refuse("key list repeats a public key (site " + std::to_string(k.site()) + ")");
    }
  }
  auto self = keys_.find(site_);
  if (self == keys_.end() || self->second.cipher_pk != cipher_.public_key || self->second.mask_pk != mask_.public_key) {
    refuse("key list does not carry this site's own keys");
  }
  if (keys_.size() < cfg_.threshold) {
    phase_ = Phase::kDone;
    throw RoundAborted("secure aggregation round " + std::to_string(cfg_.round) + " abandoned: only " +
                       std::to_string(keys_.size()) + " sites advertised keys, t = " + std::to_string(cfg_.threshold));
  }
  // Holders of this site's secrets: itself and its neighbours that advertised keys.
  std::vector<uint32_t> holders{site_};
  for (uint32_t v : graph_.neighbours(site_))
    if (keys_.count(v)) holders.push_back(v);
  if (holders.size() < hood_threshold_) {
    phase_ = Phase::kDone;
    throw RoundAborted("secure aggregation round " + std::to_string(cfg_.round) + " abandoned: site " +
                       std::to_string(site_) + " has " + std::to_string(holders.size()) +
                       " sites in its neighbourhood, needs " + std::to_string(hood_threshold_));
  }
  std::vector<uint32_t> xs;
  for (uint32_t h : holders) xs.push_back(h + 1);
  const X25519Private cipher_sk(cipher_.private_key);
  self_seed_ = Secret32::random();
  const auto sk_shares = shamir_split(mask_.private_key.data(), kKeyBytes, hood_threshold_, xs);
  const auto b_shares = shamir_split(self_seed_.data(), kKeyBytes, hood_threshold_, xs);

  v1::SecAggShares out;
  out.set_round(cfg_.round);
  out.set_site(site_);
  for (size_t i = 0; i < holders.size(); ++i) {
    const uint32_t v = holders[i];
    Held h{sk_shares[i], b_shares[i], random_opening(), random_opening()};
    const std::string mk = encode_share(h.mask_key), sb = encode_share(h.self_seed);
    const std::string mk_c = commitment(cfg_, site_, v, v1::SECAGG_SHARE_MASK_KEY, mk, h.mask_key_opening);
    const std::string sb_c = commitment(cfg_, site_, v, v1::SECAGG_SHARE_SELF_MASK_SEED, sb, h.self_seed_opening);
    if (v == site_) {
      out.set_own_mask_key_commitment(mk_c);
      out.set_own_self_seed_commitment(sb_c);
      held_[site_] = std::move(h);
      continue;
    }
    std::string pt = mk + sb + h.mask_key_opening + h.self_seed_opening;
    const Secret32 key = share_key(cfg_, cipher_sk, keys_[v].cipher_pk, site_, v);
    Sealed s = aead_seal(key, share_aad(cfg_, site_, v), pt);
    std::fill(pt.begin(), pt.end(), '\0');
    auto* e = out.add_shares();
    e->set_from(site_);
    e->set_to(v);
    e->set_nonce(std::move(s.nonce));
    e->set_ciphertext(std::move(s.ciphertext));
    e->set_mask_key_commitment(mk_c);
    e->set_self_seed_commitment(sb_c);
  }
  phase_ = Phase::kShared;
  return out;
}

v1::SecAggMasked ClientSession::mask_input(const v1::SecAggShareList& list, const uint32_t* x, size_t m) {
  check_round(list.round(), "SecAggShareList");
  check_phase(Phase::kShared, "SecAggShareList");
  if (m != cfg_.vector_length) {
    throw ConfigError("secure aggregation: input has " + std::to_string(m) + " values, the round expects " +
                      std::to_string(cfg_.vector_length));
  }
  const X25519Private cipher_sk(cipher_.private_key);
  for (const auto& e : list.shares()) {
    const uint32_t from = e.from();
    if (e.to() != site_) refuse("share from site " + std::to_string(from) + " is addressed to site " + std::to_string(e.to()));
    if (from == site_ || !graph_.adjacent(site_, from) || !keys_.count(from)) {
      refuse("share from site " + std::to_string(from) + ", which is not a neighbour that advertised keys");
    }
    if (!partners_.insert(from).second) refuse("two shares from site " + std::to_string(from));
    // From here on `from` completed step 2, so this site masks with it whatever its share
    // holds (the pairwise mask needs only the public keys). A share that cannot be used makes
    // `from` a dropped holder for this site, never this site a dropout: it is reported in
    // SecAggMasked.rejected and the coordinator blames the sender.
    auto reject = [&](const std::string& why) {
      spdlog::warn("secure aggregation: site {} rejects the shares of site {} in round {}: {}", site_, from, cfg_.round,
                   why);
      rejected_.insert(from);
    };
    const Secret32 key = share_key(cfg_, cipher_sk, keys_[from].cipher_pk, site_, from);
    auto pt = aead_open(key, share_aad(cfg_, from, site_), e.nonce(), e.ciphertext());
    if (!pt) {
      reject("the ciphertext failed authentication (AES-GCM tag): tampered, replayed or misaddressed");
      continue;
    }
    if (pt->size() != kSharePlaintextBytes) {
      std::fill(pt->begin(), pt->end(), '\0');
      reject("the share has the wrong size");
      continue;
    }
    const std::string mk = pt->substr(0, kShareBytes), sb = pt->substr(kShareBytes, kShareBytes);
    Held h;
    h.mask_key_opening = pt->substr(2 * kShareBytes, kOpeningBytes);
    h.self_seed_opening = pt->substr(2 * kShareBytes + kOpeningBytes, kOpeningBytes);
    std::fill(pt->begin(), pt->end(), '\0');
    if (commitment(cfg_, from, site_, v1::SECAGG_SHARE_MASK_KEY, mk, h.mask_key_opening) != e.mask_key_commitment() ||
        commitment(cfg_, from, site_, v1::SECAGG_SHARE_SELF_MASK_SEED, sb, h.self_seed_opening) !=
            e.self_seed_commitment()) {
      reject("the share does not match the sender's commitment");
      continue;
    }
    try {
      h.mask_key = decode_share(mk, site_ + 1, kShareElems);
      h.self_seed = decode_share(sb, site_ + 1, kShareElems);
    } catch (const ProtocolError& err) {
      reject(err.what());
      continue;
    }
    held_[from] = std::move(h);
  }
  // Holders of this site's secrets who completed step 2 (and so got its shares): partners + self.
  if (partners_.size() + 1 < hood_threshold_) {
    phase_ = Phase::kDone;
    throw RoundAborted("secure aggregation round " + std::to_string(cfg_.round) + " abandoned: only " +
                       std::to_string(partners_.size()) + " neighbours of site " + std::to_string(site_) +
                       " completed the share step; " + std::to_string(hood_threshold_) + " shares are needed");
  }
  std::vector<SignedSeed> seeds;
  seeds.reserve(partners_.size() + 1);
  seeds.push_back({self_seed_, +1});
  const X25519Private mask_sk(mask_.private_key);
  for (uint32_t v : partners_) {
    seeds.push_back({pair_seed(cfg_, mask_sk, keys_[v].mask_pk, site_, v), v > site_ ? +1 : -1});
  }
  v1::SecAggMasked out;
  out.set_round(cfg_.round);
  out.set_site(site_);
  out.set_count(m);
  for (uint32_t r : rejected_) out.add_rejected(r);
  std::string* bytes = out.mutable_u32_le();
  bytes->resize(m * 4);
  std::memcpy(bytes->data(), x, m * 4);
  apply_masks(reinterpret_cast<uint32_t*>(bytes->data()), m, seeds);
  phase_ = Phase::kMasked;
  return out;
}

void ClientSession::accept_request(const v1::SecAggUnmaskRequest& req) {
  check_round(req.round(), "SecAggUnmaskRequest");
  if (phase_ == Phase::kDone || phase_ == Phase::kSigned)
    refuse("a second unmask request in round " + std::to_string(cfg_.round));
  check_phase(Phase::kMasked, "SecAggUnmaskRequest");
  phase_ = Phase::kDone;  // whatever happens, this site answers at most one request per round
  std::set<uint32_t> survivors, dropped;
  for (uint32_t v : req.survivors()) {
    if (!keys_.count(v)) refuse("unmask request lists site " + std::to_string(v) + ", which never advertised keys");
    if (!survivors.insert(v).second) refuse("unmask request lists survivor " + std::to_string(v) + " twice");
  }
  for (uint32_t v : req.dropped()) {
    if (survivors.count(v)) {
      refuse("unmask request asks to reveal both the self-mask seed and the mask key of site " + std::to_string(v));
    }
    if (!keys_.count(v)) refuse("unmask request lists site " + std::to_string(v) + ", which never advertised keys");
    if (!dropped.insert(v).second) refuse("unmask request lists dropped site " + std::to_string(v) + " twice");
  }
  for (uint32_t v : partners_) {
    if (!survivors.count(v) && !dropped.count(v)) {
      refuse("unmask request omits site " + std::to_string(v) + ", which this site masked with");
    }
  }
  if (survivors.size() < cfg_.threshold) {
    throw RoundAborted("secure aggregation round " + std::to_string(cfg_.round) + " abandoned: " +
                       std::to_string(survivors.size()) + " survivors, t = " + std::to_string(cfg_.threshold));
  }
  const std::vector<uint32_t> surv(survivors.begin(), survivors.end());
  if (!graph_.induced_connected(surv)) {
    throw RoundAborted("secure aggregation round " + std::to_string(cfg_.round) +
                       " abandoned: the survivors' neighbour graph is disconnected (unmasking would reveal partial sums)");
  }
  survivors_ = std::move(survivors);
  dropped_ = std::move(dropped);
}

v1::SecAggUnmaskShares ClientSession::unmask(const v1::SecAggUnmaskRequest& req) {
  if (cfg_.signed_keys) refuse("a signed round reveals shares only after the consistency step");
  accept_request(req);
  return reveal();
}

v1::SecAggConsistency ClientSession::consistency(const v1::SecAggUnmaskRequest& req) {
  if (!cfg_.signed_keys) refuse("the consistency step belongs to signed rounds only");
  accept_request(req);
  phase_ = Phase::kSigned;
  v1::SecAggConsistency out;
  out.set_round(cfg_.round);
  out.set_site(site_);
  out.set_signature(signer_->sign(survivors_message(cfg_, survivors_, dropped_)));
  return out;
}

v1::SecAggUnmaskShares ClientSession::unmask(const v1::SecAggConsistencyList& list) {
  check_round(list.round(), "SecAggConsistencyList");
  check_phase(Phase::kSigned, "SecAggConsistencyList");
  phase_ = Phase::kDone;
  const std::string mine = survivors_message(cfg_, survivors_, dropped_);
  std::set<uint32_t> signers;
  auto disagree = [&](const std::string& why) {
    held_.clear();
    const std::string msg = "secure aggregation round " + std::to_string(cfg_.round) +
                            " abandoned before revealing any share: " + why +
                            " (the coordinator told sites different survivor sets, or relayed a forged signature)";
    spdlog::warn("{}", msg);
    throw RoundAborted(msg);
  };
  for (const auto& sig : list.signatures()) {
    const uint32_t v = sig.site();
    if (!survivors_.count(v)) disagree("a signature from site " + std::to_string(v) + ", which is not a survivor");
    if (!signers.insert(v).second) disagree("two signatures from site " + std::to_string(v));
    if (v == site_) continue;  // its own: it knows what it signed
    try {
      verifier_->verify(keys_.at(v).certificate, expected_name(cfg_, v), mine, sig.signature());
    } catch (const ProtocolError& e) {
      disagree("site " + std::to_string(v) + " signed another survivor set (" + e.what() + ")");
    }
  }
  if (!signers.count(site_)) disagree("this site's own signature is missing");
  if (signers.size() < cfg_.threshold)
    disagree(std::to_string(signers.size()) + " survivors signed the survivor set, t = " + std::to_string(cfg_.threshold));
  return reveal();
}

v1::SecAggUnmaskShares ClientSession::reveal() {
  v1::SecAggUnmaskShares out;
  out.set_round(cfg_.round);
  out.set_site(site_);
  for (const auto& [owner, h] : held_) {
    if (survivors_.count(owner)) {
      auto* r = out.add_shares();
      r->set_owner(owner);
      r->set_kind(v1::SECAGG_SHARE_SELF_MASK_SEED);
      r->set_share(encode_share(h.self_seed));
      r->set_opening(h.self_seed_opening);
    } else if (dropped_.count(owner) && owner != site_) {
      auto* r = out.add_shares();
      r->set_owner(owner);
      r->set_kind(v1::SECAGG_SHARE_MASK_KEY);
      r->set_share(encode_share(h.mask_key));
      r->set_opening(h.mask_key_opening);
    }
  }
  held_.clear();
  return out;
}

// ------------------------------------------------------------------------------------------
// ServerSession

ServerSession::ServerSession(const RoundConfig& cfg, const common::SiteVerifier* verifier)
    : cfg_((validate(cfg), cfg)),
      verifier_(verifier),
      graph_(cfg.num_sites, cfg.round_seed, cfg.complete_graph_max, cfg.sparse_degree),
      hood_threshold_(secagg::neighbourhood_threshold(cfg.threshold, cfg.num_sites, graph_)) {}

ServerSession::~ServerSession() = default;

void ServerSession::check_round(uint32_t round, const char* what) const { check_round_common(cfg_, round, what); }

void ServerSession::check_phase(Phase expected, const char* what) const {
  if (phase_ != expected) refuse(std::string(what) + " arrived after its step closed (or before it opened)");
}

void ServerSession::abort_round(const std::string& why) {
  phase_ = Phase::kDone;
  sum_.clear();
  sum_.shrink_to_fit();
  const std::string msg = "secure aggregation round " + std::to_string(cfg_.round) + " abandoned: " + why;
  spdlog::warn("{}", msg);
  throw RoundAborted(msg);
}

void ServerSession::add_keys(const v1::SecAggKeys& m) {
  check_round(m.round(), "SecAggKeys");
  check_phase(Phase::kKeys, "SecAggKeys");
  if (m.site() >= cfg_.num_sites) refuse("SecAggKeys from unknown site " + std::to_string(m.site()));
  if (keys_.count(m.site())) refuse("a second SecAggKeys from site " + std::to_string(m.site()));
  const Bytes32 c = key_bytes(m.cipher_pk(), m.site(), "cipher key");
  const Bytes32 k = key_bytes(m.mask_pk(), m.site(), "mask key");
  // Malformed keys get THAT site refused here (the coordinator drops it); the honest sites
  // never see them. A copy of another site's key is refused for the later sender: keys are
  // fresh each round and relayed only after this step closes, so an honest site cannot be the
  // copier.
  if (!x25519_key_usable(c) || !x25519_key_usable(k))
    refuse("site " + std::to_string(m.site()) + " advertised a malformed or low-order X25519 key");
  if (c == k) refuse("site " + std::to_string(m.site()) + " advertised the same key for both purposes");
  for (const auto& [other, o] : keys_) {
    if (o.cipher_pk() == m.cipher_pk() || o.cipher_pk() == m.mask_pk() || o.mask_pk() == m.cipher_pk() ||
        o.mask_pk() == m.mask_pk())
      refuse("site " + std::to_string(m.site()) + " advertised a key of site " + std::to_string(other));
  }
  if (cfg_.signed_keys) {
    if (m.signature().empty() || m.certificate().empty())
      refuse("site " + std::to_string(m.site()) + " sent unsigned keys in a signed round");
    if (verifier_) {
      std::string cn;
      try {
        cn = verifier_->verify(m.certificate(), expected_name(cfg_, m.site()),
                               keys_message(cfg_, m.site(), m.cipher_pk(), m.mask_pk()), m.signature());
      } catch (const ProtocolError& e) {
        refuse("the keys of site " + std::to_string(m.site()) + " are not signed by it: " + e.what());
      }
      for (const auto& [other, o] : keys_)
        if (o.certificate() == m.certificate())
          refuse("site " + std::to_string(m.site()) + " signed with the certificate of site " + std::to_string(other));
    }
  }
  keys_[m.site()] = m;
}

v1::SecAggKeyList ServerSession::close_keys() {
  check_phase(Phase::kKeys, "close_keys");
  if (keys_.size() < cfg_.threshold) {
    abort_round(std::to_string(keys_.size()) + " sites advertised keys, t = " + std::to_string(cfg_.threshold));
  }
  v1::SecAggKeyList out;
  out.set_round(cfg_.round);
  for (const auto& [site, k] : keys_) *out.add_keys() = k;
  phase_ = Phase::kShares;
  return out;
}

void ServerSession::add_shares(const v1::SecAggShares& m) {
  check_round(m.round(), "SecAggShares");
  check_phase(Phase::kShares, "SecAggShares");
  const uint32_t u = m.site();
  if (!keys_.count(u)) refuse("SecAggShares from site " + std::to_string(u) + ", which did not advertise keys");
  if (shares_.count(u)) refuse("a second SecAggShares from site " + std::to_string(u));
  std::set<uint32_t> to;
  for (const auto& e : m.shares()) {
    if (e.from() != u) refuse("site " + std::to_string(u) + " sent a share claiming to be from " + std::to_string(e.from()));
    if (!keys_.count(e.to()) || !graph_.adjacent(u, e.to())) {
      refuse("site " + std::to_string(u) + " sent a share to site " + std::to_string(e.to()) +
             ", not a neighbour that advertised keys");
    }
    if (!to.insert(e.to()).second) refuse("site " + std::to_string(u) + " sent two shares to " + std::to_string(e.to()));
    if (e.nonce().size() != kNonceBytes || e.ciphertext().size() != kSharePlaintextBytes + kTagBytes ||
        e.mask_key_commitment().size() != kKeyBytes || e.self_seed_commitment().size() != kKeyBytes) {
      refuse("site " + std::to_string(u) + " sent a malformed share ciphertext");
    }
  }
  if (m.own_mask_key_commitment().size() != kKeyBytes || m.own_self_seed_commitment().size() != kKeyBytes)
    refuse("site " + std::to_string(u) + " sent no commitments to its own shares");
  // Every neighbour in U1 must get a share, or that neighbour could not help unmask u.
  for (uint32_t v : graph_.neighbours(u)) {
    if (keys_.count(v) && !to.count(v)) refuse("site " + std::to_string(u) + " sent no share to neighbour " + std::to_string(v));
  }
  for (const auto& e : m.shares()) commitments_[{u, e.to()}] = {e.mask_key_commitment(), e.self_seed_commitment()};
  commitments_[{u, u}] = {m.own_mask_key_commitment(), m.own_self_seed_commitment()};
  shares_[u] = m;
}

void ServerSession::close_shares() {
  check_phase(Phase::kShares, "close_shares");
  if (shares_.size() < cfg_.threshold) {
    abort_round(std::to_string(shares_.size()) + " sites completed the share step, t = " + std::to_string(cfg_.threshold));
  }
  for (const auto& [u, msg] : shares_) {
    inbox_[u].set_round(cfg_.round);
    for (const auto& e : msg.shares()) {
      if (shares_.count(e.to())) *inbox_[e.to()].add_shares() = e;
    }
  }
  shares_.clear();  // ciphertexts now live in the inboxes
  sum_.assign(cfg_.vector_length, 0);
  phase_ = Phase::kMasked;
}

v1::SecAggShareList ServerSession::shares_for(uint32_t site) const {
  auto it = inbox_.find(site);
  if (it == inbox_.end()) {
    throw ProtocolError("secure aggregation: site " + std::to_string(site) + " did not complete the share step");
  }
  return it->second;
}

void ServerSession::add_masked(const v1::SecAggMasked& m) {
  check_round(m.round(), "SecAggMasked");
  check_phase(Phase::kMasked, "SecAggMasked");
  const uint32_t u = m.site();
  if (!inbox_.count(u)) refuse("SecAggMasked from site " + std::to_string(u) + ", which did not complete the share step");
  if (masked_.count(u)) refuse("a second SecAggMasked from site " + std::to_string(u));
  if (m.count() != cfg_.vector_length || m.u32_le().size() != cfg_.vector_length * 4) {
    refuse("SecAggMasked from site " + std::to_string(u) + " has " + std::to_string(m.u32_le().size()) +
           " bytes for count " + std::to_string(m.count()) + ", expected " + std::to_string(cfg_.vector_length) +
           " uint32");
  }
  std::set<uint32_t> rejected;
  for (uint32_t r : m.rejected()) {
    if (r == u || r >= cfg_.num_sites || !graph_.adjacent(u, r) || !inbox_.count(r))
      refuse("site " + std::to_string(u) + " rejects the shares of site " + std::to_string(r) + ", which sent it none");
    if (!rejected.insert(r).second) refuse("site " + std::to_string(u) + " rejects site " + std::to_string(r) + " twice");
  }
  for (uint32_t r : rejected) {
    spdlog::warn("secure aggregation round {}: site {} rejected the shares site {} sent it (failed authentication or "
                 "commitment); site {} counts as a dropped holder of them",
                 cfg_.round, u, r, u);
    rejected_.insert({r, u});
    blamed_[r].insert(u);
  }
  const auto* y = reinterpret_cast<const uint8_t*>(m.u32_le().data());
  uint32_t* __restrict s = sum_.data();
  const size_t n = cfg_.vector_length;
  for (size_t i = 0; i < n; ++i) {
    uint32_t v;
    std::memcpy(&v, y + 4 * i, 4);
    s[i] += v;
  }
  masked_.insert(u);
}

v1::SecAggUnmaskRequest ServerSession::close_masked() {
  check_phase(Phase::kMasked, "close_masked");
  if (masked_.size() < cfg_.threshold) {
    abort_round(std::to_string(masked_.size()) + " masked inputs arrived, t = " + std::to_string(cfg_.threshold));
  }
  const std::vector<uint32_t> surv(masked_.begin(), masked_.end());
  if (!graph_.induced_connected(surv)) {
    abort_round("the survivors' neighbour graph is disconnected (unmasking would reveal partial sums)");
  }
  for (const auto& [u, box] : inbox_)
    if (!masked_.count(u)) dropped_.insert(u);
  // A sender rejected by several recipients is a cheater. A dropout among them simply stays
  // dropped (its mask key is rebuilt from the holders that accepted its shares); a survivor's
  // masked input is already in the sum and cannot be taken out without unmasking it, so the
  // round is abandoned and the coordinator drops the cheater (cheaters()).
  for (const auto& [r, by] : blamed_) {
    if (by.size() < kBlameLimit) continue;
    cheaters_.insert(r);
    if (masked_.count(r))
      abort_round("site " + std::to_string(r) + " sent share ciphertexts that sites " + site_list(by) +
                  " rejected; its masked input cannot be taken out of the sum");
    spdlog::warn("secure aggregation round {}: site {} sent share ciphertexts that sites {} rejected (it is a dropout "
                 "of this round)",
                 cfg_.round, r, site_list(by));
  }
  // Every secret to reconstruct needs enough holders among the survivors.
  auto holders_alive = [&](uint32_t v) {
    size_t k = masked_.count(v);  // v holds a share of its own secrets
    for (uint32_t w : graph_.neighbours(v)) k += masked_.count(w) && inbox_.count(w) && !rejected_.count({v, w});
    return k;
  };
  for (uint32_t v : masked_) {
    if (holders_alive(v) < hood_threshold_) {
      abort_round("too few survivors hold shares of site " + std::to_string(v) + "'s self-mask seed");
    }
  }
  for (uint32_t v : dropped_) {
    bool needed = false;
    for (uint32_t w : graph_.neighbours(v)) needed |= masked_.count(w) > 0;
    if (needed && holders_alive(v) < hood_threshold_) {
      abort_round("too few survivors hold shares of dropped site " + std::to_string(v) + "'s mask key");
    }
  }
  v1::SecAggUnmaskRequest out;
  out.set_round(cfg_.round);
  for (uint32_t v : masked_) out.add_survivors(v);
  for (uint32_t v : dropped_) out.add_dropped(v);
  phase_ = cfg_.signed_keys ? Phase::kConsistency : Phase::kUnmask;
  request_ = out;
  return out;
}

void ServerSession::add_consistency(const v1::SecAggConsistency& m) {
  check_round(m.round(), "SecAggConsistency");
  check_phase(Phase::kConsistency, "SecAggConsistency");
  const uint32_t u = m.site();
  if (!masked_.count(u)) refuse("SecAggConsistency from site " + std::to_string(u) + ", which is not a survivor");
  if (signed_.count(u)) refuse("a second SecAggConsistency from site " + std::to_string(u));
  if (verifier_) {
    try {
      verifier_->verify(keys_.at(u).certificate(), expected_name(cfg_, u), survivors_message(cfg_, masked_, dropped_),
                        m.signature());
    } catch (const ProtocolError& e) {
      refuse("site " + std::to_string(u) + " did not sign the survivor set it was sent: " + e.what());
    }
  }
  signed_.insert(u);
  *signatures_.add_signatures() = m;
}

v1::SecAggConsistencyList ServerSession::close_consistency() {
  check_phase(Phase::kConsistency, "close_consistency");
  if (signed_.size() < cfg_.threshold) {
    abort_round(std::to_string(signed_.size()) + " survivors signed the survivor set, t = " +
                std::to_string(cfg_.threshold));
  }
  signatures_.set_round(cfg_.round);
  phase_ = Phase::kUnmask;
  return signatures_;
}

void ServerSession::add_unmask_shares(const v1::SecAggUnmaskShares& m) {
  check_round(m.round(), "SecAggUnmaskShares");
  check_phase(Phase::kUnmask, "SecAggUnmaskShares");
  const uint32_t u = m.site();
  if (!masked_.count(u)) refuse("SecAggUnmaskShares from site " + std::to_string(u) + ", which is not a survivor");
  if (cfg_.signed_keys && !signed_.count(u))
    refuse("SecAggUnmaskShares from site " + std::to_string(u) + ", which did not sign the survivor set");
  if (answered_.count(u)) refuse("a second SecAggUnmaskShares from site " + std::to_string(u));
  std::set<std::pair<uint32_t, int>> seen;
  std::vector<std::pair<uint32_t, Share>> b, sk;
  for (const auto& r : m.shares()) {
    const uint32_t v = r.owner();
    const bool holds = v == u || (graph_.adjacent(u, v) && inbox_.count(v) && !rejected_.count({v, u}));
    if (!holds) refuse("site " + std::to_string(u) + " revealed a share of site " + std::to_string(v) + " it cannot hold");
    // The revealed share must open the commitment its owner made in step 2; if it does not,
    // the revealer forged it (an honest holder checked the same commitment on receipt).
    const auto c = commitments_.find({v, u});
    const bool kind_ok = r.kind() == v1::SECAGG_SHARE_SELF_MASK_SEED || r.kind() == v1::SECAGG_SHARE_MASK_KEY;
    if (c == commitments_.end() || !kind_ok || r.opening().size() != kOpeningBytes ||
        commitment(cfg_, v, u, r.kind(), r.share(), r.opening()) !=
            (r.kind() == v1::SECAGG_SHARE_MASK_KEY ? c->second.first : c->second.second)) {
      cheaters_.insert(u);
      refuse("site " + std::to_string(u) + " revealed a share of site " + std::to_string(v) +
             " that does not open site " + std::to_string(v) + "'s commitment: a forged share (site " +
             std::to_string(u) + " is the cheater)");
    }
    if (!seen.insert({v, static_cast<int>(r.kind())}).second) {
      refuse("site " + std::to_string(u) + " revealed two shares of site " + std::to_string(v));
    }
    if (r.kind() == v1::SECAGG_SHARE_SELF_MASK_SEED && masked_.count(v)) {
      b.emplace_back(v, decode_share(r.share(), u + 1, kShareElems));
    } else if (r.kind() == v1::SECAGG_SHARE_MASK_KEY && dropped_.count(v)) {
      sk.emplace_back(v, decode_share(r.share(), u + 1, kShareElems));
    } else {
      refuse("site " + std::to_string(u) + " revealed a share of site " + std::to_string(v) + " that was not asked for");
    }
  }
  for (auto& [v, s] : b) self_seed_shares_[v].push_back(std::move(s));
  for (auto& [v, s] : sk) mask_key_shares_[v].push_back(std::move(s));
  answered_.insert(u);
}

std::vector<uint32_t> ServerSession::finish() {
  check_phase(Phase::kUnmask, "finish");
  if (answered_.size() < cfg_.threshold) {
    abort_round(std::to_string(answered_.size()) + " sites answered the unmask step, t = " + std::to_string(cfg_.threshold));
  }
  std::vector<SignedSeed> seeds;
  for (uint32_t v : masked_) {
    auto& shares = self_seed_shares_[v];
    if (shares.size() < hood_threshold_) {
      abort_round("only " + std::to_string(shares.size()) + " shares of site " + std::to_string(v) + "'s self-mask seed, " +
                  std::to_string(hood_threshold_) + " needed");
    }
    // Every share opened its owner's commitment, so shares off one polynomial mean the owner
    // dealt them inconsistently (detectable when more than the threshold answered).
    if (!shamir_consistent(shares, hood_threshold_)) {
      cheaters_.insert(v);
      abort_round("site " + std::to_string(v) + " dealt inconsistent shares of its self-mask seed");
    }
    std::string b;
    try {
      b = shamir_combine(shares, hood_threshold_, kKeyBytes);
    } catch (const ProtocolError& e) {
      cheaters_.insert(v);
      abort_round("self-mask seed of site " + std::to_string(v) + ": " + e.what());
    }
    Bytes32 bb{};
    std::memcpy(bb.data(), b.data(), kKeyBytes);
    seeds.push_back({Secret32(bb), -1});
  }
  for (uint32_t v : dropped_) {
    std::vector<uint32_t> alive;
    for (uint32_t w : graph_.neighbours(v))
      if (masked_.count(w)) alive.push_back(w);
    if (alive.empty()) continue;
    auto& shares = mask_key_shares_[v];
    if (shares.size() < hood_threshold_) {
      abort_round("only " + std::to_string(shares.size()) + " shares of dropped site " + std::to_string(v) +
                  "'s mask key, " + std::to_string(hood_threshold_) + " needed");
    }
    std::string raw;
    try {
      if (!shamir_consistent(shares, hood_threshold_)) throw ProtocolError("its shares are inconsistent");
      raw = shamir_combine(shares, hood_threshold_, kKeyBytes);
    } catch (const ProtocolError& e) {
      cheaters_.insert(v);
      abort_round(std::string("mask key of dropped site ") + std::to_string(v) + ": " + e.what());
    }
    Bytes32 skb{};
    std::memcpy(skb.data(), raw.data(), kKeyBytes);
    std::fill(raw.begin(), raw.end(), '\0');
    const Secret32 sk(skb);
    const X25519Private sk_key(sk);
    const Bytes32 pk = key_bytes(keys_[v].mask_pk(), v, "mask key");
    if (x25519_public_key(sk) != pk) {
      cheaters_.insert(v);
      abort_round("the mask key reconstructed for dropped site " + std::to_string(v) +
                  " does not match its advertised public key (inconsistent shares)");
    }
    for (uint32_t w : alive) {
      const Bytes32 wpk = key_bytes(keys_[w].mask_pk(), w, "mask key");
      // y_w carries +PRG(s_wv) when v > w and -PRG(s_wv) when v < w: remove it.
      seeds.push_back({pair_seed(cfg_, sk_key, wpk, v, w), v > w ? -1 : +1});
    }
  }
  apply_masks(sum_.data(), sum_.size(), seeds);
  phase_ = Phase::kDone;
  self_seed_shares_.clear();
  mask_key_shares_.clear();
  return std::move(sum_);
}

std::vector<uint32_t> ServerSession::advertised() const {
  std::vector<uint32_t> v;
  for (const auto& [s, k] : keys_) v.push_back(s);
  return v;
}
std::vector<uint32_t> ServerSession::shared() const {
  std::vector<uint32_t> v;
  for (const auto& [s, k] : inbox_) v.push_back(s);
  for (const auto& [s, k] : shares_) v.push_back(s);
  std::sort(v.begin(), v.end());
  return v;
}
std::vector<uint32_t> ServerSession::survivors() const { return {masked_.begin(), masked_.end()}; }

}  // namespace fedtl::protocols::secagg

// Cryptographic primitives of secure aggregation, all through OpenSSL 3's EVP interfaces
// (never a home-made cipher or PRG):
//   - X25519 key pairs and key agreement
//   - HKDF-SHA256 key derivation
//   - AES-256-GCM authenticated encryption with associated data
//   - mask expansion: AES-128-CTR keystream from a 256-bit seed (key = seed[0..16),
//     initial counter block = seed[16..32)), read as little-endian uint32 words and added to
//     or subtracted from a uint32 vector mod 2^32 in 16 KiB chunks, streaming: no mask is
//     ever materialised whole.
// Secrets come from RAND_bytes. Secret buffers are wiped (OPENSSL_cleanse) when destroyed.
// Every function is thread-safe (no shared state); objects are not.
// OpenSSL failures throw fedtl::Error; a malformed peer key throws fedtl::ProtocolError.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace fedtl::protocols::secagg {

inline constexpr size_t kKeyBytes = 32;    // X25519 keys, HKDF outputs, seeds
inline constexpr size_t kNonceBytes = 12;  // AES-GCM nonce
inline constexpr size_t kTagBytes = 16;    // AES-GCM tag
inline constexpr size_t kMaskChunkWords = 4096;  // 16 KiB of uint32 per streaming step

using Bytes32 = std::array<uint8_t, kKeyBytes>;

// 32 secret bytes, wiped on destruction. Copyable (each copy wipes itself).
class Secret32 {
 public:
  Secret32() { bytes_.fill(0); }
  explicit Secret32(const Bytes32& b) : bytes_(b) {}
  Secret32(const Secret32&) = default;
  Secret32& operator=(const Secret32&) = default;
  ~Secret32();
  uint8_t* data() { return bytes_.data(); }
  const uint8_t* data() const { return bytes_.data(); }
  static constexpr size_t size() { return kKeyBytes; }
  const Bytes32& bytes() const { return bytes_; }
  // A fresh uniformly random secret (RAND_bytes).
  static Secret32 random();

 private:
  Bytes32 bytes_;
};

// Fills `out` with n cryptographically secure random bytes (RAND_bytes).
void random_bytes(void* out, size_t n);

// An X25519 key pair (raw 32-byte keys).
struct X25519KeyPair {
  Bytes32 public_key{};
  Secret32 private_key;
  static X25519KeyPair generate();
};

// The public key of a raw X25519 private key.
Bytes32 x25519_public_key(const Secret32& private_key);

// X25519(private, peer_public): the 32-byte shared secret. Throws ProtocolError when the
// peer key is a low-order point (all-zero shared secret) or otherwise unusable.
Secret32 x25519_agree(const Secret32& private_key, const Bytes32& peer_public);

// True for a public key an honest party can have produced: canonical (u < 2^255 - 19, top bit
// clear) and not of small order (its agreement with any clamped scalar is all-zero). Keys that
// fail this are refused at step 1 (see ServerSession::add_keys).
bool x25519_key_usable(const Bytes32& public_key);

// SHA-256 of `data` (raw 32 bytes).
Bytes32 sha256_raw(const std::string& data);

// An X25519 private key imported once for many agreements (importing a raw key costs a scalar
// multiplication, as much as the agreement itself). Not copyable; agree() is const and
// thread-compatible.
class X25519Private {
 public:
  explicit X25519Private(const Secret32& private_key);
  ~X25519Private();
  X25519Private(const X25519Private&) = delete;
  X25519Private& operator=(const X25519Private&) = delete;
  // As x25519_agree().
  Secret32 agree(const Bytes32& peer_public) const;

 private:
  void* pkey_;  // EVP_PKEY
};

// HKDF-SHA256 (RFC 5869) extract-and-expand of `ikm` into `out_len` bytes.
void hkdf_sha256(const uint8_t* ikm, size_t ikm_len, const std::string& salt, const std::string& info,
                 uint8_t* out, size_t out_len);
Secret32 hkdf_sha256_32(const Secret32& ikm, const std::string& salt, const std::string& info);

// AES-256-GCM. seal() draws a fresh random 96-bit nonce; returns ciphertext || tag.
struct Sealed {
  std::string nonce;       // kNonceBytes
  std::string ciphertext;  // plaintext.size() + kTagBytes
};
Sealed aead_seal(const Secret32& key, const std::string& aad, const std::string& plaintext);
// Returns the plaintext, or nullopt when authentication fails (wrong key, nonce, associated
// data, or a modified ciphertext/tag) or the sizes are malformed.
std::optional<std::string> aead_open(const Secret32& key, const std::string& aad, const std::string& nonce,
                                     const std::string& ciphertext);

// One AES-128-CTR keystream read as little-endian uint32 words. Not copyable.
class MaskStream {
 public:
  explicit MaskStream(const Secret32& seed);
  ~MaskStream();
  MaskStream(MaskStream&& o) noexcept;
  MaskStream& operator=(MaskStream&&) = delete;
  MaskStream(const MaskStream&) = delete;
  MaskStream& operator=(const MaskStream&) = delete;
  // Writes the next `words` keystream words to `out` (words <= kMaskChunkWords per call is
  // the efficient size; any size works).
  void next(uint32_t* out, size_t words);

 private:
  void* ctx_;  // EVP_CIPHER_CTX
};

// A mask to add (+1) or subtract (-1) mod 2^32.
struct SignedSeed {
  Secret32 seed;
  int sign = +1;
};

// vec[i] += Σ sign_j · PRG(seed_j)[i] (mod 2^32) for i < m, chunk by chunk: for each
// 16 KiB slice of `vec`, every stream produces that slice's keystream in turn, so the slice
// and the keystream buffer stay in L1 cache. Single-threaded.
void apply_masks(uint32_t* vec, size_t m, const std::vector<SignedSeed>& seeds);

// Generates (and discards) `words` keystream words from each of `streams` seeds, in the same
// chunk size: the physical lower bound of apply_masks for the same work (benchmarks).
// Returns a checksum so the compiler cannot drop the work.
uint32_t keystream_only(const std::vector<Secret32>& seeds, size_t words);

}  // namespace fedtl::protocols::secagg

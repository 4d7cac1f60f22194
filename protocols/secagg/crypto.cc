#include "protocols/secagg/crypto.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include <cstring>
#include <memory>

#include "common/errors.h"

namespace fedtl::protocols::secagg {
namespace {

[[noreturn]] void openssl_fail(const char* what) {
  char buf[256] = {0};
  ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
  ERR_clear_error();
  throw Error(std::string("secure aggregation: OpenSSL ") + what + " failed: " + buf);
}

struct PkeyDel {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct PkeyCtxDel {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct CipherCtxDel {
  void operator()(EVP_CIPHER_CTX* p) const { EVP_CIPHER_CTX_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDel>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDel>;
using CipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDel>;

PkeyPtr private_pkey(const Secret32& sk) {
  PkeyPtr p(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, sk.data(), kKeyBytes));
  if (!p) openssl_fail("X25519 private key import");
  return p;
}

}  // namespace

Secret32::~Secret32() { OPENSSL_cleanse(bytes_.data(), bytes_.size()); }

Secret32 Secret32::random() {
  Secret32 s;
  random_bytes(s.data(), s.size());
  return s;
}

void random_bytes(void* out, size_t n) {
  if (n == 0) return;
  if (RAND_bytes(static_cast<unsigned char*>(out), static_cast<int>(n)) != 1) openssl_fail("RAND_bytes");
}

X25519KeyPair X25519KeyPair::generate() {
  X25519KeyPair kp;
  kp.private_key = Secret32::random();
  kp.public_key = x25519_public_key(kp.private_key);
  return kp;
}

Bytes32 x25519_public_key(const Secret32& private_key) {
  PkeyPtr p = private_pkey(private_key);
  Bytes32 pub{};
  size_t len = pub.size();
  if (EVP_PKEY_get_raw_public_key(p.get(), pub.data(), &len) != 1 || len != pub.size()) {
    openssl_fail("X25519 public key export");
  }
  return pub;
}

X25519Private::X25519Private(const Secret32& private_key) : pkey_(private_pkey(private_key).release()) {}

X25519Private::~X25519Private() { EVP_PKEY_free(static_cast<EVP_PKEY*>(pkey_)); }

Secret32 X25519Private::agree(const Bytes32& peer_public) const {
  PkeyPtr peer(EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, peer_public.data(), peer_public.size()));
  if (!peer) {
    ERR_clear_error();
    throw ProtocolError("secure aggregation: a peer's X25519 public key is malformed");
  }
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new(static_cast<EVP_PKEY*>(pkey_), nullptr));
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1) openssl_fail("X25519 derive init");
  if (EVP_PKEY_derive_set_peer(ctx.get(), peer.get()) != 1) {
    ERR_clear_error();
    throw ProtocolError("secure aggregation: a peer's X25519 public key was refused by key agreement");
  }
  Secret32 out;
  size_t len = out.size();
  // OpenSSL fails the derivation for low-order points (all-zero shared secret).
  if (EVP_PKEY_derive(ctx.get(), out.data(), &len) != 1 || len != out.size()) {
    ERR_clear_error();
    throw ProtocolError("secure aggregation: X25519 agreement with a peer's key failed (low-order point?)");
  }
  return out;
}

Secret32 x25519_agree(const Secret32& private_key, const Bytes32& peer_public) {
  return X25519Private(private_key).agree(peer_public);
}

bool x25519_key_usable(const Bytes32& pk) {
  // Canonical encoding: u < p = 2^255 - 19 (so the top bit is clear, and the 19 values in
  // [p, 2^255) that alias small ones are refused: two encodings of one point).
  if (pk[31] & 0x80) return false;
  bool at_least_p = pk[31] == 0x7f && pk[0] >= 0xed;
  for (size_t i = 1; i < 31 && at_least_p; ++i) at_least_p = pk[i] == 0xff;
  if (at_least_p) return false;
  // Small order: a clamped scalar is a multiple of the cofactor 8, so any point of order
  // dividing 8 gives the all-zero shared secret, which OpenSSL's derivation refuses.
  static const X25519Private probe([] {
    Bytes32 k{};
    for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(0x5a ^ (i * 37));
    return Secret32(k);
  }());
  try {
    (void)probe.agree(pk);
    return true;
  } catch (const ProtocolError&) {
    return false;
  }
}

Bytes32 sha256_raw(const std::string& data) {
  Bytes32 out{};
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr) != 1 || len != out.size())
    openssl_fail("SHA-256");
  return out;
}

void hkdf_sha256(const uint8_t* ikm, size_t ikm_len, const std::string& salt, const std::string& info,
                 uint8_t* out, size_t out_len) {
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr));
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_hkdf_md(ctx.get(), EVP_sha256()) != 1 ||
      EVP_PKEY_CTX_set1_hkdf_salt(ctx.get(), reinterpret_cast<const unsigned char*>(salt.data()),
                                  static_cast<int>(salt.size())) != 1 ||
      EVP_PKEY_CTX_set1_hkdf_key(ctx.get(), ikm, static_cast<int>(ikm_len)) != 1 ||
      EVP_PKEY_CTX_add1_hkdf_info(ctx.get(), reinterpret_cast<const unsigned char*>(info.data()),
                                  static_cast<int>(info.size())) != 1) {
    openssl_fail("HKDF-SHA256 setup");
  }
  size_t len = out_len;
  if (EVP_PKEY_derive(ctx.get(), out, &len) != 1 || len != out_len) openssl_fail("HKDF-SHA256");
}

Secret32 hkdf_sha256_32(const Secret32& ikm, const std::string& salt, const std::string& info) {
  Secret32 out;
  hkdf_sha256(ikm.data(), ikm.size(), salt, info, out.data(), out.size());
  return out;
}

Sealed aead_seal(const Secret32& key, const std::string& aad, const std::string& plaintext) {
  Sealed s;
  s.nonce.resize(kNonceBytes);
  random_bytes(s.nonce.data(), kNonceBytes);
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  s.ciphertext.resize(plaintext.size() + kTagBytes);
  auto* ct = reinterpret_cast<unsigned char*>(s.ciphertext.data());
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) != 1 ||
      EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, key.data(),
                         reinterpret_cast<const unsigned char*>(s.nonce.data())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), ct, &len, reinterpret_cast<const unsigned char*>(plaintext.data()),
                        static_cast<int>(plaintext.size())) != 1) {
    openssl_fail("AES-256-GCM encrypt");
  }
  int fin = 0;
  if (EVP_EncryptFinal_ex(ctx.get(), ct + len, &fin) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes, ct + plaintext.size()) != 1) {
    openssl_fail("AES-256-GCM finalise");
  }
  return s;
}

std::optional<std::string> aead_open(const Secret32& key, const std::string& aad, const std::string& nonce,
                                     const std::string& ciphertext) {
  if (nonce.size() != kNonceBytes || ciphertext.size() < kTagBytes) return std::nullopt;
  const size_t n = ciphertext.size() - kTagBytes;
  std::string pt(n, '\0');
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  auto* p = reinterpret_cast<unsigned char*>(pt.data());
  const auto* c = reinterpret_cast<const unsigned char*>(ciphertext.data());
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) != 1 ||
      EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, key.data(),
                         reinterpret_cast<const unsigned char*>(nonce.data())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), p, &len, c, static_cast<int>(n)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes, const_cast<unsigned char*>(c + n)) != 1) {
    openssl_fail("AES-256-GCM decrypt");
  }
  int fin = 0;
  if (EVP_DecryptFinal_ex(ctx.get(), p + len, &fin) != 1) {
    ERR_clear_error();
    OPENSSL_cleanse(pt.data(), pt.size());
    return std::nullopt;
  }
  return pt;
}

MaskStream::MaskStream(const Secret32& seed) : ctx_(nullptr) {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  if (!ctx) openssl_fail("AES-128-CTR context");
  if (EVP_EncryptInit_ex(ctx, EVP_aes_128_ctr(), nullptr, seed.data(), seed.data() + 16) != 1) {
    EVP_CIPHER_CTX_free(ctx);
    openssl_fail("AES-128-CTR init");
  }
  ctx_ = ctx;
}

MaskStream::~MaskStream() { EVP_CIPHER_CTX_free(static_cast<EVP_CIPHER_CTX*>(ctx_)); }

MaskStream::MaskStream(MaskStream&& o) noexcept : ctx_(o.ctx_) { o.ctx_ = nullptr; }

void MaskStream::next(uint32_t* out, size_t words) {
  static const unsigned char kZeros[kMaskChunkWords * 4] = {0};
  auto* o = reinterpret_cast<unsigned char*>(out);
  while (words > 0) {
    const size_t w = words < kMaskChunkWords ? words : kMaskChunkWords;
    int len = 0;
    if (EVP_EncryptUpdate(static_cast<EVP_CIPHER_CTX*>(ctx_), o, &len, kZeros, static_cast<int>(w * 4)) != 1) {
      openssl_fail("AES-128-CTR keystream");
    }
    o += w * 4;
    words -= w;
  }
}

void apply_masks(uint32_t* vec, size_t m, const std::vector<SignedSeed>& seeds) {
  if (seeds.empty() || m == 0) return;
  std::vector<MaskStream> streams;
  streams.reserve(seeds.size());
  for (const auto& s : seeds) streams.emplace_back(s.seed);
  alignas(64) uint32_t buf[kMaskChunkWords];
  for (size_t off = 0; off < m; off += kMaskChunkWords) {
    const size_t w = (m - off) < kMaskChunkWords ? (m - off) : kMaskChunkWords;
    uint32_t* __restrict dst = vec + off;
    for (size_t j = 0; j < streams.size(); ++j) {
      streams[j].next(buf, w);
      if (seeds[j].sign >= 0) {
        for (size_t i = 0; i < w; ++i) dst[i] += buf[i];
      } else {
        for (size_t i = 0; i < w; ++i) dst[i] -= buf[i];
      }
    }
  }
  OPENSSL_cleanse(buf, sizeof(buf));
}

uint32_t keystream_only(const std::vector<Secret32>& seeds, size_t words) {
  std::vector<MaskStream> streams;
  streams.reserve(seeds.size());
  for (const auto& s : seeds) streams.emplace_back(s);
  alignas(64) uint32_t buf[kMaskChunkWords];
  uint32_t check = 0;
  for (size_t off = 0; off < words; off += kMaskChunkWords) {
    const size_t w = (words - off) < kMaskChunkWords ? (words - off) : kMaskChunkWords;
    for (auto& s : streams) {
      s.next(buf, w);
      check ^= buf[w - 1];
    }
  }
  return check;
}

}  // namespace fedtl::protocols::secagg

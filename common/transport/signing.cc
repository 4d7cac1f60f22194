#include "common/transport/signing.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <chrono>
#include <map>
#include <mutex>

#include "common/errors.h"
#include "common/transport/cert_check.h"
#include "common/files.h"

namespace fedtl::common {
namespace {

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
  void operator()(X509_STORE* p) const { X509_STORE_free(p); }
  void operator()(X509_STORE_CTX* p) const { X509_STORE_CTX_free(p); }
};
using PKey = std::unique_ptr<EVP_PKEY, Free>;
using Cert = std::unique_ptr<X509, Free>;

using cert_detail::openssl_error;

Cert parse_cert(const std::string& pem) {
  std::unique_ptr<BIO, Free> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Cert c(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
  ERR_clear_error();
  return c;
}

std::string common_name(X509* cert) { return cert_detail::subject_entry(cert, NID_commonName); }

}  // namespace

struct IdentitySigner::Impl {
  PKey key;
  std::string cert_pem, name;
};

IdentitySigner::IdentitySigner(const std::string& cert_file, const std::string& key_file) : impl_(new Impl) {
  std::string key_pem;
  try {
    impl_->cert_pem = read_file(cert_file);
    key_pem = read_file(key_file);
  } catch (const Error& e) {
    throw ConfigError(e.what());
  }
  Cert cert = parse_cert(impl_->cert_pem);
  if (!cert) throw ConfigError(cert_file + ": not a PEM certificate");
  std::unique_ptr<BIO, Free> bio(BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
  impl_->key.reset(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr);
  OPENSSL_cleanse(key_pem.data(), key_pem.size());
  if (!impl_->key) throw ConfigError(key_file + ": not a PEM private key (" + openssl_error() + ")");
  if (X509_check_private_key(cert.get(), impl_->key.get()) != 1) {
    ERR_clear_error();
    throw ConfigError(key_file + " is not the private key of " + cert_file);
  }
  impl_->name = common_name(cert.get());
}

IdentitySigner::~IdentitySigner() = default;

const std::string& IdentitySigner::certificate_pem() const { return impl_->cert_pem; }
const std::string& IdentitySigner::name() const { return impl_->name; }

std::string IdentitySigner::sign(const std::string& message) const {
  std::unique_ptr<EVP_MD_CTX, Free> ctx(EVP_MD_CTX_new());
  size_t len = 0;
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, impl_->key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1)
    throw Error("OpenSSL: cannot sign: " + openssl_error());
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1)
    throw Error("OpenSSL: cannot sign: " + openssl_error());
  sig.resize(len);
  return sig;
}

struct SiteVerifier::Impl {
  std::unique_ptr<X509_STORE, Free> store;
  // Certificates whose chain and role were checked, by PEM: the parsed certificate, its CN
  // and when it was checked (re-checked after a while: validity windows end).
  struct Checked {
    std::shared_ptr<X509> cert;
    std::string cn;
    std::chrono::steady_clock::time_point at;
  };
  mutable std::mutex mu;
  mutable std::map<std::string, Checked> cache;
};

SiteVerifier::SiteVerifier(const std::string& ca_file) : impl_(new Impl) {
  std::string pem;
  try {
    pem = read_file(ca_file);
  } catch (const Error& e) {
    throw ConfigError(e.what());
  }
  Cert ca = parse_cert(pem);
  if (!ca) throw ConfigError(ca_file + ": not a PEM certificate");
  impl_->store.reset(X509_STORE_new());
  if (!impl_->store || X509_STORE_add_cert(impl_->store.get(), ca.get()) != 1)
    throw Error("OpenSSL: cannot build a certificate store: " + openssl_error());
}

SiteVerifier::~SiteVerifier() = default;

std::string SiteVerifier::verify(const std::string& certificate_pem, const std::string& expected_name,
                                 const std::string& message, const std::string& signature) const {
  std::shared_ptr<X509> cert;
  std::string cn;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->cache.find(certificate_pem);
    if (it != impl_->cache.end() && std::chrono::steady_clock::now() - it->second.at < std::chrono::minutes(10)) {
      cert = it->second.cert;
      cn = it->second.cn;
    }
  }
  if (!cert) {
    Cert parsed = parse_cert(certificate_pem);
    if (!parsed) throw ProtocolError("the signer's certificate does not parse");
    std::unique_ptr<X509_STORE_CTX, Free> ctx(X509_STORE_CTX_new());
    if (!ctx || X509_STORE_CTX_init(ctx.get(), impl_->store.get(), parsed.get(), nullptr) != 1)
      throw Error("OpenSSL: cannot verify a certificate: " + openssl_error());
    if (X509_verify_cert(ctx.get()) != 1) {
      const int err = X509_STORE_CTX_get_error(ctx.get());
      ERR_clear_error();
      throw ProtocolError("the signer's certificate (CN '" + common_name(parsed.get()) +
                          "') is not valid for this federation: " + X509_verify_cert_error_string(err));
    }
    const uint32_t xku = X509_get_extended_key_usage(parsed.get());
    if (!(xku & XKU_SSL_CLIENT) || (xku & XKU_SSL_SERVER))
      throw ProtocolError("the signer's certificate (CN '" + common_name(parsed.get()) +
                          "') is not a site certificate (a coordinator's, or issued for another use)");
    cn = common_name(parsed.get());
    cert.reset(parsed.release(), X509_free);
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->cache[certificate_pem] = {cert, cn, std::chrono::steady_clock::now()};
  }
  if (!expected_name.empty() && cn != expected_name)
    throw ProtocolError("a signature for site '" + expected_name + "' was made with the certificate of '" + cn + "'");
  EVP_PKEY* pub = X509_get0_pubkey(cert.get());
  std::unique_ptr<EVP_MD_CTX, Free> md(EVP_MD_CTX_new());
  if (!pub || !md || EVP_DigestVerifyInit(md.get(), nullptr, EVP_sha256(), nullptr, pub) != 1)
    throw Error("OpenSSL: cannot verify a signature: " + openssl_error());
  const int ok = EVP_DigestVerify(md.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                                  reinterpret_cast<const unsigned char*>(message.data()), message.size());
  ERR_clear_error();
  if (ok != 1) throw ProtocolError("the signature of site '" + cn + "' does not verify");
  return cn;
}

}  // namespace fedtl::common

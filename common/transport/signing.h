// Signatures with a party's federation identity, outside the TLS handshake. Secure
// aggregation signs each site's round keys and the survivor set it was given with the site's
// certificate key, so that a coordinator that deviates from the protocol can neither
// substitute keys (and unmask a site) nor tell different sites different survivor sets
// (protocols/secagg/session.h, docs/security.md). Keys and certificates are those of the
// provisioning kits (common/transport/pki.h: EC P-256, ECDSA with SHA-256).
//
// Thread-safe: both classes are immutable after construction except the verifier's cache of
// certificates already checked, which is guarded.
#pragma once
#include <memory>
#include <string>

namespace fedtl::common {

// This party's signing identity: its private key and certificate (PEM files of its kit).
class IdentitySigner {
 public:
  // Throws ConfigError naming the file when the key or certificate cannot be read, or when
  // they do not belong together.
  IdentitySigner(const std::string& cert_file, const std::string& key_file);
  ~IdentitySigner();
  IdentitySigner(const IdentitySigner&) = delete;
  IdentitySigner& operator=(const IdentitySigner&) = delete;

  // The certificate, PEM; peers verify signatures against it.
  const std::string& certificate_pem() const;
  // The certificate's common name.
  const std::string& name() const;
  // A signature of `message` (ECDSA over SHA-256, DER).
  std::string sign(const std::string& message) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Checks signatures made by sites of one federation.
class SiteVerifier {
 public:
  // Throws ConfigError naming the file when the CA certificate cannot be read.
  explicit SiteVerifier(const std::string& ca_file);
  ~SiteVerifier();
  SiteVerifier(const SiteVerifier&) = delete;
  SiteVerifier& operator=(const SiteVerifier&) = delete;

  // Verifies that `certificate_pem` is a site's: it parses, chains to the federation CA and is
  // valid now, is issued for clientAuth and NOT serverAuth (a coordinator certificate cannot
  // speak for a site), and its CN equals `expected_name` when that is not empty; and that
  // `signature` is its key's signature of `message`. Returns the CN. Throws ProtocolError
  // saying which check failed.
  std::string verify(const std::string& certificate_pem, const std::string& expected_name,
                     const std::string& message, const std::string& signature) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fedtl::common

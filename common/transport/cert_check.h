// Internal to common/transport/ (pki.cc, tls.cc): checks on certificates as OpenSSL objects.
// Not for protocol code: it includes OpenSSL headers.
#pragma once
#include <openssl/x509.h>

#include <optional>
#include <string>

#include "common/transport/pki.h"

namespace fedtl::common::cert_detail {

// The role a certificate was issued for, read from its extendedKeyUsage (pki.h): serverAuth
// present => coordinator, clientAuth without serverAuth => worker. nullopt: no usable
// extendedKeyUsage (a certificate fedtl did not issue; fedtl refuses it in either role).
std::optional<CertRole> certificate_role(X509* cert);

// "2027-03-01 12:00:00 UTC" for an ASN1 time.
std::string time_str(const ASN1_TIME* t);

// "" when `cert` is valid now, else "<what> is not valid until <notBefore> (valid <nb> to <na>)"
// or "<what> expired on <notAfter> (valid <nb> to <na>)".
std::string validity_problem(X509* cert, const std::string& what);

// The single value of `nid` (e.g. NID_commonName) in a certificate's subject, or "".
std::string subject_entry(X509* cert, int nid);

// The reason of the last OpenSSL error, and clears the queue.
std::string openssl_error();

}  // namespace fedtl::common::cert_detail

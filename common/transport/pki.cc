// Federation PKI with OpenSSL 3 (EVP keys, X509 certificates). Keys are EC P-256, signatures
// ECDSA with SHA-256: the safest choice for TLS 1.3 interoperability.
#include "common/transport/pki.h"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <sstream>
#include <toml++/toml.h>
#include <vector>

#include "common/errors.h"
#include "common/files.h"
#include "common/transport/cert_check.h"

namespace fedtl::common {
namespace {
using cert_detail::openssl_error;
using cert_detail::subject_entry;

namespace fs = std::filesystem;

constexpr long kCaDays = 3653;    // 10 years
constexpr long kLeafDays = 1096;  // 3 years, capped at the CA's end
constexpr long kBackdateSeconds = 300;  // tolerate small clock skew between hosts

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(BIGNUM* p) const { BN_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
};
using PKey = std::unique_ptr<EVP_PKEY, Free>;
using Cert = std::unique_ptr<X509, Free>;
using Bio = std::unique_ptr<BIO, Free>;


[[noreturn]] void crypto_fail(const std::string& what) {
  throw Error("OpenSSL: " + what + ": " + openssl_error());
}

[[noreturn]] void io_fail(const std::string& what, const std::string& path) {
  throw IoError(what + " '" + path + "': " + std::strerror(errno));
}

void fsync_dir(const fs::path& dir) {
  const std::string d = dir.empty() ? "." : dir.string();
  int fd = ::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) io_fail("cannot open directory", d);
  if (::fsync(fd) != 0) {
    ::close(fd);
    io_fail("cannot fsync directory", d);
  }
  ::close(fd);
}

// Writes a new file with exactly `mode`; never replaces an existing one (ConfigError).
// Readers see the whole file or none of it: temporary file, fsync, hard link to the name.
void write_new_file(const fs::path& path, const std::string& data, mode_t mode) {
  const std::string p = path.string();
  const std::string tmp = temp_path_for(p);
  ::unlink(tmp.c_str());  // a stale temporary of this very process id
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) io_fail("cannot create", tmp);
  auto fail = [&](const char* what) {
    const int saved = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    errno = saved;
    io_fail(what, p);
  };
  if (::fchmod(fd, mode) != 0) fail("cannot set permissions of");  // umask may have narrowed it
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("cannot write");
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) fail("cannot fsync");
  if (::close(fd) != 0) {
    const int saved = errno;
    ::unlink(tmp.c_str());
    errno = saved;
    io_fail("cannot write", p);
  }
  if (::link(tmp.c_str(), p.c_str()) != 0) {
    const int saved = errno;
    if (saved == EEXIST) {
      ::unlink(tmp.c_str());
      throw ConfigError("'" + p + "' already exists; refusing to overwrite it");
    }
    // File systems without hard links: check, then rename (not atomic against a racing writer).
    std::error_code ec;
    if ((saved == EPERM || saved == EOPNOTSUPP) && !fs::exists(path, ec) && !ec &&
        ::rename(tmp.c_str(), p.c_str()) == 0) {
      fsync_dir(path.parent_path());
      return;
    }
    ::unlink(tmp.c_str());
    errno = saved;
    io_fail("cannot create", p);
  }
  ::unlink(tmp.c_str());
  fsync_dir(path.parent_path());
}

std::string to_pem(EVP_PKEY* key) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
    crypto_fail("cannot encode a private key");
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

std::string to_pem(X509* cert) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) crypto_fail("cannot encode a certificate");
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

PKey new_key() {
  PKey key(EVP_EC_gen("P-256"));
  if (!key) crypto_fail("cannot generate an EC P-256 key");
  return key;
}

PKey load_key(const std::string& path) {
  Bio bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) throw IoError("cannot read private key '" + path + "': " + openssl_error());
  PKey key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) throw ConfigError("'" + path + "' is not a PEM private key: " + openssl_error());
  return key;
}

Cert load_cert(const std::string& path) {
  Bio bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) throw IoError("cannot read certificate '" + path + "': " + openssl_error());
  Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) throw ConfigError("'" + path + "' is not a PEM certificate: " + openssl_error());
  return cert;
}

void add_name_entry(X509_NAME* name, const char* field, const std::string& value) {
  if (X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1,
                                 0) != 1) {
    crypto_fail(std::string("cannot set the certificate's ") + field);
  }
}

// Adds an extension written in OpenSSL's config syntax ("critical,CA:TRUE").
void add_ext(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  std::unique_ptr<X509_EXTENSION, Free> ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    crypto_fail(std::string("cannot add extension ") + OBJ_nid2sn(nid) + " = " + value);
  }
}

// A certificate with a random positive 159-bit serial, the given subject and validity, and
// `key`'s public half; extensions and signature are up to the caller.
Cert new_cert(EVP_PKEY* key, const std::string& cn, const std::string& org, long days) {
  Cert cert(X509_new());
  if (!cert || X509_set_version(cert.get(), 2) != 1) crypto_fail("cannot create a certificate");
  std::unique_ptr<BIGNUM, Free> serial(BN_new());
  if (!serial || BN_rand(serial.get(), 159, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
      !BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get()))) {
    crypto_fail("cannot make a certificate serial number");
  }
  if (!X509_gmtime_adj(X509_getm_notBefore(cert.get()), -kBackdateSeconds) ||
      !X509_time_adj_ex(X509_getm_notAfter(cert.get()), static_cast<int>(days), 0, nullptr)) {
    crypto_fail("cannot set the certificate validity");
  }
  X509_NAME* subject = X509_get_subject_name(cert.get());
  add_name_entry(subject, "O", org);
  add_name_entry(subject, "CN", cn);
  if (X509_set_pubkey(cert.get(), key) != 1) crypto_fail("cannot set the certificate key");
  return cert;
}

void sign(X509* cert, EVP_PKEY* key) {
  if (X509_sign(cert, key, EVP_sha256()) <= 0) crypto_fail("cannot sign the certificate");
}


// "host:port" with a DNS name, IPv4 address or [IPv6] address and a port in 1..65535.
bool is_valid_address(const std::string& a) {
  const size_t colon = a.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == a.size()) return false;
  const std::string host = a.substr(0, colon), port = a.substr(colon + 1);
  if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) return false;
  const long p = std::stol(port);
  if (p < 1 || p > 65535) return false;
  if (host.front() == '[') {
    return host.size() > 2 && host.back() == ']' &&
           host.find_first_not_of("0123456789abcdefABCDEF:.", 1) == host.size() - 1;
  }
  return host.find_first_not_of(
             "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") ==
         std::string::npos;
}

void make_private_dir(const fs::path& dir, bool must_be_new) {
  if (::mkdir(dir.c_str(), 0700) != 0) {
    if (errno == EEXIST && !must_be_new) return;
    if (errno == EEXIST) {
      throw ConfigError("'" + dir.string() + "' already exists; remove it to issue it again");
    }
    io_fail("cannot create directory", dir.string());
  }
  if (::chmod(dir.c_str(), 0700) != 0) io_fail("cannot set permissions of", dir.string());
}

std::string str_or(const toml::table& t, const char* section, const char* key) {
  if (auto v = t[section][key].value<std::string>()) return *v;
  return "";
}

}  // namespace

bool is_valid_party_name(const std::string& name) {
  if (name.empty() || name.size() > 64 || name == "ca") return false;
  if (!std::isalnum(static_cast<unsigned char>(name[0]))) return false;
  for (char c : name) {
    const auto u = static_cast<unsigned char>(c);
    if (!(std::isalnum(u) || c == '.' || c == '_' || c == '-') || u >= 0x80) return false;
  }
  return true;
}

void pki_init(const std::string& dir, const std::string& federation_name) {
  if (!is_valid_party_name(federation_name)) {
    throw ConfigError("invalid federation name '" + federation_name +
                      "': use 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit");
  }
  const fs::path root(dir);
  const fs::path key_path = root / "ca.key", crt_path = root / "ca.crt";
  std::error_code ec;
  for (const auto& p : {key_path, crt_path}) {
    if (fs::exists(p, ec)) {
      throw ConfigError("'" + dir + "' already has a CA ('" + p.string() +
                        "' exists); refusing to overwrite it");
    }
  }
  if (!fs::exists(root, ec)) {
    if (!root.parent_path().empty()) {
      fs::create_directories(root.parent_path(), ec);
      if (ec) throw IoError("cannot create directory '" + root.parent_path().string() + "': " + ec.message());
    }
    make_private_dir(root, /*must_be_new=*/false);
  } else if (!fs::is_directory(root, ec)) {
    throw ConfigError("'" + dir + "' exists and is not a directory");
  }

  PKey key = new_key();
  Cert cert = new_cert(key.get(), federation_name + " CA", federation_name, kCaDays);
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get())) != 1)
    crypto_fail("cannot set the CA issuer");
  add_ext(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
  add_ext(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
  add_ext(cert.get(), cert.get(), NID_subject_key_identifier, "hash");
  add_ext(cert.get(), cert.get(), NID_authority_key_identifier, "keyid:always");
  sign(cert.get(), key.get());

  write_new_file(key_path, to_pem(key.get()), 0600);
  try {
    write_new_file(crt_path, to_pem(cert.get()), 0644);
  } catch (...) {
    ::unlink(key_path.c_str());  // no half-made CA
    throw;
  }
}

std::string pki_issue(const std::string& dir, const std::string& name, const std::string& role,
                      const std::string& coordinator_address, const std::string& coordinator_name) {
  if (!is_valid_party_name(name)) {
    throw ConfigError("invalid name '" + name +
                      "': use 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or "
                      "digit (and not 'ca')");
  }
  if (role != "worker" && role != "coordinator") {
    throw ConfigError("invalid role '" + role + "' for '" + name + "': use worker or coordinator");
  }
  const bool is_worker = role == "worker";
  if (is_worker && coordinator_address.empty()) {
    throw ConfigError("the kit for worker '" + name +
                      "' needs the coordinator's address (host:port)");
  }
  if (!coordinator_address.empty() && !is_valid_address(coordinator_address)) {
    throw ConfigError("invalid coordinator address '" + coordinator_address +
                      "': use host:port (e.g. coordinator.example.org:8443 or [::1]:8443)");
  }
  if (!coordinator_name.empty() && !is_valid_party_name(coordinator_name)) {
    throw ConfigError("invalid coordinator name '" + coordinator_name + "'");
  }

  const fs::path root(dir);
  const fs::path ca_key_path = root / "ca.key", ca_crt_path = root / "ca.crt";
  std::error_code ec;
  if (!fs::exists(ca_crt_path, ec) || !fs::exists(ca_key_path, ec)) {
    throw ConfigError("no CA in '" + dir + "' ('" + ca_crt_path.string() +
                      "' or its key is missing); run `fedtl ca init --dir " + dir + "` first");
  }
  PKey ca_key = load_key(ca_key_path.string());
  Cert ca_cert = load_cert(ca_crt_path.string());
  if (X509_check_private_key(ca_cert.get(), ca_key.get()) != 1) {
    ERR_clear_error();
    throw ConfigError("CA key '" + ca_key_path.string() + "' does not match '" +
                      ca_crt_path.string() + "'");
  }
  const std::string federation = subject_entry(ca_cert.get(), NID_organizationName);

  // The coordinator's CN that workers will require.
  std::string server_name = coordinator_name;
  if (is_worker && server_name.empty()) {
    std::vector<std::string> found;
    const fs::path kits = root / "kits";
    if (fs::is_directory(kits, ec)) {
      for (const auto& entry : fs::directory_iterator(kits, ec)) {
        const fs::path toml_path = entry.path() / "kit.toml";
        if (!fs::is_regular_file(toml_path, ec)) continue;
        const Kit k = load_kit(toml_path.string());
        if (k.role == "coordinator") found.push_back(k.name);
      }
    }
    if (found.size() > 1) {
      std::string list;
      for (const auto& f : found) list += (list.empty() ? "" : ", ") + f;
      throw ConfigError("'" + dir + "' has several coordinator kits (" + list +
                        "); name the one worker '" + name + "' should trust");
    }
    if (found.size() == 1) server_name = found[0];
  }

  const fs::path kits = root / "kits";
  make_private_dir(kits, /*must_be_new=*/false);
  const fs::path kit_dir = kits / name;
  make_private_dir(kit_dir, /*must_be_new=*/true);
  try {
    PKey key = new_key();
    Cert cert = new_cert(key.get(), name, federation.empty() ? "fedtl" : federation, kLeafDays);
    if (X509_set_issuer_name(cert.get(), X509_get_subject_name(ca_cert.get())) != 1)
      crypto_fail("cannot set the issuer");
    if (ASN1_TIME_compare(X509_get0_notAfter(cert.get()), X509_get0_notAfter(ca_cert.get())) > 0 &&
        X509_set1_notAfter(cert.get(), X509_get0_notAfter(ca_cert.get())) != 1) {
      crypto_fail("cannot cap the validity at the CA's");
    }
    add_ext(cert.get(), ca_cert.get(), NID_basic_constraints, "critical,CA:FALSE");
    add_ext(cert.get(), ca_cert.get(), NID_key_usage, "critical,digitalSignature");
    add_ext(cert.get(), ca_cert.get(), NID_ext_key_usage,
            is_worker ? "clientAuth" : "serverAuth,clientAuth");
    add_ext(cert.get(), ca_cert.get(), NID_subject_alt_name,
            is_worker ? "DNS:" + name : "DNS:" + name + ",DNS:localhost,IP:127.0.0.1");
    add_ext(cert.get(), ca_cert.get(), NID_subject_key_identifier, "hash");
    add_ext(cert.get(), ca_cert.get(), NID_authority_key_identifier, "keyid:always");
    sign(cert.get(), ca_key.get());

    write_new_file(kit_dir / (name + ".key"), to_pem(key.get()), 0600);
    write_new_file(kit_dir / (name + ".crt"), to_pem(cert.get()), 0644);
    write_new_file(kit_dir / "ca.crt", to_pem(ca_cert.get()), 0644);

    toml::table kit{{"name", name}, {"role", role}, {"federation", federation}};
    toml::table tls{{"ca_cert", "ca.crt"}, {"cert", name + ".crt"}, {"key", name + ".key"}};
    toml::table root_table{{"kit", kit}, {"tls", tls}};
    if (!coordinator_address.empty() || !server_name.empty()) {
      toml::table coord;
      if (!coordinator_address.empty()) coord.insert("address", coordinator_address);
      if (is_worker && !server_name.empty()) coord.insert("name", server_name);
      root_table.insert("coordinator", coord);
    }
    std::ostringstream os;
    os << "# fedtl startup kit for " << role << " '" << name << "' of federation '" << federation
       << "'.\n# Paths are relative to this directory. Keep " << name
       << ".key private: it is this party's identity.\n";
    if (is_worker) {
      os << "# [coordinator] address is where to connect; name is the certificate name the\n"
            "# coordinator must present.\n";
    } else {
      os << "# [coordinator] address, when present, is the address to listen on.\n";
    }
    os << "\n" << root_table << "\n";
    write_new_file(kit_dir / "kit.toml", os.str(), 0644);
    if (is_worker) {
      // A site.toml the hospital completes (its data) instead of retyping its kit.
      std::ostringstream site;
      site << "# fedtl worker file for site '" << name << "': `fedtl worker --config site.toml`.\n"
           << "# Paths are relative to this file. Fill in [data]; see docs/configuration.md for every key.\n\n"
           << "[site]\nname = \"" << name << "\"\ncoordinator = \""
           << (coordinator_address.empty() ? "HOST:PORT" : coordinator_address) << "\"\n";
      if (!server_name.empty()) site << "coordinator_name = \"" << server_name << "\"\n";
      site << "ca_cert = \"ca.crt\"\ncert = \"" << name << ".crt\"\nkey = \"" << name << ".key\"\n"
           << "cache_dir = \"cache\"\n\n"
           << "[data]\nsource = \"folder\"\ndir = \"/path/to/labelled/images\"   # one sub-folder per class\n\n"
           << "[policy]\n# backbone_sha256 = [\"<64 hex digits>\"]   # accept only these backbones\n"
           << "# require_secure_aggregation = true\n# min_sites = 3\n";
      write_new_file(kit_dir / "site.toml", site.str(), 0644);
    }
  } catch (...) {
    std::error_code rec;
    fs::remove_all(kit_dir, rec);  // we created it, so it holds only this kit's files
    throw;
  }
  return kit_dir.string();
}

Kit load_kit(const std::string& kit_dir_or_file) {
  std::error_code ec;
  fs::path file(kit_dir_or_file);
  if (fs::is_directory(file, ec)) file /= "kit.toml";
  toml::table t;
  try {
    t = toml::parse_file(file.string());
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    if (e.source().begin.line == 0 || !e.source().path)
      os << "cannot read kit '" << file.string() << "': " << e.description();
    else
      os << file.string() << ":" << e.source().begin.line << ":" << e.source().begin.column << ": "
         << e.description();
    throw ConfigError(os.str());
  }
  Kit k;
  k.dir = fs::absolute(file.parent_path(), ec).lexically_normal().string();
  k.name = str_or(t, "kit", "name");
  k.role = str_or(t, "kit", "role");
  k.federation = str_or(t, "kit", "federation");
  auto path_of = [&](const char* key) -> std::string {
    const std::string v = str_or(t, "tls", key);
    if (v.empty()) throw ConfigError(file.string() + ": missing tls." + key);
    const fs::path p(v);
    return p.is_absolute() ? v : (fs::path(k.dir) / p).lexically_normal().string();
  };
  if (k.name.empty()) throw ConfigError(file.string() + ": missing kit.name");
  if (k.role != "worker" && k.role != "coordinator") {
    throw ConfigError(file.string() + ": kit.role must be worker or coordinator, not '" + k.role + "'");
  }
  k.ca_cert = path_of("ca_cert");
  k.cert = path_of("cert");
  k.key = path_of("key");
  k.coordinator_address = str_or(t, "coordinator", "address");
  k.coordinator_name = str_or(t, "coordinator", "name");
  return k;
}

const char* role_name(CertRole role) { return role == CertRole::kCoordinator ? "coordinator" : "worker"; }

namespace cert_detail {

std::string openssl_error() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

std::string subject_entry(X509* cert, int nid) {
  X509_NAME* name = X509_get_subject_name(cert);
  const int idx = X509_NAME_get_index_by_NID(name, nid, -1);
  if (idx < 0) return "";
  unsigned char* utf8 = nullptr;
  const int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx)));
  if (n < 0) return "";
  std::string out(reinterpret_cast<char*>(utf8), static_cast<size_t>(n));
  OPENSSL_free(utf8);
  return out;
}


std::optional<CertRole> certificate_role(X509* cert) {
  if (!cert || !(X509_get_extension_flags(cert) & EXFLAG_XKUSAGE)) return std::nullopt;
  const uint32_t xku = X509_get_extended_key_usage(cert);
  if (xku & XKU_SSL_SERVER) return CertRole::kCoordinator;
  if (xku & XKU_SSL_CLIENT) return CertRole::kWorker;
  return std::nullopt;
}

std::string time_str(const ASN1_TIME* t) {
  std::tm tm{};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return "(unreadable time)";
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

std::string validity_problem(X509* cert, const std::string& what) {
  const ASN1_TIME* nb = X509_get0_notBefore(cert);
  const ASN1_TIME* na = X509_get0_notAfter(cert);
  const std::string span = " (valid from " + time_str(nb) + " to " + time_str(na) + ")";
  if (X509_cmp_current_time(nb) >= 0) return what + " is not valid yet: notBefore " + time_str(nb) + span;
  if (X509_cmp_current_time(na) <= 0) return what + " has expired: notAfter " + time_str(na) + span;
  return "";
}

}  // namespace cert_detail

void check_own_credentials(const std::string& ca_cert, const std::string& cert, const std::string& key,
                           CertRole role) {
  struct stat st {};
  if (::stat(key.c_str(), &st) != 0) io_fail("cannot read private key", key);
  if (st.st_mode & 077) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    throw ConfigError("private key '" + key + "' is accessible by group or others (mode " + mode +
                      "); run `chmod 600 " + key + "` and start again");
  }
  Cert own = load_cert(cert);
  const std::string cn = subject_entry(own.get(), NID_commonName);
  const std::string who = "certificate '" + cert + "'" + (cn.empty() ? "" : " (CN=" + cn + ")");
  if (const std::string p = cert_detail::validity_problem(own.get(), who); !p.empty()) throw ConfigError(p);
  const auto issued = cert_detail::certificate_role(own.get());
  if (!issued) {
    throw ConfigError(who + " carries no extendedKeyUsage saying its role (serverAuth for the coordinator, "
                      "clientAuth for a worker); issue kits with `fedtl ca issue`");
  }
  if (*issued != role) {
    throw ConfigError(who + " was issued for the " + role_name(*issued) + " role (extendedKeyUsage " +
                      (*issued == CertRole::kCoordinator ? "serverAuth" : "clientAuth only") +
                      ") and cannot serve in the " + role_name(role) + " role; use a " + role_name(role) +
                      " kit");
  }
  Cert ca = load_cert(ca_cert);
  if (const std::string p = cert_detail::validity_problem(ca.get(), "CA certificate '" + ca_cert + "'"); !p.empty())
    throw ConfigError(p);
}

}  // namespace fedtl::common

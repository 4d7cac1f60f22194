// Provisioning of a federation (`fedtl ca init` / `fedtl ca issue`), in the spirit of NVIDIA
// FLARE's startup kits: one CA per federation, and for every party (the coordinator, each
// site) a kit directory holding everything it needs to join — its key, its certificate signed
// by the CA, the CA certificate and a kit.toml describing them.
//
// Layout of a PKI directory:
//   DIR/ca.key                   CA private key (EC P-256, PEM PKCS#8, mode 0600)
//   DIR/ca.crt                   self-signed CA certificate (10 years)
//   DIR/kits/NAME/NAME.key       the party's private key (EC P-256, mode 0600)
//   DIR/kits/NAME/NAME.crt       its certificate: CN=NAME, O=<federation>, signed by the CA
//   DIR/kits/NAME/ca.crt         copy of the CA certificate
//   DIR/kits/NAME/kit.toml       see load_kit(); paths in it are relative to the kit dir
//   DIR/kits/NAME/site.toml      workers: a `fedtl worker` file with the kit filled in and
//                                [data] to complete (app/config.h SiteConfig)
//
// Certificates: leaves are valid for 3 years (never past the CA's end), carry
// extendedKeyUsage clientAuth (workers) or serverAuth+clientAuth (coordinator), and
// subjectAltName DNS:NAME (the coordinator also DNS:localhost and IP:127.0.0.1).
// The TLS transport (tls_transport.h) identifies a party by its CN.
//
// Files are created without ever replacing an existing one, keys with owner-only
// permissions. Errors: ConfigError for bad arguments or an existing CA/kit, IoError for
// file-system failures; both name the file. Not thread-safe against concurrent runs on the
// same directory (the CLI runs one at a time).
#pragma once
#include <string>

namespace fedtl::common {

// True for names usable as a party (certificate CN, kit directory, file name):
// 1-64 characters from [A-Za-z0-9._-], starting with a letter or digit, and not "ca".
bool is_valid_party_name(const std::string& name);

// Creates DIR (mode 0700 if it is created) with ca.key and ca.crt for `federation_name`
// (same character rules as a party name). Refuses (ConfigError) when DIR already has a CA.
void pki_init(const std::string& dir, const std::string& federation_name);

// Issues a kit for party `name` with `role` "worker" or "coordinator" and returns its
// directory (DIR/kits/NAME). `coordinator_address` ("host:port") is written to worker kits
// (optional for the coordinator, where it is recorded as the listen address).
// `coordinator_name` is the CN workers require of the coordinator's certificate; when empty
// it is taken from the coordinator kit already issued in DIR (if there is exactly one).
// Refuses (ConfigError) an invalid name or role, a missing CA, or an existing kit.
std::string pki_issue(const std::string& dir, const std::string& name, const std::string& role,
                      const std::string& coordinator_address = "",
                      const std::string& coordinator_name = "");

// A kit as read back from its kit.toml: paths are absolute (resolved against the kit dir).
struct Kit {
  std::string dir;
  std::string name, role, federation;
  std::string ca_cert, cert, key;
  std::string coordinator_address;  // worker: where to connect; coordinator: listen address
  std::string coordinator_name;     // worker: CN the coordinator must present ("" = any)
};

// Reads KIT_DIR/kit.toml (or the .toml file itself when given one). Throws ConfigError naming
// the file when it is missing, malformed, or lacks a required key.
Kit load_kit(const std::string& kit_dir_or_file);

// The role a certificate was issued for, as its extendedKeyUsage says (see above): serverAuth
// => the coordinator (it also carries clientAuth), clientAuth alone => a worker (a site).
enum class CertRole { kWorker, kCoordinator };
const char* role_name(CertRole role);  // "worker" / "coordinator"

// Checks a party's own TLS files before they are used (TLS listen/connect call it). Throws
// ConfigError, one line naming the file, when:
//  - the private key file grants any permission to group or others (the message gives the
//    `chmod 600 PATH` to run); the key is never read in that case;
//  - the certificate (the first one in `cert`) is not valid now: expired or not yet valid,
//    with its notBefore/notAfter dates; the same for the first certificate in `ca_cert`;
//  - the certificate was not issued for `role` (a coordinator kit used as a site, a site kit
//    serving as the coordinator) or carries no extendedKeyUsage saying which.
// IoError when a file cannot be read.
void check_own_credentials(const std::string& ca_cert, const std::string& cert, const std::string& key,
                           CertRole role);

}  // namespace fedtl::common

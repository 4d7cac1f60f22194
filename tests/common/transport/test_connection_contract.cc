// The Connection contract suite (connection_contract.h) instantiated for the in-process and
// the TLS backends. The MPI instantiation lives in tests/mpi (it needs mpirun).
#include "connection_contract.h"

#include <stdlib.h>

#include <filesystem>
#include <future>
#include <mutex>

#include "common/transport/inproc.h"
#include "common/transport/pki.h"
#include "common/transport/tls.h"

namespace fedtl::common::contract {
namespace {

class InprocFactory final : public PairFactory {
 public:
  std::string name() const override { return "inproc"; }
  Pair make(uint32_t max_frame_bytes) override {
    auto [server, client] = make_inproc_pair("site", "coordinator", max_frame_bytes);
    return Pair{std::move(client), std::move(server), nullptr};
  }
};

// Mutual TLS over loopback with a federation PKI made once per process (as test_tls.cc does)
// and removed at exit. One listener per pair; the pair outlives it.
class TlsFactory final : public PairFactory {
 public:
  std::string name() const override { return "tls"; }
  Pair make(uint32_t max_frame_bytes) override {
    std::call_once(once_, [this] { make_pki(); });
    TlsConfig s = config("coordinator", max_frame_bytes);
    s.allowed_names = {"site-a"};
    TlsConfig c = config("site-a", max_frame_bytes);
    c.expected_server_name = "coordinator";
    auto listener = tls_listen("127.0.0.1", 0, s);
    auto client = std::async(std::launch::async,
                             [&] { return tls_connect("127.0.0.1", listener->port(), c, std::chrono::seconds(5)); });
    auto server = listener->accept(std::chrono::seconds(5));
    return Pair{client.get(), std::move(server), nullptr};
  }

 private:
  void make_pki() {
    char tmpl[] = "/tmp/fedtl_contract_XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
    pki_init(dir_ + "/pki", "contractfed");
    pki_issue(dir_ + "/pki", "coordinator", "coordinator", "127.0.0.1:8443");
    pki_issue(dir_ + "/pki", "site-a", "worker", "127.0.0.1:8443");
    static std::string* dir_at_exit = new std::string(dir_);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(*dir_at_exit, ec);
    });
  }
  TlsConfig config(const std::string& who, uint32_t max_frame_bytes) const {
    const Kit k = load_kit(dir_ + "/pki/kits/" + who);
    TlsConfig t;
    t.ca_cert = k.ca_cert;
    t.cert = k.cert;
    t.key = k.key;
    t.max_frame_bytes = max_frame_bytes;
    t.handshake_timeout = std::chrono::seconds(5);
    return t;
  }
  std::once_flag once_;
  std::string dir_;
};

InprocFactory g_inproc;
TlsFactory g_tls;

std::string param_name(const ::testing::TestParamInfo<PairFactory*>& info) { return info.param->name(); }

INSTANTIATE_TEST_SUITE_P(Transport, ConnectionContract, ::testing::Values<PairFactory*>(&g_inproc, &g_tls),
                         param_name);

}  // namespace
}  // namespace fedtl::common::contract

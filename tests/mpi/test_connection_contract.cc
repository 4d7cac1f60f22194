// The Connection contract suite (tests/common/transport/connection_contract.h) for the MPI
// backend. A pair inside one process is impossible over MPI (a connection is "this rank <->
// peer rank"; two connections of one rank to itself would match each other's messages), so
// every case runs its two ends on the two ranks: rank 0 holds the server end, rank 1 the client
// end, and the suite's rendezvous is a (polled) barrier between them. Each case gets a fresh
// transport communicator, so a close message left over by one case never reaches the next.
// Needs exactly 2 ranks (ctest: mpi.transport, whose filter includes MpiTransport/*);
// skipped otherwise.
#include "tests/common/transport/connection_contract.h"

#include "common/transport/mpi.h"
#include "mpi_test_env.h"

namespace fedtl::common::contract {
namespace {

class MpiFactory final : public PairFactory {
 public:
  std::string name() const override { return "mpi"; }
  std::string unavailable() const override {
    auto* ctx = mpitest::mpi_test_context();
    if (!ctx) return "not started by mpirun";
    if (ctx->size() != 2) return "the MPI contract cases need exactly 2 ranks";
    return "";
  }
  Pair make(uint32_t max_frame_bytes) override {
    auto* ctx = mpitest::mpi_test_context();
    auto comm = std::make_shared<mpi::TransportComm>(*ctx);  // collective
    mpi::MpiConnectionOptions opt;
    opt.max_frame_bytes = max_frame_bytes;
    opt.linger = std::chrono::seconds(2);
    const int rank = ctx->rank();
    Pair p;
    auto conn = mpi::make_mpi_connection(*comm, 1 - rank, rank == 0 ? "site-1" : "coordinator", opt);
    if (rank == 0)
      p.server = std::move(conn);
    else
      p.client = std::move(conn);
    p.keep = comm;
    return p;
  }
  bool cross_sync(Millis timeout) override { return mpitest::mpi_test_context()->barrier(timeout, "contract sync"); }
  void finish() override { mpitest::mpi_test_context()->barrier(std::chrono::seconds(30), "contract case end"); }
};

MpiFactory g_mpi;

std::string param_name(const ::testing::TestParamInfo<PairFactory*>& info) { return info.param->name(); }

INSTANTIATE_TEST_SUITE_P(MpiTransport, ConnectionContract, ::testing::Values<PairFactory*>(&g_mpi), param_name);

}  // namespace
}  // namespace fedtl::common::contract

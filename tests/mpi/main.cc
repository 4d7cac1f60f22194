#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <memory>

#include "common/errors.h"
#include "common/data/datasets.h"
#include "common/files.h"
#include "common/model/transfer_model.h"
#include "mpi_test_env.h"

namespace fs = std::filesystem;

namespace fedtl::mpitest {
namespace {
common::mpi::MpiContext* g_ctx = nullptr;  // owned by main()
std::string g_dir;                           // shared_test_dir(), once made
}

common::mpi::MpiContext* mpi_test_context() { return g_ctx; }

std::string shared_test_dir() {
  std::string& dir = g_dir;
  if (!dir.empty()) return dir;
  long long id = static_cast<long long>(::getpid());
  if (g_ctx) MPI_Bcast(&id, 1, MPI_LONG_LONG, 0, g_ctx->world());
  dir = (fs::temp_directory_path() / ("fedtl_mpi_test_" + std::to_string(id))).string();
  if (!g_ctx || g_ctx->rank() == 0) fs::create_directories(dir);
  if (g_ctx) MPI_Barrier(g_ctx->world());
  return dir;
}

bool have_fashion_mnist() {
  return fs::exists(std::string(common::kFashionMnistDir) + "/t10k-images-idx3-ubyte.gz");
}

app::JobConfig small_mpi_job(const std::string& out_name, int sites) {
  const std::string dir = shared_test_dir();
  const std::string backbone = dir + "/backbone.pt";
  if ((!g_ctx || g_ctx->rank() == 0) && !fs::exists(backbone))
    common::write_file_atomic(backbone, common::model::builtin_cnn(common::model::InputSpec{}, 1));
  std::string toml = R"(
[job]
name = "mpi-e2e"
seed = 5
sites = )" + std::to_string(sites) + R"(
rounds = 2
[partition]
scheme = "dirichlet"
alpha = 1.0
samples_per_site = 100
[backbone]
path = ")" + backbone + R"("
pretrain_if_missing = false
[train]
epochs = 2
[server]
strategy = "fedavg"
)";
  auto cfg = app::parse_job_config(toml, "mpi-e2e.toml");
  cfg.out = dir + "/" + out_name;
  return cfg;
}

// On ranks other than 0: failures only, each line prefixed with the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                 r.line_number(), r.summary());
  }
  void OnTestEnd(const ::testing::TestInfo& t) override {
    if (t.result()->Failed()) std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, t.test_suite_name(), t.name());
  }

 private:
  int rank_;
};

}  // namespace fedtl::mpitest

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  std::unique_ptr<fedtl::common::mpi::MpiContext> ctx;
  if (std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK")) {
    ctx = std::make_unique<fedtl::common::mpi::MpiContext>(&argc, &argv);
    fedtl::mpitest::g_ctx = ctx.get();
    if (ctx->rank() != 0) {  // one report per job
      auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
      delete listeners.Release(listeners.default_result_printer());
      listeners.Append(new fedtl::mpitest::FailurePrinter(ctx->rank()));
    }
  }
  const int rc = RUN_ALL_TESTS();
  int all = rc;
  if (ctx) {
    MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MAX, ctx->world());
    if (ctx->rank() == 0 && all != rc) std::fprintf(stderr, "test_mpi: a test failed on another rank\n");
    if (ctx->rank() == 0 && !fedtl::mpitest::g_dir.empty()) fs::remove_all(fedtl::mpitest::g_dir);
  }
  fedtl::mpitest::g_ctx = nullptr;
  ctx.reset();
  return all;
}

// Multi-rank sites: world layout, the site's instructions, and gradient averaging. Run with
// mpirun -np 3 (rank 0 coordinator, one site of two ranks).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "common/errors.h"
#include "common/model/transfer_model.h"
#include "common/mpi/site_sync.h"
#include "mpi_test_env.h"

#ifdef FEDTL_WITH_NCCL
#include <cuda_runtime.h>
#endif

using namespace fedtl;
using common::mpi::SiteComm;
using common::mpi::SiteLayout;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

TEST(SiteLayoutTest, SplitsTheWorldIntoCoordinatorAndSites) {
  const auto l = SiteLayout::make(7, 3, 2);
  EXPECT_EQ(l.site_of(0), -1);
  EXPECT_EQ(l.site_of(1), 0);
  EXPECT_EQ(l.site_of(2), 0);
  EXPECT_EQ(l.site_of(3), 1);
  EXPECT_EQ(l.site_of(6), 2);
  EXPECT_EQ(l.rank_in_site(4), 1);
  EXPECT_EQ(l.leader_of(2), 5);
  try {
    SiteLayout::make(4, 3, 2);
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("mpirun -np 7"), std::string::npos) << e.what();
  }
  EXPECT_THROW(SiteLayout::make(4, 3, 0), ConfigError);
}

// A fixture over a world of 1 + 1 x k ranks: one site of every rank but rank 0.
class SiteSync : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_ = mpitest::mpi_test_context();
    if (!ctx_) GTEST_SKIP() << "not started by mpirun";
    if (ctx_->size() < 3) GTEST_SKIP() << "needs a site of at least 2 ranks (mpirun -np 3)";
    layout_ = SiteLayout::make(ctx_->size(), 1, ctx_->size() - 1);
    site_ = std::make_unique<SiteComm>(*ctx_, layout_);
  }
  void TearDown() override {
    site_.reset();
    if (ctx_) MPI_Barrier(ctx_->world());
  }
  common::mpi::MpiContext* ctx_ = nullptr;
  SiteLayout layout_;
  std::unique_ptr<SiteComm> site_;
};

TEST_F(SiteSync, SiteCommunicatorAndInstructions) {
  if (ctx_->rank() == 0) {
    EXPECT_FALSE(site_->valid());
    return;
  }
  ASSERT_TRUE(site_->valid());
  EXPECT_EQ(site_->size(), ctx_->size() - 1);
  EXPECT_EQ(site_->rank(), ctx_->rank() - 1);
  common::mpi::SiteCommand cmd;
  if (site_->rank() == 0) {
    cmd.kind = common::mpi::SiteCommand::kTrain;
    cmd.round = 7;
    cmd.payload = std::string(5u << 20, 'p');
  }
  common::mpi::exchange_command(*site_, cmd, seconds(30));
  EXPECT_EQ(cmd.kind, common::mpi::SiteCommand::kTrain);
  EXPECT_EQ(cmd.round, 7u);
  EXPECT_EQ(cmd.payload, std::string(5u << 20, 'p'));
  double v[2] = {1.0, static_cast<double>(site_->rank())};
  common::mpi::site_sum(*site_, v, 2, seconds(30));
  EXPECT_DOUBLE_EQ(v[0], site_->size());
}

TEST_F(SiteSync, WaitingForAnInstructionEndsAtItsDeadline) {
  if (ctx_->rank() == 0) return;
  if (site_->rank() != 0) {
    common::mpi::SiteCommand none;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      common::mpi::exchange_command(*site_, none, milliseconds(200));
      ADD_FAILURE() << "expected TimeoutError";
    } catch (const TimeoutError& e) {
      EXPECT_NE(std::string(e.what()).find("rank 0 sent no instruction"), std::string::npos) << e.what();
    }
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  }
  // The leader's late instruction completes the posted wait (so nothing stays pending), but
  // the followers no longer take part: the site's communicator is spent.
  MPI_Barrier(site_->comm());
  if (site_->rank() == 0) {
    common::mpi::SiteCommand stop;
    common::mpi::exchange_command(*site_, stop, seconds(30));
  }
  MPI_Barrier(site_->comm());
}

// Deterministic images and labels (the same on every rank).
common::ImageSet synthetic_images(int64_t n) {
  common::ImageSet s;
  s.channels = 1;
  s.height = s.width = 28;
  std::mt19937 rng(42);
  s.pixels.resize(static_cast<size_t>(n * 28 * 28));
  for (auto& p : s.pixels) p = static_cast<uint8_t>(rng() & 0xff);
  for (int64_t i = 0; i < n; ++i) s.labels.push_back(i % 5);
  return s;
}

TEST_F(SiteSync, TwoRanksAverageToTheWholeBatchGradient) {
  if (ctx_->rank() == 0) return;
  const int k = site_->size();
  const auto images = synthetic_images(32 * k * 2);  // two steps of batch 32k per epoch
  common::model::ModelSpec spec;
  const std::string backbone = common::model::builtin_cnn(common::model::InputSpec{}, 3);
  auto make = [&] { return common::model::TransferModel::create(backbone, spec, 9); };
  common::model::TrainOptions opt;
  opt.lr = 0.1;
  opt.epochs = 2;
  opt.batch_size = 32 * k;
  opt.seed = 1234;

  // One rank, the whole batch: record the gradient of every step.
  auto whole = make();
  auto whole_fs = whole->features(images);
  std::vector<std::vector<float>> whole_grads;
  common::model::TrainOptions one = opt;
  one.average_gradients = [&](float* g, size_t n, bool) { whole_grads.emplace_back(g, g + n); };
  whole->train(*whole_fs, one);

  // k ranks, a slice each, averaged over the site.
  auto averager = common::mpi::make_mpi_averager(*site_, seconds(60));
  EXPECT_EQ(averager->name(), "mpi");
  auto part = make();
  auto part_fs = part->features(images);
  std::vector<std::vector<float>> site_grads;
  common::model::TrainOptions dp = opt;
  dp.rank_in_site = site_->rank();
  dp.ranks_in_site = k;
  dp.prescale_host_gradients = averager->expects_prescaled();
  EXPECT_TRUE(dp.prescale_host_gradients);  // MPI only sums: the packing divides by k
  dp.average_gradients = [&](float* g, size_t n, bool on_cuda) {
    ASSERT_FALSE(on_cuda);
    averager->average(g, n);
    site_grads.emplace_back(g, g + n);
  };
  part->train(*part_fs, dp);

  ASSERT_EQ(site_grads.size(), whole_grads.size());
  ASSERT_EQ(site_grads.size(), 4u);
  for (size_t s = 0; s < site_grads.size(); ++s) {
    ASSERT_EQ(site_grads[s].size(), whole_grads[s].size());
    double max_diff = 0, max_abs = 0;
    for (size_t i = 0; i < site_grads[s].size(); ++i) {
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(site_grads[s][i] - whole_grads[s][i])));
      max_abs = std::max(max_abs, static_cast<double>(std::fabs(whole_grads[s][i])));
    }
    EXPECT_GT(max_abs, 0.0);
    EXPECT_LE(max_diff, 1e-5 * std::max(1.0, max_abs)) << "step " << s;
  }
  const auto a = whole->params(), b = part->params();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-5) << "parameter " << i;
}

TEST_F(SiteSync, NcclAllreduceMatchesMpiAllreduce) {
#ifndef FEDTL_WITH_NCCL
  GTEST_SKIP() << "built without NCCL (FEDTL_WITH_NCCL off): nothing to compare";
#else
  if (ctx_->rank() == 0) GTEST_SKIP() << "rank 0 is the coordinator, not part of a site";
  std::string why;
  const int devices = common::mpi::cuda_device_count(&why);
  if (devices == 0) GTEST_SKIP() << "no CUDA device here (" << why << "); the NCCL path is built but not run";
  if (devices < site_->size())
    GTEST_SKIP() << "NCCL needs one GPU per rank: " << devices << " device(s) for a site of " << site_->size()
                 << " ranks";
  const int dev = common::mpi::select_cuda_device(site_->rank());  // one device per rank of the site
  ASSERT_GE(dev, 0);
  auto nccl = common::mpi::make_nccl_averager(*site_, dev, seconds(60));
  auto mpi = common::mpi::make_mpi_averager(*site_, seconds(60));
  EXPECT_EQ(nccl->name(), "nccl");
  for (size_t n : {size_t{1}, size_t{1000}, size_t{1} << 20}) {
    std::vector<float> host(n);
    std::mt19937 rng(static_cast<unsigned>(100 + site_->rank()));
    std::uniform_real_distribution<float> u(-1, 1);
    for (auto& x : host) x = u(rng);
    float* d = nullptr;
    ASSERT_EQ(cudaMalloc(&d, n * sizeof(float)), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(d, host.data(), n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
    nccl->average(d, n);
    std::vector<float> from_gpu(n);
    ASSERT_EQ(cudaMemcpy(from_gpu.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    cudaFree(d);
    EXPECT_FALSE(nccl->expects_prescaled());
    ASSERT_TRUE(mpi->expects_prescaled());  // MPI sums what each rank divided by the site's size
    for (auto& x : host) x /= static_cast<float>(site_->size());
    mpi->average(host.data(), n);
    for (size_t i = 0; i < n; ++i) ASSERT_NEAR(from_gpu[i], host[i], 1e-6f) << "n=" << n << " i=" << i;
  }
#endif
}

}  // namespace

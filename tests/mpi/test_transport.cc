// The MPI backend of the transport interface, between ranks 0 and 1 (mpirun -np 2 or more;
// other ranks only join the collective set-up).
#include <gtest/gtest.h>

#include <thread>

#include "common/errors.h"
#include "common/transport/mpi.h"
#include "mpi_test_env.h"

using namespace fedtl;
using common::Frame;
using common::mpi::TransportComm;
using common::MessageType;
using std::chrono::milliseconds;

namespace {

class MpiTransport : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_ = mpitest::mpi_test_context();
    if (!ctx_) GTEST_SKIP() << "not started by mpirun";
    if (ctx_->size() < 2) GTEST_SKIP() << "needs 2 ranks";
    comm_ = std::make_unique<TransportComm>(*ctx_);
    rank_ = ctx_->rank();
    if (rank_ <= 1) conn_ = common::mpi::make_mpi_connection(*comm_, 1 - rank_, rank_ == 0 ? "site-0" : "coordinator");
  }
  void TearDown() override {
    conn_.reset();
    if (ctx_) MPI_Barrier(ctx_->world());
    comm_.reset();
  }
  common::mpi::MpiContext* ctx_ = nullptr;
  std::unique_ptr<TransportComm> comm_;
  std::unique_ptr<common::Connection> conn_;
  int rank_ = 0;
};

Frame frame(MessageType t, size_t n, char fill) { return Frame{t, std::string(n, fill)}; }

TEST_F(MpiTransport, FramesArriveWholeAndInOrderBothWays) {
  if (rank_ > 1) return;
  const std::vector<size_t> sizes = {0, 1, 1000, 3u << 20, 17};
  if (rank_ == 0) {
    EXPECT_EQ(conn_->peer_name(), "site-0");
    for (size_t i = 0; i < sizes.size(); ++i) conn_->send(frame(MessageType::kRoundStart, sizes[i], char('a' + i)));
    for (size_t i = 0; i < sizes.size(); ++i) {
      Frame f = conn_->recv(milliseconds(20000));
      EXPECT_EQ(f.type, MessageType::kUpdate);
      EXPECT_EQ(f.payload, std::string(sizes[i], char('A' + i)));
    }
  } else {
    EXPECT_EQ(conn_->peer_name(), "coordinator");
    for (size_t i = 0; i < sizes.size(); ++i) {
      Frame f = conn_->recv(milliseconds(20000));
      EXPECT_EQ(f.type, MessageType::kRoundStart);
      EXPECT_EQ(f.payload, std::string(sizes[i], char('a' + i)));
      conn_->send(frame(MessageType::kUpdate, sizes[i], char('A' + i)));
    }
  }
  uint64_t total = 0;
  for (size_t n : sizes) total += n + common::kFrameHeaderSize;
  EXPECT_EQ(conn_->bytes_sent(), total);
  EXPECT_EQ(conn_->bytes_received(), total);
}

TEST_F(MpiTransport, RecvHonoursItsTimeoutAndStaysUsable) {
  if (rank_ > 1) return;
  if (rank_ == 1) {
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_THROW(conn_->recv(milliseconds(100)), TimeoutError);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_GE(s, 0.09);
    EXPECT_LT(s, 2.0);
    conn_->send(frame(MessageType::kHeartbeat, 0, 0));  // tell rank 0 we timed out
    EXPECT_EQ(conn_->recv(milliseconds(20000)).type, MessageType::kReady);
  } else {
    EXPECT_EQ(conn_->recv(milliseconds(20000)).type, MessageType::kHeartbeat);
    conn_->send(frame(MessageType::kReady, 5, 'r'));
  }
}

TEST_F(MpiTransport, CloseDeliversQueuedFramesThenTransportError) {
  if (rank_ > 1) return;
  if (rank_ == 0) {
    conn_->send(frame(MessageType::kShutdown, 10, 's'));
    conn_->close();
    EXPECT_THROW(conn_->send(frame(MessageType::kShutdown, 1, 's')), TransportError);
    EXPECT_THROW(conn_->recv(milliseconds(10)), TransportError);
  } else {
    EXPECT_EQ(conn_->recv(milliseconds(20000)).type, MessageType::kShutdown);
    try {
      conn_->recv(milliseconds(20000));
      ADD_FAILURE() << "expected TransportError";
    } catch (const TimeoutError&) {
      ADD_FAILURE() << "expected TransportError, got a timeout";
    } catch (const TransportError& e) {
      EXPECT_NE(std::string(e.what()).find("closed"), std::string::npos) << e.what();
    }
    EXPECT_THROW(conn_->send(frame(MessageType::kUpdate, 1, 'u')), TransportError);
  }
}

TEST_F(MpiTransport, MalformedOrOversizedFrameIsProtocolErrorAndCloses) {
  TransportComm comm2(*ctx_);  // collective: before ranks > 1 leave
  if (rank_ > 1) return;
  if (rank_ == 0) {
    const std::string junk = "this is not a fedtl frame at all";
    MPI_Send(junk.data(), static_cast<int>(junk.size()), MPI_BYTE, 1, common::mpi::kFrameTag, comm_->comm());
  } else {
    EXPECT_THROW(conn_->recv(milliseconds(20000)), ProtocolError);
    EXPECT_THROW(conn_->send(frame(MessageType::kUpdate, 1, 'u')), TransportError);
  }
  MPI_Barrier(ctx_->world());
  // A frame over the receiver's limit (on a fresh communicator: the first one carries the
  // close message of the connection that just failed).
  common::mpi::MpiConnectionOptions opt;
  opt.max_frame_bytes = 1024;
  auto c = common::mpi::make_mpi_connection(comm2, 1 - rank_, "peer", opt);
  if (rank_ == 0) {
    c->send(frame(MessageType::kUpdate, 4096, 'x'));
    // The receiver closed: its close message arrives.
    EXPECT_THROW(c->recv(milliseconds(20000)), TransportError);
  } else {
    try {
      c->recv(milliseconds(20000));
      ADD_FAILURE() << "expected ProtocolError";
    } catch (const ProtocolError& e) {
      EXPECT_NE(std::string(e.what()).find("exceeds"), std::string::npos) << e.what();
    }
  }
  c.reset();
}

TEST_F(MpiTransport, OneThreadSendsWhileAnotherReceives) {
  if (rank_ > 1) return;
  constexpr int kFrames = 200;
  std::thread reader([&] {
    for (int i = 0; i < kFrames; ++i) {
      Frame f = conn_->recv(milliseconds(20000));
      ASSERT_EQ(f.payload, std::to_string(i));
    }
  });
  for (int i = 0; i < kFrames; ++i) conn_->send(Frame{MessageType::kHeartbeat, std::to_string(i)});
  reader.join();
}

}  // namespace

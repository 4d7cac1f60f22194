// MPI connections. Outgoing frames wait in `pending_` (buffer + request) until MPI_Test says
// they left; incoming frames are matched with MPI_Improbe, so a message is taken off the
// queue only once its size is known, and received with MPI_Imrecv into a buffer of that size.
#include "common/transport/mpi.h"

#include <atomic>
#include <deque>
#include <limits>

#include "common/errors.h"

namespace fedtl::common::mpi {
namespace {

using Clock = std::chrono::steady_clock;

Clock::time_point deadline_after(Millis timeout) {
  const auto cap = std::chrono::hours(24 * 365 * 10);  // Millis::max() means "forever"
  return Clock::now() + std::min<Millis>(timeout, cap);
}

class MpiConnection final : public Connection {
 public:
  MpiConnection(TransportComm& comm, int peer, std::string name, MpiConnectionOptions opt)
      : tcomm_(comm), ctx_(comm.context()), comm_(comm.comm()), peer_(peer), name_(std::move(name)), opt_(opt) {}

  ~MpiConnection() override {
    try {
      close();
      // Let the frames (and the close message) still in flight leave before their buffers go.
      if (!drain(deadline_after(opt_.linger))) orphan_pending();
    } catch (const std::exception&) {
      orphan_pending();
    }
  }

  void send(const Frame& frame) override {
    if (closed_here_ || peer_closed_ || broken_)
      throw TransportError("MPI connection to " + name_ + " is closed");
    Outgoing out;
    out.bytes = std::make_unique<std::string>(common::encode_frame(frame));
    const size_t n = out.bytes->size();
    if (n > static_cast<size_t>(std::numeric_limits<int>::max()))
      throw ProtocolError("frame of " + std::to_string(n) + " bytes is too large for one MPI message");
    // Bound what is in flight: wait for the oldest sends when over the limit.
    if (pending_bytes_ + n > opt_.max_pending_bytes && !drain(deadline_after(opt_.send_timeout), n)) {
      broken_ = true;
      throw TransportError(name_ + " did not take delivery of " + std::to_string(pending_bytes_) + " bytes within " +
                           std::to_string(opt_.send_timeout.count()) + " ms");
    }
    {
      std::lock_guard<std::mutex> lock(ctx_.mutex());
      reap_locked();
      check(MPI_Isend(out.bytes->data(), static_cast<int>(n), MPI_BYTE, peer_, kFrameTag, comm_, &out.req),
            ("sending to " + name_).c_str());
      pending_bytes_ += n;
      pending_.push_back(std::move(out));
    }
    sent_ += n;
  }

  Frame recv(Millis timeout) override {
    if (closed_here_ || broken_) throw TransportError("MPI connection to " + name_ + " is closed");
    if (peer_closed_) throw TransportError(name_ + " closed the MPI connection");
    MPI_Message msg = MPI_MESSAGE_NULL;
    MPI_Status st;
    int rc = MPI_SUCCESS;
    const bool matched = poll_until(ctx_, deadline_after(timeout), [&] {
      if (closed_here_) return true;  // close() from another thread wakes this receive
      reap_locked();
      int flag = 0;
      rc = MPI_Improbe(peer_, MPI_ANY_TAG, comm_, &flag, &msg, &st);
      return rc != MPI_SUCCESS || flag != 0;
    });
    if (closed_here_) throw TransportError("MPI connection to " + name_ + " is closed");
    check(rc, ("waiting for a message from " + name_).c_str());
    if (!matched)
      throw TimeoutError("no message from " + name_ + " within " + std::to_string(timeout.count()) + " ms");
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    const bool is_close = st.MPI_TAG == kCloseTag;
    if (!is_close && st.MPI_TAG != kFrameTag) {
      discard(msg, count);
      fail_protocol("unexpected MPI tag " + std::to_string(st.MPI_TAG) + " from " + name_);
    }
    if (!is_close && static_cast<uint64_t>(count) > uint64_t{opt_.max_frame_bytes} + common::kFrameHeaderSize) {
      discard(msg, count);
      fail_protocol("frame of " + std::to_string(count) + " bytes from " + name_ + " exceeds the limit of " +
                    std::to_string(opt_.max_frame_bytes) + " bytes");
    }
    auto buf = std::make_unique<std::string>(static_cast<size_t>(count), '\0');
    std::string& bytes = *buf;
    MPI_Request req = MPI_REQUEST_NULL;
    {
      std::lock_guard<std::mutex> lock(ctx_.mutex());
      check(MPI_Imrecv(bytes.data(), count, MPI_BYTE, &msg, &req), ("receiving from " + name_).c_str());
    }
    const bool done = poll_until(ctx_, deadline_after(opt_.send_timeout), [&] {
      int flag = 0;
      rc = MPI_Test(&req, &flag, MPI_STATUS_IGNORE);
      return rc != MPI_SUCCESS || flag != 0;
    });
    check(rc, ("receiving from " + name_).c_str());
    if (!done) {
      broken_ = true;
      {
        std::lock_guard<std::mutex> lock(ctx_.mutex());
        tcomm_.keep_alive(std::move(buf));
      }
      throw TransportError("a message from " + name_ + " did not arrive in full within " +
                           std::to_string(opt_.send_timeout.count()) + " ms");
    }
    if (is_close) {
      peer_closed_ = true;
      throw TransportError(name_ + " closed the MPI connection");
    }
    received_ += bytes.size();
    try {
      return common::decode_frame(bytes, opt_.max_frame_bytes);
    } catch (const ProtocolError&) {
      close();
      throw;
    }
  }

  void close() override {
    if (closed_here_) return;
    closed_here_ = true;
    if (peer_closed_ || broken_) return;
    Outgoing out;
    out.bytes = std::make_unique<std::string>();
    std::lock_guard<std::mutex> lock(ctx_.mutex());
    if (MPI_Isend(nullptr, 0, MPI_BYTE, peer_, kCloseTag, comm_, &out.req) == MPI_SUCCESS)
      pending_.push_back(std::move(out));
  }

  std::string peer_name() const override { return name_; }
  uint64_t bytes_sent() const override { return sent_.load(); }
  uint64_t bytes_received() const override { return received_.load(); }

 private:
  struct Outgoing {
    std::unique_ptr<std::string> bytes;  // stable address while MPI reads it
    MPI_Request req = MPI_REQUEST_NULL;
  };

  // Completes finished sends, oldest first (caller holds the context mutex).
  void reap_locked() {
    while (!pending_.empty()) {
      int flag = 0;
      const int rc = MPI_Test(&pending_.front().req, &flag, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) {
        broken_ = true;
        check(rc, ("sending to " + name_).c_str());
      }
      if (!flag) return;
      pending_bytes_ -= pending_.front().bytes->size();
      pending_.pop_front();
    }
  }

  // Waits until at most max_pending_bytes - room bytes are in flight (room 0 with an empty
  // limit: everything). Returns false at the deadline.
  bool drain(Clock::time_point deadline, size_t room = SIZE_MAX) {
    return poll_until(ctx_, deadline, [&] {
      reap_locked();
      if (room == SIZE_MAX) return pending_.empty();
      return pending_bytes_ + room <= opt_.max_pending_bytes || pending_.empty();
    });
  }

  // Sends that never completed keep their buffers for the life of the process: MPI may still
  // read them, and the job is failing anyway.
  void orphan_pending() {
    std::lock_guard<std::mutex> lock(ctx_.mutex());
    for (auto& o : pending_) tcomm_.keep_alive(std::move(o.bytes));
    pending_.clear();
  }

  void discard(MPI_Message& msg, int count) {
    // A matched message must be received; take it into a scratch buffer (bounded by what
    // MPI already holds for us) and drop it.
    std::string scratch(static_cast<size_t>(count), '\0');
    std::lock_guard<std::mutex> lock(ctx_.mutex());
    MPI_Mrecv(scratch.data(), count, MPI_BYTE, &msg, MPI_STATUS_IGNORE);
  }

  [[noreturn]] void fail_protocol(const std::string& why) {
    close();
    throw ProtocolError(why);
  }

  TransportComm& tcomm_;
  MpiContext& ctx_;
  MPI_Comm comm_;
  int peer_;
  std::string name_;
  MpiConnectionOptions opt_;
  std::deque<Outgoing> pending_;  // guarded by the context mutex
  size_t pending_bytes_ = 0;
  std::atomic<bool> closed_here_{false}, peer_closed_{false}, broken_{false};
  std::atomic<uint64_t> sent_{0}, received_{0};
};

}  // namespace

TransportComm::TransportComm(MpiContext& ctx) : ctx_(ctx) {
  std::lock_guard<std::mutex> lock(ctx_.mutex());
  check(MPI_Comm_dup(ctx_.world(), &comm_), "MPI_Comm_dup (transport)");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
}

TransportComm::~TransportComm() {
  std::lock_guard<std::mutex> lock(ctx_.mutex());
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  // MPI may still read buffers of sends that never completed: they stay allocated.
  for (auto& b : orphans_) (void)b.release();
}

std::unique_ptr<Connection> make_mpi_connection(TransportComm& comm, int peer_rank, std::string peer_name,
                                                MpiConnectionOptions options) {
  int size = 0;
  MPI_Comm_size(comm.comm(), &size);
  if (peer_rank < 0 || peer_rank >= size)
    throw TransportError("MPI peer rank " + std::to_string(peer_rank) + " is outside the world of " +
                         std::to_string(size) + " ranks");
  return std::make_unique<MpiConnection>(comm, peer_rank, std::move(peer_name), options);
}

}  // namespace fedtl::common::mpi

// MPI backend of the transport interface (common/transport.h): a Connection between this
// rank and one peer rank. A frame travels as one MPI message of its wire encoding
// (common::encode_frame, tag kFrameTag) on a communicator reserved for the transport;
// close() sends an empty kCloseTag message, the MPI counterpart of TCP's FIN (MPI keeps
// messages between two ranks in order, so the peer first receives every frame sent before).
//
//  - send() hands the frame to MPI_Isend and returns (the frame is copied; the send
//    completes in the background and is reaped by later calls). Throws TransportError when
//    the connection is closed or broken, or when more than `max_pending_bytes` are still in
//    flight after `send_timeout` (a peer that stopped receiving).
//  - recv(timeout) polls MPI_Improbe until `timeout` (TimeoutError; the connection stays
//    usable), then receives the matched message with MPI_Imrecv. A peer's close:
//    TransportError. A frame that does not decode (or exceeds max_frame_bytes):
//    ProtocolError, and the connection is closed.
//  - Ranks that die are not seen by MPI point-to-point calls (Open MPI's mpirun stops the
//    job instead); a peer that hangs shows as recv timeouts.
//
// Thread safety: as Connection's contract (one sender and one receiver at a time); every
// MPI call holds the context's mutex. The context and the communicator must outlive the
// connection.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "common/mpi/mpi_context.h"
#include "common/transport/connection.h"

namespace fedtl::common::mpi {

inline constexpr int kFrameTag = 1;
inline constexpr int kCloseTag = 2;

struct MpiConnectionOptions {
  uint32_t max_frame_bytes = common::kDefaultMaxFrameBytes;
  // How long a send waits for earlier sends to drain once more than max_pending_bytes are
  // in flight, and how long a matched message may take to arrive in full.
  Millis send_timeout{std::chrono::minutes(5)};
  size_t max_pending_bytes = size_t{1} << 30;
  // How long the destructor waits for sends still in flight before giving up on them.
  Millis linger{std::chrono::seconds(10)};
};

// A communicator for point-to-point transport traffic: a duplicate of ctx.world() with
// MPI_ERRORS_RETURN, so frames never match fedtl's other messages. Collective over the
// world; freed by the destructor (every connection on it must be gone by then).
class TransportComm {
 public:
  explicit TransportComm(MpiContext& ctx);
  ~TransportComm();
  TransportComm(const TransportComm&) = delete;
  TransportComm& operator=(const TransportComm&) = delete;
  MpiContext& context() const { return ctx_; }
  MPI_Comm comm() const { return comm_; }
  // Keeps the buffer of a send or receive that never completed (MPI may still touch it)
  // until the process ends. Caller holds the context mutex.
  void keep_alive(std::unique_ptr<std::string> buffer) { orphans_.push_back(std::move(buffer)); }

 private:
  MpiContext& ctx_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  std::vector<std::unique_ptr<std::string>> orphans_;
};

// The connection from this rank to `peer_rank` of `comm`; `peer_name` is what peer_name()
// reports (the coordinator names site slots "site-<i>" by it). Both ranks must create
// theirs; no message is exchanged until the first send.
std::unique_ptr<Connection> make_mpi_connection(TransportComm& comm, int peer_rank, std::string peer_name,
                                                MpiConnectionOptions options = {});

}  // namespace fedtl::common::mpi

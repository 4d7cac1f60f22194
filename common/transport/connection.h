// The transport interface: the only thing the protocol code (coordinator/, worker/,
// protocols/) knows about the network. Backends: in-process (inproc_transport.h), TLS over
// TCP (Asio + OpenSSL) and MPI. A backend delivers whole frames, in order, reliably, or
// fails with TransportError; it never interprets payloads.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "common/transport/framing.h"

namespace fedtl::common {

using Millis = std::chrono::milliseconds;

// Lets one thread wait on many connections at once (Connection::watch): a watched
// connection rings its tag whenever a frame is queued for recv() or the connection ends.
// A tag may ring more often than there are frames (a ring is a hint to try recv(0));
// tags come out in the order they rang. Thread-safe.
class ArrivalBell {
 public:
  void ring(uint64_t tag) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      rung_.push_back(tag);
    }
    cv_.notify_one();
  }
  // The oldest tag not yet taken, waiting until `deadline`; nullopt when none rang in time.
  std::optional<uint64_t> wait_until(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_until(lock, deadline, [&] { return !rung_.empty(); })) return std::nullopt;
    const uint64_t tag = rung_.front();
    rung_.pop_front();
    return tag;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<uint64_t> rung_;
};

// A frame encoded once for sending to many connections (a round's broadcast of the global
// model): backends that can (in-process, TLS) queue or write these same bytes for every
// receiver instead of encoding a copy each. Immutable; cheap to copy.
class SharedFrame {
 public:
  explicit SharedFrame(const Frame& frame)
      : type_(frame.type), bytes_(std::make_shared<const std::string>(encode_frame(frame))) {}
  MessageType type() const { return type_; }
  // header + payload, as encode_frame writes them
  const std::shared_ptr<const std::string>& bytes() const { return bytes_; }

 private:
  MessageType type_;
  std::shared_ptr<const std::string> bytes_;
};

// One bidirectional, ordered, reliable channel between two parties.
// Thread safety: one thread may send while another receives; concurrent sends (or
// concurrent receives) on the same connection must be serialised by the caller.
class Connection {
 public:
  virtual ~Connection() = default;
  // Sends one frame. Blocks until the frame is handed to the backend (not until the peer
  // read it). Throws TransportError if the connection is closed or broken.
  virtual void send(const Frame& frame) = 0;
  // The same for a frame encoded once (SharedFrame); by default decoded and sent as above.
  virtual void send(const SharedFrame& frame) { send(decode_frame(*frame.bytes(), ~uint32_t{0})); }
  // Receives the next frame, waiting up to `timeout`. Throws TimeoutError when nothing
  // arrived in time (the connection stays usable), TransportError when the peer closed or
  // the connection broke, ProtocolError for a malformed/oversized frame (the connection is
  // then closed).
  virtual Frame recv(Millis timeout) = 0;
  // Arrival notices: from now on rings `bell` with `tag` whenever a frame is queued for
  // recv() or the connection ends (and once at once when a frame already waits or it has
  // ended); a null bell stops them. recv(Millis(0)) then takes a queued frame without
  // waiting. Returns false when the backend cannot (MPI): the caller must then receive from
  // this connection in an order of its own.
  virtual bool watch(std::shared_ptr<ArrivalBell> /*bell*/, uint64_t /*tag*/) { return false; }
  // Closes both directions; idempotent. A blocked recv on either side wakes with
  // TransportError.
  virtual void close() = 0;
  // The authenticated identity of the peer (site name from its certificate, "rank 3", ...).
  virtual std::string peer_name() const = 0;
  // Where the peer connects from, for logs ("127.0.0.1:50312", "in-process", "MPI rank 3").
  virtual std::string peer_address() const { return "unknown address"; }
  // Bytes sent/received so far including framing (for metrics).
  virtual uint64_t bytes_sent() const = 0;
  virtual uint64_t bytes_received() const = 0;
};

// Accepts incoming connections (coordinator side).
class Listener {
 public:
  virtual ~Listener() = default;
  // Waits up to `timeout` for the next connection. Throws TimeoutError when none came.
  virtual std::unique_ptr<Connection> accept(Millis timeout) = 0;
  virtual void close() = 0;
};

}  // namespace fedtl::common

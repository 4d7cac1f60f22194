// A scripted hostile peer for tests and the load benchmark: a real Connection (TLS, in
// practice) whose outgoing frames are rewritten before they leave, so that the real worker,
// holding a valid kit, deviates from the protocol exactly where a test wants it to.
#pragma once
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

#include "common/transport/connection.h"
#include "protocols/messages.h"

namespace fedtl::test_support {

class TamperingConnection final : public common::Connection {
 public:
  TamperingConnection(std::unique_ptr<common::Connection> inner, std::function<void(common::Frame&)> tamper)
      : inner_(std::move(inner)), tamper_(std::move(tamper)) {}
  void send(const common::Frame& f) override {
    common::Frame copy = f;
    tamper_(copy);
    inner_->send(copy);
  }
  common::Frame recv(common::Millis t) override { return inner_->recv(t); }
  void close() override { inner_->close(); }
  std::string peer_name() const override { return inner_->peer_name(); }
  std::string peer_address() const override { return inner_->peer_address(); }
  uint64_t bytes_sent() const override { return inner_->bytes_sent(); }
  uint64_t bytes_received() const override { return inner_->bytes_received(); }

 private:
  std::unique_ptr<common::Connection> inner_;
  std::function<void(common::Frame&)> tamper_;
};

// A tamper function that rewrites the frames of message type M in place (others pass).
template <typename M>
std::function<void(common::Frame&)> rewrite(std::function<void(M&)> edit) {
  return [edit](common::Frame& f) {
    if (f.type != protocols::type_of<M>()) return;
    M m;
    if (!m.ParseFromString(f.payload)) throw std::runtime_error("hostile peer: cannot parse its own frame");
    edit(m);
    f.payload = m.SerializeAsString();
  };
}

}  // namespace fedtl::test_support

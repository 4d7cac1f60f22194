// In-process transport backend: connections are pairs of bounded-by-nothing queues of
// encoded frames between threads of one process (the twin of the TLS/MPI backends used
// by `fedtl simulate` and by tests). Frames are encoded and decoded with the real wire
// framing, so the same bytes flow as on a network.
#pragma once
#include <memory>
#include <string>
#include <utility>

#include "common/transport/connection.h"

namespace fedtl::common {

// Creates a connected pair: what a.send() sends, b.recv() receives and vice versa.
// `a_name`/`b_name` are the peer names each side reports for the *other* side:
// a->peer_name() == b_name. Thread-safe as described in Connection.
std::pair<std::unique_ptr<Connection>, std::unique_ptr<Connection>> make_inproc_pair(
    const std::string& a_name, const std::string& b_name,
    uint32_t max_frame_bytes = common::kDefaultMaxFrameBytes);

}  // namespace fedtl::common

// Internal to coordinator/: the state the Coordinator's files share (the site slots, the DP
// state) and the helpers they all use. Not part of the library's interface.
#pragma once
#include <chrono>
#include <future>
#include <string>
#include <memory>

#include "coordinator/coordinator.h"
#include "protocols/dp/accountant.h"
#include "protocols/dp/mechanism.h"

namespace fedtl::coordinator {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Time left until `deadline`, at least 1 ms (a receive with 0 would not wait at all).
milliseconds until(Clock::time_point deadline);

// Receives the next frame from a site during a round: heartbeats are consumed here; silence
// longer than `liveness` before the deadline means the site is gone (TransportError); the
// deadline passing throws TimeoutError.
common::Frame recv_live(common::Connection& conn, Clock::time_point deadline, milliseconds liveness);

// What one site's handshake I/O found (see Coordinator::start_admission).
struct AdmitOutcome {
  bool ok = false;       // job and backbone sent
  bool refused = false;  // the site refused the job (a typed Error frame)
  std::string why;       // !ok: the reason it is dropped
};

struct Coordinator::Site {
  std::unique_ptr<common::Connection> conn;  // null until the site connects
  SiteInfo info;
  bool admitted = false;  // job (and backbone) sent; Ready pending
  std::chrono::steady_clock::time_point admitted_at;  // when (a rejoiner's Ready is waited for until then + join timeout)
  bool refused = false;   // the site refused the job (policy): it will not come back for it
  // Sent this round's RoundStart (DP site sampling leaves some sites out: they are not
  // expected, and not taken for dead).
  bool in_round = false;
  uint64_t bytes_sent_before = 0, bytes_received_before = 0;  // of replaced connections
  // The handshake running on its own thread (valid() while in flight). Declared after conn:
  // it is destroyed (waited for) first, while the connection it uses still exists.
  std::future<AdmitOutcome> admitting;
  uint64_t sent() const { return bytes_sent_before + (conn ? conn->bytes_sent() : 0); }
  uint64_t received() const { return bytes_received_before + (conn ? conn->bytes_received() : 0); }
};

struct Coordinator::Dp {
  protocols::dp::DpParams params;
  double sampling_rate = 1;
  size_t expected_sites = 1;
  protocols::dp::Accountant accountant;
  std::unique_ptr<protocols::dp::AdaptiveClipper> clipper;
};

}  // namespace fedtl::coordinator

// Progress of a long step (pre-training, feature caching, a download) for the person watching:
// on a terminal, one line rewritten in place with the count, rate and ETA; otherwise (a log
// file, a pipe, CI) a log line every `log_every` seconds, so a long step is never silent. The
// first report waits `quiet_for` so that short steps print nothing extra.
// Thread safety: advance() may be called from several threads (one mutex).
#pragma once
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace fedtl::common {

class Progress {
 public:
  // `what`: e.g. "[site-0] caching features"; `unit`: e.g. "images". total 0 = unknown.
  Progress(std::string what, uint64_t total, std::string unit,
           std::chrono::milliseconds quiet_for = std::chrono::seconds(2),
           std::chrono::milliseconds log_every = std::chrono::seconds(10));
  ~Progress();  // finish()
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void advance(uint64_t n = 1);
  // Ends the line on a terminal and logs the total and rate when anything was reported.
  void finish();

  // "1234/5000 images (25%), 812 images/s, ETA 4.6 s" — exposed for tests.
  static std::string format(uint64_t done, uint64_t total, const std::string& unit, double seconds);

 private:
  void report(bool final);
  std::mutex mu_;
  std::string what_, unit_;
  uint64_t total_, done_ = 0;
  std::chrono::steady_clock::time_point start_, next_;
  std::chrono::milliseconds log_every_;
  bool tty_, reported_ = false, finished_ = false;
};

}  // namespace fedtl::common

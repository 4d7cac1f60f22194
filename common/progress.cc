#include "common/progress.h"

#include <unistd.h>

#include <cstdio>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace fedtl::common {

namespace {
std::string duration(double s) {
  if (s < 90) return fmt::format("{:.1f} s", s);
  if (s < 5400) return fmt::format("{:.1f} min", s / 60);
  return fmt::format("{:.1f} h", s / 3600);
}
}  // namespace

Progress::Progress(std::string what, uint64_t total, std::string unit, std::chrono::milliseconds quiet_for,
                   std::chrono::milliseconds log_every)
    : what_(std::move(what)),
      unit_(std::move(unit)),
      total_(total),
      start_(std::chrono::steady_clock::now()),
      next_(start_ + quiet_for),
      log_every_(log_every),
      // Logs go to stderr (cli/main.cc): rewrite a line in place only when a person sees it.
      tty_(::isatty(STDERR_FILENO) == 1) {}

Progress::~Progress() { finish(); }

std::string Progress::format(uint64_t done, uint64_t total, const std::string& unit, double seconds) {
  const double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0;
  std::string s = total > 0 ? fmt::format("{}/{} {} ({:.0f}%)", done, total, unit, 100.0 * static_cast<double>(done) / static_cast<double>(total))
                            : fmt::format("{} {}", done, unit);
  s += fmt::format(", {:.0f} {}/s", rate, unit);
  if (total > 0 && done < total && rate > 0) s += ", ETA " + duration(static_cast<double>(total - done) / rate);
  return s;
}

void Progress::advance(uint64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  done_ += n;
  if (std::chrono::steady_clock::now() >= next_) report(false);
}

void Progress::report(bool final) {
  const auto now = std::chrono::steady_clock::now();
  const double secs = std::chrono::duration<double>(now - start_).count();
  const std::string line = what_ + ": " + format(done_, total_, unit_, secs);
  if (final) {
    if (tty_) std::fprintf(stderr, "\r\033[K");
    spdlog::info("{} in {}", line, duration(secs));
    return;
  }
  reported_ = true;
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s", line.c_str());
    std::fflush(stderr);
    next_ = now + std::chrono::milliseconds(250);
  } else {
    spdlog::info("{}", line);
    next_ = now + log_every_;
  }
}

void Progress::finish() {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  finished_ = true;
  if (reported_) report(true);
}

}  // namespace fedtl::common

// Lines logged through spdlog's default logger while a CapturedLog lives, for tests that check
// what a run said (refusals, warnings). Lines below the logger's level are never formatted.
#pragma once
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <memory>
#include <string>

namespace fedtl::test_support {

class CapturedLog {
 public:
  explicit CapturedLog(size_t capacity = 4096)
      : sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(capacity)) {
    spdlog::default_logger()->sinks().push_back(sink_);
  }
  ~CapturedLog() {
    auto& s = spdlog::default_logger()->sinks();
    s.erase(std::remove(s.begin(), s.end(), sink_), s.end());
  }
  CapturedLog(const CapturedLog&) = delete;
  CapturedLog& operator=(const CapturedLog&) = delete;

  // Some captured line (any level) holds `text`.
  bool contains(const std::string& text) const { return any_line(text, ""); }
  // Some captured warning holds `text`.
  bool warned(const std::string& text) const { return any_line(text, "warn"); }

 private:
  bool any_line(const std::string& text, const std::string& level) const {
    for (const auto& line : sink_->last_formatted())
      if (line.find(text) != std::string::npos && line.find(level) != std::string::npos) return true;
    return false;
  }
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
};

}  // namespace fedtl::test_support

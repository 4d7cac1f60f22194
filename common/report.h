// Run outputs a person (or a script) reads: metrics.jsonl, summary.json and an SVG plot of
// accuracy per round with the baselines.
#pragma once
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace fedtl::common {

// Appends one JSON object per line and flushes after each, so a crash loses at most the
// line being written. Not thread-safe.
class JsonlWriter {
 public:
  // Truncates (or creates) the file. Throws IoError.
  explicit JsonlWriter(const std::string& path);
  void write(const nlohmann::json& line);

 private:
  std::string path_;
  std::ofstream out_;
};

struct PlotSeries {
  std::string label;
  std::vector<std::pair<double, double>> points;  // (round, accuracy in [0,1])
};

struct PlotLine {  // a horizontal reference line (a baseline)
  std::string label;
  double value = 0;
};

struct PlotMark {  // a vertical marker at a round (the best round, a phase change)
  std::string label;
  double round = 0;
};

// Writes an SVG line chart (atomically): x = round, y = accuracy %, one polyline per series,
// dashed horizontal lines for the baselines, dotted vertical lines labelled at the top for the
// marks, a legend.
void write_accuracy_plot(const std::string& path, const std::string& title, const std::vector<PlotSeries>& series,
                         const std::vector<PlotLine>& lines, const std::vector<PlotMark>& marks = {});
// The same chart as SVG text (the status page embeds it).
std::string accuracy_plot_svg(const std::string& title, const std::vector<PlotSeries>& series,
                              const std::vector<PlotLine>& lines, const std::vector<PlotMark>& marks = {});

// Text made safe inside HTML/SVG text and attribute values (< > & ").
std::string html_escape(const std::string& s);

// Fixed-width text rendering of a confusion matrix ([true][pred]) with class names.
std::string format_confusion(const std::vector<std::vector<int64_t>>& m, const std::vector<std::string>& names);

}  // namespace fedtl::common

#include "common/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

#include "common/errors.h"
#include "common/files.h"

namespace fedtl::common {

JsonlWriter::JsonlWriter(const std::string& path) : path_(path) {
  std::error_code ec;
  auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  out_.open(path, std::ios::trunc);
  if (!out_) throw IoError("cannot write '" + path + "'");
}

void JsonlWriter::write(const nlohmann::json& line) {
  out_ << line.dump() << '\n';
  out_.flush();
  if (!out_) throw IoError("error writing '" + path_ + "'");
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

void write_accuracy_plot(const std::string& path, const std::string& title, const std::vector<PlotSeries>& series,
                         const std::vector<PlotLine>& lines, const std::vector<PlotMark>& marks) {
  write_file_atomic(path, accuracy_plot_svg(title, series, lines, marks));
}

std::string accuracy_plot_svg(const std::string& title, const std::vector<PlotSeries>& series,
                              const std::vector<PlotLine>& lines, const std::vector<PlotMark>& marks) {
  const double W = 760, H = 440, L = 60, R = 200, T = 40, B = 50;
  double xmax = 1, ymin = 1, ymax = 0;
  for (const auto& s : series)
    for (const auto& [x, y] : s.points) {
      xmax = std::max(xmax, x);
      ymin = std::min(ymin, y);
      ymax = std::max(ymax, y);
    }
  for (const auto& l : lines) {
    ymin = std::min(ymin, l.value);
    ymax = std::max(ymax, l.value);
  }
  if (ymin > ymax) ymin = 0, ymax = 1;
  ymin = std::max(0.0, std::floor(ymin * 10) / 10);
  ymax = std::min(1.0, std::ceil(ymax * 10 + 1e-9) / 10);
  if (ymax - ymin < 0.1) ymax = std::min(1.0, ymin + 0.1);
  auto px = [&](double x) { return L + (W - L - R) * (x - 1) / std::max(1.0, xmax - 1); };
  auto py = [&](double y) { return T + (H - T - B) * (1 - (y - ymin) / (ymax - ymin)); };
  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << L << "\" y=\"24\" font-size=\"15\">" << html_escape(title) << "</text>\n";
  for (int i = 0; i <= 5; ++i) {
    double y = ymin + (ymax - ymin) * i / 5;
    o << "<line x1=\"" << L << "\" x2=\"" << W - R << "\" y1=\"" << py(y) << "\" y2=\"" << py(y)
      << "\" stroke=\"#ddd\"/><text x=\"" << L - 6 << "\" y=\"" << py(y) + 4 << "\" text-anchor=\"end\">"
      << std::round(y * 1000) / 10 << "%</text>\n";
  }
  const int xt = static_cast<int>(std::min(10.0, xmax - 1));
  for (int i = 0; i <= xt; ++i) {
    double x = 1 + (xmax - 1) * i / std::max(1, xt);
    o << "<text x=\"" << px(x) << "\" y=\"" << H - B + 18 << "\" text-anchor=\"middle\">" << std::lround(x)
      << "</text>\n";
  }
  o << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 12 << "\" text-anchor=\"middle\">round</text>\n";
  o << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << W - L - R << "\" height=\"" << H - T - B
    << "\" fill=\"none\" stroke=\"#444\"/>\n";
  int ci = 0, legend = 0;
  auto legend_entry = [&](const std::string& label, const char* color, bool dashed) {
    double y = T + 10 + 20 * legend++;
    o << "<line x1=\"" << W - R + 12 << "\" x2=\"" << W - R + 36 << "\" y1=\"" << y << "\" y2=\"" << y
      << "\" stroke=\"" << color << "\" stroke-width=\"2\"" << (dashed ? " stroke-dasharray=\"6,4\"" : "")
      << "/><text x=\"" << W - R + 42 << "\" y=\"" << y + 4 << "\">" << html_escape(label) << "</text>\n";
  };
  for (const auto& s : series) {
    const char* c = colors[ci++ % 6];
    o << "<polyline fill=\"none\" stroke=\"" << c << "\" stroke-width=\"2\" points=\"";
    for (const auto& [x, y] : s.points) o << px(x) << "," << py(y) << " ";
    o << "\"/>\n";
    legend_entry(s.label, c, false);
  }
  for (const auto& l : lines) {
    const char* c = colors[ci++ % 6];
    o << "<line x1=\"" << L << "\" x2=\"" << W - R << "\" y1=\"" << py(l.value) << "\" y2=\"" << py(l.value)
      << "\" stroke=\"" << c << "\" stroke-width=\"1.5\" stroke-dasharray=\"6,4\"/>\n";
    std::ostringstream lab;
    lab << l.label << " " << std::round(l.value * 1000) / 10 << "%";
    legend_entry(lab.str(), c, true);
  }
  int mi = 0;
  for (const auto& m : marks) {
    const double x = px(m.round);
    o << "<line x1=\"" << x << "\" x2=\"" << x << "\" y1=\"" << T << "\" y2=\"" << H - B
      << "\" stroke=\"#555\" stroke-width=\"1\" stroke-dasharray=\"2,3\"/><text x=\"" << x + 3 << "\" y=\""
      << T + 12 + 12 * (mi++ % 3) << "\" font-size=\"10\">" << html_escape(m.label) << "</text>\n";
  }
  o << "</svg>\n";
  return o.str();
}

std::string format_confusion(const std::vector<std::vector<int64_t>>& m, const std::vector<std::string>& names) {
  std::ostringstream o;
  size_t w = 6;
  for (const auto& n : names) w = std::max(w, n.size() + 1);
  o << std::string(w, ' ');
  for (size_t j = 0; j < m.size(); ++j) {
    std::string n = j < names.size() ? names[j] : std::to_string(j);
    o << std::string(w - std::min(w, n.size()), ' ') << n;
  }
  o << "   (rows: true, columns: predicted)\n";
  for (size_t i = 0; i < m.size(); ++i) {
    std::string n = i < names.size() ? names[i] : std::to_string(i);
    o << n << std::string(w - std::min(w, n.size()), ' ');
    for (int64_t v : m[i]) {
      std::string s = std::to_string(v);
      o << std::string(w - std::min(w, s.size()), ' ') << s;
    }
    o << '\n';
  }
  return o.str();
}

}  // namespace fedtl::common

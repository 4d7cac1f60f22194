#include "common/data/input_stats.h"

#include <algorithm>
#include <array>
#include <cmath>

#include <fmt/format.h>

#include "common/errors.h"

namespace fedtl::common {

InputStats input_stats(const ImageSet& set, int64_t channels, const std::vector<double>& mean,
                       const std::vector<double>& std) {
  if ((channels != 1 && channels != 3) || mean.size() != static_cast<size_t>(channels) ||
      std.size() != static_cast<size_t>(channels))
    throw ConfigError("input_stats: the backbone takes 1 or 3 channels, with one mean and std each");
  if (set.channels != 1 && set.channels != 3 && set.size() > 0)
    throw DataError("input_stats: images of " + std::to_string(set.channels) + " channels");
  InputStats s;
  s.images = set.size();
  const bool stored = set.stored.size() == set.labels.size() && !set.stored.empty();
  for (int64_t i = 0; i < set.size(); ++i) {
    const int64_t c = stored ? set.stored[static_cast<size_t>(i)].channels : set.channels;
    const int64_t h = stored ? set.stored[static_cast<size_t>(i)].height : set.height;
    const int64_t w = stored ? set.stored[static_cast<size_t>(i)].width : set.width;
    (c >= 3 ? s.colour : s.grey) += 1;
    if (i == 0) {
      s.min_height = s.max_height = h;
      s.min_width = s.max_width = w;
    }
    s.min_height = std::min(s.min_height, h);
    s.max_height = std::max(s.max_height, h);
    s.min_width = std::min(s.min_width, w);
    s.max_width = std::max(s.max_width, w);
  }
  // Sums over the converted 8-bit values. Grey into 3 channels gives each channel the grey
  // plane; colour into 1 channel gives the luma (not a whole number: summed as doubles).
  const int64_t plane = set.height * set.width;
  std::vector<double> sum(static_cast<size_t>(channels), 0), sq(static_cast<size_t>(channels), 0);
  int64_t count = 0;
  for (int64_t i = 0; i < set.size(); ++i) {
    const uint8_t* img = set.pixels.data() + i * set.image_bytes();
    // One histogram per stored plane: a grey plane serves all three backbone channels.
    std::array<std::array<int64_t, 256>, 3> hists{};
    if (set.channels == channels || set.channels == 1)
      for (int64_t pl = 0; pl < set.channels; ++pl)
        for (int64_t k = 0; k < plane; ++k) ++hists[static_cast<size_t>(pl)][img[pl * plane + k]];
    for (int64_t c = 0; c < channels; ++c) {
      double acc = 0, acc2 = 0;
      if (set.channels == channels || set.channels == 1) {
        const auto& hist = hists[static_cast<size_t>(set.channels == channels ? c : 0)];
        for (int v = 0; v < 256; ++v) {
          const double x = (v / 255.0 - mean[static_cast<size_t>(c)]) / std[static_cast<size_t>(c)];
          acc += x * static_cast<double>(hist[static_cast<size_t>(v)]);
          acc2 += x * x * static_cast<double>(hist[static_cast<size_t>(v)]);
        }
      } else {  // colour into one channel
        for (int64_t k = 0; k < plane; ++k) {
          const double luma = 0.299 * img[k] + 0.587 * img[plane + k] + 0.114 * img[2 * plane + k];
          const double x = (luma / 255.0 - mean[0]) / std[0];
          acc += x;
          acc2 += x * x;
        }
      }
      sum[static_cast<size_t>(c)] += acc;
      sq[static_cast<size_t>(c)] += acc2;
    }
    count += plane;
  }
  for (int64_t c = 0; c < channels; ++c) {
    const double m = count > 0 ? sum[static_cast<size_t>(c)] / static_cast<double>(count) : 0;
    const double var = count > 0 ? sq[static_cast<size_t>(c)] / static_cast<double>(count) - m * m : 0;
    s.mean.push_back(m);
    s.std.push_back(std::sqrt(std::max(0.0, var)));
  }
  return s;
}

std::vector<std::string> domain_gap_findings(const InputStats& s, int64_t channels, int64_t height, int64_t width) {
  std::vector<std::string> out;
  if (s.images == 0) return out;
  if (channels == 3 && s.grey > 0)
    out.push_back(fmt::format("{} of {} images are grey and reach the 3-channel backbone as the grey channel "
                              "replicated",
                              s.grey, s.images));
  auto ratio = [](int64_t stored, int64_t wanted) {
    if (stored <= 0 || wanted <= 0) return 1.0;
    return std::max(static_cast<double>(stored) / wanted, static_cast<double>(wanted) / stored);
  };
  const double worst = std::max({ratio(s.min_height, height), ratio(s.max_height, height), ratio(s.min_width, width),
                                 ratio(s.max_width, width)});
  if (worst > 2)
    out.push_back(fmt::format("images of {}x{} to {}x{} pixels (height x width) are resized to the backbone's {}x{}, "
                              "by up to {:.1f}x",
                              s.min_height, s.min_width, s.max_height, s.max_width, height, width, worst));
  for (size_t c = 0; c < s.mean.size() && c < s.std.size(); ++c) {
    if (std::fabs(s.mean[c]) > 0.5 || s.std[c] < 0.5 || s.std[c] > 2)
      out.push_back(fmt::format("after normalisation channel {} has mean {:.2f} and standard deviation {:.2f} "
                                "(expected near 0 and 1: check backbone.mean and backbone.std)",
                                c, s.mean[c], s.std[c]));
  }
  return out;
}

}  // namespace fedtl::common

// What a site's images look like to the backbone, as summary figures only: how many were
// stored grey or in colour, the stored sizes, and the per-channel mean and standard deviation
// of the pixels the backbone receives. A site sends these (Ready.input_stats) so the
// coordinator can warn of a domain gap; nothing else of its images leaves it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "common/data/image_set.h"

namespace fedtl::common {

struct InputStats {
  int64_t images = 0;
  int64_t grey = 0, colour = 0;  // channels as stored: grey (1 or 2 components) or colour (3 or 4)
  int64_t min_height = 0, max_height = 0, min_width = 0, max_width = 0;  // as stored
  // Per backbone input channel, of (x/255 - mean[c]) / std[c] over every pixel.
  std::vector<double> mean, std;
};

// The figures for `set` as read: set.stored says how each image was stored (when empty, as
// set.channels x height x width). `channels`, `mean`, `std`: the backbone's input (1 or 3
// channels, one mean and std per channel). Pixels are converted to `channels` as the model
// converts them (grey replicated, RGB to luma 0.299/0.587/0.114) but not resized: resizing
// barely moves the mean and std, and the stored sizes are reported beside them.
InputStats input_stats(const ImageSet& set, int64_t channels, const std::vector<double>& mean,
                       const std::vector<double>& std);

// The domain gap the figures show for a backbone taking channels x height x width, one
// sentence per finding (empty: none): grey images fed to a 3-channel backbone (the channel is
// replicated), images resized by more than 2x in either direction, and normalised pixels
// whose mean is beyond +-0.5 or whose standard deviation is outside [0.5, 2] in a channel.
std::vector<std::string> domain_gap_findings(const InputStats& s, int64_t channels, int64_t height, int64_t width);

}  // namespace fedtl::common

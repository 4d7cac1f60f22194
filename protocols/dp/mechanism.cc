#include "protocols/dp/mechanism.h"

#include <cmath>
#include <cstdio>

#include "common/errors.h"

namespace fedtl::protocols::dp {
namespace {

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

void check_positive(const char* what, double v) {
  if (!(v > 0) || !std::isfinite(v)) throw ConfigError(std::string(what) + " " + fmt(v) + " must be a finite number > 0");
}

}  // namespace

NoiseMode parse_noise_mode(const std::string& name) {
  if (name == "central") return NoiseMode::kCentral;
  if (name == "distributed") return NoiseMode::kDistributed;
  if (name == "local") return NoiseMode::kLocal;
  throw ConfigError("dp mode '" + name + "' is not one of central, distributed, local");
}

std::string to_string(NoiseMode mode) {
  switch (mode) {
    case NoiseMode::kCentral: return "central";
    case NoiseMode::kDistributed: return "distributed";
    case NoiseMode::kLocal: return "local";
  }
  return "?";
}

void validate(const DpParams& params) {
  check_positive("noise multiplier", params.noise_multiplier);
  check_positive("clip norm", params.clip_norm);
}

double l2_norm(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) {
    if (!std::isfinite(x)) throw ProtocolError("update contains a non-finite value");
    s += static_cast<double>(x) * x;
  }
  return std::sqrt(s);
}

double clip_l2(std::vector<float>& v, double clip_norm) {
  check_positive("clip norm", clip_norm);
  const double norm = l2_norm(v);
  if (norm > clip_norm) {
    const double scale = clip_norm / norm;
    for (float& x : v) x = static_cast<float>(x * scale);
    // Rounding to float can leave the norm a hair above C; shrink by a few float ulps (a
    // smaller factor would round back to the same floats) until it is not.
    for (int k = 1; l2_norm(v) > clip_norm; ++k) {
      const double shrink = 1.0 - std::ldexp(1.0, -22) * k;
      for (float& x : v) x = static_cast<float>(x * shrink);
    }
  }
  return norm;
}

double GaussianNoise::standard_normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  constexpr double kScale = 1.0 / 9007199254740992.0;  // 2^-53
  const double u1 = (static_cast<double>(rng_() >> 11) + 1.0) * kScale;  // (0, 1]
  const double u2 = static_cast<double>(rng_() >> 11) * kScale;          // [0, 1)
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double theta = 2.0 * M_PI * u2;
  spare_ = r * std::sin(theta);
  has_spare_ = true;
  return r * std::cos(theta);
}

void GaussianNoise::add(std::vector<float>& v, double stddev) {
  if (!(stddev >= 0) || !std::isfinite(stddev)) throw ConfigError("noise stddev " + fmt(stddev) + " must be >= 0");
  if (stddev == 0) return;
  for (float& x : v) x = static_cast<float>(x + stddev * standard_normal());
}

void GaussianNoise::add(std::vector<double>& v, double stddev) {
  if (!(stddev >= 0) || !std::isfinite(stddev)) throw ConfigError("noise stddev " + fmt(stddev) + " must be >= 0");
  if (stddev == 0) return;
  for (double& x : v) x += stddev * standard_normal();
}

double site_noise_stddev(const DpParams& params, size_t expected_sites) {
  validate(params);
  switch (params.mode) {
    case NoiseMode::kCentral: return 0.0;
    case NoiseMode::kDistributed:
      if (expected_sites == 0) throw ConfigError("distributed DP needs the expected number of sites (got 0)");
      return params.noise_multiplier * params.clip_norm / std::sqrt(static_cast<double>(expected_sites));
    case NoiseMode::kLocal: return params.noise_multiplier * params.clip_norm;
  }
  return 0.0;
}

double aggregate_noise_stddev(const DpParams& params) {
  validate(params);
  return params.mode == NoiseMode::kCentral ? params.noise_multiplier * params.clip_norm : 0.0;
}

double effective_noise_multiplier(const DpParams& params, size_t reporting, size_t expected) {
  validate(params);
  if (params.mode != NoiseMode::kDistributed || reporting >= expected) return params.noise_multiplier;
  if (reporting == 0) throw ConfigError("no site reported: nothing was released");
  return params.noise_multiplier * std::sqrt(static_cast<double>(reporting) / static_cast<double>(expected));
}

double privatize_site_update(std::vector<float>& delta, const DpParams& params, size_t expected_sites,
                             GaussianNoise& noise) {
  const double stddev = site_noise_stddev(params, expected_sites);
  const double norm = clip_l2(delta, params.clip_norm);
  noise.add(delta, stddev);
  return norm;
}

DpSum::DpSum(size_t size, DpParams params) : params_(params), sum_(size, 0.0) { validate(params_); }

double DpSum::add(const std::vector<float>& delta) {
  if (finished_) throw ProtocolError("DpSum::add after finish");
  if (delta.size() != sum_.size())
    throw ProtocolError("update has " + std::to_string(delta.size()) + " values, expected " +
                        std::to_string(sum_.size()));
  double norm = 0;
  if (params_.mode == NoiseMode::kCentral) {
    std::vector<float> clipped = delta;
    norm = clip_l2(clipped, params_.clip_norm);
    for (size_t k = 0; k < sum_.size(); ++k) sum_[k] += clipped[k];
  } else {
    l2_norm(delta);  // rejects non-finite values
    for (size_t k = 0; k < sum_.size(); ++k) sum_[k] += delta[k];
  }
  ++count_;
  return norm;
}

std::vector<double> DpSum::finish(double denominator, GaussianNoise& noise) {
  check_positive("DP denominator", denominator);
  if (count_ == 0) throw ProtocolError("no update to aggregate");
  if (finished_) throw ProtocolError("DpSum::finish called twice");
  finished_ = true;
  std::vector<double> out = sum_;
  noise.add(out, aggregate_noise_stddev(params_));
  for (double& x : out) x /= denominator;
  return out;
}

void validate(const AdaptiveClipSpec& spec) {
  if (!(spec.target_quantile >= 0 && spec.target_quantile <= 1))
    throw ConfigError("adaptive clipping target quantile " + fmt(spec.target_quantile) + " must be in [0, 1]");
  check_positive("adaptive clipping learning rate", spec.learning_rate);
  if (!(spec.count_noise_stddev >= 0) || !std::isfinite(spec.count_noise_stddev))
    throw ConfigError("adaptive clipping count noise " + fmt(spec.count_noise_stddev) + " must be >= 0");
}

AdaptiveClipper::AdaptiveClipper(AdaptiveClipSpec spec, double initial_clip_norm) : spec_(spec) {
  validate(spec_);
  set_clip_norm(initial_clip_norm);
}

void AdaptiveClipper::set_clip_norm(double c) {
  check_positive("clip norm", c);
  clip_ = c;
}

double AdaptiveClipper::update(size_t at_or_below, size_t reports, double denominator, GaussianNoise& noise) {
  check_positive("adaptive clipping denominator", denominator);
  if (at_or_below > reports)
    throw ConfigError("adaptive clipping: " + std::to_string(at_or_below) + " indicators set out of " +
                      std::to_string(reports) + " reports");
  double centred = static_cast<double>(at_or_below) - 0.5 * static_cast<double>(reports);
  if (spec_.count_noise_stddev > 0) centred += spec_.count_noise_stddev * noise.standard_normal();
  last_fraction_ = centred / denominator + 0.5;
  const double next = clip_ * std::exp(-spec_.learning_rate * (last_fraction_ - spec_.target_quantile));
  if (std::isfinite(next) && next > 0) clip_ = next;
  return clip_;
}

double adaptive_update_noise_multiplier(double z, double count_noise_stddev) {
  check_positive("noise multiplier", z);
  if (!(count_noise_stddev >= 0) || !std::isfinite(count_noise_stddev))
    throw ConfigError("adaptive clipping count noise " + fmt(count_noise_stddev) + " must be >= 0");
  if (count_noise_stddev == 0) return z;
  const double inv = 1.0 / (z * z) - 1.0 / (4.0 * count_noise_stddev * count_noise_stddev);
  if (!(inv > 0))
    throw ConfigError("adaptive clipping count noise " + fmt(count_noise_stddev) + " must exceed 1/(2z) = " +
                      fmt(1.0 / (2.0 * z)) + " for noise multiplier " + fmt(z));
  return 1.0 / std::sqrt(inv);
}

}  // namespace fedtl::protocols::dp

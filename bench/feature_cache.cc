// Feature cache: one site's local training over ROUNDS rounds of EPOCHS local epochs with the
// built-in CNN (freeze = "all_but_last", unfrozen = 1, linear head), once training on the
// cached outputs of the frozen prefix (TrainOptions.recompute_features = false, fedtl's
// default) and once running the frozen prefix on every step (recompute_features = true, the
// FeatureSet made with keep_inputs = true). Each round starts from the previous round's
// parameters, as a single-site FedAvg would.
//
// Timed: cache = building the FeatureSet (the frozen prefix over every image, once) + all
// rounds of training; recompute = all rounds of training (a framework without a cache only
// preprocesses the images up front; TransferModel::features computes the features in both
// modes, so that call is left out of the recompute time, which favours the baseline slightly).
// Reported: medians over REPS repetitions, speedup = recompute / cache, speedup_steady (the
// training alone, i.e. the limit for many rounds), the throughputs that bound the speedup
// (1 + prefix cost / trainable cost per sample), and the largest absolute difference between
// the final parameters of the two modes (the cache must not change the result).
//
// Data: the first SITE images of the Fashion-MNIST target classes {1,3,4,6,9} (Debian package
// dataset-fashion-mnist); synthetic images when the package is absent. The backbone weights
// are the built-in CNN's seeded initialisation (timings do not depend on them).
//
// Case "resnet18" (--backbone FILE --size S): the same rounds x epochs with a TorchScript
// ResNet-18 trunk (torchvision's, random weights, traced in Python by
// tests/common/model/make_resnet.py at S x S) frozen whole (freeze = "all") under a linear
// head; the grey images are replicated to RGB and resized to S x S with ImageNet's
// normalisation, as a site's images would be.
//
// The cache's ceiling is rounds x epochs (50 here): without it the frozen part runs once per
// image per epoch, with it once per image. Measured here: the demo CNN about 9x (its cached
// FC block costs as much as the prefix), the ResNet-18 trunk at 64x64 40-44x (2.2-2.7 ms a
// trunk pass per image, at batch 32 and 100 alike; the head's closed-form training is 3 ms of
// the 0.25 s).
//
// Usage: bench_feature_cache [--reps N] [--site N] [--rounds N] [--epochs N] [--backbone FILE --size S]
//                            [--feature-batch N]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iterator>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/data/datasets.h"
#include "common/data/image_set.h"
#include "common/model/transfer_model.h"

namespace {

using fedtl::common::ImageSet;
using namespace fedtl::common::model;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct RunResult {
  double train_seconds = 0, feature_seconds = 0;
  std::vector<float> params;
};

int64_t feature_batch = 256;  // --feature-batch: images per forward pass when caching

RunResult run(const std::string& backbone, const ModelSpec& spec, const ImageSet& site, bool recompute,
              int64_t rounds, int64_t epochs) {
  auto model = TransferModel::create(backbone, spec, 11);
  RunResult r;
  const auto t0 = Clock::now();
  auto fs = model->features(site, /*keep_inputs=*/recompute, feature_batch);
  r.feature_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<float> global = model->params();
  const auto t1 = Clock::now();
  for (int64_t round = 1; round <= rounds; ++round) {
    model->set_params(global);
    TrainOptions opt;
    opt.optimizer = Optimizer::kSgd;
    opt.lr = 0.05;
    opt.batch_size = 32;
    opt.epochs = epochs;
    opt.seed = 1000 + static_cast<uint64_t>(round);
    opt.recompute_features = recompute;
    model->train(*fs, opt);
    global = model->params();
  }
  r.train_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  r.params = std::move(global);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  int64_t site_n = 300, rounds = 10, epochs = 5, size = 0;
  std::string backbone_file;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> int64_t {
      if (i + 1 >= argc) throw std::runtime_error("missing value after " + a);
      return std::atoll(argv[++i]);
    };
    try {
      if (a == "--reps") reps = static_cast<int>(std::max<int64_t>(1, next()));
      else if (a == "--site") site_n = next();
      else if (a == "--rounds") rounds = next();
      else if (a == "--epochs") epochs = next();
      else if (a == "--size") size = next();
      else if (a == "--feature-batch") feature_batch = std::max<int64_t>(1, next());
      else if (a == "--backbone") {
        if (i + 1 >= argc) throw std::runtime_error("missing value after --backbone");
        backbone_file = argv[++i];
      }
      else throw std::runtime_error("unknown option " + a);
    } catch (const std::exception& e) {
      std::cerr << "bench_feature_cache: " << e.what()
                << "\nusage: bench_feature_cache [--reps N] [--site N] [--rounds N] [--epochs N] "
                   "[--backbone FILE --size S] [--feature-batch N]\n";
      return 2;
    }
  }
  try {
    set_torch_threads(1);
    ImageSet site;
    std::string data_source = "fashion-mnist";
    try {
      ImageSet target = fedtl::common::read_fashion_mnist("train").select_classes({1, 3, 4, 6, 9});
      std::vector<int64_t> idx(static_cast<size_t>(std::min<int64_t>(site_n, target.size())));
      for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int64_t>(i);
      site = target.subset(idx);
    } catch (const std::exception& e) {
      std::cerr << "bench_feature_cache: " << e.what() << "; using synthetic images\n";
      data_source = "synthetic";
      site.channels = 1;
      site.height = site.width = 28;
      std::mt19937_64 rng(5);
      site.pixels.resize(static_cast<size_t>(site_n * 28 * 28));
      for (auto& p : site.pixels) p = static_cast<uint8_t>(rng() >> 56);
      for (int64_t i = 0; i < site_n; ++i) site.labels.push_back(i % 5);
    }

    ModelSpec spec;  // 1x28x28, Fashion-MNIST normalisation
    spec.freeze = Freeze::kAllButLast;
    spec.unfrozen = 1;
    spec.head = HeadType::kLinear;
    spec.num_classes = 5;
    std::string backbone;
    std::string backbone_name = "builtin_cnn";
    if (backbone_file.empty()) {
      backbone = builtin_cnn(spec.input, 3);
    } else {
      if (size <= 0) throw std::runtime_error("--backbone needs --size (the traced input size)");
      std::ifstream in(backbone_file, std::ios::binary);
      if (!in) throw std::runtime_error("cannot read " + backbone_file);
      backbone.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      backbone_name = backbone_file;
      spec.input.channels = 3;
      spec.input.height = spec.input.width = size;
      spec.input.mean = {0.485, 0.456, 0.406};
      spec.input.std = {0.229, 0.224, 0.225};
      spec.freeze = Freeze::kAll;
    }

    run(backbone, spec, site, false, 1, 1);  // warm-up both paths
    run(backbone, spec, site, true, 1, 1);
    std::vector<double> cache_s, cache_train_s, cache_feat_s, recompute_s;
    double max_diff = 0;
    for (int r = 0; r < reps; ++r) {
      // Alternate the two modes so drifting machine load hits both alike.
      RunResult c = run(backbone, spec, site, false, rounds, epochs);
      RunResult u = run(backbone, spec, site, true, rounds, epochs);
      cache_s.push_back(c.feature_seconds + c.train_seconds);
      cache_train_s.push_back(c.train_seconds);
      cache_feat_s.push_back(c.feature_seconds);
      recompute_s.push_back(u.train_seconds);
      for (size_t i = 0; i < c.params.size(); ++i)
        max_diff = std::max(max_diff, static_cast<double>(std::fabs(c.params[i] - u.params[i])));
    }
    const double mc = median(cache_s), mu = median(recompute_s), mt = median(cache_train_s),
                 mf = median(cache_feat_s);
    const double samples = static_cast<double>(site.size() * rounds * epochs);
    json out = {{"speedup", mu / mc},
                {"speedup_steady", mu / mt},
                {"cache_seconds", mc},
                {"cache_feature_seconds", mf},
                {"cache_train_seconds", mt},
                {"recompute_seconds", mu},
                {"cache_seconds_all", cache_s},
                {"recompute_seconds_all", recompute_s},
                {"cached_samples_per_s", samples / mt},
                {"recompute_samples_per_s", samples / mu},
                {"prefix_images_per_s", static_cast<double>(site.size()) / mf},
                {"max_abs_param_diff", max_diff},
                {"site_images", site.size()},
                {"rounds", rounds},
                {"epochs", epochs},
                {"reps", reps},
                {"data", data_source},
                {"backbone", backbone_name},
                {"freeze", to_string(spec.freeze)},
                {"input", std::to_string(spec.input.channels) + "x" + std::to_string(spec.input.height) + "x" +
                              std::to_string(spec.input.width)}};
    std::cout << out.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "bench_feature_cache: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

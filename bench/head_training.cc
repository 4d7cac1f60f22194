// Head training on cached features: samples/s of fedtl's TransferModel::train (the code path
// every site runs each round), to be compared with bench/head_training.py, which trains the
// same layers with Python PyTorch. scripts/bench runs both and computes the speedups.
//
// Both sides: 5 classes, batch 32, SGD lr 0.05 (no momentum), 1 thread, EPOCHS epochs per
// repetition, a fresh optimiser per repetition, median of REPS repetitions. Per step both do
// the same work: gather the shuffled batch, forward, cross-entropy, zero_grad, backward, step,
// and read back the loss and the number of correct predictions (TransferModel::train reports
// loss and accuracy, so the Python loop does too).
//
// Case "linear512": a linear head on 512-dim features. TransferModel cannot take features
// directly, only images through a backbone, so the bench builds a tiny TorchScript backbone
// whose forward is flatten() over an input of shape [N, 512, 1, 1] (freeze = "all"): the
// "images" are 512-channel 1x1 pixels, the cached features their normalised values, and
// TransferModel::train trains exactly the linear 512->5 head on them. The pixels are a fixed
// hash of the element index that head_training.py reproduces, so both sides see the same data.
//
// Case "demo_head": the demo's trainable part. The built-in CNN with freeze = "all_but_last",
// unfrozen = 1 and a linear head, so the cache holds block2's [N, 64, 7, 7] outputs and
// TransferModel::train trains FC 3136->128 + ReLU (the backbone's "fc" child, run through
// TorchScript) + linear 128->5. Images are synthetic (fixed seed); the Python side trains
// nn.Linear(3136,128), ReLU, nn.Linear(128,5) on features of the same shape.
//
// Usage: bench_head_training [--reps N] [--case linear512|demo_head|all]
// Prints one JSON object: {case: {samples_per_s, seconds_median, seconds_all, samples_per_rep, ...}}.
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/data/image_set.h"
#include "common/model/transfer_model.h"

namespace {

using fedtl::common::ImageSet;
using namespace fedtl::common::model;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr int64_t kClasses = 5, kBatch = 32;
constexpr double kLr = 0.05;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Element j of the synthetic data: the top byte of a multiplicative hash (same in the .py).
uint8_t hash_byte(uint64_t j) { return static_cast<uint8_t>(((j * 2654435761ULL) & 0xffffffffULL) >> 24); }
int64_t hash_label(uint64_t i) { return static_cast<int64_t>(((i * 40503ULL + 17ULL) & 0xffffULL) % kClasses); }

std::string identity_backbone() {
  torch::jit::Module m("FlattenBackbone");
  m.define(R"(
def forward(self, x):
    return torch.flatten(x, 1)
)");
  std::ostringstream os;
  m.save(os);
  return os.str();
}

json run_case(TransferModel& model, const FeatureSet& fs, int64_t epochs, int reps) {
  TrainOptions opt;
  opt.optimizer = Optimizer::kSgd;
  opt.lr = kLr;
  opt.batch_size = kBatch;
  opt.epochs = epochs;
  const auto start = model.params();
  model.train(fs, opt);  // warm-up (allocator, TorchScript profiling executor)
  std::vector<double> secs;
  TrainStats last;
  for (int r = 0; r < reps; ++r) {
    model.set_params(start);
    opt.seed = static_cast<uint64_t>(r + 1);
    const auto t0 = Clock::now();
    last = model.train(fs, opt);
    secs.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  const double samples = static_cast<double>(fs.size() * epochs);
  const double med = median(secs);
  return {{"samples_per_s", samples / med},
          {"seconds_median", med},
          {"seconds_all", secs},
          {"samples_per_rep", samples},
          {"n", fs.size()},
          {"epochs", epochs},
          {"steps_per_rep", last.steps},
          {"final_train_loss", last.loss},
          {"trainable_params", model.num_params()},
          {"feature_dim", model.feature_dim()}};
}

json linear512(int reps) {
  const int64_t n = 8192, d = 512, epochs = 5;
  ImageSet images;
  images.channels = d;
  images.height = images.width = 1;
  images.pixels.resize(static_cast<size_t>(n * d));
  for (size_t j = 0; j < images.pixels.size(); ++j) images.pixels[j] = hash_byte(j);
  for (int64_t i = 0; i < n; ++i) images.labels.push_back(hash_label(static_cast<uint64_t>(i)));
  ModelSpec spec;
  spec.input.channels = d;
  spec.input.height = spec.input.width = 1;
  spec.input.mean = {0.5};
  spec.input.std = {0.25};
  spec.freeze = Freeze::kAll;
  spec.head = HeadType::kLinear;
  spec.num_classes = kClasses;
  auto model = TransferModel::create(identity_backbone(), spec, 1);
  auto fs = model->features(images);
  return run_case(*model, *fs, epochs, reps);
}

json demo_head(int reps) {
  const int64_t n = 2048, epochs = 5;
  ModelSpec spec;  // 1x28x28, Fashion-MNIST normalisation
  spec.freeze = Freeze::kAllButLast;
  spec.unfrozen = 1;
  spec.head = HeadType::kLinear;
  spec.num_classes = kClasses;
  ImageSet images;
  images.channels = 1;
  images.height = images.width = 28;
  std::mt19937_64 rng(7);
  images.pixels.resize(static_cast<size_t>(n * 28 * 28));
  for (auto& p : images.pixels) p = static_cast<uint8_t>(rng() >> 56);
  for (int64_t i = 0; i < n; ++i) images.labels.push_back(hash_label(static_cast<uint64_t>(i)));
  auto model = TransferModel::create(builtin_cnn(spec.input, 3), spec, 1);
  auto fs = model->features(images);
  return run_case(*model, *fs, epochs, reps);
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 7;
  std::string which = "all";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--case" && i + 1 < argc) {
      which = argv[++i];
    } else {
      std::cerr << "usage: bench_head_training [--reps N] [--case linear512|demo_head|all]\n";
      return 2;
    }
  }
  try {
    set_torch_threads(1);
    json out;
    if (which == "all" || which == "linear512") out["linear512"] = linear512(reps);
    if (which == "all" || which == "demo_head") out["demo_head"] = demo_head(reps);
    std::cout << out.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "bench_head_training: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

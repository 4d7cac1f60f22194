// Model layer: backbone loading and splitting, the feature cache, training, export.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <fstream>
#include <random>

#include "common/blas_kernels.h"
#include "common/errors.h"
#include "common/torchscript_archive.h"
#include "common/model/transfer_model.h"

namespace fs = std::filesystem;
using namespace fedtl::common;
using namespace fedtl::common::model;

namespace {

const char* kPython = "/usr/bin/python3";  // Debian's python3, where python3-torch installs

// Random-ish but learnable images: class k has a bright square at a class-specific spot.
ImageSet synthetic_images(int64_t n, int64_t c, int64_t h, int64_t w, int64_t classes, uint64_t seed) {
  ImageSet s;
  s.channels = c;
  s.height = h;
  s.width = w;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> noise(0, 60);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = i % classes;
    s.labels.push_back(k);
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) {
          const bool on = (y / (h / 2) == (k % 2)) && (x / (w / 3) == (k % 3));
          s.pixels.push_back(static_cast<uint8_t>(on ? 200 + noise(rng) / 2 : noise(rng)));
        }
  }
  return s;
}

ModelSpec cnn_spec(const std::string& freeze = "all_but_last", const std::string& head = "linear") {
  ModelSpec m;
  m.freeze = *parse_freeze(freeze);
  m.unfrozen = 1;
  m.head = *parse_head_type(head);
  m.hidden = 16;
  m.num_classes = 4;
  return m;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) d = std::max(d, std::abs(double(a[i]) - double(b[i])));
  return d;
}

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("fedtl_test_model_" + name + "_" + std::to_string(::getpid()));
  fs::create_directories(p);
  return p;
}

void write_floats(const fs::path& p, const std::vector<float>& v) {
  std::ofstream o(p, std::ios::binary);
  o.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
}

bool python_has(const std::string& module) {
  const std::string cmd = std::string(kPython) + " -c 'import " + module + "' >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

}  // namespace

TEST(TransferModel, BuiltinCnnSplitsAndLaysOutParameters) {
  set_torch_threads(1);
  auto m = TransferModel::create(builtin_cnn(InputSpec{}, 1), cnn_spec(), 7);
  EXPECT_EQ(m->feature_dim(), 128);
  ASSERT_EQ(m->layout().size(), 4u);  // fc.weight, fc.bias, head weight, head bias
  EXPECT_EQ(m->layout()[0].name, "backbone.fc.weight");
  EXPECT_EQ(m->layout()[0].shape, (std::vector<int64_t>{128, 64 * 7 * 7}));
  EXPECT_EQ(m->layout()[2].shape, (std::vector<int64_t>{4, 128}));
  EXPECT_EQ(m->num_params(), 128 * 3136 + 128 + 4 * 128 + 4);
  auto p = m->params();
  for (auto& v : p) v += 0.5f;
  m->set_params(p);
  EXPECT_EQ(m->params(), p);
  EXPECT_THROW(m->set_params(std::vector<float>(3)), fedtl::ModelError);
}

TEST(TransferModel, SameSeedSameInitialisationDifferentSeedDifferent) {
  const std::string bb = builtin_cnn(InputSpec{}, 1);
  EXPECT_EQ(TransferModel::create(bb, cnn_spec(), 3)->params(), TransferModel::create(bb, cnn_spec(), 3)->params());
  EXPECT_NE(TransferModel::create(bb, cnn_spec(), 3)->params(), TransferModel::create(bb, cnn_spec(), 4)->params());
  EXPECT_EQ(builtin_cnn(InputSpec{}, 5), builtin_cnn(InputSpec{}, 5));
}

TEST(TransferModel, CachedTrainingEqualsRecomputing) {
  const std::string bb = builtin_cnn(InputSpec{}, 2);
  ImageSet data = synthetic_images(96, 1, 28, 28, 4, 1);
  TrainOptions opt;
  opt.epochs = 3;
  opt.batch_size = 16;
  opt.seed = 11;
  auto a = TransferModel::create(bb, cnn_spec(), 5);
  auto b = TransferModel::create(bb, cnn_spec(), 5);
  auto fa = a->features(data);
  auto fb = b->features(data, /*keep_inputs=*/true);
  a->train(*fa, opt);
  opt.recompute_features = true;
  b->train(*fb, opt);
  EXPECT_LT(max_abs_diff(a->params(), b->params()), 1e-5);
  EXPECT_NE(a->params(), TransferModel::create(bb, cnn_spec(), 5)->params());  // it did train
  opt.recompute_features = true;
  EXPECT_THROW(a->train(*fa, opt), fedtl::ModelError);  // no inputs kept
}

// Issue 12: gradual unfreezing. The trained set follows set_trained_children: the others keep
// their values, the trained values are the suffix from trained_offset(); and training on the
// cache (computed once at the deepest cut) equals recomputing the backbone, across a phase
// change from head-only to head + fc + block2.
TEST(TransferModel, ScheduleChangesTheTrainedSetAndCacheMatchesRecomputingAcrossPhases) {
  const std::string bb = builtin_cnn(InputSpec{}, 2);
  ImageSet data = synthetic_images(64, 1, 28, 28, 4, 3);
  ModelSpec spec = cnn_spec();
  spec.unfrozen = 2;  // block2 and fc
  auto a = TransferModel::create(bb, spec, 5);
  auto b = TransferModel::create(bb, spec, 5);
  ASSERT_EQ(a->trainable_children().size(), 2u);
  EXPECT_EQ(a->trainable_children()[0].name, "block2");
  EXPECT_EQ(a->trainable_children()[1].name, "fc");
  const int64_t block2 = a->trainable_children()[0].params, fc = a->trainable_children()[1].params;
  EXPECT_EQ(a->trained_offset(), 0);  // all of them by default
  EXPECT_THROW(a->set_trained_children(3), fedtl::ModelError);
  auto fa = a->features(data);
  auto fb = b->features(data, /*keep_inputs=*/true);
  TrainOptions opt;
  opt.epochs = 2;
  opt.batch_size = 16;
  opt.seed = 4;
  opt.backbone_lr = 0.005;
  const auto start = a->params();
  auto step = [&](int64_t k, uint64_t seed) {
    a->set_trained_children(k);
    b->set_trained_children(k);
    opt.seed = seed;
    opt.recompute_features = false;
    a->train(*fa, opt);
    opt.recompute_features = true;
    b->train(*fb, opt);
  };
  step(0, 1);  // the head alone
  EXPECT_EQ(a->trained_offset(), block2 + fc);
  auto p = a->params();
  for (int64_t i = 0; i < block2 + fc; ++i) ASSERT_EQ(p[static_cast<size_t>(i)], start[static_cast<size_t>(i)]) << i;
  EXPECT_NE(std::vector<float>(p.begin() + block2 + fc, p.end()), std::vector<float>(start.begin() + block2 + fc, start.end()));
  step(1, 2);  // fc joins
  EXPECT_EQ(a->trained_offset(), block2);
  p = a->params();
  for (int64_t i = 0; i < block2; ++i) ASSERT_EQ(p[static_cast<size_t>(i)], start[static_cast<size_t>(i)]) << i;
  EXPECT_NE(std::vector<float>(p.begin() + block2, p.begin() + block2 + fc),
            std::vector<float>(start.begin() + block2, start.begin() + block2 + fc));
  step(2, 3);  // block2 too
  p = a->params();
  EXPECT_NE(std::vector<float>(p.begin(), p.begin() + block2), std::vector<float>(start.begin(), start.begin() + block2));
  EXPECT_LT(max_abs_diff(a->params(), b->params()), 1e-5);
  // params(offset) / set_params(values, offset) address the suffix.
  const auto tail = a->params(block2);
  EXPECT_EQ(static_cast<int64_t>(tail.size()), a->num_params() - block2);
  EXPECT_EQ(tail, std::vector<float>(p.begin() + block2, p.end()));
  auto c = TransferModel::create(bb, spec, 5);
  c->set_params(tail, block2);
  EXPECT_EQ(c->params(block2), tail);
  EXPECT_THROW(c->set_params(tail, 0), fedtl::ModelError);
}

// The backbone children train at backbone_lr, the head at lr.
TEST(TransferModel, BackboneChildrenTrainAtTheirOwnLearningRate) {
  const std::string bb = builtin_cnn(InputSpec{}, 2);
  ImageSet data = synthetic_images(64, 1, 28, 28, 4, 3);
  auto moved = [&](double backbone_lr) {
    auto m = TransferModel::create(bb, cnn_spec(), 5);
    const int64_t fc = m->trainable_children()[0].params;
    const auto before = m->params();
    TrainOptions opt;
    opt.batch_size = 16;
    opt.backbone_lr = backbone_lr;
    m->train(*m->features(data), opt);
    const auto after = m->params();
    double bb_move = 0, head_move = 0;
    for (size_t i = 0; i < after.size(); ++i)
      (static_cast<int64_t>(i) < fc ? bb_move : head_move) += std::abs(double(after[i]) - before[i]);
    return std::make_pair(bb_move, head_move);
  };
  const auto full = moved(0.05), tenth = moved(0.005);
  EXPECT_GT(full.first, 3 * tenth.first);  // the fc block moves about a tenth as far
  EXPECT_GT(tenth.second, 0.0);
}

TEST(TransferModel, TrainingLearnsALearnableTask) {
  const std::string bb = builtin_cnn(InputSpec{}, 3);
  auto m = TransferModel::create(bb, cnn_spec("all_but_last", "mlp"), 1);
  auto train = m->features(synthetic_images(200, 1, 28, 28, 4, 2));
  auto test = m->features(synthetic_images(80, 1, 28, 28, 4, 3));
  const double before = m->evaluate(*test).accuracy;
  TrainOptions opt;
  opt.optimizer = Optimizer::kAdam;
  opt.lr = 1e-3;
  opt.epochs = 8;
  auto st = m->train(*train, opt);
  const auto ev = m->evaluate(*test);
  EXPECT_GT(ev.accuracy, 0.9) << "before " << before;
  EXPECT_GT(st.accuracy, 0.9);
  int64_t total = 0;
  for (auto& row : ev.confusion)
    for (auto v : row) total += v;
  EXPECT_EQ(total, 80);
}

TEST(TransferModel, ProximalTermKeepsWeightsCloserToStart) {
  const std::string bb = builtin_cnn(InputSpec{}, 3);
  auto data = synthetic_images(64, 1, 28, 28, 4, 9);
  auto plain = TransferModel::create(bb, cnn_spec(), 1);
  auto prox = TransferModel::create(bb, cnn_spec(), 1);
  const auto start = plain->params();
  TrainOptions opt;
  opt.epochs = 5;
  opt.lr = 0.1;
  plain->train(*plain->features(data), opt);
  opt.prox_mu = 5.0;
  prox->train(*prox->features(data), opt);
  auto dist = [&](const std::vector<float>& p) {
    double s = 0;
    for (size_t i = 0; i < p.size(); ++i) s += (p[i] - start[i]) * (p[i] - start[i]);
    return std::sqrt(s);
  };
  EXPECT_LT(dist(prox->params()), 0.8 * dist(plain->params()));
}

// Issue "scale": a linear head trained alone takes the closed-form gradient path; it makes the
// same updates as autograd and torch.optim (SGD with momentum, weight decay and a proximal
// term; Adam), to float rounding, over epochs with a ragged last batch; and a warm-up round of
// a split backbone (its child not trained) takes it too. `closed_form_linear_head = false` is
// the autograd path itself.
TEST(TransferModel, ClosedFormLinearHeadMatchesAutograd) {
  const std::string bb = builtin_cnn(InputSpec{}, 3);
  const auto data = synthetic_images(70, 1, 28, 28, 4, 5);  // 70 = 2 batches of 32 + 6
  struct Case {
    const char* name;
    const char* freeze;
    Optimizer optimizer;
    double momentum, weight_decay, prox_mu;
  };
  for (const Case& c : {Case{"sgd", "all", Optimizer::kSgd, 0.0, 0.0, 0.0},
                        Case{"sgd+momentum+wd+prox", "all", Optimizer::kSgd, 0.9, 1e-3, 0.5},
                        Case{"adam+wd", "all", Optimizer::kAdam, 0.0, 1e-3, 0.0},
                        Case{"warm-up of a split backbone", "all_but_last", Optimizer::kSgd, 0.5, 0.0, 0.0}}) {
    auto closed = TransferModel::create(bb, cnn_spec(c.freeze), 4);
    auto autograd = TransferModel::create(bb, cnn_spec(c.freeze), 4);
    if (std::string(c.freeze) != "all") {
      closed->set_trained_children(0);
      autograd->set_trained_children(0);
    }
    const auto fc = closed->features(data), fa = autograd->features(data);
    TrainOptions opt;
    opt.optimizer = c.optimizer;
    opt.lr = c.optimizer == Optimizer::kAdam ? 0.01 : 0.1;
    opt.momentum = c.momentum;
    opt.weight_decay = c.weight_decay;
    opt.prox_mu = c.prox_mu;
    opt.epochs = 3;
    opt.seed = 17;
    const auto start = closed->params();
    const TrainStats a = closed->train(*fc, opt);
    opt.closed_form_linear_head = false;
    const TrainStats b = autograd->train(*fa, opt);
    EXPECT_EQ(a.steps, b.steps) << c.name;
    EXPECT_NEAR(a.loss, b.loss, 1e-5) << c.name;
    EXPECT_DOUBLE_EQ(a.accuracy, b.accuracy) << c.name;
    EXPECT_GT(max_abs_diff(closed->params(), start), 1e-3) << c.name << ": nothing trained";
    EXPECT_LT(max_abs_diff(closed->params(), autograd->params()), 2e-5) << c.name;
  }
}

TEST(TransferModel, GreyImagesAreReplicatedAndResizedForAnRgbBackbone) {
  InputSpec rgb;
  rgb.channels = 3;
  rgb.height = 32;
  rgb.width = 32;
  rgb.mean = {0.5, 0.5, 0.5};
  rgb.std = {0.25, 0.25, 0.25};
  ModelSpec spec = cnn_spec("all");
  spec.input = rgb;
  auto m = TransferModel::create(builtin_cnn(rgb, 4), spec, 1);
  auto logits = m->logits(synthetic_images(5, 1, 28, 28, 4, 1));
  EXPECT_EQ(logits.size(), 5u * 4u);
}

TEST(TransferModel, BadBackbonesAreRefusedWithReasons) {
  EXPECT_THROW(TransferModel::create("not a torchscript file", cnn_spec(), 1), fedtl::ModelError);
  ModelSpec wrong = cnn_spec();
  wrong.input.channels = 3;
  wrong.input.mean = wrong.input.std = {1, 1, 1};
  try {
    TransferModel::create(builtin_cnn(InputSpec{}, 1), wrong, 1);
    FAIL() << "a 1-channel backbone accepted 3-channel input";
  } catch (const fedtl::ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("rejects input"), std::string::npos) << e.what();
  }
  ModelSpec too_many = cnn_spec();
  too_many.unfrozen = 4;
  EXPECT_THROW(TransferModel::create(builtin_cnn(InputSpec{}, 1), too_many, 1), fedtl::ModelError);
}

TEST(TransferModel, ExportRoundTripsInCppAndPython) {
  const fs::path dir = temp_dir("export");
  auto m = TransferModel::create(builtin_cnn(InputSpec{}, 6), cnn_spec("all_but_last", "mlp"), 2);
  auto data = synthetic_images(48, 1, 28, 28, 4, 5);
  TrainOptions opt;
  opt.epochs = 2;
  m->train(*m->features(data), opt);
  const auto expected = m->logits(data);
  const std::string path = (dir / "model.pt").string();
  m->export_torchscript(path);
  EXPECT_LT(max_abs_diff(run_exported_model(path, data), expected), 1e-5);

  ASSERT_TRUE(python_has("torch")) << kPython << " cannot import torch: install python3-torch (scripts/setup does)";
  std::vector<float> input;
  for (uint8_t p : data.pixels) input.push_back(static_cast<float>(p) / 255.0f);
  write_floats(dir / "input.f32", input);
  write_floats(dir / "expected.f32", expected);
  const std::string cmd = std::string(kPython) + " " + FEDTL_SOURCE_DIR + "/tests/common/model/check_export.py " + path + " " +
                          (dir / "input.f32").string() + " 48 1 28 28 " + (dir / "expected.f32").string();
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  fs::remove_all(dir);
}

TEST(TransferModel, TorchvisionResNetTracedInPythonWorks) {
  if (!python_has("torchvision")) GTEST_SKIP() << "python3-torchvision is not installed (scripts/setup installs it)";
  const fs::path dir = temp_dir("resnet");
  const std::string bb_path = (dir / "resnet18.pt").string();
  const std::string cmd = std::string(kPython) + " " + FEDTL_SOURCE_DIR + "/tests/common/model/make_resnet.py " + bb_path + " 32";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(bb_path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ModelSpec spec = cnn_spec("all");
  spec.input.channels = 3;
  spec.input.height = spec.input.width = 32;
  spec.input.mean = {0.485, 0.456, 0.406};
  spec.input.std = {0.229, 0.224, 0.225};
  auto frozen = TransferModel::create(bytes, spec, 1);
  EXPECT_EQ(frozen->feature_dim(), 512);
  EXPECT_EQ(frozen->num_params(), 512 * 4 + 4);
  // Fine-tune layer4 too: its children run in order (avgpool's 4-D output is pooled). Only
  // children with parameters count (issue 12): unfrozen = 1 is layer4, not the Identity fc.
  spec.freeze = Freeze::kAllButLast;
  spec.unfrozen = 1;
  auto tuned = TransferModel::create(bytes, spec, 1);
  ASSERT_EQ(tuned->trainable_children().size(), 1u);
  EXPECT_EQ(tuned->trainable_children()[0].name, "layer4");
  EXPECT_GT(tuned->trainable_children()[0].params, 8'000'000);
  EXPECT_EQ(tuned->num_params(), tuned->trainable_children()[0].params + 512 * 4 + 4);
  spec.unfrozen = 2;  // layer3 and layer4
  auto two = TransferModel::create(bytes, spec, 1);
  ASSERT_EQ(two->trainable_children().size(), 2u);
  EXPECT_EQ(two->trainable_children()[0].name, "layer3");
  auto data = synthetic_images(8, 1, 28, 28, 4, 1);  // grey 28x28 -> RGB 32x32
  TrainOptions opt;
  opt.batch_size = 4;
  tuned->train(*tuned->features(data), opt);
  const auto expected = tuned->logits(data);
  const std::string out = (dir / "model.pt").string();
  tuned->export_torchscript(out);
  EXPECT_LT(max_abs_diff(run_exported_model(out, data), expected), 1e-4);
  fs::remove_all(dir);
}

namespace {
std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
}  // namespace

// A backbone is code: one that reads a site file (torch.from_file) is refused before it runs on
// any data, and the refusal names the operator and where it is used. The built-in CNN and the
// torchvision models traced in PyTorch use only allowlisted operators.
TEST(BackboneOperators, FileReadingBackboneIsRefusedNamingOperatorAndMethod) {
  ASSERT_TRUE(python_has("torch")) << kPython << " cannot import torch: install python3-torch (scripts/setup does)";
  const fs::path dir = temp_dir("hostile");
  const std::string secret = (dir / "patients.csv").string();
  std::ofstream(secret) << "patient,diagnosis\nalice,positive\n" << std::string(64, 'x');
  const std::string bb = (dir / "hostile.pt").string();
  const std::string cmd = std::string(kPython) + " " + FEDTL_SOURCE_DIR + "/tests/common/model/make_hostile.py " + bb +
                          " " + secret;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const std::string bytes = read_all(bb);
  bool found = false;
  for (const auto& use : backbone_operators(bytes))
    if (use.op == "aten::from_file") {
      found = true;
      EXPECT_EQ(use.where, "backbone.forward");
      EXPECT_FALSE(operator_allowed(use.op));
    }
  EXPECT_TRUE(found) << "the walk must see aten::from_file";
  try {
    TransferModel::create(bytes, cnn_spec("all"), 1);
    FAIL() << "a file-reading backbone was accepted";
  } catch (const fedtl::ModelError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("aten::from_file"), std::string::npos) << what;
    EXPECT_NE(what.find("backbone.forward"), std::string::npos) << what;
  }
  fs::remove_all(dir);
}

TEST(BackboneArchive, SetstateThatRunsWhileLoadingIsRefusedBeforeLibTorchOpensTheFile) {
  ASSERT_TRUE(python_has("torch")) << kPython << " cannot import torch: install python3-torch (scripts/setup does)";
  const fs::path dir = temp_dir("setstate");
  const std::string secret = (dir / "site.key").string();
  std::ofstream(secret) << "-----BEGIN PRIVATE KEY-----";
  const std::string bb = (dir / "onload.pt").string();
  const std::string cmd = std::string(kPython) + " " + FEDTL_SOURCE_DIR + "/tests/common/model/make_hostile.py " + bb +
                          " " + secret + " setstate";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const std::string bytes = read_all(bb);
  for (auto load : {std::function<void()>([&] { TransferModel::create(bytes, cnn_spec("all"), 1); }),
                    std::function<void()>([&] { backbone_operators(bytes); })}) {
    try {
      load();
      FAIL() << "a backbone with a __setstate__ was opened";
    } catch (const fedtl::ModelError& e) {
      EXPECT_NE(std::string(e.what()).find("defines __setstate__"), std::string::npos) << e.what();
    }
  }
  fs::remove_all(dir);
}

TEST(BackboneArchive, ZipBombIsRefusedFromItsDirectoryAndHonestArchivesPass) {
  ASSERT_TRUE(python_has("torch")) << kPython << " cannot import torch: install python3-torch (scripts/setup does)";
  const std::string cnn = builtin_cnn(InputSpec{}, 1);
  EXPECT_GT(check_torchscript_archive(cnn), cnn.size() / 2);
  const fs::path dir = temp_dir("zipbomb");
  const std::string bb = (dir / "bomb.pt").string();
  const std::string cmd = std::string(kPython) + " " + FEDTL_SOURCE_DIR + "/tests/common/model/make_hostile.py " + bb +
                          " 64 zipbomb";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const std::string bytes = read_all(bb);
  ASSERT_LT(bytes.size(), 1u << 20) << "64 MiB of zeros deflate to well under 1 MiB";
  ArchiveLimits small;
  small.max_total_bytes = 16u << 20;
  try {
    check_torchscript_archive(bytes, small);
    FAIL() << "a " << bytes.size() << "-byte archive unpacking to 64 MiB passed a 16 MiB bound";
  } catch (const fedtl::ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("zip bomb"), std::string::npos) << e.what();
  }
  // Within the default total bound it is still refused: its storage member declares 64 MiB
  // for a tensor of one float.
  try {
    check_torchscript_archive(bytes);
    FAIL() << "a storage member larger than its tensor passed";
  } catch (const fedtl::ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("but its tensor needs 4: a zip bomb"), std::string::npos) << e.what();
  }
  // Not a zip file at all, and a truncated one.
  EXPECT_THROW(check_torchscript_archive(std::string(100, 'x')), fedtl::ModelError);
  EXPECT_THROW(check_torchscript_archive(cnn.substr(0, cnn.size() - 30)), fedtl::ModelError);
  fs::remove_all(dir);
}

TEST(BackboneOperators, BuiltinAndTorchvisionBackbonesUseOnlyAllowedOperators) {
  for (const auto& use : backbone_operators(builtin_cnn(InputSpec{}, 3)))
    EXPECT_TRUE(operator_allowed(use.op)) << use.op << " in " << use.where;
  if (!python_has("torchvision")) GTEST_SKIP() << "python3-torchvision is not installed (scripts/setup installs it)";
  const fs::path dir = temp_dir("tv_ops");
  const std::string script = (dir / "trace.py").string();
  std::ofstream(script) << "import sys, torch, torchvision\n"
                           "for name in ['resnet18', 'densenet121', 'efficientnet_b0', 'mobilenet_v2']:\n"
                           "    net = getattr(torchvision.models, name)(weights=None).eval()\n"
                           "    torch.jit.trace(net, torch.rand(1, 3, 64, 64)).save(sys.argv[1] + '/' + name + '.pt')\n";
  const std::string cmd = std::string(kPython) + " " + script + " " + dir.string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  for (const char* name : {"resnet18", "densenet121", "efficientnet_b0", "mobilenet_v2"}) {
    const auto uses = backbone_operators(read_all((dir / (std::string(name) + ".pt")).string()));
    EXPECT_GT(uses.size(), 5u) << name;
    for (const auto& use : uses) EXPECT_TRUE(operator_allowed(use.op)) << name << ": " << use.op << " in " << use.where;
  }
  fs::remove_all(dir);
}

// common/blas_kernels.h: a process with LibTorch loaded does not multiply on OpenBLAS's generic
// fallback kernels where the CPU runs better ones (this test binary is such a process; on a CPU
// OpenBLAS 0.3.21 does not know it fails without the re-exec in transfer_model.cc).
TEST(BlasKernels, ALibTorchProcessDoesNotRunOnTheGenericFallback) {
  const char* core = openblas_core_name();
  if (core == nullptr) GTEST_SKIP() << "LibTorch's BLAS here is not OpenBLAS";
  __builtin_cpu_init();
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) GTEST_SKIP() << "the CPU has no AVX2 and FMA";
  const char* named = std::getenv("OPENBLAS_CORETYPE");
  if (named != nullptr && std::string(named) != "SkylakeX" && std::string(named) != "Haswell")
    GTEST_SKIP() << "OPENBLAS_CORETYPE=" << named << " was set by hand";
  EXPECT_STRNE(core, "Prescott");
  // Nothing is left to override in this process, so a second look must not ask for a re-exec.
  EXPECT_EQ(blas_core_override(/*loaded_only=*/true), nullptr);
}

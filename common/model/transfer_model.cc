// LibTorch implementation of the model layer (see transfer_model.h for the contract).
#include "common/model/transfer_model.h"

#include "common/torchscript_archive.h"

#include <torch/script.h>
#include <torch/torch.h>
#include <torch/csrc/jit/passes/inliner.h>

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <map>
#include <set>
#include <sstream>

#include "common/blas_kernels.h"
#include "common/errors.h"
#include "common/seeds.h"
#include "common/files.h"
#include "common/progress.h"
#include "common/sha256.h"

namespace fedtl::common::model {
namespace {

// common/blas_kernels.h: a process with LibTorch loaded whose OpenBLAS fell back to its generic
// kernels starts again with better ones named. An ELF constructor of the program runs after the
// shared libraries' (OpenBLAS has chosen by then) and before main; glibc passes it argv (other C
// libraries do not, hence the guard).
#ifdef __GLIBC__
__attribute__((constructor)) void choose_blas_kernels(int, char** argv, char**) { reexec_with_blas_core(argv); }
#endif

using torch::Tensor;
using Clock = std::chrono::steady_clock;

// LibTorch messages span many lines (with source excerpts); keep the gist on one line.
std::string one_line(const std::string& msg) {
  std::string out;
  bool space = false;
  for (char c : msg) {
    if (c == '\n' || c == '\t' || c == ' ') {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
    if (out.size() > 300) return out + " ...";
  }
  return out;
}

// Runs `fn`, turning LibTorch exceptions into ModelError with `context`.
template <typename F>
auto guarded(const std::string& context, F&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const fedtl::Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw ModelError(context + ": " + one_line(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    // TorchScript interpreter errors end with the underlying reason on the last line.
    std::string msg = e.what();
    while (!msg.empty() && msg.back() == '\n') msg.pop_back();
    const auto last = msg.find_last_of('\n');
    throw ModelError(context + ": " + one_line(last == std::string::npos ? msg : msg.substr(last + 1)));
  }
}

// Uniform(-bound, bound) from an explicit generator: LibTorch's default init uses the
// process-wide generator, which threads would race on.
Tensor seeded_uniform(std::vector<int64_t> shape, double bound, std::mt19937_64& rng) {
  Tensor t = torch::empty(shape, torch::kFloat32);
  std::uniform_real_distribution<float> dist(static_cast<float>(-bound), static_cast<float>(bound));
  float* p = t.data_ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng);
  return t;
}

// Images -> float tensor in the backbone's input convention.
Tensor preprocess(const ImageSet& images, const InputSpec& in) {
  const int64_t n = images.size();
  Tensor x = torch::from_blob(const_cast<uint8_t*>(images.pixels.data()),
                              {n, images.channels, images.height, images.width}, torch::kUInt8)
                 .to(torch::kFloat32)
                 .div_(255.0);
  if (images.channels == 1 && in.channels == 3) {
    x = x.repeat({1, 3, 1, 1});
  } else if (images.channels == 3 && in.channels == 1) {
    x = (x.select(1, 0) * 0.299 + x.select(1, 1) * 0.587 + x.select(1, 2) * 0.114).unsqueeze(1);
  } else if (images.channels != in.channels) {
    throw ModelError("images have " + std::to_string(images.channels) + " channels; the backbone takes " +
                     std::to_string(in.channels));
  }
  if (images.height != in.height || images.width != in.width)
    x = at::upsample_bilinear2d(x, {in.height, in.width}, /*align_corners=*/false);
  Tensor mean = torch::tensor(std::vector<float>(in.mean.begin(), in.mean.end())).view({1, -1, 1, 1});
  Tensor stdv = torch::tensor(std::vector<float>(in.std.begin(), in.std.end())).view({1, -1, 1, 1});
  return ((x - mean) / stdv).contiguous();
}

Tensor labels_tensor(const ImageSet& images) {
  return torch::tensor(images.labels, torch::kInt64);
}

// A 4-D feature map becomes a vector per sample (global average pooling).
Tensor pool_flatten(const Tensor& f) {
  if (f.dim() == 4) return torch::flatten(torch::adaptive_avg_pool2d(f, {1, 1}), 1);
  if (f.dim() > 2) return torch::flatten(f, 1);
  return f;
}

// A child whose own "weight" is a matrix is a Linear layer: give it a flat input.
bool wants_flat_input(const torch::jit::Module& child) {
  if (!child.hasattr("weight")) return false;
  auto w = child.attr("weight");
  return w.isTensor() && w.toTensor().dim() == 2;
}

// A traced module keeps children its trace never called (torchvision's Identity classifier)
// with a forward() that takes no input; they are not part of the computation.
bool takes_input(const torch::jit::Module& child) {
  auto m = child.find_method("forward");
  return m && m->function().getSchema().arguments().size() >= 2;
}

Tensor run_children(const std::vector<torch::jit::Module>& children, Tensor x) {
  for (const auto& c : children) {
    if (!takes_input(c)) continue;
    if (x.dim() > 2 && wants_flat_input(c)) x = torch::flatten(x, 1);
    x = const_cast<torch::jit::Module&>(c).forward({x}).toTensor();
  }
  return x;
}

std::string save_module(const torch::jit::Module& m) {
  std::ostringstream os;
  m.save(os);
  return os.str();
}

// The reviewed allowlist (common/model/operator_allowlist.inc).
const std::set<std::string>& operator_allowlist() {
  static const std::set<std::string> ops = {
#include "common/model/operator_allowlist.inc"
  };
  return ops;
}

// Every operator every method of every module of `m` uses, calls inlined (a method that calls
// a function or another module's method brings that code in), nested blocks included; each
// with the first "module.method" it was found in.
std::vector<OperatorUse> collect_operators(const torch::jit::Module& m) {
  std::map<std::string, std::string> first_use;
  for (const auto& named : m.named_modules()) {
    const std::string module = named.name.empty() ? "backbone" : "backbone." + named.name;
    for (const auto& method : named.value.get_methods()) {
      auto graph = method.graph()->copy();
      torch::jit::Inline(*graph);
      std::vector<torch::jit::Block*> blocks{graph->block()};
      while (!blocks.empty()) {
        torch::jit::Block* b = blocks.back();
        blocks.pop_back();
        for (torch::jit::Node* n : b->nodes()) {
          first_use.emplace(n->kind().toQualString(), module + "." + method.name());
          for (torch::jit::Block* sub : n->blocks()) blocks.push_back(sub);
        }
      }
    }
  }
  std::vector<OperatorUse> out;
  for (auto& [op, where] : first_use) out.push_back({op, where});
  return out;
}

torch::jit::Module load_module(const std::string& bytes, uint64_t max_unpacked = uint64_t{2} << 30) {
  ArchiveLimits limits;
  limits.max_total_bytes = max_unpacked;
  check_torchscript_archive(bytes, limits);  // before LibTorch allocates or runs anything of it
  std::istringstream is(bytes);
  torch::jit::Module m = torch::jit::load(is, torch::kCPU);
  for (const auto& use : collect_operators(m))
    if (!operator_allowlist().count(use.op))
      throw ModelError("backbone refused: " + use.where + " uses operator '" + use.op +
                       "', which is not on fedtl's allowlist of pure tensor operators "
                       "(common/model/operator_allowlist.inc); a backbone may only compute");
  return m;
}

// Packs every gradient into one buffer, lets the site's ranks average it, unpacks it.
void average_site_gradients(std::vector<Tensor>& params, const TrainOptions& opt) {
  std::vector<Tensor> flat;
  for (auto& p : params) flat.push_back(p.grad().defined() ? p.grad().reshape({-1}) : torch::zeros_like(p).reshape({-1}));
  Tensor buf;
  if (opt.prescale_host_gradients && opt.ranks_in_site > 1 && !flat.front().is_cuda()) {
    // One pass: each gradient is copied into the buffer already divided by the site's size.
    int64_t total = 0;
    for (const auto& g : flat) total += g.numel();
    buf = torch::empty({total}, flat.front().options());
    const Tensor scale = torch::scalar_tensor(1.0 / opt.ranks_in_site, flat.front().options());
    int64_t off = 0;
    for (const auto& g : flat) {
      Tensor dst = buf.slice(0, off, off + g.numel());
      torch::mul_out(dst, g, scale);
      off += g.numel();
    }
  } else {
    buf = torch::cat(flat).contiguous();
  }
  opt.average_gradients(buf.data_ptr<float>(), static_cast<size_t>(buf.numel()), buf.is_cuda());
  int64_t off = 0;
  torch::NoGradGuard ng;
  for (auto& p : params) {
    const int64_t n = p.numel();
    p.mutable_grad() = buf.slice(0, off, off + n).view(p.sizes()).clone();
    off += n;
  }
}

}  // namespace

int64_t ParamInfo::numel() const {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
}

struct FeatureSet::Impl {
  Tensor features;  // [N, ...] output of the frozen prefix
  Tensor labels;    // [N] int64
  Tensor inputs;    // [N, C, H, W] preprocessed images, only when kept
};

FeatureSet::FeatureSet(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FeatureSet::~FeatureSet() = default;
int64_t FeatureSet::size() const { return impl_->labels.size(0); }
int64_t FeatureSet::bytes() const {
  return impl_->features.numel() * impl_->features.element_size() +
         (impl_->inputs.defined() ? impl_->inputs.numel() * impl_->inputs.element_size() : 0);
}

struct TransferModel::Impl {
  ModelSpec spec;
  torch::jit::Module backbone;
  bool whole_frozen = false;                     // freeze = "all": prefix is backbone.forward
  std::vector<torch::jit::Module> frozen;        // frozen children, in order
  std::vector<torch::jit::Module> trainable;     // trained children, in order
  std::vector<Tensor> head;                      // w1, b1[, w2, b2]
  std::vector<Tensor> params;                    // trainable backbone params, then head
  std::vector<ParamInfo> layout;
  int64_t feature_dim = 0;
  int64_t num_params = 0;
  // The trainable children that hold parameters, and where their tensors start in `params`.
  std::vector<ChildInfo> children;
  std::vector<size_t> child_first;  // index into params of each child's first tensor
  int64_t trained_children = 0;     // the last this-many children train (set_trained_children)

  size_t first_trained_tensor() const {
    const size_t k = static_cast<size_t>(trained_children);
    return k == 0 ? params.size() - head.size() : child_first[children.size() - k];
  }

  Tensor frozen_forward(const Tensor& x) const {
    if (whole_frozen) return const_cast<torch::jit::Module&>(backbone).forward({x}).toTensor();
    return run_children(frozen, x);
  }
  Tensor head_forward(const Tensor& f) const {
    if (head.size() == 2) return torch::addmm(head[1], f, head[0].t());
    return torch::addmm(head[3], torch::relu(torch::addmm(head[1], f, head[0].t())), head[2].t());
  }
  Tensor trainable_forward(const Tensor& cached) const {
    return head_forward(pool_flatten(run_children(trainable, cached)));
  }
};

TransferModel::TransferModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TransferModel::~TransferModel() = default;

std::unique_ptr<TransferModel> TransferModel::create(const std::string& backbone_bytes, const ModelSpec& spec,
                                                     uint64_t init_seed) {
  return guarded("backbone", [&] {
    torch::NoGradGuard no_grad;
    auto impl = std::make_unique<Impl>();
    impl->spec = spec;
    try {
      impl->backbone = load_module(backbone_bytes, spec.max_backbone_bytes);
    } catch (const c10::Error& e) {
      throw ModelError("not a TorchScript file (torch.jit.save format) or unreadable: " +
                       std::string(e.what_without_backtrace()).substr(0, 200));
    }
    impl->backbone.eval();  // BatchNorm/Dropout use inference behaviour; see docs/architecture.md
    std::vector<torch::jit::Module> children;
    std::vector<std::string> child_names;
    for (const auto& c : impl->backbone.named_children()) {
      children.push_back(c.value);
      child_names.push_back(c.name);
    }

    // Probe batch: two deterministic images in the backbone's input convention.
    Tensor probe = torch::linspace(-1, 1, 2 * spec.input.channels * spec.input.height * spec.input.width)
                       .view({2, spec.input.channels, spec.input.height, spec.input.width});
    Tensor full;
    try {
      full = impl->backbone.forward({probe}).toTensor();
    } catch (const std::exception& e) {  // c10::Error or torch::jit::JITException
      std::string msg = e.what();
      const auto last = msg.find_last_of('\n', msg.size() > 1 ? msg.size() - 2 : 0);
      throw ModelError("backbone rejects input of shape [N, " + std::to_string(spec.input.channels) + ", " +
                       std::to_string(spec.input.height) + ", " + std::to_string(spec.input.width) +
                       "] (check backbone.channels/height/width): " +
                       one_line(last == std::string::npos ? msg : msg.substr(last + 1)));
    }
    Tensor full_flat = pool_flatten(full);

    size_t n_trainable = 0;
    if (spec.freeze == Freeze::kAll) {
      impl->whole_frozen = true;
    } else {
      // Only children with parameters count towards `unfrozen`; the parameterless ones
      // between them (pooling, an Identity classifier) run with the trained part.
      auto has_params = [](const torch::jit::Module& c) { return c.parameters(/*recurse=*/true).size() > 0; };
      size_t with_params = 0;
      for (const auto& c : children) with_params += has_params(c) ? 1 : 0;
      if (spec.freeze == Freeze::kNone) {
        n_trainable = children.size();
      } else {
        const size_t want = static_cast<size_t>(spec.unfrozen);
        if (want > with_params)
          throw ModelError("backbone has " + std::to_string(with_params) +
                           " top-level children with parameters; cannot train the last " + std::to_string(want) +
                           " (backbone.unfrozen)");
        size_t seen = 0;
        n_trainable = 0;
        while (seen < want) {
          if (has_params(children[children.size() - 1 - n_trainable])) ++seen;
          ++n_trainable;
        }
      }
      if (children.empty())
        throw ModelError("backbone has no top-level children; cannot train any of them (set backbone.freeze = \"all\")");
      impl->frozen.assign(children.begin(), children.end() - static_cast<long>(n_trainable));
      impl->trainable.assign(children.end() - static_cast<long>(n_trainable), children.end());
      Tensor seq = pool_flatten(run_children(children, probe));
      if (!seq.sizes().equals(full_flat.sizes()) || !torch::allclose(seq, full_flat, 1e-4, 1e-5))
        throw ModelError("backbone's forward() is not its top-level children run in order; set backbone.freeze = \"all\"");
    }
    impl->feature_dim = full_flat.size(1);

    for (size_t i = 0; i < impl->trainable.size(); ++i) {
      const std::string child = child_names[children.size() - impl->trainable.size() + i];
      int64_t count = 0;
      const size_t first = impl->params.size();
      for (const auto& p : impl->trainable[i].named_parameters(/*recurse=*/true)) {
        impl->params.push_back(p.value);
        impl->layout.push_back({"backbone." + child + "." + p.name, p.value.sizes().vec()});
        count += p.value.numel();
      }
      if (impl->params.size() > first) {
        impl->children.push_back({child, count});
        impl->child_first.push_back(first);
      }
    }
    impl->trained_children = static_cast<int64_t>(impl->children.size());
    std::mt19937_64 rng(derive_seed(init_seed, seed_stream::kHeadInit));
    auto add_linear = [&](const std::string& name, int64_t in, int64_t out) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      impl->head.push_back(seeded_uniform({out, in}, bound, rng));
      impl->head.push_back(seeded_uniform({out}, bound, rng));
      impl->layout.push_back({"head." + name + ".weight", {out, in}});
      impl->layout.push_back({"head." + name + ".bias", {out}});
    };
    switch (spec.head) {
      case HeadType::kLinear:
        add_linear("fc", impl->feature_dim, spec.num_classes);
        break;
      case HeadType::kMlp:
        add_linear("fc1", impl->feature_dim, spec.hidden);
        add_linear("fc2", spec.hidden, spec.num_classes);
        break;
    }
    for (auto& t : impl->head) impl->params.push_back(t);
    for (auto& p : impl->params) impl->num_params += p.numel();
    // Only the trainable tensors take gradients.
    for (auto p : impl->backbone.parameters()) p.set_requires_grad(false);
    return std::unique_ptr<TransferModel>(new TransferModel(std::move(impl)));
  });
}

const std::vector<ParamInfo>& TransferModel::layout() const { return impl_->layout; }
int64_t TransferModel::num_params() const { return impl_->num_params; }
int64_t TransferModel::feature_dim() const { return impl_->feature_dim; }

const std::vector<ChildInfo>& TransferModel::trainable_children() const { return impl_->children; }

void TransferModel::set_trained_children(int64_t k) {
  if (k < 0 || k > static_cast<int64_t>(impl_->children.size()))
    throw ModelError("cannot train " + std::to_string(k) + " backbone children: the model has " +
                     std::to_string(impl_->children.size()) + " trainable ones");
  impl_->trained_children = k;
}

int64_t TransferModel::trained_children() const { return impl_->trained_children; }

int64_t TransferModel::trained_offset() const {
  int64_t off = 0;
  for (size_t i = 0; i < impl_->first_trained_tensor(); ++i) off += impl_->params[i].numel();
  return off;
}

std::vector<float> TransferModel::params(int64_t offset) const {
  if (offset < 0 || offset > impl_->num_params)
    throw ModelError("parameter offset " + std::to_string(offset) + " is outside the model's " +
                     std::to_string(impl_->num_params) + " values");
  std::vector<float> out(static_cast<size_t>(impl_->num_params - offset));
  int64_t pos = 0;
  for (const auto& p : impl_->params) {
    Tensor c = p.detach().contiguous();
    const int64_t n = c.numel();
    const int64_t from = std::max<int64_t>(offset - pos, 0);
    if (from < n)
      std::memcpy(out.data() + (pos + from - offset), c.data_ptr<float>() + from,
                  static_cast<size_t>(n - from) * sizeof(float));
    pos += n;
  }
  return out;
}

void TransferModel::set_params(const std::vector<float>& values, int64_t offset) {
  if (offset < 0 || offset > impl_->num_params || static_cast<int64_t>(values.size()) != impl_->num_params - offset)
    throw ModelError("parameter vector has " + std::to_string(values.size()) + " values from offset " +
                     std::to_string(offset) + "; the model has " + std::to_string(impl_->num_params));
  torch::NoGradGuard no_grad;
  int64_t pos = 0;
  for (auto& p : impl_->params) {
    const int64_t n = p.numel();
    const int64_t from = std::max<int64_t>(offset - pos, 0);
    if (from < n) {
      Tensor src = torch::from_blob(const_cast<float*>(values.data() + (pos + from - offset)), {n - from},
                                    torch::kFloat32);
      p.view({-1}).slice(0, from, n).copy_(src);
    }
    pos += n;
  }
}

std::unique_ptr<FeatureSet> TransferModel::features(const ImageSet& images, bool keep_inputs, int64_t batch) const {
  return guarded("computing features", [&] {
    torch::NoGradGuard no_grad;
    auto fs = std::make_unique<FeatureSet::Impl>();
    fs->labels = labels_tensor(images);
    const int64_t n = images.size();
    if (n == 0) throw ModelError("no images to compute features for");
    // A large backbone at 224x224 takes minutes here: say how far it is (quiet when quick).
    common::Progress progress("computing backbone features", static_cast<uint64_t>(n), "images");
    // Each batch is written into its rows of the whole (allocated from the first batch's shape)
    // rather than collected and concatenated: the peak holds the features once, not twice (the
    // coordinator's 5,000 test images: 62.7 MB of features).
    auto rows_of = [n](const Tensor& first) {
      std::vector<int64_t> shape = first.sizes().vec();
      shape[0] = n;
      return torch::empty(shape, first.options());
    };
    for (int64_t s = 0; s < n; s += batch) {
      std::vector<int64_t> idx(static_cast<size_t>(std::min(batch, n - s)));
      std::iota(idx.begin(), idx.end(), s);
      Tensor x = preprocess(images.subset(idx), impl_->spec.input);
      Tensor f = impl_->frozen_forward(x);
      if (s == 0) {
        fs->features = rows_of(f);
        if (keep_inputs) fs->inputs = rows_of(x);
      }
      const auto len = static_cast<int64_t>(idx.size());
      fs->features.narrow(0, s, len).copy_(f);
      if (keep_inputs) fs->inputs.narrow(0, s, len).copy_(x);
      progress.advance(idx.size());
    }
    return std::make_unique<FeatureSet>(std::move(fs));
  });
}

namespace {

// Local training of a linear head alone (weight w: k x d, bias b: k, both contiguous float32
// on the CPU) on fixed inputs f (n x d) with labels y, with the gradient in closed form: for
// cross-entropy through one linear layer, dL/dlogits = (softmax - onehot) / batch, so a step is
// a few loops over the batch and no autograd graph or optimiser objects are built. At batch 32
// their per-step overhead was most of the time (head_training: 1.96x Python PyTorch with it).
// Same shuffling, batches, loss, statistics and optimiser updates as the autograd path in
// TransferModel::train (torch.optim.SGD with momentum and weight decay, Adam without amsgrad);
// only the floating-point summation order differs (tests compare the two).
TrainStats train_linear_head_closed_form(Tensor& w, Tensor& b, const Tensor& f_in, const Tensor& y_in,
                                         const TrainOptions& opt) {
  const auto t0 = Clock::now();
  const Tensor f = f_in.to(torch::kFloat32).contiguous();
  const Tensor yt = y_in.to(torch::kInt64).contiguous();
  const int64_t n = f.size(0), d = f.size(1), k = w.size(0);
  float* W = w.data_ptr<float>();
  float* B = b.data_ptr<float>();
  const float* X = f.data_ptr<float>();
  const int64_t* Y = yt.data_ptr<int64_t>();
  const size_t np = static_cast<size_t>(k * d + k);
  const size_t kd = static_cast<size_t>(k * d);
  std::vector<float> grad(np), m1(np, 0.f), m2(np, 0.f), anchor;
  if (opt.prox_mu > 0) {
    anchor.resize(np);
    for (size_t i = 0; i < np; ++i) anchor[i] = i < kd ? W[i] : B[i - kd];
  }
  std::vector<float> logits(static_cast<size_t>(k)), g(static_cast<size_t>(k));
  std::vector<double> expo(static_cast<size_t>(k));
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(opt.seed);
  TrainStats st;
  st.samples = n;
  const double b1 = 0.9, b2 = 0.999, eps = 1e-8;  // torch::optim::AdamOptions defaults
  for (int64_t e = 0; e < opt.epochs; ++e) {
    std::shuffle(order.begin(), order.end(), rng);
    double loss_sum = 0;
    int64_t correct = 0;
    for (int64_t s = 0; s < n; s += opt.batch_size) {
      const int64_t end = std::min(n, s + opt.batch_size), bs = end - s;
      std::fill(grad.begin(), grad.end(), 0.f);
      double batch_loss = 0;
      for (int64_t r = s; r < end; ++r) {
        const int64_t i = order[static_cast<size_t>(r)];
        const float* x = X + i * d;
        const int64_t label = Y[i];
        float top = -std::numeric_limits<float>::infinity();
        int64_t arg = 0;
        for (int64_t c = 0; c < k; ++c) {
          const float* wc = W + c * d;
          // Eight partial sums: independent chains the compiler can vectorise (a single float
          // sum is a serial dependency; BLAS splits it the same way).
          float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
          int64_t j = 0;
          for (; j + 8 <= d; j += 8)
            for (int q = 0; q < 8; ++q) part[q] += wc[j + q] * x[j + q];
          float acc = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
          for (; j < d; ++j) acc += wc[j] * x[j];
          acc += B[c];
          logits[static_cast<size_t>(c)] = acc;
          if (acc > top) {  // the first largest, as argmax
            top = acc;
            arg = c;
          }
        }
        double z = 0;
        for (int64_t c = 0; c < k; ++c) {
          expo[static_cast<size_t>(c)] = std::exp(static_cast<double>(logits[static_cast<size_t>(c)] - top));
          z += expo[static_cast<size_t>(c)];
        }
        batch_loss += std::log(z) + top - logits[static_cast<size_t>(label)];
        correct += arg == label ? 1 : 0;
        for (int64_t c = 0; c < k; ++c) {
          const double p = expo[static_cast<size_t>(c)] / z;
          g[static_cast<size_t>(c)] = static_cast<float>((p - (c == label ? 1.0 : 0.0)) / static_cast<double>(bs));
        }
        for (int64_t c = 0; c < k; ++c) {
          const float gc = g[static_cast<size_t>(c)];
          float* gw = grad.data() + c * d;
          for (int64_t j = 0; j < d; ++j) gw[j] += gc * x[j];
          grad[static_cast<size_t>(k * d + c)] += gc;
        }
      }
      const int64_t step = ++st.steps;
      const double bc1 = 1 - std::pow(b1, static_cast<double>(step)), bc2 = 1 - std::pow(b2, static_cast<double>(step));
      for (size_t i = 0; i < np; ++i) {
        float& p = i < kd ? W[i] : B[i - kd];
        float gi = grad[i];
        if (opt.prox_mu > 0) gi += static_cast<float>(opt.prox_mu) * (p - anchor[i]);
        if (opt.weight_decay != 0) gi += static_cast<float>(opt.weight_decay) * p;
        if (opt.optimizer == Optimizer::kAdam) {
          m1[i] = static_cast<float>(b1) * m1[i] + static_cast<float>(1 - b1) * gi;
          m2[i] = static_cast<float>(b2) * m2[i] + static_cast<float>(1 - b2) * gi * gi;
          const float denom = static_cast<float>(std::sqrt(static_cast<double>(m2[i])) / std::sqrt(bc2) + eps);
          p -= static_cast<float>(opt.lr / bc1) * m1[i] / denom;
        } else {
          if (opt.momentum != 0) {
            m1[i] = step == 1 ? gi : static_cast<float>(opt.momentum) * m1[i] + gi;
            gi = m1[i];
          }
          p -= static_cast<float>(opt.lr) * gi;
        }
      }
      loss_sum += batch_loss;  // the batch mean times the batch size
    }
    st.loss = loss_sum / static_cast<double>(n);
    st.accuracy = static_cast<double>(correct) / static_cast<double>(n);
  }
  st.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return st;
}

}  // namespace

TrainStats TransferModel::train(const FeatureSet& data, const TrainOptions& opt) {
  return guarded("local training", [&] {
    const auto& d = data.impl();
    if (opt.recompute_features && !d.inputs.defined())
      throw ModelError("recompute_features needs a FeatureSet made with keep_inputs");
    const auto t0 = Clock::now();
    // This round's trainable tensors: the last trained_children children's, then the head's.
    const size_t first = impl_->first_trained_tensor(), head_first = impl_->params.size() - impl_->head.size();
    if (opt.closed_form_linear_head && first == head_first && impl_->head.size() == 2 && !opt.recompute_features &&
        opt.ranks_in_site == 1 && !opt.average_gradients && impl_->head[0].device().is_cpu() &&
        impl_->head[0].scalar_type() == torch::kFloat32 && impl_->head[0].is_contiguous() &&
        impl_->head[1].is_contiguous()) {
      // The head alone trains: the children in front of it are fixed for this call, so their
      // outputs are computed once.
      Tensor f;
      {
        torch::NoGradGuard ng;
        f = pool_flatten(run_children(impl_->trainable, d.features));
      }
      return train_linear_head_closed_form(impl_->head[0], impl_->head[1], f, d.labels, opt);
    }
    std::vector<Tensor> params(impl_->params.begin() + static_cast<long>(first), impl_->params.end());
    std::vector<Tensor> backbone_part(impl_->params.begin() + static_cast<long>(first),
                                      impl_->params.begin() + static_cast<long>(head_first));
    std::vector<Tensor> head_part(impl_->params.begin() + static_cast<long>(head_first), impl_->params.end());
    for (auto& p : params) p.set_requires_grad(true);
    const double backbone_lr = opt.backbone_lr > 0 ? opt.backbone_lr : opt.lr;
    std::vector<torch::optim::OptimizerParamGroup> groups;
    auto options = [&](double lr) -> std::unique_ptr<torch::optim::OptimizerOptions> {
      if (opt.optimizer == Optimizer::kAdam)
        return std::make_unique<torch::optim::AdamOptions>(torch::optim::AdamOptions(lr).weight_decay(opt.weight_decay));
      return std::make_unique<torch::optim::SGDOptions>(
          torch::optim::SGDOptions(lr).momentum(opt.momentum).weight_decay(opt.weight_decay));
    };
    if (!backbone_part.empty()) groups.emplace_back(backbone_part, options(backbone_lr));
    groups.emplace_back(head_part, options(opt.lr));
    std::unique_ptr<torch::optim::Optimizer> optim;
    switch (opt.optimizer) {
      case Optimizer::kAdam:
        optim = std::make_unique<torch::optim::Adam>(std::move(groups), torch::optim::AdamOptions(opt.lr));
        break;
      case Optimizer::kSgd:
        optim = std::make_unique<torch::optim::SGD>(std::move(groups), torch::optim::SGDOptions(opt.lr));
        break;
    }
    std::vector<Tensor> anchor;
    if (opt.prox_mu > 0)
      for (const auto& p : params) anchor.push_back(p.detach().clone());

    const int64_t n = data.size();
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 rng(opt.seed);
    TrainStats st;
    st.samples = n;
    for (int64_t e = 0; e < opt.epochs; ++e) {
      std::shuffle(order.begin(), order.end(), rng);
      Tensor perm = torch::from_blob(order.data(), {n}, torch::kInt64);
      double loss_sum = 0;
      int64_t correct = 0;
      for (int64_t s = 0; s < n; s += opt.batch_size) {
        Tensor idx = perm.slice(0, s, std::min(n, s + opt.batch_size));
        if (opt.ranks_in_site > 1) {  // this rank's slice of the batch
          const int64_t b = idx.size(0), k = opt.ranks_in_site, r = opt.rank_in_site;
          idx = idx.slice(0, r * b / k, (r + 1) * b / k);
          if (idx.size(0) == 0) throw ModelError("batch smaller than the number of ranks in the site");
        }
        Tensor x;
        if (opt.recompute_features) {
          torch::NoGradGuard ng;
          x = impl_->frozen_forward(d.inputs.index_select(0, idx));
        } else {
          x = d.features.index_select(0, idx);
        }
        Tensor y = d.labels.index_select(0, idx);
        Tensor logits = impl_->trainable_forward(x);
        Tensor loss = torch::nn::functional::cross_entropy(logits, y);
        optim->zero_grad();
        loss.backward();
        if (opt.average_gradients) average_site_gradients(params, opt);
        if (opt.prox_mu > 0) {
          torch::NoGradGuard ng;
          for (size_t i = 0; i < params.size(); ++i) params[i].mutable_grad().add_(params[i] - anchor[i], opt.prox_mu);
        }
        optim->step();
        ++st.steps;
        loss_sum += loss.item<double>() * static_cast<double>(idx.size(0));
        correct += logits.argmax(1).eq(y).sum().item<int64_t>();
      }
      st.loss = loss_sum / static_cast<double>(n);
      st.accuracy = static_cast<double>(correct) / static_cast<double>(n);
    }
    for (auto& p : params) p.set_requires_grad(false);
    st.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return st;
  });
}

EvalResult TransferModel::evaluate(const FeatureSet& data, int64_t batch) const {
  return guarded("evaluation", [&] {
    torch::NoGradGuard no_grad;
    const auto& d = data.impl();
    const int64_t n = data.size(), k = impl_->spec.num_classes;
    EvalResult r;
    r.samples = n;
    r.confusion.assign(static_cast<size_t>(k), std::vector<int64_t>(static_cast<size_t>(k), 0));
    double loss_sum = 0;
    int64_t correct = 0;
    for (int64_t s = 0; s < n; s += batch) {
      Tensor x = d.features.slice(0, s, std::min(n, s + batch));
      Tensor y = d.labels.slice(0, s, std::min(n, s + batch));
      Tensor logits = impl_->trainable_forward(x);
      loss_sum += torch::nn::functional::cross_entropy(
                      logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                      .item<double>();
      Tensor pred = logits.argmax(1);
      correct += pred.eq(y).sum().item<int64_t>();
      Tensor prob = torch::softmax(logits, 1).contiguous();
      r.scores.insert(r.scores.end(), prob.data_ptr<float>(), prob.data_ptr<float>() + prob.numel());
      Tensor yc = y.contiguous();
      r.labels.insert(r.labels.end(), yc.data_ptr<int64_t>(), yc.data_ptr<int64_t>() + yc.numel());
      auto pa = pred.accessor<int64_t, 1>();
      auto ya = y.accessor<int64_t, 1>();
      for (int64_t i = 0; i < pred.size(0); ++i) {
        if (ya[i] >= 0 && ya[i] < k) ++r.confusion[static_cast<size_t>(ya[i])][static_cast<size_t>(pa[i])];
      }
    }
    r.accuracy = n ? static_cast<double>(correct) / static_cast<double>(n) : 0.0;
    r.loss = n ? loss_sum / static_cast<double>(n) : 0.0;
    return r;
  });
}

std::vector<float> TransferModel::logits(const ImageSet& images) const {
  return guarded("inference", [&] {
    torch::NoGradGuard no_grad;
    Tensor x = preprocess(images, impl_->spec.input);
    Tensor out = impl_->trainable_forward(impl_->frozen_forward(x)).contiguous();
    return std::vector<float>(out.data_ptr<float>(), out.data_ptr<float>() + out.numel());
  });
}

std::string TransferModel::digest() const {
  return guarded("digest", [&] {
    Sha256 h;
    auto add = [&](const Tensor& t) {
      Tensor c = t.detach().to(torch::kFloat32).contiguous();
      h.update(c.data_ptr<float>(), static_cast<size_t>(c.numel()) * sizeof(float));
    };
    for (const auto& p : impl_->backbone.parameters()) add(p);
    for (const auto& b : impl_->backbone.buffers())
      if (b.is_floating_point()) add(b);
    for (const auto& t : impl_->head) add(t);
    return h.hex_digest();
  });
}

void TransferModel::export_torchscript(const std::string& path, const std::vector<std::string>& classes) const {
  guarded("exporting TorchScript to " + path, [&] {
    const auto& in = impl_->spec.input;
    torch::jit::Module head("FedtlHead");
    const bool mlp = impl_->head.size() == 4;
    head.register_parameter("w1", impl_->head[0].detach().clone(), false);
    head.register_parameter("b1", impl_->head[1].detach().clone(), false);
    if (mlp) {
      head.register_parameter("w2", impl_->head[2].detach().clone(), false);
      head.register_parameter("b2", impl_->head[3].detach().clone(), false);
      head.define(R"(
def forward(self, x):
    h = torch.relu(torch.addmm(self.b1, x, self.w1.t()))
    return torch.addmm(self.b2, h, self.w2.t())
)");
    } else {
      head.define(R"(
def forward(self, x):
    return torch.addmm(self.b1, x, self.w1.t())
)");
    }
    torch::jit::Module m("FedtlModel");
    m.register_module("backbone", impl_->backbone.clone());
    m.register_module("head", head);
    m.register_buffer("mean", torch::tensor(std::vector<float>(in.mean.begin(), in.mean.end())).view({1, -1, 1, 1}));
    m.register_buffer("std", torch::tensor(std::vector<float>(in.std.begin(), in.std.end())).view({1, -1, 1, 1}));
    std::ostringstream src;
    src << "def forward(self, x):\n"
        << "    c = x.size(1)\n"
        << "    if c == 1 and " << in.channels << " == 3:\n"
        << "        x = x.repeat([1, 3, 1, 1])\n"
        << "    if c == 3 and " << in.channels << " == 1:\n"
        << "        x = (x.select(1, 0) * 0.299 + x.select(1, 1) * 0.587 + x.select(1, 2) * 0.114).unsqueeze(1)\n"
        << "    if x.size(2) != " << in.height << " or x.size(3) != " << in.width << ":\n"
        << "        x = torch.upsample_bilinear2d(x, [" << in.height << ", " << in.width << "], False)\n"
        << "    x = (x - self.mean) / self.std\n"
        << "    f = self.backbone.forward(x)\n"
        << "    if f.dim() == 4:\n"
        << "        f = torch.flatten(torch.adaptive_avg_pool2d(f, [1, 1]), 1)\n"
        << "    elif f.dim() > 2:\n"
        << "        f = torch.flatten(f, 1)\n"
        << "    return self.head.forward(f)\n";
    m.define(src.str());
    c10::List<std::string> names;
    for (const auto& c : classes) names.push_back(c);
    m.register_attribute("classes", c10::ListType::ofStrings(), names);
    m.eval();
    write_file_atomic(path, save_module(m));
  });
}

// --- re-initialised backbones ----------------------------------------------------------------

std::string reinitialized_backbone(const std::string& backbone_bytes, uint64_t seed) {
  return guarded("re-initialising the backbone", [&] {
    torch::jit::Module m = load_module(backbone_bytes);
    std::mt19937_64 rng(seed);
    torch::NoGradGuard no_grad;
    for (const auto& p : m.named_parameters(/*recurse=*/true)) {
      Tensor t = p.value;
      const bool is_bias = p.name.size() >= 4 && p.name.compare(p.name.size() - 4, 4, "bias") == 0;
      if (t.dim() >= 2) {
        const double fan_in = static_cast<double>(t.numel() / t.size(0));
        t.copy_(seeded_uniform(t.sizes().vec(), 1.0 / std::sqrt(fan_in), rng).to(t.dtype()));
      } else if (is_bias) {
        t.zero_();
      } else {
        t.fill_(1.0);
      }
    }
    for (const auto& b : m.named_buffers(/*recurse=*/true)) {
      const std::string& n = b.name;
      auto ends = [&](const char* suffix) {
        const size_t k = std::strlen(suffix);
        return n.size() >= k && n.compare(n.size() - k, k, suffix) == 0;
      };
      if (ends("running_mean") || ends("num_batches_tracked")) b.value.zero_();
      if (ends("running_var")) b.value.fill_(1.0);
    }
    return save_module(m);
  });
}

// --- built-in CNN ---------------------------------------------------------------------------

std::string builtin_cnn(const InputSpec& input, uint64_t seed) {
  return guarded("building the built-in CNN", [&] {
    if (input.height % 4 != 0 || input.width % 4 != 0)
      throw ModelError("the built-in CNN needs height and width divisible by 4");
    std::mt19937_64 rng(seed);
    auto conv = [&](const char* name, int64_t cin, int64_t cout) {
      torch::jit::Module b(name);
      const double bound = 1.0 / std::sqrt(static_cast<double>(cin * 9));
      b.register_parameter("weight", seeded_uniform({cout, cin, 3, 3}, bound, rng), false);
      b.register_parameter("bias", seeded_uniform({cout}, bound, rng), false);
      b.define(R"(
def forward(self, x):
    return torch.max_pool2d(torch.relu(torch.conv2d(x, self.weight, self.bias, [1, 1], [1, 1])), [2, 2])
)");
      return b;
    };
    const int64_t flat = 64 * (input.height / 4) * (input.width / 4);
    torch::jit::Module fc("FcBlock");
    const double bound = 1.0 / std::sqrt(static_cast<double>(flat));
    fc.register_parameter("weight", seeded_uniform({128, flat}, bound, rng), false);
    fc.register_parameter("bias", seeded_uniform({128}, bound, rng), false);
    fc.define(R"(
def forward(self, x):
    return torch.relu(torch.addmm(self.bias, torch.flatten(x, 1), self.weight.t()))
)");
    torch::jit::Module m("FedtlCnn");
    m.register_module("block1", conv("ConvBlock1", input.channels, 32));
    m.register_module("block2", conv("ConvBlock2", 32, 64));
    m.register_module("fc", fc);
    m.define(R"(
def forward(self, x):
    return self.fc.forward(self.block2.forward(self.block1.forward(x)))
)");
    return save_module(m);
  });
}

std::string pretrain_builtin_cnn(const ImageSet& train, const ImageSet& test, const InputSpec& input,
                                 const PretrainOptions& opt) {
  return guarded("pre-training", [&] {
    torch::jit::Module m = load_module(builtin_cnn(input, opt.seed));
    m.train();
    const int64_t k = *std::max_element(train.labels.begin(), train.labels.end()) + 1;
    std::mt19937_64 rng(opt.seed + 1);
    Tensor cw = seeded_uniform({k, 128}, 1.0 / std::sqrt(128.0), rng);
    Tensor cb = seeded_uniform({k}, 1.0 / std::sqrt(128.0), rng);
    std::vector<Tensor> params;
    for (auto p : m.parameters()) {
      p.set_requires_grad(true);
      params.push_back(p);
    }
    cw.set_requires_grad(true);
    cb.set_requires_grad(true);
    params.push_back(cw);
    params.push_back(cb);
    torch::optim::Adam optim(params, torch::optim::AdamOptions(opt.lr));
    Tensor x_all = preprocess(train, input);
    Tensor y_all = labels_tensor(train);
    Tensor x_test = preprocess(test, input);
    Tensor y_test = labels_tensor(test);
    const int64_t n = train.size();
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    for (int64_t e = 1; e <= opt.epochs; ++e) {
      std::shuffle(order.begin(), order.end(), rng);
      Tensor perm = torch::from_blob(order.data(), {n}, torch::kInt64);
      double loss_sum = 0;
      common::Progress progress("pre-training epoch " + std::to_string(e) + "/" + std::to_string(opt.epochs),
                                static_cast<uint64_t>(n), "images");
      for (int64_t s = 0; s < n; s += opt.batch_size) {
        Tensor idx = perm.slice(0, s, std::min(n, s + opt.batch_size));
        progress.advance(static_cast<uint64_t>(idx.size(0)));
        Tensor f = m.forward({x_all.index_select(0, idx)}).toTensor();
        Tensor loss = torch::nn::functional::cross_entropy(torch::addmm(cb, f, cw.t()), y_all.index_select(0, idx));
        optim.zero_grad();
        loss.backward();
        optim.step();
        loss_sum += loss.item<double>() * static_cast<double>(idx.size(0));
      }
      int64_t correct = 0;
      {
        torch::NoGradGuard ng;
        for (int64_t s = 0; s < test.size(); s += 1000) {
          Tensor f = m.forward({x_test.slice(0, s, std::min(test.size(), s + 1000))}).toTensor();
          correct += torch::addmm(cb, f, cw.t()).argmax(1).eq(y_test.slice(0, s, std::min(test.size(), s + 1000)))
                         .sum()
                         .item<int64_t>();
        }
      }
      if (opt.on_epoch)
        opt.on_epoch(e, loss_sum / static_cast<double>(n),
                     test.size() ? static_cast<double>(correct) / static_cast<double>(test.size()) : 0.0);
    }
    for (auto p : m.parameters()) p.set_requires_grad(false);
    m.eval();
    return save_module(m);
  });
}

std::vector<float> run_exported_model(const std::string& path, const ImageSet& images) {
  return guarded("running " + path, [&] {
    torch::NoGradGuard no_grad;
    torch::jit::Module m = torch::jit::load(path, torch::kCPU);
    m.eval();
    Tensor x = torch::from_blob(const_cast<uint8_t*>(images.pixels.data()),
                                {images.size(), images.channels, images.height, images.width}, torch::kUInt8)
                   .to(torch::kFloat32)
                   .div_(255.0);
    Tensor out = m.forward({x}).toTensor().contiguous();
    return std::vector<float>(out.data_ptr<float>(), out.data_ptr<float>() + out.numel());
  });
}

void set_torch_threads(int n) {
  torch::set_num_threads(n);
  // OpenBLAS keeps its own pool, sized to the machine, whose idle threads spin; with one
  // LibTorch thread per site they only burn CPU (measured: 22 s of system time in a 30 s run).
  using SetThreads = void (*)(int);
  if (auto fn = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) fn(n);
}

std::vector<OperatorUse> backbone_operators(const std::string& backbone_bytes) {
  return guarded("reading the backbone's operators", [&] {
    check_torchscript_archive(backbone_bytes);
    std::istringstream is(backbone_bytes);
    return collect_operators(torch::jit::load(is, torch::kCPU));
  });
}

bool operator_allowed(const std::string& op) { return operator_allowlist().count(op) > 0; }

}  // namespace fedtl::common::model

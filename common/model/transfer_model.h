// The model layer: a TorchScript backbone, a frozen prefix whose outputs are cached, the
// trainable rest (last backbone children + a new head), local training, evaluation and
// export. This header is the only door to LibTorch: it includes no torch headers, so the
// rest of fedtl compiles without them. All LibTorch errors (c10::Error) are caught inside and
// re-thrown as fedtl::ModelError with context.
//
// Parameters cross this boundary as flat float32 vectors in layout() order: the trainable
// backbone children's parameters (in named_parameters order), then the head's.
//
// Thread safety: a TransferModel and its FeatureSets are used by one thread at a time.
// Distinct instances may train concurrently (each site of a simulation owns one).
// Determinism: no global RNG is used; initialisation and shuffling derive from explicit seeds.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/data/image_set.h"

namespace fedtl::common::model {

// What the backbone takes. Images of another channel count are converted (grey replicated
// to RGB, RGB to luma) and other sizes resized bilinearly; then (x/255 - mean) / std.
struct InputSpec {
  int64_t channels = 1, height = 28, width = 28;
  std::vector<double> mean{0.2860}, std{0.3530};
};

// Which top-level backbone children train: none of them (kAll: the head alone), the last
// ModelSpec::unfrozen of them, or all of them. Only children that hold parameters count: a
// torchvision trunk's avgpool and Identity fc are run, but `unfrozen = 1` means its layer4.
enum class Freeze { kAll, kAllButLast, kNone };
enum class HeadType { kLinear, kMlp };  // a linear layer, or linear-ReLU-linear
enum class Optimizer { kSgd, kAdam };

// The job file's spelling of each value ("all_but_last", "mlp", "adam", ...) and back; the
// parsers return nullopt for a name they do not know (the caller names the key).
const char* to_string(Freeze f);
const char* to_string(HeadType h);
const char* to_string(Optimizer o);
std::optional<Freeze> parse_freeze(const std::string& name);
std::optional<HeadType> parse_head_type(const std::string& name);
std::optional<Optimizer> parse_optimizer(const std::string& name);

struct ModelSpec {
  InputSpec input;
  Freeze freeze = Freeze::kAllButLast;
  int64_t unfrozen = 1;                 // trained backbone children (with parameters) for kAllButLast
  HeadType head = HeadType::kLinear;
  int64_t hidden = 128;
  int64_t num_classes = 5;
  // The backbone archive may unpack to at most this many bytes (checked before LibTorch
  // opens it: common/torchscript_archive.h).
  uint64_t max_backbone_bytes = uint64_t{2} << 30;
};

struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel() const;
};

struct TrainOptions {
  Optimizer optimizer = Optimizer::kSgd;
  double lr = 0.05, momentum = 0.0, weight_decay = 0.0;
  // Learning rate of the backbone children that train (the head takes lr); 0 = lr.
  double backbone_lr = 0.0;
  int64_t epochs = 1, batch_size = 32;
  double prox_mu = 0.0;           // FedProx: adds mu*(w - w_start) to every gradient
  uint64_t seed = 0;              // shuffling
  bool recompute_features = false;  // ignore the cache: run the frozen prefix every step
  // Data-parallel training inside a multi-rank site: every rank shuffles identically (same
  // seed) and takes its slice [rank*b/k, (rank+1)*b/k) of each batch of size b; after
  // backward, average_gradients receives all trainable gradients as one contiguous float32
  // buffer (on the parameters' device; on_cuda says which) and must replace it, in place,
  // with the mean over the site's ranks (MPI_Allreduce on CPU, NCCL on CUDA). Each rank's
  // loss is the mean over its slice, so with equal slices the mean of the ranks' gradients
  // is the whole batch's gradient.
  int rank_in_site = 0, ranks_in_site = 1;
  std::function<void(float* data, size_t count, bool on_cuda)> average_gradients;
  // true: gradients in host memory are divided by ranks_in_site in the copy that packs them,
  // and average_gradients only sums them (a bare MPI_Allreduce; GradientAverager::
  // expects_prescaled). Gradients on CUDA are packed as they are (NCCL averages itself).
  bool prescale_host_gradients = false;
  // A linear head trained alone (no backbone child this round, one rank, cached features) is
  // trained with its gradient in closed form, without autograd (3x fewer per-step costs; same
  // updates up to floating-point summation order). false: always autograd (tests compare).
  bool closed_form_linear_head = true;
};

// A backbone child the model can train (it holds parameters), with its parameter count.
struct ChildInfo {
  std::string name;
  int64_t params = 0;
};

struct TrainStats {
  double loss = 0, accuracy = 0;  // over the last epoch
  int64_t samples = 0, steps = 0;
  double seconds = 0;
};

struct EvalResult {
  double accuracy = 0, loss = 0;
  int64_t samples = 0;
  std::vector<std::vector<int64_t>> confusion;  // [true class][predicted class]
  // Per sample: the softmax scores (samples x classes, row-major) and the true label, for
  // the clinical metrics (common/metrics.h).
  std::vector<float> scores;
  std::vector<int64_t> labels;
};

// Outputs of the frozen prefix for a set of images, with their labels. Opaque.
class FeatureSet {
 public:
  struct Impl;
  explicit FeatureSet(std::unique_ptr<Impl> impl);
  ~FeatureSet();
  int64_t size() const;
  int64_t bytes() const;  // memory held by the cached features
  const Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

class TransferModel {
 public:
  // Loads a TorchScript backbone (the bytes of a torch.jit.save file), splits it per `spec`,
  // and creates a head initialised from `init_seed`. Runs a probe batch to find the feature
  // width and, when the backbone is split, checks that running its top-level children in
  // order reproduces its forward(). Throws ModelError (input shape the backbone rejects, a
  // non-sequential backbone with freeze != "all", too few children for `unfrozen`).
  static std::unique_ptr<TransferModel> create(const std::string& backbone_bytes, const ModelSpec& spec,
                                               uint64_t init_seed);
  ~TransferModel();

  const std::vector<ParamInfo>& layout() const;
  int64_t num_params() const;       // trainable floats (every child the spec unfreezes, and the head)
  int64_t feature_dim() const;      // width of the backbone's (pooled, flattened) output
  // The backbone children in the layout (those with parameters), in order.
  const std::vector<ChildInfo>& trainable_children() const;
  // Gradual unfreezing: train() trains the head and the last `k` of trainable_children()
  // (0 <= k <= their count; the default is all of them). The others keep their values and run
  // forward over the cached features without gradients, so the cache (computed once, at the
  // deepest cut) stays valid whatever k is. Throws ModelError for k out of range.
  void set_trained_children(int64_t k);
  int64_t trained_children() const;
  // Index of the first value train() changes in the flat layout order (the trained values are
  // the suffix [trained_offset(), num_params())).
  int64_t trained_offset() const;
  // The flat parameters from `offset` to the end, and setting them (values.size() must be
  // num_params() - offset; throws ModelError otherwise).
  std::vector<float> params(int64_t offset = 0) const;
  void set_params(const std::vector<float>& values, int64_t offset = 0);

  // Runs the frozen prefix over `images` in batches of `batch` (no autograd) and returns the
  // cache. keep_inputs also keeps the preprocessed images (needed for recompute_features).
  std::unique_ptr<FeatureSet> features(const ImageSet& images, bool keep_inputs = false,
                                       int64_t batch = 256) const;

  // Local training of the trainable part on cached features (a fresh optimiser per call).
  TrainStats train(const FeatureSet& data, const TrainOptions& opt);
  EvalResult evaluate(const FeatureSet& data, int64_t batch = 1024) const;
  // Full pipeline from raw pixels to logits [N x num_classes], row-major.
  std::vector<float> logits(const ImageSet& images) const;

  // SHA-256 over every backbone parameter and buffer and every head parameter (float32 LE,
  // in module order): identifies the model independently of file formats.
  std::string digest() const;
  // Writes backbone + head (+ the input conversion and normalisation) as one TorchScript
  // module whose forward takes float images in [0, 1], N x C x H x W, and returns logits.
  // Loadable with torch.jit.load in Python. Written atomically. `classes` (the class name of
  // each logit, when known) is stored as the module's `classes` attribute (a list of str).
  void export_torchscript(const std::string& path, const std::vector<std::string>& classes = {}) const;

 private:
  struct Impl;
  explicit TransferModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// --- the built-in backbone --------------------------------------------------------------
// A small CNN as a TorchScript module with three top-level children:
//   block1: conv3x3(C->32) + ReLU + maxpool2   block2: conv3x3(32->64) + ReLU + maxpool2
//   fc:     flatten + linear(64*(H/4)*(W/4) -> 128) + ReLU
// Returns the bytes of torch.jit.save. Parameters are initialised from `seed`.
std::string builtin_cnn(const InputSpec& input, uint64_t seed);

// The same TorchScript backbone with every parameter re-initialised from `seed` (what "the same
// architecture, trained from scratch" starts from): weights of 2+ dimensions uniform in
// ±1/sqrt(fan_in) (PyTorch's default for convolutions and linear layers), biases 0, 1-D weights
// (normalisation scales) 1; batch-norm statistics reset (mean 0, variance 1). Checked like any
// backbone first (archive, operators).
std::string reinitialized_backbone(const std::string& backbone_bytes, uint64_t seed);

struct PretrainOptions {
  int64_t epochs = 3, batch_size = 128;
  double lr = 1e-3;  // Adam
  uint64_t seed = 1;
  // Called after each epoch: epoch (1-based), mean training loss, test accuracy.
  std::function<void(int64_t, double, double)> on_epoch;
};

// Trains the built-in CNN with a temporary linear classifier on `train` (labels 0..K-1),
// reports source-test accuracy per epoch, and returns the backbone (classifier dropped) as
// TorchScript bytes.
std::string pretrain_builtin_cnn(const ImageSet& train, const ImageSet& test, const InputSpec& input,
                                 const PretrainOptions& opt);

// Runs an exported model file (export_torchscript's format) on raw images: pixels/255 as
// float N x C x H x W. Returns logits row-major. For deployment checks and tests.
std::vector<float> run_exported_model(const std::string& path, const ImageSet& images);

// LibTorch intra-op threads for this process (1 keeps results bit-reproducible).
void set_torch_threads(int n);

// A backbone may only compute. Every load of a TorchScript module (TransferModel::create and
// everything that takes backbone bytes) walks all methods of all its modules, calls inlined,
// and refuses with ModelError, naming the operator and "module.method", one that uses an
// operator outside the reviewed allowlist (common/model/operator_allowlist.inc): nothing that
// touches files, the network, processes or the Python runtime gets to run on a site's data.
// Limit: TorchScript runs a module's __setstate__ while loading it, before the walk; the walk
// covers __setstate__ too, so such a file is refused, but after that code ran once.
struct OperatorUse {
  std::string op;     // e.g. "aten::conv2d"
  std::string where;  // the first "backbone.<submodule>.<method>" that uses it
};
// The operators `backbone_bytes` uses (for `fedtl worker --inspect-job` style listings).
// Throws ModelError when the file does not load.
std::vector<OperatorUse> backbone_operators(const std::string& backbone_bytes);
bool operator_allowed(const std::string& op);

}  // namespace fedtl::common::model

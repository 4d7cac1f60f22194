// The LibTorch-backed SiteRuntime: a site's model, its cached features and local training.
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/compute_slots.h"
#include "common/data/image_set.h"
#include "common/model/transfer_model.h"
#include "worker/site_runtime.h"

namespace fedtl::app {

// The models of the simulated sites of one process (`fedtl simulate`), and the threads that
// use them: `threads` workers (job.concurrency), each with a model of its own built on first
// use. A site runs each computation (feature caching, a round's training, validation,
// evaluation) on one of them through run(), so between rounds it holds no model, and only
// these few threads ever touch LibTorch (its per-thread buffers, BLAS's among them, do not grow
// with the sites). A model serves every site as well as a site's own would: the backbone never
// changes in place (eval mode, frozen values) and every use loads the round's trained values
// first (load_round), which cover every value any earlier round trained (the trained set only
// grows: protocols/schedule.h). The backbone's bytes are kept once. Thread-safe.
class ModelPool {
 public:
  explicit ModelPool(int threads);
  ~ModelPool();  // finishes queued work, joins the threads
  ModelPool(const ModelPool&) = delete;
  ModelPool& operator=(const ModelPool&) = delete;
  // The job every site of the pool runs, with its (verified) backbone: the first call keeps a
  // copy of the bytes; a later call for another backbone or model throws ModelError.
  void adopt(const v1::JobSpec& job, const std::string& backbone_bytes);
  // Whether the pool adopted this job's backbone and model already (its archive was checked).
  bool holds(const v1::JobSpec& job) const;
  // Runs fn on a pool thread with that thread's model (built on first use from the adopted
  // job) and waits; rethrows what fn threw. Throws ModelError before adopt().
  void run(const std::function<void(common::model::TransferModel&)>& fn);

 private:
  struct Task;
  void serve();
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task*> queue_;
  bool stopping_ = false;
  bool adopted_ = false;
  std::string key_;  // backbone digest + model spec + layout of the adopted job
  v1::JobSpec job_;
  std::string backbone_;
  std::vector<std::thread> threads_;
};

class SiteTrainer : public worker::SiteRuntime {
 public:
  // Loads the site's labelled images once the job is known (its input spec decides how an
  // image folder is decoded). The images never leave this object.
  using DataLoader = std::function<common::ImageSet(const v1::JobSpec&)>;
  // `slots` (optional, not owned) bounds concurrent feature caching and training across the
  // sites of one process.
  explicit SiteTrainer(DataLoader loader, common::ComputeSlots* slots = nullptr)
      : loader_(std::move(loader)), slots_(slots) {}
  explicit SiteTrainer(common::ImageSet data, common::ComputeSlots* slots = nullptr)
      : data_(std::move(data)), loaded_(true), slots_(slots) {}
  // A simulated site (`fedtl simulate`): each computation runs on `pool` (shared by the
  // process's sites, not owned) with one of its models, and once its features are cached the
  // site drops its images, so between rounds it holds only its labels and feature caches.
  // `slots` may be null (the pool's threads bound the computing).
  SiteTrainer(common::ImageSet data, ModelPool* pool, common::ComputeSlots* slots)
      : data_(std::move(data)), loaded_(true), slots_(slots), pool_(pool) {}
  // prepare() loads the data, builds the model and caches the frozen-prefix features (of the
  // training and validation splits) before the site reports Ready, so the first round's
  // deadline is not spent on forward passes; progress is logged while it runs.
  // Checks the backbone archive first (unpacked size at most max_backbone_bytes, no
  // __setstate__: common/torchscript_archive.h), before any data is loaded or LibTorch opens it.
  uint64_t prepare(const v1::JobSpec& job, const std::string& backbone_bytes) override;
  // The site policy's bound on a backbone's unpacked size (policy.max_backbone_bytes).
  void set_max_backbone_bytes(uint64_t n) { max_backbone_bytes_ = n; }
  // Holds out data.validation_fraction of the site's images (stratified, seeded by job seed and
  // site index) before anything trains; the rest is the training set whose size prepare()
  // returns.
  worker::LocalUpdate train_round(uint32_t round, const std::vector<float>& global) override;
  worker::ValidationFigures validate(uint32_t round, const std::vector<float>& params) override;
  // The training split's figures (common/data/input_stats.h), computed in prepare().
  v1::InputStats input_stats() const override { return input_stats_; }
  // The final model on the validation split, and after personalize_epochs epochs of the head
  // alone on the training split (same optimiser settings as the job's local training, no
  // proximal term); the model is loaded afresh by the next round or evaluation.
  std::optional<v1::SiteEvaluation> evaluate_site(uint32_t round, const std::vector<float>& params,
                                                  uint32_t personalize_epochs) override;

 private:
  DataLoader loader_;
  common::ImageSet data_;
  bool loaded_ = false;
  common::ComputeSlots* slots_ = nullptr;
  ModelPool* pool_ = nullptr;
  bool prepared_ = false;
  uint64_t train_count_ = 0, validation_count_ = 0;  // images in each split (kept when images are dropped)
  uint64_t max_backbone_bytes_ = uint64_t{2} << 30;
  v1::JobSpec job_;
  common::ImageSet train_, validation_;  // data_ split by the job's validation fraction
  std::unique_ptr<common::model::TransferModel> model_;
  std::unique_ptr<common::model::FeatureSet> features_, validation_features_;
  v1::InputStats input_stats_;
  worker::ValidationFigures evaluate_validation(common::model::TransferModel& model);
  // Runs fn with the site's model: its own, on this thread, or a pool thread's.
  void with_model(const std::function<void(common::model::TransferModel&)>& fn);
};

}  // namespace fedtl::app

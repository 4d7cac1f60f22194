// The LibTorch-backed SiteRuntime: a site's model, its cached features and local training.
#pragma once
#include <functional>
#include <memory>

#include "common/compute_slots.h"
#include "common/data/image_set.h"
#include "common/model/transfer_model.h"
#include "worker/site_runtime.h"

namespace fedtl::app {

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
  uint64_t max_backbone_bytes_ = uint64_t{2} << 30;
  v1::JobSpec job_;
  common::ImageSet train_, validation_;  // data_ split by the job's validation fraction
  std::unique_ptr<common::model::TransferModel> model_;
  std::unique_ptr<common::model::FeatureSet> features_, validation_features_;
  v1::InputStats input_stats_;
  worker::ValidationFigures evaluate_validation();
};

}  // namespace fedtl::app

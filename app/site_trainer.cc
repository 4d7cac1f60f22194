#include "app/site_trainer.h"

#include <cmath>

#include "app/job_setup.h"
#include "common/errors.h"
#include "common/torchscript_archive.h"

namespace fedtl::app {

uint64_t SiteTrainer::prepare(const v1::JobSpec& job, const std::string& backbone_bytes) {
  // After a reconnect to the same job the model and the feature cache are still valid.
  const bool same_job = model_ && job.backbone_sha256() == job_.backbone_sha256() &&
                        job.model().SerializeAsString() == job_.model().SerializeAsString() &&
                        job.layout().SerializeAsString() == job_.layout().SerializeAsString() &&
                        job.training().validation_fraction() == job_.training().validation_fraction() &&
                        job.site_index() == job_.site_index() && job.seed() == job_.seed();
  job_ = job;
  if (same_job) return static_cast<uint64_t>(train_.size());
  common::ArchiveLimits limits;
  limits.max_total_bytes = max_backbone_bytes_;
  common::check_torchscript_archive(backbone_bytes, limits);
  if (!loaded_) {
    data_ = loader_(job);
    loaded_ = true;
  }
  if (data_.size() == 0) throw DataError("this site has no training images");
  auto split = split_site_data(job, data_);
  train_ = std::move(split.train);
  validation_ = std::move(split.validation);
  input_stats_ = site_input_stats(job, train_);
  model_ = site_model(job, backbone_bytes);
  // Cache the frozen backbone's features now, before Ready: the coordinator starts a round's
  // deadline only once every site is ready, so round 1 is not eaten by the forward passes.
  common::ComputeSlots::Guard slot(slots_);
  features_ = model_->features(train_);
  validation_features_.reset();
  if (validation_.size() > 0) validation_features_ = model_->features(validation_);
  return static_cast<uint64_t>(train_.size());
}

worker::ValidationFigures SiteTrainer::evaluate_validation() {
  worker::ValidationFigures v;
  if (validation_.size() == 0) return v;
  if (!validation_features_) validation_features_ = model_->features(validation_);
  return validation_figures(model_->evaluate(*validation_features_));
}

worker::LocalUpdate SiteTrainer::train_round(uint32_t round, const std::vector<float>& global) {
  common::ComputeSlots::Guard slot(slots_);
  if (!features_) features_ = model_->features(train_);
  load_round(*model_, job_, round, global);
  worker::LocalUpdate up;
  up.validation = evaluate_validation();
  const auto st = model_->train(*features_, train_options(job_, round));
  up.delta = model_->params(model_->trained_offset());
  for (size_t i = 0; i < up.delta.size(); ++i) up.delta[i] -= global[i];
  up.num_samples = static_cast<uint64_t>(train_.size());
  up.train_loss = st.loss;
  up.train_accuracy = st.accuracy;
  up.train_seconds = st.seconds;
  return up;
}

worker::ValidationFigures SiteTrainer::validate(uint32_t round, const std::vector<float>& params) {
  common::ComputeSlots::Guard slot(slots_);
  load_round(*model_, job_, round, params);
  return evaluate_validation();
}

std::optional<v1::SiteEvaluation> SiteTrainer::evaluate_site(uint32_t round, const std::vector<float>& params,
                                                             uint32_t personalize_epochs) {
  if (validation_.size() == 0 || !model_) return std::nullopt;
  common::ComputeSlots::Guard slot(slots_);
  if (!validation_features_) validation_features_ = model_->features(validation_);
  if (!features_) features_ = model_->features(train_);
  return evaluate_at_site(*model_, job_, round, params, personalize_epochs, *validation_features_, *features_);
}

}  // namespace fedtl::app

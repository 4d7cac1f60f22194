#include "app/site_trainer.h"

#include "app/job_setup.h"
#include "common/errors.h"
#include "common/torchscript_archive.h"

namespace fedtl::app {

uint64_t SiteTrainer::prepare(const v1::JobSpec& job, const std::string& backbone_bytes) {
  // After a reconnect to the same job the model and the feature cache are still valid.
  const bool same_job = model_ && job.backbone_sha256() == job_.backbone_sha256() &&
                        job.model().SerializeAsString() == job_.model().SerializeAsString() &&
                        job.layout().SerializeAsString() == job_.layout().SerializeAsString();
  job_ = job;
  if (same_job) return static_cast<uint64_t>(data_.size());
  common::ArchiveLimits limits;
  limits.max_total_bytes = max_backbone_bytes_;
  common::check_torchscript_archive(backbone_bytes, limits);
  if (!loaded_) {
    data_ = loader_(job);
    loaded_ = true;
  }
  if (data_.size() == 0) throw DataError("this site has no training images");
  model_ = site_model(job, backbone_bytes);
  features_.reset();
  return static_cast<uint64_t>(data_.size());
}

worker::LocalUpdate SiteTrainer::train_round(uint32_t round, const std::vector<float>& global) {
  common::ComputeSlots::Guard slot(slots_);
  if (!features_) features_ = model_->features(data_);
  model_->set_params(global);
  const auto st = model_->train(*features_, train_options(job_, round));
  worker::LocalUpdate up;
  up.delta = model_->params();
  for (size_t i = 0; i < up.delta.size(); ++i) up.delta[i] -= global[i];
  up.num_samples = static_cast<uint64_t>(data_.size());
  up.train_loss = st.loss;
  up.train_accuracy = st.accuracy;
  up.train_seconds = st.seconds;
  return up;
}

}  // namespace fedtl::app

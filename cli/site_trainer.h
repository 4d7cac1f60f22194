// The LibTorch-backed SiteRuntime: a site's model, its cached features and local training.
#pragma once
#include <memory>

#include "common/image_set.h"
#include "common/model/transfer_model.h"
#include "worker/site_runtime.h"

namespace fedtl::cli {

class SiteTrainer : public worker::SiteRuntime {
 public:
  // Keeps a copy of the site's labelled images (never sent anywhere).
  explicit SiteTrainer(common::ImageSet data) : data_(std::move(data)) {}
  uint64_t prepare(const v1::JobSpec& job, const std::string& backbone_bytes) override;
  worker::LocalUpdate train_round(uint32_t round, const std::vector<float>& global) override;

 private:
  common::ImageSet data_;
  v1::JobSpec job_;
  std::unique_ptr<common::model::TransferModel> model_;
  std::unique_ptr<common::model::FeatureSet> features_;
};

}  // namespace fedtl::cli

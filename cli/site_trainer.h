// The LibTorch-backed SiteRuntime: a site's model, its cached features and local training.
#pragma once
#include <functional>
#include <memory>

#include "common/image_set.h"
#include "common/model/transfer_model.h"
#include "worker/site_runtime.h"

namespace fedtl::cli {

class SiteTrainer : public worker::SiteRuntime {
 public:
  // Loads the site's labelled images once the job is known (its input spec decides how an
  // image folder is decoded). The images never leave this object.
  using DataLoader = std::function<common::ImageSet(const v1::JobSpec&)>;
  explicit SiteTrainer(DataLoader loader) : loader_(std::move(loader)) {}
  explicit SiteTrainer(common::ImageSet data) : data_(std::move(data)), loaded_(true) {}
  uint64_t prepare(const v1::JobSpec& job, const std::string& backbone_bytes) override;
  worker::LocalUpdate train_round(uint32_t round, const std::vector<float>& global) override;

 private:
  DataLoader loader_;
  common::ImageSet data_;
  bool loaded_ = false;
  v1::JobSpec job_;
  std::unique_ptr<common::model::TransferModel> model_;
  std::unique_ptr<common::model::FeatureSet> features_;
};

}  // namespace fedtl::cli

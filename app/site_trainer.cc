#include "app/site_trainer.h"

#include <algorithm>
#include <cmath>
#include <exception>

#include "app/job_setup.h"
#include "common/errors.h"
#include "common/torchscript_archive.h"

namespace fedtl::app {

struct ModelPool::Task {
  const std::function<void(common::model::TransferModel&)>* fn = nullptr;
  std::exception_ptr error;
  bool done = false;
};

ModelPool::ModelPool(int threads) {
  for (int i = 0; i < std::max(1, threads); ++i) threads_.emplace_back([this] { serve(); });
}

ModelPool::~ModelPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

namespace {
std::string pool_key(const v1::JobSpec& job) {
  return job.backbone_sha256() + job.model().SerializeAsString() + job.layout().SerializeAsString();
}
}  // namespace

bool ModelPool::holds(const v1::JobSpec& job) const {
  const std::string key = pool_key(job);
  std::lock_guard<std::mutex> lock(mu_);
  return adopted_ && key == key_;
}

void ModelPool::adopt(const v1::JobSpec& job, const std::string& backbone_bytes) {
  const std::string key = pool_key(job);
  std::lock_guard<std::mutex> lock(mu_);
  if (adopted_) {
    if (key != key_) throw ModelError("a simulated site was sent another backbone or model than its peers");
    return;
  }
  key_ = key;
  job_ = job;
  backbone_ = backbone_bytes;
  adopted_ = true;
}

void ModelPool::run(const std::function<void(common::model::TransferModel&)>& fn) {
  Task task;
  task.fn = &fn;
  std::unique_lock<std::mutex> lock(mu_);
  if (!adopted_) throw ModelError("no model to run on before a job is adopted");
  queue_.push_back(&task);
  cv_.notify_all();
  cv_.wait(lock, [&] { return task.done; });
  if (task.error) std::rethrow_exception(task.error);
}

void ModelPool::serve() {
  std::unique_ptr<common::model::TransferModel> model;  // this thread's, built on first use
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, nothing left
    Task* task = queue_.front();
    queue_.pop_front();
    lock.unlock();
    try {
      if (!model) model = site_model(job_, backbone_);  // job_ and backbone_ do not change once adopted
      (*task->fn)(*model);
    } catch (...) {
      task->error = std::current_exception();
    }
    lock.lock();
    task->done = true;
    cv_.notify_all();
  }
}

void SiteTrainer::with_model(const std::function<void(common::model::TransferModel&)>& fn) {
  if (pool_) {
    pool_->run(fn);
  } else {
    fn(*model_);
  }
}

uint64_t SiteTrainer::prepare(const v1::JobSpec& job, const std::string& backbone_bytes) {
  // After a reconnect to the same job the model and the feature cache are still valid.
  const bool same_job = prepared_ && job.backbone_sha256() == job_.backbone_sha256() &&
                        job.model().SerializeAsString() == job_.model().SerializeAsString() &&
                        job.layout().SerializeAsString() == job_.layout().SerializeAsString() &&
                        job.training().validation_fraction() == job_.training().validation_fraction() &&
                        job.site_index() == job_.site_index() && job.seed() == job_.seed();
  job_ = job;
  if (same_job) return train_count_;
  if (pool_ && prepared_) throw DataError("this simulated site dropped its images; it cannot take another job");
  // A simulated site whose pool already holds this very backbone (checked by the first site;
  // the same bytes, shared) skips re-reading the archive: per site that was a backbone-sized
  // transient, and with thousands of sites the heap fragmented around them.
  if (!pool_ || !pool_->holds(job)) {
    common::ArchiveLimits limits;
    limits.max_total_bytes = max_backbone_bytes_;
    common::check_torchscript_archive(backbone_bytes, limits);
  }
  if (!loaded_) {
    data_ = loader_(job);
    loaded_ = true;
  }
  if (data_.size() == 0) throw DataError("this site has no training images");
  auto split = split_site_data(job, data_);
  train_ = std::move(split.train);
  validation_ = std::move(split.validation);
  train_count_ = static_cast<uint64_t>(train_.size());
  validation_count_ = static_cast<uint64_t>(validation_.size());
  input_stats_ = site_input_stats(job, train_);
  if (pool_) {
    pool_->adopt(job, backbone_bytes);
  } else {
    model_ = site_model(job, backbone_bytes);
  }
  {
    // Cache the frozen backbone's features now, before Ready: the coordinator starts a round's
    // deadline only once every site is ready, so round 1 is not eaten by the forward passes.
    common::ComputeSlots::Guard slot(slots_);
    with_model([&](common::model::TransferModel& m) {
      features_ = m.features(train_);
      validation_features_.reset();
      if (validation_.size() > 0) validation_features_ = m.features(validation_);
    });
  }
  if (pool_ && !train_options(job_, 1).recompute_features) {
    // Only the caches are used from here on (a simulated site cannot rejoin another job).
    data_ = common::ImageSet();
    train_ = common::ImageSet();
    validation_ = common::ImageSet();
  }
  prepared_ = true;
  return train_count_;
}

worker::ValidationFigures SiteTrainer::evaluate_validation(common::model::TransferModel& model) {
  worker::ValidationFigures v;
  if (validation_count_ == 0) return v;
  if (!validation_features_) validation_features_ = model.features(validation_);
  return validation_figures(model.evaluate(*validation_features_));
}

worker::LocalUpdate SiteTrainer::train_round(uint32_t round, const std::vector<float>& global) {
  common::ComputeSlots::Guard slot(slots_);
  worker::LocalUpdate up;
  with_model([&](common::model::TransferModel& m) {
    if (!features_) features_ = m.features(train_);
    load_round(m, job_, round, global);
    up.validation = evaluate_validation(m);
    const auto st = m.train(*features_, train_options(job_, round));
    up.delta = m.params(m.trained_offset());
    up.train_loss = st.loss;
    up.train_accuracy = st.accuracy;
    up.train_seconds = st.seconds;
  });
  for (size_t i = 0; i < up.delta.size(); ++i) up.delta[i] -= global[i];
  up.num_samples = train_count_;
  return up;
}

worker::ValidationFigures SiteTrainer::validate(uint32_t round, const std::vector<float>& params) {
  common::ComputeSlots::Guard slot(slots_);
  worker::ValidationFigures v;
  with_model([&](common::model::TransferModel& m) {
    load_round(m, job_, round, params);
    v = evaluate_validation(m);
  });
  return v;
}

std::optional<v1::SiteEvaluation> SiteTrainer::evaluate_site(uint32_t round, const std::vector<float>& params,
                                                             uint32_t personalize_epochs) {
  if (validation_count_ == 0 || !prepared_) return std::nullopt;
  common::ComputeSlots::Guard slot(slots_);
  std::optional<v1::SiteEvaluation> ev;
  with_model([&](common::model::TransferModel& m) {
    if (!validation_features_) validation_features_ = m.features(validation_);
    if (!features_) features_ = m.features(train_);
    ev = evaluate_at_site(m, job_, round, params, personalize_epochs, *validation_features_, *features_);
  });
  return ev;
}

}  // namespace fedtl::app

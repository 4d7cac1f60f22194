// Pieces every way of running a job shares (simulate, the TLS coordinator and worker, mpi):
// loading the configured data, making or loading the backbone, and turning the job config into
// the wire JobSpec and the wire into the model layer's specs.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "app/config.h"
#include "common/data/image_set.h"
#include "common/data/sources.h"
#include "common/model/transfer_model.h"
#include "protocols/fedtl.pb.h"
#include "worker/site_runtime.h"

namespace fedtl::app {

struct TaskData {
  common::ImageSet source_train, source_test;  // source classes relabelled 0..S-1
  common::ImageSet target_train, target_test;  // target classes relabelled 0..T-1
  std::vector<std::string> target_names;       // the job's classes, in model output order
  // The class list data.source_classes / target_classes index (Fashion-MNIST's ten names, or
  // data.classes, or the sorted names found in the data) and those indices, resolved.
  std::vector<std::string> class_list;
  std::vector<int64_t> source_classes, target_classes;
};

// Reads the configured dataset and splits it into source and target tasks, labels bound to
// class names (common/data/classes.h): an image folder or DICOM class not in data.classes, or
// a class of data.classes without images, is refused naming it (data.missing_classes = "warn"
// allows the latter). With with_training = false only the test images are read (a TLS
// coordinator trains nothing: its memory should not hold a training set it never uses, and it
// needs no data.dir); target_train and the source sets stay empty then.
TaskData load_task_data(const app::JobConfig& cfg, bool with_training = true);

// cfg with its class lists resolved from `data` (data.classes, source_classes and
// target_classes as TaskData has them), so that the model spec and the JobSpec see the
// classes the data has. Fashion-MNIST jobs come back unchanged.
JobConfig with_resolved_classes(JobConfig cfg, const TaskData& data);

// The job's class names, by model output: data.classes[target] or Fashion-MNIST's names.
std::vector<std::string> target_class_names(const JobConfig& cfg);

// A source spec for `dir` from the job's [data] keys (shape from [backbone]).
common::SourceSpec source_spec(const JobConfig& cfg, const std::string& dir, bool with_manifest);

common::model::InputSpec input_spec(const app::JobConfig& cfg);
// Each setting is translated once from the job file to the wire (wire_*) and once from the
// wire to the model layer (model_spec, train_options); the coordinator's own model goes
// through the wire form too, so it is built exactly as the sites build theirs.
v1::ModelSpec wire_model_spec(const app::JobConfig& cfg);
v1::TrainingSpec wire_training_spec(const app::JobConfig& cfg);
common::model::ModelSpec model_spec(const app::JobConfig& cfg);  // = model_spec(wire_model_spec(cfg))
// Throws ProtocolError for an enum value this build does not know.
common::model::ModelSpec model_spec(const v1::ModelSpec& wire);

// Returns the backbone bytes from cfg.backbone.path; when absent and pretrain_if_missing,
// pre-trains the built-in CNN on the source classes and writes it there (atomically).
std::string ensure_backbone(const app::JobConfig& cfg, const TaskData& data);
// Pre-trains the built-in CNN on the source task and returns its TorchScript bytes.
std::string pretrain_backbone(const app::JobConfig& cfg, const TaskData& data);

// The job as sent to sites (site_index left 0) for a federation of num_sites sites.
// Throws ConfigError when its secure aggregation settings cannot work.
v1::JobSpec make_job_spec(const app::JobConfig& cfg, const std::string& backbone_sha256, uint64_t backbone_bytes,
                          const std::vector<common::model::ParamInfo>& layout, uint32_t num_sites);

// A site's model for `job`: built from the verified backbone and checked against the job's
// parameter layout (the coordinator's model), so a mismatch fails before any training.
// Throws ModelError.
std::unique_ptr<common::model::TransferModel> site_model(const v1::JobSpec& job, const std::string& backbone);

// A site's images split by the job's validation fraction (stratified, seeded by the job seed
// and the site index: common/data/validation_split.h), the same way on every transport.
struct SiteSplit {
  common::ImageSet train, validation;
};
SiteSplit split_site_data(const v1::JobSpec& job, const common::ImageSet& data);

// Sets `model` to round `round`'s trained set (protocols/schedule.h) and its trained values
// `params` (the round's suffix of the layout). Throws ModelError on a size mismatch.
void load_round(common::model::TransferModel& model, const v1::JobSpec& job, uint32_t round,
                const std::vector<float>& params);

// A model's figures on a validation split, as a site reports them.
worker::ValidationFigures validation_figures(const common::model::EvalResult& r);

// What a site's Ready says of its training images (common/data/input_stats.h, for the job's
// input spec); empty when the spec is one the figures do not cover.
v1::InputStats site_input_stats(const v1::JobSpec& job, const common::ImageSet& train);

// A site's own evaluation of round `round`'s model `params` (SiteRuntime::evaluate_site): the
// metrics on `validation`, and with personalize_epochs > 0 the same after training the head
// alone that many epochs on `train` (the job's optimiser settings and shuffling, no proximal
// term, one rank). Leaves `model` personalised; the next load_round resets it.
v1::SiteEvaluation evaluate_at_site(common::model::TransferModel& model, const v1::JobSpec& job, uint32_t round,
                                    const std::vector<float>& params, uint32_t personalize_epochs,
                                    const common::model::FeatureSet& validation, const common::model::FeatureSet& train);

// The local training a job asks of a site in `round` (its shuffling seeded by job seed, site
// and round, so every transport and every rank of a site shuffles alike).
common::model::TrainOptions train_options(const v1::JobSpec& job, uint32_t round);
// The optimiser settings alone (seed 0); throws ProtocolError for an unknown optimizer.
common::model::TrainOptions train_options(const v1::TrainingSpec& training);


}  // namespace fedtl::app

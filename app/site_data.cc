#include "app/site_data.h"

#include <string>

#include "common/data/datasets.h"
#include "common/data/partition.h"
#include "common/errors.h"
#include "common/seeds.h"

namespace fedtl::app {

std::vector<std::vector<int64_t>> site_partition(const JobConfig& cfg, const TaskData& data) {
  common::PartitionSpec pspec = cfg.partition;
  pspec.seed = common::derive_seed(cfg.seed, common::seed_stream::kPartition);
  return common::partition(data.target_train.labels, static_cast<int64_t>(cfg.data.target_classes.size()), pspec);
}

common::ImageSet site_slice(const JobConfig& cfg, const TaskData& data, int64_t site) {
  const auto parts = site_partition(cfg, data);
  if (site < 0 || site >= static_cast<int64_t>(parts.size()))
    throw ConfigError("site index " + std::to_string(site) + " is outside the job's " + std::to_string(parts.size()) +
                      " sites");
  return data.target_train.subset(parts[static_cast<size_t>(site)]);
}

common::ImageSet site_slice(const JobConfig& cfg, int64_t site) { return site_slice(cfg, load_task_data(cfg), site); }

common::ImageSet load_site_data(const SiteConfig& site, const v1::JobSpec& job) {
  if (site.data_source == SiteDataSource::kFolder) {
    const auto& m = job.model();
    auto images = common::read_image_folder(site.data_dir, m.in_channels(), m.in_height(), m.in_width());
    if (static_cast<int64_t>(images.class_names.size()) != static_cast<int64_t>(m.num_classes()))
      throw DataError("site data folder '" + site.data_dir + "' has " + std::to_string(images.class_names.size()) +
                      " classes; the job trains " + std::to_string(m.num_classes()));
    return images;
  }
  try {
    return site_slice(load_job_config(site.data_job), site.partition_index);
  } catch (const ConfigError& e) {
    throw ConfigError("data.partition_index: " + std::string(e.what()));
  }
}

}  // namespace fedtl::app

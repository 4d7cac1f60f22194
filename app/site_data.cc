#include "app/site_data.h"

#include <string>

#include "common/data/classes.h"
#include "common/data/datasets.h"
#include "common/data/orthanc_source.h"
#include "common/data/sources.h"
#include "common/data/partition.h"
#include "common/errors.h"
#include "common/seeds.h"

namespace fedtl::app {

std::vector<std::vector<int64_t>> site_partition(const JobConfig& cfg, const TaskData& data) {
  common::PartitionSpec pspec = cfg.partition;
  pspec.seed = common::derive_seed(cfg.seed, common::seed_stream::kPartition);
  return common::partition(data.target_train.labels, static_cast<int64_t>(data.target_names.size()), pspec);
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
  if (site.data_source != SiteDataSource::kJobPartition) {
    const auto& m = job.model();
    const auto& im = site.data_images;
    const std::string where = site.data_source == SiteDataSource::kOrthanc ? "Orthanc " + site.orthanc.url : site.data_dir;
    common::SourceSpec spec;
    spec.kind = site.data_source == SiteDataSource::kFolder ? common::SourceKind::kFolder : common::SourceKind::kDicom;
    spec.dir = site.data_dir;
    spec.labels = im.labels;
    spec.label_tag = im.label_tag;
    spec.read.channels = m.in_channels();
    spec.read.height = m.in_height();
    spec.read.width = m.in_width();
    spec.read.max_image_pixels = im.max_image_pixels;
    spec.read.on_bad_file = im.on_bad_file;
    if (im.window.size() == 2) spec.window = std::array<double, 2>{im.window[0], im.window[1]};
    spec.frame = im.frame;
    // A site's manifest may carry a split column: the site trains on its train rows.
    auto images = site.data_source == SiteDataSource::kOrthanc
                      ? common::read_orthanc_source(site.orthanc, spec, common::Split::kTrain)
                      : common::read_source(spec, common::Split::kTrain);
    if (job.class_names_size() > 0) {
      const std::vector<std::string> classes(job.class_names().begin(), job.class_names().end());
      if (static_cast<int64_t>(classes.size()) != static_cast<int64_t>(m.num_classes()))
        throw ProtocolError("the job names " + std::to_string(classes.size()) + " classes for a model of " +
                            std::to_string(m.num_classes()) + " outputs");
      common::bind_classes(images, classes, im.missing_classes, "site data '" + where + "'");
    } else if (static_cast<int64_t>(images.class_names.size()) != static_cast<int64_t>(m.num_classes())) {
      throw DataError("site data '" + where + "' has " + std::to_string(images.class_names.size()) +
                      " classes; the job trains " + std::to_string(m.num_classes()));
    }
    return images;
  }
  try {
    return site_slice(load_job_config(site.data_job), site.partition_index);
  } catch (const ConfigError& e) {
    throw ConfigError("data.partition_index: " + std::string(e.what()));
  }
}

}  // namespace fedtl::app

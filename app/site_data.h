// A site's data, the same whichever way the job runs: the one partition of the target
// training set (seeded from the job seed) and the loaders that give a site its images.
#pragma once
#include <cstdint>
#include <vector>

#include "app/config.h"
#include "app/job_setup.h"
#include "common/data/image_set.h"
#include "protocols/fedtl.pb.h"

namespace fedtl::app {

// The sites' partition of the target training set: indices into data.target_train, one list
// per site (cfg.partition.sites of them). Deterministic in the job seed.
std::vector<std::vector<int64_t>> site_partition(const JobConfig& cfg, const TaskData& data);

// Site `site`'s slice of that partition. Throws ConfigError when `site` is not one of the
// job's sites.
common::ImageSet site_slice(const JobConfig& cfg, const TaskData& data, int64_t site);
// The same, loading the job's data first (a worker or an MPI rank that holds only the job file).
common::ImageSet site_slice(const JobConfig& cfg, int64_t site);

// A TLS worker's data (site.toml [data]): an image folder decoded for the job's input, or
// its slice of a job file's partition (what simulate gives the same site). Throws DataError /
// ConfigError.
common::ImageSet load_site_data(const SiteConfig& site, const v1::JobSpec& job);

}  // namespace fedtl::app

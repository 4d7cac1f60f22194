// The site file's [data] keys for source = "orthanc" (site.toml only: a job file, and so the
// job the coordinator sends, can never name an Orthanc — its data.source knows no "orthanc").
//
//   [data]
//   source = "orthanc"
//   url = "https://pacs.example.org:8042"   # Orthanc's REST API
//   username = "fedtl"                       # optional; then exactly one of:
//   password_file = "orthanc.password"       #   first line = the password (chmod 600)
//   password_env = "ORTHANC_PASSWORD"        #   or an environment variable
//   query = { Modality = "CR", StudyDescription = "CHEST*" }   # DICOM tags -> patterns
//   query_case_sensitive = true              # Orthanc's CaseSensitive (default true)
//   label_tag = "BodyPartExamined"           # optional: labels from a tag (or a manifest)
//   cache_dir = "orthanc-cache"              # default: the caller's default_cache_dir
//   ca_file = "pacs-ca.crt"                  # https: the CA that signed Orthanc's certificate
//   connect_timeout_s = 10
//   read_timeout_s = 60
//   max_instance_bytes = 1073741824
//
// data.on_bad_file is not read here (it is shared by every source): the caller sets
// OrthancSource::skip_bad from it.
#pragma once
#include <string>
#include <toml++/toml.h>

#include "common/data/orthanc.h"

namespace fedtl::app {

// Reads the keys above from a site file's [data] table; other keys are left to the caller
// (who must not report the keys above as unknown: see is_orthanc_data_key). Relative paths
// (password_file, cache_dir, ca_file) are resolved against `base_dir` (the site file's
// directory); `default_cache_dir` (used when cache_dir is absent) is taken as given. Throws ConfigError naming the key ("data.url is required ...", "data.query.Modality
// must be a string"). The password itself is not read here (OrthancClient reads it).
common::OrthancSource parse_orthanc_source(const toml::table& data, const std::string& base_dir,
                                           const std::string& default_cache_dir);

// True for the keys parse_orthanc_source reads ("url", "username", ..., not "source").
bool is_orthanc_data_key(const std::string& key);

}  // namespace fedtl::app

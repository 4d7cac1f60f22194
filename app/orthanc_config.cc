#include "app/orthanc_config.h"

#include <cmath>
#include <filesystem>
#include <set>

#include "common/errors.h"
#include "common/transport/http_client.h"

namespace fedtl::app {
namespace {

const std::set<std::string>& keys() {
  static const std::set<std::string> k = {"url",         "username",          "password_file",  "password_env",
                                          "query",       "query_case_sensitive", "label_tag",   "cache_dir",
                                          "ca_file",     "connect_timeout_s", "read_timeout_s", "max_instance_bytes"};
  return k;
}

std::string resolve(const std::string& base_dir, const std::string& p) {
  if (p.empty() || p.front() == '/') return p;
  return (std::filesystem::path(base_dir) / p).lexically_normal().string();
}

void get_string(const toml::table& t, const char* key, std::string& out) {
  const toml::node* n = t.get(key);
  if (!n) return;
  if (!n->is_string()) throw ConfigError(std::string("config key 'data.") + key + "' must be a string");
  out = *n->value<std::string>();
}

void get_seconds(const toml::table& t, const char* key, double& out) {
  const toml::node* n = t.get(key);
  if (!n) return;
  if (!n->is_number()) throw ConfigError(std::string("config key 'data.") + key + "' must be a number");
  out = *n->value<double>();
  if (!std::isfinite(out) || out <= 0 || out > 86400)
    throw ConfigError(std::string("data.") + key + " must be between 0 and 86400 seconds");
}

}  // namespace

bool is_orthanc_data_key(const std::string& key) { return keys().count(key) > 0; }

common::OrthancSource parse_orthanc_source(const toml::table& data, const std::string& base_dir,
                                           const std::string& default_cache_dir) {
  common::OrthancSource s;
  get_string(data, "url", s.url);
  get_string(data, "username", s.username);
  get_string(data, "password_file", s.password_file);
  get_string(data, "password_env", s.password_env);
  get_string(data, "label_tag", s.label_tag);
  get_string(data, "cache_dir", s.cache_dir);
  get_string(data, "ca_file", s.ca_file);
  get_seconds(data, "connect_timeout_s", s.connect_timeout_s);
  get_seconds(data, "read_timeout_s", s.read_timeout_s);
  if (const toml::node* n = data.get("query_case_sensitive")) {
    if (!n->is_boolean()) throw ConfigError("config key 'data.query_case_sensitive' must be a boolean");
    s.case_sensitive = *n->value<bool>();
  }
  if (const toml::node* n = data.get("max_instance_bytes")) {
    if (!n->is_integer() || *n->value<int64_t>() < 1)
      throw ConfigError("config key 'data.max_instance_bytes' must be an integer >= 1");
    s.max_instance_bytes = *n->value<int64_t>();
  }
  if (const toml::node* n = data.get("query")) {
    const toml::table* q = n->as_table();
    if (!q) throw ConfigError("config key 'data.query' must be a table of DICOM tag = pattern (e.g. { Modality = \"CR\" })");
    for (const auto& [k, v] : *q) {
      const std::string tag(k.str());
      if (!v.is_string()) throw ConfigError("config key 'data.query." + tag + "' must be a string (an Orthanc pattern)");
      s.query[tag] = *v.value<std::string>();
    }
  }
  if (s.url.empty()) throw ConfigError("data.url is required for data.source = \"orthanc\" (Orthanc's REST API, http(s)://host:port)");
  common::parse_http_url(s.url, "data.url");
  if (!s.username.empty() && s.password_file.empty() == s.password_env.empty())
    throw ConfigError("data.username needs exactly one of data.password_file and data.password_env");
  if (s.username.empty() && (!s.password_file.empty() || !s.password_env.empty()))
    throw ConfigError("data.password_file / data.password_env given without data.username");
  uint16_t g = 0, e = 0;
  if (!s.label_tag.empty() && !common::parse_dicom_tag(s.label_tag, g, e))
    throw ConfigError("data.label_tag '" + s.label_tag +
                      "' is neither a DICOM keyword (e.g. BodyPartExamined) nor a tag written gggg,eeee");
  for (std::string* p : {&s.password_file, &s.cache_dir, &s.ca_file}) *p = resolve(base_dir, *p);
  if (s.cache_dir.empty()) s.cache_dir = default_cache_dir;  // as given (not resolved)
  if (s.cache_dir.empty()) throw ConfigError("data.cache_dir is required for data.source = \"orthanc\"");
  return s;
}

}  // namespace fedtl::app

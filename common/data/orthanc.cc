#include "common/data/orthanc.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <dcmtk/config/osconfig.h>  // must come first of DCMTK's headers
#include <dcmtk/dcmdata/dcdict.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dctag.h>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <spdlog/spdlog.h>

#include "common/errors.h"
#include "common/files.h"
#include "common/sha256.h"
#include "common/transport/http_client.h"

namespace fedtl::common {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// An instance that cannot be used (deleted, not DICOM, without its label): skipped with
// skip_bad, an error otherwise.
class BadInstance : public DataError {
  using DataError::DataError;
};

// Text from the network, safe to put in a one-line message.
std::string printable(const std::string& s, size_t max = 80) {
  std::string out;
  for (char c : s.substr(0, max)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (s.size() > max) out += "...";
  return out;
}

// A DICOM UID (digits and dots, at most 64 characters, no empty component): safe as a file name.
bool valid_uid(const std::string& uid) {
  if (uid.empty() || uid.size() > 64 || uid.front() == '.' || uid.back() == '.') return false;
  if (uid.find("..") != std::string::npos) return false;
  return uid.find_first_not_of("0123456789.") == std::string::npos;
}

bool valid_orthanc_id(const std::string& id) {
  return !id.empty() && id.size() <= 64 && id.find_first_not_of("0123456789abcdef-") == std::string::npos;
}

std::string trim(std::string s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::string read_password(const OrthancSource& s) {
  const bool file = !s.password_file.empty(), env = !s.password_env.empty();
  if (s.username.empty()) {
    if (file || env) throw ConfigError("data.password_file / data.password_env given without data.username");
    return "";
  }
  if (file == env)
    throw ConfigError("data.username needs exactly one of data.password_file and data.password_env");
  std::string pw;
  if (file) {
    std::ifstream in(s.password_file, std::ios::binary);
    if (!in) throw ConfigError("data.password_file '" + s.password_file + "' cannot be read");
    std::getline(in, pw);
    if (!pw.empty() && pw.back() == '\r') pw.pop_back();
    if (pw.empty()) throw ConfigError("data.password_file '" + s.password_file + "' is empty (its first line is the password)");
    struct stat st {};
    if (::stat(s.password_file.c_str(), &st) == 0 && (st.st_mode & 077))
      spdlog::warn("orthanc: data.password_file '{}' is readable by other users (chmod 600 it)", s.password_file);
  } else {
    const char* v = std::getenv(s.password_env.c_str());
    if (!v || !*v)
      throw ConfigError("environment variable " + s.password_env + " (data.password_env) is not set or empty");
    pw = v;
  }
  return pw;
}

bool loopback_host(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

HttpMillis seconds_to_ms(double s, const char* key) {
  if (!(s > 0) || s > 86400) throw ConfigError(std::string(key) + " must be between 0 and 86400 seconds");
  return HttpMillis(static_cast<int64_t>(s * 1000));
}

std::string file_sha256(const std::string& path, int64_t* size) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot read '" + path + "'");
  Sha256 h;
  std::vector<char> buf(1 << 20);
  int64_t n = 0;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto got = in.gcount();
    if (got > 0) h.update(buf.data(), static_cast<size_t>(got));
    n += got;
  }
  if (in.bad()) throw IoError("error reading '" + path + "'");
  if (size) *size = n;
  return h.hex_digest();
}

// Orthanc's own description of an error answer ("Unknown DICOM tag"), when it sent one.
std::string orthanc_message(const HttpResponse& r) {
  try {
    const json j = json::parse(r.body);
    std::string m = j.value("Message", "");
    const std::string d = j.value("Details", "");
    if (!d.empty()) m += (m.empty() ? "" : ": ") + d;
    if (!m.empty()) return ": " + printable(m, 200);
  } catch (const std::exception&) {
  }
  return "";
}

}  // namespace

bool parse_dicom_tag(const std::string& name, uint16_t& group, uint16_t& element) {
  if (name.size() == 9 && name[4] == ',' &&
      name.find_first_not_of("0123456789abcdefABCDEF,") == std::string::npos && name.find(',', 5) == std::string::npos) {
    group = static_cast<uint16_t>(std::stoul(name.substr(0, 4), nullptr, 16));
    element = static_cast<uint16_t>(std::stoul(name.substr(5, 4), nullptr, 16));
    return true;
  }
  if (name.empty() || name.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") !=
                          std::string::npos)
    return false;
  DcmTag tag;
  if (DcmTag::findTagFromName(name.c_str(), tag).bad()) return false;
  group = tag.getGroup();
  element = tag.getElement();
  return true;
}

struct OrthancClient::Impl {
  OrthancSource src;
  std::string username;
  std::unique_ptr<HttpClient> http;
  bool has_label = false;
  uint16_t label_group = 0, label_element = 0;
  std::vector<SkippedInstance> skipped_by_query;

  std::string where() const { return "Orthanc at " + http->url().str(); }

  // Turns an answer that is not 2xx into the error it means.
  void check(const HttpResponse& r, const std::string& what) const {
    if (r.status >= 200 && r.status < 300) return;
    if (r.status == 401 || r.status == 403) {
      if (username.empty())
        throw ConfigError(where() + " requires credentials (HTTP " + std::to_string(r.status) +
                          "): set data.username and data.password_file or data.password_env");
      throw ConfigError(where() + " refused the credentials of user '" + printable(username) + "' (HTTP " +
                        std::to_string(r.status) + " " + printable(r.reason) +
                        "): check data.username and the password in " +
                        (src.password_file.empty() ? "$" + src.password_env : "'" + src.password_file + "'"));
    }
    throw DataError(where() + " answered " + what + " with HTTP " + std::to_string(r.status) + " " +
                    printable(r.reason) + orthanc_message(r));
  }

  void bad_or_skip(std::vector<SkippedInstance>& skipped, const OrthancInstance& inst, const std::string& reason) {
    if (!src.skip_bad) throw DataError(reason + " (data.on_bad_file = \"skip\" leaves such instances out)");
    spdlog::warn("orthanc: skipping {}", reason);
    skipped.push_back({inst.sop_instance_uid, inst.orthanc_id, reason});
  }

  std::string describe(const OrthancInstance& i) const {
    return "instance " + (i.sop_instance_uid.empty() ? std::string("?") : printable(i.sop_instance_uid)) +
           " (Orthanc id " + printable(i.orthanc_id) + ")";
  }

  std::vector<OrthancInstance> query() {
    skipped_by_query.clear();
    json q = json::object();
    for (const auto& [k, v] : src.query) q[k] = v;
    std::map<std::string, OrthancInstance> by_id;
    for (int64_t since = 0;;) {
      const json body = {{"Level", "Instance"}, {"Expand", true}, {"Query", q},
                         {"CaseSensitive", src.case_sensitive}, {"Since", since}, {"Limit", src.page_size}};
      const HttpResponse r = http->request("POST", "/tools/find", body.dump(), "application/json");
      check(r, "POST /tools/find");
      json page;
      try {
        page = json::parse(r.body);
      } catch (const json::exception& e) {
        throw DataError(where() + " sent malformed JSON for POST /tools/find: " + printable(e.what(), 160));
      }
      if (!page.is_array())
        throw DataError(where() + " answered POST /tools/find with JSON that is not a list of instances");
      for (const auto& e : page) {
        if (!e.is_object() || !e.contains("ID") || !e["ID"].is_string())
          throw DataError(where() + " answered POST /tools/find with an entry without an \"ID\" (is Expand supported?)");
        OrthancInstance inst;
        inst.orthanc_id = e["ID"].get<std::string>();
        const json* tags = e.contains("MainDicomTags") && e["MainDicomTags"].is_object() ? &e["MainDicomTags"] : nullptr;
        if (tags && tags->contains("SOPInstanceUID") && (*tags)["SOPInstanceUID"].is_string())
          inst.sop_instance_uid = trim((*tags)["SOPInstanceUID"].get<std::string>());
        if (e.contains("FileUuid") && e["FileUuid"].is_string()) inst.file_uuid = e["FileUuid"].get<std::string>();
        if (e.contains("FileSize") && e["FileSize"].is_number_integer()) inst.file_size = e["FileSize"].get<int64_t>();
        if (!valid_orthanc_id(inst.orthanc_id)) {
          bad_or_skip(skipped_by_query, inst, where() + " reported an instance with an invalid id '" +
                                                  printable(inst.orthanc_id) + "'");
          continue;
        }
        if (!valid_uid(inst.sop_instance_uid)) {
          bad_or_skip(skipped_by_query, inst, describe(inst) + " has no valid SOPInstanceUID in Orthanc's index");
          continue;
        }
        by_id.emplace(inst.orthanc_id, std::move(inst));
      }
      if (page.empty()) break;
      since += static_cast<int64_t>(page.size());
    }
    std::vector<OrthancInstance> all;
    for (auto& [id, inst] : by_id) all.push_back(std::move(inst));
    std::sort(all.begin(), all.end(), [](const OrthancInstance& a, const OrthancInstance& b) {
      return a.sop_instance_uid != b.sop_instance_uid ? a.sop_instance_uid < b.sop_instance_uid
                                                      : a.orthanc_id < b.orthanc_id;
    });
    // One SOPInstanceUID held twice (under two patients or studies): the cache key and the
    // manifest key would be ambiguous.
    std::vector<OrthancInstance> out;
    for (size_t i = 0; i < all.size();) {
      size_t j = i + 1;
      while (j < all.size() && all[j].sop_instance_uid == all[i].sop_instance_uid) ++j;
      if (j - i == 1) {
        out.push_back(all[i]);
      } else {
        for (size_t k = i; k < j; ++k)
          bad_or_skip(skipped_by_query, all[k],
                      describe(all[k]) + ": Orthanc holds " + std::to_string(j - i) +
                          " instances with this SOPInstanceUID (ids " + all[i].orthanc_id + ", " +
                          all[i + 1].orthanc_id + ")");
      }
      i = j;
    }
    return out;
  }

  // The cached file of `inst` when the cache holds exactly the attachment the query reported.
  std::string cached(const OrthancInstance& inst, const fs::path& dir, std::string& sha) {
    if (inst.file_uuid.empty()) return "";
    std::error_code ec;
    const fs::path meta_path = dir / "orthanc.json";
    if (!fs::is_regular_file(meta_path, ec)) return "";
    json meta;
    try {
      meta = json::parse(read_file(meta_path.string()));
      if (meta.value("orthanc_id", "") != inst.orthanc_id || meta.value("file_uuid", "") != inst.file_uuid ||
          meta.value("file_size", int64_t{-2}) != inst.file_size)
        return "";
      sha = meta.value("sha256", "");
    } catch (const std::exception&) {
      return "";  // an unreadable record: download again (and rewrite it)
    }
    if (sha.size() != 64 || sha.find_first_not_of("0123456789abcdef") != std::string::npos) return "";
    const fs::path file = dir / (sha + ".dcm");
    if (!fs::is_regular_file(file, ec) || static_cast<int64_t>(fs::file_size(file, ec)) != inst.file_size) return "";
    if (file_sha256(file.string(), nullptr) != sha) {
      spdlog::warn("orthanc: cached file '{}' no longer matches its digest; downloading it again", file.string());
      return "";
    }
    return file.string();
  }

  // Downloads `inst` into `dir`; returns the file's path and sets sha.
  std::string download(const OrthancInstance& inst, const fs::path& dir, std::string& sha, int64_t& bytes) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw IoError("cannot create directory '" + dir.string() + "': " + ec.message());
    const std::string tmp = temp_path_for((dir / "download").string());
    struct Remove {
      std::string path;
      ~Remove() {
        std::error_code ignored;  // best effort: a leftover temporary is harmless
        fs::remove(path, ignored);
      }
    } cleanup{tmp};
    HttpResponse r;
    try {
      r = http->download("/instances/" + inst.orthanc_id + "/file", tmp);
    } catch (const DataError& e) {
      throw BadInstance(describe(inst) + ": " + e.what());
    }
    if (r.status == 404)
      throw BadInstance(describe(inst) + " is no longer in " + where() +
                        " (HTTP 404): it was deleted between the query and the download");
    check(r, "GET /instances/" + inst.orthanc_id + "/file");
    sha = file_sha256(tmp, &bytes);
    if (inst.file_size >= 0 && bytes != inst.file_size)
      throw BadInstance(describe(inst) + ": downloaded " + std::to_string(bytes) + " bytes, Orthanc's index says " +
                        std::to_string(inst.file_size));
    const fs::path file = dir / (sha + ".dcm");
    commit_atomic(tmp, file.string());
    json meta = {{"orthanc_id", inst.orthanc_id}, {"file_uuid", inst.file_uuid}, {"file_size", inst.file_size},
                 {"sha256", sha}, {"sop_instance_uid", inst.sop_instance_uid}};
    write_file_atomic((dir / "orthanc.json").string(), meta.dump(1) + "\n");
    // Older versions of this instance (Orthanc re-stored it with other bytes).
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      if (e.path().extension() == ".dcm" && e.path() != file) {
        std::error_code ignored;  // a stale copy left behind only costs disk space
        fs::remove(e.path(), ignored);
      }
    }
    return file.string();
  }

  // SOPInstanceUID, PatientID and label from the file (not from Orthanc's index): what the
  // DICOM reader will see.
  void read_tags(const OrthancInstance& inst, FetchedInstance& f) {
    DcmFileFormat ff;
    // Elements longer than 4 KiB (the pixel data) are not loaded.
    const OFCondition c = ff.loadFile(f.path.c_str(), EXS_Unknown, EGL_noChange, 4096);
    if (c.bad()) throw BadInstance(describe(inst) + ": the file Orthanc sent is not readable DICOM: " + c.text());
    DcmDataset* ds = ff.getDataset();
    OFString v;
    std::string uid;
    if (ds->findAndGetOFStringArray(DCM_SOPInstanceUID, v).good()) uid = trim(v.c_str());
    if (uid != inst.sop_instance_uid)
      throw BadInstance(describe(inst) + ": the file's SOPInstanceUID is '" + printable(uid) +
                        "', not the one Orthanc's index reported");
    if (ds->findAndGetOFStringArray(DCM_PatientID, v).good()) f.patient_id = trim(v.c_str());
    if (has_label) {
      const DcmTagKey key(label_group, label_element);
      if (ds->findAndGetOFStringArray(key, v).good()) f.label = trim(v.c_str());
      if (f.label.empty())
        throw BadInstance(describe(inst) + " has no value for data.label_tag '" + src.label_tag + "'");
    }
  }

  OrthancFetch fetch(const std::vector<OrthancInstance>& selected) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<OrthancInstance> todo = selected;
    std::sort(todo.begin(), todo.end(), [](const OrthancInstance& a, const OrthancInstance& b) {
      return a.sop_instance_uid < b.sop_instance_uid;
    });
    OrthancFetch out;
    for (const auto& inst : todo) {
      try {
        if (!valid_uid(inst.sop_instance_uid) || !valid_orthanc_id(inst.orthanc_id))
          throw BadInstance(describe(inst) + " has an invalid SOPInstanceUID or Orthanc id");
        if (inst.file_size > src.max_instance_bytes)
          throw BadInstance(describe(inst) + " is " + std::to_string(inst.file_size) +
                            " bytes, more than data.max_instance_bytes = " + std::to_string(src.max_instance_bytes));
        const fs::path dir = fs::path(src.cache_dir) / inst.sop_instance_uid;
        FetchedInstance f;
        f.sop_instance_uid = inst.sop_instance_uid;
        f.orthanc_id = inst.orthanc_id;
        f.path = cached(inst, dir, f.sha256);
        int64_t bytes = 0;
        if (f.path.empty()) {
          f.path = download(inst, dir, f.sha256, bytes);
          f.downloaded = true;
        }
        read_tags(inst, f);
        if (f.downloaded) {
          ++out.downloaded;
          out.downloaded_bytes += bytes;
        } else {
          ++out.from_cache;
        }
        out.instances.push_back(std::move(f));
      } catch (const BadInstance& e) {
        bad_or_skip(out.skipped, inst, e.what());
      }
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    spdlog::info("orthanc: {} instances from {}: {} from the cache, {} downloaded ({} bytes) in {:.2f} s, {} skipped",
                 out.instances.size(), http->url().str(), out.from_cache, out.downloaded, out.downloaded_bytes, secs,
                 out.skipped.size());
    return out;
  }
};

OrthancClient::OrthancClient(OrthancSource source) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.src = std::move(source);
  const HttpUrl url = parse_http_url(m.src.url, "data.url");
  if (m.src.cache_dir.empty()) throw ConfigError("data.cache_dir is required for data.source = \"orthanc\"");
  if (m.src.page_size < 1) throw ConfigError("the Orthanc query page size must be >= 1");
  if (m.src.max_instance_bytes < 1) throw ConfigError("data.max_instance_bytes must be >= 1");
  for (const auto& [k, v] : m.src.query)
    if (k.empty()) throw ConfigError("data.query has an empty tag name");
  if (!m.src.label_tag.empty()) {
    if (!dcmDataDict.isDictionaryLoaded())
      throw ConfigError("DCMTK's data dictionary is not loaded (install libdcmtk's dicom.dic or set DCMDICTPATH), "
                        "so data.label_tag '" + m.src.label_tag + "' cannot be looked up");
    if (!parse_dicom_tag(m.src.label_tag, m.label_group, m.label_element))
      throw ConfigError("data.label_tag '" + m.src.label_tag +
                        "' is neither a DICOM keyword (e.g. BodyPartExamined) nor a tag written gggg,eeee");
    m.has_label = true;
  }
  if (!url.https && !m.src.ca_file.empty())
    throw ConfigError("data.ca_file is given but data.url is not https://");
  HttpOptions opt;
  opt.ca_file = m.src.ca_file;
  opt.connect_timeout = seconds_to_ms(m.src.connect_timeout_s, "data.connect_timeout_s");
  opt.io_timeout = seconds_to_ms(m.src.read_timeout_s, "data.read_timeout_s");
  opt.max_download_bytes = m.src.max_instance_bytes;
  opt.username = m.src.username;
  opt.password = read_password(m.src);
  opt.server_label = "Orthanc";
  m.username = m.src.username;
  if (!m.username.empty() && !url.https && !loopback_host(url.host))
    spdlog::warn("orthanc: the credentials for {} travel unencrypted (http://); use https:// with data.ca_file",
                 url.str());
  m.http = std::make_unique<HttpClient>(m.src.url, std::move(opt));
}

OrthancClient::~OrthancClient() = default;
std::vector<OrthancInstance> OrthancClient::query() { return impl_->query(); }
const std::vector<SkippedInstance>& OrthancClient::skipped_by_query() const { return impl_->skipped_by_query; }
OrthancFetch OrthancClient::fetch(const std::vector<OrthancInstance>& selected) { return impl_->fetch(selected); }
const HttpCounters& OrthancClient::counters() const { return impl_->http->counters(); }

OrthancFetch fetch_orthanc_instances(const OrthancSource& source) {
  OrthancClient client(source);
  const auto selected = client.query();
  OrthancFetch out = client.fetch(selected);
  const auto& q = client.skipped_by_query();
  out.skipped.insert(out.skipped.begin(), q.begin(), q.end());
  return out;
}

}  // namespace fedtl::common

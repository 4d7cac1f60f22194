// Orthanc (a PACS with a REST API) as a data source: select DICOM instances by their tags,
// download them into a local cache, and list what the DICOM reader should read.
//
//   query:    POST {url}/tools/find {"Level":"Instance","Query":{...},"Expand":true}, paged
//             with Since/Limit until a page comes back empty (so a server-side
//             LimitFindInstances cannot silently truncate the selection). The instances are
//             sorted by SOPInstanceUID, so the dataset's order never depends on Orthanc's.
//   download: GET {url}/instances/{id}/file, streamed into the cache and hashed (SHA-256).
//   cache:    {cache_dir}/{SOPInstanceUID}/{sha256}.dcm  the bytes, named by their digest
//             {cache_dir}/{SOPInstanceUID}/orthanc.json  which Orthanc attachment they are
//             (Orthanc id, FileUuid, FileSize) and their digest
//             Both are written atomically (temporary file, fsync, rename). An instance whose
//             orthanc.json matches what the query reported (same id, same FileUuid, same size)
//             and whose file still hashes to the recorded digest is not downloaded again, so a
//             second run over an unchanged selection makes no GET at all. An instance Orthanc
//             re-stored under the same SOPInstanceUID gets a new FileUuid and is fetched again;
//             the older file is removed. Files of instances the query no longer selects stay.
//
// What a site's data never leaves: the credentials are sent only to `url` (Authorization
// header) and never appear in a log line or an error message; the images stay on the site.
//
// Errors (one line each): ConfigError for a bad source (URL, missing or unreadable password,
// an unknown label tag) and for refused credentials (HTTP 401/403); TransportError when
// Orthanc cannot be reached ("connection refused": is it running?), TimeoutError when it does
// not answer in time, PeerIdentityError when its HTTPS certificate is refused; DataError for
// answers that are not what Orthanc sends (malformed JSON, a missing SOPInstanceUID), a query
// Orthanc refuses (an unknown tag name), and bad instances. A bad instance is one deleted
// between the query and the download (HTTP 404), one whose file is not DICOM or disagrees
// with the query (another SOPInstanceUID, another size), or one without the label tag. With
// skip_bad (data.on_bad_file = "skip") a bad instance is left out and listed in
// OrthancFetch::skipped (and logged with its reason); otherwise the first one is a DataError
// naming it.
//
// Thread safety: an OrthancClient is used by one thread at a time. Two processes sharing a
// cache_dir are safe (atomic renames) but may both download the same instance.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace fedtl::common {

struct HttpCounters;

// Where the instances come from (a site's [data] with source = "orthanc"; never part of a job
// the coordinator sends).
struct OrthancSource {
  std::string url;            // http(s)://host:port[/prefix] of Orthanc's REST API
  std::string username;       // "" = no authentication
  // The password: the first line of password_file, or the value of the environment variable
  // password_env (exactly one of them when username is set). Read when the client is made.
  std::string password_file;
  std::string password_env;
  // DICOM tag (keyword, as Orthanc names it: "Modality", "StudyDescription", or "gggg,eeee")
  // -> Orthanc's pattern ("CR", "CHEST*", "20200101-20201231"). Empty: every instance.
  std::map<std::string, std::string> query;
  bool case_sensitive = true;  // Orthanc's CaseSensitive for the query's patterns
  // A tag whose value is each instance's label (keyword like "BodyPartExamined", or
  // "gggg,eeee"); "" = labels come from elsewhere (a manifest keyed by SOPInstanceUID).
  std::string label_tag;
  std::string cache_dir;       // required: where the files are kept
  std::string ca_file;         // https: PEM CA file the server's certificate must chain to ("" = system's)
  bool skip_bad = false;       // data.on_bad_file = "skip"
  double connect_timeout_s = 10;
  double read_timeout_s = 60;  // longest wait for Orthanc's next bytes
  int64_t max_instance_bytes = int64_t{1} << 30;  // a bigger instance is a bad instance
  int64_t page_size = 1000;    // instances per /tools/find request
};

// One instance the query selected, as Orthanc described it.
struct OrthancInstance {
  std::string orthanc_id;        // Orthanc's resource id ("4887d69b-c57314e9-...")
  std::string sop_instance_uid;  // from Orthanc's MainDicomTags
  std::string file_uuid;         // Orthanc's attachment id (changes when the instance is re-stored)
  int64_t file_size = -1;        // bytes of the DICOM file (-1: Orthanc did not say)
};

// One instance ready for the DICOM reader.
struct FetchedInstance {
  std::string path;              // the cached DICOM file
  std::string sop_instance_uid;
  std::string patient_id;        // (0010,0020), "" when the file has none
  std::string label;             // value of label_tag (trimmed); "" when label_tag is ""
  std::string sha256;            // digest of the file's bytes (lower-case hex)
  std::string orthanc_id;
  bool downloaded = false;       // fetched in this run (false: taken from the cache)
};

struct SkippedInstance {
  std::string sop_instance_uid;  // may be "" when Orthanc did not report one
  std::string orthanc_id;
  std::string reason;            // one line
};

struct OrthancFetch {
  std::vector<FetchedInstance> instances;  // sorted by SOPInstanceUID
  std::vector<SkippedInstance> skipped;    // only with skip_bad; sorted like the query
  int64_t downloaded = 0;                  // listed instances fetched over HTTP in this run
                                           // (skipped ones are counted by HttpCounters only)
  int64_t from_cache = 0;                  // listed instances served from the cache
  int64_t downloaded_bytes = 0;
};

// A connection to one Orthanc. Construction checks the source (URL, credentials, label tag,
// cache_dir) and reads the password; nothing is sent until query() or fetch().
class OrthancClient {
 public:
  // Throws ConfigError (never naming the password).
  explicit OrthancClient(OrthancSource source);
  ~OrthancClient();
  OrthancClient(const OrthancClient&) = delete;
  OrthancClient& operator=(const OrthancClient&) = delete;

  // The instances source.query selects, sorted by SOPInstanceUID. Two Orthanc instances with
  // the same SOPInstanceUID are a DataError (or both skipped, with skip_bad: listed in
  // skipped_by_query()). Blocking.
  std::vector<OrthancInstance> query();
  const std::vector<SkippedInstance>& skipped_by_query() const;

  // Makes every instance of `selected` available in the cache (downloading those missing or
  // changed) and reads its SOPInstanceUID, PatientID and label from the file. Blocking.
  OrthancFetch fetch(const std::vector<OrthancInstance>& selected);

  // What went over the wire so far (requests, downloads, bytes).
  const HttpCounters& counters() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// query() then fetch() (skipped_by_query() is merged into the result's skipped list).
OrthancFetch fetch_orthanc_instances(const OrthancSource& source);

// The DICOM tag a label_tag names: a dictionary keyword ("BodyPartExamined") or "gggg,eeee"
// (hex). Returns false when it names none.
bool parse_dicom_tag(const std::string& name, uint16_t& group, uint16_t& element);

}  // namespace fedtl::common

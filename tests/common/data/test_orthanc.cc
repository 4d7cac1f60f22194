// Orthanc as a data source, against a REAL Orthanc (tests/orthanc_server.h): DICOM files are
// generated with DCMTK, stored through Orthanc's REST API, selected by tags, downloaded into
// the cache and read back. The few cases Orthanc itself never produces (malformed JSON, a
// server that stops answering, an oversized answer) use a scripted loopback socket that is
// plainly not Orthanc.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "common/data/orthanc.h"
#include "common/data/orthanc_source.h"
#include "common/data/sources.h"
#include "common/errors.h"
#include "common/files.h"
#include "common/sha256.h"
#include "common/transport/http_client.h"
#include "common/transport/pki.h"
#include "tests/captured_log.h"
#include "tests/dicom_fixtures.h"
#include "tests/orthanc_server.h"

namespace fedtl::common {
namespace {

namespace fs = std::filesystem;
using test_support::OrthancServer;
using test_support::OrthancServerOptions;

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("fedtl_test_orthanc_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

using test_support::Fixture;
using test_support::write_dicom;

const std::string kRoot = "1.2.826.0.1.3680043.10.99.";

// Six instances: four CR chest images (the query's subset), a CR knee and an MR chest.
std::vector<Fixture> fixtures() {
  return {
      {kRoot + "5", "P2", "CR", "CHEST PA", "CHEST", 10},
      {kRoot + "12", "P1", "CR", "CHEST AP", "CHEST", 20},
      {kRoot + "3", "P3", "CR", "KNEE", "KNEE", 30},
      {kRoot + "1", "P1", "CR", "CHEST PA", "LUNG", 40},
      {kRoot + "7", "P4", "MR", "CHEST", "CHEST", 50},
      {kRoot + "20", "P2", "CR", "CHEST LAT", "CHEST", 60},
  };
}
// What Modality = CR, StudyDescription = CHEST* selects, in SOPInstanceUID (string) order.
const std::vector<std::string> kChestCr = {kRoot + "1", kRoot + "12", kRoot + "20", kRoot + "5"};

// One Orthanc for the suite (start-up and shutdown take ~1.5 s); every test starts from an
// empty Orthanc holding the six fixtures, and from an empty cache.
class OrthancTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = new OrthancServer(); }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    if (!server_->running()) return;
    const auto patients = nlohmann::json::parse(server_->call("GET", "/patients").body);
    for (const auto& p : patients) server_->call("DELETE", "/patients/" + p.get<std::string>());
    for (const auto& f : fixtures()) {
      const std::string path = tmp_ / ("in-" + f.sop + ".dcm");
      write_dicom(path, f);
      originals_[f.sop] = path;
      ids_[f.sop] = server_->upload(path);
    }
    src_ = source_for(*server_);
  }
  OrthancSource source_for(OrthancServer& server) {
    const std::string pw = tmp_ / "password";
    std::ofstream(pw, std::ios::trunc) << server.options().password << "\n";
    fs::permissions(pw, fs::perms::owner_read | fs::perms::owner_write);
    OrthancSource s;
    s.url = server.url();
    s.username = server.options().user;
    s.password_file = pw;
    s.query = {{"Modality", "CR"}, {"StudyDescription", "CHEST*"}};
    s.cache_dir = tmp_ / "cache";
    s.read_timeout_s = 10;
    return s;
  }

  static OrthancServer* server_;
  TempDir tmp_;
  std::map<std::string, std::string> originals_, ids_;
  OrthancSource src_;
};
OrthancServer* OrthancTest::server_ = nullptr;

std::vector<std::string> uids(const std::vector<FetchedInstance>& v) {
  std::vector<std::string> out;
  for (const auto& i : v) out.push_back(i.sop_instance_uid);
  return out;
}

TEST_F(OrthancTest, QuerySelectsTheTaggedSubsetSortedBySopInstanceUid) {
  ORTHANC_OR_SKIP(*server_);
  OrthancClient client(src_);
  const auto selected = client.query();
  std::vector<std::string> got;
  for (const auto& i : selected) {
    got.push_back(i.sop_instance_uid);
    EXPECT_EQ(i.orthanc_id, ids_[i.sop_instance_uid]);
    EXPECT_FALSE(i.file_uuid.empty());
    EXPECT_EQ(i.file_size, static_cast<int64_t>(fs::file_size(originals_[i.sop_instance_uid])));
  }
  EXPECT_EQ(got, kChestCr);
  EXPECT_EQ(client.counters().downloads, 0);  // a query downloads nothing

  // Paged: two per page gives the same selection.
  OrthancSource paged = src_;
  paged.page_size = 2;
  OrthancClient c2(paged);
  std::vector<std::string> got2;
  for (const auto& i : c2.query()) got2.push_back(i.sop_instance_uid);
  EXPECT_EQ(got2, kChestCr);
  EXPECT_EQ(c2.counters().requests, 3);  // 2 + 2 + an empty page

  // No query at all: every instance.
  OrthancSource all = src_;
  all.query.clear();
  EXPECT_EQ(OrthancClient(all).query().size(), fixtures().size());
}

TEST_F(OrthancTest, DownloadsIntoTheCacheAndASecondRunDownloadsNothing) {
  ORTHANC_OR_SKIP(*server_);
  src_.label_tag = "BodyPartExamined";
  const auto t0 = std::chrono::steady_clock::now();
  OrthancClient first(src_);
  const OrthancFetch a = first.fetch(first.query());
  const double first_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(uids(a.instances), kChestCr);
  EXPECT_EQ(a.downloaded, 4);
  EXPECT_EQ(a.from_cache, 0);
  EXPECT_EQ(first.counters().downloads, 4);
  EXPECT_TRUE(a.skipped.empty());
  std::map<std::string, Fixture> by_uid;
  for (const auto& f : fixtures()) by_uid[f.sop] = f;
  for (const auto& i : a.instances) {
    // The bytes are the original file's, and the cache names them by their digest.
    const std::string original = read_file(originals_[i.sop_instance_uid]);
    EXPECT_EQ(i.sha256, sha256_hex(original));
    EXPECT_EQ(read_file(i.path), original);
    EXPECT_EQ(fs::path(i.path).filename().string(), i.sha256 + ".dcm");
    EXPECT_EQ(fs::path(i.path).parent_path().filename().string(), i.sop_instance_uid);
    EXPECT_EQ(i.patient_id, by_uid[i.sop_instance_uid].patient);
    EXPECT_EQ(i.label, by_uid[i.sop_instance_uid].body_part);
    EXPECT_EQ(i.orthanc_id, ids_[i.sop_instance_uid]);
    EXPECT_TRUE(i.downloaded);
  }

  // A second run (a new client, as a new process would make) downloads nothing: one find
  // request and the empty page that ends it.
  const auto t1 = std::chrono::steady_clock::now();
  OrthancClient second(src_);
  const OrthancFetch b = second.fetch(second.query());
  const double second_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  EXPECT_EQ(b.downloaded, 0);
  EXPECT_EQ(b.from_cache, 4);
  EXPECT_EQ(second.counters().downloads, 0);
  EXPECT_EQ(second.counters().requests, 2);
  ASSERT_EQ(b.instances.size(), a.instances.size());
  for (size_t k = 0; k < a.instances.size(); ++k) {
    EXPECT_EQ(b.instances[k].path, a.instances[k].path);
    EXPECT_EQ(b.instances[k].sha256, a.instances[k].sha256);
    EXPECT_EQ(b.instances[k].label, a.instances[k].label);
    EXPECT_FALSE(b.instances[k].downloaded);
  }
  std::printf("[ figures  ] fetch of %zu instances: %.3f s (%lld downloads); second run %.3f s (%lld downloads)\n",
              a.instances.size(), first_s, static_cast<long long>(first.counters().downloads), second_s,
              static_cast<long long>(second.counters().downloads));

  // A cached file that was damaged is fetched again (and only that one).
  {
    std::ofstream(a.instances[1].path, std::ios::binary | std::ios::app) << "x";
  }
  OrthancClient third(src_);
  const OrthancFetch c = third.fetch(third.query());
  EXPECT_EQ(c.downloaded, 1);
  EXPECT_EQ(c.instances[1].sha256, a.instances[1].sha256);
  EXPECT_EQ(read_file(c.instances[1].path), read_file(originals_[kChestCr[1]]));
}

TEST_F(OrthancTest, AnInstanceStoredAgainWithOtherBytesIsDownloadedAgain) {
  ORTHANC_OR_SKIP(*server_);
  const OrthancFetch a = fetch_orthanc_instances(src_);
  ASSERT_EQ(a.instances.size(), 4u);
  // Same UIDs, other pixels: Orthanc gives the new file a new attachment.
  Fixture f = fixtures()[0];
  f.fill = 200;
  const std::string path = tmp_ / "changed.dcm";
  write_dicom(path, f);
  server_->remove(ids_[f.sop]);
  server_->upload(path);
  OrthancClient client(src_);
  const OrthancFetch b = client.fetch(client.query());
  EXPECT_EQ(b.downloaded, 1);
  EXPECT_EQ(b.from_cache, 3);
  const auto it = std::find_if(b.instances.begin(), b.instances.end(),
                               [&](const FetchedInstance& i) { return i.sop_instance_uid == f.sop; });
  ASSERT_NE(it, b.instances.end());
  EXPECT_EQ(it->sha256, sha256_hex(read_file(path)));
  // The older copy is gone: one file of bytes per instance.
  int dcm_files = 0;
  for (const auto& e : fs::directory_iterator(fs::path(src_.cache_dir) / f.sop)) dcm_files += e.path().extension() == ".dcm";
  EXPECT_EQ(dcm_files, 1);
}

TEST_F(OrthancTest, LabelTagByNumberAndMissingLabel) {
  ORTHANC_OR_SKIP(*server_);
  src_.label_tag = "0018,0015";  // BodyPartExamined
  const OrthancFetch a = fetch_orthanc_instances(src_);
  ASSERT_EQ(a.instances.size(), 4u);
  EXPECT_EQ(a.instances[0].label, "LUNG");

  // An instance without the label tag is a bad instance.
  Fixture f{kRoot + "30", "P9", "CR", "CHEST PA", "", 0};
  const std::string path = tmp_ / "nolabel.dcm";
  write_dicom(path, f);
  server_->upload(path);
  try {
    fetch_orthanc_instances(src_);
    FAIL() << "an instance without its label was accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("has no value for data.label_tag '0018,0015'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(f.sop), std::string::npos) << e.what();
  }
  src_.skip_bad = true;
  const OrthancFetch b = fetch_orthanc_instances(src_);
  EXPECT_EQ(b.instances.size(), 4u);
  ASSERT_EQ(b.skipped.size(), 1u);
  EXPECT_EQ(b.skipped[0].sop_instance_uid, f.sop);

  src_.label_tag = "NoSuchKeyword";
  EXPECT_THROW(OrthancClient{src_}, ConfigError);
}

TEST_F(OrthancTest, WrongPasswordIsAClearErrorThatNeverShowsThePassword) {
  ORTHANC_OR_SKIP(*server_);
  const std::string wrong = "not-the-Pa55word-xyz";
  std::ofstream(src_.password_file, std::ios::trunc) << wrong << "\n";
  test_support::CapturedLog log;
  try {
    fetch_orthanc_instances(src_);
    FAIL() << "a wrong password was accepted";
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("refused the credentials of user 'fedtl' (HTTP 401"), std::string::npos) << m;
    EXPECT_NE(m.find(src_.password_file), std::string::npos) << m;
    EXPECT_EQ(m.find(wrong), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
  EXPECT_FALSE(log.contains(wrong));
  EXPECT_FALSE(log.contains(server_->options().password));

  // No credentials at all.
  OrthancSource anon = src_;
  anon.username.clear();
  anon.password_file.clear();
  try {
    fetch_orthanc_instances(anon);
    FAIL() << "no credentials were accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("requires credentials (HTTP 401)"), std::string::npos) << e.what();
  }
}

TEST_F(OrthancTest, PasswordFromAnEnvironmentVariable) {
  ORTHANC_OR_SKIP(*server_);
  src_.password_file.clear();
  src_.password_env = "FEDTL_TEST_ORTHANC_PASSWORD";
  ::unsetenv(src_.password_env.c_str());
  try {
    OrthancClient c(src_);
    FAIL() << "an unset password variable was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("FEDTL_TEST_ORTHANC_PASSWORD (data.password_env) is not set"),
              std::string::npos);
  }
  ::setenv(src_.password_env.c_str(), server_->options().password.c_str(), 1);
  EXPECT_EQ(fetch_orthanc_instances(src_).instances.size(), 4u);
  ::unsetenv(src_.password_env.c_str());
  // Both, or neither, is a configuration error.
  src_.password_file = tmp_ / "password";
  EXPECT_THROW(OrthancClient{src_}, ConfigError);
}

TEST_F(OrthancTest, OrthancDownIsAClearError) {
  ORTHANC_OR_SKIP(*server_);
  OrthancServer own;  // this test stops it
  ORTHANC_OR_SKIP(own);
  own.upload(originals_[kChestCr[0]]);
  const OrthancSource src = source_for(own);
  EXPECT_EQ(fetch_orthanc_instances(src).instances.size(), 1u);
  own.stop();
  try {
    fetch_orthanc_instances(src);
    FAIL() << "a stopped Orthanc went unnoticed";
  } catch (const TransportError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("cannot connect to Orthanc at " + own.url()), std::string::npos) << m;
    EXPECT_NE(m.find("refused"), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
}

TEST_F(OrthancTest, InstanceDeletedBetweenQueryAndDownload) {
  ORTHANC_OR_SKIP(*server_);
  OrthancClient client(src_);
  const auto selected = client.query();
  ASSERT_EQ(selected.size(), 4u);
  server_->remove(ids_[kChestCr[2]]);
  try {
    client.fetch(selected);
    FAIL() << "a deleted instance went unnoticed";
  } catch (const DataError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("instance " + kChestCr[2]), std::string::npos) << m;
    EXPECT_NE(m.find("deleted between the query and the download"), std::string::npos) << m;
    EXPECT_NE(m.find("on_bad_file = \"skip\""), std::string::npos) << m;
  }
  src_.skip_bad = true;
  OrthancClient skipping(src_);
  test_support::CapturedLog log;
  const OrthancFetch f = skipping.fetch(selected);
  EXPECT_EQ(uids(f.instances), (std::vector<std::string>{kChestCr[0], kChestCr[1], kChestCr[3]}));
  ASSERT_EQ(f.skipped.size(), 1u);
  EXPECT_EQ(f.skipped[0].sop_instance_uid, kChestCr[2]);
  EXPECT_EQ(f.skipped[0].orthanc_id, ids_[kChestCr[2]]);
  EXPECT_NE(f.skipped[0].reason.find("HTTP 404"), std::string::npos);
  EXPECT_TRUE(log.warned(kChestCr[2]));
  // Nothing half-written is left in the cache for it.
  EXPECT_FALSE(fs::exists(fs::path(src_.cache_dir) / kChestCr[2] / "orthanc.json"));
}

TEST_F(OrthancTest, AQueryOrthancRefusesIsAClearError) {
  ORTHANC_OR_SKIP(*server_);
  src_.query = {{"NoSuchTag", "x"}};
  try {
    fetch_orthanc_instances(src_);
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("POST /tools/find with HTTP 500"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Unknown DICOM tag"), std::string::npos) << e.what();
  }
}

// The image set an Orthanc source gives is the one the same files give as a DICOM folder:
// same pixels, labels, class names and patient groups, in the same order (so the same job
// trains the same model from either).
void expect_same_images(const ImageSet& a, const ImageSet& b) {
  EXPECT_EQ(a.size(), b.size());
  EXPECT_EQ(a.channels, b.channels);
  EXPECT_EQ(a.height, b.height);
  EXPECT_EQ(a.width, b.width);
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_EQ(a.class_names, b.class_names);
  EXPECT_EQ(a.groups, b.groups);
  EXPECT_EQ(sha256_hex(a.pixels.data(), a.pixels.size()), sha256_hex(b.pixels.data(), b.pixels.size()));
}

TEST_F(OrthancTest, GivesTheSameImageSetAsTheSameDicomFiles) {
  ORTHANC_OR_SKIP(*server_);
  // The selected instances as files named <SOPInstanceUID>.dcm (path order = UID order).
  const std::string dir = tmp_ / "files";
  fs::create_directories(dir);
  for (const auto& uid : kChestCr) fs::copy_file(originals_[uid], dir + "/" + uid + ".dcm");

  SourceSpec files;
  files.kind = SourceKind::kDicom;
  files.dir = dir;
  files.label_tag = "BodyPartExamined";
  src_.label_tag = "BodyPartExamined";
  SourceSpec from_orthanc = files;
  from_orthanc.dir.clear();
  OrthancFetch fetched;
  const ImageSet a = read_source(files);
  const ImageSet b = read_orthanc_source(src_, from_orthanc, Split::kNone, &fetched);
  EXPECT_EQ(fetched.downloaded, 4);
  ASSERT_EQ(a.size(), 4);
  EXPECT_EQ(a.class_names, (std::vector<std::string>{"CHEST", "LUNG"}));
  expect_same_images(a, b);
  EXPECT_EQ(b.groups, (std::vector<std::string>{"P1", "P1", "P2", "P2"}));

  // Labels from a manifest keyed by SOPInstanceUID (its row order is the set's order).
  const std::string csv = tmp_ / "labels.csv";
  std::ofstream(csv) << "sop_instance_uid,label,patient_id\n"
                     << kChestCr[3] << ",effusion,\n"
                     << kChestCr[0] << ",normal,\n"
                     << kChestCr[2] << ",effusion,X9\n"
                     << kChestCr[1] << ",normal,\n";
  files.label_tag.clear();
  files.labels = csv;
  src_.label_tag.clear();
  from_orthanc = files;
  from_orthanc.dir.clear();
  const ImageSet c = read_source(files);
  const ImageSet d = read_orthanc_source(src_, from_orthanc, Split::kNone, &fetched);
  EXPECT_EQ(fetched.downloaded, 0);  // all cached by the first read
  expect_same_images(c, d);
  EXPECT_EQ(d.class_names, (std::vector<std::string>{"effusion", "normal"}));
  EXPECT_EQ(d.groups, (std::vector<std::string>{"P2", "P1", "X9", "P1"}));

  // A manifest row the query did not select.
  std::ofstream(csv, std::ios::app) << kRoot << "3,knee,\n";
  try {
    read_orthanc_source(src_, from_orthanc);
    FAIL() << "a manifest row outside the selection was accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(kRoot + "3 is not among the instances the Orthanc query selected"),
              std::string::npos)
        << e.what();
  }
}

// --- HTTPS ------------------------------------------------------------------------------
// Debian's Orthanc 1.10.1 cannot serve HTTPS here: its civetweb calls a missing OpenSSL 3
// function on the first TLS request and the process dies (SIGSEGV). The HTTPS path is
// therefore tested against OpenSSL's own server (`openssl s_server -WWW`, which answers
// GET /<file> from its working directory), with certificates from a test CA.

class OpenSslWwwServer {
 public:
  OpenSslWwwServer(const std::string& dir, const std::string& cert, const std::string& key) {
    port_ = test_support::free_port();
    const std::string accept = "127.0.0.1:" + std::to_string(port_);
    pid_ = ::fork();
    if (pid_ == 0) {
      if (::chdir(dir.c_str()) != 0) ::_exit(127);
      const int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::execl("/usr/bin/openssl", "openssl", "s_server", "-accept", accept.c_str(), "-cert", cert.c_str(), "-key",
              key.c_str(), "-WWW", "-quiet", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 200; ++i) {  // until it listens
      const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(port_);
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      const bool up = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
      ::close(fd);
      if (up) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ~OpenSslWwwServer() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int st = 0;
      ::waitpid(pid_, &st, 0);
    }
  }
  uint16_t port() const { return port_; }

 private:
  pid_t pid_ = -1;
  uint16_t port_ = 0;
};

struct TestPki {
  TempDir dir;
  std::string ca, cert, key, other_ca, misnamed_cert, misnamed_key, www;
  TestPki() {
    pki_init(dir / "pki", "orthanc-test");
    const std::string kit = pki_issue(dir / "pki", "orthanc", "coordinator");  // SAN localhost, 127.0.0.1
    ca = dir / "pki/ca.crt";
    cert = kit + "/orthanc.crt";
    key = kit + "/orthanc.key";
    pki_init(dir / "other", "someone-else");
    other_ca = dir / "other/ca.crt";
    // A server certificate from the right CA for another name only.
    misnamed_key = dir / "misnamed.key";
    misnamed_cert = dir / "misnamed.crt";
    std::ofstream(dir / "ext.cnf") << "subjectAltName=DNS:pacs.example.org\nextendedKeyUsage=serverAuth\n";
    const std::string cmd =
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=pacs.example.org -keyout " +
        misnamed_key + " -out " + (dir / "m.csr") + " 2>/dev/null && openssl x509 -req -in " + (dir / "m.csr") +
        " -CA " + ca + " -CAkey " + (dir / "pki/ca.key") + " -CAcreateserial -days 1 -extfile " + (dir / "ext.cnf") +
        " -out " + misnamed_cert + " 2>/dev/null";
    if (std::system(cmd.c_str()) != 0) misnamed_cert.clear();
    www = dir / "www";
    fs::create_directories(www);
    std::ofstream(www + "/system") << "{\"Name\": \"tls-test\"}\n";
  }
};

HttpOptions tls_options(const std::string& ca) {
  HttpOptions o;
  o.ca_file = ca;
  o.connect_timeout = std::chrono::seconds(5);
  o.io_timeout = std::chrono::seconds(5);
  return o;
}

TEST(OrthancHttps, VerifiesTheServerCertificateAgainstTheCaFile) {
  if (::access("/usr/bin/openssl", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/openssl to serve TLS (package openssl)";
  TestPki pki;
  OpenSslWwwServer server(pki.www, pki.cert, pki.key);
  const std::string url = "https://127.0.0.1:" + std::to_string(server.port());
  {
    HttpClient c(url, tls_options(pki.ca));
    const HttpResponse r = c.request("GET", "/system");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "{\"Name\": \"tls-test\"}\n");
  }
  {  // by name (DNS:localhost), and a download streamed to a file
    HttpClient c("https://localhost:" + std::to_string(server.port()), tls_options(pki.ca));
    TempDir tmp;
    const HttpResponse r = c.download("/system", tmp / "out");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(read_file(tmp / "out"), "{\"Name\": \"tls-test\"}\n");
    EXPECT_EQ(c.counters().downloads, 1);
  }
  try {  // a CA that did not sign it
    HttpClient c(url, tls_options(pki.other_ca));
    c.request("GET", "/system");
    FAIL() << "a certificate from another CA was accepted";
  } catch (const PeerIdentityError& e) {
    EXPECT_NE(std::string(e.what()).find("its TLS certificate was refused"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(pki.other_ca), std::string::npos) << e.what();
  }
  try {  // plain HTTP against the TLS port
    HttpOptions o = tls_options("");
    o.io_timeout = std::chrono::milliseconds(500);
    HttpClient c("http://127.0.0.1:" + std::to_string(server.port()), o);
    c.request("GET", "/system");
    FAIL() << "a TLS server was taken for an HTTP one";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
  }
}

TEST(OrthancHttps, ChecksTheServerName) {
  if (::access("/usr/bin/openssl", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/openssl to serve TLS (package openssl)";
  TestPki pki;
  ASSERT_FALSE(pki.misnamed_cert.empty()) << "openssl could not issue the test certificate";
  OpenSslWwwServer server(pki.www, pki.misnamed_cert, pki.misnamed_key);
  for (const std::string host : {"127.0.0.1", "localhost"}) {
    try {
      HttpClient c("https://" + host + ":" + std::to_string(server.port()), tls_options(pki.ca));
      c.request("GET", "/system");
      FAIL() << "a certificate for pacs.example.org was accepted for " << host;
    } catch (const PeerIdentityError& e) {
      EXPECT_NE(std::string(e.what()).find("mismatch"), std::string::npos) << e.what();
    }
  }
}

// --- servers that are not Orthanc: what Orthanc never sends ------------------------------

// Accepts one connection on loopback, reads the request head, then sends `reply` (or, when
// `reply` is empty, stays silent until the client goes away) and closes.
class ScriptedServer {
 public:
  explicit ScriptedServer(std::string reply) : reply_(std::move(reply)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    ::listen(fd_, 4);
    thread_ = std::thread([this] {
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::string got;
      char buf[4096];
      while (got.find("\r\n\r\n") == std::string::npos) {
        const ssize_t n = ::recv(c, buf, sizeof buf, 0);
        if (n <= 0) break;
        got.append(buf, static_cast<size_t>(n));
      }
      if (!reply_.empty()) {
        ::send(c, reply_.data(), reply_.size(), MSG_NOSIGNAL);
      } else {
        while (::recv(c, buf, sizeof buf, 0) > 0) {
        }
      }
      ::close(c);
    });
  }
  ~ScriptedServer() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  std::string reply_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
};

OrthancSource scripted_source(const ScriptedServer& s, const TempDir& tmp) {
  OrthancSource src;
  src.url = s.url();
  src.cache_dir = tmp / "cache";
  src.read_timeout_s = 0.3;
  return src;
}

TEST(OrthancMisbehaving, MalformedJsonIsAClearError) {
  TempDir tmp;
  const std::string body = "[{\"ID\": 12,";
  ScriptedServer s("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                   std::to_string(body.size()) + "\r\n\r\n" + body);
  try {
    fetch_orthanc_instances(scripted_source(s, tmp));
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("malformed JSON for POST /tools/find"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
  }
}

TEST(OrthancMisbehaving, WrongShapeIsAClearError) {
  TempDir tmp;
  ScriptedServer s("HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"Hello\": 1}\n");
  EXPECT_THROW(fetch_orthanc_instances(scripted_source(s, tmp)), DataError);
}

TEST(OrthancMisbehaving, SilentServerTimesOut) {
  TempDir tmp;
  ScriptedServer s("");
  const auto t0 = std::chrono::steady_clock::now();
  try {
    fetch_orthanc_instances(scripted_source(s, tmp));
    FAIL();
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("did not answer within 300 ms"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
}

TEST(OrthancMisbehaving, OversizedAnswerIsRefusedBeforeItIsRead) {
  TempDir tmp;
  ScriptedServer s("HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n[");
  try {
    fetch_orthanc_instances(scripted_source(s, tmp));
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("more than the limit"), std::string::npos) << e.what();
  }
}

TEST(OrthancMisbehaving, NotHttpIsAClearError) {
  TempDir tmp;
  ScriptedServer s("SSH-2.0-OpenSSH_9.2\r\n\r\n");
  EXPECT_THROW(fetch_orthanc_instances(scripted_source(s, tmp)), DataError);
}

// --- configuration ----------------------------------------------------------------------

TEST(OrthancConfig, UrlsAreCheckedAndNeverEchoCredentials) {
  const HttpUrl u = parse_http_url("https://pacs.example.org:8443/orthanc/");
  EXPECT_TRUE(u.https);
  EXPECT_EQ(u.host, "pacs.example.org");
  EXPECT_EQ(u.port, 8443);
  EXPECT_EQ(u.base_path, "/orthanc");
  EXPECT_EQ(parse_http_url("http://[::1]:8042").host, "::1");
  EXPECT_EQ(parse_http_url("http://10.0.0.1").port, 80);
  EXPECT_EQ(parse_http_url("HTTPS://h").port, 443);
  for (const char* bad : {"ftp://h", "h:8042", "http://", "http://h:0", "http://h:99999", "http://h:80x",
                          "http://h/?q=1", "http://::1:80"})
    EXPECT_THROW(parse_http_url(bad, "data.url"), ConfigError) << bad;
  try {
    parse_http_url("http://alice:hunter2@h:8042", "data.url");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).find("hunter2"), std::string::npos) << e.what();
  }
}

TEST(OrthancConfig, SourceIsCheckedBeforeAnythingIsSent) {
  TempDir tmp;
  OrthancSource s;
  s.url = "http://127.0.0.1:1";
  EXPECT_THROW(OrthancClient{s}, ConfigError);  // no cache_dir
  s.cache_dir = tmp / "cache";
  EXPECT_NO_THROW(OrthancClient{s});
  s.username = "u";
  EXPECT_THROW(OrthancClient{s}, ConfigError);  // no password source
  s.password_file = tmp / "missing";
  EXPECT_THROW(OrthancClient{s}, ConfigError);
  s.username.clear();
  EXPECT_THROW(OrthancClient{s}, ConfigError);  // a password without a user
  s.password_file.clear();
  s.ca_file = tmp / "ca.crt";
  EXPECT_THROW(OrthancClient{s}, ConfigError);  // ca_file with http://
  s.ca_file.clear();
  s.url = "https://127.0.0.1:1";
  s.ca_file = tmp / "missing-ca.crt";
  EXPECT_THROW(OrthancClient{s}, ConfigError);
  uint16_t g = 0, e = 0;
  EXPECT_TRUE(parse_dicom_tag("BodyPartExamined", g, e));
  EXPECT_EQ(g, 0x0018);
  EXPECT_EQ(e, 0x0015);
  EXPECT_TRUE(parse_dicom_tag("0010,0020", g, e));
  EXPECT_EQ(g, 0x0010);
  EXPECT_EQ(e, 0x0020);
  EXPECT_FALSE(parse_dicom_tag("0010,00zz", g, e));
  EXPECT_FALSE(parse_dicom_tag("Body Part", g, e));
}

}  // namespace
}  // namespace fedtl::common

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include "app/config.h"
#include "app/job_setup.h"
#include "app/run.h"
#include "common/errors.h"

using namespace fedtl;
using app::parse_job_config;

namespace {
std::string error_of(const std::string& toml) {
  try {
    parse_job_config(toml, "t.toml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Config, DefaultsAndValues) {
  auto c = parse_job_config("[job]\nsites = 4\nrounds = 7\n[train]\nlr = 0.1\n[partition]\nscheme = \"iid\"\n");
  EXPECT_EQ(c.partition.sites, 4);
  EXPECT_EQ(c.rounds, 7);
  EXPECT_DOUBLE_EQ(c.train.lr, 0.1);
  EXPECT_EQ(c.partition.scheme, common::PartitionScheme::kIid);
  EXPECT_EQ(c.data.target_classes.size(), 5u);
}

// Issue 12: the fine-tuning keys, their defaults, and impossible values refused naming the key.
TEST(Config, FineTuningKeysDefaultAndRefuseImpossibleValues) {
  auto d = parse_job_config("[train]\nlr = 0.2\n");
  EXPECT_FALSE(d.train.backbone_lr.has_value());
  EXPECT_DOUBLE_EQ(app::wire_training_spec(d).backbone_lr(), 0.02);  // train.lr / 10
  EXPECT_DOUBLE_EQ(d.data.validation_fraction, 0.2);
  EXPECT_EQ(d.early_stopping_patience, 0);
  EXPECT_TRUE(d.keep_best);
  auto c = parse_job_config(
      "[train]\nbackbone_lr = 0.001\n[backbone]\nunfrozen = 2\nwarmup_rounds = 3\nunfreeze_every = 2\n"
      "[data]\nvalidation_fraction = 0.25\n[job]\nearly_stopping_patience = 4\nkeep_best = false\n");
  EXPECT_DOUBLE_EQ(app::wire_training_spec(c).backbone_lr(), 0.001);
  EXPECT_EQ(app::wire_model_spec(c).warmup_rounds(), 3u);
  EXPECT_EQ(app::wire_model_spec(c).unfreeze_every(), 2u);
  EXPECT_DOUBLE_EQ(app::wire_training_spec(c).validation_fraction(), 0.25);
  EXPECT_EQ(c.early_stopping_patience, 4);
  EXPECT_FALSE(c.keep_best);
  const struct {
    const char* toml;
    const char* key;
  } bad[] = {
      {"[train]\nbackbone_lr = 0\n", "train.backbone_lr"},
      {"[train]\nbackbone_lr = -1\n", "train.backbone_lr"},
      {"[train]\nbackbone_lr = 2000\n", "train.backbone_lr"},
      {"[backbone]\nwarmup_rounds = -1\n", "backbone.warmup_rounds"},
      {"[backbone]\nunfreeze_every = 2000000\n", "backbone.unfreeze_every"},
      {"[backbone]\nfreeze = \"all\"\nwarmup_rounds = 2\n", "backbone.warmup_rounds"},
      {"[data]\nvalidation_fraction = 1\n", "data.validation_fraction"},
      {"[data]\nvalidation_fraction = -0.1\n", "data.validation_fraction"},
      {"[job]\nearly_stopping_patience = -2\n", "job.early_stopping_patience"},
      {"[job]\nearly_stopping_patience = 3\n[data]\nvalidation_fraction = 0\n", "job.early_stopping_patience"},
      {"[job]\nkeep_best = 1\n", "job.keep_best"},
  };
  for (const auto& b : bad) {
    const std::string e = error_of(b.toml);
    EXPECT_NE(e.find(b.key), std::string::npos) << b.toml << " -> " << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }
}

TEST(Config, UnknownKeysAreNamed) {
  EXPECT_NE(error_of("[train]\nlearning_rate = 0.1\n").find("unknown key 'train.learning_rate'"), std::string::npos);
  EXPECT_NE(error_of("[trian]\nlr = 0.1\n").find("'trian'"), std::string::npos);
}

TEST(Config, ImpossibleValuesAreRefused) {
  EXPECT_NE(error_of("[train]\nlr = -0.1\n").find("train.lr"), std::string::npos);
  EXPECT_NE(error_of("[job]\nrounds = 0\n").find("job.rounds"), std::string::npos);
  EXPECT_NE(error_of("[train]\nlr = \"fast\"\n").find("must be a number"), std::string::npos);
  EXPECT_NE(error_of("[backbone]\nfreeze = \"some\"\n").find("backbone.freeze"), std::string::npos);
  EXPECT_NE(error_of("[data]\nsource_classes = [1]\ntarget_classes = [1, 2]\n").find("both"), std::string::npos);
  EXPECT_NE(error_of("[job\n").find("t.toml:1"), std::string::npos);
}

// Issue 18: every value that used to wrap or overflow after validation is refused, naming its
// key, before anything narrows it (the wire carries these as 32-bit integers).
TEST(Config, ValuesThatWouldWrapOrOverflowAreRefusedNamingTheKey) {
  const struct {
    const char* toml;
    const char* key;
  } cases[] = {
      {"[job]\nrounds = 4294967296\n", "job.rounds"},                        // 2^32: used to run 0 rounds
      {"[train]\nepochs = 4294967297\n", "train.epochs"},                    // 2^32+1: used to run 1 epoch
      {"[train]\nbatch_size = 4294967296\n", "train.batch_size"},            // used to hang
      {"[secure_aggregation]\nthreshold = 4294967298\n", "secure_aggregation.threshold"},  // used to become 2
      {"[job]\nthreads = 2147483648\n", "job.threads"},                      // used to be an internal error
      {"[job]\nround_timeout_s = 1e300\n", "job.round_timeout_s"},           // ms conversion overflowed
      {"[job]\nliveness_timeout_s = inf\n", "job.liveness_timeout_s"},
      {"[train]\nlr = inf\n", "train.lr"},
      {"[job]\nsites = 4294967299\n", "job.sites"},                          // an int: used to become 3
      {"[job]\nseed = -1\n", "job.seed"},                                    // a uint64
      {"[pretrain]\nepochs = 4294967296\n", "pretrain.epochs"},
      {"[pretrain]\nbatch_size = 4294967296\n", "pretrain.batch_size"},
      {"[head]\nhidden = 4294967297\n", "head.hidden"},
      {"[backbone]\nheight = 4294967324\n", "backbone.height"},
      {"[backbone]\nunfrozen = 4294967297\n", "backbone.unfrozen"},
      {"[baselines]\nepochs = 4294967296\n", "baselines.epochs"},
      {"[job]\nmin_sites = 4294967297\n", "job.min_sites"},
      {"[job]\nmax_samples_per_site = 9223372036854775807\n", "job.max_samples_per_site"},
      {"[federation]\njoin_timeout_s = 1e300\n", "federation.join_timeout_s"},
      {"[federation]\nhandshake_timeout_s = 3e6\n", "federation.handshake_timeout_s"},  // > 30 days
      {"[federation]\nmax_frame_mb = 4096\n", "federation.max_frame_mb"},   // << 20 overflows uint32
      {"[secure_aggregation]\ncomplete_graph_max = 4294967298\n", "secure_aggregation.complete_graph_max"},
      {"[secure_aggregation]\nsparse_degree = 4294967296\n", "secure_aggregation.sparse_degree"},
      {"[secure_aggregation]\nweight_bound = 1e300\n", "secure_aggregation.weight_bound"},
      {"[data]\ntarget_classes = [1, 4294967299]\n", "data.target_classes"},
      {"[partition]\nsamples_per_site = 9223372036854775807\n", "partition.samples_per_site"},
  };
  for (const auto& c : cases) {
    const std::string err = error_of(c.toml);
    EXPECT_NE(err.find(c.key), std::string::npos) << c.toml << " -> \"" << err << "\"";
    EXPECT_EQ(err.find('\n'), std::string::npos) << err;  // one line
  }
  // The bounds themselves are accepted.
  auto ok = parse_job_config("[job]\nrounds = 1000000\nthreads = 1024\nround_timeout_s = 2592000\n"
                             "[train]\nepochs = 100000\nbatch_size = 1048576\n");
  EXPECT_EQ(ok.rounds, 1000000);
  EXPECT_EQ(ok.train.batch_size, 1048576);
  EXPECT_NE(error_of("[job]\nrounds = 1000001\n").find("job.rounds must be between 1 and 1000000"), std::string::npos);
  EXPECT_NE(error_of("[job]\nround_timeout_s = 2592001\n").find("job.round_timeout_s"), std::string::npos);
}

TEST(Config, NonFiniteRealsAreRefusedNamingTheKey) {
  for (const char* key : {"job.round_timeout_s", "job.liveness_timeout_s", "train.lr", "train.momentum",
                          "train.weight_decay", "pretrain.lr", "partition.alpha", "partition.quantity_sigma",
                          "server.lr", "server.beta1", "server.beta2", "server.tau", "server.mu",
                          "server.max_update_norm", "federation.join_timeout_s", "federation.handshake_timeout_s",
                          "secure_aggregation.clip", "secure_aggregation.weight_bound", "privacy.noise_multiplier",
                          "privacy.clip_norm", "privacy.delta", "privacy.target_epsilon", "privacy.sampling_rate",
                          "privacy.target_quantile", "privacy.clip_learning_rate"}) {
    const std::string k(key);
    const auto dot = k.find('.');
    for (const char* v : {"inf", "-inf", "nan"}) {
      const std::string toml = "[" + k.substr(0, dot) + "]\n" + k.substr(dot + 1) + " = " + v + "\n";
      const std::string err = error_of(toml);
      EXPECT_NE(err.find(k), std::string::npos) << toml << " -> \"" << err << "\"";
      EXPECT_NE(err.find("finite"), std::string::npos) << err;
    }
  }
  EXPECT_NE(error_of("[backbone]\nmean = [inf]\n").find("backbone.mean"), std::string::npos);
  EXPECT_NE(error_of("[backbone]\nstd = [nan]\n").find("backbone.std"), std::string::npos);
}

// Values set after parsing (command-line overrides, code) are checked the same way, and the
// narrowing into the wire's uint32 is checked in that type.
TEST(Config, OverridesAndTheWireAreCheckedBeforeNarrowing) {
  auto cfg = parse_job_config("[job]\nsites = 3\n");
  app::SimulateOverrides o;
  o.rounds = int64_t{1} << 32;
  try {
    app::apply_overrides(cfg, o);
    ADD_FAILURE() << "--rounds 2^32 accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--rounds"), std::string::npos) << e.what();
  }
  o = {};
  o.sites = (int64_t{1} << 32) + 3;
  EXPECT_THROW(app::apply_overrides(cfg, o), ConfigError);

  // A threshold above the number of sites is refused before it narrows (2^32+2 never becomes 2).
  cfg.secagg.enabled = true;
  cfg.secagg.threshold = (int64_t{1} << 32) + 2;
  try {
    app::make_job_spec(cfg, std::string(64, '0'), 1, {}, 3);
    ADD_FAILURE() << "threshold 2^32+2 accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("secure_aggregation.threshold"), std::string::npos) << e.what();
  }
  cfg.secagg.threshold = 4;  // in range for the file, but above this federation's 3 sites
  EXPECT_THROW(app::make_job_spec(cfg, std::string(64, '0'), 1, {}, 3), ConfigError);
  cfg.secagg.threshold = 0;
  cfg.rounds = int64_t{1} << 32;  // set in code after validation
  try {
    app::make_job_spec(cfg, std::string(64, '0'), 1, {}, 3);
    ADD_FAILURE() << "rounds 2^32 narrowed into the JobSpec";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("job.rounds"), std::string::npos) << e.what();
  }
}

// Issue "scale": job.sites_per_round is a count (an integer) or a fraction (a float); it
// resolves against the federation's size, and with DP the accountant's sampling rate and the
// expected sites follow it. Setting it beside privacy.sampling_rate, or below min_sites'
// reach, is refused.
TEST(Config, SitesPerRoundIsACountOrAFractionAndDrivesTheDpSamplingRate) {
  auto count = app::parse_job_config("[job]\nsites = 40\nsites_per_round = 10\n", "j.toml");
  EXPECT_EQ(app::sites_per_round_count(count, 40), 10u);
  EXPECT_EQ(app::sites_per_round_count(count, 4), 4u);  // more than there are: all of them
  auto frac = app::parse_job_config("[job]\nsites = 40\nsites_per_round = 0.25\n", "j.toml");
  EXPECT_EQ(app::sites_per_round_count(frac, 40), 10u);
  EXPECT_EQ(app::sites_per_round_count(frac, 2), 1u);  // at least one
  auto all = app::parse_job_config("[job]\nsites = 40\n", "j.toml");
  EXPECT_EQ(app::sites_per_round_count(all, 40), 0u);
  auto whole = app::parse_job_config("[job]\nsites = 40\nsites_per_round = 1.0\n", "j.toml");
  EXPECT_EQ(app::sites_per_round_count(whole, 40), 0u);  // the fraction 1: every site
  for (const char* bad : {"sites_per_round = 0", "sites_per_round = -3", "sites_per_round = 1.5",
                          "sites_per_round = 0.0", "sites_per_round = \"half\""}) {
    EXPECT_THROW(app::parse_job_config(std::string("[job]\nsites = 40\n") + bad + "\n", "j.toml"), ConfigError) << bad;
  }
  EXPECT_THROW(app::parse_job_config("[job]\nsites = 40\nsites_per_round = 10\n[privacy]\nmode = \"central\"\n"
                                     "noise_multiplier = 1.0\nsampling_rate = 0.5\n",
                                     "j.toml"),
               ConfigError);
  auto dp = app::parse_job_config(
      "[job]\nsites = 40\nsites_per_round = 10\n[privacy]\nmode = \"central\"\nnoise_multiplier = 1.0\n", "j.toml");
  const v1::JobSpec spec = app::make_job_spec(dp, std::string(64, '0'), 1, {}, 40);
  EXPECT_DOUBLE_EQ(spec.privacy().sampling_rate(), 0.25);
  EXPECT_EQ(spec.privacy().expected_sites(), 10u);
}

TEST(Config, SecondsToMillisecondsSaturatesInsteadOfOverflowing) {
  using std::chrono::milliseconds;
  EXPECT_EQ(app::seconds_to_ms(1.5), milliseconds(1500));
  EXPECT_EQ(app::seconds_to_ms(0), milliseconds(0));
  EXPECT_EQ(app::seconds_to_ms(-5), milliseconds(0));
  EXPECT_EQ(app::seconds_to_ms(std::nan("")), milliseconds(0));
  const auto cap = app::seconds_to_ms(app::kMaxMillisSeconds);
  EXPECT_EQ(app::seconds_to_ms(1e300), cap);
  EXPECT_EQ(app::seconds_to_ms(HUGE_VAL), cap);
  EXPECT_GT(cap, app::seconds_to_ms(2 * app::kMaxSeconds));  // sums of two bounded keys stay exact
  // steady_clock::now() + the cap does not overflow.
  const auto now = std::chrono::steady_clock::now();
  EXPECT_GT(now + cap, now);
}

TEST(Config, TheExampleJobIsWithinEveryRange) {
  app::JobConfig c;
  ASSERT_NO_THROW(c = app::load_job_config(std::string(FEDTL_SOURCE_DIR) + "/examples/hospitals/job.toml"));
  // Its paths are relative to the file: the demo writes runs/demo at the repository's root.
  EXPECT_EQ(c.out, (std::filesystem::path(FEDTL_SOURCE_DIR) / "runs/demo").lexically_normal().string());
}

// Paths a job file writes are relative to the file's folder, wherever fedtl runs from;
// absolute ones stay; defaults and command-line overrides are the working directory's.
TEST(Config, PathsInAJobFileAreRelativeToTheFile) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("fedtl_paths_" + std::to_string(::getpid()));
  fs::create_directories(dir / "jobs");
  const fs::path job = dir / "jobs" / "job.toml";
  std::ofstream(job) << "[job]\nout = \"../runs/x\"\n[data]\nsource = \"folder\"\ndir = \"images\"\n"
                        "test_dir = \"/abs/test\"\ntest_labels = \"t.csv\"\nlabels = \"l.csv\"\n"
                        "[backbone]\npath = \"bb/backbone.pt\"\n[federation]\nca_cert = \"kit/ca.crt\"\n"
                        "cert = \"kit/c.crt\"\nkey = \"kit/c.key\"\n";
  const auto c = app::load_job_config(job.string());
  const std::string base = (dir / "jobs").string();
  EXPECT_EQ(c.out, (dir / "runs" / "x").string());
  EXPECT_EQ(c.data.dir, base + "/images");
  EXPECT_EQ(c.data.test_dir, "/abs/test");
  EXPECT_EQ(c.data.test_labels, base + "/t.csv");
  EXPECT_EQ(c.data.images.labels, base + "/l.csv");
  EXPECT_EQ(c.backbone.path, base + "/bb/backbone.pt");
  EXPECT_EQ(c.federation.ca_cert, base + "/kit/ca.crt");
  EXPECT_EQ(c.federation.cert, base + "/kit/c.crt");
  EXPECT_EQ(c.federation.key, base + "/kit/c.key");

  // Keys the file does not set keep their defaults, relative to the working directory.
  std::ofstream(job) << "[job]\nrounds = 2\n";
  const auto d = app::load_job_config(job.string());
  EXPECT_EQ(d.out, app::JobConfig{}.out);
  EXPECT_EQ(d.backbone.path, app::JobConfig{}.backbone.path);
  // A command-line --out is the working directory's.
  app::SimulateOverrides o;
  o.out = "runs/cli";
  EXPECT_EQ(app::apply_overrides(d, o).out, "runs/cli");
  fs::remove_all(dir);
}

// A job that applied no round produced no model: the command says so in one line and exits 1.
TEST(Config, AJobThatAppliedNoRoundExitsNonZero) {
  app::SimulateResult r;
  r.out_dir = "runs/x";
  r.model_sha256 = "abc";
  std::ostringstream out, err;
  EXPECT_EQ(app::finish_job(r, 5, out, err), 1);
  EXPECT_EQ(out.str(), "");  // nothing passes for a result
  const std::string line = err.str();
  EXPECT_NE(line.find("fedtl: error: the job applied no round"), std::string::npos) << line;
  EXPECT_NE(line.find("5 rounds was abandoned"), std::string::npos) << line;
  EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << line;
  r.rounds_applied = 1;
  std::ostringstream out2, err2;
  EXPECT_EQ(app::finish_job(r, 5, out2, err2), 0);
  EXPECT_NE(out2.str().find("model_sha256 abc"), std::string::npos);
  EXPECT_EQ(err2.str(), "");
  r.rounds_applied = 0;
  r.interrupted = true;  // stopped by a signal before round 1: resumable, not a failure
  EXPECT_EQ(app::no_round_applied(r, 5), "");
}

// Writes the seed corpora for the fuzz targets (scripts/fuzz runs it; nothing is committed):
//
//   make_seeds OUT_DIR JOB_TOML
//
// OUT_DIR/<target>/ gets a handful of valid inputs in each target's input layout (see the
// comment at the top of each fuzz_*.cc): frames of every message type with realistic
// contents, secure aggregation tampering scripts, small IDX files, a PNG and a JPEG, and the
// job in JOB_TOML (examples/hospitals/job.toml) plus a site.toml.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#if __has_include("common/checkpoint.h")
#include "common/checkpoint.h"
#define FEDTL_FUZZ_CHECKPOINT 1
#endif
#include "protocols/messages.h"
#include "protocols/secagg/wire.h"

namespace fs = std::filesystem;
using namespace fedtl;
using namespace fedtl::protocols;

namespace {

fs::path g_out;
int g_count = 0;

void seed(const std::string& target, const std::string& name, const std::string& bytes) {
  const fs::path dir = g_out / target;
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << bytes;
  ++g_count;
}

std::string u16le(uint16_t v) { return std::string{static_cast<char>(v & 0xff), static_cast<char>(v >> 8)}; }

void tensor(v1::Tensor* t, size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = 0.25f * static_cast<float>(i) - 1.0f;
  pack_tensor(v, t);
}

std::vector<Frame> all_frames() {
  std::vector<Frame> out;
  v1::Hello hello;
  hello.set_site_name("hospital-a");
  hello.set_protocol_version(common::kProtocolVersion);
  hello.add_backbone_sha256(std::string(64, 'a'));
  out.push_back(to_frame(hello));

  v1::JobSpec job;
  job.set_job_name("hospitals");
  job.set_seed(42);
  job.set_rounds(30);
  job.set_backbone_sha256(std::string(64, 'b'));
  job.set_backbone_bytes(123456);
  job.add_target_classes(1);
  job.add_target_classes(3);
  job.set_site_index(2);
  job.set_min_sites(2);
  job.set_secure_aggregation(true);
  job.mutable_secagg()->set_num_sites(3);
  job.mutable_secagg()->set_threshold(2);
  job.mutable_secagg()->set_weight_bound(1000);
  job.mutable_secagg()->set_clip(0.5);
  auto* layout = job.mutable_layout();
  auto* e = layout->add_entries();
  e->set_name("head.weight");
  e->add_shape(5);
  e->add_shape(4);
  out.push_back(to_frame(job));

  v1::BackboneChunk chunk;
  chunk.set_offset(0);
  chunk.set_data(std::string(100, '\x42'));
  out.push_back(to_frame(chunk));

  v1::Ready ready;
  ready.set_num_samples(150);
  out.push_back(to_frame(ready));

  v1::RoundStart rs;
  rs.set_round(3);
  tensor(rs.mutable_params(), 7);
  rs.set_deadline_seconds(600);
  out.push_back(to_frame(rs));

  v1::Update up;
  up.set_round(3);
  up.set_num_samples(150);
  tensor(up.mutable_delta(), 7);
  up.set_train_loss(0.5);
  up.set_train_accuracy(0.8);
  out.push_back(to_frame(up));

  v1::Shutdown sd;
  sd.set_reason("job finished");
  out.push_back(to_frame(sd));
  out.push_back(error_frame(ErrorCode::kPolicyRefused, "site policy refuses the job"));
  out.push_back(to_frame(v1::Heartbeat{}));
  v1::SiteEvaluation ev;
  ev.set_round(3);
  ev.mutable_global()->set_images(4);
  ev.mutable_global()->set_accuracy(0.75);
  ev.mutable_global()->add_per_class()->set_support(4);
  out.push_back(to_frame(ev));

  v1::SecAggKeys keys;
  keys.set_round(1);
  keys.set_site(1);
  keys.set_cipher_pk(std::string(32, '\x11'));
  keys.set_mask_pk(std::string(32, '\x22'));
  out.push_back(to_frame(keys));
  v1::SecAggKeyList kl;
  kl.set_round(1);
  for (uint32_t u = 0; u < 3; ++u) {
    auto* k = kl.add_keys();
    *k = keys;
    k->set_site(u);
  }
  out.push_back(to_frame(kl));
  v1::SecAggShares sh;
  sh.set_round(1);
  sh.set_site(0);
  for (uint32_t v = 1; v < 3; ++v) {
    auto* s = sh.add_shares();
    s->set_from(0);
    s->set_to(v);
    s->set_nonce(std::string(12, '\x01'));
    s->set_ciphertext(std::string(80, '\x33'));
  }
  out.push_back(to_frame(sh));
  v1::SecAggShareList sl;
  sl.set_round(1);
  *sl.add_shares() = sh.shares(0);
  out.push_back(to_frame(sl));
  v1::SecAggMasked mk;
  mk.set_round(1);
  mk.set_site(2);
  mk.set_u32_le(std::string(16, '\x07'));
  mk.set_count(4);
  out.push_back(to_frame(mk));
  v1::SecAggUnmaskRequest ur;
  ur.set_round(1);
  ur.add_survivors(0);
  ur.add_survivors(1);
  ur.add_dropped(2);
  out.push_back(to_frame(ur));
  v1::SecAggUnmaskShares us;
  us.set_round(1);
  us.set_site(0);
  auto* r = us.add_shares();
  r->set_owner(1);
  r->set_kind(v1::SECAGG_SHARE_SELF_MASK_SEED);
  r->set_share(std::string(40, '\x05'));
  out.push_back(to_frame(us));
  v1::SecAggAbort ab;
  ab.set_round(1);
  ab.set_reason("too few sites");
  out.push_back(to_frame(ab));
  return out;
}

std::string idx(uint32_t magic, std::vector<uint32_t> dims, const std::string& body) {
  std::string s;
  auto be = [&](uint32_t v) {
    for (int sh = 24; sh >= 0; sh -= 8) s.push_back(static_cast<char>((v >> sh) & 0xff));
  };
  be(magic);
  for (uint32_t d : dims) be(d);
  return s + body;
}

void write_cb(void* ctx, void* data, int n) { static_cast<std::string*>(ctx)->append(static_cast<char*>(data), n); }

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::cerr << "make_seeds: cannot read " << path << "\n";
    std::exit(1);
  }
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: make_seeds OUT_DIR JOB_TOML\n";
    return 2;
  }
  g_out = argv[1];
  const auto frames = all_frames();

  // frame_decoder: [split seed][max selector = default][stream]
  std::string all;
  for (const auto& f : frames) {
    const std::string enc = encode_frame(f);
    seed("frame_decoder", std::string("frame_") + message_type_name(f.type), std::string("\x07\xff", 2) + enc);
    all += enc;
  }
  seed("frame_decoder", "all_frames", std::string("\x2b\xff", 2) + all);
  seed("frame_decoder", "small_limit", std::string("\x05\x08", 2) + all.substr(0, 200));

  // messages: [type selector (index into the target's table)][decode-as = own type][payload]
  const uint16_t kTypes[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25};
  for (const auto& f : frames) {
    uint8_t sel = 0;
    for (uint8_t i = 0; i < sizeof(kTypes) / sizeof(kTypes[0]); ++i)
      if (kTypes[i] == static_cast<uint16_t>(f.type)) sel = i;
    seed("messages", std::string("msg_") + message_type_name(f.type), std::string{static_cast<char>(sel), 0} + f.payload);
  }

  // secagg: an honest round, a dropout at each step, tampering at each delivery point.
  seed("secagg", "honest_round", "");
  for (uint8_t point = 0; point < 21; ++point) {
    seed("secagg", "drop_" + std::to_string(point), std::string{static_cast<char>(point), 2} + u16le(0));
    seed("secagg", "xor_" + std::to_string(point),
         std::string{static_cast<char>(point), 1} + u16le(3) + std::string{static_cast<char>(point * 7), 1, 0x40});
    seed("secagg", "replay_" + std::to_string(point), std::string{static_cast<char>(point), 3} + u16le(0));
  }

  // idx: [flags][images length][images][labels]; 2 images of 3x4, raw and gzip.
  const std::string images = idx(0x803, {2, 3, 4}, std::string(24, '\x80'));
  const std::string labels = idx(0x801, {2}, std::string("\x01\x07", 2));
  for (uint8_t flags = 0; flags < 4; ++flags)
    seed("idx", "two_images_gz" + std::to_string(flags),
         std::string{static_cast<char>(flags)} + u16le(static_cast<uint16_t>(images.size())) + images + labels);

  // image_folder: [channels/extension][height-1][width-1][file]: PNG grey, PNG RGBA, JPEG RGB.
  std::vector<unsigned char> px(6 * 5 * 4);
  for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<unsigned char>(i * 37);
  std::string png1, png4, jpg3;
  stbi_write_png_to_func(write_cb, &png1, 6, 5, 1, px.data(), 6);
  stbi_write_png_to_func(write_cb, &png4, 6, 5, 4, px.data(), 6 * 4);
  stbi_write_jpg_to_func(write_cb, &jpg3, 6, 5, 3, px.data(), 90);
  seed("image_folder", "png_grey_same_size", std::string("\x00\x04\x05", 3) + png1);
  seed("image_folder", "png_rgba_resize", std::string("\x01\x1b\x1b", 3) + png4);
  seed("image_folder", "jpeg_rgb_to_grey", std::string("\x02\x09\x02", 3) + jpg3);

  // config: [0 = job][TOML] and [1 = site][TOML]
  seed("config", "job_hospitals", std::string(1, '\0') + read_text(argv[2]));
  seed("config", "job_minimal", std::string(1, '\0') + "[job]\nrounds = 2\nsites = 3\n[server]\nstrategy = \"fedavg\"\n");
  seed("config", "site", std::string(1, '\1') +
                             "[site]\nname = \"hospital-a\"\ncoordinator = \"127.0.0.1:7443\"\n"
                             "ca_cert = \"kit/ca.crt\"\ncert = \"kit/a.crt\"\nkey = \"kit/a.key\"\n"
                             "[data]\nsource = \"folder\"\ndir = \"images\"\n"
                             "[policy]\nmin_sites = 2\nmax_rounds = 100\nbackbone_sha256 = [\"ab\"]\n");
#ifdef FEDTL_FUZZ_CHECKPOINT
  // checkpoint: [mode][bytes]: a whole file (mode 0), its payload (mode 1), fallback (mode 3).
  {
    common::Checkpoint c;
    c.job_fingerprint = std::string(64, 'f');
    c.round = 3;
    c.params = {0.5f, -1.25f, 3.0f};
    c.strategy_state = {{0.1f, 0.2f, 0.3f}, {0.01f, 0.02f, 0.03f}};
    c.accountant_state = "{\"steps\":3}";
    c.clip_norm = 1.5;
    c.metrics_lines = {"{\"round\":1}", "{\"round\":2}", "{\"round\":3}"};
    const fs::path tmp = g_out / "checkpoint.tmp";
    fs::remove(tmp);
    common::write_checkpoint(tmp.string(), c);
    const std::string file = read_text(tmp.string());
    fs::remove(tmp);
    const std::string payload = file.substr(20, file.size() - 20 - 32);
    seed("checkpoint", "file", std::string(1, '\0') + file);
    seed("checkpoint", "payload", std::string(1, '\1') + payload);
    seed("checkpoint", "fallback_to_prev", std::string(1, '\3') + payload);
  }
#endif
  std::cout << "make_seeds: " << g_count << " seeds in " << g_out.string() << "\n";
  return 0;
}

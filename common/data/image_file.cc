#include "common/data/image_file.h"

#include <jpeglib.h>
#include <png.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "common/errors.h"

namespace fedtl::common {
namespace {

// Bilinear resize of one planar channel, half-pixel centres (as OpenCV/PIL), edges clamped.
void resize_channel(const uint8_t* src, int64_t sh, int64_t sw, uint8_t* dst, int64_t dh, int64_t dw) {
  auto axis = [](int64_t d, int64_t s_size, int64_t d_size, int64_t& lo, int64_t& hi, double& frac) {
    double s = (static_cast<double>(d) + 0.5) * static_cast<double>(s_size) / static_cast<double>(d_size) - 0.5;
    s = std::clamp(s, 0.0, static_cast<double>(s_size - 1));
    lo = static_cast<int64_t>(std::floor(s));
    hi = std::min(lo + 1, s_size - 1);
    frac = s - static_cast<double>(lo);
  };
  for (int64_t y = 0; y < dh; ++y) {
    int64_t y0, y1;
    double fy;
    axis(y, sh, dh, y0, y1, fy);
    for (int64_t x = 0; x < dw; ++x) {
      int64_t x0, x1;
      double fx;
      axis(x, sw, dw, x0, x1, fx);
      const double top = src[y0 * sw + x0] * (1 - fx) + src[y0 * sw + x1] * fx;
      const double bot = src[y1 * sw + x0] * (1 - fx) + src[y1 * sw + x1] * fx;
      dst[y * dw + x] = static_cast<uint8_t>(std::clamp(std::lround(top * (1 - fy) + bot * fy), 0L, 255L));
    }
  }
}

// Interleaved 8-bit pixels as decoded.
struct Decoded {
  int64_t w = 0, h = 0;
  int comp = 0;
  std::vector<uint8_t> hwc;
};

// libpng's simplified API: begin_read parses the header only; the size is checked, and only
// then is the output buffer allocated and the image decoded (finish_read).
Decoded decode_png(const std::string& path, int64_t max_pixels) {
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  struct Guard {
    png_image* p;
    ~Guard() { png_image_free(p); }
  } guard{&img};
  if (!png_image_begin_read_from_file(&img, path.c_str()))
    throw DataError(path + ": not a readable PNG (" + std::string(img.message) + ")");
  check_image_pixels(path, img.width, img.height, max_pixels);
  const bool colour = (img.format & PNG_FORMAT_FLAG_COLOR) != 0;
  const bool alpha = (img.format & PNG_FORMAT_FLAG_ALPHA) != 0;
  // Alpha is read (not composited onto a background) and dropped later: colours stay as stored.
  img.format = colour ? (alpha ? PNG_FORMAT_RGBA : PNG_FORMAT_RGB) : (alpha ? PNG_FORMAT_GA : PNG_FORMAT_GRAY);
  Decoded d;
  d.w = img.width;
  d.h = img.height;
  d.comp = static_cast<int>(PNG_IMAGE_SAMPLE_CHANNELS(img.format));
  d.hwc.resize(PNG_IMAGE_SIZE(img));
  if (!png_image_finish_read(&img, nullptr, d.hwc.data(), 0, nullptr))
    throw DataError(path + ": cannot decode PNG (" + std::string(img.message) + ")");
  return d;
}

// libjpeg reports errors by calling error_exit, which must not return: it longjmps back.
struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}
void jpeg_no_warnings(j_common_ptr, int) {}

bool pixels_ok(uint64_t w, uint64_t h, int64_t max_pixels) {
  const auto m = static_cast<uint64_t>(max_pixels);
  return w > 0 && h > 0 && w <= m && h <= m && w * h <= m;
}

// Between setjmp and any longjmp only trivially destructible locals are created (the output
// vector is sized before and written through a raw pointer), so the jump skips no destructor.
// The header is read and its size checked before decompression allocates anything.
Decoded decode_jpeg(const std::string& path, int64_t max_pixels) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw DataError(path + ": cannot open (missing or unreadable)");
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_error_exit;
  err.mgr.emit_message = jpeg_no_warnings;
  err.message[0] = '\0';
  Decoded d;
  bool failed = false, cmyk = false;
  uint64_t w = 0, h = 0;
  if (setjmp(err.jump)) {
    failed = true;
  } else {
    jpeg_create_decompress(&cinfo);
    // Progressive JPEGs hold every coefficient in memory: bound what libjpeg may allocate.
    cinfo.mem->max_memory_to_use = 16L * static_cast<long>(std::min<int64_t>(max_pixels, int64_t{1} << 30));
    jpeg_stdio_src(&cinfo, f);
    jpeg_read_header(&cinfo, TRUE);
    w = cinfo.image_width;
    h = cinfo.image_height;
    cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    if (pixels_ok(w, h, max_pixels) && !cmyk) {
      cinfo.out_color_space = cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
      jpeg_calc_output_dimensions(&cinfo);
      d.w = cinfo.output_width;
      d.h = cinfo.output_height;
      d.comp = cinfo.output_components;
      d.hwc.resize(static_cast<size_t>(d.w * d.h * d.comp));
      uint8_t* out = d.hwc.data();
      const size_t stride = static_cast<size_t>(d.w * d.comp);
      jpeg_start_decompress(&cinfo);
      while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = out + static_cast<size_t>(cinfo.output_scanline) * stride;
        jpeg_read_scanlines(&cinfo, &row, 1);
      }
      jpeg_finish_decompress(&cinfo);
    }
  }
  jpeg_destroy_decompress(&cinfo);
  std::fclose(f);
  if (failed) throw DataError(path + ": cannot decode JPEG (" + std::string(err.message) + ")");
  if (cmyk) throw DataError(path + ": CMYK/YCCK JPEG is not supported (convert it to RGB or grey)");
  check_image_pixels(path, w, h, max_pixels);  // throws when the size was refused
  return d;
}

}  // namespace

ImageKind sniff_image(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char b[8] = {};
  in.read(reinterpret_cast<char*>(b), 8);
  const auto n = in.gcount();
  static const unsigned char kPng[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  if (n == 8 && std::equal(b, b + 8, kPng)) return ImageKind::kPng;
  if (n >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff) return ImageKind::kJpeg;
  return ImageKind::kOther;
}

void check_image_pixels(const std::string& path, uint64_t w, uint64_t h, int64_t max_pixels) {
  if (w == 0 || h == 0) throw DataError(path + ": image header says " + std::to_string(w) + "x" + std::to_string(h));
  if (!pixels_ok(w, h, max_pixels))
    throw DataError(path + ": image header claims " + std::to_string(w) + "x" + std::to_string(h) +
                    " pixels, more than data.max_image_pixels (" + std::to_string(max_pixels) +
                    "); refused before decoding");
}

std::vector<uint8_t> to_planar(const uint8_t* src, int64_t h, int64_t w, int in_c, int64_t out_c) {
  const int64_t hw = h * w;
  std::vector<uint8_t> out(static_cast<size_t>(out_c * hw));
  const bool colour = in_c >= 3;
  for (int64_t i = 0; i < hw; ++i) {
    const uint8_t* px = src + i * in_c;
    if (out_c == 1) {
      out[static_cast<size_t>(i)] =
          colour ? static_cast<uint8_t>(std::lround(0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2])) : px[0];
    } else {
      for (int64_t c = 0; c < 3; ++c) out[static_cast<size_t>(c * hw + i)] = colour ? px[c] : px[0];
    }
  }
  return out;
}

std::vector<uint8_t> resize_planar(std::vector<uint8_t> planar, int64_t channels, int64_t sh, int64_t sw, int64_t dh,
                                   int64_t dw) {
  if (sh == dh && sw == dw) return planar;
  std::vector<uint8_t> out(static_cast<size_t>(channels * dh * dw));
  for (int64_t c = 0; c < channels; ++c)
    resize_channel(planar.data() + c * sh * sw, sh, sw, out.data() + c * dh * dw, dh, dw);
  return out;
}

std::vector<uint8_t> load_image_file(const std::string& path, int64_t channels, int64_t height, int64_t width,
                                     int64_t max_pixels, StoredShape* stored) {
  const ImageKind kind = sniff_image(path);
  if (kind == ImageKind::kOther) {
    std::ifstream probe(path, std::ios::binary);
    if (!probe) throw DataError(path + ": cannot open (missing or unreadable)");
    throw DataError(path + ": not a PNG or JPEG file (by its content)");
  }
  const Decoded d = kind == ImageKind::kPng ? decode_png(path, max_pixels) : decode_jpeg(path, max_pixels);
  if (d.comp < 1 || d.comp > 4) throw DataError(path + ": unsupported channel count " + std::to_string(d.comp));
  if (stored != nullptr)
    *stored = {static_cast<uint8_t>(d.comp), static_cast<uint32_t>(d.h), static_cast<uint32_t>(d.w)};
  return resize_planar(to_planar(d.hwc.data(), d.h, d.w, d.comp, channels), channels, d.h, d.w, height, width);
}

}  // namespace fedtl::common

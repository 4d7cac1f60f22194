// Decoding one image file (PNG through libpng, JPEG through libjpeg-turbo) into fedtl's
// planar 8-bit layout, and the pixel conversions every reader shares. Every function throws
// fedtl::DataError with a one-line message naming the file. Thread-safe (no shared state).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "common/data/image_set.h"

namespace fedtl::common {

// data.max_image_pixels' default: 64 Mpixel. A header that claims more is refused before any
// buffer for the image is allocated (a 100-byte PNG can claim 2^31 x 2^31 pixels).
inline constexpr int64_t kDefaultMaxImagePixels = int64_t{64} << 20;

enum class ImageKind { kPng, kJpeg, kOther };
// By content, not by name: PNG's 8-byte signature, JPEG's SOI marker. kOther for anything
// else (TIFF, text, a missing file).
ImageKind sniff_image(const std::string& path);

// Throws DataError when width x height is empty or above max_pixels (the message names
// `path` and data.max_image_pixels).
void check_image_pixels(const std::string& path, uint64_t width, uint64_t height, int64_t max_pixels);

// Decodes a PNG or JPEG file (grey, grey+alpha, RGB, RGBA, palette; 8 or 16 bits per sample;
// alpha dropped) and returns it as planar `channels` (1 or 3) x height x width, converted
// (RGB -> grey with 0.299/0.587/0.114, grey -> RGB replicated) and bilinearly resized when
// its size differs. The header is checked against max_pixels before decoding.
// `stored` (optional) receives the file's own components and size.
std::vector<uint8_t> load_image_file(const std::string& path, int64_t channels, int64_t height, int64_t width,
                                     int64_t max_pixels = kDefaultMaxImagePixels, StoredShape* stored = nullptr);

// Interleaved h x w x in_c (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA) -> planar out_c (1 or 3).
std::vector<uint8_t> to_planar(const uint8_t* hwc, int64_t h, int64_t w, int in_c, int64_t out_c);
// Bilinear resize (half-pixel centres, edges clamped) of planar channels x sh x sw to
// channels x dh x dw; returns `planar` unchanged when the sizes are equal.
std::vector<uint8_t> resize_planar(std::vector<uint8_t> planar, int64_t channels, int64_t sh, int64_t sw, int64_t dh,
                                   int64_t dw);

}  // namespace fedtl::common

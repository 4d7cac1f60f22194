// stb_image's implementation, compiled into the fuzzers with their instrumentation (instead of
// Debian's prebuilt libstb), so that coverage guidance and ASan reach into the decoder that
// common/datasets.cc calls. Same header, same version as the library fedtl links normally.
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>

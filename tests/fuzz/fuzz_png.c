// The PNG decoder (runtime/image.c, libpng): every colour type and bit
// depth, palettes, interlacing; truncated files and oversized headers are
// refused before decoding. Inputs are PNG files (the 8-byte signature); what
// is not is skipped. See fuzz_image.h.
#include "fuzz_image.h"

void fuzz_one(const char *data, size_t size) {
  if (size >= 8 && !memcmp(data, "\x89PNG\r\n\x1a\n", 8))
    fuzz_image(data, size);
}

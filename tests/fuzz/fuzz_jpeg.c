// The JPEG decoder (runtime/image.c, libjpeg): baseline, progressive, grey,
// CMYK; truncated files, too many scans and oversized headers are refused.
// Inputs are JPEG files (FF D8 FF); what is not is skipped. See fuzz_image.h.
#include "fuzz_image.h"

void fuzz_one(const char *data, size_t size) {
  if (size >= 3 && !memcmp(data, "\xff\xd8\xff", 3))
    fuzz_image(data, size);
}

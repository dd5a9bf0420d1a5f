// What fuzz_jpeg.c and fuzz_png.c share: an input of the harness's format is
// decoded by xc_image_load (runtime/image.c) as a photo of a data folder is,
// then converted to a model input of the other channel count (resizing costs
// most of an input's time: once is enough). A refused file is a normal end
// (false and a message, never xc_die); a decoded one must be within the
// pixel limit, and the limit must be exact: the same file is refused with a
// limit of just under half its pixels.
#ifndef XENTCC_FUZZ_IMAGE_H
#define XENTCC_FUZZ_IMAGE_H

#include "fuzz.h"
#include "rt.h"

#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                                                   \
  do {                                                                                             \
    if (!(c)) {                                                                                    \
      fprintf(stderr, "fuzz image: %s:%d: %s\n", __FILE__, __LINE__, #c);                         \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

static FuzzFile image_file;

// The pixel limit of these runs: with PIL's, a JPEG of 535 bytes ending in
// an early EOI decodes to 64065x245 black pixels (PIL reads it too), and
// such inputs took the fuzzer's time (60 inputs a second instead of
// 6,000). The bound is the same code at any limit, and the check below
// tests it at each image's own size.
enum { MAX_PIXELS = 1 << 16 };

void fuzz_init(void) {
  fuzz_binary_input();
  fuzz_leaks_are_bugs();
  xc_set_die_hook(fuzz_user_error);
  image_file = fuzz_file("image");
}

static void fuzz_image(const char *data, size_t size) {
  fuzz_errors_are_bugs(); // the decoder reports, it never exits
  fuzz_file_write(image_file, data, size);
  Image img;
  char *err;
  if (!xc_image_load_max(image_file.path, MAX_PIXELS, &img, &err)) {
    CHECK(err && *err);
    free(err);
    return;
  }
  CHECK(!err && (img.c == 1 || img.c == 3) && img.w > 0 && img.h > 0 && img.px);
  int64_t pixels = (int64_t)img.w * img.h;
  CHECK(pixels <= 2 * MAX_PIXELS);
  if (pixels >= 3) {
    Image again;
    CHECK(!xc_image_load_max(image_file.path, (pixels - 1) / 2, &again, &err));
    CHECK(strstr(err, "over twice the limit"));
    free(err);
  }
  static uint8_t chw[3 * 9 * 13];
  xc_image_to_chw(&img, img.c == 1 ? 3 : 1, 9, 13, chw);
  free(img.px);
}

#endif

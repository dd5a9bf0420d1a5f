// The IDX reader (runtime/data.c: MNIST, Fashion-MNIST; plain or gzip): the
// input's first byte picks a model input from the table below, the second
// is the length L of the labels file, the next L bytes are that file and
// the rest the images file, loaded as `NAME-train --data
// train-images-idx3-ubyte` loads them. A user error (xc_die) ends an input;
// what is loaded must be the files' samples.
#include "fuzz.h"
#include "rt.h"

#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                                                   \
  do {                                                                                             \
    if (!(c)) {                                                                                    \
      fprintf(stderr, "fuzz_idx: %s:%d: %s\n", __FILE__, __LINE__, #c);                           \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

// Models reading 28x28 grey images (idx3) or N x C x H x W ones (idx4): as
// stored, converted and resized, with three classes, and RGB without
// conversion (an error unless the file holds 3 channels).
static const struct {
  int c, h, w, nclasses;
  bool convert, resize;
} models[] = {
    {1, 28, 28, 10, false, false},
    {3, 32, 32, 10, true, true},
    {1, 7, 5, 3, false, true},
    {3, 28, 28, 10, false, false},
};

static FuzzFile images, labels;

void fuzz_init(void) {
  fuzz_binary_input();
  fuzz_leaks_are_bugs();
  xc_set_die_hook(fuzz_user_error);
  images = fuzz_file("train-images-idx3-ubyte");
  labels = fuzz_file("train-labels-idx1-ubyte");
}

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

void fuzz_one(const char *data, size_t size) {
  if (size < 2 || size - 2 < (uint8_t)data[1])
    return;
  int m = (uint8_t)data[0] % (sizeof models / sizeof *models);
  const uint8_t *lab = (const uint8_t *)data + 2, *img = lab + (uint8_t)data[1];
  size_t nlab = (uint8_t)data[1], nimg = size - 2 - nlab;
  fuzz_file_write(labels, lab, nlab);
  fuzz_file_write(images, img, nimg);
  DataSpec s = {.path = images.path, .train = true, .quiet = true};
  s.c = models[m].c, s.h = models[m].h, s.w = models[m].w;
  s.nclasses = models[m].nclasses;
  s.convert = models[m].convert, s.resize = models[m].resize;
  Dataset *d = xc_load_dataset(&s);
  CHECK(!strcmp(d->format, "idx") && d->n > 0);
  CHECK(d->c == s.c && d->h == s.h && d->w == s.w && !d->files);
  for (int64_t i = 0; i < d->n; i++)
    CHECK(d->labels[i] >= 0 && d->labels[i] < s.nclasses);
  // Plain files of the model's shape are loaded as they are.
  bool plain = nlab >= 8 && nimg >= 4 && lab[0] == 0 && img[0] == 0;
  if (plain) {
    int nd = img[3];
    CHECK(be32(lab + 4) == d->n && be32(img + 4) == d->n);
    int64_t c = nd == 4 ? be32(img + 8) : 1, h = be32(img + 4 * nd - 4), w = be32(img + 4 * nd);
    size_t sample = (size_t)s.c * s.h * s.w;
    for (int64_t i = 0; i < d->n; i++)
      CHECK(d->labels[i] == lab[8 + i]);
    if (c == s.c && h == s.h && w == s.w)
      CHECK(!memcmp(d->pixels, img + 4 + 4 * nd, d->n * sample));
  }
  xc_free_dataset(d);
}

// The CIFAR-10 binary reader (runtime/data.c): the input's first byte picks
// a model input from the table below, the rest is a file data_batch_1.bin
// loaded as `NAME-train --data data_batch_1.bin` loads it. A user error
// (xc_die) ends an input; what is loaded must be the file's records.
#include "fuzz.h"
#include "rt.h"

#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                                                   \
  do {                                                                                             \
    if (!(c)) {                                                                                    \
      fprintf(stderr, "fuzz_cifar: %s:%d: %s\n", __FILE__, __LINE__, #c);                         \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

// Models reading CIFAR's 3x32x32 records: as stored, converted and resized,
// with fewer classes than labels, and a shape that needs an unasked
// conversion (an error).
static const struct {
  int c, h, w, nclasses;
  bool convert, resize;
} models[] = {
    {3, 32, 32, 10, false, false},
    {1, 28, 28, 10, true, true},
    {3, 8, 8, 3, false, true},
    {1, 32, 32, 10, false, false},
};

static FuzzFile file;

void fuzz_init(void) {
  fuzz_binary_input();
  fuzz_leaks_are_bugs();
  xc_set_die_hook(fuzz_user_error);
  file = fuzz_file("data_batch_1.bin");
}

void fuzz_one(const char *data, size_t size) {
  if (size < 1)
    return;
  int m = (uint8_t)data[0] % (sizeof models / sizeof *models);
  const uint8_t *bytes = (const uint8_t *)data + 1;
  size_t n = size - 1;
  fuzz_file_write(file, bytes, n);
  DataSpec s = {.path = file.path, .train = true, .quiet = true};
  s.c = models[m].c, s.h = models[m].h, s.w = models[m].w;
  s.nclasses = models[m].nclasses;
  s.convert = models[m].convert, s.resize = models[m].resize;
  Dataset *d = xc_load_dataset(&s);
  CHECK(!strcmp(d->format, "cifar10") && n % 3073 == 0 && d->n == (int64_t)(n / 3073));
  CHECK(d->c == s.c && d->h == s.h && d->w == s.w && !d->files);
  bool same = s.c == 3 && s.h == 32 && s.w == 32;
  for (int64_t i = 0; i < d->n; i++) {
    const uint8_t *rec = bytes + i * 3073;
    CHECK(d->labels[i] == rec[0] && rec[0] < s.nclasses);
    CHECK(!same || !memcmp(d->pixels + i * 3072, rec + 1, 3072));
  }
  xc_free_dataset(d);
}

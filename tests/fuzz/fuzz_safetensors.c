// The safetensors reader (runtime/safetensors.c) under libFuzzer: each input
// is read as a file (at offsets) and, when it fits a pipe's buffer, as a
// pipe (once, in order), every tensor read raw and, for float dtypes,
// converted. A crash or a sanitizer report is a finding, and so is any
// disagreement: the two ways must accept the same inputs and read the same
// bytes, and an accepted header must tile its data section exactly. The
// reader reports what it refuses; it never exits (xc_die is a finding).
#define _GNU_SOURCE
#include "fuzz.h"
#include "rt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHECK(c)                                                                                   \
  do {                                                                                             \
    if (!(c)) {                                                                                    \
      fprintf(stderr, "fuzz_safetensors: %s:%d: %s\n", __FILE__, __LINE__, #c);                  \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

typedef struct {
  bool ok;
  int n;
  uint8_t **bytes; // per entry, in file order
  int64_t *len;
  char **names;
} Result;

static void result_free(Result *r) {
  for (int i = 0; i < r->n; i++)
    free(r->bytes[i]), free(r->names[i]);
  free(r->bytes);
  free(r->len);
  free(r->names);
}

// Everything a loader does with a file, and checks of what the reader
// promises about an accepted header.
static Result read_everything(int fd, size_t size) {
  Result r = {0};
  char *err = NULL;
  StFile *f = st_open_fd(fd, "fuzz", &err);
  if (!f) {
    CHECK(err && !strncmp(err, "fuzz: ", 6));
    free(err);
    return r;
  }
  // A file's data section is checked at open; a pipe's as it is read.
  CHECK(!f->seekable || f->data_start + f->data_len == (int64_t)size);
  r.bytes = calloc(f->n + 1, sizeof *r.bytes);
  r.names = calloc(f->n + 1, sizeof *r.names);
  r.len = calloc(f->n + 1, sizeof *r.len);
  int64_t pos = 0;
  for (int i = 0; i < f->n; i++) {
    const StEntry *e = &f->e[i];
    CHECK(e->begin == pos && e->end - e->begin == e->numel * e->size);
    pos = e->end;
    CHECK(st_find(f, e->name) == e);
    r.names[r.n] = xc_strdup(e->name);
    r.len[r.n] = e->end - e->begin;
    uint8_t *b = r.bytes[r.n++] = malloc(e->end - e->begin + 1);
    if (!st_read_raw(f, e, b, &err))
      goto fail;
    if (!strcmp(e->dtype, "F16") || !strcmp(e->dtype, "BF16") || !strcmp(e->dtype, "F64")) {
      float *v = malloc(sizeof(float) * e->numel + 1);
      // A pipe moves forward only: it is read raw, conversion is the file's.
      bool ok = f->seekable ? st_read_f32(f, e, v, &err) : true;
      free(v);
      if (!ok)
        goto fail;
    }
  }
  CHECK(pos == f->data_len);
  for (int i = 0; i < f->nmeta; i++)
    CHECK(st_meta(f, f->meta_key[i]) == f->meta_val[i]);
  if (!st_finish(f, &err))
    goto fail;
  r.ok = true;
  st_free(f);
  return r;
fail:
  free(err);
  st_free(f);
  r.ok = false;
  return r;
}

static FuzzFile input;

void fuzz_init(void) {
  fuzz_binary_input();
  fuzz_leaks_are_bugs();
  xc_set_die_hook(fuzz_user_error);
  input = fuzz_file("fuzz.safetensors");
}

void fuzz_one(const char *data, size_t size) {
  fuzz_errors_are_bugs();
  fuzz_file_write(input, data, size);
  Result file = read_everything(dup(input.fd), size);
  if (size <= 60000) { // within a pipe's buffer: written whole, then read
    int fd[2];
    CHECK(pipe(fd) == 0);
    CHECK(write(fd[1], data, size) == (ssize_t)size);
    close(fd[1]);
    Result pipe = read_everything(fd[0], size);
    CHECK(file.ok == pipe.ok);
    if (file.ok) {
      CHECK(file.n == pipe.n);
      for (int i = 0; i < file.n; i++)
        CHECK(!strcmp(file.names[i], pipe.names[i]) && file.len[i] == pipe.len[i] &&
              !memcmp(file.bytes[i], pipe.bytes[i], file.len[i]));
    }
    result_free(&pipe);
  }
  result_free(&file);
}

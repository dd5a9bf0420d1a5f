// Small services for the rest of the runtime: error messages with hints,
// allocation that cannot return NULL, a monotonic clock, paths, and the
// seeded PRNG (xoshiro256** seeded through splitmix64) behind every random
// choice: initial weights, shuffles, augmentation and splits.
#define _GNU_SOURCE
#include "rt.h"

#include <fcntl.h>
#include <math.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *xc_prog = "xentcc";

// Under mpirun rank 0 speaks for the job (xc_set_report_rank). Another
// rank's warnings would repeat rank 0's (every rank reads the same data,
// options and files: the agreement check) and are not printed; its error
// waits REPORT_WAIT_MS first, so that when rank 0 stops on the same error,
// rank 0's abort ends this rank before a second copy is printed, and a rank
// that fails alone names itself: "PROG: rank 1 of 4: error: ...".
enum { REPORT_WAIT_MS = 1500 };
static int report_rank, report_size = 1;

void xc_set_report_rank(int rank, int size) {
  report_rank = rank;
  report_size = size;
}

static void vreport(const char *kind, const char *hint, const char *fmt, va_list ap) {
  if (report_rank > 0 && strcmp(kind, "error"))
    return;
  if (report_rank > 0) {
    struct timespec wait = {REPORT_WAIT_MS / 1000, (REPORT_WAIT_MS % 1000) * 1000000L};
    nanosleep(&wait, NULL);
  }
  // One write for the whole report: stderr is unbuffered, and under mpirun
  // a report in pieces can come out with other output between them.
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (!f) // no memory for the buffer: in pieces, then
    f = stderr;
  if (report_rank > 0)
    fprintf(f, "%s: rank %d of %d: %s: ", xc_prog, report_rank, report_size, kind);
  else
    fprintf(f, "%s: %s: ", xc_prog, kind);
  vfprintf(f, fmt, ap);
  fputc('\n', f);
  if (hint)
    fprintf(f, "hint: %s\n", hint);
  fflush(stdout);
  if (f != stderr) {
    fclose(f);
    fwrite(text, 1, len, stderr);
    free(text);
  }
}

// A user error ends the run: exit(1), or for a fuzzer the hook, which
// longjmps back to its loop so one process reads millions of inputs.
static void (*die_hook)(void);

void xc_set_die_hook(void (*hook)(void)) { die_hook = hook; }

noreturn void xc_die(const char *hint, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport("error", hint, fmt, ap);
  va_end(ap);
  if (die_hook)
    die_hook();
  exit(1);
}

void xc_warn(const char *hint, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport("warning", hint, fmt, ap);
  va_end(ap);
}

double xc_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

bool xc_is_dir(const char *path) {
  struct stat st;
  return path && *path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

bool xc_is_file(const char *path) {
  struct stat st;
  return path && *path && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

const char *xc_basename(const char *path) {
  const char *s = strrchr(path, '/');
  return s ? s + 1 : path;
}

char *xc_model_stem(const char *argv0, const char *suffix) {
  char *s = xc_strdup(xc_basename(argv0));
  size_t n = strlen(s), k = strlen(suffix);
  if (n > k && !strcmp(s + n - k, suffix))
    s[n - k] = '\0';
  return s;
}

// The runtime is built with the compiler and linked by it, so its version
// is the version of the xentcc that built the executable.
void xc_print_version(const XcModel *m) {
  printf("%s: model %s, built by xentcc %s\n", xc_prog, m->name, xentcc_version());
}

char *xc_join(const char *dir, const char *name) {
  size_t n = strlen(dir);
  return xc_format("%s%s%s", dir, n && dir[n - 1] == '/' ? "" : "/", name);
}

int xc_cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Different streams of one seed (weights, shuffle, augmentation, split) are
// independent, so turning augmentation on does not change the initial
// weights or the sample order.
void xc_rng_seed(XcRng *r, uint64_t seed, uint64_t stream) {
  uint64_t x = seed ^ (stream * 0xd1b54a32d192ed03ull);
  for (int i = 0; i < 4; i++)
    r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t xc_rng_next(XcRng *r) {
  uint64_t *s = r->s;
  uint64_t out = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return out;
}

float xc_rng_float(XcRng *r) { return (xc_rng_next(r) >> 40) * (1.0f / 16777216.0f); }

// Lemire's multiply-and-reject: no modulo bias.
uint32_t xc_rng_below(XcRng *r, uint32_t n) {
  uint64_t m = (xc_rng_next(r) >> 32) * n;
  if ((uint32_t)m < n) {
    uint32_t floor = -n % n;
    while ((uint32_t)m < floor)
      m = (xc_rng_next(r) >> 32) * n;
  }
  return m >> 32;
}

void xc_shuffle(XcRng *r, int32_t *a, int64_t n) {
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = xc_rng_below(r, (uint32_t)(i + 1));
    int32_t t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
}

const XcTensorInfo *xc_first_nonfinite(const float *block, const XcTensorInfo *t, int n) {
  for (int i = 0; i < n; i++) {
    const float *p = block + t[i].offset;
    for (int64_t j = 0, len = xc_numel(&t[i]); j < len; j++)
      if (!isfinite(p[j]))
        return &t[i];
  }
  return NULL;
}

void xc_sync_dir_of(const char *path) {
  char *copy = xc_strdup(path);
  int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
  free(copy);
}

// The driver shared by every harness: libFuzzer calls LLVMFuzzerTestOneInput
// with each input; a user error longjmps back here instead of exiting, and
// then everything the input allocated is freed and every stream it opened
// is closed, as exit would. The compiler never frees its IR, so the
// harnesses are linked with --wrap for the allocation functions and the
// stream openers (tests/fuzz/CMakeLists.txt): while an input runs, every
// block is recorded in a hash set and every stream in a short list.
#define _GNU_SOURCE
#include "fuzz.h"
#include "ir.h"

#include <sanitizer/asan_interface.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
int __real_vasprintf(char **s, const char *fmt, va_list ap);
FILE *__real_fopen(const char *path, const char *mode);
FILE *__real_fdopen(int fd, const char *mode);
int __real_fclose(FILE *f);
gzFile __real_gzopen(const char *path, const char *mode);
int __real_gzclose(gzFile f);

//
// The set of live blocks: open addressing, in memory of its own (mmap), so
// that it never calls the functions it wraps.
//

static void **live;
static size_t cap, count, tombstones;
static _Thread_local bool tracking;
#define TOMB ((void *)1)

static size_t home(void *p) { return ((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull & (cap - 1); }

static void rehash(size_t newcap) {
  void **old = live;
  size_t oldcap = cap;
  live = mmap(NULL, newcap * sizeof *live, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
              -1, 0);
  if (live == MAP_FAILED)
    abort();
  cap = newcap, count = tombstones = 0;
  for (size_t i = 0; i < oldcap; i++)
    if (old[i] && old[i] != TOMB) {
      size_t j = home(old[i]);
      while (live[j])
        j = (j + 1) & (cap - 1);
      live[j] = old[i];
      count++;
    }
  if (old)
    munmap(old, oldcap * sizeof *old);
}

static void remember(void *p) {
  if (!p)
    return;
  if (2 * (count + tombstones + 1) > cap) {
    size_t newcap = cap ? cap : 1 << 10;
    while (4 * (count + 1) > newcap)
      newcap *= 2;
    rehash(newcap);
  }
  size_t i = home(p);
  while (live[i] && live[i] != TOMB)
    i = (i + 1) & (cap - 1);
  tombstones -= live[i] == TOMB;
  live[i] = p;
  count++;
}

static bool forget(void *p) {
  if (!p || !count)
    return false;
  for (size_t i = home(p); live[i]; i = (i + 1) & (cap - 1))
    if (live[i] == p) {
      live[i] = TOMB;
      count--, tombstones++;
      return true;
    }
  return false;
}

static void free_all(void) {
  for (size_t i = 0; i < cap; i++) {
    if (live[i] && live[i] != TOMB)
      __real_free(live[i]);
    live[i] = NULL;
  }
  count = tombstones = 0;
  if (cap > 1 << 10) { // a big input: scan less for the next ones
    munmap(live, cap * sizeof *live);
    live = NULL, cap = 0;
  }
}

void *__wrap_malloc(size_t n) {
  void *p = __real_malloc(n);
  if (tracking)
    remember(p);
  return p;
}

void *__wrap_calloc(size_t n, size_t size) {
  void *p = __real_calloc(n, size);
  if (tracking)
    remember(p);
  return p;
}

void *__wrap_realloc(void *p, size_t n) {
  bool was = forget(p);
  void *q = __real_realloc(p, n);
  if (!q && n && was)
    remember(p); // failed: p is still there
  else if (was || (tracking && !p))
    remember(q);
  return q;
}

void __wrap_free(void *p) {
  forget(p);
  __real_free(p);
}

char *__wrap_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = __wrap_malloc(n);
  return p ? memcpy(p, s, n) : NULL;
}

int __wrap_vasprintf(char **s, const char *fmt, va_list ap) {
  int n = __real_vasprintf(s, fmt, ap);
  if (n >= 0 && tracking)
    remember(*s);
  return n;
}

//
// Open streams: stdio's (the runtime's fopen and fdopen) and zlib's
//

enum { MAX_STREAMS = 16 };
static struct {
  void *p;
  bool gz;
} streams[MAX_STREAMS];
static int nstreams;

static void *opened(void *p, bool gz) {
  if (p && tracking) {
    if (nstreams == MAX_STREAMS) {
      fputs("fuzz: more than 16 streams open at once\n", stderr);
      abort();
    }
    streams[nstreams].p = p;
    streams[nstreams++].gz = gz;
  }
  return p;
}

static void closed(void *p) {
  for (int i = 0; i < nstreams; i++)
    if (streams[i].p == p) {
      streams[i] = streams[--nstreams];
      return;
    }
}

FILE *__wrap_fopen(const char *path, const char *mode) {
  return opened(__real_fopen(path, mode), false);
}

FILE *__wrap_fdopen(int fd, const char *mode) { return opened(__real_fdopen(fd, mode), false); }

int __wrap_fclose(FILE *f) {
  closed(f);
  return __real_fclose(f);
}

gzFile __wrap_gzopen(const char *path, const char *mode) {
  return opened(__real_gzopen(path, mode), true);
}

int __wrap_gzclose(gzFile f) {
  closed(f);
  return __real_gzclose(f);
}

static void close_all(void) {
  while (nstreams) {
    nstreams--;
    if (streams[nstreams].gz)
      __real_gzclose(streams[nstreams].p);
    else
      __real_fclose(streams[nstreams].p);
  }
}

//
// Files for code that reads paths
//

static char *file_dir;
static char *file_links[8];
static int nfiles;

static void remove_files(void) {
  for (int i = 0; i < nfiles; i++)
    unlink(file_links[i]);
  if (file_dir)
    rmdir(file_dir);
}

FuzzFile fuzz_file(const char *name) {
  if (!file_dir) {
    const char *tmp = getenv("TMPDIR");
    char *dir;
    if (asprintf(&dir, "%s/xentcc-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp") < 0 || !mkdtemp(dir)) {
      perror("fuzz: mkdtemp");
      abort();
    }
    file_dir = dir;
    atexit(remove_files);
  }
  char *link, target[64];
  int fd = memfd_create(name, MFD_CLOEXEC);
  snprintf(target, sizeof target, "/proc/self/fd/%d", fd);
  if (fd < 0 || nfiles == 8 || asprintf(&link, "%s/%s", file_dir, name) < 0 ||
      symlink(target, link) != 0) {
    perror("fuzz: a file in memory");
    abort();
  }
  file_links[nfiles++] = link;
  return (FuzzFile){link, fd};
}

void fuzz_file_write(FuzzFile f, const void *data, size_t size) {
  if (ftruncate(f.fd, 0) != 0 || pwrite(f.fd, data, size, 0) != (ssize_t)size) {
    perror("fuzz: writing a file in memory");
    abort();
  }
}

// What an input left: a few of the blocks with where ASan saw them
// allocated (LeakSanitizer, which libFuzzer runs after an input, misses
// blocks whose address is still in a stack slot), and the open streams.
static noreturn void report_leaks(void) {
  fprintf(stderr, "fuzz: a leak: %zu block%s left allocated, %d stream%s left open\n", count,
          count == 1 ? "" : "s", nstreams, nstreams == 1 ? "" : "s");
  for (size_t i = 0, shown = 0; i < cap && shown < 3; i++)
    if (live[i] && live[i] != TOMB) {
      __asan_describe_address(live[i]);
      shown++;
    }
  abort();
}

//
// One input
//

static jmp_buf back;
static bool errors_are_bugs, binary_input, leaks_are_bugs;

noreturn void fuzz_user_error(void) {
  if (errors_are_bugs) {
    fputs("fuzz: a user error where none may happen\n", stderr);
    abort();
  }
  longjmp(back, 1);
}

void fuzz_errors_are_bugs(void) { errors_are_bugs = true; }
void fuzz_binary_input(void) { binary_input = true; }
void fuzz_leaks_are_bugs(void) { leaks_are_bugs = true; }

__attribute__((weak)) void fuzz_init(void) {}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  for (int op = 0; op < OP_COUNT; op++)
    op_info(op); // its attribute names live as long as the process
  diag_set_exit_hook(fuzz_user_error);
  fuzz_init();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  // Files with a NUL byte are refused before any parsing (read_file).
  if (!binary_input && memchr(data, 0, size))
    return 0;
  errors_are_bugs = false;
  char *text = __real_malloc(size + 1);
  memcpy(text, data, size);
  text[size] = '\0';
  tracking = true;
  volatile bool user_error = true;
  if (!setjmp(back)) {
    fuzz_one(text, size);
    user_error = false;
  }
  tracking = false;
  __real_free(text);
  diag_reset();
  if (leaks_are_bugs && !user_error && (count || nstreams))
    report_leaks();
  close_all();
  free_all();
  return 0;
}

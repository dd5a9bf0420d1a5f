// The driver shared by every harness: libFuzzer calls LLVMFuzzerTestOneInput
// with each input; a user error longjmps back here instead of exiting, and
// then everything the input allocated is freed. The compiler never frees its
// IR, so the harnesses are linked with --wrap for the allocation functions
// (tests/fuzz/CMakeLists.txt): while an input runs, every block is recorded
// in a hash set, and the blocks still there afterwards are freed.
#include "fuzz.h"
#include "ir.h"

#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);

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

//
// One input
//

static jmp_buf back;
static bool errors_are_bugs;

noreturn void fuzz_user_error(void) {
  if (errors_are_bugs) {
    fputs("fuzz: a user error where none may happen\n", stderr);
    abort();
  }
  longjmp(back, 1);
}

void fuzz_errors_are_bugs(void) { errors_are_bugs = true; }

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
  if (memchr(data, 0, size))
    return 0;
  errors_are_bugs = false;
  tracking = true;
  char *text = malloc(size + 1);
  memcpy(text, data, size);
  text[size] = '\0';
  if (!setjmp(back))
    fuzz_one(text, size);
  tracking = false;
  diag_reset();
  free_all();
  return 0;
}

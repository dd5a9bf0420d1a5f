// Allocation that cannot return NULL: out of memory is a user error
// (xc_die). Apart from util.c so that a compiled model's library, which
// has its own xc_die (runtime/lib/lib.c), takes these without the rest.
#define _GNU_SOURCE
#include "rt.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *xc_malloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p)
    xc_die("free some memory or use a smaller data set", "out of memory (%zu bytes)", n);
  return p;
}

void *xc_calloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p)
    xc_die("free some memory or use a smaller data set", "out of memory (%zu bytes)", n * size);
  return p;
}

void *xc_realloc(void *p, size_t n) {
  p = realloc(p, n ? n : 1);
  if (!p)
    xc_die("free some memory or use a smaller data set", "out of memory (%zu bytes)", n);
  return p;
}

float *xc_alloc_floats(int64_t n) {
  size_t bytes = ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) & ~(size_t)63;
  float *p = aligned_alloc(64, bytes);
  if (!p)
    xc_die("free some memory", "out of memory (%zu bytes)", bytes);
  memset(p, 0, bytes);
  return p;
}

char *xc_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  return memcpy(xc_malloc(n), s, n);
}

char *xc_format(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *s;
  if (vasprintf(&s, fmt, ap) < 0)
    xc_die(NULL, "out of memory");
  va_end(ap);
  return s;
}

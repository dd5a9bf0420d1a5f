// Command-line parsing for every xentcc tool: GNU-style options ("--epochs
// 3" or "--epochs=3"), numbers checked against their range, and usage
// errors that suggest the option a typo meant. Plain C and libc only: the
// compiler links this file as well as the runtime.
#include "args.h"

#include "xentcc_version.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *xentcc_version(void) { return XENTCC_VERSION_STRING; }

static const char *prog(const Args *a) {
  if (a->argc < 1 || !a->argv[0] || !*a->argv[0])
    return "xentcc";
  const char *slash = strrchr(a->argv[0], '/');
  return slash ? slash + 1 : a->argv[0];
}

noreturn void arg_die(const Args *a, const char *hint, const char *fmt, ...) {
  fflush(stdout);
  fprintf(stderr, "%s: error: ", prog(a));
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  if (hint || a->usage)
    fprintf(stderr, "hint: %s\n", hint ? hint : a->usage);
  exit(1);
}

// Notes an option the chain asked about, once.
static void know(Args *a, const char *name, bool takes_value) {
  for (int k = 0; k < a->nknown; k++)
    if (!strcmp(a->known[k], name))
      return;
  if (a->nknown < ARG_MAX_KNOWN) {
    a->known[a->nknown] = name;
    a->takes_value[a->nknown++] = takes_value;
  }
}

bool arg_flag(Args *a, const char *name) {
  know(a, name, false);
  const char *s = a->argv[a->i];
  size_t n = strlen(name);
  if (strncmp(s, name, n))
    return false;
  if (s[n] == '=')
    arg_die(a, NULL, "option %s takes no value (got '%s')", name, s);
  return !s[n];
}

bool arg_opt(Args *a, const char *name) {
  know(a, name, true);
  const char *s = a->argv[a->i];
  size_t n = strlen(name);
  if (strncmp(s, name, n) || (s[n] && s[n] != '='))
    return false;
  if (s[n] == '=') {
    a->value = s + n + 1;
  } else {
    if (a->i + 1 >= a->argc)
      arg_die(a, NULL, "option %s needs a value", name);
    a->value = a->argv[++a->i];
  }
  a->name = name;
  return true;
}

// Edits (insert, delete, replace, swap of neighbours) that turn a into b;
// 99 for words longer than 64 characters, which no typo check needs.
int arg_edit_distance(const char *a, const char *b) {
  int n = (int)strlen(a), m = (int)strlen(b);
  if (n > 64 || m > 64)
    return 99;
  int d[65][65];
  for (int i = 0; i <= n; i++)
    d[i][0] = i;
  for (int j = 0; j <= m; j++)
    d[0][j] = j;
  for (int i = 1; i <= n; i++)
    for (int j = 1; j <= m; j++) {
      int best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
          d[i - 2][j - 2] + 1 < best)
        best = d[i - 2][j - 2] + 1; // a swap of two neighbours is one typo
      if (d[i - 1][j] + 1 < best)
        best = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < best)
        best = d[i][j - 1] + 1;
      d[i][j] = best;
    }
  return d[n][m];
}

static const char *undashed(const char *s) {
  while (*s == '-')
    s++;
  return s;
}

// A typo is an edit away in a short name, two in a longer one; dashes count
// as edits too, so "-emit" finds "--emit". Failing that, the only candidate
// the word abbreviates ("--batch" for "--batch-size").
const char *arg_closest(const char *word, const char *const *cands, int n) {
  const char *best = NULL;
  int best_d = strlen(undashed(word)) <= 4 ? 1 : 2;
  for (int k = 0; k < n; k++) {
    int d = arg_edit_distance(word, cands[k]);
    if (d <= best_d && d < (int)strlen(undashed(cands[k]))) {
      best = cands[k];
      best_d = d - 1;
    }
  }
  if (best || strlen(undashed(word)) < 3)
    return best;
  for (int k = 0; k < n; k++)
    if (!strncmp(cands[k], word, strlen(word))) {
      if (best)
        return NULL; // it abbreviates two
      best = cands[k];
    }
  return best;
}

noreturn void arg_unknown(Args *a) {
  const char *s = a->argv[a->i];
  if (s[0] != '-' || !s[1]) {
    // "epochs" for "--epochs"?
    for (int k = 0; k < a->nknown; k++)
      if (!strcmp(undashed(a->known[k]), s) && strlen(a->known[k]) > strlen(s))
        arg_die(a, NULL, "unexpected argument '%s'; did you mean '%s'?", s, a->known[k]);
    arg_die(a, NULL, "unexpected argument '%s'", s);
  }
  const char *eq = strchr(s, '=');
  char name[64];
  snprintf(name, sizeof name, "%.*s", (int)(eq ? eq - s : (long)strlen(s)), s);
  const char *near = arg_closest(name, a->known, a->nknown);
  if (near)
    arg_die(a, NULL, "unknown option '%s'; did you mean '%s'?", s, near);
  arg_die(a, NULL, "unknown option '%s' (--help lists them)", s);
}

int arg_int(Args *a, int lo, int hi) {
  char *end;
  errno = 0;
  long v = strtol(a->value, &end, 10);
  if (!*a->value || *end || errno || v < lo || v > hi) {
    char hint[80];
    snprintf(hint, sizeof hint, "give an integer from %d to %d", lo, hi);
    arg_die(a, hint, "%s: bad value '%s'", a->name, a->value);
  }
  return (int)v;
}

double arg_double(Args *a, double lo, double hi) {
  char *end;
  errno = 0;
  double v = strtod(a->value, &end);
  if (!*a->value || *end || errno || !isfinite(v) || v < lo || v > hi) {
    char hint[80];
    snprintf(hint, sizeof hint, "give a number from %g to %g", lo, hi);
    arg_die(a, hint, "%s: bad value '%s'", a->name, a->value);
  }
  return v;
}

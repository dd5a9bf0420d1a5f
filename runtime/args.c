// Command-line parsing for NAME-train and NAME-eval: GNU-style long
// options ("--epochs 3" or "--epochs=3"), numbers checked against their
// range, and errors that show the usage line.
#include "rt.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

bool arg_flag(Args *a, const char *name) { return !strcmp(a->argv[a->i], name); }

bool arg_opt(Args *a, const char *name) {
  const char *s = a->argv[a->i];
  size_t n = strlen(name);
  if (strncmp(s, name, n))
    return false;
  if (s[n] == '=') {
    a->value = s + n + 1;
    return true;
  }
  if (s[n])
    return false;
  if (a->i + 1 >= a->argc)
    xc_die(a->usage, "option %s needs a value", name);
  a->value = a->argv[++a->i];
  return true;
}

noreturn void arg_unknown(Args *a) {
  const char *s = a->argv[a->i];
  if (s[0] == '-')
    xc_die(a->usage, "unknown option '%s' (--help lists them)", s);
  xc_die(a->usage, "unexpected argument '%s'", s);
}

int arg_int(Args *a, int lo, int hi) {
  char *end;
  errno = 0;
  long v = strtol(a->value, &end, 10);
  if (!*a->value || *end || errno || v < lo || v > hi)
    xc_die(xc_format("give an integer from %d to %d", lo, hi), "%s: bad value '%s'",
           a->argv[a->i - (strchr(a->argv[a->i], '=') ? 0 : 1)], a->value);
  return (int)v;
}

double arg_double(Args *a, double lo, double hi) {
  char *end;
  errno = 0;
  double v = strtod(a->value, &end);
  if (!*a->value || *end || errno || !isfinite(v) || v < lo || v > hi)
    xc_die(xc_format("give a number from %g to %g", lo, hi), "%s: bad value '%s'",
           a->argv[a->i - (strchr(a->argv[a->i], '=') ? 0 : 1)], a->value);
  return v;
}

char *xc_model_stem(const char *argv0, const char *suffix) {
  char *s = xc_strdup(xc_basename(argv0));
  size_t n = strlen(s), k = strlen(suffix);
  if (n > k && !strcmp(s + n - k, suffix))
    s[n - k] = '\0';
  return s;
}

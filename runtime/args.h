// The command line of every xentcc tool -- xentcc, xentcc-opt, NAME-train
// and NAME-eval -- read by one small parser (args.c, plain C and libc only:
// it is linked into the compiler and into every generated executable).
#ifndef XENTCC_ARGS_H
#define XENTCC_ARGS_H

#include <stdbool.h>
#include <stdnoreturn.h>

enum { ARG_MAX_KNOWN = 64 };

// A main walks argv with an if-chain, one arg_flag / arg_opt per option,
// and ends it with arg_unknown:
//
//   for (; a.i < a.argc; a.i++)
//     if (arg_opt(&a, "--epochs")) epochs = arg_int(&a, 1, 1000);
//     else if (arg_flag(&a, "--quiet")) quiet = true;
//     else arg_unknown(&a);
//
// The chain is the option table: every name it asks about is noted, so by
// the time arg_unknown runs it knows them all and suggests the nearest.
typedef struct {
  int argc;
  char **argv;
  int i;             // the argument being looked at
  const char *value; // the value of the option just matched
  const char *usage; // the hint of a usage error (the usage line)
  const char *name;  // the option just matched, for messages about its value
  const char *known[ARG_MAX_KNOWN]; // the options asked about so far
  bool takes_value[ARG_MAX_KNOWN];
  int nknown;
} Args;

// argv[i] is exactly `name` (an option without a value; "--name=V" is an
// error saying it takes none).
bool arg_flag(Args *a, const char *name);
// argv[i] is `name` with a value, "--name V" or "--name=V"; the value goes
// to a->value. A missing value is an error.
bool arg_opt(Args *a, const char *name);
// argv[i] matched nothing: "unknown option '--epoch'; did you mean
// '--epochs'?" or "unexpected argument". Exits with status 1.
noreturn void arg_unknown(Args *a);
// Edits (insert, delete, replace, swap of neighbours) that turn a into b,
// for suggestions; also the model file's "did you mean" (frontend/yaml.c).
int arg_edit_distance(const char *a, const char *b);
// a->value as a number in [lo, hi], or an error naming the option.
int arg_int(Args *a, int lo, int hi);
double arg_double(Args *a, double lo, double hi);
// A usage error: "PROG: error: MESSAGE" and "hint: HINT" (the usage line
// when hint is NULL) on stderr; exit status 1.
noreturn void arg_die(const Args *a, const char *hint, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

// The candidate a mistyped word most likely meant (a typo or two away, or
// the only candidate it abbreviates), or NULL.
const char *arg_closest(const char *word, const char *const *cands, int n);

// The version of xentcc this file was built with: "0.1.0 (git 1a2b3c4d5e6f)".
const char *xentcc_version(void);

#endif

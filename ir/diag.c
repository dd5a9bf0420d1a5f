// Diagnostics: every user error names file:line:col, quotes the source line,
// points at the column with a caret and says how to fix it, then exits 1.
// Internal errors (bugs in xentcc) say so and abort.
#include "ir.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// The compiler never frees its IR (a run is short), so in a sanitizer build
// its leak reports are noise: they are off here, in every program made with
// the compiler's libraries, and stay on for the runtime and the executables
// xentcc generates. Its quarantine of freed memory is 32 MiB, not 256: the
// frees are nearly all LLVM's, and with the smaller quarantine their memory
// is reused rather than fresh pages faulted in (catdog compiles in 0.8x the
// time, half the page faults), while a use after free of what was freed in
// the last 32 MiB is still caught. ASAN_OPTIONS in the environment still
// overrides both.
#ifdef XC_ASAN
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "detect_leaks=0:quarantine_size_mb=32"; }
#endif

typedef struct {
  const char *path;
  const char *text;
} Source;

static Source *sources;
static int nsources;

// A user error ends the run: exit(1), or for a fuzzer the hook, which
// longjmps back to its loop so one process reads millions of inputs.
static void (*exit_hook)(void);

void diag_set_exit_hook(void (*hook)(void)) { exit_hook = hook; }

void diag_reset(void) {
  free(sources);
  sources = NULL;
  nsources = 0;
}

static noreturn void die(void) {
  if (exit_hook)
    exit_hook();
  exit(1);
}

void src_register(const char *path, const char *text) {
  sources = realloc(sources, sizeof(Source) * (nsources + 1));
  if (!sources)
    fatal("out of memory");
  sources[nsources++] = (Source){path, text};
}

static const char *source_line(const char *path, int line, int *len) {
  for (int i = nsources - 1; i >= 0; i--) {
    if (strcmp(sources[i].path, path) != 0)
      continue;
    const char *p = sources[i].text;
    for (int l = 1; l < line && *p; p++)
      if (*p == '\n')
        l++;
    const char *e = strchr(p, '\n');
    *len = e ? (int)(e - p) : (int)strlen(p);
    return p;
  }
  return NULL;
}

static void vreport(Loc loc, const char *kind, const char *hint, const char *fmt, va_list ap) {
  fflush(stdout);
  if (loc.file)
    fprintf(stderr, "%s:%d:%d: %s: ", loc.file, loc.line, loc.col, kind);
  else
    fprintf(stderr, "xentcc: %s: ", kind);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  int len;
  const char *line = loc.file ? source_line(loc.file, loc.line, &len) : NULL;
  if (line) {
    fprintf(stderr, "  %.*s\n  ", len, line);
    for (int i = 1; i < loc.col && i <= len; i++)
      fputc(line[i - 1] == '\t' ? '\t' : ' ', stderr);
    fputs("^\n", stderr);
  }
  if (hint)
    fprintf(stderr, "hint: %s\n", hint);
}

noreturn void error_at(Loc loc, const char *hint, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(loc, "error", hint, fmt, ap);
  va_end(ap);
  die();
}

void warn_at(Loc loc, const char *hint, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(loc, "warning", hint, fmt, ap);
  va_end(ap);
}

noreturn void fatal(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fflush(stdout);
  fputs("xentcc: error: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  die();
}

noreturn void internal_error(const char *file, int line, const char *msg) {
  fflush(stdout);
  fprintf(stderr, "xentcc: internal error at %s:%d: %s\n"
                  "This is a bug in xentcc, not in your model; please report it.\n",
          file, line, msg);
  abort();
}

char *read_file(const char *path, const char *what) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  if (!f)
    fatal("cannot open %s '%s': %s", what, path, strerror(errno));
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (!buf)
      fatal("out of memory reading '%s'", path);
    len += fread(buf + len, 1, cap - len - 1, f);
    if (len < cap - 1)
      break;
    cap *= 2;
    buf = realloc(buf, cap);
  }
  if (ferror(f))
    fatal("cannot read %s '%s': %s", what, path, strerror(errno));
  if (f != stdin)
    fclose(f);
  buf[len] = '\0';
  if (strlen(buf) != len)
    fatal("%s '%s' contains a NUL byte; is it a text file?", what, path);
  return buf;
}

void write_file(const char *path, const char *data, size_t len) {
  if (!strcmp(path, "-")) {
    if (fwrite(data, 1, len, stdout) != len || fflush(stdout) != 0)
      fatal("cannot write to standard output: %s", strerror(errno));
    return;
  }
  // mkstemp's name is unpredictable and opened with O_EXCL: nothing planted
  // there can redirect the write; the rename replaces path itself, never a
  // file a symbolic link at path points to.
  char *tmp = xformat("%s.XXXXXX", path);
  int fd = mkstemp(tmp);
  if (fd < 0)
    fatal("cannot write %s: %s (check that its directory exists and is writable)", path,
          strerror(errno));
  mode_t mask = umask(0);
  umask(mask);
  const char *p = data;
  size_t left = len;
  bool ok = fchmod(fd, 0666 & ~mask) == 0;
  while (ok && left > 0) {
    ssize_t n = write(fd, p, left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      if (n == 0)
        errno = ENOSPC;
      ok = false;
      break;
    }
    p += n;
    left -= (size_t)n;
  }
  int err = errno;
  if (close(fd) != 0 && ok)
    ok = false, err = errno;
  if (ok && rename(tmp, path) != 0)
    ok = false, err = errno;
  if (!ok) {
    unlink(tmp);
    fatal("cannot write %s: %s", path, strerror(err));
  }
  free(tmp);
}

void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p)
    fatal("out of memory");
  return p;
}

char *xstrndup(const char *s, size_t n) {
  char *p = xcalloc(1, n + 1);
  memcpy(p, s, n);
  return p;
}

char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }

char *xformat(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *p = xcalloc(1, n + 1);
  va_start(ap, fmt);
  vsnprintf(p, n + 1, fmt, ap);
  va_end(ap);
  return p;
}

// The safetensors format, in which PyTorch users exchange
// state_dicts in: an 8-byte little-endian header length, a JSON header
// {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]},
// "__metadata__": {...}}, then the raw little-endian tensor data. The reader
// checks the whole header as the format's specification requires before any
// tensor is read, then reads tensors on demand at their offsets (in file
// order on a pipe): a file costs no more memory than the tensors asked for.
#define _GNU_SOURCE
#include "rt.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// The reference implementation's bound on the JSON header.
enum { ST_MAX_HEADER = 100000000 };

// Every dtype of the specification with whole-byte elements. Only the float
// ones load into a model (converted to float32); the others are still
// checked, as a file holding them is a valid file.
static const struct {
  const char *name;
  int size;
} dtypes[] = {
    {"BOOL", 1},    {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
    {"I16", 2},     {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
    {"U32", 4},     {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8},
};

static int dtype_size(const char *d) {
  for (size_t i = 0; i < sizeof dtypes / sizeof *dtypes; i++)
    if (!strcmp(d, dtypes[i].name))
      return dtypes[i].size;
  return 0;
}

bool st_is_float(const char *d) {
  return !strcmp(d, "F32") || !strcmp(d, "F64") || !strcmp(d, "F16") || !strcmp(d, "BF16");
}

static char *vformat(const char *fmt, va_list ap) {
  char *s;
  if (vasprintf(&s, fmt, ap) < 0)
    xc_die(NULL, "out of memory");
  return s;
}

// *err = "PATH: MESSAGE"; returns false.
static bool fail(char **err, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool fail(char **err, const char *path, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *msg = vformat(fmt, ap);
  va_end(ap);
  *err = xc_format("%s: %s", path, msg);
  free(msg);
  return false;
}

//
// A strict JSON reader for the header: RFC 8259 syntax in UTF-8, with the
// format's schema (an object of tensor entries and string metadata).
//

typedef struct {
  const char *p, *end;
  char *err; // the first error
} Json;

static bool jfail(Json *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool jfail(Json *j, const char *fmt, ...) {
  if (!j->err) {
    va_list ap;
    va_start(ap, fmt);
    j->err = vformat(fmt, ap);
    va_end(ap);
  }
  return false;
}

static void jws(Json *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t'))
    j->p++;
}

static bool jchar(Json *j, char c) {
  jws(j);
  if (j->p < j->end && *j->p == c) {
    j->p++;
    return true;
  }
  return false;
}

// The length of a valid UTF-8 sequence at s (RFC 3629: no overlong forms,
// no surrogates, nothing above U+10FFFF), or 0.
static int utf8_len(const unsigned char *s, const unsigned char *end) {
  unsigned c = s[0];
  int n = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
                                                : c >= 0xf0 && c <= 0xf4 ? 4
                                                                         : 0;
  if (!n || end - s < n)
    return 0;
  for (int i = 1; i < n; i++)
    if ((s[i] & 0xc0) != 0x80)
      return 0;
  if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f) || (c == 0xf0 && s[1] < 0x90) ||
      (c == 0xf4 && s[1] > 0x8f))
    return 0;
  return n;
}

static void put_utf8(char *buf, size_t *n, unsigned cp) {
  if (cp < 0x80) {
    buf[(*n)++] = (char)cp;
  } else if (cp < 0x800) {
    buf[(*n)++] = (char)(0xc0 | cp >> 6);
    buf[(*n)++] = (char)(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    buf[(*n)++] = (char)(0xe0 | cp >> 12);
    buf[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
    buf[(*n)++] = (char)(0x80 | (cp & 0x3f));
  } else {
    buf[(*n)++] = (char)(0xf0 | cp >> 18);
    buf[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3f));
    buf[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
    buf[(*n)++] = (char)(0x80 | (cp & 0x3f));
  }
}

static int hex4(const char *p) {
  int v = 0;
  for (int i = 0; i < 4; i++) {
    char h = p[i];
    int d = h >= '0' && h <= '9' ? h - '0' : (h | 32) >= 'a' && (h | 32) <= 'f' ? (h | 32) - 'a' + 10 : -1;
    if (d < 0)
      return -1;
    v = v * 16 + d;
  }
  return v;
}

// A string with its escapes resolved. The copy is as long as the string's
// text, never the rest of the header. NUL is refused: names are C strings.
static char *jstring(Json *j) {
  jws(j);
  if (j->p >= j->end || *j->p != '"')
    return jfail(j, "expected a string"), NULL;
  const char *s = ++j->p, *q = s;
  while (q < j->end && *q != '"')
    q += *q == '\\' && q + 1 < j->end ? 2 : 1;
  if (q >= j->end)
    return jfail(j, "unterminated string"), NULL;
  char *buf = malloc(q - s + 1);
  if (!buf)
    return jfail(j, "out of memory for a string of %td bytes", q - s), NULL;
  size_t n = 0;
  while (j->p < q) {
    unsigned char c = (unsigned char)*j->p;
    if (c < 0x20)
      return free(buf), jfail(j, "control character 0x%02x in a string", c), NULL;
    if (c != '\\') {
      int len = utf8_len((const unsigned char *)j->p, (const unsigned char *)q);
      if (!len)
        return free(buf), jfail(j, "a string is not valid UTF-8"), NULL;
      memcpy(buf + n, j->p, len);
      n += len, j->p += len;
      continue;
    }
    char e = j->p[1];
    j->p += 2;
    switch (e) {
    case '"':
    case '\\':
    case '/':
      buf[n++] = e;
      break;
    case 'b':
      buf[n++] = '\b';
      break;
    case 'f':
      buf[n++] = '\f';
      break;
    case 'n':
      buf[n++] = '\n';
      break;
    case 'r':
      buf[n++] = '\r';
      break;
    case 't':
      buf[n++] = '\t';
      break;
    case 'u': {
      int cp = q - j->p >= 4 ? hex4(j->p) : -1;
      if (cp < 0)
        return free(buf), jfail(j, "bad \\u escape"), NULL;
      j->p += 4;
      if (cp >= 0xd800 && cp <= 0xdbff) { // a surrogate pair
        int lo = q - j->p >= 6 && j->p[0] == '\\' && j->p[1] == 'u' ? hex4(j->p + 2) : -1;
        if (lo < 0xdc00 || lo > 0xdfff)
          return free(buf), jfail(j, "lone surrogate in a \\u escape"), NULL;
        j->p += 6;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
      } else if (cp >= 0xdc00 && cp <= 0xdfff) {
        return free(buf), jfail(j, "lone surrogate in a \\u escape"), NULL;
      } else if (cp == 0) {
        return free(buf), jfail(j, "\\u0000 in a string"), NULL;
      }
      put_utf8(buf, &n, (unsigned)cp);
      break;
    }
    default:
      return free(buf), jfail(j, "bad escape '\\%c' in a string", e), NULL;
    }
  }
  j->p = q + 1;
  buf[n] = '\0';
  return buf;
}

// A non-negative integer that fits int64_t (shapes and offsets).
static bool jcount(Json *j, int64_t *v, const char *what) {
  jws(j);
  const char *s = j->p;
  if (s < j->end && *s == '-')
    return jfail(j, "%s is negative", what);
  if (s >= j->end || *s < '0' || *s > '9')
    return jfail(j, "%s must be an integer", what);
  if (*s == '0' && s + 1 < j->end && s[1] >= '0' && s[1] <= '9')
    return jfail(j, "%s has a leading zero", what);
  int64_t x = 0;
  for (; s < j->end && *s >= '0' && *s <= '9'; s++) {
    if (x > (INT64_MAX - (*s - '0')) / 10)
      return jfail(j, "%s is too large", what);
    x = x * 10 + (*s - '0');
  }
  if (s < j->end && (*s == '.' || *s == 'e' || *s == 'E'))
    return jfail(j, "%s must be an integer", what);
  j->p = s;
  *v = x;
  return true;
}

static bool jword(Json *j, const char *w) {
  size_t n = strlen(w);
  if ((size_t)(j->end - j->p) >= n && !memcmp(j->p, w, n)) {
    j->p += n;
    return true;
  }
  return false;
}

// Skips one JSON value (of keys the format does not define), checking it.
static bool jskip(Json *j, int depth) {
  jws(j);
  if (depth > 64)
    return jfail(j, "values nested more than 64 deep");
  if (j->p >= j->end)
    return jfail(j, "unexpected end");
  char c = *j->p;
  if (c == '"') {
    free(jstring(j));
    return !j->err;
  }
  if (c == '{' || c == '[') {
    char close = c == '{' ? '}' : ']';
    j->p++;
    if (jchar(j, close))
      return true;
    do {
      if (c == '{') {
        free(jstring(j));
        if (j->err || !jchar(j, ':'))
          return jfail(j, "expected ':'");
      }
      if (!jskip(j, depth + 1))
        return false;
    } while (jchar(j, ','));
    return jchar(j, close) || jfail(j, "expected ',' or '%c'", close);
  }
  if (jword(j, "true") || jword(j, "false") || jword(j, "null"))
    return true;
  // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
  const char *s = j->p, *e = j->end;
  if (s < e && *s == '-')
    s++;
  if (s < e && *s == '0')
    s++;
  else if (s < e && *s >= '1' && *s <= '9')
    while (s < e && *s >= '0' && *s <= '9')
      s++;
  else
    return jfail(j, "expected a value");
  if (s < e && *s == '.') {
    if (++s >= e || *s < '0' || *s > '9')
      return jfail(j, "bad number");
    while (s < e && *s >= '0' && *s <= '9')
      s++;
  }
  if (s < e && (*s == 'e' || *s == 'E')) {
    s++;
    if (s < e && (*s == '+' || *s == '-'))
      s++;
    if (s >= e || *s < '0' || *s > '9')
      return jfail(j, "bad number");
    while (s < e && *s >= '0' && *s <= '9')
      s++;
  }
  j->p = s;
  return true;
}

static bool parse_entry(Json *j, StEntry *e) {
  if (!jchar(j, '{'))
    return jfail(j, "tensor '%s': an entry must be an object", e->name);
  bool have_dtype = false, have_shape = false, have_offsets = false;
  if (!jchar(j, '}')) {
    do {
      char *key = jstring(j);
      if (!key || !jchar(j, ':'))
        return free(key), jfail(j, "expected ':'");
      bool *seen = !strcmp(key, "dtype")          ? &have_dtype
                   : !strcmp(key, "shape")        ? &have_shape
                   : !strcmp(key, "data_offsets") ? &have_offsets
                                                  : NULL;
      if (seen && *seen)
        return jfail(j, "tensor '%s' has two \"%s\" keys", e->name, key), free(key), false;
      if (seen)
        *seen = true;
      if (!strcmp(key, "dtype")) {
        char *d = jstring(j);
        if (!d)
          return free(key), false;
        e->size = dtype_size(d);
        if (!e->size)
          return jfail(j, "tensor '%s' has an unknown dtype '%.20s'", e->name, d), free(d),
                 free(key), false;
        snprintf(e->dtype, sizeof e->dtype, "%s", d);
        free(d);
      } else if (!strcmp(key, "shape")) {
        if (!jchar(j, '['))
          return free(key), jfail(j, "tensor '%s': the shape must be a list", e->name);
        e->rank = 0;
        if (!jchar(j, ']')) {
          do {
            if (e->rank == ST_MAX_RANK)
              return free(key),
                     jfail(j, "tensor '%s' has more than %d dimensions", e->name, ST_MAX_RANK);
            if (!jcount(j, &e->dim[e->rank], "a dimension"))
              return free(key), false;
            e->rank++;
          } while (jchar(j, ','));
          if (!jchar(j, ']'))
            return free(key), jfail(j, "tensor '%s': expected ']' after the shape", e->name);
        }
      } else if (!strcmp(key, "data_offsets")) {
        if (!jchar(j, '[') || !jcount(j, &e->begin, "an offset") || !jchar(j, ',') ||
            !jcount(j, &e->end, "an offset") || !jchar(j, ']'))
          return free(key), jfail(j, "tensor '%s': data_offsets must be [begin, end]", e->name);
      } else if (!jskip(j, 1)) {
        return free(key), false;
      }
      free(key);
    } while (jchar(j, ','));
    if (!jchar(j, '}'))
      return jfail(j, "tensor '%s': expected ',' or '}'", e->name);
  }
  if (!have_dtype || !have_shape || !have_offsets)
    return jfail(j, "tensor '%s' lacks %s", e->name,
                 !have_dtype ? "a dtype" : !have_shape ? "a shape" : "data_offsets");
  return true;
}

static bool parse_meta(Json *j, StFile *f) {
  if (jword(j, "null"))
    return true;
  if (!jchar(j, '{'))
    return jfail(j, "__metadata__ must be an object of strings");
  if (jchar(j, '}'))
    return true;
  int cap = 0;
  do {
    char *k = jstring(j);
    if (!k || !jchar(j, ':'))
      return free(k), jfail(j, "expected ':'");
    for (int i = 0; i < f->nmeta; i++)
      if (!strcmp(f->meta_key[i], k))
        return jfail(j, "__metadata__ has two \"%s\" keys", k), free(k), false;
    jws(j);
    char *v = j->p < j->end && *j->p == '"' ? jstring(j) : NULL;
    if (!v)
      return jfail(j, "__metadata__ \"%s\" must be a string", k), free(k), false;
    if (f->nmeta == cap) {
      cap = cap ? 2 * cap : 8;
      char **keys = realloc(f->meta_key, sizeof(char *) * cap);
      if (keys)
        f->meta_key = keys;
      char **vals = keys ? realloc(f->meta_val, sizeof(char *) * cap) : NULL;
      if (vals)
        f->meta_val = vals;
      if (!vals)
        return jfail(j, "out of memory for %d metadata keys", cap), free(k), free(v), false;
    }
    f->meta_key[f->nmeta] = k;
    f->meta_val[f->nmeta++] = v;
    if (f->nmeta > 4096) // metadata is a few strings; a linear scan stays cheap
      return jfail(j, "__metadata__ has more than 4096 keys");
  } while (jchar(j, ','));
  return jchar(j, '}') || jfail(j, "__metadata__: expected ',' or '}'");
}

// The whole header: one object, then nothing but whitespace (the padding).
static bool parse_header(Json *j, StFile *f) {
  if (j->p >= j->end || *j->p != '{')
    return jfail(j, "the header must start with '{'");
  j->p++;
  int cap = 0;
  bool have_meta = false;
  if (!jchar(j, '}')) {
    do {
      char *key = jstring(j);
      if (!key || !jchar(j, ':'))
        return free(key), jfail(j, "expected ':'");
      if (!strcmp(key, "__metadata__")) {
        free(key);
        if (have_meta)
          return jfail(j, "two \"__metadata__\" keys");
        have_meta = true;
        if (!parse_meta(j, f))
          return false;
        continue;
      }
      if (f->n == cap) {
        cap = cap ? 2 * cap : 16;
        StEntry *e = realloc(f->e, sizeof(StEntry) * cap);
        if (!e)
          return free(key), jfail(j, "out of memory for %d tensor entries", cap);
        f->e = e;
      }
      StEntry *e = &f->e[f->n++];
      memset(e, 0, sizeof *e);
      e->name = key;
      e->order = f->n - 1;
      if (!parse_entry(j, e))
        return false;
    } while (jchar(j, ','));
    if (!jchar(j, '}'))
      return jfail(j, "expected ',' or '}'");
  }
  jws(j);
  if (j->p != j->end)
    return jfail(j, "text after the header's object");
  return true;
}

// "[2,3]" in buf (messages of a reader that returns must not leak).
static const char *shape_text(char buf[ST_MAX_RANK * 21 + 3], const StEntry *e) {
  int len = sprintf(buf, "[");
  for (int i = 0; i < e->rank; i++)
    len += sprintf(buf + len, "%s%lld", i ? "," : "", (long long)e->dim[i]);
  sprintf(buf + len, "]");
  return buf;
}

static int by_offset(const void *a, const void *b) {
  const StEntry *x = a, *y = b;
  if (x->begin != y->begin)
    return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end)
    return x->end < y->end ? -1 : 1;
  return x->order - y->order;
}

static int by_name(const void *a, const void *b) {
  return strcmp((*(const StEntry *const *)a)->name, (*(const StEntry *const *)b)->name);
}

// The specification's rules on the parsed header: unique names, sizes that
// agree with dtype and shape (every product checked for overflow), and
// data_offsets that tile the data section from 0, in order, without gaps
// or overlaps. Sets f->data_len.
static bool check_layout(StFile *f, char **err) {
  char shape[ST_MAX_RANK * 21 + 3];
  for (int i = 0; i < f->n; i++) {
    StEntry *e = &f->e[i];
    int64_t numel = 1, bytes;
    for (int d = 0; d < e->rank; d++)
      if (__builtin_mul_overflow(numel, e->dim[d], &numel))
        return fail(err, f->path, "tensor '%s': shape %s has more elements than 64 bits count",
                    e->name, shape_text(shape, e));
    if (__builtin_mul_overflow(numel, (int64_t)e->size, &bytes))
      return fail(err, f->path, "tensor '%s': %lld elements of %s are more bytes than 64 bits count",
                  e->name, (long long)numel, e->dtype);
    e->numel = numel;
    if (e->end < e->begin)
      return fail(err, f->path, "tensor '%s': data_offsets [%lld, %lld] end before they begin",
                  e->name, (long long)e->begin, (long long)e->end);
    if (e->end - e->begin != bytes)
      return fail(err, f->path,
                  "tensor '%s': data_offsets [%lld, %lld] hold %lld bytes, but shape %s of %s "
                  "needs %lld",
                  e->name, (long long)e->begin, (long long)e->end, (long long)(e->end - e->begin),
                  shape_text(shape, e), e->dtype, (long long)bytes);
  }
  if (f->n)
    qsort(f->e, f->n, sizeof *f->e, by_offset);
  int64_t pos = 0;
  for (int i = 0; i < f->n; i++) {
    StEntry *e = &f->e[i];
    if (e->begin != pos)
      return fail(err, f->path,
                  "tensor '%s': data_offsets [%lld, %lld] %s %lld (the tensors must tile the "
                  "data section in order, from offset 0)",
                  e->name, (long long)e->begin, (long long)e->end,
                  e->begin < pos ? "overlap the tensor before, which ends at"
                                 : "leave a gap after offset",
                  (long long)pos);
    pos = e->end;
  }
  f->data_len = pos;
  f->by_name = malloc(sizeof *f->by_name * (size_t)(f->n > 0 ? f->n : 1));
  if (!f->by_name)
    return fail(err, f->path, "out of memory for the index of %d tensors", f->n);
  for (int i = 0; i < f->n; i++)
    f->by_name[i] = &f->e[i];
  if (f->n)
    qsort(f->by_name, f->n, sizeof *f->by_name, by_name);
  for (int i = 1; i < f->n; i++)
    if (!strcmp(f->by_name[i - 1]->name, f->by_name[i]->name))
      return fail(err, f->path, "the name '%s' appears twice", f->by_name[i]->name);
  return true;
}

//
// Reading
//

// Reads up to n bytes (fewer only at the end of the input); false on an I/O
// error, errno set. A file in memory (st_open_mem) is read at offsets.
static bool read_some(const StFile *f, void *buf, size_t n, int64_t at, size_t *got) {
  *got = 0;
  if (f->mem) {
    int64_t left = at < f->mem_size ? f->mem_size - at : 0;
    *got = (int64_t)n < left ? n : (size_t)left;
    memcpy(buf, f->mem + at, *got);
    return true;
  }
  int fd = f->fd;
  while (*got < n) {
    ssize_t r = at >= 0 ? pread(fd, (char *)buf + *got, n - *got, at + (int64_t)*got)
                        : read(fd, (char *)buf + *got, n - *got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return false;
    if (r == 0)
      break;
    *got += (size_t)r;
  }
  return true;
}

StFile *st_open(const char *path, char **err) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    *err = xc_format("%s: cannot open: %s", path, strerror(errno));
    return NULL;
  }
  return st_open_fd(fd, path, err);
}

static StFile *open_source(StFile *f, const char *path, char **err);

StFile *st_open_fd(int fd, const char *path, char **err) {
  *err = NULL;
  StFile *f = calloc(1, sizeof *f);
  if (!f) {
    close(fd);
    fail(err, path, "out of memory");
    return NULL;
  }
  f->fd = fd;
  return open_source(f, path, err);
}

// The bytes of a safetensors file already in memory (a library's embedded
// weights), checked and read as a file's, without a copy; they must outlive
// the StFile.
StFile *st_open_mem(const void *data, int64_t size, const char *name, char **err) {
  *err = NULL;
  StFile *f = calloc(1, sizeof *f);
  if (!f) {
    fail(err, name, "out of memory");
    return NULL;
  }
  f->fd = -1;
  f->mem = data;
  f->mem_size = size;
  return open_source(f, name, err);
}

static StFile *open_source(StFile *f, const char *path, char **err) {
  char *header = NULL;
  struct stat st = {.st_mode = S_IFREG, .st_size = f->mem_size};
  f->path = strdup(path);
  if (!f->path) {
    fail(err, path, "out of memory");
    goto fail;
  }
  if (!f->mem && fstat(f->fd, &st) != 0) {
    fail(err, path, "cannot read: %s", strerror(errno));
    goto fail;
  }
  if (S_ISDIR(st.st_mode)) {
    fail(err, path, "is a directory, not a safetensors file");
    goto fail;
  }
  // Regular files are read at offsets; anything else (a pipe, a terminal,
  // a device) once, in order.
  f->seekable = S_ISREG(st.st_mode);
  uint8_t len8[8];
  size_t got;
  if (!read_some(f, len8, 8, f->seekable ? 0 : -1, &got)) {
    fail(err, path, "cannot read: %s", strerror(errno));
    goto fail;
  }
  if (got < 8) {
    fail(err, path, "not a safetensors file (%zu bytes, shorter than the header's length)", got);
    goto fail;
  }
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--)
    hlen = hlen << 8 | len8[i];
  if (hlen < 2 || hlen > ST_MAX_HEADER ||
      (f->seekable && hlen > (uint64_t)st.st_size - 8)) {
    char why[64] = "";
    if (hlen > ST_MAX_HEADER)
      snprintf(why, sizeof why, ", over the limit of %d", ST_MAX_HEADER);
    else if (f->seekable && hlen > (uint64_t)st.st_size - 8)
      snprintf(why, sizeof why, " in a file of %lld", (long long)st.st_size);
    fail(err, path, "not a safetensors file (a header of %llu bytes%s)", (unsigned long long)hlen,
         why);
    goto fail;
  }
  f->data_start = 8 + (int64_t)hlen;
  // A pipe's header grows as it arrives: a short input claiming a long
  // header costs what it sends, not what it claims.
  size_t cap = f->seekable ? hlen : hlen < 65536 ? hlen : 65536, have = 0;
  header = malloc(cap + 1);
  while (header && have < hlen) {
    if (have == cap) {
      cap = cap * 2 < hlen ? cap * 2 : hlen;
      char *more = realloc(header, cap + 1);
      if (!more) {
        free(header);
        header = NULL;
        break;
      }
      header = more;
    }
    if (!read_some(f, header + have, cap - have, f->seekable ? 8 + (int64_t)have : -1, &got)) {
      fail(err, path, "cannot read: %s", strerror(errno));
      goto fail;
    }
    have += got;
    if (got == 0)
      break;
  }
  if (!header) {
    fail(err, path, "out of memory for its header of %llu bytes", (unsigned long long)hlen);
    goto fail;
  }
  if (have < hlen) {
    fail(err, path, "the file ends inside its header (%zu of %llu bytes)", have,
         (unsigned long long)hlen);
    goto fail;
  }
  header[hlen] = '\0';
  Json j = {header, header + hlen, NULL};
  if (!parse_header(&j, f)) {
    fail(err, path, "malformed header: %s", j.err);
    free(j.err);
    goto fail;
  }
  if (!check_layout(f, err))
    goto fail;
  if (f->seekable && st.st_size - f->data_start != f->data_len) {
    int64_t extra = st.st_size - f->data_start - f->data_len;
    if (extra > 0)
      fail(err, path, "%lld bytes after the last tensor (the header's offsets end at %lld)",
           (long long)extra, (long long)f->data_len);
    else
      fail(err, path, "truncated: the tensors need %lld data bytes, the file holds %lld",
           (long long)f->data_len, (long long)(st.st_size - f->data_start));
    goto fail;
  }
  free(header);
  return f;
fail:
  free(header);
  st_free(f);
  return NULL;
}

void st_free(StFile *f) {
  if (!f)
    return;
  if (f->fd >= 0)
    close(f->fd);
  for (int i = 0; i < f->n; i++)
    free(f->e[i].name);
  for (int i = 0; i < f->nmeta; i++)
    free(f->meta_key[i]), free(f->meta_val[i]);
  free(f->meta_key);
  free(f->meta_val);
  free(f->e);
  free(f->by_name);
  free(f->path);
  free(f);
}

const StEntry *st_find(const StFile *f, const char *name) {
  int lo = 0, hi = f->by_name ? f->n : 0;
  while (lo < hi) {
    int mid = lo + (hi - lo) / 2, c = strcmp(f->by_name[mid]->name, name);
    if (!c)
      return f->by_name[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

const char *st_meta(const StFile *f, const char *key) {
  for (int i = 0; i < f->nmeta; i++)
    if (!strcmp(f->meta_key[i], key))
      return f->meta_val[i];
  return NULL;
}

// Reads n bytes at offset off of the data section. A pipe moves forward
// only: what lies before off is read and dropped.
static bool data_read(StFile *f, int64_t off, void *dst, size_t n, char **err) {
  size_t got;
  if (f->seekable) {
    if (!read_some(f, dst, n, f->data_start + off, &got))
      return fail(err, f->path, "cannot read: %s", strerror(errno));
    if (got < n)
      return fail(err, f->path, "the file shrank while being read");
    return true;
  }
  if (off < f->pos)
    return fail(err, f->path, "tensors of a pipe must be read in file order");
  char skip[16384];
  while (f->pos < off) {
    size_t k = off - f->pos < (int64_t)sizeof skip ? (size_t)(off - f->pos) : sizeof skip;
    if (!read_some(f, skip, k, -1, &got))
      return fail(err, f->path, "cannot read: %s", strerror(errno));
    f->pos += got;
    if (got < k)
      return fail(err, f->path, "the data ends after %lld of its %lld bytes", (long long)f->pos,
                  (long long)f->data_len);
  }
  if (!read_some(f, dst, n, -1, &got))
    return fail(err, f->path, "cannot read: %s", strerror(errno));
  f->pos += got;
  if (got < n)
    return fail(err, f->path, "the data ends after %lld of its %lld bytes", (long long)f->pos,
                (long long)f->data_len);
  return true;
}

bool st_read_raw(StFile *f, const StEntry *e, void *dst, char **err) {
  return data_read(f, e->begin, dst, (size_t)(e->end - e->begin), err);
}

float st_half_to_float(uint16_t h, bool bf16) {
  if (bf16) {
    uint32_t u = (uint32_t)h << 16;
    float v;
    memcpy(&v, &u, 4);
    return v;
  }
  int e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(m + 1024, e - 25);
  return (float)(h & 0x8000 ? -v : v);
}

bool st_read_f32(StFile *f, const StEntry *e, float *dst, char **err) {
  if (!st_is_float(e->dtype))
    return fail(err, f->path, "tensor '%s' has dtype %s, not a float type", e->name, e->dtype);
  if (!strcmp(e->dtype, "F32"))
    return st_read_raw(f, e, dst, err);
  // Other widths convert a chunk at a time.
  uint8_t buf[65536];
  int64_t per = (int64_t)sizeof buf / e->size;
  for (int64_t i = 0; i < e->numel; i += per) {
    int64_t k = e->numel - i < per ? e->numel - i : per;
    if (!data_read(f, e->begin + i * e->size, buf, (size_t)(k * e->size), err))
      return false;
    for (int64_t x = 0; x < k; x++) {
      if (e->size == 8) {
        double d;
        memcpy(&d, buf + 8 * x, 8);
        dst[i + x] = (float)d;
      } else {
        dst[i + x] = st_half_to_float((uint16_t)(buf[2 * x] | buf[2 * x + 1] << 8),
                                   !strcmp(e->dtype, "BF16"));
      }
    }
  }
  return true;
}

bool st_finish(StFile *f, char **err) {
  if (f->seekable)
    return true;
  char skip[16384];
  size_t got;
  while (f->pos < f->data_len) {
    int64_t left = f->data_len - f->pos;
    size_t k = left < (int64_t)sizeof skip ? (size_t)left : sizeof skip;
    if (!read_some(f, skip, k, -1, &got))
      return fail(err, f->path, "cannot read: %s", strerror(errno));
    f->pos += got;
    if (got < k)
      return fail(err, f->path, "the data ends after %lld of its %lld bytes", (long long)f->pos,
                  (long long)f->data_len);
  }
  if (!read_some(f, skip, 1, -1, &got))
    return fail(err, f->path, "cannot read: %s", strerror(errno));
  if (got)
    return fail(err, f->path, "bytes after the last tensor (the header's offsets end at %lld)",
                (long long)f->data_len);
  return true;
}

static int by_entry(const void *a, const void *b) {
  const StEntry *x = ((const StLoad *)a)->e, *y = ((const StLoad *)b)->e;
  return x < y ? -1 : x > y;
}

bool st_load(StFile *f, StLoad *l, int n, char **err) {
  if (n)
    qsort(l, n, sizeof *l, by_entry); // f->e is in file order
  for (int i = 0; i < n; i++)
    if (!(l[i].f32 ? st_read_f32(f, l[i].e, l[i].f32, err) : st_read_raw(f, l[i].e, l[i].raw, err)))
      return false;
  return st_finish(f, err);
}

//
// Writing
//

static void put_json_string(FILE *fp, const char *s) {
  fputc('"', fp);
  for (; *s; s++) {
    unsigned char c = *s;
    if (c == '"' || c == '\\')
      fprintf(fp, "\\%c", c);
    else if (c < 0x20)
      fprintf(fp, "\\u%04x", c);
    else
      fputc(c, fp);
  }
  fputc('"', fp);
}

static int64_t tensor_numel(const StTensor *t) {
  int64_t numel = 1;
  for (int d = 0; d < t->rank; d++)
    numel *= t->dim[d];
  return numel;
}

bool st_encode(const StTensor *t, int n, const char *const *meta_kv, int nmeta, StSink sink,
               void *ctx) {
  char *header;
  size_t hlen;
  FILE *h = open_memstream(&header, &hlen);
  if (!h)
    xc_die(NULL, "out of memory");
  fputc('{', h);
  if (nmeta) {
    fputs("\"__metadata__\":{", h);
    for (int i = 0; i < nmeta; i++) {
      if (i)
        fputc(',', h);
      put_json_string(h, meta_kv[2 * i]);
      fputc(':', h);
      put_json_string(h, meta_kv[2 * i + 1]);
    }
    fputc('}', h);
  }
  int64_t off = 0;
  for (int i = 0; i < n; i++) {
    if (i || nmeta)
      fputc(',', h);
    put_json_string(h, t[i].name);
    fprintf(h, ":{\"dtype\":\"%s\",\"shape\":[", t[i].i64 ? "I64" : "F32");
    for (int d = 0; d < t[i].rank; d++)
      fprintf(h, "%s%lld", d ? "," : "", (long long)t[i].dim[d]);
    int64_t bytes = tensor_numel(&t[i]) * (t[i].i64 ? 8 : 4);
    fprintf(h, "],\"data_offsets\":[%lld,%lld]}", (long long)off, (long long)(off + bytes));
    off += bytes;
  }
  fputc('}', h);
  // Pad with spaces so the data starts 8-byte aligned, as the reference
  // implementation does.
  while ((8 + ftell(h)) % 8)
    fputc(' ', h);
  if (fclose(h) != 0)
    xc_die(NULL, "out of memory");
  uint8_t len8[8];
  for (int i = 0; i < 8; i++)
    len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
  bool ok = sink(ctx, len8, 8) && sink(ctx, header, hlen);
  for (int i = 0; ok && i < n; i++) {
    int64_t numel = tensor_numel(&t[i]);
    ok = t[i].i64 ? sink(ctx, t[i].i64, (size_t)numel * 8) : sink(ctx, t[i].data, (size_t)numel * 4);
  }
  free(header);
  return ok;
}


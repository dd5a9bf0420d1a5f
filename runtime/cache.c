// The --cache of decoded photo folders: what every file of one view of a
// folder (its split, the model's input size, the classes) decoded to, or why
// it did not, in one file next to the data folder (beside it, not in it, so
// that torchvision's ImageFolder still reads the folder: PARENT/.xentcc-cache/)
// or else in the user's cache directory. Any doubt about the file is a miss, and a miss
// costs no more than the decoding it would have saved.
#define _GNU_SOURCE
#include "rt.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// Bump when the bytes a file decodes to can change (image.c) or when the
// file layout below changes.
enum { CACHE_VERSION = 1 };

static const char cache_magic[8] = "XCCACHE";

// The file: this header, the table (per file: int32 label, uint32 name
// length, uint32 error length, the name, the error; no error: it decoded),
// then c*h*w bytes for each file that decoded, in order. Integers are in the
// writer's byte order; another order reads as another version.
typedef struct {
  char magic[8];
  uint32_t version;
  uint32_t unused; // 0
  uint64_t key; // xc_cache_key
  int64_t n;    // files in the table
  int64_t table_bytes;
  int64_t pixel_bytes;
  uint64_t checksum; // hash_bytes over the table, then each decoded file's bytes
} CacheHeader;

_Static_assert(sizeof(CacheHeader) == 56, "CacheHeader has no padding");

enum { ENTRY_BYTES = 12 };

// FNV-1a over 64-bit words with a shift that folds the high bits down (the
// last bytes one at a time): every step is invertible, so one changed word
// always changes the hash, and pixels hash at memory speed.
static uint64_t hash_bytes(uint64_t h, const void *p, size_t n) {
  const uint8_t *b = p;
  for (; n >= 8; b += 8, n -= 8) {
    uint64_t w;
    memcpy(&w, b, 8);
    h = (h ^ w) * 0x100000001b3ull;
    h ^= h >> 29;
  }
  for (; n; b++, n--)
    h = (h ^ *b) * 0x100000001b3ull;
  return h;
}

static const uint64_t hash_start = 0xcbf29ce484222325ull;

static uint64_t hash_str(uint64_t h, const char *s) { return hash_bytes(h, s, strlen(s) + 1); }

static uint64_t hash_int(uint64_t h, int64_t v) { return hash_bytes(h, &v, sizeof v); }

// What names a view of a folder, and so its cache file: when the files
// change, the same file is rewritten instead of another one piling up.
static uint64_t slot_hash(const DataSpec *s, const char *format) {
  uint64_t h = hash_int(hash_start, CACHE_VERSION);
  char *real = realpath(s->path, NULL);
  h = hash_str(h, real ? real : s->path);
  free(real);
  h = hash_str(h, format);
  h = hash_int(hash_int(hash_int(h, s->c), s->h), s->w);
  h = hash_int(h, s->nclasses);
  for (int k = 0; k < s->nclasses; k++)
    h = hash_str(h, s->class_names[k]);
  uint32_t val_bits;
  memcpy(&val_bits, &s->val_split, 4);
  h = hash_int(hash_int(h, s->split), val_bits);
  h = hash_int(hash_int(h, (int64_t)s->split_seed), s->strict);
  return h;
}

// The slot (which holds the folder's real path) plus each file's name in the
// folder, size and times: the change time too, as a chmod or a copy that
// keeps the modification time can change what decodes.
uint64_t xc_cache_key(const DataSpec *s, const char *format, const FileList *l) {
  uint64_t h = hash_int(slot_hash(s, format), l->n);
  for (int64_t i = 0; i < l->n; i++) {
    struct stat st;
    int64_t size = -1, mtime = -1, ctime = -1;
    if (stat(l->path[i], &st) == 0) {
      size = st.st_size;
      mtime = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
      ctime = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec;
    }
    h = hash_int(hash_int(hash_int(hash_str(h, l->name[i]), size), mtime), ctime);
  }
  return h;
}

// Where the cache files are: 0, beside the data folder; 1,
// $XDG_CACHE_HOME/xentcc or ~/.cache/xentcc. NULL when there is no such place.
static char *cache_dir(const DataSpec *s, int where) {
  if (where == 0) {
    char *real = realpath(s->path, NULL);
    if (!real)
      return NULL;
    char *slash = strrchr(real, '/');
    char *dir = slash && slash != real ? xc_format("%.*s/.xentcc-cache", (int)(slash - real), real)
                                       : xc_strdup("/.xentcc-cache");
    free(real);
    return dir;
  }
  const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
  if (xdg && xdg[0] == '/') // the XDG spec ignores relative paths
    return xc_join(xdg, "xentcc");
  if (home && *home)
    return xc_format("%s/.cache/xentcc", home);
  return NULL;
}

static char *cache_file(const char *dir, const DataSpec *s, const char *format) {
  return xc_format("%s/%016llx.bin", dir, (unsigned long long)slot_hash(s, format));
}

static void note(const DataSpec *s, const char *fmt, ...) {
  if (s->quiet)
    return;
  va_list ap;
  va_start(ap, fmt);
  fflush(stdout);
  fprintf(stderr, "%s: note: ", xc_prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

// Checks the table against the file list and takes the errors from it;
// returns why the table is unusable, or NULL.
static const char *read_table(const char *table, int64_t n, const FileList *l, char **err,
                              int64_t *ndecoded) {
  const char *p = table, *end = table + n;
  *ndecoded = 0;
  for (int64_t i = 0; i < l->n; i++) {
    int32_t label;
    uint32_t name_len, err_len;
    if (end - p < ENTRY_BYTES)
      return "corrupt (short table)";
    memcpy(&label, p, 4), memcpy(&name_len, p + 4, 4), memcpy(&err_len, p + 8, 4);
    p += ENTRY_BYTES;
    if ((uint64_t)name_len + err_len > (uint64_t)(end - p))
      return "corrupt (table)";
    if (label != l->label[i] || name_len != strlen(l->name[i]) || memcmp(p, l->name[i], name_len))
      return "stale (another list of files)";
    p += name_len;
    if (err_len) {
      err[i] = xc_malloc(err_len + 1);
      memcpy(err[i], p, err_len);
      err[i][err_len] = '\0';
    } else {
      ++*ndecoded;
    }
    p += err_len;
  }
  return p == end ? NULL : "corrupt (table)";
}

// Reads one cache file into pixels and err; returns why it is unusable, or
// NULL.
static const char *read_cache(const char *path, uint64_t key, const FileList *l, size_t bytes,
                              uint8_t *pixels, char **err) {
  FILE *fp = fopen(path, "rb");
  if (!fp)
    return "unreadable";
  struct stat st;
  CacheHeader hd;
  const char *why = NULL;
  char *table = NULL;
  int64_t ndecoded;
  if (fstat(fileno(fp), &st) || fread(&hd, sizeof hd, 1, fp) != 1)
    why = "truncated";
  else if (memcmp(hd.magic, cache_magic, sizeof hd.magic))
    why = "not a cache file of xentcc";
  else if (hd.version != CACHE_VERSION)
    why = "written by another version of xentcc";
  else if (hd.key != key)
    why = "stale (the files changed)";
  else if (hd.n != l->n || hd.table_bytes < 0 || hd.pixel_bytes < 0 ||
           hd.table_bytes > st.st_size || hd.pixel_bytes > st.st_size ||
           (int64_t)sizeof hd + hd.table_bytes + hd.pixel_bytes != st.st_size)
    why = "truncated or corrupt (sizes)";
  if (!why) {
    table = xc_malloc(hd.table_bytes);
    if (fread(table, 1, hd.table_bytes, fp) != (size_t)hd.table_bytes)
      why = "truncated";
    else
      why = read_table(table, hd.table_bytes, l, err, &ndecoded);
    if (!why && hd.pixel_bytes != ndecoded * (int64_t)bytes)
      why = "corrupt (sizes)";
  }
  if (!why) {
    uint64_t sum = hash_bytes(hash_start, table, hd.table_bytes);
    for (int64_t i = 0; i < l->n && !why; i++) {
      if (err[i])
        continue;
      if (fread(pixels + i * bytes, 1, bytes, fp) != bytes)
        why = "truncated";
      sum = hash_bytes(sum, pixels + i * bytes, bytes);
    }
    if (!why && sum != hd.checksum)
      why = "corrupt (checksum)";
  }
  free(table);
  fclose(fp);
  if (why)
    for (int64_t i = 0; i < l->n; i++) {
      free(err[i]);
      err[i] = NULL;
    }
  return why;
}

bool xc_cache_load(const DataSpec *s, const char *format, uint64_t key, const FileList *l,
                   uint8_t *pixels, char **err) {
  size_t bytes = (size_t)s->c * s->h * s->w;
  char *bad = NULL;
  const char *why = NULL;
  for (int where = 0; where < 2; where++) {
    char *dir = cache_dir(s, where);
    char *path = dir ? cache_file(dir, s, format) : NULL;
    free(dir);
    if (path && xc_is_file(path)) {
      const char *w = read_cache(path, key, l, bytes, pixels, err);
      if (!w) {
        free(bad), free(path);
        return true;
      }
      if (!bad)
        bad = xc_strdup(path), why = w;
    }
    free(path);
  }
  if (bad)
    note(s, "cache %s is %s; decoding the images again", bad, why);
  free(bad);
  return false;
}

// Writes the file atomically: PATH.tmp.PID, fsync, rename over PATH, fsync
// the directory. False (errno set) on failure, leaving nothing behind.
static bool write_cache(const char *path, const CacheHeader *hd, const char *table,
                        const FileList *l, size_t bytes, const uint8_t *pixels, char *const *err) {
  char *tmp = xc_format("%s.tmp.%d", path, (int)getpid());
  FILE *fp = fopen(tmp, "wb");
  if (!fp) {
    int e = errno;
    free(tmp);
    errno = e;
    return false;
  }
  bool ok = fwrite(hd, sizeof *hd, 1, fp) == 1 &&
            fwrite(table, 1, hd->table_bytes, fp) == (size_t)hd->table_bytes;
  for (int64_t i = 0; ok && i < l->n; i++)
    if (!err[i])
      ok = fwrite(pixels + i * bytes, 1, bytes, fp) == bytes;
  ok = ok && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
  int e = errno;
  ok = fclose(fp) == 0 && ok;
  if (ok && rename(tmp, path) != 0)
    e = errno, ok = false;
  if (!ok) {
    unlink(tmp);
  } else {
    xc_sync_dir_of(path);
  }
  free(tmp);
  errno = e;
  return ok;
}

// mkdir -p: false (errno set) unless dir is a directory afterwards.
static bool make_dirs(char *dir) {
  for (char *p = dir + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      mkdir(dir, 0777);
      *p = '/';
    }
  if (mkdir(dir, 0777) != 0 && errno != EEXIST)
    return false;
  if (!xc_is_dir(dir)) {
    errno = ENOTDIR;
    return false;
  }
  return true;
}

void xc_cache_save(const DataSpec *s, const char *format, uint64_t key, const FileList *l,
                   const uint8_t *pixels, char *const *err) {
  static bool warned;
  size_t bytes = (size_t)s->c * s->h * s->w;
  char *table;
  size_t table_bytes;
  FILE *t = open_memstream(&table, &table_bytes);
  int64_t ndecoded = 0;
  for (int64_t i = 0; i < l->n; i++) {
    uint32_t name_len = (uint32_t)strlen(l->name[i]), err_len = err[i] ? strlen(err[i]) : 0;
    fwrite(&l->label[i], 4, 1, t), fwrite(&name_len, 4, 1, t), fwrite(&err_len, 4, 1, t);
    fwrite(l->name[i], 1, name_len, t);
    if (err_len)
      fwrite(err[i], 1, err_len, t);
    else
      ndecoded++;
  }
  fclose(t);
  CacheHeader hd = {.version = CACHE_VERSION, .key = key, .n = l->n};
  memcpy(hd.magic, cache_magic, sizeof hd.magic);
  hd.table_bytes = (int64_t)table_bytes;
  hd.pixel_bytes = ndecoded * (int64_t)bytes;
  hd.checksum = hash_bytes(hash_start, table, table_bytes);
  for (int64_t i = 0; i < l->n; i++)
    if (!err[i])
      hd.checksum = hash_bytes(hd.checksum, pixels + i * bytes, bytes);

  char *tried[2] = {NULL, NULL};
  int e = 0;
  for (int where = 0; where < 2; where++) {
    char *dir = cache_dir(s, where);
    if (!dir)
      continue;
    char *path = cache_file(dir, s, format);
    bool ok = make_dirs(dir) && write_cache(path, &hd, table, l, bytes, pixels, err);
    if (ok) {
      note(s, "cached %lld decoded images in %s", (long long)ndecoded, path);
      free(path), free(dir), free(table), free(tried[0]);
      return;
    }
    e = errno;
    tried[where] = dir;
    free(path);
  }
  if (!warned)
    xc_warn("make the data folder writable, or set XDG_CACHE_HOME to a writable directory",
            "cannot write the image cache in %s%s%s: %s; going on without it",
            tried[0] ? tried[0] : "", tried[0] && tried[1] ? " or " : "", tried[1] ? tried[1] : "",
            strerror(e));
  warned = true;
  free(tried[0]), free(tried[1]), free(table);
}

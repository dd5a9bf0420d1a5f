// The --cache of decoded photo folders: what every file of one view of a
// folder (its split, the model's input size, the classes) decoded to, or why
// it did not, in one file next to the data folder (beside it, not in it, so
// that torchvision's ImageFolder still reads the folder: PARENT/.xentcc-cache/)
// or else in the user's cache directory. Any doubt about the file is a miss,
// and a miss costs no more than the decoding it would have saved.
//
// The cache must not be a way to attack its user: a directory is used only
// if it is the user's own and nobody else can write to it; every file in it
// is opened through the directory's descriptor without following symbolic
// links; a cache file is written under a name no one else can take and
// renamed into place; and it is bound by SHA-256 to the bytes of every photo
// it stands for, so a photo changed in any way is a miss.
#define _GNU_SOURCE
#include "rt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

// Bump when the bytes a file decodes to can change (image.c) or when the
// file layout below changes.
enum { CACHE_VERSION = 2 };

static const char cache_magic[8] = "XCCACHE";

// The file: this header, the table (per file: int32 label, uint32 name
// length, uint32 error length, uint32 0, int64 the source image's pixels
// (w*h; 0 when it did not decode), the name, the error; no error: it
// decoded), then c*h*w bytes for each file that decoded, in order. Integers
// are in the writer's byte order; another order reads as another version.
typedef struct {
  char magic[8];
  uint32_t version;
  uint32_t unused;   // 0
  uint8_t key[32];   // xc_cache_key
  int64_t n;         // files in the table
  int64_t table_bytes;
  int64_t pixel_bytes;
  uint8_t checksum[32]; // SHA-256 of the header up to here, the table, the pixels
} CacheHeader;

_Static_assert(sizeof(CacheHeader) == 104, "CacheHeader has no padding");

enum { ENTRY_BYTES = 24 };

static void hash_int(XcSha256 *h, int64_t v) { xc_sha256_update(h, &v, sizeof v); }

static void hash_str(XcSha256 *h, const char *s) { xc_sha256_update(h, s, strlen(s) + 1); }

// What names a view of a folder, and so its cache file: when the files
// change, the same file is rewritten instead of another one piling up.
static void hash_view(XcSha256 *h, const DataSpec *s, const char *format) {
  hash_str(h, "xentcc image cache");
  hash_int(h, CACHE_VERSION);
  char *real = realpath(s->path, NULL);
  hash_str(h, real ? real : s->path);
  free(real);
  hash_str(h, format);
  hash_int(h, s->c), hash_int(h, s->h), hash_int(h, s->w);
  hash_int(h, s->nclasses);
  for (int k = 0; k < s->nclasses; k++)
    hash_str(h, s->class_names[k]);
  uint32_t val_bits;
  memcpy(&val_bits, &s->val_split, 4);
  hash_int(h, s->split), hash_int(h, val_bits), hash_int(h, (int64_t)s->split_seed);
  hash_int(h, s->strict);
  hash_int(h, xc_pixel_limit(s->max_image_pixels)); // which files are refused
}

static char *cache_name(const DataSpec *s, const char *format) {
  XcSha256 h;
  uint8_t sum[32];
  xc_sha256_init(&h);
  hash_view(&h, s, format);
  xc_sha256_final(&h, sum);
  char name[16 + 5];
  for (int i = 0; i < 8; i++)
    snprintf(name + 2 * i, 3, "%02x", sum[i]);
  return xc_format("%s.bin", name);
}

// SHA-256 of a file's bytes, or false and *err when it cannot be read (the
// error then stands for the file in the key).
static bool hash_file(const char *path, uint8_t sum[32], char **err) {
  int fd = xc_open_regular(path, err);
  if (fd < 0)
    return false;
  XcSha256 h;
  xc_sha256_init(&h);
  static _Thread_local uint8_t buf[1 << 16];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0)
    xc_sha256_update(&h, buf, (size_t)n);
  if (n < 0)
    *err = xc_format("cannot read: %s", strerror(errno));
  close(fd);
  xc_sha256_final(&h, sum);
  return n == 0;
}

// The view plus every file's name, label and bytes: a photo edited in
// place, even with its size and times put back, is a miss, and a touched
// one is not. Hashing the bytes costs a read of every photo, on all
// threads: for the 1,600 Kaggle cat and dog JPEGs (38 MB) 0.07-0.10 s on
// this project's two cores (SHA-256 at 230 MB/s a core), against 0.9-1.5 s
// to decode them; a hit went from 0.03 s (sizes and times) to 0.12 s.
void xc_cache_key(const DataSpec *s, const char *format, const FileList *l, uint8_t key[32]) {
  uint8_t(*sums)[32] = xc_malloc(32 * (size_t)(l->n + 1));
  char **err = xc_calloc(l->n + 1, sizeof(char *));
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < l->n; i++)
    hash_file(l->path[i], sums[i], &err[i]);
  XcSha256 h;
  xc_sha256_init(&h);
  hash_view(&h, s, format);
  hash_int(&h, l->n);
  for (int64_t i = 0; i < l->n; i++) {
    hash_str(&h, l->name[i]);
    hash_int(&h, l->label[i]);
    hash_int(&h, err[i] != NULL);
    if (err[i])
      hash_str(&h, err[i]);
    else
      xc_sha256_update(&h, sums[i], 32);
    free(err[i]);
  }
  xc_sha256_final(&h, key);
  free(err);
  free(sums);
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

// A cache directory must be the user's own and writable by nobody else:
// whoever can write to it could plant a symbolic link where a run writes,
// or a cache file with other pixels. Returns a descriptor of it (everything
// after goes through it, so renaming the path away changes nothing), or -1
// and *why.
static int open_own_dir(const char *dir, const char **why) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  struct stat st;
  if (fd < 0) {
    *why = errno == ELOOP ? "a symbolic link" : strerror(errno);
    return -1;
  }
  if (fstat(fd, &st) != 0)
    *why = strerror(errno);
  else if (st.st_uid != geteuid())
    *why = "owned by another user";
  else if (st.st_mode & (S_IWGRP | S_IWOTH))
    *why = "writable by others";
  else
    return fd;
  close(fd);
  return -1;
}

// mkdir -p, each directory it makes private (0700, the XDG spec's mode for
// the cache home: decoded photos may be private too). Failures show when
// the directory is opened.
static void make_dirs(const char *dir) {
  char *d = xc_strdup(dir);
  for (char *p = d + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      mkdir(d, 0700);
      *p = '/';
    }
  mkdir(d, 0700);
  free(d);
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

// Checks the table against the file list and takes the errors and sizes
// from it; returns why the table is unusable, or NULL.
static const char *read_table(const char *table, int64_t n, const FileList *l, char **err,
                              int64_t *pixels, int64_t *ndecoded) {
  const char *p = table, *end = table + n;
  *ndecoded = 0;
  for (int64_t i = 0; i < l->n; i++) {
    int32_t label;
    uint32_t name_len, err_len;
    if (end - p < ENTRY_BYTES)
      return "corrupt (short table)";
    memcpy(&label, p, 4), memcpy(&name_len, p + 4, 4), memcpy(&err_len, p + 8, 4);
    memcpy(&pixels[i], p + 16, 8);
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
// NULL. fd is closed.
static const char *read_cache(int fd, const uint8_t key[32], const FileList *l, size_t bytes,
                              uint8_t *pixels, char **err, int64_t *source_pixels) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
    close(fd);
    return "not a regular file of yours";
  }
  FILE *fp = fdopen(fd, "rb");
  if (!fp) {
    close(fd);
    return "unreadable";
  }
  CacheHeader hd;
  const char *why = NULL;
  char *table = NULL;
  int64_t ndecoded;
  if (fread(&hd, sizeof hd, 1, fp) != 1)
    why = "truncated";
  else if (memcmp(hd.magic, cache_magic, sizeof hd.magic))
    why = "not a cache file of xentcc";
  else if (hd.version != CACHE_VERSION)
    why = "written by another version of xentcc";
  else if (memcmp(hd.key, key, 32))
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
      why = read_table(table, hd.table_bytes, l, err, source_pixels, &ndecoded);
    if (!why && hd.pixel_bytes != ndecoded * (int64_t)bytes)
      why = "corrupt (sizes)";
  }
  if (!why) {
    XcSha256 h;
    uint8_t sum[32];
    xc_sha256_init(&h);
    xc_sha256_update(&h, &hd, offsetof(CacheHeader, checksum));
    xc_sha256_update(&h, table, hd.table_bytes);
    for (int64_t i = 0; i < l->n && !why; i++) {
      if (err[i])
        continue;
      if (fread(pixels + i * bytes, 1, bytes, fp) != bytes)
        why = "truncated";
      xc_sha256_update(&h, pixels + i * bytes, bytes);
    }
    xc_sha256_final(&h, sum);
    if (!why && memcmp(sum, hd.checksum, 32))
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

bool xc_cache_load(const DataSpec *s, const char *format, const uint8_t key[32], const FileList *l,
                   uint8_t *pixels, char **err, int64_t *source_pixels) {
  size_t bytes = (size_t)s->c * s->h * s->w;
  char *name = cache_name(s, format), *bad = NULL;
  const char *why = NULL;
  bool hit = false;
  for (int where = 0; where < 2 && !hit; where++) {
    char *dir = cache_dir(s, where);
    const char *skip;
    int dfd = dir ? open_own_dir(dir, &skip) : -1;
    int fd = dfd >= 0 ? openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC) : -1;
    if (dfd >= 0 && !(fd < 0 && errno == ENOENT)) {
      const char *w = fd < 0 ? (errno == ELOOP ? "a symbolic link" : strerror(errno))
                             : read_cache(fd, key, l, bytes, pixels, err, source_pixels);
      hit = !w;
      if (w && !bad)
        bad = xc_format("%s/%s", dir, name), why = w;
    }
    if (dfd >= 0)
      close(dfd);
    free(dir);
  }
  if (!hit && bad)
    note(s, "cache %s is %s; decoding the images again", bad, why);
  free(bad);
  free(name);
  return hit;
}

// Temporary files: NAME.tmp while a run writes NAME.bin (and NAME.bin.tmp.PID
// from xentcc before version 2 of the cache).
static bool is_temp_name(const char *name) {
  size_t n = strlen(name);
  return (n > 4 && !strcmp(name + n - 4, ".tmp")) || strstr(name, ".tmp.");
}

// Removes the temporary files of runs that died writing them: a live writer
// holds a lock on its file (flock, released when the process ends, however
// it ends). The caller holds the directory's lock, under which writers
// create and lock their files, so a file found unlocked is not about to be
// locked. Anything else under a temporary name (a symbolic link, a FIFO)
// is no writer's either.
static void remove_stale_temps(int dfd) {
  int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
  if (!d) {
    if (fd >= 0)
      close(fd);
    return;
  }
  struct dirent *e;
  while ((e = readdir(d))) {
    struct stat st;
    if (!is_temp_name(e->d_name) || fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        S_ISDIR(st.st_mode))
      continue;
    int tfd = -1;
    if (S_ISREG(st.st_mode)) {
      tfd = openat(dfd, e->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
      if (tfd < 0 || flock(tfd, LOCK_EX | LOCK_NB) != 0) {
        if (tfd >= 0)
          close(tfd);
        continue;
      }
    }
    unlinkat(dfd, e->d_name, 0);
    if (tfd >= 0)
      close(tfd);
  }
  closedir(d);
}

// Writes the file atomically in the directory dfd: NAME.tmp, created only
// if no such name exists (so never through a symbolic link), locked while
// it is written, fsync, renamed over NAME (which replaces a symbolic link
// there rather than following it), fsync of the directory. False (errno
// set; EEXIST: another run is writing it) on failure, leaving nothing.
static bool write_cache(int dfd, const char *name, const CacheHeader *hd, const char *table,
                        const FileList *l, size_t bytes, const uint8_t *pixels, char *const *err) {
  char *tmp = xc_format("%.*s.tmp", (int)(strlen(name) - 4), name);
  flock(dfd, LOCK_EX);
  remove_stale_temps(dfd);
  int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd >= 0)
    flock(fd, LOCK_EX);
  int e = errno;
  flock(dfd, LOCK_UN);
  FILE *fp = fd >= 0 ? fdopen(fd, "wb") : NULL;
  if (!fp) {
    if (fd >= 0) {
      e = errno;
      unlinkat(dfd, tmp, 0);
      close(fd);
    }
    free(tmp);
    errno = e;
    return false;
  }
  bool ok = fwrite(hd, sizeof *hd, 1, fp) == 1 &&
            fwrite(table, 1, hd->table_bytes, fp) == (size_t)hd->table_bytes;
  for (int64_t i = 0; ok && i < l->n; i++)
    if (!err[i])
      ok = fwrite(pixels + i * bytes, 1, bytes, fp) == bytes;
  ok = ok && fflush(fp) == 0 && fsync(fd) == 0;
  e = errno;
  if (ok && renameat(dfd, tmp, dfd, name) != 0)
    e = errno, ok = false;
  if (!ok)
    unlinkat(dfd, tmp, 0);
  else
    fsync(dfd);
  fclose(fp); // after the rename: the lock covers the file until it has its name
  free(tmp);
  errno = e;
  return ok;
}

void xc_cache_save(const DataSpec *s, const char *format, const uint8_t key[32], const FileList *l,
                   const uint8_t *pixels, char *const *err, const int64_t *source_pixels) {
  static bool warned;
  size_t bytes = (size_t)s->c * s->h * s->w;
  char *table;
  size_t table_bytes;
  FILE *t = open_memstream(&table, &table_bytes);
  int64_t ndecoded = 0;
  for (int64_t i = 0; i < l->n; i++) {
    uint32_t name_len = (uint32_t)strlen(l->name[i]), err_len = err[i] ? strlen(err[i]) : 0;
    uint32_t zero = 0;
    int64_t px = err[i] ? 0 : source_pixels[i];
    fwrite(&l->label[i], 4, 1, t), fwrite(&name_len, 4, 1, t), fwrite(&err_len, 4, 1, t);
    fwrite(&zero, 4, 1, t), fwrite(&px, 8, 1, t);
    fwrite(l->name[i], 1, name_len, t);
    if (err_len)
      fwrite(err[i], 1, err_len, t);
    else
      ndecoded++;
  }
  fclose(t);
  CacheHeader hd = {.version = CACHE_VERSION, .n = l->n};
  memcpy(hd.magic, cache_magic, sizeof hd.magic);
  memcpy(hd.key, key, 32);
  hd.table_bytes = (int64_t)table_bytes;
  hd.pixel_bytes = ndecoded * (int64_t)bytes;
  XcSha256 h;
  xc_sha256_init(&h);
  xc_sha256_update(&h, &hd, offsetof(CacheHeader, checksum));
  xc_sha256_update(&h, table, table_bytes);
  for (int64_t i = 0; i < l->n; i++)
    if (!err[i])
      xc_sha256_update(&h, pixels + i * bytes, bytes);
  xc_sha256_final(&h, hd.checksum);

  // Why each place was passed over, "DIR (reason)", for the note or the
  // warning; NULL once the file is written (or left to another run).
  char *name = cache_name(s, format), *passed = xc_strdup("");
  for (int where = 0; where < 2 && passed; where++) {
    char *dir = cache_dir(s, where);
    if (!dir)
      continue;
    make_dirs(dir);
    const char *why;
    int dfd = open_own_dir(dir, &why);
    if (dfd >= 0 && write_cache(dfd, name, &hd, table, l, bytes, pixels, err)) {
      note(s, "cached %lld decoded images in %s/%s%s%s%s", (long long)ndecoded, dir, name,
           *passed ? " (not in " : "", passed, *passed ? ")" : "");
      free(passed), passed = NULL;
    } else if (dfd >= 0 && errno == EEXIST) {
      note(s, "another run is writing the image cache %s/%s; leaving it to that run", dir, name);
      free(passed), passed = NULL;
    } else {
      char *p = xc_format("%s%s%s (%s)", passed, *passed ? " or " : "", dir,
                          dfd >= 0 ? strerror(errno) : why);
      free(passed), passed = p;
    }
    if (dfd >= 0)
      close(dfd);
    free(dir);
  }
  if (passed && !warned) {
    xc_warn("the cache goes in a directory of yours that nobody else can write to: beside the "
            "data folder, or $XDG_CACHE_HOME/xentcc (~/.cache/xentcc)",
            "cannot write the image cache in %s; going on without it",
            *passed ? passed : "any directory (no data folder path, no HOME)");
    warned = true;
  }
  free(passed), free(name), free(table);
}

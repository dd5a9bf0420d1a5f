// Tests of the decoded-image cache (cache.c, DataSpec.cache) on small photo
// folders written into the build tree: a cached load equals an uncached one
// byte for byte (pixels, labels, file names, skipped files and their
// messages) without decoding; changed or added files, truncated and garbage
// cache files are misses; a read-only data folder falls back to
// $XDG_CACHE_HOME; the two parts of a validation split are cached apart.
// Then the attacks: symbolic links planted where a run writes, a cache
// directory others can write to, a tampered cache file, a photo changed
// with its times kept, temporary files left by dead runs; and SHA-256.
// xc_files_decoded, which data.c counts, tells a hit from a miss.
#include "../common/capture.h"
#include "rt.h"
#include "testdata.h"

#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *const rgb_names[] = {"red", "green", "blue"};

static char *tmpdir(void) { return td_mkdtemp(TEST_BINARY_DIR); }


// A folder of 12 photos of 12x10 (JPEG and PNG) plus three bad files: a
// truncated JPEG, a text file named .jpg, and a name with no class in it.
// Data folders are made one level down in a fresh temporary directory, as
// the cache goes beside the data folder: PARENT/.xentcc-cache.
static char *data_dir(void) {
  char *dir = xc_join(tmpdir(), "data");
  td_mkdir(dir);
  return dir;
}

static char *cache_dir_for(const char *dir) {
  const char *slash = strrchr(dir, '/');
  return xc_format("%.*s/.xentcc-cache", (int)(slash - dir), dir);
}

static char *parent_of(const char *dir) {
  return xc_format("%.*s", (int)(strrchr(dir, '/') - dir), dir);
}

static char *photo_folder(void) {
  char *dir = data_dir();
  td_write_photo_folder(dir, rgb_names, 3, 4, 12, 10);
  td_truncate_copy(xc_join(dir, "red.0.jpg"), xc_join(dir, "red.99.jpg"), 0.4);
  td_write_bytes(xc_join(dir, "blue.readme.jpg"), "not an image", 12);
  td_write_bytes(xc_join(dir, "notes.txt"), "hello", 5);
  return dir;
}

static DataSpec spec_for(const char *path, bool cache) {
  DataSpec s = {0};
  s.path = path;
  s.train = true;
  s.c = 3, s.h = 8, s.w = 8;
  s.nclasses = 3;
  s.class_names = rgb_names;
  s.quiet = true;
  s.cache = cache;
  return s;
}

// Loads s and says whether the images were decoded (a miss) or not (a hit).
static Dataset *load(const DataSpec *s, bool *decoded) {
  int64_t before = xc_files_decoded;
  Dataset *d = xc_load_dataset(s);
  *decoded = xc_files_decoded != before;
  return d;
}

static void assert_same(const Dataset *a, const Dataset *b) {
  ck_assert_str_eq(a->format, b->format);
  ck_assert_int_eq(a->n, b->n);
  ck_assert_int_eq(a->nbad, b->nbad);
  ck_assert(a->c == b->c && a->h == b->h && a->w == b->w);
  ck_assert_int_eq(memcmp(a->pixels, b->pixels, (size_t)a->n * a->c * a->h * a->w), 0);
  ck_assert_int_eq(memcmp(a->labels, b->labels, sizeof(int32_t) * a->n), 0);
  for (int64_t i = 0; i < a->n; i++)
    ck_assert_str_eq(a->files[i], b->files[i]);
}

// The cache files (*.bin) in dir: how many, and the path of the last one.
// Temporary files must never be left behind.
static int cache_files(const char *dir, char **last) {
  DIR *d = opendir(dir);
  int n = 0;
  if (last)
    *last = NULL;
  if (!d)
    return 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t len = strlen(e->d_name);
    ck_assert_msg(!strstr(e->d_name, ".tmp.") && !(len > 4 && !strcmp(e->d_name + len - 4, ".tmp")),
                  "left behind: %s", e->d_name);
    if (len > 4 && !strcmp(e->d_name + len - 4, ".bin")) {
      n++;
      if (last)
        *last = xc_join(dir, e->d_name);
    }
  }
  closedir(d);
  return n;
}

// Exit status 10 when the load decoded, 20 when it came from the cache.
static void load_in_child(void *spec) {
  bool decoded;
  Dataset *d = load(spec, &decoded);
  _exit(d->n == 12 ? (decoded ? 10 : 20) : 1);
}

START_TEST(cache_equals_decoding) {
  char *dir = photo_folder(), *cdir = cache_dir_for(dir);
  DataSpec off = spec_for(dir, false), on = spec_for(dir, true);
  // Messages first, in children: a cache hit reports the same skipped files
  // as decoding does; only the first cached run adds a note on the cache.
  off.quiet = on.quiet = false;
  int st_off, st_first, st_hit;
  char *err_off = run_capturing_stderr(load_in_child, &off, &st_off);
  char *err_first = run_capturing_stderr(load_in_child, &on, &st_first);
  char *err_hit = run_capturing_stderr(load_in_child, &on, &st_hit);
  ck_assert_int_eq(st_off, 10);
  ck_assert_int_eq(st_first, 10);
  ck_assert_int_eq(st_hit, 20);
  ck_assert_msg(strstr(err_off, "skipping") && strstr(err_off, "red.99.jpg") &&
                    strstr(err_off, "blue.readme.jpg") && strstr(err_off, "skipped 3"),
                "%s", err_off);
  ck_assert_str_eq(err_hit, err_off);
  ck_assert_msg(strstr(err_first, "note: cached 12 decoded images in"), "%s", err_first);
  ck_assert_int_eq(cache_files(cdir, NULL), 1);

  off.quiet = on.quiet = true;
  bool decoded;
  Dataset *ref = load(&off, &decoded);
  ck_assert(decoded);
  ck_assert_int_eq(ref->n, 12);
  ck_assert_int_eq(ref->nbad, 3);
  for (int round = 0; round < 2; round++) {
    Dataset *d = load(&on, &decoded);
    ck_assert(!decoded);
    assert_same(d, ref);
    xc_free_dataset(d);
  }
  // The folder named by a relative path is the same folder.
  size_t root = strlen(TEST_BINARY_DIR);
  ck_assert(!strncmp(dir, TEST_BINARY_DIR, root) && dir[root] == '/');
  ck_assert_int_eq(chdir(TEST_BINARY_DIR), 0);
  DataSpec rel = spec_for(dir + root + 1, true);
  Dataset *d = load(&rel, &decoded);
  ck_assert(!decoded);
  assert_same(d, ref);
  xc_free_dataset(d);
  // With the cache removed, a cached load decodes and writes it again.
  char *file;
  ck_assert_int_eq(cache_files(cdir, &file), 1);
  ck_assert_int_eq(unlink(file), 0);
  d = load(&on, &decoded);
  ck_assert(decoded);
  assert_same(d, ref);
  ck_assert_int_eq(cache_files(cdir, NULL), 1);
  xc_free_dataset(d);
  xc_free_dataset(ref);
}
END_TEST

START_TEST(cache_image_folder) {
  char *dir = data_dir();
  td_write_image_folder(dir, rgb_names, 3, 3, 9, 7);
  DataSpec off = spec_for(dir, false), on = spec_for(dir, true);
  bool decoded;
  Dataset *ref = load(&off, &decoded);
  Dataset *first = load(&on, &decoded);
  ck_assert(decoded);
  // The cache is beside the tree, not in it: torchvision's ImageFolder,
  // which would take any folder for a class, still reads the tree.
  ck_assert(!xc_is_dir(xc_join(dir, ".xentcc-cache")) && xc_is_dir(cache_dir_for(dir)));
  ck_assert_str_eq(xc_detect_format(dir), "imagefolder");
  Dataset *hit = load(&on, &decoded);
  ck_assert(!decoded);
  ck_assert_int_eq(ref->n, 9);
  ck_assert_str_eq(hit->files[0], "blue/0000.png");
  assert_same(first, ref);
  assert_same(hit, ref);
}
END_TEST

// A changed photo or an added file is a miss, and the same cache file is
// rewritten rather than another one added; a touched photo (same bytes) is
// still a hit; another model input size is another cache file.
START_TEST(cache_invalidation) {
  char *dir = photo_folder(), *cdir = cache_dir_for(dir);
  DataSpec on = spec_for(dir, true);
  bool decoded;
  xc_free_dataset(load(&on, &decoded));
  ck_assert(decoded);
  xc_free_dataset(load(&on, &decoded));
  ck_assert(!decoded);

  // touch: same bytes, another modification time.
  struct timespec times[2] = {{1000000000, 5}, {1000000000, 5}};
  ck_assert_int_eq(utimensat(AT_FDCWD, xc_join(dir, "green.2.jpg"), times, 0), 0);
  xc_free_dataset(load(&on, &decoded));
  ck_assert(!decoded);
  // Another photo under the same name.
  uint8_t *other = td_image(1, 9, 12, 10, 3);
  td_write_jpeg(xc_join(dir, "green.2.jpg"), other, 12, 10, 3, "rgb", 95);
  free(other);
  xc_free_dataset(load(&on, &decoded));
  ck_assert(decoded);
  Dataset *d = load(&on, &decoded);
  ck_assert(!decoded);
  ck_assert_int_eq(d->n, 12);
  xc_free_dataset(d);
  ck_assert_int_eq(cache_files(cdir, NULL), 1);

  uint8_t *img = td_image(1, 7, 12, 10, 3);
  td_write_png(xc_join(dir, "green.7.png"), img, 12, 10, 3, "rgb");
  free(img);
  d = load(&on, &decoded);
  ck_assert(decoded);
  ck_assert_int_eq(d->n, 13);
  xc_free_dataset(d);
  d = load(&on, &decoded);
  ck_assert(!decoded);
  ck_assert_int_eq(d->n, 13);
  DataSpec off = spec_for(dir, false);
  Dataset *ref = load(&off, &decoded);
  assert_same(d, ref);
  ck_assert_int_eq(cache_files(cdir, NULL), 1);

  on.h = on.w = 6;
  xc_free_dataset(load(&on, &decoded));
  ck_assert(decoded);
  ck_assert_int_eq(cache_files(cdir, NULL), 2);
}
END_TEST

// A cache file cut short, overwritten with garbage, emptied or with one
// pixel changed is a miss (decoded again and rewritten), never a crash.
START_TEST(cache_corrupt_files) {
  char *dir = photo_folder(), *cdir = cache_dir_for(dir);
  DataSpec on = spec_for(dir, true), off = spec_for(dir, false);
  bool decoded;
  Dataset *ref = load(&off, &decoded);
  xc_free_dataset(load(&on, &decoded));
  char *file;
  ck_assert_int_eq(cache_files(cdir, &file), 1);
  long len;
  char *good = read_all(file, &len);
  ck_assert_int_gt(len, 12 * 192);

  char *garbage = xc_malloc(len);
  XcRng rng;
  xc_rng_seed(&rng, 1, 0);
  for (long i = 0; i < len; i++)
    garbage[i] = (char)xc_rng_next(&rng);
  char *flipped = xc_malloc(len);
  memcpy(flipped, good, len);
  flipped[len - 100] ^= 1; // a pixel of the last image
  struct {
    const char *what;
    const char *bytes;
    long n;
  } cases[] = {
      {"truncated in the pixels", good, len / 2},
      {"truncated in the header", good, 20},
      {"empty", good, 0},
      {"garbage", garbage, len},
      {"garbage after a good header", NULL, len},
      {"a changed pixel", flipped, len},
  };
  char *mixed = xc_malloc(len);
  memcpy(mixed, garbage, len);
  memcpy(mixed, good, 56);
  cases[4].bytes = mixed;
  for (int c = 0; c < 6; c++) {
    td_write_bytes(file, cases[c].bytes, cases[c].n);
    Dataset *d = load(&on, &decoded);
    ck_assert_msg(decoded, "%s: not a miss", cases[c].what);
    assert_same(d, ref);
    xc_free_dataset(d);
    long now;
    ck_assert_msg(!memcmp(read_all(file, &now), good, len) && now == len, "%s: not rewritten",
                  cases[c].what);
    d = load(&on, &decoded);
    ck_assert(!decoded);
    xc_free_dataset(d);
  }
}
END_TEST

// A data folder the run cannot write to: the cache goes to
// $XDG_CACHE_HOME/xentcc (created). With nowhere to write, one warning and
// the run goes on.
static void load_twice_unwritable(void *dir) {
  DataSpec s = spec_for(dir, true);
  s.quiet = false;
  bool decoded;
  Dataset *a = load(&s, &decoded), *b = load(&s, &decoded);
  _exit(a->n == 12 && b->n == 12 && decoded ? 0 : 1);
}

static void make_read_only(const char *dir) {
  // Root writes through permissions; a file where the cache directory
  // would go stops it as surely.
  if (geteuid() == 0)
    td_write_bytes(cache_dir_for(dir), "x", 1);
  ck_assert_int_eq(chmod(parent_of(dir), 0555), 0);
}

START_TEST(cache_read_only_data) {
  char *dir = photo_folder(), *xdg = xc_join(tmpdir(), "xdg");
  make_read_only(dir);
  setenv("XDG_CACHE_HOME", "/dev/null/nowhere", 1);
  int status;
  char *err = run_capturing_stderr(load_twice_unwritable, dir, &status);
  ck_assert_msg(status == 0, "status %d:\n%s", status, err);
  char *w = strstr(err, "cannot write the image cache");
  ck_assert_msg(w && strstr(err, "/dev/null/nowhere/xentcc") && strstr(err, "hint:"), "%s", err);
  ck_assert_msg(!strstr(w + 1, "cannot write the image cache"), "warned twice:\n%s", err);

  setenv("XDG_CACHE_HOME", xdg, 1);
  DataSpec on = spec_for(dir, true), off = spec_for(dir, false);
  bool decoded;
  Dataset *ref = load(&off, &decoded);
  xc_free_dataset(load(&on, &decoded));
  ck_assert(decoded);
  char *xdir = xc_join(xdg, "xentcc");
  ck_assert_int_eq(cache_files(xdir, NULL), 1);
  Dataset *d = load(&on, &decoded);
  ck_assert(!decoded);
  assert_same(d, ref);
  chmod(parent_of(dir), 0755);
}
END_TEST

// The training and the validation part of a split are cached apart, and
// each equals its uncached load.
START_TEST(cache_val_split) {
  char *dir = photo_folder(), *cdir = cache_dir_for(dir);
  DataSpec on = spec_for(dir, true);
  on.val_split = 0.25f;
  on.split_seed = 3;
  DataSpec off = on;
  off.cache = false;
  bool decoded;
  Dataset *part[2];
  for (int p = 0; p < 2; p++) {
    on.split = off.split = p ? XC_SPLIT_VAL : XC_SPLIT_TRAIN;
    Dataset *ref = load(&off, &decoded);
    xc_free_dataset(load(&on, &decoded));
    ck_assert(decoded);
    part[p] = load(&on, &decoded);
    ck_assert(!decoded);
    assert_same(part[p], ref);
  }
  ck_assert_int_eq(cache_files(cdir, NULL), 2);
  ck_assert_int_eq(part[0]->n + part[1]->n, 12);
  for (int i = 0; i < part[1]->n; i++)
    for (int j = 0; j < part[0]->n; j++)
      ck_assert_str_ne(part[1]->files[i], part[0]->files[j]);
  // Another split seed is another pair of cache files.
  on.split_seed = 4;
  xc_free_dataset(load(&on, &decoded));
  ck_assert(decoded);
  ck_assert_int_eq(cache_files(cdir, NULL), 3);
}
END_TEST

// CIFAR-10 and IDX files are bytes already: nothing to cache.
START_TEST(cache_only_folders) {
  char *dir = data_dir();
  td_write_cifar(xc_join(dir, "data_batch_1.bin"), 5, 3, 0);
  DataSpec s = spec_for(dir, true);
  s.h = s.w = 32;
  Dataset *d = xc_load_dataset(&s);
  ck_assert_int_eq(d->n, 5);
  ck_assert(!xc_is_dir(cache_dir_for(dir)));
}
END_TEST

//
// A cache that cannot be turned against its user
//

// The file's bytes, or "" when it is absent.
static char *contents(const char *path) { return read_all(path, NULL); }

static bool is_symlink(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0 && S_ISLNK(st.st_mode);
}

static bool is_regular(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0 && S_ISREG(st.st_mode);
}

// The cache file's name after a first run ("0123456789abcdef.bin").
static char *cache_name(const DataSpec *on, const char *cdir) {
  bool decoded;
  xc_free_dataset(load(on, &decoded));
  char *file;
  ck_assert_int_eq(cache_files(cdir, &file), 1);
  return xc_strdup(xc_basename(file));
}

// Another user who can write to the cache directory plants symbolic links
// to the victim's files at every name a run writes there: the cache file,
// its temporary file, and the temporary file of xentcc before version 2 of
// the cache (NAME.bin.tmp.PID). The run must replace the links, never write
// through them. The same for the cache directory itself: a link there to
// another directory of the user's is not used.
START_TEST(cache_symlinks_planted) {
  char *dir = photo_folder(), *cdir = cache_dir_for(dir), *top = parent_of(dir);
  DataSpec on = spec_for(dir, true), off = spec_for(dir, false);
  setenv("XDG_CACHE_HOME", xc_join(top, "xdg"), 1);
  char *name = cache_name(&on, cdir);
  ck_assert_int_eq(unlink(xc_join(cdir, name)), 0);
  char *victim = xc_join(top, "victim.txt");
  td_write_bytes(victim, "precious", 8);
  const char *planted[] = {name, xc_format("%.16s.tmp", name),
                           xc_format("%s.tmp.%d", name, (int)getpid())};
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(symlink(victim, xc_join(cdir, planted[i])), 0);
  bool decoded;
  Dataset *ref = load(&off, &decoded);
  Dataset *d = load(&on, &decoded);
  ck_assert(decoded);
  assert_same(d, ref);
  ck_assert_str_eq(contents(victim), "precious");
  // The cache file replaced the link; the temporary names are gone.
  ck_assert(is_regular(xc_join(cdir, name)));
  for (int i = 1; i < 3; i++)
    ck_assert_msg(!is_symlink(xc_join(cdir, planted[i])), "%s is still there", planted[i]);
  d = load(&on, &decoded);
  ck_assert(!decoded);
  assert_same(d, ref);

  // .xentcc-cache a link to another directory: the cache goes to XDG.
  char *dir2 = xc_join(top, "data2"), *elsewhere = xc_join(top, "elsewhere");
  td_mkdir(dir2);
  td_write_photo_folder(dir2, rgb_names, 3, 1, 12, 10);
  ck_assert_int_eq(mkdir(elsewhere, 0700), 0);
  ck_assert_int_eq(rename(cdir, xc_join(top, "old-cache")), 0);
  ck_assert_int_eq(symlink(elsewhere, cdir), 0);
  DataSpec on2 = spec_for(dir2, true);
  xc_free_dataset(load(&on2, &decoded));
  ck_assert(decoded);
  ck_assert_int_eq(cache_files(elsewhere, NULL), 0);
  ck_assert_int_eq(cache_files(xc_join(top, "xdg/xentcc"), NULL), 1);
  xc_free_dataset(load(&on2, &decoded));
  ck_assert(!decoded);
}
END_TEST

// Loads s in this process (a child forked after OpenMP started could hang)
// with stderr going to a file; returns what was written there.
static char *load_capturing(const DataSpec *s, bool *decoded) {
  char path[] = "/tmp/xentcc-test-XXXXXX";
  int fd = mkstemp(path), saved = dup(2);
  ck_assert(fd >= 0 && saved >= 0);
  fflush(stderr);
  dup2(fd, 2);
  xc_free_dataset(load(s, decoded));
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  close(fd);
  char *text = read_all(path, NULL);
  unlink(path);
  return text;
}

// A cache directory others can write to (or, for root, one owned by another
// user) is neither read nor written: the cache goes to $XDG_CACHE_HOME,
// itself created private. With no private place at all, one warning.
START_TEST(cache_dir_not_private) {
  char *dir = photo_folder(), *cdir = cache_dir_for(dir), *top = parent_of(dir);
  char *xdg = xc_join(top, "xdg"), *xdir = xc_join(xdg, "xentcc");
  setenv("XDG_CACHE_HOME", xdg, 1);
  DataSpec on = spec_for(dir, true), off = spec_for(dir, false);
  bool decoded;
  Dataset *ref = load(&off, &decoded);
  char *name = cache_name(&on, cdir), *file = xc_join(cdir, name);
  long len;
  char *good = read_all(file, &len);
  ck_assert_int_eq(chmod(cdir, 0777), 0);
  on.quiet = false;
  char *err = load_capturing(&on, &decoded);
  ck_assert_msg(decoded, "the cache writable by others was used:\n%s", err);
  ck_assert_msg(strstr(err, "writable by others"), "%s", err);
  on.quiet = true;
  ck_assert_int_eq(cache_files(xdir, NULL), 1);
  Dataset *d = load(&on, &decoded);
  ck_assert(!decoded);
  assert_same(d, ref);
  struct stat st;
  ck_assert_int_eq(stat(xdir, &st), 0);
  ck_assert_int_eq(st.st_mode & 0777, 0700);
  long now;
  ck_assert(!memcmp(read_all(file, &now), good, len) && now == len); // not rewritten

  // Group-writable is as bad.
  ck_assert_int_eq(chmod(cdir, 0770), 0);
  ck_assert_int_eq(unlink(xc_join(xdir, name)), 0);
  xc_free_dataset(load(&on, &decoded));
  ck_assert(decoded);
  if (geteuid() == 0) {
    // Root's run and a directory of another user's.
    ck_assert_int_eq(chmod(cdir, 0700), 0);
    ck_assert_int_eq(chown(cdir, 12345, 12345), 0);
    ck_assert_int_eq(unlink(xc_join(xdir, name)), 0);
    xc_free_dataset(load(&on, &decoded));
    ck_assert(decoded);
    ck_assert_int_eq(chown(cdir, 0, 0), 0);
  }
  // Nowhere private: one warning, and the run goes on.
  ck_assert_int_eq(chmod(cdir, 0777), 0);
  ck_assert_int_eq(chmod(xdir, 0777), 0);
  on.quiet = false;
  err = load_capturing(&on, &decoded);
  ck_assert(decoded);
  ck_assert_msg(strstr(err, "cannot write the image cache") && strstr(err, "writable by others"),
                "%s", err);
}
END_TEST

// hash_bytes of cache version 1: FNV-1a over 64-bit words.
static uint64_t fnv_words(uint64_t h, const uint8_t *b, size_t n) {
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

// Whoever could write a cache file could change its pixels and recompute a
// checksum they know: a version 1 cache (FNV-1a) took such a file. Same
// size, the last image's pixels changed, the checksum redone: a miss.
START_TEST(cache_tampered_file) {
  char *dir = photo_folder(), *cdir = cache_dir_for(dir);
  DataSpec on = spec_for(dir, true), off = spec_for(dir, false);
  bool decoded;
  Dataset *ref = load(&off, &decoded);
  char *file = xc_join(cdir, cache_name(&on, cdir));
  long len;
  uint8_t *bytes = (uint8_t *)read_all(file, &len);
  // Version 1: a 56-byte header, table_bytes at 32, the checksum at 48.
  // Version 2: 104 bytes, table_bytes at 56, the checksum at 72.
  uint32_t version;
  memcpy(&version, bytes + 8, 4);
  int header = version == 1 ? 56 : 104, at_table = version == 1 ? 32 : 56;
  int at_sum = version == 1 ? 48 : 72;
  int64_t table;
  memcpy(&table, bytes + at_table, 8);
  ck_assert(table > 0 && header + table < len);
  for (long i = len - 192; i < len; i++)
    bytes[i] = (uint8_t)(255 - bytes[i]);
  uint64_t sum = fnv_words(0xcbf29ce484222325ull, bytes + header, table);
  sum = fnv_words(sum, bytes + header + table, len - header - table);
  memcpy(bytes + at_sum, &sum, 8);
  td_write_bytes(file, bytes, len);
  Dataset *d = load(&on, &decoded);
  ck_assert_msg(decoded, "the tampered cache file was used");
  assert_same(d, ref);
}
END_TEST

// Two files of other bytes with the same size, modification time and
// change time (set in the same tick of the kernel's coarse clock; tried
// again until they are).
static void twin_files(const char *a, const char *b, const char *bytes_a, const char *bytes_b,
                       long n) {
  struct timespec t[2] = {{1500000000, 0}, {1500000000, 0}};
  for (int attempt = 0; attempt < 1000; attempt++) {
    td_write_bytes(a, bytes_a, n);
    td_write_bytes(b, bytes_b, n);
    ck_assert(utimensat(AT_FDCWD, a, t, 0) == 0 && utimensat(AT_FDCWD, b, t, 0) == 0);
    struct stat sa, sb;
    ck_assert(stat(a, &sa) == 0 && stat(b, &sb) == 0);
    if (sa.st_ctim.tv_sec == sb.st_ctim.tv_sec && sa.st_ctim.tv_nsec == sb.st_ctim.tv_nsec)
      return;
  }
  ck_abort_msg("could not make two files with the same change time");
}

// A photo whose bytes changed is a miss even when its size and times did
// not: edited in place with its modification time put back, or (as with
// git-annex or DVC, whose photos are links into a store) a link turned to
// another file of the same size and times, which a key of sizes and times
// (cache version 1) took for the same photo.
START_TEST(cache_changed_bytes_same_times) {
  char *dir = photo_folder(), *top = parent_of(dir);
  DataSpec on = spec_for(dir, true), off = spec_for(dir, false);
  bool decoded;
  xc_free_dataset(load(&on, &decoded));
  ck_assert(decoded);

  // In place: one byte of the JPEG's data changed, the time put back.
  char *photo = xc_join(dir, "green.2.jpg");
  struct stat st;
  ck_assert_int_eq(stat(photo, &st), 0);
  long len;
  char *bytes = read_all(photo, &len);
  bytes[len - 20] ^= 0x10;
  td_write_bytes(photo, bytes, len);
  struct timespec t[2] = {st.st_atim, st.st_mtim};
  ck_assert_int_eq(utimensat(AT_FDCWD, photo, t, 0), 0);
  Dataset *ref = load(&off, &decoded);
  Dataset *d = load(&on, &decoded);
  ck_assert(decoded);
  assert_same(d, ref);

  // Links into a store: red.0.jpg -> store/a, then -> store/b.
  char *store = xc_join(top, "store"), *a = xc_join(store, "a"), *b = xc_join(store, "b");
  td_mkdir(store);
  char *red = xc_join(dir, "red.0.jpg");
  char *bytes_a = read_all(red, &len), *bytes_b = xc_malloc(len);
  memcpy(bytes_b, bytes_a, len);
  for (long i = len / 2; i < len - 2; i++) // the second half of the data: other pixels
    if ((uint8_t)bytes_b[i] < 0xf0 && (uint8_t)bytes_b[i - 1] != 0xff)
      bytes_b[i] ^= 0x07;
  twin_files(a, b, bytes_a, bytes_b, len);
  ck_assert_int_eq(unlink(red), 0);
  ck_assert_int_eq(symlink(a, red), 0);
  xc_free_dataset(load(&on, &decoded)); // the cache holds store/a's pixels now
  xc_free_dataset(load(&on, &decoded));
  ck_assert(!decoded);
  char *link = xc_join(dir, "link.tmp");
  ck_assert(symlink(b, link) == 0 && rename(link, red) == 0);
  ref = load(&off, &decoded);
  d = load(&on, &decoded);
  ck_assert_msg(decoded, "a photo with other bytes was taken from the cache");
  assert_same(d, ref);
}
END_TEST

// Temporary files of runs that died (an unlocked NAME.tmp, another view's,
// NAME.bin.tmp.PID of cache version 1) are removed by the next write; one
// a live run holds (locked) is left alone, and the cache left to that run.
START_TEST(cache_stale_temporaries) {
  char *dir = photo_folder(), *cdir = cache_dir_for(dir);
  DataSpec on = spec_for(dir, true);
  char *name = cache_name(&on, cdir), *tmp = xc_format("%.16s.tmp", name);
  const char *stale[] = {tmp, "0123456789abcdef.tmp", xc_format("%s.tmp.99999", name)};
  for (int i = 0; i < 3; i++)
    td_write_bytes(xc_join(cdir, stale[i]), "half a cache", 12);
  ck_assert_int_eq(unlink(xc_join(cdir, name)), 0);
  bool decoded;
  xc_free_dataset(load(&on, &decoded));
  ck_assert(decoded);
  ck_assert_int_eq(cache_files(cdir, NULL), 1); // and no temporary files

  int fd = open(xc_join(cdir, tmp), O_WRONLY | O_CREAT | O_EXCL, 0600);
  ck_assert(fd >= 0 && flock(fd, LOCK_EX) == 0);
  ck_assert_int_eq(unlink(xc_join(cdir, name)), 0);
  on.quiet = false;
  char *err = load_capturing(&on, &decoded);
  ck_assert(decoded);
  ck_assert_msg(strstr(err, "another run is writing"), "%s", err);
  on.quiet = true;
  ck_assert(is_regular(xc_join(cdir, tmp)) && !xc_is_file(xc_join(cdir, name)));
  close(fd);
  xc_free_dataset(load(&on, &decoded)); // the writer died: its file goes
  ck_assert(decoded);
  ck_assert_int_eq(cache_files(cdir, NULL), 1);
}
END_TEST

//
// SHA-256
//

static char *hex(const uint8_t sum[32]) {
  static char s[65];
  for (int i = 0; i < 32; i++)
    sprintf(s + 2 * i, "%02x", sum[i]);
  return s;
}

// FIPS 180-4's examples (NIST's "SHA256.pdf" and "SHA2_Additional.pdf"),
// plus lengths at the padding's edges (55, 56, 63, 64, 119, 120 bytes: the
// length fits in the last block or needs another), from Python's hashlib;
// any split of the input into updates gives the same hash.
START_TEST(sha256_vectors) {
  uint8_t sum[32];
  static const struct {
    const char *msg;
    const char *want;
  } fips[] = {
      {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
      {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
      {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrl"
       "mnopqrsmnopqrstnopqrstu",
       "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
  };
  for (int i = 0; i < 4; i++) {
    xc_sha256(fips[i].msg, strlen(fips[i].msg), sum);
    ck_assert_str_eq(hex(sum), fips[i].want);
    size_t n = strlen(fips[i].msg);
    for (size_t cut = 0; cut <= n; cut++) {
      XcSha256 h;
      xc_sha256_init(&h);
      xc_sha256_update(&h, fips[i].msg, cut);
      xc_sha256_update(&h, fips[i].msg + cut, n - cut);
      xc_sha256_final(&h, sum);
      ck_assert_str_eq(hex(sum), fips[i].want);
    }
  }
  // One million 'a', in updates of 1, 7, 64 and 1000 bytes.
  char *a = xc_malloc(1000000);
  memset(a, 'a', 1000000);
  xc_sha256(a, 1000000, sum);
  ck_assert_str_eq(hex(sum), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  static const size_t steps[] = {1, 7, 64, 1000};
  for (int k = 0; k < 4; k++) {
    XcSha256 h;
    xc_sha256_init(&h);
    for (size_t at = 0; at < 1000000; at += steps[k])
      xc_sha256_update(&h, a + at, 1000000 - at < steps[k] ? 1000000 - at : steps[k]);
    xc_sha256_final(&h, sum);
    ck_assert_str_eq(hex(sum), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  }
  static const struct {
    size_t n;
    const char *want;
  } edges[] = {
      {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
      {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
      {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
      {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
      {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
      {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
  };
  for (int i = 0; i < 6; i++) {
    xc_sha256(a, edges[i].n, sum);
    ck_assert_msg(!strcmp(hex(sum), edges[i].want), "%zu bytes", edges[i].n);
  }
  free(a);
}
END_TEST

int main(void) {
  Suite *s = suite_create("runtime_cache");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, cache_equals_decoding);
  tcase_add_test(tc, cache_image_folder);
  tcase_add_test(tc, cache_invalidation);
  tcase_add_test(tc, cache_corrupt_files);
  tcase_add_test(tc, cache_read_only_data);
  tcase_add_test(tc, cache_val_split);
  tcase_add_test(tc, cache_only_folders);
  tcase_add_test(tc, cache_symlinks_planted);
  tcase_add_test(tc, cache_dir_not_private);
  tcase_add_test(tc, cache_tampered_file);
  tcase_add_test(tc, cache_changed_bytes_same_times);
  tcase_add_test(tc, cache_stale_temporaries);
  tcase_add_test(tc, sha256_vectors);
  suite_add_tcase(s, tc);
  return run_suite(s);
}

// Tests of the decoded-image cache (cache.c, DataSpec.cache) on small photo
// folders written into the build tree: a cached load equals an uncached one
// byte for byte (pixels, labels, file names, skipped files and their
// messages) without decoding; changed or added files, truncated and garbage
// cache files are misses; a read-only data folder falls back to
// $XDG_CACHE_HOME; the two parts of a validation split are cached apart;
// SHA-256, which the cache is to name photos by.
// xc_files_decoded, which data.c counts, tells a hit from a miss.
#include "../common/capture.h"
#include "rt.h"
#include "testdata.h"

#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
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
    ck_assert_msg(!strstr(e->d_name, ".tmp."), "left behind: %s", e->d_name);
    size_t len = strlen(e->d_name);
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

// A changed modification time or an added file is a miss, and the same
// cache file is rewritten rather than another one added; another model
// input size is another cache file.
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
  tcase_add_test(tc, sha256_vectors);
  suite_add_tcase(s, tc);
  SRunner *r = srunner_create(s);
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? 1 : 0;
}

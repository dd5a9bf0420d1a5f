// Unit tests of the runtime's pieces: safetensors round trips and malformed
// files, default initialisation, the PRNG and shuffles, xc_parallel_for's
// chunks, every loader on small files written into the build tree (CIFAR
// .bin, IDX plain and .gz, PNG and JPEG variants, broken files, folders and
// ImageFolder trees, validation splits), PIL-exact resizing, ToTensor +
// Normalize with augmentation, and the metrics (checked by hand).
#include "../common/capture.h"
#include "rt.h"
#include "testdata.h"

#include <check.h>
#include <dirent.h>
#include <math.h>
#include <omp.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char *tmpdir(void) { return td_mkdtemp(TEST_BINARY_DIR); }

static void assert_dies(void (*fn)(void *), void *arg, const char *want1, const char *want2) {
  int status;
  char *err = run_capturing_stderr(fn, arg, &status);
  ck_assert_msg(status == 1, "exit status %d, stderr:\n%s", status, err);
  ck_assert_msg(strstr(err, want1), "expected '%s' in:\n%s", want1, err);
  if (want2)
    ck_assert_msg(strstr(err, want2), "expected '%s' in:\n%s", want2, err);
  ck_assert_msg(strstr(err, "hint:") || strstr(err, "usage:"), "no hint in:\n%s", err);
}

//
// util.c
//

static jmp_buf died;
static int deaths;
static noreturn void die_back(void) {
  deaths++;
  longjmp(died, 1);
}

static void die_unhooked(void *arg) {
  xc_set_die_hook(die_back);
  xc_set_die_hook(NULL);
  xc_die("a hint", "no hook: exit(1)");
}

// A fuzzer's hook gets control instead of exit(1), after the message.
START_TEST(die_hook) {
  xc_set_die_hook(die_back);
  if (!setjmp(died))
    xc_die(NULL, "hooked: %d", 1);
  xc_set_die_hook(NULL);
  ck_assert_int_eq(deaths, 1);
  assert_dies(die_unhooked, NULL, "error: no hook: exit(1)", NULL);
}
END_TEST

//
// safetensors
//

START_TEST(safetensors_round_trip) {
  char *dir = tmpdir(), *path = xc_join(dir, "w.safetensors");
  float a[6] = {1, -2.5f, 3e-8f, INFINITY, 0, 7}, b[1] = {42};
  int64_t da[2] = {2, 3}, db[1] = {1};
  StTensor t[] = {{"conv1.weight", 2, da, a, NULL}, {"we\"ird\\name", 1, db, b, NULL}};
  const char *meta[] = {"format", "pt", "step", "12"};
  ck_assert(st_write(path, t, 2, meta, 2));
  char *err;
  StFile *f = st_open(path, &err);
  ck_assert_msg(f, "%s", err);
  ck_assert_int_eq(f->n, 2);
  const StEntry *e = st_find(f, "conv1.weight");
  ck_assert_ptr_nonnull(e);
  ck_assert_str_eq(e->dtype, "F32");
  ck_assert_int_eq(e->rank, 2);
  ck_assert_int_eq(e->dim[0], 2);
  ck_assert_int_eq(e->dim[1], 3);
  float got[6];
  ck_assert(st_read_raw(f, e, got, &err));
  ck_assert_int_eq(memcmp(got, a, sizeof a), 0);
  e = st_find(f, "we\"ird\\name");
  ck_assert_ptr_nonnull(e);
  ck_assert(st_read_raw(f, e, got, &err));
  ck_assert_int_eq(memcmp(got, b, sizeof b), 0);
  ck_assert_str_eq(st_meta(f, "step"), "12");
  ck_assert_str_eq(st_meta(f, "format"), "pt");
  st_free(f);
  // The data section starts 8-byte aligned, and the directory holds the
  // file alone: no temporary is left.
  char *raw = read_all(path, NULL);
  uint64_t hlen;
  memcpy(&hlen, raw, 8);
  ck_assert_int_eq((8 + hlen) % 8, 0);
  DIR *d = opendir(dir);
  int entries = 0;
  for (struct dirent *de; (de = readdir(d));)
    entries += de->d_name[0] != '.';
  closedir(d);
  ck_assert_int_eq(entries, 1);
}
END_TEST

// A file as Python's safetensors writes it: keys sorted, metadata first,
// spaces, another dtype; and a bare F64 tensor that loads converted.
START_TEST(safetensors_foreign_file) {
  char *dir = tmpdir(), *path = xc_join(dir, "py.safetensors");
  const char *header = "{\"__metadata__\": {\"format\": \"pt\"}, \"fc.bias\": {\"dtype\": \"F64\", "
                       "\"shape\": [2], \"data_offsets\": [0, 16]}, \"fc.n\": {\"dtype\": \"I64\","
                       " \"shape\": [], \"data_offsets\": [16, 24]}}";
  size_t hlen = strlen(header);
  uint8_t buf[512] = {0};
  for (int i = 0; i < 8; i++)
    buf[i] = (uint8_t)(hlen >> (8 * i));
  memcpy(buf + 8, header, hlen);
  double v[2] = {0.25, -3.0};
  memcpy(buf + 8 + hlen, v, 16);
  td_write_bytes(path, buf, (long)(8 + hlen + 24));
  char *err;
  StFile *f = st_open(path, &err);
  ck_assert_msg(f, "%s", err);
  XcTensorInfo info = {"fc.bias", 1, {2}, 1, XC_INIT_ZEROS, 0};
  float block[3] = {9, 9, 9};
  st_load_into(f, block, &info, 1, "parameter");
  ck_assert(block[0] == 9 && block[1] == 0.25f && block[2] == -3.0f);
  st_free(f);
}
END_TEST

START_TEST(safetensors_malformed) {
  char *dir = tmpdir(), *path = xc_join(dir, "bad.safetensors"), *err;
  const char *cases[] = {
      "",                          // empty
      "\x10\0\0\0\0\0\0\0{}",      // header longer than the file
      "\x02\0\0\0\0\0\0\0[]",      // not an object
      "\x05\0\0\0\0\0\0\0{\"a\":", // truncated JSON
  };
  long lens[] = {0, 10, 10, 13};
  for (int i = 0; i < 4; i++) {
    td_write_bytes(path, cases[i], lens[i]);
    ck_assert_msg(!st_open(path, &err), "case %d parsed", i);
    ck_assert_ptr_nonnull(err);
  }
  // Offsets outside the data, and a size that disagrees with the shape.
  const char *h1 = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,80]}}";
  const char *h2 = "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}";
  const char *hs[] = {h1, h2};
  for (int i = 0; i < 2; i++) {
    uint8_t buf[256] = {0};
    size_t n = strlen(hs[i]);
    buf[0] = (uint8_t)n;
    memcpy(buf + 8, hs[i], n);
    td_write_bytes(path, buf, (long)(8 + n + 8));
    ck_assert(!st_open(path, &err));
    ck_assert_msg(strstr(err, "'x'"), "%s", err);
  }
  ck_assert(!st_open(xc_join(dir, "missing.safetensors"), &err));
  ck_assert_msg(strstr(err, "cannot open"), "%s", err);
}
END_TEST

static void save_and_load(const char *path, float *params, float *state) {
  xc_save_weights(path, &xc_model, params, state, NULL);
  xc_load_weights(path, &xc_model, params, state, NULL);
}

START_TEST(weights_save_load) {
  char *dir = tmpdir(), *path = xc_join(dir, "m.safetensors");
  float *p = xc_alloc_floats(xc_model.param_floats), *s = xc_alloc_floats(xc_model.state_floats);
  xc_init_tensors(p, xc_model.params, xc_model.nparams, 5, 1);
  float *copy = xc_alloc_floats(xc_model.param_floats);
  memcpy(copy, p, xc_model.param_floats * 4);
  save_and_load(path, p, s);
  ck_assert_int_eq(memcmp(copy, p, xc_model.param_floats * 4), 0);
  // Optimizer state goes to its own file, not the weights.
  char *err;
  StFile *f = st_open(path, &err);
  ck_assert_int_eq(f->n, xc_model.nparams);
  ck_assert_ptr_null(st_find(f, "fc.weight.momentum_buffer"));
  st_free(f);
  char *opath = xc_join(dir, "m.optim.safetensors");
  xc_ckpt_save(path, opath, &xc_model, p, s, NULL, (XcProgress){7, 1, 3, 4, 6, 1.0f, 0, 0}, NULL,
               0);
  f = st_open(opath, &err);
  ck_assert_ptr_nonnull(st_find(f, "fc.weight.momentum_buffer"));
  ck_assert_str_eq(st_meta(f, "step"), "7");
  ck_assert_str_eq(st_meta(f, "iter"), "3");
  ck_assert_str_eq(st_meta(f, "opt_step"), "6");
  ck_assert_str_eq(st_meta(f, "opt_step"), "6");
  st_free(f);
}
END_TEST

static char *g_path;
static void load_g_path(void *unused) {
  float *p = xc_alloc_floats(xc_model.param_floats), *s = xc_alloc_floats(xc_model.state_floats);
  xc_load_weights(g_path, &xc_model, p, s, NULL);
}

// A batch norm's num_batches_tracked: an int64 scalar in the file, as
// PyTorch's state_dict holds it, read back; PyTorch's I64 and a float
// holding a whole number load too; a fraction is refused.
static const char *const bn_counter[] = {"bn1.num_batches_tracked"};
static void load_counter_g_path(void *unused) {
  XcModel m = xc_model;
  m.ncounters = 1, m.counter_names = bn_counter;
  float *p = xc_alloc_floats(m.param_floats), *s = xc_alloc_floats(m.state_floats);
  int64_t c = 0;
  xc_load_weights(g_path, &m, p, s, &c);
}

START_TEST(weights_counters) {
  XcModel m = xc_model;
  m.ncounters = 1, m.counter_names = bn_counter;
  char *dir = tmpdir(), *path = xc_join(dir, "bn.safetensors");
  float *p = xc_alloc_floats(m.param_floats), *s = xc_alloc_floats(m.state_floats);
  int64_t c = 5000000000;
  xc_save_weights(path, &m, p, s, &c);
  char *err;
  StFile *f = st_open(path, &err);
  const StEntry *e = st_find(f, "bn1.num_batches_tracked");
  ck_assert(e && e->rank == 0 && !strcmp(e->dtype, "I64"));
  st_free(f);
  c = 0;
  xc_load_weights(path, &m, p, s, &c);
  ck_assert(c == 5000000000);
  // Another model without batch norm reads the file with only a warning.
  g_path = xc_join(dir, "bn-f32.safetensors");
  float whole = 7, half = 7.5f;
  StTensor t[] = {{"fc.weight", 2, xc_model.params[0].dim, p, NULL},
                  {"fc.bias", 1, xc_model.params[1].dim, p + xc_model.params[1].offset, NULL},
                  {"bn1.num_batches_tracked", 0, NULL, &whole, NULL}};
  ck_assert(st_write(g_path, t, 3, NULL, 0));
  c = 0;
  xc_load_weights(g_path, &m, p, s, &c);
  ck_assert(c == 7);
  t[2].data = &half;
  ck_assert(st_write(g_path, t, 3, NULL, 0));
  assert_dies(load_counter_g_path, NULL, "'bn1.num_batches_tracked' is 7.5, not a count", NULL);
}
END_TEST

START_TEST(weights_errors) {
  char *dir = tmpdir();
  // A tensor with the wrong shape.
  g_path = xc_join(dir, "shape.safetensors");
  float z[1000] = {0};
  int64_t wd[2] = {xc_model.params[0].dim[0], 5}, bd[1] = {xc_model.params[1].dim[0]};
  StTensor t[] = {{"fc.weight", 2, wd, z, NULL}, {"fc.bias", 1, bd, z, NULL}};
  ck_assert(st_write(g_path, t, 2, NULL, 0));
  assert_dies(load_g_path, NULL, "shape.safetensors: 'fc.weight' has shape", ",5]");
  // A missing parameter.
  g_path = xc_join(dir, "missing.safetensors");
  ck_assert(st_write(g_path, t + 1, 1, NULL, 0));
  assert_dies(load_g_path, NULL, "missing.safetensors: parameter 'fc.weight'", "is missing");
  // Not a safetensors file at all, and no file.
  g_path = xc_join(dir, "text.safetensors");
  td_write_bytes(g_path, "hello world, not weights", 24);
  assert_dies(load_g_path, NULL, "text.safetensors", "not a safetensors file");
  g_path = xc_join(dir, "nope.safetensors");
  assert_dies(load_g_path, NULL, "nope.safetensors: cannot open", NULL);
}
END_TEST

//
// Initialisation, PRNG, threads
//

START_TEST(init_bounds_and_determinism) {
  XcTensorInfo t[] = {
      {"w", 2, {50, 40}, 0, XC_INIT_KAIMING_UNIFORM, 40},
      {"b", 1, {50}, 2000, XC_INIT_BIAS_UNIFORM, 40},
      {"g", 1, {3}, 2050, XC_INIT_ONES, 0},
      {"z", 1, {3}, 2053, XC_INIT_ZEROS, 0},
  };
  float *a = xc_alloc_floats(2056), *b = xc_alloc_floats(2056), *c = xc_alloc_floats(2056);
  xc_init_tensors(a, t, 4, 1, 1);
  xc_init_tensors(b, t, 4, 1, 1);
  xc_init_tensors(c, t, 4, 2, 1);
  ck_assert_int_eq(memcmp(a, b, 2056 * 4), 0);
  ck_assert_int_ne(memcmp(a, c, 2050 * 4), 0);
  double bound = 1 / sqrt(40.0), lo = 1, hi = -1, mean = 0;
  for (int i = 0; i < 2050; i++) {
    ck_assert(fabs(a[i]) <= bound);
    lo = fmin(lo, a[i]), hi = fmax(hi, a[i]), mean += a[i] / 2050;
  }
  // U(-b, b): the extremes come close to the bound, the mean close to 0.
  ck_assert(lo < -0.95 * bound && hi > 0.95 * bound);
  ck_assert(fabs(mean) < 0.01);
  ck_assert(a[2050] == 1 && a[2052] == 1 && a[2053] == 0 && a[2055] == 0);
}
END_TEST

START_TEST(shuffle_determinism) {
  int32_t a[100], b[100];
  for (int run = 0; run < 2; run++) {
    int32_t *v = run ? b : a;
    for (int i = 0; i < 100; i++)
      v[i] = i;
    XcRng r;
    xc_rng_seed(&r, 42, 1000);
    xc_shuffle(&r, v, 100);
  }
  ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
  int seen[100] = {0}, moved = 0;
  for (int i = 0; i < 100; i++) {
    seen[a[i]]++;
    moved += a[i] != i;
  }
  for (int i = 0; i < 100; i++)
    ck_assert_int_eq(seen[i], 1);
  ck_assert_int_gt(moved, 80);
  XcRng r;
  xc_rng_seed(&r, 42, 1001);
  for (int i = 0; i < 100; i++)
    b[i] = i;
  xc_shuffle(&r, b, 100);
  ck_assert_int_ne(memcmp(a, b, sizeof a), 0); // another epoch, another order
  for (int i = 0; i < 1000; i++) {
    float f = xc_rng_float(&r);
    ck_assert(f >= 0 && f < 1);
    ck_assert_uint_lt(xc_rng_below(&r, 7), 7);
  }
}
END_TEST

typedef struct {
  int calls;
  int64_t lo[64], hi[64];
  int hits[1000];
} ChunkLog;

static void record_chunk(void *ctx, int64_t lo, int64_t hi) {
  ChunkLog *l = ctx;
  int k;
#pragma omp atomic capture
  k = l->calls++;
  l->lo[k] = lo, l->hi[k] = hi;
  for (int64_t i = lo; i < hi; i++)
    l->hits[i]++;
}

START_TEST(parallel_for_chunks) {
  xc_set_threads(2);
  ck_assert_int_eq(xc_threads(), 2);
  static ChunkLog l;
  memset(&l, 0, sizeof l);
  xc_parallel_for(1000, record_chunk, &l);
  ck_assert_int_eq(l.calls, 2);
  for (int i = 0; i < 1000; i++)
    ck_assert_int_eq(l.hits[i], 1);
  // One contiguous chunk per thread: [0, 500) and [500, 1000).
  ck_assert(l.lo[0] == 0 || l.lo[0] == 500);
  ck_assert_int_eq(l.hi[0] - l.lo[0], 500);
  memset(&l, 0, sizeof l);
  xc_parallel_for(1, record_chunk, &l);
  ck_assert_int_eq(l.calls, 1);
  memset(&l, 0, sizeof l);
  xc_parallel_for(0, record_chunk, &l);
  ck_assert_int_eq(l.calls, 0);
}
END_TEST

// A step as generated code runs it in a team (codegen/walk.c): kernels one
// after the other, each reading what the one before wrote in another
// thread's chunk, and a serial kernel by thread 0 between them. Any missing
// barrier shows up as a stale value in one of many rounds.
enum { TEAM_N = 4096 };
typedef struct {
  int32_t a[TEAM_N], b[TEAM_N], total, round;
  int threads_seen[8];
} TeamStep;

static void fill(void *ctx, int64_t lo, int64_t hi) {
  TeamStep *s = ctx;
  for (int64_t i = lo; i < hi; i++)
    s->a[i] = (int32_t)i + s->round;
}

static void reverse(void *ctx, int64_t lo, int64_t hi) {
  TeamStep *s = ctx;
  for (int64_t i = lo; i < hi; i++)
    s->b[i] = s->a[TEAM_N - 1 - i] + s->total;
}

static void team_step(void **args) {
  TeamStep *s = args[0];
  s->threads_seen[xc_team_thread()] = 1;
  xc_team_for(TEAM_N, fill, s);
  if (xc_team_thread() == 0) { // a serial kernel: reads every chunk of a
    int64_t sum = 0;
    for (int i = 0; i < TEAM_N; i++)
      sum += s->a[i];
    s->total = (int32_t)(sum % 1000);
  }
  xc_team_barrier();
  xc_team_for(TEAM_N, reverse, s);
}

START_TEST(parallel_step_team) {
  xc_set_threads(2);
  static TeamStep s;
  memset(&s, 0, sizeof s);
  for (s.round = 0; s.round < 500; s.round++) {
    xc_parallel_step(team_step, (void *[]){&s});
    int64_t sum = 0;
    for (int i = 0; i < TEAM_N; i++)
      sum += i + s.round;
    ck_assert_int_eq(s.total, sum % 1000);
    for (int i = 0; i < TEAM_N; i++)
      ck_assert_int_eq(s.b[i], TEAM_N - 1 - i + s.round + s.total);
  }
  ck_assert(s.threads_seen[0] && s.threads_seen[1]); // two threads did run it
  // Inside someone else's parallel region the step runs on the calling
  // thread alone, a team of one; outside a team xc_team_for is a loop.
  memset(&s, 0, sizeof s);
#pragma omp parallel num_threads(2)
  {
    static TeamStep mine[2];
    TeamStep *m = &mine[omp_get_thread_num()];
    m->round = 7;
    xc_parallel_step(team_step, (void *[]){m});
    for (int i = 0; i < TEAM_N; i++)
      ck_assert_int_eq(m->b[i], TEAM_N - 1 - i + 7 + m->total);
    ck_assert(!m->threads_seen[1]);
  }
  ck_assert_int_eq(xc_team_thread(), 0);
  static ChunkLog l;
  memset(&l, 0, sizeof l);
  xc_team_for(1000, record_chunk, &l);
  for (int i = 0; i < 1000; i++)
    ck_assert_int_eq(l.hits[i], 1);
}
END_TEST

//
// Images
//

START_TEST(resize_matches_pil) {
  // Expected bytes from PIL 9.4: Image.fromarray(a).resize((w, h), BILINEAR).
  uint8_t in[5 * 7 * 3];
  for (int y = 0; y < 5; y++)
    for (int x = 0; x < 7; x++)
      for (int c = 0; c < 3; c++)
        in[(y * 7 + x) * 3 + c] = (uint8_t)((x * 37 + y * 11 + c * 50 + x * y * 13) % 256);
  static const uint8_t want34[] = {38,  88,  138, 120, 155, 167, 159, 127, 95,  63,  113, 163,
                                   142, 113, 101, 77,  95,  145, 89,  139, 157, 103, 109, 115,
                                   135, 132, 118, 115, 123, 160, 118, 111, 143, 158, 103, 126};
  static const uint8_t want72[] = {11, 61,  111, 61,  111, 161, 111, 161, 199, 149, 141,
                                   86, 141, 86,  136, 86,  136, 93,  136, 93,  143, 33,
                                   83, 133, 109, 159, 209, 185, 154, 99,  75,  67,  105,
                                   93, 131, 181, 157, 126, 71,  152, 97,  147};
  static const uint8_t want106_first[] = {0, 50, 100, 20, 70, 120, 46, 96, 146, 72, 122, 172};
  uint8_t out[10 * 6 * 3];
  xc_resize_hwc(in, 7, 5, 3, out, 3, 4);
  ck_assert_int_eq(memcmp(out, want34, sizeof want34), 0);
  xc_resize_hwc(in, 7, 5, 3, out, 7, 2);
  ck_assert_int_eq(memcmp(out, want72, sizeof want72), 0);
  xc_resize_hwc(in, 7, 5, 3, out, 10, 6);
  ck_assert_int_eq(memcmp(out, want106_first, sizeof want106_first), 0);
  ck_assert_int_eq(out[10 * 6 * 3 - 1], 166);
  // RGB to grey as PIL's convert("L").
  static const uint8_t want_l[] = {41, 78, 115, 152, 189, 197, 83, 52, 102, 152, 173, 72};
  Image img = {7, 5, 3, in};
  uint8_t grey[35];
  xc_image_to_chw(&img, 1, 5, 7, grey);
  ck_assert_int_eq(memcmp(grey, want_l, sizeof want_l), 0);
}
END_TEST

static void check_decoded(const char *path, const uint8_t *want, int w, int h, int c, int tol) {
  Image img;
  char *err;
  ck_assert_msg(xc_image_load(path, &img, &err), "%s: %s", path, err);
  ck_assert_int_eq(img.w, w);
  ck_assert_int_eq(img.h, h);
  ck_assert_int_eq(img.c, c);
  int worst = 0;
  for (int i = 0; i < w * h * c; i++)
    worst = abs(img.px[i] - want[i]) > worst ? abs(img.px[i] - want[i]) : worst;
  ck_assert_msg(worst <= tol, "%s: max pixel difference %d > %d", path, worst, tol);
  free(img.px);
}

START_TEST(png_variants) {
  char *dir = tmpdir();
  int w = 9, h = 7;
  uint8_t *rgb = td_image(1, 3, w, h, 3);
  uint8_t *grey = xc_malloc(w * h);
  for (int i = 0; i < w * h; i++)
    grey[i] = rgb[3 * i];
  const char *kinds[] = {"rgb", "rgba", "rgb16"};
  for (int k = 0; k < 3; k++) {
    char *p = xc_format("%s/%s.png", dir, kinds[k]);
    td_write_png(p, rgb, w, h, 3, kinds[k]);
    check_decoded(p, rgb, w, h, 3, 0); // alpha dropped, 16-bit keeps the high byte
  }
  const char *gkinds[] = {"grey", "grey16"};
  for (int k = 0; k < 2; k++) {
    char *p = xc_format("%s/%s.png", dir, gkinds[k]);
    td_write_png(p, rgb, w, h, 3, gkinds[k]);
    check_decoded(p, grey, w, h, 1, 0);
  }
  // A palette image decodes to RGB through its (grey ramp) palette.
  char *p = xc_format("%s/palette.png", dir);
  td_write_png(p, rgb, w, h, 3, "palette");
  uint8_t *pal = xc_malloc(w * h * 3);
  for (int i = 0; i < w * h * 3; i++)
    pal[i] = rgb[3 * (i / 3)];
  check_decoded(p, pal, w, h, 3, 0);
}
END_TEST

START_TEST(jpeg_variants) {
  char *dir = tmpdir();
  int w = 16, h = 16;
  // Smooth content so JPEG's error stays small at quality 100.
  uint8_t *rgb = xc_malloc(w * h * 3);
  for (int i = 0; i < w * h; i++)
    for (int c = 0; c < 3; c++)
      rgb[3 * i + c] = (uint8_t)(40 + (i % w) * 4 + (i / w) * 3 + c * 30);
  uint8_t *grey = xc_malloc(w * h);
  for (int i = 0; i < w * h; i++)
    grey[i] = rgb[3 * i];
  char *p = xc_format("%s/base.jpg", dir);
  td_write_jpeg(p, rgb, w, h, 3, "rgb", 100);
  check_decoded(p, rgb, w, h, 3, 4);
  p = xc_format("%s/prog.jpg", dir);
  td_write_jpeg(p, rgb, w, h, 3, "progressive", 100);
  check_decoded(p, rgb, w, h, 3, 4);
  p = xc_format("%s/grey.JPEG", dir);
  td_write_jpeg(p, rgb, w, h, 3, "grey", 100);
  check_decoded(p, grey, w, h, 1, 2);
  p = xc_format("%s/cmyk.jpg", dir);
  td_write_jpeg(p, rgb, w, h, 3, "cmyk", 100);
  check_decoded(p, rgb, w, h, 3, 3);
}
END_TEST

START_TEST(broken_images) {
  char *dir = tmpdir(), *err;
  Image img;
  uint8_t *rgb = td_image(0, 0, 64, 48, 3);
  char *good = xc_format("%s/good.jpg", dir), *cut = xc_format("%s/cut.jpg", dir);
  td_write_jpeg(good, rgb, 64, 48, 3, "rgb", 90);
  td_truncate_copy(good, cut, 0.5);
  ck_assert(!xc_image_load(cut, &img, &err));
  ck_assert_msg(strstr(err, "truncated"), "%s", err);
  char *gpng = xc_format("%s/good.png", dir), *cpng = xc_format("%s/cut.png", dir);
  td_write_png(gpng, rgb, 64, 48, 3, "rgb");
  td_truncate_copy(gpng, cpng, 0.6);
  ck_assert(!xc_image_load(cpng, &img, &err));
  ck_assert_msg(strstr(err, "PNG"), "%s", err);
  char *txt = xc_format("%s/notes.jpg", dir);
  td_write_bytes(txt, "just some text", 14);
  ck_assert(!xc_image_load(txt, &img, &err));
  ck_assert_msg(strstr(err, "not a JPEG or PNG"), "%s", err);
  char *empty = xc_format("%s/empty.png", dir);
  td_write_bytes(empty, "", 0);
  ck_assert(!xc_image_load(empty, &img, &err));
  char *head = xc_format("%s/head.jpg", dir);
  td_write_bytes(head, "\xff\xd8\xff", 3);
  ck_assert(!xc_image_load(head, &img, &err));
}
END_TEST

//
// Loaders
//

static const char *const rgb_names[] = {"red", "green", "blue"};

static DataSpec spec_for(const char *path, bool train, int c, int h, int w, int nclasses,
                         const char *const *names) {
  DataSpec s = {0};
  s.path = path;
  s.train = train;
  s.c = c, s.h = h, s.w = w;
  s.nclasses = nclasses;
  s.class_names = names;
  s.quiet = true;
  return s;
}

START_TEST(cifar_loader) {
  static const char *const ten[] = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
  char *dir = tmpdir();
  td_write_cifar(xc_join(dir, "data_batch_1.bin"), 5, 10, 0);
  td_write_cifar(xc_join(dir, "data_batch_2.bin"), 4, 10, 5);
  td_write_cifar(xc_join(dir, "test_batch.bin"), 3, 10, 100);
  ck_assert_str_eq(xc_detect_format(dir), "cifar10");
  DataSpec s = spec_for(dir, true, 3, 32, 32, 10, ten);
  Dataset *d = xc_load_dataset(&s);
  ck_assert_int_eq(d->n, 9);
  for (int i = 0; i < 9; i++) {
    ck_assert_int_eq(d->labels[i], i % 10);
    // CHW, as PyTorch's ToTensor lays it out.
    ck_assert_int_eq(d->pixels[i * 3072 + 2 * 1024 + 5 * 32 + 7], td_pixel(i % 10, i, 7, 5, 2));
  }
  xc_free_dataset(d);
  s.train = false;
  d = xc_load_dataset(&s);
  ck_assert_int_eq(d->n, 3);
  ck_assert_int_eq(d->labels[0], 0);
  xc_free_dataset(d);
  // A single file; a model of another shape gets converted, resized images
  // when the YAML asks (data: {convert: grey, resize: true}).
  s.path = xc_join(dir, "data_batch_2.bin");
  s.h = s.w = 16;
  s.c = 1;
  s.convert = s.resize = true;
  d = xc_load_dataset(&s);
  ck_assert_int_eq(d->n, 4);
  ck_assert_int_eq(d->labels[0], 5);
  xc_free_dataset(d);
}
END_TEST

static DataSpec g_spec;
static void load_g_spec(void *unused) { xc_load_dataset(&g_spec); }

START_TEST(cifar_errors) {
  char *dir = tmpdir();
  char *bad = xc_join(dir, "data_batch_1.bin");
  td_write_cifar(bad, 5, 10, 0);
  // Label 3 in a 3-class model: an error naming the file and the record.
  g_spec = spec_for(dir, true, 3, 32, 32, 3, rgb_names);
  assert_dies(load_g_spec, NULL, "data_batch_1.bin: record 3 has label 3", "3 classes");
  td_write_bytes(bad, "short", 5);
  assert_dies(load_g_spec, NULL, "data_batch_1.bin: size 5 is not a multiple of 3073", NULL);
  // Another shape without the YAML's say-so: both shapes named, and the fix.
  td_write_cifar(bad, 5, 3, 0);
  g_spec.c = 1, g_spec.h = g_spec.w = 28;
  assert_dies(load_g_spec, NULL, "data_batch_1.bin holds 3x32x32 images but the model's input is 1x28x28",
              "data: {convert: grey, resize: true}");
  g_spec.convert = true;
  assert_dies(load_g_spec, NULL, "holds 3x32x32 images but the model's input is 1x28x28",
              "data: {resize: true}");
  g_spec.c = 3, g_spec.h = g_spec.w = 32, g_spec.convert = false;
  g_spec.path = xc_join(dir, "does-not-exist");
  assert_dies(load_g_spec, NULL, "does-not-exist does not exist", "--data");
  char *empty = xc_join(dir, "empty");
  td_mkdir(empty);
  g_spec.path = empty;
  assert_dies(load_g_spec, NULL, "cannot tell what data set this is", NULL);
}
END_TEST

START_TEST(idx_loader) {
  static const char *const ten[] = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
  for (int gz = 0; gz < 2; gz++) {
    char *dir = tmpdir();
    td_write_idx(dir, "train", 12, 28, 10, gz);
    td_write_idx(dir, "t10k", 5, 28, 10, gz);
    ck_assert_str_eq(xc_detect_format(dir), "idx");
    DataSpec s = spec_for(dir, true, 1, 28, 28, 10, ten);
    Dataset *d = xc_load_dataset(&s);
    ck_assert_int_eq(d->n, 12);
    ck_assert_int_eq(d->labels[11], 1);
    ck_assert_int_eq(d->pixels[11 * 784 + 3 * 28 + 9], td_pixel(1, 11, 9, 3, 0));
    xc_free_dataset(d);
    s.train = false;
    d = xc_load_dataset(&s);
    ck_assert_int_eq(d->n, 5);
    xc_free_dataset(d);
    // The images file itself, its labels found next to it; 3 channels repeat
    // grey when the YAML asks for it (convert: rgb).
    s.path = xc_format("%s/train-images-idx3-ubyte%s", dir, gz ? ".gz" : "");
    s.c = 3;
    s.convert = true;
    d = xc_load_dataset(&s);
    ck_assert_int_eq(d->n, 12);
    ck_assert_int_eq(d->pixels[784 + 5], d->pixels[5]);
    xc_free_dataset(d);
  }
  // N x C x H x W (IDX 0x0804): any channel count, loaded as stored.
  char *dir = tmpdir();
  td_write_idx4(dir, "train", 7, 2, 5, 9, 10);
  ck_assert_str_eq(xc_detect_format(dir), "idx");
  DataSpec s = spec_for(dir, true, 2, 5, 9, 10, ten);
  Dataset *d = xc_load_dataset(&s);
  ck_assert_int_eq(d->n, 7);
  ck_assert_int_eq(d->labels[6], 6);
  ck_assert_int_eq(d->pixels[6 * 90 + 45 + 2 * 9 + 4], td_pixel(6, 6, 4, 2, 1));
  xc_free_dataset(d);
}
END_TEST

START_TEST(idx_errors) {
  static const char *const two[] = {"a", "b"};
  char *dir = tmpdir();
  td_write_idx(dir, "train", 6, 4, 5, true);
  g_spec = spec_for(dir, true, 1, 4, 4, 2, two);
  assert_dies(load_g_spec, NULL, "train-labels-idx1-ubyte.gz: record 2 has label 2", NULL);
  char *tdir = tmpdir();
  td_write_idx(tdir, "train", 6, 4, 2, false);
  td_truncate_copy(xc_join(tdir, "train-images-idx3-ubyte"),
                   xc_join(tdir, "train-images-idx3-ubyte"), 0.5);
  g_spec.path = tdir;
  assert_dies(load_g_spec, NULL, "train-images-idx3-ubyte: 40 of 96 data bytes", "truncated");
  // Grey 4x4 images for a 3x4x4 model: named, with the fix.
  td_write_idx(tdir, "train", 6, 4, 2, false);
  g_spec.c = 3;
  assert_dies(load_g_spec, NULL, "holds 1x4x4 images but the model's input is 3x4x4",
              "data: {convert: rgb}");
  // Hostile headers: sizes whose product overflows, and a file claiming
  // 1 GiB that holds 8 bytes, fail at once, without allocating the claim.
  char *hdir = tmpdir();
  uint8_t huge[] = {0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff};
  td_write_bytes(xc_join(hdir, "train-images-idx3-ubyte"), (const char *)huge, sizeof huge);
  td_write_bytes(xc_join(hdir, "train-labels-idx1-ubyte"), "\0\0\x08\x01\0\0\0\x01\0", 9);
  g_spec.path = hdir, g_spec.c = 1;
  assert_dies(load_g_spec, NULL, "unreasonable IDX dimensions", NULL);
  uint8_t claim[] = {0, 0, 8, 3, 0, 1, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0x80, 1, 2, 3, 4, 5, 6, 7, 8};
  td_write_bytes(xc_join(hdir, "train-images-idx3-ubyte"), (const char *)claim, sizeof claim);
  assert_dies(load_g_spec, NULL, "train-images-idx3-ubyte: 8 of 1073741824 data bytes", "truncated");
}
END_TEST

START_TEST(folder_loader) {
  char *dir = tmpdir();
  td_write_photo_folder(dir, rgb_names, 3, 4, 12, 10);
  // Broken and foreign files are reported and skipped.
  td_truncate_copy(xc_join(dir, "red.0.jpg"), xc_join(dir, "red.99.jpg"), 0.4);
  td_write_bytes(xc_join(dir, "blue.readme.jpg"), "not an image", 12);
  td_write_bytes(xc_join(dir, "notes.txt"), "hello", 5);
  ck_assert_str_eq(xc_detect_format(dir), "folder");
  DataSpec s = spec_for(dir, true, 3, 8, 8, 3, rgb_names);
  // --strict makes a bad file fatal, naming it. (Checked first: a child
  // forked after this process used OpenMP would hang in libgomp.)
  g_spec = s;
  g_spec.strict = true;
  assert_dies(load_g_spec, NULL, "notes.txt: the file name contains none of the class names",
              "--strict");
  remove(xc_join(dir, "notes.txt"));
  assert_dies(load_g_spec, NULL, "blue.readme.jpg: not a JPEG or PNG image", "--strict");
  td_write_bytes(xc_join(dir, "notes.txt"), "hello", 5);
  Dataset *d = xc_load_dataset(&s);
  ck_assert_int_eq(d->n, 12);
  ck_assert_int_eq(d->nbad, 3);
  // Sorted by byte order: blue.0.jpg blue.1.png ... green.* red.*
  ck_assert_str_eq(d->files[0], "blue.0.jpg");
  ck_assert_str_eq(d->files[4], "green.0.jpg");
  ck_assert_str_eq(d->files[11], "red.3.png");
  ck_assert_int_eq(d->labels[0], 2);
  ck_assert_int_eq(d->labels[4], 1);
  ck_assert_int_eq(d->labels[11], 0);
  // The PNG blue.1.png, resized 12x10 -> 8x8 from exact pixels: blue is bright.
  ck_assert_int_gt(d->pixels[1 * 192 + 2 * 64 + 9], 150);
  ck_assert_int_lt(d->pixels[1 * 192 + 0 * 64 + 9], 100);
  xc_free_dataset(d);
}
END_TEST

START_TEST(folder_val_split) {
  static const char *const cd[] = {"cat", "dog"};
  char *dir = tmpdir();
  td_write_photo_folder(dir, cd, 2, 10, 8, 8);
  DataSpec s = spec_for(dir, true, 3, 8, 8, 2, cd);
  s.val_split = 0.25f;
  s.split_seed = 3;
  s.split = XC_SPLIT_TRAIN;
  Dataset *tr = xc_load_dataset(&s);
  s.split = XC_SPLIT_VAL;
  Dataset *va = xc_load_dataset(&s);
  Dataset *va2 = xc_load_dataset(&s);
  ck_assert_int_eq(tr->n, 15);
  ck_assert_int_eq(va->n, 5);
  for (int i = 0; i < va->n; i++) {
    ck_assert_str_eq(va->files[i], va2->files[i]);
    for (int j = 0; j < tr->n; j++)
      ck_assert_str_ne(va->files[i], tr->files[j]);
  }
  // Both parts stay in name order.
  for (int i = 1; i < tr->n; i++)
    ck_assert_int_lt(strcmp(tr->files[i - 1], tr->files[i]), 0);
  s.split_seed = 4;
  Dataset *other = xc_load_dataset(&s);
  bool differs = false;
  for (int i = 0; i < va->n; i++)
    differs |= strcmp(va->files[i], other->files[i]) != 0;
  ck_assert(differs);
}
END_TEST

START_TEST(image_folder_loader) {
  char *dir = tmpdir();
  // Directories in byte order: blue, green, red; labels follow the model's names.
  td_write_image_folder(dir, rgb_names, 3, 3, 8, 8);
  ck_assert_str_eq(xc_detect_format(dir), "imagefolder");
  DataSpec s = spec_for(dir, true, 3, 8, 8, 3, rgb_names);
  Dataset *d = xc_load_dataset(&s);
  ck_assert_int_eq(d->n, 9);
  ck_assert_str_eq(d->files[0], "blue/0000.png");
  ck_assert_int_eq(d->labels[0], 2);
  ck_assert_int_eq(d->labels[8], 0);
  ck_assert_int_eq(d->pixels[0 * 192 + 2 * 64 + 3], td_pixel(2, 0, 3, 0, 2));
  xc_free_dataset(d);
  td_mkdir(xc_join(dir, "purple"));
  td_write_png(xc_join(dir, "purple/x.png"), td_image(0, 0, 8, 8, 3), 8, 8, 3, "rgb");
  g_spec = s;
  assert_dies(load_g_spec, NULL, "folder 'purple' is not one of the model's classes", "red");
}
END_TEST

//
// Transform and batches
//

START_TEST(transform_normalize_and_augment) {
  uint8_t src[2 * 3 * 4];
  for (int i = 0; i < 24; i++)
    src[i] = (uint8_t)(i * 10);
  Transform t = {.mean = {0.5f, 0.25f}, .std = {0.5f, 2.0f, 1, 1}};
  xc_transform_tables(&t);
  float out[24];
  xc_transform(&t, src, 2, 3, 4, out, NULL);
  for (int i = 0; i < 24; i++) {
    float v = (float)src[i] / 255.0f;
    float want = i < 12 ? (v - 0.5f) / 0.5f : (v - 0.25f) / 2.0f;
    ck_assert(out[i] == want);
  }
  // The tables hold the same two roundings for every byte value.
  for (int u = 0; u < 256; u++)
    ck_assert(t.table[1][u] == ((float)u / 255.0f - 0.25f) / 2.0f);
  // Flip only: each row mirrored, or left alone, by the draw.
  t.flip = true;
  XcRng r;
  xc_rng_seed(&r, 1, 1);
  int flipped = 0;
  for (int trial = 0; trial < 40; trial++) {
    xc_transform(&t, src, 2, 3, 4, out, &r);
    bool f = out[0] != (src[0] / 255.0f - 0.5f) / 0.5f;
    flipped += f;
    for (int y = 0; y < 3; y++)
      for (int x = 0; x < 4; x++) {
        int sx = f ? 3 - x : x;
        ck_assert(out[y * 4 + x] == ((float)src[y * 4 + sx] / 255.0f - 0.5f) / 0.5f);
      }
  }
  ck_assert(flipped > 5 && flipped < 35);
  // Crop with padding 1: every output pixel is a source pixel shifted by the
  // same (dy, dx) in [-1, 1], or zero padding.
  t.flip = false;
  t.crop_padding = 1;
  for (int trial = 0; trial < 20; trial++) {
    xc_transform(&t, src, 2, 3, 4, out, &r);
    bool any = false;
    for (int dy = -1; dy <= 1; dy++)
      for (int dx = -1; dx <= 1; dx++) {
        bool ok = true;
        for (int y = 0; y < 3; y++)
          for (int x = 0; x < 4; x++) {
            int sy = y + dy, sx = x + dx;
            uint8_t u = sy >= 0 && sy < 3 && sx >= 0 && sx < 4 ? src[sy * 4 + sx] : 0;
            ok &= out[y * 4 + x] == ((float)u / 255.0f - 0.5f) / 0.5f;
          }
        any |= ok;
      }
    ck_assert(any);
  }
}
END_TEST

START_TEST(batches_and_loader) {
  Dataset d = {0};
  d.n = 10, d.c = 1, d.h = 1, d.w = 2;
  uint8_t px[20];
  int32_t labels[10];
  for (int i = 0; i < 10; i++)
    px[2 * i] = px[2 * i + 1] = (uint8_t)i, labels[i] = i % 2;
  d.pixels = px, d.labels = labels;
  Transform t = {.std = {1, 1, 1, 1}};
  xc_transform_tables(&t);
  float images[6];
  float fl[3];
  int32_t order[3] = {4, 1, 9};
  xc_make_batch(&d, order, 3, &t, NULL, images, fl, true);
  ck_assert(images[0] == 4 / 255.0f && images[2] == 1 / 255.0f && fl[0] == 0 && fl[2] == 1);
  // Threaded and unthreaded streams are the same; with drop_last 3 batches
  // of 3 per epoch.
  int32_t seen[2][18];
  for (int threaded = 0; threaded < 2; threaded++) {
    Loader *l = loader_start(&d, &t, 3, true, true, 7, 0, 2, false, threaded);
    ck_assert_int_eq(loader_steps_per_epoch(l), 3);
    Batch b;
    int k = 0;
    while (loader_next(l, &b)) {
      ck_assert_int_eq(b.epoch, k / 9);
      ck_assert_int_eq(b.iter, (k / 3) % 3);
      ck_assert_int_eq(b.rows, 3);
      for (int i = 0; i < 3; i++)
        seen[threaded][k++] = (int32_t)lroundf(b.images[2 * i] * 255);
      loader_release(l);
    }
    ck_assert_int_eq(k, 18);
    loader_free(l);
  }
  ck_assert_int_eq(memcmp(seen[0], seen[1], sizeof seen[0]), 0);
  // Within an epoch no sample repeats.
  for (int e = 0; e < 2; e++)
    for (int i = 0; i < 9; i++)
      for (int j = i + 1; j < 9; j++)
        ck_assert_int_ne(seen[0][e * 9 + i], seen[0][e * 9 + j]);
  // Stopping early joins the worker cleanly.
  Loader *l = loader_start(&d, &t, 3, false, true, 7, 0, 100, false, true);
  Batch b;
  ck_assert(loader_next(l, &b));
  ck_assert(b.images[0] == 0 && b.images[2] == 1 / 255.0f); // dataset order
  loader_free(l);
}
END_TEST

// Without drop_last, 10 samples in batches of 3 make 4 steps an epoch; the
// last holds one sample and two padding rows: zero images, and labels the
// losses ignore (-100 for class indices, -1 for BCE targets).
START_TEST(loader_partial_last_batch) {
  Dataset d = {0};
  d.n = 10, d.c = 1, d.h = 1, d.w = 2;
  uint8_t px[20];
  int32_t labels[10];
  for (int i = 0; i < 10; i++)
    px[2 * i] = px[2 * i + 1] = (uint8_t)(i + 1), labels[i] = i % 2;
  d.pixels = px, d.labels = labels;
  Transform t = {.std = {1, 1, 1, 1}};
  xc_transform_tables(&t);
  for (int float_labels = 0; float_labels < 2; float_labels++) {
    Loader *l = loader_start(&d, &t, 3, true, false, 7, 0, 2, float_labels, true);
    ck_assert_int_eq(loader_steps_per_epoch(l), 4);
    Batch b;
    int steps = 0, seen[2][11] = {{0}};
    while (loader_next(l, &b)) {
      ck_assert_int_eq(b.iter, steps % 4);
      ck_assert_int_eq(b.rows, b.iter == 3 ? 1 : 3);
      for (int i = 0; i < b.rows; i++)
        seen[b.epoch][lroundf(b.images[2 * i] * 255)]++;
      for (int i = b.rows; i < 3; i++) {
        ck_assert(b.images[2 * i] == 0 && b.images[2 * i + 1] == 0);
        if (float_labels)
          ck_assert(((float *)b.labels)[i] == XC_PAD_TARGET);
        else
          ck_assert_int_eq(((int32_t *)b.labels)[i], XC_PAD_LABEL);
      }
      loader_release(l);
      steps++;
    }
    ck_assert_int_eq(steps, 8);
    for (int e = 0; e < 2; e++) // every sample exactly once an epoch
      for (int v = 1; v <= 10; v++)
        ck_assert_int_eq(seen[e][v], 1);
    loader_free(l);
  }
}
END_TEST

//
// Metrics
//

START_TEST(metrics_multiclass) {
  Confusion c;
  conf_init(&c, 3);
  // truth, prediction
  int pairs[][2] = {{0, 0}, {0, 0}, {0, 1}, {1, 1}, {1, 2}, {2, 2}, {2, 2}, {2, 0}};
  for (int i = 0; i < 8; i++)
    conf_add(&c, pairs[i][0], pairs[i][1]);
  ck_assert_double_eq_tol(conf_accuracy(&c), 5.0 / 8, 1e-12);
  ck_assert_double_eq_tol(conf_class_accuracy(&c, 0), 2.0 / 3, 1e-12);
  ck_assert_double_eq_tol(conf_class_accuracy(&c, 1), 0.5, 1e-12);
  ck_assert_int_eq(c.m[2 * 3 + 0], 1);
  // classification_report: class 0 is predicted 3 times, 2 rightly, and is
  // the truth 3 times; class 1 predicted twice (1 right) of 2.
  ClassScore s0 = conf_class_score(&c, 0), s1 = conf_class_score(&c, 1), macro, weighted;
  ck_assert_double_eq_tol(s0.precision, 2.0 / 3, 1e-15);
  ck_assert_double_eq_tol(s0.recall, 2.0 / 3, 1e-15);
  ck_assert_double_eq_tol(s1.precision, 0.5, 1e-15);
  ck_assert_int_eq(s0.support, 3);
  conf_averages(&c, &macro, &weighted);
  ck_assert_double_eq_tol(macro.recall, (2.0 / 3 + 0.5 + 2.0 / 3) / 3, 1e-15);
  ck_assert_double_eq_tol(weighted.recall, conf_accuracy(&c), 1e-15); // always, by definition
  ck_assert_int_eq(weighted.support, 8);
  char *buf;
  size_t len;
  FILE *f = open_memstream(&buf, &len);
  EvalResult ev = {c, 0.57, 2, 0.875};
  eval_print_json(f, &ev, rgb_names, false, 0.5);
  fclose(f);
  ck_assert_msg(strstr(buf, "\"accuracy\": 0.625"), "%s", buf);
  ck_assert_msg(strstr(buf, "\"loss\": 0.57, \"top_k\": 2, \"top_k_accuracy\": 0.875"), "%s", buf);
  ck_assert_msg(strstr(buf, "\"confusion_matrix\": [[2, 1, 0], [0, 1, 1], [1, 0, 2]]"), "%s", buf);
  ck_assert_msg(strstr(buf, "\"green\": {\"precision\": 0.5, \"recall\": 0.5, \"f1-score\": 0.5, "
                            "\"support\": 2}"),
                "%s", buf);
  ck_assert_msg(!strstr(buf, "threshold"), "%s", buf);
  f = open_memstream(&buf, &len);
  conf_print_report(f, &c, rgb_names);
  fclose(f);
  ck_assert_msg(strstr(buf, "       green    0.5000    0.5000    0.5000         2\n"), "%s", buf);
  ck_assert_msg(strstr(buf, "    accuracy                        0.6250         8\n"), "%s", buf);
  f = open_memstream(&buf, &len);
  conf_print(f, &c, rgb_names);
  fclose(f);
  ck_assert_msg(strstr(buf, "  red     2     1     0\n"), "%s", buf);
  conf_free(&c);
  float logits[] = {0.5f, 2.0f, 2.0f, -1};
  ck_assert_int_eq(xc_argmax(logits, 4), 1); // first of the ties, like torch.max
  double p[3];
  xc_softmax(logits, 3, p);
  ck_assert_double_eq_tol(p[0] + p[1] + p[2], 1, 1e-12);
  ck_assert_double_eq_tol(p[1], exp(2.0) / (exp(0.5) + 2 * exp(2.0)), 1e-12);
}
END_TEST

START_TEST(metrics_binary) {
  Confusion c;
  conf_init(&c, 2);
  // 3 true positives, 1 false positive, 2 false negatives, 4 true negatives.
  for (int i = 0; i < 3; i++)
    conf_add(&c, 1, 1);
  conf_add(&c, 0, 1);
  for (int i = 0; i < 2; i++)
    conf_add(&c, 1, 0);
  for (int i = 0; i < 4; i++)
    conf_add(&c, 0, 0);
  double prec, rec, f1;
  conf_binary(&c, &prec, &rec, &f1);
  ck_assert_double_eq_tol(prec, 0.75, 1e-12);
  ck_assert_double_eq_tol(rec, 0.6, 1e-12);
  ck_assert_double_eq_tol(f1, 2 * 0.75 * 0.6 / 1.35, 1e-12);
  ck_assert_double_eq_tol(conf_accuracy(&c), 0.7, 1e-12);
  static const char *const cd[] = {"cat", "dog"};
  char *buf;
  size_t len;
  FILE *f = open_memstream(&buf, &len);
  EvalResult ev = {c, NAN, 0, 0};
  eval_print_json(f, &ev, cd, true, 0.3);
  fclose(f);
  // Shortest round-trip numbers: 0.6, not 0.59999999999999998.
  ck_assert_msg(strstr(buf, "\"loss\": null, \"precision\": 0.75, \"recall\": 0.6, \"f1\": "
                            "0.6666666666666665, \"threshold\": 0.3"),
                "%s", buf);
  ck_assert_msg(!strstr(buf, "top_k"), "%s", buf);
  ck_assert_msg(strstr(buf, "\"confusion_matrix\": [[4, 1], [2, 3]]"), "%s", buf);
  conf_free(&c);
  // No positive predictions: precision 0 (sklearn's zero_division=0), not NaN.
  conf_init(&c, 2);
  conf_add(&c, 1, 0);
  conf_binary(&c, &prec, &rec, &f1);
  ck_assert(prec == 0 && rec == 0 && f1 == 0);
  conf_free(&c);
  ck_assert_double_eq_tol(xc_sigmoid(0), 0.5, 1e-15);
  ck_assert(xc_sigmoid(-1000) == 0 && xc_sigmoid(1000) == 1);
}
END_TEST

// JSON's numbers: the shortest text that reads back as the same double.
START_TEST(shortest_numbers) {
  char buf[32];
  ck_assert_str_eq(xc_shortest(0.57, buf), "0.57");
  ck_assert_str_eq(xc_shortest(1.0, buf), "1");
  ck_assert_str_eq(xc_shortest(2.0 / 3, buf), "0.6666666666666666"); // Python's repr too
  ck_assert_str_eq(xc_shortest(1e-300, buf), "1e-300");
  ck_assert_str_eq(xc_shortest(0.1f, buf), "0.10000000149011612"); // a float, exactly
  ck_assert_str_eq(xc_shortest(-0.0, buf), "-0");
  XcRng r;
  xc_rng_seed(&r, 1, 2);
  for (int i = 0; i < 10000; i++) {
    double v = ldexp((double)xc_rng_next(&r), -(int)xc_rng_below(&r, 120)) *
               (xc_rng_below(&r, 2) ? 1 : -1);
    ck_assert(strtod(xc_shortest(v, buf), NULL) == v);
  }
}
END_TEST

// Top-k: the label ranks below k, ties ranked by class index as xc_argmax.
START_TEST(top_k) {
  float z[] = {0.1f, 3.0f, 2.0f, 3.0f, -1.0f};
  ck_assert(xc_in_top_k(z, 5, 1, 1) && !xc_in_top_k(z, 5, 3, 1));
  ck_assert(xc_in_top_k(z, 5, 3, 2) && !xc_in_top_k(z, 5, 2, 2) && xc_in_top_k(z, 5, 2, 3));
  ck_assert(!xc_in_top_k(z, 5, 4, 4) && xc_in_top_k(z, 5, 4, 5));
}
END_TEST

// The evaluation loss against hand-computed cross-entropy and BCE.
START_TEST(eval_loss) {
  XcModel m = xc_model; // the fake: 3 classes, cross-entropy
  float z[2][3] = {{1, 2, 3}, {0.5f, -1, 2}};
  int y[2] = {2, 0};
  LossSum s = {0};
  for (int i = 0; i < 2; i++)
    loss_add(&m, &s, z[i], y[i]);
  double lse0 = log(exp(1) + exp(2) + exp(3)), lse1 = log(exp(0.5) + exp(-1) + exp(2));
  double nll = ((lse0 - 3) + (lse1 - 0.5)) / 2;
  ck_assert_double_eq_tol(loss_value(&m, &s, NULL), nll, 1e-12);
  // Label smoothing 0.1 and class weights (1, 2, 0.5), PyTorch 1.13's formula.
  static const float w[3] = {1, 2, 0.5f};
  m.label_smoothing = 0.1f, m.class_weights = w;
  s = (LossSum){0};
  for (int i = 0; i < 2; i++)
    loss_add(&m, &s, z[i], y[i]);
  double wn = 0.5 * (lse0 - 3) + 1 * (lse1 - 0.5), wsum = 0.5 + 1;
  double smooth = 0;
  for (int c = 0; c < 3; c++)
    smooth += w[c] * ((lse0 - z[0][c]) + (lse1 - z[1][c]));
  ck_assert_double_eq_tol(loss_value(&m, &s, NULL),
                          0.9 * wn / wsum + (double)0.1f / 3 * smooth / wsum, 1e-7);
  // BCE with logits, pos_weight 3: mean of 3 y softplus(-z) + (1 - y) softplus(z).
  m.loss_kind = XC_LOSS_BCE_WITH_LOGITS, m.pos_weight = 3, m.outputs = 1;
  s = (LossSum){0};
  float b[2] = {0.7f, -2};
  loss_add(&m, &s, &b[0], 1);
  loss_add(&m, &s, &b[1], 0);
  ck_assert_double_eq_tol(loss_value(&m, &s, NULL),
                          (3 * log1p(exp(-0.7)) + log1p(exp(-2))) / 2, 1e-7);
  m.loss_kind = XC_LOSS_NONE;
  ck_assert(isnan(loss_value(&m, &s, NULL)));
}
END_TEST

// The shared data sets, where this machine has them: the MNIST IDX files
// load as they are, and a few Kaggle photos come out of their archive.
START_TEST(shared_data) {
  const char *shared = XENTCC_SOURCE_DIR "/../shared/data";
  char *mnist = xc_join(shared, "mnist-10k");
  if (!xc_is_dir(mnist)) {
    printf("shared_data: %s is absent; skipping\n", mnist);
    return;
  }
  static const char *const ten[] = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
  DataSpec s = spec_for(mnist, false, 1, 28, 28, 10, ten);
  Dataset *d = xc_load_dataset(&s);
  ck_assert_int_eq(d->n, 2000);
  int64_t counts[10] = {0};
  for (int i = 0; i < d->n; i++)
    counts[d->labels[i]]++;
  for (int k = 0; k < 10; k++)
    ck_assert_int_gt(counts[k], 100);
  xc_free_dataset(d);
  char *archive = xc_join(shared, "catdog-kaggle-1600.tar.gz");
  if (!xc_is_file(archive))
    return;
  char *dir = tmpdir();
  const char *tar[] = {"tar", "-xzf", archive, "-C", dir, "--wildcards", "catdog/train/cat.1?.jpg",
                       "catdog/train/dog.1?.jpg", NULL};
  ck_assert_int_eq(td_run(NULL, tar, NULL, NULL), 0);
  static const char *const cd[] = {"cat", "dog"};
  s = spec_for(xc_join(dir, "catdog/train"), true, 3, 32, 32, 2, cd);
  d = xc_load_dataset(&s);
  ck_assert_int_eq(d->n, 20);
  ck_assert_int_eq(d->nbad, 0);
  ck_assert_int_eq(d->labels[0], 0);
  ck_assert_int_eq(d->labels[19], 1);
  xc_free_dataset(d);
}
END_TEST

int main(void) {
  Suite *s = suite_create("runtime");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, die_hook);
  tcase_add_test(tc, safetensors_round_trip);
  tcase_add_test(tc, safetensors_foreign_file);
  tcase_add_test(tc, safetensors_malformed);
  tcase_add_test(tc, weights_save_load);
  tcase_add_test(tc, weights_errors);
  tcase_add_test(tc, weights_counters);
  tcase_add_test(tc, init_bounds_and_determinism);
  tcase_add_test(tc, shuffle_determinism);
  tcase_add_test(tc, parallel_for_chunks);
  tcase_add_test(tc, parallel_step_team);
  tcase_add_test(tc, resize_matches_pil);
  tcase_add_test(tc, png_variants);
  tcase_add_test(tc, jpeg_variants);
  tcase_add_test(tc, broken_images);
  tcase_add_test(tc, cifar_loader);
  tcase_add_test(tc, cifar_errors);
  tcase_add_test(tc, idx_loader);
  tcase_add_test(tc, idx_errors);
  tcase_add_test(tc, folder_loader);
  tcase_add_test(tc, folder_val_split);
  tcase_add_test(tc, image_folder_loader);
  tcase_add_test(tc, transform_normalize_and_augment);
  tcase_add_test(tc, batches_and_loader);
  tcase_add_test(tc, loader_partial_last_batch);
  tcase_add_test(tc, metrics_multiclass);
  tcase_add_test(tc, metrics_binary);
  tcase_add_test(tc, shortest_numbers);
  tcase_add_test(tc, top_k);
  tcase_add_test(tc, eval_loss);
  tcase_add_test(tc, shared_data);
  suite_add_tcase(s, tc);
  return run_suite(s);
}

// The checkpoint's pieces on the fake model: files written whole or not at
// all (a real full disk, through RLIMIT_FSIZE; no symbolic link followed),
// the tidying of interrupted saves, and --resume's checks. The end-to-end
// tests with generated executables and injected faults are in
// tests/checkpoint.
#define _GNU_SOURCE
#include "../common/capture.h"
#include "rt.h"
#include "testdata.h"

#include <check.h>
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static char *tmpdir(void) { return td_mkdtemp(TEST_BINARY_DIR); }

static int count_entries(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  for (struct dirent *de; (de = readdir(d));)
    n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
  closedir(d);
  return n;
}

typedef struct {
  char *w, *o;
  float *p, *s;
  int64_t step;
} Ckpt;

static Ckpt ckpt_in(const char *dir) {
  Ckpt c = {xc_join(dir, "w.safetensors"), xc_join(dir, "w.optim.safetensors"),
            xc_alloc_floats(xc_model.param_floats), xc_alloc_floats(xc_model.state_floats), 4};
  xc_init_tensors(c.p, xc_model.params, xc_model.nparams, 1, 1);
  for (int64_t i = 0; i < xc_model.state_floats; i++)
    c.s[i] = (float)i;
  return c;
}

static void save(void *arg) {
  Ckpt *c = arg;
  xc_ckpt_save(c->w, c->o, &xc_model, c->p, c->s, NULL,
               (XcProgress){c->step, 1, 0, 4, c->step - 1, 1.0f, 0, 0}, NULL, 0);
}

START_TEST(ckpt_round_trip) {
  char *dir = tmpdir();
  Ckpt c = ckpt_in(dir);
  save(&c);
  ck_assert_int_eq(count_entries(dir), 2); // no temporaries
  float *p = xc_alloc_floats(xc_model.param_floats), *s = xc_alloc_floats(xc_model.state_floats);
  XcProgress got = xc_ckpt_resume(c.w, c.o, &xc_model, p, s, NULL, NULL, 0);
  ck_assert(got.step == 4 && got.epoch == 1 && got.iter == 0 && got.steps_per_epoch == 4 && got.opt_step == 3);
  ck_assert_int_eq(memcmp(p, c.p, xc_model.param_floats * 4), 0);
  // Optimizer state from the optimizer file, nothing else of the state.
  for (int i = 0; i < xc_model.nstates; i++) {
    const XcTensorInfo *t = &xc_model.states[i];
    if (xc_is_optimizer_state(&xc_model, t))
      ck_assert_int_eq(memcmp(s + t->offset, c.s + t->offset, xc_numel(t) * 4), 0);
  }
  // The weights file is a plain state_dict; the optimizer file records its
  // SHA-256.
  char *err;
  StFile *f = st_open(c.w, &err);
  ck_assert_int_eq(f->n, xc_model.nparams);
  ck_assert_str_eq(st_meta(f, "format"), "pt");
  st_free(f);
  f = st_open(c.o, &err);
  ck_assert_int_eq(strlen(st_meta(f, "weights_sha256")), 64);
  st_free(f);
}
END_TEST

// A file system that refuses to grow a file (RLIMIT_FSIZE, as a full disk
// would with ENOSPC): the save fails with the file named, the checkpoint
// before it stays whole, and no temporary is left.
static rlim_t g_limit;
static void save_limited(void *arg) {
  signal(SIGXFSZ, SIG_IGN);
  struct rlimit r = {g_limit, g_limit};
  setrlimit(RLIMIT_FSIZE, &r);
  save(arg);
}

START_TEST(ckpt_full_disk) {
  char *dir = tmpdir();
  Ckpt c = ckpt_in(dir);
  save(&c);
  long nw, no;
  char *w0 = read_all(c.w, &nw), *o0 = read_all(c.o, &no);
  c.step = 8;
  for (int i = 0; i < xc_model.param_floats; i++)
    c.p[i] += 1;
  // Too small for the weights, then for the optimizer file only.
  ck_assert_int_lt(nw, no);
  rlim_t limits[] = {(rlim_t)nw / 2, (rlim_t)(nw + no) / 2};
  const char *names[] = {"/w.safetensors: File too large", "/w.optim.safetensors: File too large"};
  for (int k = 0; k < 2; k++) {
    g_limit = limits[k];
    int status;
    char *msg = run_capturing_stderr(save_limited, &c, &status);
    ck_assert_msg(status == 1, "status %d: %s", status, msg);
    ck_assert_msg(strstr(msg, "cannot save the checkpoint of step 8: ") &&
                      strstr(msg, names[k]) && strstr(msg, "hint: make room in "),
                  "%s", msg);
    long n1, n2;
    char *w1 = read_all(c.w, &n1), *o1 = read_all(c.o, &n2);
    ck_assert(n1 == nw && !memcmp(w0, w1, nw) && n2 == no && !memcmp(o0, o1, no));
    ck_assert_int_eq(count_entries(dir), 2);
  }
}
END_TEST

static void tidy(void *arg) {
  Ckpt *c = arg;
  xc_ckpt_tidy(c->w, c->o, NULL, 0);
}

// Leftovers of interrupted saves go; a symbolic link planted at such a name
// is removed, never followed; weights stopped between the two renames are
// put in place when their hash is the one the optimizer file records.
START_TEST(ckpt_tidy) {
  char *dir = tmpdir();
  Ckpt c = ckpt_in(dir);
  save(&c);
  long nw;
  char *w0 = read_all(c.w, &nw);
  char *victim = xc_join(dir, "victim");
  td_write_bytes(victim, "keep", 4);
  td_write_bytes(xc_format("%s.tmp-0123456789abcdef", c.o), "x", 1);
  td_write_bytes(xc_format("%s.tmp.4242", c.w), "x", 1);
  ck_assert_int_eq(symlink(victim, xc_format("%s.tmp-aaaaaaaaaaaaaaaa", c.w)), 0);
  td_write_bytes(xc_format("%s.tmp-notours", c.w), "x", 1); // not a name we make
  // The new weights' temporary; the weights file still the previous one.
  char *pending = xc_format("%s.tmp-00000000000000ff", c.w);
  ck_assert_int_eq(rename(c.w, pending), 0);
  td_write_bytes(c.w, "previous weights", 16);
  int status;
  char *msg = run_capturing_stderr(tidy, &c, &status);
  ck_assert_msg(strstr(msg, "warning: the last save of ") &&
                    strstr(msg, "w.optim.safetensors (step 4) was stopped before the weights "
                                "were replaced; ") &&
                    strstr(msg, "w.safetensors now holds the weights saved with it"),
                "%s", msg);
  long n;
  char *w1 = read_all(c.w, &n);
  ck_assert(n == nw && !memcmp(w0, w1, nw));
  ck_assert_str_eq(read_all(victim, NULL), "keep");
  ck_assert_int_eq(count_entries(dir), 4); // w, w.optim, victim, the name not ours
  // A temporary whose hash is not the recorded one is removed, not used.
  td_write_bytes(pending, "other weights", 13);
  td_write_bytes(c.w, "previous weights", 16);
  xc_ckpt_tidy(c.w, c.o, NULL, 0);
  ck_assert_str_eq(read_all(c.w, NULL), "previous weights");
  ck_assert_int_eq(count_entries(dir), 4);
}
END_TEST

// The runtime before this one wrote PATH.tmp.PID with fopen(), through
// any symbolic link planted at that predictable name.
START_TEST(st_write_no_symlink) {
  char *dir = tmpdir(), *path = xc_join(dir, "w.safetensors"), *victim = xc_join(dir, "victim");
  td_write_bytes(victim, "keep", 4);
  ck_assert_int_eq(symlink(victim, xc_format("%s.tmp.%d", path, (int)getpid())), 0);
  float x = 1;
  StTensor t = {"x", 0, NULL, &x, NULL};
  ck_assert(st_write(path, &t, 1, NULL, 0));
  ck_assert_str_eq(read_all(victim, NULL), "keep");
  struct stat st;
  ck_assert(lstat(path, &st) == 0 && S_ISREG(st.st_mode));
}
END_TEST

// --resume refuses what does not belong together, naming the files.
typedef struct {
  Ckpt *c;
  XcModel *m;
} ResumeArgs;
static void resume(void *arg) {
  ResumeArgs *a = arg;
  float *p = xc_alloc_floats(a->m->param_floats), *s = xc_alloc_floats(a->m->state_floats);
  xc_ckpt_resume(a->c->w, a->c->o, a->m, p, s, NULL, NULL, 0);
}

static void resume_dies(Ckpt *c, XcModel *m, const char *want1, const char *want2) {
  ResumeArgs a = {c, m};
  int status;
  char *msg = run_capturing_stderr(resume, &a, &status);
  ck_assert_msg(status == 1, "status %d: %s", status, msg);
  ck_assert_msg(strstr(msg, want1) && strstr(msg, want2) && strstr(msg, "hint: "), "%s", msg);
}

START_TEST(ckpt_resume_refuses) {
  char *dir = tmpdir();
  Ckpt c = ckpt_in(dir);
  XcModel m = xc_model;
  save(&c);
  // Weights changed after the save.
  c.p[0] += 1;
  xc_save_weights(c.w, &xc_model, c.p, c.s, NULL);
  resume_dies(&c, &m, "w.safetensors is not the weights file saved with ",
              "w.optim.safetensors (step 4)");
  c.p[0] -= 1;
  // Another model's name, or an optimizer file without its optimizer state.
  save(&c);
  m.name = "other";
  resume_dies(&c, &m, "w.optim.safetensors is a checkpoint of model 'fake', not 'other'",
              "hint: resume with the executable of the model that wrote it");
  m = xc_model;
  m.nstates = 0;
  resume_dies(&c, &m, "w.optim.safetensors: 'fc.", "' is not optimizer state of model 'fake'");
  // No optimizer file at all.
  unlink(c.o);
  m = xc_model;
  resume_dies(&c, &m, "--resume: no checkpoint: ", "w.safetensors has no ");
}
END_TEST

Suite *checkpoint_suite(void) {
  Suite *s = suite_create("checkpoint");
  TCase *tc = tcase_create("checkpoint");
  tcase_add_test(tc, ckpt_round_trip);
  tcase_add_test(tc, ckpt_full_disk);
  tcase_add_test(tc, ckpt_tidy);
  tcase_add_test(tc, st_write_no_symlink);
  tcase_add_test(tc, ckpt_resume_refuses);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  return run_suite(checkpoint_suite());
}

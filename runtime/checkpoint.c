// The training checkpoint, and files written whole or not at all. A
// checkpoint is two files: W.safetensors, the model's state_dict as PyTorch
// users load it, and W.optim.safetensors, the optimizer state, the progress
// (step, epoch, batch) and the SHA-256 of the weights file saved with it.
//
// Both are written to temporaries, made durable, then renamed: the optimizer
// file first, which is the commit point, then the weights. A run killed
// before that rename leaves the previous checkpoint as it was; one killed
// between the renames leaves the new weights in their temporary, which the
// next run (xc_ckpt_tidy) renames into place after checking its hash. So
// --resume finds a pair whose hash matches, and refuses any other pair.
#define _GNU_SOURCE
#include "rt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

//
// Test hook
//

// For the tests of tests/checkpoint only: XENTCC_FAULT_KILL_AT=N sends the
// process SIGKILL just before the N-th file operation of its atomic writes
// (counted from 1 over the run: each create, write(), fsync, close and
// rename, and the directory's fsync); XENTCC_FAULT_ENOSPC_AT=N makes that
// operation fail with ENOSPC instead, as a full disk would (and says so on
// stderr, so a test knows when N is past the last operation).
static bool fault(void) {
  static long count, kill_at = -1, enospc_at = -1;
  if (kill_at < 0) {
    const char *k = getenv("XENTCC_FAULT_KILL_AT"), *e = getenv("XENTCC_FAULT_ENOSPC_AT");
    kill_at = k ? atol(k) : 0;
    enospc_at = e ? atol(e) : 0;
  }
  count++;
  if (count == kill_at)
    raise(SIGKILL);
  if (count == enospc_at) {
    fprintf(stderr, "%s: test hook: ENOSPC at file operation %ld\n", xc_prog, count);
    errno = ENOSPC;
    return true;
  }
  return false;
}

//
// Files written whole or not at all
//

struct XcOutFile {
  int fd;          // -1 once closed
  char *tmp;       // the temporary, NULL once renamed
  XcSha256 sha;    // of every byte written
  size_t nbuf;
  uint8_t buf[1 << 16];
};

// "DIR/BASE.tmp-" + 16 hex digits: the names xc_ckpt_tidy removes.
static const char tmp_infix[] = ".tmp-";
enum { TMP_HEX = 16 };

static char *tmp_name(const char *path) {
  uint64_t r;
  if (getrandom(&r, sizeof r, 0) != sizeof r) // O_EXCL keeps it safe; this keeps it unguessed
    r = (uint64_t)xc_now() * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() << 32 ^ (uintptr_t)&r;
  return xc_format("%s%s%016llx", path, tmp_infix, (unsigned long long)r);
}

XcOutFile *xc_out_create(const char *path) {
  XcOutFile *o = xc_calloc(1, sizeof *o);
  xc_sha256_init(&o->sha);
  o->fd = -1;
  for (int tries = 0; o->fd < 0 && tries < 100; tries++) {
    free(o->tmp);
    o->tmp = tmp_name(path);
    if (fault())
      break;
    // Never through a symbolic link or onto a file someone placed there.
    o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (o->fd < 0 && errno != EEXIST)
      break;
  }
  if (o->fd < 0) {
    int e = errno;
    free(o->tmp);
    free(o);
    errno = e;
    return NULL;
  }
  return o;
}

static bool write_all(int fd, const uint8_t *p, size_t n) {
  while (n) {
    if (fault())
      return false;
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return false;
    p += w, n -= (size_t)w;
  }
  return true;
}

static bool flush(XcOutFile *o) {
  bool ok = write_all(o->fd, o->buf, o->nbuf);
  o->nbuf = 0;
  return ok;
}

bool xc_out_write(XcOutFile *o, const void *p, size_t n) {
  xc_sha256_update(&o->sha, p, n);
  const uint8_t *s = p;
  while (n) {
    size_t k = sizeof o->buf - o->nbuf < n ? sizeof o->buf - o->nbuf : n;
    memcpy(o->buf + o->nbuf, s, k);
    o->nbuf += k, s += k, n -= k;
    if (o->nbuf == sizeof o->buf && !flush(o))
      return false;
  }
  return true;
}

bool xc_out_close(XcOutFile *o) {
  bool ok = flush(o);
  int e = errno;
  while (ok) {
    if (fault()) {
      ok = false, e = errno;
    } else if (fsync(o->fd) == 0) {
      break;
    } else if (errno != EINTR) {
      ok = false, e = errno;
    }
  }
  if (fault() && ok) // the hook fails the close; the descriptor is closed all the same
    ok = false, e = errno;
  if (close(o->fd) != 0 && ok)
    ok = false, e = errno;
  o->fd = -1;
  errno = e;
  return ok;
}

bool xc_out_rename(XcOutFile *o, const char *path) {
  if (fault() || rename(o->tmp, path) != 0)
    return false;
  free(o->tmp);
  o->tmp = NULL;
  return true;
}

void xc_out_sha256(const XcOutFile *o, uint8_t out[32]) {
  XcSha256 s = o->sha;
  xc_sha256_final(&s, out);
}

void xc_out_free(XcOutFile *o) {
  if (!o)
    return;
  int e = errno;
  if (o->fd >= 0)
    close(o->fd);
  if (o->tmp)
    unlink(o->tmp);
  free(o->tmp);
  free(o);
  errno = e;
}

// Whole, not durable: a crash may leave the previous version, never a part.
bool xc_replace_file(const char *path, const void *data, size_t n) {
  for (int tries = 0; tries < 100; tries++) {
    char *tmp = tmp_name(path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd < 0 && errno == EEXIST) {
      free(tmp);
      continue;
    }
    bool ok = fd >= 0;
    for (const uint8_t *p = data; ok && n;) { // not counted by the test hook: not a checkpoint
      ssize_t w = write(fd, p, n);
      if (w < 0 && errno != EINTR)
        ok = false;
      else if (w > 0)
        p += w, n -= (size_t)w;
    }
    int e = errno;
    if (fd >= 0 && close(fd) != 0 && ok)
      ok = false, e = errno;
    if (ok && rename(tmp, path) != 0)
      ok = false, e = errno;
    if (!ok && fd >= 0)
      unlink(tmp);
    free(tmp);
    errno = e;
    return ok;
  }
  errno = EEXIST;
  return false;
}

// The directory's entries made durable (a counted operation; errors are
// ignored, as some file systems cannot fsync a directory).
static void sync_dir(const char *path) {
  if (fault())
    return;
  xc_sync_dir_of(path);
}

//
// Saving
//

static void hex(const uint8_t *b, int n, char *out) {
  for (int i = 0; i < n; i++)
    sprintf(out + 2 * i, "%02x", b[i]);
}

static bool out_sink(void *ctx, const void *p, size_t n) { return xc_out_write(ctx, p, n); }

// The last checkpoint this process saved or resumed from (step -1: none),
// for messages when a save fails.
static XcProgress last = {.step = -1};

// "epoch 3" after a whole epoch, else "epoch 3, batch 5" (from 1).
static char *where(XcProgress p) {
  return p.iter ? xc_format("epoch %lld, batch %lld", (long long)p.epoch + 1, (long long)p.iter)
                : xc_format("epoch %lld", (long long)p.epoch);
}

static char *dir_of(const char *path) {
  char *copy = xc_strdup(path), *d = xc_strdup(dirname(copy));
  free(copy);
  return d;
}

static noreturn void save_failed(const char *file, const char *weights, const char *optim,
                                 XcProgress p) {
  int e = errno;
  char *dir = dir_of(weights);
  char *hint = last.step >= 0
                   ? xc_format("make room in %s (or fix it) and run again with --resume: %s and "
                               "%s still hold the checkpoint of step %lld (%s)",
                               dir, weights, optim, (long long)last.step, where(last))
                   : xc_format("make room in %s (or fix it) and run again; %s and %s were left "
                               "as they were",
                               dir, weights, optim);
  xc_die(hint, "cannot save the checkpoint of step %lld: %s: %s", (long long)p.step, file,
         strerror(e));
}

void xc_ckpt_save(const char *weights, const char *optim, const XcModel *m, const float *params,
                  const float *state, const int64_t *counters, XcProgress p,
                  const XcCkptMeta *extra, int nextra) {
  StTensor *t = xc_malloc(sizeof(StTensor) * (m->nparams + m->nstates + m->ncounters + 1));
  // The weights, as PyTorch's state_dict.
  int n = xc_weight_tensors(m, params, state, counters, t);
  const char *wmeta[] = {"format", "pt", "model", m->name};
  XcOutFile *w = xc_out_create(weights);
  if (!w)
    save_failed(weights, weights, optim, p);
  if (!st_encode(t, n, wmeta, 2, out_sink, w) || !xc_out_close(w)) {
    xc_out_free(w);
    save_failed(weights, weights, optim, p);
  }
  uint8_t sha[32];
  char sha_hex[65];
  xc_out_sha256(w, sha);
  hex(sha, 32, sha_hex);
  // The optimizer state and the progress, bound to those weights.
  n = 0;
  for (int i = 0; i < m->nstates; i++)
    if (xc_is_optimizer_state(m, &m->states[i]))
      t[n++] = (StTensor){m->states[i].name, m->states[i].rank, m->states[i].dim,
                          state + m->states[i].offset, NULL};
  char *step = xc_format("%lld", (long long)p.step), *epoch = xc_format("%lld", (long long)p.epoch),
       *iter = xc_format("%lld", (long long)p.iter),
       *spe = xc_format("%lld", (long long)p.steps_per_epoch),
       *ostep = xc_format("%lld", (long long)p.opt_step);
  // GradScaler's state as text: %.9g gives a float back exactly.
  char *scale = xc_format("%.9g", p.scale), *tracker = xc_format("%lld", (long long)p.growth_tracker);
  const char *fixed[] = {"format", "pt",   "model", m->name, "step",  step,
                         "epoch",  epoch,  "iter",  iter,    "steps_per_epoch", spe,
                         "opt_step", ostep, "weights_sha256", sha_hex,
                         "grad_scaler.scale", scale, "grad_scaler.growth_tracker", tracker};
  const char **ometa = xc_malloc(sizeof *ometa * (22 + 2 * nextra));
  memcpy(ometa, fixed, sizeof fixed);
  int nmeta = m->precision == XC_PRECISION_FP16 ? 10 : 8;
  char *offset = xc_format("%lld", (long long)p.step_offset);
  if (p.step_offset) {
    ometa[2 * nmeta] = "step_offset";
    ometa[2 * nmeta++ + 1] = offset;
  }
  for (int i = 0; i < nextra; i++)
    if (extra[i].value) {
      ometa[2 * nmeta] = extra[i].key;
      ometa[2 * nmeta++ + 1] = extra[i].value;
    }
  XcOutFile *o = xc_out_create(optim);
  if (!o) {
    xc_out_free(w);
    save_failed(optim, weights, optim, p);
  }
  if (!st_encode(t, n, ometa, nmeta, out_sink, o) || !xc_out_close(o) ||
      !xc_out_rename(o, optim)) {
    xc_out_free(o);
    xc_out_free(w);
    save_failed(optim, weights, optim, p);
  }
  // Committed: from here on, the checkpoint is the new one.
  last = p;
  xc_out_free(o);
  if (!xc_out_rename(w, weights)) {
    int e = errno;
    xc_die(xc_format("run again with --resume once %s is writable: it completes the save "
                     "(the new weights are kept beside it)",
                     weights),
           "the checkpoint of step %lld is saved in %s, but %s could not be replaced: %s",
           (long long)p.step, optim, weights, strerror(e));
  }
  xc_out_free(w);
  sync_dir(weights);
  free(step), free(epoch), free(iter), free(spe), free(ostep), free(scale), free(tracker), free(t);
  free(offset);
  free(ometa);
}

void xc_ckpt_save_weights(const char *path, const XcModel *m, const float *params,
                          const float *state, const int64_t *counters, const char *const *meta_kv,
                          int nmeta) {
  StTensor *t = xc_malloc(sizeof(StTensor) * (m->nparams + m->nstates + m->ncounters + 1));
  int n = xc_weight_tensors(m, params, state, counters, t);
  if (!st_write(path, t, n, meta_kv, nmeta)) {
    int e = errno;
    char *dir = dir_of(path);
    xc_die(xc_format("make room in %s (or fix it) and run again with --resume", dir),
           "cannot save %s: %s", path, strerror(e));
  }
  sync_dir(path);
  free(t);
}

//
// Checking
//

// A count written by xc_ckpt_save: decimal digits only, at most max.
static bool parse_count(const char *s, int64_t max, int64_t *v) {
  if (!s || !*s || strlen(s) > 19)
    return false;
  int64_t x = 0;
  for (const char *c = s; *c; c++) {
    if (*c < '0' || *c > '9' || x > (max - (*c - '0')) / 10)
      return false;
    x = x * 10 + (*c - '0');
  }
  *v = x;
  return true;
}

static bool parse_sha(const char *s, uint8_t out[32]) {
  if (!s || strlen(s) != 64)
    return false;
  for (int i = 0; i < 64; i++) {
    char c = s[i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0)
      return false;
    out[i / 2] = (uint8_t)(i % 2 ? out[i / 2] | d : d << 4);
  }
  return true;
}

// SHA-256 of a regular file's bytes; false and *err if it cannot be read.
static bool file_sha256(const char *path, uint8_t out[32], char **err) {
  int fd = xc_open_regular(path, err);
  if (fd < 0)
    return false;
  XcSha256 s;
  xc_sha256_init(&s);
  uint8_t buf[65536];
  for (;;) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      *err = xc_format("cannot read: %s", strerror(errno));
      close(fd);
      return false;
    }
    if (r == 0)
      break;
    xc_sha256_update(&s, buf, (size_t)r);
  }
  close(fd);
  xc_sha256_final(&s, out);
  return true;
}

// The optimizer file's header, if it is a regular file (never waiting on a
// FIFO planted at its name).
static StFile *open_optim(const char *optim, char **err) {
  char *why;
  int fd = xc_open_regular(optim, &why);
  if (fd < 0) {
    *err = xc_format("%s: %s", optim, why);
    return NULL;
  }
  return st_open_fd(fd, optim, err);
}

//
// Tidying up after an interrupted save
//

// Is name "BASE.tmp-<16 hex>" (ours), or "BASE.tmp.<pid>" (earlier
// versions of the runtime), for the base name of weights or optim?
static bool is_tmp_of(const char *name, const char *base) {
  size_t n = strlen(base);
  if (strncmp(name, base, n))
    return false;
  const char *s = name + n;
  if (!strncmp(s, tmp_infix, strlen(tmp_infix))) {
    s += strlen(tmp_infix);
    size_t k = strspn(s, "0123456789abcdef");
    return k == TMP_HEX && !s[k];
  }
  if (!strncmp(s, ".tmp.", 5)) {
    s += 5;
    size_t k = strspn(s, "0123456789");
    return k > 0 && !s[k];
  }
  return false;
}

// A file's SHA-256, or false when it cannot be read (why does not matter).
static bool sha_of(const char *path, uint8_t out[32]) {
  char *err = NULL;
  bool ok = file_sha256(path, out, &err);
  free(err);
  return ok;
}

// Is name a temporary of the file others[i] in dir?
static bool is_other_tmp(const char *name, const char *dir, const char *const *others,
                         int nothers) {
  for (int i = 0; i < nothers; i++) {
    char *odir = dir_of(others[i]);
    bool same = !strcmp(odir, dir) && is_tmp_of(name, xc_basename(others[i]));
    free(odir);
    if (same)
      return true;
  }
  return false;
}

void xc_ckpt_tidy(const char *weights, const char *optim, const char *const *others, int nothers) {
  char *dir = dir_of(weights);
  const char *wbase = xc_basename(weights), *obase = xc_basename(optim);
  DIR *d = opendir(dir);
  if (!d) {
    free(dir);
    return;
  }
  char **tmps = NULL;
  int n = 0;
  for (struct dirent *de; (de = readdir(d));)
    if (is_tmp_of(de->d_name, wbase) || is_tmp_of(de->d_name, obase) ||
        is_other_tmp(de->d_name, dir, others, nothers)) {
      tmps = xc_realloc(tmps, sizeof *tmps * (n + 1));
      tmps[n++] = xc_join(dir, de->d_name);
    }
  closedir(d);
  // A save that committed the optimizer file but was stopped before the
  // weights followed: the weights wait in a temporary whose hash is the
  // one the optimizer file records.
  char *err = NULL;
  StFile *f = n ? open_optim(optim, &err) : NULL;
  free(err);
  uint8_t want[32], have[32];
  if (f && parse_sha(st_meta(f, "weights_sha256"), want) &&
      !(sha_of(weights, have) && !memcmp(want, have, 32))) {
    for (int i = 0; i < n; i++) {
      struct stat st;
      if (!is_tmp_of(xc_basename(tmps[i]), wbase) || lstat(tmps[i], &st) != 0 ||
          !S_ISREG(st.st_mode) || st.st_uid != geteuid() || !sha_of(tmps[i], have) ||
          memcmp(want, have, 32))
        continue;
      if (rename(tmps[i], weights) == 0) {
        xc_sync_dir_of(weights);
        xc_warn(NULL,
                "the last save of %s (step %s) was stopped before the weights were replaced; "
                "%s now holds the weights saved with it",
                optim, st_meta(f, "step") ? st_meta(f, "step") : "?", weights);
        free(tmps[i]);
        tmps[i] = NULL;
        break;
      }
    }
  }
  st_free(f);
  // Whatever else is left of interrupted saves (never another user's file;
  // unlink removes a symbolic link itself, not what it points to).
  for (int i = 0; i < n; i++) {
    struct stat st;
    if (tmps[i] && lstat(tmps[i], &st) == 0 && st.st_uid == geteuid() && !S_ISDIR(st.st_mode))
      unlink(tmps[i]);
    free(tmps[i]);
  }
  free(tmps);
  free(dir);
}

//
// Resuming
//

static noreturn void damaged(const char *optim, const char *weights, const char *fmt,
                             const char *a, const char *b) {
  xc_die(xc_format("the checkpoint was changed or damaged since a run wrote it: restore both "
                   "files from a backup, or continue from the weights alone with --init %s "
                   "instead of --resume (the optimizer state starts afresh)",
                   weights),
         fmt, optim, a, b);
}

XcProgress xc_ckpt_resume(const char *weights, const char *optim, const XcModel *m, float *params,
                          float *state, int64_t *counters, XcCkptMeta *extra, int nextra) {
  if (access(optim, F_OK) != 0) {
    if (access(weights, F_OK) == 0)
      xc_die(xc_format("continue from the weights alone with --init %s instead of --resume "
                       "(the optimizer state starts afresh)",
                       weights),
             "--resume: no checkpoint: %s has no %s beside it", weights, optim);
    xc_die("train without --resume first; checkpoints are written after every epoch",
           "--resume: no checkpoint %s with %s", weights, optim);
  }
  char *err;
  StFile *f = open_optim(optim, &err);
  if (!f)
    xc_die(xc_format("restore it from a backup, or continue from the weights alone with --init "
                     "%s instead of --resume (the optimizer state starts afresh)",
                     weights),
           "%s", err);
  // The progress, every number checked: a count of digits, and one
  // position in the run (step = epoch * steps_per_epoch + iter).
  const char *model = st_meta(f, "model");
  if (!model || strcmp(model, m->name))
    xc_die("resume with the executable of the model that wrote it, or use another --save",
           "%s is a checkpoint of model '%s', not '%s'", optim, model ? model : "(none)", m->name);
  uint8_t want[32];
  if (!parse_sha(st_meta(f, "weights_sha256"), want))
    xc_die(xc_format("it was written by an earlier xentcc, which saved the weights and the "
                     "optimizer state apart; continue from the weights alone with --init %s "
                     "instead of --resume (the optimizer state starts afresh)",
                     weights),
           "%s does not record the SHA-256 of its weights (weights_sha256)", optim);
  XcProgress p;
  const char *keys[] = {"step", "epoch", "iter", "steps_per_epoch", "opt_step"};
  int64_t *vals[] = {&p.step, &p.epoch, &p.iter, &p.steps_per_epoch, &p.opt_step};
  // --steps is at most 2e9 and --epochs 1e6; a loader counts epochs in int.
  int64_t max[] = {2000000000, INT_MAX - 1, INT_MAX - 1, INT_MAX, 2000000000};
  for (int i = 0; i < 5; i++) {
    const char *v = st_meta(f, keys[i]);
    if (!parse_count(v, max[i], vals[i]))
      damaged(optim, weights,
              v ? "%s: '%s' is \"%s\" in its metadata, not a count"
                : "%s: no '%s' in its metadata%s",
              keys[i], v ? v : "");
  }
  // fp16: GradScaler's scale (a positive finite float) and growth tracker
  // (clean steps since the scale last changed, below growth_interval).
  p.scale = 1.0f;
  p.growth_tracker = 0;
  if (m->precision == XC_PRECISION_FP16) {
    const char *v = st_meta(f, "grad_scaler.scale");
    char *end = NULL;
    if (v) {
      errno = 0;
      p.scale = strtof(v, &end);
    }
    if (!v || end == v || *end || errno || !(p.scale > 0) || isinf(p.scale))
      damaged(optim, weights,
              v ? "%s: '%s' is \"%s\" in its metadata, not a positive float"
                : "%s: no '%s' in its metadata (a checkpoint of a run in another precision?)%s",
              "grad_scaler.scale", v ? v : "");
    v = st_meta(f, "grad_scaler.growth_tracker");
    if (!parse_count(v, INT32_MAX, &p.growth_tracker) || p.growth_tracker >= m->growth_interval)
      damaged(optim, weights,
              v ? "%s: '%s' is \"%s\" in its metadata, not a count below growth_interval"
                : "%s: no '%s' in its metadata%s",
              "grad_scaler.growth_tracker", v ? v : "");
  }
  // A run that changed the global batch on --resume counts its steps from
  // an offset (signed: fewer or more steps per epoch than before).
  p.step_offset = 0;
  const char *off = st_meta(f, "step_offset");
  if (off) {
    char *end;
    errno = 0;
    long long v = strtoll(off, &end, 10);
    if (end == off || *end || errno || v < -2000000000LL || v > 2000000000LL)
      damaged(optim, weights, "%s: '%s' is \"%s\" in its metadata, not a step count",
              "step_offset", off);
    p.step_offset = v;
  }
  int64_t at;
  if (p.opt_step > p.step)
    damaged(optim, weights, "%s: more updates ('%s') than steps ('%s') in its metadata",
            "opt_step", "step");
  if (p.steps_per_epoch < 1 || p.iter >= p.steps_per_epoch ||
      __builtin_mul_overflow(p.epoch, p.steps_per_epoch, &at) ||
      at + p.iter + p.step_offset != p.step)
    xc_die(xc_format("the checkpoint was changed or damaged since a run wrote it: restore both "
                     "files from a backup, or continue from the weights alone with --init %s "
                     "instead of --resume",
                     weights),
           "%s: step %lld is not epoch %lld, batch %lld of %lld batches per epoch", optim,
           (long long)p.step, (long long)p.epoch, (long long)p.iter,
           (long long)p.steps_per_epoch);
  // Its tensors: the model's optimizer state, all of it, nothing else.
  int nopt = 0;
  for (int i = 0; i < m->nstates; i++)
    nopt += xc_is_optimizer_state(m, &m->states[i]);
  if (f->n != nopt)
    for (int i = 0; i < f->n; i++) {
      bool found = false;
      for (int s = 0; s < m->nstates && !found; s++)
        found = xc_is_optimizer_state(m, &m->states[s]) && !strcmp(f->e[i].name, m->states[s].name);
      if (!found)
        damaged(optim, weights, "%s: '%s' is not optimizer state of model '%s'", f->e[i].name,
                m->name);
    }
  // The weights: the very file saved with it.
  uint8_t have[32];
  if (!file_sha256(weights, have, &err))
    xc_die(xc_format("put back the weights file saved with %s, or train from the start "
                     "without --resume",
                     optim),
           "--resume: %s: %s; the checkpoint %s needs the weights saved with it", weights, err,
           optim);
  if (memcmp(want, have, 32))
    xc_die(xc_format("the weights were replaced or changed after that save: put back the file "
                     "written with it, or continue from these weights with --init %s instead "
                     "of --resume (the optimizer state starts afresh)",
                     weights),
           "--resume: %s is not the weights file saved with %s (step %lld): its SHA-256 differs "
           "from the one recorded there",
           weights, optim, (long long)p.step);
  xc_load_weights(weights, m, params, state, counters);
  XcTensorInfo *opt = xc_malloc(sizeof *opt * (nopt + 1));
  for (int i = 0, k = 0; i < m->nstates; i++)
    if (xc_is_optimizer_state(m, &m->states[i]))
      opt[k++] = m->states[i];
  st_load_into(f, state, opt, nopt, "optimizer state");
  free(opt);
  for (int i = 0; i < nextra; i++) {
    const char *v = st_meta(f, extra[i].key);
    extra[i].value = v ? xc_strdup(v) : NULL;
  }
  st_free(f);
  last = p;
  return p;
}

void xc_ckpt_check_data(const char *optim, XcProgress p, int64_t steps_per_epoch,
                        const char *data) {
  if (p.steps_per_epoch != steps_per_epoch)
    xc_die("resume with the data, --drop-last and batch size of the run that wrote the "
           "checkpoint",
           "%s was written at step %lld (%s) of a run with %lld steps per epoch, but %s "
           "gives %lld",
           optim, (long long)p.step, where(p), (long long)p.steps_per_epoch, data,
           (long long)steps_per_epoch);
}

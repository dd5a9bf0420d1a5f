// The runtime part of a compiled model's library (xentcc --emit=lib): loads
// weights against the model's tensor table, runs the forward functions over
// any number of images, resizes and normalizes 8-bit images as NAME-eval
// does, and keeps why the last call failed, per thread. A library never
// prints and never exits its host: every failure is a return value and a
// message for NAME_error.
#define _GNU_SOURCE // memfd_create
#include "xentcc_lib.h"
#include "rt.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct XcLib {
  const XcLibModel *d;
  float *params;   // d->param_floats, laid out as d->params
  float *state;    // d->state_floats, laid out as d->states
  void *workspace; // d->workspace_bytes
  float *pad;      // block images: a partial last block, padded with zeros
  float *pad_logits;
};

// The library's only mutable static storage: NAME_error's text, one per
// thread, so that objects used on different threads never share it.
static _Thread_local char error_text[1024];

static void set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void set_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(error_text, sizeof error_text, fmt, ap);
  va_end(ap);
}

const char *xc_lib_error(void) { return error_text; }

// The shared runtime code (safetensors.c, alloc.c, resize.c) reports only
// running out of memory through xc_die, deep inside a parse with no way
// back: a library cannot exit its host, so it says why and aborts.
noreturn void xc_die(const char *hint, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("xentcc library: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  abort();
}

static void *alloc64(int64_t bytes) {
  size_t n = ((size_t)(bytes > 0 ? bytes : 1) + 63) & ~(size_t)63;
  void *p = aligned_alloc(64, n);
  if (p)
    memset(p, 0, n);
  return p;
}

void xc_lib_free(XcLib *m) {
  if (!m)
    return;
  free(m->params), free(m->state), free(m->workspace), free(m->pad), free(m->pad_logits);
  free(m);
}

static char *shape_text(char *buf, size_t size, int rank, const int64_t *dim) {
  size_t n = (size_t)snprintf(buf, size, "[");
  for (int d = 0; d < rank && n < size; d++)
    n += (size_t)snprintf(buf + n, size - n, "%s%lld", d ? ", " : "", (long long)dim[d]);
  if (n < size)
    snprintf(buf + n, size - n, "]");
  return buf;
}

// The file's entry for model tensor t, checked against it; NULL with the
// error set when it is of another shape or not floats.
static const StEntry *check_entry(const StFile *f, const StEntry *e, const XcTensorInfo *t) {
  char want[128], got[128];
  bool same = e->rank == t->rank;
  for (int d = 0; same && d < t->rank; d++)
    same = e->dim[d] == t->dim[d];
  if (!same) {
    set_error("%s: '%s' has shape %s, but the model's is %s (weights of a different model?)",
              f->path, t->name, shape_text(got, sizeof got, e->rank, e->dim),
              shape_text(want, sizeof want, t->rank, t->dim));
    return NULL;
  }
  if (!st_is_float(e->dtype)) {
    set_error("%s: '%s' has dtype %s; save the tensors as floats (tensor.float())", f->path,
              t->name, e->dtype);
    return NULL;
  }
  return e;
}

// As NAME-eval loads weights: every parameter must be there; a buffer
// (running statistics) loads when present and otherwise keeps its initial
// value, as a PyTorch model saved without buffers has none to give; other
// tensors (num_batches_tracked, optimizer state) are ignored.
static XcLib *load_from(const XcLibModel *d, StFile *f) {
  XcLib *m = calloc(1, sizeof *m);
  StLoad *l = calloc((size_t)d->nparams + d->nstates + 1, sizeof *l);
  if (m)
    *m = (XcLib){d, alloc64(d->param_floats * 4), alloc64(d->state_floats * 4),
                 alloc64(d->workspace_bytes), alloc64((int64_t)d->block * d->channels * d->height *
                                                      d->width * 4),
                 alloc64((int64_t)d->block * d->outputs * 4)};
  if (!m || !l || !m->params || !m->state || !m->workspace || !m->pad || !m->pad_logits) {
    set_error("%s: out of memory for the model's %lld floats of weights", f->path,
              (long long)(d->param_floats + d->state_floats));
    goto fail;
  }
  int n = 0;
  for (int i = 0; i < d->nparams; i++) {
    const XcTensorInfo *t = &d->params[i];
    const StEntry *e = st_find(f, t->name);
    if (!e) {
      char s[128];
      set_error("%s: parameter '%s' %s is missing; the file must hold every parameter of model "
                "'%s' with PyTorch's state_dict names",
                f->path, t->name, shape_text(s, sizeof s, t->rank, t->dim), d->name);
      goto fail;
    }
    if (!check_entry(f, e, t))
      goto fail;
    l[n++] = (StLoad){e, m->params + t->offset, NULL};
  }
  for (int i = 0; i < d->nstates; i++) {
    const XcTensorInfo *t = &d->states[i];
    const StEntry *e = st_find(f, t->name);
    if (e) {
      if (!check_entry(f, e, t))
        goto fail;
      l[n++] = (StLoad){e, m->state + t->offset, NULL};
    } else if (t->init == XC_INIT_ONES) { // running_var; running_mean stays zero
      int64_t len = 1;
      for (int k = 0; k < t->rank; k++)
        len *= t->dim[k];
      for (int64_t k = 0; k < len; k++)
        m->state[t->offset + k] = 1.0f;
    }
  }
  char *err = NULL;
  if (!st_load(f, l, n, &err)) {
    set_error("%s", err);
    free(err);
    goto fail;
  }
  if (d->prepare_one)
    d->prepare_one(m->params, m->state, NULL, NULL, m->workspace);
  if (d->prepare_block)
    d->prepare_block(m->params, m->state, NULL, NULL, m->workspace);
  free(l);
  st_free(f);
  return m;
fail:
  free(l);
  st_free(f);
  xc_lib_free(m);
  return NULL;
}

XcLib *xc_lib_load(const XcLibModel *d, const char *path) {
  if (!path) {
    set_error("%s_load: no weights file given (NULL)", d->name);
    return NULL;
  }
  char *err = NULL;
  StFile *f = st_open(path, &err);
  if (!f) {
    set_error("%s", err);
    free(err);
    return NULL;
  }
  return load_from(d, f);
}

// The embedded file goes through the same checked reader, from an
// anonymous memory file: one reader for both, at the cost of a copy.
XcLib *xc_lib_load_embedded(const XcLibModel *d) {
  if (!d->weights) {
    set_error("%s_load_embedded: the library was compiled without --weights", d->name);
    return NULL;
  }
  int fd = memfd_create("weights", MFD_CLOEXEC);
  if (fd < 0) {
    set_error("%s_load_embedded: memfd_create: %s", d->name, strerror(errno));
    return NULL;
  }
  for (int64_t done = 0; done < d->weights_bytes;) {
    ssize_t w = write(fd, d->weights + done, (size_t)(d->weights_bytes - done));
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      set_error("%s_load_embedded: cannot copy the weights: %s", d->name,
                strerror(w < 0 ? errno : ENOSPC));
      close(fd);
      return NULL;
    }
    done += w;
  }
  char *err = NULL;
  StFile *f = st_open_fd(fd, "<embedded weights>", &err);
  if (!f) {
    set_error("%s", err);
    free(err);
    return NULL;
  }
  return load_from(d, f);
}

// Full blocks run the block function; what is left runs image by image,
// or, when it is at least a quarter of a block, as one block padded with
// zeros (one block call costs less than that many single calls).
int xc_lib_predict(XcLib *m, const float *images, int n, float *logits) {
  if (!m || !images || !logits || n < 1) {
    set_error("predict: %s", !m        ? "no model (NULL): check what load returned"
                             : !images ? "images is NULL"
                             : !logits ? "logits is NULL"
                                       : "n must be at least 1");
    return -1;
  }
  const XcLibModel *d = m->d;
  size_t in = (size_t)d->channels * d->height * d->width, out = (size_t)d->outputs;
  int i = 0;
  for (; d->block > 1 && n - i >= d->block; i += d->block)
    d->forward_block(m->params, m->state, images + i * in, logits + i * out, m->workspace);
  int left = n - i;
  if (left > 0 && d->block > 1 && 4 * left >= d->block) {
    memcpy(m->pad, images + i * in, sizeof(float) * in * left);
    memset(m->pad + in * left, 0, sizeof(float) * in * (d->block - left));
    d->forward_block(m->params, m->state, m->pad, m->pad_logits, m->workspace);
    memcpy(logits + i * out, m->pad_logits, sizeof(float) * out * left);
    return 0;
  }
  for (; i < n; i++)
    d->forward_one(m->params, m->state, images + i * in, logits + i * out, m->workspace);
  return 0;
}

// An image of at most this many pixels: PIL's limit for decompression
// bombs, doubled, as NAME-eval refuses (runtime/image.c).
enum { MAX_PIXELS = 2 * XC_MAX_IMAGE_PIXELS };

// NAME-eval's path from a decoded photo (runtime/eval_main.c): to the
// model's channels and size (xc_image_to_chw), then ToTensor and
// Normalize, the same float operations as xc_transform.
int xc_lib_predict_rgb8(XcLib *m, const unsigned char *hwc, int height, int width,
                        float *logits) {
  if (!m || !hwc || !logits || height < 1 || width < 1 ||
      (int64_t)height * width > MAX_PIXELS) {
    if (height < 1 || width < 1 || (int64_t)height * width > MAX_PIXELS)
      set_error("predict_rgb8: a %d x %d image; give 1 to %d pixels", height, width, MAX_PIXELS);
    else
      set_error("predict_rgb8: %s is NULL", !m ? "the model" : !hwc ? "hwc" : "logits");
    return -1;
  }
  const XcLibModel *d = m->d;
  int c = d->channels, h = d->height, w = d->width;
  uint8_t *chw = malloc((size_t)c * h * w);
  if (!chw) {
    set_error("predict_rgb8: out of memory");
    return -1;
  }
  Image img = {width, height, 3, (uint8_t *)hwc};
  xc_image_to_chw(&img, c, h, w, chw);
  for (int ch = 0; ch < c; ch++) {
    float mean = d->mean[ch < 4 ? ch : 0], std = d->std[ch < 4 ? ch : 0];
    for (int i = 0; i < h * w; i++) {
      float v = (float)chw[(size_t)ch * h * w + i] / 255.0f;
      m->pad[(size_t)ch * h * w + i] = (v - mean) / std;
    }
  }
  free(chw);
  d->forward_one(m->params, m->state, m->pad, logits, m->workspace);
  return 0;
}

// The runtime part of a compiled model's library (xentcc --emit=lib): loads
// weights against the model's tensor table, runs the forward functions over
// any number of images, resizes and normalizes 8-bit images as NAME-eval
// does, and keeps why the last call failed, per thread. A library never
// prints and never exits its host: every failure, running out of memory
// included, is a return value and a message for NAME_error.
#include "xentcc_lib.h"
#include "rt.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct XcLib {
  const XcLibModel *d;
  float *params;   // d->param_floats, laid out as d->params
  float *state;    // d->state_floats, laid out as d->states
  void *workspace; // d->workspace_bytes
  float *pad;      // block images: a partial last block, padded with zeros
  float *pad_logits;
};

// The library's only mutable static storage, one per thread, so that
// objects used on different threads never share it: NAME_error's text, and
// where xc_die returns to (below).
static _Thread_local char error_text[1024];
static _Thread_local jmp_buf *recover;

static void set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void set_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(error_text, sizeof error_text, fmt, ap);
  va_end(ap);
}

// NAME_error's rule, errno's with one difference: every NAME_ function but
// NAME_error and NAME_free clears the text when it starts, so after a call
// that succeeded it is "", never an older call's failure.
const char *xc_lib_error(void) { return error_text; }

// The shared runtime code (safetensors.c, alloc.c) returns errors, its
// allocations of a size an input chooses included; what is left to xc_die
// is running out of memory for an error message's text. A library cannot
// exit its host: xc_die returns to the library function that made the
// call (guarded() below), which fails with the message; what the reader
// had allocated by then is lost, a few bytes.
noreturn void xc_die(const char *hint, const char *fmt, ...) {
  (void)hint;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(error_text, sizeof error_text, fmt, ap);
  va_end(ap);
  if (recover)
    longjmp(*recover, 1);
  abort(); // unreachable: every call into the shared code is guarded
}

// st_open and st_open_mem, and st_load, with xc_die returning here.
typedef struct {
  const char *path;      // st_open
  const uint8_t *mem;    // else st_open_mem
  int64_t size;
  StFile *file;          // else st_load(file, load, n)
  StLoad *load;
  int n;
} Guarded;

static bool guarded(Guarded *g, char **err) {
  jmp_buf here;
  *err = NULL;
  if (setjmp(here)) {
    recover = NULL;
    *err = NULL; // error_text holds xc_die's message
    return false;
  }
  recover = &here;
  bool ok = g->file ? st_load(g->file, g->load, g->n, err)
                    : (g->file = g->path ? st_open(g->path, err)
                                         : st_open_mem(g->mem, g->size, "<embedded weights>", err)) != NULL;
  recover = NULL;
  return ok;
}

// A failure of the shared code: its message, or xc_die's already in place.
static void set_error_from(char *err) {
  if (err)
    set_error("%s", err);
  free(err);
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
  char *err;
  if (!guarded(&(Guarded){.file = f, .load = l, .n = n}, &err)) {
    set_error_from(err);
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
  error_text[0] = '\0';
  if (!path) {
    set_error("%s_load: no weights file given (NULL)", d->name);
    return NULL;
  }
  Guarded g = {.path = path};
  char *err;
  if (!guarded(&g, &err)) {
    set_error_from(err);
    return NULL;
  }
  return load_from(d, g.file);
}

// The embedded file goes through the same checked reader, which reads it
// where it lies (st_open_mem): no copy, nothing that depends on the system.
XcLib *xc_lib_load_embedded(const XcLibModel *d) {
  error_text[0] = '\0';
  if (!d->weights) {
    set_error("%s_load_embedded: the library was compiled without --weights", d->name);
    return NULL;
  }
  Guarded g = {.mem = d->weights, .size = d->weights_bytes};
  char *err;
  if (!guarded(&g, &err)) {
    set_error_from(err);
    return NULL;
  }
  return load_from(d, g.file);
}

// Full blocks run the block function; what is left runs image by image,
// or, when it is at least a quarter of a block, as one block padded with
// zeros (one block call costs less than that many single calls).
int xc_lib_predict(XcLib *m, const float *images, int n, float *logits) {
  error_text[0] = '\0';
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
// Normalize: xc_to_tensor, as xc_transform's tables.
int xc_lib_predict_rgb8(XcLib *m, const unsigned char *hwc, int height, int width,
                        float *logits) {
  error_text[0] = '\0';
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
  if (!xc_image_to_chw_try(&img, c, h, w, chw)) {
    free(chw);
    set_error("predict_rgb8: out of memory resizing a %d x %d image", height, width);
    return -1;
  }
  for (int ch = 0; ch < c; ch++) {
    float mean = d->mean[ch < 4 ? ch : 0], std = d->std[ch < 4 ? ch : 0];
    for (int i = 0; i < h * w; i++)
      m->pad[(size_t)ch * h * w + i] = xc_to_tensor(chw[(size_t)ch * h * w + i], mean, std);
  }
  free(chw);
  d->forward_one(m->params, m->state, m->pad, logits, m->workspace);
  return 0;
}

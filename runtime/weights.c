// Model weights in safetensors files: a model's parameters and buffers
// checked against its tensor table and loaded (--init, --weights, --resume),
// or written atomically with PyTorch's state_dict names (--save). The
// file format itself, reading and encoding, is safetensors.c.
#define _GNU_SOURCE
#include "rt.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// The file's entry for model tensor t, checked against it; dies naming the
// file when it is missing, of another shape, or not floats.
static const StEntry *want(const StFile *f, const XcTensorInfo *t, const char *what) {
  const StEntry *e = st_find(f, t->name);
  if (!e)
    xc_die("the file must hold every parameter of the model with PyTorch's state_dict names "
           "(list them with: python3 -c \"import json,struct,sys; f=open(sys.argv[1],'rb'); "
           "print(list(json.loads(f.read(struct.unpack('<Q',f.read(8))[0]))))\" FILE)",
           "%s: %s '%s' (%s) is missing", f->path, what, t->name, xc_shape_str(t->rank, t->dim));
  bool same = e->rank == t->rank;
  for (int d = 0; same && d < t->rank; d++)
    same = e->dim[d] == t->dim[d];
  if (!same)
    xc_die("the weights were saved from a different model; check the layer sizes in the YAML",
           "%s: '%s' has shape %s, but the model's %s is %s", f->path, t->name,
           xc_shape_str(e->rank, e->dim), what, xc_shape_str(t->rank, t->dim));
  if (!st_is_float(e->dtype))
    xc_die("save the tensors as float32 (tensor.float())", "%s: '%s' has dtype %s", f->path,
           t->name, e->dtype);
  return e;
}

void st_load_into(StFile *f, float *block, const XcTensorInfo *infos, int n, const char *what) {
  StLoad *l = xc_malloc(sizeof *l * (n ? n : 1));
  for (int i = 0; i < n; i++)
    l[i] = (StLoad){want(f, &infos[i], what), block + infos[i].offset, NULL};
  char *err;
  if (!st_load(f, l, n, &err))
    xc_die("the file is damaged; write it again", "%s", err);
  free(l);
}

static bool out_sink(void *ctx, const void *p, size_t n) { return xc_out_write(ctx, p, n); }

bool st_write(const char *path, const StTensor *t, int n, const char *const *meta_kv, int nmeta) {
  XcOutFile *o = xc_out_create(path);
  if (!o)
    return false;
  bool ok = st_encode(t, n, meta_kv, nmeta, out_sink, o) && xc_out_close(o) &&
            xc_out_rename(o, path);
  int e = errno;
  xc_out_free(o);
  if (ok)
    xc_sync_dir_of(path); // the rename itself durable
  errno = e;
  return ok;
}

static StTensor tensor_of(const XcTensorInfo *t, const float *block) {
  return (StTensor){t->name, t->rank, t->dim, block + t->offset, NULL};
}

int xc_weight_tensors(const XcModel *m, const float *params, const float *state,
                      const int64_t *counters, StTensor *t) {
  int n = 0;
  for (int i = 0; i < m->nparams; i++)
    t[n++] = tensor_of(&m->params[i], params);
  for (int i = 0; i < m->nstates; i++)
    if (!xc_is_optimizer_state(m, &m->states[i]))
      t[n++] = tensor_of(&m->states[i], state);
  // As PyTorch's state_dict: int64 scalars, after the layer's other buffers.
  for (int i = 0; counters && i < m->ncounters; i++)
    t[n++] = (StTensor){m->counter_names[i], 0, NULL, NULL, &counters[i]};
  return n;
}

void xc_save_weights(const char *path, const XcModel *m, const float *params, const float *state,
                     const int64_t *counters) {
  StTensor *t = xc_malloc(sizeof(StTensor) * (m->nparams + m->nstates + m->ncounters + 1));
  int n = xc_weight_tensors(m, params, state, counters, t);
  const char *meta[] = {"format", "pt", "model", m->name};
  if (!st_write(path, t, n, meta, 2))
    xc_die("check that the directory exists and is writable", "cannot write weights to %s: %s",
           path, strerror(errno));
  free(t);
}

// An int64 buffer (num_batches_tracked) as PyTorch writes it; other integer
// or float dtypes holding a whole number are taken too.
static void check_counter(const StFile *f, const StEntry *e) {
  bool integer = !strcmp(e->dtype, "I64") || !strcmp(e->dtype, "I32");
  if (e->numel != 1 || !(integer || st_is_float(e->dtype)))
    xc_die("it is a batch norm's count of training batches: a single integer",
           "%s: '%s' has %lld elements of %s", f->path, e->name, (long long)e->numel, e->dtype);
}

static int64_t counter_value(const StFile *f, const StEntry *e, const uint8_t *p) {
  if (!strcmp(e->dtype, "I64") || !strcmp(e->dtype, "I32")) {
    int64_t v = 0;
    for (int b = e->size - 1; b >= 0; b--)
      v = (int64_t)((uint64_t)v << 8 | p[b]);
    if (e->size == 4)
      v = (int32_t)v;
    if (v < 0)
      xc_die("it counts training batches; save it from a model's state_dict",
             "%s: '%s' is %lld, a negative count", f->path, e->name, (long long)v);
    return v;
  }
  double x;
  if (e->size == 8) {
    memcpy(&x, p, 8);
  } else if (e->size == 4) {
    float v;
    memcpy(&v, p, 4);
    x = v;
  } else {
    x = st_half_to_float((uint16_t)(p[0] | p[1] << 8), !strcmp(e->dtype, "BF16"));
  }
  if (!(x >= 0 && x < 9.2e18 && x == (double)(int64_t)x))
    xc_die("it counts training batches; save it from a model's state_dict",
           "%s: '%s' is %g, not a count", f->path, e->name, x);
  return (int64_t)x;
}

void xc_load_weights(const char *path, const XcModel *m, float *params, float *state,
                     int64_t *counters) {
  char *err;
  StFile *f = st_open(path, &err);
  if (!f)
    xc_die(xc_is_file(path) || !access(path, F_OK)
               ? "the file must be a safetensors file (safetensors.torch.save_file)"
               : "give the weights file a training run wrote (--save)",
           "%s", err);
  StLoad *l = xc_malloc(sizeof *l * (m->nparams + m->nstates + m->ncounters + 1));
  uint8_t(*raw)[8] = xc_calloc(m->ncounters + 1, 8);
  int n = 0;
  for (int i = 0; i < m->nparams; i++)
    l[n++] = (StLoad){want(f, &m->params[i], "parameter"), params + m->params[i].offset, NULL};
  // Model buffers (running statistics) load when present; a PyTorch model
  // without them has nothing to give.
  for (int i = 0; i < m->nstates; i++) {
    const XcTensorInfo *t = &m->states[i];
    if (xc_is_optimizer_state(m, t))
      continue;
    if (st_find(f, t->name))
      l[n++] = (StLoad){want(f, t, "buffer"), state + t->offset, NULL};
    else
      xc_warn(NULL, "%s: buffer '%s' is missing; keeping its initial value", path, t->name);
  }
  const StEntry **ce = xc_calloc(m->ncounters + 1, sizeof *ce);
  for (int i = 0; i < m->ncounters; i++) {
    ce[i] = st_find(f, m->counter_names[i]);
    if (ce[i]) {
      check_counter(f, ce[i]);
      l[n++] = (StLoad){ce[i], NULL, raw[i]};
    }
  }
  int known = n;
  if (!st_load(f, l, n, &err))
    xc_die("the file is damaged; write it again", "%s", err);
  for (int i = 0; i < m->ncounters; i++)
    if (ce[i]) {
      int64_t v = counter_value(f, ce[i], raw[i]);
      if (counters)
        counters[i] = v;
    }
  // Name a few tensors the model does not have (the file's names are
  // unique, so the extras are f->n - known).
  int extra = f->n - known, named = 0;
  for (int i = 0; i < f->n && named < 5 && named < extra; i++) {
    const char *name = f->e[i].name;
    bool found = false;
    for (int p = 0; p < m->nparams && !found; p++)
      found = !strcmp(name, m->params[p].name);
    for (int s = 0; s < m->nstates && !found; s++)
      found = !strcmp(name, m->states[s].name) && !xc_is_optimizer_state(m, &m->states[s]);
    for (int c = 0; c < m->ncounters && !found; c++)
      found = !strcmp(name, m->counter_names[c]);
    if (!found) {
      xc_warn("extra tensors are ignored", "%s: '%s' is not a tensor of model '%s'", path, name,
              m->name);
      named++;
    }
  }
  if (extra > named)
    xc_warn(NULL, "%s: %d more unknown tensors", path, extra - named);
  free(l);
  free(raw);
  free(ce);
  st_free(f);
}

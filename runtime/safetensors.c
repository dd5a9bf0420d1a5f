// Checkpoints as safetensors files, the format PyTorch users exchange
// state_dicts in: an 8-byte little-endian header length, a JSON header
// {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]},
// "__metadata__": {...}}, then the raw little-endian tensor data. Files are
// written atomically (temporary file, fsync, rename) so a crash mid-save
// never leaves a half-written checkpoint under the real name.
#include "rt.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

//
// A JSON reader just large enough for safetensors headers
//

typedef struct {
  const char *p, *end;
  char *err;
} Json;

static bool jfail(Json *j, const char *msg) {
  if (!j->err)
    j->err = xc_format("malformed JSON header: %s", msg);
  return false;
}

static void jws(Json *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t'))
    j->p++;
}

static bool jchar(Json *j, char c) {
  jws(j);
  if (j->p < j->end && *j->p == c) {
    j->p++;
    return true;
  }
  return false;
}

static void put_utf8(char *buf, size_t *n, unsigned cp) {
  if (cp < 0x80) {
    buf[(*n)++] = cp;
  } else if (cp < 0x800) {
    buf[(*n)++] = 0xc0 | cp >> 6;
    buf[(*n)++] = 0x80 | (cp & 0x3f);
  } else {
    buf[(*n)++] = 0xe0 | cp >> 12;
    buf[(*n)++] = 0x80 | ((cp >> 6) & 0x3f);
    buf[(*n)++] = 0x80 | (cp & 0x3f);
  }
}

// A string with its escapes resolved (\uXXXX outside the BMP is kept as two
// 3-byte sequences: tensor names are ASCII in practice).
static char *jstring(Json *j) {
  if (!jchar(j, '"'))
    return jfail(j, "expected a string"), NULL;
  char *buf = xc_malloc(j->end - j->p + 1);
  size_t n = 0;
  while (j->p < j->end && *j->p != '"') {
    char c = *j->p++;
    if (c != '\\') {
      buf[n++] = c;
      continue;
    }
    if (j->p >= j->end)
      break;
    char e = *j->p++;
    switch (e) {
    case 'n':
      buf[n++] = '\n';
      break;
    case 't':
      buf[n++] = '\t';
      break;
    case 'r':
      buf[n++] = '\r';
      break;
    case 'b':
      buf[n++] = '\b';
      break;
    case 'f':
      buf[n++] = '\f';
      break;
    case 'u': {
      unsigned cp = 0;
      for (int i = 0; i < 4; i++, j->p++) {
        if (j->p >= j->end)
          return free(buf), jfail(j, "truncated \\u escape"), NULL;
        char h = *j->p;
        cp = cp * 16 + (h >= '0' && h <= '9'                 ? h - '0'
                        : (h | 32) >= 'a' && (h | 32) <= 'f' ? (h | 32) - 'a' + 10
                                                             : 99);
        if (cp > 0xffff)
          return free(buf), jfail(j, "bad \\u escape"), NULL;
      }
      put_utf8(buf, &n, cp);
      break;
    }
    default:
      buf[n++] = e;
      break;
    }
  }
  if (j->p >= j->end)
    return free(buf), jfail(j, "unterminated string"), NULL;
  j->p++;
  buf[n] = '\0';
  return buf;
}

static bool jint(Json *j, int64_t *v) {
  jws(j);
  const char *s = j->p;
  if (s >= j->end || !(*s == '-' || (*s >= '0' && *s <= '9')))
    return jfail(j, "expected an integer");
  bool neg = *s == '-';
  if (neg)
    s++;
  int64_t x = 0;
  int digits = 0;
  for (; s < j->end && *s >= '0' && *s <= '9'; s++, digits++) {
    if (x > (INT64_MAX - 9) / 10)
      return jfail(j, "integer too large");
    x = x * 10 + (*s - '0');
  }
  if (!digits || (s < j->end && (*s == '.' || *s == 'e' || *s == 'E')))
    return jfail(j, "expected an integer");
  j->p = s;
  *v = neg ? -x : x;
  return true;
}

// Skips any JSON value (for keys we do not know).
static bool jskip(Json *j, int depth) {
  jws(j);
  if (depth > 64 || j->p >= j->end)
    return jfail(j, "unexpected end");
  char c = *j->p;
  if (c == '"') {
    free(jstring(j));
    return !j->err;
  }
  if (c == '{' || c == '[') {
    char close = c == '{' ? '}' : ']';
    j->p++;
    if (jchar(j, close))
      return true;
    do {
      if (c == '{') {
        free(jstring(j));
        if (j->err || !jchar(j, ':'))
          return jfail(j, "expected ':'");
      }
      if (!jskip(j, depth + 1))
        return false;
    } while (jchar(j, ','));
    return jchar(j, close) || jfail(j, "expected ',' or a closing bracket");
  }
  while (j->p < j->end && !strchr(",}] \n\r\t", *j->p))
    j->p++;
  return true;
}

static bool parse_entry(Json *j, StEntry *e) {
  if (!jchar(j, '{'))
    return jfail(j, "a tensor entry must be an object");
  bool have_dtype = false, have_shape = false, have_offsets = false;
  if (!jchar(j, '}')) {
    do {
      char *key = jstring(j);
      if (!key || !jchar(j, ':'))
        return free(key), jfail(j, "expected ':'");
      if (!strcmp(key, "dtype")) {
        char *d = jstring(j);
        if (!d)
          return free(key), false;
        snprintf(e->dtype, sizeof e->dtype, "%s", d);
        free(d);
        have_dtype = true;
      } else if (!strcmp(key, "shape")) {
        if (!jchar(j, '['))
          return free(key), jfail(j, "shape must be a list");
        e->rank = 0;
        if (!jchar(j, ']')) {
          do {
            if (e->rank == 8)
              return free(key), jfail(j, "more than 8 dimensions");
            if (!jint(j, &e->dim[e->rank]) || e->dim[e->rank] < 0)
              return free(key), jfail(j, "bad dimension");
            e->rank++;
          } while (jchar(j, ','));
          if (!jchar(j, ']'))
            return free(key), jfail(j, "expected ']' after the shape");
        }
        have_shape = true;
      } else if (!strcmp(key, "data_offsets")) {
        if (!jchar(j, '[') || !jint(j, &e->begin) || !jchar(j, ',') || !jint(j, &e->end) ||
            !jchar(j, ']'))
          return free(key), jfail(j, "data_offsets must be [begin, end]");
        have_offsets = true;
      } else if (!jskip(j, 1)) {
        return free(key), false;
      }
      free(key);
    } while (jchar(j, ','));
    if (!jchar(j, '}'))
      return jfail(j, "expected ',' or '}'");
  }
  if (!have_dtype || !have_shape || !have_offsets)
    return jfail(j, xc_format("tensor '%s' lacks dtype, shape or data_offsets", e->name));
  return true;
}

static bool parse_meta(Json *j, StFile *f) {
  if (!jchar(j, '{'))
    return jfail(j, "__metadata__ must be an object");
  if (jchar(j, '}'))
    return true;
  do {
    char *k = jstring(j);
    if (!k || !jchar(j, ':'))
      return free(k), jfail(j, "expected ':'");
    char *v = jstring(j);
    if (!v)
      return free(k), false;
    f->meta_key = xc_realloc(f->meta_key, sizeof(char *) * (f->nmeta + 1));
    f->meta_val = xc_realloc(f->meta_val, sizeof(char *) * (f->nmeta + 1));
    f->meta_key[f->nmeta] = k;
    f->meta_val[f->nmeta++] = v;
  } while (jchar(j, ','));
  return jchar(j, '}') || jfail(j, "expected ',' or '}'");
}

static int dtype_size(const char *d) {
  if (!strcmp(d, "F32") || !strcmp(d, "I32"))
    return 4;
  if (!strcmp(d, "F64") || !strcmp(d, "I64"))
    return 8;
  if (!strcmp(d, "F16") || !strcmp(d, "BF16"))
    return 2;
  return 0;
}

static bool is_float(const char *d) { return d[0] == 'F' || !strcmp(d, "BF16"); }

StFile *st_read(const char *path, char **err) {
  *err = NULL;
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    *err = xc_format("cannot open: %s", strerror(errno));
    return NULL;
  }
  StFile *f = xc_calloc(1, sizeof *f);
  f->path = xc_strdup(path);
  uint8_t len8[8];
  uint64_t hlen = 0;
  char *header = NULL;
  if (fread(len8, 1, 8, fp) != 8) {
    *err = xc_format("not a safetensors file (shorter than 8 bytes)");
    goto fail;
  }
  for (int i = 7; i >= 0; i--)
    hlen = hlen << 8 | len8[i];
  fseek(fp, 0, SEEK_END);
  long size = ftell(fp);
  if (hlen < 2 || hlen > (uint64_t)size - 8 || hlen > 100000000) {
    *err = xc_format("not a safetensors file (header length %llu, file size %ld)",
                     (unsigned long long)hlen, size);
    goto fail;
  }
  fseek(fp, 8, SEEK_SET);
  header = xc_malloc(hlen + 1);
  f->data_len = size - 8 - (int64_t)hlen;
  f->data = xc_malloc(f->data_len);
  if (fread(header, 1, hlen, fp) != hlen ||
      fread(f->data, 1, f->data_len, fp) != (size_t)f->data_len) {
    *err = xc_format("read error: %s", strerror(errno));
    goto fail;
  }
  header[hlen] = '\0';

  Json j = {header, header + hlen, NULL};
  if (!jchar(&j, '{')) {
    jfail(&j, "the header is not a JSON object");
  } else if (!jchar(&j, '}')) {
    do {
      char *key = jstring(&j);
      if (!key || !jchar(&j, ':')) {
        free(key);
        jfail(&j, "expected ':'");
        break;
      }
      if (!strcmp(key, "__metadata__")) {
        free(key);
        if (!parse_meta(&j, f))
          break;
        continue;
      }
      f->e = xc_realloc(f->e, sizeof(StEntry) * (f->n + 1));
      StEntry *e = &f->e[f->n++];
      memset(e, 0, sizeof *e);
      e->name = key;
      if (!parse_entry(&j, e))
        break;
      int64_t numel = 1;
      for (int i = 0; i < e->rank; i++)
        numel *= e->dim[i];
      int size = dtype_size(e->dtype);
      if (e->begin < 0 || e->end < e->begin || e->end > f->data_len) {
        jfail(&j,
              xc_format("tensor '%s' has data_offsets [%lld, %lld] outside the %lld data bytes",
                        e->name, (long long)e->begin, (long long)e->end, (long long)f->data_len));
        break;
      }
      if (size && e->end - e->begin != numel * size) {
        jfail(&j, xc_format("tensor '%s' has %lld bytes for %lld elements of %s", e->name,
                            (long long)(e->end - e->begin), (long long)numel, e->dtype));
        break;
      }
    } while (jchar(&j, ','));
    if (!j.err && !jchar(&j, '}'))
      jfail(&j, "expected ',' or '}'");
  }
  if (j.err) {
    *err = j.err;
    goto fail;
  }
  free(header);
  fclose(fp);
  return f;
fail:
  free(header);
  fclose(fp);
  st_free(f);
  return NULL;
}

void st_free(StFile *f) {
  if (!f)
    return;
  for (int i = 0; i < f->n; i++)
    free(f->e[i].name);
  for (int i = 0; i < f->nmeta; i++)
    free(f->meta_key[i]), free(f->meta_val[i]);
  free(f->meta_key);
  free(f->meta_val);
  free(f->e);
  free(f->data);
  free(f->path);
  free(f);
}

const StEntry *st_find(const StFile *f, const char *name) {
  for (int i = 0; i < f->n; i++)
    if (!strcmp(f->e[i].name, name))
      return &f->e[i];
  return NULL;
}

const char *st_meta(const StFile *f, const char *key) {
  for (int i = 0; i < f->nmeta; i++)
    if (!strcmp(f->meta_key[i], key))
      return f->meta_val[i];
  return NULL;
}

static float half_to_float(uint16_t h, bool bf16) {
  if (bf16) {
    uint32_t u = (uint32_t)h << 16;
    float v;
    memcpy(&v, &u, 4);
    return v;
  }
  int e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(m + 1024, e - 25);
  return (float)(h & 0x8000 ? -v : v);
}

static void copy_tensor(const StFile *f, const StEntry *e, float *dst, int64_t n) {
  const uint8_t *src = f->data + e->begin;
  if (!strcmp(e->dtype, "F32")) {
    memcpy(dst, src, n * 4);
  } else if (!strcmp(e->dtype, "F64")) {
    for (int64_t i = 0; i < n; i++) {
      double d;
      memcpy(&d, src + 8 * i, 8);
      dst[i] = (float)d;
    }
  } else {
    bool bf16 = !strcmp(e->dtype, "BF16");
    for (int64_t i = 0; i < n; i++)
      dst[i] = half_to_float((uint16_t)(src[2 * i] | src[2 * i + 1] << 8), bf16);
  }
}

void st_load_into(const StFile *f, float *block, const XcTensorInfo *infos, int n, bool missing_ok,
                  const char *what) {
  for (int i = 0; i < n; i++) {
    const XcTensorInfo *t = &infos[i];
    const StEntry *e = st_find(f, t->name);
    if (!e) {
      if (missing_ok)
        continue;
      xc_die("the file must hold every parameter of the model with PyTorch's state_dict names "
             "(list them with: python3 -c \"import json,struct,sys; f=open(sys.argv[1],'rb'); "
             "print(list(json.loads(f.read(struct.unpack('<Q',f.read(8))[0]))))\" FILE)",
             "%s: %s '%s' (%s) is missing", f->path, what, t->name, xc_shape_str(t->rank, t->dim));
    }
    bool same = e->rank == t->rank;
    for (int d = 0; same && d < t->rank; d++)
      same = e->dim[d] == t->dim[d];
    if (!same)
      xc_die("the weights were saved from a different model; check the layer sizes in the YAML",
             "%s: '%s' has shape %s, but the model's %s is %s", f->path, t->name,
             xc_shape_str(e->rank, e->dim), what, xc_shape_str(t->rank, t->dim));
    if (!dtype_size(e->dtype) || !is_float(e->dtype))
      xc_die("save the tensors as float32 (tensor.float())", "%s: '%s' has dtype %s", f->path,
             t->name, e->dtype);
    copy_tensor(f, e, block + t->offset, xc_numel(t));
  }
}

//
// Writing
//

static void put_json_string(FILE *fp, const char *s) {
  fputc('"', fp);
  for (; *s; s++) {
    unsigned char c = *s;
    if (c == '"' || c == '\\')
      fprintf(fp, "\\%c", c);
    else if (c < 0x20)
      fprintf(fp, "\\u%04x", c);
    else
      fputc(c, fp);
  }
  fputc('"', fp);
}

bool st_write(const char *path, const StTensor *t, int n, const char *const *meta_kv, int nmeta) {
  char *header;
  size_t hlen;
  FILE *h = open_memstream(&header, &hlen);
  fputc('{', h);
  if (nmeta) {
    fputs("\"__metadata__\":{", h);
    for (int i = 0; i < nmeta; i++) {
      if (i)
        fputc(',', h);
      put_json_string(h, meta_kv[2 * i]);
      fputc(':', h);
      put_json_string(h, meta_kv[2 * i + 1]);
    }
    fputc('}', h);
  }
  int64_t off = 0;
  for (int i = 0; i < n; i++) {
    if (i || nmeta)
      fputc(',', h);
    put_json_string(h, t[i].name);
    fprintf(h, ":{\"dtype\":\"%s\",\"shape\":[", t[i].i64 ? "I64" : "F32");
    int64_t numel = 1, size = t[i].i64 ? 8 : 4;
    for (int d = 0; d < t[i].rank; d++) {
      fprintf(h, "%s%lld", d ? "," : "", (long long)t[i].dim[d]);
      numel *= t[i].dim[d];
    }
    fprintf(h, "],\"data_offsets\":[%lld,%lld]}", (long long)off, (long long)(off + size * numel));
    off += size * numel;
  }
  fputc('}', h);
  // Pad with spaces so the data starts 8-byte aligned, as the reference
  // implementation does.
  while ((8 + ftell(h)) % 8)
    fputc(' ', h);
  fclose(h);

  char *tmp = xc_format("%s.tmp.%d", path, (int)getpid());
  FILE *fp = fopen(tmp, "wb");
  if (!fp) {
    int e = errno;
    free(header), free(tmp);
    errno = e;
    return false;
  }
  uint8_t len8[8];
  for (int i = 0; i < 8; i++)
    len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
  bool ok = fwrite(len8, 1, 8, fp) == 8 && fwrite(header, 1, hlen, fp) == hlen;
  for (int i = 0; ok && i < n; i++) {
    int64_t numel = 1;
    for (int d = 0; d < t[i].rank; d++)
      numel *= t[i].dim[d];
    ok = t[i].i64 ? fwrite(t[i].i64, 8, numel, fp) == (size_t)numel
                  : fwrite(t[i].data, 4, numel, fp) == (size_t)numel;
  }
  ok = ok && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
  int e = errno;
  ok = (fclose(fp) == 0) && ok;
  if (ok && rename(tmp, path) != 0) {
    e = errno;
    ok = false;
  }
  if (!ok) {
    unlink(tmp);
  } else {
    xc_sync_dir_of(path); // the rename itself durable
  }
  free(header);
  free(tmp);
  errno = e;
  return ok;
}

static StTensor tensor_of(const XcTensorInfo *t, const float *block) {
  return (StTensor){t->name, t->rank, t->dim, block + t->offset, NULL};
}

void xc_save_weights(const char *path, const XcModel *m, const float *params, const float *state,
                     const int64_t *counters) {
  StTensor *t = xc_malloc(sizeof(StTensor) * (m->nparams + m->nstates + m->ncounters + 1));
  int n = 0;
  for (int i = 0; i < m->nparams; i++)
    t[n++] = tensor_of(&m->params[i], params);
  for (int i = 0; i < m->nstates; i++)
    if (!xc_is_optimizer_state(m, &m->states[i]))
      t[n++] = tensor_of(&m->states[i], state);
  // As PyTorch's state_dict: int64 scalars, after the layer's other buffers.
  for (int i = 0; counters && i < m->ncounters; i++)
    t[n++] = (StTensor){m->counter_names[i], 0, NULL, NULL, &counters[i]};
  const char *meta[] = {"format", "pt", "model", m->name};
  if (!st_write(path, t, n, meta, 2))
    xc_die("check that the directory exists and is writable", "cannot write weights to %s: %s",
           path, strerror(errno));
  free(t);
}

void xc_save_optimizer(const char *path, const XcModel *m, const float *state, int step, int epoch,
                       int iter, int opt_step) {
  StTensor *t = xc_malloc(sizeof(StTensor) * (m->nstates + 1));
  int n = 0;
  for (int i = 0; i < m->nstates; i++)
    if (xc_is_optimizer_state(m, &m->states[i]))
      t[n++] = tensor_of(&m->states[i], state);
  // epoch: complete epochs; iter: batches done in the next one.
  // opt_step: updates applied (steps skipped for a non-finite gradient do
  // not count), the optimizer's own step number.
  char *s = xc_format("%d", step), *e = xc_format("%d", epoch), *it = xc_format("%d", iter);
  char *os = xc_format("%d", opt_step);
  const char *meta[] = {"format", "pt", "model", m->name, "step", s, "epoch", e, "iter", it,
                        "opt_step", os};
  if (!st_write(path, t, n, meta, 6))
    xc_die("check that the directory exists and is writable",
           "cannot write optimizer state to %s: %s", path, strerror(errno));
  free(s), free(e), free(it), free(os), free(t);
}

// An int64 buffer (num_batches_tracked) as PyTorch writes it; other integer
// or float dtypes holding a whole number are taken too.
static int64_t load_counter(const StFile *f, const StEntry *e) {
  int64_t numel = 1;
  for (int d = 0; d < e->rank; d++)
    numel *= e->dim[d];
  const uint8_t *p = f->data + e->begin;
  if (numel != 1 || !dtype_size(e->dtype))
    xc_die("it is a batch norm's count of training batches: a single integer",
           "%s: '%s' has %lld elements of %s", f->path, e->name, (long long)numel, e->dtype);
  if (!strcmp(e->dtype, "I64") || !strcmp(e->dtype, "I32")) {
    int64_t v = 0;
    for (int b = dtype_size(e->dtype) - 1; b >= 0; b--)
      v = (int64_t)((uint64_t)v << 8 | p[b]);
    if (!strcmp(e->dtype, "I32"))
      v = (int32_t)v;
    if (v < 0)
      xc_die("it counts training batches; save it from a model's state_dict",
             "%s: '%s' is %lld, a negative count", f->path, e->name, (long long)v);
    return v;
  }
  float x;
  copy_tensor(f, e, &x, 1);
  if (!(x >= 0 && x == (float)(int64_t)x))
    xc_die("it counts training batches; save it from a model's state_dict",
           "%s: '%s' is %g, not a count", f->path, e->name, x);
  return (int64_t)x;
}

void xc_load_weights(const char *path, const XcModel *m, float *params, float *state,
                     int64_t *counters) {
  char *err;
  StFile *f = st_read(path, &err);
  if (!f)
    xc_die(xc_is_file(path) ? "the file must be a safetensors file (safetensors.torch.save_file)"
                            : "give the weights file a training run wrote (--save)",
           "%s: %s", path, err);
  st_load_into(f, params, m->params, m->nparams, false, "parameter");
  // Model buffers (running statistics) load when present; a PyTorch model
  // without them has nothing to give.
  int known = m->nparams;
  for (int i = 0; i < m->nstates; i++) {
    const XcTensorInfo *t = &m->states[i];
    if (xc_is_optimizer_state(m, t))
      continue;
    if (st_find(f, t->name)) {
      st_load_into(f, state, t, 1, false, "buffer");
      known++;
    } else {
      xc_warn(NULL, "%s: buffer '%s' is missing; keeping its initial value", path, t->name);
    }
  }
  for (int i = 0; i < m->ncounters; i++) {
    const StEntry *e = st_find(f, m->counter_names[i]);
    if (e) {
      int64_t v = load_counter(f, e);
      if (counters)
        counters[i] = v;
      known++;
    }
  }
  if (f->n > known) {
    int extra = 0;
    for (int i = 0; i < f->n; i++) {
      bool found = false;
      for (int p = 0; p < m->nparams && !found; p++)
        found = !strcmp(f->e[i].name, m->params[p].name);
      for (int s = 0; s < m->nstates && !found; s++)
        found = !strcmp(f->e[i].name, m->states[s].name);
      for (int c = 0; c < m->ncounters && !found; c++)
        found = !strcmp(f->e[i].name, m->counter_names[c]);
      if (!found && extra++ < 5)
        xc_warn("extra tensors are ignored", "%s: '%s' is not a tensor of model '%s'", path,
                f->e[i].name, m->name);
    }
    if (extra > 5)
      xc_warn(NULL, "%s: %d more unknown tensors", path, extra - 5);
  }
  st_free(f);
}

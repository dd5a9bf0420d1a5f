// The YAML frontend: reads a model file with libyaml's document API, checks
// every key and value against the schema a PyTorch user would expect, and
// builds the Model with its forward graph and (unfused) loss. Every user
// error points at the YAML node it is about and says how to fix it.
//
// The schema at a glance (models/*.yaml are complete examples):
//
//   model: NAME                      default: the file's base name
//   input: {channels, height, width}
//   classes: [NAME, ...]             one per output (cross_entropy), or [neg, pos] (bce)
//   layers:                          each `- TYPE` or `- {name: N, TYPE: {OPTIONS}}`, reading
//                                    the layer before or `input: NAME` (`inputs: [A, B]`)
//     conv2d {out_channels, kernel, stride: 1, padding: 0, bias: true, in_channels?}
//     maxpool2d / avgpool2d {kernel, stride: kernel, padding: 0}
//     adaptive_avgpool2d {output_size}   (a size that divides the input's)
//     linear {out_features, bias: true, in_features?}
//     dropout / dropout2d {p: 0.5}
//     batchnorm2d / batchnorm1d {eps: 1e-5, momentum: 0.1, num_features?}
//     leaky_relu {negative_slope: 0.01}   gelu {approximate: none|tanh}
//     relu sigmoid tanh softmax log_softmax flatten
//     add concat                     join `inputs`: sum of one shape, along the channels
//   loss: cross_entropy {label_smoothing, weight} | bce_with_logits {pos_weight},
//         plus l2: [{param, weight}]
//   optimizer: sgd {lr, momentum, dampening, weight_decay, nesterov}
//            | adam / adamw {lr, betas, eps, weight_decay}
//   schedule: constant | step {step_size, gamma} | multistep {milestones, gamma}
//           | exponential {gamma} | cosine {t_max, eta_min}
//           | linear {start_factor, end_factor, total_iters}
//           | one_cycle {max_lr, total_steps, pct_start, anneal_strategy, div_factor,
//                        final_div_factor, three_phase, cycle_momentum, base_momentum,
//                        max_momentum},
//             plus warmup: {total_iters, start_factor} and interval: epoch|step
//   precision: fp32 | bf16 | fp16    autocast; fp16 adds grad_scaler: {init_scale: 65536,
//                                    growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000}
//   train: {epochs: 10, batch_size: 32, shuffle: true, seed: 0, drop_last: false, log_every: 100}
//     (drop_last: false pads the last partial batch with ignored rows; batch-norm models drop it)
//   data: {format: cifar10|idx|folder|imagefolder, train, test, val_split,
//          normalize: {mean, std}, augment: {random_crop: {padding}, random_horizontal_flip},
//          test_augment: {horizontal_flip}  (evaluation averages each image's and its mirror's logits)
//          convert: rgb|grey, resize: false}   (CIFAR/IDX data of another shape)
#include "args.h"
#include "ir.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

typedef yaml_node_t YNode;

// The document being read. load_model reads one file at a time, and any
// error ends the process, so one file-level context is enough.
static char *cur_path;
static yaml_document_t cur_doc;

// Sizes are capped so that no shape computation can overflow int64 and no
// tensor is beyond what the generated code indexes.
enum { MAX_DIM = 1 << 16, MAX_WINDOW = 4096 };
// A model nests a few levels (layers, options, lists). libyaml spends time
// proportional to the depth on every token of a flow collection, so the
// depth is checked before the document is built.
enum { MAX_DEPTH = 64 };
#define MAX_NUMEL ((int64_t)1 << 31)

//
// YAML nodes: locations, kinds, scalars
//

static Loc loc_of(const YNode *n) {
  return (Loc){cur_path, (int)n->start_mark.line + 1, (int)n->start_mark.column + 1};
}

static YNode *ynode(int id) { return yaml_document_get_node(&cur_doc, id); }

static const char *sval(const YNode *n) { return (const char *)n->data.scalar.value; }

static bool is_scalar(const YNode *n) { return n->type == YAML_SCALAR_NODE; }
static bool is_map(const YNode *n) { return n->type == YAML_MAPPING_NODE; }
static bool is_seq(const YNode *n) { return n->type == YAML_SEQUENCE_NODE; }

// `key:` with nothing after it, `~` or `null`.
static bool is_null(const YNode *n) {
  if (!is_scalar(n) || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
    return false;
  const char *s = sval(n);
  return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

static int seq_len(const YNode *n) {
  return (int)(n->data.sequence.items.top - n->data.sequence.items.start);
}

static YNode *seq_at(const YNode *n, int i) { return ynode(n->data.sequence.items.start[i]); }

static int map_len(const YNode *n) {
  return (int)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
}

static YNode *map_key(const YNode *n, int i) { return ynode(n->data.mapping.pairs.start[i].key); }
static YNode *map_val(const YNode *n, int i) { return ynode(n->data.mapping.pairs.start[i].value); }

// How a node looks, for "must be an integer, got ..." messages.
static char *describe(const YNode *n) {
  if (is_map(n))
    return "a mapping";
  if (is_seq(n))
    return "a list";
  if (is_null(n))
    return "nothing";
  const char *s = sval(n);
  return strlen(s) > 40 ? xformat("'%.40s...'", s) : xformat("'%s'", s);
}

// "layer 'conv1': " or "" -- the prefix that says which part of the file an
// error is about.
static const char *in(const char *ctx) { return ctx && *ctx ? xformat("%s: ", ctx) : ""; }

//
// Names seen so far: a hash table from a name to where it first appeared, so
// that the duplicate checks of classes, layer names and keys stay linear.
//

typedef struct {
  const char **key;
  int *first; // the index given when key was added
  int n, cap; // cap is 0 or a power of two
} NameTable;

static uint64_t hash_name(const char *s) {
  uint64_t h = 0xcbf29ce484222325u; // FNV-1a
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 0x100000001b3u;
  return h;
}

// The index name was first added with; else -1, after adding it with index
// i unless i < 0 (a lookup only).
static int name_seen(NameTable *t, const char *name, int i) {
  if (2 * (t->n + 1) > t->cap) {
    NameTable old = *t;
    t->cap = old.cap ? 2 * old.cap : 16;
    t->key = xcalloc(t->cap, sizeof *t->key);
    t->first = xcalloc(t->cap, sizeof *t->first);
    t->n = 0;
    for (int k = 0; k < old.cap; k++)
      if (old.key[k])
        name_seen(t, old.key[k], old.first[k]);
    free(old.key);
    free(old.first);
  }
  uint64_t mask = t->cap - 1;
  for (uint64_t h = hash_name(name) & mask;; h = (h + 1) & mask) {
    if (!t->key[h]) {
      if (i < 0)
        return -1;
      t->key[h] = name;
      t->first[h] = i;
      t->n++;
      return -1;
    }
    if (!strcmp(t->key[h], name))
      return t->first[h];
  }
}

//
// "Did you mean": a misspelling is an edit or two away, a PyTorch spelling
// differs in case, underscores or a "Loss" suffix, or is a known alias.
//

// clang-format off
static const char *const aliases[][2] = {
    {"kernel_size", "kernel"}, {"conv", "conv2d"}, {"fc", "linear"}, {"dense", "linear"},
    {"maxpool", "maxpool2d"}, {"avgpool", "avgpool2d"}, {"pool", "maxpool2d"},
    {"bn", "batchnorm2d"}, {"batchnorm", "batchnorm2d"}, {"view", "flatten"},
    {"ce", "cross_entropy"}, {"bce", "bce_with_logits"}, {"bcewithlogits", "bce_with_logits"},
    {"scheduler", "schedule"}, {"lr_scheduler", "schedule"}, {"optim", "optimizer"},
    {"dataset", "data"}, {"transform", "normalize"}, {"lr_schedule", "schedule"},
    {"num_epochs", "epochs"}, {"batch", "batch_size"}, {"out_channel", "out_channels"},
    {"units", "out_features"}, {"drop_prob", "p"}, {"rate", "p"}, {"labels", "classes"},
    {"steplr", "step"}, {"mnist", "idx"}, {"fashion_mnist", "idx"}, {"cifar", "cifar10"},
    {"images", "folder"}, {"cosineannealinglr", "cosine"}, {"cosine_annealing", "cosine"},
    {"global_avgpool", "adaptive_avgpool2d"}, {"globalaveragepooling2d", "adaptive_avgpool2d"},
    {"alpha", "negative_slope"}, {"spatialdropout2d", "dropout2d"},
};
// clang-format on

static char *normalize_word(const char *s) {
  char *out = xcalloc(1, strlen(s) + 1), *p = out;
  for (; *s; s++)
    if (*s != '_' && *s != '-' && *s != ' ')
      *p++ = (char)tolower((unsigned char)*s);
  size_t n = strlen(out);
  if (n > 4 && !strcmp(out + n - 4, "loss"))
    out[n - 4] = '\0';
  return out;
}

static const char *closest(const char *word, const char *const *cands) {
  char *w = normalize_word(word);
  for (int i = 0; cands[i]; i++)
    if (!strcmp(w, normalize_word(cands[i])))
      return cands[i];
  for (size_t a = 0; a < sizeof aliases / sizeof *aliases; a++)
    if (!strcmp(w, normalize_word(aliases[a][0])))
      for (int i = 0; cands[i]; i++)
        if (!strcmp(aliases[a][1], cands[i]))
          return cands[i];
  const char *best = NULL;
  int best_d = strlen(word) <= 4 ? 1 : 2;
  for (int i = 0; cands[i]; i++) {
    int d = arg_edit_distance(word, cands[i]);
    if (d <= best_d && d < (int)strlen(cands[i])) {
      best = cands[i];
      best_d = d - 1;
    }
  }
  return best;
}

static char *join(const char *const *words) {
  char *s = xstrdup("");
  for (int i = 0; words[i]; i++)
    s = xformat("%s%s%s", s, i ? ", " : "", words[i]);
  return s;
}

// The hint for a word that is not among `cands`.
static char *suggest(const char *word, const char *const *cands) {
  const char *c = closest(word, cands);
  if (c)
    return xformat("did you mean '%s'? (allowed here: %s)", c, join(cands));
  return xformat("allowed here: %s", join(cands));
}

//
// Mappings checked against the keys they may hold
//

static YNode *get(const YNode *map, const char *key) {
  if (!map)
    return NULL;
  for (int i = 0; i < map_len(map); i++) {
    YNode *k = map_key(map, i);
    if (is_scalar(k) && !strcmp(sval(k), key))
      return map_val(map, i);
  }
  return NULL;
}

// Every key a plain name, none twice, and each in `keys`.
static void check_keys(const YNode *map, const char *ctx, const char *const *keys) {
  NameTable seen = {0};
  for (int i = 0; i < map_len(map); i++) {
    YNode *k = map_key(map, i);
    if (!is_scalar(k) || is_null(k))
      error_at(loc_of(k), "write keys as plain names, like 'kernel: 5'",
               "%skeys must be names, got %s", in(ctx), describe(k));
    int j = name_seen(&seen, sval(k), i);
    if (j >= 0)
      error_at(loc_of(k),
               xformat("the first '%s' is on line %d; keep only one", sval(k),
                       loc_of(map_key(map, j)).line),
               "%sduplicate key '%s'", in(ctx), sval(k));
    bool known = false;
    for (int j = 0; keys[j] && !known; j++)
      known = !strcmp(sval(k), keys[j]);
    if (!known)
      error_at(loc_of(k), suggest(sval(k), keys), "%sunknown key '%s'", in(ctx), sval(k));
  }
  free(seen.key);
  free(seen.first);
}

//
// The schema: every mapping a model file may hold, named by its path, with
// the keys it accepts. accept() and choose() are the only ways a key or a
// kind gets in, and they note what a model uses, so `xentcc --list-options`
// (all of it, from this table) and `xentcc MODEL.yaml --list-options` (what
// MODEL uses) let a test prove every accepted option reaches executables.
//

typedef struct {
  const char *path;        // "schedule.cosine"; "" for the top level
  const char *const *keys; // NULL-terminated
  bool values;             // a choice of scalar values, listed as path=value
} Section;

static char **used_options;
static int nused;

static void note_used(const char *option) {
  for (int i = 0; i < nused; i++)
    if (!strcmp(used_options[i], option))
      return;
  used_options = realloc(used_options, sizeof(char *) * (nused + 1));
  if (!used_options)
    fatal("out of memory");
  used_options[nused++] = xstrdup(option);
}

static char *option_name(const Section *sec, const char *key) {
  if (sec->values)
    return xformat("%s=%s", sec->path, key);
  return *sec->path ? xformat("%s.%s", sec->path, key) : xstrdup(key);
}

// check_keys, then note each key as used.
static void accept(const YNode *map, const char *ctx, const Section *sec) {
  check_keys(map, ctx, sec->keys);
  for (int i = 0; i < map_len(map); i++)
    note_used(option_name(sec, sval(map_key(map, i))));
}

static YNode *want_map(YNode *v, const char *ctx, const char *what, const char *example) {
  if (!is_map(v))
    error_at(loc_of(v), xformat("write it as a mapping, e.g. %s", example),
             "%s%s must be a mapping, got %s", in(ctx), what, describe(v));
  return v;
}

static YNode *want_seq(YNode *v, const char *ctx, const char *what, const char *example) {
  if (!is_seq(v))
    error_at(loc_of(v), xformat("write it as a list, e.g. %s", example),
             "%s%s must be a list, got %s", in(ctx), what, describe(v));
  return v;
}

// An absent options mapping reads like an empty one: every key takes its default.
static YNode empty_map = {.type = YAML_MAPPING_NODE};

static YNode *or_empty(YNode *map) { return map ? map : &empty_map; }

static YNode *need(const YNode *map, Loc where, const char *key, const char *ctx,
                   const char *hint) {
  YNode *v = get(map, key);
  if (!v)
    error_at(where, hint, "%smissing '%s'", in(ctx), key);
  return v;
}

//
// Scalars: integers, floats, booleans, strings
//

// A number must be written as a plain YAML number: "5" in quotes is a string.
static const char *number_text(YNode *v, const char *ctx, const char *key, const char *kind) {
  if (!is_scalar(v) || is_null(v) || v->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
    error_at(loc_of(v), is_scalar(v) && !is_null(v) ? "write numbers without quotes" : NULL,
             "%s'%s' must be %s, got %s", in(ctx), key, kind, describe(v));
  return sval(v);
}

static int64_t to_int(YNode *v, const char *ctx, const char *key, int64_t min, int64_t max) {
  const char *s = number_text(v, ctx, key, "an integer");
  char *end;
  errno = 0;
  long long x = strtoll(s, &end, 10);
  if (errno == ERANGE)
    error_at(loc_of(v), NULL, "%s'%s' is out of range: %s", in(ctx), key, s);
  if (end == s || *end) {
    double f = strtod(s, &end);
    if (end != s && !*end && f == floor(f) && fabs(f) < 1e15)
      error_at(loc_of(v), xformat("write %.0f", f), "%s'%s' must be an integer, got '%s'", in(ctx),
               key, s);
    error_at(loc_of(v), NULL, "%s'%s' must be an integer, got '%s'", in(ctx), key, s);
  }
  if (x < min)
    error_at(loc_of(v), NULL, "%s'%s' must be at least %lld, got %lld", in(ctx), key,
             (long long)min, x);
  if (x > max)
    error_at(loc_of(v), NULL, "%s'%s' must be at most %lld, got %lld", in(ctx), key, (long long)max,
             x);
  return x;
}

static double to_float(YNode *v, const char *ctx, const char *key) {
  const char *s = number_text(v, ctx, key, "a number");
  char *end;
  double x = strtod(s, &end);
  if (end == s || *end || !isfinite(x))
    error_at(loc_of(v), NULL, "%s'%s' must be a finite number, got '%s'", in(ctx), key, s);
  // Every setting ends up in float32 somewhere (the weights, the images, the
  // step's lr): one it cannot hold would silently become inf or 0.
  if (x != 0 && (fabs(x) > FLT_MAX || fabs(x) < FLT_MIN))
    error_at(loc_of(v), "float32 holds magnitudes from 1.2e-38 to 3.4e+38 (and 0)",
             "%s'%s' is %s, which float32 cannot represent", in(ctx), key, s);
  return x;
}

// A number in [lo, hi] (hi_open: [lo, hi)).
static double to_float_in(YNode *v, const char *ctx, const char *key, double lo, double hi,
                          bool hi_open, const char *hint) {
  double x = to_float(v, ctx, key);
  if (x < lo || x > hi || (hi_open && x == hi)) {
    const char *range = isinf(hi) ? xformat("at least %g", lo)
                                  : xformat("in [%g, %g%s", lo, hi, hi_open ? ")" : "]");
    error_at(loc_of(v), hint, "%s'%s' must be %s, got %s", in(ctx), key, range, sval(v));
  }
  return x;
}

static bool to_bool(YNode *v, const char *ctx, const char *key) {
  if (is_scalar(v) && v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
    const char *s = sval(v);
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE"))
      return true;
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE"))
      return false;
  }
  error_at(loc_of(v), "write true or false", "%s'%s' must be true or false, got %s", in(ctx), key,
           describe(v));
}

static const char *to_str(YNode *v, const char *ctx, const char *key) {
  if (!is_scalar(v) || is_null(v))
    error_at(loc_of(v), NULL, "%s'%s' must be a string, got %s", in(ctx), key, describe(v));
  return sval(v);
}

// Optional fields: the default when absent.
static int64_t opt_int(const YNode *map, const char *key, int64_t dflt, int64_t min, int64_t max,
                       const char *ctx) {
  YNode *v = get(map, key);
  return v ? to_int(v, ctx, key, min, max) : dflt;
}

static bool opt_bool(const YNode *map, const char *key, bool dflt, const char *ctx) {
  YNode *v = get(map, key);
  return v ? to_bool(v, ctx, key) : dflt;
}

static double opt_float_in(const YNode *map, const char *key, double dflt, double lo, double hi,
                           bool hi_open, const char *ctx) {
  YNode *v = get(map, key);
  return v ? to_float_in(v, ctx, key, lo, hi, hi_open, NULL) : dflt;
}

// kernel: 5 or kernel: [5, 3] -- an int for both axes or [height, width].
static void to_pair(YNode *v, const char *ctx, const char *key, int64_t min, int64_t out[2]) {
  if (is_seq(v)) {
    if (seq_len(v) != 2)
      error_at(loc_of(v), xformat("write %s: N or %s: [height, width]", key, key),
               "%s'%s' must be one integer or two [height, width], got a list of %d", in(ctx), key,
               seq_len(v));
    for (int i = 0; i < 2; i++)
      out[i] = to_int(seq_at(v, i), ctx, key, min, MAX_WINDOW);
    return;
  }
  out[0] = out[1] = to_int(v, ctx, key, min, MAX_WINDOW);
}

// A list of numbers, `count` long unless count < 0.
static double *to_floats(YNode *v, const char *ctx, const char *key, int count, int *n,
                         const char *count_hint) {
  want_seq(v, ctx, xformat("'%s'", key), "[0.5, 0.5, 0.5]");
  *n = seq_len(v);
  if (count >= 0 && *n != count)
    error_at(loc_of(v), count_hint, "%s'%s' needs %d value%s, got %d", in(ctx), key, count,
             count == 1 ? "" : "s", *n);
  double *out = xcalloc(*n, sizeof *out);
  for (int i = 0; i < *n; i++)
    out[i] = to_float(seq_at(v, i), ctx, key);
  return out;
}

// A choice written either as a bare name (`relu`, `adam`) or as a mapping
// with exactly one key, the name, holding its options (`{sgd: {lr: 0.1}}`).
// Returns the index into the section's kinds; *opts is the options mapping
// or NULL.
static int choice(YNode *v, const char *ctx, const char *what, const Section *sec,
                  const char *example, YNode **opts, YNode **name_node) {
  const char *const *kinds = sec->keys;
  YNode *name = v;
  *opts = NULL;
  if (is_map(v)) {
    if (map_len(v) != 1)
      error_at(loc_of(v), xformat("write one of %s, e.g. %s", join(kinds), example),
               "%s%s needs exactly one kind, got %d keys", in(ctx), what, map_len(v));
    name = map_key(v, 0);
    YNode *o = map_val(v, 0);
    if (!is_null(o))
      *opts = want_map(o, ctx, xformat("the options of '%s'", is_scalar(name) ? sval(name) : what),
                       example);
  }
  if (!is_scalar(name) || is_null(name))
    error_at(loc_of(name), xformat("write one of %s, e.g. %s", join(kinds), example),
             "%s%s: expected a name like %s, got %s", in(ctx), what, kinds[0], describe(name));
  for (int i = 0; kinds[i]; i++)
    if (!strcmp(sval(name), kinds[i])) {
      if (name_node)
        *name_node = name;
      note_used(option_name(sec, kinds[i]));
      return i;
    }
  error_at(loc_of(name), suggest(sval(name), kinds), "%sunknown %s '%s'", in(ctx), what,
           sval(name));
}

//
// Graph building
//

typedef struct {
  YNode *node;      // the list item: the layer's mapping or its bare name
  YNode *opts;      // the options mapping (empty when none are given)
  const char *type; // "conv2d", "relu", ...
  char *name;       // the `name:` given, or NULL
  char *prefix;     // parameter names: NAME.weight, or layers.INDEX.weight
  char *desc;       // "layer 'conv1'" or "layer 3 (relu)", for messages
  char *what;       // the same with the type: "layer 'conv1' (conv2d)"
  int index;        // 0-based position in `layers`
  Loc loc;
  YNode *from;      // the `input:` name or `inputs:` list; NULL: the layer before
  int *src;         // where each input comes from: a layer's index, or -1 for the image
  int nsrc;
  Node **in;        // the input values, while the graph is built (in[0] is `x`)
} Layer;

typedef struct {
  Model *m;
  Graph *g;
  int64_t batch;
  Node *step, *seed, *row0; // %step, %seed and %row0, when a dropout layer needs them
  Layer *layers;
  int nlayers;
  NameTable layer_names; // the `name:`s given so far, to their layer's index
} Builder;

static void accept_layer(Layer *l); // the layer's options, by the table of kinds below

static Node *emit(Builder *b, Layer *l, OpKind op, Node **in, int nin) {
  Node *n = node_new(b->g, op, in, nin, l->loc);
  node_fill_default_attrs(n);
  return n;
}

// The shape rule of the op just built; a failure names the layer and the
// type that flows into it, which is what the user needs to fix the model.
static void infer(Layer *l, Node *n, Node *x) {
  Type t;
  const char *err = infer_type(n, &t);
  if (err)
    error_at(l->loc, xformat("the input to %s is %s", l->desc, type_str(&x->type)), "%s: %s",
             l->what, err);
  if (type_numel(&t) > MAX_NUMEL)
    error_at(l->loc, "use fewer channels, features or a smaller input",
             "%s: output %s is too large", l->what, type_str(&t));
  n->type = t;
}

static Node *param(Builder *b, Layer *l, const char *suffix, int rank, const int64_t *dim,
                   const char *init, int64_t fan_in, bool state) {
  Node *p = emit(b, l, state ? OP_state : OP_param, NULL, 0);
  p->name = xformat("%s.%s", l->prefix, suffix);
  p->type = type_make(DT_F32, rank, dim);
  if (type_numel(&p->type) > MAX_NUMEL)
    error_at(l->loc, "use fewer channels or features", "%s: parameter %s %s is too large", l->what,
             p->name, type_str(&p->type));
  node_set_str(p, "init", init);
  if (!state)
    node_set_int(p, "fan_in", fan_in);
  return p;
}

static void want_image(Layer *l, Node *x) {
  if (x->type.rank != 4)
    error_at(l->loc, xformat("%s works on [N, C, H, W] images; move it before 'flatten'", l->type),
             "%s: expects an image tensor [N, C, H, W] but gets %s", l->what, type_str(&x->type));
}

static void want_flat(Layer *l, Node *x) {
  if (x->type.rank != 2)
    error_at(l->loc, "add '- flatten' before this layer (PyTorch: nn.Flatten())",
             "%s: expects flat features [N, features] but gets %s", l->what, type_str(&x->type));
}

// The optional in_channels / in_features / num_features: a check, never a
// conversion; PyTorch would fail at run time where we fail at compile time.
static void check_in_size(Layer *l, const char *key, int64_t got, const char *what, Node *x) {
  YNode *v = get(l->opts, key);
  if (!v)
    return;
  int64_t want = to_int(v, l->desc, key, 1, MAX_NUMEL);
  if (want != got)
    error_at(l->loc,
             xformat("%s produces %s; set %s: %lld, or leave %s out to infer it",
                     l->from ? "its input" : "the layer before", type_str(&x->type), key,
                     (long long)got, key),
             "%s: expects %lld %s but gets %lld", l->desc, (long long)want, what, (long long)got);
}

static const char *const conv2d_keys[] = {"out_channels", "kernel",      "stride", "padding",
                                          "bias",         "in_channels", NULL};

static Node *build_conv2d(Builder *b, Layer *l, Node *x) {
  accept_layer(l);
  want_image(l, x);
  const char *ex = "{conv2d: {out_channels: 6, kernel: 5}}";
  int64_t out = to_int(need(l->opts, l->loc, "out_channels", l->desc, ex), l->desc, "out_channels",
                       1, MAX_DIM);
  int64_t k[2], s[2] = {1, 1}, p[2] = {0, 0};
  to_pair(need(l->opts, l->loc, "kernel", l->desc, ex), l->desc, "kernel", 1, k);
  if (get(l->opts, "stride"))
    to_pair(get(l->opts, "stride"), l->desc, "stride", 1, s);
  if (get(l->opts, "padding"))
    to_pair(get(l->opts, "padding"), l->desc, "padding", 0, p);
  bool bias = opt_bool(l->opts, "bias", true, l->desc);
  int64_t c = x->type.dim[1];
  check_in_size(l, "in_channels", c, "input channels", x);

  int64_t fan_in = c * k[0] * k[1];
  int64_t wd[4] = {out, c, k[0], k[1]};
  Node *in[3] = {x, param(b, l, "weight", 4, wd, "kaiming_uniform", fan_in, false), NULL};
  if (bias)
    in[2] = param(b, l, "bias", 1, &out, "bias_uniform", fan_in, false);
  Node *n = emit(b, l, OP_conv2d, in, bias ? 3 : 2);
  node_set_ints(n, "stride", s, 2);
  node_set_ints(n, "padding", p, 2);
  infer(l, n, x);
  return n;
}

static const char *const pool_keys[] = {"kernel", "stride", "padding", NULL};

// nn.MaxPool2d / nn.AvgPool2d: stride defaults to the kernel size.
static Node *build_pool(Builder *b, Layer *l, Node *x) {
  accept_layer(l);
  want_image(l, x);
  int64_t k[2], s[2], p[2] = {0, 0};
  to_pair(
      need(l->opts, l->loc, "kernel", l->desc, xformat("{%s: {kernel: 2, stride: 2}}", l->type)),
      l->desc, "kernel", 1, k);
  s[0] = k[0], s[1] = k[1];
  if (get(l->opts, "stride"))
    to_pair(get(l->opts, "stride"), l->desc, "stride", 1, s);
  if (get(l->opts, "padding"))
    to_pair(get(l->opts, "padding"), l->desc, "padding", 0, p);
  Node *n = emit(b, l, !strcmp(l->type, "maxpool2d") ? OP_maxpool2d : OP_avgpool2d, &x, 1);
  node_set_ints(n, "kernel", k, 2);
  node_set_ints(n, "stride", s, 2);
  node_set_ints(n, "padding", p, 2);
  infer(l, n, x);
  return n;
}

static const char *const adaptive_pool_keys[] = {"output_size", NULL};

// nn.AdaptiveAvgPool2d(output_size) where the output size divides the
// input's: PyTorch's window i, [floor(i H/out), ceil((i+1) H/out)), is then
// exactly avgpool2d's with kernel = stride = H/out, so it lowers to that.
static Node *build_adaptive_avgpool2d(Builder *b, Layer *l, Node *x) {
  accept_layer(l);
  want_image(l, x);
  YNode *v = need(l->opts, l->loc, "output_size", l->desc,
                  "{adaptive_avgpool2d: {output_size: 1}} (global average pooling)");
  int64_t out[2], k[2], p[2] = {0, 0};
  to_pair(v, l->desc, "output_size", 1, out);
  for (int a = 0; a < 2; a++) {
    int64_t in = x->type.dim[2 + a];
    if (in % out[a])
      error_at(loc_of(v),
               xformat("xentcc pools to sizes that divide the input's (1 is global average "
                       "pooling); pool or pad to a %s that %lld divides first",
                       a ? "width" : "height", (long long)out[a]),
               "%s: output_size %lld does not divide the input's %s %lld (input %s)", l->what,
               (long long)out[a], a ? "width" : "height", (long long)in, type_str(&x->type));
    k[a] = in / out[a];
  }
  Node *n = emit(b, l, OP_avgpool2d, &x, 1);
  node_set_ints(n, "kernel", k, 2);
  node_set_ints(n, "stride", k, 2);
  node_set_ints(n, "padding", p, 2);
  infer(l, n, x);
  return n;
}

static const char *const no_keys[] = {NULL};

static Node *build_activation(Builder *b, Layer *l, Node *x) {
  accept_layer(l);
  OpKind op = op_lookup(l->type);
  if (op == OP_softmax || op == OP_log_softmax)
    want_flat(l, x);
  Node *n = emit(b, l, op, &x, 1);
  infer(l, n, x);
  return n;
}

static const char *const leaky_relu_keys[] = {"negative_slope", NULL};

// nn.LeakyReLU(negative_slope=0.01).
static Node *build_leaky_relu(Builder *b, Layer *l, Node *x) {
  accept_layer(l);
  double slope = 0.01;
  if (get(l->opts, "negative_slope"))
    slope = to_float(get(l->opts, "negative_slope"), l->desc, "negative_slope");
  Node *n = emit(b, l, OP_leaky_relu, &x, 1);
  node_set_float(n, "negative_slope", slope);
  infer(l, n, x);
  return n;
}

static const char *const gelu_keys[] = {"approximate", NULL};
static const char *const gelu_forms[] = {"none", "tanh", NULL};
static const Section gelu_form_sec = {"layers.gelu.approximate", gelu_forms, true};

// nn.GELU(approximate='none'): the exact erf form unless 'tanh' is asked for.
static Node *build_gelu(Builder *b, Layer *l, Node *x) {
  accept_layer(l);
  int form = 0;
  YNode *v = get(l->opts, "approximate"), *o;
  if (v) {
    form = choice(v, l->desc, "approximate", &gelu_form_sec, "approximate: tanh", &o, NULL);
    if (o)
      error_at(loc_of(v), "write approximate: tanh (or none)", "%s: approximate takes no options",
               l->desc);
  }
  Node *n = emit(b, l, OP_gelu, &x, 1);
  node_set_str(n, "approximate", gelu_forms[form]);
  infer(l, n, x);
  return n;
}

// nn.Flatten(): [N, C, H, W] -> [N, C*H*W].
static Node *build_flatten(Builder *b, Layer *l, Node *x) {
  accept_layer(l);
  int64_t d[2] = {x->type.dim[0], type_numel(&x->type) / x->type.dim[0]};
  Node *n = emit(b, l, OP_reshape, &x, 1);
  n->type = type_make(DT_F32, 2, d);
  infer(l, n, x);
  return n;
}

static const char *const linear_keys[] = {"out_features", "in_features", "bias", NULL};

static Node *build_linear(Builder *b, Layer *l, Node *x) {
  accept_layer(l);
  want_flat(l, x);
  int64_t out = to_int(need(l->opts, l->loc, "out_features", l->desc,
                            "give the number of outputs, e.g. {linear: {out_features: 10}}"),
                       l->desc, "out_features", 1, MAX_DIM);
  bool bias = opt_bool(l->opts, "bias", true, l->desc);
  int64_t k = x->type.dim[1];
  check_in_size(l, "in_features", k, "input features", x);

  int64_t wd[2] = {out, k};
  Node *in[3] = {x, param(b, l, "weight", 2, wd, "kaiming_uniform", k, false), NULL};
  if (bias)
    in[2] = param(b, l, "bias", 1, &out, "bias_uniform", k, false);
  Node *n = emit(b, l, OP_linear, in, bias ? 3 : 2);
  infer(l, n, x);
  return n;
}

static const char *const dropout_keys[] = {"p", NULL};

// nn.Dropout(p): x * mask, the mask a function of the optimizer step; and
// nn.Dropout2d(p) on images, whose mask zeroes whole channels.
static Node *build_dropout(Builder *b, Layer *l, Node *x) {
  accept_layer(l);
  bool channels = !strcmp(l->type, "dropout2d");
  if (channels)
    want_image(l, x);
  double p = 0.5;
  if (get(l->opts, "p"))
    p = to_float_in(get(l->opts, "p"), l->desc, "p", 0.0, 1.0, true,
                    channels ? "p is the probability of zeroing a channel, like nn.Dropout2d(p=0.5)"
                             : "p is the probability of zeroing an element, like nn.Dropout(p=0.5)");
  Node *mask_in[3] = {b->step, b->seed, b->row0};
  Node *mask = emit(b, l, channels ? OP_dropout2d_mask : OP_dropout_mask, mask_in, 3);
  node_set_float(mask, "p", p);
  node_set_int(mask, "salt", l->index);
  mask->type = x->type;
  infer(l, mask, x);
  Node *in[2] = {x, mask};
  Node *n = emit(b, l, OP_mul, in, 2);
  infer(l, n, x);
  return n;
}

static const char *const batchnorm_keys[] = {"eps", "momentum", "num_features", NULL};

// nn.BatchNorm2d on images, nn.BatchNorm1d on features, in training mode:
// normalise with the batch's statistics and move the running statistics
// towards them (unbiased variance, as PyTorch). The same ops for both.
static Node *build_batchnorm(Builder *b, Layer *l, Node *x) {
  accept_layer(l);
  if (!strcmp(l->type, "batchnorm1d"))
    want_flat(l, x);
  else
    want_image(l, x);
  double eps = 1e-5, momentum = 0.1;
  if (get(l->opts, "eps"))
    eps = to_float_in(get(l->opts, "eps"), l->desc, "eps", 0.0, INFINITY, false, NULL);
  momentum = opt_float_in(l->opts, "momentum", momentum, 0.0, 1.0, false, l->desc);
  int64_t c = x->type.dim[1];
  check_in_size(l, "num_features", c, "channels", x);

  Node *in[3] = {x, param(b, l, "weight", 1, &c, "ones", 0, false),
                 param(b, l, "bias", 1, &c, "zeros", 0, false)};
  Model *m = b->m;
  m->counters = realloc(m->counters, sizeof(char *) * (m->ncounters + 1));
  if (!m->counters)
    fatal("out of memory");
  m->counters[m->ncounters++] = xformat("%s.num_batches_tracked", l->prefix);
  Node *mean = param(b, l, "running_mean", 1, &c, "zeros", 0, true);
  Node *var = param(b, l, "running_var", 1, &c, "ones", 0, true);
  Node *stats = emit(b, l, OP_batch_stats, &x, 1);
  stats->name = xformat("%s.stats", l->prefix);
  infer(l, stats, x);
  Node *in4[4] = {in[0], in[1], in[2], stats};
  Node *n = emit(b, l, OP_batchnorm2d, in4, 4);
  node_set_float(n, "eps", eps);
  infer(l, n, x);

  // The running mean takes the batch's mean, the running variance its
  // unbiased variance (rows 0 and 2).
  Node *stat[2] = {emit(b, l, OP_row, &stats, 1), emit(b, l, OP_row, &stats, 1)};
  node_set_int(stat[1], "index", 2);
  Node *run[2] = {mean, var};
  for (int i = 0; i < 2; i++) {
    infer(l, stat[i], x);
    Node *e_in[2] = {run[i], stat[i]};
    Node *e = emit(b, l, OP_ema, e_in, 2);
    node_set_float(e, "momentum", momentum);
    infer(l, e, x);
    Node *a_in[2] = {run[i], e};
    infer(l, emit(b, l, OP_assign, a_in, 2), x);
  }
  return n;
}

// Where input i of a layer is written (its name in `inputs`), for messages.
static Loc input_loc(Layer *l, int i) {
  return l->from && is_seq(l->from) ? loc_of(seq_at(l->from, i)) : l->loc;
}

// "layer 'bn2'" or "the input image": what input i of a layer reads.
static const char *input_desc(Builder *b, Layer *l, int i) {
  return l->src[i] < 0 ? "the input image" : b->layers[l->src[i]].desc;
}

// The residual sum of a ResNet block, bn2 + shortcut: two or more branches
// of one shape, added left to right as `a + b + c` adds in PyTorch.
static Node *build_add(Builder *b, Layer *l, Node *x) {
  accept_layer(l);
  Node *sum = x;
  for (int i = 1; i < l->nsrc; i++) {
    if (!type_eq(&l->in[i]->type, &x->type))
      error_at(input_loc(l, i),
               "add sums tensors of one shape; give the shortcut a 1x1 conv2d with the other "
               "branch's out_channels and stride, as ResNet does",
               "%s: %s gives %s but %s gives %s", l->what, input_desc(b, l, 0),
               type_str(&x->type), input_desc(b, l, i), type_str(&l->in[i]->type));
    sum = emit(b, l, OP_add, (Node *[]){sum, l->in[i]}, 2);
    infer(l, sum, x);
  }
  return sum;
}

// torch.cat(branches, dim=1): the channels of images (the features of flat
// inputs) one after the other; every other dim must match.
static Node *build_concat(Builder *b, Layer *l, Node *x) {
  accept_layer(l);
  for (int i = 1; i < l->nsrc; i++) {
    const Type *t = &l->in[i]->type;
    bool same = t->rank == x->type.rank;
    for (int d = 0; d < t->rank && same; d++)
      same = d == 1 || t->dim[d] == x->type.dim[d];
    if (!same)
      error_at(input_loc(l, i),
               "concat joins along the channels (dim 1): batch and image size must match; "
               "bring the branches to one size with a pool or a strided conv2d",
               "%s: %s gives %s but %s gives %s", l->what, input_desc(b, l, 0),
               type_str(&x->type), input_desc(b, l, i), type_str(t));
  }
  Node *n = emit(b, l, OP_concat, l->in, l->nsrc);
  infer(l, n, x);
  return n;
}

typedef struct {
  const char *type;
  Node *(*build)(Builder *b, Layer *l, Node *x);
  const char *const *keys;
  bool needs_options;
} LayerKind;

static const LayerKind layer_kinds[] = {
    {"conv2d", build_conv2d, conv2d_keys, true},
    {"maxpool2d", build_pool, pool_keys, true},
    {"avgpool2d", build_pool, pool_keys, true},
    {"adaptive_avgpool2d", build_adaptive_avgpool2d, adaptive_pool_keys, true},
    {"relu", build_activation, no_keys, false},
    {"sigmoid", build_activation, no_keys, false},
    {"tanh", build_activation, no_keys, false},
    {"leaky_relu", build_leaky_relu, leaky_relu_keys, false},
    {"gelu", build_gelu, gelu_keys, false},
    {"softmax", build_activation, no_keys, false},
    {"log_softmax", build_activation, no_keys, false},
    {"flatten", build_flatten, no_keys, false},
    {"linear", build_linear, linear_keys, true},
    {"dropout", build_dropout, dropout_keys, false},
    {"dropout2d", build_dropout, dropout_keys, false},
    {"batchnorm2d", build_batchnorm, batchnorm_keys, false},
    {"batchnorm1d", build_batchnorm, batchnorm_keys, false},
    {"add", build_add, no_keys, false},
    {"concat", build_concat, no_keys, false},
};
enum { NKINDS = sizeof layer_kinds / sizeof *layer_kinds };

static const char *const *layer_type_names(void) {
  static const char *names[NKINDS + 1];
  for (int i = 0; i < NKINDS; i++)
    names[i] = layer_kinds[i].type;
  return names;
}

static const LayerKind *layer_kind(const char *type) {
  for (int i = 0; i < NKINDS; i++)
    if (!strcmp(layer_kinds[i].type, type))
      return &layer_kinds[i];
  return NULL;
}

static void accept_layer(Layer *l) {
  Section sec = {xformat("layers.%s", l->type), layer_kind(l->type)->keys, false};
  accept(l->opts, l->desc, &sec);
}

// Names the graph itself uses; a layer called like one would collide.
static const char *const reserved_names[] = {"image", "label",    "loss",   "step",
                                             "seed",  "momentum", "lr",     "layers", NULL};

static bool valid_ident(const char *s) {
  if (!isalpha((unsigned char)*s) && *s != '_')
    return false;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && *s != '_')
      return false;
  return true;
}

// One item of `layers`: a bare type name (`- relu`) or a mapping with an
// optional `name` and exactly one type key holding the options.
static void read_layer(Builder *b, YNode *item, int index, Layer *l) {
  const char *const *types = layer_type_names();
  *l = (Layer){.node = item, .index = index, .loc = loc_of(item)};
  const char *ctx = xformat("layer %d", index + 1);
  YNode *type_key = NULL;
  if (is_scalar(item) && !is_null(item)) {
    type_key = item;
  } else if (is_map(item)) {
    // First the name and the type, then whatever else is there.
    NameTable keys = {0};
    for (int i = 0; i < map_len(item); i++) {
      YNode *k = map_key(item, i);
      if (!is_scalar(k) || is_null(k))
        error_at(loc_of(k), NULL, "%s: keys must be names, got %s", ctx, describe(k));
      const char *key = sval(k);
      if (name_seen(&keys, key, i) >= 0)
        error_at(loc_of(k), "keep only one", "%s: duplicate key '%s'", ctx, key);
      if (!strcmp(key, "name")) {
        l->name = xstrdup(to_str(map_val(item, i), ctx, "name"));
      } else if (!strcmp(key, "input") || !strcmp(key, "inputs")) {
        if (l->from)
          error_at(loc_of(k), "write input: NAME for one input, inputs: [A, B] for several",
                   "%s: both 'input' and 'inputs'", ctx);
        l->from = map_val(item, i);
        l->nsrc = !strcmp(key, "inputs") ? -1 : 1; // -1: a list, checked below
        note_used(xformat("layers.%s", key));
      } else if (layer_kind(key)) {
        if (type_key)
          error_at(loc_of(k), "write one layer per list item, each starting with '- '",
                   "%s: two layer types, '%s' and '%s', in one item", ctx, sval(type_key), key);
        type_key = k;
        l->opts = map_val(item, i);
      }
    }
    for (int i = 0; i < map_len(item); i++) {
      YNode *k = map_key(item, i);
      const char *key = sval(k);
      if (!strcmp(key, "name") || !strcmp(key, "input") || !strcmp(key, "inputs") ||
          layer_kind(key))
        continue;
      if (type_key) {
        // Options written next to the type instead of inside it?
        const char *const *opts = layer_kind(sval(type_key))->keys;
        for (int o = 0; opts[o]; o++)
          if (!strcmp(opts[o], key))
            error_at(
                loc_of(k),
                xformat("options go inside the layer type: {%s: {%s: ...}}", sval(type_key), key),
                "%s: '%s' is an option of %s, not a key of the layer", ctx, key, sval(type_key));
        const char *near = closest(key, (const char *const[]){"name", "input", "inputs", NULL});
        if (near)
          error_at(loc_of(k), xformat("did you mean '%s'?", near), "%s: unknown key '%s'", ctx,
                   key);
        error_at(loc_of(k),
                 xformat("a layer holds its 'name', its 'input' or 'inputs', and one type; %s",
                         suggest(key, types)),
                 "%s: unknown key '%s'", ctx, key);
      }
      error_at(loc_of(k), suggest(key, types), "%s: unknown layer type '%s'", ctx, key);
    }
    if (!type_key)
      error_at(l->loc,
               xformat("add one of %s, e.g. {name: fc1, linear: {out_features: 10}}", join(types)),
               "%s: no layer type given", ctx);
    free(keys.key);
    free(keys.first);
  } else {
    error_at(l->loc, "write a layer as '- relu' or '- {name: fc1, linear: {out_features: 10}}'",
             "%s: expected a layer, got %s", ctx, describe(item));
  }
  l->type = sval(type_key);
  const LayerKind *kind = layer_kind(l->type);
  if (!kind)
    error_at(loc_of(type_key), suggest(l->type, types), "%s: unknown layer type '%s'", ctx,
             l->type);
  note_used(xformat("layers.%s", l->type));
  if (l->name)
    note_used("layers.name");

  if (l->name) {
    YNode *nn = get(item, "name");
    if (!valid_ident(l->name))
      error_at(loc_of(nn), "use letters, digits and '_', starting with a letter, like conv1",
               "%s: invalid layer name '%s'", ctx, l->name);
    for (int i = 0; reserved_names[i]; i++)
      if (!strcmp(l->name, reserved_names[i]))
        error_at(loc_of(nn), "pick another name, like fc_out", "%s: the name '%s' is reserved", ctx,
                 l->name);
    int i = name_seen(&b->layer_names, l->name, index);
    if (i >= 0)
      error_at(loc_of(nn),
               xformat("layer %d on line %d already uses it; parameter names %s.weight must be "
                       "unique, so rename one",
                       i + 1, b->layers[i].loc.line, l->name),
               "%s: duplicate layer name '%s'", ctx, l->name);
    l->prefix = l->name;
    l->desc = xformat("layer '%s'", l->name);
    l->what = xformat("%s (%s)", l->desc, l->type);
  } else {
    // Like an unnamed nn.Sequential member, whose state_dict key is "layers.3.weight".
    l->prefix = xformat("layers.%d", index);
    l->desc = l->what = xformat("layer %d (%s)", index + 1, l->type);
  }
  if (l->opts && is_null(l->opts))
    l->opts = NULL;
  if (l->opts)
    want_map(l->opts, l->desc, "the layer's options",
             xformat("{%s: {%s: ...}}", l->type, kind->keys[0] ? kind->keys[0] : "..."));
  if (!l->opts && kind->needs_options)
    error_at(
        l->loc,
        xformat("give its options, e.g. %s",
                !strcmp(l->type, "conv2d")   ? "{name: conv1, conv2d: {out_channels: 6, kernel: 5}}"
                : !strcmp(l->type, "linear") ? "{name: fc1, linear: {out_features: 120}}"
                                             : xformat("{%s: {kernel: 2, stride: 2}}", l->type)),
        "%s needs options", l->desc);
  l->opts = or_empty(l->opts);
}

// Layers that join branches, and how many they may join: a bound on the work.
static bool joins(const Layer *l) { return !strcmp(l->type, "add") || !strcmp(l->type, "concat"); }
enum { MAX_INPUTS = 64 };

// Where input `v` (a name in `input` or `inputs`) of layer i comes from: an
// earlier layer's index, or -1 for `image`. Only earlier layers can be
// named, so the layers form a graph without cycles.
static int find_input(Builder *b, int i, YNode *v, const char *key) {
  Layer *l = &b->layers[i];
  const char *name = to_str(v, l->desc, key);
  if (!strcmp(name, "image"))
    return -1;
  int j = name_seen(&b->layer_names, name, -1);
  if (j == i)
    error_at(loc_of(v),
             "inputs must come earlier in the list (a layer reading itself is a cycle); name "
             "the layer whose output it takes",
             "%s reads its own output", l->what);
  if (j > i)
    error_at(loc_of(v),
             xformat("inputs must come earlier in the list (reading a later layer would make a "
                     "cycle); move '%s' above this layer or read another one",
                     name),
             "%s reads '%s', a later layer (layer %d, line %d)", l->what, name, j + 1,
             b->layers[j].loc.line);
  if (j < 0) {
    const char **names = xcalloc(i + 2, sizeof *names);
    int n = 0;
    names[n++] = "image";
    for (int k = 0; k < i; k++)
      if (b->layers[k].name)
        names[n++] = b->layers[k].name;
    const char *near = closest(name, names);
    const char *what = "an input is the 'name' of an earlier layer, or image for the network's "
                       "input";
    error_at(loc_of(v), near ? xformat("did you mean '%s'? (%s)", near, what) : what,
             "%s: no layer named '%s'", l->what, name);
  }
  return j;
}

// Each layer reads the layer before it unless it names its input (`input:
// conv1`) or, for add and concat, its inputs (`inputs: [bn2, short]`).
// Every layer's result must be read by a later one but the last's, which
// is the logits the loss reads: a branch left dangling is a mistake.
static void resolve_inputs(Builder *b) {
  bool *used = xcalloc(b->nlayers, sizeof *used);
  for (int i = 0; i < b->nlayers; i++) {
    Layer *l = &b->layers[i];
    const char *ex = xformat("{name: %s, %s: {}, inputs: [bn2, shortcut]}",
                             l->name ? l->name : "sum1", l->type);
    if (!l->from) {
      if (joins(l))
        error_at(l->loc, xformat("name the layers it joins, e.g. %s", ex),
                 "%s needs 'inputs', the layers it joins", l->what);
      l->nsrc = 1;
      l->src = xcalloc(1, sizeof *l->src);
      l->src[0] = i - 1;
    } else if (l->nsrc < 0) { // inputs: [A, B, ...]
      want_seq(l->from, l->desc, "'inputs'", "[bn2, shortcut]");
      int n = seq_len(l->from);
      if (!joins(l))
        error_at(loc_of(l->from),
                 n == 1 && is_scalar(seq_at(l->from, 0))
                     ? xformat("write input: %s", sval(seq_at(l->from, 0)))
                     : "only add and concat join layers; give this one input: NAME",
                 "%s takes one input, got 'inputs'", l->what);
      if (n < 2 || n > MAX_INPUTS)
        error_at(loc_of(l->from), xformat("e.g. %s", ex), "%s joins 2 to %d layers, got %d",
                 l->what, MAX_INPUTS, n);
      l->nsrc = n;
      l->src = xcalloc(n, sizeof *l->src);
      for (int k = 0; k < n; k++)
        l->src[k] = find_input(b, i, seq_at(l->from, k), "inputs");
    } else { // input: NAME
      if (joins(l))
        error_at(loc_of(l->from), xformat("write the layers it joins as a list, e.g. %s", ex),
                 "%s joins two or more layers: give them as 'inputs', not 'input'", l->what);
      if (is_seq(l->from))
        error_at(loc_of(l->from), "write input: NAME for one layer (inputs: [...] is for add "
                                  "and concat)",
                 "%s: 'input' must be one layer name, got a list", l->what);
      l->src = xcalloc(1, sizeof *l->src);
      l->src[0] = find_input(b, i, l->from, "input");
    }
    for (int k = 0; k < l->nsrc; k++)
      if (l->src[k] >= 0)
        used[l->src[k]] = true;
  }
  for (int i = 0; i + 1 < b->nlayers; i++) {
    Layer *l = &b->layers[i];
    if (!used[i])
      error_at(l->loc,
               l->name ? xformat("only the last layer's output goes to the loss; read it in a "
                                 "later layer (input: %s, or an add's inputs: [..., %s]) or "
                                 "remove it",
                                 l->name, l->name)
                       : "only the last layer's output goes to the loss; give it a name and "
                         "read it in a later layer's input or inputs, or remove it",
               "%s: its output is not used by any later layer", l->what);
  }
  free(used);
}

//
// The loss: unfused and textbook, as docs/ir.md says
//

enum { LOSS_CE, LOSS_BCE };
static const char *const loss_kinds[] = {"cross_entropy", "bce_with_logits", NULL};
static const char *const loss_keys[] = {"cross_entropy", "bce_with_logits", "l2", NULL};
static const Section loss_sec = {"loss", loss_keys, false}, loss_kind_sec = {"loss", loss_kinds, false};

typedef struct {
  YNode *node;      // the `loss:` value
  YNode *kind_node; // the key (or bare name) saying which loss
  YNode *opts;      // its options, or NULL
  int kind;
} LossSpec;

static LossSpec read_loss_kind(YNode *v) {
  LossSpec ls = {.node = v};
  const char *ex = "{cross_entropy: {label_smoothing: 0.0}}";
  if (is_map(v)) {
    accept(v, "loss", &loss_sec);
    for (int i = 0; i < map_len(v); i++) {
      const char *k = sval(map_key(v, i));
      if (!strcmp(k, "l2"))
        continue;
      if (ls.kind_node)
        error_at(loc_of(map_key(v, i)), "add extra terms with l2: [...]; there is one main loss",
                 "loss: two losses, '%s' and '%s'", sval(ls.kind_node), k);
      ls.kind_node = map_key(v, i);
      ls.kind = !strcmp(k, "cross_entropy") ? LOSS_CE : LOSS_BCE;
      YNode *o = map_val(v, i);
      if (!is_null(o))
        ls.opts = want_map(o, "loss", xformat("the options of '%s'", k), ex);
    }
    if (!ls.kind_node)
      error_at(loc_of(v), xformat("add one of cross_entropy or bce_with_logits, e.g. %s", ex),
               "loss: no loss kind given");
  } else {
    ls.kind = choice(v, NULL, "loss", &loss_kind_sec, ex, &ls.opts, &ls.kind_node);
  }
  return ls;
}

static const char *const ce_keys[] = {"label_smoothing", "weight", NULL};
static const char *const bce_keys[] = {"pos_weight", NULL};
static const char *const l2_keys[] = {"param", "weight", NULL};
static const Section ce_sec = {"loss.cross_entropy", ce_keys, false},
                     bce_sec = {"loss.bce_with_logits", bce_keys, false}, l2_sec = {"loss.l2", l2_keys, false};

// "the last layer 'fc3'" or "the last layer (layer 12, relu)".
static const char *last_layer(Builder *b) {
  Layer *l = &b->layers[b->nlayers - 1];
  return l->name ? xformat("the last layer '%s'", l->name)
                 : xformat("the last layer (layer %d, %s)", l->index + 1, l->type);
}

static Node *build_loss(Builder *b, LossSpec *ls, Node *logits, Node *label) {
  Loc loc = loc_of(ls->kind_node);
  const char *name = sval(ls->kind_node);
  if (logits->type.rank != 2)
    error_at(loc, "end the network with 'flatten' and a linear layer with one output per class",
             "loss '%s' needs logits [N, classes] but %s produces %s", name, last_layer(b),
             type_str(&logits->type));
  int64_t outs = logits->type.dim[1];
  YNode *opts = or_empty(ls->opts);
  Node *loss;
  if (ls->kind == LOSS_CE) {
    accept(opts, "cross_entropy", &ce_sec);
    if (outs < 2)
      error_at(loc,
               "for two classes with one output use bce_with_logits (PyTorch: BCEWithLogitsLoss), "
               "or give the last layer one output per class",
               "cross_entropy needs one output per class, but %s has %lld output", last_layer(b),
               (long long)outs);
    if (outs > MAX_DIM)
      error_at(loc, "end the network with a linear layer with one output per class",
               "cross_entropy supports at most %d classes, but %s has %lld outputs", MAX_DIM,
               last_layer(b), (long long)outs);
    double smoothing = opt_float_in(opts, "label_smoothing", 0.0, 0.0, 1.0, false, "cross_entropy");
    Node *in[3] = {NULL, label, NULL};
    Graph *g = b->g;
    in[0] = node_new(g, OP_log_softmax, &logits, 1, loc);
    node_infer(in[0]);
    YNode *wv = get(opts, "weight");
    if (wv) {
      int n;
      double *w = to_floats(wv, "cross_entropy", "weight", -1, &n, NULL);
      if (n != outs)
        error_at(loc_of(wv), xformat("give one weight per class, %lld in all", (long long)outs),
                 "cross_entropy: 'weight' has %d value%s but %s has %lld outputs", n,
                 n == 1 ? "" : "s", last_layer(b), (long long)outs);
      for (int i = 0; i < n; i++)
        if (w[i] < 0)
          error_at(loc_of(seq_at(wv, i)), NULL,
                   "cross_entropy: class weights must be at least 0, got %g", w[i]);
      in[2] = node_new(g, OP_const, NULL, 0, loc_of(wv));
      in[2]->type = type_make(DT_F32, 1, &outs);
      node_set_floats(in[2], "value", w, n);
      node_infer(in[2]);
    }
    loss = node_new(g, OP_nll_loss, in, wv ? 3 : 2, loc);
    node_set_float(loss, "label_smoothing", smoothing);
  } else {
    accept(opts, "bce_with_logits", &bce_sec);
    if (outs != 1)
      error_at(loc,
               xformat("for %lld mutually exclusive classes use cross_entropy (PyTorch: "
                       "CrossEntropyLoss); for a yes/no model give the last layer "
                       "out_features: 1",
                       (long long)outs),
               "bce_with_logits needs 1 output (binary classification), but %s has %lld",
               last_layer(b), (long long)outs);
    double pw[1];
    int npw = 0;
    YNode *pv = get(opts, "pos_weight");
    if (pv && is_seq(pv)) {
      double *v = to_floats(pv, "bce_with_logits", "pos_weight", 1, &npw,
                            "one output needs one pos_weight; write pos_weight: 2.0");
      pw[0] = v[0];
      if (pw[0] < 0)
        error_at(loc_of(seq_at(pv, 0)), NULL, "bce_with_logits: 'pos_weight' must be at least 0");
    } else if (pv) {
      pw[0] = to_float_in(pv, "bce_with_logits", "pos_weight", 0.0, INFINITY, false, NULL);
      npw = 1;
    }
    Node *p = node_new(b->g, OP_sigmoid, &logits, 1, loc);
    node_infer(p);
    Node *in[2] = {p, label};
    loss = node_new(b->g, OP_bce, in, 2, loc);
    node_set_floats(loss, "pos_weight", pw, npw);
  }
  node_infer(loss);

  // Extra terms: + weight * ||param||_2 each.
  YNode *terms = is_map(ls->node) ? get(ls->node, "l2") : NULL;
  if (terms) {
    want_seq(terms, "loss", "'l2'", "[{param: fc3.weight, weight: 0.01}]");
    NameTable params = {0}; // parameter name -> node index
    for (int j = 0; j < b->g->nnodes; j++)
      if (b->g->node[j]->op == OP_param)
        name_seen(&params, b->g->node[j]->name, j);
    for (int i = 0; i < seq_len(terms); i++) {
      YNode *t =
          want_map(seq_at(terms, i), "loss l2", "each term", "{param: fc3.weight, weight: 0.01}");
      accept(t, "loss l2", &l2_sec);
      const char *ex = "write {param: fc3.weight, weight: 0.01}";
      YNode *pn = need(t, loc_of(t), "param", "loss l2", ex);
      const char *pname = to_str(pn, "loss l2", "param");
      double w = to_float_in(need(t, loc_of(t), "weight", "loss l2", ex), "loss l2", "weight", 0.0,
                             INFINITY, false, NULL);
      int found = name_seen(&params, pname, -1);
      Node *target = found >= 0 ? b->g->node[found] : NULL;
      if (!target) {
        const char **names = xcalloc(b->g->nnodes + 1, sizeof *names);
        int k = 0;
        for (int j = 0; j < b->g->nnodes; j++)
          if (b->g->node[j]->op == OP_param)
            names[k++] = b->g->node[j]->name;
        error_at(loc_of(pn), k ? suggest(pname, names) : "this model has no parameters",
                 "loss l2: no parameter named '%s'", pname);
      }
      Node *norm = node_new(b->g, OP_l2norm, &target, 1, loc_of(t));
      node_infer(norm);
      Node *scaled = node_new(b->g, OP_scale, &norm, 1, loc_of(t));
      node_set_float(scaled, "factor", w);
      node_infer(scaled);
      Node *sum_in[2] = {loss, scaled};
      loss = node_new(b->g, OP_add, sum_in, 2, loc_of(t));
      node_infer(loss);
    }
  }
  loss->name = xstrdup("loss");
  return loss;
}

//
// Optimizer and schedule: graph attributes with PyTorch's defaults
//

static const char *const optimizer_kinds[] = {"sgd", "adam", "adamw", NULL};
static const char *const sgd_keys[] = {"lr",           "momentum", "dampening",
                                       "weight_decay", "nesterov", NULL};
static const char *const adam_keys[] = {"lr", "betas", "eps", "weight_decay", NULL};
static const Section optimizer_sec = {"optimizer", optimizer_kinds, false};
static const Section optimizer_opts_sec[] = {
    {"optimizer.sgd", sgd_keys, false}, {"optimizer.adam", adam_keys, false}, {"optimizer.adamw", adam_keys, false}};

static void read_optimizer(Graph *g, YNode *v) {
  YNode *opts, *name;
  const char *ex = "{sgd: {lr: 0.001, momentum: 0.9}} or {adam: {lr: 0.0001}}";
  int kind = choice(v, NULL, "optimizer", &optimizer_sec, ex, &opts, &name);
  const char *ctx = xformat("optimizer '%s'", optimizer_kinds[kind]);
  opts = or_empty(opts);
  graph_set_attr(g, "optimizer", attr_str(optimizer_kinds[kind]));
  double lr;
  if (kind == 0) {
    accept(opts, ctx, &optimizer_opts_sec[kind]);
    // torch.optim.SGD has no default learning rate.
    lr = to_float_in(need(opts, loc_of(name), "lr", ctx,
                          "torch.optim.SGD needs a learning rate: {sgd: {lr: 0.01}}"),
                     ctx, "lr", 0.0, INFINITY, false, NULL);
  } else {
    accept(opts, ctx, &optimizer_opts_sec[kind]);
    lr = opt_float_in(opts, "lr", 0.001, 0.0, INFINITY, false, ctx);
  }
  if (lr <= 0)
    error_at(loc_of(get(opts, "lr")), NULL, "%s: 'lr' must be positive, got %g", ctx, lr);
  graph_set_attr(g, "lr", attr_float(lr));
  if (kind == 0) {
    double momentum = opt_float_in(opts, "momentum", 0.0, 0.0, INFINITY, false, ctx);
    double dampening = opt_float_in(opts, "dampening", 0.0, 0.0, INFINITY, false, ctx);
    double wd = opt_float_in(opts, "weight_decay", 0.0, 0.0, INFINITY, false, ctx);
    bool nesterov = opt_bool(opts, "nesterov", false, ctx);
    if (nesterov && (momentum <= 0 || dampening != 0))
      error_at(loc_of(get(opts, "nesterov")), "set momentum > 0 and leave dampening at 0",
               "%s: nesterov momentum requires a momentum and zero dampening (as in PyTorch)", ctx);
    graph_set_attr(g, "momentum", attr_float(momentum));
    graph_set_attr(g, "dampening", attr_float(dampening));
    graph_set_attr(g, "weight_decay", attr_float(wd));
    graph_set_attr(g, "nesterov", attr_int(nesterov));
  } else {
    double betas[2] = {0.9, 0.999};
    YNode *bv = get(opts, "betas");
    if (bv) {
      int n;
      to_floats(bv, ctx, "betas", 2, &n, "write betas: [0.9, 0.999]");
      for (int i = 0; i < 2; i++)
        betas[i] = to_float_in(seq_at(bv, i), ctx, "betas", 0.0, 1.0, true, NULL);
    }
    double eps = opt_float_in(opts, "eps", 1e-8, 0.0, INFINITY, false, ctx);
    double wd =
        opt_float_in(opts, "weight_decay", kind == 2 ? 0.01 : 0.0, 0.0, INFINITY, false, ctx);
    graph_set_attr(g, "beta1", attr_float(betas[0]));
    graph_set_attr(g, "beta2", attr_float(betas[1]));
    graph_set_attr(g, "eps", attr_float(eps));
    graph_set_attr(g, "weight_decay", attr_float(wd));
  }
}

// torch.optim.lr_scheduler's schedulers by their arguments' names. The
// runtime evaluates them (runtime/schedule.c); here they become graph
// attributes that codegen copies into xc_model.
enum { SCHED_CONSTANT, SCHED_STEP, SCHED_MULTISTEP, SCHED_EXPONENTIAL, SCHED_COSINE, SCHED_LINEAR,
       SCHED_ONE_CYCLE };
static const char *const schedule_kinds[] = {"constant", "step",   "multistep", "exponential",
                                             "cosine",   "linear", "one_cycle", NULL};
static const char *const schedule_keys[] = {"constant", "step",   "multistep", "exponential",
                                            "cosine",   "linear", "one_cycle", "warmup",
                                            "interval", NULL};
static const char *const step_keys[] = {"step_size", "gamma", NULL};
static const char *const multistep_keys[] = {"milestones", "gamma", NULL};
static const char *const exponential_keys[] = {"gamma", NULL};
static const char *const cosine_keys[] = {"t_max", "eta_min", NULL};
static const char *const linear_lr_keys[] = {"start_factor", "end_factor", "total_iters", NULL};
static const char *const one_cycle_keys[] = {
    "max_lr",     "total_steps",   "pct_start",      "anneal_strategy", "div_factor",
    "final_div_factor", "three_phase", "cycle_momentum", "base_momentum", "max_momentum", NULL};
static const char *const warmup_keys[] = {"total_iters", "start_factor", NULL};
static const char *const intervals[] = {"epoch", "step", NULL};
static const char *const anneal_strategies[] = {"cos", "linear", NULL};
static const Section schedule_sec = {"schedule", schedule_keys, false},
                     schedule_kind_sec = {"schedule", schedule_kinds, false},
                     warmup_sec = {"schedule.warmup", warmup_keys, false},
                     interval_sec = {"schedule.interval", intervals, true},
                     anneal_sec = {"schedule.one_cycle.anneal_strategy", anneal_strategies, true};
static const Section schedule_opts_sec[] = {
    {"schedule.constant", no_keys, false},       {"schedule.step", step_keys, false},
    {"schedule.multistep", multistep_keys, false}, {"schedule.exponential", exponential_keys, false},
    {"schedule.cosine", cosine_keys, false},     {"schedule.linear", linear_lr_keys, false},
    {"schedule.one_cycle", one_cycle_keys, false}};

// A list of non-negative integers (MultiStepLR's milestones), sorted: PyTorch
// counts them, so the order does not matter and a repeated one decays twice.
static int64_t *to_sorted_ints(YNode *v, const char *ctx, const char *key, int *n) {
  want_seq(v, ctx, xformat("'%s'", key), "[30, 80]");
  *n = seq_len(v);
  if (*n == 0)
    error_at(loc_of(v), "list the epochs (or steps) at which to decay, e.g. [30, 80]",
             "%s'%s' is empty", in(ctx), key);
  int64_t *out = xcalloc(*n, sizeof *out);
  for (int i = 0; i < *n; i++) {
    int64_t x = to_int(seq_at(v, i), ctx, key, 0, INT32_MAX);
    int j = i;
    for (; j > 0 && out[j - 1] > x; j--)
      out[j] = out[j - 1];
    out[j] = x;
  }
  return out;
}

static void set_float(Graph *g, const char *name, double v) { graph_set_attr(g, name, attr_float(v)); }
static void set_int(Graph *g, const char *name, int64_t v) { graph_set_attr(g, name, attr_int(v)); }

// The one-cycle schedule's settings (OneCycleLR's defaults).
static void read_one_cycle(Graph *g, YNode *opts, YNode *name, const char *ctx) {
  set_float(g, "max_lr",
            to_float_in(need(opts, loc_of(name), "max_lr", ctx,
                             "OneCycleLR needs the peak learning rate: {one_cycle: {max_lr: 0.1}}"),
                        ctx, "max_lr", 0.0, INFINITY, false, NULL));
  if (graph_float(g, "max_lr", 0) <= 0)
    error_at(loc_of(get(opts, "max_lr")), NULL, "%s: 'max_lr' must be positive", ctx);
  // 0: the whole run (epochs x steps per epoch, as OneCycleLR(epochs=, steps_per_epoch=)).
  set_int(g, "total_steps", opt_int(opts, "total_steps", 0, 1, INT32_MAX, ctx));
  set_float(g, "pct_start", opt_float_in(opts, "pct_start", 0.3, 0.0, 1.0, false, ctx));
  int anneal = 0;
  YNode *av = get(opts, "anneal_strategy");
  if (av) {
    YNode *o;
    anneal = choice(av, ctx, "anneal_strategy", &anneal_sec, "cos or linear", &o, NULL);
    if (o)
      error_at(loc_of(av), "write anneal_strategy: cos (or linear)",
               "%s: anneal_strategy takes no options", ctx);
  }
  graph_set_attr(g, "anneal_strategy", attr_str(anneal_strategies[anneal]));
  set_float(g, "div_factor", opt_float_in(opts, "div_factor", 25.0, 0.0, INFINITY, false, ctx));
  set_float(g, "final_div_factor",
            opt_float_in(opts, "final_div_factor", 1e4, 0.0, INFINITY, false, ctx));
  if (graph_float(g, "div_factor", 1) == 0 || graph_float(g, "final_div_factor", 1) == 0)
    error_at(loc_of(opts), "the initial lr is max_lr / div_factor and the last initial_lr / "
                           "final_div_factor; use factors above 0",
             "%s: div_factor and final_div_factor must be positive", ctx);
  set_int(g, "three_phase", opt_bool(opts, "three_phase", false, ctx));
  set_int(g, "cycle_momentum", opt_bool(opts, "cycle_momentum", true, ctx));
  set_float(g, "base_momentum", opt_float_in(opts, "base_momentum", 0.85, 0.0, 1.0, false, ctx));
  set_float(g, "max_momentum", opt_float_in(opts, "max_momentum", 0.95, 0.0, 1.0, false, ctx));
}

// schedule: KIND or {KIND: {options}}, optionally with warmup (a LinearLR
// first, as SequentialLR) and interval (epoch, the default, or step: how
// often the scheduler steps, as calling scheduler.step() per epoch or per
// batch). Only the settings of the chosen kind become graph attributes.
static void read_schedule(Graph *g, YNode *v) {
  const char *ex = "{cosine: {t_max: 10}} or {step: {step_size: 5, gamma: 0.1}}";
  int kind = SCHED_CONSTANT;
  YNode *opts = NULL, *name = NULL, *warmup = NULL, *interval = NULL;
  if (v && is_map(v) && (get(v, "warmup") || get(v, "interval"))) {
    // The kind next to its companions: {cosine: {...}, warmup: {...}, interval: step}.
    accept(v, "schedule", &schedule_sec);
    warmup = get(v, "warmup"), interval = get(v, "interval");
    for (int i = 0; i < map_len(v); i++) {
      YNode *k = map_key(v, i);
      if (!strcmp(sval(k), "warmup") || !strcmp(sval(k), "interval"))
        continue;
      if (name)
        error_at(loc_of(k), "one schedule at a time; a warm-up goes in warmup: {...}",
                 "schedule: two schedules, '%s' and '%s'", sval(name), sval(k));
      kind = choice(k, NULL, "schedule", &schedule_kind_sec, ex, &opts, &name);
      YNode *o = map_val(v, i);
      if (!is_null(o))
        opts = want_map(o, "schedule", xformat("the options of '%s'", sval(k)), ex);
    }
  } else if (v) {
    kind = choice(v, NULL, "schedule", &schedule_kind_sec, ex, &opts, &name);
  }
  const char *ctx = xformat("schedule '%s'", schedule_kinds[kind]);
  opts = or_empty(opts);
  accept(opts, ctx, &schedule_opts_sec[kind]);
  graph_set_attr(g, "schedule", attr_str(schedule_kinds[kind]));
  Loc at = name ? loc_of(name) : v ? loc_of(v) : (Loc){0};
  switch (kind) {
  case SCHED_STEP:
    set_int(g, "step_size",
            to_int(need(opts, at, "step_size", ctx,
                        "StepLR needs step_size (epochs between decays): {step: {step_size: 5}}"),
                   ctx, "step_size", 1, INT32_MAX));
    set_float(g, "gamma", opt_float_in(opts, "gamma", 0.1, 0.0, INFINITY, false, ctx));
    break;
  case SCHED_MULTISTEP: {
    int n;
    int64_t *ms = to_sorted_ints(
        need(opts, at, "milestones", ctx, "MultiStepLR needs milestones: {multistep: {milestones: [30, 80]}}"),
        ctx, "milestones", &n);
    graph_set_attr(g, "milestones", attr_ints(ms, n));
    set_float(g, "gamma", opt_float_in(opts, "gamma", 0.1, 0.0, INFINITY, false, ctx));
    break;
  }
  case SCHED_EXPONENTIAL:
    set_float(g, "gamma",
              to_float_in(need(opts, at, "gamma", ctx,
                               "ExponentialLR needs gamma, the factor per epoch: {exponential: {gamma: 0.9}}"),
                          ctx, "gamma", 0.0, INFINITY, false, NULL));
    break;
  case SCHED_COSINE:
    set_int(g, "t_max",
            to_int(need(opts, at, "t_max", ctx,
                        "CosineAnnealingLR needs t_max (epochs of one half cosine), e.g. the number "
                        "of epochs: {cosine: {t_max: 10}}"),
                   ctx, "t_max", 1, INT32_MAX));
    set_float(g, "eta_min", opt_float_in(opts, "eta_min", 0.0, 0.0, INFINITY, false, ctx));
    break;
  case SCHED_LINEAR: {
    // LinearLR checks: 0 < start_factor <= 1, 0 <= end_factor <= 1.
    double start = opt_float_in(opts, "start_factor", 1.0 / 3, 0.0, 1.0, false, ctx);
    if (start == 0)
      error_at(loc_of(get(opts, "start_factor")), "use a start_factor in (0, 1], like LinearLR",
               "%s: 'start_factor' must be above 0", ctx);
    set_float(g, "start_factor", start);
    set_float(g, "end_factor", opt_float_in(opts, "end_factor", 1.0, 0.0, 1.0, false, ctx));
    set_int(g, "total_iters", opt_int(opts, "total_iters", 5, 1, INT32_MAX, ctx));
    break;
  }
  case SCHED_ONE_CYCLE:
    read_one_cycle(g, opts, name, ctx);
    break;
  }
  if (warmup) {
    if (kind == SCHED_ONE_CYCLE)
      error_at(loc_of(warmup), "one_cycle warms up by itself (pct_start); remove warmup",
               "schedule: warmup does not combine with one_cycle");
    want_map(warmup, "schedule", "'warmup'", "{total_iters: 5, start_factor: 0.1}");
    accept(warmup, "schedule.warmup", &warmup_sec);
    const char *wctx = "schedule.warmup";
    set_int(g, "warmup_iters",
            to_int(need(warmup, loc_of(warmup), "total_iters", wctx,
                        "say how many epochs (or steps) the warm-up lasts: {total_iters: 5}"),
                   wctx, "total_iters", 1, INT32_MAX));
    double f = opt_float_in(warmup, "start_factor", 1.0 / 3, 0.0, 1.0, false, wctx);
    if (f == 0)
      error_at(loc_of(get(warmup, "start_factor")), "use a start_factor in (0, 1], like LinearLR",
               "%s: 'start_factor' must be above 0", wctx);
    set_float(g, "warmup_factor", f);
  }
  // OneCycleLR is stepped after every batch; the others after every epoch.
  int per_step = kind == SCHED_ONE_CYCLE;
  if (interval) {
    YNode *o;
    per_step = choice(interval, "schedule", "interval", &interval_sec,
                      "interval: epoch (or step)", &o, NULL);
    if (o)
      error_at(loc_of(interval), "write interval: epoch or interval: step",
               "schedule: interval takes no options");
  }
  graph_set_attr(g, "interval", attr_str(intervals[per_step]));
}

//
// Precision: PyTorch's autocast (bf16, or fp16 with GradScaler's dynamic loss
// scaling), as graph attributes the autocast pass and codegen read
//

static const char *const precisions[] = {"fp32", "bf16", "fp16", NULL};
static const char *const grad_scaler_keys[] = {"init_scale", "growth_factor", "backoff_factor",
                                               "growth_interval", NULL};
static const Section precision_sec = {"precision", precisions, true},
                     grad_scaler_sec = {"grad_scaler", grad_scaler_keys, false};

// A positive finite number for a GradScaler setting, above or below 1 as it must be.
static double scaler_float(YNode *gs, const char *key, double dflt, int vs_one) {
  YNode *v = get(gs, key);
  if (!v)
    return dflt;
  double x = to_float(v, "grad_scaler", key);
  if (!(x > 0) || (vs_one > 0 && !(x > 1)) || (vs_one < 0 && !(x < 1)))
    error_at(loc_of(v),
             vs_one > 0   ? "GradScaler asserts growth_factor > 1.0, e.g. 2.0"
             : vs_one < 0 ? "GradScaler asserts backoff_factor < 1.0, e.g. 0.5"
                          : "the scale multiplies the loss: use a positive number, e.g. 65536",
             "grad_scaler: '%s' must be %s, got %s", key,
             vs_one > 0 ? "above 1" : vs_one < 0 ? "in (0, 1)" : "positive", sval(v));
  return x;
}

static void read_precision(Graph *g, YNode *root) {
  YNode *v = get(root, "precision"), *gs = get(root, "grad_scaler");
  if (!v && !gs)
    return; // fp32: today's graphs, unchanged
  int kind = 0;
  if (v) {
    YNode *o;
    kind = choice(v, NULL, "precision", &precision_sec, "precision: bf16", &o, NULL);
    if (o)
      error_at(loc_of(v), "write precision: bf16, fp16 or fp32", "precision takes no options");
  }
  if (gs && kind != 2)
    error_at(loc_of(gs), "set precision: fp16, or remove grad_scaler (bf16 needs no loss scaling)",
             "grad_scaler applies to precision: fp16 only");
  graph_set_attr(g, "precision", attr_str(precisions[kind]));
  if (kind != 2)
    return;
  // torch.cuda.amp.GradScaler's arguments and defaults.
  gs = gs ? want_map(gs, NULL, "'grad_scaler'", "{init_scale: 65536, growth_interval: 2000}")
          : &empty_map;
  accept(gs, "grad_scaler", &grad_scaler_sec);
  set_float(g, "init_scale", scaler_float(gs, "init_scale", 65536.0, 0));
  set_float(g, "growth_factor", scaler_float(gs, "growth_factor", 2.0, 1));
  set_float(g, "backoff_factor", scaler_float(gs, "backoff_factor", 0.5, -1));
  set_int(g, "growth_interval", opt_int(gs, "growth_interval", 2000, 1, INT32_MAX, "grad_scaler"));
}

//
// The rest of the model file: input, train, data, classes
//

static const char *const top_keys[] = {"model",    "input",     "classes",     "layers",
                                       "loss",     "optimizer", "schedule",    "train",
                                       "data",     "precision", "grad_scaler", NULL};
static const char *const input_keys[] = {"channels", "height", "width", NULL};
static const char *const train_keys[] = {"epochs",    "batch_size", "shuffle", "seed",
                                         "drop_last", "log_every",  NULL};
static const char *const data_keys[] = {"format",    "train",        "test",    "val_split", "normalize",
                                        "augment",   "test_augment", "convert", "resize",    NULL};
static const char *const conversions[] = {"rgb", "grey", NULL};
static const char *const formats[] = {"cifar10", "idx", "folder", "imagefolder", NULL};
static const char *const normalize_keys[] = {"mean", "std", NULL};
static const char *const augment_keys[] = {"random_crop", "random_horizontal_flip", NULL};
static const char *const crop_keys[] = {"padding", NULL};
static const char *const test_augment_keys[] = {"horizontal_flip", NULL};
static const Section top_sec = {"", top_keys, false}, input_sec = {"input", input_keys, false},
                     train_sec = {"train", train_keys, false}, data_sec = {"data", data_keys, false},
                     format_sec = {"data.format", formats, true},
                     convert_sec = {"data.convert", conversions, true},
                     normalize_sec = {"data.normalize", normalize_keys, false},
                     augment_sec = {"data.augment", augment_keys, false},
                     crop_sec = {"data.augment.random_crop", crop_keys, false},
                     test_augment_sec = {"data.test_augment", test_augment_keys, false};

static void read_input(Model *m, YNode *root) {
  YNode *v = want_map(
      need(root, loc_of(root), "input", NULL, "add input: {channels: 3, height: 32, width: 32}"),
      NULL, "'input'", "{channels: 3, height: 32, width: 32}");
  accept(v, "input", &input_sec);
  const char *hint = "write input: {channels: 3, height: 32, width: 32}";
  m->channels = to_int(need(v, loc_of(v), "channels", "input", hint), "input", "channels", 1, 4);
  m->height = to_int(need(v, loc_of(v), "height", "input", hint), "input", "height", 1, MAX_WINDOW);
  m->width = to_int(need(v, loc_of(v), "width", "input", hint), "input", "width", 1, MAX_WINDOW);
}

static void read_train(Model *m, YNode *root) {
  YNode *v = get(root, "train");
  v = v ? want_map(v, NULL, "'train'", "{epochs: 10, batch_size: 32}") : &empty_map;
  accept(v, "train", &train_sec);
  m->epochs = opt_int(v, "epochs", 10, 1, INT32_MAX, "train");
  m->batch_size = opt_int(v, "batch_size", 32, 1, MAX_DIM, "train");
  m->shuffle = opt_bool(v, "shuffle", true, "train");
  m->seed = opt_int(v, "seed", 0, 0, INT32_MAX, "train");
  m->drop_last = opt_bool(v, "drop_last", false, "train");
  m->log_every = opt_int(v, "log_every", 100, 1, INT32_MAX, "train");
}

// drop_last: false (PyTorch's default) makes the runtime pad the last partial
// batch of an epoch with rows the loss ignores, so the step sees exactly the
// smaller batch -- except through batch statistics: a batch norm would
// normalise with the padding rows, so such models drop the partial batch.
static void check_drop_last(Model *m, YNode *root) {
  if (m->drop_last)
    return;
  bool batch_stats = false;
  for (int i = 0; i < m->graph->nnodes; i++)
    batch_stats |= m->graph->node[i]->op == OP_batchnorm2d;
  if (!batch_stats)
    return;
  YNode *train = get(root, "train");
  YNode *v = train && is_map(train) ? get(train, "drop_last") : NULL;
  if (v)
    warn_at(loc_of(v), "write drop_last: true (or leave it out) to say so",
            "drop_last: false is not supported with batchnorm2d or batchnorm1d (their batch "
            "statistics are compiled for full batches); the last partial batch of each epoch is "
            "dropped");
  m->drop_last = true;
}

// A relative path is relative to the model file's directory.
static char *resolve(const char *model_path, const char *p) {
  const char *slash = strrchr(model_path, '/');
  if (p[0] == '/' || !slash || !strcmp(model_path, "-"))
    return xstrdup(p);
  return xformat("%.*s/%s", (int)(slash - model_path), model_path, p);
}

static void read_data(Model *m, YNode *root) {
  DataSpec *d = &m->data;
  YNode *v = want_map(need(root, loc_of(root), "data", NULL,
                           "say where the images are, e.g. data: {format: cifar10, train: "
                           "../data/cifar-10-batches-bin, test: ../data/cifar-10-batches-bin}"),
                      NULL, "'data'", "{format: cifar10, train: DIR, test: DIR}");
  accept(v, "data", &data_sec);
  YNode *fv = need(v, loc_of(v), "format", "data", xformat("add format: one of %s", join(formats)));
  d->format = xstrdup(to_str(fv, "data", "format"));
  bool known = false;
  for (int i = 0; formats[i]; i++)
    known |= !strcmp(formats[i], d->format);
  if (!known)
    error_at(loc_of(fv), suggest(d->format, formats), "data: unknown format '%s'", d->format);
  note_used(option_name(&format_sec, d->format));
  if ((!strcmp(d->format, "folder") || !strcmp(d->format, "imagefolder")) && m->channels != 1 &&
      m->channels != 3)
    error_at(loc_of(fv), "use channels: 3 for RGB photos or 1 for grayscale",
             "data: image files are decoded as RGB or grayscale, but the input has %d channels",
             m->channels);
  if (get(v, "train"))
    d->train = resolve(m->path, to_str(get(v, "train"), "data", "train"));
  if (get(v, "test"))
    d->test = resolve(m->path, to_str(get(v, "test"), "data", "test"));
  d->val_split = opt_float_in(v, "val_split", 0.0, 0.0, 1.0, true, "data");
  // Tensor data of another shape: converted and resized only on request, as
  // a torchvision transform would be written (Grayscale, Resize).
  YNode *cv = get(v, "convert");
  if (cv) {
    YNode *o;
    int to = choice(cv, "data", "convert", &convert_sec, "convert: rgb (or grey)", &o, NULL);
    if (o)
      error_at(loc_of(cv), "write convert: rgb or convert: grey", "data: convert takes no options");
    if ((to == 0) != (m->channels == 3))
      error_at(loc_of(cv),
               xformat("the input has %d channel%s; write convert: %s", m->channels,
                       m->channels == 1 ? "" : "s", m->channels == 1 ? "grey" : "rgb"),
               "data: convert: %s does not match the input's %d channel%s", conversions[to],
               m->channels, m->channels == 1 ? "" : "s");
    if (m->channels != 1 && m->channels != 3)
      error_at(loc_of(cv), "images convert between RGB (3 channels) and grey (1)",
               "data: convert needs an input of 1 or 3 channels, not %d", m->channels);
    d->convert = true;
  }
  d->resize = opt_bool(v, "resize", false, "data");
  if (!strcmp(d->format, "cifar10") && ((m->channels != 3 && !d->convert) ||
                                        ((m->height != 32 || m->width != 32) && !d->resize)))
    error_at(loc_of(fv),
             "set input: {channels: 3, height: 32, width: 32}, or ask for the conversion with "
             "data: {convert: grey, resize: true} as a torchvision transform would",
             "data: CIFAR-10 images are 3x32x32 but the input is %dx%dx%d", m->channels, m->height,
             m->width);

  for (int c = 0; c < 4; c++)
    d->mean[c] = 0.0, d->std[c] = 1.0;
  YNode *nv = get(v, "normalize");
  if (nv) {
    want_map(nv, "data", "'normalize'", "{mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}");
    accept(nv, "data.normalize", &normalize_sec);
    const char *hint =
        xformat("give one value per input channel (%d), like transforms.Normalize", m->channels);
    const char *keys[2] = {"mean", "std"};
    double *dst[2] = {d->mean, d->std};
    for (int k = 0; k < 2; k++) {
      YNode *lv = get(nv, keys[k]);
      if (!lv)
        continue;
      int n;
      double *x = to_floats(lv, "data.normalize", keys[k], m->channels, &n, hint);
      for (int c = 0; c < n; c++) {
        if (k == 1 && x[c] <= 0)
          error_at(loc_of(seq_at(lv, c)), "std divides the pixel values; use e.g. 0.5",
                   "data.normalize: 'std' must be positive, got %g", x[c]);
        dst[k][c] = x[c];
      }
    }
  }
  YNode *av = get(v, "augment");
  if (av) {
    want_map(av, "data", "'augment'", "{random_crop: {padding: 4}, random_horizontal_flip: true}");
    accept(av, "data.augment", &augment_sec);
    YNode *cv = get(av, "random_crop");
    if (cv) {
      want_map(cv, "data.augment", "'random_crop'", "{padding: 4}");
      accept(cv, "data.augment.random_crop", &crop_sec);
      d->random_crop_padding = to_int(need(cv, loc_of(cv), "padding", "data.augment.random_crop",
                                           "write random_crop: {padding: 4}"),
                                      "data.augment.random_crop", "padding", 1, MAX_WINDOW);
    }
    d->random_flip = opt_bool(av, "random_horizontal_flip", false, "data.augment");
  }
  // Test-time augmentation: evaluation averages the logits of each image
  // and of its mirror image, as `(net(x) + net(x.flip(3))) / 2`.
  YNode *tv = get(v, "test_augment");
  if (tv) {
    want_map(tv, "data", "'test_augment'", "{horizontal_flip: true}");
    accept(tv, "data.test_augment", &test_augment_sec);
    d->test_flip = opt_bool(tv, "horizontal_flip", false, "data.test_augment");
  }
}

// Class names, checked against the logits: one per output for
// cross-entropy, two (negative, positive) for the single BCE output.
static void read_classes(Builder *b, YNode *root, LossSpec *ls, Node *logits) {
  Model *m = b->m;
  int64_t outs = logits->type.dim[1];
  int want = ls->kind == LOSS_CE ? (int)outs : 2;
  YNode *v = get(root, "classes");
  if (!v) {
    if (!strcmp(m->data.format, "folder") || !strcmp(m->data.format, "imagefolder"))
      error_at(loc_of(root), "list them, e.g. classes: [cat, dog]",
               "missing 'classes': the '%s' data format finds labels by class name",
               m->data.format);
    m->nclasses = want;
    m->classes = xcalloc(want, sizeof *m->classes);
    for (int i = 0; i < want; i++)
      m->classes[i] = xformat("%d", i);
    return;
  }
  want_seq(v, NULL, "'classes'", "[cat, dog]");
  m->nclasses = seq_len(v);
  m->classes = xcalloc(m->nclasses + 1, sizeof *m->classes);
  NameTable seen = {0};
  for (int i = 0; i < m->nclasses; i++) {
    YNode *c = seq_at(v, i);
    m->classes[i] = xstrdup(to_str(c, NULL, "classes"));
    if (!*m->classes[i])
      error_at(loc_of(c), "give each class a name", "class %d has an empty name", i);
    if (name_seen(&seen, m->classes[i], i) >= 0)
      error_at(loc_of(c), "class names must be unique", "duplicate class '%s'", m->classes[i]);
  }
  free(seen.key);
  free(seen.first);
  Layer *last = &b->layers[b->nlayers - 1];
  if (ls->kind == LOSS_CE && m->nclasses != outs)
    error_at(loc_of(v),
             xformat("set out_features: %d in %s, or list %lld classes", m->nclasses, last->desc,
                     (long long)outs),
             "%d classes are listed but %s has %lld outputs", m->nclasses, last_layer(b),
             (long long)outs);
  if (ls->kind == LOSS_BCE && m->nclasses != 2)
    error_at(loc_of(v),
             "bce_with_logits classifies two classes, [negative, positive], e.g. [cat, dog]; for "
             "more classes use cross_entropy with one output per class",
             "bce_with_logits needs 2 classes, got %d", m->nclasses);
}

static noreturn void yaml_error(yaml_parser_t *p, const char *text) {
  Loc loc = {cur_path, (int)p->problem_mark.line + 1, (int)p->problem_mark.column + 1};
  if (p->error == YAML_READER_ERROR) {
    // Reader errors (bad UTF-8) carry a byte offset, not a mark.
    loc.line = loc.col = 1;
    for (size_t i = 0; i < p->problem_offset && text[i]; i++)
      if (text[i] == '\n')
        loc.line++, loc.col = 1;
      else
        loc.col++;
    error_at(loc, "save the file as UTF-8 text", "YAML syntax error: %s", p->problem);
  }
  const char *problem = p->problem ? p->problem : "cannot parse";
  const char *hint = "check the indentation and that every '[' and '{' is closed";
  const char *at = text;
  for (int line = 1; line < loc.line && *at; at++)
    line += *at == '\n';
  bool tab = false;
  for (; *at && *at != '\n'; at++)
    tab |= *at == '\t';
  if (strstr(problem, "tab") || tab)
    hint = "YAML indents with spaces, not tabs";
  else if (strstr(problem, "mapping values are not allowed"))
    hint = "check this line's indentation (keys of one mapping line up), and quote values that "
           "contain ': '";
  else if (strstr(problem, "did not find expected key") || strstr(problem, "block end"))
    hint = "keys of one mapping must line up; check the indentation of this line and the ones "
           "above";
  else if (strstr(problem, "did not find expected ',' or"))
    hint = "separate items with ',' and close every '[' with ']' and '{' with '}'";
  if (p->context && (int)p->context_mark.line + 1 != loc.line)
    error_at(loc, hint, "YAML syntax error: %s %s that starts on line %d", problem, p->context,
             (int)p->context_mark.line + 1);
  if (p->context)
    error_at(loc, hint, "YAML syntax error: %s %s", problem, p->context);
  error_at(loc, hint, "YAML syntax error: %s", problem);
}

// Reads the events of the whole file once, only to find a collection nested
// deeper than MAX_DEPTH (or a syntax error) before yaml_parser_load, which
// has no limit, reads it again.
static void check_depth(const char *text) {
  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser))
    fatal("out of memory");
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
  int depth = 0;
  for (bool done = false; !done;) {
    yaml_event_t e;
    if (!yaml_parser_parse(&parser, &e))
      yaml_error(&parser, text);
    if (e.type == YAML_SEQUENCE_START_EVENT || e.type == YAML_MAPPING_START_EVENT) {
      if (++depth > MAX_DEPTH)
        error_at((Loc){cur_path, (int)e.start_mark.line + 1, (int)e.start_mark.column + 1},
                 "a model file nests a few levels (layers, their options, lists); check for "
                 "an unclosed '[' or '{'",
                 "YAML nested more than %d levels deep", MAX_DEPTH);
    } else if (e.type == YAML_SEQUENCE_END_EVENT || e.type == YAML_MAPPING_END_EVENT) {
      depth--;
    }
    done = e.type == YAML_STREAM_END_EVENT;
    yaml_event_delete(&e);
  }
  yaml_parser_delete(&parser);
}

// The default model name: the file's base name, made a valid IR name.
static char *base_name(const char *path) {
  const char *s = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
  char *name = xstrdup(*s && strcmp(s, "-") ? s : "model");
  char *dot = strrchr(name, '.');
  if (dot && dot != name)
    *dot = '\0';
  for (char *p = name; *p; p++)
    if (!isalnum((unsigned char)*p) && *p != '_')
      *p = '_';
  return name;
}

Model *load_model(const char *path) { return load_model_text(path, read_file(path, "model file")); }

Model *load_model_text(const char *path, const char *text) {
  cur_path = xstrdup(path);
  src_register(cur_path, text);
  check_depth(text);

  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser))
    fatal("out of memory");
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
  if (!yaml_parser_load(&parser, &cur_doc))
    yaml_error(&parser, text);
  YNode *root = yaml_document_get_root_node(&cur_doc);
  if (!root)
    error_at((Loc){cur_path, 1, 1}, "see models/cifar10.yaml for a complete model",
             "the model file is empty");
  yaml_document_t extra;
  if (!yaml_parser_load(&parser, &extra))
    yaml_error(&parser, text);
  if (yaml_document_get_root_node(&extra))
    error_at((Loc){cur_path, (int)extra.start_mark.line + 1, (int)extra.start_mark.column + 1},
             "one model per file; remove the second '---' document",
             "the file holds more than one YAML document");
  yaml_document_delete(&extra);
  yaml_parser_delete(&parser);

  want_map(root, NULL, "the model file", "model: cifar10, input: ..., layers: ...");
  accept(root, NULL, &top_sec);

  Model *m = xcalloc(1, sizeof *m);
  m->path = cur_path;
  YNode *nv = get(root, "model");
  m->name = nv ? xstrdup(to_str(nv, NULL, "model")) : base_name(path);
  if (!*m->name)
    error_at(loc_of(nv), "name the model, like cifar10", "the model name is empty");
  for (const char *p = m->name; *p; p++)
    if (!isalnum((unsigned char)*p) && *p != '_')
      error_at(loc_of(nv), "use letters, digits and '_', like cifar10", "invalid model name '%s'",
               m->name);
  read_input(m, root);
  read_train(m, root);
  read_data(m, root);
  LossSpec ls = read_loss_kind(
      need(root, loc_of(root), "loss", NULL, "add loss: cross_entropy (or bce_with_logits)"));
  YNode *layers = want_seq(
      need(root, loc_of(root), "layers", NULL, "add layers: [...], e.g. see models/cifar10.yaml"),
      NULL, "'layers'", "[{name: fc1, linear: {out_features: 10}}]");
  if (seq_len(layers) == 0)
    error_at(loc_of(layers),
             "add at least one layer, e.g. [flatten, {name: fc, linear: {out_features: 10}}]",
             "'layers' is empty");
  YNode *ov = need(root, loc_of(root), "optimizer", NULL,
                   "add e.g. optimizer: {sgd: {lr: 0.001, momentum: 0.9}}");

  Builder b = {.m = m, .g = graph_new(m->name), .batch = m->batch_size};
  m->graph = b.g;
  b.nlayers = seq_len(layers);
  b.layers = xcalloc(b.nlayers, sizeof *b.layers);
  for (int i = 0; i < b.nlayers; i++)
    read_layer(&b, seq_at(layers, i), i, &b.layers[i]);
  resolve_inputs(&b);

  int64_t dim[4] = {b.batch, m->channels, m->height, m->width};
  Node *image = node_new(b.g, OP_input, NULL, 0, (Loc){0});
  image->name = xstrdup("image");
  image->type = type_make(DT_F32, 4, dim);
  // The label's type follows the logits' shape for BCE; set after the layers.
  Node *label = node_new(b.g, OP_input, NULL, 0, (Loc){0});
  label->name = xstrdup("label");
  for (int i = 0; i < b.nlayers && !b.step; i++)
    if (!strcmp(b.layers[i].type, "dropout") || !strcmp(b.layers[i].type, "dropout2d")) {
      b.step = node_new(b.g, OP_input, NULL, 0, (Loc){0});
      b.step->name = xstrdup("step");
      b.step->type = type_make(DT_I32, 0, NULL);
      b.seed = node_new(b.g, OP_input, NULL, 0, (Loc){0});
      b.seed->name = xstrdup("seed");
      b.seed->type = type_make(DT_I32, 0, NULL);
      b.row0 = node_new(b.g, OP_input, NULL, 0, (Loc){0});
      b.row0->name = xstrdup("row0");
      b.row0->type = type_make(DT_I32, 0, NULL);
    }

  Node **out = xcalloc(b.nlayers, sizeof *out); // each layer's result
  for (int i = 0; i < b.nlayers; i++) {
    Layer *l = &b.layers[i];
    l->in = xcalloc(l->nsrc, sizeof *l->in);
    for (int k = 0; k < l->nsrc; k++)
      l->in[k] = l->src[k] < 0 ? image : out[l->src[k]];
    out[i] = layer_kind(l->type)->build(&b, l, l->in[0]);
    if (l->name)
      out[i]->name = xstrdup(l->name);
  }
  Node *logits = out[b.nlayers - 1];
  label->type = ls.kind == LOSS_CE ? type_make(DT_I32, 1, &b.batch) : logits->type;

  Node *loss = build_loss(&b, &ls, logits, label);
  read_classes(&b, root, &ls, logits);
  graph_return(b.g, loss);
  graph_return(b.g, logits);

  read_optimizer(b.g, ov);
  read_schedule(b.g, get(root, "schedule"));
  read_precision(b.g, root);
  check_drop_last(m, root);
  // Everything kept (names, paths, classes) was copied out of the document.
  yaml_document_delete(&cur_doc);
  return m;
}

//
// The schema as a list: every option `path.key` the frontend accepts, every
// kind `path.kind`, every value of a scalar choice `path=value`.
//

static const Section *const schema[] = {
    &top_sec,          &input_sec,          &train_sec,       &data_sec,
    &format_sec,       &convert_sec,        &normalize_sec,   &augment_sec,     &crop_sec,
    &test_augment_sec,
    &loss_sec,         &ce_sec,             &bce_sec,         &l2_sec,
    &optimizer_sec,    &optimizer_opts_sec[0], &optimizer_opts_sec[1], &optimizer_opts_sec[2],
    &schedule_sec,     &warmup_sec,         &interval_sec,    &anneal_sec,
    &schedule_opts_sec[0], &schedule_opts_sec[1], &schedule_opts_sec[2], &schedule_opts_sec[3],
    &schedule_opts_sec[4], &schedule_opts_sec[5], &schedule_opts_sec[6],
    &precision_sec,    &grad_scaler_sec,    &gelu_form_sec,
};

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void print_sorted(FILE *out, char **names, int n) {
  if (n == 0)
    return; // names may be NULL, which qsort must not be given
  qsort(names, n, sizeof *names, cmp_str);
  for (int i = 0; i < n; i++)
    if (i == 0 || strcmp(names[i], names[i - 1]))
      fprintf(out, "%s\n", names[i]);
}

void print_schema(FILE *out) {
  char **names = NULL;
  int n = 0;
#define ADD(x) (names = realloc(names, sizeof *names * (n + 1)), names[n++] = (x))
  for (size_t i = 0; i < sizeof schema / sizeof *schema; i++)
    for (int k = 0; schema[i]->keys[k]; k++)
      ADD(option_name(schema[i], schema[i]->keys[k]));
  ADD(xstrdup("layers.name"));
  ADD(xstrdup("layers.input"));
  ADD(xstrdup("layers.inputs"));
  for (int i = 0; i < NKINDS; i++) {
    ADD(xformat("layers.%s", layer_kinds[i].type));
    for (int k = 0; layer_kinds[i].keys[k]; k++)
      ADD(xformat("layers.%s.%s", layer_kinds[i].type, layer_kinds[i].keys[k]));
  }
#undef ADD
  print_sorted(out, names, n);
}

void print_used_options(FILE *out) { print_sorted(out, used_options, nused); }

void forget_used_options(void) {
  used_options = NULL;
  nused = 0;
}

// Differential tests of the loop schedules: for every op of ir/ops.def that
// is lowered, random cases (shapes, attributes and values drawn from a fixed
// seed) are compiled twice -- plainly (-O0: the lowering's nests as they are)
// and scheduled (-O3: fuse-epilogue, pad, tile, vectorize, parallelize) --
// run on the same inputs, and compared with each other and with the
// reference evaluator (ir/eval.c). An op without a generator here fails.
//
// The environment reproduces a failure or runs a longer sweep:
//   XENTCC_SCHED_SEED=S     the run's seed (printed with every failure)
//   XENTCC_SCHED_CASES=N    cases per op instead of the table's count
//   XENTCC_SCHED_OP=NAME    only this op
//   XENTCC_SCHED_CASE=I     only case I of it (a case's draws depend only on
//                           the seed, the op's name and I)
//   XENTCC_SCHED_VERBOSE=1  a line per case: what -O3 did to it (tiled, padded...)
//                           and its worst error as a fraction of the tolerance
#include "../common/capture.h"
#include "ir.h"
#include "loop.h"

#include <check.h>
#include <dlfcn.h>
#include <float.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TEST_RNG_SEED 1 // replaced per case, see seed_case
#include "test_compile.h"
#include "test_graphs.h"

static const uint64_t DEFAULT_SEED = 0x5EED2024C0DE0011ull;

static struct {
  uint64_t seed;
  int cases;      // per op; 0: the table's
  const char *op; // only this op, or NULL
  int only;       // only this case, or -1
  bool verbose;
} cfg;

static void read_env(void) {
  const char *s = getenv("XENTCC_SCHED_SEED"), *n = getenv("XENTCC_SCHED_CASES");
  const char *i = getenv("XENTCC_SCHED_CASE"), *v = getenv("XENTCC_SCHED_VERBOSE");
  cfg.seed = s && *s ? strtoull(s, NULL, 0) : DEFAULT_SEED;
  cfg.cases = n && *n ? atoi(n) : 0;
  cfg.op = getenv("XENTCC_SCHED_OP");
  cfg.only = i && *i ? atoi(i) : -1;
  cfg.verbose = v && *v && strcmp(v, "0");
}

//
// Random draws. Each case reseeds test_graphs.h's generator from (seed, op
// name, case index), so a case rebuilds alone, and adding an op or a case
// elsewhere changes no other case.
//

static uint64_t mix(uint64_t x) { // splitmix64's finalizer
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

static void seed_case(const char *op, int index) {
  uint64_t h = 1469598103934665603ull; // FNV-1a of the name
  for (const char *p = op; *p; p++)
    h = (h ^ (unsigned char)*p) * 1099511628211ull;
  rng_state = mix(cfg.seed ^ mix(h ^ mix((uint64_t)index)));
  if (!rng_state)
    rng_state = 1;
}

static int64_t irand(int64_t lo, int64_t hi) { // lo..hi inclusive
  int64_t v = lo + (int64_t)uniform(0, (double)(hi - lo + 1));
  return v > hi ? hi : v;
}

static bool chance(double p) { return uniform(0, 1) < p; }

static int64_t pick(const int64_t *v, int n) { return v[irand(0, n - 1)]; }
#define PICK(...) pick((int64_t[]){__VA_ARGS__}, sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t))

// Image rows and columns: 1 often (1x1, 1xN), primes, anything up to 24.
static int64_t spatial(void) {
  double u = uniform(0, 1);
  return u < 0.15 ? 1 : u < 0.45 ? PICK(2, 3, 5, 7, 11, 13, 17, 19, 23) : irand(1, 24);
}

// Channels 1..max, one channel often.
static int64_t channels(int64_t max) { return chance(0.2) ? 1 : irand(1, max); }

// Linear layer widths 1..70: mostly not multiples of 8 (edge tiles), sometimes so.
static int64_t features(void) {
  double u = uniform(0, 1);
  return u < 0.1 ? 1 : u < 0.25 ? PICK(8, 16, 24, 32, 64) : irand(1, 70);
}

// A dimension of an elementwise operand.
static int64_t any_dim(void) {
  double u = uniform(0, 1);
  return u < 0.15  ? 1
         : u < 0.4 ? PICK(2, 3, 5, 7, 11, 13, 17, 29, 37)
         : u < 0.5 ? 8 * irand(1, 4)
                   : irand(1, 40);
}

// A shape of rank min_rank..max_rank with at most max elements.
static int rand_shape(int64_t *dim, int min_rank, int max_rank, int64_t max) {
  for (;;) {
    int rank = (int)irand(min_rank, max_rank);
    int64_t total = 1;
    for (int d = 0; d < rank; d++)
      total *= dim[d] = any_dim();
    if (total <= max)
      return rank;
  }
}

static Node *f32_shaped(Net *t, const char *name, int rank, const int64_t *dim) {
  return source(t, OP_input, name, DT_F32, rank, dim);
}

static Node *f32_like(Net *t, const char *name, const Node *like) {
  return source(t, OP_input, name, DT_F32, like->type.rank, like->type.dim);
}

// The precision of a case's float operands and results, for the ops mixed
// precision runs in 16 bits: f32 for the table's first cases, then bf16 and
// f16 by turns (the op's cases16). The f32 cases draw exactly what they drew
// before 16-bit types existed.
static DType case_dt = DT_F32;

static Node *flt_shaped(Net *t, const char *name, int rank, const int64_t *dim) {
  return source(t, OP_input, name, case_dt, rank, dim);
}

static Node *flt_like(Net *t, const char *name, const Node *like) {
  return source(t, OP_input, name, case_dt, like->type.rank, like->type.dim);
}

#define FLT(t, name, ...) source(t, OP_input, name, case_dt, DIMS(__VA_ARGS__))

static float *val(Net *t, Node *n) { return t->src[n->id].f; }

// A few special values: zeros of both signs, infinities and a NaN.
static void sprinkle(Net *t, Node *n, bool nonfinite) {
  static const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN};
  int kinds = nonfinite ? 5 : 2;
  for (int k = 0; k < 3 && count(n) > 0; k++)
    val(t, n)[irand(0, count(n) - 1)] = special[irand(0, kinds - 1)];
}

//
// The cases: one graph each, with the op under test, its operands as sources
//

typedef struct {
  Net *t;
  Node *node;  // the op under test
  double K;    // terms in the longest sum behind one of its outputs (1: no sum)
  double size; // how large the formula's intermediates get, when that is more than
               // its result can be (a cancellation): see tolerance()
} Case;

static Node *op1(Net *t, OpKind op, int nin, Node **in) {
  return node_new(t->g, op, in, nin, no_loc);
}

// How large the partial sums of K random-signed terms of root-mean-square
// rms grow: a random walk's sqrt(K) * rms. The size of a sum's rounding
// errors, whatever its result (a single sum can end near zero).
static double walk(double K, double rms) { return sqrt(K) * rms; }

// Root-mean-square of uniform(lo, hi) values.
static double rms_uniform(double lo, double hi) { return sqrt((lo * lo + lo * hi + hi * hi) / 3); }

static Case *new_case(void) {
  Case *c = xcalloc(1, sizeof *c);
  c->t = net_new();
  c->K = 1;
  return c;
}

// --- Convolution and its gradients -----------------------------------------------------

typedef struct {
  int64_t n, c, h, w, o, kh, kw, sh, sw, ph, pw, oh, ow;
} ConvShape;

// Keeps a case's multiply-adds (and the reference's double loops) small.
enum { MAX_MACS = 1 << 20 };

// Kernels 1-7, strides 1-3 (1 half the time: what tiles), padding 0-3
// (it may exceed the kernel: whole output rows then read only padding),
// square or not; channels 1-40; batch 1-5; odd, prime and 1-wide images.
static ConvShape conv_shape(void) {
  for (;;) {
    ConvShape s;
    s.kh = irand(1, 7), s.kw = chance(0.6) ? s.kh : irand(1, 7);
    s.sh = chance(0.5) ? 1 : irand(2, 3), s.sw = chance(0.6) ? s.sh : irand(1, 3);
    s.ph = irand(0, 3), s.pw = chance(0.6) ? s.ph : irand(0, 3);
    s.h = spatial(), s.w = spatial();
    if (s.h + 2 * s.ph < s.kh || s.w + 2 * s.pw < s.kw)
      continue;
    s.n = irand(1, 5), s.c = channels(40), s.o = channels(40);
    s.oh = (s.h + 2 * s.ph - s.kh) / s.sh + 1, s.ow = (s.w + 2 * s.pw - s.kw) / s.sw + 1;
    if (s.n * s.o * s.oh * s.ow * s.c * s.kh * s.kw <= MAX_MACS)
      return s;
  }
}

static void conv_attrs(Node *n, const ConvShape *s) {
  set_pair(n, "stride", s->sh, s->sw);
  set_pair(n, "padding", s->ph, s->pw);
}

static void gen_conv2d(Case *c) {
  ConvShape s = conv_shape();
  Net *t = c->t;
  Node *x = FLT(t, "x", s.n, s.c, s.h, s.w), *w = FLT(t, "w", s.o, s.c, s.kh, s.kw);
  Node *b = chance(0.5) ? FLT(t, "b", s.o) : NULL;
  c->node = op1(t, OP_conv2d, b ? 3 : 2, (Node *[]){x, w, b});
  conv_attrs(c->node, &s);
  done(c->node);
  fill(t, x, -1, 1);
  fill(t, w, -1, 1);
  if (b)
    fill(t, b, -1, 1);
  c->K = (double)s.c * s.kh * s.kw;
  c->size = walk(c->K, 1.0 / 3); // products of two uniform(-1, 1)
}

static void gen_conv2d_grad_input(Case *c) {
  ConvShape s = conv_shape();
  Net *t = c->t;
  Node *dy = FLT(t, "dy", s.n, s.o, s.oh, s.ow), *w = FLT(t, "w", s.o, s.c, s.kh, s.kw);
  c->node = OPN(t, conv2d_grad_input, dy, w);
  conv_attrs(c->node, &s);
  c->node->type = type_make(case_dt, DIMS(s.n, s.c, s.h, s.w)); // declared: x's type
  done(c->node);
  fill(t, dy, -1, 1);
  fill(t, w, -1, 1);
  c->K = (double)s.o * s.kh * s.kw;
  c->size = walk(c->K, 1.0 / 3);
}

static void gen_conv2d_grad_weight(Case *c) {
  ConvShape s = conv_shape();
  Net *t = c->t;
  Node *dy = FLT(t, "dy", s.n, s.o, s.oh, s.ow), *x = FLT(t, "x", s.n, s.c, s.h, s.w);
  c->node = OPN(t, conv2d_grad_weight, dy, x);
  conv_attrs(c->node, &s);
  set_pair(c->node, "kernel", s.kh, s.kw);
  done(c->node);
  fill(t, dy, -1, 1);
  fill(t, x, -1, 1);
  c->K = (double)s.n * s.oh * s.ow;
  c->size = walk(c->K, 1.0 / 3);
}

// --- Pooling -------------------------------------------------------------------------

typedef struct {
  int64_t n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow;
} PoolShape;

// Kernels 1-7, strides 1-3 (often the kernel), padding up to half the
// kernel (PyTorch's limit) and at most 3.
static PoolShape pool_shape(void) {
  for (;;) {
    PoolShape s;
    s.kh = irand(1, 7), s.kw = chance(0.6) ? s.kh : irand(1, 7);
    s.sh = chance(0.4) ? s.kh : irand(1, 3), s.sw = chance(0.6) ? s.sh : irand(1, 3);
    s.ph = irand(0, s.kh / 2 < 3 ? s.kh / 2 : 3), s.pw = irand(0, s.kw / 2 < 3 ? s.kw / 2 : 3);
    s.h = spatial(), s.w = spatial();
    if (s.h + 2 * s.ph < s.kh || s.w + 2 * s.pw < s.kw)
      continue;
    s.n = irand(1, 5), s.c = channels(40);
    s.oh = (s.h + 2 * s.ph - s.kh) / s.sh + 1, s.ow = (s.w + 2 * s.pw - s.kw) / s.sw + 1;
    if (s.n * s.c * s.oh * s.ow * s.kh * s.kw <= MAX_MACS / 4 && s.n * s.c * s.h * s.w <= 60000)
      return s;
  }
}

static void pool_attrs(Node *n, const PoolShape *s) {
  set_pair(n, "kernel", s->kh, s->kw);
  set_pair(n, "stride", s->sh, s->sw);
  set_pair(n, "padding", s->ph, s->pw);
}

// Max pooling's inputs: sometimes few distinct values (ties: the first
// maximum wins, as in PyTorch), sometimes a NaN (it wins too).
static void pool_input(Net *t, Node *x, bool max) {
  fill(t, x, -1, 1);
  if (max && chance(0.3))
    for (int64_t i = 0; i < count(x); i++)
      val(t, x)[i] = floorf(val(t, x)[i] * 2);
  if (max && chance(0.1))
    val(t, x)[irand(0, count(x) - 1)] = NAN;
}

static void gen_pool(Case *c, OpKind op) {
  PoolShape s = pool_shape();
  Net *t = c->t;
  Node *x = FLT(t, "x", s.n, s.c, s.h, s.w);
  c->node = op1(t, op, 1, &x);
  pool_attrs(c->node, &s);
  done(c->node);
  pool_input(t, x, op == OP_maxpool2d);
  c->K = (double)s.kh * s.kw;
  if (op == OP_avgpool2d) // a sum of uniform(-1, 1) over the window, divided by its size
    c->size = walk(c->K, rms_uniform(-1, 1)) / c->K;
}

static void gen_maxpool2d(Case *c) { gen_pool(c, OP_maxpool2d); }
static void gen_avgpool2d(Case *c) { gen_pool(c, OP_avgpool2d); }

static void gen_pool_grad(Case *c, OpKind op) {
  PoolShape s = pool_shape();
  Net *t = c->t;
  Node *dy = FLT(t, "dy", s.n, s.c, s.oh, s.ow), *x = FLT(t, "x", s.n, s.c, s.h, s.w);
  c->node = op1(t, op, 2, (Node *[]){dy, x});
  pool_attrs(c->node, &s);
  done(c->node);
  fill(t, dy, -1, 1);
  pool_input(t, x, op == OP_maxpool2d_grad);
  // An input element gathers from every window over it.
  c->K = (double)((s.kh + s.sh - 1) / s.sh) * ((s.kw + s.sw - 1) / s.sw);
  c->size = walk(c->K, rms_uniform(-1, 1)) / (op == OP_avgpool2d_grad ? s.kh * s.kw : 1);
}

static void gen_maxpool2d_grad(Case *c) { gen_pool_grad(c, OP_maxpool2d_grad); }
static void gen_avgpool2d_grad(Case *c) { gen_pool_grad(c, OP_avgpool2d_grad); }

// --- Linear layers ------------------------------------------------------------------------

static int64_t batch(void) { return chance(0.7) ? irand(1, 9) : features(); }

static void gen_linear(Case *c) {
  Net *t = c->t;
  int64_t n = batch(), k = features(), m = features();
  Node *x = FLT(t, "x", n, k), *w = FLT(t, "w", m, k), *b = chance(0.5) ? FLT(t, "b", m) : NULL;
  c->node = done(op1(t, OP_linear, b ? 3 : 2, (Node *[]){x, w, b}));
  fill(t, x, -1, 1);
  fill(t, w, -1, 1);
  if (b)
    fill(t, b, -1, 1);
  c->K = (double)k;
  c->size = walk(c->K, 1.0 / 3);
}

static void gen_linear_grad_input(Case *c) {
  Net *t = c->t;
  int64_t n = batch(), k = features(), m = features();
  Node *dy = FLT(t, "dy", n, m), *w = FLT(t, "w", m, k);
  c->node = done(OPN(t, linear_grad_input, dy, w));
  fill(t, dy, -1, 1);
  fill(t, w, -1, 1);
  c->K = (double)m;
  c->size = walk(c->K, 1.0 / 3);
}

static void gen_linear_grad_weight(Case *c) {
  Net *t = c->t;
  int64_t n = features(), k = features(), m = features();
  if (chance(0.25)) { // now and then enough multiply-adds (2^19) for the threads
    n = irand(512, 1024);
    k = k < 32 ? 32 : k;
    m = m < 32 ? 32 : m;
  }
  Node *dy = FLT(t, "dy", n, m), *x = FLT(t, "x", n, k);
  c->node = done(OPN(t, linear_grad_weight, dy, x));
  fill(t, dy, -1, 1);
  fill(t, x, -1, 1);
  c->K = (double)n;
  c->size = walk(c->K, 1.0 / 3);
}

// --- Elementwise ops ----------------------------------------------------------------------

enum { MAX_ELEMS = 20000 };

// One operand of a random shape of rank 0-4 (elem_flt: of the case's precision).
static Node *elem_operand(Net *t, const char *name) {
  int64_t dim[4];
  int rank = rand_shape(dim, 0, 4, MAX_ELEMS);
  return f32_shaped(t, name, rank, dim);
}

static Node *elem_flt(Net *t, const char *name) {
  int64_t dim[4];
  int rank = rand_shape(dim, 0, 4, MAX_ELEMS);
  return flt_shaped(t, name, rank, dim);
}

static void gen_relu(Case *c) {
  Node *x = elem_flt(c->t, "x");
  c->node = done(OPN(c->t, relu, x));
  fill(c->t, x, -3, 3);
  sprinkle(c->t, x, true);
}

static void gen_sigmoid(Case *c) {
  Node *x = elem_flt(c->t, "x");
  c->node = done(OPN(c->t, sigmoid, x));
  fill(c->t, x, -12, 12);
  sprinkle(c->t, x, false);
  val(c->t, x)[0] = (float)PICK(-100, -30, 0, 30, 100);
}

static void gen_tanh(Case *c) {
  Node *x = elem_flt(c->t, "x");
  c->node = done(OPN(c->t, tanh, x));
  fill(c->t, x, -6, 6);
  sprinkle(c->t, x, true);
}

// A slope of either sign (PyTorch allows any), NaN kept.
static double leaky_slope(void) { return chance(0.3) ? 0.01 : uniform(-1, 1); }

static void gen_leaky_relu(Case *c) {
  Node *x = elem_flt(c->t, "x");
  c->node = OPN(c->t, leaky_relu, x);
  node_set_float(c->node, "negative_slope", leaky_slope());
  done(c->node);
  fill(c->t, x, -3, 3);
  sprinkle(c->t, x, true);
}

// Both forms; inputs past where erf and tanh saturate, and the specials.
static void gen_gelu(Case *c) {
  Node *x = elem_flt(c->t, "x");
  c->node = OPN(c->t, gelu, x);
  node_set_str(c->node, "approximate", chance(0.5) ? "tanh" : "none");
  done(c->node);
  fill(c->t, x, -8, 8);
  sprinkle(c->t, x, true);
}

static void gen_binary(Case *c, OpKind op) {
  Net *t = c->t;
  Node *a = elem_flt(t, "a");
  Node *b = chance(0.2) ? a : flt_like(t, "b", a); // sometimes one buffer twice
  c->node = op1(t, op, 2, (Node *[]){a, b});
  if (op == OP_ema) { // (1 - m) a + m b: a difference of operands up to 3
    node_set_float(c->node, "momentum", chance(0.3) ? PICK(0, 1) * 1.0 : uniform(0, 1));
    c->size = 3;
  }
  done(c->node);
  fill(t, a, -3, 3);
  if (b != a)
    fill(t, b, -3, 3);
}

static void gen_add(Case *c) { gen_binary(c, OP_add); }
static void gen_mul(Case *c) { gen_binary(c, OP_mul); }
static void gen_ema(Case *c) { gen_binary(c, OP_ema); }

static void gen_scale(Case *c) {
  Node *x = elem_flt(c->t, "x");
  c->node = OPN(c->t, scale, x);
  node_set_float(c->node, "factor", chance(0.3) ? PICK(-1, 0, 1, 2) * 1.0 : uniform(-3, 3));
  done(c->node);
  fill(c->t, x, -3, 3);
}

// (dy, y): y a relu's output, zero about half the time.
static void gen_relu_grad(Case *c) {
  Net *t = c->t;
  Node *dy = elem_flt(t, "dy"), *y = flt_like(t, "y", dy);
  c->node = done(OPN(t, relu_grad, dy, y));
  fill(t, dy, -1, 1);
  fill(t, y, -1, 1);
  for (int64_t i = 0; i < count(y); i++)
    val(t, y)[i] = fmaxf(val(t, y)[i], 0.0f);
}

static void gen_sigmoid_grad(Case *c) {
  Net *t = c->t;
  Node *dy = elem_flt(t, "dy"), *y = flt_like(t, "y", dy);
  c->node = done(OPN(t, sigmoid_grad, dy, y));
  fill(t, dy, -1, 1);
  fill(t, y, 0, 1);
}

// (dy, y): y a tanh's output.
static void gen_tanh_grad(Case *c) {
  Net *t = c->t;
  Node *dy = elem_flt(t, "dy"), *y = flt_like(t, "y", dy);
  c->node = done(OPN(t, tanh_grad, dy, y));
  fill(t, dy, -1, 1);
  fill(t, y, -1, 1);
}

// (dy, x): x the forward input, zero now and then (the kink).
static void gen_leaky_relu_grad(Case *c) {
  Net *t = c->t;
  Node *dy = elem_flt(t, "dy"), *x = flt_like(t, "x", dy);
  c->node = OPN(t, leaky_relu_grad, dy, x);
  node_set_float(c->node, "negative_slope", leaky_slope());
  done(c->node);
  fill(t, dy, -1, 1);
  fill(t, x, -3, 3);
  sprinkle(t, x, false);
}

static void gen_gelu_grad(Case *c) {
  Net *t = c->t;
  Node *dy = elem_flt(t, "dy"), *x = flt_like(t, "x", dy);
  c->node = OPN(t, gelu_grad, dy, x);
  node_set_str(c->node, "approximate", chance(0.5) ? "tanh" : "none");
  done(c->node);
  fill(t, dy, -1, 1);
  fill(t, x, -8, 8);
}

static void gen_reshape(Case *c) {
  Net *t = c->t;
  int64_t dim[4];
  int rank = rand_shape(dim, 0, 4, MAX_ELEMS);
  Node *x = flt_shaped(t, "x", rank, dim);
  c->node = OPN(t, reshape, x);
  int64_t n = count(x), first = rank ? dim[0] : 1;
  c->node->type =
      chance(0.5) ? type_make(case_dt, DIMS(n)) : type_make(case_dt, DIMS(first, n / first));
  done(c->node);
  fill(t, x, -1, 1);
}

// f32 to bf16 or f16 (rounding, ties, overflow to infinity in f16,
// subnormals), or back. Values of all magnitudes, and the specials.
static void gen_cast(Case *c) {
  Net *t = c->t;
  int64_t dim[4];
  int rank = rand_shape(dim, 0, 4, MAX_ELEMS);
  if (case_dt == DT_F16 && chance(0.5)) { // every f16 there is, widened
    Node *x = source(t, OP_input, "x", DT_F16, 1, (int64_t[]){65536});
    c->node = OPN(t, cast, x);
    c->node->type = type_make(DT_F32, 1, (int64_t[]){65536});
    done(c->node);
    for (int64_t i = 0; i < 65536; i++) {
      uint16_t u = (uint16_t)i;
      _Float16 h;
      memcpy(&h, &u, 2);
      val(t, x)[i] = (float)h;
    }
    return;
  }
  Node *x = source(t, OP_input, "x", case_dt, rank, dim);
  c->node = OPN(t, cast, x);
  DType into = case_dt != DT_F32 ? DT_F32 : chance(0.5) ? DT_BF16 : DT_F16;
  c->node->type = type_make(into, rank, dim);
  done(c->node);
  for (int64_t i = 0; i < count(x); i++)
    val(t, x)[i] = (float)(uniform(-1, 1) * ldexp(1, (int)irand(-30, 20)));
  if (count(x) > 0 && chance(0.5)) // a tie: halfway between two bf16 (or f16) values
    val(t, x)[0] = (float)(1 + ldexp(1, into == DT_F16 ? -11 : -8) * (2 * irand(0, 3) + 1));
  // Ends of the ranges: f32 subnormals, what rounds to bf16's or f16's
  // largest finite value or overflows to infinity, f16 subnormals.
  static const float edge[] = {1e-40f, -3e-39f, FLT_MAX, -3.3e38f, 65504.0f, 65519.0f,
                               65520.0f, -70000.0f, 3e-6f, -6e-8f, 2e-8f};
  for (int k = 0; k < 3 && count(x) > 0; k++)
    val(t, x)[irand(0, count(x) - 1)] = edge[irand(0, sizeof edge / sizeof *edge - 1)];
  sprinkle(t, x, true);
}

// The mask over x's shape, with the rows of a data-parallel rank (row0) in
// half of the cases, alone and applied as the dropout layers apply it.
static void mask_case(Case *c, OpKind op, Node *step, Node *seed, Node *x) {
  Net *t = c->t;
  Node *row0 = chance(0.5) ? STEP(t, "row0") : NULL;
  c->node = node_new(t->g, op, (Node *[]){step, seed, row0}, row0 ? 3 : 2, no_loc);
  node_set_float(c->node, "p", chance(0.2) ? 0.0 : uniform(0, 0.95));
  node_set_int(c->node, "salt", irand(0, INT32_MAX));
  c->node->type = x->type;
  done(c->node);
  done(OPN(t, mul, x, c->node));
  fill(t, x, -1, 1);
  t->src[step->id].i[0] = (int32_t)irand(0, 1000000);
  t->src[seed->id].i[0] = (int32_t)(chance(0.2) ? 0 : irand(INT32_MIN, INT32_MAX));
  if (row0)
    t->src[row0->id].i[0] = (int32_t)irand(0, 100000);
}

static void gen_dropout_mask(Case *c) {
  Node *step = STEP(c->t, "step"), *seed = STEP(c->t, "seed"), *x = elem_operand(c->t, "x");
  mask_case(c, OP_dropout_mask, step, seed, x);
}

// The channel mask over [N,C] or [N,C,H,W] (and of rank 3).
static void gen_dropout2d_mask(Case *c) {
  Node *step = STEP(c->t, "step"), *seed = STEP(c->t, "seed");
  int64_t dim[4];
  int rank = rand_shape(dim, 2, 4, MAX_ELEMS);
  mask_case(c, OP_dropout2d_mask, step, seed, f32_shaped(c->t, "x", rank, dim));
}

// (target param or state, value).
static void gen_assign(Case *c) {
  Net *t = c->t;
  int64_t dim[4];
  int rank = rand_shape(dim, 0, 4, MAX_ELEMS);
  Node *p = source(t, chance(0.5) ? OP_param : OP_state, "p", DT_F32, rank, dim);
  Node *v = f32_like(t, "value", p);
  c->node = done(OPN(t, assign, p, v));
  fill(t, p, -1, 1);
  fill(t, v, -1, 1);
}

// --- Joining branches: concat and its gradient slice ------------------------------------

// Operands [N, C_i, rest...] of rank 2-4 (images and flat features), 2-5 of
// them, some of one channel, sometimes one value twice (a branch and itself).
static void gen_concat(Case *c) {
  Net *t = c->t;
  int64_t dim[4] = {irand(1, 5), 1, spatial(), spatial()};
  int rank = (int)irand(2, 4), nin = (int)irand(2, 5);
  Node *in[5];
  for (int i = 0; i < nin; i++) {
    if (i > 0 && chance(0.2)) {
      in[i] = in[irand(0, i - 1)];
      continue;
    }
    dim[1] = channels(12);
    in[i] = flt_shaped(t, xformat("x%d", i), rank, dim);
    fill(t, in[i], -1, 1);
    sprinkle(t, in[i], true);
  }
  c->node = done(op1(t, OP_concat, nin, in));
}

// The channels [start, start + size) of x [N, C, rest...].
static void gen_slice(Case *c) {
  Net *t = c->t;
  int64_t dim[4] = {irand(1, 5), channels(40), spatial(), spatial()};
  Node *x = flt_shaped(t, "x", (int)irand(2, 4), dim);
  c->node = OPN(t, slice, x);
  int64_t size = irand(1, dim[1]);
  node_set_int(c->node, "start", irand(0, dim[1] - size));
  node_set_int(c->node, "size", size);
  done(c->node);
  fill(t, x, -1, 1);
}

// --- Rows: softmax family -------------------------------------------------------------

// [N, C] logits, N 1..70, C 1..70; sometimes a huge logit (no overflow
// allowed) or a constant row.
static Node *logits(Net *t, const char *name, int64_t min_c) {
  int64_t n = batch(), ncls = features();
  if (ncls < min_c)
    ncls = min_c;
  Node *x = F32(t, name, n, ncls);
  fill(t, x, -5, 5);
  if (chance(0.2))
    val(t, x)[irand(0, count(x) - 1)] = (float)PICK(-80, 80);
  if (chance(0.1))
    for (int64_t j = 0; j < ncls; j++)
      val(t, x)[j] = 1.5f;
  return x;
}

static void gen_softmax(Case *c) {
  Node *x = logits(c->t, "x", 1);
  c->node = done(OPN(c->t, softmax, x));
  c->K = (double)x->type.dim[1];
}

// x - logsumexp(x): a difference of numbers as large as the logits.
static double largest(Net *t, Node *x) {
  double big = 0;
  for (int64_t i = 0; i < count(x); i++)
    big = fmax(big, fabs(val(t, x)[i]));
  return big;
}

static void gen_log_softmax(Case *c) {
  Node *x = logits(c->t, "x", 1);
  c->node = done(OPN(c->t, log_softmax, x));
  c->K = (double)x->type.dim[1];
  c->size = largest(c->t, x);
}

// (dy, y): y a softmax's (rows of positive values) or log_softmax's output (<= 0).
static void gen_softmax_grad_of(Case *c, OpKind op) {
  Net *t = c->t;
  Node *dy = logits(t, "dy", 1), *y = f32_like(t, "y", dy);
  c->node = done(op1(t, op, 2, (Node *[]){dy, y}));
  fill(t, dy, -1, 1);
  fill(t, y, op == OP_softmax_grad ? 0 : -6, op == OP_softmax_grad ? 1 : 0);
  c->K = (double)dy->type.dim[1];
  // y (dy - sum(dy y)) and dy - exp(y) sum(dy): differences of dy-sized
  // values, or of dy and a sum of dy.
  c->size = op == OP_softmax_grad ? 1 : walk(c->K, rms_uniform(-1, 1));
}

static void gen_softmax_grad(Case *c) { gen_softmax_grad_of(c, OP_softmax_grad); }
static void gen_log_softmax_grad(Case *c) { gen_softmax_grad_of(c, OP_log_softmax_grad); }

// --- Batch norm and channel statistics -----------------------------------------------------

// x[N,C,H,W] or, a third of the time, BatchNorm1d's [N,C] with a batch up
// to 64 (image false: of rank 2-4, as channel reductions allow), values
// around an offset so the mean matters; at least two values per channel. Batch norm
// divides by a channel's standard deviation, so a channel whose few values
// happen to lie close together turns the rounding of x - mean into large
// errors (in f32 as in PyTorch: no schedule's doing); such channels are
// redrawn until each one's deviation is at least a tenth of the draw's range.
static Node *channel_input(Net *t, const char *name, bool image) {
  for (;;) {
    int64_t dim[4] = {irand(1, 5), channels(40), spatial(), spatial()};
    int rank = image ? 4 : (int)irand(2, 4);
    if (image && chance(1.0 / 3))
      rank = 2, dim[0] = irand(2, 64);
    int64_t per = 1, total = 1;
    for (int d = 0; d < rank; d++)
      total *= dim[d], per *= d == 1 ? 1 : dim[d];
    if (per < 2 || total > 60000)
      continue;
    Node *x = flt_shaped(t, name, rank, dim);
    double off = uniform(-1, 1), sc = uniform(0.5, 2);
    int64_t nc = dim[1], inner = per / dim[0];
    float *v = val(t, x);
    for (int64_t c = 0; c < nc; c++)
      for (double dev = 0; dev < 0.1 * sc;) {
        double s = 0, ss = 0;
        for (int64_t o = 0; o < dim[0]; o++)
          for (int64_t k = 0; k < inner; k++) {
            float *e = &v[(o * nc + c) * inner + k];
            *e = (float)uniform(off - sc, off + sc);
            s += *e, ss += (double)*e * *e;
          }
        dev = sqrt(fmax(ss / per - (s / per) * (s / per), 0));
      }
    return x;
  }
}

static double per_channel_count(const Node *x) { return (double)count((Node *)x) / x->type.dim[1]; }

static Node *per_channel_input(Net *t, const char *name, const Node *x, double lo, double hi) {
  Node *p = F32(t, name, x->type.dim[1]);
  fill(t, p, lo, hi);
  return p;
}

static double bn_eps(void) { return (double)PICK(1, 100) * 1e-5; }

// x's statistics as the frontend computes them for a batch-norm layer.
static Node *stats_of(Net *t, Node *x) { return done(OPN(t, batch_stats, x)); }

static void gen_batchnorm2d(Case *c) {
  Net *t = c->t;
  Node *x = channel_input(t, "x", true);
  Node *g = per_channel_input(t, "gamma", x, 0.5, 1.5), *b = per_channel_input(t, "beta", x, -1, 1);
  c->node = OPN(t, batchnorm2d, x, g, b, stats_of(t, x));
  node_set_float(c->node, "eps", bn_eps());
  done(c->node);
  c->K = per_channel_count(x);
}

static void gen_batchnorm2d_infer(Case *c) {
  Net *t = c->t;
  Node *x = channel_input(t, "x", true);
  Node *g = per_channel_input(t, "gamma", x, 0.5, 1.5), *b = per_channel_input(t, "beta", x, -1, 1);
  Node *rm = per_channel_input(t, "running_mean", x, -1, 1);
  Node *rv = per_channel_input(t, "running_var", x, 0.1, 2);
  c->node = OPN(t, batchnorm2d_infer, x, g, b, rm, rv);
  node_set_float(c->node, "eps", bn_eps());
  done(c->node);
}

// [3, C]: the mean, the biased and the unbiased variance of each channel.
static void gen_batch_stats(Case *c) {
  Node *x = channel_input(c->t, "x", false);
  c->node = stats_of(c->t, x);
  c->K = per_channel_count(x);
}

// One row of a [R, C] tensor (a statistic for the running ones).
static void gen_row(Case *c) {
  Net *t = c->t;
  Node *s = F32(t, "stats", irand(1, 5), any_dim());
  c->node = OPN(t, row, s);
  node_set_int(c->node, "index", irand(0, s->type.dim[0] - 1));
  done(c->node);
  fill(t, s, -1, 1);
}

static void gen_bias_grad(Case *c) {
  Node *dy = channel_input(c->t, "dy", false);
  c->node = done(OPN(c->t, bias_grad, dy));
  c->K = per_channel_count(dy);
  c->size = walk(c->K, largest(c->t, dy));
}

// The largest 1 / sqrt(var + eps) over x's channels (biased variance).
static double max_rstd(Net *t, const Node *x, double eps) {
  int64_t nc = x->type.dim[1], per = count((Node *)x) / nc, inner = per / x->type.dim[0];
  double r = 0;
  for (int64_t c = 0; c < nc; c++) {
    double s = 0, ss = 0;
    for (int64_t o = 0; o < x->type.dim[0]; o++)
      for (int64_t k = 0; k < inner; k++) {
        double e = t->src[x->id].f[(o * nc + c) * inner + k];
        s += e, ss += e * e;
      }
    r = fmax(r, 1 / sqrt(fmax(ss / per - (s / per) * (s / per), 0) + eps));
  }
  return r;
}

// grad_gamma (dy, x, stats), and grad_input (dy, x, gamma, stats, dgamma,
// dbeta) with the two sums made as autodiff makes them.
static void gen_batchnorm2d_grad(Case *c, OpKind op) {
  Net *t = c->t;
  Node *x = channel_input(t, "x", true), *dy = flt_like(t, "dy", x);
  fill(t, dy, -1, 1);
  Node *g = per_channel_input(t, "gamma", x, 0.5, 1.5), *stats = stats_of(t, x);
  double eps = bn_eps();
  Node *dgamma = OPN(t, batchnorm2d_grad_gamma, dy, x, stats);
  node_set_float(dgamma, "eps", eps);
  done(dgamma);
  if (op == OP_batchnorm2d_grad_input) {
    Node *dbeta = done(OPN(t, bias_grad, dy));
    c->node = OPN(t, batchnorm2d_grad_input, dy, x, g, stats, dgamma, dbeta);
    node_set_float(c->node, "eps", eps);
    done(c->node);
  } else {
    c->node = dgamma;
  }
  c->K = per_channel_count(x);
  // grad_gamma: a sum of dy * xhat, xhat of rms 1. grad_input: gamma * rstd / M
  // * (M dy - sum dy - xhat sum dy xhat), three terms of up to M |dy| whose
  // difference can be far smaller (a channel of two values: about eps / var).
  c->size = op == OP_batchnorm2d_grad_gamma
                ? walk(c->K, rms_uniform(-1, 1))
                : 3 * 1.5 * max_rstd(t, x, node_float(c->node, "eps")); // gamma <= 1.5, |dy| <= 1
}

static void gen_batchnorm2d_grad_input(Case *c) {
  gen_batchnorm2d_grad(c, OP_batchnorm2d_grad_input);
}
static void gen_batchnorm2d_grad_gamma(Case *c) {
  gen_batchnorm2d_grad(c, OP_batchnorm2d_grad_gamma);
}

// --- Losses ------------------------------------------------------------------------------

// Cross-entropy: labels with some rows ignored (-100, at least one row
// kept), class weights (a constant, as the frontend makes them) or none,
// label smoothing or none; the gradient's dl.
static void gen_ce(Case *c, OpKind op, bool grad) {
  Net *t = c->t;
  Node *x = logits(t, "x", 2);
  int64_t n = x->type.dim[0], ncls = x->type.dim[1];
  if (op == OP_nll_loss) // log-probabilities
    fill(t, x, -6, 0);
  Node *y = I32(t, "label", n), *w = NULL, *dl = grad ? SCALAR(t, "dl") : NULL;
  double ignore = chance(0.5) ? uniform(0, 0.5) : 0;
  for (int64_t i = 0; i < n; i++)
    t->src[y->id].i[i] = chance(ignore) ? XC_IGNORE_INDEX : (int32_t)irand(0, ncls - 1);
  t->src[y->id].i[irand(0, n - 1)] = (int32_t)irand(0, ncls - 1);
  if (chance(0.5)) {
    w = OPN(t, const);
    double *wv = xcalloc(ncls, sizeof *wv);
    for (int64_t j = 0; j < ncls; j++)
      wv[j] = uniform(0.1, 3);
    node_set_floats(w, "value", wv, (int)ncls);
    w->type = type_make(DT_F32, DIMS(ncls));
    done(w);
  }
  OpKind k = grad ? (op == OP_nll_loss ? OP_nll_loss_grad : OP_softmax_cross_entropy_grad) : op;
  Node *in[4];
  int nin = 0;
  if (grad)
    in[nin++] = dl;
  in[nin++] = x, in[nin++] = y;
  if (w)
    in[nin++] = w;
  c->node = op1(t, k, nin, in);
  node_set_float(c->node, "label_smoothing", chance(0.5) ? uniform(0, 0.5) : 0);
  done(c->node);
  if (dl)
    val(t, dl)[0] = (float)uniform(-2, 2);
  c->K = (double)n * ncls;
  // A term is logsumexp - x[label]: a difference of numbers as large as the
  // logits. A gradient element is dl * (softmax - target) * weight / (kept
  // rows' weights), weights at most 3.
  double kept = 0;
  for (int64_t i = 0; i < n; i++)
    kept += t->src[y->id].i[i] != XC_IGNORE_INDEX;
  c->size = grad ? fabs(val(t, dl)[0]) * 3 / kept : fmax(1, largest(t, x));
}

static void gen_nll_loss(Case *c) { gen_ce(c, OP_nll_loss, false); }
static void gen_nll_loss_grad(Case *c) { gen_ce(c, OP_nll_loss, true); }
static void gen_softmax_cross_entropy(Case *c) { gen_ce(c, OP_softmax_cross_entropy, false); }
static void gen_softmax_cross_entropy_grad(Case *c) { gen_ce(c, OP_softmax_cross_entropy, true); }

// BCE: inputs of rank 0-3; hard or soft targets, some ignored (negative;
// at least one kept); pos_weight none, one, or one per last dimension.
static void gen_bce_of(Case *c, OpKind op, bool grad) {
  Net *t = c->t;
  int64_t dim[3];
  int rank = rand_shape(dim, 0, 3, 5000);
  Node *x = f32_shaped(t, "x", rank, dim), *tg = f32_like(t, "target", x);
  Node *dl = grad ? SCALAR(t, "dl") : NULL;
  bool logits_in = op == OP_sigmoid_bce;
  if (logits_in) {
    fill(t, x, -8, 8);
    if (chance(0.2))
      val(t, x)[irand(0, count(x) - 1)] = (float)PICK(-40, 40);
  } else {
    fill(t, x, 0.01, 0.99);
  }
  bool soft = chance(0.3);
  double ignore = chance(0.4) ? uniform(0, 0.5) : 0;
  for (int64_t i = 0; i < count(tg); i++)
    val(t, tg)[i] = chance(ignore) ? -1.0f : soft ? (float)uniform(0, 1) : (float)irand(0, 1);
  val(t, tg)[irand(0, count(tg) - 1)] = (float)irand(0, 1);
  int64_t last = rank ? dim[rank - 1] : 1;
  int npw = (int)PICK(0, 1, last);
  double *pw = xcalloc(npw + 1, sizeof *pw);
  for (int i = 0; i < npw; i++)
    pw[i] = uniform(0.2, 4);
  OpKind k = grad ? (logits_in ? OP_sigmoid_bce_grad : OP_bce_grad) : op;
  c->node = grad ? op1(t, k, 3, (Node *[]){dl, x, tg}) : op1(t, k, 2, (Node *[]){x, tg});
  node_set_floats(c->node, "pos_weight", pw, npw);
  done(c->node);
  if (dl)
    val(t, dl)[0] = (float)uniform(-2, 2);
  c->K = (double)count(x);
  // A term of BCEWithLogitsLoss is (1 - y) x + w (log(1 + e^-|x|) + max(-x, 0)):
  // differences of numbers as large as the logits, and a log of 1 + a small
  // number, rounded to eps absolute however small the result. A gradient
  // element is dl * w * (p - y) / (kept elements), over p (1 - p) for bce.
  double kept = 0, wmax = 1;
  for (int64_t i = 0; i < count(x); i++)
    kept += val(t, tg)[i] >= 0;
  for (int i = 0; i < npw; i++)
    wmax = fmax(wmax, pw[i]);
  c->size =
      grad ? fabs(val(t, dl)[0]) * wmax * (logits_in ? 1 : 100) / kept : fmax(1, largest(t, x));
}

static void gen_bce(Case *c) { gen_bce_of(c, OP_bce, false); }
static void gen_bce_grad(Case *c) { gen_bce_of(c, OP_bce, true); }
static void gen_sigmoid_bce(Case *c) { gen_bce_of(c, OP_sigmoid_bce, false); }
static void gen_sigmoid_bce_grad(Case *c) { gen_bce_of(c, OP_sigmoid_bce, true); }

static void gen_l2norm(Case *c) {
  Node *x = elem_operand(c->t, "x");
  c->node = done(OPN(c->t, l2norm, x));
  if (chance(0.8)) // else all zeros
    fill(c->t, x, -1, 1);
  c->K = (double)count(x);
}

// (dl, x, norm): the norm of x, or 0 (where the subgradient is 0).
static void gen_l2norm_grad(Case *c) {
  Net *t = c->t;
  Node *x = elem_operand(t, "x"), *dl = SCALAR(t, "dl"), *norm = SCALAR(t, "norm");
  c->node = done(OPN(t, l2norm_grad, dl, x, norm));
  fill(t, x, -1, 1);
  double s = 0;
  for (int64_t i = 0; i < count(x); i++)
    s += (double)val(t, x)[i] * val(t, x)[i];
  val(t, norm)[0] = chance(0.8) ? (float)sqrt(s) : 0.0f;
  val(t, dl)[0] = (float)uniform(-1, 1);
}

// --- Optimizers ------------------------------------------------------------------------

// A parameter-shaped operand; the first optimizer step or a later one.
static int32_t opt_step(void) { return (int32_t)(chance(0.3) ? 1 : irand(2, 5000)); }

static double weight_decay(void) { return chance(0.5) ? 0 : uniform(1e-5, 1e-1); }

// The updates mix operands of size <= 1 (a difference can be much smaller).
static void gen_sgd_buf(Case *c) {
  Net *t = c->t;
  c->size = 1;
  Node *g = elem_operand(t, "g"), *buf = f32_like(t, "buf", g), *p = f32_like(t, "p", g);
  Node *st = STEP(t, "step"), *mom = chance(0.3) ? SCALAR(t, "momentum") : NULL;
  c->node = mom ? OPN(t, sgd_buf, g, buf, p, st, mom) : OPN(t, sgd_buf, g, buf, p, st);
  double m = uniform(0.5, 0.99);
  node_set_float(c->node, "momentum", mom ? 0 : m);
  node_set_float(c->node, "dampening", chance(0.5) ? 0 : uniform(0, 0.5));
  node_set_float(c->node, "weight_decay", weight_decay());
  done(c->node);
  fill(t, g, -1, 1);
  fill(t, buf, -0.5, 0.5);
  fill(t, p, -1, 1);
  t->src[st->id].i[0] = opt_step();
  if (mom)
    val(t, mom)[0] = (float)m;
}

static void gen_sgd_update(Case *c) {
  Net *t = c->t;
  c->size = 1;
  Node *p = elem_operand(t, "p"), *g = f32_like(t, "g", p), *lr = SCALAR(t, "lr");
  int form = (int)irand(0, 2); // 0: no momentum, 1: buffer, 2: buffer and %momentum
  Node *buf = form ? f32_like(t, "buf", p) : NULL, *mom = form == 2 ? SCALAR(t, "momentum") : NULL;
  double m = uniform(0.5, 0.99);
  Node *in[5] = {p, g, lr, buf, mom};
  c->node = op1(t, OP_sgd_update, 3 + (form > 0) + (form > 1), in);
  node_set_float(c->node, "momentum", form == 1 ? m : 0);
  node_set_float(c->node, "weight_decay", weight_decay());
  node_set_int(c->node, "nesterov", form > 0 && chance(0.5));
  done(c->node);
  fill(t, p, -1, 1);
  fill(t, g, -1, 1);
  if (buf)
    fill(t, buf, -0.5, 0.5);
  if (mom)
    val(t, mom)[0] = (float)m;
  val(t, lr)[0] = (float)uniform(1e-4, 0.5);
}

static void gen_adam_moment(Case *c, OpKind op) {
  Net *t = c->t;
  c->size = 1;
  Node *g = elem_operand(t, "g"), *m = f32_like(t, "m", g), *p = f32_like(t, "p", g);
  Node *beta = op == OP_adam_moment1 && chance(0.3) ? SCALAR(t, "momentum") : NULL;
  c->node = op1(t, op, beta ? 4 : 3, (Node *[]){g, m, p, beta});
  double b = op == OP_adam_moment1 ? uniform(0.5, 0.99) : uniform(0.9, 0.9999);
  node_set_float(c->node, op == OP_adam_moment1 ? "beta1" : "beta2", beta ? 0.3 : b);
  node_set_float(c->node, "weight_decay", weight_decay());
  done(c->node);
  fill(t, g, -1, 1);
  fill(t, m, op == OP_adam_moment1 ? -0.1 : 0, 0.1);
  fill(t, p, -1, 1);
  if (beta)
    val(t, beta)[0] = (float)b;
}

static void gen_adam_moment1(Case *c) { gen_adam_moment(c, OP_adam_moment1); }
static void gen_adam_moment2(Case *c) { gen_adam_moment(c, OP_adam_moment2); }

static void gen_adam_update(Case *c) {
  Net *t = c->t;
  c->size = 1;
  Node *p = elem_operand(t, "p"), *m = f32_like(t, "m", p), *v = f32_like(t, "v", p);
  Node *lr = SCALAR(t, "lr"), *st = STEP(t, "step");
  Node *beta = chance(0.3) ? SCALAR(t, "momentum") : NULL;
  c->node = op1(t, OP_adam_update, beta ? 6 : 5, (Node *[]){p, m, v, lr, st, beta});
  double b1 = uniform(0.5, 0.99);
  node_set_float(c->node, "beta1", beta ? 0.3 : b1);
  node_set_float(c->node, "beta2", uniform(0.9, 0.9999));
  node_set_float(c->node, "eps", (double)PICK(1, 1000) * 1e-8);
  node_set_float(c->node, "weight_decay", weight_decay());
  node_set_int(c->node, "decoupled", chance(0.5));
  done(c->node);
  fill(t, p, -1, 1);
  fill(t, m, -0.1, 0.1);
  fill(t, v, 0, 0.01);
  if (chance(0.3))
    val(t, v)[irand(0, count(v) - 1)] = 0; // only eps in the denominator
  val(t, lr)[0] = (float)uniform(1e-5, 1e-2);
  t->src[st->id].i[0] = opt_step();
  if (beta)
    val(t, beta)[0] = (float)b1;
}

// GradScaler's unscale: gradients of any size, some not finite, times
// 1 / scale for a scale of a power of two or not.
static void gen_unscale(Case *c) {
  Net *t = c->t;
  Node *g = elem_operand(t, "g"), *inv = SCALAR(t, "inv_scale");
  c->node = done(OPN(t, unscale, g, inv));
  for (int64_t i = 0; i < count(g); i++)
    val(t, g)[i] = (float)(uniform(-1, 1) * ldexp(1, (int)irand(-10, 30)));
  sprinkle(t, g, true);
  double scale = chance(0.5) ? ldexp(1, (int)irand(-5, 24)) : uniform(0.1, 1e5);
  val(t, inv)[0] = (float)(1.0 / scale);
}

//
// What the sweep must reach with the default seed and counts: the schedule's
// transformations, on the ops that have them (see schedule_features). A
// change to the passes or the generators that loses one fails here.
//

static const struct {
  OpKind op;
  const char *features[4];
} must_reach[] = {
    {OP_conv2d, {"tiled", "padded", "parallel"}},
    {OP_conv2d_grad_input, {"tiled", "padded", "parallel"}},
    {OP_conv2d_grad_weight, {"tiled", "rfactor", "padded", "parallel"}},
    {OP_linear, {"tiled", "transposed"}},
    {OP_linear_grad_input, {"tiled", "rfactor"}},
    {OP_linear_grad_weight, {"tiled", "rfactor", "parallel"}},
    {OP_maxpool2d_grad, {"vector"}},
    {OP_softmax_cross_entropy, {"split sum"}},
    {OP_batchnorm2d_grad_input, {"split sum", "channel-blocked"}},
    {OP_batchnorm2d, {"channel-blocked"}},
    {OP_bias_grad, {"channel-blocked"}},
};

//
// The table: every lowered op's generator and how many cases it runs by
// default (contractions, whose schedules have the most edges, the most).
//

typedef void GenFn(Case *c);

// cases: f32 cases; cases16: then as many in bf16 and f16 by turns (ops that
// autocast runs in 16 bits).
static const struct {
  GenFn *gen;
  int cases, cases16;
} gens[OP_COUNT] = {
    [OP_conv2d] = {gen_conv2d, 24, 8},
    [OP_conv2d_grad_input] = {gen_conv2d_grad_input, 24, 8},
    [OP_conv2d_grad_weight] = {gen_conv2d_grad_weight, 24, 8},
    [OP_linear] = {gen_linear, 16, 6},
    [OP_linear_grad_input] = {gen_linear_grad_input, 16, 6},
    [OP_linear_grad_weight] = {gen_linear_grad_weight, 16, 6},
    [OP_maxpool2d] = {gen_maxpool2d, 8, 4},
    [OP_avgpool2d] = {gen_avgpool2d, 8, 4},
    [OP_maxpool2d_grad] = {gen_maxpool2d_grad, 8, 4},
    [OP_avgpool2d_grad] = {gen_avgpool2d_grad, 8, 4},
    [OP_relu] = {gen_relu, 4, 2},
    [OP_sigmoid] = {gen_sigmoid, 4, 2},
    [OP_tanh] = {gen_tanh, 4, 2},
    [OP_leaky_relu] = {gen_leaky_relu, 4, 2},
    [OP_gelu] = {gen_gelu, 6, 2},
    [OP_add] = {gen_add, 3, 2},
    [OP_mul] = {gen_mul, 3, 2},
    [OP_scale] = {gen_scale, 3, 2},
    [OP_ema] = {gen_ema, 3},
    [OP_relu_grad] = {gen_relu_grad, 3, 2},
    [OP_sigmoid_grad] = {gen_sigmoid_grad, 3, 2},
    [OP_tanh_grad] = {gen_tanh_grad, 3, 2},
    [OP_leaky_relu_grad] = {gen_leaky_relu_grad, 3, 2},
    [OP_gelu_grad] = {gen_gelu_grad, 6, 2},
    [OP_reshape] = {gen_reshape, 3, 2},
    [OP_concat] = {gen_concat, 6, 4},
    [OP_slice] = {gen_slice, 4, 2},
    [OP_cast] = {gen_cast, 6, 4},
    [OP_dropout_mask] = {gen_dropout_mask, 4},
    [OP_dropout2d_mask] = {gen_dropout2d_mask, 4},
    [OP_assign] = {gen_assign, 3},
    [OP_softmax] = {gen_softmax, 4},
    [OP_log_softmax] = {gen_log_softmax, 4},
    [OP_softmax_grad] = {gen_softmax_grad, 4},
    [OP_log_softmax_grad] = {gen_log_softmax_grad, 4},
    [OP_batchnorm2d] = {gen_batchnorm2d, 5, 2},
    [OP_batchnorm2d_infer] = {gen_batchnorm2d_infer, 4, 2},
    [OP_batch_stats] = {gen_batch_stats, 4, 2},
    [OP_row] = {gen_row, 3},
    [OP_bias_grad] = {gen_bias_grad, 4, 2},
    [OP_batchnorm2d_grad_input] = {gen_batchnorm2d_grad_input, 5, 2},
    [OP_batchnorm2d_grad_gamma] = {gen_batchnorm2d_grad_gamma, 5, 2},
    [OP_nll_loss] = {gen_nll_loss, 4},
    [OP_nll_loss_grad] = {gen_nll_loss_grad, 4},
    [OP_softmax_cross_entropy] = {gen_softmax_cross_entropy, 4},
    [OP_softmax_cross_entropy_grad] = {gen_softmax_cross_entropy_grad, 4},
    [OP_bce] = {gen_bce, 4},
    [OP_bce_grad] = {gen_bce_grad, 4},
    [OP_sigmoid_bce] = {gen_sigmoid_bce, 4},
    [OP_sigmoid_bce_grad] = {gen_sigmoid_bce_grad, 4},
    [OP_l2norm] = {gen_l2norm, 3},
    [OP_l2norm_grad] = {gen_l2norm_grad, 3},
    [OP_sgd_buf] = {gen_sgd_buf, 4},
    [OP_sgd_update] = {gen_sgd_update, 4},
    [OP_adam_moment1] = {gen_adam_moment1, 4},
    [OP_adam_moment2] = {gen_adam_moment2, 4},
    [OP_adam_update] = {gen_adam_update, 4},
    [OP_unscale] = {gen_unscale, 4},
};

//
// Tolerances
//
// Both programs compute in f32; eval_graph sums in double. Each addition of
// a K-term sum rounds by at most half an ulp of the partial sum; with
// random-signed terms those errors add like a random walk, to about
// sqrt(K) * eps * (size of a partial sum), and partial sums are about the
// size of the result. So every value of an output is compared as
//     |got - want| <= TOL_SCALE * (sqrt(K) + TOL_ULPS) * FLT_EPSILON * max(max|want|, size)
// over its tensor: K the op's reduction length (conv2d C*KH*KW, its input
// gradient O*KH*KW, its weight gradient N*OH*OW, linear K, softmax and
// channel statistics their row or channel, losses every term: see each
// generator); TOL_ULPS the few roundings of the formula around the sum (exp,
// log, a division, a square root); TOL_SCALE the margin for the largest of
// thousands of outputs (a random walk's 5 sigma) and for normalising by the
// largest value rather than each value's own. `size` is for formulas whose
// result can be much smaller than what they compute it from -- a loss term
// log(1 + e^-|x|) - ..., an optimizer's difference of moments -- where the
// rounding is relative to those (each generator says why). A missing,
// repeated or misplaced term of a random-signed sum moves an output by about
// a term, max|want| / sqrt(K): 15 times this or more for every K here
// (<= 6 * 10^4). In a sum of same-signed terms (l2norm, a variance) one
// term stands out only among fewer than ~1,000, but what a schedule gets
// wrong -- a lane, an edge tile, a padded border -- is many terms at once.
// Sweeps of 60 cases per op under three seeds (8,500 cases) peak at 6% of it.
//
// The scheduled program against the plain one: bit-identical unless the
// schedule split a sum into vector lanes (tile's rfactor, vectorize's sums:
// each lane sums every 8th term, the lanes added at the end), which the
// test finds in the -O3 loops (schedule_features). Everything else keeps
// each value's operations and their order: a register tile accumulates in
// the plain nest's order, vectorized lanes are the plain iterations,
// parallelize splits only disjoint writes, pad adds exact zeros and
// fuse-epilogue is off in this entry. Split sums get the tolerance above.
// Integer outputs are compared exactly.

enum { TOL_SCALE = 8, TOL_ULPS = 4 };

static double tolerance(double K) { return TOL_SCALE * (sqrt(K) + TOL_ULPS) * FLT_EPSILON; }

//
// Running a case
//

// "[a,b,c]": flat index i of type t as coordinates.
static char *coords(const Type *t, int64_t i) {
  int64_t idx[8];
  for (int d = t->rank - 1; d >= 0; d--) {
    idx[d] = i % t->dim[d];
    i /= t->dim[d];
  }
  char *s = xstrdup("[");
  for (int d = 0; d < t->rank; d++)
    s = xformat("%s%s%lld", s, d ? "," : "", (long long)idx[d]);
  return xformat("%s]", s);
}

static bool same_float(float a, float b) {
  return (isnan(a) && isnan(b)) || !memcmp(&a, &b, sizeof a);
}

// Compares got with want: exactly (tol < 0: bit for bit, any NaN equal to
// any NaN), or within tol * max(max|want|, size); returns the worst error as a fraction
// of what is allowed (> 1 fails; INFINITY for a NaN or infinity in one
// only) and describes the worst element in *why.
static double compare(const Type *type, const float *got, const float *want, double tol,
                      double size, char **why) {
  int64_t n = type_numel(type), worst = -1;
  double scale = fmax(size, 1e-6), ratio = 0;
  for (int64_t i = 0; i < n; i++)
    if (isfinite(want[i]))
      scale = fmax(scale, fabs(want[i]));
  for (int64_t i = 0; i < n; i++) {
    double r;
    if (tol < 0 || !isfinite(want[i]) || !isfinite(got[i]))
      r = same_float(got[i], want[i]) ? 0 : INFINITY;
    else
      r = fabs((double)got[i] - want[i]) / (tol * scale);
    if (r > ratio || worst < 0) {
      ratio = r;
      worst = i;
    }
  }
  if (why && worst >= 0)
    *why = xformat("at %s got %.9g want %.9g (|diff| %.3g, allowed %s)", coords(type, worst),
                   got[worst], want[worst], fabs((double)got[worst] - want[worst]),
                   tol < 0 ? "none" : xformat("%.3g = %.3g x %.3g", tol * scale, tol, scale));
  return ratio;
}

static bool computed(const Node *n) { return !(op_info(n->op)->flags & OPF_SOURCE); }

// A 16-bit value's bits, as the generated code stores it, and back.
static uint16_t bits16(float x, DType dt) {
  x = round_to_dtype(x, dt);
  if (dt == DT_F16) {
    _Float16 h = (_Float16)x;
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
  }
  uint32_t u;
  memcpy(&u, &x, 4);
  return (uint16_t)(u >> 16);
}

static float float16(uint16_t u, DType dt) {
  if (dt == DT_F16) {
    _Float16 h;
    memcpy(&h, &u, 2);
    return (float)h;
  }
  uint32_t w = (uint32_t)u << 16;
  float x;
  memcpy(&x, &w, 4);
  return x;
}

static bool is_source(const Node *n) {
  return n->op == OP_input || n->op == OP_param || n->op == OP_state;
}

// Runs fn on slots holding the case's sources; every other slot starts as
// NaN (floats) or a pattern (i32) so a skipped element shows. A 16-bit
// node's slot holds its 16-bit values; got[] has them as floats. Fails if
// the code wrote into a source.
static Tensor *run_fn(void (*fn)(void **), Net *t, char **err) {
  Graph *g = t->g;
  void **slots = xcalloc(g->nnodes, sizeof *slots);
  Tensor *got = xcalloc(g->nnodes, sizeof *got);
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    DType dt = n->type.dtype;
    got[i] = tensor_new(n->type);
    size_t bytes = type_numel(&n->type) * 4;
    if (dtype_is_16bit(dt)) {
      uint16_t *h = xcalloc(count(n) + 1, 2);
      for (int64_t j = 0; j < count(n); j++)
        h[j] = bits16(is_source(n) ? t->src[i].f[j] : NAN, dt);
      slots[i] = h;
      continue;
    }
    void *p = dt == DT_F32 ? (void *)got[i].f : (void *)got[i].i;
    if (is_source(n))
      memcpy(p, dt == DT_F32 ? (void *)t->src[i].f : (void *)t->src[i].i, bytes);
    else if (dt == DT_F32)
      for (int64_t j = 0; j < count(n); j++)
        got[i].f[j] = NAN;
    else
      memset(p, 0xA5, bytes);
    slots[i] = p;
  }
  fn(slots);
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    DType dt = n->type.dtype;
    bool changed = false;
    if (dtype_is_16bit(dt)) {
      uint16_t *h = slots[i];
      for (int64_t j = 0; j < count(n); j++) {
        got[i].f[j] = float16(h[j], dt);
        changed |= is_source(n) && h[j] != bits16(t->src[i].f[j], dt);
      }
      free(h);
    } else if (is_source(n)) {
      void *p = dt == DT_F32 ? (void *)got[i].f : (void *)got[i].i;
      changed = memcmp(p, dt == DT_F32 ? (void *)t->src[i].f : (void *)t->src[i].i,
                       type_numel(&n->type) * 4);
    }
    if (changed)
      *err = xformat("%s  the code wrote into source %%%s\n", *err, n->name);
  }
  free(slots);
  return got;
}

// What the -O3 schedule did to a case, so a sweep can show (and the test
// insist) that the random shapes reach each transformation, and whether a
// sum was reordered. Found from the loops, not the passes' names: a tile
// multiply-adds into a [rows][rows][lanes] local array; a sum split
// into vector lanes (tile's rfactor, vectorize's sums) ends by adding lanes
// of a local array together; channel-block's blocks loop over the channels
// of a block inside the loop over blocks (both of role c).
enum {
  S_TILED,
  S_RFACTOR,
  S_SPLIT_SUM,
  S_PADDED,
  S_TRANSPOSED,
  S_VECTOR,
  S_PARALLEL,
  S_CHANNEL_BLOCKED,
  S_COUNT
};
static const char *const feature_name[S_COUNT] = {
    "tiled", "rfactor", "split sum", "padded", "transposed", "vector", "parallel", "channel-blocked"};

// e is a load of a local array, or a sum of such loads of one array.
static bool lane_sum(const LExpr *e, const LBuf **buf) {
  if (e->kind == LX_LOAD && e->buf->storage == LB_LOCAL && e->buf->rank > 0) {
    bool same = !*buf || *buf == e->buf;
    *buf = e->buf;
    return same;
  }
  return e->kind == LX_ADD && lane_sum(e->a, buf) && lane_sum(e->b, buf);
}

static bool adds_lanes(const LExpr *e) {
  if (!e)
    return false;
  const LBuf *buf = NULL;
  if (e->kind == LX_ADD && lane_sum(e, &buf))
    return true;
  return adds_lanes(e->a) || adds_lanes(e->b) || adds_lanes(e->c);
}

typedef struct {
  bool tile, lanes, vector, parallel, blocked;
} KernelShape;

static bool over_channels(const LStmt *s) {
  return s->kind == LS_LOOP && s->role && !strcmp(s->role, "c");
}

static void scan(const LStmt *s, KernelShape *ks, bool in_channels) {
  if (s->kind == LS_LOOP) {
    ks->vector |= (s->flags & LF_VECTOR) != 0;
    ks->parallel |= (s->flags & LF_PARALLEL) != 0;
    ks->blocked |= in_channels && over_channels(s);
  }
  if (s->kind == LS_STORE) {
    ks->tile |= s->buf->storage == LB_LOCAL && s->buf->rank == 3 && s->value->kind == LX_FMA;
    ks->lanes |= adds_lanes(s->value);
  }
  for (int i = 0; i < s->nbody; i++)
    scan(s->body[i], ks, in_channels || over_channels(s));
}

static void schedule_features(Graph *g, bool *has) {
  LProgram *p = lower_slots(g, "inspect");
  p->opt_level = 3;
  int n;
  const char *const *names = loop_pipeline(3, &n);
  run_loop_pipeline(p, names, n, NULL);
  LFunc *f = p->funcs[0];
  for (int i = 0; i < f->nkernels; i++) {
    const LKernel *k = f->kernels[i];
    KernelShape ks = {0};
    for (int j = 0; j < k->nbody; j++)
      scan(k->body[j], &ks, false);
    has[S_PADDED] |= !strcmp(k->op, "pad");
    has[S_TRANSPOSED] |= !strcmp(k->op, "transpose");
    has[S_TILED] |= ks.tile;
    has[S_RFACTOR] |= ks.tile && ks.lanes;
    has[S_SPLIT_SUM] |= ks.lanes;
    has[S_VECTOR] |= ks.vector;
    has[S_PARALLEL] |= ks.parallel;
    has[S_CHANNEL_BLOCKED] |= ks.blocked;
  }
}

static char *graph_text(Graph *g) {
  char *buf;
  size_t len;
  FILE *f = open_memstream(&buf, &len);
  print_graph(f, g);
  fclose(f);
  return buf;
}

// What a crash or an internal error in the compiler prints: the case under
// way and its graph (written by a signal handler: prepared beforehand).
static char *running;

static void say_running(void) {
  if (running && write(2, running, strlen(running)) < 0)
    running = NULL;
}

static void on_signal(int sig) {
  say_running();
  signal(sig, SIG_DFL);
  raise(sig);
}

static char *repro(const char *op, int index) {
  return xformat("XENTCC_SCHED_SEED=0x%016llx XENTCC_SCHED_OP=%s XENTCC_SCHED_CASE=%d",
                 (unsigned long long)cfg.seed, op, index);
}

static void set_running(const char *what, const char *op, int index, Graph *g) {
  running = xformat("test_schedules: stopped while %s case %s, whose graph is:\n%s\n", what,
                    repro(op, index), graph_text(g));
}

// Compares every computed node of case c: plain and scheduled against the
// evaluator, and against each other. Returns false (having printed the case)
// on a mismatch.
static bool check_case(Case *c, const char *op, int index, void (*plain)(void **),
                       void (*sched)(void **), double *worst, int *features) {
  Net *t = c->t;
  Graph *g = t->g;
  char *err = xstrdup("");
  set_running("running", op, index, g);
  Tensor *want = eval_graph(g, t->src);
  Tensor *p = run_fn(plain, t, &err), *s = run_fn(sched, t, &err);
  running = NULL;
  double tol = tolerance(c->K);
  bool has[S_COUNT] = {0};
  schedule_features(g, has);
  bool exact = !has[S_SPLIT_SUM];
  char *worst_why = "";
  *worst = 0;
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    if (!computed(n))
      continue;
    const char *label =
        xformat("%%%s (%s)", n->name ? n->name : xformat("node %d", i), op_info(n->op)->name);
    if (n->type.dtype == DT_I32) { // integer outputs: exactly
      size_t bytes = count(n) * 4;
      if (memcmp(p[i].i, want[i].i, bytes) || memcmp(s[i].i, want[i].i, bytes))
        err = xformat("%s  %s: integer values differ\n", err, label);
      continue;
    }
    // A 16-bit result is rounded once more: the sums behind it may land on
    // either side of a rounding boundary, a unit in its last place apart
    // (2^-7 of the value in bf16, 2^-10 in f16).
    double tol_n = tol + (n->type.dtype == DT_BF16 ? 0x1p-7 : n->type.dtype == DT_F16 ? 0x1p-10 : 0);
    const struct {
      const char *what;
      const float *got, *want;
      double tol;
    } cmp[] = {
        {"-O0 (plain) vs eval_graph", p[i].f, want[i].f, tol_n},
        {"-O3 (scheduled) vs eval_graph", s[i].f, want[i].f, tol_n},
        {"-O3 vs -O0", s[i].f, p[i].f, exact ? -1 : tol_n},
    };
    for (int k = 0; k < 3; k++) {
      char *why = NULL;
      double r = compare(&n->type, cmp[k].got, cmp[k].want, cmp[k].tol, c->size, &why);
      if (r > *worst && isfinite(r)) {
        *worst = r;
        worst_why = xformat("%s, %s: %s", label, cmp[k].what, why);
      }
      if (r > 1) {
        *worst = r;
        err = xformat("%s  %s, %s: %s\n", err, label, cmp[k].what, why);
      }
    }
  }
  char *did = xstrdup("");
  for (int f = 0; f < S_COUNT; f++)
    if (has[f]) {
      features[f]++;
      did = xformat("%s %s", did, feature_name[f]);
    }
  if (cfg.verbose)
    fprintf(stderr, "%s case %d:%s; K %g, worst %.3f of the tolerance: %s\n", op, index, did, c->K,
            *worst, worst_why);
  if (!*err)
    return true;
  fprintf(stderr,
          "test_schedules: %s case %d differs (tolerance %.3g, K %g%s)\n%s"
          "to reproduce: %s build/bin/test_schedules\nthe case's graph:\n%s\n",
          op, index, tol, c->K, exact ? ", -O3 vs -O0 bit for bit: no split sum" : "", err,
          repro(op, index), graph_text(g));
  return false;
}

// Compiles g at -O`opt` into obj, defining FN.
static void compile(Graph *g, const char *fn, int opt, const char *obj) {
  CodegenOptions o = {.opt_level = opt, .cpu = "native"};
  codegen_function_object(g, fn, obj, &o);
}

START_TEST(op_schedules) {
  OpKind op = (OpKind)_i;
  // Every other op is lowered (test_ops.c checks each has its rule).
  if (op_info(op)->flags & OPF_SOURCE)
    return;
  const char *name = op_info(op)->name;
  ck_assert_msg(gens[op].gen,
                "op %s is lowered but tests/unit/test_schedules.c has no random-case generator "
                "for it: add one to gens[]",
                name);
  if (cfg.op && strcmp(cfg.op, name))
    return;
  int n32 = cfg.cases > 0 ? cfg.cases : gens[op].cases;
  int n = n32 + (cfg.cases > 0 && gens[op].cases16 ? cfg.cases : gens[op].cases16);
  if (cfg.only >= n)
    n = cfg.only + 1;
  Case **cases = xcalloc(n, sizeof *cases);
  const char **objs = xcalloc(2 * n, sizeof *objs);
  int nobj = 0;
  for (int i = 0; i < n; i++) {
    if (cfg.only >= 0 && i != cfg.only)
      continue;
    seed_case(name, i);
    case_dt = i < n32 ? DT_F32 : (i - n32) % 2 ? DT_F16 : DT_BF16;
    cases[i] = new_case();
    gens[op].gen(cases[i]);
    // 16-bit sources hold what they round to, as the code's slots do.
    Net *t = cases[i]->t;
    for (int j = 0; j < t->g->nnodes; j++)
      if (is_source(t->g->node[j]) && dtype_is_16bit(t->g->node[j]->type.dtype))
        for (int64_t e = 0; e < count(t->g->node[j]); e++)
          t->src[j].f[e] = round_to_dtype(t->src[j].f[e], t->g->node[j]->type.dtype);
    ck_assert_msg(cases[i]->node && cases[i]->node->op == op, "%s: its generator made no %s node",
                  name, name);
    set_running("compiling", name, i, cases[i]->t->g);
    for (int opt = 0; opt <= 3; opt += 3) {
      objs[nobj] = xformat("%s/%s.%d.O%d.o", tmpdir, name, i, opt);
      compile(cases[i]->t->g, xformat("case%d_O%d", i, opt), opt, objs[nobj]);
      nobj++;
    }
    running = NULL;
  }
  if (!nobj)
    return;
  void *h = load_objects(objs, nobj);
  int failed = 0, ran = 0, features[S_COUNT] = {0};
  double worst = 0;
  for (int i = 0; i < n; i++) {
    if (!cases[i])
      continue;
    void (*plain)(void **) = (void (*)(void **))dlsym(h, xformat("case%d_O0", i));
    void (*sched)(void **) = (void (*)(void **))dlsym(h, xformat("case%d_O3", i));
    ck_assert_msg(plain && sched, "dlsym: %s", dlerror());
    double w;
    failed += !check_case(cases[i], name, i, plain, sched, &w, features);
    worst = fmax(worst, w);
    ran++;
  }
  dlclose(h);
  // The default sweep covers the schedule's transformations (must_reach).
  bool full =
      cfg.seed == DEFAULT_SEED && cfg.only < 0 && (!cfg.cases || cfg.cases >= gens[op].cases);
  for (size_t m = 0; m < sizeof must_reach / sizeof *must_reach; m++)
    for (int j = 0; must_reach[m].op == op && j < 4 && must_reach[m].features[j]; j++) {
      int f = 0;
      while (f < S_COUNT && strcmp(feature_name[f], must_reach[m].features[j]))
        f++;
      ck_assert_msg(f < S_COUNT, "must_reach: no feature '%s'", must_reach[m].features[j]);
      if (!features[f] && full)
        ck_abort_msg("%s: no case of the default sweep was %s at -O3: the random cases no longer "
                     "reach that transformation (change the generator or must_reach)",
                     name, feature_name[f]);
    }
  if (cfg.verbose) {
    fprintf(stderr, "%s: %d cases,", name, ran);
    for (int f = 0; f < S_COUNT; f++)
      fprintf(stderr, " %s %d", feature_name[f], features[f]);
    fputc('\n', stderr);
  }
  ck_assert_msg(!failed, "%s: %d of %d random cases differ (seed 0x%016llx; see stderr)", name,
                failed, ran, (unsigned long long)cfg.seed);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("schedules");
  TCase *tc = tcase_create("ops");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 600);
  tcase_add_loop_test(tc, op_schedules, 0, OP_COUNT);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  read_env();
  fprintf(stderr, "test_schedules: seed 0x%016llx (XENTCC_SCHED_SEED)\n",
          (unsigned long long)cfg.seed);
  atexit(say_running);
  signal(SIGSEGV, on_signal);
  signal(SIGBUS, on_signal);
  signal(SIGFPE, on_signal);
  signal(SIGILL, on_signal);
  signal(SIGABRT, on_signal);
  return run_suite(suite());
}

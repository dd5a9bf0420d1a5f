// Differential tests of code generation: small graphs (one op, or a few)
// compiled with codegen_function_object into a shared object, loaded with
// dlopen, run on random inputs and compared node by node with the reference
// evaluator (ir/eval.c). Then whole training steps of the seed models,
// through the xc_grad_step / xc_apply_step / xc_forward ABI of runtime/xentcc_rt.h.
#include "../common/capture.h"
#include "ir.h"
#include "loop.h"
#include "../../runtime/xentcc_rt.h"

#include <check.h>
#include <dlfcn.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TEST_RNG_SEED 0x9E3779B97F4A7C15ull
#include "test_compile.h"
#include "test_graphs.h"

static void fill_ints(Net *t, Node *n, int lo, int hi) {
  for (int64_t i = 0; i < count(n); i++)
    t->src[n->id].i[i] = lo + (int32_t)uniform(0, hi - lo + 1);
}

static void set_int(Net *t, Node *n, int32_t v) { t->src[n->id].i[0] = v; }

//
// Compiling, loading and comparing
//

// Passes if max |got - want| <= tol * max(1e-3, max |want|).
static bool check_tensor(const char *what, const float *got, const float *want, int64_t n,
                         double tol) {
  double maxdiff = 0, maxref = 1e-3;
  int64_t worst = 0;
  for (int64_t i = 0; i < n; i++) {
    maxref = fmax(maxref, fabs(want[i]));
    double d = fabs((double)got[i] - want[i]);
    if (d > maxdiff || isnan(d)) {
      maxdiff = d;
      worst = i;
    }
  }
  bool ok = maxdiff <= tol * maxref;
  if (!ok) {
    fprintf(stderr, "%s: mismatch, max |diff| %.3g at [%lld] > %.3g\n", what, maxdiff,
            (long long)worst, tol * maxref);
    for (int64_t i = 0; i < n && i < 6; i++)
      fprintf(stderr, "  [%lld] got %.9g want %.9g\n", (long long)i, got[i], want[i]);
    fprintf(stderr, "  [%lld] got %.9g want %.9g (worst)\n", (long long)worst, got[worst],
            want[worst]);
  }
  return ok;
}

static bool compared(const Node *n) {
  return !(op_info(n->op)->flags & OPF_SOURCE) && n->op != OP_reshape;
}

// Compiles t->g at -O`opt`, runs it on t->src, and compares every computed
// node with eval_graph's value.
static void run_at(Net *t, int opt, double tol, const char *what) {
  Graph *g = t->g;
  Tensor *want = eval_graph(g, t->src);
  char *obj = xformat("%s/k%d.o", tmpdir, linked);
  CodegenOptions o = {.opt_level = opt, .cpu = "native"};
  codegen_function_object(g, "kernel", obj, &o);
  void *h = load_object(obj);
  void (*fn)(void **) = (void (*)(void **))dlsym(h, "kernel");
  ck_assert_msg(fn, "dlsym: %s", dlerror());

  void **slots = xcalloc(g->nnodes, sizeof *slots);
  Tensor *got = xcalloc(g->nnodes, sizeof *got);
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    got[i] = tensor_new(n->type);
    // Garbage in every output, so a kernel that skips elements shows.
    if (n->type.dtype == DT_F32)
      for (int64_t j = 0; j < count(n); j++)
        got[i].f[j] = NAN;
    if (n->op == OP_input || n->op == OP_param || n->op == OP_state) {
      size_t bytes = type_numel(&n->type) * 4;
      memcpy(n->type.dtype == DT_F32 ? (void *)got[i].f : (void *)got[i].i,
             n->type.dtype == DT_F32 ? (void *)t->src[i].f : (void *)t->src[i].i, bytes);
    }
    slots[i] = n->type.dtype == DT_F32 ? (void *)got[i].f : (void *)got[i].i;
  }
  fn(slots);
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    if (!compared(n))
      continue;
    char *name = xformat("%s -O%d: node %d (%s %s)", what, opt, i, op_info(n->op)->name,
                         n->name ? n->name : "");
    if (n->type.dtype == DT_F32)
      ck_assert_msg(check_tensor(name, got[i].f, want[i].f, count(n), tol), "%s differs", name);
    else
      ck_assert_msg(!memcmp(got[i].i, want[i].i, count(n) * 4), "%s differs", name);
  }
  dlclose(h);
}

// The shipping level and the unoptimized code: -O3 vectorizes and unrolls,
// -O0 shows the kernels' plain meaning.
static void run(Net *t, double tol, const char *what) {
  run_at(t, 3, tol, what);
  run_at(t, 0, tol, what);
}

static const double TOL = 2e-5; // f32 accumulation against the evaluator's doubles

//
// Forward ops
//

static void conv_case_sized(int64_t h, int64_t w_, int64_t sh_, int64_t sw, int64_t ph, int64_t pw,
                            int64_t kh, int64_t kw, bool bias) {
  Net *t = net_new();
  Node *x = F32(t, "x", 2, 3, h, w_), *w = F32(t, "w", 4, 3, kh, kw), *b = F32(t, "b", 4);
  Node *y = bias ? OPN(t, conv2d, x, w, b) : OPN(t, conv2d, x, w);
  set_pair(y, "stride", sh_, sw);
  set_pair(y, "padding", ph, pw);
  done(y);
  Node *dy = F32(t, "dy", y->type.dim[0], y->type.dim[1], y->type.dim[2], y->type.dim[3]);
  Node *gx = OPN(t, conv2d_grad_input, dy, w);
  set_pair(gx, "stride", sh_, sw);
  set_pair(gx, "padding", ph, pw);
  gx->type = x->type;
  done(gx);
  Node *gw = OPN(t, conv2d_grad_weight, dy, x);
  set_pair(gw, "stride", sh_, sw);
  set_pair(gw, "padding", ph, pw);
  set_pair(gw, "kernel", kh, kw);
  done(gw);
  done(OPN(t, bias_grad, dy));
  fill(t, x, -1, 1);
  fill(t, w, -0.5, 0.5);
  fill(t, b, -0.5, 0.5);
  fill(t, dy, -1, 1);
  run(t, TOL, xformat("conv2d %lldx%lld s%lld,%lld p%lld,%lld k%lld,%lld", (long long)h,
                      (long long)w_, (long long)sh_, (long long)sw, (long long)ph, (long long)pw,
                      (long long)kh, (long long)kw));
}

static void conv_case(int64_t sh_, int64_t sw, int64_t ph, int64_t pw, int64_t kh, int64_t kw,
                      bool bias) {
  conv_case_sized(7, 6, sh_, sw, ph, pw, kh, kw, bias);
}

START_TEST(conv2d_and_grads) {
  conv_case(1, 1, 0, 0, 3, 3, true);
  conv_case(1, 1, 0, 0, 3, 3, false);
  conv_case(2, 2, 1, 1, 3, 3, true);
  conv_case(2, 1, 1, 0, 3, 2, true); // non-square: catches swapped H and W
  conv_case(1, 2, 2, 1, 5, 4, true); // padding wider than a stride
  // Stride 1 without padding keeps output rows in registers as vectors of
  // 8, 4, 2 and 1 floats: rows of 34 (8+8+8+8+2) and 21 (8+8+4+1).
  conv_case_sized(9, 38, 1, 1, 0, 0, 5, 5, true);
  conv_case_sized(6, 23, 1, 1, 0, 0, 3, 3, false);
}
END_TEST

static void pool_case(OpKind fwd, OpKind bwd, int64_t k, int64_t s, int64_t p, bool ties) {
  Net *t = net_new();
  Node *x = F32(t, "x", 2, 3, 7, 6);
  Node *y = node_new(t->g, fwd, (Node *[]){x}, 1, no_loc);
  set_pair(y, "kernel", k, k);
  set_pair(y, "stride", s, s);
  set_pair(y, "padding", p, p);
  done(y);
  Node *dy = F32(t, "dy", y->type.dim[0], y->type.dim[1], y->type.dim[2], y->type.dim[3]);
  Node *gx = node_new(t->g, bwd, (Node *[]){dy, x}, 2, no_loc);
  set_pair(gx, "kernel", k, k);
  set_pair(gx, "stride", s, s);
  set_pair(gx, "padding", p, p);
  done(gx);
  fill(t, x, -1, 1);
  if (ties) // few distinct values: the first maximum must win, as in PyTorch
    for (int64_t i = 0; i < count(x); i++)
      t->src[x->id].f[i] = (float)floor(t->src[x->id].f[i] * 2);
  fill(t, dy, -1, 1);
  run(t, TOL, xformat("%s k%lld s%lld p%lld%s", op_info(fwd)->name, (long long)k, (long long)s,
                      (long long)p, ties ? " ties" : ""));
}

START_TEST(pooling_and_grads) {
  for (int ties = 0; ties < 2; ties++) {
    pool_case(OP_maxpool2d, OP_maxpool2d_grad, 2, 2, 0, ties);
    pool_case(OP_maxpool2d, OP_maxpool2d_grad, 3, 2, 1, ties);
    pool_case(OP_maxpool2d, OP_maxpool2d_grad, 3, 1, 1, ties);
  }
  pool_case(OP_avgpool2d, OP_avgpool2d_grad, 2, 2, 0, false);
  pool_case(OP_avgpool2d, OP_avgpool2d_grad, 3, 2, 1, false);
  pool_case(OP_avgpool2d, OP_avgpool2d_grad, 3, 1, 1, false);
}
END_TEST

// Pooling has no freedom of order: the compiled kernels must give, bit for
// bit, what the plain nest means in float: a window's first maximum or first
// NaN; an average summed from 0 tap by tap in row-major order, then divided;
// dx from 0, each window adding its share to its taps, windows in row-major
// order. P is one shape; the window's taps inside the input are [a, b) rows
// by [c, d) columns.
typedef struct {
  int64_t n, c, h, w, kh, kw, sh, sw, ph, pw, ho, wo;
} P;

static void pool_window(const P *p, int64_t oh, int64_t ow, int64_t *a, int64_t *b, int64_t *c,
                        int64_t *d) {
  *a = oh * p->sh - p->ph, *c = ow * p->sw - p->pw;
  *b = *a + p->kh < p->h ? *a + p->kh : p->h, *d = *c + p->kw < p->w ? *c + p->kw : p->w;
  *a = *a > 0 ? *a : 0, *c = *c > 0 ? *c : 0;
}

static void pool_reference(const P *p, bool max, const float *x, const float *dy, float *y,
                           float *dx) {
  memset(dx, 0, sizeof(float) * p->n * p->c * p->h * p->w);
  float div = (float)(p->kh * p->kw);
  for (int64_t nc = 0; nc < p->n * p->c; nc++)
    for (int64_t oh = 0; oh < p->ho; oh++)
      for (int64_t ow = 0; ow < p->wo; ow++) {
        int64_t a, b, c, d, arg = -1, at = (nc * p->ho + oh) * p->wo + ow;
        pool_window(p, oh, ow, &a, &b, &c, &d);
        const float *px = x + nc * p->h * p->w;
        float *pdx = dx + nc * p->h * p->w, best = 0, sum = 0;
        for (int64_t i = a; i < b; i++)
          for (int64_t j = c; j < d; j++) {
            float v = px[i * p->w + j];
            if (arg < 0 || ((v > best || isnan(v)) && !isnan(best)))
              best = v, arg = i * p->w + j;
            sum = sum + v;
          }
        y[at] = max ? best : sum / div;
        for (int64_t i = a; i < b; i++)
          for (int64_t j = c; j < d; j++) {
            int64_t e = i * p->w + j;
            pdx[e] = pdx[e] + (max ? (e == arg ? dy[at] : 0.0f) : dy[at] / div);
          }
      }
}

// Ties, signed zeros, infinities and NaNs with payloads.
static float pool_value(void) {
  static const float few[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 0.5f, 2.0f, -INFINITY, INFINITY};
  double u = uniform(0, 1);
  if (u < 0.05) {
    uint32_t bits = 0x7fc00000u | (uint32_t)uniform(0, 1 << 20) | (u < 0.025 ? 0x80000000u : 0);
    float f;
    memcpy(&f, &bits, 4);
    return f;
  }
  return u < 0.7 ? few[(int)uniform(0, 9)] : (float)uniform(-1, 1);
}

// Equal bits; a sum of two NaNs may keep either one's payload (LLVM swaps
// the operands of an add), so sums only need to agree that it is a NaN.
static bool same_float(float got, float want, bool sum) {
  if (sum && isnan(got) && isnan(want))
    return true;
  return !memcmp(&got, &want, sizeof got);
}

static void pool_exact(bool max, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                       int64_t sw, int64_t ph, int64_t pw) {
  Net *t = net_new();
  Node *x = F32(t, "x", 2, 3, h, w);
  Node *y = node_new(t->g, max ? OP_maxpool2d : OP_avgpool2d, (Node *[]){x}, 1, no_loc);
  set_pair(y, "kernel", kh, kw);
  set_pair(y, "stride", sh, sw);
  set_pair(y, "padding", ph, pw);
  done(y);
  Node *dy = F32(t, "dy", y->type.dim[0], y->type.dim[1], y->type.dim[2], y->type.dim[3]);
  Node *dx = node_new(t->g, max ? OP_maxpool2d_grad : OP_avgpool2d_grad, (Node *[]){dy, x}, 2,
                      no_loc);
  set_pair(dx, "kernel", kh, kw);
  set_pair(dx, "stride", sh, sw);
  set_pair(dx, "padding", ph, pw);
  done(dx);
  P p = {2, 3, h, w, kh, kw, sh, sw, ph, pw, y->type.dim[2], y->type.dim[3]};
  for (int64_t i = 0; i < count(x); i++)
    t->src[x->id].f[i] = pool_value();
  for (int64_t i = 0; i < count(dy); i++)
    t->src[dy->id].f[i] = pool_value();
  float *want_y = xcalloc(count(y), 4), *want_dx = xcalloc(count(x), 4);
  pool_reference(&p, max, t->src[x->id].f, t->src[dy->id].f, want_y, want_dx);
  bool overlap = (sh < kh && p.ho > 1) || (sw < kw && p.wo > 1);
  for (int opt = 0; opt <= 3; opt += 3) {
    char *what = xformat("%s %lldx%lld k%lld,%lld s%lld,%lld p%lld,%lld -O%d", max ? "max" : "avg",
                         (long long)h, (long long)w, (long long)kh, (long long)kw, (long long)sh,
                         (long long)sw, (long long)ph, (long long)pw, opt);
    char *obj = xformat("%s/exact%d.o", tmpdir, linked);
    CodegenOptions o = {.opt_level = opt, .cpu = "native"};
    codegen_function_object(t->g, "kernel", obj, &o);
    void *lib = load_object(obj);
    void (*fn)(void **) = (void (*)(void **))dlsym(lib, "kernel");
    float *got_y = xcalloc(count(y), 4), *got_dx = xcalloc(count(x), 4);
    for (int64_t i = 0; i < count(x); i++)
      got_dx[i] = 12345; // garbage: every element must be written
    fn((void *[]){t->src[x->id].f, got_y, t->src[dy->id].f, got_dx});
    for (int64_t i = 0; i < count(y); i++)
      ck_assert_msg(same_float(got_y[i], want_y[i], !max), "%s: y[%lld] = %a, want %a", what,
                    (long long)i, got_y[i], want_y[i]);
    for (int64_t i = 0; i < count(x); i++)
      ck_assert_msg(same_float(got_dx[i], want_dx[i], !max || overlap),
                    "%s: dx[%lld] = %a, want %a", what, (long long)i, got_dx[i], want_dx[i]);
    dlclose(lib);
  }
}

START_TEST(pooling_exact) {
  for (int max = 0; max < 2; max++) {
    pool_exact(max, 16, 16, 2, 2, 2, 2, 0, 0); // 8 columns: two rows an iteration
    pool_exact(max, 8, 8, 2, 2, 2, 2, 0, 0);   // 4 columns: four rows
    pool_exact(max, 32, 34, 2, 2, 2, 2, 0, 0); // 17 columns: a row
    pool_exact(max, 7, 9, 2, 2, 2, 2, 0, 0);   // a row and a column no window covers
    pool_exact(max, 9, 10, 2, 2, 2, 2, 1, 1);  // padded edge windows
    pool_exact(max, 10, 11, 2, 2, 3, 3, 0, 0); // gaps between windows
    pool_exact(max, 6, 7, 1, 1, 2, 2, 0, 0);
    pool_exact(max, 11, 10, 3, 3, 3, 3, 1, 1);
    pool_exact(max, 9, 8, 3, 3, 2, 2, 1, 1); // overlapping windows, padded
    pool_exact(max, 20, 20, 3, 3, 2, 2, 0, 0);
    pool_exact(max, 7, 6, 3, 3, 1, 1, 1, 1);
    pool_exact(max, 8, 12, 2, 3, 2, 1, 1, 1); // non-square: swapped H and W show
    pool_exact(max, 6, 5, 3, 2, 1, 2, 0, 1);
  }
  // Wider windows keep the textbook nest; an average 4 or more wide adds in
  // vector lanes at -O3, within rounding of this order (pooling_and_grads).
  pool_exact(true, 4, 4, 4, 4, 4, 4, 0, 0);
  pool_exact(true, 9, 9, 5, 5, 2, 2, 2, 2);
}
END_TEST

START_TEST(linear_and_grads) {
  for (int bias = 0; bias < 2; bias++) {
    Net *t = net_new();
    Node *x4 = F32(t, "x", 5, 2, 3, 3), *w = F32(t, "w", 7, 18), *b = F32(t, "b", 7);
    Node *x = OPN(t, reshape, x4);
    x->type = type_make(DT_F32, DIMS(5, 18));
    done(x);
    Node *y = done(bias ? OPN(t, linear, x, w, b) : OPN(t, linear, x, w));
    Node *dy = F32(t, "dy", 5, 7);
    done(OPN(t, linear_grad_input, dy, w));
    done(OPN(t, linear_grad_weight, dy, x));
    done(OPN(t, bias_grad, dy));
    done(OPN(t, relu, y));
    fill(t, x4, -1, 1);
    fill(t, w, -1, 1);
    fill(t, b, -1, 1);
    fill(t, dy, -1, 1);
    run(t, TOL, bias ? "linear with bias" : "linear without bias");
  }
}
END_TEST

START_TEST(elementwise) {
  Net *t = net_new();
  Node *a = F32(t, "a", 3, 37), *b = F32(t, "b", 3, 37);
  Node *r = done(OPN(t, relu, a));
  Node *s = done(OPN(t, sigmoid, a));
  done(OPN(t, add, a, b));
  done(OPN(t, mul, a, b));
  Node *sc = OPN(t, scale, a);
  node_set_float(sc, "factor", -0.37);
  done(sc);
  Node *e = OPN(t, ema, a, b);
  node_set_float(e, "momentum", 0.1);
  done(e);
  done(OPN(t, relu_grad, b, r));
  done(OPN(t, sigmoid_grad, b, s));
  done(OPN(t, mul, a, a)); // the same buffer twice
  fill(t, a, -3, 3);
  fill(t, b, -1, 1);
  t->src[a->id].f[5] = 0.0f;
  run(t, TOL, "elementwise");
}
END_TEST

START_TEST(relu_keeps_nan) {
  Net *t = net_new();
  Node *a = F32(t, "a", 4);
  done(OPN(t, relu, a));
  float v[4] = {NAN, -1, 2, -0.0f};
  memcpy(t->src[a->id].f, v, sizeof v);
  Tensor *want = eval_graph(t->g, t->src);
  ck_assert(isnan(want[1].f[0]));
  // check_tensor treats a NaN difference as a mismatch, so compare by hand.
  char *obj = xformat("%s/nan.o", tmpdir);
  codegen_function_object(t->g, "kernel", obj, &(CodegenOptions){.opt_level = 3, .cpu = "native"});
  void *h = load_object(obj);
  void (*fn)(void **) = (void (*)(void **))dlsym(h, "kernel");
  float out[4];
  fn((void *[]){t->src[a->id].f, out});
  ck_assert(isnan(out[0]));
  ck_assert(out[1] == 0 && out[2] == 2 && out[3] == 0);
  dlclose(h);
}
END_TEST

START_TEST(softmax_family) {
  Net *t = net_new();
  Node *x = F32(t, "x", 6, 11), *dy = F32(t, "dy", 6, 11);
  Node *s = done(OPN(t, softmax, x));
  Node *ls = done(OPN(t, log_softmax, x));
  done(OPN(t, softmax_grad, dy, s));
  done(OPN(t, log_softmax_grad, dy, ls));
  fill(t, x, -4, 4);
  t->src[x->id].f[3] = 80; // large logits must not overflow
  fill(t, dy, -1, 1);
  run(t, TOL, "softmax family");
}
END_TEST

START_TEST(batchnorm) {
  Net *t = net_new();
  Node *x = F32(t, "x", 4, 3, 5, 6), *gm = F32(t, "gamma", 3), *bt = F32(t, "beta", 3);
  Node *rm = F32(t, "running_mean", 3), *rv = F32(t, "running_var", 3), *dy = F32(t, "dy", 4, 3, 5, 6);
  Node *st = done(OPN(t, batch_stats, x));
  Node *y = OPN(t, batchnorm2d, x, gm, bt, st);
  node_set_float(y, "eps", 1e-5);
  done(y);
  Node *yi = OPN(t, batchnorm2d_infer, x, gm, bt, rm, rv);
  node_set_float(yi, "eps", 1e-5);
  done(yi);
  for (int i = 0; i < 3; i++) {
    Node *r = OPN(t, row, st);
    node_set_int(r, "index", i);
    done(r);
  }
  Node *gg = OPN(t, batchnorm2d_grad_gamma, dy, x, st);
  node_set_float(gg, "eps", 1e-5);
  done(gg);
  Node *gb = done(OPN(t, bias_grad, dy));
  Node *gi = OPN(t, batchnorm2d_grad_input, dy, x, gm, st, gg, gb);
  node_set_float(gi, "eps", 1e-5);
  done(gi);
  Node *flat = F32(t, "flat", 8, 5); // batch norm statistics of a linear layer's output
  done(OPN(t, batch_stats, flat));
  fill(t, x, -2, 3);
  fill(t, gm, 0.5, 1.5);
  fill(t, bt, -1, 1);
  fill(t, rm, -0.5, 0.5);
  fill(t, rv, 0.5, 2);
  fill(t, dy, -1, 1);
  fill(t, flat, -1, 1);
  run(t, 1e-4, "batch norm");
}
END_TEST

START_TEST(dropout) {
  Net *t = net_new();
  Node *step = STEP(t, "step"), *seed = STEP(t, "seed"), *x = F32(t, "x", 4, 3, 5, 5);
  Node *m = OPN(t, dropout_mask, step, seed);
  node_set_float(m, "p", 0.3);
  node_set_int(m, "salt", 12345);
  m->type = x->type;
  done(m);
  done(OPN(t, mul, x, m));
  Node *m2 = OPN(t, dropout_mask, step, seed);
  node_set_float(m2, "p", 0.5);
  node_set_int(m2, "salt", 7);
  m2->type = type_make(DT_F32, DIMS(10, 30));
  done(m2);
  fill(t, x, -1, 1);
  for (int s = 1; s <= 3; s++) {
    set_int(t, step, s * 1000 + 7);
    set_int(t, seed, s == 2 ? 0 : 12345 * s);
    run(t, 0, xformat("dropout step %d seed %d", s * 1000 + 7, s == 2 ? 0 : 12345 * s)); // bit-exact
  }
}
END_TEST

//
// Losses
//

// padded: rows 2 and 7 are labelled -100 (ignore_index), as the runtime pads
// a partial last batch.
static void ce_case(OpKind fwd, OpKind bwd, bool weighted, double smoothing, bool padded) {
  Net *t = net_new();
  int C = 7;
  Node *x = F32(t, "x", 9, C), *y = I32(t, "label", 9), *dl = SCALAR(t, "dl");
  Node *w = OPN(t, const);
  double wv[7] = {0.5, 1, 2, 0.25, 1.5, 3, 1};
  node_set_floats(w, "value", wv, C);
  w->type = type_make(DT_F32, DIMS(7));
  done(w);
  Node *loss = weighted ? OPN(t, nll_loss, x, y, w) : OPN(t, nll_loss, x, y);
  loss->op = fwd;
  node_set_float(loss, "label_smoothing", smoothing);
  done(loss);
  Node *g = weighted ? OPN(t, nll_loss_grad, dl, x, y, w) : OPN(t, nll_loss_grad, dl, x, y);
  g->op = bwd;
  node_set_float(g, "label_smoothing", smoothing);
  done(g);
  fill(t, x, -3, 1);
  fill_ints(t, y, 0, C - 1);
  if (padded)
    t->src[y->id].i[2] = t->src[y->id].i[7] = XC_IGNORE_INDEX;
  t->src[dl->id].f[0] = 0.7f;
  run(t, TOL, xformat("%s weights %d smoothing %g padded %d", op_info(fwd)->name, weighted,
                      smoothing, padded));
}

START_TEST(cross_entropy) {
  for (int op = 0; op < 2; op++) {
    OpKind fwd = op ? OP_softmax_cross_entropy : OP_nll_loss;
    OpKind bwd = op ? OP_softmax_cross_entropy_grad : OP_nll_loss_grad;
    for (int padded = 0; padded < 2; padded++) {
      ce_case(fwd, bwd, false, 0.0, padded);
      ce_case(fwd, bwd, true, 0.0, padded);
      ce_case(fwd, bwd, false, 0.1, padded);
      ce_case(fwd, bwd, true, 0.25, padded);
    }
  }
}
END_TEST

// padded: row 3 is padding (target -1), as in a partial last batch.
static void bce_case(OpKind fwd, OpKind bwd, const double *pw, int npw, bool padded) {
  Net *t = net_new();
  Node *x = F32(t, "x", 5, 4), *tg = F32(t, "target", 5, 4), *dl = SCALAR(t, "dl");
  Node *loss = node_new(t->g, fwd, (Node *[]){x, tg}, 2, no_loc);
  node_set_floats(loss, "pos_weight", pw, npw);
  done(loss);
  Node *g = node_new(t->g, bwd, (Node *[]){dl, x, tg}, 3, no_loc);
  node_set_floats(g, "pos_weight", pw, npw);
  done(g);
  if (fwd == OP_bce)
    fill(t, x, 0.05, 0.95);
  else
    fill(t, x, -6, 6);
  fill(t, tg, 0, 1); // soft targets: the formulas hold for any t in [0, 1]
  t->src[tg->id].f[0] = 1; // and hard ones
  t->src[tg->id].f[1] = 0;
  t->src[tg->id].f[2] = 1;
  t->src[tg->id].f[3] = 0;
  for (int j = 0; padded && j < 4; j++)
    t->src[tg->id].f[3 * 4 + j] = -1;
  t->src[dl->id].f[0] = 1.3f;
  run(t, TOL, xformat("%s with %d pos_weight values, padded %d", op_info(fwd)->name, npw, padded));
}

START_TEST(bce) {
  const double per_column[] = {2.0, 0.5, 1.0, 3.0}, one[] = {4.0};
  for (int op = 0; op < 2; op++) {
    OpKind fwd = op ? OP_sigmoid_bce : OP_bce, bwd = op ? OP_sigmoid_bce_grad : OP_bce_grad;
    for (int padded = 0; padded < 2; padded++) {
      bce_case(fwd, bwd, one, 0, padded);
      bce_case(fwd, bwd, one, 1, padded);
      bce_case(fwd, bwd, per_column, 4, padded);
    }
  }
}
END_TEST

START_TEST(l2norm) {
  for (int zero = 0; zero < 2; zero++) {
    Net *t = net_new();
    Node *x = F32(t, "x", 6, 7), *dl = SCALAR(t, "dl");
    Node *n = done(OPN(t, l2norm, x));
    done(OPN(t, l2norm_grad, dl, x, n));
    if (!zero) // at x = 0 the subgradient is 0, as torch.norm's
      fill(t, x, -1, 1);
    t->src[dl->id].f[0] = 0.01f;
    run(t, TOL, zero ? "l2norm at zero" : "l2norm");
  }
}
END_TEST

//
// Optimizers
//

// cycled: momentum comes from the %momentum input (a one-cycle schedule).
static void sgd_case(double momentum, double dampening, double wd, int nesterov, int step,
                     bool cycled) {
  Net *t = net_new();
  Node *p = source(t, OP_param, "w", DT_F32, DIMS(5, 13));
  Node *buf = source(t, OP_state, "w.momentum_buffer", DT_F32, DIMS(5, 13));
  Node *g = F32(t, "w.grad", 5, 13), *lr = SCALAR(t, "lr"), *st = STEP(t, "step");
  Node *mom = cycled ? SCALAR(t, "momentum") : NULL;
  Node *nb = NULL, *np;
  if (momentum != 0 || cycled) {
    nb = cycled ? OPN(t, sgd_buf, g, buf, p, st, mom) : OPN(t, sgd_buf, g, buf, p, st);
    node_set_float(nb, "momentum", cycled ? 0 : momentum);
    node_set_float(nb, "dampening", dampening);
    node_set_float(nb, "weight_decay", wd);
    done(nb);
    np = cycled ? OPN(t, sgd_update, p, g, lr, nb, mom) : OPN(t, sgd_update, p, g, lr, nb);
  } else {
    np = OPN(t, sgd_update, p, g, lr);
  }
  node_set_float(np, "momentum", cycled ? 0 : momentum);
  node_set_float(np, "weight_decay", wd);
  node_set_int(np, "nesterov", nesterov);
  done(np);
  done(OPN(t, assign, p, np));
  if (nb)
    done(OPN(t, assign, buf, nb));
  fill(t, p, -1, 1);
  fill(t, buf, -0.1, 0.1);
  fill(t, g, -1, 1);
  t->src[lr->id].f[0] = 0.05f;
  if (mom)
    t->src[mom->id].f[0] = (float)momentum;
  set_int(t, st, step);
  run(t, 1e-6, xformat("sgd momentum %g%s dampening %g wd %g nesterov %d step %d", momentum,
                       cycled ? " (input)" : "", dampening, wd, nesterov, step));
}

START_TEST(sgd) {
  for (int step = 1; step <= 2; step++) {
    sgd_case(0, 0, 0, 0, step, false);
    sgd_case(0, 0, 0.01, 0, step, false);
    sgd_case(0.9, 0, 0, 0, step, false);
    sgd_case(0.9, 0.1, 5e-4, 0, step, false);
    sgd_case(0.9, 0, 5e-4, 1, step, false);
    sgd_case(0.87, 0.1, 5e-4, 0, step, true);
    sgd_case(0.93, 0, 0, 1, step, true);
  }
}
END_TEST

// cycled: beta1 comes from the %momentum input (a one-cycle schedule).
static void adam_case(double wd, int decoupled, int step, bool cycled) {
  Net *t = net_new();
  Node *p = source(t, OP_param, "w", DT_F32, DIMS(3, 29));
  Node *m = source(t, OP_state, "w.exp_avg", DT_F32, DIMS(3, 29));
  Node *v = source(t, OP_state, "w.exp_avg_sq", DT_F32, DIMS(3, 29));
  Node *g = F32(t, "w.grad", 3, 29), *lr = SCALAR(t, "lr"), *st = STEP(t, "step");
  Node *beta1 = cycled ? SCALAR(t, "momentum") : NULL;
  double l2 = decoupled ? 0 : wd;
  Node *m1 = cycled ? OPN(t, adam_moment1, g, m, p, beta1) : OPN(t, adam_moment1, g, m, p);
  node_set_float(m1, "beta1", 0.9);
  node_set_float(m1, "weight_decay", l2);
  done(m1);
  Node *m2 = OPN(t, adam_moment2, g, v, p);
  node_set_float(m2, "beta2", 0.999);
  node_set_float(m2, "weight_decay", l2);
  done(m2);
  Node *u = cycled ? OPN(t, adam_update, p, m1, m2, lr, st, beta1)
                   : OPN(t, adam_update, p, m1, m2, lr, st);
  node_set_float(u, "beta1", 0.9);
  node_set_float(u, "beta2", 0.999);
  node_set_float(u, "eps", 1e-8);
  node_set_float(u, "weight_decay", wd);
  node_set_int(u, "decoupled", decoupled);
  done(u);
  done(OPN(t, assign, p, u));
  done(OPN(t, assign, m, m1));
  done(OPN(t, assign, v, m2));
  fill(t, p, -1, 1);
  fill(t, m, -0.01, 0.01);
  fill(t, v, 0, 1e-4);
  fill(t, g, -1, 1);
  t->src[lr->id].f[0] = 1e-3f;
  if (beta1)
    t->src[beta1->id].f[0] = 0.87f;
  set_int(t, st, step);
  run(t, 1e-6, xformat("adam wd %g decoupled %d step %d%s", wd, decoupled, step,
                       cycled ? " beta1 input" : ""));
}

START_TEST(adam) {
  for (int step = 1; step <= 1000; step *= 10) {
    adam_case(0, 0, step, false);
    adam_case(0.01, 0, step, false);
    adam_case(0.01, 1, step, false);
    adam_case(0.01, 0, step, true);
    adam_case(0.01, 1, step, true);
  }
}
END_TEST

//
// Whole training steps and forward passes of the seed models, through the
// executables. ABI: xc_grad_step and xc_apply_step on blocks laid out by xc_model.
//

static const char *const train_pipeline[] = {
    "lint-losses", "fuse-softmax-ce", "fuse-sigmoid-bce", "autodiff",
    "optimizer",   "constant-fold",   "cse",              "dce",
};
static const char *const eval_pipeline[] = {
    "eval-mode", "fuse-softmax-ce", "fuse-sigmoid-bce", "constant-fold", "cse", "dce",
};

static Graph *clone(Graph *g) {
  char *buf;
  size_t len;
  FILE *f = open_memstream(&buf, &len);
  print_graph(f, g);
  fclose(f);
  return parse_graph("<clone>", buf);
}

static int64_t xc_numel_of(const XcTensorInfo *t) {
  int64_t n = 1;
  for (int d = 0; d < t->rank; d++)
    n *= t->dim[d];
  return n;
}

static const XcTensorInfo *find_info(const XcTensorInfo *t, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (!strcmp(t[i].name, name))
      return &t[i];
  ck_abort_msg("%s is not in xc_model", name);
  return NULL;
}

// Random values for every source of g; the params and state blocks hold the
// same values at xc_model's offsets.
static Tensor *model_sources(Graph *g, const XcModel *xm, float *params, float *state) {
  Tensor *src = xcalloc(g->nnodes, sizeof *src);
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    if (!(op_info(n->op)->flags & OPF_SOURCE) || n->op == OP_const)
      continue;
    src[i] = tensor_new(n->type);
    int64_t k = type_numel(&n->type);
    if (n->op == OP_param || n->op == OP_state) {
      bool var = strstr(n->name, "exp_avg_sq") || strstr(n->name, "running_var");
      for (int64_t j = 0; j < k; j++)
        src[i].f[j] = (float)(var ? uniform(0.5, 1.0) * 1e-2 : uniform(-0.2, 0.2));
      const XcTensorInfo *ti = n->op == OP_param ? find_info(xm->params, xm->nparams, n->name)
                                                 : find_info(xm->states, xm->nstates, n->name);
      memcpy((n->op == OP_param ? params : state) + ti->offset, src[i].f, k * 4);
    } else if (!strcmp(n->name, "label") && n->type.dtype == DT_I32) {
      for (int64_t j = 0; j < k; j++)
        src[i].i[j] = (int32_t)uniform(0, xm->outputs);
    } else if (!strcmp(n->name, "label")) {
      for (int64_t j = 0; j < k; j++)
        src[i].f[j] = uniform(0, 1) < 0.5 ? 0.0f : 1.0f;
    } else if (!strcmp(n->name, "image")) {
      for (int64_t j = 0; j < k; j++)
        src[i].f[j] = (float)uniform(-1, 1);
    } else if (!strcmp(n->name, "step")) {
      src[i].i[0] = 3;
    } else if (!strcmp(n->name, "opt_step")) {
      src[i].i[0] = 2;
    } else if (!strcmp(n->name, "seed")) {
      src[i].i[0] = 11;
    } else if (!strcmp(n->name, "lr")) {
      src[i].f[0] = 0.01f;
    } else if (!strcmp(n->name, "momentum")) {
      src[i].f[0] = 0.9f;
    }
  }
  return src;
}

static void model_case(const char *yaml) {
  Model *m = load_model(xformat("%s/%s", XENTCC_SOURCE_DIR, yaml));
  Graph *eval = clone(m->graph), *train = m->graph;
  PipelineOptions po = {.dump = stderr};
  run_pipeline(train, train_pipeline, sizeof train_pipeline / sizeof *train_pipeline, &po);
  run_pipeline(eval, eval_pipeline, sizeof eval_pipeline / sizeof *eval_pipeline, &po);
  char *out = xformat("%s/%s", tmpdir, m->name);
  CodegenOptions o = {.output = out, .emit = "obj", .opt_level = 3, .cpu = "native"};
  LProgram *lp = lower_program(train, eval, o.opt_level);
  int nloop;
  const char *const *loop_passes = loop_pipeline(o.opt_level, &nloop);
  run_loop_pipeline(lp, loop_passes, nloop, &po);
  codegen(m, lp, train, eval, &o);
  void *h = load_object(xformat("%s-train.o", out));
  const XcModel *xm = dlsym(h, "xc_model");
  typedef float GradFn(const float *, float *, const float *, const void *, const XcStepArgs *,
                       float *, float *, void *);
  typedef int32_t CheckFn(const float *);
  typedef void ApplyFn(float *, float *, const float *, const XcStepArgs *, void *);
  GradFn *grad_step = (GradFn *)dlsym(h, "xc_grad_step");
  CheckFn *grad_check = (CheckFn *)dlsym(h, "xc_grad_check");
  ApplyFn *apply_step = (ApplyFn *)dlsym(h, "xc_apply_step");
  void (*fwd)(const float *, const float *, const float *, float *, void *) =
      (void (*)(const float *, const float *, const float *, float *, void *))dlsym(h, "xc_forward");
  // What xc_forward reads from the weights alone, computed before it (as
  // xc_evaluate does).
  void (*prepare)(const float *, const float *, const float *, const void *, void *) =
      (void (*)(const float *, const float *, const float *, const void *, void *))dlsym(
          h, "xc_prepare_forward");
  ck_assert(xm && grad_step && grad_check && apply_step && fwd && prepare);
  ck_assert_int_eq(xm->batch_size, m->batch_size);

  float *params = xcalloc(xm->param_floats + 1, 4), *state = xcalloc(xm->state_floats + 1, 4);
  void *ws = aligned_alloc(64, (xm->workspace_bytes + 63) / 64 * 64 + 64);
  graph_renumber(train);
  Tensor *src = model_sources(train, xm, params, state);
  Tensor *want = eval_graph(train, src);
  Node *image = graph_find(train, "image"), *label = graph_find(train, "label");
  const void *labels = label->type.dtype == DT_I32 ? (void *)src[label->id].i : src[label->id].f;

  // Forward first, on the weights before the step (xc_forward leaves them alone).
  graph_renumber(eval);
  Tensor *esrc = xcalloc(eval->nnodes, sizeof *esrc);
  for (int i = 0; i < eval->nnodes; i++) {
    Node *n = eval->node[i];
    if (!(op_info(n->op)->flags & OPF_SOURCE) || n->op == OP_const)
      continue;
    esrc[i] = src[graph_find(train, n->name)->id];
  }
  Tensor *ewant = eval_graph(eval, esrc);
  Node *elog = eval->ret[0];
  float *logits = xcalloc(type_numel(&elog->type), 4);
  prepare(params, state, NULL, NULL, ws);
  fwd(params, state, src[image->id].f, logits, ws);
  ck_assert_msg(check_tensor(xformat("%s xc_forward logits", yaml), logits, ewant[elog->id].f,
                             type_numel(&elog->type), 1e-4),
                "%s: logits differ", yaml);

  XcStepArgs args = {.step = 3, .seed = 11, .lr = 0.01f, .momentum = 0.9f, .opt_step = 2};
  float *grads = xcalloc(xm->param_floats + 1, 4);
  Node *tlog = train->ret[1];
  float *train_logits = xcalloc(type_numel(&tlog->type), 4);
  float loss = grad_step(params, state, src[image->id].f, labels, &args, grads, train_logits, ws);
  float wl = want[train->ret[0]->id].f[0];
  ck_assert_msg(fabs(loss - wl) <= 1e-5 * fmax(1, fabs(wl)), "%s: loss %.9g, want %.9g", yaml,
                loss, wl);
  // The training forward's logits (dropout on, batch statistics), copied
  // out for the runtime's training accuracy.
  ck_assert(xm->train_logits);
  ck_assert_msg(check_tensor(xformat("%s xc_grad_step logits", yaml), train_logits,
                             want[tlog->id].f, type_numel(&tlog->type), 1e-4),
                "%s: training logits differ", yaml);
  free(train_logits);
  // The loss as XcModel describes it, for the evaluation's loss.
  ck_assert_int_eq(xm->loss_kind, xm->outputs == 1 ? XC_LOSS_BCE_WITH_LOGITS
                                                   : XC_LOSS_CROSS_ENTROPY);
  // Every gradient is in the grads block, laid out like params.
  for (int i = 0; i < xm->nparams; i++) {
    Node *gn = graph_find(train, xformat("%s.grad", xm->params[i].name));
    char *what = xformat("%s: %s.grad", yaml, xm->params[i].name);
    ck_assert_msg(check_tensor(what, grads + xm->params[i].offset, want[gn->id].f,
                               type_numel(&gn->type), 1e-4), "%s", what);
  }
  ck_assert_int_eq(grad_check(grads), -1);
  apply_step(params, state, grads, &args, ws);
  // Every assign's target now holds the assign's value.
  int checked = 0;
  for (int i = 0; i < train->nnodes; i++) {
    Node *n = train->node[i];
    if (n->op != OP_assign)
      continue;
    Node *target = n->in[0];
    const XcTensorInfo *ti = target->op == OP_param
                                 ? find_info(xm->params, xm->nparams, target->name)
                                 : find_info(xm->states, xm->nstates, target->name);
    float *got = (target->op == OP_param ? params : state) + ti->offset;
    char *what = xformat("%s: %s after one step", yaml, target->name);
    ck_assert_msg(check_tensor(what, got, want[i].f, type_numel(&target->type), 1e-4), "%s", what);
    checked++;
  }
  ck_assert_int_gt(checked, 0);
  // xc_grad_check names the first parameter whose gradient is not finite
  // (in the vector body of the largest one's scan, or its last element);
  // the largest finite floats, of either sign, are finite.
  int big = 0;
  for (int i = 1; i < xm->nparams; i++)
    big = xc_numel_of(&xm->params[i]) > xc_numel_of(&xm->params[big]) ? i : big;
  ck_assert_int_ge(xc_numel_of(&xm->params[big]), 64);
  float *mid = &grads[xm->params[big].offset + xc_numel_of(&xm->params[big]) / 2];
  float kept = *mid;
  *mid = -FLT_MAX;
  grads[xm->params[0].offset] = FLT_MAX;
  ck_assert_int_eq(grad_check(grads), -1);
  *mid = -INFINITY;
  ck_assert_int_eq(grad_check(grads), big);
  *mid = kept;
  int last = xm->nparams - 1;
  grads[xm->params[last].offset + xc_numel_of(&xm->params[last]) - 1] = INFINITY;
  ck_assert_int_eq(grad_check(grads), last);
  grads[xm->params[1].offset] = NAN;
  ck_assert_int_eq(grad_check(grads), 1);
  free(grads);
  free(ws);
  dlclose(h);

  // The same step with one slot per node: every activation and gradient,
  // each to its own scale.
  Net *t = net_new();
  t->g = train;
  ck_assert_int_le(train->nnodes, MAX_NODES);
  for (int i = 0; i < train->nnodes; i++)
    t->src[i] = src[i];
  run_at(t, 3, 1e-5, yaml);
}

START_TEST(model_catdog) { model_case("models/catdog.yaml"); }
END_TEST

START_TEST(model_cifar10) { model_case("models/cifar10.yaml"); }
END_TEST

START_TEST(model_mnist) { model_case("models/mnist.yaml"); }
END_TEST

// Branches: a residual block with a strided 1x1 shortcut (its input read
// twice, the sum fused into a kernel's epilogue), a concat, the memory plan
// keeping each branch alive until it is joined.
START_TEST(model_branches) { model_case("tests/torch/Inputs/branches.yaml"); }
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("codegen");
  TCase *ops = tcase_create("ops");
  tcase_add_checked_fixture(ops, setup, teardown);
  tcase_set_timeout(ops, 300);
  tcase_add_test(ops, conv2d_and_grads);
  tcase_add_test(ops, pooling_and_grads);
  tcase_add_test(ops, pooling_exact);
  tcase_add_test(ops, linear_and_grads);
  tcase_add_test(ops, elementwise);
  tcase_add_test(ops, relu_keeps_nan);
  tcase_add_test(ops, softmax_family);
  tcase_add_test(ops, batchnorm);
  tcase_add_test(ops, dropout);
  tcase_add_test(ops, cross_entropy);
  tcase_add_test(ops, bce);
  tcase_add_test(ops, l2norm);
  tcase_add_test(ops, sgd);
  tcase_add_test(ops, adam);
  suite_add_tcase(s, ops);
  TCase *models = tcase_create("models");
  tcase_add_checked_fixture(models, setup, teardown);
  tcase_set_timeout(models, 300);
  tcase_add_test(models, model_catdog);
  tcase_add_test(models, model_cifar10);
  tcase_add_test(models, model_mnist);
  tcase_add_test(models, model_branches);
  suite_add_tcase(s, models);
  return s;
}

int main(void) {
  return run_suite(suite());
}

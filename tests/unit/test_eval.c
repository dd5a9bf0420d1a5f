// Unit tests of the reference evaluator (ir/eval.c). Every gradient op is
// checked against central finite differences of its forward op on small
// graphs with random inputs from a fixed seed; fused losses against their
// unfused forms; and forward ops and optimizer steps against numbers printed
// by PyTorch 1.13 (the script is in each test's comment).
#include "../common/capture.h"
#include "dropout_hash.h"
#include "ir.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TEST_RNG_SEED 0x2545F4914F6CDD1Dull
#include "test_graphs.h"

static Node *input(Net *t, const char *name, DType dt, int rank, const int64_t *dim) {
  return source(t, OP_input, name, dt, rank, dim);
}

static float *val(Net *t, Node *n) { return t->src[n->id].f; }

static void free_values(Graph *g, Tensor *v) {
  for (int i = 0; i < g->nnodes; i++) {
    free(v[i].f);
    free(v[i].i);
  }
  free(v);
}

// Values at least `gap` away from 0, for kinks at 0 (relu).
static void fill_away_from_zero(Net *t, Node *n, double gap) {
  for (int64_t i = 0; i < count(n); i++)
    val(t, n)[i] = (float)((uniform(0, 1) < 0.5 ? -1 : 1) * uniform(gap, 1.0));
}

// Distinct values 0.05 apart in random order, so every max-pool window has
// one clear maximum that a finite-difference step cannot overtake.
static void fill_distinct(Net *t, Node *n) {
  int64_t k = count(n);
  float *x = val(t, n);
  for (int64_t i = 0; i < k; i++)
    x[i] = (float)(0.05 * (double)(i - k / 2));
  for (int64_t i = k - 1; i > 0; i--) {
    int64_t j = (int64_t)uniform(0, (double)(i + 1));
    float tmp = x[i];
    x[i] = x[j];
    x[j] = tmp;
  }
}

static void fill_labels(Net *t, Node *n, int classes) {
  for (int64_t i = 0; i < count(n); i++)
    t->src[n->id].i[i] = (int32_t)uniform(0, classes);
}

static void set_values(Net *t, Node *n, const double *v) {
  for (int64_t i = 0; i < count(n); i++)
    val(t, n)[i] = (float)v[i];
}

//
// Comparing tensors, llm.c style: the first values side by side and the
// largest difference, printed on failure.
//

// Passes if max |got - want| <= tol * max(scale, max |want|).
static bool check_tensor(const char *what, const double *got, const double *want, int64_t n,
                         double tol, double scale) {
  double maxdiff = 0, maxref = scale;
  int64_t worst = 0;
  for (int64_t i = 0; i < n; i++) {
    maxref = fmax(maxref, fabs(want[i]));
    double d = fabs(got[i] - want[i]);
    if (d > maxdiff || isnan(d)) {
      maxdiff = d;
      worst = i;
    }
  }
  bool ok = maxdiff <= tol * maxref;
  if (!ok) {
    fprintf(stderr, "%s: mismatch, max |diff| %.3g at [%lld] > %.3g (tol %.1g x scale %.3g)\n",
            what, maxdiff, (long long)worst, tol * maxref, tol, maxref);
    for (int64_t i = 0; i < n && i < 8; i++)
      fprintf(stderr, "  [%lld] got %.9g want %.9g\n", (long long)i, got[i], want[i]);
    fprintf(stderr, "  [%lld] got %.9g want %.9g (worst)\n", (long long)worst, got[worst],
            want[worst]);
  }
  return ok;
}

static double *to_double(const float *x, int64_t n) {
  double *d = xcalloc(n, sizeof *d);
  for (int64_t i = 0; i < n; i++)
    d[i] = x[i];
  return d;
}

// Compares two nodes' values from one evaluation.
static void assert_same(Net *t, Node *a, Node *b, double tol, const char *what) {
  ck_assert(type_eq(&a->type, &b->type));
  Tensor *v = eval_graph(t->g, t->src);
  double *x = to_double(v[a->id].f, count(a)), *y = to_double(v[b->id].f, count(b));
  ck_assert_msg(check_tensor(what, x, y, count(a), tol, 1e-6), "%s differs", what);
  free(x);
  free(y);
  free_values(t->g, v);
}

// Compares a node's value with numbers from PyTorch.
static void assert_values(Net *t, Node *n, const double *want, double tol, const char *what) {
  Tensor *v = eval_graph(t->g, t->src);
  double *x = to_double(v[n->id].f, count(n));
  ck_assert_msg(check_tensor(what, x, want, count(n), tol, 1e-6), "%s differs", what);
  free(x);
  free_values(t->g, v);
}

//
// Finite differences. The objective is L = sum_i dy[i] * out[i], with dy a
// random source of out's type (for losses a scalar upstream gradient), so the
// gradient op fed with dy must equal dL/dwrt.
//

static double objective(Net *t, Node *out, Node *dy) {
  Tensor *v = eval_graph(t->g, t->src);
  double L = 0;
  for (int64_t i = 0; i < count(out); i++)
    L += (double)v[out->id].f[i] * val(t, dy)[i];
  free_values(t->g, v);
  return L;
}

// Central differences with step h on each element of `wrt` (f32 storage:
// the step actually taken is what the rounded inputs differ by).
static void check_grad(Net *t, Node *out, Node *dy, Node *wrt, Node *grad, double h, double tol,
                       const char *what) {
  ck_assert(type_eq(&wrt->type, &grad->type));
  ck_assert(type_eq(&out->type, &dy->type));
  Tensor *v = eval_graph(t->g, t->src);
  int64_t n = count(wrt);
  double *analytic = to_double(v[grad->id].f, n), *numeric = xcalloc(n, sizeof *numeric);
  free_values(t->g, v);
  float *x = val(t, wrt);
  for (int64_t i = 0; i < n; i++) {
    float saved = x[i];
    x[i] = (float)(saved + h);
    double up = x[i], lp = objective(t, out, dy);
    x[i] = (float)(saved - h);
    double down = x[i], lm = objective(t, out, dy);
    x[i] = saved;
    numeric[i] = (lp - lm) / (up - down);
  }
  ck_assert_msg(check_tensor(what, analytic, numeric, n, tol, 1e-3),
                "%s: analytic gradient differs from finite differences", what);
  free(analytic);
  free(numeric);
}

static const double H = 1e-2;    // FD step: f32 round-off and h^2 truncation both ~1e-5
// Relative to the largest gradient element. Correct gradients come within
// 1e-4 here; a gradient off by a factor 1.001 does not pass.
static const double TOL = 5e-4;

//
// Gradient ops against finite differences
//

// conv2d's three gradients for one stride/padding/kernel configuration.
static void conv_case(int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t kh, int64_t kw) {
  Net *t = net_new();
  Node *x = F32(t, "x", 2, 3, 6, 5), *w = F32(t, "w", 4, 3, kh, kw), *b = F32(t, "b", 4);
  Node *y = OPN(t, conv2d, x, w, b);
  set_pair(y, "stride", sh, sw);
  set_pair(y, "padding", ph, pw);
  done(y);
  Node *dy = input(t, "dy", DT_F32, 4, y->type.dim);
  Node *gx = OPN(t, conv2d_grad_input, dy, w);
  set_pair(gx, "stride", sh, sw);
  set_pair(gx, "padding", ph, pw);
  gx->type = x->type; // the one shape a gradient cannot recover (stride rounding)
  done(gx);
  Node *gw = OPN(t, conv2d_grad_weight, dy, x);
  set_pair(gw, "stride", sh, sw);
  set_pair(gw, "padding", ph, pw);
  set_pair(gw, "kernel", kh, kw);
  done(gw);
  Node *gb = done(OPN(t, bias_grad, dy));
  fill(t, x, -1, 1);
  fill(t, w, -0.5, 0.5);
  fill(t, b, -0.5, 0.5);
  fill(t, dy, -1, 1);
  check_grad(t, y, dy, x, gx, H, TOL, "conv2d_grad_input");
  check_grad(t, y, dy, w, gw, H, TOL, "conv2d_grad_weight");
  check_grad(t, y, dy, b, gb, H, TOL, "bias_grad (conv2d)");
}

START_TEST(fd_conv2d) {
  conv_case(1, 1, 0, 0, 3, 3);
  conv_case(2, 2, 1, 1, 3, 3);
  conv_case(2, 1, 1, 0, 3, 2); // non-square: catches swapped H and W
}
END_TEST

static void pool_case(OpKind fwd, OpKind bwd, int64_t k, int64_t s, int64_t p) {
  Net *t = net_new();
  Node *x = F32(t, "x", 2, 2, 5, 6);
  Node *y = node_new(t->g, fwd, (Node *[]){x}, 1, no_loc);
  set_pair(y, "kernel", k, k);
  set_pair(y, "stride", s, s);
  set_pair(y, "padding", p, p);
  done(y);
  Node *dy = input(t, "dy", DT_F32, 4, y->type.dim);
  Node *gx = node_new(t->g, bwd, (Node *[]){dy, x}, 2, no_loc);
  set_pair(gx, "kernel", k, k);
  set_pair(gx, "stride", s, s);
  set_pair(gx, "padding", p, p);
  done(gx);
  fill_distinct(t, x);
  fill(t, dy, -1, 1);
  check_grad(t, y, dy, x, gx, H, TOL, op_info(bwd)->name);
}

START_TEST(fd_pool) {
  pool_case(OP_maxpool2d, OP_maxpool2d_grad, 2, 2, 0);
  pool_case(OP_maxpool2d, OP_maxpool2d_grad, 3, 2, 1);
  pool_case(OP_maxpool2d, OP_maxpool2d_grad, 3, 1, 1); // overlapping windows
  pool_case(OP_avgpool2d, OP_avgpool2d_grad, 2, 2, 0);
  pool_case(OP_avgpool2d, OP_avgpool2d_grad, 3, 2, 1);
  pool_case(OP_avgpool2d, OP_avgpool2d_grad, 3, 1, 1);
}
END_TEST

START_TEST(fd_linear) {
  Net *t = net_new();
  Node *x = F32(t, "x", 3, 4), *w = F32(t, "w", 5, 4), *b = F32(t, "b", 5);
  Node *y = done(OPN(t, linear, x, w, b));
  Node *dy = F32(t, "dy", 3, 5);
  Node *gx = done(OPN(t, linear_grad_input, dy, w));
  Node *gw = done(OPN(t, linear_grad_weight, dy, x));
  Node *gb = done(OPN(t, bias_grad, dy));
  fill(t, x, -1, 1);
  fill(t, w, -1, 1);
  fill(t, b, -1, 1);
  fill(t, dy, -1, 1);
  check_grad(t, y, dy, x, gx, H, TOL, "linear_grad_input");
  check_grad(t, y, dy, w, gw, H, TOL, "linear_grad_weight");
  check_grad(t, y, dy, b, gb, H, TOL, "bias_grad (linear)");
}
END_TEST

// Ops whose gradient reads the forward output: (dy, y) -> dx.
static void unary_case(OpKind fwd, OpKind bwd, bool kink_at_zero) {
  Net *t = net_new();
  Node *x = F32(t, "x", 3, 5);
  Node *y = done(node_new(t->g, fwd, (Node *[]){x}, 1, no_loc));
  Node *dy = F32(t, "dy", 3, 5);
  Node *gx = done(node_new(t->g, bwd, (Node *[]){dy, y}, 2, no_loc));
  if (kink_at_zero)
    fill_away_from_zero(t, x, 0.1);
  else
    fill(t, x, -3, 3);
  fill(t, dy, -1, 1);
  check_grad(t, y, dy, x, gx, H, TOL, op_info(bwd)->name);
}

// Ops whose gradient reads the input: (dy, x) -> dx, with their attribute.
static void input_case(OpKind fwd, OpKind bwd, double slope, const char *form) {
  Net *t = net_new();
  Node *x = F32(t, "x", 3, 5);
  Node *y = node_new(t->g, fwd, (Node *[]){x}, 1, no_loc);
  Node *dy = F32(t, "dy", 3, 5);
  Node *gx = node_new(t->g, bwd, (Node *[]){dy, x}, 2, no_loc);
  for (Node **n = (Node *[]){y, gx, NULL}; *n; n++)
    if (fwd == OP_leaky_relu)
      node_set_float(*n, "negative_slope", slope);
    else
      node_set_str(*n, "approximate", form);
  done(y);
  done(gx);
  fill_away_from_zero(t, x, 0.1); // leaky_relu's kink
  for (int64_t i = 0; i < count(x); i++)
    t->src[x->id].f[i] *= 3;
  fill(t, dy, -1, 1);
  check_grad(t, y, dy, x, gx, H, TOL, op_info(bwd)->name);
}

START_TEST(fd_activations) {
  unary_case(OP_relu, OP_relu_grad, true);
  unary_case(OP_sigmoid, OP_sigmoid_grad, false);
  unary_case(OP_tanh, OP_tanh_grad, false);
  input_case(OP_leaky_relu, OP_leaky_relu_grad, 0.01, NULL);
  input_case(OP_leaky_relu, OP_leaky_relu_grad, -0.3, NULL);
  input_case(OP_gelu, OP_gelu_grad, 0, "none");
  input_case(OP_gelu, OP_gelu_grad, 0, "tanh");
  unary_case(OP_softmax, OP_softmax_grad, false);
  unary_case(OP_log_softmax, OP_log_softmax_grad, false);
}
END_TEST

// The cross-entropy family, with and without class weights and smoothing.
static void ce_case(OpKind fwd, OpKind bwd, bool weighted, double smoothing) {
  Net *t = net_new();
  int C = 5;
  Node *x = F32(t, "x", 6, C), *y = input(t, "label", DT_I32, DIMS(6)), *w = F32(t, "w", C);
  Node *dl = SCALAR(t, "dl");
  Node *loss = weighted ? node_new(t->g, fwd, (Node *[]){x, y, w}, 3, no_loc)
                        : node_new(t->g, fwd, (Node *[]){x, y}, 2, no_loc);
  node_set_float(loss, "label_smoothing", smoothing);
  done(loss);
  Node *g = weighted ? node_new(t->g, bwd, (Node *[]){dl, x, y, w}, 4, no_loc)
                     : node_new(t->g, bwd, (Node *[]){dl, x, y}, 3, no_loc);
  node_set_float(g, "label_smoothing", smoothing);
  done(g);
  fill(t, x, -2, 2);
  fill_labels(t, y, C);
  fill(t, w, 0.2, 2);
  val(t, dl)[0] = 0.7f;
  char *what = xformat("%s (weights %s, label_smoothing %g)", op_info(bwd)->name,
                       weighted ? "yes" : "no", smoothing);
  check_grad(t, loss, dl, x, g, H, TOL, what);
}

START_TEST(fd_cross_entropy) {
  for (int op = 0; op < 2; op++) {
    OpKind fwd = op ? OP_softmax_cross_entropy : OP_nll_loss;
    OpKind bwd = op ? OP_softmax_cross_entropy_grad : OP_nll_loss_grad;
    ce_case(fwd, bwd, false, 0.0);
    ce_case(fwd, bwd, true, 0.0);
    ce_case(fwd, bwd, false, 0.1);
    ce_case(fwd, bwd, true, 0.25);
  }
}
END_TEST

// bce on probabilities and sigmoid_bce on logits, with each pos_weight form.
static void bce_case(OpKind fwd, OpKind bwd, const double *pw, int npw) {
  Net *t = net_new();
  Node *x = F32(t, "x", 3, 4), *tg = F32(t, "target", 3, 4), *dl = SCALAR(t, "dl");
  Node *loss = node_new(t->g, fwd, (Node *[]){x, tg}, 2, no_loc);
  node_set_floats(loss, "pos_weight", pw, npw);
  done(loss);
  Node *g = node_new(t->g, bwd, (Node *[]){dl, x, tg}, 3, no_loc);
  node_set_floats(g, "pos_weight", pw, npw);
  done(g);
  if (fwd == OP_bce)
    fill(t, x, 0.1, 0.9); // probabilities; a step of H stays inside (0, 1)
  else
    fill(t, x, -3, 3);
  // Hard labels, and one soft target: the formulas hold for any t in [0, 1].
  set_values(t, tg, (double[]){1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0.3});
  val(t, dl)[0] = 1.3f;
  char *what = xformat("%s (%d pos_weight values)", op_info(bwd)->name, npw);
  check_grad(t, loss, dl, x, g, H * (fwd == OP_bce ? 0.1 : 1), TOL, what);
}

START_TEST(fd_bce) {
  const double per_column[] = {2.0, 0.5, 1.0, 3.0}, one[] = {4.0};
  for (int op = 0; op < 2; op++) {
    OpKind fwd = op ? OP_sigmoid_bce : OP_bce, bwd = op ? OP_sigmoid_bce_grad : OP_bce_grad;
    bce_case(fwd, bwd, one, 0); // no pos_weight
    bce_case(fwd, bwd, one, 1);
    bce_case(fwd, bwd, per_column, 4);
  }
}
END_TEST

START_TEST(fd_l2norm) {
  Net *t = net_new();
  Node *x = F32(t, "x", 3, 4), *dl = SCALAR(t, "dl");
  Node *norm = done(OPN(t, l2norm, x));
  Node *g = done(OPN(t, l2norm_grad, dl, x, norm));
  fill(t, x, -1, 1);
  val(t, dl)[0] = 0.01f;
  check_grad(t, norm, dl, x, g, H, TOL, "l2norm_grad");
}
END_TEST

// At x = 0 the norm has no derivative; PyTorch's subgradient is 0, not NaN.
START_TEST(l2norm_grad_at_zero) {
  Net *t = net_new();
  Node *x = F32(t, "x", 2, 2), *dl = SCALAR(t, "dl");
  Node *norm = done(OPN(t, l2norm, x));
  Node *g = done(OPN(t, l2norm_grad, dl, x, norm));
  val(t, dl)[0] = 1;
  assert_values(t, g, (double[]){0, 0, 0, 0}, 0, "l2norm_grad at 0");
}
END_TEST

START_TEST(fd_batchnorm2d) {
  Net *t = net_new();
  Node *x = F32(t, "x", 3, 2, 3, 3), *gamma = F32(t, "gamma", 2), *beta = F32(t, "beta", 2);
  // The statistics depend on x: finite differences recompute them, and
  // batchnorm2d's gradient accounts for that.
  Node *st = done(OPN(t, batch_stats, x));
  Node *y = OPN(t, batchnorm2d, x, gamma, beta, st);
  node_set_float(y, "eps", 1e-5);
  done(y);
  Node *dy = F32(t, "dy", 3, 2, 3, 3);
  Node *gg = OPN(t, batchnorm2d_grad_gamma, dy, x, st);
  node_set_float(gg, "eps", 1e-5);
  done(gg);
  Node *gb = done(OPN(t, bias_grad, dy));
  Node *gx = OPN(t, batchnorm2d_grad_input, dy, x, gamma, st, gg, gb);
  node_set_float(gx, "eps", 1e-5);
  done(gx);
  fill(t, x, -2, 2);
  fill(t, gamma, 0.5, 1.5);
  fill(t, beta, -0.5, 0.5);
  fill(t, dy, -1, 1);
  check_grad(t, y, dy, x, gx, H, TOL, "batchnorm2d_grad_input");
  check_grad(t, y, dy, gamma, gg, H, TOL, "batchnorm2d_grad_gamma");
  check_grad(t, y, dy, beta, gb, H, TOL, "bias_grad (batchnorm2d beta)");
}
END_TEST

// concat's gradient rule, through autodiff: each operand gets its channels
// of dy (slice), and a value joined twice the sum of both slices.
START_TEST(fd_concat) {
  Net *t = net_new();
  Node *a = source(t, OP_param, "a", DT_F32, DIMS(2, 3, 2, 2));
  Node *b = source(t, OP_param, "b", DT_F32, DIMS(2, 1, 2, 2));
  Node *w = F32(t, "w", 2, 7, 2, 2), *one = SCALAR(t, "one");
  Node *y = done(OPN(t, concat, a, b, a));
  Node *loss = done(OPN(t, l2norm, done(OPN(t, mul, y, w))));
  graph_return(t->g, loss);
  fill(t, a, -1, 1);
  fill(t, b, -1, 1);
  fill(t, w, -2, 2);
  val(t, one)[0] = 1;
  pass_autodiff(t->g);
  verify_graph(t->g);
  Node *ga = graph_find(t->g, "a.grad"), *gb = graph_find(t->g, "b.grad");
  ck_assert(ga && gb);
  check_grad(t, loss, one, a, ga, H, TOL, "concat's gradient of a (joined twice)");
  check_grad(t, loss, one, b, gb, H, TOL, "concat's gradient of b");
}
END_TEST

//
// Fused losses equal their unfused forms, forward and backward
//

START_TEST(fused_cross_entropy) {
  Net *t = net_new();
  Node *x = F32(t, "x", 6, 5), *y = input(t, "label", DT_I32, DIMS(6)), *w = F32(t, "w", 5);
  Node *dl = SCALAR(t, "dl");
  Node *fused = OPN(t, softmax_cross_entropy, x, y, w);
  node_set_float(fused, "label_smoothing", 0.2);
  done(fused);
  Node *logp = done(OPN(t, log_softmax, x));
  Node *nll = OPN(t, nll_loss, logp, y, w);
  node_set_float(nll, "label_smoothing", 0.2);
  done(nll);
  Node *gfused = OPN(t, softmax_cross_entropy_grad, dl, x, y, w);
  node_set_float(gfused, "label_smoothing", 0.2);
  done(gfused);
  Node *glogp = OPN(t, nll_loss_grad, dl, logp, y, w);
  node_set_float(glogp, "label_smoothing", 0.2);
  done(glogp);
  Node *gx = done(OPN(t, log_softmax_grad, glogp, logp));
  fill(t, x, -4, 4);
  fill_labels(t, y, 5);
  fill(t, w, 0.2, 2);
  val(t, dl)[0] = 0.9f;
  assert_same(t, fused, nll, 1e-6, "softmax_cross_entropy vs nll_loss(log_softmax)");
  assert_same(t, gfused, gx, 1e-5, "softmax_cross_entropy_grad vs the chain rule");
}
END_TEST

START_TEST(fused_bce) {
  const double pw[] = {2.0, 0.5, 1.0, 3.0};
  Net *t = net_new();
  Node *x = F32(t, "x", 3, 4), *tg = F32(t, "target", 3, 4), *dl = SCALAR(t, "dl");
  Node *fused = OPN(t, sigmoid_bce, x, tg);
  node_set_floats(fused, "pos_weight", pw, 4);
  done(fused);
  Node *p = done(OPN(t, sigmoid, x));
  Node *bce = OPN(t, bce, p, tg);
  node_set_floats(bce, "pos_weight", pw, 4);
  done(bce);
  Node *gfused = OPN(t, sigmoid_bce_grad, dl, x, tg);
  node_set_floats(gfused, "pos_weight", pw, 4);
  done(gfused);
  Node *gp = OPN(t, bce_grad, dl, p, tg);
  node_set_floats(gp, "pos_weight", pw, 4);
  done(gp);
  Node *gx = done(OPN(t, sigmoid_grad, gp, p));
  fill(t, x, -4, 4); // far from saturation: bce's log clamp never fires
  set_values(t, tg, (double[]){1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0.3});
  val(t, dl)[0] = 0.9f;
  // sigmoid rounded to f32 then log: ~1e-7 relative per element.
  assert_same(t, fused, bce, 1e-5, "sigmoid_bce vs bce(sigmoid)");
  assert_same(t, gfused, gx, 1e-4, "sigmoid_bce_grad vs the chain rule");
}
END_TEST

//
// Forward values from PyTorch. Inputs are the exactly representable pattern
// pat(n, a, b, c)[i] = ((i*a) % b - c) / 4, in Python:
//   pat = lambda n,a,b,c: torch.tensor([((i*a) % b - c)/4.0 for i in range(n)])
//

static void fill_pattern(Net *t, Node *n, int a, int b, int c) {
  for (int64_t i = 0; i < count(n); i++)
    val(t, n)[i] = (float)(((i * a) % b - c) / 4.0);
}

// x = pat(32,7,11,5).reshape(1,2,4,4), w = pat(36,5,9,4).reshape(2,2,3,3),
// b = [0.5, -0.25]:  F.conv2d(x, w, b, stride=2, padding=1),
// F.max_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1).
START_TEST(torch_conv_pool) {
  Net *t = net_new();
  Node *x = F32(t, "x", 1, 2, 4, 4), *w = F32(t, "w", 2, 2, 3, 3), *b = F32(t, "b", 2);
  Node *conv = OPN(t, conv2d, x, w, b);
  set_pair(conv, "stride", 2, 2);
  set_pair(conv, "padding", 1, 1);
  done(conv);
  Node *pool[2];
  for (int k = 0; k < 2; k++) {
    pool[k] = k ? OPN(t, avgpool2d, x) : OPN(t, maxpool2d, x);
    set_pair(pool[k], "kernel", 3, 3);
    set_pair(pool[k], "stride", 2, 2);
    set_pair(pool[k], "padding", 1, 1);
    done(pool[k]);
  }
  fill_pattern(t, x, 7, 11, 5);
  fill_pattern(t, w, 5, 9, 4);
  set_values(t, b, (double[]){0.5, -0.25});
  assert_values(t, conv, (double[]){3.625, 1.6875, 5.25, 0.9375, 2.875, 0.9375, 4.5, 0.1875},
                1e-6, "conv2d stride 2 padding 1");
  assert_values(t, pool[0], (double[]){0.5, 1.25, 0.75, 1.25, 1, 1, 1.25, 1.25}, 0,
                "maxpool2d padding 1");
  assert_values(t, pool[1],
                (double[]){-0.138888896, 0.166666672, -0.0833333358, 0.055555556, 0.0833333358,
                           -0.111111112, 0.25, -0.055555556},
                1e-6, "avgpool2d padding 1 (count_include_pad)");
}
END_TEST

// Non-square everything, so a swapped H and W cannot hide: x =
// pat(40,7,11,5).reshape(1,2,5,4), w = pat(24,5,9,4).reshape(2,2,3,2), b as above:
// F.conv2d(x, w, b, stride=(2,1), padding=(1,0)), F.max_pool2d(x, (3,2), (2,1), (1,0)),
// F.avg_pool2d(x, (3,2), (2,1), (1,0)).
START_TEST(torch_conv_pool_nonsquare) {
  Net *t = net_new();
  Node *x = F32(t, "x", 1, 2, 5, 4), *w = F32(t, "w", 2, 2, 3, 2), *b = F32(t, "b", 2);
  Node *conv = OPN(t, conv2d, x, w, b);
  set_pair(conv, "stride", 2, 1);
  set_pair(conv, "padding", 1, 0);
  done(conv);
  Node *pool[2];
  for (int k = 0; k < 2; k++) {
    pool[k] = k ? OPN(t, avgpool2d, x) : OPN(t, maxpool2d, x);
    set_pair(pool[k], "kernel", 3, 2);
    set_pair(pool[k], "stride", 2, 1);
    set_pair(pool[k], "padding", 1, 0);
    done(pool[k]);
  }
  fill_pattern(t, x, 7, 11, 5);
  fill_pattern(t, w, 5, 9, 4);
  set_values(t, b, (double[]){0.5, -0.25});
  assert_values(t, conv,
                (double[]){0.1875, 2.375, 1.125, 2.8125, 2.25, -2.4375, -0.5, 2.125, -2.8125,
                           -0.5625, -1.375, 0.5625, -0.9375, -1.6875, 1.6875, -1.4375, 0.4375,
                           0.9375},
                1e-6, "conv2d stride (2,1) padding (1,0)");
  assert_values(t, pool[0],
                (double[]){0.5, 1, 1.25, 0.75, 1.25, 1.25, 1, 1.25, 1.25, 1.25, 1.25, 0.5, 1.25,
                           1.25, 0.75, 1.25, 0.5, 1},
                0, "maxpool2d kernel (3,2)");
  assert_values(t, pool[1],
                (double[]){-0.208333328, 0.0416666679, 0.291666657, -0.125, 0.25, 0.166666672,
                           0.0416666679, 0.291666657, 0.0833333358, 0.208333328, 0, -0.208333328,
                           0.0416666679, -0.0416666679, -0.125, 0, -0.208333328, 0.0416666679},
                1e-6, "avgpool2d kernel (3,2)");
}
END_TEST

// logits = pat(12,5,7,3).reshape(3,4), y = [2,0,3], w = [1,2,0.5,1.5]:
//   F.cross_entropy(logits, y, weight=w, label_smoothing=0.1) = 1.03426802
// target = [[1,0,1,0],[0,1,1,0],[1,1,0,0]], pw = [2,0.5,1,3]:
//   F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw) = 0.829864204
START_TEST(torch_losses) {
  Net *t = net_new();
  Node *x = F32(t, "x", 3, 4), *y = input(t, "label", DT_I32, DIMS(3)), *w = F32(t, "w", 4);
  Node *tg = F32(t, "target", 3, 4);
  Node *ce = OPN(t, softmax_cross_entropy, x, y, w);
  node_set_float(ce, "label_smoothing", 0.1);
  done(ce);
  Node *bce = OPN(t, sigmoid_bce, x, tg);
  node_set_floats(bce, "pos_weight", (double[]){2, 0.5, 1, 3}, 4);
  done(bce);
  fill_pattern(t, x, 5, 7, 3);
  memcpy(t->src[y->id].i, (int32_t[]){2, 0, 3}, 3 * sizeof(int32_t));
  set_values(t, w, (double[]){1, 2, 0.5, 1.5});
  set_values(t, tg, (double[]){1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0});
  assert_values(t, ce, (double[]){1.03426802}, 1e-6, "cross_entropy(weight, label_smoothing)");
  assert_values(t, bce, (double[]){0.829864204}, 1e-6, "bce_with_logits(pos_weight)");
}
END_TEST

// Ties go to the first maximum in row-major window order, as in PyTorch.
START_TEST(maxpool_ties) {
  Net *t = net_new();
  Node *x = F32(t, "x", 1, 1, 3, 3);
  Node *y = OPN(t, maxpool2d, x);
  set_pair(y, "kernel", 2, 2);
  set_pair(y, "stride", 1, 1);
  set_pair(y, "padding", 0, 0);
  done(y);
  Node *dy = F32(t, "dy", 1, 1, 2, 2);
  Node *gx = OPN(t, maxpool2d_grad, dy, x);
  set_pair(gx, "kernel", 2, 2);
  set_pair(gx, "stride", 1, 1);
  set_pair(gx, "padding", 0, 0);
  done(gx);
  set_values(t, x, (double[]){1, 1, 1, 1, 1, 1, 1, 1, 1});
  set_values(t, dy, (double[]){1, 2, 4, 8});
  // Window (i, j) starts at x[i][j], which is its first element.
  assert_values(t, gx, (double[]){1, 2, 0, 4, 8, 0, 0, 0, 0}, 0, "maxpool2d_grad ties");
}
END_TEST

//
// Optimizers and schedules against torch.optim. Every case starts from
//   p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
// and takes two steps with p.grad = [0.1, -0.2, 0.3], then [0.05, 0.4, -0.1],
// printing p after each step with '%.9g'.
//

static const double P0[] = {1.0, -2.0, 0.5};
static const double G[2][3] = {{0.1, -0.2, 0.3}, {0.05, 0.4, -0.1}};

typedef struct {
  Net *t;
  Node *p, *g, *s1, *s2, *lr, *step; // s1, s2: momentum buffer or Adam's moments
  Node *new_p, *new_s1, *new_s2;
} OptCase;

static OptCase opt_case(void) {
  OptCase c = {.t = net_new()};
  c.p = F32(c.t, "p", 3);
  c.g = F32(c.t, "g", 3);
  c.s1 = F32(c.t, "s1", 3);
  c.s2 = F32(c.t, "s2", 3);
  c.lr = SCALAR(c.t, "lr");
  c.step = input(c.t, "step", DT_I32, 0, NULL);
  set_values(c.t, c.p, P0);
  return c;
}

// Runs steps 1 and 2, feeding the new values back, and checks p after each.
static void run_steps(OptCase *c, double lr, const double want[2][3], const char *what) {
  val(c->t, c->lr)[0] = (float)lr;
  for (int s = 0; s < 2; s++) {
    set_values(c->t, c->g, G[s]);
    c->t->src[c->step->id].i[0] = s + 1;
    Tensor *v = eval_graph(c->t->g, c->t->src);
    double *got = to_double(v[c->new_p->id].f, 3);
    char *label = xformat("%s, step %d", what, s + 1);
    ck_assert_msg(check_tensor(label, got, want[s], 3, 2e-7, 1e-6), "%s", label);
    memcpy(val(c->t, c->p), v[c->new_p->id].f, 3 * sizeof(float));
    if (c->new_s1)
      memcpy(val(c->t, c->s1), v[c->new_s1->id].f, 3 * sizeof(float));
    if (c->new_s2)
      memcpy(val(c->t, c->s2), v[c->new_s2->id].f, 3 * sizeof(float));
    free(got);
    free_values(c->t->g, v);
  }
}

static OptCase sgd_case(double momentum, double dampening, double wd, bool nesterov) {
  OptCase c = opt_case();
  c.new_s1 = OPN(c.t, sgd_buf, c.g, c.s1, c.p, c.step);
  node_set_float(c.new_s1, "momentum", momentum);
  node_set_float(c.new_s1, "dampening", dampening);
  node_set_float(c.new_s1, "weight_decay", wd);
  done(c.new_s1);
  c.new_p = OPN(c.t, sgd_update, c.p, c.g, c.lr, c.new_s1);
  node_set_float(c.new_p, "momentum", momentum);
  node_set_float(c.new_p, "weight_decay", wd);
  node_set_int(c.new_p, "nesterov", nesterov);
  done(c.new_p);
  return c;
}

// torch.optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)
START_TEST(torch_sgd_momentum) {
  OptCase c = sgd_case(0.9, 0.1, 0.01, false);
  run_steps(&c, 0.1,
            (const double[2][3]){{0.989000022, -1.97800004, 0.469500005},
                                 {0.973709941, -1.99241984, 0.450627446}},
            "SGD momentum");
}
END_TEST

// torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
START_TEST(torch_sgd_nesterov) {
  OptCase c = sgd_case(0.9, 0.0, 0.01, true);
  run_steps(&c, 0.1,
            (const double[2][3]){{0.979099989, -1.95819998, 0.44205001},
                                 {0.958829701, -2.01265931, 0.435505122}},
            "SGD nesterov");
}
END_TEST

static OptCase adam_case(double wd, bool decoupled) {
  OptCase c = opt_case();
  double moment_wd = decoupled ? 0.0 : wd; // AdamW decays p, not the gradient
  c.new_s1 = OPN(c.t, adam_moment1, c.g, c.s1, c.p);
  node_set_float(c.new_s1, "beta1", 0.9);
  node_set_float(c.new_s1, "weight_decay", moment_wd);
  done(c.new_s1);
  c.new_s2 = OPN(c.t, adam_moment2, c.g, c.s2, c.p);
  node_set_float(c.new_s2, "beta2", 0.999);
  node_set_float(c.new_s2, "weight_decay", moment_wd);
  done(c.new_s2);
  c.new_p = OPN(c.t, adam_update, c.p, c.new_s1, c.new_s2, c.lr, c.step);
  node_set_float(c.new_p, "beta1", 0.9);
  node_set_float(c.new_p, "beta2", 0.999);
  node_set_float(c.new_p, "eps", 1e-8);
  node_set_float(c.new_p, "weight_decay", wd);
  node_set_int(c.new_p, "decoupled", decoupled);
  done(c.new_p);
  return c;
}

// torch.optim.Adam([p], lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
START_TEST(torch_adam) {
  OptCase c = adam_case(0.1, false);
  run_steps(&c, 0.01,
            (const double[2][3]){{0.99000001, -1.99000001, 0.49000001},
                                 {0.980180502, -1.98735595, 0.484443039}},
            "Adam");
}
END_TEST

// torch.optim.AdamW([p], lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
START_TEST(torch_adamw) {
  OptCase c = adam_case(0.1, true);
  run_steps(&c, 0.01,
            (const double[2][3]){{0.989000022, -1.98800004, 0.489500016},
                                 {0.978689253, -1.98967314, 0.485008329}},
            "AdamW");
}
END_TEST

//
// Dropout masks: 0 or 1/(1-p), a pure function of (seed, salt, step, index)
//

static Tensor *mask_values(double p, int seed, int salt, int step, Node **mask_out) {
  Net *t = net_new();
  Node *s = input(t, "step", DT_I32, 0, NULL), *sd = input(t, "seed", DT_I32, 0, NULL);
  Node *m = OPN(t, dropout_mask, s, sd);
  m->type = type_make(DT_F32, 2, (int64_t[]){100, 100});
  node_set_float(m, "p", p);
  node_set_int(m, "salt", salt);
  done(m);
  t->src[s->id].i[0] = step;
  t->src[sd->id].i[0] = seed;
  *mask_out = m;
  return eval_graph(t->g, t->src);
}

START_TEST(dropout_mask_values) {
  Node *m;
  double p = 0.3;
  float scale = (float)(1.0 / (1.0 - p));
  Tensor *a = mask_values(p, 0, 7, 1, &m), *b = mask_values(p, 0, 7, 1, &m);
  Tensor *other_step = mask_values(p, 0, 7, 2, &m), *other_salt = mask_values(p, 0, 8, 1, &m);
  Tensor *other_seed = mask_values(p, 1, 7, 1, &m);
  const float *x = a[m->id].f;
  int kept = 0, same_step = 0, same_salt = 0, same_seed = 0;
  uint32_t threshold = dropout_threshold(p);
  for (int i = 0; i < 10000; i++) {
    ck_assert(x[i] == 0.0f || x[i] == scale);
    ck_assert(x[i] == b[m->id].f[i]); // deterministic
    ck_assert(x[i] == (dropout_keep(0, 7, 1, i, threshold) ? scale : 0.0f)); // the shared hash
    kept += x[i] != 0;
    same_step += x[i] == other_step[m->id].f[i];
    same_salt += x[i] == other_salt[m->id].f[i];
    same_seed += x[i] == other_seed[m->id].f[i];
  }
  // 10000 draws: the kept fraction is 0.7 +- 0.0046 (1 sigma).
  ck_assert_msg(abs(kept - 7000) < 250, "kept %d of 10000 at p = 0.3", kept);
  // Independent masks agree on 0.7^2 + 0.3^2 = 58% of elements.
  ck_assert_msg(abs(same_step - 5800) < 300, "step 2 agrees with step 1 on %d", same_step);
  ck_assert_msg(abs(same_salt - 5800) < 300, "salt 8 agrees with salt 7 on %d", same_salt);
  ck_assert_msg(abs(same_seed - 5800) < 300, "seed 1 agrees with seed 0 on %d", same_seed);
}
END_TEST

// dropout2d_mask over [N,C,H,W] = [40,25,3,2]: each channel of each sample
// is one draw, all 0 or all 1/(1-p), the draw at index n*C + c of the
// element-wise mask's hash -- what scripts/torch_model.py reproduces.
START_TEST(dropout2d_mask_channels) {
  Net *t = net_new();
  Node *s = input(t, "step", DT_I32, 0, NULL), *sd = input(t, "seed", DT_I32, 0, NULL);
  Node *m = OPN(t, dropout2d_mask, s, sd);
  m->type = type_make(DT_F32, 4, (int64_t[]){40, 25, 3, 2});
  node_set_float(m, "p", 0.4);
  node_set_int(m, "salt", 5);
  done(m);
  t->src[s->id].i[0] = 3;
  t->src[sd->id].i[0] = 11;
  const float *x = eval_graph(t->g, t->src)[m->id].f;
  float scale = (float)(1.0 / 0.6);
  uint32_t threshold = dropout_threshold(0.4);
  int kept = 0;
  for (int nc = 0; nc < 1000; nc++) {
    float want = dropout_keep(11, 5, 3, nc, threshold) ? scale : 0.0f;
    for (int k = 0; k < 6; k++)
      ck_assert_msg(x[nc * 6 + k] == want, "channel %d, element %d", nc, k);
    kept += want != 0;
  }
  // 1000 draws: the kept fraction is 0.6 +- 0.015 (1 sigma).
  ck_assert_msg(abs(kept - 600) < 70, "kept %d of 1000 channels at p = 0.4", kept);
}
END_TEST

START_TEST(dropout_p_zero_keeps_all) {
  Node *m;
  Tensor *v = mask_values(0.0, 9, 3, 5, &m);
  for (int i = 0; i < 10000; i++)
    ck_assert(v[m->id].f[i] == 1.0f);
}
END_TEST

//
// Batch-norm statistics and the rest of the forward ops
//

START_TEST(channel_stats_and_bn_infer) {
  Net *t = net_new();
  Node *x = F32(t, "x", 2, 2, 1, 2);
  Node *st = done(OPN(t, batch_stats, x));
  Node *row[3];
  for (int i = 0; i < 3; i++) {
    row[i] = OPN(t, row, st);
    node_set_int(row[i], "index", i);
    done(row[i]);
  }
  Node *mean = row[0], *bvar = row[1], *var = row[2];
  Node *ema = OPN(t, ema, mean, var);
  node_set_float(ema, "momentum", 0.1);
  done(ema);
  Node *g = F32(t, "gamma", 2), *b = F32(t, "beta", 2);
  Node *bn = OPN(t, batchnorm2d_infer, x, g, b, mean, bvar);
  node_set_float(bn, "eps", 0.0);
  done(bn);
  // Channel 0 holds 1, 2, 5, 8 (mean 4, squares of deviations 9+4+1+16 = 30);
  // channel 1 holds 0, 0, 4, 4 (mean 2, deviations sum to 16).
  set_values(t, x, (double[]){1, 2, 0, 0, 5, 8, 4, 4});
  set_values(t, g, (double[]){2, 1});
  set_values(t, b, (double[]){0, 1});
  assert_values(t, mean, (double[]){4, 2}, 0, "batch_stats mean");
  assert_values(t, var, (double[]){10, 16.0 / 3}, 1e-7, "batch_stats unbiased variance");
  assert_values(t, bvar, (double[]){7.5, 4}, 0, "batch_stats biased variance");
  assert_values(t, ema, (double[]){0.9 * 4 + 0.1 * 10, 0.9 * 2 + 0.1 * 16.0 / 3}, 1e-7, "ema");
  double s = sqrt(7.5);
  assert_values(t, bn, (double[]){2 * -3 / s, 2 * -2 / s, 1 - 1, 1 - 1, 2 * 1 / s, 2 * 4 / s, 2, 2},
                1e-6, "batchnorm2d_infer");
}
END_TEST

START_TEST(assign_reshape_const) {
  Net *t = net_new();
  Node *x = F32(t, "x", 2, 3);
  Node *r = OPN(t, reshape, x);
  r->type = type_make(DT_F32, 1, (int64_t[]){6});
  done(r);
  Node *c = node_new(t->g, OP_const, NULL, 0, no_loc);
  c->type = type_make(DT_F32, 1, (int64_t[]){6});
  node_set_floats(c, "value", (double[]){0.5}, 1);
  done(c);
  Node *sum = done(OPN(t, add, r, c));
  Node *prod = done(OPN(t, mul, sum, c));
  Node *sc = OPN(t, scale, prod);
  node_set_float(sc, "factor", -2);
  done(sc);
  Node *p = node_new(t->g, OP_param, NULL, 0, no_loc);
  p->name = xstrdup("p");
  p->type = c->type;
  done(p);
  t->src[p->id] = tensor_new(p->type);
  Node *as = done(OPN(t, assign, p, sc));
  set_values(t, x, (double[]){1, 2, 3, 4, 5, 6});
  // -2 * (x + 0.5) * 0.5 = -(x + 0.5)
  assert_values(t, as, (double[]){-1.5, -2.5, -3.5, -4.5, -5.5, -6.5}, 0, "assign");
  assert_values(t, p, (double[]){0, 0, 0, 0, 0, 0}, 0, "assign leaves the source alone");
}
END_TEST

static Suite *eval_suite(void) {
  Suite *s = suite_create("eval");
  TCase *fd = tcase_create("finite_differences");
  tcase_set_timeout(fd, 60);
  tcase_add_test(fd, fd_conv2d);
  tcase_add_test(fd, fd_pool);
  tcase_add_test(fd, fd_linear);
  tcase_add_test(fd, fd_activations);
  tcase_add_test(fd, fd_cross_entropy);
  tcase_add_test(fd, fd_bce);
  tcase_add_test(fd, fd_l2norm);
  tcase_add_test(fd, l2norm_grad_at_zero);
  tcase_add_test(fd, fd_batchnorm2d);
  tcase_add_test(fd, fd_concat);
  suite_add_tcase(s, fd);
  TCase *fused = tcase_create("fused_vs_unfused");
  tcase_add_test(fused, fused_cross_entropy);
  tcase_add_test(fused, fused_bce);
  suite_add_tcase(s, fused);
  TCase *torch = tcase_create("pytorch_values");
  tcase_add_test(torch, torch_conv_pool);
  tcase_add_test(torch, torch_conv_pool_nonsquare);
  tcase_add_test(torch, torch_losses);
  tcase_add_test(torch, maxpool_ties);
  tcase_add_test(torch, torch_sgd_momentum);
  tcase_add_test(torch, torch_sgd_nesterov);
  tcase_add_test(torch, torch_adam);
  tcase_add_test(torch, torch_adamw);
  suite_add_tcase(s, torch);
  TCase *misc = tcase_create("other_ops");
  tcase_add_test(misc, dropout_mask_values);
  tcase_add_test(misc, dropout2d_mask_channels);
  tcase_add_test(misc, dropout_p_zero_keeps_all);
  tcase_add_test(misc, channel_stats_and_bn_infer);
  tcase_add_test(misc, assign_reshape_const);
  suite_add_tcase(s, misc);
  return s;
}

int main(void) {
  return run_suite(eval_suite());
}

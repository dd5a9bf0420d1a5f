// The reference evaluator at the edges where a naive formula breaks: logits
// so large that exp overflows, probabilities of exactly 0 and 1 (PyTorch's
// BCELoss clamps its logs at -100), and callers that hand eval_graph the
// wrong tensors. test_eval.c covers the ordinary values.
#include "../common/capture.h"
#include "ir.h"

#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const Loc no_loc = {0};

static Type f32(int rank, ...) {
  va_list ap;
  va_start(ap, rank);
  Type t = {DT_F32, rank, {0}};
  for (int i = 0; i < rank; i++)
    t.dim[i] = va_arg(ap, int64_t);
  va_end(ap);
  return t;
}

// An input node with the given values; the tensor hangs on n->aux.
static Node *source(Graph *g, Type t, const float *v) {
  Node *n = node_new(g, OP_input, NULL, 0, no_loc);
  n->type = t;
  Tensor *x = xcalloc(1, sizeof *x);
  *x = tensor_new(t);
  if (t.dtype == DT_F32)
    memcpy(x->f, v, type_numel(&t) * sizeof(float));
  n->aux = x;
  return n;
}

static Node *labels(Graph *g, int64_t n, const int32_t *y) {
  Node *s = source(g, (Type){DT_I32, 1, {n}}, NULL);
  memcpy(((Tensor *)s->aux)->i, y, n * sizeof *y);
  return s;
}

static Node *op(Graph *g, OpKind k, int nin, ...) {
  Node *in[4];
  va_list ap;
  va_start(ap, nin);
  for (int i = 0; i < nin; i++)
    in[i] = va_arg(ap, Node *);
  va_end(ap);
  Node *n = node_new(g, k, in, nin, no_loc);
  node_fill_default_attrs(n);
  node_infer(n);
  return n;
}

static Tensor *run(Graph *g) {
  Tensor *src = xcalloc(g->nnodes, sizeof *src);
  for (int i = 0; i < g->nnodes; i++)
    if (g->node[i]->op == OP_input)
      src[i] = *(Tensor *)g->node[i]->aux;
  return eval_graph(g, src);
}

// Logits of +-1000: log_softmax, softmax, the fused cross-entropy and its
// gradient stay finite and exact (log-sum-exp subtracts the max first).
START_TEST(softmax_family_with_huge_logits) {
  Graph *g = graph_new("huge");
  float big[6] = {1000, -1000, 0, -1000, -1000, -999};
  Node *x = source(g, f32(2, 2, 3), big);
  Node *y = labels(g, 2, (int32_t[]){1, 2});
  Node *one = source(g, f32(0), (float[]){1});
  Node *sm = op(g, OP_softmax, 1, x), *lsm = op(g, OP_log_softmax, 1, x);
  Node *ce = op(g, OP_softmax_cross_entropy, 2, x, y);
  Node *dce = op(g, OP_softmax_cross_entropy_grad, 3, one, x, y);
  Tensor *v = run(g);
  for (int i = 0; i < 6; i++) {
    ck_assert(isfinite(v[sm->id].f[i]) && isfinite(v[lsm->id].f[i]));
    ck_assert(isfinite(v[dce->id].f[i]));
  }
  ck_assert_float_eq(v[sm->id].f[0], 1.0f);
  ck_assert_float_eq(v[lsm->id].f[1], -2000.0f);
  // Row 1: log(e^-1000 + e^-1000 + e^-999) - (-999) = log(1 + 2/e).
  ck_assert_float_eq_tol(v[lsm->id].f[5], -log1p(2 * exp(-1.0)), 1e-6);
  // Sample 0 costs 2000, sample 1 log(1 + 2/e): the mean of the two.
  ck_assert_float_eq_tol(v[ce->id].f[0], (2000 + log1p(2 * exp(-1.0))) / 2, 1e-3);
  // Gradient (softmax - onehot) / N: sample 0 puts all mass on class 0.
  ck_assert_float_eq_tol(v[dce->id].f[0], 0.5f, 1e-7);
  ck_assert_float_eq_tol(v[dce->id].f[1], -0.5f, 1e-7);
}
END_TEST

// BCEWithLogitsLoss at +-100: the stable form gives 100 per wrong sample and
// ~0 per right one, and the gradient saturates at +-1/N instead of NaN.
START_TEST(sigmoid_bce_with_huge_logits) {
  Graph *g = graph_new("huge");
  Node *x = source(g, f32(2, 4, 1), (float[]){100, -100, 100, -100});
  Node *t = source(g, f32(2, 4, 1), (float[]){0, 1, 1, 0});
  Node *one = source(g, f32(0), (float[]){1});
  Node *l = op(g, OP_sigmoid_bce, 2, x, t);
  Node *d = op(g, OP_sigmoid_bce_grad, 3, one, x, t);
  Tensor *v = run(g);
  ck_assert_float_eq_tol(v[l->id].f[0], 200.0f / 4, 1e-4);
  float want[4] = {0.25f, -0.25f, 0, 0};
  for (int i = 0; i < 4; i++)
    ck_assert_float_eq_tol(v[d->id].f[i], want[i], 1e-7);
}
END_TEST

// BCELoss on probabilities clamps each log at -100, as PyTorch documents:
// p = 0 with target 1 costs 100, not inf. The gradient is the derivative of
// that clamped loss: 0 for a clamped term, -y/p + (1-y)/(1-p) for the rest.
START_TEST(bce_clamps_logs_at_minus_100) {
  Graph *g = graph_new("clamp");
  Node *p = source(g, f32(1, 4), (float[]){0, 1, 1, 0});
  Node *t = source(g, f32(1, 4), (float[]){1, 1, 0, 0});
  Node *one = source(g, f32(0), (float[]){1});
  Node *l = op(g, OP_bce, 2, p, t);
  Node *d = op(g, OP_bce_grad, 3, one, p, t);
  Tensor *v = run(g);
  ck_assert_float_eq_tol(v[l->id].f[0], 200.0f / 4, 1e-5);
  float want[4] = {0, -1.0f / 4, 0, 1.0f / 4}; // mean over 4
  for (int i = 0; i < 4; i++)
    ck_assert_float_eq(v[d->id].f[i], want[i]);
}
END_TEST

// Labels outside [0, C) are a caller's bug the evaluator names, like
// PyTorch's "Target 7 is out of bounds".
START_TEST(label_out_of_range_dies) {
  Graph *g = graph_new("labels");
  Node *x = source(g, f32(2, 1, 3), (float[]){0, 0, 0});
  Node *y = labels(g, 1, (int32_t[]){7});
  op(g, OP_nll_loss, 2, x, y);
  run(g);
}
END_TEST

START_TEST(wrong_source_shape_dies) {
  Graph *g = graph_new("bad");
  Node *x = node_new(g, OP_input, NULL, 0, no_loc);
  x->name = xstrdup("image");
  x->type = f32(2, 2, 3);
  Tensor src[1] = {tensor_new(f32(2, 3, 2))};
  eval_graph(g, src);
}
END_TEST

START_TEST(missing_source_dies) {
  Graph *g = graph_new("bad");
  Node *x = node_new(g, OP_input, NULL, 0, no_loc);
  x->name = xstrdup("image");
  x->type = f32(1, 4);
  Tensor src[1] = {{x->type, NULL, NULL}};
  eval_graph(g, src);
}
END_TEST

int main(void) {
  Suite *s = suite_create("eval_edges");
  TCase *tc = tcase_create("edges");
  tcase_add_test(tc, softmax_family_with_huge_logits);
  tcase_add_test(tc, sigmoid_bce_with_huge_logits);
  tcase_add_test(tc, bce_clamps_logs_at_minus_100);
  tcase_add_exit_test(tc, label_out_of_range_dies, 1);
  tcase_add_exit_test(tc, wrong_source_shape_dies, 1);
  tcase_add_exit_test(tc, missing_source_dies, 1);
  suite_add_tcase(s, tc);
  return run_suite(s);
}

// Elementwise arithmetic on tensors of one shape: add, mul, scale by a
// constant, and ema, the running-statistics update of batch norm. The result
// is computed in double from the float operands and rounded once.
#include "lower.h"
#include "ops.h"

// --- add (a, b) -> a + b: the gradient flows to both unchanged ----------------------------

static void eval_add(const Node *n, Tensor *out, Tensor **in) {
  const float *a = in[0]->f, *b = in[1]->f;
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)((double)a[i] + b[i]);
}

static void grad_add(AD *ad, Node *n, Node *dy) {
  accumulate(ad, n->in[0], dy);
  accumulate(ad, n->in[1], dy);
}

static LExpr *elem_add(Lowering *L, Node *n, LExpr **v) {
  return FADD(operand(L, n, 0, v), operand(L, n, 1, v));
}

const OpRules rules_add = {
    .shape = shape_binary, .eval = eval_add, .grad = grad_add, .elem = elem_add};

// --- mul (a, b) -> a * b: da = dy * b, db = dy * a -------------------------------------------

static void eval_mul(const Node *n, Tensor *out, Tensor **in) {
  const float *a = in[0]->f, *b = in[1]->f;
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)((double)a[i] * b[i]);
}

static void grad_mul(AD *ad, Node *n, Node *dy) {
  Node **x = n->in;
  if (needs_grad(ad, x[0]))
    accumulate(ad, x[0], done(node_build(ad->g, OP_mul, n->loc, 2, dy, x[1])));
  if (needs_grad(ad, x[1]))
    accumulate(ad, x[1], done(node_build(ad->g, OP_mul, n->loc, 2, dy, x[0])));
}

static LExpr *elem_mul(Lowering *L, Node *n, LExpr **v) {
  return FMUL(operand(L, n, 0, v), operand(L, n, 1, v));
}

const OpRules rules_mul = {
    .shape = shape_binary, .eval = eval_mul, .grad = grad_mul, .elem = elem_mul};

// --- scale (x) -> factor * x: dx = factor * dy ------------------------------------------------

static void eval_scale(const Node *n, Tensor *out, Tensor **in) {
  const float *a = in[0]->f;
  double factor = node_float(n, "factor");
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)(factor * a[i]);
}

static void grad_scale(AD *ad, Node *n, Node *dy) {
  accumulate(ad, n->in[0], done(grad_op(ad, OP_scale, n, 1, (Node *[]){dy})));
}

static LExpr *elem_scale(Lowering *L, Node *n, LExpr **v) {
  return FMUL(F(node_float(n, "factor")), operand(L, n, 0, v));
}

const OpRules rules_scale = {
    .shape = shape_unary, .eval = eval_scale, .grad = grad_scale, .elem = elem_scale};

// --- ema (old, new) -> (1 - momentum) * old + momentum * new ---------------------------------
//
// Batch norm's running statistics, updated under no_grad as in PyTorch.

static void eval_ema(const Node *n, Tensor *out, Tensor **in) {
  const float *a = in[0]->f, *b = in[1]->f;
  double m = node_float(n, "momentum");
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)((1.0 - m) * a[i] + m * b[i]);
}

static LExpr *elem_ema(Lowering *L, Node *n, LExpr **v) {
  float m = (float)node_float(n, "momentum");
  return FADD(FMUL(F(1.0f - m), operand(L, n, 0, v)), FMUL(F(m), operand(L, n, 1, v)));
}

const OpRules rules_ema = {
    .shape = shape_binary, .eval = eval_ema, .no_grad = true, .elem = elem_ema};

// Activations: relu, sigmoid, tanh, leaky_relu and gelu elementwise, softmax
// and log_softmax over dim 1 of [N,C], and their gradients. A gradient reads
// what PyTorch's backward reads: the forward output y where it says enough
// (relu, sigmoid, tanh, the softmaxes), the input x where it does not
// (leaky_relu, whose slope may be negative, and gelu).
#include "lower.h"
#include "ops.h"

#include <string.h>

// --- relu: NaN propagates, as in torch.relu -----------------------------------------------

static void eval_relu(const Node *n, Tensor *out, Tensor **in) {
  const float *a = in[0]->f;
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)(a[i] > 0 || isnan(a[i]) ? a[i] : 0.0);
}

// dx = relu_grad(dy, y): the output's sign is the input's, and the output is at hand.
static void grad_relu(AD *ad, Node *n, Node *dy) {
  accumulate(ad, n->in[0], done(grad_op(ad, OP_relu_grad, n, 2, (Node *[]){dy, n})));
}

// max(x, 0), keeping NaN as torch.relu does.
static LExpr *elem_relu(Lowering *L, Node *n, LExpr **v) {
  LExpr *x = operand(L, n, 0, v);
  LExpr *pos = SEL(BIN(LX_GT, x, F(0)), lx_copy(x), F(0));
  return SEL(lx_un(LX_UNO, lx_copy(x)), lx_copy(x), pos);
}

const OpRules rules_relu = {
    .shape = shape_unary, .eval = eval_relu, .grad = grad_relu, .elem = elem_relu};

// --- relu_grad (dy, y) -> dy * (y > 0) ------------------------------------------------------
//
// The output is positive exactly where the input was.

static void eval_relu_grad(const Node *n, Tensor *out, Tensor **in) {
  const float *a = in[0]->f, *b = in[1]->f;
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)(b[i] > 0 ? a[i] : 0.0);
}

static LExpr *elem_relu_grad(Lowering *L, Node *n, LExpr **v) {
  return SEL(BIN(LX_GT, operand(L, n, 1, v), F(0)), operand(L, n, 0, v), F(0));
}

const OpRules rules_relu_grad = {
    .shape = shape_binary, .eval = eval_relu_grad, .elem = elem_relu_grad};

// --- sigmoid ----------------------------------------------------------------------------

static void eval_sigmoid(const Node *n, Tensor *out, Tensor **in) {
  const float *a = in[0]->f;
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)sigmoid(a[i]);
}

// dx = sigmoid_grad(dy, y)
static void grad_sigmoid(AD *ad, Node *n, Node *dy) {
  accumulate(ad, n->in[0], done(grad_op(ad, OP_sigmoid_grad, n, 2, (Node *[]){dy, n})));
}

static LExpr *elem_sigmoid(Lowering *L, Node *n, LExpr **v) {
  return FDIV(F(1), FADD(F(1), lx_un(LX_EXP, lx_un(LX_NEG, operand(L, n, 0, v)))));
}

const OpRules rules_sigmoid = {
    .shape = shape_unary, .eval = eval_sigmoid, .grad = grad_sigmoid, .elem = elem_sigmoid};

// --- sigmoid_grad (dy, y) -> dy * y * (1 - y) -------------------------------------------------

static void eval_sigmoid_grad(const Node *n, Tensor *out, Tensor **in) {
  const float *a = in[0]->f, *b = in[1]->f;
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)((double)a[i] * b[i] * (1.0 - b[i]));
}

static LExpr *elem_sigmoid_grad(Lowering *L, Node *n, LExpr **v) {
  LExpr *y = operand(L, n, 1, v);
  return FMUL(FMUL(operand(L, n, 0, v), y), FSUB(F(1), lx_copy(y)));
}

const OpRules rules_sigmoid_grad = {
    .shape = shape_binary, .eval = eval_sigmoid_grad, .elem = elem_sigmoid_grad};

// --- tanh, and tanh_grad (dy, y) -> dy * (1 - y^2) ------------------------------------------

static void eval_tanh(const Node *n, Tensor *out, Tensor **in) {
  const float *a = in[0]->f;
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)tanh(a[i]);
}

static void grad_tanh(AD *ad, Node *n, Node *dy) {
  accumulate(ad, n->in[0], done(grad_op(ad, OP_tanh_grad, n, 2, (Node *[]){dy, n})));
}

// libm's tanhf (llvm.tanh), within an ulp like PyTorch's vectorised tanh.
static LExpr *elem_tanh(Lowering *L, Node *n, LExpr **v) {
  return lx_un(LX_TANH, operand(L, n, 0, v));
}

const OpRules rules_tanh = {
    .shape = shape_unary, .eval = eval_tanh, .grad = grad_tanh, .elem = elem_tanh};

static void eval_tanh_grad(const Node *n, Tensor *out, Tensor **in) {
  const float *a = in[0]->f, *b = in[1]->f;
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)((double)a[i] * (1.0 - (double)b[i] * b[i]));
}

static LExpr *elem_tanh_grad(Lowering *L, Node *n, LExpr **v) {
  LExpr *y = operand(L, n, 1, v);
  return FMUL(operand(L, n, 0, v), FSUB(F(1), FMUL(y, lx_copy(y))));
}

const OpRules rules_tanh_grad = {
    .shape = shape_binary, .eval = eval_tanh_grad, .elem = elem_tanh_grad};

// --- leaky_relu: x > 0 ? x : negative_slope * x (a NaN stays a NaN) --------------------------
//
// Its gradient reads x, as PyTorch's leaky_relu_backward does: with a
// negative slope the output's sign is not the input's.

static void eval_leaky_relu(const Node *n, Tensor *out, Tensor **in) {
  const float *a = in[0]->f;
  float slope = (float)node_float(n, "negative_slope"); // a float, as PyTorch's scalar_t
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)(a[i] > 0 ? a[i] : (double)slope * a[i]);
}

static void grad_leaky_relu(AD *ad, Node *n, Node *dy) {
  accumulate(ad, n->in[0],
             done(grad_op(ad, OP_leaky_relu_grad, n, 2, (Node *[]){dy, n->in[0]})));
}

static LExpr *elem_leaky_relu(Lowering *L, Node *n, LExpr **v) {
  LExpr *x = operand(L, n, 0, v);
  LExpr *neg = FMUL(F(node_float(n, "negative_slope")), lx_copy(x));
  return SEL(BIN(LX_GT, x, F(0)), lx_copy(x), neg);
}

const OpRules rules_leaky_relu = {.shape = shape_unary,
                                  .eval = eval_leaky_relu,
                                  .grad = grad_leaky_relu,
                                  .elem = elem_leaky_relu};

static void eval_leaky_relu_grad(const Node *n, Tensor *out, Tensor **in) {
  const float *dy = in[0]->f, *x = in[1]->f;
  float slope = (float)node_float(n, "negative_slope");
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)(x[i] > 0 ? dy[i] : (double)slope * dy[i]);
}

static LExpr *elem_leaky_relu_grad(Lowering *L, Node *n, LExpr **v) {
  LExpr *dy = operand(L, n, 0, v);
  LExpr *neg = FMUL(F(node_float(n, "negative_slope")), lx_copy(dy));
  return SEL(BIN(LX_GT, operand(L, n, 1, v), F(0)), dy, neg);
}

const OpRules rules_leaky_relu_grad = {
    .shape = shape_binary, .eval = eval_leaky_relu_grad, .elem = elem_leaky_relu_grad};

// --- gelu, and gelu_grad (dy, x) ---------------------------------------------------------------
//
// nn.GELU's two forms, with PyTorch's constants and formulas:
//   none: y = x/2 (1 + erf(x/sqrt 2)),        dy/dx = cdf + x * exp(-x^2/2) / sqrt(2 pi)
//   tanh: y = x/2 (1 + tanh(u)), u = b (x + k x^3), b = sqrt(2/pi), k = 0.044715,
//         dy/dx = (1 + tanh u)/2 + x/2 (1 - tanh^2 u) b (1 + 3 k x^2)

static const double GELU_K = 0.044715;
static const double GELU_B = M_SQRT2 * M_2_SQRTPI * 0.5; // sqrt(2 / pi)
static const double GELU_PDF = M_2_SQRTPI * M_SQRT1_2 * 0.5; // 1 / sqrt(2 pi)

static bool gelu_tanh(const Node *n) { return !strcmp(node_str(n, "approximate"), "tanh"); }

static const char *gelu_form(const Node *n) {
  const char *a = node_str(n, "approximate");
  if (strcmp(a, "none") && strcmp(a, "tanh"))
    FAIL("approximate must be \"none\" or \"tanh\", got \"%s\"", a);
  return NULL;
}

static const char *shape_gelu(const Node *n, Type *out) {
  CHECK(gelu_form(n));
  return shape_unary(n, out);
}

static const char *shape_gelu_grad(const Node *n, Type *out) {
  CHECK(gelu_form(n));
  return shape_binary(n, out);
}

static double gelu_of(double x, bool tanh_form) {
  if (tanh_form)
    return 0.5 * x * (1 + tanh(GELU_B * (x + GELU_K * x * x * x)));
  return 0.5 * x * (1 + erf(x * M_SQRT1_2));
}

static double gelu_slope(double x, bool tanh_form) {
  if (tanh_form) {
    double t = tanh(GELU_B * (x + GELU_K * x * x * x));
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * GELU_B * (1 + 3 * GELU_K * x * x);
  }
  return 0.5 * (1 + erf(x * M_SQRT1_2)) + x * GELU_PDF * exp(-0.5 * x * x);
}

static void eval_gelu(const Node *n, Tensor *out, Tensor **in) {
  bool t = gelu_tanh(n);
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)gelu_of(in[0]->f[i], t);
}

static void eval_gelu_grad(const Node *n, Tensor *out, Tensor **in) {
  bool t = gelu_tanh(n);
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)(in[0]->f[i] * gelu_slope(in[1]->f[i], t));
}

static void grad_gelu(AD *ad, Node *n, Node *dy) {
  accumulate(ad, n->in[0], done(grad_op(ad, OP_gelu_grad, n, 2, (Node *[]){dy, n->in[0]})));
}

// tanh(b (x + k x^3)) of the tanh form.
static LExpr *gelu_tanh_inner(LExpr *x) {
  LExpr *cube = FMUL(FMUL(x, lx_copy(x)), lx_copy(x));
  return lx_un(LX_TANH, FMUL(F(GELU_B), FADD(lx_copy(x), FMUL(F(GELU_K), cube))));
}

static LExpr *elem_gelu(Lowering *L, Node *n, LExpr **v) {
  LExpr *x = operand(L, n, 0, v);
  LExpr *s = gelu_tanh(n) ? gelu_tanh_inner(x) : lx_un(LX_ERF, FMUL(lx_copy(x), F(M_SQRT1_2)));
  return FMUL(FMUL(lx_copy(x), F(0.5)), FADD(F(1), s));
}

static LExpr *elem_gelu_grad(Lowering *L, Node *n, LExpr **v) {
  LExpr *x = operand(L, n, 1, v), *slope;
  if (gelu_tanh(n)) {
    LExpr *t = gelu_tanh_inner(x);
    LExpr *left = FMUL(F(0.5), FADD(F(1), t));
    LExpr *inner = FMUL(F(GELU_B), FADD(F(1), FMUL(F(3 * GELU_K), FMUL(lx_copy(x), lx_copy(x)))));
    LExpr *right = FMUL(FMUL(FMUL(F(0.5), lx_copy(x)), FSUB(F(1), FMUL(lx_copy(t), lx_copy(t)))),
                        inner);
    slope = FADD(left, right);
  } else {
    LExpr *cdf = FMUL(F(0.5), FADD(F(1), lx_un(LX_ERF, FMUL(lx_copy(x), F(M_SQRT1_2)))));
    LExpr *pdf = FMUL(F(GELU_PDF), lx_un(LX_EXP, FMUL(FMUL(lx_copy(x), lx_copy(x)), F(-0.5))));
    slope = FADD(cdf, FMUL(lx_copy(x), pdf));
  }
  return FMUL(operand(L, n, 0, v), slope);
}

const OpRules rules_gelu = {
    .shape = shape_gelu, .eval = eval_gelu, .grad = grad_gelu, .elem = elem_gelu};
const OpRules rules_gelu_grad = {
    .shape = shape_gelu_grad, .eval = eval_gelu_grad, .elem = elem_gelu_grad};

// --- softmax and log_softmax over dim 1 of [N,C] --------------------------------------------

static const char *shape_softmax(const Node *n, Type *out) {
  CHECK(want_rank(n, 0, 2, "input"));
  *out = *T(n, 0);
  return NULL;
}

// softmax = exp(x - lse), log_softmax = x - lse, lse = logsumexp of the row.
static void eval_softmax(const Node *n, Tensor *out, Tensor **in) {
  int64_t N = in[0]->type.dim[0], C = in[0]->type.dim[1];
  for (int64_t i = 0; i < N; i++) {
    const float *x = in[0]->f + i * C;
    double lse = logsumexp(x, C);
    for (int64_t c = 0; c < C; c++)
      out->f[i * C + c] = (float)(n->op == OP_softmax ? exp(x[c] - lse) : x[c] - lse);
  }
}

// dx = softmax_grad(dy, y)
static void grad_softmax(AD *ad, Node *n, Node *dy) {
  accumulate(ad, n->in[0], done(grad_op(ad, OP_softmax_grad, n, 2, (Node *[]){dy, n})));
}

static void lower_rowwise(Lowering *L, Node *n) {
  LBuf *y = B(L, n), *x = B(L, n->in[0]);
  int64_t N = y->dim[0], C = y->dim[1];
  LKernel *k = kernel(L, n, NULL);
  LExpr *row, *i;
  LStmt *rl = loop(k, NULL, N, "n", &row);
  LBuf *m = local(L, "max", DT_F32), *s = local(L, "sum", DT_F32);
  if (n->op == OP_softmax || n->op == OP_log_softmax) {
    ls_add(rl, ST(m, F(-INFINITY)));
    LStmt *l = reduce_loop(k, rl, C, "c", &i);
    ls_add(l, ST(m, lx_bin(LX_MAX, LD(m), LD(x, row, i))));
    ls_add(rl, ST(s, F(0)));
    l = reduce_loop(k, rl, C, "c", &i);
    ls_add(l, ST(s, FADD(LD(s), lx_un(LX_EXP, FSUB(LD(x, row, i), LD(m))))));
    l = loop(k, rl, C, "c", &i);
    LExpr *z = FSUB(LD(x, row, i), LD(m));
    LExpr *e = n->op == OP_softmax ? FDIV(lx_un(LX_EXP, z), LD(s)) : FSUB(z, lx_un(LX_LOG, LD(s)));
    ls_add(l, ST(y, e, row, i));
    return;
  }
  LBuf *yv = B(L, n->in[1]); // (dy, y)
  ls_add(rl, ST(s, F(0)));
  LStmt *l = reduce_loop(k, rl, C, "c", &i);
  LExpr *term = n->op == OP_softmax_grad ? FMUL(LD(x, row, i), LD(yv, row, i)) : LD(x, row, i);
  ls_add(l, ST(s, FADD(LD(s), term)));
  l = loop(k, rl, C, "c", &i);
  LExpr *e = n->op == OP_softmax_grad
                 ? FMUL(LD(yv, row, i), FSUB(LD(x, row, i), LD(s)))
                 : FSUB(LD(x, row, i), FMUL(lx_un(LX_EXP, LD(yv, row, i)), LD(s)));
  ls_add(l, ST(y, e, row, i));
}

const OpRules rules_softmax = {
    .shape = shape_softmax, .eval = eval_softmax, .grad = grad_softmax, .lower = lower_rowwise};

// dx = log_softmax_grad(dy, y)
static void grad_log_softmax(AD *ad, Node *n, Node *dy) {
  accumulate(ad, n->in[0], done(grad_op(ad, OP_log_softmax_grad, n, 2, (Node *[]){dy, n})));
}

const OpRules rules_log_softmax = {
    .shape = shape_softmax, .eval = eval_softmax, .grad = grad_log_softmax, .lower = lower_rowwise};

// --- softmax_grad and log_softmax_grad ---------------------------------------------------------
//
// softmax_grad:     (dy, y) -> y * (dy - sum(dy * y))
// log_softmax_grad: (dy, y) -> dy - exp(y) * sum(dy)

static void eval_softmax_grad(const Node *n, Tensor *out, Tensor **in) {
  int64_t N = in[0]->type.dim[0], C = in[0]->type.dim[1];
  for (int64_t i = 0; i < N; i++) {
    const float *dy = in[0]->f + i * C, *y = in[1]->f + i * C;
    double s = 0;
    for (int64_t c = 0; c < C; c++)
      s += n->op == OP_softmax_grad ? (double)dy[c] * y[c] : dy[c];
    for (int64_t c = 0; c < C; c++)
      out->f[i * C + c] =
          (float)(n->op == OP_softmax_grad ? y[c] * (dy[c] - s) : dy[c] - exp(y[c]) * s);
  }
}

const OpRules rules_softmax_grad = {
    .shape = shape_binary, .eval = eval_softmax_grad, .lower = lower_rowwise};
const OpRules rules_log_softmax_grad = {
    .shape = shape_binary, .eval = eval_softmax_grad, .lower = lower_rowwise};

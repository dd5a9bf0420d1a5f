// Activations: relu and sigmoid elementwise, softmax and log_softmax over dim 1
// of [N,C], and their gradients. Each gradient reads the forward output y
// rather than the input, as PyTorch's do: it is at hand and says enough.
#include "lower.h"
#include "ops.h"

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

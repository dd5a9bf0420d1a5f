// The linear layer, nn.Linear's: x[N,K] w[M,K] (+ b[M]) -> y[N,M] = x w^T + b,
// and its two gradients, linear_grad_input and linear_grad_weight (the
// bias's is bias_grad, in batchnorm.c with the other per-channel sums).
#include "lower.h"
#include "ops.h"

// --- linear (x, w, b?) -> y ---------------------------------------------------------------

static const char *shape_linear(const Node *n, Type *out) {
  const Type *x = T(n, 0), *w = T(n, 1);
  CHECK(want_float_rank(n, 0, 2, "input"));
  CHECK(want_float_rank(n, 1, 2, "weight"));
  if (w->dtype != x->dtype) // autocast rounds both
    FAIL("weight must be %s like the input, got %s", dtype_name(x->dtype), type_str(w));
  if (w->dim[1] != x->dim[1])
    FAIL("expects %lld input features but gets %lld", (long long)w->dim[1], (long long)x->dim[1]);
  if (n->nin == 3 && (T(n, 2)->rank != 1 || T(n, 2)->dim[0] != w->dim[0] ||
                      T(n, 2)->dtype != x->dtype))
    FAIL("bias must be %s[%lld], got %s", dtype_name(x->dtype), (long long)w->dim[0],
         type_str(T(n, 2)));
  int64_t d[2] = {x->dim[0], w->dim[0]};
  *out = type_make(x->dtype, 2, d);
  return NULL;
}

static void eval_linear(const Node *n, Tensor *out, Tensor **in) {
  int64_t N = in[0]->type.dim[0], K = in[0]->type.dim[1], M = in[1]->type.dim[0];
  for (int64_t i = 0; i < N; i++)
    for (int64_t m = 0; m < M; m++) {
      double s = n->nin == 3 ? in[2]->f[m] : 0.0;
      for (int64_t k = 0; k < K; k++)
        s += (double)in[0]->f[i * K + k] * in[1]->f[m * K + k];
      out->f[i * M + m] = (float)s;
    }
}

// dx = linear_grad_input(dy, w), dw = linear_grad_weight(dy, x), db = bias_grad(dy).
static void grad_linear(AD *ad, Node *n, Node *dy) {
  Node **x = n->in;
  if (needs_grad(ad, x[0]))
    accumulate(ad, x[0], done(grad_op(ad, OP_linear_grad_input, n, 2, (Node *[]){dy, x[1]})));
  if (needs_grad(ad, x[1]))
    accumulate(ad, x[1], done(grad_op(ad, OP_linear_grad_weight, n, 2, (Node *[]){dy, x[0]})));
  if (n->nin == 3 && needs_grad(ad, x[2]))
    accumulate(ad, x[2], done(grad_op(ad, OP_bias_grad, n, 1, (Node *[]){dy})));
}

// Lowering
//
// linear:      y[n,m] = b[m] + sum_k x[n,k] w[m,k]
// grad_input:  dx[n,k] = sum_m dy[n,m] w[m,k]
// grad_weight: dw[m,k] = sum_n dy[n,m] x[n,k]

static void lower_linear(Lowering *L, Node *n) {
  LBuf *y = B(L, n), *x = B(L, n->in[0]), *w = B(L, n->in[1]);
  LBuf *b = n->nin == 3 ? B(L, n->in[2]) : NULL;
  LKernel *k = kernel(L, n, NULL);
  int64_t K_ = x->dim[1];
  k->flops = 2 * lbuf_numel(y) * K_;
  LExpr *v[2], *kk;
  LStmt *sp = each(k, NULL, y, v, (const char *[]){"n", "m"});
  ls_add(sp, ST(y, b ? LD(b, v[1]) : F(0), v[0], v[1]));
  LStmt *r = reduce_loop(k, sp, K_, "k", &kk);
  ls_add(r, ST(y, lx_fma(LD(x, v[0], kk), LD(w, v[1], kk), LD(y, v[0], v[1])), v[0], v[1]));
}

const OpRules rules_linear = {
    .shape = shape_linear, .eval = eval_linear, .grad = grad_linear, .lower = lower_linear};

// The two gradients' shape rule: (dy[N,M], w[M,K]) -> [N,K] and
// (dy[N,M], x[N,K]) -> [M,K].
static const char *shape_linear_grad(const Node *n, Type *out) {
  CHECK(want_float_rank(n, 0, 2, "gradient"));
  CHECK(want_float_rank(n, 1, 2, "operand 1"));
  const Type *dy = T(n, 0), *b = T(n, 1);
  bool gi = n->op == OP_linear_grad_input;
  if (gi ? b->dim[0] != dy->dim[1] : b->dim[0] != dy->dim[0])
    FAIL("gradient %s does not fit %s", type_str(dy), type_str(b));
  if (dy->dtype != b->dtype)
    FAIL("gradient %s and operand %s differ in precision", type_str(dy), type_str(b));
  int64_t d[2] = {gi ? dy->dim[0] : dy->dim[1], b->dim[1]};
  *out = type_make(b->dtype, 2, d);
  return NULL;
}

// --- linear_grad_input (dy[N,M], w[M,K]) -> dx[N,K] = dy w ----------------------------------

static void eval_linear_grad_input(const Node *n, Tensor *out, Tensor **in) {
  int64_t N = in[0]->type.dim[0], M = in[0]->type.dim[1], K = in[1]->type.dim[1];
  for (int64_t i = 0; i < N; i++)
    for (int64_t k = 0; k < K; k++) {
      double s = 0;
      for (int64_t m = 0; m < M; m++)
        s += (double)in[0]->f[i * M + m] * in[1]->f[m * K + k];
      out->f[i * K + k] = (float)s;
    }
}

static void lower_linear_grad_input(Lowering *L, Node *n) {
  LBuf *dx = B(L, n), *dy = B(L, n->in[0]), *w = B(L, n->in[1]);
  LKernel *k = kernel(L, n, NULL);
  int64_t M = dy->dim[1];
  k->flops = 2 * lbuf_numel(dx) * M;
  LExpr *v[2], *m;
  LStmt *sp = each(k, NULL, dx, v, (const char *[]){"n", "k"});
  ls_add(sp, ST(dx, F(0), v[0], v[1]));
  LStmt *r = reduce_loop(k, sp, M, "m", &m);
  ls_add(r, ST(dx, lx_fma(LD(dy, v[0], m), LD(w, m, v[1]), LD(dx, v[0], v[1])), v[0], v[1]));
}

const OpRules rules_linear_grad_input = {
    .shape = shape_linear_grad, .eval = eval_linear_grad_input, .lower = lower_linear_grad_input};

// --- linear_grad_weight (dy[N,M], x[N,K]) -> dw[M,K] = dy^T x --------------------------------

static void eval_linear_grad_weight(const Node *n, Tensor *out, Tensor **in) {
  int64_t N = in[0]->type.dim[0], M = in[0]->type.dim[1], K = in[1]->type.dim[1];
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) {
      double s = 0;
      for (int64_t i = 0; i < N; i++)
        s += (double)in[0]->f[i * M + m] * in[1]->f[i * K + k];
      out->f[m * K + k] = (float)s;
    }
}

static void lower_linear_grad_weight(Lowering *L, Node *n) {
  LBuf *dw = B(L, n), *dy = B(L, n->in[0]), *x = B(L, n->in[1]);
  LKernel *k = kernel(L, n, NULL);
  int64_t N = dy->dim[0];
  k->flops = 2 * lbuf_numel(dw) * N;
  LExpr *v[2], *b;
  LStmt *sp = each(k, NULL, dw, v, (const char *[]){"m", "k"});
  ls_add(sp, ST(dw, F(0), v[0], v[1]));
  LStmt *r = reduce_loop(k, sp, N, "n", &b);
  ls_add(r, ST(dw, lx_fma(LD(dy, b, v[0]), LD(x, b, v[1]), LD(dw, v[0], v[1])), v[0], v[1]));
}

const OpRules rules_linear_grad_weight = {
    .shape = shape_linear_grad, .eval = eval_linear_grad_weight, .lower = lower_linear_grad_weight};

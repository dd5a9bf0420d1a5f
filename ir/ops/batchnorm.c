// Batch normalisation, nn.BatchNorm2d's on [N,C,H,W] and nn.BatchNorm1d's on
// [N,C] (the same formulas over the dimensions but 1), and the per-channel
// reductions it is made of: batch_stats (the batch's mean and variances, also for the running
// statistics, row picks one), bias_grad (also the bias gradient of conv2d
// and linear), and its two gradients.
#include "lower.h"
#include "ops.h"

// x[N,C,...] -> [C]: the shape of a per-channel reduction, f32 whatever x's precision.
static const char *channel_rule(const Node *n, Type *out) {
  const Type *x = T(n, 0);
  if (x->rank < 2 || !dtype_is_float(x->dtype))
    FAIL("input must be a float [N,C,...] tensor, got %s", type_str(x));
  *out = type_make(DT_F32, 1, &x->dim[1]);
  return NULL;
}

// Operand i is batch_stats of a tensor shaped like operand x: [3, C].
static const char *stats_of(const Node *n, int x, int i) {
  const Type *s = T(n, i);
  if (s->rank != 2 || s->dtype != DT_F32 || s->dim[0] != 3 || s->dim[1] != T(n, x)->dim[1])
    FAIL("the batch statistics must be f32[3,%lld] (batch_stats), got %s",
         (long long)T(n, x)->dim[1], type_str(s));
  return NULL;
}

// Batch norm's input: [N,C] or [N,C,L] (nn.BatchNorm1d), [N,C,H,W] (nn.BatchNorm2d).
static const char *bn_input(const Node *n, int i) {
  const Type *x = T(n, i);
  if (x->rank < 2 || !dtype_is_float(x->dtype))
    FAIL("input must be a float [N,C], [N,C,L] or [N,C,H,W] tensor, got %s", type_str(x));
  return NULL;
}

static const char *per_channel(const Node *n, int x, int i, const char *what) {
  const Type *c = T(n, i);
  if (c->rank != 1 || c->dtype != DT_F32 || c->dim[0] != T(n, x)->dim[1])
    FAIL("%s must be f32[%lld], one per channel, got %s", what, (long long)T(n, x)->dim[1],
         type_str(c));
  return NULL;
}

// --- batch_stats x[N,C,...] -> [3,C]: the batch's statistics -----------------------------
//
// Per channel over (N, H, W), with M elements: the mean, the biased variance
// (what normalising divides by) and the unbiased one (what the running
// statistics take), as PyTorch's CPU kernels compute them: sums in double
// (its accscalar_t), each rounded once to float. Computed once per step and
// read by the normalisation, its gradients and the running statistics,
// under no_grad: batchnorm2d's own gradient rule accounts for them.

static const char *shape_batch_stats(const Node *n, Type *out) {
  const Type *x = T(n, 0);
  if (x->rank < 2 || !dtype_is_float(x->dtype))
    FAIL("input must be a float [N,C,...] tensor, got %s", type_str(x));
  if (x->dim[0] * (x->rank > 2 ? type_numel(x) / (x->dim[0] * x->dim[1]) : 1) < 2)
    FAIL("a batch's variance needs at least 2 values per channel, got %s", type_str(x));
  *out = type_make(DT_F32, 2, (int64_t[]){3, x->dim[1]});
  return NULL;
}

static void eval_batch_stats(const Node *n, Tensor *out, Tensor **in) {
  ChannelView v = channels(&in[0]->type);
  int64_t C = v.c, M = v.outer * v.inner;
  for (int64_t c = 0; c < C; c++) {
    double s = 0, ss = 0;
    for (int64_t o = 0; o < v.outer; o++)
      for (int64_t k = 0; k < v.inner; k++)
        s += in[0]->f[(o * C + c) * v.inner + k];
    double mean = s / (double)M;
    for (int64_t o = 0; o < v.outer; o++)
      for (int64_t k = 0; k < v.inner; k++) {
        double d = in[0]->f[(o * C + c) * v.inner + k] - mean;
        ss += d * d;
      }
    out->f[c] = (float)mean;
    out->f[C + c] = (float)(ss / (double)M);
    out->f[2 * C + c] = (float)(ss / (double)(M - 1));
  }
}

// Lowering, per channel: two passes over the channel's M values.
static LExpr *D(LExpr *e) { return lx_cast(LT_F64, e); }

// The sum over (n, h, w) of channel ch of x, in the double local acc, of
// term(x, dy, with) at each element (dy may be NULL), added to parent.
static void channel_sum(LKernel *k, LStmt *parent, LBuf *x, LBuf *dy, LExpr *ch, LBuf *acc,
                        LExpr *(*term)(LExpr *x, LExpr *dy, LBuf *with), LBuf *with) {
  LExpr *v[LMAX_RANK], *b;
  ls_add(parent, ST(acc, lx_f64(0)));
  LStmt *l = reduce_loop(k, parent, x->dim[0], "n", &b);
  v[0] = b;
  v[1] = ch;
  for (int d = 2; d < x->rank; d++)
    l = reduce_loop(k, l, x->dim[d], d == 2 ? "h" : "w", &v[d]);
  ls_add(l, ST(acc, FADD(LD(acc), term(D(LDV(x, v)), dy ? D(LDV(dy, v)) : NULL, with))));
}

static LExpr *term_x(LExpr *x, LExpr *dy, LBuf *with) { return x; }
// (x - mean)^2, mean a double local.
static LExpr *term_sq(LExpr *x, LExpr *dy, LBuf *mean) {
  return FMUL(FSUB(x, LD(mean)), FSUB(lx_copy(x), LD(mean)));
}
// dy * (x - mean), mean a double local.
static LExpr *term_dot(LExpr *x, LExpr *dy, LBuf *mean) { return FMUL(dy, FSUB(x, LD(mean))); }

static void lower_batch_stats(Lowering *L, Node *n) {
  LBuf *x = B(L, n->in[0]), *out = B(L, n);
  int64_t C = x->dim[1], M = lbuf_numel(x) / C;
  LKernel *k = kernel(L, n, NULL);
  LBuf *acc = local(L, "sum", DT_F64), *mean = local(L, "mean", DT_F64);
  LExpr *ch;
  LStmt *cl = loop(k, NULL, C, "c", &ch);
  channel_sum(k, cl, x, NULL, ch, acc, term_x, NULL);
  ls_add(cl, ST(mean, FDIV(LD(acc), lx_f64((double)M))));
  ls_add(cl, ST(out, lx_cast(LT_F32, LD(mean)), K(0), lx_copy(ch)));
  channel_sum(k, cl, x, NULL, ch, acc, term_sq, mean);
  ls_add(cl, ST(out, lx_cast(LT_F32, FDIV(LD(acc), lx_f64((double)M))), K(1), lx_copy(ch)));
  ls_add(cl, ST(out, lx_cast(LT_F32, FDIV(LD(acc), lx_f64((double)(M - 1)))), K(2), lx_copy(ch)));
}

const OpRules rules_batch_stats = {.shape = shape_batch_stats,
                                   .eval = eval_batch_stats,
                                   .no_grad = true,
                                   .lower = lower_batch_stats};

// --- row t[R,C] -> [C]: one row, a statistic for the running ones --------------------------

static const char *shape_row(const Node *n, Type *out) {
  const Type *t = T(n, 0);
  if (t->rank != 2 || t->dtype != DT_F32)
    FAIL("input must be an f32 [R,C] tensor, got %s", type_str(t));
  int64_t i = node_int(n, "index");
  if (i < 0 || i >= t->dim[0])
    FAIL("row %lld of %s does not exist", (long long)i, type_str(t));
  *out = type_make(DT_F32, 1, &t->dim[1]);
  return NULL;
}

static void eval_row(const Node *n, Tensor *out, Tensor **in) {
  int64_t C = out->type.dim[0];
  for (int64_t c = 0; c < C; c++)
    out->f[c] = in[0]->f[node_int(n, "index") * C + c];
}

static LExpr *elem_row(Lowering *L, Node *n, LExpr **v) {
  return LD(B(L, n->in[0]), K(node_int(n, "index")), v[0]);
}

const OpRules rules_row = {.shape = shape_row, .eval = eval_row, .no_grad = true, .elem = elem_row};

// --- batchnorm2d (x, gamma, beta, stats) and batchnorm2d_infer (x, gamma, beta, mean, var) --
//
// Training mode normalises with the batch's mean and biased variance over
// (N, H, W), or N alone (rows 0 and 1 of batch_stats): xhat = (x - mean) /
// sqrt(var + eps), y = gamma xhat + beta. Eval mode uses the running
// statistics instead. As PyTorch: 1/sqrt(var + eps) in double, rounded once; the
// normalisation in float.

static const char *shape_batchnorm2d(const Node *n, Type *out) {
  CHECK(bn_input(n, 0));
  for (int i = 1; i < 3; i++)
    CHECK(per_channel(n, 0, i, "batch-norm parameter"));
  if (n->op == OP_batchnorm2d_infer)
    for (int i = 3; i < 5; i++)
      CHECK(per_channel(n, 0, i, "running statistic"));
  else
    CHECK(stats_of(n, 0, 3));
  *out = *T(n, 0);
  return NULL;
}

// The mean and the variance that normalise channel c.
static void norm_stats(const Node *n, Tensor **in, int64_t c, double *mean, double *var) {
  const Tensor *st = n->op == OP_batchnorm2d ? in[3] : in[2 + (n->op == OP_batchnorm2d_grad_input)];
  int64_t C = st->type.dim[1];
  *mean = st->f[c], *var = st->f[C + c];
}

static void eval_batchnorm2d(const Node *n, Tensor *out, Tensor **in) {
  ChannelView v = channels(&in[0]->type);
  double eps = node_float(n, "eps");
  for (int64_t c = 0; c < v.c; c++) {
    double mean, var;
    norm_stats(n, in, c, &mean, &var);
    double invstd = 1.0 / sqrt(var + eps), gamma = in[1]->f[c], beta = in[2]->f[c];
    for (int64_t o = 0; o < v.outer; o++)
      for (int64_t k = 0; k < v.inner; k++) {
        int64_t i = (o * v.c + c) * v.inner + k;
        out->f[i] = (float)((in[0]->f[i] - mean) * invstd * gamma + beta);
      }
  }
}

// Eval mode computes as PyTorch's CPU kernel does: per channel alpha =
// gamma * invstd and beta' = beta - mean * alpha in float, then y = x *
// alpha + beta' (one fused multiply-add here). The normalisation is then an
// elementwise multiply-add that fuse-epilogue moves into the convolution
// before it. Training mode keeps the textbook ((x - mean) * invstd) * gamma
// + beta its gradients are written for.
static void eval_batchnorm2d_infer(const Node *n, Tensor *out, Tensor **in) {
  ChannelView v = channels(&in[0]->type);
  double eps = node_float(n, "eps");
  for (int64_t c = 0; c < v.c; c++) {
    float rstd = (float)(1.0 / sqrt((double)in[4]->f[c] + eps));
    float alpha = in[1]->f[c] * rstd;
    float beta = in[2]->f[c] - in[3]->f[c] * alpha;
    for (int64_t o = 0; o < v.outer; o++)
      for (int64_t k = 0; k < v.inner; k++) {
        int64_t i = (o * v.c + c) * v.inner + k;
        out->f[i] = fmaf(in[0]->f[i], alpha, beta);
      }
  }
}

// dgamma = batchnorm2d_grad_gamma(dy, x, stats), dbeta = bias_grad(dy),
// dx = batchnorm2d_grad_input(dy, x, gamma, stats, dgamma, dbeta): the input
// gradient reuses the two sums rather than summing again.
static void grad_batchnorm2d(AD *ad, Node *n, Node *dy) {
  Node **x = n->in;
  Node *dgamma = done(grad_op(ad, OP_batchnorm2d_grad_gamma, n, 3, (Node *[]){dy, x[0], x[3]}));
  Node *dbeta = done(grad_op(ad, OP_bias_grad, n, 1, (Node *[]){dy}));
  if (needs_grad(ad, x[0]))
    accumulate(ad, x[0],
               done(grad_op(ad, OP_batchnorm2d_grad_input, n, 6,
                            (Node *[]){dy, x[0], x[1], x[3], dgamma, dbeta})));
  accumulate(ad, x[1], dgamma);
  accumulate(ad, x[2], dbeta);
}

// Lowering: per channel, the statistics, then one pass over the elements.
// rstd = 1/sqrt(var + eps) in double, rounded once; mean a float.
static void norm_locals(Lowering *L, Node *n, LStmt *cl, LExpr *ch, LBuf *mean, LBuf *rstd) {
  double eps = node_float(n, "eps");
  LExpr *m, *var;
  if (n->op == OP_batchnorm2d_infer) {
    m = LD(B(L, n->in[3]), lx_copy(ch));
    var = LD(B(L, n->in[4]), lx_copy(ch));
  } else {
    LBuf *st = B(L, n->in[n->op == OP_batchnorm2d ? 3 : 2 + (n->op == OP_batchnorm2d_grad_input)]);
    m = LD(st, K(0), lx_copy(ch));
    var = LD(st, K(1), lx_copy(ch));
  }
  ls_add(cl, ST(mean, m));
  ls_add(cl, ST(rstd, lx_cast(LT_F32, FDIV(lx_f64(1), lx_un(LX_SQRT, FADD(D(var), lx_f64(eps)))))));
}

// The nest over channel ch's elements (n, h, w) inside cl; v gets the indices.
static LStmt *channel_nest(LKernel *k, LStmt *cl, LBuf *x, LExpr *ch, LExpr **v) {
  LStmt *l = loop(k, cl, x->dim[0], "n", &v[0]);
  v[1] = ch;
  for (int d = 2; d < x->rank; d++)
    l = loop(k, l, x->dim[d], d == 2 ? "h" : "w", &v[d]);
  return l;
}

static void lower_batchnorm2d(Lowering *L, Node *n) {
  LBuf *x = B(L, n->in[0]), *out = B(L, n);
  LKernel *k = kernel(L, n, NULL);
  LBuf *mean = local(L, "mean", DT_F32), *rstd = local(L, "rstd", DT_F32);
  LExpr *ch, *v[LMAX_RANK];
  LStmt *cl = loop(k, NULL, x->dim[1], "c", &ch);
  norm_locals(L, n, cl, ch, mean, rstd);
  LStmt *l = channel_nest(k, cl, x, ch, v);
  LExpr *e = FADD(FMUL(FMUL(FSUB(LDV(x, v), LD(mean)), LD(rstd)), LD(B(L, n->in[1]), lx_copy(ch))),
                  LD(B(L, n->in[2]), lx_copy(ch)));
  ls_add(l, ls_store(out, v, e));
}

const OpRules rules_batchnorm2d = {.shape = shape_batchnorm2d,
                                   .eval = eval_batchnorm2d,
                                   .grad = grad_batchnorm2d,
                                   .lower = lower_batchnorm2d};

// Eval mode: a small kernel computes each channel's alpha and beta' into
// NAME.affine[2,C] (rstd as in training mode), then a plain elementwise
// nest y = fma(x, alpha, beta').
static void lower_batchnorm2d_infer(Lowering *L, Node *n) {
  LBuf *x = B(L, n->in[0]), *out = B(L, n);
  int64_t C = x->dim[1];
  LBuf *affine = lfunc_buf(L->f, xformat("%s.affine", out->name), DT_F32, 2,
                           (int64_t[]){2, C}, LB_WORKSPACE);
  LKernel *k = kernel(L, n, "batchnorm2d_affine");
  LBuf *mean = local(L, "mean", DT_F32), *rstd = local(L, "rstd", DT_F32);
  LExpr *ch, *v[LMAX_RANK];
  LStmt *cl = loop(k, NULL, C, "c", &ch);
  norm_locals(L, n, cl, ch, mean, rstd);
  LExpr *alpha = FMUL(LD(B(L, n->in[1]), lx_copy(ch)), LD(rstd));
  ls_add(cl, ST(affine, alpha, K(0), lx_copy(ch)));
  ls_add(cl, ST(affine, FSUB(LD(B(L, n->in[2]), lx_copy(ch)), FMUL(LD(mean), LD(affine, K(0), lx_copy(ch)))),
                K(1), lx_copy(ch)));
  LKernel *apply = kernel(L, n, NULL);
  LStmt *l = each(apply, NULL, out, v, NULL);
  ls_add(l, ls_store(out, v, lx_fma(LDV(x, v), LD(affine, K(0), lx_copy(v[1])),
                                    LD(affine, K(1), lx_copy(v[1])))));
}

// Only the forward graph of eval mode has it: never differentiated.
const OpRules rules_batchnorm2d_infer = {
    .shape = shape_batchnorm2d, .eval = eval_batchnorm2d_infer, .lower = lower_batchnorm2d_infer};

// --- batchnorm2d_grad_gamma (dy, x, stats) and batchnorm2d_grad_input (dy, x, gamma, stats,
//     dgamma, dbeta) ------------------------------------------------------------------------
//
// With M = N*H*W elements per channel, mean and variance depend on x too:
//   dgamma = sum dy * xhat            (sum dy * (x - mean) in double, times rstd)
//   dx     = gamma * rstd / M * (M dy - dbeta - xhat * dgamma)

static const char *shape_batchnorm2d_grad_gamma(const Node *n, Type *out) {
  CHECK(bn_input(n, 1));
  CHECK(want_same(n, 0, 1));
  CHECK(stats_of(n, 1, 2));
  *out = type_make(DT_F32, 1, &T(n, 1)->dim[1]);
  return NULL;
}

static const char *shape_batchnorm2d_grad_input(const Node *n, Type *out) {
  CHECK(bn_input(n, 1));
  CHECK(want_same(n, 0, 1));
  CHECK(per_channel(n, 1, 2, "gamma"));
  CHECK(stats_of(n, 1, 3));
  CHECK(per_channel(n, 1, 4, "gamma's gradient"));
  CHECK(per_channel(n, 1, 5, "beta's gradient"));
  *out = *T(n, 1);
  return NULL;
}

static void eval_batchnorm2d_grad(const Node *n, Tensor *out, Tensor **in) {
  const Tensor *dy = in[0], *x = in[1];
  ChannelView v = channels(&x->type);
  double eps = node_float(n, "eps"), M = (double)(v.outer * v.inner);
  for (int64_t c = 0; c < v.c; c++) {
    double mean, var;
    norm_stats(n, in, c, &mean, &var);
    double invstd = 1.0 / sqrt(var + eps);
    if (n->op == OP_batchnorm2d_grad_gamma) {
      double dot = 0;
      for (int64_t o = 0; o < v.outer; o++)
        for (int64_t k = 0; k < v.inner; k++) {
          int64_t i = (o * v.c + c) * v.inner + k;
          dot += dy->f[i] * (x->f[i] - mean);
        }
      out->f[c] = (float)(dot * invstd);
      continue;
    }
    double gamma = in[2]->f[c], dgamma = in[4]->f[c], dbeta = in[5]->f[c];
    for (int64_t o = 0; o < v.outer; o++)
      for (int64_t k = 0; k < v.inner; k++) {
        int64_t i = (o * v.c + c) * v.inner + k;
        double xhat = (x->f[i] - mean) * invstd;
        out->f[i] = (float)(gamma * invstd * (dy->f[i] - dbeta / M - xhat * dgamma / M));
      }
  }
}

static void lower_batchnorm2d_grad_gamma(Lowering *L, Node *n) {
  LBuf *dy = B(L, n->in[0]), *x = B(L, n->in[1]), *out = B(L, n);
  LKernel *k = kernel(L, n, NULL);
  LBuf *mean = local(L, "mean", DT_F32), *rstd = local(L, "rstd", DT_F32);
  LBuf *mean_d = local(L, "mean_d", DT_F64), *acc = local(L, "sum", DT_F64);
  LExpr *ch;
  LStmt *cl = loop(k, NULL, x->dim[1], "c", &ch);
  norm_locals(L, n, cl, ch, mean, rstd);
  ls_add(cl, ST(mean_d, D(LD(mean))));
  channel_sum(k, cl, x, dy, ch, acc, term_dot, mean_d);
  ls_add(cl, ST(out, lx_cast(LT_F32, FMUL(LD(acc), D(LD(rstd)))), lx_copy(ch)));
}

static void lower_batchnorm2d_grad_input(Lowering *L, Node *n) {
  LBuf *dy = B(L, n->in[0]), *x = B(L, n->in[1]), *out = B(L, n);
  int64_t M = lbuf_numel(x) / x->dim[1];
  LKernel *k = kernel(L, n, NULL);
  LBuf *mean = local(L, "mean", DT_F32), *rstd = local(L, "rstd", DT_F32);
  LBuf *scale = local(L, "scale", DT_F32);
  LExpr *ch, *v[LMAX_RANK];
  LStmt *cl = loop(k, NULL, x->dim[1], "c", &ch);
  norm_locals(L, n, cl, ch, mean, rstd);
  ls_add(cl, ST(scale, FDIV(FMUL(LD(B(L, n->in[2]), lx_copy(ch)), LD(rstd)), F((double)M))));
  LStmt *l = channel_nest(k, cl, x, ch, v);
  LExpr *xhat = FMUL(FSUB(LDV(x, v), LD(mean)), LD(rstd));
  LExpr *dgamma = LD(B(L, n->in[4]), lx_copy(ch)), *dbeta = LD(B(L, n->in[5]), lx_copy(ch));
  LExpr *e = FSUB(FSUB(FMUL(F((double)M), LDV(dy, v)), dbeta), FMUL(xhat, dgamma));
  ls_add(l, ls_store(out, v, FMUL(LD(scale), e)));
}

const OpRules rules_batchnorm2d_grad_gamma = {.shape = shape_batchnorm2d_grad_gamma,
                                              .eval = eval_batchnorm2d_grad,
                                              .lower = lower_batchnorm2d_grad_gamma};
const OpRules rules_batchnorm2d_grad_input = {.shape = shape_batchnorm2d_grad_input,
                                              .eval = eval_batchnorm2d_grad,
                                              .lower = lower_batchnorm2d_grad_input};

// --- bias_grad dy[N,C,...] -> [C]: the gradient of a bias broadcast over all dims but 1 -----

static void eval_bias_grad(const Node *n, Tensor *out, Tensor **in) {
  ChannelView v = channels(&in[0]->type);
  for (int64_t c = 0; c < v.c; c++) {
    double s = 0;
    for (int64_t o = 0; o < v.outer; o++)
      for (int64_t k = 0; k < v.inner; k++)
        s += in[0]->f[(o * v.c + c) * v.inner + k];
    out->f[c] = (float)s;
  }
}

// bias_grad: db[c] = sum over every other dimension of dy[n,c,...].
// The sum in double, as batch norm's bias gradient in PyTorch: a float sum
// of N*H*W terms that nearly cancel loses digits.
static void lower_bias_grad(Lowering *L, Node *n) {
  LBuf *db = B(L, n), *dy = B(L, n->in[0]);
  LKernel *k = kernel(L, n, NULL);
  LBuf *acc = local(L, "sum", DT_F64);
  LExpr *c, *v[LMAX_RANK];
  LStmt *sp = each(k, NULL, db, &c, (const char *[]){"c"});
  ls_add(sp, ST(acc, lx_f64(0)));
  LStmt *r = reduce_loop(k, sp, dy->dim[0], "n", &v[0]);
  v[1] = c;
  for (int d = 2; d < dy->rank; d++)
    r = reduce_loop(k, r, dy->dim[d], d == 2 ? "h" : "w", &v[d]);
  ls_add(r, ST(acc, FADD(LD(acc), lx_cast(LT_F64, LDV(dy, v)))));
  ls_add(sp, ST(db, lx_cast(LT_F32, LD(acc)), lx_copy(c)));
}

const OpRules rules_bias_grad = {
    .shape = channel_rule, .eval = eval_bias_grad, .lower = lower_bias_grad};

// Batch normalisation, nn.BatchNorm2d's, and the per-channel reductions it is
// made of: channel_mean and channel_var (its running statistics), bias_grad
// (also the bias gradient of conv2d and linear), and its two gradients.
#include "lower.h"
#include "ops.h"

// x[N,C,...] -> [C]: the shape of every per-channel reduction.
static const char *channel_rule(const Node *n, Type *out) {
  const Type *x = T(n, 0);
  if (x->rank < 2 || x->dtype != DT_F32)
    FAIL("input must be an f32 [N,C,...] tensor, got %s", type_str(x));
  *out = type_make(DT_F32, 1, &x->dim[1]);
  return NULL;
}

static const char *per_channel(const Node *n, int x, int i, const char *what) {
  const Type *c = T(n, i);
  if (c->rank != 1 || c->dtype != DT_F32 || c->dim[0] != T(n, x)->dim[1])
    FAIL("%s must be f32[%lld], one per channel, got %s", what, (long long)T(n, x)->dim[1],
         type_str(c));
  return NULL;
}

// Per-channel mean and variance (divided by count - unbiased).
static void channel_stats(const Tensor *x, int64_t c, bool unbiased, double *mean, double *var) {
  ChannelView v = channels(&x->type);
  int64_t count = v.outer * v.inner;
  double s = 0, ss = 0;
  for (int64_t o = 0; o < v.outer; o++)
    for (int64_t k = 0; k < v.inner; k++)
      s += x->f[(o * v.c + c) * v.inner + k];
  *mean = s / count;
  for (int64_t o = 0; o < v.outer; o++)
    for (int64_t k = 0; k < v.inner; k++) {
      double d = x->f[(o * v.c + c) * v.inner + k] - *mean;
      ss += d * d;
    }
  *var = ss / (double)(count - unbiased);
}

// --- batchnorm2d (x, gamma, beta) and batchnorm2d_infer (x, gamma, beta, mean, var) ---------
//
// Training mode normalises with the batch's mean and biased variance over
// (N, H, W): xhat = (x - mean) / sqrt(var + eps), y = gamma xhat + beta.
// Eval mode uses the running statistics instead.

static const char *shape_batchnorm2d(const Node *n, Type *out) {
  CHECK(want_rank(n, 0, 4, "input"));
  for (int i = 1; i < n->nin; i++)
    CHECK(per_channel(n, 0, i, "batch-norm parameter"));
  *out = *T(n, 0);
  return NULL;
}

static void eval_batchnorm2d(const Node *n, Tensor *out, Tensor **in) {
  ChannelView v = channels(&in[0]->type);
  double eps = node_float(n, "eps");
  for (int64_t c = 0; c < v.c; c++) {
    double mean, var;
    if (n->op == OP_batchnorm2d)
      channel_stats(in[0], c, false, &mean, &var);
    else
      mean = in[3]->f[c], var = in[4]->f[c];
    double invstd = 1.0 / sqrt(var + eps), gamma = in[1]->f[c], beta = in[2]->f[c];
    for (int64_t o = 0; o < v.outer; o++)
      for (int64_t k = 0; k < v.inner; k++) {
        int64_t i = (o * v.c + c) * v.inner + k;
        out->f[i] = (float)((in[0]->f[i] - mean) * invstd * gamma + beta);
      }
  }
}

// dx = batchnorm2d_grad_input(dy, x, gamma), dgamma = batchnorm2d_grad_gamma(dy, x),
// dbeta = bias_grad(dy).
static void grad_batchnorm2d(AD *ad, Node *n, Node *dy) {
  Node **x = n->in;
  if (needs_grad(ad, x[0]))
    accumulate(ad, x[0],
               done(grad_op(ad, OP_batchnorm2d_grad_input, n, 3, (Node *[]){dy, x[0], x[1]})));
  if (needs_grad(ad, x[1]))
    accumulate(ad, x[1],
               done(grad_op(ad, OP_batchnorm2d_grad_gamma, n, 2, (Node *[]){dy, x[0]})));
  if (needs_grad(ad, x[2]))
    accumulate(ad, x[2], done(grad_op(ad, OP_bias_grad, n, 1, (Node *[]){dy})));
}

// Lowering the batch norms and channel statistics, one kernel shape for all six ops.
//
// Per channel over (N, H, W), as PyTorch's CPU kernels: the sums in double
// (its accscalar_t), the mean and 1/sqrt(var + eps) rounded once to float,
// the normalisation in float; xhat = (x - mean) * rstd. The variance divides
// by M for normalising, by M - 1 for the running statistics.

static LExpr *D(LExpr *e) { return lx_cast(LT_F64, e); }

// Sums over (n, h, w) of channel ch into the double local acc: x, (x - mean)^2
// or dy * (x - mean), with mean the double local mean_d.
static void channel_sum(Lowering *L, LKernel *k, LStmt *parent, LBuf *x, LBuf *dy, LExpr *ch,
                        LBuf *acc, LBuf *mean_d, int mode) {
  LExpr *v[LMAX_RANK], *b;
  ls_add(parent, ST(acc, lx_f64(0)));
  LStmt *l = reduce_loop(k, parent, x->dim[0], "n", &b);
  v[0] = b;
  v[1] = ch;
  for (int d = 2; d < x->rank; d++)
    l = reduce_loop(k, l, x->dim[d], d == 2 ? "h" : "w", &v[d]);
  LExpr *xv = D(LDV(x, v)), *t;
  if (mode == 0)
    t = xv;
  else if (mode == 1)
    t = FMUL(FSUB(xv, LD(mean_d)), FSUB(lx_copy(xv), LD(mean_d)));
  else
    t = FMUL(D(LDV(dy, v)), FSUB(xv, LD(mean_d)));
  ls_add(l, ST(acc, FADD(LD(acc), t)));
}

static void lower_batchnorm(Lowering *L, Node *n) {
  bool has_eps = op_attr_index(n->op, "eps") >= 0;
  double eps = has_eps ? node_float(n, "eps") : 0.0;
  bool grads = n->op == OP_batchnorm2d_grad_input || n->op == OP_batchnorm2d_grad_gamma;
  LBuf *x = B(L, n->in[grads ? 1 : 0]), *out = B(L, n);
  int64_t C = x->dim[1], M = lbuf_numel(x) / C;
  LKernel *k = kernel(L, n, NULL);
  LBuf *mean = local(L, "mean", DT_F32), *var = local(L, "var", DT_F64);
  LBuf *rstd = local(L, "rstd", DT_F32), *acc = local(L, "sum", DT_F64);
  LBuf *mean_d = local(L, "mean_d", DT_F64);
  LExpr *ch;
  LStmt *cl = loop(k, NULL, C, "c", &ch);
  // The mean and the variance (biased, or not) of channel ch of buffer b.
#define STATS(b, unbiased)                                                                         \
  do {                                                                                             \
    channel_sum(L, k, cl, b, NULL, ch, acc, NULL, 0);                                              \
    ls_add(cl, ST(mean_d, FDIV(LD(acc), lx_f64((double)M))));                                      \
    ls_add(cl, ST(mean, lx_cast(LT_F32, LD(mean_d))));                                             \
    channel_sum(L, k, cl, b, NULL, ch, acc, mean_d, 1);                                            \
    ls_add(cl, ST(var, FDIV(LD(acc), lx_f64((double)((unbiased) ? M - 1 : M)))));                  \
  } while (0)
#define RSTD()                                                                                     \
  ls_add(cl, ST(rstd, lx_cast(LT_F32, FDIV(lx_f64(1), lx_un(LX_SQRT, FADD(LD(var), lx_f64(eps)))))))
  LExpr *v[LMAX_RANK], *b;
  switch (n->op) {
  case OP_batchnorm2d:
  case OP_batchnorm2d_infer: {
    if (n->op == OP_batchnorm2d) {
      STATS(x, false);
    } else {
      ls_add(cl, ST(mean, LD(B(L, n->in[3]), ch)));
      ls_add(cl, ST(var, D(LD(B(L, n->in[4]), lx_copy(ch)))));
    }
    RSTD();
    LStmt *l = loop(k, cl, x->dim[0], "n", &b);
    v[0] = b, v[1] = ch;
    for (int d = 2; d < x->rank; d++)
      l = loop(k, l, x->dim[d], d == 2 ? "h" : "w", &v[d]);
    LExpr *e =
        FADD(FMUL(FMUL(FSUB(LDV(x, v), LD(mean)), LD(rstd)), LD(B(L, n->in[1]), lx_copy(ch))),
             LD(B(L, n->in[2]), lx_copy(ch)));
    ls_add(l, ls_store(out, v, e));
    break;
  }
  case OP_channel_mean:
    channel_sum(L, k, cl, x, NULL, ch, acc, NULL, 0);
    ls_add(cl, ST(out, lx_cast(LT_F32, FDIV(LD(acc), lx_f64((double)M))), ch));
    break;
  case OP_channel_var:
    STATS(x, node_int(n, "unbiased") != 0);
    ls_add(cl, ST(out, lx_cast(LT_F32, LD(var)), ch));
    break;
  case OP_batchnorm2d_grad_gamma:
  case OP_batchnorm2d_grad_input: {
    // (dy, x[, gamma]): dx = gamma * rstd / M * (M dy - sum(dy) - xhat * sum(dy * xhat)),
    // sum(dy * xhat) = sum(dy * (x - mean)) * rstd.
    LBuf *dy = B(L, n->in[0]);
    STATS(x, false);
    RSTD();
    LBuf *sdyx = local(L, "sdyx", DT_F32), *sdy = local(L, "sdy", DT_F32);
    channel_sum(L, k, cl, x, dy, ch, acc, mean_d, 2);
    ls_add(cl, ST(sdyx, lx_cast(LT_F32, FMUL(LD(acc), D(LD(rstd))))));
    if (n->op == OP_batchnorm2d_grad_gamma) {
      ls_add(cl, ST(out, LD(sdyx), ch));
      break;
    }
    channel_sum(L, k, cl, dy, NULL, ch, acc, NULL, 0);
    ls_add(cl, ST(sdy, lx_cast(LT_F32, LD(acc))));
    LBuf *scale = local(L, "scale", DT_F32);
    ls_add(cl, ST(scale, FDIV(FMUL(LD(B(L, n->in[2]), lx_copy(ch)), LD(rstd)), F((double)M))));
    LStmt *l = loop(k, cl, x->dim[0], "n", &b);
    v[0] = b, v[1] = ch;
    for (int d = 2; d < x->rank; d++)
      l = loop(k, l, x->dim[d], d == 2 ? "h" : "w", &v[d]);
    LExpr *xhat = FMUL(FSUB(LDV(x, v), LD(mean)), LD(rstd));
    LExpr *e = FSUB(FSUB(FMUL(F((double)M), LDV(dy, v)), LD(sdy)), FMUL(xhat, LD(sdyx)));
    ls_add(l, ls_store(out, v, FMUL(LD(scale), e)));
    break;
  }
  default:
    unreachable();
  }
#undef STATS
#undef RSTD
}

const OpRules rules_batchnorm2d = {.shape = shape_batchnorm2d,
                                   .eval = eval_batchnorm2d,
                                   .grad = grad_batchnorm2d,
                                   .lower = lower_batchnorm};

// Only the forward graph of eval mode has it: never differentiated.
const OpRules rules_batchnorm2d_infer = {
    .shape = shape_batchnorm2d, .eval = eval_batchnorm2d, .lower = lower_batchnorm};

// --- batchnorm2d_grad_input (dy, x, gamma) and batchnorm2d_grad_gamma (dy, x) ---------------
//
// With M = N*H*W elements per channel, mean and variance depend on x too:
//   dgamma = sum dy * xhat
//   dx     = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))

static const char *shape_batchnorm2d_grad_input(const Node *n, Type *out) {
  CHECK(want_rank(n, 1, 4, "input"));
  CHECK(want_same(n, 0, 1));
  CHECK(per_channel(n, 1, 2, "gamma"));
  *out = *T(n, 1);
  return NULL;
}

static const char *shape_batchnorm2d_grad_gamma(const Node *n, Type *out) {
  CHECK(want_rank(n, 1, 4, "input"));
  CHECK(want_same(n, 0, 1));
  return channel_rule(n, out);
}

static void eval_batchnorm2d_grad(const Node *n, Tensor *out, Tensor **in) {
  const Tensor *dy = in[0], *x = in[1];
  ChannelView v = channels(&x->type);
  double eps = node_float(n, "eps"), M = (double)(v.outer * v.inner);
  for (int64_t c = 0; c < v.c; c++) {
    double mean, var, sdy = 0, sdyx = 0;
    channel_stats(x, c, false, &mean, &var);
    double invstd = 1.0 / sqrt(var + eps);
    for (int64_t o = 0; o < v.outer; o++)
      for (int64_t k = 0; k < v.inner; k++) {
        int64_t i = (o * v.c + c) * v.inner + k;
        sdy += dy->f[i];
        sdyx += dy->f[i] * (x->f[i] - mean) * invstd;
      }
    if (n->op == OP_batchnorm2d_grad_gamma) {
      out->f[c] = (float)sdyx;
      continue;
    }
    double gamma = in[2]->f[c];
    for (int64_t o = 0; o < v.outer; o++)
      for (int64_t k = 0; k < v.inner; k++) {
        int64_t i = (o * v.c + c) * v.inner + k;
        double xhat = (x->f[i] - mean) * invstd;
        out->f[i] = (float)(gamma * invstd * (dy->f[i] - sdy / M - xhat * sdyx / M));
      }
  }
}

const OpRules rules_batchnorm2d_grad_input = {
    .shape = shape_batchnorm2d_grad_input, .eval = eval_batchnorm2d_grad, .lower = lower_batchnorm};
const OpRules rules_batchnorm2d_grad_gamma = {
    .shape = shape_batchnorm2d_grad_gamma, .eval = eval_batchnorm2d_grad, .lower = lower_batchnorm};

// --- channel_mean and channel_var: x[N,C,...] -> [C] --------------------------------------
//
// The batch statistics that update the running ones, under no_grad as in PyTorch.

static void eval_channel_stat(const Node *n, Tensor *out, Tensor **in) {
  bool unbiased = n->op == OP_channel_var && node_int(n, "unbiased");
  for (int64_t c = 0; c < out->type.dim[0]; c++) {
    double mean, var;
    channel_stats(in[0], c, unbiased, &mean, &var);
    out->f[c] = (float)(n->op == OP_channel_mean ? mean : var);
  }
}

const OpRules rules_channel_mean = {
    .shape = channel_rule, .eval = eval_channel_stat, .no_grad = true, .lower = lower_batchnorm};
const OpRules rules_channel_var = {
    .shape = channel_rule, .eval = eval_channel_stat, .no_grad = true, .lower = lower_batchnorm};

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

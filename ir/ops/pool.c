// Pooling, nn.MaxPool2d's and nn.AvgPool2d's (floor mode), and their
// gradients. Window (oh, ow) covers rows oh*sh-ph .. +kh-1 and columns likewise;
// the parts in the padding are skipped (max pooling pads with -inf) but count
// in avg pooling's divisor (count_include_pad=True), as in PyTorch.
#include "lower.h"
#include "ops.h"

#include <stdlib.h>

// The shape rule all four share: the pooled type of x.
static const char *pool_rule(const Node *n, const Type *x, Type *out) {
  CHECK(want_pair(n, "kernel", 1));
  CHECK(want_pair(n, "stride", 1));
  CHECK(want_pair(n, "padding", 0));
  if (x->rank != 4 || x->dtype != DT_F32)
    FAIL("input must be an f32 [N,C,H,W] tensor, got %s", type_str(x));
  const int64_t *k = node_attr(n, "kernel")->ints, *s = node_attr(n, "stride")->ints,
                *p = node_attr(n, "padding")->ints;
  if (2 * p[0] > k[0] || 2 * p[1] > k[1])
    FAIL("padding must be at most half the kernel size, as PyTorch requires");
  *out = *x;
  CHECK(window_out(x->dim[2], k[0], s[0], p[0], &out->dim[2], "height"));
  CHECK(window_out(x->dim[3], k[1], s[1], p[1], &out->dim[3], "width"));
  return NULL;
}

static const char *shape_pool(const Node *n, Type *out) { return pool_rule(n, T(n, 0), out); }

// (dy, x) -> x's type.
static const char *shape_pool_grad(const Node *n, Type *out) {
  Type y;
  CHECK(pool_rule(n, T(n, 1), &y));
  if (!type_eq(&y, T(n, 0)))
    FAIL("gradient %s does not match the pooling output %s", type_str(T(n, 0)), type_str(&y));
  *out = *T(n, 1);
  return NULL;
}

typedef struct {
  int64_t n, c, h, w, ho, wo;
  int64_t kh, kw, sh, sw, ph, pw;
} PoolDims;

static PoolDims pool_dims(const Type *x, const Node *n) {
  const int64_t *k = ints(n, "kernel"), *s = ints(n, "stride"), *p = ints(n, "padding");
  PoolDims d = {x->dim[0], x->dim[1], x->dim[2], x->dim[3], 0, 0,
                k[0],      k[1],      s[0],      s[1],      p[0], p[1]};
  d.ho = (d.h + 2 * d.ph - d.kh) / d.sh + 1;
  d.wo = (d.w + 2 * d.pw - d.kw) / d.sw + 1;
  return d;
}

// --- maxpool2d ------------------------------------------------------------------------

// The flat index of window (nc, oh, ow)'s maximum: the first one in row-major
// order, or a NaN, as PyTorch's CPU kernel picks (`val > max || isnan(val)`).
static int64_t max_index(const PoolDims *d, const float *x, int64_t nc, int64_t oh, int64_t ow) {
  int64_t h0 = oh * d->sh - d->ph, w0 = ow * d->sw - d->pw;
  int64_t h1 = h0 + d->kh < d->h ? h0 + d->kh : d->h, w1 = w0 + d->kw < d->w ? w0 + d->kw : d->w;
  h0 = h0 > 0 ? h0 : 0;
  w0 = w0 > 0 ? w0 : 0;
  const float *plane = x + nc * d->h * d->w;
  int64_t best = h0 * d->w + w0;
  float max = -INFINITY;
  for (int64_t ih = h0; ih < h1; ih++)
    for (int64_t iw = w0; iw < w1; iw++) {
      float v = plane[ih * d->w + iw];
      if (v > max || isnan(v)) {
        max = v;
        best = ih * d->w + iw;
        if (isnan(v))
          return nc * d->h * d->w + best;
      }
    }
  return nc * d->h * d->w + best;
}

static void eval_maxpool2d(const Node *n, Tensor *out, Tensor **in) {
  PoolDims d = pool_dims(&in[0]->type, n);
  for (int64_t nc = 0; nc < d.n * d.c; nc++)
    for (int64_t oh = 0; oh < d.ho; oh++)
      for (int64_t ow = 0; ow < d.wo; ow++)
        out->f[(nc * d.ho + oh) * d.wo + ow] = in[0]->f[max_index(&d, in[0]->f, nc, oh, ow)];
}

// dx = maxpool2d_grad(dy, x)
static void grad_maxpool2d(AD *ad, Node *n, Node *dy) {
  Node *x = n->in[0];
  accumulate(ad, x, done(grad_op(ad, OP_maxpool2d_grad, n, 2, (Node *[]){dy, x})));
}

// Lowering the pools and their gradients.
//
// A window's rows and columns that fall inside the input: padding never wins
// a max and counts as zero in the average (count_include_pad=True). Ties
// pick the first maximum and a NaN propagates, as PyTorch's max_pool2d.

// Loop roles, printed as the variables' names.
static const char *const nchw[] = {"n", "c", "h", "w"};

typedef struct {
  int64_t H, W, KH, KW, s0, s1, p0, p1;
} Pool;

static Pool pool_of(Node *n, const LBuf *x) {
  return (Pool){x->dim[2],
                x->dim[3],
                ints(n, "kernel")[0],
                ints(n, "kernel")[1],
                ints(n, "stride")[0],
                ints(n, "stride")[1],
                ints(n, "padding")[0],
                ints(n, "padding")[1]};
}

// Loops kh, kw inside `parent` over window (oh, ow); returns where the body
// goes (guarded when padded), with ih and iw.
static LStmt *window(LKernel *k, LStmt *parent, const Pool *w, LExpr *oh, LExpr *ow, LExpr **kh,
                     LExpr **kw, LExpr **ih, LExpr **iw) {
  LStmt *r = reduce_loop(k, parent, w->KH, "kh", kh);
  r = reduce_loop(k, r, w->KW, "kw", kw);
  *ih = ADD(ADDK(MULK(oh, w->s0), -w->p0), *kh);
  *iw = ADD(ADDK(MULK(ow, w->s1), -w->p1), *kw);
  LExpr *ok = w->p0 || w->p1 ? AND(inside(*ih, w->H), inside(*iw, w->W)) : NULL;
  if (!ok)
    return r;
  LStmt *g = ls_if(ok);
  ls_add(r, g);
  return g;
}

// The first maximum of the window at (n, c, oh, ow) into local best, and its
// tap kh * KW + kw into local arg (PyTorch: a NaN is taken and kept).
static void window_max(Lowering *L, LKernel *k, LStmt *sp, LBuf *x, const Pool *w, LExpr **v,
                       LBuf *best, LBuf *arg) {
  ls_add(sp, ST(best, F(-INFINITY)));
  ls_add(sp, ST(arg, lx_int(LT_I32, -1)));
  LExpr *kh, *kw, *ih, *iw;
  LStmt *r = window(k, sp, w, v[2], v[3], &kh, &kw, &ih, &iw);
  LExpr *xv = LD(x, v[0], v[1], ih, iw), *bv = LD(best);
  LExpr *take = lx_bin(LX_OR, BIN(LX_UGT, xv, bv), BIN(LX_LT, LD(arg), lx_int(LT_I32, 0)));
  take = lx_bin(LX_AND, take, lx_un(LX_NOT, lx_un(LX_UNO, bv)));
  LExpr *tap = lx_cast(LT_I32, ADD(MULK(kh, w->KW), kw));
  ls_add(r, ST(arg, SEL(take, tap, LD(arg))));
  ls_add(r, ST(best, SEL(lx_copy(take), lx_copy(xv), LD(best))));
}

static void lower_maxpool2d(Lowering *L, Node *n) {
  LBuf *y = B(L, n), *x = B(L, n->in[0]);
  Pool w = pool_of(n, x);
  LKernel *k = kernel(L, n, NULL);
  LBuf *best = local(L, "best", DT_F32), *arg = local(L, "arg", DT_I32);
  LExpr *v[4];
  LStmt *sp = each(k, NULL, y, v, nchw);
  window_max(L, k, sp, x, &w, v, best, arg);
  ls_add(sp, ST(y, LD(best), v[0], v[1], v[2], v[3]));
}

const OpRules rules_maxpool2d = {
    .shape = shape_pool, .eval = eval_maxpool2d, .grad = grad_maxpool2d, .lower = lower_maxpool2d};

// --- maxpool2d_grad (dy, x) -> dx: each output's gradient goes to its window's maximum ------

static void eval_maxpool2d_grad(const Node *n, Tensor *out, Tensor **in) {
  PoolDims d = pool_dims(&in[1]->type, n);
  double *acc = xcalloc(numel(out), sizeof *acc);
  for (int64_t nc = 0; nc < d.n * d.c; nc++)
    for (int64_t oh = 0; oh < d.ho; oh++)
      for (int64_t ow = 0; ow < d.wo; ow++)
        acc[max_index(&d, in[1]->f, nc, oh, ow)] += in[0]->f[(nc * d.ho + oh) * d.wo + ow];
  store(out, acc);
  free(acc);
}

// Gradients: dx starts at 0; each window adds its dy to the tap that won
// (max) or to every tap inside (average), windows in order.
static void lower_pool_grad(Lowering *L, Node *n, bool is_max) {
  LBuf *dx = B(L, n), *dy = B(L, n->in[0]), *x = B(L, n->in[1]);
  Pool w = pool_of(n, x);
  LKernel *k = kernel(L, n, NULL);
  LExpr *z[4];
  LStmt *zl = each(k, NULL, dx, z, nchw);
  ls_add(zl, ST(dx, F(0), z[0], z[1], z[2], z[3]));
  LExpr *v[4], *kh, *kw, *ih, *iw;
  LStmt *sp = each(k, NULL, dy, v, nchw);
  LBuf *arg = is_max ? local(L, "arg", DT_I32) : NULL;
  if (is_max)
    window_max(L, k, sp, x, &w, v, local(L, "best", DT_F32), arg);
  LStmt *r = window(k, sp, &w, v[2], v[3], &kh, &kw, &ih, &iw);
  LExpr *g = LD(dy, v[0], v[1], v[2], v[3]);
  if (is_max) {
    LExpr *tap = lx_cast(LT_I32, ADD(MULK(kh, w.KW), kw));
    g = SEL(BIN(LX_EQ, tap, LD(arg)), g, F(0));
  } else {
    g = FDIV(g, F((double)(w.KH * w.KW)));
  }
  ls_add(r, ST(dx, FADD(LD(dx, v[0], v[1], ih, iw), g), v[0], v[1], ih, iw));
}

static void lower_maxpool2d_grad(Lowering *L, Node *n) { lower_pool_grad(L, n, true); }

const OpRules rules_maxpool2d_grad = {
    .shape = shape_pool_grad, .eval = eval_maxpool2d_grad, .lower = lower_maxpool2d_grad};

// --- avgpool2d --------------------------------------------------------------------------

// Calls body(xi, yi, div) for every input element of every avg window.
#define AVG_LOOP(d, body)                                                                          \
  for (int64_t nc_ = 0; nc_ < (d).n * (d).c; nc_++)                                                \
    for (int64_t oh_ = 0; oh_ < (d).ho; oh_++)                                                     \
      for (int64_t ow_ = 0; ow_ < (d).wo; ow_++) {                                                 \
        int64_t h0_ = oh_ * (d).sh - (d).ph, w0_ = ow_ * (d).sw - (d).pw;                          \
        int64_t h1_ = h0_ + (d).kh < (d).h + (d).ph ? h0_ + (d).kh : (d).h + (d).ph;               \
        int64_t w1_ = w0_ + (d).kw < (d).w + (d).pw ? w0_ + (d).kw : (d).w + (d).pw;               \
        double div = (double)((h1_ - h0_) * (w1_ - w0_)); /* padding included */                   \
        int64_t yi = (nc_ * (d).ho + oh_) * (d).wo + ow_;                                          \
        for (int64_t ih_ = h0_ > 0 ? h0_ : 0; ih_ < h1_ && ih_ < (d).h; ih_++)                     \
          for (int64_t iw_ = w0_ > 0 ? w0_ : 0; iw_ < w1_ && iw_ < (d).w; iw_++) {                 \
            int64_t xi = (nc_ * (d).h + ih_) * (d).w + iw_;                                        \
            body;                                                                                  \
          }                                                                                        \
      }

static void eval_avgpool2d(const Node *n, Tensor *out, Tensor **in) {
  PoolDims d = pool_dims(&in[0]->type, n);
  double *acc = xcalloc(numel(out), sizeof *acc);
  AVG_LOOP(d, acc[yi] += in[0]->f[xi] / div);
  store(out, acc);
  free(acc);
}

// dx = avgpool2d_grad(dy, x)
static void grad_avgpool2d(AD *ad, Node *n, Node *dy) {
  Node *x = n->in[0];
  accumulate(ad, x, done(grad_op(ad, OP_avgpool2d_grad, n, 2, (Node *[]){dy, x})));
}

static void lower_avgpool2d(Lowering *L, Node *n) {
  LBuf *y = B(L, n), *x = B(L, n->in[0]);
  Pool w = pool_of(n, x);
  LKernel *k = kernel(L, n, NULL);
  LBuf *acc = local(L, "sum", DT_F32);
  LExpr *v[4], *kh, *kw, *ih, *iw;
  LStmt *sp = each(k, NULL, y, v, nchw);
  ls_add(sp, ST(acc, F(0)));
  LStmt *r = window(k, sp, &w, v[2], v[3], &kh, &kw, &ih, &iw);
  ls_add(r, ST(acc, FADD(LD(acc), LD(x, v[0], v[1], ih, iw))));
  ls_add(sp, ST(y, FDIV(LD(acc), F((double)(w.KH * w.KW))), v[0], v[1], v[2], v[3]));
}

const OpRules rules_avgpool2d = {
    .shape = shape_pool, .eval = eval_avgpool2d, .grad = grad_avgpool2d, .lower = lower_avgpool2d};

// --- avgpool2d_grad (dy, x) -> dx: each output's gradient spread over its window ------------

static void eval_avgpool2d_grad(const Node *n, Tensor *out, Tensor **in) {
  PoolDims d = pool_dims(&in[1]->type, n);
  double *acc = xcalloc(numel(out), sizeof *acc);
  AVG_LOOP(d, acc[xi] += in[0]->f[yi] / div);
  store(out, acc);
  free(acc);
}

static void lower_avgpool2d_grad(Lowering *L, Node *n) { lower_pool_grad(L, n, false); }

const OpRules rules_avgpool2d_grad = {
    .shape = shape_pool_grad, .eval = eval_avgpool2d_grad, .lower = lower_avgpool2d_grad};

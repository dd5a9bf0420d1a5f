// Convolution, nn.Conv2d's: x[N,C,H,W] * w[O,C,KH,KW] (+ b[O]) -> y[N,O,HO,WO],
// and its two gradients, conv2d_grad_input and conv2d_grad_weight (the bias's
// is bias_grad, in batchnorm.c with the other per-channel sums).
#include "lower.h"
#include "ops.h"

#include <stdlib.h>

// The shape rule the three share: y's type from x's and w's.
static const char *conv_rule(const Node *n, const Type *x, const Type *w, Type *out) {
  CHECK(want_pair(n, "stride", 1));
  CHECK(want_pair(n, "padding", 0));
  if (x->rank != 4 || !dtype_is_float(x->dtype))
    FAIL("input must be a float [N,C,H,W] tensor, got %s", type_str(x));
  if (w->rank != 4 || w->dtype != x->dtype) // autocast rounds both
    FAIL("weight must be a %s [O,C,KH,KW] tensor like the input, got %s", dtype_name(x->dtype),
         type_str(w));
  if (w->dim[1] != x->dim[1])
    FAIL("weight expects %lld input channels but the input has %lld", (long long)w->dim[1],
         (long long)x->dim[1]);
  const int64_t *s = node_attr(n, "stride")->ints, *p = node_attr(n, "padding")->ints;
  int64_t d[4] = {x->dim[0], w->dim[0], 0, 0};
  CHECK(window_out(x->dim[2], w->dim[2], s[0], p[0], &d[2], "height"));
  CHECK(window_out(x->dim[3], w->dim[3], s[1], p[1], &d[3], "width"));
  *out = type_make(x->dtype, 4, d);
  return NULL;
}

// y[n,o,oh,ow] = b[o] + sum_{c,kh,kw} x[n,c,oh*sh-ph+kh, ow*sw-pw+kw] * w[o,c,kh,kw],
// reading zeros outside x. The two gradients visit the same index pairs.

typedef struct {
  int64_t n, c, h, w;    // x
  int64_t o, kh, kw;     // w
  int64_t ho, wo;        // y
  int64_t sh, sw, ph, pw;
} ConvDims;

static ConvDims conv_dims(const Type *x, const Type *w, const Type *y, const Node *n) {
  const int64_t *s = ints(n, "stride"), *p = ints(n, "padding");
  return (ConvDims){x->dim[0], x->dim[1], x->dim[2], x->dim[3], w->dim[0], w->dim[2], w->dim[3],
                    y->dim[2],  y->dim[3],  s[0],      s[1],      p[0],      p[1]};
}

#define X_AT(d, n_, c_, h_, w_) ((((n_) * (d).c + (c_)) * (d).h + (h_)) * (d).w + (w_))
#define W_AT(d, o_, c_, h_, w_) ((((o_) * (d).c + (c_)) * (d).kh + (h_)) * (d).kw + (w_))
#define Y_AT(d, n_, o_, h_, w_) ((((n_) * (d).o + (o_)) * (d).ho + (h_)) * (d).wo + (w_))

// Calls body(xi, wi, yi) for every multiply of the convolution.
#define CONV_LOOP(d, body)                                                                         \
  for (int64_t n_ = 0; n_ < (d).n; n_++)                                                           \
    for (int64_t o_ = 0; o_ < (d).o; o_++)                                                         \
      for (int64_t oh_ = 0; oh_ < (d).ho; oh_++)                                                   \
        for (int64_t ow_ = 0; ow_ < (d).wo; ow_++)                                                 \
          for (int64_t c_ = 0; c_ < (d).c; c_++)                                                   \
            for (int64_t kh_ = 0; kh_ < (d).kh; kh_++)                                             \
              for (int64_t kw_ = 0; kw_ < (d).kw; kw_++) {                                         \
                int64_t ih_ = oh_ * (d).sh - (d).ph + kh_, iw_ = ow_ * (d).sw - (d).pw + kw_;      \
                if (ih_ < 0 || ih_ >= (d).h || iw_ < 0 || iw_ >= (d).w)                            \
                  continue;                                                                        \
                int64_t xi = X_AT(d, n_, c_, ih_, iw_), wi = W_AT(d, o_, c_, kh_, kw_),            \
                        yi = Y_AT(d, n_, o_, oh_, ow_);                                            \
                body;                                                                              \
              }

// --- conv2d (x, w, b?) -> y ----------------------------------------------------------

static const char *shape_conv2d(const Node *n, Type *out) {
  CHECK(conv_rule(n, T(n, 0), T(n, 1), out));
  if (n->nin == 3 && (T(n, 2)->rank != 1 || T(n, 2)->dim[0] != T(n, 1)->dim[0] ||
                      T(n, 2)->dtype != out->dtype))
    FAIL("bias must be %s[%lld], one per output channel, got %s", dtype_name(out->dtype),
         (long long)T(n, 1)->dim[0], type_str(T(n, 2)));
  return NULL;
}

static void eval_conv2d(const Node *n, Tensor *out, Tensor **in) {
  ConvDims d = conv_dims(&in[0]->type, &in[1]->type, &out->type, n);
  double *acc = xcalloc(numel(out), sizeof *acc);
  const float *x = in[0]->f, *w = in[1]->f;
  CONV_LOOP(d, acc[yi] += (double)x[xi] * w[wi]);
  if (n->nin == 3)
    for (int64_t i = 0; i < numel(out); i++)
      acc[i] += in[2]->f[i / (d.ho * d.wo) % d.o];
  store(out, acc);
  free(acc);
}

// dx = conv2d_grad_input(dy, w), dw = conv2d_grad_weight(dy, x), db = bias_grad(dy).
static void grad_conv2d(AD *ad, Node *n, Node *dy) {
  Node **x = n->in;
  if (needs_grad(ad, x[0])) {
    Node *gi = grad_op(ad, OP_conv2d_grad_input, n, 2, (Node *[]){dy, x[1]});
    gi->type = x[0]->type; // the input's shape is not a function of dy and w
    accumulate(ad, x[0], done(gi));
  }
  if (needs_grad(ad, x[1])) {
    Node *gw = grad_op(ad, OP_conv2d_grad_weight, n, 2, (Node *[]){dy, x[0]});
    node_set_ints(gw, "kernel", &x[1]->type.dim[2], 2);
    accumulate(ad, x[1], done(gw));
  }
  if (n->nin == 3 && needs_grad(ad, x[2]))
    accumulate(ad, x[2], done(grad_op(ad, OP_bias_grad, n, 1, (Node *[]){dy})));
}

// Lowering
//
// conv2d:      y[n,o,oh,ow] = b[o] + sum_{c,kh,kw} x[n,c,oh*s0-p0+kh, ow*s1-p1+kw] w[o,c,kh,kw]
// grad_input:  dx[n,c,ih,iw] = sum_{o,kh,kw} dy[n,o,oh,ow] w[o,c,kh,kw]
//              where ih = oh*s0-p0+kh, i.e. oh = (ih+p0-kh)/s0 when that divides
// grad_weight: dw[o,c,kh,kw] = sum_{n,oh,ow} dy[n,o,oh,ow] x[n,c,ih,iw]

// Loop roles, printed as the variables' names.
static const char *const nchw[] = {"n", "c", "h", "w"};
static const char *const nohw[] = {"n", "o", "oh", "ow"};

static void lower_conv2d(Lowering *L, Node *n) {
  LBuf *y = B(L, n), *x = B(L, n->in[0]), *w = B(L, n->in[1]);
  LBuf *b = n->nin == 3 ? B(L, n->in[2]) : NULL;
  const int64_t *s = ints(n, "stride"), *p = ints(n, "padding");
  int64_t C = x->dim[1], H = x->dim[2], W = x->dim[3], KH = w->dim[2], KW = w->dim[3];
  LKernel *k = kernel(L, n, NULL);
  k->flops = 2 * lbuf_numel(y) * C * KH * KW;
  LExpr *v[4], *c, *kh, *kw;
  LStmt *sp = each(k, NULL, y, v, nohw);
  ls_add(sp, ST(y, b ? LD(b, v[1]) : F(0), v[0], v[1], v[2], v[3]));
  LStmt *r = reduce_loop(k, sp, C, "c", &c);
  r = reduce_loop(k, r, KH, "kh", &kh);
  r = reduce_loop(k, r, KW, "kw", &kw);
  LExpr *ih = ADD(ADDK(MULK(v[2], s[0]), -p[0]), kh), *iw = ADD(ADDK(MULK(v[3], s[1]), -p[1]), kw);
  LExpr *ok = p[0] || p[1] ? AND(inside(ih, H), inside(iw, W)) : NULL;
  if (ok) {
    LStmt *g = ls_if(ok);
    ls_add(r, g);
    r = g;
  }
  LExpr *yv = LD(y, v[0], v[1], v[2], v[3]);
  ls_add(r,
         ST(y, lx_fma(LD(x, v[0], c, ih, iw), LD(w, v[1], c, kh, kw), yv), v[0], v[1], v[2], v[3]));
}

const OpRules rules_conv2d = {
    .shape = shape_conv2d, .eval = eval_conv2d, .grad = grad_conv2d, .lower = lower_conv2d};

// --- conv2d_grad_input (dy, w) -> dx, of the type the builder declares ---------------------
//
// Several input sizes give one output size, so the type is declared, and checked.

static const char *shape_conv2d_grad_input(const Node *n, Type *out) {
  Type dy;
  CHECK(conv_rule(n, &n->type, T(n, 1), &dy));
  if (!type_eq(&dy, T(n, 0)))
    FAIL("gradient %s does not match the convolution's output %s", type_str(T(n, 0)),
         type_str(&dy));
  *out = n->type;
  return NULL;
}

// Each x element collects dy * w over the outputs it fed.
static void eval_conv2d_grad_input(const Node *n, Tensor *out, Tensor **in) {
  ConvDims d = conv_dims(&out->type, &in[1]->type, &in[0]->type, n);
  double *acc = xcalloc(numel(out), sizeof *acc);
  const float *dy = in[0]->f, *w = in[1]->f;
  CONV_LOOP(d, acc[xi] += (double)dy[yi] * w[wi]);
  store(out, acc);
  free(acc);
}

// Stride 1: dx[n,c,ih,iw] = sum_{o,kh,kw} dy[n,o,ih+p-kh,iw+p-kw] w[o,c,kh,kw],
// the window guarded where it leaves dy.
static void grad_input_unit(Lowering *L, Node *n) {
  LBuf *dx = B(L, n), *dy = B(L, n->in[0]), *w = B(L, n->in[1]);
  const int64_t *p = ints(n, "padding");
  int64_t O = dy->dim[1], OH = dy->dim[2], OW = dy->dim[3], KH = w->dim[2], KW = w->dim[3];
  LKernel *k = kernel(L, n, NULL);
  k->flops = 2 * lbuf_numel(dy) * dx->dim[1] * KH * KW;
  LExpr *v[4], *o, *kh, *kw;
  LStmt *sp = each(k, NULL, dx, v, nchw);
  ls_add(sp, ST(dx, F(0), v[0], v[1], v[2], v[3]));
  LStmt *r = reduce_loop(k, sp, O, "o", &o);
  r = reduce_loop(k, r, KH, "kh", &kh);
  r = reduce_loop(k, r, KW, "kw", &kw);
  LExpr *oh = lx_bin(LX_SUB, ADDK(v[2], p[0]), kh), *ow = lx_bin(LX_SUB, ADDK(v[3], p[1]), kw);
  LStmt *g = ls_if(AND(inside(oh, OH), inside(ow, OW)));
  ls_add(r, g);
  LExpr *cur = LD(dx, v[0], v[1], v[2], v[3]);
  ls_add(g, ST(dx, lx_fma(LD(dy, v[0], o, oh, ow), LD(w, o, v[1], kh, kw), cur), v[0], v[1], v[2],
               v[3]));
}

// One row of dx, s*i + ph, from the phase planes of row ph (NULL: zeros).
static void interleave_one(LStmt *at, LBuf *dx, LBuf *const *plane, const int64_t *s, LExpr *b,
                           LExpr *c, LExpr *i, int64_t ph, LExpr *j, int64_t pw) {
  LBuf *pl = plane[ph * s[1] + pw];
  LExpr *val = pl ? LD(pl, lx_copy(b), lx_copy(c), lx_copy(i), lx_copy(j)) : F(0);
  ls_add(at, ST(dx, val, lx_copy(b), lx_copy(c), ADDK(MULK(lx_copy(i), s[0]), ph),
                ADDK(MULK(lx_copy(j), s[1]), pw)));
}

static void interleave_row(LKernel *k, LStmt *parent, LBuf *dx, LBuf *const *plane,
                           const int64_t *s, LExpr *b, LExpr *c, LExpr *i, int64_t ph) {
  int64_t W = dx->dim[3];
  LExpr *j;
  if (W >= s[1]) {
    LStmt *lj = loop(k, parent, W / s[1], "w", &j);
    for (int64_t pw = 0; pw < s[1]; pw++)
      interleave_one(lj, dx, plane, s, b, c, i, ph, j, pw);
  }
  for (int64_t pw = 0; pw < W % s[1]; pw++)
    interleave_one(parent, dx, plane, s, b, c, i, ph, K(W / s[1]), pw);
}

// Stride s > 1: only the taps with kh = ih + p (mod s) reach input row ih.
// The rows of one phase ph (ih = s*i + ph) share their taps, kh = kh0 + s*jh
// with kh0 = (ph + p) mod s, and read dy row oh = i + qh - jh with
// qh = (ph + p - kh0) / s: per phase, a stride-1 sum over fewer taps. Each
// phase (ph, pw) sums into its own plane, then the planes interleave into dx.
static void grad_input_strided(Lowering *L, Node *n) {
  LBuf *dx = B(L, n), *dy = B(L, n->in[0]), *w = B(L, n->in[1]);
  const int64_t *s = ints(n, "stride"), *p = ints(n, "padding");
  int64_t N = dx->dim[0], C = dx->dim[1], H = dx->dim[2], W = dx->dim[3];
  int64_t O = dy->dim[1], OH = dy->dim[2], OW = dy->dim[3], KH = w->dim[2], KW = w->dim[3];
  LBuf *plane[64] = {0};
  ir_assert(s[0] * s[1] <= 64);
  for (int64_t ph = 0; ph < s[0] && ph < H; ph++)
    for (int64_t pw = 0; pw < s[1] && pw < W; pw++) {
      int64_t rows = (H - ph + s[0] - 1) / s[0], cols = (W - pw + s[1] - 1) / s[1];
      int64_t kh0 = (ph + p[0]) % s[0], kw0 = (pw + p[1]) % s[1];
      int64_t nkh = (KH - kh0 + s[0] - 1) / s[0], nkw = (KW - kw0 + s[1] - 1) / s[1];
      if (nkh <= 0 || nkw <= 0)
        continue; // no tap reaches this phase: its rows get zeros below
      int64_t qh = (ph + p[0] - kh0) / s[0], qw = (pw + p[1] - kw0) / s[1];
      int64_t dim[4] = {N, C, rows, cols};
      LBuf *pl = lfunc_buf(L->f, xformat("%s.phase%lld%lld", dx->name, (long long)ph, (long long)pw),
                           DT_F32, 4, dim, LB_WORKSPACE);
      pl->layout = "one stride phase of the input gradient";
      plane[ph * s[1] + pw] = pl;
      LKernel *k = kernel(L, n, NULL);
      k->flops = 2 * N * C * rows * cols * O * nkh * nkw;
      LExpr *v[4], *o, *jh, *jw;
      LStmt *sp = each(k, NULL, pl, v, nchw);
      ls_add(sp, ST(pl, F(0), v[0], v[1], v[2], v[3]));
      LStmt *r = reduce_loop(k, sp, O, "o", &o);
      r = reduce_loop(k, r, nkh, "kh", &jh);
      r = reduce_loop(k, r, nkw, "kw", &jw);
      LExpr *oh = lx_bin(LX_SUB, ADDK(v[2], qh), jh), *ow = lx_bin(LX_SUB, ADDK(v[3], qw), jw);
      LStmt *g = ls_if(AND(inside(oh, OH), inside(ow, OW)));
      ls_add(r, g);
      LExpr *kh = ADDK(MULK(lx_copy(jh), s[0]), kh0), *kw = ADDK(MULK(lx_copy(jw), s[1]), kw0);
      LExpr *cur = LD(pl, v[0], v[1], v[2], v[3]);
      ls_add(g, ST(pl, lx_fma(LD(dy, v[0], o, oh, ow), LD(w, o, v[1], kh, kw), cur), v[0], v[1],
                   v[2], v[3]));
    }
  // Interleave: dx[n, c, s*i + ph, s*j + pw] = plane (ph, pw) at [n, c, i, j],
  // row after row of dx, each row's phases side by side in one loop so that
  // its stores fill consecutive elements (the last, partial group of rows
  // or columns after the loop).
  LKernel *k = kernel(L, n, "interleave");
  LExpr *b, *c;
  LStmt *ln = loop(k, NULL, N, "n", &b);
  LStmt *lc = loop(k, ln, C, "c", &c);
  LExpr *i;
  if (H >= s[0]) {
    LStmt *li = loop(k, lc, H / s[0], "h", &i);
    for (int64_t ph = 0; ph < s[0]; ph++)
      interleave_row(k, li, dx, plane, s, b, c, i, ph);
  }
  for (int64_t ph = 0; ph < H % s[0]; ph++)
    interleave_row(k, lc, dx, plane, s, b, c, K(H / s[0]), ph);
}

static void lower_conv2d_grad_input(Lowering *L, Node *n) {
  const int64_t *s = ints(n, "stride");
  if (s[0] == 1 && s[1] == 1)
    grad_input_unit(L, n);
  else
    grad_input_strided(L, n);
}

const OpRules rules_conv2d_grad_input = {.shape = shape_conv2d_grad_input,
                                         .eval = eval_conv2d_grad_input,
                                         .lower = lower_conv2d_grad_input};

// --- conv2d_grad_weight (dy, x) -> dw[O,C,KH,KW], the kernel size an attribute ------------

static const char *shape_conv2d_grad_weight(const Node *n, Type *out) {
  const Type *dy = T(n, 0), *x = T(n, 1);
  CHECK(want_pair(n, "kernel", 1));
  CHECK(want_float_rank(n, 0, 4, "gradient"));
  CHECK(want_float_rank(n, 1, 4, "input"));
  const int64_t *k = node_attr(n, "kernel")->ints;
  int64_t wd[4] = {dy->dim[1], x->dim[1], k[0], k[1]};
  Type w = type_make(x->dtype, 4, wd), y;
  CHECK(conv_rule(n, x, &w, &y));
  if (!type_eq(&y, dy))
    FAIL("gradient %s does not match the convolution's output %s", type_str(dy), type_str(&y));
  *out = w;
  return NULL;
}

// Each weight collects dy * x over all positions and samples.
static void eval_conv2d_grad_weight(const Node *n, Tensor *out, Tensor **in) {
  ConvDims d = conv_dims(&in[1]->type, &out->type, &in[0]->type, n);
  double *acc = xcalloc(numel(out), sizeof *acc);
  const float *dy = in[0]->f, *x = in[1]->f;
  CONV_LOOP(d, acc[wi] += (double)dy[yi] * x[xi]);
  store(out, acc);
  free(acc);
}

static void lower_conv2d_grad_weight(Lowering *L, Node *n) {
  LBuf *dw = B(L, n), *dy = B(L, n->in[0]), *x = B(L, n->in[1]);
  const int64_t *s = ints(n, "stride"), *p = ints(n, "padding");
  int64_t N = dy->dim[0], OH = dy->dim[2], OW = dy->dim[3], H = x->dim[2], W = x->dim[3];
  LKernel *k = kernel(L, n, NULL);
  k->flops = 2 * lbuf_numel(dy) * x->dim[1] * dw->dim[2] * dw->dim[3];
  LExpr *v[4], *b, *oh, *ow;
  LStmt *sp = each(k, NULL, dw, v, (const char *[]){"o", "c", "kh", "kw"});
  ls_add(sp, ST(dw, F(0), v[0], v[1], v[2], v[3]));
  LStmt *r = reduce_loop(k, sp, N, "n", &b);
  r = reduce_loop(k, r, OH, "oh", &oh);
  r = reduce_loop(k, r, OW, "ow", &ow);
  LExpr *ih = ADD(ADDK(MULK(oh, s[0]), -p[0]), v[2]), *iw = ADD(ADDK(MULK(ow, s[1]), -p[1]), v[3]);
  LExpr *ok = p[0] || p[1] ? AND(inside(ih, H), inside(iw, W)) : NULL;
  if (ok) {
    LStmt *g = ls_if(ok);
    ls_add(r, g);
    r = g;
  }
  LExpr *cur = LD(dw, v[0], v[1], v[2], v[3]);
  ls_add(r, ST(dw, lx_fma(LD(dy, b, v[0], oh, ow), LD(x, b, v[1], ih, iw), cur), v[0], v[1], v[2],
               v[3]));
}

const OpRules rules_conv2d_grad_weight = {.shape = shape_conv2d_grad_weight,
                                          .eval = eval_conv2d_grad_weight,
                                          .lower = lower_conv2d_grad_weight};

// lower: the graph into the loop IR. Every value gets a buffer (a slice of
// the params, state or grads block, an argument, a constant, a workspace
// slice the memory plan places later; a reshape aliases its operand), and
// every op its plain loop nest: the textbook loops over the output with the
// sum inside, in PyTorch's layouts, guarded where a window reaches into
// padding. This is the reference the scheduled code is checked against and
// what -O0 runs; the scheduling passes rewrite it.
#include "loop.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "dropout_hash.h"

typedef struct {
  LFunc *f;
  Graph *g;
  const LBlocks *blocks;
} Lower;

// --- Buffers ------------------------------------------------------------------------

static LBuf *B(Lower *L, Node *n) {
  LBuf *b = L->f->buf_of[n->id];
  ir_assert(b);
  return b;
}

// i64 index helpers: v[d] is a loop variable, K(x) a constant.
static LExpr *K(int64_t x) { return lx_i64(x); }
static LExpr *ADD(LExpr *a, LExpr *b) { return lx_iadd(a, b); }
static LExpr *MULK(LExpr *a, int64_t k) { return lx_imul(a, k); }
static LExpr *ADDK(LExpr *a, int64_t k) { return lx_iaddc(a, k); }

static LExpr *LD(LBuf *b, ...) {
  va_list ap;
  va_start(ap, b);
  LExpr *idx[LMAX_RANK];
  for (int d = 0; d < b->rank; d++)
    idx[d] = va_arg(ap, LExpr *);
  va_end(ap);
  return lx_load(b, idx);
}

// A load of a whole-tensor-shaped operand at the output's indices v.
static LExpr *LDV(LBuf *b, LExpr **v) { return lx_load(b, v); }

static LStmt *ST(LBuf *b, LExpr *value, ...) {
  va_list ap;
  va_start(ap, value);
  LExpr *idx[LMAX_RANK];
  for (int d = 0; d < b->rank; d++)
    idx[d] = va_arg(ap, LExpr *);
  va_end(ap);
  return ls_store(b, idx, value);
}

static LExpr *F(double x) { return lx_f32(x); }
static LExpr *BIN(LExprKind k, LExpr *a, LExpr *b) { return lx_bin(k, a, b); }
static LExpr *FADD(LExpr *a, LExpr *b) { return lx_bin(LX_ADD, a, b); }
static LExpr *FSUB(LExpr *a, LExpr *b) { return lx_bin(LX_SUB, a, b); }
static LExpr *FMUL(LExpr *a, LExpr *b) { return lx_bin(LX_MUL, a, b); }
static LExpr *FDIV(LExpr *a, LExpr *b) { return lx_bin(LX_DIV, a, b); }
static LExpr *SEL(LExpr *c, LExpr *a, LExpr *b) { return lx_select(c, a, b); }
static LExpr *AND(LExpr *a, LExpr *b) { return a ? lx_bin(LX_AND, a, b) : b; }

// 0 <= e < n, or NULL when the loops bound e inside already (no padding).
static LExpr *inside(LExpr *e, int64_t n) {
  Affine a;
  if (lx_affine(e, &a) && a.n == 0 && a.c >= 0 && a.c < n)
    return NULL;
  return AND(BIN(LX_GE, e, K(0)), BIN(LX_LT, e, K(n)));
}

static LKernel *kernel(Lower *L, Node *n, const char *op) {
  return lfunc_kernel(L->f, op_info(n->op)->name, op ? op : op_info(n->op)->name, n);
}

// A local scalar of the kernel (registers): index with no arguments.
static LBuf *local(Lower *L, const char *name, DType dt) {
  return lfunc_buf(L->f, name, dt, 0, NULL, LB_LOCAL);
}

// The nest over every element of b: the innermost loop, v[] the variables.
static LStmt *each(LKernel *k, LStmt *parent, LBuf *b, LExpr **v, const char *const *roles) {
  return lk_nest(k, parent, b->rank, b->dim, roles, v);
}

static void put(LKernel *k, LStmt *parent, LStmt *s) {
  if (parent)
    ls_add(parent, s);
  else
    lk_add(k, s);
}

// A loop of n iterations inside parent (the kernel's top level when NULL).
static LStmt *loop(LKernel *k, LStmt *parent, int64_t n, const char *role, LExpr **v) {
  int var = lk_var(k);
  LStmt *l = ls_loop(var, 0, n, role);
  put(k, parent, l);
  *v = lx_var(var);
  return l;
}

static LStmt *reduce_loop(LKernel *k, LStmt *parent, int64_t n, const char *role, LExpr **v) {
  int var = lk_var(k);
  LStmt *l = ls_loop(var, 0, n, role);
  l->flags |= LF_REDUCE;
  put(k, parent, l);
  *v = lx_var(var);
  return l;
}

static const char *const nchw[] = {"n", "c", "h", "w"};
static const char *const nohw[] = {"n", "o", "oh", "ow"};

static const int64_t *ints(const Node *n, const char *a) { return node_attr(n, a)->ints; }

// --- Convolutions ------------------------------------------------------------------------
//
// conv2d:      y[n,o,oh,ow] = b[o] + sum_{c,kh,kw} x[n,c,oh*s0-p0+kh, ow*s1-p1+kw] w[o,c,kh,kw]
// grad_input:  dx[n,c,ih,iw] = sum_{o,kh,kw} dy[n,o,oh,ow] w[o,c,kh,kw]
//              where ih = oh*s0-p0+kh, i.e. oh = (ih+p0-kh)/s0 when that divides
// grad_weight: dw[o,c,kh,kw] = sum_{n,oh,ow} dy[n,o,oh,ow] x[n,c,ih,iw]

static void lower_conv2d(Lower *L, Node *n) {
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
  ls_add(r, ST(y, lx_fma(LD(x, v[0], c, ih, iw), LD(w, v[1], c, kh, kw), yv), v[0], v[1], v[2], v[3]));
}

static void lower_conv2d_grad_input(Lower *L, Node *n) {
  LBuf *dx = B(L, n), *dy = B(L, n->in[0]), *w = B(L, n->in[1]);
  const int64_t *s = ints(n, "stride"), *p = ints(n, "padding");
  int64_t O = dy->dim[1], OH = dy->dim[2], OW = dy->dim[3], KH = w->dim[2], KW = w->dim[3];
  LKernel *k = kernel(L, n, NULL);
  k->flops = 2 * lbuf_numel(dy) * dx->dim[1] * KH * KW;
  LExpr *v[4], *o, *kh, *kw;
  LStmt *sp = each(k, NULL, dx, v, nchw);
  ls_add(sp, ST(dx, F(0), v[0], v[1], v[2], v[3]));
  LStmt *r = reduce_loop(k, sp, O, "o", &o);
  r = reduce_loop(k, r, KH, "kh", &kh);
  r = reduce_loop(k, r, KW, "kw", &kw);
  // t = ih + p - kh = oh * s: the output row when s divides it.
  LExpr *th = lx_bin(LX_SUB, ADDK(v[2], p[0]), kh), *tw = lx_bin(LX_SUB, ADDK(v[3], p[1]), kw);
  LExpr *oh = th, *ow = tw, *ok = NULL;
  ok = AND(ok, BIN(LX_GE, th, K(0)));
  ok = AND(ok, BIN(LX_GE, tw, K(0)));
  if (s[0] > 1) {
    ok = AND(ok, BIN(LX_EQ, BIN(LX_REM, th, K(s[0])), K(0)));
    oh = BIN(LX_DIV, th, K(s[0]));
  }
  if (s[1] > 1) {
    ok = AND(ok, BIN(LX_EQ, BIN(LX_REM, tw, K(s[1])), K(0)));
    ow = BIN(LX_DIV, tw, K(s[1]));
  }
  ok = AND(ok, BIN(LX_LT, oh, K(OH)));
  ok = AND(ok, BIN(LX_LT, ow, K(OW)));
  LStmt *g = ls_if(ok);
  ls_add(r, g);
  LExpr *cur = LD(dx, v[0], v[1], v[2], v[3]);
  ls_add(g, ST(dx, lx_fma(LD(dy, v[0], o, oh, ow), LD(w, o, v[1], kh, kw), cur), v[0], v[1], v[2],
               v[3]));
}

static void lower_conv2d_grad_weight(Lower *L, Node *n) {
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

// bias_grad: db[c] = sum over every other dimension of dy[n,c,...].
static void lower_bias_grad(Lower *L, Node *n) {
  LBuf *db = B(L, n), *dy = B(L, n->in[0]);
  LKernel *k = kernel(L, n, NULL);
  LExpr *c, *v[LMAX_RANK];
  LStmt *sp = each(k, NULL, db, &c, (const char *[]){"c"});
  ls_add(sp, ST(db, F(0), c));
  LStmt *r = reduce_loop(k, sp, dy->dim[0], "n", &v[0]);
  v[1] = c;
  for (int d = 2; d < dy->rank; d++)
    r = reduce_loop(k, r, dy->dim[d], d == 2 ? "h" : "w", &v[d]);
  ls_add(r, ST(db, FADD(LD(db, c), LDV(dy, v)), c));
}

// --- Pooling -------------------------------------------------------------------------------
//
// A window's rows and columns that fall inside the input: padding never wins
// a max and counts as zero in the average (count_include_pad=True). Ties
// pick the first maximum and a NaN propagates, as PyTorch's max_pool2d.

typedef struct {
  int64_t H, W, KH, KW, s0, s1, p0, p1;
} Pool;

static Pool pool_of(Node *n, const LBuf *x) {
  return (Pool){x->dim[2], x->dim[3], ints(n, "kernel")[0], ints(n, "kernel")[1],
                ints(n, "stride")[0], ints(n, "stride")[1], ints(n, "padding")[0],
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
static void window_max(Lower *L, LKernel *k, LStmt *sp, LBuf *x, const Pool *w, LExpr **v,
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

static void lower_maxpool2d(Lower *L, Node *n) {
  LBuf *y = B(L, n), *x = B(L, n->in[0]);
  Pool w = pool_of(n, x);
  LKernel *k = kernel(L, n, NULL);
  LBuf *best = local(L, "best", DT_F32), *arg = local(L, "arg", DT_I32);
  LExpr *v[4];
  LStmt *sp = each(k, NULL, y, v, nchw);
  window_max(L, k, sp, x, &w, v, best, arg);
  ls_add(sp, ST(y, LD(best), v[0], v[1], v[2], v[3]));
}

static void lower_avgpool2d(Lower *L, Node *n) {
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

// Gradients: dx starts at 0; each window adds its dy to the tap that won
// (max) or to every tap inside (average), windows in order.
static void lower_pool_grad(Lower *L, Node *n, bool is_max) {
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

static void lower_maxpool2d_grad(Lower *L, Node *n) { lower_pool_grad(L, n, true); }
static void lower_avgpool2d_grad(Lower *L, Node *n) { lower_pool_grad(L, n, false); }

// --- Linear layers ------------------------------------------------------------------------
//
// linear:      y[n,m] = b[m] + sum_k x[n,k] w[m,k]
// grad_input:  dx[n,k] = sum_m dy[n,m] w[m,k]
// grad_weight: dw[m,k] = sum_n dy[n,m] x[n,k]

static void lower_linear(Lower *L, Node *n) {
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

static void lower_linear_grad_input(Lower *L, Node *n) {
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

static void lower_linear_grad_weight(Lower *L, Node *n) {
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

// --- Elementwise ops, the optimizers, dropout ------------------------------------------------

// Operand i at the output's indices (or its only element when it is a scalar).
static LExpr *operand(Lower *L, Node *n, int i, LExpr **v) {
  LBuf *b = B(L, n->in[i]);
  if (b->rank == 0)
    return lx_load(b, NULL);
  return LDV(b, v);
}

// A setting a schedule may move (%momentum) when the op has that operand.
static LExpr *scheduled(Lower *L, Node *n, int i, const char *attr) {
  return n->nin > i ? lx_load(B(L, n->in[i]), NULL) : F(node_float(n, attr));
}

// 1 - that setting, in double and rounded once, as `1 - beta1` from a Python float.
static LExpr *one_minus(Lower *L, Node *n, int i, const char *attr) {
  if (n->nin <= i)
    return F(1.0 - node_float(n, attr));
  return lx_cast(LT_F32, FSUB(lx_f64(1.0), lx_cast(LT_F64, lx_load(B(L, n->in[i]), NULL))));
}

static LExpr *U32(int64_t x) { return lx_int(LT_I32, (int32_t)(uint32_t)x); }

// dropout_fmix32 of ir/dropout_hash.h on an i32 expression.
static LExpr *fmix32(LExpr *h) {
  h = BIN(LX_XOR, h, BIN(LX_SHR, lx_copy(h), U32(16)));
  h = BIN(LX_MUL, h, U32(0x85ebca6bu));
  h = BIN(LX_XOR, h, BIN(LX_SHR, lx_copy(h), U32(13)));
  h = BIN(LX_MUL, h, U32(0xc2b2ae35u));
  return BIN(LX_XOR, h, BIN(LX_SHR, lx_copy(h), U32(16)));
}

// max(x, 0), keeping NaN as torch.relu does.
static LExpr *relu_of(LExpr *x) {
  LExpr *v = SEL(BIN(LX_GT, x, F(0)), lx_copy(x), F(0));
  return SEL(lx_un(LX_UNO, lx_copy(x)), lx_copy(x), v);
}

// In the test entry a reshape is a copy between two slots, element by
// element in flat order: both seen as one-dimensional.
static void lower_reshape_copy(Lower *L, Node *n) {
  LBuf *y = B(L, n), *x = B(L, n->in[0]);
  int64_t count = lbuf_numel(y);
  LBuf *fy = lfunc_buf(L->f, y->name, y->dtype, 1, &count, y->storage);
  LBuf *fx = lfunc_buf(L->f, x->name, x->dtype, 1, &count, x->storage);
  fy->slot = y->slot, fx->slot = x->slot;
  LKernel *k = kernel(L, n, NULL);
  LExpr *i;
  LStmt *l = loop(k, NULL, count, "i", &i);
  ls_add(l, ST(fy, LD(fx, i), lx_copy(i)));
}

static void lower_elementwise(Lower *L, Node *n) {
  if (n->op == OP_reshape)
    return lower_reshape_copy(L, n);
  LBuf *y = B(L, n);
  LKernel *k = kernel(L, n, NULL);
  LExpr *v[LMAX_RANK];
  LStmt *in = each(k, NULL, y, v, NULL);
  LExpr *a = n->nin > 0 && n->op != OP_dropout_mask ? operand(L, n, 0, v) : NULL;
  LExpr *b = n->nin > 1 && B(L, n->in[1])->rank == y->rank ? operand(L, n, 1, v) : NULL;
  LExpr *e;
  switch (n->op) {
  case OP_relu:
    e = relu_of(a);
    break;
  case OP_sigmoid:
    e = FDIV(F(1), FADD(F(1), lx_un(LX_EXP, lx_un(LX_NEG, a))));
    break;
  case OP_scale:
    e = FMUL(F(node_float(n, "factor")), a);
    break;
  case OP_add:
    e = FADD(a, b ? b : operand(L, n, 1, v));
    break;
  case OP_mul:
    e = FMUL(a, b ? b : operand(L, n, 1, v));
    break;
  case OP_relu_grad:
    e = SEL(BIN(LX_GT, b, F(0)), a, F(0));
    break;
  case OP_sigmoid_grad:
    e = FMUL(FMUL(a, b), FSUB(F(1), lx_copy(b)));
    break;
  case OP_ema: {
    float m = (float)node_float(n, "momentum");
    e = FADD(FMUL(F(1.0f - m), a), FMUL(F(m), b));
    break;
  }
  case OP_l2norm_grad: { // (dl, x, norm): 0 at norm 0, PyTorch's subgradient
    LExpr *norm = operand(L, n, 2, v), *dl = operand(L, n, 0, v);
    e = SEL(BIN(LX_EQ, norm, F(0)), F(0), FDIV(FMUL(dl, b), lx_copy(norm)));
    break;
  }
  case OP_sgd_buf: { // (g, buf, p, step, momentum?): buf = g' at the first update
    LExpr *d = a;
    double wd = node_float(n, "weight_decay");
    if (wd != 0)
      d = FADD(d, FMUL(F(wd), operand(L, n, 2, v)));
    LExpr *upd = FADD(FMUL(scheduled(L, n, 4, "momentum"), b),
                      FMUL(F(1.0 - node_float(n, "dampening")), lx_copy(d)));
    e = SEL(BIN(LX_EQ, operand(L, n, 3, v), lx_int(LT_I32, 1)), d, upd);
    break;
  }
  case OP_sgd_update: { // (p, g, lr, buf_new?, momentum?)
    LExpr *d = b;
    double wd = node_float(n, "weight_decay");
    if (wd != 0)
      d = FADD(d, FMUL(F(wd), lx_copy(a)));
    if (n->nin >= 4) {
      LExpr *buf = operand(L, n, 3, v);
      d = node_int(n, "nesterov") ? FADD(d, FMUL(scheduled(L, n, 4, "momentum"), buf)) : buf;
    }
    e = FSUB(a, FMUL(operand(L, n, 2, v), d));
    break;
  }
  case OP_adam_moment1:
  case OP_adam_moment2: { // (g, m, p, beta1?)
    LExpr *g = a;
    double wd = node_float(n, "weight_decay");
    if (wd != 0)
      g = FADD(g, FMUL(F(wd), operand(L, n, 2, v)));
    bool first = n->op == OP_adam_moment1;
    LExpr *beta = first ? scheduled(L, n, 3, "beta1") : F(node_float(n, "beta2"));
    LExpr *c1 = first ? one_minus(L, n, 3, "beta1") : F(1.0 - node_float(n, "beta2"));
    e = FADD(FMUL(b, beta), FMUL(c1, first ? g : FMUL(g, lx_copy(g))));
    break;
  }
  case OP_adam_update: { // (p, m, v, lr, step, beta1?): PyTorch's step size in double
    LExpr *lr = operand(L, n, 3, v);
    LExpr *t = lx_cast(LT_F64, operand(L, n, 4, v));
    LExpr *b1 = n->nin > 5 ? lx_cast(LT_F64, lx_load(B(L, n->in[5]), NULL))
                           : lx_f64(node_float(n, "beta1"));
    LExpr *bc1 = FSUB(lx_f64(1), lx_bin(LX_POW, b1, t));
    LExpr *bc2 = FSUB(lx_f64(1), lx_bin(LX_POW, lx_f64(node_float(n, "beta2")), lx_copy(t)));
    LExpr *ss = lx_cast(LT_F32, FDIV(lx_cast(LT_F64, lr), bc1));
    LExpr *bc2s = lx_cast(LT_F32, lx_un(LX_SQRT, bc2));
    LExpr *p = a;
    double wd = node_float(n, "weight_decay");
    if (node_int(n, "decoupled") && wd != 0) // AdamW; Adam's L2 went into the moments
      p = FMUL(p, FSUB(F(1), FMUL(lx_copy(lr), F(wd))));
    LExpr *den = FADD(FDIV(lx_un(LX_SQRT, operand(L, n, 2, v)), bc2s), F(node_float(n, "eps")));
    e = FSUB(p, FMUL(ss, FDIV(b, den)));
    break;
  }
  case OP_dropout_mask: { // dropout_hash.h: keep iff fmix32(key + i * golden) >> 8 >= threshold
    double p = node_float(n, "p");
    LExpr *step = operand(L, n, 0, v), *seed = operand(L, n, 1, v);
    LExpr *key = fmix32(BIN(LX_XOR, U32((uint32_t)node_int(n, "salt") * 0x9e3779b1u),
                            fmix32(BIN(LX_XOR, step, fmix32(seed)))));
    // The flat element index.
    LExpr *flat = K(0);
    for (int d = 0; d < y->rank; d++)
      flat = ADD(MULK(flat, y->dim[d]), v[d]);
    LExpr *h = fmix32(BIN(LX_ADD, key, BIN(LX_MUL, lx_cast(LT_I32, flat), U32(0x9e3779b1u))));
    h = BIN(LX_SHR, h, U32(8));
    LExpr *dropped = BIN(LX_ULT, h, U32(dropout_threshold(p)));
    e = SEL(dropped, F(0), F((float)(1.0 / (1.0 - p))));
    break;
  }
  case OP_assign:
    e = b;
    break;
  case OP_reshape: // only in the test entry, where every node has its own slot
    e = a;
    break;
  default:
    unreachable();
  }
  put(k, in, ls_store(y, v, e));
}

// --- Softmax, log-softmax and their gradients, row by row over [N, C] -------------------

static void lower_rowwise(Lower *L, Node *n) {
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
    LExpr *e = n->op == OP_softmax ? FDIV(lx_un(LX_EXP, z), LD(s))
                                   : FSUB(z, lx_un(LX_LOG, LD(s)));
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

// --- Losses --------------------------------------------------------------------------------
//
// Cross-entropy on log-probabilities, PyTorch 1.13 (mean reduction):
//   W = sum_n w[y_n] (N without weights), rows labelled -100 left out
//   loss = (1-ls) sum_n -w[y_n] logp[n,y_n] / W + ls/C sum_n sum_c -w[c] logp[n,c] / W
// The fused op computes log_softmax of each row on the fly.

typedef struct {
  LBuf *w;     // class weights, or NULL
  LBuf *label; // i32 [N]
  int64_t N, C;
  float ls;
} CE;

static LExpr *class_weight(const CE *ce, LExpr *cls) {
  return ce->w ? lx_load(ce->w, &cls) : F(1);
}

// The row's label as an index (0 for an ignored row) and whether it counts.
static LExpr *row_label(const CE *ce, LExpr *row, LExpr **counts) {
  LExpr *y = lx_load(ce->label, &row);
  *counts = BIN(LX_GE, y, lx_int(LT_I32, 0));
  return lx_cast(LT_I64, SEL(lx_copy(*counts), lx_copy(y), lx_int(LT_I32, 0)));
}

// Locals m and lse: the max and log-sum-exp of logits row `row`.
static void row_stats(LKernel *k, LStmt *parent, LBuf *x, LExpr *row, int64_t C, LBuf *m,
                      LBuf *lse) {
  LExpr *i;
  ls_add(parent, ST(m, F(-INFINITY)));
  LStmt *l = reduce_loop(k, parent, C, "c", &i);
  ls_add(l, ST(m, lx_bin(LX_MAX, LD(m), LD(x, lx_copy(row), i))));
  ls_add(parent, ST(lse, F(0)));
  l = reduce_loop(k, parent, C, "c", &i);
  ls_add(l, ST(lse, FADD(LD(lse), lx_un(LX_EXP, FSUB(LD(x, lx_copy(row), i), LD(m))))));
  ls_add(parent, ST(lse, lx_un(LX_LOG, LD(lse))));
}

static void lower_ce(Lower *L, Node *n) {
  bool grad = n->op == OP_nll_loss_grad || n->op == OP_softmax_cross_entropy_grad;
  bool fused = n->op == OP_softmax_cross_entropy || n->op == OP_softmax_cross_entropy_grad;
  int xi = grad ? 1 : 0;
  LBuf *x = B(L, n->in[xi]), *out = B(L, n);
  CE ce = {n->nin > xi + 2 ? B(L, n->in[xi + 2]) : NULL, B(L, n->in[xi + 1]), x->dim[0], x->dim[1],
           (float)node_float(n, "label_smoothing")};
  LKernel *k = kernel(L, n, NULL);
  LBuf *W = local(L, "W", DT_F32), *sumw = local(L, "sumw", DT_F32);
  LBuf *m = local(L, "max", DT_F32), *lse = local(L, "lse", DT_F32);
  LExpr *row, *i, *counts;
  // W: the weights of the rows that count.
  lk_add(k, ST(W, F(0)));
  LStmt *l = reduce_loop(k, NULL, ce.N, "n", &row);
  LExpr *y = row_label(&ce, row, &counts);
  ls_add(l, ST(W, FADD(LD(W), SEL(counts, class_weight(&ce, y), F(0)))));
  lk_add(k, ST(sumw, F((double)ce.C)));
  if (ce.w) {
    lk_add(k, ST(sumw, F(0)));
    l = reduce_loop(k, NULL, ce.C, "c", &i);
    ls_add(l, ST(sumw, FADD(LD(sumw), lx_load(ce.w, &i))));
  }
  float ls = ce.ls;
  if (!grad) {
    LBuf *nll = local(L, "nll", DT_F32), *smooth = local(L, "smooth", DT_F32);
    lk_add(k, ST(nll, F(0)));
    lk_add(k, ST(smooth, F(0)));
    LStmt *rl = reduce_loop(k, NULL, ce.N, "n", &row);
    LExpr *mv = F(0), *lv = F(0);
    if (fused) {
      row_stats(k, rl, x, row, ce.C, m, lse);
      mv = LD(m), lv = LD(lse);
    }
    y = row_label(&ce, row, &counts);
    LExpr *lp = FSUB(FSUB(LD(x, lx_copy(row), y), mv), lv);
    ls_add(rl, ST(nll, FADD(LD(nll), SEL(counts, lx_un(LX_NEG, FMUL(class_weight(&ce, lx_copy(y)), lp)), F(0)))));
    if (ls != 0) {
      LBuf *rs = local(L, "rowsum", DT_F32);
      ls_add(rl, ST(rs, F(0)));
      LStmt *cl = reduce_loop(k, rl, ce.C, "c", &i);
      LExpr *lpi = FSUB(FSUB(LD(x, lx_copy(row), i), fused ? LD(m) : F(0)), fused ? LD(lse) : F(0));
      ls_add(cl, ST(rs, FADD(LD(rs), FMUL(class_weight(&ce, lx_copy(i)), lpi))));
      ls_add(rl, ST(smooth, FADD(LD(smooth), SEL(lx_copy(counts), lx_un(LX_NEG, LD(rs)), F(0)))));
    }
    LExpr *loss = FDIV(LD(nll), LD(W));
    if (ls != 0)
      loss = FADD(FMUL(F(1.0f - ls), loss), FMUL(FDIV(LD(smooth), LD(W)), F(ls / (float)ce.C)));
    lk_add(k, ST(out, loss));
    return;
  }
  // d loss / d logp[n,c] = -((1-ls) w[y] [c==y] + ls/C w[c]) / W; the fused
  // gradient adds softmax * (the row's total of that, negated).
  LBuf *dl = B(L, n->in[0]);
  LStmt *rl = loop(k, NULL, ce.N, "n", &row);
  y = row_label(&ce, row, &counts);
  LBuf *wy = local(L, "wy", DT_F32), *total = local(L, "total", DT_F32);
  ls_add(rl, ST(wy, class_weight(&ce, y)));
  if (fused) {
    row_stats(k, rl, x, row, ce.C, m, lse);
    ls_add(rl, ST(total, FDIV(FADD(FMUL(F(1.0f - ls), LD(wy)), FMUL(F(ls / (float)ce.C), LD(sumw))),
                              LD(W))));
  }
  LStmt *cl = loop(k, rl, ce.C, "c", &i);
  LExpr *hit = BIN(LX_EQ, lx_copy(i), row_label(&ce, lx_copy(row), &counts));
  LExpr *g = FMUL(F(ls / (float)ce.C), class_weight(&ce, lx_copy(i)));
  g = FADD(g, SEL(hit, FMUL(F(1.0f - ls), LD(wy)), F(0)));
  g = lx_un(LX_NEG, FDIV(g, LD(W)));
  if (fused)
    g = FADD(g, FMUL(lx_un(LX_EXP, FSUB(FSUB(LD(x, lx_copy(row), lx_copy(i)), LD(m)), LD(lse))),
                     LD(total)));
  ls_add(cl, ST(out, SEL(counts, FMUL(lx_load(dl, NULL), g), F(0)), lx_copy(row), lx_copy(i)));
}

// BCE family, mean over the elements whose target is not negative.
static void lower_bce(Lower *L, Node *n) {
  bool grad = n->op == OP_bce_grad || n->op == OP_sigmoid_bce_grad;
  int xi = grad ? 1 : 0;
  LBuf *x = B(L, n->in[xi]), *t = B(L, n->in[xi + 1]), *out = B(L, n);
  LKernel *k = kernel(L, n, NULL);
  const Attr *pwa = node_attr(n, "pos_weight");
  LBuf *pwb = NULL;
  if (pwa->n > 1) {
    int64_t np = pwa->n;
    pwb = lfunc_buf(L->f, "pos_weight", DT_F32, 1, &np, LB_CONST);
    pwb->values = pwa->floats;
    pwb->nvalues = pwa->n;
  }
  LBuf *count = local(L, "count", DT_F32), *acc = local(L, "sum", DT_F32);
  LExpr *v[LMAX_RANK];
  lk_add(k, ST(count, F(0)));
  LStmt *l = each(k, NULL, x, v, NULL);
  ls_add(l, ST(count, FADD(LD(count), SEL(BIN(LX_GE, LDV(t, v), F(0)), F(1), F(0)))));
  lk_add(k, ST(acc, F(0)));
  l = each(k, NULL, x, v, NULL);
  LExpr *xv = LDV(x, v), *y = LDV(t, v);
  LExpr *counts = BIN(LX_GE, lx_copy(y), F(0));
  LExpr *last = v[x->rank - 1];
  LExpr *pw = pwa->n == 0 ? F(1) : pwa->n == 1 ? F(pwa->floats[0]) : lx_load(pwb, &last);
  LExpr *one_y = FSUB(F(1), lx_copy(y));
  LExpr *e;
  switch (n->op) {
  case OP_bce: { // -(pw y log p + (1-y) log(1-p)), logs clamped at -100 like PyTorch
    LExpr *lp = lx_bin(LX_MAX, lx_un(LX_LOG, xv), F(-100));
    LExpr *lq = lx_bin(LX_MAX, lx_un(LX_LOG, FSUB(F(1), lx_copy(xv))), F(-100));
    e = lx_un(LX_NEG, FADD(FMUL(FMUL(pw, y), lp), FMUL(one_y, lq)));
    ls_add(l, ST(acc, FADD(LD(acc), SEL(counts, e, F(0)))));
    break;
  }
  case OP_sigmoid_bce: { // (1-y) x + (1 + (pw-1) y) (log(e^-mv + e^(-x-mv)) + mv), mv = max(-x, 0)
    LExpr *mv = lx_bin(LX_MAX, lx_un(LX_NEG, xv), F(0));
    LExpr *lw = FADD(FMUL(FSUB(pw, F(1)), y), F(1));
    LExpr *sp = FADD(lx_un(LX_LOG, FADD(lx_un(LX_EXP, lx_un(LX_NEG, mv)),
                                       lx_un(LX_EXP, FSUB(lx_un(LX_NEG, lx_copy(xv)), lx_copy(mv))))),
                     lx_copy(mv));
    e = FADD(FMUL(one_y, lx_copy(xv)), FMUL(lw, sp));
    ls_add(l, ST(acc, FADD(LD(acc), SEL(counts, e, F(0)))));
    break;
  }
  case OP_bce_grad: { // (-pw y (1-p) + (1-y) p) / max(p (1-p), 1e-12)
    LExpr *dl = FDIV(lx_load(B(L, n->in[0]), NULL), LD(count));
    LExpr *q = FSUB(F(1), xv);
    LExpr *num = FADD(lx_un(LX_NEG, FMUL(FMUL(pw, y), q)), FMUL(one_y, lx_copy(xv)));
    LExpr *den = lx_bin(LX_MAX, FMUL(lx_copy(xv), lx_copy(q)), F(1e-12));
    ls_add(l, ls_store(out, v, SEL(counts, FMUL(dl, FDIV(num, den)), F(0))));
    break;
  }
  case OP_sigmoid_bce_grad: { // dl ((pw y + 1 - y) sigmoid(x) - pw y)
    LExpr *dl = FDIV(lx_load(B(L, n->in[0]), NULL), LD(count));
    LExpr *s = FDIV(F(1), FADD(F(1), lx_un(LX_EXP, lx_un(LX_NEG, xv))));
    LExpr *py = FMUL(pw, y);
    LExpr *g = FMUL(dl, FSUB(FMUL(FADD(py, one_y), s), lx_copy(py)));
    ls_add(l, ls_store(out, v, SEL(counts, g, F(0))));
    break;
  }
  default:
    unreachable();
  }
  if (!grad)
    lk_add(k, ST(out, FDIV(LD(acc), LD(count))));
}

static void lower_l2norm(Lower *L, Node *n) {
  LBuf *x = B(L, n->in[0]), *out = B(L, n);
  LKernel *k = kernel(L, n, NULL);
  LBuf *acc = local(L, "sum", DT_F32);
  LExpr *v[LMAX_RANK];
  lk_add(k, ST(acc, F(0)));
  LStmt *l = each(k, NULL, x, v, NULL);
  ls_add(l, ST(acc, lx_fma(LDV(x, v), LDV(x, v), LD(acc))));
  lk_add(k, ST(out, lx_un(LX_SQRT, LD(acc))));
}

// --- Batch normalisation and channel statistics --------------------------------------------
//
// Per channel over (N, H, W): mean, biased variance for normalising (the
// unbiased one for the running statistics), xhat = (x - mean) * rstd.

// Sums over (n, s) of channel ch into local acc: x, (x - mean)^2 or dy * xhat.
static void channel_sum(Lower *L, LKernel *k, LStmt *parent, LBuf *x, LBuf *dy, LExpr *ch,
                        LBuf *acc, LBuf *mean, LBuf *rstd, int mode) {
  LExpr *v[LMAX_RANK], *b;
  ls_add(parent, ST(acc, F(0)));
  LStmt *l = reduce_loop(k, parent, x->dim[0], "n", &b);
  v[0] = b;
  v[1] = ch;
  for (int d = 2; d < x->rank; d++)
    l = reduce_loop(k, l, x->dim[d], d == 2 ? "h" : "w", &v[d]);
  LExpr *xv = LDV(x, v), *t;
  if (mode == 0)
    t = xv;
  else if (mode == 1)
    t = FMUL(FSUB(xv, LD(mean)), FSUB(lx_copy(xv), LD(mean)));
  else
    t = FMUL(LDV(dy, v), FMUL(FSUB(xv, LD(mean)), LD(rstd)));
  ls_add(l, ST(acc, FADD(LD(acc), t)));
}

static void lower_batchnorm(Lower *L, Node *n) {
  bool has_eps = op_attr_index(n->op, "eps") >= 0;
  float eps = has_eps ? (float)node_float(n, "eps") : 0.0f;
  bool grads = n->op == OP_batchnorm2d_grad_input || n->op == OP_batchnorm2d_grad_gamma;
  LBuf *x = B(L, n->in[grads ? 1 : 0]), *out = B(L, n);
  int64_t C = x->dim[1], M = lbuf_numel(x) / C;
  LKernel *k = kernel(L, n, NULL);
  LBuf *mean = local(L, "mean", DT_F32), *var = local(L, "var", DT_F32);
  LBuf *rstd = local(L, "rstd", DT_F32), *acc = local(L, "sum", DT_F32);
  LExpr *ch;
  LStmt *cl = loop(k, NULL, C, "c", &ch);
  // mean and biased variance of channel ch of buffer b.
#define STATS(b, unbiased)                                                                         \
  do {                                                                                             \
    channel_sum(L, k, cl, b, NULL, ch, acc, NULL, NULL, 0);                                        \
    ls_add(cl, ST(mean, FDIV(LD(acc), F((double)M))));                                            \
    channel_sum(L, k, cl, b, NULL, ch, acc, mean, NULL, 1);                                        \
    ls_add(cl, ST(var, FDIV(LD(acc), F((double)((unbiased) ? M - 1 : M)))));                       \
  } while (0)
  LExpr *v[LMAX_RANK], *b;
  switch (n->op) {
  case OP_batchnorm2d:
  case OP_batchnorm2d_infer: {
    if (n->op == OP_batchnorm2d) {
      STATS(x, false);
    } else {
      ls_add(cl, ST(mean, LD(B(L, n->in[3]), ch)));
      ls_add(cl, ST(var, LD(B(L, n->in[4]), ch)));
    }
    ls_add(cl, ST(rstd, FDIV(F(1), lx_un(LX_SQRT, FADD(LD(var), F(eps))))));
    LStmt *l = loop(k, cl, x->dim[0], "n", &b);
    v[0] = b, v[1] = ch;
    for (int d = 2; d < x->rank; d++)
      l = loop(k, l, x->dim[d], d == 2 ? "h" : "w", &v[d]);
    LExpr *e = FADD(FMUL(FMUL(FSUB(LDV(x, v), LD(mean)), LD(rstd)), LD(B(L, n->in[1]), lx_copy(ch))),
                    LD(B(L, n->in[2]), lx_copy(ch)));
    ls_add(l, ls_store(out, v, e));
    break;
  }
  case OP_channel_mean:
    channel_sum(L, k, cl, x, NULL, ch, acc, NULL, NULL, 0);
    ls_add(cl, ST(out, FDIV(LD(acc), F((double)M)), ch));
    break;
  case OP_channel_var:
    STATS(x, node_int(n, "unbiased") != 0);
    ls_add(cl, ST(out, LD(var), ch));
    break;
  case OP_batchnorm2d_grad_gamma:
  case OP_batchnorm2d_grad_input: {
    // (dy, x[, gamma]): dx = gamma * rstd / M * (M dy - sum(dy) - xhat * sum(dy * xhat)).
    LBuf *dy = B(L, n->in[0]);
    STATS(x, false);
    ls_add(cl, ST(rstd, FDIV(F(1), lx_un(LX_SQRT, FADD(LD(var), F(eps))))));
    LBuf *sdyx = local(L, "sdyx", DT_F32), *sdy = local(L, "sdy", DT_F32);
    channel_sum(L, k, cl, x, dy, ch, sdyx, mean, rstd, 2);
    if (n->op == OP_batchnorm2d_grad_gamma) {
      ls_add(cl, ST(out, LD(sdyx), ch));
      break;
    }
    channel_sum(L, k, cl, dy, NULL, ch, sdy, NULL, NULL, 0);
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
}

// --- The table ------------------------------------------------------------------------------

typedef void (*LowerFn)(Lower *L, Node *n);

static LowerFn lowering(OpKind op) {
  switch (op) {
  case OP_conv2d: return lower_conv2d;
  case OP_conv2d_grad_input: return lower_conv2d_grad_input;
  case OP_conv2d_grad_weight: return lower_conv2d_grad_weight;
  case OP_bias_grad: return lower_bias_grad;
  case OP_maxpool2d: return lower_maxpool2d;
  case OP_avgpool2d: return lower_avgpool2d;
  case OP_maxpool2d_grad: return lower_maxpool2d_grad;
  case OP_avgpool2d_grad: return lower_avgpool2d_grad;
  case OP_linear: return lower_linear;
  case OP_linear_grad_input: return lower_linear_grad_input;
  case OP_linear_grad_weight: return lower_linear_grad_weight;
  case OP_softmax: case OP_log_softmax: case OP_softmax_grad: case OP_log_softmax_grad:
    return lower_rowwise;
  case OP_nll_loss: case OP_softmax_cross_entropy: case OP_nll_loss_grad:
  case OP_softmax_cross_entropy_grad:
    return lower_ce;
  case OP_bce: case OP_sigmoid_bce: case OP_bce_grad: case OP_sigmoid_bce_grad:
    return lower_bce;
  case OP_l2norm: return lower_l2norm;
  case OP_batchnorm2d: case OP_batchnorm2d_infer: case OP_channel_mean: case OP_channel_var:
  case OP_batchnorm2d_grad_input: case OP_batchnorm2d_grad_gamma:
    return lower_batchnorm;
  case OP_relu: case OP_sigmoid: case OP_scale: case OP_add: case OP_mul: case OP_relu_grad:
  case OP_sigmoid_grad: case OP_ema: case OP_l2norm_grad: case OP_sgd_buf: case OP_sgd_update:
  case OP_adam_moment1: case OP_adam_moment2: case OP_adam_update: case OP_dropout_mask:
  case OP_assign: case OP_reshape:
    return lower_elementwise;
  default:
    return NULL;
  }
}

//
// Functions
//

LBlocks *plan_blocks(Graph *g) {
  LBlocks *b = xcalloc(1, sizeof *b);
  b->params = xcalloc(g->nnodes + 1, sizeof *b->params);
  b->states = xcalloc(g->nnodes + 1, sizeof *b->states);
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    // 16-float aligned, so every tensor starts on a cache line.
    if (n->op == OP_param) {
      b->params[b->nparams++] = (LBlockEntry){n, b->param_floats};
      b->param_floats += (type_numel(&n->type) + 15) / 16 * 16;
    } else if (n->op == OP_state) {
      b->states[b->nstates++] = (LBlockEntry){n, b->state_floats};
      b->state_floats += (type_numel(&n->type) + 15) / 16 * 16;
    }
  }
  return b;
}

static int64_t block_offset(const LBlockEntry *e, int n, Node *node, const char *what) {
  for (int i = 0; i < n; i++)
    if (!strcmp(e[i].node->name, node->name))
      return e[i].offset;
  fatal("%s '%s' of the evaluation graph is not in the training graph", what, node->name);
}

Node *loop_gradient_of(Graph *g, Node *n) {
  size_t len = n->name ? strlen(n->name) : 0;
  if (len <= 5 || strcmp(n->name + len - 5, ".grad"))
    return NULL;
  Node *p = graph_find(g, xstrndup(n->name, len - 5));
  return p && p->op == OP_param ? p : NULL;
}

// The optimizer's part of a training graph: its update ops and the assigns
// that store their results (batch-norm statistics are the forward pass's).
static bool is_update(const Node *n) {
  switch (n->op) {
  case OP_sgd_buf:
  case OP_sgd_update:
  case OP_adam_moment1:
  case OP_adam_moment2:
  case OP_adam_update:
    return true;
  case OP_assign:
    return is_update(n->in[1]);
  default:
    return false;
  }
}

// Which nodes' kernels run in a function: the updates in FN_APPLY_STEP, all
// the others in FN_GRAD_STEP, whose gradients are the only values the second
// reads from the first.
static bool member(Graph *g, Node *v, FuncKind kind) {
  if (op_info(v->op)->flags & OPF_SOURCE)
    return false;
  bool update = is_update(v);
  if (kind == FN_APPLY_STEP && update)
    for (int j = 0; j < v->nin; j++) {
      Node *u = v->in[j];
      if (!(op_info(u->op)->flags & OPF_SOURCE) && !is_update(u) && !loop_gradient_of(g, u))
        error_at(v->loc, "the optimizer reads parameters, their gradients and its state",
                 "optimizer op %s reads %%%s, which is neither", op_info(v->op)->name,
                 u->name ? u->name : "(unnamed)");
    }
  return kind == FN_APPLY_STEP ? update : kind == FN_GRAD_STEP ? !update : true;
}

// Unnamed values are numbered as print_graph numbers them: 0, 1, 2... in order.
static const char *node_name(Graph *g, Node *n) {
  if (n->name)
    return n->name;
  int k = 0;
  for (int i = 0; i < n->id; i++)
    k += !g->node[i]->name;
  return xformat("%d", k);
}

// The scalar inputs of a training step: fields of XcStepArgs.
static bool step_arg(const char *name, DType *dt) {
  static const struct {
    const char *name;
    DType dtype;
  } fields[] = {{"step", DT_I32},     {"seed", DT_I32},    {"lr", DT_F32},
                {"momentum", DT_F32}, {"opt_step", DT_I32}};
  for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
    if (!strcmp(fields[i].name, name)) {
      *dt = fields[i].dtype;
      return true;
    }
  return false;
}

// Every node's buffer in f; then its kernels, in graph order.
static LFunc *lower_function(Graph *g, FuncKind kind, const char *name, const LBlocks *blocks) {
  graph_renumber(g);
  LFunc *f = xcalloc(1, sizeof *f);
  f->name = xstrdup(name);
  f->kind = kind;
  f->g = g;
  f->buf_of = xcalloc(g->nnodes + 1, sizeof *f->buf_of);
  bool step = kind == FN_GRAD_STEP || kind == FN_APPLY_STEP;
  for (int i = 0; i < g->nnodes; i++) {
    Node *v = g->node[i];
    const Type *t = &v->type;
    if (v->op == OP_assign && kind != FN_SLOTS) {
      f->buf_of[i] = f->buf_of[v->in[0]->id]; // the copy lands in the target itself
      continue;
    }
    LBuf *b = lfunc_buf(f, node_name(g, v), t->dtype, t->rank, t->dim, LB_WORKSPACE);
    b->node = v;
    f->buf_of[i] = b;
    if (v->op == OP_const) {
      b->storage = LB_CONST;
      const Attr *a = node_attr(v, "value");
      b->values = a->floats;
      b->nvalues = a->n;
    } else if (kind == FN_SLOTS) {
      b->storage = LB_SLOT;
      b->slot = i;
    } else if (v->op == OP_param) {
      b->storage = LB_PARAM;
      b->offset = block_offset(blocks->params, blocks->nparams, v, "parameter");
    } else if (v->op == OP_state) {
      b->storage = LB_STATE;
      b->offset = block_offset(blocks->states, blocks->nstates, v, "state");
    } else if (step && loop_gradient_of(g, v)) {
      b->storage = LB_GRAD;
      b->offset = block_offset(blocks->params, blocks->nparams, loop_gradient_of(g, v), "parameter");
    } else if (v->op == OP_input) {
      const char *nm = v->name ? v->name : "";
      DType dt;
      if (!strcmp(nm, "image") || !strcmp(nm, "label"))
        b->storage = LB_ARG;
      else if (step_arg(nm, &dt) && dt == t->dtype && t->rank == 0)
        b->storage = LB_SCALAR;
      else if (step_arg(nm, &dt))
        error_at(v->loc, "declare it as the runtime feeds it", "input '%%%s' must be %s[]", nm,
                 dt == DT_F32 ? "f32" : "i32");
      else
        error_at(v->loc,
                 "the runtime feeds only %image, %label, %step, %seed, %lr, %momentum and "
                 "%opt_step",
                 "input '%%%s' cannot be fed by the runtime", nm);
      b->arg = v->name;
    } else if (v->op == OP_reshape) {
      b->alias = f->buf_of[v->in[0]->id];
    }
  }
  Lower L = {f, g, blocks};
  for (int pass = 0; pass < 2; pass++) // assigns after every other kernel
    for (int i = 0; i < g->nnodes; i++) {
      Node *v = g->node[i];
      if (!member(g, v, kind) || (v->op == OP_assign) != (pass == 1))
        continue;
      if (v->op == OP_reshape && kind != FN_SLOTS)
        continue; // an alias: no copy
      LowerFn fn = lowering(v->op);
      if (!fn)
        fatal("code generation does not support op '%s'", op_info(v->op)->name);
      int before = f->nkernels;
      fn(&L, v);
      for (int k = before; k < f->nkernels; k++)
        f->kernels[k]->deferred = v->op == OP_assign;
    }
  if (kind == FN_GRAD_STEP || kind == FN_FORWARD)
    f->result = f->buf_of[g->ret[0]->id];
  return f;
}

static void add_func(LProgram *p, LFunc *f) {
  p->funcs = realloc(p->funcs, sizeof *p->funcs * (p->nfuncs + 1));
  if (!p->funcs)
    fatal("out of memory");
  p->funcs[p->nfuncs++] = f;
}

LProgram *lower_program(Graph *train, Graph *eval, int opt_level) {
  ir_assert(train || eval);
  LProgram *p = xcalloc(1, sizeof *p);
  p->opt_level = opt_level;
  p->blocks = plan_blocks(train ? train : eval);
  if (train) {
    add_func(p, lower_function(train, FN_GRAD_STEP, "xc_grad_step", p->blocks));
    add_func(p, lower_function(train, FN_APPLY_STEP, "xc_apply_step", p->blocks));
  }
  if (eval)
    add_func(p, lower_function(eval, FN_FORWARD, "xc_forward", p->blocks));
  return p;
}

LProgram *lower_slots(Graph *g, const char *name) {
  LProgram *p = xcalloc(1, sizeof *p);
  p->blocks = plan_blocks(g);
  add_func(p, lower_function(g, FN_SLOTS, name, p->blocks));
  return p;
}

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
  if (x->rank != 4 || !dtype_is_float(x->dtype))
    FAIL("input must be a float [N,C,H,W] tensor, got %s", type_str(x));
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
//
// The windows CNNs use (2x2, 3x3) are lowered with their taps unrolled: the
// output plane is cut into regions whose windows all keep the same taps
// inside the input (one region without padding; with padding, the edge rows
// and columns apart), so no tap needs a guard and a region's innermost loop
// runs over output columns with a plain body that LLVM's loop vectorizer
// takes whole (below). Bigger windows keep the textbook nest: loops over the
// taps, guarded where padded. Either way a kernel is one loop over the batch,
// for the threads, and computes every value as the textbook nest does, in
// the same order.

// Loop roles, printed as the variables' names.
static const char *const nchw[] = {"n", "c", "h", "w"};

typedef struct {
  int64_t H, W, KH, KW, s0, s1, p0, p1;
  int64_t HO, WO;
} Pool;

static Pool pool_of(Node *n, const LBuf *x) {
  const int64_t *k = ints(n, "kernel"), *s = ints(n, "stride"), *p = ints(n, "padding");
  Pool w = {x->dim[2], x->dim[3], k[0], k[1], s[0], s[1], p[0], p[1], 0, 0};
  w.HO = (w.H + 2 * w.p0 - w.KH) / w.s0 + 1;
  w.WO = (w.W + 2 * w.p1 - w.KW) / w.s1 + 1;
  return w;
}

// Windows do not overlap: each input element is in one window at most.
static bool disjoint_windows(const Pool *w) {
  return (w->s0 >= w->KH || w->HO == 1) && (w->s1 >= w->KW || w->WO == 1);
}

// --- The textbook nest -----------------------------------------------------------------

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
static void window_max(LKernel *k, LStmt *sp, LBuf *x, const Pool *w, LExpr **v, LBuf *best,
                       LBuf *arg) {
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

// --- Unrolled windows --------------------------------------------------------------------
//
// A region's column loop keeps a window's running maximum in a local (a
// register), so vectorize, which wants bodies of plain stores, leaves it
// alone: its vector loops read stride-2 taps lane by lane, which LLVM turns
// into gathers. LLVM's own loop vectorizer reads them as whole vectors split
// by shuffles, but only in a loop it has not unrolled whole first, which it
// does to a short one. So a short column loop computes several output rows
// per iteration (2x2 windows on 8 columns ran 5x faster, on 4 columns 3x),
// wherever the order of the windows does not matter.

// Along one dimension, the outputs [lo, hi) whose windows keep the taps
// [klo, khi) inside the input.
typedef struct {
  int64_t lo, hi, klo, khi;
} Span;

// The spans of `no` outputs over `n` inputs, in order; returns how many.
static int spans(int64_t no, int64_t n, int64_t K, int64_t s, int64_t p, Span *out) {
  int m = 0;
  for (int64_t o = 0; o < no; o++) {
    int64_t a = p - s * o > 0 ? p - s * o : 0, b = n + p - s * o < K ? n + p - s * o : K;
    ir_assert(a < b); // padding is at most half the kernel: no window is all padding
    if (m && out[m - 1].klo == a && out[m - 1].khi == b)
      out[m - 1].hi = o + 1;
    else
      out[m++] = (Span){o, o + 1, a, b};
  }
  return m;
}

// Output rows per column loop iteration, at most; and the taps that make
// an iteration big enough: a sum's taps cost half a maximum's.
enum { MAX_JAM = 8, JAM_MAX = 64, JAM_SUM = 128 };

// A region: a loop over output rows (row), MAX_JAM or fewer of them per
// iteration (oh[0..nrows), in order), holding a loop over output columns
// (col, where the body goes) whose windows keep the taps [r.klo, r.khi) x
// [c.klo, c.khi) inside the input.
typedef struct {
  LStmt *row, *col;
  LExpr *oh[MAX_JAM], *ow;
  int nrows;
  Span r, c;
} Region;

typedef struct {
  Region *g;
  int n;
} Regions;

// The output rows [lo, hi) as one loop of `jam` rows per iteration, its
// column loops inside, appended to *out.
static void row_regions(LKernel *k, LStmt *parent, const Span *r, int64_t lo, int64_t hi, int jam,
                        const Span *cols, int ncols, Regions *out) {
  int rv = lk_var(k);
  LStmt *row = ls_loop(rv, 0, (hi - lo) / jam, "oh");
  ls_add(parent, row);
  for (int j = 0; j < ncols; j++) {
    int cv = lk_var(k);
    Region *g = &out->g[out->n++];
    LStmt *col = ls_loop(cv, cols[j].lo, cols[j].hi, "ow");
    *g = (Region){row, col, {0}, lx_var(cv), jam, *r, cols[j]};
    for (int i = 0; i < jam; i++)
      g->oh[i] = ADDK(MULK(lx_var(rv), jam), lo + i);
    ls_add(row, g->col);
  }
}

// Windows up to 3x3 are unrolled; bigger ones keep the textbook nest.
static bool unrolled(const Pool *w) { return w->KH <= 3 && w->KW <= 3; }

// The regions of the output plane as loops inside parent. Each row span's
// loop holds its column spans' loops in order. With jam > 0, rows go in
// groups of up to MAX_JAM so that a column loop iteration reads `jam` taps
// or more, the rows left over in a loop of their own.
static Regions regions(LKernel *k, LStmt *parent, const Pool *w, int64_t jam) {
  ir_assert(unrolled(w));
  Regions out = {NULL, 0};
  Span *rs = xcalloc(w->HO, sizeof *rs), *cs = xcalloc(w->WO, sizeof *cs);
  int nr = spans(w->HO, w->H, w->KH, w->s0, w->p0, rs);
  int nc = spans(w->WO, w->W, w->KW, w->s1, w->p1, cs);
  int64_t per_row = w->WO * w->KH * w->KW, rows = jam ? (jam + per_row - 1) / per_row : 1;
  rows = rows < MAX_JAM ? rows : MAX_JAM;
  out.g = xcalloc(2 * nr * nc, sizeof *out.g);
  for (int i = 0; i < nr; i++) {
    int64_t n = rs[i].hi - rs[i].lo, m = rows < n ? rows : n, full = rs[i].lo + n / m * m;
    row_regions(k, parent, &rs[i], rs[i].lo, full, (int)m, cs, nc, &out);
    if (full < rs[i].hi)
      row_regions(k, parent, &rs[i], full, rs[i].hi, 1, cs, nc, &out);
  }
  free(rs), free(cs);
  return out;
}

// Input row ih (or column iw) of tap t of output o.
static LExpr *tap_at(LExpr *o, int64_t s, int64_t p, int64_t t) { return ADDK(MULK(o, s), t - p); }

// Row i of region g's window at tap (kh, kw), in x.
static LExpr *tap_load(LBuf *x, LExpr **v, const Pool *w, const Region *g, int i, int64_t kh,
                       int64_t kw) {
  return LD(x, v[0], v[1], tap_at(g->oh[i], w->s0, w->p0, kh), tap_at(g->ow, w->s1, w->p1, kw));
}

// Does xv take the place of b, the maximum so far (both used once)? When
// greater, or a NaN while b is not: the first maximum, the first NaN kept.
static LExpr *wins(LExpr *xv, LExpr *b) {
  return lx_bin(LX_AND, BIN(LX_UGT, xv, b), lx_un(LX_NOT, lx_un(LX_UNO, lx_copy(b))));
}

// The first maximum of row i of region g's window into best (a local, or
// the output element itself, at best_idx) and, with arg, its tap
// kh * KW + kw into local arg: the first tap inside, then every later one
// that wins (window_max's values, without its start at -inf).
static void region_max(LBuf *x, LExpr **v, const Pool *w, const Region *g, int i, LBuf *best,
                       LExpr **best_idx, LBuf *arg, LExpr **arg_idx) {
  for (int64_t kh = g->r.klo; kh < g->r.khi; kh++)
    for (int64_t kw = g->c.klo; kw < g->c.khi; kw++) {
      LExpr *xv = tap_load(x, v, w, g, i, kh, kw), *tap = lx_int(LT_I32, kh * w->KW + kw);
      LExpr *at[LMAX_RANK], *at2[LMAX_RANK], *at3[LMAX_RANK], *a[LMAX_RANK], *a2[LMAX_RANK];
      for (int d = 0; d < best->rank; d++)
        at[d] = lx_copy(best_idx[d]), at2[d] = lx_copy(best_idx[d]), at3[d] = lx_copy(best_idx[d]);
      for (int d = 0; arg && d < arg->rank; d++)
        a[d] = lx_copy(arg_idx[d]), a2[d] = lx_copy(arg_idx[d]);
      if (kh == g->r.klo && kw == g->c.klo) {
        if (arg)
          ls_add(g->col, ls_store(arg, a, tap));
        ls_add(g->col, ls_store(best, at, xv));
        continue;
      }
      LExpr *take = wins(xv, lx_load(best, at));
      if (arg)
        ls_add(g->col, ls_store(arg, a, SEL(lx_copy(take), tap, lx_load(arg, a2))));
      ls_add(g->col, ls_store(best, at2, SEL(take, lx_copy(xv), lx_load(best, at3))));
    }
}

static void lower_maxpool2d(Lowering *L, Node *n) {
  LBuf *y = B(L, n), *x = B(L, n->in[0]);
  Pool w = pool_of(n, x);
  LKernel *k = kernel(L, n, NULL);
  LExpr *v[4];
  LStmt *plane = lk_nest(k, NULL, 2, y->dim, nchw, v);
  if (!unrolled(&w)) {
    LBuf *best = local(L, "best", DT_F32);
    LStmt *sp = lk_nest(k, plane, 2, y->dim + 2, nchw + 2, v + 2);
    window_max(k, sp, x, &w, v, best, local(L, "arg", DT_I32));
    ls_add(sp, ST(y, LD(best), v[0], v[1], v[2], v[3]));
    return;
  }
  // The maximum so far lives in the output element itself: every statement
  // of a column loop then stores y at the column (consecutive elements),
  // so the vectorize pass makes vectors of the columns, its stride-2 taps
  // loaded as vectors and shuffled (codegen/walk.c). y has x's element
  // type: holding x's values there rounds nothing.
  Regions rg = regions(k, plane, &w, JAM_MAX);
  for (int i = 0; i < rg.n; i++)
    for (int j = 0; j < rg.g[i].nrows; j++) {
      LExpr *at[4] = {v[0], v[1], rg.g[i].oh[j], rg.g[i].ow};
      region_max(x, v, &w, &rg.g[i], j, y, at, NULL, NULL);
    }
  free(rg.g);
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

// Marks the inputs of a dimension that some window covers.
static void covered(int64_t no, int64_t n, int64_t K, int64_t s, int64_t p, bool *in) {
  for (int64_t o = 0; o < no; o++)
    for (int64_t t = 0; t < K; t++)
      if (s * o - p + t >= 0 && s * o - p + t < n)
        in[s * o - p + t] = true;
}

// Every input is in some window (global pooling, say).
static bool covers_all(const Pool *w) {
  bool *row = xcalloc(w->H, 1), *col = xcalloc(w->W, 1), all = true;
  covered(w->HO, w->H, w->KH, w->s0, w->p0, row);
  covered(w->WO, w->W, w->KW, w->s1, w->p1, col);
  for (int64_t i = 0; i < w->H; i++)
    all &= row[i];
  for (int64_t i = 0; i < w->W; i++)
    all &= col[i];
  free(row), free(col);
  return all;
}

// dx[n, c, ih, w] = 0 for every w in [lo, hi), inside parent.
static void zero_row(LKernel *k, LStmt *parent, LBuf *dx, LExpr **v, LExpr *ih, int64_t lo,
                     int64_t hi) {
  int var = lk_var(k);
  LStmt *l = ls_loop(var, lo, hi, "w");
  ls_add(parent, l);
  ls_add(l, ST(dx, F(0), v[0], v[1], ih, lx_var(var)));
}

// Zeroes the elements of dx no window covers: the rows no window covers,
// inside plane, and the columns no window covers in the others, inside
// each region's row loop.
static void zero_uncovered(LKernel *k, LStmt *plane, LBuf *dx, LExpr **v, const Pool *w,
                           const Regions *rg) {
  bool *row = xcalloc(w->H, 1), *col = xcalloc(w->W, 1);
  covered(w->HO, w->H, w->KH, w->s0, w->p0, row);
  covered(w->WO, w->W, w->KW, w->s1, w->p1, col);
  for (int64_t a = 0, b; a < w->H; a = b) {
    for (b = a + 1; b < w->H && row[b] == row[a];)
      b++;
    if (row[a])
      continue;
    int var = lk_var(k);
    LStmt *l = ls_loop(var, a, b, "h");
    ls_add(plane, l);
    zero_row(k, l, dx, v, lx_var(var), 0, w->W);
  }
  for (int i = 0; i < rg->n; i++) {
    const Region *g = &rg->g[i];
    if (i > 0 && g->row == rg->g[i - 1].row)
      continue;
    for (int64_t a = 0, b; a < w->W; a = b) {
      for (b = a + 1; b < w->W && col[b] == col[a];)
        b++;
      for (int j = 0; j < g->nrows && !col[a]; j++)
        for (int64_t kh = g->r.klo; kh < g->r.khi; kh++)
          zero_row(k, g->row, dx, v, tap_at(g->oh[j], w->s0, w->p0, kh), a, b);
    }
  }
  free(row), free(col);
}

// Another loop over region g's columns, after its first in its row loop:
// the body goes there now.
static void next_col(LKernel *k, Region *g) {
  int cv = lk_var(k);
  g->col = ls_loop(cv, g->c.lo, g->c.hi, "ow");
  ls_add(g->row, g->col);
  g->ow = lx_var(cv);
}

// Gradients: dx starts at 0; each window adds its dy to the tap that won
// (max) or to every tap inside (average), windows in row-major order. Max
// pooling first finds a row's maxima in a column loop of their own, into a
// row of taps (one loop doing both, its many stores to dx among the loads,
// LLVM leaves scalar); the maximum so far and its tap live at the column
// (best[ow], taps[row, ow]), so the vectorize pass makes vectors of that
// loop, as of the forward's.
//
// When windows do not overlap, an element inside one is written once, with
// 0 + its share (so a -0 share is +0, as the sum makes it), and the others
// are zeroed apart: no pass over dx before the windows, no read of it (for
// a window bigger than 3x3, when the windows cover the input). When
// they overlap, each tap of a row of windows adds in a column loop of its
// own, rightmost tap first, so an element still gets its windows' shares in
// row-major order and no iteration reads what the one before wrote (that
// stalls on every element).
static void lower_pool_grad(Lowering *L, Node *n, bool is_max) {
  LBuf *dx = B(L, n), *dy = B(L, n->in[0]), *x = B(L, n->in[1]);
  Pool w = pool_of(n, x);
  LKernel *k = kernel(L, n, NULL);
  LExpr *v[4], *z[4];
  LStmt *plane = lk_nest(k, NULL, 2, dx->dim, nchw, v);
  z[0] = v[0], z[1] = v[1];
  bool once = disjoint_windows(&w) && (unrolled(&w) || covers_all(&w));
  if (!once) {
    LStmt *zl = lk_nest(k, plane, 2, dx->dim + 2, nchw + 2, z + 2);
    ls_add(zl, ST(dx, F(0), z[0], z[1], z[2], z[3]));
  }
  if (!unrolled(&w)) {
    LExpr *kh, *kw, *ih, *iw;
    LStmt *sp = lk_nest(k, plane, 2, dy->dim + 2, nchw + 2, v + 2);
    LBuf *arg = is_max ? local(L, "arg", DT_I32) : NULL;
    if (is_max)
      window_max(k, sp, x, &w, v, local(L, "best", DT_F32), arg);
    LStmt *r = window(k, sp, &w, v[2], v[3], &kh, &kw, &ih, &iw);
    LExpr *g = LD(dy, v[0], v[1], v[2], v[3]);
    if (is_max) {
      LExpr *tap = lx_cast(LT_I32, ADD(MULK(kh, w.KW), kw));
      g = SEL(BIN(LX_EQ, tap, LD(arg)), g, F(0));
    } else {
      g = FDIV(g, F((double)(w.KH * w.KW)));
    }
    ls_add(r, ST(dx, FADD(once ? F(0) : LD(dx, v[0], v[1], ih, iw), g), v[0], v[1], ih, iw));
    return;
  }
  Regions rg = regions(k, plane, &w, once ? JAM_MAX : 0);
  LBuf *taps = NULL, *best = NULL; // [row of the iteration, ow]: the tap that won; [ow]
  if (is_max) {
    taps = lfunc_buf(L->f, "taps", DT_I32, 2, (int64_t[]){MAX_JAM, w.WO}, LB_LOCAL);
    best = lfunc_buf(L->f, "best", DT_F32, 1, (int64_t[]){w.WO}, LB_LOCAL);
  }
  for (int i = 0; i < rg.n; i++) {
    Region *g = &rg.g[i];
    if (taps)
      for (int j = 0; j < g->nrows; j++)
        region_max(x, v, &w, g, j, best, (LExpr *[]){g->ow}, taps, (LExpr *[]){K(j), g->ow});
    bool fresh = !taps; // g->col is still empty
    for (int j = 0; j < g->nrows; j++)
      for (int64_t kh = g->r.klo; kh < g->r.khi; kh++)
        for (int64_t c = g->c.klo; c < g->c.khi; c++) {
          int64_t kw = once ? c : g->c.khi - 1 - (c - g->c.klo);
          if (!fresh && (!once || (j == 0 && kh == g->r.klo && c == g->c.klo)))
            next_col(k, g);
          fresh = false;
          LExpr *ih = tap_at(g->oh[j], w.s0, w.p0, kh), *iw = tap_at(g->ow, w.s1, w.p1, kw);
          LExpr *d = LD(dy, v[0], v[1], g->oh[j], g->ow);
          if (is_max)
            d = SEL(BIN(LX_EQ, LD(taps, K(j), g->ow), lx_int(LT_I32, kh * w.KW + kw)), d, F(0));
          else
            d = FDIV(d, F((double)(w.KH * w.KW)));
          LExpr *old = once ? F(0) : LD(dx, v[0], v[1], ih, iw);
          ls_add(g->col, ST(dx, FADD(old, d), v[0], v[1], ih, iw));
        }
  }
  if (once)
    zero_uncovered(k, plane, dx, v, &w, &rg);
  free(rg.g);
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
  LExpr *v[4];
  LStmt *plane = lk_nest(k, NULL, 2, y->dim, nchw, v);
  LBuf *acc = local(L, "sum", DT_F32);
  if (!unrolled(&w)) {
    LExpr *kh, *kw, *ih, *iw;
    LStmt *sp = lk_nest(k, plane, 2, y->dim + 2, nchw + 2, v + 2);
    ls_add(sp, ST(acc, F(0)));
    LStmt *r = window(k, sp, &w, v[2], v[3], &kh, &kw, &ih, &iw);
    ls_add(r, ST(acc, FADD(LD(acc), LD(x, v[0], v[1], ih, iw))));
    ls_add(sp, ST(y, FDIV(LD(acc), F((double)(w.KH * w.KW))), v[0], v[1], v[2], v[3]));
    return;
  }
  Regions rg = regions(k, plane, &w, JAM_SUM);
  for (int i = 0; i < rg.n; i++) {
    const Region *g = &rg.g[i];
    for (int j = 0; j < g->nrows; j++) {
      ls_add(g->col, ST(acc, F(0)));
      for (int64_t kh = g->r.klo; kh < g->r.khi; kh++)
        for (int64_t kw = g->c.klo; kw < g->c.khi; kw++)
          ls_add(g->col, ST(acc, FADD(LD(acc), tap_load(x, v, &w, g, j, kh, kw))));
      ls_add(g->col, ST(y, FDIV(LD(acc), F((double)(w.KH * w.KW))), v[0], v[1], g->oh[j], g->ow));
    }
  }
  free(rg.g);
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

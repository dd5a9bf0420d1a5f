// vectorize: turns each innermost loop whose iterations store to
// consecutive elements into vector pieces: blocks of 8 lanes, then a piece
// of 4, of 2 and a last single iteration for what remains, so no lane ever
// touches an element past the end (edges take a narrower vector rather
// than a branch). A lane computes exactly what its iteration did, in the
// same order: vectorizing changes no result.
//
// First, a nest over a whole tensor whose every access is that same element
// (the elementwise ops, the optimizer's updates, batch norm's affine part)
// becomes one loop over the flat elements, read and written through flat
// views of the buffers: a [64,32,3,3] weight is 18432 floats in vectors of
// 8, not rows of 3. A big one keeps its outermost loop (the batch) apart,
// for the threads: [32,64,16,16] becomes 32 rows of 16384.
#include "loop.h"

#include <stdlib.h>

enum { LANES = 8 };

// How far apart, in elements, consecutive iterations of var store: 1 for
// consecutive elements, 0 for a store that var does not move or that is
// not affine.
static int64_t store_step(const LBuf *b, LExpr *const *idx, int var) {
  int64_t stride = 1, total = 0;
  for (int d = b->rank - 1; d >= 0; d--) {
    Affine a;
    if (!lx_affine(idx[d], &a))
      return 0;
    total += affine_coef(&a, var) * stride;
    stride *= b->dim[d];
  }
  return total;
}

// The loop's stores can be lanes: each moves forward with the iterations,
// and one whose iterations are more than one element apart (pooling's
// gradient, dx at 2*ow and 2*ow + 1) shares its buffer only with stores
// the same distance apart that fill the gaps (another residue) or lie
// beyond the loop's reach (another row), so no two iterations of the loop
// ever store the same element.
static bool stores_ok(const LStmt *l) {
  for (int i = 0; i < l->nbody; i++) {
    const LStmt *s = l->body[i];
    if (s->kind != LS_STORE)
      return false;
    int64_t step = store_step(s->buf, s->idx, l->var);
    if (step < 1)
      return false;
    for (int j = 0; step > 1 && j < l->nbody; j++) {
      const LStmt *t = l->body[j];
      int64_t diff;
      if (j == i || t->kind != LS_STORE || lbuf_root(t->buf) != lbuf_root(s->buf))
        continue;
      if (t->buf != s->buf) // another name of the memory: no shape to compare in
        return false;
      if (store_step(t->buf, t->idx, l->var) != step || !lx_const_apart(s->buf, s->idx, t->idx, &diff))
        return false;
      int64_t q = diff / step; // s's iteration i stores what t's iteration i + q does
      if (diff % step == 0 && q != 0 && q > -(l->hi - l->lo) && q < l->hi - l->lo)
        return false;
    }
  }
  return true;
}

static bool same_index(const LBuf *b, LExpr *const *x, LExpr *const *y) {
  for (int d = 0; d < b->rank; d++) {
    Affine a, c;
    if (!lx_affine(x[d], &a) || !lx_affine(y[d], &c) || a.c != c.c || a.n != c.n)
      return false;
    for (int i = 0; i < a.n; i++)
      if (affine_coef(&c, a.var[i]) != a.coef[i])
        return false;
  }
  return true;
}

// At some dimension, x and y are the same affine index but for a nonzero
// constant, and the loop's variable is not in it: no iteration's x is any
// iteration's y (a row of pooling's jammed rows against the next one).
static bool apart(const LBuf *b, LExpr *const *x, LExpr *const *y, int var) {
  for (int d = 0; d < b->rank; d++) {
    Affine a, c;
    if (!lx_affine(x[d], &a) || !lx_affine(y[d], &c) || a.c == c.c || a.n != c.n ||
        affine_coef(&a, var) || affine_coef(&c, var))
      continue;
    bool same = true;
    for (int i = 0; i < a.n && same; i++)
      same = affine_coef(&c, a.var[i]) == a.coef[i];
    if (same)
      return true;
  }
  return false;
}

// Every load of a buffer the loop stores to reads the element being stored,
// or elements no store of the loop writes (so lanes never see each other's
// results).
static bool loads_ok(const LExpr *e, const LStmt *const *stores, int n, int var) {
  if (!e)
    return true;
  if (e->kind == LX_LOAD)
    for (int i = 0; i < n; i++)
      if (stores[i]->buf == e->buf && !same_index(e->buf, e->idx, stores[i]->idx) &&
          !apart(e->buf, e->idx, stores[i]->idx, var))
        return false;
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      if (!loads_ok(e->idx[d], stores, n, var))
        return false;
  return loads_ok(e->a, stores, n, var) && loads_ok(e->b, stores, n, var) &&
         loads_ok(e->c, stores, n, var);
}

static bool vectorizable(const LStmt *l) {
  if (l->kind != LS_LOOP || l->flags & (LF_VECTOR | LF_UNROLL | LF_PARALLEL) ||
      l->hi - l->lo < 4 || l->nbody == 0)
    return false;
  if (!stores_ok(l))
    return false;
  for (int i = 0; i < l->nbody; i++)
    if (!loads_ok(l->body[i]->value, (const LStmt *const *)l->body, l->nbody, l->var))
      return false;
  return true;
}

static void append(LStmt ***list, int *n, LStmt *s) {
  *list = realloc(*list, sizeof **list * (*n + 1));
  if (!*list)
    fatal("out of memory");
  (*list)[(*n)++] = s;
}

// The pieces replacing loop l: blocks of LANES, then 4, 2, 1.
static void pieces(LKernel *k, const LStmt *l, LStmt ***out, int *n) {
  int64_t lo = l->lo, len = l->hi - l->lo, blocks = len / LANES;
  if (blocks > 0) {
    int outer = lk_var(k), lane = lk_var(k);
    LStmt *bl = ls_loop(outer, 0, blocks, l->role);
    LStmt *vl = ls_loop(lane, 0, LANES, l->role);
    vl->flags |= LF_VECTOR;
    ls_add(bl, vl);
    LExpr *at = lx_iadd(lx_iaddc(lx_imul(lx_var(outer), LANES), lo), lx_var(lane));
    for (int i = 0; i < l->nbody; i++) {
      LStmt *s = ls_copy(l->body[i]);
      ls_subst(s, l->var, at);
      ls_add(vl, s);
    }
    append(out, n, blocks == 1 ? vl : bl);
    if (blocks == 1) // no loop of one iteration: the lanes start at lo
      ls_subst(vl, outer, lx_i64(0));
  }
  int64_t at = lo + blocks * LANES;
  for (int w = LANES / 2; w >= 1; w /= 2) {
    if (at + w > l->hi)
      continue;
    int lane = lk_var(k);
    LStmt *vl = ls_loop(lane, 0, w, l->role);
    if (w > 1)
      vl->flags |= LF_VECTOR;
    for (int i = 0; i < l->nbody; i++) {
      LStmt *s = ls_copy(l->body[i]);
      ls_subst(s, l->var, lx_iaddc(lx_var(lane), at));
      ls_add(vl, s);
    }
    append(out, n, vl);
    at += w;
  }
}

// --- Coalescing ------------------------------------------------------------------------

// Below this many elements a nest is not worth the threads (as in
// parallelize): it becomes one flat loop.
enum { MIN_ROWS_WORK = 1 << 17 };

typedef struct {
  LFunc *f;
  LBuf **view; // by buffer id, 2 per buffer: its flat view and its rows view
  int nbufs;
} Views;

// b seen as [numel] (rows 0), or as [dim 0, the rest] (rows 1).
static LBuf *view_of(Views *vw, LBuf *b, int rows) {
  LBuf **slot = b->id < vw->nbufs ? &vw->view[2 * b->id + rows] : NULL;
  if (slot && *slot)
    return *slot;
  int64_t n = lbuf_numel(b), dim[2] = {rows ? b->dim[0] : n, rows ? n / b->dim[0] : 1};
  LBuf *v = lfunc_buf(vw->f, xformat("%s.%s", b->name, rows ? "rows" : "flat"), b->dtype,
                      1 + rows, dim, b->storage);
  v->alias = b;
  v->node = b->node;
  if (slot)
    *slot = v;
  return v;
}

// idx is exactly (vars[0], ..., vars[rank-1]) over a buffer of shape dims.
static bool whole(const LBuf *b, LExpr *const *idx, const int *vars, const int64_t *dims,
                  int rank) {
  if (b->rank != rank)
    return false;
  for (int d = 0; d < rank; d++)
    if (b->dim[d] != dims[d] || idx[d]->kind != LX_VAR || idx[d]->var != vars[d])
      return false;
  return true;
}

// Every load in e is a scalar or the element at the nest's indices, and no
// loop variable appears otherwise (a hash of the index, say).
static bool elementwise(const LExpr *e, const int *vars, const int64_t *dims, int rank) {
  if (!e)
    return true;
  if (e->kind == LX_VAR)
    return false;
  if (e->kind == LX_LOAD)
    return e->buf->rank == 0 || whole(e->buf, e->idx, vars, dims, rank);
  return elementwise(e->a, vars, dims, rank) && elementwise(e->b, vars, dims, rank) &&
         elementwise(e->c, vars, dims, rank);
}

// at: the view's indices (one, or row and column).
static LExpr *flatten_expr(Views *vw, const LExpr *e, LExpr *const *at, int rows) {
  if (!e)
    return NULL;
  if (e->kind == LX_LOAD && e->buf->rank > 0) {
    LExpr *i[2] = {lx_copy(at[0]), rows ? lx_copy(at[1]) : NULL};
    return lx_load(view_of(vw, e->buf, rows), i);
  }
  LExpr *c = lx_copy(e);
  if (e->kind != LX_LOAD) {
    c->a = flatten_expr(vw, e->a, at, rows);
    c->b = flatten_expr(vw, e->b, at, rows);
    c->c = flatten_expr(vw, e->c, at, rows);
  }
  return c;
}

// s, when it is such a nest of two or more loops, as one flat loop; else s.
static LStmt *coalesce(Views *vw, LKernel *k, LStmt *s) {
  int vars[LMAX_RANK], rank = 0;
  int64_t dims[LMAX_RANK], n = 1;
  const LStmt *l = s;
  for (;;) {
    if (l->kind != LS_LOOP || l->flags || l->lo != 0 || rank == LMAX_RANK || l->nbody == 0)
      return s;
    vars[rank] = l->var;
    dims[rank++] = l->hi;
    n *= l->hi;
    if (l->nbody == 1 && l->body[0]->kind == LS_LOOP)
      l = l->body[0];
    else
      break;
  }
  if (rank < 2)
    return s;
  for (int i = 0; i < l->nbody; i++) {
    const LStmt *st = l->body[i];
    if (st->kind != LS_STORE || !whole(st->buf, st->idx, vars, dims, rank) ||
        !elementwise(st->value, vars, dims, rank))
      return s;
  }
  int rows = rank >= 3 && n >= MIN_ROWS_WORK;
  LStmt *top = NULL, *inner;
  LExpr *at[2];
  if (rows) {
    int r = lk_var(k);
    top = ls_loop(r, 0, dims[0], s->role);
    at[0] = lx_var(r);
  }
  int var = lk_var(k);
  inner = ls_loop(var, 0, rows ? n / dims[0] : n, l->role);
  at[rows] = lx_var(var);
  if (top)
    ls_add(top, inner);
  for (int i = 0; i < l->nbody; i++) {
    const LStmt *st = l->body[i];
    LExpr *idx[2] = {lx_copy(at[0]), rows ? lx_copy(at[1]) : NULL};
    ls_add(inner, ls_store(view_of(vw, st->buf, rows), idx, flatten_expr(vw, st->value, at, rows)));
  }
  return top ? top : inner;
}

// --- Sums ------------------------------------------------------------------------------
//
// A total over a tensor (batch norm's statistics, a bias's gradient) is a
// chain of dependent adds, one every four cycles. A perfect nest of reduce
// loops adding into one place, whose innermost loop reads consecutive
// elements, adds into vector lanes instead: a vector per block of the
// innermost loop, up to 4 vectors in flight, the leftover elements into the
// first lanes; at the end the lanes are added up in a fixed tree and once
// into the total. The order is fixed by the shapes, never by the threads;
// it differs from the plain loop's by rounding.

enum { MAX_ACC = 4 };

typedef struct {
  LStmt *loop[LMAX_RANK]; // outermost first; the last one's body is the store
  int n;
  LStmt *store;           // T[i] = T[i] + term, term + T[i], or fma(a, b, T[i])
  int form;               // 0: T + term, 1: term + T, 2: fma
} SumNest;

static bool is_target(const LExpr *e, const LStmt *st) {
  return e->kind == LX_LOAD && e->buf == st->buf && same_index(st->buf, e->idx, st->idx);
}

// Every load in e reads along var with stride 0 or 1, and var appears only
// in load indices.
static bool lane_safe(const LExpr *e, int var) {
  if (!e)
    return true;
  if (e->kind == LX_VAR)
    return e->var != var;
  if (e->kind == LX_LOAD) {
    int64_t stride = 1, total = 0;
    for (int d = e->buf->rank - 1; d >= 0; d--) {
      Affine a;
      if (!lx_affine(e->idx[d], &a))
        return !lx_uses_var(e->idx[d], var) && lane_safe(e->idx[d], var);
      total += affine_coef(&a, var) * stride;
      stride *= e->buf->dim[d];
    }
    return total == 0 || total == 1;
  }
  return lane_safe(e->a, var) && lane_safe(e->b, var) && lane_safe(e->c, var);
}

static bool sum_nest(LStmt *s, SumNest *sn) {
  sn->n = 0;
  LStmt *l = s;
  while (l->kind == LS_LOOP && l->flags == LF_REDUCE && l->lo == 0 && l->nbody == 1 &&
         sn->n < LMAX_RANK) {
    sn->loop[sn->n++] = l;
    l = l->body[0];
  }
  if (sn->n == 0 || l->kind != LS_STORE || l->buf->dtype == DT_I32)
    return false;
  sn->store = l;
  for (int d = 0; d < l->buf->rank; d++)
    for (int i = 0; i < sn->n; i++)
      if (lx_uses_var(l->idx[d], sn->loop[i]->var))
        return false;
  const LExpr *v = l->value, *term;
  if (v->kind == LX_ADD && is_target(v->a, l))
    sn->form = 0, term = v->b;
  else if (v->kind == LX_ADD && is_target(v->b, l))
    sn->form = 1, term = v->a;
  else if (v->kind == LX_FMA && is_target(v->c, l))
    sn->form = 2, term = v;
  else
    return false;
  if (sn->form == 2 ? lx_reads(v->a, l->buf) || lx_reads(v->b, l->buf) : lx_reads(term, l->buf))
    return false;
  const LStmt *in = sn->loop[sn->n - 1];
  if (in->hi < 4)
    return false;
  return sn->form == 2 ? lane_safe(v->a, in->var) && lane_safe(v->b, in->var)
                       : lane_safe(term, in->var);
}

// lanes[a, l] = lanes[a, l] (+) the term at w = base + l, for l < width.
static LStmt *lane_update(LKernel *k, const SumNest *sn, LBuf *lanes, int64_t a, const LExpr *base,
                          int64_t width) {
  const LStmt *in = sn->loop[sn->n - 1];
  int lane = lk_var(k);
  LStmt *vl = ls_loop(lane, 0, width, in->role);
  vl->flags |= width > 1 ? LF_VECTOR : LF_UNROLL;
  LExpr *w = lx_iadd(lx_copy(base), lx_var(lane));
  LExpr *idx[2] = {lx_i64(a), lx_var(lane)};
  LExpr *acc = lx_load(lanes, idx);
  const LExpr *v = sn->store->value;
  LExpr *e;
  if (sn->form == 2)
    e = lx_fma(lx_subst(v->a, in->var, w), lx_subst(v->b, in->var, w), acc);
  else if (sn->form == 0)
    e = lx_bin(LX_ADD, acc, lx_subst(v->b, in->var, w));
  else
    e = lx_bin(LX_ADD, lx_subst(v->a, in->var, w), acc);
  LExpr *sidx[2] = {lx_i64(a), lx_var(lane)};
  ls_add(vl, ls_store(lanes, sidx, e));
  return vl;
}

// The lanes [a0, a1) x [l0, l1) added pairwise.
static LExpr *lane_tree(LBuf *lanes, int64_t a0, int64_t a1, int64_t l0, int64_t l1) {
  if (a1 - a0 > 1) {
    int64_t m = (a0 + a1) / 2;
    return lx_bin(LX_ADD, lane_tree(lanes, a0, m, l0, l1), lane_tree(lanes, m, a1, l0, l1));
  }
  if (l1 - l0 > 1) {
    int64_t m = (l0 + l1) / 2;
    return lx_bin(LX_ADD, lane_tree(lanes, a0, a1, l0, m), lane_tree(lanes, a0, a1, m, l1));
  }
  LExpr *idx[2] = {lx_i64(a0), lx_i64(l0)};
  return lx_load(lanes, idx);
}

// Replaces the nest s by: the lanes zeroed, the nest adding into them, the
// store of the total.
static void vectorize_sum(LFunc *f, LKernel *k, LStmt *s, const SumNest *sn, LStmt ***out,
                          int *nout) {
  LStmt *in = sn->loop[sn->n - 1];
  int64_t W = in->hi, L = W >= LANES ? LANES : 4, U = W / L, r = W % L;
  int64_t A = U < MAX_ACC ? U : MAX_ACC, rounds = U / A;
  int64_t dim[2] = {A, L};
  DType dt = sn->store->buf->dtype;
  LBuf *lanes = lfunc_buf(f, "lanes", dt, 2, dim, LB_LOCAL);
  LExpr *zero = dt == DT_F64 ? lx_f64(0) : lx_f32(0);
  for (int64_t a = 0; a < A; a++) {
    int lane = lk_var(k);
    LStmt *z = ls_loop(lane, 0, L, in->role);
    z->flags |= LF_VECTOR;
    LExpr *idx[2] = {lx_i64(a), lx_var(lane)};
    ls_add(z, ls_store(lanes, idx, lx_copy(zero)));
    append(out, nout, z);
  }
  // The innermost loop's body: rounds of A vectors, the blocks left over,
  // then the last W % L elements into the first lanes.
  LStmt **body = NULL;
  int nbody = 0;
  if (rounds > 1) {
    int b = lk_var(k);
    LStmt *bl = ls_loop(b, 0, rounds, in->role);
    bl->flags |= LF_REDUCE;
    for (int64_t a = 0; a < A; a++) {
      LExpr *base = lx_iaddc(lx_imul(lx_var(b), A * L), a * L);
      ls_add(bl, lane_update(k, sn, lanes, a, base, L));
    }
    append(&body, &nbody, bl);
  }
  for (int64_t u = rounds > 1 ? rounds * A : 0; u < U; u++)
    append(&body, &nbody, lane_update(k, sn, lanes, u % A, lx_i64(u * L), L));
  if (r)
    append(&body, &nbody, lane_update(k, sn, lanes, 0, lx_i64(U * L), r));
  // The innermost loop goes; its parent holds the new body (or the kernel,
  // when the nest was that one loop).
  if (sn->n == 1) {
    for (int i = 0; i < nbody; i++)
      append(out, nout, body[i]);
    free(body);
  } else {
    LStmt *parent = sn->loop[sn->n - 2];
    free(parent->body);
    parent->body = body;
    parent->nbody = nbody;
    append(out, nout, s);
  }
  const LStmt *st = sn->store;
  LExpr *total = lane_tree(lanes, 0, A, 0, L);
  LExpr *old = lx_load(st->buf, st->idx);
  LExpr *idx[LMAX_RANK];
  for (int d = 0; d < st->buf->rank; d++)
    idx[d] = lx_copy(st->idx[d]);
  append(out, nout, ls_store(st->buf, idx, lx_bin(LX_ADD, old, total)));
}

// Rewrites the statements list[0..n) in place.
static void walk(LFunc *f, LKernel *k, LStmt ***list, int *n) {
  LStmt **out = NULL;
  int nout = 0;
  for (int i = 0; i < *n; i++) {
    LStmt *s = (*list)[i];
    SumNest sn;
    if (sum_nest(s, &sn)) {
      vectorize_sum(f, k, s, &sn, &out, &nout);
      continue;
    }
    if (vectorizable(s)) {
      pieces(k, s, &out, &nout);
      continue;
    }
    if (s->kind != LS_STORE)
      walk(f, k, &s->body, &s->nbody);
    append(&out, &nout, s);
  }
  free(*list);
  *list = out;
  *n = nout;
}

void pass_vectorize(LProgram *p) {
  for (int f = 0; f < p->nfuncs; f++) {
    LFunc *fn = p->funcs[f];
    Views vw = {fn, xcalloc(2 * fn->nbufs + 1, sizeof(LBuf *)), fn->nbufs};
    for (int i = 0; i < fn->nkernels; i++) {
      LKernel *k = fn->kernels[i];
      for (int j = 0; j < k->nbody; j++)
        k->body[j] = coalesce(&vw, k, k->body[j]);
      walk(fn, k, &k->body, &k->nbody);
    }
    free(vw.view);
  }
}

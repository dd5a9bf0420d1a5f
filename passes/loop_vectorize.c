// vectorize: turns each innermost loop whose iterations store to
// consecutive elements into vector pieces: blocks of 8 lanes, then a piece
// of 4, of 2 and a last single iteration for what remains, so no lane ever
// touches an element past the end (edges take a narrower vector rather
// than a branch). A lane computes exactly what its iteration did, in the
// same order: vectorizing changes no result.
#include "loop.h"

#include <stdlib.h>

enum { LANES = 8 };

// Consecutive iterations of var store to consecutive elements.
static bool unit_stride(const LBuf *b, LExpr *const *idx, int var) {
  int64_t stride = 1, total = 0;
  for (int d = b->rank - 1; d >= 0; d--) {
    Affine a;
    if (!lx_affine(idx[d], &a))
      return false;
    total += affine_coef(&a, var) * stride;
    stride *= b->dim[d];
  }
  return total == 1;
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

// Every load of a buffer the loop stores to reads the element being stored
// (so lanes never see each other's results).
static bool loads_ok(const LExpr *e, const LStmt *const *stores, int n) {
  if (!e)
    return true;
  if (e->kind == LX_LOAD)
    for (int i = 0; i < n; i++)
      if (stores[i]->buf == e->buf && !same_index(e->buf, e->idx, stores[i]->idx))
        return false;
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      if (!loads_ok(e->idx[d], stores, n))
        return false;
  return loads_ok(e->a, stores, n) && loads_ok(e->b, stores, n) && loads_ok(e->c, stores, n);
}

static bool vectorizable(const LStmt *l) {
  if (l->kind != LS_LOOP || l->flags & (LF_VECTOR | LF_UNROLL | LF_PARALLEL) ||
      l->hi - l->lo < 4 || l->nbody == 0)
    return false;
  for (int i = 0; i < l->nbody; i++) {
    const LStmt *s = l->body[i];
    if (s->kind != LS_STORE || !unit_stride(s->buf, s->idx, l->var))
      return false;
  }
  for (int i = 0; i < l->nbody; i++)
    if (!loads_ok(l->body[i]->value, (const LStmt *const *)l->body, l->nbody))
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

// Rewrites the statements list[0..n) in place.
static void walk(LKernel *k, LStmt ***list, int *n) {
  LStmt **out = NULL;
  int nout = 0;
  for (int i = 0; i < *n; i++) {
    LStmt *s = (*list)[i];
    if (vectorizable(s)) {
      pieces(k, s, &out, &nout);
      continue;
    }
    if (s->kind != LS_STORE)
      walk(k, &s->body, &s->nbody);
    append(&out, &nout, s);
  }
  free(*list);
  *list = out;
  *n = nout;
}

void pass_vectorize(LProgram *p) {
  for (int f = 0; f < p->nfuncs; f++)
    for (int i = 0; i < p->funcs[f]->nkernels; i++) {
      LKernel *k = p->funcs[f]->kernels[i];
      walk(k, &k->body, &k->nbody);
    }
}

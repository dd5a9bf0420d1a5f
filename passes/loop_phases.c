// phases: a strided window reads every s-th element of a row, which no
// vector loads in one piece. A contraction's load x[n, c, s*u + t + k, ...]
// (t a tap that moves by 1, every other variable by a multiple of s, in both
// spatial dimensions) reads instead a copy of x split into s x s phase
// planes,
//     x.phases[n, c, ph, pw, i, j] = x[n, c, s*i + ph, s*j + pw],
// at [n, c, (t_h + k_h) % s, (t_w + k_w) % s, u_h + (t_h + k_h) / s, ...]:
// consecutive outputs of a stride-2 convolution (or consecutive terms of
// its weight gradient's sum) then read consecutive elements, and tile can
// hold them in a vector. The copy is made by a kernel just before, once per
// buffer and stride in a function (a conv2d and its weight gradient share
// it); it runs after pad, so every index is inside the buffer.
#include "loop.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  LBuf *from, *to;
  int64_t s;
} Split;

typedef struct {
  LFunc *f;
  Split *split;
  int n;
} Phases;

// Dimension d of load e as s*(...) + t + k: the tap variable t (coefficient
// 1), the constant k >= 0, every other coefficient a multiple of s.
static bool strided(const LExpr *e, int d, int64_t s, int *tap, int64_t *k) {
  Affine a;
  if (!lx_affine(e->idx[d], &a) || a.c < 0)
    return false;
  *tap = -1;
  for (int i = 0; i < a.n; i++)
    if (a.coef[i] == 1 && *tap < 0)
      *tap = a.var[i];
    else if (a.coef[i] % s)
      return false;
  *k = a.c;
  return *tap >= 0;
}

// The stride of load e's spatial dimensions, if it is a strided window: the
// coefficient of the variable that is not the tap (the same in both).
static int64_t stride_of(const LExpr *e) {
  if (e->buf->rank != 4 || e->buf->storage == LB_LOCAL)
    return 0;
  Affine a;
  if (!lx_affine(e->idx[3], &a))
    return 0;
  int64_t s = 0;
  for (int i = 0; i < a.n; i++)
    if (a.coef[i] > 1)
      s = s ? s : a.coef[i];
  int tap;
  int64_t k;
  if (s < 2 || !strided(e, 2, s, &tap, &k) || !strided(e, 3, s, &tap, &k))
    return 0;
  return s;
}

// The kernel copying x into its phase planes: for each of the s x s
// phases, the elements of x in it.
static LKernel *phase_kernel(LFunc *f, LBuf *x, LBuf *to, int64_t s) {
  LKernel *k = lfunc_kernel(f, xformat("phases.%s", x->name), "phases", NULL);
  k->layer = x->name;
  LExpr *n, *c;
  int vn = lk_var(k), vc = lk_var(k);
  LStmt *ln = ls_loop(vn, 0, x->dim[0], "n"), *lc = ls_loop(vc, 0, x->dim[1], "c");
  lk_add(k, ln);
  ls_add(ln, lc);
  n = lx_var(vn), c = lx_var(vc);
  for (int64_t ph = 0; ph < s; ph++)
    for (int64_t pw = 0; pw < s; pw++) {
      int64_t rows = (x->dim[2] - ph + s - 1) / s, cols = (x->dim[3] - pw + s - 1) / s;
      if (rows <= 0 || cols <= 0)
        continue;
      int vi = lk_var(k), vj = lk_var(k);
      LStmt *li = ls_loop(vi, 0, rows, "h"), *lj = ls_loop(vj, 0, cols, "w");
      ls_add(lc, li);
      ls_add(li, lj);
      LExpr *i = lx_var(vi), *j = lx_var(vj);
      LExpr *src[4] = {lx_copy(n), lx_copy(c), lx_iaddc(lx_imul(i, s), ph),
                       lx_iaddc(lx_imul(j, s), pw)};
      LExpr *dst[6] = {lx_copy(n), lx_copy(c), lx_i64(ph), lx_i64(pw), lx_copy(i), lx_copy(j)};
      ls_add(lj, ls_store(to, dst, lx_load(x, src)));
    }
  return k;
}

static LBuf *phases_of(Phases *P, LBuf *x, int64_t s, int at) {
  for (int i = 0; i < P->n; i++)
    if (P->split[i].from == x && P->split[i].s == s)
      return P->split[i].to;
  int64_t dim[6] = {x->dim[0], x->dim[1], s, s, (x->dim[2] + s - 1) / s, (x->dim[3] + s - 1) / s};
  LBuf *to = lfunc_buf(P->f, xformat("%s.phases", x->name), x->dtype, 6, dim, LB_WORKSPACE);
  to->layout = xformat("stride-%lld phases", (long long)s);
  phase_kernel(P->f, x, to, s);
  LKernel *k = P->f->kernels[P->f->nkernels - 1]; // it runs just before the contraction
  for (int i = P->f->nkernels - 1; i > at; i--)
    P->f->kernels[i] = P->f->kernels[i - 1];
  P->f->kernels[at] = k;
  P->split = realloc(P->split, sizeof *P->split * (P->n + 1));
  if (!P->split)
    fatal("out of memory");
  P->split[P->n++] = (Split){x, to, s};
  return to;
}

// (tap + k) split into its phase and its offset in the phase plane, plus
// the rest of the index divided by s.
static void split_index(const LExpr *idx, int64_t s, LExpr **phase, LExpr **at) {
  Affine a;
  lx_affine(idx, &a);
  LExpr *tap = NULL, *rest = lx_i64(0);
  for (int i = 0; i < a.n; i++)
    if (a.coef[i] == 1 && !tap)
      tap = lx_iaddc(lx_var(a.var[i]), a.c);
    else
      rest = lx_iadd(rest, lx_imul(lx_var(a.var[i]), a.coef[i] / s));
  *phase = lx_bin(LX_REM, tap, lx_i64(s));
  *at = lx_iadd(rest, lx_bin(LX_DIV, lx_copy(tap), lx_i64(s)));
}

static void rewrite(Phases *P, LExpr *e, int *at) {
  if (!e)
    return;
  int64_t s;
  if (e->kind == LX_LOAD && (s = stride_of(e))) {
    int before = P->f->nkernels;
    LBuf *to = phases_of(P, e->buf, s, *at);
    *at += P->f->nkernels - before;
    LExpr *ph, *pw, *i, *j;
    split_index(e->idx[2], s, &ph, &i);
    split_index(e->idx[3], s, &pw, &j);
    LExpr *idx[6] = {e->idx[0], e->idx[1], ph, pw, i, j};
    e->buf = to;
    for (int d = 0; d < 6; d++)
      e->idx[d] = idx[d];
    return;
  }
  rewrite(P, e->a, at);
  rewrite(P, e->b, at);
  rewrite(P, e->c, at);
}

static void walk(Phases *P, LStmt *s, int *at) {
  if (s->kind == LS_STORE)
    rewrite(P, s->value, at);
  for (int i = 0; i < s->nbody; i++)
    walk(P, s->body[i], at);
}

void pass_phases(LProgram *p) {
  for (int f = 0; f < p->nfuncs; f++) {
    Phases P = {p->funcs[f], NULL, 0};
    for (int i = 0; i < P.f->nkernels; i++) {
      LKernel *k = P.f->kernels[i];
      if (!k->node || !k->flops)
        continue; // contractions only
      int at = i;
      for (int j = 0; j < k->nbody; j++)
        walk(&P, k->body[j], &at);
      i = at;
    }
    free(P.split);
  }
}

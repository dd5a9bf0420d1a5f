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
// it); it runs after pad, so every index is inside the buffer. When x is
// pad's copy of a tensor and nothing else touches it (xc_forward's strided
// convolutions: their producer keeps its own output), the split reads the
// tensor itself and writes the border's zeros into the planes; the copy
// goes (allconv's evaluation 1.07x as fast).
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

// Rows [a, b) of one dimension of a phase plane, as a loop in `parent`
// from 0, or NULL when empty.
static LStmt *range_loop(LKernel *k, LStmt *parent, int64_t a, int64_t b, const char *role) {
  if (a >= b)
    return NULL;
  LStmt *l = ls_loop(lk_var(k), 0, b - a, role);
  ls_add(parent, l);
  return l;
}

// The phase plane (ph, pw) of x, or of the padded copy of src that x is
// (lo: its border before src; src NULL: x itself), under loop `lc` over
// [n, c]: to[n, c, ph, pw, i, j] = x[n, c, s*i + ph, s*j + pw], the border's
// rows and columns zeros, read from src where inside it.
static void phase_plane(LKernel *k, LStmt *lc, LExpr *n, LExpr *c, const LBuf *x, const LBuf *src,
                        const int64_t *lo, LBuf *to, int64_t s, int64_t ph, int64_t pw) {
  int64_t rows = (x->dim[2] - ph + s - 1) / s, cols = (x->dim[3] - pw + s - 1) / s;
  // Inside src: s*i + ph - lo[2] in [0, src rows), likewise the columns.
  int64_t r0 = 0, r1 = rows, c0 = 0, c1 = cols;
  if (src) {
    r0 = (lo[2] - ph + s - 1) / s, r1 = (src->dim[2] + lo[2] - ph + s - 1) / s;
    c0 = (lo[3] - pw + s - 1) / s, c1 = (src->dim[3] + lo[3] - pw + s - 1) / s;
    r0 = r0 < 0 ? 0 : r0, c0 = c0 < 0 ? 0 : c0;
    r1 = r1 > rows ? rows : r1, c1 = c1 > cols ? cols : c1;
  }
  int64_t rpart[3][2] = {{0, r0}, {r0, r1}, {r1, rows}}, cpart[3][2] = {{0, c0}, {c0, c1}, {c1, cols}};
  for (int pr = 0; pr < 3; pr++) {
    LStmt *li = range_loop(k, lc, rpart[pr][0], rpart[pr][1], "h");
    for (int pc = 0; li && pc < 3; pc++) {
      // A row of the border is one loop of zeros over all its columns.
      int64_t a = pr == 1 ? cpart[pc][0] : 0, b = pr == 1 ? cpart[pc][1] : pc ? 0 : cols;
      LStmt *lj = range_loop(k, li, a, b, "w");
      if (!lj)
        continue;
      LExpr *i = lx_iaddc(lx_var(li->var), rpart[pr][0]), *j = lx_iaddc(lx_var(lj->var), a);
      LExpr *dst[6] = {lx_copy(n), lx_copy(c), lx_i64(ph), lx_i64(pw), lx_copy(i), lx_copy(j)};
      LExpr *value = lx_f32(0);
      if (pr == 1 && pc == 1) {
        const LBuf *from = src ? src : x;
        int64_t dh = src ? lo[2] : 0, dw = src ? lo[3] : 0;
        LExpr *at[4] = {lx_copy(n), lx_copy(c), lx_iaddc(lx_imul(i, s), ph - dh),
                        lx_iaddc(lx_imul(j, s), pw - dw)};
        value = lx_load((LBuf *)from, at);
      }
      ls_add(lj, ls_store(to, dst, value));
    }
  }
}

// The kernel copying x into its phase planes: for each of the s x s
// phases, the elements of x in it -- read from src, of which x is the
// padded copy, unless src is NULL.
static LKernel *phase_kernel(LFunc *f, LBuf *x, const LBuf *src, LBuf *to, int64_t s) {
  LKernel *k = lfunc_kernel(f, xformat("phases.%s", x->name), "phases", NULL);
  k->layer = x->name;
  int vn = lk_var(k), vc = lk_var(k);
  LStmt *ln = ls_loop(vn, 0, x->dim[0], "n"), *lc = ls_loop(vc, 0, x->dim[1], "c");
  lk_add(k, ln);
  ls_add(ln, lc);
  LExpr *n = lx_var(vn), *c = lx_var(vc);
  for (int64_t ph = 0; ph < s; ph++)
    for (int64_t pw = 0; pw < s; pw++)
      phase_plane(k, lc, n, c, x, src, src ? x->pad_lo : NULL, to, s, ph, pw);
  return k;
}

static LBuf *phases_of(Phases *P, LBuf *x, int64_t s, int at) {
  for (int i = 0; i < P->n; i++)
    if (P->split[i].from == x && P->split[i].s == s)
      return P->split[i].to;
  int64_t dim[6] = {x->dim[0], x->dim[1], s, s, (x->dim[2] + s - 1) / s, (x->dim[3] + s - 1) / s};
  LBuf *to = lfunc_buf(P->f, xformat("%s.phases", x->name), x->dtype, 6, dim, LB_WORKSPACE);
  to->layout = xformat("stride-%lld phases", (long long)s);
  phase_kernel(P->f, x, NULL, to, s);
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

// A phase split of the pad pass's copy of x, which the copy's kernel alone
// writes and the split alone reads (xc_forward's strided convolutions, a
// batch norm and relu in the producer's epilogue), reads x itself: the
// border's rows and columns are zeros in the planes, and the copy goes, a
// write of the tensor less.
static void from_source(LFunc *f, const Split *sp) {
  const LBuf *x = sp->from->pad_of;
  if (!x || sp->from->alias)
    return;
  int copy = -1, split = -1;
  for (int i = 0; i < f->nkernels; i++) {
    LKernel *k = f->kernels[i];
    bool reads = lk_reads(k, sp->from), writes = lk_writes(k, sp->from, false);
    if (writes && copy < 0 && !strcmp(k->op, "pad") && lk_reads(k, x))
      copy = i;
    else if (reads && split < 0 && !strcmp(k->op, "phases") && !strcmp(k->layer, sp->from->name))
      split = i;
    else if (reads || writes)
      return;
  }
  if (copy < 0 || split < 0)
    return;
  LKernel *made = phase_kernel(f, sp->from, x, sp->to, sp->s); // appended last
  f->kernels[split] = made;
  f->nkernels--;
  for (int i = copy; i + 1 < f->nkernels; i++)
    f->kernels[i] = f->kernels[i + 1];
  f->nkernels--;
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
    for (int i = 0; i < P.n; i++)
      from_source(P.f, &P.split[i]);
    free(P.split);
  }
}

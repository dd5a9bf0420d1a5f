// pad: takes the bounds checks out of the windows of convolutions. A
// store guarded by "every index of this load is inside the buffer" (what
// lowering writes for a padded window) reads instead a copy of the buffer
// with a border of zeros wide enough for every index the loops produce, and
// the guard goes: adding 0 * w is adding nothing. The copy is made by a new
// kernel just before the first reader, once per buffer in a function, with
// the widest border any reader needs (a conv2d and its weight gradient share
// their padded input; the phases of a strided input gradient their dy). Guards of any other shape
// (the divisibility test of a strided input gradient) stay.
//
// In the training step, when one kernel alone writes the buffer (not a
// contraction, whose stores tile places), in the workspace, the copy goes
// too: that kernel stores into the padded buffer's interior, every reader
// reads there, and the new kernel, moved to just after the writer, writes
// only the border of zeros, so the buffer is whole before any reader. A
// pass over the tensor less (the copy's read and write): a pooling
// gradient's or batch norm's input gradient, which a convolution's input
// gradient reads.
#include "loop.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  int64_t *lo, *hi; // by variable: the range of its loop (hi inclusive)
  bool *bound;
} Ranges;

// The range of an affine expression over the loops, or false.
static bool range_of(const Ranges *r, const LExpr *e, int64_t *lo, int64_t *hi) {
  Affine a;
  if (!lx_affine(e, &a))
    return false;
  for (int i = 0; i < a.n; i++)
    if (!r->bound[a.var[i]])
      return false;
  affine_range(&a, r->lo, r->hi, lo, hi);
  return true;
}

static bool same_affine(const LExpr *x, const LExpr *y) {
  Affine a, b;
  if (!lx_affine(x, &a) || !lx_affine(y, &b) || a.c != b.c || a.n != b.n)
    return false;
  for (int i = 0; i < a.n; i++)
    if (affine_coef(&b, a.var[i]) != a.coef[i])
      return false;
  return true;
}

// Is cond an AND of "idx[d] >= 0" and "idx[d] < dim[d]" tests of load x?
static bool bounds_of(const LExpr *cond, const LExpr *x) {
  if (cond->kind == LX_AND)
    return bounds_of(cond->a, x) && bounds_of(cond->b, x);
  if (cond->kind != LX_GE && cond->kind != LX_LT)
    return false;
  int64_t k;
  if (cond->b->kind != LX_CONST)
    return false;
  k = cond->b->i;
  for (int d = 0; d < x->buf->rank; d++)
    if (same_affine(cond->a, x->idx[d]))
      return cond->kind == LX_GE ? k == 0 : k == x->buf->dim[d];
  return false;
}

// Is cond an AND of "e >= 0" and "e < k" tests that hold for every
// iteration of the loops (a window that never leaves its buffer)?
static bool always(const LExpr *cond, const Ranges *r) {
  if (cond->kind == LX_AND)
    return always(cond->a, r) && always(cond->b, r);
  int64_t lo, hi;
  if ((cond->kind != LX_GE && cond->kind != LX_LT) || cond->b->kind != LX_CONST ||
      !range_of(r, cond->a, &lo, &hi))
    return false;
  return cond->kind == LX_GE ? lo >= cond->b->i : hi < cond->b->i;
}

// The one load under s that the guard is about: the load whose indices can
// leave its buffer. NULL when none, or more than one buffer, can.
static void find_loads(const LExpr *e, const Ranges *r, LExpr **found, int *n) {
  if (!e)
    return;
  if (e->kind == LX_LOAD) {
    for (int d = 0; d < e->buf->rank; d++) {
      int64_t lo, hi;
      if (!range_of(r, e->idx[d], &lo, &hi) || lo < 0 || hi >= e->buf->dim[d]) {
        if (*n < 4)
          found[*n] = (LExpr *)e;
        (*n)++;
        break;
      }
    }
  }
  find_loads(e->a, r, found, n);
  find_loads(e->b, r, found, n);
  find_loads(e->c, r, found, n);
}

typedef struct {
  LBuf *from, *to;
  int64_t lo[LMAX_RANK];
  LKernel *made; // the kernel that makes it
} Padded;

typedef struct {
  LFunc *f;
  Padded *p;
  int np;
  int inserted; // kernels inserted so far before the current one
  bool collect; // the first walk: only widen the borders below
  int64_t (*lo)[LMAX_RANK], (*hi)[LMAX_RANK]; // by buffer id: the widest border asked for
  bool *asked;
} Pad;

// Zeros in to[at..., *...]: the dimensions from d on, whole.
static void zero_nest(LKernel *k, LStmt *parent, LBuf *to, LExpr **at, int d) {
  if (d == to->rank) {
    ls_add(parent, ls_store(to, at, lx_f32(0)));
    return;
  }
  int var = lk_var(k);
  LStmt *l = ls_loop(var, 0, to->dim[d], NULL);
  parent ? ls_add(parent, l) : lk_add(k, l);
  at[d] = lx_var(var);
  zero_nest(k, l, to, at, d + 1);
}

// Has `to` a border around from's extent in dimension d or after it?
static bool border_from(const LBuf *from, const LBuf *to, int d) {
  for (; d < from->rank; d++)
    if (to->dim[d] != from->dim[d])
      return true;
  return false;
}

// Dimension d of the copy and on: its leading border of zeros, the copy of
// from's extent (unless !copy: the border alone), its trailing border, each
// element of `to` written once.
static void pad_nest(LKernel *k, LStmt *parent, LBuf *from, LBuf *to, const int64_t *lo,
                     LExpr **v, LExpr **at, int d, bool copy) {
  if (d == from->rank) {
    if (copy)
      ls_add(parent, ls_store(to, at, lx_load(from, v)));
    return;
  }
  int64_t hi = to->dim[d] - lo[d] - from->dim[d];
  int64_t part[3][2] = {{0, lo[d]}, {lo[d], lo[d] + from->dim[d]}, {lo[d] + from->dim[d], lo[d] + from->dim[d] + hi}};
  for (int p = 0; p < 3; p++) {
    if (part[p][0] == part[p][1] || (p == 1 && !copy && !border_from(from, to, d + 1)))
      continue;
    int var = lk_var(k);
    LStmt *l = ls_loop(var, 0, part[p][1] - part[p][0], NULL);
    parent ? ls_add(parent, l) : lk_add(k, l);
    at[d] = lx_iaddc(lx_var(var), part[p][0]);
    if (p == 1) {
      v[d] = lx_var(var);
      pad_nest(k, l, from, to, lo, v, at, d + 1, copy);
    } else {
      zero_nest(k, l, to, at, d + 1);
    }
  }
}

// A kernel that copies `from` into `to` inside the border and writes zeros
// around it: one nest, so that its outer loop (the batch) runs on the
// threads, and each element written once.
static LKernel *pad_kernel(LFunc *f, LBuf *from, LBuf *to, const int64_t *lo) {
  LKernel *k = lfunc_kernel(f, xformat("pad.%s", from->name), "pad", NULL);
  k->layer = from->name;
  LExpr *v[LMAX_RANK], *at[LMAX_RANK];
  pad_nest(k, NULL, from, to, lo, v, at, 0, true);
  return k;
}

// Moves the last kernel of f to position `at`.
static void move_last_to(LFunc *f, int at) {
  LKernel *k = f->kernels[f->nkernels - 1];
  for (int i = f->nkernels - 1; i > at; i--)
    f->kernels[i] = f->kernels[i - 1];
  f->kernels[at] = k;
}

// The padded copy of b with the widest border asked for (lo gets it).
static LBuf *padded(Pad *P, LBuf *b, int64_t *lo, int at) {
  const int64_t *hi = P->hi[b->id];
  for (int d = 0; d < b->rank; d++)
    lo[d] = P->lo[b->id][d];
  for (int i = 0; i < P->np; i++)
    if (P->p[i].from == b)
      return P->p[i].to;
  int64_t dim[LMAX_RANK];
  for (int d = 0; d < b->rank; d++)
    dim[d] = b->dim[d] + lo[d] + hi[d];
  LBuf *to = lfunc_buf(P->f, xformat("%s.padded", b->name), b->dtype, b->rank, dim,
                       LB_WORKSPACE);
  to->layout = "padded";
  to->pad_of = b;
  for (int d = 0; d < b->rank; d++)
    to->pad_lo[d] = lo[d], to->pad_n[d] = b->dim[d];
  LKernel *made = pad_kernel(P->f, b, to, lo);
  move_last_to(P->f, at);
  P->p = realloc(P->p, sizeof *P->p * (P->np + 1));
  if (!P->p)
    fatal("out of memory");
  Padded *e = &P->p[P->np++];
  e->from = b, e->to = to, e->made = made;
  for (int d = 0; d < b->rank; d++)
    e->lo[d] = lo[d];
  return to;
}

// b is the buffer x or another name of it (fuse-epilogue's consumer
// writing in place), of the same shape.
static bool same_tensor(const LBuf *b, const LBuf *x) {
  if (lbuf_root(b) != lbuf_root(x) || b->rank != x->rank)
    return false;
  for (int d = 0; d < x->rank; d++)
    if (b->dim[d] != x->dim[d])
      return false;
  return true;
}

// Every load of x (under any of its names) in e reads `to`, lo further in.
// Index trees may be shared: they are replaced, never changed in place, and
// a load already moved is not moved again. Another name of x in the same
// statement (fuse-epilogue's consumer writing in place) reads the same
// memory at the same moment; no kernel writes that memory while x is still
// read (a name is read only while its memory holds its value), so the copy,
// made before x's first reader, holds the other name's values too. And that
// load stays inside x (find_loads found only one load that can leave its
// buffer), so inside the copy.
static void shift_expr(LExpr *e, const LBuf *x, LBuf *to, const int64_t *lo);

// A load's or a store's buffer and indices.
static void shift_access(LBuf **buf, LExpr **idx, const LBuf *x, LBuf *to, const int64_t *lo) {
  for (int d = 0; d < (*buf)->rank; d++)
    shift_expr(idx[d], x, to, lo);
  if (*buf != to && same_tensor(*buf, x)) {
    *buf = to;
    for (int d = 0; d < to->rank; d++)
      idx[d] = lx_iaddc(idx[d], lo[d]);
  }
}

static void shift_expr(LExpr *e, const LBuf *x, LBuf *to, const int64_t *lo) {
  if (!e)
    return;
  if (e->kind == LX_LOAD) {
    shift_access(&e->buf, e->idx, x, to, lo);
    return;
  }
  shift_expr(e->a, x, to, lo);
  shift_expr(e->b, x, to, lo);
  shift_expr(e->c, x, to, lo);
}

// Rewrites the guarded statements under s; `at` is the kernel's index.
static void walk(Pad *P, LStmt *s, Ranges *r, int at, bool *changed) {
  if (s->kind == LS_LOOP) {
    r->lo[s->var] = s->lo, r->hi[s->var] = s->hi - 1, r->bound[s->var] = true;
  }
  for (int i = 0; i < s->nbody; i++) {
    LStmt *c = s->body[i];
    if (c->kind == LS_IF && c->nbody == 1 && c->body[0]->kind == LS_STORE) {
      LStmt *st = c->body[0];
      LExpr *found[4];
      int n = 0;
      find_loads(st->value, r, found, &n);
      if (n == 0 && always(c->cond, r)) {
        if (!P->collect)
          s->body[i] = st; // a guard that always holds goes too
        continue;
      }
      if (n == 1 && bounds_of(c->cond, found[0]) && found[0]->buf->storage != LB_LOCAL) {
        LBuf *b = found[0]->buf;
        int64_t lo[LMAX_RANK], hi[LMAX_RANK];
        bool ok = true;
        for (int d = 0; d < b->rank && ok; d++) {
          int64_t a, z;
          ok = range_of(r, found[0]->idx[d], &a, &z);
          lo[d] = a < 0 ? -a : 0;
          hi[d] = z >= b->dim[d] ? z - b->dim[d] + 1 : 0;
        }
        if (ok && P->collect) {
          for (int d = 0; d < b->rank; d++) {
            int64_t *l = &P->lo[b->id][d], *h = &P->hi[b->id][d];
            *l = !P->asked[b->id] || lo[d] > *l ? lo[d] : *l;
            *h = !P->asked[b->id] || hi[d] > *h ? hi[d] : *h;
          }
          P->asked[b->id] = true;
        } else if (ok) {
          LBuf *to = padded(P, b, lo, at);
          shift_expr(st->value, found[0]->buf, to, lo);
          s->body[i] = st; // the guard goes
          *changed = true;
          continue;
        }
      }
    }
    if (c->kind != LS_STORE)
      walk(P, c, r, at, changed);
  }
  if (s->kind == LS_LOOP)
    r->bound[s->var] = false;
}

// --- The copy folded into the writer ---------------------------------------------------

static bool stmt_writes(const LStmt *s, const LBuf *x) {
  if (s->kind == LS_STORE && same_tensor(s->buf, x))
    return true;
  for (int i = 0; i < s->nbody; i++)
    if (stmt_writes(s->body[i], x))
      return true;
  return false;
}

static void shift_stmt(LStmt *s, const LBuf *x, LBuf *to, const int64_t *lo) {
  shift_expr(s->cond, x, to, lo);
  shift_expr(s->value, x, to, lo);
  if (s->kind == LS_STORE)
    shift_access(&s->buf, s->idx, x, to, lo);
  for (int i = 0; i < s->nbody; i++)
    shift_stmt(s->body[i], x, to, lo);
}

// Does every store of s into b index dimension d with exactly var?
static bool stores_at(const LStmt *s, const LBuf *b, int d, int var) {
  if (s->kind == LS_STORE && s->buf == b && !lx_is_var(s->idx[d], var))
    return false;
  for (int i = 0; i < s->nbody; i++)
    if (!stores_at(s->body[i], b, d, var))
      return false;
  return true;
}

// The dimension of `to` that the writer's one loop indexes at every store
// into it (a per-channel kernel: batch norm's, a pool's), with no border
// there or before it; or -1.
static int writer_dim(const LKernel *w, const LBuf *to, const LBuf *from, const int64_t *lo) {
  if (w->nbody != 1 || w->body[0]->kind != LS_LOOP || w->body[0]->flags)
    return -1;
  for (int d = 0; d < to->rank; d++) {
    if (lo[d] != 0 || to->dim[d] != from->dim[d])
      return -1;
    if (stores_at(w->body[0], to, d, w->body[0]->var))
      return d;
  }
  return -1;
}

// Folds e's copy into the one kernel that writes its source, when the
// source is a workspace buffer that is neither the function's result nor
// its logits and every other name of it has its shape.
static void fold_copy(LFunc *f, const Padded *e) {
  LBuf *x = e->from;
  const LBuf *r = lbuf_root(x);
  if (r->storage != LB_WORKSPACE || r == f->result || (f->logits && lbuf_root(f->logits) == r))
    return;
  for (int i = 0; i < f->nbufs; i++) // every other name of it has its shape
    if (f->bufs[i] != e->to && lbuf_root(f->bufs[i]) == r && !same_tensor(f->bufs[i], x))
      return;
  int writers = 0, writer = -1, made = -1;
  for (int i = 0; i < f->nkernels; i++) {
    bool w = false;
    for (int j = 0; j < f->kernels[i]->nbody && !w; j++)
      w = stmt_writes(f->kernels[i]->body[j], x);
    if (w && f->kernels[i]->flops)
      return; // a contraction's stores are tile's to place
    writers += w;
    if (w)
      writer = i;
    if (f->kernels[i] == e->made)
      made = i;
  }
  if (writers != 1 || writer > made) // the copy reads what the writer wrote
    return;
  // The border goes right after the writer, not where the copy was (before
  // the first contraction that asked for the border): every reader of the
  // tensor now reads the padded buffer, and one before that contraction may
  // copy all of it. A strided input gradient's phase reads only the
  // interior, but tile gives it a transposed copy of the whole buffer, and
  // a later input gradient, reading the border, shares that copy: with the
  // border still unwritten, resnet8_wide trained to 12% where it reaches
  // 38% (tests/passes/pad/residual-train.test).
  LKernel *border = e->made;
  for (int i = made; i > writer + 1; i--)
    f->kernels[i] = f->kernels[i - 1];
  f->kernels[writer + 1] = border;
  for (int i = 0; i < f->nkernels; i++)
    if (f->kernels[i] != e->made)
      for (int j = 0; j < f->kernels[i]->nbody; j++)
        shift_stmt(f->kernels[i]->body[j], x, e->to, e->lo);
  LKernel *k = e->made;
  k->nbody = 0, k->nvars = 0;
  LExpr *v[LMAX_RANK], *at[LMAX_RANK];
  // A writer that loops over one dimension (batch norm's channels, a
  // pool's images) gets a border kernel that loops over it first, the
  // border of each channel's or image's planes in turn: fuse-loops then
  // runs it in the writer's loop, each border written while its lines are
  // in cache, not in a pass of its own over every line of the tensor.
  int dc = writer_dim(f->kernels[writer], e->to, x, e->lo);
  if (dc < 0) {
    pad_nest(k, NULL, x, e->to, e->lo, v, at, 0, false);
    return;
  }
  LStmt *in = ls_loop(lk_var(k), 0, x->dim[dc], f->kernels[writer]->body[0]->role);
  lk_add(k, in);
  at[dc] = v[dc] = lx_var(in->var);
  for (int d = 0; d < dc; d++) {
    LStmt *l = ls_loop(lk_var(k), 0, x->dim[d], NULL);
    ls_add(in, l);
    in = l;
    at[d] = v[d] = lx_var(l->var);
  }
  pad_nest(k, in, x, e->to, e->lo, v, at, dc + 1, false);
}

static void pad_function(LFunc *f) {
  int nbufs = f->nbufs;
  Pad P = {f, NULL, 0, 0, true, xcalloc(nbufs + 1, sizeof *P.lo), xcalloc(nbufs + 1, sizeof *P.hi),
           xcalloc(nbufs + 1, 1)};
  // Two walks: the borders every reader asks for, then the copies.
  for (int pass = 0; pass < 2; pass++) {
    P.collect = pass == 0;
    for (int i = 0; i < f->nkernels; i++) {
      LKernel *k = f->kernels[i];
      if (!k->node || !k->flops)
        continue; // only contractions: the plain nests of other ops keep their guards
      Ranges r = {xcalloc(k->nvars + 1, 8), xcalloc(k->nvars + 1, 8), xcalloc(k->nvars + 1, 1)};
      bool changed = false;
      int before = f->nkernels;
      for (int j = 0; j < k->nbody; j++)
        walk(&P, k->body[j], &r, i, &changed);
      i += f->nkernels - before; // the pad kernels went in before this one
      free(r.lo), free(r.hi), free(r.bound);
    }
  }
  // Only in the training step: the test entry checks every node's own
  // buffer, and xc_forward's kernels that read no activation (a border of
  // zeros) move to xc_prepare_forward, run once per evaluation
  // (codegen/library.c), while the writer's stores stay per batch.
  if (f->kind == FN_GRAD_STEP)
    for (int i = 0; i < P.np; i++)
      fold_copy(f, &P.p[i]);
  free(P.p), free(P.lo), free(P.hi), free(P.asked);
}

void pass_pad(LProgram *p) {
  for (int i = 0; i < p->nfuncs; i++)
    pad_function(p->funcs[i]);
}

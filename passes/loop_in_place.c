// in-place: a step computes each update of its state -- the optimizer's new
// weights and moments, batch norm's running statistics -- into a temporary
// of the workspace, and an assign copies the temporary over the state
// after every other kernel (the graph's assign: every kernel reads the old
// values). When one kernel alone writes the temporary, no kernel after it
// reads the state, and it reads the state only at the element it writes
// (state[i] -> temporary[i], elementwise), it may as well write the state:
// the temporary becomes another name of the state and the copy goes. A
// pass over the temporary and one over the state less per update: SGD with
// momentum's xc_apply_step made four passes over each weight's tensors
// (the momentum, the weight, then the two copies), now two. The values
// are those of before, bit for bit.
#include "loop.h"

#include <stdlib.h>
#include <string.h>

// Does e load from a buffer whose memory is root's? (lx_reads asks about
// one name of it.)
static bool expr_reads(const LExpr *e, const LBuf *root) {
  if (!e)
    return false;
  if (e->kind == LX_LOAD) {
    if (lbuf_root(e->buf) == root)
      return true;
    for (int d = 0; d < e->buf->rank; d++)
      if (expr_reads(e->idx[d], root))
        return true;
  }
  return expr_reads(e->a, root) || expr_reads(e->b, root) || expr_reads(e->c, root);
}

static bool stmt_reads(const LStmt *s, const LBuf *root) {
  if (expr_reads(s->cond, root) || expr_reads(s->value, root))
    return true;
  for (int d = 0; s->kind == LS_STORE && d < s->buf->rank; d++)
    if (expr_reads(s->idx[d], root))
      return true;
  for (int i = 0; i < s->nbody; i++)
    if (stmt_reads(s->body[i], root))
      return true;
  return false;
}

static bool kernel_reads(const LKernel *k, const LBuf *root) {
  for (int i = 0; i < k->nbody; i++)
    if (stmt_reads(k->body[i], root))
      return true;
  return false;
}

// Do a[x...] and b[y...], two names of one shape, name the same element
// at every step (the same variables and coefficients, no offset apart)?
static bool same_index(const LBuf *a, LExpr *const *x, const LBuf *b, LExpr *const *y) {
  int64_t apart;
  if (a->rank != b->rank)
    return false;
  for (int d = 0; d < a->rank; d++)
    if (a->dim[d] != b->dim[d])
      return false;
  return lx_const_apart(a, x, y, &apart) && apart == 0;
}

// Does e load root's memory only at the element `st` stores (through
// buffers of st's shape)?
static bool reads_only_at(const LExpr *e, const LBuf *root, const LStmt *st) {
  if (!e)
    return true;
  if (e->kind == LX_LOAD && lbuf_root(e->buf) == root &&
      !same_index(e->buf, e->idx, st->buf, st->idx))
    return false;
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      if (!reads_only_at(e->idx[d], root, st))
        return false;
  return reads_only_at(e->a, root, st) && reads_only_at(e->b, root, st) &&
         reads_only_at(e->c, root, st);
}

// Does s read root's memory anywhere but in the value of a store into
// src, at that store's own element?
static bool reads_elsewhere(const LStmt *s, const LBuf *root, const LBuf *src) {
  if (expr_reads(s->cond, root))
    return true;
  if (s->kind == LS_STORE) {
    for (int d = 0; d < s->buf->rank; d++)
      if (expr_reads(s->idx[d], root))
        return true;
    return lbuf_root(s->buf) == src ? !reads_only_at(s->value, root, s) : expr_reads(s->value, root);
  }
  for (int i = 0; i < s->nbody; i++)
    if (reads_elsewhere(s->body[i], root, src))
      return true;
  return false;
}

// The stores under s into root's memory, each with the box of elements it
// writes over the loops around it (lo, hi by loop variable).
typedef struct {
  const LStmt *st;
  int64_t lo[LMAX_RANK], hi[LMAX_RANK];
} Store;

static void collect(const LStmt *s, const LBuf *root, int64_t *lo, int64_t *hi, Store **out,
                    int *n) {
  if (s->kind == LS_LOOP)
    lo[s->var] = s->lo, hi[s->var] = s->hi - 1;
  if (s->kind == LS_STORE && lbuf_root(s->buf) == root) {
    *out = realloc(*out, sizeof **out * (*n + 1));
    if (!*out)
      fatal("out of memory");
    Store *x = &(*out)[(*n)++];
    x->st = s;
    for (int d = 0; d < s->buf->rank; d++) {
      Affine a;
      x->lo[d] = 0, x->hi[d] = s->buf->dim[d] - 1;
      if (lx_affine(s->idx[d], &a))
        affine_range(&a, lo, hi, &x->lo[d], &x->hi[d]);
    }
  }
  for (int i = 0; i < s->nbody; i++)
    collect(s->body[i], root, lo, hi, out, n);
}

// Does every element of src get one store in w (stores of one shape whose
// boxes do not meet, none of them reading src)? Then a store's read of
// the state at its element comes before any write of that element.
static bool written_once(const LKernel *w, const LBuf *src) {
  int64_t *lo = xcalloc(w->nvars + 1, 8), *hi = xcalloc(w->nvars + 1, 8);
  Store *st = NULL;
  int n = 0;
  for (int i = 0; i < w->nbody; i++)
    collect(w->body[i], src, lo, hi, &st, &n);
  bool ok = n > 0;
  for (int i = 0; i < n && ok; i++) {
    ok = !expr_reads(st[i].st->value, src) && st[i].st->buf->rank == st[0].st->buf->rank;
    for (int j = 0; j < i && ok; j++) {
      bool apart = false;
      for (int d = 0; d < st[i].st->buf->rank && !apart; d++)
        apart = st[i].st->buf->dim[d] == st[j].st->buf->dim[d] &&
                (st[i].hi[d] < st[j].lo[d] || st[j].hi[d] < st[i].lo[d]);
      ok = apart && st[i].st->buf == st[j].st->buf;
    }
  }
  free(lo), free(hi), free(st);
  return ok;
}

// The copy an assign kernel makes: every store under it dst[i] = src[i],
// the same dst and src (a vector loop and its tail), or false.
static bool copy_stmt(const LStmt *s, const LStmt **first) {
  if (s->kind == LS_IF)
    return false;
  if (s->kind == LS_STORE) {
    if (s->value->kind != LX_LOAD || !same_index(s->buf, s->idx, s->value->buf, s->value->idx) ||
        s->buf->dtype != s->value->buf->dtype)
      return false;
    if (!*first)
      *first = s;
    return (*first)->buf == s->buf && (*first)->value->buf == s->value->buf;
  }
  for (int i = 0; i < s->nbody; i++)
    if (!copy_stmt(s->body[i], first))
      return false;
  return true;
}

static bool copy_of(const LKernel *k, const LStmt **st) {
  *st = NULL;
  for (int i = 0; i < k->nbody; i++)
    if (!copy_stmt(k->body[i], st))
      return false;
  return *st != NULL;
}

// The assign kernel at index a: its temporary becomes its state, and it goes.
static bool fold_assign(LFunc *f, int a) {
  const LStmt *copy;
  if (!copy_of(f->kernels[a], &copy))
    return false;
  LBuf *dst = lbuf_root(copy->buf), *src = lbuf_root(copy->value->buf);
  if ((dst->storage != LB_PARAM && dst->storage != LB_STATE) || src->storage != LB_WORKSPACE ||
      src->dtype != dst->dtype || lbuf_numel(src) != lbuf_numel(dst) ||
      (f->result && lbuf_root(f->result) == src) || (f->logits && lbuf_root(f->logits) == src))
    return false;
  int writer = -1;
  for (int i = 0; i < f->nkernels; i++) {
    const LKernel *k = f->kernels[i];
    if (i != a && lk_writes(k, dst, true))
      return false; // the state is written elsewhere too
    if (!lk_writes(k, src, true))
      continue;
    if (writer >= 0 || k->deferred)
      return false; // in one kernel of the step
    writer = i;
  }
  if (writer < 0 || !written_once(f->kernels[writer], src))
    return false;
  // The writer reads the state at the element it writes and nowhere else;
  // no kernel after it (in run order: deferred ones last) reads the state.
  const LKernel *w = f->kernels[writer];
  for (int i = 0; i < w->nbody; i++)
    if (reads_elsewhere(w->body[i], dst, src))
      return false;
  for (int i = 0; i < f->nkernels; i++)
    if (i != a && i != writer && (f->kernels[i]->deferred || i > writer) &&
        kernel_reads(f->kernels[i], dst))
      return false;
  src->alias = dst;
  memmove(f->kernels + a, f->kernels + a + 1, sizeof *f->kernels * (size_t)(f->nkernels - a - 1));
  f->nkernels--;
  return true;
}

void pass_in_place(LProgram *p) {
  for (int i = 0; i < p->nfuncs; i++) {
    LFunc *f = p->funcs[i];
    for (int a = 0; a < f->nkernels; a++)
      if (f->kernels[a]->deferred && fold_assign(f, a))
        a--;
  }
}

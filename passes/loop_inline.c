// inline: an elementwise kernel -- one store of a cheap expression at every
// element of its tensor, the element's own index -- is computed where its
// tensor is read instead, when every reader is a kernel that is no
// contraction: each load of the tensor becomes the expression at the
// load's index, and the kernel and its tensor go. In the training step,
// relu's gradient, select(y > 0, dy, 0), which batch norm's gradient
// kernels read: they read y and dy instead, and a write and a read of the
// tensor are saved (its own pass over memory, and batch norm's first).
//
// The expression is computed as before, from the same values (nothing
// writes what it reads between the kernel and its last reader): every
// result is bit for bit the same (a 16-bit tensor, which rounds what it
// stores, stays). Contractions keep their loads (tile places their
// operands; it runs before), and a tensor with another name (an alias)
// stays.
#include "loop.h"

#include <stdlib.h>
#include <string.h>

// Operations and loads at most (indices not counted): a select of a
// comparison and a load or two, computed again by every reader's load.
enum { MAX_NODES = 12 };

static int nodes(const LExpr *e) {
  return e ? 1 + nodes(e->a) + nodes(e->b) + nodes(e->c) : 0;
}

// The one store of kernel k, at its loops' variables in order, loops from 0
// over the whole of its buffer; or NULL.
static const LStmt *elementwise(const LKernel *k) {
  if (k->nbody != 1 || k->flops || k->deferred)
    return NULL;
  const LStmt *s = k->body[0];
  int vars[LMAX_RANK], depth = 0;
  while (s->kind == LS_LOOP) {
    if (s->flags || s->lo != 0 || s->nbody != 1 || depth == LMAX_RANK)
      return NULL;
    vars[depth++] = s->var;
    s = s->body[0];
  }
  if (s->kind != LS_STORE || s->buf->rank != depth || nodes(s->value) > MAX_NODES)
    return NULL;
  const LStmt *l = k->body[0];
  for (int d = 0; d < depth; d++, l = l->body[0])
    if (!lx_is_var(s->idx[d], vars[d]) || l->hi != s->buf->dim[d])
      return NULL;
  return s;
}

// The buffers (roots) e loads.
static void loads(const LExpr *e, const LBuf **out, int *n, int cap) {
  if (!e)
    return;
  if (e->kind == LX_LOAD) {
    const LBuf *r = lbuf_root(e->buf);
    bool seen = false;
    for (int i = 0; i < *n && !seen; i++)
      seen = out[i] == r;
    if (!seen && *n < cap)
      out[(*n)++] = r;
    for (int d = 0; d < e->buf->rank; d++)
      loads(e->idx[d], out, n, cap);
  }
  loads(e->a, out, n, cap), loads(e->b, out, n, cap), loads(e->c, out, n, cap);
}

typedef struct {
  const LStmt *def;     // the elementwise store
  const LKernel *maker; // its kernel
  int shift;            // its variables, moved past every reader's
} Inline;

// e with every load of def's buffer replaced by def's value at the load's
// index (in place where it can, else a new tree).
static LExpr *rewrite(LExpr *e, const Inline *in) {
  if (!e)
    return NULL;
  if (e->kind == LX_LOAD && e->buf == in->def->buf) {
    LExpr *v = lx_copy(in->def->value);
    lx_shift_vars(v, in->shift);
    const LStmt *l = in->maker->body[0];
    for (int d = 0; d < e->buf->rank; d++, l = l->body[0])
      v = lx_subst(v, l->var + in->shift, e->idx[d]);
    return v;
  }
  if (e->kind == LX_LOAD) {
    for (int d = 0; d < e->buf->rank; d++)
      e->idx[d] = rewrite(e->idx[d], in);
    return e;
  }
  e->a = rewrite(e->a, in), e->b = rewrite(e->b, in), e->c = rewrite(e->c, in);
  return e;
}

static void rewrite_stmt(LStmt *s, const Inline *in) {
  s->cond = rewrite(s->cond, in);
  s->value = rewrite(s->value, in);
  for (int d = 0; s->kind == LS_STORE && d < s->buf->rank; d++)
    s->idx[d] = rewrite(s->idx[d], in);
  for (int i = 0; i < s->nbody; i++)
    rewrite_stmt(s->body[i], in);
}

// Inlines kernel i of f if it can; true if it did (the kernel is gone).
static bool inline_kernel(LFunc *f, int i) {
  const LKernel *k = f->kernels[i];
  const LStmt *def = elementwise(k);
  if (!def)
    return false;
  LBuf *b = def->buf;
  // A 16-bit tensor rounds what it stores; its readers read the rounded value.
  if (b->alias || b->storage != LB_WORKSPACE || b->dtype != DT_F32 || b == f->result ||
      b == f->logits)
    return false;
  for (int j = 0; j < f->nbufs; j++) // no other name of its memory
    if (f->bufs[j] != b && lbuf_root(f->bufs[j]) == b)
      return false;
  if (lx_reads(def->value, b))
    return false;
  const LBuf *in[16];
  int nin = 0;
  loads(def->value, in, &nin, 16);
  if (nin == 16)
    return false;
  // Its readers, all after it, none a contraction; nothing else writes it,
  // nor, up to the last reader, what it reads.
  int last = -1, shift = k->nvars;
  for (int j = 0; j < f->nkernels; j++) {
    const LKernel *r = f->kernels[j];
    if (j == i)
      continue;
    bool reads = lk_reads(r, b);
    if (lk_writes(r, b, true) || (reads && (j < i || r->flops)))
      return false;
    if (reads) {
      last = j;
      shift = r->nvars > shift ? r->nvars : shift;
    }
  }
  if (last < 0)
    return false;
  for (int j = i + 1; j <= last; j++)
    for (int s = 0; s < nin; s++)
      if (lk_writes(f->kernels[j], in[s], true))
        return false;
  Inline it = {def, k, shift};
  bool named = false; // the first reader's name tells --profile where it went
  for (int j = i + 1; j <= last; j++) {
    LKernel *r = f->kernels[j];
    if (!lk_reads(r, b))
      continue;
    for (int s = 0; s < r->nbody; s++)
      rewrite_stmt(r->body[s], &it);
    if (!named)
      r->op = xformat("%s+%s", k->op, r->op);
    named = true;
  }
  for (int j = i; j + 1 < f->nkernels; j++)
    f->kernels[j] = f->kernels[j + 1];
  f->nkernels--;
  return true;
}

void pass_inline(LProgram *p) {
  for (int fi = 0; fi < p->nfuncs; fi++) {
    LFunc *f = p->funcs[fi];
    if (f->kind == FN_SLOTS) // the test entry checks every node's own buffer
      continue;
    for (int i = 0; i < f->nkernels; i++)
      if (inline_kernel(f, i))
        i--;
  }
}

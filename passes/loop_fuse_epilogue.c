// fuse-epilogue: computes an elementwise op in the kernel of the
// contraction it follows (conv2d or linear), on the output while it is
// still in cache -- after tiling, in registers before the store. Today's
// epilogue is the relu that follows a layer, when nothing else reads the
// pre-activation (relu_grad reads the relu's output): the relu's nest moves
// into the producer's kernel, working in place, the relu's buffer becomes an
// alias of the producer's, and the kernel is named "conv2d+relu". The test
// entry (FN_SLOTS), which checks every node's own value, fuses nothing.
#include "loop.h"

#include <stdlib.h>
#include <string.h>

static bool reads_expr(const LExpr *e, const LBuf *b) {
  if (!e)
    return false;
  if (e->kind == LX_LOAD) {
    if (e->buf == b)
      return true;
    for (int d = 0; d < e->buf->rank; d++)
      if (reads_expr(e->idx[d], b))
        return true;
  }
  return reads_expr(e->a, b) || reads_expr(e->b, b) || reads_expr(e->c, b);
}

static bool reads_stmt(const LStmt *s, const LBuf *b) {
  if (reads_expr(s->cond, b) || reads_expr(s->value, b))
    return true;
  for (int i = 0; i < s->nbody; i++)
    if (reads_stmt(s->body[i], b))
      return true;
  return false;
}

static bool kernel_reads(const LKernel *k, const LBuf *b) {
  for (int i = 0; i < k->nbody; i++)
    if (reads_stmt(k->body[i], b))
      return true;
  return false;
}

// Every load of `from` in e now reads `to` (same indices).
static void retarget_expr(LExpr *e, LBuf *from, LBuf *to) {
  if (!e)
    return;
  if (e->kind == LX_LOAD && e->buf == from)
    e->buf = to;
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      retarget_expr(e->idx[d], from, to);
  retarget_expr(e->a, from, to);
  retarget_expr(e->b, from, to);
  retarget_expr(e->c, from, to);
}

static void retarget(LStmt *s, LBuf *from, LBuf *to) {
  retarget_expr(s->cond, from, to);
  retarget_expr(s->value, from, to);
  if (s->kind == LS_STORE && s->buf == from)
    s->buf = to;
  for (int i = 0; i < s->nbody; i++)
    retarget(s->body[i], from, to);
}

// Renumbers the loop variables of statements moved between kernels (in
// place: the statement must not share expression nodes with another).
static void shift_vars_expr(LExpr *e, int by) {
  if (!e)
    return;
  if (e->kind == LX_VAR)
    e->var += by;
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      shift_vars_expr(e->idx[d], by);
  shift_vars_expr(e->a, by);
  shift_vars_expr(e->b, by);
  shift_vars_expr(e->c, by);
}

static void shift_vars(LStmt *s, int by) {
  if (s->kind == LS_LOOP)
    s->var += by;
  shift_vars_expr(s->cond, by);
  shift_vars_expr(s->value, by);
  if (s->kind == LS_STORE)
    for (int d = 0; d < s->buf->rank; d++)
      shift_vars_expr(s->idx[d], by);
  for (int i = 0; i < s->nbody; i++)
    shift_vars(s->body[i], by);
}

static LBuf *root(LBuf *b) {
  while (b->alias)
    b = b->alias;
  return b;
}

static void fuse(LFunc *f) {
  for (int i = 0; i < f->nkernels; i++) {
    LKernel *r = f->kernels[i];
    Node *n = r->node;
    if (!n || n->op != OP_relu)
      continue;
    Node *pn = n->in[0];
    if (pn->op != OP_conv2d && pn->op != OP_linear)
      continue;
    LBuf *y = f->buf_of[pn->id], *out = f->buf_of[n->id];
    if (!y || !out || y->alias || y == f->result || root(out) != out)
      continue;
    // The producer's kernel, and no other reader of the pre-activation.
    LKernel *p = NULL;
    bool other = false;
    for (int j = 0; j < f->nkernels; j++) {
      LKernel *k = f->kernels[j];
      if (k->node == pn)
        p = k;
      else if (k != r && kernel_reads(k, y))
        other = true;
    }
    if (!p || other || strchr(p->op, '+'))
      continue;
    for (int j = 0; j < r->nbody; j++) {
      LStmt *s = ls_copy(r->body[j]); // lowering shares index trees; renumber a private copy
      retarget(s, out, y);
      shift_vars(s, p->nvars);
      lk_add(p, s);
    }
    p->nvars += r->nvars;
    p->op = xformat("%s+relu", p->op);
    out->alias = y;
    // Drop the relu's kernel.
    for (int j = i; j + 1 < f->nkernels; j++)
      f->kernels[j] = f->kernels[j + 1];
    f->nkernels--;
    i--;
  }
}

void pass_fuse_epilogue(LProgram *p) {
  for (int i = 0; i < p->nfuncs; i++)
    if (p->funcs[i]->kind != FN_SLOTS)
      fuse(p->funcs[i]);
}

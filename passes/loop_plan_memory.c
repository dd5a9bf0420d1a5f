// plan-memory: places every workspace buffer of each function at a byte
// offset in the one workspace the runtime allocates. A buffer lives from the
// kernel that first writes it to the last that reads it (to the end of the
// step when it is returned or copied out, or an assign copies it there), and
// two buffers whose lives overlap never overlap in memory; first fit, each
// slice handed back after its last reader, so the workspace is about the
// largest set of buffers alive at once. Aliases share their root's place.
#include "loop.h"

#include <stdlib.h>

static void note(LFunc *f, LBuf *b, int k, bool write) {
  b = lbuf_root(b);
  if (b->storage != LB_WORKSPACE)
    return;
  if (b->first < 0 || (write && k < b->first))
    b->first = k;
  if (k > b->last)
    b->last = k;
}

static void note_expr(LFunc *f, const LExpr *e, int k) {
  if (!e)
    return;
  if (e->kind == LX_LOAD) {
    note(f, e->buf, k, false);
    for (int d = 0; d < e->buf->rank; d++)
      note_expr(f, e->idx[d], k);
  }
  note_expr(f, e->a, k);
  note_expr(f, e->b, k);
  note_expr(f, e->c, k);
}

static void note_stmt(LFunc *f, const LStmt *s, int k) {
  note_expr(f, s->cond, k);
  note_expr(f, s->value, k);
  if (s->kind == LS_STORE || s->kind == LS_PREFETCH)
    note(f, s->buf, k, s->kind == LS_STORE);
  for (int i = 0; i < s->nbody; i++)
    note_stmt(f, s->body[i], k);
}

// The kernels in the order they run: deferred ones (assigns) last.
static LKernel **run_order(LFunc *f) {
  LKernel **order = xcalloc(f->nkernels + 1, sizeof *order);
  int n = 0;
  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < f->nkernels; i++)
      if (f->kernels[i]->deferred == (pass == 1))
        order[n++] = f->kernels[i];
  return order;
}

static void plan(LFunc *f) {
  LKernel **order = run_order(f);
  for (int i = 0; i < f->nbufs; i++)
    f->bufs[i]->first = f->bufs[i]->last = -1;
  for (int k = 0; k < f->nkernels; k++)
    for (int j = 0; j < order[k]->nbody; j++)
      note_stmt(f, order[k]->body[j], k);
  // Read after the step: the result, the logits copied out, and what a
  // deferred assign copies (its kernel index covers that already).
  LBuf *outs[2] = {f->result, f->logits};
  for (int i = 0; i < 2; i++) {
    LBuf *r = outs[i];
    while (r && r->alias)
      r = r->alias;
    if (r && r->storage == LB_WORKSPACE)
      r->last = f->nkernels;
  }
  int64_t *free_off = xcalloc(2 * f->nbufs + 2, sizeof *free_off);
  int64_t *free_len = xcalloc(2 * f->nbufs + 2, sizeof *free_len);
  int nfree = 0;
  int64_t top = 0;
  for (int k = 0; k <= f->nkernels; k++) {
    // Place the buffers first written here (outputs before inputs are
    // freed: a kernel never reads and writes the same memory)...
    for (int i = 0; i < f->nbufs; i++) {
      LBuf *b = f->bufs[i];
      if (b->alias || b->storage != LB_WORKSPACE || b->first != k)
        continue;
      int64_t need = (lbuf_bytes(b) + 63) / 64 * 64;
      int best = -1;
      for (int j = 0; j < nfree; j++)
        if (free_len[j] >= need && (best < 0 || free_len[j] < free_len[best]))
          best = j;
      if (best >= 0) {
        b->offset = free_off[best];
        free_off[best] += need;
        free_len[best] -= need;
      } else {
        b->offset = top;
        top += need;
      }
    }
    // ...then hand back those whose last reader this is.
    for (int i = 0; i < f->nbufs; i++) {
      LBuf *b = f->bufs[i];
      if (b->alias || b->storage != LB_WORKSPACE || b->last != k || b->first < 0)
        continue;
      free_off[nfree] = b->offset;
      free_len[nfree++] = (lbuf_bytes(b) + 63) / 64 * 64;
    }
    for (bool merged = true; merged;) {
      merged = false;
      for (int a = 0; a < nfree && !merged; a++)
        for (int c = 0; c < nfree && !merged; c++)
          if (a != c && free_off[a] + free_len[a] == free_off[c]) {
            free_len[a] += free_len[c];
            free_off[c] = free_off[nfree - 1];
            free_len[c] = free_len[nfree - 1];
            nfree--;
            merged = true;
          }
    }
  }
  // A buffer that is read but never written here: a value of the other
  // half of the step cannot reach this one, so this is a bug.
  for (int i = 0; i < f->nbufs; i++) {
    LBuf *b = f->bufs[i];
    if (!b->alias && b->storage == LB_WORKSPACE && b->first < 0 && b->last >= 0)
      internal_error(__FILE__, __LINE__,
                     xformat("%s: %%%s is read but never written", f->name, b->name));
  }
  f->workspace_bytes = top;
  free(order), free(free_off), free(free_len);
}

void pass_plan_memory(LProgram *p) {
  for (int i = 0; i < p->nfuncs; i++)
    plan(p->funcs[i]);
}

// parallelize: runs a kernel's outermost loop on the threads
// (xc_parallel_for splits it in one contiguous chunk per thread) when its
// iterations write disjoint memory and the kernel does enough work for a
// parallel region (a few microseconds) to pay. Only the outermost loop, and
// never one whose iterations add into the same place, so every sum keeps
// the order it had and the results do not depend on the thread count.
#include "loop.h"

#include <stdlib.h>

// Below this much work a kernel runs on one thread: a region costs
// microseconds (waking the other threads and waiting for the last), much
// more on shared cores. Elements moved or computed one by one: 128 Ki, tens
// of microseconds. Multiply-adds of a tiled contraction run some 16 a cycle
// per core: 512 Ki of them take about 10.
enum { MIN_WORK = 1 << 17, MIN_FMAS = 1 << 19 };

typedef struct {
  int64_t *span; // by variable: its loop's hi - 1 - lo, while inside it
} Spans;

// Does every store under s write, at some dimension, c * var plus terms that
// stay within [0, |c|) of each other (so two iterations never write the same
// element)? Local arrays are each thread's own and never conflict.
static bool disjoint(const LStmt *s, int var, Spans *sp) {
  if (s->kind == LS_STORE) {
    if (s->buf->storage == LB_LOCAL)
      return true;
    for (int d = 0; d < s->buf->rank; d++) {
      Affine a;
      if (!lx_affine(s->idx[d], &a))
        continue;
      int64_t c = affine_coef(&a, var), others = 0;
      if (c == 0)
        continue;
      for (int i = 0; i < a.n; i++)
        if (a.var[i] != var)
          others += (a.coef[i] < 0 ? -a.coef[i] : a.coef[i]) * sp->span[a.var[i]];
      if (others < (c < 0 ? -c : c))
        return true;
    }
    return false;
  }
  if (s->kind == LS_LOOP)
    sp->span[s->var] = s->hi - 1 - s->lo;
  for (int i = 0; i < s->nbody; i++)
    if (!disjoint(s->body[i], var, sp))
      return false;
  return true;
}

static void parallelize(LKernel *k) {
  if (k->nbody != 1 || k->body[0]->kind != LS_LOOP)
    return;
  LStmt *l = k->body[0];
  if (l->flags & (LF_REDUCE | LF_UNROLL | LF_VECTOR) || l->hi - l->lo < 2)
    return;
  bool big = k->flops ? k->flops / 2 >= MIN_FMAS : ls_work(l) >= MIN_WORK;
  Spans sp = {xcalloc(k->nvars + 1, sizeof(int64_t))};
  bool ok = big && disjoint(l, l->var, &sp);
  free(sp.span);
  if (!ok)
    return;
  l->flags |= LF_PARALLEL;
}

void pass_parallelize(LProgram *p) {
  for (int f = 0; f < p->nfuncs; f++)
    for (int i = 0; i < p->funcs[f]->nkernels; i++)
      parallelize(p->funcs[f]->kernels[i]);
}

// fuse-loops: neighbouring kernels that loop over the same range -- batch
// norm's per-channel kernels -- run as one kernel, so what one iteration
// reads is read while it is in cache, or once for both. These kernels move
// memory and do little arithmetic: a pass over a tensor they no longer
// make is time saved. Two cases:
//
// - Iteration c of the second kernel reads only what iteration c of the
//   first wrote, at index c of one dimension (the channel's statistics,
//   its gradients), and touches nothing else the first does, or writes
//   only its c's part of what the first writes at c (the pad pass's border
//   of zeros around the first's output): the merged loop runs the first's
//   body then the second's. The statistics, then the normalisation of that
//   channel, its elements still in cache; the two gradient sums of a
//   channel, then its input gradient, then the border around it.
// - The two kernels touch disjoint buffers but read one in common and each
//   sums over the same loops (the gamma gradient, sum of dy * (x - mean),
//   and the bias gradient, sum of dy): the two sums are jammed into one
//   nest, one pass over dy. The merged kernel runs the first's statements
//   up to its sum, the second's up to its, the jammed sums, then the rest
//   of each, an interleaving that keeps each kernel's own order.
//
// Every value is computed as before, each sum adding the same terms in the
// same order into its own accumulators: results are bit for bit those of
// the separate kernels. Contractions (kernels with FLOPs) keep tile's
// schedule. Runs after vectorize, so each sum keeps the lanes it was given,
// and before parallelize, which then splits the shared loop across threads.
#include "loop.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  const LBuf **b;
  int n;
} BufSet;

static void set_add(BufSet *s, const LBuf *b) {
  b = lbuf_root(b);
  for (int i = 0; i < s->n; i++)
    if (s->b[i] == b)
      return;
  s->b = realloc(s->b, sizeof *s->b * (s->n + 1));
  if (!s->b)
    fatal("out of memory");
  s->b[s->n++] = b;
}

static bool set_has(const BufSet *s, const LBuf *b) {
  b = lbuf_root(b);
  for (int i = 0; i < s->n; i++)
    if (s->b[i] == b)
      return true;
  return false;
}

static void expr_reads(const LExpr *e, BufSet *r) {
  if (!e)
    return;
  if (e->kind == LX_LOAD) {
    set_add(r, e->buf);
    for (int d = 0; d < e->buf->rank; d++)
      expr_reads(e->idx[d], r);
  }
  expr_reads(e->a, r), expr_reads(e->b, r), expr_reads(e->c, r);
}

// The buffers s reads (r) and writes (w), aliases as their roots.
static void stmt_uses(const LStmt *s, BufSet *r, BufSet *w) {
  expr_reads(s->cond, r);
  if (s->kind == LS_STORE) {
    set_add(w, s->buf);
    expr_reads(s->value, r);
    for (int d = 0; d < s->buf->rank; d++)
      expr_reads(s->idx[d], r);
  }
  for (int i = 0; i < s->nbody; i++)
    stmt_uses(s->body[i], r, w);
}

// One loop over the same range, both plain or both reductions: the shape
// two nests must share to be jammed or merged.
static bool same_loop(const LStmt *a, const LStmt *b) {
  return a->kind == LS_LOOP && b->kind == LS_LOOP && a->lo == b->lo && a->hi == b->hi &&
         a->flags == b->flags && !(a->flags & (LF_VECTOR | LF_UNROLL | LF_PARALLEL));
}

// The first sum in loop l's body, or -1.
static int first_sum(const LStmt *l) {
  for (int i = 0; i < l->nbody; i++)
    if (l->body[i]->kind == LS_LOOP && l->body[i]->flags & LF_REDUCE)
      return i;
  return -1;
}

// Do all stores to (st) or loads of (!st) buffer w in s index dimension d
// with exactly v, through w itself (not an alias)? A store or load of w's
// memory through another buffer fails.
static bool at_var_expr(const LExpr *e, const LBuf *w, int d, int v) {
  if (!e)
    return true;
  if (e->kind == LX_LOAD) {
    if (lbuf_root(e->buf) == lbuf_root(w) && (e->buf != w || !lx_is_var(e->idx[d], v)))
      return false;
    for (int i = 0; i < e->buf->rank; i++)
      if (!at_var_expr(e->idx[i], w, d, v))
        return false;
  }
  return at_var_expr(e->a, w, d, v) && at_var_expr(e->b, w, d, v) && at_var_expr(e->c, w, d, v);
}

static bool at_var(const LStmt *s, const LBuf *w, int d, int v, bool st) {
  if (!st && !at_var_expr(s->cond, w, d, v))
    return false;
  if (s->kind == LS_STORE) {
    if (st && lbuf_root(s->buf) == lbuf_root(w) && (s->buf != w || !lx_is_var(s->idx[d], v)))
      return false;
    if (!st && !at_var_expr(s->value, w, d, v))
      return false;
  }
  for (int i = 0; i < s->nbody; i++)
    if (!at_var(s->body[i], w, d, v, st))
      return false;
  return true;
}

// Does loop b read what loop a writes to w iteration by iteration: one
// dimension indexed by the loop's own variable at every store in a and
// every load in b? (w is a root; accesses through an alias of it fail.)
static bool per_iteration(const LStmt *a, const LStmt *b, const LBuf *w) {
  for (int d = 0; d < w->rank; d++)
    if (at_var(a, w, d, a->var, true) && at_var(b, w, d, b->var, false))
      return true;
  return false;
}

// Do loops a and b store into w (a root) only at one dimension indexed by
// their own variables, and a read it only there (b not at all)? Then
// iteration c of each touches only its c's part, and b's part after a's is
// the order of before.
static bool per_iteration_writes(const LStmt *a, const LStmt *b, const LBuf *w) {
  for (int d = 0; d < w->rank; d++)
    if (at_var(a, w, d, a->var, true) && at_var(a, w, d, a->var, false) &&
        at_var(b, w, d, b->var, true))
      return true;
  return false;
}

// How kernels a and b may run as one: 0 not at all, 1 b's body after a's
// in each iteration, 2 independent with their sums jammed.
static int fusable(const LKernel *a, const LKernel *b) {
  if (a->deferred || b->deferred || a->flops || b->flops || a->nbody != 1 || b->nbody != 1 ||
      !same_loop(a->body[0], b->body[0]))
    return 0;
  const LStmt *la = a->body[0], *lb = b->body[0];
  BufSet ra = {0}, wa = {0}, rb = {0}, wb = {0};
  stmt_uses(la, &ra, &wa);
  stmt_uses(lb, &rb, &wb);
  bool ok = true, flows = false, shared = false, both_write = false;
  for (int i = 0; i < wb.n && ok; i++) { // b writes nothing a touches...
    const LBuf *w = wb.b[i];
    if (set_has(&wa, w)) { // ...but its own iteration's part of what a writes
      ok = w->storage != LB_LOCAL && !set_has(&rb, w) && per_iteration_writes(la, lb, w);
      both_write = true;
    } else {
      ok = !set_has(&ra, w);
    }
  }
  for (int i = 0; i < wa.n && ok; i++)
    if (set_has(&rb, wa.b[i])) {
      flows = true;
      ok = wa.b[i]->storage != LB_LOCAL && per_iteration(la, lb, wa.b[i]);
    }
  for (int i = 0; i < rb.n && ok && !shared; i++)
    shared = rb.b[i]->storage != LB_LOCAL && set_has(&ra, rb.b[i]);
  free(ra.b), free(wa.b), free(rb.b), free(wb.b);
  if (!ok)
    return 0;
  if (flows || both_write)
    return 1;
  int sa = first_sum(la), sb = first_sum(lb);
  return shared && sa >= 0 && sb >= 0 && same_loop(la->body[sa], lb->body[sb]) ? 2 : 0;
}

static bool has_local(const BufSet *s, const char *name) {
  for (int i = 0; i < s->n; i++)
    if (s->b[i]->storage == LB_LOCAL && strcmp(s->b[i]->name, name) == 0)
      return true;
  return false;
}

// b's local arrays named as one of a's get a number after the name (%sum2,
// else %sum3...), so the dump tells the two kernels' accumulators apart.
static void rename_locals(const LStmt *a, const LStmt *b) {
  BufSet ra = {0}, rb = {0};
  stmt_uses(a, &ra, &ra);
  stmt_uses(b, &rb, &rb);
  for (int i = 0; i < rb.n; i++) {
    LBuf *l = (LBuf *)rb.b[i];
    if (l->storage != LB_LOCAL || !has_local(&ra, l->name))
      continue;
    char *name = NULL;
    for (int k = 2; !name || has_local(&ra, name) || has_local(&rb, name); k++)
      name = xformat("%s%d", l->name, k);
    l->name = name;
  }
  free(ra.b), free(rb.b);
}

static void push(LStmt ***list, int *n, LStmt *s) {
  *list = realloc(*list, sizeof **list * (*n + 1));
  if (!*list)
    fatal("out of memory");
  (*list)[(*n)++] = s;
}

// Loop b's iterations run inside loop a's: b's variable becomes a's. While
// both hold one loop of the same range, the jam goes down a level.
static void jam(LStmt *a, LStmt *b) {
  LExpr *v = lx_var(a->var);
  for (int i = 0; i < b->nbody; i++)
    ls_subst(b->body[i], b->var, v);
  if (a->nbody == 1 && b->nbody == 1 && same_loop(a->body[0], b->body[0])) {
    jam(a->body[0], b->body[0]);
    return;
  }
  for (int i = 0; i < b->nbody; i++)
    push(&a->body, &a->nbody, b->body[i]);
}

// Kernel b's loop into kernel a's: b's body after a's (how 1), or a's
// statements up to its first sum, b's up to its, the two sums jammed,
// then the rest of a's and of b's (how 2).
static void merge(LKernel *a, LKernel *b, int how) {
  rename_locals(a->body[0], b->body[0]);
  b->body[0] = ls_copy(b->body[0]); // a tree of its own: lowering may share index nodes
  ls_shift_vars(b->body[0], a->nvars); // b's loop variables move past a's
  a->nvars += b->nvars;
  LStmt *la = a->body[0], *lb = b->body[0];
  LExpr *v = lx_var(la->var);
  for (int i = 0; i < lb->nbody; i++)
    ls_subst(lb->body[i], lb->var, v);
  a->op = xformat("%s+%s", a->op, b->op);
  if (how == 1) {
    for (int i = 0; i < lb->nbody; i++)
      push(&la->body, &la->nbody, lb->body[i]);
    return;
  }
  int sa = first_sum(la), sb = first_sum(lb);
  LStmt **out = NULL;
  int n = 0;
  for (int i = 0; i < sa; i++)
    push(&out, &n, la->body[i]);
  for (int i = 0; i < sb; i++)
    push(&out, &n, lb->body[i]);
  jam(la->body[sa], lb->body[sb]);
  push(&out, &n, la->body[sa]);
  for (int i = sa + 1; i < la->nbody; i++)
    push(&out, &n, la->body[i]);
  for (int i = sb + 1; i < lb->nbody; i++)
    push(&out, &n, lb->body[i]);
  free(la->body);
  la->body = out;
  la->nbody = n;
}

void pass_fuse_loops(LProgram *p) {
  for (int f = 0; f < p->nfuncs; f++) {
    LFunc *fn = p->funcs[f];
    int n = 0;
    for (int i = 0; i < fn->nkernels; i++) {
      LKernel *k = fn->kernels[i];
      int how = n > 0 ? fusable(fn->kernels[n - 1], k) : 0;
      if (how) {
        merge(fn->kernels[n - 1], k, how);
        continue;
      }
      fn->kernels[n++] = k;
    }
    fn->nkernels = n;
  }
}

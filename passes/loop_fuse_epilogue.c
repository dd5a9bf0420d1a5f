// fuse-epilogue: computes an elementwise op in the kernel of the op whose
// output it reads, while the value is still in registers, when nothing else
// reads that output; the consumer's buffer becomes an alias of the
// producer's and the kernel is named "producer+consumer". Chains fuse one
// link at a time: conv2d, then eval-mode batch norm, then relu, is one kernel.
// A 16-bit result, which a contraction (or a gradient's) sums in an f32
// buffer and rounds in a kernel of its own, is rounded in the contraction's
// epilogue instead, into its own buffer; what follows composes with that.
//
// After a contraction (conv2d, linear) the consumer's nest moves into the
// producer's kernel as an epilogue nest working in place (a second consumer
// is composed into it), and tile applies it to the accumulators before
// their store. After any other op that writes each output element once
// (batch norm, a pool's gradient), the consumer's expression wraps the value
// of each of the producer's stores. A kernel between the two that computes
// one of the consumer's other operands from values ready before the
// producer (eval-mode batch norm's per-channel coefficients) moves ahead of
// the producer. The test entry (FN_SLOTS), which checks every node's own
// value, fuses nothing.
#include "loop.h"
#include "ops/ops.h"

#include <stdlib.h>
#include <string.h>

// Does e load b, or a buffer that is an alias of b?
static bool reads_expr(const LExpr *e, LBuf *b) {
  if (!e)
    return false;
  if (e->kind == LX_LOAD) {
    if (e->buf == b || lbuf_root(e->buf) == b)
      return true;
    for (int d = 0; d < e->buf->rank; d++)
      if (reads_expr(e->idx[d], b))
        return true;
  }
  return reads_expr(e->a, b) || reads_expr(e->b, b) || reads_expr(e->c, b);
}

static bool reads_stmt(const LStmt *s, LBuf *b) {
  if (reads_expr(s->cond, b) || reads_expr(s->value, b))
    return true;
  for (int i = 0; i < s->nbody; i++)
    if (reads_stmt(s->body[i], b))
      return true;
  return false;
}

static bool kernel_reads(const LKernel *k, LBuf *b) {
  for (int i = 0; i < k->nbody; i++)
    if (reads_stmt(k->body[i], b))
      return true;
  return false;
}

// --- Any producer whose stores are final -------------------------------------------------

// The innermost store of a plain nest over a whole buffer (an elementwise
// op's lowering), with the nest's variables outermost first.
static LStmt *map_store(const LKernel *k, int *vars, int *rank) {
  if (k->nbody != 1)
    return NULL;
  LStmt *s = k->body[0];
  *rank = 0;
  while (s->kind == LS_LOOP && !s->flags && s->nbody == 1 && *rank < LMAX_RANK) {
    vars[(*rank)++] = s->var;
    s = s->body[0];
  }
  if (s->kind != LS_STORE || s->buf->rank != *rank)
    return NULL;
  for (int d = 0; d < *rank; d++)
    if (s->idx[d]->kind != LX_VAR || s->idx[d]->var != vars[d])
      return NULL;
  return s;
}

// Every load of b in e is at indices exactly vars.
static bool reads_at(const LExpr *e, const LBuf *b, const int *vars) {
  if (!e)
    return true;
  if (e->kind == LX_LOAD && e->buf == b)
    for (int d = 0; d < b->rank; d++)
      if (e->idx[d]->kind != LX_VAR || e->idx[d]->var != vars[d])
        return false;
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      if (!reads_at(e->idx[d], b, vars))
        return false;
  return reads_at(e->a, b, vars) && reads_at(e->b, b, vars) && reads_at(e->c, b, vars);
}

typedef struct {
  LStmt **st;
  int n;
} Stores;

// The stores to y under s: false if one is under a reduce loop or reads y
// (an accumulation), which a consumer could not wrap. An epilogue nest
// (in_place) reads y at the element it stores, and is wrapped all the same.
static bool final_stores(LStmt *s, LBuf *y, bool in_reduce, bool in_place, Stores *out) {
  if (s->kind == LS_STORE) {
    if (s->buf != y)
      return !reads_expr(s->value, y);
    if (in_reduce || (!in_place && reads_expr(s->value, y)) || s->buf->rank != y->rank)
      return false;
    out->st = realloc(out->st, sizeof *out->st * (out->n + 1));
    if (!out->st)
      fatal("out of memory");
    out->st[out->n++] = s;
    return true;
  }
  if (s->kind == LS_IF && reads_expr(s->cond, y))
    return false;
  for (int i = 0; i < s->nbody; i++)
    if (!final_stores(s->body[i], y, in_reduce || (s->kind == LS_LOOP && s->flags & LF_REDUCE),
                      in_place, out))
      return false;
  return true;
}

// e with every load of b replaced by a copy of v (a fresh tree).
static LExpr *replace_loads(const LExpr *e, const LBuf *b, const LExpr *v) {
  if (!e)
    return NULL;
  if (e->kind == LX_LOAD && e->buf == b)
    return lx_copy(v);
  LExpr *c = lx_copy(e);
  if (e->kind == LX_LOAD) {
    for (int d = 0; d < e->buf->rank; d++)
      c->idx[d] = replace_loads(e->idx[d], b, v);
    return c;
  }
  c->a = replace_loads(e->a, b, v);
  c->b = replace_loads(e->b, b, v);
  c->c = replace_loads(e->c, b, v);
  return c;
}

// Does a kernel in [from, to) write buffer b (or its root)?
static bool written_between(const LFunc *f, int from, int to, const LBuf *b);

static bool writes_stmt(const LStmt *s, const LBuf *b) {
  if (s->kind == LS_STORE)
    return lbuf_root(s->buf) == b;
  for (int i = 0; i < s->nbody; i++)
    if (writes_stmt(s->body[i], b))
      return true;
  return false;
}

static bool written_between(const LFunc *f, int from, int to, const LBuf *b) {
  for (int i = from; i < to; i++)
    for (int j = 0; j < f->kernels[i]->nbody; j++)
      if (writes_stmt(f->kernels[i]->body[j], b))
        return true;
  return false;
}

// The buffers e loads, other than skip, all unwritten between kernels from and to.
static bool operands_ready(const LFunc *f, const LExpr *e, const LBuf *skip, int from, int to) {
  if (!e)
    return true;
  if (e->kind == LX_LOAD && e->buf != skip && written_between(f, from, to, lbuf_root(e->buf)))
    return false;
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      if (!operands_ready(f, e->idx[d], skip, from, to))
        return false;
  return operands_ready(f, e->a, skip, from, to) && operands_ready(f, e->b, skip, from, to) &&
         operands_ready(f, e->c, skip, from, to);
}

// The consumer's expression placed at a producer's store: its variables
// moved past the producer's, then replaced by the store's indices, and its
// loads of yin (the value it reads) replaced by the stored value, rounded
// as the store into a 16-bit yin rounds it.
static LExpr *wrap(const LExpr *value, const int *vars, int rank, int shift, const LStmt *store,
                   const LBuf *yin) {
  LExpr *e = lx_copy(value);
  lx_shift_vars(e, shift);
  for (int d = 0; d < rank; d++)
    e = lx_subst(e, vars[d] + shift, store->idx[d]);
  return replace_loads(e, yin, lx_round(yin->dtype, lx_copy(store->value)));
}

// Wraps the consumer cs (the store of an elementwise nest reading yin) into
// the stores of y (yin's root) under p's statements [from, p->nbody), p's
// epilogue nest when from is 1. True when every such store is final.
static bool wrap_final(LKernel *p, int from, LStmt *cs, const int *vars, int rank, LBuf *y,
                       LBuf *yin) {
  Stores st = {NULL, 0};
  bool ok = true;
  for (int i = from; i < p->nbody && ok; i++)
    ok = final_stores(p->body[i], y, false, from > 0, &st);
  if (!ok || st.n == 0) {
    free(st.st);
    return false;
  }
  for (int i = 0; i < st.n; i++)
    st.st[i]->value = wrap(cs->value, vars, rank, p->nvars, st.st[i], yin);
  free(st.st);
  return true;
}

// The distinct buffers e loads (up to max).
static void loaded_bufs(const LExpr *e, LBuf **out, int *n, int max) {
  if (!e)
    return;
  if (e->kind == LX_LOAD) {
    bool seen = false;
    for (int i = 0; i < *n && !seen; i++)
      seen = out[i] == e->buf;
    if (!seen && *n < max)
      out[(*n)++] = e->buf;
    for (int d = 0; d < e->buf->rank; d++)
      loaded_bufs(e->idx[d], out, n, max);
  }
  loaded_bufs(e->a, out, n, max);
  loaded_bufs(e->b, out, n, max);
  loaded_bufs(e->c, out, n, max);
}

static bool has_reduce(const LStmt *s) {
  if (s->kind == LS_LOOP && s->flags & LF_REDUCE)
    return true;
  for (int i = 0; i < s->nbody; i++)
    if (has_reduce(s->body[i]))
      return true;
  return false;
}

// The plain nest of a sum of products (a kernel rounding its result, of the
// same node, has no sum).
static bool sums(const LKernel *k, bool gradients) {
  if (!k->node || k->nbody < 1 || k->nbody > 2 || !has_reduce(k->body[0]))
    return false;
  switch (k->node->op) {
  case OP_conv2d:
  case OP_linear:
    return true;
  case OP_conv2d_grad_input:
  case OP_conv2d_grad_weight:
  case OP_linear_grad_input:
  case OP_linear_grad_weight:
    return gradients;
  default:
    return false;
  }
}

static bool is_contraction(const LKernel *k) { return sums(k, false); }

// Moves the kernels between pi and ci that write an operand of e (other
// than yin) ahead of pi, when they read nothing written from pi on and
// nothing from pi on touches what they write. True when e's operands are
// then all ready when the producer runs; *pi follows the producer.
static bool hoist_operands(LFunc *f, int *pi, int ci, const LExpr *e, const LBuf *yin);

static bool operand_writer(const LExpr *e, const LBuf *yin, const LKernel *k) {
  if (!e)
    return false;
  if (e->kind == LX_LOAD && e->buf != yin)
    for (int j = 0; j < k->nbody; j++)
      if (writes_stmt(k->body[j], lbuf_root(e->buf)))
        return true;
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      if (operand_writer(e->idx[d], yin, k))
        return true;
  return operand_writer(e->a, yin, k) || operand_writer(e->b, yin, k) ||
         operand_writer(e->c, yin, k);
}

// Does kernel k load a buffer written by a kernel in [from, to), or write
// one that such a kernel loads or writes?
static bool depends_on(const LFunc *f, const LKernel *k, int from, int to) {
  for (int b = 0; b < f->nbufs; b++) {
    LBuf *x = f->bufs[b];
    if (x->alias)
      continue;
    bool k_writes = false;
    for (int j = 0; j < k->nbody && !k_writes; j++)
      k_writes = writes_stmt(k->body[j], x);
    bool k_reads = kernel_reads(k, x);
    if (!k_writes && !k_reads)
      continue;
    if (written_between(f, from, to, x))
      return true;
    if (k_writes)
      for (int q = from; q < to; q++)
        if (kernel_reads(f->kernels[q], x))
          return true;
  }
  return false;
}

static bool hoist_operands(LFunc *f, int *pi, int ci, const LExpr *e, const LBuf *yin) {
  for (int q = *pi + 1; q < ci; q++) {
    LKernel *k = f->kernels[q];
    if (!operand_writer(e, yin, k))
      continue;
    if (k->deferred || depends_on(f, k, *pi, q))
      return false;
    for (int j = q; j > *pi; j--)
      f->kernels[j] = f->kernels[j - 1];
    f->kernels[*pi] = k;
    (*pi)++;
  }
  return operands_ready(f, e, yin, *pi, ci);
}

// Every load in e of y's memory is a load of yin (no other view of it).
static bool only_through(const LExpr *e, LBuf *y, const LBuf *yin) {
  if (!e)
    return true;
  if (e->kind == LX_LOAD && lbuf_root(e->buf) == y && e->buf != yin)
    return false;
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      if (!only_through(e->idx[d], y, yin))
        return false;
  return only_through(e->a, y, yin) && only_through(e->b, y, yin) && only_through(e->c, y, yin);
}

// Fuses consumer kernel ci (a plain elementwise nest) into the kernel that
// computes its operand yin. True when done.
static bool fuse_into_producer(LFunc *f, int ci, LBuf *yin) {
  LKernel *c = f->kernels[ci];
  int vars[LMAX_RANK], rank;
  LStmt *cs = map_store(c, vars, &rank);
  LBuf *y = lbuf_root(yin), *out = cs->buf;
  // The consumer's result takes the producer's place, unless it rounds the
  // producer's f32 sums to 16 bits (below).
  bool narrows = out->dtype != y->dtype;
  if (y == f->result || (f->logits && y == lbuf_root(f->logits)) || y->storage != LB_WORKSPACE ||
      !y->node || rank != y->rank || !reads_at(cs->value, yin, vars) ||
      !only_through(cs->value, y, yin))
    return false;
  for (int d = 0; d < rank; d++)
    if (out->dim[d] != y->dim[d])
      return false;
  // The one kernel before the consumer that writes y, and no reader but the two.
  int pi = -1;
  for (int q = 0; q < f->nkernels; q++) {
    LKernel *k = f->kernels[q];
    bool writes = false;
    for (int j = 0; j < k->nbody && !writes; j++)
      writes = writes_stmt(k->body[j], y);
    if (writes && (pi >= 0 || q > ci))
      return false;
    if (writes)
      pi = q;
    else if (q != ci && kernel_reads(k, y))
      return false;
  }
  if (pi < 0 || !hoist_operands(f, &pi, ci, cs->value, yin))
    return false;
  LKernel *p = f->kernels[pi];
  if (narrows) {
    // A sum of products (a gradient's too) with a 16-bit result: the sums
    // stay in y, f32, and the consumer becomes an epilogue nest storing
    // into its own buffer, which tile then stores each rounded result into
    // straight from the accumulators (y is never written).
    if (!sums(p, true) || p->nbody != 1)
      return false;
    LStmt *s = ls_copy(c->body[0]);
    ls_retarget(s, yin, y);
    ls_shift_vars(s, p->nvars);
    lk_add(p, s);
    p->nvars += c->nvars;
    p->op = xformat("%s+%s", p->op, c->op);
    return true;
  }
  if (!is_contraction(p)) {
    if (!wrap_final(p, 0, cs, vars, rank, y, yin))
      return false;
  } else if (p->nbody == 2) { // compose with the epilogue nest there
    if (!wrap_final(p, 1, cs, vars, rank, y, yin))
      return false;
  } else { // the first epilogue: the consumer's nest, in place
    LStmt *s = ls_copy(c->body[0]); // lowering shares index trees; renumber a private copy
    ls_retarget(s, yin, y);
    ls_retarget(s, out, y);
    ls_shift_vars(s, p->nvars);
    lk_add(p, s);
    p->nvars += c->nvars;
  }
  p->op = xformat("%s+%s", p->op, c->op);
  out->alias = y;
  return true;
}

static void fuse(LFunc *f) {
  for (int i = 0; i < f->nkernels; i++) {
    LKernel *r = f->kernels[i];
    int vars[LMAX_RANK], rank;
    LStmt *cs = map_store(r, vars, &rank);
    if (!r->node || r->deferred || !cs)
      continue;
    LBuf *out = cs->buf;
    if (out->storage != LB_WORKSPACE || out->alias || out->node == NULL)
      continue;
    // Each buffer it loads in turn; the first that fuses.
    LBuf *loads[16];
    int nloads = 0;
    loaded_bufs(cs->value, loads, &nloads, 16);
    for (int b = 0; b < nloads; b++) {
      LBuf *yin = loads[b];
      if (fuse_into_producer(f, i, yin)) {
        for (int q = i; q + 1 < f->nkernels; q++)
          f->kernels[q] = f->kernels[q + 1];
        f->nkernels--;
        i = -1; // kernels may have moved: start again
        break;
      }
    }
  }
}

void pass_fuse_epilogue(LProgram *p) {
  for (int i = 0; i < p->nfuncs; i++)
    if (p->funcs[i]->kind != FN_SLOTS)
      fuse(p->funcs[i]);
}

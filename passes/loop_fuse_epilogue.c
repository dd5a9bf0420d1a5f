// fuse-epilogue: computes an elementwise op in the kernel of the op whose
// output it reads, while the value is still in registers, when nothing else
// reads that output; the consumer's buffer becomes an alias of the
// producer's and the kernel is named "producer+consumer".
//
// After a contraction (conv2d, linear) it is the relu that follows a layer
// (relu_grad reads the relu's output, not the pre-activation): its nest
// moves into the producer's kernel, working in place, and tile applies it
// to the accumulators before their store. After any other op that writes
// each output element once (batch norm, a pool's gradient), the consumer's
// expression wraps the value of each of the producer's stores: batch norm
// then relu is one pass, a pool's gradient then relu_grad another. The test
// entry (FN_SLOTS), which checks every node's own value, fuses nothing.
#include "loop.h"
#include "ops/ops.h"

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
// (an accumulation), which a consumer could not wrap.
static bool final_stores(LStmt *s, LBuf *y, bool in_reduce, Stores *out) {
  if (s->kind == LS_STORE) {
    if (s->buf != y)
      return !reads_expr(s->value, y);
    if (in_reduce || reads_expr(s->value, y) || s->buf->rank != y->rank)
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
                      out))
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
    return root(s->buf) == b;
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
  if (e->kind == LX_LOAD && e->buf != skip && written_between(f, from, to, root(e->buf)))
    return false;
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      if (!operands_ready(f, e->idx[d], skip, from, to))
        return false;
  return operands_ready(f, e->a, skip, from, to) && operands_ready(f, e->b, skip, from, to) &&
         operands_ready(f, e->c, skip, from, to);
}

// Wraps consumer kernel ci (an elementwise op reading y) into the final
// stores of y's producer pi. True when done.
static bool fuse_final(LFunc *f, int pi, int ci, LBuf *y) {
  LKernel *p = f->kernels[pi], *c = f->kernels[ci];
  int vars[LMAX_RANK], rank;
  LStmt *cs = map_store(c, vars, &rank);
  LBuf *out = cs ? cs->buf : NULL;
  if (!cs || rank != y->rank || !reads_at(cs->value, y, vars) || out->storage != LB_WORKSPACE ||
      out->alias || out == f->result || out->node == NULL)
    return false;
  for (int d = 0; d < rank; d++)
    if (out->dim[d] != y->dim[d])
      return false;
  // The consumer's other operands must be ready when the producer runs.
  if (!operands_ready(f, cs->value, y, pi, ci))
    return false;
  Stores st = {NULL, 0};
  bool ok = true;
  for (int i = 0; i < p->nbody && ok; i++)
    ok = final_stores(p->body[i], y, false, &st);
  if (!ok || st.n == 0) {
    free(st.st);
    return false;
  }
  for (int i = 0; i < st.n; i++) {
    // The consumer's expression at the store's indices: its variables moved
    // past the producer's, then replaced by the store's index expressions.
    LExpr *e = lx_copy(cs->value);
    shift_vars_expr(e, p->nvars);
    for (int d = 0; d < rank; d++) {
      LExpr *next = lx_subst(e, vars[d] + p->nvars, st.st[i]->idx[d]);
      e = next;
    }
    st.st[i]->value = replace_loads(e, y, st.st[i]->value);
  }
  free(st.st);
  p->op = xformat("%s+%s", p->op, c->op);
  out->alias = y;
  return true;
}

static void fuse(LFunc *f) {
  for (int i = 0; i < f->nkernels; i++) {
    LKernel *r = f->kernels[i];
    Node *n = r->node;
    if (!n || !op_rules(n->op)->elem)
      continue;
    if (n->op != OP_relu || (n->in[0]->op != OP_conv2d && n->in[0]->op != OP_linear)) {
      // Any other producer: the one operand it is fused with is its only reader.
      for (int j = 0; j < n->nin; j++) {
        LBuf *y = f->buf_of[n->in[j]->id];
        if (!y || y->alias || y == f->result || y->storage != LB_WORKSPACE || !y->node)
          continue;
        int pi = -1;
        bool other = false;
        for (int q = 0; q < f->nkernels; q++) {
          LKernel *k = f->kernels[q];
          if (k->node == n->in[j] && !strchr(k->op, '+'))
            pi = q;
          else if (k != r && kernel_reads(k, y))
            other = true;
        }
        if (pi < 0 || pi > i || other || !fuse_final(f, pi, i, y))
          continue;
        for (int q = i; q + 1 < f->nkernels; q++)
          f->kernels[q] = f->kernels[q + 1];
        f->nkernels--;
        i--;
        break;
      }
      continue;
    }
    Node *pn = n->in[0];
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

// Lowering rules: what an op's plain loop nest is built from. An op's
// `lower` rule (in its family's file) appends its kernel to the function
// being lowered -- the textbook loops over the output with the sum inside,
// in PyTorch's layouts, guarded where a window reaches into padding. An
// elementwise op gives only `elem`, the value of one output element at the
// output's indices, and the driver (passes/lower.c) builds the nest.
#ifndef XENTCC_OPS_LOWER_H
#define XENTCC_OPS_LOWER_H

#include "loop.h"
#include "ops.h"

#include <stdarg.h>

// The function being lowered: every node's buffer is in f->buf_of.
struct Lowering {
  LFunc *f;
  Graph *g;
  const LBlocks *blocks;
};

// --- Buffers and expressions ----------------------------------------------------------------

static inline LBuf *B(Lowering *L, const Node *n) {
  LBuf *b = L->f->buf_of[n->id];
  ir_assert(b);
  return b;
}

// i64 index helpers: v[d] is a loop variable, K(x) a constant.
static inline LExpr *K(int64_t x) { return lx_i64(x); }
static inline LExpr *ADD(LExpr *a, LExpr *b) { return lx_iadd(a, b); }
static inline LExpr *MULK(LExpr *a, int64_t k) { return lx_imul(a, k); }
static inline LExpr *ADDK(LExpr *a, int64_t k) { return lx_iaddc(a, k); }

static inline LExpr *LD(LBuf *b, ...) {
  va_list ap;
  va_start(ap, b);
  LExpr *idx[LMAX_RANK];
  for (int d = 0; d < b->rank; d++)
    idx[d] = va_arg(ap, LExpr *);
  va_end(ap);
  return lx_load(b, idx);
}

// A load of a whole-tensor-shaped operand at the output's indices v.
static inline LExpr *LDV(LBuf *b, LExpr **v) { return lx_load(b, v); }

static inline LStmt *ST(LBuf *b, LExpr *value, ...) {
  va_list ap;
  va_start(ap, value);
  LExpr *idx[LMAX_RANK];
  for (int d = 0; d < b->rank; d++)
    idx[d] = va_arg(ap, LExpr *);
  va_end(ap);
  return ls_store(b, idx, value);
}

static inline LExpr *F(double x) { return lx_f32(x); }
static inline LExpr *BIN(LExprKind k, LExpr *a, LExpr *b) { return lx_bin(k, a, b); }
static inline LExpr *FADD(LExpr *a, LExpr *b) { return lx_bin(LX_ADD, a, b); }
static inline LExpr *FSUB(LExpr *a, LExpr *b) { return lx_bin(LX_SUB, a, b); }
static inline LExpr *FMUL(LExpr *a, LExpr *b) { return lx_bin(LX_MUL, a, b); }
static inline LExpr *FDIV(LExpr *a, LExpr *b) { return lx_bin(LX_DIV, a, b); }
static inline LExpr *SEL(LExpr *c, LExpr *a, LExpr *b) { return lx_select(c, a, b); }
static inline LExpr *AND(LExpr *a, LExpr *b) { return a ? lx_bin(LX_AND, a, b) : b; }

// 0 <= e < n, or NULL when the loops bound e inside already (no padding).
static inline LExpr *inside(LExpr *e, int64_t n) {
  Affine a;
  if (lx_affine(e, &a) && a.n == 0 && a.c >= 0 && a.c < n)
    return NULL;
  return AND(BIN(LX_GE, e, K(0)), BIN(LX_LT, e, K(n)));
}

// Operand i at the output's indices v (or its only element when it is a scalar).
static inline LExpr *operand(Lowering *L, const Node *n, int i, LExpr **v) {
  LBuf *b = B(L, n->in[i]);
  if (b->rank == 0)
    return lx_load(b, NULL);
  return LDV(b, v);
}

// --- Kernels and loops ----------------------------------------------------------------------

static inline LKernel *kernel(Lowering *L, Node *n, const char *op) {
  return lfunc_kernel(L->f, op_info(n->op)->name, op ? op : op_info(n->op)->name, n);
}

// A local scalar of the kernel (registers): index with no arguments.
static inline LBuf *local(Lowering *L, const char *name, DType dt) {
  return lfunc_buf(L->f, name, dt, 0, NULL, LB_LOCAL);
}

// The nest over every element of b: the innermost loop, v[] the variables.
static inline LStmt *each(LKernel *k, LStmt *parent, LBuf *b, LExpr **v, const char *const *roles) {
  return lk_nest(k, parent, b->rank, b->dim, roles, v);
}

static inline void put(LKernel *k, LStmt *parent, LStmt *s) {
  if (parent)
    ls_add(parent, s);
  else
    lk_add(k, s);
}

// A loop of n iterations inside parent (the kernel's top level when NULL).
static inline LStmt *loop(LKernel *k, LStmt *parent, int64_t n, const char *role, LExpr **v) {
  int var = lk_var(k);
  LStmt *l = ls_loop(var, 0, n, role);
  put(k, parent, l);
  *v = lx_var(var);
  return l;
}

// The same, summing: its iterations may not run apart or out of order
// unless a pass splits the sum on purpose.
static inline LStmt *reduce_loop(LKernel *k, LStmt *parent, int64_t n, const char *role,
                                 LExpr **v) {
  LStmt *l = loop(k, parent, n, role, v);
  l->flags |= LF_REDUCE;
  return l;
}

// The nest over every element of b, summing (every loop reduce): a total
// over a whole tensor into one place.
static inline LStmt *each_sum(LKernel *k, LStmt *parent, LBuf *b, LExpr **v) {
  LStmt *l = parent;
  for (int d = 0; d < b->rank; d++)
    l = reduce_loop(k, l, b->dim[d], NULL, &v[d]);
  return l;
}

#endif

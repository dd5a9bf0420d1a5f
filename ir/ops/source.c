// Sources and moves: the values that come from outside the graph (input,
// param, state), constants, dropout's mask, and the ops that only move values
// around (reshape, assign). Only reshape carries a gradient.
#include "dropout_hash.h"
#include "lower.h"
#include "ops.h"

#include <string.h>

// --- input, param, state: fed by the caller ----------------------------------------
//
// Their type is declared by the builder; eval_graph's caller gives the value.

static const char *shape_declared(const Node *n, Type *out) {
  *out = n->type;
  return NULL;
}

static void eval_fed(const Node *n, Tensor *out, Tensor **in) {
  const Tensor *src = in[0];
  const char *name = n->name ? n->name : "(unnamed)";
  if (!type_eq(&src->type, &n->type))
    fatal("eval_graph: source %%%s is %s but the tensor given is %s", name, type_str(&n->type),
          type_str(&src->type));
  if (dtype_is_float(n->type.dtype) ? !src->f : !src->i)
    fatal("eval_graph: no data given for source %%%s", name);
  if (dtype_is_float(n->type.dtype))
    memcpy(out->f, src->f, type_numel(&n->type) * sizeof(float));
  else
    memcpy(out->i, src->i, type_numel(&n->type) * sizeof(int32_t));
}

const OpRules rules_input = {.shape = shape_declared, .eval = eval_fed};
const OpRules rules_param = {.shape = shape_declared, .eval = eval_fed};
const OpRules rules_state = {.shape = shape_declared, .eval = eval_fed};

// --- const: one value fills the tensor, else one value per element --------------------

static const char *shape_const(const Node *n, Type *out) {
  const Type *declared = &n->type;
  const Attr *v = node_attr(n, "value");
  if (declared->dtype != DT_F32)
    FAIL("constants must be f32");
  if (v->n != 1 && v->n != type_numel(declared))
    FAIL("constant of type %s needs 1 or %lld values, got %d", type_str(declared),
         (long long)type_numel(declared), v->n);
  *out = *declared;
  return NULL;
}

static void eval_const(const Node *n, Tensor *out, Tensor **in) {
  const Attr *v = node_attr(n, "value");
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)v->floats[v->n == 1 ? 0 : i];
}

const OpRules rules_const = {.shape = shape_const, .eval = eval_const};

// --- The moves: reshape and assign copy their (last) operand ---------------------------

static void eval_copy(const Node *n, Tensor *out, Tensor **in) {
  if (dtype_is_float(out->type.dtype))
    memcpy(out->f, in[n->nin - 1]->f, numel(out) * sizeof(float));
  else
    memcpy(out->i, in[n->nin - 1]->i, numel(out) * sizeof(int32_t));
}

// reshape: to the node's declared type, with the same element count.
static const char *shape_reshape(const Node *n, Type *out) {
  const Type *declared = &n->type;
  if (type_numel(declared) != type_numel(T(n, 0)) || declared->dtype != T(n, 0)->dtype)
    FAIL("cannot reshape %s to %s: element counts differ", type_str(T(n, 0)),
         type_str(declared));
  *out = *declared;
  return NULL;
}

// dx = dy reshaped back to x's type.
static void grad_reshape(AD *ad, Node *n, Node *dy) {
  Node *x = n->in[0];
  Node *r = grad_op(ad, OP_reshape, n, 1, (Node *[]){dy});
  r->type = x->type;
  accumulate(ad, x, done(r));
}

// A reshape aliases its operand's buffer; only in the test entry, where
// every node has its own slot, is it a copy, element by element in flat
// order: both seen as one-dimensional.
static void lower_reshape(Lowering *L, Node *n) {
  LBuf *y = B(L, n), *x = B(L, n->in[0]);
  int64_t count = lbuf_numel(y);
  LBuf *fy = lfunc_buf(L->f, y->name, y->dtype, 1, &count, y->storage);
  LBuf *fx = lfunc_buf(L->f, x->name, x->dtype, 1, &count, x->storage);
  fy->slot = y->slot, fx->slot = x->slot;
  LKernel *k = kernel(L, n, NULL);
  LExpr *i;
  LStmt *l = loop(k, NULL, count, "i", &i);
  ls_add(l, ST(fy, LD(fx, i), lx_copy(i)));
}

const OpRules rules_reshape = {
    .shape = shape_reshape, .eval = eval_copy, .grad = grad_reshape, .lower = lower_reshape};

// assign (target, value): the target, a param or state, holds value after the step.
// Optimizer updates: no gradient flows through them.
static const char *shape_assign(const Node *n, Type *out) {
  if (n->in[0]->op != OP_param && n->in[0]->op != OP_state)
    FAIL("assign target must be a param or state, got %s", op_info(n->in[0]->op)->name);
  CHECK(want_same(n, 0, 1));
  *out = *T(n, 0);
  return NULL;
}

static LExpr *elem_assign(Lowering *L, Node *n, LExpr **v) { return operand(L, n, 1, v); }

const OpRules rules_assign = {
    .shape = shape_assign, .eval = eval_copy, .no_grad = true, .elem = elem_assign};

// --- dropout_mask (step, seed[, row0]): 0 or 1/(1-p) per element; dropout2d_mask per channel ---
//
// A hash of (seed, salt, step, index) from dropout_hash.h, the same in the
// generated code. The index counts the batch's rows from row0 (absent: 0):
// the first row of the batch in the global batch that data-parallel ranks
// share, so that each rank draws its rows' masks as one process would. The
// mask is a constant of the step: no gradient flows into it.

static const char *shape_dropout_mask(const Node *n, Type *out) {
  CHECK(want_scalar(n, 0, DT_I32, "step"));
  CHECK(want_scalar(n, 1, DT_I32, "seed"));
  if (n->nin == 3)
    CHECK(want_scalar(n, 2, DT_I32, "row0"));
  double p = node_float(n, "p");
  if (!(p >= 0.0 && p < 1.0))
    FAIL("dropout probability must be in [0, 1), got %g", p);
  if (n->type.dtype != DT_F32)
    FAIL("dropout mask must be f32");
  if (n->op == OP_dropout2d_mask && n->type.rank < 2)
    FAIL("a channel dropout mask must be [N,C,...], got %s", type_str(&n->type));
  *out = n->type;
  return NULL;
}

// Elements per draw: 1, or dropout2d_mask's H*W (every dimension past C).
static int64_t mask_plane(const Node *n) {
  int64_t plane = 1;
  for (int d = 2; n->op == OP_dropout2d_mask && d < n->type.rank; d++)
    plane *= n->type.dim[d];
  return plane;
}

static void eval_dropout_mask(const Node *n, Tensor *out, Tensor **in) {
  double p = node_float(n, "p");
  uint32_t threshold = dropout_threshold(p);
  uint32_t key =
      dropout_key((uint32_t)in[1]->i[0], (uint32_t)node_int(n, "salt"), (uint32_t)in[0]->i[0]);
  float scale = (float)(1.0 / (1.0 - p));
  int64_t plane = mask_plane(n), row = numel(out) / (n->type.dim[0] ? n->type.dim[0] : 1);
  int64_t first = n->nin == 3 ? (int64_t)in[2]->i[0] * row : 0; // row0's first element
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = dropout_bits(key, (uint32_t)((first + i) / plane)) >= threshold ? scale : 0.0f;
}

static LExpr *U32(int64_t x) { return lx_int(LT_I32, (int32_t)(uint32_t)x); }

// dropout_fmix32 of dropout_hash.h on an i32 expression.
static LExpr *fmix32(LExpr *h) {
  h = BIN(LX_XOR, h, BIN(LX_SHR, lx_copy(h), U32(16)));
  h = BIN(LX_MUL, h, U32(0x85ebca6bu));
  h = BIN(LX_XOR, h, BIN(LX_SHR, lx_copy(h), U32(13)));
  h = BIN(LX_MUL, h, U32(0xc2b2ae35u));
  return BIN(LX_XOR, h, BIN(LX_SHR, lx_copy(h), U32(16)));
}

// Keep iff fmix32(key + i * golden) >> 8 >= threshold, i the flat index
// with the rows counted from row0 (dropout2d_mask: the flat index of (n, c)).
static LExpr *elem_dropout_mask(Lowering *L, Node *n, LExpr **v) {
  double p = node_float(n, "p");
  LExpr *step = operand(L, n, 0, v), *seed = operand(L, n, 1, v);
  LExpr *key = fmix32(BIN(LX_XOR, U32((uint32_t)node_int(n, "salt") * 0x9e3779b1u),
                          fmix32(BIN(LX_XOR, step, fmix32(seed)))));
  const LBuf *y = B(L, n);
  LExpr *flat = K(0);
  for (int d = 0; d < (n->op == OP_dropout2d_mask ? 2 : y->rank); d++)
    flat = ADD(MULK(flat, y->dim[d]),
               d == 0 && n->nin == 3 ? ADD(v[0], lx_cast(LT_I64, operand(L, n, 2, v))) : v[d]);
  LExpr *h = fmix32(BIN(LX_ADD, key, BIN(LX_MUL, lx_cast(LT_I32, flat), U32(0x9e3779b1u))));
  h = BIN(LX_SHR, h, U32(8));
  LExpr *dropped = BIN(LX_ULT, h, U32(dropout_threshold(p)));
  return SEL(dropped, F(0), F((float)(1.0 / (1.0 - p))));
}

const OpRules rules_dropout_mask = {.shape = shape_dropout_mask,
                                    .eval = eval_dropout_mask,
                                    .no_grad = true,
                                    .elem = elem_dropout_mask};
const OpRules rules_dropout2d_mask = {.shape = shape_dropout_mask,
                                      .eval = eval_dropout_mask,
                                      .no_grad = true,
                                      .elem = elem_dropout_mask};

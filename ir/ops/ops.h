// The rules of every op, kept per op: one file per family of ops in ir/ops/
// holds, side by side for each op, its shape rule, its reference evaluation
// and its gradient. This internal header is what those files share: the rule
// table, and the small helpers of each stage that more than one family uses.
#ifndef XENTCC_OPS_H
#define XENTCC_OPS_H

#include "ir.h"

#include <math.h>

//
// The rule table: one OpRules per op of ops.def, named rules_ID and defined
// in the op's family file; ops/rules.c gathers them for op_rules().
//

typedef struct AD AD;             // autodiff's state (below)
typedef struct Lowering Lowering; // the function being lowered (lower.h)
typedef struct LExpr LExpr;       // the loop IR's expressions (loop.h)

// infer_type, after the operand count and attribute kinds are checked:
// n's result type into *out, or a message saying what does not fit.
typedef const char *ShapeRule(const Node *n, Type *out);
// eval_graph: out (of n's type, zero-filled) from the operands' values
// in[0..nin-1]. A source's in[0] is the tensor the caller gave for it.
typedef void EvalRule(const Node *n, Tensor *out, Tensor **in);
// pass_autodiff: given dy = dL/dn, adds dL/d(operand) to each operand that
// needs one (accumulate below).
typedef void GradRule(AD *ad, Node *n, Node *dy);
// lower: n's plain loop nest, a kernel appended to the function (lower.h).
typedef void LowerRule(Lowering *L, Node *n);
// lower, for an elementwise op: the value of n at the output's indices v;
// the driver loops over every element and stores it.
typedef LExpr *ElemRule(Lowering *L, Node *n, LExpr **v);

typedef struct {
  ShapeRule *shape; // every op
  EvalRule *eval;   // every op
  GradRule *grad;   // differentiable forward ops; NULL elsewhere
  bool no_grad;     // no gradient flows through it, as under PyTorch's no_grad:
                    // autodiff neither needs nor wants a rule for it
  LowerRule *lower; // every op but the sources (input, param, state, const)
  ElemRule *elem;   // ... or this, for elementwise ops
} OpRules;

#define OP(id, min, max, flags, schema) extern const OpRules rules_##id;
#include "ops.def"
#undef OP

const OpRules *op_rules(OpKind op); // rules.c

//
// Shape rules: the checks they share. A check returns NULL or the message;
// CHECK returns the message from the rule, FAIL makes one.
//

#define FAIL(...) return xformat(__VA_ARGS__)

#define CHECK(e)                                                                                   \
  do {                                                                                             \
    const char *err_ = (e);                                                                        \
    if (err_)                                                                                      \
      return err_;                                                                                 \
  } while (0)

static inline const Type *T(const Node *n, int i) { return &n->in[i]->type; }

static inline Type scalar(DType dt) { return (Type){dt, 0, {0}}; }

static inline const char *want_f32(const Node *n, int i, const char *what) {
  if (T(n, i)->dtype != DT_F32)
    return xformat("%s must be f32, got %s", what, type_str(T(n, i)));
  return NULL;
}

static inline const char *want_rank(const Node *n, int i, int rank, const char *what) {
  if (T(n, i)->rank != rank || T(n, i)->dtype != DT_F32)
    return xformat("%s must be a rank-%d f32 tensor, got %s", what, rank, type_str(T(n, i)));
  return NULL;
}

// A float tensor of any precision (f32, or mixed precision's bf16 and f16).
static inline const char *want_float(const Node *n, int i, const char *what) {
  if (!dtype_is_float(T(n, i)->dtype))
    return xformat("%s must be a float tensor, got %s", what, type_str(T(n, i)));
  return NULL;
}

static inline const char *want_float_rank(const Node *n, int i, int rank, const char *what) {
  if (T(n, i)->rank != rank || !dtype_is_float(T(n, i)->dtype))
    return xformat("%s must be a rank-%d float tensor, got %s", what, rank, type_str(T(n, i)));
  return NULL;
}

static inline const char *want_scalar(const Node *n, int i, DType dt, const char *what) {
  Type s = scalar(dt);
  if (!type_eq(T(n, i), &s))
    return xformat("%s must be a scalar %s, got %s", what, dt == DT_F32 ? "f32[]" : "i32[]",
                   type_str(T(n, i)));
  return NULL;
}

static inline const char *want_same(const Node *n, int i, int j) {
  if (!type_eq(T(n, i), T(n, j)))
    return xformat("operands %d and %d must have the same type, got %s and %s", i, j,
                   type_str(T(n, i)), type_str(T(n, j)));
  return NULL;
}

static inline const char *want_pair(const Node *n, const char *attr, int64_t min) {
  const Attr *a = node_attr(n, attr);
  if (a->kind != 'I' || a->n != 2)
    return xformat("attribute '%s' must be a list of two integers", attr);
  if (a->ints[0] < min || a->ints[1] < min)
    return xformat("attribute '%s' must be at least %lld, got [%lld, %lld]", attr, (long long)min,
                   (long long)a->ints[0], (long long)a->ints[1]);
  return NULL;
}

// out = floor((in + 2*pad - k) / stride) + 1, as in nn.Conv2d and nn.MaxPool2d.
static inline const char *window_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t *out,
                                     const char *axis) {
  if (in + 2 * p < k)
    FAIL("kernel %lld is larger than the padded input %s %lld (input %lld + 2 x padding %lld)",
         (long long)k, axis, (long long)(in + 2 * p), (long long)in, (long long)p);
  *out = (in + 2 * p - k) / s + 1;
  return NULL;
}

// The rule of unary ops that keep their input's type (relu, sigmoid, scale).
static inline const char *shape_unary(const Node *n, Type *out) {
  CHECK(want_float(n, 0, "input"));
  *out = *T(n, 0);
  return NULL;
}

// The rule of binary ops on two tensors of one type (add, mul, ema, and the
// (dy, y) gradients of the activations).
static inline const char *shape_binary(const Node *n, Type *out) {
  CHECK(want_float(n, 0, "operand 0"));
  CHECK(want_same(n, 0, 1));
  *out = *T(n, 0);
  return NULL;
}

//
// Reference evaluation: naive loops accumulating in double, then rounded
// once to float (see eval.c).
//

static inline int64_t numel(const Tensor *t) { return type_numel(&t->type); }

static inline const int64_t *ints(const Node *n, const char *attr) {
  return node_attr(n, attr)->ints;
}

// Stores a double accumulator array into a fresh-rounded float tensor (and
// eval_graph rounds a 16-bit result once more, to its type).
static inline void store(Tensor *out, const double *acc) {
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)acc[i];
}

// An [N, C, rest...] tensor seen as outer x C x inner, for per-channel ops.
typedef struct {
  int64_t outer, c, inner;
} ChannelView;

static inline ChannelView channels(const Type *t) {
  ChannelView v = {t->dim[0], t->dim[1], 1};
  for (int i = 2; i < t->rank; i++)
    v.inner *= t->dim[i];
  return v;
}

static inline double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

// log(sum_c exp(x[c])) computed as max + log(sum exp(x - max)), so that large
// logits do not overflow.
static inline double logsumexp(const float *x, int64_t C) {
  double max = -INFINITY;
  for (int64_t c = 0; c < C; c++)
    max = x[c] > max ? x[c] : max;
  if (isinf(max))
    return max;
  double s = 0;
  for (int64_t c = 0; c < C; c++)
    s += exp(x[c] - max);
  return max + log(s);
}

//
// Gradient rules: autodiff's state and the builders they share.
//

struct AD {
  Graph *g;
  Node **grad;      // by forward node id: the accumulated gradient, or NULL
  bool *needs;      // by forward node id: does a param's gradient flow through it?
};

static inline bool needs_grad(const AD *ad, const Node *x) { return ad->needs[x->id]; }

// Adds one more contribution to x's gradient. A gradient has its value's
// precision: one computed in another (bias_grad's f32 sum for a bf16 bias)
// is cast to it, as PyTorch's autograd casts each gradient to its input's
// dtype.
static inline void accumulate(AD *ad, Node *x, Node *contribution) {
  if (!ad->needs[x->id])
    return;
  if (contribution->type.dtype != x->type.dtype) {
    Node *c = node_build(ad->g, OP_cast, x->loc, 1, contribution);
    c->type = contribution->type;
    c->type.dtype = x->type.dtype;
    node_infer(c);
    contribution = c;
  }
  Node *old = ad->grad[x->id];
  if (!old) {
    ad->grad[x->id] = contribution;
    return;
  }
  Node *sum = node_build(ad->g, OP_add, x->loc, 2, old, contribution);
  node_infer(sum);
  ad->grad[x->id] = sum;
}

// A gradient op of the forward node fwd, with fwd's same-named attributes.
static inline Node *grad_op(AD *ad, OpKind op, const Node *fwd, int nin, Node **in) {
  Node *n = node_new(ad->g, op, in, nin, fwd->loc);
  copy_attrs(n, fwd);
  node_fill_default_attrs(n);
  return n;
}

static inline Node *done(Node *n) {
  node_infer(n);
  return n;
}

#endif

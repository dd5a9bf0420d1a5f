// Mixed precision's op: cast, the rounding points of mixed precision. A
// value of type bf16 or f16 is a float rounded to nearest even to that
// precision; ops compute in f32 or wider and round once when they store
// (eval_graph and the loop IR's 16-bit buffers).
#include "lower.h"
#include "ops.h"

// --- cast (x) -> x as the node's declared float type ---------------------------------
//
// Going to bf16 or f16 rounds to nearest even (a NaN stays a NaN, a float
// beyond f16's range becomes an infinity); going back to f32 is exact. The
// gradient goes back the other way: dx = cast(dy) to x's type, as autograd's
// backward of Tensor.to(dtype).

static const char *shape_cast(const Node *n, Type *out) {
  const Type *x = T(n, 0), *declared = &n->type;
  CHECK(want_float(n, 0, "input"));
  if (!dtype_is_float(declared->dtype) || declared->dtype == DT_F64)
    FAIL("a cast goes to f32, bf16 or f16, not %s", dtype_name(declared->dtype));
  Type same = *x;
  same.dtype = declared->dtype;
  if (!type_eq(&same, declared))
    FAIL("a cast keeps the shape: %s cannot become %s", type_str(x), type_str(declared));
  *out = *declared;
  return NULL;
}

// eval_graph rounds the copy to the declared type.
static void eval_cast(const Node *n, Tensor *out, Tensor **in) {
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = in[0]->f[i];
}

static void grad_cast(AD *ad, Node *n, Node *dy) {
  Node *x = n->in[0];
  Node *back = grad_op(ad, OP_cast, n, 1, (Node *[]){dy});
  back->type = x->type;
  accumulate(ad, x, done(back));
}

// The load widens a 16-bit operand exactly; the store into a 16-bit buffer rounds.
static LExpr *elem_cast(Lowering *L, Node *n, LExpr **v) { return operand(L, n, 0, v); }

const OpRules rules_cast = {.shape = shape_cast, .eval = eval_cast, .grad = grad_cast, .elem = elem_cast};


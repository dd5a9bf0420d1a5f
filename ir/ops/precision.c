// Mixed precision's ops: cast, the rounding points the autocast pass
// (passes/autocast.c) inserts, and unscale, GradScaler's division of the
// gradients by the loss scale before an fp16 step's update (the optimizer
// pass). A value of type bf16 or f16 is a float rounded to nearest even to
// that precision; ops compute in f32 or wider and round once when they
// store (eval_graph and the loop IR's 16-bit buffers).
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

// --- unscale (g, inv_scale[]) -> g * inv_scale -----------------------------------------
//
// GradScaler.unscale_: the gradients of a step whose loss was multiplied by
// the scale, times inv_scale = 1 / scale (the runtime computes it in double
// and rounds it to float, as GradScaler does), in float:
// _amp_foreach_non_finite_check_and_unscale_'s val * inv_scale. The
// runtime checks for infinities and NaNs first and skips the update if it
// finds one. Under no_grad, like the updates it feeds.

static const char *shape_unscale(const Node *n, Type *out) {
  CHECK(want_f32(n, 0, "gradient"));
  CHECK(want_scalar(n, 1, DT_F32, "inverse scale"));
  *out = *T(n, 0);
  return NULL;
}

static void eval_unscale(const Node *n, Tensor *out, Tensor **in) {
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)((double)in[0]->f[i] * in[1]->f[0]);
}

static LExpr *elem_unscale(Lowering *L, Node *n, LExpr **v) {
  return FMUL(operand(L, n, 0, v), operand(L, n, 1, v));
}

const OpRules rules_unscale = {
    .shape = shape_unscale, .eval = eval_unscale, .no_grad = true, .elem = elem_unscale};

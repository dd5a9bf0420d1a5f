// autocast: mixed precision where PyTorch 1.13's torch.autocast puts it, on
// a forward graph (the model's, before autodiff, so that the gradients
// follow the values' precisions; or the evaluation graph), when the graph
// attribute `precision` is bf16 or fp16 (fp32, the default, changes
// nothing). Every rounding point is an explicit cast node:
//
//   - conv2d and linear take their input, weight and bias cast to the 16-bit
//     type and give a 16-bit result (lowering sums in f32 and rounds once);
//   - losses, softmax and log_softmax, the L2 norm take f32: a 16-bit operand
//     is cast back (autocast's fp32 list: cross_entropy_loss,
//     binary_cross_entropy_with_logits, norm);
//   - an op of operands of different precisions (add, mul, concat) computes
//     in f32, as PyTorch promotes (torch.cat: autocast's promote list),
//     except dropout's mask, which takes its input's precision (nn.Dropout's
//     and nn.Dropout2d's masks are tensors of their input's dtype);
//   - every other op runs on what it gets: relu, sigmoid, tanh, leaky_relu,
//     gelu (none of them on either of autocast's CPU lists), the pools and
//     batch norm's normalisation keep 16 bits; batch norm's statistics and
//     the running statistics are f32 whatever their input (batch_stats' rule).
//
// Parameters stay f32 (master weights): a param's cast is a node of its
// own, whose gradient autodiff casts back to f32. A returned 16-bit value
// (the logits) is cast to f32, the runtime's type. For fp16 the loss's
// gradient starts at the step's input %loss_scale, GradScaler's scale
// (autodiff seeds with it), so gradients in f16 do not underflow.
#include "ir.h"

#include <string.h>

typedef struct {
  Graph *g;
  DType low; // bf16 or f16
} Autocast;

// x cast to dt: one cast node per value and type (x->aux holds x's two
// casts, to the 16-bit type and to f32).
static Node *cast_to(Autocast *ac, Node *x, DType dt) {
  if (x->type.dtype == dt || !dtype_is_float(x->type.dtype))
    return x;
  Node **made = x->aux ? x->aux : (x->aux = xcalloc(2, sizeof(Node *)));
  Node **slot = &made[dt == DT_F32];
  if (!*slot) {
    *slot = node_build(ac->g, OP_cast, x->loc, 1, x);
    (*slot)->type = x->type;
    (*slot)->type.dtype = dt;
    node_infer(*slot);
  }
  return *slot;
}

// Ops that compute in f32 whatever they are given (autocast's fp32 list).
static bool wants_f32(OpKind op) {
  switch (op) {
  case OP_softmax:
  case OP_log_softmax:
  case OP_nll_loss:
  case OP_softmax_cross_entropy:
  case OP_bce:
  case OP_sigmoid_bce:
  case OP_l2norm:
  case OP_ema:
  case OP_row:
    return true;
  default:
    return false;
  }
}

static void cast_node(Autocast *ac, Node *n) {
  const OpInfo *info = op_info(n->op);
  if (info->flags & OPF_SOURCE)
    return;
  if (n->op == OP_conv2d || n->op == OP_linear) {
    for (int i = 0; i < n->nin; i++)
      n->in[i] = cast_to(ac, n->in[i], ac->low);
  } else if (wants_f32(n->op)) {
    for (int i = 0; i < n->nin; i++)
      n->in[i] = cast_to(ac, n->in[i], DT_F32);
  } else if (n->op == OP_mul && n->nin == 2 &&
             is_dropout_mask(n->in[0]) != is_dropout_mask(n->in[1])) {
    int m = is_dropout_mask(n->in[1]);
    n->in[m] = cast_to(ac, n->in[m], n->in[1 - m]->type.dtype);
  } else if (n->op == OP_add || n->op == OP_mul || n->op == OP_concat) {
    bool mixed = false;
    for (int i = 1; i < n->nin; i++)
      mixed |= n->in[i]->type.dtype != n->in[0]->type.dtype;
    for (int i = 0; i < n->nin && mixed; i++)
      n->in[i] = cast_to(ac, n->in[i], DT_F32);
  } else if (n->op == OP_reshape) {
    n->type.dtype = n->in[0]->type.dtype; // its type is declared: follow the operand
  }
  if (n->op == OP_cast)
    return; // already a rounding point of its own
  node_infer(n);
}

void pass_autocast(Graph *g) {
  const char *p = graph_str(g, "precision", "fp32");
  if (!strcmp(p, "fp32"))
    return;
  if (strcmp(p, "bf16") && strcmp(p, "fp16"))
    fatal("autocast: unknown precision '%s' in graph %s; use fp32, bf16 or fp16", p, g->name);
  Autocast ac = {g, !strcmp(p, "bf16") ? DT_BF16 : DT_F16};
  for (int i = 0; i < g->nnodes; i++)
    g->node[i]->aux = NULL;
  int n = g->nnodes; // the casts appended below need no visit
  for (int i = 0; i < n; i++)
    cast_node(&ac, g->node[i]);
  for (int i = 0; i < g->nret; i++)
    g->ret[i] = cast_to(&ac, g->ret[i], DT_F32);
  if (ac.low == DT_F16 && g->nret > 0 && g->ret[0]->name && !strcmp(g->ret[0]->name, "loss") &&
      !graph_find(g, "loss_scale")) {
    Node *s = node_build(g, OP_input, (Loc){0}, 0);
    s->name = xstrdup("loss_scale");
    s->type = (Type){DT_F32, 0, {0}};
    node_infer(s);
  }
  for (int i = 0; i < g->nnodes; i++)
    g->node[i]->aux = NULL;
  graph_toposort(g);
}

// autodiff: reverse-mode differentiation of the loss (the graph's first
// return value) with respect to every param, on the graph IR before any
// lowering. Each forward op's gradient rule sits in one switch below; the
// rules emit the *_grad ops of ops.def. Param gradients are named NAME.grad.
#include "ir.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  Graph *g;
  Node **grad;      // by forward node id: the accumulated gradient, or NULL
  bool *needs;      // by forward node id: does a param's gradient flow through it?
} AD;

// Adds one more contribution to x's gradient.
static void accumulate(AD *ad, Node *x, Node *contribution) {
  if (!ad->needs[x->id])
    return;
  Node *old = ad->grad[x->id];
  if (!old) {
    ad->grad[x->id] = contribution;
    return;
  }
  Node *sum = node_build(ad->g, OP_add, x->loc, 2, old, contribution);
  node_infer(sum);
  ad->grad[x->id] = sum;
}

static Node *grad_op(AD *ad, OpKind op, const Node *fwd, int nin, Node **in) {
  Node *n = node_new(ad->g, op, in, nin, fwd->loc);
  copy_attrs(n, fwd);
  node_fill_default_attrs(n);
  return n;
}

static Node *done(Node *n) {
  node_infer(n);
  return n;
}

// The gradient rule of every differentiable op: given dy = dL/dn, add
// dL/d(operand) to each operand that needs one.
static void backprop(AD *ad, Node *n, Node *dy) {
  Node **x = n->in;
  bool need[4] = {false};
  for (int i = 0; i < n->nin && i < 4; i++)
    need[i] = ad->needs[x[i]->id];

  switch (n->op) {
  case OP_conv2d:
    if (need[0]) {
      Node *gi = grad_op(ad, OP_conv2d_grad_input, n, 2, (Node *[]){dy, x[1]});
      gi->type = x[0]->type; // the input's shape is not a function of dy and w
      accumulate(ad, x[0], done(gi));
    }
    if (need[1]) {
      Node *gw = grad_op(ad, OP_conv2d_grad_weight, n, 2, (Node *[]){dy, x[0]});
      node_set_ints(gw, "kernel", &x[1]->type.dim[2], 2);
      accumulate(ad, x[1], done(gw));
    }
    if (n->nin == 3 && need[2])
      accumulate(ad, x[2], done(grad_op(ad, OP_bias_grad, n, 1, (Node *[]){dy})));
    return;
  case OP_linear:
    if (need[0])
      accumulate(ad, x[0], done(grad_op(ad, OP_linear_grad_input, n, 2, (Node *[]){dy, x[1]})));
    if (need[1])
      accumulate(ad, x[1], done(grad_op(ad, OP_linear_grad_weight, n, 2, (Node *[]){dy, x[0]})));
    if (n->nin == 3 && need[2])
      accumulate(ad, x[2], done(grad_op(ad, OP_bias_grad, n, 1, (Node *[]){dy})));
    return;
  case OP_maxpool2d:
    accumulate(ad, x[0], done(grad_op(ad, OP_maxpool2d_grad, n, 2, (Node *[]){dy, x[0]})));
    return;
  case OP_avgpool2d:
    accumulate(ad, x[0], done(grad_op(ad, OP_avgpool2d_grad, n, 2, (Node *[]){dy, x[0]})));
    return;
  case OP_relu: // the output's sign is the input's, and the output is at hand
    accumulate(ad, x[0], done(grad_op(ad, OP_relu_grad, n, 2, (Node *[]){dy, n})));
    return;
  case OP_sigmoid:
    accumulate(ad, x[0], done(grad_op(ad, OP_sigmoid_grad, n, 2, (Node *[]){dy, n})));
    return;
  case OP_softmax:
    accumulate(ad, x[0], done(grad_op(ad, OP_softmax_grad, n, 2, (Node *[]){dy, n})));
    return;
  case OP_log_softmax:
    accumulate(ad, x[0], done(grad_op(ad, OP_log_softmax_grad, n, 2, (Node *[]){dy, n})));
    return;
  case OP_reshape: {
    Node *r = grad_op(ad, OP_reshape, n, 1, (Node *[]){dy});
    r->type = x[0]->type;
    accumulate(ad, x[0], done(r));
    return;
  }
  case OP_add:
    accumulate(ad, x[0], dy);
    accumulate(ad, x[1], dy);
    return;
  case OP_mul:
    if (need[0])
      accumulate(ad, x[0], done(node_build(ad->g, OP_mul, n->loc, 2, dy, x[1])));
    if (need[1])
      accumulate(ad, x[1], done(node_build(ad->g, OP_mul, n->loc, 2, dy, x[0])));
    return;
  case OP_scale:
    accumulate(ad, x[0], done(grad_op(ad, OP_scale, n, 1, (Node *[]){dy})));
    return;
  case OP_nll_loss:
  case OP_softmax_cross_entropy: {
    OpKind op = n->op == OP_nll_loss ? OP_nll_loss_grad : OP_softmax_cross_entropy_grad;
    Node *in[4] = {dy, x[0], x[1], n->nin == 3 ? x[2] : NULL};
    accumulate(ad, x[0], done(grad_op(ad, op, n, n->nin + 1, in)));
    return;
  }
  case OP_bce:
    accumulate(ad, x[0], done(grad_op(ad, OP_bce_grad, n, 3, (Node *[]){dy, x[0], x[1]})));
    return;
  case OP_sigmoid_bce:
    accumulate(ad, x[0], done(grad_op(ad, OP_sigmoid_bce_grad, n, 3, (Node *[]){dy, x[0], x[1]})));
    return;
  case OP_l2norm:
    accumulate(ad, x[0], done(grad_op(ad, OP_l2norm_grad, n, 3, (Node *[]){dy, x[0], n})));
    return;
  case OP_batchnorm2d:
    if (need[0])
      accumulate(ad, x[0],
                 done(grad_op(ad, OP_batchnorm2d_grad_input, n, 3, (Node *[]){dy, x[0], x[1]})));
    if (need[1])
      accumulate(ad, x[1],
                 done(grad_op(ad, OP_batchnorm2d_grad_gamma, n, 2, (Node *[]){dy, x[0]})));
    if (need[2])
      accumulate(ad, x[2], done(grad_op(ad, OP_bias_grad, n, 1, (Node *[]){dy})));
    return;
  default:
    error_at(n->loc, "this op cannot appear between a parameter and the loss",
             "autodiff: no gradient rule for %s", op_info(n->op)->name);
  }
}

// Ops through which no gradient flows, as in PyTorch: the running
// statistics and their updates (computed under no_grad), dropout's mask.
// Every other op on the way from a param to the loss needs a
// rule above, or autodiff stops with an error rather than drop a gradient.
static bool blocks_gradient(OpKind op) {
  return op == OP_channel_mean || op == OP_channel_var || op == OP_ema || op == OP_assign ||
         op == OP_dropout_mask;
}

void pass_autodiff(Graph *g) {
  if (g->nret < 1 || g->ret[0]->type.rank != 0 || g->ret[0]->type.dtype != DT_F32)
    error_at(g->nret ? g->ret[0]->loc : (Loc){0}, "the first returned value must be the loss",
             "autodiff: graph %s does not return a scalar f32 loss first", g->name);
  graph_renumber(g);
  int nfwd = g->nnodes;
  AD ad = {g, xcalloc(nfwd, sizeof(Node *)), xcalloc(nfwd, sizeof(bool))};
  for (int i = 0; i < nfwd; i++) {
    Node *n = g->node[i];
    ad.needs[i] = n->op == OP_param;
    if (!(op_info(n->op)->flags & OPF_SOURCE) && !blocks_gradient(n->op))
      for (int j = 0; j < n->nin; j++)
        ad.needs[i] |= ad.needs[n->in[j]->id];
  }

  Node *loss = g->ret[0];
  if (!ad.needs[loss->id])
    error_at(loss->loc, "check that the loss is computed from the layers' outputs",
             "autodiff: the loss does not depend on any parameter");
  Node *seed = node_build(g, OP_const, loss->loc, 0);
  seed->type = loss->type;
  node_set_floats(seed, "value", (double[]){1.0}, 1);
  ad.grad[loss->id] = done(seed);

  for (int i = nfwd - 1; i >= 0; i--) {
    Node *n = g->node[i];
    if (ad.grad[i] && !(op_info(n->op)->flags & OPF_SOURCE))
      backprop(&ad, n, ad.grad[i]);
  }

  for (int i = 0; i < nfwd; i++) {
    Node *p = g->node[i], *gp = ad.grad[i];
    if (p->op != OP_param || !gp)
      continue;
    if (gp->name || (op_info(gp->op)->flags & OPF_SOURCE)) {
      // Shared with another value: give the parameter a gradient of its own.
      gp = node_build(g, OP_scale, p->loc, 1, gp);
      node_set_float(gp, "factor", 1.0);
      node_infer(gp);
    }
    gp->name = xformat("%s.grad", p->name);
  }
  free(ad.grad);
  free(ad.needs);
  graph_toposort(g);
}

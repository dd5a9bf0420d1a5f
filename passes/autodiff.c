// autodiff: reverse-mode differentiation of the loss (the graph's first
// return value) with respect to every param, on the graph IR before any
// lowering. Each forward op's gradient rule sits with its other rules in
// ir/ops/ (op_rules(op)->grad) and emits the *_grad ops of ops.def. Param
// gradients are named NAME.grad. A value read by several ops (a residual
// block's input, a branch joined twice) gets the sum of their
// contributions, added in one fixed order, the order the loop below meets
// its readers: the last reader's first, then each earlier one's
// (accumulate in ir/ops/ops.h); the same graph always sums the same way.
#include "ir.h"
#include "ops/ops.h"

#include <stdlib.h>

void pass_autodiff(Graph *g) {
  if (g->nret < 1 || g->ret[0]->type.rank != 0 || g->ret[0]->type.dtype != DT_F32)
    error_at(g->nret ? g->ret[0]->loc : (Loc){0}, "the first returned value must be the loss",
             "autodiff: graph %s does not return a scalar f32 loss first", g->name);
  graph_renumber(g);
  int nfwd = g->nnodes;
  AD ad = {g, xcalloc(nfwd, sizeof(Node *)), xcalloc(nfwd, sizeof(bool))};
  // No gradient flows through an op marked no_grad, as in PyTorch: the running
  // statistics and their updates, dropout's mask. Every other op on the way
  // from a param to the loss needs a gradient rule, or autodiff stops with an
  // error rather than drop a gradient.
  for (int i = 0; i < nfwd; i++) {
    Node *n = g->node[i];
    ad.needs[i] = n->op == OP_param;
    if (!(op_info(n->op)->flags & OPF_SOURCE) && !op_rules(n->op)->no_grad)
      for (int j = 0; j < n->nin; j++)
        ad.needs[i] |= ad.needs[n->in[j]->id];
  }

  Node *loss = g->ret[0];
  if (!ad.needs[loss->id])
    error_at(loss->loc, "check that the loss is computed from the layers' outputs",
             "autodiff: the loss does not depend on any parameter");
  // The loss's gradient starts at 1, or with GradScaler (the autocast
  // pass's fp16) at the scale the runtime feeds as %loss_scale: PyTorch's
  // scaler.scale(loss).backward().
  Node *seed = graph_find(g, "loss_scale");
  if (seed && (seed->op != OP_input || !type_eq(&seed->type, &loss->type)))
    error_at(seed->loc, "rename it; %loss_scale is the runtime's input of GradScaler's scale",
             "autodiff: %%loss_scale must be an input of type %s", type_str(&loss->type));
  if (!seed) {
    seed = node_build(g, OP_const, loss->loc, 0);
    seed->type = loss->type;
    node_set_floats(seed, "value", (double[]){1.0}, 1);
    done(seed);
  }
  ad.grad[loss->id] = seed;

  for (int i = nfwd - 1; i >= 0; i--) {
    Node *n = g->node[i];
    if (!ad.grad[i] || (op_info(n->op)->flags & OPF_SOURCE))
      continue;
    GradRule *grad = op_rules(n->op)->grad;
    if (!grad)
      error_at(n->loc, "this op cannot appear between a parameter and the loss",
               "autodiff: no gradient rule for %s", op_info(n->op)->name);
    grad(&ad, n, ad.grad[i]);
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

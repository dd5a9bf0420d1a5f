// optimizer: appends the parameter updates of the training step as graph
// ops, with PyTorch's formulas (torch.optim.SGD, Adam, AdamW), reading the
// settings from the graph attributes. The learning rate is an input, %lr:
// the runtime evaluates the schedule (graph attribute `schedule`) each step,
// as PyTorch's schedulers run on the host; a one-cycle schedule that cycles
// momentum feeds %momentum too (SGD's momentum, Adam's beta1). Optimizer
// state lives in `state` nodes named like PyTorch's optimizer state_dict
// entries (momentum_buffer, exp_avg, exp_avg_sq). With precision fp16 the
// gradients are unscaled first (GradScaler), by the input %inv_scale.
#include "ir.h"

#include <string.h>

static Node *scalar_input(Graph *g, const char *name, DType dt) {
  Node *n = graph_find(g, name);
  if (n) {
    if (n->op != OP_input || n->type.dtype != dt || n->type.rank != 0)
      error_at(n->loc, "rename it; the optimizer needs this name for its own input",
               "optimizer: %%%s already exists and is not a scalar input", name);
    return n;
  }
  n = node_build(g, OP_input, (Loc){0}, 0);
  n->name = xstrdup(name);
  n->type = (Type){dt, 0, {0}};
  node_infer(n);
  return n;
}

static Node *state_like(Graph *g, Node *p, const char *suffix) {
  Node *s = node_build(g, OP_state, p->loc, 0);
  s->name = xformat("%s.%s", p->name, suffix);
  s->type = p->type;
  node_set_str(s, "init", "zeros");
  node_infer(s);
  return s;
}

static Node *assign(Graph *g, Node *target, Node *value) {
  Node *a = node_build(g, OP_assign, target->loc, 2, target, value);
  node_infer(a);
  return a;
}

void pass_optimizer(Graph *g) {
  const char *opt = graph_str(g, "optimizer", "sgd");
  bool sgd = !strcmp(opt, "sgd"), adamw = !strcmp(opt, "adamw");
  if (!sgd && !adamw && strcmp(opt, "adam"))
    fatal("optimizer: unknown optimizer '%s' in graph %s; use sgd, adam or adamw", opt, g->name);
  double wd = graph_float(g, "weight_decay", 0.0);

  // The optimizer's own step count (PyTorch's state['step']): updates applied
  // so far, this one included; a step skipped for a non-finite gradient
  // (--nan-policy=skip) does not count, as GradScaler's skipped steps do not.
  Node *step = scalar_input(g, "opt_step", DT_I32);
  Node *lr = scalar_input(g, "lr", DT_F32);
  // OneCycleLR(cycle_momentum=True) moves SGD's momentum or Adam's beta1.
  bool cycled = !strcmp(graph_str(g, "schedule", "constant"), "one_cycle") &&
                graph_int(g, "cycle_momentum", 1);
  Node *momentum_in = cycled ? scalar_input(g, "momentum", DT_F32) : NULL;
  // fp16 (GradScaler): the gradients are of the scaled loss; the update
  // reads them unscaled, times %inv_scale (the runtime skips the update
  // when one is not finite, before this).
  Node *inv_scale = !strcmp(graph_str(g, "precision", "fp32"), "fp16")
                        ? scalar_input(g, "inv_scale", DT_F32)
                        : NULL;

  int nparams = g->nnodes;
  for (int i = 0; i < nparams; i++) {
    Node *p = g->node[i];
    if (p->op != OP_param)
      continue;
    Node *grad = graph_find(g, xformat("%s.grad", p->name));
    if (!grad)
      continue; // not used by the loss: PyTorch skips params whose .grad is None
    if (inv_scale) {
      grad = node_build(g, OP_unscale, p->loc, 2, grad, inv_scale);
      node_infer(grad);
    }
    Node *next;
    if (sgd) {
      double momentum = graph_float(g, "momentum", 0.0);
      Node *buf_new = NULL;
      if (momentum != 0.0 || cycled) {
        Node *buf = state_like(g, p, "momentum_buffer");
        buf_new = cycled ? node_build(g, OP_sgd_buf, p->loc, 5, grad, buf, p, step, momentum_in)
                         : node_build(g, OP_sgd_buf, p->loc, 4, grad, buf, p, step);
        node_set_float(buf_new, "momentum", momentum);
        node_set_float(buf_new, "dampening", graph_float(g, "dampening", 0.0));
        node_set_float(buf_new, "weight_decay", wd);
        node_infer(buf_new);
        assign(g, buf, buf_new);
      }
      next = cycled    ? node_build(g, OP_sgd_update, p->loc, 5, p, grad, lr, buf_new, momentum_in)
             : buf_new ? node_build(g, OP_sgd_update, p->loc, 4, p, grad, lr, buf_new)
                       : node_build(g, OP_sgd_update, p->loc, 3, p, grad, lr);
      node_set_float(next, "momentum", momentum);
      node_set_float(next, "weight_decay", wd);
      node_set_int(next, "nesterov", graph_int(g, "nesterov", 0));
    } else {
      // Adam folds weight decay into the gradient; AdamW decays the weights.
      double moment_wd = adamw ? 0.0 : wd;
      double beta1 = graph_float(g, "beta1", 0.9), beta2 = graph_float(g, "beta2", 0.999);
      Node *m = state_like(g, p, "exp_avg"), *v = state_like(g, p, "exp_avg_sq");
      Node *m_new = cycled ? node_build(g, OP_adam_moment1, p->loc, 4, grad, m, p, momentum_in)
                           : node_build(g, OP_adam_moment1, p->loc, 3, grad, m, p);
      node_set_float(m_new, "beta1", beta1);
      node_set_float(m_new, "weight_decay", moment_wd);
      node_infer(m_new);
      Node *v_new = node_build(g, OP_adam_moment2, p->loc, 3, grad, v, p);
      node_set_float(v_new, "beta2", beta2);
      node_set_float(v_new, "weight_decay", moment_wd);
      node_infer(v_new);
      assign(g, m, m_new);
      assign(g, v, v_new);
      next = cycled ? node_build(g, OP_adam_update, p->loc, 6, p, m_new, v_new, lr, step, momentum_in)
                    : node_build(g, OP_adam_update, p->loc, 5, p, m_new, v_new, lr, step);
      node_set_float(next, "beta1", beta1);
      node_set_float(next, "beta2", beta2);
      node_set_float(next, "eps", graph_float(g, "eps", 1e-8));
      node_set_float(next, "weight_decay", wd);
      node_set_int(next, "decoupled", adamw);
    }
    node_infer(next);
    assign(g, p, next);
  }
  graph_toposort(g);
}

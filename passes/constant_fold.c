// constant-fold: evaluates what is known at compile time and removes
// identities: scale of a constant, scale of a scale, scale by 1, adding a
// zero constant, multiplying by a one constant.
#include "ir.h"

static bool is_fill(const Node *n, double v) {
  const Attr *a;
  if (n->op != OP_const)
    return false;
  a = node_attr(n, "value");
  for (int i = 0; i < a->n; i++)
    if (a->floats[i] != v)
      return false;
  return a->n > 0;
}

// Replaces n by `by` unless n carries a name a user or a later pass needs.
static bool forward(Graph *g, Node *n, Node *by) {
  if (n->name && by->name)
    return false;
  if (n->name)
    by->name = n->name;
  replace_all_uses(g, n, by);
  return true;
}

void pass_constant_fold(Graph *g) {
  bool changed = true;
  while (changed) {
    changed = false;
    for (int i = 0; i < g->nnodes; i++) {
      Node *n = g->node[i];
      if (n->op == OP_scale) {
        double f = node_float(n, "factor");
        Node *x = n->in[0];
        if (f == 1.0 && forward(g, n, x)) {
          changed = true;
        } else if (x->op == OP_const && count_uses(g, x) == 1 && !(n->name && x->name)) {
          // Fold into the constant itself (float math, as at run time).
          Attr *v = &x->attr[op_attr_index(OP_const, "value")];
          for (int k = 0; k < v->n; k++)
            v->floats[k] = (float)((float)v->floats[k] * (float)f);
          changed = forward(g, n, x);
        } else if (x->op == OP_scale && count_uses(g, x) == 1) {
          node_set_float(n, "factor", (float)((float)f * (float)node_float(x, "factor")));
          n->in[0] = x->in[0];
          changed = true;
        }
      } else if (n->op == OP_add && (is_fill(n->in[0], 0.0) || is_fill(n->in[1], 0.0))) {
        changed = forward(g, n, is_fill(n->in[0], 0.0) ? n->in[1] : n->in[0]);
      } else if (n->op == OP_mul && (is_fill(n->in[0], 1.0) || is_fill(n->in[1], 1.0))) {
        changed = forward(g, n, is_fill(n->in[0], 1.0) ? n->in[1] : n->in[0]);
      }
      if (changed) {
        for (int k = g->nnodes - 1; k >= 0; k--)
          remove_if_unused(g, g->node[k]);
        break;
      }
    }
  }
}

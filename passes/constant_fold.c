// constant-fold: evaluates what is known at compile time and removes
// identities: a scale of a constant becomes a constant, a scale of a scale
// one scale, and scale by 1, adding a zero constant and multiplying by a one
// constant disappear. Folded values are computed in f32, as at run time.
#include "ir.h"

#include <string.h>

// Is n a constant whose every element is v?
static bool is_fill(const Node *n, double v) {
  if (n->op != OP_const)
    return false;
  const Attr *a = node_attr(n, "value");
  for (int i = 0; i < a->n; i++)
    if (a->floats[i] != v)
      return false;
  return a->n > 0;
}

// Moves n's users to `by`, unless both carry names: a user or a later pass
// looks for either (a layer's output, a param's NAME.grad), and one node has
// one name. An unnamed `by` takes n's name over.
static bool forward(Graph *g, Node *n, Node *by) {
  if (n->name && by->name)
    return false;
  if (n->name)
    by->name = n->name;
  n->name = NULL;
  replace_all_uses(g, n, by);
  return true;
}

// n = scale(c, f) of a constant c becomes itself the constant f * c, in
// place: its name, position and users stay. c is left to its other users.
static void fold_scale_of_const(Graph *g, Node *n) {
  Node *c = n->in[0];
  const Attr *v = node_attr(c, "value");
  float f = (float)node_float(n, "factor");
  double *folded = xcalloc(v->n, sizeof *folded);
  for (int k = 0; k < v->n; k++)
    folded[k] = (float)((float)v->floats[k] * f);
  // The constant's name means its value: it moves over only when c is about
  // to die and n has no name of its own.
  if (!n->name && c->name && count_uses(g, c) == 1) {
    n->name = c->name;
    c->name = NULL;
  }
  n->op = OP_const;
  n->nin = 0;
  memset(n->attr, 0, sizeof n->attr);
  node_set_floats(n, "value", folded, v->n);
}

// One rewrite at n, if any applies. Returns whether the graph changed.
static bool fold(Graph *g, Node *n) {
  if (count_uses(g, n) == 0) // dead, or already forwarded: sweep's business
    return false;
  switch (n->op) {
  case OP_scale: {
    Node *x = n->in[0];
    double f = node_float(n, "factor");
    if (f == 1.0)
      return forward(g, n, x);
    if (x->op == OP_const) {
      fold_scale_of_const(g, n);
      return true;
    }
    // scale(scale(y, a), b) = scale(y, a*b) when the inner scale has no other
    // user and no name to lose.
    if (x->op == OP_scale && !x->name && count_uses(g, x) == 1) {
      node_set_float(n, "factor", (float)((float)f * (float)node_float(x, "factor")));
      n->in[0] = x->in[0];
      return true;
    }
    return false;
  }
  case OP_add:
    if (is_fill(n->in[1], 0.0))
      return forward(g, n, n->in[0]);
    if (is_fill(n->in[0], 0.0))
      return forward(g, n, n->in[1]);
    return false;
  case OP_mul:
    if (is_fill(n->in[1], 1.0))
      return forward(g, n, n->in[0]);
    if (is_fill(n->in[0], 1.0))
      return forward(g, n, n->in[1]);
    return false;
  default:
    return false;
  }
}

// Removes the computations folding left without users (consts included),
// but no input, param, state or side effect: those are the graph's interface
// and dce's business.
static void sweep(Graph *g) {
  for (int i = g->nnodes - 1; i >= 0; i--) {
    Node *n = g->node[i];
    if (n->op != OP_input)
      remove_if_unused(g, n);
  }
}

void pass_constant_fold(Graph *g) {
  // Operands precede their users, so one sweep folds chains front to back;
  // the loop only catches rewrites that enable earlier ones.
  for (bool changed = true; changed;) {
    changed = false;
    for (int i = 0; i < g->nnodes; i++)
      while (fold(g, g->node[i]))
        changed = true;
    sweep(g);
  }
}

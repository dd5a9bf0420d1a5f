// cse: common-subexpression elimination. Two nodes with the same op,
// operands, attributes and type compute the same value; users of the later
// one are moved to the earlier. Sources and side effects are never merged.
#include "ir.h"

#include <string.h>

static bool attr_eq(const Attr *a, const Attr *b) {
  if (a->kind != b->kind || a->i != b->i || a->n != b->n)
    return false;
  if (a->kind == 'f' && memcmp(&a->f, &b->f, sizeof a->f) != 0)
    return false;
  if (a->kind == 's' && strcmp(a->s ? a->s : "", b->s ? b->s : "") != 0)
    return false;
  if (a->kind == 'I' && memcmp(a->ints, b->ints, sizeof *a->ints * a->n) != 0)
    return false;
  if (a->kind == 'F' && memcmp(a->floats, b->floats, sizeof *a->floats * a->n) != 0)
    return false;
  return true;
}

static bool same_value(const Node *a, const Node *b) {
  if (a->op != b->op || a->nin != b->nin || !type_eq(&a->type, &b->type))
    return false;
  for (int i = 0; i < a->nin; i++)
    if (a->in[i] != b->in[i])
      return false;
  for (int i = 0; i < op_info(a->op)->nattrs; i++)
    if (!attr_eq(&a->attr[i], &b->attr[i]))
      return false;
  return true;
}

void pass_cse(Graph *g) {
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    int flags = op_info(n->op)->flags;
    if ((flags & (OPF_SOURCE | OPF_SIDE_EFFECT)) && n->op != OP_const)
      continue;
    for (int j = 0; j < i; j++) {
      Node *m = g->node[j];
      if (!same_value(m, n))
        continue;
      // Keep the name a user would look for (a param's .grad, a layer's output).
      if (n->name && !m->name)
        m->name = n->name;
      else if (n->name && m->name)
        continue;
      replace_all_uses(g, n, m);
      graph_remove(g, n);
      i--;
      break;
    }
  }
}

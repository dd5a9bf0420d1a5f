// dce: removes every node that neither a returned value nor a side effect
// (an assign) needs. Params and state stay: they are the model's persistent
// contents and fix the checkpoint's layout.
#include "ir.h"

#include <stdlib.h>

static void mark(Node *n, char *live) {
  if (live[n->id])
    return;
  live[n->id] = 1;
  for (int i = 0; i < n->nin; i++)
    mark(n->in[i], live);
}

void pass_dce(Graph *g) {
  graph_renumber(g);
  char *live = xcalloc(g->nnodes, 1);
  for (int i = 0; i < g->nret; i++)
    mark(g->ret[i], live);
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    if ((op_info(n->op)->flags & OPF_SIDE_EFFECT) || n->op == OP_param || n->op == OP_state)
      mark(n, live);
  }
  int k = 0;
  for (int i = 0; i < g->nnodes; i++)
    if (live[i])
      g->node[k++] = g->node[i];
  g->nnodes = k;
  free(live);
  graph_renumber(g);
}

// eval-mode: turns the model graph into the evaluation graph, like PyTorch's
// model.eval() plus dropping the loss: batch norm uses its running
// statistics, dropout disappears, no state is updated, and the graph returns
// only the logits.
#include "ir.h"

#include <string.h>

static Node *running_stat(Graph *g, Node *bn, const char *stat) {
  const char *w = bn->in[1]->name;
  size_t len = strlen(w) > 7 ? strlen(w) - 7 : 0; // strip ".weight"
  Node *s = graph_find(g, xformat("%.*s.%s", (int)len, w, stat));
  if (!s || s->op != OP_state)
    error_at(bn->loc, NULL, "eval-mode: batch norm %s has no state %.*s.%s",
             bn->name ? bn->name : "", (int)len, w, stat);
  return s;
}

void pass_eval_mode(Graph *g) {
  if (g->nret < 2)
    fatal("eval-mode: graph %s must return the loss and then the logits", g->name);
  g->ret[0] = g->ret[1];
  g->nret = 1;

  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    if (n->op == OP_batchnorm2d) {
      Node *in[5] = {n->in[0], n->in[1], n->in[2], running_stat(g, n, "running_mean"),
                     running_stat(g, n, "running_var")};
      n->op = OP_batchnorm2d_infer;
      n->in = xcalloc(5, sizeof *n->in);
      memcpy(n->in, in, sizeof in);
      n->nin = 5;
    } else if (n->op == OP_mul && n->in[1]->op == OP_dropout_mask) {
      replace_all_uses(g, n, n->in[0]);
    }
  }
  for (int i = g->nnodes - 1; i >= 0; i--)
    if (g->node[i]->op == OP_assign)
      graph_remove(g, g->node[i]);
  graph_toposort(g);
  pass_dce(g);
}

// eval-mode: turns the model graph into the evaluation graph, like PyTorch's
// model.eval() plus dropping the loss: batch norm uses its running
// statistics, dropout disappears, no state is updated, and the graph returns
// only the logits.
#include "ir.h"

#include <string.h>

// The running statistic `stat` of batch norm bn: the state next to its gamma,
// bn1.weight -> bn1.running_mean, as the frontend and PyTorch name them.
static Node *running_stat(Graph *g, Node *bn, const char *stat) {
  const char *w = bn->in[1]->name ? bn->in[1]->name : "";
  size_t len = strlen(w);
  if (len > 7 && strcmp(w + len - 7, ".weight") == 0)
    len -= 7;
  char *want = xformat("%.*s.%s", (int)len, w, stat);
  Node *s = graph_find(g, want);
  if (!s || s->op != OP_state || !type_eq(&s->type, &bn->in[1]->type))
    error_at(bn->loc, "name batch norm's gamma LAYER.weight and add states LAYER.running_mean "
                      "and LAYER.running_var of its shape",
             "eval-mode: batch norm %%%s has no running statistic %%%s",
             bn->name ? bn->name : "(unnamed)", want);
  return s;
}

// Dropout in training is mul(x, dropout_mask(...)) or mul(x,
// dropout2d_mask(...)), the mask on either side.
static Node *dropout_input(const Node *n) {
  if (n->op != OP_mul)
    return NULL;
  if (is_dropout_mask(n->in[1]))
    return n->in[0];
  if (is_dropout_mask(n->in[0]))
    return n->in[1];
  return NULL;
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
    } else if (dropout_input(n)) {
      replace_all_uses(g, n, dropout_input(n));
    }
  }
  for (int i = g->nnodes - 1; i >= 0; i--)
    if (g->node[i]->op == OP_assign)
      graph_remove(g, g->node[i]);
  graph_toposort(g);
  pass_dce(g);
}

// lint-losses: warns about the classic PyTorch mistakes of applying softmax
// before cross_entropy, or sigmoid before bce_with_logits. Both losses apply
// that function themselves, so the model would squash its outputs twice.
// Changes nothing.
#include "ir.h"

void pass_lint_losses(Graph *g) {
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    if (n->op == OP_nll_loss && n->in[0]->op == OP_log_softmax &&
        n->in[0]->in[0]->op == OP_softmax)
      warn_at(n->in[0]->in[0]->loc,
              "remove the softmax layer: cross_entropy applies log-softmax itself",
              "softmax before cross_entropy squashes the logits twice and slows learning");
    if (n->op == OP_bce && n->in[0]->op == OP_sigmoid && n->in[0]->in[0]->op == OP_sigmoid)
      warn_at(n->in[0]->in[0]->loc,
              "remove the sigmoid layer: bce_with_logits applies sigmoid itself",
              "sigmoid before bce_with_logits squashes the logits twice");
  }
}

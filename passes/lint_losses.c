// lint-losses: warns about the classic PyTorch mistakes of applying softmax
// before cross_entropy, or sigmoid before bce_with_logits. Both losses apply
// that function themselves, so the model would squash its outputs twice.
// Changes nothing. Both the textbook and the fused form of each loss are
// recognised, so the lint gives the same answer wherever it runs.
#include "ir.h"

// The value a cross-entropy loss node n takes its logits from, or NULL when
// n is no cross-entropy: nll_loss(log_softmax(x)) or softmax_cross_entropy(x).
static Node *ce_logits(Node *n) {
  if (n->op == OP_nll_loss && n->in[0]->op == OP_log_softmax)
    return n->in[0]->in[0];
  if (n->op == OP_softmax_cross_entropy)
    return n->in[0];
  return NULL;
}

// Likewise for BCE-with-logits: bce(sigmoid(x)) or sigmoid_bce(x).
static Node *bce_logits(Node *n) {
  if (n->op == OP_bce && n->in[0]->op == OP_sigmoid)
    return n->in[0]->in[0];
  if (n->op == OP_sigmoid_bce)
    return n->in[0];
  return NULL;
}

// Looks through what leaves the squashed values as they are for the loss:
// a flatten (reshape) and dropout, mul(x, a dropout mask) on either side.
static Node *producer(Node *x) {
  for (;;) {
    if (x->op == OP_reshape)
      x = x->in[0];
    else if (x->op == OP_mul && is_dropout_mask(x->in[1]))
      x = x->in[0];
    else if (x->op == OP_mul && is_dropout_mask(x->in[0]))
      x = x->in[1];
    else
      return x;
  }
}

void pass_lint_losses(Graph *g) {
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i], *x;
    if ((x = ce_logits(n)) && (x = producer(x))->op == OP_softmax)
      warn_at(x->loc, "remove the softmax layer: cross_entropy applies log-softmax itself",
              "softmax before cross_entropy squashes the logits twice and slows learning");
    if ((x = bce_logits(n)) && (x = producer(x))->op == OP_sigmoid)
      warn_at(x->loc, "remove the sigmoid layer: bce_with_logits applies sigmoid itself",
              "sigmoid before bce_with_logits squashes the logits twice");
  }
}

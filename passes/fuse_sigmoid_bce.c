// fuse-sigmoid-bce: bce(sigmoid(x), y) -> sigmoid_bce(x, y), the numerically
// stable with-logits form max(x,0) - x*y + log1p(exp(-|x|)) (with pos_weight)
// whose gradient is (sigmoid(x) - y) scaled by pos_weight, in one pass.
#include "ir.h"

void pass_fuse_sigmoid_bce(Graph *g) {
  for (int i = 0; i < g->nnodes; i++) {
    Node *bce = g->node[i];
    if (bce->op != OP_bce || bce->in[0]->op != OP_sigmoid)
      continue;
    Node *sig = bce->in[0];
    bce->op = OP_sigmoid_bce;
    bce->in[0] = sig->in[0];
    node_infer(bce);
    remove_if_unused(g, sig);
  }
}

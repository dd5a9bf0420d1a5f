// fuse-softmax-ce: nll_loss(log_softmax(x), y) -> softmax_cross_entropy(x, y).
// The fused op's forward is one log-sum-exp per row and its gradient one pass
// over the logits, (softmax - target) * w / N, instead of two ops and an
// [N,C] intermediate each way.
#include "ir.h"

void pass_fuse_softmax_ce(Graph *g) {
  for (int i = 0; i < g->nnodes; i++) {
    Node *nll = g->node[i];
    if (nll->op != OP_nll_loss || nll->in[0]->op != OP_log_softmax)
      continue;
    Node *lsm = nll->in[0];
    // Same operands but the logits, same label_smoothing attribute: rewrite in place.
    nll->op = OP_softmax_cross_entropy;
    nll->in[0] = lsm->in[0];
    node_infer(nll);
    remove_if_unused(g, lsm);
  }
}

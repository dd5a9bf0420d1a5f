// The pass registry: every pass xentcc and xentcc-opt can run by name.
#include "ir.h"

#include <string.h>

static const Pass passes[] = {
    {"verify", verify_graph, "check the graph; changes nothing"},
    {"lint-losses", pass_lint_losses, "warn about softmax/sigmoid applied before the loss"},
    {"fuse-softmax-ce", pass_fuse_softmax_ce, "log_softmax + nll_loss -> softmax_cross_entropy"},
    {"fuse-sigmoid-bce", pass_fuse_sigmoid_bce, "sigmoid + bce -> sigmoid_bce (with logits)"},
    {"autodiff", pass_autodiff, "append reverse-mode gradients of the loss for every param"},
    {"optimizer", pass_optimizer, "append the optimizer's updates and the lr schedule"},
    {"constant-fold", pass_constant_fold, "fold constants and remove identities"},
    {"cse", pass_cse, "merge nodes that compute the same value"},
    {"dce", pass_dce, "remove nodes no return value or assign needs"},
    {"eval-mode", pass_eval_mode, "the evaluation graph: logits only, running statistics"},
};

const Pass *pass_list(int *count) {
  *count = (int)(sizeof passes / sizeof passes[0]);
  return passes;
}

const Pass *pass_find(const char *name) {
  int n;
  const Pass *p = pass_list(&n);
  for (int i = 0; i < n; i++)
    if (strcmp(p[i].name, name) == 0)
      return &p[i];
  return NULL;
}

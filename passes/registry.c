// The pass registry: every pass xentcc and xentcc-opt can run by name.
#include "loop.h"

#include <string.h>

static const Pass passes[] = {
    {"verify", verify_graph, NULL, "check the graph; changes nothing"},
    {"lint-losses", pass_lint_losses, NULL, "warn about softmax/sigmoid applied before the loss"},
    {"fuse-softmax-ce", pass_fuse_softmax_ce, NULL, "log_softmax + nll_loss -> softmax_cross_entropy"},
    {"fuse-sigmoid-bce", pass_fuse_sigmoid_bce, NULL, "sigmoid + bce -> sigmoid_bce (with logits)"},
    {"autocast", pass_autocast, NULL, "mixed precision (attr precision): casts where torch.autocast rounds"},
    {"autodiff", pass_autodiff, NULL, "append reverse-mode gradients of the loss for every param"},
    {"optimizer", pass_optimizer, NULL, "append the optimizer's updates (the lr is an input)"},
    {"constant-fold", pass_constant_fold, NULL, "fold constants and remove identities"},
    {"cse", pass_cse, NULL, "merge nodes that compute the same value"},
    {"dce", pass_dce, NULL, "remove nodes no return value or assign needs"},
    {"eval-mode", pass_eval_mode, NULL, "the evaluation graph: logits only, running statistics"},
    {"lower", NULL, NULL, "the graph into plain loop nests (the loop IR); the passes below run on it"},
    {"fuse-epilogue", NULL, pass_fuse_epilogue, "compute a relu in the kernel of the conv2d/linear it follows"},
    {"pad", NULL, pass_pad, "padded windows read a zero-bordered copy: no bounds checks"},
    {"phases", NULL, pass_phases, "strided windows read a copy split into stride x stride phase planes"},
    {"tile", NULL, pass_tile, "register tiles for contractions: vector, unroll-and-jam"},
    {"inline", NULL, pass_inline, "an elementwise kernel read by no contraction is computed in its readers' loads"},
    {"vectorize", NULL, pass_vectorize, "innermost unit-stride loops into vectors of 8, 4, 2 lanes"},
    {"fuse-loops", NULL, pass_fuse_loops, "neighbouring per-channel kernels as one loop, their sums jammed"},
    {"channel-block", NULL, pass_channel_block, "per-channel kernels of small planes: blocks of channels, each image's in a row"},
    {"parallelize", NULL, pass_parallelize, "outermost loops with disjoint writes on the threads"},
    {"in-place", NULL, pass_in_place, "an update copied over its state at the end of the step is written there"},
    {"prefetch", NULL, pass_prefetch, "contractions fetch their inputs' next block while they compute this one"},
    {"plan-memory", NULL, pass_plan_memory, "place workspace buffers: first fit by lifetime"},
};

// The loop passes of each -O level, in order. -O0 runs the plain nests.
static const char *const o0[] = {"plan-memory"};
static const char *const o1[] = {"fuse-epilogue", "pad",           "phases",
                                 "tile",          "inline",        "vectorize",
                                 "fuse-loops",    "channel-block", "parallelize",
                                 "in-place",      "prefetch",      "plan-memory"};

const char *const *loop_pipeline(int level, int *count) {
  if (level <= 0) {
    *count = sizeof o0 / sizeof *o0;
    return o0;
  }
  *count = sizeof o1 / sizeof *o1;
  return o1;
}

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

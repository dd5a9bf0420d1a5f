// The low-level IR between the graph and LLVM: explicit buffers and a list of
// kernels. Every graph value lives in one buffer (a slice of the params or
// state block, a function argument, a constant, or a slice of the workspace
// chosen by a memory plan); every op becomes one kernel, a loop nest with
// constant bounds that emit.c turns into LLVM IR.
#ifndef XENTCC_LOOPS_H
#define XENTCC_LOOPS_H

#include "ir.h"

typedef enum {
  BUF_PARAM,     // params + offset (floats)
  BUF_STATE,     // state + offset (floats)
  BUF_GRAD,      // grads + offset (floats): a parameter's gradient, laid out like params
  BUF_ARG,       // a function argument: images, labels or logits
  BUF_SCALAR,    // a field of the step's XcStepArgs (step, seed, lr, momentum)
  BUF_WORKSPACE, // workspace + offset (bytes)
  BUF_CONST,     // a constant global
  BUF_SLOT,      // slots[slot]: the test entry passes one pointer per node
  BUF_ABSENT,    // computed by the other half of a training step; not read here
} BufKind;

typedef struct {
  BufKind kind;
  int64_t offset; // floats for PARAM/STATE, bytes for WORKSPACE
  int64_t bytes;
  const char *arg; // BUF_ARG / BUF_SCALAR: the input's name ("image", "step", ...)
  int slot;        // BUF_SLOT
} Buffer;

typedef struct {
  Node *node;     // the op; its operands' and its own buffers are in LoopFunc.buf
  bool deferred;  // an assign: runs after every other kernel of the step
  bool parallel;  // outer loop split with xc_parallel_for
  int64_t trip;   // the outer loop's trip count
  bool relu;      // a relu fused into this conv2d/linear: max(0, .) on the way out
} Kernel;

// A training step is two functions, so that the runtime can look at the
// gradients between them (a non-finite one skips or stops the update; later
// loss scaling and an allreduce across processes sit there too):
//   FN_GRAD_STEP   forward and backward: the loss, every parameter's
//                  gradient into the grads block, batch-norm statistics
//   FN_APPLY_STEP  the optimizer: params and optimizer state from the grads
typedef enum { FN_GRAD_STEP, FN_APPLY_STEP, FN_FORWARD, FN_SLOTS } FuncKind;

// One tensor of the params or state block, in graph order.
typedef struct {
  Node *node;
  int64_t offset; // floats
} BlockEntry;

typedef struct {
  FuncKind kind;
  const char *name;  // LLVM symbol
  Graph *g;
  Buffer *buf;       // indexed by node id
  Kernel *k;
  int nk;
  int64_t workspace_bytes;
  bool *folded;      // by node id: a relu computed by its producer's kernel
  bool *member;      // by node id: the node's kernel runs in this function
} LoopFunc;

// The params and state blocks shared by xc_train_step and xc_forward: laid
// out from the training graph when there is one, so both agree on offsets.
typedef struct {
  BlockEntry *params, *states;
  int nparams, nstates;
  int64_t param_floats, state_floats;
} Blocks;

// The scalar inputs of a training step: the fields of XcStepArgs
// (runtime/xentcc_rt.h), in order. Field index of input `name`, or -1.
int step_arg_field(const char *name, DType *dtype);

Blocks *plan_blocks(Graph *primary);
LoopFunc *lower_graph(Graph *g, FuncKind kind, const char *name, const Blocks *blocks);
void print_loops(FILE *out, const LoopFunc *f);
int64_t kernel_trip(const Node *n, bool *parallel);
// Floating-point operations of one call of n's kernel: 2 per multiply-add of
// the convolutions and linear layers, 0 for the others.
int64_t kernel_flops(const Node *n);
// The parameter whose gradient node n is (named PARAM.grad), or NULL.
Node *gradient_of(Graph *g, Node *n);


#endif

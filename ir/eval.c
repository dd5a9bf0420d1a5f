// The reference evaluator: runs a graph on concrete tensors, one naive loop
// nest per op, accumulating in double. It exists to be obviously correct --
// the oracle for finite-difference checks, pass differential tests, PyTorch
// parity and generated code -- so it favours the textbook formula over speed.
// Each op's loop nest sits with its other rules in ir/ops/.
#include "ir.h"
#include "ops/ops.h"

Tensor tensor_new(Type t) {
  Tensor x = {t, NULL, NULL};
  int64_t n = type_numel(&t);
  if (dtype_is_float(t.dtype)) // 16-bit values are held as the floats they round to
    x.f = xcalloc(n ? n : 1, sizeof(float));
  else
    x.i = xcalloc(n ? n : 1, sizeof(int32_t));
  return x;
}

Tensor *eval_graph(Graph *g, const Tensor *sources) {
  Tensor *val = xcalloc(g->nnodes ? g->nnodes : 1, sizeof *val);
  Tensor *in[6]; // no op takes more operands
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    ir_assert(n->id == i); // sources and results are indexed by id
    ir_assert(n->nin <= 6);
    for (int j = 0; j < n->nin; j++) {
      ir_assert(n->in[j]->id < i);
      in[j] = &val[n->in[j]->id];
    }
    // A source has no operands: its rule finds the caller's tensor in in[0]
    // (input, param and state copy it; const ignores it). Never written.
    if (op_info(n->op)->flags & OPF_SOURCE)
      in[0] = (Tensor *)&sources[i];
    Tensor *out = &val[i];
    *out = tensor_new(n->type);
    op_rules(n->op)->eval(n, out, in);
    // A 16-bit result: what the op computed, rounded once.
    if (dtype_is_16bit(n->type.dtype))
      for (int64_t k = 0; k < type_numel(&n->type); k++)
        out->f[k] = round_to_dtype(out->f[k], n->type.dtype);
  }
  return val;
}

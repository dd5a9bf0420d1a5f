// lower: the graph into the loop IR. Every value gets a buffer (a slice of
// the params, state or grads block, an argument, a constant, a workspace
// slice the memory plan places later; a reshape aliases its operand), and
// every op its plain loop nest by its lowering rule (ir/ops/, beside its
// shape, evaluation and gradient rules): the textbook loops over the output
// with the sum inside, in PyTorch's layouts, guarded where a window reaches
// into padding. This is the reference the scheduled code is checked against
// and what -O0 runs; the scheduling passes rewrite it.
#include "ops/lower.h"
#include "loop.h"

#include <stdlib.h>
#include <string.h>

// An elementwise op: the nest over its output, each element stored (a
// 16-bit value held in an f32 buffer rounded first, see widened).
static void lower_map(Lowering *L, Node *n, ElemRule *elem) {
  LBuf *y = B(L, n);
  LKernel *k = kernel(L, n, NULL);
  LExpr *v[LMAX_RANK];
  LStmt *in = each(k, NULL, y, v, NULL);
  LExpr *value = elem(L, n, v);
  if (dtype_is_16bit(n->type.dtype) && !dtype_is_16bit(y->dtype))
    value = lx_round(n->type.dtype, value);
  put(k, in, ls_store(y, v, value));
}

// A parameter's 16-bit copy (autocast's cast of a weight or a bias) is
// small and read over and over by the tiles of a contraction: it keeps its
// 16-bit values in f32 storage, rounded once when the copy is made, so the
// tiles load it without converting. Activations stay 16 bits.
static bool widened(FuncKind kind, const Node *v) {
  return kind != FN_SLOTS && v->op == OP_cast && dtype_is_16bit(v->type.dtype) &&
         (v->in[0]->op == OP_param || v->in[0]->op == OP_state);
}

//
// 16-bit results summed in f32
//

// A nest that sums into its output reads back what it stored, which in a
// 16-bit buffer would round every partial sum. So the kernels of n (from
// `first` on) that read its 16-bit output y sum into an f32 buffer of their
// own instead, and one more kernel rounds each result into y, once:
// autocast's "accumulate in f32, store 16 bits".
static void sum_in_f32(LFunc *f, Node *n, LBuf *y, int first) {
  bool reads = false;
  for (int k = first; k < f->nkernels && !reads; k++)
    for (int j = 0; j < f->kernels[k]->nbody && !reads; j++)
      reads = ls_reads(f->kernels[k]->body[j], y);
  if (!reads)
    return;
  LBuf *acc = lfunc_buf(f, xformat("%s.f32", y->name), DT_F32, y->rank, y->dim, LB_WORKSPACE);
  acc->node = n;
  acc->layout = xformat("f32 sums of %s", dtype_name(y->dtype));
  for (int k = first; k < f->nkernels; k++)
    for (int j = 0; j < f->kernels[k]->nbody; j++)
      ls_retarget(f->kernels[k]->body[j], y, acc);
  LKernel *k = lfunc_kernel(f, "round", "round", n);
  LExpr *v[LMAX_RANK];
  LStmt *in = lk_nest(k, NULL, y->rank, y->dim, NULL, v);
  LStmt *st = ls_store(y, v, lx_load(acc, v));
  if (in)
    ls_add(in, st);
  else
    lk_add(k, st);
}

//
// Functions
//

LBlocks *plan_blocks(Graph *g) {
  LBlocks *b = xcalloc(1, sizeof *b);
  b->params = xcalloc(g->nnodes + 1, sizeof *b->params);
  b->states = xcalloc(g->nnodes + 1, sizeof *b->states);
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    // 16-float aligned, so every tensor starts on a cache line.
    if (n->op == OP_param) {
      b->params[b->nparams++] = (LBlockEntry){n, b->param_floats};
      b->param_floats += (type_numel(&n->type) + 15) / 16 * 16;
    } else if (n->op == OP_state) {
      b->states[b->nstates++] = (LBlockEntry){n, b->state_floats};
      b->state_floats += (type_numel(&n->type) + 15) / 16 * 16;
    }
  }
  return b;
}

static int64_t block_offset(const LBlockEntry *e, int n, Node *node, const char *what) {
  for (int i = 0; i < n; i++)
    if (!strcmp(e[i].node->name, node->name))
      return e[i].offset;
  fatal("%s '%s' of the evaluation graph is not in the training graph", what, node->name);
}

Node *loop_gradient_of(Graph *g, Node *n) {
  size_t len = n->name ? strlen(n->name) : 0;
  if (len <= 5 || strcmp(n->name + len - 5, ".grad"))
    return NULL;
  Node *p = graph_find(g, xstrndup(n->name, len - 5));
  return p && p->op == OP_param ? p : NULL;
}

// Which nodes' kernels run in a function: the updates in FN_APPLY_STEP, all
// the others in FN_GRAD_STEP, whose gradients are the only values the second
// reads from the first.
static bool member(Graph *g, Node *v, FuncKind kind) {
  if (op_info(v->op)->flags & OPF_SOURCE)
    return false;
  bool update = is_update(v);
  if (kind == FN_APPLY_STEP && update)
    for (int j = 0; j < v->nin; j++) {
      Node *u = v->in[j];
      if (!(op_info(u->op)->flags & OPF_SOURCE) && !is_update(u) && !loop_gradient_of(g, u))
        error_at(v->loc, "the optimizer reads parameters, their gradients and its state",
                 "optimizer op %s reads %%%s, which is neither", op_info(v->op)->name,
                 u->name ? u->name : "(unnamed)");
    }
  return kind == FN_APPLY_STEP ? update : kind == FN_GRAD_STEP ? !update : true;
}

// Unnamed values are numbered as print_graph numbers them: 0, 1, 2... in order.
static const char *node_name(Graph *g, Node *n) {
  if (n->name)
    return n->name;
  int k = 0;
  for (int i = 0; i < n->id; i++)
    k += !g->node[i]->name;
  return xformat("%d", k);
}

// The scalar inputs of a training step: fields of XcStepArgs.
static bool step_arg(const char *name, DType *dt) {
  static const struct {
    const char *name;
    DType dtype;
  } fields[] = {{"step", DT_I32},     {"seed", DT_I32},    {"lr", DT_F32},
                {"momentum", DT_F32}, {"opt_step", DT_I32}, {"loss_scale", DT_F32},
                {"inv_scale", DT_F32}, {"row0", DT_I32}};
  for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
    if (!strcmp(fields[i].name, name)) {
      *dt = fields[i].dtype;
      return true;
    }
  return false;
}

// Every node's buffer in f; then its kernels, in graph order.
static LFunc *lower_function(Graph *g, FuncKind kind, const char *name, const LBlocks *blocks) {
  graph_renumber(g);
  LFunc *f = xcalloc(1, sizeof *f);
  f->name = xstrdup(name);
  f->kind = kind;
  f->g = g;
  f->buf_of = xcalloc(g->nnodes + 1, sizeof *f->buf_of);
  bool step = kind == FN_GRAD_STEP || kind == FN_APPLY_STEP;
  for (int i = 0; i < g->nnodes; i++) {
    Node *v = g->node[i];
    const Type *t = &v->type;
    if (v->op == OP_assign && kind != FN_SLOTS) {
      f->buf_of[i] = f->buf_of[v->in[0]->id]; // the copy lands in the target itself
      continue;
    }
    LBuf *b = lfunc_buf(f, node_name(g, v), widened(kind, v) ? DT_F32 : t->dtype, t->rank, t->dim,
                        LB_WORKSPACE);
    b->node = v;
    f->buf_of[i] = b;
    if (v->op == OP_const) {
      b->storage = LB_CONST;
      const Attr *a = node_attr(v, "value");
      b->values = a->floats;
      b->nvalues = a->n;
    } else if (kind == FN_SLOTS) {
      b->storage = LB_SLOT;
      b->slot = i;
    } else if (v->op == OP_param) {
      b->storage = LB_PARAM;
      b->offset = block_offset(blocks->params, blocks->nparams, v, "parameter");
    } else if (v->op == OP_state) {
      b->storage = LB_STATE;
      b->offset = block_offset(blocks->states, blocks->nstates, v, "state");
    } else if (step && loop_gradient_of(g, v)) {
      b->storage = LB_GRAD;
      b->offset = block_offset(blocks->params, blocks->nparams, loop_gradient_of(g, v), "parameter");
    } else if (v->op == OP_input) {
      const char *nm = v->name ? v->name : "";
      DType dt;
      if (!strcmp(nm, "image") || !strcmp(nm, "label"))
        b->storage = LB_ARG;
      else if (step_arg(nm, &dt) && dt == t->dtype && t->rank == 0)
        b->storage = LB_SCALAR;
      else if (step_arg(nm, &dt))
        error_at(v->loc, "declare it as the runtime feeds it", "input '%%%s' must be %s[]", nm,
                 dtype_name(dt));
      else
        error_at(v->loc,
                 "the runtime feeds only %image, %label, %step, %seed, %lr, %momentum, "
                 "%opt_step, %loss_scale, %inv_scale and %row0",
                 "input '%%%s' cannot be fed by the runtime", nm);
      b->arg = v->name;
    } else if (v->op == OP_reshape) {
      b->alias = f->buf_of[v->in[0]->id];
    }
  }
  Lowering L = {f, g, blocks};
  for (int pass = 0; pass < 2; pass++) // assigns after every other kernel
    for (int i = 0; i < g->nnodes; i++) {
      Node *v = g->node[i];
      if (!member(g, v, kind) || (v->op == OP_assign) != (pass == 1))
        continue;
      if (v->op == OP_reshape && kind != FN_SLOTS)
        continue; // an alias: no copy
      const OpRules *r = op_rules(v->op);
      if (!r->lower && !r->elem)
        fatal("code generation does not support op '%s'", op_info(v->op)->name);
      int before = f->nkernels;
      if (r->elem)
        lower_map(&L, v, r->elem);
      else
        r->lower(&L, v);
      if (f->buf_of[i] && dtype_is_16bit(f->buf_of[i]->dtype))
        sum_in_f32(f, v, f->buf_of[i], before);
      for (int k = before; k < f->nkernels; k++)
        f->kernels[k]->deferred = v->op == OP_assign;
    }
  if (kind == FN_GRAD_STEP || kind == FN_FORWARD)
    f->result = f->buf_of[g->ret[0]->id];
  if (kind == FN_GRAD_STEP && g->nret > 1)
    f->logits = f->buf_of[g->ret[1]->id];
  return f;
}

static void add_func(LProgram *p, LFunc *f) {
  p->funcs = realloc(p->funcs, sizeof *p->funcs * (p->nfuncs + 1));
  if (!p->funcs)
    fatal("out of memory");
  p->funcs[p->nfuncs++] = f;
}

LProgram *lower_program(Graph *train, Graph *eval, int opt_level) {
  ir_assert(train || eval);
  LProgram *p = xcalloc(1, sizeof *p);
  p->opt_level = opt_level;
  p->target = ltarget_avx2;
  p->blocks = plan_blocks(train ? train : eval);
  if (train) {
    add_func(p, lower_function(train, FN_GRAD_STEP, "xc_grad_step", p->blocks));
    add_func(p, lower_function(train, FN_APPLY_STEP, "xc_apply_step", p->blocks));
  }
  if (eval)
    add_func(p, lower_function(eval, FN_FORWARD, "xc_forward", p->blocks));
  return p;
}

LProgram *lower_slots(Graph *g, const char *name) {
  LProgram *p = xcalloc(1, sizeof *p);
  p->target = ltarget_avx2;
  p->blocks = plan_blocks(g);
  add_func(p, lower_function(g, FN_SLOTS, name, p->blocks));
  return p;
}

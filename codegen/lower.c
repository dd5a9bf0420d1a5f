// Lowering: graph IR -> buffers and kernels (loops.h). Sources map to the
// params/state blocks and the step function's arguments; every other value
// gets a workspace slice from a first-fit memory plan that hands a slice back
// once its last reader has run. Assigns are deferred to the end of the step,
// so the values they copy stay live until then. A relu whose operand is a
// conv2d or linear read by nothing else is fused into that kernel: the bias
// and the max(0, .) are applied while the output row is still in cache.
#include "loops.h"

#include <limits.h>
#include <string.h>

// The buffer a value lives in: reshapes and fused relus share their operand's.
static Node *alias_root(const LoopFunc *f, Node *n) {
  while (n->op == OP_reshape || f->folded[n->id])
    n = n->in[0];
  return n;
}

// Marks each relu that its producer's kernel can compute: the producer is a
// conv2d or linear whose only reader is that relu (so its pre-activation is
// never needed: relu_grad reads the relu's output). The per-node test entry
// (FN_SLOTS) checks every node's value, so it fuses nothing.
static void fold_relus(LoopFunc *f, FuncKind kind) {
  Graph *g = f->g;
  f->folded = xcalloc(g->nnodes, sizeof *f->folded);
  if (kind == FN_SLOTS)
    return;
  for (int i = 0; i < g->nnodes; i++) {
    Node *r = g->node[i], *p = r->nin ? r->in[0] : NULL;
    if (r->op == OP_relu && (p->op == OP_conv2d || p->op == OP_linear) && count_uses(g, p) == 1)
      f->folded[i] = true;
  }
}

static int64_t type_bytes(const Type *t) { return type_numel(t) * 4; }

int step_arg_field(const char *name, DType *dtype) {
  static const struct {
    const char *name;
    DType dtype;
  } fields[] = {{"step", DT_I32},     {"seed", DT_I32},    {"lr", DT_F32},
                {"momentum", DT_F32}, {"opt_step", DT_I32}};
  for (int i = 0; i < (int)(sizeof fields / sizeof *fields); i++)
    if (!strcmp(fields[i].name, name)) {
      *dtype = fields[i].dtype;
      return i;
    }
  return -1;
}

Blocks *plan_blocks(Graph *g) {
  Blocks *b = xcalloc(1, sizeof *b);
  b->params = xcalloc(g->nnodes + 1, sizeof *b->params);
  b->states = xcalloc(g->nnodes + 1, sizeof *b->states);
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    // Keep blocks 16-float aligned so every tensor starts on a cache line.
    if (n->op == OP_param) {
      b->params[b->nparams++] = (BlockEntry){n, b->param_floats};
      b->param_floats += (type_numel(&n->type) + 15) / 16 * 16;
    } else if (n->op == OP_state) {
      b->states[b->nstates++] = (BlockEntry){n, b->state_floats};
      b->state_floats += (type_numel(&n->type) + 15) / 16 * 16;
    }
  }
  return b;
}

static int64_t block_offset(const BlockEntry *e, int n, Node *node, const char *what) {
  for (int i = 0; i < n; i++)
    if (!strcmp(e[i].node->name, node->name))
      return e[i].offset;
  fatal("%s '%s' of the evaluation graph is not in the training graph", what, node->name);
}

// Multiply-adds of a heavy kernel, to decide whether threads pay off.
static int64_t kernel_work(const Node *n) {
  const Type *t = &n->type, *a = &n->in[0]->type;
  switch (n->op) {
  case OP_conv2d:
  case OP_conv2d_grad_input: {
    const Type *w = &n->in[1]->type; // C*KH*KW per output (or per dy) element
    return type_numel(n->op == OP_conv2d ? t : a) * (type_numel(w) / w->dim[0]);
  }
  case OP_conv2d_grad_weight:
    return type_numel(t) * (type_numel(a) / a->dim[1]);
  case OP_linear:
  case OP_linear_grad_input:
    return type_numel(t) * a->dim[1];
  case OP_linear_grad_weight:
    return type_numel(t) * a->dim[0];
  default: { // pooling: one window per output
    const int64_t *k = node_attr(n, "kernel")->ints;
    bool grad = n->op == OP_maxpool2d_grad || n->op == OP_avgpool2d_grad;
    return type_numel(grad ? a : t) * k[0] * k[1];
  }
  }
}

int64_t kernel_flops(const Node *n) {
  switch (n->op) {
  case OP_conv2d:
  case OP_conv2d_grad_input:
  case OP_conv2d_grad_weight:
  case OP_linear:
  case OP_linear_grad_input:
  case OP_linear_grad_weight:
    return 2 * kernel_work(n);
  default:
    return 0;
  }
}

// The outer loop of a kernel, always over a dimension whose outputs are
// disjoint, and whether to split it across threads: only when the kernel
// does at least ~1M multiply-adds, as a parallel region costs microseconds
// (and much more when the cores are shared).
int64_t kernel_trip(const Node *n, bool *parallel) {
  const Type *t = &n->type;
  int64_t trip;
  switch (n->op) {
  case OP_conv2d:               // (n, o) planes
  case OP_conv2d_grad_input:    // (n, c) planes
  case OP_maxpool2d:
  case OP_avgpool2d:
  case OP_maxpool2d_grad:
  case OP_avgpool2d_grad:
  case OP_conv2d_grad_weight:   // (o, c) filters
    trip = t->dim[0] * t->dim[1];
    break;
  case OP_linear:               // rows of the output
  case OP_linear_grad_input:
  case OP_linear_grad_weight:
    trip = t->dim[0];
    break;
  default:
    // Other kernels run their whole loop nest in one call; elementwise ones
    // are a single flat loop over every element.
    *parallel = false;
    return op_info(n->op)->flags & OPF_ELEMENTWISE || n->op == OP_reshape || n->op == OP_assign
               ? type_numel(t)
               : 1;
  }
  *parallel = kernel_work(n) >= (1 << 20);
  return trip;
}

Node *gradient_of(Graph *g, Node *n) {
  size_t len = n->name ? strlen(n->name) : 0;
  if (len <= 5 || strcmp(n->name + len - 5, ".grad"))
    return NULL;
  Node *p = graph_find(g, xstrndup(n->name, len - 5));
  return p && p->op == OP_param ? p : NULL;
}

// The optimizer's part of a training graph: its update ops and the assigns
// that store their results (batch-norm statistics are the forward pass's).
static bool is_update(const Node *n) {
  switch (n->op) {
  case OP_sgd_buf:
  case OP_sgd_update:
  case OP_adam_moment1:
  case OP_adam_moment2:
  case OP_adam_update:
    return true;
  case OP_assign:
    return is_update(n->in[1]);
  default:
    return false;
  }
}

// Which nodes' kernels run in f: for a training step split in two, the
// update ops in FN_APPLY_STEP and all the others in FN_GRAD_STEP, whose
// gradients are the only values the second reads from the first.
static void choose_members(LoopFunc *f) {
  Graph *g = f->g;
  f->member = xcalloc(g->nnodes, sizeof *f->member);
  for (int i = 0; i < g->nnodes; i++) {
    Node *v = g->node[i];
    if (op_info(v->op)->flags & OPF_SOURCE)
      continue;
    bool update = is_update(v);
    f->member[i] = f->kind == FN_APPLY_STEP ? update : f->kind == FN_GRAD_STEP ? !update : true;
    if (f->kind == FN_APPLY_STEP && update)
      for (int j = 0; j < v->nin; j++) {
        Node *u = v->in[j];
        if (!(op_info(u->op)->flags & OPF_SOURCE) && !is_update(u) && !gradient_of(g, u))
          error_at(v->loc, "the optimizer reads parameters, their gradients and its state",
                   "optimizer op %s reads %%%s, which is neither", op_info(v->op)->name,
                   u->name ? u->name : "(unnamed)");
      }
  }
}

LoopFunc *lower_graph(Graph *g, FuncKind kind, const char *name, const Blocks *blocks) {
  graph_renumber(g);
  LoopFunc *f = xcalloc(1, sizeof *f);
  f->kind = kind;
  f->name = name;
  f->g = g;
  f->buf = xcalloc(g->nnodes, sizeof *f->buf);
  f->k = xcalloc(g->nnodes, sizeof *f->k);
  int n = g->nnodes;
  fold_relus(f, kind);
  choose_members(f);
  bool step_part = kind == FN_GRAD_STEP || kind == FN_APPLY_STEP;

  // Last reader of each buffer (through reshape aliases); INT_MAX for values
  // read at the end of the step (returned, or copied by an assign).
  int *last = xcalloc(n, sizeof *last);
  for (int i = 0; i < n; i++) {
    Node *v = g->node[i];
    last[i] = i;
    for (int j = 0; j < v->nin; j++) {
      int r = alias_root(f, v->in[j])->id;
      int use = v->op == OP_assign ? INT_MAX : i;
      if (use > last[r])
        last[r] = use;
    }
  }
  for (int i = 0; i < g->nret; i++)
    last[alias_root(f, g->ret[i])->id] = INT_MAX;

  // Free workspace slices, first fit, split on allocation.
  int64_t *free_off = xcalloc(2 * n + 2, sizeof *free_off);
  int64_t *free_len = xcalloc(2 * n + 2, sizeof *free_len);
  int nfree = 0;
  int64_t top = 0;

  for (int i = 0; i < n; i++) {
    Node *v = g->node[i];
    Buffer *b = &f->buf[i];
    b->bytes = type_bytes(&v->type);
    if (v->op == OP_const) {
      b->kind = BUF_CONST;
    } else if (kind == FN_SLOTS) {
      b->kind = BUF_SLOT;
      b->slot = i;
    } else if (v->op == OP_param) {
      b->kind = BUF_PARAM;
      b->offset = block_offset(blocks->params, blocks->nparams, v, "parameter");
    } else if (v->op == OP_state) {
      b->kind = BUF_STATE;
      b->offset = block_offset(blocks->states, blocks->nstates, v, "state");
    } else if (step_part && gradient_of(g, v)) {
      b->kind = BUF_GRAD;
      b->offset = block_offset(blocks->params, blocks->nparams, gradient_of(g, v), "parameter");
    } else if (step_part && !f->member[i] && !(op_info(v->op)->flags & OPF_SOURCE)) {
      b->kind = BUF_ABSENT;
    } else if (v->op == OP_input) {
      const char *nm = v->name ? v->name : "";
      DType dt;
      if (!strcmp(nm, "image") || !strcmp(nm, "label"))
        b->kind = BUF_ARG;
      else if (step_arg_field(nm, &dt) >= 0 && dt == v->type.dtype && v->type.rank == 0)
        b->kind = BUF_SCALAR;
      else if (step_arg_field(nm, &dt) >= 0)
        error_at(v->loc, "declare it as the runtime feeds it",
                 "input '%%%s' must be %s[]", nm, dt == DT_F32 ? "f32" : "i32");
      else
        error_at(v->loc, "the runtime feeds only %image, %label, %step, %seed, %lr and %momentum",
                 "input '%%%s' cannot be fed by the runtime", nm);
      b->arg = nm;
    } else if (v->op == OP_reshape || f->folded[i]) { // an alias: no copy, no kernel
      *b = f->buf[alias_root(f, v)->id];
      b->bytes = type_bytes(&v->type);
    } else if (v->op == OP_assign && step_part) {
      // The copy lands in the target itself.
      *b = f->buf[v->in[0]->id];
    } else {
      b->kind = BUF_WORKSPACE;
      int64_t need = (b->bytes + 63) / 64 * 64;
      int best = -1;
      for (int j = 0; j < nfree; j++)
        if (free_len[j] >= need && (best < 0 || free_len[j] < free_len[best]))
          best = j;
      if (best >= 0) {
        b->offset = free_off[best];
        free_off[best] += need;
        free_len[best] -= need;
      } else {
        b->offset = top;
        top += need;
      }
    }
    // Hand back the slices whose last reader is this node. The output was
    // placed first, so a kernel never reads and writes the same memory.
    for (int j = 0; j <= i; j++) {
      if (last[j] != i || f->buf[j].kind != BUF_WORKSPACE || alias_root(f, g->node[j]) != g->node[j])
        continue;
      free_off[nfree] = f->buf[j].offset;
      free_len[nfree] = (f->buf[j].bytes + 63) / 64 * 64;
      nfree++;
      last[j] = -1;
    }
    // Merge adjacent free slices so the list stays short.
    for (bool merged = true; merged;) {
      merged = false;
      for (int a = 0; a < nfree && !merged; a++)
        for (int c = 0; c < nfree && !merged; c++)
          if (a != c && free_off[a] + free_len[a] == free_off[c]) {
            free_len[a] += free_len[c];
            free_off[c] = free_off[nfree - 1];
            free_len[c] = free_len[nfree - 1];
            nfree--;
            merged = true;
          }
    }
  }
  f->workspace_bytes = top;

  // Kernels in graph order, assigns last.
  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < n; i++) {
      Node *v = g->node[i];
      if (op_info(v->op)->flags & OPF_SOURCE || (v->op == OP_reshape && kind != FN_SLOTS) ||
          f->folded[i] || !f->member[i])
        continue;
      if ((v->op == OP_assign) != (pass == 1))
        continue;
      Kernel *k = &f->k[f->nk++];
      k->node = v;
      k->deferred = v->op == OP_assign;
      k->trip = kernel_trip(v, &k->parallel);
      for (int u = i + 1; u < n; u++)
        if (f->folded[u] && g->node[u]->in[0] == v)
          k->relu = true;
    }
  return f;
}

static void print_buffer(FILE *out, const Buffer *b) {
  switch (b->kind) {
  case BUF_PARAM:
    fprintf(out, "params[%lld:%lld]", (long long)b->offset, (long long)(b->offset + b->bytes / 4));
    break;
  case BUF_STATE:
    fprintf(out, "state[%lld:%lld]", (long long)b->offset, (long long)(b->offset + b->bytes / 4));
    break;
  case BUF_GRAD:
    fprintf(out, "grads[%lld:%lld]", (long long)b->offset, (long long)(b->offset + b->bytes / 4));
    break;
  case BUF_ARG:
  case BUF_SCALAR:
    fprintf(out, "arg %s", b->arg);
    break;
  case BUF_WORKSPACE:
    fprintf(out, "workspace+%lld (%lld bytes)", (long long)b->offset, (long long)b->bytes);
    break;
  case BUF_CONST:
    fprintf(out, "const");
    break;
  case BUF_SLOT:
    fprintf(out, "slot %d", b->slot);
    break;
  case BUF_ABSENT:
    break;
  }
}

// Unnamed nodes print as print_graph numbers them: 0, 1, 2... in order.
static int *unnamed_number;

static void print_name(FILE *out, const Node *n) {
  if (n->name)
    fprintf(out, "%%%s", n->name);
  else
    fprintf(out, "%%%d", unnamed_number[n->id]);
}

// One line per buffer, then one per kernel:
//   kernel conv2d %conv1 f32[32,6,28,28] <- %image, %conv1.weight, %conv1.bias
//       parallel for i in [0, 192)
void print_loops(FILE *out, const LoopFunc *f) {
  Graph *g = f->g;
  unnamed_number = xcalloc(g->nnodes + 1, sizeof *unnamed_number);
  for (int i = 0, k = 0; i < g->nnodes; i++)
    if (!g->node[i]->name)
      unnamed_number[i] = k++;
  fprintf(out, "func @%s workspace_bytes=%lld {\n", f->name, (long long)f->workspace_bytes);
  // The buffers this function touches: its kernels' outputs and operands.
  bool *used = xcalloc(g->nnodes, sizeof *used);
  for (int i = 0; i < g->nnodes; i++)
    if (f->member[i] || (f->kind != FN_APPLY_STEP && g->nret && g->ret[0] == g->node[i])) {
      used[i] = true;
      for (int j = 0; j < g->node[i]->nin; j++)
        used[g->node[i]->in[j]->id] = true;
    }
  for (int i = 0; i < g->nnodes; i++) {
    Node *v = g->node[i];
    if (v->op == OP_assign || f->buf[i].kind == BUF_ABSENT || !used[i])
      continue;
    fprintf(out, "  buffer ");
    print_name(out, v);
    fprintf(out, " : %s = ", type_str(&v->type));
    if (v->op == OP_reshape || f->folded[i]) {
      fprintf(out, f->folded[i] ? "fused into " : "alias ");
      print_name(out, v->in[0]);
      fprintf(out, " : ");
    }
    print_buffer(out, &f->buf[i]);
    fprintf(out, "\n");
  }
  for (int i = 0; i < f->nk; i++) {
    const Kernel *k = &f->k[i];
    Node *v = k->node;
    fprintf(out, "  kernel %s%s ", op_info(v->op)->name, k->relu ? "+relu" : "");
    print_name(out, v);
    fprintf(out, " : %s <- ", type_str(&v->type));
    for (int j = 0; j < v->nin; j++) {
      fprintf(out, j ? ", " : "");
      print_name(out, v->in[j]);
    }
    if (k->parallel)
      fprintf(out, "\n    parallel for i in [0, %lld)\n", (long long)k->trip);
    else if (k->trip > 1)
      fprintf(out, "\n    for i in [0, %lld)%s\n", (long long)k->trip,
              k->deferred ? " at end of step" : "");
    else
      fprintf(out, "\n    once\n");
  }
  // The step's loss, the forward pass's logits; the optimizer returns nothing.
  fprintf(out, "  return");
  if (f->kind != FN_APPLY_STEP && g->nret) {
    fprintf(out, " ");
    print_name(out, g->ret[0]);
  }
  fprintf(out, "\n}\n");
}

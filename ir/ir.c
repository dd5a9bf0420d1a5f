// The graph IR: tensor types, the op table generated from ops.def, nodes with
// schema-checked attributes, and the graph container. A compiler run is short,
// so IR memory is never freed.
#include "ir.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static OpInfo ops[OP_COUNT] = {
#define OP(id, min, max, flags, schema) {#id, min, max, flags, schema, -1, {0}, {0}},
#include "ops.def"
#undef OP
};

// Splits "stride:I padding:I" into attribute names and kinds, once per op.
const OpInfo *op_info(OpKind op) {
  ir_assert(op >= 0 && op < OP_COUNT);
  OpInfo *info = &ops[op];
  if (info->nattrs >= 0)
    return info;
  info->nattrs = 0;
  for (const char *p = info->schema; *p;) {
    while (*p == ' ')
      p++;
    if (!*p)
      break;
    const char *colon = strchr(p, ':');
    ir_assert(colon && info->nattrs < MAX_ATTRS);
    info->attr_name[info->nattrs] = xstrndup(p, colon - p);
    info->attr_kind[info->nattrs] = colon[1];
    info->nattrs++;
    p = colon + 2;
  }
  return info;
}

int op_lookup(const char *name) {
  for (int i = 0; i < OP_COUNT; i++)
    if (strcmp(ops[i].name, name) == 0)
      return i;
  return -1;
}

int op_attr_index(OpKind op, const char *name) {
  const OpInfo *info = op_info(op);
  for (int i = 0; i < info->nattrs; i++)
    if (strcmp(info->attr_name[i], name) == 0)
      return i;
  return -1;
}

int64_t type_numel(const Type *t) {
  int64_t n = 1;
  for (int i = 0; i < t->rank; i++)
    n *= t->dim[i];
  return n;
}

bool type_eq(const Type *a, const Type *b) {
  if (a->dtype != b->dtype || a->rank != b->rank)
    return false;
  for (int i = 0; i < a->rank; i++)
    if (a->dim[i] != b->dim[i])
      return false;
  return true;
}

const char *dtype_name(DType dt) {
  static const char *const names[] = {[DT_F32] = "f32", [DT_I32] = "i32", [DT_F64] = "f64",
                                      [DT_BF16] = "bf16", [DT_F16] = "f16"};
  ir_assert((unsigned)dt < sizeof names / sizeof *names);
  return names[dt];
}

int dtype_bytes(DType dt) { return dt == DT_F64 ? 8 : dtype_is_16bit(dt) ? 2 : 4; }

// bf16: the top 16 bits of the float, rounded to nearest even by adding
// 0x7fff plus the lowest kept bit (c10::BFloat16's round_to_nearest_even);
// a NaN becomes the quiet NaN 0x7fc0. f16: the compiler's IEEE conversion.
float round_to_dtype(float x, DType dt) {
  if (dt == DT_BF16) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if (x != x)
      u = 0x7fc00000u;
    else
      u = (u + 0x7fffu + ((u >> 16) & 1)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
  }
  if (dt == DT_F16)
    return (float)(_Float16)x;
  return x;
}

char *type_str(const Type *t) {
  char buf[128];
  int n = snprintf(buf, sizeof buf, "%s[", dtype_name(t->dtype));
  for (int i = 0; i < t->rank; i++)
    n += snprintf(buf + n, sizeof buf - n, "%s%lld", i ? "," : "", (long long)t->dim[i]);
  snprintf(buf + n, sizeof buf - n, "]");
  return xstrdup(buf);
}

Type type_make(DType dt, int rank, const int64_t *dim) {
  ir_assert(rank >= 0 && rank <= MAX_RANK);
  Type t = {dt, rank, {0}};
  for (int i = 0; i < rank; i++)
    t.dim[i] = dim[i];
  return t;
}

Graph *graph_new(const char *name) {
  Graph *g = xcalloc(1, sizeof *g);
  g->name = xstrdup(name);
  return g;
}

Node *node_new(Graph *g, OpKind op, Node **in, int nin, Loc loc) {
  Node *n = xcalloc(1, sizeof *n);
  n->op = op;
  n->loc = loc;
  n->nin = nin;
  n->in = xcalloc(nin, sizeof *n->in);
  for (int i = 0; i < nin; i++)
    n->in[i] = in[i];
  if (g->nnodes == g->cap) {
    g->cap = g->cap ? 2 * g->cap : 64;
    g->node = realloc(g->node, sizeof *g->node * g->cap);
    if (!g->node)
      fatal("out of memory");
  }
  n->id = g->nnodes;
  g->node[g->nnodes++] = n;
  return n;
}

Node *graph_find(Graph *g, const char *name) {
  for (int i = 0; i < g->nnodes; i++)
    if (g->node[i]->name && strcmp(g->node[i]->name, name) == 0)
      return g->node[i];
  return NULL;
}

void graph_renumber(Graph *g) {
  for (int i = 0; i < g->nnodes; i++)
    g->node[i]->id = i;
}

// Depth-first post-order from each node in the current order: a graph that
// is already sorted keeps its order, and a node appended late moves just
// behind the last operand it needs.
static void visit(Node *n, char *state, Node **out, int *k) {
  if (state[n->id] == 2)
    return;
  if (state[n->id] == 1)
    internal_error(__FILE__, __LINE__, "cycle in graph");
  state[n->id] = 1;
  for (int i = 0; i < n->nin; i++)
    visit(n->in[i], state, out, k);
  state[n->id] = 2;
  out[(*k)++] = n;
}

void graph_toposort(Graph *g) {
  graph_renumber(g);
  char *state = xcalloc(g->nnodes, 1);
  Node **out = xcalloc(g->nnodes, sizeof *out);
  int k = 0;
  for (int i = 0; i < g->nnodes; i++)
    visit(g->node[i], state, out, &k);
  ir_assert(k == g->nnodes);
  memcpy(g->node, out, sizeof *out * k);
  free(out);
  free(state);
  graph_renumber(g);
}

void replace_all_uses(Graph *g, Node *from, Node *to) {
  for (int i = 0; i < g->nnodes; i++)
    for (int j = 0; j < g->node[i]->nin; j++)
      if (g->node[i]->in[j] == from)
        g->node[i]->in[j] = to;
  for (int i = 0; i < g->nret; i++)
    if (g->ret[i] == from)
      g->ret[i] = to;
}

int count_uses(Graph *g, Node *n) {
  int uses = 0;
  for (int i = 0; i < g->nnodes; i++)
    for (int j = 0; j < g->node[i]->nin; j++)
      uses += g->node[i]->in[j] == n;
  for (int i = 0; i < g->nret; i++)
    uses += g->ret[i] == n;
  return uses;
}

void graph_return(Graph *g, Node *n) {
  g->ret = realloc(g->ret, sizeof *g->ret * (g->nret + 1));
  if (!g->ret)
    fatal("out of memory");
  g->ret[g->nret++] = n;
}

static Attr *slot(Node *n, const char *name, char kind) {
  int i = op_attr_index(n->op, name);
  if (i < 0 || op_info(n->op)->attr_kind[i] != kind)
    internal_error(__FILE__, __LINE__, xformat("op %s has no attribute %s:%c", op_info(n->op)->name, name, kind));
  n->attr[i].kind = kind;
  return &n->attr[i];
}

void node_set_int(Node *n, const char *attr, int64_t v) { slot(n, attr, 'i')->i = v; }
void node_set_float(Node *n, const char *attr, double v) { slot(n, attr, 'f')->f = v; }
void node_set_str(Node *n, const char *attr, const char *v) { slot(n, attr, 's')->s = xstrdup(v); }

void node_set_ints(Node *n, const char *attr, const int64_t *v, int count) {
  Attr *a = slot(n, attr, 'I');
  a->n = count;
  a->ints = xcalloc(count, sizeof *a->ints);
  if (count)
    memcpy(a->ints, v, sizeof *v * count);
}

void node_set_floats(Node *n, const char *attr, const double *v, int count) {
  Attr *a = slot(n, attr, 'F');
  a->n = count;
  a->floats = xcalloc(count, sizeof *a->floats);
  if (count)
    memcpy(a->floats, v, sizeof *v * count);
}

const Attr *node_attr(const Node *n, const char *attr) {
  int i = op_attr_index(n->op, attr);
  if (i < 0)
    internal_error(__FILE__, __LINE__, xformat("op %s has no attribute %s", op_info(n->op)->name, attr));
  return &n->attr[i];
}

int64_t node_int(const Node *n, const char *attr) { return node_attr(n, attr)->i; }
double node_float(const Node *n, const char *attr) { return node_attr(n, attr)->f; }

const char *node_str(const Node *n, const char *attr) {
  const char *s = node_attr(n, attr)->s;
  return s ? s : "";
}

void node_fill_default_attrs(Node *n) {
  const OpInfo *info = op_info(n->op);
  for (int i = 0; i < info->nattrs; i++)
    if (!n->attr[i].kind) {
      n->attr[i].kind = info->attr_kind[i];
      if (info->attr_kind[i] == 's')
        n->attr[i].s = xstrdup("");
    }
}

void graph_set_attr(Graph *g, const char *name, Attr a) {
  for (int i = 0; i < g->nattrs; i++)
    if (strcmp(g->attr[i].name, name) == 0) {
      g->attr[i].attr = a;
      return;
    }
  g->attr = realloc(g->attr, sizeof *g->attr * (g->nattrs + 1));
  if (!g->attr)
    fatal("out of memory");
  g->attr[g->nattrs++] = (NamedAttr){xstrdup(name), a};
}

const Attr *graph_attr(const Graph *g, const char *name) {
  for (int i = 0; i < g->nattrs; i++)
    if (strcmp(g->attr[i].name, name) == 0)
      return &g->attr[i].attr;
  return NULL;
}

double graph_float(const Graph *g, const char *name, double dflt) {
  const Attr *a = graph_attr(g, name);
  return !a ? dflt : a->kind == 'i' ? (double)a->i : a->f;
}

int64_t graph_int(const Graph *g, const char *name, int64_t dflt) {
  const Attr *a = graph_attr(g, name);
  return a && a->kind == 'i' ? a->i : dflt;
}

const char *graph_str(const Graph *g, const char *name, const char *dflt) {
  const Attr *a = graph_attr(g, name);
  return a && a->kind == 's' ? a->s : dflt;
}

Attr attr_int(int64_t v) { return (Attr){.kind = 'i', .i = v}; }
Attr attr_float(double v) { return (Attr){.kind = 'f', .f = v}; }
Attr attr_str(const char *s) { return (Attr){.kind = 's', .s = xstrdup(s)}; }

Attr attr_ints(const int64_t *v, int n) {
  Attr a = {.kind = 'I', .n = n, .ints = xcalloc(n, sizeof(int64_t))};
  if (n)
    memcpy(a.ints, v, sizeof *v * n);
  return a;
}

Attr attr_floats(const double *v, int n) {
  Attr a = {.kind = 'F', .n = n, .floats = xcalloc(n, sizeof(double))};
  if (n)
    memcpy(a.floats, v, sizeof *v * n);
  return a;
}

Node *node_build(Graph *g, OpKind op, Loc loc, int nin, ...) {
  Node *in[8];
  ir_assert(nin <= 8);
  va_list ap;
  va_start(ap, nin);
  for (int i = 0; i < nin; i++)
    in[i] = va_arg(ap, Node *);
  va_end(ap);
  return node_new(g, op, in, nin, loc);
}

void graph_remove(Graph *g, Node *n) {
  int k = 0;
  for (int i = 0; i < g->nnodes; i++)
    if (g->node[i] != n)
      g->node[k++] = g->node[i];
  ir_assert(k == g->nnodes - 1);
  g->nnodes = k;
  graph_renumber(g);
}

bool remove_if_unused(Graph *g, Node *n) {
  if (n->op == OP_param || n->op == OP_state || (op_info(n->op)->flags & OPF_SIDE_EFFECT) ||
      count_uses(g, n))
    return false;
  graph_remove(g, n);
  return true;
}

void copy_attrs(Node *to, const Node *from) {
  const OpInfo *info = op_info(from->op);
  for (int i = 0; i < info->nattrs; i++) {
    int j = op_attr_index(to->op, info->attr_name[i]);
    if (j >= 0 && op_info(to->op)->attr_kind[j] == info->attr_kind[i])
      to->attr[j] = from->attr[i];
  }
}

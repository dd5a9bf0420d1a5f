// The verifier: the invariants every stage relies on. Operand counts and
// attribute kinds come from ops.def, shapes from shape.c's rules checked
// against each node's declared type; on top of those, definition before use,
// unique printable names and the rules for assign. It runs after parsing and
// after every pass, and dies at the first broken node, naming it.
#include "ir.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

// How the printer names n: %name, or %K for the K-th unnamed node.
static const char *label(Graph *g, const Node *n) {
  if (n->name)
    return xformat("%%%s", n->name);
  int k = 0;
  for (int i = 0; i < g->nnodes && g->node[i] != n; i++)
    k += !g->node[i]->name;
  return xformat("%%%d", k);
}

// Dies at n's source position, or, for a node made by a pass, names the graph.
static noreturn void fail(Graph *g, const Node *n, const char *hint, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static noreturn void fail(Graph *g, const Node *n, const char *hint, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (n->loc.file)
    error_at(n->loc, hint, "%s: %s", label(g, n), msg);
  error_at(n->loc, hint, "in graph %s: %s: %s", g->name, label(g, n), msg);
}

static bool in_graph(Graph *g, const Node *n) {
  return n && n->id >= 0 && n->id < g->nnodes && g->node[n->id] == n;
}

// Names must read back as the same name: [A-Za-z0-9_.]+, and not all digits,
// which the parser takes for an unnamed node.
static bool printable_name(const char *s) {
  bool digits_only = true;
  if (!*s)
    return false;
  for (; *s; s++) {
    if (!(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z') && !(*s >= '0' && *s <= '9') &&
        *s != '_' && *s != '.')
      return false;
    digits_only &= *s >= '0' && *s <= '9';
  }
  return !digits_only;
}

static int by_name(const void *a, const void *b) {
  const Node *x = *(Node *const *)a, *y = *(Node *const *)b;
  int c = strcmp(x->name, y->name);
  return c ? c : x->id - y->id;
}

static void check_names(Graph *g) {
  Node **named = xcalloc(g->nnodes, sizeof *named);
  int k = 0;
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    if (n->name && !printable_name(n->name))
      fail(g, n, "names use letters, digits, '_' and '.', and are not all digits",
           "invalid name");
    if (n->name)
      named[k++] = n;
  }
  qsort(named, k, sizeof *named, by_name);
  for (int i = 1; i < k; i++)
    if (strcmp(named[i - 1]->name, named[i]->name) == 0)
      fail(g, named[i], "every name is defined once; rename one of the nodes",
           "name already defined by node %d", named[i - 1]->id);
  free(named);
}

static const char *kind_name(char kind) {
  switch (kind) {
  case 'i': return "an integer";
  case 'f': return "a float";
  case 's': return "a string";
  case 'I': return "a list of integers";
  case 'F': return "a list of floats";
  }
  return "unset";
}

static void check_type(Graph *g, const Node *n) {
  const Type *t = &n->type;
  if ((t->dtype != DT_F32 && t->dtype != DT_I32 && !dtype_is_16bit(t->dtype)) || t->rank < 0 ||
      t->rank > MAX_RANK)
    fail(g, n, NULL, "malformed type (dtype %d, rank %d)", (int)t->dtype, t->rank);
  for (int i = 0; i < t->rank; i++)
    if (t->dim[i] < 1)
      fail(g, n, NULL, "%s has a dimension that is not positive", type_str(t));
}

static void check_node(Graph *g, Node *n, Node **assigned_by) {
  const OpInfo *info = op_info(n->op);
  // The runtime feeds inputs and saves params and state by name; a const
  // carries its value and may stay unnamed.
  if ((n->op == OP_input || n->op == OP_param || n->op == OP_state) && !n->name)
    fail(g, n, "give it a name, like %image or %fc1.weight", "%s node has no name",
         info->name);

  if (n->nin < info->min_in || n->nin > info->max_in) {
    if (info->min_in == info->max_in)
      fail(g, n, NULL, "%s takes %d operand%s, got %d", info->name, info->min_in,
           info->min_in == 1 ? "" : "s", n->nin);
    fail(g, n, NULL, "%s takes %d to %d operands, got %d", info->name, info->min_in,
         info->max_in, n->nin);
  }
  for (int i = 0; i < n->nin; i++) {
    Node *a = n->in[i];
    if (!in_graph(g, a))
      fail(g, n, NULL, "operand %d is not a node of graph %s", i, g->name);
    if (a->id >= n->id)
      fail(g, n, "nodes must be in topological order; a pass that appends out of order "
                 "calls graph_toposort",
           "operand %d (%s) is used before it is defined", i, label(g, a));
  }

  for (int i = 0; i < info->nattrs; i++) {
    const Attr *a = &n->attr[i];
    if (a->kind != info->attr_kind[i])
      fail(g, n, "every attribute of the op's schema (ir/ops.def) is set",
           "%s: attribute '%s' is %s, expected %s", info->name, info->attr_name[i],
           kind_name(a->kind), kind_name(info->attr_kind[i]));
    bool no_elems = (a->kind == 'I' && !a->ints) || (a->kind == 'F' && !a->floats);
    if (a->n < 0 || (a->n > 0 && no_elems))
      internal_error(__FILE__, __LINE__, xformat("%s: attribute '%s' is a malformed list",
                                                 label(g, n), info->attr_name[i]));
  }
  check_type(g, n);

  if (n->op == OP_assign) {
    Node *target = n->in[0];
    if (target->op != OP_param && target->op != OP_state)
      fail(g, n, "only param and state nodes hold values across steps",
           "assign target %s is %s, not a param or state", label(g, target),
           op_info(target->op)->name);
    if (assigned_by[target->id])
      fail(g, n, "an assign takes effect after the step; compute one new value per target",
           "%s is assigned twice (also by %s)", label(g, target),
           label(g, assigned_by[target->id]));
    assigned_by[target->id] = n;
  }

  Type t;
  const char *err = infer_type(n, &t);
  if (err)
    fail(g, n, NULL, "%s: %s", info->name, err);
  if (!type_eq(&t, &n->type))
    fail(g, n, "the declared type must be the one the shape rule (ir/shape.c) computes",
         "%s declares %s but its operands give %s", info->name, type_str(&n->type),
         type_str(&t));
}

void verify_graph(Graph *g) {
  graph_renumber(g);
  check_names(g);
  Node **assigned_by = xcalloc(g->nnodes, sizeof *assigned_by);
  for (int i = 0; i < g->nnodes; i++)
    check_node(g, g->node[i], assigned_by);
  free(assigned_by);
  for (int i = 0; i < g->nret; i++)
    if (!in_graph(g, g->ret[i]))
      error_at((Loc){0}, NULL, "in graph %s: return value %d is not a node of the graph",
               g->name, i);
}

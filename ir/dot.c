// The graph as a Graphviz digraph (xentcc --emit=dot | dot -Tsvg): one box per
// node with its name, op and type, an edge from each operand to its user.
// Drawn left to right in three clusters stacked bottom up, forward, backward
// and optimizer, one column per layer: the forward ops flow right to the
// loss, their gradients flow back left above them, and each parameter, its
// gradient and its update share the column of the layer that uses it.
#include "ir.h"

#include <stdlib.h>
#include <string.h>

// Text inside a Graphviz "string": only '"' and '\' need escaping.
static void dot_escaped(FILE *out, const char *s) {
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      fputc('\\', out);
    fputc(*s, out);
  }
}

static const char *style(const Node *n) {
  switch (n->op) {
  case OP_input: return "shape=ellipse, fillcolor=\"#cde4ff\"";
  case OP_param: return "shape=ellipse, fillcolor=\"#ffe49a\"";
  case OP_state: return "shape=ellipse, fillcolor=\"#e0e0e0\"";
  case OP_const: return "shape=note, fillcolor=\"#f4f4f4\"";
  case OP_assign: return "style=\"rounded,dashed\", color=\"#7a4fb0\"";
  default: return "fillcolor=white";
  }
}

typedef enum { FORWARD, BACKWARD, OPTIMIZER, NPARTS } Part;

static const struct {
  const char *name, *label, *color;
} parts[NPARTS] = {
    {"forward", "forward (left to right)", "#f3f8ff"},
    {"backward", "backward (autodiff: the gradients, right to left)", "#fff4f0"},
    {"optimizer", "optimizer (parameter updates)", "#f2fbf2"},
};

static bool is_grad_op(const Node *n) {
  const char *s = op_info(n->op)->name;
  size_t len = strlen(s);
  return len > 5 && !strcmp(s + len - 5, "_grad");
}

static bool is_source(const Node *n) { return op_info(n->op)->flags & OPF_SOURCE; }

// The parameter an optimizer node updates, or NULL.
static Node *updated_param(Node *n) {
  for (int j = 0; j < n->nin; j++)
    if (n->in[j]->op == OP_param)
      return n->in[j];
  for (int j = 0; j < n->nin; j++) // an assign of a moment: the param its value updates
    if (is_update(n->in[j])) {
      Node *p = updated_param(n->in[j]);
      if (p)
        return p;
    }
  return NULL;
}

// The parameter whose gradient n is (autodiff names it PARAM.grad), or NULL.
static Node *gradient_of(Graph *g, const Node *n) {
  size_t len = n->name ? strlen(n->name) : 0;
  if (len <= 5 || strcmp(n->name + len - 5, ".grad"))
    return NULL;
  char *name = xstrndup(n->name, len - 5);
  Node *p = graph_find(g, name);
  free(name);
  return p && p->op == OP_param ? p : NULL;
}

// Each node's part and column. Forward ops: their depth among forward ops
// (1, 2, ...). Backward ops mirror it: the k-th op back from the loss sits in
// the column of the k-th forward op before it. A parameter sits in the
// column of the first op that uses it, and its gradient and its updates in
// the parameter's column. Sources and constants join their first user.
static void layout(Graph *g, Part *part, int *col) {
  int n = g->nnodes;
  bool *fwd = xcalloc(n + 1, sizeof *fwd);
  int *depth = xcalloc(n + 1, sizeof *depth);
  // Forward: what the returned values are computed from, and what only
  // forward values feed (batch-norm running statistics), but no gradient.
  for (int i = 0; i < g->nret; i++)
    fwd[g->ret[i]->id] = true;
  for (int i = n - 1; i >= 0; i--)
    if (fwd[i])
      for (int j = 0; j < g->node[i]->nin; j++)
        fwd[g->node[i]->in[j]->id] = true;
  for (int i = 0; i < n; i++) {
    Node *v = g->node[i];
    if (is_source(v) || is_update(v) || is_grad_op(v))
      continue;
    bool all = true;
    for (int j = 0; j < v->nin; j++)
      if (!is_source(v->in[j]))
        all &= fwd[v->in[j]->id];
    fwd[i] |= all;
  }
  int loss_col = 1;
  for (int i = 0; i < n; i++) {
    Node *v = g->node[i];
    part[i] = is_update(v) ? OPTIMIZER : fwd[i] ? FORWARD : BACKWARD;
    col[i] = -1;
    if (is_source(v))
      continue;
    int d = 0;
    for (int j = 0; j < v->nin; j++) {
      Node *u = v->in[j];
      if (!is_source(u) && (part[u->id] == BACKWARD) == (part[i] == BACKWARD))
        d = depth[u->id] > d ? depth[u->id] : d;
    }
    depth[i] = d + 1;
    if (part[i] == FORWARD) {
      col[i] = depth[i];
      loss_col = col[i] > loss_col ? col[i] : loss_col;
    }
  }
  // Parameters: the column of their first forward user.
  for (int i = 0; i < n; i++) {
    Node *v = g->node[i];
    for (int j = 0; j < v->nin; j++) {
      Node *p = v->in[j];
      if (p->op == OP_param && part[i] == FORWARD && col[p->id] < 0)
        col[p->id] = col[i];
    }
  }
  for (int i = 0; i < n; i++) {
    Node *v = g->node[i], *p;
    if (part[i] == BACKWARD && !is_source(v)) {
      col[i] = loss_col + 1 - depth[i];
      if ((p = gradient_of(g, v)) && col[p->id] >= 0)
        col[i] = col[p->id];
      col[i] = col[i] < 1 ? 1 : col[i];
    } else if (part[i] == OPTIMIZER) {
      p = updated_param(v);
      col[i] = p && col[p->id] >= 0 ? col[p->id] : loss_col + 1;
    }
  }
  // Sources without a column, and constants: with their first user.
  for (int i = 0; i < n; i++) {
    Node *v = g->node[i];
    if (!is_source(v) || col[i] >= 0)
      continue;
    part[i] = FORWARD;
    col[i] = 0;
    for (int k = i + 1; k < n; k++) {
      bool uses = false;
      for (int j = 0; j < g->node[k]->nin; j++)
        uses |= g->node[k]->in[j] == v;
      if (uses) {
        part[i] = part[k];
        col[i] = v->op == OP_const || v->op == OP_state || v->op == OP_param ? col[k] : col[k] - 1;
        col[i] = col[i] < 0 ? 0 : col[i];
        break;
      }
    }
  }
  // The return sink, one column past the loss.
  col[n] = loss_col + 1;
  free(fwd);
  free(depth);
}

// A scalar input (%lr, %opt_step, %step, ...) feeds ops in many columns: it
// is drawn once per column and part that uses it, as "n<id>c<column>p<part>",
// instead of once with edges across the whole picture.
static bool is_scalar_input(const Node *n) { return n->op == OP_input && n->type.rank == 0; }

static void node_id(FILE *out, const Node *v, int user_col, int user_part) {
  if (is_scalar_input(v))
    fprintf(out, "n%dc%dp%d", v->id, user_col, user_part);
  else
    fprintf(out, "n%d", v->id);
}

static void print_node(FILE *out, const Node *n, int user_col, int user_part, int number,
                       bool returned) {
  fputs("    ", out);
  node_id(out, n, user_col, user_part);
  // Three centred lines: %name, op, type.
  fputs(" [label=\"%", out);
  dot_escaped(out, n->name ? n->name : xformat("%d", number));
  fprintf(out, "\\n%s\\n%s\", %s", op_info(n->op)->name, type_str(&n->type), style(n));
  if (returned)
    fputs(", color=\"#d62728\", penwidth=2.5", out);
  fputs("];\n", out);
}

// Does v feed a node of part p in column c?
static bool feeds(Graph *g, const Node *v, const Part *part, const int *col, int p, int c) {
  for (int k = v->id + 1; k < g->nnodes; k++)
    for (int j = 0; j < g->node[k]->nin; j++)
      if (g->node[k]->in[j] == v && part[k] == p && col[k] == c)
        return true;
  return false;
}

void print_dot(FILE *out, Graph *g) {
  graph_renumber(g);
  int n = g->nnodes;
  bool *returned = xcalloc(n + 1, sizeof *returned);
  for (int i = 0; i < g->nret; i++)
    returned[g->ret[i]->id] = true;
  Part *part = xcalloc(n + 1, sizeof *part);
  int *col = xcalloc(n + 1, sizeof *col);
  layout(g, part, col);
  int ncols = 0;
  for (int i = 0; i <= n; i++)
    ncols = col[i] + 1 > ncols ? col[i] + 1 : ncols;
  // Unnamed values are numbered in graph order, as print_graph numbers them.
  int *number = xcalloc(n + 1, sizeof *number);
  for (int i = 0, k = 0; i < n; i++)
    number[i] = g->node[i]->name ? -1 : k++;

  fputs("digraph \"", out);
  dot_escaped(out, g->name);
  fputs("\" {\n"
        "  rankdir=LR;\n"
        "  newrank=true;\n"
        "  nodesep=0.15;\n"
        "  ranksep=0.3;\n"
        "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=10];\n"
        "  edge [color=\"#555555\", arrowsize=0.6];\n",
        out);
  // The order of the clusters: an invisible node in each, and edges to
  // them from one more with ordering=out. Graphviz keeps them in this
  // order, optimizer at the top, in every graph; left to itself it puts
  // them in any order.
  bool present[NPARTS] = {false};
  for (int p = 0; p < NPARTS; p++) {
    present[p] = p == FORWARD && g->nret;
    for (int i = 0; i < n && !present[p]; i++)
      present[p] = part[i] == p && !is_scalar_input(g->node[i]);
  }
  const char *invisible = "style=invis, label=\"\", width=0, height=0, fixedsize=true";
  fprintf(out, "  order [%s, ordering=out];\n", invisible);
  for (int p = NPARTS - 1; p >= 0; p--)
    if (present[p])
      fprintf(out, "  order -> %s [style=invis];\n", parts[p].name);
  for (int p = NPARTS - 1; p >= 0; p--) {
    if (!present[p])
      continue;
    fprintf(out,
            "  subgraph cluster_%s {\n"
            "    label=\"%s\"; labeljust=l; fontname=\"Helvetica-Bold\"; fontsize=14;\n"
            "    style=filled; color=\"#bbbbbb\"; fillcolor=\"%s\";\n"
            "    %s [%s];\n",
            parts[p].name, parts[p].label, parts[p].color, parts[p].name, invisible);
    for (int i = 0; i < n; i++) {
      Node *v = g->node[i];
      if (!is_scalar_input(v)) {
        if (part[i] == p)
          print_node(out, v, 0, 0, number[i], returned[i]);
        continue;
      }
      for (int c = 0; c < ncols; c++)
        if (feeds(g, v, part, col, p, c))
          print_node(out, v, c, p, number[i], returned[i]);
    }
    // Returned values flow into one sink, numbered in return order.
    if (p == FORWARD && g->nret)
      fputs("    return [label=\"return\", shape=doublecircle, style=filled, "
            "fillcolor=\"#ffd6d6\", color=\"#d62728\"];\n",
            out);
    fputs("  }\n", out);
  }
  // Edges; one that runs against the columns (a gradient flowing back) or
  // within one does not rank its ends.
  for (int i = 0; i < n; i++) {
    Node *v = g->node[i];
    for (int j = 0; j < v->nin; j++) {
      Node *u = v->in[j];
      fputs("  ", out);
      node_id(out, u, col[i], part[i]);
      fprintf(out, " -> n%d", i);
      if (!is_scalar_input(u) && col[u->id] >= col[i])
        fputs(" [constraint=false]", out);
      fputs(";\n", out);
    }
  }
  for (int i = 0; i < g->nret; i++)
    fprintf(out, "  n%d -> return [color=\"#d62728\", penwidth=2, label=\"%d\"];\n",
            g->ret[i]->id, i);
  // The columns: each a rank of its own, in order.
  for (int c = 0; c < ncols; c++) {
    bool any = c == col[n] && g->nret;
    for (int i = 0; i < n && !any; i++)
      any = col[i] == c && !is_scalar_input(g->node[i]);
    if (!any)
      continue;
    fputs("  { rank=same;", out);
    for (int i = 0; i < n; i++) {
      Node *v = g->node[i];
      if (is_scalar_input(v)) {
        for (int p = 0; p < NPARTS; p++)
          if (feeds(g, v, part, col, p, c)) {
            fputs(" ", out);
            node_id(out, v, c, p);
            fputs(";", out);
          }
      } else if (col[i] == c) {
        fprintf(out, " n%d;", i);
      }
    }
    if (c == col[n] && g->nret)
      fputs(" return;", out);
    fputs(" }\n", out);
  }
  fputs("}\n", out);
  free(returned), free(part), free(col), free(number);
}

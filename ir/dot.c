// The graph as a Graphviz digraph (xentcc-opt --emit=dot | dot -Tsvg): one box
// per node with its name, op and type, an edge from each operand to its user.
// Sources are coloured ellipses, assigns dashed, returned values drawn in red.
#include "ir.h"

#include <stdlib.h>

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

void print_dot(FILE *out, Graph *g) {
  graph_renumber(g);
  bool *returned = xcalloc(g->nnodes, sizeof *returned);
  for (int i = 0; i < g->nret; i++)
    returned[g->ret[i]->id] = true;

  fputs("digraph \"", out);
  dot_escaped(out, g->name);
  fputs("\" {\n"
        "  rankdir=TB;\n"
        "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=10];\n"
        "  edge [color=\"#555555\", arrowsize=0.6];\n",
        out);
  int unnamed = 0;
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    const char *name = n->name ? n->name : xformat("%d", unnamed++);
    // Three centred lines: %name, op, type.
    fprintf(out, "  n%d [label=\"%%", i);
    dot_escaped(out, name);
    fprintf(out, "\\n%s\\n%s\", %s", op_info(n->op)->name, type_str(&n->type), style(n));
    if (returned[i])
      fputs(", color=\"#d62728\", penwidth=2.5", out);
    fputs("];\n", out);
  }
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    for (int j = 0; j < n->nin; j++)
      fprintf(out, "  n%d -> n%d;\n", n->in[j]->id, i);
  }
  // Returned values flow into one sink, numbered in return order.
  if (g->nret) {
    fputs("  return [label=\"return\", shape=doublecircle, style=filled, "
          "fillcolor=\"#ffd6d6\", color=\"#d62728\"];\n",
          out);
    for (int i = 0; i < g->nret; i++)
      fprintf(out, "  n%d -> return [color=\"#d62728\", penwidth=2, label=\"%d\"];\n",
              g->ret[i]->id, i);
  }
  fputs("}\n", out);
  free(returned);
}

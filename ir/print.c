// The textual graph IR, one node per line:
//
//   graph cifar10 {
//     attr optimizer = "sgd"
//     %image = input : f32[32,3,32,32]
//     %3 = conv2d(%image, %conv1.weight, %conv1.bias) {stride = [1, 1], padding = [0, 0]} : f32[32,6,28,28] loc("models/cifar10.yaml":7:5)
//     return %loss
//   }
//
// Unnamed nodes print as %0, %1, ... in order; the parser reads numeric names
// back as unnamed, so printing what was parsed gives the same text.
#include "ir.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

char *format_float(double v) {
  if (isnan(v))
    return xstrdup("nan");
  if (isinf(v))
    return xstrdup(v < 0 ? "-inf" : "inf");
  char buf[64];
  for (int prec = 6; prec <= 17; prec++) {
    snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (strtod(buf, NULL) == v)
      break;
  }
  if (!strpbrk(buf, ".e"))
    strcat(buf, ".0");
  return xstrdup(buf);
}

static void print_string(FILE *out, const char *s) {
  fputc('"', out);
  for (; *s; s++) {
    if (*s == '\n')
      fputs("\\n", out);
    else if (*s == '\t')
      fputs("\\t", out);
    else {
      if (*s == '"' || *s == '\\')
        fputc('\\', out);
      fputc(*s, out);
    }
  }
  fputc('"', out);
}

static void print_attr(FILE *out, const Attr *a) {
  switch (a->kind) {
  case 'i':
    fprintf(out, "%lld", (long long)a->i);
    return;
  case 'f':
    fputs(format_float(a->f), out);
    return;
  case 's':
    print_string(out, a->s ? a->s : "");
    return;
  case 'I':
  case 'F':
    fputc('[', out);
    for (int i = 0; i < a->n; i++) {
      if (i)
        fputs(", ", out);
      if (a->kind == 'I')
        fprintf(out, "%lld", (long long)a->ints[i]);
      else
        fputs(format_float(a->floats[i]), out);
    }
    fputc(']', out);
    return;
  }
  unreachable();
}

static void print_name(FILE *out, const Node *n) {
  if (n->name)
    fprintf(out, "%%%s", n->name);
  else
    fprintf(out, "%%%d", (int)(intptr_t)n->aux);
}

void print_graph(FILE *out, Graph *g) {
  graph_renumber(g);
  int unnamed = 0;
  for (int i = 0; i < g->nnodes; i++)
    g->node[i]->aux = g->node[i]->name ? NULL : (void *)(intptr_t)unnamed++;

  fprintf(out, "graph %s {\n", g->name);
  for (int i = 0; i < g->nattrs; i++) {
    fprintf(out, "  attr %s = ", g->attr[i].name);
    print_attr(out, &g->attr[i].attr);
    fputc('\n', out);
  }
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    const OpInfo *info = op_info(n->op);
    fputs("  ", out);
    print_name(out, n);
    fprintf(out, " = %s", info->name);
    if (n->nin) {
      fputc('(', out);
      for (int j = 0; j < n->nin; j++) {
        if (j)
          fputs(", ", out);
        print_name(out, n->in[j]);
      }
      fputc(')', out);
    }
    if (info->nattrs) {
      fputs(" {", out);
      for (int j = 0; j < info->nattrs; j++) {
        fprintf(out, "%s%s = ", j ? ", " : "", info->attr_name[j]);
        print_attr(out, &n->attr[j]);
      }
      fputc('}', out);
    }
    fprintf(out, " : %s", type_str(&n->type));
    if (n->loc.file) {
      fputs(" loc(", out);
      print_string(out, n->loc.file);
      fprintf(out, ":%d:%d)", n->loc.line, n->loc.col);
    }
    fputc('\n', out);
  }
  if (g->nret) {
    fputs("  return ", out);
    for (int i = 0; i < g->nret; i++) {
      if (i)
        fputs(", ", out);
      print_name(out, g->ret[i]);
    }
    fputc('\n', out);
  }
  fputs("}\n", out);
  for (int i = 0; i < g->nnodes; i++)
    g->node[i]->aux = NULL;
}

// xentcc-opt: reads textual graph IR, runs the named passes, prints the
// result. It is what the golden pass tests run, as LLVM's `opt` is. Passes
// named after "lower" run on the loop IR of the graph (one function, every
// node in its own buffer) and the loop program is printed instead.
#include "ir.h"
#include "loop.h"

#include <stdlib.h>
#include <string.h>

static void usage(FILE *out) {
  fputs("usage: xentcc-opt FILE.xir|- --passes=a,b,... [options]\n"
        "\n"
        "options:\n"
        "  --passes=LIST          comma-separated passes to run in order (may be empty);\n"
        "                         passes after 'lower' run on the loop IR\n"
        "  --print-after-all      print the IR after every pass to stderr\n"
        "  --print-after=PASS     print the IR after PASS to stderr\n"
        "  --disable-pass=PASS    skip PASS (repeatable)\n"
        "  --emit=ir|dot          print the result as IR (default) or as a Graphviz graph\n"
        "  --list-passes          list the passes and exit\n",
        out);
}

int main(int argc, char **argv) {
  const char *input = NULL, *passes = NULL, *emit = "ir";
  PipelineOptions po = {.dump = stderr};
  const char **disabled = xcalloc(argc, sizeof *disabled);

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--list-passes")) {
      int n;
      const Pass *p = pass_list(&n);
      for (int j = 0; j < n; j++)
        printf("  %-18s %s\n", p[j].name, p[j].help);
      return 0;
    } else if (!strncmp(a, "--passes=", 9)) {
      passes = a + 9;
    } else if (!strcmp(a, "--print-after-all")) {
      po.print_after = "all";
    } else if (!strncmp(a, "--print-after=", 14)) {
      po.print_after = a + 14;
    } else if (!strncmp(a, "--disable-pass=", 15)) {
      disabled[po.ndisabled++] = a + 15;
    } else if (!strncmp(a, "--emit=", 7)) {
      emit = a + 7;
      if (strcmp(emit, "ir") && strcmp(emit, "dot"))
        fatal("--emit=%s: xentcc-opt emits ir or dot", emit);
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "xentcc-opt: error: unknown option '%s'\n", a);
      usage(stderr);
      return 1;
    } else if (input) {
      fatal("more than one input file given ('%s' and '%s')", input, a);
    } else {
      input = a;
    }
  }
  po.disabled = disabled;
  if (!input || !passes) {
    usage(stderr);
    return 1;
  }

  const char *path = strcmp(input, "-") ? input : "<stdin>";
  Graph *g = parse_graph(path, read_file(input, "IR file"));
  verify_graph(g);

  // Split "a,b,c" into names; an empty list runs nothing (a round trip).
  char *list = xstrdup(passes);
  const char **names = xcalloc(strlen(list) + 1, sizeof *names);
  int count = 0;
  for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ","))
    names[count++] = tok;
  int nlower = count;
  for (int i = 0; i < count; i++)
    if (!strcmp(names[i], "lower")) {
      nlower = i;
      break;
    }
  run_pipeline(g, names, nlower, &po);
  if (nlower < count) {
    if (strcmp(emit, "ir"))
      fatal("--emit=%s: after 'lower' xentcc-opt prints the loop IR", emit);
    if (g->nret == 0)
      fatal("graph %s returns nothing: 'lower' needs its loss or its logits (add a return line)",
            g->name);
    bool train = g->ret[0]->type.rank == 0;
    LProgram *lp = train ? lower_program(g, NULL, 3) : lower_program(NULL, g, 3);
    run_loop_pipeline(lp, names + nlower + 1, count - nlower - 1, &po);
    print_lprogram(stdout, lp);
    return 0;
  }

  if (!strcmp(emit, "dot"))
    print_dot(stdout, g);
  else
    print_graph(stdout, g);
  return 0;
}

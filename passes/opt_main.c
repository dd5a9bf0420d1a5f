// xentcc-opt: reads textual graph IR, runs the named passes, prints the
// result. It is what the golden pass tests run, as LLVM's `opt` is. Passes
// named after "lower" run on the loop IR of the graph (one function, every
// node in its own buffer) and the loop program is printed instead.
#include "args.h"
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
        "  --target=avx2|avx512   the processor the loop passes schedule for (default:\n"
        "                         avx2, whatever this machine has)\n"
        "  --list-passes          list the passes and exit\n"
        "  --version              the version of xentcc\n",
        out);
}

int main(int argc, char **argv) {
  const char *input = NULL, *passes = NULL, *emit = "ir";
  const LTarget *target = &ltarget_avx2;
  PipelineOptions po = {.dump = stderr};
  const char **disabled = xcalloc(argc, sizeof *disabled);

  Args a = {.argc = argc,
            .argv = argv,
            .i = 1,
            .usage = "usage: xentcc-opt FILE.xir|- --passes=a,b,... [options] (--help lists them)"};
  for (; a.i < argc; a.i++) {
    const char *arg = argv[a.i];
    if (arg_flag(&a, "-h") || arg_flag(&a, "--help")) {
      usage(stdout);
      return 0;
    } else if (arg_flag(&a, "--version")) {
      printf("xentcc-opt: xentcc %s\n", xentcc_version());
      return 0;
    } else if (arg_flag(&a, "--list-passes")) {
      int n;
      const Pass *p = pass_list(&n);
      for (int j = 0; j < n; j++)
        printf("  %-18s %s\n", p[j].name, p[j].help);
      return 0;
    } else if (arg_opt(&a, "--passes")) {
      passes = a.value;
    } else if (arg_flag(&a, "--print-after-all")) {
      po.print_after = "all";
    } else if (arg_opt(&a, "--print-after")) {
      po.print_after = a.value;
    } else if (arg_opt(&a, "--disable-pass")) {
      disabled[po.ndisabled++] = a.value;
    } else if (arg_opt(&a, "--emit")) {
      emit = a.value;
      if (strcmp(emit, "ir") && strcmp(emit, "dot"))
        arg_die(&a, "use --emit=ir or --emit=dot", "--emit=%s: xentcc-opt emits ir or dot", emit);
    } else if (arg_opt(&a, "--target")) {
      target = ltarget_find(a.value);
      if (!target)
        arg_die(&a, "use --target=avx2 or --target=avx512", "--target=%s: unknown target",
                a.value);
    } else if (arg[0] == '-' && arg[1]) {
      arg_unknown(&a);
    } else if (input) {
      arg_die(&a, NULL, "more than one input file given ('%s' and '%s')", input, arg);
    } else {
      input = arg;
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
    lp->target = *target;
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

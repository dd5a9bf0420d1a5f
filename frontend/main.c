// xentcc: compiles a YAML model into training and evaluation executables.
// The driver only sequences the stages: load_model (frontend/) -> the
// training and evaluation pass pipelines (passes/) -> codegen (codegen/).
#include "loop.h"

#include <stdlib.h>
#include <string.h>

static const char *const train_pipeline[] = {
    "lint-losses", "fuse-softmax-ce", "fuse-sigmoid-bce", "autocast", "autodiff",
    "optimizer",   "constant-fold",   "cse",              "dce",
};
static const char *const eval_pipeline[] = {
    "eval-mode", "fuse-softmax-ce", "fuse-sigmoid-bce", "autocast", "constant-fold", "cse", "dce",
};

static void usage(FILE *out) {
  fputs("usage: xentcc MODEL.yaml [-o NAME] [options]\n"
        "\n"
        "Compiles MODEL.yaml into NAME-train and NAME-eval (NAME defaults to the\n"
        "YAML file's base name).\n"
        "\n"
        "options:\n"
        "  -o NAME                output name: NAME-train, NAME-eval (or NAME.ll, ... with --emit)\n"
        "  --emit=KIND            stop early and print or write KIND instead of executables:\n"
        "                         ir (graph IR), dot (Graphviz), loops (loop IR), llvm, asm, obj\n"
        "  --stage=STAGE          which graph --emit=ir|dot shows: model (as written, the\n"
        "                         default), train (the training step) or eval\n"
        "  --stop-after=PASS      end the pipeline after PASS (with --stage=train|eval)\n"
        "  --print-after-all      print the IR after every pass to stderr\n"
        "  --print-after=PASS     print the IR after PASS (graph passes, 'lower', loop passes)\n"
        "  --disable-pass=PASS    skip PASS (repeatable)\n"
        "  --list-passes          list the passes and exit\n"
        "  --list-options         list every option a model file accepts (with MODEL.yaml:\n"
        "                         the options that model uses) and exit\n"
        "  -O0 -O1 -O2 -O3        optimization level (default -O3): -O0 runs the plain loop\n"
        "                         nests through LLVM's O0; -O1 and up schedule them (tiles,\n"
        "                         vectors, threads), then LLVM's O1, or at -O2 and -O3 its O2\n"
        "                         function passes less those scheduled kernels never need\n"
        "  -mcpu=CPU              target CPU (default: native, the host)\n"
        "  --time                 print where the compile time went (wall and CPU seconds\n"
        "                         per phase, and per LLVM module) to stderr\n"
        "  -h, --help             this text\n",
        out);
}

static bool starts(const char *s, const char *prefix, const char **rest) {
  size_t n = strlen(prefix);
  if (strncmp(s, prefix, n) != 0)
    return false;
  *rest = s + n;
  return true;
}

static void list_passes(void) {
  int n;
  const Pass *p = pass_list(&n);
  for (int i = 0; i < n; i++)
    printf("  %-18s %s\n", p[i].name, p[i].help);
}

// Runs `pipeline` up to and including stop_after (all of it when NULL).
static void run_until(Graph *g, const char *const *pipeline, int count, const char *stop_after,
                      const PipelineOptions *opt) {
  int n = count;
  if (stop_after) {
    if (!pass_find(stop_after))
      fatal("--stop-after=%s: no such pass (xentcc --list-passes shows them)", stop_after);
    for (n = 0; n < count && strcmp(pipeline[n], stop_after) != 0; n++)
      ;
    if (n == count)
      fatal("--stop-after=%s: that pass is not in this pipeline", stop_after);
    n++;
  }
  run_pipeline(g, pipeline, n, opt);
}

static Graph *clone_graph(Graph *g) {
  // Printing and parsing back is exact, so it doubles as a deep copy.
  char *buf;
  size_t len;
  FILE *f = open_memstream(&buf, &len);
  if (!f)
    fatal("out of memory");
  print_graph(f, g);
  fclose(f);
  return parse_graph(xformat("<%s>", g->name), buf);
}

int main(int argc, char **argv) {
  const char *input = NULL, *emit = NULL, *stage = "model", *stop_after = NULL;
  CodegenOptions cg = {.opt_level = 3, .cpu = "native"};
  PipelineOptions po = {.dump = stderr};
  const char **disabled = xcalloc(argc, sizeof *disabled);
  bool list_options = false, timed = false;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--list-passes")) {
      list_passes();
      return 0;
    } else if (!strcmp(a, "--list-options")) {
      list_options = true;
    } else if (!strcmp(a, "-o")) {
      if (++i == argc)
        fatal("-o needs a name, e.g. -o build/catdog");
      cg.output = argv[i];
    } else if (starts(a, "--emit=", &v)) {
      emit = v;
    } else if (starts(a, "--stage=", &v)) {
      stage = v;
    } else if (starts(a, "--stop-after=", &v)) {
      stop_after = v;
    } else if (!strcmp(a, "--print-after-all")) {
      po.print_after = "all";
    } else if (starts(a, "--print-after=", &v)) {
      po.print_after = v;
    } else if (starts(a, "--disable-pass=", &v)) {
      if (!pass_find(v))
        fatal("--disable-pass=%s: no such pass (xentcc --list-passes shows them)", v);
      disabled[po.ndisabled++] = v;
    } else if (a[0] == '-' && a[1] == 'O' && a[2] >= '0' && a[2] <= '3' && !a[3]) {
      cg.opt_level = a[2] - '0';
    } else if (!strcmp(a, "--time")) {
      timed = true;
    } else if (starts(a, "-mcpu=", &v)) {
      cg.cpu = v;
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "xentcc: error: unknown option '%s'\n", a);
      usage(stderr);
      return 1;
    } else if (input) {
      fatal("more than one model file given ('%s' and '%s'); compile one at a time", input, a);
    } else {
      input = a;
    }
  }
  po.disabled = disabled;
  if (list_options && !input) {
    print_schema(stdout);
    return 0;
  }
  if (!input) {
    usage(stderr);
    return 1;
  }
  if (emit && strcmp(emit, "ir") && strcmp(emit, "dot") && strcmp(emit, "loops") &&
      strcmp(emit, "llvm") && strcmp(emit, "asm") && strcmp(emit, "obj"))
    fatal("--emit=%s: unknown kind; use ir, dot, loops, llvm, asm or obj", emit);
  if (strcmp(stage, "model") && strcmp(stage, "train") && strcmp(stage, "eval"))
    fatal("--stage=%s: unknown stage; use model, train or eval", stage);
  if (stop_after && !strcmp(stage, "model"))
    fatal("--stop-after needs --stage=train or --stage=eval");

  time_start(timed);
  Model *m = load_model(input);
  verify_graph(m->graph);
  time_phase("read the model");
  if (list_options) {
    print_used_options(stdout);
    return 0;
  }

  if (emit && (!strcmp(emit, "ir") || !strcmp(emit, "dot"))) {
    Graph *g = m->graph;
    if (!strcmp(stage, "train"))
      run_until(g, train_pipeline, sizeof train_pipeline / sizeof *train_pipeline, stop_after, &po);
    else if (!strcmp(stage, "eval"))
      run_until(g, eval_pipeline, sizeof eval_pipeline / sizeof *eval_pipeline, stop_after, &po);
    if (!strcmp(emit, "ir"))
      print_graph(stdout, g);
    else
      print_dot(stdout, g);
    time_phase("graph passes, print");
    time_report();
    return 0;
  }

  Graph *eval = clone_graph(m->graph);
  Graph *train = m->graph;
  run_pipeline(train, train_pipeline, sizeof train_pipeline / sizeof *train_pipeline, &po);
  run_pipeline(eval, eval_pipeline, sizeof eval_pipeline / sizeof *eval_pipeline, &po);
  time_phase("graph passes");

  // lower, then the loop passes of -O, then LLVM.
  LProgram *lp = lower_program(train, eval, cg.opt_level);
  int nloop;
  const char *const *loop_passes = loop_pipeline(cg.opt_level, &nloop);
  run_loop_pipeline(lp, loop_passes, nloop, &po);
  time_phase("lower, loop passes");
  if (emit && !strcmp(emit, "loops")) {
    print_lprogram(stdout, lp);
    time_report();
    return 0;
  }
  if (!cg.output) {
    const char *base = strrchr(input, '/') ? strrchr(input, '/') + 1 : input;
    char *name = xstrdup(base);
    char *dot = strrchr(name, '.');
    if (dot && dot != name)
      *dot = '\0';
    cg.output = name;
  }
  cg.emit = emit;
  codegen(m, lp, train, eval, &cg);
  if (emit)
    time_phase("LLVM: optimize, write");
  time_report();
  return 0;
}

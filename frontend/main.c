// xentcc: compiles a YAML model into training and evaluation executables.
// The driver only sequences the stages: load_model (frontend/) -> the
// training and evaluation pass pipelines (passes/) -> codegen (codegen/).
#include "args.h"
#include "loop.h"

#include <llvm-c/Core.h>
#include <llvm-c/TargetMachine.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const train_pipeline[] = {
    "lint-losses", "fuse-softmax-ce", "fuse-sigmoid-bce", "autocast", "autodiff",
    "optimizer",   "constant-fold",   "cse",              "dce",
};
static const char *const eval_pipeline[] = {
    "eval-mode", "fuse-softmax-ce", "fuse-sigmoid-bce", "autocast", "constant-fold", "cse", "dce",
};
enum {
  NTRAIN = sizeof train_pipeline / sizeof *train_pipeline,
  NEVAL = sizeof eval_pipeline / sizeof *eval_pipeline,
};

// What --emit writes. One rule for where it goes: text goes to standard
// output unless -o names a file; objects, like the executables, go to files
// named after -o NAME (default: the YAML file's base name).
typedef struct {
  const char *name;
  const char *ext; // of the file -o writes (per executable: NAME-train.EXT)
  bool text;       // readable text: standard output by default, and with -o -
  bool graph;      // a graph of one stage: --stage chooses which
  bool lowered;    // after lowering, so -O matters
  bool per_exe;    // a file per executable, NAME-train.EXT and NAME-eval.EXT; else one
  bool machine;    // made for a processor (its vectors and machine code), so -mcpu matters
} EmitKind;

// lib: DIR/NAME.h and DIR/libNAME.a from -o DIR/NAME, the evaluation only
// (codegen/library.c).
static const EmitKind emit_kinds[] = {
    {"ir", "xir", true, true, false, false, false},
    {"dot", "dot", true, true, false, false, false},
    {"loops", "loops", true, false, true, false, true},
    {"llvm", "ll", true, false, true, true, true},
    {"asm", "s", true, false, true, true, true},
    {"obj", "o", false, false, true, true, true},
    {"lib", "a", false, false, true, false, true},
};
enum { NEMIT = sizeof emit_kinds / sizeof *emit_kinds };
static const EmitKind executables = {NULL, NULL, false, false, true, true, true};

static const char *const stages[] = {"model", "train", "eval"};

static const char usage_line[] = "usage: xentcc MODEL.yaml [-o NAME] [--emit=KIND] [options] "
                                 "(xentcc --help lists them)";

static void usage(FILE *out) {
  fputs(
      "usage: xentcc MODEL.yaml [-o NAME] [options]\n"
      "\n"
      "Compiles MODEL.yaml into the executables NAME-train and NAME-eval (NAME defaults\n"
      "to the YAML file's base name), or with --emit into one of the forms on the way.\n"
      "\n"
      "Where output goes: text (--emit=ir, dot, loops, llvm, asm) is printed to standard\n"
      "output unless -o names a file; executables and objects (--emit=obj) are files\n"
      "named after NAME. One text is written to the file -o names; llvm, asm and obj,\n"
      "one module per executable, to NAME-train.ll and NAME-eval.ll (.s, .o), or both\n"
      "to standard output, one after the other, with -o -.\n"
      "\n"
      "options (--opt=VALUE and --opt VALUE are the same):\n"
      "  -o NAME                NAME-train and NAME-eval, or --emit's output (above);\n"
      "                         '-o -' is standard output, for text only\n"
      "  --emit=KIND            stop early and write KIND instead of executables:\n"
      "                         ir (graph IR), dot (Graphviz), loops (loop IR), llvm (LLVM IR),\n"
      "                         asm (assembly) or obj (objects); or lib: the model as a C\n"
      "                         library, -o DIR/NAME writing DIR/NAME.h and DIR/libNAME.a\n"
      "                         (NAME_load, NAME_predict...; docs/library.md)\n"
      "  --weights W            with --emit=lib: compile the safetensors file W into the\n"
      "                         library (NAME_load_embedded)\n"
      "  --stage=STAGE          which graph --emit=ir|dot shows: model (as written, the\n"
      "                         default), train (the training step) or eval (the forward\n"
      "                         pass); the other kinds always hold both executables\n"
      "  --stop-after=PASS      end the pipeline after PASS (with --stage=train|eval)\n"
      "  --print-after-all      print the IR after every pass that runs to stderr\n"
      "  --print-after=PASS     print the IR after PASS (graph passes, 'lower', loop passes)\n"
      "  --disable-pass=PASS    skip PASS (repeatable)\n"
      "  --list-passes          list the passes and exit\n"
      "  --list-options         list every option a model file accepts (with MODEL.yaml:\n"
      "                         the options that model uses) and exit; docs/yaml.md\n"
      "                         describes each\n"
      "  -O0 -O1 -O2 -O3        optimization level (default -O3): -O0 runs the plain loop\n"
      "                         nests through LLVM's O0; -O1 and up schedule them (tiles,\n"
      "                         vectors, threads), then LLVM's O1, or at -O2 and -O3 its O2\n"
      "                         function passes less those scheduled kernels never need\n"
      "  -mcpu=CPU              target CPU (default: native, the host); with AVX-512\n"
      "                         (e.g. x86-64-v4) the tiles use 16-lane vectors, up to\n"
      "                         16 accumulators, else AVX2's 8 lanes and 12\n"
      "  --time                 print where the compile time went (wall and CPU seconds\n"
      "                         per phase, and per LLVM module) to stderr\n"
      "  --version              the version of xentcc and LLVM, and the target\n"
      "  -h, --help             this text\n"
      "\n"
      "An option that does nothing for the chosen --emit (--stage with loops, -O with\n"
      "ir, --print-after of a pass that does not run) is an error, not ignored.\n",
      out);
}

static void print_version(void) {
  unsigned major, minor, patch;
  LLVMGetVersion(&major, &minor, &patch);
  char *triple = LLVMGetDefaultTargetTriple(), *cpu = LLVMGetHostCPUName();
  const LTarget *tiles = loop_target(&(CodegenOptions){.cpu = "native"});
  printf("xentcc %s\n"
         "LLVM %u.%u.%u\n"
         "target %s, CPU %s (the host: -mcpu=native, the default)\n"
         "tiles for %s: %d-lane vectors, up to %d accumulators\n",
         xentcc_version(), major, minor, patch, triple, cpu, tiles->name, tiles->lanes,
         tiles->accumulators);
  LLVMDisposeMessage(triple);
  LLVMDisposeMessage(cpu);
}

static void list_passes(void) {
  int n;
  const Pass *p = pass_list(&n);
  for (int i = 0; i < n; i++)
    printf("  %-18s %s\n", p[i].name, p[i].help);
}

// A pass name from the command line: known, or an error that suggests one.
static void check_pass_name(const Args *a, const char *option, const char *name) {
  if (pass_find(name))
    return;
  int n;
  const Pass *p = pass_list(&n);
  const char **names = xcalloc(n, sizeof *names);
  for (int i = 0; i < n; i++)
    names[i] = p[i].name;
  const char *near = arg_closest(name, names, n);
  arg_die(a, near ? xformat("did you mean %s=%s? (xentcc --list-passes shows them)", option, near)
                  : "xentcc --list-passes shows them",
          "%s=%s: no such pass", option, name);
}

// One of `choices` for --emit / --stage, or an error that suggests one.
static int check_choice(const Args *a, const char *option, const char *noun, const char *value,
                        const char *const *choices, int n) {
  for (int i = 0; i < n; i++)
    if (!strcmp(value, choices[i]))
      return i;
  const char *near = arg_closest(value, choices, n);
  char *all = xstrdup("");
  for (int i = 0; i < n; i++)
    all = xformat("%s%s%s", all, i ? i == n - 1 ? " or " : ", " : "", choices[i]);
  arg_die(a, near ? xformat("did you mean %s=%s? (use %s)", option, near, all) : xformat("use %s", all),
          "%s=%s: unknown %s", option, value, noun);
}

// How much of `pipeline` runs: up to and including stop_after (all of it
// when NULL).
static int pipeline_length(const char *const *pipeline, int count, const char *stop_after) {
  if (!stop_after)
    return count;
  for (int n = 0; n < count; n++)
    if (!strcmp(pipeline[n], stop_after))
      return n + 1;
  char *names = xstrdup("");
  for (int i = 0; i < count; i++)
    names = xformat("%s%s%s", names, i ? ", " : "", pipeline[i]);
  fatal("--stop-after=%s: that pass is not in the %s pipeline, which runs %s", stop_after,
        pipeline == train_pipeline ? "training" : "evaluation", names);
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

// Prints one text output (ir, dot, loops) into memory, then writes it whole.
typedef struct {
  char *buf;
  size_t len;
  FILE *f;
} Text;

static FILE *text_open(Text *t) {
  t->f = open_memstream(&t->buf, &t->len);
  if (!t->f)
    fatal("out of memory");
  return t->f;
}

static void text_write(Text *t, const char *path) {
  fclose(t->f);
  write_file(path, t->buf, t->len);
  free(t->buf);
}

typedef struct {
  const char *names[NTRAIN + NEVAL + 32];
  int n;
} PassSet;

static void add_passes(PassSet *s, const char *const *names, int n) {
  for (int i = 0; i < n; i++) {
    bool seen = false;
    for (int j = 0; j < s->n && !seen; j++)
      seen = !strcmp(s->names[j], names[i]);
    if (!seen && s->n < (int)(sizeof s->names / sizeof *s->names))
      s->names[s->n++] = names[i];
  }
}

static bool has_pass(const PassSet *s, const char *name) {
  for (int i = 0; i < s->n; i++)
    if (!strcmp(s->names[i], name))
      return true;
  return false;
}

static char *join_passes(const PassSet *s) {
  char *out = xstrdup("");
  for (int i = 0; i < s->n; i++)
    out = xformat("%s%s%s", out, i ? ", " : "", s->names[i]);
  return out;
}

// A compile allocates a few hundred megabytes in small pieces (the loop IR,
// LLVM's modules, freed as each is done), and by default glibc hands freed
// memory back to the kernel and maps every fresh 4 KiB page with a fault of
// its own: 45,000 faults for allconv, at microseconds each on a virtual
// machine. With the heap in transparent huge pages (hugetlb=1: glibc asks
// the kernel for them with madvise) and freed memory kept for the next
// module (the trim and mmap thresholds), 16,000, and allconv compiled in
// 1.70 s, not 1.98 (Zen 5, 2 threads). glibc reads its tunables only as a
// program starts, so xentcc starts itself again with them, once, before it
// reads the model; loading LLVM twice costs some of that back (in paired
// runs, 10 each: allconv 0.94x the time, catdog 0.96x). A user who sets
// GLIBC_TUNABLES keeps theirs. Not in the sanitizer build, whose allocator
// is ASan's.
static void tune_malloc(char **argv) {
#ifdef XC_ASAN
  (void)argv;
#else
  if (getenv("GLIBC_TUNABLES"))
    return;
  setenv("GLIBC_TUNABLES",
         "glibc.malloc.hugetlb=1:glibc.malloc.trim_threshold=1073741824:"
         "glibc.malloc.mmap_threshold=33554432",
         1);
  execv("/proc/self/exe", argv); // returns only on failure: carry on as we are
#endif
}

int main(int argc, char **argv) {
  const char *input = NULL, *emit_name = NULL, *stage_name = NULL, *stop_after = NULL;
  const char *output = NULL, *first_option = NULL, *opt_flag = NULL, *cpu_flag = NULL;
  const char *weights = NULL;
  CodegenOptions cg = {.opt_level = 3, .cpu = "native"};
  PipelineOptions po = {.dump = stderr};
  const char **disabled = xcalloc(argc, sizeof *disabled);
  bool list_options = false, timed = false;

  if (argc < 2) {
    usage(stderr);
    return 1;
  }
  Args a = {.argc = argc, .argv = argv, .i = 1, .usage = usage_line};
  for (; a.i < argc; a.i++) {
    const char *arg = argv[a.i];
    if (arg_flag(&a, "-h") || arg_flag(&a, "--help")) {
      usage(stdout);
      return 0;
    } else if (arg_flag(&a, "--version")) {
      print_version();
      return 0;
    } else if (arg_flag(&a, "--list-passes")) {
      list_passes();
      return 0;
    } else if (arg_flag(&a, "--list-options")) {
      list_options = true;
      continue;
    } else if (arg_opt(&a, "-o")) {
      output = a.value;
    } else if (arg_opt(&a, "--emit")) {
      emit_name = a.value;
    } else if (arg_opt(&a, "--weights")) {
      weights = a.value;
    } else if (arg_opt(&a, "--stage")) {
      stage_name = a.value;
    } else if (arg_opt(&a, "--stop-after")) {
      check_pass_name(&a, "--stop-after", a.value);
      stop_after = a.value;
    } else if (arg_flag(&a, "--print-after-all")) {
      po.print_after = "all";
    } else if (arg_opt(&a, "--print-after")) {
      check_pass_name(&a, "--print-after", a.value);
      po.print_after = a.value;
    } else if (arg_opt(&a, "--disable-pass")) {
      check_pass_name(&a, "--disable-pass", a.value);
      disabled[po.ndisabled++] = a.value;
    } else if (arg_flag(&a, "-O0") || arg_flag(&a, "-O1") || arg_flag(&a, "-O2") ||
               arg_flag(&a, "-O3")) {
      cg.opt_level = arg[2] - '0';
      opt_flag = arg;
    } else if (arg_flag(&a, "--time")) {
      timed = true;
    } else if (arg_opt(&a, "-mcpu")) {
      cg.cpu = a.value;
      cpu_flag = arg;
    } else if (!strncmp(arg, "-O", 2)) {
      arg_die(&a, "use -O0, -O1, -O2 or -O3", "%s: unknown optimization level", arg);
    } else if (arg[0] == '-' && arg[1]) {
      arg_unknown(&a);
    } else if (input) {
      arg_die(&a, "compile one model at a time", "more than one model file given ('%s' and '%s')",
              input, arg);
    } else {
      input = arg;
      continue;
    }
    if (!first_option)
      first_option = arg;
  }
  po.disabled = disabled;

  if (list_options && first_option)
    arg_die(&a, "write xentcc --list-options, or xentcc MODEL.yaml --list-options",
            "--list-options lists the model file's options and exits; '%s' does not apply",
            first_option);
  if (list_options && !input) {
    print_schema(stdout);
    return 0;
  }
  if (!input)
    arg_die(&a, NULL, "no model file given");

  // What to write, where, and which options apply to it; every check here
  // runs before the model is read.
  const EmitKind *emit = &executables;
  if (emit_name) {
    const char *names[NEMIT];
    for (int i = 0; i < NEMIT; i++)
      names[i] = emit_kinds[i].name;
    emit = &emit_kinds[check_choice(&a, "--emit", "kind", emit_name, names, NEMIT)];
  }
  bool library = emit_name && !strcmp(emit->name, "lib");
  int stage = 0;
  if (stage_name) {
    stage = check_choice(&a, "--stage", "stage", stage_name, stages, 3);
    if (!emit->graph)
      arg_die(&a,
              library ? "--stage chooses the graph --emit=ir and --emit=dot show; a library "
                        "always holds the evaluation program"
                      : "--stage chooses the graph --emit=ir and --emit=dot show; the loop IR, "
                        "LLVM IR, assembly, objects and executables always hold both the "
                        "training and the evaluation program",
              "--stage does not apply to %s", emit_name ? xformat("--emit=%s", emit_name)
                                                        : "building executables");
  }
  if (stop_after && stage == 0)
    arg_die(&a, "add --stage=train or --stage=eval (with --emit=ir or --emit=dot)",
            "--stop-after needs --stage=train or --stage=eval");
  if (opt_flag && !emit->lowered)
    arg_die(&a, "-O sets how lowered loops are scheduled and LLVM optimizes; drop it, or use "
                "--emit=loops, llvm or asm",
            "%s does not apply to --emit=%s, the graph before lowering", opt_flag, emit_name);
  if (cpu_flag && !emit->machine)
    arg_die(&a, "-mcpu chooses the loops' vectors and the machine code; drop it, or use "
                "--emit=loops, llvm, asm, obj or lib",
            "%s does not apply to --emit=%s", cpu_flag, emit_name);
  if (weights && !library)
    arg_die(&a, "--weights compiles weights into a library: add --emit=lib -o DIR/NAME",
            "--weights does not apply to %s",
            emit_name ? xformat("--emit=%s", emit_name) : "building executables");

  if (output) {
    struct stat st;
    size_t n = strlen(output);
    const char *example = library               ? "-o build/cifar10 (build/cifar10.h and "
                                                    "build/libcifar10.a)"
                          : !emit->per_exe       ? xformat("-o build/cifar10.%s", emit->ext)
                          : emit == &executables ? "-o build/cifar10 (build/cifar10-train and "
                                                   "build/cifar10-eval)"
                                                 : "-o build/cifar10";
    if (!n)
      arg_die(&a, xformat("give a name, e.g. %s", example), "-o: the output name is empty");
    if (!strcmp(output, "-") && !emit->text)
      arg_die(&a,
              xformat("standard output takes text only (--emit=ir, dot, loops, llvm or asm); "
                      "give a name, e.g. %s",
                      example),
              "-o -: %s cannot go to standard output",
              emit == &executables ? "executables" : library ? "a library" : "objects");
    // A name ending in '/', '.' or '..' is a directory. An existing directory
    // is one too for a single text file; NAME-train and NAME-eval may sit
    // beside a directory NAME (the data folder of a model, say).
    const char *base = strrchr(output, '/') ? strrchr(output, '/') + 1 : output;
    if (!*base || !strcmp(base, ".") || !strcmp(base, "..") ||
        (!emit->per_exe && stat(output, &st) == 0 && S_ISDIR(st.st_mode)))
      arg_die(&a, xformat("-o names the output, not its directory: e.g. %s", example),
              "-o %s: is a directory", output);
  }

  if (emit->lowered)
    tune_malloc(argv);

  // The passes this compile runs: what --print-after and --disable-pass may name.
  PassSet run = {0};
  if (emit->graph) {
    if (stage == 1)
      add_passes(&run, train_pipeline, pipeline_length(train_pipeline, NTRAIN, stop_after));
    else if (stage == 2)
      add_passes(&run, eval_pipeline, pipeline_length(eval_pipeline, NEVAL, stop_after));
  } else {
    int nloop;
    const char *const *loop_passes = loop_pipeline(cg.opt_level, &nloop);
    if (!library) // a library is the evaluation alone
      add_passes(&run, train_pipeline, NTRAIN);
    add_passes(&run, eval_pipeline, NEVAL);
    add_passes(&run, (const char *const[]){"lower"}, 1);
    add_passes(&run, loop_passes, nloop);
  }
  const char *what = emit_name ? xformat("--emit=%s%s", emit_name,
                                         emit->graph ? xformat(" --stage=%s", stages[stage]) : "")
                               : "building executables";
  const char *which = run.n ? xformat("the passes that run: %s", join_passes(&run))
                            : "add --stage=train or --stage=eval to see the passes at work";
  if (po.print_after && !strcmp(po.print_after, "all") && !run.n)
    arg_die(&a, which, "--print-after-all prints the IR after each pass, but %s runs no passes",
            what);
  if (po.print_after && strcmp(po.print_after, "all") && !has_pass(&run, po.print_after))
    arg_die(&a, which, "--print-after=%s: that pass does not run in %s", po.print_after, what);
  for (int i = 0; i < po.ndisabled; i++) {
    if (!strcmp(disabled[i], "plan-memory") || !strcmp(disabled[i], "lower"))
      arg_die(&a, "the executables need their loops and their buffers placed",
              "--disable-pass=%s: that pass cannot be skipped", disabled[i]);
    if (!has_pass(&run, disabled[i]))
      arg_die(&a, which, "--disable-pass=%s: that pass does not run in %s", disabled[i], what);
  }

  time_start(timed);
  Model *m = load_model(input);
  verify_graph(m->graph);
  time_phase("read the model");
  if (list_options) {
    print_used_options(stdout);
    return 0;
  }
  const char *text_path = output ? output : "-";

  if (library) {
    // The library's functions are NAME_load, NAME_predict...: NAME, from -o
    // or the YAML file's base name, must be a C identifier.
    const char *base = strrchr(input, '/') ? strrchr(input, '/') + 1 : input;
    char *name = xstrdup(output ? output : base);
    if (!output && strrchr(name, '.') && strrchr(name, '.') != name)
      *strrchr(name, '.') = '\0';
    const char *prefix = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
    bool ident = (*prefix >= 'a' && *prefix <= 'z') || (*prefix >= 'A' && *prefix <= 'Z') ||
                 *prefix == '_';
    for (const char *s = prefix; ident && *s; s++)
      ident = (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_' ||
              (*s >= '0' && *s <= '9');
    if (!ident || strlen(prefix) > 64)
      arg_die(&a,
              "the library's functions are NAME_load, NAME_predict...: give a NAME of letters, "
              "digits and '_' (at most 64), e.g. -o build/cifar10",
              "%s'%s' is not a C identifier to prefix the library's functions with",
              output ? "-o: " : "the model file's name: ", prefix);
    Graph *eval = m->graph;
    run_pipeline(eval, eval_pipeline, NEVAL, &po);
    time_phase("graph passes");
    cg.output = name;
    codegen_library(m, eval, &po, &cg, weights);
    time_report();
    return 0;
  }

  if (emit->graph) {
    Graph *g = m->graph;
    if (stage == 1)
      run_pipeline(g, train_pipeline, pipeline_length(train_pipeline, NTRAIN, stop_after), &po);
    else if (stage == 2)
      run_pipeline(g, eval_pipeline, pipeline_length(eval_pipeline, NEVAL, stop_after), &po);
    Text t;
    if (!strcmp(emit->name, "ir"))
      print_graph(text_open(&t), g);
    else
      print_dot(text_open(&t), g);
    text_write(&t, text_path);
    time_phase("graph passes, print");
    time_report();
    return 0;
  }

  Graph *eval = clone_graph(m->graph);
  Graph *train = m->graph;
  run_pipeline(train, train_pipeline, NTRAIN, &po);
  run_pipeline(eval, eval_pipeline, NEVAL, &po);
  time_phase("graph passes");

  // lower, then the loop passes of -O, then LLVM.
  LProgram *lp = lower_program(train, eval, cg.opt_level);
  lp->target = *loop_target(&cg);
  int nloop;
  const char *const *loop_passes = loop_pipeline(cg.opt_level, &nloop);
  run_loop_pipeline(lp, loop_passes, nloop, &po);
  time_phase("lower, loop passes");
  if (emit->name && !strcmp(emit->name, "loops")) {
    Text t;
    print_lprogram(text_open(&t), lp);
    text_write(&t, text_path);
    time_report();
    return 0;
  }
  if (output) {
    cg.output = output;
  } else if (emit->text) {
    cg.output = "-";
  } else {
    const char *base = strrchr(input, '/') ? strrchr(input, '/') + 1 : input;
    char *name = xstrdup(base);
    char *dot = strrchr(name, '.');
    if (dot && dot != name)
      *dot = '\0';
    cg.output = name;
  }
  cg.emit = emit->name;
  codegen(m, lp, train, eval, &cg);
  if (emit->name)
    time_phase("LLVM: optimize, write");
  time_report();
  return 0;
}

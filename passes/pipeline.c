// The pass pipeline: a flat list of named passes, the verifier after each,
// and --print-after dumps in LLVM's format ("; *** IR Dump After X ***").
#include "loop.h"

#include <stdlib.h>
#include <string.h>

static bool disabled(const PipelineOptions *opt, const char *name) {
  for (int i = 0; opt && i < opt->ndisabled; i++)
    if (strcmp(opt->disabled[i], name) == 0)
      return true;
  return false;
}

static const Pass *find(const char *name) {
  const Pass *p = pass_find(name);
  if (p)
    return p;
  int n;
  const Pass *all = pass_list(&n);
  fprintf(stderr, "xentcc: error: unknown pass '%s'\nhint: the passes are:", name);
  for (int j = 0; j < n; j++)
    fprintf(stderr, " %s", all[j].name);
  fputc('\n', stderr);
  exit(1);
}

static bool dumps(const PipelineOptions *opt, const char *name) {
  return opt && opt->print_after &&
         (strcmp(opt->print_after, "all") == 0 || strcmp(opt->print_after, name) == 0);
}

void run_pipeline(Graph *g, const char *const *names, int count, const PipelineOptions *opt) {
  for (int i = 0; i < count; i++) {
    const Pass *p = find(names[i]);
    if (!p->run)
      fatal("pass '%s' runs on the loop IR, after 'lower'", p->name);
    if (disabled(opt, p->name))
      continue;
    p->run(g);
    verify_graph(g);
    if (dumps(opt, p->name)) {
      FILE *dump = opt->dump ? opt->dump : stderr;
      fprintf(dump, "; *** IR Dump After %s ***\n", p->name);
      print_graph(dump, g);
    }
  }
}

void run_loop_pipeline(LProgram *lp, const char *const *names, int count,
                       const PipelineOptions *opt) {
  if (dumps(opt, "lower")) {
    FILE *dump = opt->dump ? opt->dump : stderr;
    fprintf(dump, "; *** IR Dump After lower ***\n");
    print_lprogram(dump, lp);
  }
  verify_lprogram(lp);
  for (int i = 0; i < count; i++) {
    const Pass *p = find(names[i]);
    if (!p->run_loops)
      fatal("pass '%s' runs on the graph, before 'lower'", p->name);
    if (disabled(opt, p->name) && strcmp(p->name, "plan-memory"))
      continue;
    p->run_loops(lp);
    verify_lprogram(lp);
    if (dumps(opt, p->name)) {
      FILE *dump = opt->dump ? opt->dump : stderr;
      fprintf(dump, "; *** IR Dump After %s ***\n", p->name);
      print_lprogram(dump, lp);
    }
  }
}

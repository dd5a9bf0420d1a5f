// The pass pipeline: a flat list of named passes, the verifier after each,
// and --print-after dumps in LLVM's format ("; *** IR Dump After X ***").
#include "ir.h"

#include <stdlib.h>
#include <string.h>

static bool disabled(const PipelineOptions *opt, const char *name) {
  for (int i = 0; opt && i < opt->ndisabled; i++)
    if (strcmp(opt->disabled[i], name) == 0)
      return true;
  return false;
}

void run_pipeline(Graph *g, const char *const *names, int count, const PipelineOptions *opt) {
  FILE *dump = opt && opt->dump ? opt->dump : stderr;
  for (int i = 0; i < count; i++) {
    const Pass *p = pass_find(names[i]);
    if (!p) {
      int n;
      const Pass *all = pass_list(&n);
      fprintf(stderr, "xentcc: error: unknown pass '%s'\nhint: the passes are:", names[i]);
      for (int j = 0; j < n; j++)
        fprintf(stderr, " %s", all[j].name);
      fputc('\n', stderr);
      exit(1);
    }
    if (disabled(opt, p->name))
      continue;
    p->run(g);
    verify_graph(g);
    if (opt && opt->print_after &&
        (strcmp(opt->print_after, "all") == 0 || strcmp(opt->print_after, p->name) == 0)) {
      fprintf(dump, "; *** IR Dump After %s ***\n", p->name);
      print_graph(dump, g);
    }
  }
}

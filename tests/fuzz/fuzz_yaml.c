// The YAML frontend: a model file is read into a graph and verified, as
// xentcc does before anything else, then printed as --emit=ir prints it.
#include "fuzz.h"
#include "ir.h"

static FILE *devnull;

void fuzz_init(void) { devnull = fopen("/dev/null", "w"); }

void fuzz_one(const char *data, size_t size) {
  forget_used_options(); // the previous input's list was freed with it
  Model *m = load_model_text("fuzz.yaml", data);
  verify_graph(m->graph);
  print_graph(devnull, m->graph);
}

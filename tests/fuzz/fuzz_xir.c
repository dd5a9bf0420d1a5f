// The textual graph IR: parse and verify, as xentcc-opt does. What verifies
// must print and parse back to the same text (print(parse(print(g))) ==
// print(g), docs/ir.md), and verify again.
#include "fuzz.h"
#include "ir.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *print_to_string(Graph *g) {
  char *buf;
  size_t len;
  FILE *f = open_memstream(&buf, &len);
  if (!f)
    abort();
  print_graph(f, g);
  fclose(f);
  return buf;
}

void fuzz_one(const char *data, size_t size) {
  Graph *g = parse_graph("fuzz.xir", data);
  verify_graph(g);
  char *once = print_to_string(g);
  fuzz_errors_are_bugs();
  Graph *again = parse_graph("printed.xir", once);
  verify_graph(again);
  char *twice = print_to_string(again);
  if (strcmp(once, twice)) {
    fprintf(stderr, "fuzz: printing is not stable:\n%s\n---\n%s\n", once, twice);
    abort();
  }
  free(once);
  free(twice);
}

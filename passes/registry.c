// The pass registry: every pass xentcc and xentcc-opt can run by name.
#include "ir.h"

#include <string.h>

static const Pass passes[] = {
    {"verify", verify_graph, "check the graph; changes nothing"},
};

const Pass *pass_list(int *count) {
  *count = (int)(sizeof passes / sizeof passes[0]);
  return passes;
}

const Pass *pass_find(const char *name) {
  int n;
  const Pass *p = pass_list(&n);
  for (int i = 0; i < n; i++)
    if (strcmp(p[i].name, name) == 0)
      return &p[i];
  return NULL;
}

// The line the library tests' C programs print per call, which the tests
// compare with NAME-eval --predict --logits and PyTorch: the model, n and
// each image's logits to 9 digits, as JSON.
#ifndef PRINT_LOGITS_H
#define PRINT_LOGITS_H

#include <stdio.h>

static void print_logits(const char *model, int n, int outputs, const float *logits) {
  printf("{\"model\": \"%s\", \"n\": %d, \"logits\": [", model, n);
  for (int i = 0; i < n; i++) {
    printf("%s[", i ? ", " : "");
    for (int k = 0; k < outputs; k++)
      printf("%s%.9g", k ? ", " : "", logits[i * outputs + k]);
    printf("]");
  }
  printf("]}\n");
}

#endif

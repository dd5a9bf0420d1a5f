// The smallest program linking a compiled model's library (install.test).
#include "tinylib.h"

#include <stdio.h>

int main(void) {
  printf("classes %s %s, %d outputs\n", tinylib_class_names[0], tinylib_class_names[1],
         tinylib_OUTPUTS);
  return 0;
}

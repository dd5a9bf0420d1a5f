// Any one compiled model (built with -DNAME=<prefix> -include <prefix>.h):
// the logits of the first n images of a raw file (C x H x W bytes each),
// normalized with the header's MEAN and STD, for each n given, printed as
// two_models.c prints them.
//   one_model WEIGHTS IMAGES.u8 N...
#include "print_logits.h"

#include <stdio.h>
#include <stdlib.h>

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define API(suffix) CAT(NAME, suffix)
#define STR_(x) #x
#define STR(x) STR_(x)

int main(int argc, char **argv) {
  if (argc < 4)
    return fprintf(stderr, "usage: one_model WEIGHTS IMAGES.u8 N...\n"), 2;
  int most = 0;
  for (int a = 3; a < argc; a++)
    most = atoi(argv[a]) > most ? atoi(argv[a]) : most;
  NAME *m = API(_load)(argv[1]);
  if (!m)
    return fprintf(stderr, "%s\n", API(_error)()), 1;
  int c = API(_CHANNELS), hw = API(_HEIGHT) * API(_WIDTH), outputs = API(_OUTPUTS);
  unsigned char *u8 = malloc((size_t)most * c * hw);
  float *images = malloc(sizeof(float) * most * c * hw), *logits = malloc(sizeof(float) * most * outputs);
  const float mean[] = API(_MEAN), std[] = API(_STD);
  FILE *f = fopen(argv[2], "rb");
  if (!f || fread(u8, (size_t)c * hw, most, f) != (size_t)most)
    return fprintf(stderr, "%s: cannot read %d images\n", argv[2], most), 1;
  fclose(f);
  for (size_t i = 0; i < (size_t)most * c * hw; i++)
    images[i] = ((float)u8[i] / 255.0f - mean[i / hw % c]) / std[i / hw % c];
  for (int a = 3; a < argc; a++) {
    int n = atoi(argv[a]);
    if (API(_predict)(m, images, n, logits))
      return fprintf(stderr, "%s\n", API(_error)()), 1;
    print_logits(STR(NAME), n, outputs, logits);
  }
  API(_free)(m);
  free(u8), free(images), free(logits);
  return 0;
}

// NAME_predict_rgb8 on photos of another size than the models' (RGB, H x W
// x 3 bytes each, one after the other in a file), printed as two_models.c
// prints its logits; cifar10's weights are the ones compiled into its
// library (--weights), mnist's are loaded.
#include "cifar10.h"
#include "mnist.h"
#include "print_logits.h"

#include <stdio.h>
#include <stdlib.h>

static unsigned char *read_all(const char *path, size_t size) {
  unsigned char *p = malloc(size);
  FILE *fp = fopen(path, "rb");
  if (!p || !fp || fread(p, 1, size, fp) != size) {
    fprintf(stderr, "%s: cannot read %zu bytes\n", path, size);
    exit(1);
  }
  fclose(fp);
  return p;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: rgb8 CIFAR_PHOTOS MNIST_WEIGHTS MNIST_PHOTOS HEIGHT WIDTH\n");
    return 2;
  }
  enum { N = 4 };
  int h = atoi(argv[4]), w = atoi(argv[5]);
  size_t size = (size_t)h * w * 3;
  cifar10 *c = cifar10_load_embedded();
  mnist *m = mnist_load(argv[2]);
  if (!c || !m) {
    fprintf(stderr, "load: %s%s\n", cifar10_error(), mnist_error());
    return 1;
  }
  unsigned char *cp = read_all(argv[1], size * N), *mp = read_all(argv[3], size * N);
  float cl[N * cifar10_OUTPUTS], ml[N * mnist_OUTPUTS];
  for (int i = 0; i < N; i++)
    if (cifar10_predict_rgb8(c, cp + i * size, h, w, cl + i * cifar10_OUTPUTS) ||
        mnist_predict_rgb8(m, mp + i * size, h, w, ml + i * mnist_OUTPUTS)) {
      fprintf(stderr, "predict_rgb8: %s%s\n", cifar10_error(), mnist_error());
      return 1;
    }
  print_logits("cifar10", N, cifar10_OUTPUTS, cl);
  print_logits("mnist", N, mnist_OUTPUTS, ml);
  printf("empty: %d %s\n", cifar10_predict_rgb8(c, cp, 0, w, cl), cifar10_error());
  printf("no pixels: %d %s\n", cifar10_predict_rgb8(c, NULL, h, w, cl), cifar10_error());
  cifar10_free(c);
  mnist_free(m);
  free(cp), free(mp);
  return 0;
}

// Two compiled models in one program: each loaded from the weights its
// trainer saved, its images (raw C x H x W bytes) normalized with the
// header's MEAN and STD, and the logits of the first n images printed as
// JSON, one line per (model, n), for check_logits.py to compare with
// NAME-eval --predict --logits. Then the errors: a missing file and another
// model's weights.
#include "cifar10.h"
#include "mnist.h"
#include "print_logits.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float *read_images(const char *path, int n, int c, int h, int w, const float *mean,
                          const float *std) {
  size_t size = (size_t)c * h * w;
  unsigned char *u8 = malloc(size * n);
  float *f = malloc(sizeof(float) * size * n);
  FILE *fp = fopen(path, "rb");
  if (!fp || fread(u8, 1, size * n, fp) != size * n) {
    fprintf(stderr, "%s: cannot read %d images\n", path, n);
    exit(1);
  }
  fclose(fp);
  for (int i = 0; i < n; i++)
    for (int k = 0; k < c; k++)
      for (size_t j = 0; j < (size_t)h * w; j++) {
        size_t at = (size_t)i * size + (size_t)k * h * w + j;
        f[at] = ((float)u8[at] / 255.0f - mean[k]) / std[k];
      }
  free(u8);
  return f;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: two_models CIFAR_WEIGHTS CIFAR_IMAGES MNIST_WEIGHTS MNIST_IMAGES\n");
    return 2;
  }
  enum { N = 64 };
  static const int counts[] = {1, 7, 20, N}; // 20: a padded block of cifar10
  cifar10 *c = cifar10_load(argv[1]);
  mnist *m = mnist_load(argv[3]);
  if (!c || !m) {
    fprintf(stderr, "load: %s%s\n", cifar10_error(), mnist_error());
    return 1;
  }
  const float cmean[] = cifar10_MEAN, cstd[] = cifar10_STD, mmean[] = mnist_MEAN, mstd[] = mnist_STD;
  float *ci = read_images(argv[2], N, cifar10_CHANNELS, cifar10_HEIGHT, cifar10_WIDTH, cmean, cstd);
  float *mi = read_images(argv[4], N, mnist_CHANNELS, mnist_HEIGHT, mnist_WIDTH, mmean, mstd);
  float cl[N * cifar10_OUTPUTS], ml[N * mnist_OUTPUTS];
  for (int k = 0; k < 4; k++) {
    // Alternate the models, so that each call finds the other's left over.
    if (cifar10_predict(c, ci, counts[k], cl) || mnist_predict(m, mi, counts[k], ml)) {
      fprintf(stderr, "predict: %s%s\n", cifar10_error(), mnist_error());
      return 1;
    }
    print_logits("cifar10", counts[k], cifar10_OUTPUTS, cl);
    print_logits("mnist", counts[k], mnist_OUTPUTS, ml);
  }
  printf("classes: %s ... %s, %s ... %s\n", cifar10_class_names[0],
         cifar10_class_names[cifar10_CLASSES - 1], mnist_class_names[0],
         mnist_class_names[mnist_CLASSES - 1]);

  // Errors: NULL, and a message naming the file, on this thread.
  printf("missing: %p %s\n", (void *)cifar10_load("no-such.safetensors"), cifar10_error());
  printf("other model: %p %s\n", (void *)cifar10_load(argv[3]), cifar10_error());
  printf("n = 0: %d %s\n", cifar10_predict(c, ci, 0, cl), cifar10_error());
  cifar10_free(c);
  mnist_free(m);
  cifar10_free(NULL);
  free(ci), free(mi);
  return 0;
}

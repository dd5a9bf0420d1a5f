// The speed of a compiled model's library (bench/library.py builds it once
// per model, with -DNAME=<prefix> -include <prefix>.h): the latency of one
// image, NAME_predict with n = 1 (median of the calls in `seconds`), and the
// throughput of n images a call. Prints one JSON object.
//   library_bench WEIGHTS.safetensors SECONDS N
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define API(suffix) CAT(NAME, suffix)

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc != 4)
    return fprintf(stderr, "usage: library_bench WEIGHTS SECONDS N\n"), 2;
  double seconds = atof(argv[2]);
  int n = atoi(argv[3]);
  NAME *m = API(_load)(argv[1]);
  if (!m)
    return fprintf(stderr, "%s\n", API(_error)()), 1;
  size_t in = (size_t)API(_CHANNELS) * API(_HEIGHT) * API(_WIDTH);
  float *images = malloc(sizeof(float) * in * n), *logits = malloc(sizeof(float) * API(_OUTPUTS) * n);
  srand(1);
  for (size_t i = 0; i < in * n; i++)
    images[i] = (float)rand() / RAND_MAX * 2 - 1;
  enum { MAX_CALLS = 200000 };
  double *t = malloc(sizeof(double) * MAX_CALLS);
  for (int i = 0; i < 20; i++) // warm up: caches, OpenMP's threads
    API(_predict)(m, images, 1, logits);
  int calls = 0;
  for (double start = now(); calls < MAX_CALLS && now() - start < seconds; calls++) {
    double t0 = now();
    API(_predict)(m, images, 1, logits);
    t[calls] = now() - t0;
  }
  qsort(t, calls, sizeof *t, by_value);
  double latency = t[calls / 2];
  API(_predict)(m, images, n, logits);
  int batches = 0;
  double start = now();
  while (batches < 3 || now() - start < seconds) {
    API(_predict)(m, images, n, logits);
    batches++;
  }
  double per_image = (now() - start) / ((double)batches * n);
  printf("{\"latency_ms\": %.6f, \"latency_calls\": %d, \"images_per_s\": %.1f, \"block\": %d}\n",
         latency * 1e3, calls, 1 / per_image, API(_BLOCK));
  API(_free)(m);
  free(images), free(logits), free(t);
  return 0;
}

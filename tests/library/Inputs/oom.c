// Running out of memory inside a compiled model's library, and NAME_error's
// rule. Linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,
// --wrap=aligned_alloc, so that the library's allocations come here: each
// allocation of cifar10_load, cifar10_load_embedded and
// cifar10_predict_rgb8 is refused in turn, and each call must fail with
// "out of memory" and leave this process running; then the same calls
// succeed with the logits of a run without failures.
//   oom WEIGHTS.safetensors PHOTO.hwc HEIGHT WIDTH
#include "cifar10.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);

static long countdown = -1; // the allocation to refuse (0: the next); -1: none
static long refused;

static int refuse(void) {
  if (countdown < 0 || countdown-- > 0)
    return 0;
  refused++;
  return 1;
}

void *__wrap_malloc(size_t n) { return refuse() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t size) { return refuse() ? NULL : __real_calloc(n, size); }
void *__wrap_realloc(void *p, size_t n) { return refuse() ? NULL : __real_realloc(p, n); }
void *__wrap_aligned_alloc(size_t a, size_t n) { return refuse() ? NULL : __real_aligned_alloc(a, n); }

enum { LOAD, EMBEDDED, RGB8 };
static const char *const what[] = {"load", "load_embedded", "predict_rgb8"};

static const char *weights;
static const unsigned char *photo;
static int height, width;

// One call of kind k; 0 when it succeeded.
static int call(int k, cifar10 *m, float *logits) {
  if (k == RGB8)
    return cifar10_predict_rgb8(m, photo, height, width, logits);
  cifar10 *l = k == LOAD ? cifar10_load(weights) : cifar10_load_embedded();
  if (!l)
    return -1;
  int r = cifar10_predict(l, (const float[cifar10_CHANNELS * cifar10_HEIGHT * cifar10_WIDTH]){0},
                          1, logits);
  cifar10_free(l);
  return r;
}

int main(int argc, char **argv) {
  if (argc != 5)
    return fprintf(stderr, "usage: oom WEIGHTS PHOTO.hwc HEIGHT WIDTH\n"), 2;
  weights = argv[1];
  height = atoi(argv[3]), width = atoi(argv[4]);
  unsigned char *px = malloc((size_t)height * width * 3);
  FILE *fp = fopen(argv[2], "rb");
  if (!fp || fread(px, 1, (size_t)height * width * 3, fp) != (size_t)height * width * 3)
    return fprintf(stderr, "%s: cannot read the photo\n", argv[2]), 1;
  fclose(fp);
  photo = px;

  // NAME_error: a failure's text, then "" after a call that succeeded.
  cifar10 *m = cifar10_load(weights);
  float want[cifar10_OUTPUTS], zero[cifar10_OUTPUTS], got[cifar10_OUTPUTS];
  if (!m || cifar10_predict_rgb8(m, photo, height, width, want) || call(LOAD, m, zero))
    return fprintf(stderr, "%s\n", cifar10_error()), 1;
  printf("fresh: '%s'\n", cifar10_error());
  printf("failed load: %p '%s'\n", (void *)cifar10_load("no-such.safetensors"), cifar10_error());
  printf("then predict: %d '%s'\n", cifar10_predict_rgb8(m, photo, height, width, got),
         cifar10_error());
  printf("failed predict: %d '%s'\n", cifar10_predict(m, NULL, 1, got), cifar10_error());
  cifar10 *again = cifar10_load(weights);
  printf("then load: %s '%s'\n", again ? "a model" : "NULL", cifar10_error());
  cifar10_free(again);
  printf("failed predict: %d '%s'\n", cifar10_predict(m, NULL, 1, got), cifar10_error());
  cifar10_free(NULL);
  printf("then free: '%s'\n", cifar10_error());

  for (int k = LOAD; k <= RGB8; k++) {
    long n = 0, alive = 0;
    for (;; n++) {
      countdown = n;
      refused = 0;
      memset(got, 0, sizeof got);
      int r = call(k, m, got);
      countdown = -1;
      if (!refused) { // every allocation of the call succeeded
        int same = !r && !memcmp(got, k == RGB8 ? want : zero, sizeof got);
        printf("%s: %ld allocations refused in turn, %ld failed with 'out of memory'; then %s\n",
               what[k], n, alive, same ? "the same result" : cifar10_error());
        break;
      }
      if (r && strstr(cifar10_error(), "out of memory"))
        alive++;
      else
        printf("%s, allocation %ld refused: %d '%s'\n", what[k], n, r, cifar10_error());
    }
  }
  cifar10_free(m);
  free(px);
  return 0;
}

// The machine's fused multiply-add peak in GFLOP/s, on 1 and on N threads:
// the ceiling bench/speed.py states xentcc's arithmetic as a share of. Each
// thread runs CHAINS independent 8-lane FMA chains, enough to keep both FMA
// pipes busy through the instruction's latency (Zen 3/4: 4 cycles, 2 pipes).
//
//   cc -O2 -mavx2 -mfma -fopenmp bench/fma_peak.c -o fma_peak
//   ./fma_peak [THREADS...]     (default: 1 2)   prints "THREADS GFLOPS" lines
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { CHAINS = 12, TRIES = 7 }; // CHAINS: the accumulators c0..c11 below
static const long ROUNDS = 20000000; // 12 * 8 * 2 * 2e7 = 3.8 GFLOP per thread and try

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

// One thread's work; the sum goes to *sink so that nothing is dead code.
// Without -ffast-math the compiler may not reassociate, so the CHAINS
// chains stay independent and each stays a chain.
static void chains(long rounds, float seed, float *sink) {
  __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f * seed);
  // Twelve named accumulators, not an array: GCC at -O2 keeps an array on
  // the stack and the chains would wait on loads and stores.
  // Each starts from another value, or the compiler would merge equal chains.
#define START(i) _mm256_set1_ps(seed + 0.01f * (i))
  __m256 c0 = START(0), c1 = START(1), c2 = START(2), c3 = START(3), c4 = START(4),
         c5 = START(5), c6 = START(6), c7 = START(7), c8 = START(8), c9 = START(9),
         c10 = START(10), c11 = START(11);
  for (long r = 0; r < rounds; r++) {
    c0 = _mm256_fmadd_ps(c0, a, b);
    c1 = _mm256_fmadd_ps(c1, a, b);
    c2 = _mm256_fmadd_ps(c2, a, b);
    c3 = _mm256_fmadd_ps(c3, a, b);
    c4 = _mm256_fmadd_ps(c4, a, b);
    c5 = _mm256_fmadd_ps(c5, a, b);
    c6 = _mm256_fmadd_ps(c6, a, b);
    c7 = _mm256_fmadd_ps(c7, a, b);
    c8 = _mm256_fmadd_ps(c8, a, b);
    c9 = _mm256_fmadd_ps(c9, a, b);
    c10 = _mm256_fmadd_ps(c10, a, b);
    c11 = _mm256_fmadd_ps(c11, a, b);
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
                           _mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(c8, c9), _mm256_add_ps(c10, c11)));
  float lanes[8];
  _mm256_storeu_ps(lanes, s);
  *sink = lanes[0] + lanes[7];
}

// GFLOP/s of `threads` threads at once, the best of TRIES.
static double peak(int threads) {
  double best = 0;
  float sink[64 * 16];
  for (int t = 0; t < TRIES; t++) {
    double start = now();
#pragma omp parallel num_threads(threads)
    chains(ROUNDS, 1.0f + omp_get_thread_num(), &sink[16 * (omp_get_thread_num() % 64)]);
    double g = 2.0 * 8 * CHAINS * ROUNDS * threads / (now() - start) * 1e-9;
    if (g > best)
      best = g;
  }
  if (sink[0] == 12345.0f) // never true; keeps the sums alive
    puts("");
  return best;
}

int main(int argc, char **argv) {
  int counts[16] = {1, 2}, n = argc > 1 ? 0 : 2;
  for (int i = 1; i < argc && n < 16; i++) {
    char *end;
    long t = strtol(argv[i], &end, 10);
    if (*end || t < 1 || t > 1024) {
      fprintf(stderr, "fma_peak: '%s' is not a thread count (1 to 1024)\n", argv[i]);
      return 1;
    }
    counts[n++] = (int)t;
  }
  for (int i = 0; i < n; i++)
    printf("%d %.1f\n", counts[i], peak(counts[i]));
  return 0;
}

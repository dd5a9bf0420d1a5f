// The machine's fused multiply-add peak in GFLOP/s, on 1 and on N threads:
// the ceiling bench/speed.py states xentcc's arithmetic as a share of. Each
// thread runs CHAINS independent FMA chains on the widest vectors the
// compiler targets (16 lanes with AVX-512, else 8), enough to keep both FMA
// pipes busy through the instruction's latency (Zen 3/4: 4 cycles, 2 pipes).
// xentcc uses AVX-512 where the machine has it; so does the peak.
//
//   cc -O2 -march=native -fopenmp bench/fma_peak.c -o fma_peak
//   ./fma_peak [THREADS...]     (default: 1 2)   prints "THREADS GFLOPS" lines
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { CHAINS = 12, TRIES = 7 }; // CHAINS: the accumulators c0..c11 below
static const long ROUNDS = 20000000; // 12 * 8 * 2 * 2e7 = 3.8 GFLOP per thread and try (AVX2)

#ifdef __AVX512F__
typedef __m512 vec;
enum { LANES = 16 };
#define SET1 _mm512_set1_ps
#define FMADD _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec;
enum { LANES = 8 };
#define SET1 _mm256_set1_ps
#define FMADD _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#endif

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

// One thread's work; the sum goes to *sink so that nothing is dead code.
// Without -ffast-math the compiler may not reassociate, so the CHAINS
// chains stay independent and each stays a chain.
static void chains(long rounds, float seed, float *sink) {
  vec a = SET1(0.999999f), b = SET1(1e-7f * seed);
  // Twelve named accumulators, not an array: GCC at -O2 keeps an array on
  // the stack and the chains would wait on loads and stores.
  // Each starts from another value, or the compiler would merge equal chains.
#define START(i) SET1(seed + 0.01f * (i))
  vec c0 = START(0), c1 = START(1), c2 = START(2), c3 = START(3), c4 = START(4),
         c5 = START(5), c6 = START(6), c7 = START(7), c8 = START(8), c9 = START(9),
         c10 = START(10), c11 = START(11);
  for (long r = 0; r < rounds; r++) {
    c0 = FMADD(c0, a, b);
    c1 = FMADD(c1, a, b);
    c2 = FMADD(c2, a, b);
    c3 = FMADD(c3, a, b);
    c4 = FMADD(c4, a, b);
    c5 = FMADD(c5, a, b);
    c6 = FMADD(c6, a, b);
    c7 = FMADD(c7, a, b);
    c8 = FMADD(c8, a, b);
    c9 = FMADD(c9, a, b);
    c10 = FMADD(c10, a, b);
    c11 = FMADD(c11, a, b);
  }
  vec s = ADD(ADD(ADD(c0, c1), ADD(c2, c3)), ADD(ADD(c4, c5), ADD(c6, c7)));
  s = ADD(s, ADD(ADD(c8, c9), ADD(c10, c11)));
  float lanes[LANES];
  STORE(lanes, s);
  *sink = lanes[0] + lanes[LANES - 1];
}

// GFLOP/s of `threads` threads at once, the best of TRIES.
static double peak(int threads) {
  double best = 0;
  float sink[64 * 16];
  for (int t = 0; t < TRIES; t++) {
    double start = now();
#pragma omp parallel num_threads(threads)
    chains(ROUNDS, 1.0f + omp_get_thread_num(), &sink[16 * (omp_get_thread_num() % 64)]);
    double g = 2.0 * LANES * CHAINS * ROUNDS * threads / (now() - start) * 1e-9;
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

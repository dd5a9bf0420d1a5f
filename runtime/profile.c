// --profile: the time of every kernel of the generated step functions, as
// torch.profiler's table shows it. Generated code calls xc_prof_enter and
// xc_prof_leave around each kernel (an index into xc_model.kernels); with
// profiling off they return at once. At the end the table says, per kernel,
// its share of the time, its GFLOP/s and the share of the machine's FMA
// peak it reaches, the peak measured here with the generated xc_fma_peak on
// the same threads; and the GB/s it moves (the bytes it reads and writes,
// counted by the compiler, over its time) beside what a copy between two
// buffers far larger than the caches reaches on those threads: a kernel
// near that is bound by memory, not by its arithmetic.
#include "rt.h"

#include <errno.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

static bool on, paused;
static double *seconds, started;
static int64_t *calls;
static int nkernels;

void xc_profile_start(const XcModel *m) {
  on = true;
  nkernels = m->nkernels;
  seconds = xc_calloc(nkernels + 1, sizeof *seconds);
  calls = xc_calloc(nkernels + 1, sizeof *calls);
}

void xc_profile_pause(bool p) { paused = p; }

// In a step's team every thread walks the kernels; the first one times them
// (a kernel's time ends at the barrier after it, when the last thread is done).
void xc_prof_enter(int32_t id) {
  if (on && !paused && xc_team_thread() == 0)
    started = xc_now();
}

void xc_prof_leave(int32_t id) {
  if (!on || paused || id < 0 || id >= nkernels || xc_team_thread() != 0)
    return;
  seconds[id] += xc_now() - started;
  calls[id]++;
}

// GFLOP/s of xc_fma_peak on every thread at once, the best of three tries;
// *lanes: its vectors' (those of the target the code was compiled for).
double xc_fma_peak_gflops(int *lanes) {
  int threads = xc_threads();
  double best = 0;
  for (int attempt = 0; attempt < 3; attempt++) {
    const int64_t rounds = 20000000;
    float sink[16 * 64]; // a vector of up to 16 lanes per thread
    int64_t per_round = 0;
    double t = xc_now();
#pragma omp parallel num_threads(threads)
    {
      int64_t ops = xc_fma_peak(rounds, sink + 16 * (omp_get_thread_num() % 64));
      if (omp_get_thread_num() == 0)
        per_round = ops;
    }
    t = xc_now() - t;
    double g = (double)per_round * rounds * threads / t * 1e-9;
    if (g > best)
      best = g;
    *lanes = (int)(per_round / 24); // 12 chains of an FMA: 2 operations a lane
  }
  return best;
}

// GB/s of a copy between two buffers of PROBE_BYTES, each much larger
// than the caches, on every thread at once, the best of three: bytes read
// plus bytes written, as a kernel's GB/s counts them. 0 when the buffers
// cannot be had.
#define PROBE_BYTES ((size_t)64 << 20)

double xc_memory_gbps(void) {
  size_t n = PROBE_BYTES / sizeof(float);
  float *a = aligned_alloc(64, PROBE_BYTES), *b = aligned_alloc(64, PROBE_BYTES);
  double best = 0;
  if (a && b) {
    memset(a, 0, PROBE_BYTES), memset(b, 0, PROBE_BYTES); // every page mapped
    for (int attempt = 0; attempt < 3; attempt++) {
      double t = xc_now();
#pragma omp parallel for schedule(static) num_threads(xc_threads())
      for (size_t i = 0; i < n; i++)
        b[i] = a[i] + 1.0f;
      t = xc_now() - t;
      double g = 2.0 * PROBE_BYTES / t * 1e-9;
      if (g > best)
        best = g;
    }
  }
  free(a), free(b);
  return best;
}

typedef struct {
  int id;
  double s;
} Row;

static int by_time(const void *a, const void *b) {
  double x = ((const Row *)a)->s, y = ((const Row *)b)->s;
  return x < y ? 1 : x > y ? -1 : ((const Row *)a)->id - ((const Row *)b)->id;
}

void xc_profile_report(const XcModel *m, int64_t steps, const char *unit, double wall,
                       const char *csv_path) {
  if (!on || steps <= 0)
    return;
  on = false;
  int lanes;
  double peak = xc_fma_peak_gflops(&lanes), memory = xc_memory_gbps(), total = 0;
  Row *rows = xc_calloc(nkernels + 1, sizeof *rows);
  for (int i = 0; i < nkernels; i++) {
    rows[i] = (Row){i, seconds[i]};
    total += seconds[i];
  }
  qsort(rows, nkernels, sizeof *rows, by_time);
  const char *one = !strcmp(unit, "batches") ? "batch" : "step";
  printf("profile of %lld %s on %d thread%s (FMA peak measured: %.1f GFLOP/s, %d-lane "
         "vectors; memory: %.1f GB/s):\n",
         (long long)steps, steps == 1 ? one : unit, xc_threads(), xc_threads() == 1 ? "" : "s",
         peak, lanes, memory);
  printf("  %-8s %-32s %-20s %9s %7s %9s %8s %7s\n", "function", "kernel", "layer",
         !strcmp(one, "batch") ? "ms/batch" : "ms/step", "share", "GFLOP/s", "of peak", "GB/s");
  for (int r = 0; r < nkernels; r++) {
    const XcKernelInfo *k = &m->kernels[rows[r].id];
    double s = rows[r].s;
    if (s < 0.0005 * total && r >= 12)
      continue; // the long tail of tiny kernels is summed below
    printf("  %-8s %-32s %-20.20s %9.3f %6.1f%%", k->function, k->op, k->layer,
           1e3 * s / steps, 100 * s / (wall > 0 ? wall : total));
    if (k->flops && s > 0) {
      double g = (double)k->flops * calls[rows[r].id] / s * 1e-9;
      printf(" %9.1f %7.1f%%", g, 100 * g / peak);
    } else {
      printf(" %9s %8s", "-", "-");
    }
    if (s > 0)
      printf(" %7.1f\n", (double)k->bytes * calls[rows[r].id] / s * 1e-9);
    else
      printf(" %7s\n", "-");
  }
  printf("  kernels %.3f ms/%s of %.3f ms/%s (%.1f%%); the rest is the runtime: batches, "
         "schedule, checks\n",
         1e3 * total / steps, one, 1e3 * wall / steps, one, wall > 0 ? 100 * total / wall : 100.0);
  if (csv_path) {
    char *tmp = xc_format("%s.tmp", csv_path);
    FILE *f = fopen(tmp, "w");
    if (!f)
      xc_die("check that the directory exists and is writable", "cannot write %s: %s",
             csv_path, strerror(errno));
    fprintf(f, "function,kernel,layer,calls,seconds,flops_per_call,peak_gflops,steps,wall_seconds,"
               "bytes_per_call,memory_gbps\n");
    for (int i = 0; i < nkernels; i++) {
      const XcKernelInfo *k = &m->kernels[i];
      fprintf(f, "%s,%s,%s,%lld,%.9f,%lld,%.3f,%lld,%.9f,%lld,%.3f\n", k->function, k->op,
              k->layer, (long long)calls[i], seconds[i], (long long)k->flops, peak,
              (long long)steps, wall, (long long)k->bytes, memory);
    }
    if (fclose(f) != 0 || rename(tmp, csv_path) != 0)
      xc_die(NULL, "cannot write %s: %s", csv_path, strerror(errno));
    free(tmp);
  }
  free(rows);
}

// Threads for generated code. xc_parallel_for splits [0, n) into one
// contiguous chunk per OpenMP thread (static schedule): the split depends
// only on n and the thread count, so the same --threads gives bit-identical
// results run after run.
#include "rt.h"

#include <omp.h>
#include <stdlib.h>
#include <unistd.h>

// libgomp's idle threads spin between parallel regions by default. A
// training step opens a dozen regions, and on a busy or small machine (2
// cores shared with a data thread) the spinning threads steal the cores the
// work needs: we measured 10x slower steps. libgomp reads OMP_WAIT_POLICY
// only when it loads, so when the user has not chosen a policy, run the
// program again with "passive" set. A user's own setting is respected.
// Re-measured with cifar10 on 2 cores: on a quiet machine a short spin
// (GOMP_SPINCOUNT=10000) is ~12% faster than passive, but with one busy
// process beside the run, any spinning makes the steps 1.8-3.5x slower while
// passive loses ~30%. The robust choice stays passive.
void xc_passive_wait(char **argv) {
  if (getenv("OMP_WAIT_POLICY"))
    return;
  setenv("OMP_WAIT_POLICY", "passive", 1);
  execv("/proc/self/exe", argv); // returns only on failure: carry on spinning
}

void xc_set_threads(int n) {
  // A fixed team size: dynamic adjustment would change the chunks.
  omp_set_dynamic(0);
  if (n > 0)
    omp_set_num_threads(n);
}

int xc_threads(void) { return omp_get_max_threads(); }

void xc_parallel_for(int64_t n, void (*body)(void *ctx, int64_t lo, int64_t hi), void *ctx) {
  if (n <= 0)
    return;
  int want = omp_get_max_threads();
  // Nested calls (a body that calls xc_parallel_for) run serially inside
  // their thread rather than oversubscribing the cores.
  if (want <= 1 || n == 1 || omp_in_parallel()) {
    body(ctx, 0, n);
    return;
  }
  if (want > n)
    want = (int)n;
#pragma omp parallel num_threads(want)
  {
    int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
    if (lo < hi)
      body(ctx, lo, hi);
  }
}

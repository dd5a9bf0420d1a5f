// Threads for generated code. xc_parallel_for splits [0, n) into one
// contiguous chunk per OpenMP thread (static schedule): the split depends
// only on n and the thread count, so the same --threads gives bit-identical
// results run after run. A step function with parallel kernels runs as one
// team (xc_parallel_step): every thread walks the step, takes its chunk of
// each parallel kernel (xc_team_for, the same split) and meets the others
// at a barrier between kernels, instead of one OpenMP region per kernel.
#define _GNU_SOURCE // RUSAGE_THREAD
#include "rt.h"

#include <limits.h>
#include <linux/futex.h>
#include <omp.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

// libgomp's idle threads spin between parallel regions by default. A
// training step used to open a dozen regions, and on a busy or small machine (2
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

// --- One team per step ------------------------------------------------------------------
//
// With OMP_WAIT_POLICY=passive (above) an idle thread sleeps in the kernel,
// and waking it costs 25-50 us on this machine kind: an OpenMP region per
// kernel cost the seed net a fifth of its step. So a step opens one region,
// and its threads meet at this barrier between kernels. A thread that
// arrives early first yields the core for up to SPIN_NS (on a quiet
// machine the others arrive within microseconds), then sleeps on a futex
// until the last one arrives. Yielding costs a thread its fair share of
// the cores, though: beside a busy process the scheduler then runs the
// other process when the team needs the core. So every CHECK_EVERY
// barriers a thread looks at how often it was switched out without
// sleeping (getrusage's involuntary context switches, which a yield that
// let someone else run counts too); if that happened, something else wants
// the cores, and it sleeps at once until a quiet window. Measured with
// cifar10 on 2 cores, 1500 steps: whole runs 14% shorter than with a
// region per kernel on a quiet machine, and the same within the noise
// (+-5%) beside one busy process.
enum { SPIN_NS = 30000, CHECK_EVERY = 64 };

typedef struct {
  _Atomic uint32_t arrived, generation, sleepers;
  int size;
} Team;

typedef struct {
  Team *team;
  int thread;
} Member;

static _Thread_local Member self;               // team NULL: not in a step's team
static _Thread_local int64_t spin_ns = SPIN_NS; // how long this thread yields
static _Thread_local int barriers;              // this thread has waited at
static _Thread_local long switched;             // involuntary switches at the last look

static void futex(_Atomic uint32_t *word, int op, uint32_t val) {
  syscall(SYS_futex, (uint32_t *)word, op, val, NULL, NULL, 0);
}

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

void xc_team_barrier(void) {
  Team *t = self.team;
  if (!t || t->size == 1)
    return;
  uint32_t gen = atomic_load(&t->generation);
  if (atomic_fetch_add(&t->arrived, 1) + 1 == (uint32_t)t->size) {
    // The last one: nobody else touches arrived until generation moves.
    atomic_store(&t->arrived, 0);
    atomic_store(&t->generation, gen + 1);
    if (atomic_load(&t->sleepers))
      futex(&t->generation, FUTEX_WAKE_PRIVATE, INT_MAX);
    return;
  }
  if (++barriers % CHECK_EVERY == 0) {
    struct rusage u;
    if (getrusage(RUSAGE_THREAD, &u) == 0) {
      spin_ns = u.ru_nivcsw - switched > 1 ? 0 : SPIN_NS;
      switched = u.ru_nivcsw;
    }
  }
  int64_t until = now_ns() + spin_ns;
  while (atomic_load(&t->generation) == gen && now_ns() < until)
    sched_yield();
  if (atomic_load(&t->generation) == gen) {
    // sleepers is raised before generation is looked at again (both
    // sequentially consistent), so the last arrival either sees a sleeper
    // and wakes it, or the futex finds generation moved and returns.
    atomic_fetch_add(&t->sleepers, 1);
    while (atomic_load(&t->generation) == gen)
      futex(&t->generation, FUTEX_WAIT_PRIVATE, gen);
    atomic_fetch_sub(&t->sleepers, 1);
  }
}

int xc_team_thread(void) { return self.team ? self.thread : 0; }

void xc_team_for(int64_t n, void (*body)(void *ctx, int64_t lo, int64_t hi), void *ctx) {
  Team *t = self.team;
  if (!t) { // called outside a step: an ordinary parallel loop
    xc_parallel_for(n, body, ctx);
    return;
  }
  // xc_parallel_for's split: min(threads, n) chunks, so results do not
  // depend on which of the two ran the kernel.
  int64_t nt = t->size < n ? t->size : n, i = self.thread;
  if (i < nt) {
    int64_t lo = n * i / nt, hi = n * (i + 1) / nt;
    if (lo < hi)
      body(ctx, lo, hi);
  }
  xc_team_barrier();
}

void xc_parallel_step(void (*step)(void **args), void **args) {
  int want = omp_get_max_threads();
  if (want <= 1 || omp_in_parallel()) {
    Team one = {.size = 1};
    Member outer = self;
    self = (Member){&one, 0};
    step(args);
    self = outer;
    return;
  }
  Team team = {.size = want};
#pragma omp parallel num_threads(want)
  {
    // The size OpenMP granted (it may give fewer threads than asked).
#pragma omp single
    team.size = omp_get_num_threads();
    Member mine = self;
    self = (Member){&team, omp_get_thread_num()};
    step(args);
    self = mine;
  }
}

// Data-parallel training over MPI: ranks, the deterministic gradient sum,
// the small collectives the training loop needs, and the check that every
// rank runs the same model on the same data. Compiled twice: with
// XENTCC_MPI into libxentcc_dist_mpi.a (NAME-train when Open MPI was found
// at configure time), and without it into the one-rank stub libxentcc_dist.a.
#include "rt.h"

#include <stdlib.h>
#include <string.h>

#ifdef XENTCC_MPI
#include <mpi.h>
#endif

static int dist_rank, dist_size = 1;

int xc_dist_rank(void) { return dist_rank; }
int xc_dist_size(void) { return dist_size; }

// A launcher's rank count from the environment: Open MPI's mpirun sets
// OMPI_COMM_WORLD_SIZE, MPICH's and Slurm's PMI set PMI_SIZE, and srun
// SLURM_STEP_NUM_TASKS for the tasks of its job step (whatever its --mpi;
// not SLURM_NTASKS, which a batch script sees outside any step).
int xc_dist_launched_size(void) {
  const char *names[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"};
  for (int i = 0; i < 3; i++) {
    const char *v = getenv(names[i]);
    if (v && *v) {
      char *end;
      long n = strtol(v, &end, 10);
      if (!*end && n > 1 && n < 1 << 20)
        return (int)n;
    }
  }
  return 1;
}

// The first of nkeys values on which a rank differs from rank 0, all[r *
// nkeys + k] being rank r's key k; -1 when every rank agrees. *who: the
// first such rank.
int xc_dist_disagreement(const uint64_t *all, int nranks, int nkeys, int *who) {
  for (int k = 0; k < nkeys; k++)
    for (int r = 1; r < nranks; r++)
      if (all[(size_t)r * nkeys + k] != all[k]) {
        *who = r;
        return k;
      }
  return -1;
}

// A 64-bit hash of bytes, for the agreement check only (not cryptographic):
// eight bytes at a time, so hashing a data set of 150 MB costs ~0.1 s.
uint64_t xc_dist_hash(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  const uint64_t k = 0x9e3779b97f4a7c15ull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, b + i, 8);
    h = (h ^ w) * k;
    h ^= h >> 29;
  }
  for (; i < n; i++)
    h = (h ^ b[i]) * k;
  return h ^ (h >> 32) ^ n;
}

#ifdef XENTCC_MPI

// An error on any rank ends the whole job with status 1 (xc_die's hook):
// the other ranks would otherwise wait forever in the next collective.
static void abort_job(void) {
  fflush(NULL);
  MPI_Abort(MPI_COMM_WORLD, 1);
  exit(1);
}

static void check(int rc, const char *what) {
  if (rc != MPI_SUCCESS) {
    char text[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(rc, text, &n);
    xc_die("check the MPI installation and the host list", "%s failed: %s", what, text);
  }
}

bool xc_dist_available(void) { return true; }

void xc_dist_init(int *argc, char ***argv) {
  if (xc_dist_launched_size() == 1 && !getenv("OMPI_COMM_WORLD_RANK") && !getenv("PMI_RANK") &&
      !getenv("PMIX_RANK"))
    return; // started alone: no MPI at all, as a build without it
  int provided;
  check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  MPI_Comm_rank(MPI_COMM_WORLD, &dist_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &dist_size);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  if (dist_size > 1) {
    xc_set_die_hook(abort_job);
    xc_set_report_rank(dist_rank, dist_size);
  }
}

void xc_dist_finalize(void) {
  int on = 0, off = 0;
  MPI_Initialized(&on);
  MPI_Finalized(&off);
  if (on && !off)
    MPI_Finalize();
}

// Sums v[0..n) across ranks in place, the same bits on every rank and in
// every run whatever the network: a reduce-scatter of our own (rank r owns
// chunk r; MPI_Alltoallv hands it every rank's copy, and it adds them in
// rank order 0..N-1), then MPI_Allgatherv of the sums. MPI_Allreduce would
// let the library pick the order of the additions.
void xc_dist_sum_floats(float *v, int64_t n) {
  int size = dist_size;
  if (size == 1)
    return;
  int *count = xc_calloc(size, sizeof *count), *at = xc_calloc(size, sizeof *at);
  int *rcount = xc_calloc(size, sizeof *rcount), *rat = xc_calloc(size, sizeof *rat);
  if (n > (int64_t)INT32_MAX)
    xc_die(NULL, "%lld floats of gradients: more than MPI counts in int", (long long)n);
  for (int r = 0; r < size; r++) {
    count[r] = (int)(n * (r + 1) / size - n * r / size);
    at[r] = (int)(n * r / size);
  }
  int mine = count[dist_rank];
  float *in = xc_alloc_floats((int64_t)mine * size + 1);
  for (int r = 0; r < size; r++)
    rcount[r] = mine, rat[r] = r * mine;
  check(MPI_Alltoallv(v, count, at, MPI_FLOAT, in, rcount, rat, MPI_FLOAT, MPI_COMM_WORLD),
        "MPI_Alltoallv");
  float *sum = v + at[dist_rank];
  for (int i = 0; i < mine; i++) {
    float s = in[i];
    for (int r = 1; r < size; r++)
      s += in[(size_t)r * mine + i];
    sum[i] = s;
  }
  check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, v, count, at, MPI_FLOAT, MPI_COMM_WORLD),
        "MPI_Allgatherv");
  free(in), free(count), free(at), free(rcount), free(rat);
}

void xc_dist_gather_doubles(const double *mine, int n, double *all) {
  if (dist_size == 1) {
    memcpy(all, mine, sizeof *all * n);
    return;
  }
  check(MPI_Allgather(mine, n, MPI_DOUBLE, all, n, MPI_DOUBLE, MPI_COMM_WORLD), "MPI_Allgather");
}

void xc_dist_gather_u64(const uint64_t *mine, int n, uint64_t *all) {
  if (dist_size == 1) {
    memcpy(all, mine, sizeof *all * n);
    return;
  }
  check(MPI_Allgather(mine, n, MPI_UINT64_T, all, n, MPI_UINT64_T, MPI_COMM_WORLD),
        "MPI_Allgather");
}

void xc_dist_broadcast(void *p, size_t bytes) {
  if (dist_size == 1)
    return;
  for (size_t done = 0; done < bytes;) { // counts are int: in pieces of 1 GiB
    size_t part = bytes - done < (1u << 30) ? bytes - done : (1u << 30);
    check(MPI_Bcast((char *)p + done, (int)part, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast");
    done += part;
  }
}

#else

// Without MPI: one rank. Started by a launcher for several ranks, every
// copy would train alone and write the same files: refuse.
void xc_dist_init(int *argc, char ***argv) {
  int n = xc_dist_launched_size();
  if (n > 1)
    xc_die("install Open MPI (apt-get install libopenmpi-dev openmpi-bin), configure and build "
           "xentcc again (cmake -S . -B build -DXENTCC_MPI=ON && cmake --build build: it says "
           "\"MPI found\"), then compile the model again",
           "started as one of %d ranks (mpirun, srun), but this executable was built without "
           "MPI: each copy would train alone",
           n);
}

bool xc_dist_available(void) { return false; }
void xc_dist_finalize(void) {}
void xc_dist_sum_floats(float *v, int64_t n) {}
void xc_dist_gather_doubles(const double *mine, int n, double *all) {
  memcpy(all, mine, sizeof *all * n);
}
void xc_dist_gather_u64(const uint64_t *mine, int n, uint64_t *all) {
  memcpy(all, mine, sizeof *all * n);
}
void xc_dist_broadcast(void *p, size_t bytes) {}

#endif

// The pieces of data-parallel training that need no second process
// (runtime/distributed.c, loader.c): the agreement check's comparison and
// hash, the launcher's rank count, the one-rank stub's refusal, and the
// sharded batch stream, whose ranks' rows put together are, row for row
// and bit for bit, the batches of one process with the global batch.
#include "../common/capture.h"
#include "rt.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

START_TEST(disagreement_names_key_and_rank) {
  // 3 ranks x 4 keys: rank 2 differs in key 1 and key 3; key 1 comes first.
  uint64_t all[12] = {1, 2, 3, 4, 1, 2, 3, 4, 1, 9, 3, 8};
  int who = -1;
  ck_assert_int_eq(xc_dist_disagreement(all, 3, 4, &who), 1);
  ck_assert_int_eq(who, 2);
  all[9] = 2, all[11] = 4;
  ck_assert_int_eq(xc_dist_disagreement(all, 3, 4, &who), -1);
  ck_assert_int_eq(xc_dist_disagreement(all, 1, 4, &who), -1);
  // The first rank that differs, on the first key that does.
  all[4] = 7, all[8] = 7;
  ck_assert_int_eq(xc_dist_disagreement(all, 3, 4, &who), 0);
  ck_assert_int_eq(who, 1);
}
END_TEST

START_TEST(hash_sees_every_byte) {
  uint8_t b[37];
  for (int i = 0; i < 37; i++)
    b[i] = (uint8_t)i;
  uint64_t h = xc_dist_hash(0, b, sizeof b);
  ck_assert(h == xc_dist_hash(0, b, sizeof b));
  for (int i = 0; i < 37; i++) {
    b[i] ^= 1;
    ck_assert(xc_dist_hash(0, b, sizeof b) != h);
    b[i] ^= 1;
  }
  ck_assert(xc_dist_hash(0, b, 36) != h); // the length counts
}
END_TEST

START_TEST(launched_size_from_environment) {
  unsetenv("OMPI_COMM_WORLD_SIZE"), unsetenv("PMI_SIZE"), unsetenv("SLURM_STEP_NUM_TASKS");
  ck_assert_int_eq(xc_dist_launched_size(), 1);
  setenv("SLURM_STEP_NUM_TASKS", "5", 1); // srun
  ck_assert_int_eq(xc_dist_launched_size(), 5);
  setenv("SLURM_STEP_NUM_TASKS", "1", 1);
  ck_assert_int_eq(xc_dist_launched_size(), 1);
  unsetenv("SLURM_STEP_NUM_TASKS");
  setenv("PMI_SIZE", "4", 1);
  ck_assert_int_eq(xc_dist_launched_size(), 4);
  setenv("OMPI_COMM_WORLD_SIZE", "3", 1);
  ck_assert_int_eq(xc_dist_launched_size(), 3);
  setenv("OMPI_COMM_WORLD_SIZE", "3x", 1); // not a number: the next name
  ck_assert_int_eq(xc_dist_launched_size(), 4);
  unsetenv("OMPI_COMM_WORLD_SIZE"), unsetenv("PMI_SIZE");
}
END_TEST

// The stub (this test links the one-rank runtime): started as one of two
// ranks, it refuses (exit 1, in a forked child).
START_TEST(stub_refuses_several_ranks) {
  setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  int argc = 1;
  char *args[] = {"x", NULL}, **argv = args;
  xc_dist_init(&argc, &argv);
}
END_TEST

START_TEST(stub_alone_is_rank_0_of_1) {
  unsetenv("OMPI_COMM_WORLD_SIZE"), unsetenv("PMI_SIZE");
  int argc = 1;
  char *args[] = {"x", NULL}, **argv = args;
  xc_dist_init(&argc, &argv);
  ck_assert_int_eq(xc_dist_rank(), 0);
  ck_assert_int_eq(xc_dist_size(), 1);
  float v[3] = {1, 2, 3};
  xc_dist_sum_floats(v, 3);
  ck_assert(v[0] == 1 && v[1] == 2 && v[2] == 3);
}
END_TEST

// 23 samples, ranks of 3 rows, global batches of 9: 3 steps an epoch, the
// last 5 rows (rank 0: 3, rank 1: 2, rank 2: none). Random crops and flips
// on: every rank draws for the rows before and after its own.
START_TEST(shards_put_together_are_the_global_batch) {
  enum { N = 23, B = 3, R = 3, C = 1, H = 4, W = 4, S = C * H * W };
  Dataset d = {0};
  d.n = N, d.c = C, d.h = H, d.w = W;
  static uint8_t px[N * S];
  int32_t labels[N];
  for (int i = 0; i < N * S; i++)
    px[i] = (uint8_t)(i * 37 + 11);
  for (int i = 0; i < N; i++)
    labels[i] = i % 5;
  d.pixels = px, d.labels = labels;
  Transform t = {.mean = {0.5f}, .std = {0.25f, 1, 1, 1}, .crop_padding = 2, .flip = true};
  xc_transform_tables(&t);
  for (int drop_last = 0; drop_last < 2; drop_last++) {
    Loader *one = loader_start(&d, &t, B * R, true, drop_last, 5, 0, 2, false, true);
    Loader *rank[R];
    for (int r = 0; r < R; r++) {
      rank[r] = loader_start_shard(&d, &t, B, r, R, true, drop_last, 5, 0, 2, false, r == 1);
      ck_assert_int_eq(loader_steps_per_epoch(rank[r]), drop_last ? 2 : 3);
    }
    ck_assert_int_eq(loader_steps_per_epoch(one), drop_last ? 2 : 3);
    Batch g, b;
    int steps = 0;
    while (loader_next(one, &g)) {
      for (int r = 0; r < R; r++) {
        ck_assert(loader_next(rank[r], &b));
        ck_assert_int_eq(b.epoch, g.epoch);
        ck_assert_int_eq(b.iter, g.iter);
        int want = g.rows - r * B < 0 ? 0 : g.rows - r * B > B ? B : g.rows - r * B;
        ck_assert_int_eq(b.rows, want);
        ck_assert_int_eq(memcmp(b.images, g.images + r * B * S, sizeof(float) * S * want), 0);
        ck_assert_int_eq(memcmp(b.labels, (int32_t *)g.labels + r * B, 4 * want), 0);
        for (int i = want; i < B; i++)
          ck_assert_int_eq(((int32_t *)b.labels)[i], XC_PAD_LABEL);
        loader_release(rank[r]);
      }
      loader_release(one);
      steps++;
    }
    ck_assert_int_eq(steps, drop_last ? 4 : 6);
    for (int r = 0; r < R; r++) {
      ck_assert(!loader_next(rank[r], &b));
      loader_free(rank[r]);
    }
    loader_free(one);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("distributed");
  TCase *tc = tcase_create("pieces");
  tcase_add_test(tc, disagreement_names_key_and_rank);
  tcase_add_test(tc, hash_sees_every_byte);
  tcase_add_test(tc, launched_size_from_environment);
  tcase_add_exit_test(tc, stub_refuses_several_ranks, 1);
  tcase_add_test(tc, stub_alone_is_rank_0_of_1);
  tcase_add_test(tc, shards_put_together_are_the_global_batch);
  suite_add_tcase(s, tc);
  return run_suite(s);
}

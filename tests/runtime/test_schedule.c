// The learning-rate schedules of runtime/schedule.c against the values
// PyTorch 1.13's schedulers put in optimizer.param_groups[0]["lr"] (and
// "momentum") before each step, printed by torch with base lr 0.1 and
// SGD(momentum=0.9). The product-level test (tests/options) compares the
// lr column of real training runs with PyTorch too; this pins the formulas
// and their edge cases (repeated milestones, the warm-up hand-over,
// three-phase one-cycle) in one place.
#include "../common/capture.h"
#include "rt.h"

#include <check.h>
#include <math.h>

static void expect(const char *what, const XcSchedule *s, double base, int64_t total,
                   const double *lr, const double *momentum, int n) {
  for (int t = 0; t < n; t++) {
    XcHyper h = xc_schedule_at(s, base, t, total);
    ck_assert_msg(fabs(h.lr - lr[t]) <= 1e-12 * fabs(lr[t]) + 1e-18, "%s: lr at t=%d is %.17g, torch %.17g",
                  what, t, h.lr, lr[t]);
    if (momentum)
      ck_assert_msg(fabs(h.momentum - momentum[t]) <= 1e-12, "%s: momentum at t=%d is %.17g, torch %.17g",
                    what, t, h.momentum, momentum[t]);
  }
}

START_TEST(step_multistep_exponential) {
  XcSchedule step = {.kind = XC_SCHED_STEP, .step_size = 3, .gamma = 0.5};
  expect("StepLR(3, 0.5)", &step, 0.1, 0, (double[]){0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025},
         NULL, 8);
  // Milestones [2, 5, 5]: the repeated one decays twice.
  static const int64_t ms[] = {2, 5, 5};
  XcSchedule multi = {.kind = XC_SCHED_MULTISTEP, .milestones = ms, .nmilestones = 3, .gamma = 0.1};
  expect("MultiStepLR([2, 5, 5], 0.1)", &multi, 0.1, 0,
         (double[]){0.1, 0.1, 0.010000000000000002, 0.010000000000000002, 0.010000000000000002,
                    0.00010000000000000005, 0.00010000000000000005, 0.00010000000000000005},
         NULL, 8);
  XcSchedule expo = {.kind = XC_SCHED_EXPONENTIAL, .gamma = 0.9};
  expect("ExponentialLR(0.9)", &expo, 0.1, 0,
         (double[]){0.1, 0.09000000000000001, 0.08100000000000002, 0.07290000000000002,
                    0.06561000000000002, 0.05904900000000002},
         NULL, 6);
}
END_TEST

START_TEST(cosine_linear_warmup) {
  // Past T_max the cosine comes back up, as PyTorch's does.
  XcSchedule cos = {.kind = XC_SCHED_COSINE, .t_max = 5, .eta_min = 0.001};
  expect("CosineAnnealingLR(5, 0.001)", &cos, 0.1, 0,
         (double[]){0.1, 0.0905463412215599, 0.06579634122155989, 0.035203658778440096,
                    0.010453658778440105, 0.001, 0.010453658778440102, 0.03520365877844012,
                    0.06579634122155993, 0.09054634122155995, 0.10000000000000005,
                    0.09054634122155998},
         NULL, 12);
  XcSchedule lin = {.kind = XC_SCHED_LINEAR, .start_factor = 0.25, .end_factor = 0.75, .total_iters = 4};
  expect("LinearLR(0.25, 0.75, 4)", &lin, 0.1, 0,
         (double[]){0.025, 0.037500000000000006, 0.05, 0.0625, 0.075, 0.075, 0.075}, NULL, 7);
  // SequentialLR([LinearLR(0.1, total_iters=3), CosineAnnealingLR(4, 0.001)], [3]).
  XcSchedule warm = {.kind = XC_SCHED_COSINE, .t_max = 4, .eta_min = 0.001, .warmup_iters = 3,
                     .warmup_factor = 0.1};
  expect("warm-up then cosine", &warm, 0.1, 0,
         (double[]){0.010000000000000002, 0.04, 0.07, 0.1, 0.0855017856687341, 0.0505,
                    0.0154982143312659, 0.001, 0.015498214331265896},
         NULL, 9);
}
END_TEST

START_TEST(one_cycle) {
  // OneCycleLR(max_lr=0.5, total_steps=10): the base lr is max_lr.
  XcSchedule oc = {.kind = XC_SCHED_ONE_CYCLE, .total_steps = 10, .pct_start = 0.3,
                   .div_factor = 25, .final_div_factor = 1e4, .cycle_momentum = 1,
                   .base_momentum = 0.85, .max_momentum = 0.95};
  double lr[] = {0.020000000000000018, 0.26, 0.5, 0.47524231600673683, 0.40587282697488153,
                 0.30563101096814466, 0.19437098903185537, 0.09412917302511849,
                 0.024759683993263143, 2e-06};
  double mom[] = {0.95, 0.8999999999999999, 0.85, 0.854951556604879, 0.8688255099070633,
                  0.8888739533021842, 0.9111260466978157, 0.9311744900929366,
                  0.945048443395121, 0.95};
  expect("OneCycleLR(0.5, 10)", &oc, 0.5, 0, lr, mom, 10);
  // total_steps 0 takes the run's length.
  oc.total_steps = 0;
  expect("OneCycleLR over the run", &oc, 0.5, 10, lr, mom, 10);
  // three_phase, linear annealing, pct_start 0.25, div 10, final div 100.
  XcSchedule three = {.kind = XC_SCHED_ONE_CYCLE, .total_steps = 10, .pct_start = 0.25,
                      .div_factor = 10, .final_div_factor = 100, .anneal_linear = 1,
                      .three_phase = 1, .cycle_momentum = 1, .base_momentum = 0.85,
                      .max_momentum = 0.95};
  expect("OneCycleLR three-phase linear", &three, 0.5, 0,
         (double[]){0.05, 0.35, 0.35, 0.04999999999999999, 0.04175, 0.0335, 0.02525, 0.017,
                    0.00875, 0.0005000000000000004},
         (double[]){0.95, 0.8833333333333333, 0.8833333333333333, 0.95, 0.95, 0.95, 0.95, 0.95,
                    0.95, 0.95},
         10);
}
END_TEST

START_TEST(schedule_t) {
  XcSchedule per_epoch = {.kind = XC_SCHED_STEP}, per_step = {.kind = XC_SCHED_STEP, .per_step = 1};
  ck_assert_int_eq(xc_schedule_t(&per_epoch, 17, 2), 2);
  ck_assert_int_eq(xc_schedule_t(&per_step, 17, 2), 16);
}
END_TEST

int main(void) {
  Suite *s = suite_create("schedule");
  TCase *tc = tcase_create("torch");
  tcase_add_test(tc, step_multistep_exponential);
  tcase_add_test(tc, cosine_linear_warmup);
  tcase_add_test(tc, one_cycle);
  tcase_add_test(tc, schedule_t);
  suite_add_tcase(s, tc);
  return run_suite(s);
}

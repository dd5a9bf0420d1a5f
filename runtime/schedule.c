// Learning-rate schedules: the value of torch.optim.lr_scheduler's
// schedulers at scheduler step t, in closed form and in double precision as
// PyTorch's Python floats. The training loop calls this once per optimizer
// step and hands the result to the generated step (XcStepArgs), so what the
// log shows is what the step used. t counts scheduler.step() calls made
// before the step: the epoch (from 0) or, for per-step schedules, the
// optimizer steps already taken.
#include "rt.h"

#include <math.h>

// _annealing_cos and _annealing_linear of OneCycleLR: from start at pct 0 to
// end at pct 1.
static double anneal(const XcSchedule *s, double start, double end, double pct) {
  if (s->anneal_linear)
    return (end - start) * pct + start;
  return end + (start - end) / 2.0 * (cos(M_PI * pct) + 1.0);
}

// OneCycleLR.get_lr (PyTorch 1.13), max_lr being the model's learning
// rate: phases end at float step numbers; a phase runs from the previous
// one's end step.
static XcHyper one_cycle(const XcSchedule *s, double max_lr, int64_t t, int64_t total) {
  double initial = max_lr / s->div_factor, min_lr = initial / s->final_div_factor;
  double end[3], lr[4], mom[4];
  int phases;
  if (s->three_phase) {
    phases = 3;
    end[0] = s->pct_start * (double)total - 1, end[1] = 2 * s->pct_start * (double)total - 2;
    end[2] = (double)total - 1;
    double l[4] = {initial, max_lr, initial, min_lr};
    double m[4] = {s->max_momentum, s->base_momentum, s->max_momentum, s->max_momentum};
    for (int i = 0; i < 4; i++)
      lr[i] = l[i], mom[i] = m[i];
  } else {
    phases = 2;
    end[0] = s->pct_start * (double)total - 1, end[1] = (double)total - 1;
    double l[3] = {initial, max_lr, min_lr};
    double m[3] = {s->max_momentum, s->base_momentum, s->max_momentum};
    for (int i = 0; i < 3; i++)
      lr[i] = l[i], mom[i] = m[i];
  }
  double start = 0;
  for (int i = 0; i < phases; i++) {
    if ((double)t <= end[i] || i == phases - 1) {
      double pct = ((double)t - start) / (end[i] - start);
      return (XcHyper){anneal(s, lr[i], lr[i + 1], pct), anneal(s, mom[i], mom[i + 1], pct)};
    }
    start = end[i];
  }
  return (XcHyper){initial, s->max_momentum}; // not reached
}

static double main_lr(const XcSchedule *s, double base, int64_t t) {
  switch (s->kind) {
  case XC_SCHED_STEP:
    return base * pow(s->gamma, (double)(t / s->step_size));
  case XC_SCHED_MULTISTEP: {
    int64_t passed = 0; // bisect_right(milestones, t)
    while (passed < s->nmilestones && s->milestones[passed] <= t)
      passed++;
    return base * pow(s->gamma, (double)passed);
  }
  case XC_SCHED_EXPONENTIAL:
    return base * pow(s->gamma, (double)t);
  case XC_SCHED_COSINE:
    return s->eta_min + (base - s->eta_min) * (1.0 + cos(M_PI * (double)t / (double)s->t_max)) / 2.0;
  case XC_SCHED_LINEAR: {
    double done = (double)(t < s->total_iters ? t : s->total_iters) / (double)s->total_iters;
    return base * (s->start_factor + (s->end_factor - s->start_factor) * done);
  }
  default:
    return base;
  }
}

XcHyper xc_schedule_at(const XcSchedule *s, double base_lr, int64_t t, int64_t total) {
  if (s->kind == XC_SCHED_ONE_CYCLE)
    return one_cycle(s, base_lr, t, s->total_steps ? s->total_steps : total);
  // SequentialLR([LinearLR(warmup_factor, 1.0, warmup_iters), main],
  // milestones=[warmup_iters]): the main schedule starts at its own t = 0.
  if (s->warmup_iters > 0 && t < s->warmup_iters)
    return (XcHyper){base_lr * (s->warmup_factor +
                                (1.0 - s->warmup_factor) * (double)t / (double)s->warmup_iters),
                     0};
  return (XcHyper){main_lr(s, base_lr, t - s->warmup_iters), 0};
}

// OneCycleLR divides by each phase's length in float steps; the first
// phase, which step 0 is in, ends at pct_start * total - 1. When that is
// exactly 0 the phase is empty and PyTorch's scheduler raises
// ZeroDivisionError as it is made; here the learning rate would be NaN.
// Later phases cannot be both empty and reached.
void xc_schedule_check(const XcSchedule *s, int64_t total) {
  if (s->kind != XC_SCHED_ONE_CYCLE)
    return;
  int64_t n = s->total_steps ? s->total_steps : total;
  if (s->pct_start * (double)n - 1 == 0)
    xc_die(xc_format("train for more %s, or change the YAML's one_cycle pct_start",
                     s->per_step ? "steps" : "epochs"),
           "one_cycle over %lld %s with pct_start %g leaves its warm-up phase empty "
           "(PyTorch's OneCycleLR divides by zero there)",
           (long long)n, s->per_step ? "steps" : "epochs", s->pct_start);
}

int64_t xc_schedule_t(const XcSchedule *s, int64_t step, int epoch) {
  return s->per_step ? step - 1 : epoch;
}

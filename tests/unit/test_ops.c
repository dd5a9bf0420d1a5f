// The rule table (ir/ops/): every op of ops.def has a shape rule, a
// reference evaluation and, unless the caller feeds it, one lowering rule
// (a loop nest, or an elementwise value); exactly the forward ops autodiff differentiates have
// a gradient rule, and exactly those PyTorch runs under no_grad block one. A
// new op without its rules fails here (or, without its rules_ID, to link).
#include "../common/capture.h"
#include "ir.h"
#include "ops/ops.h"

#include <check.h>
#include <stdlib.h>

// The ops a gradient flows through, and those it must not (as in PyTorch).
static const OpKind differentiable[] = {
    OP_conv2d,  OP_linear,      OP_maxpool2d, OP_avgpool2d,    OP_relu,
    OP_sigmoid, OP_softmax,     OP_log_softmax, OP_reshape,    OP_add,
    OP_mul,     OP_scale,       OP_nll_loss,  OP_softmax_cross_entropy,
    OP_bce,     OP_sigmoid_bce, OP_l2norm,    OP_batchnorm2d, OP_cast,
    OP_concat,  OP_tanh,        OP_leaky_relu, OP_gelu,
};
static const OpKind no_grad[] = {OP_batch_stats, OP_row,       OP_ema,     OP_assign,
                                 OP_dropout_mask, OP_dropout2d_mask, OP_unscale};

static bool listed(const OpKind *list, int n, OpKind op) {
  for (int i = 0; i < n; i++)
    if (list[i] == op)
      return true;
  return false;
}

START_TEST(every_op_has_its_rules) {
  for (int op = 0; op < OP_COUNT; op++) {
    const OpRules *r = op_rules(op);
    const char *name = op_info(op)->name;
    ck_assert_msg(r, "%s: no rules", name);
    ck_assert_msg(r->shape, "%s: no shape rule", name);
    ck_assert_msg(r->eval, "%s: no reference evaluation", name);
    bool source = op_info(op)->flags & OPF_SOURCE;
    ck_assert_msg(!r->lower + !r->elem == 1 + source, "%s: %s", name,
                  source ? "a source is fed, not lowered"
                  : r->lower && r->elem ? "both a loop nest and an elementwise rule"
                                        : "no lowering rule");
    bool d = listed(differentiable, sizeof differentiable / sizeof *differentiable, op);
    bool b = listed(no_grad, sizeof no_grad / sizeof *no_grad, op);
    ck_assert_msg(!r->grad == !d, "%s: %s", name,
                  d ? "autodiff differentiates it but it has no gradient rule"
                    : "it has a gradient rule but is not differentiable");
    ck_assert_msg(r->no_grad == b, "%s: %s", name,
                  b ? "no gradient may flow through it, but no_grad is not set"
                    : "no_grad is set, but gradients flow through it");
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("ops");
  TCase *tc = tcase_create("rules");
  tcase_add_test(tc, every_op_has_its_rules);
  suite_add_tcase(s, tc);
  return run_suite(s);
}

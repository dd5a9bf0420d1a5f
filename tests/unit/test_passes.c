// Unit tests of the passes on graphs built in C: the structure each pass
// leaves (op counts, names, operands, attributes), that the result verifies,
// and -- with the reference evaluator -- that rewrites keep the values.
#include "../common/capture.h"
#include "ir.h"
#include "loop.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const Loc no_loc = {0};

static Node *source(Graph *g, OpKind op, const char *name, DType dt, int rank, const int64_t *dim) {
  Node *n = node_new(g, op, NULL, 0, no_loc);
  n->name = xstrdup(name);
  n->type = type_make(dt, rank, dim);
  if (op == OP_param) {
    node_set_str(n, "init", "zeros");
    node_set_int(n, "fan_in", 0);
  } else if (op == OP_state) {
    node_set_str(n, "init", "zeros");
  }
  node_infer(n);
  return n;
}

#define DIMS(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}
#define F32(g, op, name, ...) source(g, op, name, DT_F32, DIMS(__VA_ARGS__))

static Node *op1(Graph *g, OpKind op, Node *a) {
  Node *n = node_build(g, op, no_loc, 1, a);
  node_fill_default_attrs(n);
  node_infer(n);
  return n;
}

static Node *op2(Graph *g, OpKind op, Node *a, Node *b) {
  Node *n = node_build(g, op, no_loc, 2, a, b);
  node_fill_default_attrs(n);
  node_infer(n);
  return n;
}

static Node *named(Node *n, const char *name) {
  n->name = xstrdup(name);
  return n;
}

static int count_op(Graph *g, OpKind op) {
  int k = 0;
  for (int i = 0; i < g->nnodes; i++)
    k += g->node[i]->op == op;
  return k;
}

static void run(Graph *g, const char *pass) {
  const Pass *p = pass_find(pass);
  ck_assert_msg(p, "no pass %s", pass);
  p->run(g);
  verify_graph(g);
}

// x[4,5] -> fc1 (linear 5->6) -> relu -> fc2 (linear 6->3) -> log_softmax +
// nll_loss with class weights and label smoothing 0.1. Returns loss, fc2.
static Graph *mlp_graph(void) {
  Graph *g = graph_new("mlp");
  Node *x = F32(g, OP_input, "image", 4, 5);
  Node *label = source(g, OP_input, "label", DT_I32, DIMS(4));
  Node *w1 = F32(g, OP_param, "fc1.weight", 6, 5), *b1 = F32(g, OP_param, "fc1.bias", 6);
  Node *fc1 = named(node_build(g, OP_linear, no_loc, 3, x, w1, b1), "fc1");
  node_infer(fc1);
  Node *h = op1(g, OP_relu, fc1);
  Node *w2 = F32(g, OP_param, "fc2.weight", 3, 6), *b2 = F32(g, OP_param, "fc2.bias", 3);
  Node *fc2 = named(node_build(g, OP_linear, no_loc, 3, h, w2, b2), "fc2");
  node_infer(fc2);
  Node *lsm = op1(g, OP_log_softmax, fc2);
  Node *w = node_build(g, OP_const, no_loc, 0);
  w->type = type_make(DT_F32, DIMS(3));
  node_set_floats(w, "value", (double[]){1.0, 2.0, 0.5}, 3);
  node_infer(w);
  Node *loss = named(node_build(g, OP_nll_loss, no_loc, 3, lsm, label, w), "loss");
  node_set_float(loss, "label_smoothing", 0.1);
  node_infer(loss);
  graph_return(g, loss);
  graph_return(g, fc2);
  graph_set_attr(g, "optimizer", attr_str("sgd"));
  graph_set_attr(g, "momentum", attr_float(0.9));
  verify_graph(g);
  return g;
}

// Deterministic values for every source, looked up by name so the same
// tensor feeds a graph before and after a pass renumbers it.
static float value_of(const char *name, int64_t i) {
  unsigned h = 2166136261u;
  for (const char *p = name; *p; p++)
    h = (h ^ (unsigned char)*p) * 16777619u;
  h = (h ^ (unsigned)i) * 16777619u;
  return (float)((h >> 8) % 2001) / 1000.0f - 1.0f;
}

static Tensor *sources_for(Graph *g) {
  graph_renumber(g);
  Tensor *s = xcalloc(g->nnodes, sizeof *s);
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    if (n->op != OP_input && n->op != OP_param && n->op != OP_state)
      continue;
    s[i] = tensor_new(n->type);
    for (int64_t k = 0; k < type_numel(&n->type); k++) {
      if (n->type.dtype == DT_I32) // labels: class indices below 3; step and epoch from 1
        s[i].i[k] = !strcmp(n->name, "label") ? (int32_t)(k % 3) : 1;
      else
        s[i].f[k] = value_of(n->name, k);
    }
  }
  return s;
}

// Returned value r of g, evaluated, as a fresh copy.
static float *eval_ret(Graph *g, int r) {
  Tensor *s = sources_for(g);
  Tensor *v = eval_graph(g, s);
  Tensor t = v[g->ret[r]->id];
  int64_t n = type_numel(&t.type);
  float *out = xcalloc(n, sizeof *out);
  memcpy(out, t.f, n * sizeof *out);
  return out;
}

static void assert_close(const float *a, const float *b, int64_t n, float tol) {
  for (int64_t i = 0; i < n; i++)
    ck_assert_msg(fabsf(a[i] - b[i]) <= tol * (1 + fabsf(b[i])), "element %ld: %g vs %g", (long)i,
                  a[i], b[i]);
}

START_TEST(fuse_softmax_ce_keeps_weight_and_smoothing) {
  Graph *g = mlp_graph();
  float *before = eval_ret(g, 0);
  run(g, "fuse-softmax-ce");
  ck_assert_int_eq(count_op(g, OP_softmax_cross_entropy), 1);
  ck_assert_int_eq(count_op(g, OP_log_softmax), 0);
  ck_assert_int_eq(count_op(g, OP_nll_loss), 0);
  Node *loss = g->ret[0];
  ck_assert_str_eq(loss->name, "loss");
  ck_assert_int_eq(loss->nin, 3);
  ck_assert_ptr_eq(loss->in[0], graph_find(g, "fc2"));
  ck_assert_int_eq(loss->in[2]->op, OP_const);
  ck_assert_double_eq(node_float(loss, "label_smoothing"), 0.1);
  assert_close(eval_ret(g, 0), before, 1, 1e-5f);
}
END_TEST

START_TEST(fuse_sigmoid_bce_keeps_pos_weight) {
  Graph *g = graph_new("bin");
  Node *x = F32(g, OP_input, "x", 4, 2), *y = F32(g, OP_input, "label", 4, 2);
  Node *s = op1(g, OP_sigmoid, x);
  Node *loss = named(op2(g, OP_bce, s, y), "loss");
  node_set_floats(loss, "pos_weight", (double[]){3.0, 0.5}, 2);
  node_infer(loss);
  graph_return(g, loss);
  graph_return(g, x);
  verify_graph(g);
  float *before = eval_ret(g, 0);
  run(g, "fuse-sigmoid-bce");
  ck_assert_int_eq(count_op(g, OP_sigmoid_bce), 1);
  ck_assert_int_eq(count_op(g, OP_sigmoid), 0);
  ck_assert_int_eq(count_op(g, OP_bce), 0);
  ck_assert_ptr_eq(g->ret[0]->in[0], x);
  const Attr *pw = node_attr(g->ret[0], "pos_weight");
  ck_assert_int_eq(pw->n, 2);
  ck_assert_double_eq(pw->floats[0], 3.0);
  ck_assert_double_eq(pw->floats[1], 0.5);
  assert_close(eval_ret(g, 0), before, 1, 1e-4f);
}
END_TEST

START_TEST(autodiff_names_every_param_grad) {
  Graph *g = mlp_graph();
  run(g, "fuse-softmax-ce");
  run(g, "autodiff");
  const char *params[] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
  for (int i = 0; i < 4; i++) {
    Node *p = graph_find(g, params[i]);
    Node *gp = graph_find(g, xformat("%s.grad", params[i]));
    ck_assert_msg(gp, "no %s.grad", params[i]);
    ck_assert(type_eq(&gp->type, &p->type));
  }
  ck_assert_int_eq(count_op(g, OP_softmax_cross_entropy_grad), 1);
  ck_assert_int_eq(count_op(g, OP_relu_grad), 1);
  // The image is an input: no gradient is computed for it.
  ck_assert_int_eq(count_op(g, OP_linear_grad_input), 1);
  ck_assert_int_eq(count_op(g, OP_linear_grad_weight), 2);
  ck_assert_int_eq(count_op(g, OP_bias_grad), 2);
  ck_assert_str_eq(g->ret[0]->name, "loss");
}
END_TEST

// d(loss)/d(fc2.bias) from autodiff against a central finite difference.
START_TEST(autodiff_matches_finite_differences) {
  Graph *g = mlp_graph();
  run(g, "autodiff"); // the unfused form: log_softmax_grad and nll_loss_grad
  Node *gb = graph_find(g, "fc2.bias.grad");
  ck_assert(gb);
  Tensor *s = sources_for(g);
  Tensor *v = eval_graph(g, s);
  Node *b = graph_find(g, "fc2.bias");
  for (int k = 0; k < 3; k++) {
    float old = s[b->id].f[k], h = 1e-2f;
    s[b->id].f[k] = old + h;
    float up = eval_graph(g, s)[g->ret[0]->id].f[0];
    s[b->id].f[k] = old - h;
    float down = eval_graph(g, s)[g->ret[0]->id].f[0];
    s[b->id].f[k] = old;
    float fd = (up - down) / (2 * h);
    ck_assert_msg(fabsf(fd - v[gb->id].f[k]) < 1e-3f, "fc2.bias[%d]: autodiff %g, numeric %g", k,
                  v[gb->id].f[k], fd);
  }
}
END_TEST

START_TEST(optimizer_sgd_momentum_state) {
  Graph *g = mlp_graph();
  run(g, "fuse-softmax-ce");
  run(g, "autodiff");
  run(g, "optimizer");
  ck_assert_int_eq(count_op(g, OP_state), 4);
  ck_assert_int_eq(count_op(g, OP_sgd_buf), 4);
  ck_assert_int_eq(count_op(g, OP_sgd_update), 4);
  ck_assert_int_eq(count_op(g, OP_assign), 8);
  Node *buf = graph_find(g, "fc1.weight.momentum_buffer");
  ck_assert(buf && buf->op == OP_state);
  ck_assert(type_eq(&buf->type, &graph_find(g, "fc1.weight")->type));
  Node *lr = graph_find(g, "lr");
  ck_assert(graph_find(g, "opt_step") && lr && lr->op == OP_input && lr->type.dtype == DT_F32);
  ck_assert(!graph_find(g, "momentum")); // fed only when a schedule cycles it
  ck_assert_str_eq(g->ret[0]->name, "loss");
}
END_TEST

START_TEST(optimizer_adamw_decoupled) {
  Graph *g = mlp_graph();
  graph_set_attr(g, "optimizer", attr_str("adamw"));
  graph_set_attr(g, "weight_decay", attr_float(0.01));
  run(g, "autodiff");
  run(g, "optimizer");
  ck_assert_int_eq(count_op(g, OP_state), 8);
  ck_assert_int_eq(count_op(g, OP_assign), 12);
  ck_assert_int_eq(count_op(g, OP_sgd_update), 0);
  ck_assert(graph_find(g, "fc2.bias.exp_avg") && graph_find(g, "fc2.bias.exp_avg_sq"));
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    if (n->op == OP_adam_moment1 || n->op == OP_adam_moment2)
      ck_assert_double_eq(node_float(n, "weight_decay"), 0.0);
    if (n->op == OP_adam_update) {
      ck_assert_int_eq(node_int(n, "decoupled"), 1);
      ck_assert_double_eq(node_float(n, "weight_decay"), 0.01);
    }
  }
}
END_TEST

// The whole training pipeline as the driver runs it.
START_TEST(train_pipeline_structure) {
  Graph *g = mlp_graph();
  const char *names[] = {"lint-losses", "fuse-softmax-ce", "fuse-sigmoid-bce", "autodiff",
                         "optimizer",   "constant-fold",   "cse",              "dce"};
  run_pipeline(g, names, 8, NULL);
  ck_assert_int_eq(count_op(g, OP_softmax_cross_entropy), 1);
  ck_assert_int_eq(count_op(g, OP_nll_loss) + count_op(g, OP_log_softmax), 0);
  ck_assert_int_eq(count_op(g, OP_param), 4);
  ck_assert_int_eq(count_op(g, OP_assign), 8);
  ck_assert_str_eq(g->ret[0]->name, "loss");
  for (int i = 0; i < g->nnodes; i++) // every node is needed after dce
    ck_assert(g->node[i]->op == OP_param || g->node[i]->op == OP_state ||
              g->node[i]->op == OP_assign || count_uses(g, g->node[i]) > 0 ||
              g->node[i] == g->ret[0] || g->node[i] == g->ret[1]);
}
END_TEST

START_TEST(constant_fold_scales) {
  Graph *g = graph_new("cf");
  Node *x = F32(g, OP_input, "x", 3);
  Node *a = op1(g, OP_scale, x);
  node_set_float(a, "factor", 2.0);
  Node *b = op1(g, OP_scale, a);
  node_set_float(b, "factor", 0.5); // 2 * 0.5 = 1: both go
  Node *r = op1(g, OP_relu, b);
  graph_return(g, r);
  run(g, "constant-fold");
  ck_assert_int_eq(count_op(g, OP_scale), 0);
  ck_assert_ptr_eq(r->in[0], x);
  ck_assert_int_eq(g->nnodes, 2);
}
END_TEST

// A scale of a named const where the scale is named too: the value must not
// change (see tests/passes/constant-fold/named-const.xir).
START_TEST(constant_fold_named_const_keeps_value) {
  Graph *g = graph_new("cf");
  Node *c = named(node_build(g, OP_const, no_loc, 0), "c");
  c->type = type_make(DT_F32, DIMS(2));
  node_set_floats(c, "value", (double[]){1.0, 3.0}, 2);
  node_infer(c);
  Node *s = named(op1(g, OP_scale, c), "s");
  node_set_float(s, "factor", 2.0);
  graph_return(g, s);
  float *before = eval_ret(g, 0);
  run(g, "constant-fold");
  assert_close(eval_ret(g, 0), before, 2, 1e-6f);
}
END_TEST

START_TEST(cse_merges_and_keeps_names) {
  Graph *g = graph_new("cse");
  Node *x = F32(g, OP_input, "x", 3);
  Node *a = op1(g, OP_relu, x);
  Node *b = named(op1(g, OP_relu, x), "w.grad");
  Node *m = op2(g, OP_mul, a, b);
  graph_return(g, m);
  run(g, "cse");
  ck_assert_int_eq(count_op(g, OP_relu), 1);
  ck_assert_ptr_eq(m->in[0], m->in[1]);
  ck_assert_str_eq(m->in[0]->name, "w.grad");
}
END_TEST

START_TEST(dce_keeps_params_and_state) {
  Graph *g = graph_new("dce");
  Node *x = F32(g, OP_input, "x", 3);
  F32(g, OP_input, "label", 3);
  F32(g, OP_param, "unused.weight", 3);
  F32(g, OP_state, "unused.running_mean", 3);
  op1(g, OP_sigmoid, x);
  Node *r = op1(g, OP_relu, x);
  graph_return(g, r);
  run(g, "dce");
  ck_assert_int_eq(g->nnodes, 4);
  ck_assert(graph_find(g, "unused.weight") && graph_find(g, "unused.running_mean"));
  ck_assert(!graph_find(g, "label"));
  ck_assert_int_eq(count_op(g, OP_sigmoid), 0);
}
END_TEST

// conv -> batchnorm (with running-statistics updates) -> dropout -> linear.
START_TEST(eval_mode_structure) {
  Graph *g = graph_new("bn");
  Node *x = F32(g, OP_input, "image", 2, 3, 4, 4);
  Node *label = source(g, OP_input, "label", DT_I32, DIMS(2));
  Node *step = source(g, OP_input, "step", DT_I32, 0, NULL);
  Node *w = F32(g, OP_param, "bn1.weight", 3), *b = F32(g, OP_param, "bn1.bias", 3);
  Node *rm = F32(g, OP_state, "bn1.running_mean", 3), *rv = F32(g, OP_state, "bn1.running_var", 3);
  Node *st = op1(g, OP_batch_stats, x);
  Node *bn = named(node_build(g, OP_batchnorm2d, no_loc, 4, x, w, b, st), "bn1");
  node_set_float(bn, "eps", 1e-5);
  node_infer(bn);
  Node *mean = op1(g, OP_row, st), *var = op1(g, OP_row, st);
  node_set_int(var, "index", 2);
  node_infer(var);
  Node *ema = op2(g, OP_ema, rm, mean);
  node_set_float(ema, "momentum", 0.1);
  op2(g, OP_assign, rm, ema);
  op2(g, OP_assign, rv, op2(g, OP_ema, rv, var));
  Node *flat = node_build(g, OP_reshape, no_loc, 1, bn);
  flat->type = type_make(DT_F32, DIMS(2, 48));
  node_infer(flat);
  Node *seed = source(g, OP_input, "seed", DT_I32, 0, NULL);
  Node *mask = node_build(g, OP_dropout_mask, no_loc, 2, step, seed);
  mask->type = flat->type;
  node_set_float(mask, "p", 0.5);
  node_set_int(mask, "salt", 1);
  node_infer(mask);
  Node *dropped = op2(g, OP_mul, flat, mask);
  Node *fw = F32(g, OP_param, "fc.weight", 3, 48);
  Node *fc = named(op2(g, OP_linear, dropped, fw), "fc");
  Node *loss = named(op2(g, OP_softmax_cross_entropy, fc, label), "loss");
  graph_return(g, loss);
  graph_return(g, fc);
  verify_graph(g);

  run(g, "eval-mode");
  ck_assert_int_eq(g->nret, 1);
  ck_assert_ptr_eq(g->ret[0], fc);
  ck_assert_int_eq(count_op(g, OP_assign), 0);
  ck_assert_int_eq(count_op(g, OP_batchnorm2d), 0);
  ck_assert_int_eq(count_op(g, OP_batchnorm2d_infer), 1);
  ck_assert_ptr_eq(bn->in[3], rm);
  ck_assert_ptr_eq(bn->in[4], rv);
  ck_assert_int_eq(count_op(g, OP_dropout_mask) + count_op(g, OP_mul), 0);
  ck_assert_int_eq(count_op(g, OP_softmax_cross_entropy) + count_op(g, OP_ema), 0);
  ck_assert(!graph_find(g, "label") && !graph_find(g, "step"));
  ck_assert_int_eq(count_op(g, OP_input), 1);
  ck_assert_int_eq(count_op(g, OP_param), 3);
  ck_assert_int_eq(count_op(g, OP_state), 2);
}
END_TEST

// --- Differential tests: every pass leaves the values alone ------------------------

// Sources for a whole model's training step, by name, so that graphs from
// different pipelines see the same data: labels valid for the loss, step 3
// and epoch 2 (bias correction and schedules away from their start).
static Tensor *model_sources(Graph *g) {
  graph_renumber(g);
  Tensor *s = xcalloc(g->nnodes, sizeof *s);
  int64_t classes = g->nret > 1 && g->ret[1]->type.rank == 2 ? g->ret[1]->type.dim[1] : 1;
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    if (n->op != OP_input && n->op != OP_param && n->op != OP_state)
      continue;
    s[i] = tensor_new(n->type);
    for (int64_t k = 0; k < type_numel(&n->type); k++) {
      float v = value_of(n->name, k);
      if (!strcmp(n->name, "label") && n->type.dtype == DT_I32)
        s[i].i[k] = (int32_t)((k * 7) % classes);
      else if (!strcmp(n->name, "label")) // BCE targets
        s[i].f[k] = v > 0;
      else if (!strcmp(n->name, "step") || !strcmp(n->name, "opt_step"))
        s[i].i[k] = 3;
      else if (!strcmp(n->name, "seed"))
        s[i].i[k] = 5;
      else if (!strcmp(n->name, "row0")) // as rank 1 of data-parallel ranks would
        s[i].i[k] = 7;
      else if (!strcmp(n->name, "lr"))
        s[i].f[k] = 0.01f;
      else if (!strcmp(n->name, "momentum"))
        s[i].f[k] = 0.9f;
      else if (n->op == OP_param && node_int(n, "fan_in") > 0) // PyTorch's init scale
        s[i].f[k] = v / sqrtf((float)node_int(n, "fan_in"));
      else if (strstr(n->name, "running_var") || strstr(n->name, "exp_avg_sq"))
        s[i].f[k] = fabsf(v) + 0.1f; // variances are positive
      else
        s[i].f[k] = v;
    }
  }
  return s;
}

// What a training step computes, keyed by name: "ret0", "ret1", every
// NAME.grad, %lr, and "NAME'" for the value assigned to NAME.
typedef struct {
  char *key[512];
  Tensor val[512];
  int n;
} Results;

static void keep(Results *r, char *key, Tensor t) {
  ck_assert_int_lt(r->n, 512);
  r->key[r->n] = key;
  r->val[r->n++] = t;
}

static Results *step_results(const char *yaml, const char *const *passes, int npasses) {
  Model *m = load_model(xformat("%s/%s", XENTCC_SOURCE_DIR, yaml));
  Graph *g = m->graph;
  run_pipeline(g, passes, npasses, NULL);
  Tensor *v = eval_graph(g, model_sources(g));
  Results *r = xcalloc(1, sizeof *r);
  for (int i = 0; i < g->nret; i++)
    keep(r, xformat("ret%d", i), v[g->ret[i]->id]);
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    size_t len = n->name ? strlen(n->name) : 0;
    if ((len > 5 && !strcmp(n->name + len - 5, ".grad")) || (n->name && !strcmp(n->name, "lr")))
      keep(r, n->name, v[i]);
    else if (n->op == OP_assign)
      keep(r, xformat("%s'", n->in[0]->name), v[i]);
  }
  return r;
}

// Every value of `want` is in `got`, equal to within `tol` relative to the
// tensor's largest element: f32 rounding (the fused losses round differently
// from the textbook ones), and gradients that cancel to ~0 carry the
// rounding of their large neighbours.
static void assert_same_results(const Results *got, const Results *want, double tol,
                                const char *what) {
  ck_assert_int_eq(got->n, want->n);
  for (int i = 0; i < want->n; i++) {
    int j = 0;
    while (j < got->n && strcmp(got->key[j], want->key[i]))
      j++;
    ck_assert_msg(j < got->n, "%s: no %s", what, want->key[i]);
    const Tensor *a = &got->val[j], *b = &want->val[i];
    ck_assert_msg(type_eq(&a->type, &b->type), "%s: %s changed type", what, want->key[i]);
    int64_t n = type_numel(&a->type);
    double norm = 0;
    for (int64_t k = 0; k < n; k++)
      norm = fmax(norm, b->f ? fabs(b->f[k]) : 0);
    for (int64_t k = 0; k < n; k++) {
      if (a->i) {
        ck_assert_int_eq(a->i[k], b->i[k]);
        continue;
      }
      ck_assert_msg(fabs(a->f[k] - b->f[k]) <= tol * (norm + 1e-3), "%s: %s[%ld] = %.9g, want %.9g",
                    what, want->key[i], (long)k, a->f[k], b->f[k]);
    }
  }
}

static const char *const diff_models[] = {"tests/frontend/layers.yaml",
                                          "tests/frontend/options.yaml", "models/catdog.yaml",
                                          "models/cifar10.yaml"};

// Each pass on its own after the plain training step, then the whole
// pipeline the driver runs: the loss, logits, gradients, learning rate and
// every assigned value stay what the textbook graph computes.
START_TEST(train_passes_keep_values) {
  const char *yaml = diff_models[_i];
  const char *plain[] = {"autodiff", "optimizer"};
  Results *want = step_results(yaml, plain, 2);
  const char *variants[][8] = {
      {"fuse-softmax-ce", "fuse-sigmoid-bce", "autodiff", "optimizer"},
      {"autodiff", "optimizer", "constant-fold"},
      {"autodiff", "optimizer", "cse"},
      {"autodiff", "optimizer", "dce"},
      {"lint-losses", "fuse-softmax-ce", "fuse-sigmoid-bce", "autodiff", "optimizer",
       "constant-fold", "cse", "dce"},
  };
  for (int v = 0; v < 5; v++) {
    int n = 0;
    while (n < 8 && variants[v][n])
      n++;
    char *what = xformat("%s after %s..%s", yaml, variants[v][0], variants[v][n - 1]);
    // Only the fusions compute differently; the clean-ups round at most once.
    double tol = strcmp(variants[v][0], "autodiff") ? 2e-5 : 1e-6;
    assert_same_results(step_results(yaml, variants[v], n), want, tol, what);
  }
}
END_TEST

// The evaluation pipeline's clean-ups keep the logits of eval-mode alone.
START_TEST(eval_passes_keep_values) {
  const char *yaml = diff_models[_i];
  const char *plain[] = {"eval-mode"};
  const char *all[] = {"eval-mode", "fuse-softmax-ce", "fuse-sigmoid-bce", "constant-fold", "cse",
                       "dce"};
  assert_same_results(step_results(yaml, all, 6), step_results(yaml, plain, 1), 2e-5, yaml);
}
END_TEST

// vectorize's stores two elements apart (pooling's gradient): a loop of 16
// iterations storing b[2*i + a] and b[2*i + c] becomes vectors unless some
// iteration of one stores what another iteration of the other does.
static bool vectorizes_pair(int64_t a, int64_t c) {
  LFunc *f = xcalloc(1, sizeof *f);
  f->name = "t";
  f->kind = FN_FORWARD;
  LBuf *b = lfunc_buf(f, "b", DT_F32, 1, (int64_t[]){64}, LB_WORKSPACE);
  LKernel *k = lfunc_kernel(f, "k", "k", NULL);
  int i = lk_var(k);
  LStmt *l = ls_loop(i, 0, 16, "i");
  ls_add(l, ls_store(b, (LExpr *[]){lx_iaddc(lx_imul(lx_var(i), 2), a)}, lx_f32(1)));
  ls_add(l, ls_store(b, (LExpr *[]){lx_iaddc(lx_imul(lx_var(i), 2), c)}, lx_f32(2)));
  lk_add(k, l);
  LProgram p = {&f, 1, NULL, 3, ltarget_avx2};
  pass_vectorize(&p);
  bool vec = false;
  for (int j = 0; j < k->nbody; j++)
    vec |= k->body[j]->kind == LS_LOOP && (k->body[j]->flags & LF_VECTOR ||
                                           (k->body[j]->nbody && k->body[j]->body[0]->kind == LS_LOOP &&
                                            k->body[j]->body[0]->flags & LF_VECTOR));
  return vec;
}

START_TEST(vectorize_strided_stores) {
  ck_assert(vectorizes_pair(0, 1));   // the gaps filled: 2i and 2i + 1
  ck_assert(vectorizes_pair(1, 0));
  ck_assert(!vectorizes_pair(0, 2));  // iteration i + 1 of the first is iteration i of the second
  ck_assert(!vectorizes_pair(30, 0)); // iteration 15 of the second, iteration 0 of the first
  ck_assert(vectorizes_pair(0, 32));  // 16 iterations apart: beyond the loop
  ck_assert(vectorizes_pair(0, 0));   // the same element, in the same iteration
}
END_TEST

// lk_bytes, --profile's bytes per call: the box of elements each buffer is
// read in and the box it is written in, once each; a kernel's own arrays
// and the step's scalars are not memory it moves.
START_TEST(kernel_bytes) {
  LFunc *f = xcalloc(1, sizeof *f);
  f->name = "t";
  f->kind = FN_FORWARD;
  LBuf *x = lfunc_buf(f, "x", DT_F32, 2, (int64_t[]){6, 10}, LB_WORKSPACE);
  LBuf *y = lfunc_buf(f, "y", DT_F32, 2, (int64_t[]){4, 8}, LB_WORKSPACE);
  LBuf *h = lfunc_buf(f, "h", DT_BF16, 1, (int64_t[]){100}, LB_WORKSPACE);
  LBuf *acc = lfunc_buf(f, "acc", DT_F32, 1, (int64_t[]){8}, LB_LOCAL);
  LKernel *k = lfunc_kernel(f, "k", "k", NULL);
  // y[i, j] = x[i + 1, j + 1] + x[i + 2, j] for i < 3, j < 8: x's rows 1..4,
  // columns 0..8 (4 x 9 read), y's rows 0..2 (3 x 8 written), then y[i, j]
  // += 1 in place (read 3 x 8 more; the writes' box is the same)
  int i = lk_var(k), j = lk_var(k);
  LStmt *li = ls_loop(i, 0, 3, "i"), *lj = ls_loop(j, 0, 8, "j");
  LExpr *a = lx_load(x, (LExpr *[]){lx_iaddc(lx_var(i), 1), lx_iaddc(lx_var(j), 1)});
  LExpr *b = lx_load(x, (LExpr *[]){lx_iaddc(lx_var(i), 2), lx_var(j)});
  ls_add(lj, ls_store(y, (LExpr *[]){lx_var(i), lx_var(j)}, lx_bin(LX_ADD, a, b)));
  LExpr *old = lx_load(y, (LExpr *[]){lx_var(i), lx_var(j)});
  ls_add(lj, ls_store(y, (LExpr *[]){lx_var(i), lx_var(j)}, lx_bin(LX_ADD, old, lx_f32(1))));
  ls_add(lj, ls_store(acc, (LExpr *[]){lx_var(j)}, lx_f32(0)));
  ls_add(li, lj);
  lk_add(k, li);
  ck_assert_int_eq(lk_bytes(k), 4 * (4 * 9 + 3 * 8 + 3 * 8));
  // An index that is not affine (i % 2) counts the whole dimension; a
  // 16-bit buffer's elements are 2 bytes.
  LKernel *k2 = lfunc_kernel(f, "k2", "k2", NULL);
  int v = lk_var(k2);
  LStmt *l = ls_loop(v, 0, 5, "v");
  ls_add(l, ls_store(h, (LExpr *[]){lx_var(v)},
                     lx_load(x, (LExpr *[]){lx_bin(LX_REM, lx_var(v), lx_i64(2)), lx_var(v)})));
  lk_add(k2, l);
  ck_assert_int_eq(lk_bytes(k2), 4 * (6 * 5) + 2 * 5);
}
END_TEST

static Suite *passes_suite(void) {
  Suite *s = suite_create("passes");
  TCase *t = tcase_create("structure");
  tcase_add_test(t, fuse_softmax_ce_keeps_weight_and_smoothing);
  tcase_add_test(t, fuse_sigmoid_bce_keeps_pos_weight);
  tcase_add_test(t, autodiff_names_every_param_grad);
  tcase_add_test(t, autodiff_matches_finite_differences);
  tcase_add_test(t, optimizer_sgd_momentum_state);
  tcase_add_test(t, optimizer_adamw_decoupled);
  tcase_add_test(t, train_pipeline_structure);
  tcase_add_test(t, constant_fold_scales);
  tcase_add_test(t, constant_fold_named_const_keeps_value);
  tcase_add_test(t, cse_merges_and_keeps_names);
  tcase_add_test(t, dce_keeps_params_and_state);
  tcase_add_test(t, eval_mode_structure);
  tcase_add_test(t, vectorize_strided_stores);
  tcase_add_test(t, kernel_bytes);
  suite_add_tcase(s, t);
  TCase *d = tcase_create("differential");
  tcase_set_timeout(d, 120);
  int nmodels = (int)(sizeof diff_models / sizeof *diff_models);
  tcase_add_loop_test(d, train_passes_keep_values, 0, nmodels);
  tcase_add_loop_test(d, eval_passes_keep_values, 0, nmodels);
  suite_add_tcase(s, d);
  return s;
}

int main(void) {
  return run_suite(passes_suite());
}

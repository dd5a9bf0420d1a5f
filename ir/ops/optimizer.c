// The optimizer updates, torch.optim's SGD, Adam and AdamW in PyTorch 1.13's
// formulas, elementwise over a parameter. The optimizer pass adds them after
// autodiff, so they have no gradient.
#include "lower.h"
#include "ops.h"

// A setting that a schedule may move: the optional operand `i` when there
// (%momentum), else the attribute.
static double scheduled(const Node *n, Tensor **in, int i, const char *attr) {
  return n->nin > i ? in[i]->f[0] : node_float(n, attr);
}

// The same in the loop IR: a load of operand i, or the attribute's value.
static LExpr *setting(Lowering *L, Node *n, int i, const char *attr) {
  return n->nin > i ? lx_load(B(L, n->in[i]), NULL) : F(node_float(n, attr));
}

// 1 - that setting, in double and rounded once, as `1 - beta1` from a Python float.
static LExpr *one_minus(Lowering *L, Node *n, int i, const char *attr) {
  if (n->nin <= i)
    return F(1.0 - node_float(n, attr));
  return lx_cast(LT_F32, FSUB(lx_f64(1.0), lx_cast(LT_F64, lx_load(B(L, n->in[i]), NULL))));
}

// --- SGD --------------------------------------------------------------------------------
//
// torch.optim.SGD, with d = g + weight_decay * p:
//   sgd_buf:    step 1: buf = d; later: buf = momentum * buf + (1 - dampening) * d
//   sgd_update: p - lr * (momentum == 0 ? d : nesterov ? d + momentum * buf : buf)

// (g, buf, p, step i32[], momentum[]?) -> new momentum buffer
static const char *shape_sgd_buf(const Node *n, Type *out) {
  CHECK(want_f32(n, 0, "gradient"));
  CHECK(want_same(n, 0, 1));
  CHECK(want_same(n, 0, 2));
  CHECK(want_scalar(n, 3, DT_I32, "step"));
  if (n->nin == 5)
    CHECK(want_scalar(n, 4, DT_F32, "momentum"));
  *out = *T(n, 0);
  return NULL;
}

static void eval_sgd_buf(const Node *n, Tensor *out, Tensor **in) {
  double mom = scheduled(n, in, 4, "momentum"), damp = node_float(n, "dampening"),
         wd = node_float(n, "weight_decay");
  bool first = in[3]->i[0] <= 1;
  for (int64_t i = 0; i < numel(out); i++) {
    double d = in[0]->f[i] + wd * in[2]->f[i];
    out->f[i] = (float)(first ? d : mom * in[1]->f[i] + (1.0 - damp) * d);
  }
}

// (g, buf, p, step, momentum?): buf = d at the first update.
static LExpr *elem_sgd_buf(Lowering *L, Node *n, LExpr **v) {
  LExpr *d = operand(L, n, 0, v);
  double wd = node_float(n, "weight_decay");
  if (wd != 0)
    d = FADD(d, FMUL(F(wd), operand(L, n, 2, v)));
  LExpr *upd = FADD(FMUL(setting(L, n, 4, "momentum"), operand(L, n, 1, v)),
                    FMUL(F(1.0 - node_float(n, "dampening")), lx_copy(d)));
  return SEL(BIN(LX_EQ, operand(L, n, 3, v), lx_int(LT_I32, 1)), d, upd);
}

const OpRules rules_sgd_buf = {.shape = shape_sgd_buf, .eval = eval_sgd_buf, .elem = elem_sgd_buf};

// (p, g, lr[], buf_new?, momentum[]?) -> new p
static const char *shape_sgd_update(const Node *n, Type *out) {
  CHECK(want_f32(n, 0, "parameter"));
  CHECK(want_same(n, 0, 1));
  CHECK(want_scalar(n, 2, DT_F32, "learning rate"));
  if (n->nin >= 4)
    CHECK(want_same(n, 0, 3));
  if (n->nin == 5)
    CHECK(want_scalar(n, 4, DT_F32, "momentum"));
  if (node_float(n, "momentum") != 0.0 && n->nin < 4)
    FAIL("sgd_update with momentum needs the momentum buffer operand");
  *out = *T(n, 0);
  return NULL;
}

static void eval_sgd_update(const Node *n, Tensor *out, Tensor **in) {
  double mom = scheduled(n, in, 4, "momentum"), wd = node_float(n, "weight_decay"), lr = in[2]->f[0];
  bool nesterov = node_int(n, "nesterov");
  for (int64_t i = 0; i < numel(out); i++) {
    double p = in[0]->f[i], d = in[1]->f[i] + wd * p;
    if (n->nin >= 4)
      d = nesterov ? d + mom * in[3]->f[i] : in[3]->f[i];
    out->f[i] = (float)(p - lr * d);
  }
}

// (p, g, lr, buf_new?, momentum?)
static LExpr *elem_sgd_update(Lowering *L, Node *n, LExpr **v) {
  LExpr *p = operand(L, n, 0, v), *d = operand(L, n, 1, v);
  double wd = node_float(n, "weight_decay");
  if (wd != 0)
    d = FADD(d, FMUL(F(wd), lx_copy(p)));
  if (n->nin >= 4) {
    LExpr *buf = operand(L, n, 3, v);
    d = node_int(n, "nesterov") ? FADD(d, FMUL(setting(L, n, 4, "momentum"), buf)) : buf;
  }
  return FSUB(p, FMUL(operand(L, n, 2, v), d));
}

const OpRules rules_sgd_update = {
    .shape = shape_sgd_update, .eval = eval_sgd_update, .elem = elem_sgd_update};

// --- Adam and AdamW -------------------------------------------------------------------------
//
// Adam's moments, with L2 weight decay folded into the gradient (0 for AdamW):
//   g' = g + weight_decay * p
//   adam_moment1: m = beta1 * m + (1 - beta1) * g'
//   adam_moment2: v = beta2 * v + (1 - beta2) * g'^2

// (g, m, p, beta1[]?) -> new m and (g, v, p) -> new v
static const char *shape_adam_moment(const Node *n, Type *out) {
  CHECK(want_f32(n, 0, "gradient"));
  CHECK(want_same(n, 0, 1));
  CHECK(want_same(n, 0, 2));
  if (n->nin == 4)
    CHECK(want_scalar(n, 3, DT_F32, "beta1"));
  *out = *T(n, 0);
  return NULL;
}

static void eval_adam_moment(const Node *n, Tensor *out, Tensor **in) {
  bool first = n->op == OP_adam_moment1;
  double beta = first ? scheduled(n, in, 3, "beta1") : node_float(n, "beta2"), wd = node_float(n, "weight_decay");
  for (int64_t i = 0; i < numel(out); i++) {
    double g = in[0]->f[i] + wd * in[2]->f[i];
    out->f[i] = (float)(beta * in[1]->f[i] + (1.0 - beta) * (first ? g : g * g));
  }
}

// (g, m, p, beta1?)
static LExpr *elem_adam_moment(Lowering *L, Node *n, LExpr **v) {
  LExpr *g = operand(L, n, 0, v);
  double wd = node_float(n, "weight_decay");
  if (wd != 0)
    g = FADD(g, FMUL(F(wd), operand(L, n, 2, v)));
  bool first = n->op == OP_adam_moment1;
  LExpr *beta = first ? setting(L, n, 3, "beta1") : F(node_float(n, "beta2"));
  LExpr *c1 = first ? one_minus(L, n, 3, "beta1") : F(1.0 - node_float(n, "beta2"));
  return FADD(FMUL(operand(L, n, 1, v), beta), FMUL(c1, first ? g : FMUL(g, lx_copy(g))));
}

const OpRules rules_adam_moment1 = {
    .shape = shape_adam_moment, .eval = eval_adam_moment, .elem = elem_adam_moment};
const OpRules rules_adam_moment2 = {
    .shape = shape_adam_moment, .eval = eval_adam_moment, .elem = elem_adam_moment};

// PyTorch 1.13's single-tensor Adam step t (from 1), after the moments:
//   AdamW only: p = p * (1 - lr * weight_decay)
//   p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

// (p, m_new, v_new, lr[], step i32[], beta1[]?) -> new p
static const char *shape_adam_update(const Node *n, Type *out) {
  CHECK(want_f32(n, 0, "parameter"));
  CHECK(want_same(n, 0, 1));
  CHECK(want_same(n, 0, 2));
  CHECK(want_scalar(n, 3, DT_F32, "learning rate"));
  CHECK(want_scalar(n, 4, DT_I32, "step"));
  if (n->nin == 6)
    CHECK(want_scalar(n, 5, DT_F32, "beta1"));
  *out = *T(n, 0);
  return NULL;
}

static void eval_adam_update(const Node *n, Tensor *out, Tensor **in) {
  double b1 = scheduled(n, in, 5, "beta1"), b2 = node_float(n, "beta2"), eps = node_float(n, "eps"),
         wd = node_float(n, "weight_decay"), lr = in[3]->f[0], t = in[4]->i[0];
  double step_size = lr / (1.0 - pow(b1, t)), bc2_sqrt = sqrt(1.0 - pow(b2, t));
  bool decoupled = node_int(n, "decoupled");
  for (int64_t i = 0; i < numel(out); i++) {
    double p = in[0]->f[i];
    if (decoupled)
      p *= 1.0 - lr * wd;
    out->f[i] = (float)(p - step_size * in[1]->f[i] / (sqrt(in[2]->f[i]) / bc2_sqrt + eps));
  }
}

// (p, m, v, lr, step, beta1?): PyTorch's step size in double.
static LExpr *elem_adam_update(Lowering *L, Node *n, LExpr **v) {
  LExpr *lr = operand(L, n, 3, v);
  LExpr *t = lx_cast(LT_F64, operand(L, n, 4, v));
  LExpr *b1 =
      n->nin > 5 ? lx_cast(LT_F64, lx_load(B(L, n->in[5]), NULL)) : lx_f64(node_float(n, "beta1"));
  LExpr *bc1 = FSUB(lx_f64(1), lx_bin(LX_POW, b1, t));
  LExpr *bc2 = FSUB(lx_f64(1), lx_bin(LX_POW, lx_f64(node_float(n, "beta2")), lx_copy(t)));
  LExpr *ss = lx_cast(LT_F32, FDIV(lx_cast(LT_F64, lr), bc1));
  LExpr *bc2s = lx_cast(LT_F32, lx_un(LX_SQRT, bc2));
  LExpr *p = operand(L, n, 0, v);
  double wd = node_float(n, "weight_decay");
  if (node_int(n, "decoupled") && wd != 0) // AdamW; Adam's L2 went into the moments
    p = FMUL(p, FSUB(F(1), FMUL(lx_copy(lr), F(wd))));
  LExpr *den = FADD(FDIV(lx_un(LX_SQRT, operand(L, n, 2, v)), bc2s), F(node_float(n, "eps")));
  return FSUB(p, FMUL(ss, FDIV(operand(L, n, 1, v), den)));
}

const OpRules rules_adam_update = {
    .shape = shape_adam_update, .eval = eval_adam_update, .elem = elem_adam_update};

// Losses, each a scalar f32[] with PyTorch's 'mean' reduction, and their
// gradients: nll_loss and its fused form softmax_cross_entropy, bce and its
// fused form sigmoid_bce, and l2norm for regularisation terms.
#include "ops.h"

// --- Cross-entropy family ------------------------------------------------------------------
//
// PyTorch's CrossEntropyLoss(weight=w, label_smoothing=eps, reduction='mean')
// on log-probabilities logp[N,C] (aten cross_entropy_loss_label_smoothing):
//
//   loss = (1-eps) * sum_i w[y_i] * -logp[i,y_i] / W
//        +   eps/C * sum_i sum_c w[c] * -logp[i,c] / W,      W = sum_i w[y_i]
//
// (W = N without weights). So loss = sum_{i,c} a[i,c] * -logp[i,c] / W with
// a[i,c] = (1-eps) w[y_i] [c == y_i] + eps/C w[c], and its gradient with
// respect to logp is -a / W; with respect to the logits, through log_softmax,
// (softmax[i,k] * sum_c a[i,c] - a[i,k]) / W.
//
// A row labelled -100 (PyTorch's default ignore_index) is ignored: a[i,.] = 0
// and it adds nothing to W. The runtime pads a partial last batch that way.

// The operands (logits[N,C], label i32[N], weight[C]?) from index `logits`;
// the optional class weights at `first_extra`.
static const char *ce_operands(const Node *n, int logits, int first_extra) {
  const Type *x = T(n, logits), *y = T(n, logits + 1);
  if (x->rank != 2 || x->dtype != DT_F32)
    FAIL("logits must be an f32 [N,C] tensor, got %s", type_str(x));
  if (x->dim[1] < 2)
    FAIL("cross-entropy needs at least 2 classes, got %lld outputs", (long long)x->dim[1]);
  if (y->rank != 1 || y->dtype != DT_I32 || y->dim[0] != x->dim[0])
    FAIL("labels must be i32[%lld] class indices, got %s", (long long)x->dim[0], type_str(y));
  if (n->nin > first_extra) {
    const Type *w = T(n, first_extra);
    if (w->rank != 1 || w->dtype != DT_F32 || w->dim[0] != x->dim[1])
      FAIL("class weights must be f32[%lld], one per class, got %s", (long long)x->dim[1],
           type_str(w));
  }
  double ls = node_float(n, "label_smoothing");
  if (!(ls >= 0.0 && ls <= 1.0))
    FAIL("label_smoothing must be in [0, 1], got %g", ls);
  return NULL;
}

// (logits, label, weight?) -> f32[]
static const char *shape_cross_entropy(const Node *n, Type *out) {
  CHECK(ce_operands(n, 0, 2));
  *out = scalar(DT_F32);
  return NULL;
}

// (dl[], logits, label, weight?) -> the logits' type
static const char *shape_cross_entropy_grad(const Node *n, Type *out) {
  CHECK(want_scalar(n, 0, DT_F32, "loss gradient"));
  CHECK(ce_operands(n, 1, 3));
  *out = *T(n, 1);
  return NULL;
}

typedef struct {
  int64_t n, c;
  const float *w;   // class weights, or NULL for all ones
  const int32_t *y; // labels
  double eps;       // label smoothing
  double total;     // W
} CE;

static double class_weight(const CE *ce, int64_t c) { return ce->w ? ce->w[c] : 1.0; }

static CE ce_setup(const Node *n, const Tensor *x, const Tensor *label, const Tensor *weight) {
  CE ce = {x->type.dim[0], x->type.dim[1], weight ? weight->f : NULL, label->i,
           node_float(n, "label_smoothing"), 0};
  for (int64_t i = 0; i < ce.n; i++) {
    if (ce.y[i] == XC_IGNORE_INDEX)
      continue;
    if (ce.y[i] < 0 || ce.y[i] >= ce.c)
      fatal("%s: label %d of sample %lld is not a class index in [0, %lld)", op_info(n->op)->name,
            ce.y[i], (long long)i, (long long)ce.c);
    ce.total += class_weight(&ce, ce.y[i]);
  }
  return ce;
}

static double ce_coef(const CE *ce, int64_t i, int64_t c) {
  if (ce->y[i] == XC_IGNORE_INDEX)
    return 0.0;
  double a = ce->eps / (double)ce->c * class_weight(ce, c);
  if (c == ce->y[i])
    a += (1.0 - ce->eps) * class_weight(ce, c);
  return a;
}

// nll_loss(logp, y, w?) and softmax_cross_entropy(logits, y, w?) share one sum.
static void eval_cross_entropy(const Node *n, Tensor *out, Tensor **in) {
  CE ce = ce_setup(n, in[0], in[1], n->nin == 3 ? in[2] : NULL);
  double s = 0;
  for (int64_t i = 0; i < ce.n; i++) {
    const float *x = in[0]->f + i * ce.c;
    double lse = n->op == OP_softmax_cross_entropy ? logsumexp(x, ce.c) : 0.0;
    for (int64_t c = 0; c < ce.c; c++)
      s += ce_coef(&ce, i, c) * -(x[c] - lse);
  }
  out->f[0] = (float)(s / ce.total);
}

// nll_loss_grad -a/W, softmax_cross_entropy_grad (softmax * sum_c a - a) / W, times dl.
static void eval_cross_entropy_grad(const Node *n, Tensor *out, Tensor **in) {
  CE ce = ce_setup(n, in[1], in[2], n->nin == 4 ? in[3] : NULL);
  double dl = in[0]->f[0];
  for (int64_t i = 0; i < ce.n; i++) {
    const float *x = in[1]->f + i * ce.c;
    double lse = logsumexp(x, ce.c), rowsum = 0;
    for (int64_t c = 0; c < ce.c; c++)
      rowsum += ce_coef(&ce, i, c);
    for (int64_t c = 0; c < ce.c; c++) {
      double g = -ce_coef(&ce, i, c);
      if (n->op == OP_softmax_cross_entropy_grad)
        g += exp(x[c] - lse) * rowsum;
      out->f[i * ce.c + c] = (float)(dl * g / ce.total);
    }
  }
}

// d(logits) = OP(dl, logits, label, weight?); the labels and weights get none.
static void grad_cross_entropy(AD *ad, Node *n, Node *dy, OpKind op) {
  Node **x = n->in;
  Node *in[4] = {dy, x[0], x[1], n->nin == 3 ? x[2] : NULL};
  accumulate(ad, x[0], done(grad_op(ad, op, n, n->nin + 1, in)));
}

// --- nll_loss (logp[N,C], label i32[N], weight[C]?) ------------------------------------------

static void grad_nll_loss(AD *ad, Node *n, Node *dy) {
  grad_cross_entropy(ad, n, dy, OP_nll_loss_grad);
}

const OpRules rules_nll_loss = {.shape = shape_cross_entropy, .eval = eval_cross_entropy,
                                .grad = grad_nll_loss};
const OpRules rules_nll_loss_grad = {.shape = shape_cross_entropy_grad,
                                     .eval = eval_cross_entropy_grad};

// --- softmax_cross_entropy (logits[N,C], label i32[N], weight[C]?) ----------------------------

static void grad_softmax_cross_entropy(AD *ad, Node *n, Node *dy) {
  grad_cross_entropy(ad, n, dy, OP_softmax_cross_entropy_grad);
}

const OpRules rules_softmax_cross_entropy = {
    .shape = shape_cross_entropy, .eval = eval_cross_entropy, .grad = grad_softmax_cross_entropy};
const OpRules rules_softmax_cross_entropy_grad = {.shape = shape_cross_entropy_grad,
                                                  .eval = eval_cross_entropy_grad};

// --- Binary cross-entropy -----------------------------------------------------------------
//
// pos_weight has 0 values (all ones), 1 value, or one per last dimension,
// broadcast like BCEWithLogitsLoss's. Both reduce with the mean over the
// elements whose target is not negative (bce_ignored: padding rows).

// The operands (input, target) at x and t.
static const char *bce_operands(const Node *n, int x, int t) {
  CHECK(want_f32(n, x, "input"));
  if (!type_eq(T(n, x), T(n, t)))
    FAIL("target must have the input's shape %s (float labels 0 or 1), got %s",
         type_str(T(n, x)), type_str(T(n, t)));
  const Attr *pw = node_attr(n, "pos_weight");
  const Type *xt = T(n, x);
  int64_t last = xt->rank ? xt->dim[xt->rank - 1] : 1;
  if (pw->n != 0 && pw->n != 1 && pw->n != last)
    FAIL("pos_weight must have 1 or %lld values, got %d", (long long)last, pw->n);
  return NULL;
}

// (input, target) -> f32[]
static const char *shape_bce(const Node *n, Type *out) {
  CHECK(bce_operands(n, 0, 1));
  *out = scalar(DT_F32);
  return NULL;
}

// (dl[], input, target) -> the input's type
static const char *shape_bce_grad(const Node *n, Type *out) {
  CHECK(want_scalar(n, 0, DT_F32, "loss gradient"));
  CHECK(bce_operands(n, 1, 2));
  *out = *T(n, 1);
  return NULL;
}

static double pos_weight(const Node *n, const Type *t, int64_t i) {
  const Attr *pw = node_attr(n, "pos_weight");
  if (pw->n == 0)
    return 1.0;
  if (pw->n == 1)
    return pw->floats[0];
  return pw->floats[i % t->dim[t->rank - 1]];
}

// The number of elements a BCE mean divides by: those whose target is not
// negative (bce_ignored).
static double bce_count(const Tensor *target) {
  double n = 0;
  for (int64_t i = 0; i < numel(target); i++)
    n += !bce_ignored(target->f[i]);
  return n;
}

// --- bce (p, target) ----------------------------------------------------------------------
//
// BCELoss on probabilities with PyTorch's guard: each log is clamped to at
// least -100, so p = 0 or 1 gives a large finite loss instead of inf.
//   loss = mean(-(pw * y * log p + (1 - y) * log(1 - p)))

static void eval_bce(const Node *n, Tensor *out, Tensor **in) {
  double s = 0;
  for (int64_t i = 0; i < numel(in[0]); i++) {
    double p = in[0]->f[i], y = in[1]->f[i];
    if (bce_ignored(in[1]->f[i]))
      continue;
    double lp = fmax(log(p), -100.0), lq = fmax(log(1.0 - p), -100.0);
    s += -(pos_weight(n, &in[0]->type, i) * y * lp + (1.0 - y) * lq);
  }
  out->f[0] = (float)(s / bce_count(in[1]));
}

// dp = bce_grad(dl, p, target); the target gets none.
static void grad_bce(AD *ad, Node *n, Node *dy) {
  Node **x = n->in;
  accumulate(ad, x[0], done(grad_op(ad, OP_bce_grad, n, 3, (Node *[]){dy, x[0], x[1]})));
}

const OpRules rules_bce = {.shape = shape_bce, .eval = eval_bce, .grad = grad_bce};

// --- bce_grad (dl[], p, target): the derivative of the clamped loss, zero where a log is clamped

static void eval_bce_grad(const Node *n, Tensor *out, Tensor **in) {
  double dl = in[0]->f[0], N = bce_count(in[2]);
  for (int64_t i = 0; i < numel(out); i++) {
    double p = in[1]->f[i], y = in[2]->f[i], g = 0;
    if (bce_ignored(in[2]->f[i])) {
      out->f[i] = 0.0f;
      continue;
    }
    if (log(p) > -100.0)
      g -= pos_weight(n, &out->type, i) * y / p;
    if (log(1.0 - p) > -100.0)
      g += (1.0 - y) / (1.0 - p);
    out->f[i] = (float)(dl * g / N);
  }
}

const OpRules rules_bce_grad = {.shape = shape_bce_grad, .eval = eval_bce_grad};

// --- sigmoid_bce (logits, target) -----------------------------------------------------------
//
// BCEWithLogitsLoss in PyTorch's stable form, with lw = 1 + (pw - 1) y:
//   loss_i = (1 - y) x + lw * (log1p(exp(-|x|)) + max(-x, 0))
// where the last factor is softplus(-x) = -log(sigmoid(x)); its derivative is
//   (1 - y) - lw * sigmoid(-x) = lw * sigmoid(x) - pw * y.

static void eval_sigmoid_bce(const Node *n, Tensor *out, Tensor **in) {
  double s = 0;
  for (int64_t i = 0; i < numel(in[0]); i++) {
    double x = in[0]->f[i], y = in[1]->f[i];
    if (bce_ignored(in[1]->f[i]))
      continue;
    double lw = 1.0 + (pos_weight(n, &in[0]->type, i) - 1.0) * y;
    s += (1.0 - y) * x + lw * (log1p(exp(-fabs(x))) + fmax(-x, 0.0));
  }
  out->f[0] = (float)(s / bce_count(in[1]));
}

// dx = sigmoid_bce_grad(dl, logits, target); the target gets none.
static void grad_sigmoid_bce(AD *ad, Node *n, Node *dy) {
  Node **x = n->in;
  accumulate(ad, x[0], done(grad_op(ad, OP_sigmoid_bce_grad, n, 3, (Node *[]){dy, x[0], x[1]})));
}

const OpRules rules_sigmoid_bce = {.shape = shape_bce, .eval = eval_sigmoid_bce,
                                   .grad = grad_sigmoid_bce};

// --- sigmoid_bce_grad (dl[], logits, target) -------------------------------------------------

static void eval_sigmoid_bce_grad(const Node *n, Tensor *out, Tensor **in) {
  double dl = in[0]->f[0], N = bce_count(in[2]);
  for (int64_t i = 0; i < numel(out); i++) {
    double x = in[1]->f[i], y = in[2]->f[i];
    double lw = 1.0 + (pos_weight(n, &out->type, i) - 1.0) * y;
    out->f[i] = bce_ignored(in[2]->f[i]) ? 0.0f : (float)(dl * ((1.0 - y) - lw * sigmoid(-x)) / N);
  }
}

const OpRules rules_sigmoid_bce_grad = {.shape = shape_bce_grad, .eval = eval_sigmoid_bce_grad};

// --- l2norm (x) -> sqrt(sum x^2), not squared ---------------------------------------------------

static const char *shape_l2norm(const Node *n, Type *out) {
  CHECK(want_f32(n, 0, "input"));
  *out = scalar(DT_F32);
  return NULL;
}

static void eval_l2norm(const Node *n, Tensor *out, Tensor **in) {
  double s = 0;
  for (int64_t i = 0; i < numel(in[0]); i++)
    s += (double)in[0]->f[i] * in[0]->f[i];
  out->f[0] = (float)sqrt(s);
}

// dx = l2norm_grad(dl, x, norm): the norm is the node itself.
static void grad_l2norm(AD *ad, Node *n, Node *dy) {
  Node **x = n->in;
  accumulate(ad, x[0], done(grad_op(ad, OP_l2norm_grad, n, 3, (Node *[]){dy, x[0], n})));
}

const OpRules rules_l2norm = {.shape = shape_l2norm, .eval = eval_l2norm, .grad = grad_l2norm};

// --- l2norm_grad (dl[], x, norm[]) -> dl * x / norm; at norm 0 the subgradient 0, as torch.norm

static const char *shape_l2norm_grad(const Node *n, Type *out) {
  CHECK(want_scalar(n, 0, DT_F32, "loss gradient"));
  CHECK(want_f32(n, 1, "input"));
  CHECK(want_scalar(n, 2, DT_F32, "norm"));
  *out = *T(n, 1);
  return NULL;
}

static void eval_l2norm_grad(const Node *n, Tensor *out, Tensor **in) {
  double dl = in[0]->f[0], norm = in[2]->f[0];
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = norm == 0.0 ? 0.0f : (float)(dl * in[1]->f[i] / norm);
}

const OpRules rules_l2norm_grad = {.shape = shape_l2norm_grad, .eval = eval_l2norm_grad};

// Losses, each a scalar f32[] with PyTorch's 'mean' reduction, and their
// gradients: nll_loss and its fused form softmax_cross_entropy, bce and its
// fused form sigmoid_bce, and l2norm for regularisation terms.
#include "lower.h"
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

// Lowering the cross-entropy family, one kernel shape for all four ops.
//
// Cross-entropy on log-probabilities, PyTorch 1.13 (mean reduction):
//   W = sum_n w[y_n] (N without weights), rows labelled -100 left out
//   loss = (1-ls) sum_n -w[y_n] logp[n,y_n] / W + ls/C sum_n sum_c -w[c] logp[n,c] / W
// The fused op computes log_softmax of each row on the fly.

typedef struct {
  LBuf *w;     // class weights, or NULL
  LBuf *label; // i32 [N]
  int64_t N, C;
  float ls;
} LCE;

static LExpr *lclass_weight(const LCE *ce, LExpr *cls) {
  return ce->w ? lx_load(ce->w, &cls) : F(1);
}

// The row's label as an index (0 for an ignored row) and whether it counts.
static LExpr *row_label(const LCE *ce, LExpr *row, LExpr **counts) {
  LExpr *y = lx_load(ce->label, &row);
  *counts = BIN(LX_GE, y, lx_int(LT_I32, 0));
  return lx_cast(LT_I64, SEL(lx_copy(*counts), lx_copy(y), lx_int(LT_I32, 0)));
}

// Locals m and lse: the max and log-sum-exp of logits row `row`.
static void row_stats(LKernel *k, LStmt *parent, LBuf *x, LExpr *row, int64_t C, LBuf *m,
                      LBuf *lse) {
  LExpr *i;
  ls_add(parent, ST(m, F(-INFINITY)));
  LStmt *l = reduce_loop(k, parent, C, "c", &i);
  ls_add(l, ST(m, lx_bin(LX_MAX, LD(m), LD(x, lx_copy(row), i))));
  ls_add(parent, ST(lse, F(0)));
  l = reduce_loop(k, parent, C, "c", &i);
  ls_add(l, ST(lse, FADD(LD(lse), lx_un(LX_EXP, FSUB(LD(x, lx_copy(row), i), LD(m))))));
  ls_add(parent, ST(lse, lx_un(LX_LOG, LD(lse))));
}

static void lower_ce(Lowering *L, Node *n) {
  bool grad = n->op == OP_nll_loss_grad || n->op == OP_softmax_cross_entropy_grad;
  bool fused = n->op == OP_softmax_cross_entropy || n->op == OP_softmax_cross_entropy_grad;
  int xi = grad ? 1 : 0;
  LBuf *x = B(L, n->in[xi]), *out = B(L, n);
  LCE ce = {n->nin > xi + 2 ? B(L, n->in[xi + 2]) : NULL, B(L, n->in[xi + 1]), x->dim[0], x->dim[1],
            (float)node_float(n, "label_smoothing")};
  LKernel *k = kernel(L, n, NULL);
  LBuf *W = local(L, "W", DT_F32), *sumw = local(L, "sumw", DT_F32);
  LBuf *m = local(L, "max", DT_F32), *lse = local(L, "lse", DT_F32);
  LExpr *row, *i, *counts;
  // W: the weights of the rows that count.
  lk_add(k, ST(W, F(0)));
  LStmt *l = reduce_loop(k, NULL, ce.N, "n", &row);
  LExpr *y = row_label(&ce, row, &counts);
  ls_add(l, ST(W, FADD(LD(W), SEL(counts, lclass_weight(&ce, y), F(0)))));
  lk_add(k, ST(sumw, F((double)ce.C)));
  if (ce.w) {
    lk_add(k, ST(sumw, F(0)));
    l = reduce_loop(k, NULL, ce.C, "c", &i);
    ls_add(l, ST(sumw, FADD(LD(sumw), lx_load(ce.w, &i))));
  }
  float ls = ce.ls;
  if (!grad) {
    LBuf *nll = local(L, "nll", DT_F32), *smooth = local(L, "smooth", DT_F32);
    lk_add(k, ST(nll, F(0)));
    lk_add(k, ST(smooth, F(0)));
    LStmt *rl = reduce_loop(k, NULL, ce.N, "n", &row);
    LExpr *mv = F(0), *lv = F(0);
    if (fused) {
      row_stats(k, rl, x, row, ce.C, m, lse);
      mv = LD(m), lv = LD(lse);
    }
    y = row_label(&ce, row, &counts);
    LExpr *lp = FSUB(FSUB(LD(x, lx_copy(row), y), mv), lv);
    ls_add(rl, ST(nll,
                  FADD(LD(nll), SEL(counts, lx_un(LX_NEG, FMUL(lclass_weight(&ce, lx_copy(y)), lp)),
                                    F(0)))));
    if (ls != 0) {
      LBuf *rs = local(L, "rowsum", DT_F32);
      ls_add(rl, ST(rs, F(0)));
      LStmt *cl = reduce_loop(k, rl, ce.C, "c", &i);
      LExpr *lpi = FSUB(FSUB(LD(x, lx_copy(row), i), fused ? LD(m) : F(0)), fused ? LD(lse) : F(0));
      ls_add(cl, ST(rs, FADD(LD(rs), FMUL(lclass_weight(&ce, lx_copy(i)), lpi))));
      ls_add(rl, ST(smooth, FADD(LD(smooth), SEL(lx_copy(counts), lx_un(LX_NEG, LD(rs)), F(0)))));
    }
    LExpr *loss = FDIV(LD(nll), LD(W));
    if (ls != 0)
      loss = FADD(FMUL(F(1.0f - ls), loss), FMUL(FDIV(LD(smooth), LD(W)), F(ls / (float)ce.C)));
    lk_add(k, ST(out, loss));
    return;
  }
  // d loss / d logp[n,c] = -((1-ls) w[y] [c==y] + ls/C w[c]) / W; the fused
  // gradient adds softmax * (the row's total of that, negated).
  LBuf *dl = B(L, n->in[0]);
  LStmt *rl = loop(k, NULL, ce.N, "n", &row);
  y = row_label(&ce, row, &counts);
  LBuf *wy = local(L, "wy", DT_F32), *total = local(L, "total", DT_F32);
  ls_add(rl, ST(wy, lclass_weight(&ce, y)));
  if (fused) {
    row_stats(k, rl, x, row, ce.C, m, lse);
    ls_add(rl, ST(total, FDIV(FADD(FMUL(F(1.0f - ls), LD(wy)), FMUL(F(ls / (float)ce.C), LD(sumw))),
                              LD(W))));
  }
  LStmt *cl = loop(k, rl, ce.C, "c", &i);
  LExpr *hit = BIN(LX_EQ, lx_copy(i), row_label(&ce, lx_copy(row), &counts));
  LExpr *g = FMUL(F(ls / (float)ce.C), lclass_weight(&ce, lx_copy(i)));
  g = FADD(g, SEL(hit, FMUL(F(1.0f - ls), LD(wy)), F(0)));
  g = lx_un(LX_NEG, FDIV(g, LD(W)));
  if (fused)
    g = FADD(g, FMUL(lx_un(LX_EXP, FSUB(FSUB(LD(x, lx_copy(row), lx_copy(i)), LD(m)), LD(lse))),
                     LD(total)));
  ls_add(cl, ST(out, SEL(counts, FMUL(lx_load(dl, NULL), g), F(0)), lx_copy(row), lx_copy(i)));
}

const OpRules rules_nll_loss = {.shape = shape_cross_entropy,
                                .eval = eval_cross_entropy,
                                .grad = grad_nll_loss,
                                .lower = lower_ce};
const OpRules rules_nll_loss_grad = {
    .shape = shape_cross_entropy_grad, .eval = eval_cross_entropy_grad, .lower = lower_ce};

// --- softmax_cross_entropy (logits[N,C], label i32[N], weight[C]?) ----------------------------

static void grad_softmax_cross_entropy(AD *ad, Node *n, Node *dy) {
  grad_cross_entropy(ad, n, dy, OP_softmax_cross_entropy_grad);
}

const OpRules rules_softmax_cross_entropy = {.shape = shape_cross_entropy,
                                             .eval = eval_cross_entropy,
                                             .grad = grad_softmax_cross_entropy,
                                             .lower = lower_ce};
const OpRules rules_softmax_cross_entropy_grad = {
    .shape = shape_cross_entropy_grad, .eval = eval_cross_entropy_grad, .lower = lower_ce};

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

// BCE family, mean over the elements whose target is not negative.
static void lower_bce(Lowering *L, Node *n) {
  bool grad = n->op == OP_bce_grad || n->op == OP_sigmoid_bce_grad;
  int xi = grad ? 1 : 0;
  LBuf *x = B(L, n->in[xi]), *t = B(L, n->in[xi + 1]), *out = B(L, n);
  LKernel *k = kernel(L, n, NULL);
  const Attr *pwa = node_attr(n, "pos_weight");
  LBuf *pwb = NULL;
  if (pwa->n > 1) {
    int64_t np = pwa->n;
    pwb = lfunc_buf(L->f, "pos_weight", DT_F32, 1, &np, LB_CONST);
    pwb->values = pwa->floats;
    pwb->nvalues = pwa->n;
  }
  LBuf *count = local(L, "count", DT_F32), *acc = local(L, "sum", DT_F32);
  LExpr *v[LMAX_RANK];
  lk_add(k, ST(count, F(0)));
  LStmt *l = each_sum(k, NULL, x, v);
  put(k, l, ST(count, FADD(LD(count), SEL(BIN(LX_GE, LDV(t, v), F(0)), F(1), F(0)))));
  lk_add(k, ST(acc, F(0)));
  l = grad ? each(k, NULL, x, v, NULL) : each_sum(k, NULL, x, v);
  LExpr *xv = LDV(x, v), *y = LDV(t, v);
  LExpr *counts = BIN(LX_GE, lx_copy(y), F(0));
  LExpr *last = x->rank ? v[x->rank - 1] : NULL; // pos_weight per class: rank >= 1
  LExpr *pw = pwa->n == 0 ? F(1) : pwa->n == 1 ? F(pwa->floats[0]) : lx_load(pwb, &last);
  LExpr *one_y = FSUB(F(1), lx_copy(y));
  LExpr *e;
  switch (n->op) {
  case OP_bce: { // -(pw y log p + (1-y) log(1-p)), logs clamped at -100 like PyTorch
    LExpr *lp = lx_bin(LX_MAX, lx_un(LX_LOG, xv), F(-100));
    LExpr *lq = lx_bin(LX_MAX, lx_un(LX_LOG, FSUB(F(1), lx_copy(xv))), F(-100));
    e = lx_un(LX_NEG, FADD(FMUL(FMUL(pw, y), lp), FMUL(one_y, lq)));
    put(k, l, ST(acc, FADD(LD(acc), SEL(counts, e, F(0)))));
    break;
  }
  case OP_sigmoid_bce: { // (1-y) x + (1 + (pw-1) y) (log(e^-mv + e^(-x-mv)) + mv), mv = max(-x, 0)
    LExpr *mv = lx_bin(LX_MAX, lx_un(LX_NEG, xv), F(0));
    LExpr *lw = FADD(FMUL(FSUB(pw, F(1)), y), F(1));
    LExpr *sp =
        FADD(lx_un(LX_LOG, FADD(lx_un(LX_EXP, lx_un(LX_NEG, mv)),
                                lx_un(LX_EXP, FSUB(lx_un(LX_NEG, lx_copy(xv)), lx_copy(mv))))),
             lx_copy(mv));
    e = FADD(FMUL(one_y, lx_copy(xv)), FMUL(lw, sp));
    put(k, l, ST(acc, FADD(LD(acc), SEL(counts, e, F(0)))));
    break;
  }
  case OP_bce_grad: { // (-pw y (1-p) + (1-y) p) / max(p (1-p), 1e-12)
    LExpr *dl = FDIV(lx_load(B(L, n->in[0]), NULL), LD(count));
    LExpr *q = FSUB(F(1), xv);
    LExpr *num = FADD(lx_un(LX_NEG, FMUL(FMUL(pw, y), q)), FMUL(one_y, lx_copy(xv)));
    LExpr *den = lx_bin(LX_MAX, FMUL(lx_copy(xv), lx_copy(q)), F(1e-12));
    put(k, l, ls_store(out, v, SEL(counts, FMUL(dl, FDIV(num, den)), F(0))));
    break;
  }
  case OP_sigmoid_bce_grad: { // dl ((pw y + 1 - y) sigmoid(x) - pw y)
    LExpr *dl = FDIV(lx_load(B(L, n->in[0]), NULL), LD(count));
    LExpr *s = FDIV(F(1), FADD(F(1), lx_un(LX_EXP, lx_un(LX_NEG, xv))));
    LExpr *py = FMUL(pw, y);
    LExpr *g = FMUL(dl, FSUB(FMUL(FADD(py, one_y), s), lx_copy(py)));
    put(k, l, ls_store(out, v, SEL(counts, g, F(0))));
    break;
  }
  default:
    unreachable();
  }
  if (!grad)
    lk_add(k, ST(out, FDIV(LD(acc), LD(count))));
}

const OpRules rules_bce = {
    .shape = shape_bce, .eval = eval_bce, .grad = grad_bce, .lower = lower_bce};

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

const OpRules rules_bce_grad = {.shape = shape_bce_grad, .eval = eval_bce_grad, .lower = lower_bce};

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

const OpRules rules_sigmoid_bce = {
    .shape = shape_bce, .eval = eval_sigmoid_bce, .grad = grad_sigmoid_bce, .lower = lower_bce};

// --- sigmoid_bce_grad (dl[], logits, target) -------------------------------------------------

static void eval_sigmoid_bce_grad(const Node *n, Tensor *out, Tensor **in) {
  double dl = in[0]->f[0], N = bce_count(in[2]);
  for (int64_t i = 0; i < numel(out); i++) {
    double x = in[1]->f[i], y = in[2]->f[i];
    double lw = 1.0 + (pos_weight(n, &out->type, i) - 1.0) * y;
    out->f[i] = bce_ignored(in[2]->f[i]) ? 0.0f : (float)(dl * ((1.0 - y) - lw * sigmoid(-x)) / N);
  }
}

const OpRules rules_sigmoid_bce_grad = {
    .shape = shape_bce_grad, .eval = eval_sigmoid_bce_grad, .lower = lower_bce};

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

static void lower_l2norm(Lowering *L, Node *n) {
  LBuf *x = B(L, n->in[0]), *out = B(L, n);
  LKernel *k = kernel(L, n, NULL);
  LBuf *acc = local(L, "sum", DT_F32);
  LExpr *v[LMAX_RANK];
  lk_add(k, ST(acc, F(0)));
  LStmt *l = each_sum(k, NULL, x, v);
  put(k, l, ST(acc, lx_fma(LDV(x, v), LDV(x, v), LD(acc))));
  lk_add(k, ST(out, lx_un(LX_SQRT, LD(acc))));
}

const OpRules rules_l2norm = {
    .shape = shape_l2norm, .eval = eval_l2norm, .grad = grad_l2norm, .lower = lower_l2norm};

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

static LExpr *elem_l2norm_grad(Lowering *L, Node *n, LExpr **v) {
  LExpr *norm = operand(L, n, 2, v);
  LExpr *g = FDIV(FMUL(operand(L, n, 0, v), operand(L, n, 1, v)), lx_copy(norm));
  return SEL(BIN(LX_EQ, norm, F(0)), F(0), g);
}

const OpRules rules_l2norm_grad = {
    .shape = shape_l2norm_grad, .eval = eval_l2norm_grad, .elem = elem_l2norm_grad};

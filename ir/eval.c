// The reference evaluator: runs a graph on concrete tensors, one naive loop
// nest per op, accumulating in double. It exists to be obviously correct --
// the oracle for finite-difference checks, pass differential tests, PyTorch
// parity and generated code -- so it favours the textbook formula over speed.
#include "ir.h"
#include "dropout_hash.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

Tensor tensor_new(Type t) {
  Tensor x = {t, NULL, NULL};
  int64_t n = type_numel(&t);
  if (t.dtype == DT_F32)
    x.f = xcalloc(n ? n : 1, sizeof(float));
  else
    x.i = xcalloc(n ? n : 1, sizeof(int32_t));
  return x;
}

static int64_t numel(const Tensor *t) { return type_numel(&t->type); }

// An [N, C, rest...] tensor seen as outer x C x inner, for per-channel ops.
typedef struct {
  int64_t outer, c, inner;
} ChannelView;

static ChannelView channels(const Type *t) {
  ChannelView v = {t->dim[0], t->dim[1], 1};
  for (int i = 2; i < t->rank; i++)
    v.inner *= t->dim[i];
  return v;
}

static const int64_t *ints(const Node *n, const char *attr) { return node_attr(n, attr)->ints; }

// Stores a double accumulator array into a fresh-rounded float tensor.
static void store(Tensor *out, const double *acc) {
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)acc[i];
}

// --- Sources ------------------------------------------------------------------

static void eval_const(const Node *n, Tensor *out) {
  const Attr *v = node_attr(n, "value");
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = (float)v->floats[v->n == 1 ? 0 : i];
}

// --- Convolution: x[N,C,H,W] * w[O,C,KH,KW] (+ b[O]) -> y[N,O,HO,WO] --------------
//
// y[n,o,oh,ow] = b[o] + sum_{c,kh,kw} x[n,c,oh*sh-ph+kh, ow*sw-pw+kw] * w[o,c,kh,kw],
// reading zeros outside x. The two gradients visit the same index pairs.

typedef struct {
  int64_t n, c, h, w;    // x
  int64_t o, kh, kw;     // w
  int64_t ho, wo;        // y
  int64_t sh, sw, ph, pw;
} ConvDims;

static ConvDims conv_dims(const Type *x, const Type *w, const Type *y, const Node *n) {
  const int64_t *s = ints(n, "stride"), *p = ints(n, "padding");
  return (ConvDims){x->dim[0], x->dim[1], x->dim[2], x->dim[3], w->dim[0], w->dim[2], w->dim[3],
                    y->dim[2],  y->dim[3],  s[0],      s[1],      p[0],      p[1]};
}

#define X_AT(d, n_, c_, h_, w_) ((((n_) * (d).c + (c_)) * (d).h + (h_)) * (d).w + (w_))
#define W_AT(d, o_, c_, h_, w_) ((((o_) * (d).c + (c_)) * (d).kh + (h_)) * (d).kw + (w_))
#define Y_AT(d, n_, o_, h_, w_) ((((n_) * (d).o + (o_)) * (d).ho + (h_)) * (d).wo + (w_))

// Calls body(xi, wi, yi) for every multiply of the convolution.
#define CONV_LOOP(d, body)                                                                         \
  for (int64_t n_ = 0; n_ < (d).n; n_++)                                                           \
    for (int64_t o_ = 0; o_ < (d).o; o_++)                                                         \
      for (int64_t oh_ = 0; oh_ < (d).ho; oh_++)                                                   \
        for (int64_t ow_ = 0; ow_ < (d).wo; ow_++)                                                 \
          for (int64_t c_ = 0; c_ < (d).c; c_++)                                                   \
            for (int64_t kh_ = 0; kh_ < (d).kh; kh_++)                                             \
              for (int64_t kw_ = 0; kw_ < (d).kw; kw_++) {                                         \
                int64_t ih_ = oh_ * (d).sh - (d).ph + kh_, iw_ = ow_ * (d).sw - (d).pw + kw_;      \
                if (ih_ < 0 || ih_ >= (d).h || iw_ < 0 || iw_ >= (d).w)                            \
                  continue;                                                                        \
                int64_t xi = X_AT(d, n_, c_, ih_, iw_), wi = W_AT(d, o_, c_, kh_, kw_),            \
                        yi = Y_AT(d, n_, o_, oh_, ow_);                                            \
                body;                                                                              \
              }

static void eval_conv2d(const Node *n, Tensor *out, Tensor **in) {
  ConvDims d = conv_dims(&in[0]->type, &in[1]->type, &out->type, n);
  double *acc = xcalloc(numel(out), sizeof *acc);
  const float *x = in[0]->f, *w = in[1]->f;
  CONV_LOOP(d, acc[yi] += (double)x[xi] * w[wi]);
  if (n->nin == 3)
    for (int64_t i = 0; i < numel(out); i++)
      acc[i] += in[2]->f[i / (d.ho * d.wo) % d.o];
  store(out, acc);
  free(acc);
}

// (dy, w) -> dx: each x element collects dy * w over the outputs it fed.
static void eval_conv2d_grad_input(const Node *n, Tensor *out, Tensor **in) {
  ConvDims d = conv_dims(&out->type, &in[1]->type, &in[0]->type, n);
  double *acc = xcalloc(numel(out), sizeof *acc);
  const float *dy = in[0]->f, *w = in[1]->f;
  CONV_LOOP(d, acc[xi] += (double)dy[yi] * w[wi]);
  store(out, acc);
  free(acc);
}

// (dy, x) -> dw: each weight collects dy * x over all positions and samples.
static void eval_conv2d_grad_weight(const Node *n, Tensor *out, Tensor **in) {
  ConvDims d = conv_dims(&in[1]->type, &out->type, &in[0]->type, n);
  double *acc = xcalloc(numel(out), sizeof *acc);
  const float *dy = in[0]->f, *x = in[1]->f;
  CONV_LOOP(d, acc[wi] += (double)dy[yi] * x[xi]);
  store(out, acc);
  free(acc);
}

// dy[N,C,...] -> [C]: the gradient of a bias broadcast over all dims but 1.
static void eval_bias_grad(const Node *n, Tensor *out, Tensor **in) {
  ChannelView v = channels(&in[0]->type);
  for (int64_t c = 0; c < v.c; c++) {
    double s = 0;
    for (int64_t o = 0; o < v.outer; o++)
      for (int64_t k = 0; k < v.inner; k++)
        s += in[0]->f[(o * v.c + c) * v.inner + k];
    out->f[c] = (float)s;
  }
}

// --- Pooling ------------------------------------------------------------------
//
// Window (oh, ow) covers rows oh*sh-ph .. +kh-1 and columns likewise; the
// parts in the padding are skipped (max pooling pads with -inf) but count
// in avg pooling's divisor (count_include_pad=True), as in PyTorch.

typedef struct {
  int64_t n, c, h, w, ho, wo;
  int64_t kh, kw, sh, sw, ph, pw;
} PoolDims;

static PoolDims pool_dims(const Type *x, const Node *n) {
  const int64_t *k = ints(n, "kernel"), *s = ints(n, "stride"), *p = ints(n, "padding");
  PoolDims d = {x->dim[0], x->dim[1], x->dim[2], x->dim[3], 0, 0,
                k[0],      k[1],      s[0],      s[1],      p[0], p[1]};
  d.ho = (d.h + 2 * d.ph - d.kh) / d.sh + 1;
  d.wo = (d.w + 2 * d.pw - d.kw) / d.sw + 1;
  return d;
}

// The flat index of window (nc, oh, ow)'s maximum: the first one in row-major
// order, or a NaN, as PyTorch's CPU kernel picks (`val > max || isnan(val)`).
static int64_t max_index(const PoolDims *d, const float *x, int64_t nc, int64_t oh, int64_t ow) {
  int64_t h0 = oh * d->sh - d->ph, w0 = ow * d->sw - d->pw;
  int64_t h1 = h0 + d->kh < d->h ? h0 + d->kh : d->h, w1 = w0 + d->kw < d->w ? w0 + d->kw : d->w;
  h0 = h0 > 0 ? h0 : 0;
  w0 = w0 > 0 ? w0 : 0;
  const float *plane = x + nc * d->h * d->w;
  int64_t best = h0 * d->w + w0;
  float max = -INFINITY;
  for (int64_t ih = h0; ih < h1; ih++)
    for (int64_t iw = w0; iw < w1; iw++) {
      float v = plane[ih * d->w + iw];
      if (v > max || isnan(v)) {
        max = v;
        best = ih * d->w + iw;
        if (isnan(v))
          return nc * d->h * d->w + best;
      }
    }
  return nc * d->h * d->w + best;
}

static void eval_maxpool2d(const Node *n, Tensor *out, Tensor **in) {
  PoolDims d = pool_dims(&in[0]->type, n);
  for (int64_t nc = 0; nc < d.n * d.c; nc++)
    for (int64_t oh = 0; oh < d.ho; oh++)
      for (int64_t ow = 0; ow < d.wo; ow++)
        out->f[(nc * d.ho + oh) * d.wo + ow] = in[0]->f[max_index(&d, in[0]->f, nc, oh, ow)];
}

// (dy, x) -> dx: each output's gradient goes to its window's maximum.
static void eval_maxpool2d_grad(const Node *n, Tensor *out, Tensor **in) {
  PoolDims d = pool_dims(&in[1]->type, n);
  double *acc = xcalloc(numel(out), sizeof *acc);
  for (int64_t nc = 0; nc < d.n * d.c; nc++)
    for (int64_t oh = 0; oh < d.ho; oh++)
      for (int64_t ow = 0; ow < d.wo; ow++)
        acc[max_index(&d, in[1]->f, nc, oh, ow)] += in[0]->f[(nc * d.ho + oh) * d.wo + ow];
  store(out, acc);
  free(acc);
}

// Calls body(xi, yi, div) for every input element of every avg window.
#define AVG_LOOP(d, body)                                                                          \
  for (int64_t nc_ = 0; nc_ < (d).n * (d).c; nc_++)                                                \
    for (int64_t oh_ = 0; oh_ < (d).ho; oh_++)                                                     \
      for (int64_t ow_ = 0; ow_ < (d).wo; ow_++) {                                                 \
        int64_t h0_ = oh_ * (d).sh - (d).ph, w0_ = ow_ * (d).sw - (d).pw;                          \
        int64_t h1_ = h0_ + (d).kh < (d).h + (d).ph ? h0_ + (d).kh : (d).h + (d).ph;               \
        int64_t w1_ = w0_ + (d).kw < (d).w + (d).pw ? w0_ + (d).kw : (d).w + (d).pw;               \
        double div = (double)((h1_ - h0_) * (w1_ - w0_)); /* padding included */                   \
        int64_t yi = (nc_ * (d).ho + oh_) * (d).wo + ow_;                                          \
        for (int64_t ih_ = h0_ > 0 ? h0_ : 0; ih_ < h1_ && ih_ < (d).h; ih_++)                     \
          for (int64_t iw_ = w0_ > 0 ? w0_ : 0; iw_ < w1_ && iw_ < (d).w; iw_++) {                 \
            int64_t xi = (nc_ * (d).h + ih_) * (d).w + iw_;                                        \
            body;                                                                                  \
          }                                                                                        \
      }

static void eval_avgpool2d(const Node *n, Tensor *out, Tensor **in) {
  PoolDims d = pool_dims(&in[0]->type, n);
  double *acc = xcalloc(numel(out), sizeof *acc);
  AVG_LOOP(d, acc[yi] += in[0]->f[xi] / div);
  store(out, acc);
  free(acc);
}

static void eval_avgpool2d_grad(const Node *n, Tensor *out, Tensor **in) {
  PoolDims d = pool_dims(&in[1]->type, n);
  double *acc = xcalloc(numel(out), sizeof *acc);
  AVG_LOOP(d, acc[xi] += in[0]->f[yi] / div);
  store(out, acc);
  free(acc);
}

// --- Linear: x[N,K] w[M,K] (+ b[M]) -> y[N,M] = x w^T + b ------------------------

static void eval_linear(const Node *n, Tensor *out, Tensor **in) {
  int64_t N = in[0]->type.dim[0], K = in[0]->type.dim[1], M = in[1]->type.dim[0];
  for (int64_t i = 0; i < N; i++)
    for (int64_t m = 0; m < M; m++) {
      double s = n->nin == 3 ? in[2]->f[m] : 0.0;
      for (int64_t k = 0; k < K; k++)
        s += (double)in[0]->f[i * K + k] * in[1]->f[m * K + k];
      out->f[i * M + m] = (float)s;
    }
}

// (dy[N,M], w[M,K]) -> dx[N,K] = dy w
static void eval_linear_grad_input(const Node *n, Tensor *out, Tensor **in) {
  int64_t N = in[0]->type.dim[0], M = in[0]->type.dim[1], K = in[1]->type.dim[1];
  for (int64_t i = 0; i < N; i++)
    for (int64_t k = 0; k < K; k++) {
      double s = 0;
      for (int64_t m = 0; m < M; m++)
        s += (double)in[0]->f[i * M + m] * in[1]->f[m * K + k];
      out->f[i * K + k] = (float)s;
    }
}

// (dy[N,M], x[N,K]) -> dw[M,K] = dy^T x
static void eval_linear_grad_weight(const Node *n, Tensor *out, Tensor **in) {
  int64_t N = in[0]->type.dim[0], M = in[0]->type.dim[1], K = in[1]->type.dim[1];
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) {
      double s = 0;
      for (int64_t i = 0; i < N; i++)
        s += (double)in[0]->f[i * M + m] * in[1]->f[i * K + k];
      out->f[m * K + k] = (float)s;
    }
}

// --- Elementwise ----------------------------------------------------------------

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

static void eval_elementwise(const Node *n, Tensor *out, Tensor **in) {
  const float *a = in[0]->f, *b = n->nin > 1 ? in[1]->f : NULL;
  for (int64_t i = 0; i < numel(out); i++) {
    double r;
    switch (n->op) {
    case OP_relu:
      r = a[i] > 0 || isnan(a[i]) ? a[i] : 0.0; // NaN propagates, as in torch.relu
      break;
    case OP_sigmoid:
      r = sigmoid(a[i]);
      break;
    case OP_add:
      r = (double)a[i] + b[i];
      break;
    case OP_mul:
      r = (double)a[i] * b[i];
      break;
    case OP_scale:
      r = node_float(n, "factor") * a[i];
      break;
    case OP_ema: {
      double m = node_float(n, "momentum");
      r = (1.0 - m) * a[i] + m * b[i];
      break;
    }
    case OP_relu_grad: // (dy, y): the output is positive exactly where the input was
      r = b[i] > 0 ? a[i] : 0.0;
      break;
    case OP_sigmoid_grad: // (dy, y)
      r = (double)a[i] * b[i] * (1.0 - b[i]);
      break;
    default:
      unreachable();
    }
    out->f[i] = (float)r;
  }
}

static void eval_copy(const Node *n, Tensor *out, Tensor **in) {
  if (out->type.dtype == DT_F32)
    memcpy(out->f, in[n->nin - 1]->f, numel(out) * sizeof(float));
  else
    memcpy(out->i, in[n->nin - 1]->i, numel(out) * sizeof(int32_t));
}

// --- Softmax family over dim 1 of [N,C] ---------------------------------------------

// log(sum_c exp(x[c])) computed as max + log(sum exp(x - max)), so that large
// logits do not overflow.
static double logsumexp(const float *x, int64_t C) {
  double max = -INFINITY;
  for (int64_t c = 0; c < C; c++)
    max = x[c] > max ? x[c] : max;
  if (isinf(max))
    return max;
  double s = 0;
  for (int64_t c = 0; c < C; c++)
    s += exp(x[c] - max);
  return max + log(s);
}

static void eval_softmax(const Node *n, Tensor *out, Tensor **in) {
  int64_t N = in[0]->type.dim[0], C = in[0]->type.dim[1];
  for (int64_t i = 0; i < N; i++) {
    const float *x = in[0]->f + i * C;
    double lse = logsumexp(x, C);
    for (int64_t c = 0; c < C; c++)
      out->f[i * C + c] = (float)(n->op == OP_softmax ? exp(x[c] - lse) : x[c] - lse);
  }
}

// softmax_grad:     (dy, y) -> y * (dy - sum(dy * y))
// log_softmax_grad: (dy, y) -> dy - exp(y) * sum(dy)
static void eval_softmax_grad(const Node *n, Tensor *out, Tensor **in) {
  int64_t N = in[0]->type.dim[0], C = in[0]->type.dim[1];
  for (int64_t i = 0; i < N; i++) {
    const float *dy = in[0]->f + i * C, *y = in[1]->f + i * C;
    double s = 0;
    for (int64_t c = 0; c < C; c++)
      s += n->op == OP_softmax_grad ? (double)dy[c] * y[c] : dy[c];
    for (int64_t c = 0; c < C; c++)
      out->f[i * C + c] =
          (float)(n->op == OP_softmax_grad ? y[c] * (dy[c] - s) : dy[c] - exp(y[c]) * s);
  }
}

// --- Cross-entropy family ----------------------------------------------------------
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

// --- Binary cross-entropy ------------------------------------------------------------
//
// pos_weight has 0 values (all ones), 1 value, or one per last dimension,
// broadcast like BCEWithLogitsLoss's. Both reduce with the mean over the
// elements whose target is not negative (bce_ignored: padding rows).

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

// The derivative of the clamped loss above: zero where a log is clamped.
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

static void eval_sigmoid_bce_grad(const Node *n, Tensor *out, Tensor **in) {
  double dl = in[0]->f[0], N = bce_count(in[2]);
  for (int64_t i = 0; i < numel(out); i++) {
    double x = in[1]->f[i], y = in[2]->f[i];
    double lw = 1.0 + (pos_weight(n, &out->type, i) - 1.0) * y;
    out->f[i] = bce_ignored(in[2]->f[i]) ? 0.0f : (float)(dl * ((1.0 - y) - lw * sigmoid(-x)) / N);
  }
}

// --- L2 norm (not squared) --------------------------------------------------------------

static void eval_l2norm(const Node *n, Tensor *out, Tensor **in) {
  double s = 0;
  for (int64_t i = 0; i < numel(in[0]); i++)
    s += (double)in[0]->f[i] * in[0]->f[i];
  out->f[0] = (float)sqrt(s);
}

// (dl, x, norm) -> dl * x / norm; at norm 0 the subgradient 0, as torch.norm.
static void eval_l2norm_grad(const Node *n, Tensor *out, Tensor **in) {
  double dl = in[0]->f[0], norm = in[2]->f[0];
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = norm == 0.0 ? 0.0f : (float)(dl * in[1]->f[i] / norm);
}

// --- Dropout ----------------------------------------------------------------------------

// 0 or 1/(1-p) per element, from dropout_hash.h's hash of (seed, salt, step, index).
static void eval_dropout_mask(const Node *n, Tensor *out, Tensor **in) {
  double p = node_float(n, "p");
  uint32_t threshold = dropout_threshold(p);
  uint32_t key =
      dropout_key((uint32_t)in[1]->i[0], (uint32_t)node_int(n, "salt"), (uint32_t)in[0]->i[0]);
  float scale = (float)(1.0 / (1.0 - p));
  for (int64_t i = 0; i < numel(out); i++)
    out->f[i] = dropout_bits(key, (uint32_t)i) >= threshold ? scale : 0.0f;
}

// --- Batch normalisation ------------------------------------------------------------------
//
// Training mode normalises with the batch's mean and biased variance over
// (N, H, W): xhat = (x - mean) / sqrt(var + eps), y = gamma xhat + beta.

// Per-channel mean and variance (divided by count - unbiased).
static void channel_stats(const Tensor *x, int64_t c, bool unbiased, double *mean, double *var) {
  ChannelView v = channels(&x->type);
  int64_t count = v.outer * v.inner;
  double s = 0, ss = 0;
  for (int64_t o = 0; o < v.outer; o++)
    for (int64_t k = 0; k < v.inner; k++)
      s += x->f[(o * v.c + c) * v.inner + k];
  *mean = s / count;
  for (int64_t o = 0; o < v.outer; o++)
    for (int64_t k = 0; k < v.inner; k++) {
      double d = x->f[(o * v.c + c) * v.inner + k] - *mean;
      ss += d * d;
    }
  *var = ss / (double)(count - unbiased);
}

static void eval_channel_stat(const Node *n, Tensor *out, Tensor **in) {
  bool unbiased = n->op == OP_channel_var && node_int(n, "unbiased");
  for (int64_t c = 0; c < out->type.dim[0]; c++) {
    double mean, var;
    channel_stats(in[0], c, unbiased, &mean, &var);
    out->f[c] = (float)(n->op == OP_channel_mean ? mean : var);
  }
}

// batchnorm2d (x, gamma, beta) and batchnorm2d_infer (x, gamma, beta, mean, var).
static void eval_batchnorm2d(const Node *n, Tensor *out, Tensor **in) {
  ChannelView v = channels(&in[0]->type);
  double eps = node_float(n, "eps");
  for (int64_t c = 0; c < v.c; c++) {
    double mean, var;
    if (n->op == OP_batchnorm2d)
      channel_stats(in[0], c, false, &mean, &var);
    else
      mean = in[3]->f[c], var = in[4]->f[c];
    double invstd = 1.0 / sqrt(var + eps), gamma = in[1]->f[c], beta = in[2]->f[c];
    for (int64_t o = 0; o < v.outer; o++)
      for (int64_t k = 0; k < v.inner; k++) {
        int64_t i = (o * v.c + c) * v.inner + k;
        out->f[i] = (float)((in[0]->f[i] - mean) * invstd * gamma + beta);
      }
  }
}

// With M = N*H*W elements per channel, mean and variance depend on x too:
//   dgamma = sum dy * xhat
//   dx     = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))
static void eval_batchnorm2d_grad(const Node *n, Tensor *out, Tensor **in) {
  const Tensor *dy = in[0], *x = in[1];
  ChannelView v = channels(&x->type);
  double eps = node_float(n, "eps"), M = (double)(v.outer * v.inner);
  for (int64_t c = 0; c < v.c; c++) {
    double mean, var, sdy = 0, sdyx = 0;
    channel_stats(x, c, false, &mean, &var);
    double invstd = 1.0 / sqrt(var + eps);
    for (int64_t o = 0; o < v.outer; o++)
      for (int64_t k = 0; k < v.inner; k++) {
        int64_t i = (o * v.c + c) * v.inner + k;
        sdy += dy->f[i];
        sdyx += dy->f[i] * (x->f[i] - mean) * invstd;
      }
    if (n->op == OP_batchnorm2d_grad_gamma) {
      out->f[c] = (float)sdyx;
      continue;
    }
    double gamma = in[2]->f[c];
    for (int64_t o = 0; o < v.outer; o++)
      for (int64_t k = 0; k < v.inner; k++) {
        int64_t i = (o * v.c + c) * v.inner + k;
        double xhat = (x->f[i] - mean) * invstd;
        out->f[i] = (float)(gamma * invstd * (dy->f[i] - sdy / M - xhat * sdyx / M));
      }
  }
}

// --- Optimizers (torch.optim, PyTorch 1.13) --------------------------------------------

// A setting that a schedule may move: the optional operand `i` when there
// (%momentum), else the attribute.
static double scheduled(const Node *n, Tensor **in, int i, const char *attr) {
  return n->nin > i ? in[i]->f[0] : node_float(n, attr);
}

// torch.optim.SGD, with d = g + weight_decay * p:
//   sgd_buf:    step 1: buf = d; later: buf = momentum * buf + (1 - dampening) * d
//   sgd_update: p - lr * (momentum == 0 ? d : nesterov ? d + momentum * buf : buf)
static void eval_sgd_buf(const Node *n, Tensor *out, Tensor **in) {
  double mom = scheduled(n, in, 4, "momentum"), damp = node_float(n, "dampening"),
         wd = node_float(n, "weight_decay");
  bool first = in[3]->i[0] <= 1;
  for (int64_t i = 0; i < numel(out); i++) {
    double d = in[0]->f[i] + wd * in[2]->f[i];
    out->f[i] = (float)(first ? d : mom * in[1]->f[i] + (1.0 - damp) * d);
  }
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

// Adam's moments, with L2 weight decay folded into the gradient (0 for AdamW):
//   g' = g + weight_decay * p
//   adam_moment1: m = beta1 * m + (1 - beta1) * g'
//   adam_moment2: v = beta2 * v + (1 - beta2) * g'^2
static void eval_adam_moment(const Node *n, Tensor *out, Tensor **in) {
  bool first = n->op == OP_adam_moment1;
  double beta = first ? scheduled(n, in, 3, "beta1") : node_float(n, "beta2"), wd = node_float(n, "weight_decay");
  for (int64_t i = 0; i < numel(out); i++) {
    double g = in[0]->f[i] + wd * in[2]->f[i];
    out->f[i] = (float)(beta * in[1]->f[i] + (1.0 - beta) * (first ? g : g * g));
  }
}

// PyTorch 1.13's single-tensor Adam step t (from 1), after the moments:
//   AdamW only: p = p * (1 - lr * weight_decay)
//   p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
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

// --- The driver -------------------------------------------------------------------------

static void check_source(Graph *g, const Node *n, const Tensor *t) {
  const char *name = n->name ? n->name : "(unnamed)";
  if (!type_eq(&t->type, &n->type))
    fatal("eval_graph: graph %s: source %%%s is %s but the tensor given is %s", g->name, name,
          type_str(&n->type), type_str(&t->type));
  if (n->type.dtype == DT_F32 ? !t->f : !t->i)
    fatal("eval_graph: graph %s: no data given for source %%%s", g->name, name);
}

Tensor *eval_graph(Graph *g, const Tensor *sources) {
  Tensor *val = xcalloc(g->nnodes ? g->nnodes : 1, sizeof *val);
  Tensor *in[6]; // no op takes more operands
  for (int i = 0; i < g->nnodes; i++) {
    Node *n = g->node[i];
    ir_assert(n->id == i); // sources and results are indexed by id
    ir_assert(n->nin <= 6);
    for (int j = 0; j < n->nin; j++) {
      ir_assert(n->in[j]->id < i);
      in[j] = &val[n->in[j]->id];
    }
    Tensor *out = &val[i];
    *out = tensor_new(n->type);

    switch (n->op) {
    case OP_input:
    case OP_param:
    case OP_state: {
      const Tensor *src = &sources[i];
      check_source(g, n, src);
      if (n->type.dtype == DT_F32)
        memcpy(out->f, src->f, type_numel(&n->type) * sizeof(float));
      else
        memcpy(out->i, src->i, type_numel(&n->type) * sizeof(int32_t));
      break;
    }
    case OP_const: eval_const(n, out); break;
    case OP_conv2d: eval_conv2d(n, out, in); break;
    case OP_maxpool2d: eval_maxpool2d(n, out, in); break;
    case OP_avgpool2d: eval_avgpool2d(n, out, in); break;
    case OP_relu:
    case OP_sigmoid:
    case OP_add:
    case OP_mul:
    case OP_scale:
    case OP_ema:
    case OP_relu_grad:
    case OP_sigmoid_grad: eval_elementwise(n, out, in); break;
    case OP_softmax:
    case OP_log_softmax: eval_softmax(n, out, in); break;
    case OP_reshape:
    case OP_assign: eval_copy(n, out, in); break;
    case OP_linear: eval_linear(n, out, in); break;
    case OP_dropout_mask: eval_dropout_mask(n, out, in); break;
    case OP_batchnorm2d:
    case OP_batchnorm2d_infer: eval_batchnorm2d(n, out, in); break;
    case OP_channel_mean:
    case OP_channel_var: eval_channel_stat(n, out, in); break;
    case OP_nll_loss:
    case OP_softmax_cross_entropy: eval_cross_entropy(n, out, in); break;
    case OP_bce: eval_bce(n, out, in); break;
    case OP_sigmoid_bce: eval_sigmoid_bce(n, out, in); break;
    case OP_l2norm: eval_l2norm(n, out, in); break;
    case OP_softmax_grad:
    case OP_log_softmax_grad: eval_softmax_grad(n, out, in); break;
    case OP_conv2d_grad_input: eval_conv2d_grad_input(n, out, in); break;
    case OP_conv2d_grad_weight: eval_conv2d_grad_weight(n, out, in); break;
    case OP_bias_grad: eval_bias_grad(n, out, in); break;
    case OP_maxpool2d_grad: eval_maxpool2d_grad(n, out, in); break;
    case OP_avgpool2d_grad: eval_avgpool2d_grad(n, out, in); break;
    case OP_linear_grad_input: eval_linear_grad_input(n, out, in); break;
    case OP_linear_grad_weight: eval_linear_grad_weight(n, out, in); break;
    case OP_nll_loss_grad:
    case OP_softmax_cross_entropy_grad: eval_cross_entropy_grad(n, out, in); break;
    case OP_bce_grad: eval_bce_grad(n, out, in); break;
    case OP_sigmoid_bce_grad: eval_sigmoid_bce_grad(n, out, in); break;
    case OP_l2norm_grad: eval_l2norm_grad(n, out, in); break;
    case OP_batchnorm2d_grad_input:
    case OP_batchnorm2d_grad_gamma: eval_batchnorm2d_grad(n, out, in); break;
    case OP_sgd_buf: eval_sgd_buf(n, out, in); break;
    case OP_sgd_update: eval_sgd_update(n, out, in); break;
    case OP_adam_moment1:
    case OP_adam_moment2: eval_adam_moment(n, out, in); break;
    case OP_adam_update: eval_adam_update(n, out, in); break;
    case OP_COUNT: unreachable();
    }
  }
  return val;
}

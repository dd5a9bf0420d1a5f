// Convolution, nn.Conv2d's: x[N,C,H,W] * w[O,C,KH,KW] (+ b[O]) -> y[N,O,HO,WO],
// and its two gradients, conv2d_grad_input and conv2d_grad_weight (the bias's
// is bias_grad, in batchnorm.c with the other per-channel sums).
#include "ops.h"

#include <stdlib.h>

// The shape rule the three share: y's type from x's and w's.
static const char *conv_rule(const Node *n, const Type *x, const Type *w, Type *out) {
  CHECK(want_pair(n, "stride", 1));
  CHECK(want_pair(n, "padding", 0));
  if (x->rank != 4 || x->dtype != DT_F32)
    FAIL("input must be an f32 [N,C,H,W] tensor, got %s", type_str(x));
  if (w->rank != 4 || w->dtype != DT_F32)
    FAIL("weight must be an f32 [O,C,KH,KW] tensor, got %s", type_str(w));
  if (w->dim[1] != x->dim[1])
    FAIL("weight expects %lld input channels but the input has %lld", (long long)w->dim[1],
         (long long)x->dim[1]);
  const int64_t *s = node_attr(n, "stride")->ints, *p = node_attr(n, "padding")->ints;
  int64_t d[4] = {x->dim[0], w->dim[0], 0, 0};
  CHECK(window_out(x->dim[2], w->dim[2], s[0], p[0], &d[2], "height"));
  CHECK(window_out(x->dim[3], w->dim[3], s[1], p[1], &d[3], "width"));
  *out = type_make(DT_F32, 4, d);
  return NULL;
}

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

// --- conv2d (x, w, b?) -> y ----------------------------------------------------------

static const char *shape_conv2d(const Node *n, Type *out) {
  CHECK(conv_rule(n, T(n, 0), T(n, 1), out));
  if (n->nin == 3 && (T(n, 2)->rank != 1 || T(n, 2)->dim[0] != T(n, 1)->dim[0]))
    FAIL("bias must be f32[%lld], one per output channel, got %s", (long long)T(n, 1)->dim[0],
         type_str(T(n, 2)));
  return NULL;
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

// dx = conv2d_grad_input(dy, w), dw = conv2d_grad_weight(dy, x), db = bias_grad(dy).
static void grad_conv2d(AD *ad, Node *n, Node *dy) {
  Node **x = n->in;
  if (needs_grad(ad, x[0])) {
    Node *gi = grad_op(ad, OP_conv2d_grad_input, n, 2, (Node *[]){dy, x[1]});
    gi->type = x[0]->type; // the input's shape is not a function of dy and w
    accumulate(ad, x[0], done(gi));
  }
  if (needs_grad(ad, x[1])) {
    Node *gw = grad_op(ad, OP_conv2d_grad_weight, n, 2, (Node *[]){dy, x[0]});
    node_set_ints(gw, "kernel", &x[1]->type.dim[2], 2);
    accumulate(ad, x[1], done(gw));
  }
  if (n->nin == 3 && needs_grad(ad, x[2]))
    accumulate(ad, x[2], done(grad_op(ad, OP_bias_grad, n, 1, (Node *[]){dy})));
}

const OpRules rules_conv2d = {.shape = shape_conv2d, .eval = eval_conv2d, .grad = grad_conv2d};

// --- conv2d_grad_input (dy, w) -> dx, of the type the builder declares ---------------------
//
// Several input sizes give one output size, so the type is declared, and checked.

static const char *shape_conv2d_grad_input(const Node *n, Type *out) {
  Type dy;
  CHECK(conv_rule(n, &n->type, T(n, 1), &dy));
  if (!type_eq(&dy, T(n, 0)))
    FAIL("gradient %s does not match the convolution's output %s", type_str(T(n, 0)),
         type_str(&dy));
  *out = n->type;
  return NULL;
}

// Each x element collects dy * w over the outputs it fed.
static void eval_conv2d_grad_input(const Node *n, Tensor *out, Tensor **in) {
  ConvDims d = conv_dims(&out->type, &in[1]->type, &in[0]->type, n);
  double *acc = xcalloc(numel(out), sizeof *acc);
  const float *dy = in[0]->f, *w = in[1]->f;
  CONV_LOOP(d, acc[xi] += (double)dy[yi] * w[wi]);
  store(out, acc);
  free(acc);
}

const OpRules rules_conv2d_grad_input = {.shape = shape_conv2d_grad_input,
                                         .eval = eval_conv2d_grad_input};

// --- conv2d_grad_weight (dy, x) -> dw[O,C,KH,KW], the kernel size an attribute ------------

static const char *shape_conv2d_grad_weight(const Node *n, Type *out) {
  const Type *dy = T(n, 0), *x = T(n, 1);
  CHECK(want_pair(n, "kernel", 1));
  CHECK(want_rank(n, 0, 4, "gradient"));
  CHECK(want_rank(n, 1, 4, "input"));
  const int64_t *k = node_attr(n, "kernel")->ints;
  int64_t wd[4] = {dy->dim[1], x->dim[1], k[0], k[1]};
  Type w = type_make(DT_F32, 4, wd), y;
  CHECK(conv_rule(n, x, &w, &y));
  if (!type_eq(&y, dy))
    FAIL("gradient %s does not match the convolution's output %s", type_str(dy), type_str(&y));
  *out = w;
  return NULL;
}

// Each weight collects dy * x over all positions and samples.
static void eval_conv2d_grad_weight(const Node *n, Tensor *out, Tensor **in) {
  ConvDims d = conv_dims(&in[1]->type, &out->type, &in[0]->type, n);
  double *acc = xcalloc(numel(out), sizeof *acc);
  const float *dy = in[0]->f, *x = in[1]->f;
  CONV_LOOP(d, acc[wi] += (double)dy[yi] * x[xi]);
  store(out, acc);
  free(acc);
}

const OpRules rules_conv2d_grad_weight = {.shape = shape_conv2d_grad_weight,
                                          .eval = eval_conv2d_grad_weight};

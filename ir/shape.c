// Shape rules, one per op, with PyTorch's formulas. A rule reads the operand
// types and attributes, and either fills in the result type or says, in words
// a user can act on, what does not fit.
#include "ir.h"

#include <string.h>

#define FAIL(...) return xformat(__VA_ARGS__)

static const Type *T(const Node *n, int i) { return &n->in[i]->type; }

static Type scalar(DType dt) { return (Type){dt, 0, {0}}; }

static const char *want_f32(const Node *n, int i, const char *what) {
  if (T(n, i)->dtype != DT_F32)
    return xformat("%s must be f32, got %s", what, type_str(T(n, i)));
  return NULL;
}

static const char *want_rank(const Node *n, int i, int rank, const char *what) {
  if (T(n, i)->rank != rank || T(n, i)->dtype != DT_F32)
    return xformat("%s must be a rank-%d f32 tensor, got %s", what, rank, type_str(T(n, i)));
  return NULL;
}

static const char *want_scalar(const Node *n, int i, DType dt, const char *what) {
  Type s = scalar(dt);
  if (!type_eq(T(n, i), &s))
    return xformat("%s must be a scalar %s, got %s", what, dt == DT_F32 ? "f32[]" : "i32[]",
                   type_str(T(n, i)));
  return NULL;
}

static const char *want_same(const Node *n, int i, int j) {
  if (!type_eq(T(n, i), T(n, j)))
    return xformat("operands %d and %d must have the same type, got %s and %s", i, j,
                   type_str(T(n, i)), type_str(T(n, j)));
  return NULL;
}

static const char *want_pair(const Node *n, const char *attr, int64_t min) {
  const Attr *a = node_attr(n, attr);
  if (a->kind != 'I' || a->n != 2)
    return xformat("attribute '%s' must be a list of two integers", attr);
  if (a->ints[0] < min || a->ints[1] < min)
    return xformat("attribute '%s' must be at least %lld, got [%lld, %lld]", attr, (long long)min,
                   (long long)a->ints[0], (long long)a->ints[1]);
  return NULL;
}

#define CHECK(e)                                                                                   \
  do {                                                                                             \
    const char *err_ = (e);                                                                        \
    if (err_)                                                                                      \
      return err_;                                                                                 \
  } while (0)

// out = floor((in + 2*pad - k) / stride) + 1, as in nn.Conv2d and nn.MaxPool2d.
static const char *window_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t *out,
                              const char *axis) {
  if (in + 2 * p < k)
    FAIL("kernel %lld is larger than the padded input %s %lld (input %lld + 2 x padding %lld)",
         (long long)k, axis, (long long)(in + 2 * p), (long long)in, (long long)p);
  *out = (in + 2 * p - k) / s + 1;
  return NULL;
}

static const char *pool_rule(const Node *n, const Type *x, Type *out) {
  CHECK(want_pair(n, "kernel", 1));
  CHECK(want_pair(n, "stride", 1));
  CHECK(want_pair(n, "padding", 0));
  if (x->rank != 4 || x->dtype != DT_F32)
    FAIL("input must be an f32 [N,C,H,W] tensor, got %s", type_str(x));
  const int64_t *k = node_attr(n, "kernel")->ints, *s = node_attr(n, "stride")->ints,
                *p = node_attr(n, "padding")->ints;
  if (2 * p[0] > k[0] || 2 * p[1] > k[1])
    FAIL("padding must be at most half the kernel size, as PyTorch requires");
  *out = *x;
  CHECK(window_out(x->dim[2], k[0], s[0], p[0], &out->dim[2], "height"));
  CHECK(window_out(x->dim[3], k[1], s[1], p[1], &out->dim[3], "width"));
  return NULL;
}

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

// The optional class-weight operand of the cross-entropy family.
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

static const char *channel_rule(const Node *n, Type *out) {
  const Type *x = T(n, 0);
  if (x->rank < 2 || x->dtype != DT_F32)
    FAIL("input must be an f32 [N,C,...] tensor, got %s", type_str(x));
  *out = type_make(DT_F32, 1, &x->dim[1]);
  return NULL;
}

static const char *per_channel(const Node *n, int x, int i, const char *what) {
  const Type *c = T(n, i);
  if (c->rank != 1 || c->dtype != DT_F32 || c->dim[0] != T(n, x)->dim[1])
    FAIL("%s must be f32[%lld], one per channel, got %s", what, (long long)T(n, x)->dim[1],
         type_str(c));
  return NULL;
}

static const char *infer(const Node *n, Type *out) {
  const Type *declared = &n->type;
  switch (n->op) {
  case OP_input:
  case OP_param:
  case OP_state:
    *out = *declared;
    return NULL;
  case OP_const: {
    const Attr *v = node_attr(n, "value");
    if (declared->dtype != DT_F32)
      FAIL("constants must be f32");
    if (v->n != 1 && v->n != type_numel(declared))
      FAIL("constant of type %s needs 1 or %lld values, got %d", type_str(declared),
           (long long)type_numel(declared), v->n);
    *out = *declared;
    return NULL;
  }
  case OP_conv2d:
    CHECK(conv_rule(n, T(n, 0), T(n, 1), out));
    if (n->nin == 3 && (T(n, 2)->rank != 1 || T(n, 2)->dim[0] != T(n, 1)->dim[0]))
      FAIL("bias must be f32[%lld], one per output channel, got %s", (long long)T(n, 1)->dim[0],
           type_str(T(n, 2)));
    return NULL;
  case OP_maxpool2d:
  case OP_avgpool2d:
    return pool_rule(n, T(n, 0), out);
  case OP_relu:
  case OP_sigmoid:
  case OP_scale:
    CHECK(want_f32(n, 0, "input"));
    *out = *T(n, 0);
    return NULL;
  case OP_softmax:
  case OP_log_softmax:
    CHECK(want_rank(n, 0, 2, "input"));
    *out = *T(n, 0);
    return NULL;
  case OP_reshape:
    if (type_numel(declared) != type_numel(T(n, 0)) || declared->dtype != T(n, 0)->dtype)
      FAIL("cannot reshape %s to %s: element counts differ", type_str(T(n, 0)),
           type_str(declared));
    *out = *declared;
    return NULL;
  case OP_linear: {
    const Type *x = T(n, 0), *w = T(n, 1);
    CHECK(want_rank(n, 0, 2, "input"));
    CHECK(want_rank(n, 1, 2, "weight"));
    if (w->dim[1] != x->dim[1])
      FAIL("expects %lld input features but gets %lld", (long long)w->dim[1], (long long)x->dim[1]);
    if (n->nin == 3 && (T(n, 2)->rank != 1 || T(n, 2)->dim[0] != w->dim[0]))
      FAIL("bias must be f32[%lld], got %s", (long long)w->dim[0], type_str(T(n, 2)));
    int64_t d[2] = {x->dim[0], w->dim[0]};
    *out = type_make(DT_F32, 2, d);
    return NULL;
  }
  case OP_add:
  case OP_mul:
  case OP_ema:
  case OP_relu_grad:
  case OP_sigmoid_grad:
  case OP_softmax_grad:
  case OP_log_softmax_grad:
    CHECK(want_f32(n, 0, "operand 0"));
    CHECK(want_same(n, 0, 1));
    *out = *T(n, 0);
    return NULL;
  case OP_dropout_mask: {
    CHECK(want_scalar(n, 0, DT_I32, "step"));
    CHECK(want_scalar(n, 1, DT_I32, "seed"));
    double p = node_float(n, "p");
    if (!(p >= 0.0 && p < 1.0))
      FAIL("dropout probability must be in [0, 1), got %g", p);
    if (declared->dtype != DT_F32)
      FAIL("dropout mask must be f32");
    *out = *declared;
    return NULL;
  }
  case OP_batchnorm2d:
  case OP_batchnorm2d_infer:
    CHECK(want_rank(n, 0, 4, "input"));
    for (int i = 1; i < n->nin; i++)
      CHECK(per_channel(n, 0, i, "batch-norm parameter"));
    *out = *T(n, 0);
    return NULL;
  case OP_channel_mean:
  case OP_channel_var:
  case OP_bias_grad:
    return channel_rule(n, out);
  case OP_nll_loss:
  case OP_softmax_cross_entropy:
    CHECK(ce_operands(n, 0, 2));
    *out = scalar(DT_F32);
    return NULL;
  case OP_bce:
  case OP_sigmoid_bce:
    CHECK(bce_operands(n, 0, 1));
    *out = scalar(DT_F32);
    return NULL;
  case OP_l2norm:
    CHECK(want_f32(n, 0, "input"));
    *out = scalar(DT_F32);
    return NULL;
  case OP_conv2d_grad_input: {
    Type dy;
    CHECK(conv_rule(n, declared, T(n, 1), &dy));
    if (!type_eq(&dy, T(n, 0)))
      FAIL("gradient %s does not match the convolution's output %s", type_str(T(n, 0)),
           type_str(&dy));
    *out = *declared;
    return NULL;
  }
  case OP_conv2d_grad_weight: {
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
  case OP_maxpool2d_grad:
  case OP_avgpool2d_grad: {
    Type y;
    CHECK(pool_rule(n, T(n, 1), &y));
    if (!type_eq(&y, T(n, 0)))
      FAIL("gradient %s does not match the pooling output %s", type_str(T(n, 0)), type_str(&y));
    *out = *T(n, 1);
    return NULL;
  }
  case OP_linear_grad_input:
  case OP_linear_grad_weight: {
    CHECK(want_rank(n, 0, 2, "gradient"));
    CHECK(want_rank(n, 1, 2, "operand 1"));
    const Type *dy = T(n, 0), *b = T(n, 1);
    bool gi = n->op == OP_linear_grad_input;
    if (gi ? b->dim[0] != dy->dim[1] : b->dim[0] != dy->dim[0])
      FAIL("gradient %s does not fit %s", type_str(dy), type_str(b));
    int64_t d[2] = {gi ? dy->dim[0] : dy->dim[1], b->dim[1]};
    *out = type_make(DT_F32, 2, d);
    return NULL;
  }
  case OP_nll_loss_grad:
  case OP_softmax_cross_entropy_grad:
    CHECK(want_scalar(n, 0, DT_F32, "loss gradient"));
    CHECK(ce_operands(n, 1, 3));
    *out = *T(n, 1);
    return NULL;
  case OP_bce_grad:
  case OP_sigmoid_bce_grad:
    CHECK(want_scalar(n, 0, DT_F32, "loss gradient"));
    CHECK(bce_operands(n, 1, 2));
    *out = *T(n, 1);
    return NULL;
  case OP_l2norm_grad:
    CHECK(want_scalar(n, 0, DT_F32, "loss gradient"));
    CHECK(want_f32(n, 1, "input"));
    CHECK(want_scalar(n, 2, DT_F32, "norm"));
    *out = *T(n, 1);
    return NULL;
  case OP_batchnorm2d_grad_input:
    CHECK(want_rank(n, 1, 4, "input"));
    CHECK(want_same(n, 0, 1));
    CHECK(per_channel(n, 1, 2, "gamma"));
    *out = *T(n, 1);
    return NULL;
  case OP_batchnorm2d_grad_gamma:
    CHECK(want_rank(n, 1, 4, "input"));
    CHECK(want_same(n, 0, 1));
    return channel_rule(n, out);
  case OP_sgd_buf:
    CHECK(want_f32(n, 0, "gradient"));
    CHECK(want_same(n, 0, 1));
    CHECK(want_same(n, 0, 2));
    CHECK(want_scalar(n, 3, DT_I32, "step"));
    if (n->nin == 5)
      CHECK(want_scalar(n, 4, DT_F32, "momentum"));
    *out = *T(n, 0);
    return NULL;
  case OP_sgd_update:
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
  case OP_adam_moment1:
  case OP_adam_moment2:
    CHECK(want_f32(n, 0, "gradient"));
    CHECK(want_same(n, 0, 1));
    CHECK(want_same(n, 0, 2));
    if (n->nin == 4)
      CHECK(want_scalar(n, 3, DT_F32, "beta1"));
    *out = *T(n, 0);
    return NULL;
  case OP_adam_update:
    CHECK(want_f32(n, 0, "parameter"));
    CHECK(want_same(n, 0, 1));
    CHECK(want_same(n, 0, 2));
    CHECK(want_scalar(n, 3, DT_F32, "learning rate"));
    CHECK(want_scalar(n, 4, DT_I32, "step"));
    if (n->nin == 6)
      CHECK(want_scalar(n, 5, DT_F32, "beta1"));
    *out = *T(n, 0);
    return NULL;
  case OP_assign:
    if (n->in[0]->op != OP_param && n->in[0]->op != OP_state)
      FAIL("assign target must be a param or state, got %s", op_info(n->in[0]->op)->name);
    CHECK(want_same(n, 0, 1));
    *out = *T(n, 0);
    return NULL;
  case OP_COUNT:
    break;
  }
  unreachable();
}

const char *infer_type(const Node *n, Type *out) {
  const OpInfo *info = op_info(n->op);
  if (n->nin < info->min_in || n->nin > info->max_in) {
    if (info->min_in == info->max_in)
      FAIL("%s takes %d operand%s, got %d", info->name, info->min_in,
           info->min_in == 1 ? "" : "s", n->nin);
    FAIL("%s takes %d to %d operands, got %d", info->name, info->min_in, info->max_in, n->nin);
  }
  for (int i = 0; i < info->nattrs; i++)
    if (n->attr[i].kind != info->attr_kind[i])
      FAIL("%s needs attribute '%s' of kind %c", info->name, info->attr_name[i],
           info->attr_kind[i]);
  return infer(n, out);
}

void node_infer(Node *n) {
  Type t;
  const char *err = infer_type(n, &t);
  if (err)
    error_at(n->loc, NULL, "%s%s%s: %s", op_info(n->op)->name, n->name ? " %" : "",
             n->name ? n->name : "", err);
  n->type = t;
}

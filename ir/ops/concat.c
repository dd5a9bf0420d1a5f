// Joining branches along the channels: concat, torch.cat(xs, dim=1), and its
// gradient slice, which hands each input back its own channels of dy. Both
// are copies, so the reference and the loops move values without rounding.
#include "lower.h"
#include "ops.h"

// Elements after dim 1 of t: H*W of an image, 1 of flat features.
static int64_t inner_of(const Type *t) {
  int64_t inner = 1;
  for (int d = 2; d < t->rank; d++)
    inner *= t->dim[d];
  return inner;
}

// --- concat (x0[N,C0,...], x1[N,C1,...], ...) -> [N,C0+C1+...,...] ---------------------------
//
// Every operand has the first one's precision, rank and dims but dim 1.

static const char *shape_concat(const Node *n, Type *out) {
  CHECK(want_float(n, 0, "operand 0"));
  const Type *t0 = T(n, 0);
  if (t0->rank < 2)
    FAIL("concat joins along dim 1, but operand 0 is %s", type_str(t0));
  *out = *t0;
  out->dim[1] = 0;
  for (int i = 0; i < n->nin; i++) {
    const Type *t = T(n, i);
    bool same = t->dtype == t0->dtype && t->rank == t0->rank;
    for (int d = 0; d < t0->rank && same; d++)
      same = d == 1 || t->dim[d] == t0->dim[d];
    if (!same)
      FAIL("operand %d is %s but operand 0 is %s: every dim but 1 and the precision must match", i,
           type_str(t), type_str(t0));
    out->dim[1] += t->dim[1];
  }
  return NULL;
}

static void eval_concat(const Node *n, Tensor *out, Tensor **in) {
  int64_t N = out->type.dim[0], inner = inner_of(&out->type), C = out->type.dim[1];
  for (int64_t b = 0; b < N; b++) {
    int64_t off = 0;
    for (int i = 0; i < n->nin; i++) {
      int64_t ci = in[i]->type.dim[1];
      for (int64_t e = 0; e < ci * inner; e++)
        out->f[(b * C + off) * inner + e] = in[i]->f[b * ci * inner + e];
      off += ci;
    }
  }
}

// Each input needing a gradient gets its channels of dy, in operand order.
static void grad_concat(AD *ad, Node *n, Node *dy) {
  int64_t off = 0;
  for (int i = 0; i < n->nin; i++) {
    Node *x = n->in[i];
    if (needs_grad(ad, x)) {
      Node *s = node_build(ad->g, OP_slice, n->loc, 1, dy);
      node_set_int(s, "start", off);
      node_set_int(s, "size", x->type.dim[1]);
      accumulate(ad, x, done(s));
    }
    off += x->type.dim[1];
  }
}

// One loop over the batch, for the threads, holding one nest per operand
// that copies it into its channels: y[n, off + c, ...] = x[n, c, ...].
static void lower_concat(Lowering *L, Node *n) {
  LBuf *y = B(L, n);
  LKernel *k = kernel(L, n, NULL);
  LExpr *b;
  LStmt *batch = loop(k, NULL, y->dim[0], "n", &b);
  int64_t off = 0;
  for (int i = 0; i < n->nin; i++) {
    LBuf *x = B(L, n->in[i]);
    LExpr *v[LMAX_RANK];
    v[0] = b;
    LStmt *in = lk_nest(k, batch, x->rank - 1, x->dim + 1, (const char *[]){"c", "h", "w"}, v + 1);
    LExpr *at[LMAX_RANK];
    for (int d = 0; d < y->rank; d++)
      at[d] = d == 1 ? ADDK(v[1], off) : v[d];
    put(k, in ? in : batch, ls_store(y, at, lx_load(x, v)));
    off += x->dim[1];
  }
}

const OpRules rules_concat = {
    .shape = shape_concat, .eval = eval_concat, .grad = grad_concat, .lower = lower_concat};

// --- slice x[N,C,...] -> x[:, start:start+size]: concat's gradient ----------------------------

static const char *shape_slice(const Node *n, Type *out) {
  CHECK(want_float(n, 0, "input"));
  const Type *t = T(n, 0);
  int64_t start = node_int(n, "start"), size = node_int(n, "size");
  if (t->rank < 2)
    FAIL("slice takes channels of dim 1, but the input is %s", type_str(t));
  if (start < 0 || size < 1 || start > t->dim[1] - size)
    FAIL("channels [%lld, %lld) are not within the %lld of %s", (long long)start,
         (long long)(start + size), (long long)t->dim[1], type_str(t));
  *out = *t;
  out->dim[1] = size;
  return NULL;
}

static void eval_slice(const Node *n, Tensor *out, Tensor **in) {
  int64_t N = out->type.dim[0], inner = inner_of(&out->type), C = in[0]->type.dim[1];
  int64_t start = node_int(n, "start"), size = out->type.dim[1];
  for (int64_t b = 0; b < N; b++)
    for (int64_t e = 0; e < size * inner; e++)
      out->f[b * size * inner + e] = in[0]->f[(b * C + start) * inner + e];
}

// The nest over the output, each element loaded from its channel of x.
static void lower_slice(Lowering *L, Node *n) {
  LBuf *y = B(L, n), *x = B(L, n->in[0]);
  LKernel *k = kernel(L, n, NULL);
  LExpr *v[LMAX_RANK], *at[LMAX_RANK];
  LStmt *in = each(k, NULL, y, v, (const char *[]){"n", "c", "h", "w"});
  for (int d = 0; d < y->rank; d++)
    at[d] = d == 1 ? ADDK(v[1], node_int(n, "start")) : v[d];
  put(k, in, ls_store(y, v, lx_load(x, at)));
}

const OpRules rules_slice = {.shape = shape_slice, .eval = eval_slice, .lower = lower_slice};

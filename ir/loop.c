// The loop IR's builders, its affine view of index expressions, variable
// substitution (what split and unroll are made of), the printer behind
// --emit=loops, and a verifier that bounds every affine index by the loops.
#include "loop.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

int64_t lbuf_numel(const LBuf *b) {
  int64_t n = 1;
  for (int d = 0; d < b->rank; d++)
    n *= b->dim[d];
  return n;
}

int64_t lbuf_bytes(const LBuf *b) { return lbuf_numel(b) * dtype_bytes(b->dtype); }

//
// Expressions
//

static LExpr *lx_new(LExprKind k, LType t) {
  LExpr *e = xcalloc(1, sizeof *e);
  e->kind = k;
  e->type = t;
  return e;
}

LExpr *lx_f32(double v) {
  LExpr *e = lx_new(LX_CONST, LT_F32);
  e->f = v;
  return e;
}

LExpr *lx_f64(double v) {
  LExpr *e = lx_new(LX_CONST, LT_F64);
  e->f = v;
  return e;
}

LExpr *lx_int(LType t, int64_t v) {
  LExpr *e = lx_new(LX_CONST, t);
  e->i = v;
  return e;
}

LExpr *lx_i64(int64_t v) { return lx_int(LT_I64, v); }

LExpr *lx_var(int var) {
  LExpr *e = lx_new(LX_VAR, LT_I64);
  e->var = var;
  return e;
}

LExpr *lx_load(LBuf *b, LExpr *const *idx) {
  // A 16-bit buffer's elements load as the f32 values they stand for.
  LExpr *e = lx_new(LX_LOAD, b->dtype == DT_I32 ? LT_I32 : b->dtype == DT_F64 ? LT_F64 : LT_F32);
  e->buf = b;
  for (int d = 0; d < b->rank; d++)
    e->idx[d] = idx[d];
  return e;
}

static bool is_compare(LExprKind k) { return k >= LX_LT && k <= LX_ULT; }

LExpr *lx_bin(LExprKind k, LExpr *a, LExpr *b) {
  ir_assert(a && b);
  LExpr *e = lx_new(k, is_compare(k) ? LT_BOOL : a->type);
  e->a = a;
  e->b = b;
  return e;
}

LExpr *lx_un(LExprKind k, LExpr *a) {
  LExpr *e = lx_new(k, k == LX_UNO ? LT_BOOL : a->type);
  e->a = a;
  return e;
}

LExpr *lx_fma(LExpr *a, LExpr *b, LExpr *c) {
  LExpr *e = lx_new(LX_FMA, a->type);
  e->a = a, e->b = b, e->c = c;
  return e;
}

LExpr *lx_select(LExpr *cond, LExpr *a, LExpr *b) {
  LExpr *e = lx_new(LX_SELECT, a->type);
  e->a = cond, e->b = a, e->c = b;
  return e;
}

LExpr *lx_cast(LType t, LExpr *a) {
  if (a->type == t)
    return a;
  LExpr *e = lx_new(LX_CAST, t);
  e->a = a;
  return e;
}

LExpr *lx_round(DType dt, LExpr *a) {
  if (!dtype_is_16bit(dt))
    return a;
  ir_assert(a->type == LT_F32);
  return lx_cast(LT_F32, lx_cast(dt == DT_BF16 ? LT_BF16 : LT_F16, a));
}

static bool is_iconst(const LExpr *e, int64_t *v) {
  if (e->kind != LX_CONST || e->type == LT_F32 || e->type == LT_F64)
    return false;
  *v = e->i;
  return true;
}

LExpr *lx_iadd(LExpr *a, LExpr *b) {
  int64_t x, y;
  if (is_iconst(a, &x) && is_iconst(b, &y))
    return lx_i64(x + y);
  if (is_iconst(a, &x) && x == 0)
    return b;
  if (is_iconst(b, &y) && y == 0)
    return a;
  return lx_bin(LX_ADD, a, b);
}

LExpr *lx_iaddc(LExpr *a, int64_t k) { return lx_iadd(a, lx_i64(k)); }

LExpr *lx_imul(LExpr *a, int64_t k) {
  int64_t x;
  if (is_iconst(a, &x))
    return lx_i64(x * k);
  if (k == 0)
    return lx_i64(0);
  if (k == 1)
    return a;
  return lx_bin(LX_MUL, a, lx_i64(k));
}

LExpr *lx_copy(const LExpr *e) {
  if (!e)
    return NULL;
  LExpr *c = xcalloc(1, sizeof *c);
  *c = *e;
  c->a = lx_copy(e->a), c->b = lx_copy(e->b), c->c = lx_copy(e->c);
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      c->idx[d] = lx_copy(e->idx[d]);
  return c;
}

LExpr *lx_subst(const LExpr *e, int v, const LExpr *with) {
  if (!e)
    return NULL;
  if (e->kind == LX_VAR)
    return e->var == v ? lx_copy(with) : lx_copy(e);
  LExpr *c = xcalloc(1, sizeof *c);
  *c = *e;
  c->a = lx_subst(e->a, v, with), c->b = lx_subst(e->b, v, with), c->c = lx_subst(e->c, v, with);
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      c->idx[d] = lx_subst(e->idx[d], v, with);
  // Keep index arithmetic folded: (x + 0), (k1 + k2), ...
  if (c->type == LT_I64 && c->kind == LX_ADD)
    return lx_iadd(c->a, c->b);
  int64_t k;
  if (c->type == LT_I64 && c->kind == LX_MUL && is_iconst(c->b, &k))
    return lx_imul(c->a, k);
  return c;
}

bool lx_uses_var(const LExpr *e, int v) {
  if (!e)
    return false;
  if (e->kind == LX_VAR)
    return e->var == v;
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      if (lx_uses_var(e->idx[d], v))
        return true;
  return lx_uses_var(e->a, v) || lx_uses_var(e->b, v) || lx_uses_var(e->c, v);
}

// --- Targets ------------------------------------------------------------------------

// AVX2 (every x86-64-v3 machine): 16 registers of 8 floats, 12 of them
// accumulators (the rest for the operands). AVX-512 (x86-64-v4): 32
// registers of 16 floats, of which 16 accumulators: on this project's
// 2-core AVX-512 Xeon as fast as 28 (vgg_small, allconv: training steps
// within 2%) and 7% faster than 12 (allconv, resnet8), where 28 gave LLVM
// 1.5 times the code to compile (allconv 2.1 -> 3.1 s).
const LTarget ltarget_avx2 = {"avx2", 8, 12, 16}, ltarget_avx512 = {"avx512", 16, 16, 32};

const LTarget *ltarget_find(const char *name) {
  static const LTarget *const all[] = {&ltarget_avx2, &ltarget_avx512};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++)
    if (!strcmp(all[i]->name, name))
      return all[i];
  return NULL;
}

// --- The affine view -----------------------------------------------------------

static void aff_add_term(Affine *a, int var, int64_t coef) {
  for (int i = 0; i < a->n; i++)
    if (a->var[i] == var) {
      a->coef[i] += coef;
      return;
    }
  ir_assert(a->n < LMAX_TERMS);
  a->var[a->n] = var;
  a->coef[a->n++] = coef;
}

static bool affine_into(const LExpr *e, int64_t scale, Affine *out) {
  if (e->type != LT_I64 && e->type != LT_I32)
    return false;
  switch (e->kind) {
  case LX_CONST:
    out->c += scale * e->i;
    return true;
  case LX_VAR:
    aff_add_term(out, e->var, scale);
    return true;
  case LX_ADD:
    return affine_into(e->a, scale, out) && affine_into(e->b, scale, out);
  case LX_SUB:
    return affine_into(e->a, scale, out) && affine_into(e->b, -scale, out);
  case LX_MUL: {
    int64_t k;
    if (is_iconst(e->b, &k))
      return affine_into(e->a, scale * k, out);
    if (is_iconst(e->a, &k))
      return affine_into(e->b, scale * k, out);
    return false;
  }
  case LX_NEG:
    return affine_into(e->a, -scale, out);
  case LX_CAST:
    return affine_into(e->a, scale, out);
  default:
    return false;
  }
}

bool lx_linear(const LExpr *e, int var, int64_t *coef) {
  if (!lx_uses_var(e, var)) {
    *coef = 0;
    return true;
  }
  int64_t x, y;
  switch (e->kind) {
  case LX_VAR:
    *coef = 1;
    return true;
  case LX_ADD:
  case LX_SUB:
    if (e->type != LT_I64 || !lx_linear(e->a, var, &x) || !lx_linear(e->b, var, &y))
      return false;
    *coef = e->kind == LX_ADD ? x + y : x - y;
    return true;
  case LX_MUL:
    if (e->type != LT_I64)
      return false;
    if (e->b->kind == LX_CONST && lx_linear(e->a, var, &x)) {
      *coef = x * e->b->i;
      return true;
    }
    if (e->a->kind == LX_CONST && lx_linear(e->b, var, &y)) {
      *coef = y * e->a->i;
      return true;
    }
    return false;
  default:
    return false;
  }
}

bool lx_affine(const LExpr *e, Affine *out) {
  *out = (Affine){0};
  if (!affine_into(e, 1, out))
    return false;
  int k = 0; // drop zero terms
  for (int i = 0; i < out->n; i++)
    if (out->coef[i]) {
      out->var[k] = out->var[i];
      out->coef[k++] = out->coef[i];
    }
  out->n = k;
  return true;
}

bool lx_is_var(const LExpr *e, int v) {
  Affine a;
  return lx_affine(e, &a) && a.n == 1 && a.var[0] == v && a.coef[0] == 1 && a.c == 0;
}

int64_t affine_coef(const Affine *a, int var) {
  for (int i = 0; i < a->n; i++)
    if (a->var[i] == var)
      return a->coef[i];
  return 0;
}

void affine_range(const Affine *a, const int64_t *lo, const int64_t *hi, int64_t *min,
                  int64_t *max) {
  *min = *max = a->c;
  for (int i = 0; i < a->n; i++) {
    int64_t x = a->coef[i] * lo[a->var[i]], y = a->coef[i] * hi[a->var[i]];
    *min += x < y ? x : y;
    *max += x < y ? y : x;
  }
}

bool lx_range(const LExpr *e, const int64_t *lo, const int64_t *hi, int64_t *min, int64_t *max) {
  Affine a;
  if (lx_affine(e, &a)) {
    affine_range(&a, lo, hi, min, max);
    return true;
  }
  if (e->type != LT_I64)
    return false;
  int64_t l, h, l2, h2, k;
  switch (e->kind) {
  case LX_ADD:
  case LX_SUB:
    if (!lx_range(e->a, lo, hi, &l, &h) || !lx_range(e->b, lo, hi, &l2, &h2))
      return false;
    *min = e->kind == LX_ADD ? l + l2 : l - h2;
    *max = e->kind == LX_ADD ? h + h2 : h - l2;
    return true;
  case LX_MUL:
    if (!is_iconst(e->b, &k) || !lx_range(e->a, lo, hi, &l, &h))
      return false;
    *min = k < 0 ? h * k : l * k;
    *max = k < 0 ? l * k : h * k;
    return true;
  case LX_DIV:
  case LX_REM:
    // C's division truncates: only a non-negative dividend is simple.
    if (!is_iconst(e->b, &k) || k <= 0 || !lx_range(e->a, lo, hi, &l, &h) || l < 0)
      return false;
    if (e->kind == LX_DIV)
      *min = l / k, *max = h / k;
    else if (l / k == h / k) // within one period: in order
      *min = l % k, *max = h % k;
    else
      *min = 0, *max = k - 1;
    return true;
  default:
    return false;
  }
}

bool lx_const_apart(const LBuf *b, LExpr *const *x, LExpr *const *y, int64_t *diff) {
  int64_t stride = 1;
  *diff = 0;
  for (int d = b->rank - 1; d >= 0; d--) {
    Affine a, c;
    if (!lx_affine(x[d], &a) || !lx_affine(y[d], &c) || a.n != c.n)
      return false;
    for (int i = 0; i < a.n; i++)
      if (affine_coef(&c, a.var[i]) != a.coef[i])
        return false;
    *diff += (a.c - c.c) * stride;
    stride *= b->dim[d];
  }
  return true;
}

//
// Statements, kernels, functions
//

static LStmt *ls_new(LStmtKind k) {
  LStmt *s = xcalloc(1, sizeof *s);
  s->kind = k;
  return s;
}

LStmt *ls_loop(int var, int64_t lo, int64_t hi, const char *role) {
  LStmt *s = ls_new(LS_LOOP);
  s->var = var, s->lo = lo, s->hi = hi, s->role = role;
  return s;
}

LStmt *ls_store(LBuf *b, LExpr *const *idx, LExpr *value) {
  LStmt *s = ls_new(LS_STORE);
  s->buf = b;
  for (int d = 0; d < b->rank; d++)
    s->idx[d] = idx[d];
  s->value = value;
  return s;
}

LStmt *ls_if(LExpr *cond) {
  LStmt *s = ls_new(LS_IF);
  s->cond = cond;
  return s;
}

LStmt *ls_prefetch(LBuf *b, LExpr *offset) {
  LStmt *s = ls_new(LS_PREFETCH);
  s->buf = b;
  s->value = offset;
  return s;
}

static void push(LStmt ***list, int *n, LStmt *s) {
  *list = realloc(*list, sizeof **list * (*n + 1));
  if (!*list)
    fatal("out of memory");
  (*list)[(*n)++] = s;
}

void ls_add(LStmt *parent, LStmt *child) {
  ir_assert(parent->kind == LS_LOOP || parent->kind == LS_IF);
  push(&parent->body, &parent->nbody, child);
}

void lk_add(LKernel *k, LStmt *s) { push(&k->body, &k->nbody, s); }

LStmt *ls_copy(const LStmt *s) {
  LStmt *c = xcalloc(1, sizeof *c);
  *c = *s;
  c->cond = lx_copy(s->cond);
  c->value = lx_copy(s->value);
  if (s->kind == LS_STORE)
    for (int d = 0; d < s->buf->rank; d++)
      c->idx[d] = lx_copy(s->idx[d]);
  c->body = NULL;
  c->nbody = 0;
  for (int i = 0; i < s->nbody; i++)
    push(&c->body, &c->nbody, ls_copy(s->body[i]));
  return c;
}

void ls_subst(LStmt *s, int v, const LExpr *with) {
  if (s->cond)
    s->cond = lx_subst(s->cond, v, with);
  if (s->value)
    s->value = lx_subst(s->value, v, with);
  if (s->kind == LS_STORE)
    for (int d = 0; d < s->buf->rank; d++)
      s->idx[d] = lx_subst(s->idx[d], v, with);
  for (int i = 0; i < s->nbody; i++)
    ls_subst(s->body[i], v, with);
}

bool lx_reads(const LExpr *e, const LBuf *b) {
  if (!e)
    return false;
  if (e->kind == LX_LOAD && e->buf == b)
    return true;
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      if (lx_reads(e->idx[d], b))
        return true;
  return lx_reads(e->a, b) || lx_reads(e->b, b) || lx_reads(e->c, b);
}

bool ls_reads(const LStmt *s, const LBuf *b) {
  if (lx_reads(s->cond, b) || lx_reads(s->value, b))
    return true;
  for (int i = 0; i < s->nbody; i++)
    if (ls_reads(s->body[i], b))
      return true;
  return false;
}

bool ls_writes(const LStmt *s, const LBuf *b, bool any_name) {
  if (s->kind == LS_STORE && (any_name ? lbuf_root(s->buf) == lbuf_root(b) : s->buf == b))
    return true;
  for (int i = 0; i < s->nbody; i++)
    if (ls_writes(s->body[i], b, any_name))
      return true;
  return false;
}

bool lk_reads(const LKernel *k, const LBuf *b) {
  for (int i = 0; i < k->nbody; i++)
    if (ls_reads(k->body[i], b))
      return true;
  return false;
}

bool lk_writes(const LKernel *k, const LBuf *b, bool any_name) {
  for (int i = 0; i < k->nbody; i++)
    if (ls_writes(k->body[i], b, any_name))
      return true;
  return false;
}

int64_t ls_work(const LStmt *s) {
  if (s->kind == LS_STORE)
    return 1;
  int64_t w = 0;
  for (int i = 0; i < s->nbody; i++)
    w += ls_work(s->body[i]);
  return s->kind == LS_LOOP ? w * (s->hi - s->lo) : w;
}

void lx_shift_vars(LExpr *e, int by) {
  if (!e)
    return;
  if (e->kind == LX_VAR)
    e->var += by;
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      lx_shift_vars(e->idx[d], by);
  lx_shift_vars(e->a, by);
  lx_shift_vars(e->b, by);
  lx_shift_vars(e->c, by);
}

void ls_shift_vars(LStmt *s, int by) {
  if (s->kind == LS_LOOP)
    s->var += by;
  lx_shift_vars(s->cond, by);
  lx_shift_vars(s->value, by);
  if (s->kind == LS_STORE)
    for (int d = 0; d < s->buf->rank; d++)
      lx_shift_vars(s->idx[d], by);
  for (int i = 0; i < s->nbody; i++)
    ls_shift_vars(s->body[i], by);
}

static void lx_retarget(LExpr *e, const LBuf *from, LBuf *to) {
  if (!e)
    return;
  if (e->kind == LX_LOAD && e->buf == from)
    e->buf = to;
  if (e->kind == LX_LOAD)
    for (int d = 0; d < e->buf->rank; d++)
      lx_retarget(e->idx[d], from, to);
  lx_retarget(e->a, from, to);
  lx_retarget(e->b, from, to);
  lx_retarget(e->c, from, to);
}

void ls_retarget(LStmt *s, const LBuf *from, LBuf *to) {
  lx_retarget(s->cond, from, to);
  lx_retarget(s->value, from, to);
  for (int d = 0; s->kind == LS_STORE && d < s->buf->rank; d++)
    lx_retarget(s->idx[d], from, to);
  if ((s->kind == LS_STORE || s->kind == LS_PREFETCH) && s->buf == from)
    s->buf = to;
  for (int i = 0; i < s->nbody; i++)
    ls_retarget(s->body[i], from, to);
}

LBuf *lfunc_buf(LFunc *f, const char *name, DType dt, int rank, const int64_t *dim,
                LStorage storage) {
  ir_assert(rank <= LMAX_RANK);
  LBuf *b = xcalloc(1, sizeof *b);
  b->id = f->nbufs;
  b->name = xstrdup(name);
  b->dtype = dt;
  b->rank = rank;
  for (int d = 0; d < rank; d++)
    b->dim[d] = dim[d];
  b->storage = storage;
  b->first = b->last = -1;
  f->bufs = realloc(f->bufs, sizeof *f->bufs * (f->nbufs + 1));
  if (!f->bufs)
    fatal("out of memory");
  f->bufs[f->nbufs++] = b;
  return b;
}

LKernel *lfunc_kernel(LFunc *f, const char *name, const char *op, Node *node) {
  LKernel *k = xcalloc(1, sizeof *k);
  k->name = xformat("%s.%d", name, f->nkernels);
  k->op = op;
  k->node = node;
  k->layer = node && node->name ? node->name : "";
  f->kernels = realloc(f->kernels, sizeof *f->kernels * (f->nkernels + 1));
  if (!f->kernels)
    fatal("out of memory");
  f->kernels[f->nkernels++] = k;
  return k;
}

int lk_var(LKernel *k) { return k->nvars++; }

LStmt *lk_nest(LKernel *k, LStmt *parent, int rank, const int64_t *dim, const char *const *roles,
               LExpr **vars) {
  LStmt *inner = parent;
  for (int d = 0; d < rank; d++) {
    int v = lk_var(k);
    LStmt *l = ls_loop(v, 0, dim[d], roles ? roles[d] : NULL);
    if (inner)
      ls_add(inner, l);
    else
      lk_add(k, l);
    inner = l;
    vars[d] = lx_var(v);
  }
  return inner;
}

//
// Printing
//

static const char *const expr_name[LX_COUNT] = {
    [LX_ADD] = "+",     [LX_SUB] = "-",     [LX_MUL] = "*",     [LX_DIV] = "/",
    [LX_REM] = "%",     [LX_MIN] = "min",   [LX_MAX] = "max",   [LX_FMA] = "fma",
    [LX_NEG] = "neg",   [LX_EXP] = "exp",   [LX_LOG] = "log",   [LX_SQRT] = "sqrt",
    [LX_POW] = "pow",   [LX_COS] = "cos",   [LX_TANH] = "tanh", [LX_ERF] = "erf",
    [LX_LT] = "<",      [LX_LE] = "<=",     [LX_GT] = ">",      [LX_GE] = ">=",
    [LX_EQ] = "==",     [LX_NE] = "!=",     [LX_UGT] = "ugt",   [LX_UNO] = "isnan",
    [LX_ULT] = "ult",   [LX_AND] = "&",     [LX_OR] = "|",      [LX_XOR] = "^",
    [LX_SHL] = "<<",    [LX_SHR] = ">>",    [LX_NOT] = "!",     [LX_SELECT] = "select",
};

static const char *const type_name[] = {"f32", "i32", "i64", "bool", "f64", "bf16", "f16"};

// Loop variables print by their role when they have one: oh, kw, n2.
typedef struct {
  const char **name; // by var
  int n;
} Names;

static void print_var(FILE *out, const Names *nm, int v) {
  if (v < nm->n && nm->name[v])
    fputs(nm->name[v], out);
  else
    fprintf(out, "v%d", v);
}

static void print_expr(FILE *out, const Names *nm, const LExpr *e);

// An index: as "2*oh + kh - 1" when affine.
static void print_index(FILE *out, const Names *nm, const LExpr *e) {
  Affine a;
  if (!lx_affine(e, &a)) {
    print_expr(out, nm, e);
    return;
  }
  bool first = true;
  for (int i = 0; i < a.n; i++) {
    int64_t c = a.coef[i];
    if (!first)
      fputs(c < 0 ? " - " : " + ", out);
    else if (c < 0)
      fputs("-", out);
    if (llabs(c) != 1)
      fprintf(out, "%" PRId64 "*", (int64_t)llabs(c));
    print_var(out, nm, a.var[i]);
    first = false;
  }
  if (first)
    fprintf(out, "%" PRId64, a.c);
  else if (a.c)
    fprintf(out, " %c %" PRId64, a.c < 0 ? '-' : '+', (int64_t)llabs(a.c));
}

static void print_access(FILE *out, const Names *nm, const LBuf *b, LExpr *const *idx) {
  fprintf(out, "%%%s[", b->name);
  for (int d = 0; d < b->rank; d++) {
    if (d)
      fputs(", ", out);
    print_index(out, nm, idx[d]);
  }
  fputs("]", out);
}

// An operand of a binary op: a compound index ("h - kh + 1") in parentheses,
// as its own expression prints without them.
static void print_operand(FILE *out, const Names *nm, const LExpr *e) {
  Affine a;
  bool compound = e->type == LT_I64 && e->kind != LX_VAR && e->kind != LX_CONST &&
                  lx_affine(e, &a) && (a.n + (a.c != 0) > 1 || (a.n == 1 && a.coef[0] != 1));
  if (compound)
    fputs("(", out);
  print_expr(out, nm, e);
  if (compound)
    fputs(")", out);
}

static void print_expr(FILE *out, const Names *nm, const LExpr *e) {
  switch (e->kind) {
  case LX_CONST:
    if (e->type == LT_F32 || e->type == LT_F64)
      fprintf(out, "%s", format_float(e->f));
    else if (e->type == LT_BOOL)
      fputs(e->i ? "true" : "false", out);
    else
      fprintf(out, "%" PRId64, e->i);
    return;
  case LX_VAR:
    print_var(out, nm, e->var);
    return;
  case LX_LOAD:
    print_access(out, nm, e->buf, e->idx);
    return;
  case LX_CAST:
    fprintf(out, "%s(", type_name[e->type]);
    print_expr(out, nm, e->a);
    fputs(")", out);
    return;
  case LX_ADD: case LX_SUB: case LX_MUL: case LX_DIV: case LX_REM: case LX_LT: case LX_LE:
  case LX_GT: case LX_GE: case LX_EQ: case LX_NE: case LX_AND: case LX_OR: case LX_XOR:
  case LX_SHL: case LX_SHR:
    if (e->type == LT_I64 || e->type == LT_I32) {
      Affine a;
      if (e->type == LT_I64 && lx_affine(e, &a)) {
        print_index(out, nm, e);
        return;
      }
    }
    fputs("(", out);
    print_operand(out, nm, e->a);
    fprintf(out, " %s ", expr_name[e->kind]);
    print_operand(out, nm, e->b);
    fputs(")", out);
    return;
  default:
    fprintf(out, "%s(", expr_name[e->kind]);
    print_expr(out, nm, e->a);
    if (e->b) {
      fputs(", ", out);
      print_expr(out, nm, e->b);
    }
    if (e->c) {
      fputs(", ", out);
      print_expr(out, nm, e->c);
    }
    fputs(")", out);
  }
}

static void indent(FILE *out, int depth) {
  for (int i = 0; i < depth; i++)
    fputs("  ", out);
}

static void print_stmt(FILE *out, const Names *nm, const LStmt *s, int depth) {
  indent(out, depth);
  switch (s->kind) {
  case LS_LOOP:
    fprintf(out, "%s%s%sfor ", s->flags & LF_PARALLEL ? "parallel " : "",
            s->flags & LF_UNROLL ? "unrolled " : "", s->flags & LF_VECTOR ? "vector " : "");
    print_var(out, nm, s->var);
    fprintf(out, " in [%" PRId64 ", %" PRId64 ")%s%s\n", s->lo, s->hi,
            s->flags & LF_REDUCE ? " reduce" : "", s->flags & LF_ROLLED ? " rolled" : "");
    for (int i = 0; i < s->nbody; i++)
      print_stmt(out, nm, s->body[i], depth + 1);
    return;
  case LS_IF:
    fputs("if ", out);
    print_expr(out, nm, s->cond);
    fputs("\n", out);
    for (int i = 0; i < s->nbody; i++)
      print_stmt(out, nm, s->body[i], depth + 1);
    return;
  case LS_STORE:
    print_access(out, nm, s->buf, s->idx);
    fputs(" = ", out);
    print_expr(out, nm, s->value);
    fputs("\n", out);
    return;
  case LS_PREFETCH:
    fprintf(out, "prefetch %%%s + ", s->buf->name);
    print_expr(out, nm, s->value);
    fputs("\n", out);
    return;
  }
}

// Names for the variables: each loop's role, numbered when it repeats.
static void name_vars(const LStmt *s, Names *nm, int *uses_of_role_count, const char ***seen,
                      int *nseen) {
  if (s->kind == LS_LOOP && s->var < nm->n && s->role && !nm->name[s->var]) {
    int count = 0;
    for (int i = 0; i < *nseen; i++)
      count += !strcmp((*seen)[i], s->role);
    *seen = realloc(*seen, sizeof **seen * (*nseen + 1));
    (*seen)[(*nseen)++] = s->role;
    nm->name[s->var] = count ? xformat("%s%d", s->role, count + 1) : s->role;
  }
  for (int i = 0; i < s->nbody; i++)
    name_vars(s->body[i], nm, uses_of_role_count, seen, nseen);
}

static const char *const storage_name[] = {"params", "state", "grads", "arg", "arg",
                                           "workspace", "const", "local", "slot"};

static void print_buf(FILE *out, const LBuf *b) {
  fprintf(out, "  buffer %%%s : %s[", b->name, dtype_name(b->dtype));
  for (int d = 0; d < b->rank; d++)
    fprintf(out, "%s%" PRId64, d ? "," : "", b->dim[d]);
  fprintf(out, "]");
  if (b->layout)
    fprintf(out, " %s", b->layout);
  fprintf(out, " = ");
  if (b->alias) {
    fprintf(out, "alias %%%s\n", b->alias->name);
    return;
  }
  switch (b->storage) {
  case LB_PARAM:
  case LB_STATE:
  case LB_GRAD:
    fprintf(out, "%s[%" PRId64 ":%" PRId64 "]", storage_name[b->storage], b->offset,
            b->offset + lbuf_numel(b));
    break;
  case LB_ARG:
  case LB_SCALAR:
    fprintf(out, "arg %s", b->arg);
    break;
  case LB_WORKSPACE:
    fprintf(out, "workspace+%" PRId64 " (%" PRId64 " bytes)", b->offset, lbuf_bytes(b));
    break;
  case LB_SLOT:
    fprintf(out, "slot %d", b->slot);
    break;
  default:
    fputs(storage_name[b->storage], out);
  }
  fputs("\n", out);
}

static void mark_expr(bool *used, const LExpr *e) {
  if (!e)
    return;
  if (e->kind == LX_LOAD) {
    used[e->buf->id] = true;
    for (int d = 0; d < e->buf->rank; d++)
      mark_expr(used, e->idx[d]);
  }
  mark_expr(used, e->a);
  mark_expr(used, e->b);
  mark_expr(used, e->c);
}

static void mark_stmt(bool *used, const LStmt *s) {
  mark_expr(used, s->cond);
  mark_expr(used, s->value);
  if (s->kind == LS_PREFETCH)
    used[s->buf->id] = true;
  if (s->kind == LS_STORE) {
    used[s->buf->id] = true;
    for (int d = 0; d < s->buf->rank; d++)
      mark_expr(used, s->idx[d]);
  }
  for (int i = 0; i < s->nbody; i++)
    mark_stmt(used, s->body[i]);
}

void print_lfunc(FILE *out, const LFunc *f) {
  fprintf(out, "func @%s workspace_bytes=%" PRId64 " {\n", f->name, f->workspace_bytes);
  // The buffers its kernels touch (and what they alias), then the kernels.
  bool *used = xcalloc(f->nbufs + 1, 1);
  for (int i = 0; i < f->nkernels; i++)
    for (int j = 0; j < f->kernels[i]->nbody; j++)
      mark_stmt(used, f->kernels[i]->body[j]);
  if (f->result)
    used[f->result->id] = true;
  if (f->logits)
    used[f->logits->id] = true;
  for (int i = f->nbufs - 1; i >= 0; i--)
    if (used[i] && f->bufs[i]->alias)
      used[f->bufs[i]->alias->id] = true;
  for (int i = 0; i < f->nbufs; i++)
    if (used[i] && f->bufs[i]->storage != LB_LOCAL)
      print_buf(out, f->bufs[i]);
  free(used);
  for (int i = 0; i < f->nkernels; i++) {
    const LKernel *k = f->kernels[i];
    fprintf(out, "  kernel %s", k->op);
    if (*k->layer)
      fprintf(out, " %%%s", k->layer);
    fprintf(out, "%s {\n", k->deferred ? " at end of step" : "");
    Names nm = {xcalloc(k->nvars + 1, sizeof(char *)), k->nvars};
    const char **seen = NULL;
    int nseen = 0;
    for (int j = 0; j < k->nbody; j++)
      name_vars(k->body[j], &nm, NULL, &seen, &nseen);
    for (int j = 0; j < k->nbody; j++)
      print_stmt(out, &nm, k->body[j], 2);
    fputs("  }\n", out);
  }
  if (f->result && f->logits)
    fprintf(out, "  return %%%s, %%%s\n", f->result->name, f->logits->name);
  else if (f->result)
    fprintf(out, "  return %%%s\n", f->result->name);
  else
    fputs("  return\n", out);
  fputs("}\n", out);
}

void print_lprogram(FILE *out, const LProgram *p) {
  for (int i = 0; i < p->nfuncs; i++)
    print_lfunc(out, p->funcs[i]);
}

//
// Verification
//

typedef struct {
  const LKernel *k;
  int64_t *lo, *hi; // by var: the value range while the loop runs (hi inclusive)
  bool *bound;
} Ranges;

static noreturn void vfail(const Ranges *r, const char *what) {
  internal_error(__FILE__, __LINE__, xformat("loop IR, kernel %s: %s", r->k->name, what));
}

static void check_index(const Ranges *r, const LBuf *b, LExpr *const *idx) {
  for (int d = 0; d < b->rank; d++) {
    Affine a;
    if (!idx[d])
      vfail(r, xformat("%%%s: missing index %d", b->name, d));
    if (!lx_affine(idx[d], &a))
      continue; // data-dependent (a class weight by label): clamped by the lowering
    for (int i = 0; i < a.n; i++)
      if (a.var[i] >= r->k->nvars || !r->bound[a.var[i]])
        vfail(r, xformat("%%%s: index %d uses a variable outside its loop", b->name, d));
    int64_t lo, hi;
    affine_range(&a, r->lo, r->hi, &lo, &hi);
    if (lo < 0 || hi >= b->dim[d])
      vfail(r, xformat("%%%s: index %d runs over [%" PRId64 ", %" PRId64 "], outside [0, %" PRId64
                       ")",
                       b->name, d, lo, hi, b->dim[d]));
  }
}

static void check_expr(const Ranges *r, const LExpr *e) {
  if (!e)
    return;
  if (e->kind == LX_LOAD)
    check_index(r, e->buf, e->idx);
  if (e->kind == LX_VAR && (e->var >= r->k->nvars || !r->bound[e->var]))
    vfail(r, "a variable is read outside its loop");
  check_expr(r, e->a);
  check_expr(r, e->b);
  check_expr(r, e->c);
}

// Guards (IF) narrow nothing here: a guarded access must still be in
// bounds for the loops' ranges... except that lowering guards padded
// windows exactly so that it is not. So accesses under an IF are checked
// only for variables the IF does not mention.
static void check_stmt(Ranges *r, const LStmt *s, int depth, bool guarded) {
  switch (s->kind) {
  case LS_LOOP:
    if (s->hi <= s->lo)
      vfail(r, "an empty loop");
    if (s->flags & LF_PARALLEL && depth != 0)
      vfail(r, "a parallel loop that is not the kernel's outermost");
    if (s->flags & LF_VECTOR && (s->hi - s->lo < 2 || s->hi - s->lo > 64))
      vfail(r, "a vector loop of fewer than 2 or more than 64 lanes");
    r->lo[s->var] = s->lo, r->hi[s->var] = s->hi - 1, r->bound[s->var] = true;
    for (int i = 0; i < s->nbody; i++)
      check_stmt(r, s->body[i], depth + 1, guarded);
    r->bound[s->var] = false;
    return;
  case LS_IF:
    check_expr(r, s->cond);
    for (int i = 0; i < s->nbody; i++)
      check_stmt(r, s->body[i], depth + 1, true);
    return;
  case LS_STORE:
    if (!guarded) {
      check_index(r, s->buf, s->idx);
      check_expr(r, s->value);
    }
    return;
  case LS_PREFETCH: {
    Affine a;
    if (guarded)
      return;
    check_expr(r, s->value);
    if (!lx_affine(s->value, &a))
      return;
    int64_t lo, hi;
    affine_range(&a, r->lo, r->hi, &lo, &hi);
    if (lo < 0 || hi >= lbuf_numel(s->buf))
      vfail(r, xformat("prefetch %%%s: offsets [%" PRId64 ", %" PRId64 "] outside the buffer",
                       s->buf->name, lo, hi));
    return;
  }
  }
}

void verify_lprogram(const LProgram *p) {
  for (int f = 0; f < p->nfuncs; f++)
    for (int i = 0; i < p->funcs[f]->nkernels; i++) {
      const LKernel *k = p->funcs[f]->kernels[i];
      Ranges r = {k, xcalloc(k->nvars + 1, 8), xcalloc(k->nvars + 1, 8),
                  xcalloc(k->nvars + 1, 1)};
      for (int j = 0; j < k->nbody; j++)
        check_stmt(&r, k->body[j], 0, false);
      free(r.lo), free(r.hi), free(r.bound);
    }
}

//
// Footprint: the memory a kernel moves (--profile's GB/s)
//

enum { MAX_BOXES = 64 };

typedef struct {
  const LBuf *buf;
  bool write;
  int64_t lo[LMAX_RANK], hi[LMAX_RANK]; // inclusive
} Box;

typedef struct {
  int64_t *lo, *hi; // by var, inclusive
  Box box[MAX_BOXES];
  int nbox;
  int64_t whole; // the bytes of buffers beyond MAX_BOXES, each whole
} Footprint;

static bool in_memory(const LBuf *b) {
  return b->storage != LB_LOCAL && b->storage != LB_SCALAR && b->storage != LB_CONST;
}

// The elements index e reaches along dimension d of b, clamped to it.
static void index_range(const Footprint *fp, const LBuf *b, int d, const LExpr *e, int64_t *lo,
                        int64_t *hi) {
  Affine a;
  *lo = 0, *hi = b->dim[d] - 1;
  if (!lx_affine(e, &a))
    return;
  int64_t l, h;
  affine_range(&a, fp->lo, fp->hi, &l, &h);
  if (l > *lo)
    *lo = l;
  if (h < *hi)
    *hi = h;
}

static void touch(Footprint *fp, const LBuf *b, LExpr *const *idx, bool write) {
  if (!in_memory(b))
    return;
  int64_t lo[LMAX_RANK], hi[LMAX_RANK];
  for (int d = 0; d < b->rank; d++)
    index_range(fp, b, d, idx[d], &lo[d], &hi[d]);
  for (int i = 0; i < fp->nbox; i++) {
    Box *x = &fp->box[i];
    if (x->buf != b || x->write != write)
      continue;
    for (int d = 0; d < b->rank; d++) {
      if (lo[d] < x->lo[d])
        x->lo[d] = lo[d];
      if (hi[d] > x->hi[d])
        x->hi[d] = hi[d];
    }
    return;
  }
  if (fp->nbox == MAX_BOXES) {
    fp->whole += lbuf_bytes(b);
    return;
  }
  Box *x = &fp->box[fp->nbox++];
  x->buf = b, x->write = write;
  memcpy(x->lo, lo, sizeof lo), memcpy(x->hi, hi, sizeof hi);
}

static void touch_expr(Footprint *fp, const LExpr *e) {
  if (!e)
    return;
  if (e->kind == LX_LOAD) {
    touch(fp, e->buf, e->idx, false);
    for (int d = 0; d < e->buf->rank; d++)
      touch_expr(fp, e->idx[d]); // a gather's index read from memory
  }
  touch_expr(fp, e->a);
  touch_expr(fp, e->b);
  touch_expr(fp, e->c);
}

static void touch_stmt(Footprint *fp, const LStmt *s) {
  switch (s->kind) {
  case LS_LOOP:
    if (s->hi <= s->lo)
      return;
    fp->lo[s->var] = s->lo, fp->hi[s->var] = s->hi - 1;
    for (int i = 0; i < s->nbody; i++)
      touch_stmt(fp, s->body[i]);
    return;
  case LS_IF: // both ways: a guard narrows nothing here
    touch_expr(fp, s->cond);
    for (int i = 0; i < s->nbody; i++)
      touch_stmt(fp, s->body[i]);
    return;
  case LS_STORE:
    touch(fp, s->buf, s->idx, true);
    for (int d = 0; d < s->buf->rank; d++)
      touch_expr(fp, s->idx[d]);
    touch_expr(fp, s->value);
    return;
  case LS_PREFETCH: // a hint: the loads it runs ahead of count the bytes
    return;
  }
}

int64_t lk_bytes(const LKernel *k) {
  Footprint fp = {.lo = xcalloc(k->nvars + 1, 8), .hi = xcalloc(k->nvars + 1, 8)};
  for (int i = 0; i < k->nbody; i++)
    touch_stmt(&fp, k->body[i]);
  int64_t bytes = fp.whole;
  for (int i = 0; i < fp.nbox; i++) {
    const Box *x = &fp.box[i];
    int64_t n = dtype_bytes(x->buf->dtype);
    for (int d = 0; d < x->buf->rank; d++)
      n *= x->hi[d] - x->lo[d] + 1;
    bytes += n;
  }
  free(fp.lo), free(fp.hi);
  return bytes;
}

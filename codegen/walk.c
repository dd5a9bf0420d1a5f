// LLVM IR from the loop IR: a walker with no policy of its own. Every
// decision -- loop order, tiles, which loop is a vector, which is unrolled,
// which runs on threads, where buffers live -- was made by the passes and is
// written in the loop IR; this file only spells it in LLVM. A kernel becomes
// `void NAME(ptr buffers..., i64 lo, i64 hi)` ([lo, hi) is the part of its
// parallel loop this call runs); a function (xc_grad_step, ...) computes the
// buffers' addresses and calls its kernels in order, with --profile's hooks
// around each; one with parallel kernels runs them as a team of threads
// (emit_step says how).
#include "emit.h"

#include <llvm-c/DebugInfo.h>
#include <stdlib.h>
#include <string.h>

// --- Values: a scalar, or a vector of the lanes of the current vector loop ------

typedef struct {
  LLVMValueRef v;
  bool vec;
} Val;

typedef struct {
  Cg *c;
  const LKernel *k;
  LLVMValueRef *var;     // by variable: its value (i64) while its loop runs
  int vec_var;           // the variable of the vector loop being emitted, or -1
  int width;             // its lanes
  LLVMValueRef *ptr;     // by buffer id: the buffer's address in this kernel
  LLVMValueRef lo, hi;   // the kernel's range of its parallel loop
} W;

static LLVMTypeRef ltype(Cg *c, LType t) {
  switch (t) {
  case LT_F32:
    return c->f32;
  case LT_F64:
    return c->f64;
  case LT_I32:
    return c->i32;
  case LT_I64:
    return c->i64;
  case LT_BOOL:
    return LLVMInt1TypeInContext(c->ctx);
  case LT_BF16:
    return LLVMInt16TypeInContext(c->ctx); // its bits: LLVM's bfloat has no fast path on AVX2
  case LT_F16:
    return LLVMHalfTypeInContext(c->ctx);
  }
  unreachable();
}

static bool is_float(LType t) { return t == LT_F32 || t == LT_F64; }

// --- 16-bit floats ---------------------------------------------------------------------------
//
// Conversions on a scalar or a vector, whichever x is. f16 is LLVM's half:
// fpext and fptrunc, which F16C does 8 lanes at a time (vcvtph2ps,
// vcvtps2ph, rounding to nearest even). bf16 is the top half of an f32's
// bits, so widening is a shift; narrowing rounds to nearest even in integer
// arithmetic, c10::BFloat16's round_to_nearest_even: add 0x7fff plus the
// lowest kept bit, keep the top half; a NaN becomes the quiet NaN 0x7fc0.
// (AVX512-BF16's vcvtneps2bf16 would flush denormals, which PyTorch keeps.)

// The constant v of type t, splatted when t is a vector.
static LLVMValueRef konst(LLVMTypeRef t, uint64_t v) {
  if (LLVMGetTypeKind(t) != LLVMVectorTypeKind)
    return LLVMConstInt(t, v, 0);
  unsigned n = LLVMGetVectorSize(t);
  LLVMValueRef *e = xcalloc(n, sizeof *e);
  for (unsigned i = 0; i < n; i++)
    e[i] = LLVMConstInt(LLVMGetElementType(t), v, 0);
  LLVMValueRef r = LLVMConstVector(e, n);
  free(e);
  return r;
}

// t with its elements replaced by `elem` (a vector stays one of as many lanes).
static LLVMTypeRef like(LLVMTypeRef t, LLVMTypeRef elem) {
  return LLVMGetTypeKind(t) == LLVMVectorTypeKind ? LLVMVectorType(elem, LLVMGetVectorSize(t))
                                                  : elem;
}

static LLVMValueRef widen16(Cg *c, DType dt, LLVMValueRef x) {
  LLVMTypeRef t = LLVMTypeOf(x);
  if (dt == DT_F16 && LLVMGetTypeKind(t) != LLVMVectorTypeKind) {
    // One element (a pool's taps, lane by lane): in integer arithmetic,
    // which LLVM's loop vectorizer turns into vectors, where it packs
    // scalar fpexts into vectors it takes apart again for every compare.
    // The magnitude's bits moved up to f32's places are the value times
    // 2^-112 (a subnormal included), so one exact multiply by 2^112
    // rebiases the exponent; infinities and NaNs keep an all-ones
    // exponent; the sign goes back on.
    LLVMTypeRef i16 = LLVMInt16TypeInContext(c->ctx), i32 = c->i32, f32 = c->f32;
    LLVMBuilderRef b = c->b;
    LLVMValueRef h = LLVMBuildZExt(b, LLVMBuildBitCast(b, x, i16, ""), i32, "");
    LLVMValueRef mag = LLVMBuildAnd(b, h, konst(i32, 0x7fff), "");
    LLVMValueRef sign = LLVMBuildShl(b, LLVMBuildAnd(b, h, konst(i32, 0x8000), ""), konst(i32, 16), "");
    LLVMValueRef up = LLVMBuildShl(b, mag, konst(i32, 13), "");
    LLVMValueRef fin = LLVMBuildBitCast(
        b, LLVMBuildFMul(b, LLVMBuildBitCast(b, up, f32, ""), LLVMConstReal(f32, 0x1p112), ""), i32, "");
    LLVMValueRef special = LLVMBuildICmp(b, LLVMIntUGE, mag, konst(i32, 0x7c00), "");
    LLVMValueRef bits = LLVMBuildSelect(b, special, LLVMBuildOr(b, up, konst(i32, 0x7f800000), ""), fin, "");
    return LLVMBuildBitCast(b, LLVMBuildOr(b, bits, sign, ""), f32, "");
  }
  if (dt == DT_F16) {
    // Fenced: LLVM would otherwise turn a compare of the widened value with
    // a constant (relu's x > 0) into a compare of halves, which a CPU
    // without AVX512-FP16 does one lane at a time.
    LLVMValueRef wide = LLVMBuildFPExt(c->b, x, like(t, c->f32), "");
    LLVMTypeRef wt = LLVMTypeOf(wide);
    unsigned id = LLVMLookupIntrinsicID("llvm.arithmetic.fence", 21);
    ir_assert(id != 0);
    LLVMValueRef fn = LLVMGetIntrinsicDeclaration(c->mod, id, &wt, 1);
    return LLVMBuildCall2(c->b, LLVMIntrinsicGetType(c->ctx, id, &wt, 1), fn, &wide, 1, "");
  }
  LLVMValueRef w = LLVMBuildZExt(c->b, x, like(t, c->i32), "");
  w = LLVMBuildShl(c->b, w, konst(like(t, c->i32), 16), "");
  return LLVMBuildBitCast(c->b, w, like(t, c->f32), "");
}

static LLVMValueRef narrow16(Cg *c, DType dt, LLVMValueRef x) {
  LLVMTypeRef t = LLVMTypeOf(x);
  if (dt == DT_F16)
    return LLVMBuildFPTrunc(c->b, x, like(t, LLVMHalfTypeInContext(c->ctx)), "");
  LLVMTypeRef i32 = like(t, c->i32), i16 = like(t, LLVMInt16TypeInContext(c->ctx));
  LLVMValueRef u = LLVMBuildBitCast(c->b, x, i32, "");
  LLVMValueRef lsb = LLVMBuildAnd(c->b, LLVMBuildLShr(c->b, u, konst(i32, 16), ""), konst(i32, 1), "");
  LLVMValueRef r = LLVMBuildAdd(c->b, LLVMBuildAdd(c->b, u, konst(i32, 0x7fff), ""), lsb, "");
  r = LLVMBuildTrunc(c->b, LLVMBuildLShr(c->b, r, konst(i32, 16), ""), i16, "");
  LLVMValueRef nan = LLVMBuildFCmp(c->b, LLVMRealUNO, x, x, "");
  return LLVMBuildSelect(c->b, nan, konst(i16, 0x7fc0), r, "");
}

static LLVMTypeRef vtype(W *w, LLVMTypeRef t) { return LLVMVectorType(t, w->width); }

static LLVMValueRef splat(W *w, LLVMValueRef x) {
  LLVMTypeRef vt = vtype(w, LLVMTypeOf(x));
  LLVMValueRef zero = LLVMConstInt(w->c->i32, 0, 0);
  LLVMValueRef v = LLVMBuildInsertElement(w->c->b, LLVMGetPoison(vt), x, zero, "");
  return LLVMBuildShuffleVector(w->c->b, v, LLVMGetPoison(vt),
                                LLVMConstNull(LLVMVectorType(w->c->i32, w->width)), "");
}

static LLVMValueRef as_vec(W *w, Val x) { return x.vec ? x.v : splat(w, x.v); }

static LLVMValueRef intrinsic(Cg *c, const char *name, LLVMTypeRef t, LLVMValueRef *args, int n) {
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  ir_assert(id != 0);
  LLVMValueRef fn = LLVMGetIntrinsicDeclaration(c->mod, id, &t, 1);
  return LLVMBuildCall2(c->b, LLVMIntrinsicGetType(c->ctx, id, &t, 1), fn, args, n, "");
}

// A libm function of one float with no intrinsic (erff), called once per
// lane of a vector: the kernels that need one are elementwise, few, and bound
// by memory rather than by this call.
static LLVMValueRef libm_call(Cg *c, const char *name, LLVMValueRef x) {
  LLVMTypeRef t = LLVMTypeOf(x);
  LLVMTypeRef st = LLVMGetTypeKind(t) == LLVMVectorTypeKind ? LLVMGetElementType(t) : t;
  LLVMTypeRef ft = LLVMFunctionType(st, &st, 1, 0);
  const char *sym = st == c->f64 ? xstrndup(name, strlen(name) - 1) : name; // erff -> erf
  LLVMValueRef fn = LLVMGetNamedFunction(c->mod, sym);
  if (!fn)
    fn = LLVMAddFunction(c->mod, sym, ft);
  if (st == t)
    return LLVMBuildCall2(c->b, ft, fn, &x, 1, "");
  LLVMValueRef v = LLVMGetPoison(t);
  for (unsigned lane = 0; lane < LLVMGetVectorSize(t); lane++) {
    LLVMValueRef i = LLVMConstInt(c->i32, lane, 0);
    LLVMValueRef e = LLVMBuildExtractElement(c->b, x, i, "");
    v = LLVMBuildInsertElement(c->b, v, LLVMBuildCall2(c->b, ft, fn, &e, 1, ""), i, "");
  }
  return v;
}

// --- Addresses ----------------------------------------------------------------------

static int64_t stride_of(const LBuf *b, int d) {
  int64_t s = 1;
  for (int e = d + 1; e < b->rank; e++)
    s *= b->dim[e];
  return s;
}

static Val emit_expr(W *w, const LExpr *e);

// The element offset of buf[idx...] with the vector variable at its first lane.
static LLVMValueRef offset_at(W *w, const LBuf *b, LExpr *const *idx) {
  Cg *c = w->c;
  LLVMValueRef off = LLVMConstInt(c->i64, 0, 0);
  int save = w->vec_var;
  w->vec_var = -1;
  for (int d = 0; d < b->rank; d++) {
    LLVMValueRef i = emit_expr(w, idx[d]).v;
    off = LLVMBuildNSWAdd(c->b, off, LLVMBuildNSWMul(c->b, i, LLVMConstInt(c->i64, stride_of(b, d), 0), ""), "");
  }
  w->vec_var = save;
  return off;
}

// How an access moves across the lanes, in elements: 0 (the same element:
// a scalar), 1 (consecutive elements: one vector), another constant, or -1
// (not linear in the lanes: lane by lane).
static int64_t lane_step(W *w, const LBuf *b, LExpr *const *idx) {
  if (w->vec_var < 0)
    return 0;
  int64_t total = 0;
  for (int d = 0; d < b->rank; d++) {
    int64_t coef;
    if (!lx_linear(idx[d], w->vec_var, &coef))
      return -1;
    total += coef * stride_of(b, d);
  }
  return total;
}

static int lane_stride(W *w, const LBuf *b, LExpr *const *idx) {
  int64_t s = lane_step(w, b, idx);
  return s == 0 ? 0 : s == 1 ? 1 : -1;
}

// Loads of lanes a few elements apart (pooling's stride-2 taps) read the
// elements from the first lane's to the last's as one vector, then keep
// every step-th: a load and a shuffle instead of a load per lane. Nothing
// outside the lanes' own span is read.
enum { MAX_SHUFFLE_STEP = 4 };

static LLVMTypeRef elem_type(Cg *c, const LBuf *b) {
  switch (b->dtype) {
  case DT_I32:
    return c->i32;
  case DT_F64:
    return c->f64;
  case DT_BF16:
    return LLVMInt16TypeInContext(c->ctx);
  case DT_F16:
    return LLVMHalfTypeInContext(c->ctx);
  case DT_F32:
    return c->f32;
  }
  unreachable();
}

static LLVMValueRef address(W *w, const LBuf *b, LLVMValueRef off) {
  return LLVMBuildInBoundsGEP2(w->c->b, elem_type(w->c, b), w->ptr[b->id], &off, 1, "");
}

// The access with the vector variable fixed at lane `lane`.
static LLVMValueRef lane_offset(W *w, const LBuf *b, LExpr *const *idx, int lane) {
  LLVMValueRef save = w->var[w->vec_var];
  w->var[w->vec_var] =
      LLVMBuildNSWAdd(w->c->b, save, LLVMConstInt(w->c->i64, lane, 0), "");
  LLVMValueRef off = offset_at(w, b, idx);
  w->var[w->vec_var] = save;
  return off;
}

// a and b end to end.
static LLVMValueRef concat(Cg *c, LLVMValueRef a, LLVMValueRef b) {
  unsigned n = LLVMGetVectorSize(LLVMTypeOf(a));
  LLVMValueRef *mask = xcalloc(2 * n, sizeof *mask);
  for (unsigned l = 0; l < 2 * n; l++)
    mask[l] = LLVMConstInt(c->i32, l, 0);
  LLVMValueRef v = LLVMBuildShuffleVector(c->b, a, b, LLVMConstVector(mask, 2 * n), "");
  free(mask);
  return v;
}

// v[0..n) joined end to end by pairs (an odd one out padded with poison)
// until at most `keep` vectors are left; how many are.
static int join_pairs(Cg *c, LLVMValueRef *v, int n, int keep) {
  while (n > keep) {
    for (int j = 0; j < n / 2; j++)
      v[j] = concat(c, v[2 * j], v[2 * j + 1]);
    if (n % 2)
      v[n / 2] = concat(c, v[n - 1], LLVMGetPoison(LLVMTypeOf(v[n - 1])));
    n = (n + 1) / 2;
  }
  return n;
}

// The lanes of a load `step` elements apart: the span from the first lane's
// element to the last's read as `step` vectors of the width, one after the
// other (the elements past the span masked off, a vector wholly past it not
// read), then every step-th element kept by one shuffle of two vectors.
// Not one wide load and a shuffle of it alone: InstCombine moves such
// shuffles, the same on both sides of a compare, past the compare
// (pooling's `x[2w+1] > x[2w]`), and a shuffle of a mask vector takes
// AVX-512 some forty k-register instructions.
static LLVMValueRef shuffled_load(W *w, const LBuf *b, LExpr *const *idx, int step) {
  Cg *c = w->c;
  LLVMTypeRef t = elem_type(c, b), vt = vtype(w, t);
  unsigned align = dtype_bytes(b->dtype) < 4 ? dtype_bytes(b->dtype) : 4;
  int width = w->width, span = (width - 1) * step + 1;
  LLVMValueRef base = offset_at(w, b, idx), v[MAX_SHUFFLE_STEP];
  for (int j = 0; j < step; j++) {
    int on = span - j * width; // elements of piece j within the span
    LLVMValueRef at = address(w, b, LLVMBuildNSWAdd(c->b, base, LLVMConstInt(c->i64, (uint64_t)(j * width), 0), ""));
    if (on <= 0) {
      v[j] = LLVMGetPoison(vt);
    } else if (on >= width) {
      v[j] = LLVMBuildLoad2(c->b, vt, at, "");
      LLVMSetAlignment(v[j], align);
    } else {
      LLVMValueRef *bits = xcalloc((size_t)width, sizeof *bits);
      for (int l = 0; l < width; l++)
        bits[l] = LLVMConstInt(LLVMInt1TypeInContext(c->ctx), l < on, 0);
      LLVMTypeRef tys[2] = {vt, c->ptr};
      unsigned id = LLVMLookupIntrinsicID("llvm.masked.load", 16);
      ir_assert(id != 0);
      LLVMValueRef args[4] = {at, LLVMConstInt(c->i32, align, 0), LLVMConstVector(bits, (unsigned)width),
                              LLVMGetPoison(vt)};
      free(bits);
      v[j] = LLVMBuildCall2(c->b, LLVMIntrinsicGetType(c->ctx, id, tys, 2),
                            LLVMGetIntrinsicDeclaration(c->mod, id, tys, 2), args, 4, "");
    }
  }
  int n = join_pairs(c, v, step, 2);
  LLVMValueRef *mask = xcalloc((size_t)width, sizeof *mask);
  for (int l = 0; l < width; l++)
    mask[l] = LLVMConstInt(c->i32, (uint64_t)(l * step), 0);
  LLVMValueRef r = LLVMBuildShuffleVector(c->b, v[0], n == 2 ? v[1] : LLVMGetPoison(LLVMTypeOf(v[0])),
                                          LLVMConstVector(mask, (unsigned)width), "");
  free(mask);
  return r;
}

// The loaded element(s), a 16-bit buffer's widened to f32.
static Val emit_load_raw(W *w, const LExpr *e) {
  Cg *c = w->c;
  const LBuf *b = e->buf;
  LLVMTypeRef t = elem_type(c, b);
  int ls = lane_stride(w, b, e->idx);
  if (ls == 0)
    return (Val){LLVMBuildLoad2(c->b, t, address(w, b, offset_at(w, b, e->idx)), ""), false};
  if (ls == 1) {
    LLVMValueRef v = LLVMBuildLoad2(c->b, vtype(w, t), address(w, b, offset_at(w, b, e->idx)), "");
    LLVMSetAlignment(v, dtype_bytes(b->dtype) < 4 ? dtype_bytes(b->dtype) : 4);
    return (Val){v, true};
  }
  int64_t step = lane_step(w, b, e->idx);
  if (step > 1 && step <= MAX_SHUFFLE_STEP)
    return (Val){shuffled_load(w, b, e->idx, (int)step), true};
  LLVMValueRef v = LLVMGetPoison(vtype(w, t));
  for (int lane = 0; lane < w->width; lane++) {
    LLVMValueRef x = LLVMBuildLoad2(c->b, t, address(w, b, lane_offset(w, b, e->idx, lane)), "");
    v = LLVMBuildInsertElement(c->b, v, x, LLVMConstInt(c->i32, lane, 0), "");
  }
  return (Val){v, true};
}

static Val emit_load(W *w, const LExpr *e) {
  Val v = emit_load_raw(w, e);
  if (dtype_is_16bit(e->buf->dtype))
    v.v = widen16(w->c, e->buf->dtype, v.v);
  return v;
}

// --- Expressions ------------------------------------------------------------------------

static Val emit_expr(W *w, const LExpr *e) {
  Cg *c = w->c;
  LLVMTypeRef t = ltype(c, e->type);
  switch (e->kind) {
  case LX_CONST:
    return (Val){is_float(e->type) ? LLVMConstReal(t, e->f) : LLVMConstInt(t, (uint64_t)e->i, 1),
                 false};
  case LX_VAR: {
    LLVMValueRef v = w->var[e->var];
    ir_assert(v);
    if (e->var != w->vec_var)
      return (Val){v, false};
    LLVMValueRef *lanes = xcalloc(w->width, sizeof *lanes);
    for (int i = 0; i < w->width; i++)
      lanes[i] = LLVMConstInt(c->i64, i, 0);
    LLVMValueRef step = LLVMConstVector(lanes, w->width);
    return (Val){LLVMBuildNSWAdd(c->b, splat(w, v), step, ""), true};
  }
  case LX_LOAD:
    return emit_load(w, e);
  default:
    break;
  }
  Val a = emit_expr(w, e->a), b = {0}, cc = {0};
  if (e->b)
    b = emit_expr(w, e->b);
  if (e->c)
    cc = emit_expr(w, e->c);
  bool vec = a.vec || (e->b && b.vec) || (e->c && cc.vec);
  LLVMValueRef x = vec ? as_vec(w, a) : a.v;
  LLVMValueRef y = e->b ? (vec ? as_vec(w, b) : b.v) : NULL;
  LLVMValueRef z = e->c ? (vec ? as_vec(w, cc) : cc.v) : NULL;
  LType at = e->a->type;
  bool fl = is_float(at);
  LLVMBuilderRef bd = c->b;
  LLVMValueRef r;
  switch (e->kind) {
  case LX_ADD:
    r = fl ? LLVMBuildFAdd(bd, x, y, "") : LLVMBuildAdd(bd, x, y, "");
    break;
  case LX_SUB:
    r = fl ? LLVMBuildFSub(bd, x, y, "") : LLVMBuildSub(bd, x, y, "");
    break;
  case LX_MUL:
    r = fl ? LLVMBuildFMul(bd, x, y, "") : LLVMBuildMul(bd, x, y, "");
    break;
  case LX_DIV:
    r = fl ? LLVMBuildFDiv(bd, x, y, "") : LLVMBuildSDiv(bd, x, y, "");
    break;
  case LX_REM:
    r = fl ? LLVMBuildFRem(bd, x, y, "") : LLVMBuildSRem(bd, x, y, "");
    break;
  case LX_MIN:
  case LX_MAX:
    if (fl) {
      LLVMValueRef args[2] = {x, y};
      r = intrinsic(c, e->kind == LX_MIN ? "llvm.minnum" : "llvm.maxnum", LLVMTypeOf(x), args, 2);
    } else {
      LLVMValueRef lt = LLVMBuildICmp(bd, LLVMIntSLT, x, y, "");
      r = e->kind == LX_MIN ? LLVMBuildSelect(bd, lt, x, y, "") : LLVMBuildSelect(bd, lt, y, x, "");
    }
    break;
  case LX_FMA: {
    LLVMValueRef args[3] = {x, y, z};
    r = intrinsic(c, "llvm.fma", LLVMTypeOf(x), args, 3);
    break;
  }
  case LX_NEG:
    r = fl ? LLVMBuildFNeg(bd, x, "") : LLVMBuildNeg(bd, x, "");
    break;
  case LX_EXP:
    r = intrinsic(c, "llvm.exp", LLVMTypeOf(x), &x, 1);
    break;
  case LX_LOG:
    r = intrinsic(c, "llvm.log", LLVMTypeOf(x), &x, 1);
    break;
  case LX_SQRT:
    r = intrinsic(c, "llvm.sqrt", LLVMTypeOf(x), &x, 1);
    break;
  case LX_COS:
    r = intrinsic(c, "llvm.cos", LLVMTypeOf(x), &x, 1);
    break;
  case LX_TANH:
    r = intrinsic(c, "llvm.tanh", LLVMTypeOf(x), &x, 1);
    break;
  case LX_ERF:
    r = libm_call(c, "erff", x);
    break;
  case LX_POW: {
    LLVMValueRef args[2] = {x, y};
    r = intrinsic(c, "llvm.pow", LLVMTypeOf(x), args, 2);
    break;
  }
  case LX_LT:
  case LX_LE:
  case LX_GT:
  case LX_GE:
  case LX_EQ:
  case LX_NE:
  case LX_UGT:
  case LX_ULT: {
    static const LLVMRealPredicate fp[] = {
        [LX_LT] = LLVMRealOLT, [LX_LE] = LLVMRealOLE, [LX_GT] = LLVMRealOGT,
        [LX_GE] = LLVMRealOGE, [LX_EQ] = LLVMRealOEQ, [LX_NE] = LLVMRealONE,
        [LX_UGT] = LLVMRealUGT, [LX_ULT] = LLVMRealULT};
    static const LLVMIntPredicate ip[] = {
        [LX_LT] = LLVMIntSLT, [LX_LE] = LLVMIntSLE, [LX_GT] = LLVMIntSGT, [LX_GE] = LLVMIntSGE,
        [LX_EQ] = LLVMIntEQ,  [LX_NE] = LLVMIntNE,  [LX_UGT] = LLVMIntUGT, [LX_ULT] = LLVMIntULT};
    r = fl ? LLVMBuildFCmp(bd, fp[e->kind], x, y, "") : LLVMBuildICmp(bd, ip[e->kind], x, y, "");
    break;
  }
  case LX_UNO:
    r = LLVMBuildFCmp(bd, LLVMRealUNO, x, x, "");
    break;
  case LX_AND:
    r = LLVMBuildAnd(bd, x, y, "");
    break;
  case LX_OR:
    r = LLVMBuildOr(bd, x, y, "");
    break;
  case LX_XOR:
    r = LLVMBuildXor(bd, x, y, "");
    break;
  case LX_SHL:
    r = LLVMBuildShl(bd, x, y, "");
    break;
  case LX_SHR:
    r = LLVMBuildLShr(bd, x, y, "");
    break;
  case LX_NOT:
    r = LLVMBuildNot(bd, x, "");
    break;
  case LX_SELECT:
    r = LLVMBuildSelect(bd, x, y, z, "");
    break;
  case LX_CAST: {
    LLVMTypeRef to = vec ? vtype(w, t) : t;
    LType from = at, into = e->type;
    if (into == LT_BF16 || into == LT_F16) { // lx_round's narrowing, from f32
      ir_assert(from == LT_F32);
      r = narrow16(c, into == LT_BF16 ? DT_BF16 : DT_F16, x);
    } else if (from == LT_BF16 || from == LT_F16) { // ... and its widening back
      ir_assert(into == LT_F32);
      r = widen16(c, from == LT_BF16 ? DT_BF16 : DT_F16, x);
    } else if (is_float(from) && is_float(into))
      r = into == LT_F64 ? LLVMBuildFPExt(bd, x, to, "") : LLVMBuildFPTrunc(bd, x, to, "");
    else if (is_float(into))
      r = from == LT_BOOL ? LLVMBuildUIToFP(bd, x, to, "") : LLVMBuildSIToFP(bd, x, to, "");
    else if (is_float(from))
      r = LLVMBuildFPToSI(bd, x, to, "");
    else if (from == LT_BOOL)
      r = LLVMBuildZExt(bd, x, to, "");
    else if (into == LT_BOOL)
      r = LLVMBuildICmp(bd, LLVMIntNE, x, LLVMConstNull(LLVMTypeOf(x)), "");
    else if (LLVMGetIntTypeWidth(ltype(c, into)) > LLVMGetIntTypeWidth(ltype(c, from)))
      r = LLVMBuildSExt(bd, x, to, "");
    else
      r = LLVMBuildTrunc(bd, x, to, "");
    break;
  }
  default:
    unreachable();
  }
  return (Val){r, vec};
}

// --- Statements ------------------------------------------------------------------------

static void emit_stmt(W *w, const LStmt *s, int depth);

// Stores whose lanes lie k elements apart (pooling's gradient writes each
// window's taps at stride 2) would go lane by lane: an extract and a store
// each. When k such stores follow one another, to one buffer, at offsets
// base + 0 .. base + k-1, and none of their values reads that buffer, they
// fill every element from base on: their vectors are interleaved and
// stored as one.
// Statements body[i..i+k) as such a group: their order by offset in
// order[0..k), or 0 when they are not one.
static int store_group(W *w, LStmt *const *body, int n, int i, int order[MAX_SHUFFLE_STEP]) {
  const LStmt *s = body[i];
  if (s->kind != LS_STORE || dtype_is_16bit(s->buf->dtype))
    return 0;
  int64_t k = lane_step(w, s->buf, s->idx);
  if (k < 2 || k > MAX_SHUFFLE_STEP || i + k > n)
    return 0;
  bool seen[MAX_SHUFFLE_STEP] = {false};
  int64_t base = INT64_MAX, delta[MAX_SHUFFLE_STEP];
  for (int j = 0; j < k; j++) {
    const LStmt *t = body[i + j];
    if (t->kind != LS_STORE || t->buf != s->buf || lane_step(w, t->buf, t->idx) != k ||
        !lx_const_apart(s->buf, t->idx, s->idx, &delta[j]))
      return 0;
    base = delta[j] < base ? delta[j] : base;
  }
  for (int j = 0; j < k; j++) {
    int64_t at = delta[j] - base;
    if (at >= k || seen[at] || lx_reads(body[i + j]->value, s->buf))
      return 0;
    seen[at] = true;
    order[at] = i + j;
  }
  return (int)k;
}

static void emit_store_group(W *w, LStmt *const *body, int i, const int *order, int k) {
  Cg *c = w->c;
  LLVMValueRef val[MAX_SHUFFLE_STEP], v[MAX_SHUFFLE_STEP];
  for (int j = 0; j < k; j++) // the values in the statements' order
    val[j] = as_vec(w, emit_expr(w, body[i + j]->value));
  for (int at = 0; at < k; at++)
    v[at] = val[order[at] - i];
  // All k vectors end to end (padded to a power of two of them), then
  // element l*k + at of the store is v[at]'s lane l.
  join_pairs(c, v, k, 1);
  LLVMValueRef *mask = xcalloc((size_t)w->width * k, sizeof *mask);
  for (int l = 0; l < w->width; l++)
    for (int at = 0; at < k; at++)
      mask[l * k + at] = LLVMConstInt(c->i32, (uint64_t)(at * w->width + l), 0);
  LLVMValueRef all = LLVMBuildShuffleVector(c->b, v[0], LLVMGetPoison(LLVMTypeOf(v[0])),
                                            LLVMConstVector(mask, (unsigned)(w->width * k)), "");
  free(mask);
  const LStmt *first = body[order[0]];
  LLVMValueRef st = LLVMBuildStore(c->b, all, address(w, first->buf, offset_at(w, first->buf, first->idx)));
  LLVMSetAlignment(st, 4);
}

// Rows of a tile's output. A tile keeps its accumulators along the output's
// last dimension and its lanes along another (output channels, a plane apart
// in NCHW), each accumulator stored by a vector loop of its own: lane by
// lane, an extract and a store per element. When neighbouring vector loops
// of one width each store one vector to one buffer, with lanes `step`
// elements apart, and k of them store at offsets base + 0 .. base + k-1
// (k <= step, k <= lanes), lane l of those k vectors is the row of k
// elements at base + l*step: the k vectors are transposed in registers, log2
// k rounds of interleaving pairs (one shuffle each), and each row is stored
// as one vector. The loops' stores must not overlap one another, nor their
// values read the buffer, so that they may go in any order.
enum { MAX_ROW_RUN = 16 };

typedef struct {
  int n;                      // vector loops in the run
  LStmt *store[MAX_ROW_RUN];  // each loop's store, on the first loop's variable
  int64_t delta[MAX_ROW_RUN]; // its offset from the first's
  int64_t step;               // elements between lanes
} RowRun;

static bool pow2(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

static const LStmt *lone_store(const LStmt *l) {
  if (l->kind != LS_LOOP || !(l->flags & LF_VECTOR) || l->nbody != 1 || l->body[0]->kind != LS_STORE)
    return NULL;
  return l->body[0];
}

// The run of vector loops from body[i] as a RowRun, its length (at least
// 2), or 0 when there is none.
static int row_run(W *w, LStmt *const *body, int n, int i, RowRun *r) {
  const LStmt *l0 = body[i], *s0 = lone_store(l0);
  if (!s0 || s0->buf->dtype != DT_F32 || !pow2(l0->hi - l0->lo) || l0->hi - l0->lo > MAX_ROW_RUN)
    return 0;
  int width = (int)(l0->hi - l0->lo);
  r->n = 0;
  r->step = 0;
  w->vec_var = l0->var;
  for (int j = i; j < n && r->n < MAX_ROW_RUN; j++) {
    const LStmt *l = body[j], *s = lone_store(l);
    if (!s || s->buf != s0->buf || l->hi - l->lo != width)
      break;
    LStmt *t = ls_copy(s); // on the first loop's variable: l->var = l0->var + (l->lo - l0->lo)
    if (l->var != l0->var)
      ls_subst(t, l->var, lx_iaddc(lx_var(l0->var), l->lo - l0->lo));
    int64_t step = lane_step(w, t->buf, t->idx), d;
    if (step < 2 || (r->n && step != r->step) || lx_reads(t->value, t->buf) ||
        !lx_const_apart(t->buf, t->idx, r->n ? r->store[0]->idx : t->idx, &d))
      break;
    r->step = step;
    r->store[r->n] = t;
    r->delta[r->n++] = d;
  }
  w->vec_var = -1;
  // No two stores may write one element: then their order does not matter.
  for (int a = 0; a < r->n; a++)
    for (int b = a + 1; b < r->n; b++) {
      int64_t d = r->delta[b] - r->delta[a];
      if (d % r->step == 0 && d / r->step > -width && d / r->step < width)
        return 0;
    }
  for (int a = 0; a < r->n; a++) // worth it when two are a row's neighbours
    for (int b = 0; b < r->n; b++)
      if (r->delta[b] == r->delta[a] + 1)
        return r->n;
  return 0;
}

// The even (from 0) or odd (from width/2) halves of a and b, interleaved:
// a[from], b[from], a[from+1], b[from+1]...
static LLVMValueRef zip(Cg *c, LLVMValueRef a, LLVMValueRef b, int from, int width) {
  LLVMValueRef mask[MAX_ROW_RUN];
  for (int x = 0; x < width / 2; x++) {
    mask[2 * x] = LLVMConstInt(c->i32, (uint64_t)(from + x), 0);
    mask[2 * x + 1] = LLVMConstInt(c->i32, (uint64_t)(width + from + x), 0);
  }
  return LLVMBuildShuffleVector(c->b, a, b, LLVMConstVector(mask, (unsigned)width), "");
}

// Stores x lane by lane (s's lanes are neither one element nor consecutive).
static void store_lanes(W *w, const LStmt *s, LLVMValueRef x) {
  for (int lane = 0; lane < w->width; lane++) {
    LLVMValueRef e = LLVMBuildExtractElement(w->c->b, x, LLVMConstInt(w->c->i32, lane, 0), "");
    LLVMBuildStore(w->c->b, e, address(w, s->buf, lane_offset(w, s->buf, s->idx, lane)));
  }
}

// The k vectors v[0..k) (k <= kp <= width, kp a power of two), stored at
// offsets base + 0 .. k-1 of the row of each lane. After round `bit` of
// interleaving pairs that differ in that bit of their number, a lane's
// bits have moved up into the element's position; after all of them vector
// m holds the rows of lanes m*(width/kp) .. (m+1)*(width/kp) - 1, each row
// kp elements whose first k are v[0..k)'s.
static void emit_rows(W *w, const LStmt *first, LLVMValueRef *v, int k) {
  Cg *c = w->c;
  int kp = 1;
  while (kp < k)
    kp *= 2;
  for (int j = k; j < kp; j++)
    v[j] = LLVMGetPoison(LLVMTypeOf(v[0]));
  for (int bit = kp / 2; bit >= 1; bit /= 2)
    for (int j = 0; j < kp; j++)
      if (!(j & bit)) {
        LLVMValueRef a = v[j], b = v[j | bit];
        v[j] = zip(c, a, b, 0, w->width);
        v[j | bit] = zip(c, a, b, w->width / 2, w->width);
      }
  int per = w->width / kp; // rows per vector
  for (int lane = 0; lane < w->width; lane++) {
    LLVMValueRef mask[MAX_ROW_RUN];
    for (int j = 0; j < k; j++)
      mask[j] = LLVMConstInt(c->i32, (uint64_t)(lane % per * kp + j), 0);
    LLVMValueRef row = LLVMBuildShuffleVector(c->b, v[lane / per], LLVMGetPoison(LLVMTypeOf(v[0])),
                                              LLVMConstVector(mask, (unsigned)k), "");
    LLVMValueRef st = LLVMBuildStore(c->b, row, address(w, first->buf, lane_offset(w, first->buf, first->idx, lane)));
    LLVMSetAlignment(st, 4);
  }
}

static void emit_row_run(W *w, const LStmt *l0, RowRun *r) {
  Cg *c = w->c;
  int save_var = w->vec_var, save_width = w->width;
  w->vec_var = l0->var;
  w->width = (int)(l0->hi - l0->lo);
  w->var[l0->var] = LLVMConstInt(c->i64, l0->lo, 0);
  LLVMValueRef val[MAX_ROW_RUN];
  int order[MAX_ROW_RUN];
  for (int j = 0; j < r->n; j++) { // the values in the statements' order
    val[j] = as_vec(w, emit_expr(w, r->store[j]->value));
    order[j] = j;
  }
  for (int a = 1; a < r->n; a++) // by offset
    for (int b = a; b > 0 && r->delta[order[b]] < r->delta[order[b - 1]]; b--) {
      int t = order[b];
      order[b] = order[b - 1], order[b - 1] = t;
    }
  int most = w->width < r->step ? w->width : (int)r->step;
  for (int a = 0; a < r->n;) {
    int b = a + 1; // [a, b): offsets one apart, at most `most` of them
    while (b < r->n && b - a < most && r->delta[order[b]] == r->delta[order[b - 1]] + 1)
      b++;
    if (b - a == 1) {
      store_lanes(w, r->store[order[a]], val[order[a]]);
    } else {
      LLVMValueRef v[MAX_ROW_RUN];
      for (int j = a; j < b; j++)
        v[j - a] = val[order[j]];
      emit_rows(w, r->store[order[a]], v, b - a);
    }
    a = b;
  }
  w->var[l0->var] = NULL;
  w->vec_var = save_var;
  w->width = save_width;
}

static void emit_body(W *w, const LStmt *s, int depth) {
  for (int i = 0; i < s->nbody; i++) {
    RowRun r;
    int k = w->vec_var < 0 ? row_run(w, s->body, s->nbody, i, &r) : 0;
    if (k) {
      emit_row_run(w, s->body[i], &r);
      i += k - 1;
      continue;
    }
    int order[MAX_SHUFFLE_STEP];
    k = w->vec_var >= 0 ? store_group(w, s->body, s->nbody, i, order) : 0;
    if (k) {
      emit_store_group(w, s->body, i, order, k);
      i += k - 1;
      continue;
    }
    emit_stmt(w, s->body[i], depth + 1);
  }
}

// Marks the loop whose latch is `br` as one LLVM must not unroll.
static void keep_rolled(Cg *c, LLVMValueRef br) {
  static const char key[] = "llvm.loop.unroll.disable";
  LLVMMetadataRef self = LLVMTemporaryMDNode(c->ctx, NULL, 0);
  LLVMMetadataRef opt = LLVMMDStringInContext2(c->ctx, key, sizeof key - 1);
  LLVMMetadataRef ops[2] = {self, LLVMMDNodeInContext2(c->ctx, &opt, 1)};
  LLVMMetadataRef id = LLVMMDNodeInContext2(c->ctx, ops, 2);
  LLVMMetadataReplaceAllUsesWith(self, id);
  LLVMSetMetadata(br, LLVMGetMDKindIDInContext(c->ctx, "llvm.loop", 9),
                  LLVMMetadataAsValue(c->ctx, id));
}

// for (v = lo; v < hi; v++): a counted loop.
static void emit_counted(W *w, const LStmt *s, LLVMValueRef lo, LLVMValueRef hi, int depth) {
  Cg *c = w->c;
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(c->b);
  LLVMBasicBlockRef head = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "loop");
  LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "body");
  LLVMBasicBlockRef exit = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "done");
  LLVMBuildBr(c->b, head);
  LLVMPositionBuilderAtEnd(c->b, head);
  LLVMValueRef phi = LLVMBuildPhi(c->b, c->i64, s->role ? s->role : "v");
  LLVMAddIncoming(phi, &lo, &pre, 1);
  LLVMBuildCondBr(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, phi, hi, ""), body, exit);
  LLVMPositionBuilderAtEnd(c->b, body);
  w->var[s->var] = phi;
  emit_body(w, s, depth);
  LLVMValueRef next = LLVMBuildNSWAdd(c->b, phi, LLVMConstInt(c->i64, 1, 0), "");
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(c->b);
  LLVMValueRef br = LLVMBuildBr(c->b, head);
  if (s->flags & LF_ROLLED)
    keep_rolled(c, br);
  LLVMAddIncoming(phi, &next, &latch, 1);
  LLVMPositionBuilderAtEnd(c->b, exit);
  w->var[s->var] = NULL;
}

static void emit_store(W *w, const LStmt *s) {
  Cg *c = w->c;
  Val v = emit_expr(w, s->value);
  if (dtype_is_16bit(s->buf->dtype)) // rounded to the buffer's precision
    v.v = narrow16(c, s->buf->dtype, v.v);
  int ls = lane_stride(w, s->buf, s->idx);
  if (!v.vec && ls == 0) {
    LLVMBuildStore(c->b, v.v, address(w, s->buf, offset_at(w, s->buf, s->idx)));
    return;
  }
  ir_assert(ls != 0); // a vector stored to one element: the vectorizer forbids it
  LLVMValueRef x = as_vec(w, v);
  if (ls == 1) {
    LLVMValueRef st = LLVMBuildStore(c->b, x, address(w, s->buf, offset_at(w, s->buf, s->idx)));
    LLVMSetAlignment(st, dtype_bytes(s->buf->dtype) < 4 ? dtype_bytes(s->buf->dtype) : 4);
    return;
  }
  store_lanes(w, s, x);
}

static void emit_stmt(W *w, const LStmt *s, int depth) {
  Cg *c = w->c;
  switch (s->kind) {
  case LS_STORE:
    emit_store(w, s);
    return;
  case LS_PREFETCH: { // llvm.prefetch(address, read, keep in every level, data)
    Val off = emit_expr(w, s->value);
    ir_assert(!off.vec); // the prefetch pass puts it outside vector loops
    LLVMValueRef at = LLVMBuildGEP2(c->b, elem_type(c, s->buf), w->ptr[s->buf->id], &off.v, 1, "");
    LLVMValueRef args[4] = {at, LLVMConstInt(c->i32, 0, 0), LLVMConstInt(c->i32, 3, 0),
                            LLVMConstInt(c->i32, 1, 0)};
    intrinsic(c, "llvm.prefetch", LLVMTypeOf(at), args, 4);
    return;
  }
  case LS_IF: {
    Val cond = emit_expr(w, s->cond);
    ir_assert(!cond.vec); // the vectorizer leaves loops with guards alone
    LLVMBasicBlockRef then = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "then");
    LLVMBasicBlockRef join = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "join");
    LLVMBuildCondBr(c->b, cond.v, then, join);
    LLVMPositionBuilderAtEnd(c->b, then);
    emit_body(w, s, depth);
    LLVMBuildBr(c->b, join);
    LLVMPositionBuilderAtEnd(c->b, join);
    return;
  }
  case LS_LOOP:
    if (s->flags & LF_PARALLEL) {
      // This call's part of the loop: [lo + klo, lo + khi).
      LLVMValueRef base = LLVMConstInt(c->i64, s->lo, 0);
      emit_counted(w, s, LLVMBuildNSWAdd(c->b, base, w->lo, ""),
                   LLVMBuildNSWAdd(c->b, base, w->hi, ""), depth);
    } else if (s->flags & LF_VECTOR) {
      int save_var = w->vec_var, save_width = w->width;
      ir_assert(save_var < 0); // vector loops do not nest
      w->vec_var = s->var;
      w->width = (int)(s->hi - s->lo);
      w->var[s->var] = LLVMConstInt(c->i64, s->lo, 0);
      emit_body(w, s, depth);
      w->var[s->var] = NULL;
      w->vec_var = save_var;
      w->width = save_width;
    } else if (s->flags & LF_UNROLL) {
      for (int64_t i = s->lo; i < s->hi; i++) {
        w->var[s->var] = LLVMConstInt(c->i64, i, 0);
        emit_body(w, s, depth);
      }
      w->var[s->var] = NULL;
    } else {
      emit_counted(w, s, LLVMConstInt(c->i64, s->lo, 0), LLVMConstInt(c->i64, s->hi, 0), depth);
    }
    return;
  }
}

// --- Kernels ------------------------------------------------------------------------------

static void note_expr(bool *used, const LExpr *e) {
  if (!e)
    return;
  if (e->kind == LX_LOAD) {
    used[e->buf->id] = true;
    for (int d = 0; d < e->buf->rank; d++)
      note_expr(used, e->idx[d]);
  }
  note_expr(used, e->a);
  note_expr(used, e->b);
  note_expr(used, e->c);
}

static void note_stmt(bool *used, bool *written, const LStmt *s) {
  note_expr(used, s->cond);
  note_expr(used, s->value);
  if (s->kind == LS_PREFETCH)
    used[s->buf->id] = true;
  if (s->kind == LS_STORE) {
    used[s->buf->id] = true;
    written[s->buf->id] = true;
    for (int d = 0; d < s->buf->rank; d++)
      note_expr(used, s->idx[d]);
  }
  for (int i = 0; i < s->nbody; i++)
    note_stmt(used, written, s->body[i]);
}


// The buffers a kernel reads or writes: the ones passed to it in ids[0..n),
// and its local arrays in locals[0..nlocals).
static void kernel_buffers(const LFunc *f, const LKernel *k, int **ids, int *n, int **locals,
                           int *nlocals) {
  bool *used = xcalloc(f->nbufs + 1, 1), *written = xcalloc(f->nbufs + 1, 1);
  for (int i = 0; i < k->nbody; i++)
    note_stmt(used, written, k->body[i]);
  *ids = xcalloc(f->nbufs + 1, sizeof **ids);
  *locals = xcalloc(f->nbufs + 1, sizeof **locals);
  *n = *nlocals = 0;
  for (int i = 0; i < f->nbufs; i++)
    if (used[i] && f->bufs[i]->storage == LB_LOCAL)
      (*locals)[(*nlocals)++] = i;
    else if (used[i])
      (*ids)[(*n)++] = i;
  free(used), free(written);
}

void add_attr(Cg *c, LLVMValueRef fn, unsigned index, const char *name) {
  unsigned kind = LLVMGetEnumAttributeKindForName(name, strlen(name));
  LLVMAddAttributeAtIndex(fn, index, LLVMCreateEnumAttribute(c->ctx, kind, 0));
}

void vector_width_attr(Cg *c, LLVMValueRef fn, int bits) {
  if (bits <= 256)
    return;
  char width[16];
  int len = snprintf(width, sizeof width, "%d", bits);
  const char *key = "min-legal-vector-width";
  LLVMAddAttributeAtIndex(fn, LLVMAttributeFunctionIndex,
                          LLVMCreateStringAttribute(c->ctx, key, strlen(key), width, len));
}

// The most lanes a vector loop among the n statements holds, in bits of
// f32 (the widest vector the kernel computes with; 16-bit buffers convert
// to f32 first).
static int vector_bits(LStmt *const *body, int n) {
  int bits = 0;
  for (int i = 0; i < n; i++) {
    const LStmt *s = body[i];
    int b = s->kind == LS_LOOP && s->flags & LF_VECTOR ? (int)(s->hi - s->lo) * 32
                                                        : vector_bits(s->body, s->nbody);
    bits = b > bits ? b : bits;
  }
  return bits;
}

static bool is_parallel(const LKernel *k, int64_t *trip) {
  if (k->nbody == 1 && k->body[0]->kind == LS_LOOP && k->body[0]->flags & LF_PARALLEL) {
    *trip = k->body[0]->hi - k->body[0]->lo;
    return true;
  }
  *trip = 0;
  return false;
}

// `void NAME(ptr b0, ..., ptr bK, i64 lo, i64 hi)`. Distinct buffers never
// overlap (the memory plan keeps a kernel's buffers apart), so they are
// noalias and LLVM needs no runtime checks; aliases of one buffer are not.
static LLVMValueRef emit_kernel(Cg *c, const LFunc *f, const LKernel *k, int **ids_out, int *n_out) {
  int *ids, n, *locals, nlocals;
  kernel_buffers(f, k, &ids, &n, &locals, &nlocals);
  *ids_out = ids;
  *n_out = n;
  const char *prefix = f->name;
  LLVMTypeRef *params = xcalloc(n + 2, sizeof *params);
  for (int i = 0; i < n; i++)
    params[i] = c->ptr;
  params[n] = params[n + 1] = c->i64;
  LLVMValueRef fn = LLVMAddFunction(c->mod, xformat("%s.%s", prefix, k->name),
                                    LLVMFunctionType(c->voidt, params, n + 2, false));
  LLVMSetLinkage(fn, LLVMInternalLinkage);
  add_attr(c, fn, LLVMAttributeFunctionIndex, "nounwind");
  vector_width_attr(c, fn, vector_bits(k->body, k->nbody));
  int64_t trip;
  if (!is_parallel(k, &trip))
    add_attr(c, fn, LLVMAttributeFunctionIndex, "noinline");
  for (int i = 0; i < n; i++) {
    bool shared = false;
    for (int j = 0; j < n; j++)
      shared |= j != i && lbuf_root(f->bufs[ids[i]]) == lbuf_root(f->bufs[ids[j]]);
    if (!shared)
      add_attr(c, fn, i + 1, "noalias");
    add_attr(c, fn, i + 1, "nocapture");
  }

  c->fn = fn;
  c->entry = LLVMAppendBasicBlockInContext(c->ctx, fn, "entry");
  LLVMPositionBuilderAtEnd(c->b, c->entry);
  W w = {c, k, xcalloc(k->nvars + 1, sizeof(LLVMValueRef)), -1, 0,
         xcalloc(f->nbufs + 1, sizeof(LLVMValueRef)), LLVMGetParam(fn, n), LLVMGetParam(fn, n + 1)};
  for (int i = 0; i < n; i++)
    w.ptr[ids[i]] = LLVMGetParam(fn, i);
  // Local arrays in the entry block: mem2reg/SROA turn those indexed by
  // unrolled loops into registers.
  for (int i = 0; i < nlocals; i++) {
    LBuf *b = f->bufs[locals[i]];
    LLVMValueRef a = LLVMBuildAlloca(c->b, LLVMArrayType(elem_type(c, b), lbuf_numel(b)), b->name);
    LLVMSetAlignment(a, 32);
    w.ptr[locals[i]] = a;
  }
  for (int i = 0; i < k->nbody; i++)
    emit_stmt(&w, k->body[i], -1);
  LLVMBuildRetVoid(c->b);
  free(locals);
  return fn;
}

// `void NAME.body(void **ctx, i64 lo, i64 hi)` for xc_parallel_for: ctx holds
// the kernel's buffer pointers.
static LLVMValueRef emit_parallel_body(Cg *c, LLVMValueRef kernel, int n) {
  LLVMTypeRef params[3] = {c->ptr, c->i64, c->i64};
  size_t len;
  const char *kname = LLVMGetValueName2(kernel, &len);
  LLVMValueRef fn = LLVMAddFunction(c->mod, xformat("%s.body", kname),
                                    LLVMFunctionType(c->voidt, params, 3, false));
  LLVMSetLinkage(fn, LLVMInternalLinkage);
  add_attr(c, fn, LLVMAttributeFunctionIndex, "nounwind");
  c->fn = fn;
  c->entry = LLVMAppendBasicBlockInContext(c->ctx, fn, "entry");
  LLVMPositionBuilderAtEnd(c->b, c->entry);
  LLVMValueRef *args = xcalloc(n + 2, sizeof *args);
  for (int i = 0; i < n; i++) {
    LLVMValueRef idx = LLVMConstInt(c->i64, i, 0);
    LLVMValueRef at = LLVMBuildInBoundsGEP2(c->b, c->ptr, LLVMGetParam(fn, 0), &idx, 1, "");
    args[i] = LLVMBuildLoad2(c->b, c->ptr, at, "");
  }
  args[n] = LLVMGetParam(fn, 1);
  args[n + 1] = LLVMGetParam(fn, 2);
  LLVMBuildCall2(c->b, LLVMGlobalGetValueType(kernel), kernel, args, n + 2, "");
  LLVMBuildRetVoid(c->b);
  return fn;
}

// --- Functions: xc_grad_step, xc_apply_step, xc_forward, the test entry ---------------

// A buffer's address from the function's arguments.
static LLVMValueRef buffer_address(Cg *c, const LFunc *f, const LBuf *b, LLVMValueRef *arg,
                                   LLVMValueRef *addr) {
  LLVMValueRef off = LLVMConstInt(c->i64, b->offset, 1);
  if (b->alias)
    return addr[lbuf_root(b)->id];
  switch (b->storage) {
  case LB_PARAM:
    return LLVMBuildInBoundsGEP2(c->b, c->f32, arg[0], &off, 1, "");
  case LB_STATE:
    return LLVMBuildInBoundsGEP2(c->b, c->f32, arg[1], &off, 1, "");
  case LB_GRAD:
    return LLVMBuildInBoundsGEP2(c->b, c->f32, arg[5], &off, 1, "");
  case LB_WORKSPACE:
    return LLVMBuildInBoundsGEP2(c->b, c->i8, arg[7], &off, 1, "");
  case LB_ARG: {
    int i = !strcmp(b->arg, "image") ? 2 : !strcmp(b->arg, "label") ? 3 : 6;
    if (!arg[i])
      fatal("function %s cannot read %%%s (only the training step reads labels)", f->name,
            b->arg);
    return arg[i];
  }
  case LB_SCALAR: {
    // XcStepArgs: {i32 step, i32 seed, float lr, float momentum, i32 opt_step,
    // float loss_scale, float inv_scale, i32 row0}.
    LLVMTypeRef args_t = LLVMStructTypeInContext(
        c->ctx, (LLVMTypeRef[]){c->i32, c->i32, c->f32, c->f32, c->i32, c->f32, c->f32, c->i32}, 8,
        false);
    static const char *const fields[] = {"step",       "seed",      "lr",  "momentum", "opt_step",
                                         "loss_scale", "inv_scale", "row0"};
    for (int i = 0; i < 8; i++)
      if (!strcmp(fields[i], b->arg)) {
        if (!arg[4])
          fatal("function %s cannot read %%%s", f->name, b->arg);
        return LLVMBuildStructGEP2(c->b, args_t, arg[4], i, b->arg);
      }
    fatal("the runtime feeds no step argument %%%s", b->arg);
  }
  case LB_CONST: {
    ir_assert(b->dtype == DT_F32 || b->dtype == DT_I32); // constants are cast, not stored 16-bit
    int64_t n = lbuf_numel(b);
    LLVMTypeRef et = b->dtype == DT_I32 ? c->i32 : c->f32;
    LLVMValueRef *v = xcalloc(n + 1, sizeof *v);
    for (int64_t i = 0; i < n; i++) {
      double x = b->values[b->nvalues == 1 ? 0 : i];
      v[i] = b->dtype == DT_I32 ? LLVMConstInt(et, (uint64_t)(int64_t)x, 1) : LLVMConstReal(et, x);
    }
    LLVMValueRef init = LLVMConstArray(et, v, n);
    LLVMValueRef g = LLVMAddGlobal(c->mod, LLVMTypeOf(init), b->name);
    LLVMSetInitializer(g, init);
    LLVMSetGlobalConstant(g, true);
    LLVMSetLinkage(g, LLVMPrivateLinkage);
    LLVMSetAlignment(g, 64);
    return g;
  }
  case LB_SLOT: {
    LLVMValueRef idx = LLVMConstInt(c->i64, b->slot, 0);
    return LLVMBuildLoad2(c->b, c->ptr, LLVMBuildInBoundsGEP2(c->b, c->ptr, arg[0], &idx, 1, ""),
                          "");
  }
  case LB_LOCAL:
    return NULL;
  }
  unreachable();
}

static const char *const func_role[] = {[FN_GRAD_STEP] = "grad", [FN_APPLY_STEP] = "apply",
                                        [FN_FORWARD] = "forward", [FN_SLOTS] = "slots"};

// A declared runtime function.
static LLVMValueRef runtime_fn(Cg *c, const char *name, LLVMTypeRef t) {
  LLVMValueRef fn = LLVMGetNamedFunction(c->mod, name);
  return fn ? fn : LLVMAddFunction(c->mod, name, t);
}

// f's step function, calling kernel i as entry[i]: the kernel itself, or
// for a parallel one its chunked body; either defined in this module or
// declared (defined in another object of the executable). A function with
// parallel kernels runs them as one team (runtime/parallel.c): the step
// hands its arguments to xc_parallel_step, which runs NAME.team on every
// thread; there each thread takes its chunk of a parallel kernel through
// xc_team_for (a barrier ends it), thread 0 alone runs the serial ones, and
// a barrier parts a serial kernel from the parallel one after it.
static void emit_step(Cg *c, const LFunc *f, LLVMValueRef const *entry) {
  int **ids = xcalloc(f->nkernels + 1, sizeof *ids), *nids = xcalloc(f->nkernels + 1, sizeof *nids);
  int64_t *trip = xcalloc(f->nkernels + 1, sizeof *trip);
  bool *parallel = xcalloc(f->nkernels + 1, sizeof *parallel);
  bool team = false;
  for (int i = 0; i < f->nkernels; i++) {
    int *locals, nlocals;
    kernel_buffers(f, f->kernels[i], &ids[i], &nids[i], &locals, &nlocals);
    free(locals);
    parallel[i] = is_parallel(f->kernels[i], &trip[i]);
    team |= parallel[i];
  }

  // Where each argument is, per function (-1: absent); the C prototypes are
  // in runtime/xentcc_rt.h. arg[]: params, state, images, labels, args,
  // grads, logits, workspace.
  static const int sig[][9] = {
      [FN_GRAD_STEP] = {0, 1, 2, 3, 4, 5, 6, 7, 8},
      [FN_APPLY_STEP] = {0, 1, -1, -1, 3, 2, -1, 4, 5},
      [FN_FORWARD] = {0, 1, 2, -1, -1, -1, 3, 4, 5},
      [FN_SLOTS] = {0, -1, -1, -1, -1, -1, -1, -1, 1},
  };
  const int *s = sig[f->kind];
  LLVMTypeRef ptrs[8] = {c->ptr, c->ptr, c->ptr, c->ptr, c->ptr, c->ptr, c->ptr, c->ptr};
  LLVMTypeRef ft = LLVMFunctionType(f->kind == FN_GRAD_STEP ? c->f32 : c->voidt, ptrs, s[8], false);
  LLVMValueRef fn = LLVMAddFunction(c->mod, f->name, ft);
  c->fn = fn;
  c->entry = LLVMAppendBasicBlockInContext(c->ctx, fn, "entry");
  LLVMPositionBuilderAtEnd(c->b, c->entry);
  LLVMValueRef arg[8];
  for (int i = 0; i < 8; i++)
    arg[i] = s[i] >= 0 ? LLVMGetParam(fn, s[i]) : NULL;
  if (f->kind == FN_SLOTS && f->workspace_bytes > 0) {
    // The test entry's scratch (a pass's padded copies): a zeroed global.
    LLVMTypeRef t = LLVMArrayType(c->i8, f->workspace_bytes);
    LLVMValueRef g = LLVMAddGlobal(c->mod, t, "workspace");
    LLVMSetInitializer(g, LLVMConstNull(t));
    LLVMSetLinkage(g, LLVMPrivateLinkage);
    LLVMSetAlignment(g, 64);
    arg[7] = g;
  }
  // The step's own arguments, for what it does after the kernels.
  LLVMValueRef step_arg[8];
  memcpy(step_arg, arg, sizeof arg);

  LLVMTypeRef fn_t = LLVMFunctionType(c->voidt, &c->ptr, 1, false);
  LLVMTypeRef pfor_t = LLVMFunctionType(c->voidt, (LLVMTypeRef[]){c->i64, c->ptr, c->ptr}, 3, false);
  LLVMTypeRef prof_t = LLVMFunctionType(c->voidt, &c->i32, 1, false);
  LLVMTypeRef thread_t = LLVMFunctionType(c->i32, NULL, 0, false);
  LLVMTypeRef barrier_t = LLVMFunctionType(c->voidt, NULL, 0, false);
  LLVMBasicBlockRef after = NULL; // the step's block after xc_parallel_step
  if (team) {
    LLVMValueRef body = LLVMAddFunction(c->mod, xformat("%s.team", f->name), fn_t);
    LLVMSetLinkage(body, LLVMInternalLinkage);
    add_attr(c, body, LLVMAttributeFunctionIndex, "nounwind");
    LLVMTypeRef pack_t = LLVMArrayType(c->ptr, 8);
    LLVMValueRef pack = LLVMBuildAlloca(c->b, pack_t, "args");
    for (int i = 0; i < 8; i++) {
      LLVMValueRef idx = LLVMConstInt(c->i64, i, 0);
      LLVMBuildStore(c->b, arg[i] ? arg[i] : LLVMConstNull(c->ptr),
                     LLVMBuildInBoundsGEP2(c->b, c->ptr, pack, &idx, 1, ""));
    }
    LLVMTypeRef step_t = LLVMFunctionType(c->voidt, (LLVMTypeRef[]){c->ptr, c->ptr}, 2, false);
    LLVMBuildCall2(c->b, step_t, runtime_fn(c, "xc_parallel_step", step_t),
                   (LLVMValueRef[]){body, pack}, 2, "");
    after = LLVMGetInsertBlock(c->b);
    c->fn = body;
    c->entry = LLVMAppendBasicBlockInContext(c->ctx, body, "entry");
    LLVMPositionBuilderAtEnd(c->b, c->entry);
    for (int i = 0; i < 8; i++)
      if (arg[i]) {
        LLVMValueRef idx = LLVMConstInt(c->i64, i, 0);
        arg[i] = LLVMBuildLoad2(
            c->b, c->ptr, LLVMBuildInBoundsGEP2(c->b, c->ptr, LLVMGetParam(body, 0), &idx, 1, ""),
            "");
      }
  }

  // The addresses of the buffers the kernels use (and of their roots).
  bool *used = xcalloc(f->nbufs + 1, 1);
  for (int i = 0; i < f->nkernels; i++)
    for (int j = 0; j < nids[i]; j++)
      used[ids[i][j]] = true;
  for (int i = 0; i < f->nbufs; i++)
    if (used[i])
      used[lbuf_root(f->bufs[i])->id] = true;
  LLVMValueRef *addr = xcalloc(f->nbufs + 1, sizeof *addr);
  for (int i = 0; i < f->nbufs; i++)
    if (used[i] && !f->bufs[i]->alias)
      addr[i] = buffer_address(c, f, f->bufs[i], arg, addr);
  for (int i = 0; i < f->nbufs; i++)
    if (used[i] && f->bufs[i]->alias)
      addr[i] = addr[lbuf_root(f->bufs[i])->id];
  free(used);

  LLVMValueRef ctx = LLVMBuildArrayAlloca(c->b, c->ptr, LLVMConstInt(c->i32, f->nbufs + 1, 0), "ctx");
  LLVMValueRef pfor = runtime_fn(c, team ? "xc_team_for" : "xc_parallel_for", pfor_t);
  LLVMValueRef enter = runtime_fn(c, "xc_prof_enter", prof_t);
  LLVMValueRef leave = runtime_fn(c, "xc_prof_leave", prof_t);
  bool profiled = f->kind != FN_SLOTS && !c->unprofiled; // the test entry links no runtime
  LLVMValueRef first = NULL; // in a team: this thread is thread 0
  if (team)
    first = LLVMBuildICmp(c->b, LLVMIntEQ,
                          LLVMBuildCall2(c->b, thread_t, runtime_fn(c, "xc_team_thread", thread_t),
                                         NULL, 0, "thread"),
                          LLVMConstInt(c->i32, 0, 0), "first");
  bool serial_ran = false; // in a team: thread 0 ran a serial kernel since the last barrier

  for (int pass = 0; pass < 2; pass++) // deferred kernels (assigns) last
    for (int i = 0; i < f->nkernels; i++) {
      const LKernel *k = f->kernels[i];
      if (k->deferred != (pass == 1))
        continue;
      int id = c->nkernels++;
      c->kernels = realloc(c->kernels, sizeof *c->kernels * c->nkernels);
      if (!c->kernels)
        fatal("out of memory");
      // xc_prepare_forward has xc_apply_step's signature (codegen.c).
      const char *role = strcmp(f->name, "xc_prepare_forward") ? func_role[f->kind] : "prepare";
      c->kernels[id] = (KernelInfo){role, k->op, k->layer, k->flops, lk_bytes(k)};
      LLVMValueRef idv = LLVMConstInt(c->i32, id, 0);
      if (team && parallel[i] && serial_ran) {
        LLVMBuildCall2(c->b, barrier_t, runtime_fn(c, "xc_team_barrier", barrier_t), NULL, 0, "");
        serial_ran = false;
      }
      if (profiled)
        LLVMBuildCall2(c->b, prof_t, enter, &idv, 1, "");
      LLVMValueRef *args = xcalloc(nids[i] + 2, sizeof *args);
      for (int j = 0; j < nids[i]; j++)
        args[j] = addr[ids[i][j]];
      if (parallel[i]) {
        for (int j = 0; j < nids[i]; j++) {
          LLVMValueRef idx = LLVMConstInt(c->i64, j, 0);
          LLVMBuildStore(c->b, args[j], LLVMBuildInBoundsGEP2(c->b, c->ptr, ctx, &idx, 1, ""));
        }
        LLVMValueRef pargs[3] = {LLVMConstInt(c->i64, trip[i], 0), entry[i], ctx};
        LLVMBuildCall2(c->b, pfor_t, pfor, pargs, 3, "");
      } else {
        LLVMBasicBlockRef run = NULL, next = NULL;
        if (team) {
          run = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "serial");
          next = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "next");
          LLVMBuildCondBr(c->b, first, run, next);
          LLVMPositionBuilderAtEnd(c->b, run);
          serial_ran = true;
        }
        args[nids[i]] = args[nids[i] + 1] = LLVMConstInt(c->i64, 0, 0);
        LLVMBuildCall2(c->b, LLVMGlobalGetValueType(entry[i]), entry[i], args, nids[i] + 2, "");
        if (team) {
          LLVMBuildBr(c->b, next);
          LLVMPositionBuilderAtEnd(c->b, next);
        }
      }
      free(args);
      if (profiled)
        LLVMBuildCall2(c->b, prof_t, leave, &idv, 1, "");
    }
  if (team) { // the region's end waits for the whole team
    LLVMBuildRetVoid(c->b);
    c->fn = fn;
    LLVMPositionBuilderAtEnd(c->b, after);
  }

  // What the step returns, from its own arguments.
  const LBuf *out[2] = {f->result, f->logits};
  LLVMValueRef out_addr[2] = {NULL, NULL};
  for (int i = 0; i < 2; i++)
    if (out[i])
      out_addr[i] = buffer_address(c, f, lbuf_root(out[i]), step_arg, NULL);
  if (f->kind == FN_GRAD_STEP) {
    if (f->logits) // the training forward's logits, for the runtime's accuracy
      LLVMBuildMemCpy(c->b, step_arg[6], 4, out_addr[1], 4,
                      LLVMConstInt(c->i64, lbuf_bytes(f->logits), 0));
    LLVMBuildRet(c->b, LLVMBuildLoad2(c->b, c->f32, out_addr[0], "loss"));
  } else if (f->kind == FN_FORWARD) {
    LLVMBuildMemCpy(c->b, step_arg[6], 4, out_addr[0], 4,
                    LLVMConstInt(c->i64, lbuf_bytes(f->result), 0));
    LLVMBuildRetVoid(c->b);
  } else {
    LLVMBuildRetVoid(c->b);
  }
  for (int i = 0; i < f->nkernels; i++)
    free(ids[i]);
  free(ids), free(nids), free(trip), free(parallel), free(addr);
}

LLVMValueRef emit_lkernel(Cg *c, const LFunc *f, int i) {
  int *ids, n;
  int64_t trip;
  LLVMValueRef fn = emit_kernel(c, f, f->kernels[i], &ids, &n);
  free(ids);
  return is_parallel(f->kernels[i], &trip) ? emit_parallel_body(c, fn, n) : fn;
}

void emit_lfunc(Cg *c, const LFunc *f) {
  LLVMValueRef *entry = xcalloc(f->nkernels + 1, sizeof *entry);
  for (int i = 0; i < f->nkernels; i++)
    entry[i] = emit_lkernel(c, f, i);
  emit_step(c, f, entry);
  free(entry);
}

void emit_lstep(Cg *c, const LFunc *f, const char *const *symbol) {
  LLVMValueRef *entry = xcalloc(f->nkernels + 1, sizeof *entry);
  for (int i = 0; i < f->nkernels; i++) {
    LLVMValueRef fn = LLVMGetNamedFunction(c->mod, symbol[i]);
    if (!fn) {
      int *ids, *locals, n, nlocals;
      int64_t trip;
      kernel_buffers(f, f->kernels[i], &ids, &n, &locals, &nlocals);
      free(ids), free(locals);
      bool par = is_parallel(f->kernels[i], &trip);
      int np = par ? 3 : n + 2;
      LLVMTypeRef *params = xcalloc(np, sizeof *params);
      for (int j = 0; j < np; j++)
        params[j] = j < np - 2 ? c->ptr : c->i64;
      fn = LLVMAddFunction(c->mod, symbol[i], LLVMFunctionType(c->voidt, params, np, false));
      LLVMSetVisibility(fn, LLVMHiddenVisibility);
      add_attr(c, fn, LLVMAttributeFunctionIndex, "nounwind");
      free(params);
    }
    entry[i] = fn;
  }
  emit_step(c, f, entry);
  free(entry);
}

// LLVM IR for the kernels of loops.h, through the LLVM C API: one loop nest
// per op over constant shapes. Parallel kernels compute the part [lo, hi) of
// their outer loop, which always indexes disjoint outputs; codegen.c wraps
// them for the runtime's xc_parallel_for. Float arithmetic only, and every
// sum runs in an order fixed by the shapes alone, so results do not depend
// on the thread count, the optimization level or the target CPU.
#include "emit.h"

#include "dropout_hash.h"

#include <llvm-c/Analysis.h>
#include <llvm-c/Core.h>
#include <llvm-c/DebugInfo.h>
#include <math.h>
#include <string.h>

// --- Small builders ------------------------------------------------------------

static LLVMValueRef CI(Cg *c, int64_t v) { return LLVMConstInt(c->i64, (uint64_t)v, true); }
static LLVMValueRef CF(Cg *c, double v) { return LLVMConstReal(c->f32, v); }
static LLVMValueRef CD(Cg *c, double v) { return LLVMConstReal(c->f64, v); }
static LLVMValueRef ADD(Cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWAdd(c->b, a, b, ""); }
static LLVMValueRef SUB(Cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWSub(c->b, a, b, ""); }
static LLVMValueRef MUL(Cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWMul(c->b, a, b, ""); }
static LLVMValueRef MULI(Cg *c, LLVMValueRef a, int64_t k) { return MUL(c, a, CI(c, k)); }
static LLVMValueRef ADDI(Cg *c, LLVMValueRef a, int64_t k) { return ADD(c, a, CI(c, k)); }
static LLVMValueRef DIVI(Cg *c, LLVMValueRef a, int64_t k) { return LLVMBuildSDiv(c->b, a, CI(c, k), ""); }
static LLVMValueRef REMI(Cg *c, LLVMValueRef a, int64_t k) { return LLVMBuildSRem(c->b, a, CI(c, k), ""); }
static LLVMValueRef FADD(Cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildFAdd(c->b, a, b, ""); }
static LLVMValueRef FSUB(Cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildFSub(c->b, a, b, ""); }
static LLVMValueRef FMUL(Cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildFMul(c->b, a, b, ""); }
static LLVMValueRef FDIV(Cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildFDiv(c->b, a, b, ""); }
static LLVMValueRef FNEG(Cg *c, LLVMValueRef a) { return LLVMBuildFNeg(c->b, a, ""); }
static LLVMValueRef SEL(Cg *c, LLVMValueRef k, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(c->b, k, a, b, "");
}
static LLVMValueRef SMAX(Cg *c, LLVMValueRef a, LLVMValueRef b) {
  return SEL(c, LLVMBuildICmp(c->b, LLVMIntSGT, a, b, ""), a, b);
}
static LLVMValueRef SMIN(Cg *c, LLVMValueRef a, LLVMValueRef b) {
  return SEL(c, LLVMBuildICmp(c->b, LLVMIntSLT, a, b, ""), a, b);
}
static LLVMValueRef FGT(Cg *c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFCmp(c->b, LLVMRealOGT, a, b, "");
}

static LLVMValueRef intrinsic(Cg *c, const char *name, LLVMTypeRef t, LLVMValueRef *args, int n) {
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  ir_assert(id != 0);
  LLVMValueRef fn = LLVMGetIntrinsicDeclaration(c->mod, id, &t, 1);
  LLVMTypeRef ft = LLVMIntrinsicGetType(c->ctx, id, &t, 1);
  return LLVMBuildCall2(c->b, ft, fn, args, n, "");
}
static LLVMValueRef F1(Cg *c, const char *name, LLVMValueRef x) {
  return intrinsic(c, name, LLVMTypeOf(x), &x, 1);
}
static LLVMValueRef F2(Cg *c, const char *name, LLVMValueRef x, LLVMValueRef y) {
  LLVMValueRef a[2] = {x, y};
  return intrinsic(c, name, LLVMTypeOf(x), a, 2);
}
static LLVMValueRef EXP(Cg *c, LLVMValueRef x) { return F1(c, "llvm.exp", x); }
static LLVMValueRef LOG(Cg *c, LLVMValueRef x) { return F1(c, "llvm.log", x); }
static LLVMValueRef SQRT(Cg *c, LLVMValueRef x) { return F1(c, "llvm.sqrt", x); }
static LLVMValueRef FMAX(Cg *c, LLVMValueRef x, LLVMValueRef y) { return F2(c, "llvm.maxnum", x, y); }

static LLVMValueRef GEP(Cg *c, LLVMTypeRef t, LLVMValueRef p, LLVMValueRef i) {
  return LLVMBuildInBoundsGEP2(c->b, t, p, &i, 1, "");
}
static LLVMValueRef LD(Cg *c, LLVMValueRef p, LLVMValueRef i) {
  return LLVMBuildLoad2(c->b, c->f32, GEP(c, c->f32, p, i), "");
}
static void ST(Cg *c, LLVMValueRef p, LLVMValueRef i, LLVMValueRef v) {
  LLVMBuildStore(c->b, v, GEP(c, c->f32, p, i));
}
static LLVMValueRef LDI(Cg *c, LLVMValueRef p, LLVMValueRef i) { // i32 element, as i64
  LLVMValueRef v = LLVMBuildLoad2(c->b, c->i32, GEP(c, c->i32, p, i), "");
  return LLVMBuildSExt(c->b, v, c->i64, "");
}

// A float variable on the stack; mem2reg turns it into registers.
static LLVMValueRef VAR(Cg *c, LLVMValueRef init) {
  LLVMBasicBlockRef cur = LLVMGetInsertBlock(c->b);
  LLVMValueRef first = LLVMGetFirstInstruction(c->entry);
  if (first)
    LLVMPositionBuilderBefore(c->b, first);
  else
    LLVMPositionBuilderAtEnd(c->b, c->entry);
  LLVMValueRef v = LLVMBuildAlloca(c->b, LLVMTypeOf(init), "");
  LLVMPositionBuilderAtEnd(c->b, cur);
  LLVMBuildStore(c->b, init, v);
  return v;
}
// A float array of n elements on the stack (in the entry block).
static LLVMValueRef ROW(Cg *c, int64_t n) {
  LLVMBasicBlockRef cur = LLVMGetInsertBlock(c->b);
  LLVMValueRef first = LLVMGetFirstInstruction(c->entry);
  if (first)
    LLVMPositionBuilderBefore(c->b, first);
  else
    LLVMPositionBuilderAtEnd(c->b, c->entry);
  LLVMValueRef v = LLVMBuildAlloca(c->b, LLVMArrayType(c->f32, n), "row");
  LLVMSetAlignment(v, 64);
  LLVMPositionBuilderAtEnd(c->b, cur);
  return v;
}

static LLVMValueRef GET(Cg *c, LLVMValueRef var, LLVMTypeRef t) { return LLVMBuildLoad2(c->b, t, var, ""); }
static LLVMValueRef GETF(Cg *c, LLVMValueRef var) { return GET(c, var, c->f32); }
static void SET(Cg *c, LLVMValueRef var, LLVMValueRef v) { LLVMBuildStore(c->b, v, var); }
static void ACC(Cg *c, LLVMValueRef var, LLVMValueRef v) { SET(c, var, FADD(c, GETF(c, var), v)); }

// for (i = lo; i < hi; i++): loop_begin returns i, loop_end closes the loop.
typedef struct {
  LLVMValueRef phi;
  LLVMBasicBlockRef head, exit;
} Loop;

static Loop loop_begin(Cg *c, LLVMValueRef lo, LLVMValueRef hi, LLVMValueRef *i) {
  Loop l;
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(c->b);
  l.head = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "loop");
  LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "body");
  l.exit = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "done");
  LLVMBuildBr(c->b, l.head);
  LLVMPositionBuilderAtEnd(c->b, l.head);
  l.phi = LLVMBuildPhi(c->b, c->i64, "i");
  LLVMAddIncoming(l.phi, &lo, &pre, 1);
  LLVMBuildCondBr(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, l.phi, hi, ""), body, l.exit);
  LLVMPositionBuilderAtEnd(c->b, body);
  *i = l.phi;
  return l;
}

static void loop_end(Cg *c, Loop *l) {
  LLVMValueRef next = ADDI(c, l->phi, 1);
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(c->b);
  LLVMBuildBr(c->b, l->head);
  LLVMAddIncoming(l->phi, &next, &latch, 1);
  LLVMPositionBuilderAtEnd(c->b, l->exit);
}

// The same, but the loop carries llvm.loop.unroll.disable. Used on the
// innermost loops over an image row: fully unrolled (trip 28 and such),
// they would leave the row loop above innermost and LLVM would vectorize
// that one with gathers instead of this one with contiguous loads.
static void loop_end_vector(Cg *c, Loop *l) {
  LLVMValueRef next = ADDI(c, l->phi, 1);
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(c->b);
  LLVMValueRef br = LLVMBuildBr(c->b, l->head);
  LLVMAddIncoming(l->phi, &next, &latch, 1);
  const char *opt = "llvm.loop.unroll.disable";
  LLVMMetadataRef str = LLVMMDStringInContext2(c->ctx, opt, strlen(opt));
  LLVMMetadataRef hint = LLVMMDNodeInContext2(c->ctx, &str, 1);
  LLVMMetadataRef tmp = LLVMTemporaryMDNode(c->ctx, NULL, 0);
  LLVMMetadataRef ops[2] = {tmp, hint};
  LLVMMetadataRef loop = LLVMMDNodeInContext2(c->ctx, ops, 2);
  LLVMMetadataReplaceAllUsesWith(tmp, loop); // the loop ID refers to itself
  unsigned kind = LLVMGetMDKindIDInContext(c->ctx, "llvm.loop", 9);
  LLVMSetMetadata(br, kind, LLVMMetadataAsValue(c->ctx, loop));
  LLVMPositionBuilderAtEnd(c->b, l->exit);
}

#define FOR(c, var, lo, hi)                                                                        \
  for (LLVMValueRef var, *once_ = &var; once_; once_ = NULL)                                       \
    for (Loop L_##var = loop_begin(c, lo, hi, &var); once_; loop_end(c, &L_##var), once_ = NULL)
#define FORN(c, var, n) FOR(c, var, CI(c, 0), CI(c, n))
// A loop over an image row of `len` outputs: long rows keep their loop (see
// loop_end_vector); short ones are left to LLVM, which unrolls them fully and
// vectorizes across rows with the SLP vectorizer.
#define FOR_ROW(c, var, lo, hi, len)                                                               \
  for (LLVMValueRef var, *once_ = &var; once_; once_ = NULL)                                       \
    for (Loop L_##var = loop_begin(c, lo, hi, &var); once_;                                        \
         (len) >= 16 ? loop_end_vector(c, &L_##var) : loop_end(c, &L_##var), once_ = NULL)


// Output positions o in [0, out) whose input o*s - p + k falls inside [0, in).
static void window_range(Cg *c, LLVMValueRef k, int64_t s, int64_t p, int64_t in, int64_t out,
                         LLVMValueRef *lo, LLVMValueRef *hi) {
  // Without padding every output's window is inside: out = (in - K) / s + 1
  // gives (out - 1) * s + k <= in - 1 for every tap k < K.
  if (p == 0) {
    *lo = CI(c, 0);
    *hi = CI(c, out);
    return;
  }
  // lo = max(0, ceil((p - k) / s)); for p - k <= 0 the clamp makes truncation harmless.
  LLVMValueRef a = SUB(c, CI(c, p + s - 1), k);
  *lo = SMAX(c, CI(c, 0), DIVI(c, a, s));
  // hi = min(out, floor((in - 1 + p - k) / s) + 1), 0 when the numerator is negative.
  LLVMValueRef b = SUB(c, CI(c, in - 1 + p), k);
  LLVMValueRef h = SEL(c, LLVMBuildICmp(c->b, LLVMIntSLT, b, CI(c, 0), ""), CI(c, 0),
                       ADDI(c, DIVI(c, b, s), 1));
  *hi = SMIN(c, CI(c, out), h);
}

static int64_t numel(const Node *n) { return type_numel(&n->type); }
static const int64_t *ints(const Node *n, const char *a) { return node_attr(n, a)->ints; }

// --- Kernels -------------------------------------------------------------------
// Each emitter gets the output pointer O, the operand pointers X[], and for
// parallel kernels the outer range [lo, hi).

typedef struct {
  Node *n;
  LLVMValueRef O, X[6];
  LLVMValueRef lo, hi;
  bool relu; // apply relu to the output (a conv2d or linear with its relu fused)
} K;

// max(a, 0), keeping NaN like torch.relu; a is a float or a vector of them.
static LLVMValueRef relu(Cg *c, LLVMValueRef a) {
  LLVMValueRef zero = LLVMConstNull(LLVMTypeOf(a));
  LLVMValueRef v = SEL(c, FGT(c, a, zero), a, zero);
  return SEL(c, LLVMBuildFCmp(c->b, LLVMRealUNO, a, a, ""), a, v);
}

// --- Rows in registers ----------------------------------------------------------
// An image row of n floats kept in vector registers across a loop nest, as
// vectors of 8, 4, 2 and 1 lanes so that no load or store touches a float
// past the row. Each lane adds its terms in the order the loops give them,
// exactly as a float per element would: only the memory round trips go.

enum { ROW_MAX_CHUNKS = 64 };

typedef struct {
  int n;
  int64_t off[ROW_MAX_CHUNKS];
  int width[ROW_MAX_CHUNKS];
  LLVMValueRef var[ROW_MAX_CHUNKS]; // a VAR of <width x float>
} RegRow;

// Rows short of 16 floats stay with the stack rows: LLVM unrolls those loops
// completely and vectorizes across them, which measured faster (cifar10's
// conv2, rows of 10: 2x) than vectors of 8 and 2.
static bool reg_row_fits(int64_t len) { return len >= 16 && len / 8 + 3 <= ROW_MAX_CHUNKS; }

static LLVMValueRef splat(Cg *c, LLVMValueRef x, int w) {
  LLVMTypeRef vt = LLVMVectorType(c->f32, w);
  LLVMValueRef lane0 = LLVMConstInt(c->i32, 0, 0);
  LLVMValueRef v = LLVMBuildInsertElement(c->b, LLVMGetPoison(vt), x, lane0, "");
  return LLVMBuildShuffleVector(c->b, v, LLVMGetPoison(vt),
                                LLVMConstNull(LLVMVectorType(c->i32, w)), "");
}

// A row of len floats, every lane set to init (a float), at this point.
static RegRow reg_row(Cg *c, int64_t len, LLVMValueRef init) {
  RegRow r = {0};
  for (int64_t off = 0; off < len; r.n++) {
    int w = len - off >= 8 ? 8 : len - off >= 4 ? 4 : len - off >= 2 ? 2 : 1;
    r.off[r.n] = off;
    r.width[r.n] = w;
    r.var[r.n] = VAR(c, splat(c, init, w));
    off += w;
  }
  return r;
}

// The floats p[i + off .. i + off + w) as a vector (unaligned).
static LLVMValueRef VLD(Cg *c, LLVMValueRef p, LLVMValueRef i, int64_t off, int w) {
  LLVMValueRef at = GEP(c, c->f32, p, ADDI(c, i, off));
  LLVMValueRef v = LLVMBuildLoad2(c->b, LLVMVectorType(c->f32, w), at, "");
  LLVMSetAlignment(v, 4);
  return v;
}

static void VST(Cg *c, LLVMValueRef p, LLVMValueRef i, int64_t off, LLVMValueRef v) {
  LLVMValueRef st = LLVMBuildStore(c->b, v, GEP(c, c->f32, p, ADDI(c, i, off)));
  LLVMSetAlignment(st, 4);
}

// The sliding window of a conv2d or a pool: input planes H x W, output
// planes HO x WO, kernel KH x KW, stride and padding per axis.
typedef struct {
  int64_t H, W, HO, WO, KH, KW, s0, s1, p0, p1;
} Window;

// A conv2d's, from its input x, weight w [O,C,KH,KW] and output y.
static Window conv_window(Node *n, const Type *x, const Type *w, const Type *y) {
  const int64_t *s = ints(n, "stride"), *p = ints(n, "padding");
  return (Window){x->dim[2], x->dim[3], y->dim[2], y->dim[3], w->dim[2], w->dim[3],
                  s[0], s[1], p[0], p[1]};
}

// One filter w[KH,KW] between an input plane x and an output plane y:
//   forward     y[oh,ow] += w[kh,kw] * x[oh*s0 - p0 + kh, ow*s1 - p1 + kw]
//   transposed  x[...]   += w[kh,kw] * y[oh,ow]   (conv2d_grad_input)
// Both walk the windows the same way: for each tap, the output rows and
// columns whose input falls inside the plane, whole rows at a time so the
// innermost loop is contiguous in the output.
static void emit_conv_plane(Cg *c, const Window *g, LLVMValueRef w, LLVMValueRef x,
                            LLVMValueRef y, bool transposed) {
  FORN(c, kh, g->KH) {
    LLVMValueRef ohl, ohh;
    window_range(c, kh, g->s0, g->p0, g->H, g->HO, &ohl, &ohh);
    FORN(c, kw, g->KW) {
      LLVMValueRef owl, owh;
      window_range(c, kw, g->s1, g->p1, g->W, g->WO, &owl, &owh);
      LLVMValueRef wv = LD(c, w, ADD(c, MULI(c, kh, g->KW), kw));
      FOR(c, oh, ohl, ohh) {
        LLVMValueRef ih = ADD(c, ADDI(c, MULI(c, oh, g->s0), -g->p0), kh);
        LLVMValueRef yr = GEP(c, c->f32, y, MULI(c, oh, g->WO));
        LLVMValueRef xr = GEP(c, c->f32, x, ADD(c, MULI(c, ih, g->W), ADDI(c, kw, -g->p1)));
        FOR_ROW(c, ow, owl, owh, g->WO) {
          LLVMValueRef j = MULI(c, ow, g->s1);
          if (transposed)
            ST(c, xr, j, FADD(c, LD(c, xr, j), FMUL(c, wv, LD(c, yr, ow))));
          else
            ST(c, yr, ow, FADD(c, LD(c, yr, ow), FMUL(c, wv, LD(c, xr, j))));
        }
      }
    }
  }
}

// Stride 1, no padding: each output row is summed in registers over every
// (c, kh, kw), in that order, and stored once.
static void emit_conv2d_rows(Cg *c, K *k, const Window *g, int64_t C, int64_t O) {
  Node *n = k->n;
  FOR(c, idx, k->lo, k->hi) {
    LLVMValueRef b = DIVI(c, idx, O), o = REMI(c, idx, O);
    LLVMValueRef y = GEP(c, c->f32, k->O, MULI(c, idx, g->HO * g->WO));
    LLVMValueRef init = n->nin == 3 ? LD(c, k->X[2], o) : CF(c, 0);
    FORN(c, oh, g->HO) {
      RegRow acc = reg_row(c, g->WO, init);
      FORN(c, ch, C) {
        LLVMValueRef x = GEP(c, c->f32, k->X[0], MULI(c, ADD(c, MULI(c, b, C), ch), g->H * g->W));
        LLVMValueRef w = GEP(c, c->f32, k->X[1], MULI(c, ADD(c, MULI(c, o, C), ch), g->KH * g->KW));
        FORN(c, kh, g->KH) {
          LLVMValueRef xr = GEP(c, c->f32, x, MULI(c, ADD(c, oh, kh), g->W));
          FORN(c, kw, g->KW) {
            LLVMValueRef wv = LD(c, w, ADD(c, MULI(c, kh, g->KW), kw));
            for (int j = 0; j < acc.n; j++) {
              LLVMValueRef xv = VLD(c, xr, kw, acc.off[j], acc.width[j]);
              LLVMValueRef prod = FMUL(c, splat(c, wv, acc.width[j]), xv);
              SET(c, acc.var[j], FADD(c, GET(c, acc.var[j], LLVMTypeOf(prod)), prod));
            }
          }
        }
      }
      for (int j = 0; j < acc.n; j++) {
        LLVMValueRef v = GET(c, acc.var[j], LLVMVectorType(c->f32, acc.width[j]));
        VST(c, y, MULI(c, oh, g->WO), acc.off[j], k->relu ? relu(c, v) : v);
      }
    }
  }
}

// conv2d: y[n,o] = b[o] + sum over c of the filter w[o,c] applied to x[n,c].
static void emit_conv2d(Cg *c, K *k) {
  Node *n = k->n;
  const Type *xt = &n->in[0]->type, *wt = &n->in[1]->type;
  Window g = conv_window(n, xt, wt, &n->type);
  int64_t C = xt->dim[1], O = wt->dim[0];
  if (g.s0 == 1 && g.s1 == 1 && g.p0 == 0 && g.p1 == 0 && reg_row_fits(g.WO))
    return emit_conv2d_rows(c, k, &g, C, O);
  FOR(c, idx, k->lo, k->hi) {
    LLVMValueRef b = DIVI(c, idx, O), o = REMI(c, idx, O);
    LLVMValueRef y = GEP(c, c->f32, k->O, MULI(c, idx, g.HO * g.WO));
    LLVMValueRef init = n->nin == 3 ? LD(c, k->X[2], o) : CF(c, 0);
    FORN(c, i, g.HO * g.WO) ST(c, y, i, init);
    FORN(c, ch, C) {
      LLVMValueRef x = GEP(c, c->f32, k->X[0], MULI(c, ADD(c, MULI(c, b, C), ch), g.H * g.W));
      LLVMValueRef w = GEP(c, c->f32, k->X[1], MULI(c, ADD(c, MULI(c, o, C), ch), g.KH * g.KW));
      emit_conv_plane(c, &g, w, x, y, false);
    }
    if (k->relu)
      FORN(c, i, g.HO * g.WO) ST(c, y, i, relu(c, LD(c, y, i)));
  }
}

// dx[n,c] = sum over o of the filter w[o,c] applied transposed to dy[n,o].
static void emit_conv2d_grad_input(Cg *c, K *k) {
  Node *n = k->n;
  const Type *dt = &n->in[0]->type, *wt = &n->in[1]->type;
  Window g = conv_window(n, &n->type, wt, dt);
  int64_t C = n->type.dim[1], O = wt->dim[0];
  FOR(c, idx, k->lo, k->hi) {
    LLVMValueRef b = DIVI(c, idx, C), ch = REMI(c, idx, C);
    LLVMValueRef dx = GEP(c, c->f32, k->O, MULI(c, idx, g.H * g.W));
    FORN(c, i, g.H * g.W) ST(c, dx, i, CF(c, 0));
    FORN(c, o, O) {
      LLVMValueRef dy = GEP(c, c->f32, k->X[0], MULI(c, ADD(c, MULI(c, b, O), o), g.HO * g.WO));
      LLVMValueRef w = GEP(c, c->f32, k->X[1], MULI(c, ADD(c, MULI(c, o, C), ch), g.KH * g.KW));
      emit_conv_plane(c, &g, w, dx, dy, true);
    }
  }
}

enum { MAX_KW = 16 }; // kernel widths whose row of taps is kept in registers

// Stride 1, no padding: the partial sums of a tap stay in registers, those
// of a whole kernel row (kw = 0 .. KW-1) at once, so each sample's dy row
// is loaded once for KW taps and the planes pass through the caches KH
// times per (o, c) instead of KH * KW times.
static void emit_conv2d_grad_weight_rows(Cg *c, K *k, const Window *g, int64_t N, int64_t C,
                                         int64_t O) {
  FOR(c, idx, k->lo, k->hi) {
    LLVMValueRef o = DIVI(c, idx, C), ch = REMI(c, idx, C);
    LLVMValueRef dw = GEP(c, c->f32, k->O, MULI(c, idx, g->KH * g->KW));
    FORN(c, kh, g->KH) {
      RegRow part[MAX_KW];
      for (int kw = 0; kw < g->KW; kw++)
        part[kw] = reg_row(c, g->WO, CF(c, 0));
      FORN(c, b, N) {
        LLVMValueRef plane = ADD(c, MULI(c, b, O), o);
        LLVMValueRef dy = GEP(c, c->f32, k->X[0], MULI(c, plane, g->HO * g->WO));
        LLVMValueRef x = GEP(c, c->f32, k->X[1], MULI(c, ADD(c, MULI(c, b, C), ch), g->H * g->W));
        FORN(c, oh, g->HO) {
          LLVMValueRef dyr = GEP(c, c->f32, dy, MULI(c, oh, g->WO));
          LLVMValueRef xr = GEP(c, c->f32, x, MULI(c, ADD(c, oh, kh), g->W));
          for (int j = 0; j < part[0].n; j++) {
            int w = part[0].width[j];
            LLVMValueRef dv = VLD(c, dyr, CI(c, 0), part[0].off[j], w);
            for (int kw = 0; kw < g->KW; kw++) {
              LLVMValueRef prod = FMUL(c, dv, VLD(c, xr, CI(c, kw), part[kw].off[j], w));
              SET(c, part[kw].var[j], FADD(c, GET(c, part[kw].var[j], LLVMTypeOf(prod)), prod));
            }
          }
        }
      }
      for (int kw = 0; kw < g->KW; kw++) {
        LLVMValueRef acc = CF(c, 0);
        for (int j = 0; j < part[kw].n; j++) {
          LLVMValueRef v = GET(c, part[kw].var[j], LLVMVectorType(c->f32, part[kw].width[j]));
          for (int l = 0; l < part[kw].width[j]; l++)
            acc = FADD(c, acc, LLVMBuildExtractElement(c->b, v, LLVMConstInt(c->i32, l, 0), ""));
        }
        ST(c, dw, ADDI(c, MULI(c, kh, g->KW), kw), acc);
      }
    }
  }
}

// dw[o,c,kh,kw] = sum over n, oh, ow of dy[n,o,oh,ow] * x[n,c,ih,iw]. The sum
// keeps one partial sum per output column ow (a row of WO floats on the
// stack), so the innermost loop is elementwise and vectorizes without
// reordering any addition; the row is added up in order at the end.
static void emit_conv2d_grad_weight(Cg *c, K *k) {
  Node *n = k->n;
  const Type *dt = &n->in[0]->type, *xt = &n->in[1]->type;
  Window g = conv_window(n, xt, &n->type, dt);
  int64_t N = xt->dim[0], C = xt->dim[1], O = dt->dim[1];
  if (g.s0 == 1 && g.s1 == 1 && g.p0 == 0 && g.p1 == 0 && reg_row_fits(g.WO) && g.KW <= MAX_KW)
    return emit_conv2d_grad_weight_rows(c, k, &g, N, C, O);
  LLVMValueRef part = ROW(c, g.WO);
  FOR(c, idx, k->lo, k->hi) {
    LLVMValueRef o = DIVI(c, idx, C), ch = REMI(c, idx, C);
    LLVMValueRef dw = GEP(c, c->f32, k->O, MULI(c, idx, g.KH * g.KW));
    FORN(c, kh, g.KH) {
      LLVMValueRef ohl, ohh;
      window_range(c, kh, g.s0, g.p0, g.H, g.HO, &ohl, &ohh);
      FORN(c, kw, g.KW) {
        LLVMValueRef owl, owh;
        window_range(c, kw, g.s1, g.p1, g.W, g.WO, &owl, &owh);
        FORN(c, i, g.WO) ST(c, part, i, CF(c, 0));
        FORN(c, b, N) {
          LLVMValueRef dy = GEP(c, c->f32, k->X[0], MULI(c, ADD(c, MULI(c, b, O), o), g.HO * g.WO));
          LLVMValueRef x = GEP(c, c->f32, k->X[1], MULI(c, ADD(c, MULI(c, b, C), ch), g.H * g.W));
          FOR(c, oh, ohl, ohh) {
            LLVMValueRef ih = ADD(c, ADDI(c, MULI(c, oh, g.s0), -g.p0), kh);
            LLVMValueRef dyr = GEP(c, c->f32, dy, MULI(c, oh, g.WO));
            LLVMValueRef xr = GEP(c, c->f32, x, ADD(c, MULI(c, ih, g.W), ADDI(c, kw, -g.p1)));
            FOR_ROW(c, ow, owl, owh, g.WO) {
              LLVMValueRef prod = FMUL(c, LD(c, dyr, ow), LD(c, xr, MULI(c, ow, g.s1)));
              ST(c, part, ow, FADD(c, LD(c, part, ow), prod));
            }
          }
        }
        LLVMValueRef acc = VAR(c, CF(c, 0));
        FORN(c, i, g.WO) ACC(c, acc, LD(c, part, i));
        ST(c, dw, ADD(c, MULI(c, kh, g.KW), kw), GETF(c, acc));
      }
    }
  }
}

// Pooling over one (n, c) plane per outer index. The window of output
// (oh, ow) is clipped to the input; padding never wins a max and counts as
// zero in the average (count_include_pad=True divides by the full kernel).
static Window pool_window(Node *n, const Type *x) {
  Window p = {x->dim[2], x->dim[3], 0, 0, ints(n, "kernel")[0], ints(n, "kernel")[1],
              ints(n, "stride")[0], ints(n, "stride")[1], ints(n, "padding")[0],
              ints(n, "padding")[1]};
  p.HO = (p.H + 2 * p.p0 - p.KH) / p.s0 + 1;
  p.WO = (p.W + 2 * p.p1 - p.KW) / p.s1 + 1;
  return p;
}

// The window rows [khl, khh) and columns [kwl, kwh) of output (oh, ow)
// that fall inside the input.
static void pool_clip(Cg *c, const Window *p, LLVMValueRef oh, LLVMValueRef ow, LLVMValueRef *khl,
                      LLVMValueRef *khh, LLVMValueRef *kwl, LLVMValueRef *kwh) {
  LLVMValueRef h0 = ADDI(c, MULI(c, oh, p->s0), -p->p0), w0 = ADDI(c, MULI(c, ow, p->s1), -p->p1);
  *khl = SMAX(c, CI(c, 0), SUB(c, CI(c, 0), h0));
  *khh = SMIN(c, CI(c, p->KH), SUB(c, CI(c, p->H), h0));
  *kwl = SMAX(c, CI(c, 0), SUB(c, CI(c, 0), w0));
  *kwh = SMIN(c, CI(c, p->KW), SUB(c, CI(c, p->W), w0));
}

static void emit_pool(Cg *c, K *k, bool is_max, bool grad) {
  Node *n = k->n;
  const Type *xt = grad ? &n->in[1]->type : &n->in[0]->type;
  Window p = pool_window(n, xt);
  FOR(c, idx, k->lo, k->hi) {
    LLVMValueRef x = GEP(c, c->f32, grad ? k->X[1] : k->X[0], MULI(c, idx, p.H * p.W));
    LLVMValueRef y = GEP(c, c->f32, grad ? k->X[0] : k->O, MULI(c, idx, p.HO * p.WO));
    LLVMValueRef dx = grad ? GEP(c, c->f32, k->O, MULI(c, idx, p.H * p.W)) : NULL;
    if (grad)
      FORN(c, i, p.H * p.W) ST(c, dx, i, CF(c, 0));
    FORN(c, oh, p.HO) FORN(c, ow, p.WO) {
      LLVMValueRef khl, khh, kwl, kwh;
      pool_clip(c, &p, oh, ow, &khl, &khh, &kwl, &kwh);
      LLVMValueRef base =
          ADD(c, MULI(c, ADDI(c, MULI(c, oh, p.s0), -p.p0), p.W), ADDI(c, MULI(c, ow, p.s1), -p.p1));
      LLVMValueRef yi = ADD(c, MULI(c, oh, p.WO), ow);
      if (is_max) {
        // First maximum wins, as in PyTorch: replace only on a strict >.
        LLVMValueRef best = VAR(c, CF(c, -INFINITY));
        LLVMValueRef arg = VAR(c, CI(c, -1));
        FOR(c, kh, khl, khh) FOR(c, kw, kwl, kwh) {
          LLVMValueRef j = ADD(c, base, ADD(c, MULI(c, kh, p.W), kw));
          LLVMValueRef v = LD(c, x, j);
          LLVMValueRef bv = GETF(c, best);
          LLVMValueRef a = GET(c, arg, c->i64);
          // NaN propagates like PyTorch's max: a NaN is taken and kept.
          LLVMValueRef take = LLVMBuildOr(
              c->b, LLVMBuildFCmp(c->b, LLVMRealUGT, v, bv, ""),
              LLVMBuildICmp(c->b, LLVMIntSLT, a, CI(c, 0), ""), "");
          take = LLVMBuildAnd(c->b, take, LLVMBuildFCmp(c->b, LLVMRealORD, bv, bv, ""), "");
          SET(c, best, SEL(c, take, v, bv));
          SET(c, arg, SEL(c, take, j, a));
        }
        if (!grad) {
          ST(c, y, yi, GETF(c, best));
        } else {
          LLVMValueRef j = GET(c, arg, c->i64);
          ST(c, dx, j, FADD(c, LD(c, dx, j), LD(c, y, yi)));
        }
      } else {
        if (!grad) {
          LLVMValueRef acc = VAR(c, CF(c, 0));
          FOR(c, kh, khl, khh) FOR(c, kw, kwl, kwh)
            ACC(c, acc, LD(c, x, ADD(c, base, ADD(c, MULI(c, kh, p.W), kw))));
          ST(c, y, yi, FDIV(c, GETF(c, acc), CF(c, (double)(p.KH * p.KW))));
        } else {
          LLVMValueRef g = FDIV(c, LD(c, y, yi), CF(c, (double)(p.KH * p.KW)));
          FOR(c, kh, khl, khh) FOR(c, kw, kwl, kwh) {
            LLVMValueRef j = ADD(c, base, ADD(c, MULI(c, kh, p.W), kw));
            ST(c, dx, j, FADD(c, LD(c, dx, j), g));
          }
        }
      }
    }
  }
}

// sum_i a[i] * b[i] over 16 lanes: lane j adds up the elements i = j mod 16
// in order, then the lanes are added in order. Vectorizes without letting
// LLVM reorder additions, so the result does not depend on the target.
enum { LANES = 16 };
static LLVMValueRef dot(Cg *c, LLVMValueRef part, LLVMValueRef a, LLVMValueRef b, int64_t len) {
  FORN(c, j, LANES) ST(c, part, j, CF(c, 0));
  FORN(c, blk, len / LANES) {
    LLVMValueRef base = MULI(c, blk, LANES);
    FORN(c, j, LANES) {
      LLVMValueRef i = ADD(c, base, j);
      ST(c, part, j, FADD(c, LD(c, part, j), FMUL(c, LD(c, a, i), LD(c, b, i))));
    }
  }
  FORN(c, j, len % LANES) {
    LLVMValueRef i = ADDI(c, j, len / LANES * LANES);
    ST(c, part, j, FADD(c, LD(c, part, j), FMUL(c, LD(c, a, i), LD(c, b, i))));
  }
  LLVMValueRef acc = VAR(c, CF(c, 0));
  FORN(c, j, LANES) ACC(c, acc, LD(c, part, j));
  return GETF(c, acc);
}

// y[n,m] = b[m] + sum_k x[n,k] * w[m,k]
static void emit_linear(Cg *c, K *k) {
  Node *n = k->n;
  int64_t K_ = n->in[0]->type.dim[1], M = n->type.dim[1];
  LLVMValueRef part = ROW(c, LANES);
  FOR(c, row, k->lo, k->hi) FORN(c, m, M) {
    LLVMValueRef x = GEP(c, c->f32, k->X[0], MULI(c, row, K_));
    LLVMValueRef w = GEP(c, c->f32, k->X[1], MULI(c, m, K_));
    LLVMValueRef v = dot(c, part, x, w, K_);
    if (n->nin == 3)
      v = FADD(c, v, LD(c, k->X[2], m));
    if (k->relu)
      v = relu(c, v);
    ST(c, k->O, ADD(c, MULI(c, row, M), m), v);
  }
}

// dx[n,:] = sum_m dy[n,m] * w[m,:]
static void emit_linear_grad_input(Cg *c, K *k) {
  Node *n = k->n;
  int64_t M = n->in[0]->type.dim[1], K_ = n->type.dim[1];
  FOR(c, row, k->lo, k->hi) {
    LLVMValueRef dx = GEP(c, c->f32, k->O, MULI(c, row, K_));
    FORN(c, i, K_) ST(c, dx, i, CF(c, 0));
    FORN(c, m, M) {
      LLVMValueRef g = LD(c, k->X[0], ADD(c, MULI(c, row, M), m));
      LLVMValueRef w = GEP(c, c->f32, k->X[1], MULI(c, m, K_));
      FORN(c, i, K_) ST(c, dx, i, FADD(c, LD(c, dx, i), FMUL(c, g, LD(c, w, i))));
    }
  }
}

// dw[m,:] = sum_n dy[n,m] * x[n,:]; split over m so threads never share a row.
static void emit_linear_grad_weight(Cg *c, K *k) {
  Node *n = k->n;
  int64_t N = n->in[0]->type.dim[0], M = n->in[0]->type.dim[1], K_ = n->type.dim[1];
  FOR(c, m, k->lo, k->hi) {
    LLVMValueRef dw = GEP(c, c->f32, k->O, MULI(c, m, K_));
    FORN(c, i, K_) ST(c, dw, i, CF(c, 0));
    FORN(c, b, N) {
      LLVMValueRef g = LD(c, k->X[0], ADD(c, MULI(c, b, M), m));
      LLVMValueRef x = GEP(c, c->f32, k->X[1], MULI(c, b, K_));
      FORN(c, i, K_) ST(c, dw, i, FADD(c, LD(c, dw, i), FMUL(c, g, LD(c, x, i))));
    }
  }
}

// Per-channel sums over [N, C, S...] into acc, in (n, s) order, of x (mode
// 0), (x - mean)^2 (mode 1) or y * (x - mean) * rstd (mode 2).
static void channel_sum(Cg *c, LLVMValueRef x, LLVMValueRef y, const Type *t, LLVMValueRef ch,
                        LLVMValueRef acc, LLVMValueRef mean, LLVMValueRef rstd, int mode) {
  int64_t N = t->dim[0], C = t->dim[1], S = type_numel(t) / (N * C);
  FORN(c, b, N) {
    LLVMValueRef off = MULI(c, ADD(c, MULI(c, b, C), ch), S);
    FORN(c, i, S) {
      LLVMValueRef j = ADD(c, off, i);
      LLVMValueRef v = LD(c, x, j);
      switch (mode) {
      case 0: // sum x
        ACC(c, acc, v);
        break;
      case 1: { // sum (x - mean)^2
        LLVMValueRef d = FSUB(c, v, mean);
        ACC(c, acc, FMUL(c, d, d));
        break;
      }
      case 2: // sum dy * xhat, dy in y
        ACC(c, acc, FMUL(c, LD(c, y, j), FMUL(c, FSUB(c, v, mean), rstd)));
        break;
      }
    }
  }
}

static LLVMValueRef channel_mean(Cg *c, LLVMValueRef x, const Type *t, LLVMValueRef ch) {
  int64_t M = type_numel(t) / t->dim[1];
  LLVMValueRef acc = VAR(c, CF(c, 0));
  channel_sum(c, x, NULL, t, ch, acc, NULL, NULL, 0);
  return FDIV(c, GETF(c, acc), CF(c, (double)M));
}

static LLVMValueRef channel_var(Cg *c, LLVMValueRef x, const Type *t, LLVMValueRef ch,
                                LLVMValueRef mean, bool unbiased) {
  int64_t M = type_numel(t) / t->dim[1];
  LLVMValueRef acc = VAR(c, CF(c, 0));
  channel_sum(c, x, NULL, t, ch, acc, mean, NULL, 1);
  return FDIV(c, GETF(c, acc), CF(c, (double)(unbiased ? M - 1 : M)));
}

// y = (x - mean) * rstd * gamma + beta over every element of channel ch.
static void bn_apply(Cg *c, K *k, const Type *t, LLVMValueRef ch, LLVMValueRef mean,
                     LLVMValueRef rstd) {
  int64_t N = t->dim[0], C = t->dim[1], S = type_numel(t) / (N * C);
  LLVMValueRef g = LD(c, k->X[1], ch), be = LD(c, k->X[2], ch);
  FORN(c, b, N) {
    LLVMValueRef off = MULI(c, ADD(c, MULI(c, b, C), ch), S);
    FORN(c, i, S) {
      LLVMValueRef j = ADD(c, off, i);
      ST(c, k->O, j, FADD(c, FMUL(c, FMUL(c, FSUB(c, LD(c, k->X[0], j), mean), rstd), g), be));
    }
  }
}

static void emit_batchnorm(Cg *c, K *k) {
  Node *n = k->n;
  const Type *t = &n->in[0]->type;
  bool has_eps = op_attr_index(n->op, "eps") >= 0;
  float eps = has_eps ? (float)node_float(n, "eps") : 0.0f;
  int64_t N = t->dim[0], C = t->dim[1], S = type_numel(t) / (N * C), M = N * S;
  FORN(c, ch, C) {
    LLVMValueRef mean, var;
    switch (n->op) {
    case OP_batchnorm2d:
      mean = channel_mean(c, k->X[0], t, ch);
      var = channel_var(c, k->X[0], t, ch, mean, false);
      bn_apply(c, k, t, ch, mean, FDIV(c, CF(c, 1), SQRT(c, FADD(c, var, CF(c, eps)))));
      break;
    case OP_batchnorm2d_infer:
      mean = LD(c, k->X[3], ch);
      var = LD(c, k->X[4], ch);
      bn_apply(c, k, t, ch, mean, FDIV(c, CF(c, 1), SQRT(c, FADD(c, var, CF(c, eps)))));
      break;
    case OP_channel_mean:
      ST(c, k->O, ch, channel_mean(c, k->X[0], t, ch));
      break;
    case OP_channel_var:
      mean = channel_mean(c, k->X[0], t, ch);
      ST(c, k->O, ch, channel_var(c, k->X[0], t, ch, mean, node_int(n, "unbiased") != 0));
      break;
    case OP_bias_grad: {
      LLVMValueRef acc = VAR(c, CF(c, 0));
      channel_sum(c, k->X[0], NULL, t, ch, acc, NULL, NULL, 0);
      ST(c, k->O, ch, GETF(c, acc));
      break;
    }
    case OP_batchnorm2d_grad_gamma:
    case OP_batchnorm2d_grad_input: {
      // (dy, x[, gamma]): xhat = (x - mean) * rstd with batch statistics;
      // dx = gamma * rstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat)).
      const Type *xt = &n->in[1]->type;
      mean = channel_mean(c, k->X[1], xt, ch);
      var = channel_var(c, k->X[1], xt, ch, mean, false);
      LLVMValueRef rstd = FDIV(c, CF(c, 1), SQRT(c, FADD(c, var, CF(c, eps))));
      LLVMValueRef sdx = VAR(c, CF(c, 0));
      channel_sum(c, k->X[1], k->X[0], xt, ch, sdx, mean, rstd, 2);
      if (n->op == OP_batchnorm2d_grad_gamma) {
        ST(c, k->O, ch, GETF(c, sdx));
        break;
      }
      LLVMValueRef sd = VAR(c, CF(c, 0));
      channel_sum(c, k->X[0], NULL, xt, ch, sd, NULL, NULL, 0);
      LLVMValueRef sdy = GETF(c, sd), sdyx = GETF(c, sdx);
      LLVMValueRef scale = FDIV(c, FMUL(c, LD(c, k->X[2], ch), rstd), CF(c, (double)M));
      FORN(c, b, N) {
        LLVMValueRef off = MULI(c, ADD(c, MULI(c, b, C), ch), S);
        FORN(c, i, S) {
          LLVMValueRef j = ADD(c, off, i);
          LLVMValueRef xhat = FMUL(c, FSUB(c, LD(c, k->X[1], j), mean), rstd);
          LLVMValueRef v = FSUB(c, FSUB(c, FMUL(c, CF(c, (double)M), LD(c, k->X[0], j)), sdy),
                                FMUL(c, xhat, sdyx));
          ST(c, k->O, j, FMUL(c, scale, v));
        }
      }
      break;
    }
    default:
      unreachable();
    }
  }
}

// Row-wise softmax family over [N, C].
static void emit_rowwise(Cg *c, K *k) {
  Node *n = k->n;
  int64_t N = n->type.dim[0], C = n->type.dim[1];
  FORN(c, row, N) {
    LLVMValueRef off = MULI(c, row, C);
    LLVMValueRef x = GEP(c, c->f32, k->X[0], off), y = GEP(c, c->f32, k->O, off);
    if (n->op == OP_softmax || n->op == OP_log_softmax) {
      LLVMValueRef mx = VAR(c, CF(c, -INFINITY));
      FORN(c, i, C) SET(c, mx, FMAX(c, GETF(c, mx), LD(c, x, i)));
      LLVMValueRef m = GETF(c, mx);
      LLVMValueRef sum = VAR(c, CF(c, 0));
      FORN(c, i, C) ACC(c, sum, EXP(c, FSUB(c, LD(c, x, i), m)));
      LLVMValueRef s = GETF(c, sum);
      if (n->op == OP_softmax) {
        FORN(c, i, C) ST(c, y, i, FDIV(c, EXP(c, FSUB(c, LD(c, x, i), m)), s));
      } else {
        LLVMValueRef ls = LOG(c, s);
        FORN(c, i, C) ST(c, y, i, FSUB(c, FSUB(c, LD(c, x, i), m), ls));
      }
    } else {
      LLVMValueRef yv = GEP(c, c->f32, k->X[1], off); // (dy, y)
      LLVMValueRef sum = VAR(c, CF(c, 0));
      if (n->op == OP_softmax_grad) {
        FORN(c, i, C) ACC(c, sum, FMUL(c, LD(c, x, i), LD(c, yv, i)));
        LLVMValueRef s = GETF(c, sum);
        FORN(c, i, C) ST(c, y, i, FMUL(c, LD(c, yv, i), FSUB(c, LD(c, x, i), s)));
      } else {
        FORN(c, i, C) ACC(c, sum, LD(c, x, i));
        LLVMValueRef s = GETF(c, sum);
        FORN(c, i, C) ST(c, y, i, FSUB(c, LD(c, x, i), FMUL(c, EXP(c, LD(c, yv, i)), s)));
      }
    }
  }
}

// Cross-entropy on log-probabilities, PyTorch 1.13 (mean reduction):
//   W = sum_n w[y_n] (N without weights)
//   loss = (1-ls) * sum_n -w[y_n] logp[n,y_n] / W + ls/C * sum_n sum_c -w[c] logp[n,c] / W
// The fused op computes log_softmax of each row on the fly (max, then
// log-sum-exp), as log_softmax does. Rows labelled -100 (ignore_index, the
// runtime's padding) are left out of both sums and of W, as in PyTorch.
static LLVMValueRef weight_of(Cg *c, K *k, int wi, LLVMValueRef cls) {
  return k->n->nin > wi ? LD(c, k->X[wi], cls) : CF(c, 1);
}

// Row's label, 0 for an ignored row, and whether the row counts.
static LLVMValueRef row_label(Cg *c, K *k, int label, LLVMValueRef row, LLVMValueRef *counts) {
  LLVMValueRef y = LDI(c, k->X[label], row);
  *counts = LLVMBuildICmp(c->b, LLVMIntSGE, y, CI(c, 0), "");
  return SEL(c, *counts, y, CI(c, 0));
}

static LLVMValueRef ce_denominator(Cg *c, K *k, int label, int wi, int64_t N) {
  LLVMValueRef W = VAR(c, CF(c, 0));
  FORN(c, row, N) {
    LLVMValueRef counts, y = row_label(c, k, label, row, &counts);
    ACC(c, W, SEL(c, counts, weight_of(c, k, wi, y), CF(c, 0)));
  }
  return GETF(c, W);
}

// The max and log-sum-exp of one row of logits: logp[i] = x[i] - m - lse.
static void row_stats(Cg *c, LLVMValueRef x, int64_t C, LLVMValueRef *m, LLVMValueRef *lse) {
  LLVMValueRef mx = VAR(c, CF(c, -INFINITY));
  FORN(c, i, C) SET(c, mx, FMAX(c, GETF(c, mx), LD(c, x, i)));
  *m = GETF(c, mx);
  LLVMValueRef sum = VAR(c, CF(c, 0));
  FORN(c, i, C) ACC(c, sum, EXP(c, FSUB(c, LD(c, x, i), *m)));
  *lse = LOG(c, GETF(c, sum));
}

static void emit_ce(Cg *c, K *k) {
  Node *n = k->n;
  bool grad = n->op == OP_nll_loss_grad || n->op == OP_softmax_cross_entropy_grad;
  bool fused = n->op == OP_softmax_cross_entropy || n->op == OP_softmax_cross_entropy_grad;
  int xi = grad ? 1 : 0, li = xi + 1, wi = xi + 2;
  const Type *t = &n->in[xi]->type;
  int64_t N = t->dim[0], C = t->dim[1];
  float ls = (float)node_float(n, "label_smoothing");
  LLVMValueRef W = ce_denominator(c, k, li, wi, N);
  LLVMValueRef sumw = CF(c, (double)C);
  if (n->nin > wi) {
    LLVMValueRef s = VAR(c, CF(c, 0));
    FORN(c, i, C) ACC(c, s, LD(c, k->X[wi], i));
    sumw = GETF(c, s);
  }
  if (!grad) {
    LLVMValueRef nll = VAR(c, CF(c, 0)), smooth = VAR(c, CF(c, 0));
    FORN(c, row, N) {
      LLVMValueRef x = GEP(c, c->f32, k->X[xi], MULI(c, row, C));
      LLVMValueRef m = CF(c, 0), lse = CF(c, 0);
      if (fused)
        row_stats(c, x, C, &m, &lse);
      LLVMValueRef counts, y = row_label(c, k, li, row, &counts);
      LLVMValueRef lp = FSUB(c, FSUB(c, LD(c, x, y), m), lse);
      ACC(c, nll, SEL(c, counts, FNEG(c, FMUL(c, weight_of(c, k, wi, y), lp)), CF(c, 0)));
      if (ls != 0) {
        LLVMValueRef rs = VAR(c, CF(c, 0));
        FORN(c, i, C) {
          LLVMValueRef lpi = FSUB(c, FSUB(c, LD(c, x, i), m), lse);
          ACC(c, rs, FMUL(c, weight_of(c, k, wi, i), lpi));
        }
        ACC(c, smooth, SEL(c, counts, FNEG(c, GETF(c, rs)), CF(c, 0)));
      }
    }
    LLVMValueRef loss = FDIV(c, GETF(c, nll), W);
    if (ls != 0) {
      LLVMValueRef sm = FDIV(c, GETF(c, smooth), W);
      loss = FADD(c, FMUL(c, CF(c, 1.0f - ls), loss), FMUL(c, sm, CF(c, ls / (float)C)));
    }
    ST(c, k->O, CI(c, 0), loss);
    return;
  }
  // d loss / d logp[n,c] = -((1-ls) w[y] [c==y] + ls/C w[c]) / W; the fused
  // gradient adds softmax * (sum over c of the above, negated).
  LLVMValueRef dl = LD(c, k->X[0], CI(c, 0));
  FORN(c, row, N) {
    LLVMValueRef x = GEP(c, c->f32, k->X[xi], MULI(c, row, C));
    LLVMValueRef o = GEP(c, c->f32, k->O, MULI(c, row, C));
    LLVMValueRef counts, y = row_label(c, k, li, row, &counts);
    LLVMValueRef wy = weight_of(c, k, wi, y);
    LLVMValueRef m = CF(c, 0), lse = CF(c, 0), total = NULL;
    if (fused) {
      row_stats(c, x, C, &m, &lse);
      total = FDIV(c, FADD(c, FMUL(c, CF(c, 1.0f - ls), wy), FMUL(c, CF(c, ls / (float)C), sumw)), W);
    }
    FORN(c, i, C) {
      LLVMValueRef hit = LLVMBuildICmp(c->b, LLVMIntEQ, i, y, "");
      LLVMValueRef g = FMUL(c, CF(c, ls / (float)C), weight_of(c, k, wi, i));
      g = FADD(c, g, SEL(c, hit, FMUL(c, CF(c, 1.0f - ls), wy), CF(c, 0)));
      g = FNEG(c, FDIV(c, g, W));
      if (fused) {
        LLVMValueRef p = EXP(c, FSUB(c, FSUB(c, LD(c, x, i), m), lse));
        g = FADD(c, g, FMUL(c, p, total));
      }
      ST(c, o, i, SEL(c, counts, FMUL(c, dl, g), CF(c, 0)));
    }
  }
}

static LLVMValueRef pos_weight(Cg *c, Node *n, LLVMValueRef i, int64_t last) {
  const Attr *pw = node_attr(n, "pos_weight");
  if (pw->n == 0)
    return CF(c, 1);
  if (pw->n == 1)
    return CF(c, pw->floats[0]);
  LLVMTypeRef at = LLVMArrayType(c->f32, pw->n);
  LLVMValueRef *v = xcalloc(pw->n, sizeof *v);
  for (int j = 0; j < pw->n; j++)
    v[j] = CF(c, pw->floats[j]);
  LLVMValueRef g = LLVMAddGlobal(c->mod, at, "pos_weight");
  LLVMSetInitializer(g, LLVMConstArray(c->f32, v, pw->n));
  LLVMSetGlobalConstant(g, true);
  LLVMSetLinkage(g, LLVMPrivateLinkage);
  return LD(c, g, REMI(c, i, last));
}

// A BCE target counts unless negative (bce_ignored in ir.h).
static LLVMValueRef counts_bce(Cg *c, LLVMValueRef y) {
  return LLVMBuildFCmp(c->b, LLVMRealOGE, y, CF(c, 0), "");
}

// BCE family, mean over the elements whose target is not negative (padding
// rows of a partial batch have target -1; see bce_ignored).
static void emit_bce(Cg *c, K *k) {
  Node *n = k->n;
  bool grad = n->op == OP_bce_grad || n->op == OP_sigmoid_bce_grad;
  int xi = grad ? 1 : 0;
  const Type *t = &n->in[xi]->type;
  int64_t total = type_numel(t), last = t->rank ? t->dim[t->rank - 1] : 1;
  LLVMValueRef count = VAR(c, CF(c, 0));
  FORN(c, i, total) {
    LLVMValueRef y = LD(c, k->X[xi + 1], i);
    ACC(c, count, SEL(c, counts_bce(c, y), CF(c, 1), CF(c, 0)));
  }
  LLVMValueRef acc = VAR(c, CF(c, 0));
  LLVMValueRef dl = grad ? FDIV(c, LD(c, k->X[0], CI(c, 0)), GETF(c, count)) : NULL;
  FORN(c, i, total) {
    LLVMValueRef x = LD(c, k->X[xi], i), y = LD(c, k->X[xi + 1], i);
    LLVMValueRef counts = counts_bce(c, y);
    LLVMValueRef pw = pos_weight(c, n, i, last);
    LLVMValueRef one_y = FSUB(c, CF(c, 1), y);
    switch (n->op) {
    case OP_bce: { // -(pw y log p + (1-y) log(1-p)), logs clamped at -100 like PyTorch
      LLVMValueRef lp = FMAX(c, LOG(c, x), CF(c, -100));
      LLVMValueRef lq = FMAX(c, LOG(c, FSUB(c, CF(c, 1), x)), CF(c, -100));
      LLVMValueRef l = FNEG(c, FADD(c, FMUL(c, FMUL(c, pw, y), lp), FMUL(c, one_y, lq)));
      ACC(c, acc, SEL(c, counts, l, CF(c, 0)));
      break;
    }
    case OP_sigmoid_bce: { // (1-y) x + (1 + (pw-1) y) (log(e^-mv + e^(-x-mv)) + mv), mv = max(-x, 0)
      LLVMValueRef mv = FMAX(c, FNEG(c, x), CF(c, 0));
      LLVMValueRef lw = FADD(c, FMUL(c, FSUB(c, pw, CF(c, 1)), y), CF(c, 1));
      LLVMValueRef sp = FADD(c, LOG(c, FADD(c, EXP(c, FNEG(c, mv)), EXP(c, FSUB(c, FNEG(c, x), mv)))), mv);
      ACC(c, acc, SEL(c, counts, FADD(c, FMUL(c, one_y, x), FMUL(c, lw, sp)), CF(c, 0)));
      break;
    }
    case OP_bce_grad: { // (-pw y (1-p) + (1-y) p) / max(p (1-p), 1e-12)
      LLVMValueRef q = FSUB(c, CF(c, 1), x);
      LLVMValueRef num = FADD(c, FNEG(c, FMUL(c, FMUL(c, pw, y), q)), FMUL(c, one_y, x));
      LLVMValueRef den = FMAX(c, FMUL(c, x, q), CF(c, 1e-12));
      ST(c, k->O, i, SEL(c, counts, FMUL(c, dl, FDIV(c, num, den)), CF(c, 0)));
      break;
    }
    case OP_sigmoid_bce_grad: { // ((pw y + 1 - y) sigmoid(x) - pw y)
      LLVMValueRef s = FDIV(c, CF(c, 1), FADD(c, CF(c, 1), EXP(c, FNEG(c, x))));
      LLVMValueRef py = FMUL(c, pw, y);
      LLVMValueRef g = FMUL(c, dl, FSUB(c, FMUL(c, FADD(c, py, one_y), s), py));
      ST(c, k->O, i, SEL(c, counts, g, CF(c, 0)));
      break;
    }
    default:
      unreachable();
    }
  }
  if (!grad)
    ST(c, k->O, CI(c, 0), FDIV(c, GETF(c, acc), GETF(c, count)));
}

static LLVMValueRef load_step(Cg *c, LLVMValueRef p) {
  return LLVMBuildLoad2(c->b, c->i32, p, "");
}

// lr_schedule in double, like PyTorch's Python floats.
static void emit_lr_schedule(Cg *c, K *k) {
  Node *n = k->n;
  const char *kind = node_str(n, "kind");
  LLVMValueRef base = LLVMBuildFPExt(c->b, LD(c, k->X[0], CI(c, 0)), c->f64, "");
  LLVMValueRef ep = load_step(c, k->X[1]);
  LLVMValueRef lr = base;
  if (!strcmp(kind, "step")) {
    LLVMValueRef e = LLVMBuildSDiv(c->b, ep, LLVMConstInt(c->i32, node_int(n, "step_size"), 0), "");
    lr = FMUL(c, base, F2(c, "llvm.pow", CD(c, node_float(n, "gamma")),
                          LLVMBuildSIToFP(c->b, e, c->f64, "")));
  } else if (!strcmp(kind, "cosine")) {
    double emin = node_float(n, "eta_min");
    LLVMValueRef e = LLVMBuildSIToFP(c->b, ep, c->f64, "");
    LLVMValueRef cs = F1(c, "llvm.cos", FMUL(c, e, CD(c, M_PI / (double)node_int(n, "t_max"))));
    lr = FADD(c, CD(c, emin),
              FMUL(c, FMUL(c, FSUB(c, base, CD(c, emin)), FADD(c, CD(c, 1), cs)), CD(c, 0.5)));
  }
  ST(c, k->O, CI(c, 0), LLVMBuildFPTrunc(c->b, lr, c->f32, ""));
}

// Elementwise ops, including the optimizer updates (PyTorch's formulas).
static void emit_elementwise(Cg *c, K *k) {
  Node *n = k->n;
  int64_t total = numel(n);
  LLVMValueRef lr = NULL, step = NULL, step1 = NULL;
  LLVMValueRef ss = NULL, bc2s = NULL, key = NULL;
  switch (n->op) {
  case OP_sgd_buf:
    step1 = LLVMBuildICmp(c->b, LLVMIntEQ, load_step(c, k->X[3]), LLVMConstInt(c->i32, 1, 0), "");
    break;
  case OP_sgd_update:
    lr = LD(c, k->X[2], CI(c, 0));
    break;
  case OP_adam_update: {
    lr = LD(c, k->X[3], CI(c, 0));
    step = LLVMBuildSIToFP(c->b, load_step(c, k->X[4]), c->f64, "");
    LLVMValueRef b1 = FSUB(c, CD(c, 1), F2(c, "llvm.pow", CD(c, node_float(n, "beta1")), step));
    LLVMValueRef b2 = FSUB(c, CD(c, 1), F2(c, "llvm.pow", CD(c, node_float(n, "beta2")), step));
    ss = LLVMBuildFPTrunc(c->b, FDIV(c, LLVMBuildFPExt(c->b, lr, c->f64, ""), b1), c->f32, "");
    bc2s = LLVMBuildFPTrunc(c->b, SQRT(c, b2), c->f32, "");
    break;
  }
  case OP_dropout_mask: {
    // dropout_key(salt, step) from ir/dropout_hash.h, once per kernel.
    uint32_t salt = (uint32_t)node_int(n, "salt");
    LLVMValueRef st = LLVMBuildLoad2(c->b, c->i32, k->X[0], "");
    key = NULL;
    LLVMValueRef h = st;
    for (int r = 0; r < 2; r++) {
      if (r == 1)
        h = LLVMBuildXor(c->b, LLVMConstInt(c->i32, salt * 0x9e3779b1u, 0), h, "");
      h = LLVMBuildXor(c->b, h, LLVMBuildLShr(c->b, h, LLVMConstInt(c->i32, 16, 0), ""), "");
      h = LLVMBuildMul(c->b, h, LLVMConstInt(c->i32, 0x85ebca6bu, 0), "");
      h = LLVMBuildXor(c->b, h, LLVMBuildLShr(c->b, h, LLVMConstInt(c->i32, 13, 0), ""), "");
      h = LLVMBuildMul(c->b, h, LLVMConstInt(c->i32, 0xc2b2ae35u, 0), "");
      h = LLVMBuildXor(c->b, h, LLVMBuildLShr(c->b, h, LLVMConstInt(c->i32, 16, 0), ""), "");
    }
    key = h;
    break;
  }
  default:
    break;
  }
  FORN(c, i, total) {
    // A scalar first operand (l2norm_grad's dl) is read at 0, not past its end.
    LLVMValueRef a = n->nin > 0 && n->op != OP_dropout_mask
                         ? LD(c, k->X[0], n->in[0]->type.rank > 0 ? i : CI(c, 0))
                         : NULL;
    LLVMValueRef b = n->nin > 1 && n->in[1]->type.rank > 0 ? LD(c, k->X[1], i) : NULL;
    LLVMValueRef v;
    switch (n->op) {
    case OP_relu:
      v = relu(c, a);
      break;
    case OP_sigmoid:
      v = FDIV(c, CF(c, 1), FADD(c, CF(c, 1), EXP(c, FNEG(c, a))));
      break;
    case OP_scale:
      v = FMUL(c, CF(c, node_float(n, "factor")), a);
      break;
    case OP_add:
      v = FADD(c, a, b);
      break;
    case OP_mul:
      v = FMUL(c, a, b);
      break;
    case OP_relu_grad:
      v = SEL(c, FGT(c, b, CF(c, 0)), a, CF(c, 0));
      break;
    case OP_sigmoid_grad:
      v = FMUL(c, FMUL(c, a, b), FSUB(c, CF(c, 1), b));
      break;
    case OP_ema: {
      float m = (float)node_float(n, "momentum");
      v = FADD(c, FMUL(c, CF(c, 1.0f - m), a), FMUL(c, CF(c, m), b));
      break;
    }
    case OP_l2norm_grad: { // (dl, x, norm); 0 at x = 0 like PyTorch's subgradient
      LLVMValueRef norm = LD(c, k->X[2], CI(c, 0));
      v = FDIV(c, FMUL(c, LD(c, k->X[0], CI(c, 0)), b), norm);
      v = SEL(c, LLVMBuildFCmp(c->b, LLVMRealOEQ, norm, CF(c, 0), ""), CF(c, 0), v);
      break;
    }
    case OP_sgd_buf: { // (g, buf, p, step)
      LLVMValueRef d = a;
      double wd = node_float(n, "weight_decay");
      if (wd != 0)
        d = FADD(c, d, FMUL(c, CF(c, wd), LD(c, k->X[2], i)));
      LLVMValueRef upd = FADD(c, FMUL(c, CF(c, node_float(n, "momentum")), b),
                              FMUL(c, CF(c, 1.0 - node_float(n, "dampening")), d));
      v = SEL(c, step1, d, upd);
      break;
    }
    case OP_sgd_update: { // (p, g, lr, buf_new?)
      LLVMValueRef d = b;
      double wd = node_float(n, "weight_decay"), mom = node_float(n, "momentum");
      if (wd != 0)
        d = FADD(c, d, FMUL(c, CF(c, wd), a));
      if (mom != 0 && n->nin == 4) {
        LLVMValueRef buf = LD(c, k->X[3], i);
        d = node_int(n, "nesterov") ? FADD(c, d, FMUL(c, CF(c, mom), buf)) : buf;
      }
      v = FSUB(c, a, FMUL(c, lr, d));
      break;
    }
    case OP_adam_moment1:
    case OP_adam_moment2: { // (g, m, p)
      LLVMValueRef g = a;
      double wd = node_float(n, "weight_decay");
      if (wd != 0)
        g = FADD(c, g, FMUL(c, CF(c, wd), LD(c, k->X[2], i)));
      double beta = node_float(n, n->op == OP_adam_moment1 ? "beta1" : "beta2");
      LLVMValueRef nw = n->op == OP_adam_moment1 ? g : FMUL(c, g, g);
      v = FADD(c, FMUL(c, b, CF(c, beta)), FMUL(c, CF(c, 1.0 - beta), nw));
      break;
    }
    case OP_adam_update: { // (p, m, v, lr, step)
      LLVMValueRef p = a;
      double wd = node_float(n, "weight_decay");
      // AdamW decays the weight here; Adam's L2 decay was folded into the moments.
      if (node_int(n, "decoupled") && wd != 0)
        p = FMUL(c, p, FSUB(c, CF(c, 1), FMUL(c, lr, CF(c, wd))));
      LLVMValueRef den = FADD(c, FDIV(c, SQRT(c, LD(c, k->X[2], i)), bc2s),
                              CF(c, node_float(n, "eps")));
      v = FSUB(c, p, FMUL(c, ss, FDIV(c, b, den)));
      break;
    }
    case OP_dropout_mask: {
      double p = node_float(n, "p");
      LLVMValueRef idx = LLVMBuildTrunc(c->b, i, c->i32, "");
      LLVMValueRef h = LLVMBuildAdd(
          c->b, key, LLVMBuildMul(c->b, idx, LLVMConstInt(c->i32, 0x9e3779b1u, 0), ""), "");
      h = LLVMBuildXor(c->b, h, LLVMBuildLShr(c->b, h, LLVMConstInt(c->i32, 16, 0), ""), "");
      h = LLVMBuildMul(c->b, h, LLVMConstInt(c->i32, 0x85ebca6bu, 0), "");
      h = LLVMBuildXor(c->b, h, LLVMBuildLShr(c->b, h, LLVMConstInt(c->i32, 13, 0), ""), "");
      h = LLVMBuildMul(c->b, h, LLVMConstInt(c->i32, 0xc2b2ae35u, 0), "");
      h = LLVMBuildXor(c->b, h, LLVMBuildLShr(c->b, h, LLVMConstInt(c->i32, 16, 0), ""), "");
      h = LLVMBuildLShr(c->b, h, LLVMConstInt(c->i32, 8, 0), "");
      LLVMValueRef keep = LLVMBuildICmp(c->b, LLVMIntUGE, h,
                                        LLVMConstInt(c->i32, dropout_threshold(p), 0), "");
      v = SEL(c, keep, CF(c, (float)(1.0 / (1.0 - p))), CF(c, 0));
      break;
    }
    case OP_assign:
      v = b;
      break;
    case OP_reshape: // only in the test entry, where every node has its own slot
      v = a;
      break;
    default:
      unreachable();
    }
    ST(c, k->O, i, v);
  }
}

static void emit_l2norm(Cg *c, K *k) {
  LLVMValueRef acc = VAR(c, CF(c, 0));
  FORN(c, i, numel(k->n->in[0])) {
    LLVMValueRef v = LD(c, k->X[0], i);
    ACC(c, acc, FMUL(c, v, v));
  }
  ST(c, k->O, CI(c, 0), SQRT(c, GETF(c, acc)));
}

void emit_kernel_body(Cg *c, Node *n, LLVMValueRef out, LLVMValueRef *in, LLVMValueRef lo,
                      LLVMValueRef hi, bool relu) {
  K k = {.n = n, .O = out, .lo = lo, .hi = hi, .relu = relu};
  for (int i = 0; i < n->nin; i++)
    k.X[i] = in[i];
  switch (n->op) {
  case OP_conv2d:
    return emit_conv2d(c, &k);
  case OP_conv2d_grad_input:
    return emit_conv2d_grad_input(c, &k);
  case OP_conv2d_grad_weight:
    return emit_conv2d_grad_weight(c, &k);
  case OP_maxpool2d:
    return emit_pool(c, &k, true, false);
  case OP_avgpool2d:
    return emit_pool(c, &k, false, false);
  case OP_maxpool2d_grad:
    return emit_pool(c, &k, true, true);
  case OP_avgpool2d_grad:
    return emit_pool(c, &k, false, true);
  case OP_linear:
    return emit_linear(c, &k);
  case OP_linear_grad_input:
    return emit_linear_grad_input(c, &k);
  case OP_linear_grad_weight:
    return emit_linear_grad_weight(c, &k);
  case OP_batchnorm2d:
  case OP_batchnorm2d_infer:
  case OP_channel_mean:
  case OP_channel_var:
  case OP_bias_grad:
  case OP_batchnorm2d_grad_input:
  case OP_batchnorm2d_grad_gamma:
    return emit_batchnorm(c, &k);
  case OP_softmax:
  case OP_log_softmax:
  case OP_softmax_grad:
  case OP_log_softmax_grad:
    return emit_rowwise(c, &k);
  case OP_nll_loss:
  case OP_softmax_cross_entropy:
  case OP_nll_loss_grad:
  case OP_softmax_cross_entropy_grad:
    return emit_ce(c, &k);
  case OP_bce:
  case OP_sigmoid_bce:
  case OP_bce_grad:
  case OP_sigmoid_bce_grad:
    return emit_bce(c, &k);
  case OP_l2norm:
    return emit_l2norm(c, &k);
  case OP_lr_schedule:
    return emit_lr_schedule(c, &k);
  case OP_relu:
  case OP_sigmoid:
  case OP_scale:
  case OP_add:
  case OP_mul:
  case OP_relu_grad:
  case OP_sigmoid_grad:
  case OP_ema:
  case OP_l2norm_grad:
  case OP_sgd_buf:
  case OP_sgd_update:
  case OP_adam_moment1:
  case OP_adam_moment2:
  case OP_adam_update:
  case OP_dropout_mask:
  case OP_assign:
  case OP_reshape:
    return emit_elementwise(c, &k);
  default:
    fatal("code generation does not support op '%s'", op_info(n->op)->name);
  }
}

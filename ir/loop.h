// The loop IR: between the graph and LLVM. A function is a list of kernels
// over buffers; a kernel is a tree of loops with constant bounds whose
// statements store expressions into buffers at integer indices. Lowering
// (passes/lower.c) turns each graph op into its plain loop nest, the
// reference that -O0 runs; scheduling passes (passes/loop_*.c) rewrite the
// nests -- tile, vectorize, unroll, parallelize, change layouts, plan memory
// -- and codegen/emit.c walks the result into LLVM IR with no policy of its
// own. `xentcc --emit=loops` prints it.
#ifndef XENTCC_LOOP_H
#define XENTCC_LOOP_H

#include "ir.h"

enum { LMAX_RANK = 6 };

//
// Buffers
//

typedef enum {
  LB_PARAM,     // params + offset (elements): the trainable parameters, PyTorch's layout
  LB_STATE,     // state + offset: optimizer state and running statistics
  LB_GRAD,      // grads + offset: a parameter's gradient, laid out like params
  LB_ARG,       // a pointer argument of the step: "image", "label", "logits"
  LB_SCALAR,    // a field of the step's XcStepArgs: "step", "seed", "lr", ...
  LB_WORKSPACE, // workspace + offset (bytes), placed by the memory plan
  LB_CONST,     // a constant array in the object
  LB_LOCAL,     // a kernel's own small array (registers, or the stack)
  LB_SLOT,      // slots[slot]: the test entry passes one pointer per buffer
} LStorage;

typedef struct LBuf LBuf;
struct LBuf {
  int id;               // index in its function's buffer list
  char *name;           // the graph value's name, or a pass's ("conv1.packed")
  DType dtype;
  int rank;
  int64_t dim[LMAX_RANK]; // the shape as stored, row-major and dense
  LStorage storage;
  int64_t offset;       // PARAM/STATE/GRAD: elements; WORKSPACE: bytes
  const char *arg;      // ARG and SCALAR: the argument's name
  int slot;             // SLOT
  const double *values; // CONST: one value per element, or one for all
  int nvalues;
  Node *node;           // the graph value it holds, if any
  const char *layout;   // how the graph value's indices map to dim[]: "NCHW", "N(C/8)HW8c"...
  LBuf *alias;          // shares alias's memory (a reshape)
  LBuf *pad_of;         // the pad pass's copy of pad_of with a border of zeros
                        // (or tile's transposed copy of such a copy):
  int64_t pad_lo[LMAX_RANK]; // pad_lo[d] zeros before pad_of's pad_n[d] elements
  int64_t pad_n[LMAX_RANK];  // in dimension d (pad_of's dimensions, permuted as b's)
  int64_t first, last;  // kernels that write it first and read it last (memory plan)
};
// A buffer of DT_BF16 or DT_F16 holds 16-bit floats: a load gives the f32
// it stands for (exact), a store of an f32 rounds it to nearest even. A
// nest that sums into a 16-bit result does so in an f32 buffer of its own
// (lowering sees to it), so each value is rounded once, as it is final.

int64_t lbuf_numel(const LBuf *b);
int64_t lbuf_bytes(const LBuf *b);
// The buffer that owns b's memory: b, or the end of its alias chain (as
// strchr, the result is writable when the caller's buffer is).
static inline LBuf *lbuf_root(const LBuf *b) {
  while (b->alias)
    b = b->alias;
  return (LBuf *)b;
}

//
// Expressions: a tree per stored value; also the indices, as i64 trees
//

// LT_BF16 and LT_F16 appear only inside a cast: lx_round's f32(bf16(x)).
typedef enum { LT_F32, LT_I32, LT_I64, LT_BOOL, LT_F64, LT_BF16, LT_F16 } LType;

typedef enum {
  LX_CONST, // f or i
  LX_VAR,   // a loop variable (i64)
  LX_LOAD,  // buf[idx...]
  LX_ADD, LX_SUB, LX_MUL, LX_DIV, LX_REM, LX_MIN, LX_MAX,
  LX_FMA,   // a * b + c, rounded once (llvm.fma)
  LX_NEG, LX_EXP, LX_LOG, LX_SQRT, LX_POW, LX_COS, LX_TANH, LX_ERF,
  // compares (LT_BOOL): ordered floats, signed integers; UGT and UNO are
  // unordered (true when an operand is NaN)
  LX_LT, LX_LE, LX_GT, LX_GE, LX_EQ, LX_NE, LX_UGT, LX_UNO, LX_ULT,
  LX_AND, LX_OR, LX_XOR, LX_SHL, LX_SHR, LX_NOT,
  LX_SELECT, // a ? b : c
  LX_CAST,   // a converted to the expression's type
  LX_COUNT
} LExprKind;

typedef struct LExpr LExpr;
struct LExpr {
  LExprKind kind;
  LType type;
  LExpr *a, *b, *c;
  double f;            // CONST of a float type
  int64_t i;           // CONST of an integer type or BOOL
  int var;             // VAR
  LBuf *buf;           // LOAD
  LExpr *idx[LMAX_RANK]; // LOAD: one i64 index per dimension of buf
};

LExpr *lx_f32(double v);
LExpr *lx_f64(double v);
LExpr *lx_int(LType t, int64_t v);
LExpr *lx_i64(int64_t v);
LExpr *lx_var(int var);
LExpr *lx_load(LBuf *b, LExpr *const *idx); // idx: b->rank expressions
LExpr *lx_bin(LExprKind k, LExpr *a, LExpr *b); // arithmetic keeps a's type; compares are BOOL
LExpr *lx_un(LExprKind k, LExpr *a);
LExpr *lx_fma(LExpr *a, LExpr *b, LExpr *c);
LExpr *lx_select(LExpr *cond, LExpr *a, LExpr *b);
LExpr *lx_cast(LType t, LExpr *a);
// a (f32) rounded to dt's precision, still an f32: what a store into a
// buffer of dt and a load back give. a itself for f32 and f64.
LExpr *lx_round(DType dt, LExpr *a);
// i64 index arithmetic, folded as it is built: k * a, a + b, a + k.
LExpr *lx_iadd(LExpr *a, LExpr *b);
LExpr *lx_imul(LExpr *a, int64_t k);
LExpr *lx_iaddc(LExpr *a, int64_t k);

// An i64 expression as sum(coef * var) + c, when it is one.
enum { LMAX_TERMS = 8 };
typedef struct {
  int n;
  int var[LMAX_TERMS];
  int64_t coef[LMAX_TERMS];
  int64_t c;
} Affine;
bool lx_affine(const LExpr *e, Affine *out);
// e is coef * var plus terms without var (which need not be affine: a
// phase's (kh + 1) / 2), so consecutive values of var move it by coef.
bool lx_linear(const LExpr *e, int var, int64_t *coef);
int64_t affine_coef(const Affine *a, int var);
// The least (*min) and greatest (*max) value of a while each of its
// variables v runs over lo[v]..hi[v] (inclusive).
void affine_range(const Affine *a, const int64_t *lo, const int64_t *hi, int64_t *min,
                  int64_t *max);
// The same for any integer expression of the loop variables, through the
// divisions and remainders by constants a phase index holds ((kh + 1) % 2
// is 1 while kh runs over 0..0): false where e is none it can bound.
bool lx_range(const LExpr *e, const int64_t *lo, const int64_t *hi, int64_t *min, int64_t *max);
// Is e, as an affine expression, exactly the loop variable v?
bool lx_is_var(const LExpr *e, int v);
// The element b[x...] minus the element b[y...], when the two index lists
// differ only in constants (the same variables, the same coefficients).
bool lx_const_apart(const LBuf *b, LExpr *const *x, LExpr *const *y, int64_t *diff);
// The expression with VAR v replaced by `with` (a fresh tree).
LExpr *lx_subst(const LExpr *e, int v, const LExpr *with);
bool lx_uses_var(const LExpr *e, int v);
LExpr *lx_copy(const LExpr *e);

//
// Statements and kernels
//

typedef enum {
  LS_LOOP,  // for var in [lo, hi): body
  LS_STORE, // buf[idx...] = value
  LS_IF,    // if cond: body
  // prefetch buf + value: a hint that the cache line holding element `value`
  // of buf (an i64 offset in elements, row-major) is read soon; it changes
  // no value. The verifier checks an affine offset against the buffer, as
  // an index, and leaves others (a clamp, min(x, last)) to the pass.
  LS_PREFETCH,
} LStmtKind;

enum {
  LF_PARALLEL = 1, // split across threads (the kernel's outermost loop only)
  LF_UNROLL = 2,   // emitted once per iteration, the variable a constant
  LF_VECTOR = 4,   // its iterations are the lanes of one vector (hi - lo lanes)
  LF_REDUCE = 8,   // lowering's note: a reduction loop (iterations accumulate in one place)
  LF_ROLLED = 16,  // LLVM keeps it a loop: no unrolling (tile: a tile's tap loop, see there)
};

typedef struct LStmt LStmt;
struct LStmt {
  LStmtKind kind;
  int var;          // LOOP
  int64_t lo, hi;   // LOOP
  int flags;        // LOOP: LF_*
  const char *role; // LOOP: what it runs over ("n", "oh", "c", ...), for passes and dumps
  LExpr *cond;      // IF
  LStmt **body;     // LOOP, IF
  int nbody;
  LBuf *buf;        // STORE, PREFETCH
  LExpr *idx[LMAX_RANK];
  LExpr *value;     // STORE; PREFETCH: the element offset
};

typedef struct {
  char *name;         // LLVM symbol suffix: "conv2d.3"
  const char *op;     // for --profile: "conv2d", "conv2d+relu"
  const char *layer;  // the graph node's name, or ""
  Node *node;         // the op lowered here (NULL for a pass's own kernels)
  int64_t flops;      // per call: 2 per multiply-add of a contraction
  LStmt **body;       // the statements, in order
  int nbody;
  int nvars;          // loop variables are 0 .. nvars-1
  bool deferred;      // an assign: runs after every other kernel of the step
} LKernel;

typedef enum { FN_GRAD_STEP, FN_APPLY_STEP, FN_FORWARD, FN_SLOTS } FuncKind;

typedef struct {
  char *name;       // the LLVM symbol: xc_grad_step, xc_apply_step, xc_forward
  FuncKind kind;
  Graph *g;
  LBuf **bufs;
  int nbufs;
  LBuf **buf_of;    // by graph node id: the buffer holding the node's value, or NULL
  LKernel **kernels;
  int nkernels;
  int64_t workspace_bytes;
  LBuf *result;     // the loss (GRAD_STEP) or the logits (FORWARD)
  LBuf *logits;     // GRAD_STEP: the training forward's logits, copied out for the
                    // runtime's training accuracy (NULL when the graph returns none)
} LFunc;

// The params and state blocks, shared by every function of the executables:
// each tensor at an offset (elements), 16-element aligned, in the order its
// param or state node appears in the training graph (else the one given).
typedef struct {
  Node *node;
  int64_t offset;
} LBlockEntry;

typedef struct {
  LBlockEntry *params, *states;
  int nparams, nstates;
  int64_t param_floats, state_floats;
} LBlocks;

LBlocks *plan_blocks(Graph *primary);

// What the scheduling passes assume of the processor the code runs on: its
// vector registers' float lanes, and how many of its registers a tile may
// hold as accumulators (docs/ir.md).
typedef struct LTarget {
  const char *name;  // "avx2", "avx512"
  int lanes;         // floats in a vector register: 8 or 16
  int accumulators;  // a tile's vector accumulators at most
  int registers;     // vector registers: 16 or 32
} LTarget;

extern const LTarget ltarget_avx2, ltarget_avx512;
const LTarget *ltarget_find(const char *name); // NULL if unknown

// Every function of one executable, sharing the params and state layout.
typedef struct LProgram {
  LFunc **funcs;
  int nfuncs;
  const LBlocks *blocks;
  int opt_level;    // -O: 0 runs the plain nests
  LTarget target;   // avx2 unless the caller says otherwise
} LProgram;

// passes/lower.c: the graphs into plain loop nests. train (a training-step
// graph) gives xc_grad_step and xc_apply_step, eval xc_forward; either may be
// NULL. lower_slots gives the test entry: one pointer per node (FN_SLOTS).
LProgram *lower_program(Graph *train, Graph *eval, int opt_level);
LProgram *lower_slots(Graph *g, const char *name);
// The parameter whose gradient node n is (named PARAM.grad), or NULL.
Node *loop_gradient_of(Graph *g, Node *n);

// Builders.
LBuf *lfunc_buf(LFunc *f, const char *name, DType dt, int rank, const int64_t *dim,
                LStorage storage);
LKernel *lfunc_kernel(LFunc *f, const char *name, const char *op, Node *node);
int lk_var(LKernel *k); // a fresh loop variable
LStmt *ls_loop(int var, int64_t lo, int64_t hi, const char *role);
LStmt *ls_store(LBuf *b, LExpr *const *idx, LExpr *value);
LStmt *ls_if(LExpr *cond);
LStmt *ls_prefetch(LBuf *b, LExpr *offset);
void ls_add(LStmt *parent, LStmt *child); // appends to a LOOP's or IF's body
void lk_add(LKernel *k, LStmt *s);        // appends to the kernel's top level
LStmt *ls_copy(const LStmt *s);
// The statement with VAR v replaced by `with` everywhere (in place).
void ls_subst(LStmt *s, int v, const LExpr *with);
// Does e (s: its conditions, values and body) load b itself? Aliases of b
// are other buffers here.
bool lx_reads(const LExpr *e, const LBuf *b);
bool ls_reads(const LStmt *s, const LBuf *b);
bool lk_reads(const LKernel *k, const LBuf *b);
// Does s (k) store into b -- or, any_name, into b's memory under any name?
bool ls_writes(const LStmt *s, const LBuf *b, bool any_name);
bool lk_writes(const LKernel *k, const LBuf *b, bool any_name);
// Roughly the statements s executes: the product of loop trip counts down
// to each store.
int64_t ls_work(const LStmt *s);
// Every load of and store to `from` in s now reads or writes `to`, at the
// same indices (in place).
void ls_retarget(LStmt *s, const LBuf *from, LBuf *to);
// Loop variables of s renumbered: v becomes v + by, for statements moved
// into another kernel after its own variables (in place: s must not share
// expression nodes with another statement).
void ls_shift_vars(LStmt *s, int by);
void lx_shift_vars(LExpr *e, int by);

// A nest over every index of a shape, the usual first step of a lowering:
// for v[0] in [0, dim[0]): ... for v[r-1]: <innermost>. Returns the innermost
// loop (or NULL for rank 0, when the statements go to the kernel itself);
// vars[] gets the variables as expressions.
LStmt *lk_nest(LKernel *k, LStmt *parent, int rank, const int64_t *dim, const char *const *roles,
               LExpr **vars);

// Printing: `xentcc --emit=loops`, --print-after=PASS.
void print_lprogram(FILE *out, const LProgram *p);
void print_lfunc(FILE *out, const LFunc *f);

// Checks every index is in bounds for every iteration (from the loop
// bounds, by interval arithmetic on affine indices; others unchecked),
// loads read defined buffers, vector loops have 2-64 lanes, and parallel
// loops sit outermost. Dies with an internal error naming the kernel.
void verify_lprogram(const LProgram *p);
// The bytes one call of k reads and writes in memory outside the kernel
// (weights, gradients, the workspace, the step's arguments): each buffer's
// box of elements it reads, and the box it writes, once each, however often
// the loops touch them. What --profile divides by a kernel's time (GB/s).
// An index that is not affine in the loops counts the whole dimension.
int64_t lk_bytes(const LKernel *k);

#endif

// Code generation driver: builds the LLVM modules of NAME-train and
// NAME-eval (step functions from lowered graphs, their kernels, the
// `xc_model` description and `main`), optimizes and compiles them for the
// host or -mcpu on every processor at once, and links the objects with the
// runtime library; --emit writes one .ll/.s/.o per executable instead.
#define _GNU_SOURCE // sched_getaffinity
#include "emit.h"
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <llvm-c/Analysis.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

Cg *cg_new(const char *name) {
  Cg *c = xcalloc(1, sizeof *c);
  c->ctx = LLVMContextCreate();
  c->mod = LLVMModuleCreateWithNameInContext(name, c->ctx);
  c->b = LLVMCreateBuilderInContext(c->ctx);
  c->f32 = LLVMFloatTypeInContext(c->ctx);
  c->f64 = LLVMDoubleTypeInContext(c->ctx);
  c->i64 = LLVMInt64TypeInContext(c->ctx);
  c->i32 = LLVMInt32TypeInContext(c->ctx);
  c->i8 = LLVMInt8TypeInContext(c->ctx);
  c->ptr = LLVMPointerTypeInContext(c->ctx, 0);
  c->voidt = LLVMVoidTypeInContext(c->ctx);
  return c;
}

static LLVMValueRef CI(Cg *c, int64_t v) { return LLVMConstInt(c->i64, (uint64_t)v, true); }
static LLVMValueRef CI32(Cg *c, int64_t v) { return LLVMConstInt(c->i32, (uint64_t)v, true); }

LLVMValueRef cstring(Cg *c, const char *s) {
  LLVMValueRef init = LLVMConstStringInContext(c->ctx, s, strlen(s), false);
  LLVMValueRef g = LLVMAddGlobal(c->mod, LLVMTypeOf(init), ".str");
  LLVMSetInitializer(g, init);
  LLVMSetGlobalConstant(g, true);
  LLVMSetLinkage(g, LLVMPrivateLinkage);
  LLVMSetUnnamedAddress(g, LLVMGlobalUnnamedAddr);
  return g;
}

void begin_function(Cg *c, LLVMValueRef fn) {
  c->fn = fn;
  c->entry = LLVMAppendBasicBlockInContext(c->ctx, fn, "entry");
  LLVMPositionBuilderAtEnd(c->b, c->entry);
}

// `int32_t xc_grad_check(const float *grads)`: the index (in xc_model.params)
// of the first parameter whose gradient holds a NaN or an infinity, or -1.
// A float is not finite exactly when its exponent bits are all ones: each
// parameter's loop takes the largest exponent field of its gradient, with
// no exit on the way, which LLVM's loop vectorizer turns into vectors (an
// integer maximum). A scan that stopped at the first bad element took one
// element a cycle: 24 us of cifar10's 1.1 ms step on Zen 5, now 6.
static void emit_grad_check(Cg *c, Graph *g, const LBlocks *b) {
  LLVMTypeRef ft = LLVMFunctionType(c->i32, &c->ptr, 1, false);
  LLVMValueRef fn = LLVMAddFunction(c->mod, "xc_grad_check", ft);
  begin_function(c, fn);
  LLVMValueRef grads = LLVMGetParam(fn, 0);
  LLVMValueRef exponent = CI32(c, 0x7f800000);
  for (int t = 0; t < b->nparams; t++) {
    Node *p = b->params[t].node;
    if (!graph_find(g, xformat("%s.grad", p->name)))
      continue; // frozen: no gradient
    LLVMBasicBlockRef pre = LLVMGetInsertBlock(c->b);
    LLVMBasicBlockRef loop = LLVMAppendBasicBlockInContext(c->ctx, fn, "scan");
    LLVMBasicBlockRef end = LLVMAppendBasicBlockInContext(c->ctx, fn, "end");
    LLVMBasicBlockRef bad = LLVMAppendBasicBlockInContext(c->ctx, fn, "bad");
    LLVMBasicBlockRef next = LLVMAppendBasicBlockInContext(c->ctx, fn, "next");
    LLVMBuildBr(c->b, loop);
    LLVMPositionBuilderAtEnd(c->b, loop);
    LLVMValueRef i = LLVMBuildPhi(c->b, c->i64, "i");
    LLVMValueRef most = LLVMBuildPhi(c->b, c->i32, "most");
    LLVMValueRef at = LLVMBuildAdd(c->b, i, CI(c, b->params[t].offset), "");
    LLVMValueRef x =
        LLVMBuildLoad2(c->b, c->i32, LLVMBuildInBoundsGEP2(c->b, c->f32, grads, &at, 1, ""), "");
    LLVMValueRef e = LLVMBuildAnd(c->b, x, exponent, "");
    LLVMValueRef most1 =
        LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntUGT, e, most, ""), e, most, "");
    LLVMValueRef i1 = LLVMBuildAdd(c->b, i, CI(c, 1), "");
    LLVMValueRef done = LLVMBuildICmp(c->b, LLVMIntEQ, i1, CI(c, type_numel(&p->type)), "");
    LLVMBuildCondBr(c->b, done, end, loop);
    LLVMAddIncoming(i, (LLVMValueRef[]){CI(c, 0), i1}, (LLVMBasicBlockRef[]){pre, loop}, 2);
    LLVMAddIncoming(most, (LLVMValueRef[]){CI32(c, 0), most1}, (LLVMBasicBlockRef[]){pre, loop}, 2);
    LLVMPositionBuilderAtEnd(c->b, end);
    LLVMBuildCondBr(c->b, LLVMBuildICmp(c->b, LLVMIntEQ, most1, exponent, ""), bad, next);
    LLVMPositionBuilderAtEnd(c->b, bad);
    LLVMBuildRet(c->b, CI32(c, t));
    LLVMPositionBuilderAtEnd(c->b, next);
  }
  LLVMBuildRet(c->b, CI32(c, -1));
}

// --- xc_model ------------------------------------------------------------------

static int init_kind(Node *n) {
  const char *s = node_str(n, "init");
  if (!strcmp(s, "ones"))
    return 1;
  if (!strcmp(s, "kaiming_uniform"))
    return 2;
  if (!strcmp(s, "bias_uniform"))
    return 3;
  return 0;
}

LLVMValueRef tensor_table(Cg *c, const LBlockEntry *e, int count, LLVMTypeRef ti) {
  LLVMValueRef *rows = xcalloc(count + 1, sizeof *rows);
  for (int i = 0; i < count; i++) {
    Node *n = e[i].node;
    LLVMValueRef dims[4];
    for (int d = 0; d < 4; d++)
      dims[d] = CI(c, d < n->type.rank ? n->type.dim[d] : 0);
    LLVMValueRef f[6] = {cstring(c, n->name),
                         CI32(c, n->type.rank),
                         LLVMConstArray(c->i64, dims, 4),
                         CI(c, e[i].offset),
                         CI32(c, init_kind(n)),
                         CI(c, n->op == OP_param ? node_int(n, "fan_in") : 0)};
    rows[i] = LLVMConstNamedStruct(ti, f, 6);
  }
  LLVMValueRef init = LLVMConstArray(ti, rows, count);
  LLVMValueRef g = LLVMAddGlobal(c->mod, LLVMTypeOf(init), "xc_tensors");
  LLVMSetInitializer(g, init);
  LLVMSetGlobalConstant(g, true);
  LLVMSetLinkage(g, LLVMPrivateLinkage);
  return g;
}

// The frontend resolves data paths against the YAML file's directory; the
// executables run from anywhere, so make them absolute and drop "." and "..".
static const char *absolute(const char *path) {
  if (!path || !*path)
    return "";
  char cwd[PATH_MAX];
  char *joined = path[0] == '/' || !getcwd(cwd, sizeof cwd) ? xstrdup(path)
                                                            : xformat("%s/%s", cwd, path);
  char *out = xcalloc(strlen(joined) + 2, 1);
  size_t len = 0;
  for (char *tok = strtok(joined, "/"); tok; tok = strtok(NULL, "/")) {
    if (!strcmp(tok, "."))
      continue;
    if (!strcmp(tok, "..")) {
      while (len > 0 && out[len - 1] != '/')
        len--;
      if (len > 0)
        len--;
      out[len] = '\0';
      continue;
    }
    len += sprintf(out + len, "/%s", tok);
  }
  return len ? out : "/";
}

// A constant array of n C strings.
LLVMValueRef string_table(Cg *c, char **s, int n, const char *name) {
  LLVMValueRef *v = xcalloc(n + 1, sizeof *v);
  for (int i = 0; i < n; i++)
    v[i] = cstring(c, s[i]);
  LLVMValueRef init = LLVMConstArray(c->ptr, v, n);
  LLVMValueRef g = LLVMAddGlobal(c->mod, LLVMTypeOf(init), name);
  LLVMSetInitializer(g, init);
  LLVMSetGlobalConstant(g, true);
  LLVMSetLinkage(g, LLVMPrivateLinkage);
  return g;
}

// XcSchedule (runtime/xentcc_rt.h) from the graph attributes the frontend
// set (docs/ir.md), field for field.
static LLVMValueRef schedule_struct(Cg *c, const Graph *g, LLVMTypeRef *type) {
  static const char *const kinds[] = {"constant", "step",   "multistep", "exponential",
                                      "cosine",   "linear", "one_cycle"};
  const char *name = graph_str(g, "schedule", "constant");
  int kind = -1;
  for (int i = 0; i < (int)(sizeof kinds / sizeof *kinds); i++)
    if (!strcmp(kinds[i], name))
      kind = i;
  if (kind < 0)
    fatal("graph %s: unknown schedule '%s'; use one of constant, step, multistep, exponential, "
          "cosine, linear, one_cycle",
          g->name, name);
  const Attr *ms = graph_attr(g, "milestones");
  int nms = ms && ms->kind == 'I' ? ms->n : 0;
  LLVMValueRef *mv = xcalloc(nms + 1, sizeof *mv);
  for (int i = 0; i < nms; i++)
    mv[i] = CI(c, ms->ints[i]);
  LLVMValueRef milestones = LLVMConstNull(c->ptr);
  if (nms) {
    LLVMValueRef init = LLVMConstArray(c->i64, mv, nms);
    milestones = LLVMAddGlobal(c->mod, LLVMTypeOf(init), "xc_milestones");
    LLVMSetInitializer(milestones, init);
    LLVMSetGlobalConstant(milestones, true);
    LLVMSetLinkage(milestones, LLVMPrivateLinkage);
  }
  LLVMTypeRef f64 = c->f64, i64 = c->i64, i32 = c->i32;
  LLVMTypeRef ft[] = {i32, i32, f64, i64, c->ptr, i64, i64, f64, f64, f64, i64, i64,
                      f64, f64, f64, i32, i32, i32, i32, f64, f64, i64, f64};
  int n = sizeof ft / sizeof *ft;
#define F(name, d) LLVMConstReal(f64, graph_float(g, name, d))
#define I(name, d) CI(c, graph_int(g, name, d))
  LLVMValueRef v[] = {CI32(c, kind),
                      CI32(c, !strcmp(graph_str(g, "interval", "epoch"), "step")),
                      F("gamma", 0.1),
                      I("step_size", 1),
                      milestones,
                      CI(c, nms),
                      I("t_max", 1),
                      F("eta_min", 0),
                      F("start_factor", 1.0 / 3),
                      F("end_factor", 1),
                      I("total_iters", 5),
                      I("total_steps", 0),
                      F("pct_start", 0.3),
                      F("div_factor", 25),
                      F("final_div_factor", 1e4),
                      CI32(c, !strcmp(graph_str(g, "anneal_strategy", "cos"), "linear")),
                      CI32(c, graph_int(g, "three_phase", 0)),
                      CI32(c, graph_int(g, "cycle_momentum", 1)),
                      CI32(c, 0),
                      F("base_momentum", 0.85),
                      F("max_momentum", 0.95),
                      I("warmup_iters", 0),
                      F("warmup_factor", 1.0 / 3)};
#undef F
#undef I
  ir_assert((int)(sizeof v / sizeof *v) == n);
  *type = LLVMStructCreateNamed(c->ctx, "XcSchedule");
  LLVMStructSetBody(*type, ft, n, false);
  return LLVMConstNamedStruct(*type, v, n);
}

// The kernels of this module, for --profile (XcKernelInfo).
static LLVMValueRef kernel_table(Cg *c, LLVMTypeRef *type) {
  LLVMTypeRef f[5] = {c->ptr, c->ptr, c->ptr, c->i64, c->i64};
  *type = LLVMStructCreateNamed(c->ctx, "XcKernelInfo");
  LLVMStructSetBody(*type, f, 5, false);
  LLVMValueRef *rows = xcalloc(c->nkernels + 1, sizeof *rows);
  for (int i = 0; i < c->nkernels; i++) {
    KernelInfo *k = &c->kernels[i];
    LLVMValueRef v[5] = {cstring(c, k->function), cstring(c, k->op), cstring(c, k->layer),
                         CI(c, k->flops), CI(c, k->bytes)};
    rows[i] = LLVMConstNamedStruct(*type, v, 5);
  }
  LLVMValueRef init = LLVMConstArray(*type, rows, c->nkernels);
  LLVMValueRef g = LLVMAddGlobal(c->mod, LLVMTypeOf(init), "xc_kernels");
  LLVMSetInitializer(g, init);
  LLVMSetGlobalConstant(g, true);
  LLVMSetLinkage(g, LLVMPrivateLinkage);
  return g;
}

// `int64_t xc_fma_peak(int64_t n, float *out)`: n rounds of 12 independent
// fused multiply-adds of the target's vectors (8 or 16 lanes: 192 or 384
// floating-point operations per round, returned), the kind of loop that
// reaches the machine's peak; --profile times it to say what share of the
// peak each kernel reaches.
static void emit_fma_peak(Cg *c, int lanes) {
  enum { CHAINS = 12 };
  LLVMTypeRef vt = LLVMVectorType(c->f32, lanes);
  LLVMTypeRef p[2] = {c->i64, c->ptr};
  LLVMValueRef fn = LLVMAddFunction(c->mod, "xc_fma_peak", LLVMFunctionType(c->i64, p, 2, false));
  vector_width_attr(c, fn, 32 * lanes);
  LLVMSetFunctionCallConv(fn, LLVMCCallConv);
  begin_function(c, fn);
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(c->b);
  LLVMBasicBlockRef loop = LLVMAppendBasicBlockInContext(c->ctx, fn, "loop");
  LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(c->ctx, fn, "done");
  LLVMBuildBr(c->b, loop);
  LLVMPositionBuilderAtEnd(c->b, loop);
  LLVMValueRef i = LLVMBuildPhi(c->b, c->i64, "i");
  LLVMValueRef acc[CHAINS], next[CHAINS];
  LLVMValueRef elems[16];
  for (int l = 0; l < lanes; l++)
    elems[l] = LLVMConstReal(c->f32, 0.999999f);
  LLVMValueRef a = LLVMConstVector(elems, lanes);
  unsigned id = LLVMLookupIntrinsicID("llvm.fma", 8);
  LLVMValueRef fma = LLVMGetIntrinsicDeclaration(c->mod, id, &vt, 1);
  LLVMTypeRef fma_t = LLVMIntrinsicGetType(c->ctx, id, &vt, 1);
  for (int k = 0; k < CHAINS; k++)
    acc[k] = LLVMBuildPhi(c->b, vt, "acc");
  for (int k = 0; k < CHAINS; k++) {
    LLVMValueRef args[3] = {acc[k], a, a};
    next[k] = LLVMBuildCall2(c->b, fma_t, fma, args, 3, "");
  }
  LLVMValueRef i1 = LLVMBuildAdd(c->b, i, CI(c, 1), "");
  LLVMBuildCondBr(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, i1, LLVMGetParam(fn, 0), ""), loop, done);
  LLVMAddIncoming(i, (LLVMValueRef[]){CI(c, 0), i1}, (LLVMBasicBlockRef[]){pre, loop}, 2);
  for (int k = 0; k < CHAINS; k++)
    LLVMAddIncoming(acc[k], (LLVMValueRef[]){a, next[k]}, (LLVMBasicBlockRef[]){pre, loop}, 2);
  LLVMPositionBuilderAtEnd(c->b, done);
  LLVMValueRef sum = next[0];
  for (int k = 1; k < CHAINS; k++)
    sum = LLVMBuildFAdd(c->b, sum, next[k], "");
  LLVMValueRef st = LLVMBuildStore(c->b, sum, LLVMGetParam(fn, 1));
  LLVMSetAlignment(st, 4);
  LLVMBuildRet(c->b, CI(c, 2 * lanes * CHAINS));
}

// XcPrecision (runtime/xentcc_rt.h) of the graph attribute `precision`.
static int precision_kind(const Graph *g) {
  static const char *const kinds[] = {"fp32", "bf16", "fp16"};
  const char *p = graph_str(g, "precision", "fp32");
  for (int i = 0; i < 3; i++)
    if (!strcmp(kinds[i], p))
      return i;
  fatal("graph %s: unknown precision '%s'; use fp32, bf16 or fp16", g->name, p);
}

// The loss the YAML describes, read off the graph for XcModel: the
// criterion of the logits (fused or not) plus weight * l2norm(param) terms,
// as frontend/yaml.c builds it. Anything else leaves kind LOSS_NONE.
enum { LOSS_NONE, LOSS_CROSS_ENTROPY, LOSS_BCE_WITH_LOGITS }; // XcLossKind

typedef struct {
  int kind;
  double smoothing, pos_weight;
  const Attr *class_weights; // a const's "value", or NULL
  int nl2;
  int *l2_param;   // index in the params block
  double *l2_weight;
} LossInfo;

static bool describe_loss(Node *n, double factor, const LBlocks *b, LossInfo *li) {
  switch (n->op) {
  case OP_add:
    return describe_loss(n->in[0], factor, b, li) && describe_loss(n->in[1], factor, b, li);
  case OP_scale:
    return n->in[0]->op == OP_l2norm &&
           describe_loss(n->in[0], factor * node_float(n, "factor"), b, li);
  case OP_l2norm:
    for (int i = 0; i < b->nparams && n->in[0]->op == OP_param; i++)
      if (!strcmp(b->params[i].node->name, n->in[0]->name)) {
        li->l2_param = realloc(li->l2_param, sizeof(int) * (li->nl2 + 1));
        li->l2_weight = realloc(li->l2_weight, sizeof(double) * (li->nl2 + 1));
        if (!li->l2_param || !li->l2_weight)
          fatal("out of memory");
        li->l2_param[li->nl2] = i;
        li->l2_weight[li->nl2++] = factor;
        return true;
      }
    return false;
  case OP_nll_loss:
  case OP_softmax_cross_entropy:
    if (li->kind || factor != 1.0 || (n->op == OP_nll_loss && n->in[0]->op != OP_log_softmax))
      return false;
    li->kind = LOSS_CROSS_ENTROPY;
    li->smoothing = node_float(n, "label_smoothing");
    if (n->nin == 3) {
      if (n->in[2]->op != OP_const)
        return false;
      li->class_weights = node_attr(n->in[2], "value");
    }
    return true;
  case OP_bce:
  case OP_sigmoid_bce: {
    if (li->kind || factor != 1.0 || (n->op == OP_bce && n->in[0]->op != OP_sigmoid))
      return false;
    const Attr *pw = node_attr(n, "pos_weight");
    li->kind = LOSS_BCE_WITH_LOGITS;
    li->pos_weight = pw->n ? pw->floats[0] : 1.0;
    return true;
  }
  default:
    return false;
  }
}

// XcModel's loss fields, loss_kind to l2, into out[0..6).
static void loss_fields(Cg *c, Graph *g, const LBlocks *b, int outputs, LLVMValueRef *out) {
  LossInfo li = {0};
  if (!g->nret || !describe_loss(g->ret[0], 1.0, b, &li) || !li.kind)
    li = (LossInfo){0};
  LLVMValueRef weights = LLVMConstNull(c->ptr), l2 = LLVMConstNull(c->ptr);
  if (li.class_weights) {
    LLVMValueRef *v = xcalloc(outputs + 1, sizeof *v);
    for (int i = 0; i < outputs; i++)
      v[i] = LLVMConstReal(c->f32, li.class_weights->floats[li.class_weights->n == 1 ? 0 : i]);
    LLVMValueRef init = LLVMConstArray(c->f32, v, outputs);
    weights = LLVMAddGlobal(c->mod, LLVMTypeOf(init), "xc_class_weights");
    LLVMSetInitializer(weights, init);
    LLVMSetGlobalConstant(weights, true);
    LLVMSetLinkage(weights, LLVMPrivateLinkage);
  }
  if (li.nl2) {
    LLVMTypeRef tt = LLVMStructTypeInContext(c->ctx, (LLVMTypeRef[]){c->i32, c->f64}, 2, false);
    LLVMValueRef *v = xcalloc(li.nl2 + 1, sizeof *v);
    for (int i = 0; i < li.nl2; i++)
      v[i] = LLVMConstStructInContext(
          c->ctx, (LLVMValueRef[]){CI32(c, li.l2_param[i]), LLVMConstReal(c->f64, li.l2_weight[i])},
          2, false);
    LLVMValueRef init = LLVMConstArray(tt, v, li.nl2);
    l2 = LLVMAddGlobal(c->mod, LLVMTypeOf(init), "xc_l2_terms");
    LLVMSetInitializer(l2, init);
    LLVMSetGlobalConstant(l2, true);
    LLVMSetLinkage(l2, LLVMPrivateLinkage);
  }
  out[0] = CI32(c, li.kind);
  out[1] = LLVMConstReal(c->f32, li.smoothing);
  out[2] = weights;
  out[3] = LLVMConstReal(c->f32, li.kind == LOSS_BCE_WITH_LOGITS ? li.pos_weight : 1.0);
  out[4] = CI32(c, li.nl2);
  out[5] = l2;
  free(li.l2_param), free(li.l2_weight);
}

static void emit_model(Cg *c, Model *m, Graph *train, const LProgram *p, int64_t workspace,
                       int outputs, bool float_labels, bool train_logits) {
  const LBlocks *b = p->blocks;
  LLVMTypeRef ti_fields[6] = {c->ptr, c->i32, LLVMArrayType(c->i64, 4), c->i64, c->i32, c->i64};
  LLVMTypeRef ti = LLVMStructCreateNamed(c->ctx, "XcTensorInfo");
  LLVMStructSetBody(ti, ti_fields, 6, false);
  LLVMTypeRef f4 = LLVMArrayType(c->f32, 4), st, kt;
  LLVMValueRef schedule = schedule_struct(c, m->graph, &st);
  LLVMValueRef kernels = kernel_table(c, &kt);
  emit_fma_peak(c, p->target.lanes);
  // Field for field the C layout of XcModel in runtime/xentcc_rt.h.
  LLVMTypeRef mf[] = {c->ptr, c->i32, c->i32, c->i32, c->i32, c->i32, c->ptr, c->i32, c->i32,
                      c->i32, c->ptr, c->i64, c->i32, c->ptr, c->i64, c->i64, c->i32, c->ptr,
                      c->i32, c->i32,
                      c->i32, c->i32, c->i32, c->f64, st,     c->ptr, c->ptr, c->ptr, c->f32,
                      f4,     f4,     c->i32, c->i32, c->i32, c->i32, c->i32, c->i32, c->ptr,
                      c->i32, c->i32, c->f64, c->f64, c->f64,
                      c->i32, c->f32, c->ptr, c->f32, c->i32, c->ptr, c->i32};
  int nmf = sizeof mf / sizeof *mf;
  LLVMTypeRef mt = LLVMStructCreateNamed(c->ctx, "XcModel");
  LLVMStructSetBody(mt, mf, nmf, false);

  LLVMValueRef cn = string_table(c, m->classes, m->nclasses, "xc_class_names");

  LLVMValueRef mean[4], std[4];
  for (int i = 0; i < 4; i++) {
    mean[i] = LLVMConstReal(c->f32, m->data.mean[i]);
    std[i] = LLVMConstReal(c->f32, m->data.std[i]);
  }
  // OneCycleLR replaces the optimizer's learning rate with its max_lr.
  double lr = !strcmp(graph_str(m->graph, "schedule", ""), "one_cycle")
                  ? graph_float(m->graph, "max_lr", 0.001)
                  : graph_float(m->graph, "lr", 0.001);
  LLVMValueRef v[] = {
      cstring(c, m->name), CI32(c, m->batch_size), CI32(c, m->channels), CI32(c, m->height),
      CI32(c, m->width), CI32(c, m->nclasses), cn, CI32(c, outputs),
      CI32(c, float_labels ? 1 : 0), CI32(c, b->nparams),
      tensor_table(c, b->params, b->nparams, ti), CI(c, b->param_floats), CI32(c, b->nstates),
      tensor_table(c, b->states, b->nstates, ti), CI(c, b->state_floats), CI(c, workspace),
      CI32(c, m->ncounters), string_table(c, m->counters, m->ncounters, "xc_counter_names"),
      CI32(c, m->epochs), CI32(c, m->seed), CI32(c, m->shuffle), CI32(c, m->drop_last),
      CI32(c, m->log_every), LLVMConstReal(c->f64, lr), schedule,
      cstring(c, m->data.format ? m->data.format : ""),
      cstring(c, absolute(m->data.train)), cstring(c, absolute(m->data.test)),
      LLVMConstReal(c->f32, m->data.val_split), LLVMConstArray(c->f32, mean, 4),
      LLVMConstArray(c->f32, std, 4), CI32(c, m->data.random_crop_padding),
      CI32(c, m->data.random_flip), CI32(c, m->data.test_flip), CI32(c, m->data.convert),
      CI32(c, m->data.resize),
      CI32(c, c->nkernels), kernels,
      CI32(c, precision_kind(m->graph)), CI32(c, graph_int(m->graph, "growth_interval", 2000)),
      LLVMConstReal(c->f64, graph_float(m->graph, "init_scale", 65536.0)),
      LLVMConstReal(c->f64, graph_float(m->graph, "growth_factor", 2.0)),
      LLVMConstReal(c->f64, graph_float(m->graph, "backoff_factor", 0.5)),
      NULL, NULL, NULL, NULL, NULL, NULL, CI32(c, train_logits)};
  loss_fields(c, train ? train : m->graph, b, outputs, &v[nmf - 7]);
  LLVMValueRef g = LLVMAddGlobal(c->mod, mt, "xc_model");
  LLVMSetInitializer(g, LLVMConstNamedStruct(mt, v, nmf));
  LLVMSetGlobalConstant(g, true);
}

// int main(int argc, char **argv) { return MAIN(argc, argv); }
static void emit_main(Cg *c, const char *callee) {
  LLVMTypeRef p[2] = {c->i32, c->ptr};
  LLVMTypeRef ft = LLVMFunctionType(c->i32, p, 2, false);
  LLVMValueRef target = LLVMAddFunction(c->mod, callee, ft);
  LLVMValueRef fn = LLVMAddFunction(c->mod, "main", ft);
  begin_function(c, fn);
  LLVMValueRef args[2] = {LLVMGetParam(fn, 0), LLVMGetParam(fn, 1)};
  LLVMBuildRet(c->b, LLVMBuildCall2(c->b, ft, target, args, 2, ""));
}

// --- Timing (--time) -------------------------------------------------------------------

// One row per phase: wall and CPU seconds (the CPU of every thread, and of
// the linker's processes); the LLVM phase has a row per module under it.
typedef struct {
  const char *name;
  double wall, cpu;
  char *detail; // module rows, or NULL
} TimeRow;

static bool timing;
static double time_wall0, time_cpu0;
static TimeRow time_rows[16];
static int time_nrows;

static double wall_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static double thread_cpu_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static double cpu_now(void) {
  double s = 0;
  struct rusage ru;
  int who[2] = {RUSAGE_SELF, RUSAGE_CHILDREN};
  for (int i = 0; i < 2; i++)
    if (getrusage(who[i], &ru) == 0)
      s += ru.ru_utime.tv_sec + 1e-6 * ru.ru_utime.tv_usec + ru.ru_stime.tv_sec +
           1e-6 * ru.ru_stime.tv_usec;
  return s;
}

void time_start(bool on) {
  timing = on;
  time_wall0 = wall_now();
  time_cpu0 = cpu_now();
}

static void time_phase_detail(const char *name, char *detail) {
  if (!timing || time_nrows == (int)(sizeof time_rows / sizeof *time_rows))
    return;
  double w = wall_now(), c = cpu_now();
  time_rows[time_nrows++] = (TimeRow){name, w - time_wall0, c - time_cpu0, detail};
  time_wall0 = w;
  time_cpu0 = c;
}

void time_phase(const char *name) { time_phase_detail(name, NULL); }

void time_report(void) {
  if (!timing || !time_nrows)
    return;
  double wall = 0, cpu = 0;
  fprintf(stderr, "xentcc: compile time in seconds\n  %-40s %7s %7s\n", "phase", "wall", "cpu");
  for (int i = 0; i < time_nrows; i++) {
    TimeRow *r = &time_rows[i];
    fprintf(stderr, "  %-40s %7.3f %7.3f\n", r->name, r->wall, r->cpu);
    if (r->detail)
      fputs(r->detail, stderr);
    wall += r->wall;
    cpu += r->cpu;
  }
  fprintf(stderr, "  %-40s %7.3f %7.3f\n", "total", wall, cpu);
  time_nrows = 0;
}

// --- Target, optimization, files --------------------------------------------------

LLVMTargetMachineRef target_machine(const CodegenOptions *opt) {
  static bool inited; // first called before any compile thread starts
  if (!inited) {
    LLVMInitializeNativeTarget();
    LLVMInitializeNativeAsmPrinter();
    inited = true;
  }
  char *triple = LLVMGetDefaultTargetTriple();
  LLVMTargetRef t;
  char *err = NULL;
  if (LLVMGetTargetFromTriple(triple, &t, &err))
    fatal("no LLVM target for %s: %s", triple, err);
  const char *cpu = opt->cpu ? opt->cpu : "native";
  char *features = "";
  if (!strcmp(cpu, "native")) {
    cpu = LLVMGetHostCPUName();
    features = LLVMGetHostCPUFeatures();
  }
  LLVMCodeGenOptLevel lvl = opt->opt_level <= 0   ? LLVMCodeGenLevelNone
                            : opt->opt_level == 1 ? LLVMCodeGenLevelLess
                            : opt->opt_level == 2 ? LLVMCodeGenLevelDefault
                                                  : LLVMCodeGenLevelAggressive;
  return LLVMCreateTargetMachine(t, triple, cpu, features, lvl, LLVMRelocPIC,
                                 LLVMCodeModelDefault);
}

// The loop passes' target for -mcpu: AVX-512 where the processor has it
// (the host's features for native; LLVM's C API does not tell a named
// CPU's, hence the list), else AVX2.
const LTarget *loop_target(const CodegenOptions *opt) {
  static const char *const avx512[] = {
      "x86-64-v4",      "skylake-avx512", "cascadelake",    "cooperlake",    "cannonlake",
      "icelake-client", "icelake-server", "tigerlake",      "rocketlake",    "sapphirerapids",
      "emeraldrapids",  "graniterapids",  "graniterapids-d", "diamondrapids", "znver4",
      "znver5"};
  if (!opt->cpu || !strcmp(opt->cpu, "native")) {
    char *features = LLVMGetHostCPUFeatures();
    bool has = strstr(features, "+avx512f") != NULL;
    LLVMDisposeMessage(features);
    return has ? &ltarget_avx512 : &ltarget_avx2;
  }
  for (size_t i = 0; i < sizeof avx512 / sizeof *avx512; i++)
    if (!strcmp(opt->cpu, avx512[i]))
      return &ltarget_avx512;
  return &ltarget_avx2;
}

// LLVM only warns about an unknown -mcpu and may then abort deep inside code
// generation, so probe it in a child process on an empty module first.
void check_cpu(const CodegenOptions *opt) {
  if (!opt->cpu || !strcmp(opt->cpu, "native"))
    return;
  int fd[2];
  if (pipe(fd) != 0)
    return;
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    close(fd[0]);
    dup2(fd[1], 2);
    LLVMTargetMachineRef tm = target_machine(opt);
    Cg *c = cg_new("probe");
    LLVMMemoryBufferRef mb;
    char *err = NULL;
    _exit(LLVMTargetMachineEmitToMemoryBuffer(tm, c->mod, LLVMObjectFile, &err, &mb) ? 1 : 0);
  }
  close(fd[1]);
  char out[4096];
  size_t len = 0;
  ssize_t r;
  while ((r = read(fd[0], out + len, sizeof out - 1 - len)) > 0)
    len += r;
  out[len] = '\0';
  close(fd[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  if (pid < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 || strstr(out, "not a recognized"))
    fatal("-mcpu=%s: LLVM does not know this CPU for %s; use -mcpu=native (the default) or a "
          "name from 'llc -mcpu=help', e.g. x86-64-v3",
          opt->cpu, LLVMGetDefaultTargetTriple());
}

// The LLVM passes of -O2 and -O3: LLVM's default<O2> function pipeline less
// what the loop IR's kernels never need, as one pass-pipeline string. The
// loop passes already tiled and vectorized the kernels; LLVM is left to clean
// up, keep local arrays in registers, fully unroll small loops (pooling
// windows) and vectorize what the loop IR left scalar. Left out: the inliner
// (each kernel stays a function, its parallel wrapper calls it per chunk; with
// it, O2 simplifies every parallel kernel twice), the late partial and runtime
// unrolling (bigger kernels, not faster ones: O3's made vgg_small's
// maxpool2d_grad 8 times slower), coroutine, OpenMP and interprocedural
// passes, and loop-load-elim and dse: on AVX-512's tiles (a weight
// gradient's accumulators kept in memory between blocks of its sum) they
// took 45% of allconv's compile time (2.1 -> 3.1 s) for training steps
// within 2% on AVX-512 and AVX2 alike. The SLP vectorizer is left out too:
// the loop IR's vectorize pass left it only the lanes of vectors stored to
// far-apart addresses (which the emitter now stores a row at a time), and
// it took 40% of the optimizer's time (allconv compiled in 2.5 s with it,
// 1.85 s without) for training steps of the CNNs and seed nets within 3%,
// on AVX-512 and AVX2.
// Taken from LLVM 19's `opt -passes='default<O2>' -print-pipeline-passes`. On
// the kernels of catdog and vgg_small, default<O3> took twice as long, and
// machine code for its output 1.3 times as long; the hot kernels' machine
// code is the same but for spill slots.
#define INSTCOMBINE "instcombine<no-verify-fixpoint>"
static const char *const kernel_passes[] = {
    // The walker's output tidied; local arrays into registers.
    "function(simplifycfg,sroa<modify-cfg>,early-cse," INSTCOMBINE ",simplifycfg)",
    // Scalar simplification, then loops: invariants out, rotated, counted,
    // small constant trip counts fully unrolled.
    "function(sroa<modify-cfg>,early-cse<memssa>,jump-threading,correlated-propagation,simplifycfg,"
    INSTCOMBINE ",aggressive-instcombine,simplifycfg,reassociate,constraint-elimination,"
    "loop-mssa(loop-instsimplify,loop-simplifycfg,licm<no-allowspeculation>,loop-rotate,"
    "licm<allowspeculation>,simple-loop-unswitch),simplifycfg," INSTCOMBINE ","
    "loop(loop-idiom,indvars,simple-loop-unswitch,loop-deletion,loop-unroll-full),"
    // After unrolling: registers again, redundant loads and stores, dead code.
    // GVN without load PRE: in a tile's loop over kernel columns, each
    // accumulator's input is its neighbour's from the iteration before, and
    // load PRE carried those scalars from one iteration to the next in
    // registers the tile's accumulators need (32->32 5x5 forward: 14 values
    // rotated through xmm registers, 3 accumulators spilled). Without it each
    // input is one broadcast operand of its FMA: that layer's forward 1.37x
    // faster, the seed nets' training steps 6%.
    "sroa<modify-cfg>,vector-combine,mldst-motion,gvn<no-load-pre>,sccp,bdce," INSTCOMBINE ",jump-threading,"
    "correlated-propagation,adce,memcpyopt,loop-mssa(licm<allowspeculation>),simplifycfg,"
    INSTCOMBINE ")",
    // Vectorize loops still scalar, then tidy.
    "function(float2int,loop(loop-rotate,loop-deletion),loop-distribute,loop-vectorize,"
    "infer-alignment," INSTCOMBINE ",simplifycfg,vector-combine,"
    INSTCOMBINE ",sroa,infer-alignment," INSTCOMBINE ",loop-mssa(licm<allowspeculation>),"
    "loop-sink,instsimplify,div-rem-pairs,simplifycfg)",
    "globaldce",
};

const char *llvm_passes(int opt_level) {
  static char *joined;
  if (opt_level <= 0)
    return "default<O0>";
  if (opt_level == 1)
    return "default<O1>";
  if (!joined) { // first called before any compile thread starts
    joined = xstrdup(kernel_passes[0]);
    for (size_t i = 1; i < sizeof kernel_passes / sizeof *kernel_passes; i++) {
      char *s = xformat("%s,%s", joined, kernel_passes[i]);
      free(joined);
      joined = s;
    }
  }
  return joined;
}

// The sanitizer build (XENTCC_SANITIZE) instruments the code it generates
// with AddressSanitizer, as clang would after optimizing, so that a kernel
// reading or writing outside a buffer is reported like the runtime's C code.
// Objects and executables only: --emit=llvm|asm show the code as generated.
static void sanitize_module(Cg *c, LLVMTargetMachineRef tm, const CodegenOptions *opt) {
#ifdef XENTCC_SANITIZE_GENERATED
  if (opt->emit && strcmp(opt->emit, "obj"))
    return;
  for (LLVMValueRef f = LLVMGetFirstFunction(c->mod); f; f = LLVMGetNextFunction(f))
    if (!LLVMIsDeclaration(f))
      add_attr(c, f, LLVMAttributeFunctionIndex, "sanitize_address");
  LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
  LLVMErrorRef e = LLVMRunPasses(c->mod, "asan", tm, po);
  if (e)
    fatal("LLVM AddressSanitizer instrumentation failed: %s", LLVMGetErrorMessage(e));
  LLVMDisposePassBuilderOptions(po);
#endif
}

void finish_module(Cg *c, LLVMTargetMachineRef tm, const CodegenOptions *opt) {
  char *triple = LLVMGetTargetMachineTriple(tm);
  LLVMSetTarget(c->mod, triple);
  LLVMDisposeMessage(triple);
  LLVMTargetDataRef td = LLVMCreateTargetDataLayout(tm);
  char *layout = LLVMCopyStringRepOfTargetData(td);
  LLVMSetDataLayout(c->mod, layout);
  LLVMDisposeMessage(layout);
  LLVMDisposeTargetData(td);
  char *err = NULL;
  if (LLVMVerifyModule(c->mod, LLVMReturnStatusAction, &err)) {
    fprintf(stderr, "%s\n", err);
    internal_error(__FILE__, __LINE__, "generated LLVM IR does not verify");
  }
  LLVMDisposeMessage(err);
  LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
  LLVMErrorRef e = LLVMRunPasses(c->mod, llvm_passes(opt->opt_level), tm, po);
  if (e) {
    char *msg = LLVMGetErrorMessage(e);
    fprintf(stderr, "%s\n", msg);
    internal_error(__FILE__, __LINE__, "LLVM optimization failed");
  }
  LLVMDisposePassBuilderOptions(po);
  sanitize_module(c, tm, opt);
}

// --emit=llvm|asm|obj: the module as text or an object, written whole to
// path, or to standard output when path is "-" (text only: the driver
// refuses -o - for objects).
static void write_module(Cg *c, LLVMTargetMachineRef tm, const char *kind, const char *path) {
  if (!strcmp(kind, "llvm")) {
    char *text = LLVMPrintModuleToString(c->mod);
    write_file(path, text, strlen(text));
    LLVMDisposeMessage(text);
    return;
  }
  char *err = NULL;
  LLVMMemoryBufferRef buf;
  if (LLVMTargetMachineEmitToMemoryBuffer(tm, c->mod,
                                          !strcmp(kind, "asm") ? LLVMAssemblyFile : LLVMObjectFile,
                                          &err, &buf))
    fatal("cannot generate %s: %s", path, err ? err : "unknown error");
  write_file(path, LLVMGetBufferStart(buf), LLVMGetBufferSize(buf));
  LLVMDisposeMemoryBuffer(buf);
}

void cg_dispose(Cg *c) {
  LLVMDisposeBuilder(c->b);
  LLVMDisposeModule(c->mod);
  LLVMContextDispose(c->ctx);
  free(c->kernels);
  free(c);
}

// --- Linking -------------------------------------------------------------------------

// The runtime's link line is recorded at build time beside its archive,
// one argument per line (runtime/CMakeLists.txt): the archive, OpenMP, the
// image libraries and, in a sanitizer build, the runtime's -fsanitize flags.
// An installed xentcc (cmake --install) finds them in ../lib/xentcc beside
// its bin directory, where the installation wrote its own link line; the
// build tree's xentcc in the build's lib directory.
const char *runtime_dir(void) {
  struct stat st;
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  char *installed = NULL;
  if (n > 0) {
    self[n] = '\0';
    installed = xformat("%s/../lib/xentcc", dirname(self));
    if (stat(xformat("%s/xentcc_rt.link", installed), &st) == 0)
      return installed;
  }
  if (stat(XENTCC_RUNTIME_DIR "/xentcc_rt.link", &st) == 0 || !installed)
    return XENTCC_RUNTIME_DIR;
  return installed;
}

// The directory holding the objects between writing and linking, and the
// objects: removed however the compiler ends (exit runs remove_scratch), so
// a failed compile leaves nothing in $TMPDIR.
static char *scratch_dir;
static char **scratch_files;
static int nscratch;

void remove_scratch(void) {
  for (int i = 0; i < nscratch; i++)
    unlink(scratch_files[i]);
  if (scratch_dir)
    rmdir(scratch_dir);
  nscratch = 0;
  scratch_dir = NULL;
}

// A fresh directory for the objects: in $TMPDIR, else /tmp. Made only once
// every module has verified and been compiled, so an internal error (which
// aborts, skipping exit handlers) never finds one.
char *make_tmpdir(void) {
  static bool registered;
  if (!registered)
    atexit(remove_scratch);
  registered = true;
  const char *base = getenv("TMPDIR");
  if (!base || !*base)
    base = "/tmp";
  char *dir = xformat("%s/xentcc-XXXXXX", base);
  if (!mkdtemp(dir))
    fatal("cannot create a temporary directory in %s: %s (set TMPDIR to a writable directory)",
          base, strerror(errno));
  scratch_dir = dir;
  return dir;
}

// The path of a file a tool will write in the scratch directory, removed
// with it.
char *scratch_file(const char *name) {
  char *path = xformat("%s/%s", scratch_dir, name);
  scratch_files = realloc(scratch_files, (nscratch + 1) * sizeof *scratch_files);
  if (!scratch_files)
    fatal("out of memory");
  scratch_files[nscratch++] = path;
  return path;
}

// Writes an object to a new file in the scratch directory.
char *write_object(LLVMMemoryBufferRef obj, const char *name) {
  char *path = scratch_file(xformat("%s.o", name));
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    fatal("cannot create %s: %s (set TMPDIR to a writable directory)", path, strerror(errno));
  const char *p = LLVMGetBufferStart(obj);
  size_t left = LLVMGetBufferSize(obj);
  while (left > 0) {
    ssize_t n = write(fd, p, left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      fatal("cannot write %s: %s (is $TMPDIR full?)", path, strerror(n < 0 ? errno : ENOSPC));
    p += n;
    left -= n;
  }
  if (close(fd) != 0)
    fatal("cannot write %s: %s (is $TMPDIR full?)", path, strerror(errno));
  return path;
}

extern char **environ;

// A path the linker cannot mistake for an option: "-x" becomes "./-x".
const char *not_an_option(const char *path) {
  return path[0] == '-' ? xformat("./%s", path) : path;
}

// LLVM's linker, lld (Debian's lld-19), links in two thirds of the time of
// GNU ld, when it is there: the C compiler looks for it on COMPILER_PATH,
// where LLVM's directory goes after any the user set (so a user's own
// linker there still wins).
static bool have_lld(void) {
  static int have = -1; // first asked before the links start
  if (have < 0)
    have = access(XENTCC_LLVM_BIN "/ld.lld", X_OK) == 0;
  return have;
}

// The linker's environment: ours, with COMPILER_PATH extended for lld.
char **link_environment(void) {
  static char **env; // first built before the links start
  if (env || !have_lld())
    return env ? env : environ;
  int n = 0;
  while (environ[n])
    n++;
  env = xcalloc(n + 2, sizeof *env);
  const char *old = getenv("COMPILER_PATH");
  int k = 0;
  for (int i = 0; i < n; i++)
    if (strncmp(environ[i], "COMPILER_PATH=", 14))
      env[k++] = environ[i];
  env[k] = old && *old ? xformat("COMPILER_PATH=%s:%s", old, XENTCC_LLVM_BIN)
                       : "COMPILER_PATH=" XENTCC_LLVM_BIN;
  return env;
}

// The linker's argument vector:
// XENTCC_LINKER [-fuse-ld=lld] OBJS... <link file lines> -o out.
// NAME-train links the MPI variant of the runtime when xentcc was built
// with MPI (xentcc_rt_mpi.link, runtime/CMakeLists.txt), for mpirun.
static char **link_command(char **objs, int nobjs, const char *out, bool train) {
  struct stat st;
  const char *file = xformat("%s/xentcc_rt_mpi.link", runtime_dir());
  if (!train || stat(file, &st) != 0)
    file = xformat("%s/xentcc_rt.link", runtime_dir());
  if (stat(file, &st) != 0)
    fatal("runtime link line %s not found; build the xentcc_rt target first", file);
  char *text = read_file(file, "runtime link line");
  int n = 0, cap = nobjs + 8;
  char **argv = xcalloc(cap, sizeof *argv);
  argv[n++] = XENTCC_LINKER;
  if (have_lld())
    argv[n++] = "-fuse-ld=lld";
  for (int i = 0; i < nobjs; i++)
    argv[n++] = (char *)not_an_option(objs[i]);
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    if (n + 4 > cap) {
      cap *= 2;
      argv = realloc(argv, cap * sizeof *argv);
      if (!argv)
        fatal("out of memory");
    }
    argv[n++] = line;
  }
  argv[n++] = "-o";
  argv[n++] = (char *)not_an_option(out);
  argv[n] = NULL;
  return argv;
}

// A link in progress: the linker spawned with its arguments as they are (no
// shell), writing a fresh file beside the executable; what it prints
// (stdout and stderr) is read from a pipe when it is waited for.
typedef struct {
  const char *out;
  char *partial;      // the linker's output, renamed to out once every link is done
  const char *linker; // argv[0]
  pid_t pid;          // 0: not started (why says so)
  int fd;
  char *why; // the failure, or NULL
} Link;

static void start_link(Link *l, char **objs, int nobjs, const char *out, bool train) {
  *l = (Link){.out = out, .fd = -1, .partial = xformat("%s.link-XXXXXX", out)};
  int fd = mkstemp(l->partial);
  if (fd < 0) {
    l->why = xformat("cannot write %s: %s", out, strerror(errno));
    l->partial = NULL;
    return;
  }
  close(fd);
  char **argv = link_command(objs, nobjs, l->partial, train);
  l->linker = argv[0];
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) { // the child keeps only its stdout and stderr
    l->why = xformat("cannot link %s: %s", out, strerror(errno));
    return;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, p[1], 1);
  posix_spawn_file_actions_adddup2(&fa, p[1], 2);
  fflush(NULL);
  int err = posix_spawnp(&l->pid, argv[0], &fa, NULL, argv, link_environment());
  posix_spawn_file_actions_destroy(&fa);
  close(p[1]);
  if (err) {
    close(p[0]);
    l->pid = 0;
    l->why = xformat("cannot run the linker '%s': %s (install a C compiler: apt-get install "
                     "build-essential)",
                     argv[0], strerror(err));
    return;
  }
  l->fd = p[0];
}

// Waits for a link; the first 16 KiB it printed go into the error message.
static void finish_link(Link *l) {
  if (!l->pid)
    return;
  enum { KEEP = 16384 };
  char *output = xcalloc(1, KEEP + 1), chunk[4096];
  size_t len = 0;
  for (;;) {
    ssize_t r = read(l->fd, chunk, sizeof chunk);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    size_t take = (size_t)r < KEEP - len ? (size_t)r : KEEP - len;
    memcpy(output + len, chunk, take);
    len += take;
  }
  close(l->fd);
  while (len > 0 && output[len - 1] == '\n')
    output[--len] = '\0';
  int st;
  pid_t r;
  while ((r = waitpid(l->pid, &st, 0)) < 0 && errno == EINTR)
    ;
  if (r < 0)
    l->why = xformat("linking %s failed: %s", l->out, strerror(errno));
  else if (WIFSIGNALED(st))
    l->why = xformat("linking %s failed: %s was killed by signal %d%s%s", l->out, l->linker,
                     WTERMSIG(st), len ? ":\n" : "", output);
  else if (WEXITSTATUS(st) != 0)
    l->why = xformat("linking %s failed: %s exited with status %d%s%s", l->out, l->linker,
                     WEXITSTATUS(st), len ? ":\n" : "", output);
  free(output);
}

// Waits for every link. The executables appear together, each complete, or
// none does (nor is an old one removed): on a failure every linker's output
// is removed before saying why.
static void wait_links(Link *links, int n) {
  const char *failed = NULL;
  for (int i = 0; i < n; i++) {
    finish_link(&links[i]);
    if (links[i].why && !failed)
      failed = links[i].why;
  }
  mode_t mask = umask(0); // mkstemp made them 0600; an executable is 0777 less the umask
  umask(mask);
  for (int i = 0; i < n && !failed; i++)
    if (chmod(links[i].partial, 0777 & ~mask) != 0)
      failed = xformat("cannot write %s: %s", links[i].out, strerror(errno));
  for (int i = 0; i < n && !failed; i++)
    if (rename(links[i].partial, links[i].out) != 0)
      failed = xformat("cannot write %s: %s", links[i].out, strerror(errno));
    else
      links[i].partial = NULL;
  for (int i = 0; i < n; i++)
    if (links[i].partial)
      unlink(links[i].partial);
  if (failed)
    fatal("%s", failed);
}

// --- Modules and threads -------------------------------------------------------------

// An executable is built from several modules, compiled on all processors at
// once: a main module per executable (its step functions, which call their
// kernels in other modules, xc_model and main) and modules of kernels. A
// kernel that appears twice -- the forward pass of the training step and
// xc_forward compute the same layers -- is compiled once: its twins have the
// same LLVM text, and the step functions call the one copy. NAME-eval links
// the kernel modules of xc_forward, which NAME-train links too.

typedef struct {
  const LFunc *f;
  int i; // the kernel f->kernels[i]
} KernelRef;

typedef struct {
  const char *name;   // the module's, and its object's file name
  Cg *c;              // a main module: built before the threads start
  KernelRef *kernels; // a kernel module: what its thread emits
  int nkernels;
  const char *const *symbols; // the symbol each kernel must have
  int64_t size;               // LLVM instructions before optimization
  bool linked_into[2];        // by executable
  const CodegenOptions *opt;
  LLVMMemoryBufferRef obj;
  double emit, optimize, machine; // thread CPU seconds
} Job;

static int64_t instruction_count(LLVMValueRef fn) {
  int64_t n = 0;
  for (LLVMBasicBlockRef b = LLVMGetFirstBasicBlock(fn); b; b = LLVMGetNextBasicBlock(b))
    for (LLVMValueRef i = LLVMGetFirstInstruction(b); i; i = LLVMGetNextInstruction(i))
      n++;
  return n;
}

static void run_job(Job *j) {
  double t0 = thread_cpu_now();
  if (!j->c) {
    j->c = cg_new(j->name);
    for (int k = 0; k < j->nkernels; k++) {
      LLVMValueRef entry = emit_lkernel(j->c, j->kernels[k].f, j->kernels[k].i);
      size_t len;
      ir_assert(!strcmp(LLVMGetValueName2(entry, &len), j->symbols[k]));
      LLVMSetLinkage(entry, LLVMExternalLinkage);
      LLVMSetVisibility(entry, LLVMHiddenVisibility);
    }
  }
  double t1 = thread_cpu_now();
  LLVMTargetMachineRef tm = target_machine(j->opt);
  finish_module(j->c, tm, j->opt);
  double t2 = thread_cpu_now();
  char *err = NULL;
  if (LLVMTargetMachineEmitToMemoryBuffer(tm, j->c->mod, LLVMObjectFile, &err, &j->obj)) {
    fprintf(stderr, "%s\n", err ? err : "");
    internal_error(__FILE__, __LINE__, "LLVM could not emit an object");
  }
  j->emit += t1 - t0;
  j->optimize = t2 - t1;
  j->machine = thread_cpu_now() - t2;
  LLVMDisposeTargetMachine(tm);
  cg_dispose(j->c);
  j->c = NULL;
}

// Tasks 0..n-1 of one kind, taken in turn by a thread per processor (at
// most 16, at most n): task(arg, i, t) on thread t in [0, threads).
typedef struct {
  void (*task)(void *arg, int i, int t);
  void *arg;
  int n, next;
  pthread_mutex_t lock;
} Queue;

typedef struct {
  Queue *q;
  int t;
} Worker;

static void *worker(void *arg) {
  Worker *w = arg;
  for (;;) {
    pthread_mutex_lock(&w->q->lock);
    int i = w->q->next++;
    pthread_mutex_unlock(&w->q->lock);
    if (i >= w->q->n)
      return NULL;
    w->q->task(w->q->arg, i, w->t);
  }
}

static int processors(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
    return CPU_COUNT(&set);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

enum { MAX_THREADS = 16 };

static int thread_count(int n) {
  int t = processors();
  t = t > n ? n : t;
  t = t > MAX_THREADS ? MAX_THREADS : t;
  return t < 1 ? 1 : t;
}

// Runs the n tasks on thread_count(n) threads, this one among them;
// returns how many ran them (fewer when a thread could not start).
static int run_parallel(int n, void (*task)(void *, int, int), void *arg) {
  Queue q = {task, arg, n, 0, PTHREAD_MUTEX_INITIALIZER};
  int nthreads = thread_count(n);
  pthread_t t[MAX_THREADS];
  Worker w[MAX_THREADS];
  int started = 0;
  for (int i = 1; i < nthreads; i++) {
    w[i] = (Worker){&q, i};
    if (pthread_create(&t[i], NULL, worker, &w[i]) != 0)
      break;
    started++;
  }
  w[0] = (Worker){&q, 0};
  worker(&w[0]);
  for (int i = 1; i <= started; i++)
    pthread_join(t[i], NULL);
  return started + 1;
}

static int by_size(const void *a, const void *b) {
  const Job *x = *(Job *const *)a, *y = *(Job *const *)b;
  return x->size < y->size ? 1 : x->size > y->size ? -1 : strcmp(x->name, y->name);
}

static void job_task(void *arg, int i, int t) {
  (void)t;
  run_job(((Job **)arg)[i]);
}

// Runs the jobs, the largest first; returns the number of threads.
static int run_jobs(Job *jobs, int njobs) {
  Job **sorted = xcalloc(njobs + 1, sizeof *sorted);
  for (int i = 0; i < njobs; i++)
    sorted[i] = &jobs[i];
  qsort(sorted, njobs, sizeof *sorted, by_size);
  int nthreads = run_parallel(njobs, job_task, sorted);
  free(sorted);
  return nthreads;
}

// FNV-1a: the hash of a kernel's text, to find its twins.
static uint64_t hash_text(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

// The distinct kernels of the functions fns[0..nfns): kernel j of the k-th
// function is distinct kernel canon[k][j]. Every kernel goes into a scratch
// module, on every processor at once; twins are kernels whose modules print
// the same once renamed.
typedef struct {
  int n;
  KernelRef *ref;  // the first of its twins
  char **symbol;   // what the step functions call
  int64_t *size;   // LLVM instructions
  int **canon;
} Distinct;

typedef struct {
  KernelRef *ref; // by kernel, across the functions
  char **text, **symbol;
  int64_t *size;
  Cg *cg[MAX_THREADS]; // a context per thread, made by its first kernel
} Printed;

static void print_kernel(void *arg, int i, int t) {
  Printed *P = arg;
  if (!P->cg[t]) {
    P->cg[t] = cg_new("twins");
    LLVMDisposeModule(P->cg[t]->mod);
  }
  Cg *c = P->cg[t];
  // A module of its own (printing a function walks its whole module), its
  // definitions renamed alike.
  c->mod = LLVMModuleCreateWithNameInContext("twin", c->ctx);
  LLVMValueRef entry = emit_lkernel(c, P->ref[i].f, P->ref[i].i);
  size_t len;
  P->symbol[i] = xstrdup(LLVMGetValueName2(entry, &len));
  int64_t n = 0;
  for (LLVMValueRef fn = LLVMGetFirstFunction(c->mod); fn; fn = LLVMGetNextFunction(fn))
    if (LLVMCountBasicBlocks(fn) > 0) {
      char *alike = xformat("xc.twin.%lld", (long long)n++);
      LLVMSetValueName2(fn, alike, strlen(alike));
      free(alike);
      P->size[i] += instruction_count(fn);
    }
  P->text[i] = LLVMPrintModuleToString(c->mod);
  LLVMDisposeModule(c->mod);
  c->mod = LLVMModuleCreateWithNameInContext("twins", c->ctx); // for cg_dispose
}

static Distinct find_twins(const LFunc *const *fns, int nfns) {
  int total = 0;
  for (int k = 0; k < nfns; k++)
    total += fns[k]->nkernels;
  Printed P = {xcalloc(total + 1, sizeof *P.ref), xcalloc(total + 1, sizeof *P.text),
               xcalloc(total + 1, sizeof *P.symbol), xcalloc(total + 1, sizeof *P.size), {0}};
  for (int k = 0, i = 0; k < nfns; k++)
    for (int j = 0; j < fns[k]->nkernels; j++)
      P.ref[i++] = (KernelRef){fns[k], j};
  run_parallel(total, print_kernel, &P);
  for (int t = 0; t < MAX_THREADS; t++)
    if (P.cg[t])
      cg_dispose(P.cg[t]);

  // In order: the first of each text is the distinct kernel.
  Distinct d = {0, xcalloc(total + 1, sizeof *d.ref), xcalloc(total + 1, sizeof *d.symbol),
                xcalloc(total + 1, sizeof *d.size), xcalloc(nfns + 1, sizeof *d.canon)};
  uint64_t *hashes = xcalloc(total + 1, sizeof *hashes);
  int *first = xcalloc(total + 1, sizeof *first); // by distinct kernel: its text's index
  for (int k = 0, i = 0; k < nfns; k++) {
    d.canon[k] = xcalloc(fns[k]->nkernels + 1, sizeof **d.canon);
    for (int j = 0; j < fns[k]->nkernels; j++, i++) {
      uint64_t h = hash_text(P.text[i]);
      int u = 0;
      while (u < d.n && !(hashes[u] == h && !strcmp(P.text[first[u]], P.text[i])))
        u++;
      if (u == d.n) {
        hashes[u] = h;
        first[u] = i;
        d.ref[u] = P.ref[i];
        d.symbol[u] = P.symbol[i];
        d.size[u] = P.size[i];
        d.n++;
      } else {
        free(P.symbol[i]);
      }
      d.canon[k][j] = u;
    }
  }
  for (int i = 0; i < total; i++)
    LLVMDisposeMessage(P.text[i]);
  free(P.ref), free(P.text), free(P.symbol), free(P.size), free(hashes), free(first);
  return d;
}

// --- Entry points --------------------------------------------------------------------

typedef struct {
  const char *suffix; // "train" or "eval"
  LFunc *fns[4];
  int nfns;
  const char *main_fn;
} Exe;

static LFunc *func_of(LProgram *p, FuncKind kind) {
  for (int i = 0; i < p->nfuncs; i++)
    if (p->funcs[i]->kind == kind)
      return p->funcs[i];
  return NULL;
}

// xc_prepare_forward: what xc_forward computes from the weights alone (the
// linear layers' transposes), which xc_evaluate runs once before its
// batches instead of xc_forward at every batch (NAME-train's weights change
// between evaluations, NAME-eval's do not; at batch 1 the transposes were
// most of cifar10's forward pass). The kernels move from xc_forward as
// library.c moves them for a library; their results go to the end of
// xc_forward's workspace, out of the memory plan, where they stay between
// its calls (NAME-train's training step uses the workspace too, which is
// why every evaluation prepares again). The kernels and their order are
// unchanged: the logits are the same bits.
static LFunc *prepare_forward(LProgram *p, LFunc *forward) {
  if (!forward)
    return NULL;
  int64_t start = p->blocks->state_floats, end = start;
  LFunc *prep = hoist_weight_kernels(forward, "xc_prepare_forward", &end);
  if (!prep) { // nothing to move: an empty function all the same, for the runtime
    prep = xcalloc(1, sizeof *prep);
    *prep = *forward;
    prep->name = "xc_prepare_forward";
    prep->kind = FN_APPLY_STEP;
    prep->nkernels = 0;
    prep->result = prep->logits = NULL;
    prep->workspace_bytes = 0;
    return prep;
  }
  // The moved buffers are state offsets from `start` on (hoist_weight_kernels'
  // placement, which the memory plan leaves alone): plan the rest of the
  // forward pass again, then put them past it.
  LProgram one = {.funcs = &forward, .nfuncs = 1, .blocks = p->blocks, .opt_level = p->opt_level};
  const char *plan[] = {"plan-memory"};
  run_loop_pipeline(&one, plan, 1, NULL);
  int64_t base = (forward->workspace_bytes + 63) / 64 * 64;
  for (int i = 0; i < forward->nbufs; i++) {
    LBuf *b = forward->bufs[i];
    if (!b->alias && b->storage == LB_STATE && b->offset >= start) {
      b->storage = LB_WORKSPACE;
      b->offset = base + (b->offset - start) * 4;
    }
  }
  forward->workspace_bytes = base + (end - start) * 4;
  return prep;
}

// The module of one executable: its step functions, calling their kernels
// (defined here when symbols is NULL, else declared by symbol), the NaN
// check, xc_model and main.
static Cg *main_module(Model *m, LProgram *p, Graph *train, const Exe *exe, int outputs,
                       bool float_labels, const char *const *const *symbols) {
  Cg *c = cg_new(xformat("%s-%s", m->name, exe->suffix));
  int64_t ws = 0; // the runtime allocates one workspace for all step functions
  for (int i = 0; i < exe->nfns; i++) {
    LFunc *f = exe->fns[i];
    ir_assert(f);
    if (symbols)
      emit_lstep(c, f, symbols[i]);
    else
      emit_lfunc(c, f);
    if (f->workspace_bytes > ws)
      ws = f->workspace_bytes;
  }
  if (train && !strcmp(exe->suffix, "train"))
    emit_grad_check(c, train, p->blocks);
  LFunc *grad = func_of(p, FN_GRAD_STEP);
  emit_model(c, m, train, p, ws, outputs, float_labels, grad && grad->logits);
  emit_main(c, exe->main_fn);
  return c;
}

// Groups the distinct kernels that the same executables link into modules
// of about this many LLVM instructions: enough modules to keep every
// processor busy, few enough that each module's fixed costs stay small.
enum { KERNEL_MODULE_SIZE = 4000 };

void codegen(Model *m, LProgram *p, Graph *train, Graph *eval, const CodegenOptions *opt) {
  ir_assert(train || eval);
  Node *logits = eval ? eval->ret[0] : train->nret > 1 ? train->ret[1] : NULL;
  int outputs = logits && logits->type.rank ? (int)logits->type.dim[logits->type.rank - 1] : m->nclasses;
  Node *label = train ? graph_find(train, "label") : NULL;
  bool float_labels = label ? label->type.dtype == DT_F32 : outputs == 1;

  LFunc *forward = func_of(p, FN_FORWARD), *prepare = prepare_forward(p, forward);
  Exe exes[2];
  int nexes = 0;
  if (train) {
    exes[nexes] = (Exe){"train", {func_of(p, FN_GRAD_STEP), func_of(p, FN_APPLY_STEP), forward,
                                  prepare},
                        eval ? 4 : 2, "xc_train_main"};
    nexes++;
  }
  if (eval)
    exes[nexes++] = (Exe){"eval", {forward, prepare}, 2, "xc_eval_main"};

  // Fail before minutes of optimization if the outputs cannot be written.
  char *outdir = dirname(xstrdup(opt->output));
  if (strcmp(opt->output, "-") && access(outdir, W_OK) != 0)
    fatal("cannot write %s-*: directory '%s' does not exist or is not writable (check -o)",
          opt->output, outdir);
  check_cpu(opt);
  LLVMTargetMachineRef tm = target_machine(opt);
  llvm_passes(opt->opt_level);

  if (opt->emit) { // one module per executable, as it is
    for (int e = 0; e < nexes; e++) {
      Cg *c = main_module(m, p, train, &exes[e], outputs, float_labels, NULL);
      finish_module(c, tm, opt);
      const char *ext = !strcmp(opt->emit, "llvm") ? "ll" : !strcmp(opt->emit, "asm") ? "s" : "o";
      write_module(c, tm, opt->emit,
                   strcmp(opt->output, "-") ? xformat("%s-%s.%s", opt->output, exes[e].suffix, ext)
                                            : "-");
      cg_dispose(c);
    }
    return;
  }

  // The functions of both executables (NAME-eval's xc_forward is NAME-train's).
  const LFunc *fns[4];
  int nfns = 0, fn_index[2][4];
  for (int e = 0; e < nexes; e++)
    for (int i = 0; i < exes[e].nfns; i++) {
      LFunc *f = exes[e].fns[i];
      ir_assert(f);
      int k = 0;
      while (k < nfns && fns[k] != f)
        k++;
      if (k == nfns)
        fns[nfns++] = f;
      fn_index[e][i] = k;
    }
  Distinct d = find_twins(fns, nfns);

  // Which executables link each distinct kernel.
  unsigned *users = xcalloc(d.n + 1, sizeof *users);
  for (int e = 0; e < nexes; e++)
    for (int i = 0; i < exes[e].nfns; i++) {
      int k = fn_index[e][i];
      for (int j = 0; j < fns[k]->nkernels; j++)
        users[d.canon[k][j]] |= 1u << e;
    }

  // Kernel modules: per set of users, the kernels dealt out to balance sizes
  // (the largest first, each to the smallest module so far).
  int max_jobs = nexes + d.n;
  Job *jobs = xcalloc(max_jobs + 1, sizeof *jobs);
  int njobs = 0;
  int *order = xcalloc(d.n + 1, sizeof *order);
  for (unsigned set = 1; set < 1u << nexes; set++) {
    int n = 0;
    int64_t total = 0;
    for (int u = 0; u < d.n; u++)
      if (users[u] == set) {
        order[n++] = u;
        total += d.size[u];
      }
    if (!n)
      continue;
    for (int a = 1; a < n; a++) // by size, largest first; stable
      for (int b = a; b > 0 && d.size[order[b]] > d.size[order[b - 1]]; b--) {
        int t = order[b];
        order[b] = order[b - 1];
        order[b - 1] = t;
      }
    int nmod = (int)((total + KERNEL_MODULE_SIZE / 2) / KERNEL_MODULE_SIZE);
    nmod = nmod < 1 ? 1 : nmod > n ? n : nmod;
    Job *first = &jobs[njobs];
    for (int g = 0; g < nmod; g++) {
      Job *j = &jobs[njobs++];
      j->name = xformat("kernels-%s%s%d", set & 1 ? exes[0].suffix : "",
                        set & 2 ? xformat("%s%s", set & 1 ? "+" : "", exes[1].suffix) : "", g + 1);
      j->kernels = xcalloc(n + 1, sizeof *j->kernels);
      j->symbols = xcalloc(n + 1, sizeof *j->symbols);
      j->opt = opt;
      for (int e = 0; e < nexes; e++)
        j->linked_into[e] = set >> e & 1;
    }
    for (int a = 0; a < n; a++) {
      Job *j = first;
      for (int g = 1; g < nmod; g++)
        if (first[g].size < j->size)
          j = &first[g];
      int u = order[a];
      j->kernels[j->nkernels] = d.ref[u];
      ((const char **)j->symbols)[j->nkernels++] = d.symbol[u];
      j->size += d.size[u];
    }
  }

  // The main modules, here: their step functions may stop on a user's error.
  for (int e = 0; e < nexes; e++) {
    const char *const **symbols = xcalloc(exes[e].nfns, sizeof *symbols);
    for (int i = 0; i < exes[e].nfns; i++) {
      int k = fn_index[e][i];
      const char **s = xcalloc(fns[k]->nkernels + 1, sizeof *s);
      for (int j = 0; j < fns[k]->nkernels; j++)
        s[j] = d.symbol[d.canon[k][j]];
      symbols[i] = s;
    }
    Job *j = &jobs[njobs++];
    j->name = xstrdup(exes[e].suffix);
    j->opt = opt;
    j->linked_into[e] = true;
    double t0 = thread_cpu_now();
    j->c = main_module(m, p, train, &exes[e], outputs, float_labels, symbols);
    for (LLVMValueRef fn = LLVMGetFirstFunction(j->c->mod); fn; fn = LLVMGetNextFunction(fn))
      j->size += instruction_count(fn);
    j->emit = thread_cpu_now() - t0;
  }
  LLVMDisposeTargetMachine(tm);
  time_phase("LLVM IR: step functions, kernel twins");

  int nthreads = run_jobs(jobs, njobs);
  char *detail = xstrdup("");
  for (int i = 0; i < njobs; i++) {
    Job *j = &jobs[i];
    char *row = xformat("%s    %-22s %3d kernels %6lld instrs: IR %.3f, opt %.3f, codegen %.3f\n",
                        detail, j->name, j->nkernels, (long long)j->size, j->emit, j->optimize,
                        j->machine);
    free(detail);
    detail = row;
  }
  time_phase_detail(xformat("LLVM: %d modules on %d thread%s", njobs, nthreads,
                            nthreads == 1 ? "" : "s"),
                    detail);

  // Objects, then both executables linked at once.
  make_tmpdir();
  char **paths = xcalloc(njobs + 1, sizeof *paths);
  for (int i = 0; i < njobs; i++) {
    paths[i] = write_object(jobs[i].obj, jobs[i].name);
    LLVMDisposeMemoryBuffer(jobs[i].obj);
  }
  Link links[2];
  for (int e = 0; e < nexes; e++) {
    char **objs = xcalloc(njobs + 1, sizeof *objs);
    int n = 0;
    for (int i = 0; i < njobs; i++) // the main module first, then kernels in order
      if (jobs[i].linked_into[e] && !jobs[i].nkernels)
        objs[n++] = paths[i];
    for (int i = 0; i < njobs; i++)
      if (jobs[i].linked_into[e] && jobs[i].nkernels)
        objs[n++] = paths[i];
    start_link(&links[e], objs, n, xformat("%s-%s", opt->output, exes[e].suffix),
               !strcmp(exes[e].suffix, "train"));
    free(objs);
  }
  wait_links(links, nexes);
  remove_scratch();
  time_phase("write objects, link");
}

void codegen_function_object(Graph *g, const char *fn, const char *obj_path,
                             const CodegenOptions *opt) {
  LProgram *p = lower_slots(g, fn);
  p->opt_level = opt->opt_level;
  p->target = *loop_target(opt);
  int n;
  const char *const *names = loop_pipeline(opt->opt_level, &n);
  run_loop_pipeline(p, names, n, NULL);
  Cg *c = cg_new(fn);
  emit_lfunc(c, p->funcs[0]);
  LLVMTargetMachineRef tm = target_machine(opt);
  finish_module(c, tm, opt);
  write_module(c, tm, "obj", obj_path);
}

// Code generation driver: builds one LLVM module per executable (the step
// functions from lowered graphs, the `xc_model` description and `main`),
// optimizes it for the host or -mcpu, writes .ll/.s/.o, and links objects
// with the runtime library into NAME-train and NAME-eval.
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
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static Cg *cg_new(const char *name) {
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

static LLVMValueRef cstring(Cg *c, const char *s) {
  LLVMValueRef init = LLVMConstStringInContext(c->ctx, s, strlen(s), false);
  LLVMValueRef g = LLVMAddGlobal(c->mod, LLVMTypeOf(init), ".str");
  LLVMSetInitializer(g, init);
  LLVMSetGlobalConstant(g, true);
  LLVMSetLinkage(g, LLVMPrivateLinkage);
  LLVMSetUnnamedAddress(g, LLVMGlobalUnnamedAddr);
  return g;
}

static void begin_function(Cg *c, LLVMValueRef fn) {
  c->fn = fn;
  c->entry = LLVMAppendBasicBlockInContext(c->ctx, fn, "entry");
  LLVMPositionBuilderAtEnd(c->b, c->entry);
}

// `int32_t xc_grad_check(const float *grads)`: the index (in xc_model.params)
// of the first parameter whose gradient holds a NaN or an infinity, or -1.
// x - x is NaN exactly when x is not finite.
static void emit_grad_check(Cg *c, Graph *g, const LBlocks *b) {
  LLVMTypeRef ft = LLVMFunctionType(c->i32, &c->ptr, 1, false);
  LLVMValueRef fn = LLVMAddFunction(c->mod, "xc_grad_check", ft);
  begin_function(c, fn);
  LLVMValueRef grads = LLVMGetParam(fn, 0);
  for (int t = 0; t < b->nparams; t++) {
    Node *p = b->params[t].node;
    if (!graph_find(g, xformat("%s.grad", p->name)))
      continue; // frozen: no gradient
    LLVMBasicBlockRef pre = LLVMGetInsertBlock(c->b);
    LLVMBasicBlockRef loop = LLVMAppendBasicBlockInContext(c->ctx, fn, "scan");
    LLVMBasicBlockRef bad = LLVMAppendBasicBlockInContext(c->ctx, fn, "bad");
    LLVMBasicBlockRef next = LLVMAppendBasicBlockInContext(c->ctx, fn, "next");
    LLVMBuildBr(c->b, loop);
    LLVMPositionBuilderAtEnd(c->b, loop);
    LLVMValueRef i = LLVMBuildPhi(c->b, c->i64, "i");
    LLVMValueRef at = LLVMBuildAdd(c->b, i, CI(c, b->params[t].offset), "");
    LLVMValueRef x = LLVMBuildLoad2(c->b, c->f32, LLVMBuildInBoundsGEP2(c->b, c->f32, grads, &at, 1, ""), "");
    LLVMValueRef nan = LLVMBuildFCmp(c->b, LLVMRealUNO, LLVMBuildFSub(c->b, x, x, ""),
                                     LLVMConstReal(c->f32, 0), "");
    LLVMValueRef i1 = LLVMBuildAdd(c->b, i, CI(c, 1), "");
    LLVMValueRef done = LLVMBuildICmp(c->b, LLVMIntEQ, i1, CI(c, type_numel(&p->type)), "");
    LLVMBasicBlockRef cont = LLVMAppendBasicBlockInContext(c->ctx, fn, "cont");
    LLVMBuildCondBr(c->b, nan, bad, cont);
    LLVMPositionBuilderAtEnd(c->b, cont);
    LLVMBuildCondBr(c->b, done, next, loop);
    LLVMAddIncoming(i, (LLVMValueRef[]){CI(c, 0), i1}, (LLVMBasicBlockRef[]){pre, cont}, 2);
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

static LLVMValueRef tensor_table(Cg *c, const LBlockEntry *e, int count, LLVMTypeRef ti) {
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
static LLVMValueRef string_table(Cg *c, char **s, int n, const char *name) {
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
  LLVMTypeRef f[4] = {c->ptr, c->ptr, c->ptr, c->i64};
  *type = LLVMStructCreateNamed(c->ctx, "XcKernelInfo");
  LLVMStructSetBody(*type, f, 4, false);
  LLVMValueRef *rows = xcalloc(c->nkernels + 1, sizeof *rows);
  for (int i = 0; i < c->nkernels; i++) {
    KernelInfo *k = &c->kernels[i];
    LLVMValueRef v[4] = {cstring(c, k->function), cstring(c, k->op), cstring(c, k->layer),
                         CI(c, k->flops)};
    rows[i] = LLVMConstNamedStruct(*type, v, 4);
  }
  LLVMValueRef init = LLVMConstArray(*type, rows, c->nkernels);
  LLVMValueRef g = LLVMAddGlobal(c->mod, LLVMTypeOf(init), "xc_kernels");
  LLVMSetInitializer(g, init);
  LLVMSetGlobalConstant(g, true);
  LLVMSetLinkage(g, LLVMPrivateLinkage);
  return g;
}

// `void xc_fma_peak(int64_t n, float *out)`: n rounds of 12 independent
// 8-lane fused multiply-adds (192 floating-point operations per round), the
// kind of loop that reaches the machine's peak; --profile times it to say
// what share of the peak each kernel reaches.
static void emit_fma_peak(Cg *c) {
  enum { CHAINS = 12, LANES = 8 };
  LLVMTypeRef vt = LLVMVectorType(c->f32, LANES);
  LLVMTypeRef p[2] = {c->i64, c->ptr};
  LLVMValueRef fn = LLVMAddFunction(c->mod, "xc_fma_peak", LLVMFunctionType(c->voidt, p, 2, false));
  LLVMSetFunctionCallConv(fn, LLVMCCallConv);
  begin_function(c, fn);
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(c->b);
  LLVMBasicBlockRef loop = LLVMAppendBasicBlockInContext(c->ctx, fn, "loop");
  LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(c->ctx, fn, "done");
  LLVMBuildBr(c->b, loop);
  LLVMPositionBuilderAtEnd(c->b, loop);
  LLVMValueRef i = LLVMBuildPhi(c->b, c->i64, "i");
  LLVMValueRef acc[CHAINS], next[CHAINS];
  LLVMValueRef a = LLVMConstVector((LLVMValueRef[]){LLVMConstReal(c->f32, 0.999999f),
                                                    LLVMConstReal(c->f32, 0.999999f),
                                                    LLVMConstReal(c->f32, 0.999999f),
                                                    LLVMConstReal(c->f32, 0.999999f),
                                                    LLVMConstReal(c->f32, 0.999999f),
                                                    LLVMConstReal(c->f32, 0.999999f),
                                                    LLVMConstReal(c->f32, 0.999999f),
                                                    LLVMConstReal(c->f32, 0.999999f)},
                                   LANES);
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
  LLVMBuildRetVoid(c->b);
}

static void emit_model(Cg *c, Model *m, const LBlocks *b, int64_t workspace, int outputs,
                       bool float_labels) {
  LLVMTypeRef ti_fields[6] = {c->ptr, c->i32, LLVMArrayType(c->i64, 4), c->i64, c->i32, c->i64};
  LLVMTypeRef ti = LLVMStructCreateNamed(c->ctx, "XcTensorInfo");
  LLVMStructSetBody(ti, ti_fields, 6, false);
  LLVMTypeRef f4 = LLVMArrayType(c->f32, 4), st, kt;
  LLVMValueRef schedule = schedule_struct(c, m->graph, &st);
  LLVMValueRef kernels = kernel_table(c, &kt);
  emit_fma_peak(c);
  // Field for field the C layout of XcModel in runtime/xentcc_rt.h.
  LLVMTypeRef mf[] = {c->ptr, c->i32, c->i32, c->i32, c->i32, c->i32, c->ptr, c->i32, c->i32,
                      c->i32, c->ptr, c->i64, c->i32, c->ptr, c->i64, c->i64, c->i32, c->ptr,
                      c->i32, c->i32,
                      c->i32, c->i32, c->i32, c->f64, st,     c->ptr, c->ptr, c->ptr, c->f32,
                      f4,     f4,     c->i32, c->i32, c->i32, c->i32, c->i32, c->ptr};
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
      CI32(c, m->data.random_flip), CI32(c, m->data.convert), CI32(c, m->data.resize),
      CI32(c, c->nkernels), kernels};
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

// --- Target, optimization, files --------------------------------------------------

static LLVMTargetMachineRef target_machine(const CodegenOptions *opt) {
  static bool inited;
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

// LLVM only warns about an unknown -mcpu and may then abort deep inside code
// generation, so probe it in a child process on an empty module first.
static void check_cpu(const CodegenOptions *opt) {
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

static void finish_module(Cg *c, LLVMTargetMachineRef tm, const CodegenOptions *opt) {
  char *triple = LLVMGetTargetMachineTriple(tm);
  LLVMSetTarget(c->mod, triple);
  LLVMTargetDataRef td = LLVMCreateTargetDataLayout(tm);
  char *layout = LLVMCopyStringRepOfTargetData(td);
  LLVMSetDataLayout(c->mod, layout);
  char *err = NULL;
  if (LLVMVerifyModule(c->mod, LLVMReturnStatusAction, &err)) {
    fprintf(stderr, "%s\n", err);
    internal_error(__FILE__, __LINE__, "generated LLVM IR does not verify");
  }
  LLVMDisposeMessage(err);
  LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
  char passes[32];
  snprintf(passes, sizeof passes, "default<O%d>", opt->opt_level < 0 ? 0 : opt->opt_level > 3 ? 3 : opt->opt_level);
  LLVMErrorRef e = LLVMRunPasses(c->mod, passes, tm, po);
  if (e) {
    char *msg = LLVMGetErrorMessage(e);
    fatal("LLVM optimization failed: %s", msg);
  }
  LLVMDisposePassBuilderOptions(po);
  sanitize_module(c, tm, opt);
}

static void write_module(Cg *c, LLVMTargetMachineRef tm, const char *kind, const char *path) {
  char *err = NULL;
  bool failed;
  if (!strcmp(kind, "llvm"))
    failed = LLVMPrintModuleToFile(c->mod, path, &err);
  else
    failed = LLVMTargetMachineEmitToFile(tm, c->mod, (char *)path,
                                         !strcmp(kind, "asm") ? LLVMAssemblyFile : LLVMObjectFile,
                                         &err);
  if (failed)
    fatal("cannot write %s: %s (check that the directory exists and is writable)", path,
          err ? err : "unknown error");
}

// --- Linking -------------------------------------------------------------------------

// The runtime's link line is recorded at build time beside its archive,
// one argument per line (runtime/CMakeLists.txt): the archive, OpenMP, the
// image libraries and, in a sanitizer build, the runtime's -fsanitize flags.
static const char *runtime_dir(void) {
  struct stat st;
  if (stat(XENTCC_RUNTIME_DIR "/xentcc_rt.link", &st) == 0)
    return XENTCC_RUNTIME_DIR;
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = '\0';
    return xformat("%s/../lib", dirname(self));
  }
  return XENTCC_RUNTIME_DIR;
}

extern char **environ;

// A path the linker cannot mistake for an option: "-x" becomes "./-x".
static const char *not_an_option(const char *path) {
  return path[0] == '-' ? xformat("./%s", path) : path;
}

// The linker's argument vector: XENTCC_LINKER obj <link file lines> -o out.
static char **link_command(const char *obj, const char *out) {
  const char *file = xformat("%s/xentcc_rt.link", runtime_dir());
  struct stat st;
  if (stat(file, &st) != 0)
    fatal("runtime link line %s not found; build the xentcc_rt target first", file);
  char *text = read_file(file, "runtime link line");
  int n = 0, cap = 8;
  char **argv = xcalloc(cap, sizeof *argv);
  argv[n++] = XENTCC_LINKER;
  argv[n++] = (char *)not_an_option(obj);
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

// Runs argv[0], found on PATH, with argv and no shell in between; what it
// prints (stdout and stderr, the first 16 KiB) goes to *output. Returns its
// wait status, or -1 with errno set when it cannot be started.
static int run_captured(char *const argv[], char **output) {
  enum { KEEP = 16384 };
  char *buf = xcalloc(1, KEEP + 1);
  size_t len = 0;
  *output = buf;
  int fd[2];
  if (pipe(fd) != 0)
    return -1;
  fcntl(fd[0], F_SETFD, FD_CLOEXEC); // the child keeps only its stdout and stderr
  fcntl(fd[1], F_SETFD, FD_CLOEXEC);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
  posix_spawn_file_actions_adddup2(&fa, fd[1], 2);
  pid_t pid;
  int err = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fd[1]);
  if (err) {
    close(fd[0]);
    errno = err;
    return -1;
  }
  char chunk[4096];
  for (;;) {
    ssize_t r = read(fd[0], chunk, sizeof chunk);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    size_t take = (size_t)r < KEEP - len ? (size_t)r : KEEP - len;
    memcpy(buf + len, chunk, take);
    len += take;
  }
  close(fd[0]);
  buf[len] = '\0';
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR)
      return -1;
  return status;
}

// Links obj with the runtime into out. The linker writes a fresh file beside
// out that is renamed over it only when complete, so a failed link leaves
// no half-written executable (nor removes an old one). On failure, obj and
// the temporary directory are removed before saying why.
static void link_executable(const char *obj, const char *tmpdir, const char *out) {
  char *partial = xformat("%s.link-XXXXXX", out);
  int fd = mkstemp(partial);
  const char *why = NULL;
  if (fd < 0) {
    why = xformat("cannot write %s: %s", out, strerror(errno));
  } else {
    close(fd);
    char **argv = link_command(obj, partial);
    char *output;
    int st = run_captured(argv, &output);
    size_t len = strlen(output);
    while (len > 0 && output[len - 1] == '\n')
      output[--len] = '\0';
    mode_t mask = umask(0); // mkstemp made it 0600; an executable is 0777 less the umask
    umask(mask);
    if (st < 0)
      why = xformat("cannot run the linker '%s': %s (install a C compiler: apt-get install "
                    "build-essential)",
                    argv[0], strerror(errno));
    else if (WIFSIGNALED(st))
      why = xformat("linking %s failed: %s was killed by signal %d%s%s", out, argv[0],
                    WTERMSIG(st), len ? ":\n" : "", output);
    else if (WEXITSTATUS(st) != 0)
      why = xformat("linking %s failed: %s exited with status %d%s%s", out, argv[0],
                    WEXITSTATUS(st), len ? ":\n" : "", output);
    else if (chmod(partial, 0777 & ~mask) != 0 || rename(partial, out) != 0)
      why = xformat("cannot write %s: %s", out, strerror(errno));
    if (why)
      unlink(partial);
  }
  unlink(obj);
  if (why) {
    rmdir(tmpdir);
    fatal("%s", why);
  }
}

// The directory holding an object between writing and linking, and the
// object: removed however the compiler ends (exit runs remove_scratch), so a
// failed compile leaves nothing in $TMPDIR.
static char *scratch_dir, *scratch_obj;

static void remove_scratch(void) {
  if (scratch_obj)
    unlink(scratch_obj);
  if (scratch_dir)
    rmdir(scratch_dir);
  scratch_obj = scratch_dir = NULL;
}

// A fresh directory for the object: in $TMPDIR, else /tmp. Made only once
// the module has verified and been optimized, so an internal error (which
// aborts, skipping exit handlers) never finds one.
static char *make_tmpdir(void) {
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

// --- Entry points --------------------------------------------------------------------

typedef struct {
  const char *suffix; // "train" or "eval"
  FuncKind fns[3];
  int nfns;
  const char *main_fn;
} Exe;

static LFunc *func_of(LProgram *p, FuncKind kind) {
  for (int i = 0; i < p->nfuncs; i++)
    if (p->funcs[i]->kind == kind)
      return p->funcs[i];
  return NULL;
}

void codegen(Model *m, LProgram *p, Graph *train, Graph *eval, const CodegenOptions *opt) {
  ir_assert(train || eval);
  Node *logits = eval ? eval->ret[0] : train->nret > 1 ? train->ret[1] : NULL;
  int outputs = logits && logits->type.rank ? (int)logits->type.dim[logits->type.rank - 1] : m->nclasses;
  Node *label = train ? graph_find(train, "label") : NULL;
  bool float_labels = label ? label->type.dtype == DT_F32 : outputs == 1;

  Exe exes[2];
  int nexes = 0;
  if (train) {
    exes[nexes] = (Exe){"train", {FN_GRAD_STEP, FN_APPLY_STEP, FN_FORWARD}, eval ? 3 : 2,
                        "xc_train_main"};
    nexes++;
  }
  if (eval)
    exes[nexes++] = (Exe){"eval", {FN_FORWARD}, 1, "xc_eval_main"};

  // Fail before minutes of optimization if the outputs cannot be written.
  char *outdir = dirname(xstrdup(opt->output));
  if (access(outdir, W_OK) != 0)
    fatal("cannot write %s-*: directory '%s' does not exist or is not writable (check -o)",
          opt->output, outdir);
  check_cpu(opt);
  LLVMTargetMachineRef tm = target_machine(opt);
  for (int e = 0; e < nexes; e++) {
    Cg *c = cg_new(xformat("%s-%s", m->name, exes[e].suffix));
    int64_t ws = 0; // the runtime allocates one workspace for all step functions
    for (int i = 0; i < exes[e].nfns; i++) {
      LFunc *f = func_of(p, exes[e].fns[i]);
      ir_assert(f);
      emit_lfunc(c, f);
      if (f->workspace_bytes > ws)
        ws = f->workspace_bytes;
    }
    if (train && !strcmp(exes[e].suffix, "train"))
      emit_grad_check(c, train, p->blocks);
    emit_model(c, m, p->blocks, ws, outputs, float_labels);
    emit_main(c, exes[e].main_fn);
    finish_module(c, tm, opt);
    if (opt->emit) {
      const char *ext = !strcmp(opt->emit, "llvm") ? "ll" : !strcmp(opt->emit, "asm") ? "s" : "o";
      write_module(c, tm, opt->emit, xformat("%s-%s.%s", opt->output, exes[e].suffix, ext));
    } else {
      char *tmpdir = make_tmpdir();
      char *obj = scratch_obj = xformat("%s/%s.o", tmpdir, exes[e].suffix);
      write_module(c, tm, "obj", obj);
      link_executable(obj, tmpdir, xformat("%s-%s", opt->output, exes[e].suffix));
      remove_scratch();
    }
    LLVMDisposeBuilder(c->b);
    LLVMDisposeModule(c->mod);
    LLVMContextDispose(c->ctx);
  }
}

void codegen_function_object(Graph *g, const char *fn, const char *obj_path,
                             const CodegenOptions *opt) {
  LProgram *p = lower_slots(g, fn);
  p->opt_level = opt->opt_level;
  int n;
  const char *const *names = loop_pipeline(opt->opt_level, &n);
  run_loop_pipeline(p, names, n, NULL);
  Cg *c = cg_new(fn);
  emit_lfunc(c, p->funcs[0]);
  LLVMTargetMachineRef tm = target_machine(opt);
  finish_module(c, tm, opt);
  write_module(c, tm, "obj", obj_path);
}

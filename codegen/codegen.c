// Code generation driver: builds one LLVM module per executable (the step
// functions from lowered graphs, the `xc_model` description and `main`),
// optimizes it for the host or -mcpu, writes .ll/.s/.o, and links objects
// with the runtime library into NAME-train and NAME-eval.
#include "emit.h"

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

static LLVMValueRef parallel_for_decl(Cg *c, LLVMTypeRef *ty) {
  LLVMTypeRef params[3] = {c->i64, c->ptr, c->ptr};
  *ty = LLVMFunctionType(c->voidt, params, 3, false);
  LLVMValueRef f = LLVMGetNamedFunction(c->mod, "xc_parallel_for");
  return f ? f : LLVMAddFunction(c->mod, "xc_parallel_for", *ty);
}

// Whether two buffers may share memory. Only an assign (target in, target
// out) reads and writes the same buffer; everything else is disjoint.
static bool overlaps(const Buffer *a, const Buffer *b) {
  if (a->kind != b->kind)
    return false;
  switch (a->kind) {
  case BUF_ARG:
  case BUF_SCALAR:
    return !strcmp(a->arg, b->arg);
  case BUF_SLOT:
    return a->slot == b->slot;
  case BUF_CONST:
    return false;
  default: {
    int64_t unit = a->kind == BUF_WORKSPACE ? 1 : 4;
    return a->offset * unit < b->offset * unit + b->bytes &&
           b->offset * unit < a->offset * unit + a->bytes;
  }
  }
}

static void add_attr(Cg *c, LLVMValueRef fn, unsigned index, const char *name) {
  unsigned kind = LLVMGetEnumAttributeKindForName(name, strlen(name));
  LLVMAddAttributeAtIndex(fn, index, LLVMCreateEnumAttribute(c->ctx, kind, 0));
}

// `void NAME.OP.I(ptr out, ptr in..., i64 lo, i64 hi)`: the loop nest of one
// kernel over [lo, hi) of its outer loop. Buffers that cannot overlap are
// noalias, so LLVM vectorizes without runtime alias checks; noinline keeps
// the step function a short list of calls and each kernel optimized alone.
static LLVMValueRef emit_kernel_function(Cg *c, const LoopFunc *f, int ki) {
  Node *n = f->k[ki].node;
  int np = n->nin + 1;
  LLVMTypeRef params[10];
  ir_assert(np + 2 <= 10);
  for (int i = 0; i < np; i++)
    params[i] = c->ptr;
  params[np] = params[np + 1] = c->i64;
  LLVMTypeRef ft = LLVMFunctionType(c->voidt, params, np + 2, false);
  LLVMValueRef fn = LLVMAddFunction(c->mod, xformat("%s.%s.%d", f->name, op_info(n->op)->name, ki), ft);
  LLVMSetLinkage(fn, LLVMInternalLinkage);
  add_attr(c, fn, LLVMAttributeFunctionIndex, "nounwind");
  if (!f->k[ki].parallel)
    add_attr(c, fn, LLVMAttributeFunctionIndex, "noinline");
  const Buffer *out = &f->buf[n->id];
  bool out_shared = false;
  for (int i = 0; i < n->nin; i++)
    if (overlaps(out, &f->buf[n->in[i]->id])) {
      out_shared = true;
    } else {
      add_attr(c, fn, i + 2, "noalias");
      add_attr(c, fn, i + 2, "readonly");
    }
  if (!out_shared)
    add_attr(c, fn, 1, "noalias");
  for (int i = 0; i < np; i++)
    add_attr(c, fn, i + 1, "nocapture");

  begin_function(c, fn);
  LLVMValueRef in[9];
  for (int i = 0; i < n->nin; i++)
    in[i] = LLVMGetParam(fn, i + 1);
  emit_kernel_body(c, n, LLVMGetParam(fn, 0), in, LLVMGetParam(fn, np), LLVMGetParam(fn, np + 1),
                   f->k[ki].relu);
  LLVMBuildRetVoid(c->b);
  return fn;
}

// `void NAME.OP.I.body(void **ctx, i64 lo, i64 hi)` for xc_parallel_for:
// ctx[0] is the output, then the operands.
static LLVMValueRef emit_parallel_body(Cg *c, LLVMValueRef kernel, int np) {
  LLVMTypeRef params[3] = {c->ptr, c->i64, c->i64};
  LLVMTypeRef ft = LLVMFunctionType(c->voidt, params, 3, false);
  size_t len;
  const char *kname = LLVMGetValueName2(kernel, &len);
  LLVMValueRef fn = LLVMAddFunction(c->mod, xformat("%s.body", kname), ft);
  LLVMSetLinkage(fn, LLVMInternalLinkage);
  add_attr(c, fn, LLVMAttributeFunctionIndex, "nounwind");
  begin_function(c, fn);
  LLVMValueRef ctx = LLVMGetParam(fn, 0);
  LLVMValueRef args[10];
  for (int i = 0; i < np; i++) {
    LLVMValueRef idx = CI(c, i);
    args[i] = LLVMBuildLoad2(c->b, c->ptr, LLVMBuildInBoundsGEP2(c->b, c->ptr, ctx, &idx, 1, ""), "");
  }
  args[np] = LLVMGetParam(fn, 1);
  args[np + 1] = LLVMGetParam(fn, 2);
  LLVMBuildCall2(c->b, LLVMGlobalGetValueType(kernel), kernel, args, np + 2, "");
  LLVMBuildRetVoid(c->b);
  return fn;
}

static LLVMValueRef const_global(Cg *c, Node *n) {
  const Attr *v = node_attr(n, "value");
  int64_t count = type_numel(&n->type);
  LLVMValueRef *vals = xcalloc(count ? count : 1, sizeof *vals);
  for (int64_t i = 0; i < count; i++)
    vals[i] = LLVMConstReal(c->f32, (float)v->floats[v->n == 1 ? 0 : i]);
  LLVMValueRef init = LLVMConstArray(c->f32, vals, count);
  LLVMValueRef g = LLVMAddGlobal(c->mod, LLVMTypeOf(init), n->name ? n->name : "const");
  LLVMSetInitializer(g, init);
  LLVMSetGlobalConstant(g, true);
  LLVMSetLinkage(g, LLVMPrivateLinkage);
  LLVMSetAlignment(g, 64);
  return g;
}

// The step function: buffer addresses first, then one call per kernel.
static void emit_function(Cg *c, const LoopFunc *f) {
  Graph *g = f->g;
  LLVMValueRef *kfn = xcalloc(f->nk + 1, sizeof *kfn);
  LLVMValueRef *body = xcalloc(f->nk + 1, sizeof *body);
  for (int i = 0; i < f->nk; i++) {
    kfn[i] = emit_kernel_function(c, f, i);
    if (f->k[i].parallel)
      body[i] = emit_parallel_body(c, kfn[i], f->k[i].node->nin + 1);
  }

  LLVMTypeRef ft;
  if (f->kind == FN_TRAIN_STEP) {
    LLVMTypeRef p[8] = {c->ptr, c->ptr, c->ptr, c->ptr, c->i32, c->i32, c->f32, c->ptr};
    ft = LLVMFunctionType(c->f32, p, 8, false);
  } else if (f->kind == FN_FORWARD) {
    LLVMTypeRef p[5] = {c->ptr, c->ptr, c->ptr, c->ptr, c->ptr};
    ft = LLVMFunctionType(c->voidt, p, 5, false);
  } else {
    LLVMTypeRef p[1] = {c->ptr};
    ft = LLVMFunctionType(c->voidt, p, 1, false);
  }
  LLVMValueRef fn = LLVMAddFunction(c->mod, f->name, ft);
  begin_function(c, fn);
  bool train = f->kind == FN_TRAIN_STEP;
  LLVMValueRef params = LLVMGetParam(fn, 0), state = LLVMGetParam(fn, 1);
  LLVMValueRef images = f->kind == FN_SLOTS ? NULL : LLVMGetParam(fn, 2);
  LLVMValueRef ws = f->kind == FN_SLOTS ? NULL : LLVMGetParam(fn, train ? 7 : 4);

  LLVMValueRef *buf = xcalloc(g->nnodes, sizeof *buf);
  for (int i = 0; i < g->nnodes; i++) {
    const Buffer *b = &f->buf[i];
    Node *n = g->node[i];
    LLVMValueRef off = CI(c, b->offset);
    switch (b->kind) {
    case BUF_PARAM:
      buf[i] = LLVMBuildInBoundsGEP2(c->b, c->f32, params, &off, 1, "");
      break;
    case BUF_STATE:
      buf[i] = LLVMBuildInBoundsGEP2(c->b, c->f32, state, &off, 1, "");
      break;
    case BUF_WORKSPACE:
      buf[i] = LLVMBuildInBoundsGEP2(c->b, c->i8, ws, &off, 1, "");
      break;
    case BUF_ARG:
      if (!strcmp(b->arg, "image"))
        buf[i] = images;
      else if (train)
        buf[i] = LLVMGetParam(fn, 3);
      else
        error_at(n->loc, "the evaluation graph takes only %image", "the forward pass cannot read %%%s",
                 b->arg);
      break;
    case BUF_SCALAR: {
      if (!train)
        error_at(n->loc, "the evaluation graph takes only %image", "the forward pass cannot read %%%s",
                 b->arg);
      int pi = !strcmp(b->arg, "step") ? 4 : !strcmp(b->arg, "epoch") ? 5 : 6;
      LLVMValueRef v = LLVMGetParam(fn, pi);
      buf[i] = LLVMBuildAlloca(c->b, LLVMTypeOf(v), b->arg);
      LLVMBuildStore(c->b, v, buf[i]);
      break;
    }
    case BUF_CONST:
      buf[i] = const_global(c, n);
      break;
    case BUF_SLOT: {
      LLVMValueRef idx = CI(c, b->slot);
      buf[i] = LLVMBuildLoad2(c->b, c->ptr, LLVMBuildInBoundsGEP2(c->b, c->ptr, params, &idx, 1, ""), "");
      break;
    }
    }
  }
  // Reshapes and in-place assigns share their operand's buffer.
  for (int i = 0; i < g->nnodes; i++)
    if (g->node[i]->op == OP_reshape && f->kind != FN_SLOTS)
      buf[i] = buf[g->node[i]->in[0]->id];

  LLVMValueRef ctx = LLVMBuildArrayAlloca(c->b, c->ptr, CI32(c, 8), "ctx");
  LLVMTypeRef pft;
  LLVMValueRef pfor = parallel_for_decl(c, &pft);
  for (int i = 0; i < f->nk; i++) {
    const Kernel *k = &f->k[i];
    Node *n = k->node;
    LLVMValueRef args[10];
    for (int j = 0; j <= n->nin; j++)
      args[j] = j == 0 ? buf[n->id] : buf[n->in[j - 1]->id];
    if (k->parallel) {
      for (int j = 0; j <= n->nin; j++) {
        LLVMValueRef idx = CI(c, j);
        LLVMBuildStore(c->b, args[j], LLVMBuildInBoundsGEP2(c->b, c->ptr, ctx, &idx, 1, ""));
      }
      LLVMValueRef pargs[3] = {CI(c, k->trip), body[i], ctx};
      LLVMBuildCall2(c->b, pft, pfor, pargs, 3, "");
    } else {
      args[n->nin + 1] = CI(c, 0);
      args[n->nin + 2] = CI(c, k->trip);
      LLVMBuildCall2(c->b, LLVMGlobalGetValueType(kfn[i]), kfn[i], args, n->nin + 3, "");
    }
  }
  if (f->kind == FN_TRAIN_STEP) {
    LLVMBuildRet(c->b, LLVMBuildLoad2(c->b, c->f32, buf[g->ret[0]->id], "loss"));
  } else if (f->kind == FN_FORWARD) {
    int64_t bytes = type_numel(&g->ret[0]->type) * 4;
    LLVMBuildMemCpy(c->b, LLVMGetParam(fn, 3), 4, buf[g->ret[0]->id], 4, CI(c, bytes));
    LLVMBuildRetVoid(c->b);
  } else {
    LLVMBuildRetVoid(c->b);
  }
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

static LLVMValueRef tensor_table(Cg *c, const BlockEntry *e, int count, LLVMTypeRef ti) {
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

static void emit_model(Cg *c, Model *m, const Blocks *b, int64_t workspace, int outputs,
                       bool float_labels) {
  LLVMTypeRef ti_fields[6] = {c->ptr, c->i32, LLVMArrayType(c->i64, 4), c->i64, c->i32, c->i64};
  LLVMTypeRef ti = LLVMStructCreateNamed(c->ctx, "XcTensorInfo");
  LLVMStructSetBody(ti, ti_fields, 6, false);
  LLVMTypeRef f4 = LLVMArrayType(c->f32, 4);
  // Field for field the C layout of XcModel in runtime/xentcc_rt.h.
  LLVMTypeRef mf[] = {c->ptr, c->i32, c->i32, c->i32, c->i32, c->i32, c->ptr, c->i32, c->i32,
                      c->i32, c->ptr, c->i64, c->i32, c->ptr, c->i64, c->i64, c->i32, c->i32,
                      c->i32, c->i32, c->i32, c->f32, c->ptr, c->ptr, c->ptr, c->f32, f4,
                      f4,     c->i32, c->i32};
  int nmf = sizeof mf / sizeof *mf;
  LLVMTypeRef mt = LLVMStructCreateNamed(c->ctx, "XcModel");
  LLVMStructSetBody(mt, mf, nmf, false);

  LLVMValueRef *names = xcalloc(m->nclasses + 1, sizeof *names);
  for (int i = 0; i < m->nclasses; i++)
    names[i] = cstring(c, m->classes[i]);
  LLVMValueRef cn_init = LLVMConstArray(c->ptr, names, m->nclasses);
  LLVMValueRef cn = LLVMAddGlobal(c->mod, LLVMTypeOf(cn_init), "xc_class_names");
  LLVMSetInitializer(cn, cn_init);
  LLVMSetGlobalConstant(cn, true);
  LLVMSetLinkage(cn, LLVMPrivateLinkage);

  LLVMValueRef mean[4], std[4];
  for (int i = 0; i < 4; i++) {
    mean[i] = LLVMConstReal(c->f32, m->data.mean[i]);
    std[i] = LLVMConstReal(c->f32, m->data.std[i]);
  }
  double lr = graph_float(m->graph, "lr", 0.001);
  LLVMValueRef v[] = {
      cstring(c, m->name), CI32(c, m->batch_size), CI32(c, m->channels), CI32(c, m->height),
      CI32(c, m->width), CI32(c, m->nclasses), cn, CI32(c, outputs),
      CI32(c, float_labels ? 1 : 0), CI32(c, b->nparams),
      tensor_table(c, b->params, b->nparams, ti), CI(c, b->param_floats), CI32(c, b->nstates),
      tensor_table(c, b->states, b->nstates, ti), CI(c, b->state_floats), CI(c, workspace),
      CI32(c, m->epochs), CI32(c, m->seed), CI32(c, m->shuffle), CI32(c, m->drop_last),
      CI32(c, m->log_every), LLVMConstReal(c->f32, lr),
      cstring(c, m->data.format ? m->data.format : ""),
      cstring(c, absolute(m->data.train)), cstring(c, absolute(m->data.test)),
      LLVMConstReal(c->f32, m->data.val_split), LLVMConstArray(c->f32, mean, 4),
      LLVMConstArray(c->f32, std, 4), CI32(c, m->data.random_crop_padding),
      CI32(c, m->data.random_flip)};
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

// A fresh directory for the objects: in $TMPDIR, else /tmp.
static char *make_tmpdir(void) {
  const char *base = getenv("TMPDIR");
  if (!base || !*base)
    base = "/tmp";
  char *dir = xformat("%s/xentcc-XXXXXX", base);
  if (!mkdtemp(dir))
    fatal("cannot create a temporary directory in %s: %s (set TMPDIR to a writable directory)",
          base, strerror(errno));
  return dir;
}

// --- Entry points --------------------------------------------------------------------

typedef struct {
  const char *suffix; // "train" or "eval"
  LoopFunc *fns[2];
  int nfns;
  const char *main_fn;
} Exe;

void codegen(Model *m, Graph *train, Graph *eval, const CodegenOptions *opt) {
  ir_assert(train || eval);
  Blocks *blocks = plan_blocks(train ? train : eval);
  LoopFunc *step = train ? lower_graph(train, FN_TRAIN_STEP, "xc_train_step", blocks) : NULL;
  LoopFunc *fwd = eval ? lower_graph(eval, FN_FORWARD, "xc_forward", blocks) : NULL;
  const char *pa = opt->print_after;
  bool print_lower = pa && (!strcmp(pa, "lower") || !strcmp(pa, "all"));
  bool emit_loops = opt->emit && !strcmp(opt->emit, "loops");
  LoopFunc *fns[2] = {step, fwd};
  for (int i = 0; i < 2; i++) {
    if (!fns[i])
      continue;
    if (print_lower) {
      fprintf(stderr, "; *** IR Dump After lower (%s) ***\n", fns[i]->name);
      print_loops(stderr, fns[i]);
    }
    if (emit_loops)
      print_loops(stdout, fns[i]);
  }
  if (emit_loops)
    return;

  Node *logits = eval ? eval->ret[0] : train->nret > 1 ? train->ret[1] : NULL;
  int outputs = logits && logits->type.rank ? (int)logits->type.dim[logits->type.rank - 1] : m->nclasses;
  Node *label = train ? graph_find(train, "label") : NULL;
  bool float_labels = label ? label->type.dtype == DT_F32 : outputs == 1;

  Exe exes[2];
  int nexes = 0;
  if (train) {
    exes[nexes] = (Exe){"train", {step, fwd}, fwd ? 2 : 1, "xc_train_main"};
    nexes++;
  }
  if (eval)
    exes[nexes++] = (Exe){"eval", {fwd}, 1, "xc_eval_main"};

  // Fail before minutes of optimization if the outputs cannot be written.
  char *outdir = dirname(xstrdup(opt->output));
  if (access(outdir, W_OK) != 0)
    fatal("cannot write %s-*: directory '%s' does not exist or is not writable (check -o)",
          opt->output, outdir);
  check_cpu(opt);
  LLVMTargetMachineRef tm = target_machine(opt);
  char *tmpdir = opt->emit ? NULL : make_tmpdir();
  for (int e = 0; e < nexes; e++) {
    Cg *c = cg_new(xformat("%s-%s", m->name, exes[e].suffix));
    int64_t ws = 0; // the runtime allocates one workspace for all step functions
    for (int i = 0; i < exes[e].nfns; i++) {
      emit_function(c, exes[e].fns[i]);
      if (exes[e].fns[i]->workspace_bytes > ws)
        ws = exes[e].fns[i]->workspace_bytes;
    }
    emit_model(c, m, blocks, ws, outputs, float_labels);
    emit_main(c, exes[e].main_fn);
    finish_module(c, tm, opt);
    if (opt->emit) {
      const char *ext = !strcmp(opt->emit, "llvm") ? "ll" : !strcmp(opt->emit, "asm") ? "s" : "o";
      write_module(c, tm, opt->emit, xformat("%s-%s.%s", opt->output, exes[e].suffix, ext));
    } else {
      char *obj = xformat("%s/%s.o", tmpdir, exes[e].suffix);
      write_module(c, tm, "obj", obj);
      link_executable(obj, tmpdir, xformat("%s-%s", opt->output, exes[e].suffix));
    }
    LLVMDisposeBuilder(c->b);
    LLVMDisposeModule(c->mod);
    LLVMContextDispose(c->ctx);
  }
  if (tmpdir)
    rmdir(tmpdir);
}

void codegen_function_object(Graph *g, const char *fn, const char *obj_path,
                             const CodegenOptions *opt) {
  LoopFunc *f = lower_graph(g, FN_SLOTS, fn, NULL);
  if (opt->print_after)
    print_loops(stderr, f);
  Cg *c = cg_new(fn);
  emit_function(c, f);
  LLVMTargetMachineRef tm = target_machine(opt);
  finish_module(c, tm, opt);
  write_module(c, tm, "obj", obj_path);
}

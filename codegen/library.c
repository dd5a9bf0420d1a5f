// --emit=lib: a compiled model as a C library, DIR/NAME.h and DIR/libNAME.a.
// The evaluation graph is lowered twice, for one image and for a block of
// the YAML's batch size, into one LLVM module with a constant description
// of the model (XcLibModel, runtime/lib/xentcc_lib.h) and the NAME_
// functions of the header, which call the runtime part (runtime/lib/).
//
// How the library exports nothing but NAME_: the runtime part is compiled
// once, with hidden visibility (libxentcc_librt.a); the model's object and
// that archive are linked into one relocatable object (cc -r), which
// resolves every reference between them, then objcopy --localize-hidden
// turns each hidden symbol into a local one. What is left global is what
// the module defines with default visibility, the NAME_ functions and
// NAME_class_names, and what the object needs from libc, libm and libgomp.
// Two models' libraries then link into one program (their runtime parts are
// local copies), and no source needs a prefix of its own: renaming symbols
// (objcopy --prefix-symbols) would rename libc's too, and compiling the
// runtime at every --emit=lib would need its sources and a C compiler's
// time.
#define _GNU_SOURCE // pipe2
#include "emit.h"
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

const char *xentcc_version(void); // runtime/args.c

// The evaluation graph for another batch: every value computed from the
// image has the batch as its first dimension (the eval-mode graph holds no
// batch statistics and no loss), so it takes the new one, and the verifier
// checks each op's shape rule still holds.
static Graph *rebatch(Graph *g, int64_t batch) {
  char *buf;
  size_t len;
  FILE *f = open_memstream(&buf, &len);
  if (!f)
    fatal("out of memory");
  print_graph(f, g); // printing and parsing back is exact: a deep copy
  fclose(f);
  Graph *out = parse_graph(xformat("<%s, batch %lld>", g->name, (long long)batch), buf);
  free(buf);
  graph_renumber(out);
  Node *image = graph_find(out, "image");
  if (!image || image->op != OP_input || image->type.rank != 4)
    internal_error(__FILE__, __LINE__, "the evaluation graph has no %image input");
  int64_t old = image->type.dim[0];
  bool *from_image = xcalloc(out->nnodes + 1, 1);
  for (int i = 0; i < out->nnodes; i++) {
    Node *n = out->node[i];
    bool dep = n == image;
    for (int k = 0; k < n->nin && !dep; k++)
      dep = from_image[n->in[k]->id];
    from_image[i] = dep;
    if (dep) {
      if (n->type.rank < 1 || n->type.dim[0] != old)
        internal_error(__FILE__, __LINE__, "a value computed from the image has no batch dimension");
      n->type.dim[0] = batch;
    }
  }
  free(from_image);
  verify_graph(out);
  return out;
}

// --- Weights prepared once -------------------------------------------------------

// The loop passes give linear layers their weights transposed by a kernel
// of the forward function, which the executables run at every batch (their
// weights change between batches in training). A library's weights are
// fixed once loaded, and at batch 1 those transposes were 80% of cifar10's
// forward pass. So every kernel that reads nothing but weights and what such
// kernels wrote moves to a function of its own, run once by NAME_load, and
// the float32 buffers it writes move from the workspace to the end of the
// state block, where they stay. The kernels and their order are unchanged:
// the logits are the same bits.
static bool hoistable_read(const LBuf *b) {
  b = lbuf_root(b);
  return b->storage == LB_PARAM || b->storage == LB_STATE || b->storage == LB_CONST ||
         b->storage == LB_LOCAL;
}

static bool hoistable_write(const LBuf *b) {
  return b->storage == LB_LOCAL ||
         (b->storage == LB_WORKSPACE && !b->alias && b->dtype == DT_F32);
}

static bool expr_reads_weights_only(const LExpr *e) {
  if (!e)
    return true;
  if (e->kind == LX_LOAD) {
    if (!hoistable_read(e->buf))
      return false;
    for (int d = 0; d < e->buf->rank; d++)
      if (!expr_reads_weights_only(e->idx[d]))
        return false;
  }
  return expr_reads_weights_only(e->a) && expr_reads_weights_only(e->b) &&
         expr_reads_weights_only(e->c);
}

static bool stmt_hoistable(const LStmt *s) {
  if (!expr_reads_weights_only(s->cond) || !expr_reads_weights_only(s->value))
    return false;
  if (s->kind == LS_STORE) {
    if (!hoistable_write(s->buf))
      return false;
    for (int d = 0; d < s->buf->rank; d++)
      if (!expr_reads_weights_only(s->idx[d]))
        return false;
  }
  for (int i = 0; i < s->nbody; i++)
    if (!stmt_hoistable(s->body[i]))
      return false;
  return true;
}

static void stmt_stores(const LStmt *s, LBuf **out, int *n, int cap) {
  if (s->kind == LS_STORE && s->buf->storage == LB_WORKSPACE) {
    bool seen = false;
    for (int i = 0; i < *n && !seen; i++)
      seen = out[i] == s->buf;
    if (!seen && *n < cap)
      out[(*n)++] = s->buf;
  }
  for (int i = 0; i < s->nbody; i++)
    stmt_stores(s->body[i], out, n, cap);
}

// Moves f's weight-only kernels into a new function (named `name`, run
// with the signature of xc_apply_step: params, state, grads, args,
// workspace) and their buffers to state offsets from *state_end on; NULL
// when there are none. Call before plan-memory.
LFunc *hoist_weight_kernels(LFunc *f, const char *name, int64_t *state_end) {
  LFunc *prep = xcalloc(1, sizeof *prep);
  *prep = *f;
  prep->name = (char *)name;
  prep->kind = FN_APPLY_STEP;
  prep->kernels = xcalloc(f->nkernels + 1, sizeof *prep->kernels);
  prep->nkernels = 0;
  prep->result = prep->logits = NULL;
  prep->workspace_bytes = 0;
  int kept = 0;
  for (int k = 0; k < f->nkernels; k++) {
    LKernel *kn = f->kernels[k];
    bool hoist = !kn->deferred;
    for (int j = 0; hoist && j < kn->nbody; j++)
      hoist = stmt_hoistable(kn->body[j]);
    if (!hoist) {
      f->kernels[kept++] = kn;
      continue;
    }
    LBuf **stores = xcalloc(f->nbufs + 1, sizeof *stores);
    int n = 0;
    for (int j = 0; j < kn->nbody; j++)
      stmt_stores(kn->body[j], stores, &n, f->nbufs);
    for (int i = 0; i < n; i++) {
      stores[i]->storage = LB_STATE;
      stores[i]->offset = (*state_end + 15) / 16 * 16; // 64-byte aligned, as plan_blocks places
      *state_end = stores[i]->offset + lbuf_numel(stores[i]);
    }
    free(stores);
    prep->kernels[prep->nkernels++] = kn;
  }
  f->nkernels = kept;
  return prep->nkernels ? prep : NULL;
}

static LFunc *forward_of(LProgram *p) {
  for (int i = 0; i < p->nfuncs; i++)
    if (p->funcs[i]->kind == FN_FORWARD)
      return p->funcs[i];
  internal_error(__FILE__, __LINE__, "no forward function");
}

// The two programs must lay their parameter and state blocks out alike:
// one loaded copy of the weights serves both.
static void check_same_blocks(const LBlocks *a, const LBlocks *b) {
  bool same = a->nparams == b->nparams && a->nstates == b->nstates &&
              a->param_floats == b->param_floats && a->state_floats == b->state_floats;
  for (int i = 0; same && i < a->nparams; i++)
    same = a->params[i].offset == b->params[i].offset &&
           !strcmp(a->params[i].node->name, b->params[i].node->name);
  for (int i = 0; same && i < a->nstates; i++)
    same = a->states[i].offset == b->states[i].offset &&
           !strcmp(a->states[i].node->name, b->states[i].node->name);
  if (!same)
    internal_error(__FILE__, __LINE__, "the batch-1 and block programs lay out weights differently");
}

// A function of the library: `RET NAME_suffix(PARAMS)` calling the runtime's
// `RET xc_lib_suffix(desc?, PARAMS)`, hidden in the library.
static void wrapper(Cg *c, const char *prefix, const char *suffix, LLVMTypeRef ret,
                    LLVMTypeRef *params, int n, LLVMValueRef desc) {
  LLVMTypeRef *inner = xcalloc(n + 2, sizeof *inner);
  int k = 0;
  if (desc)
    inner[k++] = c->ptr;
  for (int i = 0; i < n; i++)
    inner[k++] = params[i];
  LLVMTypeRef it = LLVMFunctionType(ret, inner, k, false);
  LLVMValueRef callee = LLVMAddFunction(c->mod, xformat("xc_lib_%s", suffix), it);
  LLVMSetVisibility(callee, LLVMHiddenVisibility);
  LLVMValueRef fn =
      LLVMAddFunction(c->mod, xformat("%s_%s", prefix, suffix), LLVMFunctionType(ret, params, n, false));
  begin_function(c, fn);
  LLVMValueRef *args = xcalloc(k + 1, sizeof *args);
  int a = 0;
  if (desc)
    args[a++] = desc;
  for (int i = 0; i < n; i++)
    args[a++] = LLVMGetParam(fn, i);
  LLVMValueRef r = LLVMBuildCall2(c->b, it, callee, args, a, "");
  if (LLVMGetTypeKind(ret) == LLVMVoidTypeKind)
    LLVMBuildRetVoid(c->b);
  else
    LLVMBuildRet(c->b, r);
  free(inner), free(args);
}

static LLVMValueRef private_bytes(Cg *c, const char *data, size_t len, const char *name) {
  LLVMValueRef init = LLVMConstStringInContext(c->ctx, data, (unsigned)len, true);
  LLVMValueRef g = LLVMAddGlobal(c->mod, LLVMTypeOf(init), name);
  LLVMSetInitializer(g, init);
  LLVMSetGlobalConstant(g, true);
  LLVMSetLinkage(g, LLVMPrivateLinkage);
  LLVMSetAlignment(g, 8);
  return g;
}

// The module: both forward functions, XcLibModel, the NAME_ functions and
// NAME_class_names.
static Cg *library_module(Model *m, const char *prefix, LFunc *one, LFunc *block, LFunc **prep,
                          int64_t nblock, const LBlocks *blocks, int64_t state_floats, int outputs,
                          const char *weights, size_t nweights) {
  Cg *c = cg_new(prefix);
  c->unprofiled = true;
  LLVMValueRef fprep[2];
  for (int v = 0; v < 2; v++) {
    fprep[v] = LLVMConstNull(c->ptr);
    if (prep[v]) {
      emit_lfunc(c, prep[v]);
      fprep[v] = LLVMGetNamedFunction(c->mod, prep[v]->name);
      LLVMSetLinkage(fprep[v], LLVMInternalLinkage);
    }
  }
  one->name = "xc_lib_forward_one";
  emit_lfunc(c, one);
  LLVMValueRef fone = LLVMGetNamedFunction(c->mod, one->name), fblock = fone;
  if (block) {
    block->name = "xc_lib_forward_block";
    emit_lfunc(c, block);
    fblock = LLVMGetNamedFunction(c->mod, block->name);
  }
  LLVMSetLinkage(fone, LLVMInternalLinkage);
  LLVMSetLinkage(fblock, LLVMInternalLinkage);

  LLVMTypeRef ti_fields[6] = {c->ptr, c->i32, LLVMArrayType(c->i64, 4), c->i64, c->i32, c->i64};
  LLVMTypeRef ti = LLVMStructCreateNamed(c->ctx, "XcTensorInfo");
  LLVMStructSetBody(ti, ti_fields, 6, false);
  LLVMTypeRef f4 = LLVMArrayType(c->f32, 4);
  // Field for field the C layout of XcLibModel in runtime/lib/xentcc_lib.h.
  LLVMTypeRef mf[] = {c->ptr, c->i32, c->i32, c->i32, c->i32, c->i32, c->i32, c->i32, c->i32,
                      c->ptr, c->ptr, c->i64, c->i64, c->i64, f4,     f4,     c->ptr, c->ptr,
                      c->ptr, c->ptr, c->ptr, c->i64};
  int nmf = sizeof mf / sizeof *mf;
  LLVMTypeRef mt = LLVMStructCreateNamed(c->ctx, "XcLibModel");
  LLVMStructSetBody(mt, mf, nmf, false);
  LLVMValueRef mean[4], std[4];
  for (int i = 0; i < 4; i++) {
    mean[i] = LLVMConstReal(c->f32, m->data.mean[i]);
    std[i] = LLVMConstReal(c->f32, m->data.std[i]);
  }
  int64_t ws = one->workspace_bytes;
  if (block && block->workspace_bytes > ws)
    ws = block->workspace_bytes;
  LLVMValueRef i32[8] = {0};
  int64_t iv[8] = {m->channels, m->height, m->width, outputs, nblock, blocks->nparams,
                   blocks->nstates, 0};
  for (int i = 0; i < 8; i++)
    i32[i] = LLVMConstInt(c->i32, (uint64_t)iv[i], true);
  LLVMValueRef v[] = {cstring(c, prefix), i32[0], i32[1], i32[2], i32[3], i32[4], i32[5], i32[6],
                      i32[7],
                      tensor_table(c, blocks->params, blocks->nparams, ti),
                      tensor_table(c, blocks->states, blocks->nstates, ti),
                      LLVMConstInt(c->i64, blocks->param_floats, true),
                      LLVMConstInt(c->i64, state_floats, true),
                      LLVMConstInt(c->i64, ws, true), LLVMConstArray(c->f32, mean, 4),
                      LLVMConstArray(c->f32, std, 4), fone, fblock, fprep[0], fprep[1],
                      weights ? private_bytes(c, weights, nweights, "xc_lib_weights")
                              : LLVMConstNull(c->ptr),
                      LLVMConstInt(c->i64, weights ? nweights : 0, true)};
  ir_assert((int)(sizeof v / sizeof *v) == nmf);
  LLVMValueRef desc = LLVMAddGlobal(c->mod, mt, "xc_lib_model");
  LLVMSetInitializer(desc, LLVMConstNamedStruct(mt, v, nmf));
  LLVMSetGlobalConstant(desc, true);
  LLVMSetLinkage(desc, LLVMPrivateLinkage);

  LLVMTypeRef p = c->ptr, i = c->i32;
  wrapper(c, prefix, "load", p, (LLVMTypeRef[]){p}, 1, desc);
  if (weights)
    wrapper(c, prefix, "load_embedded", p, NULL, 0, desc);
  wrapper(c, prefix, "error", p, NULL, 0, NULL);
  wrapper(c, prefix, "predict", i, (LLVMTypeRef[]){p, p, i, p}, 4, NULL);
  wrapper(c, prefix, "predict_rgb8", i, (LLVMTypeRef[]){p, p, i, i, p}, 5, NULL);
  wrapper(c, prefix, "free", c->voidt, (LLVMTypeRef[]){p}, 1, NULL);

  LLVMValueRef names = string_table(c, m->classes, m->nclasses, xformat("%s_class_names", prefix));
  LLVMSetLinkage(names, LLVMExternalLinkage);
  return c;
}

// A float as a C literal that reads back exactly.
static char *c_float(double v) {
  char *s = xformat("%.9g", v);
  return strpbrk(s, ".en") ? xformat("%sf", s) : xformat("%s.0f", s);
}

// Text for a C comment: "*/" would end it.
static char *comment_safe(const char *s) {
  char *out = xstrdup(s);
  for (char *p = out; (p = strstr(p, "*/"));)
    *p = '+';
  return out;
}

// Replaces every "@KEY" of text by its value (keys are single letters).
static char *fill(const char *text, const char *const *kv, int n) {
  char *out = xstrdup("");
  for (const char *s = text; *s;) {
    const char *at = strchr(s, '@');
    if (!at) {
      out = xformat("%s%s", out, s);
      break;
    }
    const char *value = NULL;
    for (int i = 0; i < n && !value; i++)
      if (at[1] == kv[2 * i][0])
        value = kv[2 * i + 1];
    ir_assert(value);
    out = xformat("%s%.*s%s", out, (int)(at - s), s, value);
    s = at + 2;
  }
  return out;
}

static const char header_template[] =
    "/* @P.h: model '@M' (@Y) compiled by xentcc @V --emit=lib.\n"
    " *\n"
    " * Link with lib@P.a, OpenMP and libm:  cc app.c -L DIR -l@P -fopenmp -lm\n"
    " * The library exports only the @P_ names below and keeps no mutable global\n"
    " * state but @P_error's text, one per thread.\n"
    " *\n"
    " * Threads: different @P objects may be used from different threads at once;\n"
    " * @P_predict and @P_predict_rgb8 on one object are not reentrant (they share\n"
    " * its scratch memory). A call runs on OpenMP's threads (OMP_NUM_THREADS). */\n"
    "#ifndef @U_H\n"
    "#define @U_H\n"
    "\n"
    "#ifdef __cplusplus\n"
    "extern \"C\" {\n"
    "#endif\n"
    "\n"
    "/* One loaded model: its weights and scratch memory. */\n"
    "typedef struct @P @P;\n"
    "\n"
    "enum {\n"
    "  @P_CHANNELS = @C, /* an image is CHANNELS x HEIGHT x WIDTH floats */\n"
    "  @P_HEIGHT = @H,\n"
    "  @P_WIDTH = @W,\n"
    "  @P_CLASSES = @K, /* @P_class_names */\n"
    "  @P_OUTPUTS = @O, /* logits per image: CLASSES, or 1 for a binary model */\n"
    "  @P_BLOCK = @B /* images computed at once (the YAML's batch size); any n runs */\n"
    "};\n"
    "\n"
    "/* The YAML's classes: @N. */\n"
    "extern const char *const @P_class_names[@P_CLASSES];\n"
    "\n"
    "/* The normalization @P_predict expects, per channel: (pixel / 255 - MEAN) / STD\n"
    "   (torchvision's ToTensor, then Normalize(MEAN, STD)). */\n"
    "#define @P_MEAN {@A}\n"
    "#define @P_STD {@S}\n"
    "\n"
    "/* Loads the weights of a safetensors file with PyTorch's state_dict names (what\n"
    "   NAME-train --save and safetensors.torch.save_file write). NULL on error:\n"
    "   @P_error says why. Free the model with @P_free. */\n"
    "@P *@P_load(const char *weights_path);\n"
    "@E"
    "\n"
    "/* Why the last call of this library on this thread failed, naming the file or\n"
    "   the argument (or \"out of memory\"); \"\" when that call succeeded: every\n"
    "   function but @P_error and @P_free clears it when it starts (errno does not).\n"
    "   The text is the library's, valid until the next call on this thread. */\n"
    "const char *@P_error(void);\n"
    "\n"
    "/* The logits of n >= 1 images. images: n x CHANNELS x HEIGHT x WIDTH floats,\n"
    "   normalized as in training (@P_MEAN, @P_STD); logits: n x OUTPUTS floats,\n"
    "   written. Both belong to the caller. 0 on success, -1 on an invalid argument. */\n"
    "int @P_predict(@P *m, const float *images, int n, float *logits);\n"
    "\n"
    "/* The logits of one image of 8-bit RGB pixels (height x width x 3, interleaved,\n"
    "   rows top to bottom) of any size: resized (PIL's bilinear), converted to the\n"
    "   model's channels and normalized exactly as NAME-eval --predict does.\n"
    "   logits: OUTPUTS floats. 0 on success, -1 on an invalid argument or when out\n"
    "   of memory for the resizing (@P_error says which). */\n"
    "int @P_predict_rgb8(@P *m, const unsigned char *hwc, int height, int width, float *logits);\n"
    "\n"
    "/* Frees a model (NULL is allowed). */\n"
    "void @P_free(@P *m);\n"
    "\n"
    "#ifdef __cplusplus\n"
    "}\n"
    "#endif\n"
    "\n"
    "#endif\n";

static const char embedded_template[] =
    "\n"
    "/* The weights compiled into the library (xentcc --weights W.safetensors), loaded\n"
    "   as @P_load does. */\n"
    "@P *@P_load_embedded(void);\n";

static char *header_text(Model *m, const char *prefix, int outputs, int64_t nblock, bool embedded) {
  char *upper = xstrdup(prefix);
  for (char *s = upper; *s; s++)
    if (*s >= 'a' && *s <= 'z')
      *s -= 'a' - 'A';
  char *mean = xstrdup(""), *std = xstrdup(""), *classes = xstrdup("");
  for (int i = 0; i < m->channels; i++) {
    mean = xformat("%s%s%s", mean, i ? ", " : "", c_float((float)m->data.mean[i < 4 ? i : 0]));
    std = xformat("%s%s%s", std, i ? ", " : "", c_float((float)m->data.std[i < 4 ? i : 0]));
  }
  for (int i = 0; i < m->nclasses; i++)
    classes = xformat("%s%s%s", classes, i ? ", " : "", comment_safe(m->classes[i]));
  const char *kv[] = {"P", prefix, "U", upper, "M", comment_safe(m->name), "Y", comment_safe(m->path), "V", xentcc_version(),
                      "C", xformat("%d", m->channels), "H", xformat("%d", m->height),
                      "W", xformat("%d", m->width), "K", xformat("%d", m->nclasses),
                      "O", xformat("%d", outputs), "B", xformat("%lld", (long long)nblock),
                      "N", classes, "A", mean, "S", std, "E", ""};
  int n = sizeof kv / sizeof *kv / 2;
  if (embedded)
    kv[2 * n - 1] = fill(embedded_template, kv, n);
  return fill(header_template, kv, n);
}

// Runs a tool from an argument vector (no shell) and waits; dies saying
// what failed, with what the tool printed.
static void run_tool(char **argv, const char *what) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0)
    fatal("cannot run %s: %s", argv[0], strerror(errno));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, p[1], 1);
  posix_spawn_file_actions_adddup2(&fa, p[1], 2);
  fflush(NULL);
  pid_t pid;
  int err = posix_spawnp(&pid, argv[0], &fa, NULL, argv, link_environment());
  posix_spawn_file_actions_destroy(&fa);
  close(p[1]);
  if (err) {
    close(p[0]);
    fatal("cannot run '%s' to %s: %s (install LLVM 19's tools and a C compiler: apt-get install "
          "llvm-19 build-essential)",
          argv[0], what, strerror(err));
  }
  char out[4096];
  size_t len = 0;
  for (;;) {
    ssize_t r = read(p[0], out + len, sizeof out - 1 - len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    len += (size_t)r;
    if (len == sizeof out - 1) { // keep the start, drain the rest
      char sink[4096];
      while (read(p[0], sink, sizeof sink) > 0)
        ;
      break;
    }
  }
  out[len] = '\0';
  close(p[0]);
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
    ;
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fatal("%s failed to %s%s%s", argv[0], what, len ? ":\n" : "", out);
}

// A file's bytes, at most `limit`; dies naming it.
static char *read_bytes(const char *path, size_t limit, size_t *len, const char *hint) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0)
    fatal("%s: cannot read: %s (%s)", path, strerror(errno), hint);
  if (!S_ISREG(st.st_mode))
    fatal("%s: not a regular file (%s)", path, hint);
  if ((uint64_t)st.st_size > limit)
    fatal("%s: %lld bytes, over the limit of %zu (%s)", path, (long long)st.st_size, limit, hint);
  char *buf = xcalloc((size_t)st.st_size + 1, 1);
  size_t have = 0;
  while (have < (size_t)st.st_size) {
    ssize_t r = read(fd, buf + have, (size_t)st.st_size - have);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      fatal("%s: cannot read: %s (%s)", path, r < 0 ? strerror(errno) : "it shrank", hint);
    have += (size_t)r;
  }
  close(fd);
  *len = have;
  return buf;
}

static char *shape_text(int rank, const int64_t *dim) {
  char *s = xstrdup("[");
  for (int d = 0; d < rank; d++)
    s = xformat("%s%s%lld", s, d ? ", " : "", (long long)dim[d]);
  return xformat("%s]", s);
}

// The entry of tensor `name` in a safetensors JSON header, as its writers
// lay it out ("NAME":{"dtype":"F32","shape":[6,3,5,5],...}): its dtype and
// shape. False when the name is not a key there or the entry reads
// otherwise.
static bool header_entry(const char *header, const char *name, char dtype[8], int *rank,
                         int64_t dim[MAX_RANK]) {
  const char *key = strstr(header, xformat("\"%s\":", name));
  if (!key)
    return false;
  const char *open = key + strlen(name) + 3, *close = strchr(open, '}');
  const char *d = strstr(open, "\"dtype\":\""), *sh = strstr(open, "\"shape\":[");
  if (!close || !d || !sh || d > close || sh > close)
    return false;
  d += 9;
  size_t dl = strcspn(d, "\"");
  if (dl >= 8)
    return false;
  memcpy(dtype, d, dl);
  dtype[dl] = '\0';
  *rank = 0;
  for (const char *p = sh + 9; *p != ']';) {
    char *end;
    long long v = strtoll(p, &end, 10);
    if (end == p || *rank == MAX_RANK || v < 0)
      return false;
    dim[(*rank)++] = v;
    p = end + (*end == ',');
  }
  return true;
}

// --weights W: the safetensors file must hold every parameter of the
// model, of its shape, in a float dtype, which is checked here against
// the header so that a wrong file is a compile error. NAME_load_embedded
// reads it again with the runtime's checked reader, the data included.
static char *embedded_weights(const char *path, const LBlocks *b, const char *model, size_t *len) {
  const char *hint = "--weights takes a safetensors file NAME-train --save wrote";
  char *w = read_bytes(path, (size_t)1 << 31, len, hint);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0 && *len >= 8; i--)
    hlen = hlen << 8 | (uint8_t)w[i];
  if (*len < 10 || hlen < 2 || hlen > *len - 8 || w[8] != '{')
    fatal("%s: not a safetensors file (%s)", path, hint);
  char *header = xcalloc(hlen + 1, 1);
  memcpy(header, w + 8, hlen);
  for (int i = 0; i < b->nparams; i++) {
    const Node *n = b->params[i].node;
    char dtype[8];
    int rank;
    int64_t dim[MAX_RANK];
    if (!header_entry(header, n->name, dtype, &rank, dim))
      fatal("%s: parameter '%s' is missing (weights of another model? %s)", path, n->name, hint);
    bool same = rank == n->type.rank;
    for (int d = 0; same && d < rank; d++)
      same = dim[d] == n->type.dim[d];
    if (!same)
      fatal("%s: '%s' has shape %s, but model '%s' needs %s (weights of another model? %s)", path,
            n->name, shape_text(rank, dim), model, shape_text(n->type.rank, n->type.dim), hint);
    if (strcmp(dtype, "F32") && strcmp(dtype, "F16") && strcmp(dtype, "BF16") &&
        strcmp(dtype, "F64"))
      fatal("%s: '%s' has dtype %s; save the tensors as floats (%s)", path, n->name, dtype, hint);
  }
  free(header);
  return w;
}

void codegen_library(Model *m, Graph *eval, const PipelineOptions *po, const CodegenOptions *opt,
                     const char *weights) {
  const char *prefix = strrchr(opt->output, '/') ? strrchr(opt->output, '/') + 1 : opt->output;
  char *dir = xstrdup(opt->output);
  dir[prefix - opt->output] = '\0';
  if (access(*dir ? dir : ".", W_OK) != 0)
    fatal("cannot write %s.h: directory '%s' does not exist or is not writable (check -o)",
          opt->output, *dir ? dir : ".");
  check_cpu(opt);
  llvm_passes(opt->opt_level);

  // Batch 1 and the YAML's batch, each through the loop passes of -O, the
  // weight-only kernels taken out before the memory plan (the last pass).
  int64_t nblock = m->batch_size;
  int npasses;
  const char *const *passes = loop_pipeline(opt->opt_level, &npasses);
  ir_assert(npasses > 0 && !strcmp(passes[npasses - 1], "plan-memory"));
  LProgram *p1 = lower_program(NULL, nblock == 1 ? eval : rebatch(eval, 1), opt->opt_level);
  LProgram *pb = nblock > 1 ? lower_program(NULL, eval, opt->opt_level) : NULL;
  if (pb)
    check_same_blocks(p1->blocks, pb->blocks);
  int64_t state_end = p1->blocks->state_floats;
  LFunc *prep[2] = {NULL, NULL};
  LProgram *progs[2] = {p1, pb};
  const char *prep_names[2] = {"xc_lib_prepare_one", "xc_lib_prepare_block"};
  for (int v = 0; v < 2 && progs[v]; v++) {
    progs[v]->target = *loop_target(opt);
    run_loop_pipeline(progs[v], passes, npasses - 1, po);
    prep[v] = hoist_weight_kernels(forward_of(progs[v]), prep_names[v], &state_end);
    run_loop_pipeline(progs[v], passes + npasses - 1, 1, po);
  }
  time_phase("lower, loop passes (batch 1 and the block)");
  Node *logits = eval->ret[0];
  int outputs = (int)logits->type.dim[logits->type.rank - 1];

  size_t nweights = 0;
  char *w = weights ? embedded_weights(weights, p1->blocks, m->name, &nweights) : NULL;
  Cg *c = library_module(m, prefix, forward_of(p1), pb ? forward_of(pb) : NULL, prep, nblock,
                         p1->blocks, state_end, outputs, w, nweights);
  LLVMTargetMachineRef tm = target_machine(opt);
  finish_module(c, tm, opt);
  LLVMMemoryBufferRef obj;
  char *err = NULL;
  if (LLVMTargetMachineEmitToMemoryBuffer(tm, c->mod, LLVMObjectFile, &err, &obj))
    fatal("cannot generate lib%s.a: %s", prefix, err ? err : "unknown error");
  cg_dispose(c);
  LLVMDisposeTargetMachine(tm);
  free(w);
  time_phase("LLVM: optimize, object");

  // One relocatable object of the model and the runtime part, its hidden
  // symbols made local, in an archive.
  make_tmpdir();
  char *model_o = write_object(obj, "model");
  LLVMDisposeMemoryBuffer(obj);
  char *lib_o = scratch_file(xformat("%s.o", prefix));
  char *archive = scratch_file("lib.a");
  const char *librt = xformat("%s/libxentcc_librt.a", runtime_dir());
  if (access(librt, R_OK) != 0)
    fatal("the library runtime %s is missing; build the xentcc_librt target first", librt);
  run_tool((char *[]){XENTCC_LINKER, "-r", "-nostdlib", "-o", lib_o, model_o,
                      "-Wl,--whole-archive", (char *)librt, "-Wl,--no-whole-archive", NULL},
           "link the model with its runtime");
  const char *objcopy = access(XENTCC_LLVM_BIN "/llvm-objcopy", X_OK) ? "objcopy"
                                                                      : XENTCC_LLVM_BIN "/llvm-objcopy";
  const char *ar = access(XENTCC_LLVM_BIN "/llvm-ar", X_OK) ? "ar" : XENTCC_LLVM_BIN "/llvm-ar";
#ifdef XENTCC_SANITIZE_GENERATED
  // AddressSanitizer's instrumentation defines globals of its own: the ODR
  // indicator of NAME_class_names, made local like the rest, and
  // ___asan_globals_registered, a common symbol every instrumented object of
  // the program shares so that their globals are registered once; local,
  // two libraries would each register both (an odr-violation report).
  run_tool((char *[]){(char *)objcopy, "--localize-hidden", "--wildcard",
                      "--localize-symbol=__odr_asan_gen_*", lib_o, NULL},
           "make the runtime's symbols local");
#else
  run_tool((char *[]){(char *)objcopy, "--localize-hidden", lib_o, NULL},
           "make the runtime's symbols local");
#endif
  run_tool((char *[]){(char *)ar, "rcsD", archive, lib_o, NULL}, "write the archive");

  // The header and the archive, each written whole (write_file renames a
  // complete temporary file into place).
  size_t alen;
  char *bytes = read_bytes(archive, (size_t)1 << 32, &alen, "the archive just written");
  char *h = header_text(m, prefix, outputs, nblock, weights != NULL);
  write_file(xformat("%s.h", opt->output), h, strlen(h));
  write_file(xformat("%slib%s.a", dir, prefix), bytes, alen);
  free(bytes);
  remove_scratch();
  time_phase("link, archive, header");
}

// Shared between the loop IR walker (walk.c) and the module builder
// (codegen.c): the LLVM context of the module being generated.
#ifndef XENTCC_EMIT_H
#define XENTCC_EMIT_H

#include "loop.h"

#include <llvm-c/Core.h>
#include <llvm-c/TargetMachine.h>
#include <math.h>

// A kernel of an executable, for --profile: numbered across the module's
// functions in the order they are emitted (xc_model.kernels).
typedef struct {
  const char *function; // "grad", "apply", "forward"
  const char *op;       // "conv2d", "conv2d+relu", ...
  const char *layer;    // the node's name, or ""
  int64_t flops;        // per call; 0 for kernels that are not multiply-adds
  int64_t bytes;        // per call: read and written (lk_bytes)
} KernelInfo;

typedef struct {
  LLVMContextRef ctx;
  LLVMModuleRef mod;
  LLVMBuilderRef b;
  LLVMTypeRef f32, f64, i64, i32, i8, ptr, voidt;
  LLVMValueRef fn;          // the function being filled
  LLVMBasicBlockRef entry;  // its entry block, where allocas go
  KernelInfo *kernels;      // every kernel emitted so far in this module
  int nkernels;
  bool unprofiled;          // no --profile hooks around kernels (a library has no profiler)
} Cg;


// walk.c: the loop IR's functions into this module. emit_lfunc: f's kernels
// as internal functions and its step function calling them. To build an
// executable from several modules (codegen.c compiles them in parallel and
// each distinct kernel once), emit_lkernel defines kernel i of f alone and
// returns what a step function calls (the kernel, or for a parallel one its
// xc_parallel_for wrapper), and emit_lstep defines f's step function calling
// kernel i as the function named symbol[i], defined in another module.
void emit_lfunc(Cg *c, const LFunc *f);
LLVMValueRef emit_lkernel(Cg *c, const LFunc *f, int i);
void emit_lstep(Cg *c, const LFunc *f, const char *const *symbol);
// An enum attribute (`nounwind`, `sanitize_address`...) on fn, or on its
// argument index (1-based; LLVMAttributeFunctionIndex for fn itself).
void add_attr(Cg *c, LLVMValueRef fn, unsigned index, const char *name);
// fn computes with vectors of `bits`: above 256, says so as clang does
// ("min-legal-vector-width"), so that LLVM keeps them whole in AVX-512's
// registers where processors that prefer 256-bit vectors (Intel's since
// Skylake) would have them split in two.
void vector_width_attr(Cg *c, LLVMValueRef fn, int bits);

// library.c: moves f's kernels that read nothing but weights into a new
// function `name` (xc_apply_step's signature), their buffers to the state
// block from *state_end on (elements, advanced); NULL when there are none.
LFunc *hoist_weight_kernels(LFunc *f, const char *name, int64_t *state_end);

// codegen.c's services, for library.c (--emit=lib).
Cg *cg_new(const char *name);
void cg_dispose(Cg *c);
void begin_function(Cg *c, LLVMValueRef fn);
LLVMValueRef cstring(Cg *c, const char *s); // a private constant C string
// Constant arrays (private): XcTensorInfo rows of a params or state block
// (ti is XcTensorInfo's LLVM type), and n C strings.
LLVMValueRef tensor_table(Cg *c, const LBlockEntry *e, int count, LLVMTypeRef ti);
LLVMValueRef string_table(Cg *c, char **s, int n, const char *name);
LLVMTargetMachineRef target_machine(const CodegenOptions *opt);
void check_cpu(const CodegenOptions *opt); // dies on an -mcpu LLVM does not know
const char *llvm_passes(int opt_level);    // call once before threads start
// Target, data layout, verification, the passes of -O, and in the sanitizer
// build AddressSanitizer.
void finish_module(Cg *c, LLVMTargetMachineRef tm, const CodegenOptions *opt);
// Scratch files, removed however the compiler ends.
char *make_tmpdir(void);
char *write_object(LLVMMemoryBufferRef obj, const char *name); // into the scratch directory
char *scratch_file(const char *name); // a path there for a tool's output
void remove_scratch(void);
const char *runtime_dir(void);        // where the runtime's archives and link lines are
const char *not_an_option(const char *path); // "-x" becomes "./-x"
char **link_environment(void);        // for a spawned linker (lld on COMPILER_PATH)

#endif

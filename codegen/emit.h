// Shared between the kernel emitter (emit.c) and the module builder
// (module.c): the LLVM context of one function being generated.
#ifndef XENTCC_EMIT_H
#define XENTCC_EMIT_H

#include "loops.h"

#include <llvm-c/Core.h>
#include <math.h>

// A kernel of an executable, for --profile: numbered across the module's
// functions in the order they are emitted (xc_model.kernels).
typedef struct {
  const char *function; // "grad", "apply", "forward"
  const char *op;       // "conv2d", "conv2d+relu", ...
  const char *layer;    // the node's name, or ""
  int64_t flops;        // per call; 0 for kernels that are not multiply-adds
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
} Cg;

// Emits the loop nest of one op: out and in[] point at the buffers; [lo, hi)
// is the part of the outer loop (see kernel_trip) this call computes; relu
// fuses a relu into a conv2d or linear (Kernel.relu).
void emit_kernel_body(Cg *c, Node *n, LLVMValueRef out, LLVMValueRef *in, LLVMValueRef lo,
                      LLVMValueRef hi, bool relu);

#endif

// The contract between a compiled model's library (xentcc --emit=lib) and
// the runtime part it carries (lib.c): the generated module describes the
// model in one constant XcLibModel, and its NAME_ functions call the xc_lib_
// functions below with it. Nothing here is visible outside the library.
#ifndef XENTCC_LIB_H
#define XENTCC_LIB_H

#include "xentcc_rt.h"

// A forward pass (eval mode) over a fixed number of images, as xc_forward:
// images [N,C,H,W] normalised, logits [N,outputs]; workspace 64-aligned.
typedef void XcForward(const float *params, const float *state, const float *images,
                       float *logits, void *workspace);
// What a forward function needs computed from the weights alone (transposed
// linear weights), written once into the state block past the buffers,
// with xc_apply_step's signature (grads and args unused).
typedef void XcPrepare(const float *params, float *state, const float *grads, const void *args,
                       void *workspace);

typedef struct {
  const char *name;          // NAME, the prefix of the library's symbols
  int32_t channels, height, width;
  int32_t outputs;           // logits per image
  int32_t block;             // images per call of forward_block (the YAML's batch size)
  int32_t nparams, nstates;  // the evaluation's parameters and buffers (running statistics)
  int32_t unused;            // 0
  const XcTensorInfo *params;
  const XcTensorInfo *states;
  int64_t param_floats;
  int64_t state_floats;      // the buffers, then what the prepare functions write
  int64_t workspace_bytes;   // enough for either forward function
  float mean[4], std[4];     // Normalize(mean, std) per channel after ToTensor()
  XcForward *forward_one;    // one image
  XcForward *forward_block;  // `block` images
  XcPrepare *prepare_one;    // for forward_one, or NULL
  XcPrepare *prepare_block;  // for forward_block, or NULL
  const uint8_t *weights;    // --weights: the safetensors file, embedded; else NULL
  int64_t weights_bytes;
} XcLibModel;

typedef struct XcLib XcLib;

XcLib *xc_lib_load(const XcLibModel *d, const char *path);
XcLib *xc_lib_load_embedded(const XcLibModel *d);
const char *xc_lib_error(void);
int xc_lib_predict(XcLib *m, const float *images, int n, float *logits);
int xc_lib_predict_rgb8(XcLib *m, const unsigned char *hwc, int height, int width, float *logits);
void xc_lib_free(XcLib *m);

#endif

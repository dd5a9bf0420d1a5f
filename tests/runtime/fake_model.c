// A hand-written stand-in for the code xentcc generates, for the runtime's
// tests only: a linear classifier on 3x8x8 images (fc.weight [K, 192],
// fc.bias [K]) trained with SGD momentum 0.9 and CrossEntropyLoss, or with
// FAKE_BINARY one logit and BCEWithLogitsLoss with a StepLR(1, 0.5)
// schedule. It implements xentcc_rt.h exactly as generated code must, so the
// real mains run on it unchanged. It tests the runtime's plumbing only:
// generated code is tested by compiling real models.
#include "xentcc_rt.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

enum { B = 4, C = 3, H = 8, W = 8, D = C * H * W };

#ifdef FAKE_BINARY
enum { K = 1 };
static const char *const names[] = {"cat", "dog"};
#define NCLASSES 2
#define LABELS XC_LABEL_FLOAT
#define VAL_SPLIT 0.25f
#define SCHEDULE {.kind = XC_SCHED_STEP, .gamma = 0.5, .step_size = 1}
#else
enum { K = 3 };
static const char *const names[] = {"red", "green", "blue"};
#define NCLASSES 3
#define LABELS XC_LABEL_INDEX
#define VAL_SPLIT 0.0f
#define SCHEDULE {.kind = XC_SCHED_CONSTANT}
#endif

static const XcTensorInfo params[] = {
    {"fc.weight", 2, {K, D}, 0, XC_INIT_KAIMING_UNIFORM, D},
    {"fc.bias", 1, {K}, K *D, XC_INIT_BIAS_UNIFORM, D},
};
static const XcTensorInfo states[] = {
    {"fc.weight.momentum_buffer", 2, {K, D}, 0, XC_INIT_ZEROS, 0},
    {"fc.bias.momentum_buffer", 1, {K}, K *D, XC_INIT_ZEROS, 0},
};

const XcModel xc_model = {
    .name = "fake",
    .batch_size = B,
    .channels = C,
    .height = H,
    .width = W,
    .nclasses = NCLASSES,
    .class_names = names,
    .outputs = K,
    .label_kind = LABELS,
    .nparams = 2,
    .params = params,
    .param_floats = K * D + K,
    .nstates = 2,
    .states = states,
    .state_floats = K * D + K,
    .workspace_bytes = B * K * sizeof(float),
    .epochs = 2,
    .seed = 0,
    .shuffle = 1,
    .drop_last = 1,
    .log_every = 2,
    .lr = 0.05,
    .schedule = SCHEDULE,
    .data_format = "folder",
    .train_path = "",
    .test_path = "",
    .val_split = VAL_SPLIT,
    .mean = {0.5f, 0.5f, 0.5f},
    .std = {0.5f, 0.5f, 0.5f},
    // data: {convert: rgb, resize: true}: CIFAR-10 and IDX data load too.
    .convert = 1,
    .resize = 1,
#ifdef FAKE_BINARY
    .loss_kind = XC_LOSS_BCE_WITH_LOGITS,
#else
    .loss_kind = XC_LOSS_CROSS_ENTROPY,
#endif
    .pos_weight = 1,
    .train_logits = 1,
};

typedef struct {
  const float *p, *x;
  float *logits;
} FwdCtx;

static void forward_rows(void *arg, int64_t lo, int64_t hi) {
  FwdCtx *c = arg;
  for (int64_t n = lo; n < hi; n++)
    for (int k = 0; k < K; k++) {
      float s = c->p[K * D + k];
      for (int d = 0; d < D; d++)
        s += c->p[k * D + d] * c->x[n * D + d];
      c->logits[n * K + k] = s;
    }
}

void xc_forward(const float *p, const float *state, const float *images, float *logits,
                void *workspace) {
  FwdCtx c = {p, images, logits};
  xc_parallel_for(B, forward_rows, &c);
}

float xc_grad_step(const float *p, float *state, const float *images, const void *labels,
                   const XcStepArgs *args, float *grad, float *logits_out, void *workspace) {
  // FAKE_INTERRUPT_AT=N: a Ctrl-C arrives during step N (tests of saving on
  // interrupt without timing).
  const char *at = getenv("FAKE_INTERRUPT_AT");
  if (at && atoi(at) == args->step)
    raise(SIGINT);
  float *logits = workspace;
  xc_forward(p, state, images, logits, workspace);
  memcpy(logits_out, logits, B * K * sizeof(float));
  memset(grad, 0, (K * D + K) * sizeof(float));
  double loss = 0;
  for (int n = 0; n < B; n++) {
    float dlogit[K];
#ifdef FAKE_BINARY
    float y = ((const float *)labels)[n], z = logits[n];
    loss += fmaxf(z, 0) - z * y + log1pf(expf(-fabsf(z)));
    dlogit[0] = (1 / (1 + expf(-z)) - y) / B;
#else
    int y = ((const int32_t *)labels)[n];
    float mx = logits[n * K];
    for (int k = 1; k < K; k++)
      mx = fmaxf(mx, logits[n * K + k]);
    double sum = 0;
    for (int k = 0; k < K; k++)
      sum += exp(logits[n * K + k] - mx);
    loss += log(sum) + mx - logits[n * K + y];
    for (int k = 0; k < K; k++)
      dlogit[k] = (float)((exp(logits[n * K + k] - mx) / sum - (k == y)) / B);
#endif
    for (int k = 0; k < K; k++) {
      for (int d = 0; d < D; d++)
        grad[k * D + d] += dlogit[k] * images[n * D + d];
      grad[K * D + k] += dlogit[k];
    }
  }
  return (float)(loss / B);
}

int32_t xc_grad_check(const float *grad) {
  for (int i = 0; i < K * D + K; i++)
    if (!isfinite(grad[i]))
      return i < K * D ? 0 : 1;
  return -1;
}

// torch.optim.SGD(momentum=0.9): buf = 0.9 * buf + g (buf = g at step 1).
void xc_apply_step(float *p, float *state, const float *grad, const XcStepArgs *args,
                   void *workspace) {
  for (int i = 0; i < K * D + K; i++) {
    state[i] = args->opt_step == 1 ? grad[i] : 0.9f * state[i] + grad[i];
    p[i] -= args->lr * state[i];
  }
}

// --profile's peak loop, in plain C: the fake model has no kernels to time.
int64_t xc_fma_peak(int64_t n, float *out) {
  float a = 0;
  for (int64_t i = 0; i < n; i++)
    a = a * 0.999f + 1.0f;
  *out = a;
  return 192;
}

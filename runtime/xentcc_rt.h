// The contract between generated code and the runtime. xentcc emits, for a
// model, one object file that defines `xc_model` and the step functions
// below; the runtime's main programs (train_main.c, eval_main.c) link with it.
// Every tensor is f32 in PyTorch's layout; shapes are constants in the
// generated code and described here only so the runtime can do I/O.
#ifndef XENTCC_RT_H
#define XENTCC_RT_H

#include <stdint.h>

enum { XC_MAX_RANK = 4 };

// How a tensor is initialised before training (PyTorch's defaults).
typedef enum {
  XC_INIT_ZEROS,           // optimizer state, biases of norm layers
  XC_INIT_ONES,            // batch-norm weight
  XC_INIT_KAIMING_UNIFORM, // conv/linear weight: U(-b, b), b = 1/sqrt(fan_in) (kaiming a=sqrt(5))
  XC_INIT_BIAS_UNIFORM,    // conv/linear bias:   U(-b, b), b = 1/sqrt(fan_in)
} XcInit;

typedef struct {
  const char *name;        // state_dict name: "conv1.weight", "conv1.weight.exp_avg"
  int rank;
  int64_t dim[XC_MAX_RANK];
  int64_t offset;          // in floats, from the start of its block
  XcInit init;
  int64_t fan_in;
} XcTensorInfo;

typedef enum { XC_LABEL_INDEX, XC_LABEL_FLOAT } XcLabelKind;

typedef struct {
  const char *function; // "grad" (xc_grad_step), "apply" (xc_apply_step), "forward"
  const char *op;       // the graph op, "conv2d+relu" when a relu is computed by it
  const char *layer;    // the node's name, or ""
  int64_t flops;        // per call: 2 per multiply-add of convolutions and linear layers, else 0
  int64_t bytes;        // per call: the memory it reads and writes, each buffer's part once
} XcKernelInfo;

// The learning-rate schedule, evaluated by the runtime once per step
// (schedule.c) as PyTorch's schedulers run on the host; the step function
// takes the result as XcStepArgs.lr. Closed forms of torch.optim.lr_scheduler.
typedef enum {
  XC_SCHED_CONSTANT,    // base
  XC_SCHED_STEP,        // StepLR(step_size, gamma)
  XC_SCHED_MULTISTEP,   // MultiStepLR(milestones, gamma)
  XC_SCHED_EXPONENTIAL, // ExponentialLR(gamma)
  XC_SCHED_COSINE,      // CosineAnnealingLR(t_max, eta_min)
  XC_SCHED_LINEAR,      // LinearLR(start_factor, end_factor, total_iters)
  XC_SCHED_ONE_CYCLE,   // OneCycleLR(max_lr, total_steps, ...), momentum cycled too
} XcScheduleKind;

typedef struct {
  int32_t kind;               // XcScheduleKind
  int32_t per_step;           // 1: advances every optimizer step; 0: every epoch
  double gamma;               // step, multistep, exponential
  int64_t step_size;          // step
  const int64_t *milestones;  // multistep, ascending (repeats multiply again)
  int64_t nmilestones;
  int64_t t_max;              // cosine
  double eta_min;             // cosine
  double start_factor, end_factor; // linear
  int64_t total_iters;             // linear
  int64_t total_steps;        // one-cycle (its max_lr is XcModel.lr): 0 means the whole run
  double pct_start, div_factor, final_div_factor;
  int32_t anneal_linear;      // one-cycle: 0 cosine annealing, 1 linear
  int32_t three_phase;
  int32_t cycle_momentum;     // one-cycle: momentum (SGD) or beta1 (Adam) moves too
  int32_t unused;             // 0
  double base_momentum, max_momentum;
  int64_t warmup_iters;       // a LinearLR warm-up first (SequentialLR); 0: none
  double warmup_factor;       // its start_factor
} XcSchedule;

// What the training loop hands each step besides the batch.
typedef struct {
  int32_t step;     // training steps so far, this one included (from 1)
  uint32_t seed;    // the run's --seed: dropout masks hash (seed, layer, step, element)
  float lr;         // this step's learning rate, the schedule's value
  float momentum;   // SGD momentum or Adam's beta1 when the schedule cycles it
  int32_t opt_step; // updates applied so far, this one included (PyTorch's state['step']);
                    // below step when steps were skipped for a non-finite gradient
  float loss_scale; // precision fp16: GradScaler's scale, the loss's gradient (else unread)
  float inv_scale;  // ... and its reciprocal, which unscales the gradients before the update
  int32_t row0;     // the batch's first row in the global batch: rank x batch under
                    // mpirun, else 0; dropout's element index counts rows from it
} XcStepArgs;

// Padding rows of a partial last batch: the generated losses leave rows
// labelled XC_PAD_LABEL (PyTorch's ignore_index, -100) or with a negative
// target out of the loss, its mean and its gradient.
#define XC_PAD_LABEL (-100)
#define XC_PAD_TARGET (-1.0f)

typedef enum {
  XC_LOSS_NONE,           // unknown to the runtime: no evaluation loss
  XC_LOSS_CROSS_ENTROPY,  // CrossEntropyLoss(weight, label_smoothing) of [N, outputs]
  XC_LOSS_BCE_WITH_LOGITS // BCEWithLogitsLoss(pos_weight) of [N, 1]
} XcLossKind;

typedef struct {
  int32_t param;  // index in xc_model.params
  double weight;  // the loss adds weight * ||param||_2
} XcL2Term;

typedef struct {
  const char *name;        // model name from the YAML
  int batch_size;          // compiled-in: a smaller last batch is padded to it
  int channels, height, width;
  int nclasses;            // names in class_names; outputs = nclasses, or 1 for binary
  const char *const *class_names;
  int outputs;             // logits per sample
  XcLabelKind label_kind;  // class indices (cross-entropy) or floats [N,1] (BCE)

  int nparams;             // trainable parameters, in checkpoint order
  const XcTensorInfo *params;
  int64_t param_floats;
  int nstates;             // optimizer state (named PARAM.suffix) and running statistics
  const XcTensorInfo *states;
  int64_t state_floats;
  int64_t workspace_bytes; // scratch for activations and gradients
  // int64 buffers of the state_dict kept by the runtime: each batch norm's
  // NAME.num_batches_tracked, which PyTorch adds 1 to in every training
  // forward pass; saved and loaded with the weights.
  int ncounters;
  const char *const *counter_names;

  // Defaults from the YAML; the command line overrides them.
  int epochs, seed, shuffle, drop_last, log_every;
  double lr;                // the optimizer's lr (one-cycle: max_lr)
  XcSchedule schedule;
  const char *data_format;  // cifar10 | idx | folder | imagefolder
  const char *train_path;   // absolute, or "" when the YAML names none
  const char *test_path;
  float val_split;
  float mean[4], std[4];    // Normalize(mean, std) per channel after ToTensor()
  int random_crop_padding;
  int random_flip;
  int test_flip;            // evaluation averages the logits of each image and its mirror
  // Tensor data (CIFAR-10 .bin, IDX) whose stored shape differs from the
  // input: converted (RGB <-> grey) and resized only when the YAML says so
  // (data: {convert: rgb|grey, resize: true}); otherwise an error.
  int convert, resize;

  // Every kernel of the generated step functions, numbered as the calls to
  // xc_prof_enter/xc_prof_leave around them, for --profile.
  int nkernels;
  const XcKernelInfo *kernels;

  // The YAML's precision, compiled in (the autocast pass placed the casts).
  // fp16 trains with GradScaler's dynamic loss scaling, these its settings.
  int32_t precision;        // XcPrecision
  int32_t growth_interval;  // clean steps before the scale grows
  double init_scale, growth_factor, backoff_factor;

  // The YAML's loss, for the loss of an evaluation (runtime/metrics.c), which
  // the runtime computes from xc_forward's logits: the criterion, plus
  // weight * ||param||_2 for each l2 term. XC_LOSS_NONE: not described.
  int32_t loss_kind;            // XcLossKind
  float label_smoothing;        // cross-entropy
  const float *class_weights;   // cross-entropy's weight[outputs], or NULL
  float pos_weight;             // BCE with logits; 1 when none
  int32_t nl2;
  const XcL2Term *l2;
  int32_t train_logits;         // 1: xc_grad_step writes the batch's logits
} XcModel;

typedef enum { XC_PRECISION_FP32, XC_PRECISION_BF16, XC_PRECISION_FP16 } XcPrecision;

extern const XcModel xc_model;

// A training step is two calls, with the runtime's look at the gradients
// between them (runtime/train_main.c: a NaN or an infinity stops the run or
// skips the update). workspace has xc_model.workspace_bytes bytes, 64-aligned;
// grads has xc_model.param_floats floats, laid out like params.
//
// Forward and backward on a batch. images: [B,C,H,W] normalised; labels: B
// int32 class indices or B floats. Writes every parameter's gradient into
// grads, the training forward's logits [B, outputs] into logits (when
// xc_model.train_logits; the runtime's training accuracy is theirs), and
// updates batch-norm statistics in state; returns the batch's loss.
float xc_grad_step(const float *params, float *state, const float *images, const void *labels,
                   const XcStepArgs *args, float *grads, float *logits, void *workspace);
// The index in xc_model.params of the first parameter whose gradient holds a
// NaN or an infinity, or -1 when all are finite.
int32_t xc_grad_check(const float *grads);
// The optimizer: params and its state updated from grads (args->opt_step is
// the update's number).
void xc_apply_step(float *params, float *state, const float *grads, const XcStepArgs *args,
                   void *workspace);

// Forward only (eval mode): logits [B, outputs]. Defined in the evaluation
// object, and in the training object too, for the per-epoch evaluation (so
// the training object's workspace_bytes covers both).
void xc_forward(const float *params, const float *state, const float *images, float *logits,
                void *workspace);
// What xc_forward computes from the weights alone (the linear layers'
// transposes), into the end of its workspace, where xc_forward reads it:
// run before the first xc_forward call after the weights or the workspace
// changed (xc_evaluate does). Defined wherever xc_forward is (with
// xc_apply_step's signature; grads and args unused, state only read).
void xc_prepare_forward(const float *params, const float *state, const float *grads,
                        const void *args, void *workspace);

// The runtime's main programs; the generated object's main() calls one.
int xc_train_main(int argc, char **argv);
int xc_eval_main(int argc, char **argv);

// --profile: generated code calls these around every kernel (id: the index
// in xc_model.kernels); they return at once unless profiling is on.
void xc_prof_enter(int32_t id);
void xc_prof_leave(int32_t id);
// In the generated object: n rounds of independent fused multiply-adds on
// the widest vectors the target has, which --profile times to know the
// peak; returns the floating-point operations of a round (192 for AVX2's 8
// lanes, 384 for AVX-512's 16).
int64_t xc_fma_peak(int64_t n, float *out);

// Threads for generated code: runs body(ctx, lo, hi) over [0, n) split into
// one contiguous chunk per OpenMP thread (static schedule), so the same
// thread count gives bit-identical results. Defined in the runtime.
void xc_parallel_for(int64_t n, void (*body)(void *ctx, int64_t lo, int64_t hi), void *ctx);
// A step function with parallel kernels runs its body as one team:
// xc_parallel_step calls step(args) on every thread; in it, xc_team_for is
// xc_parallel_for's split of [0, n) (this thread's chunk, then the barrier),
// xc_team_thread() the thread's number (0 runs the serial kernels, and
// outside a team every caller is 0), xc_team_barrier() waits for the team.
void xc_parallel_step(void (*step)(void **args), void **args);
void xc_team_for(int64_t n, void (*body)(void *ctx, int64_t lo, int64_t hi), void *ctx);
int xc_team_thread(void);
void xc_team_barrier(void);

#endif

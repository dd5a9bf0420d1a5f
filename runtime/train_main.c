// NAME-train: the training loop around the generated step (xc_grad_step,
// xc_grad_check, xc_apply_step). Loads the data, initialises the weights
// (PyTorch's defaults, seeded) or reads them with --init, runs epochs of
// shuffled fixed-size batches, prints the PyTorch tutorial's "[epoch, iter]
// loss" lines and Keras's epoch metrics (train loss and accuracy from the
// step's own logits, validation loss and accuracy, lr, speed), checkpoints
// each epoch (weights + optimizer state + history, atomically), keeps the
// best epoch and stops early on request, and writes the history and curves.
// Under mpirun (distributed.c) every rank trains its shard of each global
// batch and rank 0 alone prints, logs, evaluates and saves.
#include "rt.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// Optional in the generated object: a forward function for the per-epoch
// evaluation. Without it the runtime skips the evaluation.
#pragma weak xc_forward

static const char usage_fmt[] =
    "usage: %s [--data PATH] [--epochs N] [--steps N] [--batch-size B] [--lr X] [--seed S]\n"
    "       [--no-shuffle] [--drop-last] [--threads T] [--init W.safetensors]\n"
    "       [--save W.safetensors] [--log FILE.csv] [--resume] [--eval-data PATH] [--no-eval]\n"
    "       [--save-best val_loss|val_accuracy] [--patience N]\n"
    "       [--strict] [--cache] [--max-image-pixels N] [--nan-policy stop|skip]\n"
    "       [--profile] [--profile-csv FILE] [--precision fp32|bf16|fp16] [--quiet]";

// Where the per-epoch evaluation reads: --eval-data; else the held-out part
// of a folder (val_split, no test folder); else, for --data, the test files
// of a CIFAR-10 or IDX directory or a "test" folder next to a "train"
// folder; else the YAML's test path. NULL: no evaluation.
static const char *eval_path(const XcModel *m, const char *data, bool data_given,
                             const char *eval_data) {
  if (eval_data)
    return eval_data;
  if (xc_use_val_split(m))
    return data;
  if (data_given) {
    const char *f = xc_detect_format(data);
    if (f && (!strcmp(f, "cifar10") || !strcmp(f, "idx")) && xc_is_dir(data))
      return data;
    size_t n = strlen(data);
    while (n > 1 && data[n - 1] == '/')
      n--;
    if (n >= 5 && !strncmp(data + n - 5, "train", 5) && (n == 5 || data[n - 6] == '/')) {
      char *sib = xc_format("%.*stest", (int)(n - 5), data);
      if (xc_is_dir(sib))
        return sib;
      free(sib);
    }
    return NULL;
  }
  return xc_is_dir(m->test_path) || xc_is_file(m->test_path) ? m->test_path : NULL;
}

static const char *precision_name(int p) {
  return p == XC_PRECISION_BF16 ? "bf16" : p == XC_PRECISION_FP16 ? "fp16" : "fp32";
}

static void print_help(const char *prog, const XcModel *m, const char *save) {
  printf(usage_fmt, prog);
  printf("\n\nTrains model '%s' (%dx%dx%d input, %d classes, batch %d compiled in).\n\n", m->name,
         m->channels, m->height, m->width, m->nclasses, m->batch_size);
  printf(
      "  --data PATH        training data (default: %s)\n"
      "                     a CIFAR-10 directory or .bin file, an IDX directory (.gz or plain),\n"
      "                     a folder of photos named after their class (cat.1.jpg), or an\n"
      "                     ImageFolder tree (PATH/<class>/*.jpg); the format is detected\n"
      "  --epochs N         passes over the data (default %d)\n"
      "  --steps N          stop after N optimizer steps (epochs unlimited unless --epochs)\n"
      "  --batch-size B     must equal the compiled batch size %d\n"
      "  --lr X             base learning rate (default %g); the compiled schedule applies\n"
      "  --seed S           seed of the initial weights, shuffling and augmentation (default %d)\n"
      "  --no-shuffle       take samples in data set order (folders: names in byte order)\n"
      "  --drop-last        drop the last partial batch of each epoch (the YAML's\n"
      "                     train.drop_last; default: %s)\n"
      "  --threads T        OpenMP threads (default: OMP_NUM_THREADS or all cores)\n"
      "  --init W           start from these weights (safetensors, PyTorch state_dict names)\n"
      "  --save W           final weights (default %s); the optimizer state and the\n"
      "                     progress go to W without .safetensors + .optim.safetensors;\n"
      "                     both are written after every epoch, together; the per-epoch\n"
      "                     metrics to .history.csv and .curves.svg beside them\n"
      "  --resume           continue from the last epoch checkpoint at --save\n"
      "  --log FILE.csv     one row per step: step,epoch,loss,lr,skipped (and for fp16,\n"
      "                     the loss scale the step used: ,scale)\n"
      "  --eval-data PATH   data for the evaluation after each epoch (default: the held-out\n"
      "                     part, the test files of a CIFAR-10/IDX --data directory, a\n"
      "                     'test' folder next to a 'train' --data folder, or the YAML's)\n"
      "  --no-eval          skip the evaluation after each epoch\n"
      "  --save-best M      after each epoch that improves M (val_loss: lower, val_accuracy:\n"
      "                     higher), its weights to W without .safetensors + .best.safetensors\n"
      "  --patience N       stop when M (--save-best's, else val_loss) has not improved for N\n"
      "                     epochs (Keras's EarlyStopping); --resume continues the count\n"
      "  --strict           an unreadable image is an error instead of being skipped\n"
      "  --nan-policy P     a step whose loss or gradients hold a NaN or an infinity:\n"
      "                     stop (the default: exit 1, the weights of the step before kept\n"
      "                     and the last checkpoint intact) or skip (no update, as\n"
      "                     GradScaler skips a step; counted and reported)\n"
      "  --profile          after training, a table of the time, GFLOP/s and share of the\n"
      "                     machine's FMA peak of every generated kernel (as torch.profiler),\n"
      "                     and the GB/s it moves beside the machine's memory bandwidth\n"
      "  --profile-csv FILE the same numbers, every kernel, as CSV\n"
      "  --cache            keep decoded photos in PARENT/.xentcc-cache beside a photo folder\n"
      "                     (or ~/.cache/xentcc) so later runs skip decoding\n"
      "  --max-image-pixels N  photos of more pixels warn, of more than twice it are refused\n"
      "                     as decompression bombs (default %d, PIL's)\n"
      "  --precision P      must be the precision compiled in (%s, the YAML's precision:);\n"
      "                     another needs the executables compiled for it\n"
      "  --quiet            print only errors\n"
      "  --version          the xentcc that built this executable\n"
      "Options take their value as --opt V or --opt=V.\n\n"
      "%s",
      *m->train_path ? m->train_path : "none: pass --data", m->epochs, m->batch_size, m->lr,
      m->seed, m->drop_last ? "dropped" : "kept, as in PyTorch", save, XC_MAX_IMAGE_PIXELS,
      precision_name(m->precision),
      m->drop_last ? ""
                   : "A partial last batch is padded to the compiled batch size with rows the\n"
                     "loss ignores, so the step computes what PyTorch does on the smaller batch.\n");
  if (xc_dist_available())
    printf("Under mpirun -np N, N ranks train a global batch of N x %d, each its own %d rows;\n"
           "rank 0 prints, logs, evaluates and saves (docs/distributed.md).\n",
           m->batch_size, m->batch_size);
  if (m->val_split > 0)
    printf("Folder data: when the YAML's test folder does not exist, %g of the files (a split\n"
           "seeded by the YAML's seed %d, by file name) are held out for evaluation.\n",
           m->val_split, m->seed);
}

// GradScaler (precision fp16), torch.cuda.amp.GradScaler's algorithm: the
// loss's gradient starts at `scale` (the generated step reads it from
// XcStepArgs); a step whose gradients hold an inf or a NaN is skipped and
// the scale backs off; after growth_interval clean steps in a row it grows
// (unless that overflows float). Products in double, rounded to float, as
// _amp_update_scale_'s kernel computes them.
typedef struct {
  bool on;
  float scale;
  int64_t growth_tracker;
} Scaler;

static void scaler_update(Scaler *sc, const XcModel *m, bool found_inf) {
  if (found_inf) {
    sc->scale = (float)((double)sc->scale * m->backoff_factor);
    sc->growth_tracker = 0;
    return;
  }
  int64_t successful = sc->growth_tracker + 1;
  if (successful == m->growth_interval) {
    float grown = (float)((double)sc->scale * m->growth_factor);
    if (isfinite(grown))
      sc->scale = grown;
    sc->growth_tracker = 0;
  } else {
    sc->growth_tracker = successful;
  }
}

// "W.safetensors" -> "W.optim.safetensors"; other names get ".optim" appended.
static char *sibling(const char *save, const char *ext) {
  const char *suffix = ".safetensors";
  size_t n = strlen(save), k = strlen(suffix);
  if (n > k && !strcmp(save + n - k, suffix))
    return xc_format("%.*s%s", (int)(n - k), save, ext);
  return xc_format("%s%s", save, ext);
}

// Ctrl-C (SIGINT) or SIGTERM: the step under way finishes, the weights and
// the optimizer state are saved where --resume continues, and the run exits
// with 130. A second Ctrl-C kills at once (SA_RESETHAND).
static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig) { interrupted = sig; }

static void catch_interrupts(void) {
  struct sigaction sa = {0};
  sa.sa_handler = on_interrupt;
  sa.sa_flags = SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

// Weights about to be saved hold only finite numbers: an update from finite
// gradients can still overflow (a huge learning rate), and a checkpoint of
// such weights would overwrite the last good one.
static void check_weights_finite(const XcModel *m, const float *params, const float *state,
                                 const char *save, int64_t step, int last_saved_epoch) {
  const XcTensorInfo *bad = xc_first_nonfinite(params, m->params, m->nparams);
  if (!bad)
    bad = xc_first_nonfinite(state, m->states, m->nstates);
  if (bad)
    xc_die(xc_format("lower the learning rate (--lr); the last checkpoint (%s, written after "
                     "epoch %d) is intact and --resume continues from it",
                     save, last_saved_epoch),
           "after step %lld, %s holds a NaN or an infinity; training stopped without saving",
           (long long)step, bad->name);
}

typedef struct {
  bool on;
  double last;
} Progress;

// A one-line progress bar on stderr when it is a terminal: redrawn at most
// ten times a second, cleared before any other output. Like Keras's, it
// shows the epoch's running means, not the last step's noisy loss.
static void progress_draw(Progress *p, int epoch, int epochs, int iter, int per_epoch, double loss,
                          double acc, double ips, double eta) {
  double now = xc_now();
  if (!p->on || now - p->last < 0.1)
    return;
  p->last = now;
  int width = 24, fill = per_epoch ? (int)((double)iter / per_epoch * width) : 0;
  char bar[32];
  for (int i = 0; i < width; i++)
    bar[i] = i < fill ? '=' : i == fill ? '>' : ' ';
  bar[width] = '\0';
  char ep[32], accuracy[32] = "";
  if (epochs > 0)
    snprintf(ep, sizeof ep, "%d/%d", epoch, epochs);
  else
    snprintf(ep, sizeof ep, "%d", epoch);
  if (!isnan(acc))
    snprintf(accuracy, sizeof accuracy, " accuracy %.2f%%", 100 * acc);
  fprintf(stderr, "\r\033[Kepoch %s [%s] %d/%d loss %.4f%s %.0f img/s ETA %d:%02d", ep, bar, iter,
          per_epoch, loss, accuracy, ips, (int)eta / 60, (int)eta % 60);
  fflush(stderr);
}

static void progress_clear(Progress *p) {
  if (p->on) {
    fputs("\r\033[K", stderr);
    fflush(stderr);
  }
}

// The epoch so far: what its row of the history averages. Saved with a
// checkpoint taken mid-epoch, so a resumed epoch's row is the whole epoch's.
typedef struct {
  double loss;         // sum over the steps of loss * samples (Keras weighs batches so)
  int64_t right, rows; // correct predictions of the training forward's logits; samples
  int64_t steps;
} EpochSums;

static char *sums_encode(const EpochSums *s) {
  char buf[32];
  return xc_format("%s,%lld,%lld,%lld", xc_shortest(s->loss, buf), (long long)s->right,
                   (long long)s->rows, (long long)s->steps);
}

static bool sums_decode(const char *v, EpochSums *s) {
  char *end;
  s->loss = strtod(v, &end);
  long long r, n, k;
  int used = 0;
  return end != v && isfinite(s->loss) &&
         sscanf(end, ",%lld,%lld,%lld%n", &r, &n, &k, &used) == 3 && !end[used] && r >= 0 &&
         n >= r && k >= 0 && (s->right = r, s->rows = n, s->steps = k, true);
}

// The predictions of a training step's logits that match its labels (the
// rows of the batch that are real samples).
static int64_t right_predictions(const XcModel *m, const float *logits, const void *labels,
                                 int rows) {
  int64_t right = 0;
  for (int i = 0; i < rows; i++) {
    int truth = m->label_kind == XC_LABEL_FLOAT ? ((const float *)labels)[i] > 0.5f
                                                : ((const int32_t *)labels)[i];
    right += xc_predict(m, logits + (size_t)i * m->outputs, 0.5) == truth;
  }
  return right;
}

// --save-best and --patience watch one metric of the evaluation after each
// epoch, as Keras's ModelCheckpoint(save_best_only) and EarlyStopping do
// (min_delta 0: better means strictly lower loss or higher accuracy).
typedef enum { MONITOR_NONE, MONITOR_VAL_LOSS, MONITOR_VAL_ACCURACY } MonitorKind;
static const char *const monitor_names[] = {"", "val_loss", "val_accuracy"};

typedef struct {
  MonitorKind kind;
  int patience;          // 0: no early stopping
  char *best_path;       // --save-best's file, or NULL
  double best;           // the best value so far
  int best_epoch;        // 0: none yet
  int wait;              // epochs since the best one
  bool saved;            // best_path was written by this run
} Monitor;

static double monitored(const Monitor *mo, const EpochRecord *r) {
  return mo->kind == MONITOR_VAL_LOSS ? r->val_loss : r->val_acc;
}

static bool monitor_update(Monitor *mo, const EpochRecord *r) {
  double v = monitored(mo, r);
  bool better = !isnan(v) && (!mo->best_epoch || (mo->kind == MONITOR_VAL_LOSS ? v < mo->best
                                                                                : v > mo->best));
  if (better)
    mo->best = v, mo->best_epoch = (int)r->epoch, mo->wait = 0;
  else
    mo->wait++;
  return better;
}

// The monitor's state as the checkpoint keeps it: "val_loss,3,0.51,1"
// (metric, best epoch, best value, epochs since).
static char *monitor_encode(const Monitor *mo) {
  char buf[32];
  return xc_format("%s,%d,%s,%d", monitor_names[mo->kind], mo->best_epoch,
                   xc_shortest(mo->best, buf), mo->wait);
}

static bool monitor_decode(const char *v, Monitor *mo, int epochs) {
  size_t n = strlen(monitor_names[mo->kind]);
  if (strncmp(v, monitor_names[mo->kind], n) || v[n] != ',')
    return false;
  int best_epoch, wait, used = 0;
  char value[64];
  if (sscanf(v + n, ",%d,%63[^,],%d%n", &best_epoch, value, &wait, &used) != 3 || v[n + used] ||
      best_epoch < 1 || best_epoch > epochs || wait != epochs - best_epoch)
    return false;
  char *end;
  double best = strtod(value, &end);
  if (*end || !isfinite(best))
    return false;
  mo->best = best, mo->best_epoch = best_epoch, mo->wait = wait;
  return true;
}

// "epoch 3: train loss 0.4321, accuracy 85.20%; test loss ...; lr 0.05, 3335 images/s"
static void print_epoch(const EpochRecord *r, const char *val_name, int64_t val_n) {
  printf("epoch %g: train loss %.4f", r->epoch, r->train_loss);
  if (!isnan(r->train_acc))
    printf(", accuracy %.2f%%", 100 * r->train_acc);
  if (!isnan(r->val_acc)) {
    printf("; %s", val_name);
    if (!isnan(r->val_loss))
      printf(" loss %.4f,", r->val_loss);
    printf(" accuracy %.2f%% (%lld images)", 100 * r->val_acc, (long long)val_n);
  }
  printf("; lr %.4g, %.0f images/s\n", r->lr, r->images_per_s);
  fflush(stdout);
}

// The denominator of the batch's mean loss: its real rows, or for
// cross-entropy with class weights the sum of the targets' weights, as
// PyTorch's reduction='mean' divides. A rank's gradient counts in the
// global batch's in proportion to it.
static double loss_denominator(const XcModel *m, const void *labels, int rows) {
  if (m->loss_kind != XC_LOSS_CROSS_ENTROPY || !m->class_weights)
    return rows;
  double sum = 0;
  for (int i = 0; i < rows; i++) {
    int32_t y = ((const int32_t *)labels)[i];
    sum += y >= 0 && y < m->outputs ? m->class_weights[y] : 0;
  }
  return sum;
}

// One step's numbers across ranks: what each rank sends, after its
// gradient step and before the sum of the gradients.
enum { SHARE_DENOM, SHARE_LOSS, SHARE_RIGHT, SHARE_ROWS, SHARE_SIGNAL, NSHARE };

// The global batch's gradient and loss from the ranks' shards: each rank's
// gradient weighted by its share of the loss's denominator, then summed in
// rank order (xc_dist_sum_floats), so every rank holds the same bits, those
// of the mean over the whole global batch. Returns the global loss; *right,
// *rows and *sig become the job's totals (sig: a signal any rank caught).
static float combine_ranks(const XcModel *m, float *grads, float loss, double denom,
                           int64_t *right, int *rows, int *sig) {
  int n = xc_dist_size();
  double mine[NSHARE] = {denom, loss, (double)*right, *rows, *sig};
  double *all = xc_malloc(sizeof *all * NSHARE * n);
  xc_dist_gather_doubles(mine, NSHARE, all);
  double total = 0, global = 0;
  for (int r = 0; r < n; r++)
    total += all[r * NSHARE + SHARE_DENOM];
  float w = (float)(denom / total);
  for (int64_t i = 0; i < m->param_floats; i++)
    grads[i] *= w;
  xc_dist_sum_floats(grads, m->param_floats);
  *right = 0, *rows = 0;
  for (int r = 0; r < n; r++) {
    const double *a = all + r * NSHARE;
    if (a[SHARE_ROWS] > 0)
      global += a[SHARE_DENOM] / total * a[SHARE_LOSS];
    *right += (int64_t)a[SHARE_RIGHT];
    *rows += (int)a[SHARE_ROWS];
    if (a[SHARE_SIGNAL] && !*sig)
      *sig = (int)a[SHARE_SIGNAL];
  }
  free(all);
  return (float)global;
}

// Before the first step: every rank must run the same model, options and
// weights on the same data, or the sums mean nothing. One hash of each per
// rank, gathered; a rank that differs from rank 0 stops the job, named.
static void check_ranks_agree(const XcModel *m, const float *params, const float *state,
                              const int64_t *counters, const Dataset *d, const char *options) {
  enum { KEY_MODEL, KEY_OPTIONS, KEY_WEIGHTS, KEY_COUNT, KEY_DATA, NKEY };
  static const char *const what[NKEY] = {
      "the model", "the training options", "the initial weights", "the number of training samples",
      "the training data"};
  static const char *const detail[NKEY] = {
      "its name, batch size, shapes or tensors", "--seed, shuffling, --drop-last, --lr, --epochs, "
      "--steps, --nan-policy or --resume", "their hash", NULL, "the pixels or the labels"};
  static const char *const hints[NKEY] = {
      "run the same NAME-train, compiled from the same YAML, on every machine",
      "give every rank the same options (mpirun passes one command line to all)",
      "give every rank the same --init file", "give every rank a copy of the same data set",
      "give every rank a copy of the same data set (same files, same order)"};
  uint64_t h = xc_dist_hash(0, m->name, strlen(m->name));
  int64_t shape[] = {m->batch_size, m->channels, m->height, m->width, m->outputs,
                     m->param_floats, m->state_floats, m->nparams, m->precision};
  h = xc_dist_hash(h, shape, sizeof shape);
  for (int i = 0; i < m->nparams; i++)
    h = xc_dist_hash(h, m->params[i].name, strlen(m->params[i].name));
  uint64_t keys[NKEY] = {h, xc_dist_hash(0, options, strlen(options)), 0, (uint64_t)d->n, 0};
  keys[KEY_WEIGHTS] = xc_dist_hash(xc_dist_hash(xc_dist_hash(0, params, m->param_floats * 4), state,
                                                m->state_floats * 4),
                                   counters, sizeof *counters * m->ncounters);
  size_t sample = (size_t)d->c * d->h * d->w;
  keys[KEY_DATA] = xc_dist_hash(xc_dist_hash(0, d->pixels, (size_t)d->n * sample), d->labels,
                                sizeof *d->labels * d->n);
  int n = xc_dist_size(), who = 0;
  uint64_t *all = xc_malloc(sizeof *all * NKEY * n);
  xc_dist_gather_u64(keys, NKEY, all);
  int k = xc_dist_disagreement(all, n, NKEY, &who);
  free(all);
  if (k >= 0)
    xc_die(hints[k], "rank %d of %d disagrees with rank 0 on %s (%s): the ranks cannot train "
           "together", who, n, what[k],
           k == KEY_COUNT ? xc_format("%lld samples here", (long long)d->n) : detail[k]);
}

int xc_train_main(int argc, char **argv) {
  xc_passive_wait(argv);
  const XcModel *m = &xc_model;
  char *stem = xc_model_stem(argc > 0 ? argv[0] : m->name, "-train");
  xc_prog = argc > 0 ? xc_basename(argv[0]) : "train";
  const char *data = m->train_path, *init = NULL, *log_path = NULL, *eval_data = NULL;
  bool data_given = false;
  char *save = xc_format("%s.safetensors", stem);
  int epochs = m->epochs, steps = 0, seed = m->seed, threads = 0;
  bool epochs_given = false, shuffle = m->shuffle, quiet = false, strict = false, resume = false;
  bool drop_last = m->drop_last, cache = false;
  int max_pixels = 0;
  bool eval_each_epoch = true, nan_skip = false, profile = false;
  const char *profile_csv = NULL;
  double lr = m->lr;
  Monitor mo = {MONITOR_NONE};
  bool save_best = false;
  char *usage = xc_format(usage_fmt, xc_prog);
  Args a = {.argc = argc, .argv = argv, .i = 1, .usage = usage};
  for (; a.i < argc; a.i++) {
    if (arg_flag(&a, "--help") || arg_flag(&a, "-h")) {
      print_help(xc_prog, m, save);
      free(save), free(stem), free(usage);
      return 0;
    } else if (arg_flag(&a, "--version")) {
      xc_print_version(m);
      free(save), free(stem), free(usage);
      return 0;
    } else if (arg_opt(&a, "--data")) {
      data = a.value;
      data_given = true;
    } else if (arg_opt(&a, "--eval-data")) {
      eval_data = a.value;
    } else if (arg_opt(&a, "--epochs")) {
      epochs = arg_int(&a, 1, 1000000);
      epochs_given = true;
    } else if (arg_opt(&a, "--steps")) {
      steps = arg_int(&a, 1, 2000000000);
    } else if (arg_opt(&a, "--batch-size")) {
      int b = arg_int(&a, 1, 1 << 30);
      if (b != m->batch_size)
        xc_die(xc_format("the batch size is compiled into the executable; set train: "
                         "{batch_size: %d} in the YAML and compile again",
                         b),
               "--batch-size %d: this executable was compiled for batch size %d", b, m->batch_size);
    } else if (arg_opt(&a, "--lr")) {
      lr = arg_double(&a, 0, 1e6);
    } else if (arg_opt(&a, "--seed")) {
      seed = arg_int(&a, 0, 2147483647);
    } else if (arg_flag(&a, "--no-shuffle")) {
      shuffle = false;
    } else if (arg_flag(&a, "--drop-last")) {
      drop_last = true;
    } else if (arg_opt(&a, "--threads")) {
      threads = arg_int(&a, 1, 1024);
    } else if (arg_opt(&a, "--init")) {
      init = a.value;
    } else if (arg_opt(&a, "--save")) {
      free(save);
      save = xc_strdup(a.value);
    } else if (arg_opt(&a, "--log")) {
      log_path = a.value;
    } else if (arg_flag(&a, "--resume")) {
      resume = true;
    } else if (arg_flag(&a, "--no-eval")) {
      eval_each_epoch = false;
    } else if (arg_opt(&a, "--save-best")) {
      mo.kind = !strcmp(a.value, "val_loss") ? MONITOR_VAL_LOSS
                : !strcmp(a.value, "val_accuracy") ? MONITOR_VAL_ACCURACY
                                                   : MONITOR_NONE;
      if (!mo.kind)
        xc_die("write --save-best val_loss or --save-best val_accuracy",
               "--save-best %s: unknown metric", a.value);
      save_best = true;
    } else if (arg_opt(&a, "--patience")) {
      mo.patience = arg_int(&a, 1, 1000000);
    } else if (arg_flag(&a, "--strict")) {
      strict = true;
    } else if (arg_flag(&a, "--cache")) {
      cache = true;
    } else if (arg_flag(&a, "--profile")) {
      profile = true;
    } else if (arg_opt(&a, "--profile-csv")) {
      profile = true;
      profile_csv = a.value;
    } else if (arg_opt(&a, "--nan-policy")) {
      if (strcmp(a.value, "stop") && strcmp(a.value, "skip"))
        xc_die("write --nan-policy stop or --nan-policy skip",
               "--nan-policy %s: unknown policy", a.value);
      nan_skip = !strcmp(a.value, "skip");
    } else if (arg_opt(&a, "--precision")) {
      if (strcmp(a.value, "fp32") && strcmp(a.value, "bf16") && strcmp(a.value, "fp16"))
        xc_die("write --precision fp32, bf16 or fp16", "--precision %s: unknown precision",
               a.value);
      if (strcmp(a.value, precision_name(m->precision)))
        xc_die(xc_format("the precision is compiled into the executables (the autocast pass "
                         "places the casts): set precision: %s in the YAML and compile again",
                         a.value),
               "--precision %s: this executable was compiled for %s", a.value,
               precision_name(m->precision));
    } else if (arg_opt(&a, "--max-image-pixels")) {
      max_pixels = arg_int(&a, 1, 2147483647);
    } else if (arg_flag(&a, "--quiet") || arg_flag(&a, "-q")) {
      quiet = true;
    } else {
      arg_unknown(&a);
    }
  }
  if (steps && !epochs_given)
    epochs = 0; // --steps alone: as many epochs as it takes
  if (init && resume)
    xc_die("--resume continues from the checkpoint at --save; drop --init",
           "--init and --resume exclude each other");
  if (mo.patience && !mo.kind)
    mo.kind = MONITOR_VAL_LOSS; // Keras's EarlyStopping watches val_loss by default
  // Ranks (mpirun): each trains its shard of a global batch of nranks x
  // the compiled batch; rank 0 alone prints, logs, evaluates and saves.
  xc_dist_init(&argc, &argv);
  int rank = xc_dist_rank(), nranks = xc_dist_size();
  int global_batch = m->batch_size * nranks;
  if (rank > 0)
    quiet = true, log_path = NULL, profile = false;
  xc_set_threads(threads);
  char *optim_path = sibling(save, ".optim.safetensors");
  char *csv_path = sibling(save, ".history.csv");
  char *svg_path = sibling(save, ".curves.svg");
  if (save_best)
    mo.best_path = sibling(save, ".best.safetensors");
  // Checkpoints go next to --save after every epoch: a directory that cannot
  // take them is an error now, not after the first epoch's work.
  char *save_dir = xc_strdup(save);
  char *slash = strrchr(save_dir, '/');
  if (slash)
    *(slash == save_dir ? slash + 1 : slash) = '\0';
  if (rank == 0 && access(slash ? save_dir : ".", W_OK) != 0)
    xc_die("pass --save in an existing, writable directory",
           "cannot write checkpoints next to %s: %s", save, strerror(errno));
  free(save_dir);

  // Weights and optimizer state.
  float *params = xc_alloc_floats(m->param_floats);
  float *state = xc_alloc_floats(m->state_floats);
  xc_init_tensors(params, m->params, m->nparams, (uint64_t)seed, 1);
  xc_init_tensors(state, m->states, m->nstates, (uint64_t)seed, 2);
  // Each batch norm's num_batches_tracked, counted here as PyTorch counts
  // its training forward passes; saved with the weights.
  int64_t *counters = xc_calloc(m->ncounters + 1, sizeof *counters);
  int first_epoch = 0, skip_iters = 0;
  int64_t step = 0, opt_step = 0;
  if (init && rank == 0)
    xc_load_weights(init, m, params, state, counters);
  // Checkpoints (checkpoint.c): finish or clear what an interrupted save
  // left, then --resume from a pair that belongs together, with the
  // history, the partial epoch's sums and the monitor saved with it.
  const char *others[] = {csv_path, svg_path, mo.best_path};
  if (rank == 0)
    xc_ckpt_tidy(save, optim_path, others, mo.best_path ? 3 : 2);
  XcProgress resumed = {0};
  int resumed_global = global_batch; // the global batch of the run --resume continues
  Scaler scaler = {m->precision == XC_PRECISION_FP16, (float)m->init_scale, 0};
  EpochRecord *hist = NULL;
  int nhist = 0;
  EpochSums sums = {0};
  enum { META_HISTORY, META_SUMS, META_MONITOR, META_GLOBAL_BATCH, NMETA };
  XcCkptMeta meta[NMETA] = {
      {"history", NULL}, {"epoch_sums", NULL}, {"monitor", NULL}, {"global_batch", NULL}};
  if (resume && rank == 0) {
    resumed = xc_ckpt_resume(save, optim_path, m, params, state, counters, meta, NMETA);
    step = resumed.step;
    first_epoch = (int)resumed.epoch;
    skip_iters = (int)resumed.iter;
    opt_step = resumed.opt_step;
    if (scaler.on)
      scaler.scale = resumed.scale, scaler.growth_tracker = resumed.growth_tracker;
    char *err = NULL;
    const char *damaged = "the checkpoint was changed or damaged since a run wrote it";
    if (meta[META_HISTORY].value &&
        (!xc_history_decode(meta[META_HISTORY].value, &hist, &nhist, &err) ||
         (nhist && hist[nhist - 1].epoch != first_epoch)))
      xc_die(damaged, "%s: its history (metadata 'history') %s", optim_path,
             err ? err : "does not end at the epoch the checkpoint is at");
    free(err);
    if (!meta[META_HISTORY].value && first_epoch > 0) {
      // A checkpoint of an earlier xentcc: its epochs' rows stay empty.
      xc_warn(NULL, "%s holds no history (an earlier xentcc wrote it): %s has no numbers for "
              "epochs 1 to %d", optim_path, csv_path, first_epoch);
      nhist = first_epoch;
      hist = xc_malloc(sizeof *hist * nhist);
      for (int i = 0; i < nhist; i++)
        hist[i] = (EpochRecord){i + 1, (i + 1) * resumed.steps_per_epoch, NAN, NAN, NAN, NAN,
                                NAN, NAN, NAN};
    }
    xc_history_restore_times(csv_path, hist, nhist);
    if (skip_iters && meta[META_SUMS].value && !sums_decode(meta[META_SUMS].value, &sums))
      xc_die(damaged, "%s: its 'epoch_sums' metadata is \"%s\"", optim_path,
             meta[META_SUMS].value);
    // The monitor as it was saved; for another metric (or none saved), as
    // it would have been, from the history.
    if (mo.kind && !(meta[META_MONITOR].value &&
                     monitor_decode(meta[META_MONITOR].value, &mo, first_epoch))) {
      for (int i = 0; i < nhist; i++)
        monitor_update(&mo, &hist[i]);
      mo.wait = mo.best_epoch ? first_epoch - mo.best_epoch : 0;
    }
    if (mo.patience && mo.best_epoch && mo.wait >= mo.patience)
      xc_die("pass a larger --patience (or none) to train further",
             "%s stopped early: %s has not improved for %d epochs since epoch %d", save,
             monitor_names[mo.kind], mo.wait, mo.best_epoch);
    // The global batch (ranks x compiled batch) it was written with
    // (checkpoints of earlier xentcc hold none: one process, this batch).
    // Under another, the position within the epoch is its sample offset,
    // which must begin a batch of this run; the steps per epoch change, so
    // the step count keeps an offset from epoch x steps per epoch + batch.
    const char *gb = meta[META_GLOBAL_BATCH].value;
    if (gb) {
      char *end;
      long v = strtol(gb, &end, 10);
      if (end == gb || *end || v < 1 || v > INT32_MAX)
        xc_die("the checkpoint was changed or damaged since a run wrote it",
               "%s: 'global_batch' is \"%s\" in its metadata, not a batch size", optim_path, gb);
      resumed_global = (int)v;
    }
    int64_t sample = (int64_t)skip_iters * resumed_global;
    if (resumed_global != global_batch && sample % global_batch)
      xc_die(xc_format("resume with a global batch (ranks x compiled batch) that divides %lld "
                       "(it was %d), or from the checkpoint of an epoch's end",
                       (long long)sample, resumed_global),
             "%s stopped %lld samples into epoch %d (%lld batch%s of %d); this run's global "
             "batch of %d (%d rank%s x %d) cannot start there",
             optim_path, (long long)sample, first_epoch + 1, (long long)skip_iters,
             skip_iters == 1 ? "" : "es", resumed_global, global_batch, nranks,
             nranks == 1 ? "" : "s", m->batch_size);
    skip_iters = (int)(sample / global_batch);
    for (int i = 0; i < NMETA; i++)
      free(meta[i].value), meta[i].value = NULL;
  }
  // Rank 0 read the weights (--init, --resume): every rank starts from its
  // weights and its position in the run.
  if (nranks > 1) {
    xc_dist_broadcast(params, sizeof *params * m->param_floats);
    xc_dist_broadcast(state, sizeof *state * m->state_floats);
    xc_dist_broadcast(counters, sizeof *counters * m->ncounters);
    int64_t at[] = {step, first_epoch, skip_iters, opt_step, scaler.growth_tracker};
    xc_dist_broadcast(at, sizeof at);
    xc_dist_broadcast(&scaler.scale, sizeof scaler.scale);
    step = at[0], first_epoch = (int)at[1], skip_iters = (int)at[2], opt_step = at[3];
    scaler.growth_tracker = at[4];
  }

  double t_load = xc_now();
  DataSpec spec = xc_data_spec(m, data, true, strict, quiet);
  spec.cache = cache;
  spec.max_image_pixels = max_pixels;
  Dataset *d = xc_load_dataset(&spec);
  if (d->n == 0 || (drop_last && d->n < m->batch_size))
    xc_die("use more data, or compile with a smaller train.batch_size",
           "%s: %lld samples, fewer than one batch of %d", d->path, (long long)d->n, m->batch_size);
  // The evaluation after each epoch reads its data now, so that a problem
  // with it shows before any training.
  Dataset *val = NULL;
  const char *vpath = eval_each_epoch && xc_forward && rank == 0
                          ? eval_path(m, data, data_given, eval_data)
                          : NULL;
  if (vpath) {
    DataSpec vs = xc_data_spec(m, vpath, false, strict, true);
    vs.cache = cache;
    vs.max_image_pixels = max_pixels;
    if (vpath != data)
      vs.split = XC_SPLIT_ALL;
    val = xc_load_dataset(&vs);
  }
  const char *val_name = eval_data || xc_use_val_split(m) ? "validation" : "test";
  if (mo.kind && !val && rank == 0)
    xc_die(eval_each_epoch ? "pass --eval-data PATH, data held out from training"
                           : "drop --no-eval: the metric comes from the evaluation after each epoch",
           "%s %s needs an evaluation after each epoch, and this run has none",
           save_best ? "--save-best" : "--patience", monitor_names[mo.kind]);
  if (mo.kind == MONITOR_VAL_LOSS && m->loss_kind == XC_LOSS_NONE)
    xc_die("use --save-best val_accuracy", "this executable cannot compute model '%s''s loss",
           m->name);
  t_load = xc_now() - t_load;
  bool binary = m->label_kind == XC_LABEL_FLOAT;
  Transform tf = xc_model_transform(m, true);
  int end_epoch = epochs > 0 ? epochs : 1 << 30;
  if (steps && step >= steps)
    xc_die("pass a larger --steps to train further", "%s is already at step %lld", save,
           (long long)step);
  if (resume && first_epoch >= end_epoch && !steps)
    xc_die("pass a larger --epochs to train further", "%s already holds %d epochs", save,
           first_epoch);
  if (nranks > 1) {
    char *options = xc_format("seed %d shuffle %d drop_last %d lr %.17g epochs %d steps %d "
                              "nan_skip %d resume %d at %lld",
                              seed, shuffle, drop_last, lr, epochs, steps, nan_skip, resume,
                              (long long)step);
    check_ranks_agree(m, params, state, counters, d, options);
    free(options);
  }
  Loader *loader = loader_start_shard(d, &tf, m->batch_size, rank, nranks, shuffle, drop_last,
                                      (uint64_t)seed, first_epoch, end_epoch, binary, true);
  int per_epoch = loader_steps_per_epoch(loader);
  int64_t step_offset = 0;
  if (resume && rank == 0) {
    // The data must make the checkpoint's steps per epoch at its global batch.
    int64_t before = drop_last ? d->n / resumed_global
                               : (d->n + resumed_global - 1) / resumed_global;
    xc_ckpt_check_data(optim_path, resumed, before, d->path);
    step_offset = step - ((int64_t)first_epoch * per_epoch + skip_iters);
    if (resumed_global != global_batch && !quiet)
      printf("resuming with a global batch of %d samples per step (the checkpoint's was %d): "
             "%d steps per epoch instead of %lld\n",
             global_batch, resumed_global, per_epoch, (long long)before);
  }
  // The schedule's length: one-cycle anneals over the whole run unless the
  // YAML gives total_steps, which the run must not exceed (PyTorch raises).
  const XcSchedule *sched = &m->schedule;
  int64_t run_steps = steps ? steps : (int64_t)end_epoch * per_epoch;
  int64_t run_total = sched->per_step ? run_steps : epochs > 0 ? end_epoch
                                                               : (run_steps + per_epoch - 1) / per_epoch;
  if (sched->kind == XC_SCHED_ONE_CYCLE && sched->total_steps && run_total > sched->total_steps)
    xc_die(xc_format("train for at most %lld %s, or raise total_steps in the YAML's schedule",
                     (long long)sched->total_steps, sched->per_step ? "steps" : "epochs"),
           "this run takes %lld %s but the one_cycle schedule has total_steps %lld",
           (long long)run_total, sched->per_step ? "steps" : "epochs",
           (long long)sched->total_steps);
  xc_schedule_check(sched, run_total);
  // A run stopped mid-epoch resumes there: the skipped batches are made
  // (and dropped) so shuffling and augmentation continue exactly.
  Batch b;
  for (int i = 0; i < skip_iters && loader_next(loader, &b); i++)
    loader_release(loader);
  if (!quiet) {
    char *held = spec.split == XC_SPLIT_TRAIN
                     ? xc_format(", %g held out for validation", m->val_split)
                     : xc_format("%s", "");
    char *precision = m->precision == XC_PRECISION_FP32 ? xc_format("%s", "")
                      : scaler.on ? xc_format(", fp16 autocast with loss scale %g", scaler.scale)
                                  : xc_format("%s", ", bf16 autocast");
    char *ranks = nranks > 1 ? xc_format(" (%d ranks x %d)", nranks, m->batch_size)
                             : xc_format("%s", "");
    printf("training %s on %s: %lld samples (%s), %d steps per epoch of %d%s, %d thread%s%s%s\n",
           m->name, d->path, (long long)d->n, d->format, per_epoch, global_batch, ranks,
           xc_threads(), xc_threads() == 1 ? "" : "s", held, precision);
    free(held), free(precision), free(ranks);
    if (d->n % global_batch)
      printf(drop_last ? "(drop_last: the last %lld samples of each epoch's order are dropped)\n"
                       : "(the last batch of each epoch holds %lld samples)\n",
             (long long)(d->n % global_batch));
    fflush(stdout);
  }

  FILE *log = NULL;
  if (log_path) {
    log = fopen(log_path, "w");
    if (!log)
      xc_die("check that the directory exists and is writable", "cannot write %s: %s", log_path,
             strerror(errno));
    fprintf(log, scaler.on ? "step,epoch,loss,lr,skipped,scale\n" : "step,epoch,loss,lr,skipped\n");
  }

  void *workspace = xc_alloc_floats((m->workspace_bytes + 3) / 4);
  float *grads = xc_alloc_floats(m->param_floats);
  float *logits = xc_alloc_floats((int64_t)m->batch_size * m->outputs);
  int64_t skipped = 0, scaler_skipped = 0;
  int log_every = m->log_every > 0 ? m->log_every : 100;
  Progress progress = {!quiet && isatty(2), 0};
  // Time: the epoch's training (t_epoch: when its first step of this run
  // began), everything at epoch ends (evaluation, checkpoints, history:
  // t_outside), and of that the evaluation (t_eval).
  double running = 0, t0 = xc_now(), t_epoch = t0, t_eval = 0, t_outside = 0;
  double train_secs = nhist && isfinite(hist[nhist - 1].seconds) ? hist[nhist - 1].seconds : 0;
  int64_t start_step = step, images = 0, epoch_images = 0;
  bool stopped = false, at_epoch_end = false, early = false;
  int last_epoch = first_epoch, last_iter = skip_iters;
  // Dropout masks hash (seed, layer, step, element) with the element's
  // index in the global batch: this rank's rows start at rank x batch, so
  // its masks are those of one process with the global batch.
  int32_t row0 = (int32_t)((int64_t)rank * m->batch_size);
  catch_interrupts();
  int sig = 0; // a signal caught by this rank, or (after the step's sums) by any
  double t_sum = 0; // in combine_ranks: waiting for the other ranks, then the sums
  if (profile)
    xc_profile_start(m);
  float step_lr = (float)lr;
  int last_saved_epoch = first_epoch;
  while (loader_next(loader, &b)) {
    XcHyper hy = xc_schedule_at(sched, lr, xc_schedule_t(sched, step + 1, b.epoch), run_total);
    // GradScaler's 1 / scale in double, rounded to float (else 1: unread).
    float step_scale = scaler.on ? scaler.scale : 1.0f;
    XcStepArgs args = {(int32_t)(step + 1), (uint32_t)seed, (float)hy.lr, (float)hy.momentum,
                       (int32_t)(opt_step + 1), step_scale, (float)(1.0 / (double)step_scale),
                       row0};
    // A rank whose shard of a partial last batch is empty computes nothing
    // (its loss would be 0 / 0) but still takes part in the sums.
    float loss = 0;
    int64_t right = 0;
    int rows = b.rows;
    if (rows > 0 || nranks == 1) {
      loss = xc_grad_step(params, state, b.images, b.labels, &args, grads, logits, workspace);
      right = m->train_logits ? right_predictions(m, logits, b.labels, b.rows) : 0;
    } else {
      memset(grads, 0, sizeof *grads * m->param_floats);
    }
    sig = interrupted;
    if (nranks > 1) {
      double t = xc_now();
      loss = combine_ranks(m, grads, loss, loss_denominator(m, b.labels, rows), &right, &rows,
                           &sig);
      t_sum += xc_now() - t;
    }
    loader_release(loader);
    // A NaN or an infinity in the loss or a gradient: stop before the update
    // (the weights stay those of the step before, the last checkpoint is
    // untouched) or skip the update as GradScaler does. With GradScaler
    // (fp16) a non-finite gradient of the scaled loss is an overflow it
    // handles: the update is skipped and the scale backs off.
    int bad = xc_grad_check(grads);
    bool overflow = scaler.on && bad >= 0;
    if (scaler.on) {
      scaler_update(&scaler, m, overflow);
      scaler_skipped += overflow;
    }
    bool finite = isfinite(loss) && bad < 0;
    if (!finite && !nan_skip && !overflow) {
      progress_clear(&progress);
      if (log)
        fclose(log);
      if (rank > 0) { // every rank decided so: rank 0 says why
        xc_dist_finalize();
        exit(1);
      }
      xc_die(xc_format("lower the learning rate (--lr), check the data's normalisation, or pass "
                       "--nan-policy skip to skip such steps; the last checkpoint (%s, written "
                       "after epoch %d) is intact and --resume continues from it",
                       save, last_saved_epoch),
             "step %lld (epoch %d, batch %d): %s%s%s; training stopped before updating the "
             "weights",
             (long long)step + 1, b.epoch + 1, b.iter + 1,
             isfinite(loss) ? "" : xc_format("the loss is %g", loss),
             !isfinite(loss) && bad >= 0 ? " and " : "",
             bad >= 0 ? xc_format("the gradient of %s holds a NaN or an infinity",
                                  m->params[bad].name)
                      : "");
    }
    if (finite || (overflow && isfinite(loss))) {
      // The epoch's metrics, from this step's loss and logits (before the
      // update; a step GradScaler skips still computed both).
      sums.loss += (double)loss * rows;
      sums.rows += rows;
      sums.steps++;
      sums.right += right;
    }
    if (finite) {
      xc_apply_step(params, state, grads, &args, workspace);
      opt_step++;
    } else if (overflow) {
      // GradScaler's skipped step: counted, reported at the end, no warning.
    } else if (skipped++ == 0 && rank == 0) {
      progress_clear(&progress);
      char *why = bad >= 0 ? xc_format("the gradient of %s is not finite", m->params[bad].name)
                           : xc_format("the loss is %g", loss);
      xc_warn("--nan-policy skip: such steps are counted and reported at the end",
              "step %lld: %s; the update is skipped", (long long)step + 1, why);
      free(why);
    }
    step++;
    step_lr = args.lr;
    for (int i = 0; i < m->ncounters; i++)
      counters[i]++;
    images += rows;
    epoch_images += rows;
    if (log && scaler.on)
      fprintf(log, "%lld,%d,%.9g,%.9g,%d,%.9g\n", (long long)step, b.epoch + 1, loss, args.lr,
              !finite, step_scale);
    else if (log)
      fprintf(log, "%lld,%d,%.9g,%.9g,%d\n", (long long)step, b.epoch + 1, loss, args.lr,
              !finite);
    running += loss;
    if (!quiet && (b.iter + 1) % log_every == 0) {
      progress_clear(&progress);
      printf("[%d, %5d] loss: %.3f\n", b.epoch + 1, b.iter + 1, running / log_every);
      fflush(stdout);
      running = 0;
    }
    double now = xc_now(), ips = images / (now - t0 - t_outside + 1e-9);
    int64_t total = steps ? steps - start_step : (int64_t)(end_epoch - first_epoch) * per_epoch;
    double eta = (total - (step - start_step)) * (double)m->batch_size / (ips + 1e-9);
    progress_draw(&progress, b.epoch + 1, epochs, b.iter + 1, per_epoch,
                  sums.rows ? sums.loss / sums.rows : NAN,
                  m->train_logits && sums.rows ? (double)sums.right / sums.rows : NAN, ips, eta);
    last_epoch = b.epoch;
    last_iter = b.iter + 1;
    at_epoch_end = b.iter + 1 == per_epoch;
    stopped = (steps && step >= steps) || sig;
    // At the end of an epoch, and of a run that --steps stops mid-epoch: a
    // row of the history, from an evaluation (an interrupted epoch's end
    // is evaluated too, so that --resume sees the epochs it would have).
    bool partial = !at_epoch_end && steps && step >= steps;
    if (!at_epoch_end && !partial) {
      if (stopped)
        break;
      continue;
    }
    double t_end = xc_now(), epoch_secs = t_end - t_epoch;
    train_secs += epoch_secs;
    progress_clear(&progress);
    check_weights_finite(m, params, state, save, step, last_saved_epoch);
    EpochRecord r = {at_epoch_end ? b.epoch + 1 : b.epoch + (double)last_iter / per_epoch,
                     step,
                     sums.rows ? sums.loss / sums.rows : NAN,
                     m->train_logits && sums.rows ? (double)sums.right / sums.rows : NAN,
                     NAN,
                     NAN,
                     step_lr,
                     epoch_images / (epoch_secs + 1e-9),
                     train_secs};
    if (val) {
      xc_profile_pause(true);
      EvalResult ev;
      Transform plain = xc_model_transform(m, false);
      xc_evaluate(m, xc_forward, params, state, val, &plain, workspace, 0.5, 0, &ev);
      r.val_loss = ev.loss;
      r.val_acc = conf_accuracy(&ev.conf);
      conf_free(&ev.conf);
      xc_profile_pause(false);
      t_eval += xc_now() - t_end;
    }
    hist = xc_realloc(hist, sizeof *hist * (nhist + 1));
    hist[nhist] = r;
    if (at_epoch_end && rank == 0) {
      nhist++;
      // The best epoch's weights first: a run killed before the checkpoint
      // below repeats this epoch and writes them again.
      if (mo.kind && monitor_update(&mo, &r) && mo.best_path) {
        char epoch_s[16], value_s[32];
        snprintf(epoch_s, sizeof epoch_s, "%d", b.epoch + 1);
        const char *kv[] = {"format", "pt", "model", m->name, "epoch", epoch_s,
                            monitor_names[mo.kind], xc_shortest(monitored(&mo, &r), value_s)};
        xc_ckpt_save_weights(mo.best_path, m, params, state, counters, kv, 4);
        mo.saved = true;
      }
      meta[META_HISTORY].value = xc_history_encode(hist, nhist);
      meta[META_MONITOR].value = mo.kind ? monitor_encode(&mo) : NULL;
      meta[META_GLOBAL_BATCH].value = xc_format("%d", global_batch);
      xc_ckpt_save(save, optim_path, m, params, state, counters,
                   (XcProgress){step, b.epoch + 1, 0, per_epoch, opt_step, scaler.scale,
                                 scaler.growth_tracker, step_offset},
                    meta, NMETA);
      last_saved_epoch = b.epoch + 1;
      for (int i = 0; i < NMETA; i++)
        free(meta[i].value), meta[i].value = NULL;
    }
    if (rank == 0)
      xc_write_history(csv_path, svg_path, m->name, val_name, hist, nhist + partial);
    if (!quiet)
      print_epoch(&r, val_name, val ? val->n : 0);
    if (nranks > 1) { // rank 0's evaluation decides for all
      int stop_early = at_epoch_end && mo.patience && mo.wait >= mo.patience;
      xc_dist_broadcast(&stop_early, sizeof stop_early);
      early = stop_early;
      stopped = stopped || early;
    }
    if (at_epoch_end && mo.patience && mo.wait >= mo.patience && rank == 0) {
      early = stopped = true;
      if (!quiet)
        printf("early stopping: %s has not improved for %d epochs; the best was %.6g at epoch "
               "%d\n",
               monitor_names[mo.kind], mo.wait, mo.best, mo.best_epoch);
    }
    if (at_epoch_end)
      sums = (EpochSums){0}, running = 0;
    epoch_images = 0;
    t_epoch = xc_now();
    t_outside += t_epoch - t_end;
    if (stopped)
      break;
  }
  progress_clear(&progress);
  double waited = loader_wait_seconds(loader);
  loader_free(loader);
  double secs = xc_now() - t0;
  if (log && fclose(log) != 0)
    xc_die(NULL, "cannot write %s: %s", log_path, strerror(errno));
  // A run stopped mid-epoch (--steps, Ctrl-C) still saves what it has, with
  // the epoch's sums so far.
  if ((!at_epoch_end || step == start_step) && rank == 0) {
    check_weights_finite(m, params, state, save, step, last_saved_epoch);
    meta[META_GLOBAL_BATCH].value = xc_format("%d", global_batch);
    meta[META_HISTORY].value = xc_history_encode(hist, nhist);
    meta[META_SUMS].value = last_iter ? sums_encode(&sums) : NULL;
    meta[META_MONITOR].value = mo.kind && mo.best_epoch ? monitor_encode(&mo) : NULL;
    xc_ckpt_save(save, optim_path, m, params, state, counters,
                 (XcProgress){step, last_epoch, last_iter, per_epoch, opt_step, scaler.scale,
                              scaler.growth_tracker, step_offset}, meta, NMETA);
    for (int i = 0; i < NMETA; i++)
      free(meta[i].value), meta[i].value = NULL;
  }
  if (skipped && rank == 0)
    xc_warn("lower the learning rate (--lr) or check the data",
            "skipped %lld of %lld steps whose loss or gradients were not finite",
            (long long)skipped, (long long)(step - start_step));
  if (scaler.on && !quiet)
    printf("GradScaler: %lld of %lld steps skipped for an inf or NaN gradient; loss scale now %g\n",
           (long long)scaler_skipped, (long long)(step - start_step), scaler.scale);
  if (profile)
    xc_profile_report(m, step - start_step, "steps", secs - t_eval, profile_csv);
  if (mo.best_path && mo.best_epoch && !mo.saved && !xc_is_file(mo.best_path))
    xc_warn("the best epoch came before --save-best was given",
            "%s was not written: no epoch of this run improved %s (best: epoch %d)",
            mo.best_path, monitor_names[mo.kind], mo.best_epoch);
  if (!quiet) {
    printf("Finished Training: %lld steps in %.2f s (%.2f s evaluating), %.0f images/s; data "
           "loaded in %.2f s, %.2f s waiting for batches\n",
           (long long)(step - start_step), secs, t_eval, images / (secs - t_eval + 1e-9), t_load,
           waited);
    if (nranks > 1)
      printf("%d ranks: %.2f s in the gradient sums (%lld floats a step), waiting for the "
             "slowest rank included\n",
             nranks, t_sum, (long long)m->param_floats);
    // Every file the run wrote.
    printf("saved weights to %s, optimizer state and progress to %s\n", save, optim_path);
    if (nhist || (!at_epoch_end && steps && step >= steps))
      printf("history: %s, curves: %s\n", csv_path, svg_path);
    if (mo.best_path && xc_is_file(mo.best_path) && mo.best_epoch)
      printf("best epoch: %d (%s %.6g), weights in %s\n", mo.best_epoch,
             monitor_names[mo.kind], mo.best, mo.best_path);
    if (log_path)
      printf("per-step log: %s\n", log_path);
    if (early)
      printf("stopped early after epoch %d (--patience %d)\n", last_epoch + 1, mo.patience);
  }
  if (sig && rank == 0) {
    fflush(stdout);
    fprintf(stderr,
            "%s: %s at step %lld (epoch %d, batch %d); the weights and optimizer state are "
            "saved\nhint: run again with --resume (and the same --save) to continue\n",
            xc_prog, sig == SIGINT ? "interrupted" : "terminated", (long long)step,
            last_epoch + 1, last_iter);
  }
  xc_free_dataset(d);
  xc_free_dataset(val);
  free(params);
  free(state);
  free(grads);
  free(logits);
  free(counters);
  free(workspace);
  free(hist);
  free(optim_path), free(csv_path), free(svg_path), free(mo.best_path), free(save), free(stem);
  free(usage);
  xc_dist_finalize();
  return sig ? 130 : 0;
}

// The runtime's internal header: what train_main.c and eval_main.c share
// with the rest of the runtime (errors, PRNG, threads, checkpoints, data
// sets, batches, metrics). Nothing here is seen by generated code; that
// contract is xentcc_rt.h.
#ifndef XENTCC_RT_INTERNAL_H
#define XENTCC_RT_INTERNAL_H

#include "args.h"
#include "xentcc_rt.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdnoreturn.h>

//
// util.c: errors with hints, checked allocation, time, a seeded PRNG, paths
//

extern const char *xc_prog; // argv[0]'s base name, prefixes every message

// Prints "PROG: error: MSG" and "hint: HINT" (if any) to stderr and exits 1.
noreturn void xc_die(const char *hint, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// For the fuzzers (tests/fuzz) only: xc_die calls hook, which must not
// return, instead of exit(1).
void xc_set_die_hook(void (*hook)(void));
void xc_warn(const char *hint, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Rank `rank` of `size` under mpirun (distributed.c): ranks other than 0
// print no warnings, and their errors only if rank 0 has not stopped the
// job within a moment, as "PROG: rank R of N: error: ...".
void xc_set_report_rank(int rank, int size);
void *xc_malloc(size_t n); // dies with "out of memory"
void *xc_calloc(size_t n, size_t size);
void *xc_realloc(void *p, size_t n);
float *xc_alloc_floats(int64_t n); // zeroed, 64-byte aligned
// The first tensor of a block holding a NaN or an infinity, or NULL.
const XcTensorInfo *xc_first_nonfinite(const float *block, const XcTensorInfo *t, int n);
char *xc_strdup(const char *s);
char *xc_format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
double xc_now(void); // seconds, monotonic
bool xc_is_dir(const char *path);
bool xc_is_file(const char *path);
const char *xc_basename(const char *path);
char *xc_join(const char *dir, const char *name);
int xc_cmp_str(const void *a, const void *b); // qsort over char*: byte order
// fsync of the directory holding path, so a rename into it survives a crash
// (best effort: errors are ignored).
void xc_sync_dir_of(const char *path);

// splitmix64-seeded xoshiro256**: small, fast, and the same on every
// machine, so a seed names one run.
typedef struct {
  uint64_t s[4];
} XcRng;

void xc_rng_seed(XcRng *r, uint64_t seed, uint64_t stream);
uint64_t xc_rng_next(XcRng *r);
float xc_rng_float(XcRng *r);                // [0, 1), 24 random bits
uint32_t xc_rng_below(XcRng *r, uint32_t n); // [0, n), unbiased
void xc_shuffle(XcRng *r, int32_t *a, int64_t n);

//
// distributed.c: data-parallel training over MPI (docs/distributed.md);
// without MPI, a stub of one rank
//

// MPI_Init when started by a launcher (mpirun, srun); the stub refuses to
// run as one of several ranks. Afterwards an error on any rank (xc_die)
// ends the whole job with status 1.
void xc_dist_init(int *argc, char ***argv);
void xc_dist_finalize(void);
bool xc_dist_available(void); // linked with MPI (not the stub)
int xc_dist_rank(void);
int xc_dist_size(void);
int xc_dist_launched_size(void); // ranks the environment says a launcher started, else 1
// Sums v across ranks in place, adding the ranks' values in rank order: the
// same bits on every rank, in every run, over any network.
void xc_dist_sum_floats(float *v, int64_t n);
// all[r * n + i] = rank r's mine[i], on every rank.
void xc_dist_gather_doubles(const double *mine, int n, double *all);
void xc_dist_gather_u64(const uint64_t *mine, int n, uint64_t *all);
void xc_dist_broadcast(void *p, size_t bytes); // rank 0's bytes to every rank
// The agreement check: the first key (of nkeys per rank) on which a rank
// differs from rank 0 (*who), or -1; and the hash the keys are made with.
int xc_dist_disagreement(const uint64_t *all, int nranks, int nkeys, int *who);
uint64_t xc_dist_hash(uint64_t h, const void *p, size_t n);

//
// schedule.c: the learning rate (and cycled momentum) of each step
//

typedef struct {
  double lr;
  double momentum; // one-cycle with cycle_momentum only
} XcHyper;

// The schedule's value at scheduler step t (see xc_schedule_t). total: the
// run's length in the schedule's units, for a one-cycle schedule without
// total_steps.
XcHyper xc_schedule_at(const XcSchedule *s, double base_lr, int64_t t, int64_t total);
// Exits with an error when the schedule is undefined over a run of `total`
// (its units as xc_schedule_at's): one-cycle's warm-up phase empty.
void xc_schedule_check(const XcSchedule *s, int64_t total);
// t of optimizer step `step` (from 1) in epoch `epoch` (from 0).
int64_t xc_schedule_t(const XcSchedule *s, int64_t step, int epoch);

//
// sha256.c: SHA-256 (FIPS 180-4), which the image cache names files by and
// a checkpoint binds its weights with
//

typedef struct {
  uint32_t h[8];   // the hash value so far
  uint64_t len;    // bytes hashed
  uint8_t buf[64]; // a partial block
  size_t nbuf;
} XcSha256;

void xc_sha256_init(XcSha256 *s);
void xc_sha256_update(XcSha256 *s, const void *data, size_t n);
void xc_sha256_final(XcSha256 *s, uint8_t out[32]);
void xc_sha256(const void *data, size_t n, uint8_t out[32]);

//
// profile.c: --profile, the time of every generated kernel
//

void xc_profile_start(const XcModel *m);
void xc_profile_pause(bool paused); // the per-epoch evaluation is not training
// Prints the table (kernels by time, ms per step, share of wall, GFLOP/s,
// share of the measured FMA peak, GB/s beside the measured memory
// bandwidth) and, with csv_path, writes every kernel's numbers there.
void xc_profile_report(const XcModel *m, int64_t steps, const char *unit, double wall,
                       const char *csv_path);
double xc_fma_peak_gflops(int *lanes);
double xc_memory_gbps(void);

//
// parallel.c: OpenMP thread count
//

void xc_set_threads(int n); // 0: keep OMP_NUM_THREADS / the default
int xc_threads(void);
void xc_passive_wait(char **argv); // re-executes with OMP_WAIT_POLICY=passive unless set

//
// init.c: PyTorch's default initialisation per XcInit
//

void xc_init_tensors(float *block, const XcTensorInfo *t, int n, uint64_t seed, uint64_t stream);
int64_t xc_numel(const XcTensorInfo *t);
char *xc_shape_str(int rank, const int64_t *dim); // "[6,3,5,5]"

// A state tensor is optimizer state when its name is a parameter's name plus
// a suffix ("fc1.weight.momentum_buffer"); other states (batch-norm running
// statistics) belong to the model's state_dict and go with the weights.
bool xc_is_optimizer_state(const XcModel *m, const XcTensorInfo *t);

//
// safetensors.c: reading and writing PyTorch state_dicts as safetensors
//

enum { ST_MAX_RANK = 8 };

typedef struct {
  char *name;
  char dtype[8]; // "F32"; F64, F16 and BF16 are converted on load
  int size;      // bytes per element
  int rank;
  int64_t dim[ST_MAX_RANK];
  int64_t numel;
  int64_t begin, end; // byte offsets into the data section
  int order;          // position in the header
} StEntry;

typedef struct {
  char *path;
  int fd;             // -1 for a file in memory
  const uint8_t *mem; // st_open_mem: the bytes, else NULL
  int64_t mem_size;
  bool seekable;      // a regular file, read at offsets; else read once, in order
  int64_t data_start; // 8 + the header's length
  int64_t data_len;   // the data section, as the offsets tile it
  int64_t pos;        // not seekable: data bytes consumed
  StEntry *e;         // in file order (by offset)
  int n;
  const StEntry **by_name; // sorted by name, for st_find
  char **meta_key, **meta_val; // "__metadata__": string -> string
  int nmeta;
} StFile;

// Opens a safetensors file (any readable path: a pipe, /dev/stdin) and
// reads its header, checked as the specification requires: at most 100 MB
// of strict JSON, unique names, known dtypes, sizes that agree with shapes,
// data_offsets tiling the data section exactly. On failure *err says why,
// naming the file, and NULL is returned. No tensor is read yet.
StFile *st_open(const char *path, char **err);
StFile *st_open_fd(int fd, const char *path, char **err); // takes fd
StFile *st_open_mem(const void *data, int64_t size, const char *name, char **err);
void st_free(StFile *f);
const StEntry *st_find(const StFile *f, const char *name);
const char *st_meta(const StFile *f, const char *key);
// A tensor's bytes as stored (e->end - e->begin), or its values as float32
// (float dtypes only). On a pipe, tensors must be read in file order.
bool st_read_raw(StFile *f, const StEntry *e, void *dst, char **err);
bool st_read_f32(StFile *f, const StEntry *e, float *dst, char **err);
// A pipe is read to its end, which must be where the offsets say.
bool st_finish(StFile *f, char **err);
// F16, BF16, F32 and F64 load into a model, converted to float32.
bool st_is_float(const char *dtype);
float st_half_to_float(uint16_t h, bool bf16);

// One tensor to read: into f32 (converted), else into raw (as stored).
typedef struct {
  const StEntry *e;
  float *f32;
  void *raw;
} StLoad;

// Reads l[0..n) in file order (sorting l), then st_finish.
bool st_load(StFile *f, StLoad *l, int n, char **err);

typedef struct {
  const char *name;
  int rank;
  const int64_t *dim;
  const float *data;
  const int64_t *i64; // instead of data: an int64 tensor (PyTorch's num_batches_tracked)
} StTensor;

// The bytes of a file, in pieces, to sink; false when sink fails.
typedef bool (*StSink)(void *ctx, const void *p, size_t n);
bool st_encode(const StTensor *t, int n, const char *const *meta_kv, int nmeta, StSink sink,
               void *ctx);
// weights.c: a model's tensors in and out of safetensors files.
//
// Writes tensors atomically (an xc_out_create temporary, fsync, rename over
// PATH). Returns false (errno set) on failure.
bool st_write(const char *path, const StTensor *t, int n, const char *const *meta_kv, int nmeta);

// Loads every tensor in infos[0..n) from f into block, in one pass; dies
// naming the file when one is missing, of another shape, or unreadable.
void st_load_into(StFile *f, float *block, const XcTensorInfo *infos, int n, const char *what);
// The state_dict of a model: parameters, buffers, then counters (int64
// num_batches_tracked, one per m->counter_names; none if counters is NULL).
// t has room for nparams + nstates + ncounters; returns the count.
int xc_weight_tensors(const XcModel *m, const float *params, const float *state,
                      const int64_t *counters, StTensor *t);
void xc_save_weights(const char *path, const XcModel *m, const float *params, const float *state,
                     const int64_t *counters);
// Loads params (and model buffers from state) from a weights file; warns on
// extra keys; dies naming the file on missing or mis-shaped tensors.
void xc_load_weights(const char *path, const XcModel *m, float *params, float *state,
                     int64_t *counters);

//
// checkpoint.c: files written whole or not at all, and the training
// checkpoint (W.safetensors + W.optim.safetensors) committed as one
//

// A file being written: a new temporary beside its final path, created
// with O_EXCL | O_NOFOLLOW under an unpredictable name, renamed into place
// once complete and durable. Failures return false with errno set.
typedef struct XcOutFile XcOutFile;
XcOutFile *xc_out_create(const char *path);
bool xc_out_write(XcOutFile *o, const void *p, size_t n);
bool xc_out_close(XcOutFile *o); // flush, fsync, close
bool xc_out_rename(XcOutFile *o, const char *path);
void xc_out_sha256(const XcOutFile *o, uint8_t out[32]); // of every byte written
void xc_out_free(XcOutFile *o); // removes the temporary unless renamed

// Replaces path with the n bytes of data through a temporary like
// xc_out_create's, without fsync (for files that need to be whole, not
// durable: the history and the curves). False with errno set on failure.
bool xc_replace_file(const char *path, const void *data, size_t n);
// Where a run stands: what --resume continues from.
typedef struct {
  int64_t step;            // optimizer steps since the run began
  int64_t epoch;           // complete epochs
  int64_t iter;            // batches done of the next epoch
  int64_t steps_per_epoch; // of the data the run trained on
  int64_t opt_step;        // updates applied: the optimizer's own step number
                           // (steps skipped by --nan-policy skip do not count)
  // precision fp16: GradScaler's state (its state_dict's scale and
  // _growth_tracker), saved with the optimizer state; unused otherwise.
  float scale;
  int64_t growth_tracker;
  // step - (epoch x steps_per_epoch + iter): 0 unless a --resume changed the
  // global batch (ranks x batch, distributed.c) and with it the steps per
  // epoch; saved as 'step_offset' when not 0.
  int64_t step_offset;
} XcProgress;

// What the training loop keeps in the optimizer file besides the progress
// (the history, the partial epoch's sums, the best epoch): metadata strings.
typedef struct {
  const char *key;
  char *value; // saved as given; on --resume a copy of the file's, or NULL
} XcCkptMeta;
// Saves weights, optimizer state, progress and extra together; dies saying
// what is intact when the disk refuses.
void xc_ckpt_save(const char *weights, const char *optim, const XcModel *m, const float *params,
                  const float *state, const int64_t *counters, XcProgress p,
                  const XcCkptMeta *extra, int nextra);
// The weights alone, as W.safetensors is written (whole and durable, or not
// at all), with metadata pairs meta_kv[0..2*nmeta): --save-best's file.
void xc_ckpt_save_weights(const char *path, const XcModel *m, const float *params,
                          const float *state, const int64_t *counters, const char *const *meta_kv,
                          int nmeta);
// At the start of a run: completes a save interrupted between its renames
// and removes temporaries of interrupted saves, those of others[0..nothers)
// (the history, the curves, the best weights) too.
void xc_ckpt_tidy(const char *weights, const char *optim, const char *const *others, int nothers);
// --resume: loads the checkpoint after checking that its files belong
// together and to the model, and extra[i].value of each key; dies with a
// hint otherwise.
XcProgress xc_ckpt_resume(const char *weights, const char *optim, const XcModel *m, float *params,
                          float *state, int64_t *counters, XcCkptMeta *extra, int nextra);
// --resume, once the data is loaded: the progress must fit its epochs.
void xc_ckpt_check_data(const char *optim, XcProgress p, int64_t steps_per_epoch,
                        const char *data);

//
// image.c: JPEG/PNG decoding, resizing like PIL's bilinear, colour conversion
//

typedef struct {
  int w, h, c; // c is 1 (grey) or 3 (RGB)
  uint8_t *px; // h * w * c, interleaved (HWC)
} Image;

// PIL's Image.MAX_IMAGE_PIXELS: images over it warn, over twice it are
// refused (a decompression bomb); --max-image-pixels sets another limit.
#define XC_MAX_IMAGE_PIXELS 89478485
int64_t xc_pixel_limit(int64_t max_image_pixels); // 0: XC_MAX_IMAGE_PIXELS

// Decodes a JPEG or PNG file by its content; false and *err on failure
// (not a regular file, not an image, more than twice max_image_pixels
// pixels, truncated, corrupt). xc_image_load: the default limit.
bool xc_image_load_max(const char *path, int64_t max_image_pixels, Image *img, char **err);
bool xc_image_load(const char *path, Image *img, char **err);
// Opens a file for reading if it is a regular file (after symbolic links),
// never blocking on a FIFO; -1 and *err (allocated) otherwise.
int xc_open_regular(const char *path, char **err);
// Converts to the model's channel count and size (PIL's bilinear with
// antialias on downscaling) and writes CHW bytes to out.
void xc_image_to_chw(const Image *img, int c, int h, int w, uint8_t *out);
bool xc_image_to_chw_try(const Image *img, int c, int h, int w, uint8_t *out); // false: no memory
void xc_resize_hwc(const uint8_t *in, int iw, int ih, int c, uint8_t *out, int ow, int oh);
bool xc_is_image_name(const char *name); // .jpg .jpeg .png (any case)

//
// args.c (args.h): the command line, parsed as every xentcc tool parses it
//

// The model's executable name without the -train / -eval suffix.
char *xc_model_stem(const char *argv0, const char *suffix);
// --version: "NAME-train: model M, built by xentcc VERSION".
void xc_print_version(const XcModel *m);

//
// data.c: data sets in memory as bytes, splits, batches, augmentation
//

typedef enum { XC_SPLIT_ALL, XC_SPLIT_TRAIN, XC_SPLIT_VAL } XcSplit;

typedef struct {
  const char *path; // file or directory
  bool train;       // which files of a CIFAR/IDX directory
  XcSplit split;    // for folders: the val_split part or the rest
  float val_split;
  uint64_t split_seed;
  bool strict; // bad images are errors, not skipped
  bool quiet;
  bool cache;  // folders: keep the decoded bytes on disk (cache.c)
  int64_t max_image_pixels; // photos: PIL's limit (0: XC_MAX_IMAGE_PIXELS)
  int c, h, w; // the model's input
  bool convert; // tensor data of other channels is converted (RGB <-> grey), else an error
  bool resize;  // tensor data of another size is resized, else an error
  int nclasses;
  const char *const *class_names;
  const char *format_hint; // the YAML's data format, for messages
} DataSpec;

typedef struct {
  char *path;
  const char *format; // "cifar10", "idx", "folder", "imagefolder"
  int64_t n;
  int c, h, w;
  uint8_t *pixels; // n * c*h*w bytes, CHW per sample
  int32_t *labels; // n class indices
  char **files;    // per sample, folders only (NULL otherwise)
  int64_t nbad;    // skipped unreadable files
} Dataset;

Dataset *xc_load_dataset(const DataSpec *spec);
void xc_free_dataset(Dataset *d);
const char *xc_detect_format(const char *path); // NULL if it cannot tell

// The folder split rule: a folder data set holds out val_split of its files
// for validation when the YAML's test path does not exist.
bool xc_use_val_split(const XcModel *m);
DataSpec xc_data_spec(const XcModel *m, const char *path, bool train, bool strict, bool quiet);

// A folder's photos before decoding, in name order.
typedef struct {
  char **path; // full paths
  char **name; // as shown in messages and sorted: "cat.1.jpg" or "cat/0001.jpg"
  int32_t *label;
  int64_t n;
} FileList;

extern int64_t xc_files_decoded; // image files data.c has decoded (tests tell cache hits by it)

// cache.c, for data.c: the decoded bytes of a folder kept between runs. The
// key hashes everything decoding depends on: the folder, the model's input,
// the classes, the split, the pixel limit, and l's files (the view, after
// the split) with their names, labels and SHA-256 of their bytes.
void xc_cache_key(const DataSpec *s, const char *format, const FileList *l, uint8_t key[32]);
// Fills pixels (slot i: file i, c*h*w bytes), err (NULL: decoded, else why
// not) and source_pixels (the w*h each decoded file had) from a valid cache
// file; false, with err all NULL, otherwise.
bool xc_cache_load(const DataSpec *s, const char *format, const uint8_t key[32], const FileList *l,
                   uint8_t *pixels, char **err, int64_t *source_pixels);
// Writes the cache file, or warns once and goes on without it.
void xc_cache_save(const DataSpec *s, const char *format, const uint8_t key[32], const FileList *l,
                   const uint8_t *pixels, char *const *err, const int64_t *source_pixels);

typedef struct {
  float mean[4], std[4];
  int crop_padding; // random_crop(padding); 0: off
  bool flip;        // random_horizontal_flip(p=0.5)
  // table[c][u]: ToTensor + Normalize of byte u in channel c (channels past
  // the fourth use the first's), filled from mean and std by
  // xc_transform_tables.
  float table[4][256];
} Transform;

// ToTensor (x / 255 in float) then Normalize ((x - mean) / std) of one
// byte: the data loader's tables and the C library's predict_rgb8 both.
static inline float xc_to_tensor(uint8_t u, float mean, float std) {
  return ((float)u / 255.0f - mean) / std;
}
// Fills t->table from t->mean and t->std; xc_model_transform calls it.
void xc_transform_tables(Transform *t);
// ToTensor + Normalize of one CHW byte image into floats, after the
// training augmentation when rng is non-NULL. dst NULL: only the draws.
void xc_transform(const Transform *t, const uint8_t *src, int c, int h, int w, float *dst,
                  XcRng *rng);
// Fills images [b, c, h, w] and labels (int32 indices, or floats 0/1 when
// float_labels) with samples order[0..b) of d.
void xc_make_batch(const Dataset *d, const int32_t *order, int b, const Transform *t, XcRng *aug,
                   float *images, void *labels, bool float_labels);

//
// loader.c: the training batch stream, made one batch ahead on a thread
//

typedef struct Loader Loader;

typedef struct {
  float *images; // [batch, c, h, w]
  void *labels;  // batch int32 or float
  int epoch;     // from 0
  int iter;      // within the epoch, from 0
  int rows;      // real samples; the rest (a partial last batch) is padding
} Batch;

// Epochs [first_epoch, end_epoch) of d: n / batch full batches each, and
// unless drop_last a last one of n % batch samples padded to batch.
Loader *loader_start(const Dataset *d, const Transform *t, int batch, bool shuffle, bool drop_last,
                     uint64_t seed, int first_epoch, int end_epoch, bool float_labels,
                     bool threaded);
// Rank `rank` of `nranks` (distributed.c): steps of a global batch of
// nranks x batch samples, of which this rank takes rows [rank x batch,
// (rank + 1) x batch), fewer or none in a partial last one; the order and
// the augmentation draws are those of one process with the global batch.
Loader *loader_start_shard(const Dataset *d, const Transform *t, int batch, int rank, int nranks,
                           bool shuffle, bool drop_last, uint64_t seed, int first_epoch,
                           int end_epoch, bool float_labels, bool threaded);
int loader_steps_per_epoch(const Loader *l);
double loader_wait_seconds(const Loader *l); // the training loop's time waiting for batches
bool loader_next(Loader *l, Batch *b); // false after the last batch
void loader_release(Loader *l);        // done with the batch loader_next gave
void loader_free(Loader *l);

//
// metrics.c: confusion matrices and their summaries
//

typedef struct {
  int k;      // classes
  int64_t *m; // k*k, row = true class, column = predicted
  int64_t total;
} Confusion;

void conf_init(Confusion *c, int k);
void conf_add(Confusion *c, int truth, int pred);
void conf_free(Confusion *c);
double conf_accuracy(const Confusion *c);
double conf_class_accuracy(const Confusion *c, int cls); // recall of the class; NAN if empty
// One row of sklearn's classification_report (zero_division=0).
typedef struct {
  double precision, recall, f1;
  int64_t support; // samples of the class
} ClassScore;
ClassScore conf_class_score(const Confusion *c, int cls);
// Macro (mean over all k classes) and support-weighted averages.
void conf_averages(const Confusion *c, ClassScore *macro, ClassScore *weighted);
// Binary metrics with class 1 as the positive class; 0 where undefined
// (sklearn's zero_division=0).
void conf_binary(const Confusion *c, double *precision, double *recall, double *f1);
void conf_print(FILE *f, const Confusion *c, const char *const *names);
void conf_print_report(FILE *f, const Confusion *c, const char *const *names);
// The loss of the YAML's criterion over many samples, as PyTorch computes
// criterion(logits, labels) of all of them at once (mean reduction), plus
// the l2 terms of the parameters; NAN when the model does not describe it.
typedef struct {
  double nll;    // sum of w[y] * -log p[y] (cross-entropy) or of the BCE terms
  double smooth; // cross-entropy: sum of sum_c w[c] * -log p[c], for label smoothing
  double weight; // sum of w[y] (1 per sample without class weights)
  int64_t samples;
} LossSum;
void loss_add(const XcModel *m, LossSum *s, const float *logits, int label);
double loss_value(const XcModel *m, const LossSum *s, const float *params);
// What an evaluation measures.
typedef struct {
  Confusion conf;
  double loss;           // loss_value of every sample
  int top_k;             // 0: not measured
  double top_k_accuracy; // share of samples whose label is among the top_k logits
} EvalResult;
void eval_print_json(FILE *f, const EvalResult *r, const char *const *names, bool binary,
                     double threshold);
// The shortest %.Ng text that reads back as exactly v (buf: 32 bytes).
const char *xc_shortest(double v, char buf[32]);
void xc_json_number(FILE *f, double v); // xc_shortest, or null for NaN and infinities
// Index of the largest logit (the first on ties, like torch.max).
int xc_argmax(const float *v, int n);
// Is label among the k largest of n logits (ties ranked by index)?
bool xc_in_top_k(const float *logits, int n, int label, int k);
void xc_softmax(const float *logits, int n, double *out);
double xc_sigmoid(double x);
//
// evaluate.c: a whole data set through the forward function
//
typedef void (*XcForwardFn)(const float *params, const float *state, const float *images,
                            float *logits, void *workspace);
// The predicted class of one sample's logits.
int xc_predict(const XcModel *m, const float *logits, double threshold);
// The forward function's logits, averaged with the mirror images' when the
// YAML asks for data.test_augment (images mirrored in place; spare holds
// batch_size * outputs floats, NULL without it).
void xc_forward_eval(const XcModel *m, XcForwardFn forward, const float *params,
                     const float *state, float *images, float *logits, float *spare,
                     void *workspace);
// top_k: 0, or the k of the top-k accuracy to measure.
void xc_evaluate(const XcModel *m, XcForwardFn forward, const float *params, const float *state,
                 const Dataset *d, const Transform *t, void *workspace, double threshold,
                 int top_k, EvalResult *r);
// Normalize from the YAML, plus the augmentation when train.
Transform xc_model_transform(const XcModel *m, bool train);
//
// history.c: per-epoch metrics as CSV and an SVG plot of the curves
//

typedef struct {
  double epoch;        // from 1; a run that --steps stopped mid-epoch: epochs done (2.5)
  int64_t step;        // optimizer steps at its end
  double train_loss;   // the steps' losses averaged over the epoch's samples (as Keras)
  double train_acc;    // of the training forward's logits; NAN without them
  double val_loss;     // the evaluation after it; NAN without one
  double val_acc;
  double lr;           // the learning rate of its last step
  double images_per_s; // training alone: no evaluation, no checkpoints
  double seconds;      // training time since the run began, across --resume
} EpochRecord;
// Replaces both files whole; val_name labels the validation curves.
void xc_write_history(const char *csv_path, const char *svg_path, const char *model,
                      const char *val_name, const EpochRecord *r, int n);
// The rows as the checkpoint keeps them: the columns up to lr, exactly
// (the timings are not deterministic and stay in the CSV).
char *xc_history_encode(const EpochRecord *r, int n);
// Back from xc_history_encode: epochs 1..n; false and *err when malformed.
bool xc_history_decode(const char *s, EpochRecord **r, int *n, char **err);
// Fills the timing columns of r from the CSV an earlier run wrote, for the
// rows of the same epoch and step; the others stay as they are.
void xc_history_restore_times(const char *csv_path, EpochRecord *r, int n);
#endif

// xentcc's core data: source locations and diagnostics, tensor types, the
// graph IR, and the entry points of every stage. One header, one banner per
// source file, in the order data flows: YAML -> graph IR -> passes -> loops ->
// LLVM IR -> executables.
#ifndef XENTCC_IR_H
#define XENTCC_IR_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdnoreturn.h>

// XC_ASAN: defined in the sanitizer build (GCC and clang say so differently).
#if defined(__SANITIZE_ADDRESS__)
#define XC_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define XC_ASAN 1
#endif
#endif

//
// diag.c: source files, errors with file:line:col, the source line and a caret
//

typedef struct {
  const char *file; // NULL: no position known
  int line;         // 1-based
  int col;          // 1-based
} Loc;

void src_register(const char *path, const char *text); // lets diagnostics quote lines
char *read_file(const char *path, const char *what);   // NUL-terminated; dies with a hint on failure
// Writes len bytes to path whole or not at all (a temporary beside it,
// renamed into place), or to standard output when path is "-".
void write_file(const char *path, const char *data, size_t len);
noreturn void error_at(Loc loc, const char *hint, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void warn_at(Loc loc, const char *hint, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
noreturn void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
noreturn void internal_error(const char *file, int line, const char *msg);
// For fuzzers (tests/fuzz/): hook runs instead of exit(1) after a user error
// and must not return (it longjmps); diag_reset forgets the sources
// registered so far, before the fuzzer frees one input's memory.
void diag_set_exit_hook(void (*hook)(void));
void diag_reset(void);
#define unreachable() internal_error(__FILE__, __LINE__, "unreachable")
#define ir_assert(c) ((c) ? (void)0 : internal_error(__FILE__, __LINE__, #c))

void *xcalloc(size_t n, size_t size); // never returns NULL
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xformat(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

//
// ir.c: types, the op table, nodes and graphs
//

// DT_F64 appears only in the loop IR: the double accumulators of long sums.
// DT_BF16 and DT_F16 are mixed precision's storage types (the autocast pass
// decides where): a value of one is a float rounded to nearest even to that
// many bits; ops compute in f32 (or wider) and round once when they store.
typedef enum { DT_F32, DT_I32, DT_F64, DT_BF16, DT_F16 } DType;

static inline bool dtype_is_float(DType dt) { return dt != DT_I32; }
static inline bool dtype_is_16bit(DType dt) { return dt == DT_BF16 || dt == DT_F16; }
const char *dtype_name(DType dt); // "f32", "bf16", ...
int dtype_bytes(DType dt);
// x rounded to nearest even to dt's precision (f32 and f64: unchanged; a
// NaN stays a NaN), as PyTorch's c10::BFloat16 and IEEE half round.
float round_to_dtype(float x, DType dt);

enum { MAX_RANK = 4, MAX_ATTRS = 6 };

typedef struct {
  DType dtype;
  int rank;               // 0 is a scalar
  int64_t dim[MAX_RANK];  // PyTorch order: NCHW, OIHW, [out, in]
} Type;

enum { OPF_SOURCE = 1, OPF_SIDE_EFFECT = 2, OPF_ELEMENTWISE = 4, OPF_OPTIMIZER = 8 };

// Rows the losses ignore (neither summed nor counted in the mean): a class
// label equal to PyTorch's default ignore_index, or a negative BCE target.
// The runtime pads a partial last batch with them (runtime/xentcc_rt.h).
enum { XC_IGNORE_INDEX = -100 };
static inline bool bce_ignored(float target) { return target < 0.0f; }

typedef enum {
#define OP(id, min, max, flags, schema) OP_##id,
#include "ops.def"
#undef OP
  OP_COUNT
} OpKind;

typedef struct {
  const char *name;
  int min_in, max_in;
  int flags;
  const char *schema;                  // "stride:I padding:I", see ops.def
  int nattrs;                          // parsed from schema on first use
  const char *attr_name[MAX_ATTRS];
  char attr_kind[MAX_ATTRS];           // i f s I F
} OpInfo;

const OpInfo *op_info(OpKind op);
int op_lookup(const char *name);                // OpKind or -1
int op_attr_index(OpKind op, const char *name); // -1 if the op has no such attribute

typedef struct {
  char kind;        // i f s I F ('\0' until set)
  int64_t i;        // kind 'i'
  double f;         // kind 'f'
  char *s;          // kind 's'
  int n;            // kinds 'I' and 'F': element count
  int64_t *ints;    // kind 'I'
  double *floats;   // kind 'F'
} Attr;

typedef struct Node Node;
struct Node {
  OpKind op;
  int id;              // index in its graph's node array (graph_renumber)
  char *name;          // SSA name without '%'; NULL prints as a number
  Type type;
  Node **in;           // operands, defined earlier in the graph
  int nin;
  Attr attr[MAX_ATTRS]; // indexed like op_info(op)->attr_name
  Loc loc;             // where in the YAML (or .xir) this node came from
  void *aux;           // scratch for the pass that is running
};

typedef struct {
  char *name;
  Attr attr;
} NamedAttr;

typedef struct {
  char *name;         // the model's name
  Node **node;        // topological order
  int nnodes, cap;
  Node **ret;         // returned values: loss for training, logits for eval
  int nret;
  NamedAttr *attr;    // graph attributes: optimizer and schedule settings
  int nattrs;
} Graph;

int64_t type_numel(const Type *t);
bool type_eq(const Type *a, const Type *b);
char *type_str(const Type *t); // "f32[32,3,32,32]", fresh string
Type type_make(DType dt, int rank, const int64_t *dim);

Graph *graph_new(const char *name);
Node *node_new(Graph *g, OpKind op, Node **in, int nin, Loc loc); // appended at the end
Node *graph_find(Graph *g, const char *name);                   // by SSA name, or NULL
void graph_renumber(Graph *g);
void graph_toposort(Graph *g);                 // stable; call after a pass appends out of order
void replace_all_uses(Graph *g, Node *from, Node *to);
int count_uses(Graph *g, Node *n);
void graph_return(Graph *g, Node *n);
// node_new with operands as arguments: node_build(g, OP_add, loc, 2, a, b).
Node *node_build(Graph *g, OpKind op, Loc loc, int nin, ...);
void graph_remove(Graph *g, Node *n);       // n must have no users left
bool remove_if_unused(Graph *g, Node *n);   // removes n (not a param/state/side effect) when unused
void copy_attrs(Node *to, const Node *from); // same-named attributes, e.g. stride and padding

// Dropout is mul(x, mask): a mask per element (dropout) or per channel
// (dropout2d); passes that look through dropout know both.
static inline bool is_dropout_mask(const Node *n) {
  return n->op == OP_dropout_mask || n->op == OP_dropout2d_mask;
}

// The optimizer's part of a training graph: its update ops and the assigns
// that store their results (batch-norm statistics are the forward pass's).
// codegen runs them in xc_apply_step; --emit=dot draws them in its cluster.
static inline bool is_update(const Node *n) {
  while (n->op == OP_assign)
    n = n->in[1];
  return op_info(n->op)->flags & OPF_OPTIMIZER;
}

void node_set_int(Node *n, const char *attr, int64_t v);
void node_set_float(Node *n, const char *attr, double v);
void node_set_str(Node *n, const char *attr, const char *v);
void node_set_ints(Node *n, const char *attr, const int64_t *v, int count);
void node_set_floats(Node *n, const char *attr, const double *v, int count);
const Attr *node_attr(const Node *n, const char *attr); // dies if the op has no such attribute
int64_t node_int(const Node *n, const char *attr);
double node_float(const Node *n, const char *attr);
const char *node_str(const Node *n, const char *attr);
void node_fill_default_attrs(Node *n); // every unset attribute gets its kind's zero

void graph_set_attr(Graph *g, const char *name, Attr a);
const Attr *graph_attr(const Graph *g, const char *name); // or NULL
double graph_float(const Graph *g, const char *name, double dflt);
int64_t graph_int(const Graph *g, const char *name, int64_t dflt);
const char *graph_str(const Graph *g, const char *name, const char *dflt);
Attr attr_int(int64_t v);
Attr attr_float(double v);
Attr attr_str(const char *s);
Attr attr_ints(const int64_t *v, int n);
Attr attr_floats(const double *v, int n);

//
// shape.c: infer_type; each op's shape rule (PyTorch's formulas) is in ir/ops/
//

// Computes n's output type from its operands and attributes into *out.
// Ops whose result shape is not a function of their operands (input, param,
// state, const, reshape, conv2d_grad_input) check and return n->type as set
// by the builder. Returns NULL, or a message saying what does not fit.
const char *infer_type(const Node *n, Type *out);
// Builder helper: infer_type, store the result, die at n->loc on error.
void node_infer(Node *n);

//
// print.c / parse.c: the textual IR; print(parse(print(g))) == print(g)
//

void print_graph(FILE *out, Graph *g);
char *format_float(double v); // shortest text that reads back exactly; always has '.', 'e', or is inf/nan
Graph *parse_graph(const char *path, const char *text);
void print_dot(FILE *out, Graph *g); // dot.c: a Graphviz digraph of g

//
// verify.c
//

// Checks operand counts, attribute kinds, definition before use, unique
// names, shape rules and the dtypes of labels and indices. Dies at the
// offending node's location with a message naming it.
void verify_graph(Graph *g);

//
// eval.c: the reference evaluator -- naive, obviously correct C over the
// graph IR, used by tests (finite differences, pass differential tests, and
// as the oracle for generated code). Never used to train.
//

typedef struct {
  Type type;
  float *f;     // dtype f32
  int32_t *i;   // dtype i32
} Tensor;

Tensor tensor_new(Type t); // zero-filled
// Evaluates every node of g in order. `sources` is indexed by node id and
// must hold a value for each input/param/state node; the result, also indexed
// by node id, holds every node's value (an assign's value is its new target
// value). Nothing in `sources` is modified.
Tensor *eval_graph(Graph *g, const Tensor *sources);

//
// frontend/: YAML model files
//

typedef struct {
  char *format;         // cifar10 | idx | folder | imagefolder
  char *train;          // path (relative to the YAML file's directory or absolute)
  char *test;
  double val_split;     // 0: none
  double mean[4], std[4];
  int random_crop_padding; // 0: off
  bool random_flip;
  bool test_flip;       // evaluation averages the logits of each image and its mirror
  bool convert;         // tensor data (CIFAR, IDX) of other channels: convert (RGB <-> grey)
  bool resize;          // tensor data of another size: resize (PIL bilinear)
} DataSpec;

typedef struct {
  char *path;           // the YAML file
  char *name;           // model name
  int channels, height, width;
  char **classes;
  int nclasses;
  int epochs, batch_size, seed;
  bool shuffle, drop_last;
  int log_every;        // iterations between loss lines (100 like the seed)
  DataSpec data;
  char **counters;      // int64 buffers the runtime keeps: NAME.num_batches_tracked per batch norm
  int ncounters;
  Graph *graph;         // forward graph with loss, as written (unfused)
} Model;

Model *load_model(const char *path); // dies with file:line:col on any error
Model *load_model_text(const char *path, const char *text); // the same, text already read
// Every option the model file format accepts (`layers.conv2d.kernel`,
// `schedule.cosine`, `data.format=idx`), one per line, sorted; and those the
// models loaded so far used.
void print_schema(FILE *out);
void print_used_options(FILE *out);
// Starts the list of used options again without freeing it: for the fuzzer,
// whose driver frees what each input allocated.
void forget_used_options(void);

//
// passes/: one file per pass, one entry point each
//

struct LProgram; // the loop IR (loop.h)

// A pass runs on the graph (run) or, after `lower`, on the loop IR (run_loops).
typedef struct {
  const char *name;
  void (*run)(Graph *g);
  void (*run_loops)(struct LProgram *p);
  const char *help;
} Pass;

const Pass *pass_find(const char *name); // NULL if unknown

void pass_lint_losses(Graph *g);     // lint_losses.c
void pass_fuse_softmax_ce(Graph *g); // fuse_softmax_ce.c
void pass_fuse_sigmoid_bce(Graph *g);// fuse_sigmoid_bce.c
void pass_autocast(Graph *g);        // autocast.c
void pass_autodiff(Graph *g);        // autodiff.c
void pass_optimizer(Graph *g);       // optimizer.c
void pass_constant_fold(Graph *g);   // constant_fold.c
void pass_cse(Graph *g);             // cse.c
void pass_dce(Graph *g);             // dce.c
void pass_eval_mode(Graph *g);       // eval_mode.c
const Pass *pass_list(int *count);

typedef struct {
  const char *print_after;  // pass name, "all", or NULL
  const char **disabled;    // --disable-pass=NAME
  int ndisabled;
  FILE *dump;               // where --print-after output goes (stderr)
} PipelineOptions;

// Runs the named passes in order, verifying after each.
void run_pipeline(Graph *g, const char *const *names, int count, const PipelineOptions *opt);
// The same for loop passes, on the lowered program.
void run_loop_pipeline(struct LProgram *p, const char *const *names, int count,
                       const PipelineOptions *opt);
// The loop passes of -O`level`, in order, ending with the memory plan.
const char *const *loop_pipeline(int level, int *count);

// Loop passes (passes/loop_*.c).
void pass_fuse_epilogue(struct LProgram *p); // loop_fuse_epilogue.c
void pass_pad(struct LProgram *p);           // loop_pad.c
void pass_phases(struct LProgram *p);        // loop_phases.c
void pass_tile(struct LProgram *p);          // loop_tile.c
void pass_inline(struct LProgram *p);        // loop_inline.c
void pass_vectorize(struct LProgram *p);     // loop_vectorize.c
void pass_fuse_loops(struct LProgram *p);    // loop_fuse_loops.c
void pass_channel_block(struct LProgram *p); // loop_channel_block.c
void pass_parallelize(struct LProgram *p);   // loop_parallelize.c
void pass_in_place(struct LProgram *p);      // loop_in_place.c
void pass_prefetch(struct LProgram *p);      // loop_prefetch.c
void pass_plan_memory(struct LProgram *p);   // loop_plan_memory.c

//
// codegen/: lowering to loops and buffers, LLVM IR through the C API, objects,
// and linking with the runtime (runtime/xentcc_rt.h is the contract)
//

typedef struct {
  const char *output;   // -o NAME: NAME-train and NAME-eval; "-": standard output (llvm, asm)
  const char *emit;     // NULL: executables; "llvm", "asm" or "obj": that form only
  int opt_level;        // -O0..-O3 (default 3)
  const char *cpu;      // -mcpu=; "native" by default
} CodegenOptions;

// The loop passes' target (vector lanes, accumulators) for opt->cpu.
const struct LTarget *loop_target(const CodegenOptions *opt);

// p: the scheduled loop program of train (the training-step graph; its
// functions xc_grad_step, xc_apply_step) and eval (the forward graph:
// xc_forward); either graph may be NULL to build only the other executable.
void codegen(Model *m, struct LProgram *p, Graph *train, Graph *eval, const CodegenOptions *opt);
// --emit=lib (codegen/library.c): eval, the evaluation graph after its
// passes, as opt->output's DIR/NAME.h and DIR/libNAME.a; weights: a
// safetensors file to compile in (NAME_load_embedded), or NULL.
void codegen_library(Model *m, Graph *eval, const PipelineOptions *po, const CodegenOptions *opt,
                     const char *weights);
// For tests: compiles g alone into an object defining `void FN(void **slots)`,
// where slots[i] points at node i's value (sources read, every other node
// written; an assign writes its value into its own slot), through the loop
// passes of opt->opt_level.
void codegen_function_object(Graph *g, const char *fn, const char *obj_path,
                             const CodegenOptions *opt);
// --time: time_start(on) starts the clock; time_phase(NAME) ends phase NAME,
// begun where the previous one ended; time_report prints the table to stderr.
void time_start(bool on);
void time_phase(const char *name);
void time_report(void);

#endif

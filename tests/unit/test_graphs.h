// Building small graphs with their source values, for the unit tests that
// run graphs (test_eval.c, test_codegen.c). Include once per test program,
// after defining TEST_RNG_SEED: each program keeps its own random inputs.
#ifndef XENTCC_TEST_GRAPHS_H
#define XENTCC_TEST_GRAPHS_H

#include "ir.h"

static const Loc no_loc = {0};

enum { MAX_NODES = 1024 };

typedef struct {
  Graph *g;
  Tensor src[MAX_NODES]; // values of the source nodes, by node id
} Net;

static Net *net_new(void) {
  Net *t = xcalloc(1, sizeof *t);
  t->g = graph_new("test");
  return t;
}

static Node *source(Net *t, OpKind op, const char *name, DType dt, int rank, const int64_t *dim) {
  Node *n = node_new(t->g, op, NULL, 0, no_loc);
  ir_assert(n->id < MAX_NODES);
  n->name = xstrdup(name);
  n->type = type_make(dt, rank, dim);
  node_fill_default_attrs(n);
  t->src[n->id] = tensor_new(n->type);
  return n;
}

#define DIMS(...) (sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), ((int64_t[]){__VA_ARGS__})
#define F32(t, name, ...) source(t, OP_input, name, DT_F32, DIMS(__VA_ARGS__))
#define I32(t, name, ...) source(t, OP_input, name, DT_I32, DIMS(__VA_ARGS__))
#define SCALAR(t, name) source(t, OP_input, name, DT_F32, 0, NULL)
#define STEP(t, name) source(t, OP_input, name, DT_I32, 0, NULL)

// An op node with operands `...`; attributes are set by the caller before done().
#define OPN(t, op, ...)                                                                            \
  node_new((t)->g, OP_##op, (Node *[]){__VA_ARGS__},                                               \
           sizeof((Node *[]){__VA_ARGS__}) / sizeof(Node *), no_loc)

// Unset attributes get their zero, then the shape rule runs.
static Node *done(Node *n) {
  node_fill_default_attrs(n);
  node_infer(n);
  return n;
}

static void set_pair(Node *n, const char *attr, int64_t a, int64_t b) {
  node_set_ints(n, attr, (int64_t[]){a, b}, 2);
}

static int64_t count(Node *n) { return type_numel(&n->type); }

// A fixed-seed xorshift generator, so failures reproduce.
static uint64_t rng_state = TEST_RNG_SEED;

static double uniform(double lo, double hi) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return lo + (hi - lo) * (double)(rng_state >> 11) / 9007199254740992.0;
}

static void fill(Net *t, Node *n, double lo, double hi) {
  for (int64_t i = 0; i < count(n); i++)
    t->src[n->id].f[i] = (float)uniform(lo, hi);
}

#endif

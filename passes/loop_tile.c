// tile: register blocking for contractions -- the conv2d, linear and
// gradient kernels whose plain nest is
//     for s...:  out[s] = init(s);  for r...: out[s] = fma(A(s, r), B(s, r), out[s])
// (and, after fuse-epilogue, an elementwise nest over out, in place or
// into a 16-bit buffer of out's shape). The
// nest is rebuilt around a tile of accumulators held in registers: one
// loop of the output is the vector (lanes), up to two others are unrolled
// (unroll-and-jam), the accumulators start at init, take every reduction
// step in the plain nest's order, and are stored once, epilogue applied.
//
// The vector is the output's last dimension when both operands move by 0
// or 1 element along it ("spatial": conv2d rows, linear outputs, a weight
// gradient's kernel row), with an operand transposed first when that makes
// it move by 1 (linear's weight); otherwise the innermost reduction loop
// ("rfactor": each of a vector's lanes sums every 8th term on AVX2, 16th
// on AVX-512, the lanes added in order at the end). Another output
// dimension replaces that first choice when its tile keeps more of the FMA
// units' lanes busy by more than its transposed copies cost
// (fuller_vector: odd widths, 1x1 weight gradients). The other two tile
// loops and their sizes are chosen from the constant shapes and the target:
// at most its accumulators (12 of AVX2's 16 registers, 16 of AVX-512's 32;
// a short row's parts, 8 + 4 + 2 + 1 lanes, each a register: fits) and
// the fewest loads per multiply-add, or, when a tile's sum streams more
// than L1 holds, the fewest bytes from L2 (a shorter vector, more unrolled)
// -- but for a weight gradient's sum blocked by images, whose slabs stay in
// L1. A step's multiply-adds go in the order that keeps the fewest operand
// values live (step_order), so that 12 accumulators and their operands fit
// AVX2's 16 registers without a spill. The tile loops nest so that the
// operand that would otherwise cross L2 most often stays in it. A sum that
// streams more than L1 holds (a weight gradient's, over every image) is
// blocked by its outermost loop: each
// block adds to every tile in turn, the accumulators kept in memory
// between blocks (block_sum), by output element. A tile is scored over its
// whole loops (edge_weighted): the smaller last tiles where a size does not
// divide count by their share of the outputs. Edges take their own tiles,
// never branches in the reduction: a short last vector, a last block with
// fewer rows, which may take another size along the other unrolled
// dimension (Tile.edge; split_edge). A tap loop whose unrolling would carry
// more values than the registers hold stays rolled (stays_rolled). The
// one branch in a reduction skips the steps that read only a border of
// zeros (steps_run), when every output of the tile reads the border there
// (the index the same across the tile, or spanned by it from end to end);
// a transposed copy of a padded operand keeps its border (pad_lo, pad_n).
#include "loop.h"

#include <stdlib.h>
#include <string.h>

// The target (LTarget) sizes the vectors and the accumulators; the shortest
// output dimension taken as the vector is 8 on every target.
enum { MIN_VECTOR = 8, MAX_PIECES = 4, MAX_SPATIAL = LMAX_RANK };

// The L2 cache per core the loop order assumes: AVX2 machines have 256 KB
// (Intel's clients) to 1 MB (Zen 4); 512 KB is Zen 2 and 3's.
#define L2_BYTES ((int64_t)512 << 10)
// L1 data cache: 32 KB on every AVX2 machine but Zen 4 and 5 (48). The
// bytes L2 refills L1 with for each multiply-add slot (two a cycle): about
// 16 bytes a cycle, sustained, where 64 is the peak of a line a cycle.
#define L1_BYTES ((int64_t)32 << 10)
#define L2_BYTES_PER_FMA 8.0

typedef struct {
  int var;
  int64_t n;
  const char *role;
} Dim;

typedef struct {
  LKernel *k;
  LBuf *out;
  Dim s[MAX_SPATIAL]; // spatial loops, outermost first (= out's dimensions)
  int ns;
  Dim r[8];           // reduction loops, outermost first
  int nr;
  LExpr *init;        // out's first value, from s
  LExpr *a, *b;       // the multiplied operands, from s and r
  LExpr *epi;         // the epilogue of the out element `x` (a load of out at s), or NULL
  LBuf *epi_out;      // where the epilogue stores: out, or a 16-bit buffer of its shape
  int lanes;          // a vector register's floats (the target's)
  int max_acc;        // accumulators a tile may hold (the target's)
  int registers;      // the target's vector registers
} Contraction;

// Is spatial dimension d the batch (the images)?
static bool is_batch(const Contraction *c, int d) {
  return c->s[d].role && !strcmp(c->s[d].role, "n");
}

// --- Recognising a plain contraction --------------------------------------------------

static bool is_var(const LExpr *e, int var) { return e->kind == LX_VAR && e->var == var; }

// out[s...] exactly: dimension d indexed by the d-th spatial variable.
static bool at_s(const Contraction *c, LExpr *const *idx) {
  for (int d = 0; d < c->out->rank; d++)
    if (!is_var(idx[d], c->s[d].var))
      return false;
  return true;
}

static bool is_out_load(const Contraction *c, const LExpr *e) {
  return e->kind == LX_LOAD && e->buf == c->out && at_s(c, e->idx);
}

// The epilogue nest: a perfect nest over out storing out[v] = f(out[v]),
// or into a buffer of out's shape and another precision (the rounding of
// f32 sums to a 16-bit result); f is returned with v turned into the
// spatial variables.
static LExpr *epilogue(Contraction *c, const LStmt *l) {
  int vars[LMAX_RANK], depth = 0;
  while (l->kind == LS_LOOP && l->nbody == 1 && depth < LMAX_RANK) {
    vars[depth] = l->var;
    if (l->lo != 0 || l->hi != c->out->dim[depth] || l->flags)
      return NULL;
    depth++;
    l = l->body[0];
  }
  if (l->kind != LS_STORE || depth != c->out->rank)
    return NULL;
  if (l->buf != c->out && (l->buf->dtype == c->out->dtype || l->buf->rank != c->out->rank))
    return NULL;
  for (int d = 0; d < depth; d++)
    if (!is_var(l->idx[d], vars[d]) || l->buf->dim[d] != c->out->dim[d])
      return NULL;
  c->epi_out = l->buf;
  LExpr *f = lx_copy(l->value);
  for (int d = 0; d < depth; d++)
    f = lx_subst(f, vars[d], lx_var(c->s[d].var));
  return f;
}

static bool recognise(LKernel *k, Contraction *c) {
  *c = (Contraction){.k = k};
  if (!k->node || !k->flops || k->nbody < 1 || k->body[0]->kind != LS_LOOP)
    return false;
  // Spatial loops: a perfect nest down to [init store, reduction loop].
  const LStmt *l = k->body[0];
  for (;;) {
    if (l->kind != LS_LOOP || l->flags || l->lo != 0 || c->ns == MAX_SPATIAL)
      return false;
    c->s[c->ns++] = (Dim){l->var, l->hi, l->role};
    if (l->nbody == 2)
      break;
    if (l->nbody != 1)
      return false;
    l = l->body[0];
  }
  const LStmt *init = l->body[0], *red = l->body[1];
  if (init->kind != LS_STORE || red->kind != LS_LOOP || !(red->flags & LF_REDUCE))
    return false;
  c->out = init->buf;
  if (c->out->rank != c->ns || !at_s(c, init->idx) || c->out->storage == LB_LOCAL)
    return false;
  c->init = init->value;
  while (red->kind == LS_LOOP) {
    if (!(red->flags & LF_REDUCE) || red->lo != 0 || red->nbody != 1 || c->nr == 8)
      return false;
    c->r[c->nr++] = (Dim){red->var, red->hi, red->role};
    red = red->body[0];
  }
  if (red->kind != LS_STORE || red->buf != c->out || !at_s(c, red->idx))
    return false;
  const LExpr *v = red->value;
  if (v->kind != LX_FMA || !is_out_load(c, v->c) || v->a->kind != LX_LOAD || v->b->kind != LX_LOAD)
    return false;
  c->a = v->a, c->b = v->b;
  // The operands read no other element of out.
  if (c->a->buf == c->out || c->b->buf == c->out)
    return false;
  // An epilogue nest after the main nest (fuse-epilogue's relu).
  if (k->nbody > 2)
    return false;
  if (k->nbody == 2 && !(c->epi = epilogue(c, k->body[1])))
    return false;
  return true;
}

// --- Strides ------------------------------------------------------------------------------

static int64_t stride(const LBuf *b, int d) {
  int64_t s = 1;
  for (int e = d + 1; e < b->rank; e++)
    s *= b->dim[e];
  return s;
}

// How load e moves in memory when var steps by one, or -1 if it is not
// linear in var (the rest of an index may be anything without var).
static int64_t lane_stride(const LExpr *e, int var) {
  int64_t total = 0;
  for (int d = 0; d < e->buf->rank; d++) {
    int64_t c;
    if (!lx_linear(e->idx[d], var, &c))
      return -1;
    total += c * stride(e->buf, d);
  }
  return total;
}

static bool uses(const LExpr *e, int var) { return lx_uses_var(e, var); }

// How far load e moves when var steps by one, in elements, whatever the
// direction; a load not linear in var moves "far" (INT64_MAX).
static int64_t distance(const LExpr *e, int var) {
  int64_t total = 0;
  for (int d = 0; d < e->buf->rank; d++) {
    int64_t c;
    if (!lx_linear(e->idx[d], var, &c))
      return INT64_MAX;
    total += c * stride(e->buf, d);
  }
  return total < 0 ? -total : total;
}

// --- Transposing an operand so that the vector reads it contiguously -------------------------

// The dimension of load e that `var` moves (with coefficient 1), alone, or -1.
static int moving_dim(const LExpr *e, int var) {
  int found = -1;
  for (int d = 0; d < e->buf->rank; d++) {
    if (!uses(e->idx[d], var))
      continue;
    Affine a;
    if (found >= 0 || !lx_affine(e->idx[d], &a) || affine_coef(&a, var) != 1)
      return -1;
    found = d;
  }
  return found;
}

// A kernel before k copying e's buffer with dimension d moved last; e then
// reads the copy. Done once per buffer and dimension in a function.
static void transpose_operand(LFunc *f, int at, LExpr *e, int d) {
  LBuf *from = e->buf;
  int64_t dim[LMAX_RANK];
  int perm[LMAX_RANK], n = 0;
  for (int i = 0; i < from->rank; i++)
    if (i != d)
      perm[n++] = i;
  perm[n++] = d;
  for (int i = 0; i < from->rank; i++)
    dim[i] = from->dim[perm[i]];
  const char *name = xformat("%s.t%d", from->name, d);
  LBuf *to = NULL;
  for (int i = 0; i < f->nbufs && !to; i++)
    if (!strcmp(f->bufs[i]->name, name))
      to = f->bufs[i];
  if (!to) {
    to = lfunc_buf(f, name, from->dtype, from->rank, dim, LB_WORKSPACE);
    to->layout = xformat("transposed, dimension %d last", d);
    to->pad_of = from->pad_of; // its border of zeros, moved as the dimensions
    for (int i = 0; i < from->rank; i++)
      to->pad_lo[i] = from->pad_lo[perm[i]], to->pad_n[i] = from->pad_n[perm[i]];
    LKernel *k = lfunc_kernel(f, xformat("transpose.%s", from->name), "transpose", NULL);
    k->layer = from->name;
    // In the copy's order: each thread writes whole lines of it, and the
    // lines it reads across (as many as the moved dimension has) stay in L1.
    // In the original's order the two threads wrote alternate elements of
    // the copy's lines (0.12 ms for resnet8's 1.6 MB copies of dy).
    LExpr *v[LMAX_RANK], *src[LMAX_RANK];
    LStmt *in = lk_nest(k, NULL, to->rank, to->dim, NULL, v);
    for (int i = 0; i < from->rank; i++)
      src[perm[i]] = v[i];
    ls_add(in, ls_store(to, v, lx_load(from, src)));
    for (int i = f->nkernels - 1; i > at; i--) // it runs just before the contraction
      f->kernels[i] = f->kernels[i - 1];
    f->kernels[at] = k;
  }
  LExpr *idx[LMAX_RANK];
  for (int i = 0; i < from->rank; i++)
    idx[i] = e->idx[perm[i]];
  e->buf = to;
  for (int i = 0; i < from->rank; i++)
    e->idx[i] = idx[i];
}

// --- Choosing the tile ------------------------------------------------------------------

typedef struct {
  bool rfactor;    // the vector runs along the innermost reduction loop
  int v;           // the vector's dimension: index into s (spatial) or r (rfactor)
  int64_t vblock;  // lanes per block of the vector dimension (spatial)
  int t[2];        // up to two unrolled spatial dimensions (index into s), -1 when none
  int64_t size[2]; // their tile sizes
  // Where t[edge] leaves a last, shorter block (rest), the tiles there take
  // edge_size along the other unrolled dimension instead of its size: a
  // last column of 4x4 images, 1 by 2 rows by 16 channels (4
  // accumulators), becomes 1 by 4 rows (8). edge < 0: none.
  int edge;
  int64_t edge_size;
  int order[MAX_SPATIAL]; // the spatial loops' nesting, outermost first (index into s)
} Tile;

// --- Taps that read only a border of zeros -----------------------------------------------

// An operand read from the pad pass's zero-bordered copy may take, for some
// tiles, only zeros on a step of the sum: the input gradient of a 7x7
// window without padding reads dy with a border of 6, and of its 19 output
// rows x 7 taps, 42 read a border row. When the operand's index along a
// dimension moves with one reduction loop and is the same for every lane
// of the tile, that loop's steps where it falls in the border for every
// output of the tile are skipped by a guard: they would add 0 * w. The
// index may be the same for the whole tile (a row index, the tile spanning
// columns or images) or move along one unrolled dimension of it (a column
// index, the tile spanning 3 columns: a step is skipped when all 3 read
// the border; the guard tests the tile's first and last). In paired runs
// on Zen 5 (medians of 9 to 15, two sessions' worth of noise): layer 33
// of bench/'s sweep (5x5 without padding) took its input gradient in 0.82
// to 0.93 of the time, 42's 0.89 to 0.97, cifar10's conv2 for AVX2 0.9 to
// 0.93; the seed nets' other kernels and the CNNs' are unchanged.
// (The plain lowering adds those terms; a weight of inf or NaN is then the
// one difference, which leaves the sum finite where the plain nest makes it
// NaN.) Guards go in only when they skip more than a tenth of the steps;
// the tile choice counts the steps left.
#define SKIP_WORTH 0.9

// Is load op's index along dimension d of its padded buffer moved by one
// reduction loop (*red), besides at most one spatial loop (*sp, or -1) --
// an unrolled dimension of the tile among them, whose *block consecutive
// values the tile spans (1 for any other)? The vector's loop may not move
// it: a vector's lanes are one operation.
static bool skippable(const Contraction *c, const Tile *t, const int64_t size[2], const LExpr *op,
                      int d, int *red, int *sp, int64_t *block) {
  Affine a;
  if (!op->buf->pad_of || op->buf->dim[d] == op->buf->pad_n[d] ||
      !lx_affine(op->idx[d], &a))
    return false;
  int vvar = t->rfactor ? c->r[t->v].var : c->s[t->v].var;
  *red = *sp = -1;
  *block = 1;
  for (int i = 0; i < a.n; i++) {
    int v = a.var[i], r = -1, s = -1;
    if (v == vvar)
      return false;
    for (int j = 0; j < c->nr; j++)
      r = c->r[j].var == v ? j : r;
    for (int j = 0; j < c->ns; j++)
      s = c->s[j].var == v ? j : s;
    if ((r >= 0 && *red >= 0) || (s >= 0 && *sp >= 0) || (r < 0 && s < 0))
      return false;
    *red = r >= 0 ? r : *red;
    *sp = s >= 0 ? s : *sp;
    for (int q = 0; q < 2; q++)
      if (s >= 0 && t->t[q] == s)
        *block = size[q];
  }
  return *red >= 0;
}

// The share of the sum's steps, by output, whose index along dimension d
// of op reaches inside the border for some output of the tile, over the
// loops it moves with: the spatial one over [from, to) in tiles of `block`
// (the last may be shorter).
static double inside_share(const Contraction *c, const LExpr *op, int d, int red, int sp,
                           int64_t from, int64_t to, int64_t block) {
  Affine a;
  lx_affine(op->idx[d], &a);
  int64_t lo = op->buf->pad_lo[d], hi = lo + op->buf->pad_n[d];
  int64_t nr = c->r[red].n, in = 0;
  int64_t cs = sp >= 0 ? affine_coef(&a, c->s[sp].var) : 0, cr = affine_coef(&a, c->r[red].var);
  for (int64_t i = from; i < to; i += block) {
    int64_t b = to - i < block ? to - i : block;
    for (int64_t j = 0; j < nr; j++) {
      int64_t x0 = a.c + cs * i + cr * j, x1 = x0 + cs * (b - 1);
      int64_t first = x0 < x1 ? x0 : x1, last = x0 < x1 ? x1 : x0;
      in += last >= lo && first < hi ? b : 0;
    }
  }
  return (double)in / (double)((to - from) * nr);
}

// The share of the sum's steps tile t runs: 1 unless guards skip more than
// a tenth.
static double steps_run(const Contraction *c, const Tile *t) {
  const LExpr *ops[2] = {c->a, c->b};
  double share = 1;
  for (int o = 0; o < 2; o++)
    for (int d = 0; d < ops[o]->buf->rank; d++) {
      int red, sp;
      int64_t block;
      if (skippable(c, t, t->size, ops[o], d, &red, &sp, &block))
        share *= inside_share(c, ops[o], d, red, sp, 0, sp >= 0 ? c->s[sp].n : 1, block);
    }
  return share > SKIP_WORTH ? 1 : share;
}

// What the tile choice counts: the steps run when guards skip more than
// RECHOOSE_BELOW of them. Fewer skipped steps do not pay for a tile whose
// loads reach further (images instead of columns: a line of dy per image
// and step, out of L1): layer 38 of bench/ (6x6, stride 2, its phases 14x14
// with a border of 1 to 2) skipped 23% on a tile over 12 images and ran
// 1.8x slower than on its tile over columns, unguarded; layer 42 (7x7
// without padding, dy with a border of 6) skips 53% on its tile over 6
// images, 32% on columns, and runs 1.9x faster on the first, 1.5x on the
// second.
#define RECHOOSE_BELOW 0.6

static double run_share(const Contraction *c, const Tile *t) {
  double share = steps_run(c, t);
  return share < RECHOOSE_BELOW ? share : 1;
}

// Vector operations a row of n lanes takes: whole vectors of `lanes`, then
// 8, 4, 2, 1.
static int64_t vector_ops(int64_t n, int lanes) {
  return n / lanes + __builtin_popcountll((unsigned long long)(n % lanes));
}

// The vector operations a tile's row along its vector takes (pieces_of):
// 15 lanes are 4 of them on AVX2 (8, 4, 2 and 1 lanes), each a register
// and, for an operand read along the vector, a load.
static int64_t vector_parts(const Contraction *c, const Tile *t) {
  return t->rfactor ? 1 : vector_ops(t->vblock, c->lanes);
}

// The registers a row of the tile would take in whole vectors: 15 lanes
// are 2 on AVX2 (the parts they run as are vector_parts).
static int64_t whole_vectors(const Contraction *c, const Tile *t) {
  return t->rfactor ? 1 : (t->vblock + c->lanes - 1) / c->lanes;
}

// The whole vectors' worth of work in a row of the tile: 15 lanes are
// 15/8 of a vector, whatever number of parts they take.
static double vector_work(const Contraction *c, const Tile *t) {
  return t->rfactor ? 1 : (double)t->vblock / (double)c->lanes;
}

// Loads per reduction step and accumulators of a tile: each vector part
// (vector_parts) is a register and a load of its own.
static void cost(const Contraction *c, const Tile *t, int64_t *loads, int64_t *acc) {
  *loads = 0;
  int64_t pieces = vector_parts(c, t);
  *acc = pieces;
  for (int i = 0; i < 2; i++)
    if (t->t[i] >= 0)
      *acc *= t->size[i];
  const LExpr *ops[2] = {c->a, c->b};
  int vvar = t->rfactor ? c->r[t->v].var : c->s[t->v].var;
  for (int o = 0; o < 2; o++) {
    int64_t n = uses(ops[o], vvar) ? pieces : 1;
    for (int i = 0; i < 2; i++)
      if (t->t[i] >= 0 && uses(ops[o], c->s[t->t[i]].var))
        n *= t->size[i];
    *loads += n;
  }
}

// Bytes a reduction step of the tile loads that the step before did not:
// per load, what the innermost reduction loop moves it by, up to a vector
// (or, for a broadcast, a cache line).
static int64_t fresh_bytes(const Contraction *c, const Tile *t) {
  if (t->rfactor || c->nr == 0)
    return 0;
  const LExpr *ops[2] = {c->a, c->b};
  int64_t pieces = whole_vectors(c, t), bytes = 0;
  for (int o = 0; o < 2; o++) {
    int64_t s = distance(ops[o], c->r[c->nr - 1].var), n = 1;
    bool vec = uses(ops[o], c->s[t->v].var);
    int64_t cap = vec ? c->lanes : 16;
    s = s > cap ? cap : s;
    n = vec ? pieces : 1;
    for (int i = 0; i < 2; i++)
      if (t->t[i] >= 0 && uses(ops[o], c->s[t->t[i]].var))
        n *= t->size[i];
    bytes += n * s * 4;
  }
  return bytes;
}

// The cache lines a reduction step of the tile reads, about: an operand
// unrolled along a dimension it moves far along (another image, another
// channel's plane) reads a line per element of the tile there. Among tiles
// otherwise equal, the one reading fewer lines keeps them in L1, and leaves
// the outer loops, the threads' share, whole: an input gradient unrolled
// over 12 of 16 images read 576 lines of dy per output and split the batch
// 12 to 4 between two threads.
//
// What a line costs in a tile's score (choose): LINE_COST, fitted on the
// sweep's strided input gradients, whose phase planes are 7 or 8 wide. A
// phase 8 rows by 7 columns unrolled over 8 images and 2 rows (a line of dy
// per image and step) ran at 36% of peak, its twin 7 by 8 over 2 images and
// 8 columns at 51%; at 0.006 a line (0.002 before) the first takes 2 rows
// by 7 columns: input gradients of layers 2, 9, 26, 29 and 38 1.14-1.31x
// faster, layer 42's weight gradient 1.43x, no model's schedule changed.
//
// LANEWISE_LINE_COST: a line read by a tile whose vector runs along the
// channels of an activation (a forward or input gradient whose images are
// too narrow for the vector: its stores go lane by lane). Its far lines
// cost in its loads and in its stores alike: each step broadcasts one
// element of each, and each lane of the tile's outputs is stored into a
// line of its own per far element, where neighbours along the output's
// columns share their lines, loaded and stored. Sweep layer 40 of bench/
// (3 -> 64 channels, 7x7, stride 2, 17 columns), over 4 images against
// over 4 columns: its sum's loop took 0.335 against 0.25 ms, its stores
// 4.7 against 1.9 cycles an output. At
// LINE_COST, the flat 0.05 an edge then cost 17 columns in 4s made
// the images win. At 0.025, 17 of the 44 layers change tiles: in paired
// rounds the forward of layers 2, 18, 26 and 29 1.7-1.95x faster, of 7,
// 20, 23, 36, 37 and 40 1.2-1.5x, input gradients of 4, 18, 19, 20, 22
// and 37 1.3-2.0x, the seed nets' conv2 forward 1.1-1.25x, none slower
// beyond the noise; vgg_small, allconv and resnet8 keep their tiles. At
// 0.04, weight gradients whose vector runs along the out-channels (not
// activations: their stores come once, after the whole batch) were
// 0.83-0.90x on layers 5, 6, 10 and allconv's conv2: hence activations
// only. In AVX2 code 3 layers change tiles, one for the worse: layer 12's
// input gradient (8 channels, 15 columns) takes 12 columns and an edge of
// 3 instead of 4 images by 3 columns, 0.75x (0.04 ms); the flat 0.05 did
// not see that an edge of 3 accumulators waits on its FMAs' latency, which
// edge_weighted counts.
#define LINE_COST 0.006
#define LANEWISE_LINE_COST 0.025

static double line_cost(const Contraction *c, const Tile *t) {
  const LExpr *ops[2] = {c->a, c->b};
  bool activation = false; // the output has images (forward, input gradient)
  for (int d = 0; d < c->ns; d++)
    activation |= is_batch(c, d);
  double cost = !t->rfactor && t->v != c->ns - 1 && activation ? LANEWISE_LINE_COST : LINE_COST;
  int64_t total = 0;
  for (int o = 0; o < 2; o++) {
    int64_t n = 1;
    for (int i = 0; i < 2; i++) {
      if (t->t[i] < 0 || !uses(ops[o], c->s[t->t[i]].var))
        continue;
      int64_t far = distance(ops[o], c->s[t->t[i]].var); // INT64_MAX: not linear
      if (far >= 16 || far * (t->size[i] - 1) >= 16)
        n *= t->size[i];
    }
    total += n;
  }
  return cost * (double)total;
}

// A tile's rate: its work (whole vectors of multiply-adds: a part of 4
// lanes on AVX2 is half of one) per load, a little in favour of more work;
// or, for a sum that streams from L2 (streamed), per slot of the slowest
// of FMAs, loads and L2. A tile of fewer than LATENCY_ACC accumulators
// waits on its multiply-adds' latency (4 cycles, 2 units).
#define LATENCY_ACC 8

static double rate(const Contraction *c, const Tile *t, bool streamed) {
  int64_t loads, acc;
  cost(c, t, &loads, &acc);
  double work = (double)acc / (double)vector_parts(c, t) * vector_work(c, t);
  double r = work / loads + 0.01 * work;
  if (streamed) {
    double slots = (double)fresh_bytes(c, t) / L2_BYTES_PER_FMA;
    slots = slots > loads ? slots : loads;
    r = work / (slots > acc ? slots : acc) + 0.01 * work;
  }
  return acc < LATENCY_ACC ? r * (double)acc / LATENCY_ACC : r;
}

// The share of a loop of n that blocks of `step` cover whole (last = 0)
// or the last, shorter block does (last = 1), and that block's size.
static double block_share(int64_t n, int64_t step, int last, int64_t *size) {
  int64_t whole = n / step * step;
  *size = last ? n - whole : step;
  return (double)(last ? n - whole : whole) / (double)n;
}

// The rate of a tile over its whole loops: where a tile size does not
// divide its loop, the last tile there is smaller (or, in the last block
// of t[edge], takes edge_size along the other); each tile shape computes
// its share of the outputs at its own rate, and their times add.
static double edge_weighted(const Contraction *c, const Tile *t, bool streamed) {
  int e = t->edge >= 0 ? t->edge : 0, o = 1 - e; // e: the outer of the two below
  double time = 0;
  for (int le = 0; le < 2; le++)
    for (int lo = 0; lo < 2; lo++) {
      Tile u = *t;
      double share = 1;
      if (t->t[e] >= 0)
        share *= block_share(c->s[t->t[e]].n, t->size[e], le, &u.size[e]);
      else
        share *= !le;
      int64_t step = le && t->edge == e ? t->edge_size : t->size[o];
      if (t->t[o] >= 0 && share > 0)
        share *= block_share(c->s[t->t[o]].n, step, lo, &u.size[o]);
      else
        share *= !lo;
      if (share > 0)
        time += share / rate(c, &u, streamed);
    }
  return 1 / time;
}

static void nest_order(const Contraction *c, Tile *t);
static void wide_outside(const Contraction *c, Tile *t);

// Can the last block of t[edge] take another size along the other unrolled
// dimension? Not when that one is the outermost loop, which the threads
// split (parallelize): the two nests of the edge (split_edge) would be two
// loops for them, not one.
static bool edge_inside(const Contraction *c, const Tile *t) {
  Tile u = *t;
  nest_order(c, &u);
  wide_outside(c, &u);
  return u.order[0] != u.t[1 - u.edge];
}

// A tile's step is its multiply-adds, one an accumulator: n[TD_J0] by
// n[TD_J1] (the unrolled dimensions) by n[TD_PIECE] (the vector's parts),
// nested as an order says, outermost first (step_order).
enum { TD_J0, TD_J1, TD_PIECE, TILE_DIMS };

// The operand values a step of the tile keeps in registers besides its
// accumulators, its tile dimensions nested as `order` says: an operand
// moves with some of them (its own), and a value of it is live from its
// first multiply-add to its last. Nested with all its own dimensions
// outside the others, an operand is loaded as it is used, one value live;
// else each value waits for the other dimensions to come round again, and
// all those of its own dimensions inside the outermost other one are live
// at once. With `fold`, a vector operand each of whose values one
// multiply-add uses (its own dimensions are all the step's) takes no
// register: the FMA reads it from memory.
static int64_t live_values(const Contraction *c, const Tile *t, const int64_t n[TILE_DIMS],
                           const int order[TILE_DIMS], bool fold) {
  const LExpr *ops[2] = {c->a, c->b};
  int vvar = t->rfactor ? c->r[t->v].var : c->s[t->v].var;
  int64_t live = 0;
  for (int o = 0; o < 2; o++) {
    bool own[TILE_DIMS] = {t->t[0] >= 0 && uses(ops[o], c->s[t->t[0]].var),
                           t->t[1] >= 0 && uses(ops[o], c->s[t->t[1]].var),
                           uses(ops[o], vvar)};
    int64_t values = 1;
    bool other_outside = false, once = own[TD_PIECE];
    for (int i = 0; i < TILE_DIMS; i++) {
      int d = order[i];
      if (n[d] == 1)
        continue;
      once &= own[d];
      if (!own[d])
        other_outside = true;
      else if (other_outside)
        values *= n[d];
    }
    live += fold && once ? 0 : values;
  }
  return live;
}

// The order of the step's dimensions with the fewest live operand values:
// the first found of the fewest, the natural order first. Returns them.
static int64_t fewest_live(const Contraction *c, const Tile *t, const int64_t n[TILE_DIMS],
                           bool fold, int order[TILE_DIMS]) {
  static const int perms[6][TILE_DIMS] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2},
                                          {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
  int64_t best = -1;
  for (int i = 0; i < 6; i++) {
    int64_t live = live_values(c, t, n, perms[i], fold);
    if (best < 0 || live < best) {
      best = live;
      memcpy(order, perms[i], sizeof perms[i]);
    }
  }
  return best;
}

// Does the tile fit? At most the target's accumulators in whole vectors'
// worth of lanes (max_acc), and in registers: its accumulators, each
// vector part one, and the operand values live in its best step order, an
// operand read once a multiply-add taking none (the FMA reads it from
// memory). A row of 27 columns on AVX2 is 4 vectors' worth and 5 parts (3
// vectors, 2 lanes and 1): 3 rows of it, 12 vectors' worth, and a
// broadcast weight fill the 16 registers. A tile of more accumulators
// that would fit AVX-512's 32 registers ran slower: vgg_small, allconv,
// resnet8 and cifar10 0.81-0.93x as fast when up to 31 were allowed.
static bool fits(const Contraction *c, const Tile *t) {
  int64_t n[TILE_DIMS] = {t->t[0] >= 0 ? t->size[0] : 1, t->t[1] >= 0 ? t->size[1] : 1,
                          vector_parts(c, t)};
  int64_t acc = n[TD_J0] * n[TD_J1] * n[TD_PIECE];
  int order[TILE_DIMS];
  return n[TD_J0] * n[TD_J1] * whole_vectors(c, t) <= c->max_acc &&
         acc + fewest_live(c, t, n, true, order) <= c->registers;
}

// The best tile for the vector chosen: every pair of other spatial
// dimensions and sizes up to the accumulator budget; 7 only where it
// divides the loop (a 7-wide plane), not as a 7 + 7 + 1 split of 15.
static double choose(const Contraction *c, Tile *best, bool streamed) {
  static const int64_t sizes[] = {1, 2, 3, 4, 6, 7, 8, 12};
  double best_score = -1;
  int64_t best_acc = 0;
  Tile t = *best;
  for (int i = -1; i < c->ns; i++)
    for (int j = i + 1; j < c->ns; j++) {
      if ((i >= 0 && !t.rfactor && i == t.v) || (!t.rfactor && j == t.v))
        continue;
      if (i < 0 && j >= c->ns)
        continue;
      for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++)
        for (size_t sj = 0; sj < sizeof sizes / sizeof *sizes; sj++) {
          t.t[0] = i, t.t[1] = j;
          t.size[0] = i >= 0 ? sizes[si] : 1;
          t.size[1] = sizes[sj];
          if ((i >= 0 && t.size[0] > c->s[i].n) || t.size[1] > c->s[j].n)
            continue;
          if ((i >= 0 && t.size[0] == 7 && c->s[i].n % 7) || (t.size[1] == 7 && c->s[j].n % 7))
            continue;
          if (i < 0 && si > 0)
            continue;
          int64_t loads, acc;
          cost(c, &t, &loads, &acc);
          if (!fits(c, &t))
            continue;
          // As it is, and with the last block of either unrolled dimension
          // taking another size along the other.
          for (int e = -1; e < 2; e++)
            for (size_t se = 0; se < (e < 0 ? 1 : sizeof sizes / sizeof *sizes); se++) {
              Tile u = t;
              u.edge = e;
              u.edge_size = e < 0 ? 0 : sizes[se];
              if (e >= 0) {
                int o = 1 - e;
                if (u.t[e] < 0 || u.t[o] < 0)
                  continue;
                int64_t ne = c->s[u.t[e]].n, rest = ne % u.size[e];
                if (!rest || ne < u.size[e] ||
                    u.edge_size == u.size[o] || u.edge_size > c->s[u.t[o]].n ||
                    (u.edge_size == 7 && c->s[u.t[o]].n % 7))
                  continue;
                Tile w = u;
                w.size[e] = rest, w.size[o] = u.edge_size;
                if (!fits(c, &w) || !edge_inside(c, &u))
                  continue;
              }
              double score = edge_weighted(c, &u, streamed) / run_share(c, &u) - line_cost(c, &u);
              if (score > best_score + 1e-9 || (score > best_score - 1e-9 && acc > best_acc)) {
                best_score = score;
                best_acc = acc;
                *best = u;
              }
            }
        }
    }
  if (best_score < 0) // nothing fits: no unrolled dimension
    best->t[0] = best->t[1] = -1;
  for (int q = 0; q < 2; q++) // a size of 1 is no unrolled dimension, but for an edge
    if (best->t[q] >= 0 && best->size[q] == 1 && best->edge != 1 - q)
      best->t[q] = -1;
  return best_score;
}

// A tile whose sum streams more than L1 holds (a weight gradient's tile
// reads dy's whole block of out-channels, 128 KB for resnet8's b3conv1 at
// batch 64, for each of its 12 x 8 outputs) gets its loads from L2, which
// feeds fewer bytes a cycle than the multiply-adds consume at 4 vectors of
// dy per 3 broadcasts of x (140 new bytes per 12 FMAs). Such a tile may
// then take a shorter vector, 16 or 8 lanes, and more unrolled outputs
// (2 x 8 lanes x 6: 88 new bytes per 12 FMAs), whichever keeps the FMAs
// busiest when L2 gives L2_BYTES_PER_FMA bytes per multiply-add.
//
// Not when the sum is blocked by a loop that walks both operands by their
// first dimension (a weight gradient's images, block_sum) and the tile
// with the fewest loads takes more than a quarter fewer loads per
// multiply-add: a block's slab of each operand comes from L2 once, and
// every tile in turn finds it in L1 (6 KB of dy and 26 KB of x an image
// for allconv's conv2), so loads are the limit. On AVX-512, 4 vectors of
// dy by 4 broadcasts of x (0.5 loads a multiply-add) against 1 by 16
// (1.06): in paired rounds, allconv's weight gradients 1.09-1.26x as fast,
// resnet8's 1.07-1.30x, vgg_small's conv3 1.29x, the seed nets' conv2
// 1.27-1.40x. Where it is a quarter or less, the streamed tile stays: on
// AVX2, 4 by 3 (0.58) against 2 by 6 (0.67) made the 128-channel weight
// gradients 15-20% slower (partial sums twice the size); on AVX-512, the
// seed nets' input gradient blocked by out-channels, 2 rows by 4 channels
// of 2 vectors of images (0.5) against 1 row by 6 (0.67), 0.79x (its rows
// then 7 blocks for 2 threads).
static int64_t block_sum(const Contraction *c, const Tile *t);

static bool walks_slabs(const LExpr *e, int var) {
  if (!uses(e->idx[0], var))
    return false;
  for (int d = 1; d < e->buf->rank; d++)
    if (uses(e->idx[d], var))
      return false;
  return true;
}

static void choose_streamed(const Contraction *c, Tile *t) {
  int64_t steps = 1;
  for (int i = 0; i < c->nr; i++)
    steps *= c->r[i].n;
  if (t->rfactor || steps * fresh_bytes(c, t) <= L1_BYTES)
    return;
  bool slabs = block_sum(c, t) && walks_slabs(c->a, c->r[0].var) && walks_slabs(c->b, c->r[0].var);
  // Only where a vector operand shares nothing from one step to the next.
  bool fresh_vectors = false;
  const LExpr *ops[2] = {c->a, c->b};
  for (int o = 0; o < 2; o++) {
    if (uses(ops[o], c->s[t->v].var) && distance(ops[o], c->r[c->nr - 1].var) >= c->lanes)
      fresh_vectors = true;
  }
  if (!fresh_vectors)
    return;
  Tile best = *t;
  double best_score = choose(c, &best, true);
  for (int64_t vb = t->vblock / 2; vb >= c->lanes; vb /= 2) {
    if (vb % c->lanes)
      break;
    Tile tt = *t;
    tt.vblock = vb;
    double score = choose(c, &tt, true);
    if (score > best_score + 1e-9)
      best = tt, best_score = score;
  }
  int64_t loads, acc, best_loads, best_acc;
  cost(c, t, &loads, &acc);
  cost(c, &best, &best_loads, &best_acc);
  if (slabs && 4 * loads * best_acc < 3 * best_loads * acc)
    return;
  *t = best;
}

// --- Building the tiled nest -------------------------------------------------------------------

// A tile's part of the nest when the sum is blocked (block_sum): the whole
// tile (init, sum, store), or its accumulators' first value, one block of
// the sum, or the store.
typedef enum { WHOLE, INIT, STEP, STORE } Part;

typedef struct {
  const Contraction *c;
  const Tile *t;
  LBuf *acc;          // [size0][size1][lanes]
  LExpr *at[MAX_SPATIAL]; // each spatial variable's value at the tile's origin
  int vvar;           // the vector's variable in the plain nest
  // A blocked sum: the accumulators of every output inside the outermost
  // loop, kept between blocks of the sum, [the other loops' elements][the
  // vector's] (part_dims).
  LBuf *part;
  // The part of each spatial loop the nest being built covers, [lo, hi),
  // and the step of each unrolled dimension there (a last block of
  // t[edge] takes edge_size along the other).
  int64_t lo[MAX_SPATIAL], hi[MAX_SPATIAL], step[2];
  int sum_var;             // the loop over the sum's blocks, outside the tiles
  int64_t sum_blocks;      // its trip count
  const char *sum_role;    // and the name of what it counts
  Part mode;
  bool skip;               // guards skip the steps that read only zeros (steps_run)
} Build;

// The plain expression e with the spatial variables at tile element
// (j0, j1), the vector variable at `lane` (an expression).
static LExpr *place(const Build *bd, const LExpr *e, int64_t j0, int64_t j1, LExpr *lane) {
  const Contraction *c = bd->c;
  const Tile *t = bd->t;
  LExpr *x = lx_copy(e);
  for (int d = 0; d < c->ns; d++) {
    LExpr *v = lx_copy(bd->at[d]);
    if (d == t->t[0])
      v = lx_iaddc(v, j0);
    if (d == t->t[1])
      v = lx_iaddc(v, j1);
    if (!t->rfactor && d == t->v)
      v = lx_iadd(v, lx_copy(lane));
    x = lx_subst(x, c->s[d].var, v);
  }
  if (t->rfactor)
    x = lx_subst(x, bd->vvar, lane);
  return x;
}

static LExpr *acc_at(const Build *bd, int64_t j0, int64_t j1, LExpr *lane) {
  LExpr *idx[3] = {lx_i64(j0), lx_i64(j1), lane};
  return lx_load(bd->acc, idx);
}

static LStmt *acc_store(const Build *bd, int64_t j0, int64_t j1, LExpr *lane, LExpr *value) {
  LExpr *idx[3] = {lx_i64(j0), lx_i64(j1), lane};
  return ls_store(bd->acc, idx, value);
}

// Calls fn(bd, parent, j0, j1, lane expr, arg) for every element of the
// tile: j0 < n0, j1 < n1 unrolled, the vector in pieces of a whole
// vector's lanes (8 or 16), then 8, 4, 2, 1, for `len` lanes (each a
// vector loop). The three are nested as `order` says, outermost first
// (TD_J0, TD_J1, TD_PIECE).
typedef void (*EachFn)(const Build *bd, LStmt *parent, int64_t j0, int64_t j1, LExpr *lane,
                       void *arg);

// The vector's pieces: lanes [at[i], at[i] + w[i]). At most MAX_PIECES
// whole vectors, then one each of 8, 4, 2 and 1 lanes.
enum { MAX_PARTS = MAX_PIECES + 4 };
static int pieces_of(const Build *bd, int64_t len, int64_t at[MAX_PARTS], int64_t w[MAX_PARTS]) {
  int n = 0;
  for (int64_t a = 0; a < len; n++) {
    ir_assert(n < MAX_PARTS);
    int64_t x = bd->c->lanes;
    while (x > len - a)
      x /= 2;
    at[n] = a, w[n] = x;
    a += x;
  }
  return n;
}

static void each_in(const Build *bd, LKernel *k, LStmt *parent, int64_t n0, int64_t n1,
                    int64_t len, const int order[TILE_DIMS], EachFn fn, void *arg) {
  int64_t at[MAX_PARTS], w[MAX_PARTS];
  int np = pieces_of(bd, len, at, w);
  int64_t n[TILE_DIMS] = {n0, n1, np};
  int64_t total = n0 * n1 * np;
  for (int64_t x = 0; x < total; x++) {
    int64_t j[TILE_DIMS], rest = x;
    for (int i = TILE_DIMS - 1; i >= 0; i--) {
      j[order[i]] = rest % n[order[i]];
      rest /= n[order[i]];
    }
    int64_t p = j[TD_PIECE];
    int var = lk_var(k);
    LStmt *l = ls_loop(var, at[p], at[p] + w[p], bd->c->s[bd->t->rfactor ? 0 : bd->t->v].role);
    l->flags |= w[p] > 1 ? LF_VECTOR : LF_UNROLL;
    ls_add(parent, l);
    fn(bd, l, j[TD_J0], j[TD_J1], lx_var(var), arg);
  }
}

static void each(const Build *bd, LKernel *k, LStmt *parent, int64_t n0, int64_t n1, int64_t len,
                 EachFn fn, void *arg) {
  static const int natural[TILE_DIMS] = {TD_J0, TD_J1, TD_PIECE};
  each_in(bd, k, parent, n0, n1, len, natural, fn, arg);
}

static void init_one(const Build *bd, LStmt *p, int64_t j0, int64_t j1, LExpr *lane, void *arg) {
  LExpr *v = bd->t->rfactor ? lx_f32(0) : place(bd, bd->c->init, j0, j1, lane);
  ls_add(p, acc_store(bd, j0, j1, lane, v));
}

static void step_one(const Build *bd, LStmt *p, int64_t j0, int64_t j1, LExpr *lane, void *arg) {
  LExpr *a = place(bd, bd->c->a, j0, j1, lane), *b = place(bd, bd->c->b, j0, j1, lane);
  ls_add(p, acc_store(bd, j0, j1, lane, lx_fma(a, b, acc_at(bd, j0, j1, lx_copy(lane)))));
}

static LExpr *epilogue_of(const Build *bd, const LExpr *e, const LExpr *value);

static void store_one(const Build *bd, LStmt *p, int64_t j0, int64_t j1, LExpr *lane, void *arg) {
  const Contraction *c = bd->c;
  LExpr *idx[MAX_SPATIAL];
  for (int d = 0; d < c->ns; d++)
    idx[d] = place(bd, lx_var(c->s[d].var), j0, j1, lane);
  LExpr *v = lx_round(c->out->dtype, acc_at(bd, j0, j1, lx_copy(lane))); // as stored
  if (c->epi)
    v = epilogue_of(bd, place(bd, c->epi, j0, j1, lane), v);
  ls_add(p, ls_store(c->epi ? c->epi_out : c->out, idx, v));
}

// e with every load of out replaced by value.
static LExpr *epilogue_of(const Build *bd, const LExpr *e, const LExpr *value) {
  if (!e)
    return NULL;
  if (e->kind == LX_LOAD && e->buf == bd->c->out)
    return lx_copy(value);
  LExpr *x = lx_copy(e);
  x->a = epilogue_of(bd, e->a, value);
  x->b = epilogue_of(bd, e->b, value);
  x->c = epilogue_of(bd, e->c, value);
  return x;
}

// rfactor: out = init + (lane 0 + lane 1 + ... + the last lane), in that order.
static void store_rfactor(const Build *bd, LKernel *k, LStmt *p, int64_t n0, int64_t n1) {
  const Contraction *c = bd->c;
  for (int64_t j0 = 0; j0 < n0; j0++)
    for (int64_t j1 = 0; j1 < n1; j1++) {
      LExpr *zero = lx_i64(0);
      LExpr *sum = NULL;
      for (int l = 0; l < c->lanes; l++) {
        LExpr *x = acc_at(bd, j0, j1, lx_i64(l));
        sum = sum ? lx_bin(LX_ADD, sum, x) : x;
      }
      LExpr *v = lx_round(c->out->dtype, lx_bin(LX_ADD, place(bd, c->init, j0, j1, zero), sum));
      if (c->epi)
        v = epilogue_of(bd, place(bd, c->epi, j0, j1, zero), v);
      LExpr *idx[MAX_SPATIAL];
      for (int d = 0; d < c->ns; d++)
        idx[d] = place(bd, lx_var(c->s[d].var), j0, j1, zero);
      ls_add(p, ls_store(c->epi ? c->epi_out : c->out, idx, v));
    }
}

// The test that reduction loop i's step reads inside the border, for some
// element of the tile, for every operand index it moves that reaches the
// border, or NULL.
static LExpr *border_guard(const Build *bd, int i, int64_t n0, int64_t n1) {
  const Contraction *c = bd->c;
  const int64_t n[2] = {n0, n1};
  const LExpr *ops[2] = {c->a, c->b};
  LExpr *cond = NULL;
  for (int o = 0; o < 2; o++)
    for (int d = 0; d < ops[o]->buf->rank; d++) {
      int red, sp;
      int64_t block;
      if (!skippable(c, bd->t, n, ops[o], d, &red, &sp, &block) || red != i)
        continue;
      // The tiles this nest covers along sp: those of the loop's whole
      // blocks, or its last, shorter one. An index that never reaches the
      // border there needs no test.
      int64_t from = 0, to = sp >= 0 ? c->s[sp].n : 1;
      for (int q = 0; q < 2; q++)
        if (sp >= 0 && bd->t->t[q] == sp) {
          int64_t step = bd->step[q], whole = bd->lo[sp] + (bd->hi[sp] - bd->lo[sp]) / step * step;
          from = n[q] == step ? bd->lo[sp] : whole;
          to = n[q] == step ? whole : bd->hi[sp];
        }
      if (inside_share(c, ops[o], d, red, sp, from, to, block) == 1)
        continue;
      const LBuf *b = ops[o]->buf;
      // The index at the tile's two ends (the same when it spans none):
      // some element reads inside when the higher end is past the border's
      // start and the lower end short of its end.
      Affine a;
      lx_affine(ops[o]->idx[d], &a);
      bool rising = sp < 0 || affine_coef(&a, c->s[sp].var) >= 0;
      LExpr *x0 = place(bd, ops[o]->idx[d], 0, 0, lx_i64(0));
      LExpr *x1 = place(bd, ops[o]->idx[d], n0 - 1, n1 - 1, lx_i64(0));
      LExpr *in = lx_bin(LX_AND, lx_bin(LX_GE, rising ? x1 : x0, lx_i64(b->pad_lo[d])),
                         lx_bin(LX_LT, rising ? x0 : x1, lx_i64(b->pad_lo[d] + b->pad_n[d])));
      cond = cond ? lx_bin(LX_AND, cond, in) : in;
    }
  return cond;
}

// The nesting of a tile's steps with the fewest live operand values (on
// AVX2, 12 accumulators leave 4 registers: 3 vectors of images by 4
// broadcast weights go image by image with all 4 weights live and spill
// one accumulator a step; weight by weight, the 3 images stay and the
// weights come one at a time; a weight gradient's rfactor tile of 3
// vectors of dy by 4 of x, likewise). The first found of the fewest, the
// natural order first.
static void step_order(const Build *bd, int64_t n0, int64_t n1, int64_t len,
                       int order[TILE_DIMS]) {
  int64_t n[TILE_DIMS] = {n0, n1, vector_ops(len, bd->c->lanes)};
  fewest_live(bd->c, bd->t, n, false, order);
}

// One step of an rfactor tile: every accumulator takes `w` lanes of the
// vector's loop, at lanes [at, at + w), or, with blk >= 0, the lanes of
// block blk.
// A tile whose unrolled output dimension slides a broadcast operand along
// the innermost reduction loop (columns of a stride-1 window: the value of
// column j at tap kw + 1 is column j + 1's at kw). LLVM unrolls a short
// tap loop and keeps those values in registers from one tap to the next;
// where they, the accumulators and the step's operands exceed the
// registers, it spilled accumulators, each multiply-add then waiting on a
// store and a reload. Such a tap loop stays rolled. In paired rounds on
// the AMD EPYC: cifar10's conv2 forward (16 channels by 2 rows by 3
// columns, 4 values carried on AVX2's 16 registers) 0.53 of the time
// unrolled; sweep layers 5 and 36 (their forward and input gradients)
// 0.45-0.6, 30 and 35 0.85-0.9; tiles of 1 row by 6 columns (layers 31,
// 35, 38) 0.7-0.9, though cifar10's conv2 made to take one ran 1.13x as
// long rolled. Tiles over images, which carry nothing, stay unrolled.
static bool stays_rolled(const Build *bd, int64_t n0, int64_t n1, int64_t len,
                         const int order[TILE_DIMS]) {
  const Contraction *c = bd->c;
  const Tile *t = bd->t;
  int64_t n[2] = {n0, n1};
  if (c->nr == 0)
    return false;
  int r = c->r[c->nr - 1].var;
  const LExpr *ops[2] = {c->a, c->b};
  int64_t carried = 0;
  for (int o = 0; o < 2; o++) {
    if (uses(ops[o], bd->vvar))
      continue; // a vector operand: loaded at each step
    for (int d = 0; d < ops[o]->buf->rank; d++) {
      Affine a;
      if (!lx_affine(ops[o]->idx[d], &a))
        continue;
      int64_t cr = affine_coef(&a, r);
      for (int q = 0; q < 2; q++) {
        if (t->t[q] < 0)
          continue;
        int64_t cq = affine_coef(&a, c->s[t->t[q]].var);
        if (!cr || !cq || cr % cq || llabs(cr / cq) >= n[q])
          continue;
        int64_t other = t->t[1 - q] >= 0 && uses(ops[o], c->s[t->t[1 - q]].var) ? n[1 - q] : 1;
        carried += (n[q] - llabs(cr / cq)) * other;
      }
    }
  }
  int64_t at[MAX_PARTS], w[MAX_PARTS];
  int64_t acc = n0 * n1 * pieces_of(bd, len, at, w);
  int64_t nd[TILE_DIMS] = {n0, n1, vector_ops(len, c->lanes)};
  return carried > 0 && acc + live_values(c, bd->t, nd, order, false) + carried > c->registers;
}

static void rfactor_step(const Build *bd, LKernel *k, LStmt *parent, int64_t n0, int64_t n1,
                         bool j1_outer, int blk, int64_t at, int64_t w) {
  const Contraction *c = bd->c;
  for (int64_t x = 0; x < n0 * n1; x++) {
    int64_t j0 = j1_outer ? x % n0 : x / n1, j1 = j1_outer ? x / n0 : x % n1;
    int lane = lk_var(k);
    LStmt *vl = ls_loop(lane, 0, w, c->r[bd->t->v].role);
    vl->flags |= w > 1 ? LF_VECTOR : LF_UNROLL;
    ls_add(parent, vl);
    LExpr *pos = blk >= 0 ? lx_iadd(lx_imul(lx_var(blk), c->lanes), lx_var(lane))
                          : lx_iaddc(lx_var(lane), at);
    LExpr *pa = place(bd, lx_subst(c->a, bd->vvar, pos), j0, j1, lx_var(lane));
    LExpr *pb = place(bd, lx_subst(c->b, bd->vvar, pos), j0, j1, lx_var(lane));
    ls_add(vl, acc_store(bd, j0, j1, lx_var(lane), lx_fma(pa, pb, acc_at(bd, j0, j1, lx_var(lane)))));
  }
}

// The reduction loops around the accumulate steps of one tile.
static void reduction(const Build *bd, LKernel *k, LStmt *p, int64_t n0, int64_t n1, int64_t len) {
  const Contraction *c = bd->c;
  const Tile *t = bd->t;
  LStmt *in = p, *taps = NULL; // taps: the innermost reduction loop
  for (int i = 0; i < c->nr; i++) {
    if (t->rfactor && i == t->v)
      continue; // the vector's loop: in pieces below
    LStmt *l = ls_loop(c->r[i].var, 0, c->r[i].n, c->r[i].role);
    l->flags |= LF_REDUCE;
    ls_add(in, l);
    in = taps = l;
    LExpr *cond = bd->skip ? border_guard(bd, i, n0, n1) : NULL;
    if (cond) {
      LStmt *g = ls_if(cond);
      ls_add(in, g);
      in = g;
    }
  }
  if (!t->rfactor) {
    int order[TILE_DIMS];
    step_order(bd, n0, n1, len, order);
    if (taps && stays_rolled(bd, n0, n1, len, order))
      taps->flags |= LF_ROLLED;
    each_in(bd, k, in, n0, n1, len, order, step_one, NULL);
    return;
  }
  // rfactor: blocks of a vector's lanes of the vector's loop, then the rest,
  // each a step of the n0 x n1 accumulators (both operands vectors, one
  // piece each).
  int order[TILE_DIMS];
  step_order(bd, n0, n1, c->lanes, order);
  bool j1_outer = false; // does j1 nest outside j0?
  for (int i = 0; i < TILE_DIMS && order[i] != TD_J0; i++)
    j1_outer |= order[i] == TD_J1;
  int64_t n = c->r[t->v].n, blocks = n / c->lanes;
  if (blocks > 0) {
    int blk = lk_var(k);
    LStmt *bl = ls_loop(blk, 0, blocks, c->r[t->v].role);
    bl->flags |= LF_REDUCE;
    ls_add(in, bl);
    rfactor_step(bd, k, bl, n0, n1, j1_outer, blk, 0, c->lanes);
  }
  for (int64_t at = blocks * c->lanes; at < n;) {
    int64_t w = c->lanes / 2; // pieces of 4, 2, 1 on AVX2, 8 first on AVX-512
    while (w > n - at)
      w /= 2;
    rfactor_step(bd, k, in, n0, n1, j1_outer, -1, at, w);
    at += w;
  }
}

// The blocked sum's accumulators (part): the elements of the spatial loops
// inside the outermost (and the tile's along the outermost, when that is
// unrolled), the vector's last, so that any tiling, edges and all, finds
// each output's sum in one place. dims[0]: the others' elements; dims[1]:
// the vector's (its block, when the vector is the outermost loop) or, for
// rfactor, its lanes.
static void part_dims(const Contraction *c, const Tile *t, int64_t dims[2]) {
  int outer = t->order[0];
  dims[0] = outer == t->t[0] ? t->size[0] : outer == t->t[1] ? t->size[1] : 1;
  dims[1] = t->rfactor ? c->lanes : outer == t->v ? t->vblock : c->s[t->v].n;
  for (int i = 1; i < c->ns; i++)
    if (t->rfactor || t->order[i] != t->v)
      dims[0] *= c->s[t->order[i]].n;
}

// The tile's element (j0, j1, lane) in the blocked sum's accumulators.
static void part_idx(const Build *bd, int64_t j0, int64_t j1, LExpr *lane, LExpr *idx[2]) {
  const Contraction *c = bd->c;
  const Tile *t = bd->t;
  int outer = t->order[0];
  LExpr *pos = lx_i64(outer == t->t[0] ? j0 : outer == t->t[1] ? j1 : 0), *last = lane;
  for (int i = 1; i < c->ns; i++) {
    int d = t->order[i];
    LExpr *at = lx_iaddc(lx_copy(bd->at[d]), d == t->t[0] ? j0 : d == t->t[1] ? j1 : 0);
    if (!t->rfactor && d == t->v)
      last = lx_iadd(at, last);
    else
      pos = lx_iadd(lx_imul(pos, c->s[d].n), at);
  }
  idx[0] = pos, idx[1] = last;
}

// Copies the tile's accumulators to the blocked sum's (*to_part) or back.
static void move_one(const Build *bd, LStmt *p, int64_t j0, int64_t j1, LExpr *lane, void *to_part) {
  LExpr *idx[2];
  part_idx(bd, j0, j1, lane, idx);
  if (*(bool *)to_part)
    ls_add(p, ls_store(bd->part, idx, acc_at(bd, j0, j1, lx_copy(lane))));
  else
    ls_add(p, acc_store(bd, j0, j1, lx_copy(lane), lx_load(bd->part, idx)));
}

static void move(const Build *bd, LKernel *k, LStmt *p, int64_t n0, int64_t n1, int64_t len,
                 bool to_part) {
  if (!bd->t->rfactor) {
    each(bd, k, p, n0, n1, len, move_one, &to_part);
    return;
  }
  for (int64_t j0 = 0; j0 < n0; j0++)
    for (int64_t j1 = 0; j1 < n1; j1++) { // the lanes of one accumulator: a vector
      int lane = lk_var(k);
      LStmt *vl = ls_loop(lane, 0, bd->c->lanes, bd->c->r[bd->t->v].role);
      vl->flags |= LF_VECTOR;
      ls_add(p, vl);
      move_one(bd, vl, j0, j1, lx_var(lane), &to_part);
    }
}

// One tile: init, reduction, store, for tile sizes n0 x n1 and `len` lanes;
// or, in a blocked sum, one of them, the accumulators kept in bd->part.
static void tile_body(const Build *bd, LKernel *k, LStmt *p, int64_t n0, int64_t n1, int64_t len) {
  if (bd->mode == STEP || bd->mode == STORE)
    move(bd, k, p, n0, n1, len, false);
  if (bd->mode == WHOLE || bd->mode == INIT) {
    if (bd->t->rfactor)
      for (int64_t j0 = 0; j0 < n0; j0++)
        for (int64_t j1 = 0; j1 < n1; j1++)
          for (int l = 0; l < bd->c->lanes; l++)
            ls_add(p, acc_store(bd, j0, j1, lx_i64(l), lx_f32(0)));
    else
      each(bd, k, p, n0, n1, len, init_one, NULL);
  }
  if (bd->mode == WHOLE || bd->mode == STEP)
    reduction(bd, k, p, n0, n1, len);
  if (bd->mode == INIT || bd->mode == STEP)
    move(bd, k, p, n0, n1, len, true);
  if (bd->mode == WHOLE || bd->mode == STORE) {
    if (bd->t->rfactor)
      store_rfactor(bd, k, p, n0, n1);
    else
      each(bd, k, p, n0, n1, len, store_one, NULL);
  }
}

static void spatial(Build *bd, LKernel *k, LStmt *p, int i, int64_t n0, int64_t n1, int64_t len);

// At loop i, the other unrolled dimension than t[edge], when t[edge] is
// inside it and has a last, shorter block: two nests, one over t[edge]'s
// whole blocks, one over its last block, which takes edge_size here.
static bool split_edge(Build *bd, LKernel *k, LStmt *p, int i, int64_t n0, int64_t n1,
                       int64_t len) {
  const Tile *t = bd->t;
  int o = 1 - t->edge, e = t->t[t->edge];
  bool inside = false;
  for (int j = i + 1; j < bd->c->ns; j++)
    inside |= t->order[j] == e;
  int64_t lo = bd->lo[e], hi = bd->hi[e], whole = (hi - lo) / t->size[t->edge] * t->size[t->edge];
  if (!inside || whole == 0 || lo + whole == hi)
    return false;
  bd->hi[e] = lo + whole;
  spatial(bd, k, p, i, n0, n1, len);
  bd->hi[e] = hi;
  bd->lo[e] = lo + whole;
  int64_t step = bd->step[o];
  bd->step[o] = t->edge_size;
  spatial(bd, k, p, i, n0, n1, len);
  bd->step[o] = step;
  bd->lo[e] = lo;
  return true;
}

// The spatial loops from dimension d on; the tile's body at the bottom.
// size[]: the current tile sizes (a last block may be smaller).
static void spatial(Build *bd, LKernel *k, LStmt *p, int i, int64_t n0, int64_t n1, int64_t len) {
  const Contraction *c = bd->c;
  const Tile *t = bd->t;
  if (i == c->ns) {
    tile_body(bd, k, p, n0, n1, len);
    return;
  }
  if (i == 1 && bd->part && bd->mode == WHOLE) {
    // A blocked sum inside the outermost loop: every tile's first value,
    // then the outermost reduction loop around every tile's share of it,
    // then the stores.
    bd->mode = INIT;
    spatial(bd, k, p, 1, n0, n1, len);
    LStmt *r0 = ls_loop(bd->sum_var, 0, bd->sum_blocks, bd->sum_role);
    r0->flags |= LF_REDUCE;
    ls_add(p, r0);
    bd->mode = STEP;
    spatial(bd, k, r0, 1, n0, n1, len);
    bd->mode = STORE;
    spatial(bd, k, p, 1, n0, n1, len);
    bd->mode = WHOLE;
    return;
  }
  int d = t->order[i];
  const Dim *dim = &c->s[d];
  int q = d == t->t[0] ? 0 : d == t->t[1] ? 1 : -1;
  bool vec = !t->rfactor && d == t->v;
  if (q < 0 && !vec) { // an ordinary loop
    int var = lk_var(k);
    LStmt *l = ls_loop(var, 0, dim->n, dim->role);
    ls_add(p, l);
    bd->at[d] = lx_var(var);
    spatial(bd, k, l, i + 1, n0, n1, len);
    return;
  }
  if (q == 1 - t->edge && split_edge(bd, k, p, i, n0, n1, len))
    return;
  int64_t lo = bd->lo[d], n = bd->hi[d] - lo;
  int64_t step = vec ? t->vblock : bd->step[q];
  int64_t full = n / step, rest = n % step;
  int var = lk_var(k);
  LStmt *l = ls_loop(var, 0, full + (rest > 0), dim->role);
  ls_add(p, l);
  bd->at[d] = lx_iaddc(lx_imul(lx_var(var), step), lo);
  // A last block shorter than the others: a branch per block, outside the
  // reduction, choosing the tile of its size.
  LStmt *main = l, *tail = NULL;
  if (rest && full) {
    main = ls_if(lx_bin(LX_LT, lx_var(var), lx_i64(full)));
    tail = ls_if(lx_bin(LX_GE, lx_var(var), lx_i64(full)));
    ls_add(l, main);
    ls_add(l, tail);
  } else if (rest) {
    tail = l;
    main = NULL;
  }
  LExpr *save = bd->at[d];
  if (main)
    spatial(bd, k, main, i + 1, q == 0 ? step : n0, q == 1 ? step : n1, vec ? step : len);
  if (tail) {
    bd->at[d] = save;
    bool edge = q >= 0 && q == t->edge; // the other dimension, inside, takes edge_size
    int64_t other = edge ? bd->step[1 - q] : 0;
    if (edge)
      bd->step[1 - q] = t->edge_size;
    spatial(bd, k, tail, i + 1, q == 0 ? rest : n0, q == 1 ? rest : n1, vec ? rest : len);
    if (edge)
      bd->step[1 - q] = other;
  }
}

// Can spatial dimension d be the vector: every operand moves by 0 or 1
// element along it, or by 1 in one of its own dimensions (then it is read
// transposed, that dimension last)? transpose: do it.
static bool vector_ok(LFunc *f, int *at, Contraction *c, int d, bool transpose) {
  int var = c->s[d].var;
  LExpr *ops[2] = {c->a, c->b};
  for (int o = 0; o < 2; o++) {
    int64_t st = lane_stride(ops[o], var);
    if (st == 0 || st == 1)
      continue;
    int md = st > 1 ? moving_dim(ops[o], var) : -1;
    if (md < 0 || ops[o]->buf->storage == LB_LOCAL)
      return false;
    if (transpose) {
      int before = f->nkernels;
      transpose_operand(f, *at, ops[o], md);
      *at += f->nkernels - before;
    }
  }
  return true;
}

// The tile with spatial dimension d as the vector (blocks of up to 32
// lanes), or with the innermost reduction as the vector (d < 0: rfactor).
static Tile vector_tile(const Contraction *c, int d) {
  Tile t = {.t = {-1, -1}, .rfactor = d < 0, .v = d < 0 ? c->nr - 1 : d, .edge = -1};
  if (d >= 0)
    t.vblock = c->s[d].n <= MAX_PIECES * c->lanes ? c->s[d].n : MAX_PIECES * c->lanes;
  return t;
}

// Does load e, read in vectors along var, start each at a multiple of the
// lanes (a whole number of cache lines on AVX-512) at every step? In the
// layout it is read in: transposed, the dimension var moves last, when
// var does not move it by one element. A window's rows (a padded row of
// 18 floats, a tap's column offset) start anywhere.
static bool vector_aligned(const Contraction *c, const LExpr *e, int var) {
  const LBuf *b = e->buf;
  int64_t st[LMAX_RANK];
  int md = lane_stride(e, var) == 1 ? -1 : moving_dim(e, var);
  for (int d = 0; d < b->rank; d++) // the buffer's own strides
    st[d] = stride(b, d);
  if (md >= 0) { // the transposed copy's
    int64_t s = b->dim[md];
    st[md] = 1;
    for (int d = b->rank - 1; d >= 0; d--)
      if (d != md)
        st[d] = s, s *= b->dim[d];
  }
  for (int d = 0; d < b->rank; d++) {
    Affine a;
    if (!lx_affine(e->idx[d], &a) || (a.c * st[d]) % c->lanes)
      return false;
    for (int i = 0; i < a.n; i++)
      if (a.var[i] != var && (a.coef[i] * st[d]) % c->lanes)
        return false;
  }
  return true;
}

// Load slots a reduction step of the tile takes: one a broadcast, or a
// vector that starts on a cache line's boundary; three a 16-lane vector
// that does not, and so reads two lines. A 4x4 weight gradient tile of a
// 32-channel 16x16 layer (allconv's conv1, bench/models), its 16-lane
// loads of the padded image's rows and of dy starting anywhere, ran at 48%
// of the FMA peak in a loop of its own; the same loads aligned, at 68%. An
// 8-lane vector that does not start on a boundary crosses one 7 times in
// 16: counted as one slot, as AVX2 code measured it (allconv at x86-64-v3
// ran 9% slower with the tiles chosen counting more).
static double load_slots(const Contraction *c, const Tile *t) {
  int64_t pieces = vector_parts(c, t);
  const LExpr *ops[2] = {c->a, c->b};
  int vvar = t->rfactor ? c->r[t->v].var : c->s[t->v].var;
  double crossing = c->lanes * 4 >= 64 ? 3 : 1, slots = 0;
  for (int o = 0; o < 2; o++) {
    bool vec = uses(ops[o], vvar);
    int64_t n = vec ? pieces : 1;
    for (int i = 0; i < 2; i++)
      if (t->t[i] >= 0 && uses(ops[o], c->s[t->t[i]].var))
        n *= t->size[i];
    slots += (double)n * (vec && !vector_aligned(c, ops[o], vvar) ? crossing : 1);
  }
  return slots;
}

// The share of its vectors' lanes the tile's vector dimension fills.
static double lane_fill(const Contraction *c, const Tile *t) {
  int64_t n = t->rfactor ? c->r[t->v].n : c->s[t->v].n;
  int64_t block = t->rfactor ? n : t->vblock;
  int64_t ops = n / block * vector_ops(block, c->lanes) + vector_ops(n % block, c->lanes);
  return (double)n / (double)(c->lanes * ops);
}

// The share of the FMA units' lanes a tile keeps busy: the lanes its
// vector fills (a row of 11 columns takes vectors of 8, 2 and 1 lanes: 11
// of 24), over one plus LOAD_SLOT vector FMA cycles per load slot and
// accumulator. Loads do not hide behind the multiply-adds: fitted to
// allconv's weight gradients on AVX-512, whose tiles along in-channels
// (0.63 slots per accumulator: 8 broadcasts of dy, 2 aligned vectors of x)
// ran 1.2x faster than conv2's along out-channels (1.06: 16 broadcasts of
// x, a vector of dy) and 1.42x faster than conv1's 4x4 along columns
// (1.5: 8 vectors across lines).
#define LOAD_SLOT 0.64

static double tile_use(const Contraction *c, const Tile *t) {
  int64_t loads, acc;
  cost(c, t, &loads, &acc);
  return lane_fill(c, t) / (1 + LOAD_SLOT * load_slots(c, t) / (double)acc) / run_share(c, t);
}

// Elements copied each call so that spatial dimension d's operands are read
// transposed. A weight in an evaluation's forward pass (xc_forward: weights
// fixed between its calls) is copied once, before them: free.
static int64_t transpose_cost(const LFunc *f, const Contraction *c, int d) {
  int64_t n = 0;
  const LExpr *ops[2] = {c->a, c->b};
  for (int o = 0; o < 2; o++) {
    int64_t st = lane_stride(ops[o], c->s[d].var);
    if (st != 0 && st != 1 && !(f->kind == FN_FORWARD && ops[o]->buf->storage == LB_PARAM))
      n += lbuf_numel(ops[o]->buf);
  }
  return n;
}

// Cycles the stores of a tile with spatial dimension d as the vector take
// beyond whole vector stores: none along the output's last dimension; else
// an extract and a store per output, STORE_NEAR cycles when a vector's
// lanes lie within FAR_BYTES, STORE_FAR when they are further apart (a
// vector along the batch: sweep layer 41 of bench/, 16 channels of 21x21
// images, took 5.8 cycles an output with its 16 lanes 450 KB apart, 2.7
// with them 28 KB apart along its channels, both stored lane by lane).
enum { STORE_NEAR = 1, STORE_FAR = 4, FAR_BYTES = 64 << 10 };

static double store_cost(const Contraction *c, int d) {
  if (d == c->ns - 1)
    return 0;
  double outputs = 1;
  for (int i = 0; i < c->ns; i++)
    outputs *= (double)c->s[i].n;
  return outputs * (stride(c->out, d) * c->lanes * 4 > FAR_BYTES ? STORE_FAR : STORE_NEAR);
}

// Another output dimension may make a busier tile than the first choice t
// (the last dimension, or the innermost reduction): a layer of 11 columns
// fills 11 of the 24 lanes its vectors of 8, 2 and 1 take, where its 96
// channels are 12 full vectors; a weight gradient's 4x4 tile along a
// padded image's columns loads across cache lines, where along its
// in-channels (x transposed) it loads aligned vectors and broadcasts dy.
// It is taken when the cycles it saves (at two vector FMAs a cycle, over
// tile_use) exceed what it costs more than t: the copies each reads
// transposed, TRANSPOSE_CYCLES an element (vgg_small's transposed copy of
// conv2's padded input, 663 k elements, took 0.16 ms on two threads: 1.7
// cycles an element), and their stores (store_cost). A 1x1 layer from 1
// channel to 128 on 15 columns, one multiply-add an output, ran 2x faster
// on its columns than on its channels; a 2x2 stride-2 input gradient's
// phases of 15 columns, 32 multiply-adds an output, 1.2x faster on their
// channels. Each output's sum keeps the plain nest's order, whichever
// spatial dimension is the vector. Returns the dimension, or -1 to keep t.
//
// Two choices the model overrates are not made. A first choice along the
// output's rows whose vectors are all full is kept: its stores are whole
// vectors and its taps reread lines in L1 (sweep layer 30 of bench/, 16
// columns, ran 0.79x on its channels, allconv's conv1 0.93x). And the
// batch becomes the vector only when neither the first choice nor any
// other dimension fills BATCH_BELOW of its lanes: cifar10's conv2 input
// gradient, its 14 columns filling 29% of 16 lanes, ran 2x faster on its
// 32 images, where sweep layers 31, 34 and 39 (16 images; their best
// other choice filling 50%, 45% and 100%) ran 0.68-0.81x on theirs.
enum { TRANSPOSE_CYCLES = 2 };
#define BATCH_BELOW 0.4

// What a tile with spatial dimension d as the vector (d < 0: along the
// innermost reduction) costs beyond its multiply-adds.
static double extra_cost(const LFunc *f, const Contraction *c, int d) {
  if (d < 0)
    return 0;
  return TRANSPOSE_CYCLES * (double)transpose_cost(f, c, d) + store_cost(c, d);
}

static int fuller_vector(LFunc *f, int at, Contraction *c, const Tile *t) {
  double fmas = 1;
  for (int i = 0; i < c->ns; i++)
    fmas *= (double)c->s[i].n;
  for (int i = 0; i < c->nr; i++)
    fmas *= (double)c->r[i].n;
  if (!t->rfactor && t->v == c->ns - 1 && c->s[t->v].n % c->lanes == 0)
    return -1; // whole vectors along the output's rows: kept
  Tile first = *t;
  choose(c, &first, false);
  double use = tile_use(c, &first), extra = extra_cost(f, c, t->rfactor ? -1 : t->v);
  int best = -1;
  double best_gain = 0, fill = lane_fill(c, t);
  for (int pass = 0; pass < 2; pass++) // the batch last
    for (int d = 0; d < c->ns; d++) {
      bool batch = is_batch(c, d);
      if ((!t->rfactor && d == t->v) || c->s[d].n < MIN_VECTOR || batch != (pass == 1) ||
          !vector_ok(f, &at, c, d, false))
        continue;
      if (batch && fill >= BATCH_BELOW)
        continue;
      Tile cand = vector_tile(c, d);
      choose(c, &cand, false);
      double gain = fmas / (2 * c->lanes) * (1 / use - 1 / tile_use(c, &cand)) -
                    (extra_cost(f, c, d) - extra);
      if (!batch) {
        double cf = lane_fill(c, &cand);
        fill = cf > fill ? cf : fill;
      }
      if (gain > best_gain)
        best = d, best_gain = gain;
    }
  return best;
}

// The outputs a tile spans along spatial dimension d.
static int64_t block_step(const Tile *t, int d) {
  return !t->rfactor && d == t->v ? t->vblock : d == t->t[0] ? t->size[0] : d == t->t[1] ? t->size[1] : 1;
}

static int64_t blocks_of(const Contraction *c, const Tile *t, int d) {
  int64_t step = block_step(t, d);
  return (c->s[d].n + step - 1) / step;
}

// The order of the tile loops. Each operand is read from beyond L2 once
// for every iteration of the outer loops it does not depend on, unless the
// whole of it stays in L2 meanwhile. When the output's dimensions fall in
// two groups, those one operand reads then those the other reads (a weight
// gradient's out-channels, which only dy reads, then in-channels and taps,
// which only x reads), the group whose operand would cross L2 fewer times
// goes outside: dy of resnet8's b3conv1 at batch 64 (512 KB) stays in L2
// while the in-channels sweep it, where x (1.6 MB) would otherwise stream
// from L3 once per block of out-channels. A sum blocked by images
// (block_sum) has each image's share of both operands in L2 while every
// tile takes it, whatever their order: there an operand beyond L2 that the
// outermost loop does not index is read whole once per block of that loop
// (one thread's share each), and the larger one goes with the outermost
// loop: allconv's stride-2 weight gradients (x's phase planes twice the
// size of dy, both beyond L2) 1.1-1.25x faster split by in-channels than by
// out-channels. The new outermost loop must be as wide as the old one, or
// 8 (the threads split it). Each output's sum is unchanged: only the
// tiles' order moves.
static void nest_order(const Contraction *c, Tile *t) {
  for (int d = 0; d < c->ns; d++)
    t->order[d] = d;
  const LExpr *ops[2] = {c->a, c->b};
  int owner[MAX_SPATIAL], changes = 0;
  for (int d = 0; d < c->ns; d++) {
    bool ua = uses(c->a, c->s[d].var), ub = uses(c->b, c->s[d].var);
    if (ua == ub)
      return; // read by both or by neither: no two groups
    owner[d] = ua ? 0 : 1;
    changes += d > 0 && owner[d] != owner[d - 1];
  }
  if (changes != 1)
    return;
  // traffic(g outer) = size(op g) + size(op h) x (blocks of g -- blocked by
  // images, of g's outermost loop -- unless op h fits in L2)
  int64_t blocks[2] = {1, 1}, lead_blocks[2] = {0, 0}, size[2];
  int lead[2] = {-1, -1};
  for (int d = 0; d < c->ns; d++) {
    blocks[owner[d]] *= blocks_of(c, t, d);
    if (lead[owner[d]] < 0)
      lead[owner[d]] = d, lead_blocks[owner[d]] = blocks_of(c, t, d);
  }
  for (int o = 0; o < 2; o++)
    size[o] = lbuf_bytes(ops[o]->buf);
  bool by_images = block_sum(c, t) > 0;
  int first = owner[0], second = 1 - first;
  double traffic[2];
  for (int g = 0; g < 2; g++)
    traffic[g] = (double)size[g] + (double)size[1 - g] * (size[1 - g] <= L2_BYTES ? 1
                                                          : by_images             ? lead_blocks[g]
                                                                                  : blocks[g]);
  if (traffic[second] >= traffic[first])
    return;
  // The outermost loop, which parallelize splits: keep it as wide (8 will do).
  int64_t wide = blocks_of(c, t, 0) < 8 ? blocks_of(c, t, 0) : 8;
  if (lead_blocks[second] < wide)
    return;
  Tile was = *t;
  int n = 0;
  for (int d = 0; d < c->ns; d++)
    if (owner[d] == second)
      t->order[n++] = d;
  for (int d = 0; d < c->ns; d++)
    if (owner[d] == first)
      t->order[n++] = d;
  if (by_images && !block_sum(c, t))
    *t = was; // the new order's partial sums would not fit: it was counted blocked
}

// The threads split the outermost tile loop (parallelize). When it has
// fewer than 4 blocks (a weight gradient whose vector is its 16 or 96
// output channels: 1 or 3 blocks, all on one thread or split 2 to 1),
// another loop goes outside instead; the others keep their order. Not one
// whose blocks lie within a cache line of each other in the output, if
// any other has 4 blocks or more: a tile along a layer's 16 images, stored
// lane by lane, with its 15 columns split between the threads, had them
// write the same lines (sweep layer 13 of bench/: 3.2x slower forward,
// 2.8x its input gradient, than with its rows outside). Each output's sum
// is unchanged.
static void wide_outside(const Contraction *c, Tile *t) {
  if (blocks_of(c, t, t->order[0]) >= 4)
    return;
  // First the loops whose blocks lie a cache line or more apart in the
  // output, with 4 blocks or more; else any with 8 or more.
  int wide = 0;
  // Last, where the outermost loop is a single block (a vector of all 32
  // out-channels), a loop of 2 blocks or more, its blocks a cache line
  // apart: else one thread does all.
  int64_t least[3] = {4, 8, blocks_of(c, t, t->order[0]) == 1 ? 2 : INT64_MAX};
  for (int pass = 0; pass < 3 && !wide; pass++)
    for (int i = 1; i < c->ns; i++) {
      int d = t->order[i];
      if (pass != 1 && stride(c->out, d) * block_step(t, d) < 16)
        continue;
      if (blocks_of(c, t, d) >= least[pass] &&
          (!wide || blocks_of(c, t, d) > blocks_of(c, t, t->order[wide])))
        wide = i;
    }
  if (!wide)
    return;
  int d = t->order[wide];
  for (int i = wide; i > 0; i--)
    t->order[i] = t->order[i - 1];
  t->order[0] = d;
}

// The accumulators a blocked sum keeps per thread, at most: 256 KB, half
// of L2, on the thread's stack.
#define PART_BYTES ((int64_t)256 << 10)

// Blocking the sum. A weight gradient's tile sums over every image, row and
// column: resnet8's b1conv1 at batch 128 reads dy's block of 4 out-channels
// (128 x 4 x 16 x 16, 512 KB) and an in-channel of x for each of its 96
// tiles, 224 new bytes per 12 multiply-adds, more than L2 feeds (51% of the
// FMA peak). Blocked, the outermost reduction loop (the images) is cut in
// blocks that go outside the tiles: for each block, every tile takes its
// share of the sum from the block's dy (4 KB an image, in L1) and x (41 KB,
// in L2), its accumulators kept in memory between blocks (78%). Each
// accumulator still takes its terms in the plain nest's order: the same
// bits. Taken when
// - the new bytes of the tile's steps over its whole sum exceed L1 (a
//   forward convolution along rows, whose taps reuse lines, stays whole:
//   vgg_small's at 93% of the peak whole, 82% blocked; one along the batch
//   of 4x4 images does not);
// - the accumulators of every tile inside the outermost loop fit PART_BYTES;
// - some block, the fewest images whose sum has 32 or more steps (the
//   accumulators' loads and stores between blocks are then a few percent),
//   is smaller than the whole.
// Returns the images in a block, or 0.
static int64_t block_sum(const Contraction *c, const Tile *t) {
  if (c->ns < 2 || c->nr < 2 || (t->rfactor && t->v == 0))
    return 0;
  int64_t inner = 1, steps = 1;
  for (int i = 1; i < c->nr; i++)
    inner *= c->r[i].n;
  for (int i = 0; i < c->nr; i++)
    steps *= c->r[i].n;
  if (t->rfactor)
    inner /= c->lanes, steps /= c->lanes;
  // The bytes the sum brings in: every load of an rfactor step is new; a
  // row's step (the next tap) mostly reuses the lines of the one before.
  int64_t loads, acc;
  cost(c, t, &loads, &acc);
  int64_t fresh = t->rfactor ? loads * c->lanes * 4 : fresh_bytes(c, t);
  if (inner < 1 || steps * fresh <= L1_BYTES)
    return 0;
  int64_t n = (t->t[0] >= 0 ? t->size[0] : 1) * (t->t[1] >= 0 ? t->size[1] : 1) *
              (t->rfactor ? c->lanes : t->vblock);
  for (int i = 1; i < c->ns; i++)
    n *= blocks_of(c, t, t->order[i]);
  if (n * 4 > PART_BYTES)
    return 0;
  for (int64_t b = 1; b < c->r[0].n; b++)
    if (c->r[0].n % b == 0 && b * inner >= 32)
      return b;
  return 0;
}

static void tile_kernel(LFunc *f, int at, LKernel *k, const LTarget *tg) {
  Contraction c;
  if (!recognise(k, &c))
    return;
  c.lanes = tg->lanes;
  c.max_acc = tg->accumulators;
  c.registers = tg->registers;
  // The vector: the output's last dimension when it has a vector's worth of
  // elements (the stores then are vectors too); else the innermost
  // reduction (rfactor); else the longest other output dimension with 8 or
  // more (a channel, when images are 4x4: operands read transposed, the
  // stores lane by lane once per tile); else a short last dimension.
  int last = c.ns - 1;
  int rv = c.nr - 1;
  int64_t ra = rv >= 0 ? lane_stride(c.a, c.r[rv].var) : -1;
  int64_t rb = rv >= 0 ? lane_stride(c.b, c.r[rv].var) : -1;
  bool rfactor_ok = rv >= 0 && ra >= 0 && ra <= 1 && rb >= 0 && rb <= 1 && (ra || rb) &&
                    c.r[rv].n >= c.lanes;
  int v = -1;
  if (c.s[last].n >= MIN_VECTOR && vector_ok(f, &at, &c, last, false))
    v = last;
  else if (!rfactor_ok) {
    for (int d = 0; d < c.ns; d++)
      if (d != last && c.s[d].n >= MIN_VECTOR && vector_ok(f, &at, &c, d, false) &&
          (v < 0 || c.s[d].n > c.s[v].n))
        v = d;
    if (v < 0 && c.s[last].n >= 4 && vector_ok(f, &at, &c, last, false))
      v = last;
  }
  if (v < 0 && !rfactor_ok)
    return; // stays plain
  Tile t = vector_tile(&c, v);
  int fuller = fuller_vector(f, at, &c, &t);
  if (fuller >= 0)
    t = vector_tile(&c, fuller);
  if (!t.rfactor)
    vector_ok(f, &at, &c, t.v, true);
  choose(&c, &t, false);
  choose_streamed(&c, &t);
  nest_order(&c, &t);
  wide_outside(&c, &t);
  ir_assert(t.edge < 0 || t.order[0] != t.t[1 - t.edge]); // choose took only edges inside
  LKernel *nk = k; // rebuilt in place
  nk->body = NULL;
  nk->nbody = 0;
  int64_t acc_dim[3] = {t.t[0] >= 0 ? t.size[0] : 1, t.t[1] >= 0 ? t.size[1] : 1,
                        t.rfactor ? c.lanes : t.vblock};
  if (t.edge >= 0 && t.edge_size > acc_dim[1 - t.edge])
    acc_dim[1 - t.edge] = t.edge_size;
  Build bd = {.c = &c, .t = &t, .acc = lfunc_buf(f, "acc", DT_F32, 3, acc_dim, LB_LOCAL),
              .vvar = t.rfactor ? c.r[t.v].var : c.s[t.v].var, .skip = steps_run(&c, &t) < 1,
              .step = {t.size[0], t.size[1]}};
  for (int d = 0; d < c.ns; d++)
    bd.hi[d] = c.s[d].n;
  int64_t block = block_sum(&c, &t);
  if (block) {
    int64_t part_dim[2];
    part_dims(&c, &t, part_dim);
    bd.part = lfunc_buf(f, "part", DT_F32, 2, part_dim, LB_LOCAL);
    bd.sum_blocks = c.r[0].n / block;
    bd.sum_role = c.r[0].role;
    if (block == 1) { // r[0] itself goes outside
      bd.sum_var = c.r[0].var;
      memmove(c.r, c.r + 1, --c.nr * sizeof *c.r);
      t.v -= t.rfactor;
    } else { // r[0] = block * (the loop over blocks) + (r[0] within the block)
      bd.sum_var = lk_var(nk);
      int within = lk_var(nk);
      LExpr *r0 = lx_iadd(lx_imul(lx_var(bd.sum_var), block), lx_var(within));
      c.a = lx_subst(c.a, c.r[0].var, r0);
      c.b = lx_subst(c.b, c.r[0].var, lx_copy(r0));
      c.r[0].var = within;
      c.r[0].n = block;
    }
  }
  LStmt *root = ls_loop(lk_var(nk), 0, 1, NULL); // a scratch parent
  spatial(&bd, nk, root, 0, acc_dim[0], acc_dim[1], t.rfactor ? 0 : t.vblock);
  for (int i = 0; i < root->nbody; i++)
    lk_add(nk, root->body[i]);
}

static void tile_function(LFunc *f, const LTarget *tg) {
  for (int i = 0; i < f->nkernels; i++) {
    int before = f->nkernels;
    LKernel *k = f->kernels[i];
    tile_kernel(f, i, k, tg);
    i += f->nkernels - before;
  }
}

void pass_tile(LProgram *p) {
  for (int i = 0; i < p->nfuncs; i++)
    tile_function(p->funcs[i], &p->target);
}

// prefetch: a kernel whose loop v walks a big input block by block --
// iteration v reads rows [a*v + lo, a*v + lo + a) of the buffer's first
// dimension, or within one row a range of its second (a thread's channels)
// -- reads each block along more streams at once (a contraction: a row of
// every channel, phase and tap), or in shorter runs (batch norm's pass over
// the images of one channel: a plane of each, 1 to 4 KB, at a stride of
// all the channels), than the processor's prefetchers follow, so the first
// pass over a block waits on memory, line after line. While iteration v
// computes, it now prefetches block v + 1 in order: one line per iteration
// of the first loop of the nest below v that runs as often as the block has
// lines (spread evenly, some fetched twice), or a few lines (MAX_EACH at
// most, else none) per iteration of the deepest when none does -- the
// deepest but the innermost, whose few multiply-adds a run would pay for
// the prefetch's own instructions. The loops tried for v are those down the
// kernel's main nest: the outermost (a convolution's images), then the one
// inside doing most of the work (a weight gradient's sum over the images).
// The last iteration's next block lies past the buffer: its offsets are
// clamped to the buffer's last element. Prefetches are hints; values, and so
// results, are unchanged.
//
// A block is what iteration v reads: one run of elements, or, where that
// is a narrow part of each channel (a strided 1x1 convolution's one phase
// plane of four), a run per channel (block_of). Buffers smaller than
// MIN_BYTES are left alone (the kernel that wrote one left it in L2), and
// so are buffers a loop around v reads again whole soon after
// (REUSE_BYTES). Runs after
// parallelize, so the loop it splits is one walked (each thread's chunk
// prefetches its own next block, but for its last, which the next thread
// reads), and before plan-memory.
#include "loop.h"

#include <stdlib.h>
#include <string.h>

// A run fetches at most MAX_EACH lines: more would wait on the dozen or so
// misses a core keeps in flight, a stall before the arithmetic rather than
// fetches beside it. Up to MAX_UNROLLED, one statement each.
enum { LINE_BYTES = 64, MIN_BYTES = 256 << 10, MAX_EACH = 32, MAX_UNROLLED = 8 };
// A buffer a loop around its walker reads again whole (a convolution's
// weights, again for every image) is left to the caches when the loop reads
// at most REUSE_BYTES an iteration: it is still near, and fetching its next
// block early only crowds L1. Twice the 512 KB of L2 tile assumes: on
// allconv's AVX2 code, conv3's weights (590 KB again after 616 KB) ran 15%
// slower prefetched, weight gradients' inputs (again for each tile of
// output channels, after 1.2 to 2.6 MB) 10 to 30% faster.
#define REUSE_BYTES ((int64_t)1 << 20)

typedef struct {
  LBuf *buf;
  bool ok;
  int64_t a;      // rows of dimension 0 per iteration of v
  int64_t lo, hi; // the rows an iteration reads, less a*v (inclusive)
  // Dimensions 1..: what an iteration reads, from the loops around v fixed
  // at 0; the part of dimension 1's index in those loops (a thread's block).
  int64_t box_lo[LMAX_RANK], box_hi[LMAX_RANK];
  Affine around;
  bool seen;
} Stream;

typedef struct {
  int v, nvars;
  int64_t *lo, *hi; // by variable, inclusive, while inside its loop (0 around v)
  bool *inside;     // by variable: v's or a loop's inside it
  Stream *s;
  int n;
} Walk;

static Stream *stream_of(Walk *w, LBuf *b) {
  for (int i = 0; i < w->n; i++)
    if (w->s[i].buf == b)
      return &w->s[i];
  w->s = realloc(w->s, sizeof *w->s * (w->n + 1));
  if (!w->s)
    fatal("out of memory");
  Stream *s = &w->s[w->n++];
  *s = (Stream){.buf = b, .ok = true, .lo = INT64_MAX, .hi = INT64_MIN};
  for (int d = 1; d < b->rank; d++)
    s->box_lo[d] = b->dim[d], s->box_hi[d] = -1;
  return s;
}

static void widen(int64_t *lo, int64_t *hi, int64_t l, int64_t h) {
  *lo = l < *lo ? l : *lo;
  *hi = h > *hi ? h : *hi;
}

// Is this load a*v + (terms in the inner loops) in dimension 0 and free of v
// elsewhere, with the same a as the buffer's other loads? The box it reads
// in the other dimensions, for one iteration of the loops around v.
static void note_load(Walk *w, const LExpr *e) {
  if (e->buf->storage == LB_LOCAL || e->buf->storage == LB_CONST ||
      e->buf->storage == LB_SCALAR || e->buf->rank == 0) // (a loss's sum, a step's lr)
    return;
  Stream *s = stream_of(w, e->buf);
  Affine x;
  if (!s->ok || !lx_affine(e->idx[0], &x)) {
    s->ok = false;
    return;
  }
  int64_t a = affine_coef(&x, w->v);
  for (int i = 0; i < x.n; i++)
    if (!w->inside[x.var[i]])
      a = 0; // the rows move with a loop around v
  for (int d = 1; d < e->buf->rank; d++) {
    Affine y = {0};
    int64_t lo = 0, hi = e->buf->dim[d] - 1; // unbounded: all of it
    if (!lx_affine(e->idx[d], &y)) {
      for (int v = 0; v < w->nvars; v++)
        if (!w->inside[v] && lx_uses_var(e->idx[d], v))
          a = 0; // moves with a loop around v, not as a range can say
    }
    if (lx_range(e->idx[d], w->lo, w->hi, &lo, &hi)) {
      lo = lo < 0 ? 0 : lo;
      hi = hi >= e->buf->dim[d] ? e->buf->dim[d] - 1 : hi;
    }
    widen(&s->box_lo[d], &s->box_hi[d], lo, hi);
    if (lx_uses_var(e->idx[d], w->v))
      a = 0;
    Affine around = {0};
    for (int i = 0; i < y.n; i++)
      if (!w->inside[y.var[i]])
        around.var[around.n] = y.var[i], around.coef[around.n++] = y.coef[i];
    if (d > 1 && around.n)
      a = 0; // only a range of dimension 1 may move with the loops around
    if (d == 1 && s->seen && memcmp(&around, &s->around, sizeof around))
      a = 0;
    if (d == 1)
      s->around = around, s->seen = true;
  }
  if (a <= 0 || (s->a && s->a != a)) {
    s->ok = false;
    return;
  }
  s->a = a;
  for (int i = 0; i < x.n; i++)
    if (x.var[i] == w->v)
      x.coef[i] = 0;
  int64_t lo, hi;
  affine_range(&x, w->lo, w->hi, &lo, &hi);
  widen(&s->lo, &s->hi, lo, hi);
}

// What iteration v + 1 reads, as `pieces` runs of `len` elements each:
// dimensions 0 .. k-1 are enumerated over the box the iteration reads (the
// rows a*(v + 1) + lo .. of dimension 0, a thread's range of dimension 1,
// a phase plane of each channel), and a run is dimension k's range with
// all of every dimension after it. Where the box is narrow (one phase of
// four) several runs fetch fewer lines than one run over the whole block.
// More runs (a larger k) only for a quarter fewer lines at least: each
// line's offset then costs a division and a remainder.
typedef struct {
  int k;
  int64_t pieces, len, lines_each;
  int64_t ext[LMAX_RANK + 1];    // dimensions 0..k: the box's extent
  int64_t stride[LMAX_RANK + 1]; // elements a step along each moves
  LExpr *start[LMAX_RANK + 1];   // the box's first index along each (v's next, around)
} Block;

static int64_t block_lines(const Block *b) { return b->pieces * b->lines_each; }

static bool block_of(const LKernel *k, const Stream *s, const LStmt *walker, Block *out) {
  const LBuf *b = s->buf;
  if (!s->ok || s->lo < 0 || s->hi - s->lo >= s->a || lbuf_bytes(b) < MIN_BYTES ||
      lk_writes(k, b, true))
    return false;
  int64_t per_line = LINE_BYTES / dtype_bytes(b->dtype);
  Block x = {0};
  int64_t st = 1;
  for (int d = b->rank - 1; d >= 0; st *= b->dim[d], d--)
    x.stride[d] = st;
  x.ext[0] = s->a;
  for (int d = 1; d < b->rank; d++)
    x.ext[d] = s->box_hi[d] - s->box_lo[d] + 1;
  *out = (Block){0};
  for (int kk = 0; kk < b->rank; kk++) {
    x.k = kk;
    x.pieces = 1;
    for (int d = 0; d < kk; d++)
      x.pieces *= x.ext[d];
    x.len = x.ext[kk] * x.stride[kk];
    // Runs apart start anywhere in a line: one more each.
    x.lines_each = (x.len + per_line - 1) / per_line + (x.pieces > 1);
    if (!out->pieces || (x.pieces == out->pieces ? block_lines(&x) < block_lines(out)
                                                 : block_lines(&x) <= block_lines(out) * 3 / 4))
      *out = x;
  }
  // The first index along each enumerated dimension and the run's.
  out->start[0] = lx_iaddc(lx_imul(lx_var(walker->var), s->a), s->a + s->lo);
  for (int d = 1; d <= out->k; d++)
    out->start[d] = lx_i64(s->box_lo[d]);
  if (out->k >= 1)
    for (int i = 0; i < s->around.n; i++)
      out->start[1] = lx_iadd(out->start[1], lx_imul(lx_var(s->around.var[i]), s->around.coef[i]));
  return true;
}

// The element that line `line` (0 .. block_lines - 1) of the block fetches.
static LExpr *block_line(const Block *x, int64_t per_line, LExpr *line) {
  LExpr *piece = x->pieces > 1 ? lx_bin(LX_DIV, lx_copy(line), lx_i64(x->lines_each)) : NULL;
  LExpr *within = x->pieces > 1 ? lx_bin(LX_REM, line, lx_i64(x->lines_each)) : line;
  LExpr *off = lx_imul(lx_copy(x->start[x->k]), x->stride[x->k]);
  int64_t below = 1; // runs between two steps along dimension d
  for (int d = x->k - 1; d >= 0; below *= x->ext[d], d--) {
    LExpr *at = lx_copy(x->start[d]);
    if (x->ext[d] > 1) {
      LExpr *i = below > 1 ? lx_bin(LX_DIV, lx_copy(piece), lx_i64(below)) : lx_copy(piece);
      if (d > 0)
        i = lx_bin(LX_REM, i, lx_i64(x->ext[d]));
      at = lx_iadd(at, i);
    }
    off = lx_iadd(lx_imul(at, x->stride[d]), off);
  }
  return lx_iadd(off, lx_imul(within, per_line));
}

static void walk_expr(Walk *w, const LExpr *e) {
  if (!e)
    return;
  if (e->kind == LX_LOAD) {
    note_load(w, e);
    for (int d = 0; d < e->buf->rank; d++)
      walk_expr(w, e->idx[d]);
  }
  walk_expr(w, e->a);
  walk_expr(w, e->b);
  walk_expr(w, e->c);
}

static void walk_stmt(Walk *w, const LStmt *s) {
  if (s->kind == LS_LOOP)
    w->lo[s->var] = s->lo, w->hi[s->var] = s->hi - 1, w->inside[s->var] = true;
  walk_expr(w, s->cond);
  walk_expr(w, s->value);
  for (int d = 0; s->kind == LS_STORE && d < s->buf->rank; d++)
    walk_expr(w, s->idx[d]);
  for (int i = 0; i < s->nbody; i++)
    walk_stmt(w, s->body[i]);
}

// The loop of s's body that does most of the work (a tile's reduction
// rather than the loops that zero and store its accumulators; not one of
// this pass's), or NULL; loops of vector lanes or unrolled are not loops at
// run time. A loop inside a guard on s's own variable counts too (tile's
// split of s into whole blocks and a remainder): then [*lo, *hi) narrows to
// the part of s's range that runs it.
static LStmt *main_loop(const LStmt *s, int64_t *lo, int64_t *hi) {
  LStmt *best = NULL;
  int64_t best_lo = s->lo, best_hi = s->hi;
  for (int i = 0; i < s->nbody; i++) {
    LStmt *c = s->body[i];
    int64_t l = s->lo, h = s->hi;
    if (c->kind == LS_IF && c->nbody == 1 && c->cond->a && c->cond->b &&
        lx_is_var(c->cond->a, s->var) && c->cond->b->kind == LX_CONST) {
      int64_t k = c->cond->b->i;
      if (c->cond->kind == LX_LT)
        h = k < h ? k : h;
      else if (c->cond->kind == LX_GE)
        l = k > l ? k : l;
      else
        continue;
      c = c->body[0];
    }
    if (c->kind == LS_LOOP && !(c->flags & (LF_VECTOR | LF_UNROLL)) && h > l && ls_work(c) > 0 &&
        (!best || ls_work(c) * (h - l) > ls_work(best) * (best_hi - best_lo)))
      best = c, best_lo = l, best_hi = h;
  }
  *lo = best_lo, *hi = best_hi;
  return best;
}

// Has l no loop of more than one iteration inside (down its main nest)?
static bool innermost(const LStmt *l) {
  int64_t lo, hi;
  while ((l = main_loop(l, &lo, &hi)))
    if (l->hi - l->lo > 1)
      return false;
  return true;
}

static void add_first(LStmt *parent, LStmt *s) {
  ls_add(parent, s);
  memmove(parent->body + 1, parent->body, sizeof *parent->body * (parent->nbody - 1));
  parent->body[0] = s;
}

static bool prefetch_stream(LKernel *k, LStmt *outer, const Stream *s, const Block *x) {
  LBuf *b = s->buf;
  int64_t per_line = LINE_BYTES / dtype_bytes(b->dtype);
  int64_t lines = block_lines(x);
  // Down the nest to the first loop that runs as often as the block has
  // lines (or the deepest there is).
  // lo[d], hi[d]: the range of path[d]'s variable whose iterations run
  // path[d + 1] (all of it but for a guard).
  LStmt *at = outer, *path[4 * LMAX_RANK];
  int64_t lo[4 * LMAX_RANK], hi[4 * LMAX_RANK];
  int np = 0;
  int64_t runs = 1, l, h;
  // Never into a contraction's innermost loop: a few multiply-adds a run,
  // the prefetch's own instructions would cost them time. Into another
  // kernel's when each of its runs stores a line's worth (batch norm's rows
  // of 32: 64 lines an image are 2 a row, where 64 at once would stall).
  for (LStmt *next; runs < lines && np < 4 * LMAX_RANK && (next = main_loop(at, &l, &h)) &&
                    (!innermost(next) ||
                     (!k->flops && ls_work(next) / (next->hi - next->lo) >= per_line));) {
    if (np > 0) {
      runs = runs / (hi[np - 1] - lo[np - 1]) * (h - l);
      lo[np - 1] = l, hi[np - 1] = h;
    }
    runs *= next->hi - next->lo;
    path[np] = at = next;
    lo[np] = next->lo, hi[np] = next->hi;
    np++;
  }
  // i: the run's number, 0 .. runs - 1.
  LExpr *i = lx_i64(0);
  for (int64_t d = np - 1, mult = 1; d >= 0; mult *= hi[d] - lo[d], d--)
    i = lx_iadd(i, lx_iaddc(lx_imul(lx_var(path[d]->var), mult), -lo[d] * mult));
  // A run fetches line i * lines / runs of block v + 1, or lines
  // i * each .. i * each + each - 1.
  LStmt *put = at;
  LExpr *line;
  if (runs >= lines) {
    line = lx_bin(LX_DIV, lx_imul(i, lines), lx_i64(runs));
  } else {
    int64_t each = (lines + runs - 1) / runs;
    if (each > MAX_EACH)
      return false;
    put = ls_loop(lk_var(k), 0, each, "line");
    put->flags = each <= MAX_UNROLLED ? LF_UNROLL : 0;
    line = lx_iadd(lx_imul(i, each), lx_var(put->var));
    add_first(at, put);
  }
  LExpr *off = block_line(x, per_line, line);
  LStmt *pf = ls_prefetch(b, lx_bin(LX_MIN, off, lx_i64(lbuf_numel(b) - 1)));
  if (put == at)
    add_first(at, pf);
  else
    ls_add(put, pf);
  return true;
}

static Walk walk(const LKernel *k, const LStmt *l) {
  Walk w = {l->var, k->nvars + 1, xcalloc(k->nvars + 1, 8), xcalloc(k->nvars + 1, 8),
            xcalloc(k->nvars + 1, 1), NULL, 0};
  walk_stmt(&w, l);
  return w;
}

static void walk_free(Walk *w) { free(w->lo), free(w->hi), free(w->inside), free(w->s); }

// Does a load of b in e (s) have an index that moves with variable v?
static bool expr_moves(const LExpr *e, const LBuf *b, int v) {
  if (!e)
    return false;
  for (int d = 0; e->kind == LX_LOAD && d < e->buf->rank; d++)
    if ((e->buf == b && lx_uses_var(e->idx[d], v)) || expr_moves(e->idx[d], b, v))
      return true;
  return expr_moves(e->a, b, v) || expr_moves(e->b, b, v) || expr_moves(e->c, b, v);
}

static bool moves(const LStmt *s, const LBuf *b, int v) {
  if (expr_moves(s->cond, b, v) || expr_moves(s->value, b, v))
    return true;
  for (int d = 0; s->kind == LS_STORE && d < s->buf->rank; d++)
    if (expr_moves(s->idx[d], b, v))
      return true;
  for (int i = 0; i < s->nbody; i++)
    if (moves(s->body[i], b, v))
      return true;
  return false;
}

// The bytes an iteration of loop l reads, about: each buffer it loads,
// whole, or its share when its indices move with l.
static int64_t bytes_per_iteration(const LKernel *k, const LStmt *l) {
  Walk w = walk(k, l);
  int64_t sum = 0;
  for (int i = 0; i < w.n; i++)
    sum += lbuf_bytes(w.s[i].buf) / (moves(l, w.s[i].buf, l->var) ? l->hi - l->lo : 1);
  walk_free(&w);
  return sum;
}

// Is b read again whole by a loop around spine[j], soon enough to be in
// cache?
static bool reused(const LKernel *k, LStmt *const *spine, int j, const LBuf *b) {
  for (int i = j - 1; i >= 0; i--)
    if (spine[i]->hi - spine[i]->lo > 1 && !moves(spine[i], b, spine[i]->var))
      return bytes_per_iteration(k, spine[i]) <= REUSE_BYTES;
  return false;
}

// The loops down the kernel's main nest, outermost first: each walks the
// blocks of the inputs whose first dimension it runs over and that no loop
// around it walks already. A contraction's, and another kernel's below its
// outermost loop (batch norm's images inside its channels; a copy's
// outermost loop over the images streams through memory in order, which
// the processor follows).
static void prefetch(LKernel *k, bool *done) {
  if (k->nbody != 1 || k->body[0]->kind != LS_LOOP)
    return;
  LStmt *spine[4 * LMAX_RANK];
  int n = 0;
  int64_t lo, hi;
  for (LStmt *l = k->body[0]; l && !(l->flags & (LF_VECTOR | LF_UNROLL)) && n < 4 * LMAX_RANK;
       l = main_loop(l, &lo, &hi))
    spine[n++] = l;
  for (int j = 0; j < n; j++) {
    if (spine[j]->hi - spine[j]->lo < 2 || (!k->flops && j == 0))
      continue; // (a copy's outermost loop streams through memory in order)
    Walk w = walk(k, spine[j]);
    for (int i = 0; i < w.n; i++) {
      Block x;
      if (!done[w.s[i].buf->id] && block_of(k, &w.s[i], spine[j], &x) &&
          !reused(k, spine, j, w.s[i].buf) && prefetch_stream(k, spine[j], &w.s[i], &x))
        done[w.s[i].buf->id] = true;
    }
    walk_free(&w);
  }
}

void pass_prefetch(LProgram *p) {
  for (int f = 0; f < p->nfuncs; f++)
    for (int i = 0; i < p->funcs[f]->nkernels; i++) {
      bool *done = xcalloc(p->funcs[f]->nbufs + 1, 1);
      prefetch(p->funcs[f]->kernels[i], done);
      free(done);
    }
}

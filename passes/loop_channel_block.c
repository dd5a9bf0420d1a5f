// channel-block: per-channel kernels (batch norm's statistics and
// normalisation, its gradients, a bias gradient) loop over the channels
// and, for each, over the images: channel c's plane of H x W elements in
// image n, then its plane in image n + 1, C planes further on. Planes
// smaller than a page (16 x 16 floats, 1 KB; 8 x 8, 256 bytes) make that a
// scatter of short runs the hardware prefetchers do not follow, all a
// power of two apart, in a few cache sets (allconv's 8x8 layer of 64
// channels: runs of 256 bytes 16 KB apart). Such a kernel is cut in blocks
// of B channels: each statement of the channel loop's body runs for the B
// channels of the block in turn, and a statement that loops over the
// images takes the block inside that loop -- per image, B planes in a row.
// B is the largest divisor of C up to C / 8 (the threads split the
// blocks) whose planes fill at most a page, 2 or more. The kernel's
// locals (a channel's mean, its sums' lanes) get one copy per channel of
// the block.
//
// Taken when the channel loop (lowering's role "c") is the kernel's one
// statement and every
// buffer it writes is, at every access, indexed by the channel at one
// dimension (so channels touch disjoint elements of what is written):
// then each channel's values are computed by the same operations in the
// same order, and the results are bit for bit those of the unblocked loop.
// Runs after fuse-loops (one loop per direction of a batch norm) and before
// parallelize, which splits the blocks across threads.
#include "loop.h"

#include <stdlib.h>
#include <string.h>

enum { PAGE_BYTES = 4096, MIN_BLOCKS = 8, MAX_LOCAL_BYTES = 64 << 10, MAX_LOCALS = 32 };

// The dimension of an access indexed by exactly v, or -1.
static int var_dim(const LBuf *b, LExpr *const *idx, int v) {
  for (int d = 0; d < b->rank; d++)
    if (lx_is_var(idx[d], v))
      return d;
  return -1;
}

typedef struct {
  int c;              // the channel loop's variable
  const LBuf **wrote; // roots of the non-local buffers the kernel stores to
  int *wrote_dim;     // the dimension the channel indexes at their first store
  int nwrote;
  LBuf *local[MAX_LOCALS], *block[MAX_LOCALS]; // locals, and their copies per channel
  int nlocal;
  int64_t plane;      // bytes of the largest run a channel access covers
  bool ok;
} Scan;

// The index of b's root among the written buffers, or -1.
static int wrote(const Scan *s, const LBuf *b) {
  for (int i = 0; i < s->nwrote; i++)
    if (s->wrote[i] == lbuf_root(b))
      return i;
  return -1;
}

// Notes a buffer access: locals to copy, the plane of a channel access, and
// whether a written buffer is read or written anywhere but at the channel,
// in the dimension its first store has it (second walk, `check`).
static void access(Scan *s, const LBuf *b, LExpr *const *idx, bool store, bool check) {
  if (b->storage == LB_LOCAL) {
    for (int i = 0; i < s->nlocal; i++)
      if (s->local[i] == b)
        return;
    if (s->nlocal == MAX_LOCALS || b->rank == LMAX_RANK)
      s->ok = false;
    else
      s->local[s->nlocal++] = (LBuf *)b;
    return;
  }
  int d = var_dim(b, idx, s->c);
  if (!check) {
    if (store && wrote(s, b) < 0) {
      s->wrote = realloc(s->wrote, sizeof *s->wrote * (s->nwrote + 1));
      s->wrote_dim = realloc(s->wrote_dim, sizeof *s->wrote_dim * (s->nwrote + 1));
      if (!s->wrote || !s->wrote_dim)
        fatal("out of memory");
      s->wrote[s->nwrote] = lbuf_root(b);
      s->wrote_dim[s->nwrote++] = d;
    }
    if (d >= 0) {
      int64_t run = dtype_bytes(b->dtype);
      for (int i = d + 1; i < b->rank; i++)
        run *= b->dim[i];
      if (run > s->plane)
        s->plane = run;
    }
    return;
  }
  int w = wrote(s, b);
  if (w >= 0 && (d < 0 || d != s->wrote_dim[w] || b != lbuf_root(b)))
    s->ok = false; // a written buffer away from the channel, or through an alias
}

static void scan_expr(Scan *s, const LExpr *e, bool check) {
  if (!e)
    return;
  if (e->kind == LX_LOAD) {
    access(s, e->buf, e->idx, false, check);
    for (int d = 0; d < e->buf->rank; d++)
      scan_expr(s, e->idx[d], check);
  }
  scan_expr(s, e->a, check), scan_expr(s, e->b, check), scan_expr(s, e->c, check);
}

static void scan_stmt(Scan *s, const LStmt *st, bool check) {
  scan_expr(s, st->cond, check);
  if (st->kind == LS_STORE) {
    access(s, st->buf, st->idx, true, check);
    for (int d = 0; d < st->buf->rank; d++)
      scan_expr(s, st->idx[d], check);
    scan_expr(s, st->value, check);
  }
  for (int i = 0; i < st->nbody; i++)
    scan_stmt(s, st->body[i], check);
}

// The block: the largest divisor of C up to C / MIN_BLOCKS whose planes
// fill at most a page; 1 when none is 2 or more.
static int64_t block_size(int64_t C, int64_t plane) {
  for (int64_t b = C / MIN_BLOCKS; b >= 2; b--)
    if (C % b == 0 && b * plane <= PAGE_BYTES)
      return b;
  return 1;
}

// An access of a local becomes its block copy's, the channel within the
// block (variable cp) its first index.
static void to_copy(const Scan *s, LBuf **buf, LExpr **idx, int cp) {
  for (int i = 0; i < s->nlocal; i++)
    if (*buf == s->local[i]) {
      memmove(idx + 1, idx, sizeof *idx * (size_t)(*buf)->rank);
      idx[0] = lx_var(cp);
      *buf = s->block[i];
      return;
    }
}

static void to_block_expr(LExpr *e, const Scan *s, int cp) {
  if (!e)
    return;
  if (e->kind == LX_LOAD) {
    for (int d = 0; d < e->buf->rank; d++)
      to_block_expr(e->idx[d], s, cp);
    to_copy(s, &e->buf, e->idx, cp);
  }
  to_block_expr(e->a, s, cp), to_block_expr(e->b, s, cp), to_block_expr(e->c, s, cp);
}

static void to_block(LStmt *st, const Scan *s, int cp) {
  to_block_expr(st->cond, s, cp);
  if (st->kind == LS_STORE) {
    for (int d = 0; d < st->buf->rank; d++)
      to_block_expr(st->idx[d], s, cp);
    to_block_expr(st->value, s, cp);
    to_copy(s, &st->buf, st->idx, cp);
  }
  for (int i = 0; i < st->nbody; i++)
    to_block(st->body[i], s, cp);
}

static bool image_loop(const LStmt *st) {
  return st->kind == LS_LOOP && !(st->flags & (LF_VECTOR | LF_UNROLL | LF_PARALLEL));
}

static void block_kernel(LFunc *f, LKernel *k) {
  if (k->flops || k->deferred || k->nbody != 1 || !image_loop(k->body[0]) ||
      k->body[0]->lo != 0 || !k->body[0]->role || strcmp(k->body[0]->role, "c"))
    return;
  LStmt *l = k->body[0];
  int64_t C = l->hi;
  Scan s = {.c = l->var, .ok = true};
  for (int i = 0; i < l->nbody; i++)
    scan_stmt(&s, l->body[i], false);
  for (int i = 0; i < l->nbody && s.ok; i++)
    scan_stmt(&s, l->body[i], true);
  bool images = false;
  for (int i = 0; i < l->nbody; i++)
    images |= image_loop(l->body[i]);
  int64_t B = s.plane > 0 ? block_size(C, s.plane) : 1, local_bytes = 0;
  for (int i = 0; i < s.nlocal; i++)
    local_bytes += B * lbuf_bytes(s.local[i]);
  free(s.wrote), free(s.wrote_dim);
  if (!s.ok || !images || B < 2 || s.nwrote == 0 || local_bytes > MAX_LOCAL_BYTES)
    return;
  for (int i = 0; i < s.nlocal; i++) {
    const LBuf *x = s.local[i];
    int64_t dim[LMAX_RANK] = {B};
    memcpy(dim + 1, x->dim, sizeof *dim * (size_t)x->rank);
    s.block[i] = lfunc_buf(f, x->name, x->dtype, x->rank + 1, dim, LB_LOCAL);
  }
  // c = B * cb + cp: the loop runs over the blocks; a statement that loops
  // over the images runs each of them for the block's channels, the others
  // (a run of them in one loop) for the channels in turn.
  int cb = lk_var(k);
  LStmt **body = l->body, *run = NULL;
  int n = l->nbody;
  l->body = NULL, l->nbody = 0;
  for (int i = 0; i < n; i++) {
    LStmt *st = body[i];
    if (image_loop(st) || !run) {
      run = ls_loop(lk_var(k), 0, B, "c");
      ls_add(l, image_loop(st) ? st : run);
    }
    ls_subst(st, l->var, lx_iadd(lx_imul(lx_var(cb), B), lx_var(run->var)));
    to_block(st, &s, run->var);
    if (image_loop(st)) {
      for (int j = 0; j < st->nbody; j++)
        ls_add(run, st->body[j]);
      free(st->body);
      st->body = NULL, st->nbody = 0;
      ls_add(st, run);
      run = NULL;
    } else {
      ls_add(run, st);
    }
  }
  free(body);
  l->var = cb;
  l->hi = C / B;
}

void pass_channel_block(LProgram *p) {
  for (int f = 0; f < p->nfuncs; f++)
    for (int i = 0; i < p->funcs[f]->nkernels; i++)
      block_kernel(p->funcs[f], p->funcs[f]->kernels[i]);
}

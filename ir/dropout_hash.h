// The dropout mask as a pure function of (seed, salt, step, flat index),
// shared by the reference evaluator and generated code so both drop the same
// elements. No random state is carried between steps: a mask is recomputed,
// not stored. The seed is the run's --seed, so it governs the masks as
// torch.manual_seed does PyTorch's (the masks themselves differ from
// PyTorch's: its generator is not reproduced).
#ifndef XENTCC_DROPOUT_HASH_H
#define XENTCC_DROPOUT_HASH_H

#include <stdbool.h>
#include <stdint.h>

// MurmurHash3's 32-bit finaliser: a bijection on uint32 with full avalanche.
static inline uint32_t dropout_fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

// Per (run, layer, step): seed is the run's seed, salt the dropout_mask
// node's `salt` attribute, step the optimizer step (from 1).
// Loop-invariant in generated code.
static inline uint32_t dropout_key(uint32_t seed, uint32_t salt, uint32_t step) {
  return dropout_fmix32(salt * 0x9e3779b1u ^ dropout_fmix32(step ^ dropout_fmix32(seed)));
}

// A uniform 24-bit number for element `index` (row-major flat index).
static inline uint32_t dropout_bits(uint32_t key, uint32_t index) {
  return dropout_fmix32(key + index * 0x9e3779b1u) >> 8;
}

// An element is kept iff dropout_bits(...) >= dropout_threshold(p): dropped
// with probability floor(p * 2^24) / 2^24, i.e. p to within 6e-8. The
// threshold is computed once, in double, at compile time.
static inline uint32_t dropout_threshold(double p) { return (uint32_t)(p * 16777216.0); }

static inline bool dropout_keep(uint32_t seed, uint32_t salt, uint32_t step, uint32_t index,
                                uint32_t threshold) {
  return dropout_bits(dropout_key(seed, salt, step), index) >= threshold;
}

#endif

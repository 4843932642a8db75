/*
 * Deterministic PRNG (splitmix64 seeding + xoshiro256**).
 *
 * It lives here rather than using PostgreSQL's pg_prng because the core must
 * build without PostgreSQL headers, and because training must be
 * bit-reproducible from a seed whatever the host does with its own generator.
 */
#ifndef BST_RNG_H
#define BST_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct BstRng {
    uint64_t s[4];
} BstRng;

void bst_rng_seed(BstRng *rng, uint64_t seed);
uint64_t bst_rng_next(BstRng *rng);
/* Uniform in [0, 1) with 24 random bits (every value exactly representable). */
float bst_rng_uniform(BstRng *rng);
/* Uniform in [0, bound), bound >= 1: exactly, by rejection. */
uint64_t bst_rng_below(BstRng *rng, uint64_t bound);
/* Uniform Fisher-Yates permutation of a[0..n). */
void bst_rng_shuffle_u32(BstRng *rng, uint32_t *a, size_t n);

/*
 * Random access to a stream: output i of the SplitMix64 generator seeded with
 * key.  Dropout draws one key per layer and step from a BstRng and then any
 * thread can produce any part of the mask: the mask does not depend on how
 * the work is split.
 */
#define BST_RNG_GAMMA 0x9e3779b97f4a7c15ULL
static inline uint64_t bst_rng_at(uint64_t key, uint64_t i)
{
    uint64_t z = key + (i + 1) * BST_RNG_GAMMA;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/*
 * The key of the same stream from output n on: bst_rng_at(bst_rng_skip(key,
 * n), i) == bst_rng_at(key, n + i), since the counter enters linearly.  A
 * call on a part of a batch draws the part of the whole batch's mask.
 */
static inline uint64_t bst_rng_skip(uint64_t key, uint64_t n)
{
    return key + n * BST_RNG_GAMMA;
}

#endif

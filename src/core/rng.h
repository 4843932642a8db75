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
/* Uniform Fisher-Yates permutation of a[0..n). */
void bst_rng_shuffle_u32(BstRng *rng, uint32_t *a, size_t n);

#endif

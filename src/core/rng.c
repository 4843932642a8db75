#include "rng.h"

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void bst_rng_seed(BstRng *rng, uint64_t seed)
{
    /* splitmix64 expands any seed (including 0) into a non-zero xoshiro state. */
    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&seed);
}

uint64_t bst_rng_next(BstRng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float bst_rng_uniform(BstRng *rng)
{
    return (float)(bst_rng_next(rng) >> 40) * (1.0f / 16777216.0f);
}

/* Modulo with rejection of the incomplete top range, so the shuffle is exactly uniform. */
uint64_t bst_rng_below(BstRng *rng, uint64_t bound)
{
    uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    for (;;) {
        uint64_t r = bst_rng_next(rng);
        if (r < limit)
            return r % bound;
    }
}

void bst_rng_shuffle_u32(BstRng *rng, uint32_t *a, size_t n)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)bst_rng_below(rng, i);
        uint32_t tmp = a[i - 1];
        a[i - 1] = a[j];
        a[j] = tmp;
    }
}

/*
 * Sixteen floats as one value (the vector extension of gcc and clang), for the loops whose
 * parallelism runs across separate sums rather than along one row: the 16
 * query-key dot products of a window and head in the attention, and their
 * 16 exponentials.  A plain loop over one dot product of 62 floats leaves
 * most of a vector register idle and ends in a scalar tail and a
 * horizontal sum for every product; here one vector add advances 16
 * products at once, and 16 horizontal sums cost 15 vector adds together.
 *
 * Each copy of a loop (simd.h) lowers these operations to its own
 * instruction set (one AVX-512 register, two AVX ones, four SSE ones), lane
 * by lane the same additions and multiplications (no FMA: -ffp-contract=off),
 * so every copy computes the same bits.
 */
#ifndef BST_VEC16_H
#define BST_VEC16_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "simd.h"

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

BST_SIMD_INLINE v16f v16_load(const float *p)
{
    v16f v;
    memcpy(&v, p, sizeof(v));
    return v;
}

BST_SIMD_INLINE void v16_store(float *p, v16f v)
{
    memcpy(p, &v, sizeof(v));
}

/* The lanes of a v16f vector's square roots: each copy of the loop
 * (simd.h) compiles it to its own vector instruction (one vsqrtps on
 * AVX-512), correctly rounded as sqrtf is, so the same bits. */
BST_SIMD_INLINE v16f v16_sqrt(v16f x)
{
    v16f r;
    for (int l = 0; l < 16; l++)
        r[l] = sqrtf(x[l]);
    return r;
}

/* Lanes where m is all ones from a, the others from b. */
BST_SIMD_INLINE v16f v16_select(v16i m, v16f a, v16f b)
{
    return (v16f)(((v16i)a & m) | ((v16i)b & ~m));
}

/*
 * Lane n of the result = the sum of a_n's 16 lanes, for all n at once: four rounds
 * of adding each vector's neighbouring lane groups (1, 2, 4, then 8 lanes
 * wide) while interleaving two vectors into one.  Every sum is the same
 * pairwise tree, ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)) + ...,
 * with no lane left over.
 */
BST_SIMD_INLINE v16f v16_sums(v16f a0, v16f a1, v16f a2, v16f a3, v16f a4, v16f a5, v16f a6,
                              v16f a7, v16f a8, v16f a9, v16f a10, v16f a11, v16f a12, v16f a13,
                              v16f a14, v16f a15)
{
    /* Named values throughout: gcc keeps arrays of vectors in memory. */
#define V16_PAIRS_1(x, y)                                                                  \
    (__builtin_shufflevector(x, y, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) + \
     __builtin_shufflevector(x, y, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31))
#define V16_PAIRS_2(x, y)                                                                  \
    (__builtin_shufflevector(x, y, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) + \
     __builtin_shufflevector(x, y, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31))
#define V16_PAIRS_4(x, y)                                                                  \
    (__builtin_shufflevector(x, y, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) + \
     __builtin_shufflevector(x, y, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31))
#define V16_PAIRS_8(x, y)                                                                  \
    (__builtin_shufflevector(x, y, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) + \
     __builtin_shufflevector(x, y, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31))
    const v16f b0 = V16_PAIRS_1(a0, a1), b1 = V16_PAIRS_1(a2, a3), b2 = V16_PAIRS_1(a4, a5),
               b3 = V16_PAIRS_1(a6, a7), b4 = V16_PAIRS_1(a8, a9), b5 = V16_PAIRS_1(a10, a11),
               b6 = V16_PAIRS_1(a12, a13), b7 = V16_PAIRS_1(a14, a15);
    const v16f c0 = V16_PAIRS_2(b0, b1), c1 = V16_PAIRS_2(b2, b3), c2 = V16_PAIRS_2(b4, b5),
               c3 = V16_PAIRS_2(b6, b7);
    const v16f d0 = V16_PAIRS_4(c0, c1), d1 = V16_PAIRS_4(c2, c3);
    return V16_PAIRS_8(d0, d1);
#undef V16_PAIRS_8
#undef V16_PAIRS_4
#undef V16_PAIRS_2
#undef V16_PAIRS_1
}

/* Every lane of a 4 x 4 block (lane 4i + j) with its row's neighbour j ^ 1,
 * and with j ^ 2: the shuffles that reduce a block along its rows. */
BST_SIMD_INLINE v16f v16_swap1(v16f x)
{
    return __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
}

BST_SIMD_INLINE v16f v16_swap2(v16f x)
{
    return __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
}

/*
 * e^x lane by lane, within 2 units in the last place for x in [-87.3, 88]
 * (test/c/test_gradients.c, test_exp16); e^-87.3 (the smallest normal
 * float) below that range, e^88 above it.  Cephes's expf:
 * x = n ln 2 + r with |r| <= ln(2)/2, e^r by a degree-7 polynomial (Moshier's
 * coefficients), 2^n put into the exponent bits.  n is rounded by adding
 * and subtracting 1.5 * 2^23, which leaves the nearest integer in any
 * rounding of the float unit at that magnitude.  NaN in, NaN out is not
 * promised (the attention's scores are finite).
 */
BST_SIMD_INLINE v16f v16_exp(v16f x)
{
    const v16f zero = {0}, lo = zero - 87.33654f, hi = zero + 88.0f;
    const float round = 12582912.0f;
    x = v16_select(x < lo, lo, x);
    x = v16_select(x > hi, hi, x);
    const v16f n = (x * 1.44269504088896341f + round) - round;
    v16f r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v16f p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const v16f y = (p * (r * r) + r) + 1.0f;
    const v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
    return y * (v16f)bits;
}

#endif

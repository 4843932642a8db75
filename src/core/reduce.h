/*
 * Float reductions in a fixed order, shared by the layers (layers.c) and the
 * recommendations (candidates.c), so that a score rounds the same wherever
 * it is computed.
 *
 * Compilers may not reorder a single running sum without -ffast-math, which
 * leaves it scalar.  Eight independent partial sums vectorise at -O2 and
 * also round better than one long chain.  Always inlined, so that each copy
 * of a loop (simd.h) gets its own instruction set's.
 */
#ifndef BST_REDUCE_H
#define BST_REDUCE_H

#include "simd.h"

/* How every such sum ends: the tail's sum s, then the eight partial sums,
 * pairwise. */
BST_SIMD_INLINE float total8(float s, const float acc[8])
{
    return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

BST_SIMD_INLINE float dot8(const float *a, const float *b, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    float s = 0.0f;
    for (; i < n; i++)
        s += a[i] * b[i];
    return total8(s, acc);
}

/*
 * dot8(a, b[k], n) for k < 4, each by dot8's operations in dot8's order (so
 * the same bits), interleaved: one dot8 is a chain of dependent adds, and
 * four independent chains keep the vector units busy while each waits.
 */
BST_SIMD_INLINE void dot8x4(float out[4], const float *a, const float *const b[4], int n)
{
    const float *b0 = b[0], *b1 = b[1], *b2 = b[2], *b3 = b[3];
    float acc0[8] = {0}, acc1[8] = {0}, acc2[8] = {0}, acc3[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int j = 0; j < 8; j++)
            acc0[j] += a[i + j] * b0[i + j];
        for (int j = 0; j < 8; j++)
            acc1[j] += a[i + j] * b1[i + j];
        for (int j = 0; j < 8; j++)
            acc2[j] += a[i + j] * b2[i + j];
        for (int j = 0; j < 8; j++)
            acc3[j] += a[i + j] * b3[i + j];
    }
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    for (; i < n; i++) {
        s0 += a[i] * b0[i];
        s1 += a[i] * b1[i];
        s2 += a[i] * b2[i];
        s3 += a[i] * b3[i];
    }
    out[0] = total8(s0, acc0);
    out[1] = total8(s1, acc1);
    out[2] = total8(s2, acc2);
    out[3] = total8(s3, acc3);
}

/* out[j] = dot8(a, rows + j * stride, n) for j in [j0, j1): four at a time
 * (dot8x4), the rest one by one. */
BST_SIMD_INLINE void dot8_rows(float *out, const float *a, const float *rows, size_t stride,
                               int j0, int j1, int n)
{
    int j = j0;
    for (; j + 4 <= j1; j += 4) {
        const float *const b[4] = {rows + (size_t)j * stride, rows + (size_t)(j + 1) * stride,
                                   rows + (size_t)(j + 2) * stride,
                                   rows + (size_t)(j + 3) * stride};
        dot8x4(out + j, a, b, n);
    }
    for (; j < j1; j++)
        out[j] = dot8(a, rows + (size_t)j * stride, n);
}

#endif

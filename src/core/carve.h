/*
 * Buffers carved out of one slab, each starting on a cache line.
 *
 * A carver hands out consecutive ranges of a slab; with base NULL it only
 * counts, so that sizing and layout share one code path.  Every range starts
 * on a multiple of CARVE_LINE_FLOATS floats from the base, and the base
 * itself on a cache line (carve_base), so that no vector load of a buffer's
 * first row straddles two lines: one that does costs two, and the
 * prediction kernels stream their weights from L2 at every window (infer.c).
 */
#ifndef BST_CARVE_H
#define BST_CARVE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define CARVE_LINE_FLOATS 16

typedef struct Carver {
    float *base;
    size_t used;
} Carver;

/* n rounded up to whole cache lines of floats. */
static inline size_t carve_lines(size_t n)
{
    return (n + CARVE_LINE_FLOATS - 1) / CARVE_LINE_FLOATS * CARVE_LINE_FLOATS;
}

static inline float *carve(Carver *c, size_t n)
{
    c->used = carve_lines(c->used);
    float *p = c->base ? c->base + c->used : NULL;
    c->used += n;
    return p;
}

/* Without rounding: for a table read by rows, which are not aligned anyway,
 * and whose bytes are announced exactly (last in a slab, it costs just
 * them). */
static inline float *carve_packed(Carver *c, size_t n)
{
    float *p = c->base ? c->base + c->used : NULL;
    c->used += n;
    return p;
}

/* Floats to allocate for a layout of used floats: room to start it on a
 * cache line whatever the allocator's alignment (at least a float's). */
static inline size_t carve_slab_floats(size_t used)
{
    return used + CARVE_LINE_FLOATS - 1;
}

/* The first cache line of a slab of carve_slab_floats() floats. */
static inline float *carve_base(float *slab)
{
    const size_t misplaced = (uintptr_t)slab / sizeof(float) % CARVE_LINE_FLOATS;
    return slab + (CARVE_LINE_FLOATS - misplaced) % CARVE_LINE_FLOATS;
}

/* rows x cols floats from src (row stride lds) to dst (row stride ldd). */
static inline void carve_copy_rows(float *dst, size_t ldd, const float *src, size_t lds,
                                   size_t rows, size_t cols)
{
    for (size_t r = 0; r < rows; r++)
        memcpy(dst + r * ldd, src + r * lds, cols * sizeof(float));
}

#endif

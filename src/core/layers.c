#include "layers.h"

#include <math.h>
#include <string.h>

#include "blas.h"
#include "parallel.h"
#include "reduce.h"
#include "simd.h"
#include "vec16.h"

/*
 * Parallel split (see parallel.h): each public function below runs a serial
 * kernel over a range [lo, hi) of its output, one range per thread.  Grains:
 * element-wise loops split at multiples of 16 floats (a cache line); sgemm
 * blocks hold at least SGEMM_GRAIN rows or columns, below which packing the
 * whole other operand once more costs about what the split saves (a single
 * window, 4 rows, runs serially), and which still splits 265 windows evenly.
 */
#define ELT_GRAIN 16
#define SGEMM_GRAIN 8

/*
 * Parameter gradients of per-feature parameters (biases, norm scales) are
 * sums over all rows, computed by the thread that owns the feature.  They
 * are accumulated in blocks of COL_BLOCK features in local arrays and stored
 * once: storing every row would bounce the cache line that two threads'
 * blocks share, and chain each row's add on the previous row's store.  Each
 * sum still starts from the stored value and adds the rows in order.  64
 * features: four AVX-512 registers of sums, four chains of adds that
 * overlap (with 32, the bias gradients took 2.2-2.4% of a one-thread epoch
 * in perf, with 64 1.7-2.2%).
 */
#define COL_BLOCK 64

/* More fixed-order float reductions (reduce.h says why this way). */
BST_SIMD_INLINE float sum8(const float *a, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j];
    float s = 0.0f;
    for (; i < n; i++)
        s += a[i];
    return total8(s, acc);
}

/* Sum of (a - m)^2. */
BST_SIMD_INLINE float sumsq_centered8(const float *a, float m, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += (a[i + j] - m) * (a[i + j] - m);
    float s = 0.0f;
    for (; i < n; i++)
        s += (a[i] - m) * (a[i] - m);
    return total8(s, acc);
}

/* Sum of a * (x - m). */
BST_SIMD_INLINE float dot_centered8(const float *a, const float *x, float m, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * (x[i + j] - m);
    float s = 0.0f;
    for (; i < n; i++)
        s += a[i] * (x[i] - m);
    return total8(s, acc);
}

/* Rows [r0, r1) of the gather. */
static void embedding_forward_rows(float *out, int out_stride, const int32_t *idx,
                                   const float *table, int32_t n_rows, size_t r0, size_t r1,
                                   int width)
{
    for (size_t r = r0; r < r1; r++)
        memcpy(out + r * out_stride, table + (size_t)bst_row_or_zero(idx[r], n_rows) * width,
               (size_t)width * sizeof(float));
}

void embedding_forward(float *out, int out_stride, const int32_t *idx, const float *table,
                       int32_t n_rows, int n, int width)
{
    PARALLEL_FOR((size_t)n, 1, (double)n * width, lo, hi,
                 embedding_forward_rows(out, out_stride, idx, table, n_rows, lo, hi, width));
}

/*
 * Scatter-add.  Rows repeat (a movie in many windows), so the threads cannot
 * split the batch; they split the table instead: a table row belongs to one
 * of EMB_CLASSES classes, a hash of its index, and each thread adds the
 * batch rows that land in its classes, in the batch's order, so every
 * element's sum is the serial one whatever the thread count.  By a hash,
 * because the most frequent rows are often neighbours (a vocabulary
 * numbered by popularity).  A split by columns, as before, had both threads
 * write the cache line between their halves of each row at the same time:
 * on 2 threads it was slower than on one.
 */
#define EMB_CLASSES 64

static inline size_t embedding_row_class(int32_t row)
{
    return (uint32_t)row * 2654435761u >> 26;  /* Knuth's multiplicative hash, 6 bits */
}

/* Batch rows whose table row is of a class in [k0, k1). */
BST_SIMD_INLINE void embedding_backward_classes_generic(float *d_table, const float *d_out,
                                                        int out_stride, const int32_t *idx,
                                                        int32_t n_rows, int n, int width,
                                                        size_t k0, size_t k1)
{
    for (size_t r = 0; r < (size_t)n; r++) {
        const int32_t row = bst_row_or_zero(idx[r], n_rows);
        const size_t k = embedding_row_class(row);
        if (k < k0 || k >= k1)
            continue;
        float *dt = d_table + (size_t)row * width;
        const float *g = d_out + r * out_stride;
        for (int c = 0; c < width; c++)
            dt[c] += g[c];
    }
}
BST_SIMD_DISPATCH(embedding_backward_classes,
                  (float *d_table, const float *d_out, int out_stride, const int32_t *idx,
                   int32_t n_rows, int n, int width, size_t k0, size_t k1),
                  (d_table, d_out, out_stride, idx, n_rows, n, width, k0, k1))

void embedding_backward(float *d_table, const float *d_out, int out_stride, const int32_t *idx,
                        int32_t n_rows, int n, int width)
{
    PARALLEL_FOR((size_t)EMB_CLASSES, 1, (double)n * width, lo, hi,
                 embedding_backward_classes(d_table, d_out, out_stride, idx, n_rows, n, width,
                                            lo, hi));
}

/* Windows [b0, b1). */
BST_SIMD_INLINE void sequence_forward_windows_generic(float *out, const float *enc,
                                                      const float *ratings, const float *pos_emb,
                                                      const float *rating_w,
                                                      const int32_t *hist_len, size_t b0,
                                                      size_t b1, int L, int d)
{
    for (size_t b = b0; b < b1; b++) {
        const int first = bst_first_valid(hist_len, b, L);
        for (int i = 0; i < L; i++) {
            const size_t row = (b * L + i) * d;
            float *o = out + row;
            const float *e = enc + row;
            if (i < first) {
                memset(o, 0, (size_t)d * sizeof(float));
            } else if (i == L - 1) {
                memcpy(o, e, (size_t)d * sizeof(float));
            } else {
                const float *pe = pos_emb + (size_t)i * d;
                const float r = ratings[b * (L - 1) + i];
                if (rating_w)
                    for (int c = 0; c < d; c++)
                        o[c] = e[c] + pe[c] + r * rating_w[c];
                else
                    for (int c = 0; c < d; c++)
                        o[c] = (e[c] + pe[c]) * r;
            }
        }
    }
}
BST_SIMD_DISPATCH(sequence_forward_windows,
                  (float *out, const float *enc, const float *ratings, const float *pos_emb,
                   const float *rating_w, const int32_t *hist_len, size_t b0, size_t b1, int L,
                   int d),
                  (out, enc, ratings, pos_emb, rating_w, hist_len, b0, b1, L, d))

void sequence_forward(float *out, const float *enc, const float *ratings, const float *pos_emb,
                      const float *rating_w, const int32_t *hist_len, int B, int L, int d)
{
    PARALLEL_FOR((size_t)B, 1, (double)B * L * d, lo, hi,
                 sequence_forward_windows(out, enc, ratings, pos_emb, rating_w, hist_len, lo, hi,
                                          L, d));
}

/* d_enc of windows [b0, b1). */
BST_SIMD_INLINE void sequence_backward_windows_generic(float *d_enc, const float *d_out,
                                                       const float *ratings, int additive,
                                                       const int32_t *hist_len, size_t b0,
                                                       size_t b1, int L, int d)
{
    for (size_t b = b0; b < b1; b++) {
        const int first = bst_first_valid(hist_len, b, L);
        for (int i = 0; i < L; i++) {
            const size_t row = (b * L + i) * d;
            float *de = d_enc + row;
            const float *g = d_out + row;
            if (i < first) {
                memset(de, 0, (size_t)d * sizeof(float));
            } else if (i == L - 1 || additive) {
                memcpy(de, g, (size_t)d * sizeof(float));
            } else {
                const float r = ratings[b * (L - 1) + i];
                for (int c = 0; c < d; c++)
                    de[c] = g[c] * r;
            }
        }
    }
}
BST_SIMD_DISPATCH(sequence_backward_windows,
                  (float *d_enc, const float *d_out, const float *ratings, int additive,
                   const int32_t *hist_len, size_t b0, size_t b1, int L, int d),
                  (d_enc, d_out, ratings, additive, hist_len, b0, b1, L, d))

/* Columns [c0, c1) of d_pos_emb and d_rating_w: sums over windows, owned by
 * one thread, accumulated in registers a block of COL_BLOCK columns at a time
 * (above: storing each window's sum would bounce the cache line that two
 * threads' columns share, which made this loop 20 times slower on 2 threads
 * than on one).  Each element adds the windows in their order, as a running
 * sum in place would: d_pos_emb's row i over windows b; d_rating_w over
 * windows b, then positions i within a window. */
BST_SIMD_INLINE void sequence_backward_param_cols_generic(float *d_pos_emb, float *d_rating_w,
                                                          const float *d_out, const float *ratings,
                                                          const int32_t *hist_len, int B, int L,
                                                          int d, size_t c0, size_t c1)
{
    for (size_t b0 = c0; b0 < c1; b0 += COL_BLOCK) {
        const int w = c1 - b0 < COL_BLOCK ? (int)(c1 - b0) : COL_BLOCK;
        float acc[COL_BLOCK];
        for (int i = 0; i < L - 1; i++) {
            float *dp = d_pos_emb + (size_t)i * d + b0;
            memcpy(acc, dp, (size_t)w * sizeof(float));
            for (size_t b = 0; b < (size_t)B; b++) {
                if (i < bst_first_valid(hist_len, b, L))
                    continue;
                const float *g = d_out + (b * L + i) * d + b0;
                /* With rating weights (additive) the rating multiplies
                 * those, and the position embedding enters as it is. */
                if (d_rating_w) {
                    for (int j = 0; j < w; j++)
                        acc[j] += g[j];
                } else {
                    const float r = ratings[b * (L - 1) + i];
                    for (int j = 0; j < w; j++)
                        acc[j] += g[j] * r;
                }
            }
            memcpy(dp, acc, (size_t)w * sizeof(float));
        }
        if (!d_rating_w)
            continue;
        memcpy(acc, d_rating_w + b0, (size_t)w * sizeof(float));
        for (size_t b = 0; b < (size_t)B; b++) {
            for (int i = bst_first_valid(hist_len, b, L); i < L - 1; i++) {
                const float *g = d_out + (b * L + i) * d + b0;
                const float r = ratings[b * (L - 1) + i];
                for (int j = 0; j < w; j++)
                    acc[j] += g[j] * r;
            }
        }
        memcpy(d_rating_w + b0, acc, (size_t)w * sizeof(float));
    }
}
BST_SIMD_DISPATCH(sequence_backward_param_cols,
                  (float *d_pos_emb, float *d_rating_w, const float *d_out, const float *ratings,
                   const int32_t *hist_len, int B, int L, int d, size_t c0, size_t c1),
                  (d_pos_emb, d_rating_w, d_out, ratings, hist_len, B, L, d, c0, c1))

void sequence_backward(float *d_enc, float *d_pos_emb, float *d_rating_w, const float *d_out,
                       const float *ratings, const int32_t *hist_len, int B, int L, int d)
{
    PARALLEL_FOR_PAIR((size_t)B, 1, (double)B * L * d, b0, b1,
                      sequence_backward_windows(d_enc, d_out, ratings, d_rating_w != NULL,
                                                hist_len, b0, b1, L, d),
                      (size_t)d, 1, (double)B * L * d, c0, c1,
                      sequence_backward_param_cols(d_pos_emb, d_rating_w, d_out, ratings,
                                                   hist_len, B, L, d, c0, c1));
}

/*
 * The fused projection in training (model.c says why): a row of x is
 * linear in its movie's encoding, x = r (e + p_i) or e + p_i + r w (or e,
 * the target; 0, padding), so x W + b = r (e W + p_i W) + b, and so on, from
 * the projections of the batch's distinct movies (uqv, row slot[row]) and
 * of the positions (pqv; its row L - 1 is w W, with additive ratings).
 */
BST_SIMD_INLINE void projection_forward_windows_generic(float *qv, const float *uqv,
                                                        const float *pqv, const float *bias,
                                                        const int32_t *slot,
                                                        const float *ratings, int additive,
                                                        size_t b0, size_t b1, int L, int n)
{
    const float *pr = pqv + (size_t)(L - 1) * n;
    for (size_t b = b0; b < b1; b++) {
        for (int i = 0; i < L; i++) {
            const size_t row = b * L + i;
            float *o = qv + row * n;
            if (slot[row] < 0) {
                memcpy(o, bias, (size_t)n * sizeof(float));
                continue;
            }
            const float *u = uqv + (size_t)slot[row] * n, *pi = pqv + (size_t)i * n;
            const float r = i < L - 1 ? ratings[b * (L - 1) + i] : 0.0f;
            if (i == L - 1)
                for (int c = 0; c < n; c++)
                    o[c] = u[c] + bias[c];
            else if (additive)
                for (int c = 0; c < n; c++)
                    o[c] = ((u[c] + pi[c]) + r * pr[c]) + bias[c];
            else
                for (int c = 0; c < n; c++)
                    o[c] = r * (u[c] + pi[c]) + bias[c];
        }
    }
}
BST_SIMD_DISPATCH(projection_forward_windows,
                  (float *qv, const float *uqv, const float *pqv, const float *bias,
                   const int32_t *slot, const float *ratings, int additive, size_t b0, size_t b1,
                   int L, int n),
                  (qv, uqv, pqv, bias, slot, ratings, additive, b0, b1, L, n))

void projection_forward(float *qv, const float *uqv, const float *pqv, const float *bias,
                        const int32_t *slot, const float *ratings, int additive, int B, int L,
                        int n)
{
    PARALLEL_FOR((size_t)B, 1, 2.0 * B * L * n, lo, hi,
                 projection_forward_windows(qv, uqv, pqv, bias, slot, ratings, additive, lo,
                                            hi, L, n));
}

/* A row's factor in x: its rating for a history row of multiplied ratings,
 * else 1. */
static inline float projection_factor(const float *ratings, int additive, size_t row, int L)
{
    const size_t b = row / L;
    const int i = (int)(row % L);
    return i < L - 1 && !additive ? ratings[b * (L - 1) + i] : 1.0f;
}

/* Distinct movies [u0, u1): d_u = the sum of their rows' factor d_qv, in
 * the order of rows (rows[rows_start[u] ..]). */
BST_SIMD_INLINE void projection_backward_movies_generic(float *d_u, const float *d_qv,
                                                        const int32_t *rows_start,
                                                        const int32_t *rows,
                                                        const float *ratings, int additive,
                                                        size_t u0, size_t u1, int L, int n)
{
    for (size_t u = u0; u < u1; u++) {
        float *du = d_u + u * n;
        memset(du, 0, (size_t)n * sizeof(float));
        for (int32_t k = rows_start[u]; k < rows_start[u + 1]; k++) {
            const float f = projection_factor(ratings, additive, (size_t)rows[k], L);
            const float *g = d_qv + (size_t)rows[k] * n;
            for (int c = 0; c < n; c++)
                du[c] += f * g[c];
        }
    }
}
BST_SIMD_DISPATCH(projection_backward_movies,
                  (float *d_u, const float *d_qv, const int32_t *rows_start,
                   const int32_t *rows, const float *ratings, int additive, size_t u0, size_t u1,
                   int L, int n),
                  (d_u, d_qv, rows_start, rows, ratings, additive, u0, u1, L, n))

/* Columns [c0, c1) of d_b += the column sums of d_out, rows in order. */
BST_SIMD_INLINE void bias_sums_cols_generic(float *d_b, const float *d_out, int n, int out_dim,
                                            size_t c0, size_t c1)
{
    for (size_t b0 = c0; b0 < c1; b0 += COL_BLOCK) {
        const int w = c1 - b0 < COL_BLOCK ? (int)(c1 - b0) : COL_BLOCK;
        float acc[COL_BLOCK];
        memcpy(acc, d_b + b0, (size_t)w * sizeof(float));
        for (size_t r = 0; r < (size_t)n; r++) {
            const float *g = d_out + r * out_dim + b0;
            for (int j = 0; j < w; j++)
                acc[j] += g[j];
        }
        memcpy(d_b + b0, acc, (size_t)w * sizeof(float));
    }
}
BST_SIMD_DISPATCH(bias_sums_cols,
                  (float *d_b, const float *d_out, int n, int out_dim, size_t c0, size_t c1),
                  (d_b, d_out, n, out_dim, c0, c1))

/* Columns [c0, c1) of d_p: row i < L - 1 sums its position's history rows
 * (factor as above), row L - 1 (additive) every history row times its
 * rating; windows in order, COL_BLOCK columns at a time in registers (as
 * sequence_backward_param_cols, and for the same reason). */
BST_SIMD_INLINE void projection_backward_positions_generic(float *d_p, float *d_b,
                                                           const float *d_qv,
                                                           const float *ratings, int additive,
                                                           const int32_t *hist_len, int B,
                                                           int L, int n, size_t c0, size_t c1)
{
    /* The bias's sums, while the columns are in this core's cache. */
    bias_sums_cols_generic(d_b, d_qv, B * L, n, c0, c1);
    for (size_t b0 = c0; b0 < c1; b0 += COL_BLOCK) {
        const int w = c1 - b0 < COL_BLOCK ? (int)(c1 - b0) : COL_BLOCK;
        float acc[COL_BLOCK];
        for (int i = 0; i < L - 1; i++) {
            memset(acc, 0, sizeof(acc));
            for (size_t b = 0; b < (size_t)B; b++) {
                if (i < bst_first_valid(hist_len, b, L))
                    continue;
                const float f = additive ? 1.0f : ratings[b * (L - 1) + i];
                const float *g = d_qv + (b * L + i) * n + b0;
                for (int j = 0; j < w; j++)
                    acc[j] += f * g[j];
            }
            memcpy(d_p + (size_t)i * n + b0, acc, (size_t)w * sizeof(float));
        }
        if (!additive)
            continue;
        memset(acc, 0, sizeof(acc));
        for (size_t b = 0; b < (size_t)B; b++) {
            for (int i = bst_first_valid(hist_len, b, L); i < L - 1; i++) {
                const float r = ratings[b * (L - 1) + i];
                const float *g = d_qv + (b * L + i) * n + b0;
                for (int j = 0; j < w; j++)
                    acc[j] += r * g[j];
            }
        }
        memcpy(d_p + (size_t)(L - 1) * n + b0, acc, (size_t)w * sizeof(float));
    }
}
BST_SIMD_DISPATCH(projection_backward_positions,
                  (float *d_p, float *d_b, const float *d_qv, const float *ratings,
                   int additive, const int32_t *hist_len, int B, int L, int n, size_t c0,
                   size_t c1),
                  (d_p, d_b, d_qv, ratings, additive, hist_len, B, L, n, c0, c1))

/* The first of the n movies whose item (rows_start[u] + u: every row and
 * every movie before it counted) is at or after item (n if none). */
static size_t first_item_at(const int32_t *rows_start, int32_t n, size_t item)
{
    size_t lo = 0, hi = (size_t)n;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if ((size_t)rows_start[mid] + mid < item)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void projection_backward(float *d_u, float *d_p, float *d_b, const float *d_qv,
                         const int32_t *rows_start,
                         const int32_t *rows, int32_t n_distinct, const float *ratings,
                         int additive, const int32_t *hist_len, int B, int L, int n)
{
    /* Shares of the movies weighted by their rows, each a cost as a movie
     * is (its sum's store): the movies first seen come first and have the
     * most rows, so plain shares of the movies left the first thread twice
     * the work of the second. */
    const size_t n_items = (size_t)rows_start[n_distinct] + (size_t)n_distinct;
    PARALLEL_FOR_PAIR(n_items, 1, 2.0 * B * L * n, i0, i1,
                      projection_backward_movies(d_u, d_qv, rows_start, rows, ratings, additive,
                                                 first_item_at(rows_start, n_distinct, i0),
                                                 first_item_at(rows_start, n_distinct, i1), L, n),
                      (size_t)n, 1, 2.0 * B * L * n, c0, c1,
                      projection_backward_positions(d_p, d_b, d_qv, ratings, additive, hist_len,
                                                    B, L, n, c0, c1));
}

void linear_bias_backward(float *d_b, const float *d_out, int n, int out_dim)
{
    PARALLEL_FOR((size_t)out_dim, SGEMM_GRAIN, (double)n * out_dim, lo, hi,
                 bias_sums_cols(d_b, d_out, n, out_dim, lo, hi));
}

/* Rows [r0, r1) of heads_sum_forward: the bias, then each head in turn. */
BST_SIMD_INLINE void heads_sum_rows_generic(float *out, const float *ctx, const float *bias,
                                            size_t r0, size_t r1, int H, int d)
{
    for (size_t r = r0; r < r1; r++) {
        float *o = out + r * d;
        const float *c = ctx + r * (size_t)H * d;
        memcpy(o, bias, (size_t)d * sizeof(float));
        for (int h = 0; h < H; h++)
            for (int j = 0; j < d; j++)
                o[j] += c[(size_t)h * d + j];
    }
}
BST_SIMD_DISPATCH(heads_sum_rows,
                  (float *out, const float *ctx, const float *bias, size_t r0, size_t r1, int H,
                   int d),
                  (out, ctx, bias, r0, r1, H, d))

void heads_sum_forward(float *out, const float *ctx, const float *bias, int n, int H, int d)
{
    PARALLEL_FOR((size_t)n, 1, (double)n * H * d, lo, hi,
                 heads_sum_rows(out, ctx, bias, lo, hi, H, d));
}

/*
 * The folds' products are 62 x 62 x 62 at the Keras shape: too small to
 * split, but there are many, and run one after another they kept the
 * other threads idle for some 4% of a step.  So each is a task: the
 * forward's are (head, queries | values), the backward's (head, the
 * gradient it adds to: dWq, dWk, dWv or dWo), and a region's threads take
 * ranges of tasks.  A task adds to its output in the order the serial
 * loop did, and no two tasks write the same output: the same bits for any
 * thread count.
 */
enum { FOLD_FORWARD_TASKS = 2, FOLD_BACKWARD_TASKS = 4 };

static void fold_forward_task(float *w, float *b, const float *wqkv, const float *bqkv,
                              const float *wo, int d, int H, size_t task)
{
    const int hd = H * d, n3 = 3 * hd, n2 = 2 * hd, h = (int)(task / FOLD_FORWARD_TASKS);
    /* Head h's columns: in wqkv's parts q, k, v; in the fold's, fq and fv. */
    const size_t q = (size_t)h * d, k = (size_t)hd + q, v = (size_t)2 * hd + q;
    const size_t fq = q, fv = (size_t)hd + q;
    const float *wo_h = wo + (size_t)h * d * d;
    if (task % FOLD_FORWARD_TASKS == 0) {
        /* Queries: Wq_h Wk_h^T and bq_h Wk_h^T. */
        bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d, d, d, 1.0f, wqkv + q, n3,
                       wqkv + k, n3, 0.0f, w + fq, n2);
        bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 1, d, d, 1.0f, bqkv + q, n3,
                       wqkv + k, n3, 0.0f, b + fq, n2);
    } else {
        /* Values: Wv_h Wo_h and bv_h Wo_h. */
        bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1.0f, wqkv + v, n3,
                       wo_h, d, 0.0f, w + fv, n2);
        bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1, d, d, 1.0f, bqkv + v, n3,
                       wo_h, d, 0.0f, b + fv, n2);
    }
}

void attention_fold_forward(float *w, float *b, const float *wqkv, const float *bqkv,
                            const float *wo, int d, int H)
{
    const size_t tasks = (size_t)H * FOLD_FORWARD_TASKS;
    PARALLEL_FOR(tasks, 1, 2.0 * tasks * d * d * d, lo, hi,
                 for (size_t t = lo; t < hi; t++)
                     fold_forward_task(w, b, wqkv, bqkv, wo, d, H, t));
}

static void fold_backward_task(float *d_wqkv, float *d_bqkv, float *d_wo, const float *d_w,
                               const float *d_b, const float *wqkv, const float *bqkv,
                               const float *wo, int d, int H, size_t task)
{
    const int hd = H * d, n3 = 3 * hd, n2 = 2 * hd, h = (int)(task / FOLD_BACKWARD_TASKS);
    const size_t q = (size_t)h * d, k = (size_t)hd + q, v = (size_t)2 * hd + q;
    const size_t fq = q, fv = (size_t)hd + q;
    const float *wo_h = wo + (size_t)h * d * d;
    float *d_wo_h = d_wo + (size_t)h * d * d;
    /* M = Wq Wk^T: dWq += dM Wk, dWk += dM^T Wq; c = bq Wk^T: dbq += dc Wk,
     * dWk += dc^T bq.  bk has no gradient: it adds the same to a query's
     * every score.  Wvo = Wv Wo: dWv += dWvo Wo^T, dWo += Wv^T dWvo; bvo =
     * bv Wo alike. */
    switch (task % FOLD_BACKWARD_TASKS) {
    case 0:
        bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1.0f, d_w + fq, n2,
                       wqkv + k, n3, 1.0f, d_wqkv + q, n3);
        bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1, d, d, 1.0f, d_b + fq, n2,
                       wqkv + k, n3, 1.0f, d_bqkv + q, n3);
        break;
    case 1:
        bst_blas.sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, d, 1.0f, d_w + fq, n2,
                       wqkv + q, n3, 1.0f, d_wqkv + k, n3);
        bst_blas.sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, 1, 1.0f, d_b + fq, n2,
                       bqkv + q, n3, 1.0f, d_wqkv + k, n3);
        break;
    case 2:
        bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d, d, d, 1.0f, d_w + fv, n2, wo_h,
                       d, 1.0f, d_wqkv + v, n3);
        bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 1, d, d, 1.0f, d_b + fv, n2, wo_h,
                       d, 1.0f, d_bqkv + v, n3);
        break;
    default:
        bst_blas.sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, d, 1.0f, wqkv + v, n3,
                       d_w + fv, n2, 1.0f, d_wo_h, d);
        bst_blas.sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, 1, 1.0f, bqkv + v, n3,
                       d_b + fv, n2, 1.0f, d_wo_h, d);
        break;
    }
}

void attention_fold_backward(float *d_wqkv, float *d_bqkv, float *d_wo, const float *d_w,
                             const float *d_b, const float *wqkv, const float *bqkv,
                             const float *wo, int d, int H)
{
    const size_t tasks = (size_t)H * FOLD_BACKWARD_TASKS;
    PARALLEL_FOR(tasks, 1, 2.0 * tasks * d * d * d, lo, hi,
                 for (size_t t = lo; t < hi; t++)
                     fold_backward_task(d_wqkv, d_bqkv, d_wo, d_w, d_b, wqkv, bqkv, wo, d, H,
                                        t));
}

/* Rows [r0, r1) of fold_projection_forward. */
static void fold_projection_rows(float *out, const float *in, const float *w, size_t r0, size_t r1,
                                 int d, int H)
{
    const int n2 = 2 * H * d;
    if (r1 <= r0)
        return;
    bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(r1 - r0), n2, d, 1.0f,
                   in + r0 * d, d, w, n2, 0.0f, out + r0 * n2, n2);
}

void fold_projection_forward(float *out, const float *in, const float *w, int n, int d, int H)
{
    PARALLEL_FOR((size_t)n, SGEMM_GRAIN, 2.0 * n * d * 2 * H * d, lo, hi,
                 fold_projection_rows(out, in, w, lo, hi, d, H));
}

/* Rows [r0, r1) of fold_projection_backward's d_in. */
static void fold_projection_input_rows(float *d_in, const float *d_out, const float *w, size_t r0,
                                       size_t r1, int d, int H)
{
    const int n2 = 2 * H * d;
    if (r1 <= r0)
        return;
    bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(r1 - r0), d, n2, 1.0f,
                   d_out + r0 * n2, n2, w, n2, 0.0f, d_in + r0 * d, d);
}

/* Columns [c0, c1) of d_w. */
static void fold_projection_param_cols(float *d_w, const float *d_out, const float *in, int n,
                                       int d, int H, size_t c0, size_t c1)
{
    const int n2 = 2 * H * d;
    if (c1 <= c0)
        return;
    bst_blas.sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, (int)(c1 - c0), n, 1.0f, in, d,
                   d_out + c0, n2, 1.0f, d_w + c0, n2);
}

void fold_projection_backward(float *d_in, float *d_w, const float *d_out, const float *in,
                              const float *w, int n, int d, int H)
{
    const double flops = 2.0 * n * d * 2 * H * d;
    /* Without d_in, no rows for the first loop: it runs on one thread and
     * does nothing, and the columns' loop runs alone. */
    PARALLEL_FOR_PAIR(d_in ? (size_t)n : 0, SGEMM_GRAIN, flops, r0, r1,
                      fold_projection_input_rows(d_in, d_out, w, r0, r1, d, H),
                      (size_t)2 * H * d, SGEMM_GRAIN, flops, c0, c1,
                      fold_projection_param_cols(d_w, d_out, in, n, d, H, c0, c1));
}

/* Windows [b0, b1). */
static void flatten_forward_windows(float *out, int stride, const float *y,
                                    const int32_t *hist_len, size_t b0, size_t b1, int L, int d)
{
    const size_t all = (size_t)L * d;
    for (size_t b = b0; b < b1; b++) {
        const size_t pad = (size_t)bst_first_valid(hist_len, b, L) * d;
        memset(out + b * stride, 0, pad * sizeof(float));
        memcpy(out + b * stride + pad, y + b * all + pad, (all - pad) * sizeof(float));
    }
}

void flatten_forward(float *out, int out_stride, const float *y, const int32_t *hist_len,
                     int B, int L, int d)
{
    PARALLEL_FOR((size_t)B, 1, (double)B * L * d, lo, hi,
                 flatten_forward_windows(out, out_stride, y, hist_len, lo, hi, L, d));
}

static void flatten_backward_windows(float *d_y, const float *d_out, int stride,
                                     const int32_t *hist_len, size_t b0, size_t b1, int L, int d)
{
    const size_t all = (size_t)L * d;
    for (size_t b = b0; b < b1; b++) {
        const size_t pad = (size_t)bst_first_valid(hist_len, b, L) * d;
        memset(d_y + b * all, 0, pad * sizeof(float));
        memcpy(d_y + b * all + pad, d_out + b * stride + pad, (all - pad) * sizeof(float));
    }
}

void flatten_backward(float *d_y, const float *d_out, int out_stride, const int32_t *hist_len,
                      int B, int L, int d)
{
    PARALLEL_FOR((size_t)B, 1, (double)B * L * d, lo, hi,
                 flatten_backward_windows(d_y, d_out, out_stride, hist_len, lo, hi, L, d));
}

/* A handful of additions per window: never worth a thread. */
void bias_forward(float *pred, const float *global, const float *user_bias,
                  const float *movie_bias, const int32_t *users, const int32_t *movies,
                  int32_t n_user_rows, int32_t n_movie_rows, int B)
{
    for (int b = 0; b < B; b++)
        pred[b] += global[0] + user_bias[bst_row_or_zero(users ? users[b] : 0, n_user_rows)] +
                   movie_bias[bst_row_or_zero(movies[b], n_movie_rows)];
}

void bias_backward(float *d_global, float *d_user_bias, float *d_movie_bias, const float *d_pred,
                   const int32_t *users, const int32_t *movies, int32_t n_user_rows,
                   int32_t n_movie_rows, int B)
{
    for (int b = 0; b < B; b++) {
        d_global[0] += d_pred[b];
        d_user_bias[bst_row_or_zero(users ? users[b] : 0, n_user_rows)] += d_pred[b];
        d_movie_bias[bst_row_or_zero(movies[b], n_movie_rows)] += d_pred[b];
    }
}

/*
 * The projections are the bulk of the work, but at these sizes (1060 x 62 by
 * 62 x 558 at most) OpenBLAS's own threading spends more time waiting than
 * computing.  Each thread instead makes one single-threaded sgemm call on its
 * block of the output: rows of Y = X W + b and of dX = dY W^T, columns of
 * dW = X^T dY (the sum over a call's rows stays inside one sgemm call, so
 * no thread ever adds into another's output; model.c's window shares call
 * this on their own rows, into sums of their own).  Whether an element comes out the same
 * in a block as in the whole product is up to the BLAS kernels (parallel.h).
 */

/* Rows [r0, r1) of out = in . w + b. */
static void linear_forward_rows(float *out, const float *in, const float *w, const float *b,
                                size_t r0, size_t r1, int in_dim, int out_dim)
{
    if (r1 <= r0)
        return;
    /* Pre-fill with the bias so one sgemm with beta = 1 adds the product. */
    if (b) {
        for (size_t r = r0; r < r1; r++)
            memcpy(out + r * out_dim, b, (size_t)out_dim * sizeof(float));
    }
    bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(r1 - r0), out_dim, in_dim,
                   1.0f, in + r0 * in_dim, in_dim, w, out_dim, b ? 1.0f : 0.0f,
                   out + r0 * out_dim, out_dim);
}

void linear_forward(float *out, const float *in, const float *w, const float *b,
                    int n, int in_dim, int out_dim)
{
    PARALLEL_FOR((size_t)n, SGEMM_GRAIN, 2.0 * n * in_dim * out_dim, lo, hi,
                 linear_forward_rows(out, in, w, b, lo, hi, in_dim, out_dim));
}

/* Rows [r0, r1) of d_in = d_out . w^T. */
static void linear_backward_input_rows(float *d_in, const float *d_out, const float *w,
                                       size_t r0, size_t r1, int in_dim, int out_dim)
{
    if (r1 <= r0)
        return;
    bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(r1 - r0), in_dim, out_dim,
                   1.0f, d_out + r0 * out_dim, out_dim, w, out_dim, 0.0f,
                   d_in + r0 * in_dim, in_dim);
}

/* Columns [c0, c1) of d_w += in^T . d_out and of d_b += column sums of d_out. */
BST_SIMD_INLINE void linear_backward_param_cols_generic(float *d_w, float *d_b, const float *d_out,
                                                        const float *in, int n, int in_dim,
                                                        int out_dim, size_t c0, size_t c1)
{
    if (c1 <= c0)
        return;
    bst_blas.sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, in_dim, (int)(c1 - c0), n,
                   1.0f, in, in_dim, d_out + c0, out_dim, 1.0f, d_w + c0, out_dim);
    if (d_b)
        bias_sums_cols_generic(d_b, d_out, n, out_dim, c0, c1);
}
BST_SIMD_DISPATCH(linear_backward_param_cols,
                  (float *d_w, float *d_b, const float *d_out, const float *in, int n, int in_dim,
                   int out_dim, size_t c0, size_t c1),
                  (d_w, d_b, d_out, in, n, in_dim, out_dim, c0, c1))

void linear_backward(float *d_in, float *d_w, float *d_b, const float *d_out,
                     const float *in, const float *w, int n, int in_dim, int out_dim)
{
    const double flops = 2.0 * n * in_dim * out_dim;
    /* Without d_in, as fold_projection_backward; without d_w, as the
     * transformer's window shares (model.c). */
    PARALLEL_FOR_PAIR(d_in ? (size_t)n : 0, SGEMM_GRAIN, flops, r0, r1,
                      linear_backward_input_rows(d_in, d_out, w, r0, r1, in_dim, out_dim),
                      d_w ? (size_t)out_dim : 0, SGEMM_GRAIN, flops, c0, c1,
                      linear_backward_param_cols(d_w, d_b, d_out, in, n, in_dim, out_dim, c0,
                                                 c1));
}

BST_SIMD_INLINE void layernorm_forward_rows_generic(float *out, float *mean, float *rstd,
                                                    const float *in, const float *gamma,
                                                    const float *beta, size_t r0, size_t r1, int d,
                                                    float eps)
{
    for (size_t r = r0; r < r1; r++) {
        const float *x = in + r * d;
        float *o = out + r * d;
        float m = sum8(x, d) / (float)d;
        /* Two-pass variance: the one-pass form cancels badly when |mean| >> std. */
        float v = sumsq_centered8(x, m, d) / (float)d;
        float s = 1.0f / sqrtf(v + eps);
        for (int c = 0; c < d; c++)
            o[c] = (x[c] - m) * s * gamma[c] + beta[c];
        if (mean) {
            mean[r] = m;
            rstd[r] = s;
        }
    }
}
BST_SIMD_DISPATCH(layernorm_forward_rows,
                  (float *out, float *mean, float *rstd, const float *in, const float *gamma,
                   const float *beta, size_t r0, size_t r1, int d, float eps),
                  (out, mean, rstd, in, gamma, beta, r0, r1, d, eps))

void layernorm_forward(float *out, float *mean, float *rstd, const float *in,
                       const float *gamma, const float *beta, int n, int d, float eps)
{
    PARALLEL_FOR((size_t)n, 1, 6.0 * n * d, lo, hi,
                 layernorm_forward_rows(out, mean, rstd, in, gamma, beta, lo, hi, d, eps));
}

/* Input gradient of rows [r0, r1). */
BST_SIMD_INLINE void layernorm_backward_rows_generic(float *d_in, const float *d_out,
                                                     const float *in, const float *mean,
                                                     const float *rstd, const float *gamma,
                                                     size_t r0, size_t r1, int d)
{
    for (size_t r = r0; r < r1; r++) {
        const float *x = in + r * d;
        const float *g = d_out + r * d;
        float *dx = d_in + r * d;
        float m = mean[r], s = rstd[r];
        /* The mean and variance depend on every input of the row, hence the two
         * row-wide terms subtracted from each element's direct gradient.
         * dx stages dnorm = g * gamma, overwritten below. */
        for (int c = 0; c < d; c++)
            dx[c] = g[c] * gamma[c];
        float dnorm_mean = sum8(dx, d) / (float)d;
        float dnorm_xhat_mean = dot_centered8(dx, x, m, d) * s / (float)d;
        for (int c = 0; c < d; c++) {
            float xhat = (x[c] - m) * s;
            dx[c] = (dx[c] - dnorm_mean - xhat * dnorm_xhat_mean) * s;
        }
    }
}
BST_SIMD_DISPATCH(layernorm_backward_rows,
                  (float *d_in, const float *d_out, const float *in, const float *mean,
                   const float *rstd, const float *gamma, size_t r0, size_t r1, int d),
                  (d_in, d_out, in, mean, rstd, gamma, r0, r1, d))

/* gamma and beta gradients of features [c0, c1): sums over all rows. */
BST_SIMD_INLINE void layernorm_backward_param_cols_generic(float *d_gamma, float *d_beta,
                                                           const float *d_out, const float *in,
                                                           const float *mean, const float *rstd,
                                                           int n, int d, size_t c0, size_t c1)
{
    for (size_t b0 = c0; b0 < c1; b0 += COL_BLOCK) {
        const int w = c1 - b0 < COL_BLOCK ? (int)(c1 - b0) : COL_BLOCK;
        float acc_g[COL_BLOCK], acc_b[COL_BLOCK];
        memcpy(acc_g, d_gamma + b0, (size_t)w * sizeof(float));
        memcpy(acc_b, d_beta + b0, (size_t)w * sizeof(float));
        for (size_t r = 0; r < (size_t)n; r++) {
            const float *x = in + r * d + b0;
            const float *g = d_out + r * d + b0;
            float m = mean[r], s = rstd[r];
            for (int j = 0; j < w; j++) {
                float xhat = (x[j] - m) * s;
                acc_g[j] += g[j] * xhat;
                acc_b[j] += g[j];
            }
        }
        memcpy(d_gamma + b0, acc_g, (size_t)w * sizeof(float));
        memcpy(d_beta + b0, acc_b, (size_t)w * sizeof(float));
    }
}
BST_SIMD_DISPATCH(layernorm_backward_param_cols,
                  (float *d_gamma, float *d_beta, const float *d_out, const float *in,
                   const float *mean, const float *rstd, int n, int d, size_t c0, size_t c1),
                  (d_gamma, d_beta, d_out, in, mean, rstd, n, d, c0, c1))

void layernorm_backward(float *d_in, float *d_gamma, float *d_beta, const float *d_out,
                        const float *in, const float *mean, const float *rstd,
                        const float *gamma, int n, int d)
{
    PARALLEL_FOR((size_t)n, 1, 8.0 * n * d, lo, hi,
                 layernorm_backward_rows(d_in, d_out, in, mean, rstd, gamma, lo, hi, d));
    PARALLEL_FOR((size_t)d, 1, 4.0 * n * d, lo, hi,
                 layernorm_backward_param_cols(d_gamma, d_beta, d_out, in, mean, rstd, n, d,
                                               lo, hi));
}

/*
 * BatchNorm reduces each feature over the rows.  Walking the row-major
 * [n, d] matrix in blocks of columns keeps the accesses contiguous and the
 * per-feature sums in small stack arrays (no scratch buffers), and the inner
 * loops run across independent features, so they vectorise.  Threads take
 * whole blocks of features.
 */
#define BN_BLOCK 32

/* Features [f0, f1). */
BST_SIMD_INLINE void batchnorm_forward_cols_generic(float *out, float *mean, float *var,
                                                    const float *in, const float *gamma,
                                                    const float *beta, int n, int d, float eps,
                                                    size_t f0, size_t f1)
{
    for (size_t c0 = f0; c0 < f1; c0 += BN_BLOCK) {
        const int w = f1 - c0 < BN_BLOCK ? (int)(f1 - c0) : BN_BLOCK;
        float m[BN_BLOCK] = {0}, v[BN_BLOCK] = {0}, k[BN_BLOCK];
        for (int r = 0; r < n; r++) {
            const float *x = in + (size_t)r * d + c0;
            for (int j = 0; j < w; j++)
                m[j] += x[j];
        }
        for (int j = 0; j < w; j++)
            m[j] /= (float)n;
        for (int r = 0; r < n; r++) {
            const float *x = in + (size_t)r * d + c0;
            for (int j = 0; j < w; j++)
                v[j] += (x[j] - m[j]) * (x[j] - m[j]);
        }
        for (int j = 0; j < w; j++) {
            v[j] /= (float)n;
            k[j] = gamma[c0 + j] / sqrtf(v[j] + eps);
            mean[c0 + j] = m[j];
            var[c0 + j] = v[j];
        }
        for (int r = 0; r < n; r++) {
            const float *x = in + (size_t)r * d + c0;
            float *o = out + (size_t)r * d + c0;
            for (int j = 0; j < w; j++)
                o[j] = (x[j] - m[j]) * k[j] + beta[c0 + j];
        }
    }
}
BST_SIMD_DISPATCH(batchnorm_forward_cols,
                  (float *out, float *mean, float *var, const float *in, const float *gamma,
                   const float *beta, int n, int d, float eps, size_t f0, size_t f1),
                  (out, mean, var, in, gamma, beta, n, d, eps, f0, f1))

void batchnorm_forward(float *out, float *mean, float *var, const float *in,
                       const float *gamma, const float *beta, int n, int d, float eps)
{
    PARALLEL_FOR((size_t)d, BN_BLOCK, 6.0 * n * d, lo, hi,
                 batchnorm_forward_cols(out, mean, var, in, gamma, beta, n, d, eps, lo, hi));
}

/* Rows [r0, r1) of out = (in - mean) k + beta, k = gamma / sqrt(var + eps)
 * (batchnorm_forward_cols's arithmetic, from the statistics it stored). */
BST_SIMD_INLINE void batchnorm_normalize_rows_generic(float *out, const float *mean,
                                                      const float *var, const float *in,
                                                      const float *gamma, const float *beta,
                                                      int d, float eps, size_t r0, size_t r1)
{
    for (int c0 = 0; c0 < d; c0 += BN_BLOCK) {
        const int w = d - c0 < BN_BLOCK ? d - c0 : BN_BLOCK;
        float k[BN_BLOCK];
        for (int j = 0; j < w; j++)
            k[j] = gamma[c0 + j] / sqrtf(var[c0 + j] + eps);
        const float *m = mean + c0;
        for (size_t r = r0; r < r1; r++) {
            const float *x = in + r * d + c0;
            float *o = out + r * d + c0;
            for (int j = 0; j < w; j++)
                o[j] = (x[j] - m[j]) * k[j] + beta[c0 + j];
        }
    }
}
BST_SIMD_DISPATCH(batchnorm_normalize_rows,
                  (float *out, const float *mean, const float *var, const float *in,
                   const float *gamma, const float *beta, int d, float eps, size_t r0,
                   size_t r1),
                  (out, mean, var, in, gamma, beta, d, eps, r0, r1))

BST_SIMD_INLINE void batchnorm_forward_infer_cols_generic(float *out, const float *in,
                                                          const float *gamma, const float *beta,
                                                          const float *moving_mean,
                                                          const float *moving_var, int n, int d,
                                                          float eps, size_t f0, size_t f1)
{
    for (size_t c0 = f0; c0 < f1; c0 += BN_BLOCK) {
        const int w = f1 - c0 < BN_BLOCK ? (int)(f1 - c0) : BN_BLOCK;
        float k[BN_BLOCK];
        for (int j = 0; j < w; j++)
            k[j] = gamma[c0 + j] / sqrtf(moving_var[c0 + j] + eps);
        for (int r = 0; r < n; r++) {
            const float *x = in + (size_t)r * d + c0;
            float *o = out + (size_t)r * d + c0;
            for (int j = 0; j < w; j++)
                o[j] = (x[j] - moving_mean[c0 + j]) * k[j] + beta[c0 + j];
        }
    }
}
BST_SIMD_DISPATCH(batchnorm_forward_infer_cols,
                  (float *out, const float *in, const float *gamma, const float *beta,
                   const float *moving_mean, const float *moving_var, int n, int d, float eps,
                   size_t f0, size_t f1),
                  (out, in, gamma, beta, moving_mean, moving_var, n, d, eps, f0, f1))

void batchnorm_forward_infer(float *out, const float *in, const float *gamma,
                             const float *beta, const float *moving_mean,
                             const float *moving_var, int n, int d, float eps)
{
    PARALLEL_FOR((size_t)d, BN_BLOCK, 2.0 * n * d, lo, hi,
                 batchnorm_forward_infer_cols(out, in, gamma, beta, moving_mean, moving_var,
                                              n, d, eps, lo, hi));
}

BST_SIMD_INLINE void batchnorm_backward_cols_generic(float *d_in, float *d_gamma, float *d_beta,
                                                     const float *d_out, const float *in,
                                                     const float *mean, const float *var,
                                                     const float *gamma, int n, int d, float eps,
                                                     size_t f0, size_t f1)
{
    for (size_t c0 = f0; c0 < f1; c0 += BN_BLOCK) {
        const int w = f1 - c0 < BN_BLOCK ? (int)(f1 - c0) : BN_BLOCK;
        float s[BN_BLOCK], sum_g[BN_BLOCK] = {0}, sum_g_xhat[BN_BLOCK] = {0}, k[BN_BLOCK];
        for (int j = 0; j < w; j++)
            s[j] = 1.0f / sqrtf(var[c0 + j] + eps);
        const float *m = mean + c0;
        for (int r = 0; r < n; r++) {
            const float *x = in + (size_t)r * d + c0;
            const float *g = d_out + (size_t)r * d + c0;
            for (int j = 0; j < w; j++) {
                sum_g[j] += g[j];
                sum_g_xhat[j] += g[j] * (x[j] - m[j]) * s[j];
            }
        }
        for (int j = 0; j < w; j++) {
            d_gamma[c0 + j] += sum_g_xhat[j];
            d_beta[c0 + j] += sum_g[j];
            k[j] = gamma[c0 + j] * s[j] / (float)n;
        }
        /* The batch mean and variance depend on every row: the two sums are
         * their contributions. */
        for (int r = 0; r < n; r++) {
            const float *x = in + (size_t)r * d + c0;
            const float *g = d_out + (size_t)r * d + c0;
            float *dx = d_in + (size_t)r * d + c0;
            for (int j = 0; j < w; j++) {
                float xhat = (x[j] - m[j]) * s[j];
                dx[j] = k[j] * ((float)n * g[j] - sum_g[j] - xhat * sum_g_xhat[j]);
            }
        }
    }
}
BST_SIMD_DISPATCH(batchnorm_backward_cols,
                  (float *d_in, float *d_gamma, float *d_beta, const float *d_out, const float *in,
                   const float *mean, const float *var, const float *gamma, int n, int d,
                   float eps, size_t f0, size_t f1),
                  (d_in, d_gamma, d_beta, d_out, in, mean, var, gamma, n, d, eps, f0, f1))

/* Rows [r0, r1): sum_g = the sum of d_out, sum_gx that of d_out times the
 * normalised input (batchnorm_backward_cols's sums), by feature. */
BST_SIMD_INLINE void batchnorm_backward_share_sums_generic(float *sum_g, float *sum_gx,
                                                           const float *d_out, const float *in,
                                                           const float *mean, const float *var,
                                                           size_t r0, size_t r1, int d, float eps)
{
    for (int c0 = 0; c0 < d; c0 += BN_BLOCK) {
        const int w = d - c0 < BN_BLOCK ? d - c0 : BN_BLOCK;
        float s[BN_BLOCK], sg[BN_BLOCK] = {0}, sgx[BN_BLOCK] = {0};
        for (int j = 0; j < w; j++)
            s[j] = 1.0f / sqrtf(var[c0 + j] + eps);
        const float *m = mean + c0;
        for (size_t r = r0; r < r1; r++) {
            const float *x = in + r * d + c0;
            const float *g = d_out + r * d + c0;
            for (int j = 0; j < w; j++) {
                sg[j] += g[j];
                sgx[j] += g[j] * (x[j] - m[j]) * s[j];
            }
        }
        for (int j = 0; j < w; j++) {
            sum_g[c0 + j] = sg[j];
            sum_gx[c0 + j] = sgx[j];
        }
    }
}
BST_SIMD_DISPATCH(batchnorm_backward_share_sums,
                  (float *sum_g, float *sum_gx, const float *d_out, const float *in,
                   const float *mean, const float *var, size_t r0, size_t r1, int d, float eps),
                  (sum_g, sum_gx, d_out, in, mean, var, r0, r1, d, eps))

void batchnorm_backward_sums(float *sum_g, float *sum_gx, const float *d_out, const float *in,
                             const float *mean, const float *var, size_t r0, size_t r1, int d,
                             float eps)
{
    batchnorm_backward_share_sums(sum_g, sum_gx, d_out, in, mean, var, r0, r1, d, eps);
}

/* Rows [r0, r1) of d_in from the whole batch's sums (n rows). */
BST_SIMD_INLINE void batchnorm_backward_share_rows_generic(float *d_in, const float *d_out,
                                                           const float *in, const float *mean,
                                                           const float *var, const float *gamma,
                                                           const float *sum_g,
                                                           const float *sum_gx, int n, size_t r0,
                                                           size_t r1, int d, float eps)
{
    for (int c0 = 0; c0 < d; c0 += BN_BLOCK) {
        const int w = d - c0 < BN_BLOCK ? d - c0 : BN_BLOCK;
        float s[BN_BLOCK], k[BN_BLOCK];
        for (int j = 0; j < w; j++) {
            s[j] = 1.0f / sqrtf(var[c0 + j] + eps);
            k[j] = gamma[c0 + j] * s[j] / (float)n;
        }
        const float *m = mean + c0, *sg = sum_g + c0, *sgx = sum_gx + c0;
        for (size_t r = r0; r < r1; r++) {
            const float *x = in + r * d + c0;
            const float *g = d_out + r * d + c0;
            float *dx = d_in + r * d + c0;
            for (int j = 0; j < w; j++) {
                float xhat = (x[j] - m[j]) * s[j];
                dx[j] = k[j] * ((float)n * g[j] - sg[j] - xhat * sgx[j]);
            }
        }
    }
}
BST_SIMD_DISPATCH(batchnorm_backward_share_rows,
                  (float *d_in, const float *d_out, const float *in, const float *mean,
                   const float *var, const float *gamma, const float *sum_g, const float *sum_gx,
                   int n, size_t r0, size_t r1, int d, float eps),
                  (d_in, d_out, in, mean, var, gamma, sum_g, sum_gx, n, r0, r1, d, eps))

void batchnorm_backward_rows(float *d_in, const float *d_out, const float *in, const float *mean,
                             const float *var, const float *gamma, const float *sum_g,
                             const float *sum_gx, int n, size_t r0, size_t r1, int d, float eps)
{
    batchnorm_backward_share_rows(d_in, d_out, in, mean, var, gamma, sum_g, sum_gx, n, r0, r1, d,
                                  eps);
}

void batchnorm_backward(float *d_in, float *d_gamma, float *d_beta, const float *d_out,
                        const float *in, const float *mean, const float *var,
                        const float *gamma, int n, int d, float eps)
{
    PARALLEL_FOR((size_t)d, BN_BLOCK, 8.0 * n * d, lo, hi,
                 batchnorm_backward_cols(d_in, d_gamma, d_beta, d_out, in, mean, var, gamma,
                                         n, d, eps, lo, hi));
}

void batchnorm_update_moving(float *moving_mean, float *moving_var, const float *mean,
                             const float *var, int d, float momentum)
{
    for (int c = 0; c < d; c++) {
        moving_mean[c] = momentum * moving_mean[c] + (1.0f - momentum) * mean[c];
        moving_var[c] = momentum * moving_var[c] + (1.0f - momentum) * var[c];
    }
}

BST_SIMD_INLINE void leaky_relu_forward_range_generic(float *out, const float *in, size_t lo,
                                                      size_t hi, float slope)
{
    /* Branch-free: signs are random, so a branch mispredicts half the time;
     * this form vectorises (fmaxf/fminf would be library calls). */
    for (size_t i = lo; i < hi; i++) {
        float k = (float)(in[i] > 0.0f) * (1.0f - slope) + slope;
        out[i] = in[i] * k;
    }
}
BST_SIMD_DISPATCH(leaky_relu_forward_range,
                  (float *out, const float *in, size_t lo, size_t hi, float slope),
                  (out, in, lo, hi, slope))

void leaky_relu_forward(float *out, const float *in, size_t n, float slope)
{
    PARALLEL_FOR(n, ELT_GRAIN, (double)n, lo, hi,
                 leaky_relu_forward_range(out, in, lo, hi, slope));
}

BST_SIMD_INLINE void leaky_relu_backward_range_generic(float *d_in, const float *d_out,
                                                       const float *in, size_t lo, size_t hi,
                                                       float slope)
{
    for (size_t i = lo; i < hi; i++) {
        float k = (float)(in[i] > 0.0f) * (1.0f - slope) + slope;
        d_in[i] = d_out[i] * k;
    }
}
BST_SIMD_DISPATCH(leaky_relu_backward_range,
                  (float *d_in, const float *d_out, const float *in, size_t lo, size_t hi,
                   float slope),
                  (d_in, d_out, in, lo, hi, slope))

void leaky_relu_backward(float *d_in, const float *d_out, const float *in, size_t n,
                         float slope)
{
    PARALLEL_FOR(n, ELT_GRAIN, (double)n, lo, hi,
                 leaky_relu_backward_range(d_in, d_out, in, lo, hi, slope));
}

/*
 * Dropout factors of units [lo, hi): 0 with probability p, else 1/(1-p).
 * Unit i keeps iff u >= p as Keras/TF does, with u a 24-bit fraction taken
 * from output i / 2 of the stream `key` (two units per 64-bit draw halve the
 * generator cost).  The factor of a unit depends only on (key, i), so any
 * split of the units between threads gives the same mask.
 */
BST_SIMD_INLINE void dropout_mask_range(float *mask, size_t lo, size_t hi, float p,
                                        uint64_t key)
{
    if (p <= 0.0f) {
        for (size_t i = lo; i < hi; i++)
            mask[i] = 1.0f;
        return;
    }
    float scale = 1.0f / (1.0f - p);
    uint32_t threshold = (uint32_t)ceilf(p * 16777216.0f);
    size_t i = lo;
    if (i < hi && (i & 1)) {  /* odd start: the second half of a draw */
        mask[i] = ((uint32_t)(bst_rng_at(key, i / 2) & 0xffffff) >= threshold) ? scale : 0.0f;
        i++;
    }
    for (; i + 1 < hi; i += 2) {
        uint64_t r = bst_rng_at(key, i / 2);
        mask[i] = ((uint32_t)(r >> 40) >= threshold) ? scale : 0.0f;
        mask[i + 1] = ((uint32_t)(r & 0xffffff) >= threshold) ? scale : 0.0f;
    }
    if (i < hi)
        mask[i] = ((uint32_t)(bst_rng_at(key, i / 2) >> 40) >= threshold) ? scale : 0.0f;
}

/*
 * One stream per call, drawn in the calling thread; p = 0 when disabled.
 * A call on units from `first` on of a whole (even: two units a draw) takes
 * the whole's stream from there, so it draws the whole's mask there.
 */
static float dropout_stream(float p, BstRng *rng, size_t first, uint64_t *key)
{
    if (rng == NULL || p <= 0.0f) {
        *key = 0;
        return 0.0f;
    }
    *key = bst_rng_skip(bst_rng_next(rng), first / 2);
    return p;
}

BST_SIMD_INLINE void dropout_forward_range_generic(float *out, float *mask, const float *in,
                                                   size_t lo, size_t hi, float p, uint64_t key)
{
    if (p <= 0.0f) {
        if (out != in)
            memmove(out + lo, in + lo, (hi - lo) * sizeof(float));
        if (mask)
            dropout_mask_range(mask, lo, hi, 0.0f, 0);
        return;
    }
    dropout_mask_range(mask, lo, hi, p, key);
    for (size_t i = lo; i < hi; i++)
        out[i] = in[i] * mask[i];
}
BST_SIMD_DISPATCH(dropout_forward_range,
                  (float *out, float *mask, const float *in, size_t lo, size_t hi, float p,
                   uint64_t key),
                  (out, mask, in, lo, hi, p, key))

void dropout_forward(float *out, float *mask, const float *in, size_t n, float p,
                     BstRng *rng)
{
    uint64_t key;
    p = dropout_stream(p, rng, 0, &key);
    PARALLEL_FOR(n, ELT_GRAIN, (p > 0.0f ? 4.0 : 1.0) * n, lo, hi,
                 dropout_forward_range(out, mask, in, lo, hi, p, key));
}

BST_SIMD_INLINE void dropout_backward_range_generic(float *d_in, const float *d_out,
                                                    const float *mask, size_t lo, size_t hi)
{
    for (size_t i = lo; i < hi; i++)
        d_in[i] = d_out[i] * mask[i];
}
BST_SIMD_DISPATCH(dropout_backward_range,
                  (float *d_in, const float *d_out, const float *mask, size_t lo, size_t hi),
                  (d_in, d_out, mask, lo, hi))

void dropout_backward(float *d_in, const float *d_out, const float *mask, size_t n)
{
    PARALLEL_FOR(n, ELT_GRAIN, (double)n, lo, hi,
                 dropout_backward_range(d_in, d_out, mask, lo, hi));
}

static void add_range(float *acc, const float *x, size_t lo, size_t hi)
{
    for (size_t i = lo; i < hi; i++)
        acc[i] += x[i];
}

void add_inplace(float *acc, const float *x, size_t n)
{
    /* Shares of whole cache lines (16 floats). */
    PARALLEL_FOR(n, 16, (double)n, lo, hi, add_range(acc, x, lo, hi));
}

/*
 * A transformer block's residual step, fused: each thread runs the whole
 * chain on its rows, one region instead of one per step, each row still in
 * its core's cache from one step to the next.  Every element is computed
 * by the same operations as the separate layers' (the same bits).
 */
static void residual_layernorm_rows(float *res, float *mask, float *out, float *mean,
                                    float *rstd, float *act, const float *branch,
                                    const float *x, const float *gamma, const float *beta,
                                    size_t r0, size_t r1, int d, float p, uint64_t key,
                                    float eps, float slope)
{
    const size_t lo = r0 * d, hi = r1 * d;
    dropout_forward_range(res, mask, branch, lo, hi, p, key);
    add_range(res, x, lo, hi);
    layernorm_forward_rows(out, mean, rstd, res, gamma, beta, r0, r1, d, eps);
    if (act)
        leaky_relu_forward_range(act, out, lo, hi, slope);
}

void residual_layernorm_forward(float *res, float *mask, float *out, float *mean, float *rstd,
                                float *act, const float *branch, const float *x,
                                const float *gamma, const float *beta, int n, int d, float p,
                                BstRng *rng, size_t row0, float eps, float slope)
{
    uint64_t key;
    p = dropout_stream(p, rng, row0 * d, &key);
    PARALLEL_FOR((size_t)n, 1, 10.0 * n * d, lo, hi,
                 residual_layernorm_rows(res, mask, out, mean, rstd, act, branch, x, gamma, beta,
                                         lo, hi, d, p, key, eps, slope));
}

static void residual_layernorm_input_rows(float *d_branch, float *d_res, float *d_out,
                                          const float *d_act, const float *out,
                                          const float *d_skip, const float *res,
                                          const float *mean, const float *rstd,
                                          const float *gamma, const float *mask, size_t r0,
                                          size_t r1, int d, float slope)
{
    const size_t lo = r0 * d, hi = r1 * d;
    if (d_act) {
        leaky_relu_backward_range(d_out, d_act, out, lo, hi, slope);
        add_range(d_out, d_skip, lo, hi);
    }
    layernorm_backward_rows(d_res, d_out, res, mean, rstd, gamma, r0, r1, d);
    dropout_backward_range(d_branch, d_res, mask, lo, hi);
}

void residual_layernorm_backward(float *d_branch, float *d_res, float *d_gamma, float *d_beta,
                                 float *d_out, const float *d_act, const float *out,
                                 const float *d_skip, const float *res, const float *mean,
                                 const float *rstd, const float *gamma, const float *mask,
                                 int n, int d, float slope)
{
    /* The parameters' sums read d_out: after the rows when those write it
     * (d_act), else beside them.  Without d_branch no row is computed, and
     * without d_gamma no sum (model.c's window shares run the rows, then
     * the sums over every row). */
    const size_t rows = d_branch ? (size_t)n : 0, cols = d_gamma ? (size_t)d : 0;
    if (d_act) {
        PARALLEL_FOR(rows, 1, 10.0 * n * d, lo, hi,
                     residual_layernorm_input_rows(d_branch, d_res, d_out, d_act, out, d_skip,
                                                   res, mean, rstd, gamma, mask, lo, hi, d,
                                                   slope));
        PARALLEL_FOR(cols, 1, 4.0 * n * d, lo, hi,
                     layernorm_backward_param_cols(d_gamma, d_beta, d_out, res, mean, rstd, n, d,
                                                   lo, hi));
    } else {
        PARALLEL_FOR_PAIR(rows, 1, 10.0 * n * d, r0, r1,
                          residual_layernorm_input_rows(d_branch, d_res, d_out, d_act, out,
                                                        d_skip, res, mean, rstd, gamma, mask, r0,
                                                        r1, d, slope),
                          cols, 1, 4.0 * n * d, c0, c1,
                          layernorm_backward_param_cols(d_gamma, d_beta, d_out, res, mean, rstd,
                                                        n, d, c0, c1));
    }
}

/* An MLP layer's activation and its dropout, fused as the residual step
 * above (the same bits as leaky_relu_forward, then dropout_forward). */
static void leaky_relu_dropout_range(float *act, float *out, float *mask, const float *in,
                                     size_t lo, size_t hi, float slope, float p, uint64_t key)
{
    leaky_relu_forward_range(act, in, lo, hi, slope);
    dropout_forward_range(out, mask, act, lo, hi, p, key);
}

void leaky_relu_dropout_forward(float *act, float *out, float *mask, const float *in, size_t n,
                                float slope, float p, BstRng *rng)
{
    uint64_t key;
    p = dropout_stream(p, rng, 0, &key);
    PARALLEL_FOR(n, ELT_GRAIN, (p > 0.0f ? 5.0 : 2.0) * n, lo, hi,
                 leaky_relu_dropout_range(act, out, mask, in, lo, hi, slope, p, key));
}

static void batchnorm_activation_rows(float *out, float *act, float *drop, float *mask,
                                      const float *mean, const float *var, const float *in,
                                      const float *gamma, const float *beta, int d, float eps,
                                      float slope, float p, uint64_t key, size_t r0, size_t r1)
{
    batchnorm_normalize_rows(out, mean, var, in, gamma, beta, d, eps, r0, r1);
    leaky_relu_dropout_range(act, drop, mask, out, r0 * d, r1 * d, slope, p, key);
}

float dropout_key(float p, BstRng *rng, uint64_t *key)
{
    return dropout_stream(p, rng, 0, key);
}

/* Rows [r0, r1): the mean of each feature, and the sum of the squared
 * deviations from it (two passes, as batchnorm_forward_cols). */
BST_SIMD_INLINE void batchnorm_share_stats_generic(float *mean, float *m2, const float *in,
                                                   size_t r0, size_t r1, int d)
{
    for (int c0 = 0; c0 < d; c0 += BN_BLOCK) {
        const int w = d - c0 < BN_BLOCK ? d - c0 : BN_BLOCK;
        float m[BN_BLOCK] = {0}, v[BN_BLOCK] = {0};
        for (size_t r = r0; r < r1; r++) {
            const float *x = in + r * d + c0;
            for (int j = 0; j < w; j++)
                m[j] += x[j];
        }
        for (int j = 0; j < w; j++)
            m[j] /= (float)(r1 - r0);
        for (size_t r = r0; r < r1; r++) {
            const float *x = in + r * d + c0;
            for (int j = 0; j < w; j++)
                v[j] += (x[j] - m[j]) * (x[j] - m[j]);
        }
        for (int j = 0; j < w; j++) {
            mean[c0 + j] = m[j];
            m2[c0 + j] = v[j];
        }
    }
}
BST_SIMD_DISPATCH(batchnorm_share_stats,
                  (float *mean, float *m2, const float *in, size_t r0, size_t r1, int d),
                  (mean, m2, in, r0, r1, d))

void batchnorm_share_stats_forward(float *mean, float *m2, const float *in, size_t r0,
                                   size_t r1, int d)
{
    batchnorm_share_stats(mean, m2, in, r0, r1, d);
}

void batchnorm_combine_stats(float *mean, float *var, const float *share_mean,
                             const float *share_m2, const size_t *share_rows, int shares,
                             size_t stride, int d)
{
    for (int c = 0; c < d; c++) {
        /* Chan, Golub and LeVeque's pairwise update, share after share. */
        double n = (double)share_rows[0], mu = share_mean[c], m2 = share_m2[c];
        for (int s = 1; s < shares; s++) {
            const double ns = (double)share_rows[s], delta = share_mean[s * stride + c] - mu;
            const double total = n + ns;
            mu += delta * ns / total;
            m2 += share_m2[s * stride + c] + delta * delta * n * ns / total;
            n = total;
        }
        mean[c] = shares == 1 ? share_mean[c] : (float)mu;
        var[c] = shares == 1 ? share_m2[c] / (float)n : (float)(m2 / n);
    }
}

void batchnorm_activation_rows_forward(float *out, float *act, float *drop, float *mask,
                                       const float *mean, const float *var, const float *in,
                                       const float *gamma, const float *beta, int d, float eps,
                                       float slope, float p, uint64_t key, size_t r0, size_t r1)
{
    batchnorm_activation_rows(out, act, drop, mask, mean, var, in, gamma, beta, d, eps, slope, p,
                              key, r0, r1);
}

static void leaky_relu_dropout_backward_range(float *d_act, float *d_in, const float *d_out,
                                              const float *mask, const float *in, size_t lo,
                                              size_t hi, float slope)
{
    dropout_backward_range(d_act, d_out, mask, lo, hi);
    leaky_relu_backward_range(d_in, d_act, in, lo, hi, slope);
}

void leaky_relu_dropout_backward(float *d_act, float *d_in, const float *d_out,
                                 const float *mask, const float *in, size_t n, float slope)
{
    PARALLEL_FOR(n, ELT_GRAIN, 2.0 * n, lo, hi,
                 leaky_relu_dropout_backward_range(d_act, d_in, d_out, mask, in, lo, hi,
                                                   slope));
}

/* The n-th weight of weighted_rows: a[n], or a[n] b[n] (a probability and
 * its dropout factor), n steps of `stride` apart. */
BST_SIMD_INLINE float weight_at(const float *a, const float *b, size_t stride, int n)
{
    return b ? a[n * stride] * b[n * stride] : a[n * stride];
}

/*
 * out = sum over n < count of weight_n row_n (row_n = rows + n * row_stride),
 * each element summed from 0 in the order of n, as a row of zeros that
 * accumulates one weighted row at a time would be, so the same bits; but a
 * chunk of columns stays in registers across the rows instead of being
 * stored and loaded again for each (that store-and-load was most of the
 * attention's time).  The attention's contexts, and in its backward pass
 * the gradients of the queries, keys and values, are all such sums.
 */
/* Columns [c, c + width) of weighted_rows (width a constant at every call,
 * at most 16, so that the accumulators are registers: one AVX-512 register,
 * two AVX ones). */
BST_SIMD_INLINE void weighted_chunk(float *restrict out, const float *wa, const float *wb,
                                    size_t w_stride, const float *rows, size_t row_stride,
                                    int count, int c, const int width, int add)
{
    float acc[16];
    for (int t = 0; t < width; t++)
        acc[t] = 0.0f;
    for (int n = 0; n < count; n++) {
        const float w = weight_at(wa, wb, w_stride, n);
        for (int t = 0; t < width; t++)
            acc[t] += w * rows[n * row_stride + c + t];
    }
    if (add)
        for (int t = 0; t < width; t++)
            out[c + t] += acc[t];
    else
        memcpy(out + c, acc, (size_t)width * sizeof(float));
}

/* The most rows of a window that window_mix takes (below): their L x L
 * weights are gathered on the stack.  Longer windows, and rows narrower
 * than 16 floats, take weighted_rows. */
#define WEIGHTED_FEW 64

/* Chunks of 16, 8 and 4 columns, then single ones.  With add, the sums
 * are added to out (out + the sum, as window_mix's add). */
BST_SIMD_INLINE void weighted_rows(float *restrict out, const float *wa, const float *wb,
                                   size_t w_stride, const float *rows, size_t row_stride,
                                   int count, int dk, int add)
{
    int c = 0;
    for (; c + 16 <= dk; c += 16)
        weighted_chunk(out, wa, wb, w_stride, rows, row_stride, count, c, 16, add);
    if (c + 8 <= dk) {
        weighted_chunk(out, wa, wb, w_stride, rows, row_stride, count, c, 8, add);
        c += 8;
    }
    if (c + 4 <= dk) {
        weighted_chunk(out, wa, wb, w_stride, rows, row_stride, count, c, 4, add);
        c += 4;
    }
    for (; c < dk; c++) {
        float acc = 0.0f;
        for (int n = 0; n < count; n++)
            acc += weight_at(wa, wb, w_stride, n) * rows[n * row_stride + c];
        out[c] = add ? out[c] + acc : acc;
    }
}

/*
 * The per-window products here (L x dk by dk x L, L = 4 in BST) are far too
 * small for a BLAS call to pay off: one sgemm per (window, head) costs more in
 * call overhead than the arithmetic, so these stay as plain loops.  All
 * mini-batch products (the projections) go through sgemm in linear_*.
 * Windows are independent: threads take ranges of windows.
 */

static const v16i lane_index = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

/*
 * Dot products of a window and head, 16 at a time (vec16.h): lane n =
 * a_i . b_j for the pair p = p0 + n, n < count <= 16, (i, j) = (p / L,
 * p % L), rows a + i a_stride and b + j b_stride of dk >= 16 floats; lanes
 * from count on 0.  Each product sums in 16 lanes, the row in chunks of 16
 * (the last chunk ends at dk, overlapping the one before, whose lanes it
 * zeroes), and then its lanes pairwise (v16_sums).  Inlined with L = 4 and
 * count = 16 constants, every pair's rows are constants and each row is
 * loaded once a chunk.
 */
BST_SIMD_INLINE v16f pair_dots(const float *a, size_t a_stride, const float *b, size_t b_stride,
                               const int L, int p0, const int count, int dk)
{
    const v16f zero = {0};
    /* Sixteen named sums, not an array: gcc keeps an array of vectors this
     * large in memory, each add then a load and a store. */
    v16f s0 = zero, s1 = zero, s2 = zero, s3 = zero, s4 = zero, s5 = zero, s6 = zero,
         s7 = zero, s8 = zero, s9 = zero, s10 = zero, s11 = zero, s12 = zero, s13 = zero,
         s14 = zero, s15 = zero;
#define PAIR_ROW_A(n) (a + (size_t)((p0 + (n)) / L) * a_stride)
#define PAIR_ROW_B(n) (b + (size_t)((p0 + (n)) % L) * b_stride)
#define PAIR_ADD(n, c)                                                                     \
    if ((n) < count)                                                                       \
    s##n += v16_load(PAIR_ROW_A(n) + (c)) * v16_load(PAIR_ROW_B(n) + (c))
#define PAIR_ADD_TAIL(n, c, keep)                                                          \
    if ((n) < count)                                                                       \
    s##n += v16_select(keep, v16_load(PAIR_ROW_A(n) + (c)) * v16_load(PAIR_ROW_B(n) + (c)), zero)
    int c = 0;
    for (; c + 16 <= dk; c += 16) {
        PAIR_ADD(0, c); PAIR_ADD(1, c); PAIR_ADD(2, c); PAIR_ADD(3, c);
        PAIR_ADD(4, c); PAIR_ADD(5, c); PAIR_ADD(6, c); PAIR_ADD(7, c);
        PAIR_ADD(8, c); PAIR_ADD(9, c); PAIR_ADD(10, c); PAIR_ADD(11, c);
        PAIR_ADD(12, c); PAIR_ADD(13, c); PAIR_ADD(14, c); PAIR_ADD(15, c);
    }
    if (c < dk) {
        const int off = dk - 16;
        const v16i fresh = lane_index >= (v16i){0} + (c - off);
        PAIR_ADD_TAIL(0, off, fresh); PAIR_ADD_TAIL(1, off, fresh);
        PAIR_ADD_TAIL(2, off, fresh); PAIR_ADD_TAIL(3, off, fresh);
        PAIR_ADD_TAIL(4, off, fresh); PAIR_ADD_TAIL(5, off, fresh);
        PAIR_ADD_TAIL(6, off, fresh); PAIR_ADD_TAIL(7, off, fresh);
        PAIR_ADD_TAIL(8, off, fresh); PAIR_ADD_TAIL(9, off, fresh);
        PAIR_ADD_TAIL(10, off, fresh); PAIR_ADD_TAIL(11, off, fresh);
        PAIR_ADD_TAIL(12, off, fresh); PAIR_ADD_TAIL(13, off, fresh);
        PAIR_ADD_TAIL(14, off, fresh); PAIR_ADD_TAIL(15, off, fresh);
    }
#undef PAIR_ADD_TAIL
#undef PAIR_ADD
#undef PAIR_ROW_B
#undef PAIR_ROW_A
    return v16_sums(s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15);
}

/* All L x L products a_i . b_j of a window and head into out (row i,
 * column j): pair_dots's order, or dot8's when dk < 16. */
BST_SIMD_INLINE void window_dots(float *out, const float *a, size_t a_stride, const float *b,
                                 size_t b_stride, const int L, int dk)
{
    if (dk < 16) {
        for (int i = 0; i < L; i++)
            dot8_rows(out + (size_t)i * L, a + (size_t)i * a_stride, b, b_stride, 0, L, dk);
        return;
    }
    for (int p0 = 0; p0 < L * L; p0 += 16) {
        const int count = L * L - p0 < 16 ? L * L - p0 : 16;
        const v16f dots = pair_dots(a, a_stride, b, b_stride, L, p0, count, dk);
        memcpy(out + p0, &dots, (size_t)count * sizeof(float));
    }
}

/* Every lane: the sum of its row of the 4 x 4 block, (x0 + x1) + (x2 + x3)
 * (the same bits in all four lanes: a + b is b + a). */
BST_SIMD_INLINE v16f row_sums_4x4(v16f x)
{
    x = x + v16_swap1(x);
    return x + v16_swap2(x);
}

/*
 * Softmax of a window and head's 4 x 4 scores held in one vector (lane
 * 4i + j): scaled, each row over its keys j >= first (padding, j < first,
 * gets 0).  Rows are reduced by shuffles, the sum as row_sums_4x4.  Scores
 * of padded keys are finite products of finite rows; they only take part
 * until the select that zeroes them.
 */
BST_SIMD_INLINE v16f softmax_4x4(v16f s, int first, float scale)
{
    const v16f zero = {0};
    const v16i valid = (lane_index & 3) >= (v16i){0} + first;
    s = s * scale;
    v16f m = v16_select(valid, s, zero - INFINITY);
    v16f other = v16_swap1(m);
    m = v16_select(other > m, other, m);
    other = v16_swap2(m);
    m = v16_select(other > m, other, m);
    const v16f e = v16_select(valid, v16_exp(s - m), zero);
    return e * ((zero + 1.0f) / row_sums_4x4(e));
}

/*
 * The same for any L, on the scores in pr (L x L): each row's scaled
 * scores less its largest valid one, every exponential of the block by
 * v16_exp, padding 0, each row's sum from j = first on.
 */
BST_SIMD_INLINE void softmax_rows(float *pr, int L, int first, float scale)
{
    for (int i = 0; i < L; i++) {
        float *row = pr + (size_t)i * L, maxv = -INFINITY;
        for (int j = first; j < L; j++) {
            row[j] *= scale;
            if (row[j] > maxv)
                maxv = row[j];
        }
        for (int j = first; j < L; j++)
            row[j] -= maxv;
    }
    for (int p = 0; p < L * L; p += 16) {
        float block[16] = {0};
        const int n = L * L - p < 16 ? L * L - p : 16;
        memcpy(block, pr + p, (size_t)n * sizeof(float));
        v16_store(block, v16_exp(v16_load(block)));
        memcpy(pr + p, block, (size_t)n * sizeof(float));
    }
    for (int i = 0; i < L; i++) {
        float *row = pr + (size_t)i * L, sum = 0.0f;
        for (int j = 0; j < first; j++)
            row[j] = 0.0f;
        for (int j = first; j < L; j++)
            sum += row[j];
        const float inv = 1.0f / sum;
        for (int j = first; j < L; j++)
            row[j] *= inv;
    }
}

/* The probabilities in 1.0's order: dot8 for each score and libm's expf
 * one at a time (attention_forward_inference says why it stays). */
BST_SIMD_INLINE void window_probs_1_0(float *pr, const float *q, size_t q_stride, const float *k,
                                      size_t k_stride, int L, int dk, int first, float scale)
{
    for (int i = 0; i < L; i++) {
        const float *qi = q + (size_t)i * q_stride;
        float *row = pr + (size_t)i * L;
        float maxv = -INFINITY;
        for (int j = 0; j < first; j++)
            row[j] = 0.0f;
        dot8_rows(row, qi, k, k_stride, first, L, dk);
        for (int j = first; j < L; j++) {
            row[j] *= scale;
            if (row[j] > maxv)
                maxv = row[j];
        }
        float sum = 0.0f;
        for (int j = first; j < L; j++) {
            row[j] = expf(row[j] - maxv);
            sum += row[j];
        }
        float inv = 1.0f / sum;
        for (int j = first; j < L; j++)
            row[j] *= inv;
    }
}

/*
 * out_o = sum over n < L of w_on row_n for all o < L at once, each sum from 0
 * in the order of n as weighted_rows adds (the same bits), w_on =
 * w[o * w_o + n * w_n], rows row_n = rows + n * row_stride of dk >= 16
 * floats, out_o = out + o * out_stride: a window's contexts, or in the
 * backward the gradients of its values, queries and keys.  With add, the
 * sum is added to out_o instead (out_o + the sum: the keys' gradient,
 * which every head adds to).  A chunk of 16 columns of every row is loaded
 * once for all L sums, which then run as L independent chains of adds.
 * Chunks as weighted_rows's: the last one ends at dk (with add, the
 * columns that the chunk before it added to are left as they are).
 */
BST_SIMD_INLINE void window_mix(float *out, size_t out_stride, const float *w, size_t w_o,
                                size_t w_n, const float *rows, size_t row_stride, const int L,
                                int dk, const int add)
{
    for (int c = 0;; c += 16) {
        v16i fresh = lane_index >= (v16i){0};
        if (c + 16 > dk) {
            fresh = lane_index >= (v16i){0} + (c - (dk - 16));
            c = dk - 16;
        }
#pragma GCC unroll 4
        for (int o = 0; o < L; o++) {
            v16f acc = {0};
#pragma GCC unroll 4
            for (int n = 0; n < L; n++)
                acc += w[o * w_o + n * w_n] * v16_load(rows + n * row_stride + c);
            float *dst = out + o * out_stride + c;
            if (add) {
                const v16f before = v16_load(dst);
                v16_store(dst, v16_select(fresh, before + acc, before));
            } else {
                v16_store(dst, acc);
            }
        }
        if (c + 16 >= dk)
            break;
    }
}

/*
 * Where attention finds a batch's rows (row r = b L + i, head h): the
 * query at q + r stride + h dk, the value at v + r stride + h dk, the key
 * at k + r k_stride + h k_head.  The fused projection's rows [q | k | v]
 * (stride 3 H dk, k = q + H dk, k_head = dk), or training's folded ones:
 * rows [q | v] (stride 2 H dk) and x's own rows as the key of every head
 * (k_stride dk, k_head 0).  Gradients alike, where k_head 0 means that
 * each head's keys' gradient is added to the rows at k.
 */
typedef struct AttentionRows {
    const float *q, *k, *v;
    size_t stride, k_stride, k_head;
} AttentionRows;
typedef struct AttentionGrads {
    float *q, *k, *v;
    size_t stride, k_stride, k_head;
} AttentionGrads;

static AttentionRows attention_rows_qkv(const float *qkv, int H, int dk)
{
    const size_t hd = (size_t)H * dk;
    return (AttentionRows){qkv, qkv + hd, qkv + 2 * hd, 3 * hd, 3 * hd, (size_t)dk};
}

static AttentionRows attention_rows_folded(const float *qv, const float *x, int H, int dk)
{
    const size_t hd = (size_t)H * dk;
    return (AttentionRows){qv, x, qv + hd, 2 * hd, (size_t)dk, 0};
}

/*
 * Windows [b0, b1), one window at a time (its rows stay in L1 from the
 * scores to the contexts): the probabilities (order_1_0: 1.0's order, else
 * the vector one, a 4 x 4 block in registers when L = 4; constants where
 * inlined), the window's dropout factors, the contexts.
 */
BST_SIMD_INLINE void attention_forward_body(float *ctx, float *probs, float *mask,
                                            AttentionRows in, const int32_t *hist_len,
                                            size_t b0, size_t b1, const int L, int H, int dk,
                                            float p, uint64_t key, const int order_1_0)
{
    const int hd = H * dk;
    /* Keras scales the query by 1/sqrt(key_dim) before the dot product. */
    const float scale = 1.0f / sqrtf((float)dk);
    const size_t per_window = (size_t)H * L * L;
    const int mixed = dk >= 16 && L <= WEIGHTED_FEW;
    for (size_t b = b0; b < b1; b++) {
        /* Padded keys get probability 0; the target is never padding, so
         * every row keeps at least one key. */
        const int first = bst_first_valid(hist_len, b, L);
        /* The dropped probabilities are never stored: ctx uses probs *
         * mask, which keeps probs intact for the softmax backward.  Without
         * a mask (inference: p = 0) the factors would all be 1, and x * 1
         * is x: ctx uses probs.  Each factor is its index's draw, however
         * the windows are split. */
        if (mask)
            dropout_mask_range(mask, b * per_window, (b + 1) * per_window, p, key);
        for (int h = 0; h < H; h++) {
            float *pr = probs + (b * H + h) * L * L;
            const float *mk = mask ? mask + (b * H + h) * L * L : NULL;
            const size_t head = b * L * in.stride + (size_t)h * dk;
            const float *q = in.q + head, *v = in.v + head;
            const float *k = in.k + b * L * in.k_stride + h * in.k_head;
            float *out = ctx + b * L * hd + (size_t)h * dk;
            /* The weights of the value rows: probabilities times their
             * dropout factors (weight_at's product), or the probabilities. */
            float w[WEIGHTED_FEW * WEIGHTED_FEW];
            const float *weights = mk ? w : pr;
            if (!order_1_0 && L == 4 && dk >= 16) {
                const v16f probs_4x4 = softmax_4x4(
                    pair_dots(q, in.stride, k, in.k_stride, 4, 0, 16, dk), first, scale);
                v16_store(pr, probs_4x4);
                if (mk)
                    v16_store(w, probs_4x4 * v16_load(mk));
            } else {
                if (order_1_0) {
                    window_probs_1_0(pr, q, in.stride, k, in.k_stride, L, dk, first, scale);
                } else {
                    window_dots(pr, q, in.stride, k, in.k_stride, L, dk);
                    softmax_rows(pr, L, first, scale);
                }
                if (mk && mixed)
                    for (int e = 0; e < L * L; e++)
                        w[e] = pr[e] * mk[e];
            }
            if (mixed) {
                window_mix(out, hd, weights, L, 1, v, in.stride, L, dk, 0);
                continue;
            }
            for (int i = 0; i < L; i++)
                weighted_rows(out + (size_t)i * hd, pr + (size_t)i * L,
                              mk ? mk + (size_t)i * L : NULL, 1, v, in.stride, L, dk, 0);
        }
    }
}

/* BST's windows of 4 get a copy with L a constant. */
BST_SIMD_INLINE void attention_forward_windows_generic(float *ctx, float *probs, float *mask,
                                                       AttentionRows in,
                                                       const int32_t *hist_len, size_t b0,
                                                       size_t b1, int L, int H, int dk, float p,
                                                       uint64_t key)
{
    if (L == 4)
        attention_forward_body(ctx, probs, mask, in, hist_len, b0, b1, 4, H, dk, p, key, 0);
    else
        attention_forward_body(ctx, probs, mask, in, hist_len, b0, b1, L, H, dk, p, key, 0);
}
BST_SIMD_DISPATCH(attention_forward_windows,
                  (float *ctx, float *probs, float *mask, AttentionRows in,
                   const int32_t *hist_len, size_t b0, size_t b1, int L, int H, int dk, float p,
                   uint64_t key),
                  (ctx, probs, mask, in, hist_len, b0, b1, L, H, dk, p, key))

BST_SIMD_INLINE void attention_forward_windows_1_0_generic(float *ctx, float *probs,
                                                           AttentionRows in,
                                                           const int32_t *hist_len, size_t b0,
                                                           size_t b1, int L, int H, int dk)
{
    attention_forward_body(ctx, probs, NULL, in, hist_len, b0, b1, L, H, dk, 0.0f, 0, 1);
}
BST_SIMD_DISPATCH(attention_forward_windows_1_0,
                  (float *ctx, float *probs, AttentionRows in, const int32_t *hist_len,
                   size_t b0, size_t b1, int L, int H, int dk),
                  (ctx, probs, in, hist_len, b0, b1, L, H, dk))

static void attention_forward_rows(float *ctx, float *probs, float *mask, AttentionRows in,
                                   const int32_t *hist_len, int B, int L, int H, int dk, float p,
                                   BstRng *rng, size_t window0)
{
    uint64_t key;
    p = dropout_stream(p, rng, window0 * H * L * L, &key);
    PARALLEL_FOR((size_t)B, 1, 4.0 * B * H * L * L * dk, lo, hi,
                 attention_forward_windows(ctx, probs, mask, in, hist_len, lo, hi, L, H, dk, p,
                                           key));
}

void attention_forward(float *ctx, float *probs, float *mask, const float *qkv,
                       const int32_t *hist_len, int B, int L, int H, int dk, float p,
                       BstRng *rng)
{
    attention_forward_rows(ctx, probs, mask, attention_rows_qkv(qkv, H, dk), hist_len, B, L, H,
                           dk, p, rng, 0);
}

void attention_forward_folded(float *ctx, float *probs, float *mask, const float *qv,
                              const float *x, const int32_t *hist_len, int B, int L, int H,
                              int dk, float p, BstRng *rng, size_t window0)
{
    attention_forward_rows(ctx, probs, mask, attention_rows_folded(qv, x, H, dk), hist_len, B,
                           L, H, dk, p, rng, window0);
}

void attention_forward_inference(float *ctx, float *probs, const float *qkv,
                                 const int32_t *hist_len, int B, int L, int H, int dk)
{
    const AttentionRows in = attention_rows_qkv(qkv, H, dk);
    PARALLEL_FOR((size_t)B, 1, 4.0 * B * H * L * L * dk, lo, hi,
                 attention_forward_windows_1_0(ctx, probs, in, hist_len, lo, hi, L, H, dk));
}

BST_SIMD_INLINE void attention_backward_body(AttentionGrads d, float *d_probs, const float *d_ctx,
                                             const float *probs, const float *mask,
                                             AttentionRows in, size_t b0, size_t b1, const int L,
                                             int H, int dk, size_t g_stride, size_t g_head)
{
    const float scale = 1.0f / sqrtf((float)dk);
    const int mixed = dk >= 16 && L <= WEIGHTED_FEW;
    /* Keys shared by the heads: each head adds its keys' gradient. */
    const int add_keys = d.k_head == 0;
    for (size_t b = b0; b < b1; b++) {
        for (int h = 0; h < H; h++) {
            const size_t blk = (b * H + h) * L * L, head = b * L * in.stride + (size_t)h * dk;
            const size_t khead = b * L * in.k_stride + h * in.k_head;
            const size_t dkhead = b * L * d.k_stride + h * d.k_head;
            const float *q = in.q + head, *k = in.k + khead, *v = in.v + head;
            float *d_q = d.q + head, *d_k = d.k + dkhead, *d_v = d.v + head;
            const float *pr = probs + blk, *mk = mask + blk;
            const float *g = d_ctx + b * L * g_stride + h * g_head;
            /* ds (in d_probs): the gradient of the scores.  Through ctx =
             * (probs * mask) . V, dp_ij = g_i . v_j * mask_ij; through the
             * softmax, ds_ij = p_ij (dp_ij - sum_k p_ik dp_ik), scaled as
             * the scores were.  pm: the value rows' weights, p_ij mask_ij. */
            float *ds = d_probs + blk;
            float pm[WEIGHTED_FEW * WEIGHTED_FEW];
            if (L == 4 && dk >= 16) {
                const v16f p_4x4 = v16_load(pr), mk_4x4 = v16_load(mk);
                const v16f dp = pair_dots(g, g_stride, v, in.stride, 4, 0, 16, dk) * mk_4x4;
                v16_store(ds, p_4x4 * (dp - row_sums_4x4(p_4x4 * dp)) * scale);
                v16_store(pm, p_4x4 * mk_4x4);
            } else {
                window_dots(ds, g, g_stride, v, in.stride, L, dk);
                for (int i = 0; i < L; i++) {
                    float *dsi = ds + (size_t)i * L;
                    for (int j = 0; j < L; j++)
                        dsi[j] *= mk[(size_t)i * L + j];
                    float dot = 0.0f;
                    for (int j = 0; j < L; j++)
                        dot += pr[(size_t)i * L + j] * dsi[j];
                    for (int j = 0; j < L; j++)
                        dsi[j] = pr[(size_t)i * L + j] * (dsi[j] - dot) * scale;
                }
                if (mixed)
                    for (int e = 0; e < L * L; e++)
                        pm[e] = pr[e] * mk[e];
            }
            /* Each row's gradient is a sum over the other side's rows:
             * dv_j = sum_i p_ij mask_ij g_i, dq_i = sum_j ds_ij k_j,
             * dk_j = sum_i ds_ij q_i; written whole (no zeroing first),
             * but for shared keys, where the sum is added. */
            if (mixed) {
                window_mix(d_v, d.stride, pm, 1, L, g, g_stride, L, dk, 0);
                window_mix(d_q, d.stride, ds, L, 1, k, in.k_stride, L, dk, 0);
                window_mix(d_k, d.k_stride, ds, 1, L, q, in.stride, L, dk, add_keys);
                continue;
            }
            for (int j = 0; j < L; j++) {
                weighted_rows(d_v + (size_t)j * d.stride, pr + j, mk + j, (size_t)L, g, g_stride,
                              L, dk, 0);
                weighted_rows(d_q + (size_t)j * d.stride, ds + (size_t)j * L, NULL, 1, k,
                              in.k_stride, L, dk, 0);
                weighted_rows(d_k + (size_t)j * d.k_stride, ds + j, NULL, (size_t)L, q, in.stride,
                              L, dk, add_keys);
            }
        }
    }
}
/* As the forward, a copy with L = 4 a constant. */
BST_SIMD_INLINE void attention_backward_windows_generic(AttentionGrads d, float *d_probs,
                                                        const float *d_ctx, const float *probs,
                                                        const float *mask, AttentionRows in,
                                                        size_t b0, size_t b1, int L, int H, int dk,
                                                        size_t g_stride, size_t g_head)
{
    if (L == 4)
        attention_backward_body(d, d_probs, d_ctx, probs, mask, in, b0, b1, 4, H, dk, g_stride,
                                g_head);
    else
        attention_backward_body(d, d_probs, d_ctx, probs, mask, in, b0, b1, L, H, dk, g_stride,
                                g_head);
}
BST_SIMD_DISPATCH(attention_backward_windows,
                  (AttentionGrads d, float *d_probs, const float *d_ctx, const float *probs,
                   const float *mask, AttentionRows in, size_t b0, size_t b1, int L, int H,
                   int dk, size_t g_stride, size_t g_head),
                  (d, d_probs, d_ctx, probs, mask, in, b0, b1, L, H, dk, g_stride, g_head))

void attention_backward(float *d_qkv, float *d_probs, const float *d_ctx,
                        const float *probs, const float *mask, const float *qkv,
                        int B, int L, int H, int dk)
{
    const size_t hd = (size_t)H * dk;
    const AttentionRows in = attention_rows_qkv(qkv, H, dk);
    const AttentionGrads d = {d_qkv, d_qkv + hd, d_qkv + 2 * hd, 3 * hd, 3 * hd, (size_t)dk};
    PARALLEL_FOR((size_t)B, 1, 8.0 * B * H * L * L * dk, lo, hi,
                 attention_backward_windows(d, d_probs, d_ctx, probs, mask, in, lo, hi, L, H, dk,
                                            hd, (size_t)dk));
}

void attention_backward_folded(float *d_qv, float *d_x, float *d_probs, const float *d_out,
                               const float *probs, const float *mask, const float *qv,
                               const float *x, int B, int L, int H, int dk)
{
    const size_t hd = (size_t)H * dk;
    const AttentionRows in = attention_rows_folded(qv, x, H, dk);
    const AttentionGrads d = {d_qv, d_x, d_qv + hd, 2 * hd, (size_t)dk, 0};
    PARALLEL_FOR((size_t)B, 1, 8.0 * B * H * L * L * dk, lo, hi,
                 attention_backward_windows(d, d_probs, d_out, probs, mask, in, lo, hi, L, H, dk,
                                            (size_t)dk, 0));
}

/* B * k multiply-adds, serial: a fraction of any other layer's work. */
void factor_forward(float *pred, const float *user_factors, const float *movie_factors,
                    const int32_t *users, const int32_t *movies, int32_t n_user_rows,
                    int32_t n_movie_rows, int B, int k)
{
    for (int b = 0; b < B; b++)
        pred[b] += dot8(user_factors + (size_t)bst_row_or_zero(users[b], n_user_rows) * k,
                        movie_factors + (size_t)bst_row_or_zero(movies[b], n_movie_rows) * k, k);
}

void factor_backward(float *d_user_factors, float *d_movie_factors, const float *d_pred,
                     const float *user_factors, const float *movie_factors,
                     const int32_t *users, const int32_t *movies, int32_t n_user_rows,
                     int32_t n_movie_rows, int B, int k)
{
    for (int b = 0; b < B; b++) {
        const size_t u = (size_t)bst_row_or_zero(users[b], n_user_rows) * k;
        const size_t m = (size_t)bst_row_or_zero(movies[b], n_movie_rows) * k;
        for (int c = 0; c < k; c++) {
            d_user_factors[u + c] += d_pred[b] * movie_factors[m + c];
            d_movie_factors[m + c] += d_pred[b] * user_factors[u + c];
        }
    }
}

float mse_forward(const float *pred, const float *target, int n)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        double e = (double)pred[i] - (double)target[i];
        sum += e * e;
    }
    return (float)(sum / n);
}

void mse_backward(float *d_pred, const float *pred, const float *target, int n)
{
    for (int i = 0; i < n; i++)
        d_pred[i] = 2.0f * (pred[i] - target[i]) / (float)n;
}

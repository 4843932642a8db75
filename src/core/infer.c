/*
 * Prediction for a model whose weights no longer change (infer.h).
 *
 * The attention's projections are linear in a window's rows, and each row
 * is linear in its movie's encoding e[m] (sequence_forward): a history row
 * is r (e[m] + p[i]) in multiply mode (Keras), e[m] + p[i] + r w in add
 * mode, and the target's row is e[m].  The value projection of head h is
 * only ever used through head h's slice of the output projection, so it can
 * be folded into it: Wvo_h = Wv_h Wo_h (d x d).  With
 *     Wc = [Wq | Wk | Wvo_1 .. Wvo_H]   (d x 3Hd)
 *     Bc = [bq | bk | bv_1 Wo_1 .. bv_H Wo_H]
 * the row [q | k | vo] of a window position is
 *     history, multiply:  r (T[m] + P[i]) + Bc
 *     history, add:       T[m] + P[i] + r R + Bc
 *     target:             T[m] + Bc
 * with T = E Wc (a row per movie: the table), P = pos_emb Wc and
 * R = rating_w Wc, all computed once.  E is the movie embedding, or with
 * genres the Dense+ReLU of [embedding | genres], itself per movie.  A row
 * then costs a lookup instead of a d x 3Hd product, and the attention
 * output of a query is bo plus its probabilities times the keys' vo, with
 * no product by Wo.  Padded positions are left out altogether: they are
 * masked as keys, and zeroed before the MLP as queries.
 *
 * The table holds 3Hd floats per movie (8.7 MB for ML-1M at d = 62); past
 * the caller's budget it is not built, and each row is projected as
 * x Wc + Bc instead, which still saves the product by Wo.
 *
 * What remains is the feed-forward layer (a window's L rows) and the MLP
 * (one row per window): products of a few rows, where sgemm spends most of
 * its time packing the whole weight matrix.  fused_matmul reads the weights
 * in place and computes every output element as one chain of fused
 * multiply-adds in the order of k, vectorised across output columns only.
 * So a window's prediction does not depend on the windows it is computed
 * with, nor on the thread count (threads take whole windows), nor on the
 * instruction set: AVX-512, AVX2 and the portable fmaf loop give the same
 * bits (test_train.c checks).  Everything else here is plain C, compiled
 * once per instruction set too (frozen_windows_for) with no multiply-add
 * contracted: its loops are element-wise or sum in lanes written out, so
 * it computes the same on every CPU.
 */
#include "infer.h"

#include <math.h>
#include <string.h>

#include "blas_load.h"
#include "bst_alloc.h"
#include "carve.h"
#include "layers.h"
#include "parallel.h"
#include "simd.h"

/* BST_NO_SIMD_KERNELS: only the portable kernels, always used (the fuzzing
 * build: clang's sanitizers and coverage take many minutes over the
 * unrolled AVX blocks, and the portable loops run the same logic). */
#if (defined(__x86_64__) || defined(__i386__)) && !defined(BST_NO_SIMD_KERNELS)
#define INFER_X86 1
#include <immintrin.h>
#endif

/* The helpers of a window's forward pass: inlined into each copy of it
 * (frozen_windows_for), so that each compiles them for its own instruction
 * set. */
#define WINDOW_INLINE static inline __attribute__((always_inline))

/* Windows per thread share of a batch: a share's fixed costs (waking a
 * thread) are about one window's. */
#define FROZEN_GRAIN 4

/* ----------------------------------------------------------- kernels */

typedef void (*MatmulFn)(float *out, size_t os, const float *in, size_t is, const float *w,
                         size_t ldw, const float *bias, int accumulate, int R, int K, int N);

static void matmul_portable(float *out, size_t os, const float *in, size_t is, const float *w,
                            size_t ldw, const float *bias, int accumulate, int R, int K, int N)
{
    for (int r = 0; r < R; r++) {
        float *o = out + (size_t)r * os;
        const float *x = in + (size_t)r * is;
        if (bias)
            memcpy(o, bias, (size_t)N * sizeof(float));
        else if (!accumulate)
            memset(o, 0, (size_t)N * sizeof(float));
        for (int k = 0; k < K; k++) {
            const float xk = x[k];
            const float *wk = w + (size_t)k * ldw;
            for (int n = 0; n < N; n++)
                o[n] = fmaf(xk, wk[n], o[n]);
        }
    }
}

#ifdef INFER_X86
/*
 * Register blocks of RB rows by NV vectors of columns: the accumulators
 * stay in registers for the whole k loop, each weight vector loaded once
 * serves RB rows.  The last vector of a block may be partial (its lanes
 * masked: masked loads never fault).  RB and NV are constants at every call,
 * so the loops unroll and the arrays become registers.  Blocks of 4 rows
 * serve the L rows of a window's feed-forward layer and batches; single rows
 * (one window's MLP) take wide blocks, so that enough independent chains
 * hide the latency of the multiply-adds.
 */
#define AVX512_FN __attribute__((target("avx512f")))
#define AVX2_FN __attribute__((target("avx2,fma")))
#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE AVX512_FN void block512(float *out, size_t os, const float *in, size_t is,
                                      const float *w, size_t ldw, const float *bias,
                                      int accumulate, int K, const int RB, const int NV,
                                      __mmask16 last)
{
    __m512 acc[4][16];
#pragma GCC unroll 4
    for (int r = 0; r < RB; r++)
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++) {
            const __mmask16 m = v == NV - 1 ? last : (__mmask16)0xFFFF;
            acc[r][v] = bias ? _mm512_maskz_loadu_ps(m, bias + 16 * v)
                      : accumulate ? _mm512_maskz_loadu_ps(m, out + r * os + 16 * v)
                                   : _mm512_setzero_ps();
        }
    for (int k = 0; k < K; k++) {
        const float *wk = w + (size_t)k * ldw;
        __m512 wv[16];
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++)
            wv[v] = _mm512_maskz_loadu_ps(v == NV - 1 ? last : (__mmask16)0xFFFF, wk + 16 * v);
#pragma GCC unroll 4
        for (int r = 0; r < RB; r++) {
            const __m512 x = _mm512_set1_ps(in[r * is + k]);
#pragma GCC unroll 16
            for (int v = 0; v < NV; v++)
                acc[r][v] = _mm512_fmadd_ps(x, wv[v], acc[r][v]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < RB; r++)
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++)
            _mm512_mask_storeu_ps(out + r * os + 16 * v, v == NV - 1 ? last : (__mmask16)0xFFFF,
                                  acc[r][v]);
}

/* The partial block of the last rem (1 .. 16 * nv_max) columns. */
#define TAIL512(RB, rem)                                                                   \
    do {                                                                                   \
        const int nv_ = ((rem) + 15) / 16;                                                 \
        const __mmask16 last_ = (__mmask16)((1u << ((rem)-16 * (nv_ - 1))) - 1u);         \
        switch (nv_) {                                                                     \
        case 1: block512(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 1, last_); break;   \
        case 2: block512(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 2, last_); break;   \
        case 3: block512(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 3, last_); break;   \
        case 4: block512(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 4, last_); break;   \
        case 5: block512(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 5, last_); break;   \
        case 6: block512(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 6, last_); break;   \
        case 7: block512(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 7, last_); break;   \
        default: block512(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 8, last_); break;  \
        }                                                                                  \
    } while (0)

AVX512_FN static void matmul_avx512(float *out, size_t os, const float *in, size_t is,
                                    const float *w, size_t ldw, const float *bias,
                                    int accumulate, int R, int K, int N)
{
    int r = 0;
    for (; r + 4 <= R; r += 4) {
        const float *x = in + (size_t)r * is;
        int n0 = 0;
        for (; n0 + 64 <= N; n0 += 64) {
            float *o = out + (size_t)r * os + n0;
            const float *wn = w + n0, *bn = bias ? bias + n0 : NULL;
            block512(o, os, x, is, wn, ldw, bn, accumulate, K, 4, 4, (__mmask16)0xFFFF);
        }
        if (n0 < N) {
            float *o = out + (size_t)r * os + n0;
            const float *wn = w + n0, *bn = bias ? bias + n0 : NULL;
            TAIL512(4, N - n0);
        }
    }
    for (; r < R; r++) {
        const float *x = in + (size_t)r * is;
        int n0 = 0;
        for (; n0 + 256 <= N; n0 += 256) {
            float *o = out + (size_t)r * os + n0;
            const float *wn = w + n0, *bn = bias ? bias + n0 : NULL;
            block512(o, os, x, is, wn, ldw, bn, accumulate, K, 1, 16, (__mmask16)0xFFFF);
        }
        for (; n0 + 128 <= N; n0 += 128) {
            float *o = out + (size_t)r * os + n0;
            const float *wn = w + n0, *bn = bias ? bias + n0 : NULL;
            block512(o, os, x, is, wn, ldw, bn, accumulate, K, 1, 8, (__mmask16)0xFFFF);
        }
        if (n0 < N) {
            float *o = out + (size_t)r * os + n0;
            const float *wn = w + n0, *bn = bias ? bias + n0 : NULL;
            TAIL512(1, N - n0);
        }
    }
}

/* AVX2 has no mask registers: a partial vector goes through maskload and
 * maskstore, which do not touch the masked lanes either. */
ALWAYS_INLINE AVX2_FN __m256i lanes256(int count)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

ALWAYS_INLINE AVX2_FN __m256 load256(const float *p, int count, __m256i mask)
{
    return count == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask);
}

ALWAYS_INLINE AVX2_FN void block256(float *out, size_t os, const float *in, size_t is,
                                    const float *w, size_t ldw, const float *bias, int accumulate,
                                    int K, const int RB, const int NV, int last)
{
    const __m256i mask = lanes256(last);
    __m256 acc[4][12];
#pragma GCC unroll 4
    for (int r = 0; r < RB; r++)
#pragma GCC unroll 12
        for (int v = 0; v < NV; v++) {
            const int c = v == NV - 1 ? last : 8;
            acc[r][v] = bias ? load256(bias + 8 * v, c, mask)
                      : accumulate ? load256(out + r * os + 8 * v, c, mask)
                                   : _mm256_setzero_ps();
        }
    for (int k = 0; k < K; k++) {
        const float *wk = w + (size_t)k * ldw;
        __m256 wv[12];
#pragma GCC unroll 12
        for (int v = 0; v < NV; v++)
            wv[v] = load256(wk + 8 * v, v == NV - 1 ? last : 8, mask);
#pragma GCC unroll 4
        for (int r = 0; r < RB; r++) {
            const __m256 x = _mm256_set1_ps(in[r * is + k]);
#pragma GCC unroll 12
            for (int v = 0; v < NV; v++)
                acc[r][v] = _mm256_fmadd_ps(x, wv[v], acc[r][v]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < RB; r++)
#pragma GCC unroll 12
        for (int v = 0; v < NV; v++) {
            float *o = out + r * os + 8 * v;
            if (v < NV - 1 || last == 8)
                _mm256_storeu_ps(o, acc[r][v]);
            else
                _mm256_maskstore_ps(o, mask, acc[r][v]);
        }
}

#define TAIL256(RB, rem)                                                                   \
    do {                                                                                   \
        const int nv_ = ((rem) + 7) / 8;                                                   \
        const int last_ = (rem)-8 * (nv_ - 1);                                             \
        switch (nv_) {                                                                     \
        case 1: block256(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 1, last_); break;   \
        case 2: block256(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 2, last_); break;   \
        case 3: block256(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 3, last_); break;   \
        case 4: block256(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 4, last_); break;   \
        case 5: block256(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 5, last_); break;   \
        case 6: block256(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 6, last_); break;   \
        case 7: block256(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 7, last_); break;   \
        case 8: block256(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 8, last_); break;   \
        case 9: block256(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 9, last_); break;   \
        case 10: block256(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 10, last_); break; \
        case 11: block256(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 11, last_); break; \
        default: block256(o, os, x, is, wn, ldw, bn, accumulate, K, RB, 12, last_); break; \
        }                                                                                  \
    } while (0)

AVX2_FN static void matmul_avx2(float *out, size_t os, const float *in, size_t is,
                                const float *w, size_t ldw, const float *bias, int accumulate,
                                int R, int K, int N)
{
    int r = 0;
    for (; r + 4 <= R; r += 4) {
        const float *x = in + (size_t)r * is;
        int n0 = 0;
        for (; n0 + 16 <= N; n0 += 16) {
            float *o = out + (size_t)r * os + n0;
            const float *wn = w + n0, *bn = bias ? bias + n0 : NULL;
            block256(o, os, x, is, wn, ldw, bn, accumulate, K, 4, 2, 8);
        }
        if (n0 < N) {
            float *o = out + (size_t)r * os + n0;
            const float *wn = w + n0, *bn = bias ? bias + n0 : NULL;
            TAIL256(4, N - n0);
        }
    }
    for (; r < R; r++) {
        const float *x = in + (size_t)r * is;
        int n0 = 0;
        for (; n0 + 96 <= N; n0 += 96) {
            float *o = out + (size_t)r * os + n0;
            const float *wn = w + n0, *bn = bias ? bias + n0 : NULL;
            block256(o, os, x, is, wn, ldw, bn, accumulate, K, 1, 12, 8);
        }
        if (n0 < N) {
            float *o = out + (size_t)r * os + n0;
            const float *wn = w + n0, *bn = bias ? bias + n0 : NULL;
            TAIL256(1, N - n0);
        }
    }
}
#endif /* INFER_X86 */

/* Resolved on first use, by the host thread (a predictor's creation). */
static int g_isa_resolved;
static BstInferIsa g_isa;

static int isa_available(BstInferIsa isa)
{
    switch (isa) {
    case BST_ISA_NONE:
    case BST_ISA_PORTABLE:
        /* Correct anywhere (fmaf is exact); fast only with a hardware FMA. */
        return 1;
#ifdef INFER_X86
    case BST_ISA_AVX2: {
        const BstCpuFeatures cpu = bst_cpu_features();
        return cpu.avx2_fma;
    }
    case BST_ISA_AVX512: {
        const BstCpuFeatures cpu = bst_cpu_features();
        return cpu.avx512;
    }
#endif
    default:
        return 0;
    }
}

BstInferIsa bst_infer_isa(void)
{
    if (!g_isa_resolved) {
#ifdef INFER_X86
        /* Without FMA, fmaf is a library routine: slower than sgemm. */
        g_isa = isa_available(BST_ISA_AVX512) ? BST_ISA_AVX512
              : isa_available(BST_ISA_AVX2)   ? BST_ISA_AVX2
                                              : BST_ISA_NONE;
#elif defined(FP_FAST_FMAF) || defined(BST_NO_SIMD_KERNELS)
        g_isa = BST_ISA_PORTABLE;
#else
        g_isa = BST_ISA_NONE;
#endif
        g_isa_resolved = 1;
    }
    return g_isa;
}

int bst_infer_force_isa(BstInferIsa isa)
{
    if (!isa_available(isa))
        return 0;
    g_isa = isa;
    g_isa_resolved = 1;
    return 1;
}

const char *bst_infer_isa_name(BstInferIsa isa)
{
    static const char *const names[] = {"none", "portable", "AVX2", "AVX-512"};
    return isa >= BST_ISA_NONE && isa <= BST_ISA_AVX512 ? names[isa] : "unknown";
}

static MatmulFn matmul_for(BstInferIsa isa)
{
    switch (isa) {
#ifdef INFER_X86
    case BST_ISA_AVX512:
        return matmul_avx512;
    case BST_ISA_AVX2:
        return matmul_avx2;
#endif
    default:
        return matmul_portable;
    }
}

void bst_fused_matmul(float *out, size_t os, const float *in, size_t is, const float *w,
                      size_t ldw, const float *bias, int accumulate, int R, int K, int N)
{
    if (R > 0 && N > 0)
        matmul_for(bst_infer_isa())(out, os, in, is, w, ldw, bias, accumulate, R, K, N);
}

/* ----------------------------------------------------------- layout */

/* Carves the copies (or counts them, cv's base NULL): every row padded to
 * whole cache lines. */
static void place_copies(BstKernels *k, const BstConfig *c, Carver *cv)
{
    const size_t d = (size_t)c->embed_dim;
    k->ffn_ldw = carve_lines(d);
    k->copy_ffn = carve(cv, d * k->ffn_ldw);
    size_t in = (size_t)bst_config_mlp_input(c);
    for (int i = 0; i < c->n_hidden; i++) {
        k->mlp_ldw[i] = carve_lines((size_t)c->hidden[i]);
        k->copy_mlp[i] = carve(cv, in * k->mlp_ldw[i]);
        in = (size_t)c->hidden[i];
    }
}

void bst_kernels_place(BstKernels *k, const BstConfig *c, Carver *cv)
{
    memset(k, 0, sizeof(*k));
    Carver count = {NULL, 0};
    place_copies(k, c, &count);
    if (count.used <= BST_KERNEL_COPY_BUDGET / sizeof(float)) {
        place_copies(k, c, cv);
        return;
    }
    /* Where the model keeps them. */
    memset(k, 0, sizeof(*k));
    k->ffn_ldw = (size_t)c->embed_dim;
    for (int i = 0; i < c->n_hidden; i++)
        k->mlp_ldw[i] = (size_t)c->hidden[i];
}

void bst_kernels_fill(BstKernels *k, const BstModel *m)
{
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const size_t d = (size_t)c->embed_dim;
    k->ffn_w = p->ffn_w;
    if (k->copy_ffn) {
        carve_copy_rows(k->copy_ffn, k->ffn_ldw, p->ffn_w, d, d, d);
        k->ffn_w = k->copy_ffn;
    }
    size_t in = (size_t)bst_config_mlp_input(c);
    for (int i = 0; i < c->n_hidden; i++) {
        const size_t units = (size_t)c->hidden[i];
        k->mlp_w[i] = p->mlp_w[i];
        if (k->copy_mlp[i]) {
            carve_copy_rows(k->copy_mlp[i], k->mlp_ldw[i], p->mlp_w[i], units, in, units);
            k->mlp_w[i] = k->copy_mlp[i];
        }
        in = units;
    }
}

typedef void (*WindowsFn)(BstFrozen *f, const BstBatch *b, size_t lo, size_t hi);

struct BstFrozen {
    const BstModel *model;
    MatmulFn matmul;                  /* the instruction set of the creation */
    WindowsFn windows;                /* the same, for the rest of the pass */
    int32_t max_batch;
    int has_table;
    double window_flops;              /* roughly, for the thread split */
    /* Per model. */
    float *wc;                        /* [d, 3Hd] [Wq | Wk | Wvo_h] */
    float *bc;                        /* [3Hd] [bq | bk | bv_h Wo_h] */
    float *pos_proj;                  /* [L-1, 3Hd] pos_emb Wc */
    float *rating_proj;               /* [3Hd] rating_w Wc (add mode) */
    float *enc;                       /* [n_movies+1, d] encoded movies (genres), else NULL */
    float *table;                     /* [n_movies+1, 3Hd] E Wc, NULL over budget */
    float *bn_scale[BST_MAX_HIDDEN];  /* [hidden[i]] gamma / sqrt(moving_var + eps) */
    BstKernels kernels;               /* feed-forward and MLP, on cache lines */
    /* Per window, max_batch of each.  Rows of a window's valid positions
     * are consecutive, from row0[w]; a thread's windows [lo, hi) use rows
     * from lo * L on. */
    float *qkvo;                      /* [N*L, 3Hd] [q | k | vo] */
    float *x;                         /* [N*L, d] sequence input, then + attention */
    float *x1;                        /* [N*L, d] layernorm 1 */
    float *ffn_in;                    /* [N*L, d] leaky_relu(x1) */
    float *ffn;                       /* [N*L, d] attention output, then feed-forward */
    float *scores;                    /* [N, L] one query's probabilities */
    float *attention;                 /* [N, H, L] the target's, per head */
    float *mlp_in;                    /* [N, mlp input] */
    float *h[BST_MAX_HIDDEN];         /* [N, hidden[i]] */
    float *pred;                      /* [N] */
    int32_t *row0, *user_idx, *target_idx; /* [N] */
    float *slab;
};

/* Carves f's buffers (or counts them, base NULL) for N windows. */
static void frozen_layout(BstFrozen *f, const BstConfig *c, size_t N, int with_table, Carver *cv)
{
    const size_t L = (size_t)c->seq_len, d = (size_t)c->embed_dim, H = (size_t)c->heads;
    const size_t w3 = 3 * H * d, rows = (size_t)c->n_movies + 1;
    f->wc = carve(cv, d * w3);
    f->bc = carve(cv, w3);
    f->pos_proj = carve(cv, (L - 1) * w3);
    f->rating_proj = c->rating_add ? carve(cv, w3) : NULL;
    f->enc = c->n_genres ? carve(cv, rows * d) : NULL;
    f->table = with_table ? carve(cv, rows * w3) : NULL;
    for (int i = 0; i < c->n_hidden; i++)
        f->bn_scale[i] = carve(cv, (size_t)c->hidden[i]);
    bst_kernels_place(&f->kernels, c, cv);
    f->qkvo = carve(cv, N * L * w3);
    f->x = carve(cv, N * L * d);
    f->x1 = carve(cv, N * L * d);
    f->ffn_in = carve(cv, N * L * d);
    f->ffn = carve(cv, N * L * d);
    f->scores = carve(cv, N * L);
    f->attention = carve(cv, N * H * L);
    f->mlp_in = carve(cv, N * (size_t)bst_config_mlp_input(c));
    for (int i = 0; i < c->n_hidden; i++)
        f->h[i] = carve(cv, N * (size_t)c->hidden[i]);
    f->pred = carve(cv, N);
    /* int32 in float-sized slots of the same slab. */
    f->row0 = (int32_t *)carve(cv, N);
    f->user_idx = (int32_t *)carve(cv, N);
    f->target_idx = (int32_t *)carve(cv, N);
}

static size_t layout_floats(const BstConfig *c, size_t N, int with_table)
{
    BstFrozen f;
    Carver cv = {NULL, 0};
    frozen_layout(&f, c, N, with_table, &cv);
    return cv.used;
}

size_t bst_frozen_table_bytes(const BstConfig *cfg)
{
    return ((size_t)cfg->n_movies + 1) * 3 * (size_t)cfg->heads * cfg->embed_dim * sizeof(float);
}

int32_t bst_frozen_batch_limit(const BstConfig *cfg, int32_t max_batch)
{
    if (max_batch < 1)
        return 0;
    const size_t per_window = (layout_floats(cfg, 1, 0) - layout_floats(cfg, 0, 0)) * sizeof(float);
    return bst_windows_within(BST_PREDICTOR_MEMORY_BUDGET, per_window, cfg->seq_len, max_batch);
}

size_t bst_frozen_memory_bytes(const BstConfig *cfg, int32_t max_batch, size_t table_budget)
{
    const int32_t batch = bst_frozen_batch_limit(cfg, max_batch);
    if (batch < 1)
        return 0;
    const int with_table = bst_frozen_table_bytes(cfg) <= table_budget;
    return sizeof(BstFrozen) +
           carve_slab_floats(layout_floats(cfg, (size_t)batch, with_table)) * sizeof(float);
}

/* ----------------------------------------------------------- precomputation */

WINDOW_INLINE void leaky_relu_row(float *out, const float *in, size_t n, float slope)
{
    /* leaky_relu_forward's formula, so that slope 0 is its ReLU bit for bit. */
    for (size_t i = 0; i < n; i++) {
        float k = (float)(in[i] > 0.0f) * (1.0f - slope) + slope;
        out[i] = in[i] * k;
    }
}

/* Encoded movies [lo, hi) of a genre model: Dense+ReLU over [embedding |
 * genres], the two parts of one chain. */
static void encode_movies(const BstFrozen *f, size_t lo, size_t hi)
{
    const BstModel *m = f->model;
    const BstParams *p = &m->params;
    const size_t d = (size_t)m->cfg.embed_dim, G = (size_t)m->cfg.n_genres;
    float *out = f->enc + lo * d;
    const int rows = (int)(hi - lo);
    f->matmul(out, d, p->movie_emb + lo * d, d, p->genre_w, d, p->genre_b, 0, rows, (int)d,
              (int)d);
    f->matmul(out, d, m->movie_genres + lo * G, G, p->genre_w + d * d, d, NULL, 1, rows, (int)G,
              (int)d);
    leaky_relu_row(out, out, (hi - lo) * d, 0.0f);
}

static void table_rows(const BstFrozen *f, const float *enc, size_t lo, size_t hi)
{
    const size_t d = (size_t)f->model->cfg.embed_dim;
    const size_t w3 = 3 * (size_t)f->model->cfg.heads * d;
    f->matmul(f->table + lo * w3, w3, enc + lo * d, d, f->wc, w3, NULL, 0, (int)(hi - lo),
              (int)d, (int)w3);
}

static void precompute(BstFrozen *f)
{
    const BstModel *m = f->model;
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const int d = c->embed_dim, H = c->heads, L = c->seq_len;
    const size_t hd = (size_t)H * d, w3 = 3 * hd, rows = (size_t)c->n_movies + 1;

    /* Wc and Bc: the query and key columns as they are; per head, the value
     * columns times that head's rows of the output kernel. */
    for (int k = 0; k < d; k++)
        memcpy(f->wc + k * w3, p->wqkv + k * w3, 2 * hd * sizeof(float));
    memcpy(f->bc, p->bqkv, 2 * hd * sizeof(float));
    for (int h = 0; h < H; h++) {
        const float *wo_h = p->wo + (size_t)h * d * d;
        f->matmul(f->wc + 2 * hd + (size_t)h * d, w3, p->wqkv + 2 * hd + (size_t)h * d, w3, wo_h,
                  (size_t)d, NULL, 0, d, d, d);
        f->matmul(f->bc + 2 * hd + (size_t)h * d, w3, p->bqkv + 2 * hd + (size_t)h * d, w3, wo_h,
                  (size_t)d, NULL, 0, 1, d, d);
    }
    f->matmul(f->pos_proj, w3, p->pos_emb, (size_t)d, f->wc, w3, NULL, 0, L - 1, d, (int)w3);
    if (c->rating_add)
        f->matmul(f->rating_proj, w3, p->rating_w, (size_t)d, f->wc, w3, NULL, 0, 1, d, (int)w3);
    for (int i = 0; i < c->n_hidden; i++)
        for (int j = 0; j < c->hidden[i]; j++)
            f->bn_scale[i][j] = p->bn_g[i][j] / sqrtf(m->bn.moving_var[i][j] + c->bn_eps);
    bst_kernels_fill(&f->kernels, m);

    /* Rows split between threads: an element's value does not depend on
     * the split. */
    if (f->enc)
        PARALLEL_FOR(rows, 16, (double)rows * d * (d + c->n_genres) * 2, lo, hi,
                     encode_movies(f, lo, hi));
    if (f->table) {
        const float *enc = f->enc ? f->enc : p->movie_emb;
        PARALLEL_FOR(rows, 16, (double)rows * d * w3 * 2, lo, hi, table_rows(f, enc, lo, hi));
    }
}

static WindowsFn frozen_windows_for(BstInferIsa isa);

BstFrozen *bst_frozen_create(const BstModel *m, int32_t max_batch, size_t table_budget)
{
    const BstConfig *c = &m->cfg;
    const BstInferIsa isa = bst_infer_isa();
    const int32_t batch = bst_frozen_batch_limit(c, max_batch);
    if (batch < 1 || isa == BST_ISA_NONE)
        return NULL;
    BstFrozen *f = bst_alloc_zero(1, sizeof(BstFrozen));
    if (!f)
        return NULL;
    f->model = m;
    f->matmul = matmul_for(isa);
    f->windows = frozen_windows_for(isa);
    f->max_batch = batch;
    f->has_table = bst_frozen_table_bytes(c) <= table_budget;
    Carver cv = {NULL, 0};
    frozen_layout(f, c, (size_t)batch, f->has_table, &cv);
    float *slab = bst_alloc_zero(carve_slab_floats(cv.used), sizeof(float));
    if (!slab) {
        bst_free(f);
        return NULL;
    }
    cv.base = carve_base(slab);
    cv.used = 0;
    frozen_layout(f, c, (size_t)batch, f->has_table, &cv);
    f->slab = slab;

    const double L = c->seq_len, d = c->embed_dim;
    double flops = L * (2 * d * d + 4 * L * c->heads * d + (f->has_table ? 0 : 6 * d * d * c->heads));
    int32_t in = bst_config_mlp_input(c);
    for (int i = 0; i < c->n_hidden; i++) {
        flops += 2.0 * in * c->hidden[i];
        in = c->hidden[i];
    }
    f->window_flops = flops + 2.0 * in;

    precompute(f);
    return f;
}

int32_t bst_frozen_batch(const BstFrozen *f)
{
    return f->max_batch;
}

int bst_frozen_has_table(const BstFrozen *f)
{
    return f->has_table;
}

const float *bst_frozen_attention(const BstFrozen *f, int32_t w)
{
    return f->attention + (size_t)w * f->model->cfg.heads * f->model->cfg.seq_len;
}

void bst_frozen_free(BstFrozen *f)
{
    if (!f)
        return;
    bst_free(f->slab);
    bst_free(f);
}

/* ----------------------------------------------------------- forward */

/*
 * Reductions in eight lanes, as layers.c's dot8 and sum8 (eight partial
 * sums, then a fixed tree), written with a vector type so that the compiler
 * keeps the lanes in registers: the arithmetic of each lane is fixed, hence
 * the same bits whatever the vector width (two SSE registers, or one AVX).
 */
typedef float Lanes8 __attribute__((vector_size(32)));

WINDOW_INLINE Lanes8 load8(const float *p)
{
    Lanes8 v;
    memcpy(&v, p, sizeof(v));
    return v;
}

WINDOW_INLINE float lanes_total(Lanes8 v, float tail)
{
    return tail + ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

WINDOW_INLINE float dot_lanes(const float *restrict a, const float *restrict b, int n)
{
    Lanes8 acc = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        acc += load8(a + i) * load8(b + i);
    float s = 0.0f;
    for (; i < n; i++)
        s += a[i] * b[i];
    return lanes_total(acc, s);
}

WINDOW_INLINE float sum_lanes(const float *restrict a, int n)
{
    Lanes8 acc = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        acc += load8(a + i);
    float s = 0.0f;
    for (; i < n; i++)
        s += a[i];
    return lanes_total(acc, s);
}

/* Sum of (a - m)^2. */
WINDOW_INLINE float sumsq_centered_lanes(const float *restrict a, float m, int n)
{
    Lanes8 acc = {0};
    const Lanes8 mv = {m, m, m, m, m, m, m, m};
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const Lanes8 u = load8(a + i) - mv;
        acc += u * u;
    }
    float s = 0.0f;
    for (; i < n; i++)
        s += (a[i] - m) * (a[i] - m);
    return lanes_total(acc, s);
}

/* layernorm_forward's arithmetic for one row. */
WINDOW_INLINE void layernorm_row(float *restrict out, const float *restrict x,
                                 const float *restrict gamma, const float *restrict beta, int d,
                                 float eps)
{
    const float m = sum_lanes(x, d) / (float)d;
    const float v = sumsq_centered_lanes(x, m, d) / (float)d;
    const float s = 1.0f / sqrtf(v + eps);
    for (int c = 0; c < d; c++)
        out[c] = (x[c] - m) * s * gamma[c] + beta[c];
}

/* Row helpers: restrict lets them vectorise (a store through a float
 * pointer could otherwise change any other array, or f's fields). */
WINDOW_INLINE void row_target(float *restrict q, const float *restrict t,
                              const float *restrict bc, size_t n)
{
    for (size_t j = 0; j < n; j++)
        q[j] = t[j] + bc[j];
}

WINDOW_INLINE void row_multiply(float *restrict q, const float *restrict t,
                                const float *restrict pp, float r, const float *restrict bc,
                                size_t n)
{
    for (size_t j = 0; j < n; j++)
        q[j] = (t[j] + pp[j]) * r + bc[j];
}

WINDOW_INLINE void row_add(float *restrict q, const float *restrict t, const float *restrict pp,
                           float r, const float *restrict rp, const float *restrict bc, size_t n)
{
    for (size_t j = 0; j < n; j++)
        q[j] = t[j] + pp[j] + r * rp[j] + bc[j];
}

WINDOW_INLINE void x_multiply(float *restrict x, const float *restrict e,
                              const float *restrict pe, float r, int d)
{
    for (int j = 0; j < d; j++)
        x[j] = (e[j] + pe[j]) * r;
}

WINDOW_INLINE void x_add(float *restrict x, const float *restrict e, const float *restrict pe,
                         float r, const float *restrict rw, int d)
{
    for (int j = 0; j < d; j++)
        x[j] = e[j] + pe[j] + r * rw[j];
}

/* a += p v */
WINDOW_INLINE void axpy(float *restrict a, float p, const float *restrict v, int d)
{
    for (int j = 0; j < d; j++)
        a[j] += p * v[j];
}

/* acc = a + acc */
WINDOW_INLINE void add_to(float *restrict acc, const float *restrict a, int d)
{
    for (int j = 0; j < d; j++)
        acc[j] = a[j] + acc[j];
}

/* BatchNorm with the moving statistics, then LeakyReLU, in place. */
WINDOW_INLINE void bn_leaky(float *restrict h, const float *restrict mean,
                            const float *restrict k, const float *restrict beta, int units,
                            float slope)
{
    for (int j = 0; j < units; j++) {
        const float v = (h[j] - mean[j]) * k[j] + beta[j];
        h[j] = v * ((float)(v > 0.0f) * (1.0f - slope) + slope);
    }
}

/* Asks for the cache lines of bytes at p: the rows of a window's movies
 * are scattered over tables of megabytes, and fetching them all at once
 * overlaps their misses instead of taking them one after another. */
WINDOW_INLINE void prefetch_bytes(const void *p, size_t bytes)
{
    const char *c = p;
    for (size_t i = 0; i < bytes; i += 64) {
        __builtin_prefetch(c + i);
        /* gcc 12 deletes a loop of nothing but prefetches as empty. */
        __asm__ __volatile__("");
    }
}

WINDOW_INLINE void prefetch_window(const BstFrozen *f, const BstBatch *b, size_t w)
{
    const BstConfig *c = &f->model->cfg;
    const int L = c->seq_len, d = c->embed_dim;
    const size_t w3 = 3 * (size_t)c->heads * d;
    const float *enc = f->enc ? f->enc : f->model->params.movie_emb;
    for (int i = bst_first_valid(b->hist_len, w, L); i < L; i++) {
        const int32_t mi = bst_row_or_zero(b->movies[w * L + i], c->n_movies + 1);
        prefetch_bytes(enc + (size_t)mi * d, (size_t)d * sizeof(float));
        if (f->has_table)
            prefetch_bytes(f->table + (size_t)mi * w3, w3 * sizeof(float));
    }
}

/* Windows [lo, hi) of b, start to end. */
WINDOW_INLINE void frozen_windows(BstFrozen *f, const BstBatch *b, size_t lo, size_t hi)
{
    const BstModel *m = f->model;
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const int L = c->seq_len, d = c->embed_dim, H = c->heads, hd = H * d;
    const size_t w3 = 3 * (size_t)hd;
    const int32_t movie_rows = c->n_movies + 1, user_rows = c->n_users + 1;
    const int in0 = bst_config_mlp_input(c);
    const float scale = 1.0f / sqrtf((float)d);
    const float *enc = f->enc ? f->enc : p->movie_emb;
    const size_t n = hi - lo, row_lo = lo * (size_t)L;

    /* The rows of the valid positions: the sequence input x, and [q | k |
     * vo] from the table (or below, from x).  Each window asks for the next
     * one's rows; the first's would come no sooner than its own loads ask
     * (a single prediction ran faster without). */
    size_t row = row_lo;
    for (size_t w = lo; w < hi; w++) {
        const int first = bst_first_valid(b->hist_len, w, L);
        if (w + 1 < hi)
            prefetch_window(f, b, w + 1);
        f->row0[w] = (int32_t)row;
        for (int i = first; i < L; i++, row++) {
            const int32_t mi = bst_row_or_zero(b->movies[w * L + i], movie_rows);
            const float *e = enc + (size_t)mi * d;
            const float *t = f->has_table ? f->table + (size_t)mi * w3 : NULL;
            float *x = f->x + row * d, *q = f->qkvo + row * w3;
            if (i == L - 1) {
                memcpy(x, e, (size_t)d * sizeof(float));
                if (t)
                    row_target(q, t, f->bc, w3);
                continue;
            }
            const float r = b->ratings[w * (L - 1) + i];
            const float *pe = p->pos_emb + (size_t)i * d, *pp = f->pos_proj + (size_t)i * w3;
            if (c->rating_add) {
                x_add(x, e, pe, r, p->rating_w, d);
                if (t)
                    row_add(q, t, pp, r, f->rating_proj, f->bc, w3);
            } else {
                x_multiply(x, e, pe, r, d);
                if (t)
                    row_multiply(q, t, pp, r, f->bc, w3);
            }
        }
    }
    const int n_rows = (int)(row - row_lo);
    if (!f->has_table)
        f->matmul(f->qkvo + row_lo * w3, w3, f->x + row_lo * d, (size_t)d, f->wc, w3, f->bc, 0,
                  n_rows, d, (int)w3);

    /* Attention over the valid positions, then the first residual and
     * layernorm.  ffn holds each query's attention output meanwhile. */
    for (size_t w = lo; w < hi; w++) {
        const int first = bst_first_valid(b->hist_len, w, L), nv = L - first;
        const size_t r0 = (size_t)f->row0[w];
        float *sc = f->scores + w * L;
        for (int qi = 0; qi < nv; qi++) {
            const size_t rq = r0 + qi;
            const float *q = f->qkvo + rq * w3;
            float *a = f->ffn + rq * d;
            memcpy(a, p->bo, (size_t)d * sizeof(float));
            for (int h = 0; h < H; h++) {
                float maxv = -INFINITY;
                for (int kj = 0; kj < nv; kj++) {
                    const float *k = f->qkvo + (r0 + kj) * w3 + hd + (size_t)h * d;
                    sc[kj] = dot_lanes(q + (size_t)h * d, k, d) * scale;
                    if (sc[kj] > maxv)
                        maxv = sc[kj];
                }
                float sum = 0.0f;
                for (int kj = 0; kj < nv; kj++) {
                    sc[kj] = expf(sc[kj] - maxv);
                    sum += sc[kj];
                }
                const float inv = 1.0f / sum;
                for (int kj = 0; kj < nv; kj++)
                    sc[kj] *= inv;
                if (first + qi == L - 1) {
                    float *att = f->attention + (w * H + h) * L;
                    memset(att, 0, (size_t)first * sizeof(float));
                    memcpy(att + first, sc, (size_t)nv * sizeof(float));
                }
                for (int kj = 0; kj < nv; kj++)
                    axpy(a, sc[kj], f->qkvo + (r0 + kj) * w3 + 2 * hd + (size_t)h * d, d);
            }
            float *x = f->x + rq * d, *x1 = f->x1 + rq * d;
            add_to(x, a, d);
            layernorm_row(x1, x, p->ln1_g, p->ln1_b, d, c->ln_eps);
            leaky_relu_row(f->ffn_in + rq * d, x1, (size_t)d, c->leaky_slope);
        }
    }

    /* Feed-forward layer over all rows of the share at once. */
    f->matmul(f->ffn + row_lo * d, (size_t)d, f->ffn_in + row_lo * d, (size_t)d,
              f->kernels.ffn_w, f->kernels.ffn_ldw, p->ffn_b, 0, n_rows, d, d);

    /* Second residual and layernorm, straight into the MLP input (padding
     * zeroed), then the user's embeddings. */
    for (size_t w = lo; w < hi; w++) {
        const int first = bst_first_valid(b->hist_len, w, L);
        const size_t r0 = (size_t)f->row0[w];
        float *mi = f->mlp_in + w * in0;
        memset(mi, 0, (size_t)first * d * sizeof(float));
        for (int i = first; i < L; i++) {
            const size_t r = r0 + (i - first);
            float *res = f->ffn + r * d;
            add_to(res, f->x1 + r * d, d);
            layernorm_row(mi + (size_t)i * d, res, p->ln2_g, p->ln2_b, d, c->ln_eps);
        }
        const int32_t u = bst_row_or_zero(b->users ? b->users[w] : 0, user_rows);
        f->user_idx[w] = u;
        f->target_idx[w] = bst_row_or_zero(b->movies[w * L + L - 1], movie_rows);
        int col = L * d;
        if (c->user_dim > 0) {
            memcpy(mi + col, p->user_emb + (size_t)u * c->user_dim,
                   (size_t)c->user_dim * sizeof(float));
            col += c->user_dim;
        }
        for (int k = 0; k < BST_N_USER_FEATS; k++) {
            if (c->feat_dim[k] == 0)
                continue;
            const int32_t v = bst_row_or_zero(m->user_feats[(size_t)u * BST_N_USER_FEATS + k],
                                              c->n_feat_values[k] + 1);
            memcpy(mi + col, p->feat_emb[k] + (size_t)v * c->feat_dim[k],
                   (size_t)c->feat_dim[k] * sizeof(float));
            col += c->feat_dim[k];
        }
    }

    /* MLP: dense, BatchNorm with the moving statistics, LeakyReLU. */
    const float *in = f->mlp_in + lo * in0;
    int in_dim = in0;
    for (int i = 0; i < c->n_hidden; i++) {
        const int units = c->hidden[i];
        float *h = f->h[i] + lo * units;
        f->matmul(h, (size_t)units, in, (size_t)in_dim, f->kernels.mlp_w[i],
                  f->kernels.mlp_ldw[i], p->mlp_b[i], 0, (int)n, in_dim, units);
        const float *mean = m->bn.moving_mean[i], *k = f->bn_scale[i], *beta = p->bn_b[i];
        for (size_t r = 0; r < n; r++)
            bn_leaky(h + r * units, mean, k, beta, units, c->leaky_slope);
        in = h;
        in_dim = units;
    }
    float *pred = f->pred + lo;
    f->matmul(pred, 1, in, (size_t)in_dim, p->out_w, 1, p->out_b, 0, (int)n, in_dim, 1);
    if (c->use_bias)
        bias_forward(pred, p->global_bias, p->user_bias, p->movie_bias, f->user_idx + lo,
                     f->target_idx + lo, user_rows, movie_rows, (int)n);
    if (c->n_factors > 0)
        factor_forward(pred, p->user_factors, p->movie_factors, f->user_idx + lo,
                       f->target_idx + lo, user_rows, movie_rows, (int)n, c->n_factors);
    if (c->rating_min < c->rating_max)
        for (size_t r = 0; r < n; r++)
            pred[r] = pred[r] < c->rating_min ? c->rating_min
                    : (pred[r] > c->rating_max ? c->rating_max : pred[r]);
}

/*
 * Copies of the pass for the instruction set of fused_matmul, built for the
 * targets of the core's other loops (simd.h): the loops over a row's floats
 * run in wider vectors.  The same bits in each: those loops are
 * element-wise, the reductions' lanes are written out, and no multiply-add
 * is contracted (-ffp-contract=off).
 */
#ifdef INFER_X86
BST_TARGET_AVX512 static void frozen_windows_avx512(BstFrozen *f, const BstBatch *b, size_t lo,
                                                    size_t hi)
{
    frozen_windows(f, b, lo, hi);
}

BST_TARGET_AVX2 static void frozen_windows_avx2(BstFrozen *f, const BstBatch *b, size_t lo,
                                                size_t hi)
{
    frozen_windows(f, b, lo, hi);
}
#endif

static void frozen_windows_baseline(BstFrozen *f, const BstBatch *b, size_t lo, size_t hi)
{
    frozen_windows(f, b, lo, hi);
}

static WindowsFn frozen_windows_for(BstInferIsa isa)
{
    switch (isa) {
#ifdef INFER_X86
    case BST_ISA_AVX512:
        return frozen_windows_avx512;
    case BST_ISA_AVX2:
        return frozen_windows_avx2;
#endif
    default:
        return frozen_windows_baseline;
    }
}

void bst_frozen_forward(BstFrozen *f, const BstBatch *b, float *out)
{
    if (b->n < 1 || b->n > f->max_batch)
        return;
    PARALLEL_FOR((size_t)b->n, FROZEN_GRAIN, f->window_flops * b->n, lo, hi,
                 f->windows(f, b, lo, hi));
    memcpy(out, f->pred, (size_t)b->n * sizeof(float));
}

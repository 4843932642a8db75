/*
 * Prediction for a model whose weights no longer change (a loaded model):
 * what depends on a movie alone is computed once, and the few-row products
 * of one window run on kernels that need no packing.  bst_predictor_create_frozen
 * (model.h) is the public way in; this header is for model.c and the tests.
 */
#ifndef BST_INFER_H
#define BST_INFER_H

#include <stddef.h>
#include <stdint.h>

#include "carve.h"
#include "model.h"

/* Instruction sets of fused_matmul; every one computes the same bits. */
typedef enum BstInferIsa {
    BST_ISA_NONE = 0,     /* no fast kernels here: predictors take the sgemm path */
    BST_ISA_PORTABLE = 1, /* fmaf loops (fast where the compiler has a hardware FMA) */
    BST_ISA_AVX2 = 2,     /* AVX2 and FMA3 */
    BST_ISA_AVX512 = 3,   /* AVX-512 */
} BstInferIsa;

/* The instruction set frozen predictors use: the best this CPU has, or
 * what bst_infer_force_isa set. */
BstInferIsa bst_infer_isa(void);
/* Tests: use isa from now on (BST_ISA_NONE included, which makes new
 * frozen predictors plain ones); returns 0 when this CPU or build cannot. */
int bst_infer_force_isa(BstInferIsa isa);
const char *bst_infer_isa_name(BstInferIsa isa);

/*
 * out[r * os + n] = init + sum over k < K of in[r * is + k] * w[k * ldw + n]
 * for r < R, n < N, where init is bias[n] (bias not NULL), out's own value
 * (accumulate), or 0.  Each element is one chain of fused multiply-adds in
 * the order of k, so it does not depend on R, on the other rows, or on the
 * instruction set.  out must not overlap in or w.  Not with BST_ISA_NONE.
 */
void bst_fused_matmul(float *out, size_t os, const float *in, size_t is, const float *w,
                      size_t ldw, const float *bias, int accumulate, int R, int K, int N);

/*
 * The feed-forward and MLP kernels as the prediction kernels read them: in
 * copies with every row on a cache line (row strides a multiple of 16
 * floats) when they fit BST_KERNEL_COPY_BUDGET, else where the model keeps
 * them.  bst_kernels_place carves the copies out of cv (carve.h; only
 * counts them when its base is NULL); bst_kernels_fill then fills them, or
 * points at the model's tensors.
 */
typedef struct BstKernels {
    const float *ffn_w;                   /* [d, ffn_ldw] */
    const float *mlp_w[BST_MAX_HIDDEN];   /* [in, mlp_ldw[i]] */
    size_t ffn_ldw, mlp_ldw[BST_MAX_HIDDEN];
    float *copy_ffn, *copy_mlp[BST_MAX_HIDDEN]; /* the copies, or NULL */
} BstKernels;
void bst_kernels_place(BstKernels *k, const BstConfig *c, Carver *cv);
void bst_kernels_fill(BstKernels *k, const BstModel *m);

typedef struct BstFrozen BstFrozen;

/* Bytes of the per-movie projection table of a model of config cfg (it is
 * built when this is at most the table budget). */
size_t bst_frozen_table_bytes(const BstConfig *cfg);
/* Windows per pass of bst_frozen_create(.., max_batch, ..): max_batch,
 * lowered so that the per-window buffers fit BST_PREDICTOR_MEMORY_BUDGET,
 * at least 1; 0 when max_batch < 1. */
int32_t bst_frozen_batch_limit(const BstConfig *cfg, int32_t max_batch);
/* Bytes bst_frozen_create allocates (0 when max_batch < 1). */
size_t bst_frozen_memory_bytes(const BstConfig *cfg, int32_t max_batch, size_t table_budget);
/* NULL when max_batch < 1, without fast kernels (BST_ISA_NONE) or on
 * allocation failure.  m must outlive it and never change. */
BstFrozen *bst_frozen_create(const BstModel *m, int32_t max_batch, size_t table_budget);
int32_t bst_frozen_batch(const BstFrozen *f);
/* 1 when the per-movie table was built, 0 when it exceeded the budget. */
int bst_frozen_has_table(const BstFrozen *f);
/* Predictions of b (1 <= b->n <= bst_frozen_batch) into out. */
void bst_frozen_forward(BstFrozen *f, const BstBatch *b, float *out);
/* Each head's attention weights of window w's target over its positions
 * (padding 0), [H * L], as of the last forward. */
const float *bst_frozen_attention(const BstFrozen *f, int32_t w);
void bst_frozen_free(BstFrozen *f);

#endif

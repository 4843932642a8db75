/*
 * Layer forward/backward pairs over explicit float buffers (llm.c style).
 *
 * Conventions:
 *   - activations are row-major [rows, features]; a "row" is one window for
 *     the MLP and one (window, position) pair for the transformer block;
 *   - dense weights are [in, out] like Keras kernels, so out = in . W + b;
 *   - backward functions ACCUMULATE (+=) into parameter gradients, which the
 *     caller zeroes once per step, and WRITE (=) input gradients, which the
 *     caller sums itself where a tensor feeds several consumers (residuals);
 *   - nothing here allocates;
 *   - large calls are split across the core's threads (parallel.h); outputs
 *     are identical whatever the thread count, except that the BLAS may round
 *     the sgemm blocks of linear_* differently.
 */
#ifndef BST_LAYERS_H
#define BST_LAYERS_H

#include <stddef.h>
#include <stdint.h>

#include "rng.h"

/*
 * BST input embedding for B windows of L positions, d features:
 *   history i < L-1:  (movie_emb[movies[i]] + pos_emb[i]) * ratings[i]
 *   target  i = L-1:   movie_emb[movies[L-1]]
 * Indices outside [0, n_rows) are read as row 0 (out-of-vocabulary) so a bad
 * caller can never read out of bounds.
 */
void embedding_forward(float *out, const int32_t *movies, const float *ratings,
                       const float *movie_emb, const float *pos_emb,
                       int32_t n_rows, int B, int L, int d);
void embedding_backward(float *d_movie_emb, float *d_pos_emb, const float *d_out,
                        const int32_t *movies, const float *ratings,
                        int32_t n_rows, int B, int L, int d);

/* out[n, out_dim] = in[n, in_dim] . w[in_dim, out_dim] + b (b may be NULL). */
void linear_forward(float *out, const float *in, const float *w, const float *b,
                    int n, int in_dim, int out_dim);
/* d_in may be NULL when the input needs no gradient; d_b may be NULL. */
void linear_backward(float *d_in, float *d_w, float *d_b, const float *d_out,
                     const float *in, const float *w, int n, int in_dim, int out_dim);

/* Normalises each of n rows over its d features; mean/rstd are [n]. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *in,
                       const float *gamma, const float *beta, int n, int d, float eps);
/* d_in must not alias d_out. */
void layernorm_backward(float *d_in, float *d_gamma, float *d_beta, const float *d_out,
                        const float *in, const float *mean, const float *rstd,
                        const float *gamma, int n, int d);

/* Training mode: normalises each feature over the n rows with the batch mean
 * and biased batch variance (written to mean/var [d] for the moving update). */
void batchnorm_forward(float *out, float *mean, float *var, const float *in,
                       const float *gamma, const float *beta, int n, int d, float eps);
/* Inference mode: uses the moving statistics. */
void batchnorm_forward_infer(float *out, const float *in, const float *gamma,
                             const float *beta, const float *moving_mean,
                             const float *moving_var, int n, int d, float eps);
/* Backward of the training-mode forward (the batch statistics depend on the input). */
void batchnorm_backward(float *d_in, float *d_gamma, float *d_beta, const float *d_out,
                        const float *in, const float *mean, const float *var,
                        const float *gamma, int n, int d, float eps);
void batchnorm_update_moving(float *moving_mean, float *moving_var, const float *mean,
                             const float *var, int d, float momentum);

/* In-place safe (out == in, d_in == d_out; no partial overlap). */
void leaky_relu_forward(float *out, const float *in, size_t n, float slope);
void leaky_relu_backward(float *d_in, const float *d_out, const float *in, size_t n,
                         float slope);

/*
 * Inverted dropout: keeps a unit with probability 1-p and scales it by
 * 1/(1-p).  mask receives the factor applied to each unit (0 or 1/(1-p)),
 * which is all the backward needs; it is a function of one 64-bit draw from
 * rng per call (see bst_rng_at).  With rng == NULL or p == 0 this is the
 * identity (mask, if not NULL, is filled with 1).  In-place safe (out == in;
 * otherwise out and in must not overlap).
 */
void dropout_forward(float *out, float *mask, const float *in, size_t n, float p,
                     BstRng *rng);
void dropout_backward(float *d_in, const float *d_out, const float *mask, size_t n);

/*
 * Scaled dot-product attention core of Keras MultiHeadAttention.
 * qkv is [B, L, 3*H*dk]: each row holds the query, key and value projections
 * [q | k | v] (one fused projection), head h in columns [h*dk, (h+1)*dk) of
 * each part.  ctx is [B, L, H*dk].  probs and mask are [B, H, L, L]: probs
 * holds the softmax (before dropout), mask the dropout factors (see
 * dropout_forward: one draw from rng per call; rng NULL = no dropout).
 */
void attention_forward(float *ctx, float *probs, float *mask, const float *qkv,
                       int B, int L, int H, int dk, float p, BstRng *rng);
/* d_qkv is written in full; d_probs is a [B, H, L, L] scratch buffer. */
void attention_backward(float *d_qkv, float *d_probs, const float *d_ctx,
                        const float *probs, const float *mask, const float *qkv,
                        int B, int L, int H, int dk);

/* Mean squared error over n predictions. */
float mse_forward(const float *pred, const float *target, int n);
void mse_backward(float *d_pred, const float *pred, const float *target, int n);

#endif

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
 * Windows are left-padded: a window of L positions holds hist_len[b] history
 * items right-aligned before the target (positions L-1-hist_len[b] .. L-2),
 * and padding before them.  hist_len == NULL means every window is full
 * (hist_len = L-1).  Padding is invisible: it is zero in the embedded input,
 * masked out of attention as a key, and zeroed before the MLP, so neither a
 * prediction nor a gradient depends on what the padded slots hold.
 */
/* A vocabulary index as a row of a table of n_rows rows: out of range reads
 * row 0 (out of vocabulary, unknown user), so no caller can read out of
 * bounds. */
static inline int32_t bst_row_or_zero(int32_t idx, int32_t n_rows)
{
    return (idx >= 0 && idx < n_rows) ? idx : 0;
}

static inline int bst_first_valid(const int32_t *hist_len, size_t b, int L)
{
    if (!hist_len)
        return 0;
    int h = hist_len[b];
    h = h < 0 ? 0 : (h > L - 1 ? L - 1 : h);
    return L - 1 - h;
}

/*
 * Row gather: out[r * out_stride + c] = table[idx[r] * width + c] for r < n,
 * c < width (out_stride >= width lets several gathers fill the columns of one
 * matrix).  Indices outside [0, n_rows) are read as row 0 (out-of-vocabulary)
 * so a bad caller can never read out of bounds.  The backward scatter-adds
 * into d_table.
 */
void embedding_forward(float *out, int out_stride, const int32_t *idx, const float *table,
                       int32_t n_rows, int n, int width);
void embedding_backward(float *d_table, const float *d_out, int out_stride, const int32_t *idx,
                        int32_t n_rows, int n, int width);

/*
 * BST sequence input for B windows of L positions, d features, from the
 * encoded movies enc [B, L, d]:
 *   history i < L-1:  (enc[i] + pos_emb[i]) * ratings[i]         (rating_w NULL: Keras)
 *                      enc[i] + pos_emb[i] + ratings[i] * rating_w  (rating_w [d])
 *   target  i = L-1:   enc[L-1]
 *   padding:           0
 * The Keras form scales a whole vector by its rating, which the LayerNorms
 * after it largely undo; the additive form turns it into a direction.
 */
void sequence_forward(float *out, const float *enc, const float *ratings, const float *pos_emb,
                      const float *rating_w, const int32_t *hist_len, int B, int L, int d);
/* Writes d_enc (zero on padding), accumulates d_pos_emb and d_rating_w
 * (both NULL-able as in the forward: d_rating_w with rating_w). */
void sequence_backward(float *d_enc, float *d_pos_emb, float *d_rating_w, const float *d_out,
                       const float *ratings, const int32_t *hist_len, int B, int L, int d);

/* Flatten [B, L, d] into columns [0, L*d) of out [B, out_stride], padded
 * positions zeroed; the backward writes d_y (zero on padding). */
void flatten_forward(float *out, int out_stride, const float *y, const int32_t *hist_len,
                     int B, int L, int d);
void flatten_backward(float *d_y, const float *d_out, int out_stride, const int32_t *hist_len,
                      int B, int L, int d);

/*
 * Bias terms: pred[b] += global + user_bias[users[b]] + movie_bias[movies[b]]
 * (indices outside the tables read row 0; users == NULL: row 0).  The
 * backward accumulates the three gradients.
 */
void bias_forward(float *pred, const float *global, const float *user_bias,
                  const float *movie_bias, const int32_t *users, const int32_t *movies,
                  int32_t n_user_rows, int32_t n_movie_rows, int B);
void bias_backward(float *d_global, float *d_user_bias, float *d_movie_bias, const float *d_pred,
                   const int32_t *users, const int32_t *movies, int32_t n_user_rows,
                   int32_t n_movie_rows, int B);

/* out[n, out_dim] = in[n, in_dim] . w[in_dim, out_dim] + b (b may be NULL). */
void linear_forward(float *out, const float *in, const float *w, const float *b,
                    int n, int in_dim, int out_dim);
/* d_in may be NULL when the input needs no gradient; d_b may be NULL; d_w
 * NULL computes d_in alone (d_b then unused). */
void linear_backward(float *d_in, float *d_w, float *d_b, const float *d_out,
                     const float *in, const float *w, int n, int in_dim, int out_dim);

/* Normalises each of n rows over its d features; mean/rstd are [n], both
 * NULL when no backward follows (inference). */
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

/* acc += x over n floats: residual sums and gradients that reach one
 * buffer by two paths. */
void add_inplace(float *acc, const float *x, size_t n);

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
 * The folded projection qv = x W + b of a training batch (its queries and
 * values; W and b: attention_fold_forward) by linearity, x as
 * sequence_forward builds it (n = 2 H dk columns): from uqv, the
 * projections e W of the batch's distinct movie encodings (row slot[row]
 * for the row of window b, position i; slot < 0: padding, whose x is 0),
 * and pqv, the positions' p_i W (rows i < L - 1) and, with additive
 * ratings, w W (row L - 1).
 */
void projection_forward(float *qv, const float *uqv, const float *pqv, const float *bias,
                        const int32_t *slot, const float *ratings, int additive, int B, int L,
                        int n);
/*
 * Its backward, into the gradients of uqv and pqv (both written whole):
 * d_u[u] sums the d_qv rows of distinct movie u (rows rows_start[u] ..
 * rows_start[u + 1] - 1 of rows, in increasing order) times each row's
 * factor (its rating for a history row of multiplied ratings, else 1);
 * d_p[i] the history rows at position i alike; d_p[L - 1], with additive
 * ratings, every history row times its rating; and d_b, the folded bias's
 * gradient, += the column sums of d_qv over all its rows.
 */
void projection_backward(float *d_u, float *d_p, float *d_b, const float *d_qv,
                         const int32_t *rows_start, const int32_t *rows, int32_t n_distinct,
                         const float *ratings, int additive, const int32_t *hist_len, int B,
                         int L, int n);
/* d_b += the column sums of d_out [n, out_dim] (linear_backward's bias part). */
void linear_bias_backward(float *d_b, const float *d_out, int n, int out_dim);

/*
 * Training's attention with its projections folded (key_dim = d).
 *
 * Values: the context of head h at a row is sum_j p_j v_j (its
 * probabilities after dropout, v_j = x_j Wv_h + bv_h), so its share of the
 * output projection, ctx_h Wo_h, is sum_j p_j (x_j Wv_h Wo_h + bv_h Wo_h):
 * with each head's value projection Wv_h Wo_h and bias bv_h Wo_h, the
 * contexts are already in the output's space, and the output is their sum
 * over the heads plus bo (heads_sum_forward), with no product over the rows.
 *
 * Queries and keys: the score of query i and key j is (x_i Wq_h + bq_h)
 * (x_j Wk_h + bk_h)^T = (x_i Wq_h Wk_h^T + bq_h Wk_h^T) x_j^T plus terms
 * that are the same for every key j of query i, which the softmax cancels.
 * So the folded query is x_i Wq_h Wk_h^T + bq_h Wk_h^T, and the key is the
 * row x_j itself, for every head: no product for the keys, and no copy of
 * them (attention_forward_folded reads x's rows).
 *
 * attention_fold_forward: w [d, 2 H d] = (Wq_h Wk_h^T) | (Wv_h Wo_h), head
 * by head in each part, and b [2 H d] = bq_h Wk_h^T | bv_h Wo_h, from wqkv,
 * bqkv and wo [H d, d].  attention_fold_backward adds to the gradients of
 * wqkv, bqkv and wo those of w and b (d_w, d_b) through that map; bk gets
 * none, as it has none.
 * fold_projection_forward: out [n, 2 H d] = the rows in [n, d] times w;
 * fold_projection_backward: d_in [n, d] (written; NULL: skipped) and d_w
 * (added to) from d_out.
 * heads_sum_forward: out [n, d] = bias + the sum of ctx's H blocks of d
 * columns, in the order of the heads.  Its backward: every head's context
 * gets d_out (attention_backward_folded reads it so), the bias d_out's
 * column sums (linear_bias_backward).
 */
void attention_fold_forward(float *w, float *b, const float *wqkv, const float *bqkv,
                            const float *wo, int d, int H);
void attention_fold_backward(float *d_wqkv, float *d_bqkv, float *d_wo, const float *d_w,
                             const float *d_b, const float *wqkv, const float *bqkv,
                             const float *wo, int d, int H);
void fold_projection_forward(float *out, const float *in, const float *w, int n, int d, int H);
void fold_projection_backward(float *d_in, float *d_w, const float *d_out, const float *in,
                              const float *w, int n, int d, int H);
void heads_sum_forward(float *out, const float *ctx, const float *bias, int n, int H, int d);


/*
 * out = dropout(act = leaky_relu(in, slope)), as leaky_relu_forward and
 * dropout_forward in turn (the same bits, one parallel loop), and its
 * backward: d_act = d_out * mask, d_in = leaky_relu's backward of d_act.
 */
void leaky_relu_dropout_forward(float *act, float *out, float *mask, const float *in, size_t n,
                                float slope, float p, BstRng *rng);
void leaky_relu_dropout_backward(float *d_act, float *d_in, const float *d_out,
                                 const float *mask, const float *in, size_t n, float slope);
/*
 * A hidden MLP layer after its product, in training, by shares of the rows
 * (model.c's MLP shares), so that no core reads another's rows:
 * batchnorm_share_stats_forward takes rows [r0, r1)'s mean and sum of
 * squared deviations from it; batchnorm_combine_stats adds the shares' up
 * in share order (share s's at offset s * stride; Chan, Golub and
 * LeVeque's pairwise update, in double) into the batch's mean and (biased)
 * variance, one share giving batchnorm_forward's bits; then
 * batchnorm_activation_rows_forward computes rows [r0, r1) of out =
 * BatchNorm(in), then act and drop as leaky_relu_dropout_forward (the same
 * bits as the three in turn), its dropout from a key that dropout_key drew
 * once for the batch (it returns p, or 0 when disabled).
 */
float dropout_key(float p, BstRng *rng, uint64_t *key);
void batchnorm_share_stats_forward(float *mean, float *m2, const float *in, size_t r0,
                                   size_t r1, int d);
void batchnorm_combine_stats(float *mean, float *var, const float *share_mean,
                             const float *share_m2, const size_t *share_rows, int shares,
                             size_t stride, int d);
void batchnorm_activation_rows_forward(float *out, float *act, float *drop, float *mask,
                                       const float *mean, const float *var, const float *in,
                                       const float *gamma, const float *beta, int d, float eps,
                                       float slope, float p, uint64_t key, size_t r0, size_t r1);

/*
 * batchnorm_backward by shares of the rows: batchnorm_backward_sums takes
 * rows [r0, r1)'s sums of d_out and of d_out times the normalised input
 * (the gradients of beta and gamma, which the caller adds up over the
 * shares in order, one share giving batchnorm_backward's bits), and
 * batchnorm_backward_rows computes rows [r0, r1) of d_in from the whole
 * batch's sums (n rows).
 */
void batchnorm_backward_sums(float *sum_g, float *sum_gx, const float *d_out, const float *in,
                             const float *mean, const float *var, size_t r0, size_t r1, int d,
                             float eps);
void batchnorm_backward_rows(float *d_in, const float *d_out, const float *in, const float *mean,
                             const float *var, const float *gamma, const float *sum_g,
                             const float *sum_gx, int n, size_t r0, size_t r1, int d, float eps);

/*
 * A transformer block's residual step, as dropout_forward, res += x and
 * layernorm_forward in turn (the same bits) in one parallel loop over the n
 * rows of d: res = dropout(branch) + x (mask: the dropout factors, one draw
 * from rng; res may be branch itself when rng is NULL, as in prediction;
 * the rows are rows row0.. of a batch, row0 * d even, and draw the
 * batch's mask there, so that a call on a share of the batch's rows gives
 * the bits a call on all of them would),
 * out = LayerNorm(res) (mean and rstd kept unless NULL), and
 * when act is not NULL act = leaky_relu(out, slope), the next layer's input.
 * residual_layernorm_backward is its backward from d_out, the gradient of
 * out (when d_act is not NULL, d_out is first written as leaky_relu's
 * backward of d_act, the gradient of act, plus d_skip, the gradient out gets
 * as the next residual's x): d_res, the gradient of res and so of x (the
 * caller adds it where x came from), d_branch = d_res * mask, and d_gamma,
 * d_beta added to.  The backward in two calls: d_gamma NULL computes the
 * rows alone (d_branch, d_res, d_out), d_branch NULL the parameters' sums
 * alone (from d_out as the first call left it).
 */
void residual_layernorm_forward(float *res, float *mask, float *out, float *mean, float *rstd,
                                float *act, const float *branch, const float *x,
                                const float *gamma, const float *beta, int n, int d, float p,
                                BstRng *rng, size_t row0, float eps, float slope);
void residual_layernorm_backward(float *d_branch, float *d_res, float *d_gamma, float *d_beta,
                                 float *d_out, const float *d_act, const float *out,
                                 const float *d_skip, const float *res, const float *mean,
                                 const float *rstd, const float *gamma, const float *mask,
                                 int n, int d, float slope);

/*
 * Scaled dot-product attention core of Keras MultiHeadAttention.
 * qkv is [B, L, 3*H*dk]: each row holds the query, key and value projections
 * [q | k | v] (one fused projection), head h in columns [h*dk, (h+1)*dk) of
 * each part.  ctx is [B, L, H*dk].  probs and mask are [B, H, L, L]: probs
 * holds the softmax (before dropout), mask the dropout factors (see
 * dropout_forward: one draw from rng per call; rng NULL = no dropout).
 * mask may be NULL when there is no dropout (rng NULL or p = 0) and no
 * backward follows (inference).
 * Keys at padded positions (hist_len) get probability 0; the backward needs
 * no mask of its own, since their zero probabilities stop every gradient.
 */
void attention_forward(float *ctx, float *probs, float *mask, const float *qkv,
                       const int32_t *hist_len, int B, int L, int H, int dk, float p,
                       BstRng *rng);
/*
 * The same without dropout, its scores summed in 1.0's order (a dot8 per
 * score, libm's expf for each exponential) instead of attention_forward's
 * faster one: inference on the sgemm path (stored models of format 1 and
 * validation), so that a stored model predicts bit for bit what it did.
 * The two orders round differently (test/c/test_gradients.c bounds it).
 */
void attention_forward_inference(float *ctx, float *probs, const float *qkv,
                                 const int32_t *hist_len, int B, int L, int H, int dk);
/* d_qkv is written in full; d_probs is a [B, H, L, L] scratch buffer. */
void attention_backward(float *d_qkv, float *d_probs, const float *d_ctx,
                        const float *probs, const float *mask, const float *qkv,
                        int B, int L, int H, int dk);
/*
 * Training's folded attention (attention_fold_forward): as attention_forward,
 * with the queries and values in qv [B, L, 2 H dk] (rows [q | v]) and every
 * head's keys x's rows [B, L, dk], in the same order of operations (the
 * same bits as attention_forward on rows [q | x per head | v]).  Its
 * backward takes one gradient [B, L, dk] for every head's context (that of
 * heads_sum_forward's output), writes d_qv in full and adds the keys'
 * gradient to d_x (which holds x's gradient from its other uses), head by
 * head: d_x + (head 0's sum), then + (head 1's sum), ...  The windows are
 * windows window0.. of a batch (window0 * H * L * L even), as row0 in
 * residual_layernorm_forward.
 */
void attention_forward_folded(float *ctx, float *probs, float *mask, const float *qv,
                              const float *x, const int32_t *hist_len, int B, int L, int H,
                              int dk, float p, BstRng *rng, size_t window0);
void attention_backward_folded(float *d_qv, float *d_x, float *d_probs, const float *d_out,
                               const float *probs, const float *mask, const float *qv,
                               const float *x, int B, int L, int H, int dk);

/*
 * Factor term of biased matrix factorisation:
 * pred[b] += <user_factors[users[b]], movie_factors[movies[b]]> over k
 * factors (indices outside the tables read row 0).  The backward
 * accumulates both tables' gradients.
 */
void factor_forward(float *pred, const float *user_factors, const float *movie_factors,
                    const int32_t *users, const int32_t *movies, int32_t n_user_rows,
                    int32_t n_movie_rows, int B, int k);
void factor_backward(float *d_user_factors, float *d_movie_factors, const float *d_pred,
                     const float *user_factors, const float *movie_factors,
                     const int32_t *users, const int32_t *movies, int32_t n_user_rows,
                     int32_t n_movie_rows, int B, int k);

/* Mean squared error over n predictions. */
float mse_forward(const float *pred, const float *target, int n);
void mse_backward(float *d_pred, const float *pred, const float *target, int n);

#endif

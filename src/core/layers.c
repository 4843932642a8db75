#include "layers.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/*
 * Float reductions: compilers may not reorder a single running sum without
 * -ffast-math, which leaves it scalar.  Eight independent partial sums
 * vectorise at -O2 and also round better than one long chain.
 */
static inline float dot8(const float *a, const float *b, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    float s = 0.0f;
    for (; i < n; i++)
        s += a[i] * b[i];
    return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static inline float sum8(const float *a, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j];
    float s = 0.0f;
    for (; i < n; i++)
        s += a[i];
    return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* Sum of (a - m)^2. */
static inline float sumsq_centered8(const float *a, float m, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += (a[i + j] - m) * (a[i + j] - m);
    float s = 0.0f;
    for (; i < n; i++)
        s += (a[i] - m) * (a[i] - m);
    return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* Sum of a * (x - m). */
static inline float dot_centered8(const float *a, const float *x, float m, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * (x[i + j] - m);
    float s = 0.0f;
    for (; i < n; i++)
        s += a[i] * (x[i] - m);
    return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static inline int32_t clamp_row(int32_t idx, int32_t n_rows)
{
    return (idx >= 0 && idx < n_rows) ? idx : 0;
}

void embedding_forward(float *out, const int32_t *movies, const float *ratings,
                       const float *movie_emb, const float *pos_emb,
                       int32_t n_rows, int B, int L, int d)
{
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < L; i++) {
            const float *e = movie_emb + (size_t)clamp_row(movies[(size_t)b * L + i], n_rows) * d;
            float *o = out + ((size_t)b * L + i) * d;
            if (i == L - 1) {
                memcpy(o, e, (size_t)d * sizeof(float));
                continue;
            }
            const float *pe = pos_emb + (size_t)i * d;
            float r = ratings[(size_t)b * (L - 1) + i];
            for (int c = 0; c < d; c++)
                o[c] = (e[c] + pe[c]) * r;
        }
    }
}

void embedding_backward(float *d_movie_emb, float *d_pos_emb, const float *d_out,
                        const int32_t *movies, const float *ratings,
                        int32_t n_rows, int B, int L, int d)
{
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < L; i++) {
            float *de = d_movie_emb + (size_t)clamp_row(movies[(size_t)b * L + i], n_rows) * d;
            const float *g = d_out + ((size_t)b * L + i) * d;
            if (i == L - 1) {
                for (int c = 0; c < d; c++)
                    de[c] += g[c];
                continue;
            }
            float *dpe = d_pos_emb + (size_t)i * d;
            float r = ratings[(size_t)b * (L - 1) + i];
            for (int c = 0; c < d; c++) {
                de[c] += g[c] * r;
                dpe[c] += g[c] * r;
            }
        }
    }
}

void linear_forward(float *out, const float *in, const float *w, const float *b,
                    int n, int in_dim, int out_dim)
{
    /* Pre-fill with the bias so one sgemm with beta = 1 adds the product. */
    if (b) {
        for (int r = 0; r < n; r++)
            memcpy(out + (size_t)r * out_dim, b, (size_t)out_dim * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, out_dim, in_dim,
                1.0f, in, in_dim, w, out_dim, b ? 1.0f : 0.0f, out, out_dim);
}

void linear_backward(float *d_in, float *d_w, float *d_b, const float *d_out,
                     const float *in, const float *w, int n, int in_dim, int out_dim)
{
    if (d_in)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, in_dim, out_dim,
                    1.0f, d_out, out_dim, w, out_dim, 0.0f, d_in, in_dim);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, in_dim, out_dim, n,
                1.0f, in, in_dim, d_out, out_dim, 1.0f, d_w, out_dim);
    if (d_b) {
        for (int r = 0; r < n; r++) {
            const float *g = d_out + (size_t)r * out_dim;
            for (int c = 0; c < out_dim; c++)
                d_b[c] += g[c];
        }
    }
}

void layernorm_forward(float *out, float *mean, float *rstd, const float *in,
                       const float *gamma, const float *beta, int n, int d, float eps)
{
    for (int r = 0; r < n; r++) {
        const float *x = in + (size_t)r * d;
        float *o = out + (size_t)r * d;
        float m = sum8(x, d) / (float)d;
        /* Two-pass variance: the one-pass form cancels badly when |mean| >> std. */
        float v = sumsq_centered8(x, m, d) / (float)d;
        float s = 1.0f / sqrtf(v + eps);
        for (int c = 0; c < d; c++)
            o[c] = (x[c] - m) * s * gamma[c] + beta[c];
        mean[r] = m;
        rstd[r] = s;
    }
}

void layernorm_backward(float *d_in, float *d_gamma, float *d_beta, const float *d_out,
                        const float *in, const float *mean, const float *rstd,
                        const float *gamma, int n, int d)
{
    for (int r = 0; r < n; r++) {
        const float *x = in + (size_t)r * d;
        const float *g = d_out + (size_t)r * d;
        float *dx = d_in + (size_t)r * d;
        float m = mean[r], s = rstd[r];
        /* The mean and variance depend on every input of the row, hence the two
         * row-wide terms subtracted from each element's direct gradient. */
        for (int c = 0; c < d; c++) {
            float xhat = (x[c] - m) * s;
            d_gamma[c] += g[c] * xhat;
            d_beta[c] += g[c];
            /* dx stages dnorm = g * gamma, overwritten below. */
            dx[c] = g[c] * gamma[c];
        }
        float dnorm_mean = sum8(dx, d) / (float)d;
        float dnorm_xhat_mean = dot_centered8(dx, x, m, d) * s / (float)d;
        for (int c = 0; c < d; c++) {
            float xhat = (x[c] - m) * s;
            dx[c] = (dx[c] - dnorm_mean - xhat * dnorm_xhat_mean) * s;
        }
    }
}

/*
 * BatchNorm reduces each feature over the rows.  Walking the row-major
 * [n, d] matrix in blocks of columns keeps the accesses contiguous and the
 * per-feature sums in small stack arrays (no scratch buffers), and the inner
 * loops run across independent features, so they vectorise.
 */
#define BN_BLOCK 32

void batchnorm_forward(float *out, float *mean, float *var, const float *in,
                       const float *gamma, const float *beta, int n, int d, float eps)
{
    for (int c0 = 0; c0 < d; c0 += BN_BLOCK) {
        const int w = d - c0 < BN_BLOCK ? d - c0 : BN_BLOCK;
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

void batchnorm_forward_infer(float *out, const float *in, const float *gamma,
                             const float *beta, const float *moving_mean,
                             const float *moving_var, int n, int d, float eps)
{
    for (int c0 = 0; c0 < d; c0 += BN_BLOCK) {
        const int w = d - c0 < BN_BLOCK ? d - c0 : BN_BLOCK;
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

void batchnorm_backward(float *d_in, float *d_gamma, float *d_beta, const float *d_out,
                        const float *in, const float *mean, const float *var,
                        const float *gamma, int n, int d, float eps)
{
    for (int c0 = 0; c0 < d; c0 += BN_BLOCK) {
        const int w = d - c0 < BN_BLOCK ? d - c0 : BN_BLOCK;
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

void batchnorm_update_moving(float *moving_mean, float *moving_var, const float *mean,
                             const float *var, int d, float momentum)
{
    for (int c = 0; c < d; c++) {
        moving_mean[c] = momentum * moving_mean[c] + (1.0f - momentum) * mean[c];
        moving_var[c] = momentum * moving_var[c] + (1.0f - momentum) * var[c];
    }
}

void leaky_relu_forward(float *out, const float *in, size_t n, float slope)
{
    /* Branch-free: signs are random, so a branch mispredicts half the time;
     * this form vectorises (fmaxf/fminf would be library calls). */
    for (size_t i = 0; i < n; i++) {
        float k = (float)(in[i] > 0.0f) * (1.0f - slope) + slope;
        out[i] = in[i] * k;
    }
}

void leaky_relu_backward(float *d_in, const float *d_out, const float *in, size_t n,
                         float slope)
{
    for (size_t i = 0; i < n; i++) {
        float k = (float)(in[i] > 0.0f) * (1.0f - slope) + slope;
        d_in[i] = d_out[i] * k;
    }
}

/* Fills mask with inverted-dropout factors: 0 with probability p, else 1/(1-p). */
static void dropout_mask(float *mask, size_t n, float p, BstRng *rng)
{
    if (rng == NULL || p <= 0.0f) {
        for (size_t i = 0; i < n; i++)
            mask[i] = 1.0f;
        return;
    }
    /* Keep iff u >= p as Keras/TF does, with u a 24-bit fraction; two are
     * taken from each 64-bit draw to halve the generator cost. */
    float scale = 1.0f / (1.0f - p);
    uint32_t threshold = (uint32_t)ceilf(p * 16777216.0f);
    size_t i = 0;
    for (; i + 1 < n; i += 2) {
        uint64_t r = bst_rng_next(rng);
        mask[i] = ((uint32_t)(r >> 40) >= threshold) ? scale : 0.0f;
        mask[i + 1] = ((uint32_t)((r >> 8) & 0xffffff) >= threshold) ? scale : 0.0f;
    }
    if (i < n)
        mask[i] = ((uint32_t)(bst_rng_next(rng) >> 40) >= threshold) ? scale : 0.0f;
}

void dropout_forward(float *out, float *mask, const float *in, size_t n, float p,
                     BstRng *rng)
{
    if (rng == NULL || p <= 0.0f) {
        if (out != in)
            memmove(out, in, n * sizeof(float));
        if (mask)
            dropout_mask(mask, n, 0.0f, NULL);
        return;
    }
    dropout_mask(mask, n, p, rng);
    for (size_t i = 0; i < n; i++)
        out[i] = in[i] * mask[i];
}

void dropout_backward(float *d_in, const float *d_out, const float *mask, size_t n)
{
    for (size_t i = 0; i < n; i++)
        d_in[i] = d_out[i] * mask[i];
}

/*
 * The per-window products here (L x dk by dk x L, L = 4 in BST) are far too
 * small for a BLAS call to pay off: one sgemm per (window, head) costs more in
 * call overhead than the arithmetic, so these stay as plain loops.  All
 * mini-batch products (the projections) go through sgemm in linear_*.
 */
void attention_forward(float *ctx, float *probs, float *mask, const float *qkv,
                       int B, int L, int H, int dk, float p, BstRng *rng)
{
    const int hd = H * dk, stride = 3 * hd;
    const float *q = qkv, *k = qkv + hd, *v = qkv + 2 * hd;
    /* Keras scales the query by 1/sqrt(key_dim) before the dot product. */
    const float scale = 1.0f / sqrtf((float)dk);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            float *pr = probs + ((size_t)b * H + h) * L * L;
            for (int i = 0; i < L; i++) {
                const float *qi = q + ((size_t)b * L + i) * stride + (size_t)h * dk;
                float *row = pr + (size_t)i * L;
                float maxv = -INFINITY;
                for (int j = 0; j < L; j++) {
                    const float *kj = k + ((size_t)b * L + j) * stride + (size_t)h * dk;
                    float s = dot8(qi, kj, dk) * scale;
                    row[j] = s;
                    if (s > maxv)
                        maxv = s;
                }
                float sum = 0.0f;
                for (int j = 0; j < L; j++) {
                    row[j] = expf(row[j] - maxv);
                    sum += row[j];
                }
                float inv = 1.0f / sum;
                for (int j = 0; j < L; j++)
                    row[j] *= inv;
            }
        }
    }
    /* The dropped probabilities are never stored: ctx uses probs * mask, which
     * keeps probs intact for the softmax backward. */
    dropout_mask(mask, (size_t)B * H * L * L, p, rng);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            const float *pr = probs + ((size_t)b * H + h) * L * L;
            const float *mk = mask + ((size_t)b * H + h) * L * L;
            for (int i = 0; i < L; i++) {
                float *ci = ctx + ((size_t)b * L + i) * hd + (size_t)h * dk;
                memset(ci, 0, (size_t)dk * sizeof(float));
                for (int j = 0; j < L; j++) {
                    float w = pr[(size_t)i * L + j] * mk[(size_t)i * L + j];
                    const float *vj = v + ((size_t)b * L + j) * stride + (size_t)h * dk;
                    for (int c = 0; c < dk; c++)
                        ci[c] += w * vj[c];
                }
            }
        }
    }
}

void attention_backward(float *d_qkv, float *d_probs, const float *d_ctx,
                        const float *probs, const float *mask, const float *qkv,
                        int B, int L, int H, int dk)
{
    const int hd = H * dk, stride = 3 * hd;
    const float scale = 1.0f / sqrtf((float)dk);
    const float *q = qkv, *k = qkv + hd, *v = qkv + 2 * hd;
    float *d_q = d_qkv, *d_k = d_qkv + hd, *d_v = d_qkv + 2 * hd;
    /* Keys and values receive contributions from every query: accumulate. */
    memset(d_qkv, 0, (size_t)B * L * stride * sizeof(float));
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            size_t blk = ((size_t)b * H + h) * L * L;
            for (int i = 0; i < L; i++) {
                const float *pr = probs + blk + (size_t)i * L;
                const float *mk = mask + blk + (size_t)i * L;
                float *dp = d_probs + blk + (size_t)i * L;
                size_t qi_off = ((size_t)b * L + i) * stride + (size_t)h * dk;
                const float *gi = d_ctx + ((size_t)b * L + i) * hd + (size_t)h * dk;
                /* Through ctx = (probs * mask) . V */
                for (int j = 0; j < L; j++) {
                    size_t j_off = ((size_t)b * L + j) * stride + (size_t)h * dk;
                    const float *vj = v + j_off;
                    float *dvj = d_v + j_off;
                    float w = pr[j] * mk[j];
                    for (int c = 0; c < dk; c++)
                        dvj[c] += w * gi[c];
                    dp[j] = dot8(gi, vj, dk) * mk[j];
                }
                /* Through the softmax: ds_j = p_j (dp_j - sum_k p_k dp_k). */
                float dot = 0.0f;
                for (int j = 0; j < L; j++)
                    dot += pr[j] * dp[j];
                const float *qi = q + qi_off;
                float *dqi = d_q + qi_off;
                for (int j = 0; j < L; j++) {
                    float ds = pr[j] * (dp[j] - dot) * scale;
                    size_t j_off = ((size_t)b * L + j) * stride + (size_t)h * dk;
                    const float *kj = k + j_off;
                    float *dkj = d_k + j_off;
                    for (int c = 0; c < dk; c++) {
                        dqi[c] += ds * kj[c];
                        dkj[c] += ds * qi[c];
                    }
                }
            }
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

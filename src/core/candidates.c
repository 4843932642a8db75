#include "candidates.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "blas.h"
#include "bst_alloc.h"
#include "carve.h"
#include "infer.h"
#include "layers.h"
#include "parallel.h"
#include "reduce.h"

/*
 * Threads.  A call of bst_candidates_score is one parallel region: its
 * candidates go in chunks, which the region's threads take one after another
 * until none is left, each in buffer rows of its own (a slot: the
 * workspace's batch holds batch / chunk of them) and running every layer on
 * its chunk alone (the layers' own loops run serially inside a region).
 * Chunks hold CAND_CHUNK candidates (64 rows: the products run at their
 * full speed, and the chunk's rows stay in the core's cache from one layer
 * to the next), then shrink towards the end (an eighth of what is left,
 * down to a quarter of that), so that the threads finish within some 50 us
 * of each other at ML-1M's shape: the core's pool treats a wait of 0.3 ms
 * for its workers as a stall and runs alone for a while after one
 * (parallel.c).  The chunks depend on the number of candidates and the
 * workspace's batch only, not on the threads, so neither do the products:
 * each score is the same bits whatever the thread count.
 */
#define CAND_CHUNK 64

/*
 * The per-candidate passes besides the products (attention from the shared
 * sums, the fused LayerNorm, BatchNorm and activation passes) are some 40%
 * of the time at ML-1M's shape, and the core is built for any x86-64 (SSE2,
 * four floats a vector, where gcc leaves some of these loops scalar): they
 * are compiled again for AVX2 + FMA and for AVX-512, and the loader picks
 * the version the CPU runs (an ifunc): 7.5 ms a user on one core against
 * 22 ms for the baseline version.  Every version computes the same
 * function; where the build contracts multiply-adds (the extension's gnu99)
 * the rounding may differ between CPUs, within the scores' tolerance.
 */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(BST_NO_CLONES) && \
    !defined(BST_NO_SIMD_KERNELS)
#define BST_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define BST_CLONES
#endif
/* Inlined into the cloned functions, so compiled for each of their targets. */
#define BST_INLINE static inline __attribute__((always_inline))

struct BstCandidates {
    const BstModel *model;
    int32_t max_batch;                /* buffer rows: slots of chunk rows */
    int32_t chunk;                    /* candidates a thread takes at a time */
    int32_t ready;                    /* a history is set */
    /* Per model: Wq | Wk | (Wv_h Wo_h for each head), and their biases
     * bq | bk | (bv_h Wo_h). */
    float *wt;                        /* [d, 3*H*d] */
    float *bt;                        /* [3*H*d] */
    /* Per model, when it fits BST_CANDIDATES_TABLE_BUDGET: what a target
     * contributes that depends on the movie alone, for every movie row. */
    int32_t has_table;
    int32_t fused;                    /* products on the fused kernels (infer.h), else sgemm */
    float *tbl_enc;                   /* [n_movies + 1, d] encoded movie (G > 0) */
    float *tbl_wv;                    /* [n_movies + 1, H, d] v_T^h Wo_h */
    float *tbl_self;                  /* [n_movies + 1, H] its query's score of its own key */
    /* Per history: rows of its hist valid positions first .. L - 2. */
    int32_t first, hist, user;
    float *hist_in;                   /* [L-1, d + G] embedding | genres (G > 0) */
    float *hist_x;                    /* [L-1, d] sequence input */
    float *hist_qkv;                  /* [L-1, 3*H*d] */
    float *hist_max, *hist_sum;       /* [L-1, H] softmax over the history keys */
    float *hist_a;                    /* [L-1, H*d] unnormalised context A_i^h */
    float *hist_wa;                   /* [L-1, H, d] A_i^h Wo_h */
    float *hist_wv;                   /* [L-1, H, d] v_j^h Wo_h */
    float *hist_bx;                   /* [L-1, d] bo + x_i */
    /* The scores between a target and the history, linear in the target's
     * encoded row e: s = e . U + u, columns h * hist + i for history query
     * i against the target's key (U = scale Wk_h q_i^h), then H * hist +
     * h * hist + j for the target's query against history key j (U = scale
     * Wq_h k_j^h). */
    float *score_w;                   /* [d, 2 * (L-1) * H] */
    float *score_b;                   /* [2 * (L-1) * H] */
    float *user_in;                   /* [mlp input - L*d] the user's embeddings */
    float *first_bias;                /* [units of the first dense] its bias + the user's share */
    float *bn_k[BST_MAX_HIDDEN];      /* [hidden[i]] BatchNorm's gamma / sqrt(moving var + eps) */
    BstKernels kernels;               /* feed-forward and dense kernels on cache lines */
    float tail[16];                   /* row_stats' mask of a row's last sixteen floats */
    /* Per candidate, [N, ...] with N = max_batch; rows of positions first .. L-1. */
    float *tgt_in;                    /* [N, d + G] (G > 0) */
    float *tgt_enc;                   /* [N, d] encoded target */
    float *tgt_proj;                  /* [N, 3*H*d] q_T | k_T | v_T^h Wo_h (no table) */
    float *tgt_self;                  /* [N, H] (no table) */
    float *tgt_scores;                /* [N, 2 * (L-1) * H] */
    float *tgt_coef;                  /* [N, 3 * (L-1) * H + H] attention weights */
    float *rows_a, *rows_x1, *rows_b; /* [N, L, d] position rows: attention + residual;
                                       * x1 + ffn bias (+ ffn); ffn input, then y */
    float *h[BST_MAX_HIDDEN];         /* [N, hidden[i]] dense, BatchNorm, LeakyReLU in place */
    float *pred;                      /* [N] */
    int32_t *users, *targets;         /* [N] */
    float *slab;
};

/* ---------------------------------------------------------------- layout */

static int32_t first_units(const BstConfig *c)
{
    return c->n_hidden > 0 ? c->hidden[0] : 1;
}

/* Floats of the per-model and per-history buffers. */
static void fixed_layout(BstCandidates *w, const BstConfig *c, Carver *cv)
{
    const size_t L = (size_t)c->seq_len, d = (size_t)c->embed_dim, H = (size_t)c->heads;
    const size_t hd = H * d, G = (size_t)c->n_genres;
    const size_t user_cols = (size_t)bst_config_mlp_input(c) - L * d;

    w->wt = carve(cv, d * 3 * hd);
    w->bt = carve(cv, 3 * hd);
    w->hist_in = G ? carve(cv, (L - 1) * (d + G)) : NULL;
    w->hist_x = carve(cv, (L - 1) * d);
    w->hist_qkv = carve(cv, (L - 1) * 3 * hd);
    w->hist_max = carve(cv, (L - 1) * H);
    w->hist_sum = carve(cv, (L - 1) * H);
    w->hist_a = carve(cv, (L - 1) * hd);
    w->hist_wa = carve(cv, (L - 1) * hd);
    w->hist_wv = carve(cv, (L - 1) * hd);
    w->hist_bx = carve(cv, (L - 1) * d);
    w->score_w = carve(cv, d * 2 * (L - 1) * H);
    w->score_b = carve(cv, 2 * (L - 1) * H);
    w->user_in = carve(cv, user_cols ? user_cols : 1);
    w->first_bias = carve(cv, (size_t)first_units(c));
    for (int i = 0; i < c->n_hidden; i++)
        w->bn_k[i] = carve(cv, (size_t)c->hidden[i]);
    bst_kernels_place(&w->kernels, c, cv);
}

/* Floats of the per-movie table. */
static void table_layout(BstCandidates *w, const BstConfig *c, Carver *cv)
{
    const size_t rows = (size_t)c->n_movies + 1, d = (size_t)c->embed_dim;
    const size_t H = (size_t)c->heads;
    w->tbl_enc = c->n_genres ? carve_packed(cv, rows * d) : NULL;
    w->tbl_wv = carve_packed(cv, rows * H * d);
    w->tbl_self = carve_packed(cv, rows * H);
}

/* Floats of the per-candidate buffers for N candidates. */
static void batch_layout(BstCandidates *w, const BstConfig *c, size_t N, Carver *cv)
{
    const size_t L = (size_t)c->seq_len, d = (size_t)c->embed_dim, H = (size_t)c->heads;
    const size_t hd = H * d, G = (size_t)c->n_genres;

    w->tgt_in = G ? carve(cv, N * (d + G)) : NULL;
    w->tgt_enc = carve(cv, N * d);
    w->tgt_proj = carve(cv, N * 3 * hd);
    w->tgt_self = carve(cv, N * H);
    w->tgt_scores = carve(cv, N * 2 * (L - 1) * H);
    w->tgt_coef = carve(cv, N * (3 * (L - 1) * H + H));
    w->rows_a = carve(cv, N * L * d);
    w->rows_x1 = carve(cv, N * L * d);
    w->rows_b = carve(cv, N * L * d);
    for (int i = 0; i < c->n_hidden; i++)
        w->h[i] = carve(cv, N * (size_t)c->hidden[i]);
    w->pred = carve(cv, N);
    /* int32 in float-sized slots of the same slab. */
    w->users = (int32_t *)carve(cv, N);
    w->targets = (int32_t *)carve(cv, N);
}

static size_t fixed_floats(const BstConfig *c)
{
    BstCandidates w;
    Carver cv = {NULL, 0};
    fixed_layout(&w, c, &cv);
    return carve_lines(cv.used);
}

static size_t table_floats(const BstConfig *c)
{
    BstCandidates w;
    Carver cv = {NULL, 0};
    table_layout(&w, c, &cv);
    return cv.used;
}

static int table_fits(const BstConfig *c, size_t table_budget)
{
    return table_floats(c) <= table_budget / sizeof(float);
}

static size_t batch_floats(const BstConfig *c, size_t N)
{
    BstCandidates w;
    Carver cv = {NULL, 0};
    batch_layout(&w, c, N, &cv);
    return carve_lines(cv.used);
}

int32_t bst_candidates_batch_limit(const BstConfig *cfg, int32_t max_batch)
{
    if (max_batch < 1)
        return 0;
    const size_t per_candidate = batch_floats(cfg, 1) * sizeof(float);
    return bst_windows_within(BST_CANDIDATES_MEMORY_BUDGET, per_candidate, cfg->seq_len, max_batch);
}

size_t bst_candidates_memory_bytes(const BstConfig *cfg, int32_t max_batch, size_t table_budget)
{
    const int32_t batch = bst_candidates_batch_limit(cfg, max_batch);
    if (batch < 1)
        return 0;
    return sizeof(BstCandidates) +
           carve_slab_floats(fixed_floats(cfg) + batch_floats(cfg, (size_t)batch) +
                             (table_fits(cfg, table_budget) ? table_floats(cfg) : 0)) *
               sizeof(float);
}

int bst_candidates_has_table(const BstCandidates *w)
{
    return w->has_table;
}

/* The fused projection of a target row: its query and key as bst_forward
 * computes them, and each head's value already through the output
 * projection (v_T^h Wo_h = x_T (Wv_h Wo_h) + bv_h Wo_h). */
static void fold_projection(BstCandidates *w)
{
    const BstConfig *c = &w->model->cfg;
    const BstParams *p = &w->model->params;
    const int d = c->embed_dim, H = c->heads, dk = d, hd = H * dk, ld = 3 * hd;

    for (int r = 0; r < d; r++)
        memcpy(w->wt + (size_t)r * ld, p->wqkv + (size_t)r * ld, (size_t)2 * hd * sizeof(float));
    memcpy(w->bt, p->bqkv, (size_t)2 * hd * sizeof(float));
    for (int h = 0; h < H; h++) {
        const float *wv = p->wqkv + 2 * hd + (size_t)h * dk;   /* [d, dk], ld 3*hd */
        const float *wo = p->wo + (size_t)h * dk * d;           /* [dk, d] */
        bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, d, dk, 1.0f, wv, ld, wo, d,
                       0.0f, w->wt + 2 * hd + (size_t)h * d, ld);
        bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1, d, dk, 1.0f,
                       p->bqkv + 2 * hd + (size_t)h * dk, dk, wo, d, 0.0f,
                       w->bt + 2 * hd + (size_t)h * d, d);
    }
}

static void product(const BstCandidates *w, float *out, const float *in, size_t lda,
                    const float *wt, size_t ldw, const float *bias, int accumulate, size_t rows,
                    size_t K, size_t cols);

/*
 * What targets[0..n) (movie rows) contribute that depends on the movie
 * alone, computed in the batch buffers from row lo on: the encoded row
 * (tgt_enc), each head's v_T Wo_h (tgt_proj's last third) and the score of
 * its query against its own key (tgt_self).
 */
static void project_targets(BstCandidates *w, size_t lo, int n)
{
    const BstModel *m = w->model;
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const int d = c->embed_dim, H = c->heads, G = c->n_genres, dk = d, hd = H * dk, ld = 3 * hd;
    const int32_t movie_rows = c->n_movies + 1;
    const float scale = 1.0f / sqrtf((float)dk);
    const int32_t *idx = w->targets + lo;
    float *enc = w->tgt_enc + lo * d;

    /* Its embedding, or Dense + ReLU over embedding and genres (no position
     * embedding, no rating: the target's row is the movie's alone). */
    if (G > 0) {
        float *in = w->tgt_in + lo * (size_t)(d + G);
        embedding_forward(in, d + G, idx, p->movie_emb, movie_rows, n, d);
        embedding_forward(in + d, d + G, idx, m->movie_genres, movie_rows, n, G);
        product(w, enc, in, (size_t)(d + G), p->genre_w, (size_t)d, p->genre_b, 0, (size_t)n,
                (size_t)(d + G), (size_t)d);
        leaky_relu_forward(enc, enc, (size_t)n * d, 0.0f);
    } else {
        embedding_forward(enc, d, idx, p->movie_emb, movie_rows, n, d);
    }
    float *proj = w->tgt_proj + lo * ld;
    product(w, proj, enc, (size_t)d, w->wt, (size_t)ld, w->bt, 0, (size_t)n, (size_t)d, (size_t)ld);
    for (int b = 0; b < n; b++)
        for (int h = 0; h < H; h++)
            w->tgt_self[(lo + b) * H + h] =
                dot8(proj + (size_t)b * ld + (size_t)h * dk,
                     proj + (size_t)b * ld + hd + (size_t)h * dk, dk) * scale;
}

/* Every movie row's share, a batch at a time through the batch buffers. */
static void build_table(BstCandidates *w)
{
    const BstConfig *c = &w->model->cfg;
    const int d = c->embed_dim, H = c->heads, hd = H * d, ld = 3 * hd;
    const int32_t rows = c->n_movies + 1;
    for (int32_t start = 0; start < rows; start += w->max_batch) {
        const int n = rows - start < w->max_batch ? rows - start : w->max_batch;
        for (int b = 0; b < n; b++)
            w->targets[b] = start + b;
        project_targets(w, 0, n);
        for (int b = 0; b < n; b++) {
            const size_t r = (size_t)start + b;
            if (w->tbl_enc)
                memcpy(w->tbl_enc + r * d, w->tgt_enc + (size_t)b * d, (size_t)d * sizeof(float));
            memcpy(w->tbl_wv + r * hd, w->tgt_proj + (size_t)b * ld + 2 * hd,
                   (size_t)hd * sizeof(float));
            memcpy(w->tbl_self + r * H, w->tgt_self + (size_t)b * H, (size_t)H * sizeof(float));
        }
    }
}

BstCandidates *bst_candidates_create(const BstModel *m, int32_t max_batch, size_t table_budget)
{
    const BstConfig *c = &m->cfg;
    const int32_t batch = bst_candidates_batch_limit(c, max_batch);
    if (batch < 1)
        return NULL;
    BstCandidates *w = bst_alloc_zero(1, sizeof(BstCandidates));
    if (!w)
        return NULL;
    bst_threads_init();
    const int table = table_fits(c, table_budget);
    const size_t total = fixed_floats(c) + batch_floats(c, (size_t)batch) +
                         (table ? table_floats(c) : 0);
    w->slab = bst_alloc_zero(carve_slab_floats(total), sizeof(float));
    if (!w->slab) {
        bst_free(w);
        return NULL;
    }
    Carver cv = {carve_base(w->slab), 0};
    /* The table last, packed: its bytes are the announced ones. */
    fixed_layout(w, c, &cv);
    batch_layout(w, c, (size_t)batch, &cv);
    if (table)
        table_layout(w, c, &cv);
    w->model = m;
    w->max_batch = batch;
    /* Up to BST_AUTO_THREADS_MAX slots even in a small batch. */
    w->chunk = batch / BST_AUTO_THREADS_MAX < CAND_CHUNK ? batch / BST_AUTO_THREADS_MAX
                                                          : CAND_CHUNK;
    if (w->chunk < 1)
        w->chunk = 1;
    w->fused = bst_infer_isa() != BST_ISA_NONE;
    fold_projection(w);
    for (int j = 0; j < 16; j++)
        w->tail[j] = c->embed_dim % 16 == 0 || j >= 16 - c->embed_dim % 16 ? 1.0f : 0.0f;
    /* As batchnorm_forward_infer computes its factors. */
    for (int i = 0; i < c->n_hidden; i++)
        for (int j = 0; j < c->hidden[i]; j++)
            w->bn_k[i][j] = m->params.bn_g[i][j] / sqrtf(m->bn.moving_var[i][j] + c->bn_eps);
    bst_kernels_fill(&w->kernels, m);
    if (table)
        build_table(w);
    w->has_table = table;
    return w;
}

int32_t bst_candidates_batch(const BstCandidates *w)
{
    return w->max_batch;
}

void bst_candidates_free(BstCandidates *w)
{
    if (!w)
        return;
    bst_free(w->slab);
    bst_free(w);
}

/* --------------------------------------------------------------- history */

/* Rows [0, n) of out = a . Wo_h for each head h: a is [n, H*dk] (ld lda),
 * out [n, H, d]. */
static void project_heads(float *out, const float *a, int lda, int n, const BstConfig *c,
                          const float *wo)
{
    const int d = c->embed_dim, H = c->heads, dk = d, hd = H * d;
    for (int h = 0; h < H; h++)
        bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, dk, 1.0f,
                       a + (size_t)h * dk, lda, wo + (size_t)h * dk * d, d, 0.0f,
                       out + (size_t)h * d, hd);
}

void bst_candidates_set_history(BstCandidates *w, const int32_t *movies, const float *ratings,
                                int32_t hist_len, int32_t user)
{
    const BstModel *m = w->model;
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const int L = c->seq_len, d = c->embed_dim, H = c->heads, G = c->n_genres;
    const int dk = d, hd = H * dk, ld = 3 * hd;
    const int32_t movie_rows = c->n_movies + 1, user_rows = c->n_users + 1;
    const float scale = 1.0f / sqrtf((float)dk);
    const int first = bst_first_valid(&hist_len, 0, L), hist = L - 1 - first;

    w->first = first;
    w->hist = hist;
    w->user = bst_row_or_zero(user, user_rows);

    if (hist > 0) {
        /* The history's rows as bst_forward's embedding and sequence_forward
         * make them. */
        const int32_t *idx = movies + first;
        if (G > 0) {
            embedding_forward(w->hist_in, d + G, idx, p->movie_emb, movie_rows, hist, d);
            embedding_forward(w->hist_in + d, d + G, idx, m->movie_genres, movie_rows, hist, G);
            linear_forward(w->hist_x, w->hist_in, p->genre_w, p->genre_b, hist, d + G, d);
            leaky_relu_forward(w->hist_x, w->hist_x, (size_t)hist * d, 0.0f);
        } else {
            embedding_forward(w->hist_x, d, idx, p->movie_emb, movie_rows, hist, d);
        }
        for (int r = 0; r < hist; r++) {
            const int i = first + r;
            float *o = w->hist_x + (size_t)r * d;
            const float *pe = p->pos_emb + (size_t)i * d;
            const float rt = ratings[i];
            if (c->rating_add)
                for (int k = 0; k < d; k++)
                    o[k] = o[k] + pe[k] + rt * p->rating_w[k];
            else
                for (int k = 0; k < d; k++)
                    o[k] = (o[k] + pe[k]) * rt;
            for (int k = 0; k < d; k++)
                w->hist_bx[(size_t)r * d + k] = p->bo[k] + o[k];
        }
        linear_forward(w->hist_qkv, w->hist_x, p->wqkv, p->bqkv, hist, d, ld);

        /* Each history query over the history keys: the largest score, the
         * sum of the exponentials and the unnormalised context. */
        for (int r = 0; r < hist; r++) {
            for (int h = 0; h < H; h++) {
                const float *qi = w->hist_qkv + (size_t)r * ld + (size_t)h * dk;
                float *a = w->hist_a + (size_t)r * hd + (size_t)h * dk;
                float *s = w->tgt_scores;  /* scratch: free between batches */
                float mx = -INFINITY, sum = 0.0f;
                for (int j = 0; j < hist; j++) {
                    s[j] = dot8(qi, w->hist_qkv + (size_t)j * ld + hd + (size_t)h * dk, dk) * scale;
                    if (s[j] > mx)
                        mx = s[j];
                }
                memset(a, 0, (size_t)dk * sizeof(float));
                for (int j = 0; j < hist; j++) {
                    const float e = expf(s[j] - mx);
                    const float *vj = w->hist_qkv + (size_t)j * ld + 2 * hd + (size_t)h * dk;
                    sum += e;
                    for (int k = 0; k < dk; k++)
                        a[k] += e * vj[k];
                }
                w->hist_max[r * H + h] = mx;
                w->hist_sum[r * H + h] = sum;
            }
        }
        project_heads(w->hist_wa, w->hist_a, hd, hist, c, p->wo);
        project_heads(w->hist_wv, w->hist_qkv + 2 * hd, ld, hist, c, p->wo);

        /* The scores between a target and the history as linear functions
         * of the target's encoded row e: q_i . k_T = e . (Wk_h q_i) + bk_h . q_i
         * and q_T . k_j = e . (Wq_h k_j) + bq_h . k_j, each times scale. */
        const int ns = 2 * hist * H;
        for (int h = 0; h < H; h++) {
            bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d, hist, dk, scale,
                           p->wqkv + hd + (size_t)h * dk, ld, w->hist_qkv + (size_t)h * dk, ld,
                           0.0f, w->score_w + (size_t)h * hist, ns);
            bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d, hist, dk, scale,
                           p->wqkv + (size_t)h * dk, ld, w->hist_qkv + hd + (size_t)h * dk, ld,
                           0.0f, w->score_w + (size_t)(H + h) * hist, ns);
            for (int r = 0; r < hist; r++) {
                const float *row = w->hist_qkv + (size_t)r * ld + (size_t)h * dk;
                w->score_b[h * hist + r] = dot8(p->bqkv + hd + (size_t)h * dk, row, dk) * scale;
                w->score_b[(H + h) * hist + r] =
                    dot8(p->bqkv + (size_t)h * dk, row + hd, dk) * scale;
            }
        }
    }

    /* The user's embeddings are the same for every candidate: their share
     * of the first dense layer joins its bias. */
    const int32_t u0 = first_units(c);
    const float *w0 = c->n_hidden > 0 ? p->mlp_w[0] : p->out_w;
    const float *b0 = c->n_hidden > 0 ? p->mlp_b[0] : p->out_b;
    const int user_cols = bst_config_mlp_input(c) - L * d;
    memcpy(w->first_bias, b0, (size_t)u0 * sizeof(float));
    if (user_cols > 0) {
        int col = 0;
        if (c->user_dim > 0) {
            embedding_forward(w->user_in, user_cols, &w->user, p->user_emb, user_rows, 1,
                              c->user_dim);
            col += c->user_dim;
        }
        for (int k = 0; k < BST_N_USER_FEATS; k++) {
            if (c->feat_dim[k] == 0)
                continue;
            const int32_t f = m->user_feats[(size_t)w->user * BST_N_USER_FEATS + k];
            embedding_forward(w->user_in + col, user_cols, &f, p->feat_emb[k],
                              c->n_feat_values[k] + 1, 1, c->feat_dim[k]);
            col += c->feat_dim[k];
        }
        bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1, u0, user_cols, 1.0f,
                       w->user_in, user_cols, w0 + (size_t)L * d * u0, u0, 1.0f, w->first_bias,
                       u0);
    }
    w->ready = 1;
}

/* ------------------------------------------------------------ candidates */

/*
 * The passes below index with size_t and take restrict pointers: the
 * extension is built with PostgreSQL's -fwrapv and -fno-strict-aliasing,
 * under which int indices (that might wrap) and stores that might alias the
 * workspace's pointers keep gcc from vectorising them (twice as slow).
 */

/*
 * o[0..d) = b1 + b2 + sum over t < na of ca[t] A[t] + sum over t < nb of
 * cb[t] B[t], A and B holding na and nb vectors of d floats one after the
 * other (b2 may be NULL; o overlaps none of them).  Sixteen columns at a
 * time, summed in registers and stored once; the last sixteen overlap the
 * ones before when d is not a multiple of 16 (recomputed alike).
 */
BST_INLINE void combine(float *restrict o, const float *restrict b1, const float *restrict b2,
                        const float *restrict A, const float *restrict ca, size_t na,
                        const float *restrict B, const float *restrict cb, size_t nb, size_t d)
{
    if (d < 16) {
        for (size_t k = 0; k < d; k++) {
            float acc = b2 ? b1[k] + b2[k] : b1[k];
            for (size_t t = 0; t < na; t++)
                acc += ca[t] * A[t * d + k];
            for (size_t t = 0; t < nb; t++)
                acc += cb[t] * B[t * d + k];
            o[k] = acc;
        }
        return;
    }
    for (size_t k0 = 0; k0 < d; k0 += 16) {
        const size_t k = k0 + 16 <= d ? k0 : d - 16;
        float acc[16];
        if (b2)
            for (size_t j = 0; j < 16; j++)
                acc[j] = b1[k + j] + b2[k + j];
        else
            for (size_t j = 0; j < 16; j++)
                acc[j] = b1[k + j];
        for (size_t t = 0; t < na; t++) {
            const float a = ca[t];
            const float *restrict v = A + t * d + k;
            for (size_t j = 0; j < 16; j++)
                acc[j] += a * v[j];
        }
        for (size_t t = 0; t < nb; t++) {
            const float a = cb[t];
            const float *restrict v = B + t * d + k;
            for (size_t j = 0; j < 16; j++)
                acc[j] += a * v[j];
        }
        for (size_t j = 0; j < 16; j++)
            o[k + j] = acc[j];
    }
}

/*
 * Attention output plus residual of candidate b's positions first .. L-1,
 * into rows_a [b, n_pos, d], from its scores against the history (s), its
 * own (self [H]), its encoded row (enc) and its heads' v_T Wo_h (wv [H, d]).
 */
BST_INLINE void attend(const BstCandidates *w, size_t b, const float *restrict s,
                       const float *restrict self, const float *restrict enc,
                       const float *restrict wv)
{
    const size_t d = (size_t)w->model->cfg.embed_dim, H = (size_t)w->model->cfg.heads;
    const size_t hist = (size_t)w->hist, hH = hist * H;
    const float *restrict hist_max = w->hist_max, *restrict hist_sum = w->hist_sum;
    const float *restrict hist_wa = w->hist_wa, *restrict hist_wv = w->hist_wv;
    const float *restrict hist_bx = w->hist_bx, *restrict bo = w->model->params.bo;
    float *restrict out = w->rows_a + b * (hist + 1) * d;
    /* Weights: alpha [hist, H] of the shared sums A_i Wo_h and beta
     * [hist, H] of the target's v_T Wo_h in history row i; the target's
     * query's [hist, H] over the history's v_j Wo_h and [H] over its own. */
    float *restrict coef = w->tgt_coef + b * (3 * hH + H);
    float *restrict alpha = coef, *restrict beta = coef + hH, *restrict pt = coef + 2 * hH;
    float *restrict p_self = coef + 3 * hH;

    /* History query i: its shared sums, and the target key's term. */
    for (size_t r = 0; r < hist; r++) {
        for (size_t h = 0; h < H; h++) {
            const float st = s[h * hist + r];
            const float mx = hist_max[r * H + h], z = hist_sum[r * H + h];
            if (st <= mx) {
                const float e = expf(st - mx), inv = 1.0f / (z + e);
                alpha[r * H + h] = inv;
                beta[r * H + h] = e * inv;
            } else {
                /* The target's key is the largest: rescale the history's
                 * terms instead, so that no exponent is positive. */
                const float f = expf(mx - st), inv = 1.0f / (f * z + 1.0f);
                alpha[r * H + h] = f * inv;
                beta[r * H + h] = inv;
            }
        }
        combine(out + r * d, hist_bx + r * d, NULL, hist_wa + r * H * d, alpha + r * H, H, wv,
                beta + r * H, H, d);
    }

    /* The target's query over the history keys and its own. */
    for (size_t h = 0; h < H; h++) {
        const float *restrict sh = s + (H + h) * hist;
        float mx = self[h];
        for (size_t j = 0; j < hist; j++)
            mx = sh[j] > mx ? sh[j] : mx;
        float sum = 0.0f;
        for (size_t j = 0; j < hist; j++) {
            pt[j * H + h] = expf(sh[j] - mx);
            sum += pt[j * H + h];
        }
        p_self[h] = expf(self[h] - mx);
        sum += p_self[h];
        const float inv = 1.0f / sum;
        for (size_t j = 0; j < hist; j++)
            pt[j * H + h] *= inv;
        p_self[h] *= inv;
    }
    combine(out + hist * d, bo, enc, hist_wv, pt, hH, wv, p_self, H, d);
}

/* ------------------------------------------------- fused element-wise passes */

BST_INLINE float sum16(const float *a)
{
    return (((a[0] + a[8]) + (a[4] + a[12])) + ((a[2] + a[10]) + (a[6] + a[14]))) +
           (((a[1] + a[9]) + (a[5] + a[13])) + ((a[3] + a[11]) + (a[7] + a[15])));
}

/*
 * The mean and 1 / sqrt(variance + eps) of a row of d floats, as
 * layernorm_forward (layers.c) defines them: the mean, then the mean squared
 * deviation from it.  Sixteen lanes; when d is not a multiple of 16 the last
 * sixteen floats are read again with the ones already counted masked out
 * (tail: 0 for them, 1 for the rest).
 */
BST_INLINE void row_stats(const float *restrict x, size_t d, float eps,
                          const float *restrict tail, float *mean, float *rstd)
{
    float m = 0.0f, v = 0.0f;
    if (d < 16) {
        for (size_t k = 0; k < d; k++)
            m += x[k];
        m /= (float)d;
        for (size_t k = 0; k < d; k++)
            v += (x[k] - m) * (x[k] - m);
    } else {
        float acc[16] = {0};
        size_t k = 0;
        for (; k + 16 <= d; k += 16)
            for (size_t j = 0; j < 16; j++)
                acc[j] += x[k + j];
        const float *restrict last = x + d - 16;
        if (k < d)
            for (size_t j = 0; j < 16; j++)
                acc[j] += last[j] * tail[j];
        m = sum16(acc) / (float)d;
        for (size_t j = 0; j < 16; j++)
            acc[j] = 0.0f;
        for (k = 0; k + 16 <= d; k += 16)
            for (size_t j = 0; j < 16; j++)
                acc[j] += (x[k + j] - m) * (x[k + j] - m);
        if (k < d)
            for (size_t j = 0; j < 16; j++) {
                const float t = (last[j] - m) * tail[j];
                acc[j] += t * t;
            }
        v = sum16(acc);
    }
    *mean = m;
    *rstd = 1.0f / sqrtf(v / (float)d + eps);
}

/* v = (x - m) * s * g + b over d floats: out = v + add and f = LeakyReLU(v)
 * when add and f are not NULL, out = v when they are; neither output
 * overlaps x (the last sixteen columns may be written twice, alike). */
BST_INLINE void normalize(float *restrict out, float *restrict f, const float *restrict add,
                          const float *restrict x, float m, float s, const float *restrict g,
                          const float *restrict b, size_t d, float slope)
{
    const float pos = 1.0f - slope;
    if (d < 16) {
        for (size_t k = 0; k < d; k++) {
            const float v = (x[k] - m) * s * g[k] + b[k];
            out[k] = f ? v + add[k] : v;
            if (f)
                f[k] = v * ((float)(v > 0.0f) * pos + slope);
        }
        return;
    }
    for (size_t k0 = 0; k0 < d; k0 += 16) {
        const size_t k = k0 + 16 <= d ? k0 : d - 16;
        float v[16];
        for (size_t j = 0; j < 16; j++)
            v[j] = (x[k + j] - m) * s * g[k + j] + b[k + j];
        if (f) {
            for (size_t j = 0; j < 16; j++)
                out[k + j] = v[j] + add[k + j];
            for (size_t j = 0; j < 16; j++)
                f[k + j] = v[j] * ((float)(v[j] > 0.0f) * pos + slope);
        } else {
            for (size_t j = 0; j < 16; j++)
                out[k + j] = v[j];
        }
    }
}

/* Row by row, x1 = LayerNorm(a): f = LeakyReLU(x1), the feed-forward's
 * input, and res = x1 + bias, its output's residual and bias, which the
 * feed-forward's product is then added to. */
BST_INLINE void layernorm_leaky(float *res, float *f, const float *a, const float *bias,
                                const float *g, const float *b, size_t rows, size_t d, float eps,
                                float slope, const float *tail)
{
    for (size_t r = 0; r < rows; r++) {
        float m, s;
        row_stats(a + r * d, d, eps, tail, &m, &s);
        normalize(res + r * d, f + r * d, bias, a + r * d, m, s, g, b, d, slope);
    }
}

/* y = LayerNorm(a), row by row. */
BST_INLINE void layernorm(float *y, const float *a, const float *g, const float *b, size_t rows,
                          size_t d, float eps, const float *tail)
{
    for (size_t r = 0; r < rows; r++) {
        float m, s;
        row_stats(a + r * d, d, eps, tail, &m, &s);
        normalize(y + r * d, NULL, NULL, a + r * d, m, s, g, b, d, 0.0f);
    }
}

/* h = LeakyReLU(BatchNorm(h + bias)) with the moving statistics, in place. */
BST_INLINE void dense_batchnorm_leaky(float *restrict h, const float *restrict bias,
                                      const float *restrict mean, const float *restrict k,
                                      const float *restrict beta, size_t rows, size_t u,
                                      float slope)
{
    const float pos = 1.0f - slope;
    for (size_t r = 0; r < rows; r++) {
        float *restrict x = h + r * u;
        for (size_t j = 0; j < u; j++) {
            const float v = ((x[j] + bias[j]) - mean[j]) * k[j] + beta[j];
            x[j] = v * ((float)(v > 0.0f) * pos + slope);
        }
    }
}

/* out = dot(a, b) over n floats plus bias, for rows of a. */
BST_INLINE void rows_dot(float *restrict out, const float *restrict a, const float *restrict b,
                         float bias, size_t rows, size_t n)
{
    for (size_t r = 0; r < rows; r++)
        out[r] = bias + dot8(a + r * n, b, (int)n);
}

/*
 * out[rows, cols] = bias + in[rows, K] . w[K, cols] (row strides lda, ldw,
 * cols; bias NULL: none), or out += in . w when accumulate.  A chunk's
 * products have 16-256 rows and weights of 10-250 kB: on an FMA CPU the
 * core's fused kernels (infer.h), which read the weights in place, run them
 * at 130-200 GFLOP/s a core against sgemm's 90-140 (OpenBLAS's Haswell and
 * SkylakeX kernels), and give each element the same bits whatever the rows
 * and the instruction set; elsewhere sgemm.
 */
static void product(const BstCandidates *w, float *out, const float *in, size_t lda,
                    const float *wt, size_t ldw, const float *bias, int accumulate, size_t rows,
                    size_t K, size_t cols)
{
    if (w->fused) {
        bst_fused_matmul(out, cols, in, lda, wt, ldw, bias, accumulate, (int)rows, (int)K,
                         (int)cols);
        return;
    }
    if (bias)
        for (size_t r = 0; r < rows; r++)
            memcpy(out + r * cols, bias, cols * sizeof(float));
    bst_blas.sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)cols, (int)K, 1.0f,
                   in, (int)lda, wt, (int)ldw, bias || accumulate ? 1.0f : 0.0f, out, (int)cols);
}

/* Candidates [lo, hi) of the batch, every layer on this range alone (the
 * layers' own loops run serially inside a parallel region). */
BST_CLONES static void score_range(BstCandidates *w, const int32_t *cand, size_t lo, size_t hi)
{
    if (hi <= lo)
        return;
    const BstModel *m = w->model;
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const size_t d = (size_t)c->embed_dim, H = (size_t)c->heads, hd = H * d, ld = 3 * hd;
    const size_t hist = (size_t)w->hist, n_pos = hist + 1, ns = 2 * hist * H;
    const int32_t movie_rows = c->n_movies + 1, user_rows = c->n_users + 1;
    const size_t n = hi - lo, rows = n * n_pos;
    const size_t off = lo * n_pos * d;
    int32_t *targets = w->targets, *users = w->users;

    for (size_t b = lo; b < hi; b++) {
        targets[b] = bst_row_or_zero(cand[b - lo], movie_rows);
        users[b] = w->user;
    }
    /* The targets' own share: from the table, or computed here. */
    float *enc = w->tgt_enc;
    if (w->has_table) {
        const float *src = w->tbl_enc ? w->tbl_enc : p->movie_emb;
        for (size_t b = lo; b < hi; b++)
            memcpy(enc + b * d, src + (size_t)targets[b] * d, d * sizeof(float));
    } else {
        project_targets(w, lo, (int)n);
    }
    /* Scores against the history, attention, residual. */
    float *s = w->tgt_scores + lo * ns;
    if (hist > 0)
        product(w, s, enc + lo * d, d, w->score_w, ns, w->score_b, 0, n, d, ns);
    for (size_t b = lo; b < hi; b++) {
        const size_t t = (size_t)targets[b];
        const float *self = w->has_table ? w->tbl_self + t * H : w->tgt_self + b * H;
        const float *wv = w->has_table ? w->tbl_wv + t * hd : w->tgt_proj + b * ld + 2 * hd;
        attend(w, b, s + (b - lo) * ns, self, enc + b * d, wv);
    }

    /* LayerNorm, feed-forward, LayerNorm over the n * n_pos rows. */
    float *a = w->rows_a + off, *res = w->rows_x1 + off, *y = w->rows_b + off;
    layernorm_leaky(res, y, a, p->ffn_b, p->ln1_g, p->ln1_b, rows, d, c->ln_eps,
                    c->leaky_slope, w->tail);
    product(w, res, y, d, w->kernels.ffn_w, w->kernels.ffn_ldw, NULL, 1, rows, d, d);
    layernorm(y, res, p->ln2_g, p->ln2_b, rows, d, c->ln_eps, w->tail);

    /* The MLP: y is [n, n_pos * d], the valid positions of the flattened
     * sequence, against the matching rows of the first kernel; padding
     * contributes nothing and the user's share is in first_bias. */
    float *pred = w->pred + lo;
    const size_t in0 = n_pos * d;
    if (c->n_hidden == 0) {
        rows_dot(pred, y, p->out_w + (size_t)w->first * d, w->first_bias[0], n, in0);
    } else {
        const float *in = y;
        size_t in_dim = in0;
        for (int i = 0; i < c->n_hidden; i++) {
            const size_t u = (size_t)c->hidden[i];
            float *h = w->h[i] + lo * u;
            const size_t ldw = w->kernels.mlp_ldw[i];
            product(w, h, in, in_dim, w->kernels.mlp_w[i] + (i ? 0 : (size_t)w->first * d * ldw),
                    ldw, NULL, 0, n, in_dim, u);
            dense_batchnorm_leaky(h, i ? p->mlp_b[i] : w->first_bias, m->bn.moving_mean[i],
                                  w->bn_k[i], p->bn_b[i], n, u, c->leaky_slope);
            in = h;
            in_dim = u;
        }
        rows_dot(pred, in, p->out_w, p->out_b[0], n, in_dim);
    }
    if (c->use_bias)
        bias_forward(pred, p->global_bias, p->user_bias, p->movie_bias, users + lo, targets + lo,
                     user_rows, movie_rows, (int)n);
    if (c->n_factors > 0)
        factor_forward(pred, p->user_factors, p->movie_factors, users + lo, targets + lo,
                       user_rows, movie_rows, (int)n, c->n_factors);
    if (c->rating_min < c->rating_max)
        for (size_t i = 0; i < n; i++)
            pred[i] = pred[i] < c->rating_min ? c->rating_min
                    : (pred[i] > c->rating_max ? c->rating_max : pred[i]);
}

/* Multiply-adds of one candidate, for the thread split. */
static double candidate_work(const BstCandidates *w)
{
    const BstConfig *c = &w->model->cfg;
    const double d = c->embed_dim, hd = (double)c->heads * d, n_pos = w->hist + 1;
    double work = n_pos * (4 * hd + d * d) + n_pos * d * first_units(c);
    if (!w->has_table)
        work += d * 3 * hd + (c->n_genres ? (d + c->n_genres) * d : 0);
    for (int i = 1; i < c->n_hidden; i++)
        work += (double)c->hidden[i - 1] * c->hidden[i];
    return 2 * work;
}

/* The chunk that starts where `left` candidates are left (see CAND_CHUNK). */
static size_t chunk_length(size_t left, size_t chunk)
{
    const size_t smallest = chunk / 4 > 0 ? chunk / 4 : 1;
    size_t len = left / 8;
    len = len < smallest ? smallest : (len > chunk ? chunk : len);
    return len < left ? len : left;
}

/* A share of a call: chunks of the n candidates, taken until none is left
 * (*next: where the next one starts), each computed in the buffer rows of
 * slot `slot`. */
static void score_chunks(BstCandidates *w, const int32_t *cand, int32_t n, float *out,
                         atomic_size_t *next, size_t slot)
{
    const size_t base = slot * (size_t)w->chunk;
    size_t lo = atomic_load_explicit(next, memory_order_relaxed), len;
    for (;;) {
        do {
            if (lo >= (size_t)n)
                return;
            len = chunk_length((size_t)n - lo, (size_t)w->chunk);
        } while (!atomic_compare_exchange_weak_explicit(next, &lo, lo + len,
                                                        memory_order_relaxed,
                                                        memory_order_relaxed));
        score_range(w, cand + lo, base, base + len);
        memcpy(out + lo, w->pred + base, len * sizeof(float));
        lo = atomic_load_explicit(next, memory_order_relaxed);
    }
}

int bst_candidates_score(BstCandidates *w, const int32_t *candidates, int32_t n, float *out)
{
    if (!w->ready)
        return -1;
    if (n <= 0)
        return 0;
    const int32_t chunks = (n - 1) / w->chunk + 1, slots = w->max_batch / w->chunk;
    atomic_size_t next = 0;
    /* One share per thread, at most one per slot and per chunk: share lo
     * works in slot lo. */
    PARALLEL_FOR((size_t)(chunks < slots ? chunks : slots), 1, candidate_work(w) * n, lo, hi,
                 ((void)hi, score_chunks(w, candidates, n, out, &next, lo)));
    return 0;
}

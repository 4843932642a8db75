/*
 * The FLOP counter (src/core/flops.h): against counts made by hand for two
 * small configs, against the model's parameter tensors (each dense layer's
 * in x out is its kernel), and against the sgemm calls bst_forward and
 * bst_backward actually make (bst_blas.sgemm replaced by a counting
 * wrapper), on 1 and 2 threads.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "flops.h"
#include "model.h"
#include "parallel.h"
#include "test_util.h"

#define CHECK_EQ(what, got, want) \
    CHECK((got) == (want), "%s: %.0f, expected %.0f", (what), (double)(got), (double)(want))

/* ------------------------------------------------------------ hand counts */

/* 9 movies (d = 3), windows of 3, 2 heads, hidden {4}; no other input. */
static void config_small(BstConfig *c)
{
    bst_config_default(c, 9, 3);
    c->heads = 2;
    c->n_hidden = 1;
    c->hidden[0] = 4;
}

/* 16 movies (d = 4), windows of 2, 1 head, hidden {5, 3}, 9 users of width
 * 3, the three user features of widths 1, 2 and 4, 3 genres, bias terms and
 * 4 factors. */
static void config_full(BstConfig *c)
{
    bst_config_default(c, 16, 2);
    c->heads = 1;
    c->n_hidden = 2;
    c->hidden[0] = 5;
    c->hidden[1] = 3;
    c->n_users = 9;
    c->user_dim = 3;
    const int32_t values[BST_N_USER_FEATS] = {2, 7, 21}, dims[BST_N_USER_FEATS] = {1, 2, 4};
    for (int k = 0; k < BST_N_USER_FEATS; k++) {
        c->n_feat_values[k] = values[k];
        c->feat_dim[k] = dims[k];
    }
    c->n_genres = 3;
    c->use_bias = 1;
    c->n_factors = 4;
}

static void test_hand_counts(void)
{
    BstConfig c;
    BstFlops f;

    config_small(&c);
    CHECK(c.embed_dim == 3 && !bst_config_check(&c), "small config");
    bst_model_flops(&c, &f);
    /* Per window, forward (2·rows·in·out per dense layer):
     *   wqkv   3 rows, 3 -> 3·2·3 = 18:  2·3·3·18 = 324 (history rows: 2·2·3·18 = 216)
     *   wo     3 rows, 6 -> 3:           2·3·6·3  = 108
     *   ffn    3 rows, 3 -> 3:           2·3·3·3  =  54
     *   mlp0   1 row,  9 -> 4:           2·9·4    =  72
     *   out    1 row,  4 -> 1:           2·4      =   8   dense 566
     *   attention, 2 heads x (Q·Kᵀ + P·V), each 2·3·3·3 = 54:  216
     * forward 782, backward 1564, training 2346. */
    CHECK_EQ("small: dense forward", f.dense_forward, 566);
    CHECK_EQ("small: attention forward", f.attention_forward, 216);
    CHECK_EQ("small: factor forward", f.factor_forward, 0);
    CHECK_EQ("small: forward", f.forward, 782);
    CHECK_EQ("small: backward", f.backward, 1564);
    CHECK_EQ("small: train", f.train, 2346);
    CHECK_EQ("small: target-independent", f.target_independent, 216);
    /* 10 candidates: 216 + 10 · (782 - 216). */
    CHECK_EQ("small: recommend 10", bst_recommend_flops(&c, 10), 5876);
    CHECK_EQ("small: recommend 1 = forward", bst_recommend_flops(&c, 1), 782);
    CHECK_EQ("small: recommend 0", bst_recommend_flops(&c, 0), 0);

    config_full(&c);
    CHECK(c.embed_dim == 4 && !bst_config_check(&c), "full config");
    CHECK(bst_config_mlp_input(&c) == 18, "full: MLP input 2·4 + 3 + 1 + 2 + 4");
    bst_model_flops(&c, &f);
    /*   genre  2 rows, 4 + 3 = 7 -> 4:   2·2·7·4  = 112 (history row: 56)
     *   wqkv   2 rows, 4 -> 12:          2·2·4·12 = 192 (history row: 96)
     *   wo     2 rows, 4 -> 4:           2·2·4·4  =  64
     *   ffn    2 rows, 4 -> 4:                       64
     *   mlp0   18 -> 5:                  2·18·5   = 180
     *   mlp1   5 -> 3:                   2·5·3    =  30
     *   out    3 -> 1:                   2·3      =   6   dense 648
     *   attention, 1 head x 2 products of 2·2·2·4 = 32:     64
     *   factor term, 2·4:                                    8
     * forward 720, backward 1440, training 2160; target-independent 152. */
    CHECK_EQ("full: dense forward", f.dense_forward, 648);
    CHECK_EQ("full: attention forward", f.attention_forward, 64);
    CHECK_EQ("full: factor forward", f.factor_forward, 8);
    CHECK_EQ("full: forward", f.forward, 720);
    CHECK_EQ("full: backward", f.backward, 1440);
    CHECK_EQ("full: train", f.train, 2160);
    CHECK_EQ("full: target-independent", f.target_independent, 152);
    /* 3 candidates: 152 + 3 · (720 - 152). */
    CHECK_EQ("full: recommend 3", bst_recommend_flops(&c, 3), 1856);

    /* The Keras example on ML-1M: 3883 movies (d = 62), windows of 4, 3
     * heads, MLP {256, 128}: "about 1.8 MFLOP per window".
     *   wqkv 2·4·62·558 = 276768, wo 2·4·186·62 = 92256, ffn 2·4·62·62 = 30752,
     *   mlp0 2·248·256 = 126976, mlp1 2·256·128 = 65536, out 256: 592544;
     *   attention 3·2·(2·4·4·62) = 11904; forward 604448, training 1813344. */
    bst_config_default(&c, 3883, 4);
    bst_model_flops(&c, &f);
    CHECK_EQ("keras: dense forward", f.dense_forward, 592544);
    CHECK_EQ("keras: attention forward", f.attention_forward, 11904);
    CHECK_EQ("keras: train", f.train, 1813344);
}

/* ----------------------------------------------- the parameter tensors */

/* Each dense layer's in x out is the size of the kernel it names, and every
 * kernel of the model is one of the layers. */
static void check_kernels(const char *what, const BstConfig *c)
{
    BstModel *m = bst_model_alloc(c);
    CHECK(m != NULL, "%s: model", what);
    if (!m)
        return;
    BstTensor t[BST_MAX_TENSORS];
    const int nt = bst_param_tensors(c, &m->params, t);
    BstDense layers[BST_MAX_DENSE];
    const int nl = bst_dense_layers(c, layers);
    for (int i = 0; i < nl; i++) {
        int found = 0;
        for (int j = 0; j < nt; j++)
            if (strcmp(t[j].name, layers[i].name) == 0) {
                found = 1;
                CHECK(t[j].size == (size_t)layers[i].in_dim * layers[i].out_dim,
                      "%s: %s is %zu floats, the layer %d x %d", what, layers[i].name, t[j].size,
                      layers[i].in_dim, layers[i].out_dim);
            }
        CHECK(found, "%s: no tensor %s", what, layers[i].name);
    }
    int kernels = 0;
    for (int j = 0; j < nt; j++) {
        const size_t len = strlen(t[j].name);
        kernels += strcmp(t[j].name, "wqkv") == 0 || strcmp(t[j].name, "wo") == 0 ||
                   (len > 2 && strcmp(t[j].name + len - 2, "_w") == 0 &&
                    strcmp(t[j].name, "rating_w") != 0);
    }
    CHECK(kernels == nl, "%s: %d kernels, %d dense layers", what, kernels, nl);
    bst_model_free(m);
}

/* The default configuration on ML-1M: every input (user id of width 77,
 * sex, age group and occupation, 18 genres), bias terms, 62 factors. */
static void config_ml1m_default(BstConfig *c)
{
    bst_config_default(c, 3883, 4);
    c->n_users = 6040;
    c->user_dim = bst_default_dim(6040);
    const int32_t values[BST_N_USER_FEATS] = {2, 7, 21};
    for (int k = 0; k < BST_N_USER_FEATS; k++) {
        c->n_feat_values[k] = values[k];
        c->feat_dim[k] = bst_default_dim(values[k]);
    }
    c->n_genres = 18;
    c->use_bias = 1;
    c->n_factors = c->embed_dim;
}

/* ------------------------------------------------ the sgemm calls made */

static uint64_t g_sgemm_mnk;  /* sum of m·n·k over the calls, atomically */

static void counting_sgemm(const enum CBLAS_ORDER order, const enum CBLAS_TRANSPOSE ta,
                           const enum CBLAS_TRANSPOSE tb, const blasint m, const blasint n,
                           const blasint k, const float alpha, const float *a, const blasint lda,
                           const float *b, const blasint ldb, const float beta, float *c,
                           const blasint ldc)
{
    __atomic_fetch_add(&g_sgemm_mnk, (uint64_t)m * n * k, __ATOMIC_RELAXED);
    cblas_sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* 2 · (sum of m·n·k) of the sgemm calls that `call` makes. */
#define SGEMM_FLOPS(call) (g_sgemm_mnk = 0, (call), 2.0 * (double)g_sgemm_mnk)

static void check_sgemm_calls(const char *what, const BstConfig *c, int32_t B, int threads)
{
    const int32_t L = c->seq_len;
    int32_t *movie_ids = malloc(sizeof(int32_t) * c->n_movies);
    int32_t *user_ids = malloc(sizeof(int32_t) * (c->n_users ? c->n_users : 1));
    for (int32_t i = 0; i < c->n_movies; i++)
        movie_ids[i] = i + 1;
    for (int32_t i = 0; i < c->n_users; i++)
        user_ids[i] = i + 1;
    BstVocab vocab = {.movie_ids = movie_ids, .user_ids = c->n_users ? user_ids : NULL};
    BstModel *m = bst_model_create_vocab(c, &vocab, 7);
    BstActs a, da, inf;
    BstParams g;
    const int ok = m && bst_acts_alloc(&a, c, B, BST_ACTS_TRAINING) == 0 &&
                   bst_acts_alloc(&da, c, B, BST_ACTS_GRADIENTS) == 0 &&
                   bst_acts_alloc(&inf, c, B, BST_ACTS_INFERENCE) == 0 &&
                   bst_params_alloc(&g, c) == 0;
    CHECK(ok, "%s: allocation", what);
    if (!ok)
        exit(test_summary("test_flops"));

    BstRng rng;
    bst_rng_seed(&rng, 3);
    int32_t *movies = malloc(sizeof(int32_t) * B * L), *users = malloc(sizeof(int32_t) * B),
            *hist = malloc(sizeof(int32_t) * B);
    float *ratings = new_floats((size_t)B * (L - 1)), *targets = new_floats(B);
    for (int32_t i = 0; i < B * L; i++)
        movies[i] = 1 + (int32_t)(bst_rng_next(&rng) % c->n_movies);
    fill_uniform(ratings, (size_t)B * (L - 1), 1.0f, 5.0f, &rng);
    fill_uniform(targets, B, 1.0f, 5.0f, &rng);
    for (int32_t i = 0; i < B; i++) {
        users[i] = c->n_users ? 1 + (int32_t)(bst_rng_next(&rng) % c->n_users) : 0;
        hist[i] = 1 + i % (L - 1);  /* padded windows cost the same */
    }
    BstBatch b = {B, movies, ratings, targets, hist, users};

    BstFlops f;
    bst_model_flops(c, &f);
    bst_set_num_threads(threads);
    bst_set_parallel_min_work(threads > 1 ? 0.0 : BST_PAR_MIN_WORK_DEFAULT);
    const double fwd = SGEMM_FLOPS(bst_forward(m, &a, &b, 1, &rng));
    const double bwd = SGEMM_FLOPS(bst_backward(m, &a, &da, &g, &b));
    const double inf_fwd = SGEMM_FLOPS(bst_forward(m, &inf, &b, 0, NULL));
    bst_set_parallel_min_work(BST_PAR_MIN_WORK_DEFAULT);
    /* Training projects the batch's distinct movies (fewer than its
     * positions here: 1..n_movies drawn B L times), and the positions. */
    const double train_fwd = bst_training_dense_flops(c, B, a.n_distinct);
    CHECK(a.n_distinct >= 1 && a.n_distinct <= B * L && train_fwd < B * f.dense_forward &&
              fwd == train_fwd,
          "%s, %d threads: training forward's sgemm %.0f FLOPs, counted %.0f for %d distinct "
          "movies (%.0f for every position)",
          what, threads, fwd, train_fwd, a.n_distinct, B * f.dense_forward);
    CHECK(bwd == 2.0 * train_fwd, "%s, %d threads: backward's sgemm %.0f FLOPs, counted %.0f",
          what, threads, bwd, 2.0 * train_fwd);
    CHECK(inf_fwd == B * f.dense_forward, "%s, %d threads: inference's sgemm %.0f FLOPs, counted %.0f",
          what, threads, inf_fwd, B * f.dense_forward);

    bst_params_free(&g);
    bst_acts_free(&a);
    bst_acts_free(&da);
    bst_acts_free(&inf);
    bst_model_free(m);
    free(movie_ids);
    free(user_ids);
    free(movies);
    free(users);
    free(hist);
    free(ratings);
    free(targets);
}

int main(void)
{
    test_hand_counts();

    BstConfig c;
    config_small(&c);
    check_kernels("small", &c);
    config_full(&c);
    check_kernels("full", &c);
    config_ml1m_default(&c);
    check_kernels("ML-1M default", &c);
    bst_config_default(&c, 3883, 4);
    check_kernels("ML-1M Keras", &c);

    bst_blas.sgemm = counting_sgemm;
    for (int threads = 1; threads <= 2; threads++) {
        config_small(&c);
        check_sgemm_calls("small", &c, 5, threads);
        config_full(&c);
        check_sgemm_calls("full", &c, 7, threads);
        config_ml1m_default(&c);
        check_sgemm_calls("ML-1M default", &c, 64, threads);
    }
    bst_blas.sgemm = cblas_sgemm;
    return test_summary("test_flops");
}

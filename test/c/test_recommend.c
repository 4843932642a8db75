/*
 * Candidate scoring (candidates.h): every candidate's score against the
 * plain predictor's (bst_predict of the window "history + candidate"), for
 * random small models in every mode, every history length (padding holding
 * garbage), known, unknown and out-of-range users and movies.
 *
 * Tolerance.  The workspace computes the same function in another order: the
 * attention context is formed after the output projection (A Wo_h and v_T
 * Wo_h, with Wv_h Wo_h folded), the scores between the target and the
 * history as linear functions of the target's row, softmax sums normalised
 * at the end, the user's share of the first dense layer summed apart,
 * padding positions left out of the MLP's sum instead of adding zeros, other
 * products (fused kernels summing each element in order, or sgemm blocks)
 * and sixteen-lane sums.  Each is a float32 reassociation: a relative error
 * of a few units of 2^-24 per sum, carried through two LayerNorms and the
 * MLP.  So a score must agree with the predictor's within
 *     REL_TOL * max(1, largest |score| of the history's candidates),
 * 1e-5, some 170 units in the last place of a float near 1.  The worst seen:
 * 2.6e-6 to 3.5e-6 with this seed whichever OpenBLAS kernels the predictor
 * runs on (printed), 6.0e-6 over 60 seeds (L = 10, d = 37, 4 heads, where
 * moving every weight by one unit in the last place moves the predictor's
 * own scores by up to 3.1e-6 of the scale); it grows with the model.  A
 * wrong term changes far more: a score moves by 1e-2 and more with one
 * history item, and each deliberate error tried in candidates.c failed
 * thousands of checks (leaving out the rescaling, those of the loud
 * candidate below).  Models have d >= 5: at d = 3 a LayerNorm over three
 * features can divide by a standard deviation near sqrt(eps), and there
 * perturbing every weight by one unit in the last place moves the
 * predictor's own scores by up to 6e-5 of the scale (measured), so no
 * reassociation can be held to 1e-5 (the workspace's worst there: 2e-5).
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bst_alloc.h"
#include "candidates.h"
#include "infer.h"
#include "model.h"
#include "parallel.h"
#include "test_util.h"

#define REL_TOL 1e-5
/* The loud candidate's scores (test_edges) reach some 300-600: a logit
 * rounds to 2^-24 of that, 2e-5 and more, and the attention weights move by
 * that much relative to themselves, so their comparison allows ten times
 * REL_TOL (the worst seen over 60 seeds: 8.3e-6). */
#define LOUD_TOL 1e-4

enum { N_MOVIES = 23, N_USERS = 6, N_GENRES = 4 };
static const int32_t feat_values[BST_N_USER_FEATS] = {2, 3, 4};
static const int32_t feat_dims[BST_N_USER_FEATS] = {2, 1, 2};

/* Worst error seen, relative to the scale above. */
static double g_worst;

typedef struct Mode {
    int L, d, heads, n_hidden;
    int rating_add, genres, features, bias, factors, clip;
} Mode;

static void mode_name(const Mode *o, char *buf, size_t n)
{
    snprintf(buf, n, "L=%d d=%d H=%d hidden=%d %s%s%s%s%s%s", o->L, o->d, o->heads, o->n_hidden,
             o->rating_add ? "add" : "multiply", o->genres ? " genres" : "",
             o->features ? " features" : "", o->bias ? " bias" : "", o->factors ? " factors" : "",
             o->clip ? " clip" : "");
}

/* A model of mode o with every parameter drawn away from its initial value
 * (biases, norm scales and shifts, moving statistics included). */
static BstModel *make_model(const Mode *o, BstRng *rng)
{
    BstConfig cfg;
    bst_config_default(&cfg, N_MOVIES, o->L);
    cfg.embed_dim = o->d;
    cfg.heads = o->heads;
    cfg.n_hidden = o->n_hidden;
    cfg.hidden[0] = 12;
    cfg.hidden[1] = 7;
    if (o->features) {
        cfg.n_users = N_USERS;
        cfg.user_dim = 3;
        for (int k = 0; k < BST_N_USER_FEATS; k++) {
            cfg.n_feat_values[k] = feat_values[k];
            cfg.feat_dim[k] = feat_dims[k];
        }
    }
    cfg.n_genres = o->genres ? N_GENRES : 0;
    cfg.use_bias = o->bias;
    if (o->bias && !o->features)
        cfg.n_users = N_USERS;
    cfg.n_factors = o->factors ? 3 : 0;
    if (o->factors && !cfg.n_users)
        cfg.n_users = N_USERS;
    cfg.rating_add = o->rating_add;
    int32_t movie_ids[N_MOVIES], user_ids[N_USERS], feats[N_USERS * BST_N_USER_FEATS];
    float genres[N_MOVIES * N_GENRES];
    for (int i = 0; i < N_MOVIES; i++)
        movie_ids[i] = 3 * i + 1;
    for (int i = 0; i < N_USERS; i++) {
        user_ids[i] = 10 * (i + 1);
        for (int k = 0; k < BST_N_USER_FEATS; k++)
            feats[i * BST_N_USER_FEATS + k] = (int32_t)(bst_rng_next(rng) % (feat_values[k] + 1));
    }
    for (int i = 0; i < N_MOVIES * N_GENRES; i++)
        genres[i] = (float)(bst_rng_next(rng) % 2);
    BstVocab v = {movie_ids, cfg.n_users ? user_ids : NULL, o->features ? feats : NULL, genres};
    BstModel *m = bst_model_create_vocab(&cfg, &v, bst_rng_next(rng));
    if (!m)
        return NULL;
    BstTensor t[BST_MAX_TENSORS];
    const int nt = bst_param_tensors(&m->cfg, &m->params, t);
    for (int i = 0; i < nt; i++) {
        const char *name = t[i].name;
        const size_t len = strlen(name);
        if (strstr(name, "_emb") || strstr(name, "bias") || strstr(name, "factors") ||
            strcmp(name, "rating_w") == 0)
            fill_uniform(t[i].data, t[i].size, -1.0f, 1.0f, rng);
        else if (len > 2 && strcmp(name + len - 2, "_g") == 0)
            fill_uniform(t[i].data, t[i].size, 0.5f, 1.5f, rng);
        else if (len > 2 && strcmp(name + len - 2, "_b") == 0)
            fill_uniform(t[i].data, t[i].size, -0.3f, 0.3f, rng);
        else  /* kernels: Glorot-sized, perturbed */
            for (size_t j = 0; j < t[i].size; j++)
                t[i].data[j] += 0.1f * (2.0f * bst_rng_uniform(rng) - 1.0f);
    }
    for (int i = 0; i < m->cfg.n_hidden; i++) {
        fill_uniform(m->bn.moving_mean[i], (size_t)m->cfg.hidden[i], -0.5f, 0.5f, rng);
        fill_uniform(m->bn.moving_var[i], (size_t)m->cfg.hidden[i], 0.3f, 2.0f, rng);
    }
    return m;
}

/* A window of the model's length: hist_len history items right-aligned,
 * the padding before them holding garbage (never read). */
typedef struct Window {
    int32_t movies[16];
    float ratings[16];
    int32_t hist_len, user;
} Window;

static void random_window(Window *w, int L, int32_t hist_len, int32_t user, BstRng *rng)
{
    for (int i = 0; i < L; i++)
        /* Indices of the vocabulary, with 0 (out of vocabulary) and out of
         * range ones now and then. */
        w->movies[i] = (int32_t)(bst_rng_next(rng) % (N_MOVIES + 3)) - 1;
    for (int i = 0; i < L - 1; i++)
        w->ratings[i] = 0.5f + 4.5f * bst_rng_uniform(rng);
    for (int i = 0; i < L - 1 - hist_len; i++) {
        w->movies[i] = 1000 + i;  /* padding: garbage */
        w->ratings[i] = 1e30f;
    }
    w->hist_len = hist_len;
    w->user = user;
}

/* The plain predictor's scores of every candidate after window w. */
static void reference(BstPredictor *p, int L, const Window *w, const int32_t *cand, int n,
                      float *ref)
{
    int32_t *movies = malloc(sizeof(int32_t) * (size_t)n * L);
    float *ratings = malloc(sizeof(float) * (size_t)n * (L - 1));
    int32_t *hist = malloc(sizeof(int32_t) * (size_t)n), *users = malloc(sizeof(int32_t) * (size_t)n);
    for (int c = 0; c < n; c++) {
        memcpy(movies + (size_t)c * L, w->movies, sizeof(int32_t) * L);
        movies[(size_t)c * L + L - 1] = cand[c];
        memcpy(ratings + (size_t)c * (L - 1), w->ratings, sizeof(float) * (L - 1));
        hist[c] = w->hist_len;
        users[c] = w->user;
    }
    BstBatch b = {.n = n, .movies = movies, .ratings = ratings, .hist_len = hist, .users = users};
    bst_predict(p, &b, ref);
    free(movies);
    free(ratings);
    free(hist);
    free(users);
}

/* Scores every candidate after w both ways; returns the largest error
 * relative to the scale (REL_TOL passes). */
static double compare_within(BstCandidates *cw, BstPredictor *p, int L, const Window *w,
                             const int32_t *cand, int n, float *got, const char *what,
                             double tol)
{
    float *ref = malloc(sizeof(float) * (size_t)n);
    bst_candidates_set_history(cw, w->movies, w->ratings, w->hist_len, w->user);
    const int rc = bst_candidates_score(cw, cand, n, got);
    CHECK(rc == 0, "%s: bst_candidates_score returned %d", what, rc);
    reference(p, L, w, cand, n, ref);
    double scale = 1.0, worst = 0.0;
    for (int c = 0; c < n; c++)
        if (fabs(ref[c]) > scale)
            scale = fabs(ref[c]);
    int bad = 0;
    for (int c = 0; c < n; c++) {
        const double err = fabs((double)got[c] - (double)ref[c]) / scale;
        if (!(err <= tol) && bad++ < 3)
            CHECK(0, "%s, history %d, user %d, candidate %d: %.9g, the predictor %.9g", what,
                  w->hist_len, w->user, cand[c], got[c], ref[c]);
        if (!(err <= worst))
            worst = err;
    }
    CHECK(bad == 0, "%s, history %d: %d of %d candidates off (worst %.3g of the scale)", what,
          w->hist_len, bad, n, worst);
    if (tol == REL_TOL && worst > g_worst)
        g_worst = worst;
    free(ref);
    return worst;
}

static double compare(BstCandidates *cw, BstPredictor *p, int L, const Window *w,
                      const int32_t *cand, int n, float *got, const char *what)
{
    return compare_within(cw, p, L, w, cand, n, got, what, REL_TOL);
}

/* Every candidate index from -2 to n_movies + 2: out of range, out of
 * vocabulary, and every movie, those of the history included. */
static int all_candidates(int32_t *cand)
{
    int n = 0;
    for (int32_t i = -2; i <= N_MOVIES + 2; i++)
        cand[n++] = i;
    return n;
}

/* Every mode of the model, every history length, several users. */
static void test_modes(BstRng *rng)
{
    const BstInferIsa default_isa = bst_infer_isa();
    int isas_used[4] = {0};
    /* Below 16 the workspace's passes run scalar; from 16 on in sixteen
     * lanes, the last sixteen overlapping (22, 37) or not (32). */
    static const int dims[] = {5, 13, 22, 32, 37};
    int32_t cand[N_MOVIES + 5];
    float got[N_MOVIES + 5];
    const int n = all_candidates(cand);
    int models = 0, histories = 0;
    for (int mask = 0; mask < 64; mask++) {
        for (int L = 2; L <= 10; L++) {
            /* Each mode at several lengths; every length with every mode
             * across the masks. */
            if ((mask + L) % 3 != 0 && L != 2 && L != 4 && L != 10)
                continue;
            Mode o = {L, dims[(mask + L) % 5], 1 + (mask + 2 * L) % 4, (mask / 2 + L) % 3,
                      mask & 1, (mask >> 1) & 1, (mask >> 2) & 1, (mask >> 3) & 1,
                      (mask >> 4) & 1, (mask >> 5) & 1};
            char name[128];
            mode_name(&o, name, sizeof(name));
            BstModel *m = make_model(&o, rng);
            CHECK(m != NULL, "%s: model", name);
            if (!m)
                continue;
            /* The products on each of the fused kernels the CPU has, and on
             * sgemm (BST_ISA_NONE). */
            static const BstInferIsa isas[] = {BST_ISA_NONE, BST_ISA_AVX2, BST_ISA_AVX512};
            const BstInferIsa isa = isas[(mask + 2 * L) % 3];
            const int forced = bst_infer_force_isa(isa);
            /* Small workspaces take the candidates in several chunks; every
             * other model has no per-movie table. */
            BstCandidates *cw = bst_candidates_create(m, (mask + L) % 2 ? 7 : 64,
                                                      (mask / 2 + L) % 2 ? 0 : BST_CANDIDATES_TABLE_BUDGET);
            bst_infer_force_isa(default_isa);
            if (forced)
                isas_used[isa]++;
            BstPredictor *p = bst_predictor_create(m, 64);
            CHECK(cw && p, "%s: workspace and predictor", name);
            if (!cw || !p)
                continue;
            /* Clip to the middle of the scores, so that some are clipped
             * and some not. */
            if (o.clip) {
                Window w;
                float ref[N_MOVIES + 5];
                random_window(&w, L, L - 1, 1, rng);
                reference(p, L, &w, cand, n, ref);
                float lo = ref[0], hi = ref[0];
                for (int c = 1; c < n; c++) {
                    lo = ref[c] < lo ? ref[c] : lo;
                    hi = ref[c] > hi ? ref[c] : hi;
                }
                m->cfg.rating_min = lo + 0.25f * (hi - lo);
                m->cfg.rating_max = hi - 0.25f * (hi - lo);
            }
            models++;
            for (int32_t h = L - 1; h >= 0; h--) {
                /* Known, unknown (0) and out-of-range users. */
                const int32_t user = (int32_t)((h + mask) % (N_USERS + 3)) - 1;
                Window w;
                random_window(&w, L, h, user, rng);
                compare(cw, p, L, &w, cand, n, got, name);
                histories++;
            }
            bst_predictor_free(p);
            bst_candidates_free(cw);
            bst_model_free(m);
        }
    }
    printf("  %d models, %d histories, %d candidates each: worst error %.3g of the scale; "
           "products on sgemm %d times, AVX2 %d, AVX-512 %d (the rest: %s)\n",
           models, histories, n, g_worst, isas_used[BST_ISA_NONE], isas_used[BST_ISA_AVX2],
           isas_used[BST_ISA_AVX512], bst_infer_isa_name(default_isa));
    CHECK(isas_used[BST_ISA_NONE] > 0, "the sgemm path was not tested");
}

/* How far a candidate's key score goes past a history query's largest
 * history score (over candidates, history positions and heads), from a
 * forward pass's own query and key rows. */
static float target_excess(const BstModel *m, const Window *w, const int32_t *cand, int n)
{
    const int L = m->cfg.seq_len, d = m->cfg.embed_dim, H = m->cfg.heads, hd = H * d;
    BstActs a;
    if (bst_acts_alloc(&a, &m->cfg, n, BST_ACTS_INFERENCE) != 0)
        return NAN;
    int32_t *movies = malloc(sizeof(int32_t) * (size_t)n * L);
    float *ratings = malloc(sizeof(float) * (size_t)n * (L - 1));
    int32_t *hist = malloc(sizeof(int32_t) * (size_t)n), *users = malloc(sizeof(int32_t) * (size_t)n);
    for (int c = 0; c < n; c++) {
        memcpy(movies + (size_t)c * L, w->movies, sizeof(int32_t) * L);
        movies[(size_t)c * L + L - 1] = cand[c];
        memcpy(ratings + (size_t)c * (L - 1), w->ratings, sizeof(float) * (L - 1));
        hist[c] = w->hist_len;
        users[c] = w->user;
    }
    BstBatch b = {.n = n, .movies = movies, .ratings = ratings, .hist_len = hist, .users = users};
    bst_forward(m, &a, &b, 0, NULL);
    const int first = L - 1 - w->hist_len;
    const float scale = 1.0f / sqrtf((float)d);
    float excess = -INFINITY;
    for (int c = 0; c < n; c++)
        for (int i = first; i < L - 1; i++)
            for (int h = 0; h < H; h++) {
                const float *qi = a.qkv + ((size_t)c * L + i) * 3 * hd + (size_t)h * d;
                float mx = -INFINITY, st = 0.0f;
                for (int j = first; j < L; j++) {
                    const float *kj = a.qkv + ((size_t)c * L + j) * 3 * hd + hd + (size_t)h * d;
                    float s = 0.0f;
                    for (int k = 0; k < d; k++)
                        s += qi[k] * kj[k];
                    s *= scale;
                    if (j < L - 1)
                        mx = s > mx ? s : mx;
                    else
                        st = s;
                }
                excess = st - mx > excess ? st - mx : excess;
            }
    bst_acts_free(&a);
    free(movies);
    free(ratings);
    free(hist);
    free(users);
    return excess;
}

/* The query row of history position i, head 0, in window w (as bst_forward
 * computes it; q [d]). */
static void history_query(const BstModel *m, const Window *w, int i, float *q)
{
    const int L = m->cfg.seq_len, d = m->cfg.embed_dim, hd = m->cfg.heads * d;
    BstActs a;
    if (bst_acts_alloc(&a, &m->cfg, 1, BST_ACTS_INFERENCE) != 0)
        return;
    int32_t movies[16], hist = w->hist_len, user = w->user;
    memcpy(movies, w->movies, sizeof(int32_t) * L);
    movies[L - 1] = 1;
    BstBatch b = {.n = 1, .movies = movies, .ratings = w->ratings, .hist_len = &hist,
                  .users = &user};
    bst_forward(m, &a, &b, 0, NULL);
    memcpy(q, a.qkv + (size_t)i * 3 * hd, sizeof(float) * d);
    bst_acts_free(&a);
}

/*
 * Where the shared-history form is easiest to get wrong:
 *   - a history of one item, and a candidate equal to it with that item's
 *     position embedding zeroed and a rating of 1: the target's key is the
 *     history's, so the target ties the history's largest score;
 *   - a candidate whose key a history query scores more than 88.7 (what
 *     expf takes) above its largest history score: a form without the
 *     rescaling gets inf or NaN there;
 *   - histories that differ in one item give other scores (the history is
 *     read), and setting a history again gives back its scores bit for bit
 *     (nothing of the previous one is left).
 */
static void test_edges(BstRng *rng)
{
    int32_t cand[N_MOVIES + 5];
    float got[N_MOVIES + 5], again[N_MOVIES + 5], other[N_MOVIES + 5];
    const int n = all_candidates(cand);
    for (int k = 0; k < 4; k++) {
        const int add = k & 1;
        const size_t table = k & 2 ? 0 : BST_CANDIDATES_TABLE_BUDGET;
        /* No genres: the target's row is its embedding, which the overflow
         * case below sets. */
        Mode o = {4, 19, 2, 2, add, 0, 1, 1, 1, 0};
        BstModel *m = make_model(&o, rng);
        BstCandidates *cw = m ? bst_candidates_create(m, 64, table) : NULL;
        BstPredictor *p = m ? bst_predictor_create(m, 64) : NULL;
        CHECK(m && cw && p, "edges: model, workspace and predictor");
        if (!m || !cw || !p)
            return;
        const int L = o.L, d = o.d;

        /* The tie: one history item, the candidate that same movie. */
        memset(m->params.pos_emb + (size_t)(L - 2) * d, 0, sizeof(float) * d);
        if (add)
            memset(m->params.rating_w, 0, sizeof(float) * d);
        bst_candidates_free(cw);
        cw = bst_candidates_create(m, 64, table);
        Window w;
        random_window(&w, L, 1, 2, rng);
        w.movies[L - 2] = 5;
        w.ratings[L - 2] = add ? 0.0f : 1.0f;
        compare(cw, p, L, &w, cand, n, got, add ? "tie (add)" : "tie (multiply)");

        /* The overflow: movie 9's embedding along the direction in which
         * the last history query's score (head 0) of the target's key
         * grows, long enough for that score to pass the query's largest
         * history score by some 300, and movie 10's the opposite way (its
         * exponentials underflow to 0). */
        const int hd = o.heads * d;
        random_window(&w, L, L - 1, 3, rng);
        for (int i = 0; i < L - 1; i++)
            if (w.movies[i] == 9 || w.movies[i] == 10)
                w.movies[i] = 8;
        float q[64], u[64], saved[2 * 64];
        memcpy(saved, m->params.movie_emb + (size_t)9 * d, sizeof(float) * 2 * d);
        history_query(m, &w, L - 2, q);
        float norm = 0.0f, qb = 0.0f;
        for (int r = 0; r < d; r++) {
            u[r] = 0.0f;
            for (int k = 0; k < d; k++)
                u[r] += m->params.wqkv[(size_t)r * 3 * hd + hd + k] * q[k];
            norm += u[r] * u[r];
        }
        for (int k = 0; k < d; k++)
            qb += m->params.bqkv[hd + k] * q[k];
        norm = sqrtf(norm);
        const float scale = 1.0f / sqrtf((float)d);
        const float lambda = (300.0f + fabsf(qb) * scale + 10.0f) / (scale * norm);
        for (int k = 0; k < d; k++) {
            m->params.movie_emb[(size_t)9 * d + k] = lambda * u[k] / norm;
            m->params.movie_emb[(size_t)10 * d + k] = -lambda * u[k] / norm;
        }
        const float excess = target_excess(m, &w, cand, n);
        printf("  a loud candidate: its key's score exceeds a history query's largest by %.0f\n",
               excess);
        CHECK(excess > 88.8f, "the overflow case is not reached (excess %g)", excess);
        bst_candidates_free(cw);
        cw = bst_candidates_create(m, 64, table);
        compare_within(cw, p, L, &w, cand, n, got, add ? "overflow (add)" : "overflow (multiply)",
                       LOUD_TOL);
        int finite = 1;
        for (int c = 0; c < n; c++)
            finite &= isfinite(got[c]) != 0;
        CHECK(finite, "overflow: a score is not finite");
        memcpy(m->params.movie_emb + (size_t)9 * d, saved, sizeof(float) * 2 * d);
        bst_candidates_free(cw);
        cw = bst_candidates_create(m, 64, table);

        /* Histories are read, and nothing of one is left for the next. */
        random_window(&w, L, L - 1, 4, rng);
        compare(cw, p, L, &w, cand, n, got, "history A");
        Window w2 = w;
        w2.movies[L - 2] = w.movies[L - 2] == 7 ? 8 : 7;
        w2.user = 1;
        compare(cw, p, L, &w2, cand, n, other, "history A with its last item changed");
        float moved = 0.0f;
        for (int c = 0; c < n; c++)
            moved = fabsf(other[c] - got[c]) > moved ? fabsf(other[c] - got[c]) : moved;
        CHECK(moved > 1e-2f, "changing a history item moves no score (%g)", moved);
        bst_candidates_set_history(cw, w.movies, w.ratings, w.hist_len, w.user);
        bst_candidates_score(cw, cand, n, again);
        CHECK(memcmp(got, again, sizeof(float) * n) == 0,
              "history A set again does not give its scores back bit for bit");

        /* The same bits on one thread and on two (with no minimum work, so
         * that even a few candidates are split), and as many candidates as
         * the workspace has rows several times over. */
        {
            enum { MANY = 300 };
            int32_t many[MANY];
            float one_thread[MANY], two_threads[MANY];
            for (int c = 0; c < MANY; c++)
                many[c] = (int32_t)(bst_rng_next(rng) % (N_MOVIES + 1));
            BstCandidates *small = bst_candidates_create(m, 37, table);
            CHECK(small != NULL, "edges: a workspace of 37 rows");
            if (small) {
                const int threads = bst_get_num_threads();
                bst_set_num_threads(1);
                bst_candidates_set_history(small, w.movies, w.ratings, w.hist_len, w.user);
                bst_candidates_score(small, many, MANY, one_thread);
                bst_set_num_threads(2);
                bst_set_parallel_min_work(0.0);
                bst_candidates_score(small, many, MANY, two_threads);
                CHECK(memcmp(one_thread, two_threads, sizeof(one_thread)) == 0,
                      "scores differ between one thread and two");
                bst_set_num_threads(threads);
                bst_set_parallel_min_work(threads > 1 ? 0.0 : BST_PAR_MIN_WORK_DEFAULT);
                float ref[MANY];
                Window wm = w;
                reference(p, L, &wm, many, MANY, ref);
                float worst_many = 0.0f;
                for (int c = 0; c < MANY; c++)
                    worst_many = fabsf(one_thread[c] - ref[c]) > worst_many
                                     ? fabsf(one_thread[c] - ref[c]) : worst_many;
                CHECK(worst_many <= REL_TOL * 5, "300 candidates in 37 rows: off by %g", worst_many);
                bst_candidates_free(small);
            }
        }

        /* One candidate at a time gives what a batch gives. */
        float worst = 0.0f;
        for (int c = 0; c < n; c++) {
            float one;
            bst_candidates_score(cw, cand + c, 1, &one);
            worst = fabsf(one - got[c]) > worst ? fabsf(one - got[c]) : worst;
        }
        CHECK(worst <= REL_TOL * 5, "one at a time: off by %g", worst);
        CHECK(bst_candidates_score(cw, cand, 0, got) == 0, "no candidates");

        bst_predictor_free(p);
        bst_candidates_free(cw);
        bst_model_free(m);
    }
}

/* ------------------------------------------------------------ memory */

#define TRACK_HEADER _Alignof(max_align_t)
static size_t g_live, g_total;
static long g_allocs, g_fail_after = -1;

static void *tracking_alloc(size_t n)
{
    if (g_fail_after >= 0 && g_allocs >= g_fail_after)
        return NULL;
    g_allocs++;
    unsigned char *block = malloc(TRACK_HEADER + n);
    if (!block)
        return NULL;
    memcpy(block, &n, sizeof(n));
    g_live += n;
    g_total += n;
    return block + TRACK_HEADER;
}

static void tracking_free(void *p)
{
    unsigned char *block = (unsigned char *)p - TRACK_HEADER;
    size_t n;
    memcpy(&n, block, sizeof(n));
    g_live -= n;
    free(block);
}

/* The bytes a workspace allocates are those announced, all at creation; the
 * batch stays within the budget; allocation failures are NULL. */
static void test_memory(BstRng *rng)
{
    Mode o = {6, 8, 3, 2, 0, 1, 1, 1, 1, 0};
    BstModel *m = make_model(&o, rng);
    CHECK(m != NULL, "memory: model");
    if (!m)
        return;
    int32_t cand[N_MOVIES + 5];
    float got[N_MOVIES + 5];
    const int n = all_candidates(cand);
    bst_set_allocator(tracking_alloc, tracking_free);
    /* The table of this model: (H + 1) * d + H floats a movie (genres). */
    const size_t table_bytes = ((size_t)N_MOVIES + 1) * ((o.heads + 1) * o.d + o.heads) * 4;
    for (int32_t batch = 1; batch <= 64; batch *= 4) {
        const size_t budget = batch == 4 ? table_bytes - 1 : batch == 16 ? table_bytes
                                                                          : BST_CANDIDATES_TABLE_BUDGET;
        g_live = g_total = 0;
        g_allocs = 0;
        BstCandidates *cw = bst_candidates_create(m, batch, budget);
        CHECK(cw != NULL, "memory: create(%d)", batch);
        if (!cw)
            continue;
        CHECK(g_total == bst_candidates_memory_bytes(&m->cfg, batch, budget),
              "memory: batch %d: %zu bytes allocated, %zu announced", batch, g_total,
              bst_candidates_memory_bytes(&m->cfg, batch, budget));
        CHECK(bst_candidates_has_table(cw) == (budget >= table_bytes),
              "memory: a table of %zu bytes within a budget of %zu: %d", table_bytes, budget,
              bst_candidates_has_table(cw));
        CHECK(bst_candidates_memory_bytes(&m->cfg, batch, budget) -
                      bst_candidates_memory_bytes(&m->cfg, batch, 0) ==
                  (budget >= table_bytes ? table_bytes : 0),
              "memory: the table's bytes are not the announced ones");
        CHECK(bst_candidates_batch(cw) == batch, "memory: batch %d taken as %d", batch,
              bst_candidates_batch(cw));
        const long setup = g_allocs;
        CHECK(bst_candidates_score(cw, cand, n, got) == -1, "scoring before a history is set");
        Window w;
        random_window(&w, o.L, 3, 2, rng);
        bst_candidates_set_history(cw, w.movies, w.ratings, w.hist_len, w.user);
        bst_candidates_score(cw, cand, n, got);
        CHECK(g_allocs == setup, "memory: %ld allocations while scoring", g_allocs - setup);
        bst_candidates_free(cw);
        CHECK(g_live == 0, "memory: %zu bytes left after free", g_live);
    }
    /* Each allocation failing in turn. */
    int ok = 1;
    for (long k = 0; k < 2; k++) {
        g_allocs = 0;
        g_fail_after = k;
        BstCandidates *cw = bst_candidates_create(m, 16, BST_CANDIDATES_TABLE_BUDGET);
        ok &= cw == NULL;
        g_fail_after = -1;
        bst_candidates_free(cw);
    }
    CHECK(ok, "memory: an allocation failure is not reported as NULL");
    CHECK(g_live == 0, "memory: a failed creation leaves %zu bytes", g_live);
    bst_set_allocator(NULL, NULL);

    CHECK(bst_candidates_batch_limit(&m->cfg, 0) == 0 && bst_candidates_create(m, 0, 0) == NULL &&
              bst_candidates_memory_bytes(&m->cfg, 0, 0) == 0,
          "memory: max_batch 0 refused");
    /* A large model's batch is cut to the budget, never below 1. */
    BstConfig big;
    bst_config_default(&big, 1000, 200);
    big.embed_dim = 512;
    big.hidden[0] = 4096;
    const int32_t limit = bst_candidates_batch_limit(&big, 1 << 30);
    const size_t per = bst_candidates_memory_bytes(&big, 2, 0) - bst_candidates_memory_bytes(&big, 1, 0);
    CHECK(limit >= 1 && (size_t)limit * per <= BST_CANDIDATES_MEMORY_BUDGET &&
              (size_t)(limit + 1) * per > BST_CANDIDATES_MEMORY_BUDGET,
          "memory: batch limit %d, %zu bytes a candidate", limit, per);
    big.seq_len = 1024;
    big.embed_dim = 4096;
    big.heads = 1;
    CHECK(bst_candidates_batch_limit(&big, 1 << 30) == 1, "memory: a huge candidate still fits alone");
    bst_model_free(m);
}

int main(void)
{
    BstRng rng;
    bst_rng_seed(&rng, 20261201);
    for (int threads = 1; threads <= 2; threads++) {
        /* Two threads with no minimum work: the batch is split at every
         * size, the last candidates of a pass included. */
        bst_set_num_threads(threads);
        bst_set_parallel_min_work(threads > 1 ? 0.0 : BST_PAR_MIN_WORK_DEFAULT);
        printf("%d thread(s)\n", threads);
        test_modes(&rng);
        test_edges(&rng);
    }
    bst_set_num_threads(1);
    bst_set_parallel_min_work(BST_PAR_MIN_WORK_DEFAULT);
    test_memory(&rng);
    printf("candidate scores against the predictor: worst error %.3g of the scale (tolerance "
           "%.0e)\n",
           g_worst, REL_TOL);
    return test_summary("test_recommend");
}

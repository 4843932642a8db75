/*
 * Warm start: continuing a training from a saved optimizer state
 * (bst_fit_continue), growing a model's vocabularies (bst_model_grow,
 * bst_train_state_grow), and the state's serialized form.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "bst_alloc.h"
#include "fit.h"
#include "model.h"
#include "serialize.h"
#include "trainer.h"
#include "test_util.h"

/* The stored model's vocabularies: movies 2, 4, ..., 60 and users 10, 20,
 * ..., 50, so that ids added later fall between known ones and move their
 * rows. */
enum { N_MOVIES = 30, N_USERS = 5, L = 5, N_GENRES = 4, N_WINDOWS = 400, BATCH = 16 };
static const int32_t feat_values[BST_N_USER_FEATS] = {2, 3, 5};

static void config(BstConfig *cfg, int32_t n_movies, int32_t n_users)
{
    bst_config_default(cfg, n_movies, L);
    cfg->heads = 2;
    cfg->hidden[0] = 16;
    cfg->hidden[1] = 8;
    cfg->n_users = n_users;
    cfg->user_dim = 3;
    for (int k = 0; k < BST_N_USER_FEATS; k++) {
        cfg->n_feat_values[k] = feat_values[k];
        cfg->feat_dim[k] = 2;
    }
    cfg->n_genres = N_GENRES;
    cfg->use_bias = 1;
    cfg->n_factors = 3;
}

/* The fixed inputs of movie id and user id: functions of the id, so that a
 * grown vocabulary gives a known movie or user what it had. */
static float genre_of(int32_t movie_id, int g)
{
    return (float)((movie_id * 7 + g * 3) % 5 < 2);
}

static int32_t feat_of(int32_t user_id, int k)
{
    return (user_id / 5 + k) % (feat_values[k] + 1);
}

/* A vocabulary of the given ids, with their fixed inputs. */
typedef struct Vocab {
    int32_t n_movies, n_users;
    int32_t *movie_ids, *user_ids, *user_feats;
    float *genres;
    BstVocab v;
} Vocab;

static Vocab make_vocab(int32_t n_movies, int32_t movie_step, int32_t n_users, int32_t user_step)
{
    Vocab o = {n_movies, n_users, malloc((size_t)n_movies * sizeof(int32_t)),
               malloc((size_t)n_users * sizeof(int32_t)),
               malloc((size_t)n_users * BST_N_USER_FEATS * sizeof(int32_t)),
               new_floats((size_t)n_movies * N_GENRES), {0}};
    for (int32_t i = 0; i < n_movies; i++) {
        o.movie_ids[i] = movie_step * (i + 1);
        for (int g = 0; g < N_GENRES; g++)
            o.genres[(size_t)i * N_GENRES + g] = genre_of(o.movie_ids[i], g);
    }
    for (int32_t i = 0; i < n_users; i++) {
        o.user_ids[i] = user_step * (i + 1);
        for (int k = 0; k < BST_N_USER_FEATS; k++)
            o.user_feats[(size_t)i * BST_N_USER_FEATS + k] = feat_of(o.user_ids[i], k);
    }
    o.v = (BstVocab){o.movie_ids, o.user_ids, o.user_feats, o.genres};
    return o;
}

static void free_vocab(Vocab *v)
{
    free(v->movie_ids);
    free(v->user_ids);
    free(v->user_feats);
    free(v->genres);
}

/* n windows over vocabulary indices 1..n_movies and users 0..n_users, with
 * histories of every length; targets follow a rule the model can learn. */
static BstData make_windows(int64_t n, int32_t n_movies, int32_t n_users, uint64_t seed)
{
    BstRng rng;
    bst_rng_seed(&rng, seed);
    BstData d = {n, L, malloc((size_t)n * L * sizeof(int32_t)), new_floats((size_t)n * (L - 1)),
                 malloc((size_t)n * sizeof(int32_t)), malloc((size_t)n * sizeof(int32_t)),
                 new_floats((size_t)n), NULL};
    for (int64_t w = 0; w < n; w++) {
        const int32_t hist = (int32_t)(bst_rng_next(&rng) % L);
        float mean = 3.0f;
        for (int32_t i = 0; i < L; i++) {
            const int padding = i < L - 1 - hist;
            d.movies[w * L + i] = padding ? 0 : 1 + (int32_t)(bst_rng_next(&rng) % n_movies);
            if (i < L - 1) {
                d.ratings[w * (L - 1) + i] = padding ? 0.0f : (float)(1 + bst_rng_next(&rng) % 5);
                mean += padding ? 0.0f : (d.ratings[w * (L - 1) + i] - 3.0f) / (L - 1);
            }
        }
        d.hist_len[w] = hist;
        d.users[w] = (int32_t)(bst_rng_next(&rng) % (uint64_t)(n_users + 1));
        d.targets[w] = 0.5f * mean + 0.3f * (float)(d.movies[w * L + L - 1] % 5) +
                       0.1f * (float)d.users[w];
    }
    return d;
}

static BstFitOptions options(BstOptimizerKind kind, int32_t epochs, int32_t patience,
                             uint64_t seed)
{
    BstFitOptions o;
    memset(&o, 0, sizeof(o));
    bst_train_options_default(&o.train);
    o.train.optimizer = kind;
    o.train.learning_rate = kind == BST_OPT_ADAGRAD ? 0.05f : 0.003f;
    o.train.batch_size = BATCH;
    o.train.seed = seed;
    o.train.weight_decay = kind == BST_OPT_ADAMW ? 0.01f : 0.0f;
    o.epochs = epochs;
    /* A cosine schedule restarts on a warm start (fit.h): constant here. */
    o.lr_schedule = BST_LR_CONSTANT;
    o.validation_fraction = 0.2f;
    o.patience = patience;
    o.bias_init = 1;
    o.zero_output = 1;
    o.clip = 1;
    return o;
}

static const char *const kind_names[] = {"Adagrad", "Adam", "AdamW"};

/* A model and its state as bst_models stores them. */
typedef struct Saved {
    unsigned char *weights, *state;
    size_t weights_len, state_len;
} Saved;

static Saved save(const BstModel *m, const BstTrainState *s)
{
    Saved o = {NULL, NULL, bst_model_serialized_size(m), s ? bst_train_state_serialized_size(s) : 0};
    o.weights = malloc(o.weights_len);
    bst_model_serialize(m, o.weights);
    if (s) {
        o.state = malloc(o.state_len);
        bst_train_state_serialize(s, o.weights, o.weights_len, o.state);
    }
    return o;
}

static void free_saved(Saved *s)
{
    free(s->weights);
    free(s->state);
}

static int same_saved(const Saved *a, const Saved *b)
{
    return a->weights_len == b->weights_len && a->state_len == b->state_len &&
           memcmp(a->weights, b->weights, a->weights_len) == 0 &&
           (a->state_len == 0 || memcmp(a->state, b->state, a->state_len) == 0);
}

/* The model's vocabularies and fixed inputs (row 0 left out), to grow it by
 * nothing. */
static BstVocab own_vocab(const BstModel *m)
{
    BstVocab v = {m->movie_ids, m->user_ids, m->user_feats + BST_N_USER_FEATS,
                  m->movie_genres + m->cfg.n_genres};
    return v;
}

/* What bst_train(warm_start => ...) does with a stored version: load the
 * weights and the state, grow them to the vocabulary (here the same one),
 * continue.  The loaded model and state are freed; *grown is the model. */
static BstFitStatus continue_saved(const Saved *s, const BstData *data, const BstFitOptions *o,
                                   uint64_t seed, BstModel **grown, BstTrainState **kept,
                                   BstFitResult *r)
{
    char err[128] = "";
    BstModel *loaded = bst_model_deserialize(s->weights, s->weights_len, err, sizeof(err));
    CHECK(loaded, "stored weights do not load: %s", err);
    BstTrainState *state = loaded ? bst_train_state_deserialize(s->state, s->state_len, loaded,
                                                                s->weights, s->weights_len, err,
                                                                sizeof(err))
                                  : NULL;
    CHECK(state, "stored state does not load: %s", err);
    *grown = NULL;
    *kept = NULL;
    if (!loaded || !state) {
        bst_model_free(loaded);
        bst_train_state_free(state);
        return BST_FIT_BAD_INPUT;
    }
    const char *why = NULL;
    BstVocab v = own_vocab(loaded);
    *grown = bst_model_grow(loaded, loaded->cfg.n_movies, loaded->cfg.n_users, &v, seed, &why);
    BstTrainState *from = *grown ? bst_train_state_grow(state, loaded, *grown) : NULL;
    CHECK(*grown && from, "growing by nothing failed: %s", why ? why : "state");
    BstFitStatus st = from ? bst_fit_continue(*grown, data, o, from, kept, NULL, r)
                           : BST_FIT_NO_MEMORY;
    bst_train_state_free(from);
    bst_train_state_free(state);
    bst_model_free(loaded);
    return st;
}

/*
 * Two trainings of one epoch, the second continued from the first's stored
 * weights and state, end bit for bit where one training of two epochs
 * ends: weights and state.  Validation on, dropout on, every input.
 */
static void test_split_training(BstOptimizerKind kind, const BstData *data, const Vocab *vocab)
{
    const char *name = kind_names[kind];
    const uint64_t seed = 7;
    BstConfig cfg;
    config(&cfg, N_MOVIES, N_USERS);
    BstFitResult r;

    /* One training of two epochs, with and without keeping the state. */
    BstModel *whole = bst_model_create_vocab(&cfg, &vocab->v, seed);
    BstModel *plain = bst_model_create_vocab(&cfg, &vocab->v, seed);
    BstTrainState *whole_state = NULL;
    BstFitOptions two = options(kind, 2, 0, seed);
    CHECK(bst_fit_continue(whole, data, &two, NULL, &whole_state, NULL, &r) == BST_FIT_OK &&
              whole_state, "%s: 2 epochs failed", name);
    CHECK(bst_fit(plain, data, &two, NULL, &r) == BST_FIT_OK, "%s: bst_fit failed", name);
    Saved a = save(whole, whole_state), p = save(plain, NULL);
    CHECK(a.weights_len == p.weights_len && memcmp(a.weights, p.weights, a.weights_len) == 0,
          "%s: keeping the state changed the training", name);
    CHECK(whole_state && whole_state->epochs == 2 && whole_state->seed == seed &&
              whole_state->step == 2 * ((int64_t)(r.n_train + BATCH - 1) / BATCH),
          "%s: kept state counts %d epochs, %lld steps", name,
          whole_state ? whole_state->epochs : -1, whole_state ? (long long)whole_state->step : -1);

    /* One epoch, stored; one more from the stored version. */
    BstModel *first = bst_model_create_vocab(&cfg, &vocab->v, seed);
    BstTrainState *first_state = NULL;
    BstFitOptions one = options(kind, 1, 0, seed);
    CHECK(bst_fit_continue(first, data, &one, NULL, &first_state, NULL, &r) == BST_FIT_OK,
          "%s: first epoch failed", name);
    Saved s1 = save(first, first_state);
    BstModel *second = NULL;
    BstTrainState *second_state = NULL;
    CHECK(continue_saved(&s1, data, &one, seed, &second, &second_state, &r) == BST_FIT_OK,
          "%s: second epoch failed", name);
    Saved b = second && second_state ? save(second, second_state) : (Saved){0};
    CHECK(same_saved(&a, &b), "%s: 1 + 1 epochs differ from 2 epochs (weights %s, state %s)",
          name, a.weights_len == b.weights_len && memcmp(a.weights, b.weights, a.weights_len) == 0
                    ? "equal" : "differ",
          a.state_len == b.state_len && b.state && memcmp(a.state, b.state, a.state_len) == 0
              ? "equal" : "differs");
    printf("  %s: 2 epochs and 1 + 1 epochs through the stored form: %s\n", name,
           same_saved(&a, &b) ? "bit for bit the same weights and state" : "DIFFERENT");

    /* Another seed continues the weights and the update count, but draws
     * new streams: different weights, the epochs counted afresh. */
    BstModel *other = NULL;
    BstTrainState *other_state = NULL;
    BstFitOptions reseeded = options(kind, 1, 0, seed + 1);
    CHECK(continue_saved(&s1, data, &reseeded, seed, &other, &other_state, &r) == BST_FIT_OK &&
              other_state, "%s: reseeded warm start failed", name);
    if (other_state) {
        Saved c = save(other, other_state);
        CHECK(memcmp(a.weights, c.weights, a.weights_len) != 0,
              "%s: another seed continued the same streams", name);
        CHECK(other_state->epochs == 1 && other_state->seed == seed + 1 &&
                  other_state->step == whole_state->step,
              "%s: another seed's state: %d epochs, seed %llu, %lld steps", name,
              other_state->epochs, (unsigned long long)other_state->seed,
              (long long)other_state->step);
        free_saved(&c);
    }

    /* A state of another optimizer, or of another shape, is refused. */
    BstFitOptions wrong = options(kind == BST_OPT_ADAGRAD ? BST_OPT_ADAM : BST_OPT_ADAGRAD, 1, 0,
                                  seed);
    BstTrainState *none = NULL;
    CHECK(bst_fit_continue(second, data, &wrong, whole_state, &none, NULL, &r) ==
              BST_FIT_BAD_INPUT && none == NULL, "%s: another optimizer's state accepted", name);

    free_saved(&a);
    free_saved(&p);
    free_saved(&s1);
    free_saved(&b);
    bst_model_free(whole);
    bst_model_free(plain);
    bst_model_free(first);
    bst_model_free(second);
    bst_model_free(other);
    bst_train_state_free(whole_state);
    bst_train_state_free(first_state);
    bst_train_state_free(second_state);
    bst_train_state_free(other_state);
}

/*
 * With early stopping the stored state is the kept epoch's: a training
 * stopped after its best epoch k stores what a training of exactly k
 * epochs stores.
 */
static void test_kept_epoch_state(const BstData *data, const Vocab *vocab)
{
    const uint64_t seed = 11;
    BstConfig cfg;
    config(&cfg, N_MOVIES, N_USERS);
    BstFitResult r, rk;
    /* A high learning rate overfits the small training split soon. */
    BstFitOptions stopping = options(BST_OPT_ADAM, 12, 2, seed);
    stopping.train.learning_rate = 0.03f;
    BstModel *m = bst_model_create_vocab(&cfg, &vocab->v, seed);
    BstTrainState *state = NULL;
    CHECK(bst_fit_continue(m, data, &stopping, NULL, &state, NULL, &r) == BST_FIT_OK && state,
          "early stopping: fit failed");
    BstFitOptions exact = stopping;
    exact.epochs = r.best_epoch;
    exact.patience = 0;
    BstModel *k = bst_model_create_vocab(&cfg, &vocab->v, seed);
    BstTrainState *k_state = NULL;
    CHECK(bst_fit_continue(k, data, &exact, NULL, &k_state, NULL, &rk) == BST_FIT_OK && k_state,
          "early stopping: %d epochs failed", r.best_epoch);
    Saved a = save(m, state), b = save(k, k_state);
    printf("  early stopping ran %d epochs and kept epoch %d: its state %s that of %d epochs\n",
           r.epochs_run, r.best_epoch, same_saved(&a, &b) ? "is" : "is NOT", r.best_epoch);
    CHECK(r.best_epoch < r.epochs_run, "early stopping kept its last epoch (%d): the test "
          "needs an earlier one", r.best_epoch);
    CHECK(same_saved(&a, &b) && state->epochs == r.best_epoch,
          "the state kept by early stopping is not epoch %d's", r.best_epoch);
    free_saved(&a);
    free_saved(&b);
    bst_model_free(m);
    bst_model_free(k);
    bst_train_state_free(state);
    bst_train_state_free(k_state);
}

/* Row r of a tensor of the given width. */
static const float *row(const float *t, int32_t r, int32_t width)
{
    return t + (size_t)r * width;
}

static int same_floats(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof(float)) == 0;
}

/* Predictions of a model for windows given by movie and user ids (history
 * ratings 1..4), in out. */
static void predict_ids(const BstModel *m, const int32_t *movie_ids, const int32_t *user_ids,
                        int32_t n, float *out)
{
    int32_t *movies = malloc((size_t)n * L * sizeof(int32_t)), users[64], hist[64];
    float *ratings = new_floats((size_t)n * (L - 1)), window_ratings[L - 1];
    for (int32_t w = 0; w < n; w++) {
        for (int i = 0; i < L - 1; i++)
            window_ratings[i] = (float)(1 + (w + i) % 4);
        /* Windows of every length: w % L + 1 movies. */
        const int32_t len = w % L + 1 > 1 ? w % L + 1 : 2;
        hist[w] = bst_model_pack_window(m, movie_ids + (size_t)w * L + (L - len), window_ratings,
                                        len, movies + (size_t)w * L,
                                        ratings + (size_t)w * (L - 1));
        users[w] = bst_model_user_index(m, user_ids[w]);
    }
    BstPredictor *p = bst_predictor_create(m, 16);
    BstBatch b = {n, movies, ratings, NULL, hist, users};
    bst_predict(p, &b, out);
    bst_predictor_free(p);
    free(movies);
    free(ratings);
}

/*
 * Growing the vocabularies: every known movie's and user's rows, row 0 and
 * every other tensor carried bit for bit; new rows as a fresh model of the
 * grown vocabularies draws them; the optimizer state likewise, new rows at
 * their initial values; the same predictions, bit for bit, for windows of
 * known movies and users; and the grown model trains.
 */
static void test_growth(BstOptimizerKind kind, const BstData *data, const Vocab *vocab)
{
    const char *name = kind_names[kind];
    const uint64_t seed = 5, grow_seed = 9;
    BstConfig cfg;
    config(&cfg, N_MOVIES, N_USERS);
    BstFitResult r;
    BstModel *m = bst_model_create_vocab(&cfg, &vocab->v, seed);
    BstTrainState *state = NULL;
    BstFitOptions one = options(kind, 1, 0, seed);
    CHECK(bst_fit_continue(m, data, &one, NULL, &state, NULL, &r) == BST_FIT_OK && state,
          "%s growth: training failed", name);
    if (!state) {
        bst_model_free(m);
        return;
    }

    /* Movies 1..63 (the known even ids 2..60 among them), users 5..60. */
    Vocab big = make_vocab(63, 1, 12, 5);
    const char *why = NULL;
    BstModel *g = bst_model_grow(m, big.n_movies, big.n_users, &big.v, grow_seed, &why);
    CHECK(g, "%s growth: %s", name, why ? why : "failed");
    BstTrainState *gs = g ? bst_train_state_grow(state, m, g) : NULL;
    CHECK(gs, "%s growth: the state did not grow", name);
    BstConfig big_cfg = cfg;
    big_cfg.n_movies = big.n_movies;
    big_cfg.n_users = big.n_users;
    BstModel *fresh = bst_model_create_vocab(&big_cfg, &big.v, grow_seed);
    if (!g || !gs || !fresh) {
        bst_model_free(g);
        bst_model_free(fresh);
        bst_train_state_free(gs);
        bst_train_state_free(state);
        bst_model_free(m);
        free_vocab(&big);
        return;
    }

    /* Tensor by tensor, through the public list of tensors. */
    BstTensor mt[BST_MAX_TENSORS], gt[BST_MAX_TENSORS], ft[BST_MAX_TENSORS];
    const int n = bst_param_tensors(&m->cfg, &m->params, mt);
    CHECK(bst_param_tensors(&g->cfg, &g->params, gt) == n &&
              bst_param_tensors(&fresh->cfg, &fresh->params, ft) == n,
          "%s growth: tensor lists differ", name);
    int known_rows = 0, new_rows = 0, bad_known = 0, bad_new = 0, bad_other = 0;
    int bad_known_state = 0, bad_new_state = 0;
    const float initial = kind == BST_OPT_ADAGRAD ? BST_ADAGRAD_INITIAL_ACCUMULATOR : 0.0f;
    for (int i = 0; i < n; i++) {
        const int movie_rows = strncmp(mt[i].name, "movie_", 6) == 0;
        const int user_rows = strncmp(mt[i].name, "user_", 5) == 0;
        const size_t m_off = (size_t)(mt[i].data - m->params.slab);
        const size_t g_off = (size_t)(gt[i].data - g->params.slab);
        if (!movie_rows && !user_rows) {
            bad_other += mt[i].size != gt[i].size ||
                         !same_floats(mt[i].data, gt[i].data, mt[i].size);
            for (int k = 0; k < bst_optimizer_slots(kind); k++)
                bad_other += !same_floats(state->slot[k] + m_off, gs->slot[k] + g_off,
                                          mt[i].size);
            continue;
        }
        const int32_t n_old = movie_rows ? m->cfg.n_movies : m->cfg.n_users;
        const int32_t n_new = movie_rows ? g->cfg.n_movies : g->cfg.n_users;
        const int32_t *new_ids = movie_rows ? big.movie_ids : big.user_ids;
        const int32_t width = (int32_t)(mt[i].size / ((size_t)n_old + 1));
        for (int32_t gr = 0; gr <= n_new; gr++) {
            const int32_t id = gr ? new_ids[gr - 1] : 0;
            const int32_t mr = gr == 0 ? 0 : movie_rows ? bst_model_movie_index(m, id)
                                                        : bst_model_user_index(m, id);
            if (gr == 0 || mr > 0) {
                known_rows++;
                bad_known += !same_floats(row(gt[i].data, gr, width), row(mt[i].data, mr, width),
                                          (size_t)width);
                for (int k = 0; k < bst_optimizer_slots(kind); k++)
                    bad_known_state += !same_floats(row(gs->slot[k] + g_off, gr, width),
                                                    row(state->slot[k] + m_off, mr, width),
                                                    (size_t)width);
            } else {
                new_rows++;
                bad_new += !same_floats(row(gt[i].data, gr, width), row(ft[i].data, gr, width),
                                        (size_t)width);
                for (int k = 0; k < bst_optimizer_slots(kind); k++)
                    for (int32_t j = 0; j < width; j++)
                        bad_new_state += row(gs->slot[k] + g_off, gr, width)[j] != initial;
            }
        }
    }
    printf("  %s growth to %d movies and %d users: %d known rows carried, %d new rows fresh\n",
           name, g->cfg.n_movies, g->cfg.n_users, known_rows, new_rows);
    CHECK(bad_known == 0 && bad_other == 0, "%s growth: %d known rows, %d other tensors changed",
          name, bad_known, bad_other);
    CHECK(bad_new == 0, "%s growth: %d new rows unlike a fresh model's", name, bad_new);
    CHECK(bad_known_state == 0, "%s growth: %d known rows' optimizer state changed", name,
          bad_known_state);
    CHECK(bad_new_state == 0, "%s growth: %d new rows' optimizer state not initial", name,
          bad_new_state);
    CHECK(gs->step == state->step && gs->epochs == state->epochs && gs->seed == state->seed &&
              memcmp(&gs->dropout_rng, &state->dropout_rng, sizeof(BstRng)) == 0,
          "%s growth: the state's counters changed", name);
    CHECK(memcmp(g->bn.slab, m->bn.slab, m->bn.size * sizeof(float)) == 0 &&
              g->cfg.rating_min == m->cfg.rating_min && g->cfg.rating_max == m->cfg.rating_max &&
              memcmp(&g->facts, &m->facts, sizeof(m->facts)) == 0,
          "%s growth: moving statistics, rating range or training facts changed", name);

    /* Windows of known movies (and known and unknown users) predict the
     * same bits. */
    enum { N_PRED = 40 };
    int32_t movie_ids[N_PRED * L], user_ids[N_PRED];
    float before[N_PRED], after[N_PRED];
    for (int32_t w = 0; w < N_PRED; w++) {
        for (int i = 0; i < L; i++)
            movie_ids[w * L + i] = 2 * (1 + (w * 7 + i * 3) % N_MOVIES);
        user_ids[w] = w % 7 == 0 ? 999 : 10 * (1 + w % N_USERS);
    }
    predict_ids(m, movie_ids, user_ids, N_PRED, before);
    predict_ids(g, movie_ids, user_ids, N_PRED, after);
    int same = 0;
    for (int32_t w = 0; w < N_PRED; w++)
        same += memcmp(&before[w], &after[w], sizeof(float)) == 0;
    printf("  %s growth: %d of %d windows of known movies predict the same bits\n", name, same,
           N_PRED);
    CHECK(same == N_PRED, "%s growth: %d of %d predictions changed", name, N_PRED - same, N_PRED);

    /* A vocabulary that drops a known movie is refused. */
    Vocab small = make_vocab(20, 2, N_USERS, 10);
    BstModel *dropped = bst_model_grow(m, small.n_movies, small.n_users, &small.v, grow_seed, &why);
    CHECK(!dropped && why, "%s growth: a vocabulary without a known movie accepted", name);
    bst_model_free(dropped);
    free_vocab(&small);

    /* The grown model continues on windows of new and known movies. */
    BstData more = make_windows(N_WINDOWS, big.n_movies, big.n_users, 77);
    BstTrainState *kept = NULL;
    BstFitStatus st = bst_fit_continue(g, &more, &one, gs, &kept, NULL, &r);
    CHECK(st == BST_FIT_OK && kept && isfinite(r.best.loss) && kept->epochs == 2,
          "%s growth: continuing on new movies failed (%d)", name, (int)st);
    free_windows(&more);

    bst_train_state_free(kept);
    bst_model_free(fresh);
    bst_model_free(g);
    bst_train_state_free(gs);
    bst_train_state_free(state);
    bst_model_free(m);
    free_vocab(&big);
}

static void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void fix_crc(unsigned char *buf, size_t len)
{
    put_le32(buf + len - 4, (uint32_t)crc32(crc32(0L, Z_NULL, 0), buf, (uInt)(len - 4)));
}

static void expect_state_reject(const unsigned char *buf, size_t len, const BstModel *m,
                                const Saved *s, const char *want, const char *what)
{
    char err[128] = "";
    BstTrainState *st = bst_train_state_deserialize(buf, len, m, s->weights, s->weights_len, err,
                                                    sizeof(err));
    CHECK(st == NULL && strncmp(err, want, strlen(want)) == 0,
          "%s: expected \"%s\", got %s\"%s\"", what, want, st ? "a state and " : "", err);
    bst_train_state_free(st);
}

/* The state's stored form: a round trip, and every kind of bad blob. */
static void test_state_format(const BstData *data, const Vocab *vocab)
{
    BstConfig cfg;
    config(&cfg, N_MOVIES, N_USERS);
    BstFitResult r;
    BstModel *m = bst_model_create_vocab(&cfg, &vocab->v, 3);
    BstTrainState *state = NULL;
    BstFitOptions one = options(BST_OPT_ADAMW, 1, 0, 3);
    CHECK(bst_fit_continue(m, data, &one, NULL, &state, NULL, &r) == BST_FIT_OK && state,
          "state format: training failed");
    if (!state) {
        bst_model_free(m);
        return;
    }
    Saved s = save(m, state);
    CHECK(s.state_len == BST_STATE_HEADER_SIZE + 2 * 4 * m->params.size + 4,
          "state of %zu bytes for %zu parameters", s.state_len, m->params.size);
    printf("  AdamW state: %zu bytes beside %zu bytes of weights\n", s.state_len, s.weights_len);
    char err[128] = "";
    BstTrainState *back = bst_train_state_deserialize(s.state, s.state_len, m, s.weights,
                                                      s.weights_len, err, sizeof(err));
    CHECK(back && back->optimizer == state->optimizer && back->seed == state->seed &&
              back->step == state->step && back->epochs == state->epochs &&
              memcmp(&back->dropout_rng, &state->dropout_rng, sizeof(BstRng)) == 0 &&
              same_floats(back->slot[0], state->slot[0], state->size) &&
              same_floats(back->slot[1], state->slot[1], state->size),
          "state round trip: %s", back ? "fields differ" : err);
    bst_train_state_free(back);

    unsigned char *bad = malloc(s.state_len);
    const size_t len = s.state_len;
    expect_state_reject(s.state, 8, m, &s, "truncated", "8 bytes");
    expect_state_reject(s.state, len - 1, m, &s, "truncated", "one byte short");
    memcpy(bad, s.state, len);
    bad[0] = 'X';
    expect_state_reject(bad, len, m, &s, "not an optimizer state", "bad magic");
    expect_state_reject(s.weights, s.weights_len, m, &s, "not an optimizer state",
                        "weights for a state");
    memcpy(bad, s.state, len);
    put_le32(bad + 4, 2);
    expect_state_reject(bad, len, m, &s, "unsupported format version 2", "version 2");
    memcpy(bad, s.state, len);
    bad[len / 2] ^= 1;
    expect_state_reject(bad, len, m, &s, "checksum mismatch", "a flipped bit");
    memcpy(bad, s.state, len);
    put_le32(bad + 20, 0);  /* Adagrad: one slot, not two */
    fix_crc(bad, len);
    expect_state_reject(bad, len, m, &s, "inconsistent shapes", "another optimizer's shape");
    memcpy(bad, s.state, len);
    put_le32(bad + 20, 7);
    fix_crc(bad, len);
    expect_state_reject(bad, len, m, &s, "invalid state: unknown optimizer", "optimizer 7");
    memcpy(bad, s.state, len);
    for (int i = 56; i < 88; i++)
        bad[i] = 0;
    fix_crc(bad, len);
    expect_state_reject(bad, len, m, &s, "invalid state: a dropout stream", "a zero stream");
    memcpy(bad, s.state, len);
    put_le32(bad + BST_STATE_HEADER_SIZE + 4 * (state->size + 3), 0xbf800000u);  /* v = -1 */
    fix_crc(bad, len);
    expect_state_reject(bad, len, m, &s, "invalid state: an Adam second moment", "negative v");
    memcpy(bad, s.state, len);
    put_le32(bad + BST_STATE_HEADER_SIZE + 8, 0x7fc00000u);  /* NaN */
    fix_crc(bad, len);
    expect_state_reject(bad, len, m, &s, "invalid state: a value is not finite", "NaN");

    /* Other weights: the same shape trained further, or another shape. */
    BstModel *other = bst_model_create_vocab(&cfg, &vocab->v, 4);
    Saved o = save(other, NULL);
    Saved swapped = {o.weights, s.state, o.weights_len, s.state_len};
    expect_state_reject(s.state, len, other, &swapped, "it belongs to other weights",
                        "a state beside other weights");
    BstConfig wide = cfg;
    wide.n_factors = 5;
    BstModel *shaped = bst_model_create_vocab(&wide, &vocab->v, 4);
    expect_state_reject(s.state, len, shaped, &s, "inconsistent shapes", "another shape");

    free(bad);
    free_saved(&s);
    free_saved(&o);
    bst_model_free(other);
    bst_model_free(shaped);
    bst_model_free(m);
    bst_train_state_free(state);
}

/* Bytes allocated through the core's hook: the most held at once. */
#define TRACK_HEADER _Alignof(max_align_t)
static size_t g_live, g_peak;

static void *tracking_alloc(size_t n)
{
    unsigned char *block = malloc(TRACK_HEADER + n);
    if (!block)
        return NULL;
    memcpy(block, &n, sizeof(n));
    g_live += n;
    g_peak = g_live > g_peak ? g_live : g_peak;
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

/* bst_fit_continue_memory_bytes, keeping the state, against the most bytes
 * a warm-started bst_fit_continue holds at once, to the byte. */
static void test_memory(BstOptimizerKind kind, int32_t patience, const BstData *data,
                        const Vocab *vocab)
{
    BstConfig cfg;
    config(&cfg, N_MOVIES, N_USERS);
    BstFitOptions o = options(kind, 2, patience, 1);
    BstFitResult r;
    bst_set_allocator(tracking_alloc, tracking_free);
    g_live = g_peak = 0;
    BstModel *m = bst_model_create_vocab(&cfg, &vocab->v, 1);
    BstTrainState *from = bst_train_state_create(&cfg, kind, 1), *kept = NULL;
    const size_t from_bytes = g_live - bst_model_memory_bytes(&cfg), before = g_live;
    g_peak = g_live;
    BstFitStatus st = bst_fit_continue(m, data, &o, from, &kept, NULL, &r);
    const size_t peak = g_peak - before, left = g_live - before;
    const size_t kept_bytes = bst_train_state_memory_bytes(&cfg, kind);
    bst_train_state_free(kept);
    bst_train_state_free(from);
    bst_model_free(m);
    const size_t leaked = g_live;
    bst_set_allocator(NULL, NULL);
    const size_t est = bst_fit_continue_memory_bytes(&cfg, &o, data->n, 1);
    printf("  %s%s, warm: bst_fit_continue peak %zu bytes (estimate %zu), state %zu bytes "
           "(estimate %zu)\n", kind_names[kind], patience ? ", early stopping" : "", peak, est,
           left, kept_bytes);
    CHECK(st == BST_FIT_OK, "memory: fit failed (%d)", (int)st);
    CHECK(peak == est, "%s: bst_fit_continue held %zu bytes at most, estimated %zu",
          kind_names[kind], peak, est);
    CHECK(left == kept_bytes && from_bytes == kept_bytes,
          "%s: the kept state holds %zu bytes, a created one %zu, estimated %zu",
          kind_names[kind], left, from_bytes, kept_bytes);
    CHECK(leaked == 0, "%s: %zu bytes left", kind_names[kind], leaked);
}

int main(void)
{
    Vocab vocab = make_vocab(N_MOVIES, 2, N_USERS, 10);
    BstData data = make_windows(N_WINDOWS, N_MOVIES, N_USERS, 1);

    for (int kind = BST_OPT_ADAGRAD; kind <= BST_OPT_ADAMW; kind++)
        test_split_training((BstOptimizerKind)kind, &data, &vocab);
    test_kept_epoch_state(&data, &vocab);
    test_growth(BST_OPT_ADAGRAD, &data, &vocab);
    test_growth(BST_OPT_ADAMW, &data, &vocab);
    test_state_format(&data, &vocab);
    test_memory(BST_OPT_ADAGRAD, 0, &data, &vocab);
    test_memory(BST_OPT_ADAMW, 2, &data, &vocab);

    free_windows(&data);
    free_vocab(&vocab);
    return test_summary("test_warm_start");
}

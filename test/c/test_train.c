/*
 * Training, determinism, serialization and robustness tests of the core.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "blas.h"
#include "bst_alloc.h"
#include "model.h"
#include "parallel.h"
#include "serialize.h"
#include "fit.h"
#include "infer.h"
#include "trainer.h"
#include "simd.h"
#include "test_util.h"

enum { N_MOVIES = 30, L = 4, N_TRAIN = 3000, N_EVAL = 1000, BATCH = 32 };

typedef struct Data {
    int32_t n;
    int32_t *movies;
    float *ratings, *targets;
} Data;

/*
 * A learnable rule: each movie has a hidden score; the rating of the target
 * movie mixes its score with the user's mean history rating.  The model has
 * to learn the score table through the embedding and read the ratings
 * through the rating-scaled history embeddings.
 */
static Data make_data(int32_t n, const float *score, BstRng *rng)
{
    Data d = {n, malloc((size_t)n * L * sizeof(int32_t)), new_floats((size_t)n * (L - 1)),
              new_floats((size_t)n)};
    for (int32_t w = 0; w < n; w++) {
        float mean = 0.0f;
        for (int i = 0; i < L; i++)
            d.movies[w * L + i] = 1 + (int32_t)(bst_rng_next(rng) % N_MOVIES);
        for (int i = 0; i < L - 1; i++) {
            float r = (float)(1 + bst_rng_next(rng) % 5);
            d.ratings[w * (L - 1) + i] = r;
            mean += r / (L - 1);
        }
        d.targets[w] = 0.7f * score[d.movies[w * L + L - 1]] + 0.3f * mean;
    }
    return d;
}

static void free_data(Data *d)
{
    free(d->movies);
    free(d->ratings);
    free(d->targets);
}

static BstBatch slice(const Data *d, int32_t start, int32_t n)
{
    BstBatch b = {n, d->movies + (size_t)start * L, d->ratings + (size_t)start * (L - 1),
                  d->targets + start, NULL, NULL};
    return b;
}

static void tiny_config(BstConfig *cfg)
{
    bst_config_default(cfg, N_MOVIES, L);
    cfg->heads = 2;
    cfg->hidden[0] = 16;
    cfg->hidden[1] = 8;
}

static int32_t g_ids[N_MOVIES];

static double eval_mse(const BstModel *m, const Data *d)
{
    BstPredictor *p = bst_predictor_create(m, 100);
    float *out = new_floats((size_t)d->n);
    BstBatch b = {d->n, d->movies, d->ratings, NULL, NULL, NULL};
    bst_predict(p, &b, out);
    double s = 0.0;
    for (int32_t i = 0; i < d->n; i++)
        s += ((double)out[i] - d->targets[i]) * ((double)out[i] - d->targets[i]);
    free(out);
    bst_predictor_free(p);
    return s / d->n;
}

static void train_epochs(BstTrainer *t, const Data *d, int epochs)
{
    for (int e = 0; e < epochs; e++)
        for (int32_t s = 0; s < d->n; s += BATCH) {
            BstBatch b = slice(d, s, d->n - s < BATCH ? d->n - s : BATCH);
            bst_train_step(t, &b, NULL);
        }
    bst_trainer_sync(t);
}

/* (a), (e): both optimizers learn the rule. */
static void test_learns(BstOptimizerKind kind, const char *name, float lr, const Data *train,
                        const Data *eval)
{
    BstConfig cfg;
    tiny_config(&cfg);
    BstModel *m = bst_model_create(&cfg, g_ids, 1);
    BstTrainOptions o = {kind, lr, BATCH, 5, 0.0f};
    BstTrainer *t = bst_trainer_create(m, &o);
    CHECK(m && t, "%s: create", name);
    if (!m || !t)
        return;
    double mean = 0.0, var = 0.0;
    for (int32_t i = 0; i < train->n; i++)
        mean += train->targets[i] / train->n;
    for (int32_t i = 0; i < eval->n; i++)
        var += (eval->targets[i] - mean) * (eval->targets[i] - mean) / eval->n;
    double before = eval_mse(m, eval);
    train_epochs(t, train, 30);
    double after = eval_mse(m, eval);
    printf("  %s: eval MSE %.4f -> %.4f (predicting the mean: %.4f)\n", name, before, after, var);
    CHECK(after < 0.5 * before, "%s: loss %.4f not under half of initial %.4f", name, after, before);
    CHECK(after < 0.5 * var, "%s: loss %.4f not under half of the mean predictor's %.4f", name,
          after, var);
    bst_trainer_free(t);
    bst_model_free(m);
}

static unsigned char *train_and_serialize_with(const Data *train, uint64_t seed,
                                               BstOptimizerKind kind, size_t *len)
{
    BstConfig cfg;
    tiny_config(&cfg);
    BstModel *m = bst_model_create(&cfg, g_ids, seed);
    BstTrainOptions o = {kind, kind == BST_OPT_ADAGRAD ? 0.05f : 0.003f, BATCH, seed,
                         kind == BST_OPT_ADAMW ? 0.01f : 0.0f};
    BstTrainer *t = bst_trainer_create(m, &o);
    train_epochs(t, train, 2);
    *len = bst_model_serialized_size(m);
    unsigned char *buf = malloc(*len);
    bst_model_serialize(m, buf);
    bst_trainer_free(t);
    bst_model_free(m);
    return buf;
}

static unsigned char *train_and_serialize(const Data *train, uint64_t seed, size_t *len)
{
    return train_and_serialize_with(train, seed, BST_OPT_ADAGRAD, len);
}

/* Thread count for what follows; above 1, even these tiny batches are split
 * (work threshold 0), so the parallel paths are the ones tested. */
static void use_threads(int n)
{
    bst_set_num_threads(n);
    bst_set_parallel_min_work(n > 1 ? 0.0 : BST_PAR_MIN_WORK_DEFAULT);
}

/* (b) Run to run, on 1 and on 2 threads.  Across thread counts the weights
 * are equal only if the BLAS rounds an element of a product the same way in
 * any block of the output (OpenBLAS's AVX-512 kernels do, its AVX2 ones do
 * not; see test_gradients): reported, not required. */
static void test_determinism(const Data *train)
{
    unsigned char *first[2];
    size_t len[2];
    for (int threads = 1; threads <= 2; threads++) {
        size_t l1, l2, l3;
        use_threads(threads);
        unsigned char *a = train_and_serialize(train, 99, &l1);
        unsigned char *b = train_and_serialize(train, 99, &l2);
        unsigned char *c = train_and_serialize(train, 100, &l3);
        CHECK(l1 == l2 && memcmp(a, b, l1) == 0, "%d thread(s): same seed gave different weights",
              threads);
        CHECK(l1 == l3 && memcmp(a, c, l1) != 0,
              "%d thread(s): different seeds gave identical weights", threads);
        first[threads - 1] = a;
        len[threads - 1] = l1;
        free(b);
        free(c);
    }
    printf("  weights trained on 1 and 2 threads are %s\n",
           len[0] == len[1] && memcmp(first[0], first[1], len[0]) == 0 ? "identical"
                                                                       : "different");
    free(first[0]);
    free(first[1]);
    use_threads(1);
}

/*
 * Adagrad's update in one loop over the batch's embedding rows and the dense
 * weights, split between threads anywhere, mid-row too: on every thread
 * count each step moves every element of every row the batch touched
 * (padding's row 0 has no gradient) and leaves no gradient behind.  A share
 * that skipped an element would leave it both unmoved and uncleared.
 */
static void test_update_shares(const Data *train)
{
    static const int thread_counts[] = {2, 3, 5, 8};
    for (size_t k = 0; k < sizeof(thread_counts) / sizeof(thread_counts[0]); k++) {
        use_threads(thread_counts[k]);
        BstConfig cfg;
        tiny_config(&cfg);
        BstModel *m = bst_model_create(&cfg, g_ids, 5);
        BstTrainOptions o;
        bst_train_options_default(&o);
        o.batch_size = BATCH;
        BstTrainer *t = m ? bst_trainer_create(m, &o) : NULL;
        CHECK(t, "update shares: create");
        if (!t) {
            bst_model_free(m);
            continue;
        }
        const size_t d = (size_t)cfg.embed_dim, table = (size_t)(N_MOVIES + 1) * d;
        float *before = new_floats(table);
        int unmoved = 0, uncleared = 0;
        for (int step = 0; step < 4; step++) {
            const BstBatch b = slice(train, step * BATCH, BATCH);
            memcpy(before, m->params.movie_emb, table * sizeof(float));
            bst_train_step(t, &b, NULL);
            uncleared += !bst_trainer_grads_clear(t);
            for (int32_t i = 0; i < b.n * L; i++) {
                const size_t row = (size_t)b.movies[i];
                for (size_t c = 0; row > 0 && c < d; c++)
                    unmoved += m->params.movie_emb[row * d + c] == before[row * d + c];
            }
        }
        CHECK(unmoved == 0 && uncleared == 0,
              "%d threads: %d embedding elements of the batches' rows unmoved, %d steps left "
              "gradients", thread_counts[k], unmoved, uncleared);
        free(before);
        bst_trainer_free(t);
        bst_model_free(m);
    }
    use_threads(1);
}

/*
 * Every copy of the core's loops that this CPU runs (simd.h) trains the
 * same weights, bit for bit, as the generic one: the copies differ only in
 * vector width, the reductions' order is written out, and a * b + c is not
 * contracted into an FMA (-ffp-contract=off, here by -std=c11 and in the
 * extension's build by the flag), so the weights of a seed do not depend on
 * the CPU, and a model stored by 1.0 predicts as 1.0 did (test/upgrade).
 */
static void test_simd_copies(const Data *train)
{
    const BstSimd in_use = bst_simd();
    static const BstOptimizerKind kinds[] = {BST_OPT_ADAGRAD, BST_OPT_ADAMW};
    for (int threads = 1; threads <= 2; threads++) {
        use_threads(threads);
        for (int k = 0; k < 2; k++) {
            size_t len_generic, len;
            bst_simd_force(BST_SIMD_GENERIC);
            unsigned char *generic = train_and_serialize_with(train, 99, kinds[k], &len_generic);
            for (int simd = BST_SIMD_AVX2; simd <= BST_SIMD_AVX512; simd++) {
                if (bst_simd_force((BstSimd)simd) != 0)
                    continue;
                unsigned char *w = train_and_serialize_with(train, 99, kinds[k], &len);
                CHECK(len == len_generic && memcmp(w, generic, len) == 0,
                      "%s loops, optimizer %d, %d thread(s): other weights than the generic loops",
                      bst_simd_name((BstSimd)simd), (int)kinds[k], threads);
                free(w);
            }
            free(generic);
        }
    }
    printf("  weights trained with the %s loops equal the generic loops' bit for bit\n",
           bst_simd_name(in_use));
    bst_simd_force(in_use);
    use_threads(1);
}

static void expect_reject(const unsigned char *buf, size_t len, const char *want, const char *what)
{
    char err[128] = "";
    BstModel *m = bst_model_deserialize(buf, len, err, sizeof(err));
    CHECK(m == NULL && strncmp(err, want, strlen(want)) == 0,
          "%s: expected \"%s\", got %s \"%s\"", what, want, m ? "a model and" : "", err);
    bst_model_free(m);
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Rewrites the trailing CRC so a deliberately edited blob gets past it. */
static void fix_crc(unsigned char *buf, size_t len)
{
    uint32_t crc = (uint32_t)crc32(0L, buf, (uInt)(len - 4));
    for (int i = 0; i < 4; i++)
        buf[len - 4 + i] = (unsigned char)(crc >> (8 * i));
}

/* (c), (d) */
static void test_serialization(const Data *train, const Data *eval)
{
    size_t len;
    unsigned char *blob = train_and_serialize(train, 7, &len);
    char err[128] = "";
    BstModel *m = bst_model_deserialize(blob, len, err, sizeof(err));
    CHECK(m != NULL, "deserialize failed: %s", err);
    if (!m)
        return;
    float mean;
    int32_t min_history;
    CHECK(le32(blob + 4) == BST_FORMAT_VERSION && !bst_model_training_facts(m, &mean, &min_history),
          "a model trained outside bst_fit: format %u, training facts known", le32(blob + 4));
    unsigned char *again = malloc(len);
    bst_model_serialize(m, again);
    CHECK(bst_model_serialized_size(m) == len && memcmp(blob, again, len) == 0,
          "serialize(deserialize(x)) != x");
    free(again);

    /* Identical predictions from the reloaded model. */
    BstModel *m2 = bst_model_deserialize(blob, len, err, sizeof(err));
    BstModel *orig = NULL;
    {
        BstConfig cfg;
        tiny_config(&cfg);
        /* Re-train the same seed to get the original in-memory model. */
        orig = bst_model_create(&cfg, g_ids, 7);
        BstTrainOptions o = {BST_OPT_ADAGRAD, 0.05f, BATCH, 7, 0.0f};
        BstTrainer *t = bst_trainer_create(orig, &o);
        train_epochs(t, train, 2);
        bst_trainer_free(t);
    }
    size_t n = (size_t)eval->n;
    float *p0 = new_floats(n), *p1 = new_floats(n), *p2 = new_floats(n);
    BstPredictor *pr0 = bst_predictor_create(orig, 64), *pr1 = bst_predictor_create(m, 64);
    BstPredictor *pr2 = bst_predictor_create(m2, 1000);
    BstBatch b = {eval->n, eval->movies, eval->ratings, NULL, NULL, NULL};
    bst_predict(pr0, &b, p0);
    bst_predict(pr1, &b, p1);
    bst_predict(pr2, &b, p2);
    CHECK(memcmp(p0, p1, n * sizeof(float)) == 0, "reloaded model predicts differently");
    /* Chunking only changes BLAS blocking, hence rounding, never the result. */
    double worst = 0.0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)p1[i] - p2[i]));
    CHECK(worst < 1e-4, "chunked prediction differs by %g", worst);
    bst_predictor_free(pr0);
    bst_model_free(orig);
    free(p0);

    /* (d) out-of-vocabulary: index 0 and out-of-range indices both read row 0. */
    CHECK(bst_model_movie_index(m, g_ids[0]) == 1 && bst_model_movie_index(m, g_ids[N_MOVIES - 1]) == N_MOVIES,
          "movie_index of known ids");
    CHECK(bst_model_movie_index(m, g_ids[0] - 1) == 0 && bst_model_movie_index(m, g_ids[3] + 1) == 0 &&
          bst_model_movie_index(m, 1 << 30) == 0, "movie_index of unknown ids");
    int32_t oov[2 * L] = {0, 0, 0, 0, N_MOVIES + 5, -7, 0, 1 << 30};
    float oov_r[2 * (L - 1)] = {1, 2, 3, 1, 2, 3};
    float oov_p[2];
    BstBatch ob = {2, oov, oov_r, NULL, NULL, NULL};
    bst_predict(pr1, &ob, oov_p);
    CHECK(isfinite(oov_p[0]) && isfinite(oov_p[1]) && oov_p[0] == oov_p[1],
          "OOV predictions %g %g (should be finite and equal)", oov_p[0], oov_p[1]);
    bst_predictor_free(pr1);
    bst_predictor_free(pr2);
    free(p1);
    free(p2);
    bst_model_free(m);
    bst_model_free(m2);

    /* Truncation at every length, through a copy of exactly that size so that
     * valgrind sees any read past it. */
    int trunc_ok = 1;
    for (size_t n = 0; n < len; n++) {
        unsigned char *cut = malloc(n ? n : 1);
        memcpy(cut, blob, n);
        err[0] = 0;
        BstModel *bad = bst_model_deserialize(cut, n, err, sizeof(err));
        if (bad || strcmp(err, "truncated") != 0) {
            trunc_ok = 0;
            fprintf(stderr, "length %zu: \"%s\"\n", n, err);
        }
        bst_model_free(bad);
        free(cut);
    }
    CHECK(trunc_ok, "every truncated length is rejected as \"truncated\"");

    unsigned char *x = malloc(len + 1);
    /* A flipped bit anywhere after the fixed header fields. */
    size_t positions[] = {20, 24, 60, 100, 101, BST_HEADER_SIZE_V2 + 4, len / 2, len - 5, len - 1};
    for (size_t i = 0; i < sizeof(positions) / sizeof(positions[0]); i++) {
        memcpy(x, blob, len);
        x[positions[i]] ^= 0x10;
        char what[64];
        snprintf(what, sizeof(what), "flipped byte at %zu", positions[i]);
        expect_reject(x, len, "checksum mismatch", what);
    }
    memcpy(x, blob, len);
    x[0] = 'X';
    expect_reject(x, len, "not a bst model (bad magic)", "bad magic");
    memcpy(x, blob, len);
    x[4] = BST_FORMAT_VERSION + 1;
    char want[64];
    snprintf(want, sizeof(want), "unsupported format version %d", BST_FORMAT_VERSION + 1);
    expect_reject(x, len, want, "the next version");
    memcpy(x, blob, len);
    x[len] = 0;
    expect_reject(x, len + 1, "inconsistent shapes", "trailing byte");
    /* Edits with a valid checksum must still be caught by validation. */
    memcpy(x, blob, len);
    x[32] = 0;  /* heads = 0 */
    fix_crc(x, len);
    expect_reject(x, len, "invalid config: heads must be between 1 and 64", "heads 0");
    memcpy(x, blob, len);
    x[36] = 1;  /* n_hidden 2 -> 1: sizes no longer add up */
    fix_crc(x, len);
    expect_reject(x, len, "inconsistent shapes", "n_hidden changed");
    memcpy(x, blob, len);
    memcpy(x + BST_HEADER_SIZE_V3 + 4, x + BST_HEADER_SIZE_V3, 4);  /* vocabulary[1] = [0] */
    fix_crc(x, len);
    expect_reject(x, len, "vocabulary not strictly ascending", "duplicate movie id");
    free(x);
    free(blob);
}

static void test_config_check(void)
{
    BstConfig cfg;
    bst_config_default(&cfg, 3883, 4);
    CHECK(cfg.embed_dim == 62 && bst_config_check(&cfg) == NULL, "default config for MovieLens-1M");
    bst_config_default(&cfg, 1, 2);
    CHECK(cfg.embed_dim == 1 && bst_config_check(&cfg) == NULL, "smallest config");
    /* The Keras rule up to BST_DEFAULT_DIM_MAX, then fixed. */
    CHECK(bst_default_dim(6040) == 77 && bst_default_dim(6560) == 80 && bst_default_dim(6399) == 79,
          "default width floor(sqrt(n)) up to 80");
    bst_config_default(&cfg, 62423, 4);
    CHECK(cfg.embed_dim == BST_DEFAULT_DIM_MAX && bst_default_dim(INT64_C(1) << 40) == BST_DEFAULT_DIM_MAX,
          "default width capped at 80 for larger vocabularies (ML-25M: 62,423 movies)");
    bst_config_default(&cfg, 100, 4);
    cfg.heads = 65;
    CHECK(bst_config_check(&cfg) && strcmp(bst_config_check(&cfg), "heads must be between 1 and 64") == 0, "heads 65");
    bst_config_default(&cfg, 100, 4);
    cfg.dropout = NAN;
    CHECK(bst_config_check(&cfg) != NULL, "dropout NaN");
    bst_config_default(&cfg, 100, 4);
    cfg.dropout = 1.0f;
    CHECK(bst_config_check(&cfg) != NULL, "dropout 1");
    bst_config_default(&cfg, 100, 1);
    CHECK(bst_config_check(&cfg) != NULL, "seq_len 1");
    bst_config_default(&cfg, 0, 4);
    CHECK(bst_config_check(&cfg) != NULL, "n_movies 0");
    bst_config_default(&cfg, 100, 4);
    cfg.n_hidden = 9;
    CHECK(bst_config_check(&cfg) != NULL, "n_hidden 9");
    bst_config_default(&cfg, 100, 4);
    cfg.hidden[1] = 0;
    CHECK(bst_config_check(&cfg) != NULL, "hidden 0");
    bst_config_default(&cfg, 100, 4);
    cfg.bn_eps = 0.0f;
    CHECK(bst_config_check(&cfg) != NULL, "bn_eps 0");
    bst_config_default(&cfg, 2000000000, 1024);
    CHECK(bst_config_check(&cfg) != NULL, "huge model rejected");
    int32_t unsorted[3] = {1, 3, 2};
    bst_config_default(&cfg, 3, 4);
    CHECK(bst_model_create(&cfg, unsorted, 1) == NULL, "unsorted vocabulary rejected");
}

/* Every signal a PostgreSQL backend handles, and then some. */
static int blocks_all(const sigset_t *m)
{
    return sigismember(m, SIGINT) == 1 && sigismember(m, SIGTERM) == 1 &&
           sigismember(m, SIGALRM) == 1 && sigismember(m, SIGUSR1) == 1 &&
           sigismember(m, SIGUSR2) == 1 && sigismember(m, SIGHUP) == 1 &&
           sigismember(m, SIGQUIT) == 1 && sigismember(m, SIGURG) == 1;
}

/* The pool's workers block every signal; the caller's mask is left as it was,
 * and the pool is created by the first region that needs it, not before. */
static void test_worker_signals(void)
{
#ifdef _OPENMP
    sigset_t before, after;
    pthread_sigmask(SIG_SETMASK, NULL, &before);
    use_threads(2);
    CHECK(bst_get_num_threads() == 2, "2 threads requested, %d in effect", bst_get_num_threads());
    const pthread_t caller = pthread_self();
    int ran_on_worker = 0, worker_blocks = 1, caller_blocks = 0, team = 0;
    /* Which thread runs which share is the pool's business (a running
     * thread takes the shares that a waiting one has not claimed yet, and on
     * a busy machine the caller runs regions alone for a while), so slow
     * shares, repeated with the history forgotten, give a worker its turn. */
    for (int attempt = 0; attempt < 200 && !ran_on_worker; attempt++) {
        use_threads(2);
#pragma omp parallel num_threads(2)
        {
            sigset_t m;
            pthread_sigmask(SIG_SETMASK, NULL, &m);
            nanosleep(&(struct timespec){0, 2000000}, NULL);
            if (pthread_equal(pthread_self(), caller))
                caller_blocks |= blocks_all(&m);
            else {
                ran_on_worker = 1;
                worker_blocks &= blocks_all(&m);
            }
            if (bst_team_thread() == 0)
                team = bst_team_size();
        }
    }
    pthread_sigmask(SIG_SETMASK, NULL, &after);
    CHECK(!blocks_all(&after) && sigismember(&after, SIGINT) == sigismember(&before, SIGINT),
          "creating the pool changed the caller's signal mask");
    CHECK(team == 2, "a region of 2 threads ran as %d shares", team);
    CHECK(ran_on_worker, "no share ran on a worker thread");
    CHECK(worker_blocks, "a worker thread does not block signals");
    CHECK(!caller_blocks, "the calling thread blocks signals");
    use_threads(1);
#endif
}

/* Threads of this process (OpenBLAS's own included), from /proc. */
static int process_threads(void)
{
    DIR *dir = opendir("/proc/self/task");
    int n = 0;
    if (!dir)
        return -1;
    for (struct dirent *e; (e = readdir(dir));)
        n += e->d_name[0] != '.';
    closedir(dir);
    return n;
}

/* The thread count once it is `expected`, or after 2 s whatever it is: an
 * ended thread leaves /proc a little after pthread_join returns. */
static int process_threads_settled(int expected)
{
    int n = process_threads();
    for (int i = 0; i < 2000 && n != expected; i++) {
        nanosleep(&(struct timespec){0, 1000000}, NULL);
        n = process_threads();
    }
    return n;
}

static int veto_all(void)
{
    return 1;
}

/*
 * The pool is created by the first region that needs threads, with the
 * thread count in effect then: single predictions (too little work to
 * split) create none; lowering the count ends the surplus workers; a host's
 * veto keeps everything in the calling thread; the automatic count is at
 * most BST_AUTO_THREADS_MAX.
 */
static void test_pool_lifecycle(const Data *eval)
{
    use_threads(1);
    /* Settled: the workers of earlier tests have just been ended, and an
     * ended thread may linger in /proc a while on a loaded host: the
     * count once it has stayed the same for 5 readings 20 ms apart. */
    int base = process_threads();
    for (int i = 0, same = 0; i < 100 && same < 5; i++) {
        nanosleep(&(struct timespec){0, 20000000}, NULL);
        const int again = process_threads();
        same = again == base ? same + 1 : 0;
        base = again;
    }
    bst_set_num_threads(3);
    BstConfig cfg;
    tiny_config(&cfg);
    BstModel *m = bst_model_create(&cfg, g_ids, 3);
    BstPredictor *p = m ? bst_predictor_create(m, 1) : NULL;
    CHECK(p, "pool: create");
    if (!p) {
        bst_model_free(m);
        return;
    }
    float out;
    for (int i = 0; i < 100; i++) {
        BstBatch one = slice(eval, i, 1);
        one.targets = NULL;
        bst_predict(p, &one, &out);
    }
    const int after = process_threads_settled(base);
    CHECK(after == base, "single predictions started %d threads", after - base);
#ifdef _OPENMP
#pragma omp parallel num_threads(bst_get_num_threads())
    {
        (void)bst_team_thread();
    }
    int n = process_threads_settled(base + 2);
    CHECK(n == base + 2, "3 threads: %d workers, 2 expected", n - base);
    bst_set_num_threads(2);
    n = process_threads_settled(base + 1);
    CHECK(n == base + 1, "down to 2 threads: %d workers, 1 expected", n - base);
#endif
    bst_set_thread_veto(veto_all);
    CHECK(bst_get_num_threads() == 1 && bst_threads_for(1000, 1e12) == 1,
          "vetoed: %d threads in effect", bst_get_num_threads());
    bst_set_thread_veto(NULL);
    bst_set_num_threads(0);
    const int automatic = bst_get_num_threads();
    printf("pool: automatic thread count %d (at most %d)\n", automatic, BST_AUTO_THREADS_MAX);
    CHECK(automatic >= 1 && automatic <= BST_AUTO_THREADS_MAX, "automatic: %d threads", automatic);
    use_threads(1);
    n = process_threads_settled(base);
    CHECK(n == base, "1 thread: %d workers left", n - base);
    bst_predictor_free(p);
    bst_model_free(m);
}

/* How a region with helpers goes in a scenario: region i, the helped-th
 * with helpers (from 1), since_solo regions with helpers before it since
 * the last solo period (or since the start). */
typedef BstRegionOutcome (*StallScenario)(int i, int helped, int since_solo);

/* Regions out of n that a fresh stall policy lets helpers run, each one
 * going as the scenario says. */
static int regions_with_helpers(int n, StallScenario outcome)
{
    BstStallPolicy p;
    bst_stall_policy_reset(&p);
    int helped = 0, since_solo = 0;
    for (int i = 0; i < n; i++) {
        if (!bst_stall_policy_helpers(&p)) {
            since_solo = 0;
            continue;
        }
        helped++;
        bst_stall_policy_note(&p, outcome(i, helped, since_solo++));
    }
    return helped;
}

/* Every g_stall_every-th region with helpers stalls (0: none). */
static int g_stall_every;
static BstRegionOutcome every_nth_stalls(int i, int helped, int since_solo)
{
    (void)i;
    (void)since_solo;
    return g_stall_every > 0 && helped % g_stall_every == 0 ? BST_REGION_STALLED
                                                            : BST_REGION_HELPED;
}

static int helper_regions(int n, int every)
{
    g_stall_every = every;
    return regions_with_helpers(n, every_nth_stalls);
}

/* A burst of stalls in the first 64 regions, then only the first region
 * with helpers after each solo period (its worker wakes from sleep). */
static BstRegionOutcome passing_burst(int i, int helped, int since_solo)
{
    (void)helped;
    return (i < 64 && i % 8 == 0) || since_solo == 0 ? BST_REGION_STALLED : BST_REGION_HELPED;
}

/* Workers that miss regions, as on the idle 2-core VM: the new worker
 * misses the first 12 (it is not running yet), each solo period's first 2
 * (its worker wakes from sleep), and then one region in 5. */
static BstRegionOutcome missing_now_and_then(int i, int helped, int since_solo)
{
    (void)helped;
    return i < 12 || since_solo < 2 || i % 5 == 0 ? BST_REGION_UNHELPED : BST_REGION_HELPED;
}

static BstRegionOutcome never_helping(int i, int helped, int since_solo)
{
    (void)i;
    (void)helped;
    (void)since_solo;
    return BST_REGION_UNHELPED;
}

/*
 * When the pool's starting thread runs regions alone (parallel.c): a stall
 * costs some 20-50 regions run alone, so rare stalls (a VM's neighbours
 * preempting a worker now and then) are borne, and frequent ones (every
 * core busy) send it alone, for periods that grow while stalls go on.
 */
static void test_stall_policy(void)
{
    const int n = 100000;
    CHECK(helper_regions(n, 0) == n, "no stall: %d of %d regions with helpers",
          helper_regions(n, 0), n);
    const int rare = helper_regions(n, 1000);
    CHECK(rare == n, "a stall in 1,000 regions: %d of %d regions with helpers", rare, n);
    const int sparse = helper_regions(n, 100);
    CHECK(sparse == n, "a stall in 100 regions: %d of %d regions with helpers", sparse, n);
    const int frequent = helper_regions(n, 8);
    CHECK(frequent < n / 10, "a stall in 8 regions with helpers: %d of %d still had them",
          frequent, n);
    const int always = helper_regions(n, 1);
    CHECK(always < n / 100 && always > 0, "every region a stall: %d of %d had helpers (probes)",
          always, n);
    /* After a busy spell, helpers come back, and soon: the solo periods
     * start short again. */
    BstStallPolicy p;
    bst_stall_policy_reset(&p);
    int solo = 0, i = 0;
    for (; i < 20000; i++) {
        if (bst_stall_policy_helpers(&p))
            bst_stall_policy_note(&p, BST_REGION_STALLED);
        else
            solo++;
    }
    int back = 0;
    for (int k = 0; k < 20000 && back == 0; k++)
        if (bst_stall_policy_helpers(&p)) {
            bst_stall_policy_note(&p, BST_REGION_HELPED);
            back = k + 1;
        }
    CHECK(solo > 19000 && back > 0 && back <= 1024,
          "busy spell: %d of 20000 alone; helpers back after %d regions", solo, back);
    /* A burst of stalls that passes: helpers again for good, not alone for
     * ever longer periods. */
    const int with = regions_with_helpers(n, passing_burst);
    CHECK(with > n * 9 / 10, "a passing burst of stalls: helpers in %d of %d regions", with, n);
    /* Only IDLE_HELPER_REGIONS missed in a row are a stall, and the count
     * starts again after each: so helpers for good, not regions that are
     * all stalls once a streak has been seen. */
    const int unhelped_with = regions_with_helpers(n, missing_now_and_then);
    CHECK(unhelped_with > n * 99 / 100,
          "workers missing a region now and then: helpers in %d of %d regions", unhelped_with,
          n);
    /* Workers that never take a share are stalls all the same. */
    const int never_with = regions_with_helpers(n, never_helping);
    CHECK(never_with < n / 10, "workers that never run a share: helpers in %d of %d regions",
          never_with, n);
    printf("stall policy: helpers in %d, %d, %d, %d of %d regions with a stall in none, 1,000, 100, 8\n",
           helper_regions(n, 0), rare, sparse, frequent, n);
}

/* Counting allocator that can be told to fail after a number of calls. */
static long g_allocs, g_fail_after = -1;
static void *counting_alloc(size_t n)
{
    if (g_fail_after >= 0 && g_allocs >= g_fail_after)
        return NULL;
    g_allocs++;
    return malloc(n);
}

/* The per-batch path must not allocate, on one thread or several; every
 * allocation failure must surface as NULL, not a crash. */
static void test_allocator(const Data *train)
{
    BstConfig cfg;
    tiny_config(&cfg);
    bst_set_allocator(counting_alloc, free);
    long setup = 0;
    for (int threads = 1; threads <= 2; threads++) {
        use_threads(threads);
        for (int k = 0; k < 2; k++) {
            g_allocs = 0;
            BstModel *m = bst_model_create(&cfg, g_ids, 3);
            BstTrainOptions o = {k ? BST_OPT_ADAM : BST_OPT_ADAGRAD, 0.01f, BATCH, 3, 0.0f};
            BstTrainer *t = bst_trainer_create(m, &o);
            BstPredictor *p = bst_predictor_create(m, BATCH);
            setup = g_allocs;
            train_epochs(t, train, 1);
            float out[BATCH];
            BstBatch b = slice(train, 0, BATCH);
            bst_predict(p, &b, out);
            CHECK(g_allocs == setup, "%d thread(s): %ld allocations in the training/prediction loop",
                  threads, g_allocs - setup);
            bst_predictor_free(p);
            bst_trainer_free(t);
            bst_model_free(m);
        }
    }
    /* setup now counts the allocations of a model, an Adam trainer and a
     * predictor: make each of them fail in turn. */
    use_threads(1);
    BstTrainOptions adam = {BST_OPT_ADAM, 0.01f, BATCH, 3, 0.0f};
    int ok = 1;
    for (long k = 0; k < setup; k++) {
        g_allocs = 0;
        g_fail_after = k;
        BstModel *m = bst_model_create(&cfg, g_ids, 3);
        BstTrainer *t = m ? bst_trainer_create(m, &adam) : NULL;
        BstPredictor *p = t ? bst_predictor_create(m, BATCH) : NULL;
        if (p)
            ok = 0;  /* some allocation should have failed */
        bst_predictor_free(p);
        bst_trainer_free(t);
        bst_model_free(m);
    }
    g_fail_after = -1;
    CHECK(ok, "allocation failures are reported as NULL");
    bst_set_allocator(NULL, NULL);
}

/* The bytes of a fixture blob into buf (cap bytes); 0 when missing. */
static size_t read_fixture(const char *path, unsigned char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "%s missing", path);
    if (!f)
        return 0;
    size_t len = fread(buf, 1, cap, f);
    CHECK(len < cap, "%s: larger than %zu bytes", path, cap);
    fclose(f);
    return len;
}

/* A format-1 blob written by the 1.0 core loads and predicts exactly what
 * the 1.0 core predicted (fixtures/gen_model_v1.c); it knows no training
 * facts. */
static void test_format_v1(void)
{
    static unsigned char buf[1 << 16];
    size_t len = read_fixture("fixtures/model_v1.bin", buf, sizeof(buf));
    if (!len)
        return;
    char err[128] = "";
    BstModel *m = bst_model_deserialize(buf, len, err, sizeof(err));
    CHECK(m != NULL, "format-1 blob refused: %s", err);
    float mean;
    int32_t min_history;
    CHECK(!m || !bst_model_training_facts(m, &mean, &min_history),
          "a format-1 model knows training facts");
    FILE *f = fopen("fixtures/model_v1_predictions.txt", "r");
    if (!m || !f) {
        bst_model_free(m);
        if (f)
            fclose(f);
        return;
    }
    /* One window at a time, as the 1.0 core predicted them (the BLAS may
     * round a row of a larger product differently). */
    enum { ROWS = 20 };
    int32_t mv[ROWS * 4];
    float r[ROWS * 3], out[ROWS];
    unsigned bits[ROWS];
    char line[256];
    int rows = 0, same = 0;
    while (rows < ROWS && fgets(line, sizeof(line), f)) {
        int32_t *q = mv + rows * 4;
        float *s = r + rows * 3;
        if (line[0] != '#' && sscanf(line, "%d %d %d %d %f %f %f %x", &q[0], &q[1], &q[2], &q[3],
                                     &s[0], &s[1], &s[2], &bits[rows]) == 8)
            rows++;
    }
    fclose(f);
    BstPredictor *p = bst_predictor_create(m, 64);
    for (int i = 0; i < rows; i++) {
        BstBatch b = {.n = 1, .movies = mv + i * 4, .ratings = r + i * 3};
        bst_predict(p, &b, &out[i]);
    }
    for (int i = 0; i < rows; i++)
        same += memcmp(&out[i], &bits[i], 4) == 0;
    printf("  format 1: %d of %d predictions of the 1.0 core reproduced bit for bit\n", same, rows);
    CHECK(rows == ROWS && same == rows, "format-1 model: %d of %d predictions differ",
          rows - same, rows);
    bst_predictor_free(p);
    bst_model_free(m);
}

/* The format-2 fixture's windows (fixtures/gen_model_v2.c): left-padded,
 * of known and unknown users, with what the 1.1 core predicted for them. */
enum { V2_L = 5, V2_ROWS = 20 };
typedef struct V2Windows {
    int rows;
    int32_t movies[V2_ROWS * V2_L], hist_len[V2_ROWS], users[V2_ROWS];
    float ratings[V2_ROWS * (V2_L - 1)];
    unsigned bits[V2_ROWS];
} V2Windows;

static int read_v2_windows(V2Windows *w)
{
    FILE *f = fopen("fixtures/model_v2_predictions.txt", "r");
    CHECK(f != NULL, "fixtures/model_v2_predictions.txt missing");
    if (!f)
        return 0;
    char line[256];
    w->rows = 0;
    while (w->rows < V2_ROWS && fgets(line, sizeof(line), f)) {
        int32_t *q = w->movies + w->rows * V2_L;
        float *s = w->ratings + w->rows * (V2_L - 1);
        if (line[0] != '#' &&
            sscanf(line, "%d %d %d %d %d %f %f %f %f %d %d %x", &q[0], &q[1], &q[2], &q[3], &q[4],
                   &s[0], &s[1], &s[2], &s[3], &w->hist_len[w->rows], &w->users[w->rows],
                   &w->bits[w->rows]) == 12)
            w->rows++;
    }
    fclose(f);
    return w->rows;
}

/* How many of the fixture's predictions m reproduces bit for bit, one
 * window at a time as the 1.1 core made them. */
static int v2_same_predictions(const BstModel *m, const V2Windows *w)
{
    BstPredictor *p = bst_predictor_create(m, 64);
    int same = 0;
    for (int i = 0; p && i < w->rows; i++) {
        BstBatch b = {.n = 1, .movies = w->movies + i * V2_L,
                      .ratings = w->ratings + i * (V2_L - 1), .hist_len = w->hist_len + i,
                      .users = w->users + i};
        float out;
        bst_predict(p, &b, &out);
        same += memcmp(&out, &w->bits[i], 4) == 0;
    }
    bst_predictor_free(p);
    return same;
}

/*
 * A format-2 blob written by the 1.1 core (every optional input, trained by
 * bst_fit: fixtures/gen_model_v2.c) loads, knows no training facts and
 * predicts exactly what the 1.1 core predicted; written again, it is a
 * format-3 blob saying the facts are unknown, the same model byte for byte
 * besides, which loads and predicts the same.
 */
static void test_format_v2(void)
{
    static unsigned char v2[1 << 16], v3[1 << 16];
    const size_t len2 = read_fixture("fixtures/model_v2.bin", v2, sizeof(v2));
    V2Windows w;
    if (!len2 || !read_v2_windows(&w))
        return;
    CHECK(len2 > BST_HEADER_SIZE_V2 + 4 && le32(v2 + 4) == 2,
          "fixtures/model_v2.bin is not a format-2 blob");
    char err[128] = "";
    BstModel *m = bst_model_deserialize(v2, len2, err, sizeof(err));
    CHECK(m != NULL, "format-2 blob refused: %s", err);
    if (!m)
        return;
    float mean;
    int32_t min_history;
    CHECK(!bst_model_training_facts(m, &mean, &min_history),
          "a format-2 model knows training facts");
    const int same = v2_same_predictions(m, &w);
    printf("  format 2: %d of %d predictions of the 1.1 core reproduced bit for bit\n", same,
           w.rows);
    CHECK(w.rows == V2_ROWS && same == w.rows, "format-2 model: %d of %d predictions differ",
          w.rows - same, w.rows);

    const size_t len3 = bst_model_serialized_size(m);
    const size_t added = BST_HEADER_SIZE_V3 - BST_HEADER_SIZE_V2;
    CHECK(len3 == len2 + added && len3 <= sizeof(v3), "format 2 of %zu bytes rewritten in %zu",
          len2, len3);
    if (len3 == len2 + added && len3 <= sizeof(v3)) {
        bst_model_serialize(m, v3);
        static const unsigned char unknown[12];
        CHECK(le32(v3 + 4) == 3 && memcmp(v3 + BST_HEADER_SIZE_V2, unknown, added) == 0,
              "a format-2 model is written as format %u, facts not all zero", le32(v3 + 4));
        /* Everything but version, sizes, facts and checksum is as it was. */
        CHECK(memcmp(v3 + 20, v2 + 20, BST_HEADER_SIZE_V2 - 20) == 0 &&
                  memcmp(v3 + BST_HEADER_SIZE_V3, v2 + BST_HEADER_SIZE_V2,
                         len2 - BST_HEADER_SIZE_V2 - 4) == 0,
              "rewriting a format-2 model changed its config or weights");
        BstModel *again = bst_model_deserialize(v3, len3, err, sizeof(err));
        CHECK(again != NULL, "a rewritten format-2 model does not load: %s", err);
        if (again) {
            CHECK(!bst_model_training_facts(again, &mean, &min_history),
                  "a rewritten format-2 model knows training facts");
            CHECK(v2_same_predictions(again, &w) == w.rows,
                  "a rewritten format-2 model predicts differently");
        }
        bst_model_free(again);
    }
    bst_model_free(m);
}

/* tiny_config with every optional input, over windows of L_model positions. */
static void feature_config(BstConfig *cfg, int L_model)
{
    tiny_config(cfg);
    cfg->seq_len = L_model;
    cfg->n_users = 5;
    cfg->user_dim = 3;
    const int32_t values[BST_N_USER_FEATS] = {2, 3, 5};
    for (int k = 0; k < BST_N_USER_FEATS; k++) {
        cfg->n_feat_values[k] = values[k];
        cfg->feat_dim[k] = 2;
    }
    cfg->n_genres = 4;
    cfg->use_bias = 1;
    cfg->n_factors = 3;
}

/* A model of a feature_config (possibly edited), on the tiny vocabulary. */
static BstModel *feature_model_of(const BstConfig *cfg, uint64_t seed)
{
    static int32_t users[5] = {100, 101, 102, 103, 104};
    static int32_t feats[5 * BST_N_USER_FEATS] = {1, 1, 1, 2, 2, 2, 1, 3, 3, 2, 1, 4, 1, 2, 5};
    static float genres[N_MOVIES * 4];
    for (int i = 0; i < N_MOVIES * 4; i++)
        genres[i] = (float)((i * 7) % 3 == 0);
    BstVocab v = {g_ids, users, feats, genres};
    return bst_model_create_vocab(cfg, &v, seed);
}

/* A model with every optional input, on the tiny vocabulary. */
static BstModel *feature_model(int L_model, uint64_t seed)
{
    BstConfig cfg;
    feature_config(&cfg, L_model);
    return feature_model_of(&cfg, seed);
}

/* AdamW over the windows of train for EPOCHS epochs of batches of TB of
 * one user each, with the trainer's rows deferred or not: the serialized
 * model and both moments (malloc'd), and whether every step left the
 * gradient clear. */
enum { SA_USERS = 6, SA_TB = 4, SA_WINDOWS = 400,
       /* Past the history's steps, so that it fills and every row syncs. */
       SA_EPOCHS = BST_ADAM_HISTORY_STEPS / (SA_WINDOWS / SA_TB) + 2 };

static unsigned char *sparse_adam_run(const Data *train, const BstConfig *cfg, int deferred,
                                      size_t *len, float **moments, size_t *n_moments,
                                      int *all_clear)
{
    int32_t users[SA_TB];
    bst_trainer_set_sparse_adam(deferred);
    BstModel *m = feature_model_of(cfg, 21);
    BstTrainOptions o = {BST_OPT_ADAMW, 0.01f, SA_TB, 21, 0.01f};
    BstTrainer *t = m ? bst_trainer_create(m, &o) : NULL;
    bst_trainer_set_sparse_adam(1);
    CHECK(t != NULL, "sparse adam: create");
    if (!t) {
        bst_model_free(m);
        return NULL;
    }
    for (int e = 0; e < SA_EPOCHS; e++)
        for (int32_t s = 0; s < SA_WINDOWS; s += SA_TB) {
            BstBatch b = slice(train, s, SA_TB);
            for (int32_t i = 0; i < b.n; i++)
                users[i] = (s / SA_TB) % SA_USERS;
            b.users = users;
            bst_train_step(t, &b, NULL);
            *all_clear &= bst_trainer_grads_clear(t);
        }
    bst_trainer_sync(t);
    *len = bst_model_serialized_size(m);
    unsigned char *out = malloc(*len);
    bst_model_serialize(m, out);
    BstTrainState *st = bst_train_state_create(&m->cfg, BST_OPT_ADAMW, 21);
    CHECK(st && bst_trainer_copy_state(t, st) == 0, "sparse adam: the trainer's state");
    *n_moments = st ? st->size : 0;
    *moments = malloc(2 * *n_moments * sizeof(float) + 1);
    if (st) {
        memcpy(*moments, st->slot[0], *n_moments * sizeof(float));
        memcpy(*moments + *n_moments, st->slot[1], *n_moments * sizeof(float));
    }
    bst_train_state_free(st);
    bst_trainer_free(t);
    bst_model_free(m);
    return out;
}

/*
 * AdamW defers the rows a batch leaves alone (of the tables by movie and by
 * user, at least BST_ADAM_DEFER_MIN_WIDTH floats wide), and a row takes the
 * steps it missed at once when a later batch reads it, or at
 * bst_trainer_sync: the weights and both moments after 42 epochs (4,200
 * steps, so that the history of 4,096 fills and every row syncs on the
 * way) are those of updating every row at every step, bit for bit, with
 * every copy of the replay this CPU runs (simd.h), on 1 and 2 threads.
 * Rows of 20, 17 and 16 floats (the movies' and users' embeddings and
 * factors): whole vectors and partial ones.  Batches of 4 windows (at most
 * 16 of the 30 movies) of one user of six (0, the unknown one, among
 * them), so that most rows of each table are left alone in each step.
 * And the gradient is all zero after each step.
 */
static void test_sparse_adam(const Data *train)
{
    const BstSimd in_use = bst_simd();
    BstConfig cfg;
    feature_config(&cfg, L);
    cfg.embed_dim = 20;
    cfg.user_dim = 17;
    cfg.n_factors = BST_ADAM_DEFER_MIN_WIDTH;
    int all_clear = 1, copies = 0;
    for (int threads = 1; threads <= 2; threads++) {
        use_threads(threads);
        size_t len_every, n_every;
        float *every_moments;
        unsigned char *every = sparse_adam_run(train, &cfg, 0, &len_every, &every_moments,
                                               &n_every, &all_clear);
        for (int simd = BST_SIMD_GENERIC; simd <= BST_SIMD_AVX512; simd++) {
            if (bst_simd_force((BstSimd)simd) != 0)
                continue;
            size_t len, n;
            float *moments;
            unsigned char *w = sparse_adam_run(train, &cfg, 1, &len, &moments, &n, &all_clear);
            CHECK(w && every && len == len_every && memcmp(w, every, len) == 0,
                  "sparse adam, %s replay, %d thread(s): other weights than updating every row "
                  "at every step", bst_simd_name((BstSimd)simd), threads);
            CHECK(n == n_every && memcmp(moments, every_moments, 2 * n * sizeof(float)) == 0,
                  "sparse adam, %s replay, %d thread(s): other moments than updating every row "
                  "at every step", bst_simd_name((BstSimd)simd), threads);
            copies += threads == 1;
            free(w), free(moments);
        }
        bst_simd_force(in_use);
        free(every), free(every_moments);
    }
    CHECK(all_clear, "sparse adam: a gradient left non-zero after a step");
    printf("  AdamW with the rows outside each batch deferred (%d copies of the replay): the "
           "same weights and moments as every row at every step\n", copies);
    use_threads(1);
}

/*
 * Padding is invisible: a window of 3 history items in a model of 8
 * positions predicts the same bits whatever the 4 padded slots hold, and
 * the same as in a batch beside full windows.
 */
static void test_padding_invisible(void)
{
    enum { LM = 8 };
    BstModel *m = feature_model(LM, 4);
    BstPredictor *p = bst_predictor_create(m, 4);
    CHECK(m && p, "padding: create");
    if (!m || !p)
        return;
    int32_t movies[2 * LM] = {0, 0, 0, 0, 5, 9, 2, 17}, hist[2] = {3, 7}, users[2] = {2, 4};
    float ratings[2 * (LM - 1)] = {0, 0, 0, 0, 4, 1, 5};
    float clean, garbage, batched[2];
    BstBatch b = {.n = 1, .movies = movies, .ratings = ratings, .hist_len = hist, .users = users};
    bst_predict(p, &b, &clean);
    BstRng rng;
    bst_rng_seed(&rng, 8);
    for (int i = 0; i < 4; i++) {
        movies[i] = 1 + (int32_t)(bst_rng_next(&rng) % N_MOVIES);
        ratings[i] = 1.0f + 4.0f * bst_rng_uniform(&rng);
    }
    bst_predict(p, &b, &garbage);
    for (int i = 0; i < LM; i++)
        movies[LM + i] = 1 + i;
    for (int i = 0; i < LM - 1; i++)
        ratings[LM - 1 + i] = 3.0f;
    b.n = 2;
    bst_predict(p, &b, batched);
    printf("  padding: %.6f clean, %.6f with garbage in the padded slots, %.6f in a batch\n",
           clean, garbage, batched[0]);
    CHECK(memcmp(&clean, &garbage, 4) == 0, "padded slots changed a prediction");
    CHECK(memcmp(&clean, &batched[0], 4) == 0, "a batch neighbour changed a prediction");
    /* The history itself does matter (a mask that hid everything would pass the above). */
    ratings[4] = 1.0f;
    float changed;
    b.n = 1;
    bst_predict(p, &b, &changed);
    CHECK(changed != clean, "changing a history rating did not change the prediction");
    bst_predictor_free(p);
    bst_model_free(m);
}

typedef struct EpochLog {
    int epochs;
    unsigned char *blob[64];
    size_t len;
    int best[64];
    BstModel *m;
} EpochLog;

static void log_epoch(void *arg, const BstEpochStats *s)
{
    EpochLog *log = arg;
    log->len = bst_model_serialized_size(log->m);
    log->blob[s->epoch] = malloc(log->len);
    bst_model_serialize(log->m, log->blob[s->epoch]);
    log->best[s->epoch] = s->best;
    log->epochs = s->epoch;
}

/*
 * The training loop overfits noisy targets at a high learning rate; early
 * stopping must stop it and leave the model holding the best epoch's
 * weights, bit for bit, not the last epoch's.
 */
static void test_early_stopping(const Data *train)
{
    BstModel *m = feature_model(L, 3);
    enum { N = 1500 };
    int32_t users[N], hist[N];
    float noisy[N];
    BstRng rng;
    bst_rng_seed(&rng, 12);
    for (int i = 0; i < N; i++) {
        users[i] = (int32_t)(bst_rng_next(&rng) % 6);
        hist[i] = 1 + (int32_t)(bst_rng_next(&rng) % (L - 1));
        noisy[i] = train->targets[i] + 3.0f * (bst_rng_uniform(&rng) - 0.5f);
    }
    BstData data = {N, L, train->movies, train->ratings, hist, users, noisy, NULL};
    BstFitOptions o = {.train = {BST_OPT_ADAMW, 0.02f, 16, 5, 0.01f}, .epochs = 40,
                       .lr_schedule = BST_LR_CONSTANT, .validation_fraction = 0.2f,
                       .patience = 3, .bias_init = 1, .zero_output = 1, .clip = 1};
    EpochLog log = {.m = m};
    BstFitHooks hooks = {NULL, log_epoch, &log};
    BstFitResult r;
    BstFitStatus st = bst_fit(m, &data, &o, &hooks, &r);
    CHECK(st == BST_FIT_OK, "fit failed: %d", (int)st);
    printf("  early stopping: best epoch %d of %d run (val MAE %.4f), %lld training, %lld "
           "validation windows\n",
           r.best_epoch, r.epochs_run, r.best.val_mae, (long long)r.n_train, (long long)r.n_val);
    CHECK(r.epochs_run < 40 && r.epochs_run == r.best_epoch + o.patience,
          "did not stop %d epochs after the best (best %d, run %d)", o.patience, r.best_epoch,
          r.epochs_run);
    CHECK(r.n_val == 300 && r.n_train == 1200, "split %lld / %lld", (long long)r.n_val,
          (long long)r.n_train);
    unsigned char *final = malloc(log.len);
    bst_model_serialize(m, final);
    CHECK(log.best[r.best_epoch] && memcmp(final, log.blob[r.best_epoch], log.len) == 0,
          "the model does not hold the best epoch's weights");
    CHECK(memcmp(final, log.blob[r.epochs_run], log.len) != 0,
          "the last epoch's weights equal the best's: the test proves nothing");
    double mae, rmse;
    CHECK(bst_evaluate_data(m, &data, NULL, &mae, &rmse) == 0 && mae > 0.0 && rmse >= mae,
          "evaluate");
    /* Clipping: the range is the training targets'; narrowed to [2.9, 3.1],
     * every prediction falls in it and some sit on its ends. */
    float lo = noisy[0], hi = noisy[0], pred[N];
    for (int i = 1; i < N; i++) {
        lo = noisy[i] < lo ? noisy[i] : lo;
        hi = noisy[i] > hi ? noisy[i] : hi;
    }
    CHECK(m->cfg.rating_min >= lo && m->cfg.rating_max <= hi && m->cfg.rating_min < m->cfg.rating_max,
          "rating range [%g, %g] is not within the targets' [%g, %g]", m->cfg.rating_min,
          m->cfg.rating_max, lo, hi);
    m->cfg.rating_min = 2.9f;
    m->cfg.rating_max = 3.1f;
    BstPredictor *p = bst_predictor_create(m, 256);
    BstBatch all = {.n = N, .movies = train->movies, .ratings = train->ratings, .hist_len = hist,
                    .users = users};
    bst_predict(p, &all, pred);
    int inside = 0, ends = 0;
    for (int i = 0; i < N; i++) {
        inside += pred[i] >= 2.9f && pred[i] <= 3.1f;
        ends += pred[i] == 2.9f || pred[i] == 3.1f;
    }
    CHECK(inside == N && ends > 0, "%d of %d predictions outside [2.9, 3.1], %d on its ends",
          N - inside, N, ends);
    bst_predictor_free(p);
    for (int e = 1; e <= log.epochs; e++)
        free(log.blob[e]);
    free(final);
    bst_model_free(m);

    /* Validation without early stopping: every epoch runs and the last is
     * the kept one, whatever its validation error. */
    m = feature_model(L, 3);
    o.patience = 0;
    o.epochs = 5;
    st = bst_fit(m, &data, &o, NULL, &r);
    CHECK(st == BST_FIT_OK && r.epochs_run == 5 && r.best_epoch == 5 && r.best.epoch == 5 &&
          isfinite(r.best.val_mae),
          "without early stopping: %d epochs run, epoch %d reported as kept", r.epochs_run,
          r.best_epoch);
    bst_model_free(m);
}

/* ---------------------------------------------------------- training facts */

static uint32_t float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

/* One epoch of bst_fit on a fresh model of every input over the windows of
 * train with these history lengths (NULL: full windows) and targets; the
 * model, or NULL when the fit fails. */
static BstModel *fit_for_facts(const Data *train, int32_t n, int32_t *hist, int32_t *users,
                               float *targets, float validation_fraction, uint64_t seed,
                               BstFitResult *r)
{
    BstModel *m = feature_model(L, seed);
    BstData data = {n, L, train->movies, train->ratings, hist, users, targets, NULL};
    BstFitOptions o = {.train = {BST_OPT_ADAGRAD, 0.01f, BATCH, seed, 0.0f}, .epochs = 1,
                       .validation_fraction = validation_fraction};
    BstFitStatus st = m ? bst_fit(m, &data, &o, NULL, r) : BST_FIT_NO_MEMORY;
    CHECK(st == BST_FIT_OK, "training facts: fit failed (%d)", (int)st);
    if (st != BST_FIT_OK) {
        bst_model_free(m);
        return NULL;
    }
    return m;
}

/* A format-3 blob of a model whose training facts are edited to known,
 * mean_bits and min_history, checksum fixed, is refused with want (NULL:
 * loads, and reports those facts exactly). */
static void check_stored_facts(const unsigned char *blob, size_t len, uint32_t known,
                               uint32_t mean_bits, uint32_t min_history, const char *want)
{
    unsigned char *x = malloc(len);
    memcpy(x, blob, len);
    put_le32(x + BST_HEADER_SIZE_V2, known);
    put_le32(x + BST_HEADER_SIZE_V2 + 4, mean_bits);
    put_le32(x + BST_HEADER_SIZE_V2 + 8, min_history);
    fix_crc(x, len);
    char what[96];
    snprintf(what, sizeof(what), "training facts %u, %08x, %d", known, mean_bits,
             (int32_t)min_history);
    if (want) {
        expect_reject(x, len, want, what);
    } else {
        char err[128] = "";
        BstModel *m = bst_model_deserialize(x, len, err, sizeof(err));
        float mean = 0.0f;
        int32_t min = -1;
        const int knows = m ? bst_model_training_facts(m, &mean, &min) : -1;
        CHECK(m && knows == (int)known &&
                  (!known || (float_bits(mean) == mean_bits && min == (int32_t)min_history)),
              "%s: %s, known %d, mean %08x, min_history %d", what, m ? "loaded" : err, knows,
              float_bits(mean), min);
        bst_model_free(m);
    }
    free(x);
}

/*
 * Training facts: a new model knows none and the setter refuses what the
 * deserializer would; bst_fit records the mean target and the fewest history
 * items of its training windows (hist_len clamped as the forward reads it,
 * validation windows left out); a format-3 blob carries them exactly, and
 * edited ones out of range are refused, not trusted.
 */
static void test_training_facts(const Data *train)
{
    enum { N = 200 };
    float mean = -1.0f;
    int32_t min_history = -1;

    BstModel *m = feature_model(L, 3);
    CHECK(m && !bst_model_training_facts(m, &mean, &min_history) && mean == -1.0f &&
              min_history == -1,
          "a new model knows training facts");
    if (!m)
        return;
    const struct {
        float mean;
        int32_t min_history;
    } refused[] = {{NAN, 1}, {INFINITY, 1}, {-INFINITY, 1}, {3.0f, -1}, {3.0f, L}};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        CHECK(bst_model_set_training_facts(m, refused[i].mean, refused[i].min_history) != NULL &&
                  !bst_model_training_facts(m, &mean, &min_history),
              "training facts %g, %d accepted", refused[i].mean, refused[i].min_history);
    CHECK(bst_model_set_training_facts(m, -2.5f, L - 1) == NULL &&
              bst_model_training_facts(m, &mean, &min_history) && mean == -2.5f &&
              min_history == L - 1,
          "training facts -2.5, %d: got %g, %d", L - 1, mean, min_history);
    bst_model_free(m);

    /* Without validation every window is a training window. */
    int32_t hist[N], users[N];
    float targets[N];
    BstRng rng;
    bst_rng_seed(&rng, 31);
    int32_t fewest = L - 1;
    double sum = 0.0;
    for (int i = 0; i < N; i++) {
        hist[i] = 1 + (int32_t)(bst_rng_next(&rng) % (L - 1));
        users[i] = (int32_t)(bst_rng_next(&rng) % 6);
        targets[i] = train->targets[i];
        fewest = hist[i] < fewest ? hist[i] : fewest;
        sum += targets[i];
    }
    BstFitResult r;
    m = fit_for_facts(train, N, hist, users, targets, 0.0f, 5, &r);
    if (!m)
        return;
    CHECK(bst_model_training_facts(m, &mean, &min_history) && mean == (float)r.train_mean &&
              fabs(r.train_mean - sum / N) < 1e-9 && min_history == fewest && fewest == 1,
          "fit recorded %g, %d; the training windows' mean %g, fewest %d", mean, min_history,
          sum / N, fewest);
    printf("  training facts: mean target %.6f, min_history %d, from %d windows\n", mean,
           min_history, N);

    /* Written as format 3 and read back exactly. */
    size_t len = bst_model_serialized_size(m);
    unsigned char *blob = malloc(len), *again = malloc(len);
    bst_model_serialize(m, blob);
    CHECK(le32(blob + 4) == 3 && le32(blob + 8) == BST_HEADER_SIZE_V3 &&
              le32(blob + BST_HEADER_SIZE_V2) == 1 &&
              le32(blob + BST_HEADER_SIZE_V2 + 4) == float_bits(mean) &&
              le32(blob + BST_HEADER_SIZE_V2 + 8) == (uint32_t)min_history,
          "format %u, header %u, facts %u, %08x, %u", le32(blob + 4), le32(blob + 8),
          le32(blob + BST_HEADER_SIZE_V2), le32(blob + BST_HEADER_SIZE_V2 + 4),
          le32(blob + BST_HEADER_SIZE_V2 + 8));
    char err[128] = "";
    BstModel *loaded = bst_model_deserialize(blob, len, err, sizeof(err));
    float loaded_mean = 0.0f;
    int32_t loaded_min = -1;
    CHECK(loaded && bst_model_training_facts(loaded, &loaded_mean, &loaded_min) &&
              float_bits(loaded_mean) == float_bits(mean) && loaded_min == min_history,
          "training facts did not round-trip: %s %g, %d", loaded ? "" : err, loaded_mean,
          loaded_min);
    if (loaded) {
        bst_model_serialize(loaded, again);
        CHECK(memcmp(blob, again, len) == 0, "serialize(deserialize(x)) != x with training facts");
    }
    bst_model_free(loaded);

    /* Edited facts: out of range refused, in range trusted. */
    const uint32_t three = float_bits(3.0f);
    check_stored_facts(blob, len, 2, three, 1, "invalid training facts: known must be 0 or 1");
    check_stored_facts(blob, len, 1, 0x7fc00000u, 1,
                       "invalid training facts: the mean training target must be finite");
    check_stored_facts(blob, len, 1, float_bits(-INFINITY), 1,
                       "invalid training facts: the mean training target must be finite");
    const char *range = "invalid training facts: min_history must be between 0 and seq_len - 1";
    check_stored_facts(blob, len, 1, three, (uint32_t)-1, range);
    check_stored_facts(blob, len, 1, three, L, range);
    check_stored_facts(blob, len, 1, three, 0x80000000u, range);
    const char *hidden = "invalid training facts: unknown facts must have a mean target and "
                         "min_history of 0";
    check_stored_facts(blob, len, 0, three, 0, hidden);
    check_stored_facts(blob, len, 0, float_bits(-0.0f), 0, hidden);
    check_stored_facts(blob, len, 0, 0, 1, hidden);
    check_stored_facts(blob, len, 1, float_bits(-7.5f), L - 1, NULL);
    check_stored_facts(blob, len, 1, three, 0, NULL);
    check_stored_facts(blob, len, 0, 0, 0, NULL);
    free(blob);
    free(again);
    bst_model_free(m);

    /* hist_len as the forward reads it: below 0 is 0, above L - 1 is L - 1,
     * none is full windows. */
    hist[7] = -3;
    m = fit_for_facts(train, N, hist, users, targets, 0.0f, 5, &r);
    CHECK(m && bst_model_training_facts(m, &mean, &min_history) && min_history == 0,
          "a history length of -3 recorded as %d", min_history);
    bst_model_free(m);
    for (int i = 0; i < N; i++)
        hist[i] = 99;
    m = fit_for_facts(train, N, hist, users, targets, 0.0f, 5, &r);
    CHECK(m && bst_model_training_facts(m, &mean, &min_history) && min_history == L - 1,
          "history lengths of 99 recorded as %d", min_history);
    bst_model_free(m);
    m = fit_for_facts(train, N, NULL, users, targets, 0.0f, 5, &r);
    CHECK(m && bst_model_training_facts(m, &mean, &min_history) && min_history == L - 1,
          "full windows recorded as %d", min_history);
    bst_model_free(m);

    /* With validation, only the training windows count.  One window has no
     * history and the only target off 3: the training mean shows on which
     * side of the split each seed put it. */
    for (int i = 0; i < N; i++) {
        hist[i] = 1 + i % (L - 1);
        targets[i] = 3.0f;
    }
    hist[17] = 0;
    targets[17] = 4.0f;
    int in_training = 0, held_out = 0;
    for (uint64_t seed = 1; seed <= 8; seed++) {
        m = fit_for_facts(train, N, hist, users, targets, 0.5f, seed, &r);
        if (!m)
            continue;
        const int trained_on = r.train_mean != 3.0;
        CHECK(bst_model_training_facts(m, &mean, &min_history) &&
                  min_history == (trained_on ? 0 : 1) && mean == (float)r.train_mean,
              "seed %llu: the window without history %s, min_history %d",
              (unsigned long long)seed, trained_on ? "trained on" : "held out", min_history);
        in_training += trained_on;
        held_out += !trained_on;
        bst_model_free(m);
    }
    printf("  validation split: the window without history trained on for %d seeds, held out "
           "for %d\n",
           in_training, held_out);
    CHECK(in_training > 0 && held_out > 0, "the split never separates: the test proves nothing");
}

/* ----------------------------------------------------------- memory bounds */

/*
 * Allocator that tracks the bytes the core asks for: live now, the most live
 * at once, and the total.  Each block's size sits in a header in front of it,
 * as wide as malloc's alignment so that the block keeps it.
 */
#define TRACK_HEADER _Alignof(max_align_t)
static size_t g_live, g_peak, g_total;

static void *tracking_alloc(size_t n)
{
    unsigned char *block = malloc(TRACK_HEADER + n);
    if (!block)
        return NULL;
    memcpy(block, &n, sizeof(n));
    g_live += n;
    g_total += n;
    if (g_live > g_peak)
        g_peak = g_live;
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

/* Starts counting; everything allocated from here must be freed before
 * track_stop(). */
static void track_start(void)
{
    g_live = g_peak = g_total = 0;
    bst_set_allocator(tracking_alloc, tracking_free);
}

static void track_stop(void)
{
    bst_set_allocator(NULL, NULL);
}

static double mib(size_t bytes)
{
    return (double)bytes / (1 << 20);
}

/* n random windows of Lw positions: random history lengths (0 to Lw - 1,
 * left-padded), movies of an n_movies vocabulary, users of an n_users one
 * (0: unknown too), ratings and targets in [1, 5]. */
static BstData random_windows(int64_t n, int32_t Lw, int32_t n_movies, int32_t n_users,
                              BstRng *rng)
{
    BstData d = {n, Lw, malloc((size_t)n * Lw * sizeof(int32_t)),
                 new_floats((size_t)n * (Lw - 1)), malloc((size_t)n * sizeof(int32_t)),
                 malloc((size_t)n * sizeof(int32_t)), new_floats((size_t)n), NULL};
    if (!d.movies || !d.hist_len || !d.users) {
        perror("malloc");
        exit(2);
    }
    for (int64_t w = 0; w < n; w++) {
        int32_t *mv = d.movies + w * Lw;
        float *r = d.ratings + w * (Lw - 1);
        const int32_t hist = (int32_t)(bst_rng_next(rng) % (uint64_t)Lw);
        for (int32_t i = 0; i < Lw; i++) {
            const int padding = i < Lw - 1 - hist;
            mv[i] = padding ? 0 : 1 + (int32_t)(bst_rng_next(rng) % (uint64_t)n_movies);
            if (i < Lw - 1)
                r[i] = padding ? 0.0f : (float)(1 + bst_rng_next(rng) % 5);
        }
        d.hist_len[w] = hist;
        d.users[w] = (int32_t)(bst_rng_next(rng) % (uint64_t)(n_users + 1));
        d.targets[w] = 1.0f + 4.0f * bst_rng_uniform(rng);
    }
    return d;
}

/* A model of any config over vocabularies 1..n_movies and 1..n_users
 * (features unknown, genres a fixed pattern). */
static BstModel *model_for(const BstConfig *cfg, uint64_t seed)
{
    int32_t *movie_ids = malloc((size_t)cfg->n_movies * sizeof(int32_t));
    int32_t *user_ids = malloc(((size_t)cfg->n_users + 1) * sizeof(int32_t));
    float *genres = new_floats((size_t)cfg->n_movies * cfg->n_genres);
    for (int32_t i = 0; i < cfg->n_movies; i++)
        movie_ids[i] = i + 1;
    for (int32_t i = 0; i < cfg->n_users; i++)
        user_ids[i] = i + 1;
    for (size_t i = 0; i < (size_t)cfg->n_movies * cfg->n_genres; i++)
        genres[i] = (float)((i * 7) % 3 == 0);
    BstVocab v = {movie_ids, user_ids, NULL, genres};
    BstModel *m = bst_model_create_vocab(cfg, &v, seed);
    free(movie_ids);
    free(user_ids);
    free(genres);
    return m;
}

/*
 * bst_fit_memory_bytes against the most bytes bst_fit really holds at once
 * (and bst_model_memory_bytes against the model's), to the byte.
 */
static void check_fit_memory(const char *name, const BstConfig *cfg, const BstFitOptions *o,
                             int64_t n, BstRng *rng)
{
    BstData data = random_windows(n, cfg->seq_len, cfg->n_movies, cfg->n_users, rng);
    BstFitResult r;
    BstFitStatus st = BST_FIT_BAD_INPUT;
    track_start();
    BstModel *m = model_for(cfg, 1);
    const size_t model_bytes = g_total, before = g_live;
    g_peak = g_live;
    if (m)
        st = bst_fit(m, &data, o, NULL, &r);
    const size_t fit_peak = g_peak - before, fit_left = g_live - before;
    bst_model_free(m);
    const size_t left = g_live;
    track_stop();
    const size_t model_est = bst_model_memory_bytes(cfg);
    const size_t fit_est = bst_fit_memory_bytes(cfg, o, n);
    printf("  %s: model %zu bytes (estimate %zu), bst_fit peak %zu bytes = %.2f MiB "
           "(estimate %zu)\n",
           name, model_bytes, model_est, fit_peak, mib(fit_peak), fit_est);
    CHECK(m && st == BST_FIT_OK, "%s: fit failed (%d)", name, (int)st);
    CHECK(model_bytes == model_est, "%s: model allocated %zu bytes, estimated %zu", name,
          model_bytes, model_est);
    CHECK(fit_peak == fit_est, "%s: bst_fit held %zu bytes at most, estimated %zu", name,
          fit_peak, fit_est);
    CHECK(fit_left == 0 && left == 0, "%s: %zu bytes left by bst_fit, %zu in all", name,
          fit_left, left);
    free_windows(&data);
}

static void test_fit_memory(BstRng *rng)
{
    BstConfig cfg;
    BstFitOptions o;

    tiny_config(&cfg);
    memset(&o, 0, sizeof(o));
    o.train = (BstTrainOptions){BST_OPT_ADAGRAD, 0.05f, BATCH, 1, 0.0f};
    o.epochs = 1;
    check_fit_memory("Adagrad, no validation", &cfg, &o, 500, rng);

    feature_config(&cfg, 8);
    o.train = (BstTrainOptions){BST_OPT_ADAMW, 0.01f, 16, 5, 0.01f};
    o.epochs = 2;
    o.validation_fraction = 0.2f;
    o.patience = 1;
    o.bias_init = o.zero_output = o.clip = 1;
    check_fit_memory("every input, AdamW, early stopping", &cfg, &o, 400, rng);

    /* Validation in several chunks: the predictor takes fewer windows than
     * it is asked for (1024) at 64 positions and 4 heads. */
    tiny_config(&cfg);
    cfg.seq_len = 64;
    cfg.heads = 4;
    memset(&o, 0, sizeof(o));
    o.train = (BstTrainOptions){BST_OPT_ADAM, 0.003f, 24, 3, 0.0f};
    o.epochs = 1;
    o.validation_fraction = 0.3f;
    const int32_t eval_rows = bst_predictor_batch_limit(&cfg, 1024);
    CHECK(eval_rows < 1200, "64 positions: the predictor takes %d windows of 1024", eval_rows);
    check_fit_memory("64 positions, 4 heads, Adam, validation", &cfg, &o, 4000, rng);

    /* The bias start's arrays outweigh the trainer: they set the peak. */
    bst_config_default(&cfg, 20000, 2);
    cfg.embed_dim = 1;
    cfg.heads = 1;
    cfg.n_hidden = 1;
    cfg.hidden[0] = 2;
    cfg.n_users = 5000;
    cfg.use_bias = 1;
    memset(&o, 0, sizeof(o));
    o.train = (BstTrainOptions){BST_OPT_ADAGRAD, 0.01f, 4, 1, 0.0f};
    o.epochs = 1;
    o.bias_init = 1;
    BstFitOptions no_start = o;
    no_start.bias_init = 0;
    CHECK(bst_fit_memory_bytes(&cfg, &o, 200) > bst_fit_memory_bytes(&cfg, &no_start, 200),
          "the bias start does not set the peak: the case proves nothing");
    check_fit_memory("vocabulary of 20000, bias start", &cfg, &o, 200, rng);
}

/*
 * A data set built as the extension reads a training's windows: packed one
 * by one with the ids as read (bst_data_set_window) into arrays that grow,
 * and widen, as they come (bst_data_resize), then cut to size and mapped to
 * the model's vocabulary in place (bst_data_map_ids).  The bytes it holds
 * are bst_data_memory_bytes at every step, to the byte, and the windows end
 * up exactly as bst_model_pack_window and bst_model_user_index pack them.
 */
static size_t g_data_live, g_data_peak;
static int g_data_fail_at;     /* the resize call that fails (counting down); 0: none */

static void *data_tracking_resize(void *p, size_t size, void *arg)
{
    (void)arg;
    if (g_data_fail_at > 0 && --g_data_fail_at == 0)
        return NULL;
    size_t old = 0;
    unsigned char *block = p ? (unsigned char *)p - TRACK_HEADER : NULL;
    if (block)
        memcpy(&old, block, sizeof(old));
    /* Always a new block, so that a window read from the old one after the
     * move shows under the sanitizers. */
    unsigned char *grown = malloc(TRACK_HEADER + (size ? size : 1));
    if (!grown)
        return NULL;
    memcpy(grown, &size, sizeof(size));
    if (block) {
        memcpy(grown + TRACK_HEADER, block + TRACK_HEADER, old < size ? old : size);
        free(block);
    }
    g_data_live += size - old;
    if (g_data_live > g_data_peak)
        g_data_peak = g_data_live;
    return grown + TRACK_HEADER;
}

static void data_tracking_free(BstData *d)
{
    void *arrays[] = {d->movies, d->ratings, d->hist_len, d->users, d->targets};
    for (size_t i = 0; i < sizeof(arrays) / sizeof(arrays[0]); i++)
        if (arrays[i]) {
            unsigned char *block = (unsigned char *)arrays[i] - TRACK_HEADER;
            size_t n;
            memcpy(&n, block, sizeof(n));
            g_data_live -= n;
            free(block);
        }
    memset(d, 0, sizeof(*d));
}

/*
 * n ragged windows of 1 .. max_len movies (ids 1 .. n_movies + 5: a few
 * unknown to the model) and users (0 .. n_users + 2), read with the model's
 * length fixed (seq_len > 0, longer windows keep their latest movies) or the
 * longest window's (seq_len 0); capacity grows from 3 windows by half.
 */
static void check_data_set(const char *name, int64_t n, int32_t max_len, int32_t seq_len,
                           int32_t n_movies, int32_t n_users, BstRng *rng)
{
    int32_t *lens = malloc((size_t)n * sizeof(int32_t));
    int64_t *starts = malloc(((size_t)n + 1) * sizeof(int64_t));
    starts[0] = 0;
    for (int64_t w = 0; w < n; w++) {
        lens[w] = 1 + (int32_t)(bst_rng_next(rng) % (uint64_t)max_len);
        starts[w + 1] = starts[w] + lens[w];
    }
    int32_t *movies = malloc((size_t)starts[n] * sizeof(int32_t));
    float *ratings = new_floats((size_t)starts[n]);
    int32_t *users = malloc((size_t)n * sizeof(int32_t));
    for (int64_t i = 0; i < starts[n]; i++) {
        movies[i] = 1 + (int32_t)(bst_rng_next(rng) % (uint64_t)(n_movies + 5));
        ratings[i] = (float)(1 + bst_rng_next(rng) % 5) - 0.5f * (float)(i % 2);
    }
    for (int64_t w = 0; w < n; w++)
        users[w] = (int32_t)(bst_rng_next(rng) % (uint64_t)(n_users + 3));

    BstData d;
    memset(&d, 0, sizeof(d));
    g_data_live = g_data_peak = 0;
    int64_t capacity = 0;
    int exact = 1, resized = 1;
    for (int64_t w = 0; w < n; w++) {
        int32_t width = seq_len > 0 ? seq_len : (lens[w] > d.seq_len ? lens[w] : d.seq_len);
        if (w == capacity || width != d.seq_len) {
            if (w == capacity)
                capacity = capacity < 2 ? 3 : capacity + capacity / 2;
            resized &= bst_data_resize(&d, capacity, width, data_tracking_resize, NULL) == 0;
            exact &= g_data_live == bst_data_memory_bytes(capacity, width);
        }
        bst_data_set_window(&d, w, movies + starts[w], ratings + starts[w], lens[w], users[w]);
        d.n = w + 1;
    }
    const int32_t width = d.seq_len;
    resized &= bst_data_resize(&d, n, width, data_tracking_resize, NULL) == 0;
    CHECK(resized, "%s: a resize failed", name);
    CHECK(exact, "%s: while growing, the arrays held other than bst_data_memory_bytes", name);
    CHECK(g_data_live == bst_data_memory_bytes(n, width),
          "%s: %lld windows of %d hold %zu bytes, bst_data_memory_bytes says %zu", name,
          (long long)n, width, g_data_live, bst_data_memory_bytes(n, width));
    printf("  %s: %lld windows of %d positions: %zu bytes (%zu a window), peak while read %zu\n",
           name, (long long)n, width, g_data_live, bst_data_memory_bytes(1, width), g_data_peak);

    /* Narrower and back: every history fits the longest window's length. */
    if (seq_len == 0 && width > 2) {
        int32_t longest_hist = 0;
        for (int64_t w = 0; w < n; w++)
            if (d.hist_len[w] > longest_hist)
                longest_hist = d.hist_len[w];
        if (longest_hist + 1 < width) {
            CHECK(bst_data_resize(&d, n, longest_hist + 1, data_tracking_resize, NULL) == 0 &&
                      bst_data_resize(&d, n, width, data_tracking_resize, NULL) == 0,
                  "%s: narrower and back", name);
        }
        CHECK(bst_data_resize(&d, n - 1, width, data_tracking_resize, NULL) == -1,
              "%s: a capacity below the windows held is refused", name);
        g_data_fail_at = 2;  /* the ratings' resize */
        CHECK(bst_data_resize(&d, n, width + 3, data_tracking_resize, NULL) == -1 &&
                  d.seq_len == width,
              "%s: a failed resize keeps the layout", name);
        g_data_fail_at = 0;
        CHECK(bst_data_resize(&d, n, width, data_tracking_resize, NULL) == 0 &&
                  g_data_live == bst_data_memory_bytes(n, width),
              "%s: cut to size again after a failed resize", name);
    }

    /* Mapped by a model of that length: as bst_model_pack_window packs. */
    BstConfig cfg;
    bst_config_default(&cfg, n_movies, width < 2 ? 2 : width);
    cfg.embed_dim = 2;
    cfg.heads = 1;
    cfg.n_hidden = 1;
    cfg.hidden[0] = 2;
    cfg.n_users = n_users;
    BstModel *m = model_for(&cfg, 3);
    CHECK(m != NULL, "%s: model", name);
    if (m && width == cfg.seq_len) {
        int same = 1;
        for (int pass = 0; pass < 2; pass++) {
            const int map_users = pass == 0;
            BstData mapped = d;
            int32_t *mv = malloc((size_t)n * width * sizeof(int32_t));
            int32_t *us = malloc((size_t)n * sizeof(int32_t));
            memcpy(mv, d.movies, (size_t)n * width * sizeof(int32_t));
            memcpy(us, d.users, (size_t)n * sizeof(int32_t));
            mapped.movies = mv;
            mapped.users = us;
            bst_data_map_ids(&mapped, m, 0, n / 3, map_users);
            bst_data_map_ids(&mapped, m, n / 3, n, map_users);
            int32_t *pm = malloc((size_t)width * sizeof(int32_t));
            float *pr = new_floats((size_t)width);
            for (int64_t w = 0; w < n; w++) {
                const int32_t hist = bst_model_pack_window(m, movies + starts[w], ratings + starts[w],
                                                           lens[w], pm, pr);
                same &= hist == mapped.hist_len[w] &&
                        memcmp(pm, mapped.movies + w * width, (size_t)width * sizeof(int32_t)) == 0 &&
                        memcmp(pr, mapped.ratings + w * (width - 1),
                               (size_t)(width - 1) * sizeof(float)) == 0 &&
                        mapped.targets[w] == ratings[starts[w + 1] - 1] &&
                        mapped.users[w] == (map_users ? bst_model_user_index(m, users[w]) : 0);
            }
            free(pm);
            free(pr);
            free(mv);
            free(us);
        }
        CHECK(same, "%s: the windows differ from bst_model_pack_window's", name);
    }
    bst_model_free(m);
    data_tracking_free(&d);
    CHECK(g_data_live == 0, "%s: %zu bytes left", name, g_data_live);
    free(lens);
    free(starts);
    free(movies);
    free(ratings);
    free(users);
}

static void test_data_memory(BstRng *rng)
{
    check_data_set("the longest window's length", 1000, 7, 0, 40, 9, rng);
    check_data_set("a fixed length, longer windows cut", 777, 9, 5, 40, 9, rng);
    check_data_set("windows of one movie", 50, 1, 0, 40, 0, rng);
    CHECK(bst_data_memory_bytes(498500, 4) == (size_t)498500 * 40,
          "40 bytes a window of 4: 4 movies, 3 ratings, history length, user, target");
    CHECK(bst_data_memory_bytes(1, 0) == SIZE_MAX && bst_data_memory_bytes(INT64_MAX, 1024) == SIZE_MAX,
          "bst_data_memory_bytes: no length, or an overflow");
}

/* bst_predictor_memory_bytes and bst_trainer_memory_bytes against what
 * creating one allocates, to the byte; no trainer when train_batch is 0. */
static void check_workspace_memory(const char *name, const BstConfig *cfg, int32_t max_batch,
                                   int32_t train_batch)
{
    track_start();
    BstModel *m = model_for(cfg, 2);
    const size_t model_bytes = g_total;
    BstPredictor *p = m ? bst_predictor_create(m, max_batch) : NULL;
    const size_t predictor_bytes = g_total - model_bytes;
    const int32_t batch = p ? bst_predictor_batch(p) : 0;
    bst_predictor_free(p);
    BstTrainOptions o = {BST_OPT_ADAM, 0.01f, train_batch, 1, 0.0f};
    const size_t trainer_from = g_total;
    BstTrainer *t = m && train_batch ? bst_trainer_create(m, &o) : NULL;
    const size_t trainer_bytes = g_total - trainer_from;
    bst_trainer_free(t);
    bst_model_free(m);
    const size_t left = g_live;
    track_stop();

    const size_t per_window = bst_acts_memory_bytes(cfg, 1, BST_ACTS_INFERENCE);
    const size_t predictor_est = bst_predictor_memory_bytes(cfg, max_batch);
    const size_t trainer_est = train_batch ? bst_trainer_memory_bytes(cfg, &o) : 0;
    printf("  %s: predictor for %d windows takes %d: %zu bytes = %.2f MiB (estimate %zu); "
           "trainer for %d: %zu bytes (estimate %zu)\n",
           name, max_batch, batch, predictor_bytes, mib(predictor_bytes), predictor_est,
           train_batch, trainer_bytes, trainer_est);
    CHECK(p && (t || !train_batch) && left == 0, "%s: create (%zu bytes left)", name, left);
    CHECK(batch == bst_predictor_batch_limit(cfg, max_batch), "%s: batch %d, limit %d", name,
          batch, bst_predictor_batch_limit(cfg, max_batch));
    CHECK(predictor_bytes == predictor_est, "%s: predictor allocated %zu bytes, estimated %zu",
          name, predictor_bytes, predictor_est);
    CHECK(trainer_bytes == trainer_est, "%s: trainer allocated %zu bytes, estimated %zu", name,
          trainer_bytes, trainer_est);
    /* Every inference buffer is per window, so the budget divides exactly. */
    CHECK(bst_acts_memory_bytes(cfg, batch, BST_ACTS_INFERENCE) == (size_t)batch * per_window,
          "%s: inference activations are not %d times one window's", name, batch);
    CHECK(predictor_bytes <= BST_PREDICTOR_MEMORY_BUDGET || batch == 1,
          "%s: %zu bytes for %d windows, over the budget", name, predictor_bytes, batch);
    CHECK(batch == max_batch || predictor_bytes + per_window > BST_PREDICTOR_MEMORY_BUDGET,
          "%s: %d windows of %d, but another would fit the budget", name, batch, max_batch);
}

static void test_workspace_memory(void)
{
    BstConfig cfg;
    tiny_config(&cfg);
    check_workspace_memory("4 positions", &cfg, 100, BATCH);
    feature_config(&cfg, 8);
    check_workspace_memory("every input, 8 positions", &cfg, 256, 16);
    tiny_config(&cfg);
    cfg.seq_len = 64;
    cfg.heads = 4;
    check_workspace_memory("64 positions, 4 heads", &cfg, 1024, 8);
    feature_config(&cfg, 1024);
    cfg.heads = 4;
    check_workspace_memory("every input, 1024 positions, 4 heads", &cfg, 256, 1);
    /* One window over the budget (its attention probabilities alone fill
     * it) still gets its predictor. */
    tiny_config(&cfg);
    cfg.seq_len = 1024;
    cfg.heads = 16;
    check_workspace_memory("1024 positions, 16 heads", &cfg, 256, 0);
}

/*
 * The inference layout (no masks or statistics, dropout outputs sharing
 * their inputs' buffers) computes the same bits as the training layout run
 * in inference mode, which is how predictors ran before; and it refuses a
 * training forward.
 */
static void test_inference_layout(BstRng *rng)
{
    enum { LM = 8, N = 6 };
    BstModel *m = feature_model(LM, 5);
    BstData d = random_windows(N, LM, N_MOVIES, 5, rng);
    BstBatch b = {.n = N, .movies = d.movies, .ratings = d.ratings, .hist_len = d.hist_len,
                  .users = d.users};
    for (int threads = 1; threads <= 2; threads++) {
        use_threads(threads);
        BstActs train_acts, infer_acts;
        int ok = m && bst_acts_alloc(&train_acts, &m->cfg, N, BST_ACTS_TRAINING) == 0 &&
                 bst_acts_alloc(&infer_acts, &m->cfg, N, BST_ACTS_INFERENCE) == 0;
        CHECK(ok, "inference layout: create");
        if (!ok)
            break;
        bst_forward(m, &train_acts, &b, 0, NULL);
        bst_forward(m, &infer_acts, &b, 0, NULL);
        CHECK(memcmp(train_acts.pred, infer_acts.pred, N * sizeof(float)) == 0,
              "%d thread(s): the inference layout predicts other bits", threads);
        CHECK(isnan(bst_forward(m, &infer_acts, &b, 1, NULL)),
              "a training forward ran on inference activations");
        printf("  %d thread(s): inference activations %zu bytes for %d windows, training "
               "layout %zu, same predictions\n",
               threads, bst_acts_memory_bytes(&m->cfg, N, BST_ACTS_INFERENCE), N,
               bst_acts_memory_bytes(&m->cfg, N, BST_ACTS_TRAINING));
        bst_acts_free(&train_acts);
        bst_acts_free(&infer_acts);
    }
    use_threads(1);
    free_windows(&d);
    bst_model_free(m);
}

/*
 * A model of 1024 positions and 4 heads: its predictor, asked for 256
 * windows (as the extension asks), stays within the budget, and predicts in
 * chunks (full ones and a partial one) what it predicts one window at a
 * time.
 */
static void test_long_window_predictor(BstRng *rng)
{
    enum { LM = 1024, ASKED = 256 };
    BstConfig cfg;
    feature_config(&cfg, LM);
    cfg.heads = 4;
    /* Tracked from the model on: every block is freed by the allocator of
     * its creation. */
    track_start();
    BstModel *m = feature_model_of(&cfg, 6);
    const size_t model_bytes = g_total;
    BstPredictor *p = m ? bst_predictor_create(m, ASKED) : NULL;
    const size_t bytes = g_total - model_bytes;
    BstPredictor *single = m ? bst_predictor_create(m, 1) : NULL;
    CHECK(p && single, "long windows: create");
    if (!p || !single) {
        bst_predictor_free(p);
        bst_predictor_free(single);
        bst_model_free(m);
        track_stop();
        return;
    }
    const int32_t batch = bst_predictor_batch(p);
    /* What the same request got before the budget: the training layout for
     * as many windows as the attention limit allowed. */
    const int32_t old_batch = bst_attention_batch_limit(&cfg, ASKED);
    const size_t old_bytes = bytes - bst_acts_memory_bytes(&cfg, batch, BST_ACTS_INFERENCE) +
                             bst_acts_memory_bytes(&cfg, old_batch, BST_ACTS_TRAINING);
    printf("  %d positions, %d heads, asked for %d windows: %d per pass, %zu bytes = %.1f MiB "
           "(budget %.0f MiB; the training layout for %d windows: %.1f MiB)\n",
           LM, cfg.heads, ASKED, batch, bytes, mib(bytes), mib(BST_PREDICTOR_MEMORY_BUDGET),
           old_batch, mib(old_bytes));
    CHECK(bytes <= BST_PREDICTOR_MEMORY_BUDGET && batch > 1 && batch < ASKED,
          "long windows: %d windows in %zu bytes", batch, bytes);

    const int32_t n = 2 * batch + 1;
    BstData d = random_windows(n, LM, N_MOVIES, 5, rng);
    d.hist_len[0] = LM - 1;  /* a full window too */
    for (int32_t i = 0; i < LM; i++)
        d.movies[i] = 1 + i % N_MOVIES;
    for (int32_t i = 0; i < LM - 1; i++)
        d.ratings[i] = (float)(1 + i % 5);
    float *chunked = new_floats((size_t)n), *alone = new_floats((size_t)n);
    BstBatch all = {.n = n, .movies = d.movies, .ratings = d.ratings, .hist_len = d.hist_len,
                    .users = d.users};
    bst_predict(p, &all, chunked);
    for (int32_t i = 0; i < n; i++) {
        BstBatch one = {.n = 1, .movies = d.movies + (size_t)i * LM,
                        .ratings = d.ratings + (size_t)i * (LM - 1), .hist_len = d.hist_len + i,
                        .users = d.users + i};
        bst_predict(single, &one, &alone[i]);
    }
    double worst = 0.0;
    int same = 0;
    for (int32_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs((double)chunked[i] - alone[i]) / fmax(1.0, fabs(alone[i])));
        same += memcmp(&chunked[i], &alone[i], sizeof(float)) == 0;
    }
    printf("  %d windows in chunks of %d vs one at a time: %d of %d bit for bit, worst "
           "relative difference %.1e\n",
           n, batch, same, n, worst);
    CHECK(worst <= 1e-6, "long windows: chunked predictions differ by %.3e", worst);
    free(chunked);
    free(alone);
    free_windows(&d);
    bst_predictor_free(p);
    bst_predictor_free(single);
    bst_model_free(m);
    track_stop();
}

static void count_chunk(void *arg, int32_t epoch, int64_t chunk, int64_t n_chunks,
                        double running_loss)
{
    int64_t *seen = arg;
    (void)running_loss;
    if (epoch == 0 && chunk == seen[0])
        seen[0]++;
    seen[1] = n_chunks;
}

/* Evaluation goes in chunks of the predictor's batch and scores exactly
 * what bst_predict predicts. */
static void test_evaluate_chunks(BstRng *rng)
{
    BstConfig cfg;
    tiny_config(&cfg);
    cfg.seq_len = 64;
    cfg.heads = 4;
    BstModel *m = model_for(&cfg, 3);
    BstPredictor *p = m ? bst_predictor_create(m, 1024) : NULL;
    CHECK(p != NULL, "evaluate: create");
    if (!p) {
        bst_model_free(m);
        return;
    }
    const int32_t batch = bst_predictor_batch(p);
    const int64_t n = 2 * (int64_t)batch + 7;
    BstData d = random_windows(n, cfg.seq_len, cfg.n_movies, 0, rng);
    float *pred = new_floats((size_t)n);
    BstBatch all = {.n = (int32_t)n, .movies = d.movies, .ratings = d.ratings,
                    .hist_len = d.hist_len, .users = d.users};
    bst_predict(p, &all, pred);
    double abs_sum = 0.0, sq_sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double e = (double)pred[i] - (double)d.targets[i];
        abs_sum += fabs(e);
        sq_sum += e * e;
    }
    int64_t seen[2] = {0, 0};
    BstFitHooks hooks = {count_chunk, NULL, seen};
    double mae = NAN, rmse = NAN;
    int rc = bst_evaluate_data(m, &d, &hooks, &mae, &rmse);
    printf("  evaluation of %lld windows of 64 positions: %lld chunks of up to %d, MAE %.6f\n",
           (long long)n, (long long)seen[0], batch, mae);
    CHECK(rc == 0 && seen[0] == 3 && seen[1] == 3, "evaluate: %lld of %lld chunks",
          (long long)seen[0], (long long)seen[1]);
    CHECK(mae == abs_sum / (double)n && rmse == sqrt(sq_sum / (double)n),
          "evaluate: MAE %.9g, RMSE %.9g; bst_predict's %.9g, %.9g", mae, rmse,
          abs_sum / (double)n, sqrt(sq_sum / (double)n));
    free(pred);
    free_windows(&d);
    bst_predictor_free(p);
    bst_model_free(m);
}

/*
 * OpenBLAS's generic x86-64 kernels (Prescott: SSE2, no FMA) and the ones
 * bst chooses for this CPU (blas_load.h) compute the same model within
 * rounding.  OpenBLAS picks its kernels once, when it loads, so each side
 * runs in a child process: this binary again, with OPENBLAS_CORETYPE set,
 * printing its kernels' name, then (hexadecimal floats) the predictions of a
 * freshly initialised model, its predictions after KERNELS_SHORT_STEPS
 * training steps, and after KERNELS_EPOCHS epochs the mean training loss and
 * the mean squared error on held-out windows.  The model has the default
 * widths (MLP 256, 128), so the sgemm calls are real blocked products.
 *
 * Tolerances:
 * - untrained predictions, 1e-4 (rating units, targets 1..5): the kernels
 *   sum the terms of each element in another order, with or without FMA; an
 *   inner dimension K changes an element by at most about K * 2^-24 of the
 *   sum of its terms' magnitudes (K <= 256: 1.5e-5), through a handful of
 *   products.  Measured: 4e-7.
 * - predictions after 2 steps, 1e-3: each step starts from slightly other
 *   weights, and Adagrad's first updates (each weight moves by about the
 *   learning rate, whatever its gradient's size) multiply the differences.
 *   Not after the third: there the loss falls from 12 to 4, and the
 *   differences grow 30 to 100 times in that one step, by the data's luck
 *   (this check's data: 1e-4 after 5 steps with one order of the
 *   projection's sums, 2e-2 with another; other data: the reverse), which
 *   says nothing about the kernels.  Measured: 5.9e-5.
 * - after 2 epochs, the held-out MSE within 25% (relative).  By then two
 *   trainings whose first steps differ in the last bits have drifted apart
 *   (predictions 0.03 apart on average), so only their quality compares,
 *   and it depends on the drift's luck: with the keys read from x (the
 *   tenth session), seven correct kernels gave 0.2412 (SkylakeX,
 *   Cooperlake) .. 0.2757 (Prescott), 14% apart, and before that change
 *   five gave 0.2412 .. 0.2752 (Haswell), where the 10% this check had
 *   allowed passed only for the pair it compares.  The first two checks are
 *   the sharp ones: they cover every sgemm variant of the forward and the
 *   backward pass.
 * A wrong kernel gives errors of the order of the ratings themselves.
 */
#define KERNELS_CHILD_ARG "--kernels-child"
enum { KERNELS_SHORT_STEPS = 2, KERNELS_EPOCHS = 2 };
#define KERNELS_MSE_TOLERANCE 0.25

static void kernels_child(const Data *train, const Data *eval)
{
    BstConfig cfg;
    bst_config_default(&cfg, N_MOVIES, L);
    BstModel *m = bst_model_create(&cfg, g_ids, 11);
    BstTrainOptions o = {BST_OPT_ADAGRAD, 0.05f, BATCH, 11, 0.0f};
    BstTrainer *t = m ? bst_trainer_create(m, &o) : NULL;
    BstPredictor *p = m ? bst_predictor_create(m, 256) : NULL;
    if (!t || !p)
        exit(3);
    float *out = new_floats((size_t)eval->n);
    BstBatch all = {eval->n, eval->movies, eval->ratings, NULL, NULL, NULL};
    printf("kernels %s\n", bst_blas.get_corename());
    bst_predict(p, &all, out);
    for (int32_t i = 0; i < eval->n; i++)
        printf("untrained %a\n", out[i]);
    double loss = 0.0;
    int steps = 0;
    for (int e = 0; e < KERNELS_EPOCHS; e++)
        for (int32_t s = 0; s < train->n; s += BATCH) {
            BstBatch b = slice(train, s, train->n - s < BATCH ? train->n - s : BATCH);
            loss += bst_train_step(t, &b, NULL);
            if (++steps == KERNELS_SHORT_STEPS) {
                bst_predict(p, &all, out);
                for (int32_t i = 0; i < eval->n; i++)
                    printf("short %a\n", out[i]);
            }
        }
    printf("loss %a\n", loss / steps);
    printf("mse %a\n", eval_mse(m, eval));
    free(out);
    bst_predictor_free(p);
    bst_trainer_free(t);
    bst_model_free(m);
}

typedef struct KernelRun {
    char kernels[64];
    double loss, mse;
    float *untrained, *short_trained;
    int32_t n_untrained, n_short;
} KernelRun;

/* Runs kernels_child() in this binary again with OPENBLAS_CORETYPE =
 * coretype; 0 when it ran and its output parsed. */
static int run_kernels_child(const char *coretype, int32_t n, KernelRun *run)
{
    memset(run, 0, sizeof(*run));
    run->untrained = new_floats((size_t)n);
    run->short_trained = new_floats((size_t)n);
    int out[2];
    if (pipe(out) != 0)
        return -1;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, out[0]);
    posix_spawn_file_actions_addclose(&actions, out[1]);
    /* The child inherits the environment as it is at the spawn. */
    const char *saved = getenv("OPENBLAS_CORETYPE");
    char *restore = saved ? strdup(saved) : NULL;
    setenv("OPENBLAS_CORETYPE", coretype, 1);
    char *argv[] = {"test_train", KERNELS_CHILD_ARG, NULL};
    extern char **environ;
    pid_t pid;
    int spawned = posix_spawn(&pid, "/proc/self/exe", &actions, NULL, argv, environ);
    if (restore)
        setenv("OPENBLAS_CORETYPE", restore, 1);
    else
        unsetenv("OPENBLAS_CORETYPE");
    free(restore);
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    if (spawned != 0) {
        close(out[0]);
        return -1;
    }
    FILE *f = fdopen(out[0], "r");
    char line[128], value[64];
    while (f && fgets(line, sizeof line, f)) {
        if (sscanf(line, "kernels %63s", run->kernels) == 1)
            continue;
        if (sscanf(line, "loss %63s", value) == 1)
            run->loss = strtod(value, NULL);
        else if (sscanf(line, "mse %63s", value) == 1)
            run->mse = strtod(value, NULL);
        else if (sscanf(line, "untrained %63s", value) == 1 && run->n_untrained < n)
            run->untrained[run->n_untrained++] = strtof(value, NULL);
        else if (sscanf(line, "short %63s", value) == 1 && run->n_short < n)
            run->short_trained[run->n_short++] = strtof(value, NULL);
    }
    if (f)
        fclose(f);
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return -1;
    return run->n_untrained == n && run->n_short == n && run->mse > 0.0 ? 0 : -1;
}

static double max_abs_diff(const float *a, const float *b, int32_t n)
{
    double worst = 0.0;
    for (int32_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)a[i] - b[i]));
    return worst;
}

static void test_kernels_agree(int32_t n_eval)
{
    const BstCpuFeatures cpu = bst_cpu_features();
    const BstKernelChoice choice = bst_kernels_for(&cpu);
    if (!choice.coretype) {
        printf("kernels: no choice to compare on this CPU (%s)\n", choice.reason);
        return;
    }
    static const char generic[] = "Prescott";
    KernelRun base, chosen;
    const int ok = run_kernels_child(generic, n_eval, &base) == 0 &&
                   run_kernels_child(choice.coretype, n_eval, &chosen) == 0;
    CHECK(ok, "kernels: a child run failed");
    if (ok) {
        CHECK(strcasecmp(base.kernels, generic) == 0 &&
                  strcasecmp(chosen.kernels, choice.coretype) == 0,
              "kernels: asked for %s and %s, OpenBLAS ran %s and %s", generic, choice.coretype,
              base.kernels, chosen.kernels);
        const double untrained = max_abs_diff(base.untrained, chosen.untrained, n_eval);
        const double short_trained = max_abs_diff(base.short_trained, chosen.short_trained, n_eval);
        const double mse = fabs(base.mse - chosen.mse) / base.mse;
        printf("kernels %s vs %s (%s): predictions differ by at most %.1e untrained, %.1e after "
               "%d steps; after %d epochs mean loss %.4f vs %.4f, held-out MSE %.4f vs %.4f\n",
               base.kernels, chosen.kernels, choice.reason, untrained, short_trained,
               KERNELS_SHORT_STEPS, KERNELS_EPOCHS, base.loss, chosen.loss, base.mse, chosen.mse);
        CHECK(untrained <= 1e-4, "kernels: untrained predictions differ by %.3e", untrained);
        CHECK(short_trained <= 1e-3, "kernels: predictions after %d steps differ by %.3e",
              KERNELS_SHORT_STEPS, short_trained);
        CHECK(mse <= KERNELS_MSE_TOLERANCE,
              "kernels: held-out MSE differs by %.1f%% (allowed %.0f%%)", 100.0 * mse,
              100.0 * KERNELS_MSE_TOLERANCE);
    }
    free(base.untrained);
    free(base.short_trained);
    free(chosen.untrained);
    free(chosen.short_trained);
}

/* The kernel choice by CPU class. */
static void test_kernel_choice(void)
{
    const BstCpuFeatures avx512 = {0, 1, 1}, zen = {1, 1, 0}, intel_avx2 = {0, 1, 0},
                         sse = {0, 0, 0};
    CHECK(strcmp(bst_kernels_for(&avx512).coretype, "SkylakeX") == 0, "AVX-512: not SkylakeX");
    CHECK(strcmp(bst_kernels_for(&zen).coretype, "Zen") == 0, "AMD AVX2: not Zen");
    CHECK(strcmp(bst_kernels_for(&intel_avx2).coretype, "Haswell") == 0, "AVX2: not Haswell");
    CHECK(bst_kernels_for(&sse).coretype == NULL, "no AVX2: bst chose kernels");
    const BstCpuFeatures here = bst_cpu_features();
    printf("kernels: bst chooses %s on this CPU (%s); %s\n",
           bst_kernels_for(&here).coretype ? bst_kernels_for(&here).coretype : "nothing",
           bst_kernels_for(&here).reason, bst_compute_description());
}

/*
 * Frozen predictors (bst_predictor_create_frozen, src/core/infer.c) against
 * the plain inference path (bst_forward through bst_predictor_create).
 *
 * Tolerance: 1e-4 relative to max(1, |prediction|), the bound
 * test_kernels_agree uses between BLAS kernels, for the same reason.  The
 * frozen path computes every value of the forward pass by the same formulas
 * in float, but sums in other orders: the projections as lookups of E Wc
 * and P Wc (a row r (e + p) Wc rather than (r (e + p)) Wc), the value
 * projection folded into the output projection (v_h Wo_h as x (Wv_h Wo_h)),
 * the products as in-order fused chains rather than sgemm's blocks.  Each
 * reordering changes a sum of K terms by at most about K * 2^-24 of the sum
 * of its terms' magnitudes (K <= 256 here: 1.5e-5), through a handful of
 * layers whose LayerNorms keep magnitudes near 1.  Measured: about 1e-6.  A
 * wrong formula (a missed bias, position, rating, mask or feature) shows as
 * differences of the order of the predictions' spread, which each case
 * checks is far larger (at least 1e-2).
 *
 * Bit for bit: a window alone and in a batch, on 1 and 2 threads, with each
 * instruction set this CPU has (and the portable fmaf loop); the attention
 * weights of bst_predict_attention within the same tolerance; and the bytes
 * allocated equal to bst_predictor_frozen_memory_bytes.
 */
static double frozen_max_diff(const float *a, const float *b, int32_t n)
{
    double worst = 0.0;
    for (int32_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)a[i] - b[i]) / fmax(1.0, fabs((double)b[i])));
    return isnan(worst) ? INFINITY : worst;
}

static int frozen_same_bits(const float *a, const float *b, int32_t n)
{
    return memcmp(a, b, (size_t)n * sizeof(float)) == 0;
}

/* Moving statistics away from their initial values, so that BatchNorm's
 * inference arithmetic is exercised. */
static void frozen_randomize_bn(BstModel *m, BstRng *rng)
{
    for (int i = 0; i < m->cfg.n_hidden; i++) {
        fill_uniform(m->bn.moving_mean[i], (size_t)m->cfg.hidden[i], -0.2f, 0.2f, rng);
        fill_uniform(m->bn.moving_var[i], (size_t)m->cfg.hidden[i], 0.5f, 1.5f, rng);
    }
}

/* Predictions of windows d[0..n) by a frozen predictor of m, one pass. */
static int frozen_predict(const BstModel *m, const BstData *d, int32_t n, size_t budget,
                          float *out, BstPredictorPath *path)
{
    BstPredictor *p = bst_predictor_create_frozen(m, n, budget);
    if (!p)
        return 0;
    BstBatch b = {.n = n, .movies = d->movies, .ratings = d->ratings, .hist_len = d->hist_len,
                  .users = d->users};
    bst_predict(p, &b, out);
    if (path)
        *path = bst_predictor_path(p);
    bst_predictor_free(p);
    return 1;
}

static void check_frozen(const char *name, BstModel *m, int32_t n, BstRng *rng)
{
    const BstConfig *c = &m->cfg;
    const int32_t L = c->seq_len;
    const BstInferIsa isa = bst_infer_isa();
    frozen_randomize_bn(m, rng);
    BstData d = random_windows(n, L, c->n_movies, c->n_users, rng);
    /* A full window and an out-of-vocabulary movie too. */
    d.hist_len[0] = L - 1;
    for (int32_t i = 0; i < L; i++)
        d.movies[i] = 1 + (i * 7) % c->n_movies;
    for (int32_t i = 0; i < L - 1; i++)
        d.ratings[i] = (float)(1 + i % 5);
    d.movies[L + L - 1] = 0;
    BstBatch all = {.n = n, .movies = d.movies, .ratings = d.ratings, .hist_len = d.hist_len,
                    .users = d.users};
    float *plain = new_floats((size_t)n), *table = new_floats((size_t)n);
    float *direct = new_floats((size_t)n), *alone = new_floats((size_t)n);
    float *other = new_floats((size_t)n);

    BstPredictor *ref = bst_predictor_create(m, n);
    bst_predict(ref, &all, plain);
    BstPredictorPath table_path = BST_PREDICTOR_SGEMM, direct_path = BST_PREDICTOR_SGEMM;
    int ok = frozen_predict(m, &d, n, BST_PREDICTOR_TABLE_BUDGET, table, &table_path) &&
             frozen_predict(m, &d, n, 0, direct, &direct_path);
    CHECK(ok && table_path == BST_PREDICTOR_TABLE && direct_path == BST_PREDICTOR_DIRECT,
          "%s: frozen predictors (paths %d, %d)", name, (int)table_path, (int)direct_path);

    /* One window at a time, through the predictor the extension keeps. */
    BstPredictor *single = bst_predictor_create_frozen(m, 256, BST_PREDICTOR_TABLE_BUDGET);
    float attention[2][64 * 64];
    double attention_diff = 0.0;
    for (int32_t i = 0; i < n; i++) {
        BstBatch one = {.n = 1, .movies = d.movies + (size_t)i * L,
                        .ratings = d.ratings + (size_t)i * (L - 1), .hist_len = d.hist_len + i,
                        .users = d.users + i};
        float ref_one;
        bst_predict_attention(single, &one, &alone[i], attention[0]);
        bst_predict_attention(ref, &one, &ref_one, attention[1]);
        attention_diff = fmax(attention_diff, frozen_max_diff(attention[0], attention[1],
                                                              c->heads * L));
    }

    double lo = INFINITY, hi = -INFINITY;
    for (int32_t i = 0; i < n; i++) {
        lo = fmin(lo, plain[i]);
        hi = fmax(hi, plain[i]);
    }
    const double table_diff = frozen_max_diff(table, plain, n);
    const double direct_diff = frozen_max_diff(direct, plain, n);
    printf("  %s: %d windows, predictions %.3f .. %.3f; table %.1e, no table %.1e, attention "
           "%.1e from bst_forward (%s)\n",
           name, n, lo, hi, table_diff, direct_diff, attention_diff, bst_infer_isa_name(isa));
    CHECK(hi - lo >= 1e-2, "%s: predictions spread only %.2e: the comparison proves little",
          name, hi - lo);
    CHECK(table_diff <= 1e-4, "%s: with the table, predictions differ by %.3e", name,
          table_diff);
    CHECK(direct_diff <= 1e-4, "%s: without the table, predictions differ by %.3e", name,
          direct_diff);
    CHECK(attention_diff <= 1e-4, "%s: attention weights differ by %.3e", name, attention_diff);
    CHECK(frozen_same_bits(alone, table, n), "%s: a window alone and in a batch differ", name);

    /* A batch larger than the predictor's pass, in chunks of 7. */
    BstPredictor *small = bst_predictor_create_frozen(m, 7, BST_PREDICTOR_TABLE_BUDGET);
    bst_predict(small, &all, other);
    CHECK(bst_predictor_batch(small) == 7 && frozen_same_bits(other, table, n),
          "%s: predictions in chunks of 7 differ", name);
    bst_predictor_free(small);

    /* Two threads, every window split possible: the same bits. */
    use_threads(2);
    CHECK(frozen_predict(m, &d, n, BST_PREDICTOR_TABLE_BUDGET, other, NULL) &&
              frozen_same_bits(other, table, n),
          "%s: 2 threads differ from 1 (table)", name);
    CHECK(frozen_predict(m, &d, n, 0, other, NULL) && frozen_same_bits(other, direct, n),
          "%s: 2 threads differ from 1 (no table)", name);
    use_threads(1);

    /* Every instruction set this CPU has: the same bits. */
    static const BstInferIsa isas[] = {BST_ISA_PORTABLE, BST_ISA_AVX2, BST_ISA_AVX512};
    for (size_t k = 0; k < sizeof(isas) / sizeof(isas[0]); k++) {
        if (!bst_infer_force_isa(isas[k]))
            continue;
        CHECK(frozen_predict(m, &d, n, BST_PREDICTOR_TABLE_BUDGET, other, NULL) &&
                  frozen_same_bits(other, table, n),
              "%s: %s differs from %s (table)", name, bst_infer_isa_name(isas[k]),
              bst_infer_isa_name(isa));
        CHECK(frozen_predict(m, &d, n, 0, other, NULL) && frozen_same_bits(other, direct, n),
              "%s: %s differs from %s (no table)", name, bst_infer_isa_name(isas[k]),
              bst_infer_isa_name(isa));
    }
    bst_infer_force_isa(isa);

    /* Bytes allocated, with and without the table. */
    const size_t budgets[2] = {BST_PREDICTOR_TABLE_BUDGET, 0};
    for (int k = 0; k < 2; k++) {
        track_start();
        BstPredictor *p = bst_predictor_create_frozen(m, n, budgets[k]);
        const size_t bytes = g_total;
        bst_predictor_free(p);
        const size_t left = g_live;
        track_stop();
        const size_t est = bst_predictor_frozen_memory_bytes(c, n, budgets[k]);
        CHECK(p && left == 0 && bytes == est, "%s: frozen predictor allocated %zu bytes, "
              "estimated %zu (%zu left)", name, bytes, est, left);
    }

    bst_predictor_free(single);
    bst_predictor_free(ref);
    free(plain);
    free(table);
    free(direct);
    free(alone);
    free(other);
    free_windows(&d);
}

static void test_frozen_predictor(BstRng *rng)
{
    const BstInferIsa isa = bst_infer_isa();
    printf("frozen predictors (%s kernels; portable, AVX2, AVX-512 where this CPU has them)\n",
           bst_infer_isa_name(isa));
    if (isa == BST_ISA_NONE) {
        printf("  no fused multiply-add on this CPU: frozen predictors are plain ones\n");
        return;
    }
    BstConfig cfg;
    BstModel *m;

    /* The Keras example's shape (MLP 256, 128; d = 62 at 3,884 movies; here
     * fewer movies, so that the test stays fast): full-width kernel blocks
     * and partial ones. */
    bst_config_default(&cfg, 300, 4);
    cfg.embed_dim = 62;
    m = model_for(&cfg, 11);
    if (m)
        check_frozen("Keras shape, multiply", m, 200, rng);
    bst_model_free(m);

    tiny_config(&cfg);
    cfg.rating_add = 1;
    m = model_for(&cfg, 12);
    if (m)
        check_frozen("rating_add", m, 100, rng);
    bst_model_free(m);

    tiny_config(&cfg);
    cfg.n_genres = 5;
    cfg.seq_len = 6;
    m = model_for(&cfg, 13);
    if (m)
        check_frozen("genres, 6 positions", m, 100, rng);
    bst_model_free(m);

    feature_config(&cfg, 8);
    cfg.n_genres = 0;
    cfg.use_bias = 0;
    cfg.n_factors = 0;
    m = feature_model_of(&cfg, 14);
    if (m)
        check_frozen("user features, 8 positions", m, 100, rng);
    bst_model_free(m);

    /* Every input at once, rating_add, a model of 10 positions (the
     * defaults' shape) holding windows of every length. */
    feature_config(&cfg, 10);
    cfg.rating_add = 1;
    cfg.heads = 3;
    cfg.n_hidden = 3;
    cfg.hidden[2] = 5;
    m = feature_model_of(&cfg, 15);
    if (m)
        check_frozen("every input, rating_add, 10 positions", m, 150, rng);
    bst_model_free(m);

    feature_config(&cfg, 10);
    cfg.n_hidden = 0;
    m = feature_model_of(&cfg, 16);
    if (m)
        check_frozen("every input, no hidden layer", m, 60, rng);
    bst_model_free(m);

    /* Kernels beyond BST_KERNEL_COPY_BUDGET, read where the model keeps
     * them (the others above are read from aligned copies). */
    bst_config_default(&cfg, 300, 4);
    cfg.embed_dim = 62;
    cfg.hidden[0] = 17000;
    CHECK((size_t)bst_config_mlp_input(&cfg) * cfg.hidden[0] * sizeof(float) >
              BST_KERNEL_COPY_BUDGET,
          "the large model's kernels fit the copy budget");
    m = model_for(&cfg, 17);
    if (m)
        check_frozen("kernels beyond the copy budget", m, 20, rng);
    bst_model_free(m);
}

/* Frozen predictions of the extension's cache after training: a trained
 * model (weights far from their start) agrees as closely. */
static void test_frozen_trained(const Data *train, const Data *eval)
{
    BstConfig cfg;
    tiny_config(&cfg);
    cfg.n_genres = 2;
    BstModel *m = model_for(&cfg, 21);
    BstTrainOptions o = {BST_OPT_ADAM, 0.003f, BATCH, 1, 0.0f};
    BstTrainer *t = m ? bst_trainer_create(m, &o) : NULL;
    CHECK(t != NULL, "frozen, trained: create");
    if (!t) {
        bst_model_free(m);
        return;
    }
    /* train's movies are g_ids positions 1..N_MOVIES: vocabulary indices. */
    train_epochs(t, train, 3);
    bst_trainer_free(t);
    float *plain = new_floats((size_t)eval->n), *frozen = new_floats((size_t)eval->n);
    BstBatch b = {eval->n, eval->movies, eval->ratings, NULL, NULL, NULL};
    BstPredictor *p = bst_predictor_create(m, 256);
    BstPredictor *f = bst_predictor_create_frozen(m, 256, BST_PREDICTOR_TABLE_BUDGET);
    bst_predict(p, &b, plain);
    bst_predict(f, &b, frozen);
    double mse = 0.0;
    for (int32_t i = 0; i < eval->n; i++)
        mse += ((double)plain[i] - eval->targets[i]) * ((double)plain[i] - eval->targets[i]);
    const double diff = frozen_max_diff(frozen, plain, eval->n);
    /* The target's attention weights, which training has made unequal. */
    double attention_diff = 0.0, attention_spread = 0.0;
    for (int32_t i = 0; i < 50; i++) {
        BstBatch one = {1, eval->movies + (size_t)i * L, eval->ratings + (size_t)i * (L - 1),
                        NULL, NULL, NULL};
        float a[2][2 * L], pa, pf;
        bst_predict_attention(p, &one, &pa, a[0]);
        bst_predict_attention(f, &one, &pf, a[1]);
        attention_diff = fmax(attention_diff, frozen_max_diff(a[1], a[0], 2 * L));
        for (int j = 0; j < 2 * L; j++)
            attention_spread = fmax(attention_spread, fabs(a[0][j] - 1.0 / L));
    }
    printf("  trained 3 epochs (held-out MSE %.4f): frozen predictions within %.1e, attention "
           "weights (up to %.2f from uniform) within %.1e\n",
           mse / eval->n, diff, attention_spread, attention_diff);
    CHECK(diff <= 1e-4, "frozen, trained: predictions differ by %.3e", diff);
    CHECK(attention_diff <= 1e-4 && attention_spread > 1e-2,
          "frozen, trained: attention weights differ by %.3e (spread %.3e)", attention_diff,
          attention_spread);
    bst_predictor_free(p);
    bst_predictor_free(f);
    free(plain);
    free(frozen);
    bst_model_free(m);
}

int main(int argc, char **argv)
{
    use_threads(1);
    BstRng rng;
    bst_rng_seed(&rng, 77);
    float score[N_MOVIES + 1];
    for (int i = 0; i < N_MOVIES; i++) {
        g_ids[i] = 10 + 3 * i;
        score[i + 1] = 1.0f + 4.0f * bst_rng_uniform(&rng);
    }
    score[0] = 3.0f;
    Data train = make_data(N_TRAIN, score, &rng);
    Data eval = make_data(N_EVAL, score, &rng);
    if (argc > 1 && strcmp(argv[1], KERNELS_CHILD_ARG) == 0) {
        kernels_child(&train, &eval);
        free_data(&train);
        free_data(&eval);
        return 0;
    }

    test_config_check();
    test_kernel_choice();
    test_kernels_agree(eval.n);
    test_worker_signals();
    test_pool_lifecycle(&eval);
    test_stall_policy();
    test_learns(BST_OPT_ADAGRAD, "adagrad", 0.05f, &train, &eval);
    test_learns(BST_OPT_ADAM, "adam", 0.003f, &train, &eval);
    test_determinism(&train);
    test_update_shares(&train);
    test_simd_copies(&train);
    test_sparse_adam(&train);
    test_serialization(&train, &eval);
    test_format_v1();
    test_format_v2();
    test_padding_invisible();
    test_early_stopping(&train);
    test_training_facts(&train);
    test_allocator(&train);
    printf("memory bounds\n");
    BstRng mem_rng;
    bst_rng_seed(&mem_rng, 64);
    test_workspace_memory();
    test_inference_layout(&mem_rng);
    test_long_window_predictor(&mem_rng);
    test_evaluate_chunks(&mem_rng);
    test_fit_memory(&mem_rng);
    test_data_memory(&mem_rng);
    BstRng frozen_rng;
    bst_rng_seed(&frozen_rng, 65);
    test_frozen_predictor(&frozen_rng);
    test_frozen_trained(&train, &eval);

    free_data(&train);
    free_data(&eval);
    return test_summary("test_train");
}

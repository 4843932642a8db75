/*
 * Training on spilled windows (spill.h): the chunk files, the split and the
 * per-epoch scatter into buckets, the memory a spilled training holds, and
 * that it learns what a training in memory learns.
 *
 * The host's temporary files are played by growable byte buffers, which can
 * be told to fail.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bst_alloc.h"
#include "fit.h"
#include "model.h"
#include "spill.h"
#include "test_util.h"

#define L 5
#define N_MOVIES 60
#define N_USERS 40
#define BATCH 32
/* Raw ids are offset so that an unmapped id is never a valid index. */
#define MOVIE_ID0 1000
#define USER_ID0 5000

/* ------------------------------------------------------------ files */

typedef struct MemFile {
    unsigned char *buf;
    size_t len, cap, pos;
} MemFile;

static int g_open_files;
static long g_writes_left = -1;   /* writes that succeed before they fail; -1: all */

static void *mem_create(void *arg)
{
    (void)arg;
    MemFile *f = calloc(1, sizeof(MemFile));
    if (f)
        g_open_files++;
    return f;
}

static int mem_write(void *file, const void *buf, size_t bytes, void *arg)
{
    MemFile *f = file;
    (void)arg;
    if (g_writes_left == 0)
        return -1;
    if (g_writes_left > 0)
        g_writes_left--;
    if (f->len + bytes > f->cap) {
        size_t cap = f->cap ? f->cap : 4096;
        while (cap < f->len + bytes)
            cap *= 2;
        unsigned char *p = realloc(f->buf, cap);
        if (!p)
            return -1;
        f->buf = p;
        f->cap = cap;
    }
    memcpy(f->buf + f->len, buf, bytes);
    f->len += bytes;
    return 0;
}

static int mem_rewind(void *file, void *arg)
{
    (void)arg;
    ((MemFile *)file)->pos = 0;
    return 0;
}

static int mem_read(void *file, void *buf, size_t bytes, void *arg)
{
    MemFile *f = file;
    (void)arg;
    if (f->pos == f->len)
        return 0;
    if (f->len - f->pos < bytes)
        return -1;
    memcpy(buf, f->buf + f->pos, bytes);
    f->pos += bytes;
    return 1;
}

static void mem_close(void *file, void *arg)
{
    MemFile *f = file;
    (void)arg;
    free(f->buf);
    free(f);
    g_open_files--;
}

static const BstSpillIO g_io = {mem_create, mem_write, mem_rewind, mem_read, mem_close, NULL};

/* ------------------------------------------------------------ data */

/* Raw windows laid out at Lw: random lengths up to max_len (a longer one
 * keeps its last Lw), ids as read; the
 * target is learnable: 3 + the user's and the target movie's offsets. */
static BstData raw_windows(int64_t n, int32_t Lw, int32_t max_len, uint64_t seed)
{
    BstRng rng;
    bst_rng_seed(&rng, seed);
    BstData d = {0, Lw, malloc((size_t)n * Lw * sizeof(int32_t)),
                 new_floats((size_t)n * (Lw - 1)), malloc((size_t)n * sizeof(int32_t)),
                 malloc((size_t)n * sizeof(int32_t)), new_floats((size_t)n), NULL};
    int32_t movies[64];
    float ratings[64];
    if (!d.movies || !d.hist_len || !d.users) {
        perror("malloc");
        exit(2);
    }
    for (int64_t w = 0; w < n; w++) {
        const int32_t len = 1 + (int32_t)(bst_rng_next(&rng) % (uint64_t)max_len);
        const int32_t user = (int32_t)(bst_rng_next(&rng) % N_USERS);
        for (int32_t i = 0; i < len; i++) {
            movies[i] = (int32_t)(bst_rng_next(&rng) % N_MOVIES);
            ratings[i] = (float)(1 + bst_rng_next(&rng) % 5);
        }
        const float y = 3.0f + (float)(user % 5 - 2) * 0.4f +
                        (float)(movies[len - 1] % 3 - 1) * 0.6f +
                        0.3f * (bst_rng_uniform(&rng) - 0.5f);
        ratings[len - 1] = y;
        for (int32_t i = 0; i < len; i++)
            movies[i] += MOVIE_ID0;
        bst_data_set_window(&d, w, movies, ratings, len, USER_ID0 + user);
        d.n++;
    }
    return d;
}

static BstData copy_windows(const BstData *s)
{
    const size_t n = (size_t)s->n, Lw = (size_t)s->seq_len;
    BstData d = {s->n, s->seq_len, malloc(n * Lw * sizeof(int32_t)),
                 new_floats(n * (Lw - 1)), malloc(n * sizeof(int32_t)),
                 malloc(n * sizeof(int32_t)), new_floats(n), NULL};
    memcpy(d.movies, s->movies, n * Lw * sizeof(int32_t));
    memcpy(d.ratings, s->ratings, n * (Lw - 1) * sizeof(float));
    memcpy(d.hist_len, s->hist_len, n * sizeof(int32_t));
    memcpy(d.users, s->users, n * sizeof(int32_t));
    memcpy(d.targets, s->targets, n * sizeof(float));
    return d;
}

static void small_config(BstConfig *cfg)
{
    bst_config_default(cfg, N_MOVIES, L);
    cfg->embed_dim = 8;
    cfg->heads = 2;
    cfg->hidden[0] = 16;
    cfg->hidden[1] = 8;
    cfg->n_users = N_USERS;
    cfg->user_dim = 4;
    cfg->use_bias = 1;
}

static BstModel *new_model(const BstConfig *cfg, uint64_t seed)
{
    int32_t movie_ids[N_MOVIES], user_ids[N_USERS];
    for (int32_t i = 0; i < N_MOVIES; i++)
        movie_ids[i] = MOVIE_ID0 + i;
    for (int32_t i = 0; i < N_USERS; i++)
        user_ids[i] = USER_ID0 + i;
    BstVocab v = {movie_ids, user_ids, NULL, NULL};
    return bst_model_create_vocab(cfg, &v, seed);
}

static void options(BstFitOptions *o, float lr, float validation, int32_t epochs)
{
    memset(o, 0, sizeof(*o));
    o->train = (BstTrainOptions){BST_OPT_ADAGRAD, lr, BATCH, 7, 0.0f};
    o->epochs = epochs;
    o->validation_fraction = validation;
}

/* The windows as a spilled data set in a new file (raw ids, mapped by the
 * fit). */
typedef struct Spilled {
    BstSpill spill;
    BstData data;
} Spilled;

static void spill_windows(Spilled *s, const BstData *raw, int64_t bucket_windows)
{
    memset(s, 0, sizeof(*s));
    s->spill = (BstSpill){&g_io, mem_create(NULL), 1, 1, bucket_windows};
    CHECK(bst_spill_write(&g_io, s->spill.file, raw, 0, raw->n) == 0, "spill write");
    s->data.n = raw->n;
    s->data.seq_len = raw->seq_len;
    s->data.spill = &s->spill;
}

static void unspill(Spilled *s)
{
    mem_close(s->spill.file, NULL);
}

/* The windows mapped to m's vocabulary, in memory. */
static BstData mapped_windows(const BstData *raw, const BstModel *m)
{
    BstData d = copy_windows(raw);
    bst_data_map_ids(&d, m, 0, d.n, 1);
    return d;
}

static int same_window(const BstData *a, int64_t i, const BstData *b, int64_t j)
{
    const size_t Lw = (size_t)a->seq_len;
    return a->seq_len == b->seq_len &&
           memcmp(a->movies + i * Lw, b->movies + j * Lw, Lw * sizeof(int32_t)) == 0 &&
           memcmp(a->ratings + i * (Lw - 1), b->ratings + j * (Lw - 1),
                  (Lw - 1) * sizeof(float)) == 0 &&
           a->hist_len[i] == b->hist_len[j] && a->users[i] == b->users[j] &&
           a->targets[i] == b->targets[j];
}

/* ------------------------------------------------------------ tests */

/* Chunks written at two widths read back at the wider one, exactly as
 * windows laid out at it; reads that do not fit fail. */
static void test_chunks(void)
{
    BstData narrow = raw_windows(2500, 3, 3, 11), wide = raw_windows(1500, L, L + 2, 12);
    BstData expect = raw_windows(2500, L, 3, 11);   /* the same windows, laid out at L */
    void *file = mem_create(NULL);
    CHECK(bst_spill_write(&g_io, file, &narrow, 0, 1000) == 0 &&
              bst_spill_write(&g_io, file, &narrow, 1000, 2500) == 0 &&
              bst_spill_write(&g_io, file, &wide, 0, 1500) == 0,
          "writing chunks");

    BstData buf = raw_windows(BST_SPILL_CHUNK_WINDOWS, L, L, 1);
    int64_t seen = 0, k, chunks = 0, mismatched = 0;
    g_io.rewind(file, NULL);
    while ((k = bst_spill_read(&g_io, file, &buf, 0, BST_SPILL_CHUNK_WINDOWS)) > 0) {
        for (int64_t w = 0; w < k; w++, seen++)
            mismatched += seen < 2500 ? !same_window(&buf, w, &expect, seen)
                                      : !same_window(&buf, w, &wide, seen - 2500);
        chunks++;
        CHECK(buf.n == k && buf.seq_len == L, "a chunk read sets n and keeps the width");
    }
    CHECK(k == 0 && seen == 4000, "read %lld windows of 4000 (last read %lld)", (long long)seen,
          (long long)k);
    /* 1000 in 1; 1500 in 2; 1500 in 2 */
    CHECK(chunks == 5, "%lld chunks of at most %d windows, expected 5", (long long)chunks,
          BST_SPILL_CHUNK_WINDOWS);
    CHECK(mismatched == 0, "%lld windows differ from their layout at %d", (long long)mismatched, L);

    /* A chunk of 1000 into room for 999; a narrower chunk not at 0; a wide
     * chunk into a narrow buffer; reading from within a chunk. */
    g_io.rewind(file, NULL);
    CHECK(bst_spill_read(&g_io, file, &buf, 0, 999) == -1, "a chunk larger than the room");
    g_io.rewind(file, NULL);
    CHECK(bst_spill_read(&g_io, file, &buf, 1, BST_SPILL_CHUNK_WINDOWS) == -1,
          "a narrower chunk after other windows");
    BstData small = raw_windows(BST_SPILL_CHUNK_WINDOWS, 3, 3, 2);
    void *wide_file = mem_create(NULL);
    bst_spill_write(&g_io, wide_file, &wide, 0, 10);
    g_io.rewind(wide_file, NULL);
    CHECK(bst_spill_read(&g_io, wide_file, &small, 0, BST_SPILL_CHUNK_WINDOWS) == -1,
          "a wider chunk than the buffer");
    ((MemFile *)file)->pos = 8;
    CHECK(bst_spill_read(&g_io, file, &buf, 0, BST_SPILL_CHUNK_WINDOWS) == -1,
          "reading from within a chunk");
    ((MemFile *)wide_file)->len -= 4;
    g_io.rewind(wide_file, NULL);
    CHECK(bst_spill_read(&g_io, wide_file, &buf, 0, BST_SPILL_CHUNK_WINDOWS) == -1,
          "a truncated chunk");
    mem_close(file, NULL);
    mem_close(wide_file, NULL);
    free_windows(&narrow);
    free_windows(&wide);
    free_windows(&expect);
    free_windows(&buf);
    free_windows(&small);
}

/* Epochs at a learning rate of 1e-30: the weights do not move (beyond
 * rounding of those at 0), and without BatchNorm (no hidden layers) or
 * dropout a window's prediction does not depend on its batch, so an epoch's training
 * MAE is the mean over the windows it visited.  Any bucket size
 * gives the one of a training in memory: every window once, none twice. */
static void test_every_window_once(void)
{
    BstConfig cfg;
    BstFitOptions o;
    BstData raw = raw_windows(3000, L, L + 2, 21);
    small_config(&cfg);
    cfg.n_hidden = 0;
    cfg.dropout = 0.0f;
    options(&o, 1e-30f, 0.0f, 2);

    BstModel *m = new_model(&cfg, 3);
    BstData mapped = mapped_windows(&raw, m);
    BstFitResult ref, r;
    CHECK(bst_fit(m, &mapped, &o, NULL, &ref) == BST_FIT_OK, "in memory");
    bst_model_free(m);

    const int64_t buckets[] = {BATCH, 5 * BATCH, 3008};
    for (int i = 0; i < 3; i++) {
        Spilled s;
        spill_windows(&s, &raw, buckets[i]);
        m = new_model(&cfg, 3);
        BstFitStatus st = bst_fit(m, &s.data, &o, NULL, &r);
        CHECK(st == BST_FIT_OK, "bucket %lld: status %d", (long long)buckets[i], (int)st);
        CHECK(r.n_train == 3000 && r.epochs_run == 2, "bucket %lld: %lld windows, %d epochs",
              (long long)buckets[i], (long long)r.n_train, r.epochs_run);
        /* Sums in other orders; a window missing or twice moves them by
         * about 1e-4. */
        CHECK(fabs(r.best.mae - ref.best.mae) < 1e-7 * ref.best.mae &&
                  fabs(r.best.loss - ref.best.loss) < 1e-6 * ref.best.loss,
              "bucket %lld: epoch MAE %.12f, loss %.12f; in memory %.12f, %.12f",
              (long long)buckets[i], r.best.mae, r.best.loss, ref.best.mae, ref.best.loss);
        CHECK(r.train_mean == ref.train_mean, "bucket %lld: mean target %.9f, in memory %.9f",
              (long long)buckets[i], r.train_mean, ref.train_mean);
        CHECK(g_open_files == 1, "bucket %lld: %d files open after the fit, expected 1",
              (long long)buckets[i], g_open_files);
        bst_model_free(m);
        unspill(&s);
    }

    /* With validation: the split does not depend on the buckets. */
    options(&o, 1e-30f, 0.2f, 1);
    double val_mae[2];
    for (int i = 0; i < 2; i++) {
        Spilled s;
        spill_windows(&s, &raw, i ? 2 * BATCH : 7 * BATCH);
        m = new_model(&cfg, 3);
        CHECK(bst_fit(m, &s.data, &o, NULL, &r) == BST_FIT_OK, "split %d", i);
        CHECK(r.n_val == 600 && r.n_train == 2400, "split %d: %lld validation, %lld training", i,
              (long long)r.n_val, (long long)r.n_train);
        val_mae[i] = r.best.val_mae;
        bst_model_free(m);
        unspill(&s);
    }
    CHECK(fabs(val_mae[0] - val_mae[1]) < 1e-12, "validation MAE %.12f and %.12f", val_mae[0],
          val_mae[1]);
    free_windows(&mapped);
    free_windows(&raw);
}

/* Bit for bit again for a seed and bucket size; another bucket size is
 * another order, so other weights. */
static void test_deterministic(void)
{
    BstConfig cfg;
    BstFitOptions o;
    BstData raw = raw_windows(2000, L, L + 2, 31);
    BstModel *m[3];
    small_config(&cfg);
    options(&o, 0.05f, 0.1f, 2);
    for (int i = 0; i < 3; i++) {
        Spilled s;
        BstFitResult r;
        spill_windows(&s, &raw, i < 2 ? 4 * BATCH : 8 * BATCH);
        m[i] = new_model(&cfg, 5);
        CHECK(bst_fit(m[i], &s.data, &o, NULL, &r) == BST_FIT_OK, "run %d", i);
        unspill(&s);
    }
    const size_t bytes = m[0]->params.size * sizeof(float);
    CHECK(memcmp(m[0]->params.slab, m[1]->params.slab, bytes) == 0,
          "two runs with one seed and bucket differ");
    CHECK(memcmp(m[0]->params.slab, m[2]->params.slab, bytes) != 0,
          "another bucket size gave the same weights");
    for (int i = 0; i < 3; i++)
        bst_model_free(m[i]);
    free_windows(&raw);
}

/* Learnable data: spilled in buckets of 4 batches, the model gets about as
 * close as in memory, and far closer than the mean does. */
static void test_learns(void)
{
    BstConfig cfg;
    BstFitOptions o;
    BstData raw = raw_windows(8000, L, L + 2, 41);
    BstFitResult mem, spilled;
    small_config(&cfg);
    options(&o, 0.05f, 0.2f, 6);
    o.bias_init = 1;

    BstModel *m = new_model(&cfg, 9);
    BstData mapped = mapped_windows(&raw, m);
    CHECK(bst_fit(m, &mapped, &o, NULL, &mem) == BST_FIT_OK, "in memory");
    bst_model_free(m);
    Spilled s;
    spill_windows(&s, &raw, 4 * BATCH);
    m = new_model(&cfg, 9);
    CHECK(bst_fit(m, &s.data, &o, NULL, &spilled) == BST_FIT_OK, "spilled");
    bst_model_free(m);
    unspill(&s);

    /* The mean's error: the targets spread over about +-1.5. */
    double mean = 0.0, mean_error = 0.0;
    for (int64_t w = 0; w < raw.n; w++)
        mean += raw.targets[w] / (double)raw.n;
    for (int64_t w = 0; w < raw.n; w++)
        mean_error += fabs(raw.targets[w] - mean) / (double)raw.n;
    printf("  validation MAE: in memory %.4f, spilled in buckets of %d windows %.4f; the mean's %.4f\n",
           mem.best.val_mae, 4 * BATCH, spilled.best.val_mae, mean_error);
    CHECK(spilled.best.val_mae < 0.5 * mean_error, "spilled MAE %.4f, the mean's %.4f",
          spilled.best.val_mae, mean_error);
    CHECK(fabs(spilled.best.val_mae - mem.best.val_mae) < 0.05 * mem.best.val_mae,
          "spilled MAE %.4f, in memory %.4f", spilled.best.val_mae, mem.best.val_mae);
    free_windows(&mapped);
    free_windows(&raw);
}

/* A continued spilled training replays the earlier epochs' draws: 2 epochs
 * and then 1 give the weights of 3. */
static void test_continue(void)
{
    BstConfig cfg;
    BstFitOptions o;
    BstData raw = raw_windows(1500, L, L + 2, 51);
    BstFitResult r;
    Spilled s;
    small_config(&cfg);
    spill_windows(&s, &raw, 3 * BATCH);

    options(&o, 0.05f, 0.1f, 3);
    BstModel *straight = new_model(&cfg, 2);
    CHECK(bst_fit(straight, &s.data, &o, NULL, &r) == BST_FIT_OK, "3 epochs");

    BstModel *split = new_model(&cfg, 2);
    BstTrainState *state = NULL, *state2 = NULL;
    o.epochs = 2;
    CHECK(bst_fit_continue(split, &s.data, &o, NULL, &state, NULL, &r) == BST_FIT_OK && state,
          "2 epochs");
    o.epochs = 1;
    CHECK(bst_fit_continue(split, &s.data, &o, state, &state2, NULL, &r) == BST_FIT_OK,
          "then 1");
    CHECK(memcmp(straight->params.slab, split->params.slab,
                 straight->params.size * sizeof(float)) == 0,
          "2 + 1 epochs differ from 3");
    bst_train_state_free(state);
    bst_train_state_free(state2);
    bst_model_free(straight);
    bst_model_free(split);
    unspill(&s);
    free_windows(&raw);
}

/* ------------------------------------------------------------ memory */

static size_t g_live, g_peak;

static void *tracking_alloc(size_t n)
{
    size_t *p = malloc(n + sizeof(size_t) * 2);
    if (!p)
        return NULL;
    p[0] = n;
    g_live += n;
    if (g_live > g_peak)
        g_peak = g_live;
    return p + 2;
}

static void tracking_free(void *ptr)
{
    if (!ptr)
        return;
    size_t *p = (size_t *)ptr - 2;
    g_live -= p[0];
    free(p);
}

/* The most bytes a spilled fit holds, measured. */
static size_t spilled_peak(const BstConfig *cfg, const BstFitOptions *o, const BstData *raw,
                           int64_t bucket, BstFitStatus *st)
{
    Spilled s;
    BstFitResult r;
    spill_windows(&s, raw, bucket);
    BstModel *m = new_model(cfg, 4);
    bst_set_allocator(tracking_alloc, tracking_free);
    g_live = g_peak = 0;
    *st = bst_fit(m, &s.data, o, NULL, &r);
    const size_t peak = g_peak, left = g_live;
    bst_set_allocator(NULL, NULL);
    CHECK(left == 0, "%zu bytes left by the fit", left);
    bst_model_free(m);
    unspill(&s);
    return peak;
}

/* The estimate to the byte; with four times the windows, only a chunk more
 * per bucket more; a bucket within any budget that allows one. */
static void test_memory(void)
{
    BstConfig cfg;
    BstFitOptions o;
    BstFitStatus st;
    small_config(&cfg);
    options(&o, 0.05f, 0.2f, 2);
    o.patience = 1;
    o.bias_init = 1;
    const int64_t bucket = 8 * BATCH;
    BstData small = raw_windows(2000, L, L + 2, 61), large = raw_windows(8000, L, L + 2, 62);

    const size_t peak = spilled_peak(&cfg, &o, &small, bucket, &st);
    const size_t estimate = bst_fit_stream_memory_bytes(&cfg, &o, 2000, bucket, 0);
    CHECK(st == BST_FIT_OK && peak == estimate, "2000 windows: held %zu bytes, estimated %zu",
          peak, estimate);
    const size_t peak4 = spilled_peak(&cfg, &o, &large, bucket, &st);
    CHECK(st == BST_FIT_OK &&
              peak4 == bst_fit_stream_memory_bytes(&cfg, &o, 8000, bucket, 0),
          "8000 windows: held %zu bytes, estimated %zu", peak4,
          bst_fit_stream_memory_bytes(&cfg, &o, 8000, bucket, 0));
    /* 1600 and 6400 training windows: 7 and 25 buckets */
    const size_t per_bucket = bst_data_memory_bytes(BST_SPILL_CHUNK_WINDOWS, L) +
                              sizeof(BstData) + sizeof(void *) + sizeof(int64_t);
    const size_t in_memory = bst_fit_memory_bytes(&cfg, &o, 8000) + bst_data_memory_bytes(8000, L);
    printf("  spilled in buckets of %lld windows: %zu bytes for 2000 windows, %zu for 8000 "
           "(in memory: %zu)\n",
           (long long)bucket, peak, peak4, in_memory);
    CHECK(peak4 - peak == 18 * per_bucket, "8000 windows hold %zu bytes more than 2000, not %zu",
          peak4 - peak, 18 * per_bucket);

    /* Half the training windows: two buckets, as many files as the split's. */
    const size_t budget = bst_fit_stream_memory_bytes(&cfg, &o, 8000, 100 * BATCH, 0) + 1000;
    const int64_t fit = bst_fit_bucket_windows(&cfg, &o, 8000, 0, budget);
    CHECK(fit == 100 * BATCH, "bucket of %lld windows for a budget of %zu bytes, expected %d",
          (long long)fit, budget, 100 * BATCH);
    CHECK(bst_fit_bucket_windows(&cfg, &o, 8000, 0, 1 << 30) == 6400,
          "a budget for everything: one bucket of all 6400 training windows");
    CHECK(bst_fit_bucket_windows(&cfg, &o, 8000, 0, 1000) == 0, "no bucket within 1000 bytes");
    CHECK(bst_fit_stream_memory_bytes(&cfg, &o, 8000, BATCH + 1, 0) == SIZE_MAX,
          "a bucket not a multiple of the batch");
    free_windows(&small);
    free_windows(&large);
}

/* A failing file fails the fit, which closes every file it opened. */
static void test_io_failure(void)
{
    BstConfig cfg;
    BstFitOptions o;
    BstData raw = raw_windows(3000, L, L + 2, 71);
    small_config(&cfg);
    options(&o, 0.05f, 0.2f, 2);
    const long fail_after[] = {3, 40, 200};
    for (int i = 0; i < 3; i++) {
        Spilled s;
        BstFitResult r;
        spill_windows(&s, &raw, 4 * BATCH);
        BstModel *m = new_model(&cfg, 4);
        g_writes_left = fail_after[i];
        BstFitStatus st = bst_fit(m, &s.data, &o, NULL, &r);
        g_writes_left = -1;
        CHECK(st == BST_FIT_IO_ERROR, "writes failing after %ld: status %d", fail_after[i],
              (int)st);
        CHECK(g_open_files == 1, "writes failing after %ld: %d files open", fail_after[i],
              g_open_files);
        bst_model_free(m);
        unspill(&s);
    }
    /* The file holds fewer windows than the data set says. */
    Spilled s;
    BstFitResult r;
    spill_windows(&s, &raw, 4 * BATCH);
    s.data.n = 3001;
    BstModel *m = new_model(&cfg, 4);
    CHECK(bst_fit(m, &s.data, &o, NULL, &r) == BST_FIT_IO_ERROR, "a window missing");
    bst_model_free(m);
    unspill(&s);
    free_windows(&raw);
}

int main(void)
{
    test_chunks();
    test_every_window_once();
    test_deterministic();
    test_learns();
    test_continue();
    test_memory();
    test_io_failure();
    return test_summary("test_spill");
}

#define _POSIX_C_SOURCE 199309L
#include "fit.h"

#include <math.h>
#include <string.h>
#include <time.h>

#include "bst_alloc.h"
#include "layers.h"
#include "rng.h"

/* Windows per forward pass asked of the evaluation predictor: it may take
 * fewer (bst_predictor_batch_limit), and evaluation goes in chunks of what it
 * takes. */
#define EVAL_BATCH 1024
/* Separate streams of the seed: the split, the epoch shuffles (the latter
 * as in format 1, so a run without validation shuffles as it always did). */
#define SPLIT_SALT 0x5b1175b1175b1175ULL
#define SHUFFLE_SALT 0x5eed5eed5eed5eedULL
#define PI 3.14159265358979323846

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

const char *bst_fit_options_check(const BstFitOptions *o)
{
    const char *bad = bst_train_options_check(&o->train);
    if (bad)
        return bad;
    if (o->epochs < 1 || o->epochs > BST_MAX_EPOCHS)
        return "epochs must be between 1 and 10000";
    if (o->lr_schedule != BST_LR_CONSTANT && o->lr_schedule != BST_LR_COSINE)
        return "unknown learning-rate schedule";
    if (!(o->validation_fraction >= 0.0f &&
          o->validation_fraction <= BST_MAX_VALIDATION_FRACTION))
        return "validation fraction must be in (0, 0.5], or 0 for none";
    if (o->patience < 0)
        return "patience must not be negative";
    if (o->patience > 0 && o->validation_fraction == 0.0f)
        return "early stopping needs a validation fraction";
    return NULL;
}

/* ------------------------------------------------------------ data sets */

size_t bst_data_memory_bytes(int64_t n, int32_t seq_len)
{
    if (n < 0 || seq_len < 1)
        return SIZE_MAX;
    /* movies [L], ratings [L - 1], hist_len, users, targets */
    const size_t per_window = (size_t)seq_len * sizeof(int32_t) +
                              (size_t)(seq_len - 1) * sizeof(float) +
                              2 * sizeof(int32_t) + sizeof(float);
    if ((uint64_t)n > SIZE_MAX / per_window)
        return SIZE_MAX;
    return (size_t)n * per_window;
}

/* Window w from L_from to L_to positions, in place: its movies and history
 * ratings kept at the right end, the padding on the left zeroed. */
static void relayout_window(BstData *d, int64_t w, int32_t L_from, int32_t L_to)
{
    const int32_t hist = d->hist_len[w], pad = L_to - 1 - hist;
    int32_t *mv = d->movies + (size_t)w * L_to;
    float *r = d->ratings + (size_t)w * (L_to - 1);
    memmove(mv + pad, d->movies + (size_t)w * L_from + (L_from - 1 - hist),
            (size_t)(hist + 1) * sizeof(int32_t));
    memmove(r + pad, d->ratings + (size_t)w * (L_from - 1) + (L_from - 1 - hist),
            (size_t)hist * sizeof(float));
    memset(mv, 0, (size_t)pad * sizeof(int32_t));
    memset(r, 0, (size_t)pad * sizeof(float));
}

/* All d->n windows from d->seq_len to L positions.  Wider: from the last
 * window back, so that none is overwritten before it moved; narrower: from
 * the first on. */
void bst_data_relayout(BstData *d, int32_t L)
{
    if (L > d->seq_len)
        for (int64_t w = d->n - 1; w >= 0; w--)
            relayout_window(d, w, d->seq_len, L);
    else
        for (int64_t w = 0; w < d->n; w++)
            relayout_window(d, w, d->seq_len, L);
    d->seq_len = L;
}

/* *p resized to size bytes; 0, or -1 leaving *p as it was. */
static int resize_array(void **p, size_t size, BstResizeFn resize, void *arg)
{
    void *q = resize(*p, size, arg);
    if (q == NULL)
        return -1;
    *p = q;
    return 0;
}

int bst_data_resize(BstData *d, int64_t capacity, int32_t seq_len, BstResizeFn resize,
                    void *arg)
{
    if (capacity < d->n || seq_len < 1 || bst_data_memory_bytes(capacity, seq_len) == SIZE_MAX)
        return -1;
    const size_t n = (size_t)capacity, L = (size_t)seq_len;
    /* Narrower: laid out again before the arrays shrink. */
    if (d->seq_len > seq_len && d->n > 0)
        bst_data_relayout(d, seq_len);
    if (resize_array((void **)&d->movies, n * L * sizeof(int32_t), resize, arg) ||
        resize_array((void **)&d->ratings, n * (L - 1) * sizeof(float), resize, arg))
        return -1;
    /* Wider: once both arrays have grown. */
    if (d->seq_len < seq_len && d->n > 0)
        bst_data_relayout(d, seq_len);
    d->seq_len = seq_len;
    if (resize_array((void **)&d->hist_len, n * sizeof(int32_t), resize, arg) ||
        resize_array((void **)&d->users, n * sizeof(int32_t), resize, arg) ||
        resize_array((void **)&d->targets, n * sizeof(float), resize, arg))
        return -1;
    return 0;
}

int32_t bst_data_set_window(BstData *d, int64_t w, const int32_t *movie_ids,
                            const float *ratings, int32_t n, int32_t user_id)
{
    const int32_t L = d->seq_len;
    const int32_t hist = n - 1 < L - 1 ? n - 1 : L - 1, pad = L - 1 - hist;
    const int32_t first = n - 1 - hist;  /* the oldest history item kept */
    int32_t *mv = d->movies + (size_t)w * L;
    float *r = d->ratings + (size_t)w * (L - 1);
    for (int32_t i = 0; i < pad; i++) {
        mv[i] = 0;
        r[i] = 0.0f;
    }
    memcpy(mv + pad, movie_ids + first, (size_t)hist * sizeof(int32_t));
    memcpy(r + pad, ratings + first, (size_t)hist * sizeof(float));
    mv[L - 1] = movie_ids[n - 1];
    d->hist_len[w] = hist;
    d->users[w] = user_id;
    d->targets[w] = ratings[n - 1];
    return hist;
}

void bst_data_map_ids(BstData *d, const BstModel *m, int64_t from, int64_t to,
                      int map_users)
{
    const int32_t L = d->seq_len;
    for (int64_t w = from; w < to; w++) {
        int32_t *mv = d->movies + (size_t)w * L;
        for (int32_t i = L - 1 - d->hist_len[w]; i < L; i++)
            mv[i] = bst_model_movie_index(m, mv[i]);
        d->users[w] = map_users ? bst_model_user_index(m, d->users[w]) : 0;
    }
}

/* Working state of one bst_fit call, all from bst_alloc. */
typedef struct Fit {
    BstModel *m;
    const BstData *data;
    int32_t L, B;
    uint32_t *order;           /* in memory: [n], validation windows first, then
                                * training; spilled: [bucket_windows], the
                                * loaded bucket's */
    int64_t n_val, n_train;
    int32_t eval_rows;         /* windows per evaluation chunk (the predictor's
                                * batch); 0 without evaluation */
    int32_t *movies, *hist_len, *users;   /* one batch: max(B, eval_rows) windows */
    float *ratings, *targets;
    float *pred;               /* [eval_rows] */
    BstPredictor *predictor;
    BstTrainer *trainer;
    float *best_params, *best_bn;
    BstTrainState *kept;       /* the state handed back: with a best-epoch
                                * snapshot, that epoch's copy; else filled
                                * from the trainer at the end */
    /* Spilled data (data->spill, spill.h); io is NULL in memory. */
    const BstSpillIO *io;
    void *val_file, *train_file;   /* after the split, ids mapped */
    int64_t bucket_windows, n_buckets;
    void **bucket_files;       /* [n_buckets]: this epoch's scatter */
    int64_t *bucket_left;      /* [n_buckets]: windows still to scatter into each */
    int32_t n_writers;         /* max(2, n_buckets): the split's two, the buckets' */
    BstData *writers;          /* [n_writers]: a chunk buffered for each file written */
    BstData chunk;             /* a chunk read */
    BstData bucket;            /* the bucket trained on */
    int64_t bucket_start, bucket_end;   /* its training windows within the epoch */
    int64_t next_bucket;
} Fit;

/* Copies windows idx[0..n) of d (without idx: first .. first + n) into the
 * batch buffers. */
static BstBatch gather(Fit *f, const BstData *d, const uint32_t *idx, int64_t first, int32_t n)
{
    const size_t L = (size_t)f->L;
    for (int32_t j = 0; j < n; j++) {
        const size_t w = idx ? idx[j] : (size_t)(first + j);
        memcpy(f->movies + j * L, d->movies + w * L, L * sizeof(int32_t));
        memcpy(f->ratings + j * (L - 1), d->ratings + w * (L - 1), (L - 1) * sizeof(float));
        f->hist_len[j] = d->hist_len ? d->hist_len[w] : (int32_t)(L - 1);
        f->users[j] = d->users ? d->users[w] : 0;
        f->targets[j] = d->targets[w];
    }
    BstBatch b = {.n = n, .movies = f->movies, .ratings = f->ratings, .targets = f->targets,
                  .hist_len = f->hist_len, .users = f->users};
    return b;
}

/* History items of window w as the forward reads them: hist_len clamped to
 * 0..L-1 (layers.h), all L-1 without hist_len. */
static int32_t window_history(const BstData *d, size_t w, int32_t L)
{
    return L - 1 - bst_first_valid(d->hist_len, w, L);
}

/* Error sums over windows idx[0..n) of d (without idx: the first n), in
 * evaluation chunks counted by *chunk (of n_chunks, for the hooks). */
static void add_errors(Fit *f, const BstData *d, const uint32_t *idx, int64_t n,
                       const BstFitHooks *hooks, int64_t *chunk, int64_t n_chunks,
                       double *abs_sum, double *sq_sum)
{
    for (int64_t first = 0; first < n; first += f->eval_rows, (*chunk)++) {
        if (hooks && hooks->before_batch)
            hooks->before_batch(hooks->arg, 0, *chunk < n_chunks ? *chunk : n_chunks - 1,
                                n_chunks, NAN);
        const int32_t count = (int32_t)(n - first < f->eval_rows ? n - first : f->eval_rows);
        BstBatch b = gather(f, d, idx ? idx + first : NULL, first, count);
        bst_predict(f->predictor, &b, f->pred);
        for (int32_t j = 0; j < count; j++) {
            const double e = (double)f->pred[j] - (double)b.targets[j];
            *abs_sum += fabs(e);
            *sq_sum += e * e;
        }
    }
}

/* ------------------------------------------------------- spilled data */

/* d with room for capacity windows of L, from bst_alloc:
 * bst_data_memory_bytes(capacity, L) in all; -1 when out of memory. */
static int data_alloc(BstData *d, int64_t capacity, int32_t L)
{
    memset(d, 0, sizeof(*d));
    d->seq_len = L;
    d->movies = bst_alloc((size_t)capacity * L * sizeof(int32_t));
    d->ratings = bst_alloc((size_t)capacity * (L - 1) * sizeof(float));
    d->hist_len = bst_alloc((size_t)capacity * sizeof(int32_t));
    d->users = bst_alloc((size_t)capacity * sizeof(int32_t));
    d->targets = bst_alloc((size_t)capacity * sizeof(float));
    return d->movies && d->ratings && d->hist_len && d->users && d->targets ? 0 : -1;
}

static void data_free(BstData *d)
{
    bst_free(d->movies);
    bst_free(d->ratings);
    bst_free(d->hist_len);
    bst_free(d->users);
    bst_free(d->targets);
}

/* Window w of from as window `at` of to (the same length). */
static void copy_window(BstData *to, int64_t at, const BstData *from, int64_t w)
{
    const size_t L = (size_t)from->seq_len;
    memcpy(to->movies + (size_t)at * L, from->movies + (size_t)w * L, L * sizeof(int32_t));
    memcpy(to->ratings + (size_t)at * (L - 1), from->ratings + (size_t)w * (L - 1),
           (L - 1) * sizeof(float));
    to->hist_len[at] = from->hist_len[w];
    to->users[at] = from->users[w];
    to->targets[at] = from->targets[w];
}

static int writer_flush(Fit *f, BstData *writer, void *file)
{
    const int failed = writer->n > 0 && bst_spill_write(f->io, file, writer, 0, writer->n) != 0;
    writer->n = 0;
    return failed ? -1 : 0;
}

/* Window w of d to file, through its writer's chunk. */
static int writer_put(Fit *f, BstData *writer, void *file, const BstData *d, int64_t w)
{
    copy_window(writer, writer->n++, d, w);
    return writer->n == BST_SPILL_CHUNK_WINDOWS ? writer_flush(f, writer, file) : 0;
}

/* Training windows in bucket b: bucket_windows (a multiple of the batch, so
 * that no batch spans two buckets), the rest in the last. */
static int64_t bucket_size(const Fit *f, int64_t b)
{
    return b < f->n_buckets - 1 ? f->bucket_windows
                                : f->n_train - (f->n_buckets - 1) * f->bucket_windows;
}

/* A bucket for the next of `left` windows still to scatter: each with the
 * chance of the room it has left, so the buckets get their exact sizes and
 * every assignment of windows to them is equally likely. */
static int64_t draw_bucket(Fit *f, BstRng *shuffle, int64_t left)
{
    uint64_t u = bst_rng_below(shuffle, (uint64_t)left);
    int64_t b = 0;
    while (u >= (uint64_t)f->bucket_left[b])
        u -= (uint64_t)f->bucket_left[b++];
    f->bucket_left[b]--;
    return b;
}

/*
 * The split of spilled data: n_val windows for validation, each subset of
 * that size equally likely, drawn in one pass in the order read (Knuth's
 * selection sampling, TAOCP 3.4.2 S), into the validation and the training
 * file, ids mapped on the way.
 */
static BstFitStatus stream_split(Fit *f, uint64_t seed)
{
    const BstSpill *sp = f->data->spill;
    BstRng split;
    int64_t left = f->data->n, need = f->n_val, read = 0, k;

    bst_rng_seed(&split, seed ^ SPLIT_SALT);
    if (f->io->rewind(sp->file, f->io->arg) != 0)
        return BST_FIT_IO_ERROR;
    while ((k = bst_spill_read(f->io, sp->file, &f->chunk, 0, BST_SPILL_CHUNK_WINDOWS)) > 0) {
        if (read + k > f->data->n)
            return BST_FIT_IO_ERROR;
        if (sp->map_ids)
            bst_data_map_ids(&f->chunk, f->m, 0, k, sp->map_users);
        for (int64_t w = 0; w < k; w++, left--) {
            const int to_val = need > 0 && (int64_t)bst_rng_below(&split, (uint64_t)left) < need;
            need -= to_val;
            if (writer_put(f, &f->writers[to_val ? 0 : 1], to_val ? f->val_file : f->train_file,
                           &f->chunk, w) != 0)
                return BST_FIT_IO_ERROR;
        }
        read += k;
    }
    if (k < 0 || read != f->data->n || writer_flush(f, &f->writers[0], f->val_file) != 0 ||
        writer_flush(f, &f->writers[1], f->train_file) != 0)
        return BST_FIT_IO_ERROR;
    return BST_FIT_OK;
}

/* An epoch's scatter of the training windows into the buckets: into new
 * bucket files when write, else only the draws (replaying an epoch). */
static int scatter(Fit *f, BstRng *shuffle, int write)
{
    int64_t left = f->n_train, k;
    for (int64_t b = 0; b < f->n_buckets; b++) {
        f->bucket_left[b] = bucket_size(f, b);
        if (write) {
            if (f->bucket_files[b])
                f->io->close(f->bucket_files[b], f->io->arg);
            f->writers[b].n = 0;
            if ((f->bucket_files[b] = f->io->create(f->io->arg)) == NULL)
                return -1;
        }
    }
    f->next_bucket = 0;
    f->bucket_start = f->bucket_end = 0;
    if (!write) {
        for (; left > 0; left--)
            draw_bucket(f, shuffle, left);
        return 0;
    }
    if (f->io->rewind(f->train_file, f->io->arg) != 0)
        return -1;
    while ((k = bst_spill_read(f->io, f->train_file, &f->chunk, 0, BST_SPILL_CHUNK_WINDOWS)) > 0)
        for (int64_t w = 0; w < k; w++, left--) {
            if (left == 0)
                return -1;
            const int64_t b = draw_bucket(f, shuffle, left);
            if (writer_put(f, &f->writers[b], f->bucket_files[b], &f->chunk, w) != 0)
                return -1;
        }
    if (k < 0 || left != 0)
        return -1;
    for (int64_t b = 0; b < f->n_buckets; b++)
        if (writer_flush(f, &f->writers[b], f->bucket_files[b]) != 0)
            return -1;
    return 0;
}

/* The order of a bucket of n windows: a uniform permutation. */
static void bucket_order(Fit *f, BstRng *shuffle, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        f->order[i] = (uint32_t)i;
    bst_rng_shuffle_u32(shuffle, f->order, (size_t)n);
}

/* The next bucket of the epoch into memory, in its random order. */
static int load_bucket(Fit *f, BstRng *shuffle)
{
    const int64_t b = f->next_bucket++, size = bucket_size(f, b);
    void *file = f->bucket_files[b];
    int64_t at = 0, k;
    if (b >= f->n_buckets || f->io->rewind(file, f->io->arg) != 0)
        return -1;
    f->bucket.n = 0;
    while ((k = bst_spill_read(f->io, file, &f->bucket, at, f->bucket_windows)) > 0)
        at += k;
    if (k < 0 || at != size)
        return -1;
    bucket_order(f, shuffle, size);
    f->bucket_start = f->bucket_end;
    f->bucket_end += size;
    return 0;
}

/* ------------------------------------------------------------ epochs */

/* Starts an epoch: its training windows in a new random order.  In memory,
 * each epoch shuffles the previous epoch's order. */
static int epoch_start(Fit *f, BstRng *shuffle)
{
    if (!f->io) {
        bst_rng_shuffle_u32(shuffle, f->order + f->n_val, (size_t)f->n_train);
        return 0;
    }
    return scatter(f, shuffle, 1);
}

/* The draws of an epoch without its work: replaying the epochs of a
 * continued training puts the order, and the stream, where they left them. */
static void epoch_replay(Fit *f, BstRng *shuffle)
{
    if (!f->io) {
        epoch_start(f, shuffle);   /* in memory, the draws are all its work */
        return;
    }
    scatter(f, shuffle, 0);
    for (int64_t b = 0; b < f->n_buckets; b++)
        bucket_order(f, shuffle, bucket_size(f, b));
}

/* Batch k (of count windows) of the epoch. */
static int epoch_batch(Fit *f, BstRng *shuffle, int64_t k, int32_t count, BstBatch *batch)
{
    const int64_t first = k * f->B;
    if (!f->io) {
        *batch = gather(f, f->data, f->order + f->n_val + first, 0, count);
        return 0;
    }
    if (first == f->bucket_end && load_bucket(f, shuffle) != 0)
        return -1;
    *batch = gather(f, &f->bucket, f->order + (first - f->bucket_start), 0, count);
    return 0;
}

/* Validation errors after an epoch. */
static int evaluate_validation(Fit *f, const BstFitHooks *hooks, double *mae, double *rmse)
{
    double abs_sum = 0.0, sq_sum = 0.0;
    int64_t chunk = 0, k = 0;
    const int64_t n_chunks = (f->n_val + f->eval_rows - 1) / f->eval_rows;
    if (!f->io)
        add_errors(f, f->data, f->order, f->n_val, hooks, &chunk, n_chunks, &abs_sum, &sq_sum);
    else {
        if (f->io->rewind(f->val_file, f->io->arg) != 0)
            return -1;
        while ((k = bst_spill_read(f->io, f->val_file, &f->chunk, 0, BST_SPILL_CHUNK_WINDOWS)) > 0)
            add_errors(f, &f->chunk, NULL, k, hooks, &chunk, n_chunks, &abs_sum, &sq_sum);
        if (k < 0)
            return -1;
    }
    *mae = abs_sum / (double)f->n_val;
    *rmse = sqrt(sq_sum / (double)f->n_val);
    return 0;
}

/* Calls fn on every training window, in the order of the split. */
typedef void (*WindowFn)(void *arg, const BstData *d, size_t w);

static int each_training_window(Fit *f, WindowFn fn, void *arg)
{
    int64_t k;
    if (!f->io) {
        const uint32_t *train = f->order + f->n_val;
        for (int64_t j = 0; j < f->n_train; j++)
            fn(arg, f->data, train[j]);
        return 0;
    }
    if (f->io->rewind(f->train_file, f->io->arg) != 0)
        return -1;
    while ((k = bst_spill_read(f->io, f->train_file, &f->chunk, 0, BST_SPILL_CHUNK_WINDOWS)) > 0)
        for (int64_t w = 0; w < k; w++)
            fn(arg, &f->chunk, (size_t)w);
    return k < 0 ? -1 : 0;
}

/* What the training windows tell before training: the training facts and
 * the range of the targets. */
typedef struct TrainingFacts {
    int32_t L;
    int64_t count;
    double sum;
    int32_t min_history;
    float lo, hi;
} TrainingFacts;

static void training_facts_add(void *arg, const BstData *d, size_t w)
{
    TrainingFacts *t = arg;
    const float y = d->targets[w];
    const int32_t h = window_history(d, w, t->L);
    t->sum += y;
    t->min_history = h < t->min_history ? h : t->min_history;
    t->lo = t->count == 0 || y < t->lo ? y : t->lo;
    t->hi = t->count == 0 || y > t->hi ? y : t->hi;
    t->count++;
}

/* Bytes of bias_init's working arrays, all freed before it returns. */
static size_t bias_init_bytes(const BstConfig *c)
{
    const size_t movie_rows = (size_t)c->n_movies + 1, user_rows = (size_t)c->n_users + 1;
    const size_t rows = movie_rows > user_rows ? movie_rows : user_rows;
    /* movie_bias, user_bias, sum, count */
    return (movie_rows + user_rows + 2 * rows) * sizeof(double);
}

/* One pass of bias_init: sums of the residuals of one side's rows. */
typedef struct BiasPass {
    int32_t L, movie_rows, user_rows;
    int users;                  /* 0: movies, 1: users */
    double mean;
    const double *other;        /* the other side's biases */
    double *sum, *count;
} BiasPass;

static void bias_pass_add(void *arg, const BstData *d, size_t w)
{
    BiasPass *p = arg;
    const int32_t mi = bst_row_or_zero(d->movies[w * p->L + p->L - 1], p->movie_rows);
    const int32_t ui = bst_row_or_zero(d->users ? d->users[w] : 0, p->user_rows);
    const int32_t self = p->users ? ui : mi;
    p->sum[self] += d->targets[w] - p->mean - p->other[p->users ? mi : ui];
    p->count[self] += 1.0;
}

/*
 * Closed-form start of the bias terms over the training windows: the mean
 * target, then alternating ridge estimates of the movie and user biases
 * (Koren, "Factorization meets the neighborhood", 2008, section 2.1).  The
 * network learns the rest; starting from these it need not first discover
 * that some users rate everything a star higher.
 */
static BstFitStatus bias_init(Fit *f, double mean)
{
    BstModel *m = f->m;
    const int32_t movie_rows = m->cfg.n_movies + 1, user_rows = m->cfg.n_users + 1;
    const size_t rows = (size_t)(movie_rows > user_rows ? movie_rows : user_rows);
    double *movie_bias = bst_alloc_zero((size_t)movie_rows, sizeof(double));
    double *user_bias = bst_alloc_zero((size_t)user_rows, sizeof(double));
    double *sum = bst_alloc_zero(rows, sizeof(double));
    double *count = bst_alloc_zero(rows, sizeof(double));
    BstFitStatus status = !movie_bias || !user_bias || !sum || !count ? BST_FIT_NO_MEMORY
                                                                       : BST_FIT_OK;
    for (int round = 0; round < BST_BIAS_INIT_ROUNDS && status == BST_FIT_OK; round++) {
        for (int pass = 0; pass < 2 && status == BST_FIT_OK; pass++) {  /* 0: movies, 1: users */
            BiasPass p = {.L = f->L, .movie_rows = movie_rows, .user_rows = user_rows,
                          .users = pass, .mean = mean, .other = pass ? movie_bias : user_bias,
                          .sum = sum, .count = count};
            const int32_t n = pass ? user_rows : movie_rows;
            double *bias = pass ? user_bias : movie_bias;
            const double reg = pass ? BST_BIAS_INIT_USER_REG : BST_BIAS_INIT_MOVIE_REG;
            memset(sum, 0, (size_t)n * sizeof(double));
            memset(count, 0, (size_t)n * sizeof(double));
            if (each_training_window(f, bias_pass_add, &p) != 0)
                status = BST_FIT_IO_ERROR;
            for (int32_t r = 0; r < n; r++)
                bias[r] = sum[r] / (reg + count[r]);
        }
    }
    if (status == BST_FIT_OK) {
        m->params.global_bias[0] = (float)mean;
        for (int32_t r = 0; r < movie_rows; r++)
            m->params.movie_bias[r] = (float)movie_bias[r];
        for (int32_t r = 0; r < user_rows; r++)
            m->params.user_bias[r] = (float)user_bias[r];
    }
    bst_free(movie_bias);
    bst_free(user_bias);
    bst_free(sum);
    bst_free(count);
    return status;
}

/* Windows held by the batch buffers: a training batch, or an evaluation
 * chunk, whichever is larger (they take turns). */
static size_t fit_rows(int32_t train_rows, int32_t eval_rows)
{
    return (size_t)(train_rows > eval_rows ? train_rows : eval_rows);
}

/* Bytes fit_alloc allocates for an order of n windows and windows of L
 * positions. */
static size_t fit_buffers_bytes(int64_t n, int32_t L, int32_t train_rows, int32_t eval_rows)
{
    const size_t rows = fit_rows(train_rows, eval_rows);
    return (size_t)n * sizeof(uint32_t) +                           /* order */
           rows * (size_t)L * sizeof(int32_t) +                     /* movies */
           rows * (size_t)(L - 1) * sizeof(float) +                 /* ratings */
           rows * (2 * sizeof(int32_t) + sizeof(float)) +           /* hist_len, users, targets */
           (size_t)eval_rows * sizeof(float);                       /* pred */
}

/* Buckets of bucket_windows for n_train training windows. */
static int64_t buckets_for(int64_t n_train, int64_t bucket_windows)
{
    return (n_train + bucket_windows - 1) / bucket_windows;
}

/* Files written at once: the split's two, then the buckets. */
static int32_t writers_for(int64_t n_buckets)
{
    return n_buckets > 2 ? (int32_t)n_buckets : 2;
}

/* Bytes stream_alloc allocates: the bucket, a chunk read, one buffered for
 * each file written, the bucket files and their counts. */
static size_t stream_buffers_bytes(int32_t L, int64_t n_buckets, int64_t bucket_windows)
{
    const size_t chunk = bst_data_memory_bytes(BST_SPILL_CHUNK_WINDOWS, L);
    const int32_t writers = writers_for(n_buckets);
    return bst_data_memory_bytes(bucket_windows, L) + (size_t)(writers + 1) * chunk +
           (size_t)writers * sizeof(BstData) +
           (size_t)n_buckets * (sizeof(void *) + sizeof(int64_t));
}

/* The window order and batch buffers for training batches of train_rows
 * windows and evaluation chunks of f->eval_rows, order_n windows ordered;
 * -1 when out of memory (fit_free releases what was allocated). */
static int fit_alloc(Fit *f, int32_t train_rows, int64_t order_n)
{
    const size_t L = (size_t)f->L, rows = fit_rows(train_rows, f->eval_rows);
    f->order = bst_alloc((size_t)order_n * sizeof(uint32_t));
    f->movies = bst_alloc(rows * L * sizeof(int32_t));
    f->ratings = bst_alloc(rows * (L - 1) * sizeof(float));
    f->hist_len = bst_alloc(rows * sizeof(int32_t));
    f->users = bst_alloc(rows * sizeof(int32_t));
    f->targets = bst_alloc(rows * sizeof(float));
    if (f->eval_rows > 0)
        f->pred = bst_alloc((size_t)f->eval_rows * sizeof(float));
    if (!f->order || !f->movies || !f->ratings || !f->hist_len || !f->users || !f->targets ||
        (f->eval_rows > 0 && !f->pred))
        return -1;
    for (int64_t i = 0; i < order_n; i++)
        f->order[i] = (uint32_t)i;
    return 0;
}

/* The buffers of spilled data (fit_free releases them); the split's files. */
static BstFitStatus stream_alloc(Fit *f)
{
    f->io = f->data->spill->io;
    f->n_buckets = buckets_for(f->n_train, f->bucket_windows);
    f->n_writers = writers_for(f->n_buckets);
    f->bucket_files = bst_alloc_zero((size_t)f->n_buckets, sizeof(void *));
    f->bucket_left = bst_alloc_zero((size_t)f->n_buckets, sizeof(int64_t));
    f->writers = bst_alloc_zero((size_t)f->n_writers, sizeof(BstData));
    if (!f->bucket_files || !f->bucket_left || !f->writers ||
        data_alloc(&f->chunk, BST_SPILL_CHUNK_WINDOWS, f->L) != 0 ||
        data_alloc(&f->bucket, f->bucket_windows, f->L) != 0)
        return BST_FIT_NO_MEMORY;
    for (int32_t i = 0; i < f->n_writers; i++)
        if (data_alloc(&f->writers[i], BST_SPILL_CHUNK_WINDOWS, f->L) != 0)
            return BST_FIT_NO_MEMORY;
    if ((f->n_val > 0 && (f->val_file = f->io->create(f->io->arg)) == NULL) ||
        (f->train_file = f->io->create(f->io->arg)) == NULL)
        return BST_FIT_IO_ERROR;
    return BST_FIT_OK;
}

static void fit_free(Fit *f)
{
    bst_free(f->order);
    bst_free(f->movies);
    bst_free(f->hist_len);
    bst_free(f->users);
    bst_free(f->ratings);
    bst_free(f->targets);
    bst_free(f->pred);
    bst_predictor_free(f->predictor);
    bst_trainer_free(f->trainer);
    bst_free(f->best_params);
    bst_free(f->best_bn);
    bst_train_state_free(f->kept);
    if (f->io) {
        if (f->val_file)
            f->io->close(f->val_file, f->io->arg);
        if (f->train_file)
            f->io->close(f->train_file, f->io->arg);
        for (int64_t b = 0; f->bucket_files && b < f->n_buckets; b++)
            if (f->bucket_files[b])
                f->io->close(f->bucket_files[b], f->io->arg);
    }
    if (f->writers)
        for (int32_t i = 0; i < f->n_writers; i++)
            data_free(&f->writers[i]);
    bst_free(f->writers);
    bst_free(f->bucket_files);
    bst_free(f->bucket_left);
    data_free(&f->chunk);
    data_free(&f->bucket);
}

static void snapshot(const BstModel *m, float *params, float *bn)
{
    memcpy(params, m->params.slab, m->params.size * sizeof(float));
    if (m->bn.size)
        memcpy(bn, m->bn.slab, m->bn.size * sizeof(float));
}

static void restore(BstModel *m, const float *params, const float *bn)
{
    memcpy(m->params.slab, params, m->params.size * sizeof(float));
    if (m->bn.size)
        memcpy(m->bn.slab, bn, m->bn.size * sizeof(float));
}

/* Windows held out for validation: the fraction, but at least one if any. */
static int64_t validation_windows(int64_t n, float fraction)
{
    int64_t n_val = (int64_t)((double)n * fraction);
    return fraction > 0.0f && n_val < 1 ? 1 : n_val;
}

/* Floats of a snapshot of the BatchNorm moving statistics (BstBnStats: mean
 * and variance of each hidden unit), at least 1 for bst_alloc. */
static size_t bn_snapshot_count(const BstConfig *c)
{
    size_t total = 0;
    for (int i = 0; i < c->n_hidden; i++)
        total += 2 * (size_t)c->hidden[i];
    return total ? total : 1;
}

/*
 * bst_fit allocates, in order: the batch buffers (fit_alloc) and, for
 * spilled data, the bucket and file buffers (stream_alloc), the best
 * epoch's snapshot, bias_init's arrays (freed on return), the trainer and
 * the validation predictor; all of it is freed when it returns.
 * bst_fit_continue keeping the state also allocates it, with the snapshot,
 * and hands it back with the trainer's slots in it (or the best epoch's).
 * bucket_windows 0: in memory.
 */
static size_t fit_memory_bytes(const BstConfig *cfg, const BstFitOptions *o, int64_t n_windows,
                               int64_t bucket_windows, int keep_state)
{
    const int64_t n_val = validation_windows(n_windows, o->validation_fraction);
    const int32_t eval_rows = n_val > 0 ? bst_predictor_batch_limit(cfg, EVAL_BATCH) : 0;
    size_t held;
    if (bucket_windows == 0)
        held = fit_buffers_bytes(n_windows, cfg->seq_len, o->train.batch_size, eval_rows);
    else
        held = fit_buffers_bytes(bucket_windows, cfg->seq_len, o->train.batch_size, eval_rows) +
               stream_buffers_bytes(cfg->seq_len, buckets_for(n_windows - n_val, bucket_windows),
                                    bucket_windows);
    if (o->patience > 0)
        held += bst_config_num_params(cfg) * sizeof(float) +
                bn_snapshot_count(cfg) * sizeof(float);
    /* The kept state: a snapshot of the best epoch's, or the trainer's own
     * slots given to it at the end (counted with the trainer). */
    if (keep_state)
        held += o->patience > 0 ? bst_train_state_memory_bytes(cfg, o->train.optimizer)
                                : sizeof(BstTrainState);
    const size_t bias = o->bias_init && cfg->use_bias ? bias_init_bytes(cfg) : 0;
    const size_t training = bst_trainer_memory_bytes(cfg, &o->train) +
                            (n_val > 0 ? bst_predictor_memory_bytes(cfg, EVAL_BATCH) : 0);
    return held + (bias > training ? bias : training);
}

size_t bst_fit_continue_memory_bytes(const BstConfig *cfg, const BstFitOptions *o,
                                     int64_t n_windows, int keep_state)
{
    return fit_memory_bytes(cfg, o, n_windows, 0, keep_state);
}

size_t bst_fit_memory_bytes(const BstConfig *cfg, const BstFitOptions *o, int64_t n_windows)
{
    return fit_memory_bytes(cfg, o, n_windows, 0, 0);
}

size_t bst_fit_stream_memory_bytes(const BstConfig *cfg, const BstFitOptions *o,
                                   int64_t n_windows, int64_t bucket_windows, int keep_state)
{
    if (bucket_windows < 1 || bucket_windows % o->train.batch_size != 0)
        return SIZE_MAX;
    return fit_memory_bytes(cfg, o, n_windows, bucket_windows, keep_state);
}

int64_t bst_fit_bucket_windows(const BstConfig *cfg, const BstFitOptions *o, int64_t n_windows,
                               int keep_state, size_t budget)
{
    const int64_t B = o->train.batch_size;
    const int64_t n_train = n_windows - validation_windows(n_windows, o->validation_fraction);
    const int64_t batches = (n_train + B - 1) / B;
    const size_t per_bucket = bst_data_memory_bytes(BST_SPILL_CHUNK_WINDOWS, cfg->seq_len);
    if (n_train < 1)
        return 0;
    /* More buckets need a smaller bucket but a chunk more each to scatter
     * into them: the fewest that fit, each bucket the training windows'
     * share rounded up to a batch. */
    for (int64_t p = 1, last = 0; p <= batches && (size_t)p <= budget / per_bucket; p++) {
        const int64_t k = (batches + p - 1) / p;
        if (k != last &&
            bst_fit_stream_memory_bytes(cfg, o, n_windows, k * B, keep_state) <= budget)
            return k * B;
        last = k;
    }
    return 0;
}

BstFitStatus bst_fit(BstModel *m, const BstData *data, const BstFitOptions *o,
                     const BstFitHooks *hooks, BstFitResult *result)
{
    return bst_fit_continue(m, data, o, NULL, NULL, hooks, result);
}

BstFitStatus bst_fit_continue(BstModel *m, const BstData *data, const BstFitOptions *o,
                              const BstTrainState *from, BstTrainState **kept,
                              const BstFitHooks *hooks, BstFitResult *result)
{
    Fit f;
    BstFitStatus status = BST_FIT_OK;
    const int32_t L = m->cfg.seq_len;
    const BstSpill *spill = data->spill;

    memset(result, 0, sizeof(*result));
    memset(&f, 0, sizeof(f));
    if (kept)
        *kept = NULL;
    if (bst_fit_options_check(o) || data->seq_len != L || data->n < 1 ||
        data->n > (int64_t)UINT32_MAX ||
        (from && (from->optimizer != o->train.optimizer || from->size != m->params.size ||
                  from->step < 0 || from->epochs < 0)) ||
        (spill && (!spill->io || !spill->file || spill->bucket_windows < 1 ||
                   spill->bucket_windows % o->train.batch_size != 0 ||
                   spill->bucket_windows > (int64_t)UINT32_MAX)))
        return BST_FIT_BAD_INPUT;
    /* The seed's streams continue where from left them; another seed's
     * start afresh. */
    const int streams_continue = from && from->seed == o->train.seed;
    const int32_t epochs_before = streams_continue ? from->epochs : 0;
    f.m = m;
    f.data = data;
    f.L = L;
    f.B = o->train.batch_size;
    f.n_val = validation_windows(data->n, o->validation_fraction);
    f.n_train = data->n - f.n_val;
    if (f.n_train < 1)
        return BST_FIT_BAD_INPUT;
    /* The predictor created below takes exactly this many windows per pass. */
    f.eval_rows = f.n_val > 0 ? bst_predictor_batch_limit(&m->cfg, EVAL_BATCH) : 0;
    f.bucket_windows = spill ? spill->bucket_windows : 0;

    if (fit_alloc(&f, f.B, spill ? f.bucket_windows : data->n) != 0)
        goto no_memory;
    if (spill && (status = stream_alloc(&f)) != BST_FIT_OK)
        goto done;
    if (o->patience > 0) {
        f.best_params = bst_alloc(m->params.size * sizeof(float));
        f.best_bn = bst_alloc(bn_snapshot_count(&m->cfg) * sizeof(float));
        if (!f.best_params || !f.best_bn)
            goto no_memory;
    }
    if (kept) {
        f.kept = f.best_params ? bst_train_state_create(&m->cfg, o->train.optimizer, o->train.seed)
                               : bst_alloc_zero(1, sizeof(BstTrainState));
        if (!f.kept)
            goto no_memory;
    }

    /* The split: in memory a seeded permutation, validation windows first;
     * spilled, a pass over the file into the validation and the training
     * windows' own. */
    if (spill) {
        if ((status = stream_split(&f, o->train.seed)) != BST_FIT_OK)
            goto done;
    } else if (f.n_val > 0) {
        BstRng split;
        bst_rng_seed(&split, o->train.seed ^ SPLIT_SALT);
        bst_rng_shuffle_u32(&split, f.order, (size_t)data->n);
    }
    TrainingFacts facts = {.L = L, .min_history = L - 1};
    if (each_training_window(&f, training_facts_add, &facts) != 0)
        goto io_error;
    const double mean = facts.sum / (double)f.n_train;
    int32_t min_history = facts.min_history;
    /* A continued model was trained on shorter histories too. */
    if (from && m->facts.known && m->facts.min_history < min_history)
        min_history = m->facts.min_history;
    /* What prediction falls back on for a history shorter than any trained
     * on; refused only for a non-finite target. */
    if (bst_model_set_training_facts(m, (float)mean, min_history) != NULL) {
        status = BST_FIT_BAD_INPUT;
        goto done;
    }
    if (o->clip) {
        float lo = facts.lo, hi = facts.hi;
        /* ... and on the targets of the stored training. */
        if (from && m->cfg.rating_min < m->cfg.rating_max) {
            lo = m->cfg.rating_min < lo ? m->cfg.rating_min : lo;
            hi = m->cfg.rating_max > hi ? m->cfg.rating_max : hi;
        }
        m->cfg.rating_min = lo;
        m->cfg.rating_max = hi;
    }
    result->train_mean = mean;
    result->n_train = f.n_train;
    result->n_val = f.n_val;

    /* A continued model starts from its trained weights. */
    if (!from && o->bias_init && m->cfg.use_bias && (status = bias_init(&f, mean)) != BST_FIT_OK)
        goto done;
    if (!from && o->zero_output) {
        const int32_t out_in = m->cfg.n_hidden ? m->cfg.hidden[m->cfg.n_hidden - 1]
                                               : bst_config_mlp_input(&m->cfg);
        memset(m->params.out_w, 0, (size_t)out_in * sizeof(float));
        m->params.out_b[0] = 0.0f;
    }

    f.trainer = bst_trainer_create(m, &o->train);
    f.predictor = f.n_val > 0 ? bst_predictor_create(m, EVAL_BATCH) : NULL;
    if (!f.trainer || (f.n_val > 0 && !f.predictor))
        goto no_memory;
    if (from && bst_trainer_set_state(f.trainer, from) != 0) {
        status = BST_FIT_BAD_INPUT;
        goto done;
    }

    BstRng shuffle;
    bst_rng_seed(&shuffle, o->train.seed ^ SHUFFLE_SALT);
    for (int32_t e = 0; e < epochs_before; e++) {
        if (hooks && hooks->before_batch)
            hooks->before_batch(hooks->arg, 0, e, epochs_before, NAN);
        epoch_replay(&f, &shuffle);
    }
    const int64_t n_batches = (f.n_train + f.B - 1) / f.B;
    const double total_steps = (double)n_batches * o->epochs;
    double best_val = INFINITY;
    int32_t best_epoch = 0;
    int64_t step = 0;
    float lr = o->train.learning_rate;

    for (int32_t epoch = 1; epoch <= o->epochs; epoch++) {
        BstEpochStats s;
        double loss_sum = 0.0, abs_sum = 0.0, start = now_seconds();

        memset(&s, 0, sizeof(s));
        if (epoch_start(&f, &shuffle) != 0)
            goto io_error;
        for (int64_t k = 0; k < n_batches; k++, step++) {
            if (hooks && hooks->before_batch)
                hooks->before_batch(hooks->arg, epoch, k, n_batches,
                                    k > 0 ? loss_sum / (double)(k * f.B) : NAN);
            if (o->lr_schedule == BST_LR_COSINE) {
                lr = (float)(o->train.learning_rate * 0.5 *
                             (1.0 + cos(PI * (double)step / total_steps)));
                bst_trainer_set_learning_rate(f.trainer, lr);
            }
            const int64_t first = k * f.B;
            const int32_t count = (int32_t)(f.n_train - first < f.B ? f.n_train - first : f.B);
            BstBatch b;
            if (epoch_batch(&f, &shuffle, k, count, &b) != 0)
                goto io_error;
            float loss = bst_train_step(f.trainer, &b, &abs_sum);
            if (!isfinite(loss)) {
                result->epochs_run = epoch;
                status = BST_FIT_DIVERGED;
                goto done;
            }
            loss_sum += (double)loss * count;
        }
        /* Validation, the snapshot and the caller read every row. */
        bst_trainer_sync(f.trainer);
        s.epoch = epoch;
        s.loss = loss_sum / (double)f.n_train;
        s.mae = abs_sum / (double)f.n_train;
        s.learning_rate = lr;
        s.val_mae = s.val_rmse = NAN;
        if (f.n_val > 0 && evaluate_validation(&f, hooks, &s.val_mae, &s.val_rmse) != 0)
            goto io_error;
        s.seconds = now_seconds() - start;
        result->epochs_run = epoch;
        if (f.n_val > 0 && !(isfinite(s.val_mae) && isfinite(s.val_rmse))) {
            status = BST_FIT_DIVERGED;
            goto done;
        }
        /* Without validation every epoch is the best so far. */
        s.best = f.n_val == 0 || s.val_mae < best_val;
        if (s.best) {
            best_val = f.n_val ? s.val_mae : best_val;
            best_epoch = epoch;
            if (f.best_params) {
                snapshot(m, f.best_params, f.best_bn);
                if (f.kept) {
                    bst_trainer_copy_state(f.trainer, f.kept);
                    f.kept->epochs = epochs_before + epoch;
                }
            }
        }
        /* The kept epoch: the best with early stopping, else the last. */
        if (s.best || !f.best_params) {
            result->best_epoch = epoch;
            result->best = s;
        }
        if (hooks && hooks->after_epoch)
            hooks->after_epoch(hooks->arg, &s);
        if (o->patience > 0 && epoch - best_epoch >= o->patience)
            break;
    }
    if (f.best_params && result->best_epoch != result->epochs_run)
        restore(m, f.best_params, f.best_bn);
    if (f.kept) {
        /* Without a snapshot the kept epoch is the last: the trainer's state. */
        if (!f.best_params) {
            bst_trainer_give_state(f.trainer, f.kept);
            f.kept->epochs = epochs_before + result->epochs_run;
        }
        *kept = f.kept;
        f.kept = NULL;
    }
    goto done;

io_error:
    status = BST_FIT_IO_ERROR;
    goto done;
no_memory:
    status = BST_FIT_NO_MEMORY;
done:
    fit_free(&f);
    return status;
}

int bst_evaluate_data(const BstModel *m, const BstData *data, const BstFitHooks *hooks,
                      double *mae, double *rmse)
{
    Fit f;
    double abs_sum = 0.0, sq_sum = 0.0;
    int64_t chunk = 0;
    memset(&f, 0, sizeof(f));
    if (data->seq_len != m->cfg.seq_len || data->n < 1 || data->n > (int64_t)UINT32_MAX ||
        data->spill)
        return -1;
    f.m = (BstModel *)m;
    f.data = data;
    f.L = data->seq_len;
    f.eval_rows = bst_predictor_batch_limit(&m->cfg, EVAL_BATCH);
    int ok = fit_alloc(&f, 0, data->n) == 0 &&
             (f.predictor = bst_predictor_create(m, EVAL_BATCH)) != NULL;
    if (ok) {
        add_errors(&f, data, f.order, data->n, hooks, &chunk,
                   (data->n + f.eval_rows - 1) / f.eval_rows, &abs_sum, &sq_sum);
        *mae = abs_sum / (double)data->n;
        *rmse = sqrt(sq_sum / (double)data->n);
    }
    fit_free(&f);
    return ok ? 0 : -1;
}

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
static void relayout(BstData *d, int32_t L)
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
        relayout(d, seq_len);
    if (resize_array((void **)&d->movies, n * L * sizeof(int32_t), resize, arg) ||
        resize_array((void **)&d->ratings, n * (L - 1) * sizeof(float), resize, arg))
        return -1;
    /* Wider: once both arrays have grown. */
    if (d->seq_len < seq_len && d->n > 0)
        relayout(d, seq_len);
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
    uint32_t *order;           /* [n]: validation windows first, then training */
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
} Fit;

/* Copies windows idx[0..n) of the data into the batch buffers. */
static BstBatch gather(Fit *f, const uint32_t *idx, int32_t n)
{
    const BstData *d = f->data;
    const size_t L = (size_t)f->L;
    for (int32_t j = 0; j < n; j++) {
        const size_t w = idx[j];
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

/* Errors over windows idx[0..n). */
static void evaluate_windows(Fit *f, const uint32_t *idx, int64_t n, const BstFitHooks *hooks,
                             double *mae, double *rmse)
{
    double abs_sum = 0.0, sq_sum = 0.0;
    const int32_t chunk = f->eval_rows;
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    for (int64_t first = 0; first < n; first += chunk) {
        if (hooks && hooks->before_batch)
            hooks->before_batch(hooks->arg, 0, first / chunk, n_chunks, NAN);
        const int32_t count = (int32_t)(n - first < chunk ? n - first : chunk);
        BstBatch b = gather(f, idx + first, count);
        bst_predict(f->predictor, &b, f->pred);
        for (int32_t j = 0; j < count; j++) {
            const double e = (double)f->pred[j] - (double)b.targets[j];
            abs_sum += fabs(e);
            sq_sum += e * e;
        }
    }
    *mae = abs_sum / (double)n;
    *rmse = sqrt(sq_sum / (double)n);
}

/* Bytes of bias_init's working arrays, all freed before it returns. */
static size_t bias_init_bytes(const BstConfig *c)
{
    const size_t movie_rows = (size_t)c->n_movies + 1, user_rows = (size_t)c->n_users + 1;
    const size_t rows = movie_rows > user_rows ? movie_rows : user_rows;
    /* movie_bias, user_bias, sum, count */
    return (movie_rows + user_rows + 2 * rows) * sizeof(double);
}

/*
 * Closed-form start of the bias terms over the training windows: the mean
 * target, then alternating ridge estimates of the movie and user biases
 * (Koren, "Factorization meets the neighborhood", 2008, section 2.1).  The
 * network learns the rest; starting from these it need not first discover
 * that some users rate everything a star higher.
 */
static int bias_init(Fit *f, double mean)
{
    BstModel *m = f->m;
    const BstData *d = f->data;
    const int32_t movie_rows = m->cfg.n_movies + 1, user_rows = m->cfg.n_users + 1;
    double *movie_bias = bst_alloc_zero((size_t)movie_rows, sizeof(double));
    double *user_bias = bst_alloc_zero((size_t)user_rows, sizeof(double));
    double *sum = bst_alloc_zero((size_t)(movie_rows > user_rows ? movie_rows : user_rows),
                                 sizeof(double));
    double *count = bst_alloc_zero((size_t)(movie_rows > user_rows ? movie_rows : user_rows),
                                   sizeof(double));
    if (!movie_bias || !user_bias || !sum || !count) {
        bst_free(movie_bias);
        bst_free(user_bias);
        bst_free(sum);
        bst_free(count);
        return -1;
    }
    const uint32_t *train = f->order + f->n_val;
    for (int round = 0; round < BST_BIAS_INIT_ROUNDS; round++) {
        for (int pass = 0; pass < 2; pass++) {  /* 0: movies, 1: users */
            const int32_t rows = pass ? user_rows : movie_rows;
            double *bias = pass ? user_bias : movie_bias;
            const double *other = pass ? movie_bias : user_bias;
            const double reg = pass ? BST_BIAS_INIT_USER_REG : BST_BIAS_INIT_MOVIE_REG;
            memset(sum, 0, (size_t)rows * sizeof(double));
            memset(count, 0, (size_t)rows * sizeof(double));
            for (int64_t j = 0; j < f->n_train; j++) {
                const size_t w = train[j];
                const int32_t mi = bst_row_or_zero(d->movies[w * f->L + f->L - 1], movie_rows);
                const int32_t ui = bst_row_or_zero(d->users ? d->users[w] : 0, user_rows);
                const int32_t self = pass ? ui : mi;
                sum[self] += d->targets[w] - mean - other[pass ? mi : ui];
                count[self] += 1.0;
            }
            for (int32_t r = 0; r < rows; r++)
                bias[r] = sum[r] / (reg + count[r]);
        }
    }
    m->params.global_bias[0] = (float)mean;
    for (int32_t r = 0; r < movie_rows; r++)
        m->params.movie_bias[r] = (float)movie_bias[r];
    for (int32_t r = 0; r < user_rows; r++)
        m->params.user_bias[r] = (float)user_bias[r];
    bst_free(movie_bias);
    bst_free(user_bias);
    bst_free(sum);
    bst_free(count);
    return 0;
}

/* Windows held by the batch buffers: a training batch, or an evaluation
 * chunk, whichever is larger (they take turns). */
static size_t fit_rows(int32_t train_rows, int32_t eval_rows)
{
    return (size_t)(train_rows > eval_rows ? train_rows : eval_rows);
}

/* Bytes fit_alloc allocates for n windows of L positions. */
static size_t fit_buffers_bytes(int64_t n, int32_t L, int32_t train_rows, int32_t eval_rows)
{
    const size_t rows = fit_rows(train_rows, eval_rows);
    return (size_t)n * sizeof(uint32_t) +                           /* order */
           rows * (size_t)L * sizeof(int32_t) +                     /* movies */
           rows * (size_t)(L - 1) * sizeof(float) +                 /* ratings */
           rows * (2 * sizeof(int32_t) + sizeof(float)) +           /* hist_len, users, targets */
           (size_t)eval_rows * sizeof(float);                       /* pred */
}

/* The window order and batch buffers for training batches of train_rows
 * windows and evaluation chunks of f->eval_rows; -1 when out of memory
 * (fit_free releases what was allocated). */
static int fit_alloc(Fit *f, int32_t train_rows)
{
    const size_t L = (size_t)f->L, rows = fit_rows(train_rows, f->eval_rows);
    f->order = bst_alloc((size_t)f->data->n * sizeof(uint32_t));
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
    for (int64_t i = 0; i < f->data->n; i++)
        f->order[i] = (uint32_t)i;
    return 0;
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
 * bst_fit allocates, in order: the batch buffers (fit_alloc), the best
 * epoch's snapshot, bias_init's arrays (freed on return), the trainer and
 * the validation predictor; all of it is freed when it returns.
 * bst_fit_continue keeping the state also allocates it, with the snapshot,
 * and hands it back with the trainer's slots in it (or the best epoch's).
 */
size_t bst_fit_continue_memory_bytes(const BstConfig *cfg, const BstFitOptions *o,
                                     int64_t n_windows, int keep_state)
{
    const int64_t n_val = validation_windows(n_windows, o->validation_fraction);
    const int32_t eval_rows = n_val > 0 ? bst_predictor_batch_limit(cfg, EVAL_BATCH) : 0;
    size_t held = fit_buffers_bytes(n_windows, cfg->seq_len, o->train.batch_size, eval_rows);
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

size_t bst_fit_memory_bytes(const BstConfig *cfg, const BstFitOptions *o, int64_t n_windows)
{
    return bst_fit_continue_memory_bytes(cfg, o, n_windows, 0);
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

    memset(result, 0, sizeof(*result));
    memset(&f, 0, sizeof(f));
    if (kept)
        *kept = NULL;
    if (bst_fit_options_check(o) || data->seq_len != L || data->n < 1 ||
        data->n > (int64_t)UINT32_MAX ||
        (from && (from->optimizer != o->train.optimizer || from->size != m->params.size ||
                  from->step < 0 || from->epochs < 0)))
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

    if (fit_alloc(&f, f.B) != 0)
        goto no_memory;
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

    /* The split: a seeded permutation, validation windows first. */
    if (f.n_val > 0) {
        BstRng split;
        bst_rng_seed(&split, o->train.seed ^ SPLIT_SALT);
        bst_rng_shuffle_u32(&split, f.order, (size_t)data->n);
    }
    uint32_t *train = f.order + f.n_val;
    double mean = 0.0;
    int32_t min_history = L - 1;
    for (int64_t j = 0; j < f.n_train; j++) {
        mean += data->targets[train[j]];
        const int32_t h = window_history(data, train[j], L);
        min_history = h < min_history ? h : min_history;
    }
    mean /= (double)f.n_train;
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
        float lo = data->targets[train[0]], hi = lo;
        for (int64_t j = 1; j < f.n_train; j++) {
            const float t = data->targets[train[j]];
            lo = t < lo ? t : lo;
            hi = t > hi ? t : hi;
        }
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
    if (!from && o->bias_init && m->cfg.use_bias && bias_init(&f, mean) != 0)
        goto no_memory;
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
    /* Each epoch shuffles the previous epoch's order: replaying the earlier
     * epochs' shuffles puts the order, and the stream, where they left them. */
    for (int32_t e = 0; e < epochs_before; e++) {
        if (hooks && hooks->before_batch)
            hooks->before_batch(hooks->arg, 0, e, epochs_before, NAN);
        bst_rng_shuffle_u32(&shuffle, train, (size_t)f.n_train);
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
        bst_rng_shuffle_u32(&shuffle, train, (size_t)f.n_train);
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
            BstBatch b = gather(&f, train + first, count);
            float loss = bst_train_step(f.trainer, &b, &abs_sum);
            if (!isfinite(loss)) {
                result->epochs_run = epoch;
                status = BST_FIT_DIVERGED;
                goto done;
            }
            loss_sum += (double)loss * count;
        }
        s.epoch = epoch;
        s.loss = loss_sum / (double)f.n_train;
        s.mae = abs_sum / (double)f.n_train;
        s.learning_rate = lr;
        s.val_mae = s.val_rmse = NAN;
        if (f.n_val > 0)
            evaluate_windows(&f, f.order, f.n_val, hooks, &s.val_mae, &s.val_rmse);
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
    memset(&f, 0, sizeof(f));
    if (data->seq_len != m->cfg.seq_len || data->n < 1 || data->n > (int64_t)UINT32_MAX)
        return -1;
    f.m = (BstModel *)m;
    f.data = data;
    f.L = data->seq_len;
    f.eval_rows = bst_predictor_batch_limit(&m->cfg, EVAL_BATCH);
    int ok = fit_alloc(&f, 0) == 0 &&
             (f.predictor = bst_predictor_create(m, EVAL_BATCH)) != NULL;
    if (ok)
        evaluate_windows(&f, f.order, data->n, hooks, mae, rmse);
    fit_free(&f);
    return ok ? 0 : -1;
}

#include "trainer.h"

#include <math.h>
#include <string.h>

#include "bst_alloc.h"
#include "layers.h"
#include "parallel.h"

struct BstTrainer {
    BstModel *model;
    BstTrainOptions opt;
    /* Invariant: grads is all zero between steps. */
    BstParams grads;
    BstParams acc;           /* Adagrad accumulator, or Adam first moment */
    BstParams acc2;          /* Adam second moment (unused by Adagrad) */
    int64_t step;
    float lr;                /* current learning rate */
    /* The model's tensors, for per-tensor decay.  Gradients and moments
     * share the slab layout, so a tensor's offset locates it in each. */
    BstTensor tensors[BST_MAX_TENSORS];
    int n_tensors;
    /* Adam: each tensor's deferred rows, by movie or by user (ROWS_DENSE:
     * the tensor is updated whole at every step), and their width. */
    int tensor_rows[BST_MAX_TENSORS];
    size_t tensor_width[BST_MAX_TENSORS];
    BstActs acts, dacts;
    BstRng rng;
    /* Distinct movie_emb rows touched by the current batch, so that Adagrad's
     * update (and clearing) of the table costs O(batch), not O(vocabulary).
     * Adam updates every row, but takes the gradient of the others (zero)
     * from L1 rather than the slab, and clears only the batch's; the
     * batch's users alike for the tables by user. */
    uint8_t *row_seen;       /* [n_movies + 1] */
    int32_t *rows;           /* [batch_size * L] */
    uint8_t *user_seen;      /* [n_users + 1] */
    int32_t *user_rows;      /* [batch_size] */
    /*
     * Adam's deferred rows.  A row by movie or by user that a batch leaves
     * alone has a zero gradient, and its step would only decay its moments
     * and weights: reading and writing the whole table every step for that
     * (18 MB of moments and weights a step in the default configuration)
     * is bound by memory on some CPUs.  So those steps wait in the
     * history, and a row takes them all at once (bst_adam_replay, the same
     * bits) before a batch reads it, or at bst_trainer_sync.
     */
    int64_t *movie_synced;   /* [n_movies + 1]: the step each row is at */
    int64_t *user_synced;    /* [n_users + 1] */
    float *hist_step;        /* [BST_ADAM_HISTORY_STEPS]: step hist_base + 1 + i's size */
    float *hist_lr;          /* [BST_ADAM_HISTORY_STEPS]: and its learning rate */
    int64_t hist_base;       /* every row is at least at this step */
    int state_given;         /* acc and acc2 moved out (bst_trainer_give_state) */
};

void bst_train_options_default(BstTrainOptions *o)
{
    o->optimizer = BST_OPT_ADAGRAD;
    o->learning_rate = 0.01f;
    o->batch_size = 265;
    o->seed = 42;
    o->weight_decay = 0.0f;
}

const char *bst_train_options_check(const BstTrainOptions *o)
{
    if (o->optimizer != BST_OPT_ADAGRAD && o->optimizer != BST_OPT_ADAM &&
        o->optimizer != BST_OPT_ADAMW)
        return "unknown optimizer";
    if (!(o->weight_decay >= 0.0f && o->weight_decay < 1.0f))
        return "weight decay must be in [0, 1)";
    if (!(o->learning_rate > 0.0f && isfinite(o->learning_rate)))
        return "learning rate must be finite and positive";
    if (o->batch_size < 1 || o->batch_size > 65536)
        return "batch size must be between 1 and 65536";
    return NULL;
}

/*
 * The tensors whose rows only the batch's movies or users get gradients in:
 * the embeddings by movie and by user, their factors and bias terms (the
 * backward adds to the rows of the batch's movies, of its targets and of
 * its users; every other row's gradient stays 0).
 */
enum { ROWS_DENSE = 0, ROWS_BY_MOVIE = 1, ROWS_BY_USER = 2 };

static int tensor_rows(const BstConfig *c, const BstTensor *x, size_t *width)
{
    static const char *const by_movie[] = {"movie_emb", "movie_factors", "movie_bias"};
    static const char *const by_user[] = {"user_emb", "user_factors", "user_bias"};
    for (int i = 0; i < 3; i++) {
        if (strcmp(x->name, by_movie[i]) == 0) {
            *width = x->size / ((size_t)c->n_movies + 1);
            return ROWS_BY_MOVIE;
        }
        if (strcmp(x->name, by_user[i]) == 0) {
            *width = x->size / ((size_t)c->n_users + 1);
            return ROWS_BY_USER;
        }
    }
    *width = 0;
    return ROWS_DENSE;
}

static int g_sparse_adam = 1;

static void deferred_restart(BstTrainer *t);

void bst_trainer_set_sparse_adam(int on)
{
    g_sparse_adam = on != 0;
}

static void fill(float *x, size_t n, float value)
{
    for (size_t i = 0; i < n; i++)
        x[i] = value;
}

int bst_optimizer_slots(BstOptimizerKind kind)
{
    switch (kind) {
    case BST_OPT_ADAGRAD:
        return 1;
    case BST_OPT_ADAM:
    case BST_OPT_ADAMW:
        return 2;
    }
    return 0;
}

/* The value a slot starts at: Keras' initial Adagrad accumulator, Adam's
 * zero moments. */
static float slot_initial_value(BstOptimizerKind kind)
{
    return kind == BST_OPT_ADAGRAD ? BST_ADAGRAD_INITIAL_ACCUMULATOR : 0.0f;
}

size_t bst_train_state_memory_bytes(const BstConfig *cfg, BstOptimizerKind kind)
{
    return sizeof(BstTrainState) +
           (size_t)bst_optimizer_slots(kind) * bst_config_num_params(cfg) * sizeof(float);
}

void bst_train_state_free(BstTrainState *s)
{
    if (!s)
        return;
    bst_free(s->slot[0]);
    bst_free(s->slot[1]);
    bst_free(s);
}

/* A state of kind over size floats per slot, its slots allocated but not
 * filled. */
static BstTrainState *state_alloc(BstOptimizerKind kind, size_t size, uint64_t seed)
{
    const int slots = bst_optimizer_slots(kind);
    if (slots == 0)
        return NULL;
    BstTrainState *s = bst_alloc_zero(1, sizeof(BstTrainState));
    if (!s)
        return NULL;
    s->optimizer = kind;
    s->seed = seed;
    s->size = size;
    bst_rng_seed(&s->dropout_rng, seed);
    for (int k = 0; k < slots; k++)
        if (!(s->slot[k] = bst_alloc(size * sizeof(float)))) {
            bst_train_state_free(s);
            return NULL;
        }
    return s;
}

BstTrainState *bst_train_state_create(const BstConfig *cfg, BstOptimizerKind kind,
                                      uint64_t seed)
{
    BstTrainState *s = state_alloc(kind, bst_config_num_params(cfg), seed);
    if (!s)
        return NULL;
    for (int k = 0; k < bst_optimizer_slots(kind); k++)
        fill(s->slot[k], s->size, slot_initial_value(kind));
    return s;
}

BstTrainState *bst_train_state_grow(const BstTrainState *s, const BstModel *from,
                                    const BstModel *to)
{
    if (s->size != from->params.size)
        return NULL;
    BstTrainState *g = bst_train_state_create(&to->cfg, s->optimizer, s->seed);
    if (!g)
        return NULL;
    g->step = s->step;
    g->epochs = s->epochs;
    g->dropout_rng = s->dropout_rng;
    for (int k = 0; k < bst_optimizer_slots(s->optimizer); k++)
        bst_model_carry_params(to, g->slot[k], from, s->slot[k]);
    return g;
}

size_t bst_trainer_memory_bytes(const BstConfig *cfg, const BstTrainOptions *o)
{
    const size_t param_bytes = bst_config_num_params(cfg) * sizeof(float);
    /* Slabs shaped like the parameters: the gradients, then Adagrad's
     * accumulator or Adam's two moments (grads, acc, acc2). */
    const size_t param_slabs = o->optimizer == BST_OPT_ADAGRAD ? 2 : 3;
    return sizeof(BstTrainer) + param_slabs * param_bytes +
           bst_acts_memory_bytes(cfg, o->batch_size, BST_ACTS_TRAINING) +
           bst_acts_memory_bytes(cfg, o->batch_size, BST_ACTS_GRADIENTS) +
           ((size_t)cfg->n_movies + 1) * sizeof(uint8_t) +
           (size_t)o->batch_size * cfg->seq_len * sizeof(int32_t) +
           ((size_t)cfg->n_users + 1) * sizeof(uint8_t) + (size_t)o->batch_size * sizeof(int32_t) +
           (o->optimizer == BST_OPT_ADAGRAD
                ? 0
                : ((size_t)cfg->n_movies + (size_t)cfg->n_users + 2) * sizeof(int64_t) +
                      2 * BST_ADAM_HISTORY_STEPS * sizeof(float));
}

BstTrainer *bst_trainer_create(BstModel *m, const BstTrainOptions *o)
{
    if (bst_train_options_check(o))
        return NULL;
    const BstConfig *c = &m->cfg;
    BstTrainer *t = bst_alloc_zero(1, sizeof(BstTrainer));
    if (!t)
        return NULL;
    t->model = m;
    t->opt = *o;
    t->lr = o->learning_rate;
    bst_threads_init();
    bst_rng_seed(&t->rng, o->seed);
    if (bst_params_alloc(&t->grads, c) != 0 || bst_params_alloc(&t->acc, c) != 0)
        goto fail;
    if (o->optimizer != BST_OPT_ADAGRAD) {
        if (bst_params_alloc(&t->acc2, c) != 0)
            goto fail;
        t->n_tensors = bst_param_tensors(c, &m->params, t->tensors);
        for (int i = 0; i < t->n_tensors; i++) {
            t->tensor_rows[i] = tensor_rows(c, &t->tensors[i], &t->tensor_width[i]);
            /* Narrow rows (the biases) cost more to replay one by one than
             * their whole tensor costs to update. */
            if (!g_sparse_adam || t->tensor_width[i] < BST_ADAM_DEFER_MIN_WIDTH)
                t->tensor_rows[i] = ROWS_DENSE;
        }
        t->movie_synced = bst_alloc_zero((size_t)c->n_movies + 1, sizeof(int64_t));
        t->user_synced = bst_alloc_zero((size_t)c->n_users + 1, sizeof(int64_t));
        t->hist_step = bst_alloc(BST_ADAM_HISTORY_STEPS * sizeof(float));
        t->hist_lr = bst_alloc(BST_ADAM_HISTORY_STEPS * sizeof(float));
        if (!t->movie_synced || !t->user_synced || !t->hist_step || !t->hist_lr)
            goto fail;
    } else {
        fill(t->acc.slab, t->acc.size, BST_ADAGRAD_INITIAL_ACCUMULATOR);
    }
    if (bst_acts_alloc(&t->acts, c, o->batch_size, BST_ACTS_TRAINING) != 0 ||
        bst_acts_alloc(&t->dacts, c, o->batch_size, BST_ACTS_GRADIENTS) != 0)
        goto fail;
    t->row_seen = bst_alloc_zero((size_t)c->n_movies + 1, sizeof(uint8_t));
    t->rows = bst_alloc((size_t)o->batch_size * c->seq_len * sizeof(int32_t));
    t->user_seen = bst_alloc_zero((size_t)c->n_users + 1, sizeof(uint8_t));
    t->user_rows = bst_alloc((size_t)o->batch_size * sizeof(int32_t));
    if (!t->row_seen || !t->rows || !t->user_seen || !t->user_rows)
        goto fail;
    return t;
fail:
    bst_trainer_free(t);
    return NULL;
}

int bst_trainer_grads_clear(const BstTrainer *t)
{
    for (size_t i = 0; i < t->grads.size; i++)
        if (t->grads.slab[i] != 0.0f)
            return 0;
    return 1;
}

void bst_trainer_set_learning_rate(BstTrainer *t, float lr)
{
    t->lr = lr;
}

/* The trainer's slots, in BstTrainState order. */
static float *trainer_slot(const BstTrainer *t, int k)
{
    return k == 0 ? t->acc.slab : t->acc2.slab;
}

static int state_fits(const BstTrainer *t, const BstTrainState *s)
{
    return !t->state_given && s->optimizer == t->opt.optimizer &&
           s->size == t->model->params.size;
}

/* Counters and stream of the trainer into s. */
static void copy_counters(const BstTrainer *t, BstTrainState *s)
{
    s->seed = t->opt.seed;
    s->step = t->step;
    s->dropout_rng = t->rng;
}

int bst_trainer_set_state(BstTrainer *t, const BstTrainState *s)
{
    if (!state_fits(t, s))
        return -1;
    bst_trainer_sync(t);
    for (int k = 0; k < bst_optimizer_slots(s->optimizer); k++)
        memcpy(trainer_slot(t, k), s->slot[k], s->size * sizeof(float));
    t->step = s->step;
    deferred_restart(t);
    /* Another seed's stream would not be this seed's continued. */
    if (s->seed == t->opt.seed)
        t->rng = s->dropout_rng;
    return 0;
}

int bst_trainer_copy_state(BstTrainer *t, BstTrainState *s)
{
    if (!state_fits(t, s))
        return -1;
    bst_trainer_sync(t);
    for (int k = 0; k < bst_optimizer_slots(s->optimizer); k++)
        memcpy(s->slot[k], trainer_slot(t, k), s->size * sizeof(float));
    copy_counters(t, s);
    return 0;
}

int bst_trainer_give_state(BstTrainer *t, BstTrainState *s)
{
    if (t->state_given || s->slot[0] || s->slot[1])
        return -1;
    bst_trainer_sync(t);
    s->optimizer = t->opt.optimizer;
    s->size = t->model->params.size;
    s->slot[0] = t->acc.slab;
    s->slot[1] = t->opt.optimizer == BST_OPT_ADAGRAD ? NULL : t->acc2.slab;
    copy_counters(t, s);
    /* The slabs are s's now: the trainer neither frees nor updates them. */
    t->acc.slab = NULL;
    t->acc2.slab = NULL;
    t->state_given = 1;
    return 0;
}

void bst_trainer_free(BstTrainer *t)
{
    if (!t)
        return;
    bst_params_free(&t->grads);
    bst_params_free(&t->acc);
    bst_params_free(&t->acc2);
    bst_acts_free(&t->acts);
    bst_acts_free(&t->dacts);
    bst_free(t->row_seen);
    bst_free(t->rows);
    bst_free(t->user_seen);
    bst_free(t->user_rows);
    bst_free(t->movie_synced);
    bst_free(t->user_synced);
    bst_free(t->hist_step);
    bst_free(t->hist_lr);
    bst_free(t);
}

/*
 * The distinct rows of n indices (idx NULL: all 0) into rows, each marked
 * in seen, mapped as the forward maps them (bst_row_or_zero); their number.
 * unmark_rows clears the marks for the next batch.
 */
static int32_t mark_rows(uint8_t *seen, int32_t *rows, const int32_t *idx, size_t n,
                         int32_t n_rows)
{
    int32_t count = 0;
    for (size_t i = 0; i < n; i++) {
        const int32_t r = bst_row_or_zero(idx ? idx[i] : 0, n_rows);
        if (!seen[r]) {
            seen[r] = 1;
            rows[count++] = r;
        }
    }
    return count;
}

static void unmark_rows(uint8_t *seen, const int32_t *rows, int32_t count)
{
    for (int32_t i = 0; i < count; i++)
        seen[rows[i]] = 0;
}

/* The batch's movies (every position's) and its users. */
static int32_t collect_rows(BstTrainer *t, const BstBatch *b)
{
    return mark_rows(t->row_seen, t->rows, b->movies, (size_t)b->n * t->model->cfg.seq_len,
                     t->model->cfg.n_movies + 1);
}

static int32_t collect_users(BstTrainer *t, const BstBatch *b)
{
    return mark_rows(t->user_seen, t->user_rows, b->users, (size_t)b->n,
                     t->model->cfg.n_users + 1);
}

/*
 * Optimizer updates over ranges, each followed by clearing the gradient it
 * consumed while it is still in cache.
 */
static void adagrad_range(BstTrainer *t, size_t lo, size_t hi)
{
    float *g = t->grads.slab + lo;
    bst_adagrad_update(t->model->params.slab + lo, t->acc.slab + lo, g, hi - lo, t->lr);
    memset(g, 0, (hi - lo) * sizeof(float));
}

/*
 * Entries [lo, hi) of one list: the floats of the touched embedding rows
 * (n_rows of d, in the order of t->rows), then the dense rest of the slab
 * (from emb on).  One parallel loop for both, each thread a share of
 * their sum, instead of a loop for each.
 */
static void adagrad_entries(BstTrainer *t, size_t n_rows, size_t emb, size_t lo, size_t hi)
{
    const size_t d = (size_t)t->model->cfg.embed_dim, row_floats = n_rows * d;
    for (size_t i = lo / d; i < n_rows && i * d < hi; i++) {
        const size_t a = lo > i * d ? lo - i * d : 0;
        const size_t b = hi < (i + 1) * d ? hi - i * d : d;
        adagrad_range(t, (size_t)t->rows[i] * d + a, (size_t)t->rows[i] * d + b);
    }
    if (hi > row_floats)
        adagrad_range(t, emb + (lo > row_floats ? lo - row_floats : 0), emb + hi - row_floats);
}

static void adam_range(BstTrainer *t, size_t lo, size_t hi, float step, float decay)
{
    float *g = t->grads.slab + lo;
    bst_adam_update(t->model->params.slab + lo, t->acc.slab + lo, t->acc2.slab + lo, g,
                    hi - lo, step, decay);
    memset(g, 0, (hi - lo) * sizeof(float));
}

/* Tensor i's weight decay (AdamW decays kernels and embeddings only), and
 * its decay at a step of learning rate lr: lr * that, as a replay of the
 * step computes it too (bst_adam_replay). */
static float tensor_weight_decay(const BstTrainer *t, int i)
{
    return t->opt.optimizer == BST_OPT_ADAMW && t->tensors[i].decay ? t->opt.weight_decay : 0.0f;
}

static float tensor_decay(const BstTrainer *t, int i)
{
    return t->lr * tensor_weight_decay(t, i);
}

/*
 * Adam's deferred rows (BstTrainer.tensor_rows) go through three passes, each one
 * parallel loop over one list of floats: tensor by tensor, a deferred
 * tensor's rows (the batch's, in the order of t->rows or t->user_rows, or
 * every row for DEFER_SYNC) of its row width, and for DEFER_UPDATE the dense
 * tensors whole.
 *   DEFER_CATCH_UP, before a batch reads its rows: each takes the steps it
 *     was left out of;
 *   DEFER_UPDATE, after the backward: the step, with the batch's gradients,
 *     for its rows and the dense tensors;
 *   DEFER_SYNC: every row takes the steps it was left out of.
 */
typedef enum { DEFER_CATCH_UP, DEFER_UPDATE, DEFER_SYNC } DeferredPass;

/* Tensor i's rows in a pass: their count, and their list (NULL: all). */
static size_t pass_rows(const BstTrainer *t, int i, DeferredPass pass, int32_t n_rows,
                        int32_t n_users, const int32_t **rows)
{
    const int by_movie = t->tensor_rows[i] == ROWS_BY_MOVIE;
    if (pass == DEFER_SYNC) {
        *rows = NULL;
        return (size_t)(by_movie ? t->model->cfg.n_movies : t->model->cfg.n_users) + 1;
    }
    *rows = by_movie ? t->rows : t->user_rows;
    return (size_t)(by_movie ? n_rows : n_users);
}

static size_t pass_size(const BstTrainer *t, DeferredPass pass, int32_t n_rows, int32_t n_users)
{
    size_t n = 0;
    const int32_t *rows;
    for (int i = 0; i < t->n_tensors; i++)
        if (t->tensor_rows[i] != ROWS_DENSE)
            n += pass_rows(t, i, pass, n_rows, n_users, &rows) * t->tensor_width[i];
        else if (pass == DEFER_UPDATE)
            n += t->tensors[i].size;
    return n;
}

/* Slab entries [lo, hi) (a part of row r of tensor i) from the step row r
 * is at to t->step. */
static void catch_up(BstTrainer *t, int i, int32_t r, size_t lo, size_t hi)
{
    const int64_t at = (t->tensor_rows[i] == ROWS_BY_MOVIE ? t->movie_synced : t->user_synced)[r];
    bst_adam_replay(t->model->params.slab + lo, t->acc.slab + lo, t->acc2.slab + lo, hi - lo,
                    t->hist_step + (at - t->hist_base), t->hist_lr + (at - t->hist_base),
                    tensor_weight_decay(t, i), (int)(t->step - at));
}

/* Entries [lo, hi) of a pass's list. */
static void pass_entries(BstTrainer *t, DeferredPass pass, int32_t n_rows, int32_t n_users,
                         float step, size_t lo, size_t hi)
{
    const float *slab = t->model->params.slab;
    size_t base = 0; /* the list's offset of tensor i */
    for (int i = 0; i < t->n_tensors && base < hi; i++) {
        const size_t start = (size_t)(t->tensors[i].data - slab);
        if (t->tensor_rows[i] == ROWS_DENSE) {
            if (pass != DEFER_UPDATE)
                continue;
            const size_t end = base + t->tensors[i].size;
            const size_t a = base > lo ? base : lo, b = end < hi ? end : hi;
            if (a < b)
                adam_range(t, start + a - base, start + b - base, step, tensor_decay(t, i));
            base = end;
            continue;
        }
        const int32_t *rows;
        const size_t width = t->tensor_width[i];
        const size_t count = pass_rows(t, i, pass, n_rows, n_users, &rows);
        const size_t end = base + count * width;
        for (size_t j = lo > base ? (lo - base) / width : 0; j < count && base + j * width < hi;
             j++) {
            const size_t row_lo = base + j * width;
            const size_t a = lo > row_lo ? lo - row_lo : 0;
            const size_t b = hi < row_lo + width ? hi - row_lo : width;
            const int32_t r = rows ? rows[j] : (int32_t)j;
            const size_t at = start + (size_t)r * width;
            if (pass == DEFER_UPDATE)
                adam_range(t, at + a, at + b, step, tensor_decay(t, i));
            else
                catch_up(t, i, r, at + a, at + b);
        }
        base = end;
    }
}

static void deferred_pass(BstTrainer *t, DeferredPass pass, int32_t n_rows, int32_t n_users,
                          float step)
{
    const size_t n = pass_size(t, pass, n_rows, n_users);
    /* A replay's cost grows with its steps; a pass's work is no finer. */
    PARALLEL_FOR(n, 16, 8.0 * n, lo, hi, pass_entries(t, pass, n_rows, n_users, step, lo, hi));
    /* The batch's rows are at this step now. */
    for (int32_t i = 0; i < n_rows; i++)
        t->movie_synced[t->rows[i]] = t->step;
    for (int32_t i = 0; i < n_users; i++)
        t->user_synced[t->user_rows[i]] = t->step;
}

/* Every row at t->step, and the history empty. */
static void deferred_restart(BstTrainer *t)
{
    if (t->opt.optimizer == BST_OPT_ADAGRAD)
        return;
    for (int32_t r = 0; r <= t->model->cfg.n_movies; r++)
        t->movie_synced[r] = t->step;
    for (int32_t r = 0; r <= t->model->cfg.n_users; r++)
        t->user_synced[r] = t->step;
    t->hist_base = t->step;
}

void bst_trainer_sync(BstTrainer *t)
{
    if (t->opt.optimizer == BST_OPT_ADAGRAD || t->state_given || t->step == t->hist_base)
        return;
    deferred_pass(t, DEFER_SYNC, 0, 0, 0.0f);
    deferred_restart(t);
}

float bst_train_step(BstTrainer *t, const BstBatch *b, double *abs_err_sum)
{
    if (!b || b->n < 1 || b->n > t->opt.batch_size || !b->targets || t->state_given)
        return NAN;
    BstModel *m = t->model;
    const size_t d = (size_t)m->cfg.embed_dim;
    const int adagrad = t->opt.optimizer == BST_OPT_ADAGRAD;

    /* The batch's movies and users; under Adam, their deferred rows take the
     * steps they were left out of before the forward reads them. */
    const int32_t n_rows = collect_rows(t, b), n_users = adagrad ? 0 : collect_users(t, b);
    if (!adagrad)
        deferred_pass(t, DEFER_CATCH_UP, n_rows, n_users, 0.0f);

    float loss = bst_forward(m, &t->acts, b, 1, &t->rng);
    if (abs_err_sum) {
        double s = 0.0;
        for (int32_t i = 0; i < b->n; i++)
            s += fabs((double)t->acts.pred[i] - (double)b->targets[i]);
        *abs_err_sum += s;
    }
    /* Keras updates the moving statistics during the training forward pass. */
    bst_update_bn_moving(m, &t->acts);
    bst_backward(m, &t->acts, &t->dacts, &t->grads, b);

    /* movie_emb leads the slab; everything after it is updated densely. */
    const size_t emb = ((size_t)m->cfg.n_movies + 1) * d;
    const size_t dense = t->grads.size - emb;

    /* Each update also restores the all-zero gradient invariant. */
    t->step++;
    if (adagrad) {
        /* Rows outside the batch have zero gradient, which Adagrad maps to no
         * change at all: updating only the touched rows is exact.  The rows
         * are distinct, so threads can take any ranges of their floats and
         * of the dense rest's (adagrad_entries). */
        const size_t n = (size_t)n_rows * d + dense;
        PARALLEL_FOR(n, 16, 4.0 * n, lo, hi, adagrad_entries(t, (size_t)n_rows, emb, lo, hi));
    } else {
        /* Adam's moments decay even under a zero gradient, so every row
         * takes every step: the batch's now, the others when a batch reads
         * them (or at bst_trainer_sync), from the history. */
        const float step = bst_adam_step_size(t->lr, t->step);
        t->hist_step[t->step - t->hist_base - 1] = step;
        t->hist_lr[t->step - t->hist_base - 1] = t->lr;
        deferred_pass(t, DEFER_UPDATE, n_rows, n_users, step);
        if (t->step - t->hist_base == BST_ADAM_HISTORY_STEPS)
            bst_trainer_sync(t);
    }
    unmark_rows(t->row_seen, t->rows, n_rows);
    unmark_rows(t->user_seen, t->user_rows, n_users);
    return loss;
}

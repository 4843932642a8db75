#include "trainer.h"

#include <math.h>
#include <string.h>

#include "bst_alloc.h"
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
    BstActs acts, dacts;
    BstRng rng;
    /* Distinct movie_emb rows touched by the current batch, so that Adagrad's
     * update (and clearing) of the table costs O(batch), not O(vocabulary).
     * Adam updates, and clears, the whole table anyway. */
    uint8_t *row_seen;       /* [n_movies + 1] */
    int32_t *rows;           /* [batch_size * L] */
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
           (size_t)o->batch_size * cfg->seq_len * sizeof(int32_t);
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
    } else {
        for (size_t i = 0; i < t->acc.size; i++)
            t->acc.slab[i] = BST_ADAGRAD_INITIAL_ACCUMULATOR;
    }
    if (bst_acts_alloc(&t->acts, c, o->batch_size, BST_ACTS_TRAINING) != 0 ||
        bst_acts_alloc(&t->dacts, c, o->batch_size, BST_ACTS_GRADIENTS) != 0)
        goto fail;
    t->row_seen = bst_alloc_zero((size_t)c->n_movies + 1, sizeof(uint8_t));
    t->rows = bst_alloc((size_t)o->batch_size * c->seq_len * sizeof(int32_t));
    if (!t->row_seen || !t->rows)
        goto fail;
    return t;
fail:
    bst_trainer_free(t);
    return NULL;
}

void bst_trainer_set_learning_rate(BstTrainer *t, float lr)
{
    t->lr = lr;
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
    bst_free(t);
}

/* Same out-of-range -> OOV mapping as the embedding layer. */
static int32_t collect_rows(BstTrainer *t, const BstBatch *b)
{
    const int32_t n_rows = t->model->cfg.n_movies + 1;
    const size_t n = (size_t)b->n * t->model->cfg.seq_len;
    int32_t count = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t r = b->movies[i];
        if (r < 0 || r >= n_rows)
            r = 0;
        if (!t->row_seen[r]) {
            t->row_seen[r] = 1;
            t->rows[count++] = r;
        }
    }
    return count;
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

/* Entries [lo, hi) of the list of touched embedding rows. */
static void adagrad_rows(BstTrainer *t, size_t lo, size_t hi)
{
    const size_t d = (size_t)t->model->cfg.embed_dim;
    for (size_t i = lo; i < hi; i++)
        adagrad_range(t, (size_t)t->rows[i] * d, (size_t)(t->rows[i] + 1) * d);
}

static void adam_range(BstTrainer *t, size_t lo, size_t hi, float step, float decay)
{
    float *g = t->grads.slab + lo;
    bst_adam_update(t->model->params.slab + lo, t->acc.slab + lo, t->acc2.slab + lo, g,
                    hi - lo, step, decay);
    memset(g, 0, (hi - lo) * sizeof(float));
}

float bst_train_step(BstTrainer *t, const BstBatch *b, double *abs_err_sum)
{
    if (!b || b->n < 1 || b->n > t->opt.batch_size || !b->targets)
        return NAN;
    BstModel *m = t->model;
    const size_t d = (size_t)m->cfg.embed_dim;

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
    if (t->opt.optimizer == BST_OPT_ADAGRAD) {
        /* Rows outside the batch have zero gradient, which Adagrad maps to no
         * change at all: updating only the touched rows is exact.  The rows
         * are distinct, so threads can take ranges of the list. */
        int32_t n_rows = collect_rows(t, b);
        PARALLEL_FOR((size_t)n_rows, 1, 4.0 * n_rows * d, lo, hi,
                     adagrad_rows(t, lo, hi));
        PARALLEL_FOR(dense, 16, 4.0 * dense, lo, hi, adagrad_range(t, emb + lo, emb + hi));
        for (int32_t i = 0; i < n_rows; i++)
            t->row_seen[t->rows[i]] = 0;
    } else {
        /* Adam's moments decay even under a zero gradient: the whole table
         * moves.  Tensor by tensor, since weight decay is per tensor. */
        float step = bst_adam_step_size(t->lr, t->step);
        for (int i = 0; i < t->n_tensors; i++) {
            const size_t off = (size_t)(t->tensors[i].data - m->params.slab);
            const size_t n = t->tensors[i].size;
            const float decay = t->opt.optimizer == BST_OPT_ADAMW && t->tensors[i].decay
                                    ? t->lr * t->opt.weight_decay : 0.0f;
            PARALLEL_FOR(n, 16, 8.0 * n, lo, hi,
                         adam_range(t, off + lo, off + hi, step, decay));
        }
    }
    return loss;
}

#include "trainer.h"

#include <math.h>
#include <string.h>

#include "bst_alloc.h"

struct BstTrainer {
    BstModel *model;
    BstTrainOptions opt;
    /* Invariant: grads is all zero between steps. */
    BstParams grads;
    BstParams acc;           /* Adagrad accumulator, or Adam first moment */
    BstParams acc2;          /* Adam second moment (unused by Adagrad) */
    int64_t step;
    BstActs acts, dacts;
    BstRng rng;
    /* Distinct movie_emb rows touched by the current batch, so that zeroing
     * (and, for Adagrad, updating) the table costs O(batch), not O(vocabulary). */
    uint8_t *row_seen;       /* [n_movies + 1] */
    int32_t *rows;           /* [batch_size * L] */
};

void bst_train_options_default(BstTrainOptions *o)
{
    o->optimizer = BST_OPT_ADAGRAD;
    o->learning_rate = 0.01f;
    o->batch_size = 265;
    o->seed = 42;
}

const char *bst_train_options_check(const BstTrainOptions *o)
{
    if (o->optimizer != BST_OPT_ADAGRAD && o->optimizer != BST_OPT_ADAM)
        return "unknown optimizer";
    if (!(o->learning_rate > 0.0f && isfinite(o->learning_rate)))
        return "learning rate must be finite and positive";
    if (o->batch_size < 1 || o->batch_size > 65536)
        return "batch size must be between 1 and 65536";
    return NULL;
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
    bst_rng_seed(&t->rng, o->seed);
    if (bst_params_alloc(&t->grads, c) != 0 || bst_params_alloc(&t->acc, c) != 0)
        goto fail;
    if (o->optimizer == BST_OPT_ADAM) {
        if (bst_params_alloc(&t->acc2, c) != 0)
            goto fail;
    } else {
        for (size_t i = 0; i < t->acc.size; i++)
            t->acc.slab[i] = BST_ADAGRAD_INITIAL_ACCUMULATOR;
    }
    if (bst_acts_alloc(&t->acts, c, o->batch_size, 0) != 0 ||
        bst_acts_alloc(&t->dacts, c, o->batch_size, 1) != 0)
        goto fail;
    t->row_seen = bst_alloc_zero((size_t)c->n_movies + 1, 1);
    t->rows = bst_alloc((size_t)o->batch_size * c->seq_len * sizeof(int32_t));
    if (!t->row_seen || !t->rows)
        goto fail;
    return t;
fail:
    bst_trainer_free(t);
    return NULL;
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
    float *w = m->params.slab, *g = t->grads.slab;
    const size_t dense = t->grads.size - emb;
    int32_t n_rows = collect_rows(t, b);

    t->step++;
    if (t->opt.optimizer == BST_OPT_ADAGRAD) {
        /* Rows outside the batch have zero gradient, which Adagrad maps to no
         * change at all: updating only the touched rows is exact. */
        for (int32_t i = 0; i < n_rows; i++) {
            size_t off = (size_t)t->rows[i] * d;
            bst_adagrad_update(w + off, t->acc.slab + off, g + off, d, t->opt.learning_rate);
        }
        bst_adagrad_update(w + emb, t->acc.slab + emb, g + emb, dense, t->opt.learning_rate);
    } else {
        /* Adam's moments decay even under a zero gradient: the whole table moves. */
        float step = bst_adam_step_size(t->opt.learning_rate, t->step);
        bst_adam_update(w, t->acc.slab, t->acc2.slab, g, t->grads.size, step);
    }

    /* Restore the all-zero gradient invariant. */
    for (int32_t i = 0; i < n_rows; i++) {
        memset(g + (size_t)t->rows[i] * d, 0, d * sizeof(float));
        t->row_seen[t->rows[i]] = 0;
    }
    memset(g + emb, 0, dense * sizeof(float));
    return loss;
}

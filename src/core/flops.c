/* The model's FLOPs per window (flops.h). */
#include "flops.h"

#include <stdio.h>
#include <string.h>

static void dense(BstDense *out, int *n, const char *name, int32_t rows, int32_t history_rows,
                  int32_t in_dim, int32_t out_dim)
{
    BstDense *e = &out[(*n)++];
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->rows = rows;
    e->history_rows = history_rows;
    e->in_dim = in_dim;
    e->out_dim = out_dim;
}

/* The linear_forward calls of bst_forward (model.c) in prediction, in its
 * order; training folds some (bst_training_dense_flops). */
int bst_dense_layers(const BstConfig *c, BstDense out[BST_MAX_DENSE])
{
    const int32_t L = c->seq_len, d = c->embed_dim, hd = c->heads * c->embed_dim;
    int n = 0;
    char name[16];

    /* Movies with genres: Dense(d) over [embedding | genres] at every
     * position; the history's do not depend on the target. */
    if (c->n_genres > 0)
        dense(out, &n, "genre_w", L, L - 1, d + c->n_genres, d);
    /* Queries, keys and values of every position in one product (key_dim = d):
     * the history's are the same whatever the target. */
    dense(out, &n, "wqkv", L, L - 1, d, 3 * hd);
    /* From here on every position has attended to the target. */
    dense(out, &n, "wo", L, 0, hd, d);
    dense(out, &n, "ffn_w", L, 0, d, d);
    int32_t in = bst_config_mlp_input(c);
    for (int i = 0; i < c->n_hidden; i++) {
        snprintf(name, sizeof(name), "mlp%d_w", i);
        dense(out, &n, name, 1, 0, in, c->hidden[i]);
        in = c->hidden[i];
    }
    dense(out, &n, "out_w", 1, 0, in, 1);
    return n;
}

void bst_model_flops(const BstConfig *c, BstFlops *f)
{
    BstDense layers[BST_MAX_DENSE];
    const int n = bst_dense_layers(c, layers);
    const double L = c->seq_len, dk = c->embed_dim;

    memset(f, 0, sizeof(*f));
    for (int i = 0; i < n; i++) {
        const double per_row = 2.0 * layers[i].in_dim * layers[i].out_dim;
        f->dense_forward += per_row * layers[i].rows;
        f->target_independent += per_row * layers[i].history_rows;
    }
    /* Per head: scores Q·Kᵀ (L x dk by dk x L) and context P·V (L x L by L x dk). */
    f->attention_forward = c->heads * 2.0 * (2.0 * L * L * dk);
    f->factor_forward = 2.0 * c->n_factors;
    f->forward = f->dense_forward + f->attention_forward + f->factor_forward;
    f->backward = 2.0 * f->forward;
    f->train = f->forward + f->backward;
}

double bst_training_dense_flops(const BstConfig *c, int32_t batch, int32_t n_distinct)
{
    BstDense layers[BST_MAX_DENSE];
    const int n = bst_dense_layers(c, layers);
    const int32_t positions = c->seq_len - 1 + (c->rating_add ? 1 : 0);
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        const double per_row = 2.0 * layers[i].in_dim * layers[i].out_dim;
        if (strcmp(layers[i].name, "genre_w") == 0)
            total += per_row * n_distinct;
        else if (strcmp(layers[i].name, "wqkv") == 0)
            /* Keys folded into the queries (layers.h): the queries' and
             * values' two thirds of the columns, and per head Wq_h Wk_h^T
             * and bq_h Wk_h^T. */
            total += per_row * 2.0 / 3.0 * ((double)n_distinct + positions) +
                     c->heads * 2.0 * c->embed_dim * c->embed_dim * (c->embed_dim + 1.0);
        else if (strcmp(layers[i].name, "wo") == 0)
            /* Folded into each head's values: Wv_h Wo_h and bv_h Wo_h, no
             * product over the rows. */
            total += c->heads * 2.0 * c->embed_dim * c->embed_dim * (c->embed_dim + 1.0);
        else
            total += per_row * layers[i].rows * (double)batch;
    }
    return total;
}

double bst_recommend_flops(const BstConfig *c, int64_t candidates)
{
    if (candidates < 1)
        return 0.0;
    BstFlops f;
    bst_model_flops(c, &f);
    return f.target_independent + (double)candidates * (f.forward - f.target_independent);
}

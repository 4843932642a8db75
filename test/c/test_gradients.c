/*
 * Finite-difference checks of every layer's backward and of the whole
 * network's parameter gradients.
 *
 * Each layer is wrapped as loss = sum(out * upstream) with a random upstream
 * gradient, so d loss / d out = upstream exercises every output element with
 * a different weight (a constant upstream would hide wrong transposes and
 * terms that sum to zero).  The loss is accumulated in double; the layers
 * themselves run in float32.
 *
 * Step and tolerance: with inputs of order 1, central differences with step h
 * have truncation error ~ h^2 * f''' (1e-4 for h = 1e-2) and rounding error
 * ~ eps_float * |loss| / h (1e-7 * 10 / 1e-2 = 1e-4).  The error metric,
 * max |analytic - numeric| / max(|analytic|, |numeric|) over the tensor, thus
 * sits around 1e-4..1e-3, and the tolerance of 1e-2 leaves an order of
 * magnitude of margin.  A wrong transpose, a missing term or a misplaced
 * scale changes gradients by a fraction of their size (e.g. dropping the
 * layernorm mean term errs by ~ mean(dout*gamma), about 1/sqrt(d) = 0.4 of
 * the gradient for d = 5), i.e. 30x above the tolerance; that case was
 * verified by hand to fail.  Inputs of piecewise-linear layers are kept away
 * from the kink so the differences never straddle it.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "layers.h"
#include "model.h"
#include "test_util.h"

#define STEP 1e-2
#define TOL 1e-2
/* Layer gradients are all of order 1; the floor only avoids dividing by 0. */
#define LAYER_FLOOR 1e-6
/* In the network a step also moves pre-activations of the LeakyReLUs, some
 * of which sit near the kink; the error of a straddling difference grows with
 * the step (3e-2: 1e-1, 1e-2: 2e-2, 3e-3: 5e-4), while rounding noise grows
 * as it shrinks (1e-3: ~2e-3).  3e-3 sits at the minimum. */
#define NET_STEP 3e-3

typedef double (*LossFn)(void *ctx);

static double dot(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * (double)b[i];
    return s;
}

/* Compares analytic[0..n) with central differences of loss(ctx) in x[0..n). */
static void check_grad(const char *what, float *x, const float *analytic, size_t n,
                       LossFn loss, void *ctx, double h, double floor)
{
    double max_err = 0.0, max_ref = 0.0;
    for (size_t i = 0; i < n; i++) {
        float save = x[i];
        float xp = (float)(save + h), xm = (float)(save - h);
        x[i] = xp;
        double lp = loss(ctx);
        x[i] = xm;
        double lm = loss(ctx);
        x[i] = save;
        /* Divide by the step actually taken in float, not the nominal one. */
        double num = (lp - lm) / ((double)xp - (double)xm);
        max_err = fmax(max_err, fabs(num - analytic[i]));
        max_ref = fmax(max_ref, fmax(fabs(num), fabs((double)analytic[i])));
    }
    double rel = max_err / fmax(max_ref, floor);
    printf("  %-24s worst rel err %.2e  (max |grad| %.2e)\n", what, rel, max_ref);
    CHECK(rel < TOL, "%s: gradient mismatch (rel err %.3e)", what, rel);
}

/* ------------------------------------------------------------- embedding */

typedef struct {
    int B, L, d, rows;
    int32_t *movies;
    float *ratings, *emb, *pos, *out, *up;
} EmbCase;

static double emb_loss(void *p)
{
    EmbCase *c = p;
    embedding_forward(c->out, c->movies, c->ratings, c->emb, c->pos, c->rows, c->B, c->L, c->d);
    return dot(c->out, c->up, (size_t)c->B * c->L * c->d);
}

static void test_embedding(BstRng *rng)
{
    EmbCase c = {.B = 3, .L = 4, .d = 5, .rows = 6};
    /* Repeated rows (scatter-add), row 0 and out-of-range indices (read as 0). */
    int32_t movies[12] = {1, 2, 1, 3, 0, 5, 5, 2, 9, -1, 4, 1};
    size_t n_out = (size_t)c.B * c.L * c.d;
    c.movies = movies;
    c.ratings = new_floats((size_t)c.B * (c.L - 1));
    c.emb = new_floats((size_t)c.rows * c.d);
    c.pos = new_floats((size_t)(c.L - 1) * c.d);
    c.out = new_floats(n_out);
    c.up = new_floats(n_out);
    fill_uniform(c.ratings, (size_t)c.B * (c.L - 1), 1.0f, 5.0f, rng);
    fill_uniform(c.emb, (size_t)c.rows * c.d, -1.0f, 1.0f, rng);
    fill_uniform(c.pos, (size_t)(c.L - 1) * c.d, -1.0f, 1.0f, rng);
    fill_uniform(c.up, n_out, -1.0f, 1.0f, rng);
    float *d_emb = new_floats((size_t)c.rows * c.d), *d_pos = new_floats((size_t)(c.L - 1) * c.d);
    embedding_backward(d_emb, d_pos, c.up, c.movies, c.ratings, c.rows, c.B, c.L, c.d);
    printf("embedding\n");
    check_grad("embedding.movie_emb", c.emb, d_emb, (size_t)c.rows * c.d, emb_loss, &c, STEP, LAYER_FLOOR);
    check_grad("embedding.pos_emb", c.pos, d_pos, (size_t)(c.L - 1) * c.d, emb_loss, &c, STEP, LAYER_FLOOR);
    free(c.ratings); free(c.emb); free(c.pos); free(c.out); free(c.up); free(d_emb); free(d_pos);
}

/* ---------------------------------------------------------------- linear */

typedef struct {
    int n, in, out;
    float *x, *w, *b, *y, *up;
} LinCase;

static double lin_loss(void *p)
{
    LinCase *c = p;
    linear_forward(c->y, c->x, c->w, c->b, c->n, c->in, c->out);
    return dot(c->y, c->up, (size_t)c->n * c->out);
}

static void test_linear(BstRng *rng)
{
    /* Distinct n, in, out so a transposed operand cannot line up by accident. */
    LinCase c = {.n = 7, .in = 5, .out = 4};
    c.x = new_floats((size_t)c.n * c.in);
    c.w = new_floats((size_t)c.in * c.out);
    c.b = new_floats((size_t)c.out);
    c.y = new_floats((size_t)c.n * c.out);
    c.up = new_floats((size_t)c.n * c.out);
    fill_uniform(c.x, (size_t)c.n * c.in, -1, 1, rng);
    fill_uniform(c.w, (size_t)c.in * c.out, -1, 1, rng);
    fill_uniform(c.b, (size_t)c.out, -1, 1, rng);
    fill_uniform(c.up, (size_t)c.n * c.out, -1, 1, rng);
    float *dx = new_floats((size_t)c.n * c.in), *dw = new_floats((size_t)c.in * c.out);
    float *db = new_floats((size_t)c.out);
    /* Parameter gradients must accumulate: start from a known value and subtract it. */
    for (int i = 0; i < c.out; i++)
        db[i] = 1.0f;
    linear_backward(dx, dw, db, c.up, c.x, c.w, c.n, c.in, c.out);
    for (int i = 0; i < c.out; i++)
        db[i] -= 1.0f;
    printf("linear\n");
    check_grad("linear.x", c.x, dx, (size_t)c.n * c.in, lin_loss, &c, STEP, LAYER_FLOOR);
    check_grad("linear.w", c.w, dw, (size_t)c.in * c.out, lin_loss, &c, STEP, LAYER_FLOOR);
    check_grad("linear.b", c.b, db, (size_t)c.out, lin_loss, &c, STEP, LAYER_FLOOR);
    free(c.x); free(c.w); free(c.b); free(c.y); free(c.up); free(dx); free(dw); free(db);
}

/* ------------------------------------------------------- layer/batch norm */

typedef struct {
    int n, d, batch;  /* batch = 1: BatchNorm (over rows), 0: LayerNorm (over features) */
    float eps;
    float *x, *g, *b, *y, *s1, *s2, *up;
} NormCase;

static double norm_loss(void *p)
{
    NormCase *c = p;
    if (c->batch)
        batchnorm_forward(c->y, c->s1, c->s2, c->x, c->g, c->b, c->n, c->d, c->eps);
    else
        layernorm_forward(c->y, c->s1, c->s2, c->x, c->g, c->b, c->n, c->d, c->eps);
    return dot(c->y, c->up, (size_t)c->n * c->d);
}

static void test_norm(int batch, BstRng *rng)
{
    NormCase c = {.n = 6, .d = 5, .batch = batch, .eps = 1e-3f};
    size_t nd = (size_t)c.n * c.d, stats = (size_t)(batch ? c.d : c.n);
    c.x = new_floats(nd);
    c.g = new_floats((size_t)c.d);
    c.b = new_floats((size_t)c.d);
    c.y = new_floats(nd);
    c.s1 = new_floats(stats);
    c.s2 = new_floats(stats);
    c.up = new_floats(nd);
    /* An offset makes the mean term matter. */
    fill_uniform(c.x, nd, -1.0f, 2.0f, rng);
    fill_uniform(c.g, (size_t)c.d, 0.5f, 1.5f, rng);
    fill_uniform(c.b, (size_t)c.d, -0.5f, 0.5f, rng);
    fill_uniform(c.up, nd, -1, 1, rng);
    float *dx = new_floats(nd), *dg = new_floats((size_t)c.d), *db = new_floats((size_t)c.d);
    norm_loss(&c);
    if (batch)
        batchnorm_backward(dx, dg, db, c.up, c.x, c.s1, c.s2, c.g, c.n, c.d, c.eps);
    else
        layernorm_backward(dx, dg, db, c.up, c.x, c.s1, c.s2, c.g, c.n, c.d);
    const char *name = batch ? "batchnorm" : "layernorm";
    char what[64];
    printf("%s\n", name);
    snprintf(what, sizeof(what), "%s.x", name);
    check_grad(what, c.x, dx, nd, norm_loss, &c, STEP, LAYER_FLOOR);
    snprintf(what, sizeof(what), "%s.gamma", name);
    check_grad(what, c.g, dg, (size_t)c.d, norm_loss, &c, STEP, LAYER_FLOOR);
    snprintf(what, sizeof(what), "%s.beta", name);
    check_grad(what, c.b, db, (size_t)c.d, norm_loss, &c, STEP, LAYER_FLOOR);
    free(c.x); free(c.g); free(c.b); free(c.y); free(c.s1); free(c.s2); free(c.up);
    free(dx); free(dg); free(db);
}

/* ---------------------------------------------------- elementwise layers */

typedef struct {
    size_t n;
    int kind;  /* 0 leaky relu, 1 dropout, 2 mse */
    float slope, p;
    uint64_t seed;
    float *x, *y, *mask, *target, *up;
} EltCase;

static double elt_loss(void *p)
{
    EltCase *c = p;
    BstRng rng;
    switch (c->kind) {
    case 0:
        leaky_relu_forward(c->y, c->x, c->n, c->slope);
        break;
    case 1:
        /* Same seed every evaluation: the same mask. */
        bst_rng_seed(&rng, c->seed);
        dropout_forward(c->y, c->mask, c->x, c->n, c->p, &rng);
        break;
    default:
        return mse_forward(c->x, c->target, (int)c->n);
    }
    return dot(c->y, c->up, c->n);
}

static void test_elementwise(BstRng *rng)
{
    EltCase c = {.n = 24, .slope = 0.3f, .p = 0.4f, .seed = 7};
    c.x = new_floats(c.n);
    c.y = new_floats(c.n);
    c.mask = new_floats(c.n);
    c.target = new_floats(c.n);
    c.up = new_floats(c.n);
    float *dx = new_floats(c.n);
    /* Keep |x| >= 0.1 > STEP so no difference straddles the kink at 0. */
    for (size_t i = 0; i < c.n; i++) {
        float u = 0.1f + 0.9f * bst_rng_uniform(rng);
        c.x[i] = (i % 2) ? u : -u;
    }
    fill_uniform(c.up, c.n, -1, 1, rng);
    fill_uniform(c.target, c.n, -1, 1, rng);

    printf("leaky_relu\n");
    c.kind = 0;
    leaky_relu_backward(dx, c.up, c.x, c.n, c.slope);
    check_grad("leaky_relu.x", c.x, dx, c.n, elt_loss, &c, STEP, LAYER_FLOOR);

    printf("dropout\n");
    c.kind = 1;
    elt_loss(&c);
    dropout_backward(dx, c.up, c.mask, c.n);
    int dropped = 0;
    for (size_t i = 0; i < c.n; i++)
        dropped += c.mask[i] == 0.0f;
    CHECK(dropped > 0 && dropped < (int)c.n, "dropout: degenerate mask (%d dropped)", dropped);
    check_grad("dropout.x", c.x, dx, c.n, elt_loss, &c, STEP, LAYER_FLOOR);

    printf("mse\n");
    c.kind = 2;
    mse_backward(dx, c.x, c.target, (int)c.n);
    check_grad("mse.pred", c.x, dx, c.n, elt_loss, &c, STEP, LAYER_FLOOR);
    free(c.x); free(c.y); free(c.mask); free(c.target); free(c.up); free(dx);
}

/* ------------------------------------------------------------- attention */

typedef struct {
    int B, L, H, dk;
    float p;
    uint64_t seed;
    float *qkv, *ctx, *probs, *mask, *up;
} AttCase;

static double att_loss(void *p)
{
    AttCase *c = p;
    BstRng rng;
    bst_rng_seed(&rng, c->seed);
    attention_forward(c->ctx, c->probs, c->mask, c->qkv, c->B, c->L, c->H, c->dk, c->p, &rng);
    return dot(c->ctx, c->up, (size_t)c->B * c->L * c->H * c->dk);
}

static void test_attention(float p, BstRng *rng)
{
    AttCase c = {.B = 2, .L = 4, .H = 2, .dk = 3, .p = p, .seed = 11};
    size_t n = (size_t)c.B * c.L * c.H * c.dk, np = (size_t)c.B * c.H * c.L * c.L;
    c.qkv = new_floats(3 * n);
    c.ctx = new_floats(n);
    c.up = new_floats(n);
    c.probs = new_floats(np);
    c.mask = new_floats(np);
    /* Scores of order 1 so the softmax is neither flat nor saturated. */
    fill_uniform(c.qkv, 3 * n, -1.5f, 1.5f, rng);
    fill_uniform(c.up, n, -1, 1, rng);
    float *dqkv = new_floats(3 * n), *dp = new_floats(np);
    att_loss(&c);
    attention_backward(dqkv, dp, c.up, c.probs, c.mask, c.qkv, c.B, c.L, c.H, c.dk);
    char what[64];
    printf("attention (dropout %.1f)\n", p);
    snprintf(what, sizeof(what), "attention.qkv (p=%.1f)", p);
    check_grad(what, c.qkv, dqkv, 3 * n, att_loss, &c, STEP, LAYER_FLOOR);
    free(c.qkv); free(c.ctx); free(c.up); free(c.probs); free(c.mask); free(dqkv); free(dp);
}

/* ------------------------------------------------------- whole network */

typedef struct {
    BstModel *m;
    BstActs *acts;
    const BstBatch *batch;
} NetCase;

/* Training-mode forward without dropout; MSE recomputed in double. */
static double net_loss(void *p)
{
    NetCase *c = p;
    bst_forward(c->m, c->acts, c->batch, 1, NULL);
    double s = 0.0;
    for (int i = 0; i < c->batch->n; i++) {
        double e = (double)c->acts->pred[i] - (double)c->batch->targets[i];
        s += e * e;
    }
    return s / c->batch->n;
}

static void test_network(BstRng *rng)
{
    BstConfig cfg;
    bst_config_default(&cfg, 7, 4);
    cfg.embed_dim = 5;
    cfg.heads = 2;
    cfg.n_hidden = 2;
    cfg.hidden[0] = 6;
    cfg.hidden[1] = 4;
    cfg.dropout = 0.0f;
    int32_t ids[7] = {3, 10, 11, 20, 50, 51, 99};
    BstModel *m = bst_model_create(&cfg, ids, 1234);
    CHECK(m != NULL, "model create");
    if (!m)
        return;
    enum { N = 5, L = 4 };
    int32_t movies[N * L];
    float ratings[N * (L - 1)], targets[N];
    for (int i = 0; i < N * L; i++)
        movies[i] = (int32_t)(bst_rng_next(rng) % 8);  /* includes OOV row 0 */
    fill_uniform(ratings, N * (L - 1), 1.0f, 5.0f, rng);
    fill_uniform(targets, N, 1.0f, 5.0f, rng);
    /* Keras' initial embeddings (+-0.05) make every attention score ~0 and
     * the Q/K gradients tiny; larger embeddings give the softmax something to
     * do.  Norm parameters are moved off their 1/0 initial values so their
     * paths are exercised. */
    BstTensor t[BST_MAX_TENSORS];
    int nt = bst_param_tensors(&cfg, &m->params, t);
    for (int i = 0; i < nt; i++) {
        if (strstr(t[i].name, "_emb"))
            fill_uniform(t[i].data, t[i].size, -1.0f, 1.0f, rng);
        else if (strstr(t[i].name, "_g") || strstr(t[i].name, "_b"))
            fill_uniform(t[i].data, t[i].size, 0.5f, 1.5f, rng);
    }
    BstBatch batch = {.n = N, .movies = movies, .ratings = ratings, .targets = targets};
    BstActs acts, dacts;
    BstParams grads;
    CHECK(bst_acts_alloc(&acts, &cfg, N, 0) == 0 && bst_acts_alloc(&dacts, &cfg, N, 1) == 0 &&
          bst_params_alloc(&grads, &cfg) == 0, "allocation");
    NetCase c = {.m = m, .acts = &acts, .batch = &batch};
    net_loss(&c);
    bst_zero_grads(&grads);
    bst_backward(m, &acts, &dacts, &grads, &batch);
    BstTensor g[BST_MAX_TENSORS];
    bst_param_tensors(&cfg, &grads, g);
    /*
     * Some gradients are zero by construction: a bias feeding a BatchNorm
     * (mlp*_b), a per-feature shift before the first dense + BatchNorm
     * (ln2_b), the key bias under the softmax (the middle third of bqkv).  Their finite differences
     * are pure rounding noise, so errors are measured against a floor of
     * 1e-2 of the largest gradient in the network rather than against the
     * tensor's own (zero) scale.
     */
    double gmax = 0.0;
    for (int i = 0; i < nt; i++)
        for (size_t j = 0; j < g[i].size; j++)
            gmax = fmax(gmax, fabs((double)g[i].data[j]));
    printf("network (n_movies 7, d 5, L 4, heads 2, hidden {6,4}, batch 5, BN training, no dropout)\n");
    for (int i = 0; i < nt; i++) {
        char what[64];
        snprintf(what, sizeof(what), "net.%s", t[i].name);
        check_grad(what, t[i].data, g[i].data, t[i].size, net_loss, &c, NET_STEP, 1e-2 * gmax);
    }
    bst_acts_free(&acts);
    bst_acts_free(&dacts);
    bst_params_free(&grads);
    bst_model_free(m);
}

int main(void)
{
    BstRng rng;
    bst_rng_seed(&rng, 2024);
    test_embedding(&rng);
    test_linear(&rng);
    test_norm(0, &rng);
    test_norm(1, &rng);
    test_elementwise(&rng);
    test_attention(0.0f, &rng);
    test_attention(0.3f, &rng);
    test_network(&rng);
    return test_summary("test_gradients");
}

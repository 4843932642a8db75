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
#include "parallel.h"
#include "simd.h"
#include "test_util.h"
#include "vec16.h"

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
    int n, width, stride, rows;
    int32_t *idx;
    float *table, *out, *up;
} EmbCase;

static double emb_loss(void *p)
{
    EmbCase *c = p;
    embedding_forward(c->out, c->stride, c->idx, c->table, c->rows, c->n, c->width);
    /* Only the gathered columns: the others belong to other gathers. */
    double s = 0.0;
    for (int r = 0; r < c->n; r++)
        s += dot(c->out + (size_t)r * c->stride, c->up + (size_t)r * c->stride, (size_t)c->width);
    return s;
}

static void test_embedding(BstRng *rng)
{
    /* Writing into 5 columns of 8 (a slice of a wider matrix). */
    EmbCase c = {.n = 12, .width = 5, .stride = 8, .rows = 6};
    /* Repeated rows (scatter-add), row 0 and out-of-range indices (read as 0). */
    int32_t idx[12] = {1, 2, 1, 3, 0, 5, 5, 2, 9, -1, 4, 1};
    size_t n_out = (size_t)c.n * c.stride;
    c.idx = idx;
    c.table = new_floats((size_t)c.rows * c.width);
    c.out = new_floats(n_out);
    c.up = new_floats(n_out);
    fill_uniform(c.table, (size_t)c.rows * c.width, -1.0f, 1.0f, rng);
    fill_uniform(c.up, n_out, -1.0f, 1.0f, rng);
    float *d_table = new_floats((size_t)c.rows * c.width);
    embedding_backward(d_table, c.up, c.stride, c.idx, c.rows, c.n, c.width);
    printf("embedding\n");
    check_grad("embedding.table", c.table, d_table, (size_t)c.rows * c.width, emb_loss, &c, STEP,
               LAYER_FLOOR);
    free(c.table); free(c.out); free(c.up); free(d_table);
}

/* -------------------------------------------------------------- sequence */

typedef struct {
    int B, L, d;
    const int32_t *hist_len;
    float *enc, *ratings, *pos, *rw, *out, *up;
} SeqCase;

static double seq_loss(void *p)
{
    SeqCase *c = p;
    sequence_forward(c->out, c->enc, c->ratings, c->pos, c->rw, c->hist_len, c->B, c->L, c->d);
    return dot(c->out, c->up, (size_t)c->B * c->L * c->d);
}

/* additive: ratings added along a learned vector rather than scaling. */
static void test_sequence(int additive, BstRng *rng)
{
    /* Full, partly padded, history-less and out-of-range history lengths. */
    static const int32_t hist_len[4] = {4, 2, 0, 7};
    SeqCase c = {.B = 4, .L = 5, .d = 3, .hist_len = hist_len};
    size_t n = (size_t)c.B * c.L * c.d;
    c.enc = new_floats(n);
    c.ratings = new_floats((size_t)c.B * (c.L - 1));
    c.pos = new_floats((size_t)(c.L - 1) * c.d);
    c.out = new_floats(n);
    c.up = new_floats(n);
    fill_uniform(c.enc, n, -1, 1, rng);
    fill_uniform(c.ratings, (size_t)c.B * (c.L - 1), 1, 5, rng);
    fill_uniform(c.pos, (size_t)(c.L - 1) * c.d, -1, 1, rng);
    fill_uniform(c.up, n, -1, 1, rng);
    float *d_enc = new_floats(n), *d_pos = new_floats((size_t)(c.L - 1) * c.d);
    float *d_rw = new_floats((size_t)c.d);
    if (additive) {
        c.rw = new_floats((size_t)c.d);
        fill_uniform(c.rw, (size_t)c.d, -1, 1, rng);
    }
    sequence_backward(d_enc, d_pos, additive ? d_rw : NULL, c.up, c.ratings, c.hist_len, c.B,
                      c.L, c.d);
    printf("sequence (left padding%s)\n", additive ? ", ratings added" : "");
    check_grad("sequence.enc", c.enc, d_enc, n, seq_loss, &c, STEP, LAYER_FLOOR);
    check_grad("sequence.pos_emb", c.pos, d_pos, (size_t)(c.L - 1) * c.d, seq_loss, &c, STEP,
               LAYER_FLOOR);
    if (additive)
        check_grad("sequence.rating_w", c.rw, d_rw, (size_t)c.d, seq_loss, &c, STEP, LAYER_FLOOR);
    free(c.rw);
    free(d_rw);
    /* Window 1 holds 2 history items: positions 0 and 1 are padding. */
    int zero = 1;
    for (int i = 0; i < 2 * c.d; i++)
        zero &= c.out[(size_t)1 * c.L * c.d + i] == 0.0f;
    CHECK(zero, "sequence: padded positions are not zero");
    free(c.enc); free(c.ratings); free(c.pos); free(c.out); free(c.up); free(d_enc); free(d_pos);
}

/* --------------------------------------------------------------- flatten */

typedef struct {
    int B, L, d, stride;
    const int32_t *hist_len;
    float *y, *out, *up;
} FlatCase;

static double flat_loss(void *p)
{
    FlatCase *c = p;
    flatten_forward(c->out, c->stride, c->y, c->hist_len, c->B, c->L, c->d);
    double s = 0.0;
    for (int b = 0; b < c->B; b++)
        s += dot(c->out + (size_t)b * c->stride, c->up + (size_t)b * c->stride,
                 (size_t)c->L * c->d);
    return s;
}

static void test_flatten(BstRng *rng)
{
    static const int32_t hist_len[3] = {3, 1, 0};
    FlatCase c = {.B = 3, .L = 4, .d = 2, .stride = 11, .hist_len = hist_len};
    size_t ny = (size_t)c.B * c.L * c.d, nf = (size_t)c.B * c.stride;
    c.y = new_floats(ny);
    c.out = new_floats(nf);
    c.up = new_floats(nf);
    fill_uniform(c.y, ny, -1, 1, rng);
    fill_uniform(c.up, nf, -1, 1, rng);
    float *dy = new_floats(ny);
    flatten_backward(dy, c.up, c.stride, c.hist_len, c.B, c.L, c.d);
    printf("flatten (left padding)\n");
    check_grad("flatten.y", c.y, dy, ny, flat_loss, &c, STEP, LAYER_FLOOR);
    free(c.y); free(c.out); free(c.up); free(dy);
}

/* ---------------------------------------------------------- factor term */

typedef struct {
    int B, k;
    const int32_t *users, *movies;
    float *pu, *qi, *pred, *up;
} FactorCase;

static double factor_loss(void *p)
{
    FactorCase *c = p;
    memset(c->pred, 0, (size_t)c->B * sizeof(float));
    factor_forward(c->pred, c->pu, c->qi, c->users, c->movies, 4, 5, c->B, c->k);
    return dot(c->pred, c->up, (size_t)c->B);
}

static void test_factor(BstRng *rng)
{
    /* Repeated users and movies, row 0 and out-of-range indices. */
    static const int32_t users[6] = {1, 3, 1, 0, 7, 2}, movies[6] = {4, 4, 0, 2, 1, -3};
    FactorCase c = {.B = 6, .k = 3, .users = users, .movies = movies};
    c.pu = new_floats(4 * 3);
    c.qi = new_floats(5 * 3);
    c.pred = new_floats(6);
    c.up = new_floats(6);
    fill_uniform(c.pu, 12, -1, 1, rng);
    fill_uniform(c.qi, 15, -1, 1, rng);
    fill_uniform(c.up, 6, -1, 1, rng);
    float *dpu = new_floats(12), *dqi = new_floats(15);
    factor_backward(dpu, dqi, c.up, c.pu, c.qi, c.users, c.movies, 4, 5, c.B, c.k);
    printf("factor term\n");
    check_grad("factor.user", c.pu, dpu, 12, factor_loss, &c, STEP, LAYER_FLOOR);
    check_grad("factor.movie", c.qi, dqi, 15, factor_loss, &c, STEP, LAYER_FLOOR);
    free(c.pu); free(c.qi); free(c.pred); free(c.up); free(dpu); free(dqi);
}

/* ------------------------------------------------------------ bias terms */

typedef struct {
    int B;
    const int32_t *users, *movies;
    float *global, *ub, *mb, *pred, *up;
} BiasCase;

static double bias_loss(void *p)
{
    BiasCase *c = p;
    memset(c->pred, 0, (size_t)c->B * sizeof(float));
    bias_forward(c->pred, c->global, c->ub, c->mb, c->users, c->movies, 4, 5, c->B);
    return dot(c->pred, c->up, (size_t)c->B);
}

static void test_bias(BstRng *rng)
{
    /* Repeated users and movies, row 0 and out-of-range indices. */
    static const int32_t users[6] = {1, 3, 1, 0, 7, 2}, movies[6] = {4, 4, 0, 2, 1, -3};
    BiasCase c = {.B = 6, .users = users, .movies = movies};
    c.global = new_floats(1);
    c.ub = new_floats(4);
    c.mb = new_floats(5);
    c.pred = new_floats(6);
    c.up = new_floats(6);
    fill_uniform(c.global, 1, -1, 1, rng);
    fill_uniform(c.ub, 4, -1, 1, rng);
    fill_uniform(c.mb, 5, -1, 1, rng);
    fill_uniform(c.up, 6, -1, 1, rng);
    float *dg = new_floats(1), *dub = new_floats(4), *dmb = new_floats(5);
    bias_backward(dg, dub, dmb, c.up, c.users, c.movies, 4, 5, c.B);
    printf("bias terms\n");
    check_grad("bias.global", c.global, dg, 1, bias_loss, &c, STEP, LAYER_FLOOR);
    check_grad("bias.user", c.ub, dub, 4, bias_loss, &c, STEP, LAYER_FLOOR);
    check_grad("bias.movie", c.mb, dmb, 5, bias_loss, &c, STEP, LAYER_FLOOR);
    free(c.global); free(c.ub); free(c.mb); free(c.pred); free(c.up); free(dg); free(dub);
    free(dmb);
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

/* Distinct n, in, out so a transposed operand cannot line up by accident. */
static void test_linear(int n, int in, int out, BstRng *rng)
{
    LinCase c = {.n = n, .in = in, .out = out};
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
    printf("linear (%d x %d by %d x %d)\n", c.n, c.in, c.in, c.out);
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
    const int32_t *hist_len;
    float *qkv, *ctx, *probs, *mask, *up;
} AttCase;

static double att_loss(void *p)
{
    AttCase *c = p;
    BstRng rng;
    bst_rng_seed(&rng, c->seed);
    attention_forward(c->ctx, c->probs, c->mask, c->qkv, c->hist_len, c->B, c->L, c->H, c->dk,
                      c->p, &rng);
    return dot(c->ctx, c->up, (size_t)c->B * c->L * c->H * c->dk);
}

/* Windows of L, heads of dk: dk < 16 takes dot8's loops, dk >= 16 the
 * vector ones (windows of 4: their block in one vector). */
static void test_attention(float p, const int32_t *hist_len, int L, int dk, BstRng *rng)
{
    AttCase c = {.B = 2, .L = L, .H = 2, .dk = dk, .p = p, .seed = 11, .hist_len = hist_len};
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
    printf("attention (L %d, dk %d, dropout %.1f%s)\n", L, dk, p,
           hist_len ? ", padded keys masked" : "");
    snprintf(what, sizeof(what), "attention.qkv (L %d, dk %d, p=%.1f%s)", L, dk, p,
             hist_len ? ", mask" : "");
    check_grad(what, c.qkv, dqkv, 3 * n, att_loss, &c, STEP, LAYER_FLOOR);
    if (hist_len) {
        /* Window 1's padded keys (positions < first valid) get probability 0. */
        int first = bst_first_valid(hist_len, 1, c.L), zero = 1;
        for (int h = 0; h < c.H; h++)
            for (int i = 0; i < c.L; i++)
                for (int j = 0; j < first; j++)
                    zero &= c.probs[((size_t)(1 * c.H + h) * c.L + i) * c.L + j] == 0.0f;
        CHECK(first > 0 && zero, "attention: padded keys have non-zero probability");
    }
    free(c.qkv); free(c.ctx); free(c.up); free(c.probs); free(c.mask); free(dqkv); free(dp);
}

/*
 * The attention's exact operations, written plainly: its results must equal
 * these bit for bit (simd.h: every copy of the core's loops computes the
 * same bits).  Two orders:
 *  - inference (attention_forward_inference), 1.0's, so that stored models
 *    predict as they did: a dot product is eight partial sums over blocks
 *    of 8, the tail summed apart, added as ref_dot does; libm's expf;
 *  - training: a dot product of dk >= 16 floats sums in 16 lanes over
 *    chunks of 16 (the last one ending at dk, its lanes already summed left
 *    out), the lanes then pairwise (ref_lanes_dot); exponentials by
 *    v16_exp; with windows of 4 each row's sums pairwise, else in order;
 *    narrower rows' dot products as ref_dot's.
 * A weighted sum of rows adds the rows one by one from 0.  Sizes: windows
 * of 4 (their block in one vector) and of 7 (16-pair groups, one of a
 * single pair), widths with a partial last chunk, a width under 16
 * (weighted_rows's chunks of 8 and 4 and single columns), padded windows.
 */
static float ref_dot(const float *a, const float *b, int n)
{
    float acc[8] = {0}, s = 0.0f;
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    for (; i < n; i++)
        s += a[i] * b[i];
    float total = s + ((acc[0] + acc[4]) + (acc[1] + acc[5]));
    return total + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static float ref_lanes_dot(const float *a, const float *b, int n)
{
    float lane[16] = {0};
    int c = 0;
    for (; c + 16 <= n; c += 16)
        for (int l = 0; l < 16; l++)
            lane[l] += a[c + l] * b[c + l];
    if (c < n)
        for (int l = c - (n - 16); l < 16; l++)
            lane[l] += a[n - 16 + l] * b[n - 16 + l];
    for (int w = 1; w < 16; w *= 2)
        for (int l = 0; l < 16; l += 2 * w)
            lane[l] += lane[l + w];
    return lane[0];
}

static float ref_exp(float x)
{
    const v16f v = (v16f){0} + x;
    return v16_exp(v)[0];
}

/* A row's sum: pairwise in the training order of windows of 4 whose rows
 * take vectors (dk >= 16), else in order. */
static float ref_row_sum(const float *x, int L, int from, int training, int dk)
{
    if (training && L == 4 && dk >= 16)
        return (x[0] + x[1]) + (x[2] + x[3]);
    float s = 0.0f;
    for (int j = from; j < L; j++)
        s += x[j];
    return s;
}

static void test_attention_order(int L, int DK, BstRng *rng)
{
    enum { B = 4, H = 2 };
    const int HD = H * DK, S = 3 * HD;
    /* One full window, one of a single history item, one of none, one of
     * all but one: padding from none to all of the keys but the target. */
    const int32_t hist_len[B] = {L - 1, 1, 0, L - 2};
    const size_t n_qkv = (size_t)B * L * S, n_ctx = (size_t)B * L * HD, n_p = (size_t)B * H * L * L;
    float *qkv = new_floats(n_qkv), *ctx = new_floats(n_ctx), *probs = new_floats(n_p),
          *mask = new_floats(n_p), *up = new_floats(n_ctx), *dqkv = new_floats(n_qkv),
          *dprobs = new_floats(n_p), *r_probs = new_floats(n_p), *r_ctx = new_floats(n_ctx),
          *r_dqkv = new_floats(n_qkv), *i_ctx = new_floats(n_ctx), *i_probs = new_floats(n_p),
          *r_i_ctx = new_floats(n_ctx), *r_i_probs = new_floats(n_p);
    fill_uniform(qkv, n_qkv, -1.5f, 1.5f, rng);
    fill_uniform(up, n_ctx, -1, 1, rng);
    BstRng drop;
    bst_rng_seed(&drop, 12);
    attention_forward(ctx, probs, mask, qkv, hist_len, B, L, H, DK, 0.3f, &drop);
    attention_backward(dqkv, dprobs, up, probs, mask, qkv, B, L, H, DK);
    attention_forward_inference(i_ctx, i_probs, qkv, hist_len, B, L, H, DK);

    const float scale = 1.0f / sqrtf((float)DK);
    for (int b = 0; b < B; b++) {
        const int first = bst_first_valid(hist_len, b, L);
        for (int h = 0; h < H; h++) {
            const float *q = qkv + (size_t)b * L * S + h * DK, *k = q + HD, *v = q + 2 * HD;
            const size_t blk = (size_t)(b * H + h) * L * L;
            const float *mk = mask + blk;
            for (int order = 0; order < 2; order++) {
                /* order 1: training's (dropout factors mk), 0: inference's. */
                float *pr = (order ? r_probs : r_i_probs) + blk;
                float *out = order ? r_ctx : r_i_ctx;
                for (int i = 0; i < L; i++) {
                    float *row = pr + i * L, maxv = -INFINITY;
                    for (int j = first; j < L; j++) {
                        row[j] = (order && DK >= 16 ? ref_lanes_dot : ref_dot)(q + i * S, k + j * S,
                                                                               DK) * scale;
                        maxv = fmaxf(maxv, row[j]);
                    }
                    for (int j = 0; j < L; j++)
                        row[j] = j < first ? 0.0f
                                 : order   ? ref_exp(row[j] - maxv)
                                           : expf(row[j] - maxv);
                    const float inv = 1.0f / ref_row_sum(row, L, first, order, DK);
                    for (int j = first; j < L; j++)
                        row[j] *= inv;
                    for (int c = 0; c < DK; c++) {
                        float acc = 0.0f;
                        for (int j = 0; j < L; j++)
                            acc += (order ? row[j] * mk[i * L + j] : row[j]) * v[j * S + c];
                        out[((size_t)b * L + i) * HD + h * DK + c] = acc;
                    }
                }
            }
            /* Backward: ds from the upstream gradient g, then the rows. */
            const float *pr = r_probs + blk;
            const float *g = up + (size_t)b * L * HD + h * DK;
            float ds[16 * 16];
            for (int i = 0; i < L; i++) {
                float t[16];
                for (int j = 0; j < L; j++) {
                    ds[i * L + j] = (DK >= 16 ? ref_lanes_dot : ref_dot)(g + i * HD, v + j * S, DK) *
                                    mk[i * L + j];
                    t[j] = pr[i * L + j] * ds[i * L + j];
                }
                const float dot = ref_row_sum(t, L, 0, 1, DK);
                for (int j = 0; j < L; j++)
                    ds[i * L + j] = pr[i * L + j] * (ds[i * L + j] - dot) * scale;
            }
            float *dq = r_dqkv + (size_t)b * L * S + h * DK, *dk = dq + HD, *dv = dq + 2 * HD;
            for (int j = 0; j < L; j++)
                for (int c = 0; c < DK; c++) {
                    float av = 0.0f, aq = 0.0f, ak = 0.0f;
                    for (int i = 0; i < L; i++) {
                        av += pr[i * L + j] * mk[i * L + j] * g[i * HD + c];
                        aq += ds[j * L + i] * k[i * S + c];
                        ak += ds[i * L + j] * q[i * S + c];
                    }
                    dv[j * S + c] = av;
                    dq[j * S + c] = aq;
                    dk[j * S + c] = ak;
                }
        }
    }
    CHECK(memcmp(probs, r_probs, n_p * sizeof(float)) == 0,
          "attention (L %d, dk %d): probabilities not the reference's", L, DK);
    CHECK(memcmp(ctx, r_ctx, n_ctx * sizeof(float)) == 0,
          "attention (L %d, dk %d): contexts not the reference's", L, DK);
    CHECK(memcmp(dqkv, r_dqkv, n_qkv * sizeof(float)) == 0,
          "attention (L %d, dk %d): d_qkv not the reference's", L, DK);
    CHECK(memcmp(i_probs, r_i_probs, n_p * sizeof(float)) == 0 &&
              memcmp(i_ctx, r_i_ctx, n_ctx * sizeof(float)) == 0,
          "attention (L %d, dk %d): inference not in 1.0's order", L, DK);
    /* The two orders compute the same function: without dropout, their
     * contexts differ by rounding only. */
    BstRng none;
    bst_rng_seed(&none, 12);
    attention_forward(ctx, probs, mask, qkv, hist_len, B, L, H, DK, 0.0f, &none);
    double diff = 0.0, size = 0.0;
    for (size_t i = 0; i < n_ctx; i++) {
        diff = fmax(diff, fabs((double)ctx[i] - (double)i_ctx[i]));
        size = fmax(size, fabs((double)i_ctx[i]));
    }
    CHECK(diff > 0.0 && diff <= 1e-6 * size,
          "attention (L %d, dk %d): training and inference orders differ by %g (of %g)", L, DK,
          diff, size);
    free(qkv); free(ctx); free(probs); free(mask); free(up); free(dqkv); free(dprobs);
    free(r_probs); free(r_ctx); free(r_dqkv); free(i_ctx); free(i_probs); free(r_i_ctx);
    free(r_i_probs);
}

/*
 * Training's folded attention against the plain one, bit for bit: on rows
 * [q | x per head | v] and with every head's context gradient the shared
 * one, attention_forward and attention_backward give what
 * attention_forward_folded (queries and values in [q | v] rows, keys x's
 * rows) and attention_backward_folded give; the folded backward's keys'
 * gradient is the heads' ones added to what d_x held, head by head.  Widths
 * with a partial last chunk (whose columns the chunk before it added to
 * must be added to once) and under 16 (the loops without vectors).
 */
static void test_attention_folded(int L, int DK, BstRng *rng)
{
    enum { B = 4, H = 3 };
    const int HD = H * DK, S = 3 * HD, S2 = 2 * HD;
    const int32_t hist_len[B] = {L - 1, 1, 0, L - 2};
    const size_t rows = (size_t)B * L, n_qkv = rows * S, n_qv = rows * S2, n_x = rows * DK,
                 n_ctx = rows * HD, n_p = (size_t)B * H * L * L;
    float *qkv = new_floats(n_qkv), *qv = new_floats(n_qv), *x = new_floats(n_x),
          *up = new_floats(n_x), *up_heads = new_floats(n_ctx), *ctx = new_floats(n_ctx),
          *f_ctx = new_floats(n_ctx), *probs = new_floats(n_p), *f_probs = new_floats(n_p),
          *mask = new_floats(n_p), *f_mask = new_floats(n_p), *dqkv = new_floats(n_qkv),
          *f_dqv = new_floats(n_qv), *d_x = new_floats(n_x), *want_dx = new_floats(n_x),
          *dprobs = new_floats(n_p);
    fill_uniform(qv, n_qv, -1.5f, 1.5f, rng);
    fill_uniform(x, n_x, -1.5f, 1.5f, rng);
    fill_uniform(up, n_x, -1, 1, rng);
    fill_uniform(d_x, n_x, -1, 1, rng);
    memcpy(want_dx, d_x, n_x * sizeof(float));
    for (size_t r = 0; r < rows; r++)
        for (int h = 0; h < H; h++) {
            memcpy(qkv + r * S + h * DK, qv + r * S2 + h * DK, DK * sizeof(float));
            memcpy(qkv + r * S + HD + h * DK, x + r * DK, DK * sizeof(float));
            memcpy(qkv + r * S + 2 * HD + h * DK, qv + r * S2 + HD + h * DK, DK * sizeof(float));
            memcpy(up_heads + r * HD + h * DK, up + r * DK, DK * sizeof(float));
        }
    BstRng drop;
    bst_rng_seed(&drop, 5);
    attention_forward(ctx, probs, mask, qkv, hist_len, B, L, H, DK, 0.3f, &drop);
    attention_backward(dqkv, dprobs, up_heads, probs, mask, qkv, B, L, H, DK);
    bst_rng_seed(&drop, 5);
    attention_forward_folded(f_ctx, f_probs, f_mask, qv, x, hist_len, B, L, H, DK, 0.3f, &drop, 0);
    attention_backward_folded(f_dqv, d_x, dprobs, up, f_probs, f_mask, qv, x, B, L, H, DK);

    int same_dqv = 1;
    for (size_t r = 0; r < rows; r++) {
        for (int h = 0; h < H; h++) {
            same_dqv &= memcmp(f_dqv + r * S2 + h * DK, dqkv + r * S + h * DK,
                               DK * sizeof(float)) == 0;
            same_dqv &= memcmp(f_dqv + r * S2 + HD + h * DK, dqkv + r * S + 2 * HD + h * DK,
                               DK * sizeof(float)) == 0;
            for (int c = 0; c < DK; c++)
                want_dx[r * DK + c] += dqkv[r * S + HD + h * DK + c];
        }
    }
    CHECK(memcmp(f_probs, probs, n_p * sizeof(float)) == 0 &&
              memcmp(f_mask, mask, n_p * sizeof(float)) == 0 &&
              memcmp(f_ctx, ctx, n_ctx * sizeof(float)) == 0,
          "folded attention (L %d, dk %d): forward not the plain one's", L, DK);
    CHECK(same_dqv, "folded attention (L %d, dk %d): d_qv not the plain d_qkv's", L, DK);
    CHECK(memcmp(d_x, want_dx, n_x * sizeof(float)) == 0,
          "folded attention (L %d, dk %d): d_x not the keys' gradients added head by head", L,
          DK);
    free(qkv); free(qv); free(x); free(up); free(up_heads); free(ctx); free(f_ctx);
    free(probs); free(f_probs); free(mask); free(f_mask); free(dqkv); free(f_dqv); free(d_x);
    free(want_dx); free(dprobs);
}

/* v16_exp within one unit in the last place of e^x (in double) on every
 * 4099th float of [-87.3, 88]; its ends; e^0 = 1. */
static void test_exp16(void)
{
    double worst = 0.0;
    float worst_x = 0.0f;
    for (float x = -87.3f; x <= 88.0f;) {
        const double want = exp((double)x);
        const float got = ref_exp(x);
        const double ulp = (double)nextafterf((float)want, INFINITY) - (double)(float)want;
        if (fabs(got - want) / ulp > worst) {
            worst = fabs(got - want) / ulp;
            worst_x = x;
        }
        for (int step = 0; step < 4099 && x <= 88.0f; step++)
            x = nextafterf(x, INFINITY);
    }
    printf("exp16: worst %.3f ulp at %g\n", worst, worst_x);
    CHECK(worst < 1.0, "v16_exp: %.3f units in the last place at %g", worst, worst_x);
    CHECK(ref_exp(0.0f) == 1.0f && ref_exp(-1000.0f) == ref_exp(-87.33654f) &&
              ref_exp(-1000.0f) > 0.0f && ref_exp(1000.0f) == ref_exp(88.0f),
          "v16_exp: e^0 %g, below the range %g, above it %g", ref_exp(0.0f), ref_exp(-1000.0f),
          ref_exp(1000.0f));
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

/* The gradients of batch's MSE into grads (zeroed first), the forward on
 * fwd_threads threads and the backward on bwd_threads. */
static void net_gradients(BstModel *m, const BstBatch *batch, BstActs *acts, BstActs *dacts,
                          BstParams *grads, int fwd_threads, int bwd_threads)
{
    const int threads = bst_get_num_threads();
    bst_set_num_threads(fwd_threads);
    bst_forward(m, acts, batch, 1, NULL);
    bst_set_num_threads(bwd_threads);
    bst_zero_grads(grads);
    bst_backward(m, acts, dacts, grads, batch);
    bst_set_num_threads(threads);
}

/*
 * Each window share of the forward encodes its own movies, and the
 * backward's share with the same windows takes them back (model.c,
 * movie_share_backward); a backward split otherwise (another thread
 * count) leaves them to movie_shares_backward.  Both ways must give the
 * gradients of a backward split alike, within the rounding of the other
 * sums' order (the MLP's and the window shares').
 */
static void check_movie_shares_apart(BstModel *m, const BstBatch *batch, const char *prefix,
                                     BstActs *acts, BstActs *dacts)
{
    const int threads = bst_get_num_threads();
    const BstConfig *cfg = &m->cfg;
    BstParams ref, grads;
    CHECK(bst_params_alloc(&ref, cfg) == 0 && bst_params_alloc(&grads, cfg) == 0, "allocation");
    for (int fwd = 1; fwd <= threads; fwd += threads - 1) {
        const int bwd = fwd == 1 ? threads : 1;
        net_gradients(m, batch, acts, dacts, &ref, fwd, fwd);
        const int shares = acts->movie_shares;
        net_gradients(m, batch, acts, dacts, &grads, fwd, bwd);
        double scale = 0.0, worst = 0.0;
        for (size_t i = 0; i < ref.size; i++) {
            scale = fmax(scale, fabs((double)ref.slab[i]));
            worst = fmax(worst, fabs((double)grads.slab[i] - (double)ref.slab[i]));
        }
        printf("  %s: forward on %d thread(s) (%d movie shares), backward on %d: gradients within "
               "%.2e of the backward on %d (max |grad| %.2e)\n",
               prefix, fwd, shares, bwd, worst, fwd, scale);
        CHECK(scale > 0.0 && worst <= 1e-5 * scale,
              "%s: forward on %d thread(s), backward on %d: gradients differ by %.2e (max %.2e)",
              prefix, fwd, bwd, worst, scale);
        CHECK(fwd > 1 ? shares >= 2 : shares == 1, "%s: %d movie shares on %d thread(s)", prefix,
              shares, fwd);
    }
    bst_params_free(&ref);
    bst_params_free(&grads);
}

/*
 * Every parameter tensor's gradient of the MSE of batch against central
 * differences, in training mode without dropout; names printed as
 * prefix.tensor.  window_sums, mlp_sums: whether the batch is wide enough
 * for the window shares' own sums of the transformer's and of the MLP's
 * parameter gradients (model.c, window_shares and mlp_share_floats; the
 * MLP then runs by shares too), else they are summed over every row at
 * once; the networks below check each way.  Returns the number of tensors
 * checked.
 */
static int check_network(BstModel *m, const BstBatch *batch, const char *prefix, int window_sums,
                         int mlp_sums)
{
    const BstConfig *cfg = &m->cfg;
    BstActs acts, dacts;
    BstParams grads;
    CHECK(bst_acts_alloc(&acts, cfg, batch->n, BST_ACTS_TRAINING) == 0 &&
              bst_acts_alloc(&dacts, cfg, batch->n, BST_ACTS_GRADIENTS) == 0 &&
              bst_params_alloc(&grads, cfg) == 0,
          "allocation");
    CHECK((dacts.share_grads != NULL) == window_sums &&
              (dacts.window_shares >= 2) == window_sums,
          "%s: %d window shares with sums of their own, expected %s", prefix,
          dacts.window_shares, window_sums ? "2 or more" : "none");
    CHECK((dacts.mlp_share_grads != NULL) == mlp_sums && acts.share_movies == mlp_sums &&
              dacts.share_movies == mlp_sums && (dacts.movie_share_grads != NULL) == mlp_sums,
          "%s: the MLP's and the movies' shares %s sums of their own", prefix,
          dacts.mlp_share_grads ? "have" : "have no");
    NetCase c = {.m = m, .acts = &acts, .batch = batch};
    net_loss(&c);
    bst_zero_grads(&grads);
    bst_backward(m, &acts, &dacts, &grads, batch);
    BstTensor t[BST_MAX_TENSORS], g[BST_MAX_TENSORS];
    int nt = bst_param_tensors(cfg, &m->params, t);
    bst_param_tensors(cfg, &grads, g);
    /*
     * Some gradients are zero by construction: a bias feeding a BatchNorm
     * (mlp*_b), a per-feature shift before the first dense + BatchNorm
     * (ln2_b), the key bias under the softmax (the middle third of bqkv).
     * Their finite differences are pure rounding noise, so errors are
     * measured against a floor of 1e-2 of the largest gradient in the
     * network rather than against the tensor's own (zero) scale.
     */
    double gmax = 0.0;
    for (int i = 0; i < nt; i++)
        for (size_t j = 0; j < g[i].size; j++)
            gmax = fmax(gmax, fabs((double)g[i].data[j]));
    for (int i = 0; i < nt; i++) {
        char what[64];
        snprintf(what, sizeof(what), "%s.%.15s", prefix, t[i].name);
        check_grad(what, t[i].data, g[i].data, t[i].size, net_loss, &c, NET_STEP, 1e-2 * gmax);
    }

    if (mlp_sums && bst_get_num_threads() > 1)
        check_movie_shares_apart(m, batch, prefix, &acts, &dacts);

    /* A gradient instance of another batch size has other shares' sums:
     * the backward computes nothing (model.h), where it wrote past them. */
    BstActs wider;
    CHECK(bst_acts_alloc(&wider, cfg, 8 * batch->n, BST_ACTS_GRADIENTS) == 0, "allocation");
    net_gradients(m, batch, &acts, &dacts, &grads, 1, 1);
    bst_zero_grads(&grads);
    bst_backward(m, &acts, &wider, &grads, batch);
    size_t nonzero = 0;
    for (size_t i = 0; i < grads.size; i++)
        nonzero += grads.slab[i] != 0.0f;
    CHECK(nonzero == 0, "%s: a gradient instance of 8 times the batch: %zu gradients written",
          prefix, nonzero);
    bst_acts_free(&wider);

    /*
     * The finite differences above run training's forward, whose attention
     * is folded (layers.h, attention_fold_forward): a fold wrong alike in
     * both directions would pass them.  Inference keeps the model's own
     * products, so the transformer's output y must agree with it (up to
     * rounding) at every position.
     */
    BstActs inf;
    CHECK(bst_acts_alloc(&inf, cfg, batch->n, BST_ACTS_INFERENCE) == 0, "allocation");
    bst_forward(m, &acts, batch, 1, NULL);
    bst_forward(m, &inf, batch, 0, NULL);
    const size_t ny = (size_t)batch->n * cfg->seq_len * cfg->embed_dim;
    double ymax = 0.0, worst = 0.0;
    for (size_t i = 0; i < ny; i++) {
        ymax = fmax(ymax, fabs((double)inf.y[i]));
        worst = fmax(worst, fabs((double)acts.y[i] - (double)inf.y[i]));
    }
    CHECK(ymax > 0.1 && worst <= 1e-5 * ymax,
          "%s: training's folded attention gives y within %.2e of inference's (max |y| %.2f)",
          prefix, worst, ymax);
    printf("  %s: training's y against inference's: worst %.2e (max |y| %.2f)\n", prefix, worst,
           ymax);
    bst_acts_free(&inf);
    bst_acts_free(&acts);
    bst_acts_free(&dacts);
    bst_params_free(&grads);
    return nt;
}

static void test_network(BstRng *rng)
{
    /* Hidden {40, 4}, wide for its batch of 5: the MLP runs layer by
     * layer, and the batch's movies are encoded once; no hidden layer and
     * a batch of 8: the output's product, the window shares and the
     * movies by shares. */
    for (int hidden = 1; hidden >= 0; hidden--) {
        BstConfig cfg;
        bst_config_default(&cfg, 7, 4);
        cfg.embed_dim = 5;
        cfg.heads = 2;
        cfg.n_hidden = hidden ? 2 : 0;
        cfg.hidden[0] = 40;
        cfg.hidden[1] = 4;
        cfg.dropout = 0.0f;
        int32_t ids[7] = {3, 10, 11, 20, 50, 51, 99};
        /* Without hidden layers, seed 1234 put a feed-forward input of one
         * wqkv difference across LeakyReLU's kink (5e-2 at NET_STEP, 4e-4
         * at 1e-3), and seed 4321 did on 8 windows (1.4e-2 at NET_STEP,
         * 5.8e-3 at 3e-4, and the same errors with the batch's movies
         * encoded once, not by shares): another seed. */
        BstModel *m = bst_model_create(&cfg, ids, hidden ? 1234 : 5678);
        CHECK(m != NULL, "model create");
        if (!m)
            return;
        /* 8 windows: wide enough for the shares' own sums, in 2 shares (net0). */
        enum { L = 4, N_MAX = 8 };
        const int N = hidden ? 5 : 8;
        int32_t movies[N_MAX * L];
        float ratings[N_MAX * (L - 1)], targets[N_MAX];
        for (int i = 0; i < N * L; i++)
            movies[i] = (int32_t)(bst_rng_next(rng) % 8); /* includes OOV row 0 */
        fill_uniform(ratings, N * (L - 1), 1.0f, 5.0f, rng);
        fill_uniform(targets, N, 1.0f, 5.0f, rng);
        /* Keras' initial embeddings (+-0.05) make every attention score ~0
         * and the Q/K gradients tiny; larger embeddings give the softmax
         * something to do.  Norm parameters are moved off their 1/0
         * initial values so their paths are exercised, and the attention's
         * biases off 0 (training folds bv Wo into its values: a zero bv
         * would hide that term of wo's gradient). */
        BstTensor t[BST_MAX_TENSORS];
        int nt = bst_param_tensors(&cfg, &m->params, t);
        for (int i = 0; i < nt; i++) {
            if (strstr(t[i].name, "_emb"))
                fill_uniform(t[i].data, t[i].size, -1.0f, 1.0f, rng);
            else if (strstr(t[i].name, "_g") || strstr(t[i].name, "_b") ||
                     strcmp(t[i].name, "bqkv") == 0 || strcmp(t[i].name, "bo") == 0)
                fill_uniform(t[i].data, t[i].size, 0.5f, 1.5f, rng);
        }
        BstBatch batch = {.n = N, .movies = movies, .ratings = ratings, .targets = targets};
        printf("network (n_movies 7, d 5, L 4, heads 2, hidden %s, batch %d, BN training, no "
               "dropout)\n",
               hidden ? "{40,4}" : "none", N);
        check_network(m, &batch, hidden ? "net" : "net0", !hidden, !hidden);
        bst_model_free(m);
    }
}

/*
 * The network with every optional input: user id and feature embeddings,
 * genres through their Dense + ReLU, bias terms, and windows of every
 * history length (left-padded, masked), for known, unknown and
 * out-of-range users.
 */
static void test_network_features(BstRng *rng)
{
    enum { N = 6, L = 5, MOVIES = 7, USERS = 4, GENRES = 3 };
    BstConfig cfg;
    bst_config_default(&cfg, MOVIES, L);
    cfg.embed_dim = 4;
    cfg.heads = 2;
    cfg.hidden[0] = 6;
    cfg.hidden[1] = 4;
    cfg.dropout = 0.0f;
    cfg.n_users = USERS;
    cfg.user_dim = 3;
    const int32_t values[BST_N_USER_FEATS] = {2, 3, 4}, dims[BST_N_USER_FEATS] = {2, 1, 2};
    for (int k = 0; k < BST_N_USER_FEATS; k++) {
        cfg.n_feat_values[k] = values[k];
        cfg.feat_dim[k] = dims[k];
    }
    cfg.n_genres = GENRES;
    cfg.use_bias = 1;
    cfg.n_factors = 3;
    cfg.rating_add = 1;
    int32_t movie_ids[MOVIES] = {3, 10, 11, 20, 50, 51, 99}, user_ids[USERS] = {5, 6, 9, 40};
    /* User 6 has an unknown sex (0). */
    int32_t feats[USERS * BST_N_USER_FEATS] = {1, 2, 4, 0, 1, 1, 2, 3, 2, 1, 1, 3};
    float genres[MOVIES * GENRES];
    for (int i = 0; i < MOVIES * GENRES; i++)
        genres[i] = (float)(bst_rng_next(rng) % 2);
    BstVocab vocab = {movie_ids, user_ids, feats, genres};
    BstModel *m = bst_model_create_vocab(&cfg, &vocab, 77);
    CHECK(m != NULL, "model with every input: create");
    if (!m)
        return;
    int32_t movies[N * L], hist_len[N] = {4, 3, 1, 0, 2, 4}, users[N] = {1, 2, 0, 4, 3, 9};
    float ratings[N * (L - 1)], targets[N];
    for (int i = 0; i < N * L; i++)
        movies[i] = (int32_t)(bst_rng_next(rng) % (MOVIES + 1));
    fill_uniform(ratings, N * (L - 1), 1.0f, 5.0f, rng);
    fill_uniform(targets, N, 1.0f, 5.0f, rng);
    BstTensor t[BST_MAX_TENSORS];
    int nt = bst_param_tensors(&cfg, &m->params, t);
    for (int i = 0; i < nt; i++) {
        if (strstr(t[i].name, "_emb") || strstr(t[i].name, "bias") || strstr(t[i].name, "factors") ||
            strcmp(t[i].name, "rating_w") == 0)
            fill_uniform(t[i].data, t[i].size, -1.0f, 1.0f, rng);
        else if (strstr(t[i].name, "_g") || strstr(t[i].name, "_b") || strcmp(t[i].name, "bqkv") == 0 ||
                 strcmp(t[i].name, "bo") == 0)
            fill_uniform(t[i].data, t[i].size, 0.5f, 1.5f, rng);
    }
    BstBatch batch = {.n = N, .movies = movies, .ratings = ratings, .targets = targets,
                      .hist_len = hist_len, .users = users};
    printf("network with user id, sex/age/occupation, genres, bias and factor terms, padded "
           "windows\n");
    check_network(m, &batch, "net+", 1, 1);
    const char *expected[] = {"user_emb", "sex_emb", "age_emb", "occ_emb", "genre_w", "genre_b",
                              "global_bias", "user_bias", "movie_bias", "user_factors",
                              "movie_factors", "rating_w"};
    int found = 0;
    for (int i = 0; i < nt; i++)
        for (size_t k = 0; k < sizeof(expected) / sizeof(expected[0]); k++)
            found += strcmp(t[i].name, expected[k]) == 0;
    CHECK(found == 12, "the network lists %d of the 12 optional tensors", found);
    bst_model_free(m);
}

/* Whether a and b hold the same bits over n floats. */
static int same_bits(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof(float)) == 0;
}

/*
 * The fused loops (layers.h) promise the bits of the separate layers they
 * replace, dropout draws included: run both from the same generator state,
 * on rows of odd width (shares end mid-draw: dropout's two masks per draw),
 * and compare every output.
 */
static void test_fused_layers(BstRng *rng)
{
    enum { N = 23, D = 71, ND = N * D };
    const float p = 0.3f, slope = 0.2f, eps = 1e-3f;
    static float in[ND], x[ND], g[D], beta[D], up[ND], up2[ND];
    static float a1[ND], o1[ND], m1[ND], a2[ND], o2[ND], m2[ND];
    static float d1[ND], e1[ND], d2[ND], e2[ND];
    static float mean1[D], var1[D], mean2[D], var2[D], bn1[ND], bn2[ND];
    static float dg1[D], db1[D], dg2[D], db2[D];
    fill_uniform(in, ND, -1, 2, rng);
    fill_uniform(x, ND, -1, 1, rng);
    fill_uniform(g, D, 0.5f, 1.5f, rng);
    fill_uniform(beta, D, -0.5f, 0.5f, rng);
    fill_uniform(up, ND, -1, 1, rng);
    fill_uniform(up2, ND, -1, 1, rng);
    const uint64_t seed = bst_rng_next(rng);
    BstRng r1, r2;

    /* Activation and dropout. */
    bst_rng_seed(&r1, seed);
    bst_rng_seed(&r2, seed);
    leaky_relu_dropout_forward(a1, o1, m1, in, ND, slope, p, &r1);
    leaky_relu_dropout_backward(d1, e1, up, m1, in, ND, slope);
    leaky_relu_forward(a2, in, ND, slope);
    dropout_forward(o2, m2, a2, ND, p, &r2);
    dropout_backward(d2, up, m2, ND);
    leaky_relu_backward(e2, d2, in, ND, slope);
    CHECK(same_bits(a1, a2, ND) && same_bits(o1, o2, ND) && same_bits(m1, m2, ND) &&
              same_bits(d1, d2, ND) && same_bits(e1, e2, ND),
          "leaky_relu_dropout: not the bits of leaky_relu and dropout in turn");

    /* BatchNorm, activation and dropout by shares of the rows (model.c's
     * MLP shares): one share gives the bits of batchnorm_forward,
     * leaky_relu and dropout in turn, and of batchnorm_backward; three
     * uneven shares the same within rounding, and the same masks. */
    {
        static float sm[3 * D], sm2[3 * D], sg[3 * D], sgx[3 * D], dx1[ND], dx2[ND];
        const size_t cut[][4] = {{0, N, 0, 0}, {0, 5, 6, 23}};
        const int n_shares[] = {1, 3};
        for (int k = 0; k < 2; k++) {
            const int S = n_shares[k];
            size_t rows[3];
            uint64_t key;
            bst_rng_seed(&r1, seed);
            bst_rng_seed(&r2, seed);
            const float pk = dropout_key(p, &r1, &key);
            for (int t = 0; t < S; t++) {
                const size_t lo = k ? cut[1][t] : 0, hi = k ? cut[1][t + 1] : N;
                rows[t] = hi - lo;
                batchnorm_share_stats_forward(sm + t * D, sm2 + t * D, in, lo, hi, D);
            }
            batchnorm_combine_stats(mean1, var1, sm, sm2, rows, S, D, D);
            for (int t = 0; t < S; t++) {
                const size_t lo = k ? cut[1][t] : 0, hi = k ? cut[1][t + 1] : N;
                batchnorm_activation_rows_forward(bn1, a1, o1, m1, mean1, var1, in, g, beta, D,
                                                  eps, slope, pk, key, lo, hi);
                batchnorm_backward_sums(sg + t * D, sgx + t * D, up, in, mean1, var1, lo, hi, D,
                                        eps);
            }
            for (int t = 1; t < S; t++) {
                add_inplace(sg, sg + t * D, D);
                add_inplace(sgx, sgx + t * D, D);
            }
            for (int t = 0; t < S; t++) {
                const size_t lo = k ? cut[1][t] : 0, hi = k ? cut[1][t + 1] : N;
                batchnorm_backward_rows(dx1, up, in, mean1, var1, g, sg, sgx, N, lo, hi, D, eps);
            }
            batchnorm_forward(bn2, mean2, var2, in, g, beta, N, D, eps);
            leaky_relu_forward(a2, bn2, ND, slope);
            dropout_forward(o2, m2, a2, ND, p, &r2);
            memset(dg2, 0, sizeof(dg2));
            memset(db2, 0, sizeof(db2));
            batchnorm_backward(dx2, dg2, db2, up, in, mean2, var2, g, N, D, eps);
            if (S == 1) {
                CHECK(same_bits(bn1, bn2, ND) && same_bits(mean1, mean2, D) &&
                          same_bits(var1, var2, D) && same_bits(a1, a2, ND) &&
                          same_bits(o1, o2, ND) && same_bits(m1, m2, ND) &&
                          same_bits(dx1, dx2, ND) && same_bits(sgx, dg2, D) &&
                          same_bits(sg, db2, D),
                      "batchnorm by one share: not the bits of batchnorm, leaky_relu and "
                      "dropout in turn, and of batchnorm_backward");
            } else {
                double worst = 0.0;
                for (int i = 0; i < D; i++)
                    worst = fmax(worst, fmax(fabs(mean1[i] - mean2[i]),
                                             fabs(var1[i] - var2[i]) / var2[i]));
                for (int i = 0; i < ND; i++)
                    worst = fmax(worst, fmax(fabs(o1[i] - o2[i]), fabs(dx1[i] - dx2[i])));
                for (int i = 0; i < D; i++)
                    worst = fmax(worst, fmax(fabs(sg[i] - db2[i]), fabs(sgx[i] - dg2[i])));
                CHECK(same_bits(m1, m2, ND) && worst < 1e-5,
                      "batchnorm by three shares: %.2e from the whole batch's (masks %s)",
                      worst, same_bits(m1, m2, ND) ? "the same" : "differ");
            }
        }
    }

    /* The residual step, with and without the next layer's activation
     * (whose backward then comes first, with the skip gradient). */
    for (int with_act = 0; with_act <= 1; with_act++) {
        static float res1[ND], res2[ND], lm1[N], lr1[N], lm2[N], lr2[N];
        static float dres1[ND], dres2[ND], dout1[ND], dout2[ND];
        bst_rng_seed(&r1, seed);
        bst_rng_seed(&r2, seed);
        memset(dg1, 0, sizeof(dg1));
        memset(db1, 0, sizeof(db1));
        memset(dg2, 0, sizeof(dg2));
        memset(db2, 0, sizeof(db2));
        residual_layernorm_forward(res1, m1, o1, lm1, lr1, with_act ? a1 : NULL, in, x, g, beta,
                                   N, D, p, &r1, 0, eps, slope);
        memcpy(dout1, up, sizeof(dout1));
        residual_layernorm_backward(d1, dres1, dg1, db1, dout1, with_act ? up2 : NULL, o1, x,
                                    res1, lm1, lr1, g, m1, N, D, slope);
        dropout_forward(res2, m2, in, ND, p, &r2);
        add_inplace(res2, x, ND);
        layernorm_forward(o2, lm2, lr2, res2, g, beta, N, D, eps);
        memcpy(dout2, up, sizeof(dout2));
        if (with_act) {
            leaky_relu_forward(a2, o2, ND, slope);
            leaky_relu_backward(dout2, up2, o2, ND, slope);
            add_inplace(dout2, x, ND);
        }
        layernorm_backward(dres2, dg2, db2, dout2, res2, lm2, lr2, g, N, D);
        dropout_backward(d2, dres2, m2, ND);
        CHECK(same_bits(res1, res2, ND) && same_bits(m1, m2, ND) && same_bits(o1, o2, ND) &&
                  same_bits(lm1, lm2, N) && same_bits(lr1, lr2, N) &&
                  (!with_act || same_bits(a1, a2, ND)) && same_bits(dout1, dout2, ND) &&
                  same_bits(dres1, dres2, ND) && same_bits(d1, d2, ND) &&
                  same_bits(dg1, dg2, D) && same_bits(db1, db2, D),
              "residual_layernorm%s: not the bits of dropout, add, layernorm%s in turn",
              with_act ? " with activation" : "", with_act ? ", leaky_relu" : "");
    }
}

/* Appends n floats to out at *len. */
static void append(float *out, size_t *len, const float *x, size_t n)
{
    memcpy(out + *len, x, n * sizeof(float));
    *len += n;
}

/*
 * Forward and backward of every layer that does not go through the BLAS, on
 * odd sizes (uneven shares) and fixed random inputs, outputs appended to out.
 */
static size_t layer_outputs(float *out)
{
    enum { B = 23, L = 5, D = 7, H = 2, ROWS = 9, U = 70 };
    enum { BL = B * L, X = BL * D, QKV = BL * 3 * H * D, CTX = BL * H * D, P = B * H * L * L };
    static int32_t movies[B * L];
    static float ratings[B * (L - 1)], emb[ROWS * D], pos[(L - 1) * D], x[X], up[X];
    static float d_emb[ROWS * D], d_pos[(L - 1) * D], y[X], mean[BL], rstd[BL], dx[X];
    static float g[U], beta[U], dg[U], db[U], h[B * U], uph[B * U], bn[B * U], bm[U], bv[U];
    static float dh[B * U], bn_inf[B * U], act[B * U], dact[B * U], mask[B * U], drop[B * U];
    static float qkv[QKV], ctx[CTX], upc[CTX], probs[P], pmask[P], dqkv[QKV], dprobs[P];
    static float enc[X], d_enc[X];
    static int32_t hist_len[B];
    size_t len = 0;
    BstRng rng;
    bst_rng_seed(&rng, 31);
    for (int i = 0; i < B * L; i++)
        movies[i] = (int32_t)(bst_rng_next(&rng) % (ROWS + 2)) - 1;  /* OOV too */
    fill_uniform(ratings, B * (L - 1), 1, 5, &rng);
    fill_uniform(emb, ROWS * D, -1, 1, &rng);
    fill_uniform(pos, (L - 1) * D, -1, 1, &rng);
    fill_uniform(up, X, -1, 1, &rng);
    fill_uniform(g, U, 0.5f, 1.5f, &rng);
    fill_uniform(beta, U, -0.5f, 0.5f, &rng);
    fill_uniform(h, B * U, -1, 2, &rng);
    fill_uniform(uph, B * U, -1, 1, &rng);
    fill_uniform(qkv, QKV, -1.5f, 1.5f, &rng);
    fill_uniform(upc, CTX, -1, 1, &rng);
    for (int i = 0; i < B; i++)
        hist_len[i] = (int32_t)(bst_rng_next(&rng) % L);
    memset(d_emb, 0, sizeof(d_emb));
    memset(d_pos, 0, sizeof(d_pos));
    memset(dg, 0, sizeof(dg));
    memset(db, 0, sizeof(db));

    embedding_forward(enc, D, movies, emb, ROWS, BL, D);
    sequence_forward(x, enc, ratings, pos, NULL, hist_len, B, L, D);
    sequence_backward(d_enc, d_pos, NULL, up, ratings, hist_len, B, L, D);
    embedding_backward(d_emb, d_enc, D, movies, ROWS, BL, D);
    append(out, &len, x, X);
    append(out, &len, d_enc, X);
    append(out, &len, d_emb, ROWS * D);
    append(out, &len, d_pos, (L - 1) * D);

    layernorm_forward(y, mean, rstd, x, g, beta, BL, D, 1e-3f);
    layernorm_backward(dx, dg, db, up, x, mean, rstd, g, BL, D);
    append(out, &len, y, X);
    append(out, &len, dx, X);
    append(out, &len, dg, D);
    append(out, &len, db, D);

    memset(dg, 0, sizeof(dg));
    memset(db, 0, sizeof(db));
    batchnorm_forward(bn, bm, bv, h, g, beta, B, U, 1e-3f);
    batchnorm_backward(dh, dg, db, uph, h, bm, bv, g, B, U, 1e-3f);
    batchnorm_forward_infer(bn_inf, h, g, beta, bm, bv, B, U, 1e-3f);
    append(out, &len, bn, B * U);
    append(out, &len, dh, B * U);
    append(out, &len, dg, U);
    append(out, &len, db, U);
    append(out, &len, bn_inf, B * U);

    leaky_relu_forward(act, h, B * U, 0.3f);
    leaky_relu_backward(dact, uph, h, B * U, 0.3f);
    dropout_forward(drop, mask, act, B * U, 0.3f, &rng);
    dropout_backward(dh, dact, mask, B * U);
    append(out, &len, act, B * U);
    append(out, &len, dact, B * U);
    append(out, &len, drop, B * U);
    append(out, &len, dh, B * U);

    attention_forward(ctx, probs, pmask, qkv, hist_len, B, L, H, D, 0.3f, &rng);
    attention_backward(dqkv, dprobs, upc, probs, pmask, qkv, B, L, H, D);
    append(out, &len, ctx, CTX);
    append(out, &len, probs, P);
    append(out, &len, pmask, P);
    append(out, &len, dqkv, QKV);
    return len;
}

/*
 * Training-mode forward (with dropout) and backward of a small network,
 * returning the predictions followed by every parameter gradient (*values
 * floats), then the dropout masks.
 */
static float *net_outputs(size_t *len, size_t *values)
{
    BstConfig cfg;
    bst_config_default(&cfg, 40, 5);
    cfg.embed_dim = 7;
    cfg.heads = 2;
    cfg.hidden[0] = 70;  /* three BatchNorm blocks of features */
    cfg.hidden[1] = 9;
    int32_t ids[40];
    for (int i = 0; i < 40; i++)
        ids[i] = 2 * i + 1;
    enum { N = 23, L = 5 };
    BstRng rng;
    bst_rng_seed(&rng, 5);
    int32_t movies[N * L];
    float ratings[N * (L - 1)], targets[N];
    for (int i = 0; i < N * L; i++)
        movies[i] = (int32_t)(bst_rng_next(&rng) % 42);  /* OOV and out of range too */
    fill_uniform(ratings, N * (L - 1), 1.0f, 5.0f, &rng);
    fill_uniform(targets, N, 1.0f, 5.0f, &rng);
    BstModel *m = bst_model_create(&cfg, ids, 9);
    BstActs acts, dacts;
    BstParams grads;
    if (!m || bst_acts_alloc(&acts, &cfg, N, BST_ACTS_TRAINING) ||
        bst_acts_alloc(&dacts, &cfg, N, BST_ACTS_GRADIENTS) ||
        bst_params_alloc(&grads, &cfg)) {
        fprintf(stderr, "allocation failed\n");
        exit(2);
    }
    BstBatch batch = {.n = N, .movies = movies, .ratings = ratings, .targets = targets};
    bst_forward(m, &acts, &batch, 1, &rng);
    bst_backward(m, &acts, &dacts, &grads, &batch);
    /* The dropout masks after them (NET_VALUES below). */
    const size_t nld = (size_t)N * L * cfg.embed_dim, hll = (size_t)N * cfg.heads * L * L;
    size_t masks = hll + 2 * nld;
    for (int i = 0; i < cfg.n_hidden; i++)
        masks += (size_t)N * cfg.hidden[i];
    *len = N + grads.size + masks;
    float *out = new_floats(*len), *at = out;
    memcpy(at, acts.pred, N * sizeof(float));
    memcpy(at += N, grads.slab, grads.size * sizeof(float));
    memcpy(at += grads.size, acts.probs_mask, hll * sizeof(float));
    memcpy(at += hll, acts.attn_mask, nld * sizeof(float));
    memcpy(at += nld, acts.ffn_mask, nld * sizeof(float));
    at += nld;
    for (int i = 0; i < cfg.n_hidden; i++) {
        memcpy(at, acts.drop_mask[i], (size_t)N * cfg.hidden[i] * sizeof(float));
        at += (size_t)N * cfg.hidden[i];
    }
    *values = N + grads.size;
    bst_acts_free(&acts);
    bst_acts_free(&dacts);
    bst_params_free(&grads);
    bst_model_free(m);
    return out;
}

static size_t count_diff(const float *a, const float *b, size_t n)
{
    size_t diff = 0;
    for (size_t i = 0; i < n; i++)
        diff += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return diff;
}

/*
 * The core's layers never sum a value across threads (see parallel.h), so
 * splitting them must not change a single bit: run them serially, then on
 * 2 and 3 threads with every loop forced parallel.  The network adds sgemm
 * blocks, whose rounding is the BLAS's business (OpenBLAS's AVX-512
 * kernels compute an element the same way in any block, its AVX2 ones do
 * not), and the training step's window shares, whose sums add up in share
 * order (model.c).  So for the network only run-to-run equality is
 * required; equality with the serial run is reported.
 */
static void test_thread_invariance(void)
{
    enum { MAX_LAYER_OUT = 50000 };
    static float ref[MAX_LAYER_OUT], out[MAX_LAYER_OUT];
    size_t n_ref, n_net_ref, n, values;
    bst_set_num_threads(1);
    n_ref = layer_outputs(ref);
    float *net_ref = net_outputs(&n_net_ref, &values);
    bst_set_parallel_min_work(0.0);
    for (int threads = 2; threads <= 3; threads++) {
        bst_set_num_threads(threads);
        n = layer_outputs(out);
        size_t diff = count_diff(out, ref, n);
        printf("layers on %d threads: %zu of %zu values differ from 1 thread\n", threads, diff,
               n);
        CHECK(n == n_ref && diff == 0, "layers on %d threads: %zu values differ from the serial run",
              threads, diff);

        float *a = net_outputs(&n, &values), *b = net_outputs(&n, &values);
        size_t again = count_diff(a, b, n);
        CHECK(again == 0, "network on %d threads: %zu values differ run to run", threads, again);
        /* PARALLEL_FOR_PAIR's loops one region after the other: the same
         * shares, so the same bits. */
        bst_set_loop_pairs(0);
        float *apart = net_outputs(&n, &values);
        bst_set_loop_pairs(1);
        size_t unpaired = count_diff(a, apart, n);
        CHECK(unpaired == 0, "network on %d threads: %zu values differ with the paired loops apart",
              threads, unpaired);
        free(apart);
        printf("network on %d threads: %zu of %zu values differ from 1 thread "
               "(allowed: sgemm blocks and the shares' sums)\n",
               threads, count_diff(a, net_ref, n), n);
        free(a);
        free(b);
    }
    free(net_ref);
    bst_set_parallel_min_work(BST_PAR_MIN_WORK_DEFAULT);
}

/*
 * Training's transformer block runs its windows block by block (model.c,
 * WINDOW_BLOCK), each block drawing its part of the batch's dropout masks
 * by position: blocks of 2 windows and of 6 must draw the masks the whole
 * batch in one block does (the default 32 > 23), bit for bit, and give the
 * same predictions and gradients within rounding (blocks change the sgemm
 * shapes and the order of the parameters' sums), on 1 and 2 threads.
 */
static void test_window_blocks(void)
{
    size_t n_ref, values, n;
    bst_set_parallel_min_work(0.0);
    for (int threads = 1; threads <= 2; threads++) {
        bst_set_num_threads(threads);
        float *ref = net_outputs(&n_ref, &values);
        double scale = 0.0;
        for (size_t i = 0; i < values; i++)
            scale = fmax(scale, fabs((double)ref[i]));
        for (int block = 2; block <= 6; block += 4) {
            bst_set_window_block(block);
            float *out = net_outputs(&n, &values);
            bst_set_window_block(0);
            double worst = 0.0;
            for (size_t i = 0; i < values; i++)
                worst = fmax(worst, fabs((double)out[i] - (double)ref[i]) /
                                        (fabs((double)ref[i]) + 1e-3 * scale));
            const size_t masks = count_diff(out + values, ref + values, n - values);
            printf("blocks of %d windows on %d threads: masks differ at %zu of %zu, values by "
                   "%.2e (relative)\n",
                   block, threads, masks, n - values, worst);
            CHECK(n == n_ref && masks == 0,
                  "blocks of %d windows on %d threads: %zu dropout mask values differ", block,
                  threads, masks);
            CHECK(worst < 1e-4,
                  "blocks of %d windows on %d threads: predictions and gradients differ by "
                  "%.2e relative",
                  block, threads, worst);
            free(out);
        }
        free(ref);
    }
    bst_set_num_threads(1);
    bst_set_parallel_min_work(BST_PAR_MIN_WORK_DEFAULT);
}

/* Every check, serially and then on 2 threads with the work threshold at 0
 * so that these tiny inputs go through the parallel splits too (uneven
 * shares). */
static void check_all(BstSimd simd, const char *core)
{
    for (int threads = 1; threads <= 2; threads++) {
        bst_set_num_threads(threads);
        bst_set_parallel_min_work(threads > 1 ? 0.0 : BST_PAR_MIN_WORK_DEFAULT);
        printf("==== %s loops, OpenBLAS kernels %s, %d thread(s)\n", bst_simd_name(simd),
               core ? core : "of its own choice", threads);
        BstRng rng;
        bst_rng_seed(&rng, 2024);
        test_embedding(&rng);
        test_linear(7, 5, 4, &rng);
        test_norm(0, &rng);
        test_norm(1, &rng);
        test_elementwise(&rng);
        static const int32_t att_hist[2] = {3, 1};
        test_attention(0.0f, NULL, 4, 3, &rng);
        test_attention(0.3f, NULL, 4, 3, &rng);
        test_network(&rng);
        test_attention(0.3f, att_hist, 4, 3, &rng);
        test_attention(0.3f, att_hist, 4, 17, &rng);
        test_attention(0.3f, att_hist, 5, 17, &rng);
        test_attention_order(7, 31, &rng);
        test_attention_order(4, 62, &rng);
        test_attention_order(4, 20, &rng);
        test_attention_order(5, 13, &rng);
        test_attention_folded(4, 62, &rng);
        test_attention_folded(4, 20, &rng);
        test_attention_folded(7, 31, &rng);
        test_attention_folded(5, 13, &rng);
        test_exp16();
        test_sequence(0, &rng);
        test_sequence(1, &rng);
        test_flatten(&rng);
        test_bias(&rng);
        test_factor(&rng);
        test_network_features(&rng);
        /* Rows and columns of two sgemm grains each, so that 2 threads split
         * both products (last, to leave the draws of the others as they were). */
        test_linear(19, 5, 17, &rng);
        test_fused_layers(&rng);
    }
}

int main(void)
{
    /* With every copy of the hand-written loops that this CPU runs
     * (simd.h); the Makefile runs this again with OpenBLAS's generic
     * kernels (OPENBLAS_CORETYPE=Prescott). */
    const BstSimd in_use = bst_simd();
    for (int simd = BST_SIMD_GENERIC; simd <= BST_SIMD_AVX512; simd++)
        if (bst_simd_force((BstSimd)simd) == 0)
            check_all((BstSimd)simd, getenv("OPENBLAS_CORETYPE"));
    bst_simd_force(in_use);
    bst_set_parallel_min_work(BST_PAR_MIN_WORK_DEFAULT);
    test_thread_invariance();
    test_window_blocks();
    return test_summary("test_gradients");
}

/*
 * The arithmetic floor of a model's epoch and of a recommendation: FLOPs
 * (src/core/flops.h) divided by the rate at which this machine runs the
 * model's own matrix products.  scripts/bench_model.sh runs it with the
 * config of a trained model (bst_models.config) and the server's kernels
 * and thread count (bst_compute_info()):
 *
 *   OPENBLAS_CORETYPE=Haswell OPENBLAS_NUM_THREADS=1 ./bench_floor \
 *       n_movies=3883 seq_len=4 [embed_dim=62] [heads=3] [hidden=256,128] \
 *       [n_users=6040 user_dim=77] [sex_values=2 age_group_values=7 occupation_values=21] \
 *       [genres=18] [factors=62] [bias=1] \
 *       threads=2 batch=265 train_windows=498623 [val_windows=N eval_batch=1024] \
 *       [candidates=3700 predict_batch=256]
 *
 * A user feature of n values has the width bst_train gives it,
 * bst_default_dim(n); 0 values (or absent): not an input.  embed_dim absent:
 * bst_default_dim(n_movies).  Prints key=value lines (the script's input).
 *
 * How the rate is measured, at the batch sizes the server uses (a training
 * step's forward and backward at the training batch; the forward alone at
 * the validation batch and at the predictor's): the model's dense layers
 * (bst_dense_layers) split into sgemm blocks exactly as the core splits them
 * across its threads (layers.c: rows of X·W and of dY·Wᵀ, columns of Xᵀ·dY,
 * in shares of bst_share with layers.c's grain, on bst_threads_for's thread
 * count), each block one single-threaded OpenBLAS call.  Each thread's
 * share of a step is timed alone on one thread, and the step takes as long
 * as the slowest share: the rate of T threads that each run at one thread's
 * full speed, i.e. one thread's rate at the model's block shapes times the
 * thread count (OPENBLAS_NUM_THREADS=1 is what the core runs OpenBLAS with).
 * Why not measure the T threads running together: on a machine that others
 * use (this 2-core one is), a busy core would make the floor rise with the
 * load and the ratio to it look better than the code is; two hyperthreads
 * of one core would too.  The concurrent rate is printed beside it
 * (`*_gflops_pool`: the core's own linear_forward and linear_backward on
 * its thread pool, bias work and dispatch included), and the floor uses the
 * faster of the two, so that it stays a floor.
 * Each rate is the best of 5 rounds of at least 0.1 s: a floor is what the
 * machine can do, not what it did while others used it.
 *
 * The kernels are OpenBLAS's (linked), chosen by OPENBLAS_CORETYPE as in the
 * server when the script sets it to the server's; `kernels` says which ran.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blas.h"
#include "flops.h"
#include "layers.h"
#include "model.h"
#include "parallel.h"
#include "test_util.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(const char *msg)
{
    fprintf(stderr, "bench_floor: %s\nusage: bench_floor n_movies=N seq_len=L [key=value...] "
                    "(see test/c/bench_floor.c)\n", msg);
    exit(2);
}

typedef struct Args {
    BstConfig cfg;
    int threads;
    int32_t batch, eval_batch, predict_batch;
    int64_t train_windows, val_windows, candidates;
} Args;

static long long int_arg(const char *key, const char *v)
{
    char *end;
    long long x = strtoll(v, &end, 10);
    if (*v == '\0' || *end != '\0' || x < 0)
        usage(key);
    return x;
}

static void parse(int argc, char **argv, Args *a)
{
    int32_t n_movies = 0, seq_len = 0, embed_dim = 0, heads = 3, n_hidden = 2;
    int32_t hidden[BST_MAX_HIDDEN] = {256, 128};
    int32_t n_users = 0, user_dim = 0, values[BST_N_USER_FEATS] = {0}, genres = 0, factors = 0;
    int bias = 0;
    memset(a, 0, sizeof(*a));
    a->threads = 1;
    a->batch = 265;
    a->eval_batch = 1024;
    a->predict_batch = 256;
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq)
            usage(argv[i]);
        *eq = '\0';
        const char *k = argv[i], *v = eq + 1;
        if (strcmp(k, "hidden") == 0) {
            n_hidden = 0;
            for (char *tok = strtok((char *)v, ","); tok; tok = strtok(NULL, ",")) {
                if (n_hidden == BST_MAX_HIDDEN)
                    usage("too many hidden layers");
                hidden[n_hidden++] = (int32_t)int_arg(k, tok);
            }
            continue;
        }
        long long x = int_arg(k, v);
        if (strcmp(k, "n_movies") == 0) n_movies = (int32_t)x;
        else if (strcmp(k, "seq_len") == 0) seq_len = (int32_t)x;
        else if (strcmp(k, "embed_dim") == 0) embed_dim = (int32_t)x;
        else if (strcmp(k, "heads") == 0) heads = (int32_t)x;
        else if (strcmp(k, "n_users") == 0) n_users = (int32_t)x;
        else if (strcmp(k, "user_dim") == 0) user_dim = (int32_t)x;
        else if (strcmp(k, "sex_values") == 0) values[0] = (int32_t)x;
        else if (strcmp(k, "age_group_values") == 0) values[1] = (int32_t)x;
        else if (strcmp(k, "occupation_values") == 0) values[2] = (int32_t)x;
        else if (strcmp(k, "genres") == 0) genres = (int32_t)x;
        else if (strcmp(k, "factors") == 0) factors = (int32_t)x;
        else if (strcmp(k, "bias") == 0) bias = x != 0;
        else if (strcmp(k, "threads") == 0) a->threads = (int)x;
        else if (strcmp(k, "batch") == 0) a->batch = (int32_t)x;
        else if (strcmp(k, "eval_batch") == 0) a->eval_batch = (int32_t)x;
        else if (strcmp(k, "predict_batch") == 0) a->predict_batch = (int32_t)x;
        else if (strcmp(k, "train_windows") == 0) a->train_windows = x;
        else if (strcmp(k, "val_windows") == 0) a->val_windows = x;
        else if (strcmp(k, "candidates") == 0) a->candidates = x;
        else usage(k);
    }
    if (n_movies < 1 || seq_len < 2)
        usage("n_movies and seq_len are required");
    if (a->threads < 1 || a->batch < 1 || a->eval_batch < 1 || a->predict_batch < 1)
        usage("threads and batch sizes must be at least 1");
    /* As bst_train's build_config (src/train.c) sets the fields. */
    BstConfig *c = &a->cfg;
    bst_config_default(c, n_movies, seq_len);
    if (embed_dim > 0)
        c->embed_dim = embed_dim;
    c->heads = heads;
    c->n_hidden = n_hidden;
    memcpy(c->hidden, hidden, sizeof(hidden));
    c->n_users = n_users;
    c->user_dim = user_dim;
    for (int k = 0; k < BST_N_USER_FEATS; k++) {
        c->n_feat_values[k] = values[k];
        c->feat_dim[k] = values[k] > 0 ? bst_default_dim(values[k]) : 0;
    }
    c->n_genres = genres;
    c->use_bias = bias;
    c->n_factors = factors;
    const char *err = bst_config_check(c);
    if (err)
        usage(err);
}

/* One dense layer's operands at a batch of windows. */
typedef struct Operands {
    BstDense d;
    int rows;
    float *in, *out, *w, *b, *d_in, *d_out, *d_w, *d_b;
} Operands;

static float *filled(size_t n, BstRng *rng)
{
    float *x = new_floats(n);
    fill_uniform(x, n, -0.5f, 0.5f, rng);
    return x;
}

/* layers.c's SGEMM_GRAIN: the fewest rows or columns of a block. */
#define SGEMM_GRAIN 8

/* One sgemm call of one thread's share (row-major, alpha 1). */
typedef struct Block {
    int ta, tb, m, n, k, lda, ldb, ldc;
    const float *a, *b;
    float *c;
    float beta;
} Block;

typedef struct Share {
    Block *blocks;
    int n;
} Share;

/* Thread t's share of the items [0, n) of a product as PARALLEL_FOR splits
 * them (parallel.h): [*lo, *hi), empty when t is beyond the threads used. */
static void share_of(size_t n, double work, int t, size_t *lo, size_t *hi)
{
    const int nt = bst_threads_for(n / SGEMM_GRAIN, work);
    *lo = *hi = 0;
    if (t < nt)
        bst_share(n, SGEMM_GRAIN, t, nt, lo, hi);
}

static void add_block(Share *s, Block b)
{
    if (b.m > 0 && b.n > 0 && b.k > 0)
        s->blocks[s->n++] = b;
}

/* Thread t's sgemm calls in a step: the blocks linear_forward,
 * linear_backward_input_rows and linear_backward_param_cols (layers.c)
 * would give it.  Every layer of the model has a bias (beta 1 forward). */
static void build_share(Share *s, Operands *ops, int n, int backward, int t)
{
    s->blocks = malloc(sizeof(Block) * 3 * BST_MAX_DENSE);
    s->n = 0;
    size_t lo, hi;
    for (int i = 0; i < n; i++) {
        const Operands *o = &ops[i];
        const int in = o->d.in_dim, out = o->d.out_dim;
        share_of((size_t)o->rows, 2.0 * o->rows * in * out, t, &lo, &hi);
        add_block(s, (Block){0, 0, (int)(hi - lo), out, in, in, out, out, o->in + lo * in, o->w,
                             o->out + lo * out, 1.0f});
    }
    for (int i = n - 1; backward && i >= 0; i--) {
        const Operands *o = &ops[i];
        const int in = o->d.in_dim, out = o->d.out_dim;
        const double work = 2.0 * o->rows * in * out;
        share_of((size_t)o->rows, work, t, &lo, &hi);
        add_block(s, (Block){0, 1, (int)(hi - lo), in, out, out, out, in, o->d_out + lo * out,
                             o->w, o->d_in + lo * in, 0.0f});
        share_of((size_t)out, work, t, &lo, &hi);
        add_block(s, (Block){1, 0, in, (int)(hi - lo), o->rows, in, out, out, o->in,
                             o->d_out + lo, o->d_w + lo, 1.0f});
    }
}

static void run_share(const Share *s)
{
    for (int i = 0; i < s->n; i++) {
        const Block *b = &s->blocks[i];
        bst_blas.sgemm(CblasRowMajor, b->ta ? CblasTrans : CblasNoTrans,
                       b->tb ? CblasTrans : CblasNoTrans, b->m, b->n, b->k, 1.0f, b->a, b->lda,
                       b->b, b->ldb, b->beta, b->c, b->ldc);
    }
}

/* A training step's products (forward, then backward in reverse order), or
 * the forward's alone, as bst_forward and bst_backward call them, on the
 * core's thread pool. */
static void pool_pass(Operands *ops, int n, int backward)
{
    for (int i = 0; i < n; i++)
        linear_forward(ops[i].out, ops[i].in, ops[i].w, ops[i].b, ops[i].rows, ops[i].d.in_dim,
                       ops[i].d.out_dim);
    if (!backward)
        return;
    for (int i = n - 1; i >= 0; i--)
        linear_backward(ops[i].d_in, ops[i].d_w, ops[i].d_b, ops[i].d_out, ops[i].in, ops[i].w,
                        ops[i].rows, ops[i].d.in_dim, ops[i].d.out_dim);
}

/* Best seconds of one call of fn(arg) over 5 rounds of at least 0.1 s. */
static double best_seconds(void (*fn)(void *), void *arg)
{
    fn(arg);  /* warm-up: caches, the pool's threads */
    double best = 1e30;
    for (int round = 0; round < 5; round++) {
        int reps = 0;
        double t0 = now(), t;
        do {
            fn(arg);
            reps++;
        } while ((t = now() - t0) < 0.1);
        best = t / reps < best ? t / reps : best;
    }
    return best;
}

typedef struct PoolArg {
    Operands *ops;
    int n, backward;
} PoolArg;

static void pool_fn(void *arg)
{
    PoolArg *p = arg;
    pool_pass(p->ops, p->n, p->backward);
}

static void share_fn(void *arg)
{
    run_share(arg);
}

/* GFLOP/s of the dense products at `batch` windows: *blocks as the floor
 * takes it (above), *pool on the core's pool. */
static void dense_rate(const BstConfig *c, int32_t batch, int backward, double *blocks,
                       double *pool)
{
    BstDense layers[BST_MAX_DENSE];
    Operands ops[BST_MAX_DENSE];
    const int n = bst_dense_layers(c, layers);
    BstRng rng;
    bst_rng_seed(&rng, 1);
    double flops = 0.0;
    for (int i = 0; i < n; i++) {
        Operands *o = &ops[i];
        const size_t rows = (size_t)batch * layers[i].rows, in = layers[i].in_dim,
                     out = layers[i].out_dim;
        o->d = layers[i];
        o->rows = (int)rows;
        o->in = filled(rows * in, &rng);
        o->out = new_floats(rows * out);
        o->w = filled(in * out, &rng);
        o->b = filled(out, &rng);
        o->d_out = filled(rows * out, &rng);
        o->d_in = new_floats(rows * in);
        o->d_w = new_floats(in * out);
        o->d_b = new_floats(out);
        flops += 2.0 * rows * in * out * (backward ? 3 : 1);
    }

    const int T = bst_get_num_threads();
    double slowest = 0.0;
    for (int t = 0; t < T; t++) {
        Share s;
        build_share(&s, ops, n, backward, t);
        const double sec = s.n ? best_seconds(share_fn, &s) : 0.0;
        slowest = sec > slowest ? sec : slowest;
        free(s.blocks);
    }
    *blocks = flops / slowest * 1e-9;
    PoolArg p = {ops, n, backward};
    *pool = flops / best_seconds(pool_fn, &p) * 1e-9;

    for (int i = 0; i < n; i++) {
        free(ops[i].in);
        free(ops[i].out);
        free(ops[i].w);
        free(ops[i].b);
        free(ops[i].d_out);
        free(ops[i].d_in);
        free(ops[i].d_w);
        free(ops[i].d_b);
    }
}

/* The rate the floor divides by: the faster of the two. */
static double measure(const char *what, const BstConfig *c, int32_t batch, int backward)
{
    double blocks, pool;
    dense_rate(c, batch, backward, &blocks, &pool);
    printf("%s_batch=%d\n%s_gflops_blocks=%.1f\n%s_gflops_pool=%.1f\n", what, batch, what, blocks,
           what, pool);
    const double rate = blocks > pool ? blocks : pool;
    printf("%s_gflops=%.1f\n", what, rate);
    return rate;
}

int main(int argc, char **argv)
{
    Args a;
    parse(argc, argv, &a);
    const BstConfig *c = &a.cfg;
    bst_threads_init();
    bst_set_num_threads(a.threads);

    BstFlops f;
    bst_model_flops(c, &f);
    printf("kernels=%s\n", bst_blas.get_corename());
    printf("blas=%s\n", bst_blas.get_config());
    printf("threads=%d\n", bst_get_num_threads());
    printf("embed_dim=%d\n", c->embed_dim);
    printf("mlp_input=%d\n", bst_config_mlp_input(c));
    printf("params=%zu\n", bst_config_num_params(c));
    printf("flops_dense_forward=%.0f\n", f.dense_forward);
    printf("flops_attention_forward=%.0f\n", f.attention_forward);
    printf("flops_factor_forward=%.0f\n", f.factor_forward);
    printf("flops_forward=%.0f\n", f.forward);
    printf("flops_train=%.0f\n", f.train);

    if (a.train_windows > 0) {
        const double train_rate = measure("train", c, a.batch, 1);
        double flops = (double)a.train_windows * f.train;
        double floor_s = flops / (train_rate * 1e9);
        if (a.val_windows > 0) {
            /* Validation after the epoch, inside its time: the predictor's
             * forward at the validation batch (fit.c). */
            const double eval_rate = measure("eval", c, bst_predictor_batch_limit(c, a.eval_batch), 0);
            flops += (double)a.val_windows * f.forward;
            floor_s += (double)a.val_windows * f.forward / (eval_rate * 1e9);
        }
        printf("epoch_flops=%.0f\nepoch_floor_s=%.3f\n", flops, floor_s);
    }
    if (a.candidates > 0) {
        const double rate = measure("predict", c, bst_predictor_batch_limit(c, a.predict_batch), 0);
        const double flops = bst_recommend_flops(c, a.candidates);
        printf("recommend_flops=%.0f\nrecommend_floor_ms=%.4f\n", flops, flops / (rate * 1e9) * 1e3);
    }
    return 0;
}

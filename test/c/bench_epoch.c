/*
 * Training/prediction throughput at the MovieLens-1M shape of the Keras
 * example: 3883 movies (d = 62), windows of 4, 3 heads, MLP {256, 128},
 * batch 265, ~424k training windows.
 *
 *   ./bench_epoch [threads...] [adam]     default: 1 2
 *
 * Also the frozen predictor (infer.c, the extension's bst_predict) one window
 * at a time over distinct windows, the per-row path of a query scoring a
 * table; and the attention's own loops (layers.c) on one batch at that shape,
 * forward and backward with dropout, the best of several rounds: the
 * part of an epoch that is neither sgemm nor memory traffic, timed alone
 * because an epoch's time moves more than it is on a shared machine.
 *
 * threads: the core's thread count (bst_set_num_threads; OpenBLAS itself
 * runs single-threaded inside the core's parallel loops).
 */
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "flops.h"
#include "layers.h"
#include "model.h"
#include "parallel.h"
#include "trainer.h"
#include "bench_util.h"
#include "test_util.h"

enum { N_MOVIES = 3883, L = 4, N_WINDOWS = 424000, BATCH = 265, ONE_BY_ONE = 50000 };

/* Best microseconds a window of the frozen predictor (the extension's
 * bst_predict) takes one at a time, over ONE_BY_ONE distinct windows, 5
 * rounds: the per-row path of SELECT bst_predict(...) FROM windows.  -1
 * where there is none (a CPU without the fused products' kernels). */
static double frozen_one_by_one_us(const BstModel *m, const int32_t *movies,
                                   const float *ratings, float *out)
{
    BstPredictor *p = bst_predictor_create_frozen(m, 256, BST_PREDICTOR_TABLE_BUDGET);
    if (!p || bst_predictor_path(p) == BST_PREDICTOR_SGEMM) {
        bst_predictor_free(p);
        return -1.0;
    }
    double best = 1e30;
    for (int round = 0; round < 5; round++) {
        const double t0 = now();
        for (int32_t i = 0; i < ONE_BY_ONE; i++) {
            BstBatch one = {1, movies + (size_t)i * L, ratings + (size_t)i * (L - 1), NULL,
                            NULL, NULL};
            bst_predict(p, &one, out + i);
        }
        const double t = now() - t0;
        best = t < best ? t : best;
    }
    bst_predictor_free(p);
    return best / ONE_BY_ONE * 1e6;
}

/* Best microseconds of training's attention (attention_forward_folded and
 * attention_backward_folded) on a batch of windows at the benchmark's
 * shape (cfg), 5 rounds of 0.1 s. */
static void attention_us(const BstConfig *cfg, double *fwd, double *bwd)
{
    const int H = cfg->heads, dk = cfg->embed_dim, hd = H * dk;
    const size_t n_qv = (size_t)BATCH * L * 2 * hd, n_x = (size_t)BATCH * L * dk,
                 n_ctx = (size_t)BATCH * L * hd, n_p = (size_t)BATCH * H * L * L;
    float *qv = new_floats(n_qv), *d_qv = new_floats(n_qv), *x = new_floats(n_x),
          *d_x = new_floats(n_x), *ctx = new_floats(n_ctx), *d_out = new_floats(n_x),
          *probs = new_floats(n_p), *mask = new_floats(n_p), *d_probs = new_floats(n_p);
    int32_t *hist_len = malloc(BATCH * sizeof(int32_t));
    BstRng rng;
    bst_rng_seed(&rng, 3);
    fill_uniform(qv, n_qv, -0.5f, 0.5f, &rng);
    fill_uniform(x, n_x, -0.5f, 0.5f, &rng);
    fill_uniform(d_out, n_x, -0.5f, 0.5f, &rng);
    for (int b = 0; b < BATCH; b++)
        hist_len[b] = b % 5 == 0 ? 1 : L - 1;  /* a few short windows, padded */
    *fwd = *bwd = 1e30;
    for (int round = 0; round < 5; round++) {
        int reps = 0;
        double t0 = now(), t;
        do {
            attention_forward_folded(ctx, probs, mask, qv, x, hist_len, BATCH, L, H, dk, 0.1f,
                                     &rng, 0);
            reps++;
        } while ((t = now() - t0) < 0.1);
        *fwd = t / reps < *fwd ? t / reps : *fwd;
        reps = 0;
        t0 = now();
        do {
            /* d_x takes every repetition's keys' gradient: some thousands
             * of sums of rows within 1, far from overflow. */
            attention_backward_folded(d_qv, d_x, d_probs, d_out, probs, mask, qv, x, BATCH, L, H,
                                      dk);
            reps++;
        } while ((t = now() - t0) < 0.1);
        *bwd = t / reps < *bwd ? t / reps : *bwd;
    }
    *fwd *= 1e6;
    *bwd *= 1e6;
    free(qv), free(d_qv), free(x), free(d_x), free(ctx), free(d_out), free(probs), free(mask),
        free(d_probs);
    free(hist_len);
}

int main(int argc, char **argv)
{
    int threads[8], n_threads = 0;
    BstOptimizerKind kind = BST_OPT_ADAGRAD;
    for (int i = 1; i < argc && n_threads < 8; i++) {
        if (strcmp(argv[i], "adam") == 0)
            kind = BST_OPT_ADAM;
        else
            threads[n_threads++] = atoi(argv[i]);
    }
    if (n_threads == 0) {
        threads[0] = 1;
        threads[1] = 2;
        n_threads = 2;
    }

    BenchWindows w;
    bench_windows(&w, N_MOVIES, L, N_WINDOWS);
    int32_t *movies = w.movies, *ids = w.ids;
    float *ratings = w.ratings, *targets = w.targets;

    BstConfig cfg;
    bst_config_default(&cfg, N_MOVIES, L);
    /* Forward + backward floating-point work per window (flops.h: the matrix
     * products), dominated by the projections and the first MLP layer. */
    BstFlops flops;
    bst_model_flops(&cfg, &flops);
    printf("bench: %d windows, n_movies %d, d %d, L %d, heads %d, hidden {%d,%d}, batch %d, %s, "
           "%.3f MFLOP per window\n",
           N_WINDOWS, cfg.n_movies, cfg.embed_dim, L, cfg.heads, cfg.hidden[0], cfg.hidden[1],
           BATCH, kind == BST_OPT_ADAM ? "adam" : "adagrad", flops.train * 1e-6);

    for (int ti = 0; ti < n_threads; ti++) {
        bst_set_num_threads(threads[ti]);
        BstModel *m = bst_model_create(&cfg, ids, 42);
        BstTrainOptions o = {kind, 0.01f, BATCH, 42, 0.0f};
        BstTrainer *t = bst_trainer_create(m, &o);
        if (!m || !t) {
            fprintf(stderr, "allocation failed\n");
            return 1;
        }
        double t0 = now(), loss = 0.0, abs_err = 0.0;
        int steps = 0;
        for (int32_t s = 0; s < N_WINDOWS; s += BATCH, steps++) {
            int32_t n = N_WINDOWS - s < BATCH ? N_WINDOWS - s : BATCH;
            BstBatch b = {n, movies + (size_t)s * L, ratings + (size_t)s * (L - 1), targets + s, NULL, NULL};
            loss += bst_train_step(t, &b, &abs_err);
        }
        bst_trainer_sync(t); /* Adam: the epoch's deferred rows, in its time */
        double train_s = now() - t0;

        BstPredictor *p = bst_predictor_create(m, BATCH);
        float *out = new_floats(N_WINDOWS);
        BstBatch all = {N_WINDOWS, movies, ratings, NULL, NULL, NULL};
        t0 = now();
        bst_predict(p, &all, out);
        double pred_s = now() - t0;

        /* Latency of the extension's two prediction shapes: one window (a
         * single bst_predict call) and a batch of 256. */
        double lat[2];
        const int lat_n[2] = {1, 256}, lat_reps[2] = {20000, 400};
        for (int k = 0; k < 2; k++) {
            BstBatch one = {lat_n[k], movies, ratings, NULL, NULL, NULL};
            t0 = now();
            for (int r = 0; r < lat_reps[k]; r++)
                bst_predict(p, &one, out);
            lat[k] = (now() - t0) / lat_reps[k] * 1e6;
        }

        const double frozen_us = frozen_one_by_one_us(m, movies, ratings, out);
        double att_fwd, att_bwd;
        attention_us(&cfg, &att_fwd, &att_bwd);
        printf("threads %d: epoch %.2f s, %.0f windows/s, %.1f GFLOP/s (loss %.3f, mae %.3f); "
               "predict %.2f s, %.0f windows/s; latency batch 1 %.1f us, batch 256 %.0f us; "
               "attention %.0f us forward, %.0f us backward a batch\n",
               threads[ti], train_s, N_WINDOWS / train_s, N_WINDOWS * flops.train / train_s * 1e-9,
               loss / steps, abs_err / N_WINDOWS, pred_s, N_WINDOWS / pred_s, lat[0], lat[1],
               att_fwd, att_bwd);
        if (frozen_us > 0)
            printf("threads %d: the frozen predictor, one window at a time: %.2f us a window "
                   "(best of 5 rounds over %d windows)\n",
                   threads[ti], frozen_us, ONE_BY_ONE);
        else
            printf("threads %d: no frozen predictor on this CPU\n", threads[ti]);
        free(out);
        bst_predictor_free(p);
        bst_trainer_free(t);
        bst_model_free(m);
    }
    bench_windows_free(&w);
    return 0;
}

/*
 * What running a batch's parallel loops on two threads at once costs, loop
 * by loop: training steps at the ML-1M shape of the Keras example (as
 * test/c/bench_epoch), first with the starting thread running every share
 * itself one after another (solo), then with the pool's workers (at once).
 * Built with -DBST_REGION_PROFILE (parallel.h), which only this program is.
 *
 *   make -C test/c bench_regions && test/c/bench_regions [windows] [threads]
 *
 * For each loop (the function and line of its PARALLEL_FOR): its regions,
 * the solo time, the starting thread's shares at once ("own"), the
 * workers' shares it ran itself ("taken": a worker that had not started
 * its share yet when the starting thread finished its own, or a region the
 * pool's stall policy ran alone, parallel.c), the workers' time, the
 * starting thread's wait for them, and the ratio of "own" to its part of
 * the solo time (1.00: the shares ran as fast at once as alone; 2.00: no
 * faster than one thread).  Then the sum over the loops, the time between
 * regions, and how many regions the stall policy ran alone.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "model.h"
#include "parallel.h"
#include "trainer.h"

#ifndef BST_REGION_PROFILE
#error "build with -DBST_REGION_PROFILE (make -C test/c bench_regions)"
#endif

enum { N_MOVIES = 3883, L = 4, BATCH = 265, MAX_LOOPS = 128 };

/* Steps over all windows; the wall-clock seconds. */
static double train(const BenchWindows *w, size_t n)
{
    BstConfig cfg;
    bst_config_default(&cfg, N_MOVIES, L);
    BstModel *m = bst_model_create(&cfg, w->ids, 42);
    BstTrainOptions o = {BST_OPT_ADAGRAD, 0.01f, BATCH, 42, 0.0f};
    BstTrainer *t = m ? bst_trainer_create(m, &o) : NULL;
    if (!t) {
        fprintf(stderr, "allocation failed\n");
        exit(2);
    }
    const double t0 = now();
    for (size_t s = 0; s < n; s += BATCH) {
        const int32_t b = n - s < BATCH ? (int32_t)(n - s) : BATCH;
        BstBatch batch = {b, w->movies + s * L, w->ratings + s * (L - 1), w->targets + s, NULL,
                          NULL};
        bst_train_step(t, &batch, NULL);
    }
    const double seconds = now() - t0;
    bst_trainer_free(t);
    bst_model_free(m);
    return seconds;
}

static const BstLoopTime *find(const BstLoopTime *loops, int n, const BstLoopTime *like)
{
    for (int i = 0; i < n; i++)
        if (loops[i].line == like->line && strcmp(loops[i].func, like->func) == 0)
            return &loops[i];
    return NULL;
}

static int by_solo_time(const void *a, const void *b)
{
    const double x = ((const BstLoopTime *)a)->own_s, y = ((const BstLoopTime *)b)->own_s;
    return (x < y) - (x > y);
}

int main(int argc, char **argv)
{
    const size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 212000;
    const int threads = argc > 2 ? atoi(argv[2]) : 2;
    if (n == 0 || threads < 2) {
        fprintf(stderr, "usage: bench_regions [windows > 0] [threads >= 2]\n");
        return 2;
    }
    BenchWindows w;
    bench_windows(&w, N_MOVIES, L, n);
    bst_set_num_threads(threads);
    static BstLoopTime solo[MAX_LOOPS], both[MAX_LOOPS];

    train(&w, BATCH * 20);                 /* warm-up: pool, pages, caches */
    bst_region_profile_take(solo, MAX_LOOPS);
    bst_region_profile_solo(1);
    const double solo_s = train(&w, n);
    const int n_solo = bst_region_profile_take(solo, MAX_LOOPS);
    bst_region_profile_solo(0);
    const double both_s = train(&w, n);
    const int n_both = bst_region_profile_take(both, MAX_LOOPS);
    qsort(solo, n_solo, sizeof(solo[0]), by_solo_time);

    printf("%zu windows, %d threads: solo %.2f s, at once %.2f s (%.2f of solo)\n", n, threads,
           solo_s, both_s, both_s / solo_s);
    printf("%-28s %6s %9s %9s %6s %9s %9s %6s\n", "loop", "calls", "solo s", "own s", "taken",
           "workers s", "wait s", "ratio");
    double sum_solo = 0.0, sum_own = 0.0, sum_wait = 0.0;
    unsigned long calls = 0, alone = 0;
    for (int i = 0; i < n_solo; i++) {
        const BstLoopTime *a = &solo[i], *b = find(both, n_both, a);
        char where[64];
        snprintf(where, sizeof(where), "%s:%d", a->func, a->line);
        sum_solo += a->own_s;
        if (!b) {
            printf("%-28s %6lu %9.3f %9s\n", where, a->calls, a->own_s, "-");
            continue;
        }
        sum_own += b->own_s;
        sum_wait += b->wait_s;
        calls += b->calls;
        alone += b->alone;
        printf("%-28s %6lu %9.3f %9.3f %6lu %9.3f %9.3f %6.2f\n", where, a->calls, a->own_s,
               b->own_s, b->taken, b->workers_s, b->wait_s, b->own_s * threads / a->own_s);
    }
    printf("%-28s %6s %9.3f %9.3f %6s %9s %9.3f %6.2f\n", "all loops", "", sum_solo, sum_own, "",
           "", sum_wait, sum_own * threads / sum_solo);
    printf("between regions (serial code): solo %.3f s, at once %.3f s\n", solo_s - sum_solo,
           both_s - sum_own - sum_wait);
    printf("at once, %lu of %lu regions ran alone: the stall policy's (parallel.c)\n", alone,
           calls);
    bench_windows_free(&w);
    return 0;
}

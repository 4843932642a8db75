/*
 * The benchmarks' clock, and their synthetic training data at the ML-1M
 * shape of the Keras example (bench_epoch, bench_regions): movies drawn
 * with Zipf(1) popularity, as movie ratings roughly are, ratings and
 * targets uniform over 1..5, vocabulary ids 1..n_movies.  The same seed,
 * the same windows.
 */
#ifndef BST_BENCH_UTIL_H
#define BST_BENCH_UTIL_H

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "rng.h"
#include "test_util.h"

/* Seconds on the monotonic clock (the including file defines
 * _POSIX_C_SOURCE 199309L or more for clock_gettime). */
static inline double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct BenchWindows {
    int32_t *movies;                   /* [n * L] */
    float *ratings;                    /* [n * (L - 1)] */
    float *targets;                    /* [n] */
    int32_t *ids;                      /* [n_movies]: the vocabulary */
} BenchWindows;

static inline void bench_windows(BenchWindows *w, int n_movies, int L, size_t n)
{
    BstRng rng;
    bst_rng_seed(&rng, 1);
    double *cdf = malloc(n_movies * sizeof(double)), total = 0.0;
    for (int i = 0; i < n_movies; i++)
        cdf[i] = (total += 1.0 / (i + 1));
    w->movies = malloc(n * L * sizeof(int32_t));
    w->ratings = new_floats(n * (L - 1));
    w->targets = new_floats(n);
    w->ids = malloc(n_movies * sizeof(int32_t));
    if (!cdf || !w->movies || !w->ids) {
        fprintf(stderr, "allocation failed\n");
        exit(2);
    }
    for (size_t i = 0; i < n * L; i++) {
        double u = bst_rng_uniform(&rng) * total;
        int lo = 0, hi = n_movies - 1;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (cdf[mid] < u)
                lo = mid + 1;
            else
                hi = mid;
        }
        w->movies[i] = lo + 1;
    }
    for (size_t i = 0; i < n * (L - 1); i++)
        w->ratings[i] = (float)(1 + bst_rng_next(&rng) % 5);
    for (size_t i = 0; i < n; i++)
        w->targets[i] = (float)(1 + bst_rng_next(&rng) % 5);
    for (int i = 0; i < n_movies; i++)
        w->ids[i] = i + 1;
    free(cdf);
}

static inline void bench_windows_free(BenchWindows *w)
{
    free(w->movies);
    free(w->ratings);
    free(w->targets);
    free(w->ids);
}

#endif

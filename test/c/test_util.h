/* Shared helpers for the core tests: failure counting, random fills, and
 * window sets. */
#ifndef BST_TEST_UTIL_H
#define BST_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>

#include "fit.h"
#include "rng.h"

static int g_checks, g_failures;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        g_checks++;                                                        \
        if (!(cond)) {                                                     \
            g_failures++;                                                  \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
        }                                                                  \
    } while (0)

/* Prints the one-line summary and returns the process exit status. */
static inline int test_summary(const char *prog)
{
    if (g_failures) {
        printf("%s: %d of %d checks FAILED\n", prog, g_failures, g_checks);
        return 1;
    }
    printf("%s: %d checks passed\n", prog, g_checks);
    return 0;
}

static inline void fill_uniform(float *x, size_t n, float lo, float hi, BstRng *rng)
{
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * bst_rng_uniform(rng);
}

static inline float *new_floats(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) {
        perror("calloc");
        exit(2);
    }
    return p;
}

/* Frees a window set whose five arrays the test allocated one by one
 * (malloc, new_floats). */
static inline void free_windows(BstData *d)
{
    free(d->movies);
    free(d->ratings);
    free(d->hist_len);
    free(d->users);
    free(d->targets);
}

#endif

#define _POSIX_C_SOURCE 200809L
#include "parallel.h"

#include <cblas.h>
#include <pthread.h>
#include <signal.h>

/* Set by the host before training or prediction, never from a worker. */
static int g_setting;                  /* 0 = all cores */
static int g_pool;                     /* threads created with signals blocked */
static int g_threads = 1;              /* in effect: min(wanted, pool), cached */
static double g_min_work = BST_PAR_MIN_WORK_DEFAULT;

/* Bounds a silly setting; far above any useful count for these sizes. */
#define BST_MAX_THREADS 64

static int wanted_threads(void)
{
#ifdef _OPENMP
    int n = g_setting > 0 ? g_setting : omp_get_num_procs();
    if (n > BST_MAX_THREADS)
        n = BST_MAX_THREADS;
    return n < 1 ? 1 : n;
#else
    return 1;
#endif
}

void bst_set_num_threads(int n)
{
    g_setting = n < 0 ? 0 : n;
    bst_threads_init();
}

int bst_get_num_threads(void)
{
    return g_threads;
}

void bst_set_parallel_min_work(double flops)
{
    g_min_work = flops;
}

/*
 * Inside PostgreSQL the core runs in a backend whose main thread handles
 * SIGINT, SIGTERM, SIGALRM, SIGUSR1, ...: the handlers set flags and latches
 * that only make sense on that thread.  The kernel delivers a process-wide
 * signal to any thread that does not block it, so the OpenMP workers must
 * block them all.  A thread inherits the signal mask of the thread that
 * creates it, and libgomp creates its workers lazily, at the first parallel
 * region that needs them, then keeps them for the life of the process.
 * Hence: block everything, run one trivial region of the full size so that
 * libgomp creates every worker now, restore the caller's mask.  Regions never
 * ask for more threads than this pool holds (bst_threads_for), so libgomp
 * never creates a worker later with the caller's (unblocked) mask.  A worker
 * that faults (SIGSEGV) still kills the process: synchronous faults cannot be
 * blocked.
 */
void bst_threads_init(void)
{
    /* OpenBLAS's own pool would compete with ours; a one-thread OpenBLAS call
     * runs in the caller and is safe to make from several threads at once. */
    openblas_set_num_threads(1);
#ifdef _OPENMP
    int n = wanted_threads();
    if (n > g_pool && n > 1) {
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int got = 1;
        /* The region only makes libgomp start its threads.  It may grant
         * fewer than n (OMP_THREAD_LIMIT): the pool is what it gave. */
#pragma omp parallel num_threads(n)
        {
#pragma omp master
            got = omp_get_num_threads();
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (got > g_pool)
            g_pool = got;
    }
    /* Cached for bst_threads_for: omp_get_num_procs() is a system call. */
    g_threads = n <= g_pool ? n : (g_pool > 0 ? g_pool : 1);
#endif
}

int bst_threads_for(size_t blocks, double work)
{
#ifdef _OPENMP
    int nt = g_threads;
    /* Nested regions would create threads outside the pool. */
    if (nt <= 1 || work < g_min_work || blocks < 2 || omp_in_parallel())
        return 1;
    return blocks < (size_t)nt ? (int)blocks : nt;
#else
    (void)blocks;
    (void)work;
    return 1;
#endif
}

/*
 * What it costs two cores to share data, the limit of splitting a
 * mini-batch's layers between threads (parallel.h): each layer's threads
 * read rows that the other thread wrote in the layer before.
 *
 *   ./bench_cores          (scripts/bench_threads.sh prints it)
 *
 * Two threads pinned to the first two CPUs this process may run on:
 * - a cache line handed back and forth (one thread writes a counter, the
 *   other waits for it and answers): the round trip, what a region's start
 *   and end cost at the least;
 * - a batch of activations (265 x 256 floats, 271 KB, the Keras model's
 *   first MLP layer) written by one core and copied by the other, against
 *   the same copy again, the buffer now in the reader's cache;
 * - that layer's product (265 x 248 times 248 x 256), in the two row shares
 *   the core gives two threads (layers.c: 136 and 129 rows), each one
 *   single-threaded OpenBLAS call on its own core: one share at a time, then
 *   both at once, as a parallel region runs them.  Work that never leaves a
 *   core would take as long at once as alone; the ratio is what the machine
 *   charges for running both, a limit on what two threads can gain (the
 *   kernels: OPENBLAS_CORETYPE, as scripts/bench_threads.sh sets it).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

enum { ROUND_TRIPS = 200000, ROUNDS = 400, FLOATS = 265 * 256 };
/* The product's shape and the core's split of its rows (bst_share, grain 8). */
enum { GEMM_M = 265, GEMM_K = 248, GEMM_N = 256, GEMM_SPLIT = 136, GEMM_ROUNDS = 2000 };

void openblas_set_num_threads(int n);

static int g_cpu[2];
static _Atomic int g_turn;
static float *g_buf;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Tells the compiler that p's contents are used: the copies stay. */
static void kept(void *p)
{
    __asm__ volatile("" : : "r"(p) : "memory");
}

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* The product's operands, and each round's start and end on each core. */
static float *g_a, *g_b, *g_c;
static double g_start[2][GEMM_ROUNDS], g_end[2][GEMM_ROUNDS];
static _Atomic unsigned g_arrived;

/* Both threads past the same point, the k-th time (from 1): spinning, as the
 * core's pool waits between loops, so that neither core sleeps between
 * rounds and both start a round together. */
static void both_arrive(unsigned k)
{
    atomic_fetch_add_explicit(&g_arrived, 1, memory_order_acq_rel);
    while (atomic_load_explicit(&g_arrived, memory_order_acquire) < 2 * k)
        ;
}

/* n floats from a cache line's start (aligned_alloc wants a size that is
 * a multiple of the alignment). */
static float *floats_on_lines(size_t n)
{
    return aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
}

/* Share s of the product's rows, one OpenBLAS call. */
static void gemm_share(int s)
{
    const int lo = s ? GEMM_SPLIT : 0, hi = s ? GEMM_M : GEMM_SPLIT;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, hi - lo, GEMM_N, GEMM_K, 1.0f,
                g_a + (size_t)lo * GEMM_K, GEMM_K, g_b, GEMM_N, 0.0f, g_c + (size_t)lo * GEMM_N,
                GEMM_N);
}

/* Thread s: the rounds, its share timed in each round it runs; one at a
 * time (even rounds share 0, odd rounds share 1, the other core waiting) or
 * both at once. */
static void gemm_rounds(int s, int at_once, unsigned *arrivals)
{
    for (int r = 0; r < GEMM_ROUNDS; r++) {
        both_arrive(++*arrivals);
        g_start[s][r] = g_end[s][r] = 0.0;
        if (at_once || (r & 1) == s) {
            g_start[s][r] = now();
            gemm_share(s);
            g_end[s][r] = now();
        }
    }
    both_arrive(++*arrivals);
}

/* The mean time of share s alone, or of a round at once: from the first
 * start to the last end (a parallel region lasts until its slower share is
 * done). */
static double mean_alone(int s)
{
    double sum = 0.0;
    for (int r = s; r < GEMM_ROUNDS; r += 2)
        sum += g_end[s][r] - g_start[s][r];
    return sum / (GEMM_ROUNDS / 2);
}

static double mean_at_once(void)
{
    double sum = 0.0;
    for (int r = 0; r < GEMM_ROUNDS; r++) {
        const double start = g_start[0][r] < g_start[1][r] ? g_start[0][r] : g_start[1][r];
        const double end = g_end[0][r] > g_end[1][r] ? g_end[0][r] : g_end[1][r];
        sum += end - start;
    }
    return sum / GEMM_ROUNDS;
}

static double g_alone[2];

static void *gemm_thread(void *arg)
{
    const int s = (int)(size_t)arg;
    unsigned arrivals = 0;
    pin(g_cpu[s]);
    gemm_share(s);  /* warm: OpenBLAS's buffers, the operands in cache */
    gemm_rounds(s, 0, &arrivals);
    /* Both threads have passed the last arrival: the alone rounds are final. */
    g_alone[s] = mean_alone(s);
    gemm_rounds(s, 1, &arrivals);
    return NULL;
}

static void wait_turn(int turn)
{
    while (atomic_load_explicit(&g_turn, memory_order_acquire) != turn)
        ;
}

/* The other core: answers each odd turn; then writes the buffer for each
 * round of the read test. */
static void *other(void *arg)
{
    (void)arg;
    pin(g_cpu[1]);
    for (int i = 0; i < ROUND_TRIPS; i++) {
        wait_turn(2 * i + 1);
        atomic_store_explicit(&g_turn, 2 * i + 2, memory_order_release);
    }
    for (int r = 0; r < ROUNDS; r++) {
        wait_turn(2 * ROUND_TRIPS + 2 * r);
        for (int i = 0; i < FLOATS; i++)
            g_buf[i] = (float)(r + i);
        atomic_store_explicit(&g_turn, 2 * ROUND_TRIPS + 2 * r + 1, memory_order_release);
    }
    return NULL;
}

int main(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) != 0 || CPU_COUNT(&set) < 2) {
        printf("bench_cores: fewer than 2 CPUs, nothing to measure\n");
        return 0;
    }
    for (int cpu = 0, k = 0; k < 2; cpu++)
        if (CPU_ISSET(cpu, &set))
            g_cpu[k++] = cpu;
    /* The reader copies the buffer with memcpy, libc's fastest loads (the
     * build targets baseline x86-64, whose own loops would not keep up). */
    g_buf = aligned_alloc(64, FLOATS * sizeof(float));
    float *copy = aligned_alloc(64, FLOATS * sizeof(float));
    if (!g_buf || !copy)
        return 1;
    pin(g_cpu[0]);
    pthread_t t;
    if (pthread_create(&t, NULL, other, NULL) != 0)
        return 1;

    double t0 = now();
    for (int i = 0; i < ROUND_TRIPS; i++) {
        atomic_store_explicit(&g_turn, 2 * i + 1, memory_order_release);
        wait_turn(2 * i + 2);
    }
    const double round_trip = (now() - t0) / ROUND_TRIPS;

    double remote = 0.0, local = 0.0;
    for (int r = 0; r < ROUNDS; r++) {
        wait_turn(2 * ROUND_TRIPS + 2 * r + 1);
        t0 = now();
        memcpy(copy, g_buf, FLOATS * sizeof(float));
        kept(copy);
        remote += now() - t0;
        t0 = now();
        memcpy(copy, g_buf, FLOATS * sizeof(float));
        kept(copy);
        local += now() - t0;
        atomic_store_explicit(&g_turn, 2 * ROUND_TRIPS + 2 * r + 2, memory_order_release);
    }
    pthread_join(t, NULL);
    const double bytes = (double)ROUNDS * FLOATS * sizeof(float);
    printf("cores %d and %d: a cache line's round trip %.0f ns; %zu KB written by the other core "
           "copied at %.1f GB/s, copied again from the reader's cache at %.1f GB/s\n",
           g_cpu[0], g_cpu[1], round_trip * 1e9, FLOATS * sizeof(float) / 1024,
           bytes / remote * 1e-9, bytes / local * 1e-9);
    free(g_buf);
    free(copy);

    openblas_set_num_threads(1);  /* as the core runs it: one thread per call */
    g_a = floats_on_lines((size_t)GEMM_M * GEMM_K);
    g_b = floats_on_lines((size_t)GEMM_K * GEMM_N);
    g_c = floats_on_lines((size_t)GEMM_M * GEMM_N);
    if (!g_a || !g_b || !g_c)
        return 1;
    for (size_t i = 0; i < (size_t)GEMM_M * GEMM_K; i++)
        g_a[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)GEMM_K * GEMM_N; i++)
        g_b[i] = (float)(i % 5) * 0.1f;
    pthread_t second;
    if (pthread_create(&second, NULL, gemm_thread, (void *)(size_t)1) != 0)
        return 1;
    gemm_thread((void *)(size_t)0);
    pthread_join(second, NULL);
    /* One at a time, a region would last as long as the slower share. */
    const double alone = g_alone[0] > g_alone[1] ? g_alone[0] : g_alone[1];
    const double together = mean_at_once();
    printf("the first dense layer's product (%d x %d x %d) in 2 row shares (%d + %d rows), one "
           "OpenBLAS call each on its core: %.0f and %.0f us one at a time, %.0f us both at once "
           "(first start to last end): %.2fx the slower share alone\n",
           GEMM_M, GEMM_K, GEMM_N, GEMM_SPLIT, GEMM_M - GEMM_SPLIT, g_alone[0] * 1e6,
           g_alone[1] * 1e6, together * 1e6, together / alone);
    free(g_a);
    free(g_b);
    free(g_c);
    return 0;
}

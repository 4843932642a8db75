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
 *   kernels: OPENBLAS_CORETYPE, as scripts/bench_threads.sh sets it);
 * - a training step's activations streamed through each core: each thread
 *   copies 4 MB into 4 MB of its own (a step of the Keras model writes some
 *   8 MB of activations and its backward reads them back), one core at a
 *   time, then both at once.  Copies that stay in each core's cache share
 *   nothing; a ratio above 1 says that the two vCPUs share the way to
 *   memory (or a cache), which the element-wise layers, unlike the
 *   products, live on;
 * - a batch of activations (as above) rewritten by the core that wrote it,
 *   after the other core has read it (as a weight gradient's loop, split by
 *   columns, reads every row of a layer's input) and when it has not: a
 *   line the other core holds must be taken back from it before it is
 *   written.
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
/* The streamed copy: bytes each way, per core. */
enum { STREAM_BYTES = 4 << 20, STREAM_ROUNDS = 200 };
_Static_assert((int)STREAM_ROUNDS <= (int)GEMM_ROUNDS, "the rounds' times share g_start and g_end");

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

/* The product's operands, each core's streamed buffers, and each round's
 * start and end on each core. */
static float *g_a, *g_b, *g_c;
static char *g_stream_src[2], *g_stream_dst[2];
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

/* fn on both cores at once, pinned by itself: its argument 1 in a new
 * thread, 0 in this one; their arrivals (both_arrive) counted from 0. */
static void on_both_cores(void *(*fn)(void *))
{
    atomic_store(&g_arrived, 0);
    pthread_t second;
    if (pthread_create(&second, NULL, fn, (void *)(size_t)1) != 0)
        exit(1);
    fn((void *)(size_t)0);
    pthread_join(second, NULL);
}

/* Rewriting the batch (g_buf) on the first core, the second core reading
 * it before each round or not; the seconds of the rewrites. */
static int g_rewrite_shared;
static float *g_rewrite_copy;
static double g_rewrite_seconds;

static void *rewrite_thread(void *arg)
{
    const int s = (int)(size_t)arg;
    unsigned arrivals = 0;
    pin(g_cpu[s]);
    for (int r = 0; r < ROUNDS; r++) {
        both_arrive(++arrivals);
        if (s == 1 && g_rewrite_shared) {
            memcpy(g_rewrite_copy, g_buf, FLOATS * sizeof(float));
            kept(g_rewrite_copy);
        }
        both_arrive(++arrivals);
        if (s == 0) {
            const double t0 = now();
            for (int i = 0; i < FLOATS; i++)
                g_buf[i] = (float)(r + i);
            kept(g_buf);
            g_rewrite_seconds += now() - t0;
        }
    }
    both_arrive(++arrivals);
    return NULL;
}

/* The mean seconds of a rewrite, the other core reading the batch before
 * each or not. */
static double rewrite_seconds(int shared)
{
    g_rewrite_shared = shared;
    g_rewrite_seconds = 0.0;
    on_both_cores(rewrite_thread);
    return g_rewrite_seconds / ROUNDS;
}

/* Core s's copy of its own buffer. */
static void stream_share(int s)
{
    memcpy(g_stream_dst[s], g_stream_src[s], STREAM_BYTES);
    kept(g_stream_dst[s]);
}

/* Thread s: the rounds, its work timed in each round it runs; one at a
 * time (even rounds share 0, odd rounds share 1, the other core waiting) or
 * both at once. */
static void timed_rounds(void (*work)(int), int rounds, int s, int at_once, unsigned *arrivals)
{
    for (int r = 0; r < rounds; r++) {
        both_arrive(++*arrivals);
        g_start[s][r] = g_end[s][r] = 0.0;
        if (at_once || (r & 1) == s) {
            g_start[s][r] = now();
            work(s);
            g_end[s][r] = now();
        }
    }
    both_arrive(++*arrivals);
}

/* The mean time of share s alone, or of a round at once: from the first
 * start to the last end (a parallel region lasts until its slower share is
 * done). */
static double mean_alone(int s, int rounds)
{
    double sum = 0.0;
    for (int r = s; r < rounds; r += 2)
        sum += g_end[s][r] - g_start[s][r];
    return sum / (rounds / 2);
}

static double mean_at_once(int rounds)
{
    double sum = 0.0;
    for (int r = 0; r < rounds; r++) {
        const double start = g_start[0][r] < g_start[1][r] ? g_start[0][r] : g_start[1][r];
        const double end = g_end[0][r] > g_end[1][r] ? g_end[0][r] : g_end[1][r];
        sum += end - start;
    }
    return sum / rounds;
}

static double g_alone[2];
static void (*g_work)(int);
static int g_rounds;

/* Thread s of a measurement of g_work: alone, then at once. */
static void *timed_thread(void *arg)
{
    const int s = (int)(size_t)arg;
    unsigned arrivals = 0;
    pin(g_cpu[s]);
    g_work(s);  /* warm: OpenBLAS's buffers, the operands in cache, the pages */
    timed_rounds(g_work, g_rounds, s, 0, &arrivals);
    /* Both threads have passed the last arrival: the alone rounds are final. */
    g_alone[s] = mean_alone(s, g_rounds);
    timed_rounds(g_work, g_rounds, s, 1, &arrivals);
    return NULL;
}

/* g_work on both cores, alone then at once: the at-once time over the
 * slower alone (its alone times in *alone0, *alone1). */
static double at_once_ratio(void (*work)(int), int rounds, double *alone0, double *alone1,
                            double *together)
{
    g_work = work;
    g_rounds = rounds;
    on_both_cores(timed_thread);
    *alone0 = g_alone[0];
    *alone1 = g_alone[1];
    *together = mean_at_once(rounds);
    /* One at a time, a region would last as long as the slower share. */
    return *together / (g_alone[0] > g_alone[1] ? g_alone[0] : g_alone[1]);
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
    g_rewrite_copy = copy;
    const double unshared = rewrite_seconds(0), shared = rewrite_seconds(1);
    const double batch = FLOATS * sizeof(float);
    printf("the same batch rewritten by the core that wrote it: %.1f us (%.1f GB/s) after the "
           "other core read it, %.1f us (%.1f GB/s) when it did not\n",
           shared * 1e6, batch / shared * 1e-9, unshared * 1e6, batch / unshared * 1e-9);
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
    double alone0, alone1, together;
    double ratio = at_once_ratio(gemm_share, GEMM_ROUNDS, &alone0, &alone1, &together);
    printf("the first dense layer's product (%d x %d x %d) in 2 row shares (%d + %d rows), one "
           "OpenBLAS call each on its core: %.0f and %.0f us one at a time, %.0f us both at once "
           "(first start to last end): %.2fx the slower share alone\n",
           GEMM_M, GEMM_K, GEMM_N, GEMM_SPLIT, GEMM_M - GEMM_SPLIT, alone0 * 1e6, alone1 * 1e6,
           together * 1e6, ratio);
    free(g_a);
    free(g_b);
    free(g_c);

    for (int k = 0; k < 2; k++) {
        g_stream_src[k] = aligned_alloc(64, STREAM_BYTES);
        g_stream_dst[k] = aligned_alloc(64, STREAM_BYTES);
        if (!g_stream_src[k] || !g_stream_dst[k])
            return 1;
        memset(g_stream_src[k], k + 1, STREAM_BYTES);
        memset(g_stream_dst[k], 0, STREAM_BYTES);
    }
    ratio = at_once_ratio(stream_share, STREAM_ROUNDS, &alone0, &alone1, &together);
    const double moved = 2.0 * STREAM_BYTES;  /* read and written */
    printf("a step's activations streamed through each core (memcpy of %d MB into %d MB of its "
           "own): %.0f and %.0f us one at a time (%.1f and %.1f GB/s), %.0f us both at once: "
           "%.2fx the slower alone\n",
           STREAM_BYTES >> 20, STREAM_BYTES >> 20, alone0 * 1e6, alone1 * 1e6,
           moved / alone0 * 1e-9, moved / alone1 * 1e-9, together * 1e6, ratio);
    for (int k = 0; k < 2; k++) {
        free(g_stream_src[k]);
        free(g_stream_dst[k]);
    }
    return 0;
}

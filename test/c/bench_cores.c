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
 *   the same copy again, the buffer now in the reader's cache.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { ROUND_TRIPS = 200000, ROUNDS = 400, FLOATS = 265 * 256 };

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
    return 0;
}

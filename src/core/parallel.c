/*
 * The core's thread pool: runs the OpenMP parallel regions of PARALLEL_FOR
 * (parallel.h) on worker threads that wait passively.
 *
 * gcc compiles "#pragma omp parallel num_threads(n)" into a function holding
 * the region's body and a call GOMP_parallel(fn, data, n, flags): libgomp's
 * entry point (ABI version GOMP_4.0, stable since gcc 4.9).  This file
 * defines GOMP_parallel itself, with hidden visibility, so the core's regions
 * bind to it when the core is linked and nothing else in the process (another
 * library using libgomp) ever does.  Neither the extension nor the tests need
 * libgomp.  Why not libgomp: its threads spin at every barrier (300,000
 * iterations, milliseconds) unless OMP_WAIT_POLICY or GOMP_SPINCOUNT are set
 * when it loads; with every core busy, that spinning took the CPU from the
 * thread doing the work, and training ran 6-17 times slower than on one
 * thread.  Here a waiting thread spins for at most SPIN_WAIT_NS (long enough
 * to cover the gap between two regions of a batch on an idle machine), then
 * sleeps on a condition variable.
 *
 * One region at a time (GOMP_parallel below says how its shares are run).
 * A region started inside a region, or by a second thread while the pool is
 * busy, runs in the calling thread alone (team of 1).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT, sched_getcpu */
#endif
#include "parallel.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "blas.h"

#if defined(_OPENMP) && defined(__clang__)
#error "parallel.c provides gcc's OpenMP entry point (GOMP_parallel): build the core with gcc"
#endif

/*
 * How long a thread waiting for work (a worker) or for the workers (the
 * thread that started a region) spins before it sleeps.  On an idle machine
 * the next region of a batch starts within a few microseconds and the
 * workers finish within a few of each other, so the waits end while
 * spinning and cost no wake-up; on a busy one a waiter gives its core away
 * after this long.  Waking a sleeping thread costs some 5-50 us.
 */
#define SPIN_WAIT_NS 50000
/* Spin iterations between two looks at the clock (a pause is ~10-150 cycles). */
#define SPIN_CLOCK_EVERY 64

/* ----------------------------------------------------------- settings */

/* Set by the host thread, outside regions. */
static int g_setting;                  /* bst_set_num_threads; 0 = automatic */
static int g_threads;                  /* the count a large loop uses; 0 = not resolved yet */
static double g_min_work = BST_PAR_MIN_WORK_DEFAULT;
static int g_loop_pairs = 1;
static int (*g_veto)(void);

static void pool_shrink(int workers);
static void forget_stalls(void);

/* Cores this process may run on (its affinity mask, as taskset sets it). */
static int available_cores(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) != 0)
        return 1;
    int n = CPU_COUNT(&set);
    return n > 0 ? n : 1;
}

/* The setting as a thread count; cached in g_threads (sched_getaffinity is a
 * system call). */
static int threads_in_effect(void)
{
#ifdef _OPENMP
    if (g_threads == 0) {
        int n = g_setting > 0 ? g_setting : available_cores();
        if (g_setting == 0 && n > BST_AUTO_THREADS_MAX)
            n = BST_AUTO_THREADS_MAX;
        g_threads = n > BST_MAX_THREADS ? BST_MAX_THREADS : n;
    }
    return g_threads;
#else
    return 1;
#endif
}

void bst_set_num_threads(int n)
{
    g_setting = n < 0 ? 0 : n;
    g_threads = 0;
    pool_shrink(threads_in_effect() - 1);
    forget_stalls();
}

int bst_get_num_threads(void)
{
    return g_veto && g_veto() ? 1 : threads_in_effect();
}

void bst_set_thread_veto(int (*veto)(void))
{
    g_veto = veto;
}

void bst_set_parallel_min_work(double flops)
{
    g_min_work = flops;
}

void bst_set_loop_pairs(int on)
{
    g_loop_pairs = on != 0;
}

int bst_loop_pairs(void)
{
    return g_loop_pairs;
}

void bst_threads_init(void)
{
    /* OpenBLAS's own pool would compete with ours; a one-thread OpenBLAS call
     * runs in the caller and is safe to make from several threads at once. */
    bst_blas.set_num_threads(1);
}

/* ------------------------------------------------------------- waiting */

/*
 * A counter that threads wait on until it moves past the value they have
 * seen: spin first, then sleep.  The counter changes under the lock, so a
 * thread that decides to sleep cannot miss the change.
 */
typedef struct Waiter {
    atomic_uint count;
    pthread_mutex_t lock;
    pthread_cond_t changed;
} Waiter;

static void waiter_init(Waiter *w)
{
    atomic_init(&w->count, 0);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->changed, NULL);
}

static void waiter_destroy(Waiter *w)
{
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->changed);
}

static void waiter_bump(Waiter *w)
{
    pthread_mutex_lock(&w->lock);
    atomic_fetch_add_explicit(&w->count, 1, memory_order_release);
    pthread_cond_signal(&w->changed);
    pthread_mutex_unlock(&w->lock);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static uint64_t clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * Waits until the count differs from `seen`; returns the new count.  The
 * spin yields the core now and then: when the scheduler has put two of the
 * pool's threads on one core (its other cores busy), the one that spins must
 * not keep the one that works from running.
 */
static unsigned waiter_await(Waiter *w, unsigned seen)
{
    unsigned count;
    const uint64_t deadline = clock_ns() + SPIN_WAIT_NS;
    for (unsigned i = 1;; i++) {
        count = atomic_load_explicit(&w->count, memory_order_acquire);
        if (count != seen)
            return count;
        if (i % SPIN_CLOCK_EVERY == 0) {
            if (clock_ns() >= deadline)
                break;
            sched_yield();
        }
        cpu_relax();
    }
    pthread_mutex_lock(&w->lock);
    while ((count = atomic_load_explicit(&w->count, memory_order_acquire)) == seen)
        pthread_cond_wait(&w->changed, &w->lock);
    pthread_mutex_unlock(&w->lock);
    return count;
}

/* ---------------------------------------------------------------- pool */

#ifdef BST_REGION_PROFILE
/* The profile of one loop (parallel.h). */
typedef struct LoopProfile {
    const char *func;
    int line;
    unsigned long calls, taken, alone;
    uint64_t own_ns, wait_ns;
    _Atomic uint64_t worker_ns;
} LoopProfile;
#endif

typedef struct Region {
    void (*fn)(void *);
    void *data;
    int team;                          /* shares: the thread count asked for */
#ifdef BST_REGION_PROFILE
    LoopProfile *loop;
#endif
} Region;

/* One cache line or more each: a worker's start counter is written by the
 * starting thread and polled by the worker, and nobody else. */
typedef struct Worker {
    alignas(64) Waiter start;          /* bumped for each region, and to quit */
    atomic_bool quit;
    pthread_t thread;
    /* Where and in which region it last ran a share (for region_outcome()). */
    atomic_int cpu;
    _Atomic uint64_t ran_generation;
} Worker;

static Worker g_workers[BST_MAX_THREADS - 1];
static int g_n_workers;                /* running: g_workers[0 .. g_n_workers) */
static Region g_region;                /* the current region; see claim() */
static uint64_t g_generation;          /* regions started */
/* The current region: its generation (bits 16-63) and shares (0-15),
 * published by the starting thread once g_region is written. */
static _Atomic uint64_t g_current;
/* Per share: the generation of the last region in which it was claimed (a
 * cache line each: different threads claim them). */
static struct {
    alignas(64) _Atomic uint64_t generation;
} g_claimed[BST_MAX_THREADS];
static atomic_int g_finished;          /* shares of the current region done */
static Waiter g_done;                  /* bumped by a worker finishing the last share */
static atomic_flag g_busy = ATOMIC_FLAG_INIT;
static int g_done_ready;               /* g_done initialised */

/* The calling thread's share of the region it runs, and region nesting. */
static _Thread_local int t_team_thread = 0, t_team_size = 1, t_depth = 0;

int bst_team_thread(void)
{
    return t_team_thread;
}

int bst_team_size(void)
{
    return t_team_size;
}

static void run_share(const Region *r, int share)
{
    const int saved_thread = t_team_thread, saved_size = t_team_size;
    t_team_thread = share;
    t_team_size = r->team;
    t_depth++;
    r->fn(r->data);
    t_depth--;
    t_team_thread = saved_thread;
    t_team_size = saved_size;
}

/*
 * Claims a share of the region `current` (as read from g_current); whether
 * this thread got it.  A share is claimed once per region, so a successful
 * claim pins the region (it cannot end before the share is done) and, by the
 * acquire of g_current, shows g_region as the starting thread wrote it.  A
 * worker that looks late, after its region ended, finds every share of it
 * claimed.
 */
static int claim(uint64_t current, int share)
{
    const uint64_t generation = current >> 16;
    uint64_t last = atomic_load_explicit(&g_claimed[share].generation, memory_order_relaxed);
    return last < generation &&
           atomic_compare_exchange_strong_explicit(&g_claimed[share].generation, &last, generation,
                                                   memory_order_acq_rel, memory_order_relaxed);
}

/*
 * Runs shares of the current region: `own` first (a thread usually runs the
 * same share of every region, so the rows it computed in one layer are still
 * in its core's cache for the next), then any the others have not claimed.
 */
static void run_shares(int own, Worker *worker)
{
    const uint64_t current = atomic_load_explicit(&g_current, memory_order_acquire);
    const int team = (int)(current & 0xffff);
    for (int k = 0; k < team; k++) {
        const int share = (own + k) % team;
        if (!claim(current, share))
            continue;
        const Region region = g_region;
#ifdef BST_REGION_PROFILE
        const uint64_t share_start = worker ? clock_ns() : 0;
        if (!worker && share != own && region.loop)
            region.loop->taken++;
        run_share(&region, share);
        if (worker && region.loop)
            atomic_fetch_add(&region.loop->worker_ns, clock_ns() - share_start);
#else
        run_share(&region, share);
#endif
        if (worker) {
            atomic_store_explicit(&worker->cpu, sched_getcpu(), memory_order_relaxed);
            atomic_store_explicit(&worker->ran_generation, current >> 16, memory_order_relaxed);
        }
        /* After the last increment the region may end and g_region change:
         * only the local copy is read from here on. */
        if (atomic_fetch_add_explicit(&g_finished, 1, memory_order_acq_rel) + 1 == team && worker)
            waiter_bump(&g_done);
    }
}

static void *worker_main(void *arg)
{
    Worker *w = arg;
    const int own = (int)(w - g_workers) + 1;
    unsigned seen = 0;
    for (;;) {
        seen = waiter_await(&w->start, seen);
        if (atomic_load_explicit(&w->quit, memory_order_acquire))
            return NULL;
        run_shares(own, w);
    }
}

/*
 * Starts workers until there are `workers` (or thread creation fails);
 * returns how many there are, at most `workers`.
 *
 * Inside PostgreSQL the core runs in a backend whose main thread handles
 * SIGINT, SIGTERM, SIGALRM, SIGUSR1, ...: the handlers set flags and latches
 * that only make sense on that thread.  The kernel delivers a process-wide
 * signal to any thread that does not block it, so the workers must block
 * them all.  A thread inherits the signal mask of the thread that creates
 * it: block everything around pthread_create, then restore the caller's
 * mask.  A worker that faults (SIGSEGV) still kills the process: synchronous
 * faults cannot be blocked.
 */
static int pool_grow(int workers)
{
    if (g_n_workers < workers) {
        if (!g_done_ready) {
            waiter_init(&g_done);
            g_done_ready = 1;
        }
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        while (g_n_workers < workers) {
            Worker *w = &g_workers[g_n_workers];
            waiter_init(&w->start);
            atomic_init(&w->quit, 0);
            atomic_init(&w->cpu, -1);
            atomic_init(&w->ran_generation, 0);
            if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
                waiter_destroy(&w->start);
                break;
            }
            g_n_workers++;
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    return g_n_workers < workers ? g_n_workers : workers;
}

/* Ends the workers beyond the first `workers` (idle: no region runs). */
static void pool_shrink(int workers)
{
    if (workers < 0)
        workers = 0;
    if (t_depth > 0)
        return;
    while (g_n_workers > workers) {
        Worker *w = &g_workers[--g_n_workers];
        atomic_store_explicit(&w->quit, 1, memory_order_release);
        waiter_bump(&w->start);
        pthread_join(w->thread, NULL);
        waiter_destroy(&w->start);
    }
}

#ifdef BST_REGION_PROFILE
#include <string.h>

#define PROFILE_LOOPS 128
static LoopProfile g_loops[PROFILE_LOOPS];
static int g_n_loops;
static LoopProfile *g_next_loop;       /* the loop whose region starts next */
static int g_profile_solo;

void bst_region_profile_label(const char *func, int line)
{
    g_next_loop = NULL;
    for (int i = 0; i < g_n_loops; i++)
        if (g_loops[i].line == line && strcmp(g_loops[i].func, func) == 0) {
            g_next_loop = &g_loops[i];
            return;
        }
    if (g_n_loops < PROFILE_LOOPS) {
        g_loops[g_n_loops].func = func;
        g_loops[g_n_loops].line = line;
        g_next_loop = &g_loops[g_n_loops++];
    }
}

void bst_region_profile_solo(int solo)
{
    g_profile_solo = solo;
}

int bst_region_profile_take(BstLoopTime *out, int max)
{
    int n = 0;
    for (int i = 0; i < g_n_loops && n < max; i++) {
        LoopProfile *l = &g_loops[i];
        if (l->calls == 0)
            continue;
        out[n++] = (BstLoopTime){l->func,         l->line,
                                 l->calls,        l->taken,
                                 l->alone,        l->own_ns * 1e-9,
                                 atomic_load(&l->worker_ns) * 1e-9, l->wait_ns * 1e-9};
        l->calls = l->taken = l->alone = 0;
        l->own_ns = l->wait_ns = 0;
        atomic_store(&l->worker_ns, 0);
    }
    return n;
}
#endif

/* Visible to the core's own object files only; see the top of this file. */
__attribute__((visibility("hidden"))) void GOMP_parallel(void (*fn)(void *), void *data,
                                                          unsigned num_threads, unsigned flags);

/*
 * Stalls.  Workers help only when they run on other cores than the thread
 * that starts the regions, at the same time.  On a busy machine they often
 * do not: a worker that the scheduler preempts in the middle of a share (the
 * machine's other processes want its core) holds the region up until it
 * runs again, some milliseconds, against 10-500 us for a whole region; and
 * when the other cores are busy, the scheduler may keep a worker on the
 * starting thread's own core, where the two only take turns.  Either made
 * 2 threads slower than 1.  So a region is a stall when the starting thread
 * waited STALL_NS or more for the workers, or when every worker that ran a
 * share of it ran on the starting thread's core, or when the workers ran no
 * share of IDLE_HELPER_REGIONS regions in a row (woken in vain).  That
 * count starts again after each stall, so at the end of each solo period
 * too, whose first regions wake workers that went to sleep: when it did
 * not, every region a worker missed after a first streak was a stall, and
 * runs on the idle 2-core VM went alone for up to all their regions
 * (test/c/bench_regions).  A stall
 * costs about as much as 20-50 regions run alone, so the starting thread
 * goes alone only while stalls are that frequent: when a stall finds them
 * at one in STALL_RATE_SOLO regions with helpers or more (an average over
 * the last STALL_RATE_REGIONS or so), it runs the next regions alone (all
 * their shares itself: the same results), SOLO_REGIONS_MIN regions after a
 * first such stall, twice as many after each further one up to
 * SOLO_REGIONS_MAX (some 0.1-0.2 s of training, so that the threads are
 * back soon after the machine's load goes), and back to the minimum after
 * CLEAN_REGIONS_RESET regions in a row without a stall; at the end of each
 * solo period half the stall rate is forgotten (bst_stall_policy_helpers
 * says why).  A rare stall is borne: on a 2-core VM whose neighbours
 * preempt a worker now and then (a stall in some 1,000 regions), going
 * alone after each had half the regions of an epoch run on one thread, and
 * the epoch take 6.7-7.9 s instead of 6.0-6.2.  On an idle machine a
 * sleeping worker wakes in tens of microseconds and the scheduler puts the
 * threads on idle cores, so stalls are that rare there (on the idle 2-core
 * VM, some 10-60 in 45,000 regions, test/c/bench_regions).
 */
#define STALL_NS 300000
#define IDLE_HELPER_REGIONS 8
#define SOLO_REGIONS_MIN 16
#define SOLO_REGIONS_MAX 1024
#define STALL_RATE_REGIONS 128
#define STALL_RATE_SOLO 32
#define CLEAN_REGIONS_RESET 256

static BstStallPolicy g_policy;

void bst_stall_policy_reset(BstStallPolicy *p)
{
    p->solo_left = 0;
    p->solo_next = SOLO_REGIONS_MIN;
    p->clean_streak = 0;
    p->stall_rate = 0;
    p->unhelped_streak = 0;
}

int bst_stall_policy_helpers(BstStallPolicy *p)
{
    if (p->solo_next == 0)             /* never reset: a zeroed static */
        bst_stall_policy_reset(p);
    if (p->solo_left == 0)
        return 1;
    /* Regions run alone say nothing of the workers, so the rate that sent
     * the thread alone would still be there when the helpers come back;
     * and the first region with them, whose worker wakes from its sleep,
     * often stalls.  One such stall sent it alone again, for twice as long:
     * on the 2-core VM, idle, a whole run once went alone (44,749 of 44,800
     * regions, test/c/bench_regions).  Half the rate is forgotten instead:
     * a load that stalls one region in 16 or more still sends it alone at
     * the next stall; a burst of stalls that has passed does not. */
    if (--p->solo_left == 0)
        p->stall_rate /= 2;
    return 0;
}

void bst_stall_policy_note(BstStallPolicy *p, BstRegionOutcome outcome)
{
    /* Every stall restarts the streak, so a solo period starts with none. */
    int stall;
    if (outcome == BST_REGION_UNHELPED) {
        stall = ++p->unhelped_streak >= IDLE_HELPER_REGIONS;
        if (stall)
            p->unhelped_streak = 0;
    } else {
        p->unhelped_streak = 0;
        stall = outcome == BST_REGION_STALLED;
    }
    p->stall_rate +=
        (stall ? 65536u / STALL_RATE_REGIONS : 0u) - p->stall_rate / STALL_RATE_REGIONS;
    if (!stall) {
        if (++p->clean_streak >= CLEAN_REGIONS_RESET)
            p->solo_next = SOLO_REGIONS_MIN;
        return;
    }
    p->clean_streak = 0;
    if (p->stall_rate < 65536u / STALL_RATE_SOLO)
        return;
    p->solo_left = p->solo_next;
    if (p->solo_next < SOLO_REGIONS_MAX)
        p->solo_next *= 2;
}

/* A new thread count starts without history. */
static void forget_stalls(void)
{
    bst_stall_policy_reset(&g_policy);
}

/* How the region just run with `helpers` workers went (above). */
static BstRegionOutcome region_outcome(uint64_t waited_ns, int helpers)
{
    if (waited_ns >= STALL_NS)
        return BST_REGION_STALLED;
    /* The workers wrote these before their last increment of g_finished. */
    const int cpu = sched_getcpu();
    int ran = 0, elsewhere = 0;
    for (int i = 0; i < helpers; i++) {
        const Worker *w = &g_workers[i];
        if (atomic_load_explicit(&w->ran_generation, memory_order_relaxed) == g_generation) {
            ran++;
            elsewhere += atomic_load_explicit(&w->cpu, memory_order_relaxed) != cpu;
        }
    }
    if (ran == 0)
        return BST_REGION_UNHELPED;
    return elsewhere == 0 ? BST_REGION_STALLED : BST_REGION_HELPED;
}

/*
 * The region's shares are numbered 0..team-1 and fixed by the thread count,
 * so the results are too; which thread runs which share is not.  Each
 * thread claims its own share (the starting thread 0, worker i share i),
 * then any share still unclaimed: a worker that the scheduler keeps waiting
 * behind other processes delays nobody, its share is simply run by a thread
 * that is running.  The shares must not wait for each other
 * (no barrier inside a region): one thread may run them one after another.
 */
void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)
{
    (void)flags;                       /* proc_bind: the workers are not pinned */
    int team = num_threads > 0 ? (int)num_threads : threads_in_effect();
    if (team > BST_MAX_THREADS)
        team = BST_MAX_THREADS;
    if (team <= 1 || t_depth > 0 || atomic_flag_test_and_set(&g_busy)) {
        Region alone = {.fn = fn, .data = data, .team = 1};
        run_share(&alone, 0);
        return;
    }
    /* The pool has the size asked for even while the workers rest. */
    int helpers = pool_grow(team - 1);
    const int policy_alone = !bst_stall_policy_helpers(&g_policy);
    if (policy_alone)
        helpers = 0;
    g_region = (Region){.fn = fn, .data = data, .team = team};
#ifdef BST_REGION_PROFILE
    LoopProfile *loop = g_next_loop;
    g_next_loop = NULL;
    if (loop && policy_alone)
        loop->alone++;
    if (g_profile_solo)
        helpers = 0;
    g_region.loop = loop;
    const uint64_t own_start = clock_ns();
#endif
    atomic_store_explicit(&g_finished, 0, memory_order_relaxed);
    g_generation++;
    atomic_store_explicit(&g_current, g_generation << 16 | (uint64_t)team, memory_order_release);
    for (int i = 0; i < helpers; i++)
        waiter_bump(&g_workers[i].start);
    run_shares(0, NULL);
#ifdef BST_REGION_PROFILE
    const uint64_t own_end = clock_ns();
#endif
    uint64_t wait_start = 0;
    for (;;) {
        const unsigned seen = atomic_load_explicit(&g_done.count, memory_order_acquire);
        if (atomic_load_explicit(&g_finished, memory_order_acquire) == team)
            break;
        if (wait_start == 0)
            wait_start = clock_ns();
        waiter_await(&g_done, seen);
    }
#ifdef BST_REGION_PROFILE
    if (loop) {
        loop->calls++;
        loop->own_ns += own_end - own_start;
        loop->wait_ns += clock_ns() - own_end;
    }
#endif
    if (helpers > 0)
        bst_stall_policy_note(&g_policy,
                              region_outcome(wait_start ? clock_ns() - wait_start : 0, helpers));
    atomic_flag_clear(&g_busy);
}

int bst_threads_for(size_t blocks, double work)
{
#ifdef _OPENMP
    const int nt = threads_in_effect();
    /* Nested regions would run alone anyway. */
    if (nt <= 1 || work < g_min_work || blocks < 2 || t_depth > 0 || (g_veto && g_veto()))
        return 1;
    return blocks < (size_t)nt ? (int)blocks : nt;
#else
    (void)blocks;
    (void)work;
    return 1;
#endif
}

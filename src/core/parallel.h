/*
 * Data-parallel execution of the core's loops on a small thread pool of its
 * own (parallel.c).
 *
 * Every parallel loop of the core splits its OUTPUT into disjoint contiguous
 * ranges, one per thread, and each thread runs the same serial code on its
 * range: rows for row-wise layers and for Y = X W / dX = dY W^T, columns for
 * the reductions over the batch (dW = X^T dY, bias and norm-parameter
 * gradients, embedding scatter-add).  The layers themselves never sum a
 * value across threads: each computes an output element by the same
 * operations in the same order whatever the thread count (dropout masks
 * come from counter-based streams, bst_rng_at, which any thread can
 * evaluate at any position).  Training's step is the exception, by design:
 * its transformer block and MLP run by shares of the windows, each share
 * summing its own rows into sums of its own (BatchNorm statistics, the
 * parameters' gradients), added up in share order after each region
 * (model.c, window shares), so those sums round differently for another
 * share count.  The shares depend only on the sizes and the thread count,
 * so training is bit-for-bit deterministic for a given seed and thread
 * count.  Only the BLAS may round an element
 * of a product differently depending on the block it is asked for: OpenBLAS's
 * AVX2 kernels do (last-bit differences between thread counts); its AVX-512
 * kernels mostly do not, but a block narrower than their 16 columns can take
 * another path (dW of a 41 x 41 projection split 32 + 9 does), so weights are
 * identical across thread counts on some shapes only.
 *
 * OpenBLAS is kept to one thread (its own pool spins and yields on these small
 * matrices); the core calls it concurrently on disjoint blocks instead.
 *
 * The loops are written as OpenMP parallel regions (PARALLEL_FOR below), so
 * that the compiler turns each loop body into a function, but the regions
 * run on parallel.c's pool, not on libgomp's: libgomp spin-waits at every
 * barrier unless OMP_WAIT_POLICY says otherwise when it loads, which on a
 * busy server made training 6-17 times slower than one thread, and an
 * extension cannot set the environment before a library it links is loaded.
 * parallel.c's workers spin briefly, then sleep.  The core is compiled with
 * -fopenmp (gcc) but needs no OpenMP library.
 */
#ifndef BST_PARALLEL_H
#define BST_PARALLEL_H

#include <stddef.h>

/*
 * At most this many threads per process, whatever is asked: far above any
 * useful count for the core's batch sizes.
 */
#define BST_MAX_THREADS 64

/*
 * The automatic thread count (setting 0) is the number of cores this process
 * may run on, at most this.  A database server runs many backends at once:
 * 20 trainings on 64 cores with every core each would run 1280 threads.  At
 * 4 threads a mini-batch of ~256 windows still splits into shares of 64 rows
 * or more, large enough for sgemm; beyond, each share's fixed costs (packing
 * the whole other operand, waking a thread) weigh more and more.  And 20
 * backends at 4 threads oversubscribe 64 cores only 1.25 times, which the
 * pool's sleeping waits absorb.  Where one backend trains alone, SET
 * bst.threads higher.
 */
#define BST_AUTO_THREADS_MAX 4

/*
 * Thread count of the core's parallel loops: n >= 1, or 0 for the automatic
 * count (above).  Records the setting: no thread is created until a loop
 * needs one, so a process that only makes single predictions (too little work
 * to split) never has a pool.  Lowering the count ends the surplus workers.
 * Default 0.  Never call it from inside a parallel loop.
 */
void bst_set_num_threads(int n);
/* The thread count a large loop would use now (1 when the host vetoes). */
int bst_get_num_threads(void);

/*
 * A host's veto: while veto() returns nonzero every loop runs in the calling
 * thread and no worker is created.  The extension vetoes in PostgreSQL's
 * parallel workers, which are already one process among several sharing a
 * query.  NULL (the default): no veto.
 */
void bst_set_thread_veto(int (*veto)(void));

/*
 * Limits OpenBLAS to one thread.  Called by bst_trainer_create() and
 * bst_predictor_create(); creates no thread.
 */
void bst_threads_init(void);

/*
 * Loops whose estimated work (in flops, roughly) is below this run serially
 * in the calling thread, without entering a parallel region at all: waking
 * the workers costs about a microsecond, about the whole per-layer budget of
 * a one-window prediction.  Tests set 0 to push tiny inputs through the
 * parallel paths.
 */
#define BST_PAR_MIN_WORK_DEFAULT 32768.0
void bst_set_parallel_min_work(double flops);

/*
 * Whether PARALLEL_FOR_PAIR may run its two loops in one region (default 1);
 * 0 runs them as two PARALLEL_FORs, which must give the same bits (the
 * tests compare the two).
 */
void bst_set_loop_pairs(int on);
int bst_loop_pairs(void);

/* Threads worth using for `blocks` independent blocks of work totalling
 * `work` flops: at most one per block; 1 inside a parallel region. */
int bst_threads_for(size_t blocks, double work);

/* Inside a parallel region: the share the calling thread runs (0..size-1;
 * which thread runs which share is the pool's choice) and the number of
 * shares, the region's thread count.  Outside: 0, 1. */
int bst_team_thread(void);
int bst_team_size(void);

/*
 * Share [*lo, *hi) of thread t among nt of the items [0, n): contiguous,
 * balanced, split at multiples of the grain.
 */
static inline void bst_share(size_t n, size_t grain, int t, int nt, size_t *lo, size_t *hi)
{
    size_t blocks = (n + grain - 1) / grain;
    size_t a = blocks * t / nt * grain, b = blocks * (t + 1) / nt * grain;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}

/*
 * Runs CALL (a function call using lo and hi) on each thread's share of
 * [0, n), as above; or, when the work is too small to be worth a thread or
 * n holds fewer than two grains, once in the calling thread with lo = 0,
 * hi = n.  The grain is the smallest share worth a thread (e.g. the rows of
 * an sgemm call, whose fixed cost includes packing the whole other operand)
 * and keeps split points aligned (16 floats: threads rarely write to the
 * same cache line).  CALL appears twice in the expansion so that the serial
 * path never touches the pool.  The shares are those of the thread count
 * asked for, whichever threads run them (fewer, even the calling thread
 * alone, when the pool could not create them all or the machine is busy), so
 * the results depend on the thread count only.  (One exception: a region
 * started while another application thread holds the pool runs as a single
 * share, the bits of one thread; a PostgreSQL backend has one thread.)
 *
 *     PARALLEL_FOR((size_t)rows, 1, (double)rows * d, lo, hi,
 *                  layer_rows(out, in, lo, hi, d));   // lo, hi: size_t
 */
/*
 * PARALLEL_FOR_PAIR: two independent loops (neither reads what the other
 * writes), each split as PARALLEL_FOR would split it, in one region when
 * both would run on the same thread count: each thread runs its share of
 * the first, then its share of the second, with one start and one wait
 * instead of two (the wait for the slower thread is paid once, and its lead
 * in one loop can make up for its lag in the other).  The same shares, so
 * the same bits, as the two PARALLEL_FORs it otherwise runs in turn.
 */
#ifdef _OPENMP
#define PARALLEL_FOR(n, grain, work, lo, hi, CALL)                                \
    do {                                                                          \
        const size_t par_n_ = (n), par_grain_ = (grain);                          \
        const int par_nt_ = bst_threads_for(par_n_ / par_grain_, (work));         \
        if (par_nt_ > 1) {                                                        \
            BST_REGION_LABEL();                                                   \
            _Pragma("omp parallel num_threads(par_nt_)")                          \
            {                                                                     \
                size_t lo, hi;                                                    \
                bst_share(par_n_, par_grain_, bst_team_thread(), bst_team_size(), \
                          &lo, &hi);                                              \
                CALL;                                                             \
            }                                                                     \
        } else {                                                                  \
            const size_t lo = 0, hi = par_n_;                                     \
            CALL;                                                                 \
        }                                                                         \
    } while (0)
#define PARALLEL_FOR_PAIR(n1, grain1, work1, lo1, hi1, CALL1, n2, grain2, work2, lo2, hi2,  \
                          CALL2)                                                     \
    do {                                                                             \
        const size_t par1_n_ = (n1), par1_grain_ = (grain1);                         \
        const size_t par2_n_ = (n2), par2_grain_ = (grain2);                         \
        const int par_nt_ = bst_threads_for(par1_n_ / par1_grain_, (work1));         \
        const int par2_nt_ = bst_threads_for(par2_n_ / par2_grain_, (work2));        \
        if (par_nt_ > 1 && par2_nt_ == par_nt_ && bst_loop_pairs()) {                \
            BST_REGION_LABEL();                                                      \
            _Pragma("omp parallel num_threads(par_nt_)")                             \
            {                                                                        \
                size_t lo1, hi1, lo2, hi2;                                           \
                bst_share(par1_n_, par1_grain_, bst_team_thread(), bst_team_size(),  \
                          &lo1, &hi1);                                               \
                bst_share(par2_n_, par2_grain_, bst_team_thread(), bst_team_size(),  \
                          &lo2, &hi2);                                               \
                CALL1;                                                               \
                CALL2;                                                               \
            }                                                                        \
        } else {                                                                     \
            PARALLEL_FOR(par1_n_, par1_grain_, (work1), lo1, hi1, CALL1);            \
            PARALLEL_FOR(par2_n_, par2_grain_, (work2), lo2, hi2, CALL2);            \
        }                                                                            \
    } while (0)
#else
#define PARALLEL_FOR(n, grain, work, lo, hi, CALL)                                \
    do {                                                                          \
        const size_t lo = 0, hi = (n);                                            \
        (void)(grain);                                                            \
        (void)(work);                                                             \
        CALL;                                                                     \
    } while (0)
#define PARALLEL_FOR_PAIR(n1, grain1, work1, lo1, hi1, CALL1, n2, grain2, work2, lo2, hi2,  \
                          CALL2)                                                     \
    do {                                                                             \
        PARALLEL_FOR((n1), (grain1), (work1), lo1, hi1, CALL1);                      \
        PARALLEL_FOR((n2), (grain2), (work2), lo2, hi2, CALL2);                      \
    } while (0)
#endif

/*
 * The profiling build (-DBST_REGION_PROFILE; test/c/bench_regions): the time
 * of each parallel loop's regions, by the function and line that start them,
 * the starting thread's shares apart from the workers'.  solo: from now on
 * the starting thread runs every share itself (the same work, split the
 * same way, one share after another), the reference that tells what
 * running the shares at once costs.  The normal build has none of it.
 */
#ifdef BST_REGION_PROFILE
typedef struct BstLoopTime {
    const char *func;                  /* where the loop is: function and line */
    int line;
    unsigned long calls;               /* regions */
    unsigned long taken;               /* workers' shares the starting thread ran */
    unsigned long alone;               /* regions the stall policy ran alone (parallel.c) */
    double own_s, workers_s, wait_s;   /* shares run by the starting thread, by workers;
                                        * the starting thread's wait for them */
} BstLoopTime;
void bst_region_profile_label(const char *func, int line);
void bst_region_profile_solo(int solo);
/* The loops so far (at most max), then forgets their times. */
int bst_region_profile_take(BstLoopTime *out, int max);
#define BST_REGION_LABEL() bst_region_profile_label(__func__, __LINE__)
#else
#define BST_REGION_LABEL() ((void)0)
#endif

/*
 * When the thread that starts the regions runs them alone (parallel.c says
 * why): a region with helpers is a stall when the workers held it up; the
 * policy answers, for each region, whether helpers may run it, from the
 * stalls noted so far.  Exposed for the tests; the pool keeps one.
 */
typedef struct BstStallPolicy {
    unsigned solo_left;                /* regions still to run alone */
    unsigned solo_next;                /* length of the next solo period */
    unsigned clean_streak;             /* regions with helpers in a row without a stall */
    unsigned stall_rate;               /* stalls per region with helpers, x 65536, averaged */
    unsigned unhelped_streak;          /* regions with helpers in a row that they left alone */
} BstStallPolicy;

/* How a region with helpers went. */
typedef enum BstRegionOutcome {
    BST_REGION_HELPED,                 /* a worker ran a share, on another core */
    BST_REGION_UNHELPED,               /* the workers ran no share: woken in vain */
    BST_REGION_STALLED                 /* held up, or every worker on the starting core */
} BstRegionOutcome;

void bst_stall_policy_reset(BstStallPolicy *p);
/* Whether the next region may have helpers (0: it runs alone). */
int bst_stall_policy_helpers(BstStallPolicy *p);
/* After a region that had helpers: how it went. */
void bst_stall_policy_note(BstStallPolicy *p, BstRegionOutcome outcome);

#endif

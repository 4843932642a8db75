/*
 * Data-parallel execution of the core's loops on a small OpenMP thread pool.
 *
 * Every parallel loop of the core splits its OUTPUT into disjoint contiguous
 * ranges, one per thread, and each thread runs the same serial code on its
 * range: rows for row-wise layers and for Y = X W / dX = dY W^T, columns for
 * the reductions over the batch (dW = X^T dY, bias and norm-parameter
 * gradients, BatchNorm statistics, embedding scatter-add).  No value is ever
 * summed across threads and the shares depend only on the sizes and the
 * thread count, so training is bit-for-bit deterministic for a given seed and
 * thread count.  Beyond that, the core's own kernels compute each output
 * element by the same operations in the same order whatever the thread count
 * (dropout masks come from counter-based streams, bst_rng_at, which any
 * thread can evaluate at any position).  Only the BLAS may round an element
 * of a product differently depending on the block it is asked for: OpenBLAS's
 * AVX-512 kernels do not (weights are then identical for any thread count),
 * its AVX2 kernels do (last-bit differences between thread counts).
 *
 * OpenBLAS is kept to one thread (its own pool spins and yields on these small
 * matrices); the core calls it concurrently on disjoint blocks instead.
 */
#ifndef BST_PARALLEL_H
#define BST_PARALLEL_H

#include <stddef.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/*
 * Thread count of the core's parallel loops: n >= 1, or 0 for all the cores
 * this process may run on.  Also (re)creates the thread pool as
 * bst_threads_init() does.  Default 0.
 */
void bst_set_num_threads(int n);
/* The thread count in effect (1 when built without OpenMP). */
int bst_get_num_threads(void);

/*
 * Creates the OpenMP worker threads (once, or again when the thread count
 * grows) with every signal blocked, and limits OpenBLAS to one thread.
 * Called by bst_trainer_create() and bst_predictor_create(); cheap when there
 * is nothing to do.
 */
void bst_threads_init(void);

/*
 * Loops whose estimated work (in flops, roughly) is below this run serially
 * in the calling thread, without entering OpenMP at all: a parallel region
 * costs ~0.6 us even with one thread, about the whole per-layer budget of a
 * one-window prediction.  Tests set 0 to push tiny inputs through the
 * parallel paths.
 */
#define BST_PAR_MIN_WORK_DEFAULT 32768.0
void bst_set_parallel_min_work(double flops);

/* Threads worth using for `blocks` independent blocks of work totalling
 * `work` flops: at most one per block. */
int bst_threads_for(size_t blocks, double work);

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
 * path never touches OpenMP.  The shares follow the team libgomp actually
 * gave (OMP_DYNAMIC or OMP_THREAD_LIMIT may shrink it), so every item is
 * always covered.
 *
 *     PARALLEL_FOR((size_t)rows, 1, (double)rows * d, lo, hi,
 *                  layer_rows(out, in, lo, hi, d));   // lo, hi: size_t
 */
#ifdef _OPENMP
#define PARALLEL_FOR(n, grain, work, lo, hi, CALL)                                \
    do {                                                                          \
        const size_t par_n_ = (n), par_grain_ = (grain);                          \
        const int par_nt_ = bst_threads_for(par_n_ / par_grain_, (work));         \
        if (par_nt_ > 1) {                                                        \
            _Pragma("omp parallel num_threads(par_nt_)")                          \
            {                                                                     \
                size_t lo, hi;                                                    \
                bst_share(par_n_, par_grain_, omp_get_thread_num(),               \
                          omp_get_num_threads(), &lo, &hi);                       \
                CALL;                                                             \
            }                                                                     \
        } else {                                                                  \
            const size_t lo = 0, hi = par_n_;                                     \
            CALL;                                                                 \
        }                                                                         \
    } while (0)
#else
#define PARALLEL_FOR(n, grain, work, lo, hi, CALL)                                \
    do {                                                                          \
        const size_t lo = 0, hi = (n);                                            \
        (void)(grain);                                                            \
        (void)(work);                                                             \
        CALL;                                                                     \
    } while (0)
#endif

#endif

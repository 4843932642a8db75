/*
 * Loading OpenBLAS with kernels that fit the CPU, and saying which ones run
 * (blas.c; why: blas.h).  No BLAS header here: the extension's SQL-facing
 * files include this one.
 */
#ifndef BST_BLAS_LOAD_H
#define BST_BLAS_LOAD_H

/* The library the extension loads: Debian's libopenblas0-* packages (any of
 * the pthread, openmp or serial variants) provide it.  A build may name
 * another (-DBST_OPENBLAS_LIBRARY='"..."'). */
#ifndef BST_OPENBLAS_LIBRARY
#define BST_OPENBLAS_LIBRARY "libopenblas.so.0"
#endif

/* The CPU features that decide which OpenBLAS kernels fit (cpuid, with the
 * operating system's support for the registers checked). */
typedef struct BstCpuFeatures {
    int amd;
    int avx2_fma;                      /* AVX2 and FMA3 */
    int avx512;                        /* AVX-512 F, CD, BW, DQ and VL: Skylake-SP's set */
} BstCpuFeatures;

BstCpuFeatures bst_cpu_features(void);

/* The kernels bst asks OpenBLAS for on such a CPU. */
typedef struct BstKernelChoice {
    const char *coretype;              /* an OPENBLAS_CORETYPE value; NULL: OpenBLAS decides */
    const char *reason;                /* the features that decided, e.g. "AVX-512" */
} BstKernelChoice;

/*
 * AVX-512 -> "SkylakeX", AVX2 and FMA -> "Zen" (AMD) or "Haswell", older
 * CPUs -> NULL.  bst calls only sgemm, and for sgemm these are the kernels
 * of every CPU of their class: OpenBLAS's Cooperlake and SapphireRapids
 * targets run SkylakeX's sgemm kernel, Zen's is Haswell's with other block
 * sizes.  So asking for them loses nothing when OpenBLAS knows the CPU, and
 * avoids its fallback (Prescott: SSE2, or Haswell on an AVX-512 CPU) when it
 * does not.  CPUs without AVX2 are older than any OpenBLAS that runs on them.
 */
BstKernelChoice bst_kernels_for(const BstCpuFeatures *cpu);

/*
 * Makes bst_blas usable.  Built with BST_BLAS_DLOPEN: unless the environment
 * already sets OPENBLAS_CORETYPE (a host may set it on purpose: some OpenBLAS
 * builds compute wrong results or crash on some processors), sets it to
 * bst_kernels_for() this CPU; unless it sets OPENBLAS_NUM_THREADS, sets it to
 * 1 (the core runs OpenBLAS single-threaded: see parallel.h), so that
 * OpenBLAS starts no threads of its own; dlopen()s BST_OPENBLAS_LIBRARY with
 * every signal blocked (threads it may start inherit that mask); restores
 * the environment; resolves the functions.  Otherwise it only records where
 * the linked library's kernels came from.  Returns NULL on success, else a
 * message saying what failed (the same one on every later call).  Call it
 * from the process's main thread, before any other thread may read the
 * environment.
 */
const char *bst_blas_load(void);

/*
 * What computes, for messages: the BLAS, its kernels and where they came
 * from, and the core's thread count, e.g.
 *   "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64,
 *    kernels SkylakeX (chosen by bst: AVX-512), 2 threads; prediction kernels AVX-512,
 *    training loops AVX-512"
 * where the parenthesis may also read "from OPENBLAS_CORETYPE" or "OpenBLAS's
 * own detection", then the instruction sets of the loaded models' prediction
 * kernels (infer.h: AVX-512, AVX2, portable, or none) and of the core's own
 * loops (simd.h: AVX-512, AVX2 or generic).  Loads the BLAS if
 * needed.  A static buffer, valid until the next call.
 */
const char *bst_compute_description(void);

#endif

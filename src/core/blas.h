/*
 * The BLAS routines the core calls, through pointers: bst_blas.sgemm(...)
 * where a plain program would call cblas_sgemm(...).
 *
 * Why pointers: OpenBLAS (DYNAMIC_ARCH builds, such as Debian's) picks its
 * kernels once, when the library loads, from OPENBLAS_CORETYPE or from its
 * own CPU detection, which falls back to generic kernels on CPUs newer than
 * the library.  A library that the extension links is loaded, and its
 * choice made, before the extension's _PG_init can set anything.  So the
 * extension (built with -DBST_BLAS_DLOPEN) does not link OpenBLAS:
 * bst_blas_load() chooses the kernels, then dlopen()s it and fills bst_blas
 * (blas.c, blas_load.h).  Programs linked with -lopenblas (the standalone
 * tests and benchmarks) get the linked functions, and OpenBLAS's own choice
 * of kernels or OPENBLAS_CORETYPE's.
 *
 * Core files only: <cblas.h> brings <complex.h> (a macro named I) along.
 */
#ifndef BST_BLAS_H
#define BST_BLAS_H

#include <cblas.h>

#include "blas_load.h"

/* Same signatures as OpenBLAS's declarations, by construction. */
typedef struct BstBlas {
    __typeof__(cblas_sgemm) *sgemm;
    __typeof__(openblas_set_num_threads) *set_num_threads;
    __typeof__(openblas_get_corename) *get_corename;
    __typeof__(openblas_get_config) *get_config;
} BstBlas;

/* Valid once bst_blas_load() has succeeded (always, when linked). */
extern BstBlas bst_blas;

#endif

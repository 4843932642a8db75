/* The BLAS behind bst_blas, and the choice of its kernels (blas.h, blas_load.h). */
#define _POSIX_C_SOURCE 200809L
#include "blas.h"

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#ifdef BST_BLAS_DLOPEN
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#endif

#include "infer.h"
#include "parallel.h"
#include "simd.h"

#define CORETYPE_VARIABLE "OPENBLAS_CORETYPE"

#ifdef BST_BLAS_DLOPEN
BstBlas bst_blas;                      /* filled by bst_blas_load() */
#else
BstBlas bst_blas = {cblas_sgemm, openblas_set_num_threads, openblas_get_corename,
                    openblas_get_config};
#endif

static int g_loaded;
static char g_load_error[512];

/* What decided the kernels, for bst_compute_description(). */
static enum { FROM_OPENBLAS, FROM_ENVIRONMENT, FROM_BST } g_origin = FROM_OPENBLAS;
#ifdef BST_BLAS_DLOPEN
static BstKernelChoice g_choice;       /* what bst set, when FROM_BST */
#endif

BstCpuFeatures bst_cpu_features(void)
{
    BstCpuFeatures cpu = {0, 0, 0};
#if defined(__x86_64__) || defined(__i386__)
    /* gcc's CPU model (libgcc) reads cpuid and, for AVX and AVX-512, checks
     * that the operating system saves the registers (XCR0). */
    __builtin_cpu_init();
    cpu.amd = __builtin_cpu_is("amd");
    cpu.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    cpu.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512vl");
#endif
    return cpu;
}

BstKernelChoice bst_kernels_for(const BstCpuFeatures *cpu)
{
    if (cpu->avx512)
        return (BstKernelChoice){"SkylakeX", "AVX-512"};
    if (cpu->avx2_fma)
        return (BstKernelChoice){cpu->amd ? "Zen" : "Haswell", "AVX2 and FMA"};
    return (BstKernelChoice){NULL, "no AVX2"};
}

#ifdef BST_BLAS_DLOPEN
/* Sets an environment variable unless it is set; returns whether it did. */
static int set_unless_set(const char *name, const char *value)
{
    return getenv(name) == NULL && setenv(name, value, 0) == 0;
}

static const char *load_library(void)
{
    const BstCpuFeatures cpu = bst_cpu_features();
    const BstKernelChoice choice = bst_kernels_for(&cpu);
    int set_coretype = 0;
    if (getenv(CORETYPE_VARIABLE))
        g_origin = FROM_ENVIRONMENT;
    else if (choice.coretype && set_unless_set(CORETYPE_VARIABLE, choice.coretype)) {
        set_coretype = 1;
        g_origin = FROM_BST;
        g_choice = choice;
    }
    const int set_threads = set_unless_set("OPENBLAS_NUM_THREADS", "1");

    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    void *lib = dlopen(BST_OPENBLAS_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    /* OpenBLAS read them in its constructor; children of this process (a
     * COPY ... PROGRAM) get the environment the host gave. */
    if (set_coretype)
        unsetenv(CORETYPE_VARIABLE);
    if (set_threads)
        unsetenv("OPENBLAS_NUM_THREADS");
    if (!lib) {
        snprintf(g_load_error, sizeof g_load_error, "could not load %s: %s",
                 BST_OPENBLAS_LIBRARY, dlerror());
        return g_load_error;
    }

    static const struct {
        const char *name;
        void **slot;
    } symbols[] = {
        {"cblas_sgemm", (void **)&bst_blas.sgemm},
        {"openblas_set_num_threads", (void **)&bst_blas.set_num_threads},
        {"openblas_get_corename", (void **)&bst_blas.get_corename},
        {"openblas_get_config", (void **)&bst_blas.get_config},
    };
    for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; i++) {
        *symbols[i].slot = dlsym(lib, symbols[i].name);
        if (!*symbols[i].slot) {
            snprintf(g_load_error, sizeof g_load_error, "%s has no function %s: is it OpenBLAS?",
                     BST_OPENBLAS_LIBRARY, symbols[i].name);
            bst_blas = (BstBlas){0};
            return g_load_error;
        }
    }
    return NULL;
}
#endif

const char *bst_blas_load(void)
{
    if (g_loaded)
        return NULL;
#ifdef BST_BLAS_DLOPEN
    const char *error = load_library();
    if (error)
        return error;
#else
    if (getenv(CORETYPE_VARIABLE))
        g_origin = FROM_ENVIRONMENT;
#endif
    g_loaded = 1;
    return NULL;
}

const char *bst_compute_description(void)
{
    static char text[sizeof g_load_error + 512];
    const int threads = bst_get_num_threads();
    const char *error = bst_blas_load();
    if (error) {
        snprintf(text, sizeof text, "no BLAS (%s), %d thread%s", error, threads,
                 threads == 1 ? "" : "s");
        return text;
    }
    const char *core = bst_blas.get_corename();
    char origin[128];
    if (g_origin == FROM_ENVIRONMENT)
        snprintf(origin, sizeof origin, "from " CORETYPE_VARIABLE);
#ifdef BST_BLAS_DLOPEN
    /* A build without DYNAMIC_ARCH, or an OpenBLAS that another library of
     * the process had loaded already, ignores OPENBLAS_CORETYPE. */
    else if (g_origin == FROM_BST && strcasecmp(core, g_choice.coretype) != 0)
        snprintf(origin, sizeof origin, "bst asked for %s (%s), this OpenBLAS did not take it",
                 g_choice.coretype, g_choice.reason);
    else if (g_origin == FROM_BST)
        snprintf(origin, sizeof origin, "chosen by bst: %s", g_choice.reason);
#endif
    else
        snprintf(origin, sizeof origin, "OpenBLAS's own detection");
    snprintf(text, sizeof text,
             "%s, kernels %s (%s), %d thread%s; prediction kernels %s, training loops %s",
             bst_blas.get_config(), core, origin, threads, threads == 1 ? "" : "s",
             bst_infer_isa_name(bst_infer_isa()), bst_simd_name(bst_simd()));
    return text;
}

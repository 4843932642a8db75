#include "bst_alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Mutable global state of the core, with the thread settings of parallel.c:
 * set by the host, never from a parallel region. */
static void *(*g_alloc)(size_t) = malloc;
static void (*g_free)(void *) = free;

void bst_set_allocator(void *(*alloc_fn)(size_t), void (*free_fn)(void *))
{
    g_alloc = alloc_fn ? alloc_fn : malloc;
    g_free = free_fn ? free_fn : free;
}

void *bst_alloc(size_t size)
{
    if (size == 0)
        return NULL;
    return g_alloc(size);
}

void bst_free(void *ptr)
{
    if (ptr)
        g_free(ptr);
}

void *bst_alloc_zero(size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size)
        return NULL;
    void *p = bst_alloc(n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}

/*
 * Allocation hook for the numerical core.
 *
 * Inside PostgreSQL the extension points these at palloc-style functions
 * bound to a memory context, so that an error or a cancelled query releases
 * every buffer at once.  Consequences for the core:
 *   - bst_free() may be a no-op and is never relied upon on error paths;
 *   - a NULL return is reported to the caller as a failure, never aborted on;
 *   - nothing is allocated inside per-batch loops.
 */
#ifndef BST_ALLOC_H
#define BST_ALLOC_H

#include <stddef.h>

void bst_set_allocator(void *(*alloc_fn)(size_t), void (*free_fn)(void *));

/* NULL on failure (or for size 0). */
void *bst_alloc(size_t size);
/* Accepts NULL. */
void bst_free(void *ptr);

/* bst_alloc(n * size) with an overflow check; the memory is zeroed. */
void *bst_alloc_zero(size_t n, size_t size);

#endif

/*
 * Windows beyond memory.  A training whose windows do not fit its memory
 * limit keeps them in temporary files the host provides, and holds only a
 * bucket of them in memory at a time.  Every epoch still visits the training
 * windows in a uniformly random order: it scatters them into buckets that
 * fit memory, each window to a random bucket with the buckets' sizes fixed,
 * and shuffles each bucket in memory (Rao 1961, Sandelius 1962: the
 * concatenation is a uniform permutation).  So memory follows the bucket and
 * the batch, not the data; the files cost a sequential read and write of the
 * windows per epoch.
 *
 * A file is a sequence of chunks, each a header and the five arrays of at
 * most BST_SPILL_CHUNK_WINDOWS windows, laid out as in BstData (fit.h).
 */
#ifndef BST_SPILL_H
#define BST_SPILL_H

#include <stddef.h>
#include <stdint.h>

/* Windows per chunk: what each file open for reading or writing buffers in
 * memory (45 kB for windows of 4 movies).  Counted in windows, not bytes,
 * so that a chunk written while the windows were narrower fits a reader
 * laid out for the widest. */
#define BST_SPILL_CHUNK_WINDOWS 1024

/* The host's temporary files.  A host may raise its own error from any of
 * these (PostgreSQL longjmps; its files go at the end of the transaction)
 * instead of returning a failure. */
typedef struct BstSpillIO {
    /* A new, empty file; NULL on failure. */
    void *(*create)(void *arg);
    /* All bytes of buf: 0, or -1 on failure. */
    int (*write)(void *file, const void *buf, size_t bytes, void *arg);
    /* Back to the start, to read what was written: 0, or -1. */
    int (*rewind)(void *file, void *arg);
    /* Exactly bytes: 1; 0 at the end of the file, when nothing is left; -1
     * on failure or when the file ends within them. */
    int (*read)(void *file, void *buf, size_t bytes, void *arg);
    void (*close)(void *file, void *arg);
    void *arg;
} BstSpillIO;

/* Where a spilled data set is (BstData.spill). */
typedef struct BstSpill {
    const BstSpillIO *io;
    void *file;                  /* the windows in the order read, as chunks */
    int map_ids;                 /* ids still as read: mapped to the model's
                                  * vocabulary when first read (bst_data_map_ids) */
    int map_users;               /* ... the users too, else every user 0 */
    int64_t bucket_windows;      /* most training windows held at once: a
                                  * multiple of the batch (bst_fit_bucket_windows) */
} BstSpill;

struct BstData;

/* Appends windows [from, to) of d to file, as chunks: 0, or -1. */
int bst_spill_write(const BstSpillIO *io, void *file, const struct BstData *d, int64_t from,
                    int64_t to);

/*
 * Reads the next chunk of file into d, at window `at`, d having room for
 * `capacity` windows of d->seq_len.  A chunk laid out for fewer positions is
 * laid out again for d->seq_len (only at 0: a reader's own buffer).  The
 * number of windows read; d->n becomes at + that number; 0 at the end of the
 * file; -1 on failure, or when the chunk does not fit.
 */
int64_t bst_spill_read(const BstSpillIO *io, void *file, struct BstData *d, int64_t at,
                       int64_t capacity);

#endif

#include "spill.h"

#include <string.h>

#include "fit.h"

/* Marks a chunk's header: a file read from the wrong place fails at once. */
#define CHUNK_MAGIC 0x57494e44   /* "WIND" */

typedef struct ChunkHeader {
    int64_t n;
    int32_t seq_len;
    int32_t magic;
} ChunkHeader;

int bst_spill_write(const BstSpillIO *io, void *file, const BstData *d, int64_t from,
                    int64_t to)
{
    const size_t L = (size_t)d->seq_len;
    const int64_t per_chunk = BST_SPILL_CHUNK_WINDOWS;
    for (int64_t first = from; first < to; first += per_chunk) {
        const size_t w = (size_t)first;
        const size_t n = (size_t)(to - first < per_chunk ? to - first : per_chunk);
        ChunkHeader h = {.n = (int64_t)n, .seq_len = d->seq_len, .magic = CHUNK_MAGIC};
        if (io->write(file, &h, sizeof(h), io->arg) ||
            io->write(file, d->movies + w * L, n * L * sizeof(int32_t), io->arg) ||
            io->write(file, d->ratings + w * (L - 1), n * (L - 1) * sizeof(float), io->arg) ||
            io->write(file, d->hist_len + w, n * sizeof(int32_t), io->arg) ||
            io->write(file, d->users + w, n * sizeof(int32_t), io->arg) ||
            io->write(file, d->targets + w, n * sizeof(float), io->arg))
            return -1;
    }
    return 0;
}

int64_t bst_spill_read(const BstSpillIO *io, void *file, BstData *d, int64_t at,
                       int64_t capacity)
{
    ChunkHeader h;
    const int got = io->read(file, &h, sizeof(h), io->arg);
    if (got <= 0)
        return got;
    /* A narrower chunk is read packed at its own width, then widened in
     * place: only into an empty buffer. */
    if (h.magic != CHUNK_MAGIC || h.n < 1 || h.n > capacity - at || h.seq_len < 1 ||
        h.seq_len > d->seq_len || (h.seq_len != d->seq_len && at != 0))
        return -1;
    const size_t L = (size_t)h.seq_len, w = (size_t)at, n = (size_t)h.n;
    if (io->read(file, d->movies + w * L, n * L * sizeof(int32_t), io->arg) != 1 ||
        io->read(file, d->ratings + w * (L - 1), n * (L - 1) * sizeof(float), io->arg) != 1 ||
        io->read(file, d->hist_len + w, n * sizeof(int32_t), io->arg) != 1 ||
        io->read(file, d->users + w, n * sizeof(int32_t), io->arg) != 1 ||
        io->read(file, d->targets + w, n * sizeof(float), io->arg) != 1)
        return -1;
    if (h.seq_len != d->seq_len) {
        const int32_t wide = d->seq_len;
        d->seq_len = h.seq_len;
        d->n = h.n;
        bst_data_relayout(d, wide);
    }
    d->n = at + h.n;
    return h.n;
}

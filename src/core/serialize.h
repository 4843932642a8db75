/*
 * Versioned little-endian binary model format (independent of host byte order):
 *
 *   offset size
 *        0    4  magic "BSTW"
 *        4    4  u32 format version (1)
 *        8    4  u32 header size in bytes (100 for version 1)
 *       12    8  u64 total blob size in bytes, checksum included
 *       20   72  config: i32 n_movies, embed_dim, seq_len, heads, n_hidden,
 *                hidden[8]; f32 dropout, leaky_slope, ln_eps, bn_eps, bn_momentum
 *       92    8  u64 number of parameter floats
 *      100       i32 vocabulary[n_movies] (movie ids, strictly ascending)
 *                f32 parameter tensors, in bst_param_tensors() order
 *                f32 BatchNorm moving_mean[i], moving_var[i] for each hidden layer
 *   size-4    4  u32 CRC-32 (zlib) of every preceding byte
 */
#ifndef BST_SERIALIZE_H
#define BST_SERIALIZE_H

#include <stddef.h>

#include "model.h"

#define BST_FORMAT_VERSION 1

size_t bst_model_serialized_size(const BstModel *m);
/* buf must hold bst_model_serialized_size(m) bytes. */
void bst_model_serialize(const BstModel *m, void *buf);
/*
 * Validates everything before trusting it and never reads outside
 * buf[0, len).  On failure returns NULL and writes a message to err
 * ("truncated", "not a bst model (bad magic)", "unsupported format version N",
 * "checksum mismatch", "inconsistent shapes ...", "invalid config: ...",
 * "vocabulary not strictly ascending", "out of memory").
 */
BstModel *bst_model_deserialize(const void *buf, size_t len, char *err, size_t errlen);

#endif

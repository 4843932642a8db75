/*
 * Versioned little-endian binary model format (independent of host byte order):
 *
 *   offset size
 *        0    4  magic "BSTW"
 *        4    4  u32 format version (1, 2 or 3; written: 3)
 *        8    4  u32 header size in bytes (100 in version 1, 156 in version 2,
 *                168 in version 3)
 *       12    8  u64 total blob size in bytes, checksum included
 *       20   72  config: i32 n_movies, embed_dim, seq_len, heads, n_hidden,
 *                hidden[8]; f32 dropout, leaky_slope, ln_eps, bn_eps, bn_momentum
 *       92    8  u64 number of parameter floats
 *      100   56  (version >= 2) i32 n_users, user_dim, n_feat_values[3],
 *                feat_dim[3], n_genres, use_bias, n_factors; f32 rating_min,
 *                rating_max; i32 rating_add
 *      156   12  (version 3) training facts (model.h): i32 known (0 or 1);
 *                f32 mean training target (finite); i32 min_history
 *                (0..seq_len - 1); unknown facts are written as 0, 0, 0
 *   header       i32 movie vocabulary[n_movies] (strictly ascending)
 *                (version >= 2) i32 user vocabulary[n_users] (strictly ascending),
 *                i32 user features[n_users][3], f32 genres[n_movies][n_genres]
 *                f32 parameter tensors, in bst_param_tensors() order
 *                f32 BatchNorm moving_mean[i], moving_var[i] for each hidden layer
 *   size-4    4  u32 CRC-32 (zlib) of every preceding byte
 *
 * A version-1 blob is a model without the optional inputs (their config
 * fields 0), whose tensors are a prefix of the same list: it loads as it is.
 * A version-1 or 2 blob loads as a model whose training facts are unknown;
 * written again, it is a version-3 blob that says so.
 */
#ifndef BST_SERIALIZE_H
#define BST_SERIALIZE_H

#include <stddef.h>

#include "model.h"

#define BST_FORMAT_VERSION 3
/* Header bytes of each version: each adds fields after the previous one's. */
#define BST_HEADER_SIZE_V1 100u
#define BST_HEADER_SIZE_V2 156u
#define BST_HEADER_SIZE_V3 168u

size_t bst_model_serialized_size(const BstModel *m);
/* buf must hold bst_model_serialized_size(m) bytes. */
void bst_model_serialize(const BstModel *m, void *buf);
/*
 * Validates everything before trusting it and never reads outside
 * buf[0, len).  On failure returns NULL and writes a message to err
 * ("truncated", "not a bst model (bad magic)", "unsupported format version N",
 * "checksum mismatch", "inconsistent shapes ...", "invalid config: ...",
 * "invalid training facts: ...", "vocabulary not strictly ascending",
 * "out of memory").
 */
BstModel *bst_model_deserialize(const void *buf, size_t len, char *err, size_t errlen);

#endif

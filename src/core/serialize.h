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
#include "trainer.h"

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

/*
 * The optimizer state of a stored version (BstTrainState, trainer.h), what
 * a warm start continues from.  A blob of its own beside the weights, not a
 * section of them: it is as large as the parameters again (Adagrad) or
 * twice (Adam), and prediction, which loads the weights, never reads it.
 * Same conventions as the weights (little-endian, checksummed):
 *
 *   offset size
 *        0    4  magic "BSTS"
 *        4    4  u32 format version (1)
 *        8    4  u32 header size in bytes (96)
 *       12    8  u64 total blob size in bytes, checksum included
 *       20    4  u32 optimizer (0 Adagrad, 1 Adam, 2 AdamW)
 *       24    4  u32 slots (1 for Adagrad, 2 for Adam and AdamW)
 *       28    8  u64 floats per slot: the weights' parameter count
 *       36    8  u64 seed of the streams
 *       44    8  i64 optimizer updates made (>= 0)
 *       52    4  i32 epochs drawn from the shuffle stream (>= 0)
 *       56   32  u64 dropout stream state[4] (xoshiro256**, not all zero)
 *       88    4  u32 CRC-32 of the weights blob the state belongs to (its
 *                last 4 bytes), so that it never continues other weights
 *       92    4  reserved, 0
 *   header       f32 slot 0 [floats per slot], then slot 1, in the
 *                parameter slab's order (bst_param_tensors): Adagrad's
 *                accumulator (finite, > 0); Adam's first moment (finite)
 *                and second moment (finite, >= 0)
 *   size-4    4  u32 CRC-32 (zlib) of every preceding byte
 */
#define BST_STATE_FORMAT_VERSION 1
#define BST_STATE_HEADER_SIZE 96u

size_t bst_train_state_serialized_size(const BstTrainState *s);
/* buf must hold bst_train_state_serialized_size(s) bytes; weights is the
 * serialized model the state belongs to. */
void bst_train_state_serialize(const BstTrainState *s, const void *weights, size_t weights_len,
                               void *buf);
/*
 * The state in buf[0, len), validated as the weights are (never read past
 * its end), for the model m deserialized from weights[0, weights_len).
 * NULL and a message in err on failure ("truncated", "not an optimizer
 * state (bad magic)", "unsupported format version N", "checksum mismatch",
 * "inconsistent shapes ...", "it belongs to other weights", "invalid
 * state: ...", "out of memory").
 */
BstTrainState *bst_train_state_deserialize(const void *buf, size_t len, const BstModel *m,
                                           const void *weights, size_t weights_len, char *err,
                                           size_t errlen);

#endif

/*
 * Scoring many candidate targets for one history: what a recommendation
 * needs (every movie of the vocabulary as the target of a user's current
 * window), with the history's work done once instead of once per candidate.
 *
 * The scores are those of bst_predict for the windows "history + candidate"
 * (inference: no dropout, BatchNorm moving statistics, clipping), computed
 * in another order, so equal to them within float32 rounding rather than bit
 * for bit (test/c/test_recommend.c states and checks the tolerance).
 *
 * Why the history's work can be shared.  In a window the target is the last
 * position and the only one that changes with the candidate:
 *   - every history position's input x_i, hence its query, key and value
 *     rows q_i, k_i, v_i, are the same for every candidate;
 *   - the target's row e_T (its embedding, or Dense + ReLU over embedding
 *     and genres; no position embedding, no rating) depends on the
 *     candidate alone, not on the user, and so do its value through the
 *     output projection, v_T Wo_h = e_T (Wv_h Wo_h) + bv_h Wo_h, and its
 *     query's score against its own key: a per-movie table, computed once
 *     per model;
 *   - the other scores between the target and the history are linear in
 *     e_T: q_i . k_T = e_T . (Wk_h q_i) + bk_h . q_i, and q_T . k_j =
 *     e_T . (Wq_h k_j) + bq_h . k_j: one small product per candidate with
 *     a [d, 2 * history * H] matrix made once per history;
 *   - attention of a history query i, head h, over the valid keys (padding
 *     is masked out) is, with m_i the largest of its history scores,
 *         A_i = sum_{j in history} exp(s_ij - m_i) v_j,
 *         Z_i = sum_{j in history} exp(s_ij - m_i),
 *         ctx_i = (A_i + e_i v_T) / (Z_i + e_i),   e_i = exp(s_iT - m_i),
 *     where only the target key's score s_iT depends on the candidate; when
 *     s_iT > m_i both terms are rescaled by exp(m_i - s_iT) instead, so no
 *     exponent is ever positive.  The output projection is linear, so
 *         ctx_i Wo_h = (A_i Wo_h + e_i (v_T Wo_h)) / (Z_i + e_i),
 *     with A_i Wo_h once per history and v_T Wo_h from the table;
 *   - the target's own query attends over the history keys and its own
 *     key: a softmax over the shared v_j Wo_h and its own v_T Wo_h.
 * What follows attention (residual, LayerNorm, feed-forward, LayerNorm, the
 * MLP) is nonlinear per position and per candidate: computed for a chunk of
 * candidates at a time, the products on the core's fused kernels (infer.h;
 * sgemm on a CPU without FMA), padding positions skipped (bst_forward zeroes
 * them before the MLP and masks them as keys), and the user's embeddings'
 * share of the first MLP layer computed once per history.
 *
 * Memory, all allocated at creation (bst_alloc), nothing per history or per
 * call: a copy of the size of the model's fused attention projection
 * ([d, 3 * H * d]), one history's rows, the per-movie table when it fits
 * the table budget (else each chunk computes its candidates' share), and
 * buffers for a batch of candidates that fit BST_CANDIDATES_MEMORY_BUDGET
 * (at least one candidate), which the threads share in chunks.
 */
#ifndef BST_CANDIDATES_H
#define BST_CANDIDATES_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* Bytes the per-candidate buffers of a workspace may take: beyond a few
 * hundred candidates a larger batch buys nothing. */
#define BST_CANDIDATES_MEMORY_BUDGET ((size_t)16 << 20)
/* A table budget for a workspace kept beside a loaded model: the table
 * takes (H + 1) * d + H floats a movie with genres, H * d + H without
 * (ML-1M's Keras model: 3,884 movies, 2.9 MB; ML-100K's default: 1.4 MB);
 * 32 MB holds some 30,000 movies at d = 80 and 3 heads. */
#define BST_CANDIDATES_TABLE_BUDGET ((size_t)32 << 20)

typedef struct BstCandidates BstCandidates;

/* Buffer rows (candidates computed at once) of a workspace created with
 * max_batch for a valid config: max_batch, lowered to what fits
 * BST_CANDIDATES_MEMORY_BUDGET, but never below 1; 0 when max_batch < 1.
 * Threads take the candidates in chunks of min(64, batch / 4) (at least 1),
 * each chunk in rows of its own: batch / chunk threads at most. */
int32_t bst_candidates_batch_limit(const BstConfig *cfg, int32_t max_batch);
/* Bytes bst_candidates_create(m, max_batch, table_budget) allocates for a
 * model of config cfg; 0 when max_batch < 1. */
size_t bst_candidates_memory_bytes(const BstConfig *cfg, int32_t max_batch,
                                   size_t table_budget);

/*
 * A workspace for model m, which must outlive it and whose weights must not
 * change while it lives (what depends on the movie alone is computed here,
 * once).  The per-movie table is built when it takes at most table_budget
 * bytes.  NULL when max_batch < 1 or on allocation failure.
 */
BstCandidates *bst_candidates_create(const BstModel *m, int32_t max_batch,
                                     size_t table_budget);
/* Buffer rows: bst_candidates_batch_limit of the creation's. */
int32_t bst_candidates_batch(const BstCandidates *w);
/* 1 when the workspace holds the per-movie table, 0 when it exceeded the
 * budget. */
int bst_candidates_has_table(const BstCandidates *w);
void bst_candidates_free(BstCandidates *w);

/*
 * Sets the history that the next calls of bst_candidates_score score
 * candidates after, as bst_predict takes a window (BstBatch): movies
 * [seq_len] vocabulary indices, left-padded (the last, the target's slot, is
 * not read), ratings [seq_len - 1], hist_len history items (clamped to
 * 0..seq_len - 1 as bst_forward does), user the user's vocabulary index
 * (0: unknown).  Out-of-range indices read row 0, as in bst_forward.
 */
void bst_candidates_set_history(BstCandidates *w, const int32_t *movies, const float *ratings,
                                int32_t hist_len, int32_t user);

/*
 * out[c] = bst_predict's score of the window "history + candidates[c]"
 * (vocabulary indices; out of range reads row 0) for c < n; any n >= 0, in
 * one parallel region whose threads take chunks of the candidates until none
 * is left.  Each score is the same bits whatever the thread count.  -1
 * (nothing written) when no history was set, else 0.
 */
int bst_candidates_score(BstCandidates *w, const int32_t *candidates, int32_t n, float *out);

#endif

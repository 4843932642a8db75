/*
 * The floating-point work of the model, for benchmarks that compare a time
 * with what its arithmetic alone would take (scripts/bench_model.sh: an
 * epoch's FLOPs divided by the measured sgemm rate is its floor).  The one
 * place outside model.c that knows the shapes of the model's matrix
 * products; test/c/test_flops.c checks it against a hand count and against
 * the sgemm calls bst_forward and bst_backward actually make.
 *
 * What counts: every matrix product, as 2·m·n·k (one multiply and one add
 * per term of each output element):
 *   - the dense layers (bst_dense_layers): forward X·W; backward dY·Wᵀ (the
 *     input gradient, which bst_backward computes for every dense layer) and
 *     Xᵀ·dY (the weight gradient), so twice the forward;
 *   - attention's per-window products, per head: Q·Kᵀ and P·V forward
 *     (2·L·L·dk each); backward dP = dC·Vᵀ, dV = Pᵀ·dC, dQ = dS·K and
 *     dK = dSᵀ·Q, twice the forward;
 *   - the factor term's dot product: 2·k forward, 4·k backward (the
 *     gradients of both factor vectors).
 * Windows are counted at the model's full seq_len: they are padded to it,
 * and the dense layers and P·V run over the padding (a window of fewer
 * history items costs the same).
 * What does not count: every element-wise or per-row operation (embedding
 * gathers and scatters, the rating scaling and the position embedding, bias
 * adds, residuals, LayerNorm, BatchNorm, the activations, dropout, softmax,
 * the bias terms, the loss) and the optimizer's update.  They are O(size of
 * the activations) or O(parameters), bound by memory rather than by
 * arithmetic, and are what an epoch's time above its floor is spent on
 * (with synchronisation and copies).
 */
#ifndef BST_FLOPS_H
#define BST_FLOPS_H

#include <stdint.h>

#include "model.h"

/* The genre Dense, the fused query/key/value projection, the attention
 * output, the feed-forward Dense, the MLP and the output layer. */
#define BST_MAX_DENSE (5 + BST_MAX_HIDDEN)

/* A dense layer out[rows, out_dim] = in[rows, in_dim] · W (+ b), as
 * linear_forward and linear_backward (layers.h) compute it. */
typedef struct BstDense {
    char name[16];           /* its kernel's parameter tensor (bst_param_tensors) */
    int32_t rows;            /* rows per window: seq_len for the layers applied at
                              * every position, 1 for the MLP and the output */
    int32_t history_rows;    /* of those, rows that do not depend on the window's
                              * target: the history positions of the layers before
                              * attention (seq_len - 1), else 0 */
    int32_t in_dim, out_dim;
} BstDense;

/* The dense layers of a valid config in forward order; returns how many. */
int bst_dense_layers(const BstConfig *cfg, BstDense out[BST_MAX_DENSE]);

/* FLOPs per window of a valid config (as counted above). */
typedef struct BstFlops {
    double dense_forward;    /* sum over the dense layers of 2·rows·in_dim·out_dim */
    double attention_forward;/* heads · 2 products · 2·L·L·dk */
    double factor_forward;   /* 2·n_factors */
    double forward;          /* the three: one prediction */
    double backward;         /* twice each */
    double train;            /* forward + backward: one training window */
    double target_independent; /* the part of forward that is the same for every
                              * target of a history: the dense layers' history rows */
} BstFlops;

void bst_model_flops(const BstConfig *cfg, BstFlops *f);

/*
 * The sgemm FLOPs of a training batch's forward pass (its backward's are
 * twice these): the counted ones, except that training encodes and
 * projects n_distinct movies, each of the batch's distinct movies once (or
 * once in each window share it is in, BstActs.share_movies), instead of
 * every non-padding position (bst_forward), plus the positions' own
 * projections (L - 1 rows, one more with additive ratings); and that the
 * keys are folded into the queries and the output projection into the
 * values (layers.h, attention_fold_forward: per head, products of d x d by
 * d x d and of 1 x d by d x d per batch instead of the keys' third of the
 * fused projection and the output projection's product over the rows).
 * An epoch's floor counts
 * the model's FLOPs (bst_model_flops), so these savings are ways an epoch
 * comes closer to it.
 */
double bst_training_dense_flops(const BstConfig *cfg, int32_t batch, int32_t n_distinct);

/* FLOPs of scoring `candidates` targets after the same history (a
 * recommendation): the target-independent part once, the rest of the
 * forward pass per candidate.  0 for no candidate. */
double bst_recommend_flops(const BstConfig *cfg, int64_t candidates);

#endif

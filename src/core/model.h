/*
 * Behavior Sequence Transformer (Keras example
 * "movielens_recommendations_transformers"): configuration, parameters,
 * activations, forward and backward passes, prediction.
 */
#ifndef BST_MODEL_H
#define BST_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "rng.h"

#define BST_MAX_HIDDEN 8
/* Windows times positions in one batch: bounds the activation buffers that
 * grow with the sequence ... */
#define BST_MAX_BATCH_POSITIONS (1 << 24)
/* ... and windows times heads times positions squared those of attention
 * (probabilities and their dropout mask: 256 MB each at most). */
#define BST_MAX_ATTENTION_SCORES (1 << 26)
/* Bytes a predictor may allocate: it takes as many windows per pass as fit
 * in it (at least one, at most what its creator asked for).  A backend keeps
 * a predictor per loaded model, so this, not the caller's batch, bounds what
 * a model costs at rest; beyond a few hundred windows per pass a larger
 * batch buys nothing anyway. */
#define BST_PREDICTOR_MEMORY_BUDGET ((size_t)64 << 20)

/* Bytes a frozen predictor (bst_predictor_create_frozen) may spend on its
 * table of each movie's attention projections, 3 x heads x embed_dim floats
 * a movie: ML-1M's 3,884 movies at d = 62 take 8.7 MB, 23,000 movies at
 * d = 80 fill it.  A larger catalogue's model projects each window's rows
 * instead (a d x 3 x heads x d product a row: a window about a quarter
 * slower at ML-1M's shape), so that a loaded model never costs more than
 * this beyond its weights and buffers in a backend's cache. */
#define BST_PREDICTOR_TABLE_BUDGET ((size_t)64 << 20)

/* Bytes a frozen predictor, and a candidate workspace, may each spend on
 * copies of the feed-forward and MLP kernels with every row on a cache line
 * (infer.c: a load across two lines costs two, and one window's MLP streams
 * its kernels from L2): ML-1M's Keras model copies 385 kB.  A model whose
 * kernels exceed it, far beyond any L2 cache, is read where it lies. */
#define BST_KERNEL_COPY_BUDGET ((size_t)16 << 20)

/* Keeps every tensor (and the serialized model) below PostgreSQL's 1 GB
 * allocation and varlena limits. */
#define BST_MAX_PARAMS 200000000
/* Categorical user features besides the id: sex, age group, occupation. */
#define BST_N_USER_FEATS 3
#define BST_MAX_GENRES 64
#define BST_MAX_EMBED_DIM 4096
/* Longest window a model takes (and bst_sequences builds): far beyond any
 * useful model. */
#define BST_MAX_SEQ_LEN 1024
#define BST_MAX_HEADS 64
#define BST_MAX_HIDDEN_UNITS 65536
/* Distinct values of one categorical user feature (sex, age group, ...). */
#define BST_MAX_FEAT_VALUES 65536

typedef struct BstConfig {
    int32_t n_movies;     /* vocabulary size; embedding table has n_movies + 1 rows, row 0 = out-of-vocabulary */
    int32_t embed_dim;    /* d; bst_default_dim(n_movies) by default */
    int32_t seq_len;      /* L: L-1 history movies + 1 target movie */
    int32_t heads;        /* 3 */
    int32_t n_hidden;     /* 2 */
    int32_t hidden[BST_MAX_HIDDEN]; /* {256, 128} */
    float   dropout;      /* 0.1, used in attention-prob dropout, block dropouts and MLP dropouts */
    float   leaky_slope;  /* 0.3 (Keras LeakyReLU default) */
    float   ln_eps;       /* 1e-3 */
    float   bn_eps;       /* 1e-3 */
    float   bn_momentum;  /* 0.99 */
    /* Optional inputs (format 2; all 0 in a format-1 model, which is then
     * exactly the Keras example's network). */
    int32_t n_users;      /* user vocabulary; tables have n_users + 1 rows, row 0 = unknown user */
    int32_t user_dim;     /* user-id embedding width, 0: not an input */
    int32_t n_feat_values[BST_N_USER_FEATS]; /* distinct values of each user feature */
    int32_t feat_dim[BST_N_USER_FEATS];      /* its embedding width, 0: not an input */
    int32_t n_genres;     /* multi-hot genre vector merged into each movie embedding, 0: none */
    int32_t use_bias;     /* 1: global + user + target-movie bias added to the output */
    int32_t n_factors;    /* width of the user x target-movie factor term added to the
                           * output (biased matrix factorisation), 0: none */
    int32_t rating_add;   /* 1: a history rating adds rating * rating_w to its movie's
                           * vector; 0: scales it (Keras) */
    float   rating_min;   /* predictions (inference only) are clipped to */
    float   rating_max;   /* [rating_min, rating_max]; none when min >= max */
} BstConfig;

/*
 * The default width of an embedding over a vocabulary of n values: the Keras
 * example's floor(sqrt(n)) (at least 1), but at most BST_DEFAULT_DIM_MAX.
 * Uncapped, the width grows with the catalogue and a window's cost with its
 * square, so an epoch grew as ratings^1.37 on generated data from 100K to
 * 25M ratings (README, "Scale"); at a fixed width it grows linearly.  80
 * keeps the Keras rule exact up to 6,560 values, MovieLens-1M's 3,883 movies
 * (62) and 6,040 users (77) included.
 */
#define BST_DEFAULT_DIM_MAX 80
int32_t bst_default_dim(int64_t n);

/* Fills the Keras defaults (embed_dim = bst_default_dim(n_movies)). */
void bst_config_default(BstConfig *cfg, int32_t n_movies, int32_t seq_len);
/* NULL if valid, else a static human-readable message. */
const char *bst_config_check(const BstConfig *cfg);
/* Trainable parameter count of a valid config (no allocation needed). */
size_t bst_config_num_params(const BstConfig *cfg);

/*
 * Trainable parameters: named tensors pointing into one contiguous slab.
 * The same struct holds gradients and optimizer state.  movie_emb is always
 * first in the slab (the trainer relies on it to update the rest densely).
 * The query, key and value projections are fused into one matrix so that a
 * single sgemm computes all three in prediction (training folds them with
 * wo first: layers.h, attention_fold_forward):
 * wqkv[:, 0:H*dk] is the Keras query kernel (d, H, key_dim) flattened
 * row-major, then the key and the value kernels; likewise bqkv.  wo is the
 * output kernel (H, key_dim, d) flattened to [H*key_dim, d].
 */
typedef struct BstParams {
    float *movie_emb;                 /* [n_movies + 1, d] */
    float *pos_emb;                   /* [L - 1, d] */
    float *wqkv, *bqkv;               /* [d, 3*H*dk], [3*H*dk] */
    float *wo, *bo;                   /* [H*dk, d], [d] */
    float *ln1_g, *ln1_b;             /* [d] */
    float *ffn_w, *ffn_b;             /* [d, d], [d] */
    float *ln2_g, *ln2_b;             /* [d] */
    float *mlp_w[BST_MAX_HIDDEN];     /* [in, hidden[i]], in = L*d or hidden[i-1] */
    float *mlp_b[BST_MAX_HIDDEN];
    float *bn_g[BST_MAX_HIDDEN];
    float *bn_b[BST_MAX_HIDDEN];
    float *out_w, *out_b;             /* [hidden[last] (or mlp input), 1], [1] */
    float *user_emb;                  /* [n_users + 1, user_dim] */
    float *feat_emb[BST_N_USER_FEATS];/* [n_feat_values[k] + 1, feat_dim[k]] */
    float *genre_w, *genre_b;         /* [d + n_genres, d], [d]: Dense + ReLU */
    float *global_bias;               /* [1] */
    float *user_bias;                 /* [n_users + 1] */
    float *movie_bias;                /* [n_movies + 1] */
    float *user_factors;              /* [n_users + 1, n_factors] */
    float *movie_factors;             /* [n_movies + 1, n_factors] */
    float *rating_w;                  /* [d] when rating_add */
    float *slab;
    size_t size;                      /* floats in the slab */
} BstParams;

/* A view of one named tensor, for code that treats all of them alike
 * (optimizer, serializer, tests). */
#define BST_MAX_TENSORS (27 + 4 * BST_MAX_HIDDEN)
typedef struct BstTensor {
    char name[16];
    float *data;
    size_t size;
    int decay;            /* subject to AdamW's weight decay: kernels and embeddings */
} BstTensor;

/* Fills out[] in slab order (tensors of size 0 left out); returns the
 * number of tensors. */
int bst_param_tensors(const BstConfig *cfg, const BstParams *p, BstTensor out[BST_MAX_TENSORS]);
/* Allocates a zeroed slab shaped for cfg; 0 on success, -1 on allocation failure. */
int bst_params_alloc(BstParams *p, const BstConfig *cfg);
void bst_params_free(BstParams *p);
void bst_zero_grads(BstParams *grads);

/* BatchNorm moving statistics: state, not trained, serialized after the params. */
typedef struct BstBnStats {
    float *moving_mean[BST_MAX_HIDDEN];
    float *moving_var[BST_MAX_HIDDEN];
    float *slab;
    size_t size;
} BstBnStats;

/*
 * What prediction needs to know of the data a model was trained on, kept in
 * the weights (format 3) and not in the metrics, which people read and may
 * edit: the value to predict for a history shorter than any the model was
 * trained on, and that length.  A model loaded from format 1 or 2, or not
 * trained by bst_fit, does not know them.
 */
typedef struct BstTrainingFacts {
    int32_t known;        /* 1: the fields below hold; 0: unknown, and both 0 */
    float mean_target;    /* mean target of the training windows */
    int32_t min_history;  /* fewest history items of a training window, 0..seq_len - 1 */
} BstTrainingFacts;

typedef struct BstModel {
    BstConfig cfg;
    int32_t *movie_ids;   /* [n_movies], strictly ascending; index = position + 1 */
    int32_t *user_ids;    /* [n_users], strictly ascending; index = position + 1 */
    int32_t *user_feats;  /* [n_users + 1, BST_N_USER_FEATS] value index of each user's
                           * features (0 = unknown; row 0, the unknown user, all 0) */
    float *movie_genres;  /* [n_movies + 1, n_genres] multi-hot (row 0 all 0) */
    BstParams params;
    BstBnStats bn;
    BstTrainingFacts facts;
} BstModel;

/* What a model is built over, besides its config: the vocabularies and the
 * fixed (untrained) inputs looked up through them. */
typedef struct BstVocab {
    const int32_t *movie_ids;    /* [n_movies] strictly ascending */
    const int32_t *user_ids;     /* [n_users] strictly ascending; NULL when n_users = 0 */
    const int32_t *user_feats;   /* [n_users, BST_N_USER_FEATS] value indices in
                                  * 0..n_feat_values[k] (0 = unknown); NULL: all unknown */
    const float *movie_genres;   /* [n_movies, n_genres] 0/1; NULL: none */
} BstVocab;

/* Bytes bst_model_alloc (and so bst_model_create*, bst_model_deserialize)
 * allocates for a valid config. */
size_t bst_model_memory_bytes(const BstConfig *cfg);
/* NULL on bad config, unsorted vocabulary or allocation failure. */
BstModel *bst_model_create(const BstConfig *cfg, const int32_t *movie_ids, uint64_t seed);
BstModel *bst_model_create_vocab(const BstConfig *cfg, const BstVocab *vocab, uint64_t seed);
/* Parameters zeroed, moving statistics at their initial values, vocabulary
 * uninitialised: for the deserializer, which fills both.  NULL on bad config
 * or allocation failure. */
BstModel *bst_model_alloc(const BstConfig *cfg);
/*
 * A warm start's model: from's config and weights over the vocabularies of
 * vocab, which hold n_movies movies and n_users users, every one of from's
 * among them (fixed inputs, user features and genres, are vocab's).  Every
 * parameter row of a movie or user from knows, row 0 (out of vocabulary,
 * unknown user) and every other tensor are copied from from bit for bit,
 * with the BatchNorm moving statistics, the rating range and the training
 * facts; the rows of new movies and users are what bst_model_create_vocab
 * (seed) gives them for the grown config.  NULL and a static message in
 * *err when vocab drops one of from's ids, is not strictly ascending, or
 * on allocation failure.
 */
BstModel *bst_model_grow(const BstModel *from, int32_t n_movies, int32_t n_users,
                         const BstVocab *vocab, uint64_t seed, const char **err);
/* Copies a parameter-shaped array of model from (its parameters, or an
 * optimizer's per-parameter state) into that of model to, whose config is
 * from's with vocabularies that include from's (bst_model_grow): the rows
 * of movie and user tables to the rows of the same ids, every other tensor
 * whole; the rows of ids from lacks are left as they are. */
void bst_model_carry_params(const BstModel *to, float *to_slab, const BstModel *from,
                            const float *from_slab);
/* Copies the vocabularies and fixed inputs into a model of the same config:
 * NULL on success, else a static message (nothing is left half-checked for a
 * caller that then frees the model). */
const char *bst_model_set_vocab(BstModel *m, const BstVocab *vocab);
void bst_model_free(BstModel *m);
const BstConfig *bst_model_config(const BstModel *m);
/* NULL if facts suit a model of config cfg (known 0 or 1; when known, a
 * finite mean and 0 <= min_history < seq_len; when not, both 0), else a
 * static message. */
const char *bst_training_facts_check(const BstConfig *cfg, const BstTrainingFacts *facts);
/* Records the training facts (bst_fit does): NULL on success, else
 * bst_training_facts_check's message and the model unchanged. */
const char *bst_model_set_training_facts(BstModel *m, float mean_target, int32_t min_history);
/* 1 and the facts when the model knows them; 0, outputs untouched, when not
 * (loaded from format 1 or 2, or never fitted). */
int bst_model_training_facts(const BstModel *m, float *mean_target, int32_t *min_history);
/* Vocabulary index of movie_id (1..n_movies), 0 when out of vocabulary. */
int32_t bst_model_movie_index(const BstModel *m, int32_t movie_id);
/* Vocabulary index of user_id (1..n_users), 0 when unknown. */
int32_t bst_model_user_index(const BstModel *m, int32_t user_id);
/*
 * Lays out a window of n >= 1 movie ids (the last is the target) and their
 * n - 1 history ratings as the model takes it: movies [seq_len] as
 * vocabulary indices and ratings [seq_len - 1], left-padded with 0; a longer
 * window keeps its most recent history.  Returns the history length.
 */
int32_t bst_model_pack_window(const BstModel *m, const int32_t *movie_ids, const float *ratings,
                              int32_t n, int32_t *movies, float *window_ratings);
/* Width of the MLP input: the flattened sequence plus the user embeddings. */
int32_t bst_config_mlp_input(const BstConfig *cfg);
size_t bst_model_num_params(const BstModel *m);

typedef struct BstBatch {
    int32_t n;               /* windows */
    const int32_t *movies;   /* [n * L] vocabulary indices (already mapped), left-padded */
    const float *ratings;    /* [n * (L-1)] */
    const float *targets;    /* [n]; may be NULL for prediction */
    const int32_t *hist_len; /* [n] history items of each window (layers.h); NULL: all L-1 */
    const int32_t *users;    /* [n] user vocabulary indices; NULL: all unknown (0) */
} BstBatch;

/* What an activation instance is for, hence which buffers it holds. */
typedef enum BstActsKind {
    /* Training forward: every buffer, including what only the backward reads
     * (dropout masks, normalisation statistics). */
    BST_ACTS_TRAINING = 0,
    /* Gradients w.r.t. each activation: fields that have none (statistics,
     * masks, indices) are NULL. */
    BST_ACTS_GRADIENTS = 1,
    /* Inference forward: no masks and no statistics (NULL), and the output
     * of each dropout, the identity here, shares its input's buffer
     * (res1 = attn, res2 = ffn, drop[i] = act[i]).  Every buffer is per
     * window: the slab is max_batch times that of one window. */
    BST_ACTS_INFERENCE = 2,
} BstActsKind;

/* The most window shares a training step's regions split a batch into,
 * whatever the thread count (model.c, window_shares). */
#define BST_WINDOW_SHARES_MAX 8

/*
 * Activations for up to max_batch windows, laid out for one BstActsKind
 * (a training forward and its gradients are two instances).  Shapes use
 * N = max_batch, dk = key_dim = d.
 */
typedef struct BstActs {
    int32_t max_batch;
    BstActsKind kind;
    float *gin;                       /* [N, L, d + n_genres] movie embedding | genres (forward) */
    float *gpre;                      /* [N, L, d] genre Dense, before its ReLU (forward) */
    float *enc;                       /* [N, L, d] encoded movies */
    float *x;                         /* [N, L, d] sequence input (forward) */
    float *qkv;                       /* [N, L, 3*H*dk] rows [q | k | v]; training's folded,
                                       * [N, L, 2*H*dk]: [x Wq Wk^T + bq Wk^T | x Wv Wo + bv Wo]
                                       * (the keys are x's rows) */
    float *probs;                     /* [N, H, L, L] softmax (grads: scratch) */
    float *probs_mask;                /* [N, H, L, L] attention dropout factors (training) */
    float *ctx;                       /* [N, L, H*dk] (forward; training's in the output's space) */
    float *attn;                      /* [N, L, d] attention output projection (training: the
                                       * heads' contexts summed, plus bo) */
    float *attn_mask;                 /* [N, L, d] (training) */
    float *res1;                      /* [N, L, d] x + dropout(attn) */
    float *x1;                        /* [N, L, d] layernorm 1 */
    float *ln1_mean, *ln1_rstd;       /* [N, L] (training) */
    float *ffn_in;                    /* [N, L, d] leaky_relu(x1) */
    float *ffn;                       /* [N, L, d] */
    float *ffn_mask;                  /* [N, L, d] (training) */
    float *res2;                      /* [N, L, d] x1 + dropout(ffn) */
    float *y;                         /* [N, L*d] layernorm 2, flattened */
    float *ln2_mean, *ln2_rstd;       /* [N, L] (training) */
    float *mlp_in;                    /* [N, mlp input] y (padding zeroed) | user embeddings */
    float *h[BST_MAX_HIDDEN];         /* [N, hidden[i]] dense */
    float *bn_mean[BST_MAX_HIDDEN];   /* [hidden[i]] batch statistics (training) */
    float *bn_var[BST_MAX_HIDDEN];
    /* [shares, hidden[i]] (training) each share's mean and sum of squared
     * deviations, which make bn_mean and bn_var (model.c, mlp_share_forward) */
    float *bn_share_mean[BST_MAX_HIDDEN], *bn_share_m2[BST_MAX_HIDDEN];
    /* [shares, hidden[i]] (gradients) each share's sums of the gradient of
     * bn[i] and of it times the normalised h[i] (share 0's: the batch's
     * once added up; model.c, mlp_share_backward) */
    float *bn_share_sum_g[BST_MAX_HIDDEN], *bn_share_sum_gx[BST_MAX_HIDDEN];
    float *bn[BST_MAX_HIDDEN];        /* [N, hidden[i]] batchnorm */
    float *act[BST_MAX_HIDDEN];       /* [N, hidden[i]] leaky_relu */
    float *drop_mask[BST_MAX_HIDDEN]; /* [N, hidden[i]] (training) */
    float *drop[BST_MAX_HIDDEN];      /* [N, hidden[i]] dropout, input of the next dense */
    float *pred;                      /* [N] */
    /* Indices of the last forward (forward instances only). */
    int32_t *user_idx;                /* [N] user vocabulary index */
    int32_t *feat_idx;                /* [BST_N_USER_FEATS, N] user feature value indices */
    int32_t *target_idx;              /* [N] target movie index */
    /* Training: the batch's distinct movies, or with share_movies each
     * window share's, each encoded and projected once (model.c,
     * bst_forward).  A share's lists start at its first row (w0 L; its
     * rows_start at that row plus its share index), its slots and rows
     * count within it.  n_distinct: the movies encoded, over the shares.
     * Gradient instances hold the gradients of uenc (ugin, ugpre), uqv
     * and pqv, and dpos. */
    int32_t n_distinct;
    int32_t *slot;                    /* [N, L] a position's distinct movie; -1: padding */
    int32_t *distinct;                /* [N*L] their vocabulary indices, first seen first */
    int32_t *rows_start, *rows;       /* [N*L + BST_WINDOW_SHARES_MAX + 1], [N*L] each one's
                                       * positions, in order */
    int32_t *slot_of_movie;           /* [n_movies + 1] scratch for each share (one without
                                       * share_movies), all -1 between batches */
    float *ugin, *ugpre, *uenc;       /* [N*L, d + n_genres], [N*L, d], [N*L, d] */
    float *uqv;                       /* [N*L, 2*H*dk] uenc times fold_w */
    float *pqv;                       /* [L, 2*H*dk] pos_emb (rows < L-1), rating_w, alike */
    float *dpos;                      /* [L, d] (gradients) pqv's gradient back through it */
    /* Training's fused projection with the keys folded into the queries
     * and the output projection into the values (layers.h,
     * attention_fold_forward), which uqv and pqv are products of;
     * gradient instances: its gradients. */
    float *fold_w;                    /* [d, 2*H*dk] */
    float *fold_b;                    /* [2*H*dk] */
    /* Training's window shares (model.c, window_shares): at most this
     * many; 0 when their sums of the transformer block's parameter
     * gradients do not fit (then at most BST_WINDOW_SHARES_MAX shares, summed
     * over every row after the region); gradient instances: those sums,
     * one per share, NULL when 0. */
    int32_t window_shares;
    float *share_grads;
    /* Training and gradient instances: whether each window share encodes
     * and projects its own windows' distinct movies (model.c,
     * share_movies_forward), and takes its shares of the MLP's and the
     * fold's parameter gradients, which the step's partial sums decide
     * (model.c, step_sums_fit); else the batch's distinct movies, the MLP
     * layer by layer. */
    int32_t share_movies;
    /* Training instances: the forward's movie shares, each one's windows
     * [w0, w1) and distinct movies (its lists start at row w0 * seq_len of
     * distinct, rows, uenc, uqv and the rest, its rows_start at that row
     * plus its share index).  Gradient instances: which shares the
     * backward's region ran (movie_share_done). */
    int32_t movie_shares;
    int32_t movie_share_w0[BST_WINDOW_SHARES_MAX], movie_share_w1[BST_WINDOW_SHARES_MAX];
    int32_t movie_share_n[BST_WINDOW_SHARES_MAX];
    int32_t movie_share_done[BST_WINDOW_SHARES_MAX];
    /* Gradient instances: shares 1.. own sums of the MLP's parameter
     * gradients and of the fold's (share 0 sums into the gradients), NULL
     * unless share_movies (model.c, mlp_share_floats, fold_share_floats) */
    float *mlp_share_grads;
    float *movie_share_grads;
    float *slab;
} BstActs;

/* The windows per pass of a workspace whose buffers take per_window bytes a
 * window: max_batch (>= 1), lowered to what fits budget bytes and to
 * BST_MAX_BATCH_POSITIONS positions of seq_len, but never below 1.  Shared
 * by the predictors and the candidate workspace. */
int32_t bst_windows_within(size_t budget, size_t per_window, int32_t seq_len, int32_t max_batch);

/* The largest batch, at most `batch`, whose attention buffers fit
 * BST_MAX_ATTENTION_SCORES; 0 when not even one window's does. */
int32_t bst_attention_batch_limit(const BstConfig *cfg, int32_t batch);

/* Bytes bst_acts_alloc allocates for this config, batch and kind. */
size_t bst_acts_memory_bytes(const BstConfig *cfg, int32_t max_batch, BstActsKind kind);
/* 0 on success, -1 on bad max_batch or kind, or allocation failure. */
int bst_acts_alloc(BstActs *a, const BstConfig *cfg, int32_t max_batch, BstActsKind kind);
void bst_acts_free(BstActs *a);

/*
 * Forward pass over b (b->n <= a->max_batch); predictions land in a->pred.
 * training = 0: inference (no dropout, BatchNorm moving statistics).
 * training = 1: BatchNorm batch statistics; dropout drawn from rng, or
 *               disabled when rng is NULL (deterministic, for gradient checks).
 *               a must be a BST_ACTS_TRAINING instance.
 * Does not update the moving statistics (see bst_update_bn_moving).
 * Returns the mean squared error if b->targets is set, else 0; NaN (and
 * nothing computed) unless 1 <= b->n <= a->max_batch and a's kind fits.
 */
float bst_forward(const BstModel *m, BstActs *a, const BstBatch *b, int training, BstRng *rng);
/* Moving-statistics update for a training-mode forward held in a. */
void bst_update_bn_moving(BstModel *m, const BstActs *a);
/* Backward of the last training-mode forward of the MSE loss: accumulates
 * into grads (zero them first), using da as gradient buffers: a
 * BST_ACTS_GRADIENTS instance of a's max_batch, whose shares' sums match
 * a's shares (else nothing is computed, and grads are left as they
 * were). */
void bst_backward(const BstModel *m, const BstActs *a, BstActs *da, BstParams *grads,
                  const BstBatch *b);
/* Tests: training's transformer block runs its windows in blocks of this
 * many (rounded up to even; 0: the default, 32).  Any size gives the same
 * dropout masks, and values within rounding (model.c, WINDOW_BLOCK). */
void bst_set_window_block(int windows);

/* Prediction workspace: inference activations (BST_ACTS_INFERENCE) for
 * bst_predictor_batch_limit(cfg, max_batch) windows.  Batches of a few
 * windows run on the calling thread alone; larger ones are split across the
 * core's threads (parallel.h). */
typedef struct BstPredictor BstPredictor;
/* The windows per pass of a predictor created with max_batch for a valid
 * config: max_batch, lowered to what fits BST_PREDICTOR_MEMORY_BUDGET, but
 * never below 1 (a model whose single window exceeds the budget still
 * predicts); 0 when max_batch < 1. */
int32_t bst_predictor_batch_limit(const BstConfig *cfg, int32_t max_batch);
/* Bytes bst_predictor_create(m, max_batch) allocates for a model of config
 * cfg: at most BST_PREDICTOR_MEMORY_BUDGET unless one window alone exceeds
 * it; 0 when max_batch < 1. */
size_t bst_predictor_memory_bytes(const BstConfig *cfg, int32_t max_batch);
/* NULL when max_batch < 1 or on allocation failure. */
BstPredictor *bst_predictor_create(const BstModel *m, int32_t max_batch);
/*
 * A predictor for a model whose weights will not change while it lives (a
 * loaded model; not one being trained): it computes once what depends on a
 * movie alone, each movie's query, key and output-projected value (a table,
 * when it fits table_budget: BST_PREDICTOR_TABLE_BUDGET in the extension),
 * and scores each window with kernels that read the weights in place
 * (src/core/infer.c).  Its predictions agree with bst_predictor_create's
 * within float rounding (test_train.c: 1e-4 relative, measured ~1e-6), and
 * a window's prediction is the same bits alone, in any batch, on any number
 * of threads and on AVX-512 and AVX2 CPUs alike.  Where the CPU lacks the
 * fused multiply-add, it is a bst_predictor_create predictor.  NULL when
 * max_batch < 1 or on allocation failure.
 */
BstPredictor *bst_predictor_create_frozen(const BstModel *m, int32_t max_batch,
                                          size_t table_budget);
/* Bytes bst_predictor_create_frozen(m, max_batch, table_budget) allocates for
 * a model of config cfg: the per-window buffers within
 * BST_PREDICTOR_MEMORY_BUDGET, the table within table_budget, the rest a few
 * products of the attention weights; 0 when max_batch < 1. */
size_t bst_predictor_frozen_memory_bytes(const BstConfig *cfg, int32_t max_batch,
                                         size_t table_budget);
/* How a predictor computes. */
typedef enum BstPredictorPath {
    BST_PREDICTOR_SGEMM = 0,  /* bst_forward over mini-batches */
    BST_PREDICTOR_TABLE = 1,  /* frozen, with the per-movie table */
    BST_PREDICTOR_DIRECT = 2, /* frozen, table over budget: rows projected per window */
} BstPredictorPath;
BstPredictorPath bst_predictor_path(const BstPredictor *p);
/* Windows per forward pass: bst_predictor_batch_limit of the creation's. */
int32_t bst_predictor_batch(const BstPredictor *p);
/* Any b->n >= 0: larger batches are processed in chunks of
 * bst_predictor_batch(p) windows. */
void bst_predict(BstPredictor *p, const BstBatch *b, float *out /* [n] */);
void bst_predictor_free(BstPredictor *p);

/* bst_predict for one window (b->n = 1, else -1), also copying where the
 * target looks: each head's attention weights of the target's query over
 * the window's positions (padding gets 0), attention[h * L + position]. */
int bst_predict_attention(BstPredictor *p, const BstBatch *b, float *out, float *attention /* [H * L] */);

#endif

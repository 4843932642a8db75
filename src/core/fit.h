/*
 * The training loop: a validation split carved from the data, epochs of
 * shuffled mini-batches, a learning-rate schedule, per-epoch validation and
 * early stopping that keeps the best epoch's weights.  The extension and the
 * C tests both run this loop; the host only reads the data and reports.
 */
#ifndef BST_FIT_H
#define BST_FIT_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "spill.h"
#include "trainer.h"

/* A data set of windows, already mapped to vocabulary indices and padded to
 * the model's seq_len (model.h, layers.h). */
typedef struct BstData {
    int64_t n;
    int32_t seq_len;
    int32_t *movies;      /* [n * L] */
    float *ratings;       /* [n * (L-1)] */
    int32_t *hist_len;    /* [n] */
    int32_t *users;       /* [n] user vocabulary indices (0: unknown) */
    float *targets;       /* [n] */
    /* Non-NULL: the n windows are in a temporary file (spill.h), the arrays
     * unused; a training then holds a bucket of them at a time. */
    const BstSpill *spill;
} BstData;

/*
 * Building a data set while its windows are read, before the model exists:
 * the core lays the windows out (as bst_model_pack_window does) and the host
 * owns the memory and how it grows.  Movie and user ids are stored as read and
 * mapped to the model's vocabulary indices in place once it exists, so the
 * windows are never held twice.
 */

/* Bytes of the arrays of n windows of seq_len: what a data set of capacity n
 * holds (bst_data_resize), and what a training on n windows keeps for them
 * through the fit.  SIZE_MAX when that overflows. */
size_t bst_data_memory_bytes(int64_t n, int32_t seq_len);

/* The host's realloc: ptr NULL allocates; a pointer even for size 0 (as
 * palloc gives), NULL only on failure; arg passed through. */
typedef void *(*BstResizeFn)(void *ptr, size_t size, void *arg);

/*
 * Gives d's five arrays room for exactly capacity windows (>= d->n) of
 * seq_len (>= 1), through resize: bst_data_memory_bytes(capacity, seq_len)
 * in all.  A zeroed BstData is an empty data set.  The d->n windows kept are
 * laid out again, in place, for a new seq_len, with more or less left
 * padding: every window's history must fit both lengths (hist_len <
 * min(seq_len, d->seq_len)).  0, or -1 when resize failed or the sizes
 * overflow; d then still holds its windows, in arrays of the old or the new
 * size, and may be resized again or freed.
 */
int bst_data_resize(BstData *d, int64_t capacity, int32_t seq_len, BstResizeFn resize,
                    void *arg);

/* Lays the d->n windows of d out again for seq_len positions, in place, in
 * arrays with room for them at both lengths; as bst_data_resize does. */
void bst_data_relayout(BstData *d, int32_t seq_len);

/* Lays out window w of d (below its capacity) from n >= 1 movie ids, the last
 * the target, and their n ratings, the last the label, exactly as
 * bst_model_pack_window does but with the ids unmapped; user_id as given.
 * Returns its history length.  d->n is the caller's to count. */
int32_t bst_data_set_window(BstData *d, int64_t w, const int32_t *movie_ids,
                            const float *ratings, int32_t n, int32_t user_id);

/* Maps the ids of windows [from, to) of d, laid out by bst_data_set_window,
 * to m's vocabulary indices in place (an unknown id: 0; padding stays 0), the
 * users too when map_users, else every user becomes 0: then the windows are
 * what bst_model_pack_window and bst_model_user_index would have made. */
void bst_data_map_ids(BstData *d, const BstModel *m, int64_t from, int64_t to,
                      int map_users);

typedef enum { BST_LR_CONSTANT = 0, BST_LR_COSINE = 1 } BstLrSchedule;

/* Ridge terms of the closed-form bias fit (Koren's baseline estimates):
 * a movie or user with few ratings keeps a bias near 0. */
#define BST_BIAS_INIT_MOVIE_REG 10.0
#define BST_BIAS_INIT_USER_REG 15.0
#define BST_BIAS_INIT_ROUNDS 3
#define BST_MAX_EPOCHS 10000
/* Largest validation fraction: beyond it, validation starves training. */
#define BST_MAX_VALIDATION_FRACTION 0.5f

typedef struct BstFitOptions {
    BstTrainOptions train;
    int32_t epochs;              /* at most this many */
    BstLrSchedule lr_schedule;   /* cosine: from the learning rate to 0 over `epochs` */
    float validation_fraction;   /* of the windows, held out from training; 0: none */
    int32_t patience;            /* stop after this many epochs without a better
                                  * validation MAE, keeping the best; 0: never */
    int bias_init;               /* start the bias terms from the closed-form fit */
    int zero_output;             /* start the output layer at zero */
    int clip;                    /* clip predictions to the training targets' range */
} BstFitOptions;

/* NULL if valid, else a static message. */
const char *bst_fit_options_check(const BstFitOptions *o);

typedef struct BstEpochStats {
    int32_t epoch;               /* 1-based */
    double loss, mae;            /* training windows, during the epoch (dropout on) */
    double val_mae, val_rmse;    /* validation windows after the epoch; NAN without */
    double learning_rate;        /* at the epoch's last step */
    double seconds;
    int best;                    /* the lowest validation MAE so far (always 1 without validation) */
} BstEpochStats;

typedef struct BstFitHooks {
    /* Before every batch: a host may abort here (PostgreSQL's cancel longjmps
     * out; every buffer is in a memory context it frees), or report progress.
     * running_loss: the mean training loss of the epoch's batches so far
     * (NAN before the first, and when evaluating: epoch 0). */
    void (*before_batch)(void *arg, int32_t epoch, int64_t batch, int64_t n_batches,
                         double running_loss);
    void (*after_epoch)(void *arg, const BstEpochStats *s);
    void *arg;
} BstFitHooks;

typedef struct BstFitResult {
    int64_t n_train, n_val;
    int32_t epochs_run;
    int32_t best_epoch;          /* whose weights the model holds: the best by validation
                                  * MAE with early stopping, else the last */
    double train_mean;           /* mean training target */
    BstEpochStats best;          /* that epoch's figures */
} BstFitResult;

typedef enum {
    BST_FIT_OK = 0,
    BST_FIT_BAD_INPUT,           /* options, data not shaped for the model, or a
                                  * non-finite target */
    BST_FIT_NO_MEMORY,
    BST_FIT_DIVERGED,            /* the loss, or the validation error, became infinite or NaN */
    BST_FIT_IO_ERROR,            /* a spilled data set's file failed, or held other windows */
} BstFitStatus;

/*
 * The most bytes bst_fit allocates at once (through bst_alloc, all freed on
 * return) training a model of config cfg on n_windows windows with options
 * o: batch buffers, window order, best-epoch snapshot, gradients, optimizer
 * state, training activations and their gradients, validation predictor.
 * Not counted: the model itself (bst_model_memory_bytes) and the data
 * (bst_data_memory_bytes).
 * cfg and o must be valid (bst_config_check, bst_fit_options_check).
 */
size_t bst_fit_memory_bytes(const BstConfig *cfg, const BstFitOptions *o, int64_t n_windows);

/* Trains m in place and records its training facts (model.h) from the
 * training windows, the validation windows left out: their mean target
 * (result->train_mean, as a float) and their fewest history items (hist_len
 * as the forward reads it, clamped to 0..seq_len-1).  On BST_FIT_DIVERGED,
 * result->epochs_run is the epoch that diverged.  hooks may be NULL. */
BstFitStatus bst_fit(BstModel *m, const BstData *data, const BstFitOptions *o,
                     const BstFitHooks *hooks, BstFitResult *result);

/*
 * bst_fit, continued from a saved state (a warm start) and keeping the
 * state it ends in; bst_fit is bst_fit_continue(m, data, o, NULL, NULL, ...).
 *
 * from (NULL: a fresh start) must be of o's optimizer and shaped for m
 * (grown with the model: bst_train_state_grow), else BST_FIT_BAD_INPUT.
 * From it the model's weights continue as they are: no bias start, no zeroed
 * output layer.  The validation split is drawn from the seed as in any
 * training.  When from->seed is o's seed, the shuffle stream is replayed
 * past from->epochs (O(epochs x windows), hooks->before_batch called per
 * replayed epoch with epoch 0) and the dropout stream resumed where it
 * stood, so that on the same data two trainings of n and k epochs give the
 * weights of one of n + k; another seed starts both streams afresh.  The
 * optimizer's update count always continues (Adam's bias correction).  The
 * cosine schedule restarts: from the learning rate to 0 over this call's
 * epochs (a warm restart), since the stored training's ran down to 0.
 * Training facts and the clipping range cover both trainings: the fewest
 * history items of either, the range of both; the mean target is this
 * call's.
 *
 * kept (NULL: not kept): on BST_FIT_OK, *kept is the state of the kept
 * epoch (the one whose weights m holds), epochs counting from->epochs when
 * the streams continued; free it with bst_train_state_free.
 */
BstFitStatus bst_fit_continue(BstModel *m, const BstData *data, const BstFitOptions *o,
                              const BstTrainState *from, BstTrainState **kept,
                              const BstFitHooks *hooks, BstFitResult *result);

/* bst_fit_memory_bytes of bst_fit_continue, keep_state saying whether it
 * keeps the state (which then, held until freed, is counted). */
size_t bst_fit_continue_memory_bytes(const BstConfig *cfg, const BstFitOptions *o,
                                     int64_t n_windows, int keep_state);

/*
 * The same for n_windows spilled windows (BstData.spill) trained on in
 * buckets of bucket_windows: the bucket and its order instead of the data's
 * order, and one chunk (BST_SPILL_CHUNK_WINDOWS) for each file read or
 * written at once: the buckets' while scattering them.  Not counted: the
 * host's own buffers of its files.  SIZE_MAX when bucket_windows is not a
 * positive multiple of the batch size.
 */
size_t bst_fit_stream_memory_bytes(const BstConfig *cfg, const BstFitOptions *o,
                                   int64_t n_windows, int64_t bucket_windows, int keep_state);

/* The bucket_windows of the fewest buckets with which
 * bst_fit_stream_memory_bytes stays within budget bytes: each bucket the
 * training windows' share, rounded up to a batch; 0 when none does. */
int64_t bst_fit_bucket_windows(const BstConfig *cfg, const BstFitOptions *o, int64_t n_windows,
                               int keep_state, size_t budget);

/* Mean absolute and root mean squared error of m over data (inference mode);
 * hooks->before_batch (epoch 0) runs before every chunk.  -1 on bad input or
 * allocation failure. */
int bst_evaluate_data(const BstModel *m, const BstData *data, const BstFitHooks *hooks,
                      double *mae, double *rmse);

#endif

/*
 * Mini-batch training of a BstModel: owns gradients, optimizer state,
 * activations for one batch and the dropout generator, all allocated once.
 * Steps run on bst_get_num_threads() threads (parallel.h).  For a given
 * thread count the trained weights are a function of the seed; across
 * thread counts they may differ in the last bits (BLAS blocking, see
 * parallel.h).
 */
#ifndef BST_TRAINER_H
#define BST_TRAINER_H

#include "model.h"
#include "optimizer.h"

typedef struct BstTrainOptions {
    BstOptimizerKind optimizer;
    float learning_rate;     /* initial; see bst_trainer_set_learning_rate */
    int32_t batch_size;
    uint64_t seed;           /* dropout masks */
    float weight_decay;      /* AdamW only; per unit of learning rate */
} BstTrainOptions;

/* Keras example defaults: Adagrad, learning rate 0.01, batch size 265. */
void bst_train_options_default(BstTrainOptions *o);
/* NULL if valid, else a static human-readable message. */
const char *bst_train_options_check(const BstTrainOptions *o);

/*
 * What a training continues from besides the model's weights (a warm
 * start): the optimizer's per-parameter state, laid out as the parameter
 * slab (Adagrad's accumulator; Adam's first and second moments), its update
 * count (Adam's bias correction), where the dropout stream stands, and,
 * kept by bst_fit_continue (fit.h), how many epochs the shuffle stream has
 * drawn.  Both streams are the seed's: the state says which seed, so that
 * a training with another seed starts them afresh instead.
 */
typedef struct BstTrainState {
    BstOptimizerKind optimizer;
    uint64_t seed;           /* of the dropout and shuffle streams */
    int64_t step;            /* optimizer updates made, whatever the seed */
    int32_t epochs;          /* epochs shuffled from seed's shuffle stream */
    BstRng dropout_rng;      /* seed's dropout stream after the last update */
    size_t size;             /* floats per slot: the model's parameter count */
    float *slot[2];          /* Adagrad: accumulator; Adam: first, second moment */
} BstTrainState;

/* Per-parameter slots of an optimizer's state: 1 for Adagrad, 2 for Adam(W);
 * 0 for an unknown kind. */
int bst_optimizer_slots(BstOptimizerKind kind);
/* Bytes bst_train_state_create allocates for a model of config cfg. */
size_t bst_train_state_memory_bytes(const BstConfig *cfg, BstOptimizerKind kind);
/* The state a fresh training starts from: slots at the optimizer's initial
 * values, no step, no epoch, seed's streams at their start.  NULL for an
 * unknown optimizer or on allocation failure. */
BstTrainState *bst_train_state_create(const BstConfig *cfg, BstOptimizerKind kind,
                                      uint64_t seed);
void bst_train_state_free(BstTrainState *s);
/* The state of model from carried to model to, from's vocabularies grown
 * (bst_model_grow): slots copied as bst_model_carry_params copies the
 * parameters, the rows of new movies and users at the optimizer's initial
 * values, counters and streams unchanged.  NULL if s is not shaped for
 * from, or on allocation failure. */
BstTrainState *bst_train_state_grow(const BstTrainState *s, const BstModel *from,
                                    const BstModel *to);

typedef struct BstTrainer BstTrainer;
/* Bytes bst_trainer_create allocates for a model of config cfg (gradients,
 * optimizer state, training activations and their gradients); cfg and o
 * valid. */
size_t bst_trainer_memory_bytes(const BstConfig *cfg, const BstTrainOptions *o);
/* NULL on invalid options or allocation failure.  The model must outlive the trainer. */
BstTrainer *bst_trainer_create(BstModel *m, const BstTrainOptions *o);
/*
 * One forward + backward + update on b (1 <= b->n <= batch_size, targets set).
 * Returns the batch's mean squared error before the update (NaN if b is
 * invalid); adds sum |pred - target| to *abs_err_sum if not NULL.
 */
float bst_train_step(BstTrainer *t, const BstBatch *b, double *abs_err_sum);
void bst_trainer_free(BstTrainer *t);
/* Whether every gradient is zero, as it is between any two steps: each
 * update clears the gradient it consumed (for the tests). */
int bst_trainer_grads_clear(const BstTrainer *t);
/* Tests: 0 makes the trainers created after it update every row of Adam's
 * tables at every step, reading every row's gradient from the slab;
 * 1 (the default) updates the rows a batch leaves alone only when a later
 * batch reads them, or at bst_trainer_sync.  The same bits either way. */
void bst_trainer_set_sparse_adam(int on);
/* The steps a row can be left behind: when the history of steps is full,
 * the trainer syncs every row (bst_trainer_sync) and starts it again. */
#define BST_ADAM_HISTORY_STEPS 4096
/* Tables whose rows are narrower than this many floats are updated whole
 * at every step. */
#define BST_ADAM_DEFER_MIN_WIDTH 16
/* Brings every row of the model that Adam's steps left behind up to date
 * (see bst_trainer_set_sparse_adam): after it, the model's weights are
 * those of every step so far.  Before anything but bst_train_step reads
 * the model; bst_trainer_copy_state, _give_state and _set_state sync
 * themselves. */
void bst_trainer_sync(BstTrainer *t);
/* The learning rate of the following steps (a schedule's current value). */
void bst_trainer_set_learning_rate(BstTrainer *t, float lr);
/*
 * Continue from s: its slots and update count; its dropout stream too when
 * s->seed is the trainer's seed (another seed keeps the trainer's own,
 * fresh stream).  0, or -1 (nothing changed) when s is of another optimizer
 * or shape, or the trainer has given its state away.
 */
int bst_trainer_set_state(BstTrainer *t, const BstTrainState *s);
/* Copies the trainer's state into s (of the same optimizer and shape; its
 * epochs left as they are): 0, or -1 as bst_trainer_set_state. */
int bst_trainer_copy_state(BstTrainer *t, BstTrainState *s);
/* Moves the trainer's slots into s (whose slots must be NULL), without a
 * copy, and fills its counters as bst_trainer_copy_state; the trainer
 * steps no more (bst_train_step returns NaN).  0, or -1 when already
 * given. */
int bst_trainer_give_state(BstTrainer *t, BstTrainState *s);

#endif

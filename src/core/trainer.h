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
/* The learning rate of the following steps (a schedule's current value). */
void bst_trainer_set_learning_rate(BstTrainer *t, float lr);

#endif

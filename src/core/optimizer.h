/*
 * Keras optimizers as element-wise updates over float ranges.  They work on
 * ranges rather than tensors so the trainer can update only the embedding
 * rows a batch touched where that is exact (Adagrad).
 */
#ifndef BST_OPTIMIZER_H
#define BST_OPTIMIZER_H

#include <stddef.h>
#include <stdint.h>

typedef enum { BST_OPT_ADAGRAD = 0, BST_OPT_ADAM = 1, BST_OPT_ADAMW = 2 } BstOptimizerKind;

#define BST_ADAGRAD_INITIAL_ACCUMULATOR 0.1f
#define BST_ADAM_BETA1 0.9
#define BST_ADAM_BETA2 0.999
#define BST_OPT_EPSILON 1e-7f

/* acc += g^2;  w -= lr * g / (sqrt(acc) + eps).  A zero gradient leaves both
 * w and acc unchanged, which makes sparse row updates exact. */
void bst_adagrad_update(float *w, float *acc, const float *g, size_t n, float lr);

/* Step size of Adam step t (1-based) with Keras' bias correction folded in:
 * lr * sqrt(1 - beta2^t) / (1 - beta1^t). */
float bst_adam_step_size(float lr, int64_t t);
/* m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 * w -= decay * w + step * m / (sqrt(v) + eps).
 * decay = learning rate * weight decay gives AdamW (decoupled weight decay,
 * Loshchilov & Hutter); 0 gives Adam. */
void bst_adam_update(float *w, float *m, float *v, const float *g, size_t n, float step,
                     float decay);
/* k steps of bst_adam_update with a zero gradient, the same bits: step s
 * (0-based) with step size steps[s] and decay lrs[s] * weight_decay (0 for
 * plain Adam, as the trainer computes the decay).  For rows that the
 * trainer left alone for k steps and brings up to date at once. */
void bst_adam_replay(float *w, float *m, float *v, size_t n, const float *steps,
                     const float *lrs, float weight_decay, int k);

#endif

#include "optimizer.h"

#include <math.h>

#include "simd.h"
#include "vec16.h"

BST_SIMD_INLINE void adagrad_update_generic(float *w, float *acc, const float *g, size_t n,
                                            float lr)
{
    for (size_t i = 0; i < n; i++) {
        float a = acc[i] + g[i] * g[i];
        acc[i] = a;
        w[i] -= lr * g[i] / (sqrtf(a) + BST_OPT_EPSILON);
    }
}
BST_SIMD_DISPATCH(adagrad_update, (float *w, float *acc, const float *g, size_t n, float lr),
                  (w, acc, g, n, lr))

void bst_adagrad_update(float *w, float *acc, const float *g, size_t n, float lr)
{
    adagrad_update(w, acc, g, n, lr);
}

float bst_adam_step_size(float lr, int64_t t)
{
    double b1t = pow(BST_ADAM_BETA1, (double)t), b2t = pow(BST_ADAM_BETA2, (double)t);
    return (float)(lr * sqrt(1.0 - b2t) / (1.0 - b1t));
}

/* One element's Adam step: bst_adam_update and bst_adam_replay share it, so
 * that a step replayed later computes the bits it would have then. */
BST_SIMD_INLINE void adam_element(float *w, float *m, float *v, float g, float step, float decay)
{
    const float b1 = (float)BST_ADAM_BETA1, b2 = (float)BST_ADAM_BETA2;
    const float mi = b1 * *m + (1.0f - b1) * g;
    const float vi = b2 * *v + (1.0f - b2) * g * g;
    *m = mi;
    *v = vi;
    *w -= decay * *w + step * mi / (sqrtf(vi) + BST_OPT_EPSILON);
}

BST_SIMD_INLINE void adam_update_generic(float *w, float *m, float *v, const float *g, size_t n,
                                         float step, float decay)
{
    for (size_t i = 0; i < n; i++)
        adam_element(w + i, m + i, v + i, g[i], step, decay);
}

BST_SIMD_DISPATCH(adam_update,
                  (float *w, float *m, float *v, const float *g, size_t n, float step,
                   float decay),
                  (w, m, v, g, n, step, decay))

void bst_adam_update(float *w, float *m, float *v, const float *g, size_t n, float step,
                     float decay)
{
    adam_update(w, m, v, g, n, step, decay);
}

/* Floats [0, c) of p as a vector (c < 16: the rest zeros, no NaN, no
 * subnormal), and back. */
BST_SIMD_INLINE v16f replay_load(const float *p, size_t c)
{
    if (c >= 16)
        return v16_load(p);
    v16f x = {0};
    for (size_t l = 0; l < c; l++)
        x[l] = p[l];
    return x;
}

BST_SIMD_INLINE void replay_store(float *p, size_t c, v16f x)
{
    if (c >= 16) {
        v16_store(p, x);
        return;
    }
    for (size_t l = 0; l < c; l++)
        p[l] = x[l];
}

/* One step of adam_element with g = 0 on a vector: the same operations in
 * the same order, lane by lane (no contraction: -ffp-contract=off). */
#define REPLAY_STEP(w, m, v)                                                  \
    do {                                                                      \
        (m) = (m)*b1 + 0.0f;                                                  \
        (v) = (v)*b2 + 0.0f;                                                  \
        (w) = (w) - ((w)*decay + ((m)*step) / (v16_sqrt(v) + BST_OPT_EPSILON)); \
    } while (0)

/*
 * A row's floats, 64 at a time (four vectors, whose steps do not depend on
 * each other's, so that their square roots and divisions overlap), through
 * all k steps in registers: w, m and v are read and written once, not once
 * a step.  The zeros of a partial block are never stored.
 */
BST_SIMD_INLINE void adam_replay_generic(float *w, float *m, float *v, size_t n,
                                         const float *steps, const float *lrs, float weight_decay,
                                         int k)
{
    const float b1 = (float)BST_ADAM_BETA1, b2 = (float)BST_ADAM_BETA2;
    for (size_t i = 0; i < n; i += 64) {
        size_t c[4];
        for (int q = 0; q < 4; q++)
            c[q] = n > i + 16 * q ? (n - i - 16 * q < 16 ? n - i - 16 * q : 16) : 0;
        v16f w0 = replay_load(w + i, c[0]), m0 = replay_load(m + i, c[0]),
             v0 = replay_load(v + i, c[0]);
        v16f w1 = replay_load(w + i + 16, c[1]), m1 = replay_load(m + i + 16, c[1]),
             v1 = replay_load(v + i + 16, c[1]);
        v16f w2 = replay_load(w + i + 32, c[2]), m2 = replay_load(m + i + 32, c[2]),
             v2 = replay_load(v + i + 32, c[2]);
        v16f w3 = replay_load(w + i + 48, c[3]), m3 = replay_load(m + i + 48, c[3]),
             v3 = replay_load(v + i + 48, c[3]);
        for (int s = 0; s < k; s++) {
            /* As the trainer computes a tensor's decay at that step. */
            const float decay = lrs[s] * weight_decay, step = steps[s];
            REPLAY_STEP(w0, m0, v0);
            REPLAY_STEP(w1, m1, v1);
            REPLAY_STEP(w2, m2, v2);
            REPLAY_STEP(w3, m3, v3);
        }
        replay_store(w + i, c[0], w0), replay_store(m + i, c[0], m0), replay_store(v + i, c[0], v0);
        replay_store(w + i + 16, c[1], w1), replay_store(m + i + 16, c[1], m1),
            replay_store(v + i + 16, c[1], v1);
        replay_store(w + i + 32, c[2], w2), replay_store(m + i + 32, c[2], m2),
            replay_store(v + i + 32, c[2], v2);
        replay_store(w + i + 48, c[3], w3), replay_store(m + i + 48, c[3], m3),
            replay_store(v + i + 48, c[3], v3);
    }
}
BST_SIMD_DISPATCH(adam_replay,
                  (float *w, float *m, float *v, size_t n, const float *steps, const float *lrs,
                   float weight_decay, int k),
                  (w, m, v, n, steps, lrs, weight_decay, k))

void bst_adam_replay(float *w, float *m, float *v, size_t n, const float *steps,
                     const float *lrs, float weight_decay, int k)
{
    if (k > 0)
        adam_replay(w, m, v, n, steps, lrs, weight_decay, k);
}

#include "optimizer.h"

#include <math.h>

#include "simd.h"

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

BST_SIMD_INLINE void adam_update_generic(float *w, float *m, float *v, const float *g, size_t n,
                                         float step, float decay)
{
    const float b1 = (float)BST_ADAM_BETA1, b2 = (float)BST_ADAM_BETA2;
    for (size_t i = 0; i < n; i++) {
        float mi = b1 * m[i] + (1.0f - b1) * g[i];
        float vi = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        m[i] = mi;
        v[i] = vi;
        w[i] -= decay * w[i] + step * mi / (sqrtf(vi) + BST_OPT_EPSILON);
    }
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

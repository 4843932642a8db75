#include "optimizer.h"

#include <math.h>

void bst_adagrad_update(float *w, float *acc, const float *g, size_t n, float lr)
{
    for (size_t i = 0; i < n; i++) {
        float a = acc[i] + g[i] * g[i];
        acc[i] = a;
        w[i] -= lr * g[i] / (sqrtf(a) + BST_OPT_EPSILON);
    }
}

float bst_adam_step_size(float lr, int64_t t)
{
    double b1t = pow(BST_ADAM_BETA1, (double)t), b2t = pow(BST_ADAM_BETA2, (double)t);
    return (float)(lr * sqrt(1.0 - b2t) / (1.0 - b1t));
}

void bst_adam_update(float *w, float *m, float *v, const float *g, size_t n, float step,
                     float decay)
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

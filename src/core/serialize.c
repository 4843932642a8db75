#include "serialize.h"

#include <stdint.h>
#include <stdio.h>
#include <math.h>
#include <string.h>
#include <zlib.h>

static const unsigned char MAGIC[4] = {'B', 'S', 'T', 'W'};
/* Where each version's additions to the header start (serialize.h). */
#define OPTIONAL_INPUTS_OFFSET BST_HEADER_SIZE_V1
#define TRAINING_FACTS_OFFSET BST_HEADER_SIZE_V2

/* Explicit byte order so blobs move between hosts unchanged. */
static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static void put_u64(unsigned char *p, uint64_t v)
{
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

static void put_f32(unsigned char *p, float f)
{
    uint32_t v;
    memcpy(&v, &f, sizeof(v));
    put_u32(p, v);
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const unsigned char *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static float get_f32(const unsigned char *p)
{
    uint32_t v = get_u32(p);
    float f;
    memcpy(&f, &v, sizeof(f));
    return f;
}

/* CRC-32 over a buffer that may exceed zlib's uInt length. */
static uint32_t crc32_buf(const unsigned char *p, size_t n)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    while (n > 0) {
        uInt chunk = n > (1u << 30) ? (1u << 30) : (uInt)n;
        crc = crc32(crc, p, chunk);
        p += chunk;
        n -= chunk;
    }
    return (uint32_t)crc;
}

static uint32_t header_size(uint32_t version)
{
    if (version >= 3)
        return BST_HEADER_SIZE_V3;
    return version == 2 ? BST_HEADER_SIZE_V2 : BST_HEADER_SIZE_V1;
}

/* Blob size implied by a (validated) config, computed in 64 bits. */
static uint64_t blob_size(const BstConfig *c, uint64_t n_params, uint32_t version)
{
    uint64_t bn = 0, vocab = (uint64_t)c->n_movies;
    for (int i = 0; i < c->n_hidden; i++)
        bn += 2 * (uint64_t)c->hidden[i];
    if (version >= 2)
        vocab += (uint64_t)c->n_users * (1 + BST_N_USER_FEATS) +
                 (uint64_t)c->n_movies * c->n_genres;
    return header_size(version) + 4 * (vocab + n_params + bn) + 4;
}

size_t bst_model_serialized_size(const BstModel *m)
{
    return (size_t)blob_size(&m->cfg, m->params.size, BST_FORMAT_VERSION);
}

void bst_model_serialize(const BstModel *m, void *buf)
{
    const BstConfig *c = &m->cfg;
    unsigned char *p = buf;
    size_t total = bst_model_serialized_size(m);
    const uint32_t header = header_size(BST_FORMAT_VERSION);

    memset(p, 0, header);
    memcpy(p, MAGIC, 4);
    put_u32(p + 4, BST_FORMAT_VERSION);
    put_u32(p + 8, header);
    put_u64(p + 12, total);
    unsigned char *q = p + 20;
    put_u32(q, (uint32_t)c->n_movies);
    put_u32(q + 4, (uint32_t)c->embed_dim);
    put_u32(q + 8, (uint32_t)c->seq_len);
    put_u32(q + 12, (uint32_t)c->heads);
    put_u32(q + 16, (uint32_t)c->n_hidden);
    for (int i = 0; i < BST_MAX_HIDDEN; i++)
        put_u32(q + 20 + 4 * i, (uint32_t)(i < c->n_hidden ? c->hidden[i] : 0));
    q += 20 + 4 * BST_MAX_HIDDEN;
    put_f32(q, c->dropout);
    put_f32(q + 4, c->leaky_slope);
    put_f32(q + 8, c->ln_eps);
    put_f32(q + 12, c->bn_eps);
    put_f32(q + 16, c->bn_momentum);
    put_u64(p + 92, m->params.size);
    q = p + OPTIONAL_INPUTS_OFFSET;
    put_u32(q, (uint32_t)c->n_users);
    put_u32(q + 4, (uint32_t)c->user_dim);
    for (int k = 0; k < BST_N_USER_FEATS; k++) {
        put_u32(q + 8 + 4 * k, (uint32_t)c->n_feat_values[k]);
        put_u32(q + 20 + 4 * k, (uint32_t)c->feat_dim[k]);
    }
    put_u32(q + 32, (uint32_t)c->n_genres);
    put_u32(q + 36, (uint32_t)c->use_bias);
    put_u32(q + 40, (uint32_t)c->n_factors);
    put_f32(q + 44, c->rating_min);
    put_f32(q + 48, c->rating_max);
    put_u32(q + 52, (uint32_t)c->rating_add);
    /* Unknown facts are all zero in the model, hence in the blob. */
    q = p + TRAINING_FACTS_OFFSET;
    put_u32(q, (uint32_t)m->facts.known);
    put_f32(q + 4, m->facts.mean_target);
    put_u32(q + 8, (uint32_t)m->facts.min_history);

    q = p + header;
    for (int32_t i = 0; i < c->n_movies; i++, q += 4)
        put_u32(q, (uint32_t)m->movie_ids[i]);
    for (int32_t i = 0; i < c->n_users; i++, q += 4)
        put_u32(q, (uint32_t)m->user_ids[i]);
    /* Row 0 (the unknown user, the out-of-vocabulary movie) is all zero. */
    for (size_t i = 0; i < (size_t)c->n_users * BST_N_USER_FEATS; i++, q += 4)
        put_u32(q, (uint32_t)m->user_feats[BST_N_USER_FEATS + i]);
    for (size_t i = 0; i < (size_t)c->n_movies * c->n_genres; i++, q += 4)
        put_f32(q, m->movie_genres[c->n_genres + i]);
    /* The slab is the tensors in bst_param_tensors() order. */
    for (size_t i = 0; i < m->params.size; i++, q += 4)
        put_f32(q, m->params.slab[i]);
    for (size_t i = 0; i < m->bn.size; i++, q += 4)
        put_f32(q, m->bn.slab[i]);
    put_u32(q, crc32_buf(p, total - 4));
}

static BstModel *fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen > 0)
        snprintf(err, errlen, "%s", msg);
    return NULL;
}

BstModel *bst_model_deserialize(const void *buf, size_t len, char *err, size_t errlen)
{
    const unsigned char *p = buf;
    char msg[128];

    if (len < 12)
        return fail(err, errlen, "truncated");
    if (memcmp(p, MAGIC, 4) != 0)
        return fail(err, errlen, "not a bst model (bad magic)");
    uint32_t version = get_u32(p + 4);
    if (version < 1 || version > BST_FORMAT_VERSION) {
        snprintf(msg, sizeof(msg), "unsupported format version %u", (unsigned)version);
        return fail(err, errlen, msg);
    }
    const uint32_t header = header_size(version);
    const uint32_t recorded_header = get_u32(p + 8);
    if (recorded_header != header) {
        snprintf(msg, sizeof(msg), "inconsistent shapes (header size %u, expected %u)",
                 (unsigned)recorded_header, (unsigned)header);
        return fail(err, errlen, msg);
    }
    if (len < header)
        return fail(err, errlen, "truncated");
    /* The recorded size tells truncation apart from corruption, and locates
     * the checksum without trusting anything else in the header. */
    uint64_t total = get_u64(p + 12);
    if (total > len)
        return fail(err, errlen, "truncated");
    if (total < (uint64_t)header + 4 || total < len) {
        snprintf(msg, sizeof(msg), "inconsistent shapes (blob is %zu bytes, header says %llu)",
                 len, (unsigned long long)total);
        return fail(err, errlen, msg);
    }
    if (crc32_buf(p, len - 4) != get_u32(p + len - 4))
        return fail(err, errlen, "checksum mismatch");

    BstConfig c;
    memset(&c, 0, sizeof(c));
    const unsigned char *q = p + 20;
    c.n_movies = (int32_t)get_u32(q);
    c.embed_dim = (int32_t)get_u32(q + 4);
    c.seq_len = (int32_t)get_u32(q + 8);
    c.heads = (int32_t)get_u32(q + 12);
    c.n_hidden = (int32_t)get_u32(q + 16);
    /* Sizes past n_hidden are written as 0 and mean nothing: keep them 0, so
     * that a loaded config is the one that was saved. */
    for (int i = 0; i < BST_MAX_HIDDEN; i++)
        c.hidden[i] = i < c.n_hidden ? (int32_t)get_u32(q + 20 + 4 * i) : 0;
    q += 20 + 4 * BST_MAX_HIDDEN;
    c.dropout = get_f32(q);
    c.leaky_slope = get_f32(q + 4);
    c.ln_eps = get_f32(q + 8);
    c.bn_eps = get_f32(q + 12);
    c.bn_momentum = get_f32(q + 16);
    if (version >= 2) {
        q = p + OPTIONAL_INPUTS_OFFSET;
        c.n_users = (int32_t)get_u32(q);
        c.user_dim = (int32_t)get_u32(q + 4);
        for (int k = 0; k < BST_N_USER_FEATS; k++) {
            c.n_feat_values[k] = (int32_t)get_u32(q + 8 + 4 * k);
            c.feat_dim[k] = (int32_t)get_u32(q + 20 + 4 * k);
        }
        c.n_genres = (int32_t)get_u32(q + 32);
        c.use_bias = (int32_t)get_u32(q + 36);
        c.n_factors = (int32_t)get_u32(q + 40);
        c.rating_min = get_f32(q + 44);
        c.rating_max = get_f32(q + 48);
        c.rating_add = (int32_t)get_u32(q + 52);
    }
    const char *bad = bst_config_check(&c);
    if (bad) {
        snprintf(msg, sizeof(msg), "invalid config: %s", bad);
        return fail(err, errlen, msg);
    }
    /* Versions 1 and 2 know no facts: they stay unknown (all zero). */
    BstTrainingFacts facts = {0, 0.0f, 0};
    if (version >= 3) {
        q = p + TRAINING_FACTS_OFFSET;
        facts.known = (int32_t)get_u32(q);
        facts.mean_target = get_f32(q + 4);
        facts.min_history = (int32_t)get_u32(q + 8);
        bad = bst_training_facts_check(&c, &facts);
        if (bad) {
            snprintf(msg, sizeof(msg), "invalid training facts: %s", bad);
            return fail(err, errlen, msg);
        }
    }
    /* The config is bounded now, so these sizes cannot overflow; they are
     * checked before allocating anything the blob asks for. */
    uint64_t n_params = get_u64(p + 92);
    if (n_params != bst_config_num_params(&c) || blob_size(&c, n_params, version) != len)
        return fail(err, errlen, "inconsistent shapes (sizes do not match the config)");
    BstModel *m = bst_model_alloc(&c);
    if (!m)
        return fail(err, errlen, "out of memory");
    m->facts = facts;

    q = p + header;
    for (int32_t i = 0; i < c.n_movies; i++, q += 4) {
        m->movie_ids[i] = (int32_t)get_u32(q);
        if (i > 0 && m->movie_ids[i] <= m->movie_ids[i - 1]) {
            bst_model_free(m);
            return fail(err, errlen, "vocabulary not strictly ascending");
        }
    }
    for (int32_t i = 0; i < c.n_users; i++, q += 4) {
        m->user_ids[i] = (int32_t)get_u32(q);
        if (i > 0 && m->user_ids[i] <= m->user_ids[i - 1]) {
            bst_model_free(m);
            return fail(err, errlen, "user vocabulary not strictly ascending");
        }
    }
    for (size_t i = 0; i < (size_t)c.n_users * BST_N_USER_FEATS; i++, q += 4) {
        int32_t f = (int32_t)get_u32(q);
        if (f < 0 || f > c.n_feat_values[i % BST_N_USER_FEATS]) {
            bst_model_free(m);
            return fail(err, errlen, "user feature index out of range");
        }
        m->user_feats[BST_N_USER_FEATS + i] = f;
    }
    for (size_t i = 0; i < (size_t)c.n_movies * c.n_genres; i++, q += 4) {
        /* The check bst_model_set_vocab makes when a model is built. */
        float g = get_f32(q);
        if (!isfinite(g)) {
            bst_model_free(m);
            return fail(err, errlen, "genre values must be finite");
        }
        m->movie_genres[c.n_genres + i] = g;
    }
    for (size_t i = 0; i < m->params.size; i++, q += 4)
        m->params.slab[i] = get_f32(q);
    for (size_t i = 0; i < m->bn.size; i++, q += 4)
        m->bn.slab[i] = get_f32(q);
    return m;
}

/* ------------------------------------------------------- optimizer state */

static const unsigned char STATE_MAGIC[4] = {'B', 'S', 'T', 'S'};

/* The checksum a weights blob ends with: what identifies it to its state. */
static uint32_t weights_checksum(const void *weights, size_t weights_len)
{
    return weights_len >= 4 ? get_u32((const unsigned char *)weights + weights_len - 4) : 0;
}

static uint64_t state_blob_size(int slots, uint64_t floats_per_slot)
{
    return BST_STATE_HEADER_SIZE + 4 * (uint64_t)slots * floats_per_slot + 4;
}

size_t bst_train_state_serialized_size(const BstTrainState *s)
{
    return (size_t)state_blob_size(bst_optimizer_slots(s->optimizer), s->size);
}

void bst_train_state_serialize(const BstTrainState *s, const void *weights, size_t weights_len,
                               void *buf)
{
    unsigned char *p = buf;
    const size_t total = bst_train_state_serialized_size(s);
    const int slots = bst_optimizer_slots(s->optimizer);

    memset(p, 0, BST_STATE_HEADER_SIZE);
    memcpy(p, STATE_MAGIC, 4);
    put_u32(p + 4, BST_STATE_FORMAT_VERSION);
    put_u32(p + 8, BST_STATE_HEADER_SIZE);
    put_u64(p + 12, total);
    put_u32(p + 20, (uint32_t)s->optimizer);
    put_u32(p + 24, (uint32_t)slots);
    put_u64(p + 28, s->size);
    put_u64(p + 36, s->seed);
    put_u64(p + 44, (uint64_t)s->step);
    put_u32(p + 52, (uint32_t)s->epochs);
    for (int i = 0; i < 4; i++)
        put_u64(p + 56 + 8 * i, s->dropout_rng.s[i]);
    put_u32(p + 88, weights_checksum(weights, weights_len));
    unsigned char *q = p + BST_STATE_HEADER_SIZE;
    for (int k = 0; k < slots; k++)
        for (size_t i = 0; i < s->size; i++, q += 4)
            put_f32(q, s->slot[k][i]);
    put_u32(q, crc32_buf(p, total - 4));
}

static BstTrainState *state_fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen > 0)
        snprintf(err, errlen, "%s", msg);
    return NULL;
}

/* NULL if value v at slot k of an optimizer's state is one its updates can
 * produce, else why not. */
static const char *slot_value_check(BstOptimizerKind kind, int k, float v)
{
    if (!isfinite(v))
        return "invalid state: a value is not finite";
    if (kind == BST_OPT_ADAGRAD && !(v > 0.0f))
        return "invalid state: an Adagrad accumulator is not positive";
    if (kind != BST_OPT_ADAGRAD && k == 1 && v < 0.0f)
        return "invalid state: an Adam second moment is negative";
    return NULL;
}

BstTrainState *bst_train_state_deserialize(const void *buf, size_t len, const BstModel *m,
                                           const void *weights, size_t weights_len, char *err,
                                           size_t errlen)
{
    const unsigned char *p = buf;
    char msg[128];

    if (len < 12)
        return state_fail(err, errlen, "truncated");
    if (memcmp(p, STATE_MAGIC, 4) != 0)
        return state_fail(err, errlen, "not an optimizer state (bad magic)");
    const uint32_t version = get_u32(p + 4);
    if (version != BST_STATE_FORMAT_VERSION) {
        snprintf(msg, sizeof(msg), "unsupported format version %u", (unsigned)version);
        return state_fail(err, errlen, msg);
    }
    if (get_u32(p + 8) != BST_STATE_HEADER_SIZE) {
        snprintf(msg, sizeof(msg), "inconsistent shapes (header size %u, expected %u)",
                 (unsigned)get_u32(p + 8), (unsigned)BST_STATE_HEADER_SIZE);
        return state_fail(err, errlen, msg);
    }
    if (len < BST_STATE_HEADER_SIZE)
        return state_fail(err, errlen, "truncated");
    const uint64_t total = get_u64(p + 12);
    if (total > len)
        return state_fail(err, errlen, "truncated");
    if (total < len) {
        snprintf(msg, sizeof(msg), "inconsistent shapes (blob is %zu bytes, header says %llu)",
                 len, (unsigned long long)total);
        return state_fail(err, errlen, msg);
    }
    if (crc32_buf(p, len - 4) != get_u32(p + len - 4))
        return state_fail(err, errlen, "checksum mismatch");

    const uint32_t kind = get_u32(p + 20);
    const int slots = kind <= BST_OPT_ADAMW ? bst_optimizer_slots((BstOptimizerKind)kind) : 0;
    if (slots == 0)
        return state_fail(err, errlen, "invalid state: unknown optimizer");
    const uint64_t size = get_u64(p + 28);
    if (get_u32(p + 24) != (uint32_t)slots || size != m->params.size ||
        state_blob_size(slots, size) != len)
        return state_fail(err, errlen, "inconsistent shapes (sizes do not match the weights)");
    if (get_u32(p + 88) != weights_checksum(weights, weights_len))
        return state_fail(err, errlen, "it belongs to other weights");
    const int64_t step = (int64_t)get_u64(p + 44);
    const int32_t epochs = (int32_t)get_u32(p + 52);
    BstRng rng;
    for (int i = 0; i < 4; i++)
        rng.s[i] = get_u64(p + 56 + 8 * i);
    if (step < 0 || epochs < 0)
        return state_fail(err, errlen, "invalid state: a negative count");
    /* xoshiro's one state it never leaves, and never reaches from a seed. */
    if ((rng.s[0] | rng.s[1] | rng.s[2] | rng.s[3]) == 0)
        return state_fail(err, errlen, "invalid state: a dropout stream of all zeros");
    const unsigned char *q = p + BST_STATE_HEADER_SIZE;
    for (int k = 0; k < slots; k++)
        for (size_t i = 0; i < size; i++) {
            const char *bad = slot_value_check((BstOptimizerKind)kind, k,
                                               get_f32(q + 4 * ((size_t)k * size + i)));
            if (bad)
                return state_fail(err, errlen, bad);
        }

    BstTrainState *s = bst_train_state_create(&m->cfg, (BstOptimizerKind)kind, get_u64(p + 36));
    if (!s)
        return state_fail(err, errlen, "out of memory");
    s->step = step;
    s->epochs = epochs;
    s->dropout_rng = rng;
    for (int k = 0; k < slots; k++)
        for (size_t i = 0; i < size; i++, q += 4)
            s->slot[k][i] = get_f32(q);
    return s;
}

#include "model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bst_alloc.h"
#include "carve.h"
#include "infer.h"
#include "layers.h"
#include "parallel.h"

/* ---------------------------------------------------------------- config */

int32_t bst_default_dim(int64_t n)
{
    int32_t d = 1;
    while (d < BST_DEFAULT_DIM_MAX && (int64_t)(d + 1) * (d + 1) <= n)
        d++;
    return d;
}

void bst_config_default(BstConfig *cfg, int32_t n_movies, int32_t seq_len)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->n_movies = n_movies;
    cfg->embed_dim = bst_default_dim(n_movies);
    cfg->seq_len = seq_len;
    cfg->heads = 3;
    cfg->n_hidden = 2;
    cfg->hidden[0] = 256;
    cfg->hidden[1] = 128;
    cfg->dropout = 0.1f;
    cfg->leaky_slope = 0.3f;
    cfg->ln_eps = 1e-3f;
    cfg->bn_eps = 1e-3f;
    cfg->bn_momentum = 0.99f;
}

/* --------------------------------------------------------- parameter layout */

enum { INIT_ZERO, INIT_ONE, INIT_EMBEDDING, INIT_GLOROT };

/* The single description of the parameter tensors: order (= slab and
 * serialization order), names, sizes and Keras initialisers. */
typedef struct ParamSpec {
    char name[16];
    float **slot;
    size_t size;
    int init;
    double fan_in, fan_out;
} ParamSpec;

/* Tensors of size 0 (inputs a config leaves out) are not listed, so a
 * format-1 model lists exactly the tensors it always had. */
static void spec(ParamSpec *s, int *n, const char *name, float **slot, size_t size,
                 int init, double fan_in, double fan_out)
{
    if (size == 0)
        return;
    ParamSpec *e = &s[(*n)++];
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->slot = slot;
    e->size = size;
    e->init = init;
    e->fan_in = fan_in;
    e->fan_out = fan_out;
}

/* Weight decay applies to kernels and embedding tables (the user and movie
 * bias tables included: a ridge on them is what the closed-form start
 * assumes), not to layer biases, norm parameters or the global bias. */
static int spec_decays(const ParamSpec *s)
{
    return s->init == INIT_GLOROT || s->init == INIT_EMBEDDING ||
           strcmp(s->name, "user_bias") == 0 || strcmp(s->name, "movie_bias") == 0;
}

int32_t bst_config_mlp_input(const BstConfig *c)
{
    int32_t in = c->seq_len * c->embed_dim + c->user_dim;
    for (int k = 0; k < BST_N_USER_FEATS; k++)
        in += c->feat_dim[k];
    return in;
}

static int param_specs(const BstConfig *c, BstParams *p, ParamSpec *s)
{
    const size_t d = (size_t)c->embed_dim, L = (size_t)c->seq_len, H = (size_t)c->heads;
    const size_t key_dim = d;  /* Keras: key_dim = embedding width */
    const size_t hd = H * key_dim;
    int n = 0;
    char name[16];

    /* movie_emb must stay first: the trainer updates the rest of the slab as
     * one dense range. */
    spec(s, &n, "movie_emb", &p->movie_emb, ((size_t)c->n_movies + 1) * d, INIT_EMBEDDING, 0, 0);
    spec(s, &n, "pos_emb", &p->pos_emb, (L - 1) * d, INIT_EMBEDDING, 0, 0);
    /* EinsumDense kernels (d, H, key_dim): Keras' fans treat all but the last
     * two dims as a receptive field, so fan_in = H*d, fan_out = key_dim*d.
     * The three kernels share these fans, so one Glorot draw over the fused
     * matrix has exactly their distribution. */
    spec(s, &n, "wqkv", &p->wqkv, d * 3 * hd, INIT_GLOROT, (double)(H * d), (double)(key_dim * d));
    spec(s, &n, "bqkv", &p->bqkv, 3 * hd, INIT_ZERO, 0, 0);
    /* Output kernel (H, key_dim, d): fan_in = key_dim*H, fan_out = d*H. */
    spec(s, &n, "wo", &p->wo, hd * d, INIT_GLOROT, (double)(key_dim * H), (double)(d * H));
    spec(s, &n, "bo", &p->bo, d, INIT_ZERO, 0, 0);
    spec(s, &n, "ln1_g", &p->ln1_g, d, INIT_ONE, 0, 0);
    spec(s, &n, "ln1_b", &p->ln1_b, d, INIT_ZERO, 0, 0);
    spec(s, &n, "ffn_w", &p->ffn_w, d * d, INIT_GLOROT, (double)d, (double)d);
    spec(s, &n, "ffn_b", &p->ffn_b, d, INIT_ZERO, 0, 0);
    spec(s, &n, "ln2_g", &p->ln2_g, d, INIT_ONE, 0, 0);
    spec(s, &n, "ln2_b", &p->ln2_b, d, INIT_ZERO, 0, 0);
    size_t in = (size_t)bst_config_mlp_input(c);
    for (int i = 0; i < c->n_hidden; i++) {
        size_t u = (size_t)c->hidden[i];
        snprintf(name, sizeof(name), "mlp%d_w", i);
        spec(s, &n, name, &p->mlp_w[i], in * u, INIT_GLOROT, (double)in, (double)u);
        snprintf(name, sizeof(name), "mlp%d_b", i);
        spec(s, &n, name, &p->mlp_b[i], u, INIT_ZERO, 0, 0);
        snprintf(name, sizeof(name), "bn%d_g", i);
        spec(s, &n, name, &p->bn_g[i], u, INIT_ONE, 0, 0);
        snprintf(name, sizeof(name), "bn%d_b", i);
        spec(s, &n, name, &p->bn_b[i], u, INIT_ZERO, 0, 0);
        in = u;
    }
    spec(s, &n, "out_w", &p->out_w, in, INIT_GLOROT, (double)in, 1.0);
    spec(s, &n, "out_b", &p->out_b, 1, INIT_ZERO, 0, 0);
    /* Optional inputs, after every tensor of a format-1 model. */
    const size_t user_rows = (size_t)c->n_users + 1, G = (size_t)c->n_genres;
    spec(s, &n, "user_emb", &p->user_emb, user_rows * c->user_dim, INIT_EMBEDDING, 0, 0);
    static const char *const feat_names[BST_N_USER_FEATS] = {"sex_emb", "age_emb", "occ_emb"};
    for (int k = 0; k < BST_N_USER_FEATS; k++)
        spec(s, &n, feat_names[k], &p->feat_emb[k],
             ((size_t)c->n_feat_values[k] + 1) * c->feat_dim[k], INIT_EMBEDDING, 0, 0);
    spec(s, &n, "genre_w", &p->genre_w, G ? (d + G) * d : 0, INIT_GLOROT, (double)(d + G),
         (double)d);
    spec(s, &n, "genre_b", &p->genre_b, G ? d : 0, INIT_ZERO, 0, 0);
    if (c->use_bias) {
        spec(s, &n, "global_bias", &p->global_bias, 1, INIT_ZERO, 0, 0);
        spec(s, &n, "user_bias", &p->user_bias, user_rows, INIT_ZERO, 0, 0);
        spec(s, &n, "movie_bias", &p->movie_bias, (size_t)c->n_movies + 1, INIT_ZERO, 0, 0);
    }
    spec(s, &n, "user_factors", &p->user_factors, user_rows * c->n_factors, INIT_EMBEDDING, 0, 0);
    spec(s, &n, "movie_factors", &p->movie_factors, ((size_t)c->n_movies + 1) * c->n_factors,
         INIT_EMBEDDING, 0, 0);
    spec(s, &n, "rating_w", &p->rating_w, c->rating_add ? d : 0, INIT_EMBEDDING, 0, 0);
    return n;
}

/* Parameter count of a config whose fields are each within their bounds
 * (so that no size below can overflow 64 bits). */
static uint64_t param_count(const BstConfig *c)
{
    ParamSpec s[BST_MAX_TENSORS];
    BstParams p;
    uint64_t total = 0;
    int n = param_specs(c, &p, s);
    for (int i = 0; i < n; i++)
        total += s[i].size;
    return total;
}

/* A limit's value in a message, from the one definition. */
#define LIMIT_STR_(x) #x
#define LIMIT_STR(x) LIMIT_STR_(x)

const char *bst_config_check(const BstConfig *c)
{
    if (c->n_movies < 1)
        return "n_movies must be at least 1";
    if (c->embed_dim < 1 || c->embed_dim > BST_MAX_EMBED_DIM)
        return "embed_dim must be between 1 and " LIMIT_STR(BST_MAX_EMBED_DIM);
    if (c->seq_len < 2 || c->seq_len > BST_MAX_SEQ_LEN)
        return "seq_len must be between 2 and " LIMIT_STR(BST_MAX_SEQ_LEN);
    if (c->heads < 1 || c->heads > BST_MAX_HEADS)
        return "heads must be between 1 and " LIMIT_STR(BST_MAX_HEADS);
    if (c->n_hidden < 0 || c->n_hidden > BST_MAX_HIDDEN)
        return "n_hidden must be between 0 and " LIMIT_STR(BST_MAX_HIDDEN);
    for (int i = 0; i < c->n_hidden; i++)
        if (c->hidden[i] < 1 || c->hidden[i] > BST_MAX_HIDDEN_UNITS)
            return "hidden units must be between 1 and " LIMIT_STR(BST_MAX_HIDDEN_UNITS);
    /* Written so that NaN fails every test. */
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return "dropout must be in [0, 1)";
    if (!isfinite(c->leaky_slope))
        return "leaky_slope must be finite";
    if (!(c->ln_eps > 0.0f && isfinite(c->ln_eps)))
        return "ln_eps must be finite and positive";
    if (!(c->bn_eps > 0.0f && isfinite(c->bn_eps)))
        return "bn_eps must be finite and positive";
    if (!(c->bn_momentum >= 0.0f && c->bn_momentum < 1.0f))
        return "bn_momentum must be in [0, 1)";
    if (c->n_users < 0 || c->user_dim < 0 || c->user_dim > BST_MAX_EMBED_DIM)
        return "n_users must not be negative and user_dim must be between 0 and "
               LIMIT_STR(BST_MAX_EMBED_DIM);
    for (int k = 0; k < BST_N_USER_FEATS; k++)
        if (c->n_feat_values[k] < 0 || c->n_feat_values[k] > BST_MAX_FEAT_VALUES ||
            c->feat_dim[k] < 0 || c->feat_dim[k] > BST_MAX_EMBED_DIM)
            return "user features must have at most " LIMIT_STR(BST_MAX_FEAT_VALUES)
                   " values and widths between 0 and " LIMIT_STR(BST_MAX_EMBED_DIM);
    if (c->n_genres < 0 || c->n_genres > BST_MAX_GENRES)
        return "n_genres must be between 0 and " LIMIT_STR(BST_MAX_GENRES);
    if (c->use_bias != 0 && c->use_bias != 1)
        return "use_bias must be 0 or 1";
    if (c->n_factors < 0 || c->n_factors > BST_MAX_EMBED_DIM)
        return "n_factors must be between 0 and " LIMIT_STR(BST_MAX_EMBED_DIM);
    if (c->rating_add != 0 && c->rating_add != 1)
        return "rating_add must be 0 or 1";
    if (!isfinite(c->rating_min) || !isfinite(c->rating_max))
        return "the rating range must be finite";
    /* All fields are bounded above, so this cannot overflow 64 bits. */
    if (param_count(c) > BST_MAX_PARAMS)
        return "model too large (more than 200 million parameters)";
    return NULL;
}

size_t bst_config_num_params(const BstConfig *cfg)
{
    return (size_t)param_count(cfg);
}

int bst_param_tensors(const BstConfig *cfg, const BstParams *p, BstTensor out[BST_MAX_TENSORS])
{
    ParamSpec s[BST_MAX_TENSORS];
    BstParams copy = *p;
    int n = param_specs(cfg, &copy, s);
    for (int i = 0; i < n; i++) {
        memcpy(out[i].name, s[i].name, sizeof(out[i].name));
        out[i].data = *s[i].slot;
        out[i].size = s[i].size;
        out[i].decay = spec_decays(&s[i]);
    }
    return n;
}

int bst_params_alloc(BstParams *p, const BstConfig *cfg)
{
    ParamSpec s[BST_MAX_TENSORS];
    memset(p, 0, sizeof(*p));
    int n = param_specs(cfg, p, s);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += s[i].size;
    p->slab = bst_alloc_zero(total, sizeof(float));
    if (!p->slab)
        return -1;
    p->size = total;
    float *cur = p->slab;
    for (int i = 0; i < n; i++) {
        *s[i].slot = cur;
        cur += s[i].size;
    }
    return 0;
}

void bst_params_free(BstParams *p)
{
    bst_free(p->slab);
    memset(p, 0, sizeof(*p));
}

void bst_zero_grads(BstParams *grads)
{
    memset(grads->slab, 0, grads->size * sizeof(float));
}

static void params_init(const BstConfig *cfg, BstParams *p, BstRng *rng)
{
    ParamSpec s[BST_MAX_TENSORS];
    int n = param_specs(cfg, p, s);
    for (int i = 0; i < n; i++) {
        float *w = *s[i].slot;
        float limit = 0.0f;
        switch (s[i].init) {
        case INIT_ZERO:
            memset(w, 0, s[i].size * sizeof(float));
            continue;
        case INIT_ONE:
            for (size_t j = 0; j < s[i].size; j++)
                w[j] = 1.0f;
            continue;
        case INIT_EMBEDDING:  /* Keras Embedding: uniform(-0.05, 0.05) */
            limit = 0.05f;
            break;
        case INIT_GLOROT:
            limit = (float)sqrt(6.0 / (s[i].fan_in + s[i].fan_out));
            break;
        }
        for (size_t j = 0; j < s[i].size; j++)
            w[j] = (2.0f * bst_rng_uniform(rng) - 1.0f) * limit;
    }
}

/* ------------------------------------------------------------------- model */

/* Element counts of the model's buffers besides the parameters, shared by
 * model_alloc and bst_model_memory_bytes.  An empty table still gets one
 * element: bst_alloc(0) returns NULL, which would read as a failure. */
static size_t user_id_count(const BstConfig *c)
{
    return c->n_users ? (size_t)c->n_users : 1;
}

static size_t user_feat_count(const BstConfig *c)
{
    return ((size_t)c->n_users + 1) * BST_N_USER_FEATS;
}

static size_t genre_count(const BstConfig *c)
{
    return c->n_genres ? ((size_t)c->n_movies + 1) * c->n_genres : 1;
}

/* BatchNorm moving mean and variance of every hidden unit (0: no slab). */
static size_t bn_stats_count(const BstConfig *c)
{
    size_t total = 0;
    for (int i = 0; i < c->n_hidden; i++)
        total += 2 * (size_t)c->hidden[i];
    return total;
}

size_t bst_model_memory_bytes(const BstConfig *cfg)
{
    return sizeof(BstModel) + (size_t)cfg->n_movies * sizeof(int32_t) +
           user_id_count(cfg) * sizeof(int32_t) + user_feat_count(cfg) * sizeof(int32_t) +
           genre_count(cfg) * sizeof(float) + bst_config_num_params(cfg) * sizeof(float) +
           bn_stats_count(cfg) * sizeof(float);
}

/* Allocates a model with zeroed parameters, zeroed user features and genres
 * and default moving statistics. */
static BstModel *model_alloc(const BstConfig *cfg)
{
    if (bst_config_check(cfg))
        return NULL;
    BstModel *m = bst_alloc_zero(1, sizeof(BstModel));
    if (!m)
        return NULL;
    m->cfg = *cfg;
    m->movie_ids = bst_alloc((size_t)cfg->n_movies * sizeof(int32_t));
    m->user_ids = bst_alloc_zero(user_id_count(cfg), sizeof(int32_t));
    m->user_feats = bst_alloc_zero(user_feat_count(cfg), sizeof(int32_t));
    m->movie_genres = bst_alloc_zero(genre_count(cfg), sizeof(float));
    if (!m->movie_ids || !m->user_ids || !m->user_feats || !m->movie_genres ||
        bst_params_alloc(&m->params, cfg) != 0) {
        bst_model_free(m);
        return NULL;
    }
    const size_t total = bn_stats_count(cfg);
    if (total > 0) {
        m->bn.slab = bst_alloc(total * sizeof(float));
        if (!m->bn.slab) {
            bst_model_free(m);
            return NULL;
        }
    }
    m->bn.size = total;
    float *cur = m->bn.slab;
    for (int i = 0; i < cfg->n_hidden; i++) {
        size_t u = (size_t)cfg->hidden[i];
        m->bn.moving_mean[i] = cur;
        m->bn.moving_var[i] = cur + u;
        for (size_t j = 0; j < u; j++) {
            cur[j] = 0.0f;
            cur[u + j] = 1.0f;
        }
        cur += 2 * u;
    }
    return m;
}

static int strictly_ascending(const int32_t *ids, int32_t n)
{
    for (int32_t i = 1; i < n; i++)
        if (ids[i] <= ids[i - 1])
            return 0;
    return 1;
}

const char *bst_model_set_vocab(BstModel *m, const BstVocab *v)
{
    const BstConfig *c = &m->cfg;
    if (!strictly_ascending(v->movie_ids, c->n_movies))
        return "movie vocabulary not strictly ascending";
    if (c->n_users > 0 && (!v->user_ids || !strictly_ascending(v->user_ids, c->n_users)))
        return "user vocabulary not strictly ascending";
    memcpy(m->movie_ids, v->movie_ids, (size_t)c->n_movies * sizeof(int32_t));
    if (c->n_users > 0)
        memcpy(m->user_ids, v->user_ids, (size_t)c->n_users * sizeof(int32_t));
    /* Row 0 (unknown user, out-of-vocabulary movie) stays all zero. */
    if (v->user_feats) {
        for (size_t i = 0; i < (size_t)c->n_users * BST_N_USER_FEATS; i++) {
            int32_t k = (int32_t)(i % BST_N_USER_FEATS), f = v->user_feats[i];
            if (f < 0 || f > c->n_feat_values[k])
                return "user feature index out of range";
            m->user_feats[BST_N_USER_FEATS + i] = f;
        }
    }
    if (v->movie_genres && c->n_genres > 0) {
        for (size_t i = 0; i < (size_t)c->n_movies * c->n_genres; i++) {
            if (!isfinite(v->movie_genres[i]))
                return "genre values must be finite";
            m->movie_genres[c->n_genres + i] = v->movie_genres[i];
        }
    }
    return NULL;
}

BstModel *bst_model_create_vocab(const BstConfig *cfg, const BstVocab *vocab, uint64_t seed)
{
    BstModel *m = model_alloc(cfg);
    if (!m)
        return NULL;
    if (bst_model_set_vocab(m, vocab) != NULL) {
        bst_model_free(m);
        return NULL;
    }
    BstRng rng;
    bst_rng_seed(&rng, seed);
    params_init(cfg, &m->params, &rng);
    return m;
}

BstModel *bst_model_create(const BstConfig *cfg, const int32_t *movie_ids, uint64_t seed)
{
    BstVocab v = {.movie_ids = movie_ids};
    return bst_model_create_vocab(cfg, &v, seed);
}

BstModel *bst_model_alloc(const BstConfig *cfg)
{
    return model_alloc(cfg);
}

/* ------------------------------------------------------------ warm start */

static int32_t vocab_index(const int32_t *ids, int32_t n, int32_t id);

/* What a tensor's rows are indexed by: rows of the movie and user tables
 * follow their ids when a vocabulary grows; other tensors keep their shape. */
enum { ROWS_NONE, ROWS_MOVIE, ROWS_USER };

static int spec_rows(const ParamSpec *s, BstParams *p)
{
    if (s->slot == &p->movie_emb || s->slot == &p->movie_bias || s->slot == &p->movie_factors)
        return ROWS_MOVIE;
    if (s->slot == &p->user_emb || s->slot == &p->user_bias || s->slot == &p->user_factors)
        return ROWS_USER;
    return ROWS_NONE;
}

/* 1 when every id of small[0..n_small) is in big[0..n_big) (both strictly
 * ascending). */
static int ids_included(const int32_t *small, int32_t n_small, const int32_t *big, int32_t n_big)
{
    int32_t j = 0;
    for (int32_t i = 0; i < n_small; i++) {
        while (j < n_big && big[j] < small[i])
            j++;
        if (j == n_big || big[j] != small[i])
            return 0;
    }
    return 1;
}

/* Row r of from's table (0: the out-of-vocabulary or unknown row) is row
 * carry_row of to's: the row of the same id. */
static int32_t carry_row(const int32_t *from_ids, const int32_t *to_ids, int32_t n_to, int32_t r)
{
    return r == 0 ? 0 : vocab_index(to_ids, n_to, from_ids[r - 1]);
}

void bst_model_carry_params(const BstModel *to, float *to_slab, const BstModel *from,
                            const float *from_slab)
{
    ParamSpec from_specs[BST_MAX_TENSORS], to_specs[BST_MAX_TENSORS];
    BstParams from_layout = from->params, to_layout = to->params;
    /* Configs equal but for the vocabulary sizes list the same tensors in
     * the same order. */
    const int n = param_specs(&from->cfg, &from_layout, from_specs);
    param_specs(&to->cfg, &to_layout, to_specs);
    for (int i = 0; i < n; i++) {
        const float *src = from_slab + (*from_specs[i].slot - from->params.slab);
        float *dst = to_slab + (*to_specs[i].slot - to->params.slab);
        const int rows = spec_rows(&from_specs[i], &from_layout);
        if (rows == ROWS_NONE) {
            memcpy(dst, src, from_specs[i].size * sizeof(float));
            continue;
        }
        const int32_t n_from = rows == ROWS_MOVIE ? from->cfg.n_movies : from->cfg.n_users;
        const int32_t n_to = rows == ROWS_MOVIE ? to->cfg.n_movies : to->cfg.n_users;
        const int32_t *from_ids = rows == ROWS_MOVIE ? from->movie_ids : from->user_ids;
        const int32_t *to_ids = rows == ROWS_MOVIE ? to->movie_ids : to->user_ids;
        const size_t width = from_specs[i].size / ((size_t)n_from + 1);
        for (int32_t r = 0; r <= n_from; r++)
            memcpy(dst + (size_t)carry_row(from_ids, to_ids, n_to, r) * width,
                   src + (size_t)r * width, width * sizeof(float));
    }
}

BstModel *bst_model_grow(const BstModel *from, int32_t n_movies, int32_t n_users,
                         const BstVocab *vocab, uint64_t seed, const char **err)
{
    BstConfig cfg = from->cfg;
    cfg.n_movies = n_movies;
    cfg.n_users = n_users;
    *err = NULL;
    if (n_movies < from->cfg.n_movies || n_users < from->cfg.n_users ||
        !ids_included(from->movie_ids, from->cfg.n_movies, vocab->movie_ids, n_movies) ||
        (from->cfg.n_users > 0 &&
         (!vocab->user_ids ||
          !ids_included(from->user_ids, from->cfg.n_users, vocab->user_ids, n_users)))) {
        *err = "the vocabulary drops a movie or user the model knows";
        return NULL;
    }
    if ((*err = bst_config_check(&cfg)) != NULL)
        return NULL;
    BstModel *m = model_alloc(&cfg);
    if (!m) {
        *err = "out of memory";
        return NULL;
    }
    if ((*err = bst_model_set_vocab(m, vocab)) != NULL) {
        bst_model_free(m);
        return NULL;
    }
    /* Every row as a fresh model of the grown vocabulary draws it, then
     * what from knows over it. */
    BstRng rng;
    bst_rng_seed(&rng, seed);
    params_init(&cfg, &m->params, &rng);
    bst_model_carry_params(m, m->params.slab, from, from->params.slab);
    if (m->bn.size)
        memcpy(m->bn.slab, from->bn.slab, m->bn.size * sizeof(float));
    m->facts = from->facts;
    return m;
}

void bst_model_free(BstModel *m)
{
    if (!m)
        return;
    bst_free(m->movie_ids);
    bst_free(m->user_ids);
    bst_free(m->user_feats);
    bst_free(m->movie_genres);
    bst_params_free(&m->params);
    bst_free(m->bn.slab);
    bst_free(m);
}

const BstConfig *bst_model_config(const BstModel *m)
{
    return &m->cfg;
}

const char *bst_training_facts_check(const BstConfig *cfg, const BstTrainingFacts *f)
{
    if (f->known == 0)
        /* Nothing hides in the fields of unknown facts (not even a sign). */
        return f->mean_target == 0.0f && !signbit(f->mean_target) && f->min_history == 0
                   ? NULL
                   : "unknown facts must have a mean target and min_history of 0";
    if (f->known != 1)
        return "known must be 0 or 1";
    if (!isfinite(f->mean_target))
        return "the mean training target must be finite";
    if (f->min_history < 0 || f->min_history >= cfg->seq_len)
        return "min_history must be between 0 and seq_len - 1";
    return NULL;
}

const char *bst_model_set_training_facts(BstModel *m, float mean_target, int32_t min_history)
{
    const BstTrainingFacts facts = {1, mean_target, min_history};
    const char *bad = bst_training_facts_check(&m->cfg, &facts);
    if (!bad)
        m->facts = facts;
    return bad;
}

int bst_model_training_facts(const BstModel *m, float *mean_target, int32_t *min_history)
{
    if (!m->facts.known)
        return 0;
    *mean_target = m->facts.mean_target;
    *min_history = m->facts.min_history;
    return 1;
}

/* 1-based position of id in the ascending ids[0..n), 0 when absent.  A
 * binary search without branches (a conditional move per halving): a
 * scored window looks up each of its movies, and the branches of the usual
 * search mispredict half the time. */
static int32_t vocab_index(const int32_t *ids, int32_t n, int32_t id)
{
    if (n < 1)
        return 0;
    const int32_t *base = ids;
    int32_t len = n;
    while (len > 1) {
        const int32_t half = len / 2;
        base = base[half] < id ? base + half : base;
        len -= half;
    }
    const int32_t pos = (int32_t)(base - ids) + (*base < id);
    return pos < n && ids[pos] == id ? pos + 1 : 0;
}

int32_t bst_model_movie_index(const BstModel *m, int32_t movie_id)
{
    return vocab_index(m->movie_ids, m->cfg.n_movies, movie_id);
}

int32_t bst_model_user_index(const BstModel *m, int32_t user_id)
{
    return vocab_index(m->user_ids, m->cfg.n_users, user_id);
}

int32_t bst_model_pack_window(const BstModel *m, const int32_t *movie_ids, const float *ratings,
                              int32_t n, int32_t *movies, float *window_ratings)
{
    const int32_t L = m->cfg.seq_len;
    const int32_t hist = n - 1 < L - 1 ? n - 1 : L - 1, pad = L - 1 - hist;
    const int32_t first = n - 1 - hist;  /* the oldest history item kept */
    for (int32_t i = 0; i < pad; i++) {
        movies[i] = 0;
        window_ratings[i] = 0.0f;
    }
    for (int32_t i = 0; i < hist; i++) {
        movies[pad + i] = bst_model_movie_index(m, movie_ids[first + i]);
        window_ratings[pad + i] = ratings[first + i];
    }
    movies[L - 1] = bst_model_movie_index(m, movie_ids[n - 1]);
    return hist;
}

size_t bst_model_num_params(const BstModel *m)
{
    return m->params.size;
}

/* ------------------------------------------------------------- activations */

/*
 * The window shares of a training step (bst_forward's region after the
 * fold) sum the transformer block's parameter gradients into sums of their
 * own (share_grads): the LayerNorms' gains and shifts, the feed-forward's
 * weights and bias, and bo, share_grad_floats each.  At most
 * BST_WINDOW_SHARES_MAX shares whatever the thread count, and their sums take
 * at most as many floats as the batch's sequence (N * L * d, one of the
 * several dozen buffers of that size): a share then has at least as many
 * rows as its d x d sum has rows, and a wide model's sums cannot outgrow
 * its activations.  Fewer than 2 affordable: no sums of their own, and
 * the parameters' sums run over every row after the region, split by
 * columns (window_shares 0).
 */
static size_t share_grad_floats(const BstConfig *c)
{
    const size_t d = (size_t)c->embed_dim;
    return d * d + 6 * d;
}

static int window_shares(const BstConfig *c, size_t N)
{
    const size_t fit = N * (size_t)c->seq_len * (size_t)c->embed_dim / share_grad_floats(c);
    const size_t n = fit < BST_WINDOW_SHARES_MAX ? fit : BST_WINDOW_SHARES_MAX;
    return n >= 2 ? (int)n : 0;
}

/* The most shares a training step's regions split a batch into: the
 * window shares', or BST_WINDOW_SHARES_MAX when their sums did not fit. */
static int step_shares(const BstActs *a)
{
    return a->window_shares ? a->window_shares : BST_WINDOW_SHARES_MAX;
}

/* The MLP's parameter gradients, in a share's own sums (the shares after
 * the first, which sums into the gradients themselves): each product's
 * weights and bias, the output's last. */
static size_t mlp_share_floats(const BstConfig *c)
{
    size_t n = 0;
    int in = bst_config_mlp_input(c);
    for (int i = 0; i < c->n_hidden; i++) {
        n += (size_t)in * c->hidden[i] + c->hidden[i];
        in = c->hidden[i];
    }
    return n + (size_t)in + 1;
}

/* The fold's and the movies' parameter gradients, in a share's own sums
 * (movie_share_backward, FoldGrads): fold_w's and fold_b's, the positions'
 * projections' (pqv's L rows), the positions' and the rating weights'
 * (L rows of d, as dpos), and the genre Dense's weights and bias. */
static size_t fold_share_floats(const BstConfig *c)
{
    const size_t d = (size_t)c->embed_dim, n2 = 2 * (size_t)c->heads * d;
    const size_t L = (size_t)c->seq_len, G = (size_t)c->n_genres;
    return d * n2 + n2 + L * n2 + L * d + (G ? (d + G) * d + d : 0);
}

/* Activations are carved packed (carve.h), so that an inference slab is
 * exactly max_batch times that of one window (model.h); aligning each
 * buffer's start measured no faster in training (bench_epoch, 1 thread,
 * every slab on a cache line or not, alternated), whose products pack
 * their operands anyway. */
static void acts_layout_buffers(BstActs *a, const BstConfig *c, size_t N, BstActsKind kind,
                                Carver *cv)
{
    const size_t L = (size_t)c->seq_len, d = (size_t)c->embed_dim, H = (size_t)c->heads;
    const size_t hd = H * d, bld = N * L * d;
    /* Masks and statistics: read by the backward only, and without a
     * gradient of their own.  Indices: written by every forward. */
    const int backward_reads = kind == BST_ACTS_TRAINING;
    const int fwd = kind != BST_ACTS_GRADIENTS;
    /* Inference dropout is the identity: its output is its input's buffer
     * (dropout_forward is in-place safe). */
    const int infer = kind == BST_ACTS_INFERENCE;
    const size_t G = (size_t)c->n_genres;

    /* The per-row genre layer and x have no gradient buffers: training's
     * backward goes through the distinct movies' (below). */
    a->gin = G && fwd ? carve_packed(cv, N * L * (d + G)) : NULL;
    a->gpre = G && fwd ? carve_packed(cv, bld) : NULL;
    a->enc = carve_packed(cv, bld);
    a->x = fwd ? carve_packed(cv, bld) : NULL;
    a->qkv = carve_packed(cv, N * L * 3 * hd);
    a->probs = carve_packed(cv, N * H * L * L);
    a->probs_mask = backward_reads ? carve_packed(cv, N * H * L * L) : NULL;
    /* Training's backward reads the output's gradient for every head's context. */
    a->ctx = kind != BST_ACTS_GRADIENTS ? carve_packed(cv, N * L * hd) : NULL;
    a->attn = carve_packed(cv, bld);
    a->attn_mask = backward_reads ? carve_packed(cv, bld) : NULL;
    a->res1 = infer ? a->attn : carve_packed(cv, bld);
    a->x1 = carve_packed(cv, bld);
    a->ln1_mean = backward_reads ? carve_packed(cv, N * L) : NULL;
    a->ln1_rstd = backward_reads ? carve_packed(cv, N * L) : NULL;
    a->ffn_in = carve_packed(cv, bld);
    a->ffn = carve_packed(cv, bld);
    a->ffn_mask = backward_reads ? carve_packed(cv, bld) : NULL;
    a->res2 = infer ? a->ffn : carve_packed(cv, bld);
    a->y = carve_packed(cv, bld);
    a->ln2_mean = backward_reads ? carve_packed(cv, N * L) : NULL;
    a->ln2_rstd = backward_reads ? carve_packed(cv, N * L) : NULL;
    a->mlp_in = carve_packed(cv, N * (size_t)bst_config_mlp_input(c));
    for (int i = 0; i < c->n_hidden; i++) {
        size_t u = (size_t)c->hidden[i];
        a->h[i] = carve_packed(cv, N * u);
        a->bn_mean[i] = backward_reads ? carve_packed(cv, u) : NULL;
        a->bn_var[i] = backward_reads ? carve_packed(cv, u) : NULL;
        a->bn_share_mean[i] = backward_reads ? carve_packed(cv, BST_WINDOW_SHARES_MAX * u) : NULL;
        a->bn_share_m2[i] = backward_reads ? carve_packed(cv, BST_WINDOW_SHARES_MAX * u) : NULL;
        a->bn_share_sum_g[i] =
            kind == BST_ACTS_GRADIENTS ? carve_packed(cv, BST_WINDOW_SHARES_MAX * u) : NULL;
        a->bn_share_sum_gx[i] =
            kind == BST_ACTS_GRADIENTS ? carve_packed(cv, BST_WINDOW_SHARES_MAX * u) : NULL;
        a->bn[i] = carve_packed(cv, N * u);
        a->act[i] = carve_packed(cv, N * u);
        a->drop_mask[i] = backward_reads ? carve_packed(cv, N * u) : NULL;
        a->drop[i] = infer ? a->act[i] : carve_packed(cv, N * u);
    }
    a->pred = carve_packed(cv, N);
    /* Index buffers: int32 in float-sized slots of the same slab. */
    a->user_idx = fwd ? (int32_t *)carve_packed(cv, N) : NULL;
    a->feat_idx = fwd ? (int32_t *)carve_packed(cv, N * BST_N_USER_FEATS) : NULL;
    a->target_idx = fwd ? (int32_t *)carve_packed(cv, N) : NULL;

    /* Training's distinct movies: values in training instances, their
     * gradients in gradient instances (bst_forward says why). */
    const int distinct_rows = kind != BST_ACTS_INFERENCE;
    const size_t NL = N * L;
    a->ugin = distinct_rows && G ? carve_packed(cv, NL * (d + G)) : NULL;
    a->ugpre = distinct_rows && G ? carve_packed(cv, NL * d) : NULL;
    a->uenc = distinct_rows ? carve_packed(cv, NL * d) : NULL;
    a->uqv = distinct_rows ? carve_packed(cv, NL * 2 * hd) : NULL;
    a->pqv = distinct_rows ? carve_packed(cv, L * 2 * hd) : NULL;
    a->dpos = kind == BST_ACTS_GRADIENTS ? carve_packed(cv, L * d) : NULL;
    a->fold_w = distinct_rows ? carve_packed(cv, d * 2 * hd) : NULL;
    a->fold_b = distinct_rows ? carve_packed(cv, 2 * hd) : NULL;
    a->window_shares = distinct_rows ? window_shares(c, N) : 0;
    a->share_grads = kind == BST_ACTS_GRADIENTS && a->window_shares
                         ? carve_packed(cv, (size_t)a->window_shares * share_grad_floats(c))
                         : NULL;
}

/*
 * A training step's partial sums, those of shares 1.. of the MLP's and of
 * the fold's parameter gradients, are kept where they take at most half of
 * a gradient instance's other buffers (Keras's model: 7 x (96,513 +
 * 25,172) floats against 2.1 million).  Then each window share also
 * encodes and projects its own windows' distinct movies (share_movies),
 * and the MLP runs by shares; else the batch's distinct movies are
 * encoded once, and the MLP runs layer by layer, its parameters' sums
 * split by columns.  Training and gradient instances decide alike, from
 * the configuration and N alone.
 */
static int step_sums_fit(const BstConfig *c, size_t N)
{
    BstActs g;
    Carver cv = {NULL, 0};
    acts_layout_buffers(&g, c, N, BST_ACTS_GRADIENTS, &cv);
    const size_t sums =
        (size_t)(step_shares(&g) - 1) * (mlp_share_floats(c) + fold_share_floats(c));
    return 2 * sums <= cv.used;
}

/* Each share's own slot_of_movie where shares have movies of their own. */
static size_t movie_scratch(const BstActs *a, const BstConfig *c)
{
    return ((size_t)c->n_movies + 1) * (size_t)(a->share_movies ? step_shares(a) : 1);
}

static void acts_layout(BstActs *a, const BstConfig *c, size_t N, BstActsKind kind, Carver *cv)
{
    acts_layout_buffers(a, c, N, kind, cv);
    a->share_movies = kind != BST_ACTS_INFERENCE && step_sums_fit(c, N);
    const int sums = kind == BST_ACTS_GRADIENTS && a->share_movies;
    const size_t partials = (size_t)(step_shares(a) - 1);
    a->mlp_share_grads = sums ? carve_packed(cv, partials * mlp_share_floats(c)) : NULL;
    a->movie_share_grads = sums ? carve_packed(cv, partials * fold_share_floats(c)) : NULL;

    /* Training's index lists: int32 in float-sized slots.  A share's
     * rows_start has one entry more than its rows (movie_shares). */
    const int lists = kind == BST_ACTS_TRAINING;
    const size_t NL = N * (size_t)c->seq_len;
    a->slot = lists ? (int32_t *)carve_packed(cv, NL) : NULL;
    a->distinct = lists ? (int32_t *)carve_packed(cv, NL) : NULL;
    a->rows_start = lists ? (int32_t *)carve_packed(cv, NL + BST_WINDOW_SHARES_MAX + 1) : NULL;
    a->rows = lists ? (int32_t *)carve_packed(cv, NL) : NULL;
    a->slot_of_movie = lists ? (int32_t *)carve_packed(cv, movie_scratch(a, c)) : NULL;
}

int32_t bst_windows_within(size_t budget, size_t per_window, int32_t seq_len, int32_t max_batch)
{
    const size_t fits = budget / per_window;
    int32_t batch = fits < (size_t)max_batch ? (int32_t)fits : max_batch;
    /* Rows of positions stay well inside the layers' int sizes. */
    const int32_t positions_fit = BST_MAX_BATCH_POSITIONS / seq_len;
    batch = positions_fit < batch ? positions_fit : batch;
    return batch > 1 ? batch : 1;
}

int32_t bst_attention_batch_limit(const BstConfig *cfg, int32_t batch)
{
    const int64_t per_window = (int64_t)cfg->heads * cfg->seq_len * cfg->seq_len;
    const int64_t fits = BST_MAX_ATTENTION_SCORES / per_window;
    return (int32_t)(fits < batch ? fits : batch);
}

static int acts_kind_valid(BstActsKind kind)
{
    return kind == BST_ACTS_TRAINING || kind == BST_ACTS_GRADIENTS || kind == BST_ACTS_INFERENCE;
}

size_t bst_acts_memory_bytes(const BstConfig *cfg, int32_t max_batch, BstActsKind kind)
{
    if (max_batch < 1 || !acts_kind_valid(kind))
        return 0;
    BstActs a;
    Carver cv = {NULL, 0};
    acts_layout(&a, cfg, (size_t)max_batch, kind, &cv);
    return cv.used * sizeof(float);
}

int bst_acts_alloc(BstActs *a, const BstConfig *cfg, int32_t max_batch, BstActsKind kind)
{
    memset(a, 0, sizeof(*a));
    /* Bounds rows (B*L) well inside BLAS's int dimensions and keeps every
     * buffer size far from size_t overflow. */
    if (!acts_kind_valid(kind) || max_batch < 1 ||
        (int64_t)max_batch * cfg->seq_len > BST_MAX_BATCH_POSITIONS ||
        bst_attention_batch_limit(cfg, max_batch) < max_batch)
        return -1;
    Carver cv = {NULL, 0};
    acts_layout(a, cfg, (size_t)max_batch, kind, &cv);
    float *slab = bst_alloc_zero(cv.used, sizeof(float));
    if (!slab)
        return -1;
    cv.base = slab;
    cv.used = 0;
    acts_layout(a, cfg, (size_t)max_batch, kind, &cv);
    if (a->slot_of_movie)
        for (size_t m = 0; m < movie_scratch(a, cfg); m++)
            a->slot_of_movie[m] = -1;
    a->slab = slab;
    a->max_batch = max_batch;
    a->kind = kind;
    return 0;
}

void bst_acts_free(BstActs *a)
{
    bst_free(a->slab);
    memset(a, 0, sizeof(*a));
}

/* ------------------------------------------------------- forward/backward */

/*
 * The distinct movies of windows [w0, w1) (a share's, or the batch's):
 * each position's slot among them (-1 for padding), the movies in the
 * order first seen (distinct, from row r0 = w0 L), and each one's
 * positions in increasing order, counted from r0 (rows, from row r0, and
 * rows_start: a counting sort by slot, rows_start counts, then serves as
 * the cursor, then is shifted back).  slot_of_movie: all -1, and so left.
 * Returns their number.
 */
static int32_t distinct_movies(BstActs *a, const BstBatch *b, int L, int32_t movie_rows,
                               size_t w0, size_t w1, int32_t *slot_of_movie, int32_t *rows_start)
{
    const size_t r0 = w0 * L, r1 = w1 * L;
    int32_t *slot = a->slot, *distinct = a->distinct + r0, *rows = a->rows + r0;
    int32_t n = 0;
    for (size_t row = r0; row < r1; row++) {
        if ((int)(row % L) < bst_first_valid(b->hist_len, row / L, L)) {
            slot[row] = -1;
            continue;
        }
        const int32_t movie = bst_row_or_zero(b->movies[row], movie_rows);
        if (slot_of_movie[movie] < 0) {
            slot_of_movie[movie] = n;
            distinct[n++] = movie;
        }
        slot[row] = slot_of_movie[movie];
    }
    for (int32_t u = 0; u < n; u++)
        slot_of_movie[distinct[u]] = -1;
    memset(rows_start, 0, ((size_t)n + 1) * sizeof(int32_t));
    for (size_t row = r0; row < r1; row++)
        if (slot[row] >= 0)
            rows_start[slot[row] + 1]++;
    for (int32_t u = 0; u < n; u++)
        rows_start[u + 1] += rows_start[u];
    for (size_t row = r0; row < r1; row++)
        if (slot[row] >= 0)
            rows[rows_start[slot[row]]++] = (int32_t)(row - r0);
    for (int32_t u = n; u > 0; u--)
        rows_start[u] = rows_start[u - 1];
    rows_start[0] = 0;
    return n;
}

/*
 * Movies [at, at + n) of the distinct lists: their encodings (the
 * embedding, or Dense+ReLU over [embedding | genres]) and their fused
 * projections, uqv = uenc fold_w.
 */
static void movies_forward(const BstModel *m, BstActs *a, size_t at, int n)
{
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const int d = c->embed_dim, G = c->n_genres;
    const int32_t movie_rows = c->n_movies + 1;
    float *uenc = a->uenc + at * d;
    if (G > 0) {
        float *ugin = a->ugin + at * (d + G), *ugpre = a->ugpre + at * d;
        embedding_forward(ugin, d + G, a->distinct + at, p->movie_emb, movie_rows, n, d);
        embedding_forward(ugin + d, d + G, a->distinct + at, m->movie_genres, movie_rows, n, G);
        linear_forward(ugpre, ugin, p->genre_w, p->genre_b, n, d + G, d);
        leaky_relu_forward(uenc, ugpre, (size_t)n * d, 0.0f);
    } else {
        embedding_forward(uenc, d, a->distinct + at, p->movie_emb, movie_rows, n, d);
    }
    fold_projection_forward(a->uqv + at * 2 * c->heads * d, uenc, a->fold_w, n, d, c->heads);
}

/*
 * Windows [w0, w1) of share s (share_movies): their own distinct movies,
 * encoded and projected (movies_forward) from row w0 L of the lists, so
 * that the rows that read them, and the backward's sums over them
 * (movie_share_backward), stay in this core's cache.  (One list for the
 * batch, split by columns or by movies, had each core read and rewrite
 * rows the other wrote, at some 500 ns a line on a 2-vCPU VM:
 * test/c/bench_cores.)  Movies in two shares are encoded twice: some 12%
 * more of the fold's products on ML-1M's batches of 265 in 2 shares.
 */
static void share_movies_forward(const BstModel *m, BstActs *a, const BstBatch *b, size_t w0,
                                 size_t w1, int s)
{
    const BstConfig *c = &m->cfg;
    const size_t at = w0 * (size_t)c->seq_len;
    int32_t *scratch = a->slot_of_movie + (size_t)s * (c->n_movies + 1);
    const int32_t n = distinct_movies(a, b, c->seq_len, c->n_movies + 1, w0, w1, scratch,
                                      a->rows_start + at + s);
    movies_forward(m, a, at, n);
    a->movie_share_w0[s] = (int32_t)w0;
    a->movie_share_w1[s] = (int32_t)w1;
    a->movie_share_n[s] = n;
}

/*
 * Training's transformer block after the fold, window by window.  Each
 * step from the sequence x to the MLP's input is row by row, so a thread
 * can run all of them on its share of the windows, one parallel region for
 * the whole chain, and in blocks of WINDOW_BLOCK windows, all the steps on
 * one block before the next: a block's rows stay in its core's L2 cache
 * from step to step, and no thread waits for another between steps.
 * (Split step by step over the whole batch, each step read its rows back
 * from memory or the other core's cache, at some 500 ns a line on a 2-vCPU
 * VM, and the steps' waits added up: two threads took 1.5-2.6 times their
 * half of one thread's time on these loops, test/c/bench_regions.)  The
 * steps are the same functions, called on the block's rows (nested in the
 * region, they run in its thread), and the dropout masks are drawn by
 * position in the batch (row0 and window0 in layers.h): a block starts at
 * an even window (WINDOW_GRAIN), and every block draws the step's keys
 * from its own copy of the generator, so that the bits do not depend on
 * the blocks or the threads.
 */
#define WINDOW_GRAIN 2
#define WINDOW_BLOCK 32
static size_t g_window_block = WINDOW_BLOCK;

void bst_set_window_block(int windows)
{
    g_window_block = windows <= 0 ? WINDOW_BLOCK : (size_t)(windows + (windows & 1));
}

/* The block's forward FLOPs after the fold, roughly (whether to split). */
static double window_forward_flops(const BstConfig *c, int B)
{
    const double rows = (double)B * c->seq_len, d = c->embed_dim, H = c->heads;
    return rows * (2.0 * d * d + 4.0 * H * c->seq_len * d + 30.0 * d + 4.0 * H * d);
}

/* Windows [w0, w1) from the sequence to the MLP's input; their movies are
 * the U of the distinct lists from row at. */
static void windows_forward(const BstModel *m, BstActs *a, const BstBatch *b, size_t w0,
                            size_t w1, BstRng *drop, size_t at, int U)
{
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const int L = c->seq_len, d = c->embed_dim, H = c->heads;
    const int hd = H * d, in0 = bst_config_mlp_input(c);
    const int n = (int)(w1 - w0), rows = n * L;
    const size_t r0 = w0 * (size_t)L, o = r0 * d, HLL = (size_t)H * L * L;
    const float pd = c->dropout;
    const float *ratings = b->ratings + w0 * (size_t)(L - 1);
    const int32_t *hist_len = b->hist_len ? b->hist_len + w0 : NULL;
    float *qv = a->qkv + r0 * 2 * hd, *ctx = a->ctx + r0 * hd;

    /* Padding rows (slot -1) read slot 0; sequence_forward zeroes them. */
    embedding_forward(a->enc + o, d, a->slot + r0, a->uenc + at * d, U, rows, d);
    sequence_forward(a->x + o, a->enc + o, ratings, p->pos_emb,
                     c->rating_add ? p->rating_w : NULL, hist_len, n, L, d);
    projection_forward(qv, a->uqv + at * 2 * hd, a->pqv, a->fold_b, a->slot + r0, ratings,
                       c->rating_add, n, L, 2 * hd);
    /* Self-attention; the values went through the output projection already. */
    attention_forward_folded(ctx, a->probs + w0 * HLL, a->probs_mask + w0 * HLL, qv, a->x + o,
                             hist_len, n, L, H, d, pd, drop, w0);
    heads_sum_forward(a->attn + o, ctx, p->bo, rows, H, d);
    /* x1 = LayerNorm(dropout(attn) + x), and the feed-forward's input. */
    residual_layernorm_forward(a->res1 + o, a->attn_mask + o, a->x1 + o, a->ln1_mean + r0,
                               a->ln1_rstd + r0, a->ffn_in + o, a->attn + o, a->x + o, p->ln1_g,
                               p->ln1_b, rows, d, pd, drop, r0, c->ln_eps, c->leaky_slope);
    /* Feed-forward block: y = LayerNorm(dropout(ffn) + x1). */
    linear_forward(a->ffn + o, a->ffn_in + o, p->ffn_w, p->ffn_b, rows, d, d);
    residual_layernorm_forward(a->res2 + o, a->ffn_mask + o, a->y + o, a->ln2_mean + r0,
                               a->ln2_rstd + r0, NULL, a->ffn + o, a->x1 + o, p->ln2_g, p->ln2_b,
                               rows, d, pd, drop, r0, c->ln_eps, 0.0f);
    /* The MLP's input: the flattened sequence, padding zeroed. */
    flatten_forward(a->mlp_in + w0 * (size_t)in0, in0, a->y + o, hist_len, n, L, d);
}

/* A thread's share of the windows (first its own movies, share_movies),
 * block by block; the block at window 0 leaves in *rng_after the
 * generator as the whole batch's steps left it. */
static void window_share_forward(const BstModel *m, BstActs *a, const BstBatch *b, size_t w0,
                                 size_t w1, const BstRng *rng, BstRng *rng_after)
{
    size_t at = 0;
    int n_movies = a->n_distinct;
    if (a->share_movies) {
        const int share = bst_team_thread();
        share_movies_forward(m, a, b, w0, w1, share);
        at = w0 * (size_t)m->cfg.seq_len;
        n_movies = a->movie_share_n[share];
        if (share == 0)
            a->movie_shares = bst_team_size();
    }
    for (size_t s = w0; s < w1; s += g_window_block) {
        BstRng r = rng ? *rng : (BstRng){{0}};
        windows_forward(m, a, b, s, s + g_window_block < w1 ? s + g_window_block : w1,
                        rng ? &r : NULL, at, n_movies);
        if (s == 0 && rng)
            *rng_after = r;
    }
}

/* Windows [w0, w1) back from the MLP input's gradient to the gradients of
 * the folded queries and values (da->qkv) and of x (da->res1); the
 * parameters' sums over every row are bst_backward's. */
static void windows_backward(const BstModel *m, const BstActs *a, BstActs *da, const BstBatch *b,
                             size_t w0, size_t w1)
{
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const int L = c->seq_len, d = c->embed_dim, H = c->heads;
    const int hd = H * d, in0 = bst_config_mlp_input(c);
    const int n = (int)(w1 - w0), rows = n * L;
    const size_t r0 = w0 * (size_t)L, o = r0 * d, HLL = (size_t)H * L * L;
    const int32_t *hist_len = b->hist_len ? b->hist_len + w0 : NULL;

    flatten_backward(da->y + o, da->mlp_in + w0 * (size_t)in0, in0, hist_len, n, L, d);
    /* Feed-forward block; x1 feeds both the branch and the residual. */
    residual_layernorm_backward(da->ffn + o, da->res2 + o, NULL, NULL, da->y + o, NULL, NULL, NULL,
                                a->res2 + o, a->ln2_mean + r0, a->ln2_rstd + r0, p->ln2_g,
                                a->ffn_mask + o, rows, d, 0.0f);
    linear_backward(da->ffn_in + o, NULL, NULL, da->ffn + o, a->ffn_in + o, p->ffn_w, rows, d, d);
    /* Attention block: x1's gradient from both of its uses, first. */
    residual_layernorm_backward(da->attn + o, da->res1 + o, NULL, NULL, da->x1 + o,
                                da->ffn_in + o, a->x1 + o, da->res2 + o, a->res1 + o,
                                a->ln1_mean + r0, a->ln1_rstd + r0, p->ln1_g, a->attn_mask + o,
                                rows, d, c->leaky_slope);
    /* The keys are x's rows: their gradient joins x's from the residual
     * (da->res1), which sequence_backward takes after. */
    attention_backward_folded(da->qkv + r0 * 2 * hd, da->res1 + o, da->probs + w0 * HLL,
                              da->attn + o, a->probs + w0 * HLL, a->probs_mask + w0 * HLL,
                              a->qkv + r0 * 2 * hd, a->x + o, n, L, H, d);
}

/* A share's parameter sums, in the order of share_grads' layout. */
typedef struct ShareGrads {
    float *ln2_g, *ln2_b, *ffn_w, *ffn_b, *ln1_g, *ln1_b, *bo;
} ShareGrads;

static ShareGrads share_grads(const BstConfig *c, float *base)
{
    const size_t d = (size_t)c->embed_dim;
    ShareGrads s;
    s.ln2_g = base;
    s.ln2_b = s.ln2_g + d;
    s.ffn_w = s.ln2_b + d;
    s.ffn_b = s.ffn_w + d * d;
    s.ln1_g = s.ffn_b + d;
    s.ln1_b = s.ln1_g + d;
    s.bo = s.ln1_b + d;
    return s;
}

/* Rows [r0, r0 + rows) of the transformer block's parameter gradients,
 * added to g, from the gradients windows_backward left. */
static void transformer_param_backward(const BstModel *m, const BstActs *a, const BstActs *da,
                                       ShareGrads g, size_t r0, int rows)
{
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const int d = c->embed_dim;
    const size_t o = r0 * d;
    residual_layernorm_backward(NULL, NULL, g.ln2_g, g.ln2_b, da->y + o, NULL, NULL, NULL,
                                a->res2 + o, a->ln2_mean + r0, a->ln2_rstd + r0, p->ln2_g,
                                a->ffn_mask + o, rows, d, 0.0f);
    linear_backward(NULL, g.ffn_w, g.ffn_b, da->ffn + o, a->ffn_in + o, p->ffn_w, rows, d, d);
    residual_layernorm_backward(NULL, NULL, g.ln1_g, g.ln1_b, da->x1 + o, da->ffn_in + o,
                                a->x1 + o, da->res2 + o, a->res1 + o, a->ln1_mean + r0,
                                a->ln1_rstd + r0, p->ln1_g, a->attn_mask + o, rows, d,
                                c->leaky_slope);
    linear_bias_backward(g.bo, da->attn + o, rows, d);
}

/* A share's sums of the fold's and the movies' parameter gradients. */
typedef struct FoldGrads {
    float *fold_w, *fold_b, *pqv, *pos, *rating_w, *genre_w, *genre_b;
} FoldGrads;

/* Share 0's are the gradients themselves (the fold's in da, the
 * parameters' in g); share s's, slot s - 1 of movie_share_grads, in
 * fold_share_floats' order. */
static FoldGrads fold_grads(const BstConfig *c, BstActs *da, BstParams *g, int share)
{
    if (share == 0)
        return (FoldGrads){da->fold_w, da->fold_b, da->pqv, g->pos_emb, g->rating_w, g->genre_w,
                           g->genre_b};
    const size_t d = (size_t)c->embed_dim, n2 = 2 * (size_t)c->heads * d;
    const size_t L = (size_t)c->seq_len, G = (size_t)c->n_genres;
    FoldGrads F;
    F.fold_w = da->movie_share_grads + (size_t)(share - 1) * fold_share_floats(c);
    F.fold_b = F.fold_w + d * n2;
    F.pqv = F.fold_b + n2;
    F.pos = F.pqv + L * n2;
    F.rating_w = F.pos + (L - 1) * d;
    F.genre_w = G ? F.pos + L * d : NULL;
    F.genre_b = G ? F.genre_w + (d + G) * d : NULL;
    return F;
}

/*
 * The movies of windows [w0, w1) back (a share's, or the batch's: n of
 * the distinct lists from row at = w0 L, their positions' counts from
 * starts): the rows' gradients of the folded queries and values
 * (da->qkv) into the movies' (da->uqv) and the positions' (pqv), and x's
 * (da->res1) into the movies' encodings (da->uenc; padding rows have
 * none, and add their zeros to slot 0), through the genre Dense where
 * there is one; the fold's and the parameters' gradients added to F
 * (whose fold_w and fold_b the caller zeroed; pqv is written).
 */
static void movies_backward(const BstModel *m, const BstActs *a, BstActs *da, const BstBatch *b,
                            size_t w0, size_t w1, const int32_t *starts, int n,
                            const FoldGrads *F)
{
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const int L = c->seq_len, d = c->embed_dim, H = c->heads, G = c->n_genres, n2 = 2 * H * d;
    const size_t at = w0 * L;
    const int windows = (int)(w1 - w0);
    const float *ratings = b->ratings + w0 * (L - 1);
    const int32_t *hist_len = b->hist_len ? b->hist_len + w0 : NULL;
    /* The rows count from the windows' first (distinct_movies). */
    projection_backward(da->uqv + at * n2, F->pqv, F->fold_b, da->qkv + at * n2, starts,
                        a->rows + at, n, ratings, c->rating_add, hist_len, windows, L, n2);
    fold_projection_backward(da->uenc + at * d, F->fold_w, da->uqv + at * n2, a->uenc + at * d,
                             a->fold_w, n, d, H);
    sequence_backward(da->enc + at * d, F->pos, c->rating_add ? F->rating_w : NULL,
                      da->res1 + at * d, ratings, hist_len, windows, L, d);
    embedding_backward(da->uenc + at * d, da->enc + at * d, d, a->slot + at, n, windows * L, d);
    if (G > 0) {
        leaky_relu_backward(da->ugpre + at * d, da->uenc + at * d, a->ugpre + at * d,
                            (size_t)n * d, 0.0f);
        linear_backward(da->ugin + at * (d + G), F->genre_w, F->genre_b, da->ugpre + at * d,
                        a->ugin + at * (d + G), p->genre_w, n, d + G, d);
    }
}

/* Movies [at, at + n) of the distinct lists: their encodings' gradients
 * (through the genre Dense's input where there is one) into their
 * embeddings' rows. */
static void movie_emb_backward(const BstModel *m, const BstActs *a, const BstActs *da,
                               BstParams *g, size_t at, int n)
{
    const int d = m->cfg.embed_dim, G = m->cfg.n_genres;
    const float *d_src = G > 0 ? da->ugin + at * (d + G) : da->uenc + at * d;
    embedding_backward(g->movie_emb, d_src, G > 0 ? d + G : d, a->distinct + at,
                       m->cfg.n_movies + 1, n, d);
}

/* Movie share fs back (share_movies_forward, movies_backward), into its
 * sums (fold_grads, zeroed here).  The movie embeddings' rows are
 * movie_shares_backward's, in share order. */
static void movie_share_backward(const BstModel *m, const BstActs *a, BstActs *da, BstParams *g,
                                 const BstBatch *b, int fs)
{
    const BstConfig *c = &m->cfg;
    const int n2 = 2 * c->heads * c->embed_dim;
    const size_t w0 = (size_t)a->movie_share_w0[fs], at = w0 * c->seq_len;
    const FoldGrads F = fold_grads(c, da, g, fs);
    if (fs > 0) {
        memset(F.fold_w, 0, fold_share_floats(c) * sizeof(float));
    } else {
        memset(F.fold_w, 0, (size_t)c->embed_dim * n2 * sizeof(float));
        memset(F.fold_b, 0, (size_t)n2 * sizeof(float));
    }
    movies_backward(m, a, da, b, w0, (size_t)a->movie_share_w1[fs], a->rows_start + at + fs,
                    a->movie_share_n[fs], &F);
}

/*
 * After the backward's region: the movie shares it did not run (those
 * whose windows its shares split otherwise), then shares 1..'s sums
 * added to share 0's and the movies' encodings' gradients into their
 * embeddings' rows, in share order.
 */
static void movie_shares_backward(const BstModel *m, const BstActs *a, BstActs *da, BstParams *g,
                                  const BstBatch *b)
{
    const BstConfig *c = &m->cfg;
    const int L = c->seq_len, d = c->embed_dim, G = c->n_genres, n2 = 2 * c->heads * d;
    const int shares = a->movie_shares;
    int undone = 0;
    for (int s = 0; s < shares; s++)
        undone += !da->movie_share_done[s];
    if (undone)
        PARALLEL_FOR((size_t)shares, 1, 2.0 * window_forward_flops(c, b->n), s0, s1,
                     for (size_t s = s0; s < s1; s++) if (!da->movie_share_done[s])
                         movie_share_backward(m, a, da, g, b, (int)s));
    const FoldGrads into = fold_grads(c, da, g, 0);
    const int pqv_rows = c->rating_add ? L : L - 1;
    for (int s = 1; s < shares; s++) {
        const FoldGrads part = fold_grads(c, da, g, s);
        add_inplace(into.fold_w, part.fold_w, (size_t)d * n2);
        add_inplace(into.fold_b, part.fold_b, (size_t)n2);
        add_inplace(into.pqv, part.pqv, (size_t)pqv_rows * n2);
        add_inplace(into.pos, part.pos, (size_t)(L - 1) * d);
        if (c->rating_add)
            add_inplace(into.rating_w, part.rating_w, (size_t)d);
        if (G > 0) {
            add_inplace(into.genre_w, part.genre_w, (size_t)(d + G) * d);
            add_inplace(into.genre_b, part.genre_b, (size_t)d);
        }
    }
    for (int s = 0; s < shares; s++) {
        movie_emb_backward(m, a, da, g, (size_t)a->movie_share_w0[s] * L, a->movie_share_n[s]);
        da->movie_share_done[s] = 0;
    }
}

/*
 * The share's rows back, block by block, each block's parameter sums added
 * to the share's own (da->share_grads, slot bst_team_thread()): the sums
 * read only the share's rows, which no other core then reads, so that the
 * next step's writes to them find them in this core's cache alone
 * (test/c/bench_cores: a batch rewritten after the other core read it).
 * Without share sums (window_shares 0), the rows alone.  *team: the
 * number of shares (the region's threads), for the sums' reduction.
 */
static void window_share_backward(const BstModel *m, const BstActs *a, BstActs *da, BstParams *gp,
                                  const BstBatch *b, size_t w0, size_t w1, int *team)
{
    const BstConfig *c = &m->cfg;
    const int L = c->seq_len;
    float *base = da->share_grads
                      ? da->share_grads + (size_t)bst_team_thread() * share_grad_floats(c)
                      : NULL;
    ShareGrads g = {0};
    if (base) {
        g = share_grads(c, base);
        memset(base, 0, share_grad_floats(c) * sizeof(float));
    }
    for (size_t s = w0; s < w1; s += g_window_block) {
        const size_t e = s + g_window_block < w1 ? s + g_window_block : w1;
        windows_backward(m, a, da, b, s, e);
        if (base)
            transformer_param_backward(m, a, da, g, s * (size_t)L, (int)(e - s) * L);
    }
    /* Its movies, where the forward's share had these windows. */
    const int share = bst_team_thread();
    if (a->share_movies && bst_team_size() == a->movie_shares &&
        (size_t)a->movie_share_w0[share] == w0 && (size_t)a->movie_share_w1[share] == w1) {
        movie_share_backward(m, a, da, gp, b, share);
        da->movie_share_done[share] = 1;
    }
    if (share == 0)
        *team = bst_team_size();
}

/* Shares of the batch's windows for a training step's regions: even, and
 * at most the window shares' count (BST_WINDOW_SHARES_MAX when their sums did
 * not fit). */
static size_t window_share_grain(int B, const BstActs *a)
{
    const size_t shares = (size_t)step_shares(a);
    size_t g = ((size_t)B + shares - 1) / shares;
    g += g & 1;
    return g < WINDOW_GRAIN ? WINDOW_GRAIN : g;
}

/* Rows of each of the team's shares of B windows at grain (bst_share). */
static void share_rows(size_t *rows, int B, size_t grain, int team)
{
    for (int s = 0; s < team; s++) {
        size_t lo, hi;
        bst_share((size_t)B, grain, s, team, &lo, &hi);
        rows[s] = hi - lo;
    }
}

/* Windows [w0, w1) of mlp_in's user columns, after the sequence's: the
 * user's id and feature embeddings (B: the batch, feat_idx's stride). */
static void user_inputs_forward(const BstModel *m, BstActs *a, int B, size_t w0, size_t w1)
{
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const int in0 = bst_config_mlp_input(c), n = (int)(w1 - w0);
    int col = c->seq_len * c->embed_dim;
    if (c->user_dim > 0) {
        embedding_forward(a->mlp_in + w0 * in0 + col, in0, a->user_idx + w0, p->user_emb,
                          c->n_users + 1, n, c->user_dim);
        col += c->user_dim;
    }
    for (int k = 0; k < BST_N_USER_FEATS; k++) {
        if (c->feat_dim[k] == 0)
            continue;
        embedding_forward(a->mlp_in + w0 * in0 + col, in0, a->feat_idx + (size_t)k * B + w0,
                          p->feat_emb[k], c->n_feat_values[k] + 1, n, c->feat_dim[k]);
        col += c->feat_dim[k];
    }
}

/* The hidden layers' dropout: each layer's rate (0: none) and key. */
typedef struct MlpDropout {
    float p[BST_MAX_HIDDEN];
    uint64_t key[BST_MAX_HIDDEN];
} MlpDropout;

/*
 * Training's MLP by window shares, as the transformer block's: stage 0
 * writes the share's user inputs into mlp_in and runs the first product,
 * stage i (1..n_hidden) hidden layer i-1's BatchNorm, activation and
 * dropout (its statistics combined from the shares' between the stages),
 * then the next product (the output's at the last stage); each hidden
 * product's rows also leave the share's statistics (slot
 * bst_team_thread()).  So each core reads only its own rows, and a
 * layer's three loops are one region.
 */
static void mlp_share_forward(const BstModel *m, BstActs *a, int B, int stage,
                              const MlpDropout *drop, size_t w0, size_t w1, int *team)
{
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const int in0 = bst_config_mlp_input(c), nh = c->n_hidden;
    const int n = (int)(w1 - w0);
    const float *in = a->mlp_in;
    int in_dim = in0;
    if (stage == 0) {
        user_inputs_forward(m, a, B, w0, w1);
    } else {
        const int i = stage - 1, u = c->hidden[i];
        batchnorm_activation_rows_forward(a->bn[i], a->act[i], a->drop[i], a->drop_mask[i],
                                          a->bn_mean[i], a->bn_var[i], a->h[i], p->bn_g[i],
                                          p->bn_b[i], u, c->bn_eps, c->leaky_slope, drop->p[i],
                                          drop->key[i], w0, w1);
        in = a->drop[i];
        in_dim = u;
    }
    if (stage < nh) {
        const int u = c->hidden[stage];
        const size_t slot = (size_t)bst_team_thread() * u;
        linear_forward(a->h[stage] + w0 * u, in + w0 * in_dim, p->mlp_w[stage], p->mlp_b[stage],
                       n, in_dim, u);
        batchnorm_share_stats_forward(a->bn_share_mean[stage] + slot,
                                      a->bn_share_m2[stage] + slot, a->h[stage], w0, w1, u);
    } else {
        linear_forward(a->pred + w0, in + w0 * in_dim, p->out_w, p->out_b, n, in_dim, 1);
    }
    if (bst_team_thread() == 0)
        *team = bst_team_size();
}

/* The forward FLOPs of stage `stage` (whether to split). */
static double mlp_stage_flops(const BstConfig *c, int B, int stage)
{
    const int in = stage ? c->hidden[stage - 1] : bst_config_mlp_input(c);
    const int out = stage < c->n_hidden ? c->hidden[stage] : 1;
    return (double)B * (2.0 * in * out + 10.0 * in + 4.0 * out);
}

static void mlp_forward_shares(const BstModel *m, BstActs *a, int B, BstRng *rng)
{
    const BstConfig *c = &m->cfg;
    const size_t grain = window_share_grain(B, a);
    MlpDropout drop;
    for (int i = 0; i < c->n_hidden; i++)
        drop.p[i] = dropout_key(c->dropout, rng, &drop.key[i]);
    for (int stage = 0; stage <= c->n_hidden; stage++) {
        int team = 1;
        PARALLEL_FOR((size_t)B, grain, mlp_stage_flops(c, B, stage), w0, w1,
                     mlp_share_forward(m, a, B, stage, &drop, w0, w1, &team));
        if (stage < c->n_hidden) {
            size_t rows[BST_WINDOW_SHARES_MAX];
            share_rows(rows, B, grain, team);
            batchnorm_combine_stats(a->bn_mean[stage], a->bn_var[stage],
                                    a->bn_share_mean[stage], a->bn_share_m2[stage], rows, team,
                                    (size_t)c->hidden[stage], c->hidden[stage]);
        }
    }
}

/* into += part, field by field. */
static void add_share_grads(ShareGrads into, ShareGrads part, size_t d)
{
    add_inplace(into.ln2_g, part.ln2_g, d);
    add_inplace(into.ln2_b, part.ln2_b, d);
    add_inplace(into.ffn_w, part.ffn_w, d * d);
    add_inplace(into.ffn_b, part.ffn_b, d);
    add_inplace(into.ln1_g, part.ln1_g, d);
    add_inplace(into.ln1_b, part.ln1_b, d);
    add_inplace(into.bo, part.bo, d);
}

/* A share's MLP parameter gradients: layer i's product at i, the output's
 * at n_hidden. */
typedef struct MlpGrads {
    float *w[BST_MAX_HIDDEN + 1], *b[BST_MAX_HIDDEN + 1];
} MlpGrads;

/* Share 0's are the gradients themselves; share s's, its own sums, in
 * mlp_share_floats' order. */
static MlpGrads mlp_grads(const BstConfig *c, BstParams *g, float *partials, int share)
{
    MlpGrads G;
    const int nh = c->n_hidden;
    if (share == 0) {
        for (int i = 0; i < nh; i++) {
            G.w[i] = g->mlp_w[i];
            G.b[i] = g->mlp_b[i];
        }
        G.w[nh] = g->out_w;
        G.b[nh] = g->out_b;
        return G;
    }
    float *at = partials + (size_t)(share - 1) * mlp_share_floats(c);
    int in = bst_config_mlp_input(c);
    for (int i = 0; i <= nh; i++) {
        const int out = i < nh ? c->hidden[i] : 1;
        G.w[i] = at;
        G.b[i] = at + (size_t)in * out;
        at = G.b[i] + out;
        in = out;
    }
    return G;
}

/*
 * Training's MLP backward by window shares (mlp_share_forward's stages in
 * reverse): stage j runs product j's backward on the share's rows (the
 * output's at j = n_hidden; hidden product j's after its BatchNorm's rows,
 * from the batch's sums combined between the stages), its parameters'
 * gradients summed into the share's own (mlp_grads: share 0's are the
 * gradients, share s's are slot s - 1 of mlp_share_grads, zeroed here);
 * then hidden layer j-1's dropout and activation backward and the
 * share's sums for its BatchNorm, or at stage 0 the transformer block's
 * backward on the same windows (window_share_backward).
 */
static void mlp_share_backward(const BstModel *m, const BstActs *a, BstActs *da, BstParams *g,
                               const BstBatch *b, int stage, size_t w0, size_t w1, int *team)
{
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const int B = b->n, nh = c->n_hidden, in0 = bst_config_mlp_input(c);
    const int n = (int)(w1 - w0), share = bst_team_thread();
    const int in_dim = stage ? c->hidden[stage - 1] : in0;
    const int out = stage < nh ? c->hidden[stage] : 1;
    const MlpGrads G = mlp_grads(c, g, da->mlp_share_grads, share);
    if (share > 0) {
        memset(G.w[stage], 0, (size_t)in_dim * out * sizeof(float));
        memset(G.b[stage], 0, (size_t)out * sizeof(float));
    }
    const float *d_out = da->pred, *w = p->out_w;
    if (stage < nh) {
        batchnorm_backward_rows(da->h[stage], da->bn[stage], a->h[stage], a->bn_mean[stage],
                                a->bn_var[stage], p->bn_g[stage], da->bn_share_sum_g[stage],
                                da->bn_share_sum_gx[stage], B, w0, w1, out, c->bn_eps);
        d_out = da->h[stage];
        w = p->mlp_w[stage];
    }
    float *d_in = stage ? da->drop[stage - 1] : da->mlp_in;
    const float *in = stage ? a->drop[stage - 1] : a->mlp_in;
    linear_backward(d_in + w0 * in_dim, G.w[stage], G.b[stage], d_out + w0 * out,
                    in + w0 * in_dim, w, n, in_dim, out);
    if (stage > 0) {
        const int i = stage - 1;
        const size_t o = w0 * in_dim, slot = (size_t)share * in_dim;
        leaky_relu_dropout_backward(da->act[i] + o, da->bn[i] + o, da->drop[i] + o,
                                    a->drop_mask[i] + o, a->bn[i] + o, (size_t)n * in_dim,
                                    c->leaky_slope);
        batchnorm_backward_sums(da->bn_share_sum_g[i] + slot, da->bn_share_sum_gx[i] + slot,
                                da->bn[i], a->h[i], a->bn_mean[i], a->bn_var[i], w0, w1, in_dim,
                                c->bn_eps);
        if (share == 0)
            *team = bst_team_size();
    } else {
        window_share_backward(m, a, da, g, b, w0, w1, team);
    }
}

/* The backward FLOPs of stage `stage` (whether to split); stage 0 adds
 * the transformer block's. */
static double mlp_stage_backward_flops(const BstConfig *c, int B, int stage)
{
    return 2.0 * mlp_stage_flops(c, B, stage) + (stage ? 0.0 : 2.0 * window_forward_flops(c, B));
}

/* Shares 1.. of the MLP's stage `stage` gradients added to share 0's (the
 * gradients), in share order. */
static void mlp_add_shares(const BstConfig *c, BstParams *g, float *partials, int stage, int team)
{
    const MlpGrads into = mlp_grads(c, g, partials, 0);
    const size_t in = stage ? (size_t)c->hidden[stage - 1] : (size_t)bst_config_mlp_input(c);
    const size_t out = stage < c->n_hidden ? (size_t)c->hidden[stage] : 1;
    for (int s = 1; s < team; s++) {
        const MlpGrads part = mlp_grads(c, g, partials, s);
        add_inplace(into.w[stage], part.w[stage], in * out);
        add_inplace(into.b[stage], part.b[stage], out);
    }
}

/* Layer i's BatchNorm sums: shares 1.. added to share 0's, which become
 * the batch's, and its parameters' gradients. */
static void bn_add_shares(const BstConfig *c, BstActs *da, BstParams *g, int i, int team)
{
    const size_t u = (size_t)c->hidden[i];
    for (int s = 1; s < team; s++) {
        add_inplace(da->bn_share_sum_g[i], da->bn_share_sum_g[i] + s * u, u);
        add_inplace(da->bn_share_sum_gx[i], da->bn_share_sum_gx[i] + s * u, u);
    }
    add_inplace(g->bn_g[i], da->bn_share_sum_gx[i], u);
    add_inplace(g->bn_b[i], da->bn_share_sum_g[i], u);
}

float bst_forward(const BstModel *m, BstActs *a, const BstBatch *b, int training, BstRng *rng)
{
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const int B = b->n, L = c->seq_len, d = c->embed_dim, H = c->heads, G = c->n_genres;
    const int key_dim = d, hd = H * key_dim, BL = B * L;
    const int32_t movie_rows = c->n_movies + 1, user_rows = c->n_users + 1;
    const int in0 = bst_config_mlp_input(c);
    const size_t bld = (size_t)BL * d;
    const float pd = c->dropout;
    BstRng *drop_rng = training ? rng : NULL;

    /* Gradient instances have no indices; only a training instance holds
     * what a training forward writes for its backward. */
    if (B < 1 || B > a->max_batch || a->kind == BST_ACTS_GRADIENTS ||
        (training && a->kind != BST_ACTS_TRAINING))
        return NAN;
    for (int i = 0; i < B; i++) {
        const int32_t u = bst_row_or_zero(b->users ? b->users[i] : 0, user_rows);
        a->user_idx[i] = u;
        a->target_idx[i] = bst_row_or_zero(b->movies[(size_t)i * L + L - 1], movie_rows);
        for (int k = 0; k < BST_N_USER_FEATS; k++)
            a->feat_idx[(size_t)k * B + i] = m->user_feats[(size_t)u * BST_N_USER_FEATS + k];
    }

    /*
     * Movies: the embedding, or Dense+ReLU over [embedding | genres]; then
     * the sequence x and its fused projection x W + b.  Training encodes
     * and projects each distinct movie of the batch once (a batch of 265
     * ML-1M windows holds some 750 distinct movies in its 1060 positions),
     * and the positions once, and adds up each row's projection from
     * those (projection_forward): a row of x is linear in its movie's
     * encoding.  Inference keeps the per-row products, whose bits a stored
     * model's predictions have always had.
     */
    if (training) {
        attention_fold_forward(a->fold_w, a->fold_b, p->wqkv, p->bqkv, p->wo, d, H);
        /* The batch's distinct movies, or each share's in its region. */
        if (!a->share_movies) {
            a->n_distinct = distinct_movies(a, b, L, movie_rows, 0, (size_t)B, a->slot_of_movie,
                                            a->rows_start);
            movies_forward(m, a, 0, a->n_distinct);
        }
        fold_projection_forward(a->pqv, p->pos_emb, a->fold_w, L - 1, d, H);
        if (c->rating_add)
            fold_projection_forward(a->pqv + (size_t)(L - 1) * 2 * hd, p->rating_w, a->fold_w, 1,
                                    d, H);
        /* The rest of the transformer block is row by row: each thread runs
         * all of it on its share of the windows (window_share_forward). */
        BstRng rng_after;
        PARALLEL_FOR((size_t)B, window_share_grain(B, a),
                     window_forward_flops(c, B), w0, w1,
                     window_share_forward(m, a, b, w0, w1, drop_rng, &rng_after));
        if (drop_rng)
            *drop_rng = rng_after;
        if (a->share_movies) {
            a->n_distinct = 0;
            for (int s = 0; s < a->movie_shares; s++)
                a->n_distinct += a->movie_share_n[s];
        }
    } else {
        if (G > 0) {
            embedding_forward(a->gin, d + G, b->movies, p->movie_emb, movie_rows, BL, d);
            embedding_forward(a->gin + d, d + G, b->movies, m->movie_genres, movie_rows, BL, G);
            linear_forward(a->gpre, a->gin, p->genre_w, p->genre_b, BL, d + G, d);
            leaky_relu_forward(a->enc, a->gpre, bld, 0.0f);
        } else {
            embedding_forward(a->enc, d, b->movies, p->movie_emb, movie_rows, BL, d);
        }
        sequence_forward(a->x, a->enc, b->ratings, p->pos_emb,
                         c->rating_add ? p->rating_w : NULL, b->hist_len, B, L, d);
        linear_forward(a->qkv, a->x, p->wqkv, p->bqkv, BL, d, 3 * hd);
    }

    if (!training) {
        /* Self-attention block. */
        attention_forward_inference(a->ctx, a->probs, a->qkv, b->hist_len, B, L, H, key_dim);
        linear_forward(a->attn, a->ctx, p->wo, p->bo, BL, hd, d);
        /* x1 = LayerNorm(attn + x), and the feed-forward's input. */
        residual_layernorm_forward(a->res1, a->attn_mask, a->x1, a->ln1_mean, a->ln1_rstd,
                                   a->ffn_in, a->attn, a->x, p->ln1_g, p->ln1_b, BL, d, pd,
                                   NULL, 0, c->ln_eps, c->leaky_slope);
        /* Feed-forward block: y = LayerNorm(ffn + x1). */
        linear_forward(a->ffn, a->ffn_in, p->ffn_w, p->ffn_b, BL, d, d);
        residual_layernorm_forward(a->res2, a->ffn_mask, a->y, a->ln2_mean, a->ln2_rstd, NULL,
                                   a->ffn, a->x1, p->ln2_g, p->ln2_b, BL, d, pd, NULL, 0,
                                   c->ln_eps, 0.0f);
        /* MLP input: the flattened sequence, padding zeroed. */
        flatten_forward(a->mlp_in, in0, a->y, b->hist_len, B, L, d);
    }
    if (training) {
        /* The MLP by window shares (mlp_forward_shares). */
        mlp_forward_shares(m, a, B, drop_rng);
    } else {
        /* The user's embeddings, then the MLP. */
        user_inputs_forward(m, a, B, 0, (size_t)B);

        const float *in = a->mlp_in;
        int in_dim = in0;
        for (int i = 0; i < c->n_hidden; i++) {
            const int u = c->hidden[i];
            const size_t bu = (size_t)B * u;
            linear_forward(a->h[i], in, p->mlp_w[i], p->mlp_b[i], B, in_dim, u);
            batchnorm_forward_infer(a->bn[i], a->h[i], p->bn_g[i], p->bn_b[i],
                                    m->bn.moving_mean[i], m->bn.moving_var[i], B, u, c->bn_eps);
            leaky_relu_dropout_forward(a->act[i], a->drop[i], a->drop_mask[i], a->bn[i], bu,
                                       c->leaky_slope, pd, NULL);
            in = a->drop[i];
            in_dim = u;
        }
        linear_forward(a->pred, in, p->out_w, p->out_b, B, in_dim, 1);
    }
    if (c->use_bias)
        bias_forward(a->pred, p->global_bias, p->user_bias, p->movie_bias, a->user_idx,
                     a->target_idx, user_rows, movie_rows, B);
    if (c->n_factors > 0)
        factor_forward(a->pred, p->user_factors, p->movie_factors, a->user_idx, a->target_idx,
                       user_rows, movie_rows, B, c->n_factors);
    /* A rating outside the scale is never closer to the truth than the
     * scale's end: clipping can only lower the error.  Not in training,
     * where it would stop the gradient. */
    if (!training && c->rating_min < c->rating_max)
        for (int i = 0; i < B; i++)
            a->pred[i] = a->pred[i] < c->rating_min ? c->rating_min
                       : (a->pred[i] > c->rating_max ? c->rating_max : a->pred[i]);

    return b->targets ? mse_forward(a->pred, b->targets, B) : 0.0f;
}

void bst_update_bn_moving(BstModel *m, const BstActs *a)
{
    const BstConfig *c = &m->cfg;
    for (int i = 0; i < c->n_hidden; i++)
        batchnorm_update_moving(m->bn.moving_mean[i], m->bn.moving_var[i],
                                a->bn_mean[i], a->bn_var[i], c->hidden[i], c->bn_momentum);
}

void bst_backward(const BstModel *m, const BstActs *a, BstActs *da, BstParams *g,
                  const BstBatch *b)
{
    const BstConfig *c = &m->cfg;
    const BstParams *p = &m->params;
    const int B = b->n, L = c->seq_len, d = c->embed_dim, H = c->heads;
    const int key_dim = d, hd = H * key_dim, BL = B * L;
    const int32_t movie_rows = c->n_movies + 1, user_rows = c->n_users + 1;
    const int in0 = bst_config_mlp_input(c);
    const int nh = c->n_hidden;

    /* A gradient instance of another batch size has other shares' sums
     * (movie_share_backward writes slots by the forward's shares). */
    if (a->kind != BST_ACTS_TRAINING || da->kind != BST_ACTS_GRADIENTS ||
        da->max_batch != a->max_batch || B < 1 || B > a->max_batch)
        return;
    mse_backward(da->pred, a->pred, b->targets, B);
    if (c->use_bias)
        bias_backward(g->global_bias, g->user_bias, g->movie_bias, da->pred, a->user_idx,
                      a->target_idx, user_rows, movie_rows, B);
    if (c->n_factors > 0)
        factor_backward(g->user_factors, g->movie_factors, da->pred, p->user_factors,
                        p->movie_factors, a->user_idx, a->target_idx, user_rows, movie_rows, B,
                        c->n_factors);

    int team = 1;
    if (da->mlp_share_grads) {
        /* The MLP and the transformer block by window shares, last layer
         * first (mlp_share_backward). */
        const size_t grain = window_share_grain(B, da);
        for (int stage = nh; stage >= 0; stage--) {
            team = 1;
            PARALLEL_FOR((size_t)B, grain, mlp_stage_backward_flops(c, B, stage), w0, w1,
                         mlp_share_backward(m, a, da, g, b, stage, w0, w1, &team));
            mlp_add_shares(c, g, da->mlp_share_grads, stage, team);
            if (stage > 0)
                bn_add_shares(c, da, g, stage - 1, team);
        }
    } else {
        /* MLP, last layer first; layer i reads drop[i-1] (or mlp_in for i = 0). */
        linear_backward(nh ? da->drop[nh - 1] : da->mlp_in, g->out_w, g->out_b, da->pred,
                        nh ? a->drop[nh - 1] : a->mlp_in, p->out_w, B,
                        nh ? c->hidden[nh - 1] : in0, 1);
        for (int i = nh - 1; i >= 0; i--) {
            const int u = c->hidden[i];
            const size_t bu = (size_t)B * u;
            leaky_relu_dropout_backward(da->act[i], da->bn[i], da->drop[i], a->drop_mask[i],
                                        a->bn[i], bu, c->leaky_slope);
            batchnorm_backward(da->h[i], g->bn_g[i], g->bn_b[i], da->bn[i], a->h[i],
                               a->bn_mean[i], a->bn_var[i], p->bn_g[i], B, u, c->bn_eps);
            linear_backward(i ? da->drop[i - 1] : da->mlp_in, g->mlp_w[i], g->mlp_b[i], da->h[i],
                            i ? a->drop[i - 1] : a->mlp_in, p->mlp_w[i], B,
                            i ? c->hidden[i - 1] : in0, u);
        }
        /* The transformer block's rows, each thread on its share of the
         * windows (window_share_backward). */
        PARALLEL_FOR((size_t)B, window_share_grain(B, da), 2.0 * window_forward_flops(c, B), w0,
                     w1, window_share_backward(m, a, da, g, b, w0, w1, &team));
    }

    /* The MLP input's user columns: back into the user's embeddings. */
    int col = L * d;
    if (c->user_dim > 0) {
        embedding_backward(g->user_emb, da->mlp_in + col, in0, a->user_idx, user_rows, B,
                           c->user_dim);
        col += c->user_dim;
    }
    for (int k = 0; k < BST_N_USER_FEATS; k++) {
        if (c->feat_dim[k] == 0)
            continue;
        embedding_backward(g->feat_emb[k], da->mlp_in + col, in0, a->feat_idx + (size_t)k * B,
                           c->n_feat_values[k] + 1, B, c->feat_dim[k]);
        col += c->feat_dim[k];
    }

    /* The sums over every row that make the transformer block's parameters'
     * gradients: the shares' own, in share order, or all rows at once. */
    const ShareGrads into = {g->ln2_g, g->ln2_b, g->ffn_w, g->ffn_b, g->ln1_g, g->ln1_b, g->bo};
    if (da->share_grads) {
        for (int s = 0; s < team; s++)
            add_share_grads(into, share_grads(c, da->share_grads + s * share_grad_floats(c)),
                            (size_t)d);
    } else {
        transformer_param_backward(m, a, da, into, 0, BL);
    }

    /* The fused projection, as the forward built it: through the distinct
     * movies' projections (each share's, or the batch's) and the
     * positions'. */
    const int U = a->n_distinct, n2 = 2 * hd;
    if (a->share_movies) {
        movie_shares_backward(m, a, da, g, b);
    } else {
        const FoldGrads F = fold_grads(c, da, g, 0);
        memset(da->fold_w, 0, (size_t)d * n2 * sizeof(float));
        memset(da->fold_b, 0, (size_t)n2 * sizeof(float));
        movies_backward(m, a, da, b, 0, (size_t)B, a->rows_start, U, &F);
        movie_emb_backward(m, a, da, g, 0, U);
    }
    fold_projection_backward(da->dpos, da->fold_w, da->pqv, p->pos_emb, a->fold_w, L - 1, d, H);
    add_inplace(g->pos_emb, da->dpos, (size_t)(L - 1) * d);
    if (c->rating_add) {
        float *d_rating = da->dpos + (size_t)(L - 1) * d;
        fold_projection_backward(d_rating, da->fold_w, da->pqv + (size_t)(L - 1) * n2,
                                 p->rating_w, a->fold_w, 1, d, H);
        add_inplace(g->rating_w, d_rating, (size_t)d);
    }
    attention_fold_backward(g->wqkv, g->bqkv, g->wo, da->fold_w, da->fold_b, p->wqkv, p->bqkv,
                            p->wo, d, H);
}

/* -------------------------------------------------------------- prediction */

struct BstPredictor {
    const BstModel *model;
    BstActs acts;                 /* the sgemm path (unallocated when frozen) */
    BstFrozen *frozen;            /* the frozen path, or NULL */
};

int32_t bst_predictor_batch_limit(const BstConfig *cfg, int32_t max_batch)
{
    if (max_batch < 1)
        return 0;
    /* Inference activations are all per window (BST_ACTS_INFERENCE), so the
     * budget divides exactly. */
    const size_t per_window = bst_acts_memory_bytes(cfg, 1, BST_ACTS_INFERENCE);
    const int32_t batch = bst_windows_within(BST_PREDICTOR_MEMORY_BUDGET - sizeof(BstPredictor),
                                             per_window, cfg->seq_len, max_batch);
    /* bst_acts_alloc's attention limit; implied by the budget, but not by
     * its value. */
    const int32_t attention_fits = bst_attention_batch_limit(cfg, batch);
    return attention_fits > 1 ? attention_fits : 1;
}

size_t bst_predictor_memory_bytes(const BstConfig *cfg, int32_t max_batch)
{
    const int32_t batch = bst_predictor_batch_limit(cfg, max_batch);
    if (batch < 1)
        return 0;
    return sizeof(BstPredictor) + bst_acts_memory_bytes(cfg, batch, BST_ACTS_INFERENCE);
}

BstPredictor *bst_predictor_create(const BstModel *m, int32_t max_batch)
{
    /* Fewer windows per pass for long windows; bst_predict chunks anyway. */
    const int32_t batch = bst_predictor_batch_limit(&m->cfg, max_batch);
    if (batch < 1)
        return NULL;
    BstPredictor *p = bst_alloc(sizeof(BstPredictor));
    if (!p)
        return NULL;
    bst_threads_init();
    p->model = m;
    p->frozen = NULL;
    if (bst_acts_alloc(&p->acts, &m->cfg, batch, BST_ACTS_INFERENCE) != 0) {
        bst_free(p);
        return NULL;
    }
    return p;
}

size_t bst_predictor_frozen_memory_bytes(const BstConfig *cfg, int32_t max_batch,
                                         size_t table_budget)
{
    if (bst_infer_isa() == BST_ISA_NONE)
        return bst_predictor_memory_bytes(cfg, max_batch);
    if (max_batch < 1)
        return 0;
    return sizeof(BstPredictor) + bst_frozen_memory_bytes(cfg, max_batch, table_budget);
}

BstPredictor *bst_predictor_create_frozen(const BstModel *m, int32_t max_batch,
                                          size_t table_budget)
{
    if (bst_infer_isa() == BST_ISA_NONE)
        return bst_predictor_create(m, max_batch);
    if (max_batch < 1)
        return NULL;
    BstPredictor *p = bst_alloc(sizeof(BstPredictor));
    if (!p)
        return NULL;
    bst_threads_init();
    p->model = m;
    memset(&p->acts, 0, sizeof(p->acts));
    p->frozen = bst_frozen_create(m, max_batch, table_budget);
    if (!p->frozen) {
        bst_free(p);
        return NULL;
    }
    return p;
}

BstPredictorPath bst_predictor_path(const BstPredictor *p)
{
    if (!p->frozen)
        return BST_PREDICTOR_SGEMM;
    return bst_frozen_has_table(p->frozen) ? BST_PREDICTOR_TABLE : BST_PREDICTOR_DIRECT;
}

int32_t bst_predictor_batch(const BstPredictor *p)
{
    return p->frozen ? bst_frozen_batch(p->frozen) : p->acts.max_batch;
}

void bst_predict(BstPredictor *p, const BstBatch *b, float *out)
{
    const int L = p->model->cfg.seq_len;
    const int32_t batch = bst_predictor_batch(p);
    for (int32_t start = 0; start < b->n; start += batch) {
        int32_t n = b->n - start;
        if (n > batch)
            n = batch;
        BstBatch chunk = {
            .n = n,
            .movies = b->movies + (size_t)start * L,
            .ratings = b->ratings + (size_t)start * (L - 1),
            .targets = NULL,
            .hist_len = b->hist_len ? b->hist_len + start : NULL,
            .users = b->users ? b->users + start : NULL,
        };
        if (p->frozen) {
            bst_frozen_forward(p->frozen, &chunk, out + start);
            continue;
        }
        bst_forward(p->model, &p->acts, &chunk, 0, NULL);
        memcpy(out + start, p->acts.pred, (size_t)n * sizeof(float));
    }
}

int bst_predict_attention(BstPredictor *p, const BstBatch *b, float *out, float *attention)
{
    if (b->n != 1)
        return -1;
    bst_predict(p, b, out);
    /* probs is [N, H, L, L] (query, key); the target is the last query. */
    const int L = p->model->cfg.seq_len, H = p->model->cfg.heads;
    if (p->frozen) {
        memcpy(attention, bst_frozen_attention(p->frozen, 0), (size_t)H * L * sizeof(float));
        return 0;
    }
    for (int h = 0; h < H; h++)
        memcpy(attention + (size_t)h * L, p->acts.probs + ((size_t)h * L + (L - 1)) * L,
               (size_t)L * sizeof(float));
    return 0;
}

void bst_predictor_free(BstPredictor *p)
{
    if (!p)
        return;
    bst_frozen_free(p->frozen);
    bst_acts_free(&p->acts);
    bst_free(p);
}

/*
 * Writes the fuzzer's seed corpus: a few valid serialized models of the
 * current format, one file each, into the directory given as argv[1].
 *
 * Valid blobs are the useful seeds: the deserializer checks the size and the
 * CRC before anything else, so the fuzzer could hardly build a model that
 * loads from scratch.  The configurations differ in what the deserializer
 * and the forward pass branch on (vocabulary sizes, heads, hidden layers,
 * each optional input) and are kept tiny so that the blobs stay a few KB:
 * libFuzzer mutates small inputs much faster.  Weights are the random
 * initialisation, with the BatchNorm statistics moved off their defaults;
 * no training is needed to exercise the code.
 *
 * Built with the core sources at build time (test/fuzz/Makefile); the files
 * are not committed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "serialize.h"

typedef struct Seed {
    const char *name;
    BstConfig cfg;
} Seed;

static BstConfig small_config(int32_t n_movies, int32_t seq_len, int32_t heads, int32_t n_hidden)
{
    BstConfig c;
    bst_config_default(&c, n_movies, seq_len);
    c.heads = heads;
    c.n_hidden = n_hidden;
    for (int i = 0; i < n_hidden; i++)
        c.hidden[i] = 8 >> i;  /* 8, 4, 2, ... */
    return c;
}

static int write_seed(const char *dir, const Seed *s, uint64_t seed)
{
    const BstConfig *c = &s->cfg;
    int32_t *movie_ids = malloc((size_t)c->n_movies * sizeof(int32_t));
    int32_t *user_ids = malloc(((size_t)c->n_users + 1) * sizeof(int32_t));
    int32_t *user_feats = malloc(((size_t)c->n_users + 1) * BST_N_USER_FEATS * sizeof(int32_t));
    float *genres = malloc(((size_t)c->n_movies * c->n_genres + 1) * sizeof(float));
    if (!movie_ids || !user_ids || !user_feats || !genres) {
        perror("malloc");
        return 1;
    }
    /* Sparse, partly negative ids, as real vocabularies are not 1..n. */
    for (int32_t i = 0; i < c->n_movies; i++)
        movie_ids[i] = -5 + 7 * i;
    for (int32_t i = 0; i < c->n_users; i++)
        user_ids[i] = 1 + 3 * i;
    for (int32_t i = 0; i < c->n_users; i++)
        for (int k = 0; k < BST_N_USER_FEATS; k++)  /* 0 (unknown) included */
            user_feats[i * BST_N_USER_FEATS + k] = (i + k) % (c->n_feat_values[k] + 1);
    for (size_t i = 0; i < (size_t)c->n_movies * c->n_genres; i++)
        genres[i] = (float)((i * 7) % 3 == 0);
    BstVocab v = {movie_ids, c->n_users ? user_ids : NULL, c->n_users ? user_feats : NULL,
                  c->n_genres ? genres : NULL};
    BstModel *m = bst_model_create_vocab(c, &v, seed);
    if (!m) {
        fprintf(stderr, "gen_corpus: cannot create model %s\n", s->name);
        return 1;
    }
    for (size_t i = 0; i < m->bn.size; i++)
        m->bn.slab[i] += 0.25f * (float)(i % 3);
    size_t len = bst_model_serialized_size(m);
    unsigned char *buf = malloc(len);
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s.bin", dir, s->name);
    FILE *f = fopen(path, "wb");
    int rc = 0;
    if (!buf || !f) {
        perror(path);
        rc = 1;
    } else {
        bst_model_serialize(m, buf);
        if (fwrite(buf, 1, len, f) != len)
            rc = 1;
    }
    if (f && fclose(f) != 0)
        rc = 1;
    if (rc)
        fprintf(stderr, "gen_corpus: cannot write %s\n", path);
    free(buf);
    bst_model_free(m);
    free(movie_ids);
    free(user_ids);
    free(user_feats);
    free(genres);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    Seed seeds[8];
    int n = 0;

    /* The smallest model there is: one head, one movie of history, no MLP. */
    seeds[n] = (Seed){"tiny", small_config(3, 2, 1, 0)};
    seeds[n].cfg.embed_dim = 1;
    n++;
    /* The Keras network's shape, scaled down. */
    seeds[n++] = (Seed){"keras", small_config(12, 4, 3, 2)};
    /* Longer windows, more heads than the embedding width, a deep MLP. */
    seeds[n++] = (Seed){"long", small_config(6, 9, 4, 4)};
    /* Every optional input at once. */
    BstConfig all = small_config(8, 4, 2, 1);
    all.n_users = 5;
    all.user_dim = 2;
    all.n_feat_values[0] = 2;
    all.n_feat_values[1] = 7;
    all.n_feat_values[2] = 3;
    all.feat_dim[0] = 1;
    all.feat_dim[1] = 2;
    all.feat_dim[2] = 2;
    all.n_genres = 3;
    all.use_bias = 1;
    all.n_factors = 2;
    all.rating_add = 1;
    all.rating_min = 1.0f;
    all.rating_max = 5.0f;
    seeds[n++] = (Seed){"all_inputs", all};
    /* Users without features, the bias and factor terms, no MLP: the
     * output layer reads the sequence and the user embedding directly. */
    BstConfig mf = small_config(5, 3, 1, 0);
    mf.n_users = 3;
    mf.user_dim = 1;
    mf.use_bias = 1;
    mf.n_factors = 1;
    seeds[n++] = (Seed){"bias_factors", mf};
    /* Genres and additive ratings alone, with a clipping range. */
    BstConfig g = small_config(4, 3, 2, 1);
    g.n_genres = 2;
    g.rating_add = 1;
    g.rating_min = 0.5f;
    g.rating_max = 5.0f;
    seeds[n++] = (Seed){"genres", g};

    int rc = 0;
    for (int i = 0; i < n; i++)
        rc |= write_seed(argv[1], &seeds[i], 1000 + (uint64_t)i);
    return rc;
}

/*
 * libFuzzer harness for the model deserializer and prediction.
 *
 * The input is a model blob, as bst_models.weights stores it (anyone who can
 * write that table, or restore a dump, chooses these bytes).  Each input:
 *
 *   1. goes to bst_model_deserialize() as it is; when that fails, once
 *      more with its recorded size and CRC-32 rewritten to match (otherwise
 *      almost every mutation would stop at the checksum and the validation
 *      behind it would never be fuzzed); and when that fails too but the
 *      header holds a valid config, once more rebuilt to the size that config
 *      needs, with the input's bytes as the body and valid vocabularies (a
 *      mutated shape -- seq_len, heads, hidden layers, optional inputs --
 *      then loads and reaches the forward pass, which it could hardly do if
 *      the fuzzer had to get the length right too);
 *   2. when a model loads: it is written again, and that blob must load and
 *      serialize to the same bytes (whatever we store must load again), and
 *      it predicts a few windows derived from the input (long, short, out of
 *      vocabulary, unknown users), twice, with bit-identical results and no
 *      allocation;
 *   3. for one input in eight that loads, the same load and predictor set-up
 *      run again with the k-th allocation failing (k from the input): that
 *      must come back as "out of memory" or a NULL predictor, never a crash
 *      or a half-built model.
 *
 * The core allocates through a counting hook (bst_alloc.h); every buffer it
 * hands out must be freed by bst_model_free()/bst_predictor_free().
 * A broken invariant aborts, which libFuzzer reports like a crash and saves
 * the input.  Memory errors, leaks and undefined behaviour are reported by
 * the sanitizers.
 *
 * Reproduce a saved input: build/fuzz_model path/to/crash-...
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "bst_alloc.h"
#include "model.h"
#include "serialize.h"

#define FAIL(...)                                            \
    do {                                                     \
        fprintf(stderr, "fuzz_model: invariant broken: ");   \
        fprintf(stderr, __VA_ARGS__);                        \
        fputc('\n', stderr);                                 \
        abort();                                             \
    } while (0)

/* ------------------------------------------------------------ allocation */

static long g_calls;         /* allocations requested through the hook */
static long g_live;          /* allocated and not yet freed */
static long g_fail_at = -1;  /* the call that returns NULL, -1: none */

static void *hook_alloc(size_t n)
{
    if (g_calls++ == g_fail_at)
        return NULL;
    void *p = malloc(n);
    if (p)
        g_live++;
    return p;
}

static void hook_free(void *p)
{
    g_live--;
    free(p);
}

static void check_all_freed(const char *when)
{
    if (g_live != 0)
        FAIL("%ld core allocation(s) still live %s", g_live, when);
}

/* ------------------------------------------------------------- the input */

/* Deterministic choices derived from the input (FNV-1a, then splitmix64), so
 * that a saved crash reproduces and a mutation changes the windows too. */
typedef struct Choices {
    uint64_t state;
} Choices;

static void choices_init(Choices *c, const uint8_t *data, size_t size)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 1099511628211ull;
    c->state = h;
}

static uint64_t choose(Choices *c, uint64_t n)  /* in [0, n), n >= 1 */
{
    uint64_t z = (c->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (z ^ (z >> 31)) % n;
}

static void put_le(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/*
 * A copy whose total size (offset 12, u64) and trailing CRC-32 agree with
 * its length, so that only the rest of the header decides.  NULL when the
 * blob is too short to carry both.
 */
static uint8_t *with_valid_envelope(const uint8_t *data, size_t size)
{
    if (size < 24)
        return NULL;
    uint8_t *copy = malloc(size);
    if (!copy)
        return NULL;
    memcpy(copy, data, size);
    put_le(copy + 12, size, 8);
    uLong crc = crc32(crc32(0L, Z_NULL, 0), copy, (uInt)(size - 4));
    put_le(copy + size - 4, crc, 4);
    return copy;
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static float get_f32(const uint8_t *p)
{
    uint32_t v = get_le32(p);
    float f;
    memcpy(&f, &v, sizeof(f));
    return f;
}

/* The largest blob a rebuilt input may grow to: keeps every run fast. */
#define RESHAPE_MAX_BYTES (256u * 1024u)

/*
 * A blob of the size the header's config implies (layout in serialize.h):
 * the input's header with its sizes fixed, the input's remaining bytes
 * repeated as the body, strictly ascending vocabularies and in-range user
 * features.  NULL when the header is too short, its config invalid or the
 * blob would exceed RESHAPE_MAX_BYTES.
 */
static uint8_t *reshaped(const uint8_t *data, size_t size, size_t *len_out)
{
    if (size < 100)
        return NULL;
    const uint32_t version = get_le32(data + 4);
    if (version != 1 && version != 2)
        return NULL;
    const size_t header = version == 1 ? 100 : 156;
    if (size < header)
        return NULL;
    BstConfig c;
    memset(&c, 0, sizeof(c));
    const uint8_t *q = data + 20;
    c.n_movies = (int32_t)get_le32(q);
    c.embed_dim = (int32_t)get_le32(q + 4);
    c.seq_len = (int32_t)get_le32(q + 8);
    c.heads = (int32_t)get_le32(q + 12);
    c.n_hidden = (int32_t)get_le32(q + 16);
    for (int i = 0; i < BST_MAX_HIDDEN; i++)
        c.hidden[i] = (int32_t)get_le32(q + 20 + 4 * i);
    q += 20 + 4 * BST_MAX_HIDDEN;
    c.dropout = get_f32(q);
    c.leaky_slope = get_f32(q + 4);
    c.ln_eps = get_f32(q + 8);
    c.bn_eps = get_f32(q + 12);
    c.bn_momentum = get_f32(q + 16);
    if (version == 2) {
        q = data + 100;
        c.n_users = (int32_t)get_le32(q);
        c.user_dim = (int32_t)get_le32(q + 4);
        for (int k = 0; k < BST_N_USER_FEATS; k++) {
            c.n_feat_values[k] = (int32_t)get_le32(q + 8 + 4 * k);
            c.feat_dim[k] = (int32_t)get_le32(q + 20 + 4 * k);
        }
        c.n_genres = (int32_t)get_le32(q + 32);
        c.use_bias = (int32_t)get_le32(q + 36);
        c.n_factors = (int32_t)get_le32(q + 40);
        c.rating_min = get_f32(q + 44);
        c.rating_max = get_f32(q + 48);
        c.rating_add = (int32_t)get_le32(q + 52);
    }
    if (bst_config_check(&c) != NULL)
        return NULL;
    /* Bounded by the check: no overflow in 64 bits. */
    const uint64_t n_params = bst_config_num_params(&c);
    uint64_t words = (uint64_t)c.n_movies + n_params;
    for (int i = 0; i < c.n_hidden; i++)
        words += 2 * (uint64_t)c.hidden[i];
    if (version == 2)
        words += (uint64_t)c.n_users * (1 + BST_N_USER_FEATS) + (uint64_t)c.n_movies * c.n_genres;
    const uint64_t len = header + 4 * words + 4;
    if (len > RESHAPE_MAX_BYTES)
        return NULL;

    uint8_t *b = malloc((size_t)len);
    if (!b)
        return NULL;
    memcpy(b, data, header);
    put_le(b + 8, header, 4);
    put_le(b + 12, len, 8);
    put_le(b + 92, n_params, 8);
    const uint8_t *src = data + header;
    const size_t src_n = size - header;
    for (size_t i = header, j = 0; i < len - 4; i++, j++)
        b[i] = src_n ? src[j % src_n] : 0;
    /* Vocabularies: a start in [-2^30, 2^30) and steps of 1..8 from the
     * body's own bytes (at most 64K ids each: no int32 overflow). */
    uint8_t *w = b + header;
    for (int pass = 0; pass < (version == 2 ? 2 : 1); pass++) {
        const int32_t n = pass == 0 ? c.n_movies : c.n_users;
        int64_t id = (int64_t)(get_le32(w) % (1u << 31)) - (1 << 30);
        for (int32_t i = 0; i < n; i++, w += 4) {
            id += 1 + w[0] % 8;
            put_le(w, (uint32_t)(int32_t)id, 4);
        }
    }
    if (version == 2)
        for (size_t i = 0; i < (size_t)c.n_users * BST_N_USER_FEATS; i++, w += 4)
            put_le(w, get_le32(w) % ((uint32_t)c.n_feat_values[i % BST_N_USER_FEATS] + 1), 4);
    put_le(b + len - 4, crc32(crc32(0L, Z_NULL, 0), b, (uInt)(len - 4)), 4);
    *len_out = (size_t)len;
    return b;
}

/* err: ERR_LEN bytes, the deserializer's message on failure. */
#define ERR_LEN 128
static BstModel *load_err(const uint8_t *blob, size_t size, char *err)
{
    memset(err, 'x', ERR_LEN);
    BstModel *m = bst_model_deserialize(blob, size, err, ERR_LEN);
    if (!m && (memchr(err, '\0', ERR_LEN) == NULL || err[0] == '\0'))
        FAIL("deserialize failed without a message");
    if (!m && g_fail_at >= 0 && strcmp(err, "out of memory") != 0 &&
        g_calls > g_fail_at)
        FAIL("allocation failure reported as \"%s\"", err);
    return m;
}

static BstModel *load(const uint8_t *blob, size_t size)
{
    char err[ERR_LEN];
    return load_err(blob, size, err);
}

/* ----------------------------------------------------------- the checks */

/* What we write must load again, and load as the same model. */
static void check_reserialize(const BstModel *m)
{
    size_t len = bst_model_serialized_size(m);
    uint8_t *blob = malloc(len);
    if (!blob)
        return;
    bst_model_serialize(m, blob);
    BstModel *again = load(blob, len);
    if (!again)
        FAIL("a serialized model (%zu bytes) does not load", len);
    if (bst_model_serialized_size(again) != len)
        FAIL("serialized size changed from %zu to %zu", len, bst_model_serialized_size(again));
    uint8_t *blob2 = malloc(len);
    if (blob2) {
        bst_model_serialize(again, blob2);
        if (memcmp(blob, blob2, len) != 0)
            FAIL("serialize(deserialize(serialize(m))) != serialize(m)");
        free(blob2);
    }
    bst_model_free(again);
    free(blob);
}

/* Ratings as SQL passes them: any finite float (NaN and infinities are
 * refused before the core); the weights themselves may be anything. */
static const float RATINGS[] = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 0.5f, 0.0f, -2.5f, 1e6f, -3e38f, 3e38f,
                                1e-40f};

/* A movie id: in the vocabulary, next to it, or anything. */
static int32_t pick_movie(const BstModel *m, Choices *ch)
{
    const int32_t n = m->cfg.n_movies;
    int32_t id = m->movie_ids[choose(ch, (uint64_t)n)];
    switch (choose(ch, 4)) {
    case 0:
        return (int32_t)(uint32_t)choose(ch, 1ull << 32);
    case 1:
        return id == INT32_MAX ? id : id + 1;
    default:
        return id;
    }
}

static int32_t pick_user(const BstModel *m, Choices *ch)
{
    if (m->cfg.n_users > 0 && choose(ch, 4) != 0)
        return bst_model_user_index(m, m->user_ids[choose(ch, (uint64_t)m->cfg.n_users)]);
    return bst_model_user_index(m, (int32_t)(uint32_t)choose(ch, 1ull << 32));
}

static void predict_windows(const BstModel *m, Choices *ch)
{
    /* Fewer than the windows, to exercise bst_predict's chunking, or more.
     * Not the extension's 256: zeroing activations that large for every
     * input cut the fuzzer's speed twentyfold, and the code is the same. */
    static const int32_t BATCH_SIZES[] = {1, 2, 3, 8};
    const int32_t L = m->cfg.seq_len;
    int32_t n_windows = 1 + (int32_t)choose(ch, 5), max_batch = BATCH_SIZES[choose(ch, 4)];
    /* Attention costs heads * L^2 per window, and the fuzzer likes to grow
     * L (longer loops count as new coverage): past 64K scores a window, one
     * window keeps every input fast without losing any code path. */
    if ((int64_t)m->cfg.heads * L * L > 65536)
        n_windows = max_batch = 1;
    BstPredictor *p = bst_predictor_create(m, max_batch);
    if (!p)
        return;  /* a model too large to predict one window: refused, not a bug */
    /* Exact sizes everywhere, so that AddressSanitizer sees any overrun. */
    int32_t *movies = malloc((size_t)n_windows * L * sizeof(int32_t));
    float *ratings = malloc((size_t)n_windows * (L - 1) * sizeof(float));
    int32_t *hist = malloc((size_t)n_windows * sizeof(int32_t));
    int32_t *users = malloc((size_t)n_windows * sizeof(int32_t));
    float *out = malloc((size_t)n_windows * sizeof(float));
    float *out2 = malloc((size_t)n_windows * sizeof(float));
    if (!movies || !ratings || !hist || !users || !out || !out2)
        abort();
    for (int32_t w = 0; w < n_windows; w++) {
        /* From a lone target to two more than the model's window. */
        const int32_t n = 1 + (int32_t)choose(ch, (uint64_t)L + 2);
        int32_t *ids = malloc((size_t)n * sizeof(int32_t));
        float *r = malloc((size_t)(n - 1) * sizeof(float));
        if (!ids || (n > 1 && !r))
            abort();
        for (int32_t i = 0; i < n; i++)
            ids[i] = pick_movie(m, ch);
        for (int32_t i = 0; i < n - 1; i++)
            r[i] = RATINGS[choose(ch, sizeof(RATINGS) / sizeof(RATINGS[0]))];
        hist[w] = bst_model_pack_window(m, ids, r, n, movies + (size_t)w * L,
                                        ratings + (size_t)w * (L - 1));
        if (hist[w] != (n - 1 < L - 1 ? n - 1 : L - 1))
            FAIL("pack_window kept %d of %d history items (L = %d)", hist[w], n - 1, L);
        users[w] = pick_user(m, ch);
        if (users[w] < 0 || users[w] > m->cfg.n_users)
            FAIL("user index %d out of 0..%d", users[w], m->cfg.n_users);
        free(ids);
        free(r);
    }
    BstBatch b = {.n = n_windows, .movies = movies, .ratings = ratings, .targets = NULL,
                  .hist_len = hist, .users = choose(ch, 4) ? users : NULL};
    const long calls_before = g_calls;
    bst_predict(p, &b, out);
    bst_predict(p, &b, out2);
    /* bst_alloc.h: nothing is allocated per batch. */
    if (g_calls != calls_before)
        FAIL("bst_predict allocated %ld time(s)", g_calls - calls_before);
    if (memcmp(out, out2, (size_t)n_windows * sizeof(float)) != 0)
        FAIL("the same batch predicted twice gives different results");
    bst_predictor_free(p);
    free(movies);
    free(ratings);
    free(hist);
    free(users);
    free(out);
    free(out2);
}

/* -------------------------------------------------------------- libFuzzer */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    bst_set_allocator(hook_alloc, hook_free);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_calls = 0;
    g_live = 0;
    g_fail_at = -1;

    const uint8_t *blob = data;
    size_t blob_len = size;
    uint8_t *fixed = NULL, *rebuilt = NULL;
    BstModel *m = load(data, size);
    if (!m) {
        check_all_freed("after a rejected blob");
        fixed = with_valid_envelope(data, size);
        if (fixed) {
            blob = fixed;
            m = load(fixed, size);
        }
    }
    if (!m) {
        check_all_freed("after a rejected blob");
        rebuilt = reshaped(data, size, &blob_len);
        if (rebuilt) {
            char err[ERR_LEN];
            blob = rebuilt;
            m = load_err(rebuilt, blob_len, err);
            /* Sizes and checksum are right by construction (vocabularies
             * too; values the core may refuse, such as non-finite genres,
             * are not): if these are refused, the deserializer and
             * bst_config_num_params() disagree about the layout. */
            if (!m && (strncmp(err, "truncated", 9) == 0 || strncmp(err, "checksum", 8) == 0 ||
                       strncmp(err, "inconsistent", 12) == 0))
                FAIL("a rebuilt blob of a valid config is refused: %s", err);
        }
    }
    if (!m) {
        free(fixed);
        free(rebuilt);
        return 0;
    }

    Choices ch;
    choices_init(&ch, data, size);
    check_reserialize(m);
    predict_windows(m, &ch);
    bst_model_free(m);
    check_all_freed("after freeing the model and the predictor");

    /* Allocation failures: count the calls of a clean load and set-up, then
     * fail one of them. */
    if (choose(&ch, 8) == 0) {
        g_calls = 0;
        m = load(blob, blob_len);
        BstPredictor *p = m ? bst_predictor_create(m, 1) : NULL;
        const long calls = g_calls;
        bst_predictor_free(p);
        bst_model_free(m);
        if (!m)
            FAIL("a blob that loaded once does not load again");
        if (calls > 0 && p) {
            g_calls = 0;
            g_fail_at = (long)choose(&ch, (uint64_t)calls);
            m = load(blob, blob_len);
            p = m ? bst_predictor_create(m, 1) : NULL;
            if (p)
                FAIL("allocation %ld of %ld failed, yet the model and its predictor were built",
                     g_fail_at, calls);
            bst_predictor_free(p);
            bst_model_free(m);
            g_fail_at = -1;
            check_all_freed("after an allocation failure");
        }
    }
    free(fixed);
    free(rebuilt);
    return 0;
}

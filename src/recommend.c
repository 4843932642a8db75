/*
 * recommend.c
 *	  bst_recommend(): the top k movies of a model's vocabulary for a user's
 *	  current history.
 *
 * Every candidate is the target of the same window (the user's latest
 * seq_len - 1 ratings, as bst_predict(user_id, movie_id) reads them), so the
 * window is packed once and the candidates are scored by the core's
 * candidate workspace (src/core/candidates.h): the history's share of the
 * forward pass once per user, the rest a batch of candidates at a time.
 * The scores are bst_predict's within float rounding (the sums run in
 * another order).
 */
#include "postgres.h"

#include <math.h>

#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "bst.h"
#include "core/candidates.h"

PG_FUNCTION_INFO_V1(bst_recommend);

/*
 * Buffer rows of the workspace: chunks of 64 candidates for up to 8 threads
 * (3.7 MB at ML-1M's Keras shape, at most BST_CANDIDATES_MEMORY_BUDGET).
 * Besides them the workspace holds a copy of the size of the model's
 * attention projection and its per-movie table (within
 * BST_CANDIDATES_TABLE_BUDGET): 6.8 MB in all for ML-1M's Keras model, 5.8
 * MB for ML-100K's default one.
 */
#define RECOMMEND_BATCH 512

/* Candidates scored between two checks for a cancel: one call for ML-1M's
 * 3,883 movies (some 5-10 ms), a few for a larger catalogue. */
#define RECOMMEND_CALL 8192

/*
 * The workspace of the model last recommended from, kept for the next call
 * (creating it folds the model's projections, builds its per-movie table and
 * allocates its buffers: some 25 ms for ML-1M, mostly the first touch of its
 * 6.8 MB): one per backend, in a context of its own, beside the model cache
 * (bst.model_cache_memory does not count it).  It is the model's only while
 * both the row version (key) and the loaded copy (model) are the same: a
 * model evicted from the cache and loaded again is another copy.
 */
static struct
{
	BstModelKey key;
	const BstModel *model;
	MemoryContext context;
	BstCandidates *workspace;
}			recommend_cache;

static BstCandidates *
candidates_workspace(BstStoredModel *entry)
{
	MemoryContext cxt;
	MemoryContext old_core;
	BstCandidates *workspace;

	if (recommend_cache.workspace && recommend_cache.model == entry->model &&
		recommend_cache.key.model_id == entry->key.model_id &&
		recommend_cache.key.xmin == entry->key.xmin &&
		ItemPointerEquals(&recommend_cache.key.ctid, &entry->key.ctid))
		return recommend_cache.workspace;

	if (recommend_cache.context)
		MemoryContextDelete(recommend_cache.context);
	memset(&recommend_cache, 0, sizeof(recommend_cache));
	cxt = AllocSetContextCreate(TopMemoryContext, "bst recommend", ALLOCSET_DEFAULT_SIZES);
	old_core = bst_core_memory(cxt);
	workspace = bst_candidates_create(entry->model, RECOMMEND_BATCH,
									  BST_CANDIDATES_TABLE_BUDGET);
	bst_core_memory(old_core);
	if (workspace == NULL)
	{
		MemoryContextDelete(cxt);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory scoring the candidates of model \"%s\"",
						bst_short_name(entry->name))));
	}
	recommend_cache.key = entry->key;
	recommend_cache.model = entry->model;
	recommend_cache.context = cxt;
	recommend_cache.workspace = workspace;
	return workspace;
}

typedef struct Candidate
{
	int32		movie_id;
	int32		index;			/* in the model's vocabulary */
	float		score;
} Candidate;

/* Best first; ties by movie id, so the order never depends on the sort. */
static int
candidate_cmp(const void *a, const void *b)
{
	const Candidate *x = a;
	const Candidate *y = b;

	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	return (x->movie_id > y->movie_id) - (x->movie_id < y->movie_id);
}

static int
int32_cmp(const void *a, const void *b)
{
	int32		x = *(const int32 *) a;
	int32		y = *(const int32 *) b;

	return (x > y) - (x < y);
}

/*
 * Heap of the best candidates found so far, the worst of them at the root:
 * restores the order below position i of heap[0..n).
 */
static void
sift_down(Candidate *heap, int64 n, int64 i)
{
	for (;;)
	{
		int64		worst = i;
		int64		left = 2 * i + 1;
		int64		right = left + 1;
		Candidate	swap;

		if (left < n && candidate_cmp(&heap[left], &heap[worst]) > 0)
			worst = left;
		if (right < n && candidate_cmp(&heap[right], &heap[worst]) > 0)
			worst = right;
		if (worst == i)
			return;
		swap = heap[i];
		heap[i] = heap[worst];
		heap[worst] = swap;
		i = worst;
	}
}

/*
 * Moves the k best of candidates[0..n) to its front, best first (the order
 * of a full sort: candidate_cmp is a total order, movie ids being unique);
 * returns how many that is.  A heap of k keeps most candidates to a single
 * comparison, where sorting all of them would cost n log n.
 */
static int64
best_candidates(Candidate *candidates, int64 n, int64 k)
{
	if (k >= n)
	{
		qsort(candidates, n, sizeof(Candidate), candidate_cmp);
		return n;
	}
	for (int64 i = k / 2 - 1; i >= 0; i--)
		sift_down(candidates, k, i);
	for (int64 i = k; i < n; i++)
	{
		if (candidate_cmp(&candidates[i], &candidates[0]) < 0)
		{
			candidates[0] = candidates[i];
			sift_down(candidates, k, 0);
		}
	}
	qsort(candidates, k, sizeof(Candidate), candidate_cmp);
	return k;
}

/* Score every candidate as the target of the packed window. */
static void
score_candidates(BstStoredModel *entry, const int32 *window, const float *window_ratings,
				 int32 hist_len, int32 user, Candidate *candidates, int64 n)
{
	BstCandidates *workspace = candidates_workspace(entry);
	int32	   *movies = palloc(sizeof(int32) * RECOMMEND_CALL);
	float	   *scores = palloc(sizeof(float) * RECOMMEND_CALL);

	bst_candidates_set_history(workspace, window, window_ratings, hist_len, user);
	for (int64 first = 0; first < n; first += RECOMMEND_CALL)
	{
		int32		count = (int32) Min(RECOMMEND_CALL, n - first);

		for (int32 i = 0; i < count; i++)
			movies[i] = candidates[first + i].index;
		bst_candidates_score(workspace, movies, count, scores);
		for (int32 i = 0; i < count; i++)
		{
			if (!isfinite(scores[i]))
				ereport(ERROR,
						(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
						 errmsg("bst prediction is not finite")));
			candidates[first + i].score = scores[i];
		}
		CHECK_FOR_INTERRUPTS();
	}
	pfree(movies);
	pfree(scores);
}

/*
 * bst_recommend(user_id, k, exclude_rated, model): the k best-scored movies
 * of the model's vocabulary for the user, with their rank.
 */
Datum
bst_recommend(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int32		user_id;
	int32		k;
	bool		exclude_rated;
	BstStoredModel *entry;
	const BstModel *model;
	int32		history[BST_MAX_SEQ_LEN];
	float		history_ratings[BST_MAX_SEQ_LEN];
	int32		window[BST_MAX_SEQ_LEN];
	float		window_ratings[BST_MAX_SEQ_LEN];
	int			found;
	int32		hist_len;
	int32	   *rated = NULL;
	int64		n_rated = 0;
	Candidate  *candidates;
	int64		n = 0;

	bst_arg_not_null(fcinfo, 0, "user_id");
	bst_arg_not_null(fcinfo, 1, "k");
	bst_arg_not_null(fcinfo, 2, "exclude_rated");
	user_id = PG_GETARG_INT32(0);
	k = PG_GETARG_INT32(1);
	exclude_rated = PG_GETARG_BOOL(2);
	if (k < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("k must be at least 1, not %d", k)));

	InitMaterializedSRF(fcinfo, 0);
	entry = bst_model_for_call(fcinfo, !PG_ARGISNULL(3) ? text_to_cstring(PG_GETARG_TEXT_PP(3)) : NULL);
	model = entry->model;

	found = bst_user_history(entry, user_id, history, history_ratings);
	if (found == 0 || found < entry->min_history)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("user %d has %d ratings in %s, too few for model \"%s\" to recommend from",
						user_id, found, entry->history, bst_short_name(entry->name)),
				 errdetail("The model needs at least %d.", Max(entry->min_history, 1))));
	/* The window's last element is the target: a placeholder, set per candidate. */
	history[found] = 0;
	hist_len = bst_model_pack_window(model, history, history_ratings, found + 1, window, window_ratings);

	if (exclude_rated)
	{
		rated = bst_user_rated_movies(entry, user_id, &n_rated);
		qsort(rated, n_rated, sizeof(int32), int32_cmp);
	}
	candidates = palloc(sizeof(Candidate) * Max(model->cfg.n_movies, 1));
	for (int32 i = 0; i < model->cfg.n_movies; i++)
	{
		int32		movie_id = model->movie_ids[i];

		if (rated && bsearch(&movie_id, rated, n_rated, sizeof(int32), int32_cmp))
			continue;
		candidates[n].movie_id = movie_id;
		candidates[n].index = i + 1;
		candidates[n].score = 0;
		n++;
	}
	score_candidates(entry, window, window_ratings, hist_len, bst_model_user_index(model, user_id),
					 candidates, n);
	n = best_candidates(candidates, n, k);

	for (int64 i = 0; i < n; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {0};

		values[0] = Int32GetDatum(candidates[i].movie_id);
		values[1] = Float4GetDatum(candidates[i].score);
		values[2] = Int32GetDatum((int32) i + 1);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	bst_model_unpin(entry);
	return (Datum) 0;
}

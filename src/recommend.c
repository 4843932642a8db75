/*
 * recommend.c
 *	  bst_recommend(): the top k movies of a model's vocabulary for a user's
 *	  current history.
 *
 * Every candidate is the target of the same window (the user's latest
 * seq_len - 1 ratings, as bst_predict(user_id, movie_id) reads them), so the
 * window is packed once and copied with each candidate as its target, and
 * the candidates are scored a predictor batch at a time.
 */
#include "postgres.h"

#include <math.h>

#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "bst.h"

PG_FUNCTION_INFO_V1(bst_recommend);

typedef struct Candidate
{
	int32		movie_id;
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

/* Score every candidate (movie ids) as the target of the packed window. */
static void
score_candidates(BstStoredModel *entry, const int32 *window, const float *window_ratings,
				 int32 hist_len, int32 user, Candidate *candidates, int64 n)
{
	const BstModel *model = entry->model;
	int			L = bst_model_config(model)->seq_len;
	int32		batch_max = bst_predictor_batch(entry->predictor);
	int32	   *movies = palloc(sizeof(int32) * batch_max * L);
	float	   *ratings = palloc(sizeof(float) * batch_max * (L - 1));
	int32	   *hist = palloc(sizeof(int32) * batch_max);
	int32	   *users = palloc(sizeof(int32) * batch_max);
	float	   *scores = palloc(sizeof(float) * batch_max);

	for (int32 i = 0; i < batch_max; i++)
	{
		memcpy(movies + (int64) i * L, window, sizeof(int32) * L);
		memcpy(ratings + (int64) i * (L - 1), window_ratings, sizeof(float) * (L - 1));
		hist[i] = hist_len;
		users[i] = user;
	}
	for (int64 first = 0; first < n; first += batch_max)
	{
		BstBatch	batch;
		int32		count = (int32) Min(batch_max, n - first);

		for (int32 i = 0; i < count; i++)
			movies[(int64) i * L + L - 1] = bst_model_movie_index(model, candidates[first + i].movie_id);
		memset(&batch, 0, sizeof(batch));
		batch.n = count;
		batch.movies = movies;
		batch.ratings = ratings;
		batch.hist_len = hist;
		batch.users = users;
		bst_predict(entry->predictor, &batch, scores);
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
		candidates[n].score = 0;
		n++;
	}
	score_candidates(entry, window, window_ratings, hist_len, bst_model_user_index(model, user_id),
					 candidates, n);
	qsort(candidates, n, sizeof(Candidate), candidate_cmp);

	for (int64 i = 0; i < Min(n, (int64) k); i++)
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

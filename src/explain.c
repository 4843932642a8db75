/*
 * explain.c
 *	  bst_explain_weights(): where a prediction looked.  For the window
 *	  bst_predict(user_id, movie_id) scores, the attention weights of the
 *	  target's query over each history item and itself, per head and
 *	  averaged over the heads, and the prediction.  bst_explain (SQL) adds
 *	  the titles.
 */
#include "postgres.h"

#include <math.h>

#include "funcapi.h"
#include "utils/builtins.h"

#include "bst.h"

PG_FUNCTION_INFO_V1(bst_explain_weights);

/* One row: position 1.. (the target last), head 1..H or NULL for the mean. */
static void
put_row(ReturnSetInfo *rsinfo, int position, int32 movie_id, float rating, float attention, int head)
{
	Datum		values[5];
	bool		nulls[5] = {0};

	values[0] = Int32GetDatum(position);
	values[1] = Int32GetDatum(movie_id);
	values[2] = Float4GetDatum(rating);
	values[3] = Float4GetDatum(attention);
	values[4] = Int32GetDatum(head);
	nulls[4] = head == 0;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * bst_explain_weights(user_id, movie_id, model) RETURNS TABLE (position,
 * movie_id, rating, attention, head): a row per history item and head (its
 * rating, the weight the target gave it), and the target's own rows, whose
 * rating is the prediction.
 */
Datum
bst_explain_weights(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int32		user_id;
	int32		movie_id;
	BstStoredModel *entry;
	const BstModel *model;
	int			L;
	int			H;
	int32		history[BST_MAX_SEQ_LEN];
	float		history_ratings[BST_MAX_SEQ_LEN];
	int32		window[BST_MAX_SEQ_LEN];
	float		window_ratings[BST_MAX_SEQ_LEN];
	int			found;
	int32		hist_len;
	int32		user;
	float		prediction;
	float	   *attention;
	BstBatch	batch;

	bst_arg_not_null(fcinfo, 0, "user_id");
	bst_arg_not_null(fcinfo, 1, "movie_id");
	user_id = PG_GETARG_INT32(0);
	movie_id = PG_GETARG_INT32(1);

	InitMaterializedSRF(fcinfo, 0);
	entry = bst_model_for_call(fcinfo, !PG_ARGISNULL(2) ? text_to_cstring(PG_GETARG_TEXT_PP(2)) : NULL);
	model = entry->model;
	L = bst_model_config(model)->seq_len;
	H = bst_model_config(model)->heads;

	found = bst_user_history(entry, user_id, history, history_ratings);
	if (found == 0 || found < entry->min_history)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("user %d has %d ratings in %s, too few for model \"%s\" to explain a prediction",
						user_id, found, entry->history, bst_short_name(entry->name)),
				 errdetail("The model needs at least %d; bst_predict gives such a user the mean training rating.",
						   Max(entry->min_history, 1))));
	history[found] = movie_id;
	hist_len = bst_model_pack_window(model, history, history_ratings, found + 1, window, window_ratings);
	user = bst_model_user_index(model, user_id);

	memset(&batch, 0, sizeof(batch));
	batch.n = 1;
	batch.movies = window;
	batch.ratings = window_ratings;
	batch.hist_len = &hist_len;
	batch.users = &user;
	attention = palloc(sizeof(float) * H * L);
	if (bst_predict_attention(entry->predictor, &batch, &prediction, attention) != 0)
		elog(ERROR, "bst_predict_attention refused one window");
	if (!isfinite(prediction))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("bst prediction is not finite")));

	/*
	 * The window holds the last hist_len history items, left-padded: item i
	 * of them (oldest first) is at slot L - 1 - hist_len + i, the target at
	 * L - 1.  Head 0 stands for the mean over the heads.
	 */
	for (int h = 0; h <= H; h++)
	{
		for (int i = 0; i <= hist_len; i++)
		{
			int			slot = L - 1 - hist_len + i;
			float		weight = 0;
			bool		is_target = i == hist_len;

			if (h > 0)
				weight = attention[(h - 1) * L + slot];
			else
			{
				for (int g = 0; g < H; g++)
					weight += attention[g * L + slot];
				weight /= H;
			}
			put_row(rsinfo, i + 1,
					is_target ? movie_id : history[found - hist_len + i],
					is_target ? prediction : history_ratings[found - hist_len + i],
					weight, h);
		}
	}
	bst_model_unpin(entry);
	return (Datum) 0;
}

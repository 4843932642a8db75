/*
 * predict.c
 *	  bst_predict() for a user and a movie or for an explicit window, and
 *	  bst_evaluate() over a query of windows.
 *
 * A call site resolves the model name once per command (the first call
 * stores the resolved BstModelKey in fn_extra) and every later row only looks
 * the model up in the backend's cache, so scoring a table costs one forward
 * pass a row, through the loaded model's predictor, which precomputed what
 * depends on a movie alone when it was loaded (core/infer.c).  A later
 * command (a new statement, or the next statement of a PL/pgSQL function
 * after a write, which advances the command counter) resolves the name
 * again, which is how a newly trained version is noticed.  bst_evaluate
 * scores its windows in batches through the same predictor.
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/syscache.h"

#include "bst.h"

PG_FUNCTION_INFO_V1(bst_predict_window);
PG_FUNCTION_INFO_V1(bst_predict_user_window);
PG_FUNCTION_INFO_V1(bst_predict_user);
PG_FUNCTION_INFO_V1(bst_evaluate);

/* What a call site remembers between rows of one command. */
typedef struct CallModel
{
	char	   *name;			/* as resolved; NULL for the default model */
	size_t		name_len;
	LocalTransactionId lxid;	/* the command it was resolved in */
	CommandId	cid;
	Oid			userid;			/* the role it was resolved for (row-level security) */
	BstModelKey key;
} CallModel;

/*
 * The model this call site resolved for name (name_len bytes, not
 * terminated; NULL: the default model) earlier in this command, pinned, or
 * NULL when it must be resolved again.  Scoring a table calls this once a
 * row, so it neither copies the name nor allocates.
 */
static BstStoredModel *
call_model_cached(FunctionCallInfo fcinfo, const char *name, size_t name_len)
{
	CallModel  *call = fcinfo->flinfo->fn_extra;
	BstStoredModel *entry;

	if (call && (call->name == NULL ? name == NULL :
				 name != NULL && call->name_len == name_len &&
				 memcmp(call->name, name, name_len) == 0) &&
		call->lxid == MyProc->lxid && call->cid == GetCurrentCommandId(false) &&
		call->userid == GetUserId() &&
		(entry = bst_model_find(&call->key)) != NULL)
	{
		bst_model_pin(entry);
		return entry;
	}
	return NULL;
}

/*
 * The model of name (NULL: the default model) for this call, pinned: the
 * caller unpins it when done.
 */
BstStoredModel *
bst_model_for_call(FunctionCallInfo fcinfo, const char *name)
{
	CallModel  *call;
	BstStoredModel *entry;

	/* NULL is bst.model when set: a name, so a change of it is noticed. */
	if (name == NULL && bst_default_model != NULL && bst_default_model[0] != '\0')
		name = bst_default_model;

	entry = call_model_cached(fcinfo, name, name ? strlen(name) : 0);
	if (entry)
		return entry;

	entry = bst_model_get(fcinfo, name);
	call = fcinfo->flinfo->fn_extra;
	if (call == NULL)
		call = fcinfo->flinfo->fn_extra =
			MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(CallModel));
	else if (call->name)
		pfree(call->name);
	call->name = name ? MemoryContextStrdup(fcinfo->flinfo->fn_mcxt, name) : NULL;
	call->name_len = name ? strlen(name) : 0;
	call->lxid = MyProc->lxid;
	call->cid = GetCurrentCommandId(false);
	call->userid = GetUserId();
	call->key = entry->key;
	bst_model_pin(entry);
	return entry;
}

/* Finite inputs far outside the training range can overflow a float. */
static void
check_prediction(float prediction)
{
	if (!isfinite(prediction))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("bst prediction is not finite"),
				 errhint("Check the ratings for values far outside the range the model was trained on.")));
}

/*
 * The model's history relation as a name to look up, parsed once per
 * loaded model.  It is text in bst_models, so it is parsed as a name rather
 * than pasted into SQL: an edited row must not be able to inject a query.
 */
static RangeVar *
history_rangevar(BstStoredModel *entry)
{
	if (entry->history_rv == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(entry->context);

		entry->history_rv = makeRangeVarFromNameList(stringToQualifiedNameList(entry->history));
		MemoryContextSwitchTo(old);
	}
	return entry->history_rv;
}

/* The history relation stored with a model, as a quoted qualified name. */
static char *
history_relation(BstStoredModel *entry)
{
	return bst_relation_name(RangeVarGetRelid(history_rangevar(entry), AccessShareLock, false));
}

/*
 * Score one window of n movies (the last is the target) and n - 1 history
 * ratings, for a user id (has_user) or the unknown user.  The window is
 * left-padded to the model's length; a longer one keeps its most recent
 * history.
 */
static float
predict_one(BstStoredModel *entry, const int32 *movie_ids, const float *ratings, int n,
			bool has_user, int32 user_id)
{
	int32		movies[BST_MAX_SEQ_LEN];
	float		window_ratings[BST_MAX_SEQ_LEN];
	int32		hist = bst_model_pack_window(entry->model, movie_ids, ratings, n, movies,
											 window_ratings);
	int32		user = has_user ? bst_model_user_index(entry->model, user_id) : 0;
	BstBatch	batch;
	float		out;

	memset(&batch, 0, sizeof(batch));
	batch.n = 1;
	batch.movies = movies;
	batch.ratings = window_ratings;
	batch.hist_len = &hist;
	batch.users = &user;
	bst_predict(entry->predictor, &batch, &out);
	check_prediction(out);
	return out;
}

/*
 * The explicit window of bst_predict(model, [user_id,] movie_ids, ratings):
 * the history is every element but the last; the last movie is the target,
 * and its rating (when given, as in a row of bst_sequences) is ignored.
 */
static float
predict_window(FunctionCallInfo fcinfo, int movies_arg, bool has_user, int32 user_id)
{
	text	   *name = PG_GETARG_TEXT_PP(0);
	ArrayType  *movies = PG_GETARG_ARRAYTYPE_P(movies_arg);
	ArrayType  *ratings = PG_GETARG_ARRAYTYPE_P(movies_arg + 1);
	BstStoredModel *entry = call_model_cached(fcinfo, VARDATA_ANY(name), VARSIZE_ANY_EXHDR(name));
	int			n_movies = ArrayGetNItems(ARR_NDIM(movies), ARR_DIMS(movies));
	int			n_ratings = ArrayGetNItems(ARR_NDIM(ratings), ARR_DIMS(ratings));
	float	   *rating_values;
	float		prediction;

	if (entry == NULL)
		entry = bst_model_for_call(fcinfo, text_to_cstring(name));
	if (ARR_NDIM(movies) > 1 || ARR_NDIM(ratings) > 1 ||
		array_contains_nulls(movies) || array_contains_nulls(ratings))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("movie_ids and ratings must be one-dimensional arrays without NULLs")));
	if (n_movies < 1 || (n_ratings != n_movies && n_ratings != n_movies - 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a window of %d movie ids needs %d or %d ratings, not %d",
						n_movies, n_movies - 1, n_movies, n_ratings),
				 errdetail("The last movie is the target; its rating, if given, is ignored.")));
	if (n_movies - 1 < entry->min_history)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model \"%s\" needs at least %d history ratings before the target, not %d",
						bst_short_name(entry->name), entry->min_history, n_movies - 1),
				 errdetail("It was trained only on windows of %d movies or more.",
						   entry->min_history + 1)));
	rating_values = (float *) ARR_DATA_PTR(ratings);
	for (int i = 0; i < n_movies - 1; i++)
		if (!isfinite(rating_values[i]) || fabsf(rating_values[i]) > BST_MAX_ABS_RATING)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("rating %g is out of range", rating_values[i]),
					 errdetail("Ratings must be finite and within -%g .. %g.",
							   BST_MAX_ABS_RATING, BST_MAX_ABS_RATING)));

	prediction = predict_one(entry, (int32 *) ARR_DATA_PTR(movies), rating_values, n_movies,
							 has_user, user_id);
	bst_model_unpin(entry);
	return prediction;
}

/* bst_predict(model, movie_ids, ratings): for the unknown user. */
Datum
bst_predict_window(PG_FUNCTION_ARGS)
{
	PG_RETURN_FLOAT4(predict_window(fcinfo, 1, false, 0));
}

/* bst_predict(model, user_id, movie_ids, ratings) */
Datum
bst_predict_user_window(PG_FUNCTION_ARGS)
{
	PG_RETURN_FLOAT4(predict_window(fcinfo, 2, true, PG_GETARG_INT32(1)));
}

/*
 * A model of a 1.0 install has no owner to read its history as: the caller
 * reads it, so only a relation whose code the caller already trusts (its
 * own, or a superuser's) is read, and never another role's view.
 */
static void
check_history_owner_1_0(BstStoredModel *entry)
{
	Oid			relid = RangeVarGetRelid(history_rangevar(entry), AccessShareLock, false);
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			relowner;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	relowner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);

	if (relowner != GetUserId() && !superuser_arg(relowner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("history relation %s of model \"%s\" belongs to another role",
						entry->history, bst_short_name(entry->name)),
				 errhint("ALTER EXTENSION bst UPDATE: models then have owners, and a history is read as its model's owner.")));
}

/*
 * Run one of the model's history queries for a user: the relation was named
 * by the model's owner, and may be a view calling the owner's functions, so
 * it is read as the owner, under a security-restricted operation with a
 * search_path of pg_catalog only, as PostgreSQL runs the code attached to an
 * object (an index expression, a materialized view) for whoever maintains
 * it.  So no model row makes the caller run code it did not choose.  The
 * query (sql_format: the relation as %s) is prepared once per loaded model
 * into *plan; its rows are left in SPI_tuptable (within SPI_connect).
 */
static void
history_query(BstStoredModel *entry, SPIPlanPtr *plan, const char *sql_format, int32 user_id,
			  int64 limit)
{
	Datum		arg[1] = {Int32GetDatum(user_id)};
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;

	if (entry->history == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("model \"%s\" was trained without a history relation", bst_short_name(entry->name)),
				 errhint("Use bst_predict(model, movie_ids, ratings), or train with history => 'ratings'.")));

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	if (!OidIsValid(entry->owner))
		check_history_owner_1_0(entry);
	SetUserIdAndSecContext(OidIsValid(entry->owner) ? entry->owner : save_userid,
						   save_sec_context | SECURITY_RESTRICTED_OPERATION);
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);

	if (*plan == NULL)
	{
		Oid			argtype[1] = {INT4OID};
		SPIPlanPtr	prepared = SPI_prepare(psprintf(sql_format, history_relation(entry)), 1, argtype);

		if (prepared == NULL)
			elog(ERROR, "could not prepare a history query of model \"%s\": %s",
				 bst_short_name(entry->name), SPI_result_code_string(SPI_result));
		SPI_keepplan(prepared);
		*plan = prepared;
	}
	SPI_execute_plan(*plan, arg, NULL, true, limit);

	/* An error restores both at the (sub)transaction's abort. */
	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

int
bst_user_history(BstStoredModel *entry, int32 user_id, int32 *movies, float *ratings)
{
	int			limit = bst_model_config(entry->model)->seq_len - 1;
	/* Newest first, as both paths read them; the window wants oldest first. */
	int32		newest_movies[BST_MAX_SEQ_LEN];
	float		newest_ratings[BST_MAX_SEQ_LEN];
	bool		nulls[BST_MAX_SEQ_LEN];
	int			found = 0;
	bool		read = false;

	/*
	 * From the table's index, for a model with an owner (a 1.0 model's
	 * history goes through check_history_owner_1_0, in the query's path).
	 */
	if (bst_history_index_scan && entry->history != NULL && OidIsValid(entry->owner))
		read = bst_history_index_read(history_rangevar(entry), entry->owner, user_id, limit,
									  newest_movies, newest_ratings, nulls, &found);
	if (!read)
	{
		/* The same order as bst_sequences, newest first. */
		char	   *sql = psprintf("SELECT movie_id::pg_catalog.int4, rating::pg_catalog.float4 FROM %%s "
								   "WHERE user_id OPERATOR(pg_catalog.=) $1 AND unix_timestamp IS NOT NULL "
								   "ORDER BY unix_timestamp DESC, movie_id DESC, rating DESC LIMIT %d", limit);

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		history_query(entry, &entry->history_plan, sql, user_id, limit);
		found = (int) SPI_processed;
		for (int i = 0; i < found; i++)
		{
			HeapTuple	row = SPI_tuptable->vals[i];
			bool		null_movie;
			bool		null_rating;

			newest_movies[i] = DatumGetInt32(SPI_getbinval(row, SPI_tuptable->tupdesc, 1, &null_movie));
			newest_ratings[i] = DatumGetFloat4(SPI_getbinval(row, SPI_tuptable->tupdesc, 2, &null_rating));
			nulls[i] = null_movie || null_rating;
		}
		SPI_finish();
	}

	for (int i = 0; i < found; i++)
	{
		int			pos = found - 1 - i;

		if (nulls[i] || !isfinite(newest_ratings[i]) || fabsf(newest_ratings[i]) > BST_MAX_ABS_RATING)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("history of user %d in %s has a NULL movie id or a NULL or out-of-range rating",
							user_id, entry->history),
					 errdetail("Ratings must be finite and within -%g .. %g.",
							   BST_MAX_ABS_RATING, BST_MAX_ABS_RATING)));
		movies[pos] = newest_movies[i];
		ratings[pos] = newest_ratings[i];
	}
	return found;
}

int32 *
bst_user_rated_movies(BstStoredModel *entry, int32 user_id, int64 *n)
{
	int32	   *ids;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	history_query(entry, &entry->rated_plan,
				  "SELECT DISTINCT movie_id::pg_catalog.int4 FROM %s "
				  "WHERE user_id OPERATOR(pg_catalog.=) $1 AND movie_id IS NOT NULL",
				  user_id, 0);
	*n = (int64) SPI_processed;
	ids = SPI_palloc(Max(*n, 1) * sizeof(int32));
	for (int64 i = 0; i < *n; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();
	return ids;
}

/*
 * bst_predict(user_id, movie_id): the rating the user would give the movie
 * now, from the user's latest seq_len - 1 ratings in the model's history
 * relation (one index lookup) and the user's features as the model stored
 * them.  A user with fewer ratings than the model was trained on gets the
 * mean rating of the model's training windows.
 */
Datum
bst_predict_user(PG_FUNCTION_ARGS)
{
	int32		user_id = PG_GETARG_INT32(0);
	int32		movie_id = PG_GETARG_INT32(1);
	BstStoredModel *entry = bst_model_for_call(fcinfo, NULL);
	int32		movies[BST_MAX_SEQ_LEN];
	float		ratings[BST_MAX_SEQ_LEN];
	int			found;
	float		prediction;

	found = bst_user_history(entry, user_id, movies, ratings);

	if (found < entry->min_history)
		prediction = entry->fallback_rating;
	else
	{
		movies[found] = movie_id;
		prediction = predict_one(entry, movies, ratings, found + 1, true, user_id);
	}
	bst_model_unpin(entry);
	PG_RETURN_FLOAT4(prediction);
}

/* bst_evaluate's running sums. */
typedef struct Errors
{
	BstStoredModel *entry;
	float	   *pred;			/* [the predictor's batch] */
	double		abs_sum;
	double		sq_sum;
} Errors;

/*
 * Adds the errors of the model's predictions on a chunk of the predictor's
 * batch, scored through the loaded model's predictor, so that a window is
 * scored exactly as bst_predict scores it.  Sums as bst_evaluate_data does.
 */
static void
add_errors(void *arg, const BstData *data)
{
	Errors	   *e = arg;
	BstBatch	batch;

	CHECK_FOR_INTERRUPTS();
	memset(&batch, 0, sizeof(batch));
	batch.n = (int32) data->n;
	batch.movies = data->movies;
	batch.ratings = data->ratings;
	batch.hist_len = data->hist_len;
	batch.users = data->users;
	bst_predict(e->entry->predictor, &batch, e->pred);
	for (int32 i = 0; i < batch.n; i++)
	{
		double		d = (double) e->pred[i] - (double) data->targets[i];

		e->abs_sum += fabs(d);
		e->sq_sum += d * d;
	}
}

/* bst_evaluate(model, query): error of the model on the query's windows. */
Datum
bst_evaluate(PG_FUNCTION_ARGS)
{
	BstStoredModel *entry;
	Errors		errors;
	int64		n;
	double		mae;
	double		rmse;
	TupleDesc	desc;
	Datum		values[3];
	bool		nulls[3] = {0};

	bst_arg_not_null(fcinfo, 0, "model");
	bst_arg_not_null(fcinfo, 1, "query");
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "bst_evaluate must return a record");

	entry = bst_model_get(fcinfo, text_to_cstring(PG_GETARG_TEXT_PP(0)));
	/* The query may use other models: keep this one loaded meanwhile. */
	bst_model_pin(entry);
	/* Scored a predictor's batch at a time, as the windows are read. */
	memset(&errors, 0, sizeof(errors));
	errors.entry = entry;
	errors.pred = palloc(sizeof(float) * bst_predictor_batch(entry->predictor));
	bst_use_threads();
	n = bst_dataset_read_chunks(text_to_cstring(PG_GETARG_TEXT_PP(1)), "evaluation", entry->model,
								entry->min_history, bst_predictor_batch(entry->predictor),
								add_errors, &errors);
	mae = errors.abs_sum / (double) n;
	rmse = sqrt(errors.sq_sum / (double) n);
	if (!isfinite(mae) || !isfinite(rmse))
		check_prediction(NAN);
	bst_model_unpin(entry);

	values[0] = Int64GetDatum(n);
	values[1] = Float8GetDatum(mae);
	values[2] = Float8GetDatum(rmse);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/*
 * train.c
 *	  bst_train(): train a BST model on the windows of a query and store it
 *	  as a new version in bst_models.
 *
 * The windows are read once into flat arrays (dataset.c); each epoch walks
 * them in a fresh permutation drawn from the seed.  All of the core's
 * buffers live in one memory context, so a cancel (checked every batch) or
 * an error frees them, and since the new version is only inserted at the
 * end, the transaction's abort leaves every earlier version as it was.
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "bst.h"
#include "core/rng.h"
#include "core/trainer.h"

PG_FUNCTION_INFO_V1(bst_train);

#define MAX_EPOCHS 10000

typedef struct TrainArgs
{
	char	   *name;
	char	   *query;
	int32		epochs;
	BstTrainOptions options;
	BstConfig	config;			/* filled once the data is read */
	int32		heads;
	int32		n_hidden;
	int32		hidden[BST_MAX_HIDDEN];
	float		dropout;
	int32		embed_dim;		/* 0: floor(sqrt(vocabulary size)) */
	int32		seed;
	char	   *history;		/* qualified relation name, or NULL */
	char	   *vocabulary;		/* query, or NULL for the movies of the data */
} TrainArgs;

static void
check_history(Oid relid)
{
	static const char *const columns[] = {"user_id", "movie_id", "rating", "unix_timestamp"};

	for (int i = 0; i < (int) lengthof(columns); i++)
		if (get_attnum(relid, columns[i]) == InvalidAttrNumber)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("history relation \"%s\" has no column \"%s\"",
							get_rel_name(relid), columns[i]),
					 errhint("bst_predict(user_id, movie_id) reads user_id, movie_id, rating and unix_timestamp from it; pass history => NULL to train without one.")));
}

static void
parse_args(FunctionCallInfo fcinfo, TrainArgs *a)
{
	ArrayType  *hidden;
	char	   *optimizer;

	bst_arg_not_null(fcinfo, 0, "model");
	bst_arg_not_null(fcinfo, 1, "query");
	for (int i = 2; i <= 9; i++)
	{
		static const char *const names[] = {"epochs", "batch_size", "learning_rate", "heads",
		"hidden", "dropout", "optimizer", "seed"};

		bst_arg_not_null(fcinfo, i, names[i - 2]);
	}

	a->name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (a->name[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model name must not be empty")));
	a->query = text_to_cstring(PG_GETARG_TEXT_PP(1));

	a->epochs = PG_GETARG_INT32(2);
	if (a->epochs < 1 || a->epochs > MAX_EPOCHS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("epochs must be between 1 and %d, not %d", MAX_EPOCHS, a->epochs)));

	bst_train_options_default(&a->options);
	a->options.batch_size = PG_GETARG_INT32(3);
	a->options.learning_rate = PG_GETARG_FLOAT4(4);
	optimizer = text_to_cstring(PG_GETARG_TEXT_PP(8));
	if (pg_strcasecmp(optimizer, "adagrad") == 0)
		a->options.optimizer = BST_OPT_ADAGRAD;
	else if (pg_strcasecmp(optimizer, "adam") == 0)
		a->options.optimizer = BST_OPT_ADAM;
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown optimizer \"%s\"", optimizer),
				 errhint("Use 'adagrad' or 'adam'.")));
	if (bst_train_options_check(&a->options))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s", bst_train_options_check(&a->options))));

	a->heads = PG_GETARG_INT32(5);
	hidden = PG_GETARG_ARRAYTYPE_P(6);
	if (ARR_NDIM(hidden) > 1 || array_contains_nulls(hidden) ||
		ArrayGetNItems(ARR_NDIM(hidden), ARR_DIMS(hidden)) > BST_MAX_HIDDEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("hidden must be a list of at most %d layer sizes without NULLs",
						BST_MAX_HIDDEN)));
	a->n_hidden = ArrayGetNItems(ARR_NDIM(hidden), ARR_DIMS(hidden));
	memcpy(a->hidden, ARR_DATA_PTR(hidden), a->n_hidden * sizeof(int32));
	a->dropout = PG_GETARG_FLOAT4(7);
	a->seed = PG_GETARG_INT32(9);
	a->options.seed = (uint64) (uint32) a->seed;

	if (!PG_ARGISNULL(10))
	{
		Oid			relid = PG_GETARG_OID(10);

		if (get_rel_name(relid) == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("history relation with OID %u does not exist", relid)));
		check_history(relid);
		a->history = bst_relation_name(relid);
	}
	a->embed_dim = PG_ARGISNULL(11) ? 0 : PG_GETARG_INT32(11);
	if (!PG_ARGISNULL(11) && a->embed_dim < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("embed_dim must be positive, not %d", a->embed_dim)));
	a->vocabulary = PG_ARGISNULL(12) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(12));
}

static int
cmp_int32(const void *a, const void *b)
{
	int32		x = *(const int32 *) a;
	int32		y = *(const int32 *) b;

	return (x > y) - (x < y);
}

/* Sort ids and drop repeats; returns the new count. */
static int
sort_unique(int32 *ids, int64 n)
{
	int			out = 0;

	qsort(ids, n, sizeof(int32), cmp_int32);
	for (int64 i = 0; i < n; i++)
		if (out == 0 || ids[out - 1] != ids[i])
			ids[out++] = ids[i];
	return out;
}

/*
 * The movie vocabulary: the ids the vocabulary query returns (by default
 * every movie of the movies table, as in the Keras example), or with no
 * query every movie of the training windows.
 */
static int32 *
read_vocabulary(const char *query, const BstDataset *ds, int32 *n_movies)
{
	MemoryContext outer = CurrentMemoryContext;
	int32	   *ids;
	int64		n = 0;

	if (query == NULL)
	{
		ids = palloc_extended(ds->n * ds->seq_len * sizeof(int32), MCXT_ALLOC_HUGE);
		memcpy(ids, ds->movies, ds->n * ds->seq_len * sizeof(int32));
		*n_movies = sort_unique(ids, ds->n * ds->seq_len);
		return ids;
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	SPI_execute_plan(bst_prepare_select(query, "vocabulary"), NULL, NULL, true, 0);
	if (SPI_tuptable == NULL || SPI_tuptable->tupdesc->natts < 1 ||
		(SPI_gettypeid(SPI_tuptable->tupdesc, 1) != INT4OID &&
		 SPI_gettypeid(SPI_tuptable->tupdesc, 1) != INT2OID))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("vocabulary query must return movie ids as its first column, of type integer")));
	ids = MemoryContextAllocHuge(outer, Max(SPI_processed, 1) * sizeof(int32));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		id = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			ids[n++] = SPI_gettypeid(SPI_tuptable->tupdesc, 1) == INT2OID ?
				DatumGetInt16(id) : DatumGetInt32(id);
	}
	SPI_finish();
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("vocabulary query returned no movie ids"),
				 errhint("Pass vocabulary => NULL to use the movies of the training windows.")));
	*n_movies = sort_unique(ids, n);
	return ids;
}

static void
append_json_key(StringInfo buf, const char *key)
{
	if (buf->data[buf->len - 1] != '{' && buf->data[buf->len - 1] != '[')
		appendStringInfoString(buf, ", ");
	escape_json(buf, key);
	appendStringInfoString(buf, ": ");
}

static char *
config_json(const TrainArgs *a)
{
	const BstConfig *c = &a->config;
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	append_json_key(&buf, "seq_len");
	appendStringInfo(&buf, "%d", c->seq_len);
	append_json_key(&buf, "n_movies");
	appendStringInfo(&buf, "%d", c->n_movies);
	append_json_key(&buf, "embed_dim");
	appendStringInfo(&buf, "%d", c->embed_dim);
	append_json_key(&buf, "heads");
	appendStringInfo(&buf, "%d", c->heads);
	append_json_key(&buf, "hidden");
	appendStringInfoChar(&buf, '[');
	for (int i = 0; i < c->n_hidden; i++)
		appendStringInfo(&buf, "%s%d", i ? ", " : "", c->hidden[i]);
	appendStringInfoChar(&buf, ']');
	append_json_key(&buf, "dropout");
	appendStringInfo(&buf, "%g", c->dropout);
	append_json_key(&buf, "optimizer");
	escape_json(&buf, a->options.optimizer == BST_OPT_ADAM ? "adam" : "adagrad");
	append_json_key(&buf, "learning_rate");
	appendStringInfo(&buf, "%g", a->options.learning_rate);
	append_json_key(&buf, "batch_size");
	appendStringInfo(&buf, "%d", a->options.batch_size);
	append_json_key(&buf, "epochs");
	appendStringInfo(&buf, "%d", a->epochs);
	append_json_key(&buf, "seed");
	appendStringInfo(&buf, "%d", a->seed);
	append_json_key(&buf, "query");
	escape_json(&buf, a->query);
	append_json_key(&buf, "vocabulary");
	if (a->vocabulary)
		escape_json(&buf, a->vocabulary);
	else
		appendStringInfoString(&buf, "null");
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

Datum
bst_train(PG_FUNCTION_ARGS)
{
	TrainArgs	args;
	BstDataset	ds;
	int32	   *vocabulary;
	int32		n_movies;
	MemoryContext train_cxt;
	MemoryContext old_core;
	BstModel   *model;
	BstTrainer *trainer;
	BstRng		shuffle_rng;
	uint32	   *order;
	int32	   *batch_movies;
	float	   *batch_ratings;
	float	   *batch_targets;
	int32		L;
	int32		B;
	double		loss = 0;
	double		mae = 0;
	double		target_sum = 0;
	instr_time	start;
	instr_time	now;
	StringInfoData metrics;
	int32		version;
	TupleDesc	result_desc;
	Datum		result[7];
	bool		result_nulls[7] = {0};

	if (get_call_result_type(fcinfo, NULL, &result_desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "bst_train must return a record");

	memset(&args, 0, sizeof(args));
	parse_args(fcinfo, &args);
	INSTR_TIME_SET_CURRENT(start);

	bst_dataset_read(&ds, args.query, 0, "training");
	L = ds.seq_len;
	vocabulary = read_vocabulary(args.vocabulary, &ds, &n_movies);

	bst_config_default(&args.config, n_movies, L);
	args.config.heads = args.heads;
	args.config.n_hidden = args.n_hidden;
	memcpy(args.config.hidden, args.hidden, sizeof(args.hidden));
	args.config.dropout = args.dropout;
	if (args.embed_dim > 0)
		args.config.embed_dim = args.embed_dim;
	if (bst_config_check(&args.config))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid model configuration: %s", bst_config_check(&args.config))));

	if ((int64) args.options.batch_size * L > BST_MAX_BATCH_POSITIONS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch_size %d is too large for windows of %d movies",
						args.options.batch_size, L),
				 errdetail("batch_size times the window length must be at most %d.",
						   BST_MAX_BATCH_POSITIONS)));

	bst_use_threads();
	train_cxt = AllocSetContextCreate(CurrentMemoryContext, "bst_train", ALLOCSET_DEFAULT_SIZES);
	old_core = bst_core_memory(train_cxt);
	model = bst_model_create(&args.config, vocabulary, args.options.seed);
	trainer = model ? bst_trainer_create(model, &args.options) : NULL;
	bst_core_memory(old_core);
	if (trainer == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory creating a model of %d movies", n_movies)));

	bst_dataset_map(&ds, model);
	for (int64 i = 0; i < ds.n; i++)
		target_sum += ds.targets[i];

	/* The permutation and batch buffers; the seed fixes the whole run. */
	B = args.options.batch_size;
	order = MemoryContextAllocHuge(train_cxt, ds.n * sizeof(uint32));
	for (int64 i = 0; i < ds.n; i++)
		order[i] = (uint32) i;
	bst_rng_seed(&shuffle_rng, args.options.seed ^ UINT64CONST(0x5eed5eed5eed5eed));
	batch_movies = MemoryContextAlloc(train_cxt, (Size) B * L * sizeof(int32));
	batch_ratings = MemoryContextAlloc(train_cxt, (Size) B * (L - 1) * sizeof(float));
	batch_targets = MemoryContextAlloc(train_cxt, (Size) B * sizeof(float));

	initStringInfo(&metrics);
	appendStringInfoString(&metrics, "{\"epochs\": [");

	for (int epoch = 1; epoch <= args.epochs; epoch++)
	{
		double		loss_sum = 0;
		double		abs_sum = 0;
		instr_time	epoch_start;

		INSTR_TIME_SET_CURRENT(epoch_start);
		bst_rng_shuffle_u32(&shuffle_rng, order, ds.n);

		for (int64 first = 0; first < ds.n; first += B)
		{
			BstBatch	batch;
			float		batch_loss;

			CHECK_FOR_INTERRUPTS();
			batch.n = (int32) Min((int64) B, ds.n - first);
			for (int32 j = 0; j < batch.n; j++)
			{
				int64		w = order[first + j];

				memcpy(batch_movies + j * L, ds.movies + w * L, L * sizeof(int32));
				memcpy(batch_ratings + j * (L - 1), ds.ratings + w * (L - 1), (L - 1) * sizeof(float));
				batch_targets[j] = ds.targets[w];
			}
			batch.movies = batch_movies;
			batch.ratings = batch_ratings;
			batch.targets = batch_targets;

			batch_loss = bst_train_step(trainer, &batch, &abs_sum);
			if (!isfinite(batch_loss))
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("training diverged: the loss is not finite in epoch %d", epoch),
						 errhint("Use a smaller learning_rate.")));
			loss_sum += (double) batch_loss * batch.n;
		}

		loss = loss_sum / ds.n;
		mae = abs_sum / ds.n;
		INSTR_TIME_SET_CURRENT(now);
		INSTR_TIME_SUBTRACT(now, epoch_start);
		ereport(NOTICE,
				(errmsg("bst_train \"%s\": epoch %d/%d: loss %.4f, mae %.4f, %.1f s",
						args.name, epoch, args.epochs, loss, mae,
						INSTR_TIME_GET_DOUBLE(now))));
		appendStringInfo(&metrics, "%s{\"epoch\": %d, \"loss\": %.6g, \"mae\": %.6g, \"seconds\": %.3f}",
						 epoch > 1 ? ", " : "", epoch, loss, mae, INSTR_TIME_GET_DOUBLE(now));
	}

	INSTR_TIME_SET_CURRENT(now);
	INSTR_TIME_SUBTRACT(now, start);
	appendStringInfo(&metrics, "], \"training_rows\": " INT64_FORMAT ", \"final_loss\": %.6g, "
					 "\"final_mae\": %.6g, \"train_mean_rating\": %.6g, \"seconds\": %.3f}",
					 ds.n, loss, mae, target_sum / ds.n, INSTR_TIME_GET_DOUBLE(now));

	version = bst_model_store(fcinfo, args.name, model, config_json(&args), metrics.data,
							  args.history);
	MemoryContextDelete(train_cxt);

	result[0] = CStringGetTextDatum(args.name);
	result[1] = Int32GetDatum(version);
	result[2] = Int64GetDatum(ds.n);
	result[3] = Int32GetDatum(args.epochs);
	result[4] = Float8GetDatum(loss);
	result[5] = Float8GetDatum(mae);
	result[6] = Float8GetDatum(INSTR_TIME_GET_DOUBLE(now));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(result_desc),
													  result, result_nulls)));
}

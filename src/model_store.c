/*
 * model_store.c
 *	  Models in the bst_models table: store a new version, and load one
 *	  into a per-backend cache.
 *
 * Weights are a bytea in the core's versioned, checksummed layout.  Every
 * bst_models row has a model_id that no other row ever gets, so the cache
 * is keyed by it and by the row's xmin: a newer version (or a model dropped
 * and trained again under the same name and version) is a different
 * model_id, and weights changed by an UPDATE are a different xmin; either
 * is loaded on the first statement that resolves the name to it.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "bst.h"
#include "core/serialize.h"

/* Few models are in use at once; beyond this the oldest loaded is dropped. */
#define MODEL_CACHE_SIZE 8
/* Windows per forward pass at prediction time. */
#define PREDICT_BATCH 256

static BstStoredModel *model_cache[MODEL_CACHE_SIZE];
static int	model_cache_next = 0;

int32
bst_model_store(FunctionCallInfo fcinfo, const char *name, const BstModel *model,
				const char *config_json, const char *metrics_json, const char *history)
{
	size_t		size = bst_model_serialized_size(model);
	bytea	   *weights;
	char	   *sql;
	Oid			argtypes[5] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, BYTEAOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', history ? ' ' : 'n', ' '};
	bool		isnull;
	int32		version;

	if (size > MaxAllocSize - VARHDRSZ)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("model is too large to store (%zu bytes)", size),
				 errhint("Use a smaller embed_dim or hidden layers.")));
	weights = palloc(VARHDRSZ + size);
	SET_VARSIZE(weights, VARHDRSZ + size);
	bst_model_serialize(model, VARDATA(weights));

	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(config_json);
	values[2] = CStringGetTextDatum(metrics_json);
	values[3] = history ? CStringGetTextDatum(history) : (Datum) 0;
	values[4] = PointerGetDatum(weights);

	/*
	 * Concurrent trainings of one name serialize on the lock, so each gets
	 * its own version number.
	 */
	sql = psprintf("INSERT INTO %s.bst_models (name, version, config, metrics, history, weights) "
				   "SELECT $1, coalesce(max(version), 0) + 1, $2::jsonb, $3::jsonb, $4, $5 "
				   "FROM %s.bst_models WHERE name = $1 "
				   "RETURNING version",
				   bst_schema(fcinfo), bst_schema(fcinfo));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	SPI_execute_with_args("SELECT pg_advisory_xact_lock(hashtext('bst_models'), hashtext($1))",
						  1, argtypes, values, NULL, false, 0);
	if (SPI_execute_with_args(sql, 5, argtypes, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not store model \"%s\"", name);
	version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();

	return version;
}

static void
model_cache_evict(int slot)
{
	BstStoredModel *entry = model_cache[slot];

	if (entry == NULL)
		return;
	if (entry->history_plan)
		SPI_freeplan(entry->history_plan);
	MemoryContextDelete(entry->context);
	model_cache[slot] = NULL;
}

/* Deserialize a bst_models row into a new cache entry. */
static BstStoredModel *
model_load(int64 model_id, TransactionId xmin, const char *name, int32 version, bytea *weights,
		   const char *history, float fallback_rating)
{
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "bst model",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old_core = bst_core_memory(cxt);
	BstStoredModel *entry = MemoryContextAllocZero(cxt, sizeof(BstStoredModel));
	char		err[256];

	entry->context = cxt;
	entry->model_id = model_id;
	entry->xmin = xmin;
	entry->name = MemoryContextStrdup(cxt, name);
	entry->version = version;
	entry->history = history ? MemoryContextStrdup(cxt, history) : NULL;
	entry->fallback_rating = fallback_rating;

	entry->model = bst_model_deserialize(VARDATA_ANY(weights), VARSIZE_ANY_EXHDR(weights),
										 err, sizeof(err));
	if (entry->model)
		entry->predictor = bst_predictor_create(entry->model, PREDICT_BATCH);
	bst_core_memory(old_core);

	if (entry->model == NULL)
	{
		MemoryContextDelete(cxt);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("weights of model \"%s\" version %d are unusable: %s",
						name, version, err),
				 errhint("Train the model again, or delete this version from bst_models.")));
	}
	if (entry->predictor == NULL)
	{
		MemoryContextDelete(cxt);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory loading model \"%s\"", name)));
	}
	return entry;
}

/* The cached model of this row version, or NULL when it is not loaded. */
BstStoredModel *
bst_model_find(int64 model_id, TransactionId xmin)
{
	for (int i = 0; i < MODEL_CACHE_SIZE; i++)
		if (model_cache[i] && model_cache[i]->model_id == model_id &&
			model_cache[i]->xmin == xmin)
			return model_cache[i];
	return NULL;
}

/*
 * The model named name (its latest version), or with name NULL or empty the
 * one named by bst.model, or else the most recently trained one.
 */
BstStoredModel *
bst_model_get(FunctionCallInfo fcinfo, const char *name)
{
	const char *schema = bst_schema(fcinfo);
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	int64		model_id;
	TransactionId xmin;
	BstStoredModel *entry;

	if (name == NULL || name[0] == '\0')
		name = bst_default_model;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (name != NULL && name[0] != '\0')
	{
		values[0] = CStringGetTextDatum(name);
		SPI_execute_with_args(psprintf("SELECT model_id, name, version, xmin FROM %s.bst_models "
									   "WHERE name = $1 ORDER BY version DESC LIMIT 1", schema),
							  1, argtypes, values, NULL, true, 1);
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("bst model \"%s\" does not exist", name),
					 errhint("Train it with bst_train('%s', ...), or see SELECT name FROM bst_models.", name)));
	}
	else
	{
		SPI_execute(psprintf("SELECT model_id, name, version, xmin FROM %s.bst_models "
							 "ORDER BY created_at DESC, model_id DESC LIMIT 1", schema),
					true, 1);
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("no bst model has been trained yet"),
					 errhint("Train one with bst_train(), or set bst.model.")));
	}
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	model_id = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
	xmin = DatumGetTransactionId(SPI_getbinval(row, desc, 4, &isnull));

	entry = bst_model_find(model_id, xmin);
	if (entry == NULL)
	{
		char	   *model_name = SPI_getvalue(row, desc, 2);
		int32		version = DatumGetInt32(SPI_getbinval(row, desc, 3, &isnull));
		Datum		id_value[1] = {Int64GetDatum(model_id)};
		Oid			id_type[1] = {INT8OID};
		bytea	   *weights;
		char	   *history;
		char	   *fallback;

		SPI_execute_with_args(psprintf("SELECT weights, history, metrics->>'train_mean_rating' "
									   "FROM %s.bst_models WHERE model_id = $1", schema),
							  1, id_type, id_value, NULL, true, 1);
		row = SPI_tuptable->vals[0];
		desc = SPI_tuptable->tupdesc;
		weights = DatumGetByteaPP(SPI_getbinval(row, desc, 1, &isnull));
		history = SPI_getvalue(row, desc, 2);
		fallback = SPI_getvalue(row, desc, 3);

		entry = model_load(model_id, xmin, model_name, version, weights, history,
						   fallback ? strtof(fallback, NULL) : 0.0f);
		model_cache_evict(model_cache_next);
		model_cache[model_cache_next] = entry;
		model_cache_next = (model_cache_next + 1) % MODEL_CACHE_SIZE;
	}
	SPI_finish();
	return entry;
}

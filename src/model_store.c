/*
 * model_store.c
 *	  Models in the bst_models table: store a new version, and load one
 *	  into a per-backend cache.
 *
 * Weights are a bytea in the core's versioned, checksummed layout.  The
 * cache is keyed by BstModelKey: a newer version (or a model dropped and
 * trained again under the same name and version) is a different model_id,
 * and weights changed by an UPDATE are a different row version; either is
 * loaded by the first statement that resolves the name to it.
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "nodes/pg_list.h"
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
	 * its own version number.  Under REPEATABLE READ or SERIALIZABLE the
	 * snapshot may not show a version committed meanwhile; then the insert
	 * conflicts, and the caller gets a serialization failure to retry.
	 */
	sql = psprintf("INSERT INTO %s.bst_models (name, version, config, metrics, history, weights) "
				   "SELECT $1, coalesce(pg_catalog.max(version), 0) OPERATOR(pg_catalog.+) 1, "
				   "       $2::pg_catalog.jsonb, $3::pg_catalog.jsonb, $4, $5 "
				   "FROM %s.bst_models WHERE name OPERATOR(pg_catalog.=) $1 "
				   "ON CONFLICT (name, version) DO NOTHING "
				   "RETURNING version",
				   bst_schema(fcinfo), bst_schema(fcinfo));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	SPI_execute_with_args("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('bst_models'), "
						  "pg_catalog.hashtext($1))",
						  1, argtypes, values, NULL, false, 0);
	if (SPI_execute_with_args(sql, 5, argtypes, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not store model \"%s\"", name);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not store model \"%s\": a concurrent training stored that version first", name),
				 errhint("Retry the transaction.")));
	version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();

	return version;
}

/*
 * Retired cache entries: evicted, but possibly still in use by a statement
 * that is running (bst_evaluate's own query may load other models, and so
 * may a view used as history), so freed only when the transaction ends.
 */
static List *retired_models = NIL;
static bool xact_callback_registered = false;

static void
model_free(BstStoredModel *entry)
{
	if (entry->history_plan)
		SPI_freeplan(entry->history_plan);
	MemoryContextDelete(entry->context);
}

static void
free_retired_models(XactEvent event, void *arg)
{
	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_ABORT &&
		event != XACT_EVENT_PARALLEL_COMMIT && event != XACT_EVENT_PARALLEL_ABORT)
		return;
	while (retired_models != NIL)
	{
		BstStoredModel *entry = linitial(retired_models);

		retired_models = list_delete_first(retired_models);
		model_free(entry);
	}
}

static void
model_cache_retire(int slot)
{
	MemoryContext old;

	if (model_cache[slot] == NULL)
		return;
	if (!xact_callback_registered)
	{
		RegisterXactCallback(free_retired_models, NULL);
		xact_callback_registered = true;
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	retired_models = lappend(retired_models, model_cache[slot]);
	MemoryContextSwitchTo(old);
	model_cache[slot] = NULL;
}

/* Deserialize a bst_models row into a new cache entry. */
static BstStoredModel *
model_load(const BstModelKey *key, const char *name, int32 version, bytea *weights,
		   const char *history, float fallback_rating, int32 min_history)
{
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "bst model",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old_core = bst_core_memory(cxt);
	BstStoredModel *entry = MemoryContextAllocZero(cxt, sizeof(BstStoredModel));
	char		err[256];

	entry->context = cxt;
	entry->key = *key;
	entry->name = MemoryContextStrdup(cxt, name);
	entry->version = version;
	entry->history = history ? MemoryContextStrdup(cxt, history) : NULL;
	entry->fallback_rating = fallback_rating;
	entry->min_history = min_history;

	entry->model = bst_model_deserialize(VARDATA_ANY(weights), VARSIZE_ANY_EXHDR(weights),
										 err, sizeof(err));
	if (entry->model)
	{
		/* Bounded whatever the metrics say: it only decides the fallback. */
		entry->min_history = Max(0, Min(min_history, bst_model_config(entry->model)->seq_len - 1));
		entry->predictor = bst_predictor_create(entry->model, PREDICT_BATCH);
	}
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
bst_model_find(const BstModelKey *key)
{
	for (int i = 0; i < MODEL_CACHE_SIZE; i++)
	{
		BstStoredModel *entry = model_cache[i];

		if (entry && entry->key.model_id == key->model_id &&
			entry->key.xmin == key->xmin && ItemPointerEquals(&entry->key.ctid, (ItemPointer) &key->ctid))
			return entry;
	}
	return NULL;
}

static void
model_row_missing(const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("the bst_models row of model \"%s\" could not be read back", name),
			 errdetail("It disappeared, or its weights or metrics were set to NULL by hand.")));
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
	BstModelKey key;
	BstStoredModel *entry;

	if (name == NULL || name[0] == '\0')
		name = bst_default_model;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (name != NULL && name[0] != '\0')
	{
		values[0] = CStringGetTextDatum(name);
		SPI_execute_with_args(psprintf("SELECT model_id, name, version, xmin, ctid FROM %s.bst_models "
									   "WHERE name OPERATOR(pg_catalog.=) $1 ORDER BY version DESC LIMIT 1", schema),
							  1, argtypes, values, NULL, true, 1);
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("bst model \"%s\" does not exist", name),
					 errhint("Train it with bst_train('%s', ...), or see SELECT name FROM bst_models.", name)));
	}
	else
	{
		SPI_execute(psprintf("SELECT model_id, name, version, xmin, ctid FROM %s.bst_models "
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
	key.model_id = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
	key.xmin = DatumGetTransactionId(SPI_getbinval(row, desc, 4, &isnull));
	ItemPointerCopy((ItemPointer) DatumGetPointer(SPI_getbinval(row, desc, 5, &isnull)), &key.ctid);

	entry = bst_model_find(&key);
	if (entry == NULL)
	{
		char	   *model_name = SPI_getvalue(row, desc, 2);
		int32		version = DatumGetInt32(SPI_getbinval(row, desc, 3, &isnull));
		Datum		id_value[1] = {Int64GetDatum(key.model_id)};
		Oid			id_type[1] = {INT8OID};
		Datum		weights_datum;
		bytea	   *weights;
		bool		weights_null;
		bool		fallback_null;
		float		fallback;
		bool		min_history_null;
		int32		min_history;

		/*
		 * A model of version 1.0 was trained on full windows only, and
		 * records no min_history: then it is seq_len - 1.
		 */
		SPI_execute_with_args(psprintf("SELECT weights, history, "
									   "(metrics OPERATOR(pg_catalog.->>) 'train_mean_rating')::pg_catalog.float4, "
									   "coalesce((metrics OPERATOR(pg_catalog.->>) 'min_history')::pg_catalog.int4, "
									   "         (config OPERATOR(pg_catalog.->>) 'seq_len')::pg_catalog.int4 "
									   "         OPERATOR(pg_catalog.-) 1) "
									   "FROM %s.bst_models WHERE model_id OPERATOR(pg_catalog.=) $1", schema),
							  1, id_type, id_value, NULL, true, 1);
		if (SPI_processed != 1)
			model_row_missing(model_name);
		row = SPI_tuptable->vals[0];
		desc = SPI_tuptable->tupdesc;
		weights_datum = SPI_getbinval(row, desc, 1, &weights_null);
		fallback = DatumGetFloat4(SPI_getbinval(row, desc, 3, &fallback_null));
		min_history = DatumGetInt32(SPI_getbinval(row, desc, 4, &min_history_null));
		if (weights_null || fallback_null || !isfinite(fallback) || min_history_null)
			model_row_missing(model_name);
		weights = DatumGetByteaPP(weights_datum);

		entry = model_load(&key, model_name, version, weights, SPI_getvalue(row, desc, 2),
						   fallback, min_history);
		model_cache_retire(model_cache_next);
		model_cache[model_cache_next] = entry;
		model_cache_next = (model_cache_next + 1) % MODEL_CACHE_SIZE;
	}
	SPI_finish();
	return entry;
}

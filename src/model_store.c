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

#include <errno.h>
#include <float.h>
#include <math.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "bst.h"
#include "core/serialize.h"

/*
 * The cache holds every model a backend uses until it outgrows
 * bst.model_cache_memory (or this many entries); then the least recently
 * used are evicted.  A statement that cycles through more models than fit
 * reloads them, in constant memory.
 */
#define MODEL_CACHE_MAX_ENTRIES 64
/* Windows per forward pass at prediction time. */
#define PREDICT_BATCH 256

static BstStoredModel *model_cache[MODEL_CACHE_MAX_ENTRIES];
static int	model_cache_count = 0;
static uint64 model_cache_clock = 0;

/*
 * The queries that find a statement's model run at the start of every
 * statement that predicts: each is parsed and planned once per backend and
 * kept, as PL/pgSQL keeps its statements (PostgreSQL's plan cache plans
 * again when a relation it reads changes, or the role, for row-level
 * security).  Keyed by their text, which names the extension's schema and
 * columns, so an extension moved, updated or created again gets plans of
 * its own.  Beyond KEPT_PLANS_MAX texts a query is planned at each use.
 */
#define KEPT_PLANS_MAX 16

typedef struct KeptPlan
{
	char	   *sql;
	SPIPlanPtr	plan;
} KeptPlan;

static KeptPlan kept_plans[KEPT_PLANS_MAX];
static int	kept_plan_count = 0;

/* SPI_execute_with_args, read-only, through a kept plan (within SPI_connect). */
static void
execute_kept(const char *sql, int nargs, Oid *argtypes, Datum *values, long count)
{
	SPIPlanPtr	plan = NULL;

	for (int i = 0; i < kept_plan_count && plan == NULL; i++)
		if (strcmp(kept_plans[i].sql, sql) == 0)
			plan = kept_plans[i].plan;
	if (plan == NULL)
	{
		plan = SPI_prepare(sql, nargs, argtypes);
		if (plan == NULL)
			elog(ERROR, "could not prepare \"%s\": %s", sql, SPI_result_code_string(SPI_result));
		if (kept_plan_count < KEPT_PLANS_MAX)
		{
			kept_plans[kept_plan_count].sql = MemoryContextStrdup(TopMemoryContext, sql);
			SPI_keepplan(plan);
			kept_plans[kept_plan_count++].plan = plan;
		}
	}
	SPI_execute_plan(plan, values, NULL, true, count);
}

/*
 * Whether bst_models has 1.1's owner column.  The 1.1 library also serves a
 * 1.0 install until ALTER EXTENSION bst UPDATE; there models have no owner.
 */
bool
bst_models_have_owner(FunctionCallInfo fcinfo)
{
	Oid			models = get_relname_relid("bst_models", get_func_namespace(fcinfo->flinfo->fn_oid));

	return OidIsValid(models) && get_attnum(models, "owner") != InvalidAttrNumber;
}

/* Whether bst_models has 1.1's optimizer_state column (see above). */
static bool
models_have_optimizer_state(FunctionCallInfo fcinfo)
{
	Oid			models = get_relname_relid("bst_models", get_func_namespace(fcinfo->flinfo->fn_oid));

	return OidIsValid(models) && get_attnum(models, "optimizer_state") != InvalidAttrNumber;
}

/*
 * The owner of model name, InvalidOid when no version exists.  Read past
 * row-level security by bst_model_owner(), a SECURITY DEFINER function,
 * since a name taken by a model the caller may not see is still taken.
 */
Oid
bst_model_owner(FunctionCallInfo fcinfo, const char *name)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	bool		isnull = true;
	Oid			owner = InvalidOid;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	SPI_execute_with_args(psprintf("SELECT %s.bst_model_owner($1)::pg_catalog.oid", bst_schema(fcinfo)),
						  1, argtypes, values, NULL, true, 1);
	if (SPI_processed == 1)
		owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	return isnull ? InvalidOid : owner;
}

/*
 * One row per epoch of the new version in bst_training_log (a 1.1 install:
 * 1.0 has no log).
 */
static void
store_training_log(FunctionCallInfo fcinfo, int64 model_id, const char *name, int32 version,
				   const BstEpochLog *log, int32 n_log)
{
	Oid			argtypes[11] = {INT8OID, TEXTOID, INT4OID, INT4OID, FLOAT8OID, FLOAT8OID,
		FLOAT8OID, FLOAT8OID, FLOAT8OID, FLOAT8OID, TIMESTAMPTZOID};
	SPIPlanPtr	plan;

	if (!OidIsValid(get_relname_relid("bst_training_log",
									  get_func_namespace(fcinfo->flinfo->fn_oid))))
		return;
	plan = SPI_prepare(psprintf("INSERT INTO %s.bst_training_log (model_id, model, version, epoch, "
								"train_loss, train_mae, val_mae, val_rmse, learning_rate, seconds, at) "
								"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
								bst_schema(fcinfo)),
					   11, argtypes);
	if (plan == NULL)
		elog(ERROR, "could not prepare the training log insert: %s", SPI_result_code_string(SPI_result));
	for (int32 i = 0; i < n_log; i++)
	{
		const BstEpochStats *e = &log[i].stats;
		Datum		values[11];
		char		nulls[11];

		memset(nulls, ' ', sizeof(nulls));
		values[0] = Int64GetDatum(model_id);
		values[1] = CStringGetTextDatum(name);
		values[2] = Int32GetDatum(version);
		values[3] = Int32GetDatum(e->epoch);
		values[4] = Float8GetDatum(e->loss);
		values[5] = Float8GetDatum(e->mae);
		values[6] = Float8GetDatum(e->val_mae);
		nulls[6] = isnan(e->val_mae) ? 'n' : ' ';
		values[7] = Float8GetDatum(e->val_rmse);
		nulls[7] = isnan(e->val_rmse) ? 'n' : ' ';
		values[8] = Float8GetDatum(e->learning_rate);
		values[9] = Float8GetDatum(e->seconds);
		values[10] = TimestampTzGetDatum(log[i].at);
		if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not store the training log of model \"%s\"", bst_short_name(name));
	}
	SPI_freeplan(plan);
}

int32
bst_model_store(FunctionCallInfo fcinfo, const char *name, Oid owner, const BstModel *model,
				const BstTrainState *state, const char *config_json, const char *metrics_json,
				const char *history, const BstEpochLog *log, int32 n_log)
{
	size_t		size = bst_model_serialized_size(model);
	bytea	   *weights;
	char	   *sql;
	Oid			argtypes[7] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, BYTEAOID, OIDOID, BYTEAOID};
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', history ? ' ' : 'n', ' ', ' ', ' '};
	bool		with_owner = OidIsValid(owner);
	/* A 1.0 install, not updated yet, keeps no optimizer state. */
	bool		with_state = state != NULL && models_have_optimizer_state(fcinfo);
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
	values[6] = (Datum) 0;
	if (with_state)
	{
		size_t		state_size = bst_train_state_serialized_size(state);
		bytea	   *state_blob;

		/* Twice the parameters (Adam) may pass the limit the weights keep. */
		if (state_size > MaxAllocSize - VARHDRSZ)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("the optimizer state of model \"%s\" is too large to store (%zu bytes)",
							bst_short_name(name), state_size),
					 errhint("Use a smaller embed_dim or hidden layers, or optimizer => 'adagrad', whose state is half Adam's.")));
		state_blob = palloc(VARHDRSZ + state_size);
		SET_VARSIZE(state_blob, VARHDRSZ + state_size);
		bst_train_state_serialize(state, VARDATA(weights), size, VARDATA(state_blob));
		values[6] = PointerGetDatum(state_blob);
	}

	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(config_json);
	values[2] = CStringGetTextDatum(metrics_json);
	values[3] = history ? CStringGetTextDatum(history) : (Datum) 0;
	values[4] = PointerGetDatum(weights);
	values[5] = ObjectIdGetDatum(owner);

	/*
	 * Concurrent trainings of one name serialize on the lock, so each gets
	 * its own version number.  Under REPEATABLE READ or SERIALIZABLE the
	 * snapshot may not show a version committed meanwhile; then the insert
	 * conflicts, and the caller gets a serialization failure to retry.
	 */
	sql = psprintf("INSERT INTO %s.bst_models (name, version, config, metrics, history, weights%s%s) "
				   "SELECT $1, coalesce(pg_catalog.max(version), 0) OPERATOR(pg_catalog.+) 1, "
				   "       $2::pg_catalog.jsonb, $3::pg_catalog.jsonb, $4, $5%s%s "
				   "FROM %s.bst_models WHERE name OPERATOR(pg_catalog.=) $1 "
				   "ON CONFLICT (name, version) DO NOTHING "
				   "RETURNING version, model_id",
				   bst_schema(fcinfo), with_owner ? ", owner" : "", with_state ? ", optimizer_state" : "",
				   with_owner ? ", $6::pg_catalog.regrole" : "", with_state ? ", $7" : "",
				   bst_schema(fcinfo));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	SPI_execute_with_args("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('bst_models'), "
						  "pg_catalog.hashtext($1))",
						  1, argtypes, values, NULL, false, 0);
	/* Every parameter has its type: the ones the statement leaves out are
	 * unused, not undetermined. */
	if (SPI_execute_with_args(sql, 7, argtypes, values, nulls, false, 0) !=
		SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not store model \"%s\"", name);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not store model \"%s\": a concurrent training stored that version first",
						bst_short_name(name)),
				 errhint("Retry the transaction.")));
	version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	store_training_log(fcinfo, DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)),
					   name, version, log, n_log);
	SPI_finish();

	return version;
}

/*
 * Evicted entries still pinned by a call that is running (bst_evaluate's own
 * query may use other models, and so may a view used as history) wait here
 * until their last unpin, or the end of the transaction: an error skips the
 * unpin, so the end of the transaction forgets every pin.
 */
static List *retired_models = NIL;
static bool xact_callback_registered = false;

static void
model_free(BstStoredModel *entry)
{
	if (entry->history_plan)
		SPI_freeplan(entry->history_plan);
	if (entry->rated_plan)
		SPI_freeplan(entry->rated_plan);
	MemoryContextDelete(entry->context);
}

static void
model_cache_end_xact(XactEvent event, void *arg)
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
	for (int i = 0; i < model_cache_count; i++)
		model_cache[i]->pins = 0;
}

void
bst_model_pin(BstStoredModel *entry)
{
	entry->pins++;
	entry->uses++;
}

void
bst_model_unpin(BstStoredModel *entry)
{
	Assert(entry->pins > 0);
	if (--entry->pins > 0 || !entry->retired)
		return;
	retired_models = list_delete_ptr(retired_models, entry);
	model_free(entry);
}

/* Take entry i out of the cache; free it unless a running call holds it. */
static void
model_cache_evict(int i)
{
	BstStoredModel *entry = model_cache[i];

	model_cache[i] = model_cache[--model_cache_count];
	model_cache[model_cache_count] = NULL;
	if (entry->pins == 0)
		model_free(entry);
	else
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		entry->retired = true;
		retired_models = lappend(retired_models, entry);
		MemoryContextSwitchTo(old);
	}
}

/*
 * Make room for an entry of new_bytes: evict the least recently used until
 * the cache, with it, fits bst.model_cache_memory.  A single model larger
 * than the whole budget is still loaded, alone.
 */
static void
model_cache_make_room(Size new_bytes)
{
	Size		budget = (Size) bst_model_cache_memory_kb * 1024;

	for (;;)
	{
		Size		used = new_bytes;
		int			oldest = -1;

		for (int i = 0; i < model_cache_count; i++)
		{
			used += model_cache[i]->bytes;
			if (oldest < 0 || model_cache[i]->last_used < model_cache[oldest]->last_used)
				oldest = i;
		}
		if (oldest < 0 || (used <= budget && model_cache_count < MODEL_CACHE_MAX_ENTRIES))
			return;
		model_cache_evict(oldest);
	}
}

static void
model_cache_add(BstStoredModel *entry)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(model_cache_end_xact, NULL);
		xact_callback_registered = true;
	}
	model_cache_make_room(entry->bytes);
	model_cache[model_cache_count++] = entry;
}

/*
 * Whether weights were stored by bst 1.0 (format 1: serialize.h, the
 * little-endian version after the magic).  Such a model is served by the
 * arithmetic of 1.0 (bst_predictor_create: sgemm over the layers), so that
 * ALTER EXTENSION bst UPDATE keeps its predictions bit for bit
 * (test/upgrade); any other is served by a frozen predictor, whose
 * precomputed projections and fused kernels agree with it within float
 * rounding only (core/infer.c).  The deserializer has validated the blob.
 */
static bool
weights_from_1_0(bytea *weights)
{
	const unsigned char *b = (const unsigned char *) VARDATA_ANY(weights);

	return VARSIZE_ANY_EXHDR(weights) >= 8 &&
		(b[4] | (b[5] << 8) | (b[6] << 16) | ((uint32) b[7] << 24)) == 1;
}

/*
 * Deserialize a bst_models row into a new cache entry.  Its fallback rating
 * and shortest history come from the weights (format 3), or are left for
 * the caller to read from the metrics (formats 1 and 2: facts_known false).
 */
static BstStoredModel *
model_load(const BstModelKey *key, const char *name, int32 version, Oid owner, bytea *weights,
		   const char *history, bool *facts_known)
{
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "bst model",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old_core = bst_core_memory(cxt);
	BstStoredModel *entry = MemoryContextAllocZero(cxt, sizeof(BstStoredModel));
	char		err[256];

	entry->context = cxt;
	entry->key = *key;
	entry->name = MemoryContextStrdup(cxt, name);
	/* pg_backend_memory_contexts shows which model a context holds. */
	MemoryContextSetIdentifier(cxt, entry->name);
	entry->version = version;
	entry->owner = owner;
	entry->history = history ? MemoryContextStrdup(cxt, history) : NULL;

	entry->model = bst_model_deserialize(VARDATA_ANY(weights), VARSIZE_ANY_EXHDR(weights),
										 err, sizeof(err));
	if (entry->model)
	{
		*facts_known = bst_model_training_facts(entry->model, &entry->fallback_rating,
												&entry->min_history) != 0;
		entry->predictor = weights_from_1_0(weights)
			? bst_predictor_create(entry->model, PREDICT_BATCH)
			: bst_predictor_create_frozen(entry->model, PREDICT_BATCH,
										  BST_PREDICTOR_TABLE_BUDGET);
	}
	bst_core_memory(old_core);

	if (entry->model == NULL)
	{
		MemoryContextDelete(cxt);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("weights of model \"%s\" version %d are unusable: %s",
						bst_short_name(name), version, err),
				 errhint("Train the model again, or delete this version from bst_models.")));
	}
	if (entry->predictor == NULL)
	{
		MemoryContextDelete(cxt);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory loading model \"%s\"", bst_short_name(name))));
	}
	entry->bytes = MemoryContextMemAllocated(cxt, true);
	return entry;
}

/* The cached model of this row version, or NULL when it is not loaded. */
BstStoredModel *
bst_model_find(const BstModelKey *key)
{
	for (int i = 0; i < model_cache_count; i++)
	{
		BstStoredModel *entry = model_cache[i];

		if (entry->key.model_id == key->model_id &&
			entry->key.xmin == key->xmin && ItemPointerEquals(&entry->key.ctid, (ItemPointer) &key->ctid))
		{
			entry->last_used = ++model_cache_clock;
			return entry;
		}
	}
	return NULL;
}

/* A hand-edited bst_models row, named by model and field. */
static void model_row_invalid(const char *name, int32 version, const char *field, const char *why);

static float
parse_metric_float(const char *text, const char *name, int32 version, const char *field)
{
	char	   *end;
	double		value;

	if (text == NULL)
		model_row_invalid(name, version, field, "is missing");
	errno = 0;
	value = strtod(text, &end);
	if (end == text || *end != '\0' || errno != 0 || !isfinite(value) || fabs(value) > FLT_MAX)
		model_row_invalid(name, version, field, psprintf("is not a finite number: %s", text));
	return (float) value;
}

static int32
parse_metric_int(const char *text, const char *name, int32 version, const char *field)
{
	char	   *end;
	long		value;

	errno = 0;
	value = strtol(text, &end, 10);
	if (end == text || *end != '\0' || errno != 0 || value < 0 || value > BST_MAX_SEQ_LEN)
		model_row_invalid(name, version, field,
						  psprintf("is not a whole number from 0 to %d: %s", BST_MAX_SEQ_LEN, text));
	return (int32) value;
}

/* A hand-edited bst_models row, named by model and field. */
static void
model_row_invalid(const char *name, int32 version, const char *field, const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("%s of model \"%s\" version %d %s", field, bst_short_name(name), version, why),
			 errhint("Restore the row as bst_train stored it, or train the model again.")));
}

void
bst_check_model_name(const char *name)
{
	if (name[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model name must not be empty")));
	if (strlen(name) > BST_MAX_MODEL_NAME_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("model name is too long (%zu bytes)", strlen(name)),
				 errdetail("A model name has at most %d bytes.", BST_MAX_MODEL_NAME_BYTES)));
}

/*
 * The model to use for name: its deployed version, else its latest.  name
 * NULL means the most recently trained model the current role owns itself
 * (what bst_predict(user_id, movie_id) uses when bst.model is not set):
 * never one that another role could have put there.  Only models that
 * row-level security shows the current role are found.
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
	bool		with_owner = bst_models_have_owner(fcinfo);

	if (name != NULL)
		bst_check_model_name(name);
	/* bst.model_cache_memory may have been lowered since the last load. */
	model_cache_make_room(0);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (name == NULL)
	{
		Oid			owner_type[1] = {OIDOID};
		Datum		owner[1] = {ObjectIdGetDatum(GetUserId())};

		/* Models of a 1.0 install have no owner: its latest, as 1.0 did. */
		execute_kept(psprintf("SELECT name FROM %s.bst_models "
							  "WHERE %s ORDER BY created_at DESC, model_id DESC LIMIT 1", schema,
							  with_owner ? "owner::pg_catalog.oid OPERATOR(pg_catalog.=) $1" : "$1 IS NOT NULL"),
					 1, owner_type, owner, 1);
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("bst.model is not set, and role \"%s\" owns no bst model",
							GetUserNameFromId(GetUserId(), false)),
					 errhint("SET bst.model = 'name' to use a model by name, or train one with bst_train().")));
		name = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	}

	/*
	 * The deployed version (bst_deploy), while it exists, else the latest.
	 * A 1.0 install has no deployments.
	 */
	values[0] = CStringGetTextDatum(name);
	if (OidIsValid(get_relname_relid("bst_deployments", get_func_namespace(fcinfo->flinfo->fn_oid))))
		execute_kept(psprintf("SELECT model_id, name, version, xmin, ctid FROM %s.bst_models m "
							  "WHERE name OPERATOR(pg_catalog.=) $1 "
							  "ORDER BY (version OPERATOR(pg_catalog.=) "
							  "          (SELECT d.version FROM %s.bst_deployments d "
							  "           WHERE d.model OPERATOR(pg_catalog.=) $1 "
							  "           ORDER BY d.id DESC LIMIT 1)) IS TRUE DESC, "
							  "         version DESC LIMIT 1", schema, schema),
					 1, argtypes, values, 1);
	else
		execute_kept(psprintf("SELECT model_id, name, version, xmin, ctid FROM %s.bst_models "
							  "WHERE name OPERATOR(pg_catalog.=) $1 ORDER BY version DESC LIMIT 1", schema),
					 1, argtypes, values, 1);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("bst model \"%s\" does not exist", bst_short_name(name)),
				 errhint("Train it with bst_train(%s, ...), or see SELECT name FROM bst_models.",
						 quote_literal_cstr(bst_short_name(name)))));
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
		bool		field_null;
		bool		facts_known = false;
		Oid			owner;

		SPI_execute_with_args(psprintf("SELECT weights, history, %s, "
									   "metrics OPERATOR(pg_catalog.->>) 'train_mean_rating', "
									   "metrics OPERATOR(pg_catalog.->>) 'min_history' "
									   "FROM %s.bst_models WHERE model_id OPERATOR(pg_catalog.=) $1",
									   with_owner ? "owner::pg_catalog.oid" : "0::pg_catalog.oid", schema),
							  1, id_type, id_value, NULL, true, 1);
		if (SPI_processed != 1)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("the bst_models row of model \"%s\" version %d could not be read back",
							bst_short_name(model_name), version),
					 errdetail("It was deleted by a concurrent transaction.")));
		row = SPI_tuptable->vals[0];
		desc = SPI_tuptable->tupdesc;
		weights_datum = SPI_getbinval(row, desc, 1, &field_null);
		if (field_null)
			model_row_invalid(model_name, version, "weights", "are NULL");
		owner = DatumGetObjectId(SPI_getbinval(row, desc, 3, &field_null));

		entry = model_load(&key, model_name, version, owner, DatumGetByteaPP(weights_datum),
						   SPI_getvalue(row, desc, 2), &facts_known);

		/*
		 * Weights of formats 1 and 2 do not hold the fallback rating and the
		 * shortest history: then the metrics, which are jsonb for people
		 * and may have been edited, are read as text and checked, so that a
		 * bad value gets a message naming it rather than a cast error.
		 */
		if (!facts_known)
		{
			PG_TRY();
			{
				char	   *min_history = SPI_getvalue(row, desc, 5);

				entry->fallback_rating = parse_metric_float(SPI_getvalue(row, desc, 4), model_name,
															version, "metrics->'train_mean_rating'");
				/* 1.0 trained on full windows only and records no min_history. */
				entry->min_history = min_history == NULL ? BST_MAX_SEQ_LEN :
					parse_metric_int(min_history, model_name, version, "metrics->'min_history'");
				/* Bounded whatever the metrics say: it only decides the fallback. */
				entry->min_history = Max(0, Min(entry->min_history,
												bst_model_config(entry->model)->seq_len - 1));
			}
			PG_CATCH();
			{
				model_free(entry);
				PG_RE_THROW();
			}
			PG_END_TRY();
		}
		entry->last_used = ++model_cache_clock;
		model_cache_add(entry);
	}
	SPI_finish();
	return entry;
}

/*
 * Version `version` of model name as bst_train(warm_start => version)
 * continues it, read as the caller (row-level security applies): its
 * weights and optimizer state deserialized into core_cxt, never into the
 * cache, and its config, copied into the caller's memory context.  42704 when
 * the caller sees no such version; 55000 when it has no optimizer state;
 * XX001 when a blob is unusable.
 */
void
bst_model_read_version(FunctionCallInfo fcinfo, const char *name, int32 version,
					   MemoryContext core_cxt, BstStoredVersion *out)
{
	MemoryContext outer = CurrentMemoryContext;
	const char *schema = bst_schema(fcinfo);
	bool		with_state = models_have_optimizer_state(fcinfo);
	Oid			argtypes[2] = {TEXTOID, INT4OID};
	Datum		values[2] = {CStringGetTextDatum(name), Int32GetDatum(version)};
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	Datum		datum;
	bytea	   *weights;
	bytea	   *state;
	char		err[256];
	MemoryContext old;
	MemoryContext old_core;

	memset(out, 0, sizeof(*out));
	out->version = version;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	SPI_execute_with_args(psprintf("SELECT weights, %s, config FROM %s.bst_models "
								   "WHERE name OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2",
								   with_state ? "optimizer_state" : "NULL::pg_catalog.bytea", schema),
						  2, argtypes, values, NULL, true, 1);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("version %d of bst model \"%s\" does not exist", version, bst_short_name(name)),
				 errhint("warm_start names a stored version of the model being trained: see SELECT version FROM bst_models WHERE name = %s.",
						 quote_literal_cstr(bst_short_name(name)))));
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	datum = SPI_getbinval(row, desc, 1, &isnull);
	if (isnull)
		model_row_invalid(name, version, "weights", "are NULL");
	weights = DatumGetByteaPP(datum);
	datum = SPI_getbinval(row, desc, 2, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("version %d of bst model \"%s\" has no optimizer state to continue from",
						version, bst_short_name(name)),
				 errdetail("Versions trained by bst 1.0, or before bst_train kept the optimizer's state, hold only their weights."),
				 errhint("Train without warm_start, or continue a version trained since: see SELECT version FROM bst_models WHERE name = %s AND optimizer_state IS NOT NULL.",
						 quote_literal_cstr(bst_short_name(name)))));
	state = DatumGetByteaPP(datum);

	old_core = bst_core_memory(core_cxt);
	out->model = bst_model_deserialize(VARDATA_ANY(weights), VARSIZE_ANY_EXHDR(weights),
									   err, sizeof(err));
	bst_core_memory(old_core);
	if (out->model == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("weights of model \"%s\" version %d are unusable: %s",
						bst_short_name(name), version, err),
				 errhint("Train without warm_start, or continue another version.")));
	old_core = bst_core_memory(core_cxt);
	out->state = bst_train_state_deserialize(VARDATA_ANY(state), VARSIZE_ANY_EXHDR(state),
											 out->model, VARDATA_ANY(weights),
											 VARSIZE_ANY_EXHDR(weights), err, sizeof(err));
	bst_core_memory(old_core);
	if (out->state == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("optimizer state of model \"%s\" version %d is unusable: %s",
						bst_short_name(name), version, err),
				 errhint("Train without warm_start, or continue another version.")));
	old = MemoryContextSwitchTo(outer);
	out->config = DatumGetJsonbPCopy(SPI_getbinval(row, desc, 3, &isnull));
	MemoryContextSwitchTo(old);
	SPI_finish();
}

/*
 * bst_loaded_models(): the models this backend holds loaded, most recently
 * used first, with their memory and the calls each served since it was
 * loaded.
 */
PG_FUNCTION_INFO_V1(bst_loaded_models);
Datum
bst_loaded_models(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	BstStoredModel *order[MODEL_CACHE_MAX_ENTRIES];
	int			n = model_cache_count;

	InitMaterializedSRF(fcinfo, 0);
	memcpy(order, model_cache, n * sizeof(BstStoredModel *));
	/* Insertion sort by last use, newest first: at most 64 entries. */
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && order[j]->last_used > order[j - 1]->last_used; j--)
		{
			BstStoredModel *t = order[j];

			order[j] = order[j - 1];
			order[j - 1] = t;
		}
	for (int i = 0; i < n; i++)
	{
		Datum		values[5];
		bool		nulls[5] = {0};

		values[0] = CStringGetTextDatum(order[i]->name);
		values[1] = Int32GetDatum(order[i]->version);
		values[2] = Int64GetDatum(order[i]->key.model_id);
		values[3] = Int64GetDatum((int64) order[i]->bytes);
		values[4] = Int64GetDatum((int64) order[i]->uses);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

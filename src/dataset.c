/*
 * dataset.c
 *	  Read the windows of a training or evaluation query into flat arrays.
 *
 * The query returns at least movie_ids integer[] and ratings real[] (what
 * bst_sequences returns); the last element of each window is the target.
 * Rows are fetched through a cursor in batches and copied out of the array
 * datums directly, never through text, so that ML-1M's half a million
 * windows are read in well under a second and take 16 MB.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/plancache.h"

#include "bst.h"

#define DATASET_FETCH_ROWS 10000

static int
query_column(TupleDesc desc, const char *name, Oid type, const char *purpose)
{
	int			col = SPI_fnumber(desc, name);

	if (col <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("%s query must return a column \"%s\"", purpose, name),
				 errhint("Return movie_ids integer[] and ratings real[], as bst_sequences() does.")));
	if (SPI_gettypeid(desc, col) != type)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" of the %s query has type %s, but must be %s",
						name, purpose, format_type_be(SPI_gettypeid(desc, col)), format_type_be(type)),
				 errhint("Cast it, e.g. \"%s::%s\".", name, format_type_be(type))));
	return col;
}

/* The elements of a 1-D array without NULLs, or an error naming the row. */
static void *
window_elements(HeapTuple tuple, TupleDesc desc, int col, const char *name,
				int64 row, int *length)
{
	bool		isnull;
	Datum		datum = SPI_getbinval(tuple, desc, col, &isnull);
	ArrayType  *array;

	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s is NULL in row %lld", name, (long long) row)));
	array = DatumGetArrayTypeP(datum);
	if (ARR_NDIM(array) != 1 || array_contains_nulls(array))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s in row %lld must be a one-dimensional array without NULLs",
						name, (long long) row)));
	*length = ARR_DIMS(array)[0];
	return ARR_DATA_PTR(array);
}

static void
dataset_grow(BstDataset *ds, MemoryContext cxt)
{
	int64		capacity = ds->capacity ? 2 * ds->capacity : 16384;
	int			L = ds->seq_len;

	if (ds->capacity == 0)
	{
		ds->movies = MemoryContextAllocHuge(cxt, capacity * L * sizeof(int32));
		ds->ratings = MemoryContextAllocHuge(cxt, capacity * (L - 1) * sizeof(float));
		ds->targets = MemoryContextAllocHuge(cxt, capacity * sizeof(float));
	}
	else
	{
		ds->movies = repalloc_huge(ds->movies, capacity * L * sizeof(int32));
		ds->ratings = repalloc_huge(ds->ratings, capacity * (L - 1) * sizeof(float));
		ds->targets = repalloc_huge(ds->targets, capacity * sizeof(float));
	}
	ds->capacity = capacity;
}

/*
 * Prepare a user's query that must be one SELECT (or VALUES, or WITH ...
 * SELECT): anything else gets an error saying so, rather than SPI's
 * "cannot open multi-query plan" or "DELETE is not allowed in a non-volatile
 * function".  purpose names the query in the message.
 */
SPIPlanPtr
bst_prepare_select(const char *query, const char *purpose)
{
	SPIPlanPtr	plan;
	List	   *sources;

	if (strspn(query, " \t\r\n") == strlen(query))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s query must not be empty", purpose)));
	plan = SPI_prepare(query, 0, NULL);
	if (plan == NULL)
		elog(ERROR, "could not prepare the %s query: %s", purpose,
			 SPI_result_code_string(SPI_result));
	sources = SPI_plan_get_plan_sources(plan);
	if (list_length(sources) != 1 ||
		((CachedPlanSource *) linitial(sources))->commandTag != CMDTAG_SELECT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s query must be a single SELECT", purpose)));
	return plan;
}

/*
 * Run query and append its windows to ds.  seq_len is the window length the
 * caller needs (a trained model's), or 0 to take it from the first row.
 * purpose ("training", "evaluation") makes the error messages precise.
 */
void
bst_dataset_read(BstDataset *ds, const char *query, int32 seq_len, const char *purpose)
{
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext batch_cxt;
	Portal		portal;
	int			movies_col = 0;
	int			ratings_col = 0;

	memset(ds, 0, sizeof(*ds));
	ds->seq_len = seq_len;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "bst dataset batch",
									  ALLOCSET_DEFAULT_SIZES);

	portal = SPI_cursor_open(NULL, bst_prepare_select(query, purpose), NULL, NULL, true);
	for (;;)
	{
		MemoryContext old;

		SPI_cursor_fetch(portal, true, DATASET_FETCH_ROWS);
		if (SPI_processed == 0)
			break;
		if (movies_col == 0)
		{
			movies_col = query_column(SPI_tuptable->tupdesc, "movie_ids", INT4ARRAYOID, purpose);
			ratings_col = query_column(SPI_tuptable->tupdesc, "ratings", FLOAT4ARRAYOID, purpose);
		}

		old = MemoryContextSwitchTo(batch_cxt);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tuple = SPI_tuptable->vals[i];
			int64		row = ds->n + 1;
			int			n_movies;
			int			n_ratings;
			int32	   *movies = window_elements(tuple, SPI_tuptable->tupdesc, movies_col,
												 "movie_ids", row, &n_movies);
			float	   *ratings = window_elements(tuple, SPI_tuptable->tupdesc, ratings_col,
												  "ratings", row, &n_ratings);
			int			L;

			if (ds->seq_len == 0)
			{
				if (n_movies < 2 || n_movies > BST_MAX_SEQ_LEN)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("windows of the %s query must have between 2 and %d movies, not %d",
									purpose, BST_MAX_SEQ_LEN, n_movies)));
				ds->seq_len = n_movies;
			}
			L = ds->seq_len;
			if (n_movies != L || n_ratings != L)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("row %lld of the %s query has %d movie ids and %d ratings, but every window must have %d of each",
								(long long) row, purpose, n_movies, n_ratings, L),
						 errdetail("The last movie of a window is the target, the last rating its label.")));
			for (int j = 0; j < L; j++)
				if (!isfinite(ratings[j]))
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("row %lld of the %s query has a NaN or infinite rating",
									(long long) row, purpose)));

			if (ds->n == ds->capacity)
				dataset_grow(ds, outer);
			memcpy(ds->movies + ds->n * L, movies, L * sizeof(int32));
			memcpy(ds->ratings + ds->n * (L - 1), ratings, (L - 1) * sizeof(float));
			ds->targets[ds->n] = ratings[L - 1];
			ds->n++;
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(batch_cxt);
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	SPI_finish();

	if (ds->n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s query returned no rows", purpose)));
}

/* Replace movie ids by the model's vocabulary indices (0: out of vocabulary). */
void
bst_dataset_map(BstDataset *ds, const BstModel *model)
{
	for (int64 i = 0; i < ds->n * ds->seq_len; i++)
		ds->movies[i] = bst_model_movie_index(model, ds->movies[i]);
}

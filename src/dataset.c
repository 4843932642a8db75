/*
 * dataset.c
 *	  Read the windows of a training or evaluation query, and pack them into
 *	  the padded arrays the numerical core trains and scores on.
 *
 * The query returns movie_ids integer[] and ratings real[] (what
 * bst_sequences returns), and optionally user_id integer; the last element
 * of each window is the target.  Windows may have any length from 1 up, and
 * are packed left-padded to the model's length, a longer window keeping its
 * most recent ratings.  Rows are fetched through a cursor in batches and
 * copied out of the array datums directly, never through text.
 *
 * A training packs its windows as it reads them (bst_dataset_read_packed),
 * before the model exists: the core lays them out with the ids as read, and
 * maps them to the model's vocabulary in place once it exists, so the data is
 * held once.  Windows beyond the training's memory limit go to a temporary
 * file instead, a chunk at a time, and the training reads them from there.
 * An evaluation, whose model exists, packs them a chunk at a time and
 * scores each chunk as soon as it is full (bst_dataset_read_chunks).
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "nodes/parsenodes.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/plancache.h"

#include "bst.h"

#define DATASET_FETCH_ROWS 10000

/*
 * A training's packed windows: room for this many at first, then half as
 * much again each time, never beyond the memory limit, and cut to size at
 * the end.  Large arrays grow by realloc, which moves their pages (mremap)
 * rather than copying them, so the windows are resident once; the room not
 * used yet is address space only.
 */
#define DATASET_FIRST_WINDOWS 1024

/* A window as read and checked: user is 0 when the query has no user_id. */
typedef void (*WindowSink) (void *arg, const int32 *movies, const float *ratings, int n,
							int32 user);

static int
query_column(TupleDesc desc, const char *name, Oid type, const char *purpose, bool required)
{
	int			col = SPI_fnumber(desc, name);

	if (col <= 0)
	{
		if (!required)
			return 0;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("%s query must return a column \"%s\"", purpose, name),
				 errhint("Return movie_ids integer[] and ratings real[] (and optionally user_id integer), as bst_sequences() does.")));
	}
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
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%s is NULL in row %lld", name, (long long) row)));
	array = DatumGetArrayTypeP(datum);
	if (ARR_NDIM(array) != 1 || array_contains_nulls(array))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%s in row %lld must be a one-dimensional array without NULLs",
						name, (long long) row)));
	*length = ARR_DIMS(array)[0];
	return ARR_DATA_PTR(array);
}

/*
 * Prepare a user's query that must be one SELECT (or VALUES, or WITH ...
 * SELECT): anything else gets an error saying so, rather than SPI's
 * "cannot open multi-query plan" or "DELETE is not allowed in a non-volatile
 * function".  purpose names the query in the message.
 */
/* Whether a prepared statement's queries only read. */
static bool
plain_select(List *queries)
{
	ListCell   *lc;

	foreach(lc, queries)
	{
		Query	   *q = lfirst_node(Query, lc);

		if (q->commandType != CMD_SELECT || q->utilityStmt != NULL ||
			q->hasModifyingCTE || q->rowMarks != NIL)
			return false;
	}
	return queries != NIL;
}

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
	/*
	 * A plain SELECT only: SELECT INTO, FOR UPDATE or a data-modifying WITH
	 * would write (or lock), which the read-only execution refuses with a
	 * message about volatile functions that does not say what is wrong.
	 */
	sources = SPI_plan_get_plan_sources(plan);
	if (list_length(sources) != 1 ||
		((CachedPlanSource *) linitial(sources))->commandTag != CMDTAG_SELECT ||
		!plain_select(((CachedPlanSource *) linitial(sources))->query_list))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s query must be a single plain SELECT", purpose),
				 errdetail("SELECT INTO, FOR UPDATE or FOR SHARE, and WITH ... INSERT, UPDATE or DELETE are not allowed.")));
	return plan;
}

/*
 * Run query and hand each of its windows, checked, to sink (called in a
 * short-lived memory context: it allocates in its own).  purpose ("training",
 * "evaluation") makes the error messages precise.  Returns the number of
 * windows; *has_users tells whether the query returns a user_id column.
 */
static int64
read_windows(const char *query, const char *purpose, WindowSink sink, void *arg,
			 bool *has_users)
{
	MemoryContext batch_cxt;
	Portal		portal;
	int			movies_col = 0;
	int			ratings_col = 0;
	int			user_col = 0;
	int64		n = 0;

	*has_users = false;
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
			TupleDesc	desc = SPI_tuptable->tupdesc;

			movies_col = query_column(desc, "movie_ids", INT4ARRAYOID, purpose, true);
			ratings_col = query_column(desc, "ratings", FLOAT4ARRAYOID, purpose, true);
			user_col = query_column(desc, "user_id", INT4OID, purpose, false);
			*has_users = user_col > 0;
		}

		old = MemoryContextSwitchTo(batch_cxt);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tuple = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			int64		row = n + 1;
			int			n_movies;
			int			n_ratings;
			int32	   *movies = window_elements(tuple, desc, movies_col, "movie_ids", row, &n_movies);
			float	   *ratings = window_elements(tuple, desc, ratings_col, "ratings", row, &n_ratings);
			int32		user = 0;

			if (n_movies < 1 || n_ratings != n_movies)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("row %lld of the %s query has %d movie ids and %d ratings, but a window needs at least one of each, as many ratings as movies",
								(long long) row, purpose, n_movies, n_ratings),
						 errdetail("The last movie of a window is the target, the last rating its label.")));
			for (int j = 0; j < n_ratings; j++)
				if (!isfinite(ratings[j]) || fabsf(ratings[j]) > BST_MAX_ABS_RATING)
					ereport(ERROR,
							(errcode(ERRCODE_DATA_EXCEPTION),
							 errmsg("%s %g in row %lld of the %s query is out of range",
									j == n_ratings - 1 ? "label (target rating)" : "rating",
									ratings[j], (long long) row, purpose),
							 errdetail("Ratings and labels must be finite and within -%g .. %g.",
									   BST_MAX_ABS_RATING, BST_MAX_ABS_RATING)));
			if (user_col > 0)
			{
				bool		isnull;

				user = DatumGetInt32(SPI_getbinval(tuple, desc, user_col, &isnull));
				if (isnull)
					ereport(ERROR,
							(errcode(ERRCODE_DATA_EXCEPTION),
							 errmsg("user_id is NULL in row %lld of the %s query",
									(long long) row, purpose)));
			}

			sink(arg, movies, ratings, n_movies, user);
			n++;
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(batch_cxt);
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	SPI_finish();

	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s query returned no rows", purpose)));
	return n;
}

static int
cmp_int32(const void *a, const void *b)
{
	int32		x = *(const int32 *) a;
	int32		y = *(const int32 *) b;

	return (x > y) - (x < y);
}

/* Distinct ids met while reading: a hash set, of the order of their number. */
typedef struct IdEntry
{
	int32		id;
	char		status;
} IdEntry;

#define SH_PREFIX idset
#define SH_ELEMENT_TYPE IdEntry
#define SH_KEY_TYPE int32
#define SH_KEY id
#define SH_HASH_KEY(tb, key) murmurhash32((uint32) (key))
#define SH_EQUAL(tb, a, b) ((a) == (b))
#define SH_SCOPE static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

static void
idset_add(idset_hash *set, const int32 *ids, int n)
{
	for (int i = 0; i < n; i++)
	{
		bool		found;

		idset_insert(set, ids[i], &found);
	}
}

/* The ids of set, ascending, in the current memory context. */
static int32 *
idset_sorted(idset_hash *set, int64 *n)
{
	int32	   *ids = palloc_extended(Max(set->members, 1) * sizeof(int32), MCXT_ALLOC_HUGE);
	idset_iterator it;
	IdEntry    *entry;

	*n = 0;
	idset_start_iterate(set, &it);
	while ((entry = idset_iterate(set, &it)) != NULL)
		ids[(*n)++] = entry->id;
	qsort(ids, *n, sizeof(int32), cmp_int32);
	return ids;
}

/* A training's data set, packed while read. */
typedef struct PackedSink
{
	const BstReadOptions *o;
	BstData    *data;
	BstReadResult *result;
	int64		capacity;		/* windows data has room for */
	MemoryContext cxt;			/* of data's arrays */
	idset_hash *movies;			/* the distinct ids, when asked for */
	idset_hash *users;
	int32		last_user;
	BstSpill   *spill;			/* once the windows outgrew o->limit: data
								 * holds a chunk, the file the rest */
	int64		n_spilled;		/* windows in the file */
} PackedSink;

/* bst_data_resize's allocator: palloc in the context arg. */
static void *
data_resize(void *ptr, size_t size, void *arg)
{
	return ptr ? repalloc_huge(ptr, size) : MemoryContextAllocHuge((MemoryContext) arg, size);
}

static void
data_set_capacity(PackedSink *sink, int64 capacity, int32 seq_len)
{
	if (bst_data_resize(sink->data, capacity, seq_len, data_resize, sink->cxt) != 0)
		elog(ERROR, "could not lay out %lld windows of %d movies", (long long) capacity, seq_len);
	sink->capacity = capacity;
}

/* A spilled data set's file, new and empty, the spill in cxt. */
static BstSpill *
new_spill(const BstSpillIO *io, MemoryContext cxt)
{
	BstSpill   *spill = MemoryContextAllocZero(cxt, sizeof(BstSpill));

	spill->io = io;
	spill->file = io->create(io->arg);
	return spill;
}

/* The windows in data to the file; data empty. */
static void
spill_windows(PackedSink *sink)
{
	BstData    *data = sink->data;

	if (bst_spill_write(sink->o->io, sink->spill->file, data, 0, data->n) != 0)
		elog(ERROR, "could not write training windows to a temporary file");
	sink->n_spilled += data->n;
	data->n = 0;
}

static void
packed_window(void *arg, const int32 *movies, const float *ratings, int n, int32 user)
{
	PackedSink *sink = arg;
	BstData    *data = sink->data;
	int32		seq_len = sink->o->seq_len;

	/*
	 * Without a length of its own, the model's is the longest window's: the
	 * windows read so far are laid out again, wider, when a longer one comes
	 * (those in the file when they are read back).  Beyond BST_MAX_SEQ_LEN
	 * the model is refused once the longest is known.
	 */
	if (seq_len == 0)
		seq_len = Min(Max(data->seq_len, n), BST_MAX_SEQ_LEN);

	if (sink->spill)
	{
		/* A chunk at a time, written before it is laid out wider. */
		if (data->n == BST_SPILL_CHUNK_WINDOWS || seq_len != data->seq_len)
			spill_windows(sink);
		if (seq_len != data->seq_len)
			data_set_capacity(sink, BST_SPILL_CHUNK_WINDOWS, seq_len);
	}
	else if ((double) bst_data_memory_bytes(data->n + 1, seq_len) > sink->o->limit)
	{
		/* From here on the windows go to a temporary file. */
		sink->spill = new_spill(sink->o->io, sink->cxt);
		spill_windows(sink);
		data_set_capacity(sink, BST_SPILL_CHUNK_WINDOWS, seq_len);
	}
	else if (data->n == sink->capacity || seq_len != data->seq_len)
	{
		/* Half as much again, never more than the limit allows. */
		double		most = floor(sink->o->limit / (double) bst_data_memory_bytes(1, seq_len));
		int64		capacity = sink->capacity;

		if (data->n == capacity)
			capacity = Max(capacity + capacity / 2, DATASET_FIRST_WINDOWS);
		if ((double) capacity > most)
			capacity = Max((int64) most, data->n + 1);
		data_set_capacity(sink, capacity, seq_len);
	}
	bst_data_set_window(data, data->n, movies, ratings, n, user);
	data->n++;

	sink->result->max_len = Max(sink->result->max_len, n);
	if (sink->o->movie_ids)
		idset_add(sink->movies, movies, n);
	/* A user's windows mostly come together. */
	if (sink->result->has_users && (data->n == 1 || user != sink->last_user))
		idset_add(sink->users, &user, 1);
	sink->last_user = user;
}

/* data's arrays freed, and data the spilled data set of n windows. */
static void
data_spilled(BstData *data, BstSpill *spill, int64 n)
{
	pfree(data->movies);
	pfree(data->ratings);
	pfree(data->hist_len);
	pfree(data->users);
	pfree(data->targets);
	data->movies = data->hist_len = data->users = NULL;
	data->ratings = data->targets = NULL;
	data->n = n;
	data->spill = spill;
}

/*
 * Run query (a training's) and pack its windows into data as they are read,
 * with their movie and user ids as read: bst_dataset_map_ids maps them once
 * the model exists.  The arrays are allocated in cxt, grown as needed and
 * left exactly as large as the windows need, bst_data_memory_bytes(data->n,
 * data->seq_len).  Windows that would take more than o->limit go on, a chunk
 * at a time, into a temporary file of o->io: data is then a spilled data set
 * (data->spill, its ids as read), with no arrays.  The distinct ids are
 * collected in the current memory context.
 */
void
bst_dataset_read_packed(const char *query, const char *purpose, const BstReadOptions *o,
						MemoryContext cxt, BstData *data, BstReadResult *result)
{
	PackedSink	sink;

	memset(data, 0, sizeof(*data));
	memset(result, 0, sizeof(*result));
	memset(&sink, 0, sizeof(sink));
	sink.o = o;
	sink.data = data;
	sink.result = result;
	sink.cxt = cxt;
	sink.movies = idset_create(CurrentMemoryContext, 1024, NULL);
	sink.users = idset_create(CurrentMemoryContext, 1024, NULL);

	/*
	 * has_users is known before the first window reaches the sink: the
	 * columns are resolved on the first fetch.
	 */
	read_windows(query, purpose, packed_window, &sink, &result->has_users);

	if (sink.spill)
	{
		spill_windows(&sink);
		data_spilled(data, sink.spill, sink.n_spilled);
	}
	else
		/* Exactly as large as the windows need. */
		data_set_capacity(&sink, data->n, data->seq_len);
	result->movie_ids = idset_sorted(sink.movies, &result->n_movie_ids);
	result->user_ids = idset_sorted(sink.users, &result->n_user_ids);
	idset_destroy(sink.movies);
	idset_destroy(sink.users);
}

/*
 * The windows of data, in memory, to a temporary file of io instead (ids as
 * they are), the spill in cxt: when the windows fit the memory limit but the
 * model and its training beside them do not.
 */
void
bst_dataset_spill(BstData *data, const BstSpillIO *io, MemoryContext cxt)
{
	BstSpill   *spill = new_spill(io, cxt);

	if (bst_spill_write(io, spill->file, data, 0, data->n) != 0)
		elog(ERROR, "could not write training windows to a temporary file");
	data_spilled(data, spill, data->n);
}

/* The ids of data, as read, mapped to model's vocabulary in place; a
 * spilled data set's when the training reads them. */
void
bst_dataset_map_ids(BstData *data, const BstModel *model, bool has_users)
{
	if (data->spill)
	{
		/* Only the host's own spill: the struct is ours. */
		((BstSpill *) data->spill)->map_ids = 1;
		((BstSpill *) data->spill)->map_users = has_users;
		return;
	}
	for (int64 w = 0; w < data->n; w += 65536)
	{
		bst_data_map_ids(data, model, w, Min(w + 65536, data->n), has_users);
		CHECK_FOR_INTERRUPTS();
	}
}

/* An evaluation's windows, packed a chunk at a time. */
typedef struct ChunkSink
{
	const BstModel *model;
	int32		min_history;
	const char *purpose;
	BstData		data;			/* the chunk: room for capacity windows */
	int32		capacity;
	int64		rows;			/* windows read */
	bool		has_users;
	BstChunkFn	chunk;
	void	   *arg;
} ChunkSink;

static void
chunk_window(void *arg, const int32 *movies, const float *ratings, int n, int32 user)
{
	ChunkSink  *sink = arg;
	BstData    *data = &sink->data;
	const int	L = data->seq_len;
	const int64 w = data->n;

	data->hist_len[w] = bst_model_pack_window(sink->model, movies, ratings, n,
											  data->movies + w * L, data->ratings + w * (L - 1));
	data->targets[w] = ratings[n - 1];
	if (data->hist_len[w] < sink->min_history)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("row %lld of the %s query has %d history ratings, but the model needs at least %d",
						(long long) sink->rows + 1, sink->purpose, data->hist_len[w], sink->min_history),
				 errdetail("The model was trained only on windows of %d movies or more.",
						   sink->min_history + 1)));
	data->users[w] = sink->has_users ? bst_model_user_index(sink->model, user) : 0;
	data->n++;
	sink->rows++;
	if (data->n == sink->capacity)
	{
		sink->chunk(sink->arg, data);
		data->n = 0;
	}
}

/*
 * Run query (an evaluation's) and pack its windows for model, capacity at a
 * time, handing each chunk to chunk(arg, data) as soon as it is full and the
 * last one at the end: memory follows the chunk, not the query.  Windows
 * with fewer history ratings than the model was trained on are an error
 * when min_history > 0 (a fixed-length model).  Returns the number of
 * windows.
 */
int64
bst_dataset_read_chunks(const char *query, const char *purpose, const BstModel *model,
						int32 min_history, int32 capacity, BstChunkFn chunk, void *arg)
{
	ChunkSink	sink;
	const int	L = bst_model_config(model)->seq_len;

	memset(&sink, 0, sizeof(sink));
	sink.model = model;
	sink.min_history = min_history;
	sink.purpose = purpose;
	sink.capacity = capacity;
	sink.chunk = chunk;
	sink.arg = arg;
	sink.data.seq_len = L;
	sink.data.movies = palloc(sizeof(int32) * capacity * L);
	sink.data.ratings = palloc(sizeof(float) * capacity * (L - 1));
	sink.data.hist_len = palloc(sizeof(int32) * capacity);
	sink.data.users = palloc(sizeof(int32) * capacity);
	sink.data.targets = palloc(sizeof(float) * capacity);

	/* has_users is set on the first fetch, before any window. */
	read_windows(query, purpose, chunk_window, &sink, &sink.has_users);
	if (sink.data.n > 0)
		chunk(arg, &sink.data);
	pfree(sink.data.movies);
	pfree(sink.data.ratings);
	pfree(sink.data.hist_len);
	pfree(sink.data.users);
	pfree(sink.data.targets);
	return sink.rows;
}

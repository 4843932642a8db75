/*
 * bst.c
 *	  Module entry point: GUCs, the core's allocator hook, and helpers shared
 *	  by the SQL-facing files.
 */
#include "postgres.h"

#include "access/parallel.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "bst.h"
#include "core/blas_load.h"
#include "core/bst_alloc.h"
#include "core/parallel.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

char	   *bst_default_model = NULL;
int			bst_model_cache_memory_kb = 256 * 1024;
int			bst_train_memory_kb = 0;
bool		bst_history_index_scan = true;
static int	bst_threads = 0;

/* Where the numerical core's allocations go; see bst_core_memory(). */
static MemoryContext core_context = NULL;

static void *
core_alloc(size_t size)
{
	/*
	 * NULL on failure: the core reports it and the caller raises the error.
	 * An allocation outside bst_core_memory() is a bug, but one that must
	 * end in that error rather than in a crash.
	 */
	Assert(core_context != NULL);
	if (core_context == NULL)
		return NULL;
	return MemoryContextAllocExtended(core_context, size,
									  MCXT_ALLOC_HUGE | MCXT_ALLOC_NO_OOM);
}

static void
core_free(void *ptr)
{
	pfree(ptr);
}

MemoryContext
bst_core_memory(MemoryContext cxt)
{
	MemoryContext old = core_context;

	core_context = cxt;
	return old;
}

/*
 * PostgreSQL's parallel workers run one core thread each: the query already
 * runs in several processes, and a worker that only scores its share of the
 * rows should not start a pool of its own.  Asked at every parallel loop:
 * with bst in shared_preload_libraries, a parallel worker inherits the
 * setting from the postmaster and never applies bst.threads itself.
 */
static int
in_parallel_worker(void)
{
	return IsParallelWorker();
}

/*
 * Applies bst.threads whenever it changes: the core only records the count
 * (and ends surplus workers), so this is cheap and safe in an assign hook.
 */
static void
assign_threads(int newval, void *extra)
{
	bst_set_num_threads(newval);
}

void
_PG_init(void)
{
	/*
	 * First, before anything else is defined: when OpenBLAS cannot be loaded
	 * the error leaves nothing half set up, and the next use of the
	 * extension tries again.
	 */
	const char *blas_error = bst_blas_load();

	if (blas_error)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FILE),
				 errmsg("bst could not load OpenBLAS"),
				 errdetail("%s", blas_error),
				 errhint("Install OpenBLAS on the database server (on Debian: apt-get install libopenblas0).")));

	bst_set_allocator(core_alloc, core_free);
	bst_set_thread_veto(in_parallel_worker);

	DefineCustomStringVariable("bst.model",
							   "Model used by bst_predict(user_id, movie_id).",
							   "Empty means the most recently trained model the current role owns.",
							   &bst_default_model,
							   "",
							   PGC_USERSET,
							   0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("bst.threads",
							"Threads one backend uses to train, evaluate and score bst models.",
							"0 means the cores this process may run on, at most " CppAsString2(BST_AUTO_THREADS_MAX) ".",
							&bst_threads,
							0, 0, BST_MAX_THREADS,
							PGC_USERSET,
							0,
							NULL, assign_threads, NULL);
	DefineCustomIntVariable("bst.model_cache_memory",
							"Memory one backend keeps loaded bst models in.",
							"The least recently used models are evicted beyond it.",
							&bst_model_cache_memory_kb,
							256 * 1024, 1024, MAX_KILOBYTES,
							PGC_USERSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bst.train_memory",
							"Most memory one bst_train may allocate for the model and its training.",
							"0 means maintenance_work_mem.  Windows beyond what it leaves room for are kept in temporary files.",
							&bst_train_memory_kb,
							0, 0, MAX_KILOBYTES,
							PGC_USERSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("bst.history_index_scan",
							 "Reads a user's latest ratings straight from the history table's index.",
							 "bst_predict(user_id, movie_id), bst_recommend and bst_explain read them through the "
							 "table's btree index on (user_id, unix_timestamp, movie_id, rating) when it has one; "
							 "off runs a query for them instead, which gives the same rows.",
							 &bst_history_index_scan,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);
	MarkGUCPrefixReserved("bst");
}

/*
 * Apply bst.threads before the core runs.  assign_threads() already does
 * whenever it changes, so this only repeats it; kept for its callers.
 */
void
bst_use_threads(void)
{
	bst_set_num_threads(bst_threads);
}

/*
 * bst_compute_info(): the BLAS, its kernels and where they came from, and
 * the threads a training would use, e.g. "OpenBLAS 0.3.21 ... SkylakeX
 * MAX_THREADS=64, kernels SkylakeX (chosen by bst: AVX-512), 2 threads".
 */
PG_FUNCTION_INFO_V1(bst_compute_info);

Datum
bst_compute_info(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(bst_compute_description()));
}

void
bst_arg_not_null(FunctionCallInfo fcinfo, int argno, const char *argname)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be NULL", argname)));
}

/* A relation's schema-qualified name, quoted for SQL. */
char *
bst_relation_name(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
}

/*
 * The extension is not relocatable, so the schema of the function being
 * called is the schema of all its objects.
 */
const char *
bst_schema(FunctionCallInfo fcinfo)
{
	return quote_identifier(get_namespace_name(get_func_namespace(fcinfo->flinfo->fn_oid)));
}

/*
 * name, or its first BST_MESSAGE_NAME_BYTES bytes (whole characters) and
 * "...": a NOTICE or an error should not repeat a name of a kilobyte.
 */
const char *
bst_short_name(const char *name)
{
	int			len = strlen(name);

	if (len <= BST_MESSAGE_NAME_BYTES)
		return name;
	return psprintf("%.*s...", pg_mbcliplen(name, len, BST_MESSAGE_NAME_BYTES), name);
}

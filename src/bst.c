/*
 * bst.c
 *	  Module entry point: GUCs, the core's allocator hook, and helpers shared
 *	  by the SQL-facing files.
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "bst.h"
#include "core/bst_alloc.h"
#include "core/parallel.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

char	   *bst_default_model = NULL;
int			bst_model_cache_memory_kb = 256 * 1024;
int			bst_train_memory_kb = 0;
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

void
_PG_init(void)
{
	bst_set_allocator(core_alloc, core_free);

	DefineCustomStringVariable("bst.model",
							   "Model used by bst_predict(user_id, movie_id).",
							   "Empty means the most recently trained model the current role owns.",
							   &bst_default_model,
							   "",
							   PGC_USERSET,
							   0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("bst.threads",
							"Threads one backend uses to train and evaluate bst models.",
							"0 means every core this process may run on.",
							&bst_threads,
							0, 0, 64,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);
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
							"0 means maintenance_work_mem.",
							&bst_train_memory_kb,
							0, 0, MAX_KILOBYTES,
							PGC_USERSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);
	MarkGUCPrefixReserved("bst");
}

/*
 * Apply bst.threads before the core runs.  Not an assign hook: the core
 * starts its thread pool here, which must not happen while GUCs are being
 * loaded.
 */
void
bst_use_threads(void)
{
	bst_set_num_threads(bst_threads);
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

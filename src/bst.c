/*
 * bst.c
 *	  Module entry point: GUCs, the core's allocator hook, and helpers shared
 *	  by the SQL-facing files.
 */
#include "postgres.h"

#include "fmgr.h"
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
							   "Empty means the most recently trained model.",
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
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
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

/*
 * bst.c
 *	  Module entry point and helpers shared by the SQL-facing files.
 */
#include "postgres.h"

#include "fmgr.h"

#include "bst.h"

PG_MODULE_MAGIC;

void
bst_arg_not_null(FunctionCallInfo fcinfo, int argno, const char *argname)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", argname)));
}

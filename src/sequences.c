/*
 * sequences.c
 *	  bst_sequences(): cut each user's time-ordered ratings into windows,
 *	  exactly as the Keras BST example does, or with the short windows at
 *	  the start of each user's history too (min_len).
 *
 * By default (min_len NULL) windows start at positions 0, step, 2*step, ...
 * of a user's ratings while a whole window fits; then the user's last
 * seq_len ratings are appended as a final window, even when that repeats the
 * window before it (the example does so whenever (n - seq_len) is a multiple
 * of step, and its published counts include those repeats).  Users with
 * fewer than seq_len ratings give no window.
 *
 * With min_len = k (2 .. seq_len), windows end at the 1-based positions k,
 * k + step, k + 2*step, ... of a user's ratings, each holding the last
 * seq_len ratings up to there (fewer near the start), and there is no tail
 * window, so no rating is the target of two windows and targets stay step
 * ratings apart.  Step 1 and min_len 2 make every rating but a user's first
 * the target of exactly one window: a user with n ratings gives n - 1.
 *
 * Ratings with equal timestamps are ordered by movie id (and a movie rated
 * twice at one instant by rating), so the result does not depend on the
 * physical order of the table.
 *
 * The work is one SQL query over the bst_window_agg window aggregate: the
 * executor sorts and slides the frame; this file validates the arguments
 * with proper error codes, builds that query and streams its rows into the
 * function's result.
 *
 * bst 1.0 declares the function with seven arguments, 1.1 adds min_len as
 * the eighth.  This one C function serves both: a library built for 1.1 may
 * run under a database still at 1.0 until ALTER EXTENSION bst UPDATE, so
 * min_len is read only when PG_NARGS() says the declaration has it.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/tuplestore.h"

#include "bst.h"

PG_FUNCTION_INFO_V1(bst_sequences);

#define SEQUENCES_FETCH_ROWS 10000

/*
 * The shortest window: one rated movie followed by the target.  The lower
 * bound of both seq_len and min_len.
 */
#define SEQUENCES_MIN_WINDOW 2

/* min_len is the eighth argument in 1.1 and absent from 1.0's declaration. */
#define SEQUENCES_ARGNO_MIN_LEN 7

typedef enum ColumnKind
{
	COLUMN_ID,					/* user or movie id: an integer */
	COLUMN_RATING,				/* any number */
	COLUMN_TIME					/* anything ordered in time */
} ColumnKind;

static bool
column_type_fits(Oid type, ColumnKind kind)
{
	switch (type)
	{
		case INT2OID:
		case INT4OID:
			return true;
		case INT8OID:
		case FLOAT4OID:
		case FLOAT8OID:
		case NUMERICOID:
			return kind != COLUMN_ID || type == INT8OID;
		case DATEOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			return kind == COLUMN_TIME;
		default:
			return false;
	}
}

/*
 * Look up a column of the source by name and check its type; returns the
 * column name quoted for SQL.
 */
static const char *
source_column(Oid relid, FunctionCallInfo fcinfo, int argno,
			  const char *argname, ColumnKind kind)
{
	char	   *colname;
	AttrNumber	attnum;
	Oid			type;
	static const char *const expected[] = {
		[COLUMN_ID] = "an integer type",
		[COLUMN_RATING] = "a numeric type",
		[COLUMN_TIME] = "a numeric, date or timestamp type",
	};

	bst_arg_not_null(fcinfo, argno, argname);
	colname = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	attnum = get_attnum(relid, colname);
	if (attnum == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist",
						colname, get_rel_name(relid)),
				 errhint("Name the column with the %s argument.", argname)));

	type = get_atttype(relid, attnum);
	if (!column_type_fits(type, kind))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" of relation \"%s\" has type %s, but %s must be %s",
						colname, get_rel_name(relid), format_type_be(type),
						argname, expected[kind])));

	return quote_identifier(colname);
}

Datum
bst_sequences(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			relid;
	int32		seq_len;
	int32		step;
	int32		first_end;
	int32		tail_copies;
	const char *user_col;
	const char *movie_col;
	const char *rating_col;
	const char *time_col;
	const char *schema;
	StringInfoData query;
	Portal		portal;

	bst_arg_not_null(fcinfo, 0, "source");
	bst_arg_not_null(fcinfo, 1, "seq_len");
	bst_arg_not_null(fcinfo, 2, "step");
	relid = PG_GETARG_OID(0);
	seq_len = PG_GETARG_INT32(1);
	step = PG_GETARG_INT32(2);

	if (seq_len < SEQUENCES_MIN_WINDOW || seq_len > BST_MAX_SEQ_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("seq_len must be between %d and %d, not %d",
						SEQUENCES_MIN_WINDOW, BST_MAX_SEQ_LEN, seq_len),
				 errdetail("A sequence is at least one rated movie followed by the target movie.")));
	if (step < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("step must be at least 1, not %d", step)));

	/*
	 * first_end is the 1-based position of a user's first window end: the
	 * first full window without min_len, else min_len.  Only the Keras
	 * windowing adds the tail window.
	 */
	if (PG_NARGS() > SEQUENCES_ARGNO_MIN_LEN && !PG_ARGISNULL(SEQUENCES_ARGNO_MIN_LEN))
	{
		int32		min_len = PG_GETARG_INT32(SEQUENCES_ARGNO_MIN_LEN);
		int32		min_len_max = seq_len;	/* a window never exceeds seq_len */

		if (min_len < SEQUENCES_MIN_WINDOW || min_len > min_len_max)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("min_len must be between %d and seq_len (%d), not %d",
							SEQUENCES_MIN_WINDOW, min_len_max, min_len),
					 errdetail("A window is at least one rated movie followed by the target, and at most seq_len ratings long."),
					 errhint("Pass min_len => NULL for the Keras windows, all of length seq_len.")));
		first_end = min_len;
		tail_copies = 0;
	}
	else
	{
		first_end = seq_len;
		tail_copies = 1;
	}

	if (get_rel_name(relid) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));

	user_col = source_column(relid, fcinfo, 3, "user_column", COLUMN_ID);
	movie_col = source_column(relid, fcinfo, 4, "movie_column", COLUMN_ID);
	rating_col = source_column(relid, fcinfo, 5, "rating_column", COLUMN_RATING);
	time_col = source_column(relid, fcinfo, 6, "time_column", COLUMN_TIME);
	schema = bst_schema(fcinfo);

	/*
	 * pos is the 1-based position of the window's last rating.  A window
	 * ends at pos = first_end, first_end + step, ...: for the Keras windows
	 * (first_end = seq_len) those that start at a multiple of step; the
	 * frame of seq_len rows holds fewer while pos < seq_len, which only
	 * min_len lets through the filter.  In the Keras windowing the user's
	 * last row (pos = n) also ends the tail window, a second copy when the
	 * regular windows already ended there.  "bad" flags NULL user ids and
	 * NULL timestamps (whose order would be arbitrary) without a second scan
	 * of the source; it is computed on every row, so the short windows do
	 * not change which inputs are errors.
	 */
	initStringInfo(&query);
	/*
	 * Every function, operator and type is pg_catalog's: the query runs with
	 * the caller's search_path, where another role's objects must not be
	 * picked up.  OPERATOR() has a single precedence, hence the parentheses.
	 */
	appendStringInfo(&query,
					 "SELECT user_id, movie_ids, ratings, bad "
					 "FROM (SELECT u AS user_id, "
					 "             %s.bst_window_agg(m) OVER w AS movie_ids, "
					 "             %s.bst_window_agg(r) OVER w AS ratings, "
					 "             pg_catalog.row_number() OVER w AS pos, "
					 "             pg_catalog.count(*) OVER p AS n, "
					 "             u IS NULL OR ((pg_catalog.count(t) OVER p) OPERATOR(pg_catalog.<) "
					 "                           (pg_catalog.count(*) OVER p)) AS bad "
					 "      FROM (SELECT %s::pg_catalog.int4 AS u, %s::pg_catalog.int4 AS m, "
					 "                   %s::pg_catalog.float4 AS r, %s AS t "
					 "            FROM %s) AS s "
					 "      WINDOW p AS (PARTITION BY u), "
					 "             w AS (p ORDER BY t, m, r ROWS BETWEEN %d PRECEDING AND CURRENT ROW)"
					 "     ) AS windows "
					 "CROSS JOIN LATERAL pg_catalog.generate_series(1, CASE WHEN bad THEN 1 ELSE "
					 "    (((pos OPERATOR(pg_catalog.-) %d) OPERATOR(pg_catalog.%%) %d) "
					 "       OPERATOR(pg_catalog.=) 0)::pg_catalog.int4 "
					 "    OPERATOR(pg_catalog.+) "
					 "    (%d OPERATOR(pg_catalog.*) ((pos OPERATOR(pg_catalog.=) n)::pg_catalog.int4)) END) "
					 "WHERE (pos OPERATOR(pg_catalog.>=) %d) OR bad",
					 schema, schema,
					 user_col, movie_col, rating_col, time_col,
					 bst_relation_name(relid),
					 seq_len - 1, first_end, step, tail_copies, first_end);

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	portal = SPI_cursor_open_with_args(NULL, query.data, 0, NULL, NULL, NULL,
									   true, CURSOR_OPT_NO_SCROLL);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, SEQUENCES_FETCH_ROWS);
		if (SPI_processed == 0)
			break;

		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	row = SPI_tuptable->vals[i];
			Datum		values[3];
			bool		nulls[3];
			bool		isnull;

			if (DatumGetBool(SPI_getbinval(row, SPI_tuptable->tupdesc, 4, &isnull)))
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("bst_sequences does not accept NULL user ids or timestamps"),
						 errhint("Filter out rows where user_column or time_column is NULL.")));

			for (int c = 0; c < 3; c++)
				values[c] = SPI_getbinval(row, SPI_tuptable->tupdesc, c + 1, &nulls[c]);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	SPI_finish();

	return (Datum) 0;
}

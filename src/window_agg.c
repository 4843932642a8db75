/*
 * window_agg.c
 *	  bst_window_agg(integer) and bst_window_agg(real): collect the rows of a
 *	  window frame into an array, oldest first.
 *
 * Used as
 *	  bst_window_agg(movie_id) OVER (PARTITION BY user_id
 *		  ORDER BY unix_timestamp, movie_id
 *		  ROWS BETWEEN 3 PRECEDING AND CURRENT ROW)
 * it yields each row's window of the last four ratings.  The aggregate has
 * moving-aggregate support: the state is a ring buffer, the forward
 * transition appends the row entering the frame and the inverse transition
 * drops the oldest one, so a sliding frame costs O(1) per row instead of
 * re-aggregating the whole frame.
 *
 * NULL elements are an error rather than skipped: a silently shorter window
 * would shift every later position of the sequence.  NaN and infinite
 * ratings are an error for the same reason they would poison training.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"

typedef struct WindowAggState
{
	Oid			elemtype;		/* INT4OID or FLOAT4OID */
	int			head;			/* ring index of the oldest element */
	int			count;			/* elements in the frame */
	int			capacity;		/* allocated slots in values */
	Datum	   *values;
} WindowAggState;

PG_FUNCTION_INFO_V1(bst_window_agg_transfn);
PG_FUNCTION_INFO_V1(bst_window_agg_invfn);
PG_FUNCTION_INFO_V1(bst_window_agg_finalfn);

static void
check_element(FunctionCallInfo fcinfo, Oid elemtype)
{
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("bst_window_agg does not accept NULL elements"),
				 errhint("Filter out or fill in rows with NULL movie ids or ratings before building sequences.")));

	if (elemtype == FLOAT4OID && !isfinite(PG_GETARG_FLOAT4(1)))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("bst_window_agg does not accept NaN or infinite ratings")));
}

Datum
bst_window_agg_transfn(PG_FUNCTION_ARGS)
{
	MemoryContext aggcontext;
	WindowAggState *state;
	Oid			elemtype = get_fn_expr_argtype(fcinfo->flinfo, 1);

	if (!AggCheckCallContext(fcinfo, &aggcontext))
		elog(ERROR, "bst_window_agg_transfn called in non-aggregate context");

	check_element(fcinfo, elemtype);

	if (PG_ARGISNULL(0))
	{
		state = MemoryContextAlloc(aggcontext, sizeof(WindowAggState));
		state->elemtype = elemtype;
		state->head = 0;
		state->count = 0;
		state->capacity = 8;
		state->values = MemoryContextAlloc(aggcontext, state->capacity * sizeof(Datum));
	}
	else
		state = (WindowAggState *) PG_GETARG_POINTER(0);

	if (state->count == state->capacity)
	{
		/* Unroll the ring into a buffer twice the size. */
		Datum	   *values = MemoryContextAllocHuge(aggcontext, 2 * (Size) state->capacity * sizeof(Datum));

		for (int i = 0; i < state->count; i++)
			values[i] = state->values[(state->head + i) % state->capacity];
		pfree(state->values);
		state->values = values;
		state->head = 0;
		state->capacity *= 2;
	}

	state->values[(state->head + state->count) % state->capacity] = PG_GETARG_DATUM(1);
	state->count++;

	PG_RETURN_POINTER(state);
}

/*
 * Inverse transition: the executor removes rows from the frame head in the
 * order they were added, so the row leaving is always the oldest one.
 */
Datum
bst_window_agg_invfn(PG_FUNCTION_ARGS)
{
	WindowAggState *state;

	if (!AggCheckCallContext(fcinfo, NULL))
		elog(ERROR, "bst_window_agg_invfn called in non-aggregate context");
	if (PG_ARGISNULL(0))
		elog(ERROR, "bst_window_agg_invfn called with an empty state");

	state = (WindowAggState *) PG_GETARG_POINTER(0);
	Assert(state->count > 0);
	state->head = (state->head + 1) % state->capacity;
	state->count--;

	PG_RETURN_POINTER(state);
}

Datum
bst_window_agg_finalfn(PG_FUNCTION_ARGS)
{
	WindowAggState *state;
	Datum	   *values;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();

	state = (WindowAggState *) PG_GETARG_POINTER(0);
	values = palloc(Max(state->count, 1) * sizeof(Datum));
	for (int i = 0; i < state->count; i++)
		values[i] = state->values[(state->head + i) % state->capacity];

	/* int4 and float4 are both 4-byte, pass-by-value, int-aligned. */
	PG_RETURN_ARRAYTYPE_P(construct_array(values, state->count, state->elemtype,
										  sizeof(int32), true, TYPALIGN_INT));
}

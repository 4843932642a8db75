/*
 * A user's latest ratings read straight from a btree index.
 *
 * bst_predict(user_id, movie_id) reads the user's latest seq_len - 1
 * ratings at every call.  Through SPI that is a cached plan, but its
 * executor is started and ended at every call, under the model owner's
 * identity and a search_path of its own: 56% of a call's time on
 * ML-1M (perf: ExecutorStart, the GUC nest level, SPI), twice the index
 * descent itself.  When the history is a plain table with an index that
 * gives the query's order, this reads that index directly, as
 * PostgreSQL's catalog scans do, and takes the values from the index
 * tuples (an index-only scan, as the planner chooses for that query).
 *
 * The query read through SPI (predict.c) stays the definition: a table is
 * read here only when that query would read the same rows in the same
 * order and would run no code of anyone's:
 * - a plain table without row-level security and without inheritance
 *   children (which a SELECT from it would read too);
 * - readable by the model's owner, as whom the query runs;
 * - a valid btree index whose first four key columns are user_id,
 *   unix_timestamp, movie_id and rating, each with its type's default
 *   operator class (built in), ascending, nulls last, with no expression
 *   and no predicate: read backwards from the end of the user's entries,
 *   it gives ORDER BY unix_timestamp DESC, movie_id DESC, rating DESC;
 * - user_id and movie_id of type integer, rating real, unix_timestamp
 *   bigint or integer: the query's casts are then identities;
 * - of the heap access method (the visibility map decides which rows are
 *   visible), and neither temporary nor unlogged on a hot standby;
 * - an index that the statement's snapshot may use (indcheckxmin: a plain
 *   CREATE INDEX over broken HOT chains holds only the newest version of
 *   each, which older snapshots must not read; the planner skips it too);
 * - a schema-qualified name, resolved as the model's owner (its USAGE of
 *   the schema), as the query resolves it.
 * Anything else takes the SPI path.  bst.history_index_scan = off forces it.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/transam.h"
#include "access/xlog.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/visibilitymap.h"
#include "catalog/namespace.h"
#include "catalog/pg_am_d.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type_d.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/predicate.h"
#include "utils/acl.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/typcache.h"
#include "utils/varlena.h"

#include "bst.h"

/* The history's columns, in the index's key order. */
enum
{
	COL_USER,
	COL_TIME,
	COL_MOVIE,
	COL_RATING,
	N_COLS
};

static const char *const col_names[N_COLS] = {"user_id", "unix_timestamp", "movie_id", "rating"};

static bool
col_type_ok(int col, Oid type)
{
	switch (col)
	{
		case COL_USER:
		case COL_MOVIE:
			return type == INT4OID;
		case COL_TIME:
			return type == INT8OID || type == INT4OID;
		default:
			return type == FLOAT4OID;
	}
}

/*
 * The table's attribute numbers of the history columns, when each exists
 * with a type this path reads.
 */
static bool
table_columns(Relation heap, AttrNumber attnums[N_COLS])
{
	TupleDesc	desc = RelationGetDescr(heap);

	for (int col = 0; col < N_COLS; col++)
	{
		attnums[col] = InvalidAttrNumber;
		for (int i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);

			if (!att->attisdropped && strcmp(NameStr(att->attname), col_names[col]) == 0)
			{
				if (!col_type_ok(col, att->atttypid))
					return false;
				attnums[col] = att->attnum;
				break;
			}
		}
		if (attnums[col] == InvalidAttrNumber)
			return false;
	}
	return true;
}

/*
 * The btree operator family of type's default operator class, when it is a
 * built-in one (else InvalidOid), from the type cache.
 */
static Oid
builtin_btree_family(Oid type)
{
	Oid			family = lookup_type_cache(type, TYPECACHE_BTREE_OPFAMILY)->btree_opf;

	return family < FirstNormalObjectId ? family : InvalidOid;
}

/* Whether index gives the history query's rows in its order (above). */
static bool
index_fits(Relation index, Relation heap, const AttrNumber attnums[N_COLS])
{
	Form_pg_index form = index->rd_index;
	TupleDesc	desc = RelationGetDescr(heap);

	if (index->rd_rel->relam != BTREE_AM_OID || !form->indisvalid || !form->indislive ||
		!form->indisready || form->indnkeyatts < N_COLS ||
		!heap_attisnull(index->rd_indextuple, Anum_pg_index_indexprs, NULL) ||
		!heap_attisnull(index->rd_indextuple, Anum_pg_index_indpred, NULL))
		return false;
	/* As get_relation_info (plancat.c) skips an index too new to use. */
	if (form->indcheckxmin &&
		!TransactionIdPrecedes(HeapTupleHeaderGetXmin(index->rd_indextuple->t_data), TransactionXmin))
		return false;
	for (int col = 0; col < N_COLS; col++)
	{
		Oid			family = builtin_btree_family(TupleDescAttr(desc, attnums[col] - 1)->atttypid);

		if (form->indkey.values[col] != attnums[col] || index->rd_indoption[col] != 0 ||
			!OidIsValid(family) || index->rd_opfamily[col] != family)
			return false;
	}
	return true;
}

/*
 * The user's latest ratings (up to limit, newest first) into movies and
 * ratings through an index of the history table, and true; false when the
 * table has no such index or is not one this path reads (the caller then
 * runs the query).  reader: the role the query would run as.
 */
bool
bst_history_index_read(RangeVar *history, Oid reader, int32 user_id, int limit,
					   int32 *movies, float *ratings, bool *nulls, int *found)
{
	Oid			relid;
	Oid			save_userid;
	int			save_sec_context;
	Relation	heap;
	Relation	index = NULL;
	AttrNumber	attnums[N_COLS];
	List	   *indexes;
	ListCell   *lc;
	Snapshot	snapshot = GetActiveSnapshot();
	IndexScanDesc scan;
	ScanKeyData keys[2];
	Buffer		vm_buffer = InvalidBuffer;
	TupleTableSlot *slot = NULL;
	ItemPointer tid;

	/*
	 * The name as the query resolves it: as the owner (an error restores the
	 * identity at the transaction's abort), and only with its schema, as the
	 * query's search_path holds no schema of anyone's.  A missing relation:
	 * the query reports it.
	 */
	if (history->schemaname == NULL)
		return false;
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(reader, save_sec_context | SECURITY_RESTRICTED_OPERATION);
	relid = RangeVarGetRelid(history, AccessShareLock, true);
	SetUserIdAndSecContext(save_userid, save_sec_context);
	if (!OidIsValid(relid))
		return false;
	heap = table_open(relid, NoLock);
	if (heap->rd_rel->relkind != RELKIND_RELATION || heap->rd_rel->relam != HEAP_TABLE_AM_OID ||
		heap->rd_rel->relpersistence == RELPERSISTENCE_TEMP ||
		(heap->rd_rel->relpersistence == RELPERSISTENCE_UNLOGGED && RecoveryInProgress()) ||
		heap->rd_rel->relrowsecurity ||
		heap->rd_rel->relhassubclass || !IsMVCCSnapshot(snapshot) ||
		pg_class_aclcheck(relid, reader, ACL_SELECT) != ACLCHECK_OK ||
		!table_columns(heap, attnums))
	{
		table_close(heap, NoLock);
		return false;
	}
	indexes = RelationGetIndexList(heap);
	foreach(lc, indexes)
	{
		Relation	candidate = index_open(lfirst_oid(lc), AccessShareLock);

		if (index_fits(candidate, heap, attnums))
		{
			index = candidate;
			break;
		}
		index_close(candidate, NoLock);
	}
	list_free(indexes);
	if (index == NULL)
	{
		table_close(heap, NoLock);
		return false;
	}

	elog(DEBUG1, "bst: history of user %d read through index \"%s\"", user_id,
		 RelationGetRelationName(index));

	/*
	 * The user's entries with a timestamp (IS NOT NULL as a key, as the
	 * planner makes it), from the last (newest) back.
	 */
	ScanKeyInit(&keys[0], COL_USER + 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(user_id));
	ScanKeyEntryInitialize(&keys[1], SK_ISNULL | SK_SEARCHNOTNULL, COL_TIME + 1, InvalidStrategy,
						   InvalidOid, InvalidOid, InvalidOid, (Datum) 0);
	scan = index_beginscan(heap, index, snapshot, 2, 0);
	scan->xs_want_itup = true;
	index_rescan(scan, keys, 2, NULL, 0);
	*found = 0;
	while (*found < limit && (tid = index_getnext_tid(scan, BackwardScanDirection)) != NULL)
	{
		bool		movie_null;
		bool		rating_null;
		Datum		movie;
		Datum		rating;

		CHECK_FOR_INTERRUPTS();

		/*
		 * As an index-only scan decides whether the entry's row is visible:
		 * from the visibility map, else from the row itself.
		 */
		if (!VM_ALL_VISIBLE(heap, ItemPointerGetBlockNumber(tid), &vm_buffer))
		{
			if (slot == NULL)
				slot = table_slot_create(heap, NULL);
			if (!index_fetch_heap(scan, slot))
				continue;
			ExecClearTuple(slot);
		}
		else
			PredicateLockPage(heap, ItemPointerGetBlockNumber(tid), snapshot);

		movie = index_getattr(scan->xs_itup, COL_MOVIE + 1, scan->xs_itupdesc, &movie_null);
		rating = index_getattr(scan->xs_itup, COL_RATING + 1, scan->xs_itupdesc, &rating_null);
		movies[*found] = movie_null ? 0 : DatumGetInt32(movie);
		ratings[*found] = rating_null ? 0.0f : DatumGetFloat4(rating);
		nulls[*found] = movie_null || rating_null;
		(*found)++;
	}
	if (BufferIsValid(vm_buffer))
		ReleaseBuffer(vm_buffer);
	if (slot)
		ExecDropSingleTupleTableSlot(slot);
	index_endscan(scan);
	/* Locks held to the end of the transaction, as the query's would be. */
	index_close(index, NoLock);
	table_close(heap, NoLock);
	return true;
}

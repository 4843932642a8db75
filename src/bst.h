/*
 * bst.h
 *	  Declarations shared by the SQL-facing files of the bst extension.
 *	  The numerical core (src/core) does not include this file, nor any
 *	  PostgreSQL header; these files are the thin layer between the two.
 */
#ifndef BST_H
#define BST_H

#include "fmgr.h"
#include "executor/spi.h"
#include "storage/itemptr.h"
#include "utils/memutils.h"

#include "core/fit.h"
#include "core/model.h"

/* Longest window bst_sequences builds: far beyond any useful model. */
#define BST_MAX_SEQ_LEN 1024

/* GUC bst.model: the model bst_predict(user_id, movie_id) uses. */
extern char *bst_default_model;

/* Apply the bst.threads setting to the numerical core. */
extern void bst_use_threads(void);

/* Raise a clear error when argument argno (named argname) is NULL. */
extern void bst_arg_not_null(FunctionCallInfo fcinfo, int argno, const char *argname);

/* A relation's schema-qualified name, quoted for SQL. */
extern char *bst_relation_name(Oid relid);

/* The extension's schema, quoted for SQL. */
extern const char *bst_schema(FunctionCallInfo fcinfo);

/*
 * The numerical core allocates through a hook; these route it into a
 * PostgreSQL memory context, so an error or a cancel frees everything.
 * Returns the previous context.
 */
extern MemoryContext bst_core_memory(MemoryContext cxt);

/*
 * The windows of a query as read (dataset.c): ragged, ids not yet mapped.
 * Window w is movies/ratings[offsets[w] .. offsets[w+1]).
 */
typedef struct BstDataset
{
	int64		n;				/* windows */
	int64		capacity;
	int64		element_capacity;
	int64	   *offsets;		/* [n + 1] */
	int32	   *movies;			/* movie ids */
	float	   *ratings;		/* the last of a window is its target's label */
	int32	   *users;			/* [n] user ids (0 when the query has none) */
	bool		has_users;		/* the query returned a user_id column */
	int32		max_len;		/* longest window */
} BstDataset;

extern SPIPlanPtr bst_prepare_select(const char *query, const char *purpose);
extern void bst_dataset_read(BstDataset *ds, const char *query, const char *purpose);
extern void bst_dataset_pack(const BstDataset *ds, const BstModel *model, int32 min_history,
							 const char *purpose, BstData *data);

/*
 * What identifies a version of the stored weights: the model_id no other row
 * ever gets, and the row version (xmin, ctid), which any UPDATE changes.
 */
typedef struct BstModelKey
{
	int64		model_id;
	TransactionId xmin;
	ItemPointerData ctid;
} BstModelKey;

/*
 * A stored model, deserialized and cached for the life of the backend.  An
 * entry is never freed while a statement may still use it: eviction only
 * retires it, and retired entries are freed at the end of the transaction.
 */
typedef struct BstStoredModel
{
	BstModelKey key;
	char	   *name;
	int32		version;
	char	   *history;		/* relation of the rating histories, or NULL */
	float		fallback_rating;	/* mean training target, for short histories */
	int32		min_history;	/* fewest history ratings the model was trained on */
	BstModel   *model;
	BstPredictor *predictor;
	SPIPlanPtr	history_plan;	/* latest ratings of a user, prepared once */
	MemoryContext context;		/* holds all of the above */
} BstStoredModel;

extern BstStoredModel *bst_model_get(FunctionCallInfo fcinfo, const char *name);
extern BstStoredModel *bst_model_find(const BstModelKey *key);
extern int32 bst_model_store(FunctionCallInfo fcinfo, const char *name, const BstModel *model,
							 const char *config_json, const char *metrics_json,
							 const char *history);

#endif							/* BST_H */

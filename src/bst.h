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
#include "nodes/primnodes.h"
#include "storage/itemptr.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "core/fit.h"
#include "core/model.h"

/*
 * Largest magnitude of a rating or label: any rating scale, yet far from
 * where a squared error overflows a float.
 */
#define BST_MAX_ABS_RATING 1e6

/*
 * Longest model name, in bytes: far from what the (name, version) index can
 * hold, so that a name is refused before training rather than at the insert.
 */
#define BST_MAX_MODEL_NAME_BYTES 1024

/* Longest model name a message quotes whole; longer ones are shortened. */
#define BST_MESSAGE_NAME_BYTES 64

/* GUC bst.model: the model bst_predict(user_id, movie_id) uses. */
extern char *bst_default_model;

/* GUC bst.model_cache_memory (kB): loaded models a backend keeps. */
extern int	bst_model_cache_memory_kb;

/* GUC bst.train_memory (kB): the most one training may allocate. */
extern int	bst_train_memory_kb;

/* GUC bst.history_index_scan: histories read from their index (history_index.c). */
extern bool bst_history_index_scan;

/* name, shortened for a message when it is long. */
extern const char *bst_short_name(const char *name);

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

extern SPIPlanPtr bst_prepare_select(const char *query, const char *purpose);

/* An evaluation's windows, a chunk at a time (dataset.c). */
typedef void (*BstChunkFn) (void *arg, const BstData *data);
extern int64 bst_dataset_read_chunks(const char *query, const char *purpose,
									 const BstModel *model, int32 min_history, int32 capacity,
									 BstChunkFn chunk, void *arg);

/* How a training's windows are packed while read (dataset.c). */
typedef struct BstReadOptions
{
	int32		seq_len;		/* the model's window length; 0: the longest
								 * window's (laid out up to BST_MAX_SEQ_LEN) */
	bool		movie_ids;		/* collect the distinct movie ids */
	double		limit;			/* most bytes the packed windows take in
								 * memory: beyond it they go to io's files */
	const BstSpillIO *io;
} BstReadOptions;

/* What the query returned besides the windows. */
typedef struct BstReadResult
{
	bool		has_users;		/* a user_id column */
	int32		max_len;		/* the longest window */
	int32	   *movie_ids;		/* distinct, ascending, when asked for */
	int64		n_movie_ids;
	int32	   *user_ids;		/* the windows' distinct users, ascending */
	int64		n_user_ids;
} BstReadResult;

extern void bst_dataset_read_packed(const char *query, const char *purpose,
									const BstReadOptions *o, MemoryContext cxt,
									BstData *data, BstReadResult *result);
extern void bst_dataset_map_ids(BstData *data, const BstModel *model, bool has_users);
extern void bst_dataset_spill(BstData *data, const BstSpillIO *io, MemoryContext cxt);

/* The core's temporary files (spill_file.c), their buffers in cxt. */
extern const BstSpillIO *bst_spill_io(MemoryContext cxt);

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
 * A stored model, deserialized and cached for the life of the backend.  A
 * call pins the entry it uses while it runs (other models may be loaded
 * meanwhile, by a query or a history view): eviction frees a pinned entry
 * only at its last unpin, or at the end of the transaction.
 */
typedef struct BstStoredModel
{
	BstModelKey key;
	char	   *name;
	int32		version;
	Oid			owner;			/* the role the history is read as; InvalidOid
								 * in a 1.0 install */
	char	   *history;		/* relation of the rating histories, or NULL */
	float		fallback_rating;	/* mean training target, for short histories */
	int32		min_history;	/* fewest history ratings the model was trained on */
	BstModel   *model;
	BstPredictor *predictor;	/* frozen (model.h), but the sgemm one for a
								 * model stored by 1.0 (model_store.c) */
	SPIPlanPtr	history_plan;	/* latest ratings of a user, prepared once */
	RangeVar   *history_rv;		/* history, parsed once */
	SPIPlanPtr	rated_plan;		/* every movie a user rated, prepared once */
	MemoryContext context;		/* holds all of the above */
	Size		bytes;			/* allocated in context */
	uint64		last_used;		/* cache clock when last found */
	int			pins;			/* calls running with it */
	uint64		uses;			/* calls served since loaded */
	bool		retired;		/* evicted while pinned: freed at the last unpin */
} BstStoredModel;

/* Live progress of bst_train, shown by the bst_training_progress view. */
extern void bst_progress_start(Oid models_relid, const char *name, int64 windows, int32 epochs);
extern void bst_progress_update(int32 epoch, int64 batch, int64 n_batches, double running_loss);
extern void bst_progress_end(void);

/* One epoch of a training, as bst_training_log stores it. */
typedef struct BstEpochLog
{
	BstEpochStats stats;
	TimestampTz at;				/* when it ended */
} BstEpochLog;

extern void bst_check_model_name(const char *name);
extern BstStoredModel *bst_model_get(FunctionCallInfo fcinfo, const char *name);
extern BstStoredModel *bst_model_find(const BstModelKey *key);
extern void bst_model_pin(BstStoredModel *entry);
extern void bst_model_unpin(BstStoredModel *entry);
extern bool bst_models_have_owner(FunctionCallInfo fcinfo);

/*
 * The model of name (NULL: bst.model, else the caller's own latest) for a
 * call, resolved once per command and pinned: unpin it when done.
 */
extern BstStoredModel *bst_model_for_call(FunctionCallInfo fcinfo, const char *name);

/*
 * From the model's history relation, read as the model's owner: the user's
 * latest seq_len - 1 ratings, oldest first, into movies and ratings (room
 * for BST_MAX_SEQ_LEN), returning how many; and every movie the user rated
 * (palloc'd, *n of them).
 */
extern int	bst_user_history(BstStoredModel *entry, int32 user_id, int32 *movies, float *ratings);
extern bool bst_history_index_read(RangeVar *history, Oid reader, int32 user_id, int limit,
								   int32 *movies, float *ratings, bool *nulls, int *found);
extern int32 *bst_user_rated_movies(BstStoredModel *entry, int32 user_id, int64 *n);
extern Oid	bst_model_owner(FunctionCallInfo fcinfo, const char *name);
/* Stores a new version of name: its weights, and its optimizer state when
 * state is not NULL (and the install has the column); returns the version. */
extern int32 bst_model_store(FunctionCallInfo fcinfo, const char *name, Oid owner,
							 const BstModel *model, const BstTrainState *state,
							 const char *config_json, const char *metrics_json,
							 const char *history, const BstEpochLog *log, int32 n_log);

/* A stored version as bst_train(warm_start => version) continues it. */
typedef struct BstStoredVersion
{
	int32		version;
	BstModel   *model;			/* its weights: a model of its own, not the cache's */
	BstTrainState *state;		/* its optimizer state */
	Jsonb	   *config;			/* its options, the value lists of its inputs */
} BstStoredVersion;

extern void bst_model_read_version(FunctionCallInfo fcinfo, const char *name, int32 version,
								   MemoryContext core_cxt, BstStoredVersion *out);

#endif							/* BST_H */

/*
 * progress.c
 *	  Live progress of a running bst_train, for other sessions to watch.
 *
 * PostgreSQL's progress reporting (the fields behind pg_stat_progress_*) is
 * what a backend offers other sessions without shared_preload_libraries: 20
 * int64 fields per backend, updated without locks, read through
 * pg_stat_get_progress_info().  An extension cannot add a command type, so a
 * training reports as the COPY type, marked by BST_PROGRESS_MAGIC in the
 * first field so that the bst_training_progress view tells it from a real
 * COPY (pg_stat_progress_copy shows it too, with a NULL command).  The
 * model's name travels in the last fields, 8 bytes each, big-endian so that
 * the view can decode it with int8send().  The fields are cleared when the
 * command ends, and by the abort of a failed or cancelled one.
 */
#include "postgres.h"

#include <math.h>

#include "commands/progress.h"
#include "mb/pg_wchar.h"
#include "utils/backend_progress.h"
#include "utils/timestamp.h"

#include "bst.h"

/* Field indexes; the view (bst--1.1.sql) reads param<index + 1>. */
enum
{
	PROGRESS_MAGIC,				/* BST_PROGRESS_MAGIC: this is a bst training */
	PROGRESS_EPOCH,				/* current epoch, 1-based */
	PROGRESS_EPOCHS,			/* epochs asked for */
	PROGRESS_BATCH,				/* batches done in this epoch */
	PROGRESS_BATCHES,			/* batches per epoch */
	PROGRESS_RUNNING_LOSS,		/* mean loss of the epoch so far, x 1e6; -1: none yet */
	PROGRESS_STARTED,			/* TimestampTz the training started */
	PROGRESS_WINDOWS,			/* training windows */
	PROGRESS_NAME_BYTES,		/* length of the (shortened) model name */
	PROGRESS_NAME				/* first of the fields holding the name */
};

#define PROGRESS_NAME_FIELDS (PGSTAT_NUM_PROGRESS_PARAM - PROGRESS_NAME)
#define PROGRESS_NAME_MAX (PROGRESS_NAME_FIELDS * 8)

/* "bst_trn" in ASCII: no real COPY reports this in its first field. */
#define BST_PROGRESS_MAGIC INT64CONST(0x6273745f74726e)

void
bst_progress_start(Oid models_relid, const char *name, int64 windows, int32 epochs)
{
	int			index[PGSTAT_NUM_PROGRESS_PARAM];
	int64		value[PGSTAT_NUM_PROGRESS_PARAM];
	int			len = pg_mbcliplen(name, strlen(name), PROGRESS_NAME_MAX);

	pgstat_progress_start_command(PROGRESS_COMMAND_COPY, models_relid);
	for (int i = 0; i < PGSTAT_NUM_PROGRESS_PARAM; i++)
	{
		index[i] = i;
		value[i] = 0;
	}
	value[PROGRESS_MAGIC] = BST_PROGRESS_MAGIC;
	value[PROGRESS_EPOCHS] = epochs;
	value[PROGRESS_RUNNING_LOSS] = -1;
	value[PROGRESS_STARTED] = GetCurrentTimestamp();
	value[PROGRESS_WINDOWS] = windows;
	value[PROGRESS_NAME_BYTES] = len;
	for (int i = 0; i < len; i++)
		value[PROGRESS_NAME + i / 8] |= (int64) (uint8) name[i] << (8 * (7 - i % 8));
	pgstat_progress_update_multi_param(PGSTAT_NUM_PROGRESS_PARAM, index, value);
}

void
bst_progress_update(int32 epoch, int64 batch, int64 n_batches, double running_loss)
{
	const int	index[4] = {PROGRESS_EPOCH, PROGRESS_BATCH, PROGRESS_BATCHES, PROGRESS_RUNNING_LOSS};
	int64		value[4];

	value[0] = epoch;
	value[1] = batch;
	value[2] = n_batches;
	value[3] = isfinite(running_loss) && running_loss >= 0 && running_loss < 1e12 ?
		(int64) llround(running_loss * 1e6) : -1;
	pgstat_progress_update_multi_param(4, index, value);
}

void
bst_progress_end(void)
{
	pgstat_progress_end_command();
}

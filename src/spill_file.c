/*
 * spill_file.c
 *	  The core's temporary files (spill.h) as PostgreSQL temporary files.
 *
 * A training whose windows do not fit bst.train_memory keeps them in
 * BufFiles: in the temporary tablespaces, counted against temp_file_limit,
 * deleted when closed or, after an error or a cancel, at the end of the
 * transaction.  Every failure raises PostgreSQL's own error, so the core
 * never sees one; reads and writes check for interrupts, so a cancel stops
 * an epoch's scatter as promptly as its batches.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/buffile.h"

#include "bst.h"

/* arg: the memory context the files' buffers live in. */
static void *
spill_create(void *arg)
{
	MemoryContext old = MemoryContextSwitchTo((MemoryContext) arg);
	BufFile    *file = BufFileCreateTemp(false);

	MemoryContextSwitchTo(old);
	return file;
}

static int
spill_write(void *file, const void *buf, size_t bytes, void *arg)
{
	CHECK_FOR_INTERRUPTS();
	BufFileWrite((BufFile *) file, unconstify(void *, buf), bytes);
	return 0;
}

static int
spill_rewind(void *file, void *arg)
{
	if (BufFileSeek((BufFile *) file, 0, 0, SEEK_SET) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not rewind a temporary file of training windows: %m")));
	return 0;
}

static int
spill_read(void *file, void *buf, size_t bytes, void *arg)
{
	size_t		got;

	CHECK_FOR_INTERRUPTS();
	got = BufFileRead((BufFile *) file, buf, bytes);
	if (got == 0)
		return 0;
	if (got != bytes)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("a temporary file of training windows ends within a chunk: read %zu of %zu bytes",
						got, bytes)));
	return 1;
}

static void
spill_close(void *file, void *arg)
{
	BufFileClose((BufFile *) file);
}

/* The core's temporary files, their buffers in cxt. */
const BstSpillIO *
bst_spill_io(MemoryContext cxt)
{
	BstSpillIO *io = MemoryContextAllocZero(cxt, sizeof(BstSpillIO));

	io->create = spill_create;
	io->write = spill_write;
	io->rewind = spill_rewind;
	io->read = spill_read;
	io->close = spill_close;
	io->arg = cxt;
	return io;
}

/*
 * bst.h
 *	  Declarations shared by the SQL-facing files of the bst extension.
 *	  The numerical core (src/core) does not include this file, nor any
 *	  PostgreSQL header.
 */
#ifndef BST_H
#define BST_H

#include "fmgr.h"

/* Longest window bst_sequences builds: far beyond any useful model. */
#define BST_MAX_SEQ_LEN 1024

/* Raise a clear error when argument argno (named argname) is NULL. */
extern void bst_arg_not_null(FunctionCallInfo fcinfo, int argno, const char *argname);

#endif							/* BST_H */

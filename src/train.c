/*
 * train.c
 *	  bst_train(): read the windows of a query and what the model's options
 *	  ask for (user features, genres), train a BST model with the core's
 *	  training loop (core/fit.c) and store it as a new version in bst_models.
 *
 * Every option defaults to NULL, meaning "the preset's value"; the presets
 * are the table below.  All of the core's buffers live in one memory
 * context, so a cancel (checked before every batch) or an error frees them,
 * and since the new version is only inserted at the end, the transaction's
 * abort leaves every earlier version as it was.
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "common/shortest_dec.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "bst.h"
#include "core/blas_load.h"
#include "core/fit.h"

PG_FUNCTION_INFO_V1(bst_train);

/* Argument positions; version 1.0 of the SQL declares the first 13. */
enum
{
	ARG_MODEL, ARG_QUERY, ARG_EPOCHS, ARG_BATCH_SIZE, ARG_LEARNING_RATE, ARG_HEADS,
	ARG_HIDDEN, ARG_DROPOUT, ARG_OPTIMIZER, ARG_SEED, ARG_HISTORY, ARG_EMBED_DIM,
	ARG_VOCABULARY,
	/* 1.1 */
	ARG_PRESET, ARG_USERS, ARG_MOVIES, ARG_SEQ_LEN, ARG_FEATURES, ARG_BIAS, ARG_BIAS_INIT,
	ARG_WEIGHT_DECAY, ARG_LR_SCHEDULE, ARG_VALIDATION_FRACTION, ARG_PATIENCE,
	ARG_EARLY_STOPPING, ARG_FACTORS, ARG_RATING_MODE, ARG_WARM_START
};
#define NARGS_1_0 13

/* Inputs a model may take besides the rated sequence. */
enum
{
	FEATURE_USER_ID, FEATURE_SEX, FEATURE_AGE_GROUP, FEATURE_OCCUPATION, FEATURE_GENRES,
	N_FEATURES
};
static const char *const feature_names[N_FEATURES] = {
	"user_id", "sex", "age_group", "occupation", "genres"
};
#define FEATURE_BIT(f) (1u << (f))
#define ALL_FEATURES (FEATURE_BIT(N_FEATURES) - 1)
/* The users columns of sex, age group, occupation: the core's user features 0..2. */
#define USER_TABLE_FEATURES \
	(FEATURE_BIT(FEATURE_SEX) | FEATURE_BIT(FEATURE_AGE_GROUP) | FEATURE_BIT(FEATURE_OCCUPATION))

/* Early stopping when asked for without saying how. */
#define DEFAULT_PATIENCE 2
#define DEFAULT_VALIDATION_FRACTION 0.1f

/*
 * A preset: every option's value when the call leaves it NULL.  "default" is
 * the configuration chosen on a validation split of the training data
 * (README, "Choosing the defaults"); "keras_example" is the Keras BST
 * example's exact recipe.
 */
typedef struct Preset
{
	const char *name;
	int32		epochs;			/* at most, with early stopping */
	int32		batch_size;
	float		learning_rate;
	int32		heads;
	int32		n_hidden;
	int32		hidden[BST_MAX_HIDDEN];
	float		dropout;
	BstOptimizerKind optimizer;
	float		weight_decay;
	BstLrSchedule lr_schedule;
	uint32		features;		/* used when the data has them */
	bool		bias;
	bool		bias_init;
	bool		zero_output;
	bool		clip;			/* predictions clipped to the training ratings' range */
	float		validation_fraction;
	int32		patience;
	int32		factors;		/* -1: the embedding width */
	bool		rating_add;		/* history ratings added along a vector, not scaling */
} Preset;

static const Preset presets[] = {
	{
		.name = "default", .epochs = 20, .batch_size = 256, .learning_rate = 0.001f,
		.heads = 3, .n_hidden = 2, .hidden = {256, 128}, .dropout = 0.1f,
		.optimizer = BST_OPT_ADAMW, .weight_decay = 0.01f, .lr_schedule = BST_LR_COSINE,
		.features = ALL_FEATURES, .bias = true, .bias_init = true, .zero_output = true,
		.clip = true, .rating_add = false,
		.validation_fraction = DEFAULT_VALIDATION_FRACTION, .patience = DEFAULT_PATIENCE,
		.factors = -1,
	},
	{
		.name = "keras_example", .epochs = 5, .batch_size = 265, .learning_rate = 0.01f,
		.heads = 3, .n_hidden = 2, .hidden = {256, 128}, .dropout = 0.1f,
		.optimizer = BST_OPT_ADAGRAD, .weight_decay = 0.0f, .lr_schedule = BST_LR_CONSTANT,
		.features = 0, .bias = false, .bias_init = false, .zero_output = false,
		.validation_fraction = 0.0f, .patience = 0, .factors = 0,
	},
};

static const char *const optimizer_names[] = {
	[BST_OPT_ADAGRAD] = "adagrad", [BST_OPT_ADAM] = "adam", [BST_OPT_ADAMW] = "adamw"
};
static const char *const schedule_names[] = {
	[BST_LR_CONSTANT] = "constant", [BST_LR_COSINE] = "cosine"
};
/* Index 1: a history rating is added along a learned vector. */
static const char *const rating_mode_names[] = {"multiply", "add"};

typedef struct TrainArgs
{
	char	   *name;
	char	   *query;
	const Preset *preset;
	BstFitOptions fit;
	int32		heads;
	int32		n_hidden;
	int32		hidden[BST_MAX_HIDDEN];
	float		dropout;
	int32		embed_dim;		/* 0: bst_default_dim(vocabulary size) */
	int32		seq_len;		/* 0: the longest window of the query */
	int32		factors;		/* -1: the embedding width */
	bool		rating_add;
	int32		seed;
	uint32		features;
	bool		features_explicit;	/* given by the call: a missing source is an error */
	bool		bias;
	char	   *history;		/* qualified relation name, or NULL */
	Oid			history_relid;
	Oid			users;			/* InvalidOid: none */
	Oid			movies;
	char	   *vocabulary;		/* query, or NULL for the movies of the data */
} TrainArgs;

/*
 * A warm start: the stored version it continues, and what its options and
 * inputs were.  Its options stand in for the preset; the value lists of its
 * user features and its genre names stay the model's, since the weights
 * hold only their positions in them.
 */
typedef struct WarmStart
{
	BstStoredVersion stored;
	Preset		options;
	int32		n_values[BST_N_USER_FEATS];
	char	  **values[BST_N_USER_FEATS];	/* sorted distinct text values */
	int32		n_genres;
	char	  **genres;			/* sorted distinct genre names */
} WarmStart;

/* What the model's optional inputs are built from. */
typedef struct Inputs
{
	int32		n_users;
	int32	   *user_ids;		/* [n_users] ascending */
	int32	   *user_feats;		/* [n_users * BST_N_USER_FEATS] */
	int32		n_values[BST_N_USER_FEATS];
	char	  **values[BST_N_USER_FEATS];	/* sorted distinct text values */
	int32		n_genres;
	char	  **genres;			/* sorted distinct genre names */
	float	   *movie_genres;	/* [n_movies * n_genres] */
} Inputs;

static const Preset *
find_preset(const char *name)
{
	for (int i = 0; i < (int) lengthof(presets); i++)
		if (strcmp(name, presets[i].name) == 0)
			return &presets[i];
	return NULL;
}

static bool
arg_given(FunctionCallInfo fcinfo, int arg)
{
	return arg < PG_NARGS() && !PG_ARGISNULL(arg);
}

static void
invalid(const char *message, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s", message),
			 hint ? errhint("%s", hint) : 0));
}

/* The index of a text argument among the names it may take (any case). */
static int
name_arg(FunctionCallInfo fcinfo, int arg, const char *what, const char *const *names, int n,
		 const char *hint)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(arg));

	for (int k = 0; k < n; k++)
		if (pg_strcasecmp(name, names[k]) == 0)
			return k;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown %s \"%s\"", what, name),
			 errhint("%s", hint)));
	return -1;					/* not reached */
}

static void
check_history(Oid relid)
{
	static const char *const columns[] = {"user_id", "movie_id", "rating", "unix_timestamp"};

	for (int i = 0; i < (int) lengthof(columns); i++)
		if (get_attnum(relid, columns[i]) == InvalidAttrNumber)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("history relation \"%s\" has no column \"%s\"",
							get_rel_name(relid), columns[i]),
					 errhint("bst_predict(user_id, movie_id) reads user_id, movie_id, rating and unix_timestamp from it; pass history => NULL to train without one.")));
}

static Oid
relation_arg(FunctionCallInfo fcinfo, int arg, const char *what)
{
	Oid			relid;

	if (!arg_given(fcinfo, arg))
		return InvalidOid;
	relid = PG_GETARG_OID(arg);
	if (get_rel_name(relid) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("%s relation with OID %u does not exist", what, relid)));
	return relid;
}

static uint32
parse_features(ArrayType *array)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	uint32		features = 0;

	if (ARR_NDIM(array) > 1)
		invalid("features must be a one-dimensional array", NULL);
	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
	{
		char	   *name;
		int			f;

		if (nulls[i])
			invalid("features must not contain NULL", NULL);
		name = TextDatumGetCString(elems[i]);
		for (f = 0; f < N_FEATURES; f++)
			if (strcmp(name, feature_names[f]) == 0)
				break;
		if (f == N_FEATURES)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown feature \"%s\"", name),
					 errhint("Features are user_id, sex, age_group, occupation and genres; '{}' for none.")));
		features |= FEATURE_BIT(f);
	}
	return features;
}

/*
 * The call's options, each left NULL taken from the preset, or on a warm
 * start (warm not NULL) from the stored version's options, which then
 * stand in for the preset.
 */
static void
parse_args(FunctionCallInfo fcinfo, TrainArgs *a, const WarmStart *warm)
{
	const Preset *p = NULL;
	BstFitOptions *o = &a->fit;
	bool		early_stopping;

	bst_arg_not_null(fcinfo, ARG_MODEL, "model");
	bst_arg_not_null(fcinfo, ARG_QUERY, "query");
	bst_arg_not_null(fcinfo, ARG_SEED, "seed");
	a->name = text_to_cstring(PG_GETARG_TEXT_PP(ARG_MODEL));
	bst_check_model_name(a->name);
	a->query = text_to_cstring(PG_GETARG_TEXT_PP(ARG_QUERY));

	/* Version 1.0's declaration has no preset: it always was the Keras example. */
	if (PG_NARGS() <= NARGS_1_0)
		p = find_preset("keras_example");
	else
	{
		char	   *name;

		bst_arg_not_null(fcinfo, ARG_PRESET, "preset");
		name = text_to_cstring(PG_GETARG_TEXT_PP(ARG_PRESET));
		p = find_preset(name);
		if (p == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown preset \"%s\"", name),
					 errhint("Use 'default' or 'keras_example'.")));
	}
	if (warm)
		p = &warm->options;
	a->preset = p;

	bst_train_options_default(&o->train);
	o->epochs = arg_given(fcinfo, ARG_EPOCHS) ? PG_GETARG_INT32(ARG_EPOCHS) : p->epochs;
	if (o->epochs < 1 || o->epochs > BST_MAX_EPOCHS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("epochs must be between 1 and %d, not %d", BST_MAX_EPOCHS, o->epochs)));
	o->train.batch_size = arg_given(fcinfo, ARG_BATCH_SIZE) ? PG_GETARG_INT32(ARG_BATCH_SIZE) : p->batch_size;
	o->train.learning_rate = arg_given(fcinfo, ARG_LEARNING_RATE) ?
		PG_GETARG_FLOAT4(ARG_LEARNING_RATE) : p->learning_rate;
	o->train.optimizer = arg_given(fcinfo, ARG_OPTIMIZER) ?
		(BstOptimizerKind) name_arg(fcinfo, ARG_OPTIMIZER, "optimizer", optimizer_names,
									lengthof(optimizer_names), "Use 'adagrad', 'adam' or 'adamw'.") :
		p->optimizer;
	o->train.weight_decay = arg_given(fcinfo, ARG_WEIGHT_DECAY) ?
		PG_GETARG_FLOAT4(ARG_WEIGHT_DECAY) : p->weight_decay;
	if (arg_given(fcinfo, ARG_WEIGHT_DECAY) && o->train.weight_decay != 0.0f &&
		o->train.optimizer != BST_OPT_ADAMW)
		invalid("weight_decay needs optimizer => 'adamw'", NULL);
	/* The preset's decay goes with its optimizer. */
	if (o->train.optimizer != BST_OPT_ADAMW)
		o->train.weight_decay = 0.0f;
	a->seed = PG_GETARG_INT32(ARG_SEED);
	o->train.seed = (uint64) (uint32) a->seed;

	o->lr_schedule = arg_given(fcinfo, ARG_LR_SCHEDULE) ?
		(BstLrSchedule) name_arg(fcinfo, ARG_LR_SCHEDULE, "lr_schedule", schedule_names,
								 lengthof(schedule_names), "Use 'constant' or 'cosine'.") :
		p->lr_schedule;

	/*
	 * Early stopping needs a validation split; asking for either one turns
	 * the other on with its default, and early_stopping => false leaves a
	 * split only if validation_fraction asks for it.
	 */
	early_stopping = arg_given(fcinfo, ARG_EARLY_STOPPING) ?
		PG_GETARG_BOOL(ARG_EARLY_STOPPING) :
		(p->patience > 0 || arg_given(fcinfo, ARG_PATIENCE) || arg_given(fcinfo, ARG_VALIDATION_FRACTION));
	if (arg_given(fcinfo, ARG_VALIDATION_FRACTION))
	{
		o->validation_fraction = PG_GETARG_FLOAT4(ARG_VALIDATION_FRACTION);
		if (!(o->validation_fraction > 0.0f &&
			  o->validation_fraction <= BST_MAX_VALIDATION_FRACTION))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("validation_fraction must be in (0, %g], not %g",
							BST_MAX_VALIDATION_FRACTION, o->validation_fraction),
					 errhint("Pass early_stopping => false to train on every window.")));
	}
	else if (early_stopping)
		o->validation_fraction = p->validation_fraction > 0 ? p->validation_fraction : DEFAULT_VALIDATION_FRACTION;
	else
		/* A stored version may have had a split without early stopping. */
		o->validation_fraction = warm && !arg_given(fcinfo, ARG_EARLY_STOPPING) ? p->validation_fraction : 0.0f;
	if (arg_given(fcinfo, ARG_PATIENCE))
	{
		o->patience = PG_GETARG_INT32(ARG_PATIENCE);
		if (o->patience < 1 || o->patience > BST_MAX_EPOCHS)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("patience must be between 1 and %d, not %d", BST_MAX_EPOCHS, o->patience)));
		if (!early_stopping)
			invalid("patience needs early stopping", "Drop early_stopping => false.");
	}
	else
		o->patience = early_stopping ? (p->patience > 0 ? p->patience : DEFAULT_PATIENCE) : 0;

	a->bias = arg_given(fcinfo, ARG_BIAS) ? PG_GETARG_BOOL(ARG_BIAS) : p->bias;
	o->bias_init = arg_given(fcinfo, ARG_BIAS_INIT) ? PG_GETARG_BOOL(ARG_BIAS_INIT) : p->bias_init;
	o->zero_output = p->zero_output;
	o->clip = p->clip;
	if (bst_fit_options_check(o))
		invalid(bst_fit_options_check(o), NULL);

	a->heads = arg_given(fcinfo, ARG_HEADS) ? PG_GETARG_INT32(ARG_HEADS) : p->heads;
	if (arg_given(fcinfo, ARG_HIDDEN))
	{
		ArrayType  *hidden = PG_GETARG_ARRAYTYPE_P(ARG_HIDDEN);

		if (ARR_NDIM(hidden) > 1 || array_contains_nulls(hidden) ||
			ArrayGetNItems(ARR_NDIM(hidden), ARR_DIMS(hidden)) > BST_MAX_HIDDEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("hidden must be a list of at most %d layer sizes without NULLs",
							BST_MAX_HIDDEN)));
		a->n_hidden = ArrayGetNItems(ARR_NDIM(hidden), ARR_DIMS(hidden));
		memcpy(a->hidden, ARR_DATA_PTR(hidden), a->n_hidden * sizeof(int32));
	}
	else
	{
		a->n_hidden = p->n_hidden;
		memcpy(a->hidden, p->hidden, sizeof(a->hidden));
	}
	a->dropout = arg_given(fcinfo, ARG_DROPOUT) ? PG_GETARG_FLOAT4(ARG_DROPOUT) : p->dropout;

	if (arg_given(fcinfo, ARG_HISTORY))
	{
		Oid			relid = relation_arg(fcinfo, ARG_HISTORY, "history");

		check_history(relid);
		a->history = bst_relation_name(relid);
		a->history_relid = relid;
	}
	a->embed_dim = arg_given(fcinfo, ARG_EMBED_DIM) ? PG_GETARG_INT32(ARG_EMBED_DIM) : 0;
	if (arg_given(fcinfo, ARG_EMBED_DIM) && (a->embed_dim < 1 || a->embed_dim > BST_MAX_EMBED_DIM))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("embed_dim must be between 1 and %d, not %d", BST_MAX_EMBED_DIM, a->embed_dim)));
	a->vocabulary = arg_given(fcinfo, ARG_VOCABULARY) ?
		text_to_cstring(PG_GETARG_TEXT_PP(ARG_VOCABULARY)) : NULL;

	a->users = relation_arg(fcinfo, ARG_USERS, "users");
	a->movies = relation_arg(fcinfo, ARG_MOVIES, "movies");
	a->seq_len = arg_given(fcinfo, ARG_SEQ_LEN) ? PG_GETARG_INT32(ARG_SEQ_LEN) : 0;
	if (arg_given(fcinfo, ARG_SEQ_LEN) && (a->seq_len < 2 || a->seq_len > BST_MAX_SEQ_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("seq_len must be between 2 and %d, not %d", BST_MAX_SEQ_LEN, a->seq_len),
				 errdetail("seq_len counts the history and the target movie.")));
	a->factors = arg_given(fcinfo, ARG_FACTORS) ? PG_GETARG_INT32(ARG_FACTORS) : p->factors;
	if (arg_given(fcinfo, ARG_FACTORS) && (a->factors < 0 || a->factors > BST_MAX_EMBED_DIM))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("factors must be between 0 and %d, not %d", BST_MAX_EMBED_DIM, a->factors)));
	a->rating_add = arg_given(fcinfo, ARG_RATING_MODE) ?
		name_arg(fcinfo, ARG_RATING_MODE, "rating_mode", rating_mode_names,
				 lengthof(rating_mode_names), "Use 'multiply' (the Keras example's) or 'add'.") == 1 :
		p->rating_add;
	a->features_explicit = arg_given(fcinfo, ARG_FEATURES);
	a->features = a->features_explicit ? parse_features(PG_GETARG_ARRAYTYPE_P(ARG_FEATURES)) : p->features;
}

/* The inputs a model's config takes, as feature bits. */
static uint32
config_features(const BstConfig *c)
{
	uint32		features = 0;

	if (c->user_dim > 0)
		features |= FEATURE_BIT(FEATURE_USER_ID);
	for (int k = 0; k < BST_N_USER_FEATS; k++)
		if (c->feat_dim[k] > 0)
			features |= FEATURE_BIT(FEATURE_SEX + k);
	if (c->n_genres > 0)
		features |= FEATURE_BIT(FEATURE_GENRES);
	return features;
}

/*
 * The stored version's config, edited into what bst_train never stores
 * (key NULL: its options together).
 */
static void
config_invalid(const WarmStart *w, const char *name, const char *key, const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 key ? errmsg("config->'%s' of model \"%s\" version %d %s", key, bst_short_name(name),
						  w->stored.version, why) :
			 errmsg("the options in the config of model \"%s\" version %d are invalid: %s",
					bst_short_name(name), w->stored.version, why),
			 errhint("Restore the row as bst_train stored it, or train without warm_start.")));
}

static JsonbValue *
config_value(const WarmStart *w, const char *name, const char *key, enum jbvType type)
{
	JsonbValue *v = getKeyJsonValueFromContainer(&w->stored.config->root, key, strlen(key), NULL);

	if (v == NULL)
		config_invalid(w, name, key, "is missing");
	if (v->type != type)
		config_invalid(w, name, key, type == jbvString ? "is not a string" :
					   type == jbvNumeric ? "is not a number" : "is not an array");
	return v;
}

static double
config_number(const WarmStart *w, const char *name, const char *key)
{
	JsonbValue *v = config_value(w, name, key, jbvNumeric);

	return DatumGetFloat8(DirectFunctionCall1(numeric_float8, NumericGetDatum(v->val.numeric)));
}

/* A float option as the config's decimal reads as a float: directly, not
 * through a double, which could round it to the other neighbour. */
static float
config_float(const WarmStart *w, const char *name, const char *key)
{
	JsonbValue *v = config_value(w, name, key, jbvNumeric);
	char	   *digits = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	float		f = strtof(digits, NULL);

	if (!isfinite(f))
		config_invalid(w, name, key, "is not a finite float");
	return f;
}

static int32
config_int(const WarmStart *w, const char *name, const char *key)
{
	double		v = config_number(w, name, key);

	if (v != floor(v) || v < PG_INT32_MIN || v > PG_INT32_MAX)
		config_invalid(w, name, key, "is not a whole number");
	return (int32) v;
}

/* The index of the config's string among names. */
static int
config_name(const WarmStart *w, const char *name, const char *key, const char *const *names, int n)
{
	JsonbValue *v = config_value(w, name, key, jbvString);
	char	   *value = pnstrdup(v->val.string.val, v->val.string.len);

	for (int k = 0; k < n; k++)
		if (strcmp(value, names[k]) == 0)
			return k;
	config_invalid(w, name, key, psprintf("names no known value: \"%s\"", value));
	return -1;					/* not reached */
}

/* The config's sorted list of n distinct strings (value lists, genres). */
static char **
config_strings(const WarmStart *w, const char *name, const char *key, int32 n)
{
	JsonbValue *v = config_value(w, name, key, jbvBinary);
	JsonbContainer *list = v->val.binary.data;
	char	  **out;

	if (!JsonContainerIsArray(list) || JsonContainerSize(list) != (uint32) n)
		config_invalid(w, name, key, psprintf("does not list the model's %d values", n));
	out = palloc(Max(n, 1) * sizeof(char *));
	for (int32 i = 0; i < n; i++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(list, i);

		if (e == NULL || e->type != jbvString)
			config_invalid(w, name, key, "lists a value that is not a string");
		out[i] = pnstrdup(e->val.string.val, e->val.string.len);
		/* Positions in this order are what the weights hold. */
		if (i > 0 && strcmp(out[i - 1], out[i]) >= 0)
			config_invalid(w, name, key, "is not sorted and distinct");
	}
	return out;
}

/*
 * bst_train(..., warm_start => version): the stored version (its model and
 * optimizer state allocated in train_cxt), and its options, which stand in
 * for the preset: the training options from its config, the architecture
 * from its weights.  Its biases and output layer are trained already, so
 * neither starts afresh; predictions are clipped if its were.
 */
static void
read_warm_start(FunctionCallInfo fcinfo, MemoryContext train_cxt, WarmStart *w)
{
	static const char *const value_keys[BST_N_USER_FEATS] = {
		"sex_values", "age_group_values", "occupation_values"
	};
	Preset	   *o = &w->options;
	const BstConfig *c;
	BstFitOptions check;
	const char *bad;
	char	   *name;

	bst_arg_not_null(fcinfo, ARG_MODEL, "model");
	name = text_to_cstring(PG_GETARG_TEXT_PP(ARG_MODEL));
	bst_check_model_name(name);
	bst_model_read_version(fcinfo, name, PG_GETARG_INT32(ARG_WARM_START), train_cxt, &w->stored);
	c = bst_model_config(w->stored.model);

	{
		JsonbValue *v = config_value(w, name, "preset", jbvString);
		const Preset *preset = find_preset(pnstrdup(v->val.string.val, v->val.string.len));

		if (preset == NULL)
			config_invalid(w, name, "preset", "names no preset");
		/* Its name, for the config; every value is the version's. */
		*o = *preset;
	}
	o->epochs = config_int(w, name, "epochs");
	o->batch_size = config_int(w, name, "batch_size");
	o->learning_rate = config_float(w, name, "learning_rate");
	/* The state is the optimizer's: authoritative, and checksummed. */
	o->optimizer = w->stored.state->optimizer;
	o->weight_decay = config_float(w, name, "weight_decay");
	o->lr_schedule = (BstLrSchedule) config_name(w, name, "lr_schedule", schedule_names,
												 lengthof(schedule_names));
	o->validation_fraction = config_float(w, name, "validation_fraction");
	o->patience = config_int(w, name, "patience");
	memset(&check, 0, sizeof(check));
	check.train.optimizer = o->optimizer;
	check.train.learning_rate = o->learning_rate;
	check.train.batch_size = o->batch_size;
	check.train.weight_decay = o->weight_decay;
	check.epochs = o->epochs;
	check.lr_schedule = o->lr_schedule;
	check.validation_fraction = o->validation_fraction;
	check.patience = o->patience;
	if ((bad = bst_fit_options_check(&check)) != NULL)
		config_invalid(w, name, NULL, bad);

	o->heads = c->heads;
	o->n_hidden = c->n_hidden;
	memcpy(o->hidden, c->hidden, sizeof(o->hidden));
	o->dropout = c->dropout;
	o->features = config_features(c);
	o->bias = c->use_bias != 0;
	o->bias_init = false;
	o->zero_output = false;
	o->clip = c->rating_min < c->rating_max;
	o->factors = c->n_factors;
	o->rating_add = c->rating_add != 0;

	for (int k = 0; k < BST_N_USER_FEATS; k++)
		if (c->feat_dim[k] > 0)
		{
			w->n_values[k] = c->n_feat_values[k];
			w->values[k] = config_strings(w, name, value_keys[k], w->n_values[k]);
		}
	if (c->n_genres > 0)
	{
		w->n_genres = c->n_genres;
		w->genres = config_strings(w, name, "genres", w->n_genres);
	}
}

/* An option of the call that the stored version's architecture, or its
 * optimizer state, rules out. */
static void
contradiction(const TrainArgs *a, const WarmStart *w, const char *option, const char *given,
			  const char *stored)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s => %s contradicts version %d of model \"%s\", which has %s",
					option, given, w->stored.version, bst_short_name(a->name), stored),
			 errhint("A warm start keeps the stored version's architecture and optimizer: leave %s out, or train without warm_start.",
					 option)));
}

static char *
hidden_text(int32 n, const int32 *hidden)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int32 i = 0; i < n; i++)
		appendStringInfo(&buf, "%s%d", i ? "," : "", hidden[i]);
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

static char *
features_text(uint32 features)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int f = 0; f < N_FEATURES; f++)
		if (features & FEATURE_BIT(f))
			appendStringInfo(&buf, "%s%s", buf.len > 1 ? "," : "", feature_names[f]);
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/*
 * On a warm start every option is the stored version's unless given; one
 * given that changes its architecture or optimizer is an error naming it.
 * Its inputs are then asked for explicitly: a missing source is an error,
 * never a dropped input.
 */
static void
check_warm_start_args(FunctionCallInfo fcinfo, TrainArgs *a, const WarmStart *w)
{
	const BstConfig *c = bst_model_config(w->stored.model);
	const char *const bools[] = {"false", "true"};

	if (arg_given(fcinfo, ARG_BIAS_INIT) && PG_GETARG_BOOL(ARG_BIAS_INIT))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("bias_init does not apply to a warm start"),
				 errhint("The bias terms continue from version %d's.", w->stored.version)));
	if (a->embed_dim > 0 && a->embed_dim != c->embed_dim)
		contradiction(a, w, "embed_dim", psprintf("%d", a->embed_dim), psprintf("%d", c->embed_dim));
	if (a->seq_len > 0 && a->seq_len != c->seq_len)
		contradiction(a, w, "seq_len", psprintf("%d", a->seq_len), psprintf("%d", c->seq_len));
	if (a->heads != c->heads)
		contradiction(a, w, "heads", psprintf("%d", a->heads), psprintf("%d", c->heads));
	if (a->n_hidden != c->n_hidden || memcmp(a->hidden, c->hidden, a->n_hidden * sizeof(int32)) != 0)
		contradiction(a, w, "hidden", hidden_text(a->n_hidden, a->hidden),
					  hidden_text(c->n_hidden, c->hidden));
	if (a->features != config_features(c))
		contradiction(a, w, "features", features_text(a->features),
					  features_text(config_features(c)));
	if (a->bias != (c->use_bias != 0))
		contradiction(a, w, "bias", bools[a->bias], bools[c->use_bias != 0]);
	if (a->factors != c->n_factors)
		contradiction(a, w, "factors", psprintf("%d", a->factors), psprintf("%d", c->n_factors));
	if (a->rating_add != (c->rating_add != 0))
		contradiction(a, w, "rating_mode", rating_mode_names[a->rating_add],
					  rating_mode_names[c->rating_add != 0]);
	if (a->fit.train.optimizer != w->stored.state->optimizer)
		contradiction(a, w, "optimizer", optimizer_names[a->fit.train.optimizer],
					  psprintf("%s's state", optimizer_names[w->stored.state->optimizer]));
	a->features_explicit = true;
}

/*
 * A feature the call asked for explicitly must have its source; one that
 * only the preset asks for is dropped, with a notice, when the data lacks it.
 */
static void
drop_feature(TrainArgs *a, int f, int sqlstate, const char *why, const char *hint)
{
	if (a->features_explicit)
		ereport(ERROR,
				(errcode(sqlstate),
				 errmsg("feature \"%s\" is not available: %s", feature_names[f], why),
				 errhint("%s", hint)));
	a->features &= ~FEATURE_BIT(f);
}

static int
cmp_int32(const void *a, const void *b)
{
	int32		x = *(const int32 *) a;
	int32		y = *(const int32 *) b;

	return (x > y) - (x < y);
}

static int
cmp_string(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Sort ids and drop repeats; returns the new count. */
static int32
sort_unique(int32 *ids, int64 n)
{
	int32		out = 0;

	qsort(ids, n, sizeof(int32), cmp_int32);
	for (int64 i = 0; i < n; i++)
		if (out == 0 || ids[out - 1] != ids[i])
			ids[out++] = ids[i];
	return out;
}

static int32
sort_unique_strings(char **s, int64 n)
{
	int32		out = 0;

	qsort(s, n, sizeof(char *), cmp_string);
	for (int64 i = 0; i < n; i++)
		if (out == 0 || strcmp(s[out - 1], s[i]) != 0)
			s[out++] = s[i];
	return out;
}

/* 1-based position of value in the sorted values[0..n), 0 if absent. */
static int32
string_index(char **values, int32 n, const char *value)
{
	char	  **found = bsearch(&value, values, n, sizeof(char *), cmp_string);

	return found ? (int32) (found - values) + 1 : 0;
}

/* The sorted distinct ids of both ascending lists, a[0..na) and b[0..nb). */
static int32 *
union_ids(const int32 *a, int32 na, const int32 *b, int32 nb, int32 *n)
{
	int32	   *out = palloc_extended(Max((int64) na + nb, 1) * sizeof(int32), MCXT_ALLOC_HUGE);

	memcpy(out, a, na * sizeof(int32));
	memcpy(out + na, b, nb * sizeof(int32));
	*n = sort_unique(out, (int64) na + nb);
	return out;
}

static int32
id_index(const int32 *ids, int32 n, int32 id)
{
	const int32 *found = bsearch(&id, ids, n, sizeof(int32), cmp_int32);

	return found ? (int32) (found - ids) + 1 : 0;
}

/*
 * The movie vocabulary: the ids the vocabulary query returns (by default
 * every movie of the movies table, as in the Keras example), or with no
 * query every movie of the training windows.
 */
static int32 *
read_vocabulary(const char *query, const BstReadResult *read, int32 *n_movies)
{
	MemoryContext outer = CurrentMemoryContext;
	int32	   *ids;
	int64		n = 0;

	/* Collected while reading the windows, sorted and distinct. */
	if (query == NULL)
	{
		*n_movies = (int32) read->n_movie_ids;
		return read->movie_ids;
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	SPI_execute_plan(bst_prepare_select(query, "vocabulary"), NULL, NULL, true, 0);
	if (SPI_tuptable == NULL || SPI_tuptable->tupdesc->natts < 1 ||
		(SPI_gettypeid(SPI_tuptable->tupdesc, 1) != INT4OID &&
		 SPI_gettypeid(SPI_tuptable->tupdesc, 1) != INT2OID))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("vocabulary query must return movie ids as its first column, of type integer")));
	ids = MemoryContextAllocHuge(outer, Max(SPI_processed, 1) * sizeof(int32));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		id = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			ids[n++] = SPI_gettypeid(SPI_tuptable->tupdesc, 1) == INT2OID ?
				DatumGetInt16(id) : DatumGetInt32(id);
	}
	SPI_finish();
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("vocabulary query returned no movie ids"),
				 errhint("Pass vocabulary => NULL to use the movies of the training windows.")));
	*n_movies = sort_unique(ids, n);
	return ids;
}

/*
 * Users: the vocabulary is every user of the users relation and of the
 * training windows; sex, age group and occupation come from the relation,
 * each value (as text) mapped to an embedding row.  A training user without
 * a row is an error when those features are on: a silent "unknown" would
 * train the model on wrong data.
 *
 * On a warm start the stored version's users stay in the vocabulary, and
 * the values map to the rows of its value lists (a value new since then is
 * unknown, row 0); a user the relation has no row for keeps the features
 * the version knew.
 */
static void
read_users(TrainArgs *a, const BstData *data, const BstReadResult *read, const WarmStart *warm,
		   Inputs *in)
{
	const BstModel *stored = warm ? warm->stored.model : NULL;
	const int32 n_stored = stored ? bst_model_config(stored)->n_users : 0;
	static const int table_features[BST_N_USER_FEATS] = {
		FEATURE_SEX, FEATURE_AGE_GROUP, FEATURE_OCCUPATION
	};
	MemoryContext outer = CurrentMemoryContext;
	bool		want_table = (a->features & USER_TABLE_FEATURES) != 0;
	int64		n_rows = 0;
	int32	   *row_ids = NULL;
	char	  **row_values[BST_N_USER_FEATS] = {NULL};
	int32	   *ids;
	int64		n_ids = 0;

	if (!read->has_users)
	{
		for (int f = 0; f < N_FEATURES; f++)
			if (f != FEATURE_GENRES && (a->features & FEATURE_BIT(f)))
				drop_feature(a, f, ERRCODE_UNDEFINED_COLUMN,
							 "the training query returns no user_id column",
							 "Return user_id integer from the query.");
		/* The global and movie biases need no user; a stored model's users
		 * stay. */
		if (n_stored > 0)
		{
			in->n_users = n_stored;
			in->user_ids = palloc(n_stored * sizeof(int32));
			memcpy(in->user_ids, stored->user_ids, n_stored * sizeof(int32));
		}
		return;
	}
	if (want_table && a->users == InvalidOid)
	{
		for (int k = 0; k < BST_N_USER_FEATS; k++)
			if (a->features & FEATURE_BIT(table_features[k]))
				drop_feature(a, table_features[k], ERRCODE_UNDEFINED_TABLE, "there is no users relation",
							 "Pass users => 'your_users_table'.");
	}
	else if (want_table)
	{
		StringInfoData sql;
		char	   *rel = bst_relation_name(a->users);

		if (get_attnum(a->users, "user_id") == InvalidAttrNumber)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("users relation \"%s\" has no column \"user_id\"", get_rel_name(a->users)),
					 errhint("Pass users => NULL to train without user features.")));
		for (int k = 0; k < BST_N_USER_FEATS; k++)
		{
			int			f = table_features[k];

			if ((a->features & FEATURE_BIT(f)) &&
				get_attnum(a->users, feature_names[f]) == InvalidAttrNumber)
				drop_feature(a, f, ERRCODE_UNDEFINED_COLUMN,
							 psprintf("users relation \"%s\" has no column \"%s\"",
											get_rel_name(a->users), feature_names[f]),
							 "Leave the feature out of features, or name another relation with users => ....");
		}
		initStringInfo(&sql);
		appendStringInfoString(&sql, "SELECT user_id::pg_catalog.int4");
		for (int k = 0; k < BST_N_USER_FEATS; k++)
			if (a->features & FEATURE_BIT(table_features[k]))
				appendStringInfo(&sql, ", %s::pg_catalog.text", quote_identifier(feature_names[table_features[k]]));
			else
				appendStringInfoString(&sql, ", NULL::pg_catalog.text");
		appendStringInfo(&sql, " FROM %s", rel);

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		SPI_execute(sql.data, true, 0);
		n_rows = SPI_processed;
		row_ids = MemoryContextAllocHuge(outer, Max(n_rows, 1) * sizeof(int32));
		for (int k = 0; k < BST_N_USER_FEATS; k++)
			row_values[k] = MemoryContextAllocHuge(outer, Max(n_rows, 1) * sizeof(char *));
		for (int64 i = 0; i < n_rows; i++)
		{
			HeapTuple	row = SPI_tuptable->vals[i];
			bool		isnull;

			row_ids[i] = DatumGetInt32(SPI_getbinval(row, SPI_tuptable->tupdesc, 1, &isnull));
			if (isnull)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("users relation \"%s\" has a row with a NULL user_id", get_rel_name(a->users))));
			for (int k = 0; k < BST_N_USER_FEATS; k++)
			{
				char	   *v = SPI_getvalue(row, SPI_tuptable->tupdesc, k + 2);

				/* NULL: the feature is unknown for this user (row 0). */
				row_values[k][i] = v ? MemoryContextStrdup(outer, v) : NULL;
			}
		}
		SPI_finish();

		/* An empty relation (ml-latest-small has no user data) is no source. */
		if (n_rows == 0)
			for (int k = 0; k < BST_N_USER_FEATS; k++)
				if (a->features & FEATURE_BIT(table_features[k]))
					drop_feature(a, table_features[k], ERRCODE_DATA_EXCEPTION,
								 psprintf("users relation \"%s\" is empty", get_rel_name(a->users)),
								 "Fill it, or leave the feature out of features.");
	}

	/* The user vocabulary. */
	ids = palloc_extended((read->n_user_ids + n_rows + n_stored + 1) * sizeof(int32), MCXT_ALLOC_HUGE);
	for (int64 i = 0; i < read->n_user_ids; i++)
		ids[n_ids++] = read->user_ids[i];
	for (int64 i = 0; i < n_rows; i++)
		ids[n_ids++] = row_ids[i];
	for (int32 i = 0; i < n_stored; i++)
		ids[n_ids++] = stored->user_ids[i];
	in->n_users = sort_unique(ids, n_ids);
	in->user_ids = ids;

	if ((a->features & USER_TABLE_FEATURES) == 0)
		return;
	in->user_feats = palloc_extended((int64) in->n_users * BST_N_USER_FEATS * sizeof(int32),
									 MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	for (int k = 0; k < BST_N_USER_FEATS; k++)
	{
		char	  **sorted;
		int64		n = 0;

		if (!(a->features & FEATURE_BIT(table_features[k])))
			continue;
		if (warm)
		{
			in->n_values[k] = warm->n_values[k];
			in->values[k] = warm->values[k];
			continue;
		}
		sorted = palloc_extended(Max(n_rows, 1) * sizeof(char *), MCXT_ALLOC_HUGE);
		for (int64 i = 0; i < n_rows; i++)
			if (row_values[k][i])
				sorted[n++] = row_values[k][i];
		in->n_values[k] = sort_unique_strings(sorted, n);
		in->values[k] = sorted;
		if (in->n_values[k] > BST_MAX_FEAT_VALUES)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("user feature \"%s\" has %d distinct values, more than %d",
							feature_names[table_features[k]], in->n_values[k],
							BST_MAX_FEAT_VALUES)));
	}
	{
		bool	   *has_row = palloc_extended(in->n_users * sizeof(bool), MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);

		for (int64 i = 0; i < n_rows; i++)
		{
			int32		u = id_index(in->user_ids, in->n_users, row_ids[i]) - 1;

			if (has_row[u])
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("user %d has more than one row in users relation \"%s\"",
								row_ids[i], get_rel_name(a->users))));
			has_row[u] = true;
			for (int k = 0; k < BST_N_USER_FEATS; k++)
				if (row_values[k][i])
					in->user_feats[(int64) u * BST_N_USER_FEATS + k] =
						string_index(in->values[k], in->n_values[k], row_values[k][i]);
		}
		for (int32 u = 0; u < in->n_users && stored; u++)
		{
			int32		known = has_row[u] ? 0 : bst_model_user_index(stored, in->user_ids[u]);

			if (known > 0)
				memcpy(in->user_feats + (int64) u * BST_N_USER_FEATS,
					   stored->user_feats + (int64) known * BST_N_USER_FEATS,
					   BST_N_USER_FEATS * sizeof(int32));
		}
		/* The windows' users are ids until the model maps them. */
		for (int64 i = 0; i < data->n; i++)
			if (!has_row[id_index(in->user_ids, in->n_users, data->users[i]) - 1])
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("user %d of the training query has no row in users relation \"%s\"",
								data->users[i], get_rel_name(a->users)),
						 errhint("Add the user's row, or train without sex, age_group and occupation (features => '{user_id, genres}').")));
	}
}

/*
 * Genres: the movies relation's genres text[], multi-hot over the sorted
 * distinct genre names, for each movie of the vocabulary (a movie without a
 * row has none).
 */
static void
read_genres(TrainArgs *a, const int32 *vocab, int32 n_movies, const WarmStart *warm, Inputs *in)
{
	const BstModel *stored = warm ? warm->stored.model : NULL;
	bool	   *has_row;
	MemoryContext outer = CurrentMemoryContext;
	AttrNumber	att;
	char	   *rel;
	char	  **names;
	int64		n_names = 0;
	int64		capacity = 64;
	int32	   *row_movie;
	ArrayType **row_genres;
	uint64		n_rows;

	if (!(a->features & FEATURE_BIT(FEATURE_GENRES)))
		return;
	if (a->movies == InvalidOid)
	{
		drop_feature(a, FEATURE_GENRES, ERRCODE_UNDEFINED_TABLE, "there is no movies relation",
					 "Pass movies => 'your_movies_table'.");
		return;
	}
	rel = bst_relation_name(a->movies);
	att = get_attnum(a->movies, "genres");
	if (att == InvalidAttrNumber || get_attnum(a->movies, "movie_id") == InvalidAttrNumber)
	{
		drop_feature(a, FEATURE_GENRES, ERRCODE_UNDEFINED_COLUMN,
					 psprintf("movies relation \"%s\" has no column \"%s\"", get_rel_name(a->movies),
							  att == InvalidAttrNumber ? "genres" : "movie_id"),
					 "Leave genres out of features, or pass movies => NULL.");
		return;
	}
	if (get_atttype(a->movies, att) != TEXTARRAYOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"genres\" of movies relation \"%s\" has type %s, but must be text[]",
						get_rel_name(a->movies), format_type_be(get_atttype(a->movies, att)))));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	SPI_execute(psprintf("SELECT movie_id::pg_catalog.int4, genres FROM %s", rel), true, 0);
	n_rows = SPI_processed;
	row_movie = MemoryContextAllocHuge(outer, Max(n_rows, 1) * sizeof(int32));
	row_genres = MemoryContextAllocHuge(outer, Max(n_rows, 1) * sizeof(ArrayType *));
	names = MemoryContextAlloc(outer, capacity * sizeof(char *));
	for (uint64 i = 0; i < n_rows; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		bool		null_id;
		bool		null_genres;
		Datum		g;
		Datum	   *elems;
		bool	   *nulls;
		int			n;
		MemoryContext old;

		row_movie[i] = DatumGetInt32(SPI_getbinval(row, SPI_tuptable->tupdesc, 1, &null_id));
		g = SPI_getbinval(row, SPI_tuptable->tupdesc, 2, &null_genres);
		if (null_genres && !null_id)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("movie %d has NULL genres in movies relation \"%s\"",
							row_movie[i], get_rel_name(a->movies)),
					 errhint("Use '{}' for a movie without genres, or leave genres out of features.")));
		old = MemoryContextSwitchTo(outer);
		row_genres[i] = null_id ? NULL : DatumGetArrayTypePCopy(g);
		MemoryContextSwitchTo(old);
		if (row_genres[i] == NULL)
			continue;
		deconstruct_array(row_genres[i], TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
		for (int j = 0; j < n; j++)
		{
			if (nulls[j])
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("movie %d has a NULL genre in movies relation \"%s\"",
								row_movie[i], get_rel_name(a->movies))));
			/* A warm start keeps the stored version's genres. */
			if (warm)
				continue;
			if (n_names == capacity)
			{
				capacity *= 2;
				names = repalloc(names, capacity * sizeof(char *));
			}
			names[n_names++] = MemoryContextStrdup(outer, TextDatumGetCString(elems[j]));
		}
		/* Few distinct names: keep the list short as it grows. */
		if (n_names > 4096)
			n_names = sort_unique_strings(names, n_names);
	}
	SPI_finish();

	if (warm)
	{
		in->n_genres = warm->n_genres;
		in->genres = warm->genres;
	}
	else
	{
		in->n_genres = sort_unique_strings(names, n_names);
		in->genres = names;
	}
	if (in->n_genres > BST_MAX_GENRES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("movies relation \"%s\" has %d distinct genres, more than %d",
						get_rel_name(a->movies), in->n_genres, BST_MAX_GENRES)));
	if (in->n_genres == 0)
	{
		a->features &= ~FEATURE_BIT(FEATURE_GENRES);
		return;
	}
	in->movie_genres = palloc_extended((int64) n_movies * in->n_genres * sizeof(float), MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	has_row = palloc_extended(Max(n_movies, 1) * sizeof(bool), MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	for (uint64 i = 0; i < n_rows; i++)
	{
		int32		m = row_genres[i] ? id_index(vocab, n_movies, row_movie[i]) : 0;
		Datum	   *elems;
		bool	   *nulls;
		int			n;

		if (m == 0)
			continue;
		has_row[m - 1] = true;
		deconstruct_array(row_genres[i], TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
		for (int j = 0; j < n; j++)
		{
			/* 0 only on a warm start: a genre new since the stored version. */
			int32		g = string_index(in->genres, in->n_genres, TextDatumGetCString(elems[j]));

			if (g > 0)
				in->movie_genres[(int64) (m - 1) * in->n_genres + g - 1] = 1.0f;
		}
	}
	/* A movie the relation no longer has keeps the genres the version knew. */
	for (int32 m = 0; m < n_movies && stored; m++)
	{
		int32		known = has_row[m] ? 0 : bst_model_movie_index(stored, vocab[m]);

		if (known > 0)
			memcpy(in->movie_genres + (int64) m * in->n_genres,
				   stored->movie_genres + (int64) known * in->n_genres,
				   in->n_genres * sizeof(float));
	}
}

static void
append_json_key(StringInfo buf, const char *key)
{
	if (buf->data[buf->len - 1] != '{' && buf->data[buf->len - 1] != '[')
		appendStringInfoString(buf, ", ");
	escape_json(buf, key);
	appendStringInfoString(buf, ": ");
}

static void
append_json_strings(StringInfo buf, const char *key, char **values, int32 n)
{
	append_json_key(buf, key);
	appendStringInfoChar(buf, '[');
	for (int32 i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoString(buf, ", ");
		escape_json(buf, values[i]);
	}
	appendStringInfoChar(buf, ']');
}

/*
 * A training option a warm start reads back: the shortest decimal that
 * parses to the same float (what %g prints for 0.001, more digits where 6
 * would round), so that the continued training runs with the same bits.
 */
static void
append_json_float(StringInfo buf, float v)
{
	char		digits[FLOAT_SHORTEST_DECIMAL_LEN];

	float_to_shortest_decimal_buf(v, digits);
	appendStringInfoString(buf, digits);
}

static char *
config_json(const TrainArgs *a, const BstConfig *c, const Inputs *in, const WarmStart *warm)
{
	const BstFitOptions *o = &a->fit;
	StringInfoData buf;
	bool		first = true;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	append_json_key(&buf, "preset");
	escape_json(&buf, a->preset->name);
	append_json_key(&buf, "seq_len");
	appendStringInfo(&buf, "%d", c->seq_len);
	append_json_key(&buf, "n_movies");
	appendStringInfo(&buf, "%d", c->n_movies);
	append_json_key(&buf, "embed_dim");
	appendStringInfo(&buf, "%d", c->embed_dim);
	append_json_key(&buf, "heads");
	appendStringInfo(&buf, "%d", c->heads);
	append_json_key(&buf, "hidden");
	appendStringInfoChar(&buf, '[');
	for (int i = 0; i < c->n_hidden; i++)
		appendStringInfo(&buf, "%s%d", i ? ", " : "", c->hidden[i]);
	appendStringInfoChar(&buf, ']');
	append_json_key(&buf, "dropout");
	appendStringInfo(&buf, "%g", c->dropout);
	append_json_key(&buf, "features");
	appendStringInfoChar(&buf, '[');
	for (int f = 0; f < N_FEATURES; f++)
		if (a->features & FEATURE_BIT(f))
		{
			if (!first)
				appendStringInfoString(&buf, ", ");
			escape_json(&buf, feature_names[f]);
			first = false;
		}
	appendStringInfoChar(&buf, ']');
	append_json_key(&buf, "bias");
	appendStringInfoString(&buf, c->use_bias ? "true" : "false");
	append_json_key(&buf, "rating_mode");
	escape_json(&buf, c->rating_add ? "add" : "multiply");
	append_json_key(&buf, "rating_range");
	if (c->rating_min < c->rating_max)
		appendStringInfo(&buf, "[%g, %g]", c->rating_min, c->rating_max);
	else
		appendStringInfoString(&buf, "null");
	append_json_key(&buf, "factors");
	appendStringInfo(&buf, "%d", c->n_factors);
	append_json_key(&buf, "n_users");
	appendStringInfo(&buf, "%d", c->n_users);
	append_json_key(&buf, "user_dim");
	appendStringInfo(&buf, "%d", c->user_dim);
	append_json_strings(&buf, "sex_values", in->values[0], in->n_values[0]);
	append_json_strings(&buf, "age_group_values", in->values[1], in->n_values[1]);
	append_json_strings(&buf, "occupation_values", in->values[2], in->n_values[2]);
	append_json_strings(&buf, "genres", in->genres, c->n_genres);
	append_json_key(&buf, "optimizer");
	escape_json(&buf, optimizer_names[o->train.optimizer]);
	append_json_key(&buf, "learning_rate");
	append_json_float(&buf, o->train.learning_rate);
	append_json_key(&buf, "lr_schedule");
	escape_json(&buf, schedule_names[o->lr_schedule]);
	append_json_key(&buf, "weight_decay");
	append_json_float(&buf, o->train.weight_decay);
	append_json_key(&buf, "batch_size");
	appendStringInfo(&buf, "%d", o->train.batch_size);
	append_json_key(&buf, "epochs");
	appendStringInfo(&buf, "%d", o->epochs);
	append_json_key(&buf, "validation_fraction");
	append_json_float(&buf, o->validation_fraction);
	append_json_key(&buf, "patience");
	appendStringInfo(&buf, "%d", o->patience);
	append_json_key(&buf, "bias_init");
	appendStringInfoString(&buf, o->bias_init ? "true" : "false");
	append_json_key(&buf, "seed");
	appendStringInfo(&buf, "%d", a->seed);
	append_json_key(&buf, "query");
	escape_json(&buf, a->query);
	append_json_key(&buf, "vocabulary");
	if (a->vocabulary)
		escape_json(&buf, a->vocabulary);
	else
		appendStringInfoString(&buf, "null");
	/* Only on a warm start: the version it continued. */
	if (warm)
	{
		append_json_key(&buf, "warm_start");
		appendStringInfo(&buf, "%d", warm->stored.version);
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/* What the fit's hooks need. */
typedef struct Progress
{
	const char *name;
	int32		epochs;
	StringInfo	metrics;
	BstEpochLog *log;			/* [epochs] */
	int32		n_log;
} Progress;

static void
before_batch(void *arg, int32 epoch, int64 batch, int64 n_batches, double running_loss)
{
	CHECK_FOR_INTERRUPTS();
	bst_progress_update(epoch, batch, n_batches, running_loss);
}

/* JSON has no NaN or infinity: no validation is null. */
static void
append_json_double(StringInfo buf, double v)
{
	if (!isfinite(v))
		appendStringInfoString(buf, "null");
	else
		appendStringInfo(buf, "%.6g", v);
}

static void
after_epoch(void *arg, const BstEpochStats *s)
{
	Progress   *p = arg;

	if (isnan(s->val_mae))
		ereport(NOTICE,
				(errmsg("bst_train \"%s\": epoch %d/%d: loss %.4f, mae %.4f, %.1f s",
						p->name, s->epoch, p->epochs, s->loss, s->mae, s->seconds)));
	else
		ereport(NOTICE,
				(errmsg("bst_train \"%s\": epoch %d/%d: loss %.4f, mae %.4f, validation mae %.4f, rmse %.4f%s, %.1f s",
						p->name, s->epoch, p->epochs, s->loss, s->mae, s->val_mae, s->val_rmse,
						s->best ? " (best)" : "", s->seconds)));
	appendStringInfo(p->metrics, "%s{\"epoch\": %d, \"loss\": %.6g, \"mae\": %.6g, \"val_mae\": ",
					 s->epoch > 1 ? ", " : "", s->epoch, s->loss, s->mae);
	append_json_double(p->metrics, s->val_mae);
	appendStringInfoString(p->metrics, ", \"val_rmse\": ");
	append_json_double(p->metrics, s->val_rmse);
	appendStringInfo(p->metrics, ", \"learning_rate\": %.6g, \"seconds\": %.3f}",
					 s->learning_rate, s->seconds);
	p->log[p->n_log].stats = *s;
	p->log[p->n_log].at = GetCurrentTimestamp();
	p->n_log++;
}

/* What the model takes besides the rated sequence, for the first NOTICE. */
static char *
inputs_text(uint32 features, const BstConfig *c)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int f = 0; f < N_FEATURES; f++)
		if (features & FEATURE_BIT(f))
			appendStringInfo(&buf, "%s%s", buf.len ? ", " : "", feature_names[f]);
	if (c->use_bias)
		appendStringInfo(&buf, "%sbias terms", buf.len ? ", " : "");
	if (c->n_factors > 0)
		appendStringInfo(&buf, "%sa factor term of %d", buf.len ? ", " : "", c->n_factors);
	if (c->rating_add)
		appendStringInfo(&buf, "%sratings added", buf.len ? ", " : "");
	return buf.len ? buf.data : "none";
}

/* A new model's config: the options over the data's vocabularies. */
static void
build_config(const TrainArgs *a, const Inputs *in, int32 n_movies, int32 max_len, BstConfig *config)
{
	bst_config_default(config, n_movies, a->seq_len ? a->seq_len : max_len);
	config->heads = a->heads;
	config->n_hidden = a->n_hidden;
	memcpy(config->hidden, a->hidden, sizeof(a->hidden));
	config->dropout = a->dropout;
	if (a->embed_dim > 0)
		config->embed_dim = a->embed_dim;
	config->n_users = in->n_users;
	if (a->features & FEATURE_BIT(FEATURE_USER_ID))
		config->user_dim = bst_default_dim(in->n_users);
	for (int k = 0; k < BST_N_USER_FEATS; k++)
		if (a->features & FEATURE_BIT(FEATURE_SEX + k))
		{
			config->n_feat_values[k] = in->n_values[k];
			config->feat_dim[k] = bst_default_dim(in->n_values[k]);
		}
	config->n_genres = in->n_genres;
	config->use_bias = a->bias ? 1 : 0;
	config->n_factors = a->factors < 0 ? config->embed_dim : a->factors;
	config->rating_add = a->rating_add ? 1 : 0;
}

/* The bst_models table of the extension being called. */
static Oid
models_relid(FunctionCallInfo fcinfo)
{
	return get_relname_relid("bst_models", get_func_namespace(fcinfo->flinfo->fn_oid));
}

/*
 * Everything that would keep the trained model from being stored, checked
 * before the training rather than after it: a read-only transaction or a
 * standby, the privilege to insert into bst_models, and the model's
 * ownership.  Returns the role the new version belongs to: the model's
 * owner (a role the caller has the privileges of), or the caller for a new
 * model.  That role reads the history at prediction time, so it must be
 * allowed to.
 */
static Oid
check_can_store(FunctionCallInfo fcinfo, const TrainArgs *a)
{
	Oid			models = models_relid(fcinfo);
	Oid			owner;

	/* A standby is read-only too; say which. */
	PreventCommandDuringRecovery("bst_train()");
	PreventCommandIfReadOnly("bst_train()");
	if (!OidIsValid(models))
		elog(ERROR, "relation bst_models of the bst extension is missing");
	if (pg_class_aclcheck(models, GetUserId(), ACL_INSERT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to train: role \"%s\" may not insert into bst_models",
						GetUserNameFromId(GetUserId(), false)),
				 errhint("A role trains once granted EXECUTE on bst_train and INSERT on bst_models.")));
	/* A 1.0 install, not updated yet, has no owners. */
	if (!bst_models_have_owner(fcinfo))
		return InvalidOid;

	owner = bst_model_owner(fcinfo, a->name);
	if (!OidIsValid(owner))
		owner = GetUserId();
	else if (!has_privs_of_role(GetUserId(), owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("model \"%s\" belongs to role \"%s\"",
						bst_short_name(a->name), GetUserNameFromId(owner, true) ?
						GetUserNameFromId(owner, true) : "(dropped)"),
				 errdetail("Only a role with the privileges of a model's owner may add versions."),
				 errhint("Train under another name.")));
	if (a->history && pg_class_aclcheck(a->history_relid, owner, ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("role \"%s\", the owner of model \"%s\", may not read history relation %s",
						GetUserNameFromId(owner, false), bst_short_name(a->name), a->history),
				 errdetail("bst_predict(user_id, movie_id) reads the history as the model's owner.")));
	return owner;
}

/*
 * The most memory one training may allocate, in kB: bst.train_memory, or
 * when that is 0 maintenance_work_mem, the memory PostgreSQL's own
 * maintenance operations may use.  *setting (unless NULL) names the one in
 * force.  The checks and their messages all take the limit from here.
 */
static int
train_memory_limit_kb(const char **setting)
{
	if (bst_train_memory_kb > 0)
	{
		if (setting)
			*setting = "bst.train_memory";
		return bst_train_memory_kb;
	}
	if (setting)
		*setting = "maintenance_work_mem, as bst.train_memory is 0";
	return maintenance_work_mem;
}

/* The limit for a message, in MB when it is a number of them. */
static char *
train_memory_limit_text(void)
{
	int			kb = train_memory_limit_kb(NULL);

	if (kb % 1024 == 0)
		return psprintf("%d MB", kb / 1024);
	return psprintf("%d kB", kb);
}

/* A number of bytes for a message, rounded up to MB from 1 MB, kB from 1 kB. */
static char *
memory_text(double bytes)
{
	if (bytes >= 1024 * 1024)
		return psprintf("%.0f MB", ceil(bytes / (1024 * 1024)));
	if (bytes >= 1024)
		return psprintf("%.0f kB", ceil(bytes / 1024));
	return psprintf("%.0f bytes", bytes);
}

/*
 * Where a training's windows are kept, from what it would allocate,
 * estimated exactly by the core before anything is: activations, gradients,
 * optimizer state and the copy of it a best epoch keeps, the window order,
 * the model; on a warm start the stored version and its state as well.
 * Against train_memory_limit_kb().
 *
 * In memory when they fit beside the model and its training.  Else in
 * temporary files, a bucket of them in memory at a time, the buckets as few
 * as the limit allows: windows read past the limit are in a file already
 * (bst_dataset_read_packed), and those that fit alone go there now.  Refused
 * only when the model and its training leave no room for a bucket.
 */
static void
plan_train_memory(const TrainArgs *a, const BstConfig *config, BstData *data, bool keep_state,
				  const WarmStart *warm, const BstSpillIO *io, MemoryContext data_cxt)
{
	const char *setting;
	double		limit = (double) train_memory_limit_kb(&setting) * 1024;
	double		windows = (double) bst_data_memory_bytes(data->n, config->seq_len);
	double		model = (double) bst_model_memory_bytes(config);
	double		training;
	int64		bucket;

	/* The stored version, and its state grown beside it. */
	if (warm)
		model += (double) bst_model_memory_bytes(bst_model_config(warm->stored.model)) +
			(double) bst_train_state_memory_bytes(bst_model_config(warm->stored.model),
												  warm->stored.state->optimizer) +
			(double) bst_train_state_memory_bytes(config, warm->stored.state->optimizer);
	training = (double) bst_fit_continue_memory_bytes(config, &a->fit, data->n, keep_state) + model;
	if (!data->spill && windows + training <= limit)
		return;

	bucket = limit > model ? bst_fit_bucket_windows(config, &a->fit, data->n, keep_state,
													(size_t) Min(limit - model, (double) SIZE_MAX)) : 0;
	if (bucket == 0)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("training model \"%s\" needs %s of memory, more than the limit of %s",
						bst_short_name(a->name), memory_text(windows + training),
						train_memory_limit_text()),
				 errdetail_plural("Its %lld window of %d movies takes %s, the model and its training %s (batch_size %d, %d heads, embedding width %d), too much to hold even a batch of windows at a time; the limit is %s.",
								  "Its %lld windows of %d movies take %s, the model and its training %s (batch_size %d, %d heads, embedding width %d), too much to hold even a batch of windows at a time; the limit is %s.",
								  data->n, (long long) data->n, config->seq_len, memory_text(windows),
								  memory_text(training), a->fit.train.batch_size, config->heads,
								  config->embed_dim, setting),
				 errhint("Use a smaller batch_size or seq_len, or raise bst.train_memory (0 means maintenance_work_mem).")));
	if (!data->spill)
		bst_dataset_spill(data, io, data_cxt);
	((BstSpill *) data->spill)->bucket_windows = bucket;
	ereport(NOTICE,
			(errmsg("bst_train \"%s\": its %lld windows (%s) do not fit in memory beside the model and its training within the limit of %s: they are kept in temporary files and trained on %lld at a time",
					bst_short_name(a->name), (long long) data->n, memory_text(windows),
					train_memory_limit_text(), (long long) bucket),
			 errdetail("Each epoch writes and reads them once more; the limit is %s.", setting)));
}

Datum
bst_train(PG_FUNCTION_ARGS)
{
	TrainArgs	args;
	Inputs		inputs;
	BstReadOptions read_options;
	BstReadResult read;
	BstData		data;
	BstConfig	config;
	BstVocab	vocab;
	int32	   *movie_ids;
	int32		n_movies;
	float		mean_target = 0;
	int32		min_history = 0;
	MemoryContext train_cxt;
	MemoryContext data_cxt;
	MemoryContext old_core;
	BstModel   *model;
	WarmStart	warm_start;
	WarmStart  *warm = NULL;
	BstTrainState *from_state = NULL;
	BstTrainState *kept_state = NULL;
	const char *grow_error = NULL;
	/* 1.1 keeps every version's optimizer state; a 1.0 install has no room. */
	bool		keep_state = PG_NARGS() > NARGS_1_0;
	int64		bucket_windows = 0;
	BstFitResult fit;
	BstFitStatus status;
	Progress	progress;
	BstFitHooks hooks = {before_batch, after_epoch, &progress};
	instr_time	start;
	instr_time	now;
	StringInfoData metrics;
	int32		version;
	Oid			owner;
	TupleDesc	result_desc;
	Datum		result[10];
	bool		result_nulls[10] = {0};

	if (get_call_result_type(fcinfo, NULL, &result_desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "bst_train must return a record");

	memset(&args, 0, sizeof(args));
	memset(&inputs, 0, sizeof(inputs));
	memset(&warm_start, 0, sizeof(warm_start));
	train_cxt = AllocSetContextCreate(CurrentMemoryContext, "bst_train", ALLOCSET_DEFAULT_SIZES);
	if (arg_given(fcinfo, ARG_WARM_START))
	{
		/* As check_can_store refuses it, but before reading anything. */
		PreventCommandDuringRecovery("bst_train()");
		PreventCommandIfReadOnly("bst_train()");
		warm = &warm_start;
		read_warm_start(fcinfo, train_cxt, warm);
	}
	parse_args(fcinfo, &args, warm);
	if (warm)
		check_warm_start_args(fcinfo, &args, warm);
	owner = check_can_store(fcinfo, &args);
	INSTR_TIME_SET_CURRENT(start);

	/*
	 * The windows, packed as they are read (held once, never beyond the
	 * limit: past it, in a temporary file); their ids are mapped once the
	 * model exists.
	 */
	data_cxt = AllocSetContextCreate(train_cxt, "bst_train windows", ALLOCSET_SMALL_SIZES);
	memset(&read_options, 0, sizeof(read_options));
	read_options.seq_len = warm ? bst_model_config(warm->stored.model)->seq_len : args.seq_len;
	read_options.movie_ids = args.vocabulary == NULL;
	read_options.limit = (double) train_memory_limit_kb(NULL) * 1024;
	read_options.io = bst_spill_io(data_cxt);
	bst_dataset_read_packed(args.query, "training", &read_options, data_cxt, &data, &read);
	if (!warm && (args.seq_len ? args.seq_len : read.max_len) < 2)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("the windows of the training query hold a single movie"),
				 errhint("A window is at least one rated movie followed by the target; or pass seq_len.")));
	movie_ids = read_vocabulary(args.vocabulary, &read, &n_movies);
	if (warm)
		movie_ids = union_ids(movie_ids, n_movies, warm->stored.model->movie_ids,
							  bst_model_config(warm->stored.model)->n_movies, &n_movies);
	read_users(&args, &data, &read, warm, &inputs);
	read_genres(&args, movie_ids, n_movies, warm, &inputs);

	if (warm)
	{
		/* The stored architecture over the grown vocabularies. */
		config = *bst_model_config(warm->stored.model);
		config.n_movies = n_movies;
		config.n_users = inputs.n_users;
		config.dropout = args.dropout;
	}
	else
		build_config(&args, &inputs, n_movies, read.max_len, &config);
	if (bst_config_check(&config))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid model configuration: %s", bst_config_check(&config))));
	if ((int64) args.fit.train.batch_size * config.seq_len > BST_MAX_BATCH_POSITIONS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("batch_size %d is too large for windows of %d movies",
						args.fit.train.batch_size, config.seq_len),
				 errdetail("batch_size times the window length must be at most %d.",
						   BST_MAX_BATCH_POSITIONS)));
	if ((int64) args.fit.train.batch_size * config.heads * config.seq_len * config.seq_len >
		BST_MAX_ATTENTION_SCORES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("batch_size %d, %d heads and windows of %d movies need too much attention memory",
						args.fit.train.batch_size, config.heads, config.seq_len),
				 errdetail("batch_size times heads times the window length squared must be at most %d.",
						   BST_MAX_ATTENTION_SCORES),
				 errhint("Use a smaller batch_size or seq_len.")));
	plan_train_memory(&args, &config, &data, keep_state, warm, read_options.io, data_cxt);
	if (args.fit.validation_fraction > 0 && data.n < 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the training query returned a single window: too few for a validation split"),
				 errhint("Pass early_stopping => false.")));

	bst_use_threads();
	old_core = bst_core_memory(train_cxt);
	vocab.movie_ids = movie_ids;
	vocab.user_ids = inputs.user_ids;
	vocab.user_feats = inputs.user_feats;
	vocab.movie_genres = inputs.movie_genres;
	if (warm)
	{
		/* Known rows bit for bit; new ones as a fresh model draws them. */
		model = bst_model_grow(warm->stored.model, n_movies, inputs.n_users, &vocab,
							   args.fit.train.seed, &grow_error);
		from_state = model ? bst_train_state_grow(warm->stored.state, warm->stored.model, model) : NULL;
		/* Only the grown ones are trained. */
		bst_model_free(warm->stored.model);
		bst_train_state_free(warm->stored.state);
		warm->stored.model = NULL;
		warm->stored.state = NULL;
	}
	else
		model = bst_model_create_vocab(&config, &vocab, args.fit.train.seed);
	bst_core_memory(old_core);
	/* The vocabularies hold the stored ones: only a bug refuses them. */
	if (model == NULL && grow_error && strcmp(grow_error, "out of memory") != 0)
		elog(ERROR, "could not grow version %d of model \"%s\": %s", warm->stored.version,
			 bst_short_name(args.name), grow_error);
	if (model == NULL || (warm && from_state == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory creating a model of %d movies", n_movies)));

	/* The configuration's length is the one the windows were laid out for. */
	if (data.seq_len != config.seq_len)
		elog(ERROR, "windows laid out for %d movies, the model takes %d", data.seq_len, config.seq_len);
	bst_dataset_map_ids(&data, model, read.has_users);

	ereport(NOTICE,
			(errmsg("bst_train \"%s\": %lld windows of up to %d movies, %d movies, %d users; inputs: %s; %s, learning rate %g%s%s",
					bst_short_name(args.name), (long long) data.n, config.seq_len, n_movies, inputs.n_users,
					inputs_text(args.features, &config), optimizer_names[args.fit.train.optimizer],
					args.fit.train.learning_rate,
					args.fit.patience ? psprintf(", early stopping on %g of the windows", args.fit.validation_fraction) : "",
					warm ? psprintf("; continuing version %d after %lld optimizer steps", warm->stored.version,
									(long long) from_state->step) : ""),
			 errdetail("Computing with %s.", bst_compute_description())));

	initStringInfo(&metrics);
	appendStringInfoString(&metrics, "{\"epochs\": [");
	progress.name = bst_short_name(args.name);
	progress.epochs = args.fit.epochs;
	progress.metrics = &metrics;
	progress.log = palloc(args.fit.epochs * sizeof(BstEpochLog));
	progress.n_log = 0;
	bst_progress_start(models_relid(fcinfo), args.name, data.n, args.fit.epochs);
	old_core = bst_core_memory(train_cxt);
	status = bst_fit_continue(model, &data, &args.fit, from_state, keep_state ? &kept_state : NULL,
							  &hooks, &fit);
	bst_core_memory(old_core);
	bst_progress_end();
	/* The windows are done with: not held through the store. */
	if (data.spill)
	{
		bucket_windows = data.spill->bucket_windows;
		data.spill->io->close(data.spill->file, data.spill->io->arg);
	}
	MemoryContextDelete(data_cxt);
	if (status == BST_FIT_DIVERGED)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("training diverged: the loss or the validation error is not finite in epoch %d",
						fit.epochs_run),
				 errhint("Use a smaller learning_rate.")));
	if (status == BST_FIT_NO_MEMORY)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory training model \"%s\"", bst_short_name(args.name))));
	/* The files raise their own errors: this is the core finding in them
	 * other windows than were written. */
	if (status == BST_FIT_IO_ERROR)
		elog(ERROR, "the temporary files of the training windows do not hold the windows written");
	if (status != BST_FIT_OK)
		elog(ERROR, "bst_fit refused its input");

	INSTR_TIME_SET_CURRENT(now);
	INSTR_TIME_SUBTRACT(now, start);
	appendStringInfo(&metrics, "], \"training_rows\": " INT64_FORMAT ", \"validation_rows\": " INT64_FORMAT
					 ", \"epochs_run\": %d, \"best_epoch\": %d, \"final_loss\": %.6g, \"final_mae\": %.6g"
					 ", \"val_mae\": ",
					 fit.n_train, fit.n_val, fit.epochs_run, fit.best_epoch, fit.best.loss, fit.best.mae);
	append_json_double(&metrics, fit.best.val_mae);
	appendStringInfoString(&metrics, ", \"val_rmse\": ");
	append_json_double(&metrics, fit.best.val_rmse);
	/* The windows were in temporary files, this many in memory at a time. */
	if (bucket_windows > 0)
		appendStringInfo(&metrics, ", \"bucket_windows\": " INT64_FORMAT, bucket_windows);
	/* For people: prediction reads both from the weights. */
	bst_model_training_facts(model, &mean_target, &min_history);
	appendStringInfo(&metrics, ", \"train_mean_rating\": %.9g, \"min_history\": %d, \"seconds\": %.3f}",
					 mean_target, min_history, INSTR_TIME_GET_DOUBLE(now));

	version = bst_model_store(fcinfo, args.name, owner, model, kept_state,
							  config_json(&args, bst_model_config(model), &inputs, warm),
							  metrics.data, args.history, progress.log, progress.n_log);
	MemoryContextDelete(train_cxt);

	result[0] = CStringGetTextDatum(args.name);
	result[1] = Int32GetDatum(version);
	result[2] = Int64GetDatum(fit.n_train);
	result[3] = Int32GetDatum(fit.epochs_run);
	result[4] = Float8GetDatum(fit.best.loss);
	result[5] = Float8GetDatum(fit.best.mae);
	result[6] = Float8GetDatum(INSTR_TIME_GET_DOUBLE(now));
	result[7] = Int32GetDatum(fit.best_epoch);
	result[8] = Float8GetDatum(fit.best.val_mae);
	result_nulls[8] = isnan(fit.best.val_mae);
	result[9] = Float8GetDatum(fit.best.val_rmse);
	result_nulls[9] = isnan(fit.best.val_rmse);
	/* The 1.0 declaration returns the first seven. */
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(result_desc),
													  result, result_nulls)));
}

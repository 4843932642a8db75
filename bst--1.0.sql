-- bst 1.0: Behavior Sequence Transformer recommender inside PostgreSQL
\echo Use "CREATE EXTENSION bst" to load this file. \quit

--------------------------------------------------------------------------
-- Sequences
--------------------------------------------------------------------------

CREATE FUNCTION bst_window_agg_transfn(internal, integer) RETURNS internal
    AS 'MODULE_PATHNAME' LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;
CREATE FUNCTION bst_window_agg_transfn(internal, real) RETURNS internal
    AS 'MODULE_PATHNAME' LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;
CREATE FUNCTION bst_window_agg_invfn(internal, integer) RETURNS internal
    AS 'MODULE_PATHNAME' LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;
CREATE FUNCTION bst_window_agg_invfn(internal, real) RETURNS internal
    AS 'MODULE_PATHNAME' LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;
CREATE FUNCTION bst_window_agg_finalfn(internal, integer) RETURNS integer[]
    AS 'MODULE_PATHNAME' LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;
CREATE FUNCTION bst_window_agg_finalfn(internal, real) RETURNS real[]
    AS 'MODULE_PATHNAME' LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;

-- The rows of a window frame as an array, oldest first.  Moving-aggregate
-- support makes a sliding "ROWS BETWEEN n PRECEDING AND CURRENT ROW" frame
-- cost O(1) per row.  NULL (and, for ratings, NaN) elements are an error.
CREATE AGGREGATE bst_window_agg(integer) (
    SFUNC = bst_window_agg_transfn, STYPE = internal,
    FINALFUNC = bst_window_agg_finalfn, FINALFUNC_EXTRA,
    MSFUNC = bst_window_agg_transfn, MINVFUNC = bst_window_agg_invfn, MSTYPE = internal,
    MFINALFUNC = bst_window_agg_finalfn, MFINALFUNC_EXTRA,
    PARALLEL = SAFE
);
CREATE AGGREGATE bst_window_agg(real) (
    SFUNC = bst_window_agg_transfn, STYPE = internal,
    FINALFUNC = bst_window_agg_finalfn, FINALFUNC_EXTRA,
    MSFUNC = bst_window_agg_transfn, MINVFUNC = bst_window_agg_invfn, MSTYPE = internal,
    MFINALFUNC = bst_window_agg_finalfn, MFINALFUNC_EXTRA,
    PARALLEL = SAFE
);

-- Each user's ratings, ordered by time (ties by movie id), cut into windows
-- of seq_len starting every step ratings, plus the user's last seq_len
-- ratings as a final window: the windowing of the Keras BST example.
-- The last element of each window is the target.
CREATE FUNCTION bst_sequences(
    source regclass,
    seq_len integer DEFAULT 4,
    step integer DEFAULT 2,
    user_column text DEFAULT 'user_id',
    movie_column text DEFAULT 'movie_id',
    rating_column text DEFAULT 'rating',
    time_column text DEFAULT 'unix_timestamp',
    OUT user_id integer,
    OUT movie_ids integer[],
    OUT ratings real[])
RETURNS SETOF record
AS 'MODULE_PATHNAME' LANGUAGE C CALLED ON NULL INPUT STABLE PARALLEL UNSAFE
ROWS 100000;

--------------------------------------------------------------------------
-- Splits
--------------------------------------------------------------------------

-- The project's reproducible 85/15 split: a window is held out for testing
-- when ((user_id * 1000003 + target_movie_id) * 2654435761) mod 2^32 mod 100
-- >= 85, computed exactly in numeric.  mod() keeps the sign of a negative
-- argument, so the 2^32 step is lifted into 0 .. 2^32 - 1 as the rule means.
CREATE FUNCTION bst_holdout(user_id integer, target_movie_id integer) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN mod(mod(mod(($1::numeric * 1000003 + $2) * 2654435761, 4294967296) + 4294967296,
               4294967296), 100) >= 85;

--------------------------------------------------------------------------
-- Models
--------------------------------------------------------------------------

-- Every trained version of every model.  weights is the numerical core's
-- versioned, checksummed binary layout; config and metrics are for people.
CREATE TABLE bst_models (
    model_id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    name text NOT NULL,
    version integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    config jsonb NOT NULL,
    metrics jsonb NOT NULL,
    history text,               -- relation bst_predict(user_id, movie_id) reads histories from
    weights bytea NOT NULL,
    PRIMARY KEY (name, version)
);
SELECT pg_catalog.pg_extension_config_dump('bst_models', '');
SELECT pg_catalog.pg_extension_config_dump('bst_models_model_id_seq', '');

CREATE FUNCTION bst_train(
    model text,
    query text,
    epochs integer DEFAULT 5,
    batch_size integer DEFAULT 265,
    learning_rate real DEFAULT 0.01,
    heads integer DEFAULT 3,
    hidden integer[] DEFAULT '{256,128}',
    dropout real DEFAULT 0.1,
    optimizer text DEFAULT 'adagrad',
    seed integer DEFAULT 42,
    history regclass DEFAULT 'ratings'::text::regclass,  -- resolved at call time
    embed_dim integer DEFAULT NULL,
    vocabulary text DEFAULT 'SELECT movie_id FROM movies',
    OUT model text,
    OUT version integer,
    OUT training_rows bigint,
    OUT epochs integer,
    OUT final_loss double precision,
    OUT final_mae double precision,
    OUT seconds double precision)
RETURNS record
AS 'MODULE_PATHNAME' LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION bst_predict(user_id integer, movie_id integer) RETURNS real
AS 'MODULE_PATHNAME', 'bst_predict_user' LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION bst_predict(model text, movie_ids integer[], ratings real[]) RETURNS real
AS 'MODULE_PATHNAME', 'bst_predict_window' LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION bst_evaluate(model text, query text,
    OUT n bigint, OUT mae double precision, OUT rmse double precision)
RETURNS record
AS 'MODULE_PATHNAME' LANGUAGE C CALLED ON NULL INPUT STABLE PARALLEL UNSAFE;

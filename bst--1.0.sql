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
-- >= 85, computed exactly in numeric.
CREATE FUNCTION bst_holdout(user_id integer, target_movie_id integer) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN mod(mod(($1::numeric * 1000003 + $2) * 2654435761, 4294967296), 100) >= 85;

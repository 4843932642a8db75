-- bst 1.0 -> 1.1
\echo Use "ALTER EXTENSION bst UPDATE TO '1.1'" to load this file. \quit

-- bst_sequences gains min_len, last so that 1.0's positional calls still
-- resolve.  A new argument is a new signature, which CREATE OR REPLACE
-- would add beside the old one (and make every 1.0-style call ambiguous),
-- so the 1.0 function is dropped first.  The C function serves both
-- declarations: it reads min_len only when the declaration has it.
DROP FUNCTION bst_sequences(regclass, integer, integer, text, text, text, text);

-- Each user's ratings, ordered by time (ties by movie id), cut into windows
-- of seq_len starting every step ratings, plus the user's last seq_len
-- ratings as a final window: the windowing of the Keras BST example.
-- With min_len (2 .. seq_len), windows instead end at the user's min_len-th
-- rating and every step ratings after it, the first ones shorter than
-- seq_len, with no tail window: step 1, min_len 2 makes every rating but
-- the first the target of exactly one window.
-- The last element of each window is the target.
CREATE FUNCTION bst_sequences(
    source regclass,
    seq_len integer DEFAULT 4,
    step integer DEFAULT 2,
    user_column text DEFAULT 'user_id',
    movie_column text DEFAULT 'movie_id',
    rating_column text DEFAULT 'rating',
    time_column text DEFAULT 'unix_timestamp',
    min_len integer DEFAULT NULL,
    OUT user_id integer,
    OUT movie_ids integer[],
    OUT ratings real[])
RETURNS SETOF record
AS 'MODULE_PATHNAME' LANGUAGE C CALLED ON NULL INPUT STABLE PARALLEL UNSAFE
ROWS 100000;

-- bst_train gains the preset and the options after vocabulary (user
-- features, genres, bias terms, schedule, validation and early stopping),
-- every option defaulting to NULL, the preset's value, and returns the best
-- epoch and its validation error.  A changed result type means drop and
-- create; the C function still serves a 1.0 declaration as the Keras preset.
DROP FUNCTION bst_train(text, text, integer, integer, real, integer, integer[], real, text,
                        integer, regclass, integer, text);

-- Train a model on the windows of a query (movie_ids integer[], ratings
-- real[], optionally user_id integer) and store it as a new version.  Every
-- option but model, query and seed defaults to NULL: the preset's value
-- ('default', the best configuration found; 'keras_example', the Keras BST
-- example's exact recipe).  users and movies are read when they exist.
CREATE FUNCTION bst_train(
    model text,
    query text,
    epochs integer DEFAULT NULL,
    batch_size integer DEFAULT NULL,
    learning_rate real DEFAULT NULL,
    heads integer DEFAULT NULL,
    hidden integer[] DEFAULT NULL,
    dropout real DEFAULT NULL,
    optimizer text DEFAULT NULL,                 -- 'adagrad', 'adam' or 'adamw'
    seed integer DEFAULT 42,
    history regclass DEFAULT 'ratings'::text::regclass,  -- resolved at call time
    embed_dim integer DEFAULT NULL,
    vocabulary text DEFAULT 'SELECT movie_id FROM movies',
    preset text DEFAULT 'default',               -- or 'keras_example'
    users regclass DEFAULT pg_catalog.to_regclass('users'),    -- NULL when absent
    movies regclass DEFAULT pg_catalog.to_regclass('movies'),
    seq_len integer DEFAULT NULL,                -- NULL: the longest window of the query
    features text[] DEFAULT NULL,                -- of user_id, sex, age_group, occupation, genres
    bias boolean DEFAULT NULL,                   -- global + user + movie bias terms
    bias_init boolean DEFAULT NULL,              -- start them from the closed-form fit
    weight_decay real DEFAULT NULL,              -- AdamW's
    lr_schedule text DEFAULT NULL,               -- 'constant' or 'cosine'
    validation_fraction real DEFAULT NULL,       -- (0, 0.5]
    patience integer DEFAULT NULL,               -- epochs without a better validation MAE
    early_stopping boolean DEFAULT NULL,
    factors integer DEFAULT NULL,                -- width of a user x movie factor term, 0: none
    rating_mode text DEFAULT NULL,               -- 'multiply' (Keras) or 'add'
    OUT model text,
    OUT version integer,
    OUT training_rows bigint,
    OUT epochs integer,                          -- run (early stopping may stop sooner)
    OUT final_loss double precision,             -- of the kept (best) epoch
    OUT final_mae double precision,
    OUT seconds double precision,
    OUT best_epoch integer,
    OUT val_mae double precision,                -- NULL without validation
    OUT val_rmse double precision)
RETURNS record
AS 'MODULE_PATHNAME' LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;


-- Score an explicit window for a user (user features and bias).
CREATE FUNCTION bst_predict(model text, user_id integer, movie_ids integer[], ratings real[]) RETURNS real
AS 'MODULE_PATHNAME', 'bst_predict_user_window' LANGUAGE C STABLE STRICT PARALLEL SAFE;

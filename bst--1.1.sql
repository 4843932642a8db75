-- bst 1.1: Behavior Sequence Transformer recommender inside PostgreSQL
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
-- A model belongs to the role that first trained it (owner, the same in
-- every version); see "Privileges" below.  optimizer_state is what
-- bst_train(warm_start => version) continues from, in a checksummed layout
-- of its own bound to the weights: as large as the weights again or twice,
-- so a column apart that prediction never reads (NULL: none, as for 1.0's
-- versions; setting it NULL frees the space and only forbids warm starts).
CREATE TABLE bst_models (
    model_id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    name text NOT NULL,
    version integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    config jsonb NOT NULL,
    metrics jsonb NOT NULL,
    history text,               -- relation bst_predict(user_id, movie_id) reads histories from
    weights bytea NOT NULL,
    owner regrole NOT NULL DEFAULT (pg_catalog.quote_ident(CURRENT_USER))::pg_catalog.regrole,
    optimizer_state bytea,
    PRIMARY KEY (name, version)
);
SELECT pg_catalog.pg_extension_config_dump('bst_models', '');
SELECT pg_catalog.pg_extension_config_dump('bst_models_model_id_seq', '');

-- Train a model on the windows of a query (movie_ids integer[], ratings
-- real[], optionally user_id integer) and store it as a new version.  Every
-- option but model, query and seed defaults to NULL: the preset's value
-- ('default', the best configuration found; 'keras_example', the Keras BST
-- example's exact recipe).  users and movies are read when they exist.
-- warm_start => v continues version v's weights and optimizer state; the
-- options left NULL are then v's, and its architecture cannot change.
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
    warm_start integer DEFAULT NULL,             -- a version of the model to continue from
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

-- A prediction costs about 5 us (an explicit window) or 25 us (a user's,
-- with its history lookup): some 100 and 500 times the planner's cost of a
-- trivial operator, so that a scan scoring many rows gets parallel workers.
CREATE FUNCTION bst_predict(user_id integer, movie_id integer) RETURNS real
AS 'MODULE_PATHNAME', 'bst_predict_user' LANGUAGE C STABLE STRICT PARALLEL SAFE
COST 500;

CREATE FUNCTION bst_predict(model text, movie_ids integer[], ratings real[]) RETURNS real
AS 'MODULE_PATHNAME', 'bst_predict_window' LANGUAGE C STABLE STRICT PARALLEL SAFE
COST 100;

-- Score an explicit window for a user (user features and bias).
CREATE FUNCTION bst_predict(model text, user_id integer, movie_ids integer[], ratings real[]) RETURNS real
AS 'MODULE_PATHNAME', 'bst_predict_user_window' LANGUAGE C STABLE STRICT PARALLEL SAFE
COST 100;

CREATE FUNCTION bst_evaluate(model text, query text,
    OUT n bigint, OUT mae double precision, OUT rmse double precision)
RETURNS record
AS 'MODULE_PATHNAME' LANGUAGE C CALLED ON NULL INPUT STABLE PARALLEL UNSAFE;

-- The top k movies of the model's vocabulary for a user's current history
-- (the latest seq_len - 1 ratings, as bst_predict(user_id, movie_id) reads
-- them), best first, without the movies the user rated unless asked; model
-- NULL: bst.model, else your own latest.
CREATE FUNCTION bst_recommend(user_id integer, k integer DEFAULT 10, exclude_rated boolean DEFAULT true,
                              model text DEFAULT NULL)
RETURNS TABLE (movie_id integer, score real, rank integer)
AS 'MODULE_PATHNAME' LANGUAGE C STABLE CALLED ON NULL INPUT PARALLEL SAFE ROWS 10;

-- Where a prediction looked: for the window bst_predict(user_id, movie_id)
-- scores, the attention weight the target's query gave each history item
-- and itself, per head (1..heads) and averaged (head NULL); the target's
-- rows (the last position) carry the prediction as their rating.
CREATE FUNCTION bst_explain_weights(user_id integer, target_movie_id integer, model text DEFAULT NULL)
RETURNS TABLE ("position" integer, movie_id integer, rating real, attention real, head integer)
AS 'MODULE_PATHNAME' LANGUAGE C STABLE CALLED ON NULL INPUT PARALLEL SAFE ROWS 40;

-- The same with the movies' titles, from movies (yours: read as you).
CREATE FUNCTION bst_explain(user_id integer, target_movie_id integer, model text DEFAULT NULL,
                            movies regclass DEFAULT pg_catalog.to_regclass('movies'))
RETURNS TABLE ("position" integer, movie_id integer, rating real, title text, attention real, head integer)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF movies IS NULL THEN
        RETURN QUERY SELECT e.position, e.movie_id, e.rating, NULL::text, e.attention, e.head
                     FROM @extschema@.bst_explain_weights(user_id, target_movie_id, model) e
                     ORDER BY e.head NULLS FIRST, e.position;
    ELSE
        RETURN QUERY EXECUTE format(
            'SELECT e.position, e.movie_id, e.rating, m.title::text, e.attention, e.head '
            'FROM @extschema@.bst_explain_weights($1, $2, $3) e '
            'LEFT JOIN %s m ON m.movie_id OPERATOR(pg_catalog.=) e.movie_id '
            'ORDER BY e.head NULLS FIRST, e.position', movies)
            USING user_id, target_movie_id, model;
    END IF;
END;
$$;

-- The models this backend holds loaded (bst.model_cache_memory bounds
-- them), most recently used first: their memory, and the calls each served
-- since it was loaded.
CREATE FUNCTION bst_loaded_models(OUT name text, OUT version integer, OUT model_id bigint,
                                  OUT bytes bigint, OUT uses bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

-- What computes in this backend: the BLAS library, the kernels it runs and
-- what chose them (the server's OPENBLAS_CORETYPE, bst by the CPU's
-- features, or OpenBLAS's own detection), and the threads bst.threads gives
-- a training.  bst_train's first NOTICE repeats it.
CREATE FUNCTION bst_compute_info()
RETURNS text
AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT PARALLEL SAFE;

-- One row per epoch of every stored version, written with it by bst_train:
-- the loss and MAE on the training windows during the epoch, the
-- validation MAE and RMSE after it (NULL without validation), the learning
-- rate at its last step, its seconds and when it ended.  Dropping a version
-- drops its log.
CREATE TABLE bst_training_log (
    model_id bigint NOT NULL REFERENCES bst_models (model_id) ON DELETE CASCADE,
    model text NOT NULL,
    version integer NOT NULL,
    epoch integer NOT NULL,
    train_loss double precision NOT NULL,
    train_mae double precision NOT NULL,
    val_mae double precision,
    val_rmse double precision,
    learning_rate double precision NOT NULL,
    seconds double precision NOT NULL,
    at timestamptz NOT NULL,
    PRIMARY KEY (model_id, epoch)
);
SELECT pg_catalog.pg_extension_config_dump('bst_training_log', '');

-- A running bst_train of any session, refreshed every batch: PostgreSQL's
-- progress reporting (the fields of pg_stat_progress_*), which a training
-- fills as a COPY marked as bst's (see src/progress.c).  Like
-- pg_stat_activity, another role's trainings show with NULL figures unless
-- the viewer has the privileges of that role or of pg_read_all_stats.
CREATE VIEW bst_training_progress AS
SELECT p.pid,
       a.usename AS role,
       pg_catalog.convert_from(pg_catalog.substr(
           pg_catalog.int8send(p.param10) OPERATOR(pg_catalog.||) pg_catalog.int8send(p.param11)
           OPERATOR(pg_catalog.||) pg_catalog.int8send(p.param12) OPERATOR(pg_catalog.||) pg_catalog.int8send(p.param13)
           OPERATOR(pg_catalog.||) pg_catalog.int8send(p.param14) OPERATOR(pg_catalog.||) pg_catalog.int8send(p.param15)
           OPERATOR(pg_catalog.||) pg_catalog.int8send(p.param16) OPERATOR(pg_catalog.||) pg_catalog.int8send(p.param17)
           OPERATOR(pg_catalog.||) pg_catalog.int8send(p.param18) OPERATOR(pg_catalog.||) pg_catalog.int8send(p.param19)
           OPERATOR(pg_catalog.||) pg_catalog.int8send(p.param20),
           1, p.param9::integer), 'UTF8') AS model,
       p.param2::integer AS epoch,
       p.param3::integer AS epochs,
       p.param4 AS batch,
       p.param5 AS batches,
       CASE WHEN p.param6 OPERATOR(pg_catalog.>=) 0
            THEN p.param6::double precision OPERATOR(pg_catalog./) 1e6 END AS running_loss,
       p.param8 AS windows,
       pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-)
           ('2000-01-01 00:00:00+00'::timestamptz OPERATOR(pg_catalog.+)
            (p.param7 OPERATOR(pg_catalog.*) interval '1 microsecond')) AS elapsed
FROM pg_catalog.pg_stat_get_progress_info('COPY') p
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) p.pid
WHERE p.param1 OPERATOR(pg_catalog.=) 27711491372511854;   -- "bst_trn", src/progress.c

-- Which version of a model serves: every deployment, newest last.  A model
-- without one serves its latest version.  previous is the deployment this
-- one replaced, so that rollbacks walk back through them.
CREATE TABLE bst_deployments (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model text NOT NULL,
    version integer NOT NULL,
    strategy text NOT NULL,
    previous bigint,            -- the id of the deployment this one replaced
    deployed_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    deployed_by regrole NOT NULL DEFAULT (pg_catalog.quote_ident(CURRENT_USER))::pg_catalog.regrole
);
CREATE INDEX ON bst_deployments (model, id);
SELECT pg_catalog.pg_extension_config_dump('bst_deployments', '');
SELECT pg_catalog.pg_extension_config_dump('bst_deployments_id_seq', '');

-- Every version you can see, with whether it serves.
CREATE VIEW bst_models_list AS
SELECT m.name, m.version,
       m.version OPERATOR(pg_catalog.=) coalesce(d.version, l.latest) AS deployed,
       m.created_at, m.owner,
       (m.metrics OPERATOR(pg_catalog.->>) 'training_rows')::bigint AS rows,
       coalesce((m.metrics OPERATOR(pg_catalog.->>) 'epochs_run')::integer,
                pg_catalog.jsonb_array_length(m.metrics OPERATOR(pg_catalog.->) 'epochs')) AS epochs,
       (m.metrics OPERATOR(pg_catalog.->>) 'val_mae')::double precision AS val_mae,
       pg_catalog.octet_length(m.weights) AS bytes,
       m.config AS options
FROM bst_models m
JOIN (SELECT name, pg_catalog.max(version) AS latest FROM bst_models GROUP BY name) l USING (name)
LEFT JOIN LATERAL (SELECT dd.version FROM bst_deployments dd
                   WHERE dd.model OPERATOR(pg_catalog.=) m.name
                     AND EXISTS (SELECT FROM bst_models v WHERE v.name OPERATOR(pg_catalog.=) dd.model
                                                             AND v.version OPERATOR(pg_catalog.=) dd.version)
                   ORDER BY dd.id DESC LIMIT 1) d ON true;

-- Make a version serve bst_predict and bst_evaluate from the next statement
-- on: the given version, or by strategy 'best' (lowest validation MAE),
-- 'latest', or 'rollback' (the version deployed before the current one).
-- Returns the version deployed.  Only the model's owner may.
CREATE FUNCTION bst_deploy(model text, version integer DEFAULT NULL, strategy text DEFAULT 'best')
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    current_deployment @extschema@.bst_deployments;
    chosen integer;
    previous bigint;
BEGIN
    IF model IS NULL OR strategy IS NULL THEN
        RAISE EXCEPTION 'model and strategy must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A model row-level security hides does not exist for the caller.
    IF NOT EXISTS (SELECT FROM @extschema@.bst_models m WHERE m.name = bst_deploy.model) THEN
        RAISE EXCEPTION 'bst model % does not exist', quote_literal(model) USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM @extschema@.bst_check_model_owner(model);
    -- Deployments serialize per model, as trainings do.
    PERFORM pg_advisory_xact_lock(hashtext('bst_models'), hashtext(model));
    SELECT * INTO current_deployment FROM @extschema@.bst_deployments d
    WHERE d.model = bst_deploy.model ORDER BY d.id DESC LIMIT 1;
    previous := current_deployment.id;

    IF version IS NOT NULL THEN
        chosen := version;
        strategy := 'version';
    ELSIF strategy = 'latest' THEN
        SELECT max(m.version) INTO chosen FROM @extschema@.bst_models m WHERE m.name = bst_deploy.model;
    ELSIF strategy = 'best' THEN
        SELECT m.version INTO chosen FROM @extschema@.bst_models m
        WHERE m.name = bst_deploy.model AND (m.metrics ->> 'val_mae') IS NOT NULL
        ORDER BY (m.metrics ->> 'val_mae')::float8, m.version DESC LIMIT 1;
        IF chosen IS NULL THEN
            RAISE EXCEPTION 'no version of bst model % has a validation error', quote_literal(model)
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Deploy by version, or with strategy => ''latest''.';
        END IF;
    ELSIF strategy = 'rollback' THEN
        SELECT d.version, d.previous INTO chosen, previous FROM @extschema@.bst_deployments d
        WHERE d.id = current_deployment.previous;
        IF chosen IS NULL THEN
            RAISE EXCEPTION 'bst model % has no earlier deployment to roll back to', quote_literal(model)
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
    ELSE
        RAISE EXCEPTION 'unknown strategy %', quote_literal(strategy)
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use ''best'', ''latest'' or ''rollback''.';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.bst_models m WHERE m.name = bst_deploy.model AND m.version = chosen) THEN
        RAISE EXCEPTION 'version % of bst model % does not exist', chosen, quote_literal(model)
            USING ERRCODE = 'undefined_object';
    END IF;
    INSERT INTO @extschema@.bst_deployments (model, version, strategy, previous)
    VALUES (model, chosen, strategy, previous);
    RETURN chosen;
END;
$$;

-- Remove a version of a model (version given) or the whole model, with its
-- training log; the whole model also loses its grants and deployments.  The
-- deployed version cannot be dropped alone.  Returns the versions removed.
CREATE FUNCTION bst_drop(model text, version integer DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    deployed integer;
    removed integer;
BEGIN
    IF model IS NULL THEN
        RAISE EXCEPTION 'model must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A model row-level security hides does not exist for the caller.
    IF NOT EXISTS (SELECT FROM @extschema@.bst_models m WHERE m.name = bst_drop.model) THEN
        RAISE EXCEPTION 'bst model % does not exist', quote_literal(model) USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM @extschema@.bst_check_model_owner(model);
    PERFORM pg_advisory_xact_lock(hashtext('bst_models'), hashtext(model));
    IF version IS NULL THEN
        DELETE FROM @extschema@.bst_deployments d WHERE d.model = bst_drop.model;
        DELETE FROM @extschema@.bst_model_grants g WHERE g.model = bst_drop.model;
        DELETE FROM @extschema@.bst_models m WHERE m.name = bst_drop.model;
        GET DIAGNOSTICS removed = ROW_COUNT;
        RETURN removed;
    END IF;
    SELECT d.version INTO deployed FROM @extschema@.bst_deployments d
    WHERE d.model = bst_drop.model ORDER BY d.id DESC LIMIT 1;
    IF deployed = version THEN
        RAISE EXCEPTION 'version % of bst model % is deployed', version, quote_literal(model)
            USING ERRCODE = 'object_in_use',
                  HINT = 'Deploy another version first, e.g. SELECT bst_deploy(' || quote_literal(model) || ', strategy => ''rollback'').';
    END IF;
    DELETE FROM @extschema@.bst_models m WHERE m.name = bst_drop.model AND m.version = bst_drop.version;
    GET DIAGNOSTICS removed = ROW_COUNT;
    IF removed = 0 THEN
        RAISE EXCEPTION 'version % of bst model % does not exist', version, quote_literal(model)
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN removed;
END;
$$;

--------------------------------------------------------------------------
-- Privileges
--------------------------------------------------------------------------

-- Who may read a model besides its owner's roles: a grantee, or everyone
-- (grantee NULL, i.e. PUBLIC).  Kept per model name, so it covers every
-- version.
CREATE TABLE bst_model_grants (
    model text NOT NULL,
    grantee regrole,            -- NULL: PUBLIC
    UNIQUE NULLS NOT DISTINCT (model, grantee)
);
SELECT pg_catalog.pg_extension_config_dump('bst_model_grants', '');

-- The owner of a model: its first version's.  Row-level security hides
-- other roles' models, so this reads past it (as the extension's owner) to
-- tell whether a name is taken; like pg_class.relowner, a model's owner is
-- not a secret.
CREATE FUNCTION bst_model_owner(model text) RETURNS regrole
LANGUAGE sql STABLE STRICT SECURITY DEFINER PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT m.owner FROM @extschema@.bst_models m
    WHERE m.name OPERATOR(pg_catalog.=) bst_model_owner.model
    ORDER BY m.version LIMIT 1;
END;

-- Raise 42704 when model does not exist and 42501 unless the caller has the
-- privileges of its owner: what bst_grant, bst_revoke, bst_deploy and
-- bst_drop require.
CREATE FUNCTION bst_check_model_owner(model text) RETURNS void
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    model_owner regrole := @extschema@.bst_model_owner(model);
BEGIN
    IF model_owner IS NULL THEN
        RAISE EXCEPTION 'bst model % does not exist', quote_literal(model)
            USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT pg_has_role(model_owner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of bst model %', quote_literal(model)
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('The model belongs to %s.', model_owner);
    END IF;
END;
$$;

-- A role sees the versions of the models it owns (directly or through a
-- role it has the privileges of, as for any PostgreSQL object) and of the
-- models granted to it or to PUBLIC.  Only an owner's role adds versions,
-- and only to a name that is free or already its own; only an owner's role
-- changes or deletes them.  The extension's owner and superusers bypass
-- row-level security, as for any table.
ALTER TABLE bst_models ENABLE ROW LEVEL SECURITY;
CREATE POLICY bst_models_read ON bst_models FOR SELECT
    USING (pg_catalog.pg_has_role(owner, 'USAGE') OR
           EXISTS (SELECT FROM @extschema@.bst_model_grants g
                   WHERE g.model OPERATOR(pg_catalog.=) name
                     AND (g.grantee IS NULL OR pg_catalog.pg_has_role(g.grantee, 'USAGE'))));
CREATE POLICY bst_models_insert ON bst_models FOR INSERT
    WITH CHECK (pg_catalog.pg_has_role(owner, 'USAGE') AND
                coalesce(@extschema@.bst_model_owner(name) OPERATOR(pg_catalog.=) owner, true));
CREATE POLICY bst_models_update ON bst_models FOR UPDATE
    USING (pg_catalog.pg_has_role(owner, 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role(owner, 'USAGE') AND
                @extschema@.bst_model_owner(name) OPERATOR(pg_catalog.=) owner);
CREATE POLICY bst_models_delete ON bst_models FOR DELETE
    USING (pg_catalog.pg_has_role(owner, 'USAGE'));

-- The log shows what bst_models shows; bst_train writes it for the versions
-- it stores (as the model's owner's role).
ALTER TABLE bst_training_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY bst_training_log_read ON bst_training_log FOR SELECT
    USING (EXISTS (SELECT FROM @extschema@.bst_models m WHERE m.model_id OPERATOR(pg_catalog.=) model_id));
CREATE POLICY bst_training_log_insert ON bst_training_log FOR INSERT
    WITH CHECK (pg_catalog.pg_has_role(@extschema@.bst_model_owner(model), 'USAGE'));

ALTER TABLE bst_deployments ENABLE ROW LEVEL SECURITY;
CREATE POLICY bst_deployments_read ON bst_deployments FOR SELECT
    USING (EXISTS (SELECT FROM @extschema@.bst_models m WHERE m.name OPERATOR(pg_catalog.=) model));
CREATE POLICY bst_deployments_write ON bst_deployments FOR ALL
    USING (pg_catalog.pg_has_role(@extschema@.bst_model_owner(model), 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role(@extschema@.bst_model_owner(model), 'USAGE'));

ALTER TABLE bst_model_grants ENABLE ROW LEVEL SECURITY;
CREATE POLICY bst_model_grants_read ON bst_model_grants FOR SELECT USING (true);
CREATE POLICY bst_model_grants_write ON bst_model_grants FOR ALL
    USING (pg_catalog.pg_has_role(@extschema@.bst_model_owner(model), 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role(@extschema@.bst_model_owner(model), 'USAGE'));

-- Let grantee (a role, or 'public') use model: predict with it and evaluate
-- it.  Only the model's owner may.
CREATE FUNCTION bst_grant(model text, grantee text) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    role regrole := CASE WHEN lower(grantee) = 'public' THEN NULL ELSE grantee::regrole END;
BEGIN
    PERFORM @extschema@.bst_check_model_owner(model);
    INSERT INTO @extschema@.bst_model_grants VALUES (model, role) ON CONFLICT DO NOTHING;
END;
$$;

-- Take back what bst_grant gave.
CREATE FUNCTION bst_revoke(model text, grantee text) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    role regrole := CASE WHEN lower(grantee) = 'public' THEN NULL ELSE grantee::regrole END;
BEGIN
    PERFORM @extschema@.bst_check_model_owner(model);
    DELETE FROM @extschema@.bst_model_grants g
    WHERE g.model = bst_revoke.model AND g.grantee IS NOT DISTINCT FROM role;
END;
$$;

-- Everyone may read the models row-level security shows them, predict and
-- evaluate with them.  Training writes bst_models: a role may train once
-- granted both
--     GRANT EXECUTE ON FUNCTION bst_train TO alice;
--     GRANT INSERT, DELETE ON bst_models TO alice;
-- (DELETE to drop its own versions).
GRANT SELECT ON bst_models, bst_training_progress, bst_models_list TO PUBLIC;
GRANT SELECT, INSERT, DELETE ON bst_deployments TO PUBLIC;
GRANT SELECT, INSERT ON bst_training_log TO PUBLIC;
GRANT SELECT, INSERT, DELETE ON bst_model_grants TO PUBLIC;
REVOKE EXECUTE ON FUNCTION bst_train FROM PUBLIC;

--------------------------------------------------------------------------
-- Comments
--------------------------------------------------------------------------

-- What \df+, \da, \dt+, \dv+, \ds+ and \d+ show for every object \dx+ bst
-- lists (functions, aggregates, tables, views, sequences), and for every
-- column of the tables and views.  bst--1.1.sql and bst--1.0--1.1.sql end
-- with this same block, so an updated install has the comments of a fresh
-- one (sql/comments.sql checks that nothing lacks one; test/upgrade compares
-- both installs).  The settings (bst.*) describe themselves in pg_settings,
-- from src/bst.c.

COMMENT ON FUNCTION bst_window_agg_transfn(internal, integer) IS
    'Support function of bst_window_agg(integer): adds a row to the frame';
COMMENT ON FUNCTION bst_window_agg_transfn(internal, real) IS
    'Support function of bst_window_agg(real): adds a row to the frame';
COMMENT ON FUNCTION bst_window_agg_invfn(internal, integer) IS
    'Support function of bst_window_agg(integer): removes the oldest row as a sliding frame moves';
COMMENT ON FUNCTION bst_window_agg_invfn(internal, real) IS
    'Support function of bst_window_agg(real): removes the oldest row as a sliding frame moves';
COMMENT ON FUNCTION bst_window_agg_finalfn(internal, integer) IS
    'Support function of bst_window_agg(integer): returns the frame as an array';
COMMENT ON FUNCTION bst_window_agg_finalfn(internal, real) IS
    'Support function of bst_window_agg(real): returns the frame as an array';
COMMENT ON AGGREGATE bst_window_agg(integer) IS
    'The values of a window frame (e.g. movie ids) as an array, oldest first; a NULL is an error; O(1) per row over a sliding frame';
COMMENT ON AGGREGATE bst_window_agg(real) IS
    'The values of a window frame (e.g. ratings) as an array, oldest first; a NULL, NaN or infinity is an error; O(1) per row over a sliding frame';

COMMENT ON FUNCTION bst_sequences(regclass, integer, integer, text, text, text, text, integer) IS
    'Cut each user''s ratings, in time order, into windows of movie ids and ratings, the last element the target: the Keras BST example''s windows, or with min_len one ending at every step-th rating from the min_len-th';
COMMENT ON FUNCTION bst_holdout(integer, integer) IS
    'The project''s reproducible 85/15 split: true when the window of this user and target movie is held out for testing';

COMMENT ON FUNCTION bst_train IS
    'Train a BST model on the windows of a query and store it as a new version; options left NULL take the preset''s values, or with warm_start the continued version''s';
COMMENT ON FUNCTION bst_predict(integer, integer) IS
    'The rating a user would give a movie now, from the user''s latest ratings in the model''s history relation; the model is bst.model, else your own latest';
COMMENT ON FUNCTION bst_predict(text, integer[], real[]) IS
    'The rating an unknown user would give the last movie of an explicit window, after the ratings before it';
COMMENT ON FUNCTION bst_predict(text, integer, integer[], real[]) IS
    'The rating a user would give the last movie of an explicit window, after the ratings before it (with the user''s features and bias)';
COMMENT ON FUNCTION bst_evaluate(text, text) IS
    'Mean absolute and root mean squared error of a model over the windows of a query (as bst_train reads them)';
COMMENT ON FUNCTION bst_recommend(integer, integer, boolean, text) IS
    'The top k movies of the model''s vocabulary for a user''s current history, best first, without the movies the user rated unless asked';
COMMENT ON FUNCTION bst_explain_weights(integer, integer, text) IS
    'Where a prediction looked: the attention the target gave each movie of the user''s history and itself, per head and averaged (head NULL)';
COMMENT ON FUNCTION bst_explain(integer, integer, text, regclass) IS
    'bst_explain_weights with the movies'' titles, read from movies as you';
COMMENT ON FUNCTION bst_loaded_models() IS
    'The models this backend holds loaded (bounded by bst.model_cache_memory), most recently used first: their memory and the calls each served';
COMMENT ON FUNCTION bst_compute_info() IS
    'What computes in this backend: the BLAS library, its kernels and what chose them, and the threads a training gets (bst.threads)';
COMMENT ON FUNCTION bst_deploy(text, integer, text) IS
    'Make a version of your model serve bst_predict and bst_evaluate: the given one, or by strategy best (lowest validation MAE), latest or rollback; returns it';
COMMENT ON FUNCTION bst_drop(text, integer) IS
    'Remove a version of your model with its training log, or the whole model with its deployments and grants; returns the versions removed';
COMMENT ON FUNCTION bst_model_owner(text) IS
    'The role a model belongs to (its first version''s owner), read past row-level security; NULL for no such model';
COMMENT ON FUNCTION bst_check_model_owner(text) IS
    'Internal: an error unless the model exists and you have its owner''s privileges (checked by bst_grant, bst_revoke, bst_deploy and bst_drop)';
COMMENT ON FUNCTION bst_grant(text, text) IS
    'Let a role, or public, see your model and predict and evaluate with it';
COMMENT ON FUNCTION bst_revoke(text, text) IS
    'Take back what bst_grant gave a role, or public';

COMMENT ON TABLE bst_models IS
    'Every trained version of every model; you see the models you own or were granted';
COMMENT ON COLUMN bst_models.model_id IS 'Unique id of the version';
COMMENT ON COLUMN bst_models.name IS 'Name of the model';
COMMENT ON COLUMN bst_models.version IS 'Version of the model, from 1';
COMMENT ON COLUMN bst_models.created_at IS 'When the version was stored';
COMMENT ON COLUMN bst_models.config IS 'The options and shapes the version was trained with';
COMMENT ON COLUMN bst_models.metrics IS 'What training measured: loss and errors per epoch, row counts, the best epoch';
COMMENT ON COLUMN bst_models.history IS
    'Relation bst_predict(user_id, movie_id) reads a user''s latest ratings from, as the model''s owner; NULL: none';
COMMENT ON COLUMN bst_models.weights IS 'The trained model, in a versioned, checksummed binary layout';
COMMENT ON COLUMN bst_models.owner IS 'Role the model belongs to (who first trained it), the same in every version';
COMMENT ON COLUMN bst_models.optimizer_state IS
    'What bst_train(warm_start => version) continues from; NULL: none (setting it NULL frees the space)';
COMMENT ON SEQUENCE bst_models_model_id_seq IS 'Generates bst_models.model_id';

COMMENT ON TABLE bst_training_log IS
    'One row per epoch of every stored version, written by bst_train; a version''s rows go with it';
COMMENT ON COLUMN bst_training_log.model_id IS 'The version (bst_models.model_id)';
COMMENT ON COLUMN bst_training_log.model IS 'Name of the model';
COMMENT ON COLUMN bst_training_log.version IS 'Version of the model';
COMMENT ON COLUMN bst_training_log.epoch IS 'Epoch, from 1';
COMMENT ON COLUMN bst_training_log.train_loss IS 'Mean squared error on the training windows during the epoch';
COMMENT ON COLUMN bst_training_log.train_mae IS 'Mean absolute error on the training windows during the epoch';
COMMENT ON COLUMN bst_training_log.val_mae IS 'Mean absolute error on the validation windows after the epoch; NULL without validation';
COMMENT ON COLUMN bst_training_log.val_rmse IS 'Root mean squared error on the validation windows after the epoch; NULL without validation';
COMMENT ON COLUMN bst_training_log.learning_rate IS 'Learning rate at the epoch''s last step';
COMMENT ON COLUMN bst_training_log.seconds IS 'Seconds the epoch took';
COMMENT ON COLUMN bst_training_log.at IS 'When the epoch ended';

COMMENT ON VIEW bst_training_progress IS
    'The bst_train calls running in any session, refreshed every batch; another role''s show NULL figures unless you have its privileges or pg_read_all_stats';
COMMENT ON COLUMN bst_training_progress.pid IS 'Process id of the training backend';
COMMENT ON COLUMN bst_training_progress.role IS 'Role running the training';
COMMENT ON COLUMN bst_training_progress.model IS 'Name of the model being trained';
COMMENT ON COLUMN bst_training_progress.epoch IS 'Current epoch, from 1';
COMMENT ON COLUMN bst_training_progress.epochs IS 'Epochs asked for (early stopping may stop sooner)';
COMMENT ON COLUMN bst_training_progress.batch IS 'Batches done in the current epoch';
COMMENT ON COLUMN bst_training_progress.batches IS 'Batches per epoch';
COMMENT ON COLUMN bst_training_progress.running_loss IS 'Mean training loss of the current epoch so far; NULL before its first batch';
COMMENT ON COLUMN bst_training_progress.windows IS 'Training windows';
COMMENT ON COLUMN bst_training_progress.elapsed IS 'Time since the training started';

COMMENT ON TABLE bst_deployments IS
    'Every deployment of a model version, newest last: the latest says which version serves (without one, the latest version)';
COMMENT ON COLUMN bst_deployments.id IS 'Deployment id, increasing';
COMMENT ON COLUMN bst_deployments.model IS 'Name of the model';
COMMENT ON COLUMN bst_deployments.version IS 'Version deployed';
COMMENT ON COLUMN bst_deployments.strategy IS 'How the version was chosen: version, best, latest or rollback';
COMMENT ON COLUMN bst_deployments.previous IS 'The deployment this one replaced (its id), which a rollback goes back to';
COMMENT ON COLUMN bst_deployments.deployed_at IS 'When the version was deployed';
COMMENT ON COLUMN bst_deployments.deployed_by IS 'Role that deployed it';
COMMENT ON SEQUENCE bst_deployments_id_seq IS 'Generates bst_deployments.id';

COMMENT ON VIEW bst_models_list IS
    'Every version you can see, with whether it serves, its training rows and epochs, validation MAE and size';
COMMENT ON COLUMN bst_models_list.name IS 'Name of the model';
COMMENT ON COLUMN bst_models_list.version IS 'Version of the model';
COMMENT ON COLUMN bst_models_list.deployed IS 'Whether this version serves bst_predict and bst_evaluate';
COMMENT ON COLUMN bst_models_list.created_at IS 'When the version was stored';
COMMENT ON COLUMN bst_models_list.owner IS 'Role the model belongs to';
COMMENT ON COLUMN bst_models_list.rows IS 'Windows trained on (validation windows excluded)';
COMMENT ON COLUMN bst_models_list.epochs IS 'Epochs run';
COMMENT ON COLUMN bst_models_list.val_mae IS 'Validation mean absolute error of the kept epoch; NULL without validation';
COMMENT ON COLUMN bst_models_list.bytes IS 'Size of the weights in bytes';
COMMENT ON COLUMN bst_models_list.options IS 'The options and shapes the version was trained with (bst_models.config)';

COMMENT ON TABLE bst_model_grants IS
    'Who may use a model besides its owner''s roles, for every version; written by bst_grant and bst_revoke';
COMMENT ON COLUMN bst_model_grants.model IS 'Name of the model';
COMMENT ON COLUMN bst_model_grants.grantee IS 'Role the model is granted to; NULL: PUBLIC';

-- bst_train, bst_predict and bst_evaluate on small generated data.
-- Floating-point results depend on the CPU's OpenBLAS kernels, so only
-- properties of them are printed.
SET client_min_messages = warning;

-- An error as "SQLSTATE: message DETAIL: detail HINT: hint", so the
-- expected output shows the SQLSTATE of every error.
CREATE FUNCTION pg_temp.error_of(query text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    detail text;
    hint text;
BEGIN
    EXECUTE query;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
    RETURN SQLSTATE || ': ' || SQLERRM || coalesce(nullif(' DETAIL: ' || detail, ' DETAIL: '), '')
           || coalesce(nullif(' HINT: ' || hint, ' HINT: '), '');
END $$;

-- 60 movies, 40 users, 30 ratings each; a rating is a per-movie quality
-- plus a per-user bias, so there is something to learn.
CREATE TABLE movies (movie_id int PRIMARY KEY, title text, genres text[]);
INSERT INTO movies SELECT m, 'movie ' || m, '{}' FROM generate_series(1, 60) m;
CREATE TABLE ratings (user_id int, movie_id int, rating real, unix_timestamp bigint);
INSERT INTO ratings
SELECT u, 1 + (u * 7 + k * 13) % 60,
       greatest(1, least(5, 1 + ((1 + (u * 7 + k * 13) % 60) % 5) + (u % 3) - 1)),
       1000 * u + k
FROM generate_series(1, 40) u, generate_series(1, 30) k;
CREATE INDEX ON ratings (user_id, unix_timestamp, movie_id) INCLUDE (rating);
CREATE TABLE windows AS
  SELECT *, bst_holdout(user_id, movie_ids[cardinality(movie_ids)]) AS held_out
  FROM bst_sequences('ratings');

-- The Keras example's recipe, the 1.0 defaults.
SELECT model, version, training_rows, epochs, best_epoch, val_mae
FROM bst_train('tiny', 'SELECT movie_ids, ratings FROM windows WHERE NOT held_out',
               epochs => 3, batch_size => 32, hidden => '{16,8}', preset => 'keras_example');

SELECT name, version, config->>'seq_len' AS seq_len, config->>'n_movies' AS n_movies,
       config->>'embed_dim' AS embed_dim, config->'hidden' AS hidden, config->>'optimizer' AS optimizer,
       jsonb_array_length(metrics->'epochs') AS epochs_logged, history,
       (metrics->'epochs'->-1->>'loss')::float8 < (metrics->'epochs'->0->>'loss')::float8 AS loss_decreased
FROM bst_models;

-- What version 1 predicts, to tell later which version answers.
SELECT encode(float4send(bst_predict('tiny', '{1,2,3,4}', '{5,4,3}')), 'hex') AS v1_prediction \gset
-- A second training is a new version; the first stays.
SELECT version FROM bst_train('tiny', 'SELECT movie_ids, ratings FROM windows WHERE NOT held_out',
                              epochs => 1, hidden => '{16,8}', optimizer => 'adam', learning_rate => 0.001,
                              preset => 'keras_example');
SELECT name, version, config->>'optimizer' AS optimizer FROM bst_models ORDER BY version;

-- Predictions depend on the window.
SELECT count(*) AS windows, count(DISTINCT p) > count(*) / 2 AS mostly_distinct
FROM (SELECT bst_predict('tiny', movie_ids, ratings) AS p FROM windows WHERE held_out) t;
-- The target's rating is optional.
SELECT bst_predict('tiny', '{1,2,3,4}', '{5,4,3,2}') = bst_predict('tiny', '{1,2,3,4}', '{5,4,3}') AS target_rating_ignored;
-- A movie outside the vocabulary uses the out-of-vocabulary embedding.
SELECT bst_predict('tiny', '{1,2,3,99999}', '{5,4,3}') BETWEEN -5 AND 10 AS unknown_movie_ok;
-- From a user's history (bst.model, else the most recent model).
SELECT bst_predict(1, 10) BETWEEN -5 AND 10 AS user_prediction_ok;
SET bst.model = 'tiny';
SELECT bst_predict(1, 10) = bst_predict('tiny', (SELECT array_agg(movie_id ORDER BY unix_timestamp) || 10
                                               FROM (SELECT * FROM ratings WHERE user_id = 1
                                                     ORDER BY unix_timestamp DESC LIMIT 3) h),
                                        (SELECT array_agg(rating ORDER BY unix_timestamp)
                                         FROM (SELECT * FROM ratings WHERE user_id = 1
                                               ORDER BY unix_timestamp DESC LIMIT 3) h)) AS same_as_explicit_window;
-- A user without enough history gets the mean training rating.
SELECT bst_predict(424242, 10) = (SELECT (metrics->>'train_mean_rating')::real FROM bst_models
                                  WHERE name = 'tiny' ORDER BY version DESC LIMIT 1) AS fallback_is_mean;
SELECT bst_predict(NULL, 10) IS NULL AS strict;
RESET bst.model;

-- Evaluation over the held-out windows.
SELECT n = (SELECT count(*) FROM windows WHERE held_out) AS all_rows,
       abs(mae - avg_abs) < 1e-5 AS mae_of_predictions, abs(rmse - root_mean_square) < 1e-5 AS rmse_of_predictions
FROM bst_evaluate('tiny', 'SELECT movie_ids, ratings FROM windows WHERE held_out'),
     (SELECT avg(abs(e)) AS avg_abs, sqrt(avg(e * e)) AS root_mean_square
      FROM (SELECT bst_predict('tiny', movie_ids, ratings) - ratings[cardinality(ratings)] AS e
            FROM windows WHERE held_out) p) errors;

-- On one thread training is deterministic: the same seed, the same
-- weights, bit for bit; the setting is bounded.
SET bst.threads = 1;
SELECT version FROM bst_train('one_thread', 'SELECT movie_ids, ratings FROM windows', epochs => 1, hidden => '{8}',
                              preset => 'keras_example');
SELECT version FROM bst_train('one_thread', 'SELECT movie_ids, ratings FROM windows', epochs => 1, hidden => '{8}',
                              preset => 'keras_example');
SELECT count(DISTINCT weights) AS distinct_weights FROM bst_models WHERE name = 'one_thread';
RESET bst.threads;
SET bst.threads = -1;
SET bst.threads = 1000;

-- bst_training_log: one row per epoch of each version, the kept epoch's
-- validation error as bst_train returned it, the cosine schedule's falling
-- learning rate; deleting the version deletes its log.
CREATE TEMP TABLE logged AS
SELECT * FROM bst_train('logged', 'SELECT movie_ids, ratings FROM windows', epochs => 4, hidden => '{8}',
                        early_stopping => false, validation_fraction => 0.2, history => NULL);
SELECT count(*) AS epochs_logged, (SELECT epochs FROM logged) AS epochs_run,
       (SELECT val_mae FROM bst_training_log WHERE model = 'logged' AND epoch = (SELECT best_epoch FROM logged))
           = (SELECT val_mae FROM logged) AS kept_epoch_val_mae,
       bool_and(learning_rate < previous_rate) AS learning_rate_falls,
       bool_and(at > previous_at) AS timestamps_advance
FROM (SELECT *, lag(learning_rate) OVER w AS previous_rate, lag(at) OVER w AS previous_at
      FROM bst_training_log WHERE model = 'logged' WINDOW w AS (ORDER BY epoch)) l;
DELETE FROM bst_models WHERE name = 'logged';
SELECT count(*) AS log_after_delete FROM bst_training_log WHERE model = 'logged';

-- Vocabulary from the training windows; no history relation.
SELECT version FROM bst_train('nohist', 'SELECT movie_ids, ratings FROM windows', epochs => 1,
                              hidden => '{8}', vocabulary => NULL, history => NULL, embed_dim => 3,
                              preset => 'keras_example');
SELECT config->>'n_movies' AS n_movies, config->>'embed_dim' AS embed_dim, history FROM bst_models WHERE name = 'nohist';
SET bst.model = 'nohist';
SELECT pg_temp.error_of($q$SELECT bst_predict(1, 10)$q$);
RESET bst.model;

-- Bad arguments: each a clear error.
SELECT pg_temp.error_of($q$SELECT * FROM bst_train(NULL, 'SELECT movie_ids, ratings FROM windows')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('', 'SELECT movie_ids, ratings FROM windows')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', NULL)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows WHERE false')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids FROM windows')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings::float8[] AS ratings FROM windows')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT ''{1}''::int[] AS movie_ids, ''{1}''::real[] AS ratings')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ''{1,NaN,3,4}''::real[] AS ratings FROM windows')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings[1:3] || NULL::real AS ratings FROM windows')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT NULL::int[] AS movie_ids, ratings FROM windows')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'not sql')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'DELETE FROM windows RETURNING movie_ids, ratings')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings INTO TEMP t FROM windows')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows FOR UPDATE')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'WITH d AS (DELETE FROM windows WHERE false RETURNING *) SELECT movie_ids, ratings FROM d')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_evaluate('tiny', 'SELECT movie_ids, ratings FROM windows FOR SHARE')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings[1:3] || 1e30::real AS ratings FROM windows')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows; SELECT 1')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', epochs => 0)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', batch_size => 0)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', batch_size => 10000000)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', learning_rate => -1)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', learning_rate => 'NaN')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', heads => 0)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', hidden => '{0}')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', hidden => '{16,NULL}')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', hidden => '{1,2,3,4,5,6,7,8,9}')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', dropout => 1)$q$);
-- Errors of 1.1's options and inputs.
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', preset => NULL)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', preset => 'best')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', seed => NULL)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', features => '{user_id,zip_code}')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', features => '{genres,NULL}')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', validation_fraction => 0)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', validation_fraction => 0.6)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', validation_fraction => 'NaN')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', patience => 0)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', patience => 3, early_stopping => false)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', seq_len => 1)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', seq_len => 100000)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', weight_decay => 0.1, optimizer => 'adam')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', weight_decay => -1)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', lr_schedule => 'step')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', rating_mode => 'divide')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', factors => -1)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', seq_len => 1024, batch_size => 256)$q$);
-- Training memory is estimated before anything is allocated: one window of
-- 1024 movies in batches of 16 would take over a gigabyte.
SET maintenance_work_mem = '512MB';
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT array_agg(m) AS movie_ids, array_agg(4::real) AS ratings FROM generate_series(1, 1024) m',
                                                   batch_size => 16, early_stopping => false, vocabulary => NULL)$q$);
SET maintenance_work_mem = '2GB';
SET bst.train_memory = '256MB';   -- the setting, when set, is the limit
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT array_agg(m) AS movie_ids, array_agg(4::real) AS ratings FROM generate_series(1, 1024) m',
                                                   batch_size => 16, early_stopping => false, vocabulary => NULL)$q$);
SET bst.train_memory = '1MB';   -- and it bounds the smallest training too
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', hidden => '{8}')$q$);
-- The windows count too, as the training holds them: 40 bytes a window of 4
-- movies (4 movies, 3 ratings, its history length, user and target).  Under
-- 1 MB, a tiny model (34 kB with its training, and 4 bytes a window for their
-- order) trains on 20,000 windows in memory.  25,000 fit alone (1,000,000
-- bytes) but not beside the model and its training, and 30,000 not even
-- alone (26,215 take 1,048,600 bytes): they are kept in temporary files, and
-- the training holds a bucket of them at a time (metrics' bucket_windows),
-- the largest the limit leaves room for.  Each trains on all its windows.
CREATE FUNCTION pg_temp.tiny_training(windows int) RETURNS text LANGUAGE sql AS $f$
SELECT pg_temp.error_of(format($q$SELECT * FROM bst_train('tiny_data',
    'SELECT ARRAY[1 + i %% 60, 1 + i %% 7, 3, 4] AS movie_ids, ''{4,3,5,4}''::real[] AS ratings FROM generate_series(1, %s) i',
    hidden => '{1}', embed_dim => 1, heads => 1, batch_size => 32, epochs => 1, early_stopping => false,
    vocabulary => NULL, history => NULL, preset => 'keras_example')$q$, windows))
$f$;
SELECT pg_temp.tiny_training(20000);
SELECT pg_temp.tiny_training(25000);
SELECT pg_temp.tiny_training(30000);
SELECT version, metrics->>'training_rows' AS training_rows, metrics->>'bucket_windows' AS bucket_windows,
       config->>'n_movies' AS n_movies
FROM bst_models WHERE name = 'tiny_data' ORDER BY version;
DELETE FROM bst_models WHERE name = 'tiny_data';
RESET bst.train_memory;
RESET maintenance_work_mem;
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT ''{1,2}''::int[] AS movie_ids, ''{4,5}''::real[] AS ratings')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', users => 'no_such_table')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', features => '{user_id}')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT user_id, movie_ids, ratings FROM windows', features => '{sex}', users => NULL)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT user_id, movie_ids, ratings FROM windows', features => '{sex}', users => 'ratings')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT user_id::int8 AS user_id, movie_ids, ratings FROM windows')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT NULL::int AS user_id, movie_ids, ratings FROM windows')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', optimizer => 'sgd')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', embed_dim => 0)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', embed_dim => 100000)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', vocabulary => 'SELECT movie_id FROM movies WHERE false')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', vocabulary => 'SELECT title FROM movies')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', vocabulary => 'SELECT movie_id FROM movies; SELECT 1')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', history => 'movies')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', history => 'no_such_table')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT movie_ids, ratings FROM windows', hidden => '{8}', learning_rate => 1e30)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', '   ')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('x', 'SELECT array_fill(1, ARRAY[300]) AS movie_ids, array_fill(1::real, ARRAY[300]) AS ratings',
                        batch_size => 65536)$q$);
SELECT count(*) AS failed_trainings_stored_nothing FROM bst_models WHERE name = 'x';

-- Windows of different lengths: padded, and the model remembers the
-- shortest history it saw.
SELECT training_rows FROM bst_train('mixed', 'SELECT movie_ids[1:2 + user_id % 2] AS movie_ids,
                                                       ratings[1:2 + user_id % 2] AS ratings FROM windows',
                                    epochs => 1, hidden => '{8}', preset => 'keras_example');
SELECT config->>'seq_len' AS seq_len, metrics->>'min_history' AS min_history FROM bst_models WHERE name = 'mixed';
SELECT bst_predict('mixed', '{1,2}', '{5}') BETWEEN -5 AND 10 AS short_window_ok;
SELECT pg_temp.error_of($q$SELECT bst_predict('mixed', '{1}', '{}')$q$);
-- A window longer than the model's keeps its most recent history.
SELECT bst_predict('mixed', '{9,9,9,1,2,3}', '{1,1,1,5,4}') = bst_predict('mixed', '{1,2,3}', '{5,4}') AS longer_window_truncated;

SELECT pg_temp.error_of($q$SELECT bst_predict('nope', '{1,2,3,4}', '{5,4,3}')$q$);
SELECT pg_temp.error_of($q$SELECT bst_predict('tiny', '{1,2,3}', '{5,4,3}')$q$);
SELECT pg_temp.error_of($q$SELECT bst_predict('tiny', '{1,2,3,4}', '{5,4}')$q$);
SELECT pg_temp.error_of($q$SELECT bst_predict('tiny', '{1,2,NULL,4}', '{5,4,3}')$q$);
SELECT pg_temp.error_of($q$SELECT bst_predict('tiny', '{1,2,3,4}', '{5,NaN,3}')$q$);
SELECT pg_temp.error_of($q$SELECT bst_predict('tiny', '{{1,2},{3,4}}', '{5,4,3}')$q$);
SELECT bst_predict('tiny', NULL, '{5,4,3}') IS NULL AS strict;
SELECT pg_temp.error_of($q$SELECT bst_predict('tiny', '{1,2,3,4}', '{3e38,3e38,3e38}')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_evaluate('nope', 'SELECT movie_ids, ratings FROM windows')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_evaluate(NULL, 'SELECT movie_ids, ratings FROM windows')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_evaluate('tiny', 'SELECT movie_ids, ratings FROM windows WHERE false')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_evaluate('tiny', 'SELECT movie_ids[1:3] AS movie_ids, ratings[1:3] AS ratings FROM windows')$q$);

-- Damaged weights are refused, never read past their end.
UPDATE bst_models SET weights = substring(weights FROM 1 FOR 200) WHERE name = 'tiny' AND version = 2;
SELECT pg_temp.error_of($q$SELECT bst_predict('tiny', '{1,2,3,4}', '{5,4,3}')$q$);
UPDATE bst_models SET weights = '\x0000'::bytea WHERE name = 'tiny' AND version = 2;
SELECT pg_temp.error_of($q$SELECT bst_predict('tiny', '{1,2,3,4}', '{5,4,3}')$q$);
UPDATE bst_models SET weights = overlay(w.weights PLACING '\xff'::bytea FROM 500 FOR 1)
FROM (SELECT weights FROM bst_models WHERE name = 'tiny' AND version = 1) w
WHERE name = 'tiny' AND version = 2;
SELECT pg_temp.error_of($q$SELECT bst_predict('tiny', '{1,2,3,4}', '{5,4,3}')$q$);
UPDATE bst_models SET weights = overlay(weights PLACING 'XXXX'::bytea FROM 1 FOR 4) WHERE name = 'tiny' AND version = 2;
SELECT pg_temp.error_of($q$SELECT bst_predict('tiny', '{1,2,3,4}', '{5,4,3}')$q$);
ALTER TABLE bst_models ALTER weights DROP NOT NULL;
UPDATE bst_models SET weights = NULL WHERE name = 'tiny' AND version = 2;
SELECT pg_temp.error_of($q$SELECT bst_predict('tiny', '{1,2,3,4}', '{5,4,3}')$q$);
SELECT pg_temp.error_of($q$ALTER TABLE bst_models ALTER weights SET NOT NULL$q$);  -- fails: the NULL row is still there
-- metrics are for people: prediction reads the mean rating and the shortest
-- history from the weights, so editing them changes nothing.
UPDATE bst_models SET weights = (SELECT weights FROM bst_models WHERE name = 'tiny' AND version = 1),
                      metrics = jsonb_set(metrics, '{train_mean_rating}', '"three"') || '{"min_history": -1}'
WHERE name = 'tiny' AND version = 2;
SET bst.model = 'tiny';
SELECT encode(float4send(bst_predict('tiny', '{1,2,3,4}', '{5,4,3}')), 'hex') = :'v1_prediction'
       AS edited_metrics_ignored,
       bst_predict(424242, 10) = (SELECT (metrics->>'train_mean_rating')::real
                                  FROM bst_models WHERE name = 'tiny' AND version = 1)
       AS fallback_from_weights;
RESET bst.model;
-- The history relation is a name, never SQL.
UPDATE bst_models SET weights = (SELECT weights FROM bst_models WHERE name = 'tiny' AND version = 1),
                      history = 'public.ratings WHERE false UNION ALL SELECT 1, 2 --'
WHERE name = 'tiny' AND version = 2;
SET bst.model = 'tiny';
SELECT pg_temp.error_of($q$SELECT bst_predict(1, 10)$q$);
RESET bst.model;
-- Deleting the broken version makes the previous one current again.
DELETE FROM bst_models WHERE name = 'tiny' AND version = 2;
SELECT encode(float4send(bst_predict('tiny', '{1,2,3,4}', '{5,4,3}')), 'hex') = :'v1_prediction'
       AS previous_version_used;

-- No model at all.
DELETE FROM bst_models;
SELECT pg_temp.error_of($q$SELECT bst_predict(1, 10)$q$);

-- 1.1: the default preset, with user features, genres and bias terms.
CREATE TABLE users (user_id int PRIMARY KEY, sex text, age_group int, occupation int, zip_code text);
INSERT INTO users SELECT u, CASE WHEN u % 2 = 0 THEN 'F' ELSE 'M' END, 18 + 7 * (u % 4), u % 5, '00000'
FROM generate_series(1, 40) u;
UPDATE movies SET genres = CASE WHEN movie_id % 3 = 0 THEN '{Drama}' WHEN movie_id % 3 = 1 THEN '{Comedy,Drama}'
                                ELSE '{}' END::text[];
CREATE TABLE prefix AS SELECT * FROM bst_sequences('ratings', 6, 1, min_len => 2);
SELECT model, training_rows FROM bst_train('feat', 'SELECT user_id, movie_ids, ratings FROM prefix',
                                           epochs => 4, hidden => '{16,8}');
-- The kept epoch is the one of lowest validation MAE, and the result says so.
SELECT (metrics->>'val_mae')::float8 = (SELECT min((e->>'val_mae')::float8)
                                        FROM jsonb_array_elements(metrics->'epochs') e) AS best_epoch_kept,
       (metrics->'epochs'->((metrics->>'best_epoch')::int - 1)->>'val_mae') = metrics->>'val_mae' AS best_epoch_named
FROM bst_models WHERE name = 'feat';
SELECT config->>'preset' AS preset, config->'features' AS features, config->>'bias' AS bias,
       config->'sex_values' AS sex_values, config->'genres' AS genres, config->>'seq_len' AS seq_len,
       config->>'n_users' AS n_users, metrics->>'min_history' AS min_history,
       (metrics->>'training_rows')::int + (metrics->>'validation_rows')::int AS windows,
       jsonb_array_length(metrics->'epochs') = (metrics->>'epochs_run')::int AS every_epoch_logged
FROM bst_models WHERE name = 'feat';
-- The same history, through the user's ratings or as an explicit window.
SET bst.model = 'feat';
SELECT bst_predict(7, 12) = bst_predict('feat', 7,
         (SELECT array_agg(movie_id ORDER BY unix_timestamp) || 12
          FROM (SELECT * FROM ratings WHERE user_id = 7 ORDER BY unix_timestamp DESC LIMIT 5) h),
         (SELECT array_agg(rating ORDER BY unix_timestamp)
          FROM (SELECT * FROM ratings WHERE user_id = 7 ORDER BY unix_timestamp DESC LIMIT 5) h))
       AS user_history_equals_window;
RESET bst.model;
-- The user matters: the same window for two users differs; an unknown user is allowed.
SELECT bst_predict('feat', 7, '{1,2,3}', '{5,4}') <> bst_predict('feat', 8, '{1,2,3}', '{5,4}') AS user_matters,
       bst_predict('feat', 424242, '{1,2,3}', '{5,4}') = bst_predict('feat', '{1,2,3}', '{5,4}') AS unknown_user_row;
-- bst_evaluate scores each window as bst_predict does, for its user.
SELECT n, abs(mae - (SELECT avg(abs(bst_predict('feat', user_id, movie_ids, ratings)
                                    - ratings[cardinality(ratings)])) FROM prefix)) < 1e-5 AS same_as_predict
FROM bst_evaluate('feat', 'SELECT user_id, movie_ids, ratings FROM prefix');
-- Without a user_id column the user inputs are left out (the first NOTICE
-- says what is used); the global and movie biases stay.
SELECT training_rows FROM bst_train('nouser', 'SELECT movie_ids, ratings FROM prefix', epochs => 1, hidden => '{8}');
SELECT config->'features' AS features, config->>'bias' AS bias FROM bst_models WHERE name = 'nouser';
-- Bad user and movie data.
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('y', 'SELECT user_id + 1000 AS user_id, movie_ids, ratings FROM prefix')$q$);
UPDATE movies SET genres = NULL WHERE movie_id = 5;
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('y', 'SELECT user_id, movie_ids, ratings FROM prefix')$q$);
-- ... unless genres are not asked for.
SELECT model, version FROM bst_train('no_genres', 'SELECT user_id, movie_ids, ratings FROM prefix',
                                     features => '{user_id}', epochs => 1, hidden => '{8}');
UPDATE movies SET genres = '{}' WHERE movie_id = 5;
ALTER TABLE users DROP COLUMN occupation;
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('y', 'SELECT user_id, movie_ids, ratings FROM prefix', features => '{occupation}')$q$);
SELECT count(*) AS failed_trainings_stored_nothing FROM bst_models WHERE name = 'y';

-- Long histories: a model of 50 positions, on windows of up to 30 ratings.
SELECT training_rows FROM bst_train('long', 'SELECT user_id, movie_ids, ratings
                                             FROM bst_sequences(''ratings'', 50, 1, min_len => 2)',
                                    seq_len => 50, epochs => 1, hidden => '{8}');
SELECT config->>'seq_len' AS seq_len, metrics->>'min_history' AS min_history FROM bst_models WHERE name = 'long';
SET bst.model = 'long';
SELECT bst_predict(3, 12) = bst_predict('long', 3,
         (SELECT array_agg(movie_id ORDER BY unix_timestamp) || 12 FROM ratings WHERE user_id = 3),
         (SELECT array_agg(rating ORDER BY unix_timestamp) FROM ratings WHERE user_id = 3)) AS whole_history_used;
RESET bst.model;

-- Ratings added along a learned vector instead of scaling the movie's; an
-- empty users relation is no source of features (ml-latest-small has none).
TRUNCATE users;
SELECT model FROM bst_train('added', 'SELECT user_id, movie_ids, ratings FROM prefix', epochs => 1,
                            hidden => '{8}', rating_mode => 'add');
SELECT config->>'rating_mode' AS rating_mode, config->'features' AS features, config->'rating_range' AS rating_range
FROM bst_models WHERE name = 'added';
SELECT pg_temp.error_of($q$SELECT * FROM bst_train('y', 'SELECT user_id, movie_ids, ratings FROM prefix', features => '{sex}')$q$);

-- The SQL the extension runs inside uses pg_catalog's functions and
-- operators whatever the caller's search_path: another role's look-alikes
-- earlier in it never run (each raises if called).
CREATE SCHEMA lookalike;
CREATE FUNCTION lookalike.hashtext(text) RETURNS int LANGUAGE plpgsql
AS $$BEGIN RAISE EXCEPTION 'lookalike.hashtext ran'; END$$;
CREATE FUNCTION lookalike.text_eq(text, text) RETURNS boolean LANGUAGE plpgsql
AS $$BEGIN RAISE EXCEPTION 'lookalike.= ran'; END$$;
CREATE OPERATOR lookalike.= (LEFTARG = text, RIGHTARG = text, FUNCTION = lookalike.text_eq);
CREATE FUNCTION lookalike.generate_series(int, int) RETURNS SETOF int LANGUAGE plpgsql
AS $$BEGIN RAISE EXCEPTION 'lookalike.generate_series ran'; END$$;
SET search_path = lookalike, pg_catalog, public;
SELECT count(*) AS windows FROM bst_sequences('ratings', 4, 1, min_len => 2);
SELECT version FROM bst_train('lookalike', 'SELECT user_id, movie_ids, ratings FROM prefix', epochs => 1,
                              hidden => '{8}');
SELECT bst_predict('lookalike', '{1,2,3}', '{5,4}') IS NOT NULL AS predicted;
RESET search_path;
DROP SCHEMA lookalike CASCADE;

-- Versions of a model: which one serves (bst_deploy), dropping versions
-- and models (bst_drop), and the list (bst_models_list).
SET client_min_messages = warning;
CREATE FUNCTION pg_temp.error_of(query text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    hint text;
BEGIN
    EXECUTE query;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
    RETURN SQLSTATE || ': ' || SQLERRM || coalesce(nullif(' HINT: ' || hint, ' HINT: '), '');
END $$;

CREATE TABLE lc_ratings (user_id int, movie_id int, rating real, unix_timestamp bigint);
INSERT INTO lc_ratings
SELECT u, 1 + (u * 7 + k * 11) % 30, 1 + (1 + (u * 7 + k * 11) % 30) % 5, 100 * u + k
FROM generate_series(1, 30) u, generate_series(1, 12) k;
CREATE TABLE lc_windows AS SELECT * FROM bst_sequences('lc_ratings');

-- Three versions: 1 trained, 2 and 3 barely (a tiny learning rate), so
-- that the best is version 1 on any CPU.
SELECT version FROM bst_train('lc', 'SELECT movie_ids, ratings FROM lc_windows', epochs => 4, hidden => '{8}',
                              early_stopping => false, validation_fraction => 0.2, seed => 1,
                              history => NULL, vocabulary => NULL, users => NULL, movies => NULL);
SELECT version FROM bst_train('lc', 'SELECT movie_ids, ratings FROM lc_windows', epochs => 1, hidden => '{8}',
                              learning_rate => 1e-9, early_stopping => false, validation_fraction => 0.2,
                              seed => 2, history => NULL, vocabulary => NULL, users => NULL, movies => NULL);
SELECT version FROM bst_train('lc', 'SELECT movie_ids, ratings FROM lc_windows', epochs => 1, hidden => '{8}',
                              learning_rate => 1e-9, early_stopping => false, validation_fraction => 0.2, seed => 3,
                              history => NULL, vocabulary => NULL, users => NULL, movies => NULL);
-- What each version predicts for one window, to tell which one serves.
CREATE TEMP TABLE lc_pred AS
SELECT version, encode(float4send(bst_predict('lc', '{1,2,3,4}', '{5,4,3}')), 'hex') AS p
FROM (VALUES (3)) v(version);
CREATE FUNCTION pg_temp.serving() RETURNS int LANGUAGE sql AS $$
    SELECT version FROM bst_models_list WHERE name = 'lc' AND deployed
$$;

-- Without a deployment the latest serves.
SELECT name, version, deployed, rows, epochs, val_mae IS NOT NULL AS has_val_mae, bytes > 1000 AS has_weights
FROM bst_models_list WHERE name = 'lc' ORDER BY version;

-- By version: version 2 serves from the next statement on.
SELECT bst_deploy('lc', 2);
SELECT pg_temp.serving() AS serving,
       encode(float4send(bst_predict('lc', '{1,2,3,4}', '{5,4,3}')), 'hex') <> (SELECT p FROM lc_pred) AS not_version_3;
-- best: the lowest validation MAE.
SELECT bst_deploy('lc', strategy => 'best') = (SELECT version FROM bst_models_list WHERE name = 'lc'
                                               ORDER BY val_mae LIMIT 1) AS best_is_lowest_val_mae;
SELECT pg_temp.serving() AS serving;
-- latest, then rollback twice: back through the deployments.
SELECT bst_deploy('lc', strategy => 'latest');
SELECT encode(float4send(bst_predict('lc', '{1,2,3,4}', '{5,4,3}')), 'hex') = (SELECT p FROM lc_pred) AS version_3_predicts;
SELECT bst_deploy('lc', strategy => 'rollback') AS rolled_back_to;
SELECT bst_deploy('lc', strategy => 'rollback') AS rolled_back_to;
SELECT pg_temp.error_of($q$SELECT bst_deploy('lc', strategy => 'rollback')$q$);
SELECT model, version, strategy FROM bst_deployments ORDER BY id;
-- A newer training does not change what serves.
SELECT version FROM bst_train('lc', 'SELECT movie_ids, ratings FROM lc_windows', epochs => 1, hidden => '{8}',
                              seed => 4, history => NULL, vocabulary => NULL, users => NULL, movies => NULL);
SELECT pg_temp.serving() AS still_serving;

-- Errors.
SELECT pg_temp.error_of($q$SELECT bst_deploy('nope')$q$);
SELECT pg_temp.error_of($q$SELECT bst_deploy('lc', 99)$q$);
SELECT pg_temp.error_of($q$SELECT bst_deploy('lc', strategy => 'random')$q$);
SELECT pg_temp.error_of($q$SELECT bst_deploy('lc', strategy => NULL)$q$);
SELECT version FROM bst_train('lc_noval', 'SELECT movie_ids, ratings FROM lc_windows', epochs => 1, hidden => '{8}',
                              early_stopping => false, history => NULL, vocabulary => NULL, users => NULL, movies => NULL);
SELECT pg_temp.error_of($q$SELECT bst_deploy('lc_noval')$q$);

-- Dropping: not the deployed version; another one, with its log; a
-- version that is gone; the whole model, with its deployments and grants.
SELECT pg_temp.error_of($q$SELECT bst_drop('lc', 2)$q$);
SELECT bst_drop('lc', 1);
SELECT count(*) AS log_rows_of_version_1 FROM bst_training_log WHERE model = 'lc' AND version = 1;
SELECT pg_temp.error_of($q$SELECT bst_drop('lc', 1)$q$);
SELECT version FROM bst_models WHERE name = 'lc' ORDER BY version;
SELECT bst_grant('lc', 'public');
SELECT bst_drop('lc') AS versions_dropped;
SELECT (SELECT count(*) FROM bst_models WHERE name = 'lc') AS versions,
       (SELECT count(*) FROM bst_deployments WHERE model = 'lc') AS deployments,
       (SELECT count(*) FROM bst_model_grants WHERE model = 'lc') AS grants,
       (SELECT count(*) FROM bst_training_log WHERE model = 'lc') AS log_rows;
SELECT pg_temp.error_of($q$SELECT bst_drop('lc')$q$);

DROP TABLE lc_ratings, lc_windows;
SELECT bst_drop('lc_noval');

-- bst_train(..., warm_start => version): continuing a stored version's
-- weights and optimizer state, on the same data and on new data with new
-- movies and users, and every way it is refused.
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

-- 30 users rate 12 of movies 1..30; users and movies with every input.
CREATE TABLE ws_ratings (user_id int, movie_id int, rating real, unix_timestamp bigint);
INSERT INTO ws_ratings
SELECT u, 1 + (u * 7 + k * 11) % 30, 1 + (1 + (u * 7 + k * 11) % 30) % 5, 100 * u + k
FROM generate_series(1, 30) u, generate_series(1, 12) k;
CREATE TABLE ws_windows AS SELECT * FROM bst_sequences('ws_ratings');
CREATE TABLE ws_users (user_id int PRIMARY KEY, sex text, age_group int, occupation int);
INSERT INTO ws_users
SELECT u, CASE WHEN u % 2 = 0 THEN 'F' ELSE 'M' END, 18 + 7 * (u % 3), u % 4 FROM generate_series(1, 40) u;
CREATE TABLE ws_movies (movie_id int PRIMARY KEY, genres text[]);
INSERT INTO ws_movies
SELECT m, CASE m % 3 WHEN 0 THEN '{Drama}' WHEN 1 THEN '{Comedy,Drama}' ELSE '{Action}' END::text[]
FROM generate_series(1, 40) m;

-- Version 1: two epochs from scratch, every input, a validation split
-- without early stopping, a constant learning rate (one that 6 digits would
-- round: the config keeps every bit of it for the warm start).
CREATE FUNCTION pg_temp.train(epochs int, warm_start int DEFAULT NULL, query text DEFAULT 'ws_windows')
RETURNS int LANGUAGE sql AS $$
    SELECT version FROM bst_train('ws', 'SELECT user_id, movie_ids, ratings FROM ' || query,
                                  epochs => epochs, warm_start => warm_start, batch_size => 16,
                                  learning_rate => 0.0123456789, hidden => '{8}', lr_schedule => 'constant',
                                  early_stopping => false, validation_fraction => 0.2, seed => 1,
                                  history => NULL, vocabulary => NULL, users => 'ws_users',
                                  movies => 'ws_movies')
$$;
SELECT pg_temp.train(2) AS version;
SELECT config->'features' AS features, config->'warm_start' AS warm_start,
       octet_length(optimizer_state) > octet_length(weights) AS adamw_state_outweighs_weights
FROM bst_models WHERE name = 'ws' AND version = 1;

-- Version 2 continues version 1 on the same data, the options left out
-- taken from version 1 (the seed is the call's, as always: version 1's
-- continues its shuffle and dropout streams): its first epoch starts where
-- version 1's last ended.
SELECT version, epochs, training_rows FROM bst_train('ws', 'SELECT user_id, movie_ids, ratings FROM ws_windows',
                                                     epochs => 2, warm_start => 1, seed => 1, history => NULL,
                                                     vocabulary => NULL, users => 'ws_users', movies => 'ws_movies');
SELECT (SELECT train_loss FROM bst_training_log WHERE model = 'ws' AND version = 2 AND epoch = 1) <
       (SELECT train_loss FROM bst_training_log WHERE model = 'ws' AND version = 1 AND epoch = 1)
       AS continued_below_the_first_epoch;
SELECT v2.config->'warm_start' AS warm_start, v2.config->'bias_init' AS bias_init,
       v2.config - 'warm_start' - 'bias_init' = v1.config - 'bias_init' AS same_options,
       v2.metrics->'validation_rows' = v1.metrics->'validation_rows' AS same_split
FROM bst_models v1, bst_models v2
WHERE v1.name = 'ws' AND v1.version = 1 AND v2.name = 'ws' AND v2.version = 2;

-- Two epochs, then two more from the stored version, are four epochs: the
-- weights and the optimizer state bit for bit.
SELECT pg_temp.train(4) AS version;
SELECT v2.weights = v3.weights AS same_weights, v2.optimizer_state = v3.optimizer_state AS same_state
FROM bst_models v2, bst_models v3
WHERE v2.name = 'ws' AND v2.version = 2 AND v3.name = 'ws' AND v3.version = 3;

-- New data: users 41..45, new (with an occupation the model never saw,
-- which it takes as unknown), and 30..40 again rate movies 25..36, six of
-- them new; movie 35 gets a genre the model never had, which it ignores.
CREATE TABLE ws_ratings_new (user_id int, movie_id int, rating real, unix_timestamp bigint);
INSERT INTO ws_ratings_new
SELECT u, 25 + (u * 5 + k * 7) % 12, 1 + (u + k) % 5, 10000 + 100 * u + k
FROM generate_series(30, 45) u, generate_series(1, 10) k;
INSERT INTO ws_users SELECT u, 'F', 25, 9 FROM generate_series(41, 45) u;
UPDATE ws_movies SET genres = '{Drama,Western}' WHERE movie_id = 35;
CREATE TABLE ws_windows_new AS SELECT * FROM bst_sequences('ws_ratings_new');
SELECT pg_temp.train(1, warm_start => 2, query => 'ws_windows_new') AS version;
SELECT version, config->'n_movies' AS movies, config->'n_users' AS users, config->'genres' AS genres,
       config->'occupation_values' AS occupations, config->'warm_start' AS warm_start
FROM bst_models WHERE name = 'ws' ORDER BY version;
-- A new movie predicts as itself, not as an unknown one, and so does a
-- new user; a known movie too.
SELECT bst_predict('ws', 33, '{25,26,27,33}', '{4,3,5}') IS DISTINCT FROM
       bst_predict('ws', 33, '{25,26,27,999}', '{4,3,5}') AS new_movie_known,
       bst_predict('ws', 43, '{25,26,27,33}', '{4,3,5}') IS DISTINCT FROM
       bst_predict('ws', 999, '{25,26,27,33}', '{4,3,5}') AS new_user_known,
       bst_predict('ws', 33, '{25,26,27,33}', '{4,3,5}') BETWEEN 1 AND 5 AS new_movie_in_range,
       bst_predict('ws', 3, '{1,2,3,4}', '{4,3,5}') BETWEEN 1 AND 5 AS old_movie_in_range;
-- Options given with their stored values are no contradiction.
SELECT version FROM bst_train('ws', 'SELECT user_id, movie_ids, ratings FROM ws_windows', epochs => 1,
                              warm_start => 4, heads => 3, hidden => '{8}', optimizer => 'adamw',
                              features => '{user_id,sex,age_group,occupation,genres}', seq_len => 4,
                              history => NULL, vocabulary => NULL, users => 'ws_users', movies => 'ws_movies');

-- Errors.
CREATE FUNCTION pg_temp.warm_error(options text, warm_start text DEFAULT '1', model text DEFAULT 'ws') RETURNS text
LANGUAGE sql AS $$
    SELECT pg_temp.error_of(format($q$SELECT bst_train(%L, 'SELECT user_id, movie_ids, ratings FROM ws_windows',
                                   epochs => 1, warm_start => %s, history => NULL, vocabulary => NULL,
                                   users => 'ws_users', movies => 'ws_movies'%s)$q$,
                                   model, warm_start, options))
$$;
-- No such version, or model.
SELECT pg_temp.warm_error('', '99');
SELECT pg_temp.warm_error('', '1', 'ws_nope');
-- The architecture and the optimizer are the stored version's.
SELECT pg_temp.warm_error(', embed_dim => 2');
SELECT pg_temp.warm_error(', heads => 2');
SELECT pg_temp.warm_error(', hidden => ''{16,8}''');
SELECT pg_temp.warm_error(', seq_len => 6');
SELECT pg_temp.warm_error(', features => ''{user_id}''');
SELECT pg_temp.warm_error(', bias => false');
SELECT pg_temp.warm_error(', factors => 2');
SELECT pg_temp.warm_error(', rating_mode => ''add''');
SELECT pg_temp.warm_error(', optimizer => ''adagrad''');
SELECT pg_temp.warm_error(', bias_init => true');
-- Its inputs must have their sources.
SELECT pg_temp.error_of($q$SELECT bst_train('ws', 'SELECT movie_ids, ratings FROM ws_windows', epochs => 1,
                                            warm_start => 1, history => NULL, vocabulary => NULL)$q$);
SELECT pg_temp.error_of($q$SELECT bst_train('ws', 'SELECT user_id, movie_ids, ratings FROM ws_windows', epochs => 1,
                                            warm_start => 1, users => NULL, history => NULL, vocabulary => NULL)$q$);
-- A version without an optimizer state (1.0's, and any whose state was
-- dropped to save space), a state of other weights, a damaged one, and an
-- edited config.
UPDATE bst_models SET optimizer_state = NULL WHERE name = 'ws' AND version = 1;
SELECT pg_temp.warm_error('', '1');
UPDATE bst_models SET optimizer_state = (SELECT optimizer_state FROM bst_models WHERE name = 'ws' AND version = 3)
WHERE name = 'ws' AND version = 1;
SELECT pg_temp.warm_error('', '1');
UPDATE bst_models SET optimizer_state = substr(optimizer_state, 1, 200) WHERE name = 'ws' AND version = 1;
SELECT pg_temp.warm_error('', '1');
UPDATE bst_models SET config = config - 'lr_schedule' WHERE name = 'ws' AND version = 2;
SELECT pg_temp.warm_error('', '2');
UPDATE bst_models SET config = jsonb_set(config, '{genres}', '["Drama", "Comedy"]') WHERE name = 'ws' AND version = 3;
SELECT pg_temp.warm_error('', '3');
-- Prediction never reads the state: version 1, its state damaged, serves.
SELECT bst_deploy('ws', 1);
SELECT bst_predict('ws', 3, '{1,2,3,4}', '{4,3,5}') BETWEEN 1 AND 5 AS serves;
-- Nothing was stored by the failed trainings.
SELECT count(*) AS versions FROM bst_models WHERE name = 'ws';

SELECT bst_drop('ws') AS versions_dropped;
DROP TABLE ws_ratings, ws_windows, ws_users, ws_movies, ws_ratings_new, ws_windows_new;

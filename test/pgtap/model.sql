-- Properties of training and prediction on generated data.
BEGIN;
SELECT plan(21);
SET client_min_messages = warning;
DELETE FROM bst_models;  -- rolled back at the end

-- 80 movies with a hidden quality; 120 users, each with a bias; a rating is
-- quality + bias, clipped to 1..5: learnable from the windows.
CREATE TEMP TABLE movies (movie_id int PRIMARY KEY, title text, genres text[]);
INSERT INTO movies SELECT m, 'movie ' || m, '{}' FROM generate_series(1, 80) m;
CREATE TEMP TABLE ratings (user_id int, movie_id int, rating real, unix_timestamp bigint);
INSERT INTO ratings
SELECT u, m, greatest(1, least(5, 1 + m % 5 + (u % 3) - 1)), 1000 * u + k
FROM generate_series(1, 120) u, generate_series(1, 40) k,
     LATERAL (SELECT 1 + (u * 17 + k * 29) % 80 AS m) mm;
CREATE INDEX ON ratings (user_id, unix_timestamp, movie_id) INCLUDE (rating);
CREATE TEMP TABLE windows AS
  SELECT *, bst_holdout(user_id, movie_ids[cardinality(movie_ids)]) AS held_out
  FROM bst_sequences('ratings');

-- Training learns: far better than an untrained model and than the mean.
SELECT bst_train('learned', 'SELECT movie_ids, ratings FROM windows', epochs => 10, batch_size => 32, hidden => '{32,16}',
                 history => 'pg_temp.ratings', vocabulary => 'SELECT movie_id FROM pg_temp.movies');
SELECT bst_train('untrained', 'SELECT movie_ids, ratings FROM windows', epochs => 1, hidden => '{32,16}',
                 learning_rate => 1e-9, history => 'pg_temp.ratings', vocabulary => 'SELECT movie_id FROM pg_temp.movies');
CREATE TEMP TABLE mean_mae AS
  SELECT avg(abs(ratings[4] - (SELECT avg(ratings[4]) FROM windows))) AS mae FROM windows;
SELECT cmp_ok((SELECT mae FROM bst_evaluate('learned', 'SELECT movie_ids, ratings FROM windows')),
              '<', (SELECT mae / 2 FROM mean_mae),
              'trained model has under half the MAE of predicting the mean');
SELECT cmp_ok((SELECT mae FROM bst_evaluate('learned', 'SELECT movie_ids, ratings FROM windows')),
              '<', (SELECT mae / 2 FROM bst_evaluate('untrained', 'SELECT movie_ids, ratings FROM windows')),
              'trained model has under half the MAE of an untrained one');
SELECT cmp_ok((SELECT (metrics->'epochs'->-1->>'loss')::float8 FROM bst_models WHERE name = 'learned'),
              '<', (SELECT (metrics->'epochs'->0->>'loss')::float8 / 2 FROM bst_models WHERE name = 'learned'),
              'training loss of the last epoch is under half that of the first');

-- bst_evaluate agrees with bst_predict row by row.
SELECT ok(abs((SELECT mae FROM bst_evaluate('learned', 'SELECT movie_ids, ratings FROM windows WHERE held_out'))
              - (SELECT avg(abs(bst_predict('learned', movie_ids, ratings) - ratings[4])) FROM windows WHERE held_out)) < 1e-4,
          'bst_evaluate MAE equals the mean error of bst_predict');

-- The same seed gives the same weights.
SELECT bst_train('again', 'SELECT movie_ids, ratings FROM windows', epochs => 10, batch_size => 32, hidden => '{32,16}',
                 history => 'pg_temp.ratings', vocabulary => 'SELECT movie_id FROM pg_temp.movies');
SELECT ok((SELECT weights FROM bst_models WHERE name = 'learned') = (SELECT weights FROM bst_models WHERE name = 'again'),
          'same data, options and seed give bit-identical weights');
SELECT bst_train('other_seed', 'SELECT movie_ids, ratings FROM windows', epochs => 1, hidden => '{32,16}', seed => 7,
                 history => 'pg_temp.ratings', vocabulary => 'SELECT movie_id FROM pg_temp.movies');
SELECT ok((SELECT weights FROM bst_models WHERE name = 'learned') <> (SELECT weights FROM bst_models WHERE name = 'other_seed'),
          'another seed gives other weights');

-- bst_predict(user, movie) reads the user's latest ratings.
SET bst.model = 'learned';
CREATE TEMP TABLE before AS SELECT bst_predict(5, 10) AS p;
INSERT INTO ratings VALUES (5, 3, 1, 999999), (5, 4, 1, 999998), (5, 6, 1, 999997);
SELECT isnt(bst_predict(5, 10), (SELECT p FROM before), 'newer ratings change the user''s prediction');
SELECT is(bst_predict(5, 10), bst_predict('learned', '{6,4,3,10}', '{1,1,1}'),
          'the user prediction is the explicit window of the latest ratings, oldest first');

-- NULL timestamps are not history (bst_sequences refuses them too).
CREATE TEMP TABLE before_null AS SELECT bst_predict(5, 10) AS p;
INSERT INTO ratings VALUES (5, 7, 5, NULL);
SELECT is(bst_predict(5, 10), (SELECT p FROM before_null), 'a rating without a timestamp is not the newest');
-- A movie rated twice at one instant: the order does not depend on insertion.
INSERT INTO ratings VALUES (5, 8, 2, 1000000), (5, 8, 4, 1000000);
CREATE TEMP TABLE tie_a AS SELECT bst_predict(5, 10) AS p;
DELETE FROM ratings WHERE user_id = 5 AND unix_timestamp = 1000000;
INSERT INTO ratings VALUES (5, 8, 4, 1000000), (5, 8, 2, 1000000);
SELECT is(bst_predict(5, 10), (SELECT p FROM tie_a), 'exact ties are ordered by rating, not by insertion');

-- The backend's cache notices a newer version.
CREATE TEMP TABLE v1 AS SELECT bst_predict('learned', '{1,2,3,4}', '{5,4,3}') AS p;
SELECT bst_train('learned', 'SELECT movie_ids, ratings FROM windows', epochs => 1, hidden => '{32,16}', seed => 11,
                 history => 'pg_temp.ratings', vocabulary => 'SELECT movie_id FROM pg_temp.movies');
SELECT isnt(bst_predict('learned', '{1,2,3,4}', '{5,4,3}'), (SELECT p FROM v1),
            'a new version is used from the next statement on');

-- ... also inside one PL/pgSQL function, whose expressions live across statements.
CREATE FUNCTION pg_temp.predict_train_predict() RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    before real;
    after real;
BEGIN
    FOR i IN 1..2 LOOP
        IF i = 2 THEN
            PERFORM bst_train('learned', 'SELECT movie_ids, ratings FROM windows', epochs => 1, hidden => '{32,16}',
                              seed => 12, history => 'pg_temp.ratings', vocabulary => 'SELECT movie_id FROM pg_temp.movies');
        END IF;
        after := bst_predict('learned', '{1,2,3,4}', '{5,4,3}');
        IF i = 1 THEN before := after; END IF;
    END LOOP;
    RETURN before <> after;
END $$;
SELECT ok(pg_temp.predict_train_predict(), 'a version trained inside a PL/pgSQL loop is used by the next iteration');
-- ... and a change of bst.model between iterations.
CREATE FUNCTION pg_temp.switch_models() RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    p real[] := '{}';
    m text;
BEGIN
    FOREACH m IN ARRAY ARRAY['learned', 'other_seed'] LOOP
        PERFORM set_config('bst.model', m, true);
        p := p || bst_predict(5, 10);
    END LOOP;
    RETURN p[1] <> p[2];
END $$;
SELECT ok(pg_temp.switch_models(), 'bst_predict(user, movie) follows bst.model changes within one function');
-- ... and weights updated twice in one transaction.
CREATE TEMP TABLE twice AS SELECT bst_predict('untrained', '{1,2,3,4}', '{5,4,3}') AS p0;
UPDATE bst_models SET weights = (SELECT weights FROM bst_models WHERE name = 'again') WHERE name = 'untrained';
SELECT bst_predict('untrained', '{1,2,3,4}', '{5,4,3}');
UPDATE bst_models SET weights = (SELECT weights FROM bst_models WHERE name = 'other_seed') WHERE name = 'untrained';
SELECT is(bst_predict('untrained', '{1,2,3,4}', '{5,4,3}'), bst_predict('other_seed', '{1,2,3,4}', '{5,4,3}'),
          'weights updated twice in one transaction: the second update is used');

-- Many models in one backend.
SELECT bst_train('c' || i, 'SELECT movie_ids, ratings FROM windows LIMIT 50', epochs => 1, hidden => '{4}', embed_dim => 2,
                 seed => i, history => NULL, vocabulary => NULL)
FROM generate_series(1, 10) i;
-- Models used in turn are each loaded once, however many rows use them.
SELECT count(bst_predict('c' || (1 + i % 9), '{1,2,3,4}', '{5,4,3}')) FROM generate_series(0, 269) i;
SELECT is((SELECT count(*) FILTER (WHERE uses >= 30) FROM bst_loaded_models() WHERE name ~ '^c[1-9]$'), 9::bigint,
          'nine models used in turn over 270 rows: each loaded once, serving its 30 rows');
-- A model evicted while a call still uses it stays valid until that call ends.
SELECT is((SELECT n FROM bst_evaluate('c1', $$SELECT movie_ids, ratings FROM windows
                                           WHERE bst_predict('c9', movie_ids, ratings) IS NOT NULL
                                             AND bst_predict('c10', movie_ids, ratings) IS NOT NULL$$)),
          (SELECT count(*) FROM windows), 'a model evicted from the cache while in use stays valid');
-- Under a small bst.model_cache_memory (about three of these models) the
-- loaded models fit it, and an evicted model is freed at once, not at the
-- end of the transaction (this file is one transaction).
SET LOCAL bst.model_cache_memory = '1MB';
SELECT count(bst_predict('c' || (1 + i % 9), '{1,2,3,4}', '{5,4,3}')) FROM generate_series(0, 269) i;
SELECT ok((SELECT sum(bytes) <= 1024 * 1024 AND count(*) BETWEEN 1 AND 8 FROM bst_loaded_models()),
          'the loaded models fit bst.model_cache_memory');
SELECT is((SELECT count(*) FROM pg_backend_memory_contexts WHERE name = 'bst model'),
          (SELECT count(*) FROM bst_loaded_models()), 'no evicted model stays in memory');
RESET bst.model_cache_memory;

-- Cancelling a training (statement_timeout) leaves the earlier versions alone.
-- Without early stopping, which could end the training within the second.
CREATE TEMP TABLE big AS SELECT w.* FROM windows w, generate_series(1, 20);
CREATE FUNCTION pg_temp.train_until_cancelled() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bst_train('learned', 'SELECT movie_ids, ratings FROM big', epochs => 1000,
                      early_stopping => false, history => 'pg_temp.ratings',
                      vocabulary => 'SELECT movie_id FROM pg_temp.movies');
    RETURN 'finished';
EXCEPTION WHEN query_canceled THEN
    RETURN SQLSTATE;
END $$;
CREATE TEMP TABLE versions_before AS SELECT version, weights FROM bst_models WHERE name = 'learned';
CREATE TEMP TABLE started AS SELECT clock_timestamp() AS t;
SET statement_timeout = '1s';
CREATE TEMP TABLE cancel AS SELECT pg_temp.train_until_cancelled() AS outcome;
RESET statement_timeout;
SELECT is((SELECT outcome FROM cancel), '57014', 'statement_timeout cancels a long training');
SELECT cmp_ok(clock_timestamp() - (SELECT t FROM started), '<', interval '30 s',
              'the cancel is noticed mid-training, not after 1000 epochs');
SELECT set_eq('SELECT version, weights FROM bst_models WHERE name = ''learned''',
              'SELECT version, weights FROM versions_before',
              'a cancelled training stores nothing and changes no earlier version');

SELECT * FROM finish();
ROLLBACK;

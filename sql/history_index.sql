-- bst_predict(user_id, movie_id) reads a plain history table through its
-- index on (user_id, unix_timestamp, movie_id, rating) (DEBUG1 says so),
-- and any other history through a query: the same rows either way, which
-- bst.history_index_scan = off checks (it always runs the query).
SET client_min_messages = warning;
CREATE TABLE hi_ratings (user_id int, movie_id int, rating real, unix_timestamp bigint);
INSERT INTO hi_ratings
SELECT u, 1 + (u * 7 + k * 3) % 20, 1 + (u + k) % 5, k / 2
FROM generate_series(1, 30) u, generate_series(1, 12) k;
SELECT version FROM bst_train('hi', 'SELECT user_id, movie_ids, ratings FROM bst_sequences(''hi_ratings'')',
                              epochs => 2, hidden => '{16}', history => 'hi_ratings', vocabulary => NULL,
                              users => NULL, movies => NULL);
-- User 1's latest second has ties: movie 5 twice, then movie 3; the rating
-- breaks the movie's tie.  User 2's newest ratings have no timestamp.
INSERT INTO hi_ratings VALUES (1, 5, 2, 100), (1, 5, 4, 100), (1, 3, 1, 100), (1, 7, 5, 99),
                              (2, 9, 5, NULL), (2, 11, 1, NULL);
CREATE INDEX hi_idx ON hi_ratings (user_id, unix_timestamp, movie_id, rating);
VACUUM ANALYZE hi_ratings;
SET bst.model = 'hi';
-- A user's prediction from the window SQL finds: the latest seq_len - 1
-- ratings with a timestamp, ties broken as bst_sequences breaks them.
CREATE FUNCTION pg_temp.query_prediction(u int, m int) RETURNS real LANGUAGE sql AS $$
    SELECT bst_predict('hi', u, array_agg(movie_id ORDER BY n DESC) || m, array_agg(rating ORDER BY n DESC))
    FROM (SELECT movie_id, rating,
                 row_number() OVER (ORDER BY unix_timestamp DESC, movie_id DESC, rating DESC) AS n
          FROM hi_ratings WHERE user_id = u AND unix_timestamp IS NOT NULL
          ORDER BY n
          LIMIT (SELECT (config->>'seq_len')::int - 1 FROM bst_models WHERE name = 'hi')) h $$;

-- Through the index.
SET client_min_messages = debug1;
SELECT bst_predict(1, 3) IS NOT NULL AS predicted;
SET client_min_messages = warning;

-- The same predictions as the query's, for every user (31: none), ties and
-- NULL timestamps included.
CREATE TEMP TABLE by_index AS
SELECT u, m, bst_predict(u, m) AS p FROM generate_series(1, 31) u, generate_series(1, 20, 3) m;
SET bst.history_index_scan = off;
SELECT count(*) AS predictions, count(*) FILTER (WHERE p IS DISTINCT FROM bst_predict(u, m)) AS differ
FROM by_index;
RESET bst.history_index_scan;
-- And as SQL's window, for the users with ties and with NULL timestamps.
SELECT u, bst_predict(u, 11) = pg_temp.query_prediction(u, 11) AS as_sql FROM generate_series(1, 2) u;

-- Rows the index holds but the statement's snapshot does not see (a
-- deleted one, whose page the visibility map no longer vouches for), and
-- rows only the transaction sees.
BEGIN;
DELETE FROM hi_ratings WHERE user_id = 3 AND unix_timestamp = 6;
INSERT INTO hi_ratings VALUES (4, 2, 5, 50);
CREATE TEMP TABLE changed AS SELECT u, bst_predict(u, 1) AS p FROM generate_series(3, 4) u;
SET LOCAL bst.history_index_scan = off;
SELECT count(*) FILTER (WHERE p IS DISTINCT FROM bst_predict(u, 1)) AS differ FROM changed;
ROLLBACK;

-- Not through the index: a child table (whose rows the query reads too),
-- row-level security, an index that does not give the order.  The DEBUG1
-- line is missing, and the predictions are the query's.
CREATE TABLE hi_child () INHERITS (hi_ratings);
INSERT INTO hi_child VALUES (5, 13, 1, 1000);
SET client_min_messages = debug1;
SELECT bst_predict(5, 1) = pg_temp.query_prediction(5, 1) AS child_row_read;
SET client_min_messages = warning;
DROP TABLE hi_child;
ALTER TABLE hi_ratings ENABLE ROW LEVEL SECURITY;
SET client_min_messages = debug1;
SELECT bst_predict(1, 3) IS NOT NULL AS predicted;
SET client_min_messages = warning;
ALTER TABLE hi_ratings DISABLE ROW LEVEL SECURITY;
DROP INDEX hi_idx;
CREATE INDEX hi_include_idx ON hi_ratings (user_id, unix_timestamp, movie_id) INCLUDE (rating);
CREATE INDEX hi_desc_idx ON hi_ratings (user_id, unix_timestamp DESC, movie_id DESC, rating DESC);
SET client_min_messages = debug1;
SELECT bst_predict(1, 3) IS NOT NULL AS predicted;
SET client_min_messages = warning;
DROP INDEX hi_include_idx, hi_desc_idx;

-- The history's name resolves as the model's owner would resolve it: a
-- caller without USAGE on the history's schema still gets the prediction,
-- through the index.
CREATE ROLE regress_bst_hi_caller;
CREATE SCHEMA hi_private;
CREATE TABLE hi_private.h AS SELECT * FROM hi_ratings WHERE unix_timestamp IS NOT NULL;
CREATE INDEX hi_private_idx ON hi_private.h (user_id, unix_timestamp, movie_id, rating);
VACUUM ANALYZE hi_private.h;
SELECT version FROM bst_train('hi_private', 'SELECT user_id, movie_ids, ratings FROM bst_sequences(''hi_private.h'')',
                              epochs => 1, hidden => '{16}', history => 'hi_private.h', vocabulary => NULL,
                              users => NULL, movies => NULL);
SET bst.model = 'hi_private';
SET bst.history_index_scan = off;
CREATE TEMP TABLE by_query AS SELECT bst_predict(1, 3) AS p;
RESET bst.history_index_scan;
GRANT SELECT ON by_query TO regress_bst_hi_caller;
SELECT bst_grant('hi_private', 'regress_bst_hi_caller');
SET ROLE regress_bst_hi_caller;
SET client_min_messages = debug1;
SELECT bst_predict(1, 3) = p AS as_the_owner_reads_it FROM by_query;
SET client_min_messages = warning;
RESET ROLE;
SELECT bst_drop('hi_private');
DROP SCHEMA hi_private CASCADE;
DROP TABLE by_query;
DROP ROLE regress_bst_hi_caller;
RESET bst.model;

SELECT bst_drop('hi');
DROP TABLE hi_ratings;

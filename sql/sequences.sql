-- bst_window_agg and bst_sequences on a small hand-made history
SET extra_float_digits = 0;
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
CREATE TABLE r (user_id int, movie_id int, rating real, unix_timestamp bigint);
INSERT INTO r VALUES
  -- user 1: five ratings: windows at 0 and the tail (1..4)
  (1, 10, 1, 100), (1, 11, 2, 200), (1, 12, 3, 300), (1, 13, 4, 400), (1, 14, 5, 500),
  -- user 2: exactly seq_len ratings: the window, then the tail again
  (2, 20, 5, 10), (2, 21, 4, 20), (2, 22, 3, 30), (2, 23, 2, 40),
  -- user 3: too few ratings for a window
  (3, 30, 1, 1), (3, 31, 1, 2), (3, 32, 1, 3),
  -- user 4: six ratings, a timestamp tie broken by movie id (42 before 43)
  (4, 43, 3, 7), (4, 40, 1, 5), (4, 41, 2, 6), (4, 42, 4, 7), (4, 44, 5, 8), (4, 45, 1, 9);

-- The window aggregate over a sliding frame, and as a plain aggregate.
SELECT user_id, bst_window_agg(movie_id) OVER w AS movie_ids, bst_window_agg(rating) OVER w AS ratings
FROM r WHERE user_id = 1
WINDOW w AS (PARTITION BY user_id ORDER BY unix_timestamp, movie_id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW);
SELECT user_id, bst_window_agg(movie_id ORDER BY unix_timestamp) FROM r GROUP BY user_id ORDER BY user_id;

-- Windows of 4 every 2, with the tail window (user 2's repeats).
SELECT * FROM bst_sequences('r');
-- Other shapes.
SELECT * FROM bst_sequences('r', seq_len => 2, step => 3) WHERE user_id IN (1, 4);
SELECT count(*) FROM bst_sequences('r', 3, 1);

-- min_len (1.1): windows end at the min_len-th rating and every step ratings
-- after it, shorter than seq_len at the start, with no tail window.
-- step 1, min_len 2: every rating but a user's first is the target of one
-- window, n - 1 per user (4 + 3 + 2 + 5); user 4's tie still 42 before 43.
SELECT * FROM bst_sequences('r', step => 1, min_len => 2);
-- step 2, min_len 3: windows end at the 3rd and 5th ratings; user 4's 6th is
-- no target (no tail window).
SELECT * FROM bst_sequences('r', step => 2, min_len => 3);
-- seq_len 3, step 2, min_len 2: ends at 2, 4, 6; the last rating ends the
-- last window once, not twice.
SELECT * FROM bst_sequences('r', seq_len => 3, step => 2, min_len => 2) WHERE user_id = 4;
-- min_len = seq_len: the Keras windows without the tail (user 2's once).
SELECT * FROM bst_sequences('r', min_len => 4);
-- min_len NULL is the Keras windowing, tail repeats included, by name, as
-- the eighth positional argument, or left out as in a 1.0-style call.
SELECT * FROM bst_sequences('r', min_len => NULL);
SELECT (SELECT array_agg(s) FROM bst_sequences('r', 4, 2, 'user_id', 'movie_id', 'rating', 'unix_timestamp', NULL) s)
     = (SELECT array_agg(s) FROM bst_sequences('r', min_len => NULL) s) AS eighth_null_same,
       (SELECT array_agg(s) FROM bst_sequences('r', 4, 2, 'user_id', 'movie_id', 'rating', 'unix_timestamp') s)
     = (SELECT array_agg(s) FROM bst_sequences('r', min_len => NULL) s) AS seven_args_same;

-- Column names given by name, types converted.
CREATE TABLE events (who smallint, what bigint, stars numeric, at timestamptz);
INSERT INTO events SELECT 7, 100 + i, i % 5 + 1, '2024-01-01'::timestamptz + i * interval '1 day' FROM generate_series(1, 5) i;
SELECT * FROM bst_sequences('events', user_column => 'who', movie_column => 'what',
                            rating_column => 'stars', time_column => 'at');

-- The holdout rule: (user 1, movie 10) and a few well-known cases.
SELECT u, m, bst_holdout(u, m),
       mod(mod((u::numeric * 1000003 + m) * 2654435761, 4294967296), 100) AS bucket
FROM (VALUES (1, 10), (1, 1193), (6040, 3952), (196, 242), (2147483647, 2147483647)) v(u, m);
SELECT bst_holdout(NULL, 1) IS NULL AS null_in_null_out;
-- Negative ids: the mod 2^32 step is the mathematical one (never negative).
SELECT bst_holdout(-1, 5), mod(mod(mod((-1::numeric * 1000003 + 5) * 2654435761, 4294967296) + 4294967296, 4294967296), 100) AS bucket;

-- Empty source: no rows, no error.
CREATE TABLE empty_ratings (LIKE r);
SELECT count(*) FROM bst_sequences('empty_ratings');

-- Bad inputs: each a clear error.
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences(NULL)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('no_such_table')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r', NULL)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r', 1)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r', 100000)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r', 4, 0)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r', 4, NULL)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r', min_len => 1)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r', min_len => 0)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r', min_len => 5)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r', seq_len => 3, min_len => 4)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r', 4, 2, 'user_id', 'movie_id', 'rating', 'unix_timestamp', -1)$q$);
\set VERBOSITY sqlstate
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r', min_len => 0)$q$);
\set VERBOSITY default
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r', movie_column => 'film_id')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r', rating_column => NULL)$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('events', user_column => 'who', movie_column => 'what',
                            rating_column => 'at', time_column => 'at')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('events', user_column => 'stars', movie_column => 'what',
                            rating_column => 'stars', time_column => 'at')$q$);
CREATE TABLE texts (user_id int, movie_id int, rating text, unix_timestamp bigint);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('texts')$q$);

INSERT INTO r VALUES (5, 50, NULL, 1), (5, 51, 1, 2);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r', step => 1, min_len => 2)$q$);
UPDATE r SET rating = 'NaN' WHERE user_id = 5 AND movie_id = 50;
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r')$q$);
UPDATE r SET rating = 1, movie_id = NULL WHERE user_id = 5 AND movie_id = 50;
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r')$q$);
UPDATE r SET movie_id = 50, unix_timestamp = NULL WHERE user_id = 5 AND movie_id IS NULL;
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r', step => 1, min_len => 2)$q$);
UPDATE r SET user_id = NULL, unix_timestamp = 1 WHERE user_id = 5;
SELECT pg_temp.error_of($q$SELECT * FROM bst_sequences('r')$q$);
SELECT pg_temp.error_of($q$SELECT bst_window_agg(x) FROM (VALUES (1::real), ('Infinity')) v(x)$q$);
DELETE FROM r WHERE user_id IS NULL;
SELECT count(*) FROM bst_sequences('r');
SELECT count(*) FROM bst_sequences('r', step => 1, min_len => 2);

-- bst_recommend: the top k of the vocabulary for a user's current history.
SET client_min_messages = warning;
CREATE FUNCTION pg_temp.error_of(query text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    detail text;
BEGIN
    EXECUTE query;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
    RETURN SQLSTATE || ': ' || SQLERRM || coalesce(nullif(' DETAIL: ' || detail, ' DETAIL: '), '');
END $$;

CREATE TABLE rc_ratings (user_id int, movie_id int, rating real, unix_timestamp bigint);
INSERT INTO rc_ratings
SELECT u, 1 + (u * 7 + k * 11) % 30, 1 + (1 + (u * 7 + k * 11) % 30) % 5, 100 * u + k
FROM generate_series(1, 30) u, generate_series(1, 12) k;
CREATE INDEX ON rc_ratings (user_id, unix_timestamp, movie_id) INCLUDE (rating);
SELECT version FROM bst_train('rc', 'SELECT user_id, movie_ids, ratings FROM bst_sequences(''rc_ratings'')',
                              epochs => 3, hidden => '{16}', history => 'rc_ratings', vocabulary => NULL,
                              users => NULL, movies => NULL);
SET bst.model = 'rc';

-- Every movie of the vocabulary the user has not rated, best first, each
-- scored as bst_predict(user_id, movie_id) scores it.
SELECT count(*) AS recommended,
       count(*) = (SELECT count(DISTINCT movie_id) FROM rc_ratings)
                  - (SELECT count(DISTINCT movie_id) FROM rc_ratings WHERE user_id = 1) AS all_unrated,
       bool_and(movie_id NOT IN (SELECT movie_id FROM rc_ratings WHERE user_id = 1)) AS none_rated,
       max(abs(score - bst_predict(1, movie_id))) < 1e-5 AS scores_as_bst_predict,
       bool_and(rank = expected_rank) AS ranked_by_score
FROM (SELECT *, row_number() OVER (ORDER BY score DESC, movie_id) AS expected_rank
      FROM bst_recommend(1, 1000)) r;
-- The top 3, and the rated ones too when asked.
SELECT rank FROM bst_recommend(1, 3) ORDER BY rank;
SELECT count(*) AS with_rated FROM bst_recommend(1, 1000, exclude_rated => false);
-- Set-wise, for several users; by model name.
SELECT count(*) AS rows, count(DISTINCT u) AS users
FROM generate_series(1, 4) u, LATERAL bst_recommend(u, 5) r;
RESET bst.model;
SELECT count(*) AS by_name FROM bst_recommend(2, 5, model => 'rc');

-- Errors.
SELECT pg_temp.error_of($q$SELECT * FROM bst_recommend(1, 0, model => 'rc')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_recommend(NULL, 5, model => 'rc')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_recommend(424242, 5, model => 'rc')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_recommend(1, 5, model => 'nope')$q$);

SELECT bst_drop('rc');
DROP TABLE rc_ratings;

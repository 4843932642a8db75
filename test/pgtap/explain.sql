-- bst_explain: where the target's attention went.  A case where one history
-- item decides the target's rating: every window holds movie 1 once, at a
-- position that varies, and the target's rating is movie 1's.  The model
-- can only predict well by looking at movie 1, and bst_explain must show it
-- looking there.
BEGIN;
SELECT plan(7);
SET LOCAL client_min_messages = warning;

CREATE TEMP TABLE oracle_windows AS
SELECT w,
       array_agg(CASE WHEN j = w % 4 THEN 1 ELSE 2 + (w * 7 + j * 13) % 39 END ORDER BY j)
           || (2 + (w * 17) % 39) AS movie_ids,
       array_agg(CASE WHEN j = w % 4 THEN 1 + (w * 11 / 7) % 5 ELSE 1 + (w * 3 + j * 5 + w / 5) % 5 END::real
                 ORDER BY j) || (1 + (w * 11 / 7) % 5)::real AS ratings
FROM generate_series(1, 6000) w, generate_series(0, 3) j GROUP BY w;
-- The last 100 windows are users' histories, held out of training.
CREATE TEMP TABLE oracle_ratings AS
SELECT w AS user_id, movie_ids[j] AS movie_id, ratings[j] AS rating, j::bigint AS unix_timestamp
FROM oracle_windows, generate_series(1, 4) j WHERE w > 5900;
CREATE TEMP TABLE oracle_trained AS
SELECT * FROM bst_train('oracle', 'SELECT movie_ids, ratings FROM oracle_windows WHERE w <= 5900',
                 history => 'pg_temp.oracle_ratings', vocabulary => NULL, users => NULL, movies => NULL,
                 features => '{}', bias => false, factors => 0);
SET LOCAL bst.model = 'oracle';

SELECT cmp_ok((SELECT avg(abs(bst_predict(w, movie_ids[5]) - ratings[5])) FROM oracle_windows WHERE w > 5900)::float8,
              '<', 0.5::float8, 'the model predicts the held-out targets (MAE under 0.5 on ratings 1..5)');
SELECT cmp_ok((SELECT count(*) FROM oracle_windows o
               WHERE w > 5900
                 AND (SELECT e.position FROM bst_explain(w, movie_ids[5]) e
                      WHERE e.head IS NULL AND e.position < 5 ORDER BY e.attention DESC LIMIT 1) = 1 + w % 4),
              '>=', 90::bigint, 'for at least 90 of 100 users the deciding item gets the largest mean attention');

-- What the rows are.
CREATE TEMP TABLE explained AS SELECT * FROM bst_explain(5901, 7);
SELECT results_eq('SELECT position, movie_id, rating FROM explained WHERE head IS NULL ORDER BY position',
                  $$SELECT j, movie_id, rating FROM pg_temp.oracle_ratings r, generate_series(1, 4) j
                    WHERE r.user_id = 5901 AND r.unix_timestamp = j
                    UNION ALL SELECT 5, 7, bst_predict(5901, 7) ORDER BY 1$$,
                  'the history oldest first, then the target with the prediction as its rating');
SELECT results_eq('SELECT head, round(sum(attention)::numeric, 5) FROM explained GROUP BY head ORDER BY head NULLS FIRST',
                  $$VALUES (NULL::int, 1.00000), (1, 1.00000), (2, 1.00000), (3, 1.00000)$$,
                  'each head''s weights, and their mean, sum to 1');
SELECT ok((SELECT bool_and(abs(m.attention - h.mean) < 1e-6)
           FROM explained m,
                LATERAL (SELECT avg(attention) AS mean FROM explained x
                         WHERE x.position = m.position AND x.head IS NOT NULL) h
           WHERE m.head IS NULL), 'the head NULL rows are the mean over the heads');
SELECT throws_ok($$SELECT * FROM bst_explain(424242, 7)$$, '22023', NULL, 'a user without history is an error');
SELECT throws_ok($$SELECT * FROM bst_explain(5901, 7, model => 'nope')$$, '42704', NULL, 'so is an unknown model');

SELECT * FROM finish();
ROLLBACK;

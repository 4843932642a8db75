-- User features, bias terms and early stopping on generated data.
BEGIN;
SELECT plan(7);
SET client_min_messages = warning;
DELETE FROM bst_models;  -- rolled back at the end

-- 60 movies of middling, similar quality; 150 users, each with a strong
-- personal bias (-1.5 .. +1.5 stars) and a sex that carries half of it.  A
-- rating is 3 + the user's bias + a small movie effect + noise: the user is
-- most of what there is to learn, and nothing in a window of other users'
-- movies tells who is rating.  The noise is a hash: fixed, but not a
-- pattern a model could learn.
CREATE TEMP TABLE movies (movie_id int PRIMARY KEY, title text, genres text[]);
INSERT INTO movies SELECT m, 'movie ' || m, CASE WHEN m % 2 = 0 THEN '{Drama}' ELSE '{Comedy}' END::text[]
FROM generate_series(1, 60) m;
CREATE TEMP TABLE users (user_id int PRIMARY KEY, sex text, age_group int, occupation int);
INSERT INTO users SELECT u, CASE WHEN u % 2 = 0 THEN 'F' ELSE 'M' END, 25, u % 7 FROM generate_series(1, 150) u;
CREATE TEMP TABLE ratings (user_id int, movie_id int, rating real, unix_timestamp bigint);
INSERT INTO ratings
SELECT u, m, 3 + 1.5 * (((u * 37) % 21) - 10) / 10.0 + 0.2 * ((m % 3) - 1)
             + 0.3 * (abs(hashint4(u * 1000 + k)) % 1000 / 500.0 - 1), 1000 * u + k
FROM generate_series(1, 150) u, generate_series(1, 30) k,
     LATERAL (SELECT 1 + (u * 11 + k * 7) % 60 AS m) mm;
CREATE INDEX ON ratings (user_id, unix_timestamp, movie_id) INCLUDE (rating);
CREATE TEMP TABLE windows AS
  SELECT *, bst_holdout(user_id, movie_ids[cardinality(movie_ids)]) AS held_out
  FROM bst_sequences('ratings', 5, 1, min_len => 2);

SELECT bst_train('with_user', 'SELECT user_id, movie_ids, ratings FROM windows WHERE NOT held_out',
                 hidden => '{32,16}', history => 'pg_temp.ratings', users => 'pg_temp.users',
                 movies => 'pg_temp.movies', vocabulary => 'SELECT movie_id FROM pg_temp.movies');
SELECT bst_train('without_user', 'SELECT movie_ids, ratings FROM windows WHERE NOT held_out',
                 preset => 'keras_example', hidden => '{32,16}', history => 'pg_temp.ratings',
                 vocabulary => 'SELECT movie_id FROM pg_temp.movies');
CREATE TEMP TABLE mae AS
  SELECT (SELECT mae FROM bst_evaluate('with_user', 'SELECT user_id, movie_ids, ratings FROM windows WHERE held_out')) AS with_user,
         (SELECT mae FROM bst_evaluate('without_user', 'SELECT movie_ids, ratings FROM windows WHERE held_out')) AS without_user,
         (SELECT avg(abs(ratings[cardinality(ratings)] - 3)) FROM windows WHERE held_out) AS constant;
SELECT cmp_ok((SELECT with_user FROM mae), '<', 0.35::float8,
              'a model with user inputs learns each user''s bias (held-out MAE under 0.35)');
SELECT cmp_ok((SELECT without_user FROM mae), '>', (SELECT 2 * with_user FROM mae),
              'a model without them cannot: over twice the error');
SELECT cmp_ok((SELECT without_user FROM mae), '>', (SELECT constant / 2 FROM mae),
              '... no better than half the error of a constant rating');

-- The user bias term alone carries the user: with no other user input, the
-- same model with the user's id beats it without (unknown user: only the
-- global and movie biases).
SELECT bst_train('bias_only', 'SELECT user_id, movie_ids, ratings FROM windows WHERE NOT held_out',
                 hidden => '{32,16}', features => '{}', history => 'pg_temp.ratings',
                 vocabulary => 'SELECT movie_id FROM pg_temp.movies');
SELECT bst_train('no_user', 'SELECT movie_ids, ratings FROM windows WHERE NOT held_out',
                 hidden => '{32,16}', features => '{}', history => 'pg_temp.ratings',
                 vocabulary => 'SELECT movie_id FROM pg_temp.movies');
SELECT cmp_ok((SELECT mae FROM bst_evaluate('bias_only', 'SELECT user_id, movie_ids, ratings FROM windows WHERE held_out')),
              '<', (SELECT mae / 1.5 FROM bst_evaluate('no_user', 'SELECT movie_ids, ratings FROM windows WHERE held_out')),
              'the user bias term learns the user''s bias');

-- bst_predict(user_id, movie_id) agrees with the explicit window, features on.
SET bst.model = 'with_user';
SELECT is(bst_predict(17, 5),
          bst_predict('with_user', 17,
                      (SELECT array_agg(movie_id ORDER BY unix_timestamp) || 5
                       FROM (SELECT * FROM ratings WHERE user_id = 17 ORDER BY unix_timestamp DESC LIMIT 4) h),
                      (SELECT array_agg(rating ORDER BY unix_timestamp)
                       FROM (SELECT * FROM ratings WHERE user_id = 17 ORDER BY unix_timestamp DESC LIMIT 4) h)),
          'bst_predict(user, movie) equals the explicit window with the user''s features');
RESET bst.model;

-- Early stopping keeps the best epoch: the result and the stored metrics
-- are that epoch's, and training stopped patience epochs after it.
SELECT bst_train('stopped', 'SELECT user_id, movie_ids, ratings FROM windows WHERE user_id <= 30',
                 hidden => '{64,32}', learning_rate => 0.05, epochs => 30, patience => 2,
                 history => 'pg_temp.ratings', users => 'pg_temp.users', movies => 'pg_temp.movies',
                 vocabulary => 'SELECT movie_id FROM pg_temp.movies');
SELECT is((SELECT (metrics->>'epochs_run')::int - (metrics->>'best_epoch')::int FROM bst_models WHERE name = 'stopped'),
          2, 'training stopped 2 epochs after the best one');
SELECT is((SELECT (metrics->>'val_mae')::float8 FROM bst_models WHERE name = 'stopped'),
          (SELECT min((e->>'val_mae')::float8) FROM bst_models, jsonb_array_elements(metrics->'epochs') e
           WHERE name = 'stopped'),
          'the kept epoch has the lowest validation MAE of all');

SELECT * FROM finish();
ROLLBACK;

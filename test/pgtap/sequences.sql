-- Properties of bst_sequences and bst_window_agg on generated data,
-- checked against an independent computation in plain SQL.
BEGIN;
SELECT plan(23);

SELECT setseed(0.42);
-- 300 users with 0..40 ratings each; timestamps drawn from a small range so
-- that ties are common and must be broken by movie id.
CREATE TEMP TABLE gen AS
SELECT u AS user_id, m AS movie_id, (1 + floor(random() * 5))::real AS rating,
       (floor(random() * 30))::bigint AS unix_timestamp
FROM generate_series(1, 300) u,
     LATERAL (SELECT DISTINCT (1 + floor(random() * 500 + u * 0))::int AS m
              FROM generate_series(1, (u * 7919) % 41)) ms;

-- The Keras windowing, written out: starts 0, step, ... while a window fits,
-- then the tail (start n - seq_len) once more, for users with n >= seq_len.
CREATE TEMP TABLE ranked AS
SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY unix_timestamp, movie_id) - 1 AS pos,
       count(*) OVER (PARTITION BY user_id) AS n
FROM gen;

CREATE FUNCTION pg_temp.reference(seq_len int, step int)
RETURNS TABLE (user_id int, movie_ids int[], ratings real[]) LANGUAGE sql AS $$
    WITH users AS (SELECT DISTINCT user_id, n FROM ranked WHERE n >= seq_len),
    starts AS (
        SELECT user_id, s AS start FROM users, generate_series(0, n - seq_len, step) s
        UNION ALL
        SELECT user_id, n - seq_len FROM users
    ),
    numbered AS (SELECT row_number() OVER () AS window_id, * FROM starts)
    SELECT w.user_id, array_agg(r.movie_id ORDER BY r.pos), array_agg(r.rating ORDER BY r.pos)
    FROM numbered w JOIN ranked r
      ON r.user_id = w.user_id AND r.pos >= w.start AND r.pos < w.start + seq_len
    GROUP BY w.window_id, w.user_id
$$;

-- The min_len windowing, written out from the definition: a window ends at
-- every 1-based position p >= min_len with (p - min_len) divisible by step,
-- and holds the ratings at positions max(1, p - seq_len + 1) .. p.
CREATE FUNCTION pg_temp.reference_min_len(seq_len int, step int, min_len int)
RETURNS TABLE (user_id int, movie_ids int[], ratings real[]) LANGUAGE sql AS $$
    WITH numbered AS (
        SELECT user_id, movie_id, rating,
               row_number() OVER (PARTITION BY user_id ORDER BY unix_timestamp, movie_id, rating) AS p
        FROM gen
    )
    SELECT e.user_id, array_agg(h.movie_id ORDER BY h.p), array_agg(h.rating ORDER BY h.p)
    FROM numbered e JOIN numbered h
      ON h.user_id = e.user_id AND h.p BETWEEN e.p - seq_len + 1 AND e.p
    WHERE e.p >= min_len AND (e.p - min_len) % step = 0
    GROUP BY e.user_id, e.p
$$;

SELECT cmp_ok((SELECT count(*) FROM gen), '>', 5000::bigint, 'generated data has thousands of ratings');
SELECT ok((SELECT count(*) FROM (SELECT user_id, unix_timestamp FROM gen GROUP BY 1, 2 HAVING count(*) > 1) t) > 100,
          'generated data has many timestamp ties');

SELECT bag_eq($$SELECT * FROM bst_sequences('gen')$$, $$SELECT * FROM pg_temp.reference(4, 2)$$,
              'seq_len 4, step 2 matches the reference windowing');
SELECT bag_eq($$SELECT * FROM bst_sequences('gen', 5, 3)$$, $$SELECT * FROM pg_temp.reference(5, 3)$$,
              'seq_len 5, step 3 matches the reference windowing');
SELECT bag_eq($$SELECT * FROM bst_sequences('gen', 2, 1)$$, $$SELECT * FROM pg_temp.reference(2, 1)$$,
              'seq_len 2, step 1 matches the reference windowing');
SELECT bag_eq($$SELECT * FROM bst_sequences('gen', 8, 8)$$, $$SELECT * FROM pg_temp.reference(8, 8)$$,
              'seq_len 8, step 8 matches the reference windowing');

-- min_len: the short windows at the start, no tail window.
SELECT bag_eq($$SELECT * FROM bst_sequences('gen', 4, 1, min_len => 2)$$, $$SELECT * FROM pg_temp.reference_min_len(4, 1, 2)$$,
              'seq_len 4, step 1, min_len 2 matches the reference windowing');
SELECT bag_eq($$SELECT * FROM bst_sequences('gen', 5, 3, min_len => 3)$$, $$SELECT * FROM pg_temp.reference_min_len(5, 3, 3)$$,
              'seq_len 5, step 3, min_len 3 matches the reference windowing');
SELECT bag_eq($$SELECT * FROM bst_sequences('gen', 8, 1, min_len => 2)$$, $$SELECT * FROM pg_temp.reference_min_len(8, 1, 2)$$,
              'seq_len 8, step 1, min_len 2 matches the reference windowing');
SELECT bag_eq($$SELECT * FROM bst_sequences('gen', 6, 2, min_len => 6)$$, $$SELECT * FROM pg_temp.reference_min_len(6, 2, 6)$$,
              'min_len = seq_len: the Keras windows without the tail');
SELECT bag_eq($$SELECT * FROM bst_sequences('gen', 5, 3, min_len => NULL)$$, $$SELECT * FROM pg_temp.reference(5, 3)$$,
              'min_len NULL is the Keras windowing');

-- step 1, min_len 2: n - 1 windows for each user with n ratings...
SELECT set_eq($$SELECT user_id, count(*) FROM bst_sequences('gen', 4, 1, min_len => 2) GROUP BY user_id$$,
              $$SELECT user_id, count(*) - 1 FROM gen GROUP BY user_id HAVING count(*) >= 2$$,
              'step 1, min_len 2: a user with n ratings gets n - 1 windows');
-- ...and every rating from the second on is the target of exactly one (a
-- user's movies are distinct, so the target movie names the rating).
SELECT bag_eq($$SELECT user_id, movie_ids[cardinality(movie_ids)], ratings[cardinality(ratings)]
                FROM bst_sequences('gen', 4, 1, min_len => 2)$$,
              $$SELECT user_id, movie_id, rating FROM ranked WHERE pos >= 1$$,
              'step 1, min_len 2: every rating but the first is the target of exactly one window');

SELECT throws_ok($$SELECT * FROM bst_sequences('gen', 4, 1, min_len => 1)$$, '22023',
                 'min_len must be between 2 and seq_len (4), not 1', 'min_len 1 is an invalid parameter value');
SELECT throws_ok($$SELECT * FROM bst_sequences('gen', 4, 1, min_len => 0)$$, '22023',
                 'min_len must be between 2 and seq_len (4), not 0', 'min_len 0 is an invalid parameter value');
SELECT throws_ok($$SELECT * FROM bst_sequences('gen', 4, 1, min_len => 5)$$, '22023',
                 'min_len must be between 2 and seq_len (4), not 5', 'min_len seq_len + 1 is an invalid parameter value');

-- Counts by formula: floor((n - L) / s) + 2 windows per user with n >= L.
SELECT is((SELECT count(*) FROM bst_sequences('gen')),
          (SELECT sum((n - 4) / 2 + 2) FROM (SELECT DISTINCT user_id, n FROM ranked WHERE n >= 4) u)::bigint,
          'window count is floor((n - 4) / 2) + 2 per user with at least 4 ratings');

-- The tail window: every user's last window ends with their latest rating.
SELECT is_empty($$
    SELECT s.user_id FROM (SELECT DISTINCT ON (user_id) user_id, movie_ids FROM
                             (SELECT *, row_number() OVER () AS k FROM bst_sequences('gen')) t
                           ORDER BY user_id, k DESC) s
    JOIN ranked r ON r.user_id = s.user_id AND r.pos = r.n - 1
    WHERE s.movie_ids[4] <> r.movie_id$$,
    'each user''s last window ends with the latest rating');

-- A user with (n - L) divisible by step gets the tail window twice.
SELECT is((SELECT count(*) FROM bst_sequences('gen') s JOIN ranked r USING (user_id)
           WHERE r.pos = 0 AND r.n = 6)::bigint,
          (SELECT 3 * count(DISTINCT user_id) FROM ranked WHERE n = 6),
          'six ratings give windows at 0 and 2 plus a repeated tail');

-- Ties: a reversed physical order gives the same sequences.
CREATE TEMP TABLE gen_reversed AS SELECT * FROM gen ORDER BY user_id DESC, unix_timestamp DESC, movie_id DESC;
SELECT set_eq($$SELECT * FROM bst_sequences('gen')$$, $$SELECT * FROM bst_sequences('gen_reversed')$$,
              'result does not depend on the physical row order');

-- Even a movie rated twice at one instant: ordered by rating.
CREATE TEMP TABLE dup_a (user_id int, movie_id int, rating real, unix_timestamp bigint);
CREATE TEMP TABLE dup_b (LIKE dup_a);
INSERT INTO dup_a VALUES (1, 10, 5, 1), (1, 10, 3, 1), (1, 11, 4, 2);
INSERT INTO dup_b VALUES (1, 11, 4, 2), (1, 10, 3, 1), (1, 10, 5, 1);
SELECT results_eq($$SELECT * FROM bst_sequences('dup_a', 2, 1)$$, $$SELECT * FROM bst_sequences('dup_b', 2, 1)$$,
                  'exact duplicates of (user, time, movie) are ordered by rating');

-- The moving aggregate agrees with re-aggregating every frame from scratch
-- (an ORDER BY inside the aggregate call forbids the moving-aggregate path).
SELECT results_eq(
    $$SELECT bst_window_agg(movie_id) OVER w FROM gen
      WINDOW w AS (PARTITION BY user_id ORDER BY unix_timestamp, movie_id ROWS BETWEEN 3 PRECEDING AND CURRENT ROW)
      ORDER BY user_id, unix_timestamp, movie_id$$,
    $$SELECT (SELECT array_agg(movie_id ORDER BY pos) FROM ranked r2
              WHERE r2.user_id = r.user_id AND r2.pos BETWEEN r.pos - 3 AND r.pos)
      FROM ranked r ORDER BY user_id, unix_timestamp, movie_id$$,
    'sliding bst_window_agg equals array_agg over the same frame');

-- The holdout rule in bigint arithmetic (mod 2^32 first keeps it in range).
SELECT is_empty($$
    SELECT 1 FROM generate_series(1, 2000) u, generate_series(1, 50) m
    WHERE bst_holdout(u, m * 37) <>
          ((((u::bigint * 1000003 + m * 37) % 4294967296) * (2654435761 % 4294967296)::numeric
            % 4294967296) % 100 >= 85)$$,
    'bst_holdout agrees with an independent computation');

SELECT * FROM finish();
ROLLBACK;

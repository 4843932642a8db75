#!/usr/bin/env bash
# Generate MovieLens-shaped data at any scale, directly in a database.
#
#   scripts/generate_ratings.sh RATINGS [--seed N] [--movies N] [--report]
#
# Fills the tables users, movies and ratings exactly as scripts/load_movielens.sh
# does (same columns, types, primary keys and ratings_user_time_idx; the three
# tables replaced whole, in one transaction), so every bst function and script
# runs on generated data as on ML-1M.  Connects with the usual libpq
# environment (PGHOST, PGPORT, PGDATABASE, PGUSER).  The same RATINGS and seed
# give the same rows.  --report prints the generated distributions beside
# ML-1M's.
#
# Scale: RATINGS ratings, exactly; round(RATINGS / 165.5975) users (ML-1M's
# mean ratings per user); rated movies sub-linear in the ratings, the power
# law through ML-1M (3,706 rated movies for 1,000,209 ratings) and ML-10M
# (10,681 for 10,000,054): 3706 * (RATINGS / 1000209)^0.4597, or --movies N;
# the movies table holds 3883/3706 times as many (ML-1M lists 177 movies
# nobody rated).  This gives 1,286 movies to rate at 100K ratings, 3,706 at
# 1M, 10,681 at 10M and 16,277 at 25M (ML-25M has 62,423: its catalogue has a
# long tail of movies rated a few times; pass --movies to model it); the
# rarest of them may draw no rating (at 10M, 9,665 of the 10,681 are rated).
#
# Distributions: ML-1M's, as the constants below, measured once (no MovieLens
# file is read here):
#   - ratings per user: 101 quantiles of ML-1M's per-user counts (min 20,
#     median 96, mean 165.6, max 2,314), at p = s(k/100) for k = 0..100 where
#     s(v) = 3v^2 - 2v^3 (a grid dense at both ends), interpolated in log
#     space; each user is a stratified draw (user ids permuted), capped at
#     62.4% of the rated movies (ML-1M's max 2,314 / 3,706), and the counts
#     are rescaled (above the minimum of 20) to add up to RATINGS exactly;
#   - movie popularity: ML-1M's is Zipf-like with a bent head (the top movie
#     has 3,428 ratings, the median 123.5, 114 movies have one; 12.2% of the
#     movies hold half the ratings).  Each user's movies are drawn by
#     popularity without replacement (draws with replacement, the first
#     occurrences kept: successive sampling; the rare user still short after
#     that is topped up with unrated movies by Efraimidis-Spirakis keys of
#     weight 1/(rank+1)), from draw weights calibrated so that the result
#     has ML-1M's popularity curve (POPULARITY_X below), applied to the
#     movies by rank fraction;
#   - rating values: 1..5 with ML-1M's shares 5.62, 10.75, 26.11, 34.89,
#     22.63% (ratings.dat of ml-1m-shuffled, the real triples): a latent
#     0.45 * user + 0.55 * movie + 0.7036 * noise (standard normals, so the
#     sum is one too) cut at the normal quantiles of those shares, so users
#     and movies have biases a model can learn and the marginal is ML-1M's;
#   - timestamps: ML-1M spans 2000-04-25 .. 2003-02-28 and its users "joined
#     MovieLens in 2000" (its README): a user's first rating is uniform over
#     2000-04-25 .. 2000-12-31; the span from a user's first to last rating
#     follows the 41 quantiles of the spans of the 533 users of
#     ml-1m-partial (the original lines, real timestamps: median 1 hour, 90%
#     under 415 days), rank-correlated with the user's count (Spearman 0.60
#     there: the span's quantile is the count's with probability 0.6, else
#     independent); a user's ratings, in draw order, go in pages of two
#     submitted at once (in ML-1M, 49.8% of the ratings have the second of
#     an earlier rating of their user), the pages placed at the stratified
#     quantiles of the relative positions of ml-1m-partial's ratings within
#     their user's span (half of them in the first 19% of the span, a third
#     in the first 1%): each user's ratings are clustered in time, at the
#     start of the span;
#   - users: sex, age group and occupation with users.dat's frequencies
#     (F 1,709 / M 4,331; age groups 1, 18, 25, 35, 45, 50, 56; occupations
#     0..20), 5-digit zip codes;
#   - movies: 1..6 genres of ML-1M's 18 with movies.dat's counts (2,025,
#     1,322, 421, 100, 14, 1 of 3,883 movies), chosen without replacement by
#     each genre's frequency; titles "Movie <id> (<year>)", the years from
#     movies.dat's quantiles.
# How the constants were measured (once, from ../shared/data, 2026-11-30):
# Python over ml-1m-shuffled/ratings.dat for the per-user counts, the
# per-movie counts and the rating shares (linear-interpolated quantiles of
# the sorted values), over ml-1m-partial for the time figures, over
# ml-1m/users.dat and movies.dat for the rest; the popularity draw weights by
# a small C program over the per-user and per-movie counts.  --report prints
# the generated figures beside these.
#
# All of it is set-based SQL over generate_series, with pseudo-random numbers
# from hashint8extended(key, seed + stream): 10M ratings take about a minute
# and a half on a 2-core machine.
set -euo pipefail

die() { echo "generate_ratings: $*" >&2; exit 1; }

usage="usage: generate_ratings.sh RATINGS [--seed N] [--movies N] [--report]"
ratings=
seed=42
movies=
report=0
while [ $# -gt 0 ]; do
    case $1 in
    --seed) [ $# -ge 2 ] || die "$usage"; seed=$2; shift 2 ;;
    --movies) [ $# -ge 2 ] || die "$usage"; movies=$2; shift 2 ;;
    --report) report=1; shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) die "unknown option $1; $usage" ;;
    *) [ -z "$ratings" ] || die "$usage"; ratings=$1; shift ;;
    esac
done
# 100K, 1M, 2.5M, 10M, 25M, 1e6 are accepted too.
to_int() {
    awk -v s="$1" 'BEGIN {
        m = 1; u = toupper(substr(s, length(s)))
        if (u == "K") m = 1e3; else if (u == "M") m = 1e6
        if (m > 1) s = substr(s, 1, length(s) - 1)
        if (s !~ /^[0-9]+(\.[0-9]+)?([eE][0-9]+)?$/) exit 1
        printf "%.0f\n", s * m }'
}
[ -n "$ratings" ] || die "$usage"
ratings=$(to_int "$ratings") || die "RATINGS must be a number such as 1000000, 1M or 100K"
[[ $seed =~ ^-?[0-9]+$ ]] || die "--seed must be an integer"
[ "$ratings" -ge 20 ] || die "RATINGS must be at least 20 (a user has at least 20 ratings)"
[ "$ratings" -le 1000000000 ] || die "RATINGS must be at most 1e9"

# Users: ML-1M's mean of 165.5975 ratings per user (1,000,209 / 6,040).
users=$(awk -v r="$ratings" 'BEGIN { u = int(r / 165.5975 + 0.5); if (u < 1) u = 1; if (u * 20 > r) u = int(r / 20); print u }')
# Rated movies: 3706 * (R / 1000209)^0.4597471 (ML-1M and ML-10M on one power law).
if [ -n "$movies" ]; then
    movies=$(to_int "$movies") || die "--movies must be a number"
else
    movies=$(awk -v r="$ratings" 'BEGIN { printf "%.0f\n", 3706 * (r / 1000209) ^ 0.4597471 }')
fi
[ "$movies" -ge 40 ] || movies=40
movies_table=$(awk -v m="$movies" 'BEGIN { printf "%.0f\n", m * 3883 / 3706 }')
# A user rates at most 62.4% of the rated movies (ML-1M: 2,314 of 3,706).
cap=$(awk -v m="$movies" 'BEGIN { c = int(m * 0.6244); print (c < 20 ? 20 : c) }')
[ "$movies_table" -lt 1000003 ] && [ "$users" -lt 1000003 ] ||
    die "at most 1,000,002 users and movies (the id permutations use the prime 1000003)"

# Streams of the hash: one salt per independent quantity.
s=$(( seed * 1000 ))
S_PERM=$((s + 1)) S_DRAW=$((s + 2)) S_NOISE=$((s + 3)) S_NOISE2=$((s + 4))
S_ZU=$((s + 10)) S_ZU2=$((s + 11)) S_T0=$((s + 12)) S_MIX=$((s + 13)) S_SPAN=$((s + 14))
S_SEX=$((s + 15)) S_AGE=$((s + 16)) S_OCC=$((s + 17)) S_ZIP=$((s + 18))
S_ZM=$((s + 20)) S_ZM2=$((s + 21)) S_NGEN=$((s + 22)) S_GENRE=$((s + 23)) S_YEAR=$((s + 24))
S_TOPUP=$((s + 30)) S_OFFSET=$((s + 31))

# ---- ML-1M's figures (see the header for how they were measured) --------
# Ratings per user: quantiles at p = s(k/100), k = 0..100.
USER_COUNT_Q='20,20,20,20,20,20,20,20,21,21,21,22,22,23,23,24,24,25,26,27,28,29,29,31,32,33,34,36,37,38,40,41,43,45,47,48,50,52,55,57,60,63,66,69,72,75,78,82,86,91,96,100,103,107,113,118,123,127,134,141,148,154,160,168,175,186,196,204,213,224,234,248.9,262,278,290,302,316.4,330.6,351,372,393,408,430,460,488.7,513,543,578.7,617,664.6,709.8,754.1,806.6,850.1,896.3,973.4,1072,1226.3,1319.8,1764.4,2314'
# Movie popularity, as drawn: the rank fraction (0 = most rated) at which
# the cumulative draw weight reaches u = s(k/200), k = 0..200.  The weights
# are calibrated so that ML-1M's 6,040 users, each drawing its count of
# distinct movies by successive sampling, rate each movie as often as in
# ML-1M (expected counts within 0.5% of the real ones, by a fixed point:
# inclusion 1 - exp(-lambda_user * w_movie), 200 iterations in C).
POPULARITY_X='0,3e-06,1e-05,2.3e-05,4.1e-05,6.3e-05,9.1e-05,0.000124,0.000161,0.000203,0.00025,0.000312,0.000387,0.000469,0.000556,0.00065,0.00075,0.000859,0.000979,0.001109,0.001262,0.001424,0.001593,0.00177,0.001957,0.002156,0.002363,0.002577,0.002801,0.003037,0.003283,0.003537,0.003807,0.00409,0.004397,0.004721,0.005057,0.005405,0.005764,0.006136,0.00652,0.006916,0.007329,0.007765,0.008234,0.008735,0.009277,0.009887,0.010516,0.011182,0.011863,0.012561,0.013277,0.01402,0.014786,0.015584,0.016432,0.017315,0.018231,0.019184,0.020175,0.021194,0.022236,0.023316,0.024426,0.02556,0.02672,0.027906,0.029119,0.030374,0.031688,0.033039,0.034415,0.035831,0.037307,0.038821,0.040379,0.041968,0.043581,0.045225,0.046909,0.048635,0.050399,0.052202,0.054064,0.05597,0.057913,0.059888,0.061928,0.064026,0.066166,0.068357,0.070602,0.072891,0.075238,0.077642,0.080112,0.082641,0.085227,0.087861,0.090556,0.093301,0.096106,0.09897,0.101893,0.104876,0.107924,0.111029,0.114193,0.117406,0.120677,0.124033,0.127459,0.130929,0.134467,0.138122,0.141882,0.145717,0.149593,0.153547,0.157597,0.161768,0.166028,0.170382,0.174847,0.179372,0.183959,0.188645,0.193392,0.198231,0.203188,0.208242,0.213399,0.218678,0.224058,0.229503,0.235046,0.240675,0.246382,0.252141,0.257984,0.263977,0.270132,0.276445,0.282873,0.289364,0.295969,0.302742,0.309642,0.316629,0.323718,0.33101,0.338475,0.346062,0.353787,0.361659,0.369618,0.377697,0.385949,0.394297,0.40283,0.411528,0.420351,0.429355,0.438476,0.447724,0.457229,0.466941,0.476761,0.486778,0.49699,0.507456,0.518215,0.529339,0.540756,0.552354,0.564217,0.576305,0.588763,0.601639,0.615037,0.628726,0.642704,0.657109,0.671994,0.687128,0.702639,0.718417,0.734533,0.751147,0.768152,0.78544,0.803193,0.821575,0.840559,0.861232,0.883307,0.907568,0.936401,0.973588,1'
# Rating values: standard normal quantiles of the cumulative shares
# 0.0562, 0.1637, 0.4248, 0.7737 (ratings 1..4).
RATING_CUTS='-1.5875,-0.97936,-0.18963,0.75109'
# Seconds between a user's first and last rating: quantiles at p = s(k/40).
USER_SPAN_Q='189,192,231,284,318,382,456,519,607,688,818,894,1016,1141,1276,1486,1715,1990,2343,2750,3549,5219,10088,70325,182620,553460,1156376,3125679,6540881,12744373,16399158,26433079,35182163,43284508,52564574,62585181,65733008,67908262,69519689,70068409,70096790'
# A rating's position in its user's span, 0..1: quantiles at p = s(k/40)
# (pooled over the ratings of ml-1m-partial's users with a span).
RELATIVE_POSITION_Q='0,0,0,0,1e-05,2e-05,3e-05,5e-05,0.0001,0.00017,0.00037,0.00074,0.00159,0.00484,0.00796,0.0149,0.03016,0.04683,0.07065,0.11866,0.18865,0.24834,0.31514,0.39746,0.48094,0.55345,0.61013,0.6737,0.74229,0.80121,0.86093,0.9104,0.95276,0.97986,0.99498,0.99972,0.99996,0.99999,1,1,1'
FIRST_TIME=956703932      # 2000-04-25 23:05:32 UTC, ML-1M's first rating
JOIN_END=978307199        # 2000-12-31 23:59:59 UTC
LAST_TIME=1046454590      # 2003-02-28 17:49:50 UTC, ML-1M's last rating
SHARE_FEMALE=0.28295      # 1,709 of 6,040
AGE_GROUPS='1,18,25,35,45,50,56'
AGE_CUM='0.03675,0.21937,0.56639,0.76391,0.85497,0.93709'
OCCUPATION_CUM='0.11772,0.20513,0.24934,0.27798,0.40364,0.42219,0.46126,0.57368,0.57649,0.59172,0.62401,0.64536,0.7096,0.73311,0.78311,0.80695,0.84685,0.92997,0.94156,0.95348'
GENRES="'Action','Adventure','Animation','Children''s','Comedy','Crime','Documentary','Drama','Fantasy','Film-Noir','Horror','Musical','Mystery','Romance','Sci-Fi','Thriller','War','Western'"
GENRE_FREQ='0.1295,0.0729,0.027,0.0646,0.309,0.0543,0.0327,0.4128,0.0175,0.0113,0.0883,0.0294,0.0273,0.1213,0.0711,0.1267,0.0368,0.0175'
GENRE_COUNT_CUM='0.52151,0.86196,0.97038,0.99614,0.99974'
YEAR_P='0,0.05,0.1,0.25,0.5,0.75,0.9,1'
YEAR_Q='1919,1946,1959,1982,1994,1997,1999,2000'

# Rows of (user_id, rank, n) from the query $1 (n: the rating's place, 1..c,
# in the user's draw order) as ratings rows: the movie id of the popularity
# rank, the rating from the user's and the movie's latent normals and a noise
# hashed from (user, rank), and the time of the rating's page in the user's
# span.  The top-up rows follow the same law.
final_select() {
    cat <<SQL
SELECT user_id, ((rank::bigint * 1000003 + $movie_offset) % $movies_table + 1)::int AS movie_id,
       (1 + pg_catalog.width_bucket(
            0.45 * zu
            + 0.55 * sqrt(-2 * ln(pg_temp.gen_u(rank, $S_ZM))) * cos(2 * pi() * pg_temp.gen_u(rank, $S_ZM2))
            + 0.7036 * sqrt(-2 * ln(pg_temp.gen_u(key, $S_NOISE))) * cos(2 * pi() * pg_temp.gen_u(key, $S_NOISE2)),
            ARRAY[$RATING_CUTS]::float8[]))::real AS rating,
       t0 + floor(span * (q[i + 1] + (q[i + 2] - q[i + 1]) * (w - i)))::bigint AS unix_timestamp
FROM (SELECT *, least(floor(w)::int, 39) AS i, ARRAY[$RELATIVE_POSITION_Q]::float8[] AS q
      FROM (SELECT p.user_id, p.rank, g.zu, g.t0, g.span,
                   p.user_id::bigint * 16777216 + p.rank AS key,
                   40 * (0.5 - sin(asin(1 - 2 * least(floor((p.n - 1) * 0.5)
                                                      / greatest(floor((g.c - 1) * 0.5), 1), 1)) / 3)) AS w
            FROM ($1) p JOIN pg_temp.gen_users g USING (user_id)
            OFFSET 0) a
      OFFSET 0) b
SQL
}

movie_offset="(pg_catalog.hashint8extended(0, $S_OFFSET) & 1073741823) % $movies_table"
movie_id_of_rank="((rank::bigint * 1000003 + $movie_offset) % $movies_table + 1)::int"


generate_sql() {
    cat <<SQL
SET client_min_messages = warning;
SET work_mem = '512MB';
SELECT extract(epoch FROM clock_timestamp()) AS t_start \gset
-- The tables exactly as scripts/load_movielens.sh makes them.
CREATE TABLE IF NOT EXISTS users (
    user_id integer PRIMARY KEY, sex text, age_group integer, occupation integer, zip_code text);
CREATE TABLE IF NOT EXISTS movies (
    movie_id integer PRIMARY KEY, title text NOT NULL, genres text[] NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS ratings (
    user_id integer NOT NULL, movie_id integer NOT NULL, rating real NOT NULL,
    unix_timestamp bigint NOT NULL);
TRUNCATE users, movies, ratings;
-- Rebuilt after the load, as the loader does.
DROP INDEX IF EXISTS ratings_user_time_idx;

-- A uniform number in (0, 1): 53 bits of the hash of key in stream salt.
CREATE FUNCTION pg_temp.gen_u(key bigint, salt bigint) RETURNS float8
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS 'SELECT ((pg_catalog.hashint8extended(key, salt) & 9007199254740991)::float8 + 0.5) / 9007199254740992.0';

-- Users: the count (a stratified draw of ML-1M's quantiles over a
-- permutation of the ids, log-interpolated, capped).
CREATE TEMP TABLE gen_users_raw ON COMMIT DROP AS
SELECT user_id, p, least(exp(ln(q[i + 1]) + (ln(q[i + 2]) - ln(q[i + 1])) * (w - i)), $cap) AS c_raw
FROM (SELECT *, least(floor(w)::int, 99) AS i, ARRAY[$USER_COUNT_Q]::float8[] AS q
      FROM (SELECT user_id, p, 100 * (0.5 - sin(asin(1 - 2 * p) / 3)) AS w
            FROM (SELECT user_id,
                         ((((user_id - 1)::bigint * 1000003
                            + (pg_catalog.hashint8extended(0, $S_PERM) & 1073741823)) % $users) + 0.5) / $users AS p
                  FROM generate_series(1, $users) user_id) a
            OFFSET 0) b
      OFFSET 0) c;

-- The counts rescaled above the minimum of 20 to add up to $ratings exactly
-- (largest-remainder rounding of the cumulative sums); the draws asked of
-- the popularity law (more for a user who rates a larger part of the
-- catalogue, where repeats are frequent); the user's latent rating bias,
-- first rating time and span.
CREATE TEMP TABLE gen_users ON COMMIT DROP AS
SELECT user_id, c,
       ceil(c * (1.05 + 2 * (c::float8 / $movies) + 10 * (c::float8 / $movies) ^ 2))::int AS n_draw,
       sqrt(-2 * ln(pg_temp.gen_u(user_id, $S_ZU))) * cos(2 * pi() * pg_temp.gen_u(user_id, $S_ZU2)) AS zu,
       t0, least(exp(ln(sq[j + 1]) + (ln(sq[j + 2]) - ln(sq[j + 1])) * (w2 - j)), $LAST_TIME - t0) AS span
FROM (SELECT *, least(floor(w2)::int, 39) AS j, ARRAY[$USER_SPAN_Q]::float8[] AS sq
      FROM (SELECT user_id, c, t0, 40 * (0.5 - sin(asin(1 - 2 * ps) / 3)) AS w2
            FROM (SELECT user_id,
                         (20 + coalesce(floor(($ratings - 20 * $users)::numeric * cum / nullif(total, 0))
                                        - floor(($ratings - 20 * $users)::numeric * (cum - extra) / nullif(total, 0)), 0))::int AS c,
                         $FIRST_TIME + floor(pg_temp.gen_u(user_id, $S_T0) * ($JOIN_END - $FIRST_TIME))::bigint AS t0,
                         CASE WHEN pg_temp.gen_u(user_id, $S_MIX) < 0.6 THEN p
                              ELSE pg_temp.gen_u(user_id, $S_SPAN) END AS ps
                  FROM (SELECT user_id, p, extra,
                               sum(extra) OVER (ORDER BY user_id) AS cum, sum(extra) OVER () AS total
                        FROM (SELECT user_id, p, round(c_raw)::bigint - 20 AS extra FROM gen_users_raw) e) r) s
            OFFSET 0) t
      OFFSET 0) u;
ANALYZE gen_users;
DO \$\$
BEGIN
    IF (SELECT max(c) FROM gen_users) > $movies THEN
        RAISE EXCEPTION 'a user would need % ratings of % movies: pass a larger --movies',
            (SELECT max(c) FROM gen_users), $movies;
    END IF;
END
\$\$;

INSERT INTO users
SELECT user_id,
       CASE WHEN pg_temp.gen_u(user_id, $S_SEX) < $SHARE_FEMALE THEN 'F' ELSE 'M' END,
       (ARRAY[$AGE_GROUPS])[1 + pg_catalog.width_bucket(pg_temp.gen_u(user_id, $S_AGE), ARRAY[$AGE_CUM]::float8[])],
       pg_catalog.width_bucket(pg_temp.gen_u(user_id, $S_OCC), ARRAY[$OCCUPATION_CUM]::float8[]),
       lpad(floor(pg_temp.gen_u(user_id, $S_ZIP) * 100000)::int::text, 5, '0')
FROM gen_users ORDER BY user_id;

-- Movies: rank r (0 = most rated; ranks from $movies on are never rated) is
-- movie id (r * 1000003 + offset) mod $movies_table + 1, a permutation.
-- Genres: k of them (ML-1M's counts), Efraimidis-Spirakis by frequency.
INSERT INTO movies
SELECT movie_id,
       format('Movie %s (%s)', movie_id,
              round(yq[yi] + (yq[yi + 1] - yq[yi]) * (yu - yp[yi]) / (yp[yi + 1] - yp[yi]))),
       (SELECT coalesce(array_agg(name ORDER BY g), '{}')
        FROM (SELECT g, name
              FROM unnest(ARRAY[$GENRES], ARRAY[$GENRE_FREQ]::float8[]) WITH ORDINALITY AS x(name, freq, g)
              ORDER BY ln(pg_temp.gen_u(rank::bigint * 32 + g, $S_GENRE)) / freq DESC
              LIMIT k) chosen)
FROM (SELECT rank, $movie_id_of_rank AS movie_id,
             1 + pg_catalog.width_bucket(pg_temp.gen_u(rank, $S_NGEN), ARRAY[$GENRE_COUNT_CUM]::float8[]) AS k,
             pg_temp.gen_u(rank, $S_YEAR) AS yu,
             pg_catalog.width_bucket(pg_temp.gen_u(rank, $S_YEAR), ARRAY[$YEAR_P]::float8[]) AS yi,
             ARRAY[$YEAR_P]::float8[] AS yp, ARRAY[$YEAR_Q]::float8[] AS yq
      FROM generate_series(0, $movies_table - 1) rank) m
ORDER BY movie_id;
SELECT extract(epoch FROM clock_timestamp()) AS t_ratings \gset

-- Ratings: each user's first c distinct movies of n_draw draws from the
-- popularity law (successive sampling: by popularity, without replacement).
INSERT INTO ratings
$(final_select "
    SELECT user_id, rank, n FROM (
        SELECT user_id, rank, c, row_number() OVER (PARTITION BY user_id ORDER BY j) AS n
        FROM (SELECT DISTINCT ON (user_id, rank) user_id, rank, j, c
              FROM (SELECT user_id, j, c,
                           least(floor((x[i + 1] + (x[i + 2] - x[i + 1]) * (w - i)) * $movies)::int, $movies - 1) AS rank
                    FROM (SELECT *, least(floor(w)::int, 199) AS i, ARRAY[$POPULARITY_X]::float8[] AS x
                          FROM (SELECT g.user_id, j, g.c,
                                       200 * (0.5 - sin(asin(1 - 2 * pg_temp.gen_u(g.user_id::bigint * 16777216 + j, $S_DRAW)) / 3)) AS w
                                FROM pg_temp.gen_users g, generate_series(1, g.n_draw) j
                                OFFSET 0) a
                          OFFSET 0) b) d
              ORDER BY user_id, rank, j) e) f
    WHERE n <= c");

-- The rare user whose draws held fewer distinct movies than the count:
-- topped up with unrated movies, Efraimidis-Spirakis keys of weight 1/(rank+1).
CREATE TEMP TABLE gen_short ON COMMIT DROP AS
SELECT g.user_id, g.c, g.c - coalesce(r.n, 0) AS short
FROM pg_temp.gen_users g
LEFT JOIN (SELECT user_id, count(*) AS n FROM ratings GROUP BY user_id) r USING (user_id)
WHERE g.c > coalesce(r.n, 0);
INSERT INTO ratings
$(final_select "
    SELECT user_id, rank, c - short + n AS n FROM (
        SELECT s.user_id, rank, s.c, s.short,
               row_number() OVER (PARTITION BY s.user_id
                                  ORDER BY ln(pg_temp.gen_u(s.user_id::bigint * 16777216 + rank, $S_TOPUP)) * (rank + 1) DESC) AS n
        FROM pg_temp.gen_short s CROSS JOIN generate_series(0, $movies - 1) rank
        WHERE NOT EXISTS (SELECT FROM ratings r
                          WHERE r.user_id = s.user_id AND r.movie_id = $movie_id_of_rank)) t
    WHERE n <= short");
SELECT extract(epoch FROM clock_timestamp()) AS t_index \gset

-- Serves bst_predict's "latest ratings of this user" as an index-only scan
-- in the history's order (time, then movie and rating, newest first), so
-- that no sort runs per call.
CREATE INDEX ratings_user_time_idx ON ratings (user_id, unix_timestamp, movie_id, rating);
ANALYZE users;
ANALYZE movies;
ANALYZE ratings;
SELECT format('generate_ratings: %s users, %s movies (%s rated), %s ratings (%s topped up); seed $seed',
              (SELECT count(*) FROM users), (SELECT count(*) FROM movies),
              (SELECT count(DISTINCT movie_id) FROM ratings), (SELECT count(*) FROM ratings),
              (SELECT coalesce(sum(short), 0) FROM pg_temp.gen_short)) AS summary,
       format('generate_ratings: done in %s s (users and movies %s s, ratings %s s, index and statistics %s s)',
              round(extract(epoch FROM clock_timestamp()) - :t_start, 1),
              round(:t_ratings - :t_start, 1), round(:t_index - :t_ratings, 1),
              round(extract(epoch FROM clock_timestamp()) - :t_index, 1)) AS timing \gset
\echo :summary
\echo :timing
SQL
}

# ML-1M's figures beside the generated ones.
report_sql() {
    cat <<'SQL'
SET client_min_messages = warning;
\pset footer off
\echo 'generated beside ML-1M (ml-1m: ratings of ml-1m-shuffled; times of ml-1m-partial, users 1..533)'
WITH per_user AS (SELECT user_id, count(*) AS n, min(unix_timestamp) AS first, max(unix_timestamp) AS last,
                         avg((unix_timestamp - min_t < 3600)::int) AS first_hour
                  FROM (SELECT *, min(unix_timestamp) OVER (PARTITION BY user_id) AS min_t FROM ratings) r
                  GROUP BY user_id),
     per_movie AS (SELECT movie_id, count(*) AS n FROM ratings GROUP BY movie_id),
     ranked AS (SELECT n, row_number() OVER (ORDER BY n DESC) AS r, sum(n) OVER (ORDER BY n DESC ROWS UNBOUNDED PRECEDING) AS cum FROM per_movie),
     total AS (SELECT count(*) AS n FROM ratings)
SELECT * FROM (VALUES
  ('users', (SELECT count(*) FROM per_user)::text, '6040'),
  ('rated movies / movies', (SELECT count(*) FROM per_movie) || ' / ' || (SELECT count(*) FROM movies), '3706 / 3883'),
  ('ratings', (SELECT n FROM total)::text, '1000209'),
  ('ratings per user: min, median, mean, p90, max',
   (SELECT concat_ws(', ', min(n), percentile_disc(0.5) WITHIN GROUP (ORDER BY n), round(avg(n), 1),
                     percentile_disc(0.9) WITHIN GROUP (ORDER BY n), max(n)) FROM per_user),
   '20, 96, 165.6, 400, 2314'),
  ('ratings per movie: max, median, mean; movies with 1',
   (SELECT concat_ws(', ', max(n), percentile_cont(0.5) WITHIN GROUP (ORDER BY n), round(avg(n), 1)) || '; ' ||
           count(*) FILTER (WHERE n = 1) FROM per_movie),
   '3428, 123.5, 269.9; 114'),
  ('movies holding 50% / 90% of the ratings',
   (SELECT round(100.0 * min(r) FILTER (WHERE cum >= 0.5 * (SELECT n FROM total)) / count(*), 1) || '% / ' ||
           round(100.0 * min(r) FILTER (WHERE cum >= 0.9 * (SELECT n FROM total)) / count(*), 1) || '%' FROM ranked),
   '12.2% / 45.4%'),
  ('ratings 1..5, %',
   (SELECT string_agg(round(100.0 * n / (SELECT n FROM total), 2)::text, ', ' ORDER BY rating)
    FROM (SELECT rating, count(*) AS n FROM ratings GROUP BY rating) x),
   '5.62, 10.75, 26.11, 34.89, 22.63'),
  ('first and last rating',
   (SELECT to_timestamp(min(unix_timestamp))::date || ' .. ' || to_timestamp(max(unix_timestamp))::date FROM ratings),
   '2000-04-25 .. 2003-02-28'),
  ('user span: median, p90 (days)',
   (SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY (last - first) / 86400.0)::numeric, 3) || ', ' ||
           round(percentile_cont(0.9) WITHIN GROUP (ORDER BY (last - first) / 86400.0)::numeric, 1) FROM per_user),
   '0.041, 415.1'),
  ('share of a user''s ratings in its first hour (mean)',
   (SELECT round(avg(first_hour), 3)::text FROM per_user), '0.731'),
  ('ratings at the second of an earlier one of their user',
   (SELECT round(1 - count(DISTINCT (user_id, unix_timestamp))::numeric / count(*), 3)::text FROM ratings), '0.498'),
  ('users F; age groups 1/18/25/35/45/50/56, %',
   (SELECT round(100.0 * avg((sex = 'F')::int), 1) || '; ' ||
           (SELECT string_agg(round(100.0 * n / (SELECT count(*) FROM users), 1)::text, '/' ORDER BY age_group)
            FROM (SELECT age_group, count(*) AS n FROM users GROUP BY age_group) a) FROM users),
   '28.3; 3.7/18.3/34.7/19.8/9.1/8.2/6.3'),
  ('genres per movie (mean); Drama, Comedy share',
   (SELECT round(avg(cardinality(genres)), 3) || '; ' || round(avg(('Drama' = ANY (genres))::int), 3) || ', ' ||
           round(avg(('Comedy' = ANY (genres))::int), 3) FROM movies),
   '1.650; 0.413, 0.309')
) AS t(figure, generated, "ML-1M");
SQL
}

generate_sql | psql -X -q -v ON_ERROR_STOP=1 --single-transaction ||
    die "generating $ratings ratings failed; nothing was changed"
if [ "$report" = 1 ]; then
    report_sql | psql -X -q -v ON_ERROR_STOP=1
fi

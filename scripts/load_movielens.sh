#!/usr/bin/env bash
# Load a MovieLens directory into the tables users, movies and ratings.
#
#   scripts/load_movielens.sh DIR
#
# Connects with the usual libpq environment (PGHOST, PGPORT, PGDATABASE,
# PGUSER).  Understands the three MovieLens layouts:
#   ML-1M            ratings.dat, users.dat, movies.dat  ('::'-separated, movies Latin-1)
#   ML-100K          u.data (tabs), u.user, u.item, u.occupation ('|'-separated, Latin-1)
#   ml-latest-small  ratings.csv, movies.csv (CSV with a header; no users)
# Every file is checked line by line before anything is written, so a
# malformed line is reported with its file and line number, and the load is
# one transaction: the tables are replaced whole or not at all.
#
# ML-100K has exact ages and occupation names where ML-1M has age groups and
# occupation codes; they are mapped onto ML-1M's scheme (age group = the
# lower bound of the ML-1M bracket; occupation = 0-based line in
# u.occupation) so that every layout fills the same columns.
set -euo pipefail

die() { echo "load_movielens: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: load_movielens.sh MOVIELENS_DIR"
dir=${1%/}
[ -d "$dir" ] || die "$dir: no such directory"

need() { [ -f "$dir/$1" ] || die "$dir/$1: missing file (expected for the $2 layout)"; }

if [ -f "$dir/ratings.dat" ] || [ -f "$dir/movies.dat" ]; then
    layout=ml-1m
    need ratings.dat ML-1M; need users.dat ML-1M; need movies.dat ML-1M
elif [ -f "$dir/u.data" ]; then
    layout=ml-100k
    need u.data ML-100K; need u.user ML-100K; need u.item ML-100K; need u.occupation ML-100K
elif [ -f "$dir/ratings.csv" ]; then
    layout=ml-latest-small
    need ratings.csv ml-latest-small; need movies.csv ml-latest-small
else
    die "$dir: no MovieLens files found (looked for ratings.dat, u.data, ratings.csv)"
fi

work=$(mktemp -d /tmp/bst-load.XXXXXX)
trap 'rm -rf "$work"' EXIT
start_ns=$(date +%s%N)

# Each converter reads one file and writes COPY text format (tab-separated)
# to stdout; on a malformed line it names file and line and exits 1.
# Shared awk helpers: integer and rating checks, COPY text escaping.
awk_lib='
function fail(msg) { printf "%s: line %d: %s: %s\n", FILENAME, FNR, msg, $0 > "/dev/stderr"; bad = 1; exit 1 }
function int_ok(s) { return s ~ /^-?[0-9]+$/ }
function num_ok(s) { return s ~ /^[0-9]+(\.[0-9]+)?$/ }
function esc(s) { gsub(/\\/, "\\\\", s); gsub(/\t/, "\\t", s); return s }
function genres_array(s,    n, g, i, out) {
    if (s == "" || s == "(no genres listed)") return "{}"
    n = split(s, g, "|"); out = ""
    for (i = 1; i <= n; i++) { gsub(/["\\]/, "\\\\&", g[i]); out = out (i > 1 ? "," : "") "\"" g[i] "\"" }
    return "{" esc(out) "}"
}
END { if (!bad && NR == 0) { printf "%s: empty file\n", FILENAME > "/dev/stderr"; exit 1 } }
'

ratings_check='
    if (!int_ok(u)) fail("user id is not an integer")
    if (!int_ok(m)) fail("movie id is not an integer")
    if (!num_ok(r)) fail("rating is not a number")
    if (!int_ok(t)) fail("timestamp is not an integer")
    print u "\t" m "\t" r "\t" t'

case $layout in
ml-1m)
    awk -F'::' "$awk_lib"'
        NF != 4 { fail("expected UserID::MovieID::Rating::Timestamp") }
        { u = $1; m = $2; r = $3; t = $4; sub(/\r$/, "", t); '"$ratings_check"' }' \
        "$dir/ratings.dat" >"$work/ratings"
    awk -F'::' "$awk_lib"'
        { sub(/\r$/, "") }
        NF != 5 { fail("expected UserID::Gender::Age::Occupation::Zip-code") }
        !int_ok($1) || !int_ok($3) || !int_ok($4) { fail("user id, age and occupation must be integers") }
        { print $1 "\t" $2 "\t" $3 "\t" $4 "\t" esc($5) }' \
        "$dir/users.dat" >"$work/users"
    iconv -f LATIN1 -t UTF-8 "$dir/movies.dat" | awk -F'::' -v FILENAME_="$dir/movies.dat" "$awk_lib"'
        { FILENAME = FILENAME_; sub(/\r$/, "") }
        NF != 3 { fail("expected MovieID::Title::Genres") }
        !int_ok($1) { fail("movie id is not an integer") }
        { print $1 "\t" esc($2) "\t" genres_array($3) }' >"$work/movies"
    ;;
ml-100k)
    awk -F'\t' "$awk_lib"'
        NF != 4 { fail("expected user id, item id, rating, timestamp separated by tabs") }
        { u = $1; m = $2; r = $3; t = $4; sub(/\r$/, "", t); '"$ratings_check"' }' \
        "$dir/u.data" >"$work/ratings"
    awk -F'|' "$awk_lib"'
        { sub(/\r$/, "") }
        FILENAME == ARGV[1] { if ($1 != "") occupation[$1] = FNR - 1; next }
        NF != 5 { fail("expected user id|age|gender|occupation|zip code") }
        !int_ok($1) || !int_ok($2) { fail("user id and age must be integers") }
        !($4 in occupation) { fail("occupation not listed in u.occupation") }
        {
            age = $2 + 0
            group = age < 18 ? 1 : age < 25 ? 18 : age < 35 ? 25 : age < 45 ? 35 : age < 50 ? 45 : age < 56 ? 50 : 56
            print $1 "\t" $3 "\t" group "\t" occupation[$4] "\t" esc($5)
        }' \
        "$dir/u.occupation" "$dir/u.user" >"$work/users"
    iconv -f LATIN1 -t UTF-8 "$dir/u.item" | awk -F'|' -v FILENAME_="$dir/u.item" "$awk_lib"'
        BEGIN {
            split("unknown|Action|Adventure|Animation|Children'"'"'s|Comedy|Crime|Documentary|Drama|Fantasy|Film-Noir|Horror|Musical|Mystery|Romance|Sci-Fi|Thriller|War|Western", genre, "|")
        }
        { FILENAME = FILENAME_; sub(/\r$/, "") }
        NF != 24 { fail("expected 5 fields and 19 genre flags separated by |") }
        !int_ok($1) { fail("movie id is not an integer") }
        {
            g = ""
            for (i = 1; i <= 19; i++) {
                if ($(i + 5) !~ /^[01]$/) fail("genre flags must be 0 or 1")
                if ($(i + 5) == 1) g = g (g == "" ? "" : "|") genre[i]
            }
            print $1 "\t" esc($2) "\t" genres_array(g)
        }' >"$work/movies"
    ;;
ml-latest-small)
    # Quoted CSV titles are left to COPY's CSV parser; the ratings file has
    # no quoting and is checked here like the others.
    awk -F',' "$awk_lib"'
        FNR == 1 { if ($0 !~ /^userId,movieId,rating,timestamp/) fail("expected the header userId,movieId,rating,timestamp"); next }
        NF != 4 { fail("expected userId,movieId,rating,timestamp") }
        { u = $1; m = $2; r = $3; t = $4; sub(/\r$/, "", t); '"$ratings_check"' }' \
        "$dir/ratings.csv" >"$work/ratings"
    : >"$work/users"
    # COPY reads it from the work directory, whose name needs no quoting.
    cp "$dir/movies.csv" "$work/movies.csv"
    ;;
esac

echo "load_movielens: read $layout files from $dir" >&2

{
    cat <<'SQL'
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS users (
    user_id integer PRIMARY KEY, sex text, age_group integer, occupation integer, zip_code text);
CREATE TABLE IF NOT EXISTS movies (
    movie_id integer PRIMARY KEY, title text NOT NULL, genres text[] NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS ratings (
    user_id integer NOT NULL, movie_id integer NOT NULL, rating real NOT NULL,
    unix_timestamp bigint NOT NULL);
TRUNCATE users, movies, ratings;
-- Rebuilt after the load: one sorted build beats a million index inserts.
DROP INDEX IF EXISTS ratings_user_time_idx;
SQL
    echo "\\copy users FROM '$work/users'"
    if [ "$layout" = ml-latest-small ]; then
        echo "CREATE TEMP TABLE movies_csv (movie_id integer, title text, genres text);"
        echo "\\echo reading movies.csv (COPY line numbers below are the file lines)"
        echo "\\copy movies_csv FROM '$work/movies.csv' WITH (FORMAT csv, HEADER true)"
        echo "INSERT INTO movies SELECT movie_id, title,
                CASE WHEN genres = '(no genres listed)' THEN '{}' ELSE string_to_array(genres, '|') END
              FROM movies_csv;"
    else
        echo "\\copy movies FROM '$work/movies'"
    fi
    echo "\\copy ratings FROM '$work/ratings'"
    cat <<'SQL'
-- Serves bst_predict's "latest ratings of this user" as an index-only scan
-- in the history's order (time, then movie and rating, newest first), so
-- that no sort runs per call.
CREATE INDEX ratings_user_time_idx ON ratings (user_id, unix_timestamp, movie_id, rating);
ANALYZE users;
ANALYZE movies;
ANALYZE ratings;
SELECT format('load_movielens: %s users, %s movies, %s ratings',
              (SELECT count(*) FROM users), (SELECT count(*) FROM movies),
              (SELECT count(*) FROM ratings)) AS loaded \gset
\echo :loaded
SQL
} >"$work/load.sql"

psql -X -q -v ON_ERROR_STOP=1 --single-transaction -f "$work/load.sql" ||
    die "loading $dir failed; nothing was changed"

elapsed_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
printf 'load_movielens: done in %d.%03d s\n' $((elapsed_ms / 1000)) $((elapsed_ms % 1000)) >&2

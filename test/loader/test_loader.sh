#!/usr/bin/env bash
# Tests of scripts/load_movielens.sh: every MovieLens layout on small
# generated files, malformed lines and missing files, then the real
# MovieLens sets where ../shared/data (or $BST_MOVIELENS_ROOT) has them.
# Needs the libpq environment of a running cluster with bst installed.
set -uo pipefail
cd "$(dirname "$0")/../.."

loader=scripts/load_movielens.sh
data_root=${BST_MOVIELENS_ROOT:-../shared/data}
db=bst_loader
export PGDATABASE=$db
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" || exit 1
psql -X -q -c "CREATE EXTENSION bst" || exit 1

work=$(mktemp -d /tmp/bst-loader-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); }
not_ok() { failed=$((failed + 1)); echo "not ok: $*" >&2; }

# check "description" "SQL returning one value" "expected value"
check() {
    local got
    got=$(psql -X -At -c "$2" 2>&1)
    if [ "$got" = "$3" ]; then ok; else not_ok "$1: expected '$3', got '$got'"; fi
}

# load_fails "description" DIR "text the error must contain"
load_fails() {
    local out
    if out=$("$loader" "$2" 2>&1); then
        not_ok "$1: the load succeeded"
    elif grep -qF -- "$3" <<<"$out"; then ok
    else not_ok "$1: error lacks '$3': $out"
    fi
}

# --- ML-1M layout: '::' separated, Latin-1 titles -------------------------
mkdir "$work/ml1m"
printf '1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n' >"$work/ml1m/ratings.dat"
printf '1::F::1::10::48067\n2::M::56::16::70072\n' >"$work/ml1m/users.dat"
printf '1193::One Flew Over the Cuckoo'"'"'s Nest (1975)::Drama\n661::Mis\xe9rables, Les (1995)::Drama|Musical\n' >"$work/ml1m/movies.dat"
if "$loader" "$work/ml1m" >/dev/null 2>&1; then ok; else not_ok "ML-1M layout loads"; fi
check "ML-1M ratings" "SELECT count(*) || ' ' || sum(rating) FROM ratings" "3 12"
check "ML-1M users" "SELECT string_agg(user_id || sex || age_group || '/' || occupation || '/' || zip_code, ',' ORDER BY user_id) FROM users" "1F1/10/48067,2M56/16/70072"
check "ML-1M Latin-1 title" "SELECT title FROM movies WHERE movie_id = 661" "Misérables, Les (1995)"
check "ML-1M genres" "SELECT genres::text FROM movies WHERE movie_id = 661" "{Drama,Musical}"
check "ML-1M index" "SELECT count(*) FROM pg_indexes WHERE tablename = 'ratings' AND indexdef LIKE '%(user_id, unix_timestamp%'" "1"

# --- ML-100K layout ---------------------------------------------------------
mkdir "$work/ml100k"
printf '1\t10\t4\t881250949\n1\t11\t3\t881250950\n2\t10\t5\t881250951\n2\t11\t1\t881250952\n2\t12\t2\t881250953\n' >"$work/ml100k/u.data"
printf '1|24|M|technician|85711\n2|53|F|other|94043\n' >"$work/ml100k/u.user"
printf 'administrator\nother\ntechnician\n' >"$work/ml100k/u.occupation"
flags() { printf '|%s' "$@"; }
{
    printf '10|Cin\xe9ma (1995)|01-Jan-1995||http://x%s\n' "$(flags 0 1 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0)"
    printf '11|Plain (1996)|01-Jan-1996||http://y%s\n' "$(flags 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0)"
    printf '12|Noir (1997)|01-Jan-1997||http://z%s\n' "$(flags 0 0 0 0 0 0 0 0 0 0 1 0 0 0 0 0 0 0 1)"
} >"$work/ml100k/u.item"
if "$loader" "$work/ml100k" >/dev/null 2>&1; then ok; else not_ok "ML-100K layout loads"; fi
check "ML-100K replaces the previous load" "SELECT count(*) FROM ratings" "5"
check "ML-100K age groups and occupations" "SELECT string_agg(user_id || ':' || age_group || ':' || occupation, ',' ORDER BY user_id) FROM users" "1:18:2,2:50:1"
check "ML-100K genres" "SELECT string_agg(genres::text, ' ' ORDER BY movie_id) FROM movies" "{Action,Children's} {unknown} {Film-Noir,Western}"
check "ML-100K Latin-1 title" "SELECT title FROM movies WHERE movie_id = 10" "Cinéma (1995)"

# --- ml-latest-small layout: CSV, half-star ratings, no users -------------
mkdir "$work/small"
# A quote in the directory name must not break the generated COPY commands.
mkdir "$work/it's small"
printf 'userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,0.5,964981247\n' >"$work/small/ratings.csv"
printf 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"American President, The (1995)",(no genres listed)\n' >"$work/small/movies.csv"
cp "$work/small/"* "$work/it's small/"
if "$loader" "$work/it's small" >/dev/null 2>&1; then ok; else not_ok "ml-latest-small layout loads"; fi
check "ml-latest-small ratings" "SELECT string_agg(rating::text, ',' ORDER BY movie_id) FROM ratings" "4,0.5"
check "ml-latest-small quoted title" "SELECT title || genres::text FROM movies WHERE movie_id = 3" "American President, The (1995){}"
check "ml-latest-small has no users" "SELECT count(*) FROM users" "0"

# --- Errors: the file and line are named, nothing changes ------------------
cp -r "$work/ml1m" "$work/bad1m"
printf '1::1193::5::978300760\n1::xx::3::978302109\n' >"$work/bad1m/ratings.dat"
load_fails "bad movie id" "$work/bad1m" "ratings.dat: line 2: movie id is not an integer"
check "a failed load leaves the tables as they were" "SELECT count(*) FROM ratings" "2"
printf '1::1193::5\n' >"$work/bad1m/ratings.dat"
load_fails "too few fields" "$work/bad1m" "ratings.dat: line 1: expected UserID::MovieID::Rating::Timestamp"
cp "$work/ml1m/ratings.dat" "$work/bad1m/ratings.dat"
printf '1::F::1::10::48067\n2::M::old::16::70072\n' >"$work/bad1m/users.dat"
load_fails "bad age" "$work/bad1m" "users.dat: line 2: user id, age and occupation must be integers"
rm "$work/bad1m/users.dat"
load_fails "missing users.dat" "$work/bad1m" "users.dat: missing file"
cp -r "$work/ml100k" "$work/bad100k"
printf '1|24|M|astronaut|85711\n' >"$work/bad100k/u.user"
load_fails "unknown occupation" "$work/bad100k" "u.user: line 1: occupation not listed in u.occupation"
: >"$work/bad100k/u.data"
load_fails "empty ratings file" "$work/bad100k" "u.data: empty file"
printf 'administrator\r\nother\r\ntechnician\r\n' >"$work/bad100k/u.occupation"
printf '1|24|M|technician|85711\r\n' >"$work/bad100k/u.user"
cp "$work/ml100k/u.data" "$work/bad100k/u.data"
if "$loader" "$work/bad100k" >/dev/null 2>&1; then ok; else not_ok "CRLF line ends in u.user and u.occupation"; fi
check "CRLF occupation" "SELECT occupation FROM users WHERE user_id = 1" "2"
: >"$work/bad100k/u.occupation"
load_fails "empty u.occupation" "$work/bad100k" "u.user: line 1: occupation not listed in u.occupation"
load_fails "not a directory" "$work/nowhere" "no such directory"
mkdir "$work/empty"
load_fails "no MovieLens files" "$work/empty" "no MovieLens files found"

# --- The real MovieLens sets, where present --------------------------------
if [ -f "$data_root/ml-100k/u.data" ]; then
    if "$loader" "$data_root/ml-100k" >/dev/null 2>&1; then ok; else not_ok "ML-100K loads"; fi
    check "ML-100K tables" "SELECT (SELECT count(*) FROM users) || ' ' || (SELECT count(*) FROM movies) || ' ' || (SELECT count(*) FROM ratings)" "943 1682 100000"
    check "ML-100K windows and holdout" "SELECT count(*) || ' ' || count(*) FILTER (WHERE bst_holdout(user_id, movie_ids[4])) FROM bst_sequences('ratings')" "49760 7550"
else
    echo "skipped: ML-100K checks ($data_root/ml-100k not found)"
fi
if [ -f "$data_root/ml-1m-shuffled/ratings.dat" ]; then
    start_ms=$(date +%s%3N)
    if "$loader" "$data_root/ml-1m-shuffled" >/dev/null 2>&1; then ok; else not_ok "ml-1m-shuffled loads"; fi
    echo "ml-1m-shuffled loaded in $(( $(date +%s%3N) - start_ms )) ms"
    check "ML-1M tables" "SELECT (SELECT count(*) FROM users) || ' ' || (SELECT count(*) FROM movies) || ' ' || (SELECT count(*) FROM ratings)" "6040 3883 1000209"
    check "ML-1M windows" "SELECT count(*) FROM bst_sequences('ratings')" "498623"
else
    echo "skipped: ML-1M scale checks ($data_root/ml-1m-shuffled not found)"
fi
if [ -f "$data_root/ml-1m-partial/ratings_head_users_1-533.dat" ] && [ -f "$data_root/ml-1m/movies.dat" ]; then
    mkdir "$work/partial"
    ln -s "$(realpath "$data_root/ml-1m-partial/ratings_head_users_1-533.dat")" "$work/partial/ratings.dat"
    ln -s "$(realpath "$data_root/ml-1m/users.dat")" "$work/partial/users.dat"
    ln -s "$(realpath "$data_root/ml-1m/movies.dat")" "$work/partial/movies.dat"
    if "$loader" "$work/partial" >/dev/null 2>&1; then ok; else not_ok "the original ML-1M files load"; fi
    check "ML-1M original files" "SELECT (SELECT count(*) FROM users) || ' ' || (SELECT count(*) FROM movies) || ' ' || (SELECT count(*) FROM ratings) || ' ' || (SELECT count(DISTINCT user_id) FROM ratings)" "6040 3883 80496 533"
    check "ML-1M first rating" "SELECT user_id || '::' || movie_id || '::' || rating || '::' || unix_timestamp FROM ratings WHERE user_id = 1 AND movie_id = 1193" "1::1193::5::978300760"
    check "ML-1M Latin-1 title" "SELECT title FROM movies WHERE movie_id = 73" "Misérables, Les (1995)"
else
    echo "skipped: original ML-1M format checks ($data_root/ml-1m-partial or ml-1m not found)"
fi

psql -X -q -d postgres -c "DROP DATABASE $db"
echo "test_loader: $passed passed, $failed failed"
[ "$failed" = 0 ]

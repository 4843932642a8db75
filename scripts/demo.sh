#!/usr/bin/env bash
# The main job, end to end, on a throwaway cluster:
#   scripts/demo.sh [MOVIELENS_DIR]
# installs what is missing, builds and installs bst, starts a private
# cluster, loads MovieLens (ML-1M downloaded from GroupLens where the network
# allows, else the local ../shared/data/ml-100k, or the directory given),
# builds the rating sequences and the 85/15 split, trains BST, evaluates it
# on the held-out windows, shows a few predictions, and stops the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
BST_PORT=${BST_PORT:-54339}   # not the test suite's port: both may run at once
source scripts/lib.sh
BST_PACKAGES="$BST_PACKAGES curl unzip ca-certificates gnuplot-nox"

ML1M_URL=https://files.grouplens.org/datasets/movielens/ml-1m.zip
FALLBACK_DIR=../shared/data/ml-100k

ensure_packages
build_install
trap cluster_stop EXIT
trap 'exit 130' INT TERM

if [ $# -ge 1 ]; then
    data_dir=$1
    log "using the MovieLens directory given: $data_dir"
else
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/bst
    if [ -f "$cache/ml-1m/ratings.dat" ]; then
        data_dir=$cache/ml-1m
        log "using ML-1M downloaded earlier: $data_dir"
    elif mkdir -p "$cache" && curl -fsSL --max-time 120 -o "$cache/ml-1m.zip" "$ML1M_URL" &&
            unzip -q -o "$cache/ml-1m.zip" -d "$cache"; then
        data_dir=$cache/ml-1m
        log "downloaded ML-1M from $ML1M_URL into $data_dir"
    else
        rm -f "$cache/ml-1m.zip"
        data_dir=$FALLBACK_DIR
        log "could not download ML-1M (no network?); using the local $data_dir"
    fi
fi

cluster_start
psql -X -q -c "CREATE EXTENSION bst"

# Each step is timed by psql itself and echoed as it runs.
run_sql() { psql -X -v ON_ERROR_STOP=1 --echo-queries -c '\timing on' "$@"; }

log "loading $data_dir"
scripts/load_movielens.sh "$data_dir"

log "the 85/15 split of the Keras example: its windows of 4 ratings every 2, held out by bst_holdout"
run_sql -c "CREATE TABLE windows AS
              SELECT *, bst_holdout(user_id, movie_ids[cardinality(movie_ids)]) AS held_out
              FROM bst_sequences('ratings', seq_len => 4, step => 2)" \
        -c "CREATE TABLE held_out_targets AS
              SELECT DISTINCT user_id, movie_ids[cardinality(movie_ids)] AS movie_id FROM windows WHERE held_out" \
        -c "SELECT count(*) AS windows, count(*) FILTER (WHERE held_out) AS held_out FROM windows"

log "every rating from each user's 2nd on as a target, with up to 9 ratings of history"
run_sql -c "CREATE TABLE history_windows AS
              SELECT s.*, (s.user_id, s.movie_ids[cardinality(s.movie_ids)]) IN (SELECT * FROM held_out_targets) AS held_out
              FROM bst_sequences('ratings', seq_len => 10, step => 1, min_len => 2) s" \
        -c "SELECT count(*) AS windows, count(*) FILTER (WHERE held_out) AS held_out FROM history_windows"

log "training BST with the defaults: user features, genres, bias and factor terms, AdamW, early stopping"
run_sql -c "SELECT * FROM bst_train('movielens', 'SELECT user_id, movie_ids, ratings FROM history_windows WHERE NOT held_out')"

# The training and validation curves, from bst_training_log, as a PNG.
mkdir -p bench/results
curves=$PWD/bench/results/training-curves.png
psql -X -At -F ' ' -v ON_ERROR_STOP=1 -c "SELECT epoch, train_mae, val_mae FROM bst_training_log
                       WHERE model = 'movielens' AND version = (SELECT max(version) FROM bst_models WHERE name = 'movielens')
                       ORDER BY epoch" >/tmp/bst-demo-curves.dat
gnuplot <<GNUPLOT
set terminal pngcairo size 800,500 noenhanced
set output '$curves'
set title 'bst_train "movielens": MAE per epoch (bst_training_log)'
set xlabel 'epoch'
set ylabel 'MAE'
set key bottom left
set grid
plot '/tmp/bst-demo-curves.dat' using 1:2 with linespoints title 'training (during the epoch)', \
     '' using 1:3 with linespoints title 'validation (after the epoch)'
GNUPLOT
rm -f /tmp/bst-demo-curves.dat
log "training and validation curves written to $curves"

log "evaluating on the held-out targets (each from its window of up to 10 ratings)"
run_sql -c "SELECT * FROM bst_evaluate('movielens', 'SELECT h.user_id, h.movie_ids, h.ratings
                                                   FROM windows w JOIN history_windows h
                                                     ON h.user_id = w.user_id
                                                    AND h.movie_ids[cardinality(h.movie_ids)] = w.movie_ids[4]
                                                   WHERE w.held_out')"

log "for comparison, the Keras example's recipe on its own windows"
run_sql -c "SELECT * FROM bst_train('keras_example', 'SELECT movie_ids, ratings FROM windows WHERE NOT held_out',
                                    preset => 'keras_example')" \
        -c "SELECT * FROM bst_evaluate('keras_example', 'SELECT movie_ids, ratings FROM windows WHERE held_out')"

log "a few held-out ratings, predicted"
run_sql -c "SELECT w.user_id, m.title AS target_movie, w.ratings[4] AS rating,
                   round(bst_predict('movielens', w.user_id, h.movie_ids, h.ratings)::numeric, 2) AS predicted
            FROM windows w
            JOIN history_windows h ON h.user_id = w.user_id AND h.movie_ids[cardinality(h.movie_ids)] = w.movie_ids[4]
            JOIN movies m ON m.movie_id = w.movie_ids[4]
            WHERE w.held_out ORDER BY w.user_id LIMIT 8"

log "the five movies user 1 has not rated that the model says they would like most (bst_recommend)"
run_sql -c "SELECT r.rank, r.movie_id, m.title, round(r.score::numeric, 2) AS score
            FROM bst_recommend(1, 5, model => 'movielens') r JOIN movies m USING (movie_id) ORDER BY r.rank"

log "why: where the model looked for its first recommendation (bst_explain, mean over the heads)"
run_sql -c "SELECT e.position, e.title, e.rating, round(e.attention::numeric, 3) AS attention
            FROM bst_explain(1, (SELECT movie_id FROM bst_recommend(1, 1, model => 'movielens')), 'movielens') e
            WHERE e.head IS NULL ORDER BY e.position"

log "done"

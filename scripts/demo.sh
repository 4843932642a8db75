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
BST_PACKAGES="$BST_PACKAGES curl unzip ca-certificates"

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

log "building windows of 4 ratings every 2 (the Keras example's sequences) and the 85/15 split"
run_sql -c "CREATE TABLE windows AS
              SELECT *, bst_holdout(user_id, movie_ids[cardinality(movie_ids)]) AS held_out
              FROM bst_sequences('ratings', seq_len => 4, step => 2)" \
        -c "SELECT count(*) AS windows, count(*) FILTER (WHERE held_out) AS held_out FROM windows"

log "done"

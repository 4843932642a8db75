#!/usr/bin/env bash
# How the defaults were chosen: bst_train's validation error for option sets,
# on ML-100K's P1 training windows only (the held-out targets of
# scripts/bench_quality.sh are removed first and never scored).
#
#   scripts/bench_validation.sh [DATA_ROOT] ["OPTIONS" ...]
#       DATA_ROOT defaults to $BST_MOVIELENS_ROOT, else ../shared/data
#       each OPTIONS is a list of extra bst_train arguments, e.g.
#       "learning_rate => 0.003, factors => 0"; "" is the defaults
#   BST_SEEDS="42 2 3"   seeds (default 42); the seed also draws the
#                        validation split, so compare option sets seed by seed
#   BST_L=10             window length of the training windows
#
# Prints, per option set and seed: epochs run, best epoch, validation MAE
# and RMSE of the kept epoch, seconds.  Uses the cluster of the libpq
# environment when PGHOST is set, else a throwaway one.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${BST_MOVIELENS_ROOT:-../shared/data}
if [ $# -ge 1 ] && [ -d "$1" ]; then
    root=$1
    shift
fi
[ $# -ge 1 ] || set -- ""
if [ ! -f "$root/ml-100k/u.data" ]; then
    echo "skipped: $root/ml-100k not found (set BST_MOVIELENS_ROOT or pass the data root)"
    exit 0
fi
L=${BST_L:-10}
source scripts/lib.sh
log "machine: $(machine_description)"
if [ -z "${PGHOST:-}" ]; then
    ensure_packages && build_install
    trap cluster_stop EXIT
    cluster_start
fi
export PGDATABASE=bst_bench_validation
q() { psql -X -q -At -F ' ' -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" -c "$1"; }

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $PGDATABASE" -c "CREATE DATABASE $PGDATABASE"
psql -X -q -c "CREATE EXTENSION bst"
scripts/load_movielens.sh "$root/ml-100k" >/dev/null
# P1's held-out targets: those of the (4,2) windows bst_holdout holds out.
q "CREATE TABLE held_out AS
     SELECT DISTINCT user_id, movie_ids[cardinality(movie_ids)] AS movie_id
     FROM bst_sequences('ratings', 4, 2) WHERE bst_holdout(user_id, movie_ids[cardinality(movie_ids)])"
q "CREATE TABLE train AS
     SELECT s.* FROM bst_sequences('ratings', $L, 1, min_len => 2) s
     WHERE (s.user_id, s.movie_ids[cardinality(s.movie_ids)]) NOT IN (SELECT * FROM held_out)"
echo "P1 training windows of up to $L ratings: $(q "SELECT count(*) FROM train")"
echo "| options | seed | epochs run | best epoch | validation MAE | validation RMSE | seconds |"
echo "|---|---|---|---|---|---|---|"
for opts in "$@"; do
    for seed in ${BST_SEEDS:-42}; do
        r=$(q "SELECT epochs, best_epoch, round(val_mae::numeric, 4), round(val_rmse::numeric, 4),
                      round(seconds::numeric, 1)
               FROM bst_train('v', 'SELECT user_id, movie_ids, ratings FROM train',
                              seed => $seed ${opts:+, $opts})")
        read -r epochs best mae rmse secs <<<"$r"
        echo "| ${opts:-defaults} | $seed | $epochs | $best | $mae | $rmse | $secs |"
    done
done
psql -X -q -d postgres -c "DROP DATABASE $PGDATABASE"

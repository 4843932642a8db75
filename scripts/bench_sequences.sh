#!/usr/bin/env bash
# Benchmark: building the ML-1M windows with bst_sequences.
#   scripts/bench_sequences.sh [ML1M_DIR]   (default ../shared/data/ml-1m-shuffled)
# Uses the running cluster named by the libpq environment when PGHOST is set,
# else a throwaway one. ml-1m-shuffled has ML-1M's exact per-user counts.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-../shared/data/ml-1m-shuffled}
if [ ! -f "$dir/ratings.dat" ]; then
    echo "skipped: $dir/ratings.dat not found (give an ML-1M directory)"; exit 0
fi
source scripts/lib.sh
log "machine: $(machine_description)"
if [ -z "${PGHOST:-}" ]; then
    ensure_packages && build_install
    trap cluster_stop EXIT
    cluster_start
fi
export PGDATABASE=bst_bench_sequences
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $PGDATABASE" -c "CREATE DATABASE $PGDATABASE"
psql -X -q -c "CREATE EXTENSION bst"
scripts/load_movielens.sh "$dir"
psql -X -q -c "VACUUM ANALYZE ratings"
for i in 1 2 3; do
    psql -X -c '\timing on' -c "SELECT count(*) AS windows FROM bst_sequences('ratings', 4, 2)" | grep -E '^ *[0-9]+$|^Time'
done
psql -X -q -d postgres -c "DROP DATABASE $PGDATABASE"

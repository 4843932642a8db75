#!/usr/bin/env bash
# Benchmark of the BST model: quality (protocol P1) and speed.
#   scripts/bench_model.sh [DATA_ROOT]     (default ../shared/data)
#   BST_SEEDS="1 2 3" scripts/bench_model.sh   P1 once per seed (default 42)
#
# P1, the Keras example's protocol on ML-100K: bst_sequences(ratings, 4, 2),
#   windows held out by bst_holdout, bst_train with the Keras example's
#   preset (5 epochs) on the rest, bst_evaluate on the held-out windows: MAE
#   and RMSE.  The new defaults, their ablations and the baselines are
#   measured by scripts/bench_quality.sh.
# Speed is measured on the Keras example's model too, so figures compare
# across versions.
# Speed on ml-1m-shuffled (ML-1M's shape: 498,623 windows): seconds of one
#   training epoch over all windows; bst_predict(model, movie_ids, ratings)
#   over 75,000 windows in rows/s; one bst_predict(user_id, movie_id) from a
#   warm backend, measured by pgbench (client round trip included) and
#   server-side over 10,000 calls.
# Uses the cluster of the libpq environment when PGHOST is set, else a
# throwaway one. A data set that is absent is skipped with a message.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-../shared/data}
source scripts/lib.sh
log "machine: $(machine_description)"
if [ -z "${PGHOST:-}" ]; then
    ensure_packages && build_install
    trap cluster_stop EXIT
    cluster_start
fi
PGBENCH=$PG_BIN/pgbench
export PGDATABASE=bst_bench_model

fresh_db() {
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $PGDATABASE" -c "CREATE DATABASE $PGDATABASE"
    psql -X -q -c "CREATE EXTENSION bst"
    scripts/load_movielens.sh "$1"
    psql -X -q -c "CREATE TABLE windows AS
                     SELECT *, bst_holdout(user_id, movie_ids[cardinality(movie_ids)]) AS held_out
                     FROM bst_sequences('ratings', 4, 2)" -c "VACUUM ANALYZE"
}
q() { psql -X -At -F ' ' -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" -c "$1"; }

if [ -f "$root/ml-100k/u.data" ]; then
    echo "== P1 on ML-100K (preset keras_example, 5 epochs)"
    fresh_db "$root/ml-100k"
    for seed in ${BST_SEEDS:-42}; do
        q "SELECT 'seed $seed: train: ' || training_rows || ' windows, ' || round(seconds::numeric, 1) || ' s, final loss ' || round(final_loss::numeric, 4)
           FROM bst_train('p1_$seed', 'SELECT movie_ids, ratings FROM windows WHERE NOT held_out', seed => $seed,
                          preset => 'keras_example')"
        q "SELECT 'seed $seed: test:  ' || n || ' held-out windows, MAE ' || round(mae::numeric, 4) || ', RMSE ' || round(rmse::numeric, 4)
           FROM bst_evaluate('p1_$seed', 'SELECT movie_ids, ratings FROM windows WHERE held_out')"
    done
else
    echo "skipped: P1 ($root/ml-100k not found)"
fi

if [ -f "$root/ml-1m-shuffled/ratings.dat" ]; then
    echo "== speed on ml-1m-shuffled ($(nproc) cores)"
    fresh_db "$root/ml-1m-shuffled"
    q "SELECT FROM bst_train('speed', 'SELECT movie_ids, ratings FROM windows', epochs => 1, preset => 'keras_example')"
    q "SELECT 'bst_train, 1 epoch over ' || (metrics->>'training_rows') || ' windows: '
              || round((metrics->'epochs'->0->>'seconds')::numeric, 2) || ' s in the epoch, '
              || round((metrics->>'seconds')::numeric, 2) || ' s in all (reading the query included)'
       FROM bst_models WHERE name = 'speed'"
    start=$(date +%s%N)
    q "SELECT count(bst_predict('speed', movie_ids, ratings)) FROM (SELECT * FROM windows LIMIT 75000) w" >/dev/null
    ns=$(( $(date +%s%N) - start ))
    echo "bst_predict(model, movie_ids, ratings) over 75,000 windows: $((ns / 1000000)) ms, $((75000 * 1000000000 / ns)) rows/s"
    q "SET bst.model = 'speed'; SELECT bst_predict(1, 1193)" >/dev/null
    printf '\\set u random(1, 6040)\nSELECT bst_predict(:u, 1193);\n' >/tmp/bst_bench_predict.sql
    PGOPTIONS="-c bst.model=speed" "$PGBENCH" -n -c 1 -T 5 -f /tmp/bst_bench_predict.sql 2>/dev/null |
        awk '/latency average/ { print "bst_predict(user_id, movie_id), pgbench, 1 client, round trip included: " $4 " ms per call" }'
    rm -f /tmp/bst_bench_predict.sql
    start=$(date +%s%N)
    q "SET bst.model = 'speed'; SELECT count(bst_predict(1 + (i * 7919) % 6040, 1193)) FROM generate_series(1, 10000) i" >/dev/null
    ns=$(( $(date +%s%N) - start ))
    echo "bst_predict(user_id, movie_id), 10,000 calls in one statement: $((ns / 10000 / 1000)) us per call"
    # bst_recommend over the whole vocabulary (3,706 movies on ML-1M), the
    # model already loaded: 200 users in one statement.
    q "SET bst.model = 'speed'; SELECT count(*) FROM bst_recommend(1, 10)" >/dev/null
    start=$(date +%s%N)
    q "SET bst.model = 'speed'; SELECT count(*) FROM generate_series(1, 200) u, LATERAL bst_recommend(u * 30, 10) r" >/dev/null
    ns=$(( $(date +%s%N) - start ))
    echo "bst_recommend(user_id, 10) over the $(q "SELECT config->>'n_movies' FROM bst_models WHERE name = 'speed'") movies of the vocabulary: $((ns / 200 / 1000)) us per user (200 users in one statement)"
else
    echo "skipped: speed ($root/ml-1m-shuffled not found)"
fi
psql -X -q -d postgres -c "DROP DATABASE $PGDATABASE"

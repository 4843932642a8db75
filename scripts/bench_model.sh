#!/usr/bin/env bash
# Benchmark of the BST model: quality (protocol P1) and speed.
#   scripts/bench_model.sh [DATA_ROOT]     (default ../shared/data)
#   BST_SEEDS="1 2 3" scripts/bench_model.sh   P1 once per seed (default 42)
#   BST_BENCH_WINDOWS=50000 scripts/bench_model.sh   a check run: the speed
#       trainings on the first 50,000 windows only (the floors follow;
#       the targets are for all windows)
#
# P1, the Keras example's protocol on ML-100K: bst_sequences(ratings, 4, 2),
#   windows held out by bst_holdout, bst_train with the Keras example's
#   preset (5 epochs) on the rest, bst_evaluate on the held-out windows: MAE
#   and RMSE.  The new defaults, their ablations and the baselines are
#   measured by scripts/bench_quality.sh.
# Speed on ml-1m-shuffled (ML-1M's shape: 498,623 windows), each figure
#   beside its target:
#   - one training epoch over all windows, with the Keras example's preset
#     and with bst_train's defaults (no preset: every input, bias and factor
#     terms, AdamW, validation on 10% of the windows, which the epoch's time
#     includes), each with its floor: the epoch's FLOPs (src/core/flops.h:
#     the matrix products) divided by the sgemm rate at the model's own
#     shapes on this machine, measured in the same run by test/c/bench_floor
#     with the server's OpenBLAS kernels and thread count (bst_compute_info())
#     and the model's config as stored in bst_models.config;
#   - on the Keras example's model: the time a new backend's first call
#     takes to load it; SELECT bst_predict(model, movie_ids, ratings) FROM
#     windows over all windows as the planner runs it (parallel workers when
#     it chooses them), and over 75,000 windows in one backend, in rows/s;
#     one bst_predict(user_id, movie_id) from a warm backend, measured by
#     pgbench (client round trip included) and over 10,000 calls in one
#     statement; bst_recommend over the vocabulary, with its floor (the
#     history's projections once, the rest of the forward pass per
#     candidate).  Statement times are psql's \timing in one session, after
#     a run that loads the model (the median of 3 runs, each printed).
# Uses the cluster of the libpq environment when PGHOST is set, else a
# throwaway one. A data set that is absent is skipped with a message.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-../shared/data}
limit=${BST_BENCH_WINDOWS:-}
[ -z "$limit" ] || [[ "$limit" =~ ^[1-9][0-9]*$ ]] || { echo "BST_BENCH_WINDOWS must be a positive integer" >&2; exit 2; }
source scripts/lib.sh
if [ -z "${PGHOST:-}" ]; then
    ensure_packages && build_install
    trap cluster_stop EXIT
    cluster_start
fi
PGBENCH=$PG_BIN/pgbench
export PGDATABASE=bst_bench_model
log "building test/c/bench_floor"
make -s -C test/c bench_floor >/dev/null

create_db() {
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $PGDATABASE" -c "CREATE DATABASE $PGDATABASE"
    psql -X -q -c "CREATE EXTENSION bst"
}
fresh_db() {
    create_db
    scripts/load_movielens.sh "$1"
    psql -X -q -c "CREATE TABLE windows AS
                     SELECT *, bst_holdout(user_id, movie_ids[cardinality(movie_ids)]) AS held_out
                     FROM bst_sequences('ratings', 4, 2)" -c "VACUUM ANALYZE"
}
q() { psql -X -q -At -F ' ' -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" -c "$1"; }

# What computes: the CPU, and the server's OpenBLAS, kernels and threads.
create_db
compute=$(q "SELECT bst_compute_info()")
kernels=$(sed -n 's/.*, kernels \([^ ]*\) (.*/\1/p' <<<"$compute")
threads=$(sed -n 's/.*, \([0-9][0-9]*\) threads\{0,1\}\(;.*\)\{0,1\}$/\1/p' <<<"$compute")
echo "CPU: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1) (family $(sed -n 's/^cpu family\s*: //p' /proc/cpuinfo | head -1), model $(sed -n 's/^model\s*: //p' /proc/cpuinfo | head -1)), $(nproc) cores"
echo "server: bst_compute_info() = $compute"
if [ -z "$kernels" ] || [ -z "$threads" ]; then
    echo "could not read the kernels and threads from bst_compute_info()" >&2
    exit 1
fi

# One figure per line: what, value, target, ratio to the floor (or -), and
# whether the target is met.
row() { printf '%-72s %-15s %-26s %-14s %s\n' "$@"; }
# met VALUE OP BOUND [VALUE OP BOUND...]: "met" when every comparison holds.
met() {
    awk -v args="$*" 'BEGIN { n = split(args, a, " "); ok = 1
        for (i = 1; i <= n; i += 3) {
            if (a[i + 1] == "<=" && !(a[i] + 0 <= a[i + 2] + 0)) ok = 0
            if (a[i + 1] == ">=" && !(a[i] + 0 >= a[i + 2] + 0)) ok = 0
        }
        print ok ? "met" : "MISSED" }'
}
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
# Milliseconds of RUNS runs (default 3) of a statement in one session,
# after one run that warms it (loads the model, fills the caches), as
# psql's \timing reports them: "ms ms ms".  RUNS 0: the first run alone,
# cold (a new backend).
warm_ms() {
    local runs=${2:-3}
    {
        echo "SET client_min_messages = warning;"
        [ "$runs" = 0 ] || echo "$1;"
        echo '\timing on'
        for _ in $(seq "$(( runs > 0 ? runs : 1 ))"); do echo "$1;"; done
    } | psql -X -q -At -v ON_ERROR_STOP=1 | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | paste -sd' '
}
# The median of some numbers.
median() { tr ' ' '\n' <<<"$1" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# The floor of a stored model (name $1), its FLOPs and the sgemm rate at its
# shapes, into the array F; more bench_floor arguments after the name.
# bench_floor measures sgemm with the server's kernels (OPENBLAS_CORETYPE,
# which the linked OpenBLAS honours as the server's does) and thread count,
# OpenBLAS itself single-threaded as in the core (test/c/bench_floor.c says
# how the threads are counted).  Batch sizes: the model's training batch;
# validation at 1024 windows a pass (src/core/fit.c, EVAL_BATCH); the
# server's predictor at 256 (src/model_store.c, PREDICT_BATCH).
declare -A F
floor_of() {
    local name=$1
    shift
    local args
    args=$(q "SELECT format('n_movies=%s seq_len=%s embed_dim=%s heads=%s hidden=%s n_users=%s user_dim=%s '
                            'sex_values=%s age_group_values=%s occupation_values=%s genres=%s factors=%s '
                            'bias=%s batch=%s train_windows=%s val_windows=%s',
                     c->>'n_movies', c->>'seq_len', c->>'embed_dim', c->>'heads',
                     (SELECT string_agg(h, ',') FROM jsonb_array_elements_text(c->'hidden') h),
                     c->>'n_users', c->>'user_dim',
                     CASE WHEN c->'features' ? 'sex' THEN jsonb_array_length(c->'sex_values') ELSE 0 END,
                     CASE WHEN c->'features' ? 'age_group' THEN jsonb_array_length(c->'age_group_values') ELSE 0 END,
                     CASE WHEN c->'features' ? 'occupation' THEN jsonb_array_length(c->'occupation_values') ELSE 0 END,
                     CASE WHEN c->'features' ? 'genres' THEN jsonb_array_length(c->'genres') ELSE 0 END,
                     c->>'factors', CASE WHEN (c->>'bias')::boolean THEN 1 ELSE 0 END, c->>'batch_size',
                     m.metrics->>'training_rows', m.metrics->>'validation_rows')
              FROM bst_models m, LATERAL (SELECT m.config AS c) s WHERE name = '$name'")
    F=()
    local k v
    # shellcheck disable=SC2086
    while IFS='=' read -r k v; do
        F[$k]=$v
    done < <(OPENBLAS_CORETYPE=$kernels OPENBLAS_NUM_THREADS=1 test/c/bench_floor $args \
                 threads="$threads" eval_batch=1024 predict_batch=256 "$@")
    if [ "${F[kernels],,}" != "${kernels,,}" ]; then
        echo "warning: bench_floor ran OpenBLAS's ${F[kernels]} kernels, the server $kernels" >&2
    fi
}

# An epoch of a stored model against its floor: name, label, target in
# seconds (or -), most times the floor.
epoch_figures() {
    local name=$1 label=$2 max_s=$3 max_ratio=$4
    floor_of "$name"
    local epoch_s train val
    read -r epoch_s train val < <(q "SELECT metrics->'epochs'->0->>'seconds', metrics->>'training_rows',
                                            metrics->>'validation_rows' FROM bst_models WHERE name = '$name'")
    echo "-- $label: 1 epoch, $train training windows$([ "$val" -gt 0 ] && echo ", $val validated after it (in its time)")"
    echo "   FLOPs per window (matrix products, src/core/flops.h): $(calc '%.3f' "${F[flops_train]} / 1e6") MFLOP to train" \
         "(forward $(calc '%.3f' "${F[flops_forward]} / 1e6"): dense layers $(calc '%.3f' "${F[flops_dense_forward]} / 1e6")," \
         "attention $(calc '%.4f' "${F[flops_attention_forward]} / 1e6"), factor term ${F[flops_factor_forward]}; backward twice it)," \
         "$(calc '%.3f' "${F[flops_forward]} / 1e6") to validate; epoch $(calc '%.1f' "${F[epoch_flops]} / 1e9") GFLOP"
    echo "   model: d ${F[embed_dim]}, MLP input ${F[mlp_input]}, ${F[params]} parameters"
    row "sgemm at the model's shapes, ${F[kernels]} kernels, $threads threads, batch ${F[train_batch]}" \
        "${F[train_gflops]} GFLOP/s" "-" "-" \
        "(${F[train_gflops_blocks]} as ${threads} x one thread's blocks, ${F[train_gflops_pool]} on the core's pool)"
    if [ -n "${F[eval_gflops]:-}" ]; then
        row "sgemm at the model's shapes, forward only, batch ${F[eval_batch]} (validation)" \
            "${F[eval_gflops]} GFLOP/s" "-" "-" \
            "(${F[eval_gflops_blocks]} blocks, ${F[eval_gflops_pool]} pool)"
    fi
    row "floor of the epoch: its FLOPs / those rates" "${F[epoch_floor_s]} s" "-" "1x floor" ""
    local ratio verdict target
    ratio=$(calc '%.2f' "$epoch_s / ${F[epoch_floor_s]}")
    if [ "$max_s" = - ]; then
        target="<= ${max_ratio}x floor"
        verdict=$(met "$ratio" "<=" "$max_ratio")
    else
        target="<= $max_s s, <= ${max_ratio}x floor"
        verdict=$(met "$epoch_s" "<=" "$max_s" "$ratio" "<=" "$max_ratio")
    fi
    row "epoch ($label)" "$(calc '%.2f' "$epoch_s") s" "$target" "${ratio}x floor" "$verdict"
}

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
    fresh_db "$root/ml-1m-shuffled"
    windows=$(q "SELECT count(*) FROM windows")
    lim=""
    if [ -n "$limit" ]; then
        lim=" LIMIT $limit"
        echo "== speed on ml-1m-shuffled ($windows windows; CHECK RUN: trainings on at most $limit of them)"
    else
        echo "== speed on ml-1m-shuffled ($windows windows)"
    fi
    row "figure" "value" "target" "vs floor" ""
    q "SELECT FROM bst_train('speed', 'SELECT movie_ids, ratings FROM windows$lim', epochs => 1, preset => 'keras_example')"
    epoch_figures speed "keras_example" 8 1.5
    q "SELECT FROM bst_train('speed_default', 'SELECT user_id, movie_ids, ratings FROM windows$lim', epochs => 1)"
    epoch_figures speed_default "default configuration, no preset" - 2

    echo "-- prediction and recommendation, with the keras_example model"
    # A new backend's first call loads the model (weights, then each movie's
    # projections); every later statement finds it loaded.
    cold=$(warm_ms "SELECT bst_predict('speed', '{1193,661,914,3408}', '{5,3,3}')" 0)
    row "first bst_predict in a new backend (loads the model)" "$cold ms" "-" "-" ""
    # The issue's query over all windows, as the planner runs it (parallel
    # workers when it chooses them: bst_predict is PARALLEL SAFE), and the
    # same over 75,000 windows in one backend (a LIMIT in a subquery keeps
    # the scan in the leader).  Each after a run that loads the model.
    times=$(warm_ms "SELECT count(bst_predict('speed', movie_ids, ratings)) FROM windows")
    rows_s=$(calc '%d' "$windows * 1000 / $(median "$times")")
    workers=$(q "SET client_min_messages = warning;
                 EXPLAIN (FORMAT json) SELECT count(bst_predict('speed', movie_ids, ratings)) FROM windows" |
              sed -n 's/.*"Workers Planned": \([0-9]*\).*/\1/p' | head -1)
    row "SELECT bst_predict(model, movie_ids, ratings) FROM windows, $windows" "$rows_s rows/s" \
        ">= 200,000 rows/s" "-" "$(met "$rows_s" ">=" 200000) (${workers:-no} parallel workers; runs $times ms)"
    times=$(warm_ms "SELECT count(bst_predict('speed', movie_ids, ratings)) FROM (SELECT * FROM windows LIMIT 75000) w")
    rows_s=$(calc '%d' "75000 * 1000 / $(median "$times")")
    row "the same over 75,000 windows in one backend" "$rows_s rows/s" "-" "-" "(runs $times ms)"
    printf '\\set u random(1, 6040)\nSELECT bst_predict(:u, 1193);\n' >/tmp/bst_bench_predict.sql
    ms=$(PGOPTIONS="-c bst.model=speed" "$PGBENCH" -n -c 1 -T 5 -f /tmp/bst_bench_predict.sql 2>/dev/null |
        awk '/latency average/ { print $4 }')
    rm -f /tmp/bst_bench_predict.sql
    row "bst_predict(user_id, movie_id), pgbench 1 client (round trip)" "$ms ms" "<= 0.15 ms" "-" \
        "$(met "$ms" "<=" 0.15)"
    times=$(PGOPTIONS="-c bst.model=speed" warm_ms "SELECT count(bst_predict(1 + (i * 7919) % 6040, 1193)) FROM generate_series(1, 10000) i")
    us=$(calc '%.1f' "$(median "$times") / 10")
    row "bst_predict(user_id, movie_id), 10,000 calls in one statement" "$us us/call" "<= 25 us" "-" \
        "$(met "$us" "<=" 25) (runs $times ms)"
    # bst_recommend over the whole vocabulary, the model already loaded: 200
    # users in one statement.  Its candidates: the vocabulary less the movies
    # each user rated (exclude_rated), on average over those users.
    times=$(PGOPTIONS="-c bst.model=speed" warm_ms "SELECT count(*) FROM generate_series(1, 200) u, LATERAL bst_recommend(u * 30, 10) r")
    n_movies=$(q "SELECT config->>'n_movies' FROM bst_models WHERE name = 'speed'")
    candidates=$(q "SELECT round($n_movies - avg(r.n)) FROM generate_series(1, 200) u,
                      LATERAL (SELECT count(DISTINCT movie_id) AS n FROM ratings WHERE user_id = u * 30) r")
    floor_of speed candidates="$candidates" train_windows=0 val_windows=0
    rec_ms=$(calc '%.2f' "$(median "$times") / 200")
    echo "   a recommendation: $candidates candidates on average, $(calc '%.3f' "${F[recommend_flops]} / 1e9") GFLOP per user" \
         "(the history's projections once, the rest of the forward pass per candidate)"
    row "sgemm at the model's shapes, forward only, batch ${F[predict_batch]} (predictor)" "${F[predict_gflops]} GFLOP/s" "-" "-" \
        "(${F[predict_gflops_blocks]} blocks, ${F[predict_gflops_pool]} pool)"
    row "floor of bst_recommend: its FLOPs / that rate" "$(calc '%.2f' "${F[recommend_floor_ms]}") ms" "-" "1x floor" ""
    row "bst_recommend(user_id, 10), $n_movies movies, 200 users in a statement" "$rec_ms ms/user" "<= 5 ms" \
        "$(calc '%.2f' "$rec_ms / ${F[recommend_floor_ms]}")x floor" "$(met "$rec_ms" "<=" 5) (runs $times ms)"
else
    echo "skipped: speed ($root/ml-1m-shuffled not found)"
fi
psql -X -q -d postgres -c "DROP DATABASE $PGDATABASE"

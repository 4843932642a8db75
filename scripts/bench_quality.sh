#!/usr/bin/env bash
# Quality benchmark on MovieLens-100K: BST configurations and ablations
# against a global-mean and a per-user + per-movie bias baseline, under two
# protocols, over several seeds.
#
#   scripts/bench_quality.sh [DATA_ROOT]     (default $BST_MOVIELENS_ROOT, else ../shared/data)
#   BST_SEEDS="1 2 3"        seeds of every BST configuration (default 1 2 3)
#   BST_CONFIGS="defaults no_bias"   a subset of the configurations below by id
#                            (default all; "none" runs only the baselines)
#   BST_PROTOCOLS="P1 P2"    which protocols (default both)
#   BST_DEFAULT_L=10         history length L of the defaults and their ablations
#
# Protocols (the held-out ratings are fixed, whatever the configuration):
#   P1, the Keras example's: the windows of bst_sequences('ratings', 4, 2)
#       held out by bst_holdout(user_id, target movie): 7,550 of 49,760 on
#       ML-100K.  The held-out targets are their (user_id, target movie)
#       pairs, with multiplicity: a repeated tail window is scored twice.
#   P2, next rating: each user's last 5 ratings by time (ties by movie id),
#       4,715 on ML-100K.
# One recipe for both, for a configuration of history length L:
#   train on the windows of the configuration's kind minus those whose target
#   is held out:
#     prefix: bst_sequences('ratings', seq_len => L, step => 1, min_len => 2),
#             one window ending at every rating from each user's 2nd on;
#     step2:  bst_sequences('ratings', L, 2), the Keras example's windows;
#     every2: bst_sequences('ratings', seq_len => L, step => 2, min_len => 2),
#             every other rating a target (a model trained on full windows
#             only cannot score the shorter windows of early targets);
#   evaluate on every held-out target, scored from the window of up to L
#   ratings ending at it (the prefix window ending there).  ML-100K has one
#   rating per (user, movie), so windows and targets are joined on
#   (user_id, target movie) exactly; the script checks that and fails if not.
# Both queries return user_id integer, movie_ids integer[], ratings real[].
#
# Baselines, fitted on the training ratings of the prefix windows (every
# rating from each user's 2nd on that is not held out) and scored on the same
# held-out ratings: the global mean, and mu + b_u + b_i with
#   b_i = sum(r - mu - b_u) / (10 + n_i),  b_u = sum(r - mu - b_i) / (15 + n_u)
# alternated a few rounds from b_u = 0 (an unknown user or movie gets 0).
#
# Prints one markdown table per protocol (MAE and RMSE as the mean over the
# seeds with the min–max spread, mean training seconds, mean epochs run) and
# writes them to bench/results/quality-<date>.md.  Uses the cluster of the
# libpq environment when PGHOST is set (database bst_bench_quality, dropped
# at the end, left for inspection on failure), else a throwaway one (BST_PORT).
set -euo pipefail
orig_dir=$PWD
cd "$(dirname "$0")/.."

BST_DEFAULT_L=${BST_DEFAULT_L:-10}

# The configurations, in table order.  One line each:
#   id | label in the table | L | training windows (prefix or step2) | extra bst_train options
# Every option left out is the preset's value (bst_train's NULL default).
CONFIG_TABLE=$(cat <<EOF
keras_example     | keras_example     | 4               | step2  | preset => 'keras_example'
defaults          | defaults          | $BST_DEFAULT_L  | prefix |
no_bias           | - bias            | $BST_DEFAULT_L  | prefix | bias => false
no_bias_init      | - bias init       | $BST_DEFAULT_L  | prefix | bias_init => false
no_factors        | - factor term     | $BST_DEFAULT_L  | prefix | factors => 0
no_user_features  | - user features   | $BST_DEFAULT_L  | prefix | features => '{genres}'
no_genres         | - genres          | $BST_DEFAULT_L  | prefix | features => '{user_id,sex,age_group,occupation}'
no_early_stopping | - early stopping  | $BST_DEFAULT_L  | prefix | early_stopping => false
no_weight_decay   | - weight decay    | $BST_DEFAULT_L  | prefix | weight_decay => 0
no_lr_schedule    | - lr schedule     | $BST_DEFAULT_L  | prefix | lr_schedule => 'constant'
no_prefix_windows | - prefix windows  | $BST_DEFAULT_L  | every2 |
no_long_history   | - long history    | 4               | prefix |
EOF
)
BIAS_ROUNDS=3            # alternating (b_i, b_u) rounds of the bias baseline
P2_LAST=5                # ratings held out per user in P2

die() { echo "bench_quality: $*" >&2; exit 1; }
trim() { local s=$1; s=${s#"${s%%[![:space:]]*}"}; s=${s%"${s##*[![:space:]]}"}; printf '%s' "$s"; }

# Parse the table into parallel arrays.
cfg_ids=(); declare -A cfg_label cfg_L cfg_kind cfg_opts cfg_ord
n=0
while IFS='|' read -r id label L kind opts; do
    id=$(trim "$id"); [ -n "$id" ] || continue
    n=$((n + 1))
    cfg_ids+=("$id"); cfg_ord[$id]=$((n + 10))
    cfg_label[$id]=$(trim "$label"); cfg_L[$id]=$(trim "$L")
    cfg_kind[$id]=$(trim "$kind"); cfg_opts[$id]=$(trim "$opts")
    [[ ${cfg_L[$id]} =~ ^[0-9]+$ ]] && [ "${cfg_L[$id]}" -ge 2 ] || die "configuration $id: L must be an integer >= 2"
    case ${cfg_kind[$id]} in prefix | step2 | every2) ;; *) die "configuration $id: windows must be prefix, step2 or every2" ;; esac
done <<<"$CONFIG_TABLE"

selected=()
for id in ${BST_CONFIGS:-${cfg_ids[*]}}; do
    [ "$id" = none ] && continue
    [ -n "${cfg_label[$id]:-}" ] || die "unknown configuration '$id' in BST_CONFIGS (known: ${cfg_ids[*]} none)"
    [[ " ${selected[*]} " == *" $id "* ]] || selected+=("$id")
done
protocols=()
for p in ${BST_PROTOCOLS:-P1 P2}; do
    case $p in P1 | P2) protocols+=("$p") ;; *) die "unknown protocol '$p' in BST_PROTOCOLS (known: P1 P2)" ;; esac
done
seeds=${BST_SEEDS:-1 2 3}
for s in $seeds; do [[ $s =~ ^-?[0-9]+$ ]] || die "BST_SEEDS: '$s' is not an integer"; done

# A relative DATA_ROOT or BST_MOVIELENS_ROOT is taken from where the script
# was started; the default is relative to the repository, as in the README.
root=${1:-${BST_MOVIELENS_ROOT:-}}
if [ -z "$root" ]; then root=../shared/data
elif [[ $root != /* ]]; then root=$orig_dir/$root; fi
data=$root/ml-100k
if [ ! -f "$data/u.data" ]; then
    echo "skipped: quality benchmark ($data not found; set BST_MOVIELENS_ROOT or pass the data root)"
    exit 0
fi

source scripts/lib.sh
if [ -z "${PGHOST:-}" ]; then
    ensure_packages && build_install
    trap cluster_stop EXIT
    cluster_start
fi
export PGDATABASE=bst_bench_quality
start_s=$(date +%s)

# q SQL...: each argument one statement, in one session, tuples only.
q() {
    local args=(-c "SET client_min_messages = warning")
    for s in "$@"; do args+=(-c "$s"); done
    psql -X -q -At -F '|' -v ON_ERROR_STOP=1 "${args[@]}"
}

log "loading $data into database $PGDATABASE"
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS $PGDATABASE" -c "CREATE DATABASE $PGDATABASE"
psql -X -q -c "CREATE EXTENSION bst"
scripts/load_movielens.sh "$data"

# --- Held-out ratings of both protocols ------------------------------------
log "building the held-out sets"
q "DO \$\$
   DECLARE dup bigint;
   BEGIN
     SELECT count(*) - count(DISTINCT (user_id, movie_id)) INTO dup FROM ratings;
     IF dup <> 0 THEN
       RAISE EXCEPTION 'ratings has % repeated (user_id, movie_id) pairs', dup
         USING HINT = 'Held-out targets are joined to their windows by (user_id, target movie); '
                      'that is exact only when every user rated every movie at most once (true of ML-100K).';
     END IF;
   END \$\$" \
  "CREATE TABLE rated AS
     SELECT user_id, movie_id, rating,
            row_number() OVER (PARTITION BY user_id ORDER BY unix_timestamp, movie_id) AS pos,
            count(*) OVER (PARTITION BY user_id) AS n
     FROM ratings" \
  "CREATE TABLE p1_windows AS
     SELECT row_number() OVER () AS w_id, user_id, movie_ids, ratings,
            movie_ids[cardinality(movie_ids)] AS target,
            bst_holdout(user_id, movie_ids[cardinality(movie_ids)]) AS held_out
     FROM bst_sequences('ratings', 4, 2)" \
  "CREATE TABLE heldout (protocol text, h_id bigint, user_id integer, movie_id integer, rating real)" \
  "INSERT INTO heldout
     SELECT 'P1', w_id, user_id, target, ratings[cardinality(ratings)] FROM p1_windows WHERE held_out" \
  "INSERT INTO heldout
     SELECT 'P2', row_number() OVER (ORDER BY user_id, pos), user_id, movie_id, rating
     FROM rated WHERE pos > n - $P2_LAST" \
  "CREATE TABLE heldout_set AS SELECT DISTINCT protocol, user_id, movie_id FROM heldout" \
  "CREATE UNIQUE INDEX ON heldout_set (protocol, user_id, movie_id)" \
  "CREATE TABLE results (
     protocol text, config text, label text, ord integer, l integer, windows text, seed integer,
     training_windows bigint, training_rows bigint, epochs integer, seconds float8,
     n bigint, mae float8, rmse float8)" \
  "ANALYZE"

# --- Windows, built once per (kind, L) and protocol -------------------------
declare -A built
# The source of a kind of windows of length L.
windows_source() {
    case $1 in
    prefix) echo "bst_sequences('ratings', seq_len => $2, step => 1, min_len => 2)" ;;
    step2) echo "bst_sequences('ratings', $2, 2)" ;;
    every2) echo "bst_sequences('ratings', seq_len => $2, step => 2, min_len => 2)" ;;
    esac
}
kind_label() { case $1 in prefix) echo prefix ;; step2) echo "($2,2)" ;; every2) echo "every 2nd" ;; esac; }
# win_<kind>_<L>: every window of the kind, in bst_sequences' order, with its target.
ensure_windows() {
    local kind=$1 L=$2 t=win_$1_$2
    [ -n "${built[$t]:-}" ] && return 0
    q "CREATE TABLE $t AS
         SELECT row_number() OVER () AS w_id, s.user_id, s.movie_ids, s.ratings,
                s.movie_ids[cardinality(s.movie_ids)] AS target
         FROM $(windows_source "$kind" "$L") s" \
      "CREATE INDEX ON $t (user_id, target)" "ANALYZE $t"
    if [ "$kind" = prefix ]; then
        # Every rating from each user's 2nd on ends exactly one window of at
        # most L ratings, which are the ratings before it.
        q "DO \$\$ BEGIN
             IF (SELECT count(*) FROM $t) <> (SELECT count(*) FROM rated WHERE pos >= 2)
                OR EXISTS (SELECT FROM $t w JOIN rated r ON (r.user_id, r.movie_id) = (w.user_id, w.target)
                           WHERE r.pos < 2 OR cardinality(w.movie_ids) <> least(r.pos, $L)) THEN
               RAISE EXCEPTION '$(windows_source "$kind" "$L" | sed "s/'/''/g") does not give one window of up to $L ratings ending at every rating from each user''s 2nd on';
             END IF;
           END \$\$"
    fi
    built[$t]=1
}
# train_<P>_<kind>_<L>: the windows whose target is not held out in P.
ensure_train() {
    local P=$1 kind=$2 L=$3 t=train_$1_$2_$3
    [ -n "${built[$t]:-}" ] && return 0
    ensure_windows "$kind" "$L"
    q "CREATE TABLE $t AS
         SELECT w_id, user_id, movie_ids, ratings FROM win_${kind}_$L w
         WHERE NOT EXISTS (SELECT FROM heldout_set h
                           WHERE h.protocol = '$P' AND (h.user_id, h.movie_id) = (w.user_id, w.target))
         ORDER BY w_id" "ANALYZE $t"
    built[$t]=1
}
# eval_<P>_<L>: every held-out rating of P (with multiplicity), as the prefix
# window of up to L ratings ending at it.
ensure_eval() {
    local P=$1 L=$2 t=eval_$1_$2
    [ -n "${built[$t]:-}" ] && return 0
    ensure_windows prefix "$L"
    q "CREATE TABLE $t AS
         SELECT h.h_id, w.user_id, w.movie_ids, w.ratings
         FROM heldout h JOIN win_prefix_$L w ON (w.user_id, w.target) = (h.user_id, h.movie_id)
         WHERE h.protocol = '$P'
         ORDER BY h.h_id" "ANALYZE $t" \
      "DO \$\$ BEGIN
         IF (SELECT count(*) FROM $t) <> (SELECT count(*) FROM heldout WHERE protocol = '$P') THEN
           RAISE EXCEPTION '$P: % of % held-out ratings have a window of up to $L ratings ending at them',
             (SELECT count(*) FROM $t), (SELECT count(*) FROM heldout WHERE protocol = '$P');
         END IF;
       END \$\$"
    built[$t]=1
}

# --- Baselines ----------------------------------------------------------------
# Fitted on the targets of the protocol's prefix training windows.
baselines() {
    local P=$1 rounds="" r
    for ((r = 0; r < BIAS_ROUNDS; r++)); do
        rounds+="TRUNCATE b_i; INSERT INTO b_i
                   SELECT movie_id, sum(rating - mu - coalesce(u.b, 0)) / (10 + count(*))
                   FROM bias_train LEFT JOIN b_u u USING (user_id), bias_mu GROUP BY movie_id;
                 TRUNCATE b_u; INSERT INTO b_u
                   SELECT user_id, sum(rating - mu - coalesce(i.b, 0)) / (15 + count(*))
                   FROM bias_train LEFT JOIN b_i i USING (movie_id), bias_mu GROUP BY user_id;"
    done
    psql -X -q -v ON_ERROR_STOP=1 <<SQL
SET client_min_messages = warning;
CREATE TEMP TABLE bias_train AS
  SELECT user_id, movie_id, rating::float8 AS rating FROM rated r
  WHERE pos >= 2 AND NOT EXISTS (SELECT FROM heldout_set h
                                 WHERE h.protocol = '$P' AND (h.user_id, h.movie_id) = (r.user_id, r.movie_id));
CREATE TEMP TABLE bias_mu AS SELECT avg(rating) AS mu FROM bias_train;
CREATE TEMP TABLE b_i (movie_id integer PRIMARY KEY, b float8);
CREATE TEMP TABLE b_u (user_id integer PRIMARY KEY, b float8);
$rounds
CREATE TEMP TABLE scored AS
  SELECT h.rating::float8 AS rating, mu AS global_mean,
         mu + coalesce(u.b, 0) + coalesce(i.b, 0) AS bias_model
  FROM heldout h CROSS JOIN bias_mu LEFT JOIN b_u u USING (user_id) LEFT JOIN b_i i USING (movie_id)
  WHERE h.protocol = '$P';
INSERT INTO results (protocol, config, label, ord, training_windows, n, mae, rmse)
  SELECT '$P', 'global_mean', 'global mean', 1, (SELECT count(*) FROM bias_train),
         count(*), avg(abs(global_mean - rating)), sqrt(avg((global_mean - rating) ^ 2)) FROM scored
  UNION ALL
  SELECT '$P', 'bias_model', 'user + movie bias', 2, (SELECT count(*) FROM bias_train),
         count(*), avg(abs(bias_model - rating)), sqrt(avg((bias_model - rating) ^ 2)) FROM scored;
SQL
}

# --- Runs -----------------------------------------------------------------------
for P in "${protocols[@]}"; do
    log "$P: baselines"
    baselines "$P"
    # Always counted: the Keras example's training windows and the defaults'.
    ensure_train "$P" step2 4
    ensure_train "$P" prefix "$BST_DEFAULT_L"
    for id in "${selected[@]}"; do
        L=${cfg_L[$id]} kind=${cfg_kind[$id]} opts=${cfg_opts[$id]}
        ensure_train "$P" "$kind" "$L"
        ensure_eval "$P" "$L"
        train=train_${P}_${kind}_$L evalt=eval_${P}_$L
        for seed in $seeds; do
            model=q_${P}_${id}_$seed
            q "INSERT INTO results
                 SELECT '$P', '$id', \$l\$${cfg_label[$id]}\$l\$, ${cfg_ord[$id]}, $L, '$kind', $seed,
                        (SELECT count(*) FROM $train), t.training_rows, t.epochs, t.seconds
                 FROM bst_train('$model', 'SELECT user_id, movie_ids, ratings FROM $train ORDER BY w_id',
                                seed => $seed${opts:+, $opts}) t" >/dev/null
            q "UPDATE results r SET n = e.n, mae = e.mae, rmse = e.rmse
                 FROM bst_evaluate('$model', 'SELECT user_id, movie_ids, ratings FROM $evalt ORDER BY h_id') e
                 WHERE (r.protocol, r.config, r.seed) = ('$P', '$id', $seed)" >/dev/null
            q "SELECT format('%s %s seed %s: %s training windows, %s epochs, %s s; %s held out: MAE %s, RMSE %s',
                             protocol, config, seed, training_windows, epochs, round(seconds::numeric, 1),
                             n, round(mae::numeric, 4), round(rmse::numeric, 4))
               FROM results WHERE (protocol, config, seed) = ('$P', '$id', $seed)" >&2
            q "DO \$\$ BEGIN
                 IF (SELECT n FROM results WHERE (protocol, config, seed) = ('$P', '$id', $seed))
                    <> (SELECT count(*) FROM heldout WHERE protocol = '$P') THEN
                   RAISE EXCEPTION '$P $id seed $seed: bst_evaluate scored a different number of windows than are held out';
                 END IF;
               END \$\$"
        done
    done
done

# --- Report ---------------------------------------------------------------------
report=$(mktemp /tmp/bst-quality.XXXXXX)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit + uncommitted changes"
{
    echo "## Quality on MovieLens-100K ($(date +%Y-%m-%d))"
    echo
    echo "\`scripts/bench_quality.sh\`: commit $commit, seeds $seeds;" \
         "BST rows are the mean over the seeds with the min–max spread in parentheses."
    echo
    echo "Machine: $(machine_description). Float results depend on the BLAS kernels:" \
         "another CPU or OpenBLAS build gives figures that differ in the last decimals."
    for P in "${protocols[@]}"; do
        echo
        if [ "$P" = P1 ]; then
            echo "### P1: the Keras example's split"
            echo
            q "SELECT format('Held out: %s of the %s windows of bst_sequences(''ratings'', 4, 2) by bst_holdout '
                             '(%s distinct (user, movie) targets: a repeated tail window is scored twice).',
                             to_char(count(*) FILTER (WHERE held_out), 'FM999,999,990'),
                             to_char(count(*), 'FM999,999,990'),
                             to_char((SELECT count(*) FROM heldout_set WHERE protocol = 'P1'), 'FM999,999,990'))
               FROM p1_windows"
        else
            echo "### P2: next rating"
            echo
            q "SELECT format('Held out: each user''s last $P2_LAST ratings by time (ties by movie id): %s.',
                             to_char(count(*), 'FM999,999,990'))
               FROM heldout WHERE protocol = 'P2'"
        fi
        echo -n "Training windows (held-out targets removed):"
        sep=" "
        for t in $(printf '%s\n' "${!built[@]}" | grep "^train_${P}_" | sort -t_ -k3,3r -k4,4n); do
            kind=${t#train_${P}_}; L=${kind#*_}; kind=${kind%_*}
            n=$(q "SELECT to_char(count(*), 'FM999,999,990') FROM $t")
            if [ "$kind" = prefix ]; then echo -n "$sep$n prefix windows of L = $L"
            else echo -n "$sep$n $(kind_label "$kind" "$L") windows"; fi
            sep="; "
        done
        echo "."
        echo
        echo "| configuration | L | training windows | MAE | RMSE | training s | epochs |"
        echo "|---|---|---|---|---|---|---|"
        q "WITH a AS (
             SELECT config, min(label) AS label, min(ord) AS ord, min(l) AS l, min(windows) AS windows,
                    max(training_windows) AS tw, count(*) AS runs,
                    avg(mae) AS mae, min(mae) AS mae_lo, max(mae) AS mae_hi,
                    avg(rmse) AS rmse, min(rmse) AS rmse_lo, max(rmse) AS rmse_hi,
                    avg(seconds) AS secs, avg(epochs) AS epochs
             FROM results WHERE protocol = '$P' GROUP BY config)
           SELECT format('| %s | %s | %s | %s | %s | %s | %s |',
                         label, coalesce(l::text, '–'),
                         to_char(tw, 'FM999,999,990') || CASE WHEN l IS NULL THEN ' ratings'
                                                              WHEN windows = 'step2' THEN ' (' || l || ',2)'
                                                              ELSE ' ' || windows END,
                         to_char(mae, 'FM0.0000') || CASE WHEN runs > 1 THEN
                           ' (' || to_char(mae_lo, 'FM0.0000') || '–' || to_char(mae_hi, 'FM0.0000') || ')' ELSE '' END,
                         to_char(rmse, 'FM0.0000') || CASE WHEN runs > 1 THEN
                           ' (' || to_char(rmse_lo, 'FM0.0000') || '–' || to_char(rmse_hi, 'FM0.0000') || ')' ELSE '' END,
                         coalesce(to_char(secs, 'FM999,990.0'), '–'),
                         coalesce(to_char(epochs, 'FM9,990.0'), '–'))
           FROM a ORDER BY ord"
    done
} >"$report"

mkdir -p bench/results
out=bench/results/quality-$(date +%Y-%m-%d).md
cp "$report" "$out"
rm -f "$report"
cat "$out"
echo
log "written to $out in $(( $(date +%s) - start_s )) s"
psql -X -q -d postgres -c "DROP DATABASE $PGDATABASE"

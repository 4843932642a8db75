#!/usr/bin/env bash
# How bst's costs grow with the data (issue 10, section 2).
#
#   scripts/bench_scale.sh                 100K, 1M and 10M ratings
#   scripts/bench_scale.sh --25m           ... and 25M (ML-25M's size; about
#                                          an hour more on 2 cores)
#   scripts/bench_scale.sh 100K 300K 1M    any scales (at least two for a slope)
#   scripts/bench_scale.sh --embed-dim 62  the model at a fixed width at every
#                                          scale (the default width grows with
#                                          the movies: floor(sqrt(movies)))
#   scripts/bench_scale.sh --report FILE.tsv   the table, the exponents and
#                                          the plot again from saved figures
#
# At each scale, in a fresh database of a throwaway cluster (port BST_PORT,
# default 54380; stopped and removed at exit, also on failure or Ctrl-C):
#   load        scripts/generate_ratings.sh RATINGS (ML-1M-shaped data made
#               by SQL, its index and statistics included), wall seconds;
#   sequences   CREATE TABLE windows AS SELECT * FROM bst_sequences('ratings',
#               seq_len => 4, step => 2): the Keras windows, server seconds;
#   training    bst_train(..., 'SELECT movie_ids, ratings FROM windows',
#               preset => 'keras_example', epochs => 1) as bench_model.sh
#               trains: the epoch's seconds (bst_training_log) and the call's
#               (the result: reading the query included);
#   memory      of the training backend, from /proc/<pid>/status: VmHWM read
#               at the end of the training session (peak resident set, the
#               shared buffers it touched included), the peak of RssAnon
#               (its private memory: palloc'd and malloc'd) sampled every
#               0.1 s, and RssShmem at the end (the shared buffers touched);
#               beside them bst's own estimate of a training with its windows
#               in memory (read from the refusal under a 1 kB limit);
#   weights     octet_length(weights) of the stored model;
#   predict     bst_predict(user_id, movie_id), 10,000 calls in one statement
#               (model loaded), microseconds a call: twice over the same
#               calls, the first pass with the ratings index as the training
#               left the caches ("cold": at 10M ratings the table and its
#               index outgrow shared_buffers), the second warm;
#   recommend   bst_recommend(user_id, 10) for 100 users in one statement
#               (every movie of the vocabulary scored), milliseconds a user.
# Prints the machine and a table, the growth exponent of each quantity (the
# slope of log y against log ratings between consecutive scales, and the
# least-squares slope over all), writes the figures to
# bench/results/scale-DATE.tsv and plots them, log-log, to
# bench/results/scale-DATE.png (gnuplot); with --embed-dim D, to
# scale-DATE-dD.tsv and .png.
#
# BST_TRAIN_MEMORY (e.g. 64MB; default 0, maintenance_work_mem: 512MB in
# this cluster) is bst.train_memory in the training session: windows beyond
# it are kept in temporary files, a bucket of them in memory at a time (the
# log says how many).
# BST_NO_BUILD=1 uses the installed extension instead of building and
# installing the working tree first.  Timings on a shared machine are noisy:
# the load average at the start and the end is printed with the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
export BST_PORT=${BST_PORT:-54380}
source scripts/lib.sh
BST_PACKAGES="$BST_PACKAGES gnuplot-nox"

scales=()
fixed_dim=
report_only=
while [ $# -gt 0 ]; do
    a=$1
    shift
    case $a in
    --25m) with_25m=1 ;;
    --embed-dim)
        [[ ${1:-} =~ ^[1-9][0-9]*$ ]] || { echo "bench_scale: --embed-dim needs a width" >&2; exit 1; }
        fixed_dim=$1
        shift ;;
    --report)
        [ -f "${1:-}" ] || { echo "bench_scale: --report needs the .tsv of a run" >&2; exit 1; }
        report_only=$1
        shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "bench_scale: unknown option $a" >&2; exit 1 ;;
    *) scales+=("$a") ;;
    esac
done
[ ${#scales[@]} -gt 0 ] || scales=(100K 1M 10M)
[ -n "${with_25m:-}" ] && scales+=(25M)
# The training's options beside the Keras preset's, and the files' suffix.
train_options="preset => 'keras_example', epochs => 1${fixed_dim:+, embed_dim => $fixed_dim}"
suffix=${fixed_dim:+-d$fixed_dim}

# The measurements, into $tsv (the body is left unindented: it holds here-documents).
measure() {
ensure_packages
[ "${BST_NO_BUILD:-0}" = 1 ] || build_install
machine=$(machine_description)
lib=$($PG_BIN/pg_config --pkglibdir)/bst.so
so_before=$(md5sum "$lib" | cut -c1-12)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "machine: $machine"
log "load average at the start: $load_before (figures are noisy when it exceeds $(nproc))"

day=$(date +%F)
mkdir -p bench/results
tsv=bench/results/scale-$day$suffix.tsv
png=bench/results/scale-$day$suffix.png
work=$(mktemp -d /tmp/bst-scale.XXXXXX)
chmod 755 "$work"
cleanup() { cluster_stop; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
cluster_start
export PGDATABASE=bst_scale

q() { psql -X -q -At -F $'\t' -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" -c "$1"; }
# Seconds of the statements of $1, measured in the server, in one session.
timed() {
    psql -X -q -At -v ON_ERROR_STOP=1 <<SQL
SET client_min_messages = warning;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
$1
SELECT round(extract(epoch FROM clock_timestamp()) - :t0, 3);
SQL
}
kb_field() { awk -v f="$1:" '$1 == f { print $2 }'; }

columns="scale	ratings	users	movies	rated_movies	windows	embed_dim	load_s	sequences_s	epoch_s	train_s	estimate_mb	vmhwm_mb	vmhwm_base_mb	anon_peak_mb	shmem_mb	weights_mb	predict_us	recommend_ms	predict_cold_us"
{
    echo "# bst scale benchmark, $(date -u '+%F %T UTC'); $machine"
    echo "# bst_train options: $train_options"
    echo "# $lib md5 $so_before; git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (uncommitted changes)')"
    echo "$columns"
} >"$tsv"

for scale in "${scales[@]}"; do
    log "== scale $scale"
    psql -X -q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $PGDATABASE" \
        -c "CREATE DATABASE $PGDATABASE"
    q "CREATE EXTENSION bst" >/dev/null

    start=$(date +%s%N)
    scripts/generate_ratings.sh "$scale" --seed 42 >"$work/generate.log" 2>&1 ||
        { cat "$work/generate.log" >&2; exit 1; }
    load_s=$(awk -v ns=$(( $(date +%s%N) - start )) 'BEGIN { printf "%.3f", ns / 1e9 }')
    sed 's/^/   /' "$work/generate.log" >&2
    read -r ratings users movies rated < <(q "SELECT (SELECT count(*) FROM ratings), (SELECT count(*) FROM users),
                                               (SELECT count(*) FROM movies), (SELECT count(DISTINCT movie_id) FROM ratings)" | tr '\t' ' ')

    sequences_s=$(timed "CREATE TABLE windows AS SELECT * FROM bst_sequences('ratings', seq_len => 4, step => 2);")
    q "VACUUM ANALYZE windows" >/dev/null
    windows=$(q "SELECT count(*) FROM windows")
    log "loaded in $load_s s; $windows windows in $sequences_s s"

    # bst's estimate of a training with its windows in memory: the refusal
    # under a limit too small for even the model names it (in MB).
    estimate_mb=$(psql -X -At -c "SET client_min_messages = warning" \
        -c "SET bst.train_memory = '1kB'" \
        -c "SELECT FROM bst_train('estimate', 'SELECT movie_ids, ratings FROM windows', $train_options)" 2>&1 |
        sed -n 's/.*needs \([0-9]*\) MB of memory.*/\1/p' || true)
    [ -n "$estimate_mb" ] || estimate_mb=NA

    # The training session: its backend's pid first, its status at the end;
    # meanwhile RssAnon is sampled.
    rm -f "$work/pid"
    psql -X -q -At -v ON_ERROR_STOP=1 >"$work/train.out" 2>"$work/train.err" <<SQL &
SET client_min_messages = warning;
SET bst.train_memory = '${BST_TRAIN_MEMORY:-0}';
SELECT pg_backend_pid() \g $work/pid
SELECT 'base', pg_read_file('/proc/' || pg_backend_pid() || '/status');
SELECT 'result', training_rows, round(seconds::numeric, 3)
FROM bst_train('scale', 'SELECT movie_ids, ratings FROM windows', $train_options);
SELECT 'end', pg_read_file('/proc/' || pg_backend_pid() || '/status');
SQL
    psql_pid=$!
    backend=
    anon_peak=0
    while kill -0 "$psql_pid" 2>/dev/null; do
        [ -z "$backend" ] && [ -s "$work/pid" ] && backend=$(tr -dc 0-9 <"$work/pid")
        if [ -n "$backend" ]; then
            a=$(kb_field RssAnon <"/proc/$backend/status" 2>/dev/null || true)
            [ -n "$a" ] && [ "$a" -gt "$anon_peak" ] && anon_peak=$a
        fi
        sleep 0.1
    done
    wait "$psql_pid" || { cat "$work/train.err" >&2; exit 1; }
    vmhwm_base=$(sed -n '/^base/,/^end/p' "$work/train.out" | kb_field VmHWM | head -1)
    vmhwm=$(sed -n '/^end/,$p' "$work/train.out" | kb_field VmHWM)
    shmem=$(sed -n '/^end/,$p' "$work/train.out" | kb_field RssShmem)
    train_s=$(awk -F'|' '$1 == "result" { print $3 }' "$work/train.out")
    read -r epoch_s weights embed_dim bucket < <(q "SELECT round(l.seconds::numeric, 3), octet_length(m.weights), m.config->>'embed_dim',
                                                     coalesce(m.metrics->>'bucket_windows', 'all')
                                              FROM bst_models m JOIN bst_training_log l ON l.model = m.name AND l.version = m.version
                                              WHERE m.name = 'scale' AND l.epoch = 1" | tr '\t' ' ')
    log "epoch $epoch_s s, bst_train $train_s s; VmHWM $((vmhwm / 1024)) MB, RssAnon peak $((anon_peak / 1024)) MB, estimate $estimate_mb MB; weights $weights bytes (d = $embed_dim); windows in memory: $bucket"

    # Prediction, the model loaded: one call for each of 10,000 (user, movie).
    predict_calls="SELECT count(bst_predict(1 + (i * 7919) % $users, 1 + (i * 104729) % $movies)) FROM generate_series(1, 10000) i \g /dev/null"
    read -r predict_cold_s predict_s < <(timed "SET bst.model = 'scale';
SELECT bst_predict(1, 1) \g /dev/null
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
$predict_calls
SELECT round(extract(epoch FROM clock_timestamp()) - :t0, 3);
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
$predict_calls" | paste -sd ' ')
    recommend_s=$(timed "SET bst.model = 'scale';
SELECT count(*) FROM bst_recommend(1, 10) \g /dev/null
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
SELECT count(*) FROM generate_series(1, 100) g, LATERAL bst_recommend(1 + (g * 7919) % $users, 10) r \g /dev/null")
    predict_us=$(awk -v s="$predict_s" 'BEGIN { printf "%.1f", s * 1e6 / 10000 }')
    predict_cold_us=$(awk -v s="$predict_cold_s" 'BEGIN { printf "%.1f", s * 1e6 / 10000 }')
    recommend_ms=$(awk -v s="$recommend_s" 'BEGIN { printf "%.2f", s * 1e3 / 100 }')
    log "bst_predict $predict_us us a call ($predict_cold_us us cold); bst_recommend $recommend_ms ms a user"

    mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
    printf '%s\n' "$scale	$ratings	$users	$movies	$rated	$windows	$embed_dim	$load_s	$sequences_s	$epoch_s	$train_s	$estimate_mb	$(mb "$vmhwm")	$(mb "$vmhwm_base")	$(mb "$anon_peak")	$(mb "$shmem")	$(awk -v b="$weights" 'BEGIN { printf "%.2f", b / 1048576 }')	$predict_us	$recommend_ms	$predict_cold_us" >>"$tsv"
done
psql -X -q -d postgres -c "DROP DATABASE $PGDATABASE"

so_after=$(md5sum "$lib" | cut -c1-12)
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
cluster_stop
echo "load average: $load_before at the start, $load_after at the end ($(nproc) cores; timings are noisy above that)"
[ "$so_before" = "$so_after" ] || echo "WARNING: $lib changed during the run ($so_before -> $so_after): the scales may have run different builds"
}

if [ -n "$report_only" ]; then
    tsv=$report_only
    png=${tsv%.tsv}.png
else
    measure
fi

# ---- report -------------------------------------------------------------
# What the figures were measured on, from the file's header.
run_day=$(sed -n '1s/^# bst scale benchmark, \([0-9-]*\) .*/\1/p' "$tsv")
run_machine=$(sed -n '1s/^# bst scale benchmark, [^;]*; //p' "$tsv")
run_options=$(sed -n 's/^# bst_train options: //p' "$tsv" | head -1)
echo "machine: $run_machine"
echo "bst_train options: $run_options"
echo
awk -F'\t' '
    /^#/ { next }
    $1 == "scale" { next }
    { n++; for (i = 1; i <= NF; i++) v[n, i] = $i }
    END {
        split("scale|ratings|users|movies (rated)|windows|d|load s|sequences s|epoch s|bst_train s|estimate MB|VmHWM MB|RssAnon peak MB|weights MB|predict us (cold)|recommend ms", h, "|")
        fmt = "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n"
        printf fmt, h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15], h[16]
        print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        for (r = 1; r <= n; r++)
            printf fmt, v[r, 1], v[r, 2], v[r, 3], v[r, 4] " (" v[r, 5] ")", v[r, 6], v[r, 7], v[r, 8], v[r, 9],
                v[r, 10], v[r, 11], v[r, 12], v[r, 13], v[r, 15], v[r, 17], v[r, 18] " (" v[r, 20] ")", v[r, 19]
    }' "$tsv"
echo
echo "growth exponents: slope of log(quantity) against log(ratings); 1 is linear"
awk -F'\t' '
    /^#/ { next }
    $1 == "scale" { for (i = 1; i <= NF; i++) name[i] = $i; next }
    { n++; for (i = 1; i <= NF; i++) v[n, i] = $i }
    END {
        split("3 4 6 7 8 9 10 11 12 13 15 16 17 18 20 19", cols, " ")
        printf "| %-14s |", "quantity"
        for (r = 2; r <= n; r++) printf " %s -> %s |", v[r - 1, 1], v[r, 1]
        printf " fit over all |\n|---|"
        for (r = 2; r <= n; r++) printf "---|"
        print "---|"
        for (c = 1; c in cols; c++) {
            k = cols[c]
            printf "| %-14s |", name[k]
            sx = sy = sxx = sxy = m = 0
            for (r = 1; r <= n; r++) {
                if (v[r, k] == "NA" || v[r, k] <= 0) continue
                x = log(v[r, 2]); y = log(v[r, k])
                sx += x; sy += y; sxx += x * x; sxy += x * y; m++
            }
            for (r = 2; r <= n; r++) {
                if (v[r, k] == "NA" || v[r - 1, k] == "NA" || v[r, k] <= 0 || v[r - 1, k] <= 0) printf " NA |"
                else printf " %.2f |", log(v[r, k] / v[r - 1, k]) / log(v[r, 2] / v[r - 1, 2])
            }
            if (m >= 2 && m * sxx - sx * sx > 0) printf " %.2f |\n", (m * sxy - sx * sy) / (m * sxx - sx * sx)
            else print " NA |"
        }
    }' "$tsv"

# ---- plot ----------------------------------------------------------------
if command -v gnuplot >/dev/null; then
    gnuplot <<GP
set terminal pngcairo noenhanced size 1500,760 font ",10"
set output '$png'
set datafile separator "\t"
set datafile missing "NA"
set logscale xy
set grid
set key below
set xlabel 'ratings'
set format x '%.0s%c'
set multiplot layout 1,2 title 'bst: cost against the number of ratings (log-log), $run_day; bst_train($(echo "$run_options" | sed "s/'//g")); $(echo "$run_machine" | sed "s/'/ /g; s/;.*kernels/, OpenBLAS kernels/")'
set title 'time'
set ylabel 'seconds'
set format y '%g'
plot '$tsv' using 2:8 with linespoints lw 2 title 'load (generate + index)', \
     '' using 2:9 with linespoints lw 2 title 'bst_sequences (4, 2)', \
     '' using 2:10 with linespoints lw 2 title 'one training epoch', \
     '' using 2:11 with linespoints lw 2 title 'bst_train, 1 epoch, in all', \
     '' using 2:(\$19 / 1e3) with linespoints lw 2 title 'bst_recommend(user, 10), per user', \
     '' using 2:(\$18 / 1e6) with linespoints lw 2 title 'bst_predict(user, movie), per call, warm', \
     '' using 2:(\$20 / 1e6) with linespoints lw 1 dt 3 title 'bst_predict, the first pass (cold caches)', \
     '' using 2:(\$2 * 1e-5) with lines dt 2 lc rgb 'gray' title 'linear (slope 1)'
set title 'memory of the training backend, and the model'
set ylabel 'MB'
plot '$tsv' using 2:13 with linespoints lw 2 title 'VmHWM (peak RSS, shared buffers touched included)', \
     '' using 2:15 with linespoints lw 2 title 'peak RssAnon (private memory)', \
     '' using 2:12 with linespoints lw 2 title 'bst estimate (checked against bst.train_memory)', \
     '' using 2:17 with linespoints lw 2 title 'weights (octet_length)', \
     '' using 2:(\$2 * 1e-4) with lines dt 2 lc rgb 'gray' title 'linear (slope 1)'
unset multiplot
GP
    echo
    echo "figures: $tsv"
    echo "plot:    $png"
else
    echo "figures: $tsv (gnuplot not found: no plot)"
fi

#!/usr/bin/env bash
# Fuzz the model deserializer and prediction (test/fuzz) for longer than CI's
# 60 s:
#   scripts/fuzz.sh [SECONDS]          # default 600
#   FUZZ_JOBS=2 scripts/fuzz.sh 3600   # two fuzzers side by side, one a core
# Builds the harness, generates the seed corpus, fuzzes, and exits non-zero
# on any crash, sanitizer report or broken invariant; the input is then in
# test/fuzz/build/artifacts/ (replay: test/fuzz/build/fuzz_model FILE).
# Inputs that found new coverage accumulate in test/fuzz/build/found, which
# parallel jobs share (libFuzzer rereads it).  Not libFuzzer's -fork mode:
# that skips a seed that crashes and still exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

seconds=${1:-600}
jobs=${FUZZ_JOBS:-1}
case "$seconds/$jobs" in
*[!0-9/]* | /* | */) echo "usage: [FUZZ_JOBS=N] $0 [SECONDS]" >&2; exit 2 ;;
esac

ensure_packages || exit 1
make -s -C test/fuzz all || exit 1
log "fuzzing the model deserializer and prediction for $seconds s ($jobs job(s))"
if [ "$jobs" -le 1 ]; then
    make -s -C test/fuzz run FUZZ_SECONDS="$seconds"
    exit
fi

# One log each (test/fuzz/build/logs/jobN.log); make prints a summary line
# per job, or the end of its log on failure.
logs=$PWD/test/fuzz/build/logs
mkdir -p "$logs"
pids=()
for i in $(seq "$jobs"); do
    make -s -C test/fuzz run FUZZ_SECONDS="$seconds" QUIET=1 FUZZ_LOG="$logs/job$i.log" &
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
done
exit $failed

#!/usr/bin/env bash
# Threads on a shared server: one training epoch of the numerical core
# (test/c/bench_epoch: 424,000 windows at the ML-1M shape, the Keras
# example's model) with bst.threads = 1 and with the default (0: automatic),
# on the machine as it is ("idle") and beside one CPU-bound process per core
# ("loaded": `yes > /dev/null`, one per core).
#   scripts/bench_threads.sh [RUNS]        (default 3)
#   BST_BENCH_NICE=-10 scripts/bench_threads.sh   (as root: the epochs and the
#       burners run at that niceness, so that other users' processes on a
#       shared machine disturb them less; "idle" then means "nothing else of
#       this priority")
# Targets (issue 7): loaded, the default takes at most 1.25 times the time of
# 1 thread; idle, at most 0.6 times.  Each run measures the four epochs in an
# alternating order; the ratios are per run, then summarised as ranges.
# Other processes disturb the figures: the load average is printed with each
# epoch.
#
# The kernels are the ones the extension would load in this environment:
# OPENBLAS_CORETYPE when it is set, else bst's choice for this CPU
# (src/core/blas_load.h).  bench_epoch links OpenBLAS itself, so the script
# sets OPENBLAS_CORETYPE for it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-3}

make -s -C test/c bench_epoch bench_cores kernel_choice >/dev/null

burners=()
cleanup() {
    for pid in "${burners[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
# bst's kernel choice, from the core's own code.
read -r chosen reason < <(test/c/kernel_choice --reason)
if [ -n "${OPENBLAS_CORETYPE:-}" ]; then
    kernels="$OPENBLAS_CORETYPE (from OPENBLAS_CORETYPE; bst would choose $chosen: $reason)"
elif [ "$chosen" != - ]; then
    export OPENBLAS_CORETYPE=$chosen
    kernels="$chosen (chosen by bst: $reason)"
else
    kernels="OpenBLAS's own detection ($reason)"
fi

echo "machine: $(machine_description)"
echo "kernels: $kernels"
echo "default thread count here: bst.threads = 0 -> min(4, $(nproc) cores)"
[ -n "${BST_BENCH_NICE:-}" ] && echo "niceness of the epochs and burners: $BST_BENCH_NICE"

# The benchmark's processes, at BST_BENCH_NICE when set.
prio=()
[ -n "${BST_BENCH_NICE:-}" ] && prio=(nice -n "$BST_BENCH_NICE")

# Seconds of one epoch with the given bst.threads.
epoch() {
    "${prio[@]}" test/c/bench_epoch "$1" | sed -n 's/^threads [0-9]*: epoch \([0-9.]*\) s.*/\1/p'
}
load() { cut -d' ' -f1 /proc/loadavg; }
start_burners() {
    for _ in $(seq "$(nproc)"); do
        "${prio[@]}" yes >/dev/null &
        burners+=($!)
    done
}
stop_burners() {
    for pid in "${burners[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${burners[@]}"; do wait "$pid" 2>/dev/null || true; done
    burners=()
}

idle_ratios=() loaded_ratios=()
for run in $(seq "$runs"); do
    # Alternate the order so that a drift of the machine's load favours
    # neither setting.
    if [ $((run % 2)) = 1 ]; then order="1 0"; else order="0 1"; fi
    # What sharing data between two cores costs now: on a VM it changes
    # when the host moves the vCPUs, and the idle ratio with it; and what
    # running one of the model's products on both at once costs.
    test/c/bench_cores | sed "s/^/run $run, /"
    declare -A t=()
    for th in $order; do
        l=$(load); t[idle$th]=$(epoch "$th")
        echo "run $run, idle,   bst.threads = $th: ${t[idle$th]} s (load average before: $l)"
    done
    start_burners
    sleep 1
    for th in $order; do
        l=$(load); t[loaded$th]=$(epoch "$th")
        echo "run $run, loaded, bst.threads = $th: ${t[loaded$th]} s (load average before: $l)"
    done
    stop_burners
    idle_ratios+=("$(echo "${t[idle0]} ${t[idle1]}" | awk '{ printf "%.2f", $1 / $2 }')")
    loaded_ratios+=("$(echo "${t[loaded0]} ${t[loaded1]}" | awk '{ printf "%.2f", $1 / $2 }')")
    echo "run $run: default / 1 thread: idle ${idle_ratios[-1]} (target <= 0.60), loaded ${loaded_ratios[-1]} (target <= 1.25)"
    unset t
done

range() { printf '%s\n' "$@" | sort -n | sed -n '1p;$p' | paste -sd- | sed 's/-/ - /'; }
echo "idle:   default / 1 thread $(range "${idle_ratios[@]}") over $runs runs (target <= 0.60)"
echo "loaded: default / 1 thread $(range "${loaded_ratios[@]}") over $runs runs (target <= 1.25)"

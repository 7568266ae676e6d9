#!/usr/bin/env bash
# Issue 16: charrnn on a machine that other work shares. Times the textbook workload (first 10,000
# characters, defaults, EPOCHS epochs) and `predict --num-chars 5000`, whole processes, the median of ROUNDS,
# with each setting: charrnn's default (GOMP_SPINCOUNT=1000, set before libtorch loads; one thread for
# predict), libgomp's own default (GOMP_SPINCOUNT=300000, what charrnn did before), OMP_WAIT_POLICY=passive, and --threads 1
# ... --threads <cores>; on a quiet machine, beside a second charrnn training with its default settings,
# and beside a plain busy loop on one core.
# Usage: bash benches/loaded_machine.sh   (EPOCHS=5, ROUNDS=5, CHARRNN=binary)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CHARRNN:-./target/release/charrnn}
epochs=${EPOCHS:-5}
rounds=${ROUNDS:-5}
cores=$(nproc)
tmp=$(mktemp -d)
background=""
cleanup() { [ -n "$background" ] && kill "$background" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
export CHARRNN_CACHE="$tmp/cache"
$bin train --corpus data/yuanqu.txt --limit-chars 10000 --epochs 1 --out "$tmp/model" -q
# Median wall time in seconds of ROUNDS runs of "$@".
best() {
    local times=()
    for _ in $(seq "$rounds"); do
        local s e
        s=$(date +%s.%N)
        "$@" >/dev/null 2>&1
        e=$(date +%s.%N)
        times+=("$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.2f", e - s }')")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{ t[NR] = $1 } END { print t[int((NR + 1) / 2)] }'
}
# $1: environment assignments (or ""), $2: extra flags (or "").
# shellcheck disable=SC2086
train() { env $1 $bin train --corpus data/yuanqu.txt --limit-chars 10000 --epochs "$epochs" --out "$tmp/t" --force -q $2; }
# shellcheck disable=SC2086
predict() { env $1 $bin predict --model "$tmp/model" --prefix 分开 --num-chars 5000 $2; }
run_all() {
    local label=$1
    for what in train predict; do
        local line="$label, $what:"
        line+=" default $(best $what "" "")"
        line+=" | GOMP_SPINCOUNT=300000 $(best $what GOMP_SPINCOUNT=300000 "")"
        line+=" | OMP_WAIT_POLICY=passive $(best $what OMP_WAIT_POLICY=passive "")"
        for n in $(seq "$cores"); do line+=" | --threads $n $(best $what "" "--threads $n")"; done
        echo "$line"
    done
}
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $cores cores; charrnn $($bin --version | cut -d' ' -f2); seconds, median of $rounds"
echo "train: textbook workload, $epochs epochs; predict: 5,000 greedy characters"
run_all quiet
$bin train --corpus data/yuanqu.txt --limit-chars 10000 --epochs 100000 --out "$tmp/bg" -q &
background=$!
sleep 2
run_all "beside a charrnn training"
kill "$background"; wait "$background" 2>/dev/null || true
background=""
(while :; do :; done) &
background=$!
run_all "beside a busy loop"

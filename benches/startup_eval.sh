#!/usr/bin/env bash
# Issue 16: the short commands as a user runs them, whole processes, median of ROUNDS wall times (ms):
# `charrnn --version` (loading libtorch, the floor), `predict --num-chars 10` and `--num-chars 5000`
# (greedy), and `eval` of a textbook model (first 10,000 characters of the bundled corpus, hidden 256, the
# vocabulary of the whole corpus; the same shape as `make demo`'s). BASE=another charrnn binary is timed
# the same way, round by round in turn with this one, on the same model.
# Usage: bash benches/startup_eval.sh   (ROUNDS=9, CHARRNN=binary, BASE=binary to compare)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CHARRNN:-./target/release/charrnn}
base=${BASE:-}
rounds=${ROUNDS:-9}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export CHARRNN_CACHE="$tmp/cache"
$bin train --corpus data/yuanqu.txt --limit-chars 10000 --epochs 1 --out "$tmp/m" -q
bins=("$bin")
[ -n "$base" ] && bins+=("$base")
declare -A times
# Milliseconds of one run of "$@", output discarded.
ms() {
    local s e
    s=$(date +%s%N)
    "$@" >/dev/null 2>&1
    e=$(date +%s%N)
    echo $(((e - s) / 1000000))
}
cases=("--version" "predict 10" "predict 5000" "eval")
run_case() {
    local b=$1 what=$2
    case $what in
        --version) ms "$b" --version ;;
        "predict 10") ms "$b" predict --model "$tmp/m" --prefix 分开 --num-chars 10 ;;
        "predict 5000") ms "$b" predict --model "$tmp/m" --prefix 分开 --num-chars 5000 ;;
        eval) ms "$b" eval --model "$tmp/m" ;;
    esac
}
for _ in $(seq "$rounds"); do
    for what in "${cases[@]}"; do
        for b in "${bins[@]}"; do times["$b|$what"]+="$(run_case "$b" "$what") "; done
    done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ t[NR] = $1 } END { print t[int((NR + 1) / 2)] }'; }
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; milliseconds, median of $rounds whole processes"
for b in "${bins[@]}"; do
    line="$b ($($b --version)):"
    for what in "${cases[@]}"; do line+=" $what $(echo "${times["$b|$what"]}" | median) |"; done
    echo "${line% |}"
done

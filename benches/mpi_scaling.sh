#!/usr/bin/env bash
# Issue 25: what training on several processes costs and brings on this machine.
# 1. The all-reduce of the flat gradient that every step makes (examples/allreduce.rs): a million floats,
#    the GRU 1x256 (embedding 64) of the CPU benchmark and the LSTM 2x1024 (embedding 128) of the GPU
#    benchmark, between 2 ranks of `mpirun` on this machine (shared memory).
# 2. One epoch of the first 300,000 characters of tiny Shakespeare with that GRU (Adam lr 0.002, clip 1,
#    T 64, B 32 in all, no held-out text) on one process using every core, and on one rank per core
#    (`mpirun -np $(nproc)`, each with 1 thread and its share of the batch's rows), alternated, ROUNDS
#    rounds: characters per second as charrnn's --verbose report gives it (the epoch's minibatches only),
#    medians. Both runs train the same model (tests/mpi.rs checks it).
# Usage: bash benches/mpi_scaling.sh   (ROUNDS=3, CORPUS=data/tinyshakespeare.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${CORPUS:-data/tinyshakespeare.txt}
rounds=${ROUNDS:-3}
ranks=$(nproc)
bash scripts/setup.sh --build-only >/dev/null
bash scripts/mpi_setup.sh
cargo build --release --quiet --features mpi --bin charrnn --example allreduce
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export CHARRNN_CACHE="$tmp/cache"
echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(mpirun --version | head -1)"
echo "## all-reduce of the gradient, $ranks ranks on this machine"
mpirun --oversubscribe -np "$ranks" target/release/examples/allreduce
# One epoch on `$1` processes; prints its characters per second.
epoch() {
    local launch=()
    [ "$1" -gt 1 ] && launch=(mpirun --oversubscribe -np "$1")
    "${launch[@]}" ./target/release/charrnn train --corpus "$corpus" --limit-chars 300000 --val-frac 0 --epochs 1 \
        --cell gru --hidden 256 --embed 64 --optimizer adam --lr 0.002 --clip 1 --steps 64 --batch 32 \
        --device cpu --pred-len 0 --out "$tmp/m$1" --force --verbose 2>&1 |
        sed -n 's/^epoch 1,.* \([0-9,]*\) chars\/s$/\1/p' | tr -d ,
}
epoch 1 >/dev/null  # the prepared-corpus cache, outside the timing
echo "## one epoch of 300,000 characters, gru 1x256 embed 64, B 32 T 64 (chars/s)"
one=() many=()
for r in $(seq "$rounds"); do
    one+=("$(epoch 1)")
    many+=("$(epoch "$ranks")")
    echo "round $r: 1 process ($(nproc) threads) ${one[-1]}, $ranks ranks (1 thread each) ${many[-1]}"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m1=$(median "${one[@]}") mn=$(median "${many[@]}")
echo "median: 1 process $m1 chars/s, $ranks ranks $mn chars/s ($(awk -v a="$mn" -v b="$m1" 'BEGIN {printf "%.2f", a / b}')x)"

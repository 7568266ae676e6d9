#!/usr/bin/env bash
# Issue 26: the README's recipe for code, sized for a 2-core CPU and measured on a folder of Rust sources
# (this project's own src/, about 0.7 MB): a GRU 1x256 over an embedding of 64, Adam, clip 1, T 128, B 32,
# 20 epochs, a sample every 5; the last 10% held out. Prints the machine, the configuration line, the
# reports, the held-out score of the kept model and the wall time.
# Usage: bash benches/code_recipe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --build-only >/dev/null
cargo build --release --quiet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export CHARRNN_CACHE="$tmp/cache"
echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; corpus: src/ of $(git rev-parse --short HEAD)"
cp -r src "$tmp/src"
start=$(date +%s.%N)
./target/release/charrnn train --corpus "$tmp/src" --keep-newlines --cell gru --hidden 256 --embed 64 --optimizer adam \
    --steps 128 --batch 32 --clip 1 --epochs 20 --pred-period 5 --prefix 'fn ' --out "$tmp/code" --verbose 2>&1 |
    grep -v '^progress'
end=$(date +%s.%N)
./target/release/charrnn eval --model "$tmp/code" --held-out
echo "wall time $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.0f", b - a}') s"

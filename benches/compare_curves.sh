#!/usr/bin/env bash
# Trains the textbook workload (first 10,000 characters, defaults, 250 epochs) with charrnn and with the
# plain-PyTorch reference (benches/reference_textbook.py), for both samplers, and prints the perplexity at
# epochs 50..250 beside the textbook's published numbers. Usage: bash benches/compare_curves.sh [CORPUS]
# (DTYPE=bf16 trains charrnn with --dtype bf16; PyTorch stays fp32.)
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-data/yuanqu.txt}
epochs=${EPOCHS:-250}
dtype=${DTYPE:-fp32}
bash scripts/setup.sh
cargo build --release --quiet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
declare -A textbook=([random]="70.0 9.73 2.86 1.60 1.30" [consecutive]="59.5 6.80 2.06 1.30 1.16")
for sampling in random consecutive; do
    ./target/release/charrnn train --corpus "$corpus" --limit-chars 10000 --sampling "$sampling" --epochs "$epochs" \
        --dtype "$dtype" --out "$tmp/m" --force >"$tmp/charrnn.txt" 2>/dev/null
    .venv/bin/python benches/reference_textbook.py --corpus "$corpus" --limit-chars 10000 --sampling "$sampling" \
        --epochs "$epochs" >"$tmp/pytorch.txt"
    echo "$sampling sampling on $corpus (first 10000 characters), charrnn --dtype $dtype"
    printf '%-8s %-12s %-12s %s\n' epoch charrnn pytorch "textbook (its own corpus)"
    paste <(grep '^epoch' "$tmp/charrnn.txt" | sed 's/epoch \([0-9]*\), perplexity \([0-9.]*\).*/\1 \2/') \
          <(grep '^epoch' "$tmp/pytorch.txt" | sed 's/.*perplexity \([0-9.]*\).*/\1/') \
          <(tr ' ' '\n' <<<"${textbook[$sampling]}") |
        awk '{ printf "%-8s %-12.3f %-12.3f %s\n", $1, $2, $3, $4 }'
    echo
done

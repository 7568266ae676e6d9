#!/usr/bin/env bash
# Validation perplexity and training throughput of every cell (rnn, gru, lstm) x 1/2 layers x one-hot/embedding
# input under one fixed budget, then the two initialisations for each cell. Prints markdown tables.
# Usage: bash benches/compare_cells.sh [CORPUS]   (LIMIT=50000 EPOCHS=10 by default; about 8 minutes on 2 cores)
# SECTIONS="cells init dropout deep" chooses the tables (default: the first three); LIMIT=all trains on the
# whole corpus; THREADS=N sets the CPU threads; CELLS="rnn" limits the cells (default: rnn gru lstm).
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-data/yuanqu.txt}
limit=${LIMIT:-50000}
epochs=${EPOCHS:-10}
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
limit_flag=(--limit-chars "$limit")
if [ "$limit" = all ]; then
    limit=$(LC_ALL=C.UTF-8 wc -m < "$corpus")
    limit_flag=()
fi
bash scripts/setup.sh --build-only
cargo build --release --quiet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The budget: Adam at its default rate, hidden 256, 35 steps x 32 sequences, 10% held out; the written-out
# cells for every row (what --backend auto, the default, also picks on a CPU without dropout).
common=(--corpus "$corpus" "${limit_flag[@]}" --epochs "$epochs" --val-frac 0.1 --optimizer adam --hidden 256
        --steps 35 --batch 32 --pred-period 1 --pred-len 0 --seed 0 --device cpu --backend scratch "${threads[@]}")
# Characters trained per epoch: random sampling uses floor((n - 1) / 35 / 32) minibatches of 32 x 35.
train_chars=$(( limit - (limit + 5) / 10 ))
echo "($train_chars characters trained per epoch)"
per_epoch=$(( (train_chars - 1) / 35 / 32 * 32 * 35 ))

run() { # prints: best validation perplexity, its epoch, characters per second
    ./target/release/charrnn train "${common[@]}" "$@" --out "$tmp/m" --force 2>/dev/null |
        awk -v chars="$per_epoch" '/^epoch/ {
            split($0, a, "val perplexity "); split(a[2], v, ","); split($0, t, "time "); split(t[2], s, " ");
            n++; secs += s[1]; if (best == "" || v[1] + 0 < best) { best = v[1] + 0; at = n } }
            END { printf "%.2f | %d | %.0f", best, at, n * chars / secs }'
}

sections=${SECTIONS:-cells init dropout}
cells=${CELLS:-rnn gru lstm}
echo "Corpus $corpus, first $limit characters (10% held out), $epochs epochs, Adam lr 0.002, hidden 256, init uniform."
if [[ $sections == *cells* ]]; then
echo
echo "| cell | layers | input | best val perplexity | at epoch | training chars/s |"
echo "| --- | ---: | --- | ---: | ---: | ---: |"
for cell in $cells; do
    for layers in 1 2; do
        for embed in 0 64; do
            input=$([ "$embed" = 0 ] && echo one-hot || echo "embedding $embed")
            echo "| $cell | $layers | $input | $(run --cell "$cell" --layers "$layers" --embed "$embed" --init uniform) |"
        done
    done
done
fi
if [[ $sections == *init* ]]; then
echo
echo "Initialisation, 1 layer, embedding 64, same budget:"
echo
echo "| cell | init | best val perplexity | at epoch | training chars/s |"
echo "| --- | --- | ---: | ---: | ---: |"
for cell in $cells; do
    for init in normal uniform; do
        echo "| $cell | $init | $(run --cell "$cell" --embed 64 --init "$init") |"
    done
done
fi
if [[ $sections == *dropout* ]]; then
echo
echo "2 layers, embedding 64, dropout 0.3, same budget:"
echo
echo "| cell | best val perplexity | at epoch | training chars/s |"
echo "| --- | ---: | ---: | ---: |"
for cell in $cells; do
    echo "| $cell | $(run --cell "$cell" --layers 2 --embed 64 --dropout 0.3 --init uniform) |"
done
fi
if [[ $sections == *deep* ]]; then
echo
echo "2 layers, embedding 64, same budget:"
echo
echo "| cell | best val perplexity | at epoch | training chars/s |"
echo "| --- | ---: | ---: | ---: |"
for cell in $cells; do
    echo "| $cell | $(run --cell "$cell" --layers 2 --embed 64 --init uniform) |"
done
fi

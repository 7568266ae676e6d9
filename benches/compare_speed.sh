#!/usr/bin/env bash
# Training and prediction speed of charrnn against PyTorch baselines shipped here, alternating runs in one
# invocation: the textbook workload (hidden 256, batch 32, steps 35, SGD lr 100, clipping 0.01, random
# sampling) on the first LIMIT characters of the bundled corpus, trained by
#   charrnn                  the CLI,
#   pytorch scratch          benches/reference_textbook.py, the textbook's loop written in tensor operations,
#   pytorch nn.RNN           the same loop on torch.nn.RNN's fused kernel (--model nn),
# each ROUNDS times in turn. Prints training characters per second (minibatch time only, as the report lines
# give it), wall time and peak RSS of each process, the median of the rounds and charrnn's ratios; then
# greedy prediction of 5,000 characters, process start to exit.
# Usage: bash benches/compare_speed.sh [CORPUS]   (LIMIT=50000 EPOCHS=3 ROUNDS=3 THREADS=all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-data/yuanqu.txt}
limit=${LIMIT:-50000}
epochs=${EPOCHS:-3}
rounds=${ROUNDS:-3}
threads=${THREADS:-$(nproc)}
bash scripts/setup.sh --build-only
cargo build --release --quiet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chars_per_epoch=$(( (limit - 1) / 35 / 32 * 32 * 35 ))
py=(.venv/bin/python benches/reference_textbook.py --corpus "$corpus" --limit-chars "$limit" --epochs "$epochs"
    --pred-period 1 --pred-len 0 --threads "$threads")
declare -A cmd=(
    [charrnn]="./target/release/charrnn train --corpus $corpus --limit-chars $limit --epochs $epochs --val-frac 0 --pred-period 1 --pred-len 0 --device cpu --threads $threads --out $tmp/m"
    [pytorch-scratch]="${py[*]} --model scratch"
    [pytorch-nn.RNN]="${py[*]} --model nn"
)
names=(charrnn pytorch-scratch pytorch-nn.RNN)
# One run: prints "chars/s wall_s rss_mb".
measure() {
    /usr/bin/time -f "%e %M" -o "$tmp/time" $1 >"$tmp/out" 2>/dev/null
    read -r wall rss <"$tmp/time"
    grep '^epoch' "$tmp/out" | sed 's/.*time \([0-9.]*\) sec.*/\1/' |
        awk -v chars=$((chars_per_epoch * epochs)) -v wall="$wall" -v rss="$rss" '{ s += $1 } END { print chars / s, wall, rss / 1024 }'
}
div() { awk -v a="$1" -v b="$2" 'BEGIN { print a / b }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for r in $(seq "$rounds"); do
    for n in "${names[@]}"; do
        measure "${cmd[$n]}" >>"$tmp/$n.runs"
    done
done
echo "Training: $corpus, first $limit characters ($chars_per_epoch trained per epoch), $epochs epochs, $threads threads, $rounds rounds (median)"
printf '| %-16s | %14s | %9s | %13s |\n' trainer "chars/s" "wall (s)" "peak RSS (MB)"
printf '| %-16s | %14s | %9s | %13s |\n' --- ---: ---: ---:
declare -A speed rss
for n in "${names[@]}"; do
    speed[$n]=$(cut -d' ' -f1 "$tmp/$n.runs" | median)
    wall=$(cut -d' ' -f2 "$tmp/$n.runs" | median)
    rss[$n]=$(cut -d' ' -f3 "$tmp/$n.runs" | median)
    printf '| %-16s | %14.0f | %9.2f | %13.0f |\n' "$n" "${speed[$n]}" "$wall" "${rss[$n]}"
done
for n in pytorch-scratch pytorch-nn.RNN; do
    printf 'charrnn / %s: %.2fx the speed, %.2fx the peak RSS\n' "$n" "$(div "${speed[charrnn]}" "${speed[$n]}")" "$(div "${rss[charrnn]}" "${rss[$n]}")"
done

# Prediction, 5,000 greedy characters, process start to exit (a 1-epoch model; speed does not depend on it).
./target/release/charrnn train --corpus "$corpus" --limit-chars "$limit" --epochs 1 --val-frac 0 --pred-len 0 --device cpu \
    --out "$tmp/p" --quiet
for r in $(seq "$rounds"); do
    /usr/bin/time -f "%e" -o "$tmp/t" ./target/release/charrnn predict --model "$tmp/p" --prefix 分开 --num-chars 5000 \
        --device cpu >/dev/null
    cat "$tmp/t" >>"$tmp/predict.charrnn"
    /usr/bin/time -f "%e" -o "$tmp/t" .venv/bin/python benches/reference_textbook.py --corpus "$corpus" \
        --limit-chars "$limit" --predict 5000 --threads "$threads" >/dev/null
    cat "$tmp/t" >>"$tmp/predict.pytorch"
done
echo
echo "Prediction: 5,000 greedy characters, process start to exit (median of $rounds)"
a=$(median <"$tmp/predict.charrnn")
b=$(median <"$tmp/predict.pytorch")
printf '| charrnn | %.2f s | %.0f chars/s |\n| pytorch scratch | %.2f s | %.0f chars/s |\n' "$a" "$(div 5000 "$a")" "$b" "$(div 5000 "$b")"
printf 'charrnn / pytorch: %.2fx the speed\n' "$(div "$b" "$a")"

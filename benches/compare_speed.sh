#!/usr/bin/env bash
# Training and prediction speed of charrnn against PyTorch baselines shipped here, alternating runs in one
# invocation: the textbook workload (hidden 256, batch 32, steps 35, SGD lr 100, clipping 0.01, random
# sampling) on the first LIMIT characters of the bundled corpus, trained by
#   charrnn fp32 / bf16       the CLI (--dtype fp32 and bf16),
#   pytorch scratch           benches/reference_textbook.py, the textbook's loop written in tensor operations,
#   pytorch nn.RNN            the same loop on torch.nn.RNN's fused kernel (--model nn),
#   pytorch nn.RNN bf16       the same with its output layer's product under torch.autocast(bfloat16), which
#                             is what charrnn's --dtype bf16 puts in bfloat16 (--model nn --dtype bf16),
# each ROUNDS times in turn. Both sides are timed alike: the epoch's minibatches by a clock read at its start
# and after its loss is read back (once an epoch on both sides; the reference clips on the device too, so
# neither waits for the host within an epoch), printed to the microsecond (charrnn: its --verbose rate).
# Prints training characters per second, wall time and peak RSS of each process, and peak RSS beyond an
# idle process of the same kind (`charrnn --version`; `python -c "import torch"`, which loads PyTorch's CUDA
# libraries where charrnn loads libtorch_cuda only with a GPU driver), the median of the rounds and
# charrnn's ratios; the work per character and the fraction of the measured matrix-product peak
# (benches/matmul_peak.py) it reaches; then greedy prediction of 5,000 characters on one thread each
# (charrnn's default for predict; a step of batch 1 is too small to split): process start to exit, and the
# loop alone as the difference from 10 characters, the same way for both.
#
# Usage: bash benches/compare_speed.sh [CORPUS]
#   LIMIT=10000 EPOCHS=20 ROUNDS=3 THREADS=<all cores> DEVICE=cpu (or cuda)
#   CHARRNN=path/to/charrnn PY=path/to/python: use these instead of building (for a machine without Rust).
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-data/yuanqu.txt}
limit=${LIMIT:-10000}
epochs=${EPOCHS:-20}
rounds=${ROUNDS:-3}
threads=${THREADS:-$(nproc)}
device=${DEVICE:-cpu}
if [ -z "${CHARRNN:-}" ]; then
    bash scripts/setup.sh --build-only
    cargo build --release --quiet
    CHARRNN=./target/release/charrnn
fi
py=${PY:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chars_per_epoch=$(( (limit - 1) / 35 / 32 * 32 * 35 ))
vocab=$("$py" -c "import sys; t = open(sys.argv[1], encoding='utf-8').read().replace('\n', ' ').replace('\r', ' '); print(len(set(t[:int(sys.argv[2])])))" "$corpus" "$limit")
ref=("$py" benches/reference_textbook.py --corpus "$corpus" --limit-chars "$limit" --epochs "$epochs"
     --pred-period 1 --pred-len 0 --threads "$threads" --device "$device")
train="$CHARRNN train --corpus $corpus --limit-chars $limit --epochs $epochs --val-frac 0 --pred-period 1 --pred-len 0 --device $device --threads $threads --out $tmp/m --force --verbose"
declare -A cmd=(
    [charrnn-fp32]="$train --dtype fp32"
    [charrnn-bf16]="$train --dtype bf16"
    [pytorch-scratch]="${ref[*]} --model scratch"
    [pytorch-nn.RNN]="${ref[*]} --model nn"
    [pytorch-nn.RNN-bf16]="${ref[*]} --model nn --dtype bf16"
)
names=(charrnn-fp32 charrnn-bf16 pytorch-scratch pytorch-nn.RNN pytorch-nn.RNN-bf16)
# Runs a command; writes "wall_s peak_rss_kb" (getrusage of the child) to FILE, its stdout to FILE.out; on
# failure prints the command and the end of its stderr.
timed() {
    local file=$1
    shift
    if ! "$py" -c '
import resource, subprocess, sys, time
start = time.time()
code = subprocess.call(sys.argv[2:], stdout=open(sys.argv[1] + ".out", "w"), stderr=open(sys.argv[1] + ".err", "w"))
open(sys.argv[1], "w").write("%.3f %d\n" % (time.time() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)' "$file" "$@"; then
        echo "failed: $*" >&2
        grep -v "RNN.cpp" "$file.err" | tail -5 >&2
        exit 1
    fi
}
# One training run: prints "chars/s wall_s rss_mb". Epoch times come from charrnn's --verbose speed (its
# "time" has two decimals, too coarse for its epochs), else from the report line.
measure() {
    # shellcheck disable=SC2086
    timed "$tmp/time" $1
    read -r wall rss <"$tmp/time"
    grep '^epoch' "$tmp/time.out" | tr -d , |
        awk -v c="$chars_per_epoch" '/chars\/s/ { print c / $(NF - 1); next } { sub(/.*time /, ""); print $1 }' |
        awk -v chars=$((chars_per_epoch * epochs)) -v wall="$wall" -v rss="$rss" '{ s += $1 } END { print chars / s, wall, rss / 1024 }'
}
div() { awk -v a="$1" -v b="$2" 'BEGIN { print a / b }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for r in $(seq "$rounds"); do
    for n in "${names[@]}"; do
        measure "${cmd[$n]}" >>"$tmp/$n.runs"
    done
done
echo "Training on $device: $corpus, first $limit characters (vocabulary $vocab, $chars_per_epoch trained per epoch), $epochs epochs, $threads threads, $rounds rounds (median)"
# Peak RSS of an idle process of each kind (MB).
timed "$tmp/idle" $CHARRNN --version
idle_charrnn=$(awk '{ print $2 / 1024 }' "$tmp/idle")
timed "$tmp/idle" "$py" -c "import torch"
idle_torch=$(awk '{ print $2 / 1024 }' "$tmp/idle")
printf '| %-19s | %9s | %9s | %13s | %17s |\n' trainer "chars/s" "wall (s)" "peak RSS (MB)" "beyond idle (MB)"
printf '| %-19s | %9s | %9s | %13s | %17s |\n' --- ---: ---: ---: ---:
declare -A speed rss
for n in "${names[@]}"; do
    speed[$n]=$(cut -d' ' -f1 "$tmp/$n.runs" | median)
    wall=$(cut -d' ' -f2 "$tmp/$n.runs" | median)
    rss[$n]=$(cut -d' ' -f3 "$tmp/$n.runs" | median)
    idle=$idle_torch
    [[ $n == charrnn-* ]] && idle=$idle_charrnn
    printf '| %-19s | %9.0f | %9.2f | %13.0f | %17.0f |\n' "$n" "${speed[$n]}" "$wall" "${rss[$n]}" "$(awk -v r="${rss[$n]}" -v i="$idle" 'BEGIN { print r - i }')"
done
printf 'idle processes: charrnn --version %.0f MB, python -c "import torch" %.0f MB\n' "$idle_charrnn" "$idle_torch"
for ours in charrnn-fp32 charrnn-bf16; do
    for n in pytorch-scratch pytorch-nn.RNN pytorch-nn.RNN-bf16; do
        printf '%s / %s: %.2fx the speed, %.2fx the peak RSS\n' "$ours" "$n" "$(div "${speed[$ours]}" "${speed[$n]}")" "$(div "${rss[$ours]}" "${rss[$n]}")"
    done
done

# Counted work: per trained character, h W_hh and h W_hq forward (2H^2 + 2HV), and backward their input
# gradients and weight gradients (twice that); the one-hot input is a row gather, elementwise work is not counted.
flops=$(( 6 * 256 * (256 + vocab) ))
read -r peak32 peak16 < <("$py" benches/matmul_peak.py --device "$device" --threads "$threads" | awk '{ printf "%s ", $2 } END { print "" }')
echo
echo "Work: $flops FLOP per trained character (6H(H+V), H 256, V $vocab); measured matrix-product peak: fp32 $peak32 GFLOP/s, bf16 $peak16 GFLOP/s"
for n in charrnn-fp32 charrnn-bf16 pytorch-nn.RNN; do
    awk -v n="$n" -v s="${speed[$n]}" -v f="$flops" -v p32="$peak32" -v p16="$peak16" 'BEGIN {
        g = s * f / 1e9; printf "%s: %.0f GFLOP/s, %.0f%% of the fp32 peak, %.0f%% of the bf16 peak\n", n, g, 100 * g / p32, 100 * g / p16 }'
done

# Prediction, 5,000 greedy characters, process start to exit (a 1-epoch model; speed does not depend on it).
$CHARRNN train --corpus "$corpus" --limit-chars "$limit" --epochs 1 --val-frac 0 --pred-len 0 --device "$device" \
    --out "$tmp/p" --quiet
for r in $(seq "$rounds"); do
    timed "$tmp/t" $CHARRNN predict --model "$tmp/p" --prefix 分开 --num-chars 5000 --device "$device" --threads 1
    cut -d' ' -f1 "$tmp/t" >>"$tmp/predict.charrnn"
    timed "$tmp/t" $CHARRNN predict --model "$tmp/p" --prefix 分开 --num-chars 10 --device "$device" --threads 1
    cut -d' ' -f1 "$tmp/t" >>"$tmp/start.charrnn"
    timed "$tmp/t" "$py" benches/reference_textbook.py --corpus "$corpus" --limit-chars "$limit" --predict 5000 \
        --threads 1 --device "$device"
    cut -d' ' -f1 "$tmp/t" >>"$tmp/predict.pytorch"
    timed "$tmp/t" "$py" benches/reference_textbook.py --corpus "$corpus" --limit-chars "$limit" --predict 10 \
        --threads 1 --device "$device"
    cut -d' ' -f1 "$tmp/t" >>"$tmp/start.pytorch"
done
echo
echo "Prediction on $device: 5,000 greedy characters, one thread each (median of $rounds); end to end is process start to exit,"
echo "the loop alone is that less the same program's time for 10 characters, for both"
a=$(median <"$tmp/predict.charrnn")
a0=$(median <"$tmp/start.charrnn")
b=$(median <"$tmp/predict.pytorch")
b0=$(median <"$tmp/start.pytorch")
al=$(awk -v a="$a" -v z="$a0" 'BEGIN { print a - z }')
b1=$(awk -v a="$b" -v z="$b0" 'BEGIN { print a - z }')
printf '| %-15s | %12s | %13s |\n' "" "end to end" "the loop alone"
printf '| %-15s | %12s | %13s |\n' --- ---: ---:
printf '| %-15s | %10.2f s | %11.3f s |\n' charrnn "$a" "$al" "pytorch scratch" "$b" "$b1"
printf 'charrnn / pytorch: %.2fx the speed end to end, %.2fx in the loop; charrnn predict --num-chars 10: %.2f s\n' \
    "$(div "$b" "$a")" "$(div "$b1" "$al")" "$a0"

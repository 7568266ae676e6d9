#!/usr/bin/env bash
# Tiny Shakespeare on nanoGPT's terms (issue 16): 65 characters with newlines kept, the first 90% trained
# and the last 10% held out (--val-frac 0.1), a wall-clock budget (LIMIT, default 170s of training; nanoGPT's
# shakespeare_char reaches a validation loss of 1.4697 nats in about 3 minutes on one A100). Each
# configuration below trains with Adam under --time-limit, scoring the held-out text every EVAL_EVERY
# minibatches; every output line is stamped with the seconds since that process started, so the table
# gives the first time each run's held-out loss reached 1.4697 nats (perplexity 4.348) and its best loss.
# CONCURRENT=1 (the default on a GPU) runs the configurations at once, sharing the device, which can only
# make each slower than alone. On the CPU (DEVICE=cpu) it runs a scaled-down configuration instead.
# Usage: CHARRNN=path/to/charrnn [CORPUS=tinyshakespeare.txt] [DEVICE=cuda|cpu] [LIMIT=170s] [PY=python3]
#        [OUTDIR=dir for the logs] [CONFIGS="lstm-2x1024 ..." to run only those] bash benches/gpu_shakespeare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CHARRNN:-./target/release/charrnn}
corpus=${CORPUS:-data/tinyshakespeare.txt}
device=${DEVICE:-cuda}
limit=${LIMIT:-170s}
py=${PY:-python3}
outdir=${OUTDIR:-$(mktemp -d)}
mkdir -p "$outdir"
if [ "$device" != cpu ]; then
    export LD_LIBRARY_PATH="$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    nvidia-smi -L
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
common=(--corpus "$corpus" --keep-newlines --val-frac 0.1 --optimizer adam --clip 1 --sampling consecutive
    --epochs 1000 --pred-period 100000 --checkpoint-every 1000 --device "$device" --time-limit "$limit" -v)
declare -A configs
if [ "$device" = cpu ]; then
    configs[lstm-1x256]="--cell lstm --hidden 256 --embed 64 --batch 32 --steps 64 --lr 0.003 --eval-every ${EVAL_EVERY:-100}"
    concurrent=${CONCURRENT:-0}
else
    configs[lstm-2x1024]="--cell lstm --layers 2 --hidden 1024 --embed 128 --dropout 0.3 --backend fused --batch 64 --steps 128 --lr 0.002 --lr-decay 0.95 --eval-every ${EVAL_EVERY:-40} --threads 4"
    configs[lstm-3x512]="--cell lstm --layers 3 --hidden 512 --embed 64 --dropout 0.2 --backend fused --batch 64 --steps 128 --lr 0.002 --lr-decay 0.95 --eval-every ${EVAL_EVERY:-40} --threads 4"
    configs[gru-2x1024]="--cell gru --layers 2 --hidden 1024 --embed 128 --dropout 0.3 --backend fused --batch 64 --steps 128 --lr 0.002 --lr-decay 0.95 --eval-every ${EVAL_EVERY:-40} --threads 4"
    concurrent=${CONCURRENT:-1}
fi
if [ -n "${CONFIGS:-}" ]; then
    for name in "${!configs[@]}"; do
        [[ " $CONFIGS " == *" $name "* ]] || unset "configs[$name]"
    done
fi
# Prefixes each line of stdin with the seconds since $1 (a `date +%s.%N` value).
since() { awk -v now="$(date +%s.%N)" -v start="$1" 'BEGIN { printf "%.2f", now - start }'; }
stamp() { while IFS= read -r line; do printf '%8s s  %s\n' "$(since "$1")" "$line"; done; }
run() {
    local name=$1 start
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    $bin train "${common[@]}" ${configs[$name]} --out "$tmp/$name" 2>&1 | stamp "$start" >"$outdir/$name.log"
    since "$start" >"$outdir/$name.wall"
}
echo "charrnn $($bin --version | cut -d' ' -f2) on $device; corpus $corpus; training limit $limit; concurrent $concurrent"
for name in "${!configs[@]}"; do
    echo "$name: ${configs[$name]}"
    if [ "$concurrent" = 1 ]; then run "$name" & else run "$name"; fi
done
wait
echo
printf '%-14s %-10s %-16s %-28s %s\n' config params "best val loss" "first at <= 1.4697 nats" "wall (s)"
for name in "${!configs[@]}"; do
    log="$outdir/$name.log"
    params=$(sed -n 's/.*, \([0-9,]*\) parameters;.*/\1/p' "$log" | head -1)
    # "iter N, epoch E, ..., val perplexity P, ..." and "epoch N, ..., val perplexity P, ..." lines.
    summary=$("$py" - "$log" <<'PY'
import math, re, sys
best, first = None, None
for line in open(sys.argv[1], encoding="utf-8"):
    m = re.match(r"\s*([0-9.]+) s  (iter|epoch) .*val perplexity ([0-9.]+)", line)
    if not m:
        continue
    t, loss = float(m.group(1)), math.log(float(m.group(3)))
    best = loss if best is None else min(best, loss)
    if first is None and loss <= 1.4697:
        first = f"{t:.1f} s (loss {loss:.4f})"
print(f"{best:.4f}" if best is not None else "none", "|", first or "not reached")
PY
)
    printf '%-14s %-10s %-16s %-28s %s\n' "$name" "$params" "${summary%% |*}" "${summary#*| }" "$(cat "$outdir/$name.wall")"
done
echo
for name in "${!configs[@]}"; do echo "== $name"; tail -4 "$outdir/$name.log"; done

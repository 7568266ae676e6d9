#!/usr/bin/env bash
# The README's "Training on your own text" figures: tiny Shakespeare (newlines kept, last 10% held out),
# the recommended setup for English text against the textbook's defaults for the same number of epochs.
# Prints, per setup, the held-out perplexity and loss of the kept (best) epoch and the wall time.
# Usage: bash benches/own_text.sh [CORPUS]   (EPOCHS=N, default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-data/tinyshakespeare.txt}
epochs=${EPOCHS:-5}
# shellcheck source=benches/common.sh
source benches/common.sh
common=(--corpus "$corpus" --keep-newlines --val-frac 0.1 --epochs "$epochs" --pred-period "$epochs" --pred-len 200
    --prefix 'ROMEO:' --device cpu)
declare -A setups=(
    [recommended]="--cell gru --hidden 256 --embed 64 --optimizer adam --steps 64 --batch 32 --clip 1"
    [textbook]=""
)
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; charrnn $($bin --version | cut -d' ' -f2); corpus $corpus, $epochs epochs"
for name in recommended textbook; do
    start=$SECONDS
    # shellcheck disable=SC2086
    $bin train "${common[@]}" ${setups[$name]} --out "$tmp/$name" >"$tmp/$name.out" 2>"$tmp/$name.err"
    wall=$((SECONDS - start))
    val=$($py -c 'import json, math, sys; v = json.load(open(sys.argv[1]))["validation"]; print("held-out perplexity %.3f (%.4f nats/char, epoch %d)" % (v["perplexity"], math.log(v["perplexity"]), v["epoch"]))' "$tmp/$name/model.json")
    echo
    echo "== $name: ${setups[$name]:-(defaults)} --keep-newlines --val-frac 0.1 --epochs $epochs"
    echo "$val; ${wall}s"
    echo "sample after epoch $epochs (greedy, prefix ROMEO:):"
    sed -n 's/^ - //p' "$tmp/$name.out" | tail -1
done

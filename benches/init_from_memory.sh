#!/usr/bin/env bash
# Peak memory of `train --init-from` on a big corpus (issue 23): a small model trained on the bundled Chinese
# corpus, fine-tuned on tiny Shakespeare repeated to SIZE MB, whose characters are all new to it, so that the
# corpus is read in the grown vocabulary (a remapped copy). Prints the wall time and peak RSS of the run
# (preparing, remapping, 10 minibatches), from /usr/bin/time, and of the same run again (everything cached).
# Usage: bash benches/init_from_memory.sh   [SIZE=200] [CHARRNN=target/release/charrnn]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${CHARRNN:-target/release/charrnn}")
size=${SIZE:-200}
work=$(mktemp -d "${TMPDIR:-/tmp}/charrnn-initfrom.XXXXXX")
trap 'rm -rf "$work"' EXIT
export CHARRNN_CACHE="$work/cache"
: > "$work/big.txt"
while [ "$(stat -c %s "$work/big.txt")" -lt $((size * 1000000)) ]; do cat data/tinyshakespeare.txt >> "$work/big.txt"; done
"$bin" train --corpus data/yuanqu.txt --limit-chars 10000 --epochs 1 --hidden 64 --device cpu -q --out "$work/src"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; charrnn: $bin"
for run in first again; do
    /usr/bin/time -o "$work/time" -f "%e %M" "$bin" train --corpus "$work/big.txt" --init-from "$work/src" \
        --max-iters 10 --device cpu -q --out "$work/tuned" --force
    awk -v run="$run" -v mb="$(stat -c %s "$work/big.txt")" \
        '{ printf "%s run, %.0f MB corpus: %.2f s, peak RSS %.0f MB\n", run, mb / 1e6, $1, $2 / 1024 }' "$work/time"
done

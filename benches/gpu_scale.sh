#!/usr/bin/env bash
# Issue 24: charrnn against PyTorch's own modules on one GPU, the same card in the same run, timed the same
# way (benches/reference_cells.py: nn.Embedding, nn.LSTM / nn.GRU on cuDNN, nn.Linear, torch.optim.Adam,
# clip_grad_norm_; the epoch's minibatches timed with the loss read back once): LSTM and GRU, LAYERS x HIDDEN
# (2 x 1024) over an embedding of EMBED (128), batch 64, 128 steps, Adam lr 0.002, clipping at 1, random
# sampling, one epoch of tiny Shakespeare with the last 10% held out. charrnn runs with --backend auto (on a
# GPU: cuDNN's fused kernels, reading the weights in place from the flat parameter buffer); the script
# counts cuDNN's weight-copy warning lines ("RNN module weights are not part of single contiguous chunk of
# memory"), which should be none. Then the time to nanoGPT's shakespeare_char validation loss (1.4697
# nats): benches/gpu_shakespeare.sh with its lstm-2x1024 configuration alone, for SHAKESPEARE_LIMIT
# (default 60s; 0 skips it).
# Usage: CHARRNN=path/to/charrnn [PY=python3] [CORPUS=tinyshakespeare.txt] [DEVICE=cuda] [HIDDEN=1024]
#        [LAYERS=2] [EMBED=128] [LIMIT_CHARS=0 (all)] [SHAKESPEARE_LIMIT=60s] bash benches/gpu_scale.sh
# (DEVICE=cpu with a small HIDDEN and LIMIT_CHARS tries the script itself on a machine without a GPU.)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CHARRNN:?set CHARRNN to the binary}
py=${PY:-python3}
corpus=${CORPUS:-data/tinyshakespeare.txt}
device=${DEVICE:-cuda}
hidden=${HIDDEN:-1024}
layers=${LAYERS:-2}
embed=${EMBED:-128}
limit=${LIMIT_CHARS:-0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export CHARRNN_CACHE="$tmp/cache"
if [ "$device" != cpu ]; then
    export LD_LIBRARY_PATH="$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    nvidia-smi -L
fi
shape=(--layers "$layers" --hidden "$hidden" --embed "$embed" --batch 64 --steps 128 --lr 0.002 --clip 1
    --epochs 1 --val-frac 0.1 --limit-chars "$limit")
# The characters one epoch trains: whole windows of 128 in whole minibatches of 64 (both trainers' sampler).
chars=$("$py" -c 'import sys
t = open(sys.argv[1], encoding="utf-8").read()
t = t[: int(sys.argv[2])] if int(sys.argv[2]) else t
n = len(t) - round(len(t) * 0.1)
print(((n - 1) // 128) // 64 * 64 * 128)' "$corpus" "$limit")
echo "charrnn $($bin --version | cut -d' ' -f2), PyTorch $("$py" -c 'import torch; print(torch.__version__)') on $device; $corpus; $chars characters an epoch"
echo "| cell | trainer | training chars/s | held-out perplexity | cuDNN weight-copy warnings |"
echo "| --- | --- | ---: | ---: | ---: |"
for cell in lstm gru; do
    $bin train --corpus "$corpus" --cell "$cell" "${shape[@]}" --optimizer adam --pred-len 0 --device "$device" \
        --out "$tmp/$cell" -v >"$tmp/$cell.log" 2>&1 || { cat "$tmp/$cell.log" >&2; exit 1; }
    ours=$(awk '/chars\/s/ { for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^chars\/s/) { gsub(/,/, "", $i); s = $i } } END { print s }' "$tmp/$cell.log")
    ours_val=$(grep -o 'val perplexity [0-9.]*' "$tmp/$cell.log" | tail -1 | cut -d' ' -f3)
    backend=$(grep -o '"backend": *"[a-z]*"' "$tmp/$cell/model.json" | head -1 | grep -o '[a-z]*"$' | tr -d '"')
    warnings=$(grep -c 'contiguous chunk' "$tmp/$cell.log" || true)
    "$py" benches/reference_cells.py --corpus "$corpus" --cell "$cell" "${shape[@]}" --device "$device" \
        >"$tmp/$cell.ref" 2>&1 || { cat "$tmp/$cell.ref" >&2; exit 1; }
    read -r secs theirs_val < <(awk '/^epoch/ { for (i = 1; i <= NF; i++) { if ($i == "time") t = $(i + 1); if ($i == "val") v = $(i + 2) } } END { gsub(/,/, "", v); print t, v }' "$tmp/$cell.ref")
    theirs=$(awk -v c="$chars" -v t="$secs" 'BEGIN { printf "%.0f", c / t }')
    echo "| $cell | charrnn (--backend auto: $backend) | $ours | $ours_val | $warnings |"
    echo "| $cell | torch.nn.${cell^^} | $theirs | $theirs_val | |"
    awk -v a="$ours" -v b="$theirs" -v c="$cell" 'BEGIN { printf "%s: charrnn %.2fx the training speed of torch.nn.%s\n", c, a / b, toupper(c) }'
done
if [ "${SHAKESPEARE_LIMIT:-60s}" != 0 ]; then
    echo
    CHARRNN=$bin PY=$py CORPUS=$corpus DEVICE=$device CONFIGS=lstm-2x1024 CONCURRENT=0 \
        LIMIT=${SHAKESPEARE_LIMIT:-60s} bash benches/gpu_shakespeare.sh
fi

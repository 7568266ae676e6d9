#!/usr/bin/env bash
# Issue 16: gated cells on a realistic setup against PyTorch's own modules, same settings, same run: GRU and
# LSTM, 1 layer of 256 over an embedding of 64, Adam lr 0.002, clipping at 1, T 64, B 32, random sampling,
# one epoch of tiny Shakespeare (data/tinyshakespeare.txt) with the last 10% held out; charrnn
# (written-out backward pass) against benches/reference_cells.py (nn.Embedding, nn.GRU / nn.LSTM,
# nn.Linear, torch.optim.Adam, clip_grad_norm_). Both time the epoch's minibatches the same way (loss read
# back once, perf_counter / charrnn's --verbose rate); wall time and peak RSS are the whole process's.
# charrnn runs with its default backend (auto: on a CPU the written-out cells, with charrnn's own backward
# pass and elementwise loops) and with the fused kernels (oneDNN's LSTM; libtorch's GRU). Alternates them,
# ROUNDS rounds, medians. The share of the CPU's peak: the model's arithmetic per character (forward
# 2 (D kH + H kH + H V), three times that with the backward pass) times the characters per second, against
# the float32 matrix-product peak that benches/matmul_peak.py measures on the same machine first.
# Usage: bash benches/compare_gated.sh   (ROUNDS=3, CORPUS=data/tinyshakespeare.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${CORPUS:-data/tinyshakespeare.txt}
rounds=${ROUNDS:-3}
threads=$(nproc)
# shellcheck source=benches/common.sh
source benches/common.sh
# One run: prints "chars/s wall_s rss_mb val_perplexity".
run() {
    local kind=$1 cell=$2
    local cmd
    if [[ $kind == charrnn* ]]; then
        local backend=auto
        [ "$kind" = charrnn-other ] && backend=fused
        cmd=("$bin" train --corpus "$corpus" --cell "$cell" --hidden 256 --embed 64 --optimizer adam --lr 0.002
             --clip 1 --steps 64 --batch 32 --epochs 1 --val-frac 0.1 --pred-len 0 --threads "$threads"
             --backend "$backend" --out "$tmp/m" --force --verbose)
    else
        cmd=("$py" benches/reference_cells.py --corpus "$corpus" --limit-chars 0 --cell "$cell" --layers 1
             --hidden 256 --embed 64 --lr 0.002 --clip 1 --steps 64 --batch 32 --epochs 1 --val-frac 0.1
             --threads "$threads")
    fi
    "$py" -c '
import resource, subprocess, sys, time
start = time.perf_counter()
out = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - start
if out.returncode:
    sys.exit(out.stderr[-2000:])
print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
print(out.stdout + out.stderr)' "${cmd[@]}" >"$tmp/out"
    local wall rss
    read -r wall rss < <(head -1 "$tmp/out")
    if [[ $kind == charrnn* ]]; then
        # charrnn -v prints "... chars/s" per progress line; the epoch line has the held-out perplexity.
        awk -v w="$wall" -v r="$rss" '/chars\/s/ { for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^chars\/s/) { gsub(/,/, "", $i); s = $i } }
            /val perplexity/ { for (i = 1; i <= NF; i++) if ($i == "perplexity" && $(i - 1) == "val") { v = $(i + 1); gsub(/,/, "", v) } }
            END { print s, w, r, v }' "$tmp/out"
    else
        awk -v w="$wall" -v r="$rss" '/^epoch/ { n = split($0, f, " "); for (i = 1; i <= n; i++) { if (f[i] == "time") t = f[i + 1]; if (f[i] == "val") { v = f[i + 2]; gsub(/,/, "", v) } } }
            END { print t, w, r, v }' "$tmp/out" >"$tmp/ref"
        read -r t w r v <"$tmp/ref"
        chars=$("$py" -c "import sys; t = open(sys.argv[1], encoding='utf-8').read(); n = len(t) - round(len(t) * 0.1); print(((n - 1) // 64) // 32 * 32 * 64)" "$corpus")
        awk -v c="$chars" -v t="$t" -v w="$w" -v r="$r" -v v="$v" 'BEGIN { print c / t, w, r, v }'
    fi
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
peak=$("$py" benches/matmul_peak.py --threads "$threads" | awk '$1 == "fp32" { print $2 }')
vocab=$("$py" -c 'import sys; print(len(set(open(sys.argv[1], encoding="utf-8").read())))' "$corpus")
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $threads cores, fp32 peak $peak GFLOP/s (benches/matmul_peak.py); $corpus, one epoch, 10% held out; medians of $rounds"
echo "| cell | trainer | training chars/s | GFLOP/s (% of peak) | wall (s) | peak RSS (MB) | held-out perplexity |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
for cell in gru lstm; do
    kinds=(charrnn charrnn-other pytorch)
    for kind in "${kinds[@]}"; do : >"$tmp/$kind.runs"; done
    for _ in $(seq "$rounds"); do
        for kind in "${kinds[@]}"; do run "$kind" "$cell" >>"$tmp/$kind.runs"; done
    done
    k=$([ "$cell" = lstm ] && echo 4 || echo 3)
    flop=$(( 6 * (64 * k * 256 + 256 * k * 256 + 256 * vocab) ))
    for kind in "${kinds[@]}"; do
        label=$kind
        [ "$kind" = charrnn ] && label="charrnn (default: scratch)"
        [ "$kind" = charrnn-other ] && label="charrnn --backend fused"
        [ "$kind" = pytorch ] && label="torch.nn.${cell^^}"
        rate=$(cut -d' ' -f1 "$tmp/$kind.runs" | median)
        printf '| %s | %s | %.0f | %s | %.2f | %.0f | %s |\n' "$cell" "$label" "$rate" \
            "$(awk -v r="$rate" -v f="$flop" -v p="$peak" 'BEGIN { printf "%.0f (%.0f%%)", r * f / 1e9, 100 * r * f / 1e9 / p }')" \
            "$(cut -d' ' -f2 "$tmp/$kind.runs" | median)" "$(cut -d' ' -f3 "$tmp/$kind.runs" | median)" \
            "$(cut -d' ' -f4 "$tmp/$kind.runs" | median)"
    done
    awk -v a="$(cut -d' ' -f1 "$tmp/charrnn.runs" | median)" -v b="$(cut -d' ' -f1 "$tmp/pytorch.runs" | median)" \
        -v c="$cell" 'BEGIN { printf "%s: charrnn %.2fx the training speed of torch.nn.%s\n", c, a / b, toupper(c) }'
done

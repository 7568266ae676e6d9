#!/usr/bin/env bash
# Fine-tuning against training from scratch (issue 14). A GRU is trained on the bundled corpus (its first
# 100,000 characters); then, on each second text, the same settings train N epochs twice: once with
# --init-from that model, once from fresh weights. Both hold out the second text's last 10% and report the
# best held-out perplexity (model.json's validation) and the wall time of the run.
# Second texts: yuanqu characters 300,000-330,000 (other plays of the same anthology, with characters the
# first 100,000 lack) and the first 30,000 characters of tiny Shakespeare (another language: every
# character new). Usage: bash benches/compare_finetune.sh [SHAKESPEARE_TXT]   (EPOCHS=N, default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
shakespeare=${1:-data/tinyshakespeare.txt}
epochs=${EPOCHS:-10}
# shellcheck source=benches/common.sh
source benches/common.sh
$py -c 'import sys; t = open("data/yuanqu.txt", encoding="utf-8").read(); sys.stdout.write(t[300000:330000])' >"$tmp/yuanqu-later.txt"
$py -c 'import sys; t = open(sys.argv[1], encoding="utf-8").read(); sys.stdout.write(t[:30000])' "$shakespeare" >"$tmp/shakespeare-30k.txt"
common=(--optimizer adam --steps 64 --batch 32 --val-frac 0.1 --pred-period 1000 --device cpu -q)
seconds() { local start=$SECONDS; "$@"; echo $((SECONDS - start)); }
val() { $py -c 'import json, sys; v = json.load(open(sys.argv[1]))["validation"]; print("%.3f (epoch %d)" % (v["perplexity"], v["epoch"]))' "$1/model.json"; }

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; charrnn $($bin --version | cut -d' ' -f2)"
t=$(seconds $bin train --corpus data/yuanqu.txt --limit-chars 100000 --cell gru --hidden 256 --embed 64 --epochs 10 \
    "${common[@]}" --out "$tmp/source")
echo "source: gru 1x256, embedding 64, adam, T 64, B 32, 10 epochs on yuanqu's first 100,000 characters: ${t}s, held-out perplexity $(val "$tmp/source")"
echo
printf '%-22s %-12s %-24s %-8s %-24s %s\n' "second text" "new chars" "fine-tuned: val ppl" "time" "from scratch: val ppl" "time"
for text in yuanqu-later shakespeare-30k; do
    f=$(seconds $bin train --corpus "$tmp/$text.txt" --init-from "$tmp/source" --epochs "$epochs" "${common[@]}" --out "$tmp/ft-$text")
    s=$(seconds $bin train --corpus "$tmp/$text.txt" --cell gru --hidden 256 --embed 64 --epochs "$epochs" "${common[@]}" --out "$tmp/sc-$text")
    new=$($bin info --model "$tmp/ft-$text" | sed -n 's/.*, \([0-9]*\) characters added.*/\1/p')
    printf '%-22s %-12s %-24s %-8s %-24s %s\n' "$text" "$new" "$(val "$tmp/ft-$text")" "${f}s" "$(val "$tmp/sc-$text")" "${s}s"
done
echo
echo "($epochs epochs each; both runs of a row use the same flags and seed; held-out = the last 10% of the second text)"

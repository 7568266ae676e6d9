#!/usr/bin/env bash
# Corpora of any size: `charrnn train --hidden 64 --max-iters 100` on English texts of 10 MB to 1 GB
# (tiny Shakespeare repeated; 1-byte tokens) and on the bundled corpus repeated to 200 MB (vocabulary above
# 256; 2-byte tokens). For each: the first run (which prepares the corpus into the cache), a second run
# (which reuses it), and `charrnn prepare` alone; wall time and the process's peak RSS, from /usr/bin/time.
# Usage: bash benches/big_corpus.sh   [SIZES="10 100 1000" (MB)] [WIDE=200 (MB, 0 to skip)] [CHARRNN=...]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${CHARRNN:-target/release/charrnn}")
sizes=${SIZES:-"10 100 1000"}
wide=${WIDE:-200}
work=$(mktemp -d "${TMPDIR:-/tmp}/charrnn-big.XXXXXX")
trap 'rm -rf "$work"' EXIT
export CHARRNN_CACHE="$work/cache"

# `wall_s peak_rss_mb` of a command, whose own output is discarded.
measure() {
    /usr/bin/time -o "$work/time" -f "%e %M" "$@" >/dev/null 2>"$work/stderr" || { cat "$work/stderr" >&2; exit 1; }
    awk '{ printf "%.2f %.0f", $1, $2 / 1024 }' "$work/time"
}

# A text of $2 MB made of copies of $1 (cut at a line end, so that no character is split).
make_corpus() {
    local src=$1 mb=$2 out=$3
    : > "$out"
    while [ "$(stat -c %s "$out")" -lt $((mb * 1000000)) ]; do cat "$src" >> "$out"; done
    head -c $((mb * 1000000)) "$out" | sed '$d' > "$out.cut" && mv "$out.cut" "$out"
}

row() {
    local label=$1 corpus=$2
    local mb; mb=$(awk -v b="$(stat -c %s "$corpus")" 'BEGIN { printf "%.0f", b / 1e6 }')
    local train=("$bin" train --corpus "$corpus" --hidden 64 --max-iters 100 --device cpu -q)
    read -r w1 m1 <<< "$(measure "${train[@]}" --out "$work/m1")"
    read -r w2 m2 <<< "$(measure "${train[@]}" --out "$work/m2")"
    read -r wp mp <<< "$(measure "$bin" prepare "$corpus" --out "$work/p.tokens")"
    local rate; rate=$(awk -v mb="$mb" -v s="$wp" 'BEGIN { printf "%.0f", mb / s }')
    printf "| %s | %s MB | %s s, %s MB | %s s, %s MB | %s s (%s MB/s), %s MB |\n" \
        "$label" "$mb" "$w1" "$m1" "$w2" "$m2" "$wp" "$rate" "$mp"
    rm -rf "$work/m1" "$work/m2" "$work/p.tokens" "$CHARRNN_CACHE"
}

echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; charrnn: $("$bin" --version)"
echo "| corpus | size | first run (prepares): wall, peak RSS | second run (cached): wall, peak RSS | prepare alone: wall, peak RSS |"
echo "|---|---:|---:|---:|---:|"
for mb in $sizes; do
    make_corpus data/tinyshakespeare.txt "$mb" "$work/english.txt"
    row "tiny Shakespeare repeated" "$work/english.txt"
    rm -f "$work/english.txt"
done
if [ "$wide" -gt 0 ]; then
    make_corpus data/yuanqu.txt "$wide" "$work/wide.txt"
    row "yuanqu repeated (vocabulary 4,332)" "$work/wide.txt"
fi

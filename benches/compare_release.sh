#!/usr/bin/env bash
# A training run timed with this build and with an earlier one (OLD, e.g. a release binary built from a
# previous commit), alternating, ROUNDS rounds; prints each run's wall time and the medians. By default the
# textbook workload (first 10,000 characters of the bundled corpus, defaults, 20 epochs); ARGS replaces its
# flags (the corpus included), e.g. ARGS="--corpus data/tinyshakespeare.txt --limit-chars 100000
# --cell gru --layers 2 --dropout 0.2 --epochs 1".
# Usage: OLD=path/to/old/charrnn [NEW=target/release/charrnn] [ROUNDS=3] [ARGS="..."] bash benches/compare_release.sh
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(realpath "${OLD:?set OLD to the earlier charrnn binary}")
new=$(realpath "${NEW:-target/release/charrnn}")
rounds=${ROUNDS:-3}
read -r -a args <<< "${ARGS:---corpus data/yuanqu.txt --limit-chars 10000 --epochs 20}"
work=$(mktemp -d "${TMPDIR:-/tmp}/charrnn-release.XXXXXX")
trap 'rm -rf "$work"' EXIT
export CHARRNN_CACHE="$work/cache"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
run() { # a fresh folder each time: an older binary may not know --force
    rm -rf "$work/m"
    /usr/bin/time -o "$work/t" -f "%e" "$1" train "${args[@]}" --device cpu -q --out "$work/m" && cat "$work/t"
}
: > "$work/old"; : > "$work/new"
for r in $(seq "$rounds"); do
    o=$(run "$old"); n=$(run "$new")
    echo "round $r: old $o s, new $n s"
    echo "$o" >> "$work/old"; echo "$n" >> "$work/new"
done
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "train ${args[*]}"
echo "median: old $(median "$work/old") s, new $(median "$work/new") s"

#!/usr/bin/env bash
# The textbook workload (first 10,000 characters of the bundled corpus, defaults, 20 epochs) timed with this
# build and with an earlier one (OLD, e.g. a release binary built from a previous commit), alternating,
# ROUNDS rounds; prints each run's wall time and the medians.
# Usage: OLD=path/to/old/charrnn [NEW=target/release/charrnn] [ROUNDS=3] bash benches/compare_release.sh
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(realpath "${OLD:?set OLD to the earlier charrnn binary}")
new=$(realpath "${NEW:-target/release/charrnn}")
rounds=${ROUNDS:-3}
work=$(mktemp -d "${TMPDIR:-/tmp}/charrnn-release.XXXXXX")
trap 'rm -rf "$work"' EXIT
export CHARRNN_CACHE="$work/cache"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
run() { # a fresh folder each time: an older binary may not know --force
    rm -rf "$work/m"
    /usr/bin/time -o "$work/t" -f "%e" "$1" train --corpus data/yuanqu.txt --limit-chars 10000 --epochs 20 \
        --device cpu -q --out "$work/m" && cat "$work/t"
}
: > "$work/old"; : > "$work/new"
for r in $(seq "$rounds"); do
    o=$(run "$old"); n=$(run "$new")
    echo "round $r: old $o s, new $n s"
    echo "$o" >> "$work/old"; echo "$n" >> "$work/new"
done
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "median: old $(median "$work/old") s, new $(median "$work/new") s (20 epochs of 8 minibatches of 32x35)"

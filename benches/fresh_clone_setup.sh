#!/usr/bin/env bash
# Issue 15: what set-up costs on a fresh clone, both ways. Clones this repository's HEAD into /tmp twice and
# runs `make demo` in each with pip's cache off: once as a machine without an NVIDIA driver gets it (torch
# without its CUDA libraries), once with CHARRNN_TORCH=full (the whole wheel); then runs make test's
# set-up (scripts/setup.sh) in the first clone, which adds the rest of the wheel. Prints the wall time,
# the bytes received by this machine meanwhile (/proc/net/dev, so other traffic counts too) and the size
# of .venv. Cargo's crate downloads are cached in ~/.cargo and count for neither. Usage:
# bash benches/fresh_clone_setup.sh
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
rx() { awk 'NR>2 { s += $2 } END { printf "%.0f", s }' /proc/net/dev; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }'; }
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%F)"
for mode in light full; do
    rm -rf "/tmp/fc-$mode"
    git clone -q "$repo" "/tmp/fc-$mode"
    cd "/tmp/fc-$mode" || exit 1
    before=$(rx); start=$(date +%s.%N)
    if [ "$mode" = full ]; then export CHARRNN_TORCH=full; else unset CHARRNN_TORCH; fi
    PIP_NO_CACHE_DIR=1 make demo >"/tmp/fc-$mode.log" 2>&1; rc=$?
    echo "$mode: make demo exit $rc, $(since "$start") s, received $((($(rx) - before) / 1000000)) MB, .venv $(du -sh .venv | cut -f1)"
done
cd /tmp/fc-light || exit 1
unset CHARRNN_TORCH
before=$(rx); start=$(date +%s.%N)
PIP_NO_CACHE_DIR=1 bash scripts/setup.sh >/tmp/fc-upgrade.log 2>&1; rc=$?
torch=$(.venv/bin/python -c 'import torch; print(torch.__version__)' 2>&1 | tail -1)
echo "light, then make test's set-up: exit $rc, $(since "$start") s, received $((($(rx) - before) / 1000000)) MB; import torch: $torch"

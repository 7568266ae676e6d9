#!/usr/bin/env bash
# Builds charrnn for the lent GPU machine, which has PyTorch 2.11 but no Rust and no network: a scratch copy
# of this working tree in DEST (default /tmp/charrnn-gpu) with tch and torch-sys 0.24 (which pin libtorch
# 2.11; tch 0.26 does not compile against 2.11), its own venv with torch==2.11.0 and its own target folder.
# Prints the binary's path: carry it there (it is small: libtorch is linked dynamically) and run, for
# instance, CHARRNN=that/binary bash benches/gpu_check.sh, or benches/gpu_scale.sh, with that machine's
# torch/lib on LD_LIBRARY_PATH (both scripts set it).
# Usage: [DEST=/tmp/charrnn-gpu] bash benches/gpu_build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${DEST:-/tmp/charrnn-gpu}
mkdir -p "$dest/tree"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$dest/tree"
cd "$dest/tree"
sed -i -E 's/^(tch|torch-sys) = "0\.26"/\1 = "0.24"/' Cargo.toml
grep -q '^tch = "0.24"' Cargo.toml || { echo "gpu_build: Cargo.toml's tch line was not found" >&2; exit 1; }
rm -f Cargo.lock .cargo/config.toml
[ -x "$dest/venv/bin/python" ] || python3 -m venv "$dest/venv"
"$dest/venv/bin/python" -c 'import torch, sys; sys.exit(not torch.__version__.startswith("2.11.0"))' 2>/dev/null ||
    "$dest/venv/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.11.0
LIBTORCH=$("$dest/venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))') \
    cargo build --release --quiet --bin charrnn --target-dir "$dest/target" >&2
echo "$dest/target/release/charrnn"
